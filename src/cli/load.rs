//! `kfr load FILE`: flags and configuration → [`LoadOptions`], the KFR client, and the printer
//! that presents what the load reports ([`LoadEvent`]s while it runs, then its outcome or error).
//!
//! Flag values win over the configuration (`state`, `ingest_rate`, `max_batch_bytes`), which
//! wins over the built-in defaults; a value out of range is a usage error (exit 2). The load
//! itself prints nothing: the plan, the progress bar, the summary and the `--json` lines are all
//! written here.

use super::LoadArgs;
use super::printer::{Format, Printer};
use crate::config::{MIN_BATCH_BYTES, Settings};
use crate::error::UsageError;
use crate::load::event::IngestedBasis;
use crate::load::plan::{self, human_duration};
use crate::load::{LoadError, LoadEvent, LoadOptions, LoadOutcome, PlanSummary};
use crate::store::BatchStatus;
use std::fmt::Write as _;

pub async fn run(settings: Settings, args: &LoadArgs, printer: Printer) -> anyhow::Result<()> {
    if let Some(action) = &args.action {
        return run_action(settings, action, printer).await;
    }
    // A dry run writes no state, so it needs no store (nor a state home).
    let location = match super::build::location(&settings, args.state.as_deref()) {
        Ok(l) => Some(l),
        Err(_) if args.dry_run => None,
        Err(e) => return Err(e),
    };
    let state = location.as_ref().map(|l| l.describe()).unwrap_or_default();
    let file = input_file(&settings, args, &state).await?;
    let printer = printer.with_format(if args.json { Format::JsonLines } else { Format::Human });
    let every = std::time::Duration::from_secs(args.progress_every_secs);
    let opts = options(&settings, args, file, state, location.as_ref())?;
    let sink = |e: LoadEvent| present(&printer, &opts, every, e);
    if args.dry_run {
        return match crate::load::dry_run(&opts, &sink) {
            Ok(_) => Ok(()),
            Err(e) => Err(failure(e)),
        };
    }
    // An input that cannot be opened stops the load before anything is created: no state
    // store, no pseudonym key, no token (issue 20).
    // A FIFO is not opened here: its writer would pair with this open and be gone.
    let readable = std::fs::metadata(&opts.file).and_then(|m| {
        if m.is_file() {
            std::fs::File::open(&opts.file).map(drop)
        } else {
            Ok(())
        }
    });
    if let Err(source) = readable {
        return Err(failure(LoadError::OpenInput {
            path: opts.file.clone(),
            source,
        }));
    }
    super::install_pseudonyms(&settings)?;
    let client = super::build::kfr_client(&settings)?;
    let (store, _) = super::build::writable_store(&settings, args.state.as_deref())?;
    let mut opts = opts;
    opts.stop = Some(listen_for_stop());
    let sink = |e: LoadEvent| present(&printer, &opts, every, e);
    let outcome = match crate::load::run(&opts, &store, &client, &sink).await {
        Ok(o) => o,
        Err(e @ LoadError::StoppedWaitingForInput { signal, .. }) => {
            // Stopped before any job was made from the input: said like any error, and the
            // interrupted exit code (128 + the signal), as a stop after a step.
            printer.problem(super::report::render(&anyhow::Error::new(e)).trim_end());
            std::process::exit(128 + signal);
        }
        Err(e) => return Err(failure(e)),
    };
    summary(&printer, &opts, &outcome);
    if let Some(sig) = outcome.interrupted {
        let name = if sig == 15 { "SIGTERM" } else { "Ctrl-C (SIGINT)" };
        printer.problem(format_args!(
            "load stopped by {name} after its current step; every step so far is recorded{}. Resume with: {}",
            outcome
                .report_files
                .as_ref()
                .map(|(j, _)| format!(" and the report written to {}", j.display()))
                .unwrap_or_default(),
            opts.resume_command
        ));
        // 128 + the signal number, as a shell reports a process the signal ended (README).
        std::process::exit(128 + sig);
    }
    if outcome.held_operations_failed > 0 {
        return Err(failure(LoadError::HeldOperationsNotSent {
            failed: outcome.held_operations_failed,
        }));
    }
    Ok(())
}

/// `kfr load status`, `abandon` and `retry-held`: the actions on a load job.
async fn run_action(settings: Settings, action: &super::LoadAction, printer: Printer) -> anyhow::Result<()> {
    match action {
        super::LoadAction::Status { state, json } => status(&settings, state.as_deref(), *json, &printer).await,
        super::LoadAction::Abandon {
            job,
            state,
            send_held,
            drop_held,
            json,
            who,
        } => {
            let action = super::outbox::operator(who.actor.as_deref(), who.reason.as_deref());
            abandon(
                settings,
                *job,
                state.as_deref(),
                (*send_held, *drop_held),
                action,
                *json,
                printer,
            )
            .await
        }
        super::LoadAction::RetryHeld { job, state, json } => {
            retry_held(settings, *job, state.as_deref(), *json, printer).await
        }
    }
}

/// The file to load: the one given, else (`--resume` alone) the one the unconfirmed job names.
async fn input_file(settings: &Settings, args: &LoadArgs, state: &str) -> anyhow::Result<std::path::PathBuf> {
    // `--resume` without a file: the unconfirmed job knows its file (issue 9 item 11).
    match &args.file {
        Some(f) => Ok(f.clone()),
        None => {
            let job = match super::build::store(settings, args.state.as_deref(), super::build::StoreMode::Existing)? {
                Some((store, _)) => store.unconfirmed_job().await?,
                None => None,
            };
            match job {
                Some(job) => Ok(std::path::PathBuf::from(job.input_path)),
                None => Err(UsageError::new(format!(
                    "--resume without a file: the state store {state} has no unconfirmed load job"
                ))
                .into()),
            }
        }
    }
}

/// The load's options from its flags and the configuration, each out-of-range value a usage
/// error.
fn options(
    settings: &Settings,
    args: &LoadArgs,
    file: std::path::PathBuf,
    state: String,
    location: Option<&crate::store::Location>,
) -> anyhow::Result<LoadOptions> {
    let max_batch_bytes = args.max_batch_bytes.unwrap_or(settings.max_batch_bytes);
    if !(MIN_BATCH_BYTES..=crate::kfr::batch::DEFAULT_MAX_BYTES).contains(&max_batch_bytes) {
        return Err(UsageError::new(format!(
            "--max-batch-bytes {max_batch_bytes} is outside {MIN_BATCH_BYTES}..={} (KFR: 10 MB a file)",
            crate::kfr::batch::DEFAULT_MAX_BYTES
        ))
        .into());
    }
    let ingest_rate = args.ingest_rate.unwrap_or(settings.ingest_rate);
    if ingest_rate == 0 {
        return Err(UsageError::new("--ingest-rate must be at least 1 relationship per second").into());
    }
    if args.max_per_day == Some(0) {
        return Err(UsageError::new("--max-per-day must be at least 1").into());
    }
    if args.dry_run && args.resume {
        return Err(UsageError::new("--dry-run and --resume cannot be combined").into());
    }
    Ok(LoadOptions {
        file: file.clone(),
        resume: args.resume,
        state,
        report: args.report.clone(),
        skip_invalid: args.skip_invalid,
        rejects: args.rejects.clone(),
        ingest_rate,
        max_batch_bytes,
        max_per_day: args.max_per_day,
        confirm_timeout: std::time::Duration::from_secs(args.confirm_timeout_secs),
        sample: args.sample,
        org_number: settings.require_org_number()?.to_string(),
        kfr_base_url: settings.kfr_base_url.to_string(),
        environment: settings.env.as_str().to_string(),
        allow_empty: args.allow_empty,
        outage_wait: std::time::Duration::from_secs(args.outage_wait_secs),
        settle: std::time::Duration::from_secs(args.settle_secs),
        retry_after_cap: settings.retry.retry_after_cap,
        // Run as printed, it must reach the same configuration: a file given with --config or
        // KFR_CONFIG is not found again by itself in another shell.
        // A PostgreSQL store is the configuration's (`store.url`): `--state` would name a
        // SQLite file instead.
        resume_command: format!(
            "kfr {}load {} --resume{}",
            settings
                .config_file
                .as_ref()
                .map(|c| format!("--config {} ", shell_word(&c.display().to_string())))
                .unwrap_or_default(),
            shell_word(&file.display().to_string()),
            match location {
                Some(crate::store::Location::Sqlite(path)) =>
                    format!(" --state {}", shell_word(&path.display().to_string())),
                _ => String::new(),
            }
        ),
        stop: None,
        id_policy: super::build::id_policy(settings),
        request_budget: super::build::request_budget(settings),
        in_doubt: settings.sync.in_doubt,
    })
}

/// `kfr load status`: what a store holds, for an operator (no identifier in full: held
/// operations are counted, not listed).
async fn status(settings: &Settings, flag: Option<&std::path::Path>, json: bool, p: &Printer) -> anyhow::Result<()> {
    let location = super::build::location(settings, flag)?;
    let state = location.describe();
    // Opening an empty file would make a store of it: a command that only looks must not
    // (issue 20).
    if let crate::store::Location::Sqlite(path) = &location
        && std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() == 0)
    {
        anyhow::bail!("{state} is an empty file, not a state store; `kfr load status` leaves it as it is");
    }
    // Strictly read-only (issue 20): nothing of the store or its lock files is created, locked
    // or written, so it works for a user who may only read.
    let Some((store, _)) = super::build::store(settings, flag, super::build::StoreMode::ReadOnly)? else {
        anyhow::bail!("no state store at {state}");
    };
    // Whether a load holds the store, seen without taking its writer lock.
    let running = store.writer_holder().await?;
    let mut jobs = vec![];
    let mut registers = std::collections::BTreeSet::new();
    for job in store.jobs().await? {
        registers.insert(job.register.clone().unwrap_or_default());
        let settings: serde_json::Value = serde_json::from_str(&job.settings).unwrap_or_default();
        let batches = store.batches(job.id).await?;
        let mut by_state = serde_json::Map::new();
        for st in ["planned", "uploading", "accepted", "confirmed"] {
            let n = batches.iter().filter(|b| b.status.as_str() == st).count();
            by_state.insert(st.into(), n.into());
        }
        jobs.push(serde_json::json!({
            "id": job.id, "status": job.status, "input": job.input_path, "sha256": job.content_hash,
            "entries": job.entries, "created_at": job.created_at, "confirmed_at": job.confirmed_at,
            "environment": settings.get("environment"), "kfr_base_url": settings.get("kfr_base_url"),
            "org_number": settings.get("org_number"), "batches": by_state,
            "batches_resent": batches.iter().map(|b| b.resends).sum::<u32>(),
        }));
    }
    let mut waiting = vec![];
    for register in registers {
        let sources = crate::store::OWN_SOURCES.iter().map(|s| s.to_string()).collect();
        waiting.extend(store.unfinished_of(register, sources).await?);
    }
    let mut held = serde_json::Map::new();
    for op in ["add", "remove"] {
        let n = waiting.iter().filter(|w| w.op.as_str() == op).count();
        held.insert(op.into(), n.into());
    }
    let v = serde_json::json!({
        "state": state, "running": running, "jobs": jobs, "held_operations": held,
    });
    if json {
        p.data(serde_json::to_string_pretty(&v)?)?;
        return Ok(());
    }
    let mut out = format!("state store {state}");
    let _ = write!(
        out,
        "\n  {}",
        match &running {
            Some(h) => format!("a load is running on it now ({h})"),
            None => "no load running on it now".into(),
        }
    );
    for j in &jobs {
        let _ = write!(
            out,
            "\n  job {} {}: {} (sha256 {}…), {} relationships, {} KFR {} org {}\n    batches: {}",
            j["id"],
            j["status"].as_str().unwrap_or(""),
            j["input"].as_str().unwrap_or(""),
            &j["sha256"].as_str().unwrap_or("").chars().take(12).collect::<String>(),
            j["entries"],
            j["environment"].as_str().unwrap_or("?"),
            j["kfr_base_url"].as_str().unwrap_or("(not recorded)"),
            j["org_number"].as_str().unwrap_or("?"),
            j["batches"]
                .as_object()
                .map(|m| m.iter().map(|(k, v)| format!("{v} {k}")).collect::<Vec<_>>().join(", "))
                .unwrap_or_default()
        );
    }
    let _ = write!(
        out,
        "\n  held operations waiting: {} add(s), {} remove(s)",
        held["add"], held["remove"]
    );
    p.data(out)?;
    Ok(())
}

/// `kfr load abandon JOB`: ends a job that will not be completed (rule in `load::abandon` and
/// docs/load.md), then says what KFR holds of it and what became of the held operations.
async fn abandon(
    settings: Settings,
    job: i64,
    flag: Option<&std::path::Path>,
    (send_held, drop_held): (bool, bool),
    action: crate::store::OperatorAction,
    json: bool,
    printer: Printer,
) -> anyhow::Result<()> {
    use crate::load::abandon::{AbandonOptions, HeldChoice};
    let state = super::build::location(&settings, flag)?.describe();
    let held = match (send_held, drop_held) {
        (true, _) => HeldChoice::Send,
        (_, true) => HeldChoice::Drop,
        _ => HeldChoice::None,
    };
    let opts = AbandonOptions {
        state,
        action,
        request_budget: super::build::request_budget(&settings),
        in_doubt: settings.sync.in_doubt,
        job,
        held,
        org_number: settings.require_org_number()?.to_string(),
        kfr_base_url: settings.kfr_base_url.to_string(),
        environment: settings.env.as_str().to_string(),
    };
    // Only sending needs KFR (and a token); the other paths work offline.
    let client = if held == HeldChoice::Send {
        super::install_pseudonyms(&settings)?;
        Some(super::build::kfr_client(&settings)?)
    } else {
        None
    };
    let printer = printer.with_format(if json { Format::JsonLines } else { Format::Human });
    let sink = |e: LoadEvent| {
        if !json {
            held_operation_event(&printer, e);
        }
    };
    let store = super::build::store(&settings, flag, super::build::StoreMode::Existing)?.map(|(s, _)| s);
    let o = crate::load::abandon::abandon(&opts, store.as_ref(), client.as_ref(), &sink)
        .await
        .map_err(failure)?;
    if json {
        printer.data(serde_json::to_string_pretty(&serde_json::json!({
            "job": o.job, "status": "abandoned", "input": o.input, "abandoned_now": o.abandoned_now,
            "batches": {"confirmed": o.confirmed, "accepted": o.accepted, "uploading": o.uploading, "planned": o.planned},
            "ledger_rows": o.ledger_rows,
            "held_operations": {"sent": o.held_sent, "dropped": o.held_dropped, "failed": o.held_failed,
                "still_waiting": o.held_still_waiting},
        }))?)?;
    } else {
        let mut out = if o.abandoned_now {
            format!(
                "load job {} ({}) abandoned: it will never be confirmed, and it holds no remove back any more",
                o.job, o.input
            )
        } else if o.held_sent.is_empty() && o.held_failed == 0 && o.held_still_waiting == 0 {
            format!(
                "load job {} ({}) was abandoned before, and no operation it held waits any more: they were delivered already (by `kfr sync` or an earlier --send-held); nothing to send",
                o.job, o.input
            )
        } else {
            format!("load job {} ({}) was abandoned before", o.job, o.input)
        };
        let in_kfr = o.confirmed.relationships + o.accepted.relationships;
        let _ = write!(
            out,
            "\n  stays in KFR: {} relationship(s) in {} batch(es) ({} confirmed stored, {} accepted by KFR and registered as it ingests them); KFR has no undo, and the state store's ledger keeps them ({} row(s))",
            num(in_kfr),
            o.confirmed.batches + o.accepted.batches,
            num(o.confirmed.relationships),
            num(o.accepted.relationships),
            num(o.ledger_rows)
        );
        if o.uploading.batches > 0 {
            let _ = write!(
                out,
                "\n  fate unknown: {} relationship(s) in {} batch(es) sent without a recorded answer; KFR may hold them",
                num(o.uploading.relationships),
                o.uploading.batches
            );
        }
        let _ = write!(
            out,
            "\n  never sent: {} relationship(s) in {} batch(es)",
            num(o.planned.relationships),
            o.planned.batches
        );
        for s in &o.held_sent {
            let _ = write!(
                out,
                "\n  held operation sent: {} {}: {} (CorrelationID {})",
                s.operation.as_str(),
                s.customer,
                s.outcome,
                s.correlation_id
            );
        }
        for d in &o.held_dropped {
            let _ = write!(
                out,
                "\n  held operation dropped, not sent: {} {} (queued {}, CorrelationID {})",
                d.operation.as_str(),
                d.customer,
                d.queued_at,
                d.correlation_id
            );
        }
        if !o.held_dropped.is_empty() {
            let _ = write!(
                out,
                "\n  the {} dropped operation(s) did not reach KFR: issue them again (`kfr remove`, `kfr add`) if they still apply",
                o.held_dropped.len()
            );
        }
        printer.data(out)?;
    }
    if o.held_still_waiting > 0 {
        return Err(failure(LoadError::AbandonedHeldLeft {
            job: o.job,
            left: o.held_still_waiting,
        }));
    }
    Ok(())
}

/// `kfr load retry-held JOB`: sends the operations still held behind a job that is no longer
/// running (rule in `load::retry`), then says what was sent and what still waits.
async fn retry_held(
    settings: Settings,
    job: i64,
    flag: Option<&std::path::Path>,
    json: bool,
    printer: Printer,
) -> anyhow::Result<()> {
    use crate::load::retry::RetryOptions;
    let opts = RetryOptions {
        state: super::build::location(&settings, flag)?.describe(),
        job,
        request_budget: super::build::request_budget(&settings),
        in_doubt: settings.sync.in_doubt,
        org_number: settings.require_org_number()?.to_string(),
        kfr_base_url: settings.kfr_base_url.to_string(),
        environment: settings.env.as_str().to_string(),
    };
    let store = super::build::store(&settings, flag, super::build::StoreMode::Existing)?.map(|(s, _)| s);
    if store.is_none() {
        return Err(failure(LoadError::NoStore { state: opts.state }));
    }
    super::install_pseudonyms(&settings)?;
    let client = super::build::kfr_client(&settings)?;
    let printer = printer.with_format(if json { Format::JsonLines } else { Format::Human });
    let sink = |e: LoadEvent| {
        if !json {
            held_operation_event(&printer, e);
        }
    };
    let o = crate::load::retry::retry_held(&opts, store.as_ref(), &client, &sink)
        .await
        .map_err(failure)?;
    if json {
        printer.data(serde_json::to_string_pretty(&o)?)?;
    } else {
        printer.data(format_args!(
            "load job {}: {} held operation(s) sent, {} still waiting",
            o.job,
            o.sent.len(),
            o.still_waiting
        ))?;
    }
    if o.still_waiting > 0 {
        return Err(failure(LoadError::HeldOperationsNotSent {
            failed: o.still_waiting,
        }));
    }
    Ok(())
}

/// Listens for Ctrl-C and SIGTERM while the load runs: the first asks the load to stop after its
/// current step (it then writes its report and exits 130 or 143); a second Ctrl-C ends the
/// process at once (every step is committed before it is acted on, so `--resume` still works).
fn listen_for_stop() -> crate::load::exec::StopFlag {
    use std::sync::atomic::Ordering;
    let flag: crate::load::exec::StopFlag = Default::default();
    let set = flag.clone();
    tokio::spawn(async move {
        #[cfg(unix)]
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(t) => t,
            Err(_) => return,
        };
        loop {
            #[cfg(unix)]
            let sig = tokio::select! {
                r = tokio::signal::ctrl_c() => { if r.is_err() { return } 2 }
                _ = term.recv() => 15,
            };
            #[cfg(not(unix))]
            let sig = {
                if tokio::signal::ctrl_c().await.is_err() {
                    return;
                }
                2
            };
            if set.swap(sig, Ordering::SeqCst) != 0 {
                std::process::exit(128 + sig);
            }
        }
    });
    flag
}

/// Turns a load error into what `main` renders: `LoadError` carries its own hint and exit code
/// (`cli::report` finds them), and an underlying failure keeps its chain as it is.
fn failure(e: LoadError) -> anyhow::Error {
    match e {
        LoadError::Other(inner) => inner,
        e => anyhow::Error::new(e),
    }
}

/// Presents one event: a JSON line in `--json` mode for the events that have one, otherwise a
/// message on stderr (or the bar), and the plan on stdout.
pub(super) fn present(p: &Printer, opts: &LoadOptions, every: std::time::Duration, e: LoadEvent) {
    let file = opts.file.display();
    if p.format() == Format::JsonLines && e.is_json() {
        let _ = p.json(&e);
        if let LoadEvent::BatchConfirmed { ingested, .. } = e {
            p.set_progress(ingested);
        }
        return;
    }
    match e {
        LoadEvent::LineRejected { rejected: r, skipped } => {
            let line = format!("{file}:{}: {}: {} [{}]", r.line, r.text, r.message, r.rule);
            // Without --skip-invalid these lines are why the load is refused: part of the error.
            if skipped { p.message(line) } else { p.problem(line) }
        }
        LoadEvent::MoreRejected { count, by_rule } => {
            let rules: Vec<String> = by_rule.iter().map(|(r, n)| format!("{r} {n}")).collect();
            let full = if opts.skip_invalid {
                "every one is in the rejects file"
            } else {
                "`kfr validate --file` lists every one"
            };
            let line = format!(
                "{file}: … and {count} more bad lines (the first {} of each rule are shown); by rule: {}; {full}",
                crate::load::EXAMPLES_PER_RULE,
                rules.join(", ")
            );
            if opts.skip_invalid {
                p.message(line)
            } else {
                p.problem(line)
            }
        }
        LoadEvent::RejectsWritten { count, path } => {
            p.message(format_args!("{count} rejected line(s) written to {}", path.display()))
        }
        LoadEvent::Plan { summary, resumed } => {
            if !resumed {
                let _ = p.data(plan_text(&summary).trim_end());
            }
        }
        LoadEvent::JobCreated { job, state } => p.message(format_args!(
            "load job {job} created in {state}; until it is confirmed, `kfr remove` holds deletes back (onboarding D-3)"
        )),
        LoadEvent::JobResumed {
            job,
            batches,
            confirmed,
        } => p.message(format_args!(
            "resuming load job {job} ({batches} batches, {confirmed} confirmed)"
        )),
        LoadEvent::Started { total, ingested } => {
            p.start_progress(
                total,
                ingested,
                "{spinner} {pos}/{len} ingested ({per_sec}, ETA {eta}) {msg}",
            );
            p.set_phase("uploading");
            p.progress_lines(every);
        }
        LoadEvent::Progress { .. } => {}
        e @ (LoadEvent::Ingesting { .. }
        | LoadEvent::KfrSlowerThanPlanned { .. }
        | LoadEvent::Paused { .. }
        | LoadEvent::CheckingUnknownUpload { .. }
        | LoadEvent::UnknownUploadFound { .. }
        | LoadEvent::UnknownUploadAbsent { .. }
        | LoadEvent::BatchAccepted { .. }
        | LoadEvent::WaitingForIngestion { .. }
        | LoadEvent::BatchConfirmed { .. }
        | LoadEvent::EvidenceTouched { .. }
        | LoadEvent::WaitingByTime { .. }
        | LoadEvent::KfrUnavailable { .. }
        | LoadEvent::UploadUnknown { .. }
        | LoadEvent::BatchResent { .. }) => batch_event(p, e),
        LoadEvent::Finished => p.finish_progress(),
        e @ (LoadEvent::HeldOperationSent(_) | LoadEvent::HeldOperationFailed { .. }) => held_operation_event(p, e),
        LoadEvent::KfrKeepsItsDate { customer, file_start } => p.warning(format_args!(
            "{customer} was already registered in KFR with a start date later than the file's {file_start}; KFR keeps its own date (listed in the report)"
        )),
        LoadEvent::PlanReportWritten { path } => {
            p.message(format_args!("plan report written to {}", path.display()))
        }
        LoadEvent::ReportWritten { json, markdown } => p.message(format_args!(
            "report written to {} and {}",
            json.display(),
            markdown.display()
        )),
        LoadEvent::Warning { message } => p.warning(message),
    }
}

/// The events of one batch on its way (sent, ingested by KFR, confirmed), and of KFR being
/// slow or away meanwhile: the phase line and a message each.
fn batch_event(p: &Printer, e: LoadEvent) {
    match e {
        LoadEvent::Ingesting {
            batch,
            batches,
            ingested,
            ingested_basis,
            slower,
        } => {
            p.set_progress(ingested);
            // The count says what it is (issue 9 item 12): proved by own lookups, or predicted.
            let figure = match ingested_basis {
                IngestedBasis::Measured => format!("≥ {} ingested (measured)", num(ingested)),
                IngestedBasis::Estimate => format!("≈ {} ingested (estimate)", num(ingested)),
            };
            p.set_phase(format!(
                "waiting for KFR to ingest batch {batch}/{batches}: {figure}{}",
                if slower { "; KFR slower than planned" } else { "" }
            ));
        }
        LoadEvent::KfrSlowerThanPlanned {
            batch,
            ingested,
            expected,
        } => p.warning(format_args!(
            "batch {batch}: KFR is slower than planned: {} relationships ingested by own lookup where {} were expected by now",
            num(ingested),
            num(expected)
        )),
        LoadEvent::Paused { batch, max_per_day } => p.message(format_args!(
            "daily limit of {} relationships reached before batch {batch}",
            max_per_day.unwrap_or(0)
        )),
        LoadEvent::CheckingUnknownUpload { batch, .. } => p.message(format_args!(
            "batch {batch} may or may not have been sent before the previous run stopped: checking its last entry"
        )),
        LoadEvent::UnknownUploadFound { batch } => p.message(format_args!(
            "batch {batch} was accepted before the stop: not sending it again"
        )),
        LoadEvent::UnknownUploadAbsent { batch } => {
            p.message(format_args!("batch {batch} is not in KFR: sending it (again)"))
        }
        LoadEvent::BatchAccepted {
            batch,
            entries,
            bytes,
            correlation_id,
        } => {
            p.set_phase(format!("waiting for KFR to ingest batch {batch}"));
            p.message(format_args!(
                "batch {batch} accepted: {entries} relationships, {bytes} bytes (CorrelationID {correlation_id})"
            ))
        }
        LoadEvent::WaitingForIngestion {
            batch,
            missing,
            ingested,
            expected,
        } => {
            p.set_phase(format!(
                "confirming batch {batch}: KFR slower than planned, ≥ {} ingested (measured)",
                num(ingested)
            ));
            p.message(format_args!(
                "batch {batch}: KFR is slower than planned: {} relationships ingested by own lookup where all {} were expected by now; {missing} checked entr(y/ies) not visible yet, waiting",
                num(ingested),
                num(expected)
            ))
        }
        LoadEvent::BatchConfirmed {
            batch,
            entries,
            correlation_id,
            ingested,
            by,
        } => {
            p.set_progress(ingested);
            p.set_phase(format!("uploading the batch after {batch}"));
            let how = match by.as_str() {
                "witness" => "by own lookup of an entry new in this batch",
                "witness+time" => "by own lookup of an entry new in this batch, plus a wait sized from KFR's measured rate for the entries after it",
                _ => "by time only: no entry checked was new in the batch, so a wait sized from KFR's measured rate was waited",
            };
            p.message(format_args!(
                "batch {batch} confirmed stored: {entries} relationships (CorrelationID {correlation_id}; {how})"
            ))
        }
        LoadEvent::EvidenceTouched { batch, customer } => p.warning(format_args!(
            "batch {batch}: {customer} was added or removed through kfr while the batch was ingested, so seeing it stored proves nothing; confirming by an earlier entry new in the batch"
        )),
        LoadEvent::WaitingByTime {
            batch,
            entries,
            rate,
            measured,
            wait_secs,
        } => {
            let basis = if measured {
                "measured by own lookups in this job"
            } else {
                "nothing measured yet: a tenth of the configured rate"
            };
            p.message(format_args!(
                "batch {batch}: {entries} relationships no lookup can prove stored; waiting {wait_secs:.1} s for them (twice the time at {rate} a second, {basis})"
            ))
        }
        LoadEvent::KfrUnavailable {
            step,
            error,
            retry_in_secs,
            waited_secs,
        } => p.warning(format_args!(
            "{step}: {error}; trying again in {retry_in_secs:.1} s (waiting since {waited_secs} s)"
        )),
        LoadEvent::UploadUnknown { batch, error } => p.warning(format_args!(
            "batch {batch}: no usable answer after the body was sent ({error}); KFR may have taken it, so its entries are looked up before anything is sent again"
        )),
        LoadEvent::BatchResent { batch, resends } => p.message(format_args!(
            "batch {batch}: not found in KFR after its expected ingestion time; sending it again (re-send {resends}, same CorrelationID)"
        )),
        _ => {}
    }
}

fn num(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The plan as text (stdout of `--dry-run`, and the head of a real run).
pub fn plan_text(s: &PlanSummary) -> String {
    let (c, plan) = (&s.counts, &s.plan);
    let mut out = String::new();
    let _ = writeln!(out, "Plan for {}", s.file.display());
    let mut extras = vec![];
    if s.bom {
        extras.push("UTF-8 BOM");
    }
    if s.crlf {
        extras.push("CRLF");
    }
    let extras = if extras.is_empty() {
        String::new()
    } else {
        format!(" [{}]", extras.join(", "))
    };
    let _ = writeln!(out, "  format: {}{extras}", s.format_text);
    let _ = writeln!(
        out,
        "  lines: {} ({} blank skipped)",
        num(c.data_lines),
        num(s.blank_lines)
    );
    let _ = writeln!(out, "  valid: {} unique active relationships", num(c.valid_unique));
    for (k, n) in &c.by_kind {
        let _ = writeln!(out, "    {}: {}", k.label(), num(*n));
    }
    let _ = writeln!(out, "  rejected: {}", num(c.rejected));
    let _ = writeln!(
        out,
        "  duplicates: {} (folded into the earliest start date)",
        num(c.duplicates)
    );
    let _ = writeln!(
        out,
        "  closed: {} (end date today or earlier: not loaded)",
        num(c.closed)
    );
    let _ = writeln!(
        out,
        "  batches: {} (limit {} bytes; each filled to at least 95 % except the last{})",
        plan.batches.len(),
        num(plan.max_batch_bytes as u64),
        if plan.max_per_day.is_some() { " of each day" } else { "" }
    );
    for b in &plan.batches {
        let _ = writeln!(
            out,
            "    batch {:>4}: {:>9} relationships {:>11} bytes ({:.1} %)",
            b.seq,
            num(b.count as u64),
            num(b.bytes as u64),
            100.0 * b.bytes as f64 / plan.max_batch_bytes as f64
        );
    }
    let dates = &plan.start_dates;
    match (dates.earliest, dates.latest) {
        (Some(a), Some(b)) if a == b => {
            let _ = writeln!(out, "  start dates: all {a}");
        }
        (Some(a), Some(b)) => {
            let _ = writeln!(out, "  start dates: {a} to {b}");
        }
        _ => {}
    }
    if dates.undated > 0 {
        let _ = writeln!(
            out,
            "  without a start date: {} (KFR gives them the day it ingests them)",
            num(dates.undated)
        );
    }
    let _ = writeln!(
        out,
        "  expected ingestion at {}/s: {}",
        num(u64::from(plan.ingest_rate)),
        human_duration(plan.ingestion_secs)
    );
    if plan.notify_bits {
        let _ = writeln!(
            out,
            "  tell Bits in advance: YES — up to {} relationships in one day, more than {} (DSOP@bits.no, onboarding D-3)",
            num(plan.peak_per_day),
            num(plan::NOTIFY_BITS_ABOVE_PER_DAY)
        );
    } else {
        let _ = writeln!(
            out,
            "  tell Bits in advance: no — at most {} relationships in one day (limit {})",
            num(plan.peak_per_day),
            num(plan::NOTIFY_BITS_ABOVE_PER_DAY)
        );
    }
    if let Some(m) = plan.max_per_day {
        let _ = writeln!(out, "  schedule (at most {} a day):", num(m));
        for d in &plan.days {
            let _ = writeln!(
                out,
                "    day {:>3}: batches {}-{}, {} relationships",
                d.day,
                d.first_batch,
                d.last_batch,
                num(d.entries)
            );
        }
    }
    out
}

/// The end of a run: a `done` JSON line, or the summary on stdout.
pub(super) fn summary(p: &Printer, opts: &LoadOptions, o: &LoadOutcome) {
    let r = &o.report;
    if p.format() == Format::JsonLines {
        let _ = p.json(&serde_json::json!({
            "event": "done", "job_id": r.job_id, "status": r.job_status,
            "paused_for_today": o.paused_for_today, "interrupted_by_signal": o.interrupted, "counts": r.counts, "batches": r.batches.len(),
            "duration_secs": r.duration_secs, "held_operations_sent": r.held_operations_sent,
        }));
        return;
    }
    let confirmed = r.batches.iter().filter(|b| b.status == BatchStatus::Confirmed).count();
    let mut out = if o.interrupted.is_some() {
        format!(
            "load job {}: stopped after {confirmed} of {} batches confirmed",
            r.job_id,
            r.batches.len()
        )
    } else if o.paused_for_today {
        format!(
            "load job {}: paused for today after {confirmed} of {} batches (max per day); continue tomorrow with `{}`",
            r.job_id,
            r.batches.len(),
            opts.resume_command
        )
    } else {
        format!(
            "load job {} complete: {} relationships in {} batch{} confirmed stored in KFR in {}",
            r.job_id,
            num(r.counts.valid_unique),
            r.batches.len(),
            if r.batches.len() == 1 { "" } else { "es" },
            human_duration(r.duration_secs)
        )
    };
    for d in &r.held_operations_sent {
        let _ = write!(
            out,
            "\n  held operation sent: {} {}: {} (CorrelationID {})",
            d.operation.as_str(),
            d.customer,
            d.outcome,
            d.correlation_id
        );
    }
    let _ = p.data(out);
}

/// A path as one shell word: as it is when it is plain, else in single quotes, so a printed
/// command can be pasted as it stands.
fn shell_word(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+=:,@%".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// What `load abandon --send-held` and `load retry-held` say while they send held operations.
fn held_operation_event(printer: &Printer, e: LoadEvent) {
    match e {
        LoadEvent::HeldOperationSent(s) => printer.message(format_args!(
            "held {} sent: {}: {} (CorrelationID {})",
            s.operation.as_str(),
            s.customer,
            s.outcome,
            s.correlation_id
        )),
        LoadEvent::HeldOperationFailed {
            customer,
            operation,
            error,
        } => printer.problem(format_args!(
            "held {} of {customer} failed: {error}; it stays first in its customer's queue",
            operation.as_str()
        )),
        LoadEvent::KfrUnavailable { step, error, .. } => printer.warning(format_args!("{step}: {error}")),
        _ => {}
    }
}
