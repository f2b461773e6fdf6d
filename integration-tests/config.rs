//! Configuration end to end: the documented example and key table stay in step with the code,
//! `config show` reports sources and redacts secrets, and configuration errors exit 2.

use crate::util::{kfr, output_text};
use kfr::config::{FlagOverrides, Settings, keys};
use std::collections::BTreeMap;

const EXAMPLE: &str = include_str!("../docs/kfr.example.toml");
const DOC: &str = include_str!("../docs/configuration.md");

/// Every key appears in the example (set or commented out), nothing else does, and the example
/// loads once its password-file path points at a real file.
#[test]
fn example_config_matches_the_code() {
    // Keys are named as the schema names them: `[sync]` + `rate` is `sync.rate`, and a key in a
    // `[[sync.sources]]` table is `sync.sources[].dir`.
    let mut table = String::new();
    let mut in_example: Vec<String> = Vec::new();
    for line in EXAMPLE.lines() {
        let l = line.trim_start_matches('#').trim_start();
        if let Some(name) = l.strip_prefix("[[").and_then(|r| r.split_once("]]")) {
            table = format!("{}[].", name.0);
            continue;
        }
        if let Some(name) = l.strip_prefix('[').and_then(|r| r.split_once(']')) {
            table = format!("{}.", name.0);
            continue;
        }
        let Some((k, _)) = l.split_once(" = ") else { continue };
        let k = k.trim();
        if k.chars()
            .all(|c| c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit())
        {
            in_example.push(format!("{table}{k}"));
        }
    }
    in_example.sort();
    in_example.dedup();
    let mut known: Vec<String> = keys().iter().map(|k| k.to_string()).collect();
    known.sort();
    assert_eq!(in_example, known, "docs/kfr.example.toml and config::keys() differ");

    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "secret").unwrap();
    let text = EXAMPLE.replace("/etc/kfr/virksomhetssertifikat.password", pw.to_str().unwrap());
    let path = dir.path().join("kfr.toml");
    std::fs::write(&path, text).unwrap();
    let s = Settings::load_from(Some(&path), &BTreeMap::new(), &FlagOverrides::default()).unwrap();
    assert_eq!(s.org_number.as_deref(), Some("916960190"));
}

/// docs/configuration.md has one row per key the code knows and none other, each with its
/// variable, and the default it states is the code's.
#[test]
fn configuration_doc_lists_every_key_and_variable() {
    let section = DOC.split_once("\n## Keys\n").expect("a Keys section").1;
    let section = section.split_once("\n## ").map_or(section, |s| s.0);
    let rows: Vec<&str> = section.lines().filter(|l| l.starts_with("| `")).collect();
    let documented: Vec<&str> = rows
        .iter()
        .filter_map(|r| r.strip_prefix("| `")?.split_once('`').map(|k| k.0))
        .collect();
    let mut known: Vec<&str> = keys().to_vec();
    let mut listed = documented.clone();
    known.sort_unstable();
    listed.sort_unstable();
    assert_eq!(
        listed, known,
        "docs/configuration.md's key table and config::keys() differ"
    );
    let defaults = kfr::config::built_in_defaults();
    for k in keys() {
        let var = kfr::config::env_var(k).map_or("—".to_string(), |v| format!("`{v}`"));
        let prefix = format!("| `{k}` | {var} | ");
        let row = rows.iter().find(|r| r.starts_with(&prefix));
        let row = row.unwrap_or_else(|| panic!("docs/configuration.md lacks the row `{prefix}`"));
        if let Some(default) = defaults.get(*k) {
            assert!(
                row[prefix.len()..].starts_with(&format!("`{default}`")),
                "docs/configuration.md gives {k} another default than the code's `{default}`: {row}"
            );
        }
    }
}

#[test]
fn config_show_names_sources_and_redacts_the_password() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("kfr.toml"),
        "env = \"local\"\norg_number = \"916960190\"\n",
    )
    .unwrap();
    let out = kfr(dir.path())
        .args(["--client-id", "abc", "config", "show"])
        .env("KFR_SCOPE", "bits:kundeforhold.write")
        .env("KFR_CERTIFICATE_PASSWORD", "hunter2-very-secret")
        .env("KFR_CERTIFICATE", "client.p12")
        .output()
        .unwrap();
    let (stdout, stderr) = output_text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(!stdout.contains("hunter2"), "{stdout}");
    let line = |key: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(&format!("{key} ")))
            .unwrap_or_default()
            .to_string()
    };
    assert!(line("org_number").contains("# file kfr.toml"), "{stdout}");
    assert!(line("client_id").contains("# flag --client-id"), "{stdout}");
    assert!(line("scope").contains("# env KFR_SCOPE"), "{stdout}");
    assert!(line("x5c").contains("# default"), "{stdout}");
    assert!(line("certificate_password").contains("[redacted]"), "{stdout}");
    assert!(
        line("maskinporten_issuer").contains("http://127.0.0.1:8080/maskinporten/"),
        "{stdout}"
    );

    let out = kfr(dir.path()).args(["config", "show", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["settings"]["env"]["value"], "local");
    assert_eq!(v["settings"]["env"]["source"], "file kfr.toml");
}

#[test]
fn configuration_errors_exit_2_with_key_file_and_hint() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("kfr.toml"), "env = \"test\"\nclientid = \"x\"\n").unwrap();
    let out = kfr(dir.path()).args(["config", "show"]).output().unwrap();
    let (_, stderr) = output_text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("error: unknown key `clientid` in kfr.toml"), "{stderr}");
    assert!(stderr.contains("hint: did you mean `client_id`?"), "{stderr}");

    // A missing file named explicitly.
    let out = kfr(dir.path())
        .args(["--config", "/nonexistent/kfr.toml", "config", "show"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    // http:// outside env = local.
    let empty = tempfile::tempdir().unwrap();
    let out = kfr(empty.path())
        .args([
            "--env",
            "prod",
            "--kfr-base-url",
            "http://kfr.example/x",
            "config",
            "show",
        ])
        .output()
        .unwrap();
    let (_, stderr) = output_text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("http:// is refused with env = \"prod\""), "{stderr}");

    // A missing required setting for a command that needs it is a configuration error too.
    let out = kfr(empty.path()).args(["--env", "test", "token"]).output().unwrap();
    let (_, stderr) = output_text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("`client_id` is required"), "{stderr}");

    // Bad flags: clap's usage error, also 2.
    let out = kfr(dir.path()).args(["token", "--no-such-flag"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// A `[sync]` table with sources parses and `config show` lists its keys with their origin; a
/// misspelt key in it is refused (exit 2) with the key, the file and the key that was meant.
#[test]
fn sync_table_parses_and_a_misspelt_key_in_it_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("kfr.toml"),
        "env = \"local\"\n[sync]\nlisten = \"127.0.0.1:18090\"\n[[sync.sources]]\nkind = \"spool\"\ndir = \"in\"\n",
    )
    .unwrap();
    let out = kfr(dir.path()).args(["config", "show"]).output().unwrap();
    let (stdout, stderr) = output_text(&out);
    assert!(out.status.success(), "{stderr}");
    let line = |key: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(&format!("{key} ")))
            .unwrap_or_default()
    };
    assert!(
        line("sync.listen").contains("127.0.0.1:18090") && line("sync.listen").contains("# file kfr.toml"),
        "{stdout}"
    );
    assert!(line("sync.rate").contains("# default"), "{stdout}");
    assert!(line("sync.sources[0].dir").contains("in"), "{stdout}");

    std::fs::write(dir.path().join("kfr.toml"), "[sync]\nlisen = \"127.0.0.1:18090\"\n").unwrap();
    let out = kfr(dir.path()).args(["config", "show"]).output().unwrap();
    let (_, stderr) = output_text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("error: unknown key `sync.lisen` in kfr.toml"),
        "{stderr}"
    );
    assert!(stderr.contains("hint: did you mean `sync.listen`?"), "{stderr}");
}
