//! The outgoing HTTP side shared by the Maskinporten and KFR clients: the one client
//! configuration (rustls with aws-lc-rs, the platform roots plus an optional extra CA bundle,
//! proxy, timeouts, no redirects: a redirected token request would resend the grant to a host we
//! did not configure) and, in [`retry`], the generic retry policy with `Retry-After`; in
//! [`egress`], the route a request takes out (which proxy) and which trust anchors verified a
//! server, for `kfr doctor`.

pub mod egress;
pub mod retry;

pub use retry::{RetryPolicy, parse_retry_after, retry_after};

use anyhow::Context as _;
use std::path::PathBuf;
use std::time::Duration;
use url::Url;

/// `User-Agent` sent on every request, so Bits and Digdir can tell our traffic apart.
pub const USER_AGENT: &str = concat!("kfr/", env!("CARGO_PKG_VERSION"));

/// What the outgoing client needs to know; the CLI builds it from the configuration.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// Refuse plain `http://` (everywhere but the bundled mock).
    pub https_only: bool,
    pub proxy: Option<Url>,
    pub extra_ca_bundle: Option<PathBuf>,
}

/// Builds the client.
pub fn client(settings: &HttpConfig) -> anyhow::Result<reqwest::Client> {
    builder(settings)?.build().context("cannot build the HTTP client")
}

/// The client's builder, for [`egress`]'s probes which vary one setting.
fn builder(settings: &HttpConfig) -> anyhow::Result<reqwest::ClientBuilder> {
    let mut b = reqwest::Client::builder()
        .user_agent(USER_AGENT)
        .connect_timeout(settings.connect_timeout)
        .timeout(settings.request_timeout)
        .redirect(reqwest::redirect::Policy::none())
        // Plain http is only ever allowed against the bundled mock (config refuses it elsewhere);
        // enforcing it here too means a stray http:// from discovery cannot slip through.
        .https_only(settings.https_only);
    if let Some(proxy) = &settings.proxy {
        // The configured proxy replaces the environment's (HTTPS_PROXY, ALL_PROXY), but NO_PROXY
        // still applies: a bank lists its internal hosts there (egress::route says the same).
        let proxy = reqwest::Proxy::all(proxy.as_str())
            .map_err(|_| anyhow::anyhow!("invalid proxy {}", egress::redacted(proxy)))?
            .no_proxy(reqwest::NoProxy::from_env());
        b = b.proxy(proxy);
    }
    if let Some(path) = &settings.extra_ca_bundle {
        b = b.tls_certs_merge(extra_ca_bundle(path)?);
    }
    Ok(b)
}

/// The certificates of `extra_ca_bundle`.
fn extra_ca_bundle(path: &std::path::Path) -> anyhow::Result<Vec<reqwest::Certificate>> {
    let pem = std::fs::read(path).with_context(|| format!("cannot read extra_ca_bundle {}", path.display()))?;
    reqwest::Certificate::from_pem_bundle(&pem)
        .with_context(|| format!("extra_ca_bundle {} is not a PEM certificate bundle", path.display()))
}

/// A reqwest error in words with its whole cause chain (which names e.g. the refused
/// connection), and whether it was a timeout. Never contains request bodies.
pub fn describe(e: &reqwest::Error) -> (String, bool) {
    let mut reason = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        reason.push_str(": ");
        reason.push_str(&s.to_string());
        src = s.source();
    }
    (reason, e.is_timeout())
}
