//! Exit codes and the operator-facing rendering of errors.
//!
//! Every command returns `anyhow::Result`; `main` turns the outcome into one of three exit codes
//! (the contract documented in README.md and tested end to end) and prints the error chain as
//! `error:` / `Caused by:` lines followed by at most one `hint:` line.
//!
//! Library modules keep typed `thiserror` enums so callers can branch on them; the ones an operator
//! can act on implement [`Hinted`] and are registered in [`find_hint`].

use std::fmt::Write as _;

/// The process exit codes. Stable: scripts and schedulers depend on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The command did what was asked (including "already in the wanted state").
    Success = 0,
    /// The operation was attempted and failed (network, refused by a service, bad data).
    Failure = 1,
    /// The command line or the configuration is wrong; nothing was attempted.
    Usage = 2,
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

/// An error that knows what the operator should do about it.
pub trait Hinted {
    fn hint(&self) -> Option<String>;
}

impl Hinted for UsageError {
    fn hint(&self) -> Option<String> {
        self.hint.clone()
    }
}

/// An error that has been reported already (e.g. a summary printed by the command) and only needs
/// to turn into exit code 1 without a further `error:` line.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Reported(pub String);

/// The exit code for an error: 2 when any cause in the chain is a usage/configuration error.
pub fn exit_code(err: &anyhow::Error) -> Exit {
    let usage = err.chain().any(|c| {
        c.downcast_ref::<UsageError>().is_some()
            || c.downcast_ref::<crate::config::ConfigError>().is_some()
            || c.downcast_ref::<clap::Error>().is_some()
    });
    if usage { Exit::Usage } else { Exit::Failure }
}

/// The first hint found walking the chain from the outermost error inwards.
pub fn find_hint(err: &anyhow::Error) -> Option<String> {
    err.chain().find_map(|c| {
        if let Some(e) = c.downcast_ref::<UsageError>() {
            return e.hint();
        }
        if let Some(e) = c.downcast_ref::<crate::config::ConfigError>() {
            return e.hint();
        }
        if let Some(e) = c.downcast_ref::<crate::maskinporten::TokenError>() {
            return e.hint();
        }
        if let Some(e) = c.downcast_ref::<crate::maskinporten::CredentialError>() {
            return e.hint();
        }
        if let Some(e) = c.downcast_ref::<crate::kfr::KfrError>() {
            return e.hint();
        }
        if let Some(e) = c.downcast_ref::<crate::ids::IdError>() {
            return e.hint();
        }
        None
    })
}

/// Renders `error: …`, one `Caused by:` line per cause, and the hint if any.
pub fn render(err: &anyhow::Error) -> String {
    let mut out = String::new();
    let mut chain = err.chain();
    if let Some(top) = chain.next() {
        let _ = writeln!(out, "error: {top}");
    }
    let causes: Vec<String> = chain.map(|c| c.to_string()).collect();
    if !causes.is_empty() {
        let _ = writeln!(out, "Caused by:");
        for c in causes {
            let _ = writeln!(out, "  {c}");
        }
    }
    if let Some(h) = find_hint(err) {
        let _ = writeln!(out, "hint: {h}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_errors_anywhere_in_the_chain_exit_2() {
        let e = anyhow::Error::new(UsageError::new("no org_number")).context("loading settings");
        assert_eq!(exit_code(&e), Exit::Usage);
        let e = anyhow::anyhow!("connection refused").context("fetching token");
        assert_eq!(exit_code(&e), Exit::Failure);
    }

    #[test]
    fn render_prints_chain_and_hint() {
        let e = anyhow::Error::new(UsageError::new("inner").with_hint("do this")).context("outer");
        assert_eq!(render(&e), "error: outer\nCaused by:\n  inner\nhint: do this\n");
    }
}
