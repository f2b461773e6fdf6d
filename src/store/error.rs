//! The one error of the state store, whatever the backend: what went wrong in terms an operator
//! (and a caller deciding what to do next) can act on. It names the store by its [`Location`]'s
//! description, never a backend's error type, so callers branch the same way on SQLite and on
//! PostgreSQL.
//!
//! [`Location`]: super::Location

use super::types::Seq;

/// What a store operation could not do. Each variant says what an operator can act on, and
/// [`crate::error::Hinted`] gives the next step.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process holds the write lock longer than the busy timeout.
    #[error("the state store {store} is busy (another kfr process is writing)")]
    Busy { store: String },
    /// The store cannot be reached at all (a server down, a file that cannot be opened).
    #[error("the state store {store} is unavailable: {detail}")]
    Unavailable { store: String, detail: String },
    /// The store is not a kfr store, or is damaged (a truncated file, a broken schema).
    #[error("the state store {store} is unreadable or damaged: {detail}")]
    Corrupt { store: String, detail: String },
    /// The store refused the write (disk full, read-only, permissions).
    #[error("the state store {store} cannot be written: {detail}")]
    NotWritable { store: String, detail: String },
    /// The store's file has other names (hard links): SQLite keeps its log by name, so two
    /// names of one file in use at once lose data. Nothing was opened.
    #[error(
        "the state store {store} has {links} names (hard links to one file); kfr opens a store only by its one name"
    )]
    HardLinked { store: String, links: u64 },
    /// The store is no longer the one kfr opened (deleted, moved or replaced), or, for a store
    /// kept in files, its write-ahead log `log` is not (SQLite's `-wal`): anything written now
    /// would be lost, so nothing is.
    #[error("{}", lost(store, log.as_deref()))]
    Lost { store: String, log: Option<String> },
    /// The store's write-ahead log `log` is missing or is not the one its index `index` names,
    /// and the index says it held `frames` committed changes (pages) not yet copied into the
    /// store: opening it would silently go back to before them, so it is not opened.
    #[error(
        "the state store {store} cannot be opened: its write-ahead log {log} {problem}, and its index {index} says the log held {frames} committed pages not yet in {store}; opening the store now would silently lose them"
    )]
    LogMissing {
        store: String,
        log: String,
        index: String,
        problem: String,
        frames: u32,
    },
    /// This process's lease on delivering `register` was taken over (epoch `held` is older than
    /// the store's `current`): a deposed holder writes nothing more.
    #[error(
        "this process no longer holds the delivery lease of {register} (its epoch {held}, the store's {current}); another kfr process delivers now"
    )]
    Fenced { register: String, held: i64, current: i64 },
    /// A concurrent change made the operation impossible as asked (e.g. a unique head); nothing
    /// of it was stored, and trying again decides afresh.
    #[error("a concurrent change conflicts with this one: {0}")]
    Conflict(String),
    /// The event at `index` of the call reuses an event id stored already (as outbox entry `seq`)
    /// for a different event (another operation, customer or start date): nothing of the call
    /// was stored. The id is not repeated here: it may be built from a customer's identifier.
    #[error(
        "event {index}: its event id is stored already, as outbox entry {seq}, for a different event (operation, customer or start date)"
    )]
    EventIdConflict { index: usize, seq: Seq },
    /// The event at `index` of the call would give its customer more than `max` unfinished
    /// events in the outbox (the per-customer flood guard): nothing of the call was stored. The
    /// customer is not named here (the caller has the event and masks it).
    #[error(
        "event {index}: its customer has {max} unfinished events in the outbox already (the per-customer limit); nothing of the call was stored"
    )]
    CustomerFlood { index: usize, max: u64 },
    /// A seq (or job) that does not exist, or is not in the state the operation needs.
    #[error("event {seq} {problem}")]
    WrongState { seq: Seq, problem: String },
    /// What an operation names does not exist (an event id, a customer's pending events).
    #[error("{0}")]
    NotFound(String),
    /// What this kind of store does not do through kfr (a PostgreSQL store is not copied to a
    /// file: the bank's PostgreSQL tooling backs it up); `instead` says what to do.
    #[error("the state store {store} cannot {what}")]
    Unsupported {
        store: String,
        what: String,
        instead: String,
    },
    /// The store thread is gone (it panicked or the handle outlived it).
    #[error("the state store's thread has stopped")]
    Stopped,
    /// Anything else from the backend, with its detail.
    #[error("state store error: {0}")]
    Other(String),
}

/// [`StoreError::Lost`]'s message: the store itself, or its write-ahead log.
fn lost(store: &str, log: Option<&str>) -> String {
    match log {
        None => format!(
            "the state store {store} was removed or replaced while kfr had it open; nothing more is written to it"
        ),
        Some(log) => format!(
            "the write-ahead log {log} of the state store {store} was removed or replaced while kfr had the store open; nothing more is written to it"
        ),
    }
}

impl StoreError {
    /// A caller's mistake about a load job (no such job, not in the state asked for).
    pub fn job(job: i64, problem: impl std::fmt::Display) -> StoreError {
        StoreError::Other(format!("load job {job} {problem}"))
    }
}

impl crate::error::Hinted for StoreError {
    fn hint(&self) -> Option<String> {
        Some(match self {
            StoreError::Busy { .. } => {
                "another kfr process holds the state store's write lock; wait for it to finish, or stop it, and run the command again".into()
            }
            StoreError::Unavailable { store, .. } => format!(
                "check that {store} exists and that kfr's user may open it (for a file: the directory's permissions)"
            ),
            StoreError::Corrupt { store, .. } => format!(
                "{store} is damaged or not a kfr state store; restore it from a backup (it is the record of what kfr sent) or point kfr at the right store"
            ),
            StoreError::NotWritable { store, .. } => format!(
                "free disk space or fix the permissions of {store} (for a file: also its directory, its -wal and -shm files)"
            ),
            StoreError::HardLinked { store, .. } => format!(
                "remove the other names of the file (`find / -xdev -samefile {store}` lists them) and use {store} alone, or copy it with `kfr backup`; two processes on two names of one SQLite file each keep their own log and lose what the other wrote"
            ),
            StoreError::Lost { store, log: None } => format!(
                "put the store back at {store} (or restore it from a backup) and restart kfr: events acknowledged before this were written to the store kfr had open"
            ),
            StoreError::Lost { store, log: Some(log) } => format!(
                "never delete, move or replace {log} while kfr uses {store}: it holds committed changes not yet copied into the store's file. What this process had committed was copied into the file before it stopped (a warning above says whether that worked); start the command again (a load: `kfr load FILE --resume --state {store}`, its job and batches are copied into the file at every step)"
            ),
            StoreError::LogMissing { store, log, index, .. } => format!(
                "put {log} back if it was moved (it belongs next to {store}; never copy it from another store), then run the command again. If it is gone for good, remove {index} too: kfr then opens {store} as its main file holds it, and what the lost log held is gone (a load's job and batches are kept in the main file at every step; check `kfr load status`, `kfr outbox status` and `kfr verify --all`)"
            ),
            StoreError::Fenced { .. } => {
                "another `kfr sync` took over delivery (this one was stopped or too slow to renew its lease); this process stops delivering, its unfinished claims are taken back by the new holder".into()
            }
            StoreError::Conflict(_) => "run the command again: it decides afresh on what the store holds now".into(),
            StoreError::EventIdConflict { .. } => "an event id names one event for good: give the new event an id of its own (`kfr history` shows what the stored one was)".into(),
            StoreError::CustomerFlood { .. } => "look at the customer's queue (`kfr history ID`); cancel what was sent by mistake (`kfr outbox cancel --customer ID --reason …`), or raise sync.max_events_per_customer if the volume is real".into(),
            StoreError::WrongState { .. } | StoreError::NotFound(_) => return None,
            StoreError::Unsupported { instead, .. } => instead.clone(),
            StoreError::Stopped => "the state store's thread stopped after an earlier error; see the log above it and restart kfr".into(),
            StoreError::Other(_) => return None,
        })
    }
}
