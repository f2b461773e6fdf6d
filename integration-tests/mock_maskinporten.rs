//! The fake Maskinporten as a client author meets it over HTTP: a valid grant gets a token the
//! JWKS verifies, every rule of kfr-notes §3/§9 refuses with its status, `error` and MP-code, the
//! clock can be skewed, faults injected, counters read and reset, and `kfr mock` runs as a command.
//!
//! Grants are built by hand with jsonwebtoken (not with `kfr`'s own grant code), because most of
//! them must be wrong in exactly one way.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey};
use kfr::certs::{IssuedCert, LeafOptions, LocalPki, TestCa};
use kfr::mock::{ClientKeys, JWT_BEARER, MockClient, MockConfig, MockServer, TokenFaults, TokenRejection};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const ORG: &str = "916960190";
const CLIENT: &str = "0f6c8e5a-7c1d-4a4b-9a57-2e3b1c9d8f10";
const WRITE: &str = "bits:kundeforhold.write";

/// RSA key generation is the slow part: one PKI for every test in this module.
fn pki() -> &'static LocalPki {
    static PKI: OnceLock<LocalPki> = OnceLock::new();
    PKI.get_or_init(|| kfr::certs::generate(ORG, "KFR MOCK TEST BANK AS").expect("test PKI"))
}

async fn start(tweak: impl FnOnce(&mut MockConfig)) -> MockServer {
    let mut cfg = MockConfig::new(vec![pki().ca_cert_der.clone()]);
    tweak(&mut cfg);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    MockServer::start(listener, cfg).await.expect("mock starts")
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

fn x5c(certs: &[&[u8]]) -> Value {
    json!(certs.iter().map(|c| STANDARD.encode(c)).collect::<Vec<_>>())
}

/// Header and claims of a grant that the mock accepts, at time `now`.
fn valid_parts(mock: &MockServer, cert: &IssuedCert, now: i64) -> (Value, Value) {
    let header = json!({ "alg": "RS256", "typ": "JWT", "x5c": x5c(&[&cert.cert_der]) });
    let claims = json!({
        "aud": mock.issuer(),
        "iss": CLIENT,
        "scope": WRITE,
        "iat": now,
        "exp": now + 120,
        "jti": uuid::Uuid::new_v4().to_string(),
    });
    (header, claims)
}

/// Compact JWS over arbitrary header and claims, signed with `key_pem`.
fn sign_with(header: &Value, claims: &Value, key_pem: &str, alg: Algorithm) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let key = EncodingKey::from_rsa_pem(key_pem.as_bytes()).unwrap();
    let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &key, alg).unwrap();
    format!("{input}.{sig}")
}

fn sign(header: &Value, claims: &Value, cert: &IssuedCert) -> String {
    sign_with(header, claims, &cert.key_pem, Algorithm::RS256)
}

struct Answer {
    status: StatusCode,
    body: Value,
    date: Option<SystemTime>,
}

async fn post_form(mock: &MockServer, content_type: &str, body: String) -> Answer {
    let resp = reqwest::Client::new()
        .post(format!("{}/maskinporten/token", mock.base_url()))
        .header(reqwest::header::CONTENT_TYPE, content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let date = resp
        .headers()
        .get(reqwest::header::DATE)
        .and_then(|d| httpdate::parse_http_date(d.to_str().ok()?).ok());
    let body = resp.json().await.unwrap_or(Value::Null);
    Answer { status, body, date }
}

async fn post_grant(mock: &MockServer, assertion: &str) -> Answer {
    let body = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", JWT_BEARER)
        .append_pair("assertion", assertion)
        .finish();
    post_form(mock, "application/x-www-form-urlencoded", body).await
}

/// Asserts a 400 with `error` and `code` in the description; returns the description.
#[track_caller]
fn assert_refused(answer: &Answer, error: &str, code: &str) -> String {
    assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.body);
    assert_eq!(answer.body["error"], error, "{}", answer.body);
    let description = answer.body["error_description"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        description.contains(&format!("({code})")),
        "{code} missing in {description:?}"
    );
    description
}

/// Sends a grant made from the valid one by `mutate`, signed by the client certificate.
async fn send_with(mock: &MockServer, mutate: impl FnOnce(&mut Value, &mut Value)) -> Answer {
    let (mut header, mut claims) = valid_parts(mock, &pki().client, unix_now());
    mutate(&mut header, &mut claims);
    post_grant(mock, &sign(&header, &claims, &pki().client)).await
}

fn jwt_claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

#[tokio::test]
async fn valid_grant_gets_a_token_with_the_certificate_org_that_the_jwks_verifies() {
    let mock = start(|_| {}).await;
    let (header, claims) = valid_parts(&mock, &pki().client, unix_now());
    let answer = post_grant(&mock, &sign(&header, &claims, &pki().client)).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.body["token_type"], "Bearer");
    assert_eq!(answer.body["expires_in"], 120);
    assert_eq!(answer.body["scope"], WRITE);
    let token = answer.body["access_token"].as_str().unwrap();

    // Verify independently with the published JWKS (jsonwebtoken, not the mock's own code).
    let jwks: Value = reqwest::get(format!("{}/maskinporten/jwks", mock.base_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let jwk = &jwks["keys"][0];
    assert_eq!(
        (jwk["kty"].as_str(), jwk["alg"].as_str(), jwk["use"].as_str()),
        (Some("RSA"), Some("RS256"), Some("sig"))
    );
    let header = jsonwebtoken::decode_header(token).unwrap();
    assert_eq!(header.kid.as_deref(), jwk["kid"].as_str());
    let key =
        jsonwebtoken::DecodingKey::from_rsa_components(jwk["n"].as_str().unwrap(), jwk["e"].as_str().unwrap()).unwrap();
    let mut validation = jsonwebtoken::Validation::new(Algorithm::RS256);
    validation.set_issuer(&[mock.issuer()]);
    validation.validate_aud = false;
    let data = jsonwebtoken::decode::<Value>(token, &key, &validation).expect("JWKS verifies the token");
    let c = data.claims;
    assert_eq!(c["iss"], mock.issuer().as_str());
    assert_eq!(c["client_id"], CLIENT);
    assert_eq!(c["scope"], WRITE);
    assert_eq!(c["token_type"], "Bearer");
    assert_eq!(
        c["consumer"],
        json!({"authority": "iso6523-actorid-upis", "ID": format!("0192:{ORG}")})
    );
    assert!(c.get("supplier").is_none());
    assert_eq!(c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(), 120);
    assert!(c["jti"].as_str().is_some_and(|j| !j.is_empty()));

    // Tampering with the token breaks the JWKS check.
    let forged = token.replacen('.', ".e", 1);
    assert!(jsonwebtoken::decode::<Value>(&forged, &key, &validation).is_err());
    mock.shutdown().await;
}

#[tokio::test]
async fn discovery_document_names_exact_issuer_and_endpoints() {
    let mock = start(|_| {}).await;
    let meta: Value = reqwest::get(format!(
        "{}/maskinporten/.well-known/oauth-authorization-server",
        mock.base_url()
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(meta["issuer"], format!("{}/maskinporten/", mock.base_url()));
    assert_eq!(meta["issuer"], mock.issuer().as_str());
    assert_eq!(
        meta["token_endpoint"],
        format!("{}/maskinporten/token", mock.base_url())
    );
    assert_eq!(meta["jwks_uri"], format!("{}/maskinporten/jwks", mock.base_url()));
    assert_eq!(
        meta["token_endpoint_auth_methods_supported"],
        json!(["private_key_jwt"])
    );
    assert_eq!(meta["grant_types_supported"], json!([JWT_BEARER]));
    assert_eq!(
        meta["token_endpoint_auth_signing_alg_values_supported"],
        json!(["RS256"])
    );

    let custom = start(|c| c.issuer = Some("https://test.maskinporten.no/".into())).await;
    assert_eq!(custom.issuer(), "https://test.maskinporten.no/");
    let health = reqwest::get(format!("{}/healthz", custom.base_url())).await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    assert_eq!(health.text().await.unwrap(), "ok");
}

#[tokio::test]
async fn request_shape_errors_are_invalid_request_or_unsupported_grant_type() {
    let mock = start(|_| {}).await;
    let (h, c) = valid_parts(&mock, &pki().client, unix_now());
    let assertion = sign(&h, &c, &pki().client);

    let json_body = json!({"grant_type": JWT_BEARER, "assertion": assertion}).to_string();
    let a = post_form(&mock, "application/json", json_body).await;
    assert!(assert_refused(&a, "invalid_request", "MP-001").contains("Content-Type"));

    let a = post_form(
        &mock,
        "application/x-www-form-urlencoded",
        format!("grant_type=client_credentials&assertion={assertion}"),
    )
    .await;
    assert_refused(&a, "unsupported_grant_type", "MP-001");

    let a = post_form(
        &mock,
        "application/x-www-form-urlencoded",
        format!("grant_type={JWT_BEARER}"),
    )
    .await;
    assert!(assert_refused(&a, "invalid_request", "MP-001").contains("assertion"));

    let a = post_grant(&mock, "not-a-jwt").await;
    assert_refused(&a, "invalid_grant", "MP-002");
    assert_eq!(mock.state().token_errors().get("MP-001"), Some(&3));
}

#[tokio::test]
async fn alg_other_than_rs256_is_refused_with_mp124() {
    let mock = start(|_| {}).await;
    let (mut h, c) = valid_parts(&mock, &pki().client, unix_now());
    h["alg"] = json!("RS512");
    let a = post_grant(&mock, &sign_with(&h, &c, &pki().client.key_pem, Algorithm::RS512)).await;
    assert!(assert_refused(&a, "invalid_grant", "MP-124").contains("RS256"));
}

#[tokio::test]
async fn x5c_must_be_an_array_of_standard_base64() {
    let mock = start(|_| {}).await;
    let der = pki().client.cert_der.clone();

    let a = send_with(&mock, |h, _| h["x5c"] = json!(STANDARD.encode(&der))).await;
    assert!(assert_refused(&a, "invalid_grant", "MP-123").contains("array"));

    let url_safe = URL_SAFE_NO_PAD.encode(&der);
    assert_ne!(
        url_safe,
        STANDARD.encode(&der),
        "precondition: the encodings differ for this certificate"
    );
    let a = send_with(&mock, |h, _| h["x5c"] = json!([url_safe])).await;
    assert!(assert_refused(&a, "invalid_grant", "MP-123").contains("base64url"));
}

#[tokio::test]
async fn exactly_one_of_x5c_and_kid_and_kid_is_unknown_to_the_mock() {
    let mock = start(|_| {}).await;
    let a = send_with(&mock, |h, _| h["kid"] = json!("registered-key-1")).await;
    assert_refused(&a, "invalid_grant", "MP-123");

    let a = send_with(&mock, |h, _| {
        h.as_object_mut().unwrap().remove("x5c");
        h["kid"] = json!("registered-key-1");
    })
    .await;
    assert!(assert_refused(&a, "invalid_grant", "MP-124").contains("registered-key-1"));

    let a = send_with(&mock, |h, _| {
        h.as_object_mut().unwrap().remove("x5c");
    })
    .await;
    assert_refused(&a, "invalid_grant", "MP-123");
}

#[tokio::test]
async fn signature_by_another_key_than_the_x5c_certificate_is_mp124() {
    let mock = start(|_| {}).await;
    // The client's certificate in x5c, but signed with the other organisation's key.
    let (h, c) = valid_parts(&mock, &pki().client, unix_now());
    let a = post_grant(&mock, &sign(&h, &c, &pki().other)).await;
    assert!(assert_refused(&a, "invalid_grant", "MP-124").contains("signature"));

    // A valid signature with one byte of the payload changed afterwards.
    let good = sign(&h, &c, &pki().client);
    let mut parts: Vec<String> = good.split('.').map(str::to_string).collect();
    let mut claims = c.clone();
    claims["scope"] = json!("bits:kundeforhold.write ");
    parts[1] = URL_SAFE_NO_PAD.encode(claims.to_string());
    let a = post_grant(&mock, &parts.join(".")).await;
    assert_refused(&a, "invalid_grant", "MP-124");
}

#[tokio::test]
async fn certificate_from_an_untrusted_ca_is_mp120_naming_the_trust_problem() {
    let mock = start(|_| {}).await;
    let foreign_ca = TestCa::new().unwrap();
    // Same subject shape and org.nr as the real client: only the issuer differs.
    let foreign = foreign_ca
        .issue(ORG, "KFR MOCK TEST BANK AS", &LeafOptions::standard())
        .unwrap();
    let (h, c) = valid_parts(&mock, &foreign, unix_now());
    let a = post_grant(&mock, &sign(&h, &c, &foreign)).await;
    let d = assert_refused(&a, "invalid_grant", "MP-120");
    assert!(d.contains("certificate is not issued by a trusted CA"), "{d}");
}

#[tokio::test]
async fn expired_certificate_is_mp120_saying_expired() {
    let mock = start(|_| {}).await;
    let expired = pki()
        .ca
        .issue(ORG, "KFR MOCK TEST BANK AS", &LeafOptions::expired())
        .unwrap();
    let (h, c) = valid_parts(&mock, &expired, unix_now());
    let a = post_grant(&mock, &sign(&h, &c, &expired)).await;
    let d = assert_refused(&a, "invalid_grant", "MP-120");
    assert!(d.contains("certificate expired"), "{d}");

    // The same valid certificate is judged at the mock's clock: five years ahead, it has expired.
    let mock = start(|c| c.clock_skew_secs = 5 * 365 * 86_400).await;
    let now = mock.state().clock().now_unix();
    let (h, c) = valid_parts(&mock, &pki().client, now);
    let a = post_grant(&mock, &sign(&h, &c, &pki().client)).await;
    assert!(assert_refused(&a, "invalid_grant", "MP-120").contains("certificate expired"));
}

#[tokio::test]
async fn certificate_without_digital_signature_key_usage_is_refused() {
    let mock = start(|_| {}).await;
    let opts = LeafOptions {
        digital_signature: false,
        ..LeafOptions::standard()
    };
    let cert = pki().ca.issue(ORG, "KFR MOCK TEST BANK AS", &opts).unwrap();
    let (h, c) = valid_parts(&mock, &cert, unix_now());
    let a = post_grant(&mock, &sign(&h, &c, &cert)).await;
    assert!(assert_refused(&a, "invalid_grant", "MP-120").contains("digitalSignature"));
}

/// A root → intermediate → leaf chain (the local test CA cannot sign intermediates: pathlen 0).
fn chain_with_intermediate() -> (Vec<u8>, Vec<u8>, IssuedCert) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, PKCS_RSA_SHA256};
    let ca_params = |cn: &str| {
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        p
    };
    let root_key = KeyPair::generate_for(&PKCS_RSA_SHA256).unwrap();
    let root_params = ca_params("Chain Test Root");
    let root = root_params.self_signed(&root_key).unwrap();
    let root_issuer = rcgen::Issuer::from_params(&root_params, &root_key);
    let mid_key = KeyPair::generate_for(&PKCS_RSA_SHA256).unwrap();
    let mid_params = ca_params("Chain Test Intermediate");
    let mid = mid_params.signed_by(&mid_key, &root_issuer).unwrap();
    let mid_issuer = rcgen::Issuer::from_params(&mid_params, &mid_key);
    let leaf_key = KeyPair::generate_for(&PKCS_RSA_SHA256).unwrap();
    let mut leaf_params = CertificateParams::default();
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "CHAIN BANK AS TEST");
    leaf_params
        .distinguished_name
        .push(DnType::CustomDnType(vec![2, 5, 4, 5]), ORG);
    leaf_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let leaf = leaf_params.signed_by(&leaf_key, &mid_issuer).unwrap();
    let issued = IssuedCert {
        cert_der: leaf.der().to_vec(),
        cert_pem: leaf.pem(),
        key_pkcs8_der: leaf_key.serialize_der().into(),
        key_pem: leaf_key.serialize_pem().into(),
        org_number: ORG.into(),
    };
    (root.der().to_vec(), mid.der().to_vec(), issued)
}

#[tokio::test]
async fn x5c_with_intermediates_is_verified_as_a_chain() {
    let (root, mid, leaf) = chain_with_intermediate();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mock = MockServer::start(listener, MockConfig::new(vec![root])).await.unwrap();

    // Leaf alone: no path to the trusted root.
    let (h, c) = valid_parts(&mock, &leaf, unix_now());
    let a = post_grant(&mock, &sign(&h, &c, &leaf)).await;
    assert_refused(&a, "invalid_grant", "MP-120");

    // Leaf followed by the intermediate: accepted.
    let (mut h, c) = valid_parts(&mock, &leaf, unix_now());
    h["x5c"] = x5c(&[&leaf.cert_der, &mid]);
    let a = post_grant(&mock, &sign(&h, &c, &leaf)).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);

    // The usual local PKI with the CA itself after the leaf (kfr's `x5c = "chain"`) also passes.
    let mock = start(|_| {}).await;
    let (mut h, c) = valid_parts(&mock, &pki().client, unix_now());
    h["x5c"] = x5c(&[&pki().client.cert_der, &pki().ca_cert_der]);
    let a = post_grant(&mock, &sign(&h, &c, &pki().client)).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
}

#[tokio::test]
async fn aud_must_equal_the_issuer_exactly_mp110() {
    let mock = start(|_| {}).await;
    let without_slash = mock.issuer().trim_end_matches('/').to_string();
    let a = send_with(&mock, |_, c| c["aud"] = json!(without_slash)).await;
    assert!(assert_refused(&a, "invalid_grant", "MP-110").contains("trailing slash"));
    let issuer = mock.issuer();
    let a = send_with(&mock, |_, c| c["aud"] = json!([issuer])).await;
    assert_refused(&a, "invalid_grant", "MP-110");
}

#[tokio::test]
async fn grant_lifetime_and_expiry_are_mp130() {
    let mock = start(|_| {}).await;
    let a = send_with(&mock, |_, c| c["exp"] = json!(c["iat"].as_i64().unwrap() + 121)).await;
    assert!(assert_refused(&a, "invalid_grant", "MP-130").contains("121"));

    // iat within tolerance but exp already passed. (iat 5 s back, not 9: on a busy machine the
    // grant can reach the mock a few seconds after it was made, and 10 s back is refused for
    // the iat instead.)
    let a = send_with(&mock, |_, c| {
        let now = unix_now();
        c["iat"] = json!(now - 5);
        c["exp"] = json!(now - 2);
    })
    .await;
    assert!(assert_refused(&a, "invalid_grant", "MP-130").contains("expired"));

    let a = send_with(&mock, |_, c| {
        c.as_object_mut().unwrap().remove("exp");
    })
    .await;
    assert_refused(&a, "invalid_grant", "MP-130");
}

#[tokio::test]
async fn iat_more_than_ten_seconds_off_names_the_offset() {
    let mock = start(|_| {}).await;
    let a = send_with(&mock, |_, c| {
        let iat = unix_now() + 30;
        c["iat"] = json!(iat);
        c["exp"] = json!(iat + 60);
    })
    .await;
    let d = assert_refused(&a, "invalid_grant", "MP-130");
    // Whole seconds on both sides: a second boundary crossed between signing and checking
    // makes it 29 (a CI run once saw that).
    assert!(d.contains("30 s ahead of") || d.contains("29 s ahead of"), "{d}");
}

#[tokio::test]
async fn skewed_mock_clock_refuses_local_iat_and_its_date_header_shows_the_skew() {
    let mock = start(|c| c.clock_skew_secs = 60).await;
    let a = send_with(&mock, |_, _| {}).await;
    let d = assert_refused(&a, "invalid_grant", "MP-130");
    assert!(
        d.contains("60 s behind") || d.contains("59 s behind") || d.contains("61 s behind"),
        "{d}"
    );
    let offset = a
        .date
        .expect("Date header")
        .duration_since(SystemTime::now())
        .map(|d| d.as_secs_f64());
    let offset = offset.expect("Date is ahead of the local clock");
    assert!((offset - 60.0).abs() <= 2.0, "Date header is {offset} s ahead");

    // A grant built on the mock's clock (what a client does after measuring the offset) passes,
    // and the success carries the skewed Date too.
    let now = mock.state().clock().now_unix();
    let (h, c) = valid_parts(&mock, &pki().client, now);
    let a = post_grant(&mock, &sign(&h, &c, &pki().client)).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let ahead = a.date.unwrap().duration_since(SystemTime::now()).unwrap().as_secs_f64();
    assert!((ahead - 60.0).abs() <= 2.0);

    // Skew changed at runtime, backwards: the discovery document's Date follows.
    mock.state().set_clock_skew_secs(-120);
    let resp = reqwest::get(format!(
        "{}/maskinporten/.well-known/oauth-authorization-server",
        mock.base_url()
    ))
    .await
    .unwrap();
    let date = httpdate::parse_http_date(resp.headers()[reqwest::header::DATE].to_str().unwrap()).unwrap();
    let behind = SystemTime::now().duration_since(date).unwrap().as_secs_f64();
    assert!((behind - 120.0).abs() <= 2.0, "Date header is {behind} s behind");
}

#[tokio::test]
async fn reused_or_missing_jti_is_mp012() {
    let mock = start(|_| {}).await;
    let (h, c) = valid_parts(&mock, &pki().client, unix_now());
    let assertion = sign(&h, &c, &pki().client);
    assert_eq!(post_grant(&mock, &assertion).await.status, StatusCode::OK);
    let a = post_grant(&mock, &assertion).await;
    assert!(assert_refused(&a, "invalid_grant", "MP-012").contains("jti"));

    let a = send_with(&mock, |_, c| {
        c.as_object_mut().unwrap().remove("jti");
    })
    .await;
    assert_refused(&a, "invalid_grant", "MP-012");

    // After a reset the mock has forgotten the jti (a fresh environment).
    mock.state().reset();
    assert_eq!(post_grant(&mock, &assertion).await.status, StatusCode::OK);
}

#[tokio::test]
async fn claims_outside_digdirs_list_are_invalid_request_naming_the_claim() {
    let mock = start(|_| {}).await;
    let a = send_with(&mock, |_, c| c["nbf"] = c["iat"].clone()).await;
    assert!(assert_refused(&a, "invalid_request", "MP-003").contains("nbf"));
    let a = send_with(&mock, |_, c| c["client_amr"] = json!("virksomhetssertifikat")).await;
    assert!(assert_refused(&a, "invalid_request", "MP-003").contains("client_amr"));
}

fn one_client(scopes: &[&str], owner: Option<&str>) -> Option<BTreeMap<String, MockClient>> {
    let client = MockClient {
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        owner_org: owner.map(str::to_string),
        ..Default::default()
    };
    Some(BTreeMap::from([(CLIENT.to_string(), client)]))
}

#[tokio::test]
async fn unknown_client_is_invalid_client_mp100() {
    let mock = start(|c| c.clients = one_client(&[WRITE], None)).await;
    let a = send_with(&mock, |_, c| c["iss"] = json!("someone-else")).await;
    assert!(assert_refused(&a, "invalid_client", "MP-100").contains("someone-else"));
    // The configured client still works.
    assert_eq!(send_with(&mock, |_, _| {}).await.status, StatusCode::OK);
}

#[tokio::test]
async fn certificate_org_must_own_the_client_mp122() {
    let mock = start(|c| c.clients = one_client(&[WRITE], Some(ORG))).await;
    let other = &pki().other;
    let (h, c) = valid_parts(&mock, other, unix_now());
    let a = post_grant(&mock, &sign(&h, &c, other)).await;
    let d = assert_refused(&a, "invalid_grant", "MP-122");
    assert!(d.contains(&other.org_number) && d.contains(ORG), "{d}");
    assert_eq!(send_with(&mock, |_, _| {}).await.status, StatusCode::OK);
}

#[tokio::test]
async fn scopes_must_be_requested_and_registered_mp004_mp200() {
    let mock = start(|_| {}).await;
    let a = send_with(&mock, |_, c| c["scope"] = json!("bits:kundeforhold")).await;
    assert!(assert_refused(&a, "invalid_scope", "MP-200").contains("bits:kundeforhold"));
    let a = send_with(&mock, |_, c| {
        c.as_object_mut().unwrap().remove("scope");
    })
    .await;
    // The mock's own code: Digdir's MP-201 is about the client's integration type.
    assert_refused(&a, "invalid_scope", "MP-004");

    // A configured client gets exactly its scopes, several at once included.
    let mock = start(|c| c.clients = one_client(&[WRITE, "bits:other"], None)).await;
    let a = send_with(&mock, |_, c| c["scope"] = json!("bits:kundeforhold.write bits:other")).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.body["scope"], "bits:kundeforhold.write bits:other");
    let a = send_with(&mock, |_, c| c["scope"] = json!("bits:other bits:third")).await;
    let d = assert_refused(&a, "invalid_scope", "MP-200");
    assert!(d.contains("bits:third") && !d.contains("bits:other "), "{d}");
}

#[tokio::test]
async fn consumer_org_makes_the_certificate_org_the_supplier() {
    let mock = start(|c| {
        c.delegations = vec![kfr::mock::Delegation::parse(&format!("999999999={ORG}")).unwrap()];
    })
    .await;
    let a = send_with(&mock, |_, c| c["consumer_org"] = json!("999999999")).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let token = a.body["access_token"].as_str().unwrap();
    let c = jwt_claims(token);
    assert_eq!(c["consumer"]["ID"], "0192:999999999");
    assert_eq!(c["supplier"]["ID"], format!("0192:{ORG}"));
    assert_eq!(
        mock.state().verify_access_token(token).unwrap().consumer_org,
        "999999999"
    );

    let a = send_with(&mock, |_, c| c["consumer_org"] = json!("12345")).await;
    assert_refused(&a, "invalid_grant", "MP-002");
}

#[tokio::test]
async fn token_fail_first_answers_503_then_issues() {
    let mock = start(|c| c.token_fail_first = 2).await;
    for _ in 0..2 {
        let a = send_with(&mock, |_, _| {}).await;
        assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(a.body["error"], "temporarily_unavailable");
    }
    assert_eq!(send_with(&mock, |_, _| {}).await.status, StatusCode::OK);
    let state = mock.state();
    assert_eq!(
        (state.token_requests(), state.tokens_issued(), state.faults_injected()),
        (3, 1, 2)
    );

    // Switched at runtime: every request fails with 500.
    state.set_token_faults(TokenFaults {
        latency_ms: 0,
        fail_rate: 1.0,
        fail_first: 0,
    });
    let a = send_with(&mock, |_, _| {}).await;
    assert_eq!(a.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(a.body["error"], "server_error");
}

#[tokio::test]
async fn admin_state_counts_by_mp_code_and_reset_zeroes() {
    let mock = start(|_| {}).await;
    let http = reqwest::Client::new();
    assert_eq!(send_with(&mock, |_, _| {}).await.status, StatusCode::OK);
    send_with(&mock, |_, c| c["nbf"] = json!(1)).await;
    send_with(&mock, |_, c| c["aud"] = json!("https://maskinporten.no/")).await;
    send_with(&mock, |_, c| c["aud"] = json!("https://maskinporten.no/")).await;

    let state: Value = http
        .get(format!("{}/_mock/state", mock.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(state["token_requests"], 4);
    assert_eq!(state["tokens_issued"], 1);
    assert_eq!(state["faults_injected"], 0);
    assert_eq!(state["token_errors"], json!({"MP-003": 1, "MP-110": 2}));
    assert_eq!(state["maskinporten"]["token_requests"], 4);
    assert_eq!(state["maskinporten"]["jtis_remembered"], 1);
    assert_eq!(state["maskinporten"]["issuer"], mock.issuer().as_str());

    // Fault switches over HTTP (for an out-of-process `kfr mock`); unknown fields are refused.
    let r = http
        .post(format!("{}/_mock/faults", mock.base_url()))
        .json(&json!({"clock_skew_secs": 30, "token_fail_first": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(mock.state().clock().skew_secs(), 30);
    let r = http
        .post(format!("{}/_mock/faults", mock.base_url()))
        .json(&json!({"clock_skew": 30}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    let r = http
        .post(format!("{}/_mock/reset", mock.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let state: Value = r.json().await.unwrap();
    assert_eq!(state["token_requests"], 0);
    assert_eq!(state["tokens_issued"], 0);
    assert_eq!(state["token_errors"], json!({}));
    assert_eq!(state["maskinporten"]["jtis_remembered"], 0);
    assert_eq!(state["clock_skew_secs"], 30, "reset keeps settings");
}

#[tokio::test]
async fn verify_access_token_accepts_issued_tokens_and_rejects_forged_and_expired() {
    let mock = start(|c| c.token_lifetime_secs = 60).await;
    let a = send_with(&mock, |_, _| {}).await;
    assert_eq!(a.body["expires_in"], 60);
    let token = a.body["access_token"].as_str().unwrap().to_string();
    let state = mock.state();
    let claims = state.verify_access_token(&token).expect("issued token verifies");
    assert_eq!(claims.consumer_org, ORG);
    assert_eq!(claims.client_id, CLIENT);
    assert_eq!(claims.scope, vec![WRITE.to_string()]);

    // Forged: the payload changed (another org), signature kept.
    let mut parts: Vec<&str> = token.split('.').collect();
    let mut c = jwt_claims(&token);
    c["consumer"]["ID"] = json!("0192:999999999");
    let payload = URL_SAFE_NO_PAD.encode(c.to_string());
    parts[1] = &payload;
    assert_eq!(
        state.verify_access_token(&parts.join(".")),
        Err(TokenRejection::BadSignature)
    );

    // Forged: a token of the same shape from another mock (another key).
    let other = start(|_| {}).await;
    let foreign = send_with(&other, |_, _| {}).await.body["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(state.verify_access_token(&foreign), Err(TokenRejection::BadSignature));
    assert!(matches!(
        state.verify_access_token("garbage"),
        Err(TokenRejection::Malformed(_))
    ));

    // Expired at the mock's clock: move the clock instead of sleeping.
    state.set_clock_skew_secs(61);
    assert!(matches!(
        state.verify_access_token(&token),
        Err(TokenRejection::Expired { .. })
    ));
    state.set_clock_skew_secs(0);
    assert!(
        state.verify_access_token(&token).is_ok(),
        "valid again on the real clock"
    );
}

/// `kfr mock` as a command: bad flags exit 2, a good start logs the URL, serves, and stops
/// cleanly on SIGTERM.
#[test]
fn kfr_mock_command_checks_flags_serves_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &pki().ca_cert_pem).unwrap();
    let bin = env!("CARGO_BIN_EXE_kfr");

    let exit = |args: &[&str]| std::process::Command::new(bin).args(args).output().unwrap();
    assert_eq!(exit(&["mock"]).status.code(), Some(2), "--trust is required");
    let ca_s = ca.to_str().unwrap();
    for bad in [
        vec!["mock", "--trust", "/nonexistent.pem"],
        vec!["mock", "--trust", ca_s, "--client", "no-equals-sign"],
        vec!["mock", "--trust", ca_s, "--token-fail-rate", "1.5"],
        vec!["mock", "--trust", ca_s, "--issuer", "https://no-trailing-slash"],
    ] {
        let out = exit(&bad);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{bad:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // Find a free port, then let `kfr mock` bind it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = std::process::Command::new(bin)
        .args(["mock", "--listen", &listen, "--trust", ca_s, "--clock-skew-secs", "-5"])
        .args(["--client", &format!("{CLIENT}={WRITE}@{ORG}")])
        .current_dir(dir.path())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut child = KillOnDrop(Some(child));
    // The start line names both URLs; a log line before it (e.g. a warning) is not a failure.
    let mut seen = String::new();
    let started = loop {
        let mut line = String::new();
        if std::io::BufRead::read_line(&mut stderr, &mut line).unwrap() == 0 || seen.lines().count() > 20 {
            break None;
        }
        seen.push_str(&line);
        if line.contains(&format!("http://{listen}")) {
            break Some(line);
        }
    };
    let line = started.unwrap_or_else(|| panic!("no start line from `kfr mock`:\n{seen}"));
    assert!(line.contains(&format!("http://{listen}/maskinporten/")), "{line}");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let health = rt.block_on(async { reqwest::get(format!("http://{listen}/healthz")).await.unwrap().status() });
    assert_eq!(health, StatusCode::OK);

    let mut child = child.0.take().unwrap();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "graceful shutdown exits 0");
}

/// Stops the `kfr mock` child if an assertion fails before the SIGTERM step.
struct KillOnDrop(Option<std::process::Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ---- Issue 10, item 4: grant strictness and the client registry ---------------------------

#[tokio::test]
async fn every_x5c_element_must_be_a_certificate() {
    let mock = start(|_| {}).await;
    // Before issue 10 only x5c[0] was parsed, so junk after the leaf passed.
    let a = send_with(&mock, |h, _| {
        h["x5c"] = json!([
            STANDARD.encode(&pki().client.cert_der),
            STANDARD.encode(b"not a certificate")
        ]);
    })
    .await;
    let d = assert_refused(&a, "invalid_grant", "MP-123");
    assert!(d.contains("x5c[1]"), "{d}");
}

#[tokio::test]
async fn any_crit_header_is_refused() {
    let mock = start(|_| {}).await;
    let a = send_with(&mock, |h, _| h["crit"] = json!(["exp"])).await;
    let d = assert_refused(&a, "invalid_grant", "MP-002");
    assert!(d.contains("crit"), "{d}");
}

#[tokio::test]
async fn iat_ten_seconds_ahead_is_refused_nine_is_not() {
    let mock = start(|_| {}).await;
    // Start just after a second boundary, so test and mock read the same whole second and the
    // offset is exactly 10 (a tick in between would make it 9 and the test pass for nothing).
    let into = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().subsec_millis();
    tokio::time::sleep(Duration::from_millis(u64::from(1010 - into))).await;
    let now = unix_now();
    let a = send_with(&mock, |_, c| {
        c["iat"] = json!(now + 10);
        c["exp"] = json!(now + 60);
    })
    .await;
    let d = assert_refused(&a, "invalid_grant", "MP-130");
    assert!(d.contains("ahead"), "{d}");
    let a = send_with(&mock, |_, c| {
        c["iat"] = json!(unix_now() + 8);
        c["exp"] = json!(unix_now() + 60);
    })
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
}

fn registry(keys: ClientKeys, expires_in: Option<u64>) -> Option<BTreeMap<String, MockClient>> {
    Some(BTreeMap::from([(
        CLIENT.to_string(),
        MockClient {
            scopes: vec![WRITE.into()],
            owner_org: Some(ORG.into()),
            keys,
            expires_in,
        },
    )]))
}

#[tokio::test]
async fn the_key_mode_is_fixed_per_client() {
    // A business-certificate client sending kid.
    let mock = start(|c| c.clients = registry(ClientKeys::Certificate, None)).await;
    let a = send_with(&mock, |h, _| {
        h.as_object_mut().unwrap().remove("x5c");
        h["kid"] = json!("key-1");
    })
    .await;
    let d = assert_refused(&a, "invalid_grant", "MP-124");
    assert!(d.contains("send x5c"), "{d}");

    // A key client: kid works, x5c is refused.
    let keys = BTreeMap::from([("key-1".to_string(), pki().client.cert_der.clone())]);
    let mock = start(|c| c.clients = registry(ClientKeys::Keys(keys), None)).await;
    let a = send_with(&mock, |_, _| {}).await;
    let d = assert_refused(&a, "invalid_grant", "MP-123");
    assert!(d.contains("send kid"), "{d}");
    let a = send_with(&mock, |h, _| {
        h.as_object_mut().unwrap().remove("x5c");
        h["kid"] = json!("key-1");
    })
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let a = send_with(&mock, |h, _| {
        h.as_object_mut().unwrap().remove("x5c");
        h["kid"] = json!("key-2");
    })
    .await;
    assert_refused(&a, "invalid_grant", "MP-124");
}

#[tokio::test]
async fn expires_in_is_set_per_client_and_the_client_uses_it() {
    let mock = start(|c| c.clients = registry(ClientKeys::Certificate, Some(7200))).await;
    let a = send_with(&mock, |_, _| {}).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.body["expires_in"], 7200);
    let exp = jwt_claims(a.body["access_token"].as_str().unwrap())["exp"]
        .as_i64()
        .unwrap();
    assert!((exp - unix_now() - 7200).abs() <= 2);

    for bad in [0, 7201] {
        let mut cfg = MockConfig::new(vec![pki().ca_cert_der.clone()]);
        cfg.clients = registry(ClientKeys::Certificate, Some(bad));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        assert!(MockServer::start(listener, cfg).await.is_err(), "expires_in {bad}");
    }
}
