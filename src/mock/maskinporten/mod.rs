//! The fake Maskinporten: discovery metadata (RFC 8414), the JWT-bearer token endpoint (RFC 7523)
//! with Digdir's checks and MP-codes, the JWKS, and the check of access tokens it issued (used by
//! the fake KFR).
//!
//! The checks follow kfr-notes §3 and §9 and are at least as strict as the real service: a client
//! that passes here must not fail there for a reason the mock could have seen. Checks run in a
//! fixed order (documented in docs/mock.md) and the first failure answers 400 with Digdir's body,
//! `{"error": …, "error_description": "… (MP-nnn)"}`. The assertion and the token are never logged.
//!
//! Files by role: `token` the endpoint (form, fault injection, issuing, jti replay); `grant` the
//! grant's checks in their order; `keys` which key signed it and the signature; `x5c` the
//! business certificate (shape, trust, KeyUsage, org.nr). The mock's own signing key lives in
//! [`super::signing`], so the shared state can hold it without importing this module.

mod grant;
mod keys;
mod token;
mod x5c;

use super::signing::{AccessClaims, TokenRejection};
use super::state::{MockState, lock};
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use std::sync::Arc;

/// RFC 7523 grant type, the only one Maskinporten's token endpoint serves here.
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

pub(crate) fn routes() -> Router<Arc<MockState>> {
    Router::new()
        .route("/maskinporten/.well-known/oauth-authorization-server", get(metadata))
        .route("/maskinporten/token", post(token::token))
        .route("/maskinporten/jwks", get(jwks))
}

async fn metadata(State(state): State<Arc<MockState>>) -> Response {
    let mp = &state.mp;
    // Only RS256 is advertised because only RS256 is accepted (kfr-notes §3); the real service
    // lists more, and a client that relies on the list must still send RS256.
    axum::Json(json!({
        "issuer": mp.issuer,
        "token_endpoint": mp.token_endpoint,
        "jwks_uri": mp.jwks_uri,
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "grant_types_supported": [JWT_BEARER],
        "token_endpoint_auth_signing_alg_values_supported": ["RS256"],
    }))
    .into_response()
}

async fn jwks(State(state): State<Arc<MockState>>) -> Response {
    axum::Json(json!({ "keys": [state.mp.key.jwk()] })).into_response()
}

/// A refused token request: HTTP 400 with Digdir's error body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub error: &'static str,
    pub code: &'static str,
    pub description: String,
}

impl Refusal {
    pub(super) fn new(error: &'static str, code: &'static str, description: impl Into<String>) -> Self {
        Self {
            error,
            code,
            description: description.into(),
        }
    }
    pub(super) fn grant(code: &'static str, description: impl Into<String>) -> Self {
        Self::new("invalid_grant", code, description)
    }
    pub(super) fn request(code: &'static str, description: impl Into<String>) -> Self {
        Self::new("invalid_request", code, description)
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let body = json!({
            "error": self.error,
            "error_description": format!("{} ({})", self.description, self.code),
        });
        no_store((StatusCode::BAD_REQUEST, axum::Json(body)).into_response())
    }
}

/// RFC 6749 §5.1: token responses must not be cached.
pub(super) fn no_store(mut resp: Response) -> Response {
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// How a JSON value is named in an error description: short, and never a whole token.
pub(super) fn describe(v: Option<&Value>) -> String {
    match v {
        None => "nothing".into(),
        Some(Value::String(s)) if s.len() <= 80 => format!("{s:?}"),
        Some(Value::String(_)) => "a long string".into(),
        Some(Value::Array(_)) => "an array".into(),
        Some(Value::Object(_)) => "an object".into(),
        Some(Value::Null) => "null".into(),
        Some(other) => other.to_string(),
    }
}

impl MockState {
    /// Checks an access token issued by this mock: RS256 signature with the mock's key, issuer,
    /// and `exp` in the future at the mock's clock. `bearer` is the token itself, without the
    /// `Bearer ` scheme.
    pub fn verify_access_token(&self, bearer: &str) -> Result<AccessClaims, TokenRejection> {
        // The same bytes were verified before: only their expiry can have changed. A real gateway
        // caches too; re-checking the RSA signature on every call was a sixth of the mock's CPU
        // in the sync benchmark (docs/benchmarks.md).
        if let Some(claims) = lock(&self.mp.verified).get(bearer).cloned() {
            let now = self.clock.now_unix();
            if claims.exp <= now {
                return Err(TokenRejection::Expired { exp: claims.exp, now });
            }
            return Ok(claims);
        }
        let claims = self.mp.key.read_token(&self.mp.issuer, bearer, self.clock.now_unix())?;
        let mut verified = lock(&self.mp.verified);
        if verified.len() >= 64 {
            verified.clear();
        }
        verified.insert(bearer.to_string(), claims.clone());
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_body_carries_code_in_description() {
        let resp = Refusal::grant("MP-110", "wrong aud").into_response();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        assert_eq!(resp.headers()[header::CACHE_CONTROL], "no-store");
    }
}
