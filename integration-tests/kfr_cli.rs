//! `kfr add`, `kfr remove`, `kfr lookup` as an operator runs them: the built binary against the
//! in-process mock, checking what is printed, the exit code, and what the mock's register saw.

use crate::util::{ORG, config_for, kfr, output_text, pki, start_mock};
use std::path::{Path, PathBuf};

/// A synthetic fødselsnummer that is valid in every environment (15.10.86, both check digits ok).
const FNR: &str = "15108695088";

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

async fn run(cfg: &Path, args: &[&str]) -> Run {
    let cfg = cfg.to_path_buf();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let out = kfr(cfg.parent().unwrap())
            .arg("--config")
            .arg(&cfg)
            .args(&args)
            .output()
            .unwrap();
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

/// The test PKI's institution certificate and a `kfr.toml` for the mock, in a temp dir.
fn setup(mock_url: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_for(dir.path(), &pki().client, mock_url, ORG);
    (dir, cfg)
}

async fn mock_state(base: &str) -> serde_json::Value {
    reqwest::get(format!("{base}/_mock/state"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_lookup_remove_round_trip_reports_each_state_and_exits_zero() {
    let mock = start_mock(|_| {}).await;
    let (_d, cfg) = setup(&mock.base_url());

    let r = run(&cfg, &["add", FNR]).await;
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(r.stdout.starts_with("added:"), "{}", r.stdout);
    let r = run(&cfg, &["add", FNR]).await;
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(r.stdout.starts_with("already present:"), "{}", r.stdout);

    let r = run(&cfg, &["lookup", FNR]).await;
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(r.stdout.contains(&format!("  {ORG}  ")), "{}", r.stdout);
    assert!(r.stdout.contains("activeAccount false"), "{}", r.stdout);

    let r = run(&cfg, &["lookup", FNR, "--json"]).await;
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(r.stdout.trim()).expect("lookup --json prints one JSON value");
    assert_eq!(v["banks"][0]["organizationID"], ORG);
    assert_eq!(v["banks"][0]["activeAccount"], false);
    assert_eq!(v["status"], 200);

    let r = run(&cfg, &["remove", FNR]).await;
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(r.stdout.starts_with("removed:"), "{}", r.stdout);
    let r = run(&cfg, &["remove", FNR, "--json"]).await;
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(v["outcome"], "not_found");
    assert_eq!(v["status"], 404);

    // Today's lookup no longer shows it; the period it was registered still does.
    let r = run(&cfg, &["lookup", FNR, "--json"]).await;
    let v: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(v["banks"], serde_json::json!([]), "{}", r.stdout);

    // Person identifiers never appear in full in what the commands print or log.
    for args in [["add", FNR], ["lookup", FNR], ["remove", FNR]] {
        let r = run(&cfg, &[args[0], args[1], "-vvv"]).await;
        assert!(
            !r.stdout.contains(FNR) && !r.stderr.contains(FNR),
            "{args:?} printed the identifier in full:\n{}\n{}",
            r.stdout,
            r.stderr
        );
    }
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_identifier_is_refused_locally_naming_the_rule_and_nothing_is_sent() {
    let mock = start_mock(|_| {}).await;
    let (_d, cfg) = setup(&mock.base_url());
    for (id, rule) in [
        ("30020012345", "30.02 is not a date"),
        ("1510869508", "must be 9 or 11 digits"),
        ("15108695089", "check digit"),
    ] {
        for cmd in ["add", "remove", "lookup"] {
            let r = run(&cfg, &[cmd, id]).await;
            assert_eq!(r.code, Some(1), "{cmd} {id}: {}", r.stderr);
            assert!(r.stderr.contains(rule), "{cmd} {id}: {}", r.stderr);
            assert!(r.stderr.contains("nothing was sent"), "{}", r.stderr);
            assert!(!r.stderr.contains(id), "the refused identifier is masked: {}", r.stderr);
        }
    }
    let state = mock_state(&mock.base_url()).await;
    assert_eq!(state["kfr_requests"], 0, "{state}");
    assert_eq!(
        state["token_requests"], 0,
        "no token is fetched for a refused identifier: {state}"
    );
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_period_that_ends_before_it_starts_is_a_usage_error() {
    let mock = start_mock(|_| {}).await;
    let (_d, cfg) = setup(&mock.base_url());
    let r = run(&cfg, &["lookup", FNR, "--from", "2026-02-01", "--to", "2026-01-01"]).await;
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(r.stderr.contains("after --to"), "{}", r.stderr);
    let r = run(&cfg, &["lookup", FNR, "--from", "2026-02-30"]).await;
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kfr_refusal_exits_3_still_queued_with_the_code_and_correlation_id() {
    let mock = start_mock(|_| {}).await;
    let (_d, cfg) = setup(&mock.base_url());
    // Our token is for 916960190; asking about another institution's fid is KFR-003.
    let r = run(&cfg, &["--org-number", "910000004", "add", FNR]).await;
    // A refusal of the institution pauses nothing here but leaves the add queued: exit 3.
    assert_eq!(r.code, Some(3), "{}", r.stderr);
    assert!(r.stderr.contains("kfr outbox cancel"), "{}", r.stderr);
    assert!(r.stderr.contains("KFR-003"), "{}", r.stderr);
    assert!(r.stderr.contains("CorrelationID"), "{}", r.stderr);
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_against_a_wrong_base_url_fails_instead_of_claiming_not_registered() {
    let mock = start_mock(|_| {}).await;
    let (_d, cfg) = setup(&mock.base_url());
    // The mock answers a bare 404 (no KFR-008 body) outside /kar-ws/api/v1.
    let wrong = format!("{}/kar-ws/api/v2", mock.base_url());
    let r = run(&cfg, &["--kfr-base-url", &wrong, "remove", FNR]).await;
    assert_eq!(r.code, Some(3), "failed, still queued: {}\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("404"), "{}", r.stderr);
    assert!(!r.stdout.contains("not registered"), "{}", r.stdout);
    mock.shutdown().await;
}

/// Issue 9 item 15: the global flags (`--env`, `--config`, `--kfr-base-url`, `-q`, …) work after
/// the subcommand as before it, with the same meaning.
#[test]
fn global_flags_work_before_and_after_the_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        vec![
            "--env",
            "prod",
            "--kfr-base-url",
            "https://kfr.example/api",
            "config",
            "show",
            "--json",
        ],
        vec![
            "config",
            "show",
            "--json",
            "--env",
            "prod",
            "--kfr-base-url",
            "https://kfr.example/api",
        ],
        vec![
            "config",
            "--env",
            "prod",
            "show",
            "--kfr-base-url",
            "https://kfr.example/api",
            "--json",
        ],
    ] {
        let out = kfr(dir.path()).args(&args).output().unwrap();
        let (stdout, stderr) = output_text(&out);
        assert!(out.status.success(), "{args:?}: {stderr}");
        assert!(stdout.contains("https://kfr.example/api"), "{args:?}: {stdout}");
        assert!(
            stdout.contains("\"prod\"") && stdout.contains("--env"),
            "{args:?}: {stdout}"
        );
    }
}

/// `certs local --org-number` and the global `--org-number` are one flag with one meaning (the
/// institution's org.nr), accepted in either position; without it, a usage error.
#[test]
fn certs_local_takes_the_org_number_before_or_after_the_subcommand() {
    for (i, args) in [
        vec!["--org-number", "916960190", "certs", "local", "--out"],
        vec!["certs", "local", "--org-number", "916960190", "--out"],
    ]
    .into_iter()
    .enumerate()
    {
        let dir = tempfile::tempdir().unwrap();
        let out = kfr(dir.path()).args(&args).arg(format!("out{i}")).output().unwrap();
        let (_, stderr) = output_text(&out);
        assert!(out.status.success(), "{args:?}: {stderr}");
        let toml = std::fs::read_to_string(dir.path().join(format!("out{i}/kfr.toml"))).unwrap();
        assert!(toml.contains("916960190"), "{toml}");
    }
    let dir = tempfile::tempdir().unwrap();
    let out = kfr(dir.path()).args(["certs", "local", "--out", "o"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(output_text(&out).1.contains("--org-number"));
}
