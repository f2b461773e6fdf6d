//! The JWT-bearer grant (RFC 7523) exactly as Maskinporten wants it (kfr-notes §3, §9).
//!
//! Header: `alg` RS256, `typ` JWT, and either `x5c` (an array of *standard* base64 DER strings,
//! by default the leaf only: the KFR FAQ says no chain) or `kid` for a key pre-registered with
//! Digdir. Claims: `aud` (the issuer, trailing slash included), `iss` (client id), `scope`, `iat`,
//! `exp = iat + 120`, a fresh `jti`, optional `consumer_org` and `resource` — and nothing else,
//! since Maskinporten answers 400 to claims it does not list (e.g. `nbf`).

use super::{Credential, TokenError};
use crate::config::X5cMode;
use base64::Engine as _;
use secrecy::SecretString;

/// Grant lifetime. Maskinporten's maximum; a short 10 s lifetime is a classic source of
/// failures on hosts with a little skew, and there is no benefit in going lower.
pub const GRANT_LIFETIME_SECS: i64 = 120;

/// Everything that goes into a grant besides the key and the clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantParams {
    /// The Maskinporten issuer identifier, used as `aud`.
    pub audience: String,
    pub client_id: String,
    /// Space-separated scopes.
    pub scope: String,
    pub consumer_org: Option<String>,
    pub resource: Option<String>,
    pub x5c: X5cMode,
    pub kid: Option<String>,
}

#[derive(serde::Serialize)]
struct Claims<'a> {
    aud: &'a str,
    iss: &'a str,
    scope: &'a str,
    iat: i64,
    exp: i64,
    jti: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    consumer_org: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resource: Option<&'a str>,
}

/// The `x5c` header value: standard base64 (RFC 7515 §4.1.6 — not base64url) of each DER.
pub fn x5c_value(credential: &Credential, mode: X5cMode) -> Vec<String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut v = vec![b64.encode(credential.leaf_der())];
    if mode == X5cMode::Chain {
        v.extend(credential.chain_der().iter().map(|c| b64.encode(c)));
    }
    v
}

/// Signs a grant. `now` is the (skew-corrected) Unix time in seconds; `jti` must be fresh.
pub fn sign(
    credential: &Credential,
    params: &GrantParams,
    now: i64,
    jti: uuid::Uuid,
) -> Result<SecretString, TokenError> {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    match &params.kid {
        Some(kid) => header.kid = Some(kid.clone()),
        None => header.x5c = Some(x5c_value(credential, params.x5c)),
    }
    let claims = Claims {
        aud: &params.audience,
        iss: &params.client_id,
        scope: &params.scope,
        iat: now,
        exp: now + GRANT_LIFETIME_SECS,
        jti: jti.to_string(),
        consumer_org: params.consumer_org.as_deref(),
        resource: params.resource.as_deref(),
    };
    jsonwebtoken::encode(&header, &claims, credential.encoding_key())
        .map(SecretString::from)
        .map_err(|e| TokenError::Signing(e.to_string()))
}
