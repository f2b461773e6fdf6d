//! KFR, Bits' customer-relationship register: the API client, the batch body encoder, the verdict
//! of one attempt and the error model (kfr-notes §4, §6; docs/specs/verdicts.md).

pub mod batch;
pub mod client;
pub mod error;
pub mod verdict;

pub use batch::{BatchBody, BatchEntry, Layout};
pub use client::{AddOutcome, Bank, KfrClient, KfrClientConfig, Outcome, RemoveOutcome};
pub use error::KfrError;
pub use verdict::{Attempt, Delivery, Operation, Scope, Verdict, VerdictClass};
