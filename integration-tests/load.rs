//! `kfr load` end to end: the built binary against the in-process mock (KFR half ingesting
//! asynchronously), with small batch limits and high ingest rates so multi-batch paths take
//! milliseconds. Covers every input format, BOM/CRLF, the refusal paths, resume after a kill at
//! each stage (via the test-only `KFR_TEST_ABORT_AT`), the delete barrier and the exit codes.
//!
//! All identifiers are synthetic, generated here with valid check digits.

use crate::util::{ORG, certs_local, kfr, output_text};
use kfr::mock::MockServer;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// A fast ingest rate for tests (the mock's and the one `kfr load` is told).
pub(crate) const RATE: u64 = 200_000;

/// The smallest batch limit: about 35 dated entries per batch.
const SMALL: &str = "1024";

pub(crate) struct Env {
    _d: tempfile::TempDir,
    pub(crate) dir: PathBuf,
    pub(crate) mock: MockServer,
}

pub(crate) async fn setup() -> Env {
    setup_with_rate(RATE).await
}

/// A test directory with certificates and a mock ingesting `rate` relationships a second.
pub(crate) async fn setup_with_rate(rate: u64) -> Env {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().to_owned();
    let (dp, u) = (dir.clone(), url.clone());
    tokio::task::spawn_blocking(move || certs_local(&dp, &u)).await.unwrap();
    use rustls_pki_types::pem::PemObject as _;
    let pem = std::fs::read(dir.join("ca.pem")).unwrap();
    let ders: Vec<Vec<u8>> = rustls_pki_types::CertificateDer::pem_slice_iter(&pem)
        .map(|c| c.unwrap().to_vec())
        .collect();
    let mut cfg = kfr::mock::MockConfig::new(ders);
    cfg.ingest_rate = rate;
    let mock = MockServer::start(listener, cfg).await.unwrap();
    Env { _d: d, dir, mock }
}

impl Env {
    /// A test directory `d` (kfr.toml and certificates in it) and the mock it points at.
    pub(crate) fn new(d: tempfile::TempDir, mock: MockServer) -> Env {
        let dir = d.path().to_owned();
        Env { _d: d, dir, mock }
    }

    /// Runs `kfr --config kfr.toml <args>` in the test directory.
    pub(crate) async fn run(&self, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
        let dir = self.dir.clone();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        tokio::task::spawn_blocking(move || {
            let mut c = kfr(&dir);
            c.arg("--config").arg(dir.join("kfr.toml")).args(&args);
            for (k, v) in env {
                c.env(k, v);
            }
            c.output().unwrap()
        })
        .await
        .unwrap()
    }

    /// `kfr load FILE --state STATE` with the fast test settings and `extra` flags.
    pub(crate) async fn load(
        &self,
        file: &str,
        state: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> std::process::Output {
        let rate = RATE.to_string();
        let mut args = vec![
            "load",
            file,
            "--state",
            state,
            "--ingest-rate",
            &rate,
            "--max-batch-bytes",
            SMALL,
            // Test files are written just before the load: no settle wait (its own test sets one).
            "--settle-secs",
            "0",
        ];
        args.extend_from_slice(extra);
        self.run(&args, env).await
    }

    pub(crate) fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// Active relationships of our institution in the mock: identifier → start date.
    pub(crate) fn active(&self) -> BTreeMap<String, String> {
        self.mock
            .state()
            .relationships()
            .into_iter()
            .filter(|r| r.organization_id == ORG && r.end_date.is_none())
            .map(|r| (r.customer_id, r.start_date.to_string()))
            .collect()
    }

    pub(crate) fn ended(&self) -> Vec<String> {
        self.mock
            .state()
            .relationships()
            .into_iter()
            .filter(|r| r.organization_id == ORG && r.end_date.is_some())
            .map(|r| r.customer_id)
            .collect()
    }

    pub(crate) fn batches_accepted(&self) -> u64 {
        self.mock.state().snapshot().batches_accepted
    }

    fn today(&self) -> String {
        self.mock.state().clock().today().to_string()
    }
}

/// `n` valid synthetic identifiers, unique for distinct `seed`s: fødselsnumre (K1 remainder 0,
/// as issued before 2032) and test organisation numbers (first digit 3), alternating.
/// A store with a load still at work on it: a new [`Env`] whose mock ingests 60 entries a
/// second, and a load of 240 customers (`ids(seed, 240)`, `c.csv`) on `s.db` started in the
/// background. Its waits are bounded (`confirm_secs`), so a failed assertion (the mock then
/// gone) cannot leave it retrying for the default 30 minutes while the runtime waits for it.
pub(crate) async fn busy_store(
    seed: u32,
    confirm_secs: &'static str,
) -> (std::sync::Arc<Env>, tokio::task::JoinHandle<std::process::Output>) {
    let env = std::sync::Arc::new(setup().await);
    env.mock.state().set_ingest_rate(60);
    let id = ids(seed, 240);
    env.write("c.csv", &id.iter().map(|i| format!("{i}\n")).collect::<String>());
    let running = env.clone();
    let load = tokio::spawn(async move {
        running
            .load(
                "c.csv",
                "s.db",
                &["--outage-wait-secs", "20", "--confirm-timeout-secs", confirm_secs],
                &[],
            )
            .await
    });
    (env, load)
}

pub(crate) fn ids(seed: u32, n: usize) -> Vec<String> {
    use kfr::ids::synthetic::{complete_org, complete_person};
    let mut out = vec![];
    let mut ind = 0u32;
    let mut org = 3_000_000 + seed * 10_000;
    // Persons: born in year (seed % 100), individual numbers counting up through days and months.
    while out.len() < n {
        if out.len() % 2 == 0 {
            ind += 1;
            let (day, month) = (1 + ind / 1000 % 28, 1 + ind / 28_000 % 12);
            let head = format!("{day:02}{month:02}{:02}{:03}", seed % 100, ind % 1000);
            out.extend(complete_person(&head));
        } else {
            org += 1;
            out.extend(complete_org(&format!("3{org:07}")));
        }
    }
    out
}

/// Start dates, varied and in the past.
pub(crate) fn date(i: usize) -> String {
    format!("{}-{:02}-{:02}", 2000 + i % 20, 1 + i % 12, 1 + i % 28)
}

pub(crate) fn assert_ok(out: &std::process::Output) -> (String, String) {
    let (o, e) = output_text(out);
    assert_eq!(out.status.code(), Some(0), "stdout:\n{o}\nstderr:\n{e}");
    (o, e)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_input_format_loads_every_valid_line_with_its_start_date() {
    let env = setup().await;
    let today = env.today();
    let mut expected: BTreeMap<String, String> = BTreeMap::new();
    type Case = (
        &'static str,
        fn(&str, &str) -> String,
        Option<&'static str>,
        &'static str,
        &'static str,
    );
    let cases: [Case; 7] = [
        ("plain.txt", |id, _| format!("{id}\n"), None, "", "(ID)"),
        (
            "semi.csv",
            |id, d| format!("{id};{d}\n"),
            Some("d"),
            "",
            "(ID;YYYY-MM-DD)",
        ),
        (
            "comma.csv",
            |id, d| format!("{id},{d}\n"),
            Some("d"),
            "",
            "(ID,YYYY-MM-DD)",
        ),
        (
            "hash.txt",
            |id, d| format!("{id}#{d}\n"),
            Some("d"),
            "",
            "(ID#YYYY-MM-DD)",
        ),
        (
            "header.csv",
            |id, d| format!("x;{id};{d};\n"),
            Some("d"),
            "navn;kundeid;startdato;sluttdato\n",
            "id = kundeid, start = startdato, end = sluttdato",
        ),
        (
            "bom_crlf.csv",
            |id, d| format!("{id},{d}\r\n\r\n"),
            Some("d"),
            "\u{feff}customer_id,start_date\r\n",
            "[UTF-8 BOM, CRLF]",
        ),
        (
            "crlf_plain.txt",
            |id, _| format!("{id}\r\n"),
            None,
            "\u{feff}",
            "[UTF-8 BOM, CRLF]",
        ),
    ];
    for (n, (name, line, dated, head, stated)) in cases.iter().enumerate() {
        let ids = ids(10 + n as u32, 80);
        let mut text = head.to_string();
        for (i, id) in ids.iter().enumerate() {
            text.push_str(&line(id, &date(i)));
            expected.insert(id.clone(), if dated.is_some() { date(i) } else { today.clone() });
        }
        env.write(name, &text);
        let state = format!("{name}.db");
        let out = env.load(name, &state, &[], &[]).await;
        let (stdout, _) = assert_ok(&out);
        assert!(
            stdout.contains(stated),
            "{name}: format not stated as {stated}:\n{stdout}"
        );
        assert!(stdout.contains("valid: 80 unique"), "{name}: {stdout}");
        assert!(stdout.contains("complete: 80 relationships in"), "{name}: {stdout}");
    }
    // The header file also carries closed rows (end date today or earlier): counted, not loaded.
    let closed = ids(90, 4);
    let text = format!(
        "kundeid;startdato;sluttdato\n{};2001-01-01;{today}\n{};2001-01-01;2002-02-02\n{};2001-01-01;2999-01-01\n{};;\n",
        closed[0], closed[1], closed[2], closed[3]
    );
    env.write("closed.csv", &text);
    let out = env.load("closed.csv", "closed.db", &[], &[]).await;
    let (stdout, _) = assert_ok(&out);
    assert!(stdout.contains("closed: 2"), "{stdout}");
    expected.insert(closed[2].clone(), "2001-01-01".into());
    expected.insert(closed[3].clone(), today.clone());
    assert_eq!(
        env.active(),
        expected,
        "every valid active line is registered with its start date"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_plans_with_exact_sizes_and_uploads_nothing() {
    let env = setup().await;
    let ids = ids(1, 200);
    let mut text = String::new();
    for (i, id) in ids.iter().enumerate() {
        text.push_str(&format!("{id};{}\n", date(i)));
    }
    // A duplicate with a later date folds into the earlier one.
    text.push_str(&format!("{};2024-01-01\n", ids[0]));
    env.write("c.csv", &text);
    let out = env
        .run(
            &[
                "load",
                "c.csv",
                "--dry-run",
                "--max-batch-bytes",
                SMALL,
                "--max-per-day",
                "100",
            ],
            &[],
        )
        .await;
    let (stdout, _) = assert_ok(&out);
    for want in [
        "valid: 200 unique",
        "duplicates: 1",
        "rejected: 0",
        "fødselsnummer: 100",
        "test organisation number: 100",
        "expected ingestion at 250/s: 1 s",
        "tell Bits in advance: no",
        "schedule (at most 100 a day):",
        "day   2: batches",
    ] {
        assert!(stdout.contains(want), "missing {want:?}:\n{stdout}");
    }
    let sizes: Vec<u64> = stdout
        .lines()
        .filter(|l| l.trim_start().starts_with("batch "))
        .map(|l| {
            l.split("relationships")
                .nth(1)
                .unwrap()
                .split_whitespace()
                .next()
                .unwrap()
                .replace(',', "")
                .parse()
                .unwrap()
        })
        .collect();
    assert!(sizes.len() >= 6, "{stdout}");
    assert!(sizes.iter().all(|s| *s <= 1024));
    assert!(
        !env.dir.join("kfr-state.db").exists(),
        "a dry run creates no state store"
    );
    assert_eq!(env.batches_accepted(), 0);

    // Over 100,000 in a day: Bits must be told. Plain IDs, generated compactly.
    let many = self::ids(2, 100_001).join("\n");
    env.write("many.txt", &many);
    let out = env.run(&["load", "many.txt", "--dry-run", "--json"], &[]).await;
    let (stdout, _) = assert_ok(&out);
    let v: serde_json::Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    assert_eq!(v["plan"]["notify_bits"], true, "{v}");
    assert_eq!(v["counts"]["valid_unique"], 100_001);
}

/// Issue 20: the rejects file keeps a rejected line's bytes as they were: a Latin-1 export's
/// æøå stay Latin-1 bytes (they were replaced with U+FFFD).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rejects_file_keeps_latin1_bytes_as_they_were() {
    let env = setup().await;
    let ids = ids(4, 5);
    let mut bytes: Vec<u8> = b"kundeid;startdato;navn\n".to_vec();
    for id in &ids[1..] {
        bytes.extend_from_slice(format!("{id};2020-01-02;Ola\n").as_bytes());
    }
    // A start date in the future: rejected. The name is Latin-1: "Blåbær Øst".
    let bad: Vec<u8> = [format!("{};2999-01-01;Bl", ids[0]).as_bytes(), b"\xE5b\xE6r \xD8st"].concat();
    bytes.extend_from_slice(&bad);
    bytes.push(b'\n');
    std::fs::write(env.dir.join("l1.csv"), &bytes).unwrap();
    let out = env.load("l1.csv", "s.db", &["--skip-invalid"], &[]).await;
    assert_ok(&out);
    let rejects = std::fs::read(env.dir.join("l1.rejects.csv")).unwrap();
    let want = [b"6;start_in_future;".as_slice(), &bad, b"\n"].concat();
    assert!(rejects.ends_with(&want), "{:?}", String::from_utf8_lossy(&rejects));
    assert_eq!(env.active().len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_line_refuses_the_load_and_skip_invalid_writes_the_rejects_file() {
    let env = setup().await;
    let ids = ids(3, 60);
    let bad_person = {
        // Wrong second check digit of a valid number.
        let mut b = ids[0].clone().into_bytes();
        b[10] = if b[10] == b'9' { b'0' } else { b[10] + 1 };
        String::from_utf8(b).unwrap()
    };
    let mut text = String::new();
    for (i, id) in ids.iter().enumerate().skip(1) {
        text.push_str(&format!("{id};{}\n", date(i)));
        if i == 2 {
            text.push_str(&format!("{bad_person};2020-01-01\n"));
        }
    }
    text.push_str(&format!("{};2999-01-01\n", ids[0]));
    env.write("c.csv", &text);
    let out = env.load("c.csv", "s.db", &["--report", "r.json"], &[]).await;
    let (stdout, stderr) = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stderr.contains("c.csv:3: *********"),
        "line number and masked text: {stderr}"
    );
    assert!(stderr.contains("[second_check_digit]"), "{stderr}");
    assert!(
        stderr.contains("c.csv:61: ") && stderr.contains("[start_in_future]"),
        "{stderr}"
    );
    assert!(
        stderr.contains("nothing was uploaded") && stderr.contains("hint: "),
        "{stderr}"
    );
    assert!(
        !stderr.contains(&bad_person) && !stderr.contains(&ids[0]),
        "person IDs are masked"
    );
    assert_eq!(env.batches_accepted(), 0, "nothing uploaded");
    assert!(env.active().is_empty());

    let out = env
        .load("c.csv", "s.db", &["--skip-invalid", "--report", "r.json"], &[])
        .await;
    let (_, stderr) = assert_ok(&out);
    assert!(stderr.contains("2 rejected line(s) written to"), "{stderr}");
    let rejects = std::fs::read_to_string(env.dir.join("c.rejects.csv")).unwrap();
    assert_eq!(rejects.lines().count(), 3, "{rejects}");
    assert!(
        rejects.contains(&format!("3;second_check_digit;{bad_person};2020-01-01")),
        "{rejects}"
    );
    assert_eq!(env.active().len(), 59);
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(env.dir.join("r.json")).unwrap()).unwrap();
    assert_eq!(report["counts"]["rejected"], 2);
    assert_eq!(report["rejects"][0]["line"], 3);
    assert_eq!(report["job_status"], "confirmed");
    let batches = report["batches"].as_array().unwrap();
    assert_eq!(batches.len() as u64, env.batches_accepted());
    assert!(
        batches
            .iter()
            .all(|b| b["status"] == "confirmed" && b["correlation_id"].is_string())
    );
    let md = std::fs::read_to_string(env.dir.join("r.md")).unwrap();
    assert!(
        md.contains("# KFR initial load report") && md.contains("| 3 | `*********"),
        "{md}"
    );
    assert!(!md.contains(&bad_person) && !serde_json::to_string(&report).unwrap().contains(&bad_person));
}

/// Kill the load at every stage, then `--resume`: it completes, the register is complete, and no
/// batch KFR accepted is uploaded again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_a_kill_at_each_stage_never_uploads_an_accepted_batch_twice() {
    let env = setup().await;
    // (stage, batches KFR sees in all: 3, or 4 when the killed upload never left the process)
    let stages = [
        ("planned", 3),
        ("uploading:2", 3),
        ("sent:2", 3),
        ("accepted:2", 3),
        ("confirmed:1", 3),
        ("confirmed:3", 3),
        ("deletes", 3),
    ];
    for (n, (stage, sent)) in stages.iter().enumerate() {
        let ids = ids(20 + n as u32, 80);
        let text: String = ids
            .iter()
            .enumerate()
            .map(|(i, id)| format!("{id};{}\n", date(i)))
            .collect();
        let file = format!("c{n}.csv");
        env.write(&file, &text);
        let state = format!("s{n}.db");
        let before = env.batches_accepted();
        let out = env.load(&file, &state, &[], &[("KFR_TEST_ABORT_AT", stage)]).await;
        assert_ne!(out.status.code(), Some(0), "{stage}: the abort hook fired");
        assert!(output_text(&out).1.contains("test abort at"), "{stage}");
        let out = env.load(&file, &state, &["--resume", "--report", "r.json"], &[]).await;
        let (stdout, stderr) = assert_ok(&out);
        assert!(
            stdout.contains("complete: 80 relationships in 3 batches"),
            "{stage}: {stdout}{stderr}"
        );
        assert_eq!(
            env.batches_accepted() - before,
            *sent,
            "{stage}: batches uploaded\n{stderr}"
        );
        let active = env.active();
        assert!(
            ids.iter().all(|id| active.contains_key(id)),
            "{stage}: register complete"
        );
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(env.dir.join("r.json")).unwrap()).unwrap();
        assert_eq!(report["resumed"], true);
        if stage.starts_with("sent") {
            assert!(
                stderr.contains("was accepted before the stop: not sending it again"),
                "{stderr}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_file_is_refused_on_resume() {
    let env = setup().await;
    let ids = ids(40, 50);
    let text: String = ids.iter().map(|id| format!("{id}\n")).collect();
    env.write("c.csv", &text);
    let out = env
        .load("c.csv", "s.db", &[], &[("KFR_TEST_ABORT_AT", "accepted:1")])
        .await;
    assert_ne!(out.status.code(), Some(0));
    env.write("c.csv", &format!("{text}{}\n", self::ids(41, 1)[0]));
    let out = env.load("c.csv", "s.db", &["--resume"], &[]).await;
    let (_, stderr) = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("has changed since load job 1 was planned"), "{stderr}");
    assert!(stderr.contains("hint: resume with the unchanged file"), "{stderr}");
    // A new load is refused while the job is unfinished (usage: exit 2) ...
    let out = env.load("c.csv", "s.db", &[], &[]).await;
    let (_, stderr) = output_text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("is not confirmed complete yet") && stderr.contains("--resume"),
        "{stderr}"
    );
    // ... and the original file resumes.
    env.write("c.csv", &text);
    assert_ok(&env.load("c.csv", "s.db", &["--resume"], &[]).await);
}

/// Onboarding D-3 step 4: a remove during the load is held in the store, and sent by the load
/// once its last batch is confirmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remove_during_the_load_is_held_until_the_load_is_confirmed() {
    let env = setup().await;
    let ids = ids(50, 80);
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
    // ids[0] (a person) is in batch 1, already stored; ids[1] (an org) too.
    let out = env.run(&["remove", &ids[0], "--state", "s.db"], &[]).await;
    let (stdout, _) = assert_ok(&out);
    assert!(stdout.starts_with("held: fødselsnummer"), "{stdout}");
    assert!(stdout.contains("load job 1 is not confirmed"), "{stdout}");
    assert!(!stdout.contains(&ids[0]), "person ID not printed: {stdout}");
    let out = env.run(&["remove", &ids[1], "--state", "s.db", "--json"], &[]).await;
    let (stdout, _) = assert_ok(&out);
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["outcome"], "held");
    let out = env.run(&["remove", &ids[3], "--state", "s.db"], &[]).await;
    assert!(assert_ok(&out).0.starts_with("held: "));
    // The same KFR spelt another way (localhost, trailing slash) is the same register.
    let respelt = format!("{}/", env.mock.kfr_base_url().replace("127.0.0.1", "localhost"));
    let out = env
        .run(
            &["remove", &ids[5], "--state", "s.db"],
            &[("KFR_KFR_BASE_URL", &respelt)],
        )
        .await;
    assert!(assert_ok(&out).0.starts_with("held: "));
    assert!(env.ended().is_empty(), "nothing deleted while the load runs");
    assert!(env.active().contains_key(&ids[0]));

    let out = env
        .load("c.csv", "s.db", &["--resume", "--report", "r.json"], &[])
        .await;
    let (stdout, _) = assert_ok(&out);
    assert_eq!(stdout.matches("held operation sent: remove").count(), 4, "{stdout}");
    assert!(stdout.contains("removed"), "{stdout}");
    let mut ended = env.ended();
    ended.sort();
    let mut want = vec![ids[0].clone(), ids[1].clone(), ids[3].clone(), ids[5].clone()];
    want.sort();
    assert_eq!(ended, want);
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(env.dir.join("r.json")).unwrap()).unwrap();
    assert_eq!(report["held_operations_sent"].as_array().unwrap().len(), 4);

    // With the load confirmed, remove goes straight to KFR, with or without --state.
    let out = env.run(&["remove", &ids[2], "--state", "s.db"], &[]).await;
    let (stdout, _) = assert_ok(&out);
    assert!(stdout.starts_with("removed"), "{stdout}");
    let out = env.run(&["remove", &ids[4]], &[]).await;
    let (stdout, _) = assert_ok(&out);
    assert!(stdout.starts_with("removed"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_progress_events_and_usage_errors() {
    let env = setup().await;
    let ids = ids(60, 80);
    let text: String = ids
        .iter()
        .enumerate()
        .map(|(i, id)| format!("{id};{}\n", date(i)))
        .collect();
    env.write("c.csv", &text);
    let out = env.load("c.csv", "s.db", &["--json"], &[]).await;
    let (stdout, _) = assert_ok(&out);
    let events: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let names: Vec<&str> = events.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(names.first(), Some(&"plan"));
    assert_eq!(names.last(), Some(&"done"));
    assert_eq!(
        names.iter().filter(|n| **n == "batch_confirmed").count(),
        3,
        "{names:?}"
    );
    assert_eq!(events.last().unwrap()["status"], "confirmed");

    for (args, want) in [
        (
            vec!["load", "c.csv", "--max-batch-bytes", "100"],
            "--max-batch-bytes 100",
        ),
        (
            vec!["load", "c.csv", "--resume", "--state", "none.db"],
            "nothing to resume",
        ),
        (vec!["load", "c.csv", "--dry-run", "--resume"], "cannot be combined"),
    ] {
        let out = env.run(&args, &[]).await;
        let (_, stderr) = output_text(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(want), "{stderr}");
    }
    let out = env.run(&["load", "missing.csv", "--state", "m.db"], &[]).await;
    let (_, stderr) = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("opening the input missing.csv"), "{stderr}");
}

/// KFR slower than promised: confirmation gives up after the timeout naming what is missing
/// (exit 1, job resumable), and the resume confirms without uploading anything again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_not_visible_in_time_fails_with_what_is_missing_and_resumes_without_resending() {
    let env = setup().await;
    let ids = ids(70, 80);
    let text: String = ids
        .iter()
        .enumerate()
        .map(|(i, id)| format!("{id};{}\n", date(i)))
        .collect();
    env.write("c.csv", &text);
    env.mock.state().set_ingest_rate(1);
    let out = env.load("c.csv", "s.db", &["--confirm-timeout-secs", "1"], &[]).await;
    let (stdout, stderr) = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stderr.contains("batch 1 (CorrelationID"), "{stderr}");
    assert!(stderr.contains("not confirmed stored after 1 s"), "{stderr}");
    assert!(stderr.contains("not visible by own lookup:"), "{stderr}");
    assert!(
        ids.iter().all(|id| !stderr.contains(id.as_str()) || id.len() == 9),
        "no person ID in full: {stderr}"
    );
    assert_eq!(env.batches_accepted(), 1);
    env.mock.state().set_ingest_rate(RATE);
    let out = env.load("c.csv", "s.db", &["--resume"], &[]).await;
    assert_ok(&out);
    assert_eq!(env.batches_accepted(), 3, "batch 1 was not uploaded again");
    assert_eq!(env.active().len(), 80);
}

/// `--max-per-day`: the executor stops when the next batch would exceed today's share (exit 0,
/// job left running so deletes stay held), and says how to continue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_per_day_pauses_the_load_when_the_day_is_full() {
    let env = setup().await;
    let ids = ids(80, 80);
    let text: String = ids
        .iter()
        .enumerate()
        .map(|(i, id)| format!("{id};{}\n", date(i)))
        .collect();
    env.write("c.csv", &text);
    let out = env.load("c.csv", "s.db", &["--max-per-day", "40"], &[]).await;
    let (stdout, _) = assert_ok(&out);
    assert!(stdout.contains("paused for today after 2 of"), "{stdout}");
    assert!(stdout.contains("--resume"), "{stdout}");
    assert_eq!(env.active().len(), 40);
    let out = env.run(&["remove", &ids[0], "--state", "s.db"], &[]).await;
    assert!(
        assert_ok(&out).0.starts_with("held:"),
        "the barrier stays up while paused"
    );
}

/// `-q`: nothing on stderr but errors. The plan of a dry run and the summary of a run are data
/// and still go to stdout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_prints_nothing_on_stderr_unless_something_fails() {
    let env = setup().await;
    let ids = ids(110, 80);
    let text: String = ids
        .iter()
        .enumerate()
        .map(|(i, id)| format!("{id};{}\n", date(i)))
        .collect();
    env.write("c.csv", &text);
    let out = env.run(&["-q", "load", "c.csv", "--dry-run"], &[]).await;
    let (stdout, stderr) = assert_ok(&out);
    assert_eq!(stderr, "", "a quiet dry run says nothing on stderr");
    assert!(stdout.contains("valid: 80 unique"), "{stdout}");

    let rate = RATE.to_string();
    let args = [
        "-q",
        "load",
        "c.csv",
        "--state",
        "s.db",
        "--ingest-rate",
        &rate,
        "--max-batch-bytes",
        SMALL,
    ];
    let out = env.run(&args, &[]).await;
    let (stdout, stderr) = assert_ok(&out);
    assert_eq!(stderr, "", "no progress, job or batch messages");
    assert!(stdout.contains("complete: 80 relationships in 3 batches"), "{stdout}");
    // Without -q the same run is talkative on stderr (so the test above can fail).
    let out = env.load("c.csv", "t.db", &[], &[]).await;
    let (_, stderr) = assert_ok(&out);
    assert!(
        stderr.contains("load job 1 created") && stderr.contains("batch 3 confirmed"),
        "{stderr}"
    );

    // A refused load still explains itself under -q: the bad line, the error and its hint.
    env.write("bad.csv", &format!("{text}123\n"));
    let out = env.run(&["-q", "load", "bad.csv", "--dry-run"], &[]).await;
    let (_, stderr) = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("bad.csv:81: "), "{stderr}");
    assert!(stderr.contains("error: ") && stderr.contains("hint: "), "{stderr}");
}

/// `kfr load F --dry-run | head -1`: the reader goes away after one line; kfr exits cleanly
/// instead of panicking on the closed pipe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stdout_is_a_clean_exit() {
    use std::io::BufRead as _;
    let env = setup().await;
    // A plan of about 1,000 batch lines: far more than a pipe buffers, so writing it must meet
    // the closed pipe.
    env.write("many.txt", &self::ids(111, 30_000).join("\n"));
    let dir = env.dir.clone();
    let (code, first, stderr) = tokio::task::spawn_blocking(move || {
        let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("kfr"));
        for (k, _) in std::env::vars() {
            if k.starts_with("KFR_") {
                cmd.env_remove(k);
            }
        }
        let mut child = cmd
            .current_dir(&dir)
            .env("NO_COLOR", "1")
            .args([
                "--config",
                "kfr.toml",
                "load",
                "many.txt",
                "--dry-run",
                "--max-batch-bytes",
                SMALL,
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        // The reader (and with it the pipe) is dropped here, like `head -1` exiting.
        let out = child.wait_with_output().unwrap();
        (
            out.status.code(),
            first,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap();
    assert!(first.starts_with("Plan for many.txt"), "{first}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(code, Some(0), "{stderr}");
}
