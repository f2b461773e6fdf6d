//! The operator's commands around the sync agent, run as the binary: `kfr enqueue`,
//! `kfr outbox status`, `kfr reconcile` and `kfr sync` itself (start, deliver, drain on SIGTERM,
//! exit 0).

use crate::load::{Env, assert_ok, ids, setup};
use crate::util::{ORG, kfr, output_text};
use std::io::BufRead as _;
use std::time::{Duration, Instant};

fn status(env: &Env) -> serde_json::Value {
    let out = kfr(&env.dir)
        .args(["--config", "kfr.toml", "outbox", "status", "--state", "s.db", "--json"])
        .output()
        .unwrap();
    let (o, _) = assert_ok(&out);
    serde_json::from_str::<serde_json::Value>(&o).unwrap()["status"].clone()
}

fn run(env: &Env, args: &[&str]) -> std::process::Output {
    kfr(&env.dir)
        .args(["--config", "kfr.toml"])
        .args(args)
        .output()
        .unwrap()
}

/// Active customers of our institution in the mock's register.
async fn active(env: &Env) -> std::collections::BTreeSet<String> {
    let rows: Vec<serde_json::Value> = reqwest::get(format!("{}/_mock/relationships", env.mock.base_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    rows.into_iter()
        .filter(|r| r["organization_id"] == ORG && r["end_date"].is_null())
        .map(|r| r["customer_id"].as_str().unwrap().to_string())
        .collect()
}

/// A running `kfr sync` child and the addresses it printed.
struct Agent {
    child: std::process::Child,
    events_url: String,
    ops_url: String,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Agent {
    fn start(env: &Env) -> Agent {
        let key = env.dir.join("ingest.key");
        std::fs::write(&key, "a-long-random-test-key-0123456789").unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        // A plain std Command: the agent runs in the background while the test talks to it.
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kfr"))
            .current_dir(&env.dir)
            .env("NO_COLOR", "1")
            .env(kfr::env_vars::KFR_STATE_HOME, env.dir.join("state-home"))
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
        let log = std::sync::Arc::new(std::sync::Mutex::new(vec![]));
        let (tx, rx) = std::sync::mpsc::channel();
        let l = log.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line.clone());
                l.lock().unwrap().push(line);
            }
        });
        let (mut events_url, mut ops_url) = (None, None);
        let deadline = Instant::now() + Duration::from_secs(30);
        while events_url.is_none() || ops_url.is_none() {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("the agent printed its addresses");
            if let Some(u) = line.strip_prefix("kfr sync: taking events on ") {
                events_url = Some(u.to_string());
            }
            if let Some(rest) = line.strip_prefix("kfr sync: metrics and health on ") {
                ops_url = Some(
                    rest.split_whitespace()
                        .next()
                        .unwrap()
                        .trim_end_matches('/')
                        .to_string(),
                );
            }
        }
        Agent {
            child,
            events_url: events_url.unwrap(),
            ops_url: ops_url.unwrap(),
            log,
        }
    }

    /// SIGTERM, then the exit code.
    fn stop(mut self) -> (Option<i32>, String) {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let code = self.child.wait().unwrap().code();
        std::thread::sleep(Duration::from_millis(50));
        let log = self.log.lock().unwrap().join("\n");
        (code, log)
    }
}

async fn until_outbox_empty(env: &Env) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = status(env);
        let open = ["pending", "in_flight", "accepted"]
            .iter()
            .map(|k| s[k].as_u64().unwrap())
            .sum::<u64>();
        if open == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "the outbox did not empty: {s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_stores_an_event_once_and_refuses_a_bad_one_with_nothing_stored() {
    let env = setup().await;
    let id = &ids(71, 1)[0];
    let out = run(&env, &["enqueue", "add", id, "--event-id", "core-1", "--state", "s.db"]);
    let (o, _) = assert_ok(&out);
    assert!(o.contains("stored:") && !o.contains(id.as_str()), "{o}");
    let out = run(&env, &["enqueue", "add", id, "--event-id", "core-1", "--state", "s.db"]);
    let (o, _) = assert_ok(&out);
    assert!(o.contains("already stored"), "{o}");

    // A wrong check digit: refused with the field and rule, the identifier masked.
    let mut bad = id.clone();
    let last = bad.pop().unwrap();
    bad.push(if last == '0' { '1' } else { '0' });
    let out = run(&env, &["enqueue", "remove", &bad, "--state", "s.db"]);
    let (o, e) = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{o}{e}");
    assert!(e.contains("customer_id") && e.contains("nothing was stored"), "{e}");
    assert!(!e.contains(bad.as_str()), "the refused identifier is masked: {e}");
    // A start date on a remove is refused too.
    let out = run(
        &env,
        &["enqueue", "remove", id, "--start-date", "2020-01-01", "--state", "s.db"],
    );
    assert_eq!(out.status.code(), Some(1), "{:?}", output_text(&out));

    let s = status(&env);
    assert_eq!(s["pending"], 1, "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_enqueues_the_differences_the_agent_delivers_them_and_drains_on_sigterm() {
    let env = setup().await;
    let people = ids(72, 3);
    let (a, b, c) = (&people[0], &people[1], &people[2]);
    for id in [a, b] {
        assert_ok(&run(&env, &["add", id, "--state", "s.db"]));
    }
    // The export has A and C: C is missing from KFR, B has ended in the core system.
    std::fs::write(env.dir.join("export.csv"), format!("{a}\n{c}\n")).unwrap();

    let out = run(
        &env,
        &["reconcile", "export.csv", "--dry-run", "--state", "s.db", "--json"],
    );
    let (o, _) = assert_ok(&out);
    let v: serde_json::Value = serde_json::from_str(&o).unwrap();
    assert_eq!(v["summary"]["adds"], 1, "{v}");
    assert_eq!(v["summary"]["removes"], 1, "{v}");
    assert_eq!(v["summary"]["unchanged"], 1, "{v}");
    assert_eq!(v["enqueued"], 0, "{v}");
    assert_eq!(v["mass_delete_refused"], true, "1 of 2 is over 5 %: {v}");
    assert!(!o.contains(b.as_str()) && !o.contains(c.as_str()), "masked: {o}");

    // One remove of two active customers is a mass delete: refused, nothing enqueued.
    let out = run(&env, &["reconcile", "export.csv", "--state", "s.db"]);
    let (o, e) = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{o}{e}");
    assert!(e.contains("--allow-mass-delete"), "{e}");
    assert_eq!(status(&env)["pending"], 0);

    let out = run(
        &env,
        &["reconcile", "export.csv", "--allow-mass-delete", "--state", "s.db"],
    );
    assert_ok(&out);
    assert_eq!(status(&env)["pending"], 2);

    // A line the reader refuses makes the whole export untrustworthy.
    std::fs::write(env.dir.join("broken.csv"), format!("{a}\n12345678901\n")).unwrap();
    let out = run(&env, &["reconcile", "broken.csv", "--state", "s.db"]);
    let (o, e) = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{o}{e}");
    assert!(e.contains("rejected line"), "{e}");

    let agent = Agent::start(&env);
    until_outbox_empty(&env).await;
    let expected: std::collections::BTreeSet<String> = [a.clone(), c.clone()].into();
    assert_eq!(active(&env).await, expected);
    let http = reqwest::Client::new();
    let ready = http.get(format!("{}/readyz", agent.ops_url)).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let metrics = http
        .get(format!("{}/metrics", agent.ops_url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("kfr_sync_events_delivered_total{op=\"remove\",outcome=\"removed\"} 1"),
        "{metrics}"
    );
    // Without the bearer key the intake refuses, and nothing is stored.
    let refused = http
        .post(&agent.events_url)
        .body(format!("{{\"op\":\"remove\",\"customer_id\":\"{a}\"}}"))
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let (code, log) = agent.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("SIGTERM") && log.contains("stopped"), "{log}");
    // Person identifiers never appear (organisation numbers may).
    for id in [a, b, c].into_iter().filter(|id| id.len() == 11) {
        assert!(
            !log.contains(id.as_str()),
            "no person identifier in the agent's log: {log}"
        );
    }
    assert_eq!(active(&env).await, expected);
}
