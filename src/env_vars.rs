//! Every environment variable `kfr` reads, in one place, so the documentation and the code agree.
//!
//! Configuration keys map to `KFR_<KEY>` (upper case); see [`crate::config`] and
//! `docs/configuration.md`. The variables below are the ones with a special role.

/// Path of the configuration file (same as `--config`).
pub const KFR_CONFIG: &str = "KFR_CONFIG";
/// Where the installation's configuration file is (default `/etc/kfr/kfr.toml`); empty: none.
/// For tests and for packagers who install elsewhere; operators use the default.
pub const KFR_SYSTEM_CONFIG: &str = "KFR_SYSTEM_CONFIG";
/// Password of the PKCS#12 file or of the encrypted PKCS#8 key. Never accepted as a flag.
pub const KFR_CERTIFICATE_PASSWORD: &str = "KFR_CERTIFICATE_PASSWORD";
/// Log filter (tracing `EnvFilter` syntax), e.g. `kfr=debug`. Overrides `-v`.
pub const KFR_LOG: &str = "KFR_LOG";
/// Log format: `text` (default) or `json`.
pub const KFR_LOG_FORMAT: &str = "KFR_LOG_FORMAT";
/// Disables colour in terminal output when set to any value (https://no-color.org).
pub const NO_COLOR: &str = "NO_COLOR";
/// Prefix of the per-key configuration variables (`KFR_ORG_NUMBER`, `KFR_CLIENT_ID`, …).
pub const CONFIG_PREFIX: &str = "KFR_";
/// Test-only: abort `kfr load` at a named stage (`planned`, `uploading`, `sent`, `accepted`,
/// `confirmed`, `deletes`, optionally `:N` for batch N) to rehearse `kill -9` and `--resume`.
/// Never set in production.
pub const KFR_TEST_ABORT_AT: &str = "KFR_TEST_ABORT_AT";
/// Directory for `kfr`'s per-installation state: the default pseudonym key and the default state
/// store (`kfr-state.db`, which holds the delete barrier of onboarding D-3).
/// Default `$XDG_STATE_HOME/kfr`, else `$HOME/.local/state/kfr`.
pub const KFR_STATE_HOME: &str = "KFR_STATE_HOME";
/// XDG base directory for state; `kfr` uses `$XDG_STATE_HOME/kfr` when `KFR_STATE_HOME` is unset.
pub const XDG_STATE_HOME: &str = "XDG_STATE_HOME";

use std::path::PathBuf;

/// The directory for `kfr`'s per-installation state (the pseudonym key, the default state store): `$KFR_STATE_HOME`, else `$XDG_STATE_HOME/kfr`, else
/// `$HOME/.local/state/kfr` (XDG base directory layout). `var` reads the environment.
pub fn state_home(var: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    let get = |k: &str| var(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    get(KFR_STATE_HOME)
        .or_else(|| get(XDG_STATE_HOME).map(|d| d.join("kfr")))
        .or_else(|| get("HOME").map(|h| h.join(".local/state/kfr")))
}
