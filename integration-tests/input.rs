//! One input grammar end to end: `kfr load` and `kfr validate --file` read every format through
//! the same reader, so they accept the same files with the same verdicts (line, masked text,
//! message, rule); quoted fields, Norwegian dates and Latin-1 names are read; a closed stdout
//! ends `kfr validate` quietly.
//!
//! All identifiers are published examples or synthetic.

use crate::util::{ORG, config_for, kfr, output_text, pki, start_mock};
use std::path::Path;

/// `kfr --env local --org-number ORG <args>` in `dir`: enough for a dry run and for validate.
fn run(dir: &Path, args: &[&str]) -> std::process::Output {
    kfr(dir)
        .args(["--env", "local", "--org-number", ORG])
        .args(args)
        .output()
        .unwrap()
}

/// One verdict: line number, the line as shown (masked), message, rule name.
type Verdict = (u64, String, String, String);

/// The verdicts `kfr load` prints on stderr: `FILE:LINE: TEXT: MESSAGE [RULE]`.
fn load_verdicts(file: &str, stderr: &str) -> Vec<Verdict> {
    stderr
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("{file}:")))
        .filter_map(|l| {
            let (rest, rule) = l.strip_suffix(']')?.rsplit_once(" [")?;
            let mut parts = rest.splitn(3, ": ");
            let line = parts.next()?.parse().ok()?;
            Some((line, parts.next()?.into(), parts.next()?.into(), rule.into()))
        })
        .collect()
}

/// The verdicts of `kfr validate --json`.
fn validate_verdicts(v: &serde_json::Value) -> Vec<Verdict> {
    v["rejections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["line"].as_u64().unwrap(),
                r["input"].as_str().unwrap().into(),
                r["rule"].as_str().unwrap().into(),
                r["code"].as_str().unwrap().into(),
            )
        })
        .collect()
}

/// A file name, its bytes, and its expected verdicts as `(line, rule)`.
type Case = (&'static str, Vec<u8>, Vec<(u64, &'static str)>);

/// Files in every format, with bad lines of every kind.
fn files() -> Vec<Case> {
    let long = format!("15108695088\n{}\n916960190\n", "1".repeat(70_000));
    vec![
        (
            "semi.csv",
            b"15108695088;2020-01-15\n02013299987;2020-01-15\n916960190;2099-01-01\n916960190\n".to_vec(),
            vec![(2, "first_check_digit"), (3, "start_in_future")],
        ),
        (
            "plain.txt",
            b"15108695088\n\n1510869508\n".to_vec(),
            vec![(3, "length")],
        ),
        (
            "quoted.csv",
            b"navn,kundeid,startdato\n\"Hansen, Ola\",15108695088,15.01.2020\n\"Open,02013299997,2020-01-01\n\
              \"Nordmann, \"\"Kari\"\"\",02013299997,30.02.2020\n"
                .to_vec(),
            vec![(3, "unterminated_quote"), (4, "bad_start_date")],
        ),
        (
            "latin1.csv",
            b"navn;kundeid;startdato\nJ\xF8rgen \xC6rlig;15108695088;15.01.2020\n\xC5se;0201329999\xF8;\n".to_vec(),
            vec![(3, "not_digit")],
        ),
        (
            "bom_crlf.csv",
            b"\xEF\xBB\xBFcustomer_id,start_date,end_date\r\n15108695088,2020-01-15,\r\n\r\n\
              02013299997,2020-01-15,2019-01-01\r\n916960190,2020-01-15,2020-02-01\r\n"
                .to_vec(),
            vec![(4, "end_before_start")],
        ),
        (
            "norwegian.txt",
            b"15108695088#15.01.2020\n02013299997#01.13.2020\n".to_vec(),
            vec![(2, "bad_start_date")],
        ),
        (
            "mixed.txt",
            b"15108695088;2020-01-15\n02013299997,2020-01-15\n".to_vec(),
            vec![(2, "mixed_separators")],
        ),
        ("long.txt", long.into_bytes(), vec![(2, "line_too_long")]),
        (
            "clean.csv",
            b"Kunde-ID|Start dato\n15108695088|15.01.2020\n\"916960190\"|\n".to_vec(),
            vec![],
        ),
    ]
}

#[test]
fn validate_gives_the_verdicts_load_gives_on_every_format() {
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes, expected) in files() {
        std::fs::write(dir.path().join(name), &bytes).unwrap();
        let load = run(dir.path(), &["load", name, "--dry-run"]);
        let (load_out, load_err) = output_text(&load);
        let validate = run(dir.path(), &["validate", "--json", "--file", name]);
        let (val_out, val_err) = output_text(&validate);
        let v: serde_json::Value =
            serde_json::from_str(&val_out).unwrap_or_else(|e| panic!("{name}: {e}: {val_out}\n{val_err}"));

        let from_load = load_verdicts(name, &load_err);
        let from_validate = validate_verdicts(&v);
        assert_eq!(from_validate, from_load, "{name}: load stderr:\n{load_err}");
        let rules: Vec<(u64, &str)> = from_load.iter().map(|(l, _, _, r)| (*l, r.as_str())).collect();
        assert_eq!(rules, expected, "{name}");
        assert_eq!(validate.status.code(), load.status.code(), "{name}: exit codes");
        assert_eq!(
            validate.status.code(),
            Some(if expected.is_empty() { 0 } else { 1 }),
            "{name}"
        );
        // The same lines are counted: every data line is valid or rejected in both.
        let lines = load_out
            .lines()
            .find_map(|l| l.trim().strip_prefix("lines: "))
            .and_then(|l| l.split(' ').next())
            .unwrap_or_else(|| panic!("{name}: no lines count:\n{load_out}"));
        assert_eq!(v["total"].to_string(), lines.replace(',', ""), "{name}");
        // Person numbers never appear in full, in either command's output.
        for text in [&load_out, &load_err, &val_out, &val_err] {
            for id in ["15108695088", "02013299987", "02013299997", "0201329999"] {
                assert!(!text.contains(id), "{name}: {id} leaked:\n{text}");
            }
        }
    }
}

#[test]
fn a_file_without_an_identifier_column_is_refused_by_both_with_the_same_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("names.csv"), "navn;dato\nOla;2020-01-01\n").unwrap();
    let want = "line 1: the header row names no customer identifier column";
    for args in [
        &["load", "names.csv", "--dry-run"][..],
        &["validate", "--file", "names.csv"][..],
    ] {
        let out = run(dir.path(), args);
        let (_, stderr) = output_text(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quoted_name_with_a_comma_and_a_norwegian_date_load_with_that_start_date() {
    let mock = start_mock(|m| m.ingest_rate = 100_000).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_for(dir.path(), &pki().client, &mock.base_url(), ORG);
    std::fs::write(
        dir.path().join("q.csv"),
        "navn,kundeid,startdato\n\"Hansen, Ola\",15108695088,15.01.2020\n",
    )
    .unwrap();
    let d = dir.path().to_owned();
    let (plan, load) = tokio::task::spawn_blocking(move || {
        let base = |args: &[&str]| kfr(&d).arg("--config").arg(&cfg).args(args).output().unwrap();
        (
            base(&["load", "q.csv", "--dry-run"]),
            base(&["load", "q.csv", "--ingest-rate", "100000"]),
        )
    })
    .await
    .unwrap();
    let (stdout, stderr) = output_text(&plan);
    assert_eq!(plan.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("format: delimited by ',' with a header row: id = kundeid, start = startdato"),
        "{stdout}"
    );
    assert!(stdout.contains("valid: 1 unique active relationships"), "{stdout}");
    assert!(stdout.contains("rejected: 0"), "{stdout}");
    // The plan shows the start date it read, before anything is sent.
    assert!(stdout.contains("start dates: all 2020-01-15"), "{stdout}");
    let (stdout, stderr) = output_text(&load);
    assert_eq!(load.status.code(), Some(0), "{stdout}\n{stderr}");
    let registered: Vec<(String, String)> = mock
        .state()
        .relationships()
        .into_iter()
        .filter(|r| r.organization_id == ORG && r.end_date.is_none())
        .map(|r| (r.customer_id, r.start_date.to_string()))
        .collect();
    assert_eq!(registered, vec![("15108695088".to_string(), "2020-01-15".to_string())]);
}

/// `kfr validate --file BIG | head -1`: once the reader of stdout is gone, validate stops and
/// exits 0 without a panic or an error message.
#[test]
fn validate_stops_quietly_when_stdout_is_closed() {
    use std::io::BufRead as _;
    let dir = tempfile::tempdir().unwrap();
    // 200,000 rejected lines: far more output than a pipe holds.
    let big = "02013299987\n".repeat(200_000);
    std::fs::write(dir.path().join("big.txt"), big).unwrap();
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("kfr"))
        .current_dir(dir.path())
        .env_clear()
        .env(kfr::env_vars::KFR_STATE_HOME, dir.path().join("state"))
        .args(["--env", "local", "validate", "--file", "big.txt"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert_eq!(
        first,
        "big.txt:1: *********87: customer identifier: first check digit does not match\n"
    );
    // The reading end is dropped here, as `head -1` exits.
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stderr: {stderr}");
    assert_eq!(stderr, "", "nothing on stderr, no panic");
}
