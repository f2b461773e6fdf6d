//! Per-customer order across the delete barrier: while any operation on a customer is held behind
//! an unconfirmed initial load, every later operation on that customer waits behind it and all are
//! sent in the order the bank issued them (docs/specs/barrier.md).
//!
//! The first test is the reproduction from issue 8, run as written: a 5,000-line load against a
//! mock ingesting 1,000 a second, and `kfr remove X` then `kfr add X` while it runs. The others
//! stop the load with the test-only abort hook instead, so the barrier is up for as long as the
//! test needs without waiting for anything.

use crate::load::{Env, assert_ok, date, ids, setup, setup_with_rate};
use crate::util::{ORG, kfr, output_text};
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

/// A held operation that cannot be sent (KFR answers 500) stays at the head of its customer's
/// queue for a later attempt — not parked, not dead-lettered: a transient failure is nobody's
/// refusal — and what came after it on that customer waits behind it (exit 1, resumable).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_held_operation_keeps_later_ones_on_the_customer_behind_it() {
    let env = setup().await;
    // Customers of the load: its batches register them, the held removes end them.
    let people = ids(103, 40);
    let (a, b) = (&people[0], &people[2]);
    confirmed_with_held(&env, 103, &[["remove", a], ["add", a], ["remove", b]]).await;
    // KFR fails every request (500): every held operation fails. (A job is only resumed against
    // the KFR it belongs to, so the failure comes from that KFR.)
    env.mock.state().set_kfr_faults(kfr::mock::KfrFaults {
        error_rate: 1.0,
        ..kfr::mock::KfrFaults::NONE
    });
    let rate = crate::load::RATE.to_string();
    let args = ["load", "c.csv", "--state", "s.db", "--resume", "--ingest-rate", &rate];
    // A 500 leaves a request in doubt: its customer waits `sync.in_doubt_secs` (1 s here).
    let out = env.run(&args, &[("KFR_SYNC_IN_DOUBT_SECS", "1")]).await;
    let (stdout, stderr) = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stderr.contains("could not be sent"), "{stderr}");
    assert!(stderr.contains("hint: "), "{stderr}");
    assert!(env.ended().is_empty());
    env.mock.state().set_kfr_faults(kfr::mock::KfrFaults::NONE);
    // All three still wait, in order; none is a dead letter.
    assert!(dead_letters(&env).await.is_empty());
    let out = env.run(&["outbox", "status", "--state", "s.db", "--json"], &[]).await;
    let status: serde_json::Value = serde_json::from_str(&assert_ok(&out).0).unwrap();
    assert_eq!(status["status"]["pending"], 3, "{status}");

    // Once the hold is over, a resume sends all three, in order.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let out = env.load("c.csv", "s.db", &["--resume"], &[]).await;
    let (stdout, stderr) = assert_ok(&out);
    assert_eq!(stdout.matches("held operation sent").count(), 3, "{stdout}{stderr}");
    assert!(is_active(&env, a).await, "{:?}", periods(&env, a).await);
    assert!(!is_active(&env, b).await);
}

/// A load whose job is confirmed and whose held operations are left for the next run: the
/// batches go in, the run stops before the held operations (test-only abort hook).
async fn confirmed_with_held(env: &Env, seed: u32, held: &[[&str; 2]]) {
    let ids = ids(seed, 40);
    env.write("c.csv", &ids.iter().map(|id| format!("{id}\n")).collect::<String>());
    let out = env
        .load("c.csv", "s.db", &[], &[("KFR_TEST_ABORT_AT", "planned")])
        .await;
    assert_ne!(out.status.code(), Some(0));
    for args in held {
        assert_ok(&env.run(&[args[0], args[1], "--state", "s.db"], &[]).await);
    }
    let out = env
        .load("c.csv", "s.db", &["--resume"], &[("KFR_TEST_ABORT_AT", "deletes")])
        .await;
    assert_ne!(out.status.code(), Some(0), "{}", output_text(&out).1);
}

/// `kfr dlq list --json`, one value per dead letter.
async fn dead_letters(env: &Env) -> Vec<serde_json::Value> {
    let out = env.run(&["dlq", "list", "--state", "s.db", "--json"], &[]).await;
    assert_ok(&out)
        .0
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Issue 18: a held remove KFR refuses for its content is dead-lettered like any event — shown
/// by `kfr dlq list` — and parks only its customer; the others go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_remove_refused_by_kfr_is_a_dead_letter_and_parks_only_its_customer() {
    let env = setup().await;
    let people = ids(106, 40);
    let (a, b) = (&people[0], &people[1]);
    confirmed_with_held(&env, 106, &[["remove", a], ["remove", b]]).await;
    env.mock.state().set_reject_customers([a.clone()]);
    let out = env.load("c.csv", "s.db", &["--resume"], &[]).await;
    let (stdout, stderr) = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stderr.contains("dead-lettered"), "{stderr}");
    let dead = dead_letters(&env).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["operation"], "remove");
    assert_eq!(dead[0]["rejection"]["code"], "KFR-005", "{dead:?}");
    assert!(!dead[0].to_string().contains(a.as_str()), "masked: {dead:?}");
    // Only a is parked: a later add of a waits behind its dead letter, one of b goes out.
    let (queued, _) = assert_ok(&env.run(&["add", a, "--state", "s.db"], &[]).await);
    assert!(queued.starts_with("queued: "), "{queued}");
    let (added, _) = assert_ok(&env.run(&["add", b, "--state", "s.db"], &[]).await);
    assert!(added.starts_with("added: "), "{added}");
    env.mock.state().set_reject_customers([]);
    assert!(is_active(&env, b).await);
}

/// Issue 18: a refused token while the load sends its held operations is the institution's
/// problem, not the operations': the sending stops at once, nothing is dead-lettered and no
/// attempt is counted; once the token works, a resume sends them all, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_stops_the_held_operations_without_parking_any() {
    let env = setup().await;
    let people = ids(108, 40);
    let (a, b) = (&people[0], &people[1]);
    confirmed_with_held(&env, 108, &[["remove", a], ["remove", b], ["add", a]]).await;
    env.mock.state().set_token_refuse(true);
    let before = env.mock.state().snapshot().kfr.requests_total;
    let out = env.load("c.csv", "s.db", &["--resume"], &[]).await;
    let (stdout, stderr) = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert_eq!(
        env.mock.state().snapshot().kfr.requests_total,
        before,
        "no request reached KFR without a token"
    );
    assert!(dead_letters(&env).await.is_empty(), "nothing parked");
    let out = env.run(&["outbox", "status", "--state", "s.db", "--json"], &[]).await;
    let status: serde_json::Value = serde_json::from_str(&assert_ok(&out).0).unwrap();
    assert_eq!(status["status"]["pending"], 3, "{status}");
    env.mock.state().set_token_refuse(false);
    let out = env.load("c.csv", "s.db", &["--resume"], &[]).await;
    let (stdout, stderr) = assert_ok(&out);
    assert_eq!(stdout.matches("held operation sent").count(), 3, "{stdout}{stderr}");
    assert!(is_active(&env, a).await);
    assert!(!is_active(&env, b).await);
}

// ---- Issue 9 item 10: one state store per installation ------------------------------------

/// `kfr --config kfr.toml <args>` run in `cwd` with the installation's state home `home`.
async fn run_in(
    env: &Env,
    cwd: &std::path::Path,
    home: &std::path::Path,
    args: &[&str],
    vars: &[(&str, &str)],
) -> std::process::Output {
    let (cwd, home, config) = (cwd.to_owned(), home.to_owned(), env.dir.join("kfr.toml"));
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    tokio::task::spawn_blocking(move || {
        let mut c = kfr(&cwd);
        c.env(kfr::env_vars::KFR_STATE_HOME, &home)
            .arg("--config")
            .arg(config)
            .args(&args);
        for (k, v) in vars {
            c.env(k, v);
        }
        c.output().unwrap()
    })
    .await
    .unwrap()
}

/// A load started without `--state` keeps its job in the installation's store (in the state
/// home, not the working directory), so a `kfr remove` from any other directory, also without
/// `--state`, finds the barrier there and is held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remove_from_another_directory_without_state_is_held_by_the_installation_store() {
    let env = setup().await;
    let ids = ids(104, 80);
    env.write("c.csv", &ids.iter().map(|i| format!("{i}\n")).collect::<String>());
    let home = tempfile::tempdir().unwrap();
    let rate = crate::load::RATE.to_string();
    let load = ["load", "c.csv", "--ingest-rate", &rate, "--max-batch-bytes", "1024"];
    let out = run_in(
        &env,
        &env.dir,
        home.path(),
        &load,
        &[("KFR_TEST_ABORT_AT", "accepted:2")],
    )
    .await;
    assert_ne!(out.status.code(), Some(0));
    assert!(
        !env.dir.join("kfr-state.db").exists(),
        "no store in the working directory"
    );
    let store = home.path().join("kfr-state.db");
    assert!(store.exists(), "the store is in the state home");

    let elsewhere = tempfile::tempdir().unwrap();
    let out = run_in(&env, elsewhere.path(), home.path(), &["remove", &ids[0]], &[]).await;
    let (stdout, _) = assert_ok(&out);
    assert!(stdout.starts_with("held: "), "{stdout}");
    assert!(
        stdout.contains(&store.display().to_string()),
        "names the store: {stdout}"
    );
    assert!(env.ended().is_empty());

    let out = run_in(
        &env,
        elsewhere.path(),
        home.path(),
        &["load", "--resume", "--ingest-rate", &rate],
        &[],
    )
    .await;
    // The job names its file as given (c.csv, relative): resumed from the load's directory.
    assert_ne!(
        out.status.code(),
        Some(0),
        "the file is relative to the load's directory"
    );
    let out = run_in(
        &env,
        &env.dir,
        home.path(),
        &["load", "--resume", "--ingest-rate", &rate],
        &[],
    )
    .await;
    let (stdout, _) = assert_ok(&out);
    assert!(stdout.contains("held operation sent: remove"), "{stdout}");
    assert_eq!(env.ended(), vec![ids[0].clone()]);
}

/// The machine-wide list of running loads is gone: a file planted where it used to be (pointing
/// at a store with a running job) neither holds a delete nor is read at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planted_entry_in_the_old_list_of_running_loads_has_no_effect() {
    let env = setup().await;
    let ids = ids(105, 80);
    env.write("c.csv", &ids.iter().map(|i| format!("{i}\n")).collect::<String>());
    let out = env
        .load("c.csv", "other.db", &[], &[("KFR_TEST_ABORT_AT", "accepted:2")])
        .await;
    assert_ne!(out.status.code(), Some(0));
    let home = tempfile::tempdir().unwrap();
    let list = home.path().join("active-loads");
    std::fs::create_dir_all(&list).unwrap();
    let entry = serde_json::json!({
        "state": std::fs::canonicalize(env.dir.join("other.db")).unwrap(),
        "org_number": ORG, "kfr_base_url": env.mock.kfr_base_url(), "job": 1,
        "announced_at": "2025-01-01T00:00:00Z",
    });
    std::fs::write(list.join("planted.json"), entry.to_string()).unwrap();

    let out = run_in(&env, &env.dir, home.path(), &["remove", &ids[0]], &[]).await;
    let (stdout, _) = assert_ok(&out);
    assert!(stdout.starts_with("removed: "), "sent, not swallowed: {stdout}");
    assert_eq!(env.ended(), vec![ids[0].clone()]);
    let held = env.run(&["load", "status", "--state", "other.db", "--json"], &[]).await;
    let v: serde_json::Value = serde_json::from_str(&assert_ok(&held).0).unwrap();
    assert_eq!(v["held_operations"]["remove"], 0, "{v}");
}

/// No `state` and no state home (no KFR_STATE_HOME, XDG_STATE_HOME or HOME): a clear error that
/// names the variables, never a store in the working directory and never a delete sent past a
/// barrier it could not see.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_state_home_is_an_error_naming_the_variables() {
    let env = setup().await;
    let ids = ids(106, 2);
    for args in [vec!["remove", ids[0].as_str()], vec!["load", "status"]] {
        let (dir, argv) = (env.dir.clone(), args.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let out = tokio::task::spawn_blocking(move || {
            kfr(&dir)
                .env_remove(kfr::env_vars::KFR_STATE_HOME)
                .env_remove(kfr::env_vars::XDG_STATE_HOME)
                .env_remove("HOME")
                .arg("--config")
                .arg(dir.join("kfr.toml"))
                .args(&argv)
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        let (stdout, stderr) = output_text(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stdout}{stderr}");
        for want in ["KFR_STATE_HOME", "XDG_STATE_HOME", "HOME", "`state`", "hint: "] {
            assert!(stderr.contains(want), "{args:?} lacks {want}: {stderr}");
        }
    }
    assert!(env.ended().is_empty(), "nothing was sent");
    assert!(!env.dir.join("kfr-state.db").exists());
}

/// The state home and the store in it are private whatever the umask: directories 0700, the
/// store 0600 (it holds identifiers in full).
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_installation_store_is_private_under_umask_000() {
    use std::os::unix::fs::PermissionsExt as _;
    let env = setup().await;
    let ids = ids(107, 10);
    env.write("c.csv", &ids.iter().map(|i| format!("{i}\n")).collect::<String>());
    let root = tempfile::tempdir().unwrap();
    let home = root.path().join("state/kfr");
    let (dir, h) = (env.dir.clone(), home.clone());
    let out = tokio::task::spawn_blocking(move || {
        let mut c = std::process::Command::new("sh");
        c.arg("-c").arg("umask 000 && exec \"$0\" \"$@\"");
        c.arg(assert_cmd::cargo::cargo_bin("kfr"));
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("KFR_")) {
            c.env_remove(k);
        }
        c.current_dir(&dir)
            .env("NO_COLOR", "1")
            .env(kfr::env_vars::KFR_STATE_HOME, &h)
            .args(["--config", "kfr.toml", "load", "c.csv", "--ingest-rate", "200000"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_ok(&out);
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&home), 0o700, "state home");
    assert_eq!(mode(home.parent().unwrap()), 0o700, "created parent");
    assert_eq!(mode(&home.join("kfr-state.db")), 0o600, "store");
}

/// Issue 20: held operations that failed after the job was confirmed are sent again without the
/// export (`kfr load retry-held JOB`), in issue order, by the same rules as the load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_operations_are_retried_without_the_export() {
    let env = setup().await;
    let people = ids(148, 40);
    let (a, b) = (&people[0], &people[2]);
    confirmed_with_held(&env, 148, &[["remove", a], ["add", a], ["remove", b]]).await;
    env.mock.state().set_kfr_faults(kfr::mock::KfrFaults {
        error_rate: 1.0,
        ..kfr::mock::KfrFaults::NONE
    });
    // A 500 leaves each request in doubt: its customer waits `sync.in_doubt_secs` (1 s here)
    // before the next attempt.
    let in_doubt = [("KFR_SYNC_IN_DOUBT_SECS", "1")];
    let out = env.load("c.csv", "s.db", &["--resume"], &in_doubt).await;
    let (stdout, stderr) = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stderr.contains("retry-held"), "the hint names the command: {stderr}");
    // The export is gone (archived, moved): the held operations do not depend on it.
    std::fs::remove_file(env.dir.join("c.csv")).unwrap();
    // While KFR still fails: exit 1, all still waiting, nothing parked.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let out = env
        .run(&["load", "retry-held", "1", "--state", "s.db"], &in_doubt)
        .await;
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out).1);
    env.mock.state().set_kfr_faults(kfr::mock::KfrFaults::NONE);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let out = env
        .run(&["load", "retry-held", "1", "--state", "s.db"], &in_doubt)
        .await;
    let (stdout, stderr) = assert_ok(&out);
    assert!(
        stdout.contains("3 held operation(s) sent, 0 still waiting"),
        "{stdout}{stderr}"
    );
    assert!(!stdout.contains(a.as_str()) && !stderr.contains(a.as_str()), "masked");
    assert!(
        is_active(&env, a).await,
        "remove then add: {:?}",
        periods(&env, a).await
    );
    assert!(!is_active(&env, b).await);
    // A job still running is refused (its barrier is up), as is an unknown one.
    let out = env.run(&["load", "retry-held", "9", "--state", "s.db"], &[]).await;
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out).1);
}
