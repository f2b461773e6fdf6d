//! What a state-store backend implements: small synchronous traits, one transaction per call, in
//! the store's own vocabulary ([`super::types`]). A backend runs on its own thread behind
//! [`super::Store`]; callers never see these traits. `conformance` is the test suite that
//! defines a backend: every backend passes all of it, its concurrency section included.
//!
//! Rules every method keeps:
//! - One transaction: it happens whole or not at all; a failure leaves nothing behind.
//! - Times are passed in (`now`, `at`): a backend never reads the clock, so the callers' clock
//!   (and a test's) decides every deadline.
//! - A transition is a conditional statement or sits inside one write transaction that reads
//!   what it changes, so two processes on one store cannot both see a head as free.
//! - `register` is a [`super::types::Register::key`].

use super::error::StoreError;
use super::types::*;
use chrono::{DateTime, NaiveDate, Utc};
use std::collections::HashSet;
use uuid::Uuid;

/// The outbox: one queue per customer, claims, outcomes, the dead letters, the barrier.
pub trait Outbox {
    /// Stores `events` in order, skipping event ids already stored for the same event (same
    /// register, operation, customer and start date), all in one transaction (group commit);
    /// nothing of a failed call is stored. An id stored already for a *different* event fails the
    /// whole call with [`StoreError::EventIdConflict`]. An event id is known until its finished
    /// event is purged. Each stored event gets a new CorrelationID, fixed for life.
    fn enqueue(&mut self, register: &str, events: &[NewEvent], now: DateTime<Utc>)
    -> Result<Vec<Enqueued>, StoreError>;

    /// Takes back claims whose holder can no longer be sending them: in-flight events whose
    /// claim expired (`claimed_until` passed) and was made under an older lease epoch than
    /// `epoch` or under none. Singles go back to pending, not before `claimed_until + hold` (a
    /// request sent under the claim may still be carried out until then: in doubt means hold);
    /// batch events to `Accepted` with unknown fate (see [`Recovered`]). A claim still within its
    /// time is left alone, whoever made it: its request may be on the wire.
    fn recover(
        &mut self,
        register: &str,
        epoch: i64,
        now: DateTime<Utc>,
        hold: chrono::Duration,
    ) -> Result<Recovered, StoreError>;

    /// Up to `limit` customer heads that may be sent now, oldest first, claimed for `claimer`
    /// until `now + claimer.ttl`: pending, `next_attempt_at` passed, customer not parked, and for
    /// a remove the barrier down. A claimer with an epoch is fenced: [`StoreError::Fenced`] when
    /// the register's lease moved on.
    fn claim_ready(
        &mut self,
        register: &str,
        claimer: &Claimer,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<OutboxEvent>, StoreError>;

    /// Marks claimed events as carried by the batch upload `batch_correlation_id`, before its
    /// first byte is sent.
    fn begin_batch(&mut self, seqs: &[Seq], batch_correlation_id: Uuid) -> Result<(), StoreError>;

    /// KFR accepted the batch (201): its events become `Accepted` at `at`.
    fn batch_accepted(&mut self, batch_correlation_id: Uuid, at: DateTime<Utc>) -> Result<(), StoreError>;

    /// The batch upload's answer never came (timeout, connection lost, 5xx after the body went
    /// out): its events become `Accepted` with no `accepted_at`, to be probed before any resend.
    fn batch_unknown(&mut self, batch_correlation_id: Uuid, at: DateTime<Utc>) -> Result<(), StoreError>;

    /// Events in `Accepted` (waiting to be seen ingested, or of unknown fate).
    fn accepted(&mut self, register: &str) -> Result<Vec<OutboxEvent>, StoreError>;

    /// Records deliveries, and the ledger's new state for each customer, in one transaction.
    /// Each event must be in flight or accepted, and the delivery must fit its operation (an add
    /// is not `Removed`); otherwise nothing of the call is recorded. The customer's next event
    /// becomes its head.
    fn settle(&mut self, settlements: &[Settlement]) -> Result<(), StoreError>;

    /// A failed attempt (transient): back to pending not before `at`, attempts + 1,
    /// `failing_since` set (to `now`) if not yet; keeps its place at its customer's head.
    fn retry_later(&mut self, seq: Seq, at: DateTime<Utc>, error: &str, now: DateTime<Utc>) -> Result<(), StoreError>;

    /// Hands claimed or accepted events back without counting an attempt (rate limit, systemic
    /// pause, shutdown, an unknown upload found not ingested). They forget their batch, and stay
    /// at their customers' heads.
    fn release(&mut self, seqs: &[Seq], now: DateTime<Utc>) -> Result<(), StoreError>;

    /// Refused for its content: the event is dead-lettered with KFR's answer and its customer
    /// parked.
    fn dead_letter(&mut self, seq: Seq, rejection: &Rejection, at: DateTime<Utc>) -> Result<(), StoreError>;

    /// The dead-letter queue, oldest first (`None`: every register).
    fn dead_letters(&mut self, register: Option<&str>) -> Result<Vec<DeadLetter>, StoreError>;

    /// Puts dead letters back as pending at the head of their customers (attempts kept);
    /// returns how many. The action is recorded in the history with who and why.
    fn retry_dead(
        &mut self,
        which: DeadLetters,
        action: &OperatorAction,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError>;

    /// Drops dead letters (never sent; the ledger is unchanged); their customers move on. The
    /// action is recorded in the history with who and why.
    fn drop_dead(&mut self, which: DeadLetters, action: &OperatorAction, now: DateTime<Utc>)
    -> Result<u64, StoreError>;

    /// Counts; `None`: every register.
    fn status(&mut self, register: Option<&str>) -> Result<OutboxStatus, StoreError>;

    /// Deletes finished events (delivered, dropped) finished before `before`; returns how many.
    /// Never anything unfinished; seqs are not reused afterwards. The history is kept apart.
    fn purge(&mut self, before: DateTime<Utc>) -> Result<u64, StoreError>;

    /// The load job of `register` that holds removes back, if one is not confirmed yet.
    fn barrier(&mut self, register: &str) -> Result<Option<i64>, StoreError>;

    /// For a caller that sends its own event itself (`kfr add`, `kfr remove`): stores `event` at
    /// the end of its customer's queue and, in the same transaction, if it is the customer's head
    /// and may go now (an add, or a remove with the barrier down), claims it for `claimer`.
    /// Nothing else hands out a claimed event or anything behind it until the claimer finishes
    /// it ([`Outbox::finish_claim`]) or the claim expires, so the caller's request is its
    /// customer's only one in flight. Otherwise the event waits in the queue like any other.
    /// `correlation_id` is the event's for life.
    fn enqueue_and_claim(
        &mut self,
        register: &str,
        event: &NewEvent,
        correlation_id: Uuid,
        claimer: &Claimer,
        now: DateTime<Utc>,
    ) -> Result<OwnEvent, StoreError>;

    /// Records how `claimer`'s attempt on its claimed event `seq` ended, in one transaction, as
    /// `settle`, `retry_later`, `release` or `dead_letter` would (the ledger moves with a
    /// delivery). If the event is no longer in flight for `claimer` (its claim expired and a sync
    /// agent took it back), nothing is recorded and the answer says so.
    fn finish_claim(
        &mut self,
        seq: Seq,
        claimer: &str,
        end: &ClaimEnd,
        at: DateTime<Utc>,
    ) -> Result<ClaimFinished, StoreError>;

    /// Claims `customer`'s head in `register` for `claimer` if it is pending and due, not a
    /// remove held by the barrier, and from one of `sources`; `None` otherwise.
    fn claim_head_of(
        &mut self,
        register: &str,
        customer: &str,
        sources: &[&str],
        claimer: &Claimer,
        now: DateTime<Utc>,
    ) -> Result<Option<OutboxEvent>, StoreError>;

    /// The oldest head of `register` from one of `sources` that may be sent now (as
    /// [`Outbox::claim_ready`] decides), claimed for `claimer`; `None` when none may go. What a
    /// load uses to send the operations its barrier held.
    fn claim_next_of(
        &mut self,
        register: &str,
        sources: &[&str],
        claimer: &Claimer,
        now: DateTime<Utc>,
    ) -> Result<Option<OutboxEvent>, StoreError>;

    /// Events still in the outbox, in issue order: of `register` (`None`: every register), of
    /// `customer` in full (`None`: every customer).
    fn events_of(&mut self, register: Option<&str>, customer: Option<&str>) -> Result<Vec<OutboxEvent>, StoreError>;

    /// Stores `events` (as [`Outbox::enqueue`]) and, in the same transaction, the position
    /// `cursor` the source `source` read them up to: a restart resumes after the last events
    /// stored, neither skipping nor repeating any. Nothing of a failed call is stored.
    fn enqueue_from_cursor(
        &mut self,
        register: &str,
        events: &[NewEvent],
        source: &str,
        cursor: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<Enqueued>, StoreError>;

    /// Where `source` stopped reading, if it ever stored a position.
    fn source_cursor(&mut self, source: &str) -> Result<Option<String>, StoreError>;

    /// Unfinished events of `register` from one of `sources`, in issue order.
    fn unfinished_of(&mut self, register: &str, sources: &[&str]) -> Result<Vec<OutboxEvent>, StoreError>;
}

/// Initial-load jobs and their batches. Creating a running job raises its register's barrier;
/// confirming or abandoning it lowers the barrier.
pub trait Jobs {
    /// Creates a job with all its batches `planned`; returns its id.
    fn create_job(&mut self, job: &NewJob, now: DateTime<Utc>) -> Result<i64, StoreError>;
    /// The most recent job still running, if any.
    fn unconfirmed_job(&mut self) -> Result<Option<JobRecord>, StoreError>;
    /// Every job, oldest first.
    fn jobs(&mut self) -> Result<Vec<JobRecord>, StoreError>;
    /// The most recent job of any state.
    fn latest_job(&mut self) -> Result<Option<JobRecord>, StoreError>;
    fn job(&mut self, id: i64) -> Result<Option<JobRecord>, StoreError>;
    /// A job's batches in upload order.
    fn batches(&mut self, job: i64) -> Result<Vec<BatchRecord>, StoreError>;
    /// One change to batch `seq` of `job`; [`StoreError::WrongState`] when there is no such batch,
    /// and, for a running job's writes, when the job is no longer running (an operator abandoned
    /// it under the load).
    fn update_batch(&mut self, job: i64, seq: u32, change: &BatchChange, now: DateTime<Utc>) -> Result<(), StoreError>;
    /// Abandons job `id` deciding, in the same transaction, what becomes of the operations held
    /// in its register; recorded in the history with who and why.
    fn abandon_job(
        &mut self,
        id: i64,
        rule: HeldAtAbandon,
        action: &OperatorAction,
        now: DateTime<Utc>,
    ) -> Result<Abandonment, StoreError>;
    /// Marks the job confirmed when every batch is; returns whether it now is.
    fn confirm_job_if_complete(&mut self, job: i64, now: DateTime<Utc>) -> Result<bool, StoreError>;
}

/// What this tool made KFR hold.
pub trait Ledger {
    /// The ledger's current state per customer of `register`, in customer order.
    fn ledger(&mut self, register: &str) -> Result<Vec<LedgerEntry>, StoreError>;
    /// At most `limit` entries of `register`'s ledger after the customer `after` (from the start
    /// when `None`), in customer order: a walk through a large ledger in small steps.
    fn ledger_page(
        &mut self,
        register: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<LedgerEntry>, StoreError>;
    /// Customers of `register` with an unfinished event (what a reconcile must leave alone).
    fn unfinished_customers(&mut self, register: &str) -> Result<HashSet<String>, StoreError>;
    /// Replaces the ledger rows of one batch with `entries` (identifier, start date), in the
    /// job's register.
    fn record_batch(
        &mut self,
        job: i64,
        seq: u32,
        correlation_id: Uuid,
        entries: &[(String, Option<NaiveDate>)],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;
    /// Number of ledger rows (all, or of one batch).
    fn ledger_count(&mut self, batch: Option<(i64, u32)>) -> Result<u64, StoreError>;
}

/// Who may deliver: the delivery lease per register, and the one load writer per store.
pub trait Leases {
    /// Takes `register`'s delivery lease for `holder` until `now + ttl` if nobody holds it (or
    /// its holder's lease ran out), bumping the epoch; `None` while another holds it. The
    /// backend then fences its own outbox writes with the new epoch.
    fn take_lease(
        &mut self,
        register: &str,
        holder: &str,
        now: DateTime<Utc>,
        ttl: chrono::Duration,
    ) -> Result<Option<Lease>, StoreError>;
    /// Extends a held lease; [`StoreError::Fenced`] when another took it over meanwhile.
    fn renew_lease(&mut self, lease: &Lease, now: DateTime<Utc>, ttl: chrono::Duration) -> Result<Lease, StoreError>;
    /// Gives the lease up (at shutdown), so a standby takes over at once.
    fn release_lease(&mut self, lease: &Lease) -> Result<(), StoreError>;
    /// Who holds `register`'s lease, if anyone ever did.
    fn lease_holder(&mut self, register: &str) -> Result<Option<LeaseHolder>, StoreError>;
    /// The store's one load writer: `Ok(None)` taken for `holder`; `Ok(Some(other))` when another
    /// process holds it (`other` says who). Held until [`Leases::release_writer`] or the process
    /// ends, however it ends. It follows the store itself, not the spelling of its location.
    fn take_writer(&mut self, holder: &str) -> Result<Option<String>, StoreError>;
    fn release_writer(&mut self) -> Result<(), StoreError>;
}

/// The append-only record of attempts and operator actions, kept longer than the outbox.
pub trait History {
    /// Lines about `customer` (in full) or every customer, oldest first, from `from` on.
    fn history(
        &mut self,
        customer: Option<&str>,
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
    ) -> Result<Vec<HistoryRecord>, StoreError>;
    /// Deletes lines older than `before`; returns how many.
    fn purge_history(&mut self, before: DateTime<Utc>) -> Result<u64, StoreError>;
}

/// What an operator and an observer need beyond delivery: cancelling pending events, the
/// flood guard's count, the agents' heartbeats, the last delivery, a consistent copy.
pub trait Operations {
    /// Cancels pending events (never one in flight, accepted, dead-lettered or finished: those
    /// are [`StoreError::WrongState`] naming the state, and nothing is changed). A cancelled
    /// event is finished as dropped, its customer's next event becomes its head, and each gets
    /// an operator line in the history with who and why, all in one transaction. For a customer,
    /// every pending event is cancelled and the rest left alone ([`Cancelled::left`]); none
    /// pending is `WrongState` too.
    fn cancel(
        &mut self,
        which: &ToCancel,
        action: &OperatorAction,
        now: DateTime<Utc>,
    ) -> Result<Cancelled, StoreError>;
    /// How many unfinished events `customer` has in `register` (the flood guard's count).
    fn unfinished_count(&mut self, register: &str, customer: &str) -> Result<u64, StoreError>;
    /// Records an agent's heartbeat, replacing its previous one; heartbeats of the register
    /// older than a week before `beat.at` are deleted (agents that stopped long ago).
    fn record_heartbeat(&mut self, beat: &Heartbeat) -> Result<(), StoreError>;
    /// Every agent's latest heartbeat, newest first (`None`: every register).
    fn heartbeats(&mut self, register: Option<&str>) -> Result<Vec<Heartbeat>, StoreError>;
    /// When an event of `register` was last delivered (from the history).
    fn last_delivery(&mut self, register: &str) -> Result<Option<DateTime<Utc>>, StoreError>;
    /// The schema version of the store.
    fn schema_version(&mut self) -> Result<u32, StoreError>;
    /// Writes a consistent copy of the store to `dest` while others keep writing, readable only
    /// by its owner (0600, whatever the umask), then opens the copy and checks it. `dest` must
    /// not exist; nothing is left at `dest` when it fails.
    fn backup_to(&mut self, dest: &std::path::Path) -> Result<BackupInfo, StoreError>;
}

/// Moving an installation to another backend (`kfr store migrate`): every durable row, table by
/// table, in a neutral form — a JSON object per row keyed by column name, with instants as
/// RFC 3339 UTC text, dates as `YYYY-MM-DD`, booleans as booleans, ids as numbers and KFR's
/// answers as JSON. Leases and heartbeats are not moved (they belong to running agents).
pub trait Transfer {
    /// Up to `limit` rows of `table` after the first `offset`, in the table's key order.
    fn export_rows(
        &mut self,
        table: TransferTable,
        offset: u64,
        limit: usize,
    ) -> Result<Vec<serde_json::Value>, StoreError>;
    /// Stores rows another backend exported, keeping their ids, in one transaction.
    fn import_rows(&mut self, table: TransferTable, rows: &[serde_json::Value]) -> Result<(), StoreError>;
    /// How many rows `table` holds.
    fn count_rows(&mut self, table: TransferTable) -> Result<u64, StoreError>;
    /// After the last import: new ids continue after the imported ones.
    fn finish_import(&mut self) -> Result<(), StoreError>;
    /// Deletes every row of every moved table: what a failed migration into an empty store
    /// undoes (never called on a store that held anything before).
    fn discard_import(&mut self) -> Result<(), StoreError>;
}

/// A whole backend: everything [`super::Store`] offers.
pub trait Backend: Outbox + Jobs + Ledger + Leases + History + Operations + Transfer + Send {
    /// What the store is, for messages (a path, a URL without its password).
    fn describe(&self) -> String;
}
