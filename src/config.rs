//! Configuration: `kfr.toml`, `KFR_*` environment variables and command-line flags, resolved once
//! into one [`Settings`] value that records where every value came from.
//!
//! Precedence, lowest to highest: built-in default (per environment) → file → environment → flag.
//! Unknown keys in the file are an error naming the key and the file: a typo such as `scopes`
//! would otherwise silently fall back to a default and fail much later against Maskinporten.
//!
//! Secrets (the certificate password) are never accepted as a flag, never printed, and live in
//! `secrecy` types from the moment they are read.

use crate::env_vars::{self, state_home};
pub use crate::environment::Environment;
use crate::error::Hinted;
use crate::ids::{CustomerId, IdKind, IdPolicy, mask};
pub use crate::maskinporten::{CredentialSource, X5cMode};
use secrecy::SecretString;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use url::Url;

/// Where a resolved value came from; shown by `kfr config show`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Default,
    File(PathBuf),
    Env(String),
    Flag(String),
}

impl Source {
    /// Precedence of the layer a value came from: a higher one wins.
    fn layer(&self) -> u8 {
        match self {
            Source::Default => 0,
            Source::File(_) => 1,
            Source::Env(_) => 2,
            Source::Flag(_) => 3,
        }
    }
}

/// The three spellings of the state store, which are one key.
const STORE_KEYS: [&str; 3] = ["state", "state_file", "store.url"];

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::File(p) => write!(f, "file {}", p.display()),
            Source::Env(v) => write!(f, "env {v}"),
            Source::Flag(v) => write!(f, "flag {v}"),
        }
    }
}

/// One configuration key: its name (in the file; `KFR_<NAME>` in the environment), its default
/// (`None` = unset unless given), whether it is secret, and a one-line description.
#[derive(Debug)]
pub struct KeyDef {
    pub name: &'static str,
    pub default: Option<&'static str>,
    pub doc: &'static str,
}

/// Every key the file and the environment accept. `docs/configuration.md` and
/// `docs/kfr.example.toml` are checked against this table by tests.
pub const KEYS: &[KeyDef] = &[
    KeyDef {
        name: "env",
        default: Some("test"),
        doc: "local | test | prod; presets issuer and KFR URL",
    },
    KeyDef {
        name: "org_number",
        default: None,
        doc: "the institution's 9-digit organisation number (KFR fid)",
    },
    KeyDef {
        name: "client_id",
        default: None,
        doc: "Maskinporten client id from Digdir's self-service",
    },
    KeyDef {
        name: "scope",
        default: Some("bits:kundeforhold.write"),
        doc: "scope requested in the grant",
    },
    KeyDef {
        name: "certificate",
        default: None,
        doc: "PKCS#12 file with the business certificate and key",
    },
    KeyDef {
        name: "certificate_password_file",
        default: None,
        doc: "file holding the PKCS#12 / PKCS#8 password",
    },
    KeyDef {
        name: "private_key",
        default: None,
        doc: "PEM private key (PKCS#8, may be encrypted) instead of PKCS#12",
    },
    KeyDef {
        name: "certificate_pem",
        default: None,
        doc: "PEM certificate (leaf first, then chain) with private_key",
    },
    KeyDef {
        name: "kid",
        default: None,
        doc: "key id registered with Digdir; when set, no x5c is sent",
    },
    KeyDef {
        name: "x5c",
        default: Some("leaf"),
        doc: "leaf | chain: certificates in the grant's x5c",
    },
    KeyDef {
        name: "consumer_org",
        default: None,
        doc: "org.nr acted for (delegation); sent as consumer_org",
    },
    KeyDef {
        name: "resource",
        default: None,
        doc: "audience-restricted token: resource claim; several audiences separated by commas or spaces, sent as a JSON array",
    },
    KeyDef {
        name: "maskinporten_issuer",
        default: None,
        doc: "override of the environment's issuer URL",
    },
    KeyDef {
        name: "kfr_base_url",
        default: None,
        doc: "override of the environment's KFR base URL",
    },
    KeyDef {
        name: "proxy",
        default: None,
        doc: "HTTP(S) proxy URL for all outgoing requests",
    },
    KeyDef {
        name: "extra_ca_bundle",
        default: None,
        doc: "PEM bundle of extra trusted CAs (TLS-inspecting proxies)",
    },
    KeyDef {
        name: "connect_timeout_secs",
        default: Some("10"),
        doc: "TCP/TLS connect timeout",
    },
    KeyDef {
        name: "request_timeout_secs",
        default: Some("30"),
        doc: "whole-request timeout",
    },
    KeyDef {
        name: "token_refresh_ahead_secs",
        default: Some("30"),
        doc: "refresh a token this long before it expires",
    },
    KeyDef {
        name: "pseudonym_key_file",
        default: None,
        doc: "key for log pseudonyms of person IDs; default: pseudonym.key in the state home",
    },
    KeyDef {
        name: "allow_synthetic_ids",
        default: None,
        doc: "accept Tenor (+80) persons and 2/3-prefixed orgs; default: not in prod",
    },
    KeyDef {
        name: "allow_h_numbers",
        default: Some("false"),
        doc: "accept H-/NAV (+40) and FH numbers (test runs only)",
    },
    KeyDef {
        name: "state",
        default: None,
        doc: "the installation's state store (load jobs, ledger, held operations); default: kfr-state.db in the state home",
    },
    KeyDef {
        name: "state_file",
        default: None,
        doc: "older spelling of `state`",
    },
    KeyDef {
        name: "ingest_rate",
        default: Some("250"),
        doc: "relationships per second KFR ingests from a batch",
    },
    KeyDef {
        name: "max_batch_bytes",
        default: Some("10000000"),
        doc: "largest batch body kfr load sends (KFR: 10 MB)",
    },
    KeyDef {
        name: "store.url",
        default: None,
        doc: "the state store: a path, sqlite:///path, or postgres://user@host:port/database (instead of `state`)",
    },
    KeyDef {
        name: "store.password_file",
        default: None,
        doc: "PostgreSQL store: a file holding the role's password (never in the URL)",
    },
    KeyDef {
        name: "store.ca_file",
        default: None,
        doc: "PostgreSQL store: CA certificates (PEM) the server's TLS certificate must chain to; its host name is checked too",
    },
    KeyDef {
        name: "retry.max_attempts",
        default: Some("4"),
        doc: "attempts of one KFR or Maskinporten call, the first included",
    },
    KeyDef {
        name: "retry.base_delay_ms",
        default: Some("250"),
        doc: "backoff before the first retry (full jitter, doubling)",
    },
    KeyDef {
        name: "retry.max_delay_secs",
        default: Some("8"),
        doc: "longest backoff between two attempts",
    },
    KeyDef {
        name: "retry.retry_after_cap_secs",
        default: Some("300"),
        doc: "longest Retry-After from a server that is honoured",
    },
    KeyDef {
        name: "sync.listen",
        default: Some("127.0.0.1:8090"),
        doc: "address of the agent's HTTP event intake",
    },
    KeyDef {
        name: "sync.ingest_key_file",
        default: None,
        doc: "file holding the bearer key the intake requires",
    },
    KeyDef {
        name: "sync.tls_cert",
        default: None,
        doc: "PEM certificate chain for the intake's TLS",
    },
    KeyDef {
        name: "sync.tls_key",
        default: None,
        doc: "PEM private key for the intake's TLS",
    },
    KeyDef {
        name: "sync.metrics_listen",
        default: None,
        doc: "address for /metrics, /livez and /readyz",
    },
    KeyDef {
        name: "sync.rate",
        default: Some("10"),
        doc: "single adds/removes per second sent to KFR",
    },
    KeyDef {
        name: "sync.max_in_flight",
        default: Some("8"),
        doc: "KFR requests in flight at once",
    },
    KeyDef {
        name: "sync.retention_days",
        default: Some("30"),
        doc: "days delivered events are kept in the outbox",
    },
    KeyDef {
        name: "sync.history_retention_days",
        default: Some("1827"),
        doc: "days the history of attempts and operator actions is kept (`kfr history`)",
    },
    KeyDef {
        name: "sync.max_events_per_customer",
        default: Some("100"),
        doc: "unfinished events one customer may have; more are refused at intake (a flood)",
    },
    KeyDef {
        name: "sync.allow_plain_http",
        default: Some("false"),
        doc: "let the intake take plain HTTP on an address other than loopback",
    },
    KeyDef {
        name: "sync.drain_secs",
        default: Some("30"),
        doc: "on SIGTERM, how long in-flight KFR calls may take to finish",
    },
    KeyDef {
        name: "sync.give_up_after_hours",
        default: Some("24"),
        doc: "hours of transient failures after which an event is dead-lettered",
    },
    KeyDef {
        name: "sync.register_checks_per_hour",
        default: Some("720"),
        doc: "customers of the ledger the agent looks up in KFR an hour to check the register (0: off)",
    },
    KeyDef {
        name: "sync.in_doubt_secs",
        default: Some("120"),
        doc: "seconds a request may still be carried out after kfr gave up on it: its customer waits that long",
    },
    KeyDef {
        name: "sync.backdated_by_batch",
        default: Some("true"),
        doc: "send adds dated before today by batch, so KFR keeps their start date",
    },
    KeyDef {
        name: "sync.sources[].kind",
        default: None,
        doc: "an event source: http, spool, stdin or pg_outbox",
    },
    KeyDef {
        name: "sync.sources[].dir",
        default: None,
        doc: "spool source: the directory files are moved into",
    },
    KeyDef {
        name: "sync.sources[].name",
        default: None,
        doc: "a name for the source in logs and metrics",
    },
    KeyDef {
        name: "sync.sources[].url",
        default: None,
        doc: "pg_outbox source: the core system's database, postgres://user@host:port/database",
    },
    KeyDef {
        name: "sync.sources[].table",
        default: None,
        doc: "pg_outbox source: the core system's outbox table (optionally schema.table)",
    },
    KeyDef {
        name: "sync.sources[].password_file",
        default: None,
        doc: "pg_outbox source: a file holding the role's password",
    },
    KeyDef {
        name: "sync.sources[].ca_file",
        default: None,
        doc: "pg_outbox source: CA certificates (PEM) the server's TLS certificate must chain to",
    },
];

/// The environment variable for a key: `KFR_` and the key in upper case, dots as underscores
/// (`retry.max_attempts` → `KFR_RETRY_MAX_ATTEMPTS`). Keys inside arrays of tables (`[]` in the
/// name) have none: a list of sources is written in the file.
pub fn env_var(key: &str) -> Option<String> {
    (!key.contains("[]")).then(|| format!("{}{}", env_vars::CONFIG_PREFIX, key.replace('.', "_").to_uppercase()))
}

/// Tables that may appear in the file, and the arrays of tables.
const SECTIONS: &[&str] = &["store", "retry", "sync"];
const TABLE_ARRAYS: &[&str] = &["sync.sources"];

/// Keys whose value is a path; relative paths are taken relative to the config file's folder.
const PATH_KEYS: &[&str] = &[
    "certificate",
    "certificate_password_file",
    "private_key",
    "certificate_pem",
    "extra_ca_bundle",
    "pseudonym_key_file",
    "state",
    "state_file",
    "sync.ingest_key_file",
    "sync.tls_cert",
    "sync.tls_key",
    "sync.sources[].dir",
    "store.password_file",
    "store.ca_file",
    "sync.sources[].password_file",
    "sync.sources[].ca_file",
];

/// Smallest accepted `max_batch_bytes`: below this the multipart overhead would dominate and the
/// planner could not fill files to 95 % (one entry is at most 23 bytes).
pub const MIN_BATCH_BYTES: usize = 1024;

/// Settings given as command-line flags, before or after the subcommand (clap `global`).
#[derive(Debug, Default, Clone, clap::Args)]
pub struct FlagOverrides {
    /// Environment: local, test or prod.
    #[arg(long = "env", value_name = "ENV", global = true)]
    pub env: Option<String>,
    /// The institution's organisation number.
    #[arg(long = "org-number", value_name = "ORGNR", global = true)]
    pub org_number: Option<String>,
    /// Maskinporten client id.
    #[arg(long = "client-id", value_name = "ID", global = true)]
    pub client_id: Option<String>,
    /// Scope to request.
    #[arg(long = "scope", value_name = "SCOPE", global = true)]
    pub scope: Option<String>,
    /// PKCS#12 certificate file (its password comes from KFR_CERTIFICATE_PASSWORD or a file).
    #[arg(long = "certificate", value_name = "P12", global = true)]
    pub certificate: Option<PathBuf>,
    /// Maskinporten issuer URL.
    #[arg(long = "maskinporten-issuer", value_name = "URL", global = true)]
    pub maskinporten_issuer: Option<String>,
    /// KFR base URL.
    #[arg(long = "kfr-base-url", value_name = "URL", global = true)]
    pub kfr_base_url: Option<String>,
}

impl FlagOverrides {
    fn pairs(&self) -> Vec<(&'static str, &'static str, String)> {
        let mut v = Vec::new();
        let mut push = |key, flag, val: Option<String>| {
            if let Some(val) = val {
                v.push((key, flag, val));
            }
        };
        push("env", "--env", self.env.clone());
        push("org_number", "--org-number", self.org_number.clone());
        push("client_id", "--client-id", self.client_id.clone());
        push("scope", "--scope", self.scope.clone());
        push(
            "certificate",
            "--certificate",
            self.certificate.as_ref().map(|p| p.display().to_string()),
        );
        push(
            "maskinporten_issuer",
            "--maskinporten-issuer",
            self.maskinporten_issuer.clone(),
        );
        push("kfr_base_url", "--kfr-base-url", self.kfr_base_url.clone());
        v
    }
}

/// A configuration problem (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("unknown key `{key}` in {path}")]
    UnknownKey {
        key: String,
        path: PathBuf,
        suggestion: Option<&'static str>,
    },
    #[error("`{key}` ({origin}) has an invalid value {value:?}: {reason}")]
    Invalid {
        key: &'static str,
        origin: Source,
        value: String,
        reason: String,
    },
    #[error("`{key}` is required for this command but is not set")]
    Missing { key: &'static str, why: &'static str },
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NoStateHome(NoStateHome),
    #[error("cannot read {what} {path}: {source}")]
    ReadSecret {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Hinted for ConfigError {
    fn exit(&self) -> crate::error::Exit {
        crate::error::Exit::Usage
    }

    fn hint(&self) -> Option<String> {
        match self {
            ConfigError::UnknownKey {
                suggestion: Some(s), ..
            } => Some(format!("did you mean `{s}`? See docs/configuration.md")),
            ConfigError::UnknownKey { .. } => Some("the accepted keys are listed in docs/configuration.md".into()),
            ConfigError::Missing { key, why } => Some(format!(
                "set `{key}` in kfr.toml, as {}{} or with a flag; {why}",
                env_vars::CONFIG_PREFIX,
                key.to_uppercase()
            )),
            ConfigError::NoStateHome(_) => Some(format!(
                "set `state` in kfr.toml (or {}) to the installation's state store, or set {} (or {}, or HOME); every kfr command of this installation must use the same store",
                env_vars::CONFIG_PREFIX.to_string() + "STATE",
                env_vars::KFR_STATE_HOME,
                env_vars::XDG_STATE_HOME
            )),
            ConfigError::Invalid { key, .. } if key.ends_with("url") || *key == "maskinporten_issuer" => {
                Some("plain http:// is only allowed with env = \"local\" (the bundled mock)".into())
            }
            _ => None,
        }
    }
}

/// No state store was configured and there is no state home to put the default in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "no state store: `state` is not set and there is no state home ({}, {} and HOME are all unset)",
    env_vars::KFR_STATE_HOME,
    env_vars::XDG_STATE_HOME
)]
pub struct NoStateHome;

/// The file name of the default state store in the state home.
pub const DEFAULT_STATE_FILE: &str = "kfr-state.db";

/// A resolved value and its origin.
#[derive(Debug, Clone)]
pub struct Sourced<T> {
    pub value: T,
    pub source: Source,
}

/// The effective settings of one invocation.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The configuration file that was read, if any.
    pub config_file: Option<PathBuf>,
    /// How [`Settings::config_file`] was found.
    pub config_origin: Option<ConfigOrigin>,
    /// A `./kfr.toml` that was not read because the installation's file was (the caller warns).
    pub shadowed_local_config: Option<PathBuf>,
    pub env: Environment,
    pub org_number: Option<String>,
    pub client_id: Option<String>,
    pub scope: String,
    pub credential: Option<CredentialSource>,
    pub kid: Option<String>,
    pub x5c: X5cMode,
    pub consumer_org: Option<String>,
    pub resource: Option<String>,
    pub maskinporten_issuer: Url,
    pub kfr_base_url: Url,
    pub proxy: Option<Url>,
    pub extra_ca_bundle: Option<PathBuf>,
    pub connect_timeout: std::time::Duration,
    pub request_timeout: std::time::Duration,
    pub token_refresh_ahead: std::time::Duration,
    pub pseudonym_key_file: PathBuf,
    pub allow_synthetic_ids: bool,
    pub allow_h_numbers: bool,
    /// The installation's SQLite state store (`kfr load`, the delete barrier of `kfr remove`),
    /// or why there is none (no `state` and no state home): see [`Settings::require_state`].
    pub state: Result<PathBuf, NoStateHome>,
    /// A PostgreSQL state store (`store.url = "postgres://…"`), which then replaces `state`
    /// unless a command is given `--state`.
    pub postgres: Option<PostgresSettings>,
    /// Relationships per second KFR ingests (onboarding D-3: about 250).
    pub ingest_rate: u32,
    /// Upper bound on a batch body (KFR: at most 10 MB a file).
    pub max_batch_bytes: usize,
    pub retry: RetrySettings,
    pub sync: SyncSettings,
    /// Every key with its display value (secrets redacted) and source, for `kfr config show`.
    pub origins: BTreeMap<String, (String, Source)>,
}

/// `[retry]`: how one KFR or Maskinporten call is retried by the CLI and the load (the sync
/// agent retries durably, across restarts, on top of single attempts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySettings {
    pub max_attempts: u32,
    pub base_delay: std::time::Duration,
    pub max_delay: std::time::Duration,
    /// A server's `Retry-After` is honoured up to this long.
    pub retry_after_cap: std::time::Duration,
}

/// `[sync]`: the continuous-sync agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncSettings {
    pub listen: std::net::SocketAddr,
    pub ingest_key_file: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Single adds/removes per second (KFR publishes no limit: conservative by default).
    pub rate: u32,
    pub max_in_flight: u32,
    pub retention_days: u32,
    /// Days the history (every attempt, every operator action) is kept: five years by default,
    /// what a bank keeps its customer-due-diligence records for.
    pub history_retention_days: u32,
    /// Unfinished events one customer may have in the outbox; an event beyond is refused (a
    /// runaway job's flood would otherwise hold that customer's queue for hours).
    pub max_events_per_customer: u64,
    /// Plain HTTP intake beyond loopback (events carry personal data: off by default).
    pub allow_plain_http: bool,
    /// Shutdown deadline for in-flight calls.
    pub drain: std::time::Duration,
    /// Transient failures are retried this long before the event is dead-lettered.
    pub give_up_after: std::time::Duration,
    /// How long a request whose fate is unknown (no answer, a 5xx, a sender killed with it out)
    /// may still be carried out between kfr and KFR: its customer waits that long (in doubt
    /// means hold).
    pub in_doubt: std::time::Duration,
    /// Customers of the ledger the agent checks in KFR an hour (0: off).
    pub register_checks_per_hour: u32,
    /// Adds dated before today go by batch with their date (else as single adds, date lost).
    pub backdated_by_batch: bool,
    pub sources: Vec<SourceSettings>,
}

/// A PostgreSQL server kfr connects to (its state store, or a core system's outbox table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresSettings {
    /// `postgres://user@host:port/database`, never with a password in it.
    pub url: String,
    /// The role's password, read from this file when connecting.
    pub password_file: Option<PathBuf>,
    /// CA certificates the server's certificate must chain to; with it, TLS is required and the
    /// host name checked (`sslmode=verify-full`). Without it, TLS only if the URL asks for it.
    pub ca_file: Option<PathBuf>,
}

/// One `[[sync.sources]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceSettings {
    pub name: String,
    pub kind: SourceKind,
}

/// Where a source's events come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceKind {
    /// `POST /events` on `sync.listen`.
    Http,
    /// Files moved atomically into a directory.
    Spool { dir: PathBuf },
    /// NDJSON on standard input.
    Stdin,
    /// The core system's own outbox table in its PostgreSQL database, read in commit order.
    PgOutbox { db: PostgresSettings, table: String },
}

/// The pseudonym key when there is no state home (no `KFR_STATE_HOME`, `XDG_STATE_HOME` or `HOME`):
/// the working directory.
const FALLBACK_PSEUDONYM_KEY: &str = "kfr-pseudonym.key";

/// The installation's configuration file: what every command of a host reads when it is not
/// told otherwise (the systemd unit, the Debian package and an operator's shell alike).
pub const SYSTEM_CONFIG: &str = "/etc/kfr/kfr.toml";

/// The configuration file in the working directory, read when nothing else names one.
const LOCAL_CONFIG: &str = "kfr.toml";

/// How the configuration file in use was found; `kfr config show` says which.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigOrigin {
    /// `--config PATH`.
    Flag,
    /// `KFR_CONFIG`.
    Env,
    /// The installation's file ([`SYSTEM_CONFIG`], or `KFR_SYSTEM_CONFIG`).
    System,
    /// `./kfr.toml`, with no installation file on this host.
    WorkingDirectory,
}

impl fmt::Display for ConfigOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConfigOrigin::Flag => "given with --config",
            ConfigOrigin::Env => "named by KFR_CONFIG",
            ConfigOrigin::System => "the installation's configuration",
            ConfigOrigin::WorkingDirectory => "found in the working directory",
        })
    }
}

/// The installation's configuration file on this host: `KFR_SYSTEM_CONFIG` when set (empty:
/// none; for tests and packagers that install elsewhere), else [`SYSTEM_CONFIG`].
pub fn system_config_path(env: &BTreeMap<String, String>) -> Option<PathBuf> {
    match env.get(env_vars::KFR_SYSTEM_CONFIG) {
        Some(p) if p.is_empty() => None,
        Some(p) => Some(PathBuf::from(p)),
        None => Some(PathBuf::from(SYSTEM_CONFIG)),
    }
}

/// Which configuration file a run reads, highest precedence first: `--config PATH`, `KFR_CONFIG`,
/// the installation's file when it exists, `./kfr.toml` when it exists, else none.
///
/// The installation's file comes before the working directory's so that every command on a host
/// finds the store, the pseudonym key and the certificate the agent uses, wherever the operator's
/// shell happens to be (issue 21 finding 1: a second store lost a load's delete barrier).
pub fn find_config_file(flag: Option<&Path>, env: &BTreeMap<String, String>) -> Option<(PathBuf, ConfigOrigin)> {
    if let Some(p) = flag {
        return Some((p.to_path_buf(), ConfigOrigin::Flag));
    }
    if let Some(p) = env.get(env_vars::KFR_CONFIG).filter(|p| !p.is_empty()) {
        return Some((PathBuf::from(p), ConfigOrigin::Env));
    }
    // Present but unreadable (an operator who is not in the agent's group) is still "present":
    // reading it then fails with an error naming the file, instead of quietly using another.
    let present = |p: &Path| match std::fs::metadata(p) {
        Ok(_) => true,
        Err(e) => e.kind() != std::io::ErrorKind::NotFound,
    };
    if let Some(p) = system_config_path(env).filter(|p| present(p)) {
        return Some((p, ConfigOrigin::System));
    }
    Some(PathBuf::from(LOCAL_CONFIG))
        .filter(|p| p.is_file())
        .map(|p| (p, ConfigOrigin::WorkingDirectory))
}

/// Raw key → (value, source) before typing.
type RawMap = BTreeMap<String, (String, Source)>;

impl Settings {
    /// Reads the file (see [`find_config_file`] for which), the process environment and the
    /// flags, and resolves them.
    pub fn load(config: Option<&Path>, flags: &FlagOverrides) -> Result<Settings, ConfigError> {
        let env: BTreeMap<String, String> = std::env::vars().collect();
        Self::load_from(config, &env, flags)
    }

    /// As [`Settings::load`], with the environment given explicitly (tests).
    pub fn load_from(
        config: Option<&Path>,
        env: &BTreeMap<String, String>,
        flags: &FlagOverrides,
    ) -> Result<Settings, ConfigError> {
        let found = find_config_file(config, env);
        let (path, config_origin) = match &found {
            Some((p, o)) => (Some(p.clone()), Some(*o)),
            None => (None, None),
        };
        let mut raw = RawMap::new();
        let base_dir = match &path {
            Some(p) => {
                read_file_layer(p, &mut raw)?;
                p.parent().map(Path::to_path_buf).unwrap_or_default()
            }
            None => PathBuf::from("."),
        };
        for k in KEYS {
            let Some(var) = env_var(k.name) else { continue };
            if let Some(v) = env.get(&var) {
                raw.insert(k.name.to_string(), (v.clone(), Source::Env(var)));
            }
        }
        for (key, flag, val) in flags.pairs() {
            raw.insert(key.to_string(), (val, Source::Flag(flag.to_string())));
        }
        // Relative paths from the file are relative to the file, so a generated kfr.toml works
        // from any working directory; paths from env/flags are relative to the working directory.
        for (key, (v, src)) in raw.iter_mut() {
            if matches!(src, Source::File(_)) && PATH_KEYS.contains(&schema_name(key).as_str()) {
                let p = Path::new(v.as_str());
                if p.is_relative() {
                    *v = base_dir.join(p).display().to_string();
                }
            }
        }
        // One key per installation, wherever `kfr` is run from: a pseudonym must name the same
        // person in every log of this host, or an operator cannot follow a customer across them.
        raw.entry("pseudonym_key_file".into()).or_insert_with(|| {
            let home = state_home(|k| env.get(k).cloned());
            let file = home.map_or_else(|| PathBuf::from(FALLBACK_PSEUDONYM_KEY), |h| h.join("pseudonym.key"));
            (file.display().to_string(), Source::Default)
        });
        // One state store per installation (issue 9 item 10), like the pseudonym key: the delete
        // barrier is a property of that store, so every command must find the same one wherever
        // it runs. Never the working directory.
        let default_state = state_home(|k| env.get(k).cloned())
            .map(|h| h.join(DEFAULT_STATE_FILE))
            .ok_or(NoStateHome);
        let password = env.get(env_vars::KFR_CERTIFICATE_PASSWORD).map(|p| Sourced {
            value: SecretString::from(p.clone()),
            source: Source::Env(env_vars::KFR_CERTIFICATE_PASSWORD.into()),
        });
        let mut settings = resolve(path, raw, password, default_state)?;
        settings.config_origin = config_origin;
        // A `./kfr.toml` next to an installation's file is most likely the copy the operator
        // installed from: say it is not the one in use rather than silently read either.
        if config_origin == Some(ConfigOrigin::System) && Path::new(LOCAL_CONFIG).is_file() {
            settings.shadowed_local_config = Some(PathBuf::from(LOCAL_CONFIG));
        }
        Ok(settings)
    }

    /// The organisation number, or a configuration error saying why it is needed.
    pub fn require_org_number(&self) -> Result<&str, ConfigError> {
        self.org_number.as_deref().ok_or(ConfigError::Missing {
            key: "org_number",
            why: "it is the institution's identity towards KFR and Maskinporten",
        })
    }

    /// The state store: the one given (a `--state` flag, then `state`/`store.url`), else the
    /// installation's default in the state home. With neither, a configuration error naming the
    /// variables: a store in the working directory would split the delete barrier between
    /// directories (issue 9 item 10), so there is no silent fallback.
    pub fn require_state(&self, flag: Option<&Path>) -> Result<PathBuf, ConfigError> {
        match (flag, &self.state) {
            (Some(p), _) => Ok(p.to_path_buf()),
            (None, Ok(p)) => Ok(p.clone()),
            (None, Err(e)) => Err(ConfigError::NoStateHome(e.clone())),
        }
    }

    /// The Maskinporten client id, or a configuration error.
    pub fn require_client_id(&self) -> Result<&str, ConfigError> {
        self.client_id.as_deref().ok_or(ConfigError::Missing {
            key: "client_id",
            why: "it is the client created in Digdir's self-service portal (onboarding A-4)",
        })
    }

    /// The certificate source, or a configuration error.
    pub fn require_credential(&self) -> Result<&CredentialSource, ConfigError> {
        self.credential.as_ref().ok_or(ConfigError::Missing {
            key: "certificate",
            why: "the grant is signed with the business certificate (or set private_key + certificate_pem)",
        })
    }
}

fn read_file_layer(path: &Path, raw: &mut RawMap) -> Result<(), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.into(),
        source,
    })?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| ConfigError::Syntax {
        path: path.into(),
        message: e.message().to_string(),
    })?;
    flatten(path, "", table, raw)
}

/// A key as the schema names it: array indices dropped (`sync.sources[2].dir` → `sync.sources[].dir`).
fn schema_name(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    let mut in_index = false;
    for c in key.chars() {
        match c {
            '[' => {
                in_index = true;
                out.push('[');
            }
            ']' => {
                in_index = false;
                out.push(']');
            }
            _ if in_index => {}
            _ => out.push(c),
        }
    }
    out
}

/// Walks the file's tables into dotted keys (`[sync]` `listen` → `sync.listen`, the second
/// `[[sync.sources]]`'s `dir` → `sync.sources[1].dir`), refusing any key, table or array the
/// schema does not know, with the closest known name as a suggestion.
fn flatten(path: &Path, prefix: &str, table: toml::Table, raw: &mut RawMap) -> Result<(), ConfigError> {
    let unknown = |key: String| ConfigError::UnknownKey {
        suggestion: suggest(&schema_name(&key)),
        key,
        path: path.into(),
    };
    for (key, value) in table {
        let name = format!("{prefix}{key}");
        let schema = schema_name(&name);
        match value {
            toml::Value::Table(t) if SECTIONS.contains(&schema.as_str()) => flatten(path, &format!("{name}."), t, raw)?,
            toml::Value::Array(items) if TABLE_ARRAYS.contains(&schema.as_str()) => {
                for (i, item) in items.into_iter().enumerate() {
                    let toml::Value::Table(t) = item else {
                        return Err(ConfigError::Invalid {
                            key: "sync.sources",
                            origin: Source::File(path.into()),
                            value: item.to_string(),
                            reason: format!("write each entry as a table: [[{name}]]"),
                        });
                    };
                    flatten(path, &format!("{name}[{i}]."), t, raw)?;
                }
            }
            toml::Value::Table(_) | toml::Value::Array(_) if !KEYS.iter().any(|k| k.name == schema) => {
                // A whole table spelt wrong (`[synk]` for `[sync]`): suggest the table.
                return Err(ConfigError::UnknownKey {
                    suggestion: suggest_section(&schema),
                    key: name,
                    path: path.into(),
                });
            }
            value => {
                let Some(def) = KEYS.iter().find(|k| k.name == schema) else {
                    return Err(unknown(name));
                };
                let s = match value {
                    toml::Value::String(s) => s,
                    toml::Value::Integer(i) => i.to_string(),
                    toml::Value::Boolean(b) => b.to_string(),
                    other => {
                        return Err(ConfigError::Invalid {
                            key: def.name,
                            origin: Source::File(path.into()),
                            value: other.to_string(),
                            reason: "expected a string, a number or true/false".into(),
                        });
                    }
                };
                raw.insert(name, (s, Source::File(path.into())));
            }
        }
    }
    Ok(())
}

/// Edit distance (Levenshtein) between two key names.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The known key closest to a misspelt one (edit distance ≤ 3), for the hint.
fn suggest(key: &str) -> Option<&'static str> {
    KEYS.iter()
        .map(|k| (distance(key, k.name), k.name))
        .filter(|(d, _)| *d <= 3)
        .min()
        .map(|(_, n)| n)
}

/// The known table closest to a misspelt one.
fn suggest_section(key: &str) -> Option<&'static str> {
    SECTIONS
        .iter()
        .chain(TABLE_ARRAYS)
        .map(|s| (distance(key, s), *s))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, n)| n)
}

/// Typed reads of the raw values, each error naming the key, its value and where it came from.
struct Resolver {
    raw: RawMap,
}

impl Resolver {
    /// The value of `key` (as given, else its default).
    fn get(&self, key: &str) -> Option<(String, Source)> {
        self.raw.get(key).cloned().or_else(|| {
            KEYS.iter()
                .find(|k| k.name == schema_name(key))
                .and_then(|k| k.default)
                .map(|d| (d.to_string(), Source::Default))
        })
    }

    fn invalid(&self, key: &str, (value, source): &(String, Source), reason: String) -> ConfigError {
        ConfigError::Invalid {
            key: static_name(key),
            origin: source.clone(),
            // A proxy URL may carry a password; an error is pasted into tickets (issue 21 item 7).
            value: if key == "proxy" {
                crate::http::egress::redacted_text(value)
            } else {
                value.clone()
            },
            reason,
        }
    }

    /// A key that has a default in [`KEYS`]; a key without one is a programming error reported
    /// as a configuration error rather than a panic.
    fn defaulted(&self, key: &str) -> Result<(String, Source), ConfigError> {
        self.get(key).ok_or(ConfigError::Missing {
            key: static_name(key),
            why: "it has no default (please report this)",
        })
    }

    fn string(&self, key: &str) -> Option<String> {
        self.get(key).map(|v| v.0)
    }

    fn path(&self, key: &str) -> Option<PathBuf> {
        self.get(key).map(|v| PathBuf::from(v.0))
    }

    fn number<T: std::str::FromStr + PartialOrd + fmt::Display>(
        &self,
        key: &str,
        min: T,
        max: T,
        unit: &str,
    ) -> Result<T, ConfigError> {
        let v = self.defaulted(key)?;
        match v.0.trim().parse::<T>() {
            Ok(n) if n >= min && n <= max => Ok(n),
            _ => Err(self.invalid(
                key,
                &v,
                format!("expected a whole number of {unit} from {min} to {max}"),
            )),
        }
    }

    fn secs(&self, key: &str) -> Result<std::time::Duration, ConfigError> {
        self.number::<u64>(key, 1, 86_400, "seconds")
            .map(std::time::Duration::from_secs)
    }

    fn boolean(&self, key: &str) -> Result<bool, ConfigError> {
        let v = self.defaulted(key)?;
        v.0.parse()
            .map_err(|_| self.invalid(key, &v, "expected true or false".into()))
    }

    fn url(&self, key: &str, env: Environment) -> Result<Option<Url>, ConfigError> {
        let Some(v) = self.get(key) else { return Ok(None) };
        let url = Url::parse(&v.0).map_err(|e| self.invalid(key, &v, e.to_string()))?;
        match url.scheme() {
            "https" => {}
            "http" if env == Environment::Local || key == "proxy" => {}
            "http" => {
                return Err(self.invalid(
                    key,
                    &v,
                    format!("http:// is refused with env = \"{env}\"; use https://"),
                ));
            }
            s => return Err(self.invalid(key, &v, format!("unsupported scheme {s}:"))),
        }
        Ok(Some(url))
    }

    /// An organisation number: 9 digits with a valid mod-11 check digit (kfr-notes §7), checked
    /// here so a typo fails at start-up rather than as KFR-003 on the first call.
    fn org_number(&self, key: &str, env: Environment) -> Result<Option<String>, ConfigError> {
        let Some(v) = self.get(key) else { return Ok(None) };
        let policy = if env == Environment::Prod {
            IdPolicy::prod()
        } else {
            IdPolicy::test()
        };
        match CustomerId::parse(&v.0, &policy) {
            Ok(id) if matches!(id.kind(), IdKind::OrgNumber | IdKind::TestOrgNumber) => {
                Ok(Some(id.as_str().to_string()))
            }
            // Someone may paste a person's number here: never echo it in full.
            Ok(_) => Err(self.invalid(
                key,
                &(mask(&v.0), v.1.clone()),
                "expected a 9-digit organisation number".into(),
            )),
            Err(e) => Err(self.invalid(
                key,
                &(mask(&v.0), v.1.clone()),
                format!("not a valid organisation number: {e}"),
            )),
        }
    }

    fn socket_addr(&self, key: &str) -> Result<Option<std::net::SocketAddr>, ConfigError> {
        let Some(v) = self.get(key) else { return Ok(None) };
        v.0.parse()
            .map(Some)
            .map_err(|_| self.invalid(key, &v, "expected an address such as 127.0.0.1:8090".into()))
    }
}

/// The `&'static` name of a known key for error messages (array entries by their schema name).
fn static_name(key: &str) -> &'static str {
    let schema = schema_name(key);
    KEYS.iter().find(|k| k.name == schema).map_or("(unknown)", |k| k.name)
}

fn resolve(
    config_file: Option<PathBuf>,
    mut raw: RawMap,
    password_env: Option<Sourced<SecretString>>,
    default_state: Result<PathBuf, NoStateHome>,
) -> Result<Settings, ConfigError> {
    let env_raw = Resolver { raw: raw.clone() }.defaulted("env")?;
    let env = match env_raw.0.as_str() {
        "local" => Environment::Local,
        "test" => Environment::Test,
        "prod" => Environment::Prod,
        _ => {
            return Err(Resolver { raw }.invalid("env", &env_raw, "expected local, test or prod".into()));
        }
    };
    // Environment-dependent defaults.
    raw.entry("maskinporten_issuer".into())
        .or_insert_with(|| (env.default_issuer().into(), Source::Default));
    raw.entry("kfr_base_url".into())
        .or_insert_with(|| (env.default_kfr_base_url().into(), Source::Default));
    raw.entry("allow_synthetic_ids".into())
        .or_insert_with(|| ((env != Environment::Prod).to_string(), Source::Default));
    let mut r = Resolver { raw };

    let mut issuer = r.url("maskinporten_issuer", env)?.ok_or(ConfigError::Missing {
        key: "maskinporten_issuer",
        why: "it is where tokens come from",
    })?;
    // The issuer is compared byte for byte with the discovery document and is the grant's `aud`
    // (kfr-notes §9): normalise to the trailing-slash form Digdir uses.
    if !issuer.path().ends_with('/') {
        issuer.set_path(&format!("{}/", issuer.path()));
        if let Some(entry) = r.raw.get_mut("maskinporten_issuer") {
            entry.0 = issuer.to_string();
        }
    }
    let kfr_base_url = r.url("kfr_base_url", env)?.ok_or(ConfigError::Missing {
        key: "kfr_base_url",
        why: "it is where KFR is reached",
    })?;
    let proxy = r.url("proxy", env)?;

    let org_number = r.org_number("org_number", env)?;
    let consumer_org = r.org_number("consumer_org", env)?;
    // Acting for oneself is not a delegation; Maskinporten refuses it, so say so now.
    if let (Some(org), Some(consumer)) = (&org_number, &consumer_org)
        && org == consumer
    {
        return Err(ConfigError::Conflict(format!(
            "consumer_org {consumer} is the institution's own org_number; remove consumer_org (it is only for acting on behalf of another organisation)"
        )));
    }
    let x5c_raw = r.defaulted("x5c")?;
    let x5c = match x5c_raw.0.as_str() {
        "leaf" => X5cMode::Leaf,
        "chain" => X5cMode::Chain,
        _ => return Err(r.invalid("x5c", &x5c_raw, "expected leaf or chain".into())),
    };

    // Certificate password: environment variable or file, never a flag.
    let password_file = r.path("certificate_password_file");
    let password = match (password_env, &password_file) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::Conflict(format!(
                "both {} and certificate_password_file are set; keep only one",
                env_vars::KFR_CERTIFICATE_PASSWORD
            )));
        }
        (Some(p), None) => Some(p.value),
        (None, Some(f)) => {
            let text = std::fs::read_to_string(f).map_err(|source| ConfigError::ReadSecret {
                what: "certificate_password_file",
                path: f.clone(),
                source,
            })?;
            Some(SecretString::from(text.trim_end_matches(['\r', '\n']).to_string()))
        }
        (None, None) => None,
    };
    let credential = match (r.path("certificate"), r.path("private_key"), r.path("certificate_pem")) {
        (Some(p12), None, None) => Some(CredentialSource::Pkcs12 {
            path: p12,
            password: password.clone(),
        }),
        (None, Some(k), Some(c)) => Some(CredentialSource::Pem {
            private_key: k,
            certificate: c,
            password: password.clone(),
        }),
        (None, None, None) => None,
        (Some(_), _, _) => {
            return Err(ConfigError::Conflict(
                "set either `certificate` (PKCS#12) or `private_key` + `certificate_pem`, not both".into(),
            ));
        }
        (None, _, _) => {
            return Err(ConfigError::Conflict(
                "`private_key` and `certificate_pem` must be set together".into(),
            ));
        }
    };

    let (state, postgres) = match resolve_store(&r)? {
        Some(StoreSetting::Path(p)) => (Ok(p), None),
        Some(StoreSetting::Postgres(url)) => (
            default_state,
            Some(PostgresSettings {
                url,
                password_file: r.path("store.password_file"),
                ca_file: r.path("store.ca_file"),
            }),
        ),
        None => (default_state, None),
    };
    if postgres.is_none() {
        for key in ["store.password_file", "store.ca_file"] {
            if let Some(v) = r.get(key) {
                return Err(r.invalid(key, &v, "only a postgres:// store.url takes it".into()));
            }
        }
    }
    let retry = RetrySettings {
        max_attempts: r.number("retry.max_attempts", 1, 100, "attempts")?,
        base_delay: std::time::Duration::from_millis(r.number("retry.base_delay_ms", 0, 60_000, "milliseconds")?),
        max_delay: std::time::Duration::from_secs(r.number("retry.max_delay_secs", 0, 3_600, "seconds")?),
        retry_after_cap: std::time::Duration::from_secs(r.number(
            "retry.retry_after_cap_secs",
            0,
            86_400,
            "seconds",
        )?),
    };
    if retry.base_delay > retry.max_delay {
        return Err(ConfigError::Conflict(format!(
            "retry.base_delay_ms ({} ms) is longer than retry.max_delay_secs ({} s); the first backoff cannot exceed the longest",
            retry.base_delay.as_millis(),
            retry.max_delay.as_secs()
        )));
    }
    let sync = resolve_sync(&r)?;

    let mut origins: BTreeMap<String, (String, Source)> = BTreeMap::new();
    for k in KEYS.iter().filter(|k| !k.name.contains("[]")) {
        if let Some((v, s)) = r.get(k.name) {
            origins.insert(k.name.to_string(), (v, s));
        }
    }
    for (key, value) in r.raw.iter().filter(|(k, _)| k.contains('[')) {
        origins.insert(key.clone(), value.clone());
    }
    // Only the store key in use is shown: one the environment replaced is not in effect.
    let top = STORE_KEYS
        .iter()
        .filter_map(|k| origins.get(*k).map(|v| v.1.layer()))
        .max();
    origins.retain(|k, v| !STORE_KEYS.contains(&k.as_str()) || Some(v.1.layer()) == top);
    if !origins.contains_key("state") && !origins.contains_key("state_file") && !origins.contains_key("store.url") {
        let shown = match &state {
            Ok(p) => p.display().to_string(),
            Err(e) => format!("(none: {e})"),
        };
        origins.insert("state".into(), (shown, Source::Default));
    }
    if password.is_some() {
        let src = match origins.get("certificate_password_file") {
            Some((_, s)) if password_file.is_some() => s.clone(),
            _ => Source::Env(env_vars::KFR_CERTIFICATE_PASSWORD.into()),
        };
        origins.insert("certificate_password".into(), ("[redacted]".into(), src));
    }

    Ok(Settings {
        config_file,
        config_origin: None,
        shadowed_local_config: None,
        env,
        org_number,
        client_id: r.string("client_id"),
        scope: r.defaulted("scope")?.0,
        credential,
        kid: r.string("kid"),
        x5c,
        consumer_org,
        resource: r.string("resource"),
        maskinporten_issuer: issuer,
        kfr_base_url,
        proxy,
        extra_ca_bundle: r.path("extra_ca_bundle"),
        connect_timeout: r.secs("connect_timeout_secs")?,
        request_timeout: r.secs("request_timeout_secs")?,
        token_refresh_ahead: r.secs("token_refresh_ahead_secs")?,
        pseudonym_key_file: PathBuf::from(r.defaulted("pseudonym_key_file")?.0),
        allow_synthetic_ids: r.boolean("allow_synthetic_ids")?,
        allow_h_numbers: r.boolean("allow_h_numbers")?,
        state,
        postgres,
        ingest_rate: r.number("ingest_rate", 1, u32::MAX, "relationships per second")?,
        max_batch_bytes: r.number(
            "max_batch_bytes",
            MIN_BATCH_BYTES,
            crate::kfr::batch::DEFAULT_MAX_BYTES,
            "bytes (KFR: 10 MB a file)",
        )?,
        retry,
        sync,
        origins,
    })
}

/// The state store as configured (see [`resolve_store`]).
enum StoreSetting {
    Path(PathBuf),
    /// A `postgres://` URL (without a password).
    Postgres(String),
}

/// The state store as configured: `state`, its older spelling `state_file`, or `store.url` (a
/// path, `sqlite://` + path, or a `postgres://` URL). `None`: not configured (the default in the
/// state home applies).
///
/// The three spellings are one key, so they follow the usual precedence: one given in the
/// environment replaces one written in the file, whatever its spelling. Two spellings in the same
/// layer (both in the file, or both in the environment) are refused, since nothing says which
/// was meant.
fn resolve_store(r: &Resolver) -> Result<Option<StoreSetting>, ConfigError> {
    let layer = |k: &str| r.raw.get(k).map_or(0, |v| v.1.layer());
    let top = STORE_KEYS.iter().map(|k| layer(k)).max().unwrap_or(0);
    let given: Vec<&str> = STORE_KEYS
        .into_iter()
        .filter(|k| r.raw.contains_key(*k) && layer(k) == top)
        .collect();
    if given.len() > 1 {
        return Err(ConfigError::Conflict(format!(
            "{} are all set; they name the same state store, keep only `state`",
            given.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(" and ")
        )));
    }
    let Some(key) = given.first() else { return Ok(None) };
    let v = r.raw[*key].clone();
    let text = v.0.trim();
    if text.is_empty() {
        return Err(r.invalid(key, &v, "expected a path".into()));
    }
    if *key != "store.url" {
        return Ok(Some(StoreSetting::Path(PathBuf::from(text))));
    }
    if let Some(rest) = text.strip_prefix("sqlite://") {
        if rest.is_empty() {
            return Err(r.invalid(
                "store.url",
                &v,
                "sqlite:// needs a path, e.g. sqlite:///var/lib/kfr/state.db".into(),
            ));
        }
        Ok(Some(StoreSetting::Path(PathBuf::from(rest))))
    } else if text.starts_with("postgres://") || text.starts_with("postgresql://") {
        postgres_url(r, "store.url", &v).map(|url| Some(StoreSetting::Postgres(url)))
    } else if text.contains("://") {
        Err(r.invalid(
            "store.url",
            &v,
            "expected a path, sqlite:///path or postgres://user@host:port/database".into(),
        ))
    } else {
        Ok(Some(StoreSetting::Path(PathBuf::from(text))))
    }
}

/// A `postgres://` URL as configured: it parses, names a host and a database, and carries no
/// password (a password belongs in a file only its owner reads, never in configuration that
/// `config show` prints and shells see).
fn postgres_url(r: &Resolver, key: &str, v: &(String, Source)) -> Result<String, ConfigError> {
    let text = v.0.trim();
    let url = Url::parse(text).map_err(|e| r.invalid(key, v, format!("not a URL: {e}")))?;
    if url.password().is_some() {
        let mut shown = url.clone();
        let _ = shown.set_password(Some("***"));
        return Err(r.invalid(
            key,
            &(shown.to_string(), v.1.clone()),
            "the URL carries a password: put it in a file of its own (`password_file`) and take it out of the URL"
                .into(),
        ));
    }
    if url.host_str().is_none_or(str::is_empty) && !url.query_pairs().any(|(k, _)| k == "host") {
        return Err(r.invalid(key, v, "expected postgres://user@host:port/database".into()));
    }
    if url.path().trim_start_matches('/').is_empty() {
        return Err(r.invalid(
            key,
            v,
            "the URL names no database: postgres://user@host:port/database".into(),
        ));
    }
    Ok(text.to_string())
}

/// A `pg_outbox` source: the core system's database and its outbox table.
fn pg_outbox_source(r: &Resolver, i: usize) -> Result<SourceKind, ConfigError> {
    let key = |field: &str| format!("sync.sources[{i}].{field}");
    let url = r.get(&key("url")).ok_or(ConfigError::Missing {
        key: "sync.sources[].url",
        why: "a pg_outbox source reads the core system's database: postgres://user@host:port/database",
    })?;
    let table = r.get(&key("table")).ok_or(ConfigError::Missing {
        key: "sync.sources[].table",
        why: "a pg_outbox source reads the core system's outbox table",
    })?;
    // A table name goes into SQL as an identifier: plain names only (letters, digits, `_`,
    // optionally schema-qualified), so it never needs quoting and cannot inject anything.
    let plain = |part: &str| {
        !part.is_empty()
            && part.len() <= 63
            && part.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
            && part
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    };
    let parts: Vec<&str> = table.0.trim().split('.').collect();
    if parts.len() > 2 || !parts.iter().all(|p| plain(p)) {
        return Err(r.invalid(
            &key("table"),
            &table,
            "expected a table name of lower-case letters, digits and `_`, optionally schema.table".into(),
        ));
    }
    Ok(SourceKind::PgOutbox {
        db: PostgresSettings {
            url: postgres_url(r, &key("url"), &url)?,
            password_file: r.path(&key("password_file")),
            ca_file: r.path(&key("ca_file")),
        },
        table: table.0.trim().to_string(),
    })
}

/// The `[sync]` table and its `[[sync.sources]]`.
fn resolve_sync(r: &Resolver) -> Result<SyncSettings, ConfigError> {
    let mut sources = Vec::new();
    for i in 0.. {
        let key = |field: &str| format!("sync.sources[{i}].{field}");
        if !r.raw.keys().any(|k| k.starts_with(&format!("sync.sources[{i}]."))) {
            break;
        }
        let kind_raw = r.get(&key("kind")).ok_or(ConfigError::Missing {
            key: "sync.sources[].kind",
            why: "each [[sync.sources]] says what it is: http, spool, stdin or pg_outbox",
        })?;
        let pg_keys = ["url", "table", "password_file", "ca_file"];
        if kind_raw.0 != "pg_outbox"
            && let Some(k) = pg_keys.iter().find(|k| r.raw.contains_key(&key(k)))
        {
            return Err(r.invalid(&key("kind"), &kind_raw, format!("only a pg_outbox source takes `{k}`")));
        }
        let dir = r.path(&key("dir"));
        let kind = match (kind_raw.0.as_str(), dir) {
            ("pg_outbox", None) => pg_outbox_source(r, i)?,
            ("http", None) => SourceKind::Http,
            ("stdin", None) => SourceKind::Stdin,
            ("spool", Some(dir)) => SourceKind::Spool { dir },
            ("spool", None) => {
                return Err(ConfigError::Missing {
                    key: "sync.sources[].dir",
                    why: "a spool source reads the directory the core system moves files into",
                });
            }
            ("http" | "stdin" | "pg_outbox", Some(_)) => {
                return Err(r.invalid(&key("kind"), &kind_raw, "only a spool source takes `dir`".into()));
            }
            _ => {
                return Err(r.invalid(
                    &key("kind"),
                    &kind_raw,
                    "expected http, spool, stdin or pg_outbox".into(),
                ));
            }
        };
        sources.push(SourceSettings {
            name: r.string(&key("name")).unwrap_or_else(|| format!("{}-{i}", kind_raw.0)),
            kind,
        });
    }
    Ok(SyncSettings {
        listen: r.socket_addr("sync.listen")?.ok_or(ConfigError::Missing {
            key: "sync.listen",
            why: "it is where the agent takes events",
        })?,
        ingest_key_file: r.path("sync.ingest_key_file"),
        tls_cert: r.path("sync.tls_cert"),
        tls_key: r.path("sync.tls_key"),
        metrics_listen: r.socket_addr("sync.metrics_listen")?,
        rate: r.number("sync.rate", 1, 10_000, "requests per second")?,
        max_in_flight: r.number("sync.max_in_flight", 1, 1_000, "requests")?,
        retention_days: r.number("sync.retention_days", 1, 3_650, "days")?,
        history_retention_days: r.number("sync.history_retention_days", 1, 36_500, "days")?,
        max_events_per_customer: r.number("sync.max_events_per_customer", 1, 10_000_000, "events")?,
        allow_plain_http: r.boolean("sync.allow_plain_http")?,
        drain: std::time::Duration::from_secs(r.number("sync.drain_secs", 1, 3_600, "seconds")?),
        give_up_after: std::time::Duration::from_secs(
            3_600 * r.number::<u64>("sync.give_up_after_hours", 1, 24 * 90, "hours")?,
        ),
        in_doubt: std::time::Duration::from_secs(r.number::<u64>("sync.in_doubt_secs", 1, 3_600, "seconds")?),
        register_checks_per_hour: r.number("sync.register_checks_per_hour", 0, 3_600_000, "lookups an hour")?,
        backdated_by_batch: r.boolean("sync.backdated_by_batch")?,
        sources,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("kfr.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn unknown_key_names_key_file_and_suggestion() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "env = \"test\"\nscopes = \"x\"\n");
        let err = Settings::load_from(Some(&p), &BTreeMap::new(), &FlagOverrides::default()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("`scopes`") && msg.contains("kfr.toml"), "{msg}");
        assert_eq!(err.hint().unwrap(), "did you mean `scope`? See docs/configuration.md");
    }

    #[test]
    fn precedence_default_file_env_flag() {
        let d = tempfile::tempdir().unwrap();
        let p = write(
            d.path(),
            "env = \"test\"\norg_number = \"916960190\"\nclient_id = \"from-file\"\n",
        );
        let mut env = BTreeMap::new();
        env.insert("KFR_CLIENT_ID".to_string(), "from-env".to_string());
        env.insert("KFR_SCOPE".to_string(), "a:b".to_string());
        let flags = FlagOverrides {
            scope: Some("c:d".into()),
            ..Default::default()
        };
        let s = Settings::load_from(Some(&p), &env, &flags).unwrap();
        assert_eq!(s.client_id.as_deref(), Some("from-env"));
        assert_eq!(s.scope, "c:d");
        assert_eq!(s.origins["scope"].1, Source::Flag("--scope".into()));
        assert_eq!(s.origins["org_number"].1, Source::File(p.clone()));
        assert_eq!(s.origins["x5c"].1, Source::Default);
        assert_eq!(s.maskinporten_issuer.as_str(), "https://test.maskinporten.no/");
        assert_eq!(s.kfr_base_url.as_str(), "https://preprod.api.bits.no/kar-ws/api/v1");
        assert!(s.allow_synthetic_ids);
    }

    #[test]
    fn http_refused_outside_local() {
        let flags = FlagOverrides {
            env: Some("prod".into()),
            kfr_base_url: Some("http://kfr.example/".into()),
            ..Default::default()
        };
        let err = Settings::load_from(None, &BTreeMap::new(), &flags).unwrap_err();
        assert!(
            err.to_string().contains("http:// is refused with env = \"prod\""),
            "{err}"
        );
        let flags = FlagOverrides {
            env: Some("local".into()),
            ..Default::default()
        };
        let s = Settings::load_from(None, &BTreeMap::new(), &flags).unwrap();
        assert_eq!(s.maskinporten_issuer.as_str(), "http://127.0.0.1:8080/maskinporten/");
        assert!(
            !Settings::load_from(
                None,
                &BTreeMap::new(),
                &FlagOverrides {
                    env: Some("prod".into()),
                    ..Default::default()
                }
            )
            .unwrap()
            .allow_synthetic_ids
        );
    }

    #[test]
    fn relative_paths_resolve_against_the_config_file() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("pw"), "s3cret\n").unwrap();
        let p = write(
            d.path(),
            "certificate = \"client.p12\"\ncertificate_password_file = \"pw\"\n",
        );
        let s = Settings::load_from(Some(&p), &BTreeMap::new(), &FlagOverrides::default()).unwrap();
        match s.credential.unwrap() {
            CredentialSource::Pkcs12 { path, password } => {
                assert_eq!(path, d.path().join("client.p12"));
                assert_eq!(secrecy::ExposeSecret::expose_secret(&password.unwrap()), "s3cret");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(s.origins["certificate_password"].0, "[redacted]");
    }

    #[test]
    fn password_from_env_and_file_conflict() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("pw"), "x").unwrap();
        let p = write(d.path(), "certificate_password_file = \"pw\"\n");
        let mut env = BTreeMap::new();
        env.insert("KFR_CERTIFICATE_PASSWORD".into(), "y".into());
        let err = Settings::load_from(Some(&p), &env, &FlagOverrides::default()).unwrap_err();
        assert!(err.to_string().contains("keep only one"));
    }

    #[test]
    fn issuer_gets_its_trailing_slash() {
        let flags = FlagOverrides {
            env: Some("local".into()),
            maskinporten_issuer: Some("http://127.0.0.1:9/maskinporten".into()),
            ..Default::default()
        };
        let s = Settings::load_from(None, &BTreeMap::new(), &flags).unwrap();
        assert_eq!(s.maskinporten_issuer.as_str(), "http://127.0.0.1:9/maskinporten/");
    }

    fn load(text: &str) -> Result<Settings, ConfigError> {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), text);
        Settings::load_from(Some(&p), &BTreeMap::new(), &FlagOverrides::default())
    }

    #[test]
    fn sync_table_and_sources_parse_with_their_sources_shown() {
        let s = load(
            "env = \"local\"\n[sync]\nlisten = \"127.0.0.1:18090\"\nrate = 25\n\
             [[sync.sources]]\nkind = \"http\"\n[[sync.sources]]\nkind = \"spool\"\ndir = \"spool\"\nname = \"core\"\n\
             [retry]\nretry_after_cap_secs = 600\n[store]\nurl = \"sqlite:///var/lib/kfr/state.db\"\n",
        )
        .unwrap();
        assert_eq!(s.sync.listen.to_string(), "127.0.0.1:18090");
        assert_eq!(s.sync.rate, 25);
        assert_eq!(s.sync.max_in_flight, 8, "defaults fill what the table leaves out");
        assert_eq!(s.sync.sources.len(), 2);
        assert_eq!(s.sync.sources[0].kind, SourceKind::Http);
        assert_eq!(s.sync.sources[1].name, "core");
        match &s.sync.sources[1].kind {
            SourceKind::Spool { dir } => assert!(dir.is_absolute() && dir.ends_with("spool"), "{dir:?}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(s.retry.retry_after_cap, std::time::Duration::from_secs(600));
        assert_eq!(s.state, Ok(PathBuf::from("/var/lib/kfr/state.db")));
        assert!(matches!(s.origins["sync.rate"].1, Source::File(_)));
        assert_eq!(s.origins["sync.max_in_flight"].1, Source::Default);
        assert_eq!(s.origins["sync.sources[1].kind"].0, "spool");
    }

    #[test]
    fn a_misspelt_key_inside_a_table_is_refused_with_a_suggestion() {
        let err = load("[sync]\nlisen = \"127.0.0.1:1\"\n").unwrap_err();
        assert!(err.to_string().contains("`sync.lisen`"), "{err}");
        assert_eq!(
            err.hint().unwrap(),
            "did you mean `sync.listen`? See docs/configuration.md"
        );
        let err = load("[[sync.sources]]\nkind = \"spool\"\ndri = \"x\"\n").unwrap_err();
        assert!(err.hint().unwrap().contains("`sync.sources[].dir`"), "{:?}", err.hint());
        let err = load("[synk]\nrate = 1\n").unwrap_err();
        assert!(err.hint().unwrap().contains("`sync`"), "{:?}", err.hint());
        // A table where a value belongs, and a value where a table belongs, are refused too.
        assert!(load("[scope]\nx = 1\n").is_err());
        assert!(load("sync = 3\n").is_err());
    }

    #[test]
    fn section_keys_come_from_the_environment_too() {
        assert_eq!(env_var("retry.max_attempts").as_deref(), Some("KFR_RETRY_MAX_ATTEMPTS"));
        assert_eq!(env_var("sync.sources[].kind"), None);
        let mut env = BTreeMap::new();
        env.insert("KFR_SYNC_RATE".to_string(), "3".to_string());
        let s = Settings::load_from(None, &env, &FlagOverrides::default()).unwrap();
        assert_eq!(s.sync.rate, 3);
        assert_eq!(s.origins["sync.rate"].1, Source::Env("KFR_SYNC_RATE".into()));
    }

    #[test]
    fn bad_section_values_name_key_and_rule() {
        let err = load("[[sync.sources]]\nkind = \"kafka\"\n").unwrap_err();
        assert!(
            err.to_string().contains("expected http, spool, stdin or pg_outbox"),
            "{err}"
        );
        let err = load("[[sync.sources]]\nkind = \"spool\"\n").unwrap_err();
        assert!(err.to_string().contains("sync.sources[].dir"), "{err}");
        let err = load("[store]\nurl = \"mysql://db/kfr\"\n").unwrap_err();
        assert!(err.to_string().contains("postgres://user@host:port/database"), "{err}");
        let err = load("[store]\nurl = \"postgres://kfr:hunter2@db/kfr\"\n").unwrap_err();
        assert!(
            err.to_string().contains("password") && !err.to_string().contains("hunter2"),
            "{err}"
        );
        let err = load("[store]\nurl = \"postgres://kfr@db\"\n").unwrap_err();
        assert!(err.to_string().contains("names no database"), "{err}");
        let err = load("[store]\npassword_file = \"pw\"\n").unwrap_err();
        assert!(err.to_string().contains("only a postgres:// store.url"), "{err}");
        let s =
            load("[store]\nurl = \"postgres://kfr@db.bank:5432/kfr\"\npassword_file = \"/etc/kfr/db.pw\"\n").unwrap();
        let pg = s.postgres.expect("a PostgreSQL store");
        assert_eq!(pg.url, "postgres://kfr@db.bank:5432/kfr");
        assert_eq!(pg.password_file.as_deref(), Some(Path::new("/etc/kfr/db.pw")));
        let err = load("[[sync.sources]]\nkind = \"pg_outbox\"\nurl = \"postgres://core@db/core\"\n").unwrap_err();
        assert!(err.to_string().contains("sync.sources[].table"), "{err}");
        let err =
            load("[[sync.sources]]\nkind = \"pg_outbox\"\nurl = \"postgres://core@db/core\"\ntable = \"x; drop\"\n")
                .unwrap_err();
        assert!(err.to_string().contains("lower-case letters"), "{err}");
        let err = load("[[sync.sources]]\nkind = \"http\"\ntable = \"kfr_outbox\"\n").unwrap_err();
        assert!(err.to_string().contains("only a pg_outbox source"), "{err}");
        let s = load(
            "[[sync.sources]]\nkind = \"pg_outbox\"\nurl = \"postgres://core@db/core\"\ntable = \"core.kfr_outbox\"\n",
        )
        .unwrap();
        assert!(matches!(&s.sync.sources[0].kind, SourceKind::PgOutbox { table, .. } if table == "core.kfr_outbox"));
        let err = load("state_file = \"a.db\"\n[store]\nurl = \"b.db\"\n").unwrap_err();
        assert!(err.to_string().contains("keep only `state`"), "{err}");
        let err = load("[retry]\nmax_attempts = 0\n").unwrap_err();
        assert!(err.to_string().contains("from 1 to 100"), "{err}");
        let err = load("[sync]\nlisten = \"localhost\"\n").unwrap_err();
        assert!(err.to_string().contains("127.0.0.1:8090"), "{err}");
    }

    #[test]
    fn the_state_store_defaults_to_the_state_home_and_is_never_silently_the_working_directory() {
        let env = |vars: &[(&str, &str)]| -> BTreeMap<String, String> {
            vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        let f = FlagOverrides::default();
        let s = Settings::load_from(None, &env(&[("KFR_STATE_HOME", "/srv/kfr")]), &f).unwrap();
        assert_eq!(s.require_state(None).unwrap(), PathBuf::from("/srv/kfr/kfr-state.db"));
        let s = Settings::load_from(None, &env(&[("XDG_STATE_HOME", "/x")]), &f).unwrap();
        assert_eq!(s.require_state(None).unwrap(), PathBuf::from("/x/kfr/kfr-state.db"));
        let s = Settings::load_from(None, &env(&[("HOME", "/home/o")]), &f).unwrap();
        assert_eq!(
            s.require_state(None).unwrap(),
            PathBuf::from("/home/o/.local/state/kfr/kfr-state.db")
        );
        // No state home: only commands that need the store fail, naming the variables.
        let s = Settings::load_from(None, &env(&[]), &f).unwrap();
        let err = s.require_state(None).unwrap_err();
        assert!(
            err.to_string().contains("KFR_STATE_HOME") && err.to_string().contains("HOME"),
            "{err}"
        );
        assert!(err.hint().unwrap().contains("`state`"), "{:?}", err.hint());
        assert_eq!(err.exit(), crate::error::Exit::Usage);
        // A flag wins; `state` from the environment wins over the state home.
        assert_eq!(s.require_state(Some(Path::new("a.db"))).unwrap(), PathBuf::from("a.db"));
        let s = Settings::load_from(None, &env(&[("KFR_STATE", "/k.db"), ("HOME", "/h")]), &f).unwrap();
        assert_eq!(s.require_state(None).unwrap(), PathBuf::from("/k.db"));
        assert_eq!(s.origins["state"].1, Source::Env("KFR_STATE".into()));
    }

    /// `--config` > `KFR_CONFIG` > the installation's file (when it exists) > none here (the
    /// working directory's `./kfr.toml` is tested end to end: it depends on the process's cwd).
    #[test]
    fn the_configuration_file_is_found_in_precedence_order() {
        let d = tempfile::tempdir().unwrap();
        let system = write(d.path(), "env = \"test\"\n");
        let mut env = BTreeMap::new();
        env.insert(env_vars::KFR_SYSTEM_CONFIG.to_string(), system.display().to_string());
        assert_eq!(
            find_config_file(None, &env),
            Some((system.clone(), ConfigOrigin::System))
        );
        env.insert(env_vars::KFR_CONFIG.to_string(), "/k.toml".to_string());
        assert_eq!(
            find_config_file(None, &env),
            Some((PathBuf::from("/k.toml"), ConfigOrigin::Env))
        );
        assert_eq!(
            find_config_file(Some(Path::new("f.toml")), &env),
            Some((PathBuf::from("f.toml"), ConfigOrigin::Flag))
        );
        // An empty KFR_CONFIG is unset; a missing system file is no system file; an empty
        // KFR_SYSTEM_CONFIG means there is none.
        env.insert(env_vars::KFR_CONFIG.to_string(), String::new());
        assert_eq!(find_config_file(None, &env).map(|f| f.1), Some(ConfigOrigin::System));
        env.insert(
            env_vars::KFR_SYSTEM_CONFIG.to_string(),
            d.path().join("absent.toml").display().to_string(),
        );
        assert_ne!(find_config_file(None, &env).map(|f| f.1), Some(ConfigOrigin::System));
        env.insert(env_vars::KFR_SYSTEM_CONFIG.to_string(), String::new());
        assert_eq!(system_config_path(&env), None);
        assert_eq!(system_config_path(&BTreeMap::new()), Some(PathBuf::from(SYSTEM_CONFIG)));

        // Settings::load_from reads the system file and says so.
        let system = write(d.path(), "state = \"/var/lib/kfr/kfr-state.db\"\n");
        let env = BTreeMap::from([(env_vars::KFR_SYSTEM_CONFIG.to_string(), system.display().to_string())]);
        let s = Settings::load_from(None, &env, &FlagOverrides::default()).unwrap();
        assert_eq!(s.config_file, Some(system));
        assert_eq!(s.config_origin, Some(ConfigOrigin::System));
        assert_eq!(
            s.require_state(None).unwrap(),
            PathBuf::from("/var/lib/kfr/kfr-state.db")
        );
    }

    /// A store key in the environment replaces the file's, whatever the spellings (the old unit's
    /// `KFR_STORE_URL` with the example's `state` exited 2); `config show` shows only the one in
    /// effect; a flag-level `--state` is handled by the commands.
    #[test]
    fn a_store_key_from_the_environment_replaces_the_files() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "state = \"/file.db\"\n");
        let env = BTreeMap::from([("KFR_STORE_URL".to_string(), "sqlite:///env.db".to_string())]);
        let s = Settings::load_from(Some(&p), &env, &FlagOverrides::default()).unwrap();
        assert_eq!(s.state, Ok(PathBuf::from("/env.db")));
        assert!(!s.origins.contains_key("state"), "{:?}", s.origins);
        assert_eq!(s.origins["store.url"].1, Source::Env("KFR_STORE_URL".into()));
        let env = BTreeMap::from([
            ("KFR_STORE_URL".to_string(), "/a.db".to_string()),
            ("KFR_STATE".to_string(), "/b.db".to_string()),
        ]);
        let err = Settings::load_from(Some(&p), &env, &FlagOverrides::default()).unwrap_err();
        assert!(err.to_string().contains("keep only `state`"), "{err}");
    }

    #[test]
    fn state_and_its_aliases_are_one_key() {
        let s = load("state = \"st/kfr.db\"\n").unwrap();
        let p = s.state.unwrap();
        assert!(
            p.is_absolute() && p.ends_with("st/kfr.db"),
            "relative to the file: {p:?}"
        );
        let s = load("state_file = \"/old.db\"\n").unwrap();
        assert_eq!(s.state, Ok(PathBuf::from("/old.db")));
        for two in [
            "state = \"a.db\"\nstate_file = \"b.db\"\n",
            "state = \"a.db\"\n[store]\nurl = \"b.db\"\n",
        ] {
            let err = load(two).unwrap_err();
            assert!(err.to_string().contains("keep only `state`"), "{err}");
            assert_eq!(err.exit(), crate::error::Exit::Usage);
        }
    }

    #[test]
    fn organisation_numbers_are_checked_mod_11() {
        assert!(load("org_number = \"916960190\"\n").is_ok());
        let err = load("org_number = \"916960191\"\n").unwrap_err();
        assert!(err.to_string().contains("check digit"), "{err}");
        let err = load("org_number = \"916960190\"\nconsumer_org = \"916960199\"\n").unwrap_err();
        assert!(err.to_string().contains("consumer_org"), "{err}");
        let err = load("org_number = \"916960190\"\nconsumer_org = \"916960190\"\n").unwrap_err();
        assert!(err.to_string().contains("own org_number"), "{err}");
        // A person's number is not an organisation number, whatever its length checks say.
        let err = load("org_number = \"15108695088\"\n").unwrap_err();
        assert!(err.to_string().contains("org_number"), "{err}");
        assert!(
            !err.to_string().contains("15108695088"),
            "a person's number is masked: {err}"
        );
    }
}
