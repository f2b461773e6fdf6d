//! Token errors, split the way an operator needs them: Maskinporten said no (with its OAuth2
//! `error`, Digdir's MP-code and our hint), the network failed, or the answer did not make sense.
//!
//! Errors are `Clone` because one failed token request is shared by every caller that waited on
//! it (single flight, see [`super::client`]).

use crate::error::Hinted;
use std::time::Duration;
use url::Url;

/// Why a token could not be obtained.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    /// The certificate or key could not be loaded.
    #[error("cannot load the business certificate: {0}")]
    Credential(String),
    /// Maskinporten answered with an OAuth2 error (kfr-notes §3, §9).
    #[error("Maskinporten refused the grant: {error}{}{}{}", .description.as_deref().map(|d| format!(": {d}")).unwrap_or_default(), .mp_code.as_deref().filter(|c| !.description.as_deref().unwrap_or_default().contains(*c)).map(|c| format!(" [{c}]")).unwrap_or_default(), .error_uri.as_deref().map(|u| format!(" (see {u})")).unwrap_or_default())]
    Rejected {
        status: u16,
        error: String,
        description: Option<String>,
        mp_code: Option<String>,
        /// RFC 6749 §5.2 `error_uri`: Digdir's page about this error, shown when present.
        /// Boxed to keep the error (and every `Result` carrying it) small.
        error_uri: Option<Box<str>>,
        env: String,
    },
    /// No HTTP answer: connect failure, timeout, TLS.
    #[error("no answer from {url}: {reason}")]
    Transport { url: String, reason: String, timeout: bool },
    /// An HTTP status without an OAuth2 error body (5xx, 429, an HTML error page, …).
    #[error("{url} answered HTTP {status}{}", if .body.is_empty() { String::new() } else { format!(": {}", .body) })]
    Status {
        url: String,
        status: u16,
        body: String,
        /// The answer's `Retry-After`, either form.
        retry_after: Option<Duration>,
    },
    /// The answer arrived but is not what RFC 8414 / RFC 6749 promise.
    #[error("unexpected answer from {url}: {reason}")]
    InvalidResponse { url: String, reason: String },
    /// The discovery document names another issuer than the one configured.
    #[error("the discovery document at {url} names issuer {discovered:?}, but the configured issuer is {configured:?}")]
    IssuerMismatch {
        url: String,
        configured: String,
        discovered: String,
    },
    /// Signing the grant failed (a key the signer cannot use).
    #[error("cannot sign the grant: {0}")]
    Signing(String),
}

impl TokenError {
    /// Worth retrying with backoff: the request may succeed unchanged (kfr-notes §3: only
    /// transient failures are retried; a refused grant is final).
    pub fn is_transient(&self) -> bool {
        match self {
            TokenError::Transport { .. } => true,
            TokenError::Status { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }

    /// Maskinporten asked us to slow down (429).
    pub fn is_rate_limited(&self) -> bool {
        matches!(self, TokenError::Status { status: 429, .. })
    }

    /// The server's `Retry-After`, when the answer had one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            TokenError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Digdir's MP-code, when the refusal carried one.
    pub fn mp_code(&self) -> Option<&str> {
        match self {
            TokenError::Rejected { mp_code, .. } => mp_code.as_deref(),
            _ => None,
        }
    }

    /// The grant was refused because of its time claims (the clock-skew family): MP-130, or,
    /// without any MP-code, a description about the grant's times (Maskinporten has answered
    /// "Issue time is after now" without a code). Another MP-code names another cause, so the
    /// words alone do not count then ("certificate expired" is MP-120, not a clock problem).
    pub fn is_clock_problem(&self) -> bool {
        match self {
            TokenError::Rejected {
                mp_code, description, ..
            } => match mp_code.as_deref() {
                Some(code) => code == "MP-130",
                None => description.as_deref().is_some_and(|d| {
                    let d = d.to_ascii_lowercase();
                    [
                        "iat",
                        "clock",
                        "issue time",
                        "issued at",
                        "expired",
                        "not yet valid",
                        "exp ",
                    ]
                    .iter()
                    .any(|w| d.contains(w))
                }),
            },
            _ => false,
        }
    }

    /// An `invalid_grant` without an MP-code: with a clock offset measured at the same time,
    /// the likeliest cause is the grant's time claims, whatever the description says.
    pub fn is_uncoded_invalid_grant(&self) -> bool {
        matches!(self, TokenError::Rejected { error, mp_code: None, .. } if error == "invalid_grant")
    }
}

/// Finds `MP-` followed by three digits anywhere in an error description.
pub fn find_mp_code(description: &str) -> Option<String> {
    let b = description.as_bytes();
    (0..b.len().saturating_sub(5)).find_map(|i| {
        let cand = &b[i..i + 6];
        (cand.starts_with(b"MP-")
            && cand[3..].iter().all(u8::is_ascii_digit)
            && b.get(i + 6).is_none_or(|c| !c.is_ascii_digit()))
        .then(|| String::from_utf8_lossy(cand).into_owned())
    })
}

impl Hinted for TokenError {
    fn hint(&self) -> Option<String> {
        Some(match self {
            TokenError::Credential(_) => "check `certificate` and its password (see `kfr doctor`)".into(),
            TokenError::Rejected {
                error,
                mp_code,
                env,
                description,
                ..
            } => {
                return Some(rejection_hint(
                    error,
                    mp_code.as_deref(),
                    description.as_deref().unwrap_or_default(),
                    env,
                ));
            }
            TokenError::Transport { timeout: true, .. } => {
                "Maskinporten did not answer in time; raise request_timeout_secs or check the network path/proxy".into()
            }
            TokenError::Transport { .. } => {
                "check network access to the Maskinporten issuer (firewall, `proxy`, DNS); `kfr doctor` tests it".into()
            }
            TokenError::Status { status: 429, .. } => {
                "Maskinporten is rate limiting this client; try again later".into()
            }
            TokenError::Status { status, .. } if *status >= 500 => {
                "Maskinporten had a server error; it was retried. Check https://status.digdir.no and try again".into()
            }
            TokenError::Status { .. } | TokenError::InvalidResponse { .. } => {
                "is `maskinporten_issuer` the Maskinporten issuer URL (with its trailing slash)?".into()
            }
            TokenError::IssuerMismatch { .. } => {
                "set `maskinporten_issuer` exactly as the issuer in the discovery document; it is also the grant's aud"
                    .into()
            }
            TokenError::Signing(_) => "the key must be an RSA key (Maskinporten grants are RS256)".into(),
        })
    }
}

/// What the operator should do about a refusal, by MP-code first and OAuth2 error second
/// (kfr-notes §9 lists the codes).
fn rejection_hint(error: &str, mp_code: Option<&str>, description: &str, env: &str) -> String {
    let d = description.to_ascii_lowercase();
    match mp_code {
        Some("MP-120") if d.contains("expired") => {
            "the business certificate has expired: order a new one (certs/README.md) and update `certificate`".into()
        }
        Some("MP-120") if d.contains("trusted") && env == "local" => {
            "the mock does not trust the CA that issued this certificate: start `kfr mock --trust <ca.pem>` with the ca.pem written next to this kfr.toml by `kfr certs local`".into()
        }
        Some("MP-120") if d.contains("trusted") => format!(
            "Maskinporten in env {env} does not trust the certificate's issuer: use a {} business certificate from Buypass or Commfides",
            if env == "prod" { "production" } else { "test" }
        ),
        Some("MP-100") => format!(
            "client_id is not known to Maskinporten in env {env}: clients are per environment; copy the id from Digdir's self-service for {env}"
        ),
        Some("MP-110") => "the grant's aud must equal the issuer exactly, trailing slash included: check `maskinporten_issuer`".into(),
        Some("MP-120") | Some("MP-124") => format!(
            "the certificate or its signature was refused: a test certificate only works against env test and a production one only against prod (env is {env}); also check it has not expired and that key and certificate belong together"
        ),
        Some("MP-122") => "the certificate's organisation number is not the owner of this client: use the certificate of the organisation that registered client_id".into(),
        Some("MP-123") => "x5c must be a JSON array of base64 DER certificates; this is a client bug, please report it".into(),
        Some("MP-130") => "the grant's iat/exp were outside Maskinporten's window: synchronise this host's clock (NTP); `kfr doctor` shows the measured offset".into(),
        Some("MP-012") => "a grant id (jti) was reused; each request must use a fresh grant. If this repeats, report it".into(),
        Some("MP-200") => "the scope is not registered on this Maskinporten client: add bits:kundeforhold.write to the client in Digdir's self-service (Bits must have granted it to your organisation first)".into(),
        Some("MP-201") => "the scope may not be used by this kind of client (integration type): create a Maskinporten client in Digdir's self-service and use its client_id".into(),
        Some("MP-250") => "Bits has not granted bits:kundeforhold.write to your organisation yet: ask Bits to give your organisation access to the scope (usual for a new institution)".into(),
        Some("MP-251") => "the organisation in consumer_org has not delegated the scope to yours in Altinn: have it delegate the scope, or remove consumer_org to act for your own organisation".into(),
        _ => match error {
            "invalid_client" => format!("client_id is not a valid Maskinporten client in env {env}"),
            "invalid_scope" => "the requested scope is not granted to this client (check `scope` and the client's scopes in Digdir's self-service)".into(),
            "invalid_grant" => format!(
                "the grant was refused: check the certificate (test vs prod for env {env}, expiry), client_id, and the host clock; `kfr doctor` checks all three"
            ),
            _ => "see Maskinporten's error description above; `kfr doctor` checks the usual causes".into(),
        },
    }
}

// Reading a failed HTTP exchange as a token error: shared by the token request (`client`) and
// the metadata fetch (`discovery`), so it lives here rather than in either.

/// `Retry-After` of an answer, in either form (see [`crate::http::retry_after`]).
pub(crate) fn retry_after(resp: &reqwest::Response) -> Option<Duration> {
    crate::http::retry_after(resp.headers())
}

/// A transport failure as a token error.
pub(crate) fn transport_error(url: &Url, e: &reqwest::Error) -> TokenError {
    let (reason, timeout) = crate::http::describe(e);
    TokenError::Transport {
        url: url.to_string(),
        reason,
        timeout,
    }
}

/// An answer's body cut to a length that fits an error message.
pub(super) fn truncate(mut body: String) -> String {
    const MAX: usize = 300;
    if body.len() > MAX {
        let cut = (0..=MAX).rev().find(|i| body.is_char_boundary(*i)).unwrap_or(0);
        body.truncate(cut);
        body.push('…');
    }
    body.trim().to_string()
}

/// The body of an unexpected answer, short enough for an error message.
pub(crate) async fn short_body(resp: reqwest::Response) -> String {
    truncate(resp.text().await.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected(error: &str, description: &str) -> TokenError {
        TokenError::Rejected {
            status: 400,
            error: error.into(),
            description: Some(description.into()),
            mp_code: find_mp_code(description),
            error_uri: None,
            env: "test".into(),
        }
    }

    #[test]
    fn finds_mp_codes_in_descriptions() {
        assert_eq!(find_mp_code("Invalid assertion (MP-130)").as_deref(), Some("MP-130"));
        assert_eq!(find_mp_code("MP-012: jti reused").as_deref(), Some("MP-012"));
        assert_eq!(find_mp_code("nothing here"), None);
        assert_eq!(find_mp_code("MP-12 too short"), None);
        assert_eq!(find_mp_code("MP-1234 too long"), None);
    }

    /// Each MP-code kfr-notes §9 lists maps to a hint that names what to change.
    #[test]
    fn each_mp_code_maps_to_its_hint() {
        let cases = [
            ("invalid_client", "MP-100", "not known to Maskinporten in env test"),
            ("invalid_grant", "MP-110", "aud must equal the issuer"),
            (
                "invalid_grant",
                "MP-120",
                "test certificate only works against env test",
            ),
            (
                "invalid_grant",
                "MP-124",
                "test certificate only works against env test",
            ),
            ("invalid_grant", "MP-122", "organisation number is not the owner"),
            ("invalid_request", "MP-123", "JSON array"),
            ("invalid_grant", "MP-130", "synchronise this host's clock"),
            ("invalid_grant", "MP-012", "jti"),
            ("invalid_scope", "MP-200", "add bits:kundeforhold.write to the client"),
            ("invalid_scope", "MP-201", "create a Maskinporten client"),
            ("invalid_scope", "MP-250", "ask Bits"),
            ("invalid_grant", "MP-251", "delegate the scope"),
        ];
        for (error, code, expect) in cases {
            let e = rejected(error, &format!("refused ({code})"));
            assert_eq!(e.mp_code(), Some(code));
            let hint = e.hint().unwrap();
            assert!(hint.contains(expect), "{code}: {hint}");
            assert!(!e.is_transient());
        }
        // MP-120 is refined by what the description says.
        let hint = |d: &str, env: &str| {
            let mut e = rejected("invalid_grant", d);
            if let TokenError::Rejected { env: e_env, .. } = &mut e {
                *e_env = env.into();
            }
            e.hint().unwrap()
        };
        assert!(hint("certificate expired (MP-120)", "test").contains("has expired"));
        assert!(hint("certificate is not issued by a trusted CA (MP-120)", "local").contains("kfr mock --trust"));
        assert!(
            hint("certificate is not issued by a trusted CA (MP-120)", "prod")
                .contains("production business certificate")
        );
        // The code is not repeated when the description already carries it.
        assert_eq!(
            rejected("invalid_grant", "bad (MP-120)").to_string(),
            "Maskinporten refused the grant: invalid_grant: bad (MP-120)"
        );
        // Without a code the OAuth2 error still gives direction.
        assert!(rejected("invalid_scope", "no").hint().unwrap().contains("scope"));
        assert!(rejected("invalid_grant", "bad clock: iat too far").is_clock_problem());
    }

    #[test]
    fn transient_classification() {
        let s = |status| TokenError::Status {
            url: "u".into(),
            status,
            body: String::new(),
            retry_after: None,
        };
        assert!(s(500).is_transient() && s(503).is_transient() && s(429).is_transient());
        assert!(!s(404).is_transient());
        assert!(
            TokenError::Transport {
                url: "u".into(),
                reason: "refused".into(),
                timeout: false
            }
            .is_transient()
        );
    }

    #[test]
    fn long_bodies_are_cut() {
        assert_eq!(truncate("ø".repeat(400)).chars().count(), 151);
    }
}
