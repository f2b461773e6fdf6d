//! Issue 10, "fidelity": the mock and the client held to the letter of Digdir's and Bits' rules.
//! Each test names the rule it holds; several of them failed before the fix (a mock that let a
//! request through, or a client that sent something a strict front end refuses).
//!
//! Where the real service's answer matters and the mock cannot stand in for it (the API gateway
//! in front of KFR), a small scripted server on a loopback port plays that part.

use crate::util;
use axum::http::{HeaderMap, Method as AxMethod, StatusCode as AxStatus};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use kfr::http::RetryPolicy;
use kfr::ids::{CustomerId, IdPolicy};
use kfr::kfr::{AddOutcome, KfrClient, KfrClientConfig, RemoveOutcome};
use kfr::maskinporten::{TokenClient, TokenError};
use kfr::mock::{Delegation, MockServer};
use reqwest::StatusCode;
use secrecy::ExposeSecret as _;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};

const ORG: &str = util::ORG;
/// A consumer organisation with a valid mod-11 check digit (synthetic).
const CONSUMER: &str = "910000004";
const PERSON: &str = "15108695088";
const CORRELATION: &str = "294fafb7-0e4e-4177-a5ff-ce7367c45814";
const WRITE: &str = "bits:kundeforhold.write";

fn id(s: &str) -> CustomerId {
    CustomerId::parse(s, &IdPolicy::test()).unwrap()
}

fn kfr_client(kfr_base: &str, org: &str, tokens: TokenClient) -> KfrClient {
    KfrClient::new(
        reqwest::Client::new(),
        tokens,
        KfrClientConfig {
            base_url: url::Url::parse(kfr_base).unwrap(),
            org_number: org.into(),
            retry: RetryPolicy::immediate(1),
            max_batch_bytes: kfr::kfr::batch::DEFAULT_MAX_BYTES,
        },
    )
}

fn delegated_tokens(mock: &MockServer, consumer: &str) -> TokenClient {
    let consumer = consumer.to_string();
    util::token_client(mock, move |c| c.default_request.consumer_org = Some(consumer))
}

fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

#[track_caller]
fn assert_refused(err: &TokenError, error: &str, code: &str) {
    match err {
        TokenError::Rejected { error: e, mp_code, .. } => {
            assert_eq!(e, error, "{err}");
            assert_eq!(mp_code.as_deref(), Some(code), "{err}");
        }
        other => panic!("expected a refusal {code}, got {other}"),
    }
}

async fn post_admin(mock: &MockServer, path: &str, body: Value) -> (StatusCode, Value) {
    let resp = reqwest::Client::new()
        .post(format!("{}/_mock/{path}", mock.base_url()))
        .json(&body)
        .send()
        .await
        .unwrap();
    (resp.status(), resp.json().await.unwrap_or(Value::Null))
}

// ---- Item 1: delegation -------------------------------------------------------------------

#[tokio::test]
async fn consumer_org_needs_a_declared_delegation_and_never_names_oneself() {
    let mock = util::start_mock(|_| {}).await;
    // No delegation declared: before issue 10 the mock issued a token for any consumer_org.
    let err = delegated_tokens(&mock, CONSUMER).token().await.unwrap_err();
    assert_refused(&err, "invalid_grant", "MP-251");
    assert!(err.to_string().contains(CONSUMER), "{err}");
    // Acting "for" oneself is not a delegation either.
    let err = delegated_tokens(&mock, ORG).token().await.unwrap_err();
    assert_refused(&err, "invalid_grant", "MP-251");
}

#[tokio::test]
async fn a_declared_delegation_gets_a_token_that_kfr_honours_until_it_is_revoked() {
    let mock = util::start_mock(|c| {
        c.delegations = vec![Delegation::parse(&format!("{CONSUMER}={ORG}")).unwrap()];
    })
    .await;
    let tokens = delegated_tokens(&mock, CONSUMER);
    let token = tokens.token().await.unwrap();
    let claims = claims_of(token.secret().expose_secret());
    assert_eq!(claims["consumer"]["ID"], format!("0192:{CONSUMER}"));
    assert_eq!(claims["supplier"]["ID"], format!("0192:{ORG}"));

    let client = kfr_client(&mock.kfr_base_url(), CONSUMER, tokens);
    let added = client.add(&id(PERSON), None).await.unwrap();
    assert_eq!(added.value, AddOutcome::Added);

    // Revoked at runtime: the token still verifies, but no delegation backs it any more.
    let (status, body) = post_admin(&mock, "faults", json!({ "delegations": [] })).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["maskinporten"]["delegations"], json!([]));
    let err = client.remove(&id(PERSON), None).await.unwrap_err();
    assert!(err.to_string().contains("KFR-003"), "{err}");

    // A malformed delegation is refused and changes nothing.
    let (status, _) = post_admin(&mock, "faults", json!({ "delegations": ["910000004"] })).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[test]
fn the_client_refuses_consumer_org_equal_to_org_number_when_configuration_is_resolved() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = util::config_for(dir.path(), &util::pki().client, "http://127.0.0.1:9", ORG);
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(&format!("consumer_org = \"{ORG}\"\n"));
    std::fs::write(&cfg, text).unwrap();
    let out = util::kfr(dir.path())
        .arg("--config")
        .arg(&cfg)
        .args(["config", "show"])
        .output()
        .unwrap();
    let (_, stderr) = util::output_text(&out);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("consumer_org"), "{stderr}");
}

// ---- Item 2: resource as an array -------------------------------------------------------

#[tokio::test]
async fn resource_is_sent_as_a_json_array_and_a_string_is_refused() {
    let mock = util::start_mock(|_| {}).await;
    let tokens = util::token_client(&mock, |c| {
        c.default_request.resource = Some("https://kfr.example/api, https://other.example/".into());
    });
    let token = tokens.token().await.unwrap();
    let claims = claims_of(token.secret().expose_secret());
    assert_eq!(
        claims["aud"],
        json!(["https://kfr.example/api", "https://other.example/"])
    );
    let one = util::token_client(&mock, |c| {
        c.default_request.resource = Some("https://kfr.example/api".into());
    });
    let token = one.token().await.unwrap();
    assert_eq!(
        claims_of(token.secret().expose_secret())["aud"],
        "https://kfr.example/api"
    );

    // A grant whose resource is a bare string: signed with the real key, so only that differs.
    let credential = util::credential(&util::pki().client);
    let params = kfr::maskinporten::grant::GrantParams {
        audience: mock.issuer(),
        client_id: util::CLIENT_ID.into(),
        scope: WRITE.into(),
        consumer_org: None,
        resource: None,
        x5c: kfr::maskinporten::X5cMode::Leaf,
        kid: None,
    };
    let now = chrono::Utc::now().timestamp();
    let grant = kfr::maskinporten::grant::sign(&credential, &params, now, uuid::Uuid::new_v4()).unwrap();
    let grant = grant.expose_secret();
    // Re-sign the same header and claims with a string resource.
    let header: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(grant.split('.').next().unwrap()).unwrap()).unwrap();
    let mut claims = claims_of(grant);
    claims["resource"] = json!("https://kfr.example/api");
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(util::pki().client.key_pem.as_bytes()).unwrap();
    let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &key, jsonwebtoken::Algorithm::RS256).unwrap();
    let body = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", kfr::mock::JWT_BEARER)
        .append_pair("assertion", &format!("{input}.{sig}"))
        .finish();
    let resp = reqwest::Client::new()
        .post(format!("{}/maskinporten/token", mock.base_url()))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "invalid_grant");
    assert!(
        body["error_description"].as_str().unwrap().contains("resource must be"),
        "{body}"
    );
}

// ---- Item 3: Content-Length on bodiless writes ------------------------------------------

/// A front end that insists on RFC 9110 §8.6: a POST or DELETE without `Content-Length` (or
/// chunked framing) gets 411; otherwise add answers 201 and delete 204, like KFR.
async fn length_insisting_front_end() -> (String, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let app = axum::Router::new().fallback(move |method: AxMethod, headers: HeaderMap| {
        let log = log.clone();
        async move {
            let length = headers
                .get("content-length")
                .map(|v| v.to_str().unwrap_or("?").to_string());
            log.lock()
                .unwrap()
                .push(format!("{method} {}", length.as_deref().unwrap_or("-")));
            if length.is_none() && !headers.contains_key("transfer-encoding") {
                return AxStatus::LENGTH_REQUIRED;
            }
            match method {
                AxMethod::POST => AxStatus::CREATED,
                AxMethod::DELETE => AxStatus::NO_CONTENT,
                _ => AxStatus::METHOD_NOT_ALLOWED,
            }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/kar-ws/api/v1"), seen)
}

#[tokio::test]
async fn bodiless_add_and_delete_carry_content_length_zero_past_a_strict_front_end() {
    let mock = util::start_mock(|_| {}).await;
    let (front, seen) = length_insisting_front_end().await;
    let client = kfr_client(&front, ORG, util::token_client(&mock, |_| {}));
    let added = client.add(&id(PERSON), None).await.unwrap();
    assert_eq!(added.value, AddOutcome::Added);
    let removed = client.remove(&id(PERSON), None).await.unwrap();
    assert_eq!(removed.value, RemoveOutcome::Removed);
    assert_eq!(*seen.lock().unwrap(), ["POST 0", "DELETE 0"]);
}

#[tokio::test]
async fn the_fake_kfr_answers_411_to_a_bodiless_write_without_content_length() {
    let mock = util::start_mock(|_| {}).await;
    let token = util::token_client(&mock, |_| {}).token().await.unwrap();
    let url = format!(
        "{}/customers/financialInstitutions/{ORG}/relationshipType/DSOPBANK",
        mock.kfr_base_url()
    );
    // A raw HTTP/1.1 request, so no client library adds or drops the header behind our back.
    for method in ["POST", "DELETE"] {
        let status = raw_status(&url, method, token.secret().expose_secret(), None).await;
        assert_eq!(status, 411, "{method} without Content-Length");
    }
    let status = raw_status(&url, "POST", token.secret().expose_secret(), Some(0)).await;
    assert_eq!(status, 201);
    let status = raw_status(&url, "DELETE", token.secret().expose_secret(), Some(0)).await;
    assert_eq!(status, 204);
}

/// Sends one hand-written HTTP/1.1 request and returns the status code.
async fn raw_status(url: &str, method: &str, token: &str, content_length: Option<u64>) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let u = url::Url::parse(url).unwrap();
    let mut stream = tokio::net::TcpStream::connect((u.host_str().unwrap(), u.port().unwrap()))
        .await
        .unwrap();
    let length = content_length.map_or(String::new(), |n| format!("Content-Length: {n}\r\n"));
    let req = format!(
        "{method} {} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\nCustomerID: {PERSON}\r\n\
         CorrelationID: {CORRELATION}\r\n{length}Connection: close\r\n\r\n",
        u.path(),
        u.host_str().unwrap()
    );
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let text = String::from_utf8_lossy(&answer);
    text.split_whitespace().nth(1).unwrap().parse().unwrap()
}

// ---- Item 5: fake KFR headers -----------------------------------------------------------

async fn kfr_request(
    mock: &MockServer,
    method: reqwest::Method,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, Value) {
    let token = util::token_client(mock, |_| {}).token().await.unwrap();
    let mut b = reqwest::Client::new()
        .request(method, format!("{}{path}", mock.kfr_base_url()))
        .bearer_auth(token.secret().expose_secret())
        .header("Content-Length", "0");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let resp = b.send().await.unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// Path, headers, and the error code expected.
type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);

#[tokio::test]
async fn correlation_id_only_in_the_hyphenated_form_and_headers_only_once() {
    let mock = util::start_mock(|_| {}).await;
    let add = format!("/customers/financialInstitutions/{ORG}/relationshipType/DSOPBANK");
    let lookup = format!("/customers/financialInstitutions/{ORG}/");
    let cases: [Case; 5] = [
        // uuid's other spellings: simple, braced, URN.
        (
            &add,
            &[
                ("CustomerID", PERSON),
                ("CorrelationID", "294fafb70e4e4177a5ffce7367c45814"),
            ],
            "KFR-004",
        ),
        (
            &add,
            &[
                ("CustomerID", PERSON),
                ("CorrelationID", "{294fafb7-0e4e-4177-a5ff-ce7367c45814}"),
            ],
            "KFR-004",
        ),
        (
            &add,
            &[
                ("CustomerID", PERSON),
                ("CorrelationID", "urn:uuid:294fafb7-0e4e-4177-a5ff-ce7367c45814"),
            ],
            "KFR-004",
        ),
        // Repeated headers: before issue 10 the first one silently counted.
        (
            &add,
            &[
                ("CustomerID", PERSON),
                ("CustomerID", "02013299997"),
                ("CorrelationID", CORRELATION),
            ],
            "KFR-004",
        ),
        (
            &add,
            &[
                ("CustomerID", PERSON),
                ("CorrelationID", CORRELATION),
                ("CorrelationID", CORRELATION),
            ],
            "KFR-004",
        ),
    ];
    for (path, headers, code) in cases {
        let (status, body) = kfr_request(&mock, reqwest::Method::POST, path, headers).await;
        assert_eq!(
            (status.as_u16(), body["errorCode"].as_str()),
            (400, Some(code)),
            "{headers:?}: {body}"
        );
    }
    let (status, body) = kfr_request(
        &mock,
        reqwest::Method::GET,
        &lookup,
        &[("CustomerID", PERSON), ("CustomerID", PERSON)],
    )
    .await;
    assert_eq!(
        (status.as_u16(), body["errorCode"].as_str()),
        (400, Some("ERR-002")),
        "{body}"
    );
    assert!(mock.state().relationships().is_empty(), "nothing was registered");
}

#[tokio::test]
async fn the_lookup_405_carries_an_error_body() {
    let mock = util::start_mock(|_| {}).await;
    let (status, body) = kfr_request(
        &mock,
        reqwest::Method::PUT,
        &format!("/customers/financialInstitutions/{ORG}/"),
        &[("CustomerID", PERSON)],
    )
    .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(body["errorCode"].is_string(), "{body}");
    assert!(
        body["errorMessage"].is_string() && body["timestamp"].is_string(),
        "{body}"
    );
}

/// Bits' own FAQ batch example, byte for byte in its framing (including the blank line after
/// DSOPBANK), with the part names the spec requires and synthetic organisation numbers.
#[tokio::test]
async fn the_faq_batch_example_with_its_blank_line_is_accepted() {
    let mock = util::start_mock(|_| {}).await;
    let token = util::token_client(&mock, |_| {}).token().await.unwrap();
    let boundary = "873380600719114776488944";
    let body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"customer_type\"\r\n\r\nDSOPBANK\r\n\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"customers\"\r\nContent-Type: text/plain\r\n\r\n\
         910000004#2019-11-08,{ORG}\r\n--{boundary}--\r\n"
    );
    let resp = reqwest::Client::new()
        .post(format!(
            "{}/customers/financialInstitutions/{ORG}/batch",
            mock.kfr_base_url()
        ))
        .bearer_auth(token.secret().expose_secret())
        .header("CorrelationID", CORRELATION)
        .header("Content-Type", format!("multipart/form-data; boundary={boundary}"))
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    assert_eq!(status, StatusCode::CREATED, "{}", resp.text().await.unwrap());
    // Only that one blank line is forgiven: a second is still KFR-009.
    let body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"customer_type\"\r\n\r\nDSOPBANK\r\n\r\n\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"customers\"\r\n\r\n{ORG}\r\n--{boundary}--\r\n"
    );
    let resp = reqwest::Client::new()
        .post(format!(
            "{}/customers/financialInstitutions/{ORG}/batch",
            mock.kfr_base_url()
        ))
        .bearer_auth(token.secret().expose_secret())
        .header("CorrelationID", CORRELATION)
        .header("Content-Type", format!("multipart/form-data; boundary={boundary}"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["errorCode"], "KFR-009");
}

// ---- Item 6: errors that tell the truth -------------------------------------------------

#[tokio::test]
async fn a_scope_bits_has_not_given_the_institution_is_mp250_and_the_hint_says_ask_bits() {
    let mock = util::start_mock(|c| {
        c.scope_access.insert(WRITE.into(), vec![CONSUMER.into()]);
    })
    .await;
    let err = util::token_client(&mock, |_| {}).token().await.unwrap_err();
    assert_refused(&err, "invalid_scope", "MP-250");
    let hint = kfr::error::Hinted::hint(&err).unwrap();
    assert!(hint.contains("ask Bits"), "{hint}");
    // MP-200 (not on the client) points at the self-service instead.
    let mock = util::start_mock(|c| {
        c.clients = Some(std::collections::BTreeMap::from([(
            util::CLIENT_ID.to_string(),
            kfr::mock::MockClient {
                scopes: vec!["kfr-mock:other".into()],
                ..Default::default()
            },
        )]));
    })
    .await;
    let err = util::token_client(&mock, |_| {}).token().await.unwrap_err();
    assert_refused(&err, "invalid_scope", "MP-200");
    assert!(kfr::error::Hinted::hint(&err).unwrap().contains("self-service"));
}

/// A Maskinporten stand-in whose token endpoint answers a fixed refusal until a grant's `iat`
/// matches its clock, which runs `skew` seconds off the real one (discovery answers with the
/// real time, so the skew is first seen on the refusal).
async fn scripted_maskinporten(skew: i64, refusal: Value) -> (url::Url, Arc<Mutex<Vec<i64>>>) {
    scripted_maskinporten_with(skew, refusal, true).await
}

/// As [`scripted_maskinporten`]; with `accept` false every grant is refused.
async fn scripted_maskinporten_with(skew: i64, refusal: Value, accept: bool) -> (url::Url, Arc<Mutex<Vec<i64>>>) {
    let iats = Arc::new(Mutex::new(Vec::new()));
    let seen = iats.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let issuer = format!("{base}/maskinporten/");
    let meta = json!({ "issuer": issuer, "token_endpoint": format!("{base}/maskinporten/token") });
    let app = axum::Router::new()
        .route(
            "/maskinporten/.well-known/oauth-authorization-server",
            axum::routing::get(move || async move { axum::Json(meta) }),
        )
        .route(
            "/maskinporten/token",
            axum::routing::post(move |body: String| {
                let seen = seen.clone();
                let refusal = refusal.clone();
                async move {
                    let assertion = url::form_urlencoded::parse(body.as_bytes())
                        .find(|(k, _)| k == "assertion")
                        .map(|(_, v)| v.into_owned())
                        .unwrap();
                    let iat = claims_of(&assertion)["iat"].as_i64().unwrap();
                    seen.lock().unwrap().push(iat);
                    let server_now = chrono::Utc::now().timestamp() + skew;
                    let date = httpdate::fmt_http_date(
                        std::time::UNIX_EPOCH + std::time::Duration::from_secs(server_now as u64),
                    );
                    let headers = [(axum::http::header::DATE, date)];
                    if accept && (iat - server_now).abs() < 10 {
                        let ok = json!({"access_token": "opaque", "token_type": "Bearer", "expires_in": 120, "scope": WRITE});
                        (AxStatus::OK, headers, axum::Json(ok))
                    } else {
                        (AxStatus::BAD_REQUEST, headers, axum::Json(refusal))
                    }
                }
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url::Url::parse(&issuer).unwrap(), iats)
}

fn scripted_client(issuer: url::Url) -> TokenClient {
    let cfg = kfr::maskinporten::TokenClientConfig {
        env: kfr::config::Environment::Local,
        issuer,
        client_id: util::CLIENT_ID.into(),
        default_request: kfr::maskinporten::TokenRequest {
            scope: WRITE.into(),
            consumer_org: None,
            resource: None,
        },
        x5c: kfr::config::X5cMode::Leaf,
        kid: None,
        refresh_ahead: std::time::Duration::from_secs(30),
        retry: RetryPolicy::immediate(4),
    };
    TokenClient::new(reqwest::Client::new(), util::credential(&util::pki().client), cfg)
}

#[tokio::test]
async fn an_uncoded_clock_refusal_is_retried_with_the_measured_offset() {
    // Worded like Maskinporten's refusal of a grant from the future, without an MP-code.
    let refusal = json!({"error": "invalid_grant", "error_description": "Issue time is after now"});
    let (issuer, iats) = scripted_maskinporten(-60, refusal).await;
    let token = scripted_client(issuer).token().await.unwrap();
    assert_eq!(token.scope, WRITE);
    let iats = iats.lock().unwrap().clone();
    assert_eq!(iats.len(), 2, "one refusal, one corrected grant: {iats:?}");
    assert!((iats[0] - iats[1] - 60).abs() <= 2, "{iats:?}");

    // A bare invalid_grant with a fresh offset of 10 s or more is taken as a clock refusal too.
    let (issuer, iats) = scripted_maskinporten(30, json!({"error": "invalid_grant"})).await;
    scripted_client(issuer).token().await.unwrap();
    assert_eq!(iats.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn a_refusal_without_a_clock_cause_is_final_and_shows_its_error_uri() {
    let refusal = json!({
        "error": "invalid_grant",
        "error_description": "certificate not valid",
        "error_uri": "https://docs.example/errors/certificate"
    });
    // The clocks agree, so nothing suggests a time problem: one request, then the error.
    let (issuer, iats) = scripted_maskinporten_with(0, refusal, false).await;
    let err = scripted_client(issuer).token().await.unwrap_err();
    assert!(
        err.to_string()
            .contains("(see https://docs.example/errors/certificate)"),
        "{err}"
    );
    assert_eq!(iats.lock().unwrap().len(), 1);
}

// ---- Item 7: Norwegian days -------------------------------------------------------------

/// The mock's clock set to 23:30 UTC (the next such instant): in Oslo it is already tomorrow,
/// whichever the season, and the fake KFR's "today" must be that Oslo date.
#[tokio::test]
async fn between_23_and_midnight_utc_the_fake_kfr_uses_the_oslo_date() {
    let now = chrono::Utc::now();
    let mut target = now.date_naive().and_hms_opt(23, 30, 0).unwrap().and_utc();
    if target < now {
        target += chrono::Duration::days(1);
    }
    let utc_day = target.date_naive();
    let oslo_day = utc_day.succ_opt().unwrap();
    assert_eq!(kfr::clock::oslo_date(target), oslo_day);

    let mock = util::start_mock(|c| c.clock_skew_secs = (target - now).num_seconds()).await;
    assert_eq!(
        mock.state().clock().today(),
        oslo_day,
        "before issue 10 this was the UTC day"
    );
    let client = kfr_client(&mock.kfr_base_url(), ORG, util::token_client(&mock, |_| {}));

    // An add starts today (Oslo); today's default lookup finds it.
    client.add(&id(PERSON), None).await.unwrap();
    let rows = mock.state().relationships();
    assert_eq!(rows[0].start_date, oslo_day, "{rows:?}");
    assert!(
        !client
            .lookup(&id(PERSON), None, None, None)
            .await
            .unwrap()
            .value
            .is_empty()
    );
    // Looking up the UTC day alone does not find it: it did not exist then.
    let banks = client
        .lookup(&id(PERSON), Some(utc_day), Some(utc_day), None)
        .await
        .unwrap();
    assert!(banks.value.is_empty());
    // A delete ends it on the Oslo day.
    client.remove(&id(PERSON), None).await.unwrap();
    assert_eq!(mock.state().relationships()[0].end_date, Some(oslo_day));
}

// ---- Item 9: loopback only --------------------------------------------------------------

#[test]
fn the_mock_refuses_a_non_loopback_address_without_allow_remote() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &util::pki().ca_cert_pem).unwrap();
    let out = util::kfr(dir.path())
        .args(["mock", "--listen", "0.0.0.0:0", "--trust"])
        .arg(&ca)
        .timeout(std::time::Duration::from_secs(20))
        .output()
        .unwrap();
    let (_, stderr) = util::output_text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("loopback") && stderr.contains("--allow-remote"),
        "{stderr}"
    );
}

#[tokio::test]
async fn the_in_process_mock_refuses_a_non_loopback_listener_unless_allowed() {
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let cfg = kfr::mock::MockConfig::new(vec![util::pki().ca_cert_der.clone()]);
    let Err(err) = MockServer::start(listener, cfg.clone()).await else {
        panic!("a non-loopback listener was accepted");
    };
    assert!(err.to_string().contains("loopback"), "{err}");
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let cfg = kfr::mock::MockConfig {
        allow_remote: true,
        ..cfg
    };
    let mock = MockServer::start(listener, cfg).await.unwrap();
    mock.shutdown().await;
}
