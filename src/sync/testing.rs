//! Test support for the sync agent: a compact in-memory [`OutboxBackend`] that follows the
//! trait's documented semantics (heads only, one in flight per customer, parked customers, the
//! barrier on removes), a wall clock tests move by hand, and the in-process mock with a KFR
//! client pointed at it. Compiled for tests only.

use crate::store::outbox::{
    DeadLetter, DeadLetters, Delivery, Enqueued, EventState, LedgerEntry, LedgerState, NewEvent, OutboxBackend,
    OutboxEvent, OutboxStatus, Recovered, Rejection, Seq, Settlement, StoreError,
};
use crate::store::queue::Operation;
use crate::sync::dispatch::WallClock;
use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};
use uuid::Uuid;

/// The outbox in memory. `barrier` holds removes back while set, as an unconfirmed load would.
#[derive(Debug, Default)]
pub struct MemoryOutbox {
    pub events: Vec<OutboxEvent>,
    pub dead: BTreeMap<Seq, (Rejection, DateTime<Utc>)>,
    pub ledger: BTreeMap<String, LedgerEntry>,
    pub finished_at: BTreeMap<Seq, DateTime<Utc>>,
    /// How each delivered event was settled.
    pub deliveries: BTreeMap<Seq, Delivery>,
    pub barrier: Option<i64>,
}

/// A [`MemoryOutbox`] shared between the store thread and the test, which inspects it.
#[derive(Debug, Clone, Default)]
pub struct SharedOutbox(pub Arc<Mutex<MemoryOutbox>>);

impl SharedOutbox {
    pub fn with<T>(&self, f: impl FnOnce(&mut MemoryOutbox) -> T) -> T {
        f(&mut self.0.lock().unwrap())
    }

    pub fn event(&self, seq: Seq) -> OutboxEvent {
        self.with(|m| m.events.iter().find(|e| e.seq == seq).cloned().expect("seq exists"))
    }
}

fn unfinished(s: EventState) -> bool {
    matches!(
        s,
        EventState::Pending | EventState::InFlight | EventState::Accepted | EventState::DeadLettered
    )
}

impl MemoryOutbox {
    fn get(&mut self, seq: Seq) -> Result<&mut OutboxEvent, StoreError> {
        self.events
            .iter_mut()
            .find(|e| e.seq == seq)
            .ok_or(StoreError::WrongState {
                seq,
                problem: "does not exist".into(),
            })
    }

    /// The head of every customer of `register`: its oldest unfinished event.
    fn heads(&self, register: &str) -> Vec<usize> {
        let mut seen = HashSet::new();
        let mut out = vec![];
        for (i, e) in self.events.iter().enumerate() {
            if e.register == register && unfinished(e.state) && seen.insert(e.customer_id.clone()) {
                out.push(i);
            }
        }
        out
    }
}

impl OutboxBackend for SharedOutbox {
    fn enqueue(&mut self, register: &str, events: &[NewEvent]) -> Result<Vec<Enqueued>, StoreError> {
        self.with(|m| {
            let mut out = vec![];
            for n in events {
                if let Some(e) = m.events.iter().find(|e| e.event_id == n.event_id) {
                    out.push(Enqueued::Duplicate { seq: e.seq });
                    continue;
                }
                let seq = m.events.len() as Seq + 1;
                m.events.push(OutboxEvent {
                    seq,
                    register: register.into(),
                    event_id: n.event_id.clone(),
                    op: n.op,
                    customer_id: n.customer_id.clone(),
                    start_date: n.start_date,
                    occurred_at: n.occurred_at,
                    source: n.source.clone(),
                    received_at: n.occurred_at,
                    correlation_id: Uuid::new_v4(),
                    state: EventState::Pending,
                    attempts: 0,
                    next_attempt_at: None,
                    failing_since: None,
                    last_error: None,
                    batch_correlation_id: None,
                    accepted_at: None,
                });
                out.push(Enqueued::Stored { seq });
            }
            Ok(out)
        })
    }

    fn recover(&mut self, register: &str) -> Result<Recovered, StoreError> {
        self.with(|m| {
            let mut r = Recovered::default();
            for e in m.events.iter_mut().filter(|e| e.register == register) {
                if e.state != EventState::InFlight {
                    continue;
                }
                if e.batch_correlation_id.is_some() {
                    e.state = EventState::Accepted;
                    e.accepted_at = None;
                    r.unknown_uploads += 1;
                } else {
                    e.state = EventState::Pending;
                    r.requeued += 1;
                }
            }
            Ok(r)
        })
    }

    fn claim_ready(
        &mut self,
        register: &str,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<OutboxEvent>, StoreError> {
        self.with(|m| {
            let barrier = m.barrier.is_some();
            let mut out = vec![];
            for i in m.heads(register) {
                if out.len() >= limit {
                    break;
                }
                let e = &mut m.events[i];
                let ready = e.state == EventState::Pending
                    && e.next_attempt_at.is_none_or(|t| t <= now)
                    && !(barrier && e.op == Operation::Remove);
                if ready {
                    e.state = EventState::InFlight;
                    out.push(e.clone());
                }
            }
            Ok(out)
        })
    }

    fn begin_batch(&mut self, seqs: &[Seq], batch_correlation_id: Uuid) -> Result<(), StoreError> {
        self.with(|m| {
            for s in seqs {
                let e = m.get(*s)?;
                if e.state != EventState::InFlight {
                    return Err(StoreError::WrongState {
                        seq: *s,
                        problem: "is not in flight".into(),
                    });
                }
                e.batch_correlation_id = Some(batch_correlation_id);
            }
            Ok(())
        })
    }

    fn batch_accepted(&mut self, batch_correlation_id: Uuid, at: DateTime<Utc>) -> Result<(), StoreError> {
        self.with(|m| {
            for e in m.events.iter_mut() {
                if e.batch_correlation_id == Some(batch_correlation_id) && e.state == EventState::InFlight {
                    e.state = EventState::Accepted;
                    e.accepted_at = Some(at);
                    e.attempts += 1;
                }
            }
            Ok(())
        })
    }

    fn batch_unknown(&mut self, batch_correlation_id: Uuid) -> Result<(), StoreError> {
        self.with(|m| {
            for e in m.events.iter_mut() {
                if e.batch_correlation_id == Some(batch_correlation_id) && e.state == EventState::InFlight {
                    e.state = EventState::Accepted;
                    e.accepted_at = None;
                    e.attempts += 1;
                }
            }
            Ok(())
        })
    }

    fn accepted(&mut self, register: &str) -> Result<Vec<OutboxEvent>, StoreError> {
        self.with(|m| {
            Ok(m.events
                .iter()
                .filter(|e| e.register == register && e.state == EventState::Accepted)
                .cloned()
                .collect())
        })
    }

    fn settle(&mut self, settlements: &[Settlement]) -> Result<(), StoreError> {
        self.with(|m| {
            for s in settlements {
                let e = m.get(s.seq)?;
                if !matches!(e.state, EventState::InFlight | EventState::Accepted) {
                    return Err(StoreError::WrongState {
                        seq: s.seq,
                        problem: format!("is {:?}, not in flight or accepted", e.state),
                    });
                }
                e.state = EventState::Delivered;
                if !matches!(s.delivery, Delivery::IngestedSeen | Delivery::IngestedByTime) {
                    e.attempts += 1;
                }
                let (customer, op, start, cid) = (e.customer_id.clone(), e.op, e.start_date, e.correlation_id);
                m.finished_at.insert(s.seq, s.at);
                m.deliveries.insert(s.seq, s.delivery);
                m.ledger.insert(
                    customer.clone(),
                    LedgerEntry {
                        customer_id: customer,
                        state: if op == Operation::Add {
                            LedgerState::Active
                        } else {
                            LedgerState::Ended
                        },
                        start_date: start,
                        since: s.at,
                        correlation_id: cid,
                    },
                );
            }
            Ok(())
        })
    }

    fn retry_later(&mut self, seq: Seq, at: DateTime<Utc>, error: &str) -> Result<(), StoreError> {
        self.with(|m| {
            let e = m.get(seq)?;
            e.state = EventState::Pending;
            e.attempts += 1;
            e.next_attempt_at = Some(at);
            e.failing_since.get_or_insert(Utc::now());
            e.last_error = Some(error.into());
            Ok(())
        })
    }

    fn release(&mut self, seqs: &[Seq]) -> Result<(), StoreError> {
        self.with(|m| {
            for s in seqs {
                let e = m.get(*s)?;
                if matches!(e.state, EventState::InFlight | EventState::Accepted) {
                    e.state = EventState::Pending;
                    e.batch_correlation_id = None;
                    e.accepted_at = None;
                }
            }
            Ok(())
        })
    }

    fn dead_letter(&mut self, seq: Seq, rejection: &Rejection, at: DateTime<Utc>) -> Result<(), StoreError> {
        self.with(|m| {
            let e = m.get(seq)?;
            e.state = EventState::DeadLettered;
            e.attempts += 1;
            e.last_error = Some(rejection.reason.clone());
            m.dead.insert(seq, (rejection.clone(), at));
            Ok(())
        })
    }

    fn dead_letters(&mut self, register: Option<&str>) -> Result<Vec<DeadLetter>, StoreError> {
        self.with(|m| {
            let mut out = vec![];
            for (seq, (rejection, at)) in &m.dead {
                let e = m.events.iter().find(|e| e.seq == *seq).expect("dead seq exists");
                if e.state != EventState::DeadLettered || register.is_some_and(|r| r != e.register) {
                    continue;
                }
                let behind = m
                    .events
                    .iter()
                    .filter(|o| o.customer_id == e.customer_id && o.seq > e.seq && unfinished(o.state))
                    .count() as u64;
                out.push(DeadLetter {
                    event: e.clone(),
                    rejection: rejection.clone(),
                    dead_at: *at,
                    parked_behind: behind,
                });
            }
            Ok(out)
        })
    }

    fn retry_dead(&mut self, which: DeadLetters) -> Result<u64, StoreError> {
        self.with(|m| {
            let mut n = 0;
            for e in m.events.iter_mut().filter(|e| e.state == EventState::DeadLettered) {
                if matches!(which, DeadLetters::One(s) if s != e.seq) {
                    continue;
                }
                e.state = EventState::Pending;
                e.next_attempt_at = None;
                e.failing_since = None;
                n += 1;
            }
            Ok(n)
        })
    }

    fn drop_dead(&mut self, which: DeadLetters, at: DateTime<Utc>) -> Result<u64, StoreError> {
        self.with(|m| {
            let mut dropped = vec![];
            for e in m.events.iter_mut().filter(|e| e.state == EventState::DeadLettered) {
                if matches!(which, DeadLetters::One(s) if s != e.seq) {
                    continue;
                }
                e.state = EventState::Dropped;
                dropped.push(e.seq);
            }
            for s in &dropped {
                m.finished_at.insert(*s, at);
            }
            Ok(dropped.len() as u64)
        })
    }

    fn status(&mut self, register: Option<&str>) -> Result<OutboxStatus, StoreError> {
        self.with(|m| {
            let mut st = OutboxStatus::default();
            let mut parked = HashSet::new();
            for e in m.events.iter().filter(|e| register.is_none_or(|r| r == e.register)) {
                match e.state {
                    EventState::Pending => st.pending += 1,
                    EventState::InFlight => st.in_flight += 1,
                    EventState::Accepted => st.accepted += 1,
                    EventState::Delivered => st.delivered += 1,
                    EventState::DeadLettered => {
                        st.dead_lettered += 1;
                        parked.insert(e.customer_id.clone());
                    }
                    EventState::Dropped => st.dropped += 1,
                }
                if unfinished(e.state) && e.state != EventState::DeadLettered {
                    st.oldest_unfinished = Some(st.oldest_unfinished.map_or(e.received_at, |o| o.min(e.received_at)));
                    if parked.contains(&e.customer_id) {
                        st.parked_events += 1;
                    }
                }
            }
            st.parked_customers = parked.len() as u64;
            st.barrier = m.barrier;
            Ok(st)
        })
    }

    fn purge(&mut self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        self.with(|m| {
            let old: HashSet<Seq> = m
                .finished_at
                .iter()
                .filter(|(_, at)| **at < before)
                .map(|(s, _)| *s)
                .collect();
            m.events.retain(|e| !old.contains(&e.seq));
            m.finished_at.retain(|s, _| !old.contains(s));
            Ok(old.len() as u64)
        })
    }

    fn unfinished_customers(&mut self, _: &str) -> Result<std::collections::HashSet<String>, StoreError> {
        Err(StoreError::Other("not in this test double".into()))
    }

    fn ledger(&mut self, _register: &str) -> Result<Vec<LedgerEntry>, StoreError> {
        self.with(|m| Ok(m.ledger.values().cloned().collect()))
    }

    fn barrier(&mut self, _register: &str) -> Result<Option<i64>, StoreError> {
        self.with(|m| Ok(m.barrier))
    }

    fn enqueue_and_claim(
        &mut self,
        _: &str,
        _: &NewEvent,
        _: Uuid,
        _: &str,
        _: DateTime<Utc>,
    ) -> Result<crate::store::outbox::OwnEvent, StoreError> {
        Err(StoreError::Other("not in this test double".into()))
    }

    fn finish_claim(
        &mut self,
        _: Seq,
        _: &str,
        _: &crate::store::outbox::ClaimEnd,
        _: DateTime<Utc>,
    ) -> Result<crate::store::outbox::ClaimFinished, StoreError> {
        Err(StoreError::Other("not in this test double".into()))
    }

    fn claim_head_of(
        &mut self,
        _: &str,
        _: &str,
        _: &[&str],
        _: &str,
        _: DateTime<Utc>,
    ) -> Result<Option<OutboxEvent>, StoreError> {
        Err(StoreError::Other("not in this test double".into()))
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
    const W1: [u32; 9] = [3, 7, 6, 1, 8, 9, 4, 5, 2];
    const W2: [u32; 10] = [5, 4, 3, 2, 7, 6, 5, 4, 3, 2];
    let digits = |s: &str| s.bytes().map(|b| u32::from(b - b'0')).collect::<Vec<_>>();
    (100..999)
        .filter_map(|n| {
            let first9 = format!("158986{n}");
            let d = digits(&first9);
            let k1 = (11 - d.iter().zip(W1).map(|(a, w)| a * w).sum::<u32>() % 11) % 11;
            if k1 == 10 {
                return None;
            }
            let first10 = format!("{first9}{k1}");
            let d = digits(&first10);
            let k2 = (11 - d.iter().zip(W2).map(|(a, w)| a * w).sum::<u32>() % 11) % 11;
            (k2 != 10).then(|| format!("{first10}{k2}"))
        })
        .take(n)
        .collect()
}
