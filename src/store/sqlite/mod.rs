//! The SQLite backend of the state store: one file next to the agent, every trait of
//! [`super::backend`] implemented over it.
//!
//! Owns the database file, its connection settings and its schema migrations. Files by role:
//! - `outbox`: events, claims, outcomes, dead letters, the barrier (docs/specs/outbox.md).
//! - `jobs`: initial-load jobs and their batches (what was planned, sent, accepted, confirmed).
//! - `ledger`: the ledger of relationships this tool registered.
//! - `lease`: the delivery lease per register and the one load writer (lock files plus an epoch
//!   row); `lock`: the OS file lock under both.
//! - `history`: the append-only record of attempts and operator actions.
//! - `operations`: cancel, the flood guard's count, heartbeats, the last delivery, backups.
//! - `db`: the connection, opening, the transaction runner and the epoch fence;
//!   `migrations`: the schema.
//! - `rows`: how values are stored and read back, shared by the others.
//!
//! The files point one way: the trait impls use `db`, `rows` and `lock`; `db` uses `migrations`,
//! `rows` and `lock`; nothing uses this file, which only declares them.
//!
//! Durability rules (the load's resume depends on them):
//! - WAL journal with `synchronous=FULL`: a committed transaction survives power loss, not only a
//!   process kill. Every state change the executor makes is one committed transaction *before* the
//!   action it enables (e.g. a batch is `uploading` before its bytes leave the process).
//! - The file is created with mode 0600: it holds customer identifiers in full (it is the
//!   institution's own operational store; see docs/load.md "State store").
//! - Several processes may open it at once (the agent, `kfr load`, `kfr remove`); writers wait up to
//!   [`db::BUSY_TIMEOUT`] for each other instead of failing.
//!
//! Schema versions: `migrations`.

mod db;
mod history;
mod jobs;
mod lease;
mod ledger;
mod lock;
mod migrations;
mod operations;
mod outbox;
mod rows;
mod transfer;

pub use db::SqliteBackend;
