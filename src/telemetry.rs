//! Logging setup: `tracing` to stderr, text or JSON, filtered by `-v`/`-q` or `KFR_LOG`.
//!
//! Logs are for operators; data goes to stdout. Nothing secret or personal is ever passed to a
//! log macro: secrets are `secrecy` types and person identifiers are logged as pseudonyms.

use crate::env_vars;
use tracing_subscriber::{EnvFilter, fmt};

/// Log line format on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One readable line per event.
    Human,
    /// One JSON object per line, for a log shipper.
    Json,
}

/// Whether log lines are JSON objects (set once by [`init`]): a command that writes status
/// lines of its own on stderr (the sync agent) logs them instead, so a log shipper reading JSON
/// lines never meets plain text.
static JSON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether [`init`] chose JSON log lines.
pub fn json() -> bool {
    JSON.load(std::sync::atomic::Ordering::Relaxed)
}

/// Installs the global subscriber. `verbosity`: -1 quiet, 0 default (warn), 1 info, 2 debug, 3+ trace.
/// `format`: the `--log-format` flag; without it `KFR_LOG_FORMAT=json` chooses JSON.
pub fn init(verbosity: i8, format: Option<LogFormat>) {
    // rustls-platform-verifier logs every certificate it refuses at ERROR. The refusal is already
    // the failed request's error, cause included, and `kfr doctor`'s trust probes refuse on
    // purpose (http::egress); its lines show from -vv on.
    let default = match verbosity {
        i8::MIN..=-1 => "error,rustls_platform_verifier=off",
        0 => "warn,rustls_platform_verifier=off",
        1 => "info,rustls_platform_verifier=off",
        2 => "kfr=debug,info",
        _ => "kfr=trace,debug",
    };
    let filter = std::env::var(env_vars::KFR_LOG)
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new(default));
    let json = match format {
        Some(f) => f == LogFormat::Json,
        None => std::env::var(env_vars::KFR_LOG_FORMAT).is_ok_and(|v| v == "json"),
    };
    JSON.store(json, std::sync::atomic::Ordering::Relaxed);
    let ansi = std::env::var_os(env_vars::NO_COLOR).is_none() && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(true);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.with_ansi(ansi).try_init()
    };
}
