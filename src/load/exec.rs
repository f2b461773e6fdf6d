//! The executor: uploads a planned job one batch at a time and confirms each is stored before
//! sending the next (onboarding D-3 steps 1-2: a 201 only means the file was valid).
//!
//! Per batch, every step is committed to the state store before the action it enables:
//!
//! 1. `uploading` is recorded, then the body is sent (with the batch's CorrelationID, fixed at
//!    planning, so a re-send is recognisably the same batch to Bits).
//! 2. On 201 the batch becomes `accepted` and its entries go into the ledger.
//! 3. Wait the expected ingestion time (`entries / ingest_rate`, counted from acceptance; cut
//!    short when an occasional look at the last entry finds it already stored), then
//!    own-lookups of the batch's last entry and a small random sample, with `fromDate` = the
//!    entry's start date so a relationship stored with history is found. Ingestion follows file
//!    order (kfr-notes §6), so the last entry visible means the batch is stored; the sample guards
//!    against that assumption failing. Lookups back off while entries are missing, up to a timeout
//!    that names what is missing.
//! 4. The batch becomes `confirmed`.
//!
//! Resume rule for a batch found `uploading` (the process died between sending and recording the
//! answer): it may or may not have been accepted. Its last entry is looked up until the batch
//! would have been ingested had it been accepted (its expected ingestion time after the upload
//! began, plus a grace period); only if it is still absent is the batch sent again. A batch is
//! therefore never sent twice once KFR accepted it, except when KFR took longer than expected to
//! ingest it, where the re-send is harmless (an add of a present relationship is a no-op).
//!
//! `KFR_TEST_ABORT_AT=<stage>[:<batch>]` (test-only, see [`abort_point`]) kills the process at a
//! named point so tests can prove every resume path.

use super::ToEntry as _;
use super::event::{EventSink, IngestedBasis, LoadEvent};
use super::reader::Packed;
use crate::env_vars;
use crate::ids::CustomerId;
use crate::kfr::{KfrClient, KfrError, Layout};
use crate::store::{BatchChange, BatchRecord, BatchStatus, Store};
use anyhow::Context as _;
use rand::seq::IndexedRandom as _;
use std::time::{Duration, Instant};

/// Extra time after the expected ingestion time before a maybe-sent batch counts as not sent.
pub const UNKNOWN_UPLOAD_GRACE: Duration = Duration::from_secs(2);

/// First delay between confirmation lookups; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Test-only crash points. Aborts the process (no destructors, no flushing of the store beyond
/// what is committed — like `kill -9`) when `KFR_TEST_ABORT_AT` names this stage (and, if given
/// as `stage:N`, batch N). Stages: `planned`, `uploading`, `sent`, `accepted`, `confirmed`,
/// `deletes`. Documented in docs/load.md as not for production use.
pub fn abort_point(stage: &str, seq: Option<u32>) {
    let Ok(want) = std::env::var(env_vars::KFR_TEST_ABORT_AT) else {
        return;
    };
    let (s, n) = match want.split_once(':') {
        Some((s, n)) => (s, n.parse::<u32>().ok()),
        None => (want.as_str(), None),
    };
    if s == stage && (n.is_none() || n == seq) {
        // Logged, not returned: the process dies next, so there is no caller left to tell, and
        // the tests look for this line to know the hook fired (error level: shown even with -q).
        tracing::error!(
            "kfr: test abort at {stage}{}",
            seq.map(|s| format!(" (batch {s})")).unwrap_or_default()
        );
        std::process::abort();
    }
}

/// Execution settings.
#[derive(Debug, Clone)]
pub struct ExecOptions {
    pub ingest_rate: u32,
    /// Give up confirming a batch this long after its expected ingestion time.
    pub confirm_timeout: Duration,
    /// Random entries checked per batch besides the last one.
    pub sample: usize,
    /// Relationships per day, if capped: the executor pauses when today's share is sent.
    pub max_per_day: Option<u64>,
    /// How long transient failures, 429s and outages are waited out, per step, before the load
    /// stops (issue 9: default 30 min).
    pub outage_wait: Duration,
    /// Longest `Retry-After` honoured in full.
    pub retry_after_cap: Duration,
    /// The exact command that resumes this load, for messages when it stops.
    pub resume_command: String,
    /// Set by a signal: stop after the current step (issue 9 item 13).
    pub stop: Option<StopFlag>,
}

/// A stop asked for by a signal (Ctrl-C: 2, SIGTERM: 15), shared between the command that
/// listens for it and the executor, which looks at it between steps and during waits.
pub type StopFlag = std::sync::Arc<std::sync::atomic::AtomicI32>;

/// The executor stopped because a signal asked it to; every step so far is committed.
#[derive(Debug, thiserror::Error)]
#[error("interrupted by signal {0}")]
pub struct Interrupted(pub i32);

fn check_stop(opts: &ExecOptions) -> Result<(), Interrupted> {
    match opts.stop.as_ref().map(|s| s.load(std::sync::atomic::Ordering::SeqCst)) {
        Some(sig) if sig != 0 => Err(Interrupted(sig)),
        _ => Ok(()),
    }
}

/// How a run of the executor ended.
#[derive(Debug, PartialEq, Eq)]
pub enum ExecEnd {
    /// Every batch confirmed.
    Complete,
    /// `max_per_day` reached; resume on a later day.
    PausedForToday,
    /// A signal asked the load to stop; resume with `--resume`.
    Interrupted(i32),
}

/// Uploads and confirms the job's batches that are not confirmed yet.
pub async fn execute(
    store: &Store,
    client: &KfrClient,
    job: i64,
    entries: &[Packed],
    layout: &Layout,
    opts: &ExecOptions,
    on: EventSink<'_>,
) -> anyhow::Result<ExecEnd> {
    let batches = store.batches(job).await?;
    let mut ingested: u64 = batches
        .iter()
        .filter(|b| b.status == BatchStatus::Confirmed)
        .map(|b| b.entry_count)
        .sum();
    let total: u64 = batches.iter().map(|b| b.entry_count).sum();
    let count = batches.len() as u32;
    let trust = Trust {
        store,
        register: store.job(job).await?.and_then(|j| j.register),
    };
    // The slowest ingestion rate this job's evidence has shown so far (a lower bound per batch):
    // what a wait by time is sized from (issue 20, N2).
    let mut measured: Option<f64> = batches.iter().filter_map(stored_rate).reduce(f64::min);
    // Since when this batch's uploads have failed without KFR taking the body (issue 20, N3):
    // re-sends count toward `outage_wait` like any other outage.
    let mut upload_failing: Option<(Instant, String)>;
    on(LoadEvent::Started { total, ingested });
    for b in batches {
        if b.status == BatchStatus::Confirmed {
            continue;
        }
        check_stop(opts)?;
        let slice = &entries[b.first_entry as usize..(b.first_entry + b.entry_count) as usize];
        let mut status = b.status;
        if status == BatchStatus::Planned && paused_for_today(store, job, &b, opts).await? {
            on(LoadEvent::Paused {
                batch: b.seq,
                max_per_day: opts.max_per_day,
            });
            return Ok(ExecEnd::PausedForToday);
        }
        let mut b = b.clone();
        // Entries new in the batch (not visible before its upload) that measure its ingestion:
        // chosen in this run before the upload; a batch accepted in an earlier run has only its
        // witness, so its count is mostly an estimate.
        let mut points: Option<Vec<usize>> = None;
        upload_failing = None;
        // Until KFR is known to hold the batch: resolve an upload of unknown fate before
        // anything is sent again (issue 9: never a blind re-POST), check which entry will
        // confirm it, upload once.
        loop {
            if status == BatchStatus::Uploading {
                status = probe_unknown_upload(store, client, &trust, job, &b, slice, opts, on).await?;
                if status == BatchStatus::Planned
                    && let Some((since, error)) = &upload_failing
                    && since.elapsed() >= opts.outage_wait
                {
                    anyhow::bail!(
                        "uploading batch {} ({} relationships, CorrelationID {}): KFR answered every upload with an error for {} s (last: {error}) and does not hold the batch; nothing after it was sent, and the load is resumable with `{}`",
                        b.seq,
                        b.entry_count,
                        b.correlation_id,
                        since.elapsed().as_secs(),
                        opts.resume_command
                    );
                }
                if status == BatchStatus::Planned {
                    change(store, job, b.seq, BatchChange::Resent).await?;
                    b.resends += 1;
                    on(LoadEvent::BatchResent {
                        batch: b.seq,
                        resends: b.resends,
                    });
                }
            }
            if status == BatchStatus::Planned {
                if !b.witness_checked {
                    b.witness = choose_witness(client, &trust, slice, opts, on, b.seq).await?;
                    b.witness_checked = true;
                    change(store, job, b.seq, BatchChange::Witness(b.witness)).await?;
                }
                if points.is_none() {
                    points = Some(choose_measuring_points(client, &trust, slice, b.witness, opts, on, b.seq).await?);
                }
                let mut error = String::new();
                status = upload(store, client, job, &b, slice, layout, opts, on, &mut error).await?;
                if status == BatchStatus::Uploading {
                    upload_failing = Some((upload_failing.map_or_else(Instant::now, |(t, _)| t), error));
                    // The probe counts from this upload's start, not an earlier one's.
                    b.uploading_at = store
                        .batches(job)
                        .await?
                        .into_iter()
                        .find(|x| x.seq == b.seq)
                        .and_then(|x| x.uploading_at);
                }
            }
            if status == BatchStatus::Accepted {
                break;
            }
        }
        debug_assert_eq!(status, BatchStatus::Accepted);
        if store.ledger_count(Some((job, b.seq))).await? != b.entry_count {
            record_ledger(store, job, &b, slice).await?;
        }
        abort_point("accepted", Some(b.seq));
        let accepted_at = store
            .batches(job)
            .await?
            .into_iter()
            .find(|x| x.seq == b.seq)
            .and_then(|x| x.accepted_at)
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
            .map(|t| t.with_timezone(&chrono::Utc))
            .unwrap_or_else(chrono::Utc::now);
        let points = points.unwrap_or_else(|| witness_of(&b, slice).into_iter().collect());
        let mut meter = Meter::new(&b, count, ingested, total, points.clone(), opts.ingest_rate);
        let (by, detail) = confirm_batch(
            client,
            &trust,
            &b,
            slice,
            &points,
            accepted_at,
            &mut meter,
            &mut measured,
            opts,
            on,
        )
        .await?;
        change(store, job, b.seq, BatchChange::ConfirmedBy(format!("{by} ({detail})"))).await?;
        change(store, job, b.seq, BatchChange::Status(BatchStatus::Confirmed)).await?;
        ingested += b.entry_count;
        on(LoadEvent::BatchConfirmed {
            batch: b.seq,
            entries: b.entry_count,
            correlation_id: b.correlation_id,
            ingested,
            by: by.to_string(),
        });
        abort_point("confirmed", Some(b.seq));
    }
    Ok(ExecEnd::Complete)
}

/// Records one change to batch `seq` of `job`, now.
async fn change(store: &Store, job: i64, seq: u32, what: BatchChange) -> Result<(), crate::store::StoreError> {
    store.update_batch(job, seq, what, chrono::Utc::now()).await
}

/// True when sending `b` today would exceed `max_per_day` (counting batches accepted today).
async fn paused_for_today(store: &Store, job: i64, b: &BatchRecord, opts: &ExecOptions) -> anyhow::Result<bool> {
    let Some(max) = opts.max_per_day else { return Ok(false) };
    let today = crate::clock::oslo_today();
    let sent_today: u64 = store
        .batches(job)
        .await?
        .iter()
        .filter(|x| {
            x.accepted_at
                .as_deref()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .is_some_and(|t| crate::clock::oslo_date(t.with_timezone(&chrono::Utc)) == today)
        })
        .map(|x| x.entry_count)
        .sum();
    Ok(sent_today > 0 && sent_today + b.entry_count > max)
}

/// Uploads a batch once (`batch_once`: no in-process repeat of a body that went out). Returns the
/// batch's new state: `Accepted` on 201; `Uploading` when the body went out and no usable answer
/// came (timeout, 5xx), so KFR may have taken it and the caller must probe before re-sending;
/// `Planned` never (a refusal before sending is waited out here, a final refusal is an error).
#[allow(clippy::too_many_arguments)]
async fn upload(
    store: &Store,
    client: &KfrClient,
    job: i64,
    b: &BatchRecord,
    slice: &[Packed],
    layout: &Layout,
    opts: &ExecOptions,
    on: EventSink<'_>,
    last_error: &mut String,
) -> anyhow::Result<BatchStatus> {
    let body = layout.encode(&slice.iter().map(|p| p.to_entry()).collect::<Vec<_>>());
    anyhow::ensure!(
        body.bytes.len() as u64 == b.bytes,
        "batch {} encodes to {} bytes but was planned at {} (the plan no longer matches the input)",
        b.seq,
        body.bytes.len(),
        b.bytes
    );
    let mut waited = Waited::new();
    loop {
        change(store, job, b.seq, BatchChange::Status(BatchStatus::Uploading)).await?;
        abort_point("uploading", Some(b.seq));
        let e = match client.batch_once(&body, b.correlation_id).await.into_result() {
            Ok(()) => {
                abort_point("sent", Some(b.seq));
                change(store, job, b.seq, BatchChange::Status(BatchStatus::Accepted)).await?;
                on(LoadEvent::BatchAccepted {
                    batch: b.seq,
                    entries: b.entry_count,
                    bytes: b.bytes,
                    correlation_id: b.correlation_id,
                });
                return Ok(BatchStatus::Accepted);
            }
            Err(e) => e,
        };
        // Whether the body can have reached KFR's ingestion: no for a token failure or a size
        // refusal (nothing was sent), a 429 (the gateway turned it away) or a 4xx (KFR refused
        // it); maybe for a timeout, a lost connection or a 5xx.
        let maybe_taken = match &e {
            KfrError::Transport { .. } => true,
            KfrError::Api { status, .. } => *status >= 500,
            KfrError::InvalidResponse { .. } => true,
            KfrError::Token(_) | KfrError::BatchTooLarge { .. } => false,
        };
        if maybe_taken {
            *last_error = e.to_string();
            on(LoadEvent::UploadUnknown {
                batch: b.seq,
                error: e.to_string(),
            });
            return Ok(BatchStatus::Uploading);
        }
        change(store, job, b.seq, BatchChange::Status(BatchStatus::Planned)).await?;
        let step = format!("uploading batch {}", b.seq);
        waited.wait_or_stop(&e, &step, opts, on).await.map_err(|e| {
            e.context(format!(
                "batch {} ({} relationships, CorrelationID {}) was not accepted; nothing after it was sent",
                b.seq, b.entry_count, b.correlation_id
            ))
        })?;
    }
}

/// The first delay when KFR fails and gives no `Retry-After`; doubles up to [`MAX_WAIT_STEP`].
const FIRST_WAIT_STEP: Duration = Duration::from_millis(500);
const MAX_WAIT_STEP: Duration = Duration::from_secs(30);

/// Time added after the expected ingestion time when no lookup can prove a batch stored.
pub const CONFIRM_MARGIN: Duration = Duration::from_secs(2);

/// Patience with a failing KFR for one step (issue 9 item 8): transient failures, 429s and
/// outages are waited out (a `Retry-After` honoured in full up to its cap, else a backoff of
/// 0.5 s doubling to 30 s) for `outage_wait` from the first failure; anything else, or running out
/// of time, stops the load with the exact resume command.
struct Waited {
    since: Option<Instant>,
    step_delay: Duration,
}

impl Waited {
    fn new() -> Self {
        Waited {
            since: None,
            step_delay: FIRST_WAIT_STEP,
        }
    }

    async fn wait_or_stop(
        &mut self,
        e: &KfrError,
        step: &str,
        opts: &ExecOptions,
        on: EventSink<'_>,
    ) -> anyhow::Result<()> {
        let since = *self.since.get_or_insert_with(Instant::now);
        let waited = since.elapsed();
        if !e.class().is_retryable() || waited >= opts.outage_wait {
            let why = if e.class().is_retryable() {
                format!("KFR still failing after {} s of waiting", waited.as_secs())
            } else {
                "KFR refused it".to_string()
            };
            return Err(anyhow::Error::new(e.clone()).context(format!(
                "{step}: {why}; the load stopped here and is resumable with `{}`",
                opts.resume_command
            )));
        }
        let delay = match e.retry_after() {
            Some(d) => d.min(opts.retry_after_cap),
            None => {
                let d = self.step_delay;
                self.step_delay = (self.step_delay * 2).min(MAX_WAIT_STEP);
                d
            }
        };
        let delay = delay
            .min(opts.outage_wait.saturating_sub(waited))
            .max(Duration::from_millis(50));
        on(LoadEvent::KfrUnavailable {
            step: step.to_string(),
            error: e.to_string(),
            retry_in_secs: delay.as_secs_f64(),
            waited_secs: waited.as_secs(),
        });
        sleep_or_stop(delay, opts).await?;
        Ok(())
    }
}

/// How many times the measured rate's time a wait by time lasts (issue 20, N2). The measured
/// rate is already a lower bound (an entry is counted ingested only when a lookup saw it); the
/// factor covers KFR slowing down within the batch.
pub const TIME_SAFETY: f64 = 2.0;

/// With nothing measured in this job (no entry of any batch so far was new), a wait by time
/// assumes KFR ingests this many times slower than the configured rate.
pub const UNMEASURED_SLOWDOWN: f64 = 10.0;

/// The wait by time for `entries` at `rate` a second: [`TIME_SAFETY`] times the rate's time,
/// never less than the configured rate's, plus [`CONFIRM_MARGIN`].
fn time_bound(entries: u64, rate: f64, opts: &ExecOptions) -> Duration {
    let at_rate = Duration::from_secs_f64(entries as f64 / rate.max(0.001) * TIME_SAFETY);
    at_rate.max(expected_time(entries, opts.ingest_rate)) + CONFIRM_MARGIN
}

/// The rate a confirmed batch showed, as a lower bound (entries over the time from acceptance to
/// confirmation), when it was confirmed by an entry new in it.
fn stored_rate(b: &BatchRecord) -> Option<f64> {
    let by = b.confirmed_by.as_deref()?;
    if b.status != BatchStatus::Confirmed || !by.starts_with("witness") {
        return None;
    }
    let at = |t: &Option<String>| {
        chrono::DateTime::parse_from_rfc3339(t.as_deref()?)
            .ok()
            .map(|t| t.with_timezone(&chrono::Utc))
    };
    let secs = (at(&b.confirmed_at)? - at(&b.accepted_at)?)
        .to_std()
        .ok()?
        .as_secs_f64();
    Some(b.entry_count as f64 / secs.max(0.001))
}

/// Sleeps `d`, looking at the stop flag every 100 ms: a signal is answered within a second
/// whatever the wait (issue 20, N3).
async fn sleep_or_stop(d: Duration, opts: &ExecOptions) -> Result<(), Interrupted> {
    let until = Instant::now() + d;
    loop {
        check_stop(opts)?;
        let now = Instant::now();
        if now >= until {
            return Ok(());
        }
        tokio::time::sleep((until - now).min(Duration::from_millis(100))).await;
    }
}

/// Runs `f` (a lookup: safe to drop) unless a signal asks the load to stop first.
async fn until_stopped<T>(f: impl std::future::Future<Output = T>, opts: &ExecOptions) -> Result<T, Interrupted> {
    tokio::pin!(f);
    loop {
        check_stop(opts)?;
        tokio::select! {
            v = &mut f => return Ok(v),
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

/// Which entries kfr itself may have made visible: the customers with any operation in this
/// store's outbox (`kfr add`, `kfr remove`, the sync agent) in the job's register. Such an entry
/// is never evidence of a batch's ingestion (issue 20, N1): a `kfr add` run while the batch
/// ingests registers it at once. An operation stores its event before it is sent, so looking
/// here after a lookup saw the entry catches every add that could have put it there.
struct Trust<'a> {
    store: &'a Store,
    /// `None` (a job planned before kfr recorded its register): every register's operations.
    register: Option<String>,
}

impl Trust<'_> {
    async fn touched(&self, p: Packed) -> anyhow::Result<bool> {
        Ok(!self
            .store
            .events_of(self.register.clone(), Some(p.id_text()))
            .await?
            .is_empty())
    }
}

/// Confirms an accepted batch by the rule in docs/specs/barrier.md ("Confirming a batch"): the
/// highest of its evidence points (entries not visible before the upload and not touched through
/// kfr) seen stored proves every entry up to it (ingestion follows file order); entries after it
/// are waited for by time at the rate that point measured; with no evidence at all, the whole
/// batch is waited for at the slowest rate measured in the job. Returns how (`witness`,
/// `witness+time`, `time`) and the detail for the report.
#[allow(clippy::too_many_arguments)]
async fn confirm_batch(
    client: &KfrClient,
    trust: &Trust<'_>,
    b: &BatchRecord,
    slice: &[Packed],
    points: &[usize],
    accepted_at: chrono::DateTime<chrono::Utc>,
    meter: &mut Meter,
    measured: &mut Option<f64>,
    opts: &ExecOptions,
    on: EventSink<'_>,
) -> anyhow::Result<(&'static str, String)> {
    wait_for_ingestion(client, slice, points.last().copied(), accepted_at, meter, opts, on).await?;
    let mut evidence = points.to_vec();
    let top = loop {
        let Some(&k) = evidence.last() else { break None };
        // Looked at again after the entry was seen: its operation's event was stored first.
        if !trust.touched(slice[k]).await? {
            confirm(client, b, &slice[..=k], slice, meter, opts, on).await?;
            if !trust.touched(slice[k]).await? {
                break Some(k);
            }
        }
        let id = slice[k].to_entry().id;
        on(LoadEvent::EvidenceTouched {
            batch: b.seq,
            customer: format!("{} {}", id.kind().label(), id.log()),
        });
        evidence.pop();
    };
    let since_accepted = chrono::Utc::now()
        .signed_duration_since(accepted_at)
        .to_std()
        .unwrap_or(Duration::ZERO);
    let n = slice.len() as u64;
    match top {
        Some(k) if k + 1 == slice.len() => Ok(("witness", "its last entry, new in it, seen stored".to_string())),
        Some(k) => {
            let rate = (k as f64 + 1.0) / since_accepted.as_secs_f64().max(0.001);
            *measured = Some(measured.map_or(rate, |m| m.min(rate)));
            let tail = n - 1 - k as u64;
            let wait = time_bound(tail, rate, opts);
            on(LoadEvent::WaitingByTime {
                batch: b.seq,
                entries: tail,
                rate: rate as u64,
                measured: true,
                wait_secs: wait.as_secs_f64(),
            });
            sleep_or_stop(wait, opts).await?;
            Ok((
                "witness+time",
                format!(
                    "entry {} of {n}, new in it, seen stored; the {tail} after it waited for {:.1} s at {TIME_SAFETY}x the measured {} a second",
                    k + 1,
                    wait.as_secs_f64(),
                    rate as u64
                ),
            ))
        }
        None => {
            let (rate, is_measured) = match *measured {
                Some(r) => (r, true),
                None => (f64::from(opts.ingest_rate) / UNMEASURED_SLOWDOWN, false),
            };
            let wait = time_bound(n, rate, opts);
            on(LoadEvent::WaitingByTime {
                batch: b.seq,
                entries: n,
                rate: rate as u64,
                measured: is_measured,
                wait_secs: wait.as_secs_f64(),
            });
            sleep_or_stop(wait.saturating_sub(since_accepted), opts).await?;
            let basis = if is_measured {
                "the slowest rate measured in this job".to_string()
            } else {
                format!("nothing measured: a {UNMEASURED_SLOWDOWN}th of the configured rate")
            };
            Ok((
                "time",
                format!(
                    "no entry new in it could be checked; waited {:.1} s after acceptance at {TIME_SAFETY}x {} a second ({basis})",
                    wait.as_secs_f64(),
                    rate as u64
                ),
            ))
        }
    }
}

fn expected_time(entries: u64, rate: u32) -> Duration {
    Duration::from_secs_f64(entries as f64 / f64::from(rate))
}

/// The entry that confirms a batch: the chosen witness, or for a batch planned before witnesses
/// were recorded, its last entry (the old rule).
fn witness_of(b: &BatchRecord, slice: &[Packed]) -> Option<usize> {
    if b.witness_checked {
        b.witness.map(|w| w as usize)
    } else {
        Some(slice.len() - 1)
    }
}

/// Entries looked at, from the end of the batch backwards, for one not registered yet.
pub const WITNESS_CANDIDATES: usize = 8;

/// Further entries looked at, spread evenly over the rest of the batch, when the last
/// [`WITNESS_CANDIDATES`] were all registered before the upload (issue 20, N2): a witness deep
/// in the batch still proves most of it, and measures KFR's rate for the rest.
pub const DEEP_WITNESS_CANDIDATES: usize = 24;

/// Offsets tried as witness, highest first: the last [`WITNESS_CANDIDATES`], then
/// [`DEEP_WITNESS_CANDIDATES`] spread evenly below them.
fn witness_candidates(len: usize) -> Vec<usize> {
    let mut out: Vec<usize> = (0..len).rev().take(WITNESS_CANDIDATES).collect();
    let rest = len.saturating_sub(WITNESS_CANDIDATES);
    for i in 1..=DEEP_WITNESS_CANDIDATES {
        let k = rest.saturating_sub(1 + (i - 1) * rest / DEEP_WITNESS_CANDIDATES);
        if rest > 0 && out.last().is_none_or(|&l| k < l) {
            out.push(k);
        }
    }
    out
}

/// Before a batch is sent: the last entry (in file order) that KFR does not show yet, looked for
/// among the last [`WITNESS_CANDIDATES`]. A candidate KFR already shows, with a start date in the
/// file, is looked up once more on that very day: absent then means KFR holds a later start for
/// it and keeps its own date (issue 9 item 9), which is reported ([`LoadEvent::KfrKeepsItsDate`]).
/// Only these probed entries are checked. An entry that was visible before the upload (a
/// parallel add, D-3 step 3, or an earlier partial load) proves nothing when it is visible
/// afterwards, so only a new one may confirm the batch (issue 9 item 3). `None` when all the
/// candidates are registered already.
async fn choose_witness(
    client: &KfrClient,
    trust: &Trust<'_>,
    slice: &[Packed],
    opts: &ExecOptions,
    on: EventSink<'_>,
    seq: u32,
) -> anyhow::Result<Option<u64>> {
    let step = format!("checking batch {seq} before its upload");
    for i in witness_candidates(slice.len()) {
        // Touched through kfr (`kfr add`, the agent): its visibility could come from there.
        if trust.touched(slice[i]).await? {
            continue;
        }
        if !visible(client, slice[i], opts, on, &step).await? {
            return Ok(Some(i as u64));
        }
        if i + WITNESS_CANDIDATES < slice.len() {
            continue; // the date check is for the batch's last entries only (a sample)
        }
        let e = slice[i].to_entry();
        if let Some(start) = e.start
            && !visible_on(client, slice[i], start, opts, on, &step).await?
        {
            on(LoadEvent::KfrKeepsItsDate {
                customer: format!("{} {}", e.id.kind().label(), crate::ids::mask(e.id.as_str())),
                file_start: start,
            });
        }
    }
    Ok(None)
}

async fn record_ledger(store: &Store, job: i64, b: &BatchRecord, slice: &[Packed]) -> anyhow::Result<()> {
    let entries: Vec<(String, Option<chrono::NaiveDate>)> = slice.iter().map(|p| (p.id_text(), p.start())).collect();
    store
        .record_batch(job, b.seq, b.correlation_id, entries, chrono::Utc::now())
        .await?;
    Ok(())
}

/// Decides the fate of a batch whose upload outcome was not recorded. Returns `Accepted` when its
/// last entry is visible, `Planned` (already stored) when it must be sent again.
#[allow(clippy::too_many_arguments)]
async fn probe_unknown_upload(
    store: &Store,
    client: &KfrClient,
    trust: &Trust<'_>,
    job: i64,
    b: &BatchRecord,
    slice: &[Packed],
    opts: &ExecOptions,
    on: EventSink<'_>,
) -> anyhow::Result<BatchStatus> {
    let witness = witness_of(b, slice).map(|w| slice[w]);
    let began = b
        .uploading_at
        .as_deref()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&chrono::Utc))
        .unwrap_or_else(chrono::Utc::now);
    let expected = Duration::from_secs_f64(b.entry_count as f64 / f64::from(opts.ingest_rate));
    let deadline_from_now = (began + chrono::Duration::from_std(expected + UNKNOWN_UPLOAD_GRACE)?)
        .signed_duration_since(chrono::Utc::now())
        .to_std()
        .unwrap_or(Duration::ZERO);
    let deadline = Instant::now() + deadline_from_now;
    on(LoadEvent::CheckingUnknownUpload {
        batch: b.seq,
        correlation_id: b.correlation_id,
    });
    let mut backoff = FIRST_BACKOFF;
    let step = format!("checking whether batch {} reached KFR", b.seq);
    loop {
        // Without a witness (every candidate was registered already) nothing can show the
        // upload arrived: it counts as absent once its time is up (a re-send then repeats
        // relationships KFR holds, which changes nothing).
        // A witness the bank touched through kfr meanwhile (`kfr add`, the agent) proves nothing
        // about this upload either: treated as absent, so the batch is sent again (harmless).
        check_stop(opts)?;
        let seen = match witness {
            Some(w) => visible(client, w, opts, on, &step).await? && !trust.touched(w).await?,
            None => false,
        };
        if seen {
            change(store, job, b.seq, BatchChange::Status(BatchStatus::Accepted)).await?;
            on(LoadEvent::UnknownUploadFound { batch: b.seq });
            return Ok(BatchStatus::Accepted);
        }
        if Instant::now() >= deadline {
            change(store, job, b.seq, BatchChange::Status(BatchStatus::Planned)).await?;
            on(LoadEvent::UnknownUploadAbsent { batch: b.seq });
            return Ok(BatchStatus::Planned);
        }
        sleep_or_stop(backoff.min(deadline.saturating_duration_since(Instant::now())), opts).await?;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Waits until the batch should be ingested, moving the bar meanwhile. The batch's witness is
/// looked up now and then during the wait (see below), so a KFR faster than the configured rate
/// does not make the load slower than it needs to be; the full confirmation follows either way.
/// The count shown is measured by the [`Meter`] where its lookups prove one, else an estimate at
/// the ingest rate, labelled as such (issue 9 item 12).
async fn wait_for_ingestion(
    client: &KfrClient,
    slice: &[Packed],
    witness: Option<usize>,
    accepted_at: chrono::DateTime<chrono::Utc>,
    meter: &mut Meter,
    opts: &ExecOptions,
    on: EventSink<'_>,
) -> anyhow::Result<()> {
    let count = meter.count;
    let expected = expected_time(count, opts.ingest_rate);
    let elapsed = chrono::Utc::now()
        .signed_duration_since(accepted_at)
        .to_std()
        .unwrap_or(Duration::ZERO);
    let start = Instant::now() - elapsed.min(expected);
    let end = start + expected;
    // Probes start 0.5 s apart and double up to 1/20 of the wait (at most 30 s): a KFR faster
    // than the configured rate is noticed within about twice its real ingestion time, and a slow
    // one costs about 20 lookups per batch.
    let max_probe = (expected / 20).clamp(Duration::from_millis(500), Duration::from_secs(30));
    let mut probe_every = Duration::from_millis(500);
    let mut next_probe = Instant::now() + probe_every;
    while Instant::now() < end {
        // The batch is recorded accepted: stopping in the wait is safe, the resume waits on.
        check_stop(opts)?;
        let done = (((Instant::now() - start).as_secs_f64() * f64::from(opts.ingest_rate)) as u64).min(count);
        if meter.due() {
            meter.probe(client, slice, done, opts, on).await?;
        }
        meter.tick(Some(done), on);
        sleep_or_stop((end - Instant::now()).min(Duration::from_millis(200)), opts).await?;
        if Instant::now() >= next_probe && Instant::now() < end {
            if let Some(w) = witness
                && visible(client, slice[w], opts, on, "waiting for KFR to ingest").await?
            {
                meter.saw(w);
                meter.tick(None, on);
                meter.report(done, on);
                break;
            }
            probe_every = (probe_every * 2).min(max_probe);
            next_probe = Instant::now() + probe_every;
        }
    }
    Ok(())
}

/// Measuring points per batch besides its witness (issue 9 item 12): enough to bound the count
/// usefully, few enough to cost nothing next to a batch of thousands.
pub const MEASURING_POINTS: usize = 4;

/// Batches shorter than this to ingest (at the configured rate) are not measured: their wait is
/// over before a measuring lookup would be due.
pub const MEASURE_FROM: Duration = Duration::from_secs(1);

/// Before a batch is sent: entries spread evenly before its witness that KFR does not show yet,
/// and the witness itself (checked by [`choose_witness`]). An entry visible before the upload
/// would prove nothing about this batch's ingestion, so it is left out.
async fn choose_measuring_points(
    client: &KfrClient,
    trust: &Trust<'_>,
    slice: &[Packed],
    witness: Option<u64>,
    opts: &ExecOptions,
    on: EventSink<'_>,
    seq: u32,
) -> anyhow::Result<Vec<usize>> {
    let Some(w) = witness.map(|w| w as usize) else {
        return Ok(vec![]);
    };
    if expected_time(slice.len() as u64, opts.ingest_rate) < MEASURE_FROM {
        return Ok(vec![w]);
    }
    let step = format!("checking batch {seq} before its upload");
    let mut out: Vec<usize> = vec![];
    for i in 1..=MEASURING_POINTS {
        let k = i * w / (MEASURING_POINTS + 1);
        if k >= w || out.last() == Some(&k) {
            continue;
        }
        if !trust.touched(slice[k]).await? && !visible(client, slice[k], opts, on, &step).await? {
            out.push(k);
        }
    }
    out.push(w);
    Ok(out)
}

/// The ingested count of one batch while KFR ingests it (issue 9 item 12). Ingestion follows file
/// order (kfr-notes §6), so when an entry new in the batch (a measuring point) is visible, every
/// entry before it is ingested: the count is at least its offset + 1. Lookups are few (at most
/// one per `every`: a tenth of the batch's expected time, between 0.5 s and 10 s, so about three
/// per 30 s on a long batch) and bisect towards KFR's progress.
struct Meter {
    batch: u32,
    batches: u32,
    /// Relationships of the batches confirmed before this one.
    before: u64,
    count: u64,
    total: u64,
    /// Offsets in the batch of entries not visible before the upload, ascending.
    points: Vec<usize>,
    /// Entries of this batch proved ingested.
    known: u64,
    /// The lowest point last seen absent: the next lookup aims below it.
    absent_at: Option<usize>,
    every: Duration,
    next: Instant,
    slower: bool,
    /// Past the batch's expected time (confirming): the plan's count is known wrong, only what
    /// lookups prove is shown.
    past_expected: bool,
}

impl Meter {
    fn new(b: &BatchRecord, batches: u32, before: u64, total: u64, points: Vec<usize>, rate: u32) -> Self {
        let every =
            (expected_time(b.entry_count, rate) / 10).clamp(Duration::from_millis(500), Duration::from_secs(10));
        Meter {
            batch: b.seq,
            batches,
            before,
            count: b.entry_count,
            total,
            points,
            known: 0,
            absent_at: None,
            every,
            next: Instant::now() + every,
            slower: false,
            past_expected: false,
        }
    }

    fn due(&self) -> bool {
        Instant::now() >= self.next
    }

    /// Point `k` was seen visible.
    fn saw(&mut self, k: usize) {
        self.known = self.known.max(k as u64 + 1);
    }

    /// The count to show: measured once a lookup proved part of the batch (or when no estimate
    /// applies any more), else `estimate` (entries of this batch predicted at the rate).
    fn figure(&self, estimate: Option<u64>) -> (u64, IngestedBasis) {
        match estimate.filter(|_| !self.past_expected) {
            Some(e) if self.known == 0 => (self.before + e, IngestedBasis::Estimate),
            _ => (self.before + self.known, IngestedBasis::Measured),
        }
    }

    fn tick(&self, estimate: Option<u64>, on: EventSink<'_>) {
        let (ingested, ingested_basis) = self.figure(estimate);
        on(LoadEvent::Ingesting {
            batch: self.batch,
            batches: self.batches,
            ingested,
            ingested_basis,
            slower: self.slower,
        });
    }

    /// The point to look up next: the highest not yet proved below `estimate` and below the
    /// point last seen absent, else the lowest not yet proved.
    fn next_point(&mut self, estimate: u64) -> Option<usize> {
        let open = |absent_at: Option<usize>, known: u64| -> Vec<usize> {
            self.points
                .iter()
                .copied()
                .filter(|&k| k as u64 >= known && absent_at.is_none_or(|a| k < a))
                .collect()
        };
        let mut candidates = open(self.absent_at, self.known);
        if candidates.is_empty() && self.absent_at.is_some() {
            // Everything below the point last seen absent is proved: look at it again.
            self.absent_at = None;
            candidates = open(None, self.known);
        }
        candidates
            .iter()
            .rev()
            .find(|&&k| (k as u64) < estimate)
            .or(candidates.first())
            .copied()
    }

    /// One measuring lookup. `estimate`: entries of the batch the plan predicts by now; the point
    /// looked up is the highest below it not yet proved (bounded by one last seen absent), so a
    /// KFR on plan is confirmed there and a slower one is bisected towards.
    async fn probe(
        &mut self,
        client: &KfrClient,
        slice: &[Packed],
        estimate: u64,
        opts: &ExecOptions,
        on: EventSink<'_>,
    ) -> anyhow::Result<()> {
        self.next = Instant::now() + self.every;
        if let Some(k) = self.next_point(estimate) {
            let step = format!("measuring the ingestion of batch {}", self.batch);
            if visible(client, slice[k], opts, on, &step).await? {
                self.saw(k);
            } else {
                self.absent_at = Some(k);
                // Behind the plan by more than a tenth of the batch (or 2 s of ingestion,
                // whichever is more): a lookup's latency is not a slow KFR.
                let slack = (self.count / 10).max(2 * u64::from(opts.ingest_rate));
                if !self.slower && estimate > k as u64 + slack {
                    self.slower = true;
                    on(LoadEvent::KfrSlowerThanPlanned {
                        batch: self.batch,
                        ingested: self.before + self.known,
                        expected: self.before + estimate,
                    });
                }
            }
        }
        self.report(estimate, on);
        Ok(())
    }

    /// The `progress` event: the figure now and what the plan predicts.
    fn report(&self, estimate: u64, on: EventSink<'_>) {
        let (ingested, ingested_basis) = self.figure(Some(estimate));
        on(LoadEvent::Progress {
            batch: self.batch,
            batches: self.batches,
            ingested,
            ingested_basis,
            expected: self.before + estimate.min(self.count),
            total: self.total,
        });
    }
}

/// The entries a confirmation checks: the last one and up to `sample` others at random.
fn checked_entries(slice: &[Packed], sample: usize) -> Vec<Packed> {
    let (last, rest) = slice.split_last().expect("batches are not empty");
    let mut out = vec![*last];
    out.extend(rest.choose_multiple(&mut rand::rng(), sample).copied());
    out
}

/// Whether KFR shows `p` registered for us (own lookup with `fromDate` = its start date, so a
/// relationship stored with history is found), waiting out transient failures (item 8).
async fn visible(
    client: &KfrClient,
    p: Packed,
    opts: &ExecOptions,
    on: EventSink<'_>,
    step: &str,
) -> anyhow::Result<bool> {
    let e = p.to_entry();
    let mut waited = Waited::new();
    loop {
        match until_stopped(client.lookup_once(&e.id, e.start, None, uuid::Uuid::new_v4()), opts)
            .await?
            .into_result()
        {
            Ok(banks) => return Ok(banks.iter().any(|b| b.organization_id == client.config().org_number)),
            Err(err) => waited
                .wait_or_stop(&err, step, opts, on)
                .await
                .with_context(|| format!("own lookup of {} {}", e.id.kind().label(), e.id.log()))?,
        }
    }
}

/// Whether KFR shows `p` registered for us on the day `on_day` (own lookup of that one day).
async fn visible_on(
    client: &KfrClient,
    p: Packed,
    on_day: chrono::NaiveDate,
    opts: &ExecOptions,
    on: EventSink<'_>,
    step: &str,
) -> anyhow::Result<bool> {
    let e = p.to_entry();
    let mut waited = Waited::new();
    loop {
        match until_stopped(
            client.lookup_once(&e.id, Some(on_day), Some(on_day), uuid::Uuid::new_v4()),
            opts,
        )
        .await?
        .into_result()
        {
            Ok(banks) => return Ok(banks.iter().any(|b| b.organization_id == client.config().org_number)),
            Err(err) => waited
                .wait_or_stop(&err, step, opts, on)
                .await
                .with_context(|| format!("own lookup of {} {}", e.id.kind().label(), e.id.log()))?,
        }
    }
}

async fn confirm(
    client: &KfrClient,
    b: &BatchRecord,
    slice: &[Packed],
    batch: &[Packed],
    meter: &mut Meter,
    opts: &ExecOptions,
    on: EventSink<'_>,
) -> anyhow::Result<()> {
    let mut missing = checked_entries(slice, opts.sample);
    let deadline = Instant::now() + opts.confirm_timeout;
    let mut backoff = FIRST_BACKOFF;
    let mut reported = false;
    loop {
        let mut still = vec![];
        for p in &missing {
            if !visible(client, *p, opts, on, &format!("confirming batch {}", b.seq)).await? {
                still.push(*p);
            }
        }
        missing = still;
        if missing.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let names: Vec<String> = missing
                .iter()
                .map(|p| {
                    let id: CustomerId = p.to_entry().id;
                    format!("{} {}", id.kind().label(), id.log())
                })
                .collect();
            anyhow::bail!(
                "batch {} (CorrelationID {}) was accepted but is not confirmed stored after {} s beyond its expected ingestion time; not visible by own lookup: {}",
                b.seq,
                b.correlation_id,
                opts.confirm_timeout.as_secs(),
                names.join(", ")
            );
        }
        check_stop(opts)?;
        // Past the expected time the plan's count is known wrong: the figure shown from here is
        // what lookups prove, and the notice that KFR is slower than planned gives it.
        meter.past_expected = true;
        meter.slower = true;
        if !reported || meter.due() {
            meter.probe(client, batch, meter.count, opts, on).await?;
            meter.tick(None, on);
        }
        if !reported {
            reported = true;
            on(LoadEvent::WaitingForIngestion {
                batch: b.seq,
                missing: missing.len(),
                ingested: meter.figure(None).0,
                expected: meter.before + meter.count,
            });
        }
        sleep_or_stop(backoff.min(deadline.saturating_duration_since(Instant::now())), opts).await?;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meter(points: Vec<usize>) -> Meter {
        let b = BatchRecord {
            seq: 2,
            first_entry: 100,
            entry_count: 100,
            bytes: 1,
            correlation_id: uuid::Uuid::nil(),
            status: BatchStatus::Accepted,
            uploading_at: None,
            accepted_at: None,
            confirmed_at: None,
            witness: Some(99),
            witness_checked: true,
            confirmed_by: None,
            resends: 0,
        };
        Meter::new(&b, 3, 100, 300, points, 50)
    }

    /// The count is an estimate until a lookup proves part of the batch, then the proved lower
    /// bound; past the expected time only what is proved is shown.
    #[test]
    fn the_figure_is_an_estimate_until_a_lookup_proves_one() {
        let mut m = meter(vec![19, 39, 59, 79, 99]);
        assert_eq!(m.figure(Some(30)), (130, IngestedBasis::Estimate));
        m.saw(19);
        assert_eq!(m.figure(Some(30)), (120, IngestedBasis::Measured));
        m.past_expected = true;
        m.known = 0;
        assert_eq!(m.figure(Some(100)), (100, IngestedBasis::Measured));
    }

    /// Lookups aim at the highest point the plan says should be ingested, then bisect below a
    /// point seen absent, and come back to it once everything below it is proved.
    #[test]
    fn measuring_points_are_picked_towards_kfrs_progress() {
        let mut m = meter(vec![19, 39, 59, 79, 99]);
        assert_eq!(m.next_point(65), Some(59));
        m.absent_at = Some(59);
        assert_eq!(m.next_point(65), Some(39));
        m.saw(39);
        assert_eq!(m.next_point(65), Some(59), "nothing open below 59: look again");
        assert_eq!(m.next_point(5), Some(59), "below every open point: the lowest");
        m.saw(99);
        assert_eq!(m.next_point(100), None, "all proved");
        assert_eq!(meter(vec![]).next_point(50), None);
    }
}
