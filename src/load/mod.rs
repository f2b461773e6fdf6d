//! `kfr load`: the initial load of every active customer relationship (onboarding D-3), from the
//! bank's export to a register confirmed complete.
//!
//! Pipeline, one file per role:
//! - [`reader`] (in [`crate::input`], re-exported here): stream the file once; detect the
//!   format; validate, fold duplicates, drop closed rows; report every bad line (masked) with its
//!   rule. [`fifo`]: an export from a named FIFO, whose waits for its writer answer a stop.
//! - [`plan`]: exact-size batches within the limit, ingestion time, day schedule, "tell Bits?".
//! - [`exec`]: upload one batch at a time, wait, confirm by own-lookups, record every step in the
//!   state store so `--resume` after a crash never re-sends an accepted batch.
//! - [`report`]: the `--report` JSON + Markdown.
//! - [`event`] and [`error`]: what the load tells its caller while it runs, and why it stopped.
//!
//! This module ties them together, owns the job's identity (input hash + the settings that shape
//! the batches, fixed in the store when the job is created so a resume plans the same batches),
//! and lifts the barrier: operations held in the store's per-customer queues are sent, in issue
//! order, only after the job is confirmed (docs/specs/barrier.md).
//!
//! The load prints nothing. It takes its settings and a KFR client as values ([`LoadOptions`],
//! built by the CLI from the configuration), reports progress as [`LoadEvent`]s to a sink the
//! caller supplies, and ends with a [`LoadOutcome`] or a [`LoadError`].

pub mod abandon;
pub mod error;
pub mod event;
pub mod exec;
pub mod fifo;
pub mod plan;
pub mod report;
pub mod retry;

pub use error::LoadError;
pub use event::{EventSink, LoadEvent, PlanSummary};

pub use crate::input::reader;

/// A read relationship as the batch encoder wants it. The reader (in `input`, below `kfr` in the
/// layers) cannot name KFR's types, so the load joins the two shapes.
pub trait ToEntry {
    fn to_entry(self) -> crate::kfr::BatchEntry;
}

impl ToEntry for reader::Packed {
    fn to_entry(self) -> crate::kfr::BatchEntry {
        crate::kfr::BatchEntry {
            id: self.customer_id(),
            start: self.start(),
        }
    }
}

use crate::ids::{CustomerId, IdPolicy};
use crate::kfr::{KfrClient, Layout};
use crate::store::{ClaimEnd, ClaimFinished, Claimer, NewBatch, NewJob, OWN_SOURCES, Operation, Store, time_text};
use crate::sync::outcome::{Effect, Rules, decide};
use anyhow::Context as _;
use chrono::NaiveDate;
use exec::{ExecEnd, ExecOptions, abort_point};
use reader::{ReadOptions, ReadOutcome, Rejected};
use report::{Counts, LoadReport, SentOperation};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Rejected lines shown one by one per rule (line number and masked text); the rest are counted
/// by rule, and all go to the rejects file.
pub const EXAMPLES_PER_RULE: u64 = 3;

/// Everything a load needs, as values: the CLI builds it from flags and configuration.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub file: PathBuf,
    pub resume: bool,
    /// Where the state store is (jobs, batches, ledger, held operations), for messages: a path,
    /// or a PostgreSQL URL without its password ([`crate::store::Location::describe`]); the
    /// store itself is opened by the caller and passed to [`run`].
    pub state: String,
    pub report: Option<PathBuf>,
    pub skip_invalid: bool,
    pub rejects: Option<PathBuf>,
    pub ingest_rate: u32,
    pub max_batch_bytes: usize,
    pub max_per_day: Option<u64>,
    pub confirm_timeout: Duration,
    pub sample: usize,
    /// The institution: fixed in the job.
    pub org_number: String,
    /// The KFR the client talks to: fixed in the job (a remove against another KFR is not held
    /// by this load, and the job is never resumed against another).
    pub kfr_base_url: String,
    /// `local`, `test` or `prod`: fixed in the job with the KFR base URL and org.nr, so a job is
    /// only ever resumed against the KFR it was started against.
    pub environment: String,
    pub id_policy: IdPolicy,
    /// A file with nothing to load is accepted (`--allow-empty`).
    pub allow_empty: bool,
    /// How long transient failures and outages are waited out before the load stops.
    pub outage_wait: Duration,
    /// How long the export must have been unchanged before and after it is read (`--settle-secs`).
    pub settle: Duration,
    /// Longest `Retry-After` honoured in full (`[retry] retry_after_cap_secs`).
    pub retry_after_cap: Duration,
    /// The exact command that resumes this load (real file and state path), for messages.
    pub resume_command: String,
    /// Set by the command when a signal asks the load to stop (Ctrl-C, SIGTERM).
    pub stop: Option<exec::StopFlag>,
    /// The longest one KFR request may take (request timeout, a token fetch, a 401 retry): a
    /// held operation's claim lasts longer, so its request always ends inside its claim.
    pub request_budget: Duration,
    /// How long a held operation's request of unknown fate may still be carried out
    /// (`sync.in_doubt_secs`): its customer waits that long.
    pub in_doubt: Duration,
}

/// How a load ended without an error.
#[derive(Debug, Clone)]
pub struct LoadOutcome {
    pub plan: PlanSummary,
    pub report: LoadReport,
    /// `--max-per-day` stopped it; `--resume` on a later day continues.
    pub paused_for_today: bool,
    /// The `--report` files written (JSON, Markdown).
    pub report_files: Option<(PathBuf, PathBuf)>,
    /// Held operations that could not be sent (they stay queued; exit 1 after the summary).
    pub held_operations_failed: usize,
    /// A signal stopped the load after its current step (2: Ctrl-C, 15: SIGTERM).
    pub interrupted: Option<i32>,
}

/// The settings that shape a job's batches, stored with the job.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct JobSettings {
    today: NaiveDate,
    boundary: String,
    max_batch_bytes: usize,
    ingest_rate: u32,
    max_per_day: Option<u64>,
    org_number: String,
    /// The KFR the job belongs to; empty in jobs planned before kfr recorded it.
    #[serde(default)]
    kfr_base_url: String,
    #[serde(default)]
    environment: String,
}

impl JobSettings {
    fn new(opts: &LoadOptions) -> Self {
        JobSettings {
            today: crate::clock::oslo_today(),
            boundary: Layout::new().boundary().to_string(),
            max_batch_bytes: opts.max_batch_bytes,
            ingest_rate: opts.ingest_rate,
            max_per_day: opts.max_per_day,
            org_number: opts.org_number.clone(),
            kfr_base_url: opts.kfr_base_url.clone(),
            environment: opts.environment.clone(),
        }
    }
}

/// The default rejects file: `customers.csv` → `customers.rejects.csv`.
pub fn default_rejects_path(input: &Path) -> PathBuf {
    let stem = input
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ext = input
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    input.with_file_name(format!("{stem}.rejects{ext}"))
}

/// The file read and planned.
struct Prepared {
    read: ReadOutcome,
    by_rule: std::collections::BTreeMap<String, u64>,
    rejects: Vec<Rejected>,
    rejects_file: Option<PathBuf>,
    summary: PlanSummary,
    layout: Layout,
}

/// What [`read_input`] gives back: the outcome, the rejects kept for the report, the rejects file
/// written, and the bad lines counted by rule.
type Read = (
    ReadOutcome,
    Vec<Rejected>,
    Option<PathBuf>,
    std::collections::BTreeMap<String, u64>,
);

/// Refuses a rejects file that is a symlink before anything is read (it gets identifiers in
/// full: a planted link must not redirect them; the open also refuses to follow one).
fn check_rejects_path(opts: &LoadOptions) -> Result<(), LoadError> {
    if !opts.skip_invalid {
        return Ok(());
    }
    let path = opts.rejects.clone().unwrap_or_else(|| default_rejects_path(&opts.file));
    if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(LoadError::RejectsSymlink { path });
    }
    Ok(())
}

/// Reads the input, showing the first few bad lines of each rule and writing every one to the
/// rejects file when asked.
fn read_input(opts: &LoadOptions, ro: ReadOptions, on: EventSink<'_>) -> Result<Read, LoadError> {
    let file = fifo::open(&opts.file, opts.stop.as_ref())?;
    // The file must not change under us (issue 9 item 7, issue 20): unchanged for the settle
    // window before the read, the same size and modification time after it and once more a
    // window later, and the same sha256 on a second read. A file written in chunks with pauses
    // shorter than the window is refused rather than half loaded. A pipe or FIFO has no size
    // or time to compare: it is read as it streams.
    let before = file.metadata().map_err(|source| LoadError::OpenInput {
        path: opts.file.clone(),
        source,
    })?;
    let regular = before.is_file();
    if regular {
        settled(opts, &before)?;
    }
    let size = regular.then_some(before.len());
    let mut kept: Vec<Rejected> = vec![];
    let rejects_path = opts
        .skip_invalid
        .then(|| opts.rejects.clone().unwrap_or_else(|| default_rejects_path(&opts.file)));
    let mut rejects_out: Option<std::io::BufWriter<std::fs::File>> = None;
    let mut write_err: Option<std::io::Error> = None;
    let mut reported = 0u64;
    let mut by_rule: std::collections::BTreeMap<String, u64> = Default::default();
    let input = fifo::Input::new(file, opts.stop.clone(), regular);
    let out = reader::read(std::io::BufReader::with_capacity(0, input), size, ro, |r, raw| {
        let seen = by_rule.entry(r.rule.to_string()).or_default();
        *seen += 1;
        if *seen <= EXAMPLES_PER_RULE {
            on(LoadEvent::LineRejected {
                rejected: r.clone(),
                skipped: opts.skip_invalid,
            });
            reported += 1;
        }
        if let Some(path) = &rejects_path {
            // The rejects file holds the raw lines (identifiers in full) so they can be fixed
            // and loaded later: it is created 0600 like the state store.
            if rejects_out.is_none() && write_err.is_none() {
                match private_file(path) {
                    Ok(f) => {
                        let mut w = std::io::BufWriter::new(f);
                        let _ = writeln!(w, "line;rule;text");
                        rejects_out = Some(w);
                    }
                    Err(e) => write_err = Some(e),
                }
            }
            if let Some(w) = rejects_out.as_mut() {
                // The line's bytes as they were (a Latin-1 export stays Latin-1: issue 20, its
                // æøå were replaced), so the fixed line loads like the rest of the file.
                let r2 = write!(w, "{};{};", r.line, r.rule)
                    .and_then(|()| w.write_all(raw))
                    .and_then(|()| w.write_all(b"\n"));
                if let Err(e) = r2 {
                    write_err = Some(e);
                }
            }
        }
        if kept.len() < report::MAX_REJECTS_IN_REPORT {
            kept.push(r);
        }
    })
    .map_err(|e| {
        if let reader::ReadError::Io(io) = &e
            && let Some(signal) = fifo::stopped_by(io)
        {
            return LoadError::StoppedWaitingForInput {
                file: opts.file.clone(),
                signal,
                waiting: "its writer sent nothing more",
            };
        }
        // A header error carries its own hint; keep it findable in the chain.
        let e = match e {
            reader::ReadError::Header(h) => anyhow::Error::new(h),
            other => anyhow::Error::new(other),
        };
        e.context(format!("reading {}", opts.file.display())).into()
    })?;
    if regular {
        let after = std::fs::metadata(&opts.file).map_err(|source| LoadError::OpenInput {
            path: opts.file.clone(),
            source,
        })?;
        if !same_file_state(&before, &after) {
            return Err(LoadError::ChangedWhileRead {
                file: opts.file.clone(),
                before: before.len(),
                after: after.len(),
            });
        }
        settled(opts, &before)?;
        if !out.content_hash.is_empty() && sha256_of(&opts.file)? != out.content_hash {
            return Err(LoadError::ChangedWhileRead {
                file: opts.file.clone(),
                before: before.len(),
                after: before.len(),
            });
        }
    }
    if let Some(mut w) = rejects_out {
        w.flush().context("writing the rejects file")?;
    }
    if let Some(e) = write_err {
        return Err(anyhow::Error::new(e)
            .context(format!(
                "writing the rejects file {}",
                rejects_path.as_deref().unwrap_or(Path::new("")).display()
            ))
            .into());
    }
    if out.rejected > reported {
        on(LoadEvent::MoreRejected {
            count: out.rejected - reported,
            by_rule: by_rule.clone(),
        });
    }
    let written = rejects_path.filter(|_| out.rejected > 0);
    Ok((out, kept, written, by_rule))
}

fn same_file_state(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    a.len() == b.len() && a.modified().ok() == b.modified().ok()
}

/// Waits until the export has not been modified for `opts.settle` (at once when it is older),
/// checking that it still is as `was`: size and modification time.
fn settled(opts: &LoadOptions, was: &std::fs::Metadata) -> Result<(), LoadError> {
    let changed = |now: &std::fs::Metadata| LoadError::ChangedWhileRead {
        file: opts.file.clone(),
        before: was.len(),
        after: now.len(),
    };
    loop {
        let now = std::fs::metadata(&opts.file).map_err(|source| LoadError::OpenInput {
            path: opts.file.clone(),
            source,
        })?;
        if !same_file_state(was, &now) {
            return Err(changed(&now));
        }
        let age = now
            .modified()
            .ok()
            .and_then(|m| std::time::SystemTime::now().duration_since(m).ok())
            .unwrap_or(Duration::ZERO);
        if age >= opts.settle {
            return Ok(());
        }
        std::thread::sleep((opts.settle - age).min(Duration::from_millis(200)));
    }
}

/// The sha256 of the file at `path` as it is now (hex), for the check after reading.
fn sha256_of(path: &Path) -> Result<String, LoadError> {
    use sha2::Digest as _;
    let mut f = std::fs::File::open(path).map_err(|source| LoadError::OpenInput {
        path: path.to_owned(),
        source,
    })?;
    let mut h = sha2::Sha256::new();
    std::io::copy(&mut f, &mut h).with_context(|| format!("reading {} again to compare", path.display()))?;
    Ok(hex::encode(h.finalize()))
}

/// Opens a file for writing that holds identifiers (rejects) or facts about them (reports):
/// mode 0600 whatever the umask and whatever rights a file already there had, never through a
/// symlink (`O_NOFOLLOW`: a planted link cannot redirect the data).
fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        o.mode(0o600).custom_flags(libc::O_NOFOLLOW);
    }
    let f = o.open(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(f)
}

fn counts(read: &ReadOutcome) -> Counts {
    Counts {
        data_lines: read.data_lines,
        valid_unique: read.entries.len() as u64,
        rejected: read.rejected,
        duplicates: read.duplicates,
        closed: read.closed,
        by_kind: read.by_kind.clone(),
    }
}

/// Reads and plans under `settings`; reports the plan, then refuses bad lines unless skipped.
fn prepare(
    opts: &LoadOptions,
    settings: &JobSettings,
    hash: bool,
    on: EventSink<'_>,
    check: impl FnOnce(&ReadOutcome) -> Result<(), LoadError>,
    resumed: bool,
) -> Result<Prepared, LoadError> {
    let layout = Layout::with_boundary(settings.boundary.clone());
    check_rejects_path(opts)?;
    let (read, rejects, rejects_file, by_rule) = read_input(
        opts,
        ReadOptions {
            policy: opts.id_policy,
            today: settings.today,
            hash,
        },
        on,
    )?;
    check(&read)?;
    if read.entries.is_empty() && !opts.allow_empty {
        return Err(LoadError::NothingToLoad {
            file: opts.file.clone(),
            data_lines: read.data_lines,
            closed: read.closed,
            rejected: read.rejected,
        });
    }
    let plan = plan::plan(
        &read.entries,
        &layout,
        settings.max_batch_bytes,
        settings.ingest_rate,
        settings.max_per_day,
    );
    let summary = PlanSummary {
        file: opts.file.clone(),
        format: read.format.clone(),
        format_text: read.format.to_string(),
        bom: read.bom,
        crlf: read.crlf,
        blank_lines: read.blank_lines,
        counts: counts(&read),
        plan,
    };
    on(LoadEvent::Plan {
        summary: Box::new(summary.clone()),
        resumed,
    });
    if read.rejected > 0 {
        match &rejects_file {
            Some(p) => on(LoadEvent::RejectsWritten {
                count: read.rejected,
                path: p.clone(),
            }),
            None => {
                return Err(LoadError::BadLines {
                    file: opts.file.clone(),
                    count: read.rejected,
                });
            }
        }
    }
    Ok(Prepared {
        read,
        by_rule,
        rejects,
        rejects_file,
        summary,
        layout,
    })
}

/// `kfr load --dry-run`: reads and plans; sends nothing and writes no state. With `--report`,
/// writes the plan report to mail Bits before the load (issue 9 item 14): the report file is
/// checked and opened (0600, never through a symlink) before anything is read, so a bad path
/// fails at once; a plan that fails leaves no report behind.
pub fn dry_run(opts: &LoadOptions, on: EventSink<'_>) -> Result<PlanSummary, LoadError> {
    let made_at = time_text(chrono::Utc::now());
    let out = match &opts.report {
        Some(path) => {
            report::check_plan_report_path(path).map_err(|message| LoadError::BadReportPath { message })?;
            let file = private_file(path).map_err(|e| LoadError::BadReportPath {
                message: format!("cannot write {}: {e}", path.display()),
            })?;
            Some((path.clone(), file))
        }
        None => None,
    };
    let settings = JobSettings::new(opts);
    let prepared = match prepare(opts, &settings, out.is_some(), on, |_| Ok(()), false) {
        Ok(p) => p,
        Err(e) => {
            if let Some((path, file)) = out {
                drop(file);
                let _ = std::fs::remove_file(path);
            }
            return Err(e);
        }
    };
    if let Some((path, mut file)) = out {
        let r = report::PlanReport {
            report: "plan",
            org_number: opts.org_number.clone(),
            environment: opts.environment.clone(),
            kfr_base_url: opts.kfr_base_url.clone(),
            kfr_version: env!("CARGO_PKG_VERSION").to_string(),
            input: opts.file.display().to_string(),
            content_hash: prepared.read.content_hash.clone(),
            format: prepared.summary.format_text.clone(),
            made_at,
            counts: prepared.summary.counts.clone(),
            rejected_by_rule: prepared.by_rule.clone(),
            rejects_file: prepared.rejects_file.clone(),
            plan: prepared.summary.plan.clone(),
            notify_bits_above_per_day: plan::NOTIFY_BITS_ABOVE_PER_DAY,
        };
        let bytes = if report::is_markdown(&path) {
            r.markdown().into_bytes()
        } else {
            serde_json::to_vec_pretty(&r).context("encoding the plan report")?
        };
        file.write_all(&bytes)
            .and_then(|()| file.flush())
            .with_context(|| format!("writing the plan report {}", path.display()))?;
        on(LoadEvent::PlanReportWritten { path });
    }
    Ok(prepared.summary)
}

/// `kfr load`: plans (or resumes) the job, uploads and confirms it batch by batch, then sends the
/// operations held while it ran.
pub async fn run(
    opts: &LoadOptions,
    store: &Store,
    client: &KfrClient,
    outer: EventSink<'_>,
) -> Result<LoadOutcome, LoadError> {
    // Entries KFR already held with a later start date are collected for the report as the
    // executor meets them (issue 9 item 9).
    let later_starts: std::sync::Mutex<Vec<report::KeptDate>> = Default::default();
    let collect = |e: LoadEvent| {
        if let LoadEvent::KfrKeepsItsDate { customer, file_start } = &e {
            later_starts
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(report::KeptDate {
                    customer: customer.clone(),
                    file_start: *file_start,
                });
        }
        outer(e)
    };
    let on: EventSink<'_> = &collect;
    let started = Instant::now();
    let started_at = time_text(chrono::Utc::now());
    if let Some(r) = &opts.report {
        report::check_report_path(r).map_err(|message| LoadError::BadReportPath { message })?;
    }
    // One writer per store (issue 9), whatever the path's spelling: held until this function
    // returns, released by the OS if the process dies.
    let me = format!("pid {}, since {}", std::process::id(), time_text(chrono::Utc::now()));
    if let Some(holder) = store.take_writer(me).await? {
        let job = store.unconfirmed_job().await?;
        return Err(LoadError::StoreBusy {
            state: opts.state.clone(),
            job: job.as_ref().map(|j| j.id),
            input: job.map(|j| j.input_path),
            holder,
        });
    }
    let result = run_as_writer(opts, store, client, on, started, started_at, &later_starts).await;
    release_writer(store).await;
    result
}

/// The job a `--resume` picks up (the unconfirmed one, else the last confirmed one for its held
/// operations); without `--resume`, none, and an unconfirmed job is a refusal.
async fn job_to_resume(opts: &LoadOptions, store: &Store) -> Result<Option<crate::store::JobRecord>, LoadError> {
    if opts.resume {
        match store.unconfirmed_job().await? {
            Some(job) => Ok(Some(job)),
            None => match store.latest_job().await? {
                // An operator ended it (`kfr load abandon`): never picked up again.
                Some(job) if job.status == crate::store::JobStatus::Abandoned => Err(LoadError::JobAbandoned {
                    job: job.id,
                    input: job.input_path,
                }),
                Some(job) => Ok(Some(job)), // confirmed: only held operations may remain
                None => Err(LoadError::NothingToResume {
                    state: opts.state.clone(),
                }),
            },
        }
    } else {
        if let Some(job) = store.unconfirmed_job().await? {
            return Err(LoadError::JobUnconfirmed {
                job: job.id,
                input: job.input_path,
                state: opts.state.clone(),
            });
        }
        Ok(None)
    }
}

/// A resumed job is resumed for the institution and against the KFR it was planned for.
fn same_institution_and_kfr(
    job: &crate::store::JobRecord,
    job_settings: &JobSettings,
    opts: &LoadOptions,
) -> Result<(), LoadError> {
    if job_settings.org_number != opts.org_number {
        return Err(LoadError::OtherOrganisation {
            job: job.id,
            job_org: job_settings.org_number.clone(),
            org: opts.org_number.clone(),
        });
    }
    // A job belongs to one KFR: resuming it against another would skip the batches
    // confirmed in the first and call the load complete (issue 9). Jobs planned before kfr
    // recorded the KFR (empty fields) cannot be checked.
    let other_kfr = !job_settings.kfr_base_url.is_empty()
        && crate::store::canonical_url(&job_settings.kfr_base_url) != crate::store::canonical_url(&opts.kfr_base_url);
    let other_env = !job_settings.environment.is_empty() && job_settings.environment != opts.environment;
    if other_kfr || other_env {
        return Err(LoadError::OtherKfr {
            job: job.id,
            job_env: job_settings.environment.clone(),
            job_url: job_settings.kfr_base_url.clone(),
            env: opts.environment.clone(),
            url: opts.kfr_base_url.clone(),
        });
    }
    Ok(())
}

/// The job in the store: the resumed one, whose stored batches must be the plan's, or a new one
/// with the plan's batches.
async fn record_job(
    store: &Store,
    opts: &LoadOptions,
    resuming: Option<&crate::store::JobRecord>,
    summary: &PlanSummary,
    read: &ReadOutcome,
    job_settings: &JobSettings,
    on: EventSink<'_>,
) -> Result<i64, LoadError> {
    match resuming {
        Some(job) => {
            let stored = store.batches(job.id).await?;
            let same = stored.len() == summary.plan.batches.len()
                && stored.iter().zip(&summary.plan.batches).all(|(s, p)| {
                    s.first_entry == p.first as u64 && s.entry_count == p.count as u64 && s.bytes == p.bytes as u64
                });
            if !same {
                return Err(LoadError::PlanMismatch { job: job.id });
            }
            on(LoadEvent::JobResumed {
                job: job.id,
                batches: stored.len(),
                confirmed: stored
                    .iter()
                    .filter(|b| b.status == crate::store::BatchStatus::Confirmed)
                    .count(),
            });
            Ok(job.id)
        }
        None => {
            let batches: Vec<NewBatch> = summary
                .plan
                .batches
                .iter()
                .map(|b| NewBatch {
                    first_entry: b.first as u64,
                    entry_count: b.count as u64,
                    bytes: b.bytes as u64,
                    correlation_id: uuid::Uuid::new_v4(),
                })
                .collect();
            let new = NewJob {
                input_path: opts.file.display().to_string(),
                content_hash: read.content_hash.clone(),
                settings: serde_json::to_string(&job_settings).context("storing the job's settings")?,
                entries: read.entries.len() as u64,
                batches,
            };
            let id = store.create_job(new, chrono::Utc::now()).await?;
            on(LoadEvent::JobCreated {
                job: id,
                state: opts.state.clone(),
            });
            Ok(id)
        }
    }
}

/// [`run`] once this process is the store's one load writer.
async fn run_as_writer(
    opts: &LoadOptions,
    store: &Store,
    client: &KfrClient,
    on: EventSink<'_>,
    started: Instant,
    started_at: String,
    later_starts: &std::sync::Mutex<Vec<report::KeptDate>>,
) -> Result<LoadOutcome, LoadError> {
    // A resumed job keeps the settings it was planned with (same "today", same boundary and
    // limit), so it plans the very same batches.
    let resuming = job_to_resume(opts, store).await?;
    let job_settings = match &resuming {
        Some(job) => serde_json::from_str::<JobSettings>(&job.settings)
            .with_context(|| format!("reading the settings of load job {}", job.id))?,
        None => JobSettings::new(opts),
    };
    if let Some(job) = &resuming {
        same_institution_and_kfr(job, &job_settings, opts)?;
    }
    let check = |read: &ReadOutcome| -> Result<(), LoadError> {
        let Some(job) = &resuming else { return Ok(()) };
        if job.content_hash == read.content_hash {
            return Ok(());
        }
        if job.status == crate::store::JobStatus::Confirmed {
            return Err(LoadError::JobComplete {
                file: opts.file.clone(),
                job: job.id,
                input: job.input_path.clone(),
            });
        }
        Err(LoadError::InputChanged {
            file: opts.file.clone(),
            job: job.id,
            then: job.content_hash[..12].to_string(),
            now: read.content_hash[..12].to_string(),
        })
    };
    let Prepared {
        read,
        by_rule: _,
        rejects,
        rejects_file,
        summary,
        layout,
    } = prepare(opts, &job_settings, true, on, check, resuming.is_some())?;

    let job = record_job(store, opts, resuming.as_ref(), &summary, &read, &job_settings, on).await?;
    abort_point("planned", None);

    let exec_opts = ExecOptions {
        ingest_rate: job_settings.ingest_rate,
        confirm_timeout: opts.confirm_timeout,
        sample: opts.sample,
        max_per_day: job_settings.max_per_day,
        outage_wait: opts.outage_wait,
        retry_after_cap: opts.retry_after_cap,
        resume_command: opts.resume_command.clone(),
        stop: opts.stop.clone(),
    };
    let outcome = exec::execute(store, client, job, &read.entries, &layout, &exec_opts, on).await;
    on(LoadEvent::Finished);
    // A failed run still writes its report: it says which batches were accepted before the stop.
    let (end, failure) = match outcome {
        Ok(end) => (Some(end), None),
        Err(e) => match e.downcast_ref::<exec::Interrupted>() {
            Some(i) => (Some(ExecEnd::Interrupted(i.0)), None),
            None => (None, Some(e)),
        },
    };
    let mut sent = vec![];
    let mut failed = 0;
    if end == Some(ExecEnd::Complete) && store.confirm_job_if_complete(job, chrono::Utc::now()).await? {
        // The barrier is down: the held operations go, per customer in issue order.
        abort_point("deletes", None);
        let register = store.job(job).await?.and_then(|j| j.register).unwrap_or_default();
        (sent, failed) =
            send_held_operations(store, client, &register, (opts.request_budget, opts.in_doubt), on).await?;
    }
    // An operator may have abandoned the job under this load (then its writes failed, or the job
    // would not be confirmed): it must not end as if complete (issue 20, N4).
    let abandoned = store
        .job(job)
        .await?
        .is_some_and(|j| j.status == crate::store::JobStatus::Abandoned);
    let kept_dates = std::mem::take(&mut *later_starts.lock().unwrap_or_else(|p| p.into_inner()));
    let (report, report_files) = write_report(
        store,
        opts,
        &read,
        rejects,
        rejects_file,
        job,
        resuming.is_some(),
        &started_at,
        started,
        sent,
        kept_dates,
        on,
    )
    .await?;
    if abandoned {
        return Err(LoadError::AbandonedUnderIt {
            job,
            confirmed: report
                .batches
                .iter()
                .filter(|b| b.status == crate::store::BatchStatus::Confirmed)
                .count(),
            batches: report.batches.len(),
        });
    }
    if let Some(e) = failure {
        return Err(e.into());
    }
    Ok(LoadOutcome {
        plan: summary,
        report,
        paused_for_today: end == Some(ExecEnd::PausedForToday),
        interrupted: match end {
            Some(ExecEnd::Interrupted(sig)) => Some(sig),
            _ => None,
        },
        report_files,
        held_operations_failed: failed,
    })
}

/// Takes the store's one load writer for `who` (abandon, retry-held) acting on `job`; refused
/// while another process holds it.
pub(crate) async fn take_writer(store: &Store, who: &str, state: &str, job: i64) -> Result<(), LoadError> {
    let me = format!("pid {} ({who})", std::process::id());
    match store.take_writer(me).await? {
        None => Ok(()),
        Some(holder) => Err(LoadError::StoreBusy {
            state: state.to_string(),
            job: Some(job),
            input: None,
            holder,
        }),
    }
}

/// Lets go of the writer lock; a failure only means the OS lets go when the process ends.
pub(crate) async fn release_writer(store: &Store) {
    if let Err(e) = store.release_writer().await {
        tracing::warn!(error = %e, "could not let go of the store's writer lock; it goes when this process ends");
    }
}

/// Held operations go to their job's own KFR or nowhere: a job belongs to one register
/// (environment, KFR base URL, org.nr). Fields a job predating them lacks are not compared.
pub(crate) fn same_kfr(
    job: &crate::store::JobRecord,
    environment: &str,
    kfr_base_url: &str,
    org_number: &str,
) -> Result<(), LoadError> {
    let settings: serde_json::Value = serde_json::from_str(&job.settings).unwrap_or_default();
    let field = |k: &str| settings.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
    let (env, url, org) = (field("environment"), field("kfr_base_url"), field("org_number"));
    let other = (!url.is_empty() && crate::store::canonical_url(&url) != crate::store::canonical_url(kfr_base_url))
        || (!env.is_empty() && env != environment)
        || (!org.is_empty() && org != org_number);
    if other {
        return Err(LoadError::OtherKfr {
            job: job.id,
            job_env: env,
            job_url: url,
            env: environment.to_string(),
            url: kfr_base_url.to_string(),
        });
    }
    Ok(())
}

/// How long transient failures of a held operation are retried (by the sync agent, or the next
/// `--resume`) before it is dead-lettered for an operator, as the agent's own events are.
const HELD_GIVE_UP_AFTER: Duration = Duration::from_secs(24 * 3600);

/// Sends the operations held while the load ran (onboarding D-3 step 4, docs/specs/barrier.md):
/// whatever the outbox hands out of `register`'s held operations, one at a time, so each
/// customer's operations go in issue order. Each attempt's verdict is recorded by the one rule
/// every sender uses ([`decide`]): a refusal dead-letters it (visible in `kfr dlq list`, only its
/// customer parked), a transient failure schedules it again (the agent or a resume sends it), and
/// a refused token, a missing permission or a rate limit stops the sending at once without
/// touching the rest. Returns what was sent and how many were not.
async fn send_held_operations(
    store: &Store,
    client: &KfrClient,
    register: &str,
    (request_budget, in_doubt): (Duration, Duration),
    on: EventSink<'_>,
) -> Result<(Vec<SentOperation>, usize), LoadError> {
    // Identifiers were checked when the operation was issued; the policy of this run must not
    // strand one that was valid then.
    let all = IdPolicy {
        allow_synthetic: true,
        allow_h_numbers: true,
    };
    let rules = Rules {
        retry: client.config().retry.clone(),
        give_up_after: HELD_GIVE_UP_AFTER,
        in_doubt,
    };
    // The claim outlasts the request: nobody else sends the customer meanwhile, and a load that
    // dies with a request out leaves a claim the agent takes back only once it ran out.
    let claimer = Claimer {
        name: format!("load:{}:{}", std::process::id(), uuid::Uuid::new_v4()),
        epoch: None,
        ttl: chrono::Duration::from_std(request_budget * 2).unwrap_or(chrono::Duration::minutes(5)),
    };
    let sources: Vec<String> = OWN_SOURCES.iter().map(|s| s.to_string()).collect();
    let mut sent = vec![];
    let mut failed = 0;
    loop {
        let Some(ev) = store
            .claim_next_of(
                register.to_string(),
                sources.clone(),
                claimer.clone(),
                chrono::Utc::now(),
            )
            .await?
        else {
            break;
        };
        let id =
            CustomerId::parse(&ev.customer_id, &all).context("a held operation's identifier in the state store")?;
        let who = format!("{} {}", id.kind().label(), id.log());
        let outcome = match ev.op {
            Operation::Remove => decide(
                &client.remove_once(&id, ev.correlation_id).await,
                &ev,
                &rules,
                chrono::Utc::now(),
            ),
            Operation::Add => decide(
                &client.add_once(&id, ev.correlation_id).await,
                &ev,
                &rules,
                chrono::Utc::now(),
            ),
        };
        let at = chrono::Utc::now();
        let finished = store
            .finish_claim(ev.seq, claimer.name.clone(), outcome.end.clone(), at)
            .await?;
        if let ClaimFinished::TakenOver { .. } = finished {
            // Its claim ran out and the agent took it: the agent records the answer.
            continue;
        }
        let text = match &outcome.end {
            ClaimEnd::Delivered { delivery, .. } => {
                let s = SentOperation {
                    customer: who,
                    operation: ev.op,
                    queued_at: time_text(ev.received_at),
                    sent_at: time_text(at),
                    outcome: serde_json::to_value(delivery)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default(),
                    correlation_id: ev.correlation_id,
                };
                on(LoadEvent::HeldOperationSent(s.clone()));
                sent.push(s);
                continue;
            }
            ClaimEnd::DeadLetter(r) => format!("{} (dead-lettered: `kfr dlq list`)", r.reason),
            ClaimEnd::RetryLater { error, not_before } => {
                format!("{error} (tried again after {not_before} by `kfr sync` or `kfr load --resume`)")
            }
            ClaimEnd::Release { error } => error.clone(),
        };
        failed += 1;
        on(LoadEvent::HeldOperationFailed {
            customer: who,
            operation: ev.op,
            error: text,
        });
        if matches!(outcome.effect, Effect::Systemic { .. } | Effect::RateLimited { .. }) {
            // Nothing else can succeed now either: stop without touching the rest (they stay
            // queued, in order, for the agent or the next `--resume`).
            let left = store.unfinished_of(register.to_string(), sources.clone()).await?.len();
            failed += left.saturating_sub(1);
            break;
        }
    }
    Ok((sent, failed))
}

#[allow(clippy::too_many_arguments)]
async fn write_report(
    store: &Store,
    opts: &LoadOptions,
    read: &ReadOutcome,
    rejects: Vec<Rejected>,
    rejects_file: Option<PathBuf>,
    job: i64,
    resumed: bool,
    started_at: &str,
    started: Instant,
    sent: Vec<SentOperation>,
    kfr_keeps_its_own_date: Vec<report::KeptDate>,
    on: EventSink<'_>,
) -> Result<(LoadReport, Option<(PathBuf, PathBuf)>), LoadError> {
    let record = store
        .job(job)
        .await?
        .ok_or_else(|| anyhow::anyhow!("load job {job} is gone from the state store"))?;
    let batches = store.batches(job).await?;
    let report = LoadReport {
        org_number: opts.org_number.clone(),
        environment: opts.environment.clone(),
        kfr_base_url: opts.kfr_base_url.clone(),
        kfr_version: env!("CARGO_PKG_VERSION").to_string(),
        input: opts.file.display().to_string(),
        content_hash: read.content_hash.clone(),
        format: read.format.clone(),
        job_id: job,
        job_status: record.status,
        resumed,
        started_at: started_at.to_string(),
        finished_at: time_text(chrono::Utc::now()),
        duration_secs: started.elapsed().as_secs_f64(),
        ingest_rate: opts.ingest_rate,
        counts: counts(read),
        batches_resent: batches.iter().map(|b| b.resends).sum(),
        batches,
        rejects,
        rejects_file,
        held_operations_sent: sent,
        kfr_keeps_its_own_date,
    };
    let files = match &opts.report {
        Some(path) => {
            let md = report.write(path)?;
            let json = LoadReport::paths(path).0;
            on(LoadEvent::ReportWritten {
                json: json.clone(),
                markdown: md.clone(),
            });
            Some((json, md))
        }
        None => None,
    };
    Ok((report, files))
}
