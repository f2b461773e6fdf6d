//! The sync agent: takes relationship events from the core system's sources, commits them to the
//! outbox, and delivers them to KFR — per customer in issue order, within the rate limit, retried
//! by the verdict's scope, observable (docs/specs/outbox.md, docs/sync.md).
//!
//! Data flows one way: source → outbox (`store::outbox`) → dispatcher → KFR → ledger. The agent
//! never prints: it reports through metrics, health and [`tracing`]; the CLI presents the rest.

pub mod dispatch;
pub mod event;
pub mod health;
pub mod metrics;
pub mod ops_server;
pub mod outcome;
pub mod reconcile;
pub mod source;
#[cfg(test)]
pub mod testing;
pub mod verify;
