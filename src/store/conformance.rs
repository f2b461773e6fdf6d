//! The outbox conformance suite: the properties every [`OutboxBackend`] must have, stated once and
//! run against each backend (docs/specs/outbox.md names the test behind each invariant).
//!
//! A backend's test module provides a [`Harness`] — a fresh, empty backend plus the few things
//! the interface deliberately does not offer (starting and ending a load, making a write fail) —
//! and expands [`outbox_conformance_tests!`] to get one `#[test]` per property.

use super::backend::Backend;
use super::error::StoreError;
use super::types::*;
use chrono::{DateTime, Duration, NaiveDate, TimeZone as _, Utc};
use uuid::Uuid;

/// A fresh backend and what the interface deliberately does not offer.
pub trait Harness {
    fn backend(&mut self) -> &mut dyn Backend;
    /// A second, independent handle on the same store: what another process (another host, for
    /// a server backend) sees and does. The concurrency section runs the two side by side.
    fn second(&mut self) -> Box<dyn Backend>;
    /// Makes storing the event `event_id` fail from now on, whatever else the call holds.
    fn poison(&mut self, event_id: &str);
    /// Whether `backup_to` writes a copy (a file store); a server store refuses it, saying to
    /// use the server's own backup tooling (PostgreSQL: pg_dump, base backups).
    fn copies_to_a_file(&self) -> bool {
        true
    }
}

/// Starts an initial load of `register` (a job whose settings name it, raising its barrier);
/// returns the job id.
pub fn start_load(h: &mut dyn Harness, register: &str) -> i64 {
    let mut parts = register.splitn(3, '|');
    let (env, url, org) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
    let job = NewJob {
        input_path: "in.txt".into(),
        content_hash: "00".into(),
        settings: serde_json::json!({"environment": env, "kfr_base_url": url, "org_number": org}).to_string(),
        entries: 0,
        batches: vec![],
    };
    let id = h.backend().create_job(&job, t(0)).unwrap();
    assert_eq!(
        h.backend().job(id).unwrap().unwrap().register.as_deref(),
        Some(register)
    );
    id
}

/// Ends that load (abandoned, its held operations left queued): the barrier lifts.
pub fn end_load(h: &mut dyn Harness, job: i64) {
    let r = h
        .backend()
        .abandon_job(job, HeldAtAbandon::Release, &operator(), t(0))
        .unwrap();
    assert!(matches!(r, Abandonment::Abandoned { .. }), "{r:?}");
}

/// An operator's action in the tests.
pub fn operator() -> OperatorAction {
    OperatorAction {
        actor: "conformance".into(),
        reason: None,
    }
}

/// The dispatcher's claimer in the tests: no lease, claims last a minute.
pub fn agent() -> Claimer {
    Claimer {
        name: "sync:conformance".into(),
        epoch: None,
        ttl: chrono::Duration::seconds(60),
    }
}

/// Far past every claim the tests make: `recover` then takes back whatever is in flight.
const LATER: i64 = 100_000;

/// One `#[test]` per property for the harness built by `$make` (an expression giving a
/// `Box<dyn Harness>`), plus the random histories ([`random_histories_hand_out_only_heads_one_per_customer`]),
/// `random_cases` of them (32 unless given: each needs a fresh store, which a server backend
/// makes more slowly).
macro_rules! outbox_conformance_tests {
    ($make:expr) => {
        $crate::store::conformance::outbox_conformance_tests!($make, random_cases = 32);
    };
    ($make:expr, random_cases = $cases:expr) => {
        /// Random histories of every outbox transition, each on a fresh store.
        #[test]
        fn random_histories_hand_out_only_heads_one_per_customer() {
            $crate::store::conformance::random_histories_hand_out_only_heads_one_per_customer(&|| $make, $cases);
        }
        $crate::store::conformance::outbox_conformance_tests!(@each $make;
            dedupe_by_event_id, a_duplicate_ahead_in_a_call_leaves_the_next_event_the_head,
            nothing_stored_from_a_failed_call, per_customer_fifo,
            parallel_across_customers_up_to_the_limit, retry_later_keeps_the_head_and_honours_next_attempt_at,
            release_does_not_count_an_attempt, dead_letter_parks_only_that_customer, retry_dead_and_drop_dead_unpark,
            barrier_holds_removes_and_what_is_behind_them_not_free_adds,
            recover_requeues_singles_and_marks_batch_events_of_unknown_fate, batch_accepted_then_ingested,
            settle_updates_the_ledger, purge_removes_only_finished_events_before_the_cutoff, status_counts,
            registers_are_isolated, correlation_id_is_stable_across_claims_and_recover,
            a_callers_own_event_goes_only_as_a_free_head_and_holds_its_customer,
            jobs_raise_and_lower_the_barrier_and_an_abandoned_job_takes_no_writes,
            batch_unknown_keeps_the_events_at_their_heads_until_probed, unfinished_customers_are_those_with_a_head,
            a_load_claims_only_its_held_operations_in_turn, history_outlives_the_outbox_and_names_who,
            concurrency_one_lease_holder_and_a_deposed_one_is_fenced,
            concurrency_same_customer_enqueues_from_two_handles_give_one_head,
            concurrency_claims_from_two_handles_never_give_two_of_one_customer,
            cancel_takes_only_pending_events_and_the_queue_moves_on, heartbeats_and_the_last_delivery,
            backup_is_a_private_checked_copy, the_ledger_can_be_walked_in_pages,
            an_event_id_reused_for_another_event_is_refused_whole, a_source_cursor_moves_with_the_events_it_read,
            the_flood_guard_refuses_a_call_that_would_put_a_customer_past_its_limit,
            concurrency_the_flood_guard_holds_for_two_handles_on_one_customer,
            a_streamed_enqueue_is_one_transaction_over_its_chunks,
            concurrency_one_load_writer_and_who_holds_it_is_seen_without_taking_it);
    };
    (@each $make:expr; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                let mut h = $make;
                $crate::store::conformance::$name(&mut *h);
            }
        )*
    };
}
pub(crate) use outbox_conformance_tests;

pub const R: &str = "test|https://kfr.example:443/api|923609016";
pub const R2: &str = "test|https://kfr.example:443/api|974760673";
const A: &str = "customer-a";
const B: &str = "customer-b";
const C: &str = "customer-c";

/// A fixed instant plus `secs` (tests never read the wall clock for decisions).
pub fn t(secs: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2030, 1, 1, 0, 0, 0).unwrap() + Duration::seconds(secs)
}

pub fn ev(id: &str, customer: &str, op: Operation) -> NewEvent {
    NewEvent {
        event_id: id.to_string(),
        op,
        customer_id: customer.to_string(),
        start_date: None,
        occurred_at: t(0),
        source: "conformance".into(),
    }
}

fn stored(r: &[Enqueued]) -> Vec<Seq> {
    r.iter()
        .map(|e| match e {
            Enqueued::Stored { seq } => *seq,
            Enqueued::Duplicate { seq } => panic!("event {seq} was a duplicate"),
        })
        .collect()
}

fn put(b: &mut dyn Backend, register: &str, events: &[NewEvent]) -> Vec<Seq> {
    stored(&b.enqueue(register, events, None, t(0)).unwrap())
}

fn claim(b: &mut dyn Backend, register: &str, at: i64, limit: usize) -> Vec<OutboxEvent> {
    b.claim_ready(register, &agent(), t(at), limit).unwrap()
}

fn ids(events: &[OutboxEvent]) -> Vec<&str> {
    events.iter().map(|e| e.event_id.as_str()).collect()
}

/// The settlement of a delivered `op` at `t(at)`.
pub fn delivered(seq: Seq, op: Operation, at: i64) -> Settlement {
    Settlement {
        seq,
        delivery: match op {
            Operation::Add => Delivery::Added,
            Operation::Remove => Delivery::Removed,
        },
        echoed_correlation_id: None,
        at: t(at),
    }
}

/// KFR's refusal of an event for its content.
pub fn rejection() -> Rejection {
    Rejection {
        status: Some(400),
        code: Some("KFR-005".into()),
        body: "{\"code\":\"KFR-005\"}".into(),
        reason: "KFR-005: invalid identifier".into(),
    }
}

/// Claims everything ready and settles it, repeatedly, returning the event ids in the order
/// they were delivered.
fn drain(b: &mut dyn Backend, register: &str, at: i64) -> Vec<String> {
    let mut order = vec![];
    loop {
        let got = claim(b, register, at, 100);
        if got.is_empty() {
            return order;
        }
        for e in got {
            b.settle(&[delivered(e.seq, e.op, at)]).unwrap();
            order.push(e.event_id);
        }
    }
}

pub fn dedupe_by_event_id(h: &mut dyn Harness) {
    let b = h.backend();
    let r = b
        .enqueue(
            R,
            &[
                ev("e1", A, Operation::Add),
                ev("e2", B, Operation::Add),
                ev("e1", A, Operation::Add),
            ],
            None,
            t(0),
        )
        .unwrap();
    let Enqueued::Stored { seq: first } = r[0] else {
        panic!("{r:?}")
    };
    assert!(matches!(r[1], Enqueued::Stored { .. }));
    assert_eq!(r[2], Enqueued::Duplicate { seq: first }, "a duplicate within one call");
    assert_eq!(
        b.enqueue(R, &[ev("e1", A, Operation::Add)], None, t(0)).unwrap(),
        [Enqueued::Duplicate { seq: first }],
        "a duplicate in a later call (the same event; another one under the id is refused: \
         an_event_id_reused_for_another_event_is_refused_whole)"
    );
    // Still a duplicate once delivered: the id stays known until purged.
    let got = claim(b, R, 0, 10);
    b.settle(&[delivered(got[0].seq, Operation::Add, 0)]).unwrap();
    assert_eq!(
        b.enqueue(R, &[ev("e1", A, Operation::Add)], None, t(0)).unwrap(),
        [Enqueued::Duplicate { seq: first }]
    );
    let st = b.status(Some(R)).unwrap();
    assert_eq!((st.pending, st.in_flight, st.delivered), (0, 1, 1));
}

/// A call whose first event of a customer is a known id (nothing stored for it) still makes
/// that customer's next event of the call its head, and an event behind a head waits.
pub fn a_duplicate_ahead_in_a_call_leaves_the_next_event_the_head(h: &mut dyn Harness) {
    let b = h.backend();
    b.enqueue(R, &[ev("d1", A, Operation::Add)], None, t(0)).unwrap();
    let got = claim(b, R, 0, 10);
    b.settle(&[delivered(got[0].seq, Operation::Add, 0)]).unwrap();
    let r = b
        .enqueue(
            R,
            &[
                ev("d1", A, Operation::Add),
                ev("d2", A, Operation::Remove),
                ev("d3", B, Operation::Add),
                ev("d4", B, Operation::Remove),
            ],
            None,
            t(1),
        )
        .unwrap();
    assert!(matches!(r[0], Enqueued::Duplicate { .. }), "{r:?}");
    let got: Vec<String> = claim(b, R, 2, 10).into_iter().map(|e| e.event_id).collect();
    assert_eq!(got, ["d2", "d3"], "one head per customer: the first event each stored");
}

pub fn nothing_stored_from_a_failed_call(h: &mut dyn Harness) {
    h.poison("bad");
    let b = h.backend();
    assert!(
        b.enqueue(
            R,
            &[ev("ok", A, Operation::Add), ev("bad", B, Operation::Add)],
            None,
            t(0)
        )
        .is_err()
    );
    assert_eq!(
        b.status(None).unwrap().pending,
        0,
        "the first event of the failed call is not stored"
    );
    assert_eq!(
        put(b, R, &[ev("ok", A, Operation::Add)]).len(),
        1,
        "its id was not taken either"
    );

    // A settlement batch with one bad seq records none of them.
    put(b, R, &[ev("c1", C, Operation::Add)]);
    let got = claim(b, R, 0, 10);
    assert_eq!(got.len(), 2);
    let bad = got.iter().map(|e| e.seq).max().unwrap() + 1000;
    assert!(
        b.settle(&[
            delivered(got[0].seq, Operation::Add, 1),
            delivered(bad, Operation::Add, 1)
        ])
        .is_err()
    );
    assert_eq!(b.status(Some(R)).unwrap().in_flight, 2);
    assert!(b.ledger(R).unwrap().is_empty());
}

pub fn per_customer_fifo(h: &mut dyn Harness) {
    let b = h.backend();
    put(
        b,
        R,
        &[
            ev("a1", A, Operation::Add),
            ev("a2", A, Operation::Remove),
            ev("b1", B, Operation::Remove),
            ev("a3", A, Operation::Add),
        ],
    );
    let first = claim(b, R, 0, 10);
    assert_eq!(ids(&first), ["a1", "b1"], "only heads, oldest first");
    assert!(first.iter().all(|e| e.state == EventState::InFlight));
    assert!(claim(b, R, 0, 10).is_empty(), "one in flight per customer");
    put(b, R, &[ev("a4", A, Operation::Remove)]);
    assert!(
        claim(b, R, 0, 10).is_empty(),
        "a new event queues behind the one in flight"
    );
    b.settle(&[delivered(first[0].seq, Operation::Add, 1)]).unwrap();
    assert_eq!(ids(&claim(b, R, 1, 10)), ["a2"]);
    assert!(claim(b, R, 1, 10).is_empty());
    b.settle(&[delivered(first[1].seq, Operation::Remove, 1)]).unwrap();
    let a2 = b.status(Some(R)).unwrap();
    assert_eq!((a2.in_flight, a2.pending, a2.delivered), (1, 2, 2));
    let in_flight = b.accepted(R).unwrap();
    assert!(in_flight.is_empty());
}

pub fn parallel_across_customers_up_to_the_limit(h: &mut dyn Harness) {
    let b = h.backend();
    let customers: Vec<String> = (0..6).map(|i| format!("customer-{i}")).collect();
    for (i, c) in customers.iter().enumerate() {
        put(
            b,
            R,
            &[
                ev(&format!("{i}-1"), c, Operation::Add),
                ev(&format!("{i}-2"), c, Operation::Remove),
            ],
        );
    }
    let mut fl = claim(b, R, 0, 4);
    assert_eq!(ids(&fl), ["0-1", "1-1", "2-1", "3-1"]);
    let more = claim(b, R, 0, 4);
    assert_eq!(ids(&more), ["4-1", "5-1"]);
    assert!(claim(b, R, 0, 4).is_empty());
    fl.extend(more);
    // Deliveries in any order across customers (newest first here); each customer in its own.
    let mut order = vec![];
    while let Some(e) = fl.pop() {
        b.settle(&[delivered(e.seq, e.op, 0)]).unwrap();
        order.push(e.event_id);
        if fl.is_empty() {
            fl = claim(b, R, 0, 100);
        }
    }
    assert_eq!(order.len(), 12);
    for i in 0..6 {
        let first = order.iter().position(|x| *x == format!("{i}-1"));
        let second = order.iter().position(|x| *x == format!("{i}-2"));
        assert!(second.is_some() && first < second, "{order:?}");
    }
}

pub fn retry_later_keeps_the_head_and_honours_next_attempt_at(h: &mut dyn Harness) {
    let b = h.backend();
    put(
        b,
        R,
        &[
            ev("a1", A, Operation::Add),
            ev("a2", A, Operation::Remove),
            ev("b1", B, Operation::Add),
        ],
    );
    let got = claim(b, R, 0, 1);
    assert_eq!(ids(&got), ["a1"]);
    b.retry_later(got[0].seq, t(60), "HTTP 503", t(0)).unwrap();
    assert_eq!(
        ids(&claim(b, R, 10, 10)),
        ["b1"],
        "a2 does not overtake its waiting head"
    );
    assert!(claim(b, R, 59, 10).is_empty());
    let again = claim(b, R, 60, 10);
    assert_eq!(ids(&again), ["a1"]);
    let e = &again[0];
    assert_eq!(e.attempts, 1);
    assert_eq!(e.next_attempt_at, Some(t(60)));
    assert_eq!(e.last_error.as_deref(), Some("HTTP 503"));
    let since = e.failing_since.expect("failing_since set by the first failure");
    b.retry_later(e.seq, t(120), "HTTP 503", t(0)).unwrap();
    let third = claim(b, R, 120, 10);
    assert_eq!(
        (third[0].attempts, third[0].failing_since),
        (2, Some(since)),
        "the run of failures keeps its start"
    );
    b.settle(&[delivered(third[0].seq, Operation::Add, 121)]).unwrap();
    assert_eq!(ids(&claim(b, R, 121, 10)), ["a2"]);
}

pub fn release_does_not_count_an_attempt(h: &mut dyn Harness) {
    let b = h.backend();
    put(b, R, &[ev("a1", A, Operation::Add), ev("a2", A, Operation::Add)]);
    let got = claim(b, R, 0, 10);
    b.release(&[got[0].seq], t(0)).unwrap();
    let again = claim(b, R, 0, 10);
    assert_eq!(ids(&again), ["a1"], "released back to its place at the head");
    assert_eq!((again[0].attempts, again[0].next_attempt_at), (0, None));
    assert!(
        b.release(&[again[0].seq + 1], t(0)).is_err(),
        "a pending event cannot be released"
    );
}

pub fn dead_letter_parks_only_that_customer(h: &mut dyn Harness) {
    let b = h.backend();
    put(
        b,
        R,
        &[
            ev("a1", A, Operation::Add),
            ev("a2", A, Operation::Remove),
            ev("a3", A, Operation::Add),
            ev("b1", B, Operation::Add),
        ],
    );
    let got = claim(b, R, 0, 10);
    assert_eq!(ids(&got), ["a1", "b1"]);
    b.dead_letter(got[0].seq, &rejection(), t(5)).unwrap();
    b.settle(&[delivered(got[1].seq, Operation::Add, 5)]).unwrap();
    put(b, R, &[ev("b2", B, Operation::Remove)]);
    assert_eq!(ids(&claim(b, R, 100, 10)), ["b2"], "the other customer goes on");
    let st = b.status(Some(R)).unwrap();
    assert_eq!((st.dead_lettered, st.parked_customers, st.parked_events), (1, 1, 2));
    let dl = b.dead_letters(Some(R)).unwrap();
    assert_eq!(dl.len(), 1);
    assert_eq!(
        (dl[0].event.event_id.as_str(), dl[0].parked_behind, dl[0].dead_at),
        ("a1", 2, t(5))
    );
    assert_eq!(dl[0].rejection, rejection());
    assert_eq!(dl[0].event.attempts, 1);
    assert!(b.dead_letters(Some(R2)).unwrap().is_empty());
    assert_eq!(b.dead_letters(None).unwrap().len(), 1);
}

pub fn retry_dead_and_drop_dead_unpark(h: &mut dyn Harness) {
    let b = h.backend();
    put(
        b,
        R,
        &[
            ev("a1", A, Operation::Add),
            ev("a2", A, Operation::Remove),
            ev("c1", C, Operation::Add),
        ],
    );
    let got = claim(b, R, 0, 10);
    for e in &got {
        b.dead_letter(e.seq, &rejection(), t(1)).unwrap();
    }
    assert!(
        b.retry_dead(DeadLetters::One(got[0].seq + 1), &operator(), t(0))
            .is_err(),
        "a2 is not a dead letter"
    );
    assert_eq!(
        b.retry_dead(DeadLetters::One(got[0].seq), &operator(), t(0)).unwrap(),
        1
    );
    let again = claim(b, R, 2, 10);
    assert_eq!(ids(&again), ["a1"], "back at its customer's head, attempts kept");
    assert_eq!(again[0].attempts, 1);
    b.dead_letter(again[0].seq, &rejection(), t(3)).unwrap();

    assert_eq!(b.drop_dead(DeadLetters::One(got[0].seq), &operator(), t(4)).unwrap(), 1);
    assert_eq!(
        ids(&claim(b, R, 4, 10)),
        ["a2"],
        "dropping the head unparks the customer"
    );
    assert!(
        b.ledger(R).unwrap().is_empty(),
        "a dropped event changes nothing in the ledger"
    );
    assert_eq!(b.retry_dead(DeadLetters::All, &operator(), t(0)).unwrap(), 1);
    assert_eq!(ids(&claim(b, R, 4, 10)), ["c1"]);
    let st = b.status(Some(R)).unwrap();
    assert_eq!(
        (st.dropped, st.dead_lettered, st.parked_customers, st.in_flight),
        (1, 0, 0, 2)
    );
    assert_eq!(b.drop_dead(DeadLetters::All, &operator(), t(5)).unwrap(), 0);
}

pub fn barrier_holds_removes_and_what_is_behind_them_not_free_adds(h: &mut dyn Harness) {
    let job = start_load(h, R);
    let other = start_load(h, R2);
    end_load(h, other);
    let b = h.backend();
    assert_eq!(b.barrier(R).unwrap(), Some(job));
    assert_eq!(
        b.barrier(R2).unwrap(),
        None,
        "a load of another register holds nothing here"
    );
    put(
        b,
        R,
        &[
            ev("a-remove", A, Operation::Remove),
            ev("a-add", A, Operation::Add),
            ev("b-add", B, Operation::Add),
            ev("c-add", C, Operation::Add),
            ev("c-remove", C, Operation::Remove),
        ],
    );
    put(b, R2, &[ev("r2-remove", A, Operation::Remove)]);
    assert_eq!(ids(&claim(b, R2, 0, 10)), ["r2-remove"]);
    assert_eq!(
        drain(b, R, 0),
        ["b-add", "c-add"],
        "adds with nothing ahead go; removes and what follows wait"
    );
    assert_eq!(b.status(Some(R)).unwrap().barrier, Some(job));
    end_load(h, job);
    let b = h.backend();
    assert_eq!(b.barrier(R).unwrap(), None);
    assert_eq!(drain(b, R, 1), ["a-remove", "c-remove", "a-add"]);
}

pub fn recover_requeues_singles_and_marks_batch_events_of_unknown_fate(h: &mut dyn Harness) {
    let b = h.backend();
    put(
        b,
        R,
        &[
            ev("single", A, Operation::Remove),
            ev("batch-1", B, Operation::Add),
            ev("batch-2", C, Operation::Add),
        ],
    );
    put(b, R2, &[ev("elsewhere", A, Operation::Add)]);
    let got = claim(b, R, 0, 10);
    let other = claim(b, R2, 0, 10);
    let upload = Uuid::new_v4();
    b.begin_batch(&[got[1].seq, got[2].seq], upload).unwrap();
    assert_eq!(
        b.recover(R, 1, t(LATER), Duration::zero()).unwrap(),
        Recovered {
            requeued: 1,
            unknown_uploads: 2
        }
    );
    let unknown = b.accepted(R).unwrap();
    assert_eq!(ids(&unknown), ["batch-1", "batch-2"]);
    assert!(
        unknown
            .iter()
            .all(|e| e.accepted_at.is_none() && e.batch_correlation_id == Some(upload))
    );
    assert_eq!(
        ids(&claim(b, R, LATER, 10)),
        ["single"],
        "batch events are not resent before a probe"
    );
    assert_eq!(
        b.status(Some(R2)).unwrap().in_flight,
        1,
        "recovering one register leaves another alone"
    );
    // A probe that finds the upload not ingested releases the events for a new attempt.
    b.release(&[unknown[0].seq], t(0)).unwrap();
    let again = claim(b, R, 2, 10);
    assert_eq!(ids(&again), ["batch-1"]);
    assert_eq!((again[0].batch_correlation_id, again[0].attempts), (None, 0));
    let _ = other;
}

pub fn batch_accepted_then_ingested(h: &mut dyn Harness) {
    let b = h.backend();
    let day = NaiveDate::from_ymd_opt(2029, 12, 1).unwrap();
    let mut e1 = ev("b1", A, Operation::Add);
    e1.start_date = Some(day);
    put(
        b,
        R,
        &[e1, ev("b2", B, Operation::Add), ev("a-next", A, Operation::Remove)],
    );
    let got = claim(b, R, 0, 2);
    let upload = Uuid::new_v4();
    b.begin_batch(&[got[0].seq, got[1].seq], upload).unwrap();
    assert!(b.batch_accepted(Uuid::new_v4(), t(1)).is_err(), "an unknown batch");
    b.batch_accepted(upload, t(1)).unwrap();
    let acc = b.accepted(R).unwrap();
    assert_eq!(ids(&acc), ["b1", "b2"]);
    assert!(
        acc.iter()
            .all(|e| e.state == EventState::Accepted && e.accepted_at == Some(t(1)) && e.attempts == 1)
    );
    assert!(
        claim(b, R, 2, 10).is_empty(),
        "an accepted event is still its customer's head"
    );
    b.settle(&[Settlement {
        seq: acc[0].seq,
        delivery: Delivery::IngestedSeen,
        echoed_correlation_id: Some(upload.to_string()),
        at: t(3),
    }])
    .unwrap();
    let ledger = b.ledger(R).unwrap();
    assert_eq!(ledger.len(), 1);
    assert_eq!(
        (ledger[0].state, ledger[0].start_date, ledger[0].since),
        (LedgerState::Active, Some(day), t(3))
    );
    assert_eq!(ids(&claim(b, R, 3, 10)), ["a-next"]);
}

pub fn settle_updates_the_ledger(h: &mut dyn Harness) {
    let b = h.backend();
    put(
        b,
        R,
        &[
            ev("a-add", A, Operation::Add),
            ev("b-add", B, Operation::Add),
            ev("a-rm", A, Operation::Remove),
            ev("c-rm", C, Operation::Remove),
        ],
    );
    let got = claim(b, R, 0, 10);
    assert_eq!(ids(&got), ["a-add", "b-add", "c-rm"]);
    let wrong = Settlement {
        delivery: Delivery::Removed,
        ..delivered(got[0].seq, Operation::Add, 1)
    };
    assert!(b.settle(&[wrong]).is_err(), "an add cannot be delivered as removed");
    let with = |seq, delivery, at| Settlement {
        seq,
        delivery,
        echoed_correlation_id: None,
        at: t(at),
    };
    b.settle(&[
        with(got[0].seq, Delivery::Added, 1),
        with(got[1].seq, Delivery::AlreadyPresent, 1),
        with(got[2].seq, Delivery::NotFound, 1),
    ])
    .unwrap();
    let state = |b: &mut dyn Backend| -> Vec<(String, LedgerState)> {
        b.ledger(R)
            .unwrap()
            .into_iter()
            .map(|e| (e.customer_id, e.state))
            .collect()
    };
    assert_eq!(
        state(b),
        [
            (A.into(), LedgerState::Active),
            (B.into(), LedgerState::Active),
            (C.into(), LedgerState::Ended)
        ]
    );
    let rm = claim(b, R, 2, 10);
    b.settle(&[with(rm[0].seq, Delivery::Removed, 2)]).unwrap();
    let entries = b.ledger(R).unwrap();
    assert_eq!(
        (entries[0].state, entries[0].since, entries[0].correlation_id),
        (LedgerState::Ended, t(2), rm[0].correlation_id)
    );
    assert!(b.ledger(R2).unwrap().is_empty());
}

pub fn purge_removes_only_finished_events_before_the_cutoff(h: &mut dyn Harness) {
    let b = h.backend();
    put(
        b,
        R,
        &[
            ev("old", A, Operation::Add),
            ev("dropped", B, Operation::Add),
            ev("new", C, Operation::Add),
            ev("open", A, Operation::Remove),
        ],
    );
    let got = claim(b, R, 0, 10);
    b.settle(&[delivered(got[0].seq, Operation::Add, 10)]).unwrap();
    b.dead_letter(got[1].seq, &rejection(), t(10)).unwrap();
    b.drop_dead(DeadLetters::One(got[1].seq), &operator(), t(11)).unwrap();
    b.settle(&[delivered(got[2].seq, Operation::Add, 100)]).unwrap();
    put(b, R, &[ev("pending", C, Operation::Remove)]);
    assert_eq!(b.purge(t(50)).unwrap(), 2);
    let st = b.status(Some(R)).unwrap();
    assert_eq!((st.delivered, st.dropped, st.pending), (1, 0, 2));
    assert_eq!(b.purge(t(50)).unwrap(), 0);
    assert_eq!(b.purge(t(1_000_000)).unwrap(), 1, "unfinished events are never purged");
    assert_eq!(drain(b, R, 2_000_000), ["open", "pending"]);
    // After a purge, seq still grows: a new event never takes an old one's place.
    let next = put(b, R, &[ev("later", A, Operation::Add)]);
    assert!(next[0] > got[2].seq);
}

pub fn status_counts(h: &mut dyn Harness) {
    let b = h.backend();
    assert_eq!(b.status(None).unwrap(), Default::default());
    put(
        b,
        R,
        &[
            ev("a1", A, Operation::Add),
            ev("a2", A, Operation::Add),
            ev("b1", B, Operation::Add),
            ev("c1", C, Operation::Add),
        ],
    );
    put(b, R2, &[ev("x", A, Operation::Add)]);
    let got = claim(b, R, 0, 10);
    b.settle(&[delivered(got[0].seq, Operation::Add, 1)]).unwrap();
    b.dead_letter(got[1].seq, &rejection(), t(1)).unwrap();
    let st = b.status(Some(R)).unwrap();
    assert_eq!(
        (
            st.pending,
            st.in_flight,
            st.accepted,
            st.delivered,
            st.dead_lettered,
            st.dropped
        ),
        (1, 1, 0, 1, 1, 0)
    );
    assert_eq!((st.parked_customers, st.parked_events, st.barrier), (1, 0, None));
    let oldest = st.oldest_unfinished.expect("unfinished events exist");
    assert_eq!(
        oldest,
        t(0),
        "the reception time the caller passed in, not the backend's clock"
    );
    let all = b.status(None).unwrap();
    assert_eq!((all.pending, all.in_flight, all.delivered), (2, 1, 1));
    let a2 = claim(b, R, 2, 10);
    b.settle(&[delivered(a2[0].seq, Operation::Add, 2)]).unwrap();
    b.settle(&[delivered(got[2].seq, Operation::Add, 2)]).unwrap();
    b.drop_dead(DeadLetters::All, &operator(), t(3)).unwrap();
    assert_eq!(
        b.status(Some(R)).unwrap().oldest_unfinished,
        None,
        "everything in R finished"
    );
}

pub fn registers_are_isolated(h: &mut dyn Harness) {
    let b = h.backend();
    put(
        b,
        R,
        &[ev("r1", A, Operation::Add), ev("r1-next", A, Operation::Remove)],
    );
    put(b, R2, &[ev("r2", A, Operation::Add)]);
    let one = claim(b, R, 0, 10);
    assert_eq!(ids(&one), ["r1"]);
    assert!(one.iter().all(|e| e.register == R));
    let two = claim(b, R2, 0, 10);
    assert_eq!(
        ids(&two),
        ["r2"],
        "the same customer in another register is another queue"
    );
    b.dead_letter(two[0].seq, &rejection(), t(1)).unwrap();
    b.settle(&[delivered(one[0].seq, Operation::Add, 1)]).unwrap();
    assert_eq!(ids(&claim(b, R, 1, 10)), ["r1-next"], "parked in R2 does not park R");
    assert_eq!(b.ledger(R).unwrap().len(), 1);
    assert!(b.ledger(R2).unwrap().is_empty());
    assert_eq!(b.status(Some(R)).unwrap().parked_customers, 0);
    assert_eq!(b.status(Some(R2)).unwrap().parked_customers, 1);
}

pub fn correlation_id_is_stable_across_claims_and_recover(h: &mut dyn Harness) {
    let b = h.backend();
    put(b, R, &[ev("a1", A, Operation::Add), ev("b1", B, Operation::Add)]);
    let first = claim(b, R, 0, 10);
    assert_ne!(first[0].correlation_id, first[1].correlation_id);
    b.retry_later(first[0].seq, t(1), "timeout", t(0)).unwrap();
    b.recover(R, 1, t(LATER), Duration::zero()).unwrap();
    let again = claim(b, R, LATER, 10);
    assert_eq!(again.len(), 2);
    for e in &again {
        let was = first.iter().find(|f| f.seq == e.seq).unwrap();
        assert_eq!(e.correlation_id, was.correlation_id);
    }
}

/// `enqueue_and_claim` / `finish_claim`: a caller that sends its own event (`kfr add`, `kfr
/// remove`) gets it in flight only when it is its customer's head and may go now; while it holds
/// it nothing else of that customer is handed out; anything ahead (pending or in flight, or the
/// barrier for a remove) queues it instead; a claim taken back by `recover` is not the caller's
/// to record any more.
pub fn a_callers_own_event_goes_only_as_a_free_head_and_holds_its_customer(h: &mut dyn Harness) {
    own_event_free_head_then_queued(h);
    own_event_under_a_load_and_after_failures(h);
    own_event_reruns_and_restarts(h);
}

/// The claimer of a caller's own events in [`a_callers_own_event_goes_only_as_a_free_head_and_holds_its_customer`].
const CLI: &str = "cli:conformance";

/// The claim a caller (`kfr add`, `kfr remove`) takes on its own event.
fn cli_claimer() -> Claimer {
    Claimer {
        name: CLI.into(),
        epoch: None,
        ttl: chrono::Duration::seconds(60),
    }
}

/// A caller's own event, stored and claimed for it if it may go now.
fn own(b: &mut dyn Backend, id: &str, customer: &str, op: Operation) -> OwnEvent {
    b.enqueue_and_claim(R, &ev(id, customer, op), Uuid::new_v4(), &cli_claimer(), t(0))
        .unwrap()
}

/// Nothing ahead: in flight for the caller, its customer closed to claims, only the claimer
/// finishes it; something ahead (pending or in flight): queued, then sent in turn.
fn own_event_free_head_then_queued(h: &mut dyn Harness) {
    let b = h.backend();

    // Nothing ahead: in flight for the caller at once, and its customer is closed to claims.
    let OwnEvent::Claimed(mine) = own(b, "own-a", A, Operation::Add) else {
        panic!("a free head is claimed")
    };
    assert_eq!((mine.state, mine.customer_id.as_str()), (EventState::InFlight, A));
    assert_eq!(
        own(b, "own-a", A, Operation::Add),
        OwnEvent::Duplicate { seq: mine.seq },
        "stored once"
    );
    put(
        b,
        R,
        &[ev("later-a", A, Operation::Remove), ev("b1", B, Operation::Add)],
    );
    let b1 = claim(b, R, 0, 10);
    assert_eq!(ids(&b1), ["b1"], "nothing of A while the caller holds it");
    b.settle(&[delivered(b1[0].seq, Operation::Add, 0)]).unwrap();
    assert_eq!(
        b.finish_claim(
            mine.seq,
            "cli:someone-else",
            &ClaimEnd::Release { error: "x".into() },
            t(1)
        )
        .unwrap(),
        ClaimFinished::TakenOver {
            state: EventState::InFlight
        },
        "only the claimer finishes its claim"
    );
    let done = ClaimEnd::Delivered {
        delivery: Delivery::Added,
        echoed_correlation_id: Some(mine.correlation_id.to_string()),
    };
    assert_eq!(
        b.finish_claim(mine.seq, CLI, &done, t(1)).unwrap(),
        ClaimFinished::Recorded
    );
    let ledger = b.ledger(R).unwrap();
    assert_eq!(
        (
            ledger[0].customer_id.as_str(),
            ledger[0].state,
            ledger[0].correlation_id
        ),
        (A, LedgerState::Active, mine.correlation_id)
    );
    assert!(
        b.finish_claim(mine.seq, CLI, &done, t(1)).unwrap() != ClaimFinished::Recorded,
        "recorded once"
    );

    // Something ahead, pending (later-a) or in flight (handed to the dispatcher now): queued.
    let out = claim(b, R, 2, 10);
    assert_eq!(ids(&out), ["later-a"]);
    let OwnEvent::Queued { ahead, barrier, .. } = own(b, "own-a2", A, Operation::Add) else {
        panic!("queued behind the dispatcher's event in flight")
    };
    assert_eq!((ahead, barrier), (1, None));
    put(b, R, &[ev("c1", C, Operation::Remove)]);
    assert!(matches!(
        own(b, "own-c", C, Operation::Add),
        OwnEvent::Queued { ahead: 1, .. }
    ));
    b.settle(&[delivered(out[0].seq, Operation::Remove, 3)]).unwrap();
    assert_eq!(
        drain(b, R, 3),
        ["own-a2", "c1", "own-c"],
        "queued own events go in turn, through the dispatcher"
    );
}

/// Under a load's barrier an own remove waits and an own add goes; failed attempts keep the
/// head; a released claim counts no attempt; a dead letter parks the customer.
fn own_event_under_a_load_and_after_failures(h: &mut dyn Harness) {
    // The barrier holds an own remove with nothing ahead, not an own add.
    let job = start_load(h, R);
    let b = h.backend();
    let OwnEvent::Queued { ahead, barrier, .. } = own(b, "own-b-remove", B, Operation::Remove) else {
        panic!("the barrier holds a remove")
    };
    assert_eq!((ahead, barrier), (0, Some(job)));
    assert!(claim(b, R, 4, 10).is_empty(), "nor does the dispatcher send it");
    let OwnEvent::Claimed(free_add) = own(b, "own-c-add", C, Operation::Add) else {
        panic!("an add with nothing ahead goes during a load (D-3 step 3)")
    };

    // Failed attempts keep the head, as the dispatcher's do.
    b.finish_claim(
        free_add.seq,
        CLI,
        &ClaimEnd::RetryLater {
            not_before: t(20),
            error: "HTTP 503".into(),
        },
        t(4),
    )
    .unwrap();
    put(b, R, &[ev("c-after", C, Operation::Add)]);
    assert!(ids(&claim(b, R, 10, 10)).is_empty(), "C waits for its retry time");
    let again = claim(b, R, 20, 10);
    assert_eq!((ids(&again), again[0].attempts), (vec!["own-c-add"], 1));
    b.settle(&[delivered(again[0].seq, Operation::Add, 20)]).unwrap();
    end_load(h, job);
    let b = h.backend();
    assert_eq!(drain(b, R, 21), ["own-b-remove", "c-after"]);

    // Released (systemic): no attempt counted. Dead-lettered: the customer is parked.
    let OwnEvent::Claimed(x) = own(b, "own-a3", A, Operation::Remove) else {
        panic!()
    };
    b.finish_claim(
        x.seq,
        CLI,
        &ClaimEnd::Release {
            error: "KFR-002".into(),
        },
        t(22),
    )
    .unwrap();
    let back = claim(b, R, 22, 10);
    assert_eq!((ids(&back), back[0].attempts), (vec!["own-a3"], 0));
    b.settle(&[delivered(back[0].seq, Operation::Remove, 22)]).unwrap();
    let OwnEvent::Claimed(y) = own(b, "own-a4", A, Operation::Add) else {
        panic!()
    };
    b.finish_claim(y.seq, CLI, &ClaimEnd::DeadLetter(rejection()), t(23))
        .unwrap();
    assert_eq!(b.dead_letters(Some(R)).unwrap()[0].event.event_id, "own-a4");
    assert!(matches!(
        own(b, "own-a5", A, Operation::Add),
        OwnEvent::Queued { ahead: 1, .. }
    ));
}

/// A rerun sends the caller's earlier operation first; a restart takes back a claim that ran
/// out only after the in-doubt hold, and the claimer then records nothing.
fn own_event_reruns_and_restarts(h: &mut dyn Harness) {
    let cli = cli_claimer();
    let b = h.backend();
    // A rerun behind its own earlier operation sends that one first; not an agent's event, not
    // one still waiting for its retry time.
    b.retry_dead(DeadLetters::All, &operator(), t(0)).unwrap();
    let mut mine = ev("own-a6", A, Operation::Remove);
    mine.source = "kfr remove".into();
    assert!(matches!(
        b.enqueue_and_claim(R, &mine, Uuid::new_v4(), &cli, t(30)).unwrap(),
        OwnEvent::Queued { ahead: 2, .. }
    ));
    let sources = ["kfr add", "kfr remove"];
    assert_eq!(
        b.claim_head_of(R, A, &sources, &cli, t(30)).unwrap(),
        None,
        "own-a4 is the conformance source's"
    );
    for want in ["own-a4", "own-a5"] {
        let got = claim(b, R, 30, 10);
        assert_eq!(ids(&got), [want]);
        b.settle(&[delivered(got[0].seq, Operation::Add, 30)]).unwrap();
    }
    let head = b.claim_head_of(R, A, &sources, &cli, t(30)).unwrap().unwrap();
    assert_eq!((head.event_id.as_str(), head.state), ("own-a6", EventState::InFlight));
    assert!(claim(b, R, 30, 10).is_empty(), "held for the caller");
    let gone = ClaimEnd::Delivered {
        delivery: Delivery::NotFound,
        echoed_correlation_id: None,
    };
    assert_eq!(
        b.finish_claim(head.seq, CLI, &gone, t(30)).unwrap(),
        ClaimFinished::Recorded
    );

    // A sync agent's restart leaves a claim alone while it may still be on the wire, and takes
    // it back once it ran out; the claimer then records nothing.
    let OwnEvent::Claimed(z) = own(b, "own-b-add", B, Operation::Add) else {
        panic!()
    };
    let hold = Duration::seconds(30);
    assert_eq!(
        b.recover(R, 1, t(59), hold).unwrap().requeued,
        0,
        "the claim holds for its ttl"
    );
    assert!(claim(b, R, 59, 10).is_empty());
    assert_eq!(b.recover(R, 1, t(60), hold).unwrap().requeued, 1);
    // In doubt means hold: a request sent under the claim may still be carried out for `hold`
    // after it ran out, so nothing of the customer goes before then, not even the same request.
    assert!(
        claim(b, R, 89, 10).is_empty(),
        "held while its request may still be carried out"
    );
    let resent = claim(b, R, 90, 10);
    assert_eq!(ids(&resent), ["own-b-add"]);
    assert_eq!(resent[0].correlation_id, z.correlation_id, "the same request again");
    let done = ClaimEnd::Delivered {
        delivery: Delivery::AlreadyPresent,
        echoed_correlation_id: None,
    };
    assert_eq!(
        b.finish_claim(z.seq, CLI, &done, t(24)).unwrap(),
        ClaimFinished::TakenOver {
            state: EventState::InFlight
        }
    );
    b.settle(&[delivered(resent[0].seq, Operation::Add, 25)]).unwrap();
}

/// Jobs: creating a running job raises its register's barrier, confirming (every batch
/// confirmed) or abandoning lowers it; a load's batch writes stop once its job is abandoned.
pub fn jobs_raise_and_lower_the_barrier_and_an_abandoned_job_takes_no_writes(h: &mut dyn Harness) {
    let settings = serde_json::json!({"environment": "test", "kfr_base_url": "https://kfr.example:443/api", "org_number": "923609016"});
    let batch = |first| NewBatch {
        first_entry: first,
        entry_count: 1,
        bytes: 10,
        correlation_id: Uuid::new_v4(),
    };
    let job = NewJob {
        input_path: "in.csv".into(),
        content_hash: "ab".into(),
        settings: settings.to_string(),
        entries: 2,
        batches: vec![batch(0), batch(1)],
    };
    let b = h.backend();
    assert_eq!(b.barrier(R).unwrap(), None);
    let id = b.create_job(&job, t(0)).unwrap();
    assert_eq!(b.barrier(R).unwrap(), Some(id));
    assert_eq!(b.barrier(R2).unwrap(), None, "another register is not held");
    assert_eq!(b.unconfirmed_job().unwrap().map(|j| j.id), Some(id));
    for seq in [1, 2] {
        for st in [BatchStatus::Uploading, BatchStatus::Accepted] {
            b.update_batch(id, seq, &BatchChange::Status(st), t(1)).unwrap();
        }
    }
    b.update_batch(id, 1, &BatchChange::Status(BatchStatus::Confirmed), t(2))
        .unwrap();
    b.update_batch(id, 1, &BatchChange::ConfirmedBy("witness".into()), t(2))
        .unwrap();
    b.update_batch(id, 2, &BatchChange::Witness(Some(0)), t(2)).unwrap();
    b.update_batch(id, 2, &BatchChange::Resent, t(2)).unwrap();
    assert!(
        b.update_batch(id, 3, &BatchChange::Resent, t(2)).is_err(),
        "no such batch"
    );
    assert!(
        !b.confirm_job_if_complete(id, t(3)).unwrap(),
        "batch 2 is not confirmed"
    );
    assert_eq!(b.barrier(R).unwrap(), Some(id));
    b.update_batch(id, 2, &BatchChange::Status(BatchStatus::Confirmed), t(4))
        .unwrap();
    assert!(b.confirm_job_if_complete(id, t(4)).unwrap());
    assert_eq!(b.barrier(R).unwrap(), None, "confirmed: the barrier is down");
    let batches = b.batches(id).unwrap();
    assert_eq!(
        (
            batches[0].confirmed_by.as_deref(),
            batches[1].witness,
            batches[1].resends
        ),
        (Some("witness"), Some(0), 1)
    );
    assert_eq!(b.job(id).unwrap().unwrap().status, JobStatus::Confirmed);

    // A second job, abandoned under its load.
    let id2 = b.create_job(&job, t(5)).unwrap();
    assert_eq!(b.barrier(R).unwrap(), Some(id2));
    assert!(matches!(
        b.abandon_job(id2, HeldAtAbandon::Refuse, &operator(), t(6)).unwrap(),
        Abandonment::Abandoned { was_running: true, .. }
    ));
    assert_eq!(b.barrier(R).unwrap(), None, "abandoned: the barrier is down");
    assert!(
        b.update_batch(id2, 1, &BatchChange::Status(BatchStatus::Uploading), t(7))
            .is_err(),
        "the load under an abandoned job writes nothing more"
    );
    assert!(!b.confirm_job_if_complete(id2, t(7)).unwrap());
    assert_eq!(b.latest_job().unwrap().unwrap().status, JobStatus::Abandoned);
    assert_eq!(b.jobs().unwrap().len(), 2);
    assert!(matches!(
        b.abandon_job(id, HeldAtAbandon::Refuse, &operator(), t(8)).unwrap(),
        Abandonment::Confirmed
    ));
}

/// An upload whose answer never came: its events stay their customers' heads, `Accepted` with
/// no `accepted_at`, and nothing behind them goes until a probe settles or releases them.
pub fn batch_unknown_keeps_the_events_at_their_heads_until_probed(h: &mut dyn Harness) {
    let b = h.backend();
    put(b, R, &[ev("b1", A, Operation::Add), ev("a-next", A, Operation::Remove)]);
    let got = claim(b, R, 0, 10);
    let upload = Uuid::new_v4();
    b.begin_batch(&[got[0].seq], upload).unwrap();
    assert!(b.batch_unknown(Uuid::new_v4(), t(1)).is_err(), "an unknown batch");
    b.batch_unknown(upload, t(1)).unwrap();
    let unknown = b.accepted(R).unwrap();
    assert_eq!(ids(&unknown), ["b1"]);
    assert_eq!(
        (unknown[0].accepted_at, unknown[0].batch_correlation_id),
        (None, Some(upload))
    );
    assert!(
        claim(b, R, 2, 10).is_empty(),
        "nothing behind an upload of unknown fate"
    );
    b.settle(&[Settlement {
        seq: unknown[0].seq,
        delivery: Delivery::IngestedSeen,
        echoed_correlation_id: None,
        at: t(3),
    }])
    .unwrap();
    assert_eq!(ids(&claim(b, R, 4, 10)), ["a-next"]);
}

/// `unfinished_customers`: every customer with an event not yet finished, whatever its state.
pub fn unfinished_customers_are_those_with_a_head(h: &mut dyn Harness) {
    let b = h.backend();
    put(
        b,
        R,
        &[
            ev("a1", A, Operation::Add),
            ev("b1", B, Operation::Add),
            ev("c1", C, Operation::Add),
        ],
    );
    put(b, R2, &[ev("other", "customer-d", Operation::Add)]);
    let got = claim(b, R, 0, 10);
    b.settle(&[delivered(got[0].seq, Operation::Add, 1)]).unwrap();
    b.dead_letter(got[1].seq, &rejection(), t(1)).unwrap();
    let mut busy: Vec<String> = b.unfinished_customers(R).unwrap().into_iter().collect();
    busy.sort();
    assert_eq!(busy, [B, C], "A is done; B is parked, C in flight");
}

/// An event id names one event for good: sent again with the same content it is a duplicate;
/// reused for another operation, customer or start date the whole call is refused, naming the
/// event's index and the stored seq, and nothing of it is stored.
pub fn an_event_id_reused_for_another_event_is_refused_whole(h: &mut dyn Harness) {
    let b = h.backend();
    let first = put(b, R, &[ev("e1", A, Operation::Add)]);
    let same = b.enqueue(R, &[ev("e1", A, Operation::Add)], None, t(1)).unwrap();
    assert_eq!(same, [Enqueued::Duplicate { seq: first[0] }]);
    for other in [
        ev("e1", A, Operation::Remove),
        ev("e1", B, Operation::Add),
        NewEvent {
            start_date: NaiveDate::from_ymd_opt(2029, 1, 1),
            ..ev("e1", A, Operation::Add)
        },
    ] {
        let err = b
            .enqueue(R, &[ev("fresh", C, Operation::Add), other], None, t(2))
            .unwrap_err();
        assert!(
            matches!(err, crate::store::StoreError::EventIdConflict { index: 1, seq } if seq == first[0]),
            "{err:?}"
        );
    }
    assert_eq!(
        b.status(Some(R)).unwrap().pending,
        1,
        "nothing of a refused call is stored"
    );
}

/// The per-customer flood guard: with a limit, an event that would give its customer more
/// unfinished events than the limit fails the whole call, naming its index (counting what the
/// call itself stored before it); a duplicate adds nothing; a finished event frees a place;
/// other customers and calls without a limit are not affected; a cursor does not move.
pub fn the_flood_guard_refuses_a_call_that_would_put_a_customer_past_its_limit(h: &mut dyn Harness) {
    let b = h.backend();
    let max = Some(3);
    let first = b
        .enqueue(
            R,
            &[ev("a1", A, Operation::Add), ev("a2", A, Operation::Remove)],
            max,
            t(0),
        )
        .unwrap();
    assert_eq!(first.len(), 2);
    // Two more for A in one call: the second of them would be A's fourth.
    let err = b
        .enqueue(
            R,
            &[
                ev("b1", B, Operation::Add),
                ev("a3", A, Operation::Add),
                ev("a4", A, Operation::Remove),
            ],
            max,
            t(1),
        )
        .unwrap_err();
    assert!(matches!(err, StoreError::CustomerFlood { index: 2, max: 3 }), "{err:?}");
    assert_eq!(
        b.status(Some(R)).unwrap().pending,
        2,
        "nothing of a refused call is stored"
    );
    assert!(b.events_of(Some(R), Some(B)).unwrap().is_empty(), "not even B's event");
    // The third place is free; a duplicate of a stored event takes none.
    let third = b
        .enqueue(
            R,
            &[ev("a1", A, Operation::Add), ev("a3", A, Operation::Add)],
            max,
            t(2),
        )
        .unwrap();
    assert!(matches!(third[0], Enqueued::Duplicate { .. }), "{third:?}");
    assert!(matches!(third[1], Enqueued::Stored { .. }), "{third:?}");
    let err = b.enqueue(R, &[ev("a4", A, Operation::Remove)], max, t(3)).unwrap_err();
    assert!(matches!(err, StoreError::CustomerFlood { index: 0, max: 3 }), "{err:?}");
    // The same customer in another register is another queue.
    b.enqueue(R2, &[ev("r2-a1", A, Operation::Add)], max, t(3)).unwrap();
    // Without a limit (an operator's correction) the call is not guarded.
    b.enqueue(R, &[ev("a4", A, Operation::Remove)], None, t(3)).unwrap();
    assert_eq!(b.unfinished_count(R, A).unwrap(), 4);
    // Through a cursor: refused whole, the position stays.
    let err = b
        .enqueue_from_cursor(R, &[ev("a5", A, Operation::Add)], "core", "7", Some(4), t(4))
        .unwrap_err();
    assert!(matches!(err, StoreError::CustomerFlood { index: 0, max: 4 }), "{err:?}");
    assert_eq!(b.source_cursor("core").unwrap(), None);
    // A finished event frees its place.
    let head = claim(b, R, 5, 10);
    let a_head = head.iter().find(|e| e.customer_id == A).unwrap();
    b.settle(&[delivered(a_head.seq, a_head.op, 5)]).unwrap();
    b.enqueue_from_cursor(R, &[ev("a5", A, Operation::Add)], "core", "7", Some(4), t(6))
        .unwrap();
    assert_eq!(b.source_cursor("core").unwrap().as_deref(), Some("7"));
    assert_eq!(b.unfinished_count(R, A).unwrap(), 4);
}

/// Two handles storing events of one customer at once under a limit: the count and the insert
/// are one transaction, so exactly the limit is stored, never more.
pub fn concurrency_the_flood_guard_holds_for_two_handles_on_one_customer(h: &mut dyn Harness) {
    const MAX: u64 = 7;
    const EACH: usize = 20;
    let run = |mut b: Box<dyn Backend>, tag: &'static str| {
        std::thread::spawn(move || {
            let mut stored = 0;
            for i in 0..EACH {
                match b.enqueue(R, &[ev(&format!("{tag}-{i}"), A, Operation::Add)], Some(MAX), t(0)) {
                    Ok(_) => stored += 1,
                    Err(StoreError::CustomerFlood { .. }) => {}
                    Err(e) => panic!("{e:?}"),
                }
            }
            stored
        })
    };
    let (x, y) = (run(h.second(), "x"), run(h.second(), "y"));
    let stored = x.join().unwrap() + y.join().unwrap();
    assert_eq!(stored, MAX);
    assert_eq!(h.backend().unfinished_count(R, A).unwrap(), MAX);
}

/// A streamed enqueue is one call over all its chunks: committed whole when the chunks end,
/// nothing of it after an abort or a refused event in a later chunk (whose index counts over
/// the whole stream), duplicates counted, the flood guard over the whole stream.
pub fn a_streamed_enqueue_is_one_transaction_over_its_chunks(h: &mut dyn Harness) {
    let b = h.backend();
    let first = vec![ev("s1", A, Operation::Add), ev("s2", B, Operation::Add)];
    let second = vec![ev("s3", C, Operation::Add)];
    // Aborted after a chunk: nothing stored.
    let mut chunks = vec![Chunk::Events(first.clone()), Chunk::Abort].into_iter();
    assert_eq!(b.enqueue_stream(R, &mut chunks, None, t(0)).unwrap(), None);
    assert_eq!(b.status(Some(R)).unwrap().pending, 0);
    // An id reused in the second chunk: refused whole, the index counted from the first.
    put(b, R, &[ev("known", C, Operation::Add)]);
    let mut chunks = vec![
        Chunk::Events(first.clone()),
        Chunk::Events(vec![ev("s3", C, Operation::Add), ev("known", C, Operation::Remove)]),
    ]
    .into_iter();
    let err = b.enqueue_stream(R, &mut chunks, None, t(1)).unwrap_err();
    assert!(matches!(err, StoreError::EventIdConflict { index: 3, .. }), "{err:?}");
    assert_eq!(b.status(Some(R)).unwrap().pending, 1);
    // The flood guard counts over the chunks: A's third event is the stream's index 3.
    let mut chunks = vec![
        Chunk::Events(vec![ev("f1", A, Operation::Add), ev("f2", A, Operation::Remove)]),
        Chunk::Events(vec![ev("f3", B, Operation::Add), ev("f4", A, Operation::Add)]),
    ]
    .into_iter();
    let err = b.enqueue_stream(R, &mut chunks, Some(2), t(1)).unwrap_err();
    assert!(matches!(err, StoreError::CustomerFlood { index: 3, max: 2 }), "{err:?}");
    assert_eq!(b.status(Some(R)).unwrap().pending, 1);
    // Ended: committed whole, a duplicate counted as such.
    let mut chunks = vec![
        Chunk::Events(first),
        Chunk::Events(vec![ev("s4", A, Operation::Remove), ev("known", C, Operation::Add)]),
        Chunk::Events(second),
    ]
    .into_iter();
    let done = b.enqueue_stream(R, &mut chunks, Some(2), t(2)).unwrap().unwrap();
    assert_eq!(
        done,
        Streamed {
            stored_adds: 3,
            stored_removes: 1,
            duplicates: 1
        }
    );
    let order: Vec<String> = b
        .events_of(Some(R), None)
        .unwrap()
        .into_iter()
        .map(|e| e.event_id)
        .collect();
    assert_eq!(
        order,
        ["known", "s1", "s2", "s4", "s3"],
        "issue order is the stream's order"
    );
}

/// One load writer per store: a second handle is refused while the first holds it, and sees who
/// does without taking (`writer_holder`, what a look-only command uses); released, it is free.
pub fn concurrency_one_load_writer_and_who_holds_it_is_seen_without_taking_it(h: &mut dyn Harness) {
    let mut other = h.second();
    assert_eq!(other.writer_holder().unwrap(), None);
    assert_eq!(h.backend().take_writer("first load").unwrap(), None);
    let seen = other.writer_holder().unwrap().expect("the holder is seen");
    assert!(!seen.is_empty());
    assert!(
        other.take_writer("second load").unwrap().is_some(),
        "a second writer is refused"
    );
    assert!(other.writer_holder().unwrap().is_some(), "looking took nothing");
    h.backend().release_writer().unwrap();
    assert_eq!(other.writer_holder().unwrap(), None);
    assert_eq!(other.take_writer("second load").unwrap(), None);
    other.release_writer().unwrap();
}

/// A source that reads from somewhere with its own order stores its position with the events
/// read up to it, in one transaction: a failed call moves neither.
pub fn a_source_cursor_moves_with_the_events_it_read(h: &mut dyn Harness) {
    let b = h.backend();
    assert_eq!(b.source_cursor("core").unwrap(), None);
    b.enqueue_from_cursor(R, &[ev("c1", A, Operation::Add)], "core", "41", None, t(0))
        .unwrap();
    assert_eq!(b.source_cursor("core").unwrap().as_deref(), Some("41"));
    // A call that fails (an id reused for another event) stores neither its events nor its position.
    let err = b.enqueue_from_cursor(
        R,
        &[ev("c2", B, Operation::Add), ev("c1", A, Operation::Remove)],
        "core",
        "43",
        None,
        t(1),
    );
    assert!(err.is_err());
    assert_eq!(b.source_cursor("core").unwrap().as_deref(), Some("41"));
    assert_eq!(b.status(Some(R)).unwrap().pending, 1);
    assert_eq!(b.source_cursor("other").unwrap(), None, "cursors are per source");
}

/// `ledger_page` walks a register's ledger in customer order, a page at a time, and no further.
pub fn the_ledger_can_be_walked_in_pages(h: &mut dyn Harness) {
    let b = h.backend();
    let customers: Vec<String> = (0..7).map(|i| format!("customer-{i}")).collect();
    let evs: Vec<NewEvent> = customers
        .iter()
        .enumerate()
        .map(|(i, c)| ev(&format!("e{i}"), c, Operation::Add))
        .collect();
    put(b, R, &evs);
    put(b, R2, &[ev("other", "customer-9", Operation::Add)]);
    let got = claim(b, R, 0, 10);
    let done: Vec<Settlement> = got.iter().map(|e| delivered(e.seq, e.op, 1)).collect();
    b.settle(&done).unwrap();
    let mut walked = vec![];
    let mut after: Option<String> = None;
    loop {
        let page = b.ledger_page(R, after.as_deref(), 3).unwrap();
        assert!(page.len() <= 3);
        let Some(last) = page.last() else { break };
        after = Some(last.customer_id.clone());
        walked.extend(page.into_iter().map(|e| e.customer_id));
    }
    assert_eq!(
        walked, customers,
        "every customer once, in order, nothing of another register"
    );
}

/// A load sends what its barrier held through `claim_next_of`: only events of the given sources,
/// only heads, a remove only with the barrier down, one customer's events in turn.
pub fn a_load_claims_only_its_held_operations_in_turn(h: &mut dyn Harness) {
    let job = start_load(h, R);
    let held = |id: &str, customer: &str, op: Operation| NewEvent {
        source: format!("kfr {}", op.as_str()),
        ..ev(id, customer, op)
    };
    let load = Claimer {
        name: "load:conformance".into(),
        epoch: None,
        ttl: chrono::Duration::seconds(60),
    };
    let b = h.backend();
    put(
        b,
        R,
        &[
            ev("agent-b", B, Operation::Add),
            held("held-a-remove", A, Operation::Remove),
            held("held-a-add", A, Operation::Add),
        ],
    );
    assert_eq!(
        b.unfinished_of(R, &OWN_SOURCES).unwrap().len(),
        2,
        "the agent's event is not a held operation"
    );
    assert!(
        b.claim_next_of(R, &OWN_SOURCES, &load, t(0)).unwrap().is_none(),
        "barrier up"
    );
    end_load(h, job);
    let b = h.backend();
    let first = b.claim_next_of(R, &OWN_SOURCES, &load, t(1)).unwrap().unwrap();
    assert_eq!(
        (first.event_id.as_str(), first.claimer.as_deref()),
        ("held-a-remove", Some("load:conformance"))
    );
    assert!(
        b.claim_next_of(R, &OWN_SOURCES, &load, t(1)).unwrap().is_none(),
        "A is in flight"
    );
    let gone = ClaimEnd::Delivered {
        delivery: Delivery::Removed,
        echoed_correlation_id: None,
    };
    assert_eq!(
        b.finish_claim(first.seq, "load:conformance", &gone, t(2)).unwrap(),
        ClaimFinished::Recorded
    );
    let next = b.claim_next_of(R, &OWN_SOURCES, &load, t(2)).unwrap().unwrap();
    assert_eq!(next.event_id, "held-a-add");
    // Refused: dead-lettered like any event, visible to an operator, only A parked.
    b.finish_claim(next.seq, "load:conformance", &ClaimEnd::DeadLetter(rejection()), t(3))
        .unwrap();
    assert_eq!(b.dead_letters(Some(R)).unwrap()[0].event.event_id, "held-a-add");
    assert_eq!(ids(&claim(b, R, 4, 10)), ["agent-b"]);
}

/// The history: every attempt's outcome and every operator action, with who, kept after the
/// outbox purged the events.
pub fn history_outlives_the_outbox_and_names_who(h: &mut dyn Harness) {
    let b = h.backend();
    put(b, R, &[ev("a1", A, Operation::Add), ev("b1", B, Operation::Remove)]);
    let got = claim(b, R, 0, 10);
    b.retry_later(got[0].seq, t(1), "HTTP 503", t(0)).unwrap();
    b.dead_letter(got[1].seq, &rejection(), t(0)).unwrap();
    let again = claim(b, R, 1, 10);
    b.settle(&[delivered(again[0].seq, Operation::Add, 2)]).unwrap();
    let action = OperatorAction {
        actor: "ola".into(),
        reason: Some("customer asked".into()),
    };
    b.drop_dead(DeadLetters::All, &action, t(3)).unwrap();
    assert_eq!(b.purge(t(10)).unwrap(), 2, "both finished events purged");
    assert!(b.events_of(Some(R), Some(A)).unwrap().is_empty());

    let a = b.history(Some(A), None, None).unwrap();
    let got: Vec<(&str, Option<u16>, Option<&str>)> = a
        .iter()
        .map(|l| (l.outcome.as_str(), l.status, l.actor.as_deref()))
        .collect();
    assert_eq!(
        got,
        [
            ("retry_later", None, Some("sync:conformance")),
            ("delivered:added", Some(201), Some("sync:conformance"))
        ]
    );
    assert!(
        a.iter()
            .all(|l| l.event_id.as_deref() == Some("a1") && l.kind == HistoryKind::Attempt)
    );
    assert_eq!(a[0].correlation_id, Some(got_cid(&got_first(&a))));
    let bl = b.history(Some(B), None, None).unwrap();
    let kinds: Vec<(HistoryKind, &str, Option<&str>, Option<&str>)> = bl
        .iter()
        .map(|l| (l.kind, l.outcome.as_str(), l.code.as_deref(), l.actor.as_deref()))
        .collect();
    assert_eq!(
        kinds,
        [
            (
                HistoryKind::Attempt,
                "dead_lettered",
                Some("KFR-005"),
                Some("sync:conformance")
            ),
            (HistoryKind::Operator, "dlq_drop", None, Some("ola"))
        ]
    );
    assert_eq!(bl[1].detail.as_deref(), Some("customer asked"));
    assert_eq!(b.history(None, Some(t(2)), Some(t(3))).unwrap().len(), 1, "by time");
    assert_eq!(b.purge_history(t(3)).unwrap(), 3);
    assert_eq!(b.history(None, None, None).unwrap().len(), 1);
}

fn got_first(lines: &[HistoryRecord]) -> HistoryRecord {
    lines[0].clone()
}

fn got_cid(line: &HistoryRecord) -> Uuid {
    line.correlation_id.expect("an attempt carries its CorrelationID")
}

// ---- Concurrency: two handles on one store -----------------------------------------------------

/// One delivery lease per register: a second taker waits while the first holds it; the lease
/// moves when the holder gives it up or lets it run out, with a higher epoch; the deposed holder's
/// deliverer writes fail with `Fenced`, and it cannot renew.
pub fn concurrency_one_lease_holder_and_a_deposed_one_is_fenced(h: &mut dyn Harness) {
    let ttl = chrono::Duration::seconds(10);
    let mut second = h.second();
    let a = h.backend();
    let la = a
        .take_lease(R, "sync:a", t(0), ttl)
        .unwrap()
        .expect("a free lease is taken");
    assert!(
        second.take_lease(R, "sync:b", t(5), ttl).unwrap().is_none(),
        "held by a"
    );
    assert!(
        second.take_lease(R2, "sync:b", t(5), ttl).unwrap().is_some(),
        "another register is free"
    );
    let la = a.renew_lease(&la, t(8), ttl).unwrap();
    assert!(
        second.take_lease(R, "sync:b", t(15), ttl).unwrap().is_none(),
        "renewed until 18"
    );
    assert_eq!(second.lease_holder(R).unwrap().unwrap().holder, "sync:a");

    put(a, R, &[ev("a1", A, Operation::Add), ev("b1", B, Operation::Add)]);
    let fenced_claimer = Claimer {
        epoch: Some(la.epoch),
        ..agent()
    };
    let out = a.claim_ready(R, &fenced_claimer, t(16), 1).unwrap();
    assert_eq!(out.len(), 1);

    // a stops renewing (hung): after its lease ran out b takes over with a higher epoch.
    let lb = second
        .take_lease(R, "sync:b", t(19), ttl)
        .unwrap()
        .expect("a's lease ran out");
    assert!(lb.epoch > la.epoch);
    let a = h.backend();
    assert!(matches!(
        a.renew_lease(&la, t(20), ttl),
        Err(crate::store::StoreError::Fenced { .. })
    ));
    let r = a.settle(&[delivered(out[0].seq, Operation::Add, 20)]);
    assert!(matches!(r, Err(crate::store::StoreError::Fenced { .. })), "{r:?}");
    let r = a.claim_ready(R, &fenced_claimer, t(20), 10);
    assert!(matches!(r, Err(crate::store::StoreError::Fenced { .. })), "{r:?}");
    // b takes back a's claim only once it ran out (t(16) + 60 s), then delivers it.
    let b_claimer = Claimer {
        name: "sync:b".into(),
        epoch: Some(lb.epoch),
        ..agent()
    };
    assert_eq!(
        second.recover(R, lb.epoch, t(21), Duration::zero()).unwrap().requeued,
        0,
        "a's request may be on the wire"
    );
    let next = second.claim_ready(R, &b_claimer, t(21), 10).unwrap();
    assert_eq!(ids(&next), ["b1"], "not a1: it is still a's claim");
    assert_eq!(
        second.recover(R, lb.epoch, t(76), Duration::zero()).unwrap().requeued,
        1
    );
    let taken = second.claim_ready(R, &b_claimer, t(76), 10).unwrap();
    assert_eq!(ids(&taken), ["a1"]);
    second.release_lease(&lb).unwrap();
    assert!(
        h.backend().take_lease(R, "sync:c", t(77), ttl).unwrap().is_some(),
        "released: free at once"
    );
}

/// Two handles storing events of the same customers at once: every event stored once, each
/// customer with exactly one head, so claims still hand them out one at a time in issue order.
pub fn concurrency_same_customer_enqueues_from_two_handles_give_one_head(h: &mut dyn Harness) {
    const N: usize = 40;
    let second = h.second();
    let first = h.second();
    let run = |mut b: Box<dyn Backend>, tag: &'static str| {
        std::thread::spawn(move || {
            for i in 0..N {
                let op = if i % 2 == 0 { Operation::Add } else { Operation::Remove };
                b.enqueue(
                    R,
                    &[ev(&format!("{tag}-{i}"), &format!("customer-{}", i % 4), op)],
                    None,
                    t(0),
                )
                .unwrap();
            }
        })
    };
    let (x, y) = (run(first, "x"), run(second, "y"));
    x.join().unwrap();
    y.join().unwrap();
    let b = h.backend();
    assert_eq!(b.status(Some(R)).unwrap().pending, 2 * N as u64);
    let mut order: std::collections::HashMap<String, Vec<Seq>> = Default::default();
    loop {
        let got = claim(b, R, 0, 100);
        if got.is_empty() {
            break;
        }
        let mut seen = std::collections::HashSet::new();
        for e in &got {
            assert!(
                seen.insert(e.customer_id.clone()),
                "two heads of {} handed out",
                e.customer_id
            );
            order.entry(e.customer_id.clone()).or_default().push(e.seq);
        }
        let done: Vec<Settlement> = got.iter().map(|e| delivered(e.seq, e.op, 1)).collect();
        b.settle(&done).unwrap();
    }
    assert_eq!(order.values().map(Vec::len).sum::<usize>(), 2 * N);
    for seqs in order.values() {
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "issue order: {seqs:?}");
    }
}

/// Two handles claiming from one register at once never hold two events of one customer.
pub fn concurrency_claims_from_two_handles_never_give_two_of_one_customer(h: &mut dyn Harness) {
    const CUSTOMERS: usize = 6;
    const EACH: usize = 8;
    {
        let b = h.backend();
        let mut evs = vec![];
        for i in 0..EACH {
            for c in 0..CUSTOMERS {
                let op = if i % 2 == 0 { Operation::Add } else { Operation::Remove };
                evs.push(ev(&format!("e-{c}-{i}"), &format!("customer-{c}"), op));
            }
        }
        put(b, R, &evs);
    }
    let out: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>> = Default::default();
    let delivered_order: std::sync::Arc<std::sync::Mutex<Vec<(String, Seq)>>> = Default::default();
    let run = |mut b: Box<dyn Backend>, name: &'static str| {
        let (out, log) = (out.clone(), delivered_order.clone());
        std::thread::spawn(move || {
            let claimer = Claimer {
                name: name.into(),
                ..agent()
            };
            let mut idle = 0;
            while idle < 50 {
                let got = b.claim_ready(R, &claimer, t(0), 3).unwrap();
                if got.is_empty() {
                    idle += 1;
                    std::thread::yield_now();
                    continue;
                }
                idle = 0;
                for e in &got {
                    assert!(
                        out.lock().unwrap().insert(e.customer_id.clone()),
                        "{} twice in flight",
                        e.customer_id
                    );
                }
                for e in &got {
                    out.lock().unwrap().remove(&e.customer_id);
                    log.lock().unwrap().push((e.customer_id.clone(), e.seq));
                    b.settle(&[delivered(e.seq, e.op, 1)]).unwrap();
                }
            }
        })
    };
    let (x, y) = (run(h.second(), "sync:x"), run(h.second(), "sync:y"));
    x.join().unwrap();
    y.join().unwrap();
    let log = delivered_order.lock().unwrap();
    assert_eq!(log.len(), CUSTOMERS * EACH, "everything delivered once");
    let mut last: std::collections::HashMap<&str, Seq> = Default::default();
    for (c, seq) in log.iter() {
        if let Some(prev) = last.insert(c, *seq) {
            assert!(prev < *seq, "{c} out of order: {prev} then {seq}");
        }
    }
}

// ---- Operations: cancel, heartbeats, backup ----------------------------------------------------

/// `cancel`: only pending events; the customer's next event becomes its head, a cancelled event
/// behind the head is skipped when the head finishes, and a new event after a cancelled last one
/// waits behind the head still in flight (never a second head). One in flight is refused naming
/// its state, nothing changed; each cancel is an operator line with who and why.
pub fn cancel_takes_only_pending_events_and_the_queue_moves_on(h: &mut dyn Harness) {
    let b = h.backend();
    let action = OperatorAction {
        actor: "kari".into(),
        reason: Some("sent twice by mistake".into()),
    };
    // A: a pending head cancelled; its next event becomes the head and goes.
    let a = put(b, R, &[ev("a1", A, Operation::Add), ev("a2", A, Operation::Remove)]);
    let done = b.cancel(&ToCancel::Seq(a[0]), &action, t(1)).unwrap();
    assert_eq!(ids(&done.events), ["a1"]);
    assert_eq!(b.unfinished_count(R, A).unwrap(), 1);
    // B: the head in flight is refused; the two behind it are cancelled by customer.
    put(
        b,
        R,
        &[
            ev("b1", B, Operation::Add),
            ev("b2", B, Operation::Remove),
            ev("b3", B, Operation::Add),
        ],
    );
    let got = claim(b, R, 2, 10);
    assert_eq!(ids(&got), ["a2", "b1"], "a2 is A's head now");
    let b1 = got[1].seq;
    let err = b.cancel(&ToCancel::Seq(b1), &action, t(2)).unwrap_err();
    assert!(
        matches!(&err, StoreError::WrongState { seq, .. } if *seq == b1) && err.to_string().contains("in_flight"),
        "{err}"
    );
    let err = b.cancel(&ToCancel::EventId("b1".into()), &action, t(2)).unwrap_err();
    assert!(err.to_string().contains("in_flight"), "{err}");
    let done = b
        .cancel(
            &ToCancel::Customer {
                register: R.into(),
                customer_id: B.into(),
            },
            &action,
            t(3),
        )
        .unwrap();
    assert_eq!(ids(&done.events), ["b2", "b3"]);
    assert_eq!(done.left, [(b1, EventState::InFlight)]);
    // A new event of B waits behind the head in flight, then goes once it is delivered.
    put(b, R, &[ev("b4", B, Operation::Remove)]);
    assert!(claim(b, R, 4, 10).is_empty(), "b4 waits behind b1");
    b.settle(&[delivered(b1, Operation::Add, 4)]).unwrap();
    b.settle(&[delivered(got[0].seq, Operation::Remove, 4)]).unwrap();
    assert_eq!(drain(b, R, 5), ["b4"], "the cancelled b2 and b3 are skipped");
    // Nothing pending left: refused; an unknown event id is not found.
    let err = b.cancel(&ToCancel::Seq(a[1]), &action, t(6)).unwrap_err();
    assert!(err.to_string().contains("delivered"), "{err}");
    assert!(matches!(
        b.cancel(&ToCancel::EventId("nope".into()), &action, t(6)),
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        b.cancel(
            &ToCancel::Customer {
                register: R.into(),
                customer_id: C.into()
            },
            &action,
            t(6)
        ),
        Err(StoreError::NotFound(_))
    ));
    // Who and why, per cancelled event.
    let bl = b.history(Some(B), None, None).unwrap();
    let cancels: Vec<_> = bl.iter().filter(|l| l.outcome == "cancelled").collect();
    assert_eq!(cancels.len(), 2);
    assert!(cancels.iter().all(|l| l.kind == HistoryKind::Operator
        && l.actor.as_deref() == Some("kari")
        && l.detail.as_deref() == Some("sent twice by mistake")));
    let st = b.status(Some(R)).unwrap();
    assert_eq!((st.pending, st.in_flight, st.dropped), (0, 0, 3));
}

/// Heartbeats: one per agent, replaced by its next, newest first; the last delivery is the
/// history's latest delivered line of the register.
pub fn heartbeats_and_the_last_delivery(h: &mut dyn Harness) {
    let b = h.backend();
    let beat = |holder: &str, role: AgentRole, at: i64| Heartbeat {
        register: R.into(),
        holder: holder.into(),
        role,
        unready: if role == AgentRole::Standby {
            vec!["standby: sync:x delivers".into()]
        } else {
            vec![]
        },
        version: "0.1.0 (test)".into(),
        started_at: t(0),
        at: t(at),
    };
    assert!(b.heartbeats(None).unwrap().is_empty());
    b.record_heartbeat(&beat("sync:x", AgentRole::Leader, 1)).unwrap();
    b.record_heartbeat(&beat("sync:y", AgentRole::Standby, 2)).unwrap();
    b.record_heartbeat(&beat("sync:x", AgentRole::Leader, 3)).unwrap();
    let got = b.heartbeats(Some(R)).unwrap();
    assert_eq!(
        got,
        [
            beat("sync:x", AgentRole::Leader, 3),
            beat("sync:y", AgentRole::Standby, 2)
        ]
    );
    assert!(b.heartbeats(Some(R2)).unwrap().is_empty());
    // A week later, the stale ones are gone.
    b.record_heartbeat(&beat("sync:z", AgentRole::Leader, 8 * 86_400))
        .unwrap();
    assert_eq!(b.heartbeats(None).unwrap().len(), 1);

    assert_eq!(b.last_delivery(R).unwrap(), None);
    put(b, R, &[ev("a1", A, Operation::Add)]);
    let got = claim(b, R, 0, 1);
    b.settle(&[delivered(got[0].seq, Operation::Add, 7)]).unwrap();
    assert_eq!(b.last_delivery(R).unwrap(), Some(t(7)));
    assert_eq!(b.last_delivery(R2).unwrap(), None);
    assert!(b.schema_version().unwrap() > 0);
}

/// `backup_to`: a checked copy at the store's schema version, readable by its owner only, never
/// over an existing file, nothing left behind when refused. A server store refuses every copy
/// to a file, naming its own tooling, and writes nothing.
pub fn backup_is_a_private_checked_copy(h: &mut dyn Harness) {
    let copies = h.copies_to_a_file();
    let b = h.backend();
    put(b, R, &[ev("a1", A, Operation::Add)]);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("copy.db");
    if !copies {
        let err = b.backup_to(&dest).unwrap_err();
        assert!(matches!(err, StoreError::Unsupported { .. }), "{err:?}");
        let hint = crate::error::Hinted::hint(&err).unwrap_or_default();
        assert!(
            hint.contains("pg_dump") && hint.contains("docs/operations.md"),
            "{hint}"
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "nothing written");
        return;
    }
    let info = b.backup_to(&dest).unwrap();
    assert!(info.bytes > 0);
    assert_eq!(info.schema_version, b.schema_version().unwrap());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let err = b.backup_to(&dest).unwrap_err();
    assert!(err.to_string().contains("exists already"), "{err}");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(leftovers.len(), 1, "no partial file left behind");
}

/// One step of a random outbox history (what a store meets from agents and operators).
#[derive(Debug, Clone)]
enum Step {
    Enqueue { customer: u8, add: bool },
    Claim { limit: u8 },
    Settle(u8),
    Retry(u8),
    DeadLetter(u8),
    Release(u8),
    RetryDead,
    DropDead,
    Recover,
}

fn step() -> impl proptest::strategy::Strategy<Value = Step> {
    use proptest::prelude::*;
    prop_oneof![
        4 => (0u8..5, any::<bool>()).prop_map(|(customer, add)| Step::Enqueue { customer, add }),
        3 => (1u8..6).prop_map(|limit| Step::Claim { limit }),
        2 => any::<u8>().prop_map(Step::Settle),
        1 => any::<u8>().prop_map(Step::Retry),
        1 => any::<u8>().prop_map(Step::DeadLetter),
        1 => any::<u8>().prop_map(Step::Release),
        1 => Just(Step::RetryDead),
        1 => Just(Step::DropDead),
        1 => Just(Step::Recover),
    ]
}

/// Whatever happens to a store, a claim hands out only a customer's oldest unfinished event,
/// and never a second one of a customer while one is out; the counts then match what is left.
/// `cases` random histories of up to 60 steps, each on a fresh store from `make`.
pub fn random_histories_hand_out_only_heads_one_per_customer(make: &dyn Fn() -> Box<dyn Harness>, cases: u32) {
    use proptest::test_runner::{Config, TestRunner};
    let config = Config {
        cases,
        // The histories are generated afresh each run; a failure prints its minimal one.
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let result = runner.run(&proptest::collection::vec(step(), 1..60), |steps| {
        let mut h = make();
        random_history(h.backend(), steps)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

fn random_history(s: &mut dyn Backend, steps: Vec<Step>) -> Result<(), proptest::test_runner::TestCaseError> {
    use proptest::{prop_assert, prop_assert_eq};
    use std::collections::{HashMap, VecDeque};
    let mut open: HashMap<String, VecDeque<Seq>> = HashMap::new();
    let mut out: Vec<OutboxEvent> = vec![];
    let mut n = 0;
    let take = |out: &mut Vec<OutboxEvent>, i: u8| (!out.is_empty()).then(|| out.remove(i as usize % out.len()));
    for step in steps {
        match step {
            Step::Enqueue { customer, add } => {
                n += 1;
                let c = format!("customer-{customer}");
                let op = if add { Operation::Add } else { Operation::Remove };
                let r = s.enqueue(R, &[ev(&format!("e{n}"), &c, op)], None, t(0)).unwrap();
                let Enqueued::Stored { seq } = r[0] else {
                    panic!("{r:?}")
                };
                open.entry(c).or_default().push_back(seq);
            }
            Step::Claim { limit } => {
                let got = s.claim_ready(R, &agent(), t(10), limit as usize).unwrap();
                prop_assert!(got.len() <= limit as usize);
                for e in got {
                    prop_assert_eq!(open[&e.customer_id].front(), Some(&e.seq), "not the head");
                    prop_assert!(
                        out.iter().all(|o| o.customer_id != e.customer_id),
                        "two out for one customer"
                    );
                    out.push(e);
                }
            }
            Step::Settle(i) => {
                if let Some(e) = take(&mut out, i) {
                    s.settle(&[delivered(e.seq, e.op, 10)]).unwrap();
                    open.get_mut(&e.customer_id).unwrap().pop_front();
                }
            }
            Step::Retry(i) => {
                if let Some(e) = take(&mut out, i) {
                    s.retry_later(e.seq, t(5), "HTTP 503", t(0)).unwrap();
                }
            }
            Step::DeadLetter(i) => {
                if let Some(e) = take(&mut out, i) {
                    s.dead_letter(e.seq, &rejection(), t(10)).unwrap();
                }
            }
            Step::Release(i) => {
                if let Some(e) = take(&mut out, i) {
                    s.release(&[e.seq], t(0)).unwrap();
                }
            }
            Step::RetryDead => {
                s.retry_dead(DeadLetters::All, &operator(), t(10)).unwrap();
            }
            Step::DropDead => {
                let dead = s.dead_letters(Some(R)).unwrap();
                prop_assert_eq!(
                    s.drop_dead(DeadLetters::All, &operator(), t(10)).unwrap(),
                    dead.len() as u64
                );
                for d in dead {
                    prop_assert_eq!(
                        open.get_mut(&d.event.customer_id).unwrap().pop_front(),
                        Some(d.event.seq)
                    );
                }
            }
            Step::Recover => {
                s.recover(R, 1, t(LATER), Duration::zero()).unwrap();
                out.clear();
            }
        }
    }
    let st = s.status(Some(R)).unwrap();
    let unfinished: usize = open.values().map(VecDeque::len).sum();
    prop_assert_eq!((st.pending + st.in_flight + st.dead_lettered) as usize, unfinished);
    prop_assert_eq!(st.in_flight as usize, out.len());
    Ok(())
}
