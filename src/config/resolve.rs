//! From the merged, typed sections to [`Settings`]: what each value must mean (a URL, an
//! organisation number, a range, keys that go together), each refusal naming the key, its value
//! and the layer that gave it.

use super::layers::{STORE_KEYS, static_name};
use super::schema::{FileConfig, SourceTable};
use super::{
    ConfigError, CredentialSource, Environment, MIN_BATCH_BYTES, NoStateHome, PostgresSettings, RetrySettings,
    Settings, Source, SourceKind, SourceSettings, SyncSettings, X5cMode,
};
use crate::env_vars;
use crate::ids::{CustomerId, IdKind, IdPolicy, mask};
use secrecy::SecretString;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;
use url::Url;

/// What was given: each key's value as shown and its source, for errors and `config show`.
pub(super) struct Given {
    pub shown: BTreeMap<String, (String, Source)>,
}

impl Given {
    /// `key` has a value it must not have, for `reason`.
    fn invalid(&self, key: &str, reason: impl Into<String>) -> ConfigError {
        let (value, origin) = self.shown.get(key).cloned().unwrap_or((String::new(), Source::Default));
        ConfigError::Invalid {
            key: static_name(key),
            origin,
            value,
            reason: reason.into(),
        }
    }

    /// A key every layer has a default for; its absence is a bug, reported rather than a panic.
    fn defaulted<T>(&self, key: &'static str, value: Option<T>) -> Result<T, ConfigError> {
        value.ok_or(ConfigError::Missing {
            key,
            why: "it has no default (please report this)",
        })
    }

    /// A whole number from `min` to `max`.
    fn number<T>(&self, key: &'static str, value: Option<i64>, min: T, max: T, unit: &str) -> Result<T, ConfigError>
    where
        T: TryFrom<i64> + PartialOrd + std::fmt::Display,
    {
        match T::try_from(self.defaulted(key, value)?) {
            Ok(n) if n >= min && n <= max => Ok(n),
            _ => Err(self.invalid(key, format!("expected a whole number of {unit} from {min} to {max}"))),
        }
    }

    /// A number of seconds from 1 to a day.
    fn secs(&self, key: &'static str, value: Option<i64>) -> Result<Duration, ConfigError> {
        self.number::<u64>(key, value, 1, 86_400, "seconds")
            .map(Duration::from_secs)
    }

    /// An `https://` URL (`http://` only with `env = "local"`, or for the proxy).
    fn url(&self, key: &str, value: Option<&str>, env: Environment) -> Result<Option<Url>, ConfigError> {
        let Some(text) = value else { return Ok(None) };
        let url = Url::parse(text).map_err(|e| self.invalid(key, e.to_string()))?;
        match url.scheme() {
            "https" => Ok(Some(url)),
            "http" if env == Environment::Local || key == "proxy" => Ok(Some(url)),
            "http" => Err(self.invalid(key, format!("http:// is refused with env = \"{env}\"; use https://"))),
            s => Err(self.invalid(key, format!("unsupported scheme {s}:"))),
        }
    }

    /// An organisation number: 9 digits with a valid mod-11 check digit (kfr-notes §7), checked
    /// here so a typo fails at start-up rather than as KFR-003 on the first call.
    fn org_number(&self, key: &str, value: Option<&str>, env: Environment) -> Result<Option<String>, ConfigError> {
        let Some(text) = value else { return Ok(None) };
        let policy = if env == Environment::Prod {
            IdPolicy::prod()
        } else {
            IdPolicy::test()
        };
        // Someone may paste a person's number here: never echo it in full.
        let refuse = |reason: String| {
            let mut e = self.invalid(key, reason);
            if let ConfigError::Invalid { value, .. } = &mut e {
                *value = mask(text);
            }
            e
        };
        match CustomerId::parse(text, &policy) {
            Ok(id) if matches!(id.kind(), IdKind::OrgNumber | IdKind::TestOrgNumber) => {
                Ok(Some(id.as_str().to_string()))
            }
            Ok(_) => Err(refuse("expected a 9-digit organisation number".into())),
            Err(e) => Err(refuse(format!("not a valid organisation number: {e}"))),
        }
    }

    /// An address such as `127.0.0.1:8090`.
    fn socket_addr(&self, key: &str, value: Option<&str>) -> Result<Option<std::net::SocketAddr>, ConfigError> {
        let Some(text) = value else { return Ok(None) };
        text.parse()
            .map(Some)
            .map_err(|_| self.invalid(key, "expected an address such as 127.0.0.1:8090"))
    }
}

/// Resolves the merged sections into settings, step by step.
pub(super) fn resolve(
    c: FileConfig,
    given: Given,
    env: Environment,
    password_env: Option<SecretString>,
    default_state: Result<PathBuf, NoStateHome>,
) -> Result<Settings, ConfigError> {
    let g = &given;
    let (maskinporten_issuer, kfr_base_url, proxy) = endpoints(&c, g, env)?;
    let org_number = g.org_number("org_number", c.org_number.as_deref(), env)?;
    let consumer_org = g.org_number("consumer_org", c.consumer_org.as_deref(), env)?;
    // Acting for oneself is not a delegation; Maskinporten refuses it, so say so now.
    if let (Some(org), Some(consumer)) = (&org_number, &consumer_org)
        && org == consumer
    {
        return Err(ConfigError::Conflict(format!(
            "consumer_org {consumer} is the institution's own org_number; remove consumer_org (it is only for acting on behalf of another organisation)"
        )));
    }
    let x5c = match g.defaulted("x5c", c.x5c.as_deref())? {
        "leaf" => X5cMode::Leaf,
        "chain" => X5cMode::Chain,
        _ => return Err(g.invalid("x5c", "expected leaf or chain")),
    };
    let has_password = password_env.is_some() || c.certificate_password_file.is_some();
    let credential = credential(&c, password_env)?;
    let (state, postgres) = store(&c, g, default_state)?;
    let origins = origins(given.shown.clone(), &state, has_password, &maskinporten_issuer);
    let g = &given;
    Ok(Settings {
        config_file: None,
        config_origin: None,
        shadowed_local_config: None,
        env,
        org_number,
        client_id: c.client_id.clone(),
        scope: g.defaulted("scope", c.scope.clone())?,
        credential,
        kid: c.kid.clone(),
        x5c,
        consumer_org,
        resource: c.resource.clone(),
        maskinporten_issuer,
        kfr_base_url,
        proxy,
        extra_ca_bundle: c.extra_ca_bundle.clone(),
        connect_timeout: g.secs("connect_timeout_secs", c.connect_timeout_secs)?,
        request_timeout: g.secs("request_timeout_secs", c.request_timeout_secs)?,
        token_refresh_ahead: g.secs("token_refresh_ahead_secs", c.token_refresh_ahead_secs)?,
        pseudonym_key_file: g.defaulted("pseudonym_key_file", c.pseudonym_key_file.clone())?,
        allow_synthetic_ids: g.defaulted("allow_synthetic_ids", c.allow_synthetic_ids)?,
        allow_h_numbers: g.defaulted("allow_h_numbers", c.allow_h_numbers)?,
        state,
        postgres,
        ingest_rate: g.number("ingest_rate", c.ingest_rate, 1, u32::MAX, "relationships per second")?,
        max_batch_bytes: g.number(
            "max_batch_bytes",
            c.max_batch_bytes,
            MIN_BATCH_BYTES,
            crate::kfr::batch::DEFAULT_MAX_BYTES,
            "bytes (KFR: 10 MB a file)",
        )?,
        retry: retry(&c, g)?,
        sync: sync(&c, g)?,
        origins,
    })
}

/// The Maskinporten issuer, the KFR base URL and the proxy.
fn endpoints(c: &FileConfig, g: &Given, env: Environment) -> Result<(Url, Url, Option<Url>), ConfigError> {
    let mut issuer = g
        .url("maskinporten_issuer", c.maskinporten_issuer.as_deref(), env)?
        .ok_or(ConfigError::Missing {
            key: "maskinporten_issuer",
            why: "it is where tokens come from",
        })?;
    // The issuer is compared byte for byte with the discovery document and is the grant's `aud`
    // (kfr-notes §9): normalise to the trailing-slash form Digdir uses.
    if !issuer.path().ends_with('/') {
        issuer.set_path(&format!("{}/", issuer.path()));
    }
    let kfr = g
        .url("kfr_base_url", c.kfr_base_url.as_deref(), env)?
        .ok_or(ConfigError::Missing {
            key: "kfr_base_url",
            why: "it is where KFR is reached",
        })?;
    Ok((issuer, kfr, g.url("proxy", c.proxy.as_deref(), env)?))
}

/// The certificate and its key: a PKCS#12 file, or PEM key and certificate; the password from
/// `KFR_CERTIFICATE_PASSWORD` or a file, never a flag.
fn credential(c: &FileConfig, password_env: Option<SecretString>) -> Result<Option<CredentialSource>, ConfigError> {
    let password = match (password_env, &c.certificate_password_file) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::Conflict(format!(
                "both {} and certificate_password_file are set; keep only one",
                env_vars::KFR_CERTIFICATE_PASSWORD
            )));
        }
        (Some(p), None) => Some(p),
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
    match (c.certificate.clone(), c.private_key.clone(), c.certificate_pem.clone()) {
        (Some(path), None, None) => Ok(Some(CredentialSource::Pkcs12 { path, password })),
        (None, Some(private_key), Some(certificate)) => Ok(Some(CredentialSource::Pem {
            private_key,
            certificate,
            password,
        })),
        (None, None, None) => Ok(None),
        (Some(_), _, _) => Err(ConfigError::Conflict(
            "set either `certificate` (PKCS#12) or `private_key` + `certificate_pem`, not both".into(),
        )),
        (None, _, _) => Err(ConfigError::Conflict(
            "`private_key` and `certificate_pem` must be set together".into(),
        )),
    }
}

/// The state store: `state`, its older spelling `state_file`, or `store.url` (a path,
/// `sqlite://` + path, or a `postgres://` URL), else the default in the state home. The layers
/// have already kept only one spelling (`layers.rs`).
fn store(
    c: &FileConfig,
    g: &Given,
    default_state: Result<PathBuf, NoStateHome>,
) -> Result<(Result<PathBuf, NoStateHome>, Option<PostgresSettings>), ConfigError> {
    let path = |key: &str, p: &PathBuf| {
        if p.as_os_str().is_empty() {
            Err(g.invalid(key, "expected a path"))
        } else {
            Ok(p.clone())
        }
    };
    let postgres_only = |postgres: bool| match [
        ("store.password_file", &c.store.password_file),
        ("store.ca_file", &c.store.ca_file),
    ]
    .into_iter()
    .find(|(_, v)| v.is_some())
    {
        Some((key, _)) if !postgres => Err(g.invalid(key, "only a postgres:// store.url takes it")),
        _ => Ok(()),
    };
    let chosen = match (&c.state, &c.state_file, c.store.url.as_deref().map(str::trim)) {
        (Some(p), _, _) => Ok(path("state", p)?),
        (None, Some(p), _) => Ok(path("state_file", p)?),
        (None, None, None) => default_state,
        (None, None, Some("")) => return Err(g.invalid("store.url", "expected a path")),
        (None, None, Some(text)) => {
            if text.starts_with("postgres://") || text.starts_with("postgresql://") {
                postgres_only(true)?;
                let pg = PostgresSettings {
                    url: postgres_url(g, "store.url", text)?,
                    password_file: c.store.password_file.clone(),
                    ca_file: c.store.ca_file.clone(),
                };
                return Ok((default_state, Some(pg)));
            }
            Ok(sqlite_path(g, text)?)
        }
    };
    postgres_only(false)?;
    Ok((chosen, None))
}

/// A `store.url` that is not PostgreSQL: `sqlite://` + path, or a plain path.
fn sqlite_path(g: &Given, text: &str) -> Result<PathBuf, ConfigError> {
    match text.strip_prefix("sqlite://") {
        Some("") => Err(g.invalid(
            "store.url",
            "sqlite:// needs a path, e.g. sqlite:///var/lib/kfr/state.db",
        )),
        Some(rest) => Ok(PathBuf::from(rest)),
        None if text.contains("://") => Err(g.invalid(
            "store.url",
            "expected a path, sqlite:///path or postgres://user@host:port/database",
        )),
        None => Ok(PathBuf::from(text)),
    }
}

/// A `postgres://` URL as configured: it parses, names a host and a database, and carries no
/// password (a password belongs in a file only its owner reads, never in configuration that
/// `config show` prints and shells see).
fn postgres_url(g: &Given, key: &str, text: &str) -> Result<String, ConfigError> {
    let url = Url::parse(text).map_err(|e| g.invalid(key, format!("not a URL: {e}")))?;
    if url.password().is_some() {
        let mut shown = url.clone();
        let _ = shown.set_password(Some("***"));
        let mut e = g.invalid(
            key,
            "the URL carries a password: put it in a file of its own (`password_file`) and take it out of the URL",
        );
        if let ConfigError::Invalid { value, .. } = &mut e {
            *value = shown.to_string();
        }
        return Err(e);
    }
    if url.host_str().is_none_or(str::is_empty) && !url.query_pairs().any(|(k, _)| k == "host") {
        return Err(g.invalid(key, "expected postgres://user@host:port/database"));
    }
    if url.path().trim_start_matches('/').is_empty() {
        return Err(g.invalid(key, "the URL names no database: postgres://user@host:port/database"));
    }
    Ok(text.to_string())
}

/// `[retry]`.
fn retry(c: &FileConfig, g: &Given) -> Result<RetrySettings, ConfigError> {
    let r = &c.retry;
    let retry = RetrySettings {
        max_attempts: g.number("retry.max_attempts", r.max_attempts, 1, 100, "attempts")?,
        base_delay: Duration::from_millis(g.number(
            "retry.base_delay_ms",
            r.base_delay_ms,
            0,
            60_000,
            "milliseconds",
        )?),
        max_delay: Duration::from_secs(g.number("retry.max_delay_secs", r.max_delay_secs, 0, 3_600, "seconds")?),
        retry_after_cap: Duration::from_secs(g.number(
            "retry.retry_after_cap_secs",
            r.retry_after_cap_secs,
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
    Ok(retry)
}

/// `[sync]` and its `[[sync.sources]]`.
fn sync(c: &FileConfig, g: &Given) -> Result<SyncSettings, ConfigError> {
    let s = &c.sync;
    let sources = s
        .sources
        .iter()
        .enumerate()
        .map(|(i, t)| source(g, i, t))
        .collect::<Result<_, _>>()?;
    Ok(SyncSettings {
        listen: g
            .socket_addr("sync.listen", s.listen.as_deref())?
            .ok_or(ConfigError::Missing {
                key: "sync.listen",
                why: "it is where the agent takes events",
            })?,
        ingest_key_file: s.ingest_key_file.clone(),
        tls_cert: s.tls_cert.clone(),
        tls_key: s.tls_key.clone(),
        metrics_listen: g.socket_addr("sync.metrics_listen", s.metrics_listen.as_deref())?,
        rate: g.number("sync.rate", s.rate, 1, 10_000, "requests per second")?,
        max_in_flight: g.number("sync.max_in_flight", s.max_in_flight, 1, 1_000, "requests")?,
        retention_days: g.number("sync.retention_days", s.retention_days, 1, 3_650, "days")?,
        history_retention_days: g.number(
            "sync.history_retention_days",
            s.history_retention_days,
            1,
            36_500,
            "days",
        )?,
        max_events_per_customer: g.number(
            "sync.max_events_per_customer",
            s.max_events_per_customer,
            1,
            10_000_000,
            "events",
        )?,
        allow_plain_http: g.defaulted("sync.allow_plain_http", s.allow_plain_http)?,
        drain: Duration::from_secs(g.number("sync.drain_secs", s.drain_secs, 1, 3_600, "seconds")?),
        give_up_after: Duration::from_secs(
            3_600 * g.number::<u64>("sync.give_up_after_hours", s.give_up_after_hours, 1, 24 * 90, "hours")?,
        ),
        in_doubt: Duration::from_secs(g.number::<u64>("sync.in_doubt_secs", s.in_doubt_secs, 1, 3_600, "seconds")?),
        register_checks_per_hour: g.number(
            "sync.register_checks_per_hour",
            s.register_checks_per_hour,
            0,
            3_600_000,
            "lookups an hour",
        )?,
        backdated_by_batch: g.defaulted("sync.backdated_by_batch", s.backdated_by_batch)?,
        sources,
    })
}

/// The `i`th `[[sync.sources]]`: its kind decides which other keys it takes.
fn source(g: &Given, i: usize, t: &SourceTable) -> Result<SourceSettings, ConfigError> {
    let key = format!("sync.sources[{i}].kind");
    let kind = t.kind.as_deref().ok_or(ConfigError::Missing {
        key: "sync.sources[].kind",
        why: "each [[sync.sources]] says what it is: http, spool, stdin or pg_outbox",
    })?;
    let pg_keys = [("url", t.url.is_some()), ("table", t.table.is_some())]
        .into_iter()
        .chain([
            ("password_file", t.password_file.is_some()),
            ("ca_file", t.ca_file.is_some()),
        ]);
    if kind != "pg_outbox"
        && let Some((k, _)) = pg_keys.into_iter().find(|(_, set)| *set)
    {
        return Err(g.invalid(&key, format!("only a pg_outbox source takes `{k}`")));
    }
    let source_kind = match (kind, &t.dir) {
        ("pg_outbox", None) => pg_outbox(g, i, t)?,
        ("http", None) => SourceKind::Http,
        ("stdin", None) => SourceKind::Stdin,
        ("spool", Some(dir)) => SourceKind::Spool { dir: dir.clone() },
        ("spool", None) => {
            return Err(ConfigError::Missing {
                key: "sync.sources[].dir",
                why: "a spool source reads the directory the core system moves files into",
            });
        }
        ("http" | "stdin" | "pg_outbox", Some(_)) => return Err(g.invalid(&key, "only a spool source takes `dir`")),
        _ => return Err(g.invalid(&key, "expected http, spool, stdin or pg_outbox")),
    };
    Ok(SourceSettings {
        name: t.name.clone().unwrap_or_else(|| format!("{kind}-{i}")),
        kind: source_kind,
    })
}

/// A `pg_outbox` source: the core system's database and its outbox table.
fn pg_outbox(g: &Given, i: usize, t: &SourceTable) -> Result<SourceKind, ConfigError> {
    let url = t.url.as_deref().ok_or(ConfigError::Missing {
        key: "sync.sources[].url",
        why: "a pg_outbox source reads the core system's database: postgres://user@host:port/database",
    })?;
    let table = t.table.as_deref().map(str::trim).ok_or(ConfigError::Missing {
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
    let parts: Vec<&str> = table.split('.').collect();
    if parts.len() > 2 || !parts.iter().all(|p| plain(p)) {
        return Err(g.invalid(
            &format!("sync.sources[{i}].table"),
            "expected a table name of lower-case letters, digits and `_`, optionally schema.table",
        ));
    }
    Ok(SourceKind::PgOutbox {
        db: PostgresSettings {
            url: postgres_url(g, &format!("sync.sources[{i}].url"), url.trim())?,
            password_file: t.password_file.clone(),
            ca_file: t.ca_file.clone(),
        },
        table: table.to_string(),
    })
}

/// The values `kfr config show` lists: every key given or defaulted, only the store key in
/// effect (or the default store), the password as `[redacted]`, the issuer as normalised.
fn origins(
    mut shown: BTreeMap<String, (String, Source)>,
    state: &Result<PathBuf, NoStateHome>,
    has_password: bool,
    issuer: &Url,
) -> BTreeMap<String, (String, Source)> {
    if !STORE_KEYS.iter().any(|k| shown.contains_key(*k)) {
        let value = match state {
            Ok(p) => p.display().to_string(),
            Err(e) => format!("(none: {e})"),
        };
        shown.insert("state".into(), (value, Source::Default));
    }
    if let Some(entry) = shown.get_mut("maskinporten_issuer") {
        entry.0 = issuer.to_string();
    }
    if has_password {
        let source = match shown.get("certificate_password_file") {
            Some((_, s)) => s.clone(),
            None => Source::Env(env_vars::KFR_CERTIFICATE_PASSWORD.into()),
        };
        shown.insert("certificate_password".into(), ("[redacted]".into(), source));
    }
    shown
}
