//! The token endpoint: the form (MP-001), injected faults, the grant's checks, `token_refuse`,
//! jti replay (MP-012), and the access token issued for a grant that passed.
//!
//! A grant's jti is remembered only once the grant obtains a token: a refused grant got nothing,
//! so sending it again (corrected or not) is not a replay.

use super::{JWT_BEARER, Refusal, no_store};
use crate::mock::state::{MockState, lock};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

fn injected(status: StatusCode, error: &str) -> Response {
    let body = json!({ "error": error, "error_description": "fault injected by kfr mock" });
    no_store((status, axum::Json(body)).into_response())
}

pub(super) async fn token(State(state): State<Arc<MockState>>, headers: HeaderMap, body: Bytes) -> Response {
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
    let grant = super::grant::check_grant(state, &assertion, now)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

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
}
