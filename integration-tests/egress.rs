//! Through the bank's egress (issue 21 item 7): `kfr token`, `kfr add`, `kfr load` and the agent
//! reach the mock, served over TLS as Maskinporten and KFR are, through an HTTP CONNECT proxy and
//! through a TLS-inspecting one whose CA is only in `extra_ca_bundle`; a proxy demanding
//! credentials gets them and they never show; `NO_PROXY` sends a host around the proxy; and
//! `kfr doctor` names the proxy and the CA that verified each server. The proxies are
//! [`proxy::Proxy`], which counts the CONNECTs it saw.

mod proxy;

use crate::load::{Env, assert_ok, ids};
use crate::sync_cli::Agent;
use crate::util::{certs_local, kfr, output_text};
use kfr::certs::TlsCa;
use proxy::{Mode, Proxy};

/// The mock over TLS, as `kfr certs local --mock-url https://…` prepares it: its certificate from
/// its own CA (`mock-tls-ca.pem`, neither the system's nor the bank's). Returns that CA's PEM.
async fn setup_tls() -> (Env, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let d = tempfile::tempdir().unwrap();
    let (dp, u) = (d.path().to_owned(), url.clone());
    tokio::task::spawn_blocking(move || certs_local(&dp, &u)).await.unwrap();
    let read = |name: &str| std::fs::read_to_string(d.path().join(name)).unwrap();
    // The mock trusts the business certificates' CA (ca.pem), as Maskinporten trusts Buypass'.
    use rustls_pki_types::pem::PemObject as _;
    let ders = rustls_pki_types::CertificateDer::pem_slice_iter(read("ca.pem").as_bytes())
        .map(|c| c.unwrap().to_vec())
        .collect();
    let mut cfg = kfr::mock::MockConfig::new(ders);
    cfg.ingest_rate = 1000;
    cfg.tls = Some(kfr::mock::MockTls {
        cert_chain_pem: read("mock-tls-cert.pem"),
        key_pem: read("mock-tls-key.pem").into(),
    });
    let mock = kfr::mock::MockServer::start(listener, cfg).await.unwrap();
    assert!(mock.base_url().starts_with("https://"), "{}", mock.base_url());
    let ca = read("mock-tls-ca.pem");
    (Env::new(d, mock), ca)
}

/// Rewrites kfr.toml as `kfr certs local` wrote it plus `proxy` and `extra_ca_bundle`.
fn configure(env: &Env, proxy: Option<&str>, extra_ca_bundle: Option<&str>) {
    let base = env.dir.join("kfr.toml.base");
    if !base.exists() {
        std::fs::copy(env.dir.join("kfr.toml"), &base).unwrap();
    }
    // As written, kfr.toml trusts the mock's CA (extra_ca_bundle): each test says what it trusts.
    let mut toml: String = std::fs::read_to_string(&base)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("extra_ca_bundle"))
        .map(|l| format!("{l}\n"))
        .collect();
    if let Some(p) = proxy {
        toml.push_str(&format!("proxy = \"{p}\"\n"));
    }
    if let Some(b) = extra_ca_bundle {
        toml.push_str(&format!("extra_ca_bundle = \"{b}\"\n"));
    }
    std::fs::write(env.dir.join("kfr.toml"), toml).unwrap();
}

/// The proxy variables a developer's shell may hold; unset for every command here, so that only
/// what a test gives decides the route.
const PROXY_VARS: [&str; 8] = [
    "NO_PROXY",
    "no_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
    "HTTP_PROXY",
    "http_proxy",
];

/// `kfr --config kfr.toml <args>` with the proxy variables unset, then `vars` set.
async fn run(env: &Env, args: &[&str], vars: &[(&str, &str)]) -> std::process::Output {
    let dir = env.dir.clone();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    tokio::task::spawn_blocking(move || {
        let mut c = kfr(&dir);
        c.arg("--config").arg(dir.join("kfr.toml")).args(&args);
        for k in PROXY_VARS {
            c.env_remove(k);
        }
        for (k, v) in vars {
            c.env(k, v);
        }
        c.output().unwrap()
    })
    .await
    .unwrap()
}

/// The agent with this configuration delivers what is queued, then stops on SIGTERM; its log.
async fn agent_delivers(env: &Env, customers: &[String]) -> String {
    for id in customers {
        assert_ok(&run(env, &["enqueue", "add", id, "--state", "s.db"], &[]).await);
    }
    let key = env.dir.join("ingest.key");
    std::fs::write(&key, "a-long-random-test-key-0123456789").unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let agent = Agent::spawn_with(
        env,
        &["--listen", "127.0.0.1:0", "--ingest-key-file", "ingest.key"],
        |c| {
            for k in PROXY_VARS {
                c.env_remove(k);
            }
        },
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !customers.iter().all(|c| env.active().contains_key(c)) {
        assert!(
            std::time::Instant::now() < deadline,
            "the agent did not deliver: {}",
            agent.log.lock().unwrap().join("\n")
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (code, log) = agent.stop();
    assert_eq!(code, Some(0), "{log}");
    log
}

/// token, add, load and the agent, each asserted to have gone through `proxy`.
async fn every_path_goes_through(env: &Env, proxy: &Proxy, seed: u32) {
    let mock = env.mock.addr().to_string();
    let before = proxy.tunnels();
    let (o, _) = assert_ok(&run(env, &["token"], &[]).await);
    assert!(o.contains("bits:kundeforhold.write"), "{o}");
    let after_token = proxy.tunnels();
    assert!(after_token > before, "kfr token did not go through the proxy");

    let people = ids(seed, 6);
    let (_, e) = assert_ok(&run(env, &["add", &people[0], "--state", "add.db"], &[]).await);
    assert!(env.active().contains_key(&people[0]), "{e}");
    let after_add = proxy.tunnels();
    assert!(after_add > after_token, "kfr add did not go through the proxy");

    env.write("batch.txt", &format!("{}\n{}\n{}\n", people[1], people[2], people[3]));
    let out = run(
        env,
        &[
            "load",
            "batch.txt",
            "--state",
            "load.db",
            "--ingest-rate",
            "1000",
            "--settle-secs",
            "0",
        ],
        &[],
    )
    .await;
    let (o, _) = assert_ok(&out);
    assert!(o.contains("complete: 3 relationships"), "{o}");
    let after_load = proxy.tunnels();
    assert!(after_load > after_add, "kfr load did not go through the proxy");

    agent_delivers(env, &people[4..]).await;
    assert!(proxy.tunnels() > after_load, "the agent did not go through the proxy");
    for c in proxy.connects() {
        assert_eq!(c.target, mock, "the proxy was asked only for the mock: {c:?}");
    }
    for id in &people {
        assert!(env.active().contains_key(id), "every path registered its customer");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_add_load_and_the_agent_reach_kfr_through_a_connect_proxy() {
    let (env, _) = setup_tls().await;
    let proxy = Proxy::start(Mode::Tunnel, None).await;
    configure(&env, Some(&proxy.url(None)), Some("mock-tls-ca.pem"));
    every_path_goes_through(&env, &proxy, 301).await;

    // The proxy is really in the way: stopped, nothing gets through, and the error says where.
    let url = proxy.url(None);
    drop(proxy);
    configure(&env, Some(&url), Some("mock-tls-ca.pem"));
    let out = run(&env, &["token"], &[]).await;
    let (o, e) = output_text(&out);
    assert_ne!(out.status.code(), Some(0), "{o}{e}");
    assert!(e.contains("hint:") && e.contains("proxy"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_tls_inspecting_proxy_the_bank_s_ca_in_extra_ca_bundle_is_what_makes_it_work() {
    let (env, mock_ca_pem) = setup_tls().await;
    let bank_ca = TlsCa::new("Bank Egress Inspection CA").unwrap();
    std::fs::write(env.dir.join("bank-ca.pem"), &bank_ca.cert_pem).unwrap();
    let proxy = Proxy::start(
        Mode::Inspect {
            ca: Box::new(bank_ca),
            upstream_ca_pem: mock_ca_pem,
        },
        None,
    )
    .await;

    // Without the bank's CA the proxy's certificate is refused: nothing is sent through it.
    configure(&env, Some(&proxy.url(None)), None);
    let out = run(&env, &["token"], &[]).await;
    let (o, e) = output_text(&out);
    assert_ne!(out.status.code(), Some(0), "{o}{e}");
    assert!(
        e.to_lowercase().contains("certificate"),
        "names the certificate problem: {e}"
    );
    assert!(proxy.tunnels() >= 1, "the attempt did reach the proxy");
    // Nor does trusting only the mock's own CA help: the proxy, not the mock, shows a certificate.
    configure(&env, Some(&proxy.url(None)), Some("mock-tls-ca.pem"));
    let out = run(&env, &["token"], &[]).await;
    assert_ne!(out.status.code(), Some(0), "{:?}", output_text(&out));

    configure(&env, Some(&proxy.url(None)), Some("bank-ca.pem"));
    every_path_goes_through(&env, &proxy, 302).await;

    let (o, _) = assert_ok(&run(&env, &["doctor"], &[]).await);
    let tls: Vec<&str> = o.lines().filter(|l| l.contains(" tls ")).collect();
    assert_eq!(tls.len(), 2, "one tls line each for Maskinporten and KFR: {o}");
    for l in tls {
        assert!(
            l.contains("issued by O=KFR Local Test, CN=Bank Egress Inspection CA")
                && l.contains("verified by extra_ca_bundle ")
                && l.ends_with("bank-ca.pem"),
            "doctor says the bank's CA in extra_ca_bundle verified it: {o}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_that_demands_credentials_gets_them_and_they_never_show() {
    const USER: &str = "kfr-egress";
    const PASSWORD: &str = "Pw-n0t-in-any-log-4711";
    let (env, _) = setup_tls().await;
    let proxy = Proxy::start(Mode::Tunnel, Some((USER, PASSWORD))).await;
    let basic = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"))
    };
    let never_shown = |what: &str, text: &str| {
        assert!(
            !text.contains(PASSWORD) && !text.contains(&basic),
            "{what} shows the proxy password: {text}"
        );
    };

    // Without credentials: 407, a failure that points at the proxy.
    configure(&env, Some(&proxy.url(None)), Some("mock-tls-ca.pem"));
    let out = run(&env, &["token"], &[]).await;
    let (o, e) = output_text(&out);
    assert_ne!(out.status.code(), Some(0), "{o}{e}");
    assert!(e.contains("proxy authorization required") && e.contains("hint:"), "{e}");
    assert!(proxy.refusals() >= 1 && proxy.tunnels() == 0, "{:?}", proxy.connects());
    let refused = proxy.refusals();

    // With them: every CONNECT carried them, at the most talkative log level too.
    configure(&env, Some(&proxy.url(Some((USER, PASSWORD)))), Some("mock-tls-ca.pem"));
    let out = run(&env, &["-vvv", "token"], &[]).await;
    let (o, e) = assert_ok(&out);
    never_shown("kfr -vvv token", &format!("{o}{e}"));
    assert_eq!(proxy.refusals(), refused, "no further refusal");
    assert!(proxy.tunnels() >= 1);

    let people = ids(303, 2);
    let (o, e) = assert_ok(&run(&env, &["-vv", "add", &people[0], "--state", "add.db"], &[]).await);
    never_shown("kfr add", &format!("{o}{e}"));
    let log = agent_delivers(&env, &people[1..]).await;
    never_shown("the agent's log", &log);
    assert_eq!(proxy.refusals(), refused, "the agent sent the credentials too");

    let (o, e) = assert_ok(&run(&env, &["doctor"], &[]).await);
    never_shown("kfr doctor", &format!("{o}{e}"));
    let named = format!("via proxy http://{USER}:redacted@{}/ (the `proxy` setting)", proxy.addr);
    assert_eq!(
        o.lines().filter(|l| l.contains(&named)).count(),
        2,
        "doctor names the proxy, password redacted, for Maskinporten and KFR: {o}"
    );
    let (o, e) = assert_ok(&run(&env, &["config", "show"], &[]).await);
    never_shown("kfr config show", &format!("{o}{e}"));

    // A proxy URL kfr cannot use is refused without echoing it.
    configure(
        &env,
        Some(&format!("http://{USER}:{PASSWORD}@[::1")),
        Some("mock-tls-ca.pem"),
    );
    let out = run(&env, &["token"], &[]).await;
    let (o, e) = output_text(&out);
    assert_ne!(out.status.code(), Some(0), "{o}{e}");
    never_shown("an invalid proxy's error", &format!("{o}{e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_in_no_proxy_goes_around_the_proxy() {
    let (env, _) = setup_tls().await;
    let proxy = Proxy::start(Mode::Tunnel, None).await;
    configure(&env, Some(&proxy.url(None)), Some("mock-tls-ca.pem"));
    let no_proxy = [("NO_PROXY", "127.0.0.1")];

    assert_ok(&run(&env, &["token"], &no_proxy).await);
    let people = ids(304, 2);
    assert_ok(&run(&env, &["add", &people[0], "--state", "add.db"], &no_proxy).await);
    assert!(env.active().contains_key(&people[0]));
    let (o, _) = assert_ok(&run(&env, &["doctor"], &no_proxy).await);
    assert_eq!(
        o.lines()
            .filter(|l| l.contains("direct: NO_PROXY names 127.0.0.1"))
            .count(),
        2,
        "{o}"
    );
    assert!(
        proxy.connects().is_empty(),
        "the proxy saw nothing: {:?}",
        proxy.connects()
    );

    // Without NO_PROXY the same command does go through it (lower case works as curl's).
    assert_ok(&run(&env, &["token"], &[]).await);
    assert_eq!(proxy.tunnels(), 1);
    assert_ok(&run(&env, &["token"], &[("no_proxy", "localhost,127.0.0.1")]).await);
    assert_eq!(proxy.tunnels(), 1);
}

/// A server whose CA the system trusts (here through `SSL_CERT_FILE`, which the platform verifier
/// reads on Linux) is reported as verified by the system roots, not by `extra_ca_bundle`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_says_the_system_roots_verified_a_server_the_system_trusts() {
    let (env, _) = setup_tls().await;
    let unrelated = TlsCa::new("Unrelated Bank CA").unwrap();
    std::fs::write(env.dir.join("bank-ca.pem"), &unrelated.cert_pem).unwrap();
    configure(&env, None, Some("bank-ca.pem"));
    let sys = env.dir.join("mock-tls-ca.pem").display().to_string();
    let (o, _) = assert_ok(&run(&env, &["doctor"], &[("SSL_CERT_FILE", &sys)]).await);
    let tls: Vec<&str> = o.lines().filter(|l| l.contains(" tls ")).collect();
    assert_eq!(tls.len(), 2, "{o}");
    for l in tls {
        assert!(
            l.contains("KFR Local Mock TLS CA") && l.contains("verified by the system roots"),
            "{o}"
        );
    }
    assert_eq!(
        o.lines()
            .filter(|l| l.contains("direct: no `proxy` setting and no HTTPS_PROXY/ALL_PROXY"))
            .count(),
        2,
        "{o}"
    );

    // Without the system trusting it, and the bundle not holding its CA: a failure saying so.
    let out = run(&env, &["doctor"], &[]).await;
    let (o, e) = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{o}{e}");
    let failed = o
        .lines()
        .find(|l| l.starts_with("FAIL  tls"))
        .unwrap_or_else(|| panic!("{o}"));
    assert!(failed.to_lowercase().contains("certificate"), "{o}");
    assert!(o.contains("extra_ca_bundle"), "the hint names extra_ca_bundle: {o}");
}
