//! `kfr checklist` end to end: the built-in cases against the in-process mock, faithful and with
//! each `--quirk`, as a library (fast, one loop shares the PKI) and as the binary a tester runs
//! (exit codes, progress lines, the four report files).

use crate::util::{ORG, config_for, kfr, output_text, pki, start_mock, token_client};
use kfr::checklist::cases::{self, CaseFile};
use kfr::checklist::runner::Cleanup;
use kfr::checklist::{CaseResult, DEFAULT_CASES, DEFAULT_CASES_NAME, RunConfig, Runner, Verdict};
use kfr::mock::{MockServer, Quirk};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn built_in() -> CaseFile {
    cases::parse(DEFAULT_CASES, DEFAULT_CASES_NAME).expect("the built-in cases parse")
}

/// A mock that ingests fast (the initial-load case's 200 filler entries take about 0.2 s), yet
/// slowly enough that under `batch-visible-before-ingested` the case's delete reliably
/// overtakes ingestion even on a loaded machine: it follows the batch by three requests.
async fn mock_with(quirk: Option<Quirk>) -> MockServer {
    start_mock(|c| {
        c.ingest_rate = 1000;
        c.quirks.extend(quirk);
    })
    .await
}

async fn run_in_process(mock: &MockServer, file: &CaseFile) -> (Vec<CaseResult>, Cleanup) {
    let cfg = RunConfig {
        env: kfr::environment::Environment::Local,
        org_number: ORG.into(),
        kfr_base_url: url::Url::parse(&mock.kfr_base_url()).unwrap(),
        other_fid: None,
        other_scope: None,
        ingest_timeout: Duration::from_secs(10),
        poll_interval: Duration::from_millis(10),
    };
    let mut runner = Runner::new(reqwest::Client::new(), token_client(mock, |_| {}), cfg, file, &[]).unwrap();
    runner.preflight().await.expect("the register starts empty");
    let results = runner.run(&file.cases, |_, _| {}).await;
    let cleanup = runner.cleanup().await;
    (results, cleanup)
}

fn failed(results: &[CaseResult]) -> Vec<&str> {
    results
        .iter()
        .filter(|r| r.verdict == Verdict::Fail)
        .map(|r| r.id.as_str())
        .collect()
}

/// Waits until the mock has ingested everything, then returns its open relationships.
async fn settled_active(mock: &MockServer) -> usize {
    for _ in 0..200 {
        let s = mock.state().snapshot();
        if s.ingest_queue == 0 {
            return s.relationships_active;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the mock never finished ingesting");
}

/// Which case each quirk must break. Every quirk is listed (checked below), so a new quirk
/// without a case that catches it fails this test.
const QUIRK_CASES: [(Quirk, &str); 6] = [
    (Quirk::DuplicateAdd201, "KFR-03"),
    (Quirk::QuotedBoundaryAccepted, "KFR-15"),
    (Quirk::InvalidIdWrongCode, "KFR-08"),
    (Quirk::BatchVisibleBeforeIngested, "KFR-17"),
    (Quirk::ForeignFidAccepted, "KFR-10"),
    (Quirk::DeleteMissing204, "KFR-07"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_faithful_mock_passes_every_case_and_the_register_is_left_as_found() {
    let file = built_in();
    assert!(file.cases.len() >= 17);
    let mock = mock_with(None).await;
    let (results, cleanup) = run_in_process(&mock, &file).await;
    assert_eq!(failed(&results), Vec::<&str>::new(), "{results:#?}");
    assert!(cleanup.leftovers.is_empty(), "{cleanup:?}");
    assert!(
        cleanup.removed > 200,
        "the initial-load filler is removed too: {cleanup:?}"
    );
    assert_eq!(
        settled_active(&mock).await,
        0,
        "nothing the run added is still registered"
    );

    // The evidence: every step that reached KFR carries its CorrelationID, and the ones that
    // expect the echo got it.
    for r in &results {
        assert!(r.duration_ms < 10_000 && r.finished >= r.started, "{r:?}");
        for s in r.steps.iter().filter(|s| s.status.is_some()) {
            assert!(s.correlation_id.is_some(), "{} step {}", r.id, s.n);
        }
    }
    let add = &results.iter().find(|r| r.id == "KFR-02").unwrap().steps[0];
    assert_eq!((add.status, add.correlation_id_echoed), (Some(201), Some(true)));
    // Identifiers appear masked only.
    let json = serde_json::to_string(&results).unwrap();
    for id in file.identifiers.values() {
        assert!(!json.contains(id.as_str()), "{id} appears in full");
    }
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_quirk_fails_exactly_its_case_and_the_others_pass() {
    let listed: BTreeSet<Quirk> = QUIRK_CASES.iter().map(|(q, _)| *q).collect();
    assert_eq!(
        listed,
        Quirk::ALL.into_iter().collect(),
        "every quirk needs a case that catches it"
    );
    let file = built_in();
    for (quirk, case) in QUIRK_CASES {
        let mock = mock_with(Some(quirk)).await;
        let state: serde_json::Value = reqwest::get(format!("{}/_mock/state", mock.base_url()))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            state["kfr"]["quirks"],
            serde_json::json!([quirk.name()]),
            "the mock owns up to its quirk"
        );
        let (results, cleanup) = run_in_process(&mock, &file).await;
        assert_eq!(failed(&results), vec![case], "quirk {quirk}: {results:#?}");
        if quirk == Quirk::BatchVisibleBeforeIngested {
            // Deletes that overtook ingestion found nothing; the run says so.
            assert!(!cleanup.leftovers.is_empty(), "quirk {quirk}: {cleanup:?}");
        } else {
            assert!(cleanup.leftovers.is_empty(), "quirk {quirk}: {cleanup:?}");
            assert_eq!(settled_active(&mock).await, 0, "quirk {quirk}");
        }
        mock.shutdown().await;
    }
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

async fn run_bin(dir: &Path, args: Vec<String>) -> Run {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let out = kfr(&dir).args(&args).output().unwrap();
        let (stdout, stderr) = output_text(&out);
        Run {
            code: out.status.code(),
            stdout,
            stderr,
        }
    })
    .await
    .unwrap()
}

fn args(cfg: &Path, rest: &[&str]) -> Vec<String> {
    let mut v = vec!["--config".to_string(), cfg.display().to_string(), "checklist".into()];
    v.extend(rest.iter().map(|s| s.to_string()));
    v
}

fn setup(mock: &MockServer) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_for(dir.path(), &pki().client, &mock.base_url(), ORG);
    (dir, cfg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_writes_four_reports_and_exits_0_only_when_every_case_passes() {
    let mock = mock_with(None).await;
    let (dir, cfg) = setup(&mock);
    let report_dir = dir.path().join("R");
    let r = run_bin(dir.path(), args(&cfg, &["--report-dir", report_dir.to_str().unwrap()])).await;
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let n = built_in().cases.len();
    assert_eq!(
        r.stderr.lines().filter(|l| l.contains(" PASS ")).count(),
        n,
        "{}",
        r.stderr
    );

    let path = |ext: &str| report_dir.join(format!("kfr-checklist.{ext}"));
    for ext in ["md", "json", "xml", "xlsx"] {
        assert!(r.stdout.contains(path(ext).to_str().unwrap()), "{}", r.stdout);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(path(ext)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{ext}");
        }
    }
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(path("json")).unwrap()).unwrap();
    assert_eq!(json["institution"], ORG);
    assert_eq!(json["environment"], "local");
    assert_eq!(json["passed"], n);
    assert_eq!(json["cases"].as_array().unwrap().len(), n);
    let md = std::fs::read_to_string(path("md")).unwrap();
    assert!(md.contains(ORG) && md.contains(&mock.kfr_base_url()) && md.contains(&format!("{n} of {n} passed")));
    let xml = std::fs::read_to_string(path("xml")).unwrap();
    assert_eq!(xml.matches("<testcase ").count(), n);
    assert_eq!(xml.matches("<failure ").count(), 0);
    assert_eq!(&std::fs::read(path("xlsx")).unwrap()[..2], b"PK");
    let file = built_in();
    for text in [&md, &xml, &json.to_string()] {
        for id in file.identifiers.values().filter(|id| id.len() == 11) {
            assert!(!text.contains(id.as_str()), "{id} appears in full in a report");
        }
    }

    // The same register and binary against a quirky mock: the matching case fails, exit 1.
    let quirky = mock_with(Some(Quirk::DuplicateAdd201)).await;
    let (dir2, cfg2) = setup(&quirky);
    let r2 = dir2.path().join("R2");
    let r = run_bin(dir2.path(), args(&cfg2, &["--report-dir", r2.to_str().unwrap()])).await;
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    let fails: Vec<&str> = r.stderr.lines().filter(|l| l.contains(" FAIL ")).collect();
    assert_eq!(fails.len(), 1, "{}", r.stderr);
    assert!(fails[0].contains("KFR-03"), "{}", r.stderr);
    let xml = std::fs::read_to_string(r2.join("kfr-checklist.xml")).unwrap();
    assert_eq!(xml.matches("<failure ").count(), 1);
    mock.shutdown().await;
    quirky.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_set_ups_are_refused_before_anything_is_sent() {
    let mock = mock_with(None).await;
    let (dir, cfg) = setup(&mock);
    let report_dir = dir.path().join("R");
    let rd = report_dir.to_str().unwrap();

    // A malformed case file: file, line and reason; exit 2.
    let bad = dir.path().join("cases.toml");
    std::fs::write(
        &bad,
        "[identifiers]\nperson = \"15888610046\"\n\n[[case]]\nid = \"A\"\ntitle = \"x\"\n[[case.step]]\ndo = \"ad\"\n",
    )
    .unwrap();
    let r = run_bin(
        dir.path(),
        args(&cfg, &["--cases", bad.to_str().unwrap(), "--report-dir", rd]),
    )
    .await;
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(r.stderr.contains(&format!("{}:8:", bad.display())), "{}", r.stderr);
    assert!(r.stderr.contains("unknown variant `ad`"), "{}", r.stderr);

    // A real person's number as a test identity: refused, and not echoed in full.
    let r = run_bin(
        dir.path(),
        args(&cfg, &["--id", "person=02013299997", "--report-dir", rd]),
    )
    .await;
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(r.stderr.contains("not a synthetic identity"), "{}", r.stderr);
    assert!(!r.stderr.contains("02013299997"), "{}", r.stderr);

    // An unknown case id.
    let r = run_bin(dir.path(), args(&cfg, &["--only", "KFR-99", "--report-dir", rd])).await;
    assert_eq!(r.code, Some(2), "{}", r.stderr);

    assert_eq!(mock.state().snapshot().kfr_requests, 0, "nothing reached KFR");
    assert!(!report_dir.exists());

    // Production is refused.
    let prod = dir.path().join("prod.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let text: String = text
        .lines()
        .filter(|l| !l.starts_with("maskinporten_issuer") && !l.starts_with("kfr_base_url"))
        .map(|l| {
            if l.starts_with("env") {
                "env = \"prod\"\n".to_string()
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(&prod, text).unwrap();
    let r = run_bin(dir.path(), args(&prod, &["--report-dir", rd])).await;
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(r.stderr.contains("production"), "{}", r.stderr);
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_runs_the_chosen_cases_and_a_registered_identifier_stops_the_run() {
    let mock = mock_with(None).await;
    let (dir, cfg) = setup(&mock);
    let rd = dir.path().join("R");
    let r = run_bin(
        dir.path(),
        args(
            &cfg,
            &["--only", "KFR-02", "KFR-06", "--report-dir", rd.to_str().unwrap()],
        ),
    )
    .await;
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let lines: Vec<&str> = r.stderr.lines().filter(|l| l.contains(" PASS ")).collect();
    assert_eq!(lines.len(), 2, "{}", r.stderr);
    assert!(
        lines[0].contains("KFR-02") && lines[1].contains("KFR-06"),
        "{}",
        r.stderr
    );

    // Someone registered the run's person before it started: the run refuses (exit 1) rather
    // than pass or fail on a register it did not set up, and removes nothing.
    let add = run_bin(
        dir.path(),
        vec![
            "--config".into(),
            cfg.display().to_string(),
            "add".into(),
            "15888610046".into(),
        ],
    )
    .await;
    assert_eq!(add.code, Some(0), "{}", add.stderr);
    let r = run_bin(
        dir.path(),
        args(&cfg, &["--only", "KFR-02", "--report-dir", rd.to_str().unwrap()]),
    )
    .await;
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(
        r.stderr.contains("already registered") && r.stderr.contains("*********46"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("15888610046"), "{}", r.stderr);
    assert_eq!(mock.state().snapshot().relationships_active, 1);
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_for_a_refused_batch_fails_at_once_instead_of_polling_until_the_timeout() {
    let text = r#"
[settings]
other_fid = "311999907"
[identifiers]
probe = "27928110260"
[[case]]
id = "W-1"
title = "a refused batch is not waited for"
[[case.step]]
do = "request"
operation = "batch"
quoted_boundary = true
entries = [{ customer = "probe" }]
expect = { status = 403 }
[[case.step]]
do = "wait_ingested"
customer = "probe"
"#;
    let file = cases::parse(text, "w.toml").unwrap();
    let mock = mock_with(None).await;
    let started = std::time::Instant::now();
    let (results, cleanup) = run_in_process(&mock, &file).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "waited {:?}",
        started.elapsed()
    );
    assert_eq!(failed(&results), vec!["W-1"]);
    let wait = &results[0].steps[1];
    assert!(!wait.passed && wait.actual.contains("not shown"), "{wait:?}");
    assert!(results[0].steps[0].passed);
    assert!(cleanup.leftovers.is_empty(), "{cleanup:?}");
    mock.shutdown().await;
}
