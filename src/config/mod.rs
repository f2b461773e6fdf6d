//! Configuration: `kfr.toml`, `KFR_*` environment variables and command-line flags, resolved once
//! into one [`Settings`] value that records where every value came from.
//!
//! Precedence, lowest to highest: built-in default (per environment) → file → environment → flag.
//! Unknown keys in the file are an error naming the key and the file: a typo such as `scopes`
//! would otherwise silently fall back to a default and fail much later against Maskinporten.
//!
//! The parts, in the order a run goes through them: `schema.rs` (the file's tables as serde
//! structs: the one list of keys, and the defaults), `layers.rs` (defaults, file, `KFR_*`
//! variables and flags merged, each key remembering its source), `resolve.rs` (what each value
//! must mean, into [`Settings`]).
//!
//! Secrets (the certificate password) are never accepted as a flag, never printed, and live in
//! `secrecy` types from the moment they are read.

mod layers;
mod resolve;
mod schema;
#[cfg(test)]
mod tests;

use crate::env_vars::{self, state_home};
pub use crate::environment::Environment;
use crate::error::Hinted;
pub use crate::maskinporten::{CredentialSource, X5cMode};
pub use schema::keys;
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

/// The environment variable for a key: `KFR_` and the key in upper case, dots as underscores
/// (`retry.max_attempts` → `KFR_RETRY_MAX_ATTEMPTS`). Keys inside arrays of tables (`[]` in the
/// name) have none: a list of sources is written in the file.
pub fn env_var(key: &str) -> Option<String> {
    (!key.contains("[]")).then(|| format!("{}{}", env_vars::CONFIG_PREFIX, key.replace('.', "_").to_uppercase()))
}

/// The built-in defaults that hold in every environment, each key with its value as `kfr config
/// show` writes it (those that depend on `env` or the state home are not among them).
pub fn built_in_defaults() -> BTreeMap<String, String> {
    layers::shown_defaults()
}

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
    #[error("unknown key `{key}` in {}", at(path, *line))]
    UnknownKey {
        key: String,
        path: PathBuf,
        /// The line of the file, when known.
        line: Option<usize>,
        suggestion: Option<&'static str>,
    },
    #[error("`{key}` in {} has the wrong type: {message}", at(path, *line))]
    WrongType {
        key: String,
        path: PathBuf,
        line: Option<usize>,
        message: String,
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

/// A place in a file as errors write it: `kfr.toml:3`, or the file alone.
fn at(path: &Path, line: Option<usize>) -> String {
    match line {
        Some(l) => format!("{}:{l}", path.display()),
        None => path.display().to_string(),
    }
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
        let mut layers = layers::Layers::gather(path.as_deref(), env, flags)?;
        let environment = layers.environment()?;
        layers.with_defaults(environment, env);
        let sections = typed(&layers)?;
        // One state store per installation (issue 9 item 10), like the pseudonym key: the delete
        // barrier is a property of that store, so every command must find the same one wherever
        // it runs. Never the working directory.
        let default_state = state_home(|k| env.get(k).cloned())
            .map(|h| h.join(DEFAULT_STATE_FILE))
            .ok_or(NoStateHome);
        let given = resolve::Given { shown: layers.shown() };
        let password = layers::password_from_env(env);
        let mut settings = resolve::resolve(sections, given, environment, password, default_state)?;
        settings.config_file = path;
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

/// The merged layers as typed sections. The file was checked against the schema when it was
/// read; what can still be wrong is a variable or flag of the wrong type (`KFR_SYNC_RATE=fast`).
fn typed(layers: &layers::Layers) -> Result<schema::FileConfig, ConfigError> {
    serde_path_to_error::deserialize(toml::Value::Table(layers.table.clone())).map_err(|e| {
        let key = e.path().to_string();
        let (value, origin) = layers.shown().remove(&key).unwrap_or((String::new(), Source::Default));
        ConfigError::Invalid {
            key: layers::static_name(&key),
            origin,
            value,
            reason: e.inner().message().to_string(),
        }
    })
}
