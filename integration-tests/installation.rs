//! One installation that every command finds (issue 21 finding 1 and deliver 1, 6): the sync
//! agent started the way `deploy/kfr-sync.service` starts it and an operator's commands from a
//! shell read the same `/etc/kfr/kfr.toml`, so they share one state store and its delete barrier.
//! Also the Kubernetes Secret's file layout against the agent's key-file check.
//!
//! The host's `/etc/kfr` is never touched: the installation lives in a temporary directory and
//! `KFR_SYSTEM_CONFIG` points the (otherwise flagless) commands at its `etc/kfr/kfr.toml`. The
//! deploy files are read as shipped and only their absolute paths are moved into that directory.

use crate::load::{Env, RATE, assert_ok, ids, setup};
use crate::util::{kfr, kfr_process, output_text};
use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap()
}

/// The bearer key of the test agent's intake.
const INGEST_KEY: &str = "a-long-random-test-key-0123456789";

/// A host's installation in a temporary directory: `root/etc/kfr` and `root/var/lib/kfr`.
struct Installation {
    root: PathBuf,
}

impl Installation {
    /// `deploy/kfr.toml` installed as the system configuration, pointed at the mock, with the
    /// certificate, its password and the ingest key copied in as `install` in the unit's notes
    /// puts them (mode 0600).
    fn new(env: &Env) -> Installation {
        let root = env.dir.join("host");
        let (etc, var) = (root.join("etc/kfr"), root.join("var/lib/kfr"));
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::create_dir_all(&var).unwrap();
        let private = |name: &str, bytes: &[u8]| {
            use std::os::unix::fs::PermissionsExt as _;
            let p = etc.join(name);
            std::fs::write(&p, bytes).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        };
        private("certificate.p12", &std::fs::read(env.dir.join("client.p12")).unwrap());
        private(
            "certificate-password",
            &std::fs::read(env.dir.join("client.p12.password")).unwrap(),
        );
        private("ingest-key", INGEST_KEY.as_bytes());

        let shipped = read("deploy/kfr.toml");
        assert!(shipped.contains("state = \"/var/lib/kfr/kfr-state.db\""), "{shipped}");
        let url = env.mock.base_url();
        let toml = format!(
            "maskinporten_issuer = \"{}\"\nkfr_base_url = \"{}\"\n{}",
            env.mock.issuer(),
            env.mock.kfr_base_url(),
            shipped
                .replace("env = \"test\"", "env = \"local\"")
                .replacen("\"REPLACE-ME\"", &format!("\"{}\"", crate::util::ORG), 1)
                .replacen("\"REPLACE-ME\"", &format!("\"{}\"", crate::util::CLIENT_ID), 1)
                .replace("\"/etc/kfr/", &format!("\"{}/", etc.display()))
                .replace("\"/var/lib/kfr/", &format!("\"{}/", var.display()))
                .replace("127.0.0.1:8090", "127.0.0.1:0")
                .replace("127.0.0.1:9464", "127.0.0.1:0")
        );
        assert!(!toml.contains("REPLACE-ME"), "{toml}");
        assert!(url.starts_with("http://127.0.0.1:"), "{url}");
        std::fs::write(etc.join("kfr.toml"), toml).unwrap();
        Installation { root }
    }

    fn system_config(&self) -> PathBuf {
        self.root.join("etc/kfr/kfr.toml")
    }

    /// The store the installation's configuration names.
    fn store(&self) -> PathBuf {
        self.root.join("var/lib/kfr/kfr-state.db")
    }

    /// `kfr ARGS` from an operator's shell in `cwd`: no --config, no --state, the shell's own
    /// state home; only the location of the system configuration is moved.
    fn shell(&self, cwd: &Path, args: &[&str], vars: &[(&str, &str)]) -> std::process::Output {
        let mut c = kfr(cwd);
        c.env(kfr::env_vars::KFR_SYSTEM_CONFIG, self.system_config()).args(args);
        for (k, v) in vars {
            c.env(k, v);
        }
        c.output().unwrap()
    }
}

/// The agent as `deploy/kfr-sync.service` runs it: ExecStart's arguments and the unit's
/// Environment= lines (%S and %d mapped into the installation), and nothing else.
struct UnitAgent {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

/// The values of `Key=` lines of the unit's `[Service]`.
fn unit_values(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .filter_map(|l| l.trim().strip_prefix(&format!("{key}=")))
        .map(str::to_string)
        .collect()
}

impl UnitAgent {
    fn start(inst: &Installation) -> UnitAgent {
        let unit = read("deploy/kfr-sync.service");
        let exec = unit_values(&unit, "ExecStart").pop().expect("ExecStart");
        let mut words = exec.split_whitespace();
        assert_eq!(words.next(), Some("/usr/bin/kfr"), "{exec}");
        let state_dir = inst.root.join("var/lib");
        let cwd = inst.root.join("service-cwd");
        std::fs::create_dir_all(&cwd).unwrap();
        // The service user's own home: never the operator's.
        let mut cmd = kfr_process(&cwd, &inst.root.join("service-home"));
        cmd.env(kfr::env_vars::KFR_SYSTEM_CONFIG, inst.system_config());
        for e in unit_values(&unit, "Environment") {
            let (k, v) = e.split_once('=').unwrap();
            let v = v
                .replace("%S", &state_dir.display().to_string())
                .replace("%d", &inst.root.join("credentials").display().to_string());
            cmd.env(k, v);
        }
        let mut child = cmd
            .args(words)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(vec![]));
        let (tx, lines) = std::sync::mpsc::channel();
        let l = log.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line.clone());
                l.lock().unwrap().push(line);
            }
        });
        UnitAgent { child, lines, log }
    }

    /// The message of the next log line starting with `prefix` (the unit logs JSON).
    fn wait_for(&self, prefix: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let line = self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| panic!("no `{prefix}` line: {}", self.log.lock().unwrap().join("\n")));
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            if let Some(m) = v["fields"]["message"].as_str().and_then(|m| m.strip_prefix(prefix)) {
                return m.to_string();
            }
        }
    }

    /// SIGTERM, then the exit code.
    fn stop(mut self) -> Option<i32> {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the agent did not stop: {}", self.log.lock().unwrap().join("\n"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Issue 21 finding 1, as the operator met it: the agent runs under the shipped unit; on load day
/// `kfr load` is started from a shell as operations.md says; the core system posts a remove to the
/// agent during the load. The remove must be held by the load's barrier (it was sent at once and
/// the customer who left stayed registered, because the unit gave the agent a store of its own),
/// and `kfr outbox status` from the shell must see it there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remove_posted_to_the_agent_during_a_shell_load_is_held_by_its_barrier() {
    let env = setup().await;
    let inst = Installation::new(&env);
    let customers = ids(140, 80);
    env.write("c.csv", &customers.iter().map(|i| format!("{i}\n")).collect::<String>());
    let leaver = customers[0].clone();

    let agent = tokio::task::spawn_blocking({
        let inst = Installation {
            root: inst.root.clone(),
        };
        move || {
            let agent = UnitAgent::start(&inst);
            let url = agent.wait_for("kfr sync: taking events on ");
            agent.wait_for("kfr sync: delivering to ");
            (agent, url)
        }
    });
    let (agent, events_url) = agent.await.unwrap();

    // The load, from the operator's shell in the directory of the export; stopped (test hook)
    // with its second batch accepted, so the barrier stays up as long as the test needs.
    let rate = RATE.to_string();
    let load = ["load", "c.csv", "--ingest-rate", &rate, "--max-batch-bytes", "1024"];
    let out = inst.shell(&env.dir, &load, &[("KFR_TEST_ABORT_AT", "accepted:2")]);
    assert_ne!(out.status.code(), Some(0), "{:?}", output_text(&out));
    assert!(inst.store().exists(), "the load used the installation's store");

    let body = format!("{{\"op\":\"remove\",\"customer_id\":\"{leaver}\",\"event_id\":\"core-1\"}}\n");
    let answer = reqwest::Client::new()
        .post(&events_url)
        .bearer_auth(INGEST_KEY)
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 202, "{}", answer.text().await.unwrap());

    // From another directory, still without flags: the agent's store, the event in it, held.
    let elsewhere = tempfile::tempdir().unwrap();
    let (stdout, _) = assert_ok(&inst.shell(elsewhere.path(), &["outbox", "status", "--json"], &[]));
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["state"], inst.store().display().to_string(), "{v}");
    assert_eq!(v["status"]["barrier"], 1, "the load's barrier is up: {v}");
    assert_eq!(v["status"]["pending"], 1, "the remove waits: {v}");
    assert!(env.ended().is_empty(), "nothing was ended during the load");

    // The load finishes from the shell; then the agent delivers the remove.
    assert_ok(&inst.shell(&env.dir, &["load", "--resume", "--ingest-rate", &rate], &[]));
    let t = Instant::now();
    while env.ended().is_empty() {
        assert!(t.elapsed() < Duration::from_secs(30), "the held remove was never sent");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(env.ended(), vec![leaver.clone()]);

    // The pseudonym an operator looks up from the shell is the one in the agent's log: one key.
    let (pseudonym, _) = assert_ok(&inst.shell(elsewhere.path(), &["pseudonym", &leaver], &[]));
    let pseudonym = pseudonym.trim().to_string();
    assert!(pseudonym.starts_with("p-"), "{pseudonym}");
    let log = agent.log.clone();
    let code = tokio::task::spawn_blocking(move || agent.stop()).await.unwrap();
    assert_eq!(code, Some(0));
    let log = log.lock().unwrap().join("\n");
    assert!(
        log.contains(&format!("\"customer\":\"{pseudonym}\"")),
        "the agent logged the customer as {pseudonym}: {log}"
    );
    assert!(!log.contains(&leaver), "no identifier in full in the log");
}

/// The unit sets nothing a shell would not see: no store, no state home, no configuration key
/// in its environment and no --config, so what it runs is what `kfr` finds from any shell.
#[test]
fn the_unit_names_no_store_and_no_configuration_of_its_own() {
    let unit = read("deploy/kfr-sync.service");
    let env = unit_values(&unit, "Environment");
    assert!(env.is_empty(), "Environment= in the unit: {env:?}");
    let exec = unit_values(&unit, "ExecStart").join(" ");
    for flag in ["--config", "--state", "--listen"] {
        assert!(!exec.contains(flag), "{flag} in ExecStart: {exec}");
    }
    assert!(
        read("deploy/kfr.toml").contains("state = \"/var/lib/kfr/kfr-state.db\""),
        "the installation's configuration names the store"
    );
    assert!(unit_values(&unit, "StateDirectory").contains(&"kfr".to_string()));
}

/// `outbox status`, `load status` and `sync`'s start-up line all resolve the store from the
/// system configuration when nothing else is given; `--config` and `KFR_CONFIG` come first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_without_flags_finds_the_installation_store() {
    let env = setup().await;
    let inst = Installation::new(&env);
    let cwd = tempfile::tempdir().unwrap();
    // A stray ./kfr.toml (the copy the operator installed from) is not read, and says so.
    std::fs::write(cwd.path().join("kfr.toml"), "state = \"stray.db\"\n").unwrap();
    let out = inst.shell(cwd.path(), &["config", "show", "--json"], &[]);
    let (stdout, stderr) = assert_ok(&out);
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["config_file"], inst.system_config().display().to_string());
    assert_eq!(v["settings"]["state"]["value"], inst.store().display().to_string());
    assert!(stderr.contains("kfr.toml is not read"), "{stderr}");

    // Both status commands open (and refuse, since nothing created it yet) the same store.
    for args in [&["outbox", "status"][..], &["load", "status"][..]] {
        let (o, e) = output_text(&inst.shell(cwd.path(), args, &[]));
        assert!(
            format!("{o}{e}").contains(&inst.store().display().to_string()),
            "{args:?} names the installation's store: {o}{e}"
        );
    }

    // KFR_CONFIG, then --config, win over the system file.
    let other = env.dir.join("kfr.toml");
    let with_env = inst.shell(
        cwd.path(),
        &["config", "show", "--json"],
        &[("KFR_CONFIG", &other.display().to_string())],
    );
    let v: serde_json::Value = serde_json::from_str(&assert_ok(&with_env).0).unwrap();
    assert_eq!(v["config_file"], other.display().to_string());
    assert_eq!(v["config_file_found"], "named by KFR_CONFIG");
    let flag = inst.shell(cwd.path(), &["--config", "kfr.toml", "config", "show", "--json"], &[]);
    let v: serde_json::Value = serde_json::from_str(&assert_ok(&flag).0).unwrap();
    assert_eq!(v["config_file"], "kfr.toml");
    assert_eq!(v["settings"]["state"]["value"], "stray.db");

    // The agent the unit's way reports the same store it opened.
    let agent = UnitAgent::start(&inst);
    let line = tokio::task::spawn_blocking(move || {
        let l = agent.wait_for("kfr sync: delivering to ");
        assert_eq!(agent.stop(), Some(0));
        l
    })
    .await
    .unwrap();
    assert!(
        line.ends_with(&format!("with store {}", inst.store().display())),
        "{line}"
    );
}

/// The documented example configuration with a store given in the environment (as the old
/// unit's `KFR_STORE_URL` did): every command exited 2 because the file also set `state`. A store
/// key from the environment now replaces the file's, whatever its spelling; two spellings in one
/// layer stay refused.
#[test]
fn the_example_configuration_loads_with_a_store_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    // Without the certificate lines: their files do not exist here, and only the store matters.
    let example: String = read("docs/kfr.example.toml")
        .lines()
        .filter(|l| !l.starts_with("certificate"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(dir.path().join("kfr.toml"), example).unwrap();
    let show = |vars: &[(&str, &str)]| {
        let mut c = kfr(dir.path());
        c.args(["--config", "kfr.toml", "config", "show", "--json"]);
        for (k, v) in vars {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    let out = show(&[("KFR_STORE_URL", "sqlite:///srv/kfr/state.db")]);
    let (o, e) = output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{o}{e}");
    let v: serde_json::Value = serde_json::from_str(&o).unwrap();
    assert_eq!(v["settings"]["store.url"]["value"], "sqlite:///srv/kfr/state.db", "{v}");
    let out = show(&[
        ("KFR_STORE_URL", "/srv/kfr/state.db"),
        ("KFR_STATE", "/srv/kfr/other.db"),
    ]);
    let (o, e) = output_text(&out);
    assert_eq!(out.status.code(), Some(2), "{o}{e}");
    assert!(e.contains("keep only `state`"), "{e}");
}

/// Kubernetes writes a Secret volume as files in a timestamped directory, `..data` a symlink to
/// it, and each key a symlink through `..data`. The agent's key-file check follows the links:
/// mode 0400 is accepted, 0440 (what kubelet leaves when the pod has an fsGroup) is refused, and
/// the manifest's init container turns the latter into the former.
#[test]
fn the_kubernetes_secret_layout_passes_the_key_file_check_only_at_0400() {
    use kfr::sync::source::http::IngestKey;
    use std::os::unix::fs::{PermissionsExt as _, symlink};
    let secret_volume = |mode: u32| {
        let dir = tempfile::tempdir().unwrap();
        let stamp = dir.path().join("..2026_01_05_10_00_00.123456789");
        std::fs::create_dir(&stamp).unwrap();
        let file = stamp.join("ingest-key");
        std::fs::write(&file, INGEST_KEY).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
        symlink("..2026_01_05_10_00_00.123456789", dir.path().join("..data")).unwrap();
        symlink("..data/ingest-key", dir.path().join("ingest-key")).unwrap();
        dir
    };
    let ok = secret_volume(0o400);
    assert!(ok.path().join("ingest-key").is_symlink());
    IngestKey::from_file(&ok.path().join("ingest-key")).expect("0400 through the symlinks is accepted");
    let group = secret_volume(0o440);
    let err = IngestKey::from_file(&group.path().join("ingest-key")).unwrap_err();
    assert!(err.to_string().contains("ingest-key"), "{err}");

    // The manifest: the Secret asks for 0400; the init container copies it for the agent at 0400.
    let manifest = read("deploy/kubernetes/statefulset.yaml");
    let doc = &yaml_rust2::YamlLoader::load_from_str(&manifest).unwrap()[0];
    let pod = &doc["spec"]["template"]["spec"];
    let volumes = pod["volumes"].as_vec().unwrap();
    let secret = volumes
        .iter()
        .find(|v| !v["secret"].is_badvalue())
        .expect("a Secret volume");
    // Octal as Kubernetes reads it (YAML 1.1); this YAML 1.2 reader sees the digits 400.
    assert_eq!(secret["secret"]["defaultMode"].as_i64(), Some(400), "defaultMode: 0400");
    assert!(!manifest.contains("defaultMode: 0440"), "no group-readable secrets");
    let init = &pod["initContainers"][0];
    let script = init["args"][0].as_str().unwrap();
    let dest = tempfile::tempdir().unwrap();
    let script = script
        .replace("/run/secrets/kfr-mounted", &group.path().display().to_string())
        .replace("/run/secrets/kfr", &dest.path().display().to_string());
    let ran = std::process::Command::new("/bin/sh")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(ran.status.success(), "{:?}", output_text(&ran));
    let copied = dest.path().join("ingest-key");
    assert_eq!(std::fs::metadata(&copied).unwrap().permissions().mode() & 0o777, 0o400);
    IngestKey::from_file(&copied).expect("the init container's copy is accepted");
    assert!(
        !dest.path().join("..data").exists(),
        "only the keys are copied, not kubelet's bookkeeping"
    );
    // The agent reads the copy, and its configuration from the ConfigMap at /etc/kfr.
    let config = read("deploy/kubernetes/configmap.yaml");
    assert!(
        config.contains("ingest_key_file = \"/run/secrets/kfr/ingest-key\""),
        "{config}"
    );
    assert!(config.contains("state = \"/var/lib/kfr/kfr-state.db\""), "{config}");
    let mounts = pod["containers"][0]["volumeMounts"].as_vec().unwrap();
    assert!(
        mounts.iter().any(|m| m["mountPath"].as_str() == Some("/etc/kfr")),
        "{mounts:?}"
    );
    assert!(
        pod["containers"][0]["env"].is_badvalue(),
        "no configuration in the environment"
    );
}
