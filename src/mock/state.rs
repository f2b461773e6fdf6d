//! The one state shared by every half of the mock: its clock, the Maskinporten settings, keys,
//! counters and fault switches, and the admin snapshot.
//!
//! The KFR half has its own section ([`KfrState`]: register, ingest queue, faults, counters) next
//! to [`MaskinportenState`]; the clock and the admin surface stay shared so that a skewed clock
//! affects token issuance, token checking and the fake KFR's "today" alike.

use super::config::{Delegation, KfrFaults, MockClient, MockConfig, MockEnv};
use super::register::{Register, RelationshipRow};
use super::signing::{AccessClaims, SigningKey};
use crate::ids::IdPolicy;
use chrono::NaiveDate;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The mock's clock: the real clock plus an adjustable skew. Every time the mock judges (`iat`,
/// `exp`, certificate validity) and every `Date` header it sends comes from here, so clients can
/// rehearse the clock-skew failure of kfr-notes §3.
#[derive(Debug)]
pub struct MockClock {
    skew_secs: AtomicI64,
}

impl MockClock {
    fn new(skew_secs: i64) -> Self {
        Self {
            skew_secs: AtomicI64::new(skew_secs),
        }
    }

    /// The mock's current time.
    pub fn now(&self) -> SystemTime {
        let skew = self.skew_secs.load(Ordering::Relaxed);
        let real = SystemTime::now();
        if skew >= 0 {
            real + Duration::from_secs(skew.unsigned_abs())
        } else {
            real - Duration::from_secs(skew.unsigned_abs())
        }
    }

    /// The mock's current time in whole seconds since the epoch (JWT NumericDate).
    pub fn now_unix(&self) -> i64 {
        self.now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
    }

    pub fn skew_secs(&self) -> i64 {
        self.skew_secs.load(Ordering::Relaxed)
    }

    /// The mock's today, the Europe/Oslo date of its clock (KFR is a Norwegian register): the
    /// default start of a relationship, the day of a deletion and the default lookup period of
    /// the fake KFR.
    pub fn today(&self) -> NaiveDate {
        crate::clock::oslo_date(chrono::DateTime::<chrono::Utc>::from(self.now()))
    }
}

/// Fault switches of the token endpoint; changeable at runtime.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TokenFaults {
    pub latency_ms: u64,
    pub fail_rate: f64,
    pub fail_first: u32,
}

/// Counters of the token endpoint.
#[derive(Debug, Default)]
pub(crate) struct TokenStats {
    pub requests: AtomicU64,
    pub issued: AtomicU64,
    pub faults_injected: AtomicU64,
    /// Rejections by MP-code.
    pub errors: Mutex<BTreeMap<&'static str, u64>>,
}

/// The fake Maskinporten's part of the state.
#[derive(Debug)]
pub struct MaskinportenState {
    pub(crate) issuer: String,
    pub(crate) token_endpoint: String,
    pub(crate) jwks_uri: String,
    pub(crate) token_lifetime_secs: u64,
    /// DER of the trusted CAs; turned into webpki trust anchors per check (cheap, and keeps the
    /// state free of borrowed data).
    pub(crate) trusted_ca_der: Vec<Vec<u8>>,
    pub(crate) clients: Option<BTreeMap<String, MockClient>>,
    /// Delegations declared "in Altinn": `consumer_org` in a grant needs one (MP-251), and the
    /// fake KFR serves a delegated token only while its delegation stands.
    pub(crate) delegations: Mutex<Vec<Delegation>>,
    /// Scope → organisations the API owner gave it to (MP-250); unnamed scopes are open.
    pub(crate) scope_access: BTreeMap<String, Vec<String>>,
    pub(crate) key: SigningKey,
    pub(crate) faults: Mutex<TokenFaults>,
    pub(crate) stats: TokenStats,
    /// jti → grant `exp`, of every grant that obtained a token (MP-012).
    pub(crate) seen_jtis: Mutex<HashMap<String, i64>>,
    /// Access tokens whose signature and issuer were already checked, with their claims (a few:
    /// cleared when full). Expiry is still checked on every request.
    pub(crate) verified: Mutex<HashMap<String, AccessClaims>>,
    /// `token_refuse`: every well-formed grant is refused as `invalid_client` (MP-100), as
    /// Maskinporten does once a client is deleted or its certificate withdrawn, until switched
    /// off. Runtime only (`POST /_mock/faults`).
    pub(crate) refuse: std::sync::atomic::AtomicBool,
}

/// Counters of the KFR half.
#[derive(Debug, Default)]
pub(crate) struct KfrStats {
    pub requests: AtomicU64,
    /// Answers by operation (`add`, `remove`, `lookup`, `batch`) and status (`"201"`, …;
    /// `"timeout"` for requests held open by fault injection).
    pub by_operation: Mutex<BTreeMap<&'static str, BTreeMap<String, u64>>>,
    pub batches_accepted: AtomicU64,
    pub faults_injected: AtomicU64,
    /// Injected faults by kind (`error`, `rate_limit`, `timeout`, `outage`).
    pub faults_by_kind: Mutex<BTreeMap<&'static str, u64>>,
    /// Adds and removes that arrived while another add or remove of the same customer was still
    /// being answered: KFR does not promise which of two concurrent writes wins, so a client that
    /// sends them has lost control of the customer's order. A correct client keeps this at 0.
    pub overlapping_writes: AtomicU64,
    /// Add/remove requests being answered now, by customer.
    pub writes_in_flight: Mutex<BTreeMap<String, u32>>,
}

/// The fake KFR's part of the state.
#[derive(Debug)]
pub struct KfrState {
    pub(crate) env: MockEnv,
    /// Identifier rules for KFR-005, the same as `crate::ids` applies in `env`.
    pub(crate) policy: IdPolicy,
    pub(crate) ingest_rate: AtomicU64,
    pub(crate) max_batch_bytes: usize,
    pub(crate) faults: Mutex<KfrFaults>,
    /// End of the current outage, if any (real monotonic time: skewing the clock does not
    /// shorten an outage).
    pub(crate) outage_until: Mutex<Option<Instant>>,
    pub(crate) register: Mutex<Register>,
    pub(crate) stats: KfrStats,
    /// Set when the server stops, so requests held open by timeout injection let go and
    /// graceful shutdown does not wait for them forever.
    pub(crate) stopping: tokio::sync::watch::Sender<bool>,
    /// Deliberate defects (`--quirk`), fixed at start.
    pub(crate) quirks: super::Quirks,
    /// Customers every add, delete and batch entry is refused for (400 KFR-005), as if KFR
    /// judged their identifier invalid: a permanent per-customer rejection for tests of the
    /// dead-letter path. Runtime only (`POST /_mock/faults`).
    pub(crate) reject_customers: Mutex<std::collections::BTreeSet<String>>,
    /// Writes answered 500 at once and carried out `delay` later, as a request a gateway or KFR
    /// still processes after its sender gave up: `(operation, how many are left, delay)`.
    /// Runtime only (`POST /_mock/faults` `late_apply`).
    pub(crate) late_apply: Mutex<Option<(&'static str, u32, Duration)>>,
    /// The write requests (add, remove, batch entries) in arrival order, for tests of delivery
    /// order (`GET /_mock/requests`); the oldest go first beyond [`REQUEST_LOG_CAP`].
    pub(crate) request_log: Mutex<std::collections::VecDeque<RequestLogEntry>>,
    /// Every batch upload answered 500 while adds, deletes and lookups work: a gateway failing
    /// only on large bodies (issue 20, N3). Runtime only.
    pub(crate) batch_errors: std::sync::atomic::AtomicBool,
}

/// How many write requests `GET /_mock/requests` remembers (about 100 MB at most).
pub const REQUEST_LOG_CAP: usize = 1_000_000;

/// One write request as the fake KFR answered it. Full identifiers: a loopback test surface
/// with synthetic data, like `/_mock/relationships`; never logged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RequestLogEntry {
    /// 1-based arrival number since start or reset (gaps mean the oldest were dropped).
    pub n: u64,
    /// `add`, `remove` or `batch` (one entry per customer of an accepted batch).
    pub op: &'static str,
    /// The `CustomerID` header as sent (or the batch entry's identifier); `None` when absent.
    pub customer_id: Option<String>,
    pub correlation_id: Option<String>,
    /// The status answered (`"201"`, …), or `"timeout"` for a request held open.
    pub status: String,
    /// A batch entry's start date, when it names one.
    pub start_date: Option<NaiveDate>,
}

/// Everything the mock knows; shared by all handlers behind an `Arc`.
#[derive(Debug)]
pub struct MockState {
    pub(crate) clock: MockClock,
    pub(crate) base_url: String,
    pub(crate) mp: MaskinportenState,
    pub(crate) kfr: KfrState,
}

/// Poisoning only happens after a panic in another handler; the data (counters, a jti set) stays
/// meaningful, so carry on rather than take the whole mock down.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl MockState {
    /// Checks `cfg` and builds the state for a server reachable at `base_url`
    /// (`http://127.0.0.1:port`, no trailing slash). [`super::MockServer::start`] calls it; use it
    /// directly only to drive [`super::router`] without a listener.
    pub fn new(cfg: MockConfig, base_url: String) -> anyhow::Result<Self> {
        anyhow::ensure!(
            !cfg.trusted_ca_der.is_empty(),
            "the mock needs at least one trusted CA certificate"
        );
        for (i, der) in cfg.trusted_ca_der.iter().enumerate() {
            webpki::anchor_from_trusted_cert(&rustls_pki_types::CertificateDer::from(der.as_slice()))
                .map_err(|e| anyhow::anyhow!("trusted CA certificate #{i} is not usable: {e}"))?;
        }
        if let Some(issuer) = &cfg.issuer {
            super::config::check_issuer(issuer)?;
        }
        super::config::check_fail_rate(cfg.token_fail_rate)?;
        for (id, client) in cfg.clients.iter().flatten() {
            if let Some(secs) = client.expires_in {
                anyhow::ensure!(
                    (1..=super::config::MAX_EXPIRES_IN_SECS).contains(&secs),
                    "client {id:?}: expires_in {secs} must be between 1 and {}",
                    super::config::MAX_EXPIRES_IN_SECS
                );
            }
        }
        cfg.kfr_faults.check()?;
        super::config::check_ingest_rate(cfg.ingest_rate)?;
        anyhow::ensure!(cfg.max_batch_bytes > 0, "max_batch_bytes must be at least 1");
        let issuer = cfg
            .issuer
            .clone()
            .unwrap_or_else(|| format!("{base_url}/maskinporten/"));
        Ok(Self {
            clock: MockClock::new(cfg.clock_skew_secs),
            mp: MaskinportenState {
                token_endpoint: format!("{base_url}/maskinporten/token"),
                jwks_uri: format!("{base_url}/maskinporten/jwks"),
                issuer,
                token_lifetime_secs: cfg.token_lifetime_secs,
                trusted_ca_der: cfg.trusted_ca_der,
                clients: cfg.clients,
                delegations: Mutex::new(cfg.delegations),
                scope_access: cfg.scope_access,
                key: SigningKey::generate()?,
                faults: Mutex::new(TokenFaults {
                    latency_ms: cfg.token_latency_ms,
                    fail_rate: cfg.token_fail_rate,
                    fail_first: cfg.token_fail_first,
                }),
                stats: TokenStats::default(),
                seen_jtis: Mutex::new(HashMap::new()),
                verified: Mutex::new(HashMap::new()),
                refuse: Default::default(),
            },
            kfr: KfrState {
                env: cfg.env,
                policy: cfg.env.id_policy(),
                ingest_rate: AtomicU64::new(cfg.ingest_rate),
                max_batch_bytes: cfg.max_batch_bytes,
                faults: Mutex::new(cfg.kfr_faults),
                outage_until: Mutex::new(
                    (cfg.outage_secs > 0).then(|| Instant::now() + Duration::from_secs(cfg.outage_secs)),
                ),
                register: Mutex::new(Register::default()),
                stats: KfrStats::default(),
                stopping: tokio::sync::watch::channel(false).0,
                quirks: cfg.quirks,
                reject_customers: Mutex::new(Default::default()),
                late_apply: Mutex::new(None),
                request_log: Mutex::new(Default::default()),
                batch_errors: Default::default(),
            },
            base_url,
        })
    }

    /// The mock's clock.
    pub fn clock(&self) -> &MockClock {
        &self.clock
    }

    /// `http://127.0.0.1:port`.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The Maskinporten issuer identifier (trailing slash included).
    pub fn issuer(&self) -> &str {
        &self.mp.issuer
    }

    pub fn set_clock_skew_secs(&self, secs: i64) {
        self.clock.skew_secs.store(secs, Ordering::Relaxed);
    }

    /// The declared delegations.
    pub fn delegations(&self) -> Vec<Delegation> {
        lock(&self.mp.delegations).clone()
    }

    /// Replaces the declared delegations (a revoked one also stops the fake KFR serving tokens
    /// issued under it).
    pub fn set_delegations(&self, delegations: Vec<Delegation>) {
        *lock(&self.mp.delegations) = delegations;
    }

    /// Whether `consumer` has delegated `scope` to `supplier`.
    pub(crate) fn is_delegated(&self, consumer: &str, supplier: &str, scope: &str) -> bool {
        lock(&self.mp.delegations)
            .iter()
            .any(|d| d.consumer == consumer && d.supplier == supplier && d.scope == scope)
    }

    pub fn token_faults(&self) -> TokenFaults {
        *lock(&self.mp.faults)
    }

    /// Replaces the token endpoint's fault switches. `fail_first` counts from the last reset.
    pub fn set_token_faults(&self, faults: TokenFaults) {
        *lock(&self.mp.faults) = faults;
    }

    /// Token requests since start or reset, faults included.
    pub fn token_requests(&self) -> u64 {
        self.mp.stats.requests.load(Ordering::Relaxed)
    }

    pub fn tokens_issued(&self) -> u64 {
        self.mp.stats.issued.load(Ordering::Relaxed)
    }

    /// Rejections by MP-code since start or reset.
    pub fn token_errors(&self) -> BTreeMap<String, u64> {
        lock(&self.mp.stats.errors)
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect()
    }

    /// Injected faults since start or reset, both halves together.
    pub fn faults_injected(&self) -> u64 {
        self.mp.stats.faults_injected.load(Ordering::Relaxed) + self.kfr.stats.faults_injected.load(Ordering::Relaxed)
    }

    /// Zeroes every counter and forgets every jti; empties the fake KFR's register, ingest
    /// queue and request log. Settings (skew, faults, outage, clients, ingest rate) stay.
    pub fn reset(&self) {
        let s = &self.mp.stats;
        s.requests.store(0, Ordering::Relaxed);
        s.issued.store(0, Ordering::Relaxed);
        s.faults_injected.store(0, Ordering::Relaxed);
        lock(&s.errors).clear();
        lock(&self.mp.seen_jtis).clear();
        lock(&self.kfr.register).clear();
        lock(&self.kfr.request_log).clear();
        let k = &self.kfr.stats;
        k.requests.store(0, Ordering::Relaxed);
        k.batches_accepted.store(0, Ordering::Relaxed);
        k.faults_injected.store(0, Ordering::Relaxed);
        lock(&k.by_operation).clear();
        lock(&k.faults_by_kind).clear();
        k.overlapping_writes.store(0, Ordering::Relaxed);
    }

    pub fn kfr_faults(&self) -> KfrFaults {
        *lock(&self.kfr.faults)
    }

    /// Replaces the fake KFR's fault switches (rates are not checked here; flags and the admin
    /// endpoint check them).
    pub fn set_kfr_faults(&self, faults: KfrFaults) {
        *lock(&self.kfr.faults) = faults;
    }

    /// Starts an outage of `secs` seconds now; 0 ends any outage.
    pub fn set_outage_secs(&self, secs: u64) {
        *lock(&self.kfr.outage_until) = (secs > 0).then(|| Instant::now() + Duration::from_secs(secs));
    }

    /// Seconds left of the current outage (rounded up); `None` when there is none.
    pub fn outage_remaining_secs(&self) -> Option<u64> {
        let until = (*lock(&self.kfr.outage_until))?;
        let left = until.checked_duration_since(Instant::now())?;
        Some(left.as_secs() + u64::from(left.subsec_nanos() > 0))
    }

    pub fn ingest_rate(&self) -> u64 {
        self.kfr.ingest_rate.load(Ordering::Relaxed)
    }

    /// Changes the ingestion rate at runtime (at least 1 a second).
    pub fn set_ingest_rate(&self, rate: u64) {
        self.kfr.ingest_rate.store(rate.max(1), Ordering::Relaxed);
    }

    /// Switches `batch_errors` (see `KfrState`): every batch upload gets a 500, nothing else does.
    pub fn set_batch_errors(&self, on: bool) {
        self.kfr.batch_errors.store(on, Ordering::Relaxed);
    }

    pub fn batch_errors(&self) -> bool {
        self.kfr.batch_errors.load(Ordering::Relaxed)
    }

    /// Replaces the customers the fake KFR refuses with 400 KFR-005 (see `KfrState`).
    pub fn set_reject_customers(&self, ids: impl IntoIterator<Item = String>) {
        *lock(&self.kfr.reject_customers) = ids.into_iter().collect();
    }

    /// The next `count` writes of `op` (`add` or `remove`) are answered 500 at once and carried
    /// out `delay` later (see `KfrState::late_apply`); `count` 0 switches it off.
    pub fn set_late_apply(&self, op: &str, count: u32, delay: Duration) -> Result<(), String> {
        let op = match op {
            "add" => "add",
            "remove" => "remove",
            other => return Err(format!("late_apply.op must be add or remove, not {other:?}")),
        };
        *lock(&self.kfr.late_apply) = (count > 0).then_some((op, count, delay));
        Ok(())
    }

    /// Whether this write of `op` is one to carry out late; counts it.
    pub(crate) fn take_late_apply(&self, op: &str) -> Option<Duration> {
        let mut late = lock(&self.kfr.late_apply);
        let (want, left, delay) = (*late)?;
        if want != op {
            return None;
        }
        *late = (left > 1).then_some((want, left - 1, delay));
        Some(delay)
    }

    /// Switches `token_refuse` (see `MaskinportenState::refuse`).
    pub fn set_token_refuse(&self, on: bool) {
        self.mp.refuse.store(on, Ordering::Relaxed);
    }

    pub fn token_refuse(&self) -> bool {
        self.mp.refuse.load(Ordering::Relaxed)
    }

    /// Appends to the write-request log, dropping the oldest beyond [`REQUEST_LOG_CAP`].
    pub(crate) fn log_request(&self, mut entry: RequestLogEntry) {
        let mut log = lock(&self.kfr.request_log);
        entry.n = log.back().map_or(1, |e| e.n + 1);
        if log.len() >= REQUEST_LOG_CAP {
            log.pop_front();
        }
        log.push_back(entry);
    }

    /// The write requests in arrival order (`GET /_mock/requests`).
    pub fn requests(&self) -> Vec<RequestLogEntry> {
        lock(&self.kfr.request_log).iter().cloned().collect()
    }

    pub(crate) fn is_rejected_customer(&self, id: &str) -> bool {
        lock(&self.kfr.reject_customers).contains(id)
    }

    /// Every period in the fake KFR's register (`GET /_mock/relationships`).
    pub fn relationships(&self) -> Vec<RelationshipRow> {
        lock(&self.kfr.register).rows()
    }

    /// The deliberate defects this mock runs with (`--quirk`).
    pub fn quirks(&self) -> &super::Quirks {
        &self.kfr.quirks
    }

    pub(crate) fn has_quirk(&self, q: super::Quirk) -> bool {
        self.kfr.quirks.contains(&q)
    }

    /// Releases requests held open by timeout injection; called when the server stops.
    pub(crate) fn begin_stopping(&self) {
        self.kfr.stopping.send_replace(true);
    }

    fn kfr_snapshot(&self) -> KfrSnapshot {
        let (active, queued, ingested) = {
            let r = lock(&self.kfr.register);
            (r.active(), r.queued(), r.ingested())
        };
        let k = &self.kfr.stats;
        KfrSnapshot {
            requests: lock(&k.by_operation)
                .iter()
                .map(|(op, m)| (op.to_string(), m.clone()))
                .collect(),
            requests_total: k.requests.load(Ordering::Relaxed),
            relationships_active: active,
            ingest_queue: queued,
            ingested_total: ingested,
            batches_accepted: k.batches_accepted.load(Ordering::Relaxed),
            faults_injected: k.faults_injected.load(Ordering::Relaxed),
            overlapping_writes: k.overlapping_writes.load(Ordering::Relaxed),
            faults_by_kind: lock(&k.faults_by_kind)
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            faults: self.kfr_faults(),
            outage_remaining_secs: self.outage_remaining_secs(),
            env: self.kfr.env,
            ingest_rate: self.ingest_rate(),
            max_batch_bytes: self.kfr.max_batch_bytes,
            today: self.clock.today(),
            quirks: self.kfr.quirks.iter().copied().collect(),
        }
    }

    /// What `GET /_mock/state` answers.
    pub fn snapshot(&self) -> StateSnapshot {
        let mp = MaskinportenSnapshot {
            issuer: self.mp.issuer.clone(),
            token_requests: self.token_requests(),
            tokens_issued: self.tokens_issued(),
            token_errors: self.token_errors(),
            faults_injected: self.faults_injected(),
            jtis_remembered: lock(&self.mp.seen_jtis).len(),
            token_lifetime_secs: self.mp.token_lifetime_secs,
            faults: self.token_faults(),
            clients: self.mp.clients.as_ref().map(|c| c.keys().cloned().collect()),
            delegations: self.delegations(),
            token_refuse: self.token_refuse(),
        };
        let kfr = self.kfr_snapshot();
        StateSnapshot {
            token_requests: mp.token_requests,
            tokens_issued: mp.tokens_issued,
            token_errors: mp.token_errors.clone(),
            faults_injected: mp.faults_injected + kfr.faults_injected,
            clock_skew_secs: self.clock.skew_secs(),
            kfr_requests: kfr.requests_total,
            kfr_requests_by_operation: kfr.requests.clone(),
            relationships_active: kfr.relationships_active,
            ingest_queue: kfr.ingest_queue,
            ingested_total: kfr.ingested_total,
            batches_accepted: kfr.batches_accepted,
            maskinporten: mp,
            kfr,
        }
    }
}

/// The admin view of the state. Top-level keys are totals across the halves of the mock; each
/// half has its own section (the KFR half adds `kfr`).
#[derive(Debug, Clone, Serialize)]
pub struct StateSnapshot {
    pub token_requests: u64,
    pub tokens_issued: u64,
    pub token_errors: BTreeMap<String, u64>,
    /// Injected faults of both halves.
    pub faults_injected: u64,
    pub clock_skew_secs: i64,
    /// Fake KFR requests answered (all operations, faults included); a number, like
    /// `token_requests`, so "the mock saw no request" is `kfr_requests == 0`.
    pub kfr_requests: u64,
    /// Fake KFR answers by operation and status, e.g. `{"add":{"201":3}}`.
    pub kfr_requests_by_operation: BTreeMap<String, BTreeMap<String, u64>>,
    pub relationships_active: usize,
    /// Accepted batch entries not yet ingested.
    pub ingest_queue: usize,
    pub ingested_total: u64,
    pub batches_accepted: u64,
    pub maskinporten: MaskinportenSnapshot,
    pub kfr: KfrSnapshot,
}

/// The fake KFR's section of [`StateSnapshot`].
#[derive(Debug, Clone, Serialize)]
pub struct KfrSnapshot {
    pub requests: BTreeMap<String, BTreeMap<String, u64>>,
    pub requests_total: u64,
    pub relationships_active: usize,
    pub ingest_queue: usize,
    pub ingested_total: u64,
    pub batches_accepted: u64,
    /// Injected faults of the KFR half only.
    pub faults_injected: u64,
    pub faults_by_kind: BTreeMap<String, u64>,
    /// Adds/removes of a customer that arrived while another of the same customer was being
    /// answered (see `KfrStats::overlapping_writes`).
    pub overlapping_writes: u64,
    pub faults: KfrFaults,
    pub outage_remaining_secs: Option<u64>,
    pub env: MockEnv,
    pub ingest_rate: u64,
    pub max_batch_bytes: usize,
    /// The mock's today, as the register sees it.
    pub today: NaiveDate,
    /// Deliberate defects (`--quirk`); empty for a faithful mock.
    pub quirks: Vec<super::Quirk>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MaskinportenSnapshot {
    pub issuer: String,
    pub token_requests: u64,
    pub tokens_issued: u64,
    pub token_errors: BTreeMap<String, u64>,
    pub faults_injected: u64,
    pub jtis_remembered: usize,
    pub token_lifetime_secs: u64,
    pub faults: TokenFaults,
    /// Known client ids; `null` when any client id is accepted.
    pub clients: Option<Vec<String>>,
    /// Declared delegations (`consumer_org` needs one).
    pub delegations: Vec<Delegation>,
    /// Whether `token_refuse` is on.
    pub token_refuse: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_refuses_a_config_without_usable_trust_or_with_bad_values() {
        let base = "http://127.0.0.1:1".to_string();
        assert!(MockState::new(MockConfig::new(vec![]), base.clone()).is_err());
        assert!(MockState::new(MockConfig::new(vec![b"not a certificate".to_vec()]), base.clone()).is_err());
        let ca = crate::certs::TestCa::new().unwrap();
        let mut cfg = MockConfig::new(vec![ca.cert_der.clone()]);
        cfg.issuer = Some("https://test.maskinporten.no".into());
        assert!(
            MockState::new(cfg.clone(), base.clone()).is_err(),
            "issuer without trailing slash"
        );
        cfg.issuer = None;
        cfg.token_fail_rate = 2.0;
        assert!(MockState::new(cfg.clone(), base.clone()).is_err());
        cfg.token_fail_rate = 0.0;
        let state = MockState::new(cfg, base).unwrap();
        assert_eq!(state.issuer(), "http://127.0.0.1:1/maskinporten/");
    }

    #[test]
    fn clock_skew_moves_the_mock_clock_both_ways() {
        let clock = MockClock::new(0);
        let real = clock.now_unix();
        clock.skew_secs.store(-3600, Ordering::Relaxed);
        assert!((clock.now_unix() - (real - 3600)).abs() <= 1);
        clock.skew_secs.store(90, Ordering::Relaxed);
        assert!((clock.now_unix() - (real + 90)).abs() <= 1);
    }
}
