//! `kfr checklist`: runs Bits' integration-test cases (onboarding C-2, kfr-notes §8) against the
//! configured KFR and writes the report the institution mails to Bits (C-3).
//!
//! Files by role:
//! - [`cases`]: the cases as data (TOML), parsed with file and line in every refusal, and the
//!   synthetic-identifier rules for a run.
//! - [`wire`]: the runner's own request layer. The cases must send what a correct client never
//!   would (no token, another `fid`, a quoted boundary, an invalid identifier), so it sits on
//!   `reqwest` with single attempts instead of the KFR client, and records every exchange.
//! - [`runner`]: executes the steps, checks expectations, and leaves the register as it found it.
//! - [`report`]: Markdown, JSON, JUnit XML and XLSX reports.
//!
//! Personal data: identifiers appear in results only masked ([`crate::ids::mask`]); tokens never.

pub mod cases;
pub mod report;
pub mod runner;
mod wire;

pub use cases::{CaseFile, CaseFileError, DEFAULT_CASES, DEFAULT_CASES_NAME};
pub use report::{Report, write_reports};
pub use runner::{CaseResult, RunConfig, Runner, StepResult, Verdict};

/// Why a checklist run cannot start or finish.
#[derive(Debug, thiserror::Error)]
pub enum ChecklistError {
    #[error("the checklist is not run against production: it writes test relationships to the register")]
    Production,
    #[error("no case with id {ids} (the file has: {known})")]
    UnknownCase { ids: String, known: String },
    #[error("--id {name}=…: the case file defines no identifier {name:?} (it has: {known})")]
    UnknownIdentifier { name: String, known: String },
    #[error("identifier {name} ({masked}) is not valid: {reason}")]
    BadIdentifier {
        name: String,
        masked: String,
        reason: String,
    },
    #[error(
        "identifier {name} ({masked}) is a {kind}, not a synthetic identity; a checklist run uses synthetic ones only"
    )]
    NotSynthetic {
        name: String,
        masked: String,
        kind: &'static str,
    },
    #[error("identifiers {a} and {b} are the same number; each name needs its own")]
    DuplicateIdentifier { a: String, b: String },
    #[error(
        "the case step at line {line} sends {masked}, which is a valid real person's number; raw identifiers must be invalid or synthetic"
    )]
    RawLooksReal { line: usize, masked: String },
    #[error("other_fid {0:?} must be a 9-digit organisation number other than ours")]
    BadOtherFid(String),
    #[error("already registered for us before the run: {0}; the cases expect them absent")]
    AlreadyRegistered(String),
    #[error("cannot check the register before the run: {0}")]
    Preflight(String),
}

impl crate::error::Hinted for ChecklistError {
    fn hint(&self) -> Option<String> {
        ChecklistError::hint(self)
    }

    fn exit(&self) -> crate::error::Exit {
        if self.is_usage() {
            crate::error::Exit::Usage
        } else {
            crate::error::Exit::Failure
        }
    }
}

impl ChecklistError {
    /// Whether the cause is how the run was set up (exit 2) rather than KFR's answers (exit 1).
    pub fn is_usage(&self) -> bool {
        !matches!(
            self,
            ChecklistError::AlreadyRegistered(_) | ChecklistError::Preflight(_)
        )
    }

    /// What the operator should do about it.
    pub fn hint(&self) -> Option<String> {
        Some(match self {
            ChecklistError::Production => "run it with env = \"test\" (Bits' preprod) or \"local\" (kfr mock)".into(),
            ChecklistError::NotSynthetic { .. } | ChecklistError::BadIdentifier { .. } => {
                "use synthetic identities from Tenor (month + 80) or test organisations (2/3...); set them with --id NAME=ID".into()
            }
            ChecklistError::AlreadyRegistered(_) => {
                "remove them first (`kfr remove ID`), or give other synthetic identities with --id NAME=ID".into()
            }
            ChecklistError::Preflight(_) => "check the connection and the token with `kfr doctor`".into(),
            _ => return None,
        })
    }
}
