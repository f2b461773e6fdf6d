//! The state store: the one durable record of what `kfr` has done to KFR and still has to do —
//! the outbox (one queue per customer), load jobs and their batches, the ledger, delivery leases
//! and the audit history.
//!
//! Every caller (the sync agent, `kfr load`, `kfr add/remove`, the operator's commands) uses one
//! async [`Store`], opened from a [`Location`] in one place in `cli`. A backend implements the
//! small synchronous traits of [`backend`] and runs on the store's own thread, so a durable commit
//! never blocks the async runtime; its errors are the one [`StoreError`]. Layout:
//! - [`types`] and [`error`]: the vocabulary, the same for every backend.
//! - [`backend`]: the traits a backend implements; `conformance` (tests) defines what passing
//!   means, a concurrency section included.
//! - [`handle`]: [`Store`], the async handle with group commit; [`migrate`]: moving an
//!   installation's state to another store (`kfr store migrate`).
//! - [`sqlite`]: the SQLite backend (a file next to the agent); [`postgres`]: the PostgreSQL
//!   backend (one database for an installation on several hosts).

pub mod backend;
pub mod error;
pub mod handle;
pub mod migrate;
pub mod postgres;
pub mod sqlite;
pub mod types;

#[cfg(test)]
pub mod conformance;

pub use error::StoreError;
pub use handle::Store;
pub use types::*;
