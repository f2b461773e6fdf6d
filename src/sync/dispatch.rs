//! The dispatcher: takes customer heads from the outbox and delivers them to KFR (issue 11 items 4
//! and 5; docs/sync.md "Delivery" is the operator's description).
//!
//! - **Order.** The outbox hands out only customer heads, one at a time per customer
//!   (`Outbox::claim_ready`), so a customer's events reach KFR in issue order while
//!   different customers go in parallel.
//! - **Lease.** It delivers under the register's lease, taken by its caller: every claim carries
//!   the lease's epoch and an expiry, the lease is renewed while it runs, and a deposed holder's
//!   writes fail (`Fenced`), which stops it at once. A request is never started on a claim that
//!   could run out before the request ends; claims of a dead predecessor are taken back only
//!   once they ran out (`recover`, at start and every `recover_interval`).
//! - **Pace.** Every KFR request (add, remove, lookup, batch) passes one global rate limit and a
//!   cap on requests in flight; the outbox is asked only for as many events as the dispatcher
//!   may hold, so memory stays bounded however long the backlog.
//! - **Verdicts.** The verdict's scope decides ([`crate::sync::outcome::decide`], shared with
//!   `kfr add/remove` and the load; docs/specs/verdicts.md): transient → the event
//!   is retried after a persisted, jittered backoff, bounded by time; rate limited → everything
//!   pauses; systemic → everything pauses, the agent reports unready, a slow probe tests for
//!   recovery, nothing is dead-lettered; rejected → the event is dead-lettered with KFR's answer
//!   and only its customer waits.
//! - **True start dates.** An add dated before today cannot go as a single add (KFR records the
//!   day of the call); it goes by batch (`backdated`) and its customer waits until it is seen.
//!
//! Waits use tokio's time; wall time (`next_attempt_at`, today's date) comes from a
//! [`WallClock`], so tests move both.

mod backdated;
mod pace;
#[cfg(test)]
mod tests;

use crate::ids::{CustomerId, IdPolicy, scrub};
use crate::kfr::{Attempt, KfrClient, Scope};
use crate::store::{
    ClaimEnd, Claimer, Delivery, Lease, OutboxEvent, Recovered, Rejection, Seq, Settlement, StoreError,
};
use crate::store::{Operation, Store};
use crate::sync::health::Health;
use crate::sync::outcome::{Effect, Outcome, Rules, decide};
use chrono::{DateTime, NaiveDate, Utc};
use pace::{Gate, Pause, RateGate};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Wall time for the dispatcher: what it persists (`next_attempt_at`) and what "today" is.
pub trait WallClock: Send + Sync + std::fmt::Debug {
    fn now(&self) -> DateTime<Utc>;
}

/// The host's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl WallClock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// Default global rate: 5 requests a second. KFR publishes no limit for single calls, so we
/// stay well below anything a gateway would plausibly enforce; 18,000 an hour is far more than
/// a bank's daily changes.
pub const DEFAULT_RATE: f64 = 5.0;

/// How the dispatcher delivers. Every duration is a tokio duration except where it says wall.
#[derive(Debug, Clone)]
pub struct DispatchConfig {
    /// Requests a second to KFR, all operations together.
    pub rate: f64,
    /// Requests in flight at once.
    pub max_in_flight: usize,
    /// Transient backoff: full jitter over `min(max_delay, base_delay·2^(n-1))`, never sooner
    /// than a server's `Retry-After`, which is honoured up to `retry_after_cap` (also the cap of
    /// a rate-limit pause). `max_attempts` is not used: retries are bounded by `give_up_after`.
    pub retry: crate::http::RetryPolicy,
    /// Wall time since an event's first failure after which a transient failure dead-letters it
    /// (reason "transient failures for …"), visible and retryable by an operator.
    pub give_up_after: Duration,
    /// Between probes while paused on a systemic verdict.
    pub probe_interval: Duration,
    /// Adds dated before today go by batch with their date; `false`: as single adds, and the
    /// date is lost (logged at warn).
    pub backdated_by_batch: bool,
    /// Back-dated adds are gathered this long (from the first) before an upload…
    pub batch_window: Duration,
    /// …or until this many are gathered.
    pub batch_max_entries: usize,
    /// KFR's ingestion speed assumed for the expected ingestion time (entries a second).
    pub ingest_rate: f64,
    /// Added to the expected ingestion time before confirming by time or probing an unknown
    /// upload (wall).
    pub ingest_margin: Duration,
    /// How often accepted batch entries are looked up (and once more an expected ingestion time
    /// after each upload, at least a second).
    pub confirm_interval: Duration,
    /// Finished events older than this many days are purged…
    pub retention_days: u32,
    /// …and history lines older than this many days (kept apart, far longer)…
    pub history_retention_days: u32,
    /// …this often.
    pub purge_interval: Duration,
    /// Idle wait between looks at the outbox (new events can also wake the dispatcher at once,
    /// [`Dispatcher::waker`]).
    pub poll_interval: Duration,
    /// How often the outbox gauges are refreshed.
    pub status_interval: Duration,
    /// On shutdown, how long in-flight requests may take to finish.
    pub shutdown_grace: Duration,
    /// How long a claim lasts (wall): longer than `request_budget`, so a claimed event waits a
    /// while for its rate slot and still starts its request inside the claim.
    pub claim_ttl: Duration,
    /// The longest one attempt may take (request timeout, a token fetch and a 401 retry): a
    /// request is not started on a claim with less time left.
    pub request_budget: Duration,
    /// The register's lease is renewed this often (tokio) for `lease_ttl` (wall) each time.
    pub lease_renew: Duration,
    pub lease_ttl: Duration,
    /// How often claims that ran out (a dead predecessor's, a killed `kfr add`'s) are taken back.
    pub recover_interval: Duration,
    /// Customers of the ledger looked up in KFR an hour by the agent's own register check,
    /// walking the whole ledger over time (`kfr_register_checks_total`); within `rate` like any
    /// request. 0 turns it off.
    pub checks_per_hour: u32,
    /// How long a request of unknown fate may still be carried out (wall): an event whose attempt
    /// is in doubt — no answer, a 5xx, cut at shutdown, its sender killed — waits that long
    /// before it is tried again, and its customer with it (in doubt means hold).
    pub in_doubt: Duration,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        Self {
            rate: DEFAULT_RATE,
            max_in_flight: 8,
            retry: crate::http::RetryPolicy {
                max_attempts: u32::MAX,
                base_delay: Duration::from_secs(1),
                max_delay: Duration::from_secs(300),
                retry_after_cap: Duration::from_secs(300),
            },
            give_up_after: Duration::from_secs(24 * 3600),
            probe_interval: Duration::from_secs(60),
            backdated_by_batch: true,
            batch_window: Duration::from_secs(2),
            batch_max_entries: 1000,
            ingest_rate: 250.0,
            ingest_margin: Duration::from_secs(600),
            confirm_interval: Duration::from_secs(30),
            retention_days: 30,
            history_retention_days: 1827,
            purge_interval: Duration::from_secs(3600),
            poll_interval: Duration::from_secs(1),
            status_interval: Duration::from_secs(15),
            shutdown_grace: Duration::from_secs(30),
            claim_ttl: Duration::from_secs(300),
            request_budget: Duration::from_secs(100),
            lease_renew: Duration::from_secs(5),
            lease_ttl: Duration::from_secs(30),
            recover_interval: Duration::from_secs(10),
            in_doubt: Duration::from_secs(120),
            checks_per_hour: 720,
        }
    }
}

impl DispatchConfig {
    /// The verdict rules of [`decide`].
    pub fn rules(&self) -> Rules {
        Rules {
            retry: self.retry.clone(),
            give_up_after: self.give_up_after,
            in_doubt: self.in_doubt,
        }
    }
}

/// What one run of the dispatcher did, for the CLI's final report.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct DispatchSummary {
    /// What `recover` found at start.
    pub recovered: Recovered,
    /// Events KFR now holds as wanted (idempotent ones included).
    pub delivered: u64,
    /// Of those, 200 on add or 404 on remove.
    pub idempotent: u64,
    /// Transient failures given a persisted next attempt.
    pub retries_scheduled: u64,
    pub dead_lettered: u64,
    /// Batch uploads KFR accepted.
    pub batches_accepted: u64,
    /// Batch uploads whose answer never came (to be probed, never re-sent blindly).
    pub batches_unknown: u64,
    /// Finished events purged.
    pub purged: u64,
    /// Pauses begun (rate limit, outage, systemic).
    pub pauses: u64,
    /// Events handed back to the outbox at shutdown (sent again next start).
    pub released_at_shutdown: u64,
    /// Whether in-flight work was cut at the shutdown deadline.
    pub cut_at_deadline: bool,
    /// The register check: customers found as the ledger says, and found otherwise.
    pub checks_matched: u64,
    pub checks_mismatched: u64,
}

/// The sync agent's delivery loop for one register. A clone delivers for the same register with
/// the same waker: what an agent runs again after it was deposed and leads once more.
#[derive(Debug, Clone)]
pub struct Dispatcher {
    store: Store,
    client: KfrClient,
    register: String,
    cfg: DispatchConfig,
    health: Health,
    clock: Arc<dyn WallClock>,
    waker: Arc<Notify>,
}

impl Dispatcher {
    /// `register_key` is the [`crate::store::Register::key`] the events were stored under;
    /// `client` must write to that register (same base URL and org.nr).
    pub fn new(handle: Store, client: KfrClient, register_key: String, config: DispatchConfig, health: Health) -> Self {
        Self {
            store: handle,
            client,
            register: register_key,
            cfg: config,
            health,
            clock: Arc::new(SystemClock),
            waker: Arc::new(Notify::new()),
        }
    }

    /// Replaces the wall clock (tests).
    pub fn with_clock(mut self, clock: Arc<dyn WallClock>) -> Self {
        self.clock = clock;
        self
    }

    /// Notify it after committing events, and the dispatcher looks at once instead of at its
    /// next poll.
    pub fn waker(&self) -> Arc<Notify> {
        self.waker.clone()
    }

    /// Takes back what was in flight at the last stop (under this lease's epoch) and sets up
    /// the state the delivery tasks share.
    async fn start(self, lease: &Lease) -> Result<Arc<Shared>, DispatchError> {
        let recovered = self
            .store
            .recover(self.register.clone(), lease.epoch, self.clock.now(), self.cfg.in_doubt)
            .await?;
        if recovered != Recovered::default() {
            tracing::info!(
                requeued = recovered.requeued,
                unknown_uploads = recovered.unknown_uploads,
                "recovered events in flight at the last stop"
            );
        }
        Ok(Arc::new(Shared {
            org: self.client.config().org_number.clone(),
            gate: RateGate::new(self.cfg.rate),
            requests: Semaphore::new(self.cfg.max_in_flight.max(1)),
            pause: Mutex::new(Pause::default()),
            tally: Mutex::new(DispatchSummary {
                recovered,
                ..Default::default()
            }),
            unsettled: Mutex::new(HashSet::new()),
            sent: Mutex::new(HashSet::new()),
            unrecorded: Mutex::new(vec![]),
            stopping: std::sync::atomic::AtomicBool::new(false),
            check_walk: Mutex::new(Default::default()),
            book: Mutex::new(backdated::Book::default()),
            retries_due: Mutex::new(BinaryHeap::new()),
            claimer: Claimer {
                name: lease.holder.clone(),
                epoch: Some(lease.epoch),
                ttl: chrono::Duration::from_std(self.cfg.claim_ttl).unwrap_or(chrono::Duration::minutes(5)),
            },
            store: self.store,
            client: self.client,
            register: self.register,
            cfg: self.cfg,
            health: self.health,
            clock: self.clock,
        }))
    }

    /// Delivers until `shutdown` turns `true` (or its sender is dropped), then stops claiming,
    /// lets in-flight requests finish up to `shutdown_grace`, hands back what is left and
    /// returns the summary. An error when it stopped by itself: the store's thread is gone, or a
    /// task panicked (then after handing back what it held, as on shutdown). Either way it can no
    /// longer deliver, and its caller must not go on looking alive.
    ///
    /// It delivers under `lease` (the register's, taken by the caller), renews it while it runs
    /// and gives it up at the end; [`DispatchError::Store`] with [`StoreError::Fenced`] when
    /// another process took it over meanwhile (this one then delivers nothing more).
    pub async fn run(
        self,
        mut shutdown: watch::Receiver<bool>,
        lease: Lease,
    ) -> Result<DispatchSummary, DispatchError> {
        let waker = self.waker.clone();
        let sh = self.start(&lease).await?;
        let cfg = &sh.cfg;
        let mut tasks: JoinSet<Done> = JoinSet::new();
        let mut singles = 0usize;
        let mut uploading = 0usize;
        let mut confirming = false;
        let mut gathered: Vec<OutboxEvent> = vec![];
        let mut gathered_since = Instant::now();
        let mut flush_now = false;
        let start = Instant::now();
        let (mut next_confirm, mut next_purge, mut next_status) = (start, start, start);
        let (mut next_renew, mut next_recover) = (start + cfg.lease_renew, start + cfg.recover_interval);
        let check_every =
            (cfg.checks_per_hour > 0).then(|| Duration::from_secs_f64(3600.0 / f64::from(cfg.checks_per_hour)));
        let mut next_check = start + check_every.unwrap_or_default();
        let mut checking = false;
        let mut lease = lease;
        let hold_cap = cfg.max_in_flight.max(1) + cfg.batch_max_entries.max(1);
        let mut batching = false;
        let mut failed: Option<String> = None;
        let mut failed_store: Option<StoreError> = None;

        loop {
            if *shutdown.borrow() {
                break;
            }
            let now = Instant::now();
            sh.record_again().await;
            let gate = lock(&sh.pause).gate(now);
            let held = singles + uploading + gathered.len();
            if let Some(limit) = claim_limit(cfg, hold_cap, held, batching || held > singles, gate) {
                match sh
                    .store
                    .claim_ready(sh.register.clone(), sh.claimer.clone(), sh.clock.now(), limit)
                    .await
                {
                    Ok(events) => {
                        if lock(&sh.unrecorded).is_empty() {
                            sh.health.set_delivery_store_problem(None);
                        }
                        if gate == Gate::Probe && events.is_empty() {
                            lock(&sh.pause).probe_later(now, cfg.probe_interval);
                        }
                        let today = crate::clock::oslo_date(sh.clock.now());
                        batching = false;
                        for ev in events {
                            lock(&sh.unsettled).insert(ev.seq);
                            let probe = gate == Gate::Probe;
                            if probe {
                                tracing::info!(seq = ev.seq, "delivery paused: probing with one event");
                            }
                            if sh.goes_by_batch(&ev, today) {
                                batching = true;
                                if gathered.is_empty() {
                                    gathered_since = now;
                                }
                                gathered.push(ev);
                                flush_now |= probe;
                            } else {
                                singles += 1;
                                tasks.spawn(sh.clone().deliver_single(ev, probe));
                            }
                        }
                    }
                    // No store to write to, or deposed: stop, so the agent exits (or stands by) and
                    // a supervisor sees it.
                    Err(e @ (StoreError::Stopped | StoreError::Lost { .. } | StoreError::Fenced { .. })) => {
                        sh.health.set_delivery_store_problem(Some(e.to_string()));
                        failed_store = Some(e);
                        break;
                    }
                    Err(e) => sh.store_problem("claiming events", &e),
                }
            }
            if let Err(e) = sh
                .tend_lease(&mut lease, now, (&mut next_renew, &mut next_recover))
                .await
            {
                failed_store = Some(e);
                break;
            }
            // One upload at a time: the gathered adds go when the window passed or they are many.
            if uploading == 0
                && !gathered.is_empty()
                && (flush_now || gathered.len() >= cfg.batch_max_entries || now >= gathered_since + cfg.batch_window)
            {
                let batch = std::mem::take(&mut gathered);
                uploading = batch.len();
                flush_now = false;
                tasks.spawn(sh.clone().upload(batch));
            }
            if !confirming && now >= next_confirm {
                confirming = true;
                next_confirm = now + cfg.confirm_interval;
                tasks.spawn(sh.clone().confirm_pass());
            }
            if now >= next_purge {
                next_purge = now + cfg.purge_interval;
                sh.purge().await;
            }
            if let Some(every) = check_every
                && !checking
                && now >= next_check
                && gate == Gate::Open
            {
                next_check = now + every;
                checking = true;
                tasks.spawn(sh.clone().check_one());
            }
            if now >= next_status {
                next_status = now + cfg.status_interval;
                sh.refresh_gauges().await;
            }
            // Sleep until the next poll, or sooner when a scheduled retry falls due or a pause
            // ends: a transient failure then costs its backoff, not a poll interval on top.
            let wake = [lock(&sh.pause).changes_at(), sh.next_retry_due(now)]
                .into_iter()
                .flatten()
                .fold(now + cfg.poll_interval, Instant::min);
            tokio::select! {
                _ = shutdown.changed() => {}
                Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                    match done {
                        Ok(Done::Single) => singles -= 1,
                        Ok(Done::Upload) => {
                            // Look for the entries once KFR should have ingested them (at the
                            // assumed rate, at least a second on), not at the next regular pass:
                            // their customers wait until they are seen.
                            let expected = Duration::from_secs_f64(
                                (uploading as f64 / cfg.ingest_rate.max(1.0)).max(1.0),
                            );
                            next_confirm = next_confirm.min(Instant::now() + expected);
                            uploading = 0;
                        }
                        Ok(Done::Confirm) => confirming = false,
                        Ok(Done::Check) => checking = false,
                        Err(e) => {
                            // A panicked task (a bug): the counts can no longer be trusted, so
                            // the loop stops; its events are still unsettled and go back below
                            // with the rest, and the caller gets an error, because an agent that
                            // goes on without its dispatcher looks alive and delivers nothing.
                            let detail = task_failure(e);
                            tracing::error!(error = %detail, "a delivery task failed; stopping");
                            failed = Some(detail);
                            break;
                        }
                    }
                }
                _ = tokio::time::sleep_until(wake) => {}
                _ = waker.notified() => {}
            }
        }

        let summary = sh
            .wind_down(tasks, &gathered, singles + uploading, lease, failed_store.is_some())
            .await;
        match (failed, failed_store) {
            (_, Some(e)) => Err(DispatchError::Store(e)),
            (Some(detail), None) => Err(DispatchError::TaskFailed { detail }),
            (None, None) => Ok(summary),
        }
    }
}

/// Why [`Dispatcher::run`] stopped without being asked to. A restart is safe either way: the next
/// start's `recover` puts what was in flight back in line.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// The store's thread is gone: nothing can be claimed or recorded.
    #[error("the dispatcher could not use the state store")]
    Store(#[from] StoreError),
    /// A delivery, upload or confirmation task panicked (a bug in kfr).
    #[error("a delivery task failed: {detail}")]
    TaskFailed { detail: String },
}

impl crate::error::Hinted for DispatchError {
    fn hint(&self) -> Option<String> {
        match self {
            // The store's own hint says more.
            DispatchError::Store(_) => None,
            DispatchError::TaskFailed { .. } => Some(
                "this is a bug in kfr: keep the log and report it; restarting the agent is safe (what was in flight is put back in line at start)".into(),
            ),
        }
    }
}

/// A failed task's panic message, masked (it may quote a value the task held).
/// How many claimed events the dispatcher may hold: while events go as singles, what is in
/// flight plus one more group of `max_in_flight` (claims still come in groups, one commit each);
/// while some go by batch, also a batch's worth to gather.
///
/// A claim holds its customer until `claimed_until`, even when its holder dies before sending:
/// a successor cannot tell a request on the wire from one never sent, so it waits the claim out
/// (the claim lease, docs/specs/outbox.md). Holding a batch's worth of singles that only wait
/// for a slot kept most customers of a backlog from a standby for a whole claim lease after a
/// `kill -9` of the leader (20 s in `pg_failover`); now at most two groups are held up.
fn hold_limit(cfg: &DispatchConfig, hold_cap: usize, batching: bool) -> usize {
    if batching {
        hold_cap
    } else {
        hold_cap.min(2 * cfg.max_in_flight.max(1))
    }
}

/// How many events to claim now (`None`: not now), holding `held`.
///
/// Claim in groups, not one event per finished request: a claim is a write transaction with its
/// own commit, and refilling one freed place at a time under a backlog cost a commit per
/// delivered event (docs/benchmarks.md, "Sync agent"). So claim when the requests could run
/// short (fewer held than may be in flight) or when at least an in-flight cap's worth of room is
/// free; a probe always goes, with one event.
fn claim_limit(cfg: &DispatchConfig, hold_cap: usize, held: usize, batching: bool, gate: Gate) -> Option<usize> {
    let step = cfg.max_in_flight.max(1);
    let cap = hold_limit(cfg, hold_cap, batching);
    let worth_claiming = held < step || cap.saturating_sub(held) >= step;
    if gate == Gate::Closed || held >= cap || !(worth_claiming || gate == Gate::Probe) {
        return None;
    }
    Some(if gate == Gate::Probe { 1 } else { cap - held })
}

fn task_failure(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(payload) => {
            let text = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".into());
            format!("panicked: {}", scrub(&text))
        }
        Err(e) => scrub(&e.to_string()),
    }
}

/// An outcome the store could not record yet (see `Shared::unrecorded`).
#[derive(Debug)]
enum Unrecorded {
    Settle(Settlement),
    RetryLater(Seq, DateTime<Utc>, String, DateTime<Utc>),
    Release(Vec<Seq>),
    DeadLetter(Seq, Rejection, DateTime<Utc>),
}

/// Which kind of task ended.
enum Done {
    Check,
    Single,
    Upload,
    Confirm,
}

/// Poisoning only follows a panic elsewhere; the data (counters, flags) stays meaningful.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the tasks share.
#[derive(Debug)]
struct Shared {
    store: Store,
    /// Who claims: the lease's holder and epoch.
    claimer: Claimer,
    client: KfrClient,
    register: String,
    org: String,
    cfg: DispatchConfig,
    health: Health,
    clock: Arc<dyn WallClock>,
    gate: RateGate,
    requests: Semaphore,
    pause: Mutex<Pause>,
    tally: Mutex<DispatchSummary>,
    /// Claimed events whose outcome is not recorded yet: handed back at shutdown.
    unsettled: Mutex<HashSet<Seq>>,
    /// Of those, the ones whose request went out: cut at shutdown, their fate is unknown.
    sent: Mutex<HashSet<Seq>>,
    /// Outcomes the store could not record (a full disk, say), recorded again at every turn of
    /// the loop until it takes them; their events stay in flight (claimed) meanwhile, and the
    /// agent is unready. Nothing is sent again for them.
    unrecorded: Mutex<Vec<Unrecorded>>,
    /// Set when shutdown begins: no new request starts after it (waiting tasks hand back).
    stopping: std::sync::atomic::AtomicBool,
    /// The register check's walk through the ledger: the entries fetched and not yet checked,
    /// and the last customer fetched.
    check_walk: Mutex<(std::collections::VecDeque<crate::store::LedgerEntry>, Option<String>)>,
    book: Mutex<backdated::Book>,
    /// When scheduled retries fall due (tokio time), earliest first; the main loop wakes then.
    retries_due: Mutex<BinaryHeap<Reverse<Instant>>>,
}

/// The operation label of metrics and logs.
fn op_label(op: Operation) -> &'static str {
    op.as_str()
}

impl Shared {
    /// Renews the delivery lease and takes back claims that ran out, each when it is due.
    /// `Err`: this agent was deposed (another took the lease over) and must stop delivering.
    async fn tend_lease(
        &self,
        lease: &mut Lease,
        now: Instant,
        (next_renew, next_recover): (&mut Instant, &mut Instant),
    ) -> Result<(), StoreError> {
        let lease_ttl = chrono::Duration::from_std(self.cfg.lease_ttl).unwrap_or(chrono::Duration::seconds(30));
        if now >= *next_renew {
            *next_renew = now + self.cfg.lease_renew;
            match self.store.renew_lease(lease.clone(), self.clock.now(), lease_ttl).await {
                Ok(renewed) => *lease = renewed,
                Err(e @ StoreError::Fenced { .. }) => {
                    tracing::error!(error = %e, "the delivery lease was taken over: this agent stops delivering");
                    return Err(e);
                }
                Err(e) => self.store_problem("renewing the delivery lease", &e),
            }
        }
        if now >= *next_recover {
            *next_recover = now + self.cfg.recover_interval;
            match self
                .store
                .recover(self.register.clone(), lease.epoch, self.clock.now(), self.cfg.in_doubt)
                .await
            {
                Ok(r) if r != Recovered::default() => tracing::info!(
                    requeued = r.requeued,
                    unknown_uploads = r.unknown_uploads,
                    "took back claims that ran out (a stopped sender's)"
                ),
                Ok(_) => {}
                Err(e @ StoreError::Fenced { .. }) => return Err(e),
                Err(e) => self.store_problem("taking back claims that ran out", &e),
            }
        }
        Ok(())
    }

    /// Stops: claims nothing more, lets what is in flight finish up to the grace, hands back
    /// what is left (a request cut mid-way held for `in_doubt`), gives up the lease unless
    /// `deposed`, and says what this run did.
    async fn wind_down(
        &self,
        mut tasks: JoinSet<Done>,
        gathered: &[OutboxEvent],
        in_flight: usize,
        lease: Lease,
        deposed: bool,
    ) -> DispatchSummary {
        // Shutdown: claim nothing more, start no request more (tasks still waiting for a slot
        // hand their event back); what is gathered but not sent goes back now.
        self.stopping.store(true, std::sync::atomic::Ordering::SeqCst);
        tracing::info!(in_flight, "dispatcher stopping");
        let unsent: Vec<Seq> = gathered.iter().map(|e| e.seq).collect();
        let deadline = Instant::now() + self.cfg.shutdown_grace;
        let mut cut = false;
        while !tasks.is_empty() {
            match tokio::time::timeout_at(deadline, tasks.join_next()).await {
                Ok(_) => {}
                Err(_) => {
                    cut = true;
                    tasks.abort_all();
                    while tasks.join_next().await.is_some() {}
                }
            }
        }
        // Singles cut at the deadline are safe to send again (200 on add and 404 on remove are
        // successes); an upload cut after its first byte stays in flight, and the next start's
        // `recover` makes it an upload of unknown fate, probed before anything is re-sent.
        let left: Vec<Seq> = {
            let mut u = lock(&self.unsettled);
            unsent.iter().for_each(|s| {
                u.insert(*s);
            });
            u.drain().collect()
        };
        self.record_again().await;
        // A request cut mid-way may still be carried out: its event waits out `in_doubt` before
        // it is tried again (in doubt means hold); one never sent goes back as it was.
        let (cut_sent, unsent): (Vec<Seq>, Vec<Seq>) = {
            let sent = lock(&self.sent);
            left.into_iter().partition(|s| sent.contains(s))
        };
        let released = (cut_sent.len() + unsent.len()) as u64;
        let now = self.clock.now();
        let hold = chrono::Duration::from_std(self.cfg.in_doubt).unwrap_or(chrono::Duration::minutes(2));
        for seq in cut_sent {
            let why =
                "cut at shutdown while its request was out; in doubt until it can no longer be carried out".to_string();
            if let Err(e) = self.store.retry_later(seq, now + hold, why, now).await {
                tracing::warn!(error = %e, "could not record a request cut at shutdown; the next holder recovers it once its claim ran out");
            }
        }
        if !unsent.is_empty()
            && let Err(e) = self.store.release(unsent, now).await
        {
            tracing::warn!(error = %e, "could not hand back events at shutdown; the next holder recovers them once their claims ran out");
        }
        // Given up so a standby takes over at once (a deposed holder has nothing to give up).
        if !deposed && let Err(e) = self.store.release_lease(lease).await {
            tracing::warn!(error = %e, "could not give up the delivery lease; a standby takes over once it ran out");
        }
        let mut summary = lock(&self.tally).clone();
        summary.released_at_shutdown = released;
        summary.cut_at_deadline = cut;
        tracing::info!(
            delivered = summary.delivered,
            dead_lettered = summary.dead_lettered,
            retries_scheduled = summary.retries_scheduled,
            released_at_shutdown = summary.released_at_shutdown,
            cut_at_deadline = summary.cut_at_deadline,
            "dispatcher stopped"
        );
        summary
    }

    /// Whether `ev` is an add whose start date is not today (Oslo): a single add would record
    /// today instead, so it goes by batch with its date (unless that is configured off).
    fn goes_by_batch(&self, ev: &OutboxEvent, today: NaiveDate) -> bool {
        let Some(start) = ev.start_date else { return false };
        if ev.op != Operation::Add || start == today {
            return false;
        }
        if !self.cfg.backdated_by_batch {
            tracing::warn!(
                seq = ev.seq,
                customer = %self.masked(ev),
                %start,
                "add dated {start} goes as a single add (backdated_by_batch is off): KFR records today's date instead"
            );
            return false;
        }
        true
    }

    /// The customer as logs may show it: its pseudonym.
    fn masked(&self, ev: &OutboxEvent) -> String {
        match self.customer(ev) {
            Ok(id) => id.log().to_string(),
            Err(_) => crate::ids::mask(&ev.customer_id),
        }
    }

    /// The stored identifier for the request. It was validated at the door under the agent's
    /// policy; here only its shape matters, so the policy is the widest.
    fn customer(&self, ev: &OutboxEvent) -> Result<CustomerId, crate::ids::IdError> {
        let any = IdPolicy {
            allow_synthetic: true,
            allow_h_numbers: true,
        };
        CustomerId::parse(&ev.customer_id, &any)
    }

    /// A stored identifier for a lookup (see [`Shared::customer`]).
    fn customer_of(&self, raw: &str) -> Result<CustomerId, crate::ids::IdError> {
        let any = IdPolicy {
            allow_synthetic: true,
            allow_h_numbers: true,
        };
        CustomerId::parse(raw, &any)
    }

    fn store_problem(&self, doing: &str, e: &StoreError) {
        tracing::error!(error = %e, "state store failed while {doing}");
        // Any failure of the store itself makes the agent unready until its writes work again;
        // a caller's mistake (an event in another state) says nothing about the store.
        if !matches!(e, StoreError::WrongState { .. } | StoreError::EventIdConflict { .. }) {
            self.health.set_delivery_store_problem(Some(e.to_string()));
        }
    }

    /// The earliest scheduled retry still ahead of `now` (those due are forgotten: the claim
    /// this wake-up leads to takes them).
    fn next_retry_due(&self, now: Instant) -> Option<Instant> {
        let mut due = lock(&self.retries_due);
        while due.peek().is_some_and(|Reverse(t)| *t <= now) {
            due.pop();
        }
        due.peek().map(|Reverse(t)| *t)
    }

    /// Records that `seq`'s outcome is in the store.
    fn settled(&self, seq: Seq) {
        lock(&self.unsettled).remove(&seq);
        lock(&self.sent).remove(&seq);
    }

    /// One request slot: the in-flight cap, then the global rate.
    async fn slot(&self) -> tokio::sync::SemaphorePermit<'_> {
        let permit = self.requests.acquire().await.expect("the semaphore is never closed");
        self.gate.until_ready().await;
        permit
    }

    fn observe<D>(&self, op: &'static str, a: &Attempt<D>) {
        let class = match a.verdict.class() {
            None => "delivered",
            Some(crate::kfr::VerdictClass::Transient) => "transient",
            Some(crate::kfr::VerdictClass::RateLimited) => "rate_limited",
            Some(crate::kfr::VerdictClass::Systemic(_)) => "systemic",
            Some(crate::kfr::VerdictClass::Rejected) => "rejected",
        };
        metrics::counter!("kfr_sync_attempts_total", "op" => op, "class" => class).increment(1);
        metrics::histogram!("kfr_sync_kfr_request_duration_seconds", "op" => op).record(a.latency.as_secs_f64());
    }

    /// One add or remove, sent alone.
    async fn deliver_single(self: Arc<Self>, ev: OutboxEvent, probe: bool) -> Done {
        let id = match self.customer(&ev) {
            Ok(id) => id,
            Err(e) => {
                let r = Rejection {
                    status: None,
                    code: None,
                    body: String::new(),
                    reason: format!("the stored customer identifier is not usable: {}", e.code()),
                };
                self.dead_letter(&ev, r).await;
                return Done::Single;
            }
        };
        let slot = self.slot().await;
        if !probe && lock(&self.pause).blocks(Instant::now()) {
            // Paused while waiting for a slot: hand it back untouched (no attempt counted).
            self.release(&[ev.seq]).await;
            return Done::Single;
        }
        if self.stopping.load(std::sync::atomic::Ordering::SeqCst) {
            // Shutdown began while it waited for a slot: no new request during the drain.
            self.release(&[ev.seq]).await;
            return Done::Single;
        }
        if !self.claim_lasts(&ev) {
            // The claim could run out while the request is out, and a successor could then send
            // the customer's next event ahead of it: hand it back instead (claimed afresh soon).
            tracing::info!(
                seq = ev.seq,
                "claim too close to its end to start a request; handed back"
            );
            self.release(&[ev.seq]).await;
            return Done::Single;
        }
        let op = op_label(ev.op);
        let rules = self.cfg.rules();
        lock(&self.sent).insert(ev.seq);
        let outcome = match ev.op {
            Operation::Add => {
                let a = self.client.add_once(&id, ev.correlation_id).await;
                self.observe(op, &a);
                decide(&a, &ev, &rules, self.clock.now())
            }
            Operation::Remove => {
                let a = self.client.remove_once(&id, ev.correlation_id).await;
                self.observe(op, &a);
                decide(&a, &ev, &rules, self.clock.now())
            }
        };
        if let ClaimEnd::Delivered {
            delivery,
            echoed_correlation_id,
        } = outcome.end
        {
            // Delivered: the place goes to the next request while the outcome is recorded
            // (settlements are group-committed; a slot must not wait for the commit). A
            // failure keeps it until its pause, if any, is in force.
            drop(slot);
            tracing::info!(seq = ev.seq, op, customer = %id.log(), correlation_id = %ev.correlation_id, outcome = ?delivery, "delivered");
            self.settle(&ev, delivery, echoed_correlation_id).await;
        } else {
            self.failed(&ev, outcome, probe).await;
            drop(slot);
        }
        Done::Single
    }

    /// The agent's own check of the register: the next customer of the ledger (walking it in
    /// order, round and round) looked up in KFR, within the rate like any request, and counted
    /// as `match`, `mismatch`, `unanswered` or `skipped` (an event of the customer is in the
    /// outbox, or arrived while it was looked up: its state is moving). A mismatch is logged,
    /// masked, never repaired here: `kfr verify --repair` is an operator's decision.
    async fn check_one(self: Arc<Self>) -> Done {
        let result = self.check_next().await;
        metrics::counter!(crate::sync::metrics::REGISTER_CHECKS, "result" => result).increment(1);
        match result {
            "match" => lock(&self.tally).checks_matched += 1,
            "mismatch" => lock(&self.tally).checks_mismatched += 1,
            _ => {}
        }
        Done::Check
    }

    async fn check_next(&self) -> &'static str {
        let next = {
            let (buffered, _) = &mut *lock(&self.check_walk);
            buffered.pop_front()
        };
        let entry = match next {
            Some(e) => e,
            None => {
                let after = lock(&self.check_walk).1.clone();
                let page = match self.store.ledger_page(self.register.clone(), after.clone(), 100).await {
                    Ok(p) if p.is_empty() && after.is_some() => {
                        // The end of the ledger: start over.
                        lock(&self.check_walk).1 = None;
                        return "skipped";
                    }
                    Ok(p) => p,
                    Err(_) => return "skipped",
                };
                let mut walk = lock(&self.check_walk);
                walk.1 = page.last().map(|e| e.customer_id.clone());
                walk.0.extend(page);
                match walk.0.pop_front() {
                    Some(e) => e,
                    None => return "skipped",
                }
            }
        };
        // The customer's events before the lookup: none unfinished (else its state is moving),
        // and the newest seq, to notice one arriving during the lookup.
        let settled_state = |events: Result<Vec<OutboxEvent>, StoreError>| -> Option<Option<Seq>> {
            let events = events.ok()?;
            let moving = events.iter().any(|e| {
                !matches!(
                    e.state,
                    crate::store::EventState::Delivered | crate::store::EventState::Dropped
                )
            });
            (!moving).then(|| events.iter().map(|e| e.seq).max())
        };
        let events = self
            .store
            .events_of(Some(self.register.clone()), Some(entry.customer_id.clone()))
            .await;
        let Some(before) = settled_state(events) else {
            return "skipped";
        };
        let Ok(id) = self.customer_of(&entry.customer_id) else {
            return "skipped";
        };
        let _slot = self.slot().await;
        if self.stopping.load(std::sync::atomic::Ordering::SeqCst) || lock(&self.pause).blocks(Instant::now()) {
            return "skipped";
        }
        let a = self.client.lookup_once(&id, None, None, uuid::Uuid::new_v4()).await;
        self.observe("lookup", &a);
        let Some(banks) = a.verdict.delivered() else {
            return "unanswered";
        };
        let kfr_active = banks.iter().any(|b| b.organization_id == self.org);
        // Something for the customer arrived while it was looked up: not comparable.
        let events = self
            .store
            .events_of(Some(self.register.clone()), Some(entry.customer_id.clone()))
            .await;
        if settled_state(events) != Some(before) {
            return "skipped";
        }
        if kfr_active == (entry.state == crate::store::LedgerState::Active) {
            return "match";
        }
        tracing::warn!(
            customer = %id.log(),
            ledger = ?entry.state,
            kfr_active,
            "register check: KFR differs from the ledger (`kfr verify --all` lists every difference, `--repair` corrects them)"
        );
        "mismatch"
    }

    /// Records again the outcomes the store refused before, oldest first, until one fails again.
    /// The agent stays unready while any is left: the events are claimed, not lost, and nothing
    /// is sent again for them (their answers are known).
    async fn record_again(&self) {
        let pending: Vec<Unrecorded> = std::mem::take(&mut *lock(&self.unrecorded));
        if pending.is_empty() {
            return;
        }
        let mut left = pending.into_iter();
        for u in left.by_ref() {
            let result = match &u {
                Unrecorded::Settle(s) => self.store.settle(vec![s.clone()]).await,
                Unrecorded::RetryLater(seq, at, error, now) => {
                    self.store.retry_later(*seq, *at, error.clone(), *now).await
                }
                Unrecorded::Release(seqs) => self.store.release(seqs.clone(), self.clock.now()).await,
                Unrecorded::DeadLetter(seq, r, at) => self.store.dead_letter(*seq, r.clone(), *at).await,
            };
            match result {
                Ok(()) => {
                    match &u {
                        Unrecorded::Settle(s) => {
                            lock(&self.tally).delivered += 1;
                            self.settled(s.seq);
                        }
                        Unrecorded::RetryLater(seq, ..) | Unrecorded::DeadLetter(seq, ..) => self.settled(*seq),
                        Unrecorded::Release(seqs) => seqs.iter().for_each(|s| self.settled(*s)),
                    }
                    tracing::info!("recorded an outcome the store had refused before");
                }
                // An event the store no longer has in flight for us (taken over): nothing to do.
                Err(StoreError::WrongState { .. }) => {}
                Err(e) => {
                    self.store_problem("recording an outcome again", &e);
                    let mut rest: Vec<Unrecorded> = vec![u];
                    rest.extend(left);
                    lock(&self.unrecorded).splice(0..0, rest);
                    return;
                }
            }
        }
        self.health.set_delivery_store_problem(None);
    }

    /// Whether `ev`'s claim leaves room for a whole attempt from now.
    fn claim_lasts(&self, ev: &OutboxEvent) -> bool {
        let budget = chrono::Duration::from_std(self.cfg.request_budget).unwrap_or(chrono::Duration::MAX);
        ev.claimed_until.is_none_or(|until| until - self.clock.now() >= budget)
    }

    async fn settle(&self, ev: &OutboxEvent, delivery: Delivery, echoed: Option<String>) {
        let s = Settlement {
            seq: ev.seq,
            delivery,
            echoed_correlation_id: echoed,
            at: self.clock.now(),
        };
        if let Err(e) = self.store.settle(vec![s.clone()]).await {
            self.store_problem("recording a delivery", &e);
            lock(&self.unrecorded).push(Unrecorded::Settle(s));
            return;
        }
        self.settled(ev.seq);
        let op = op_label(ev.op);
        let (outcome, idempotent) = match delivery {
            Delivery::Added => ("added", false),
            Delivery::AlreadyPresent => ("already_present", true),
            Delivery::Removed => ("removed", false),
            Delivery::NotFound => ("not_found", true),
            Delivery::IngestedSeen => ("ingested_seen", false),
            Delivery::IngestedByTime => ("ingested_by_time", false),
        };
        metrics::counter!("kfr_sync_events_delivered_total", "op" => op, "outcome" => outcome).increment(1);
        if idempotent {
            metrics::counter!("kfr_sync_events_idempotent_total", "op" => op).increment(1);
        }
        let resumed = {
            let mut t = lock(&self.tally);
            t.delivered += 1;
            t.idempotent += u64::from(idempotent);
            lock(&self.pause).delivered()
        };
        if resumed {
            self.health.set_paused(None);
            tracing::info!("delivery resumes: a probe was delivered");
        }
    }

    async fn release(&self, seqs: &[Seq]) {
        match self.store.release(seqs.to_vec(), self.clock.now()).await {
            Ok(()) => seqs.iter().for_each(|s| self.settled(*s)),
            Err(e) => {
                self.store_problem("handing events back", &e);
                lock(&self.unrecorded).push(Unrecorded::Release(seqs.to_vec()));
            }
        }
    }

    async fn dead_letter(&self, ev: &OutboxEvent, r: Rejection) {
        let reason_label = r
            .code
            .clone()
            .or_else(|| r.status.map(|s| s.to_string()))
            .unwrap_or_else(|| "none".into());
        tracing::warn!(seq = ev.seq, op = op_label(ev.op), customer = %self.masked(ev), correlation_id = %ev.correlation_id, reason = %r.reason, "dead-lettered; this customer's later events wait for an operator");
        let at = self.clock.now();
        if let Err(e) = self.store.dead_letter(ev.seq, r.clone(), at).await {
            self.store_problem("dead-lettering an event", &e);
            lock(&self.unrecorded).push(Unrecorded::DeadLetter(ev.seq, r, at));
            return;
        }
        self.settled(ev.seq);
        metrics::counter!("kfr_sync_events_rejected_total", "op" => op_label(ev.op), "reason" => reason_label)
            .increment(1);
        lock(&self.tally).dead_lettered += 1;
    }

    /// An attempt that did not deliver: its outcome recorded, its effect on every sender applied.
    async fn failed(&self, ev: &OutboxEvent, outcome: Outcome, probe: bool) {
        let now_i = Instant::now();
        match outcome.effect {
            Effect::None => {}
            Effect::Outage { wait } => self.pause_for(wait, "outage"),
            Effect::RateLimited { retry_after } => {
                let wait = {
                    let mut p = lock(&self.pause);
                    p.rate_limited_streak += 1;
                    self.cfg.retry.delay(p.rate_limited_streak, retry_after)
                };
                let wait = wait.min(self.cfg.retry.retry_after_cap);
                metrics::counter!("kfr_sync_rate_limit_waits_total").increment(1);
                metrics::counter!("kfr_sync_rate_limit_wait_seconds_total").increment(wait.as_secs());
                tracing::warn!(
                    wait_ms = wait.as_millis() as u64,
                    "KFR rate limit: every delivery pauses"
                );
                self.pause_for(wait, "rate_limited");
            }
            Effect::Systemic { scope, ref reason } => self.systemic(scope, reason.clone()),
        }
        let systemic = matches!(outcome.effect, Effect::Systemic { .. });
        if probe && !systemic {
            lock(&self.pause).probe_later(now_i, self.cfg.probe_interval);
        }
        match outcome.end {
            ClaimEnd::Delivered { .. } => unreachable!("a delivery is settled by the caller"),
            ClaimEnd::Release { .. } => self.release(&[ev.seq]).await,
            ClaimEnd::DeadLetter(r) => self.dead_letter(ev, r).await,
            ClaimEnd::RetryLater { not_before, error } => self.retry_later(ev, not_before, error).await,
        }
    }

    /// Transient: a persisted next attempt.
    async fn retry_later(&self, ev: &OutboxEvent, at: DateTime<Utc>, error: String) {
        let now = self.clock.now();
        let delay = (at - now).to_std().unwrap_or_default();
        tracing::info!(seq = ev.seq, op = op_label(ev.op), customer = %self.masked(ev), correlation_id = %ev.correlation_id, %at, error = %error, "transient failure; next attempt scheduled");
        match self.store.retry_later(ev.seq, at, error.clone(), now).await {
            Ok(()) => {
                self.settled(ev.seq);
                lock(&self.retries_due).push(Reverse(Instant::now() + delay));
                metrics::counter!("kfr_sync_retries_scheduled_total", "op" => op_label(ev.op)).increment(1);
                lock(&self.tally).retries_scheduled += 1;
            }
            Err(e) => {
                self.store_problem("scheduling a retry", &e);
                lock(&self.unrecorded).push(Unrecorded::RetryLater(ev.seq, at, error, now));
            }
        }
    }

    fn pause_for(&self, wait: Duration, cause: pace::Cause) {
        lock(&self.pause).pause_for(Instant::now(), wait, cause);
        lock(&self.tally).pauses += 1;
    }

    /// A systemic verdict: everything pauses, the agent is unready, a probe comes later.
    fn systemic(&self, scope: Scope, reason: String) {
        let cause = match scope {
            Scope::Credentials => "credentials",
            Scope::Permission => "permission",
            Scope::Institution => "institution",
            Scope::Endpoint => "endpoint",
        };
        let text = format!("{cause}: {}", scrub(&reason));
        let started = lock(&self.pause).systemic(Instant::now(), self.cfg.probe_interval, cause, text.clone());
        self.health.set_paused(Some(text.clone()));
        if started {
            lock(&self.tally).pauses += 1;
            tracing::error!(cause, reason = %text, "systemic failure: delivery paused until a probe succeeds; nothing is dead-lettered");
        }
    }

    async fn purge(&self) {
        let days = chrono::Duration::days(i64::from(self.cfg.retention_days));
        match self.store.purge(self.clock.now() - days).await {
            Ok(n) => {
                if n > 0 {
                    tracing::info!(purged = n, "purged finished events");
                }
                lock(&self.tally).purged += n;
            }
            Err(e) => self.store_problem("purging", &e),
        }
        let days = chrono::Duration::days(i64::from(self.cfg.history_retention_days));
        match self.store.purge_history(self.clock.now() - days).await {
            Ok(n) if n > 0 => tracing::info!(purged = n, "purged history lines past their retention"),
            Ok(_) => {}
            Err(e) => self.store_problem("purging the history", &e),
        }
    }

    async fn refresh_gauges(&self) {
        // Token requests are counted by the token client; the counter follows its total.
        metrics::counter!(crate::sync::metrics::TOKEN_REFRESHES).absolute(self.client.tokens().token_requests());
        let Ok(st) = self.store.status(Some(self.register.clone())).await else {
            return;
        };
        crate::sync::metrics::refresh_outbox(&st, self.clock.now());
    }
}
