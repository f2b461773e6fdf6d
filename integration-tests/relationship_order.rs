//! `kfr add` / `kfr remove` never overtake the sync agent on a customer (issue 11): they go
//! through the installation's outbox, so whatever the agent holds for the customer — pending or
//! in flight — goes to KFR first, and the command's operation after it, in issue order
//! (docs/specs/outbox.md, "Held operations are outbox events"). With nothing ahead the operation
//! is still sent at once, and the outbox records it delivered under its CorrelationID.

use crate::load::{Env, assert_ok, ids, setup};
use crate::util::kfr;
use kfr::store::backend::{Ledger as _, Outbox as _};
use kfr::store::sqlite::SqliteBackend;
use std::io::BufRead as _;
use std::time::{Duration, Instant};

fn run(env: &Env, args: &[&str]) -> std::process::Output {
    kfr(&env.dir)
        .args(["--config", "kfr.toml"])
        .args(args)
        .output()
        .unwrap()
}

/// `kfr outbox status --json` of `s.db`: the register key and the counts.
fn status(env: &Env) -> (String, serde_json::Value) {
    let (o, _) = assert_ok(&run(env, &["outbox", "status", "--state", "s.db", "--json"]));
    let v: serde_json::Value = serde_json::from_str(&o).unwrap();
    (v["register"].as_str().unwrap().to_string(), v["status"].clone())
}

/// The mock's write requests on `customer`, in arrival order: (op, CorrelationID).
fn requests(env: &Env, customer: &str) -> Vec<(String, String)> {
    env.mock
        .state()
        .requests()
        .into_iter()
        .filter(|r| r.customer_id.as_deref() == Some(customer))
        .map(|r| (r.op.to_string(), r.correlation_id.unwrap_or_default()))
        .collect()
}

/// The CorrelationID a command printed (`… CorrelationID <uuid>)`).
fn correlation_id(stdout: &str) -> String {
    let at = stdout.find("CorrelationID ").expect("names its CorrelationID") + "CorrelationID ".len();
    stdout[at..at + 36].to_string()
}

/// Runs `kfr sync` on `s.db` until the outbox has nothing pending or in flight, then stops it
/// (SIGTERM) and checks it exited cleanly.
async fn run_agent_until_delivered(env: &Env) {
    std::fs::write(env.dir.join("ingest.key"), "a-long-random-test-key-0123456789").unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(env.dir.join("ingest.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kfr"))
        .current_dir(&env.dir)
        .env("NO_COLOR", "1")
        .env(kfr::env_vars::KFR_STATE_HOME, env.dir.join("state-home"))
        // A claim taken back from a killed sender is in doubt: held this long (1 s here, not
        // the 2 minutes of a real installation) before it is sent again.
        .env("KFR_SYNC_IN_DOUBT_SECS", "1")
        .args([
            "--config",
            "kfr.toml",
            "sync",
            "--state",
            "s.db",
            "--listen",
            "127.0.0.1:0",
        ])
        .args([
            "--ingest-key-file",
            "ingest.key",
            "--metrics-listen",
            "127.0.0.1:0",
            "--rate",
            "1000",
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let log = std::thread::spawn(move || {
        std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
            .join("\n")
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, s) = status(env);
        if s["pending"] == 0 && s["in_flight"] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the agent did not deliver: {s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // SAFETY: kill(2) on our own child's pid; no memory is involved.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let code = child.wait().unwrap().code();
    let log = log.join().unwrap();
    assert_eq!(code, Some(0), "{log}");
}

/// The agent's remove of X is pending (no agent running yet): `kfr add X` and then `kfr remove X`
/// wait behind it instead of going to KFR; the agent then delivers all three in issue order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_and_remove_queue_behind_the_agents_pending_event_and_leave_in_issue_order() {
    let env = setup().await;
    let x = ids(111, 1).remove(0);
    assert_ok(&run(&env, &["enqueue", "remove", &x, "--state", "s.db"]));

    let (added, _) = assert_ok(&run(&env, &["add", &x, "--state", "s.db"]));
    assert!(
        added.starts_with("queued: ") && added.contains("behind 1 earlier operation"),
        "{added}"
    );
    assert!(!added.contains(x.as_str()), "person ID not printed: {added}");
    let (removed, _) = assert_ok(&run(&env, &["remove", &x, "--state", "s.db", "--json"]));
    let v: serde_json::Value = serde_json::from_str(removed.trim()).unwrap();
    assert_eq!(
        (v["outcome"].as_str(), v["behind"].as_u64()),
        (Some("held"), Some(2)),
        "{v}"
    );
    assert!(requests(&env, &x).is_empty(), "nothing overtook the agent's event");

    run_agent_until_delivered(&env).await;
    let sent = requests(&env, &x);
    let ops: Vec<&str> = sent.iter().map(|(op, _)| op.as_str()).collect();
    assert_eq!(ops, ["remove", "add", "remove"], "issue order: {sent:?}");
    assert_eq!(
        sent[1].1,
        correlation_id(&added),
        "the add keeps the CorrelationID it was given"
    );
    assert_eq!(sent[2].1, v["correlation_id"].as_str().unwrap());
    assert!(env.ended().contains(&x), "the bank's last word was remove");
}

/// The agent holds its add of X in flight (claimed, not yet answered): `kfr remove X` must not be
/// a second request for X on the wire; it waits, and goes after the add.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_waits_while_the_agent_has_the_customers_event_in_flight() {
    let env = setup().await;
    let x = ids(112, 1).remove(0);
    assert_ok(&run(&env, &["enqueue", "add", &x, "--state", "s.db"]));
    let (register, _) = status(&env);
    // What the agent's dispatcher does when it takes the event: claimed, in flight. The claim
    // runs out soon, as a killed agent's does; until then nobody else sends X.
    let mut store = SqliteBackend::open(&env.dir.join("s.db")).unwrap();
    let agent = kfr::store::Claimer {
        name: "sync:test".into(),
        epoch: None,
        ttl: chrono::Duration::seconds(2),
    };
    let claimed = store.claim_ready(&register, &agent, chrono::Utc::now(), 10).unwrap();
    assert_eq!(claimed.len(), 1);
    drop(store);

    let (removed, _) = assert_ok(&run(&env, &["remove", &x, "--state", "s.db"]));
    assert!(
        removed.starts_with("queued: ") && removed.contains("behind 1"),
        "{removed}"
    );
    assert!(
        requests(&env, &x).is_empty(),
        "no second request for X while one is in flight"
    );
    let (_, s) = status(&env);
    assert_eq!(
        (s["in_flight"].as_u64(), s["pending"].as_u64()),
        (Some(1), Some(1)),
        "{s}"
    );

    // The agent (restarted: once the claim ran out its recover resends the add it held) delivers
    // both, add first.
    run_agent_until_delivered(&env).await;
    let ops: Vec<String> = requests(&env, &x).into_iter().map(|(op, _)| op).collect();
    assert_eq!(ops, ["add", "remove"]);
    assert!(env.ended().contains(&x));
}

/// With nothing ahead, `kfr add` still goes to KFR at once, and the outbox shows it delivered
/// under the CorrelationID the command printed and sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_nothing_ahead_it_is_sent_at_once_and_recorded_delivered() {
    let env = setup().await;
    let y = ids(113, 1).remove(0);
    let (added, _) = assert_ok(&run(&env, &["add", &y, "--state", "s.db"]));
    assert!(added.starts_with("added: "), "{added}");
    let cid = correlation_id(&added);
    assert_eq!(requests(&env, &y), [("add".to_string(), cid.clone())]);

    let (register, s) = status(&env);
    assert_eq!(
        (s["delivered"].as_u64(), s["pending"].as_u64(), s["in_flight"].as_u64()),
        (Some(1), Some(0), Some(0)),
        "{s}"
    );
    let conn = rusqlite::Connection::open(env.dir.join("s.db")).unwrap();
    let (state, stored_cid, delivery, source): (String, String, String, String) = conn
        .query_row(
            "SELECT state, correlation_id, delivery, source FROM outbox WHERE customer_id = ?1",
            [&y],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap();
    assert_eq!(
        (state.as_str(), stored_cid.as_str(), delivery.as_str(), source.as_str()),
        ("delivered", cid.as_str(), "added", "kfr add")
    );
    // The ledger moved with it (reconcile compares against it).
    let mut store = SqliteBackend::open(&env.dir.join("s.db")).unwrap();
    let ledger = store.ledger(&register).unwrap();
    assert_eq!((ledger.len(), ledger[0].correlation_id.to_string()), (1, cid));
}
