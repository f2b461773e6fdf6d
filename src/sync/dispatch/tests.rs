//! The dispatcher against the in-process mock (loopback, port 0), on a temporary SQLite store and
//! a wall clock the test moves. Waits poll the observable state; none asserts a duration.

use super::*;
use crate::kfr::Layout;
use crate::mock::{KfrFaults, MockServer};
use crate::store::backend::Outbox as _;
use crate::store::sqlite::SqliteBackend;
use crate::store::{DeadLetters, EventState, NewEvent, Register};
use crate::sync::testing::{CONSUMER, ManualClock, ORG, TestStore, client, start_mock, synthetic_people};

struct Rig {
    mock: MockServer,
    outbox: TestStore,
    handle: Store,
    clock: Arc<ManualClock>,
    health: Health,
    register: String,
    stop: watch::Sender<bool>,
    run: tokio::task::JoinHandle<Result<DispatchSummary, DispatchError>>,
}

fn fast() -> DispatchConfig {
    DispatchConfig {
        rate: 1000.0,
        max_in_flight: 4,
        retry: crate::http::RetryPolicy {
            max_attempts: u32::MAX,
            base_delay: Duration::from_secs(60),
            max_delay: Duration::from_secs(60),
            retry_after_cap: Duration::from_millis(150),
        },
        probe_interval: Duration::from_millis(20),
        batch_window: Duration::from_millis(10),
        ingest_margin: Duration::ZERO,
        confirm_interval: Duration::from_millis(10),
        poll_interval: Duration::from_millis(5),
        status_interval: Duration::from_millis(50),
        shutdown_grace: Duration::from_secs(1),
        // A 500 leaves its request in doubt: held as long as the backoff here, so the tests that
        // move the clock past the backoff see the retry.
        in_doubt: Duration::from_secs(60),
        // The register check's lookups would show in the mock's counts the tests assert.
        checks_per_hour: 0,
        ..DispatchConfig::default()
    }
}

async fn rig(
    tweak_mock: impl FnOnce(&mut crate::mock::MockConfig),
    org: &str,
    cfg: DispatchConfig,
    before: impl FnOnce(&mut SqliteBackend, &str),
) -> Rig {
    let mock = start_mock(tweak_mock).await;
    let kfr = client(&mock, org);
    let register = Register {
        environment: "local".into(),
        base_url: mock.kfr_base_url(),
        org_number: org.into(),
    }
    .key();
    let outbox = TestStore::default();
    before(&mut outbox.backend(), &register);
    let handle = outbox.store();
    let clock = ManualClock::new(Utc::now());
    let health = Health::new();
    let (stop, rx) = watch::channel(false);
    let lease = lease(&handle, &register).await;
    let d = Dispatcher::new(handle.clone(), kfr, register.clone(), cfg, health.clone()).with_clock(clock.clone());
    let run = tokio::spawn(d.run(rx, lease));
    Rig {
        mock,
        outbox,
        handle,
        clock,
        health,
        register,
        stop,
        run,
    }
}

/// The register's delivery lease, as `kfr sync` takes it before delivering.
async fn lease(store: &Store, register: &str) -> Lease {
    store
        .take_lease(
            register.into(),
            "sync:test".into(),
            Utc::now(),
            chrono::Duration::seconds(30),
        )
        .await
        .unwrap()
        .expect("a fresh store's lease is free")
}

fn event(n: usize, op: Operation, customer: &str, start: Option<NaiveDate>) -> NewEvent {
    NewEvent {
        event_id: format!("ev-{n}"),
        op,
        customer_id: customer.into(),
        start_date: start,
        occurred_at: Utc::now(),
        source: "test".into(),
    }
}

impl Rig {
    async fn enqueue(&self, events: Vec<NewEvent>) {
        self.handle
            .enqueue(self.register.clone(), events, None, Utc::now())
            .await
            .unwrap();
    }

    /// Polls `cond` on the outbox until it holds (at most 2.5 s, then fails with `what`).
    async fn until(&self, what: &str, cond: impl Fn(&[OutboxEvent]) -> bool) {
        // A generous deadline: the suite shares 2 cores with other test binaries; only a real
        // failure waits it out.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            if cond(&self.outbox.events()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("timed out waiting until {what}: {:#?}", self.outbox.events());
    }

    fn ops(&self, op: &str) -> std::collections::BTreeMap<String, u64> {
        self.mock
            .state()
            .snapshot()
            .kfr
            .requests
            .get(op)
            .cloned()
            .unwrap_or_default()
    }

    async fn stop(self) -> DispatchSummary {
        self.stop.send(true).unwrap();
        self.run.await.unwrap().unwrap()
    }
}

fn all_delivered(m: &[OutboxEvent]) -> bool {
    !m.is_empty() && m.iter().all(|e| e.state == EventState::Delivered)
}

#[tokio::test]
async fn each_customer_keeps_its_order_with_one_request_in_flight_while_customers_go_in_parallel() {
    // Latency makes overlapping requests of one customer visible: a remove overtaking its add
    // would answer 404 and leave the relationship open.
    let r = rig(|c| c.kfr_faults.latency_ms = 15, ORG, fast(), |_, _| {}).await;
    let people = synthetic_people(5);
    let mut evs = vec![];
    for (round, op) in [Operation::Add, Operation::Remove, Operation::Add]
        .into_iter()
        .enumerate()
    {
        for (i, p) in people.iter().enumerate() {
            evs.push(event(round * 10 + i, op, p, None));
        }
    }
    r.enqueue(evs).await;
    r.until("every event is delivered", all_delivered).await;
    let rows = r.mock.state().relationships();
    for p in &people {
        let mine: Vec<_> = rows.iter().filter(|row| &row.customer_id == p).collect();
        assert_eq!(mine.len(), 2, "add, remove, add: an ended period and an open one");
        assert!(mine.iter().filter(|row| row.end_date.is_none()).count() == 1);
    }
    assert_eq!(r.ops("add").get("201"), Some(&10));
    assert_eq!(r.ops("remove").get("204"), Some(&5));
    assert_eq!(r.ops("remove").get("404"), None, "no remove overtook its add");
    let s = r.stop().await;
    assert_eq!((s.delivered, s.idempotent, s.dead_lettered), (15, 0, 0));
}

#[tokio::test]
async fn a_transient_failure_waits_for_its_persisted_time_and_keeps_its_correlation_id() {
    let r = rig(|c| c.kfr_faults.error_rate = 1.0, ORG, fast(), |_, _| {}).await;
    let p = synthetic_people(1).remove(0);
    r.enqueue(vec![event(1, Operation::Add, &p, None)]).await;
    r.until("one failed attempt is recorded", |m| m[0].attempts == 1).await;
    let ev = r.outbox.event(1);
    assert_eq!(ev.state, EventState::Pending);
    let at = ev.next_attempt_at.expect("the next attempt time is persisted");
    assert!(at > r.clock.now(), "backoff lies ahead: {at}");
    assert!(ev.failing_since.is_some() && ev.last_error.as_deref().unwrap_or("").contains("500"));
    // Not before its time: a few polls later nothing more was sent.
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert_eq!(r.ops("add").get("500"), Some(&1));
    r.mock.state().set_kfr_faults(KfrFaults::NONE);
    r.clock.advance(chrono::Duration::seconds(61));
    r.until("the retry is delivered", all_delivered).await;
    assert_eq!(r.outbox.event(1).correlation_id, ev.correlation_id);
    let s = r.stop().await;
    assert_eq!((s.retries_scheduled, s.delivered), (1, 1));
}

#[tokio::test]
async fn a_transient_failure_past_the_time_bound_is_dead_lettered_saying_so() {
    let cfg = DispatchConfig {
        give_up_after: Duration::from_secs(3600),
        ..fast()
    };
    let r = rig(|c| c.kfr_faults.error_rate = 1.0, ORG, cfg, |_, _| {}).await;
    let p = synthetic_people(1).remove(0);
    r.enqueue(vec![event(1, Operation::Remove, &p, None)]).await;
    r.until("one failed attempt", |m| m[0].attempts == 1).await;
    r.clock.advance(chrono::Duration::hours(2));
    r.until("dead-lettered", |m| m[0].state == EventState::DeadLettered)
        .await;
    let dead = r.handle.dead_letters(None).await.unwrap();
    assert!(
        dead[0].rejection.reason.starts_with("transient failures for 1 h"),
        "{:?}",
        dead[0].rejection
    );
    r.stop().await;
}

#[tokio::test]
async fn a_rate_limit_pauses_every_delivery_then_they_go_on() {
    let cfg = DispatchConfig {
        max_in_flight: 1,
        ..fast()
    };
    let r = rig(
        |c| {
            c.kfr_faults.rate_limit_rate = 1.0;
            c.kfr_faults.retry_after_secs = 1;
        },
        ORG,
        cfg,
        |_, _| {},
    )
    .await;
    let people = synthetic_people(3);
    let evs = people
        .iter()
        .enumerate()
        .map(|(i, p)| event(i, Operation::Add, p, None))
        .collect();
    r.enqueue(evs).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        if r.ops("add").contains_key("429") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // Paused (Retry-After 1 s, capped at 150 ms here): nobody is sent meanwhile.
    tokio::time::sleep(Duration::from_millis(40)).await;
    assert_eq!(r.ops("add").get("429"), Some(&1), "one refusal, then the pause");
    assert!(r.health.unready().is_empty(), "a rate limit is not unready");
    assert!(
        r.outbox
            .events()
            .iter()
            .all(|e| e.attempts == 0 && e.state != EventState::DeadLettered)
    );
    r.mock.state().set_kfr_faults(KfrFaults::NONE);
    r.until("all delivered after the pause", all_delivered).await;
    let s = r.stop().await;
    assert!(s.pauses >= 1);
}

#[tokio::test]
async fn a_systemic_refusal_pauses_reports_unready_dead_letters_nothing_and_resumes() {
    // We act for CONSUMER through an Altinn delegation; withdrawing it makes every request fail
    // for the institution, whatever the event.
    let r = rig(|_| {}, CONSUMER, fast(), |_, _| {}).await;
    r.mock.state().set_delegations(vec![]);
    let people = synthetic_people(2);
    let evs = people
        .iter()
        .enumerate()
        .map(|(i, p)| event(i, Operation::Add, p, None))
        .collect();
    r.enqueue(evs).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        if !r.health.unready().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let unready = r.health.unready();
    assert!(
        matches!(unready.as_slice(), [crate::sync::health::Unready::Paused(why)] if why.starts_with("institution")),
        "{unready:?}"
    );
    // Probes come and fail; nothing is dead-lettered and no attempt is held against the events.
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert!(r.handle.dead_letters(None).await.unwrap().is_empty());
    assert!(
        r.outbox
            .events()
            .iter()
            // A probe may be in flight at this moment; nothing is counted against any event.
            .all(|e| matches!(e.state, EventState::Pending | EventState::InFlight) && e.attempts == 0)
    );
    r.mock.state().set_delegations(vec![
        crate::mock::Delegation::parse(&format!("{CONSUMER}={ORG}")).unwrap(),
    ]);
    r.until("delivered after the probe succeeds", all_delivered).await;
    assert!(r.health.unready().is_empty());
    r.stop().await;
}

#[tokio::test]
async fn a_rejected_event_is_dead_lettered_and_parks_only_its_customer() {
    let r = rig(|_| {}, ORG, fast(), |_, _| {}).await;
    let people = synthetic_people(2);
    let (bad, good) = (&people[0], &people[1]);
    r.mock.state().set_reject_customers([bad.clone()]);
    r.enqueue(vec![
        event(1, Operation::Add, bad, None),
        event(2, Operation::Remove, bad, None),
        event(3, Operation::Add, good, None),
    ])
    .await;
    r.until("the other customer is delivered and the rejected one dead", |m| {
        m[2].state == EventState::Delivered && m[0].state == EventState::DeadLettered
    })
    .await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(r.outbox.event(2).state, EventState::Pending, "parked behind its head");
    let dead = r.handle.dead_letters(None).await.unwrap();
    assert_eq!(dead.len(), 1);
    let rej = &dead[0].rejection;
    assert_eq!((rej.status, rej.code.as_deref()), (Some(400), Some("KFR-005")));
    assert!(
        !rej.body.contains(bad.as_str()) && !rej.reason.contains(bad.as_str()),
        "masked: {rej:?}"
    );
    assert_eq!(dead[0].parked_behind, 1);
    // The operator fixes it and retries: the customer moves on, in order.
    r.mock.state().set_reject_customers([]);
    let operator = crate::store::OperatorAction {
        actor: "test".into(),
        reason: None,
    };
    r.handle
        .retry_dead(DeadLetters::All, operator, Utc::now())
        .await
        .unwrap();
    r.until("all delivered", all_delivered).await;
    assert_eq!(r.ops("remove").get("204"), Some(&1));
    r.stop().await;
}

#[tokio::test]
async fn a_back_dated_add_goes_by_batch_with_its_date_and_its_customer_waits_for_ingestion() {
    // Slow ingestion, so a remove sent before the entry is stored would answer 404 and the
    // entry would then open a relationship that should have ended.
    let r = rig(|c| c.ingest_rate = 20, ORG, fast(), |_, _| {}).await;
    let p = synthetic_people(1).remove(0);
    let start = crate::clock::oslo_date(r.clock.now()) - chrono::Days::new(10);
    r.enqueue(vec![
        event(1, Operation::Add, &p, Some(start)),
        event(2, Operation::Remove, &p, None),
    ])
    .await;
    r.until("both delivered", all_delivered).await;
    assert_eq!(r.outbox.event(1).delivery.unwrap(), Delivery::IngestedSeen);
    assert_eq!(r.ops("batch").get("201"), Some(&1));
    assert_eq!(r.ops("add").len(), 0, "no single add: it would lose the date");
    assert_eq!(r.ops("remove").get("204"), Some(&1), "the remove waited for the entry");
    let rows = r.mock.state().relationships();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].start_date, start, "the start date is true");
    assert!(rows[0].end_date.is_some());
    r.stop().await;
}

/// After an upload the entries are looked up once KFR should have them (here: a second), not at
/// the next regular pass (here: an hour away), so the customer's next event is not held for it.
#[tokio::test]
async fn an_upload_is_looked_up_after_its_expected_ingestion_not_at_the_next_regular_pass() {
    let cfg = DispatchConfig {
        confirm_interval: Duration::from_secs(3600),
        ingest_rate: 1000.0,
        ..fast()
    };
    let r = rig(|c| c.ingest_rate = 1000, ORG, cfg, |_, _| {}).await;
    let p = synthetic_people(1).remove(0);
    let start = crate::clock::oslo_date(r.clock.now()) - chrono::Days::new(3);
    r.enqueue(vec![
        event(1, Operation::Add, &p, Some(start)),
        event(2, Operation::Remove, &p, None),
    ])
    .await;
    r.until("both delivered", all_delivered).await;
    assert_eq!(r.outbox.event(1).delivery.unwrap(), Delivery::IngestedSeen);
    r.stop().await;
}

#[tokio::test]
async fn a_back_dated_add_already_visible_is_confirmed_by_time_not_by_a_lookup() {
    let r = rig(|_| {}, ORG, fast(), |_, _| {}).await;
    let p = synthetic_people(1).remove(0);
    let start = crate::clock::oslo_date(r.clock.now()) - chrono::Days::new(3);
    // KFR already shows a relationship over that day (an earlier period of ours).
    let kfr = client(&r.mock, ORG);
    let id = CustomerId::parse(&p, &IdPolicy::test()).unwrap();
    let body = Layout::new().encode(&[crate::kfr::BatchEntry {
        id: id.clone(),
        start: Some(start - chrono::Days::new(5)),
    }]);
    assert!(kfr.batch_once(&body, uuid::Uuid::new_v4()).await.verdict.is_delivered());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        if r.mock.state().relationships().len() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    r.enqueue(vec![event(1, Operation::Add, &p, Some(start))]).await;
    r.until("accepted", |m| m[0].state == EventState::Accepted).await;
    tokio::time::sleep(Duration::from_millis(40)).await;
    assert_eq!(
        r.outbox.event(1).state,
        EventState::Accepted,
        "a lookup alone proves nothing"
    );
    r.clock.advance(chrono::Duration::seconds(5));
    r.until("confirmed by time", all_delivered).await;
    assert_eq!(r.outbox.event(1).delivery.unwrap(), Delivery::IngestedByTime);
    r.stop().await;
}

/// An upload cut mid-way (the process stopped after `begin_batch`): the next start recovers it as
/// of unknown fate, probes, and never sends it again when KFR has it; when KFR does not, it goes
/// again.
#[tokio::test]
async fn after_a_restart_mid_upload_the_batch_is_probed_not_resent() {
    let people = synthetic_people(2);
    let start = crate::clock::oslo_date(Utc::now()) - chrono::Days::new(7);
    let (reached, lost) = (people[0].clone(), people[1].clone());
    // The body of the upload that reached KFR before the crash.
    let body = Layout::new().encode(&[crate::kfr::BatchEntry {
        id: CustomerId::parse(&reached, &IdPolicy::test()).unwrap(),
        start: Some(start),
    }]);

    let (r2, l2) = (reached.clone(), lost.clone());
    let r = rig(
        |_| {},
        ORG,
        DispatchConfig {
            ingest_margin: Duration::from_secs(1),
            ..fast()
        },
        move |o, register| {
            o.enqueue(
                register,
                &[
                    event(1, Operation::Add, &r2, Some(start)),
                    event(2, Operation::Add, &l2, Some(start)),
                ],
                None,
                Utc::now(),
            )
            .unwrap();
            // The crashed process's claims: they ran out by the time the new agent starts.
            let gone = crate::store::Claimer {
                name: "sync:crashed".into(),
                epoch: None,
                ttl: chrono::Duration::seconds(-1),
            };
            let claimed = o.claim_ready(register, &gone, Utc::now(), 10).unwrap();
            assert_eq!(claimed.len(), 2);
            o.begin_batch(&[1, 2], uuid::Uuid::new_v4()).unwrap();
        },
    )
    .await;
    // This mock is new: re-create what the lost process's upload did to KFR for `reached`.
    let kfr = client(&r.mock, ORG);
    assert!(kfr.batch_once(&body, uuid::Uuid::new_v4()).await.verdict.is_delivered());
    r.until("recovered as unknown fate", |m| {
        m.iter()
            .all(|e| e.state == EventState::Accepted && e.accepted_at.is_none())
    })
    .await;
    // The dispatcher starts timing an unknown upload at its first look, which may come after
    // any single move of the clock: keep the clock moving until both are delivered.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !all_delivered(&r.outbox.events()) {
        assert!(std::time::Instant::now() < deadline, "both delivered in time");
        r.clock.advance(chrono::Duration::seconds(2));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // One batch from the test (the crashed upload), one from the dispatcher for `lost` only.
    assert_eq!(r.ops("batch").get("201"), Some(&2));
    assert_eq!(r.outbox.event(1).delivery.unwrap(), Delivery::IngestedByTime);
    let rows = r.mock.state().relationships();
    assert!(
        rows.iter()
            .any(|row| row.customer_id == lost && row.start_date == start)
    );
    let s = r.stop().await;
    assert_eq!(s.recovered.unknown_uploads, 2);
}

#[tokio::test]
async fn shutdown_hands_back_what_did_not_finish_in_time() {
    let cfg = DispatchConfig {
        shutdown_grace: Duration::from_millis(30),
        ..fast()
    };
    let r = rig(|c| c.kfr_faults.latency_ms = 2_000, ORG, cfg, |_, _| {}).await;
    let p = synthetic_people(1).remove(0);
    r.enqueue(vec![event(1, Operation::Add, &p, None)]).await;
    r.until("in flight", |m| m[0].state == EventState::InFlight).await;
    let outbox = r.outbox.clone();
    let s = r.stop().await;
    assert!(s.cut_at_deadline);
    assert_eq!(s.released_at_shutdown, 1);
    assert_eq!(outbox.event(1).state, EventState::Pending);
}

/// A wall clock that panics when read from any task but the dispatcher's own loop: a stand-in for
/// a bug in a delivery task (the settle path reads the clock for the settlement's time).
#[derive(Debug)]
struct FailsInTasks {
    inner: Arc<ManualClock>,
    main: std::sync::OnceLock<tokio::task::Id>,
}

impl WallClock for FailsInTasks {
    fn now(&self) -> DateTime<Utc> {
        if let (Some(main), Some(here)) = (self.main.get(), tokio::task::try_id())
            && *main != here
        {
            panic!("test: the wall clock fails inside a delivery task");
        }
        self.inner.now()
    }
}

/// A delivery task that panics must not leave a dispatcher that looks alive and delivers nothing:
/// `run` stops by itself with an error, after handing back the event the task held.
#[tokio::test]
async fn a_panicking_delivery_task_stops_the_dispatcher_with_an_error_and_hands_its_event_back() {
    let mock = start_mock(|_| {}).await;
    let register = Register {
        environment: "local".into(),
        base_url: mock.kfr_base_url(),
        org_number: ORG.into(),
    }
    .key();
    let outbox = TestStore::default();
    let handle = outbox.store();
    let clock = Arc::new(FailsInTasks {
        inner: ManualClock::new(Utc::now()),
        main: std::sync::OnceLock::new(),
    });
    let (_stop, rx) = watch::channel(false);
    let d = Dispatcher::new(
        handle.clone(),
        client(&mock, ORG),
        register.clone(),
        fast(),
        Health::new(),
    )
    .with_clock(clock.clone());
    let lease = lease(&handle, &register).await;
    let run = tokio::spawn(d.run(rx, lease));
    clock.main.set(run.id()).unwrap();
    let p = synthetic_people(1).remove(0);
    handle
        .enqueue(register, vec![event(1, Operation::Add, &p, None)], None, Utc::now())
        .await
        .unwrap();
    // A guard against hanging only: the dispatcher is expected to stop at once.
    let result = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the dispatcher stops by itself when a task panics")
        .expect("run itself does not panic");
    let err = result.expect_err("a panicked task is an error, not a clean stop");
    assert!(
        matches!(&err, DispatchError::TaskFailed { detail } if detail.contains("the wall clock fails inside a delivery task")),
        "{err}"
    );
    assert_eq!(
        outbox.event(1).state,
        EventState::Pending,
        "handed back for the next start"
    );
}

/// The agent's own register check (issue 19 item 7): it walks the ledger, looks each customer up
/// within its rate, and finds one changed behind its back — without repairing it.
#[tokio::test]
async fn the_register_check_finds_a_customer_changed_behind_its_back_and_repairs_nothing() {
    let cfg = DispatchConfig {
        checks_per_hour: 360_000,
        ..fast()
    };
    let r = rig(|_| {}, ORG, cfg, |_, _| {}).await;
    let people = synthetic_people(3);
    let evs = people
        .iter()
        .enumerate()
        .map(|(i, p)| event(i, Operation::Add, p, None))
        .collect();
    r.enqueue(evs).await;
    r.until("all delivered", all_delivered).await;
    // Removed in KFR by someone else: the ledger still says active.
    let other = client(&r.mock, ORG);
    let id = CustomerId::parse(&people[1], &IdPolicy::test()).unwrap();
    assert!(
        other
            .remove_once(&id, uuid::Uuid::new_v4())
            .await
            .verdict
            .is_delivered()
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while r.ops("lookup").get("200").copied().unwrap_or(0) < 12 {
        assert!(std::time::Instant::now() < deadline, "the check looks customers up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let adds = r.ops("add");
    let s = r.stop().await;
    assert!(s.checks_mismatched >= 1, "{s:?}");
    assert!(s.checks_matched >= 2, "{s:?}");
    assert_eq!(adds.get("201"), Some(&3), "nothing repaired");
}

/// Issue 19 finding 4: a delivery whose outcome the store refuses (a full disk) is not left in
/// flight until a restart. The agent is unready meanwhile and records the outcome as soon as the
/// store takes writes again — without sending the request a second time.
#[tokio::test]
async fn an_outcome_the_store_refused_is_recorded_once_it_can_be_and_not_resent() {
    let r = rig(|_| {}, ORG, fast(), |_, _| {}).await;
    // The store refuses to record deliveries, as a full disk would.
    let fail = "CREATE TRIGGER full_disk BEFORE UPDATE OF state ON outbox WHEN new.state = 'delivered'
                BEGIN SELECT RAISE(ABORT, 'disk full (test)'); END;";
    r.outbox.backend().run_sql_for_tests(fail);
    let p = synthetic_people(1).remove(0);
    r.enqueue(vec![event(1, Operation::Add, &p, None)]).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while r.health.unready().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "unready while an outcome is unrecorded"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(r.ops("add").get("201"), Some(&1));
    assert_eq!(r.outbox.event(1).state, EventState::InFlight, "not recorded yet");
    r.outbox.backend().run_sql_for_tests("DROP TRIGGER full_disk");
    r.until("the delivery is recorded", all_delivered).await;
    assert_eq!(r.ops("add").get("201"), Some(&1), "the request was not sent again");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !r.health.unready().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "ready again: {:?}",
            r.health.unready()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    r.stop().await;
}

/// Issue 19 item 7: once shutdown begins, no new request starts. Deliveries still waiting for a
/// request slot hand their events back instead, so a stop with a backlog ends as soon as the
/// requests already out are answered, not after the whole drain time.
#[tokio::test]
async fn no_request_starts_during_the_drain() {
    let cfg = DispatchConfig {
        max_in_flight: 1,
        shutdown_grace: Duration::from_secs(5),
        ..fast()
    };
    let r = rig(|c| c.kfr_faults.latency_ms = 300, ORG, cfg, |_, _| {}).await;
    let people = synthetic_people(20);
    let evs = people
        .iter()
        .enumerate()
        .map(|(i, p)| event(i, Operation::Add, p, None))
        .collect();
    r.enqueue(evs).await;
    r.until("one request out", |m| m.iter().any(|e| e.state == EventState::InFlight))
        .await;
    let (mock, outbox) = (r.mock.state(), r.outbox.clone());
    let started = std::time::Instant::now();
    let s = r.stop().await;
    let sent: u64 = mock
        .snapshot()
        .kfr
        .requests
        .get("add")
        .map(|m| m.values().sum())
        .unwrap_or(0);
    assert!(sent <= 2, "{sent} adds were sent: requests started during the drain");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the stop waited for more than the request out"
    );
    let pending = outbox
        .events()
        .iter()
        .filter(|e| e.state == EventState::Pending)
        .count() as u64;
    assert_eq!(
        pending + s.delivered,
        20,
        "the rest handed back, in line for the next start: {s:?}"
    );
}

/// Singles are claimed up to what is in flight plus one more group, so a leader that dies holds
/// few customers for a successor to wait out; a batch's worth only while events go by batch.
#[test]
fn claims_hold_two_groups_of_singles_and_a_batch_only_while_batching() {
    let cfg = DispatchConfig {
        max_in_flight: 32,
        batch_max_entries: 250,
        ..DispatchConfig::default()
    };
    let cap = 32 + 250;
    assert_eq!(claim_limit(&cfg, cap, 0, false, Gate::Open), Some(64));
    assert_eq!(
        claim_limit(&cfg, cap, 31, false, Gate::Open),
        Some(33),
        "fewer held than in flight"
    );
    assert_eq!(
        claim_limit(&cfg, cap, 40, false, Gate::Open),
        None,
        "not worth a commit yet"
    );
    assert_eq!(claim_limit(&cfg, cap, 64, false, Gate::Open), None);
    assert_eq!(claim_limit(&cfg, cap, 0, true, Gate::Open), Some(282));
    assert_eq!(claim_limit(&cfg, cap, 200, true, Gate::Open), Some(82));
    assert_eq!(claim_limit(&cfg, cap, 0, false, Gate::Probe), Some(1));
    assert_eq!(claim_limit(&cfg, cap, 0, false, Gate::Closed), None);
}
