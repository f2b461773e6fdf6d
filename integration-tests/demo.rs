//! `kfr demo` end to end (a small export, so it runs in seconds in debug), and the README's quick
//! start run as written against `kfr mock` on a free loopback port: a newcomer's first two
//! experiences of the project (issue 13 items 1 and 2).

use crate::util::{kfr, output_text};
use std::path::Path;

#[cfg(unix)]
fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn the_demo_loads_syncs_behind_the_barrier_and_ends_with_the_register_as_sent() {
    let cwd = tempfile::tempdir().unwrap();
    let keep = cwd.path().join("kept");
    // 300 relationships at 50/s: the load stays unconfirmed for about six seconds, long enough
    // for the burst's removes to arrive while the barrier is up even when the test shares the
    // two cores with the rest of the suite.
    let out = kfr(cwd.path())
        .args(["demo", "--size", "300", "--ingest-rate", "50", "--keep"])
        .arg(&keep)
        .output()
        .unwrap();
    let (stdout, stderr) = output_text(&out);
    assert_eq!(out.status.code(), Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("exactly as sent"), "{stdout}");
    assert!(
        stdout.contains("removes held by the barrier until the load was confirmed"),
        "{stdout}\n{stderr}"
    );
    assert!(stderr.contains("held by the delete barrier"), "{stderr}");
    let checklist = stdout
        .lines()
        .find(|l| l.starts_with("checklist"))
        .expect("a checklist line");
    let passed: Vec<&str> = checklist.split_whitespace().collect();
    assert_eq!(passed[1], passed[3], "every checklist case passed: {checklist}");
    assert!(stdout.contains("300 relationships in"), "{stdout}");

    // The state, reports and log are where the summary says, private where they name customers.
    for f in [
        "kfr-state.db",
        "load-report.json",
        "load-report.md",
        "demo.log",
        "customers.csv",
        "kfr.toml",
    ] {
        assert!(keep.join(f).is_file(), "{f} kept");
    }
    assert!(
        keep.join("checklist").read_dir().unwrap().count() >= 4,
        "checklist reports kept"
    );
    #[cfg(unix)]
    for f in [
        "customers.csv",
        "client-key.pem",
        "demo.log",
        "kfr-state.db",
        "pseudonym.key",
    ] {
        assert_eq!(mode(&keep.join(f)), 0o600, "{f}");
    }

    // No identifier of the export or the burst appears in full on the screen or in the log.
    let log = std::fs::read_to_string(keep.join("demo.log")).unwrap();
    let export = std::fs::read_to_string(keep.join("customers.csv")).unwrap();
    for id in export.lines().filter_map(|l| l.split(';').next()) {
        assert!(
            !stdout.contains(id) && !stderr.contains(id) && !log.contains(id),
            "{id} in full"
        );
    }

    // The kept configuration still opens the demo's store.
    let out = kfr(cwd.path())
        .arg("--config")
        .arg(keep.join("kfr.toml"))
        .args(["outbox", "status", "--json"])
        .output()
        .unwrap();
    let (o, e) = output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{o}{e}");
    let v: serde_json::Value = serde_json::from_str(&o).unwrap();
    let status = &v["status"];
    assert_eq!(status["dead_lettered"], 0, "{o}");
    assert_eq!(status["pending"], 0, "{o}");
    assert!(status["delivered"].as_u64().unwrap() > 0, "{o}");
}

#[test]
fn the_demo_refuses_a_keep_directory_that_is_not_empty() {
    let cwd = tempfile::tempdir().unwrap();
    std::fs::write(cwd.path().join("something"), "x").unwrap();
    let out = kfr(cwd.path()).args(["demo", "--keep", "."]).output().unwrap();
    let (_, stderr) = output_text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("not empty"), "{stderr}");
    assert_eq!(std::fs::read_dir(cwd.path()).unwrap().count(), 1, "nothing written");
}

/// The README's quick start: the first ```sh block under "## Quick start".
fn quick_start(readme: &str) -> Vec<String> {
    let section = &readme[readme.find("\n## Quick start").expect("a quick-start section")..];
    let block = &section[section.find("```sh\n").expect("a sh block") + 6..];
    let block = &block[..block.find("```").expect("the block ends")];
    block.lines().map(str::to_string).collect()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn the_readme_quick_start_runs_as_written_against_the_mock() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let lines = quick_start(&readme);
    // What the test changes, and only that: the build (already done), the binary's path, the
    // port. Each must be there, so a README edit that drops one fails here, not for a reader.
    assert_eq!(
        lines.first().map(String::as_str),
        Some("cargo build --release"),
        "{lines:?}"
    );
    let script = lines[1..].join("\n");
    assert!(
        script.contains("./target/release/kfr") && script.contains("127.0.0.1:18080"),
        "{script}"
    );
    let script = script
        .replace("./target/release/kfr", env!("CARGO_BIN_EXE_kfr"))
        .replace("18080", &free_port().to_string());
    let cwd = tempfile::tempdir().unwrap();
    let tmp = cwd.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    // A failing command must not leave the background mock holding the test's output open.
    let script = format!("trap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n{script}\n");
    let mut cmd = std::process::Command::new("bash");
    cmd.args(["-euo", "pipefail", "-c", &script])
        .current_dir(cwd.path())
        .env("TMPDIR", &tmp);
    for (k, _) in std::env::vars() {
        if k.starts_with("KFR_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd
        .env("NO_COLOR", "1")
        .env(kfr::env_vars::KFR_STATE_HOME, cwd.path().join("state"))
        .output()
        .unwrap();
    let (stdout, stderr) = output_text(&out);
    assert_eq!(out.status.code(), Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("load job 1 complete: 2 relationships"), "{stdout}");
    assert!(stdout.contains("removed:"), "{stdout}");
}

#[test]
fn the_readme_names_the_demo_first_and_the_ci_test_command() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let first = &readme[readme.find("```sh\n").unwrap() + 6..];
    let first: Vec<&str> = first[..first.find("```").unwrap()]
        .lines()
        .map(|l| l.split('#').next().unwrap().trim())
        .collect();
    assert_eq!(first, ["cargo run --release -- demo", "cargo test"]);
    // CI runs the test command the README documents for development.
    let ci = std::fs::read_to_string(root.join(".ci/run")).unwrap();
    let ci_test = ci
        .lines()
        .rev()
        .find(|l| l.starts_with("cargo test"))
        .expect("CI runs cargo test");
    let dev = &readme[readme.find("\n## Development").expect("a development section")..];
    let dev = &dev[dev.find("```sh\n").unwrap() + 6..];
    assert_eq!(dev[..dev.find("```").unwrap()].trim(), ci_test);
    assert_eq!(ci_test, first[1], "the quick test command is the one CI runs");
    for doc in [
        "load",
        "sync",
        "checklist",
        "mock",
        "operations",
        "configuration",
        "architecture",
        "security",
        "benchmarks",
    ] {
        let link = format!("(docs/{doc}.md)");
        assert!(readme.contains(&link), "README links {link}");
        assert!(root.join(format!("docs/{doc}.md")).is_file(), "docs/{doc}.md exists");
    }
}
