//! Issue 19's intake and operator-output findings, end to end with the built binary and the
//! bundled mock: spool files with the same bytes, event ids masked in `kfr dlq list` and
//! `kfr enqueue`, the operations endpoints during the drain, SIGTERM with a producer that keeps
//! stdin open, and `kfr dlq drop|retry` of a number that is not a dead letter.

use crate::load::{Env, assert_ok, setup};
use crate::sync_cli::{Agent, active, run, status, until_outbox_empty};
use crate::util::{output_text, tenor_persons};
use std::time::{Duration, Instant};

/// Waits (bounded) until `cond` holds; `what` names it in the failure.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A spool source `core` on `<env>/in` in the configuration; the directory.
fn with_spool(env: &Env) -> std::path::PathBuf {
    let spool = env.dir.join("in");
    std::fs::create_dir(&spool).unwrap();
    let config = env.dir.join("kfr.toml");
    let mut toml = std::fs::read_to_string(&config).unwrap();
    toml.push_str("\n[[sync.sources]]\nkind = \"spool\"\ndir = \"in\"\nname = \"core\"\n");
    std::fs::write(&config, toml).unwrap();
    spool
}

/// The acceptance of issue 19: `add,X`, `remove,X`, `add,X` as three one-line files (the same
/// name each time, as a core system that numbers nothing would write them), moved in one after
/// another. The third used to be taken as a duplicate of the first and X ended removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_spool_files_add_remove_add_leave_the_customer_active() {
    let env = setup().await;
    let spool = with_spool(&env);
    let agent = Agent::spawn(&env, &[]);
    let x = tenor_persons(91, 1).remove(0);
    let taken = |n: usize| {
        let done = spool.join("done");
        move || std::fs::read_dir(&done).unwrap().count() == n
    };
    for (n, op) in ["add", "remove", "add"].into_iter().enumerate() {
        // Written under a dotfile name, then renamed in: the documented way.
        let part = spool.join(".x.csv.part");
        std::fs::write(&part, format!("{op},{x}\n")).unwrap();
        std::fs::rename(&part, spool.join("x.csv")).unwrap();
        until(&format!("file {} to be taken", n + 1), taken(n + 1)).await;
    }
    until_outbox_empty(&env).await;
    let s = status(&env);
    assert_eq!(s["delivered"], 3, "all three events were delivered: {s}");
    assert!(active(&env).await.contains(&x), "X ends active, as the last file says");
    let (code, log) = agent.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(!log.contains(x.as_str()), "no identifier in the log: {log}");
}

/// An event id built from a fødselsnummer (core systems do that) is shown masked by every
/// operator command, as in the logs: `kfr enqueue` (text and `--json`) and `kfr dlq list` (text
/// and `--json`) printed it whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_and_dlq_list_show_event_ids_masked() {
    let env = setup().await;
    let x = tenor_persons(92, 1).remove(0);
    let event_id = format!("core-add-{x}");
    let masked = format!("core-add-*********{}", &x[9..]);
    env.mock.state().set_reject_customers([x.clone()]);

    let out = run(
        &env,
        &["enqueue", "add", &x, "--event-id", &event_id, "--state", "s.db"],
    );
    let (o, _) = assert_ok(&out);
    assert!(o.contains("stored:") && o.contains(&masked), "{o}");
    let out = run(
        &env,
        &[
            "enqueue",
            "add",
            &x,
            "--event-id",
            &event_id,
            "--state",
            "s.db",
            "--json",
        ],
    );
    let (o, _) = assert_ok(&out);
    let v: serde_json::Value = serde_json::from_str(&o).unwrap();
    assert_eq!(
        (v["duplicate"].clone(), v["event_id"].clone()),
        (true.into(), masked.clone().into())
    );
    let out = run(
        &env,
        &["enqueue", "add", &x, "--event-id", &event_id, "--state", "s.db"],
    );
    let (again, _) = assert_ok(&out);
    assert!(again.contains("already stored") && again.contains(&masked), "{again}");
    for text in [&o, &again] {
        assert!(!text.contains(x.as_str()), "{text}");
    }

    // KFR refuses the customer: the event is dead-lettered.
    let agent = Agent::start(&env);
    until("the event to be dead-lettered", || status(&env)["dead_lettered"] == 1).await;
    let (code, log) = agent.stop();
    assert_eq!(code, Some(0), "{log}");

    let (text, _) = assert_ok(&run(&env, &["dlq", "list", "--state", "s.db"]));
    assert!(text.contains(&format!("(event {masked},")), "{text}");
    let (json, _) = assert_ok(&run(&env, &["dlq", "list", "--state", "s.db", "--json"]));
    let d: serde_json::Value = serde_json::from_str(json.lines().next().unwrap()).unwrap();
    assert_eq!(d["event_id"], masked.as_str(), "{d}");
    for out in [&text, &json] {
        assert!(!out.contains(x.as_str()), "no identifier in full: {out}");
    }
}

/// During the drain after SIGTERM the operations endpoints stay up: `/readyz` answers 503
/// `draining` (what a load balancer must see), `/livez` and `/metrics` answer; they used to vanish
/// at once. The drain is made to last by a KFR that answers after 3 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_livez_and_metrics_answer_during_the_drain() {
    let env = setup().await;
    let x = tenor_persons(93, 1).remove(0);
    assert_ok(&run(&env, &["enqueue", "add", &x, "--state", "s.db"]));
    env.mock.state().set_kfr_faults(kfr::mock::KfrFaults {
        latency_ms: 3000,
        ..kfr::mock::KfrFaults::NONE
    });
    let agent = Agent::start(&env);
    until("the add to be in flight", || status(&env)["in_flight"] == 1).await;
    // SAFETY: kill(2) on our own child's pid; no memory is involved.
    unsafe { libc::kill(agent.child.id() as i32, libc::SIGTERM) };
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let body = loop {
        let r = http
            .get(format!("{}/readyz", agent.ops_url))
            .send()
            .await
            .unwrap_or_else(|e| panic!("/readyz vanished during the drain: {e}"));
        if r.status() == 503 {
            break r.text().await.unwrap();
        }
        assert!(Instant::now() < deadline, "/readyz never said draining");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(body.contains("draining"), "{body}");
    let live = http.get(format!("{}/livez", agent.ops_url)).send().await.unwrap();
    assert_eq!(live.status(), 200, "alive while draining");
    let metrics = http.get(format!("{}/metrics", agent.ops_url)).send().await.unwrap();
    assert_eq!(metrics.status(), 200);
    assert!(metrics.text().await.unwrap().contains("kfr_sync_ready 0"));
    let ops_url = agent.ops_url.clone();
    let (code, log) = agent.exited().await;
    assert_eq!(code, Some(0), "{log}");
    assert!(
        log.contains("delivered 1 this run"),
        "the request in flight was let finish: {log}"
    );
    assert!(
        http.get(format!("{ops_url}/livez")).send().await.is_err(),
        "gone after exit"
    );
}

/// `kfr sync --stdin` with a producer that keeps its end of the pipe open: SIGTERM ends the
/// process. It used to print "stopped" and hang on the read of standard input.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_the_agent_while_stdin_stays_open() {
    use std::io::Write as _;
    let env = setup().await;
    let key = env.dir.join("ingest.key");
    std::fs::write(&key, "a-long-random-test-key-0123456789").unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let args = ["--listen", "127.0.0.1:0", "--ingest-key-file", "ingest.key", "--stdin"];
    let mut agent = Agent::spawn_with(&env, &args, |c| {
        c.stdin(std::process::Stdio::piped());
    });
    let x = tenor_persons(94, 1).remove(0);
    let stdin = agent.child.stdin.as_mut().unwrap();
    writeln!(stdin, "{{\"op\":\"add\",\"customer_id\":\"{x}\",\"event_id\":\"s-1\"}}").unwrap();
    stdin.flush().unwrap();
    // Delivered, not merely "nothing unfinished" (which also holds before the line is read).
    until("the event to be delivered", || status(&env)["delivered"] == 1).await;
    assert!(active(&env).await.contains(&x));
    // The pipe stays open (the child keeps its stdin handle) while the agent is told to stop.
    // SAFETY: kill(2) on our own child's pid; no memory is involved.
    unsafe { libc::kill(agent.child.id() as i32, libc::SIGTERM) };
    let (code, log) = agent.exited().await;
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("kfr sync: stopped"), "{log}");
}

/// docs/sync.md: a number that is not a dead letter is refused with exit code 2 (a usage error),
/// for `drop` and `retry` alike, with a hint; nothing changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_drop_or_retry_of_a_number_that_is_not_a_dead_letter_exits_2() {
    let env = setup().await;
    let x = tenor_persons(95, 1).remove(0);
    assert_ok(&run(&env, &["enqueue", "add", &x, "--state", "s.db"]));
    for (verb, seq) in [("drop", "1"), ("retry", "1"), ("drop", "999")] {
        let out = run(&env, &["dlq", verb, seq, "--state", "s.db"]);
        let (o, e) = output_text(&out);
        assert_eq!(out.status.code(), Some(2), "dlq {verb} {seq}: {o}{e}");
        assert!(
            e.contains(&format!("outbox entry {seq} is not in the dead-letter queue")),
            "{e}"
        );
        assert!(e.contains("hint: `kfr dlq list`"), "{e}");
    }
    assert_eq!(status(&env)["pending"], 1, "the pending event is untouched");
}
