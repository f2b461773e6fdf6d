//! Shared test helpers: running the `kfr` binary in a clean environment.

use assert_cmd::Command;
use std::path::Path;

/// The `kfr` binary with no `KFR_*` variables from the developer's shell and a working
/// directory of the test's choosing (so no stray `./kfr.toml` is picked up).
pub fn kfr(cwd: &Path) -> Command {
    let mut cmd = Command::cargo_bin("kfr").expect("kfr binary");
    for (k, _) in std::env::vars() {
        if k.starts_with("KFR_") {
            cmd.env_remove(k);
        }
    }
    // The installation's state home (its default state store and pseudonym key) is never the
    // developer's: one per test directory, outside it, so tests running at once share nothing.
    static STATE_HOME: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    let home = STATE_HOME.get_or_init(|| tempfile::tempdir().expect("state home"));
    let per_dir = {
        use sha2::Digest as _;
        hex::encode(&sha2::Sha256::digest(cwd.as_os_str().as_encoded_bytes())[..8])
    };
    // Nor the host's installation configuration (/etc/kfr/kfr.toml), should this machine have one.
    cmd.current_dir(cwd)
        .env("NO_COLOR", "1")
        .env(kfr::env_vars::KFR_SYSTEM_CONFIG, "")
        .env(kfr::env_vars::KFR_STATE_HOME, home.path().join(per_dir));
    cmd
}

/// stdout and stderr of a finished command, as text.
pub fn output_text(out: &std::process::Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

use kfr::certs::LocalPki;
use kfr::http::RetryPolicy;
use kfr::maskinporten::{Credential, TokenClient, TokenClientConfig, TokenRequest};
use kfr::mock::{MockConfig, MockServer};
use std::sync::OnceLock;

/// The org.nr of the institution in tests (Bits' own test certificate carries it, kfr-notes §3).
pub const ORG: &str = "916960190";

/// The Maskinporten client id used by library-level tests.
pub const CLIENT_ID: &str = "5b0d9c4e-2a57-4f41-9a8e-0c6f1d2b7e11";

/// Generating RSA keys is slow in debug builds: one PKI for the whole test binary.
pub fn pki() -> &'static LocalPki {
    static PKI: OnceLock<LocalPki> = OnceLock::new();
    PKI.get_or_init(|| kfr::certs::generate(ORG, "KFR TEST BANK AS").expect("test PKI"))
}

/// A running in-process mock on a free loopback port, trusting [`pki`]'s CA.
pub async fn start_mock(tweak: impl FnOnce(&mut MockConfig)) -> MockServer {
    let mut cfg = MockConfig::new(vec![pki().ca_cert_der.clone()]);
    tweak(&mut cfg);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    MockServer::start(listener, cfg).await.expect("mock starts")
}

/// The client's credential from the PKI's PEM files.
pub fn credential(cert: &kfr::certs::IssuedCert) -> Credential {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key.pem");
    let crt = dir.path().join("cert.pem");
    std::fs::write(&key, cert.key_pem.as_bytes()).unwrap();
    std::fs::write(&crt, &cert.cert_pem).unwrap();
    Credential::from_pem(&key, &crt, None).expect("credential loads")
}

/// Token-client settings for the mock: no retry delays, so retry paths take milliseconds.
pub fn token_config(mock: &MockServer) -> TokenClientConfig {
    TokenClientConfig {
        env: kfr::config::Environment::Local,
        issuer: url::Url::parse(&mock.issuer()).unwrap(),
        client_id: CLIENT_ID.into(),
        default_request: TokenRequest {
            scope: "bits:kundeforhold.write".into(),
            consumer_org: None,
            resource: None,
        },
        x5c: kfr::config::X5cMode::Leaf,
        kid: None,
        refresh_ahead: std::time::Duration::from_secs(30),
        retry: RetryPolicy::immediate(4),
    }
}

pub fn token_client(mock: &MockServer, tweak: impl FnOnce(&mut TokenClientConfig)) -> TokenClient {
    let mut cfg = token_config(mock);
    tweak(&mut cfg);
    TokenClient::new(reqwest::Client::new(), credential(&pki().client), cfg)
}

/// Writes `kfr certs local`-style files for the binary: runs the real command into `dir`.
pub fn certs_local(dir: &Path, mock_url: &str) {
    let out = kfr(dir)
        .args(["certs", "local", "--org-number", ORG, "--out"])
        .arg(dir)
        .args(["--mock-url", mock_url])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Writes `cert` as PEM files and a `kfr.toml` (env local) pointing at them and at the mock;
/// returns the config path.
pub fn config_for(dir: &Path, cert: &kfr::certs::IssuedCert, mock_url: &str, org_number: &str) -> std::path::PathBuf {
    std::fs::write(dir.join("key.pem"), cert.key_pem.as_bytes()).unwrap();
    std::fs::write(dir.join("cert.pem"), &cert.cert_pem).unwrap();
    let cfg = dir.join("kfr.toml");
    std::fs::write(
        &cfg,
        format!(
            "env = \"local\"\norg_number = \"{org_number}\"\nclient_id = \"{CLIENT_ID}\"\nprivate_key = \"key.pem\"\n\
             certificate_pem = \"cert.pem\"\nmaskinporten_issuer = \"{mock_url}/maskinporten/\"\n\
             kfr_base_url = \"{mock_url}/kar-ws/api/v1\"\n"
        ),
    )
    .unwrap();
    cfg
}

/// The `kfr` binary as a `std::process::Command`, for long-running children a test spawns, kills
/// and restarts (the agent): the clean environment of [`kfr`], with the state home given
/// explicitly so that later `kfr(dir).env(KFR_STATE_HOME, home)` calls share it.
pub fn kfr_process(cwd: &Path, state_home: &Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_kfr"));
    for (k, _) in std::env::vars() {
        if k.starts_with("KFR_") {
            cmd.env_remove(k);
        }
    }
    cmd.current_dir(cwd)
        .env("NO_COLOR", "1")
        .env(kfr::env_vars::KFR_SYSTEM_CONFIG, "")
        .env(kfr::env_vars::KFR_STATE_HOME, state_home);
    cmd
}

/// `n` distinct valid synthetic (Tenor: month + 80) fødselsnumre, distinct across `seed`s
/// (0..100): accepted under test identifier rules, refused in prod.
pub fn tenor_persons(seed: u32, n: usize) -> Vec<String> {
    kfr::ids::synthetic::tenor_born(seed, n)
}

/// An external program a test needs, checked with `probe` (e.g. `--version`): the command, or
/// the test fails saying how to install it. Never a silent skip: `.ci/run` installs each one.
pub fn required_tool(program: &str, probe: &[&str], install: &str) -> std::process::Command {
    match std::process::Command::new(program).args(probe).output() {
        Ok(out) if out.status.success() => std::process::Command::new(program),
        Ok(out) => panic!(
            "this test needs `{program} {}` to work ({}); install: {install} (.ci/run does)",
            probe.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => panic!("this test needs `{program}` ({e}); install: {install} (.ci/run does)"),
    }
}
