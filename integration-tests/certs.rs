//! `kfr certs local`: the generated directory is complete, private files are private, and the
//! generated `kfr.toml` loads and yields a working credential.

use assert_cmd::Command;
use kfr::config::{CredentialSource, Settings};
use kfr::maskinporten::Credential;
use predicates::prelude::*;
use std::path::Path;

fn certs_local(out: &Path, extra: &[&str]) -> assert_cmd::assert::Assert {
    Command::cargo_bin("kfr")
        .unwrap()
        .args(["certs", "local", "--org-number", "916960190", "--out"])
        .arg(out)
        .args(extra)
        .env_remove("KFR_CERTIFICATE_PASSWORD")
        .assert()
}

#[test]
fn certs_local_writes_a_usable_directory() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("local");
    certs_local(&out, &["--mock-url", "http://127.0.0.1:9999/"])
        .success()
        .stdout(predicate::str::contains("org.nr 916960190"))
        .stdout(predicate::str::contains("kfr mock --trust"))
        .stdout(predicate::str::contains("kfr.toml token"))
        .stderr(predicate::str::contains("overwritten").not());

    for name in [
        "ca.pem",
        "client.p12",
        "client.p12.password",
        "client-cert.pem",
        "client-key.pem",
        "kfr.toml",
        "other.p12",
        "other.p12.password",
        "other-cert.pem",
        "other-key.pem",
        "other-kfr.toml",
    ] {
        assert!(out.join(name).is_file(), "{name} missing");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        for name in [
            "client.p12.password",
            "client-key.pem",
            "other.p12.password",
            "other-key.pem",
        ] {
            let mode = std::fs::metadata(out.join(name)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{name} has mode {mode:o}");
        }
    }

    let toml = std::fs::read_to_string(out.join("kfr.toml")).unwrap();
    assert!(
        toml.contains("maskinporten_issuer = \"http://127.0.0.1:9999/maskinporten/\""),
        "{toml}"
    );
    assert!(
        toml.contains("kfr_base_url = \"http://127.0.0.1:9999/kar-ws/api/v1\""),
        "{toml}"
    );

    // The generated file loads through the real configuration loader (relative paths resolve
    // against the file's directory) and gives the right certificate.
    let settings = Settings::load(Some(&out.join("kfr.toml")), &Default::default()).unwrap();
    assert_eq!(settings.org_number.as_deref(), Some("916960190"));
    assert!(uuid::Uuid::parse_str(settings.client_id.as_deref().unwrap()).is_ok());
    let source = settings.credential.as_ref().expect("credential configured");
    assert!(matches!(source, CredentialSource::Pkcs12 { password: Some(_), .. }));
    let cred = Credential::from_config(source).unwrap();
    assert_eq!(cred.info().org_number.as_deref(), Some("916960190"));
    assert_eq!(cred.info().key_usage_digital_signature, Some(true));
    assert!(cred.info().test_issuer);

    // The second organisation is a different, valid one under the same CA.
    let other = Settings::load(Some(&out.join("other-kfr.toml")), &Default::default()).unwrap();
    let other_cred = Credential::from_config(other.credential.as_ref().unwrap()).unwrap();
    let other_org = other_cred.info().org_number.clone().unwrap();
    assert_ne!(other_org, "916960190");
    assert!(kfr::certs::valid_org_number(&other_org));
    assert_eq!(other.org_number.as_deref(), Some(other_org.as_str()));
    assert_eq!(other_cred.info().issuer, cred.info().issuer);
    assert_ne!(other.client_id, settings.client_id);

    // The PEM pair is the same identity.
    let pem = Credential::from_pem(&out.join("client-key.pem"), &out.join("client-cert.pem"), None).unwrap();
    assert_eq!(pem.leaf_der(), cred.leaf_der());

    // Other tools can read the PKCS#12 too.
    match std::process::Command::new("openssl").arg("version").output() {
        Ok(o) if o.status.success() => {
            let passin = format!("file:{}", out.join("client.p12.password").display());
            let status = std::process::Command::new("openssl")
                .args(["pkcs12", "-info", "-noout", "-passin", &passin, "-in"])
                .arg(out.join("client.p12"))
                .output()
                .unwrap();
            assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
        }
        _ => eprintln!("note: openssl not found; skipped reading client.p12 with openssl"),
    }

    // Running again overwrites, and says so.
    certs_local(&out, &[])
        .success()
        .stderr(predicate::str::contains("overwritten"));
}

#[test]
fn certs_local_refuses_a_bad_org_number_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    Command::cargo_bin("kfr")
        .unwrap()
        .args(["certs", "local", "--org-number", "916960191", "--out"])
        .arg(dir.path().join("x"))
        .assert()
        .code(2)
        .stderr(predicate::str::contains("not a valid organisation number"))
        .stderr(predicate::str::contains("hint:"));
    assert!(!dir.path().join("x").exists());

    certs_local(&dir.path().join("y"), &["--mock-url", "not a url"])
        .code(2)
        .stderr(predicate::str::contains("--mock-url"));
}

/// Issue 10, item 8: the leaf `kfr certs local` writes is shaped like a SEID 2.0 business
/// certificate and its DER is strict: no BasicConstraints with an explicit `cA=FALSE` (a DEFAULT
/// value DER must leave out, which strict parsers such as Python's `cryptography` refuse).
#[test]
fn certs_local_leaf_is_seid2_shaped_and_strict_der() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("local");
    certs_local(&out, &[]).success();
    let pem = std::fs::read(out.join("client-cert.pem")).unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
    let der = pem.contents;
    let (_, leaf) = x509_parser::parse_x509_certificate(&der).unwrap();
    let org_id: Vec<_> = leaf
        .subject()
        .iter_attributes()
        .filter(|a| a.attr_type().to_id_string() == "2.5.4.97")
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    assert_eq!(org_id, ["NTRNO-916960190"]);
    let ku = leaf.key_usage().unwrap().expect("KeyUsage present");
    assert!(ku.critical && ku.value.digital_signature());
    // Before issue 10 the leaf carried BasicConstraints `30 03 01 01 00` (cA BOOLEAN FALSE).
    assert!(leaf.basic_constraints().unwrap().is_none());
    assert!(
        !der.windows(5).any(|w| w == [0x30, 0x03, 0x01, 0x01, 0x00]),
        "an explicitly encoded cA=FALSE"
    );
}

/// Issue 10, item 8: root → issuing CA → leaf, like SEID 2.0; `ca.pem` holds both CAs and the
/// mock accepts a leaf-only grant against it (the route a real client takes).
#[test]
fn certs_local_makes_a_root_issuing_ca_leaf_chain() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("local");
    certs_local(&out, &[]).success();
    let pem = std::fs::read(out.join("ca.pem")).unwrap();
    let cas: Vec<_> = x509_parser::pem::Pem::iter_from_buffer(&pem)
        .map(|p| p.unwrap().contents)
        .collect();
    assert_eq!(cas.len(), 2, "issuing CA and root");
    let (_, issuing) = x509_parser::parse_x509_certificate(&cas[0]).unwrap();
    let (_, root) = x509_parser::parse_x509_certificate(&cas[1]).unwrap();
    assert_eq!(issuing.issuer(), root.subject());
    assert_eq!(root.issuer(), root.subject(), "the root is self-signed");
    assert_ne!(issuing.issuer(), issuing.subject(), "the issuing CA is not");
    let leaf = std::fs::read(out.join("client-cert.pem")).unwrap();
    let (_, leaf) = x509_parser::pem::parse_x509_pem(&leaf).unwrap();
    let (_, leaf) = x509_parser::parse_x509_certificate(&leaf.contents).unwrap();
    assert_eq!(leaf.issuer(), issuing.subject());
}

/// Issue 21 finding 3: the "Next:" steps work as printed. The mock command carries the
/// `--listen` of the URL the generated kfr.toml points at (without it the mock took its default
/// port and the suggested `kfr token` was refused), and the token command then succeeds.
#[test]
fn the_next_steps_printed_by_certs_local_work_as_printed() {
    next_steps_work_as_printed("http");
}

/// The same with an https:// mock URL (issue 21 item 7): the mock command serves the TLS
/// certificate written next to kfr.toml, which trusts its CA as `extra_ca_bundle`.
#[test]
fn the_next_steps_for_a_mock_over_tls_work_as_printed() {
    next_steps_work_as_printed("https");
}

fn next_steps_work_as_printed(scheme: &str) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("local");
    // A free loopback port, not the mock's default 8080.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("{scheme}://127.0.0.1:{port}");
    let printed = certs_local(&out, &["--mock-url", &url])
        .success()
        .get_output()
        .stdout
        .clone();
    let printed = String::from_utf8(printed).unwrap();
    let next: Vec<Vec<String>> = printed
        .split("Next:\n")
        .nth(1)
        .unwrap_or_else(|| panic!("no Next: section: {printed}"))
        .lines()
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect();
    let (mock, token) = (&next[0], &next[1]);
    assert_eq!(mock[..2], ["kfr", "mock"], "{printed}");
    assert!(
        mock.windows(2)
            .any(|w| w[0] == "--listen" && w[1] == format!("127.0.0.1:{port}")),
        "the mock command listens where kfr.toml points: {printed}"
    );

    let mut server = crate::util::kfr_process(dir.path(), &dir.path().join("home"))
        .args(&mock[1..])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t.elapsed() < std::time::Duration::from_secs(30),
            "the mock did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let got = crate::util::kfr(dir.path()).args(&token[1..]).output().unwrap();
    let _ = server.kill();
    let _ = server.wait();
    let (stdout, stderr) = crate::util::output_text(&got);
    assert!(got.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains(&format!("token obtained from {url}/")), "{stdout}");
    let tls = mock.iter().any(|a| a == "--tls-cert");
    assert_eq!(tls, scheme == "https", "{printed}");
    let toml = std::fs::read_to_string(out.join("kfr.toml")).unwrap();
    assert_eq!(toml.contains("extra_ca_bundle = \"mock-tls-ca.pem\""), tls, "{toml}");
}

/// A host name in --mock-url: the mock listens on loopback and is told the issuer by that name,
/// which a token's `iss` must match byte for byte.
#[test]
fn a_localhost_mock_url_gets_the_listen_address_and_the_issuer() {
    let dir = tempfile::tempdir().unwrap();
    certs_local(&dir.path().join("l"), &["--mock-url", "http://localhost:18123/"])
        .success()
        .stdout(predicate::str::contains(
            "--listen 127.0.0.1:18123 --issuer http://localhost:18123/maskinporten/",
        ));
}
