//! Per-customer order across the delete barrier: while any operation on a customer is held behind
//! an unconfirmed initial load, every later operation on that customer waits behind it and all are
//! sent in the order the bank issued them (docs/specs/barrier.md).
//!
//! The first test is the reproduction from issue 8, run as written: a 5,000-line load against a
//! mock ingesting 1,000 a second, and `kfr remove X` then `kfr add X` while it runs. The others
//! stop the load with the test-only abort hook instead, so the barrier is up for as long as the
//! test needs without waiting for anything.

use crate::load::{Env, assert_ok, date, ids, setup, setup_with_rate};
use crate::util::{ORG, output_text};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `GET /_mock/relationships` rows of our institution for one customer, oldest period first.
async fn periods(env: &Env, customer: &str) -> Vec<serde_json::Value> {
    let rows: Vec<serde_json::Value> = reqwest::get(format!("{}/_mock/relationships", env.mock.base_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    rows.into_iter()
        .filter(|r| r["organization_id"] == ORG && r["customer_id"] == customer)
        .collect()
}

/// Whether the customer's latest period in the mock's register is still open.
async fn is_active(env: &Env, customer: &str) -> bool {
    periods(env, customer).await.iter().any(|r| r["end_date"].is_null())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_then_add_during_a_running_load_ends_with_the_customer_active() {
    let env = Arc::new(setup_with_rate(1_000).await);
    let ids = ids(100, 5_000);
    let text: String = ids
        .iter()
        .enumerate()
        .map(|(i, id)| format!("{id};{}\n", date(i)))
        .collect();
    env.write("big.csv", &text);
    let x = ids[0].clone();

    let e = env.clone();
    let load = tokio::spawn(async move {
        e.run(&["load", "big.csv", "--state", "s.db", "--ingest-rate", "1000"], &[])
            .await
    });
    // "During it": once KFR has accepted the batch it is ingesting for about five seconds.
    let since = Instant::now();
    while env.batches_accepted() == 0 {
        assert!(
            since.elapsed() < Duration::from_secs(60),
            "the load never uploaded its batch"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let out = env.run(&["remove", &x, "--state", "s.db"], &[]).await;
    let (stdout, _) = assert_ok(&out);
    assert!(stdout.starts_with("held: "), "the barrier is up: {stdout}");
    let out = env.run(&["add", &x, "--state", "s.db"], &[]).await;
    let (added, _) = assert_ok(&out);

    let out = load.await.unwrap();
    let (stdout, stderr) = assert_ok(&out);
    assert!(stdout.contains("complete: 5,000 relationships"), "{stdout}{stderr}");
    assert!(
        is_active(&env, &x).await,
        "the bank's last word was add: {:?}\nadd said: {added}",
        periods(&env, &x).await
    );
    assert!(
        added.starts_with("queued: ") && added.contains("behind"),
        "the add says it waits behind the held remove: {added}"
    );
    assert!(!added.contains(x.as_str()), "person ID not printed: {added}");
    // The remove did reach KFR first: the period the load registered was ended, then a new one
    // began.
    assert_eq!(periods(&env, &x).await.len(), 2, "{:?}", periods(&env, &x).await);
}

/// Sequences on several customers while the load is stopped with its job unconfirmed; the resume
/// lifts the barrier and sends what waited, per customer in issue order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_later_operation_on_a_held_customer_is_sent_in_issue_order() {
    let env = setup().await;
    let ids = ids(101, 80);
    let text: String = ids
        .iter()
        .enumerate()
        .map(|(i, id)| format!("{id};{}\n", date(i)))
        .collect();
    env.write("c.csv", &text);
    let out = env
        .load("c.csv", "s.db", &[], &[("KFR_TEST_ABORT_AT", "accepted:2")])
        .await;
    assert_ne!(out.status.code(), Some(0));
    let (a, b, c) = (&ids[0], &ids[2], &ids[4]);

    // a: remove, add, remove → ends removed. c: remove, add → ends active.
    for (args, want) in [
        (["remove", a.as_str()], "held: "),
        (["add", a], "queued: "),
        (["remove", a], "queued: "),
        (["remove", c], "held: "),
        (["add", c], "queued: "),
    ] {
        let out = env.run(&[args[0], args[1], "--state", "s.db"], &[]).await;
        let (stdout, _) = assert_ok(&out);
        assert!(stdout.starts_with(want), "{args:?}: {stdout}");
    }
    // b has nothing held: an add goes in parallel with the load (onboarding D-3 step 3).
    let out = env.run(&["add", b, "--state", "s.db", "--json"], &[]).await;
    let (stdout, _) = assert_ok(&out);
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_ne!(v["outcome"], "held", "{v}");
    // An add queued behind a held operation says so in JSON too.
    let out = env.run(&["add", c, "--state", "s.db", "--json"], &[]).await;
    let (stdout, _) = assert_ok(&out);
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["outcome"], "held", "{v}");
    assert_eq!(v["behind"], 2, "two operations on c are ahead of it: {v}");
    assert!(env.ended().is_empty(), "nothing is sent while the barrier is up");

    let out = env
        .load("c.csv", "s.db", &["--resume", "--report", "r.json"], &[])
        .await;
    let (stdout, stderr) = assert_ok(&out);
    assert_eq!(stdout.matches("held operation sent").count(), 6, "{stdout}{stderr}");
    assert!(
        !is_active(&env, a).await,
        "a: last word remove: {:?}",
        periods(&env, a).await
    );
    assert!(
        is_active(&env, c).await,
        "c: last word add: {:?}",
        periods(&env, c).await
    );
    assert!(is_active(&env, b).await);
    // The report lists them in the order they were issued.
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(env.dir.join("r.json")).unwrap()).unwrap();
    let sent: Vec<&str> = report["held_operations_sent"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["operation"].as_str().unwrap())
        .collect();
    assert_eq!(sent, ["remove", "add", "remove", "remove", "add", "add"], "{report}");

    // The barrier is down and nothing is queued: both go straight to KFR.
    let out = env.run(&["add", a, "--state", "s.db"], &[]).await;
    assert!(assert_ok(&out).0.starts_with("added: "));
    let out = env.run(&["remove", c, "--state", "s.db"], &[]).await;
    assert!(assert_ok(&out).0.starts_with("removed: "));
}

/// A held operation that cannot be sent stays at the head of its customer's queue, and what came
/// after it on that customer keeps waiting (exit 1, resumable), even once no load is running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_held_operation_keeps_later_ones_on_the_customer_behind_it() {
    let env = setup().await;
    let ids = ids(102, 40);
    let text: String = ids.iter().map(|id| format!("{id}\n")).collect();
    env.write("c.csv", &text);
    let out = env
        .load("c.csv", "s.db", &[], &[("KFR_TEST_ABORT_AT", "planned")])
        .await;
    assert_ne!(out.status.code(), Some(0));
    let (a, b) = (&ids[0], &ids[2]);
    for args in [["remove", a.as_str()], ["add", a], ["remove", b]] {
        assert_ok(&env.run(&[args[0], args[1], "--state", "s.db"], &[]).await);
    }
    // The batches go in and the job is confirmed; the run stops before the held operations.
    let out = env
        .load("c.csv", "s.db", &["--resume"], &[("KFR_TEST_ABORT_AT", "deletes")])
        .await;
    assert_ne!(out.status.code(), Some(0), "{}", output_text(&out).1);
    // KFR fails every request (500): every held operation fails. (A job is only resumed against
    // the KFR it belongs to, so the failure comes from that KFR.)
    env.mock.state().set_kfr_faults(kfr::mock::KfrFaults {
        error_rate: 1.0,
        ..kfr::mock::KfrFaults::NONE
    });
    let rate = crate::load::RATE.to_string();
    let args = ["load", "c.csv", "--state", "s.db", "--resume", "--ingest-rate", &rate];
    let out = env.run(&args, &[]).await;
    let (stdout, stderr) = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stderr.contains("could not be sent"), "{stderr}");
    assert!(stderr.contains("hint: "), "{stderr}");
    assert!(env.ended().is_empty());
    env.mock.state().set_kfr_faults(kfr::mock::KfrFaults::NONE);
    // While they wait, a later add on a is still queued behind them, though no load is running.
    let out = env.run(&["add", a, "--state", "s.db"], &[]).await;
    assert!(assert_ok(&out).0.starts_with("queued: "));

    let out = env.load("c.csv", "s.db", &["--resume"], &[]).await;
    let (stdout, stderr) = assert_ok(&out);
    assert_eq!(stdout.matches("held operation sent").count(), 4, "{stdout}{stderr}");
    assert!(is_active(&env, a).await, "{:?}", periods(&env, a).await);
    assert!(!is_active(&env, b).await);
}
