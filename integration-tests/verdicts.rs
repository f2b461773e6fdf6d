//! One attempt, one verdict, end to end against the in-process mock: what `KfrClient::*_once`
//! reports for each kind of answer (docs/specs/verdicts.md), and how the retrying operations on
//! top treat each verdict. The status/code table itself is a unit test
//! (`kfr::verdict::tests`); here the network, the token client and the mock's fault switches
//! take part. No test waits longer than the one second a `Retry-After` has to be honoured.

use crate::util::{self, ORG, start_mock};
use kfr::http::RetryPolicy;
use kfr::ids::{CustomerId, IdPolicy};
use kfr::kfr::{AddOutcome, KfrClient, KfrClientConfig, KfrError, RemoveOutcome, Scope, Verdict, VerdictClass};
use kfr::maskinporten::TokenClient;
use kfr::mock::{MockClient, MockEnv, MockServer};
use serde_json::Value;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// A fødselsnummer valid in every environment.
const PERSON: &str = "15108695088";

fn id(raw: &str) -> CustomerId {
    CustomerId::parse(raw, &IdPolicy::test()).unwrap()
}

fn kfr_client(kfr_base: &str, tokens: TokenClient, retry: RetryPolicy) -> KfrClient {
    KfrClient::new(
        reqwest::Client::builder()
            .timeout(Duration::from_millis(500))
            .build()
            .unwrap(),
        tokens,
        KfrClientConfig {
            base_url: url::Url::parse(kfr_base).unwrap(),
            org_number: ORG.into(),
            retry,
            max_batch_bytes: kfr::kfr::batch::DEFAULT_MAX_BYTES,
        },
    )
}

fn client(mock: &MockServer, retry: RetryPolicy) -> KfrClient {
    kfr_client(&mock.kfr_base_url(), util::token_client(mock, |_| {}), retry)
}

async fn state(mock: &MockServer) -> Value {
    reqwest::get(format!("{}/_mock/state", mock.base_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn count(mock: &MockServer, op: &str, status: &str) -> u64 {
    state(mock).await["kfr_requests_by_operation"][op][status]
        .as_u64()
        .unwrap_or(0)
}

async fn faults(mock: &MockServer, update: Value) {
    let r = reqwest::Client::new()
        .post(format!("{}/_mock/faults", mock.base_url()))
        .json(&update)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivered_attempts_report_status_echo_and_outcome() {
    let mock = start_mock(|_| {}).await;
    let c = client(&mock, RetryPolicy::immediate(1));
    let p = id(PERSON);
    let cid = Uuid::new_v4();
    let a = c.add_once(&p, cid).await;
    assert_eq!(a.verdict, Verdict::Delivered(AddOutcome::Added));
    assert_eq!((a.status, a.requests), (Some(201), 1));
    assert_eq!(a.correlation_id, cid);
    assert_eq!(a.echoed_correlation_id, Some(cid.to_string()));
    assert!(a.latency > Duration::ZERO && a.latency < Duration::from_secs(5));
    assert!(a.error().is_none());

    let a = c.add_once(&p, Uuid::new_v4()).await;
    assert_eq!(
        (a.status, a.verdict),
        (Some(200), Verdict::Delivered(AddOutcome::AlreadyPresent))
    );
    let a = c.remove_once(&p, Uuid::new_v4()).await;
    assert_eq!(
        (a.status, a.verdict),
        (Some(204), Verdict::Delivered(RemoveOutcome::Removed))
    );
    // Deleting what is not there is the wanted state: delivered, not an error (kfr-notes §6).
    let a = c.remove_once(&p, Uuid::new_v4()).await;
    assert_eq!(
        (a.status, a.verdict),
        (Some(404), Verdict::Delivered(RemoveOutcome::NotFound))
    );
    let a = c.lookup_once(&p, None, None, Uuid::new_v4()).await;
    assert!(
        matches!(a.verdict, Verdict::Delivered(ref banks) if banks.is_empty()),
        "{:?}",
        a.verdict
    );
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bare_404_is_systemic_for_the_endpoint_not_not_found() {
    let mock = start_mock(|_| {}).await;
    let wrong = format!("{}/kar-ws/api/v2", mock.base_url());
    let c = kfr_client(&wrong, util::token_client(&mock, |_| {}), RetryPolicy::immediate(3));
    let a = c.remove_once(&id(PERSON), Uuid::new_v4()).await;
    assert_eq!(a.status, Some(404));
    assert!(
        matches!(
            a.verdict,
            Verdict::Systemic {
                scope: Scope::Endpoint,
                ..
            }
        ),
        "{:?}",
        a.verdict
    );
    // The retrying operation gives up at once: every request would meet the same 404.
    let err = c.remove(&id(PERSON), None).await.unwrap_err();
    assert!(err.is_systemic(), "{err}");
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_costs_one_fresh_token_inside_the_same_attempt() {
    let mock = start_mock(|_| {}).await;
    let tokens = util::token_client(&mock, |_| {});
    let c = kfr_client(&mock.kfr_base_url(), tokens.clone(), RetryPolicy::immediate(1));
    let p = id(PERSON);
    assert!(c.add_once(&p, Uuid::new_v4()).await.verdict.is_delivered());
    let first = tokens.token().await.unwrap().serial();
    // The mock's clock jumps past the cached token's expiry: KFR now refuses it with 401, while
    // our cache still thinks it usable. (The next grant costs one MP-130 while the token client
    // measures the new offset; that is the token client's business, not this attempt's.)
    mock.state().set_clock_skew_secs(600);
    let a = c.add_once(&p, Uuid::new_v4()).await;
    assert_eq!(
        a.verdict,
        Verdict::Delivered(AddOutcome::AlreadyPresent),
        "{:?}",
        a.error()
    );
    assert_eq!(
        a.requests, 2,
        "the refused request and its repetition with a fresh token"
    );
    assert_eq!(count(&mock, "add", "401").await, 1);
    assert!(
        tokens.token().await.unwrap().serial() > first,
        "a new token was fetched"
    );
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_after_a_fresh_token_is_systemic_for_the_credentials() {
    // Tokens from another Maskinporten: this KFR can never accept them.
    let kfr = start_mock(|_| {}).await;
    let other = start_mock(|_| {}).await;
    let c = kfr_client(
        &kfr.kfr_base_url(),
        util::token_client(&other, |_| {}),
        RetryPolicy::immediate(4),
    );
    let a = c.add_once(&id(PERSON), Uuid::new_v4()).await;
    assert_eq!((a.status, a.requests), (Some(401), 2));
    match &a.verdict {
        Verdict::Systemic { scope, code, .. } => {
            assert_eq!((*scope, code.as_deref()), (Scope::Credentials, Some("KFR-001")));
        }
        v => panic!("{v:?}"),
    }
    assert_eq!(other.state().token_requests(), 2, "one refresh, not more");
    // Not retried by the retrying operation either: one more attempt, two more requests.
    let err = c.add(&id(PERSON), None).await.unwrap_err();
    assert_eq!(err.class(), VerdictClass::Systemic(Scope::Credentials));
    assert_eq!(count(&kfr, "add", "401").await, 4);
    kfr.shutdown().await;
    other.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_is_systemic_and_nothing_reaches_kfr() {
    // Scope not granted to the client (MP-200): the permission, not the event, is at fault.
    let mock = start_mock(|_| {}).await;
    let tokens = util::token_client(&mock, |c| c.default_request.scope = "bits:kundeforhold".into());
    let c = kfr_client(&mock.kfr_base_url(), tokens, RetryPolicy::immediate(4));
    let a = c.add_once(&id(PERSON), Uuid::new_v4()).await;
    assert_eq!(
        (a.status, a.requests, a.echoed_correlation_id.as_deref()),
        (None, 0, None)
    );
    match &a.verdict {
        Verdict::Systemic { scope, code, .. } => {
            assert_eq!((*scope, code.as_deref()), (Scope::Permission, Some("MP-200")));
        }
        v => panic!("{v:?}"),
    }
    assert!(matches!(a.error(), Some(KfrError::Token(_))));
    // The retrying operation does not repeat a refusal.
    let err = c.remove(&id(PERSON), None).await.unwrap_err();
    assert!(err.is_systemic(), "{err}");
    assert_eq!(state(&mock).await["kfr_requests"], 0, "nothing was sent to KFR");

    // An unknown client (MP-100, invalid_client): the credentials.
    let mut clients = std::collections::BTreeMap::new();
    clients.insert(
        "someone-else".to_string(),
        MockClient {
            scopes: vec!["bits:kundeforhold.write".into()],
            owner_org: None,
            ..Default::default()
        },
    );
    let strict = start_mock(|c| c.clients = Some(clients)).await;
    let c = client(&strict, RetryPolicy::immediate(4));
    let a = c.add_once(&id(PERSON), Uuid::new_v4()).await;
    assert!(
        matches!(&a.verdict, Verdict::Systemic { scope: Scope::Credentials, code: Some(c), .. } if c == "MP-100"),
        "{:?}",
        a.verdict
    );
    assert_eq!(strict.state().token_requests(), 1, "a refusal is not retried");
    mock.shutdown().await;
    strict.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kfr_refusals_of_scope_and_institution_are_systemic() {
    let mut clients = std::collections::BTreeMap::new();
    clients.insert(
        util::CLIENT_ID.to_string(),
        MockClient {
            scopes: vec!["bits:kundeforhold.write".into(), "bits:kundeforhold".into()],
            owner_org: None,
            ..Default::default()
        },
    );
    let mock = start_mock(|c| c.clients = Some(clients)).await;
    // A token without the write scope: KFR-002.
    let read_only = util::token_client(&mock, |c| c.default_request.scope = "bits:kundeforhold".into());
    let c = kfr_client(&mock.kfr_base_url(), read_only, RetryPolicy::immediate(4));
    let a = c.add_once(&id(PERSON), Uuid::new_v4()).await;
    assert!(
        matches!(&a.verdict, Verdict::Systemic { scope: Scope::Permission, code: Some(c), .. } if c == "KFR-002"),
        "{:?}",
        a.verdict
    );
    // Another institution's fid: KFR-003, and the retrying operation stops at the first answer.
    let mut c = client(&mock, RetryPolicy::immediate(4));
    c = KfrClient::new(
        reqwest::Client::new(),
        c.tokens().clone(),
        KfrClientConfig {
            org_number: "910000004".into(),
            ..c.config().clone()
        },
    );
    let err = c.add(&id(PERSON), None).await.unwrap_err();
    assert_eq!(err.class(), VerdictClass::Systemic(Scope::Institution));
    assert_eq!(err.code(), Some("KFR-003"));
    assert_eq!(count(&mock, "add", "403").await, 2, "one KFR-002, one KFR-003");
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_identifier_is_about_this_event_only() {
    // The prod-rules KFR refuses a synthetic (Tenor) person that test rules accept: KFR-005.
    let mock = start_mock(|c| c.env = MockEnv::Prod).await;
    // 15.89.86 (month + 80), both check digits valid.
    let synthetic = "15898610036".to_string();
    let p = id(&synthetic);
    let c = client(&mock, RetryPolicy::immediate(4));
    let a = c.add_once(&p, Uuid::new_v4()).await;
    match &a.verdict {
        Verdict::Rejected { code, message } => {
            assert_eq!(code.as_deref(), Some("KFR-005"));
            assert!(!message.contains(&synthetic), "{message}");
        }
        v => panic!("{v:?}"),
    }
    let err = c.add(&p, None).await.unwrap_err();
    assert_eq!(err.class(), VerdictClass::Rejected);
    assert!(!err.to_string().contains(&synthetic), "{err}");
    assert_eq!(count(&mock, "add", "400").await, 2, "a rejection is not retried");
    // Another customer goes through: the rejection was about that event only.
    assert!(c.add_once(&id(PERSON), Uuid::new_v4()).await.verdict.is_delivered());
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_timeouts_and_refused_connections_are_transient() {
    let mock = start_mock(|c| c.kfr_faults.error_rate = 1.0).await;
    let c = client(&mock, RetryPolicy::immediate(3));
    let a = c.add_once(&id(PERSON), Uuid::new_v4()).await;
    assert_eq!(a.status, Some(500));
    assert!(
        matches!(&a.verdict, Verdict::Transient { reason, .. } if reason.contains("KFR-007")),
        "{:?}",
        a.verdict
    );

    // Held open past the client's timeout (500 ms here).
    faults(&mock, serde_json::json!({"error_rate": 0.0, "timeout_rate": 1.0})).await;
    let a = c.remove_once(&id(PERSON), Uuid::new_v4()).await;
    assert_eq!(a.status, None);
    assert!(
        matches!(&a.verdict, Verdict::Transient { server_delay: None, .. }),
        "{:?}",
        a.verdict
    );
    assert!(
        matches!(a.error(), Some(KfrError::Transport { timeout: true, .. })),
        "{:?}",
        a.error()
    );
    faults(&mock, serde_json::json!({"timeout_rate": 0.0})).await;

    // Nobody listening where KFR should be.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}/kar-ws/api/v1", dead.local_addr().unwrap());
    drop(dead);
    let c = kfr_client(&dead_url, util::token_client(&mock, |_| {}), RetryPolicy::immediate(2));
    let a = c.add_once(&id(PERSON), Uuid::new_v4()).await;
    assert!(matches!(a.verdict, Verdict::Transient { .. }), "{:?}", a.verdict);
    assert!(matches!(a.error(), Some(KfrError::Transport { timeout: false, .. })));
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maskinporten_failing_or_unreachable_is_transient() {
    let mock = start_mock(|c| c.token_fail_first = 100).await;
    let c = client(&mock, RetryPolicy::immediate(4));
    let a = c.add_once(&id(PERSON), Uuid::new_v4()).await;
    assert!(matches!(a.verdict, Verdict::Transient { .. }), "{:?}", a.verdict);
    assert_eq!(a.requests, 0);
    // The token client retried with its policy (4 attempts); the KFR layer adds none on top.
    let before = mock.state().token_requests();
    let err = c.add(&id(PERSON), None).await.unwrap_err();
    assert_eq!(err.class(), VerdictClass::Transient);
    assert_eq!(mock.state().token_requests() - before, 4);
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_is_waited_out_for_its_retry_after_then_retried() {
    let mock = start_mock(|c| {
        c.kfr_faults.rate_limit_rate = 1.0;
        c.kfr_faults.retry_after_secs = 1;
    })
    .await;
    let p = id(PERSON);
    let once = client(&mock, RetryPolicy::immediate(1))
        .add_once(&p, Uuid::new_v4())
        .await;
    assert_eq!(once.status, Some(429));
    assert_eq!(
        once.verdict,
        Verdict::RateLimited {
            retry_after: Some(Duration::from_secs(1))
        }
    );

    // Our own backoff is zero; only the server's Retry-After (1 s, under a 5 s cap) makes it wait.
    let c = client(
        &mock,
        RetryPolicy::immediate(3).with_retry_after_cap(Duration::from_secs(5)),
    );
    let started = Instant::now();
    let task = tokio::spawn(async move { c.add(&p, None).await });
    // Lift the rate limit as soon as the first 429 of the retrying call is counted.
    let deadline = Instant::now() + Duration::from_secs(5);
    while count(&mock, "add", "429").await < 2 {
        assert!(Instant::now() < deadline, "no second 429");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    faults(&mock, serde_json::json!({"rate_limit_rate": 0.0})).await;
    let out = task.await.unwrap().unwrap();
    assert_eq!((out.value, out.attempts), (AddOutcome::Added, 2));
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "waited {:?}",
        started.elapsed()
    );
    assert_eq!(
        count(&mock, "add", "429").await,
        2,
        "no retry before Retry-After ran out"
    );
    mock.shutdown().await;
}
