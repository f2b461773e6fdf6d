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
//! - [`handle`]: [`Store`], the async handle with group commit.
//! - [`sqlite`]: the SQLite backend (a file next to the agent).

pub mod backend;
pub mod error;
pub mod handle;
pub mod sqlite;
pub mod types;

#[cfg(test)]
pub mod conformance;

pub use error::StoreError;
pub use handle::Store;
pub use types::*;

use std::path::PathBuf;

/// Where a store lives. Today a SQLite file; a second backend adds its own kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A SQLite file (created 0600 with its directory when missing).
    Sqlite(PathBuf),
}

impl Location {
    /// For messages: the path, or a URL without its password.
    pub fn describe(&self) -> String {
        match self {
            Location::Sqlite(p) => p.display().to_string(),
        }
    }

    /// Whether the store exists already (opening it would not create it).
    pub fn exists(&self) -> bool {
        match self {
            Location::Sqlite(p) => p.exists(),
        }
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

/// Now, as job and batch records carry it: RFC 3339 UTC with milliseconds (sorts as text).
pub fn time_text(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
