//! What the sync agent and one-shot commands write, as a log shipper and a shell pipeline see it
//! (issue 21 finding 9): with `--log-format json` every stderr line of the agent is a JSON object;
//! SIGHUP drains and exits 0 like SIGTERM; a reader closing stdout early (`kfr … | head -1`) is a
//! clean exit; `--help` shows examples.

use crate::load::{Env, assert_ok, setup};
use crate::util::{kfr, kfr_process, output_text};
use std::io::BufRead as _;
use std::time::{Duration, Instant};

/// The agent with the HTTP source on a free port, started with `global` flags before `sync`;
/// returned once its log says it delivers (or after 30 s, to fail with its log).
fn start_agent(env: &Env, global: &[&str]) -> std::process::Child {
    let key = env.dir.join("ingest.key");
    std::fs::write(&key, "a-long-random-test-key-0123456789").unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    kfr_process(&env.dir, &env.dir.join("state-home"))
        .args(["--config", "kfr.toml"])
        .args(global)
        .args(["sync", "--state", "s.db", "--listen", "127.0.0.1:0"])
        .args(["--ingest-key-file", "ingest.key", "--metrics-listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Sends `signal` once the agent said it delivers (its signal handler is installed right after)
/// and `work` (given the lines so far) is done, then waits for the exit: its code and everything
/// it wrote on stderr.
fn signal_and_collect(
    mut child: std::process::Child,
    signal: i32,
    work: impl FnOnce(&[String]),
) -> (Option<i32>, String) {
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line.clone());
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = vec![];
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) if line.contains("kfr sync: delivering to ") => break,
            Ok(line) => seen.push(line),
            Err(_) => {
                let _ = child.kill();
                panic!("the agent did not start: {}", reader.join().unwrap());
            }
        }
    }
    work(&seen);
    // The handler is installed just after that line: ask until the process reacts, so a signal
    // that came a moment early is repeated rather than the test hanging.
    let code = loop {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe { libc::kill(child.id() as i32, signal) };
        let t = Instant::now();
        while t.elapsed() < Duration::from_millis(500) {
            if let Some(s) = child.try_wait().unwrap() {
                return (s.code(), reader.join().unwrap());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break None;
        }
    };
    (code, reader.join().unwrap())
}

/// `--log-format json`: every line the agent writes on stderr parses as a JSON object, from its
/// start through a delivery to the end of the drain, including its own status lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_json_logs_every_agent_line_is_json() {
    let env = std::sync::Arc::new(setup().await);
    let child = start_agent(&env, &["--log-format", "json"]);
    let customer = crate::load::ids(150, 1).remove(0);
    let (e, c) = (env.clone(), customer.clone());
    let rt = tokio::runtime::Handle::current();
    let (code, log) = tokio::task::spawn_blocking(move || {
        signal_and_collect(child, libc::SIGTERM, |lines| {
            // One add through the intake, delivered before the signal.
            let url = lines
                .iter()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find_map(|v| {
                    v["fields"]["message"]
                        .as_str()
                        .and_then(|m| m.strip_prefix("kfr sync: taking events on "))
                        .map(str::to_string)
                })
                .expect("the intake's address in the log");
            let body = format!("{{\"op\":\"add\",\"customer_id\":\"{c}\",\"event_id\":\"e-1\"}}\n");
            let status = rt.block_on(async {
                reqwest::Client::new()
                    .post(&url)
                    .bearer_auth("a-long-random-test-key-0123456789")
                    .body(body)
                    .send()
                    .await
                    .unwrap()
                    .status()
            });
            assert_eq!(status, 202);
            let t = Instant::now();
            while !e.active().contains_key(&c) {
                assert!(t.elapsed() < Duration::from_secs(30), "the add was not delivered");
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    })
    .await
    .unwrap();
    assert_eq!(code, Some(0), "{log}");
    let lines: Vec<&str> = log.lines().collect();
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}\n{log}"));
        assert!(v.is_object() && v["level"].is_string(), "{line}");
    }
    let messages: Vec<String> = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["fields"]["message"].as_str().map(str::to_string))
        .collect();
    for want in [
        "kfr sync: taking events on ",
        "kfr sync: delivering to ",
        "kfr sync: stopped",
    ] {
        assert!(messages.iter().any(|m| m.starts_with(want)), "no `{want}` line: {log}");
    }
}

/// SIGHUP (a closed terminal, `kill -HUP` expecting a reload) drains and exits 0 as SIGTERM does;
/// its default action killed the agent mid-call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_drains_the_agent_like_sigterm() {
    let env = setup().await;
    let child = start_agent(&env, &[]);
    let (code, log) = tokio::task::spawn_blocking(move || signal_and_collect(child, libc::SIGHUP, |_| ()))
        .await
        .unwrap();
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("SIGHUP: intake closed, draining"), "{log}");
    assert!(log.contains("kfr sync: stopped"), "{log}");
}

/// A configuration error with JSON logs is a JSON line too (a log shipper would otherwise get
/// `error:` text), keeping the error, its hint and the exit code.
#[test]
fn with_json_logs_the_final_error_is_a_json_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("kfr.toml"), "[sync]\nlisen = \"127.0.0.1:1\"\n").unwrap();
    let out = kfr(dir.path())
        .args(["--config", "kfr.toml", "--log-format", "json", "sync"])
        .output()
        .unwrap();
    let (_, stderr) = output_text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let last = lines.last().expect("an error line");
    assert_eq!(last["level"], "ERROR");
    assert!(
        last["fields"]["error"].as_str().unwrap().contains("sync.lisen"),
        "{last}"
    );
    assert!(
        last["fields"]["hint"].as_str().unwrap().contains("sync.listen"),
        "{last}"
    );
    assert_eq!(last["fields"]["exit_code"], 2);

    // A command line clap refuses: also one JSON line, still exit 2.
    let out = kfr(dir.path())
        .args(["--log-format", "json", "sync", "--no-such-flag"])
        .output()
        .unwrap();
    let (_, stderr) = output_text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0]["fields"]["error"].as_str().unwrap().contains("--no-such-flag"),
        "{stderr}"
    );
}

/// `kfr … | head -1`: the reader closes the pipe after one line. Each printing command exits 0
/// with nothing on stderr (println! panicked with "failed printing to stdout").
#[test]
fn a_closed_stdout_is_a_clean_exit() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("kfr.toml"),
        "env = \"test\"\norg_number = \"916960190\"\nstate = \"s.db\"\n",
    )
    .unwrap();
    for args in [
        &["config", "show"][..],
        &["config", "show", "--json"][..],
        &["completions", "bash"][..],
        &["man"][..],
    ] {
        let mut child = kfr_process(dir.path(), &dir.path().join("home"))
            .args(["--config", "kfr.toml"])
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Closed before the command writes anything: its first write meets EPIPE.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let (_, stderr) = output_text(&out);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
    }
}

/// Every main command's `--help` ends with examples a user can copy.
#[test]
fn help_shows_examples_for_the_main_commands() {
    let dir = tempfile::tempdir().unwrap();
    for cmd in [
        &[][..],
        &["load"][..],
        &["sync"][..],
        &["add"][..],
        &["remove"][..],
        &["token"][..],
        &["doctor"][..],
        &["outbox", "status"][..],
        &["dlq", "list"][..],
        &["history"][..],
        &["verify"][..],
        &["checklist"][..],
        &["certs", "local"][..],
        &["config", "show"][..],
        &["mock"][..],
        &["lookup"][..],
        &["validate"][..],
        &["pseudonym"][..],
        &["enqueue"][..],
        &["reconcile"][..],
        &["demo"][..],
        &["status"][..],
        &["backup"][..],
        &["audit", "export"][..],
        &["outbox", "cancel"][..],
    ] {
        let out = kfr(dir.path()).args(cmd).arg("--help").output().unwrap();
        let (stdout, _) = assert_ok(&out);
        let examples = stdout
            .split("Examples:")
            .nth(1)
            .unwrap_or_else(|| panic!("kfr {cmd:?} --help has no Examples: {stdout}"));
        let lines: Vec<&str> = examples
            .lines()
            .map(str::trim_start)
            .filter(|l| l.starts_with("kfr "))
            .collect();
        assert!(!lines.is_empty(), "kfr {cmd:?}: {examples}");
        // Each example parses with the real parser: no flag that does not exist.
        for line in lines {
            let command = line.split("  ").next().unwrap();
            use clap::Parser as _;
            if let Err(e) = kfr::cli::Cli::try_parse_from(command.split_whitespace()) {
                panic!("`{command}` from kfr {cmd:?} --help does not parse: {e}");
            }
        }
    }
}
