//! A bank's operations around the agent (issue 21), run as the binary: `kfr status` naming a
//! started agent alive from its heartbeat in the store, `kfr outbox cancel` with who and why,
//! the flood guard, a failed `kfr add` that stays queued (exit 3), `kfr backup` and
//! `kfr audit export`.

use crate::load::{assert_ok, ids, setup};
use crate::sync_cli::Agent;
use std::time::{Duration, Instant};

fn json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_str(&String::from_utf8_lossy(&out.stdout))
        .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", crate::util::output_text(out)))
}

#[cfg(unix)]
fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Acceptance: `kfr status --json` parses and names the agent alive (leader, ready) within 5 s
/// of its start, exit 0; once the agent stopped, it says so and exits 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_names_a_started_agent_alive_within_5_s_and_stopped_after() {
    let env = setup().await;
    let started = Instant::now();
    let agent = Agent::start(&env);
    let (out, st) = loop {
        let out = env.run(&["status", "--state", "s.db", "--json"], &[]).await;
        let st = json(&out);
        let leader = st["agents"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["alive"] == true && a["role"] == "leader" && a["ready"] == true);
        if leader {
            break (out, st);
        }
        assert!(started.elapsed() < Duration::from_secs(5), "not alive within 5 s: {st}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(out.status.code(), Some(0), "{st}");
    assert_eq!(st["ok"], true, "{st}");
    assert!(st["config_file"].as_str().unwrap().ends_with("kfr.toml"), "{st}");
    assert!(st["state"].as_str().unwrap().ends_with("s.db"), "{st}");
    assert_eq!(
        st["versions"]["kfr"].as_str().unwrap(),
        st["agents"][0]["version"].as_str().unwrap()
    );
    assert!(st["outbox"]["pending"].is_u64() && st["load_running"].is_null(), "{st}");
    let business = st["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["certificate"] == "business")
        .unwrap_or_else(|| panic!("the business certificate: {st}"));
    assert!(business["days_left"].as_i64().unwrap() > 30, "{st}");

    let (code, _) = agent.stop();
    assert_eq!(code, Some(0));
    let out = env.run(&["status", "--state", "s.db", "--json"], &[]).await;
    let st = json(&out);
    assert_eq!(out.status.code(), Some(1), "no agent alive needs attention: {st}");
    assert_eq!(st["agents"][0]["role"], "stopped", "{st}");
    assert_eq!(st["agents"][0]["alive"], false, "{st}");
    assert!(
        st["attention"][0]
            .as_str()
            .unwrap()
            .contains("no kfr sync agent is alive"),
        "{st}"
    );
    // The plain view says the same in words.
    let out = env.run(&["status", "--state", "s.db"], &[]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("attention: no kfr sync agent is alive"), "{text}");
    assert!(text.contains("certificate    business: until"), "{text}");
}

/// `kfr outbox cancel`: a pending event is cancelled with who and why in the history, the
/// customer's next event becomes its head; cancelling it again is refused with exit 2 naming
/// its state; an unknown event id is exit 2 too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_takes_a_pending_event_out_with_who_and_why_and_refuses_the_rest() {
    let env = setup().await;
    let x = ids(130, 1).remove(0);
    let st = |o: &std::process::Output| json(o);
    let add = st(&assert_ok_out(
        env.run(&["enqueue", "add", &x, "--state", "s.db", "--json"], &[]).await,
    ));
    assert_ok(&env.run(&["enqueue", "remove", &x, "--state", "s.db"], &[]).await);
    let seq = add["seq"].as_i64().unwrap().to_string();
    let args = [
        "outbox",
        "cancel",
        &seq,
        "--state",
        "s.db",
        "--actor",
        "kari",
        "--reason",
        "sent by mistake",
    ];
    let out = assert_ok(&env.run(&args, &[]).await).0;
    assert!(
        out.contains(&format!("cancelled 1 event(s) (#{seq})")) && out.contains("kari"),
        "{out}"
    );
    let status = st(&env.run(&["outbox", "status", "--state", "s.db", "--json"], &[]).await);
    assert_eq!(status["status"]["pending"], 1, "the remove is left: {status}");
    assert_eq!(status["status"]["dropped"], 1, "{status}");
    let history = assert_ok(&env.run(&["history", &x, "--state", "s.db"], &[]).await).0;
    assert!(
        history.contains("cancelled") && history.contains("by kari") && history.contains("sent by mistake"),
        "{history}"
    );

    let again = env.run(&args, &[]).await;
    assert_eq!(again.status.code(), Some(2), "{:?}", crate::util::output_text(&again));
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("is dropped and cannot be cancelled"), "{err}");
    let unknown = env
        .run(&["outbox", "cancel", "--event-id", "nope", "--state", "s.db"], &[])
        .await;
    assert_eq!(unknown.status.code(), Some(2));
    // By customer: the rest goes, the identifier never printed.
    let out = assert_ok(
        &env.run(
            &[
                "outbox",
                "cancel",
                "--customer",
                &x,
                "--state",
                "s.db",
                "--reason",
                "flood",
            ],
            &[],
        )
        .await,
    );
    assert!(!out.0.contains(x.as_str()) && !out.1.contains(x.as_str()), "{out:?}");
    let status = st(&env.run(&["outbox", "status", "--state", "s.db", "--json"], &[]).await);
    assert_eq!(status["status"]["pending"], 0, "{status}");
}

fn assert_ok_out(o: std::process::Output) -> std::process::Output {
    assert_ok(&o);
    o
}

/// More unfinished events for one customer than `sync.max_events_per_customer` are refused,
/// with nothing stored and the setting named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_for_one_customer_is_refused_beyond_the_limit() {
    let env = setup().await;
    let x = ids(131, 1).remove(0);
    let limit = [("KFR_SYNC_MAX_EVENTS_PER_CUSTOMER", "2")];
    assert_ok(&env.run(&["enqueue", "add", &x, "--state", "s.db"], &limit).await);
    assert_ok(&env.run(&["enqueue", "remove", &x, "--state", "s.db"], &limit).await);
    let third = env.run(&["enqueue", "add", &x, "--state", "s.db"], &limit).await;
    assert_eq!(third.status.code(), Some(1));
    let err = String::from_utf8_lossy(&third.stderr);
    assert!(
        err.contains("sync.max_events_per_customer = 2") && err.contains("nothing was stored"),
        "{err}"
    );
    assert!(err.contains("hint: ") && err.contains("kfr outbox cancel"), "{err}");
    assert!(!err.contains(x.as_str()), "masked: {err}");
    let status = json(&env.run(&["outbox", "status", "--state", "s.db", "--json"], &[]).await);
    assert_eq!(status["status"]["pending"], 2, "{status}");
}

/// A `kfr add` that KFR keeps failing exits 3, says the operation stays queued and how to
/// cancel it; the printed command works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_add_that_stays_queued_exits_3_and_names_the_cancel_command() {
    let env = setup().await;
    let x = ids(132, 1).remove(0);
    env.mock.state().set_kfr_faults(kfr::mock::KfrFaults {
        error_rate: 1.0,
        ..kfr::mock::KfrFaults::NONE
    });
    let out = env
        .run(&["add", &x, "--state", "s.db"], &[("KFR_RETRY_MAX_ATTEMPTS", "1")])
        .await;
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("still queued for the sync agent"), "{err}");
    let cmd = err
        .split("to withdraw it instead: ")
        .nth(1)
        .and_then(|r| r.lines().next())
        .unwrap_or_else(|| panic!("no cancel command: {err}"));
    let seq = cmd
        .strip_prefix("kfr outbox cancel ")
        .unwrap()
        .split(' ')
        .next()
        .unwrap();
    assert_ok(
        &env.run(
            &["outbox", "cancel", seq, "--state", "s.db", "--reason", "gave up"],
            &[],
        )
        .await,
    );
    let status = json(&env.run(&["outbox", "status", "--state", "s.db", "--json"], &[]).await);
    assert_eq!(status["status"]["pending"], 0, "{status}");
}

/// `kfr backup`: mode 0600 whatever the umask, opens as a store holding what the original
/// held; never over an existing file (exit 2). `kfr audit export`: one row per attempt and
/// operator action, 0600, masked unless --show-id; the spreadsheet is a valid workbook that
/// openpyxl opens (the acceptance).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_and_audit_export_are_private_and_readable() {
    let env = setup().await;
    let x = ids(133, 1).remove(0);
    assert_ok(&env.run(&["add", &x, "--state", "s.db"], &[]).await);
    assert_ok(&env.run(&["enqueue", "remove", &x, "--state", "s.db"], &[]).await);
    assert_ok(
        &env.run(
            &[
                "outbox",
                "cancel",
                "--customer",
                &x,
                "--state",
                "s.db",
                "--reason",
                "test",
            ],
            &[],
        )
        .await,
    );

    let out = assert_ok(&env.run(&["backup", "backup.db", "--state", "s.db"], &[]).await).0;
    assert!(out.contains("opened and checked"), "{out}");
    #[cfg(unix)]
    assert_eq!(mode(&env.dir.join("backup.db")), 0o600);
    let copy = json(
        &env.run(&["outbox", "status", "--state", "backup.db", "--json"], &[])
            .await,
    );
    let orig = json(&env.run(&["outbox", "status", "--state", "s.db", "--json"], &[]).await);
    assert_eq!(copy["status"], orig["status"]);
    let again = env.run(&["backup", "backup.db", "--state", "s.db"], &[]).await;
    assert_eq!(again.status.code(), Some(2));

    let today = chrono::Utc::now().date_naive().to_string();
    let export = |format: &str, file: &str, extra: &[&str]| {
        let mut a = vec![
            "audit", "export", "--from", &today, "--to", &today, "--format", format, "--output", file, "--state",
            "s.db",
        ]
        .into_iter()
        .map(str::to_string)
        .collect::<Vec<_>>();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let args = export("csv", "audit.csv", &[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_ok(&env.run(&args, &[]).await);
    let csv = std::fs::read_to_string(env.dir.join("audit.csv")).unwrap();
    let rows: Vec<&str> = csv.lines().collect();
    assert!(rows[0].starts_with("at_utc,register,customer,kind,outcome"), "{csv}");
    assert_eq!(rows.len(), 3, "the delivered add and the cancel: {csv}");
    assert!(
        rows[1].contains(",attempt,delivered:added,add,") && rows[1].contains(",201,"),
        "{csv}"
    );
    assert!(
        rows[2].contains(",operator,cancelled,remove,") && rows[2].contains(",test"),
        "{csv}"
    );
    assert!(!csv.contains(x.as_str()), "masked: {csv}");
    #[cfg(unix)]
    assert_eq!(mode(&env.dir.join("audit.csv")), 0o600);

    let args = export("jsonl", "audit.jsonl", &["--customer", &x, "--show-id"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_ok(&env.run(&args, &[]).await);
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(env.dir.join("audit.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["customer"], x.as_str(), "in full when asked");

    let args = export("xlsx", "audit.xlsx", &[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_ok(&env.run(&args, &[]).await);
    let xlsx = std::fs::read(env.dir.join("audit.xlsx")).unwrap();
    #[cfg(unix)]
    assert_eq!(mode(&env.dir.join("audit.xlsx")), 0o600);
    assert_xlsx(&xlsx);
    // What a compliance officer's spreadsheet sees: the same rows as the CSV, read by openpyxl.
    let sheet = openpyxl_rows(&env.dir.join("audit.xlsx"));
    assert_eq!(sheet.len(), 3, "a header and the two rows: {sheet:?}");
    assert_eq!(sheet[0][..5], ["at_utc", "register", "customer", "kind", "outcome"]);
    assert!(sheet[1].iter().any(|c| c == "delivered:added"), "{sheet:?}");
    assert!(sheet[2].iter().any(|c| c == "cancelled"), "{sheet:?}");
    assert!(!format!("{sheet:?}").contains(x.as_str()), "masked: {sheet:?}");
}

/// Every row of the workbook's first sheet as openpyxl reads it (cells as text, empty as "").
fn openpyxl_rows(path: &std::path::Path) -> Vec<Vec<String>> {
    const READ: &str = "import json, sys, openpyxl\n\
        wb = openpyxl.load_workbook(sys.argv[1], read_only=True)\n\
        rows = [['' if c is None else str(c) for c in r] for r in wb.worksheets[0].iter_rows(values_only=True)]\n\
        print(json.dumps(rows))\n";
    let out = crate::util::required_tool("python3", &["-c", "import openpyxl"], "python3 -m pip install openpyxl")
        .args(["-c", READ])
        .arg(path)
        .output()
        .unwrap();
    let (stdout, stderr) = crate::util::output_text(&out);
    assert!(
        out.status.success(),
        "openpyxl cannot open {}: {stderr}",
        path.display()
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// A workbook as spreadsheet programs read it: a ZIP archive (local headers and an end of
/// central directory) holding the parts a workbook must have.
fn assert_xlsx(bytes: &[u8]) {
    assert!(bytes.starts_with(b"PK\x03\x04"), "not a ZIP archive");
    let eocd = bytes
        .windows(4)
        .rposition(|w| w == b"PK\x05\x06")
        .expect("an end of central directory");
    let entries = u16::from_le_bytes([bytes[eocd + 10], bytes[eocd + 11]]) as usize;
    let cd = u32::from_le_bytes(bytes[eocd + 16..eocd + 20].try_into().unwrap()) as usize;
    let mut names = vec![];
    let mut at = cd;
    for _ in 0..entries {
        assert_eq!(&bytes[at..at + 4], b"PK\x01\x02", "a central directory entry");
        let len = |o: usize| u16::from_le_bytes([bytes[at + o], bytes[at + o + 1]]) as usize;
        let (n, e, c) = (len(28), len(30), len(32));
        names.push(String::from_utf8(bytes[at + 46..at + 46 + n].to_vec()).unwrap());
        at += 46 + n + e + c;
    }
    for part in ["[Content_Types].xml", "xl/workbook.xml", "xl/worksheets/sheet1.xml"] {
        assert!(names.iter().any(|n| n == part), "{part} missing: {names:?}");
    }
}
