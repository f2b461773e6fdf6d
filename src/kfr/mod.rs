//! KFR, Bits' customer-relationship register: the API client, the batch body encoder and the
//! error model (kfr-notes §4, §6).

pub mod batch;
pub mod client;
pub mod error;

pub use batch::{BatchBody, BatchEntry, Layout};
pub use client::{AddOutcome, Bank, KfrClient, KfrClientConfig, Outcome, RemoveOutcome};
pub use error::{KfrError, RetryClass};
