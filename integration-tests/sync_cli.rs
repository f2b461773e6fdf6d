//! The operator's commands around the sync agent, run as the binary: `kfr enqueue`,
//! `kfr outbox status`, `kfr reconcile` and `kfr sync` itself (start, deliver, drain on SIGTERM,
//! exit 0).

use crate::load::{Env, assert_ok, ids, setup};
use crate::util::{ORG, kfr, output_text};
use std::io::BufRead as _;
use std::time::{Duration, Instant};

pub(crate) fn status(env: &Env) -> serde_json::Value {
    let out = kfr(&env.dir)
        .args(["--config", "kfr.toml", "outbox", "status", "--state", "s.db", "--json"])
        .output()
        .unwrap();
    let (o, _) = assert_ok(&out);
    serde_json::from_str::<serde_json::Value>(&o).unwrap()["status"].clone()
}

pub(crate) fn run(env: &Env, args: &[&str]) -> std::process::Output {
    kfr(&env.dir)
        .args(["--config", "kfr.toml"])
        .args(args)
        .output()
        .unwrap()
}

/// Active customers of our institution in the mock's register.
pub(crate) async fn active(env: &Env) -> std::collections::BTreeSet<String> {
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
pub(crate) struct Agent {
    pub(crate) child: std::process::Child,
    pub(crate) events_url: String,
    pub(crate) ops_url: String,
    pub(crate) log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Agent {
    /// The agent with the HTTP source (a private key file written here) and the metrics endpoint.
    pub(crate) fn start(env: &Env) -> Agent {
        let key = env.dir.join("ingest.key");
        std::fs::write(&key, "a-long-random-test-key-0123456789").unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        Agent::spawn(env, &["--listen", "127.0.0.1:0", "--ingest-key-file", "ingest.key"])
    }

    /// `kfr sync --state s.db --metrics-listen 127.0.0.1:0 --rate 1000 <args>`, returned once it
    /// said it delivers (its sources and endpoints are up by then).
    pub(crate) fn spawn(env: &Env, args: &[&str]) -> Agent {
        Agent::spawn_with(env, args, |_| {})
    }

    /// [`Agent::spawn`], with `tweak` applied to the command first (e.g. a piped stdin).
    pub(crate) fn spawn_with(env: &Env, args: &[&str], tweak: impl FnOnce(&mut std::process::Command)) -> Agent {
        // A plain std Command: the agent runs in the background while the test talks to it.
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_kfr"));
        cmd.current_dir(&env.dir)
            .env("NO_COLOR", "1")
            .env(kfr::env_vars::KFR_STATE_HOME, env.dir.join("state-home"))
            .args(["--config", "kfr.toml", "sync", "--state", "s.db"])
            .args(["--metrics-listen", "127.0.0.1:0", "--rate", "1000"])
            .args(args)
            .stderr(std::process::Stdio::piped());
        tweak(&mut cmd);
        let mut child = cmd.spawn().unwrap();
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
        let (mut events_url, mut ops_url) = (String::new(), None);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| panic!("the agent started: {}", log.lock().unwrap().join("\n")));
            if let Some(u) = line.strip_prefix("kfr sync: taking events on ") {
                events_url = u.to_string();
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
            if line.starts_with("kfr sync: delivering to ") {
                break;
            }
        }
        Agent {
            child,
            events_url,
            ops_url: ops_url.expect("the agent printed its metrics address"),
            log,
        }
    }

    /// Waits for the agent to exit by itself; its exit code and log. Killed (and the test fails)
    /// if it is still running after a generous bound: that is the bug this guards against.
    pub(crate) async fn exited(mut self) -> (Option<i32>, String) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let code = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status.code();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("the agent kept running: {}", self.log.lock().unwrap().join("\n"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        // The reader thread may still hold the last lines.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let log = self.log.lock().unwrap().join("\n");
        (code, log)
    }

    /// SIGTERM, then the exit code.
    pub(crate) fn stop(mut self) -> (Option<i32>, String) {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let code = self.child.wait().unwrap().code();
        std::thread::sleep(Duration::from_millis(50));
        let log = self.log.lock().unwrap().join("\n");
        (code, log)
    }
}

pub(crate) async fn until_outbox_empty(env: &Env) {
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

/// A part of the agent that dies under it (here the spool source, whose directory is removed)
/// stops the whole agent at once with exit code 1 and a message naming the part, so a supervisor
/// restarts it — instead of an agent that answers its probes and takes nothing in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_exits_1_naming_its_spool_source_when_the_directory_disappears() {
    let env = setup().await;
    let spool = env.dir.join("in");
    std::fs::create_dir(&spool).unwrap();
    let config = env.dir.join("kfr.toml");
    let mut toml = std::fs::read_to_string(&config).unwrap();
    toml.push_str("\n[[sync.sources]]\nkind = \"spool\"\ndir = \"in\"\nname = \"core\"\n");
    std::fs::write(&config, toml).unwrap();

    let agent = Agent::spawn(&env, &[]);
    let ready = reqwest::get(format!("{}/readyz", agent.ops_url)).await.unwrap();
    assert_eq!(ready.status(), 200);
    std::fs::remove_dir_all(&spool).unwrap();
    let (code, log) = agent.exited().await;
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("error: kfr sync stopped: the source `core` failed"),
        "{log}"
    );
    assert!(log.contains("Caused by:") && log.contains("spool directory"), "{log}");
    assert!(log.contains("hint: "), "{log}");
    assert!(
        log.contains("kfr sync: stopped;"),
        "it drained and reported before exiting: {log}"
    );
}

/// The state file deleted under a running agent: what it acknowledged would go to a file no one
/// opens again. It refuses events (503, or no answer once stopped: the core system keeps them)
/// and exits 1 saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_refuses_events_and_exits_1_when_its_state_file_is_deleted() {
    let env = setup().await;
    let agent = Agent::start(&env);
    for f in ["s.db", "s.db-wal", "s.db-shm"] {
        let _ = std::fs::remove_file(env.dir.join(f));
    }
    let post = reqwest::Client::new()
        .post(&agent.events_url)
        .bearer_auth("a-long-random-test-key-0123456789")
        .header("Content-Type", "application/json")
        .body(r#"{"op":"remove","customer_id":"15108695088"}"#)
        .send()
        .await;
    // Refused, or the agent already stopped (its dispatcher noticed first): never a 202.
    if let Ok(r) = post {
        assert_eq!(r.status(), 503, "an event was acknowledged into a deleted file");
    }
    let (code, log) = agent.exited().await;
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("was removed or replaced while kfr had it open"), "{log}");
    assert!(log.contains("hint: put the store back"), "{log}");
    assert!(!log.contains("15108695088"), "{log}");
}

/// The HTTP source's start-up refusals each end with a `hint:` saying what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_source_s_setup_errors_say_what_to_do() {
    use std::os::unix::fs::PermissionsExt as _;
    let env = setup().await;
    let write = |name: &str, text: &str, mode: u32| {
        let path = env.dir.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    write("open.key", "a-long-random-test-key-0123456789", 0o644);
    write("short.key", "short", 0o600);
    write("good.key", "a-long-random-test-key-0123456789", 0o600);
    write("broken.pem", "not a certificate", 0o600);
    let cases: [(&[&str], &str, &str); 5] = [
        (
            &["--ingest-key-file", "missing.key"],
            "cannot read the ingest key file",
            "hint: ",
        ),
        (
            &["--ingest-key-file", "open.key"],
            "accessible to group or others",
            "chmod 600",
        ),
        (&["--ingest-key-file", "short.key"], "shorter than 16", "hint: "),
        (
            &["--ingest-key-file", "good.key", "--listen", "0.0.0.0:0"],
            "refusing plain HTTP",
            "--tls-cert",
        ),
        (
            &[
                "--ingest-key-file",
                "good.key",
                "--tls-cert",
                "broken.pem",
                "--tls-key",
                "broken.pem",
            ],
            "cannot use the TLS certificate",
            "hint: ",
        ),
    ];
    for (args, error, hint) in cases {
        let mut all = vec!["sync", "--state", "s.db"];
        all.extend_from_slice(args);
        if !args.contains(&"--listen") {
            all.extend(["--listen", "127.0.0.1:0"]);
        }
        let out = run(&env, &all);
        let (o, e) = output_text(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {o}{e}");
        assert!(e.contains(error), "{args:?}: {e}");
        let hint_line = e
            .lines()
            .find(|l| l.starts_with("hint: "))
            .unwrap_or_else(|| panic!("{args:?}: no hint: {e}"));
        assert!(hint_line.contains(hint), "{args:?}: {e}");
    }
}

/// Issue 21: a renewed business certificate put in place under a running agent signs its next
/// grant, no restart. Maskinporten here trusts only the renewal's CA: the agent's first grants
/// (with the certificate it started with) are refused and delivery pauses on credentials; once
/// the new PKCS#12 file (same password) is renamed over the old one, the next probe's grant is
/// signed with it and the event is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_business_certificate_is_used_by_the_running_agent_without_a_restart() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let d = tempfile::tempdir().unwrap();
    let (dp, u) = (d.path().to_owned(), url.clone());
    tokio::task::spawn_blocking(move || crate::util::certs_local(&dp, &u))
        .await
        .unwrap();
    let renewal_ca = kfr::certs::TestCa::named("KFR Renewal Test CA").unwrap();
    let cfg = kfr::mock::MockConfig::new(vec![renewal_ca.cert_der.clone()]);
    let mock = kfr::mock::MockServer::start(listener, cfg).await.unwrap();
    let env = Env::new(d, mock);
    let id = &ids(74, 1)[0];
    assert_ok(&run(&env, &["enqueue", "add", id, "--state", "s.db"]));

    std::fs::write(env.dir.join("ingest.key"), "a-long-random-test-key-0123456789").unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(env.dir.join("ingest.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let agent = Agent::spawn(
        &env,
        &[
            "--listen",
            "127.0.0.1:0",
            "--ingest-key-file",
            "ingest.key",
            "--probe-interval-ms",
            "200",
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while env.mock.state().token_errors().is_empty() {
        assert!(Instant::now() < deadline, "no grant was refused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(env.active().is_empty(), "nothing delivered with the old certificate");

    let password = std::fs::read_to_string(env.dir.join("client.p12.password")).unwrap();
    let renewed = renewal_ca
        .issue(ORG, "KFR LOCAL BANK AS", &kfr::certs::LeafOptions::standard())
        .unwrap();
    let p12 = kfr::certs::to_pkcs12(&renewed, &[&renewal_ca.cert_der], password.trim()).unwrap();
    std::fs::write(env.dir.join("client.p12.new"), p12).unwrap();
    std::fs::rename(env.dir.join("client.p12.new"), env.dir.join("client.p12")).unwrap();

    while !env.active().contains_key(id) {
        assert!(
            Instant::now() < deadline,
            "not delivered after the renewal: {}",
            agent.log.lock().unwrap().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (code, log) = agent.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(
        log.contains("the business certificate changed on disk: grants are now signed with the new one"),
        "{log}"
    );
}
