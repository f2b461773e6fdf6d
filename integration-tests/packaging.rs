//! `deploy/package.sh` (issue 21 deliver 6): the `.deb`, the release archive, `SHA256SUMS` and the
//! CycloneDX SBOM, checked the way an operator would: the sums verify, `dpkg-deb -c` lists the
//! binary, the unit, the man pages and the completions, and the package unpacked into a
//! temporary root (`dpkg -x`) runs.
//!
//! The script packages the debug binary cargo already built for the tests (`KFR_PACKAGE_BIN`,
//! gzip -1): a release build would take minutes. Skipped, saying so, where dpkg-deb, objcopy or
//! python3 is missing.

use crate::util::output_text;
use std::path::Path;
use std::process::Command;

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let (stdout, stderr) = output_text(&out);
    assert!(out.status.success(), "{cmd:?}:\n{stdout}{stderr}");
    stdout
}

#[test]
fn package_sh_builds_a_deb_an_archive_sums_and_an_sbom_that_check_out() {
    if let Some(missing) = ["dpkg-deb", "objcopy", "python3", "sha256sum"]
        .into_iter()
        .find(|t| !have(t))
    {
        eprintln!("{missing} not installed: deploy/package.sh not exercised");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = tempfile::tempdir().unwrap();
    let listing = run(Command::new("sh")
        .arg(root.join("deploy/package.sh"))
        .env("KFR_PACKAGE_BIN", env!("CARGO_BIN_EXE_kfr"))
        .env("KFR_PACKAGE_FAST", "1")
        .env("KFR_PACKAGE_OUT", out.path()));
    let version = env!("CARGO_PKG_VERSION");
    let arch = run(Command::new("dpkg").arg("--print-architecture"));
    let arch = arch.trim();
    let deb = format!("kfr_{version}_{arch}.deb");
    let archive = format!("kfr-{version}-linux-{arch}.tar.gz");
    let sbom = format!("kfr-{version}.cdx.json");
    for name in [&deb, &archive, &sbom, &"SHA256SUMS".to_string()] {
        assert!(listing.contains(name.as_str()), "{name} not built: {listing}");
    }
    run(Command::new("sha256sum")
        .args(["-c", "SHA256SUMS"])
        .current_dir(out.path()));

    // What the package installs, and its configuration kept across upgrades.
    let contents = run(Command::new("dpkg-deb").arg("-c").arg(out.path().join(&deb)));
    for path in [
        "./usr/bin/kfr",
        "./lib/systemd/system/kfr-sync.service",
        "./usr/share/man/man1/kfr.1.gz",
        "./usr/share/man/man1/kfr-sync.1.gz",
        "./usr/share/man/man1/kfr-load.1.gz",
        "./usr/share/bash-completion/completions/kfr",
        "./usr/share/zsh/vendor-completions/_kfr",
        "./usr/share/fish/vendor_completions.d/kfr.fish",
        "./etc/kfr/kfr.toml",
    ] {
        assert!(
            contents.lines().any(|l| l.ends_with(&format!(" {path}"))),
            "{path} not in the package:\n{contents}"
        );
    }
    // Owned by root, whoever built it (not the builder's uid leaking into /usr/bin).
    assert!(contents.lines().all(|l| l.contains(" root/root ")), "{contents}");
    let conffiles = run(Command::new("dpkg-deb")
        .arg("-I")
        .arg(out.path().join(&deb))
        .arg("conffiles"));
    assert_eq!(conffiles.trim(), "/etc/kfr/kfr.toml");

    let target = tempfile::tempdir().unwrap();
    run(Command::new("dpkg")
        .arg("-x")
        .arg(out.path().join(&deb))
        .arg(target.path()));
    let version_line = run(Command::new(target.path().join("usr/bin/kfr")).arg("--version"));
    assert!(version_line.starts_with(&format!("kfr {version} (")), "{version_line}");
    assert_eq!(
        std::fs::read_to_string(target.path().join("lib/systemd/system/kfr-sync.service")).unwrap(),
        std::fs::read_to_string(root.join("deploy/kfr-sync.service")).unwrap()
    );
    // The installed kfr.toml is the one every command finds, and it refuses to run until the
    // placeholders are filled in, naming the key and the file.
    let unfilled = Command::new(target.path().join("usr/bin/kfr"))
        .args(["config", "show"])
        .env(kfr::env_vars::KFR_SYSTEM_CONFIG, target.path().join("etc/kfr/kfr.toml"))
        .env_remove(kfr::env_vars::KFR_CONFIG)
        .current_dir(target.path())
        .output()
        .unwrap();
    let (_, stderr) = output_text(&unfilled);
    assert_eq!(unfilled.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("org_number") && stderr.contains("etc/kfr/kfr.toml"),
        "{stderr}"
    );

    let files = run(Command::new("tar").arg("-tzf").arg(out.path().join(&archive)));
    let dir = format!("kfr-{version}-linux-{arch}");
    for name in [
        "kfr",
        "kfr.debug",
        "man/man1/kfr.1",
        "kfr-sync.service",
        "kfr.toml",
        "Containerfile",
    ] {
        assert!(files.lines().any(|l| l == format!("{dir}/{name}")), "{name}:\n{files}");
    }

    // operations.md's "Container image" block names this archive and the image the manifest
    // runs, and the Containerfile copies only what the archive holds. (Building the image needs
    // a registry and the network: not here.)
    let ops = std::fs::read_to_string(root.join("docs/operations.md")).unwrap();
    let block = ops
        .split("## Container image")
        .nth(1)
        .and_then(|s| s.split("```").nth(1))
        .expect("a command block under Container image");
    assert!(block.contains(&format!("tar -xzf {archive}\n")), "{block}");
    assert!(block.contains(&format!("-f {dir}/Containerfile {dir}\n")), "{block}");
    let manifest = std::fs::read_to_string(root.join("deploy/kubernetes/statefulset.yaml")).unwrap();
    let image = block
        .split("docker build -t ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap();
    assert!(
        manifest.contains(&format!("image: {image}")),
        "the manifest runs {image}"
    );
    let containerfile = std::fs::read_to_string(root.join("deploy/Containerfile")).unwrap();
    for copied in containerfile.lines().filter_map(|l| l.strip_prefix("COPY ")) {
        let source = copied.split_whitespace().next().unwrap();
        assert!(files.lines().any(|l| l == format!("{dir}/{source}")), "COPY {source}");
    }

    // The SBOM: CycloneDX, the crates the binary links with the versions and checksums of
    // Cargo.lock, and no test-only crate.
    let bom: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join(&sbom)).unwrap()).unwrap();
    assert_eq!(bom["bomFormat"], "CycloneDX");
    assert_eq!(bom["specVersion"], "1.5");
    assert_eq!(bom["metadata"]["component"]["name"], "kfr");
    assert_eq!(bom["metadata"]["component"]["version"], version);
    let components = bom["components"].as_array().unwrap();
    let find = |name: &str| components.iter().find(|c| c["name"] == name);
    let lock = std::fs::read_to_string(root.join("Cargo.lock")).unwrap();
    let tokio = find("tokio").expect("tokio in the SBOM");
    let locked = format!(
        "name = \"tokio\"\nversion = \"{}\"\nsource = \"registry+https://github.com/rust-lang/crates.io-index\"\nchecksum = \"{}\"",
        tokio["version"].as_str().unwrap(),
        tokio["hashes"][0]["content"].as_str().unwrap()
    );
    assert!(
        lock.contains(&locked),
        "tokio's version and checksum as in Cargo.lock: {tokio}"
    );
    assert_eq!(
        tokio["purl"],
        format!("pkg:cargo/tokio@{}", tokio["version"].as_str().unwrap())
    );
    for dev_only in ["proptest", "assert_cmd", "tempfile", "yaml-rust2"] {
        assert!(find(dev_only).is_none(), "{dev_only} is only for tests");
    }
}
