//! The store's vocabulary, the same for every backend: events and their states, load jobs and
//! batches, the ledger, leases and the audit history (docs/specs/outbox.md). Nothing here names a
//! backend; [`super::backend`] states the operations on these types.
//!
//! Vocabulary:
//! - A **register** is one KFR as seen by one institution: environment, KFR base URL and org.nr
//!   ([`Register::key`]). Events, load jobs and batches each belong to one; nothing of one
//!   register is ever sent to another.
//! - An event's **seq** is issue order within the store: it only grows.
//! - A customer's **head** is its oldest event that is not finished (delivered, dropped). Only a
//!   head is ever handed out, and only one at a time, so a customer's events reach KFR in the
//!   order they were issued. The schema allows one head per (register, customer), no more.
//! - A customer is **parked** while its head is dead-lettered: its later events wait until an
//!   operator retries or drops the head. Other customers are not affected.
//! - The **barrier**: while an initial load of the same register is not confirmed ingested, a
//!   remove at the head of its queue waits (onboarding D-3 step 4), and so does everything behind it.
//! - A **claim** is an event handed to one sender: it names the claimer, the claimer's lease
//!   epoch (if it holds one) and the time the claim ends (`claimed_until`). Nobody else sends the
//!   event, or anything behind it, before the claim is finished or has expired.
//! - A **lease** makes one process the deliverer of a register; its **epoch** grows on every
//!   takeover, and a write by an older epoch is refused ([`super::StoreError::Fenced`]).

use chrono::{DateTime, NaiveDate, Utc};
use std::path::PathBuf;
use uuid::Uuid;

/// Where a store lives: a SQLite file or a PostgreSQL database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A SQLite file (created 0600 with its directory when missing).
    Sqlite(PathBuf),
    /// A PostgreSQL database (its schema created when missing; the database itself is the DBA's).
    Postgres(crate::pg::Target),
}

impl Location {
    /// For messages: the path, or a URL without its password.
    pub fn describe(&self) -> String {
        match self {
            Location::Sqlite(p) => p.display().to_string(),
            Location::Postgres(t) => t.describe(),
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

/// What the bank asked for on one customer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    /// Register the relationship (POST).
    Add,
    /// End the relationship (DELETE).
    Remove,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Add => "add",
            Operation::Remove => "remove",
        }
    }
}

/// The sources of operations issued by `kfr add` / `kfr remove`. What one of them leaves queued
/// (held by a load's barrier, or behind earlier events) a load sends once confirmed, and a rerun
/// of either command sends ahead of its own operation.
pub const OWN_SOURCES: [&str; 2] = ["kfr add", "kfr remove"];

/// Issue order of an event in the store.
pub type Seq = i64;

/// One KFR as one institution writes to it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Register {
    /// `local`, `test` or `prod`.
    pub environment: String,
    /// The KFR base URL as configured.
    pub base_url: String,
    /// The institution's org.nr (`fid`).
    pub org_number: String,
}

impl Register {
    /// The canonical key stored with every event, job and batch: `environment|url|org.nr`, the
    /// URL reduced to scheme, host (lowercase; every loopback name the same), port (default
    /// made explicit) and path without a trailing slash, so a re-spelt URL is the same register
    /// and another service never is.
    pub fn key(&self) -> String {
        format!(
            "{}|{}|{}",
            self.environment,
            canonical_url(&self.base_url),
            self.org_number
        )
    }
}

/// See [`Register::key`]; an unparseable URL is kept as written.
pub fn canonical_url(u: &str) -> String {
    let Ok(url) = url::Url::parse(u) else {
        return u.to_string();
    };
    let host = match url.host() {
        Some(url::Host::Domain(d)) if d.eq_ignore_ascii_case("localhost") => "loopback".to_string(),
        Some(url::Host::Domain(d)) => d.to_ascii_lowercase(),
        Some(url::Host::Ipv4(ip)) if ip.is_loopback() => "loopback".to_string(),
        Some(url::Host::Ipv6(ip)) if ip.is_loopback() => "loopback".to_string(),
        Some(h) => h.to_string(),
        None => return u.to_string(),
    };
    let port = url.port_or_known_default().map(|p| p.to_string()).unwrap_or_default();
    format!(
        "{}://{}:{}{}",
        url.scheme(),
        host,
        port,
        url.path().trim_end_matches('/')
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(url: &str) -> String {
        Register {
            environment: "test".into(),
            base_url: url.into(),
            org_number: "923609016".into(),
        }
        .key()
    }

    #[test]
    fn a_register_key_ignores_spelling_but_not_the_service() {
        let base = "https://preprod.api.bits.no/kar-ws/api/v1";
        assert_eq!(key(base), key("https://PREPROD.api.bits.no:443/kar-ws/api/v1/"));
        assert_eq!(key("http://127.0.0.1:8080/a"), key("http://localhost:8080/a"));
        assert_eq!(key("http://[::1]:8080/a"), key("http://127.0.0.1:8080/a/"));
        assert_ne!(key(base), key("https://api.bits.no/kar-ws/api/v1"));
        assert_ne!(key(base), key("http://preprod.api.bits.no/kar-ws/api/v1"));
        assert_ne!(key("http://127.0.0.1:8080/a"), key("http://127.0.0.1:8081/a"));
    }
}

/// A new event, validated at the door: the customer identifier is well-formed and in full.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// The dedupe key: an event id already in the store (in any state) is not stored again.
    pub event_id: String,
    pub op: Operation,
    /// In full: for the request and the store only, never for logs or reports.
    pub customer_id: String,
    /// Only for adds. `None`: KFR's default (the day it registers the relationship).
    pub start_date: Option<NaiveDate>,
    /// When it happened in the core system (as sent, or when received if the source had none).
    pub occurred_at: DateTime<Utc>,
    /// The source's name (`http`, a spool directory's name, `stdin`, `kfr enqueue`, `kfr remove`…).
    pub source: String,
}

/// One piece of a streamed enqueue ([`super::backend::Outbox::enqueue_stream`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Chunk {
    /// The next events, in order.
    Events(Vec<NewEvent>),
    /// The caller found a reason not to store anything of the stream (a bad line, a file that
    /// changed while read): everything stored by the call so far is rolled back.
    Abort,
}

/// What a streamed enqueue stored: counts only (the events were never all in memory).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Streamed {
    pub stored_adds: u64,
    pub stored_removes: u64,
    /// Events whose id was stored already, for the same event.
    pub duplicates: u64,
}

impl Streamed {
    pub fn stored(&self) -> u64 {
        self.stored_adds + self.stored_removes
    }
}

/// What `enqueue` did with one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "result")]
pub enum Enqueued {
    Stored {
        seq: Seq,
    },
    /// The event id was already in the store, as `seq`; nothing was written.
    Duplicate {
        seq: Seq,
    },
}

/// Where an event stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventState {
    /// Waiting for its turn, its next attempt time, the barrier, or the rate limit.
    Pending,
    /// Handed to the dispatcher; the answer is not recorded yet. In a batch when
    /// `batch_correlation_id` is set: from before the upload's first byte until its answer.
    InFlight,
    /// In a batch KFR accepted (201), or whose upload's fate is unknown (`accepted_at` is
    /// `None`); waiting to be seen ingested. Still its customer's head.
    Accepted,
    /// KFR is in the wanted state. Finished.
    Delivered,
    /// Refused for its content; parks its customer until retried or dropped.
    DeadLettered,
    /// Dropped from the dead-letter queue by an operator. Finished; never sent.
    Dropped,
}

impl EventState {
    /// As stored and shown (`pending`, `in_flight`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            EventState::Pending => "pending",
            EventState::InFlight => "in_flight",
            EventState::Accepted => "accepted",
            EventState::Delivered => "delivered",
            EventState::DeadLettered => "dead_lettered",
            EventState::Dropped => "dropped",
        }
    }
}

/// One stored event.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct OutboxEvent {
    pub seq: Seq,
    pub register: String,
    pub event_id: String,
    pub op: Operation,
    /// In full: for the request and the store only.
    #[serde(skip)]
    pub customer_id: String,
    pub start_date: Option<NaiveDate>,
    pub occurred_at: DateTime<Utc>,
    pub source: String,
    pub received_at: DateTime<Utc>,
    /// Fixed when stored: every attempt of this event carries it, across restarts.
    pub correlation_id: Uuid,
    pub state: EventState,
    /// Attempts whose answer was recorded (delivered or not).
    pub attempts: u32,
    /// Not before this time (persisted backoff); `None`: now.
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// When the first failed attempt of the current run of failures was recorded: transient
    /// retries are bounded by time since then, not by count.
    pub failing_since: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    /// The batch upload carrying this event (adds with a start date before today).
    pub batch_correlation_id: Option<Uuid>,
    /// When KFR accepted that batch; `None` while its fate is unknown.
    pub accepted_at: Option<DateTime<Utc>>,
    /// Who holds it in flight, and until when (see the module docs on claims).
    pub claimer: Option<String>,
    pub claimed_until: Option<DateTime<Utc>>,
    /// How it reached the wanted state, once delivered.
    pub delivery: Option<Delivery>,
}

/// How an event reached the wanted state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    /// Add: 201.
    Added,
    /// Add: 200, it was already registered (idempotent success, counted apart).
    AlreadyPresent,
    /// Remove: 204.
    Removed,
    /// Remove: 404 KFR-008, there was nothing to end (idempotent success, counted apart).
    NotFound,
    /// Add by batch: an own lookup for its start date shows the relationship, and it was not
    /// visible before the upload.
    IngestedSeen,
    /// Add by batch: could not be told apart by a lookup (visible before the upload), so
    /// confirmed by the expected ingestion time plus a margin.
    IngestedByTime,
}

/// The answer to record for one event.
#[derive(Debug, Clone, PartialEq)]
pub struct Settlement {
    pub seq: Seq,
    pub delivery: Delivery,
    /// The CorrelationID KFR echoed, if it did.
    pub echoed_correlation_id: Option<String>,
    pub at: DateTime<Utc>,
}

/// KFR's answer to a rejected event, kept whole for the operator (server text already masked).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Rejection {
    pub status: Option<u16>,
    /// KFR's code (`KFR-005`), if any.
    pub code: Option<String>,
    /// The response body, masked (`ids::scrub`).
    pub body: String,
    /// One line for screens.
    pub reason: String,
}

/// A dead-lettered event and why.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DeadLetter {
    pub event: OutboxEvent,
    pub rejection: Rejection,
    pub dead_at: DateTime<Utc>,
    /// Events of the same customer waiting behind it.
    pub parked_behind: u64,
}

/// Which dead letters to act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetters {
    One(Seq),
    All,
}

/// What `recover` found after a restart.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Recovered {
    /// Single adds/removes that were in flight: back to pending (resending is safe: 200 on add
    /// and 404 on remove are successes).
    pub requeued: u64,
    /// Batch events whose upload's fate is unknown: now `Accepted` with no `accepted_at`, to be
    /// probed before anything is sent again.
    pub unknown_uploads: u64,
}

/// Counts for `kfr outbox status` and the metrics.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct OutboxStatus {
    pub pending: u64,
    pub in_flight: u64,
    pub accepted: u64,
    pub delivered: u64,
    pub dead_lettered: u64,
    pub dropped: u64,
    /// Customers whose head is dead-lettered.
    pub parked_customers: u64,
    /// Events waiting behind those heads.
    pub parked_events: u64,
    /// `received_at` of the oldest unfinished event.
    pub oldest_unfinished: Option<DateTime<Utc>>,
    /// The load job holding removes back, if any.
    pub barrier: Option<i64>,
}

/// Where a customer stands in the ledger: what this tool last made KFR hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LedgerState {
    Active,
    Ended,
}

/// The ledger's current row for one customer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LedgerEntry {
    #[serde(skip)]
    pub customer_id: String,
    pub state: LedgerState,
    pub start_date: Option<NaiveDate>,
    pub since: DateTime<Utc>,
    pub correlation_id: Uuid,
}

/// What [`OutboxBackend::enqueue_and_claim`] did with a caller's own event.
#[derive(Debug, Clone, PartialEq)]
pub enum OwnEvent {
    /// Stored as its customer's head and in flight for the caller alone: send it now.
    Claimed(Box<OutboxEvent>),
    /// Stored behind `ahead` unfinished events of its customer, or (`ahead` 0) a remove held by
    /// the barrier of load job `barrier`; `barrier` is that job whenever one holds removes of
    /// the register. Whoever delivers the queue (the sync agent, a load) sends it in turn.
    Queued {
        seq: Seq,
        correlation_id: Uuid,
        ahead: u64,
        barrier: Option<i64>,
    },
    /// The event id was already stored as `seq`; nothing was written or claimed.
    Duplicate { seq: Seq },
}

/// How a caller's attempt on its own claimed event ended.
#[derive(Debug, Clone, PartialEq)]
pub enum ClaimEnd {
    /// KFR is in the wanted state (as [`OutboxBackend::settle`]).
    Delivered {
        delivery: Delivery,
        echoed_correlation_id: Option<String>,
    },
    /// A failed attempt (transient): pending again, not before `not_before`, attempt counted
    /// (as [`OutboxBackend::retry_later`]).
    RetryLater { not_before: DateTime<Utc>, error: String },
    /// Handed back without counting an attempt (systemic failure, or never sent), as
    /// [`OutboxBackend::release`]; `error` is kept for the operator.
    Release { error: String },
    /// Refused for its content (as [`OutboxBackend::dead_letter`]).
    DeadLetter(Rejection),
}

/// Whether [`OutboxBackend::finish_claim`] recorded the caller's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimFinished {
    Recorded,
    /// The event was no longer the caller's claim (it is now in `state`); nothing was recorded.
    TakenOver {
        state: EventState,
    },
}

// ---- Load jobs ---------------------------------------------------------------------------------

/// A job's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Planned, partly uploaded or not yet confirmed: deletes are held.
    Running,
    /// Every batch confirmed ingested.
    Confirmed,
    /// Given up by an operator: never confirmed, no longer holds removes back.
    Abandoned,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Running => "running",
            JobStatus::Confirmed => "confirmed",
            JobStatus::Abandoned => "abandoned",
        }
    }
}

/// A batch's state. Moves only forward (planned → uploading → accepted → confirmed), except
/// uploading → planned when KFR definitely refused the upload or a lookup proved it absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchStatus {
    Planned,
    Uploading,
    Accepted,
    Confirmed,
}

impl BatchStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            BatchStatus::Planned => "planned",
            BatchStatus::Uploading => "uploading",
            BatchStatus::Accepted => "accepted",
            BatchStatus::Confirmed => "confirmed",
        }
    }
}

/// A stored job.
#[derive(Debug, Clone, serde::Serialize)]
pub struct JobRecord {
    pub id: i64,
    pub input_path: String,
    pub content_hash: String,
    /// JSON written by the load module: the settings that shaped the batches.
    pub settings: String,
    pub status: JobStatus,
    pub entries: u64,
    pub created_at: String,
    pub confirmed_at: Option<String>,
    /// The register the job loads ([`Register::key`]); `None`: unknown, so it holds removes of
    /// every register while running.
    pub register: Option<String>,
}

/// A job to create.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub input_path: String,
    pub content_hash: String,
    /// JSON: the settings that shape the batches (and name the register).
    pub settings: String,
    pub entries: u64,
    pub batches: Vec<NewBatch>,
}

/// What [`super::backend::Jobs::abandon_job`] does with the operations held in the job's register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeldAtAbandon {
    /// Abandon only if none waits.
    Refuse,
    /// Abandon and leave them queued, the barrier down: the caller sends them now.
    Release,
    /// Abandon and finish them as dropped, never sent.
    Drop,
}

/// The answer of [`super::backend::Jobs::abandon_job`].
#[derive(Debug)]
pub enum Abandonment {
    NoSuchJob,
    /// Confirmed jobs are complete: nothing to abandon (nothing changed).
    Confirmed,
    /// Held operations wait and the rule was [`HeldAtAbandon::Refuse`]: nothing changed.
    HeldWaiting {
        held: Vec<OutboxEvent>,
    },
    /// The job was abandoned before and there is nothing (more) to do: nothing changed. `held`:
    /// what still waits in its register (with `Refuse`).
    AlreadyAbandoned {
        held: Vec<OutboxEvent>,
    },
    /// Abandoned now (`was_running`), or abandoned before and its held operations settled now.
    /// `held`: the operations that waited, in issue order (dropped ones are `Dropped`).
    Abandoned {
        was_running: bool,
        held: Vec<OutboxEvent>,
    },
}

/// A batch to create with its job.
#[derive(Debug, Clone)]
pub struct NewBatch {
    pub first_entry: u64,
    pub entry_count: u64,
    pub bytes: u64,
    pub correlation_id: Uuid,
}

/// A stored batch.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BatchRecord {
    pub seq: u32,
    pub first_entry: u64,
    pub entry_count: u64,
    pub bytes: u64,
    pub correlation_id: Uuid,
    pub status: BatchStatus,
    pub uploading_at: Option<String>,
    pub accepted_at: Option<String>,
    pub confirmed_at: Option<String>,
    /// Offset in the batch of the entry not visible before the upload, which confirms it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub witness: Option<u64>,
    /// Whether the entries were checked before the upload (a witness chosen, or none found).
    #[serde(skip)]
    pub witness_checked: bool,
    /// How the batch was confirmed: `witness`, `witness+time` or `time`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confirmed_by: Option<String>,
    /// Uploads repeated after one whose fate was unknown and whose entries were not found.
    pub resends: u32,
}

/// A change to one batch (one transaction each; see [`super::backend::Jobs::update_batch`]).
#[derive(Debug, Clone, PartialEq)]
pub enum BatchChange {
    /// Moves the batch to this status, stamping the status's time.
    Status(BatchStatus),
    /// The entry that will confirm the batch (checked not visible before the upload), or none.
    Witness(Option<u64>),
    /// How the batch was confirmed (`witness`, `witness+time`, `time`).
    ConfirmedBy(String),
    /// One more upload after an upload whose fate was unknown.
    Resent,
}

// ---- Leases ------------------------------------------------------------------------------------

/// The right to deliver one register's events, held by one process at a time.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Lease {
    pub register: String,
    /// Who holds it (`sync:<host>:<pid>:<uuid>`), written into every claim it makes.
    pub holder: String,
    /// Grows on every takeover; a write carrying an older epoch is [`super::StoreError::Fenced`].
    pub epoch: i64,
    /// Until when the lease holds without a renewal.
    pub until: DateTime<Utc>,
}

/// Who holds a register's lease, as anyone may read it (`kfr status`, a standby).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LeaseHolder {
    pub holder: String,
    pub epoch: i64,
    pub until: DateTime<Utc>,
}

/// Who claims an event for sending, and for how long (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimer {
    /// `sync:…` for the agent, `cli:…` for one `kfr add/remove`, `load:…` for a load.
    pub name: String,
    /// The lease epoch the claimer delivers under; `None` for a claimer without a lease (one
    /// `kfr add/remove`, a load's held operations), fenced by its name alone.
    pub epoch: Option<i64>,
    /// How long a claim lasts: longer than any request the claimer starts under it.
    pub ttl: chrono::Duration,
}

// ---- History -----------------------------------------------------------------------------------

/// One line of the append-only history: an attempt and how it ended, or an operator's action.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct HistoryRecord {
    pub at: DateTime<Utc>,
    pub register: String,
    /// In full: for the store and for an operator who asks for it only.
    #[serde(skip)]
    pub customer_id: String,
    pub seq: Option<Seq>,
    pub event_id: Option<String>,
    pub op: Option<Operation>,
    pub correlation_id: Option<Uuid>,
    pub kind: HistoryKind,
    /// What happened: `delivered:added`, `retry`, `released`, `dead_lettered`,
    /// `dlq_retry`, `dlq_drop`, `abandon`…
    pub outcome: String,
    pub status: Option<u16>,
    /// KFR's code (`KFR-005`), if any.
    pub code: Option<String>,
    /// Masked detail (an error's text, an operator's reason).
    pub detail: Option<String>,
    /// Who: the claimer of an attempt, the OS user or `--actor` of an operator action.
    pub actor: Option<String>,
}

/// What kind of line a [`HistoryRecord`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HistoryKind {
    /// One attempt at KFR and how it ended.
    Attempt,
    /// An operator's action (dlq retry/drop, load abandon, cancel).
    Operator,
}

impl HistoryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            HistoryKind::Attempt => "attempt",
            HistoryKind::Operator => "operator",
        }
    }
}

/// An operator's action to record with what it changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorAction {
    /// The OS user, or `--actor`.
    pub actor: String,
    /// `--reason`, if given.
    pub reason: Option<String>,
}

// ---- Operations: cancel, the agent's heartbeat, backups -----------------------------------------

/// Which pending events an operator cancels (`kfr outbox cancel`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToCancel {
    /// One event by its outbox entry.
    Seq(Seq),
    /// One event by the event id its source gave it.
    EventId(String),
    /// Every pending event of one customer (identifier in full) in a register.
    Customer { register: String, customer_id: String },
}

/// What a cancel did: the events it cancelled, in issue order (their state before: pending).
#[derive(Debug, Clone, PartialEq)]
pub struct Cancelled {
    pub events: Vec<OutboxEvent>,
    /// For a customer: its unfinished events left alone (in flight, accepted, dead-lettered),
    /// as (seq, state).
    pub left: Vec<(Seq, EventState)>,
}

/// Whether an agent delivers or stands by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentRole {
    /// Holds the register's delivery lease.
    Leader,
    /// Takes events into the shared outbox while another agent delivers.
    Standby,
    /// Has stopped (its last heartbeat, written while shutting down).
    Stopped,
}

impl AgentRole {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentRole::Leader => "leader",
            AgentRole::Standby => "standby",
            AgentRole::Stopped => "stopped",
        }
    }
}

/// One agent's latest sign of life, recorded by `kfr sync` every few seconds (`kfr status`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Heartbeat {
    pub register: String,
    /// The agent's lease-holder name (`sync:<host>:<pid>:<uuid>`).
    pub holder: String,
    pub role: AgentRole,
    /// Every reason the agent is not ready (a pause with its cause, the store, draining);
    /// empty when ready. No personal data.
    pub unready: Vec<String>,
    /// The agent's version (`kfr --version`).
    pub version: String,
    pub started_at: DateTime<Utc>,
    pub at: DateTime<Utc>,
}

/// A verified copy of the store (`kfr backup`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BackupInfo {
    /// The copy's schema version, read back from the copy.
    pub schema_version: u32,
    pub bytes: u64,
}

/// The tables `kfr store migrate` moves, in an order that keeps every reference valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferTable {
    LoadJobs,
    LoadBatches,
    Ledger,
    LedgerCurrent,
    Outbox,
    History,
    SourceCursors,
}

impl TransferTable {
    pub const ALL: [TransferTable; 7] = [
        TransferTable::LoadJobs,
        TransferTable::LoadBatches,
        TransferTable::Ledger,
        TransferTable::LedgerCurrent,
        TransferTable::Outbox,
        TransferTable::History,
        TransferTable::SourceCursors,
    ];

    /// The table's name, the same in every backend.
    pub fn name(self) -> &'static str {
        match self {
            TransferTable::LoadJobs => "load_jobs",
            TransferTable::LoadBatches => "load_batches",
            TransferTable::Ledger => "ledger",
            TransferTable::LedgerCurrent => "ledger_current",
            TransferTable::Outbox => "outbox",
            TransferTable::History => "history",
            TransferTable::SourceCursors => "source_cursors",
        }
    }

    /// The key order rows are exported in.
    pub fn key(self) -> &'static str {
        match self {
            TransferTable::LoadJobs | TransferTable::Ledger | TransferTable::History => "id",
            TransferTable::LoadBatches => "job_id, seq",
            TransferTable::LedgerCurrent => "register, customer_id",
            TransferTable::Outbox => "seq",
            TransferTable::SourceCursors => "source",
        }
    }

    /// Columns stored as JSON text by SQLite and as `jsonb` by PostgreSQL.
    pub fn json_columns(self) -> &'static [&'static str] {
        match self {
            TransferTable::Outbox => &["rejection"],
            _ => &[],
        }
    }

    /// Columns SQLite stores as 0/1 (or NULL/1) and PostgreSQL as booleans.
    pub fn bool_columns(self) -> &'static [&'static str] {
        match self {
            TransferTable::Outbox => &["head"],
            TransferTable::LoadBatches => &["witness_checked"],
            _ => &[],
        }
    }
}
