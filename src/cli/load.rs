//! `kfr load FILE`: flags → [`crate::load::LoadOptions`], then the load module does the work.
//!
//! Flag values win over the configuration (`state_file`, `ingest_rate`, `max_batch_bytes`), which
//! wins over the built-in defaults; a value out of range is a usage error (exit 2).

use super::LoadArgs;
use crate::config::{MIN_BATCH_BYTES, Settings};
use crate::error::UsageError;
use crate::load::LoadOptions;

pub async fn run(settings: Settings, args: &LoadArgs) -> anyhow::Result<()> {
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
    let opts = LoadOptions {
        file: args.file.clone(),
        dry_run: args.dry_run,
        resume: args.resume,
        state: args.state.clone().unwrap_or_else(|| settings.state_file.clone()),
        report: args.report.clone(),
        skip_invalid: args.skip_invalid,
        rejects: args.rejects.clone(),
        ingest_rate,
        max_batch_bytes,
        max_per_day: args.max_per_day,
        confirm_timeout: std::time::Duration::from_secs(args.confirm_timeout_secs),
        sample: args.sample,
        json: args.json,
    };
    crate::load::run(&settings, opts).await
}
