//! The one place that turns the resolved [`Settings`] into per-module configurations and clients.
//! Library modules never see `Settings` (the layering test in `lib.rs` guards this), so each
//! of them can be built from a test, a benchmark or another front end without a config file.

use crate::config::Settings;
use crate::environment::Environment;
use crate::http::HttpConfig;
use crate::http::RetryPolicy;
use crate::ids::IdPolicy;
use crate::kfr::{KfrClient, KfrClientConfig};
use crate::maskinporten::{TokenClient, TokenClientConfig, TokenRequest};
use anyhow::Context as _;

/// The state store a command uses: `--state` when given, else the installation's (`state`, or
/// `kfr-state.db` in the state home). An error when there is neither (never the working directory).
pub fn state_path(s: &Settings, flag: Option<&std::path::Path>) -> anyhow::Result<std::path::PathBuf> {
    Ok(s.require_state(flag)?)
}

/// Where the installation's store lives: `--state` when given (a SQLite file), else a
/// PostgreSQL `store.url`, else the SQLite `state`.
pub fn location(s: &Settings, flag: Option<&std::path::Path>) -> anyhow::Result<crate::store::Location> {
    Ok(match (&s.postgres, flag) {
        (Some(pg), None) => crate::store::Location::Postgres(pg_target(pg)),
        _ => crate::store::Location::Sqlite(state_path(s, flag)?),
    })
}

/// A PostgreSQL server as configured, for the store or a source.
pub fn pg_target(pg: &crate::config::PostgresSettings) -> crate::pg::Target {
    crate::pg::Target {
        url: pg.url.clone(),
        password_file: pg.password_file.clone(),
        ca_file: pg.ca_file.clone(),
    }
}

/// Whether a command may create the store or only open one that exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreMode {
    /// Create it (with its private directory) when missing: commands that write.
    Create,
    /// Only an existing store: commands that look (nothing is created to answer them).
    Existing,
    /// Only an existing store, opened to read only: nothing of it (file, log, lock files) is
    /// created, migrated, locked or written, so a user who may only read can look.
    ReadOnly,
}

/// The one place a state store is opened: from the configuration's store location (`--state`
/// when given), for every command and the agent alike. `Ok(None)` only with
/// [`StoreMode::Existing`] when there is no store yet.
pub fn store(
    s: &Settings,
    flag: Option<&std::path::Path>,
    mode: StoreMode,
) -> anyhow::Result<Option<(crate::store::Store, crate::store::Location)>> {
    let location = location(s, flag)?;
    // Whether there is a store is the store's to tell (a file, or kfr's schema in a database):
    // only `Create` makes one.
    let store = match mode {
        StoreMode::ReadOnly => crate::store::Store::open_read_only(&location),
        StoreMode::Existing => crate::store::Store::open_existing(&location),
        StoreMode::Create => {
            if let crate::store::Location::Sqlite(path) = &location {
                create_state_dir(path)?;
            }
            crate::store::Store::open(&location).map(Some)
        }
    }
    .map_err(anyhow::Error::new)?;
    Ok(store.map(|store| (store, location)))
}

/// [`store`] for a command that needs one to exist: a usage error naming it otherwise.
pub fn existing_store(
    s: &Settings,
    flag: Option<&std::path::Path>,
) -> anyhow::Result<(crate::store::Store, crate::store::Location)> {
    match store(s, flag, StoreMode::Existing)? {
        Some(found) => Ok(found),
        None => {
            let location = location(s, flag)?;
            let hint = match &location {
                crate::store::Location::Sqlite(_) => {
                    "give the store `kfr sync` uses (--state, or `state` in the configuration)"
                }
                // The database is there, kfr's tables are not: nothing was created in it.
                crate::store::Location::Postgres(_) => {
                    "that database holds no kfr tables: check store.url (or KFR_STORE_URL) names the database `kfr sync` uses; kfr creates its tables there when `kfr sync`, `kfr load` or `kfr store migrate` first runs"
                }
            };
            Err(anyhow::Error::new(
                crate::error::UsageError::new(format!("there is no state store at {location}")).with_hint(hint),
            ))
        }
    }
}

/// [`store`] for a command that writes: created when missing.
pub fn writable_store(
    s: &Settings,
    flag: Option<&std::path::Path>,
) -> anyhow::Result<(crate::store::Store, crate::store::Location)> {
    Ok(store(s, flag, StoreMode::Create)?.expect("Create always opens a store"))
}

/// Creates the missing directories above a state store about to be written, mode 0700 whatever
/// the umask: the store holds identifiers in full (the file itself is made 0600 by the store).
/// Directories that exist already are left as they are (they may be shared on purpose).
pub fn create_state_dir(state: &std::path::Path) -> anyhow::Result<()> {
    let Some(dir) = state.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return Ok(());
    };
    let missing: Vec<&std::path::Path> = dir
        .ancestors()
        .take_while(|d| !d.as_os_str().is_empty() && !d.exists())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        b.mode(0o700);
    }
    b.create(dir)
        .with_context(|| format!("creating the state store's directory {}", dir.display()))?;
    #[cfg(unix)]
    for d in missing {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("making {} private (0700)", d.display()))?;
    }
    Ok(())
}

/// The longest one KFR attempt may take: a token fetch, the request, and the one retry with a
/// fresh token after a 401, each bounded by the connect and request timeouts. A claim on an event
/// outlasts this, so a request always ends inside its claim.
pub fn request_budget(s: &Settings) -> std::time::Duration {
    (s.connect_timeout + s.request_timeout) * 3
}

/// The outgoing HTTP client settings.
pub fn http_config(s: &Settings) -> HttpConfig {
    HttpConfig {
        connect_timeout: s.connect_timeout,
        request_timeout: s.request_timeout,
        // Plain http is only ever allowed against the bundled mock (config refuses it elsewhere);
        // enforcing it in the client too means a stray http:// from discovery cannot slip through.
        https_only: s.env != Environment::Local,
        proxy: s.proxy.clone(),
        extra_ca_bundle: s.extra_ca_bundle.clone(),
    }
}

/// The identifier policy: `allow_synthetic_ids` already defaults from the environment (on except
/// in prod) and either flag can be overridden in configuration.
pub fn id_policy(s: &Settings) -> IdPolicy {
    IdPolicy {
        allow_synthetic: s.allow_synthetic_ids,
        allow_h_numbers: s.allow_h_numbers,
    }
}

/// How one call is retried (`[retry]`).
pub fn retry_policy(s: &Settings) -> RetryPolicy {
    RetryPolicy {
        max_attempts: s.retry.max_attempts,
        base_delay: s.retry.base_delay,
        max_delay: s.retry.max_delay,
        retry_after_cap: s.retry.retry_after_cap,
    }
}

/// The token client's configuration (no certificate loaded yet).
pub fn token_config(s: &Settings) -> anyhow::Result<TokenClientConfig> {
    Ok(TokenClientConfig {
        env: s.env,
        issuer: s.maskinporten_issuer.clone(),
        client_id: s.require_client_id()?.to_string(),
        default_request: TokenRequest {
            scope: s.scope.clone(),
            consumer_org: s.consumer_org.clone(),
            resource: s.resource.clone(),
        },
        x5c: s.x5c,
        kid: s.kid.clone(),
        refresh_ahead: s.token_refresh_ahead,
        retry: retry_policy(s),
    })
}

/// Loads the business certificate and builds the token client.
pub fn token_client(s: &Settings) -> anyhow::Result<TokenClient> {
    let cfg = token_config(s)?;
    let source = s.require_credential()?.clone();
    // Re-read when the files change (issue 21): a renewed certificate needs no restart.
    TokenClient::reloading(crate::http::client(&http_config(s))?, source, cfg)
        .context("cannot load the business certificate")
}

/// The KFR client (and its token client).
pub fn kfr_client(s: &Settings) -> anyhow::Result<KfrClient> {
    let tokens = token_client(s)?;
    let cfg = KfrClientConfig {
        base_url: s.kfr_base_url.clone(),
        org_number: s.require_org_number()?.to_string(),
        retry: retry_policy(s),
        max_batch_bytes: crate::kfr::batch::DEFAULT_MAX_BYTES,
    };
    Ok(KfrClient::new(crate::http::client(&http_config(s))?, tokens, cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(vars: &[(&str, &str)]) -> crate::config::Settings {
        let env = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("kfr.toml");
        std::fs::write(&file, "").unwrap();
        crate::config::Settings::load_from(Some(&file), &env, &Default::default()).unwrap()
    }

    #[test]
    fn policy_follows_the_environment() {
        assert_eq!(id_policy(&settings(&[("KFR_ENV", "prod")])), IdPolicy::prod());
        assert_eq!(id_policy(&settings(&[("KFR_ENV", "test")])), IdPolicy::test());
        assert_eq!(id_policy(&settings(&[("KFR_ENV", "local")])), IdPolicy::test());
    }

    #[test]
    fn policy_can_be_overridden() {
        let p = id_policy(&settings(&[("KFR_ENV", "test"), ("KFR_ALLOW_SYNTHETIC_IDS", "false")]));
        assert_eq!(p, IdPolicy::prod());
        let p = id_policy(&settings(&[("KFR_ENV", "test"), ("KFR_ALLOW_H_NUMBERS", "true")]));
        assert!(p.allow_h_numbers && p.allow_synthetic);
    }
}
