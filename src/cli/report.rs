//! How an error reaches the operator: the exit code it means and its rendering as `error:`, one
//! `Caused by:` line per cause, and at most one `hint:` line.
//!
//! Library modules only implement [`Hinted`]; this is the one place that knows every error type
//! that does, because `cli` is the only layer allowed to import them all. A new error type with
//! a hint is added to [`diagnose`], and the test below keeps the list honest.
//!
//! Nothing here is asked back: an error that wraps another leaves its cause's hint to the walk
//! ([`Hinted::fallback_hint`]) instead of calling [`find_hint`], so the commands whose errors are
//! listed below do not import this file (`src/architecture.rs`: no circle among cli's files).

use crate::error::{Exit, Hinted, StillQueued, UsageError};
use std::error::Error as StdError;
use std::fmt::Write as _;

/// The [`Hinted`] view of one error in a chain, if its type has one.
fn diagnose<'a>(e: &'a (dyn StdError + 'static)) -> Option<&'a dyn Hinted> {
    macro_rules! try_types {
        ($($t:ty),* $(,)?) => {
            $(if let Some(h) = e.downcast_ref::<$t>() {
                return Some(h);
            })*
        };
    }
    try_types!(
        UsageError,
        StillQueued,
        crate::config::ConfigError,
        crate::maskinporten::TokenError,
        crate::maskinporten::CredentialError,
        crate::kfr::KfrError,
        crate::ids::IdError,
        crate::load::LoadError,
        crate::checklist::ChecklistError,
        crate::input::format::HeaderError,
        crate::input::reader::ReadError,
        crate::sync::reconcile::ReconcileError,
        crate::store::StoreError,
        crate::sync::dispatch::DispatchError,
        crate::sync::source::http::IngestError,
        crate::sync::source::pg_outbox::PgOutboxError,
        crate::pg::ConnectError,
        crate::store::migrate::MigrateError,
        super::sync::PartFailed,
        super::outbox::FloodRefused,
    );
    None
}

/// The exit code for an error: the most severe of what its causes mean (usage beats failure), so
/// a configuration error wrapped in context still exits 2.
pub fn exit_code(err: &anyhow::Error) -> Exit {
    let usage = err
        .chain()
        .any(|c| c.downcast_ref::<clap::Error>().is_some() || diagnose(c).is_some_and(|h| h.exit() == Exit::Usage));
    let queued = err
        .chain()
        .any(|c| diagnose(c).is_some_and(|h| h.exit() == Exit::StillQueued));
    if usage {
        Exit::Usage
    } else if queued {
        Exit::StillQueued
    } else {
        Exit::Failure
    }
}

/// The first hint found walking the chain from the outermost error inwards; without one, the
/// first fallback hint (a wrapper's general advice, see [`Hinted::fallback_hint`]).
pub fn find_hint(err: &anyhow::Error) -> Option<String> {
    err.chain()
        .find_map(|c| diagnose(c).and_then(Hinted::hint))
        .or_else(|| err.chain().find_map(|c| diagnose(c).and_then(Hinted::fallback_hint)))
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
    fn configuration_errors_exit_2_with_their_hint() {
        let e = anyhow::Error::new(crate::config::ConfigError::UnknownKey {
            key: "scopes".into(),
            path: "kfr.toml".into(),
            line: Some(2),
            suggestion: Some("scope"),
        })
        .context("reading configuration");
        assert_eq!(exit_code(&e), Exit::Usage);
        assert!(render(&e).contains("hint: did you mean `scope`?"), "{}", render(&e));
    }

    #[test]
    fn domain_errors_are_found_behind_context() {
        let e = anyhow::Error::new(crate::ids::IdError::HNumberNotAllowed).context("line 3");
        assert_eq!(exit_code(&e), Exit::Failure);
        assert!(find_hint(&e).is_some(), "IdError carries a hint");
    }

    /// Every type that implements `Hinted` is in `diagnose`, or its hint and exit code would be
    /// lost the moment it is wrapped in an `anyhow::Error`.
    #[test]
    fn every_hinted_error_type_is_diagnosed() {
        fn walk(dir: &std::path::Path, out: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    walk(&path, out);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    out.push(std::fs::read_to_string(path).unwrap());
                }
            }
        }
        let mut sources = Vec::new();
        walk(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &mut sources,
        );
        let this = include_str!("report.rs");
        let listed = &this[this.find("try_types!(").unwrap()..this.find("    None\n}").unwrap()];
        let mut found = 0;
        for text in &sources {
            for line in text.lines() {
                let Some(rest) = line.trim().strip_prefix("impl ") else {
                    continue;
                };
                let Some((_, ty)) = rest.split_once("Hinted for ") else {
                    continue;
                };
                let ty = ty.trim_end_matches(" {").trim();
                found += 1;
                assert!(
                    listed.contains(&format!("::{ty},")) || listed.contains(&format!(" {ty},")),
                    "{ty} implements Hinted but cli::report::diagnose does not try it"
                );
            }
        }
        assert!(found >= 8, "found only {found} Hinted types");
    }

    /// `kfr add` failed but stays queued: exit 3, and the hint is KFR's, found behind the
    /// wrapper (which has none of its own) through the boxed cause, as `cli::relationship`
    /// builds it.
    #[test]
    fn a_still_queued_error_exits_3_with_its_causes_hint() {
        let refused = crate::kfr::KfrError::Api {
            status: 403,
            code: Some("KFR-003".into()),
            message: "fid does not match the token".into(),
            correlation_id: uuid::Uuid::nil(),
            retry_after: None,
            class: crate::kfr::VerdictClass::Systemic(crate::kfr::Scope::Institution),
        };
        let e = anyhow::Error::new(StillQueued::new(
            "cannot add the customer. The operation is still queued",
            anyhow::Error::new(refused).context("sending the add"),
        ))
        .context("kfr add");
        assert_eq!(exit_code(&e), Exit::StillQueued);
        let text = render(&e);
        assert!(
            text.ends_with("hint: org_number must be the organisation the token (certificate) was issued to\n"),
            "{text}"
        );
        assert!(text.contains("KFR answered 403 KFR-003"), "{text}");

        // A cause without a hint: no hint line, still exit 3.
        let e = anyhow::Error::new(StillQueued::new("still queued", anyhow::anyhow!("recorded reason")));
        assert_eq!(exit_code(&e), Exit::StillQueued);
        assert_eq!(find_hint(&e), None);
        // Usage beats it: a configuration error behind it still exits 2.
        let e = anyhow::Error::new(StillQueued::new("still queued", UsageError::new("bad flag")));
        assert_eq!(exit_code(&e), Exit::Usage);
    }

    #[test]
    fn render_prints_chain_and_hint() {
        let e = anyhow::Error::new(UsageError::new("inner").with_hint("do this")).context("outer");
        assert_eq!(render(&e), "error: outer\nCaused by:\n  inner\nhint: do this\n");
    }
}
