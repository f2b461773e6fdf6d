//! The JWT-bearer grant (RFC 7523) and every check Maskinporten makes of it, in the order
//! docs/mock.md documents: structure, header, signing key and signature, the certificate's trust,
//! claim names, `aud`, the time claims, `jti`, the client, the organisation, scopes, `resource`,
//! `consumer_org`, delegation and the API owner's scope access.
//!
//! [`check_grant`] reads as that list: one named step per check, each step returning the first
//! refusal it finds, so the first failure decides the MP-code as the real service does. Replay of
//! `jti` is not judged here: a grant is remembered only once it obtains a token (see `token`).

use super::keys;
use super::x5c;
use super::{Refusal, describe};
use crate::mock::config::{DEFAULT_SCOPE, MockClient, OTHER_SCOPE, is_org_number};
use crate::mock::state::{MaskinportenState, MockState};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

/// Claims Digdir lists for a grant (kfr-notes §9: unknown claims such as `nbf` are refused).
/// `client_amr` is deliberately absent: Maskinporten puts it in access tokens, it is not a grant
/// claim, and a mock that is stricter than the service costs nothing.
const ALLOWED_CLAIMS: [&str; 8] = ["aud", "iss", "scope", "iat", "exp", "jti", "resource", "consumer_org"];

/// `exp - iat` may not exceed this (kfr-notes §3).
const MAX_GRANT_LIFETIME_SECS: i64 = 120;

/// `iat` must be less than this far from the Maskinporten clock either way (Digdir's grant page).
const MAX_IAT_OFFSET_SECS: i64 = 10;

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

/// A compact JWS taken apart: header and claims decoded, the signature as bytes.
struct Jws<'a> {
    pub header: Map<String, Value>,
    pub claims: Map<String, Value>,
    /// `header.payload` exactly as sent: what the signature covers.
    pub signing_input: &'a str,
    pub signature: Vec<u8>,
}

/// Every check of the grant except jti uniqueness, in the documented order. `now` is the mock
/// clock in seconds.
pub(crate) fn check_grant(state: &MockState, assertion: &str, now: i64) -> Result<Grant, Refusal> {
    let mp = &state.mp;
    let jws = split_jws(assertion)?;
    check_header(&jws.header)?;
    let signer = keys::signer(mp, &jws.header, &jws.claims)?;
    let leaf = keys::verify_signature(&signer.chain, jws.signing_input, &jws.signature)?;
    // A registered key is trusted by its registration; a certificate must chain to a trusted CA.
    if !signer.by_kid {
        x5c::check_trust(&leaf, &signer.chain, &mp.trusted_ca_der, now)?;
    }
    let claims = &jws.claims;
    check_claim_names(claims)?;
    check_audience(claims, &mp.issuer)?;
    let exp = check_times(claims, now)?;
    let jti = grant_jti(claims)?;
    let (client_id, client) = find_client(mp, claims)?;
    let cert_org = certificate_org(&signer, client, &client_id)?;
    let scopes = requested_scopes(claims, client, &client_id)?;
    let resource = resource(claims)?;
    let consumer_org = consumer_org(claims)?;
    if let Some(consumer) = &consumer_org {
        check_delegation(state, consumer, &cert_org, &scopes)?;
    }
    check_scope_access(mp, consumer_org.as_deref().unwrap_or(&cert_org), &scopes)?;
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

/// Structure: `header.payload.signature`, the first two JSON objects in base64url (MP-002), the
/// signature base64url (MP-124).
fn split_jws(assertion: &str) -> Result<Jws<'_>, Refusal> {
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
    Ok(Jws {
        header,
        claims,
        signing_input: &assertion[..h.len() + 1 + p.len()],
        signature,
    })
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

/// Header: `alg` must be RS256 (MP-124) and `crit` absent (MP-002). Where the key comes from
/// (`x5c` or `kid`) is the next step's question.
fn check_header(header: &Map<String, Value>) -> Result<(), Refusal> {
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
    Ok(())
}

/// Claim names: only Digdir's list (MP-003).
fn check_claim_names(claims: &Map<String, Value>) -> Result<(), Refusal> {
    let unknown: Vec<&str> = claims
        .keys()
        .map(String::as_str)
        .filter(|k| !ALLOWED_CLAIMS.contains(k))
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    Err(Refusal::request(
        "MP-003",
        format!(
            "claim(s) {} not allowed in a Maskinporten grant (allowed: {})",
            unknown.join(", "),
            ALLOWED_CLAIMS.join(", ")
        ),
    ))
}

/// `aud`: this Maskinporten's issuer, as one string, byte for byte (MP-110).
fn check_audience(claims: &Map<String, Value>, issuer: &str) -> Result<(), Refusal> {
    match claims.get("aud") {
        Some(Value::String(aud)) if aud == issuer => Ok(()),
        Some(Value::String(aud)) => Err(Refusal::grant(
            "MP-110",
            format!(
                "aud {aud:?} is not this Maskinporten's issuer {issuer:?} (must match exactly, trailing slash included)"
            ),
        )),
        other => Err(Refusal::grant(
            "MP-110",
            format!("aud must be the issuer {issuer:?} as a string, got {}", describe(other)),
        )),
    }
}

/// `iat` and `exp` (MP-130): integers, `exp` after `iat` by at most two minutes, `iat` less than
/// ten seconds from the Maskinporten clock, `exp` not passed. Returns `exp`.
fn check_times(claims: &Map<String, Value>, now: i64) -> Result<i64, Refusal> {
    let iat = numeric_date(claims, "iat")?;
    let exp = numeric_date(claims, "exp")?;
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
    Ok(exp)
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

/// `jti`: present and non-empty (MP-012). Whether it was seen before is checked only when the
/// grant is about to obtain a token.
fn grant_jti(claims: &Map<String, Value>) -> Result<String, Refusal> {
    match claims.get("jti") {
        Some(Value::String(j)) if !j.is_empty() => Ok(j.clone()),
        other => Err(Refusal::grant(
            "MP-012",
            format!(
                "jti must be a non-empty string unique per grant, got {}",
                describe(other)
            ),
        )),
    }
}

/// The client: `iss` names it (MP-100), and when the mock has registered clients it must be one
/// of them (MP-100). Without registered clients any client id is welcome (`None`).
fn find_client<'m>(
    mp: &'m MaskinportenState,
    claims: &Map<String, Value>,
) -> Result<(String, Option<&'m MockClient>), Refusal> {
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
    let Some(clients) = &mp.clients else {
        return Ok((client_id, None));
    };
    match clients.get(&client_id) {
        Some(c) => Ok((client_id, Some(c))),
        None => Err(Refusal::new(
            "invalid_client",
            "MP-100",
            format!("client {client_id:?} does not exist in this environment"),
        )),
    }
}

/// The organisation behind the signature (MP-122): a key client's registered owner, else the
/// org.nr in the certificate's subject; a registered owner must match the certificate's.
fn certificate_org(signer: &keys::Signer, client: Option<&MockClient>, client_id: &str) -> Result<String, Refusal> {
    let cert_org = signer
        .by_kid
        .then(|| client.and_then(|c| c.owner_org.clone()))
        .flatten()
        .or_else(|| x5c::org_number(signer.chain[0].as_ref()))
        .ok_or_else(|| {
            Refusal::grant(
                "MP-122",
                "the certificate's subject carries no organisation number (serialNumber)",
            )
        })?;
    let owner = client.and_then(|c| c.owner_org.as_deref());
    if let Some(owner) = owner.filter(|o| *o != cert_org) {
        return Err(Refusal::grant(
            "MP-122",
            format!("the certificate belongs to org.nr {cert_org}, but client {client_id:?} is owned by {owner}"),
        ));
    }
    Ok(cert_org)
}

/// `scope`: at least one (MP-004), each registered on the client (MP-200). Without registered
/// clients the two scopes the mock knows are open.
fn requested_scopes(
    claims: &Map<String, Value>,
    client: Option<&MockClient>,
    client_id: &str,
) -> Result<Vec<String>, Refusal> {
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
        None => vec![DEFAULT_SCOPE, OTHER_SCOPE],
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
    Ok(scopes)
}

/// `resource`: absent, or a non-empty array of non-empty strings (MP-002).
fn resource(claims: &Map<String, Value>) -> Result<Option<Value>, Refusal> {
    match claims.get("resource") {
        None => Ok(None),
        // Digdir documents `resource` as an array; a bare string is refused (stricter than a
        // server that might coerce it, so a client sending one is caught here).
        Some(Value::Array(rs)) if !rs.is_empty() && rs.iter().all(|r| r.as_str().is_some_and(|r| !r.is_empty())) => {
            Ok(Some(Value::Array(rs.clone())))
        }
        Some(other) => Err(Refusal::grant(
            "MP-002",
            format!(
                "resource must be a non-empty JSON array of non-empty strings, got {}",
                describe(Some(other))
            ),
        )),
    }
}

/// `consumer_org`: absent, or a 9-digit org.nr string (MP-002).
fn consumer_org(claims: &Map<String, Value>) -> Result<Option<String>, Refusal> {
    match claims.get("consumer_org") {
        None => Ok(None),
        Some(Value::String(org)) if is_org_number(org) => Ok(Some(org.clone())),
        Some(other) => Err(Refusal::grant(
            "MP-002",
            format!(
                "consumer_org must be a 9-digit org.nr string, got {}",
                describe(Some(other))
            ),
        )),
    }
}

/// Delegation (MP-251): a supplier acts for a consumer only through a delegation in Altinn, of
/// every scope asked for. Acting for oneself is not a delegation, and Maskinporten refuses it
/// the same way.
fn check_delegation(state: &MockState, consumer: &str, cert_org: &str, scopes: &[String]) -> Result<(), Refusal> {
    if consumer == cert_org {
        return Err(Refusal::grant(
            "MP-251",
            format!(
                "consumer_org {consumer} is the certificate's own organisation; leave consumer_org out to act for yourself"
            ),
        ));
    }
    if let Some(scope) = scopes.iter().find(|s| !state.is_delegated(consumer, cert_org, s)) {
        return Err(Refusal::grant(
            "MP-251",
            format!(
                "consumer {consumer} has not delegated scope {scope} to supplier {cert_org} (no delegation in Altinn)"
            ),
        ));
    }
    Ok(())
}

/// Scope access (MP-250): the API owner (Bits) gives a scope to organisations; the organisation
/// the token is for must have it, whoever signs. Scopes the owner named no one for are open.
fn check_scope_access(mp: &MaskinportenState, acting_for: &str, scopes: &[String]) -> Result<(), Refusal> {
    let closed = scopes.iter().find(|s| {
        mp.scope_access
            .get(s.as_str())
            .is_some_and(|orgs| !orgs.iter().any(|o| o == acting_for))
    });
    match closed {
        None => Ok(()),
        Some(scope) => Err(Refusal::new(
            "invalid_scope",
            "MP-250",
            format!("the API owner has not given scope {scope} to organisation {acting_for}"),
        )),
    }
}
