//! HTTP ingest over loopback with a real client, against a temporary SQLite store.

use super::*;
use crate::sync::source::testkit::{TestOutbox, person};
use serde_json::json;

const KEY: &str = "test-ingest-key-0123456789abcdef";

struct Running {
    url: String,
    mem: TestOutbox,
    intake: Intake,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<SourceReport, IngestError>>,
    client: reqwest::Client,
}

fn key() -> IngestKey {
    IngestKey::new(SecretString::from(KEY.to_string())).unwrap()
}

async fn start_with(tweak: impl FnOnce(&mut IngestOptions)) -> Running {
    start_guarded(None, tweak).await
}

/// An ingest server whose intake keeps the per-customer flood guard at `max`, if given.
async fn start_guarded(max: Option<u64>, tweak: impl FnOnce(&mut IngestOptions)) -> Running {
    let mem = TestOutbox::default();
    let mut intake = mem.intake();
    if let Some(max) = max {
        intake = intake.with_flood_limit(max);
    }
    let mut opts = IngestOptions::new("127.0.0.1:0".parse().unwrap(), key());
    tweak(&mut opts);
    let bound = IngestServer::bind(opts, intake.clone()).await.unwrap();
    assert!(!bound.is_tls());
    let url = format!("http://{}/events", bound.local_addr());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(bound.run(shutdown.clone()));
    Running {
        url,
        mem,
        intake,
        shutdown,
        task,
        client: reqwest::Client::new(),
    }
}

async fn start() -> Running {
    start_with(|_| {}).await
}

impl Running {
    async fn post(&self, content_type: &str, body: String) -> (u16, Value) {
        let r = self
            .client
            .post(&self.url)
            .bearer_auth(KEY)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    async fn stop(self) -> SourceReport {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap()
    }
}

fn add(n: usize, id: &str) -> Value {
    json!({"op":"add","customer_id":person(n),"event_id":id})
}

#[tokio::test]
async fn an_object_an_array_and_ndjson_are_taken_and_duplicates_counted() {
    let s = start().await;
    let (st, body) = s.post("application/json", add(0, "o-1").to_string()).await;
    assert_eq!(st, 202, "{body}");
    assert_eq!(body["stored"], 1);
    assert_eq!(body["events"][0], json!({"event_id":"o-1","result":"stored"}));

    let arr = json!([add(1, "a-1"), add(0, "o-1"), {"op":"remove","customer_id":person(2)}]);
    let (st, body) = s.post("application/json; charset=utf-8", arr.to_string()).await;
    assert_eq!(st, 202, "{body}");
    assert_eq!(
        (body["stored"].clone(), body["duplicate"].clone()),
        (json!(2), json!(1))
    );
    assert_eq!(body["events"][1]["result"], "duplicate");
    let generated = body["events"][2]["event_id"].as_str().unwrap();
    assert!(uuid::Uuid::parse_str(generated).is_ok());

    let nd = format!("{}\r\n\n{}\n", add(3, "n-1"), add(4, "n-2"));
    let (st, body) = s.post("application/x-ndjson", nd.clone()).await;
    assert_eq!((st, body["stored"].clone()), (202, json!(2)));
    // text/plain is read as NDJSON too; the same ids again are duplicates only.
    let (st, body) = s.post("text/plain", nd).await;
    assert_eq!(
        (st, body["stored"].clone(), body["duplicate"].clone()),
        (202, json!(0), json!(2))
    );

    assert_eq!(s.mem.stored().len(), 5);
    assert!(s.mem.stored().iter().all(|e| e.source == "http"));
    let report = s.stop().await;
    assert_eq!((report.stored, report.duplicates), (5, 3));
}

#[tokio::test]
async fn one_bad_event_refuses_the_whole_request_and_lists_every_reason_masked() {
    let s = start().await;
    let p = person(1);
    let bad = format!("{}{}", &p[..10], (p.as_bytes()[10] - b'0' + 1) % 10);
    let arr = json!([
        add(0, "ok-1"),
        {"op":"add","customer_id":bad,"event_id":format!("ev-{p}")},
        {"op":"remove","customer_id":person(2),"start_date":"2020-01-01"},
    ]);
    let (st, body) = s.post("application/json", arr.to_string()).await;
    assert_eq!(st, 400, "{body}");
    assert!(s.mem.stored().is_empty(), "nothing of a refused request is stored");
    let refused = body["refused"].as_array().unwrap();
    assert_eq!(refused.len(), 2);
    assert_eq!(refused[0]["index"], 1);
    assert_eq!(refused[0]["field"], "customer_id");
    assert_eq!(refused[0]["rule"], "customer_id.second_check_digit");
    assert!(refused[0]["event_id"].as_str().unwrap().starts_with("ev-*********"));
    assert_eq!(refused[1]["index"], 2);
    assert_eq!(refused[1]["rule"], "start_date.not_on_remove");
    let text = body.to_string();
    for id in [person(0), person(1), person(2), bad] {
        assert!(!text.contains(&id), "{text}");
    }

    // NDJSON refusals carry the line; a broken JSON line is refused without echoing it.
    let nd = format!("{}\n\n{{\"op\":\"add\",\"customer_id\":{}\n", add(0, "ok-1"), person(3));
    let (st, body) = s.post("application/x-ndjson", nd).await;
    assert_eq!(st, 400);
    assert_eq!(body["refused"][0]["line"], 3);
    assert_eq!(body["refused"][0]["rule"], "event.json");
    assert!(!body.to_string().contains(&person(3)));

    for (ct, b, rule) in [
        ("application/json", "{".to_string(), "body.json"),
        ("application/json", "17".to_string(), "body.shape"),
        ("application/json", "[]".to_string(), "body.empty"),
        ("application/x-ndjson", "\n\n".to_string(), "body.empty"),
    ] {
        let (st, body) = s.post(ct, b.clone()).await;
        assert_eq!((st, body["refused"][0]["rule"].as_str()), (400, Some(rule)), "{b}");
    }
    assert!(s.mem.stored().is_empty());
    assert_eq!(s.stop().await.refused, 7);
}

/// `"op":"add",…,"op":"remove"`: serde_json keeps the last value, so the request used to be
/// stored as a remove. Refused whole with the key and the event's index (issue 19).
#[tokio::test]
async fn an_event_naming_a_key_twice_is_refused_with_nothing_stored() {
    let s = start().await;
    let twice = format!(
        "{{\"op\":\"add\",\"customer_id\":\"{}\",\"event_id\":\"d-2\",\"op\":\"remove\"}}",
        person(1)
    );
    let arr = format!("[{},{twice}]", add(0, "d-1"));
    let (st, body) = s.post("application/json", arr).await;
    assert_eq!(st, 400, "{body}");
    let refused = body["refused"].as_array().unwrap();
    assert_eq!(refused.len(), 1, "{body}");
    assert_eq!(refused[0]["index"], 1);
    assert_eq!(refused[0]["rule"], "event.duplicate_key");
    assert_eq!(refused[0]["event_id"], "d-2");
    assert!(refused[0]["message"].as_str().unwrap().contains("key \"op\""), "{body}");
    // One object alone, and NDJSON (with its line), the same.
    let (st, body) = s.post("application/json", twice.clone()).await;
    assert_eq!(
        (st, body["refused"][0]["rule"].as_str()),
        (400, Some("event.duplicate_key"))
    );
    assert_eq!(body["refused"][0]["index"], 0);
    let (st, body) = s
        .post("application/x-ndjson", format!("{}\n{twice}\n", add(0, "d-1")))
        .await;
    assert_eq!(st, 400, "{body}");
    assert_eq!(
        (body["refused"][0]["index"].clone(), body["refused"][0]["line"].clone()),
        (json!(1), json!(2))
    );
    assert_eq!(body["refused"][0]["rule"], "event.duplicate_key");
    assert!(s.mem.stored().is_empty(), "nothing of a refused request is stored");
    s.stop().await;
}

#[tokio::test]
async fn wrong_key_size_and_media_type_are_refused_before_anything_is_read() {
    let s = start_with(|o| o.max_body_bytes = 1024).await;
    let body = add(0, "k-1").to_string();
    let no_key = s
        .client
        .post(&s.url)
        .header("content-type", "application/json")
        .body(body.clone());
    let r = no_key.send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    for wrong in ["x", &KEY[..KEY.len() - 1], &format!("{KEY}x")] {
        let r = s
            .client
            .post(&s.url)
            .bearer_auth(wrong)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{wrong}");
    }
    let r = s
        .client
        .post(&s.url)
        .header("authorization", format!("bearer {KEY}"))
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "the scheme name is case-insensitive");

    let big = format!("[{}]", vec![add(1, "big").to_string(); 40].join(","));
    assert!(big.len() > 1024);
    assert_eq!(s.post("application/json", big.clone()).await.0, 413);
    // Without a Content-Length (chunked), the limit still holds.
    {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let addr = s.url.trim_start_matches("http://").trim_end_matches("/events");
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "POST /events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n\
             Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
             {:x}\r\n{big}\r\n0\r\n\r\n",
            big.len()
        );
        // The server may answer and close before reading it all.
        let _ = tcp.write_all(req.as_bytes()).await;
        let mut answer = Vec::new();
        let _ = tcp.read_to_end(&mut answer).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    }
    assert_eq!(s.post("application/xml", body).await.0, 415);
    assert_eq!(s.mem.stored().len(), 1, "nothing refused was stored");
    // What `curl --data-binary @file` sends when not told a type (form-urlencoded), and no type
    // at all: read by the body's first character, NDJSON or an array.
    let nd = format!("{}\n{}\n", add(5, "curl-1"), add(6, "curl-2"));
    let (st, answer) = s.post("application/x-www-form-urlencoded", nd).await;
    assert_eq!((st, answer["stored"].as_u64()), (202, Some(2)), "{answer}");
    let arr = format!("[{}]", add(7, "bare-1"));
    let r = s.client.post(&s.url).bearer_auth(KEY).body(arr).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 202);
    assert_eq!(s.mem.stored().len(), 4);
    s.stop().await;
}

#[tokio::test]
async fn draining_and_a_failing_store_answer_503_and_store_nothing() {
    let s = start().await;
    s.mem.set_failing(true);
    let (st, body) = s.post("application/json", add(0, "f-1").to_string()).await;
    assert_eq!((st, body["error"].as_str()), (503, Some("store")));
    assert!(
        matches!(
            s.intake.health.unready()[..],
            [crate::sync::health::Unready::StoreNotWritable(_)]
        ),
        "the store problem makes the agent not ready"
    );
    s.mem.set_failing(false);
    assert_eq!(s.post("application/json", add(0, "f-1").to_string()).await.0, 202);
    assert!(s.intake.health.unready().is_empty(), "a commit that works clears it");

    s.intake.health.set_draining();
    let (st, body) = s.post("application/json", add(1, "d-1").to_string()).await;
    assert_eq!((st, body["error"].as_str()), (503, Some("draining")));
    assert_eq!(s.mem.stored().len(), 1);
    s.stop().await;
}

#[tokio::test]
async fn plain_http_off_loopback_needs_an_explicit_option() {
    let mem = TestOutbox::default();
    let opts = IngestOptions::new("0.0.0.0:0".parse().unwrap(), key());
    let err = IngestServer::bind(opts.clone(), mem.intake()).await.err().unwrap();
    assert!(matches!(err, IngestError::PlainHttpNotLoopback { .. }), "{err}");
    assert!(err.to_string().contains("allow_plain_http"));
    let allowed = IngestOptions {
        allow_plain_http: true,
        ..opts
    };
    assert!(IngestServer::bind(allowed, mem.intake()).await.is_ok());
}

#[test]
fn the_key_file_must_be_private_and_long_enough() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key");
    std::fs::write(&path, format!("{KEY}\n")).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = IngestKey::from_file(&path).unwrap_err();
        assert!(
            matches!(err, IngestError::KeyFilePermissions { mode: 0o640, .. }),
            "{err}"
        );
        assert!(!err.to_string().contains(KEY));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let k = IngestKey::from_file(&path).unwrap();
    assert!(k.matches(KEY.as_bytes()), "the final newline is not part of the key");
    assert!(!format!("{k:?}").contains(KEY));
    std::fs::write(&path, "short\n").unwrap();
    assert!(matches!(
        IngestKey::from_file(&path),
        Err(IngestError::KeyTooShort { .. })
    ));
}

#[tokio::test]
async fn tls_serves_with_the_configured_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert = dir.path().join("cert.pem");
    let keyf = dir.path().join("key.pem");
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&keyf, ck.signing_key.serialize_pem()).unwrap();
    let mem = TestOutbox::default();
    let mut opts = IngestOptions::new("127.0.0.1:0".parse().unwrap(), key());
    opts.tls = Some(TlsFiles {
        cert: cert.clone(),
        key: keyf,
    });
    let bound = IngestServer::bind(opts, mem.intake()).await.unwrap();
    assert!(bound.is_tls());
    let url = format!("https://localhost:{}/events", bound.local_addr().port());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(bound.run(shutdown.clone()));
    let client = reqwest::Client::builder()
        .tls_certs_merge(reqwest::Certificate::from_pem_bundle(ck.cert.pem().as_bytes()).unwrap())
        .resolve("localhost", "127.0.0.1:0".parse().unwrap())
        .build()
        .unwrap();
    let r = client
        .post(&url)
        .bearer_auth(KEY)
        .json(&add(0, "t-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(mem.stored().len(), 1);
    shutdown.cancel();
    task.await.unwrap().unwrap();

    // A key that does not fit the certificate is refused at bind.
    let other = rcgen::KeyPair::generate().unwrap();
    let wrong = dir.path().join("wrong.pem");
    std::fs::write(&wrong, other.serialize_pem()).unwrap();
    let mut opts = IngestOptions::new("127.0.0.1:0".parse().unwrap(), key());
    opts.tls = Some(TlsFiles { cert, key: wrong });
    let err = IngestServer::bind(opts, mem.intake()).await.err().unwrap();
    assert!(matches!(err, IngestError::Tls { .. }), "{err}");
}

/// Issue 21: a renewed certificate dropped in place is served to the next connection, no
/// restart. A half-done renewal (new certificate, old key) keeps the previous pair in service.
#[tokio::test]
async fn a_renewed_tls_certificate_is_served_to_new_connections_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, keyf) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let install = |path: &std::path::Path, text: String| {
        let tmp = path.with_extension("new");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    };
    let old = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let new = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    install(&cert, old.cert.pem());
    install(&keyf, old.signing_key.serialize_pem());
    let mem = TestOutbox::default();
    let mut opts = IngestOptions::new("127.0.0.1:0".parse().unwrap(), key());
    opts.tls = Some(TlsFiles {
        cert: cert.clone(),
        key: keyf.clone(),
    });
    let bound = IngestServer::bind(opts, mem.intake()).await.unwrap();
    let url = format!("https://localhost:{}/events", bound.local_addr().port());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(bound.run(shutdown.clone()));
    // A fresh client (so a fresh connection and handshake) trusting only `trusted`.
    let accepted_by = |trusted: &rcgen::CertifiedKey<rcgen::KeyPair>| {
        let client = reqwest::Client::builder()
            .tls_certs_only(reqwest::Certificate::from_pem_bundle(trusted.cert.pem().as_bytes()).unwrap())
            .resolve("localhost", "127.0.0.1:0".parse().unwrap())
            .build()
            .unwrap();
        let url = url.clone();
        async move { client.get(&url).send().await.is_ok() }
    };
    assert!(accepted_by(&old).await && !accepted_by(&new).await);

    install(&cert, new.cert.pem());
    assert!(
        accepted_by(&old).await && !accepted_by(&new).await,
        "the new certificate with the old key is not used"
    );
    install(&keyf, new.signing_key.serialize_pem());
    assert!(accepted_by(&new).await, "the renewed certificate is served");
    assert!(!accepted_by(&old).await);
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

/// Issue 19 item 4: an event id reused for a different event is a 409 naming the event's index
/// and the stored seq; nothing of the request is stored, and the agent stays ready (the store
/// is fine, the sender is not).
#[tokio::test]
async fn an_event_id_reused_for_another_event_is_a_409_and_nothing_is_stored() {
    let s = start().await;
    let (a, b) = (person(0), person(1));
    let first = json!({"event_id": "e-1", "op": "add", "customer_id": a}).to_string();
    assert_eq!(s.post("application/json", first.clone()).await.0, 202);
    assert_eq!(
        s.post("application/json", first).await.0,
        202,
        "the same event again: a duplicate"
    );
    let body = json!([
        {"event_id": "e-2", "op": "add", "customer_id": b},
        {"event_id": "e-1", "op": "remove", "customer_id": a},
    ])
    .to_string();
    let (status, v) = s.post("application/json", body).await;
    assert_eq!(status, 409, "{v}");
    assert_eq!(
        (v["error"].as_str(), v["index"].as_u64(), v["seq"].as_i64()),
        (Some("event_id_conflict"), Some(1), Some(1)),
        "{v}"
    );
    let stored: Vec<String> = s.mem.stored().into_iter().map(|e| e.event_id).collect();
    assert_eq!(stored, ["e-1"], "nothing of the refused request");
    assert!(s.intake.health.unready().is_empty(), "the store is fine");
}

/// Issue 19: the per-customer flood guard holds for the agent's HTTP source too. An event that
/// would give its customer more unfinished events than `sync.max_events_per_customer` refuses
/// its whole request with a 409 naming the event's index, the rule and the customer masked;
/// nothing of the request is stored, other customers' requests go on, the agent stays ready.
#[tokio::test]
async fn an_event_past_the_per_customer_limit_is_a_409_naming_it_and_nothing_is_stored() {
    let s = start_guarded(Some(2), |_| {}).await;
    let (a, b) = (person(0), person(1));
    let two = json!([
        {"event_id": "a-1", "op": "add", "customer_id": a},
        {"event_id": "a-2", "op": "remove", "customer_id": a},
    ]);
    assert_eq!(s.post("application/json", two.to_string()).await.0, 202);
    let body = json!([
        {"event_id": "b-1", "op": "add", "customer_id": b},
        {"event_id": "a-3", "op": "add", "customer_id": a},
    ])
    .to_string();
    let (status, v) = s.post("application/json", body).await;
    assert_eq!(status, 409, "{v}");
    assert_eq!(v["error"], "customer_flood", "{v}");
    assert_eq!(v["index"], 1, "{v}");
    let refused = &v["refused"][0];
    assert_eq!(refused["index"], 1, "{v}");
    assert_eq!(refused["rule"], "customer_id.max_events_per_customer", "{v}");
    assert_eq!(refused["field"], "customer_id", "{v}");
    let message = refused["message"].as_str().unwrap();
    assert!(message.contains(&crate::ids::mask(&a)), "{message}");
    assert!(!v.to_string().contains(&a), "the customer only masked: {v}");
    let stored: Vec<String> = s.mem.stored().into_iter().map(|e| e.event_id).collect();
    assert_eq!(stored, ["a-1", "a-2"], "nothing of the refused request");
    // Another customer is not held back; the same events again are duplicates, not refused.
    let ok = json!({"event_id": "b-1", "op": "add", "customer_id": b}).to_string();
    assert_eq!(s.post("application/json", ok).await.0, 202);
    assert_eq!(s.post("application/json", two.to_string()).await.0, 202);
    assert!(s.intake.health.unready().is_empty(), "the store is fine");
    let report = s.stop().await;
    assert_eq!(report.refused, 1);
}
