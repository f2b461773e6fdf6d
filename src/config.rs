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
        doc: "audience-restricted token: resource claim",
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
        name: "state_file",
        default: Some("kfr-state.db"),
        doc: "SQLite state store: load jobs, ledger, held deletes",
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
];

/// Keys whose value is a path; relative paths are taken relative to the config file's folder.
const PATH_KEYS: &[&str] = &[
    "certificate",
    "certificate_password_file",
    "private_key",
    "certificate_pem",
    "extra_ca_bundle",
    "pseudonym_key_file",
    "state_file",
];

/// Smallest accepted `max_batch_bytes`: below this the multipart overhead would dominate and the
/// planner could not fill files to 95 % (one entry is at most 23 bytes).
pub const MIN_BATCH_BYTES: usize = 1024;

/// Settings given as command-line flags (placed before the subcommand).
#[derive(Debug, Default, Clone, clap::Args)]
pub struct FlagOverrides {
    /// Environment: local, test or prod.
    #[arg(long = "env", value_name = "ENV")]
    pub env: Option<String>,
    /// The institution's organisation number.
    #[arg(long = "org-number", value_name = "ORGNR")]
    pub org_number: Option<String>,
    /// Maskinporten client id.
    #[arg(long = "client-id", value_name = "ID")]
    pub client_id: Option<String>,
    /// Scope to request.
    #[arg(long = "scope", value_name = "SCOPE")]
    pub scope: Option<String>,
    /// PKCS#12 certificate file (its password comes from KFR_CERTIFICATE_PASSWORD or a file).
    #[arg(long = "certificate", value_name = "P12")]
    pub certificate: Option<PathBuf>,
    /// Maskinporten issuer URL.
    #[arg(long = "maskinporten-issuer", value_name = "URL")]
    pub maskinporten_issuer: Option<String>,
    /// KFR base URL.
    #[arg(long = "kfr-base-url", value_name = "URL")]
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
            ConfigError::Invalid { key, .. } if key.ends_with("url") || *key == "maskinporten_issuer" => {
                Some("plain http:// is only allowed with env = \"local\" (the bundled mock)".into())
            }
            _ => None,
        }
    }
}

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
    /// The SQLite state store (`kfr load`, the delete barrier of `kfr remove`).
    pub state_file: PathBuf,
    /// Relationships per second KFR ingests (onboarding D-3: about 250).
    pub ingest_rate: u32,
    /// Upper bound on a batch body (KFR: at most 10 MB a file).
    pub max_batch_bytes: usize,
    /// Every key with its display value (secrets redacted) and source, for `kfr config show`.
    pub origins: BTreeMap<&'static str, (String, Source)>,
}

/// The pseudonym key when there is no state home (no `KFR_STATE_HOME`, `XDG_STATE_HOME` or `HOME`):
/// the working directory.
const FALLBACK_PSEUDONYM_KEY: &str = "kfr-pseudonym.key";

/// Raw key → (value, source) before typing.
type RawMap = BTreeMap<&'static str, (String, Source)>;

impl Settings {
    /// Reads the file (explicit path, `KFR_CONFIG`, or `./kfr.toml` when present), the process
    /// environment and the flags, and resolves them.
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
        let path = match config {
            Some(p) => Some(p.to_path_buf()),
            None => match env.get(env_vars::KFR_CONFIG) {
                Some(p) => Some(PathBuf::from(p)),
                None => Some(PathBuf::from("kfr.toml")).filter(|p| p.is_file()),
            },
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
            let var = format!("{}{}", env_vars::CONFIG_PREFIX, k.name.to_uppercase());
            if let Some(v) = env.get(&var) {
                raw.insert(k.name, (v.clone(), Source::Env(var)));
            }
        }
        for (key, flag, val) in flags.pairs() {
            raw.insert(key, (val, Source::Flag(flag.to_string())));
        }
        // Relative paths from the file are relative to the file, so a generated kfr.toml works
        // from any working directory; paths from env/flags are relative to the working directory.
        for key in PATH_KEYS {
            if let Some((v, src @ Source::File(_))) = raw.get(key) {
                let p = Path::new(v);
                if p.is_relative() {
                    let joined = base_dir.join(p).display().to_string();
                    let src = src.clone();
                    raw.insert(key, (joined, src));
                }
            }
        }
        // One key per installation, wherever `kfr` is run from: a pseudonym must name the same
        // person in every log of this host, or an operator cannot follow a customer across them.
        raw.entry("pseudonym_key_file").or_insert_with(|| {
            let home = state_home(|k| env.get(k).cloned());
            let file = home.map_or_else(|| PathBuf::from(FALLBACK_PSEUDONYM_KEY), |h| h.join("pseudonym.key"));
            (file.display().to_string(), Source::Default)
        });
        let password = env.get(env_vars::KFR_CERTIFICATE_PASSWORD).map(|p| Sourced {
            value: SecretString::from(p.clone()),
            source: Source::Env(env_vars::KFR_CERTIFICATE_PASSWORD.into()),
        });
        resolve(path, raw, password)
    }

    /// The organisation number, or a configuration error saying why it is needed.
    pub fn require_org_number(&self) -> Result<&str, ConfigError> {
        self.org_number.as_deref().ok_or(ConfigError::Missing {
            key: "org_number",
            why: "it is the institution's identity towards KFR and Maskinporten",
        })
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
    for (key, value) in table {
        let Some(def) = KEYS.iter().find(|k| k.name == key) else {
            return Err(ConfigError::UnknownKey {
                suggestion: suggest(&key),
                key,
                path: path.into(),
            });
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
        raw.insert(def.name, (s, Source::File(path.into())));
    }
    Ok(())
}

/// The known key closest to a misspelt one (edit distance ≤ 3), for the hint.
fn suggest(key: &str) -> Option<&'static str> {
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
    KEYS.iter()
        .map(|k| (distance(key, k.name), k.name))
        .filter(|(d, _)| *d <= 3)
        .min()
        .map(|(_, n)| n)
}

fn resolve(
    config_file: Option<PathBuf>,
    mut raw: RawMap,
    password_env: Option<Sourced<SecretString>>,
) -> Result<Settings, ConfigError> {
    let mut origins: BTreeMap<&'static str, (String, Source)> = BTreeMap::new();
    let get = |raw: &RawMap, key: &'static str| -> Option<(String, Source)> {
        raw.get(key).cloned().or_else(|| {
            KEYS.iter()
                .find(|k| k.name == key)
                .and_then(|k| k.default)
                .map(|d| (d.to_string(), Source::Default))
        })
    };
    let invalid = |key: &'static str, (value, source): &(String, Source), reason: String| ConfigError::Invalid {
        key,
        origin: source.clone(),
        value: value.clone(),
        reason,
    };

    let env_raw = get(&raw, "env").expect("env has a default");
    let env = match env_raw.0.as_str() {
        "local" => Environment::Local,
        "test" => Environment::Test,
        "prod" => Environment::Prod,
        _ => return Err(invalid("env", &env_raw, "expected local, test or prod".into())),
    };
    // Environment-dependent defaults.
    raw.entry("maskinporten_issuer")
        .or_insert_with(|| (env.default_issuer().into(), Source::Default));
    raw.entry("kfr_base_url")
        .or_insert_with(|| (env.default_kfr_base_url().into(), Source::Default));
    raw.entry("allow_synthetic_ids")
        .or_insert_with(|| ((env != Environment::Prod).to_string(), Source::Default));

    let url_key = |raw: &RawMap, key: &'static str| -> Result<Option<Url>, ConfigError> {
        let Some(v) = get(raw, key) else { return Ok(None) };
        let url = Url::parse(&v.0).map_err(|e| invalid(key, &v, e.to_string()))?;
        match url.scheme() {
            "https" => {}
            "http" if env == Environment::Local || key == "proxy" => {}
            "http" => {
                return Err(invalid(
                    key,
                    &v,
                    format!("http:// is refused with env = \"{env}\"; use https://"),
                ));
            }
            s => return Err(invalid(key, &v, format!("unsupported scheme {s}:"))),
        }
        Ok(Some(url))
    };
    let mut issuer = url_key(&raw, "maskinporten_issuer")?.expect("defaulted");
    // The issuer is compared byte for byte with the discovery document and is the grant's `aud`
    // (kfr-notes §9): normalise to the trailing-slash form Digdir uses.
    if !issuer.path().ends_with('/') {
        issuer.set_path(&format!("{}/", issuer.path()));
        raw.insert(
            "maskinporten_issuer",
            (issuer.to_string(), raw["maskinporten_issuer"].1.clone()),
        );
    }
    let kfr_base_url = url_key(&raw, "kfr_base_url")?.expect("defaulted");
    let proxy = url_key(&raw, "proxy")?;

    let org_number = match get(&raw, "org_number") {
        Some(v) if v.0.len() == 9 && v.0.bytes().all(|b| b.is_ascii_digit()) => Some(v.0),
        Some(v) => return Err(invalid("org_number", &v, "expected 9 digits".into())),
        None => None,
    };
    let consumer_org = match get(&raw, "consumer_org") {
        Some(v) if v.0.len() == 9 && v.0.bytes().all(|b| b.is_ascii_digit()) => Some(v.0),
        Some(v) => return Err(invalid("consumer_org", &v, "expected 9 digits".into())),
        None => None,
    };
    let x5c_raw = get(&raw, "x5c").expect("defaulted");
    let x5c = match x5c_raw.0.as_str() {
        "leaf" => X5cMode::Leaf,
        "chain" => X5cMode::Chain,
        _ => return Err(invalid("x5c", &x5c_raw, "expected leaf or chain".into())),
    };
    let secs = |raw: &RawMap, key: &'static str| -> Result<std::time::Duration, ConfigError> {
        let v = get(raw, key).expect("defaulted");
        let n: u64 =
            v.0.parse()
                .map_err(|_| invalid(key, &v, "expected a whole number of seconds".into()))?;
        if n == 0 {
            return Err(invalid(key, &v, "must be at least 1".into()));
        }
        Ok(std::time::Duration::from_secs(n))
    };
    let boolean = |raw: &RawMap, key: &'static str| -> Result<bool, ConfigError> {
        let v = get(raw, key).expect("defaulted");
        v.0.parse()
            .map_err(|_| invalid(key, &v, "expected true or false".into()))
    };
    let path = |raw: &RawMap, key: &'static str| get(raw, key).map(|v| PathBuf::from(v.0));

    // Certificate password: environment variable or file, never a flag.
    let password_file = path(&raw, "certificate_password_file");
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
    let credential = match (
        path(&raw, "certificate"),
        path(&raw, "private_key"),
        path(&raw, "certificate_pem"),
    ) {
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

    for k in KEYS {
        if let Some((v, s)) = get(&raw, k.name) {
            origins.insert(k.name, (v, s));
        }
    }
    if password.is_some() {
        let src = if password_file.is_some() {
            origins["certificate_password_file"].1.clone()
        } else {
            Source::Env(env_vars::KFR_CERTIFICATE_PASSWORD.into())
        };
        origins.insert("certificate_password", ("[redacted]".into(), src));
    }

    Ok(Settings {
        config_file,
        env,
        org_number,
        client_id: get(&raw, "client_id").map(|v| v.0),
        scope: get(&raw, "scope").expect("defaulted").0,
        credential,
        kid: get(&raw, "kid").map(|v| v.0),
        x5c,
        consumer_org,
        resource: get(&raw, "resource").map(|v| v.0),
        maskinporten_issuer: issuer,
        kfr_base_url,
        proxy,
        extra_ca_bundle: path(&raw, "extra_ca_bundle"),
        connect_timeout: secs(&raw, "connect_timeout_secs")?,
        request_timeout: secs(&raw, "request_timeout_secs")?,
        token_refresh_ahead: secs(&raw, "token_refresh_ahead_secs")?,
        pseudonym_key_file: path(&raw, "pseudonym_key_file").expect("defaulted"),
        allow_synthetic_ids: boolean(&raw, "allow_synthetic_ids")?,
        allow_h_numbers: boolean(&raw, "allow_h_numbers")?,
        state_file: path(&raw, "state_file").expect("defaulted"),
        ingest_rate: {
            let v = get(&raw, "ingest_rate").expect("defaulted");
            match v.0.parse::<u32>() {
                Ok(n) if n >= 1 => n,
                _ => {
                    return Err(invalid(
                        "ingest_rate",
                        &v,
                        "expected a whole number of relationships per second, at least 1".into(),
                    ));
                }
            }
        },
        max_batch_bytes: {
            let v = get(&raw, "max_batch_bytes").expect("defaulted");
            match v.0.parse::<usize>() {
                Ok(n) if (MIN_BATCH_BYTES..=crate::kfr::batch::DEFAULT_MAX_BYTES).contains(&n) => n,
                _ => {
                    return Err(invalid(
                        "max_batch_bytes",
                        &v,
                        format!(
                            "expected a number of bytes from {MIN_BATCH_BYTES} to {} (KFR: 10 MB a file)",
                            crate::kfr::batch::DEFAULT_MAX_BYTES
                        ),
                    ));
                }
            }
        },
        origins,
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
}
