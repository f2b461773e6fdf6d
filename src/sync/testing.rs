//! Test support for the sync agent: a real (SQLite) state store in a temporary directory that a
//! test looks into through a second handle, a wall clock tests move by hand, and the in-process
//! mock with a KFR client pointed at it. Compiled for tests only.
//!
//! There is no in-memory outbox: a test double that does not pass the conformance suite would
//! prove the dispatcher right against something else than what it runs on.

use crate::store::backend::{Jobs as _, Outbox as _};
use crate::store::sqlite::SqliteBackend;
use crate::store::{NewJob, OutboxEvent, Seq, Store};
use crate::sync::dispatch::WallClock;
use chrono::{DateTime, Utc};
use std::sync::{Arc, Mutex, OnceLock};

/// A state store for one test: the agent gets [`TestStore::store`], the test looks with
/// [`TestStore::events`] (a second connection, as an operator's command would).
#[derive(Clone)]
pub struct TestStore {
    dir: Arc<tempfile::TempDir>,
}

impl Default for TestStore {
    fn default() -> Self {
        TestStore {
            dir: Arc::new(tempfile::tempdir().unwrap()),
        }
    }
}

impl TestStore {
    /// A direct handle (synchronous, on the caller's thread): to set a scene or look at it.
    pub fn backend(&self) -> SqliteBackend {
        SqliteBackend::open(&self.dir.path().join("s.db")).unwrap()
    }

    /// The agent's async handle (its own thread).
    pub fn store(&self) -> Store {
        Store::spawn(Box::new(self.backend())).unwrap()
    }

    /// Every event still in the outbox, in issue order.
    pub fn events(&self) -> Vec<OutboxEvent> {
        self.backend().events_of(None, None).unwrap()
    }

    pub fn event(&self, seq: Seq) -> OutboxEvent {
        self.events().into_iter().find(|e| e.seq == seq).expect("seq exists")
    }

    /// Raises `register`'s barrier, as an unconfirmed initial load does.
    pub fn start_load(&self, register: &str) -> i64 {
        let mut parts = register.splitn(3, '|');
        let (env, url, org) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
        let job = NewJob {
            input_path: "in.csv".into(),
            content_hash: "00".into(),
            settings: serde_json::json!({"environment": env, "kfr_base_url": url, "org_number": org}).to_string(),
            entries: 0,
            batches: vec![],
        };
        self.backend().create_job(&job, Utc::now()).unwrap()
    }
}

/// A wall clock that moves only when told.
#[derive(Debug)]
pub struct ManualClock(Mutex<DateTime<Utc>>);

impl ManualClock {
    pub fn new(at: DateTime<Utc>) -> Arc<Self> {
        Arc::new(Self(Mutex::new(at)))
    }

    pub fn advance(&self, by: chrono::Duration) {
        *self.0.lock().unwrap() += by;
    }
}

impl WallClock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap()
    }
}

// ---- the in-process mock and a client for it --------------------------------------------------

use crate::certs::LocalPki;
use crate::kfr::{KfrClient, KfrClientConfig};
use crate::maskinporten::{Credential, TokenClient, TokenClientConfig, TokenRequest};
use crate::mock::{Delegation, MockConfig, MockServer};

/// The institution of the tests (the test PKI's org.nr).
pub const ORG: &str = "916960190";
/// An institution that delegates to [`ORG`] in the systemic-pause test.
pub const CONSUMER: &str = "923609016";
const CLIENT_ID: &str = "5b0d9c4e-2a57-4f41-9a8e-0c6f1d2b7e11";

/// Generating keys is slow in debug builds: one PKI for every test of the binary.
fn pki() -> &'static LocalPki {
    static PKI: OnceLock<LocalPki> = OnceLock::new();
    PKI.get_or_init(|| crate::certs::generate(ORG, "KFR TEST BANK AS").expect("test PKI"))
}

/// The in-process mock on a free loopback port, with a delegation from [`CONSUMER`] to [`ORG`].
pub async fn start_mock(tweak: impl FnOnce(&mut MockConfig)) -> MockServer {
    let mut cfg = MockConfig::new(vec![pki().ca_cert_der.clone()]);
    cfg.ingest_rate = 100_000;
    cfg.delegations = vec![Delegation::parse(&format!("{CONSUMER}={ORG}")).unwrap()];
    tweak(&mut cfg);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    MockServer::start(listener, cfg).await.expect("mock starts")
}

/// A KFR client for the mock acting for `org` (`ORG`, or `CONSUMER` through the delegation).
/// No retries inside the client: the dispatcher makes single attempts.
pub fn client(mock: &MockServer, org: &str) -> KfrClient {
    let dir = tempfile::tempdir().unwrap();
    let (key, crt) = (dir.path().join("key.pem"), dir.path().join("cert.pem"));
    std::fs::write(&key, pki().client.key_pem.as_bytes()).unwrap();
    std::fs::write(&crt, &pki().client.cert_pem).unwrap();
    let credential = Credential::from_pem(&key, &crt, None).expect("credential loads");
    let tokens = TokenClient::new(
        reqwest::Client::new(),
        credential,
        TokenClientConfig {
            env: crate::environment::Environment::Local,
            issuer: url::Url::parse(&mock.issuer()).unwrap(),
            client_id: CLIENT_ID.into(),
            default_request: TokenRequest {
                scope: "bits:kundeforhold.write".into(),
                consumer_org: (org != ORG).then(|| org.to_string()),
                resource: None,
            },
            x5c: crate::maskinporten::X5cMode::Leaf,
            kid: None,
            refresh_ahead: std::time::Duration::from_secs(30),
            retry: crate::http::RetryPolicy::immediate(1),
        },
    );
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_millis(500))
        .build()
        .unwrap();
    KfrClient::new(
        http,
        tokens,
        KfrClientConfig {
            base_url: url::Url::parse(&mock.kfr_base_url()).unwrap(),
            org_number: org.into(),
            retry: crate::http::RetryPolicy::immediate(1),
            max_batch_bytes: crate::kfr::batch::DEFAULT_MAX_BYTES,
        },
    )
}

/// `n` distinct synthetic (Tenor, month + 80) fødselsnumre: valid in test, refused in prod.
pub fn synthetic_people(n: usize) -> Vec<String> {
    crate::ids::synthetic::tenor_series(n)
}
