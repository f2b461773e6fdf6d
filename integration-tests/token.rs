//! The Maskinporten token client against the strict fake Maskinporten: single flight,
//! refresh-ahead, clock skew, retries, error hints, and no secrets in logs; plus the `kfr token`
//! and `kfr doctor` commands end to end.

use crate::util::{ORG, certs_local, kfr, output_text, start_mock, token_client};
use kfr::error::Hinted as _;
use kfr::http::RetryPolicy;
use kfr::maskinporten::TokenError;
use kfr::mock::MockServer;
use secrecy::ExposeSecret as _;
use std::time::Duration;

fn set_latency(mock: &MockServer, ms: u64) {
    let state = mock.state();
    let mut f = state.token_faults();
    f.latency_ms = ms;
    state.set_token_faults(f);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_hundred_fifty_concurrent_callers_cause_one_token_request() {
    let mock = start_mock(|c| c.token_latency_ms = 300).await;
    let client = token_client(&mock, |_| {});
    let mut tasks = Vec::new();
    for _ in 0..150 {
        let c = client.clone();
        tasks.push(tokio::spawn(async move { c.token().await.map(|t| t.serial()) }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), 1, "every caller gets the same (first) token");
    }
    assert_eq!(mock.state().token_requests(), 1);
    assert_eq!(client.token_requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_ahead_serves_the_valid_token_while_one_refresh_runs() {
    // Lifetime 4 s, refresh ahead capped at half of it: refresh starts after 2 s.
    let mock = start_mock(|c| c.token_lifetime_secs = 4).await;
    let client = token_client(&mock, |c| c.refresh_ahead = Duration::from_secs(3));
    let first = client.token().await.unwrap();
    assert_eq!(first.serial(), 1);
    tokio::time::sleep(Duration::from_millis(2200)).await;

    // The refresh now takes 1.5 s; callers must not wait for it.
    set_latency(&mock, 1500);
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            tokio::time::timeout(Duration::from_millis(400), c.token())
                .await
                .map(|r| r.unwrap().serial())
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().expect("a caller waited for the refresh"), 1);
    }
    // Exactly one refresh went out, and its token replaces the old one once it arrives.
    let mut serial = 1;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        serial = client.token().await.unwrap().serial();
        if serial == 2 {
            break;
        }
    }
    assert_eq!(serial, 2, "the background refresh did not land");
    assert_eq!(mock.state().token_requests(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_skewed_maskinporten_clock_is_measured_and_compensated() {
    for skew in [75i64, -60] {
        let mock = start_mock(|c| c.clock_skew_secs = skew).await;
        let client = token_client(&mock, |_| {});
        let token = client.token().await.expect("token despite the skew");
        assert!(token.is_usable());
        let offset = client.clock_offset_secs();
        assert!((offset - skew).abs() <= 1, "measured {offset}, skew {skew}");
        assert_eq!(mock.state().token_requests(), 1, "no refused attempt was needed");
        assert!(mock.state().token_errors().is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skew_that_appears_after_discovery_costs_one_refused_grant_then_succeeds() {
    let mock = start_mock(|_| {}).await;
    let client = token_client(&mock, |_| {});
    client.metadata().await.unwrap();
    assert_eq!(client.clock_offset_secs(), 0);
    mock.state().set_clock_skew_secs(-90);
    client.token().await.expect("second attempt with the measured offset");
    assert_eq!(mock.state().token_requests(), 2);
    assert_eq!(mock.state().token_errors().get("MP-130"), Some(&1));
    assert!((client.clock_offset_secs() + 90).abs() <= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_are_retried_and_refusals_are_not() {
    let mock = start_mock(|c| c.token_fail_first = 2).await;
    let client = token_client(&mock, |_| {});
    client.token().await.expect("third attempt succeeds");
    assert_eq!(mock.state().token_requests(), 3);

    let mock = start_mock(|c| c.token_fail_first = 5).await;
    let client = token_client(&mock, |c| c.retry = RetryPolicy::immediate(3));
    let err = client.token().await.unwrap_err();
    assert!(matches!(err, TokenError::Status { status: 503, .. }), "{err:?}");
    assert_eq!(mock.state().token_requests(), 3, "gave up after max_attempts");

    // A refused grant (unknown scope for this client) is final: one request only.
    let mock = start_mock(|_| {}).await;
    let client = token_client(&mock, |c| c.default_request.scope = "bits:kundeforhold".into());
    let err = client.token().await.unwrap_err();
    assert_eq!(mock.state().token_requests(), 1);
    assert!(
        matches!(&err, TokenError::Rejected { error, .. } if error == "invalid_scope"),
        "{err:?}"
    );
    assert!(err.hint().unwrap().contains("scope"), "{:?}", err.hint());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidate_forces_a_new_token() {
    let mock = start_mock(|_| {}).await;
    let client = token_client(&mock, |_| {});
    let t1 = client.token().await.unwrap();
    assert_eq!(client.token().await.unwrap().serial(), t1.serial(), "cached");
    client.invalidate(&t1);
    let t2 = client.token().await.unwrap();
    assert_ne!(t2.serial(), t1.serial());
    assert_ne!(t2.secret().expose_secret(), t1.secret().expose_secret());
    // Invalidating the old token again does not throw away the new one.
    client.invalidate(&t1);
    assert_eq!(client.token().await.unwrap().serial(), t2.serial());
    assert_eq!(mock.state().token_requests(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_cached_per_scope() {
    let mut clients = std::collections::BTreeMap::new();
    clients.insert(
        crate::util::CLIENT_ID.to_string(),
        kfr::mock::MockClient {
            scopes: vec!["bits:kundeforhold.write".into(), "bits:other".into()],
            owner_org: None,
            ..Default::default()
        },
    );
    let mock = start_mock(|c| c.clients = Some(clients)).await;
    let client = token_client(&mock, |_| {});
    let write = client.token().await.unwrap();
    let other_req = kfr::maskinporten::TokenRequest {
        scope: "bits:other".into(),
        consumer_org: None,
        resource: None,
    };
    let other = client.token_for(&other_req).await.unwrap();
    assert_eq!(write.scope, "bits:kundeforhold.write");
    assert_eq!(other.scope, "bits:other");
    client.token().await.unwrap();
    client.token_for(&other_req).await.unwrap();
    assert_eq!(mock.state().token_requests(), 2);
}

/// A trace-level log capture of a whole token fetch (discovery, a refused attempt, a retry, the
/// grant and the token) holds no token, grant, password, key or certificate material. Runs the
/// binary, so the capture is exactly what an operator's log would get.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_logs_of_a_token_fetch_hold_no_secrets() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().to_owned();
    let u = url.clone();
    tokio::task::spawn_blocking(move || certs_local(&dir, &u))
        .await
        .unwrap();
    let mock = mock_for_dir(listener, d.path()).await;
    let mut f = mock.state().token_faults();
    f.fail_first = 1;
    mock.state().set_token_faults(f);

    let dir = d.path().to_owned();
    let out = tokio::task::spawn_blocking(move || {
        kfr(&dir)
            .arg("--config")
            .arg(dir.join("kfr.toml"))
            .args(["token", "--json", "--show-token"])
            .env("KFR_LOG", "trace")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let (stdout, logs) = output_text(&out);
    assert!(out.status.success(), "{logs}");
    assert!(logs.contains("maskinporten_token"), "the capture saw the fetch: {logs}");
    assert!(logs.contains("retrying"), "the capture saw the retry: {logs}");
    assert!(logs.lines().count() > 20, "trace level was on: {logs}");

    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let token = v["access_token"].as_str().unwrap();
    assert!(!logs.contains(token), "access token leaked");
    assert!(
        !logs.contains(&token[token.len() - 30..]),
        "access token signature leaked"
    );
    assert!(!logs.contains("eyJ"), "something JWT-shaped (token or grant) leaked");
    assert!(!logs.contains("assertion="), "the form body leaked");
    assert!(!logs.contains("PRIVATE KEY"), "key material leaked");
    let password = std::fs::read_to_string(d.path().join("client.p12.password")).unwrap();
    assert!(!logs.contains(password.trim()), "the certificate password leaked");
    let key_pem = std::fs::read_to_string(d.path().join("client-key.pem")).unwrap();
    let key_line = key_pem.lines().nth(1).unwrap();
    assert!(!logs.contains(key_line), "key material leaked");
    let cert_pem = std::fs::read_to_string(d.path().join("client-cert.pem")).unwrap();
    let cert_line = cert_pem.lines().nth(2).unwrap();
    assert!(!logs.contains(cert_line), "certificate (x5c) leaked");
}

/// Reads `dir/ca.pem` and starts a mock on `listener` trusting it.
async fn mock_for_dir(listener: tokio::net::TcpListener, dir: &std::path::Path) -> MockServer {
    use rustls_pki_types::pem::PemObject as _;
    let pem = std::fs::read(dir.join("ca.pem")).unwrap();
    let ders: Vec<Vec<u8>> = rustls_pki_types::CertificateDer::pem_slice_iter(&pem)
        .map(|c| c.unwrap().to_vec())
        .collect();
    kfr::mock::MockServer::start(listener, kfr::mock::MockConfig::new(ders))
        .await
        .unwrap()
}

/// The foundation issue's acceptance, in-process: certs → mock → token → doctor, and a
/// certificate from another CA refused with the certificate problem named and a hint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_and_doctor_commands_end_to_end() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let d = tempfile::tempdir().unwrap();
    let e = tempfile::tempdir().unwrap();
    let (dp, ep, u) = (d.path().to_owned(), e.path().to_owned(), url.clone());
    tokio::task::spawn_blocking(move || {
        certs_local(&dp, &u);
        certs_local(&ep, &u);
    })
    .await
    .unwrap();
    let mock = mock_for_dir(listener, d.path()).await;

    let run = |dir: std::path::PathBuf, args: &'static [&'static str]| {
        tokio::task::spawn_blocking(move || {
            let cfg = dir.join("kfr.toml");
            kfr(&dir).arg("--config").arg(cfg).args(args).output().unwrap()
        })
    };
    let out = run(d.path().to_owned(), &["token"]).await.unwrap();
    let (stdout, stderr) = output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stdout.contains("expires at"), "{stdout}");
    assert!(stdout.contains("scope         bits:kundeforhold.write"), "{stdout}");
    assert!(stdout.contains(&format!("consumer org  {ORG}")), "{stdout}");
    assert!(!stdout.contains("eyJ"), "the token is printed only with --show-token");
    assert_eq!(mock.state().token_requests(), 1);

    let out = run(d.path().to_owned(), &["token", "--json", "--show-token"])
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["access_token"].as_str().unwrap().starts_with("eyJ"));
    assert_eq!(v["consumer_org"], ORG);

    let out = run(d.path().to_owned(), &["doctor"]).await.unwrap();
    let (stdout, stderr) = output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    for check in [
        "certificate",
        "validity",
        "key usage",
        "org number",
        "environment",
        "discovery",
        "token",
        "clock",
    ] {
        assert!(
            stdout.lines().any(|l| l.starts_with("ok") && l.contains(check)),
            "{check}: {stdout}"
        );
    }

    // The other directory's CA is not trusted by the mock.
    let out = run(e.path().to_owned(), &["token"]).await.unwrap();
    let (_, stderr) = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("MP-120"), "{stderr}");
    assert!(stderr.contains("trusted"), "names the certificate problem: {stderr}");
    assert!(stderr.contains("hint: "), "{stderr}");

    let out = run(e.path().to_owned(), &["doctor"]).await.unwrap();
    let (stdout, _) = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.lines().any(|l| l.starts_with("FAIL") && l.contains("token")),
        "{stdout}"
    );
}

/// Issue 21: a renewed business certificate dropped in place is used from the next grant on,
/// without a restart. Here Maskinporten trusts only the renewal's CA, so a token is had exactly
/// when the new certificate signs the grant; a half-done renewal (the new certificate beside the
/// old key) keeps the previous pair in use until the key follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_business_certificate_signs_the_next_grant_without_a_restart() {
    use kfr::maskinporten::{CredentialSource, TokenClient};
    let renewal_ca = kfr::certs::TestCa::named("KFR Renewal Test CA").unwrap();
    let mock = start_mock(|c| c.trusted_ca_der = vec![renewal_ca.cert_der.clone()]).await;
    let dir = tempfile::tempdir().unwrap();
    let (key, cert) = (dir.path().join("key.pem"), dir.path().join("cert.pem"));
    // Each file replaced as renewals are installed: written beside, renamed over.
    let install = |path: &std::path::Path, text: &str| {
        let tmp = path.with_extension("new");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    };
    let old = &crate::util::pki().client;
    install(&key, &old.key_pem);
    install(&cert, &old.cert_pem);
    let source = CredentialSource::Pem {
        private_key: key.clone(),
        certificate: cert.clone(),
        password: None,
    };
    let client = TokenClient::reloading(reqwest::Client::new(), source, crate::util::token_config(&mock)).unwrap();
    let err = client.token().await.expect_err("the old CA is no longer trusted");
    assert!(matches!(err, TokenError::Rejected { .. }), "{err}");
    assert!(client.credential().info().issuer.contains("KFR Local Test CA"));

    let renewed = renewal_ca
        .issue(ORG, "KFR TEST BANK AS", &kfr::certs::LeafOptions::standard())
        .unwrap();
    install(&cert, &renewed.cert_pem);
    // The new certificate with the old key does not load: the old pair stays, still refused.
    assert!(client.token().await.is_err());
    assert!(client.credential().info().issuer.contains("KFR Local Test CA"));

    install(&key, &renewed.key_pem);
    let token = client.token().await.expect("the renewed certificate signs the grant");
    assert!(!token.secret().expose_secret().is_empty());
    assert!(client.credential().info().issuer.contains("KFR Renewal Test CA"));
    assert_eq!(mock.state().snapshot().maskinporten.tokens_issued, 1);
}
