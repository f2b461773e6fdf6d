//! `kfr checklist`: runs the integration-test cases against the configured KFR and writes the
//! reports (onboarding C-2, C-3).
//!
//! Refuses `prod` (exit 2): the cases write test relationships. Prints one progress line per
//! case on stderr, the report paths on stdout, and exits 0 only when every case passed and the
//! register was left as found.

use super::ChecklistArgs;
use crate::checklist::{self, CaseFile, ChecklistError, Report, RunConfig, Runner};
use crate::config::Settings;
use crate::environment::Environment;
use crate::error::{Reported, UsageError};
use anyhow::Context as _;
use std::time::Duration;

/// A [`ChecklistError`] as the CLI reports it: it carries its hint and exit code (set-up
/// problems exit 2, the register's state before the run exits 1), which `cli::report` renders.
fn fail(e: ChecklistError) -> anyhow::Error {
    anyhow::Error::new(e)
}

fn read_cases(args: &ChecklistArgs) -> anyhow::Result<CaseFile> {
    let parsed = match &args.cases {
        None => checklist::cases::parse(checklist::DEFAULT_CASES, checklist::DEFAULT_CASES_NAME),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| UsageError::new(format!("cannot read the case file {}: {e}", path.display())))?;
            checklist::cases::parse(&text, &path.display().to_string())
        }
    };
    parsed.map_err(|e| {
        UsageError::new(format!("the case file is not usable: {e}"))
            .with_hint("fix the line named (the format is in docs/checklist.md)")
            .into()
    })
}

fn id_overrides(args: &ChecklistArgs) -> anyhow::Result<Vec<(String, String)>> {
    args.ids
        .iter()
        .map(|spec| {
            spec.split_once('=')
                .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
                .ok_or_else(|| UsageError::new(format!("--id {}: expected NAME=ID", crate::ids::mask(spec))).into())
        })
        .collect()
}

pub async fn run(settings: Settings, args: &ChecklistArgs, p: super::printer::Printer) -> anyhow::Result<()> {
    if settings.env == Environment::Prod {
        return Err(fail(ChecklistError::Production));
    }
    let mut file = read_cases(args)?;
    file.select(&args.only).map_err(fail)?;
    let overrides = id_overrides(args)?;

    let org = settings.require_org_number()?.to_string();
    let cfg = RunConfig {
        env: settings.env,
        org_number: org.clone(),
        kfr_base_url: settings.kfr_base_url.clone(),
        other_fid: args.other_fid.clone(),
        other_scope: args.other_scope.clone(),
        ingest_timeout: Duration::from_secs(args.ingest_timeout_secs.max(1)),
        // Loopback answers in microseconds; Bits' preprod is shared, so poll it gently.
        poll_interval: Duration::from_millis(if settings.env == Environment::Local { 20 } else { 500 }),
    };
    let http = crate::http::client(&super::build::http_config(&settings))?;
    let tokens = super::build::token_client(&settings)?;
    let mut runner = Runner::new(http, tokens, cfg, &file, &overrides).map_err(fail)?;
    runner.preflight().await.map_err(fail)?;

    p.message(format_args!(
        "kfr checklist: {} case(s) from {} against {} ({}), institution {org}",
        file.cases.len(),
        file.source,
        settings.kfr_base_url,
        settings.env
    ));
    let started = chrono::Utc::now();
    let total = file.cases.len();
    let results = runner
        .run(&file.cases, |i, r| {
            let why = r
                .steps
                .iter()
                .find(|s| !s.passed)
                .map(|s| format!(" — step {}: {}", s.n, s.actual))
                .unwrap_or_default();
            p.message(format_args!(
                "[{i:>2}/{total}] {} {:<6} {} ({} ms){why}",
                r.verdict.as_str(),
                r.id,
                r.title,
                r.duration_ms
            ));
        })
        .await;
    let cleanup = runner.cleanup().await;
    for l in &cleanup.leftovers {
        p.warning(format_args!("left in the register: {l}"));
    }
    let report = Report::new(
        org,
        settings.env,
        settings.kfr_base_url.to_string(),
        file.source.clone(),
        started,
        results,
        cleanup,
    );
    let paths = checklist::write_reports(&args.report_dir, &report)
        .with_context(|| format!("writing the reports to {}", args.report_dir.display()))?;
    for path in &paths {
        // A closed stdout (`| head -1`) must not hide the summary or the verdict below.
        let _ = p.data(path.display());
    }
    p.message(format_args!(
        "kfr checklist: {} of {} passed{}; reports in {}",
        report.passed,
        report.cases.len(),
        if report.cleanup.leftovers.is_empty() {
            String::new()
        } else {
            format!(", {} leftover(s) in the register", report.cleanup.leftovers.len())
        },
        args.report_dir.display()
    ));
    if report.all_passed() {
        Ok(())
    } else {
        Err(Reported(format!(
            "{} of {} checklist cases failed",
            report.failed,
            report.cases.len()
        ))
        .into())
    }
}
