//! `kfr load`: the initial load of every active customer relationship (onboarding D-3), from the
//! bank's export to a register confirmed complete.
//!
//! Pipeline, one file per role:
//! - [`reader`] (in [`crate::input`], re-exported here): stream the file once; detect the
//!   format; validate, fold duplicates, drop closed rows; report every bad line (masked) with its
//!   rule.
//! - [`plan`]: exact-size batches within the limit, ingestion time, day schedule, "tell Bits?".
//! - [`exec`]: upload one batch at a time, wait, confirm by own-lookups, record every step in the
//!   state store so `--resume` after a crash never re-sends an accepted batch.
//! - [`report`]: the summary printed at the end and the `--report` JSON + Markdown.
//!
//! This module ties them together, owns the job's identity (input hash + the settings that shape
//! the batches, fixed in the store when the job is created so a resume plans the same batches),
//! and lifts the delete barrier: held deletes are sent only after the job is confirmed.

pub mod exec;
pub mod plan;
pub mod report;

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

use crate::config::Settings;
use crate::error::{Reported, UsageError};
use crate::ids::{CustomerId, IdPolicy};
use crate::kfr::{KfrClient, Layout, RemoveOutcome};
use crate::store::{Store, jobs::NewBatch, registry};
use anyhow::Context as _;
use chrono::NaiveDate;
use exec::{ExecEnd, ExecOptions, Progress, abort_point};
use plan::{Plan, human_duration};
use reader::{ReadOptions, ReadOutcome, Rejected};
use report::{Counts, LoadReport, SentDelete};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Rejected lines printed to stderr; the rest are counted (and all go to the rejects file).
pub const MAX_REJECTS_PRINTED: usize = 1_000;

/// Everything `kfr load` was asked to do.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub file: PathBuf,
    pub dry_run: bool,
    pub resume: bool,
    pub state: PathBuf,
    pub report: Option<PathBuf>,
    pub skip_invalid: bool,
    pub rejects: Option<PathBuf>,
    pub ingest_rate: u32,
    pub max_batch_bytes: usize,
    pub max_per_day: Option<u64>,
    pub confirm_timeout: Duration,
    pub sample: usize,
    pub json: bool,
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

/// Reads the input, printing each bad line and writing it to the rejects file when asked.
fn read_input(opts: &LoadOptions, ro: ReadOptions) -> anyhow::Result<(ReadOutcome, Vec<Rejected>, Option<PathBuf>)> {
    let file = std::fs::File::open(&opts.file).with_context(|| format!("opening the input {}", opts.file.display()))?;
    let size = file.metadata().ok().map(|m| m.len());
    let shown = opts.file.display().to_string();
    let mut kept: Vec<Rejected> = vec![];
    let rejects_path = opts
        .skip_invalid
        .then(|| opts.rejects.clone().unwrap_or_else(|| default_rejects_path(&opts.file)));
    let mut rejects_out: Option<std::io::BufWriter<std::fs::File>> = None;
    let mut write_err: Option<std::io::Error> = None;
    let mut printed = 0usize;
    let out = reader::read(std::io::BufReader::with_capacity(0, file), size, ro, |r, raw| {
        if printed < MAX_REJECTS_PRINTED {
            eprintln!("{shown}:{}: {}: {} [{}]", r.line, r.text, r.message, r.rule);
            printed += 1;
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
                let r2 = writeln!(w, "{};{};{}", r.line, r.rule, String::from_utf8_lossy(raw));
                if let Err(e) = r2 {
                    write_err = Some(e);
                }
            }
        }
        if kept.len() < report::MAX_REJECTS_IN_REPORT {
            kept.push(r);
        }
    })
    .with_context(|| format!("reading {shown}"))?;
    if let Some(mut w) = rejects_out {
        w.flush()?;
    }
    if let Some(e) = write_err {
        return Err(anyhow::Error::new(e).context(format!(
            "writing the rejects file {}",
            rejects_path.as_deref().unwrap_or(Path::new("")).display()
        )));
    }
    if out.rejected as usize > printed {
        eprintln!("{shown}: … and {} more bad lines", out.rejected as usize - printed);
    }
    let written = rejects_path.filter(|_| out.rejected > 0);
    Ok((out, kept, written))
}

/// Prints `error:` + `hint:` now and returns an error that exits 1 without printing again: for
/// refusals that are about the data, not about how kfr was invoked.
fn refuse(message: String, hint: &str) -> anyhow::Error {
    eprintln!("error: {message}\nhint: {hint}");
    Reported(message).into()
}

fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        o.mode(0o600);
    }
    o.open(path)
}

fn num(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The plan as text (stdout of `--dry-run`, and the head of a real run).
pub fn plan_text(file: &Path, read: &ReadOutcome, plan: &Plan) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(s, "Plan for {}", file.display());
    let mut extras = vec![];
    if read.bom {
        extras.push("UTF-8 BOM");
    }
    if read.crlf {
        extras.push("CRLF");
    }
    let extras = if extras.is_empty() {
        String::new()
    } else {
        format!(" [{}]", extras.join(", "))
    };
    let _ = writeln!(s, "  format: {}{extras}", read.format);
    let _ = writeln!(
        s,
        "  lines: {} ({} blank skipped)",
        num(read.data_lines),
        num(read.blank_lines)
    );
    let _ = writeln!(
        s,
        "  valid: {} unique active relationships",
        num(read.entries.len() as u64)
    );
    for (k, n) in &read.by_kind {
        let _ = writeln!(s, "    {}: {}", k.label(), num(*n));
    }
    let _ = writeln!(s, "  rejected: {}", num(read.rejected));
    let _ = writeln!(
        s,
        "  duplicates: {} (folded into the earliest start date)",
        num(read.duplicates)
    );
    let _ = writeln!(
        s,
        "  closed: {} (end date today or earlier: not loaded)",
        num(read.closed)
    );
    let _ = writeln!(
        s,
        "  batches: {} (limit {} bytes; each filled to at least 95 % except the last{})",
        plan.batches.len(),
        num(plan.max_batch_bytes as u64),
        if plan.max_per_day.is_some() { " of each day" } else { "" }
    );
    for b in &plan.batches {
        let _ = writeln!(
            s,
            "    batch {:>4}: {:>9} relationships {:>11} bytes ({:.1} %)",
            b.seq,
            num(b.count as u64),
            num(b.bytes as u64),
            100.0 * b.bytes as f64 / plan.max_batch_bytes as f64
        );
    }
    let _ = writeln!(
        s,
        "  expected ingestion at {}/s: {}",
        num(u64::from(plan.ingest_rate)),
        human_duration(plan.ingestion_secs)
    );
    if plan.notify_bits {
        let _ = writeln!(
            s,
            "  tell Bits in advance: YES — up to {} relationships in one day, more than {} (DSOP@bits.no, onboarding D-3)",
            num(plan.peak_per_day),
            num(plan::NOTIFY_BITS_ABOVE_PER_DAY)
        );
    } else {
        let _ = writeln!(
            s,
            "  tell Bits in advance: no — at most {} relationships in one day (limit {})",
            num(plan.peak_per_day),
            num(plan::NOTIFY_BITS_ABOVE_PER_DAY)
        );
    }
    if let Some(m) = plan.max_per_day {
        let _ = writeln!(s, "  schedule (at most {} a day):", num(m));
        for d in &plan.days {
            let _ = writeln!(
                s,
                "    day {:>3}: batches {}-{}, {} relationships",
                d.day,
                d.first_batch,
                d.last_batch,
                num(d.entries)
            );
        }
    }
    s
}

fn plan_json(file: &Path, read: &ReadOutcome, plan: &Plan) -> serde_json::Value {
    serde_json::json!({
        "event": "plan", "file": file.display().to_string(), "format": read.format,
        "format_text": read.format.to_string(), "bom": read.bom, "crlf": read.crlf,
        "counts": counts(read), "plan": plan,
    })
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

/// Runs `kfr load`.
pub async fn run(settings: &Settings, opts: LoadOptions) -> anyhow::Result<()> {
    let started = Instant::now();
    let started_at = crate::store::now_text();
    let policy = crate::cli::build::id_policy(settings);
    let org = settings.require_org_number()?.to_string();

    // A resumed job keeps the settings it was planned with (same "today", same boundary and
    // limit), so it plans the very same batches.
    let mut store = if opts.dry_run {
        None
    } else {
        Some(Store::open(&opts.state)?)
    };
    let resuming = match store.as_mut() {
        Some(s) if opts.resume => match s.unconfirmed_job()? {
            Some(job) => Some(job),
            None => match s.latest_job()? {
                Some(job) => Some(job), // confirmed: only held deletes may remain
                None => {
                    return Err(UsageError::new(format!(
                        "nothing to resume: the state store {} has no load job",
                        opts.state.display()
                    ))
                    .with_hint("start the load without --resume")
                    .into());
                }
            },
        },
        Some(s) => {
            if let Some(job) = s.unconfirmed_job()? {
                return Err(UsageError::new(format!(
                    "load job {} ({}) in {} is not confirmed complete yet",
                    job.id,
                    job.input_path,
                    opts.state.display()
                ))
                .with_hint("continue it with `kfr load FILE --resume` (same file); a second load cannot start before the first is confirmed")
                .into());
            }
            None
        }
        None => None,
    };
    let job_settings = match &resuming {
        Some(job) => serde_json::from_str::<JobSettings>(&job.settings)
            .with_context(|| format!("reading the settings of load job {}", job.id))?,
        None => JobSettings {
            today: chrono::Local::now().date_naive(),
            boundary: Layout::new().boundary().to_string(),
            max_batch_bytes: opts.max_batch_bytes,
            ingest_rate: opts.ingest_rate,
            max_per_day: opts.max_per_day,
            org_number: org.clone(),
        },
    };
    if job_settings.org_number != org {
        return Err(UsageError::new(format!(
            "load job was started for organisation {}, but org_number is {org}",
            job_settings.org_number
        ))
        .into());
    }
    let layout = Layout::with_boundary(job_settings.boundary.clone());
    let (read, rejects, rejects_file) = read_input(
        &opts,
        ReadOptions {
            policy,
            today: job_settings.today,
            hash: !opts.dry_run,
        },
    )?;
    if let Some(job) = &resuming {
        if job.content_hash != read.content_hash && job.status == crate::store::JobStatus::Confirmed {
            return Err(UsageError::new(format!(
                "nothing to resume for {}: the last load job ({}, from {}) is complete",
                opts.file.display(),
                job.id,
                job.input_path
            ))
            .with_hint("start a new load without --resume")
            .into());
        }
        if job.content_hash != read.content_hash {
            return Err(refuse(
                format!(
                    "{} has changed since load job {} was planned from it (sha256 {}… then, {}… now); refusing to resume",
                    opts.file.display(),
                    job.id,
                    &job.content_hash[..12],
                    &read.content_hash[..12],
                ),
                &format!(
                    "resume with the unchanged file; a new export can be loaded once job {} is confirmed",
                    job.id
                ),
            ));
        }
    }
    let plan = plan::plan(
        &read.entries,
        &layout,
        job_settings.max_batch_bytes,
        job_settings.ingest_rate,
        job_settings.max_per_day,
    );
    if opts.json {
        println!("{}", plan_json(&opts.file, &read, &plan));
    } else if resuming.is_none() {
        print!("{}", plan_text(&opts.file, &read, &plan));
    }
    if read.rejected > 0 {
        if let Some(p) = &rejects_file {
            eprintln!("{} rejected line(s) written to {}", read.rejected, p.display());
        } else {
            return Err(refuse(
                format!(
                    "{} has {} bad line(s), listed above with line number and rule; nothing was uploaded",
                    opts.file.display(),
                    read.rejected
                ),
                "fix the lines, or pass --skip-invalid to load the valid ones and write the bad ones to a rejects file",
            ));
        }
    }
    let Some(mut store) = store else {
        return Ok(()); // dry run
    };

    let job = match &resuming {
        Some(job) => {
            let stored = store.batches(job.id)?;
            let same = stored.len() == plan.batches.len()
                && stored.iter().zip(&plan.batches).all(|(s, p)| {
                    s.first_entry == p.first as u64 && s.entry_count == p.count as u64 && s.bytes == p.bytes as u64
                });
            anyhow::ensure!(
                same,
                "the batches planned now differ from those stored for load job {}: refusing to resume",
                job.id
            );
            eprintln!(
                "resuming load job {} ({} batches, {} confirmed)",
                job.id,
                stored.len(),
                stored
                    .iter()
                    .filter(|b| b.status == crate::store::BatchStatus::Confirmed)
                    .count()
            );
            job.id
        }
        None => {
            let batches: Vec<NewBatch> = plan
                .batches
                .iter()
                .map(|b| NewBatch {
                    first_entry: b.first as u64,
                    entry_count: b.count as u64,
                    bytes: b.bytes as u64,
                    correlation_id: uuid::Uuid::new_v4(),
                })
                .collect();
            let id = store.create_job(
                &opts.file.display().to_string(),
                &read.content_hash,
                &serde_json::to_string(&job_settings)?,
                read.entries.len() as u64,
                &batches,
            )?;
            eprintln!(
                "load job {id} created in {}; until it is confirmed, `kfr remove` holds deletes back (onboarding D-3)",
                opts.state.display(),
            );
            id
        }
    };
    announce(&mut store, &opts.state, &org, settings, job)?;
    abort_point("planned", None);

    crate::cli::install_pseudonyms(settings)?;
    let client = crate::cli::build::kfr_client(settings)?;
    let progress = Progress::new(read.entries.len() as u64, 0, opts.json);
    let exec_opts = ExecOptions {
        ingest_rate: job_settings.ingest_rate,
        confirm_timeout: opts.confirm_timeout,
        sample: opts.sample,
        json: opts.json,
        max_per_day: job_settings.max_per_day,
    };
    let outcome = exec::execute(&mut store, &client, job, &read.entries, &layout, &exec_opts, &progress).await;
    progress.finish();
    // A failed run still writes its report: it says which batches were accepted before the stop.
    let (end, failure) = match outcome {
        Ok(end) => (Some(end), None),
        Err(e) => (None, Some(e)),
    };
    let mut sent = vec![];
    let mut failed_deletes = 0;
    if end == Some(ExecEnd::Complete) && store.confirm_job_if_complete(job)? {
        // The barrier is down: later removes go straight to KFR.
        if let Err(e) = registry::withdraw(&opts.state) {
            tracing::warn!(error = %format!("{e:#}"), "could not withdraw the load from the list of running loads; the next `kfr remove` does");
        }
        abort_point("deletes", None);
        (sent, failed_deletes) = send_held_deletes(&mut store, &client, &progress).await?;
    }
    let report = write_report(
        &mut store,
        &opts,
        &read,
        rejects,
        rejects_file,
        job,
        &org,
        resuming.is_some(),
        &started_at,
        started,
        sent,
    )?;
    if let Some(e) = failure {
        return Err(e);
    }
    summary(&report, &opts, end == Some(ExecEnd::PausedForToday));
    if failed_deletes > 0 {
        anyhow::bail!("{failed_deletes} held delete(s) could not be sent; `kfr load FILE --resume` retries them");
    }
    Ok(())
}

/// Puts an unconfirmed job on the machine-wide list of running loads, so a `kfr remove` given
/// another state store still holds its delete (D-3). Failing to write the list is a warning: the
/// barrier in this store still works for removes given `--state`, which the warning says.
fn announce(store: &mut Store, state: &Path, org: &str, settings: &Settings, job: i64) -> anyhow::Result<()> {
    if store.unconfirmed_job()?.is_none_or(|j| j.id != job) {
        return Ok(());
    }
    if let Err(e) = registry::announce(state, org, settings.kfr_base_url.as_str(), job) {
        tracing::warn!(
            error = %format!("{e:#}"),
            "could not add load job {job} to the list of running loads; until it is confirmed, run `kfr remove` with --state {}",
            state.display()
        );
    }
    Ok(())
}

/// Sends the deletes held during the load (onboarding D-3 step 4). Returns what was sent and how
/// many failed (those stay queued for the next run).
async fn send_held_deletes(
    store: &mut Store,
    client: &KfrClient,
    progress: &Progress,
) -> anyhow::Result<(Vec<SentDelete>, usize)> {
    let all = IdPolicy {
        allow_synthetic: true,
        allow_h_numbers: true,
    };
    let mut sent = vec![];
    let mut failed = 0;
    for d in store.pending_deletes()? {
        let id = CustomerId::parse(&d.customer_id, &all).context("a held delete's identifier in the state store")?;
        let who = format!("{} {}", id.kind().label(), id.log());
        let outcome = match client.remove(&id, Some(d.correlation_id)).await {
            Ok(o) => match o.value {
                RemoveOutcome::Removed => "removed".to_string(),
                RemoveOutcome::NotFound => "not_found".to_string(),
            },
            Err(e) => {
                failed += 1;
                progress.event(
                    serde_json::json!({"event": "held_delete_failed", "customer": who, "error": e.to_string()}),
                    || format!("held delete of {who} failed: {e}"),
                );
                continue;
            }
        };
        let at = store.mark_delete_sent(d.id, &outcome)?;
        progress.event(
            serde_json::json!({"event": "held_delete_sent", "customer": who, "outcome": outcome, "correlation_id": d.correlation_id}),
            || format!("held delete sent: {who}: {outcome} (CorrelationID {})", d.correlation_id),
        );
        sent.push(SentDelete {
            customer: who,
            queued_at: d.queued_at,
            sent_at: at,
            outcome,
            correlation_id: d.correlation_id,
        });
    }
    Ok((sent, failed))
}

#[allow(clippy::too_many_arguments)]
fn write_report(
    store: &mut Store,
    opts: &LoadOptions,
    read: &ReadOutcome,
    rejects: Vec<Rejected>,
    rejects_file: Option<PathBuf>,
    job: i64,
    org: &str,
    resumed: bool,
    started_at: &str,
    started: Instant,
    sent: Vec<SentDelete>,
) -> anyhow::Result<LoadReport> {
    let record = store.job(job)?;
    let report = LoadReport {
        org_number: org.to_string(),
        input: opts.file.display().to_string(),
        content_hash: read.content_hash.clone(),
        format: read.format.clone(),
        job_id: job,
        job_status: record.status,
        resumed,
        started_at: started_at.to_string(),
        finished_at: crate::store::now_text(),
        duration_secs: started.elapsed().as_secs_f64(),
        ingest_rate: opts.ingest_rate,
        counts: counts(read),
        batches: store.batches(job)?,
        rejects,
        rejects_file,
        held_deletes_sent: sent,
    };
    if let Some(path) = &opts.report {
        let md = report.write(path)?;
        eprintln!("report written to {} and {}", path.display(), md.display());
    }
    Ok(report)
}

fn summary(r: &LoadReport, opts: &LoadOptions, paused: bool) {
    if opts.json {
        println!(
            "{}",
            serde_json::json!({"event": "done", "job_id": r.job_id, "status": r.job_status, "paused_for_today": paused,
                "counts": r.counts, "batches": r.batches.len(), "duration_secs": r.duration_secs,
                "held_deletes_sent": r.held_deletes_sent})
        );
        return;
    }
    let confirmed = r
        .batches
        .iter()
        .filter(|b| b.status == crate::store::BatchStatus::Confirmed)
        .count();
    if paused {
        println!(
            "load job {}: paused for today after {confirmed} of {} batches (max per day); continue tomorrow with `kfr load {} --resume`",
            r.job_id,
            r.batches.len(),
            opts.file.display()
        );
    } else {
        println!(
            "load job {} complete: {} relationships in {} batch{} confirmed stored in KFR in {}",
            r.job_id,
            num(r.counts.valid_unique),
            r.batches.len(),
            if r.batches.len() == 1 { "" } else { "es" },
            human_duration(r.duration_secs)
        );
    }
    for d in &r.held_deletes_sent {
        println!(
            "  held delete sent: {}: {} (CorrelationID {})",
            d.customer, d.outcome, d.correlation_id
        );
    }
}
