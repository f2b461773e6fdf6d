//! The fake Maskinporten: discovery metadata (RFC 8414), the JWT-bearer token endpoint (RFC 7523)
//! with Digdir's checks and MP-codes, the JWKS, and the check of access tokens it issued (used by
//! the fake KFR).
//!
//! The checks follow kfr-notes §3 and §9 and are at least as strict as the real service: a client
//! that passes here must not fail there for a reason the mock could have seen. Checks run in a
//! fixed order (documented in docs/mock.md) and the first failure answers 400 with Digdir's body,
//! `{"error": …, "error_description": "… (MP-nnn)"}`. The assertion and the token are never logged.

use super::config::{ClientKeys, DEFAULT_SCOPE, is_org_number};
use super::state::{MockState, lock};
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::KeyPair as _;
use aws_lc_rs::signature::{ParsedPublicKey, RSA_PKCS1_2048_8192_SHA256, RSA_PKCS1_SHA256};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use serde_json::{Map, Value, json};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// RFC 7523 grant type, the only one Maskinporten's token endpoint serves here.
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// Claims Digdir lists for a grant (kfr-notes §9: unknown claims such as `nbf` are refused).
/// `client_amr` is deliberately absent: Maskinporten puts it in access tokens, it is not a grant
/// claim, and a mock that is stricter than the service costs nothing.
const ALLOWED_CLAIMS: [&str; 8] = ["aud", "iss", "scope", "iat", "exp", "jti", "resource", "consumer_org"];

/// `exp - iat` may not exceed this (kfr-notes §3).
const MAX_GRANT_LIFETIME_SECS: i64 = 120;

/// `iat` must be less than this far from the Maskinporten clock either way (Digdir's grant page).
const MAX_IAT_OFFSET_SECS: i64 = 10;

/// OID 2.5.4.5 (serialNumber): where Norwegian business certificates carry the org.nr.
const OID_SERIAL_NUMBER: &[u64] = &[2, 5, 4, 5];
/// OID 2.5.4.97 (organizationIdentifier): newer (eIDAS-style) certificates say `NTRNO-<org.nr>`.
const OID_ORGANIZATION_IDENTIFIER: &[u64] = &[2, 5, 4, 97];

pub(crate) fn routes() -> Router<Arc<MockState>> {
    Router::new()
        .route("/maskinporten/.well-known/oauth-authorization-server", get(metadata))
        .route("/maskinporten/token", post(token))
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
    fn new(error: &'static str, code: &'static str, description: impl Into<String>) -> Self {
        Self {
            error,
            code,
            description: description.into(),
        }
    }
    fn grant(code: &'static str, description: impl Into<String>) -> Self {
        Self::new("invalid_grant", code, description)
    }
    fn request(code: &'static str, description: impl Into<String>) -> Self {
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
fn no_store(mut resp: Response) -> Response {
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn injected(status: StatusCode, error: &str) -> Response {
    let body = json!({ "error": error, "error_description": "fault injected by kfr mock" });
    no_store((status, axum::Json(body)).into_response())
}

async fn token(State(state): State<Arc<MockState>>, headers: HeaderMap, body: Bytes) -> Response {
    let stats = &state.mp.stats;
    // 1-based number of this request since start or reset; `fail_first` is counted against it.
    let number = stats.requests.fetch_add(1, Ordering::Relaxed) + 1;
    let faults = state.token_faults();
    if faults.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(faults.latency_ms)).await;
    }
    if number <= u64::from(faults.fail_first) {
        stats.faults_injected.fetch_add(1, Ordering::Relaxed);
        tracing::info!(number, "token request: injected 503");
        return injected(StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable");
    }
    if faults.fail_rate > 0.0 && rand::random::<f64>() < faults.fail_rate {
        stats.faults_injected.fetch_add(1, Ordering::Relaxed);
        tracing::info!(number, "token request: injected 500");
        return injected(StatusCode::INTERNAL_SERVER_ERROR, "server_error");
    }
    match handle_token_request(&state, &headers, &body) {
        Ok(issued) => {
            stats.issued.fetch_add(1, Ordering::Relaxed);
            tracing::info!(client_id = %issued.client_id, scope = %issued.scope, "token issued");
            no_store(
                axum::Json(json!({
                    "access_token": issued.access_token,
                    "token_type": "Bearer",
                    "expires_in": issued.lifetime_secs,
                    "scope": issued.scope,
                }))
                .into_response(),
            )
        }
        Err(refusal) => {
            *lock(&stats.errors).entry(refusal.code).or_default() += 1;
            tracing::info!(error = refusal.error, code = refusal.code, description = %refusal.description, "token request refused");
            refusal.into_response()
        }
    }
}

struct Issued {
    access_token: String,
    client_id: String,
    scope: String,
    lifetime_secs: u64,
}

fn handle_token_request(state: &MockState, headers: &HeaderMap, body: &[u8]) -> Result<Issued, Refusal> {
    let assertion = read_form(headers, body)?;
    let now = state.clock.now_unix();
    let grant = check_grant(state, &assertion, now)?;
    // `token_refuse` judges after every check, so a grant that is wrong in itself still gets its
    // own code; the refused grant's jti is not remembered (it obtained no token).
    if state.token_refuse() {
        return Err(Refusal::new(
            "invalid_client",
            "MP-100",
            format!("client {:?} is refused (kfr mock: token_refuse is on)", grant.client_id),
        ));
    }
    remember_jti(state, &grant.jti, grant.exp, now)?;

    let mp = &state.mp;
    let lifetime_secs = grant.expires_in.unwrap_or(mp.token_lifetime_secs);
    let consumer = grant.consumer_org.as_deref().unwrap_or(&grant.cert_org);
    let scope = grant.scopes.join(" ");
    let mut claims = json!({
        "iss": mp.issuer,
        "client_id": grant.client_id,
        "client_amr": "virksomhetssertifikat",
        "token_type": "Bearer",
        "scope": scope,
        "consumer": iso6523(consumer),
        "iat": now,
        "exp": now.saturating_add(i64::try_from(lifetime_secs).unwrap_or(i64::MAX)),
        "jti": uuid::Uuid::new_v4().to_string(),
    });
    if grant.consumer_org.is_some() {
        // Delegation: the certificate holder acts as supplier for the consumer organisation.
        claims["supplier"] = iso6523(&grant.cert_org);
    }
    if let Some(resource) = grant.resource {
        // One audience is a string in the token, several an array (RFC 7519 §4.1.3).
        claims["aud"] = match resource {
            Value::Array(mut rs) if rs.len() == 1 => rs.remove(0),
            other => other,
        };
    }
    Ok(Issued {
        access_token: mp.key.sign_jwt(&claims),
        client_id: grant.client_id,
        scope,
        lifetime_secs,
    })
}

/// Maskinporten's shape for an organisation in tokens.
fn iso6523(org: &str) -> Value {
    json!({ "authority": "iso6523-actorid-upis", "ID": format!("0192:{org}") })
}

/// Checks content type and form parameters; returns the assertion.
fn read_form(headers: &HeaderMap, body: &[u8]) -> Result<String, Refusal> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = content_type.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        return Err(Refusal::request(
            "MP-001",
            format!("Content-Type must be application/x-www-form-urlencoded, got {content_type:?}"),
        ));
    }
    let mut grant_types = Vec::new();
    let mut assertions = Vec::new();
    for (k, v) in url::form_urlencoded::parse(body) {
        match &*k {
            "grant_type" => grant_types.push(v.into_owned()),
            "assertion" => assertions.push(v.into_owned()),
            _ => {}
        }
    }
    match grant_types.as_slice() {
        [] => return Err(Refusal::request("MP-001", "grant_type is missing")),
        [g] if g == JWT_BEARER => {}
        [g] => {
            return Err(Refusal::new(
                "unsupported_grant_type",
                "MP-001",
                format!("grant_type {g:?} is not supported; use {JWT_BEARER}"),
            ));
        }
        _ => return Err(Refusal::request("MP-001", "grant_type is given more than once")),
    }
    match assertions.as_mut_slice() {
        [a] if !a.is_empty() => Ok(std::mem::take(a)),
        [] | [_] => Err(Refusal::request("MP-001", "assertion is missing")),
        _ => Err(Refusal::request("MP-001", "assertion is given more than once")),
    }
}

/// A grant that passed every check.
#[derive(Debug)]
pub(crate) struct Grant {
    pub client_id: String,
    pub scopes: Vec<String>,
    pub cert_org: String,
    pub consumer_org: Option<String>,
    pub resource: Option<Value>,
    pub jti: String,
    pub exp: i64,
    /// The client's own token lifetime, when registered with one.
    pub expires_in: Option<u64>,
}

/// One compact-JWS segment decoded as a JSON object. Base64url without padding, as RFC 7515 says.
fn json_segment(segment: &str, what: &str) -> Result<Map<String, Value>, Refusal> {
    let bytes = URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| Refusal::grant("MP-002", format!("assertion {what} is not base64url")))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(Refusal::grant(
            "MP-002",
            format!("assertion {what} is not a JSON object"),
        )),
    }
}

/// Every check of the grant except jti uniqueness, in the documented order. `now` is the mock
/// clock in seconds.
pub(crate) fn check_grant(state: &MockState, assertion: &str, now: i64) -> Result<Grant, Refusal> {
    let mp = &state.mp;

    // Structure: header.payload.signature.
    let segments: Vec<&str> = assertion.split('.').collect();
    let [h, p, s] = segments[..] else {
        return Err(Refusal::grant(
            "MP-002",
            "assertion is not a compact JWS (header.payload.signature)",
        ));
    };
    let header = json_segment(h, "header")?;
    let claims = json_segment(p, "payload")?;
    let signature = URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| Refusal::grant("MP-124", "assertion signature is not base64url"))?;

    // Header: alg, then where the key comes from.
    match header.get("alg") {
        Some(Value::String(alg)) if alg == "RS256" => {}
        other => {
            return Err(Refusal::grant(
                "MP-124",
                format!("header alg must be RS256, got {}", describe(other)),
            ));
        }
    }
    // RFC 7515 §4.1.11: a recipient must refuse a `crit` it does not understand; Maskinporten
    // defines no extension, so any `crit` is refused.
    if header.contains_key("crit") {
        return Err(Refusal::grant(
            "MP-002",
            "header crit names extensions this Maskinporten does not understand; leave crit out",
        ));
    }
    // The key mode is fixed per client at Digdir, so the client is looked up before the key is.
    let registered = claims
        .get("iss")
        .and_then(Value::as_str)
        .and_then(|iss| mp.clients.as_ref()?.get(iss));
    let registered_keys = match registered.map(|c| &c.keys) {
        Some(ClientKeys::Keys(keys)) => Some(keys),
        _ => None,
    };
    // Either the x5c chain (leaf first) or the key registered under `kid`.
    let (chain, by_kid) = match (header.get("x5c"), header.get("kid")) {
        (Some(_), Some(_)) => {
            return Err(Refusal::grant(
                "MP-123",
                "header carries both x5c and kid; send exactly one (x5c with the business certificate)",
            ));
        }
        (None, None) => {
            return Err(Refusal::grant(
                "MP-123",
                "header carries neither x5c nor kid; send x5c with the business certificate",
            ));
        }
        (None, Some(kid)) => match (registered, registered_keys) {
            (_, Some(keys)) => match kid.as_str().and_then(|k| keys.get(k)) {
                Some(der) => (vec![CertificateDer::from(der.clone())], true),
                None => {
                    return Err(Refusal::grant(
                        "MP-124",
                        format!("kid {} is not a key registered for this client", describe(Some(kid))),
                    ));
                }
            },
            (Some(_), None) => {
                return Err(Refusal::grant(
                    "MP-124",
                    "this client is registered for a business certificate: send x5c, not kid",
                ));
            }
            (None, None) => {
                return Err(Refusal::grant(
                    "MP-124",
                    format!(
                        "kid {} is not a key registered for any client (this mock has no pre-registered keys; send x5c)",
                        describe(Some(kid))
                    ),
                ));
            }
        },
        (Some(_), None) if registered_keys.is_some() => {
            return Err(Refusal::grant(
                "MP-123",
                "this client is registered with keys: send kid, not x5c",
            ));
        }
        (Some(x5c), None) => (parse_x5c(x5c)?, false),
    };
    let leaf = webpki::EndEntityCert::try_from(&chain[0])
        .map_err(|_| Refusal::grant("MP-123", "x5c[0] is not a usable X.509 certificate"))?;

    // Signature with the leaf's key.
    let signing_input = &assertion[..h.len() + 1 + p.len()];
    leaf.verify_signature(
        webpki::aws_lc_rs::RSA_PKCS1_2048_8192_SHA256,
        signing_input.as_bytes(),
        &signature,
    )
    .map_err(|e| {
        let why = match e {
            webpki::Error::UnsupportedSignatureAlgorithmForPublicKeyContext(_) => {
                "the x5c certificate's key is not an RSA key (RS256 needs one)"
            }
            _ => "signature does not verify with the key of the x5c certificate",
        };
        Refusal::grant("MP-124", why)
    })?;

    // A registered key is trusted by its registration; a certificate must chain to a trusted CA.
    if !by_kid {
        // Trust and validity at the mock's clock: a real path check, not a name comparison.
        verify_chain(&leaf, &chain[1..], &mp.trusted_ca_der, now)?;
        // webpki does not look at an end-entity's KeyUsage; a certificate whose KeyUsage leaves
        // out digitalSignature may not sign grants (RFC 5280 §4.2.1.3), so refuse it like a bad
        // certificate.
        if !key_usage_allows_signing(chain[0].as_ref()) {
            return Err(Refusal::grant(
                "MP-120",
                "certificate key usage does not include digitalSignature, so it cannot sign grants",
            ));
        }
    }

    // Claims: only Digdir's list.
    let unknown: Vec<&str> = claims
        .keys()
        .map(String::as_str)
        .filter(|k| !ALLOWED_CLAIMS.contains(k))
        .collect();
    if !unknown.is_empty() {
        return Err(Refusal::request(
            "MP-003",
            format!(
                "claim(s) {} not allowed in a Maskinporten grant (allowed: {})",
                unknown.join(", "),
                ALLOWED_CLAIMS.join(", ")
            ),
        ));
    }

    match claims.get("aud") {
        Some(Value::String(aud)) if *aud == mp.issuer => {}
        Some(Value::String(aud)) => {
            return Err(Refusal::grant(
                "MP-110",
                format!(
                    "aud {aud:?} is not this Maskinporten's issuer {:?} (must match exactly, trailing slash included)",
                    mp.issuer
                ),
            ));
        }
        other => {
            return Err(Refusal::grant(
                "MP-110",
                format!(
                    "aud must be the issuer {:?} as a string, got {}",
                    mp.issuer,
                    describe(other)
                ),
            ));
        }
    }

    let iat = numeric_date(&claims, "iat")?;
    let exp = numeric_date(&claims, "exp")?;
    if exp <= iat {
        return Err(Refusal::grant("MP-130", "exp must be later than iat"));
    }
    if exp - iat > MAX_GRANT_LIFETIME_SECS {
        return Err(Refusal::grant(
            "MP-130",
            format!(
                "grant lifetime exp - iat is {} s; at most {MAX_GRANT_LIFETIME_SECS} s allowed",
                exp - iat
            ),
        ));
    }
    let offset = iat - now;
    // Digdir: iat must be *less than* 10 s from its clock, so 10 s itself is already too far.
    if offset.abs() >= MAX_IAT_OFFSET_SECS {
        let side = if offset < 0 { "behind" } else { "ahead of" };
        return Err(Refusal::grant(
            "MP-130",
            format!(
                "iat is {} s {side} the Maskinporten clock (allowed: less than {MAX_IAT_OFFSET_SECS} s either way); check the client's clock (NTP)",
                offset.abs()
            ),
        ));
    }
    if exp <= now {
        return Err(Refusal::grant("MP-130", format!("grant expired {} s ago", now - exp)));
    }

    let jti = match claims.get("jti") {
        Some(Value::String(j)) if !j.is_empty() => j.clone(),
        other => {
            return Err(Refusal::grant(
                "MP-012",
                format!(
                    "jti must be a non-empty string unique per grant, got {}",
                    describe(other)
                ),
            ));
        }
    };

    let client_id = match claims.get("iss") {
        Some(Value::String(iss)) if !iss.is_empty() => iss.clone(),
        other => {
            return Err(Refusal::new(
                "invalid_client",
                "MP-100",
                format!("iss must be the client id, got {}", describe(other)),
            ));
        }
    };
    let client = match &mp.clients {
        None => None,
        Some(clients) => match clients.get(&client_id) {
            Some(c) => Some(c),
            None => {
                return Err(Refusal::new(
                    "invalid_client",
                    "MP-100",
                    format!("client {client_id:?} does not exist in this environment"),
                ));
            }
        },
    };

    let cert_org = by_kid
        .then(|| client.and_then(|c| c.owner_org.clone()))
        .flatten()
        .or_else(|| org_number(chain[0].as_ref()))
        .ok_or_else(|| {
            Refusal::grant(
                "MP-122",
                "the certificate's subject carries no organisation number (serialNumber)",
            )
        })?;
    // Without let-chains: the crate's rust-version (1.85) predates them.
    let owner = client.and_then(|c| c.owner_org.as_deref());
    if let Some(owner) = owner.filter(|o| *o != cert_org) {
        return Err(Refusal::grant(
            "MP-122",
            format!("the certificate belongs to org.nr {cert_org}, but client {client_id:?} is owned by {owner}"),
        ));
    }

    let scopes: Vec<String> = match claims.get("scope") {
        Some(Value::String(s)) => s.split_ascii_whitespace().map(str::to_string).collect(),
        _ => Vec::new(),
    };
    if scopes.is_empty() {
        // The mock's own code: Digdir's MP-201 means something else (the integration type).
        return Err(Refusal::new(
            "invalid_scope",
            "MP-004",
            "scope is missing: request at least one scope as a space-separated string",
        ));
    }
    let granted: Vec<&str> = match client {
        Some(c) => c.scopes.iter().map(String::as_str).collect(),
        None => vec![DEFAULT_SCOPE, super::config::OTHER_SCOPE],
    };
    let refused: Vec<&str> = scopes
        .iter()
        .map(String::as_str)
        .filter(|s| !granted.contains(s))
        .collect();
    if !refused.is_empty() {
        return Err(Refusal::new(
            "invalid_scope",
            "MP-200",
            format!(
                "scope {} is not registered on client {client_id:?} (add it in the self-service)",
                refused.join(" ")
            ),
        ));
    }

    let resource = match claims.get("resource") {
        None => None,
        // Digdir documents `resource` as an array; a bare string is refused (stricter than a
        // server that might coerce it, so a client sending one is caught here).
        Some(Value::Array(rs)) if !rs.is_empty() && rs.iter().all(|r| r.as_str().is_some_and(|r| !r.is_empty())) => {
            Some(Value::Array(rs.clone()))
        }
        Some(other) => {
            return Err(Refusal::grant(
                "MP-002",
                format!(
                    "resource must be a non-empty JSON array of non-empty strings, got {}",
                    describe(Some(other))
                ),
            ));
        }
    };
    let consumer_org = match claims.get("consumer_org") {
        None => None,
        Some(Value::String(org)) if is_org_number(org) => Some(org.clone()),
        Some(other) => {
            return Err(Refusal::grant(
                "MP-002",
                format!(
                    "consumer_org must be a 9-digit org.nr string, got {}",
                    describe(Some(other))
                ),
            ));
        }
    };

    // Delegation (Digdir: a supplier acts for a consumer only through a delegation in Altinn).
    // Acting for oneself is not a delegation, and Maskinporten refuses it the same way.
    if let Some(consumer) = &consumer_org {
        if *consumer == cert_org {
            return Err(Refusal::grant(
                "MP-251",
                format!(
                    "consumer_org {consumer} is the certificate's own organisation; leave consumer_org out to act for yourself"
                ),
            ));
        }
        if let Some(scope) = scopes.iter().find(|s| !state.is_delegated(consumer, &cert_org, s)) {
            return Err(Refusal::grant(
                "MP-251",
                format!(
                    "consumer {consumer} has not delegated scope {scope} to supplier {cert_org} (no delegation in Altinn)"
                ),
            ));
        }
    }

    // The API owner (Bits) gives a scope to organisations; the organisation the token is for
    // must have it, whoever signs.
    let acting_for = consumer_org.as_deref().unwrap_or(&cert_org);
    if let Some(scope) = scopes.iter().find(|s| {
        mp.scope_access
            .get(s.as_str())
            .is_some_and(|orgs| !orgs.iter().any(|o| o == acting_for))
    }) {
        return Err(Refusal::new(
            "invalid_scope",
            "MP-250",
            format!("the API owner has not given scope {scope} to organisation {acting_for}"),
        ));
    }

    Ok(Grant {
        client_id,
        scopes,
        cert_org,
        consumer_org,
        resource,
        jti,
        exp,
        expires_in: client.and_then(|c| c.expires_in),
    })
}

/// `x5c` must be a JSON array of standard-base64 DER strings (kfr-notes §9): leaf first, optionally
/// followed by intermediates.
fn parse_x5c(x5c: &Value) -> Result<Vec<CertificateDer<'static>>, Refusal> {
    let Value::Array(items) = x5c else {
        return Err(Refusal::grant(
            "MP-123",
            format!(
                "x5c must be a JSON array of base64 certificates, got {}",
                describe(Some(x5c))
            ),
        ));
    };
    if items.is_empty() {
        return Err(Refusal::grant("MP-123", "x5c is an empty array"));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let Value::String(b64) = item else {
                return Err(Refusal::grant("MP-123", format!("x5c[{i}] is not a string")));
            };
            // STANDARD requires the +/ alphabet and canonical padding, so base64url is refused.
            let der = STANDARD.decode(b64).map_err(|_| {
                Refusal::grant(
                    "MP-123",
                    format!("x5c[{i}] is not standard base64 (RFC 7515 §4.1.6: base64, not base64url)"),
                )
            })?;
            // RFC 7515 §4.1.6: every element is a DER certificate, not only the first; a chain
            // with garbage in it is refused rather than the garbage skipped.
            match x509_parser::parse_x509_certificate(&der) {
                Ok((&[], _)) => Ok(CertificateDer::from(der)),
                _ => Err(Refusal::grant(
                    "MP-123",
                    format!("x5c[{i}] is not a DER X.509 certificate"),
                )),
            }
        })
        .collect()
}

fn verify_chain(
    leaf: &webpki::EndEntityCert<'_>,
    intermediates: &[CertificateDer<'_>],
    trusted_ca_der: &[Vec<u8>],
    now: i64,
) -> Result<(), Refusal> {
    let anchors: Vec<TrustAnchor<'static>> = trusted_ca_der
        .iter()
        .filter_map(|der| {
            webpki::anchor_from_trusted_cert(&CertificateDer::from(der.as_slice()))
                .ok()
                .map(|a| a.to_owned())
        })
        .collect();
    let time = UnixTime::since_unix_epoch(Duration::from_secs(u64::try_from(now).unwrap_or(0)));
    let result = leaf.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        intermediates,
        time,
        webpki::KeyUsage::client_auth(),
        None,
        None,
    );
    match result {
        Ok(_) => Ok(()),
        Err(webpki::Error::CertExpired { not_after, .. }) => Err(Refusal::grant(
            "MP-120",
            format!(
                "certificate expired (valid until {}, Maskinporten clock {})",
                rfc3339(not_after.as_secs()),
                rfc3339(u64::try_from(now).unwrap_or(0))
            ),
        )),
        Err(webpki::Error::CertNotValidYet { not_before, .. }) => Err(Refusal::grant(
            "MP-120",
            format!(
                "certificate is not yet valid (valid from {}, Maskinporten clock {})",
                rfc3339(not_before.as_secs()),
                rfc3339(u64::try_from(now).unwrap_or(0))
            ),
        )),
        Err(webpki::Error::UnknownIssuer) => Err(Refusal::grant(
            "MP-120",
            "certificate is not issued by a trusted CA (is it a production certificate in test, or the wrong CA?)",
        )),
        Err(other) => Err(Refusal::grant(
            "MP-120",
            format!("certificate is not issued by a trusted CA (path validation failed: {other})"),
        )),
    }
}

fn rfc3339(secs: u64) -> String {
    chrono::DateTime::from_timestamp(i64::try_from(secs).unwrap_or(i64::MAX), 0)
        .map_or_else(|| secs.to_string(), |t| t.to_rfc3339())
}

/// The org.nr of a business certificate: subject serialNumber (kfr-notes §3), or an
/// organizationIdentifier `NTRNO-<org.nr>`.
pub(crate) fn org_number(cert_der: &[u8]) -> Option<String> {
    use x509_parser::oid_registry::Oid;
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    let subject = cert.subject();
    let serial = Oid::from(OID_SERIAL_NUMBER).ok()?;
    let from_serial = subject
        .iter_by_oid(&serial)
        .filter_map(|a| a.as_str().ok())
        .find(|s| is_org_number(s));
    if let Some(org) = from_serial {
        return Some(org.to_string());
    }
    let org_id = Oid::from(OID_ORGANIZATION_IDENTIFIER).ok()?;
    subject
        .iter_by_oid(&org_id)
        .filter_map(|a| a.as_str().ok())
        .filter_map(|s| s.strip_prefix("NTRNO-"))
        .find(|s| is_org_number(s))
        .map(str::to_string)
}

/// False only when a KeyUsage extension is present without digitalSignature (or the certificate
/// cannot be parsed at all); no extension means no restriction.
fn key_usage_allows_signing(cert_der: &[u8]) -> bool {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(cert_der) else {
        return false;
    };
    match cert.key_usage() {
        Ok(Some(ku)) => ku.value.digital_signature(),
        Ok(None) => true,
        Err(_) => false,
    }
}

fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<i64, Refusal> {
    match claims.get(name) {
        Some(Value::Number(n)) if n.as_i64().is_some() => Ok(n.as_i64().unwrap_or_default()),
        other => Err(Refusal::grant(
            "MP-130",
            format!("{name} must be an integer NumericDate, got {}", describe(other)),
        )),
    }
}

/// How a JSON value is named in an error description: short, and never a whole token.
fn describe(v: Option<&Value>) -> String {
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

/// Records the jti of a grant about to obtain a token; refuses one seen before (MP-012).
/// Check and insert happen under one lock so two concurrent requests with the same grant cannot
/// both succeed. Entries are forgotten long after their grant expired (it would fail MP-130).
fn remember_jti(state: &MockState, jti: &str, exp: i64, now: i64) -> Result<(), Refusal> {
    let mut seen = lock(&state.mp.seen_jtis);
    if seen.contains_key(jti) {
        return Err(Refusal::grant(
            "MP-012",
            "jti has been used before: every grant needs a new jti",
        ));
    }
    if seen.len() >= 10_000 {
        seen.retain(|_, e| *e > now - 3600);
    }
    seen.insert(jti.to_string(), exp);
    Ok(())
}

/// The mock's own RSA key, which signs access tokens.
pub(crate) struct SigningKey {
    pair: KeyPair,
    /// The public half, parsed once: the KFR side checks a token on every request, and parsing
    /// the key each time was a quarter of the mock's CPU under load (docs/benchmarks.md).
    public: ParsedPublicKey,
    kid: String,
    n: String,
    e: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    pub(crate) fn generate() -> anyhow::Result<Self> {
        let pair = KeyPair::generate(KeySize::Rsa2048).map_err(|_| anyhow::anyhow!("generating the mock's RSA key"))?;
        let public = pair.public_key();
        let n = URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero());
        let e = URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero());
        // RFC 7638 thumbprint: SHA-256 of the required members in lexicographic order.
        let thumbprint_input = format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#);
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, thumbprint_input.as_bytes());
        let kid = URL_SAFE_NO_PAD.encode(digest.as_ref());
        let public = ParsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, pair.public_key().as_ref())
            .map_err(|_| anyhow::anyhow!("parsing the mock's own public key"))?;
        Ok(Self {
            pair,
            public,
            kid,
            n,
            e,
        })
    }

    fn jwk(&self) -> Value {
        json!({ "kty": "RSA", "kid": self.kid, "alg": "RS256", "use": "sig", "n": self.n, "e": self.e })
    }

    fn sign_jwt(&self, claims: &Value) -> String {
        let header = json!({ "alg": "RS256", "typ": "JWT", "kid": self.kid });
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut sig = vec![0; self.pair.public_modulus_len()];
        let rng = aws_lc_rs::rand::SystemRandom::new();
        // Signing with a freshly generated 2048-bit key cannot fail short of a broken crypto
        // library; a panic here is the honest answer.
        self.pair
            .sign(&RSA_PKCS1_SHA256, &rng, input.as_bytes(), &mut sig)
            .expect("RSA signing with the mock's own key");
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
    }
}

/// Claims of an access token issued by this mock, as the fake KFR needs them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessClaims {
    /// The org.nr the token was issued to (`consumer`), 9 digits.
    pub consumer_org: String,
    /// The certificate holder acting for `consumer_org` (`supplier`), when the token is delegated.
    pub supplier_org: Option<String>,
    pub scope: Vec<String>,
    pub client_id: String,
    pub exp: i64,
}

/// Why an access token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenRejection {
    #[error("the token is not a well-formed JWT ({0})")]
    Malformed(&'static str),
    #[error("the token is not signed by this mock's key")]
    BadSignature,
    #[error("the token was issued by another issuer")]
    WrongIssuer,
    #[error("the token expired at {exp} (mock clock {now})")]
    Expired { exp: i64, now: i64 },
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
        let claims = self.verify_access_token_fully(bearer)?;
        let mut verified = lock(&self.mp.verified);
        if verified.len() >= 64 {
            verified.clear();
        }
        verified.insert(bearer.to_string(), claims.clone());
        Ok(claims)
    }

    fn verify_access_token_fully(&self, bearer: &str) -> Result<AccessClaims, TokenRejection> {
        let (input, sig) = bearer
            .rsplit_once('.')
            .ok_or(TokenRejection::Malformed("no signature"))?;
        let (h, p) = input.split_once('.').ok_or(TokenRejection::Malformed("no payload"))?;
        let parse = |seg: &str| -> Option<Map<String, Value>> {
            match serde_json::from_slice(&URL_SAFE_NO_PAD.decode(seg).ok()?).ok()? {
                Value::Object(m) => Some(m),
                _ => None,
            }
        };
        let header = parse(h).ok_or(TokenRejection::Malformed("header"))?;
        let claims = parse(p).ok_or(TokenRejection::Malformed("payload"))?;
        let sig = URL_SAFE_NO_PAD
            .decode(sig)
            .map_err(|_| TokenRejection::Malformed("signature"))?;
        if header.get("alg").and_then(Value::as_str) != Some("RS256") {
            return Err(TokenRejection::BadSignature);
        }
        self.mp
            .key
            .public
            .verify_sig(input.as_bytes(), &sig)
            .map_err(|_| TokenRejection::BadSignature)?;
        if claims.get("iss").and_then(Value::as_str) != Some(self.mp.issuer.as_str()) {
            return Err(TokenRejection::WrongIssuer);
        }
        let exp = claims
            .get("exp")
            .and_then(Value::as_i64)
            .ok_or(TokenRejection::Malformed("exp"))?;
        let now = self.clock.now_unix();
        if exp <= now {
            return Err(TokenRejection::Expired { exp, now });
        }
        let consumer_org = claims
            .get("consumer")
            .and_then(|c| c.get("ID"))
            .and_then(Value::as_str)
            .and_then(|id| id.strip_prefix("0192:"))
            .ok_or(TokenRejection::Malformed("consumer"))?
            .to_string();
        let supplier_org = match claims.get("supplier") {
            None => None,
            Some(s) => Some(
                s.get("ID")
                    .and_then(Value::as_str)
                    .and_then(|id| id.strip_prefix("0192:"))
                    .ok_or(TokenRejection::Malformed("supplier"))?
                    .to_string(),
            ),
        };
        let scope = claims
            .get("scope")
            .and_then(Value::as_str)
            .ok_or(TokenRejection::Malformed("scope"))?
            .split_ascii_whitespace()
            .map(str::to_string)
            .collect();
        let client_id = claims
            .get("client_id")
            .and_then(Value::as_str)
            .ok_or(TokenRejection::Malformed("client_id"))?
            .to_string();
        Ok(AccessClaims {
            consumer_org,
            supplier_org,
            scope,
            client_id,
            exp,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::signature::UnparsedPublicKey;

    #[test]
    fn x5c_must_be_an_array_of_standard_base64() {
        let err = parse_x5c(&json!("MIIB")).unwrap_err();
        assert_eq!(err.code, "MP-123");
        assert!(parse_x5c(&json!([])).is_err());
        assert!(parse_x5c(&json!([1])).is_err());
        // '-' and '_' belong to base64url only; a missing '=' is not canonical base64.
        assert!(parse_x5c(&json!(["ab-_"])).is_err());
        assert!(parse_x5c(&json!(["YWI"])).is_err());
        // Good base64 that is not a certificate is refused too, at any position.
        let e = parse_x5c(&json!(["YWI="])).unwrap_err();
        assert!(e.description.contains("x5c[0] is not a DER X.509 certificate"), "{e:?}");
    }

    #[test]
    fn form_needs_urlencoded_body_single_grant_type_and_assertion() {
        let mut headers = HeaderMap::new();
        let body = format!("grant_type={JWT_BEARER}&assertion=a.b.c");
        assert_eq!(read_form(&headers, body.as_bytes()).unwrap_err().code, "MP-001");
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded; charset=UTF-8"),
        );
        assert_eq!(read_form(&headers, body.as_bytes()).unwrap(), "a.b.c");
        let wrong = read_form(&headers, b"grant_type=client_credentials&assertion=x").unwrap_err();
        assert_eq!(wrong.error, "unsupported_grant_type");
        let twice = format!("grant_type={JWT_BEARER}&assertion=x&assertion=y");
        assert_eq!(
            read_form(&headers, twice.as_bytes()).unwrap_err().error,
            "invalid_request"
        );
        let none = format!("grant_type={JWT_BEARER}");
        assert_eq!(
            read_form(&headers, none.as_bytes()).unwrap_err().error,
            "invalid_request"
        );
    }

    #[test]
    fn refusal_body_carries_code_in_description() {
        let resp = Refusal::grant("MP-110", "wrong aud").into_response();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        assert_eq!(resp.headers()[header::CACHE_CONTROL], "no-store");
    }

    #[test]
    fn signing_key_tokens_verify_and_tampering_is_detected() {
        let key = SigningKey::generate().unwrap();
        let token = key.sign_jwt(&json!({"a": 1}));
        let (input, sig) = token.rsplit_once('.').unwrap();
        let public = UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, key.pair.public_key().as_ref());
        let sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
        assert!(public.verify(input.as_bytes(), &sig).is_ok());
        assert!(public.verify(format!("{input}x").as_bytes(), &sig).is_err());
        assert_eq!(key.jwk()["kid"], key.kid.as_str());
    }
}
