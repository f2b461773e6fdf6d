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
//! - `db`: the connection, opening, the transaction runner, the kept (checkpointed) steps and
//!   the epoch fence; `migrations`: the schema.
//! - `disk`: the store's files as they lie on disk (header, `-wal`, `-shm`), read before SQLite
//!   opens them: a truncated file or a lost log is refused, naming the file.
//! - `rows`: how values are stored and read back, shared by the others.
//!
//! The files point one way: the trait impls use `db`, `rows` and `lock`; `db` uses `migrations`,
//! `rows`, `lock` and `disk`; nothing uses this file, which only declares them.
//!
//! Durability rules (the load's resume depends on them):
//! - WAL journal with `synchronous=FULL`: a committed transaction survives power loss, not only a
//!   process kill. Every state change the executor makes is one committed transaction *before* the
//!   action it enables (e.g. a batch is `uploading` before its bytes leave the process).
//! - The load's steps, the ledger of its batches, `kfr add`/`kfr remove` and their held
//!   operations, and abandons are *kept*: copied from the `-wal` into the main file when they
//!   commit (`db::SqliteBackend::kept_tx`), so a lost `-wal` cannot take them along. A `-wal`
//!   removed or replaced while kfr writes stops every write (`StoreError::Lost`, naming it); one
//!   found lost at open, with pages its `-shm` index says were not yet copied, is refused
//!   (`StoreError::LogMissing`) instead of silently going back in time (issue 20).
//! - The file is created with mode 0600: it holds customer identifiers in full (it is the
//!   institution's own operational store; see docs/load.md "State store").
//! - Several processes may open it at once (the agent, `kfr load`, `kfr remove`); writers wait up to
//!   [`db::BUSY_TIMEOUT`] for each other instead of failing.
//!
//! Schema versions: `migrations`.

mod db;
mod disk;
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
