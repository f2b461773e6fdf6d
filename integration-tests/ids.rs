//! `kfr validate` and `kfr pseudonym` end to end: output format, masking, JSON, exit codes and
//! the pseudonym key file. Each test runs the binary in its own temporary directory with a clean
//! environment, so no configuration or key file from the machine leaks in and none is left behind.
//!
//! Data: published examples (15108695088, 02013299997) and synthetic numbers (Tenor +80 month,
//! 2/3-prefixed test organisations) only.

use assert_cmd::Command;
use predicates::prelude::*;
use std::path::Path;

/// `kfr --env test <args>` in `dir` with no inherited variables, and `dir/state` as the state
/// home (one installation per test directory).
fn kfr(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::cargo_bin("kfr").unwrap();
    cmd.env_clear()
        .env(kfr::env_vars::KFR_STATE_HOME, dir.join("state"))
        .current_dir(dir)
        .arg("--env")
        .arg("test")
        .args(args);
    cmd
}

const MIXED: &str = "\u{feff}15108695088\r\n\
    12857500057\r\n\
    \r\n\
    310000019\r\n\
    30020012345\r\n\
    52857500040\r\n\
    02013299996\r\n\
    1510869508\r\n\
    12417500004\r\n\
    310000018\r\n";

#[test]
fn validate_file_reports_kinds_and_each_rejection_with_line_and_rule() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ids.txt"), MIXED).unwrap();
    let out = kfr(dir.path(), &["validate", "--file", "ids.txt"]).assert().code(1);
    let stdout = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    let expected = "\
ids.txt:5: *********45: customer identifier: 30.02 is not a date
ids.txt:7: *********96: customer identifier: second check digit does not match
ids.txt:8: ********08: customer identifier: must be 9 or 11 digits, got 10
ids.txt:9: *********04: customer identifier: H-number: not a KFR customer identifier (NAV/health +40 month)
ids.txt:10: *******18: customer identifier: organisation number check digit does not match
9 identifiers: 4 valid, 5 rejected
  test organisation number           1
  fødselsnummer                      1
  synthetic fødselsnummer            1
  synthetic D-number                 1
";
    assert_eq!(stdout, expected);
    // Nothing on stderr repeats the data, and no person number appears anywhere in full.
    let stderr = String::from_utf8(out.get_output().stderr.clone()).unwrap();
    for id in ["15108695088", "30020012345", "02013299996", "12417500004", "1510869508"] {
        assert!(!stdout.contains(id) && !stderr.contains(id), "{id} leaked");
    }
    // validate is offline and read-only: it must not create the pseudonym key.
    assert!(!dir.path().join("state").exists());
    assert!(!dir.path().join("kfr-pseudonym.key").exists());
}

#[test]
fn validate_exits_0_when_everything_is_valid() {
    let dir = tempfile::tempdir().unwrap();
    kfr(dir.path(), &["validate", "15108695088", "02013299997", "310000027"])
        .assert()
        .code(0)
        .stdout("3 identifiers: 3 valid, 0 rejected\n  test organisation number           1\n  fødselsnummer                      2\n");
}

#[test]
fn validate_arguments_are_numbered_and_prod_refuses_synthetic() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::cargo_bin("kfr").unwrap();
    cmd.env_clear()
        .current_dir(dir.path())
        .args(["--env", "prod", "validate", "15108695088", "12857500057"])
        .assert()
        .code(1)
        .stdout(predicate::str::starts_with(
            "argument 2: *********57: synthetic identity not allowed (synthetic fødselsnummer): \
             allow_synthetic_ids is off, as in prod\n",
        ));
}

#[test]
fn validate_json_is_machine_readable() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ids.txt"), MIXED).unwrap();
    let out = kfr(dir.path(), &["validate", "--json", "--file", "ids.txt"])
        .assert()
        .code(1);
    let v: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(v["total"], 9);
    assert_eq!(v["valid"], 4);
    assert_eq!(v["rejected"], 5);
    assert_eq!(v["by_kind"]["synthetic_d_number"], 1);
    assert_eq!(v["by_kind"]["org_number"], 0);
    let first = &v["rejections"][0];
    assert_eq!(first["file"], "ids.txt");
    assert_eq!(first["line"], 5);
    assert_eq!(first["input"], "*********45");
    // The same message `kfr load` gives for the line, naming the field.
    assert_eq!(first["rule"], "customer identifier: 30.02 is not a date");
    assert_eq!(first["code"], "not_a_date");
    assert_eq!(v["rejections"].as_array().unwrap().len(), 5);
}

#[test]
fn validate_usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    kfr(dir.path(), &["validate"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("error: nothing to validate"));
    kfr(dir.path(), &["validate", "--file", "missing.txt"])
        .assert()
        .code(2)
        .stdout("")
        .stderr(predicate::str::contains("cannot open missing.txt"));
    kfr(dir.path(), &["validate", "--no-such-flag"]).assert().code(2);
}

#[test]
fn pseudonym_is_stable_and_matches_the_key_file() {
    let dir = tempfile::tempdir().unwrap();
    let first = kfr(dir.path(), &["pseudonym", "15108695088"]).assert().code(0);
    let first = String::from_utf8(first.get_output().stdout.clone()).unwrap();
    let again = kfr(dir.path(), &["pseudonym", " 15108695088 "]).assert().code(0);
    assert_eq!(String::from_utf8(again.get_output().stdout.clone()).unwrap(), first);

    let pseudonym = first.trim_end();
    assert!(pseudonym.starts_with("p-") && pseudonym.len() == 14, "{pseudonym}");
    assert!(!first.contains("151086"));

    // The key file was created with mode 0600, and the library's pseudonymizer (what
    // CustomerId::log() uses once installed) gives the same name.
    let key = dir.path().join("state/pseudonym.key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let id = kfr::ids::CustomerId::parse("15108695088", &kfr::ids::IdPolicy::test()).unwrap();
    let library = kfr::ids::Pseudonymizer::load_or_create(&key).unwrap().pseudonym(&id);
    assert_eq!(library, pseudonym);

    // The same installation from another working directory: the same name, so logs written
    // from different directories can be matched.
    let elsewhere = tempfile::tempdir().unwrap();
    let out = kfr(elsewhere.path(), &["pseudonym", "15108695088"])
        .env(kfr::env_vars::KFR_STATE_HOME, dir.path().join("state"))
        .assert()
        .code(0);
    assert_eq!(String::from_utf8(out.get_output().stdout.clone()).unwrap(), first);
    assert!(!elsewhere.path().join("kfr-pseudonym.key").exists());

    // Another installation (another key) gives another name.
    let other = tempfile::tempdir().unwrap();
    let out = kfr(other.path(), &["pseudonym", "15108695088"]).assert().code(0);
    assert_ne!(String::from_utf8(out.get_output().stdout.clone()).unwrap(), first);

    // With no state home at all, the key falls back to the working directory.
    let bare = tempfile::tempdir().unwrap();
    kfr(bare.path(), &["pseudonym", "15108695088"])
        .env_remove(kfr::env_vars::KFR_STATE_HOME)
        .assert()
        .code(0);
    assert!(bare.path().join("kfr-pseudonym.key").exists());
}

#[test]
fn pseudonym_of_an_org_number_is_the_number_and_invalid_input_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    kfr(dir.path(), &["pseudonym", "310000019"])
        .assert()
        .code(0)
        .stdout("310000019\n");
    kfr(dir.path(), &["pseudonym", "30020012345"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "*********45 is not a valid customer identifier",
        ))
        .stderr(predicate::str::contains("30.02 is not a date"))
        .stderr(predicate::str::contains("30020012345").not());
}
