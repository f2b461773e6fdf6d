//! The outbox: every relationship event `kfr` has accepted and not yet finished with, one queue per
//! customer, durable before anyone is told it was taken (docs/specs/outbox.md).
//!
//! This file states the interface in domain terms — enqueue, claim, settle, retry later, park
//! (dead-letter), barrier — so a second backend (PostgreSQL) can implement it with the same
//! guarantees; `conformance` holds the tests any backend must pass. The SQLite backend is
//! [`super::Store`]; [`OutboxHandle`] runs a backend on its own thread behind an async facade.
//!
//! Vocabulary:
//! - A **register** is one KFR as seen by one institution: environment, KFR base URL and org.nr
//!   ([`Register::key`]). Events, load jobs and batches each belong to one; nothing of one
//!   register is ever sent to another.
//! - An event's **seq** is issue order within the store: it only grows.
//! - A customer's **head** is its oldest event that is not finished (delivered, dropped). Only a
//!   head is ever handed out, and only one at a time, so a customer's events reach KFR in the
//!   order they were issued.
//! - A customer is **parked** while its head is dead-lettered: its later events wait until an
//!   operator retries or drops the head. Other customers are not affected.
//! - The **barrier**: while an initial load of the same register is not confirmed ingested, a
//!   remove at the head of its queue waits (onboarding D-3 step 4), and so does everything behind it.

use super::queue::Operation;
use chrono::{DateTime, NaiveDate, Utc};
use uuid::Uuid;

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

/// What a store operation could not do. Each says what an operator can act on.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process holds the write lock longer than the busy timeout.
    #[error("the state store {path} is busy (another kfr process is writing)")]
    Busy { path: String },
    /// The file is not a kfr store, or is damaged.
    #[error("the state store {path} is unreadable or damaged: {detail}")]
    Corrupt { path: String, detail: String },
    /// The disk refused the write (full, read-only, permissions).
    #[error("the state store {path} cannot be written: {detail}")]
    NotWritable { path: String, detail: String },
    /// The file at the store's path is no longer the one kfr opened (deleted, moved or
    /// replaced): anything written now would be lost, so nothing is.
    #[error("the state store {path} was removed or replaced while kfr had it open; nothing more is written to it")]
    Replaced { path: String },
    /// A seq that does not exist, or is not in the state the operation needs.
    #[error("event {seq} {problem}")]
    WrongState { seq: Seq, problem: String },
    /// The store thread is gone (it panicked or the handle outlived it).
    #[error("the state store's thread has stopped")]
    Stopped,
    /// Anything else from the backend, with its detail.
    #[error("state store error: {0}")]
    Other(String),
}

/// The outbox as any backend implements it. All methods are one transaction each: they either
/// happen whole or not at all. `register` is a [`Register::key`].
pub trait OutboxBackend: Send {
    /// Stores `events` in order, skipping event ids already stored, all in one transaction
    /// (group commit); nothing of a failed call is stored. An event id is known until its
    /// finished event is purged. Each stored event gets a new CorrelationID, fixed for life.
    fn enqueue(&mut self, register: &str, events: &[NewEvent]) -> Result<Vec<Enqueued>, StoreError>;

    /// After a restart: in-flight single events back to pending, in-flight batch events to
    /// `Accepted` with unknown fate (see [`Recovered`]).
    fn recover(&mut self, register: &str) -> Result<Recovered, StoreError>;

    /// Up to `limit` customer heads that may be sent now, oldest first, marked in flight: pending,
    /// `next_attempt_at` passed, customer not parked, and for a remove the barrier down.
    fn claim_ready(&mut self, register: &str, now: DateTime<Utc>, limit: usize)
    -> Result<Vec<OutboxEvent>, StoreError>;

    /// Marks claimed events as carried by the batch upload `batch_correlation_id`, before its
    /// first byte is sent.
    fn begin_batch(&mut self, seqs: &[Seq], batch_correlation_id: Uuid) -> Result<(), StoreError>;

    /// KFR accepted the batch (201): its events become `Accepted` at `at`.
    fn batch_accepted(&mut self, batch_correlation_id: Uuid, at: DateTime<Utc>) -> Result<(), StoreError>;

    /// The batch upload's answer never came (timeout, connection lost, 5xx after the body went
    /// out): its events become `Accepted` with no `accepted_at`, to be probed before any resend.
    fn batch_unknown(&mut self, batch_correlation_id: Uuid) -> Result<(), StoreError>;

    /// Events in `Accepted` (waiting to be seen ingested, or of unknown fate).
    fn accepted(&mut self, register: &str) -> Result<Vec<OutboxEvent>, StoreError>;

    /// Records deliveries, and the ledger's new state for each customer, in one transaction.
    /// Each event must be in flight or accepted, and the delivery must fit its operation (an add
    /// is not `Removed`); otherwise nothing of the call is recorded. The customer's next event
    /// becomes its head.
    fn settle(&mut self, settlements: &[Settlement]) -> Result<(), StoreError>;

    /// A failed attempt (transient): back to pending not before `at`, attempts + 1,
    /// `failing_since` set if not yet; keeps its place at its customer's head.
    fn retry_later(&mut self, seq: Seq, at: DateTime<Utc>, error: &str) -> Result<(), StoreError>;

    /// Hands claimed or accepted events back without counting an attempt (rate limit, systemic
    /// pause, shutdown, an unknown upload found not ingested). They forget their batch, and stay
    /// at their customers' heads.
    fn release(&mut self, seqs: &[Seq]) -> Result<(), StoreError>;

    /// Refused for its content: the event is dead-lettered with KFR's answer and its customer
    /// parked.
    fn dead_letter(&mut self, seq: Seq, rejection: &Rejection, at: DateTime<Utc>) -> Result<(), StoreError>;

    /// The dead-letter queue, oldest first (`None`: every register).
    fn dead_letters(&mut self, register: Option<&str>) -> Result<Vec<DeadLetter>, StoreError>;

    /// Puts dead letters back as pending at the head of their customers (attempts kept);
    /// returns how many.
    fn retry_dead(&mut self, which: DeadLetters) -> Result<u64, StoreError>;

    /// Drops dead letters (never sent; the ledger is unchanged); their customers move on.
    fn drop_dead(&mut self, which: DeadLetters, at: DateTime<Utc>) -> Result<u64, StoreError>;

    /// Counts; `None`: every register.
    fn status(&mut self, register: Option<&str>) -> Result<OutboxStatus, StoreError>;

    /// Deletes finished events (delivered, dropped) finished before `before`; returns how many.
    /// Never anything unfinished; seqs are not reused afterwards.
    fn purge(&mut self, before: DateTime<Utc>) -> Result<u64, StoreError>;

    /// The ledger's current state per customer of `register`.
    fn ledger(&mut self, register: &str) -> Result<Vec<LedgerEntry>, StoreError>;

    /// Customers of `register` with an unfinished event (what a reconcile must leave alone).
    fn unfinished_customers(&mut self, register: &str) -> Result<std::collections::HashSet<String>, StoreError>;

    /// The load job of `register` that holds removes back, if one is not confirmed yet.
    fn barrier(&mut self, register: &str) -> Result<Option<i64>, StoreError>;

    /// For a caller that sends its own event itself (`kfr add`, `kfr remove`): stores `event` at
    /// the end of its customer's queue and, in the same transaction, if it is the customer's head
    /// and may go now (an add, or a remove with the barrier down), marks it in flight for
    /// `claimer`. Nothing else hands out a claimed event or anything behind it until the claimer
    /// finishes it ([`OutboxBackend::finish_claim`]), so the caller's request is its customer's
    /// only one in flight. Otherwise the event waits in the queue like any other and whoever
    /// delivers the queue sends it in turn. `correlation_id` is the event's for life (the caller
    /// may have been given one to use).
    fn enqueue_and_claim(
        &mut self,
        register: &str,
        event: &NewEvent,
        correlation_id: Uuid,
        claimer: &str,
        now: DateTime<Utc>,
    ) -> Result<OwnEvent, StoreError>;

    /// Records how `claimer`'s attempt on its claimed event `seq` ended, in one transaction, as
    /// `settle`, `retry_later`, `release` or `dead_letter` would (the ledger moves with a
    /// delivery). If the event is no longer in flight for `claimer` (a sync agent's `recover`
    /// took it back, so the agent sends it again), nothing is recorded and the answer says so:
    /// the one who holds it now records its own answer.
    fn finish_claim(
        &mut self,
        seq: Seq,
        claimer: &str,
        end: &ClaimEnd,
        at: DateTime<Utc>,
    ) -> Result<ClaimFinished, StoreError>;

    /// Claims `customer`'s head in `register` for `claimer` if it is pending and due
    /// (`next_attempt_at` passed), not a remove held by the barrier, and from one of `sources`;
    /// `None` otherwise. A caller queued behind its own earlier operations (a rerun of `kfr add`
    /// after a failure) sends them first, in order, with no sync agent running. Finished with
    /// [`OutboxBackend::finish_claim`].
    fn claim_head_of(
        &mut self,
        register: &str,
        customer: &str,
        sources: &[&str],
        claimer: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<OutboxEvent>, StoreError>;
}

/// What [`OutboxBackend::enqueue_and_claim`] did with a caller's own event.
#[derive(Debug, Clone, PartialEq)]
pub enum OwnEvent {
    /// Stored as its customer's head and in flight for the caller alone: send it now.
    Claimed(OutboxEvent),
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
