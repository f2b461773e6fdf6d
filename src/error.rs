//! Exit codes and the contract every operator-facing error implements.
//!
//! Every command returns `anyhow::Result`; `main` turns the outcome into one of four exit codes
//! (the contract documented in README.md and tested end to end) and prints the error chain as
//! `error:` / `Caused by:` lines followed by at most one `hint:` line.
//!
//! Library modules keep typed `thiserror` enums so callers can branch on them; the ones an operator
//! can act on implement [`Hinted`], which also says the exit code an error means. Rendering
//! (`error:` / `Caused by:` / `hint:`) and the walk over an error chain live in `cli::report`, the
//! only layer that knows every error type. The errors that stand for an exit code of their own,
//! [`UsageError`] (2) and [`StillQueued`] (3), are here beside [`Exit`].

/// The process exit codes. Stable: scripts and schedulers depend on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The command did what was asked (including "already in the wanted state").
    Success = 0,
    /// The operation was attempted and failed (network, refused by a service, bad data).
    Failure = 1,
    /// The command line or the configuration is wrong; nothing was attempted. Also an operator
    /// action refused for the state of what it names (`kfr outbox cancel` of an event in flight).
    Usage = 2,
    /// `kfr add`/`kfr remove` failed, and the operation stays queued: the sync agent (or the
    /// command run again) sends it unless it is cancelled (`kfr outbox cancel`).
    StillQueued = 3,
}

impl From<Exit> for std::process::ExitCode {
    fn from(e: Exit) -> Self {
        std::process::ExitCode::from(e as u8)
    }
}

/// An error caused by how `kfr` was invoked or configured (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct UsageError {
    pub message: String,
    pub hint: Option<String>,
}

impl UsageError {
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            hint: None,
        }
    }
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

/// An error that knows what the operator should do about it, and which exit code it means.
/// Each module's error types implement it; `cli` finds them in an error chain and renders them,
/// so this module never needs to know the domain types (layers point down).
pub trait Hinted {
    /// The one `hint:` line: what to do next. The first one found from the outermost error
    /// inwards is shown.
    fn hint(&self) -> Option<String>;
    /// A hint shown only when no error in the chain has its own [`Hinted::hint`], this one's
    /// causes included: the general advice of a wrapper whose cause usually knows better (a
    /// failed part of `kfr sync`). With it the wrapper need not look up its cause's hint itself.
    fn fallback_hint(&self) -> Option<String> {
        None
    }
    /// The exit code this error means when it is anywhere in the chain. Most errors are
    /// failures of an attempted operation; configuration and usage errors override this.
    fn exit(&self) -> Exit {
        Exit::Failure
    }
}

impl Hinted for UsageError {
    fn hint(&self) -> Option<String> {
        self.hint.clone()
    }
    fn exit(&self) -> Exit {
        Exit::Usage
    }
}

/// A `kfr add`/`kfr remove` that failed while its operation stays queued: the sync agent (or the
/// command run again) sends it unless it is cancelled. Exit code 3, so a script does not take
/// "failed" for "not done". The cause's own hint (KFR's, the network's) is the one shown: this
/// error has none, so the walk over the chain goes on to its cause.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct StillQueued {
    message: String,
    #[source]
    source: Box<dyn std::error::Error + Send + Sync + 'static>,
}

impl StillQueued {
    pub fn new(
        message: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        Self {
            message: message.into(),
            source: source.into(),
        }
    }
}

impl Hinted for StillQueued {
    fn hint(&self) -> Option<String> {
        None
    }
    fn exit(&self) -> Exit {
        Exit::StillQueued
    }
}

/// An error that has been reported already (e.g. a summary printed by the command) and only needs
/// to turn into exit code 1 without a further `error:` line.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Reported(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_errors_mean_exit_2_and_carry_their_hint() {
        let e = UsageError::new("no org_number").with_hint("set it");
        assert_eq!(e.exit(), Exit::Usage);
        assert_eq!(e.hint().as_deref(), Some("set it"));
    }
}
