//! The way out of the bank, as `kfr doctor` reports it: which proxy a request to a URL goes
//! through, and which trust anchors verified the server at the other end.
//!
//! - [`route`] decides the proxy exactly as the client does (both use hyper-util's proxy
//!   matcher): the configured `proxy` when set, otherwise the environment's `HTTPS_PROXY` /
//!   `ALL_PROXY` (`HTTP_PROXY` for http://); `NO_PROXY` exempts hosts either way. A proxy's
//!   password is never shown ([`redacted`]).
//! - [`verified_by`] makes one request with the configured client and, when that succeeds, asks
//!   again with only the system roots and with only `extra_ca_bundle`, so the answer ("the system
//!   roots" or "extra_ca_bundle") is what rustls itself accepted, whatever intermediates the
//!   server sent. Behind a TLS-inspecting proxy it is the bank's CA, in `extra_ca_bundle`, that
//!   verifies; the leaf's issuer is reported too (from one more handshake that only records the
//!   certificate), so the operator sees whose certificate it was.

use super::HttpConfig;
use hyper_util::client::proxy::matcher::Matcher;
use url::Url;

/// Where a proxy came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxySource {
    /// The `proxy` setting.
    Configured,
    /// `HTTPS_PROXY`, `ALL_PROXY` or `HTTP_PROXY` in the environment.
    Environment,
}

/// How a request to one URL leaves this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Through a proxy, shown without its password.
    Proxy { shown: String, source: ProxySource },
    /// Straight to the server: a proxy exists but `NO_PROXY` names the host.
    DirectNoProxy { host: String },
    /// Straight to the server: no proxy is configured or in the environment.
    Direct,
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Route::Proxy {
                shown,
                source: ProxySource::Configured,
            } => write!(f, "via proxy {shown} (the `proxy` setting)"),
            Route::Proxy {
                shown,
                source: ProxySource::Environment,
            } => write!(f, "via proxy {shown} (from the environment)"),
            Route::DirectNoProxy { host } => write!(f, "direct: NO_PROXY names {host}"),
            Route::Direct => write!(f, "direct: no `proxy` setting and no HTTPS_PROXY/ALL_PROXY"),
        }
    }
}

/// `NO_PROXY` (or `no_proxy`), as reqwest reads it.
fn no_proxy_env() -> String {
    std::env::var("NO_PROXY")
        .or_else(|_| std::env::var("no_proxy"))
        .unwrap_or_default()
}

/// The proxy of the environment for `scheme`, read as hyper-util reads it: the first of the
/// scheme's pair that is set (`HTTPS_PROXY`, `https_proxy`), if it is a URL, else the first of
/// `ALL_PROXY`, `all_proxy` that is set.
fn env_proxy(scheme: &str) -> Option<String> {
    let first_set = |names: [&str; 2]| names.iter().find_map(|n| std::env::var(n).ok());
    let usable = |v: String| v.parse::<http::Uri>().is_ok_and(|u| u.host().is_some()).then_some(v);
    let own = match scheme {
        "https" => first_set(["HTTPS_PROXY", "https_proxy"]),
        _ => first_set(["HTTP_PROXY", "http_proxy"]),
    };
    own.and_then(usable)
        .or_else(|| first_set(["ALL_PROXY", "all_proxy"]).and_then(usable))
}

/// Which way a request to `url` takes with these settings.
pub fn route(settings: &HttpConfig, url: &Url) -> Route {
    let Ok(uri) = url.as_str().parse::<http::Uri>() else {
        return Route::Direct;
    };
    let host = url.host_str().unwrap_or_default().to_string();
    let (matcher, source, named) = match &settings.proxy {
        Some(p) => (
            Matcher::builder().all(p.to_string()).no(no_proxy_env()).build(),
            ProxySource::Configured,
            Some(p.to_string()),
        ),
        None => (
            Matcher::from_system(),
            ProxySource::Environment,
            env_proxy(url.scheme()),
        ),
    };
    match (matcher.intercept(&uri), named) {
        (Some(_), Some(named)) => Route::Proxy {
            shown: shown(&named),
            source,
        },
        // Intercepted by a system setting we cannot name (not on Linux): say what the matcher has.
        (Some(i), None) => Route::Proxy {
            shown: i.uri().to_string(),
            source,
        },
        (None, Some(_)) => Route::DirectNoProxy { host },
        (None, None) => Route::Direct,
    }
}

/// A proxy URL as shown to the operator: its password replaced.
fn shown(proxy: &str) -> String {
    match Url::parse(proxy) {
        Ok(u) => redacted(&u),
        // Never echo what we cannot parse: it may hold a password in a form we do not recognise.
        Err(_) => "(an unparsable proxy URL, not shown)".into(),
    }
}

/// `url` with its password, if any, replaced by `redacted` (`http://ops:redacted@proxy:3128/`).
pub fn redacted(url: &Url) -> String {
    let mut u = url.clone();
    if u.password().is_some() {
        let _ = u.set_password(Some("redacted"));
    }
    u.to_string()
}

/// A proxy setting as text, its password replaced even when the text is not a valid URL (a
/// configuration error quotes the value it refuses): everything between `://` and the last `@`
/// of the authority is credentials.
pub fn redacted_text(value: &str) -> String {
    // Not `Url::parse`: `ops:s3cret@proxy:3128` parses, as scheme `ops` with no password.
    let start = value.find("://").map_or(0, |i| i + 3);
    let authority_end = value[start..].find('/').map_or(value.len(), |i| start + i);
    match value[start..authority_end].rfind('@') {
        Some(at) => {
            let userinfo = &value[start..start + at];
            let shown = match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:redacted"),
                None => "redacted".into(),
            };
            format!("{}{shown}{}", &value[..start], &value[start + at..])
        }
        None => value.to_string(),
    }
}

/// Which trust anchors verified a server's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// Plain http (the bundled mock without TLS): nothing to verify.
    PlainHttp,
    /// The operating system's roots (`SSL_CERT_FILE`/`SSL_CERT_DIR` where set).
    SystemRoots,
    /// A CA in `extra_ca_bundle`, and not the system roots.
    ExtraCaBundle(std::path::PathBuf),
    /// Neither alone, only both together (e.g. an intermediate in one, the root in the other).
    Both,
}

/// What [`verified_by`] found.
#[derive(Debug, Clone)]
pub struct TlsCheck {
    pub trust: Trust,
    /// The issuer of the certificate the server (or a proxy inspecting TLS) showed.
    pub issuer: Option<String>,
}

/// One request to `url` with the configured client; on success, which anchors verified it. The
/// error is the configured client's, in words ([`super::describe`]). The answer's status does not
/// matter: a 404 still completed the TLS handshake.
pub async fn verified_by(settings: &HttpConfig, url: &Url) -> Result<TlsCheck, String> {
    let probe = |b: reqwest::ClientBuilder| async move {
        let client = b.build().map_err(|e| super::describe(&e).0)?;
        client
            .get(url.clone())
            .send()
            .await
            .map_err(|e| super::describe(&e).0)?;
        Ok::<_, String>(())
    };
    let configured = super::builder(settings).map_err(|e| format!("{e:#}"))?;
    probe(configured).await?;
    if url.scheme() != "https" {
        return Ok(TlsCheck {
            trust: Trust::PlainHttp,
            issuer: None,
        });
    }
    let issuer = presented_issuer(settings, url).await;
    let Some(bundle) = &settings.extra_ca_bundle else {
        return Ok(TlsCheck {
            trust: Trust::SystemRoots,
            issuer,
        });
    };
    let without_bundle = HttpConfig {
        extra_ca_bundle: None,
        ..settings.clone()
    };
    let system = super::builder(&without_bundle).map_err(|e| format!("{e:#}"))?;
    if probe(system).await.is_ok() {
        return Ok(TlsCheck {
            trust: Trust::SystemRoots,
            issuer,
        });
    }
    let only_bundle = super::builder(&without_bundle)
        .and_then(|b| Ok(b.tls_certs_only(super::extra_ca_bundle(bundle)?)))
        .map_err(|e| format!("{e:#}"))?;
    let trust = match probe(only_bundle).await {
        Ok(_) => Trust::ExtraCaBundle(bundle.clone()),
        Err(_) => Trust::Both,
    };
    Ok(TlsCheck { trust, issuer })
}

/// The issuer of the certificate shown to a client at `url`, by the same route (so behind a
/// TLS-inspecting proxy, the proxy's). reqwest reports no peer certificate for a connection
/// through a proxy, so this handshake uses a verifier that records the certificate and then
/// refuses it: nothing is sent, whatever the certificate.
async fn presented_issuer(settings: &HttpConfig, url: &Url) -> Option<String> {
    use tokio_rustls::rustls;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let recorder = Arc::new(Recorder {
        seen: std::sync::Mutex::new(None),
        schemes: provider.signature_verification_algorithms.supported_schemes(),
    });
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .ok()?
        .dangerous()
        .with_custom_certificate_verifier(recorder.clone())
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let without_bundle = HttpConfig {
        extra_ca_bundle: None,
        ..settings.clone()
    };
    let client = super::builder(&without_bundle)
        .ok()?
        .tls_backend_preconfigured(tls)
        .build()
        .ok()?;
    let _refused = client.get(url.clone()).send().await;
    let der = recorder.seen.lock().ok()?.take()?;
    issuer_of(&der)
}

use std::sync::Arc;
use tokio_rustls::rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{DigitallySignedStruct, Error as TlsError, SignatureScheme};

/// Records the server's certificate and refuses it (see [`presented_issuer`]).
#[derive(Debug)]
struct Recorder {
    seen: std::sync::Mutex<Option<Vec<u8>>>,
    schemes: Vec<SignatureScheme>,
}

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        if let Ok(mut seen) = self.seen.lock() {
            *seen = Some(end_entity.to_vec());
        }
        Err(TlsError::General("certificate recorded, not trusted".into()))
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        Err(TlsError::General("not trusted".into()))
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        Err(TlsError::General("not trusted".into()))
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes.clone()
    }
}

/// The issuer's distinguished name of a DER certificate.
fn issuer_of(der: &[u8]) -> Option<String> {
    use x509_parser::prelude::FromDer as _;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).ok()?;
    Some(cert.issuer().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn settings(proxy: Option<&str>) -> HttpConfig {
        HttpConfig {
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(1),
            https_only: true,
            proxy: proxy.map(|p| Url::parse(p).unwrap()),
            extra_ca_bundle: None,
        }
    }

    #[test]
    fn a_configured_proxy_is_named_without_its_password() {
        let s = settings(Some("http://ops:s3cret@proxy.bank.example:3128"));
        let r = route(&s, &Url::parse("https://kfr.example/kar-ws/api/v1").unwrap());
        assert_eq!(
            r,
            Route::Proxy {
                shown: "http://ops:redacted@proxy.bank.example:3128/".into(),
                source: ProxySource::Configured
            }
        );
        assert!(!r.to_string().contains("s3cret"), "{r}");
    }

    #[test]
    fn a_proxy_value_that_is_no_url_still_loses_its_password() {
        for (value, shown) in [
            ("http://ops:s3cret@[::1", "http://ops:redacted@[::1"),
            ("http://ops:s3cret@proxy:99999/", "http://ops:redacted@proxy:99999/"),
            ("ops:s3cret@proxy:3128", "ops:redacted@proxy:3128"),
            ("http://t0ken@proxy:x", "http://redacted@proxy:x"),
            ("http://proxy:x/a@b", "http://proxy:x/a@b"),
        ] {
            assert_eq!(redacted_text(value), shown);
        }
    }
}
