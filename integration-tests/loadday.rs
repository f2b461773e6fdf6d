//! Load day you can trust (issue 9): each test reproduces a way `kfr load` could end with KFR in
//! the wrong state while reporting success, or leave an operator stuck, and shows it fixed. The
//! built binary runs against the in-process mock (see `load.rs` for the shared set-up).

use crate::load::{assert_ok, ids, setup};
use crate::util::{ORG, output_text};

/// A header whose date columns kfr does not know would load closed relationships as active and
/// every start date as the load day: such a file is refused, naming the columns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmapped_date_columns_refuse_the_load_naming_them() {
    let env = setup().await;
    let id = ids(91, 2);
    env.write(
        "fra.csv",
        &format!(
            "customer_id;fra_dato;til_dato\n{};2019-03-01;2020-01-01\n{};2018-05-02;\n",
            id[0], id[1]
        ),
    );
    let out = env.load("fra.csv", "s.db", &[], &[]).await;
    let (_, stderr) = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("fra_dato") && stderr.contains("til_dato"), "{stderr}");
    assert!(stderr.contains("hint: "), "{stderr}");
    assert_eq!(env.batches_accepted(), 0, "nothing uploaded");
    // A column with a neutral name holding dates is refused too.
    env.write("opened.csv", &format!("kundeid;merknad\n{};15.01.2020\n", id[0]));
    let out = env.load("opened.csv", "s.db", &[], &[]).await;
    let (_, stderr) = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("merknad") && stderr.contains("line 2"), "{stderr}");
    // `kfr validate --file` reads the same grammar and refuses it the same way.
    let out = env.run(&["validate", "--file", "fra.csv"], &[]).await;
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out).1);
    // The recognised spellings load with their dates: a closed relationship stays out.
    env.write(
        "ok.csv",
        &format!(
            "customer_id;StartDate;enddate;navn\n{};2019-03-01;2020-01-01;Ola\n{};2018-05-02;;Kari\n",
            id[0], id[1]
        ),
    );
    assert_ok(&env.load("ok.csv", "s.db", &[], &[]).await);
    let active = env.active();
    assert_eq!(active.len(), 1, "{active:?}");
    assert_eq!(active.get(&id[1]).map(String::as_str), Some("2018-05-02"));
}

/// Nothing to load is not a successful load: an empty, header-only, BOM-only or CR-only file is
/// refused (exit 1, no job) unless `--allow-empty`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_with_nothing_to_load_is_refused_unless_allowed() {
    let env = setup().await;
    let id = ids(92, 3);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty.csv", vec![], "nothing to load"),
        ("header.csv", b"kundeid;startdato\n".to_vec(), "nothing to load"),
        ("bom.csv", b"\xEF\xBB\xBF".to_vec(), "nothing to load"),
        (
            "cr.csv",
            format!("{}\r{}\r{}\r", id[0], id[1], id[2]).into_bytes(),
            "CR",
        ),
    ];
    for (name, bytes, want) in &cases {
        std::fs::write(env.dir.join(name), bytes).unwrap();
        let out = env.load(name, "s.db", &[], &[]).await;
        let (_, stderr) = output_text(&out);
        assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
        assert!(stderr.contains(want) && stderr.contains("hint: "), "{name}: {stderr}");
        assert!(!stderr.contains(&id[0]), "{name}: masked: {stderr}");
    }
    // No job was created: a resume finds nothing.
    let out = env.load("empty.csv", "s.db", &["--resume"], &[]).await;
    assert!(
        output_text(&out).1.contains("nothing to resume"),
        "{}",
        output_text(&out).1
    );
    let (stdout, _) = assert_ok(&env.load("empty.csv", "s.db", &["--allow-empty"], &[]).await);
    assert!(stdout.contains("0 relationships"), "{stdout}");
    assert_eq!(env.batches_accepted(), 0);
}

/// A second mock (same CA) and a config for it next to the first one.
async fn other_kfr(env: &crate::load::Env) -> (kfr::mock::MockServer, std::path::PathBuf) {
    use rustls_pki_types::pem::PemObject as _;
    let pem = std::fs::read(env.dir.join("ca.pem")).unwrap();
    let ders: Vec<Vec<u8>> = rustls_pki_types::CertificateDer::pem_slice_iter(&pem)
        .map(|c| c.unwrap().to_vec())
        .collect();
    let mut cfg = kfr::mock::MockConfig::new(ders);
    cfg.ingest_rate = crate::load::RATE;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let mock = kfr::mock::MockServer::start(listener, cfg).await.unwrap();
    let toml = std::fs::read_to_string(env.dir.join("kfr.toml")).unwrap();
    let old = env.mock.base_url();
    assert!(toml.contains(&old), "{toml}");
    let path = env.dir.join("kfr2.toml");
    std::fs::write(&path, toml.replace(&old, &url)).unwrap();
    (mock, path)
}

/// A job belongs to the KFR it was started against: resuming a crashed rehearsal against another
/// KFR would skip the batches confirmed elsewhere and call the load complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_against_another_kfr_is_refused() {
    let env = setup().await;
    let id = ids(93, 80);
    env.write("c.csv", &id.iter().map(|i| format!("{i}\n")).collect::<String>());
    let out = env
        .load("c.csv", "s.db", &[], &[("KFR_TEST_ABORT_AT", "confirmed:1")])
        .await;
    assert_ne!(out.status.code(), Some(0));
    let (other, cfg2) = other_kfr(&env).await;
    let rate = crate::load::RATE.to_string();
    let args = [
        "--config",
        cfg2.to_str().unwrap(),
        "load",
        "c.csv",
        "--state",
        "s.db",
        "--resume",
        "--ingest-rate",
        &rate,
        "--max-batch-bytes",
        "1024",
    ];
    let out = crate::util::kfr(&env.dir).args(args).output().unwrap();
    let (stdout, stderr) = output_text(&out);
    assert_eq!(out.status.code(), Some(2), "{stdout}{stderr}");
    assert!(
        stderr.contains(&env.mock.base_url()) && stderr.contains(&other.base_url()),
        "{stderr}"
    );
    assert_eq!(
        other.state().snapshot().batches_accepted,
        0,
        "nothing sent to the other KFR"
    );
    // The KFR it belongs to finishes it.
    assert_ok(&env.load("c.csv", "s.db", &["--resume"], &[]).await);
    assert_eq!(env.active().len(), 80);
}

/// One writer per store: a second load or resume while a load runs on the store is refused at
/// once, naming the running job (before: every batch was uploaded twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_load_on_a_busy_store_is_refused_at_once() {
    let (env, first) = crate::load::busy_store(94, "20").await;
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    for extra in [&["--resume"][..], &[][..]] {
        let out = env.load("c.csv", "s.db", extra, &[]).await;
        let (_, stderr) = output_text(&out);
        assert_eq!(out.status.code(), Some(1), "{extra:?}: {stderr}");
        assert!(stderr.contains("load job 1") && stderr.contains("running"), "{stderr}");
    }
    // "At once": each was refused by the lock the running load holds (named above), so it did
    // not wait for that load; the first load is still the one at work.
    assert!(!first.is_finished(), "the refusals did not wait for the first load");
    let out = first.await.unwrap();
    let (stdout, _) = assert_ok(&out);
    let batches = stdout
        .split(" complete: ")
        .nth(1)
        .and_then(|s| s.split("relationships in ").nth(1))
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok())
        .expect("summary names the batches");
    assert_eq!(env.batches_accepted(), batches, "no batch uploaded twice");
}

/// Batch POSTs the mock answered, whatever the status.
fn batch_posts(env: &crate::load::Env) -> u64 {
    env.mock
        .state()
        .snapshot()
        .kfr_requests_by_operation
        .get("batch")
        .map(|m| m.values().sum())
        .unwrap_or(0)
}

fn fail_everything(env: &crate::load::Env, on: bool) {
    env.mock.state().set_kfr_faults(kfr::mock::KfrFaults {
        error_rate: if on { 1.0 } else { 0.0 },
        ..kfr::mock::KfrFaults::NONE
    });
}

/// A batch whose upload got a 5xx (the body went out: KFR may have taken it) is never re-POSTed
/// in-process. The load waits, then stops naming the batch and the resume command; the resume
/// probes for the batch's entries first, re-sends it only when absent, and counts the re-send.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ambiguous_upload_is_never_repeated_blindly() {
    let env = setup().await;
    let id = ids(95, 30);
    env.write("c.csv", &id.iter().map(|i| format!("{i}\n")).collect::<String>());
    // KFR starts failing right after the check that precedes the upload (one own lookup), so
    // the upload itself meets the 500.
    let state = env.mock.state();
    let trigger = std::thread::spawn(move || {
        let t = std::time::Instant::now();
        while t.elapsed() < std::time::Duration::from_secs(20) {
            let lookups: u64 = state
                .snapshot()
                .kfr_requests_by_operation
                .get("lookup")
                .map(|m| m.values().sum())
                .unwrap_or(0);
            if lookups >= 1 {
                state.set_kfr_faults(kfr::mock::KfrFaults {
                    error_rate: 1.0,
                    ..kfr::mock::KfrFaults::NONE
                });
                return;
            }
        }
    });
    let out = env.load("c.csv", "s.db", &["--outage-wait-secs", "2"], &[]).await;
    trigger.join().unwrap();
    let (stdout, stderr) = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert_eq!(
        batch_posts(&env),
        1,
        "one POST of the batch, no in-process repeat\n{stderr}"
    );
    assert!(stderr.contains("batch 1"), "{stderr}");
    let resume = format!(
        "kfr --config {} load c.csv --resume --state s.db",
        env.dir.join("kfr.toml").display()
    );
    assert!(
        stderr.contains(&resume),
        "the exact resume command, with the configuration it ran with: {stderr}"
    );
    fail_everything(&env, false);
    let out = env
        .load("c.csv", "s.db", &["--resume", "--report", "r.json"], &[])
        .await;
    let (_, stderr) = assert_ok(&out);
    assert_eq!(env.batches_accepted(), 1, "{stderr}");
    assert_eq!(env.active().len(), 30);
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(env.dir.join("r.json")).unwrap()).unwrap();
    assert_eq!(report["batches_resent"], 1, "{report}");
}

/// Transient failures during the load are waited out between steps (here 3 s of 500s on every
/// request, longer than the client's own retries last): the load completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_kfr_is_waited_out_and_the_load_completes() {
    let env = std::sync::Arc::new(setup().await);
    let id = ids(96, 80);
    env.write("c.csv", &id.iter().map(|i| format!("{i}\n")).collect::<String>());
    fail_everything(&env, true);
    let healer = {
        let env = env.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_secs(3)).await;
            fail_everything(&env, false);
        })
    };
    let out = env.load("c.csv", "s.db", &["--report", "r.json"], &[]).await;
    healer.await.unwrap();
    let (_, stderr) = assert_ok(&out);
    assert_eq!(env.active().len(), 80, "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(env.dir.join("r.json")).unwrap()).unwrap();
    assert_eq!(
        env.batches_accepted() as usize,
        report["batches"].as_array().unwrap().len()
    );
}

/// "The last entry is visible" proves nothing when KFR held that customer before the upload (a
/// parallel add, D-3 step 3): the batch is confirmed only by an entry that was new, and the
/// register holds every entry when the load says it is complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_registered_before_the_upload_does_not_confirm_the_batch() {
    let env = setup().await;
    env.mock.state().set_ingest_rate(40);
    let mut id = ids(97, 30);
    id.sort_by_key(|s| (s.len(), s.clone()));
    env.write("c.csv", &id.iter().map(|i| format!("{i}\n")).collect::<String>());
    // The batch's last entry (entries go in numeric identifier order) is registered in parallel first.
    assert_ok(&env.run(&["add", id.last().unwrap()], &[]).await);
    let out = env.load("c.csv", "s.db", &["--sample", "0"], &[]).await;
    let (_, stderr) = assert_ok(&out);
    let active = env.active();
    assert_eq!(
        active.len(),
        30,
        "complete means every entry is stored; missing: {}",
        30 - active.len()
    );
    assert!(
        stderr.contains("by own lookup of an entry new in this batch"),
        "{stderr}"
    );
}

/// A file still being written is refused: its size and modification time are compared before
/// and after reading, so a load never plans from half an export.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_still_being_written_is_refused() {
    let env = setup().await;
    let id = ids(98, 100_000);
    let path = env.write("c.csv", &id.iter().map(|i| format!("{i}\n")).collect::<String>());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, path, more) = (stop.clone(), path.clone(), ids(99, 1)[0].clone());
        std::thread::spawn(move || {
            use std::io::Write as _;
            let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                writeln!(f, "{more}").unwrap();
                f.flush().unwrap();
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
        })
    };
    let out = env.load("c.csv", "s.db", &["--dry-run"], &[]).await;
    let out2 = env.load("c.csv", "s.db", &[], &[]).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    for out in [out, out2] {
        let (_, stderr) = output_text(&out);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("changed while it was read"), "{stderr}");
        assert!(stderr.contains("hint: "), "{stderr}");
    }
    assert_eq!(env.batches_accepted(), 0);
}

/// A gateway or KFR that echoes the customer identifier in an answer kfr cannot read: the
/// message shows it masked, never in full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identifier_echoed_by_a_server_is_masked() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let env = setup().await;
    let person = ids(100, 1)[0].clone();
    // A fake KFR: every request gets a 200 whose body holds the identifier where the list of
    // banks should be.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let fake = format!("http://{}", listener.local_addr().unwrap());
    let echoed = person.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let echoed = echoed.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let _ = sock.read(&mut buf).await;
                let body = format!("{{\"banks\":\"{echoed}\"}}");
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
            });
        }
    });
    let toml = std::fs::read_to_string(env.dir.join("kfr.toml")).unwrap();
    let kfr_line = toml
        .lines()
        .find(|l| l.starts_with("kfr_base_url"))
        .unwrap()
        .to_string();
    let cfg = env.dir.join("fake.toml");
    std::fs::write(
        &cfg,
        toml.replace(&kfr_line, &format!("kfr_base_url = \"{fake}/kar-ws/api/v1\"")),
    )
    .unwrap();
    let out = crate::util::kfr(&env.dir)
        .arg("--config")
        .arg(&cfg)
        .args(["lookup", &person])
        .output()
        .unwrap();
    let (stdout, stderr) = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        !stderr.contains(&person) && !stdout.contains(&person),
        "{stdout}{stderr}"
    );
    assert!(stderr.contains(&person[9..]), "the masked form is shown: {stderr}");
}

/// SIGTERM (as from systemd or `kill`) stops the load after the current step: the report is
/// written, the exact resume command printed, exit 143; the resume completes the load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_after_the_current_step_with_the_resume_command() {
    let env = setup().await;
    env.mock.state().set_ingest_rate(100);
    let id = ids(101, 240);
    env.write("c.csv", &id.iter().map(|i| format!("{i}\n")).collect::<String>());
    let home = tempfile::tempdir().unwrap();
    let child = crate::util::kfr_process(&env.dir, home.path())
        .args([
            "--config", "kfr.toml", "load", "c.csv", "--state", "s.db", "--report", "r.json",
        ])
        .args(["--ingest-rate", "200000", "--max-batch-bytes", "1024"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Signalled once the load is at work (a batch past `planned`): its handler is installed by
    // then, however slowly the machine started the process.
    let t = std::time::Instant::now();
    loop {
        use kfr::store::backend::Jobs as _;
        let path = env.dir.join("s.db");
        let store = path
            .exists()
            .then(|| kfr::store::sqlite::SqliteBackend::open(&path).ok())
            .flatten();
        let busy = store
            .and_then(|mut s| s.batches(1).ok())
            .is_some_and(|b| b.iter().any(|b| b.status != kfr::store::BatchStatus::Planned));
        if busy || t.elapsed() > std::time::Duration::from_secs(30) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let (stdout, stderr) = output_text(&out);
    assert_eq!(out.status.code(), Some(143), "{stdout}{stderr}");
    // Issue 21 finding 3: the command is printed with the --config the load ran with, and run
    // exactly as printed (from the same directory) it finishes the job.
    let printed = stderr
        .split("Resume with: ")
        .nth(1)
        .and_then(|r| r.lines().next())
        .unwrap_or_else(|| panic!("no resume command: {stderr}"))
        .to_string();
    assert_eq!(printed, "kfr --config kfr.toml load c.csv --resume --state s.db");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(env.dir.join("r.json")).unwrap()).unwrap();
    assert_eq!(report["job_status"], "running");
    let dir = env.dir.clone();
    let out = tokio::task::spawn_blocking(move || {
        let words: Vec<&str> = printed.split_whitespace().collect();
        assert_eq!(words[0], "kfr");
        crate::util::kfr(&dir).args(&words[1..]).output().unwrap()
    })
    .await
    .unwrap();
    assert_ok(&out);
    assert_eq!(env.active().len(), 240);
    assert_eq!(
        env.batches_accepted() as usize,
        report["batches"].as_array().unwrap().len()
    );
}

/// `kfr load status` shows the jobs of a store (file, hash, KFR, batches by state, held
/// operations) and `--resume` without a file finds the unconfirmed job's file itself; a missing
/// store is reported with its path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_status_shows_the_job_and_resume_finds_it() {
    let env = setup().await;
    let id = ids(103, 80);
    env.write("c.csv", &id.iter().map(|i| format!("{i}\n")).collect::<String>());
    let out = env
        .load("c.csv", "s.db", &[], &[("KFR_TEST_ABORT_AT", "confirmed:1")])
        .await;
    assert_ne!(out.status.code(), Some(0));
    assert_ok(&env.run(&["remove", &id[0], "--state", "s.db"], &[]).await);
    let out = env.run(&["load", "status", "--state", "s.db", "--json"], &[]).await;
    let (stdout, _) = assert_ok(&out);
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let job = &v["jobs"][0];
    assert_eq!(job["id"], 1);
    assert_eq!(job["status"], "running");
    assert_eq!(job["input"], "c.csv");
    assert_eq!(job["kfr_base_url"], env.mock.kfr_base_url());
    assert_eq!(job["batches"]["confirmed"], 1);
    assert_eq!(v["held_operations"]["remove"], 1);
    assert!(!stdout.contains(&id[0]), "no identifier in full: {stdout}");
    let (text, _) = assert_ok(&env.run(&["load", "status", "--state", "s.db"], &[]).await);
    assert!(
        text.contains("job 1") && text.contains("running") && text.contains("c.csv"),
        "{text}"
    );
    // --resume without the file: the job's file is used.
    let rate = crate::load::RATE.to_string();
    let out = env
        .run(
            &[
                "load",
                "--resume",
                "--state",
                "s.db",
                "--ingest-rate",
                &rate,
                "--max-batch-bytes",
                "1024",
            ],
            &[],
        )
        .await;
    let (stdout, stderr) = assert_ok(&out);
    assert!(stdout.contains("complete"), "{stdout}{stderr}");
    assert_eq!(env.active().len(), 79, "all loaded, the held remove sent");
    let out = env.run(&["load", "status", "--state", "nowhere.db"], &[]).await;
    let (_, stderr) = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("nowhere.db"), "{stderr}");
}

/// Reports for Bits: `--report x.md` is Markdown and `--report x.json` JSON (each with the other
/// beside it), they name the environment, KFR and kfr version, are 0600 even when the file was
/// there with wider rights, and a report path that is a symlink is refused before anything is
/// sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_are_what_their_name_says_private_and_checked_first() {
    use std::os::unix::fs::PermissionsExt as _;
    let env = setup().await;
    let id = ids(104, 20);
    env.write("c.csv", &id.iter().map(|i| format!("{i}\n")).collect::<String>());
    env.write("elsewhere.json", "");
    std::os::unix::fs::symlink(env.dir.join("elsewhere.json"), env.dir.join("link.json")).unwrap();
    let out = env.load("c.csv", "s.db", &["--report", "link.json"], &[]).await;
    let (_, stderr) = output_text(&out);
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("link.json") && stderr.contains("symlink"), "{stderr}");
    assert_eq!(env.batches_accepted(), 0, "refused before the load started");
    assert_eq!(std::fs::read_to_string(env.dir.join("elsewhere.json")).unwrap(), "");

    let md = env.write("r.md", "old");
    std::fs::set_permissions(&md, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_ok(&env.load("c.csv", "s.db", &["--report", "r.md"], &[]).await);
    let text = std::fs::read_to_string(&md).unwrap();
    assert!(text.starts_with("# KFR initial load report"), "{text}");
    assert!(
        text.contains(&env.mock.kfr_base_url()) && text.contains("local"),
        "{text}"
    );
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(env.dir.join("r.json")).unwrap()).unwrap();
    assert_eq!(json["environment"], "local");
    assert_eq!(json["kfr_version"], env!("CARGO_PKG_VERSION"));
    for f in ["r.md", "r.json"] {
        let mode = std::fs::metadata(env.dir.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
}

/// `kfr doctor` checks KFR too: an own lookup of the institution's own org.nr (harmless) proves
/// the network path, the token's acceptance and `fid`; a wrong base URL fails the check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_checks_kfr_with_an_own_lookup() {
    let env = setup().await;
    let (stdout, stderr) = assert_ok(&env.run(&["doctor"], &[]).await);
    let line = stdout
        .lines()
        .find(|l| l.contains(" kfr "))
        .unwrap_or_default()
        .to_string();
    assert!(
        line.starts_with("ok") && line.contains("own lookup"),
        "{stdout}{stderr}"
    );
    let toml = std::fs::read_to_string(env.dir.join("kfr.toml")).unwrap();
    std::fs::write(
        env.dir.join("bad.toml"),
        toml.replace("/kar-ws/api/v1", "/kar-ws/api/v9"),
    )
    .unwrap();
    let out = crate::util::kfr(&env.dir)
        .args(["--config", "bad.toml", "doctor"])
        .output()
        .unwrap();
    let (stdout, stderr) = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    let line = stdout
        .lines()
        .find(|l| l.contains(" kfr "))
        .unwrap_or_default()
        .to_string();
    assert!(line.starts_with("FAIL"), "{stdout}");
}

/// With stderr not a terminal (`kfr load F 2>log`) a plain progress line with the phase and the
/// count is written at a fixed interval (30 s by default; 1 s here), however long a step takes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_progress_line_is_written_when_stderr_is_not_a_terminal() {
    let env = setup().await;
    env.mock.state().set_ingest_rate(100);
    let id = ids(105, 300);
    env.write("c.csv", &id.iter().map(|i| format!("{i}\n")).collect::<String>());
    let out = env.load("c.csv", "s.db", &["--progress-every-secs", "1"], &[]).await;
    let (_, stderr) = assert_ok(&out);
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("progress: ")).collect();
    assert!(lines.len() >= 2, "{stderr}");
    assert!(lines.iter().all(|l| l.contains("/300 ingested")), "{lines:?}");
    assert!(lines.iter().any(|l| l.contains("batch")), "a phase is named: {lines:?}");
}

// ---- Item 14: the plan report and the rejected-lines summary -----------------------------

fn mode(p: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// `kfr load F --dry-run --report R` writes the plan to mail Bits, in the format R's extension
/// says, mode 0600, naming the environment, KFR, org.nr and kfr version; nothing is sent and no
/// state is written. A report path that is a symlink or in a missing directory refuses the dry
/// run before the file is read (exit 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_report_is_the_plan_for_bits_in_the_format_its_extension_says() {
    let env = setup().await;
    let id = ids(120, 90);
    env.write("c.csv", &id.iter().map(|i| format!("{i}\n")).collect::<String>());
    let dry = ["load", "c.csv", "--dry-run", "--max-batch-bytes", "1024", "--report"];
    let out = env.run(&[&dry[..], &["plan.json"]].concat(), &[]).await;
    let (_, stderr) = assert_ok(&out);
    assert!(stderr.contains("plan report written to plan.json"), "{stderr}");
    let path = env.dir.join("plan.json");
    assert_eq!(mode(&path), 0o600);
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(v["report"], "plan");
    assert_eq!(v["org_number"], crate::util::ORG);
    assert_eq!(v["environment"], "local");
    assert!(
        v["kfr_base_url"].as_str().unwrap().starts_with(&env.mock.base_url()),
        "{v}"
    );
    assert_eq!(v["kfr_version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["counts"]["valid_unique"], 90);
    assert!(v["plan"]["batches"].as_array().unwrap().len() >= 2, "{v}");
    assert!(v["plan"]["ingestion_secs"].as_f64().is_some());
    assert_eq!(v["plan"]["notify_bits"], false);
    assert!(v["made_at"].is_string() && v["content_hash"].as_str().unwrap().len() == 64);

    let out = env.run(&[&dry[..], &["plan.md"]].concat(), &[]).await;
    assert_ok(&out);
    let md = std::fs::read_to_string(env.dir.join("plan.md")).unwrap();
    assert!(md.starts_with("# KFR initial load plan"), "{md}");
    for want in [
        crate::util::ORG,
        "environment local",
        "No advance notice to Bits",
        "| 1 |",
    ] {
        assert!(md.contains(want), "{want}: {md}");
    }
    assert!(!id.iter().any(|i| md.contains(i.as_str())), "no identifier in the plan");
    assert_eq!(env.batches_accepted(), 0);

    // Refused before the file is read: a symlinked report, a missing directory.
    std::os::unix::fs::symlink(env.dir.join("target.json"), env.dir.join("link.json")).unwrap();
    for bad in ["link.json", "nowhere/plan.json"] {
        let out = env.run(&[&dry[..], &[bad]].concat(), &[]).await;
        let (stdout, stderr) = output_text(&out);
        assert_eq!(out.status.code(), Some(2), "{bad}: {stderr}");
        assert!(stdout.is_empty(), "no plan printed: {stdout}");
    }
    assert!(
        !env.dir.join("target.json").exists(),
        "nothing written through the link"
    );
}

/// Bad lines are summarised on screen by rule with the first few examples (line number and
/// masked identifier); the full list goes only to the rejects file, 0600, and never through a
/// symlink (an existing one refuses the run, exit 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_lines_are_summarised_by_rule_and_the_rejects_file_is_never_a_symlink() {
    let env = setup().await;
    let good = ids(121, 20);
    // Persons (even positions) with a broken last check digit.
    let bad: Vec<String> = good
        .iter()
        .step_by(2)
        .map(|i| {
            let last = i.as_bytes()[10] - b'0';
            format!("{}{}", &i[..10], (last + 1) % 10)
        })
        .collect();
    let text: String = good.iter().chain(&bad).map(|i| format!("{i}\n")).collect();
    env.write("c.csv", &text);
    let out = env.run(&["load", "c.csv", "--dry-run", "--skip-invalid"], &[]).await;
    let (_, stderr) = assert_ok(&out);
    let shown: Vec<&str> = stderr.lines().filter(|l| l.starts_with("c.csv:")).collect();
    assert_eq!(shown.len(), 3 + 1, "three examples and the summary: {stderr}");
    assert!(
        shown[3].contains("and 7 more bad lines") && shown[3].contains("by rule: "),
        "{stderr}"
    );
    assert!(shown[3].contains(" 10"), "all ten counted under their rule: {stderr}");
    assert!(shown[0].starts_with("c.csv:21: "), "line number: {stderr}");
    assert!(!bad.iter().any(|b| stderr.contains(b.as_str())), "masked: {stderr}");
    let rejects = env.dir.join("c.rejects.csv");
    assert_eq!(mode(&rejects), 0o600);
    let full = std::fs::read_to_string(&rejects).unwrap();
    assert_eq!(full.lines().count(), 1 + 10, "every bad line, in full: {full}");

    std::fs::remove_file(&rejects).unwrap();
    std::os::unix::fs::symlink(env.dir.join("elsewhere.csv"), &rejects).unwrap();
    let out = env.run(&["load", "c.csv", "--dry-run", "--skip-invalid"], &[]).await;
    let (_, stderr) = output_text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("symlink"), "{stderr}");
    assert!(!env.dir.join("elsewhere.csv").exists());
}

/// Item 9: entries KFR already held before the upload with a later start date than the file's
/// (here: added today, the file says 2019) are counted and named, masked, in the report; KFR keeps
/// its own date.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_kfr_already_held_with_a_later_start_are_named_masked_in_the_report() {
    let env = setup().await;
    let persons: Vec<String> = ids(122, 6).into_iter().step_by(2).collect();
    for p in &persons {
        assert_ok(&env.run(&["add", p], &[]).await);
    }
    env.write(
        "c.csv",
        &persons.iter().map(|i| format!("{i};2019-01-01\n")).collect::<String>(),
    );
    let out = env.load("c.csv", "s.db", &["--report", "r.json"], &[]).await;
    let (_, stderr) = assert_ok(&out);
    assert!(stderr.contains("KFR keeps its own date"), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(env.dir.join("r.json")).unwrap()).unwrap();
    let kept = report["kfr_keeps_its_own_date"].as_array().unwrap();
    assert_eq!(kept.len(), 3, "{report}");
    assert!(kept.iter().all(|k| k["file_start"] == "2019-01-01"));
    let md = std::fs::read_to_string(env.dir.join("r.md")).unwrap();
    assert!(md.contains("KFR keeps its own date"), "{md}");
    for p in &persons {
        assert!(
            !report.to_string().contains(p.as_str()) && !md.contains(p.as_str()),
            "masked"
        );
        assert!(!stderr.contains(p.as_str()));
    }
    // The later date stays in KFR.
    let today = env.mock.state().clock().today().to_string();
    assert!(persons.iter().all(|p| env.active()[p] == today), "{:?}", env.active());
}

// ---- Item 11: `kfr load abandon` ---------------------------------------------------------

/// A job left running after batch 1 of 3 was confirmed, with `removes` held behind it.
async fn abandoned_candidate(env: &crate::load::Env, seed: u32) -> Vec<String> {
    let id = ids(seed, 80);
    env.write("c.csv", &id.iter().map(|i| format!("{i}\n")).collect::<String>());
    let out = env
        .load("c.csv", "s.db", &[], &[("KFR_TEST_ABORT_AT", "confirmed:1")])
        .await;
    assert_ne!(out.status.code(), Some(0));
    id
}

/// Ids, sorted as the load sends them: batch 1 holds the first ones.
fn in_load_order(mut id: Vec<String>) -> Vec<String> {
    id.sort_by_key(|s| (s.len(), s.clone()));
    id
}

/// Abandoning a job while operations are held behind it is refused (exit 2, nothing changed);
/// `--drop-held` abandons it and lists the held operations masked, and they never reach KFR.
/// The barrier is down afterwards, `kfr load status` shows the job abandoned, and `--resume`
/// never picks it up again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandon_refuses_while_operations_are_held_and_drop_held_lists_them_unsent() {
    let env = setup().await;
    let id = in_load_order(abandoned_candidate(&env, 130).await);
    for i in [&id[0], &id[1]] {
        let (stdout, _) = assert_ok(&env.run(&["remove", i, "--state", "s.db"], &[]).await);
        assert!(stdout.starts_with("held: "), "{stdout}");
    }
    let out = env.run(&["load", "abandon", "1", "--state", "s.db"], &[]).await;
    let (stdout, stderr) = output_text(&out);
    assert_eq!(out.status.code(), Some(2), "{stdout}{stderr}");
    assert!(
        stderr.contains("2 remove(s)") && stderr.contains("--send-held"),
        "{stderr}"
    );
    async fn status(env: &crate::load::Env) -> serde_json::Value {
        let out = env.run(&["load", "status", "--state", "s.db", "--json"], &[]).await;
        serde_json::from_str(&assert_ok(&out).0).unwrap()
    }
    assert_eq!(status(&env).await["jobs"][0]["status"], "running", "nothing changed");

    let out = env
        .run(
            &["load", "abandon", "1", "--state", "s.db", "--drop-held", "--json"],
            &[],
        )
        .await;
    let (stdout, stderr) = assert_ok(&out);
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["status"], "abandoned", "{v}");
    let dropped = v["held_operations"]["dropped"].as_array().unwrap();
    assert_eq!(dropped.len(), 2, "{v}");
    assert!(dropped.iter().all(|d| d["operation"] == "remove"));
    assert_eq!(v["batches"]["confirmed"]["batches"], 1, "{v}");
    assert!(v["ledger_rows"].as_u64().unwrap() >= 1, "the ledger keeps batch 1: {v}");
    assert!(
        !id.iter()
            .any(|i| i.len() == 11 && (stdout.contains(i.as_str()) || stderr.contains(i.as_str()))),
        "masked: {stdout}{stderr}"
    );
    assert!(env.ended().is_empty(), "dropped removes are never sent");
    assert!(env.active().contains_key(&id[0]), "batch 1 stays in KFR");
    let st = status(&env).await;
    assert_eq!(st["jobs"][0]["status"], "abandoned", "{st}");
    assert_eq!(st["held_operations"]["remove"], 0, "{st}");

    // The barrier is down: a remove goes straight to KFR.
    let (stdout, _) = assert_ok(&env.run(&["remove", &id[0], "--state", "s.db"], &[]).await);
    assert!(stdout.starts_with("removed"), "{stdout}");
    // --resume never picks an abandoned job, with or without the file.
    for args in [&["c.csv", "--resume"][..], &["--resume"][..]] {
        let out = env
            .run(&[&["load"][..], args, &["--state", "s.db"]].concat(), &[])
            .await;
        let (_, stderr) = output_text(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    }
    assert_eq!(env.batches_accepted(), 1, "nothing more uploaded");
}

/// `--send-held` abandons the job and sends what it held, each customer's in the order issued:
/// a remove then an add on the same customer leave it registered (the other order would end it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandon_with_send_held_sends_the_held_operations_in_order() {
    let env = setup().await;
    let id = in_load_order(abandoned_candidate(&env, 131).await);
    for (op, i) in [("remove", &id[0]), ("add", &id[0]), ("remove", &id[2])] {
        let (stdout, _) = assert_ok(&env.run(&[op, i, "--state", "s.db"], &[]).await);
        assert!(
            stdout.starts_with("held: ") || stdout.starts_with("queued: "),
            "{stdout}"
        );
    }
    let out = env
        .run(&["load", "abandon", "1", "--state", "s.db", "--send-held"], &[])
        .await;
    let (stdout, stderr) = assert_ok(&out);
    assert!(stdout.contains("load job 1 (c.csv) abandoned"), "{stdout}");
    assert!(stdout.contains("stays in KFR") && stdout.contains("ledger"), "{stdout}");
    let sent: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.trim().strip_prefix("held operation sent: "))
        .collect();
    assert_eq!(sent.len(), 3, "{stdout}{stderr}");
    let first_of = |op: &str| sent.iter().position(|s| s.starts_with(op)).unwrap();
    assert!(first_of("remove") < first_of("add"), "{sent:?}");
    assert!(env.ended().contains(&id[2]), "{sent:?}");
    assert!(
        env.active().contains_key(&id[0]),
        "remove, then add: registered again (the other order would have ended it)"
    );
    let out = env.run(&["load", "status", "--state", "s.db", "--json"], &[]).await;
    let v: serde_json::Value = serde_json::from_str(&assert_ok(&out).0).unwrap();
    assert_eq!(v["held_operations"]["add"], 0, "{v}");
    assert_eq!(v["held_operations"]["remove"], 0, "{v}");
    // Asked again once everything held was delivered (issue 20: by `kfr sync`, say): done, and
    // it says so (this exited 1).
    let out = env
        .run(&["load", "abandon", "1", "--state", "s.db", "--send-held"], &[])
        .await;
    let (stdout, _) = assert_ok(&out);
    assert!(
        stdout.contains("was abandoned before") && stdout.contains("delivered already"),
        "{stdout}"
    );
    assert!(!stdout.contains("held operation sent"), "nothing sent twice: {stdout}");
}

/// Only a running job can be abandoned: a confirmed one, an abandoned one with nothing held and
/// an id the store does not have are each a clear error (exit 2, nothing changed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoning_a_confirmed_or_unknown_job_is_a_clear_error() {
    let env = setup().await;
    let id = ids(132, 20);
    env.write("c.csv", &id.iter().map(|i| format!("{i}\n")).collect::<String>());
    assert_ok(&env.load("c.csv", "s.db", &[], &[]).await);
    for (job, want) in [("1", "load job 1 is confirmed"), ("7", "has no load job 7")] {
        let out = env.run(&["load", "abandon", job, "--state", "s.db"], &[]).await;
        let (stdout, stderr) = output_text(&out);
        assert_eq!(out.status.code(), Some(2), "{stdout}{stderr}");
        assert!(stderr.contains(want) && stderr.contains("hint: "), "{stderr}");
    }
    let out = env.run(&["load", "abandon", "1", "--state", "none.db"], &[]).await;
    let (_, stderr) = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("none.db"), "{stderr}");
    assert!(!env.dir.join("none.db").exists(), "no store created");
}

// ---- Item 12: the ingested count measured ------------------------------------------------

/// KFR slower than planned (the mock ingests 60/s, the load plans 100/s): the JSON progress
/// events carry the ingested count with its basis, measured by own lookups of entries new in the
/// batch (each a lower bound), and the notice that KFR is slower gives the measured count, below
/// what the plan expected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ingested_count_is_measured_and_says_so() {
    let env = setup().await;
    env.mock.state().set_ingest_rate(60);
    let id = ids(133, 120);
    env.write("c.csv", &id.iter().map(|i| format!("{i}\n")).collect::<String>());
    let out = env
        .run(
            &["load", "c.csv", "--state", "s.db", "--ingest-rate", "100", "--json"],
            &[],
        )
        .await;
    let (stdout, _) = assert_ok(&out);
    let events: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let progress: Vec<&serde_json::Value> = events.iter().filter(|e| e["event"] == "progress").collect();
    assert!(!progress.is_empty(), "{stdout}");
    assert!(
        progress
            .iter()
            .all(|p| p["ingested"].as_u64().unwrap() <= 120 && p["total"] == 120)
    );
    let measured: Vec<u64> = progress
        .iter()
        .filter(|p| p["ingested_basis"] == "measured")
        .map(|p| p["ingested"].as_u64().unwrap())
        .collect();
    assert!(!measured.is_empty(), "{stdout}");
    assert!(
        measured.windows(2).all(|w| w[0] <= w[1]),
        "a lower bound only grows: {measured:?}"
    );
    assert!(
        progress
            .iter()
            .all(|p| ["measured", "estimate"].contains(&p["ingested_basis"].as_str().unwrap())),
        "{stdout}"
    );
    let waiting = events
        .iter()
        .find(|e| e["event"] == "waiting_for_ingestion")
        .expect("KFR is slower than planned");
    assert_eq!(waiting["expected"], 120, "{waiting}");
    assert!(
        waiting["ingested"].as_u64().unwrap() < 120,
        "the measured figure, not the plan's: {waiting}"
    );
    assert_eq!(env.active().len(), 120);
}

/// On screen (stderr not a terminal: the plain progress line) the count is labelled as measured
/// or as an estimate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_progress_line_labels_the_ingested_count() {
    let env = setup().await;
    env.mock.state().set_ingest_rate(80);
    let id = ids(134, 120);
    env.write("c.csv", &id.iter().map(|i| format!("{i}\n")).collect::<String>());
    let out = env
        .run(
            &[
                "load",
                "c.csv",
                "--state",
                "s.db",
                "--ingest-rate",
                "80",
                "--progress-every-secs",
                "1",
            ],
            &[],
        )
        .await;
    let (_, stderr) = assert_ok(&out);
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("progress: ")).collect();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("ingested (measured)") || l.contains("ingested (estimate)")),
        "{stderr}"
    );
    assert!(lines.iter().all(|l| !l.contains("(estimated at")), "{lines:?}");
}

// ---- Issue 20 --------------------------------------------------------------------------------

/// Polls until the mock has ingested every accepted batch entry (bounded), so a test sees the
/// register as it ends up, not as it was when the load exited.
async fn drained(env: &crate::load::Env) {
    let since = std::time::Instant::now();
    while env.mock.state().snapshot().ingest_queue > 0 {
        assert!(
            since.elapsed() < std::time::Duration::from_secs(60),
            "the mock never finished ingesting"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Waits (bounded) until the mock accepted more than `before` batches: the load is then
/// ingesting.
async fn accepted(env: &crate::load::Env, before: u64) {
    let since = std::time::Instant::now();
    while env.batches_accepted() <= before {
        assert!(
            since.elapsed() < std::time::Duration::from_secs(60),
            "the load never uploaded its batch"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// N1: the witness of a batch registered in parallel (`kfr add`, D-3 step 3) while the batch
/// ingests must not confirm it early. A customer who left, near the end of the batch, has a
/// remove held behind the load; it must reach KFR after the batch registered them, so they end
/// removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_witness_added_during_ingestion_does_not_confirm_the_batch_early() {
    // About 10 s of ingestion: room for two `kfr` commands on a busy machine.
    let env = std::sync::Arc::new(crate::load::setup_with_rate(500).await);
    let id = in_load_order(ids(140, 5_000));
    env.write("c.csv", &id.iter().map(|i| format!("{i}\n")).collect::<String>());
    let e = env.clone();
    let load = tokio::spawn(async move {
        e.run(
            &[
                "load",
                "c.csv",
                "--state",
                "s.db",
                "--ingest-rate",
                "500",
                "--sample",
                "0",
                "--report",
                "r.json",
                "--outage-wait-secs",
                "30",
            ],
            &[],
        )
        .await
    });
    accepted(&env, 0).await;
    let (witness, left) = (&id[4_999], &id[4_998]);
    let (stdout, _) = assert_ok(&env.run(&["remove", left, "--state", "s.db"], &[]).await);
    assert!(stdout.starts_with("held: "), "the barrier is up: {stdout}");
    assert_ok(&env.run(&["add", witness, "--state", "s.db"], &[]).await);
    let during = env.mock.state().snapshot().ingest_queue > 0;
    let (_, stderr) = assert_ok(&load.await.unwrap());
    drained(&env).await;
    let active = env.active();
    assert!(
        !active.contains_key(left),
        "the customer who left ends removed, not re-registered by the batch after the remove\n{stderr}"
    );
    assert_eq!(active.len(), 4_999, "{stderr}");
    if during {
        // The add landed while the batch was ingesting (the finding's case): the operator is
        // told why the witness did not count, and the report says how the batch was confirmed.
        assert!(stderr.contains("proves nothing"), "the operator is told why: {stderr}");
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(env.dir.join("r.json")).unwrap()).unwrap();
        let by = report["batches"][0]["confirmed_by"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(by.starts_with("witness+time") && by.contains("measured"), "{by}");
    }
}

/// N2: when the last entries of the batch were registered before the load (no witness among
/// them) and KFR ingests slower than `--ingest-rate` says, the wait by time must come from the
/// rate KFR is measured at, not the configured one: a remove held on one of those last customers
/// must not be overtaken by the batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_without_a_witness_at_its_end_waits_by_the_measured_rate() {
    let env = std::sync::Arc::new(crate::load::setup_with_rate(500).await);
    let id = in_load_order(ids(141, 1_500));
    env.write("c.csv", &id.iter().map(|i| format!("{i}\n")).collect::<String>());
    // The last 10 were registered earlier (a partial load into another store, say).
    env.write(
        "old.csv",
        &id[1_490..].iter().map(|i| format!("{i}\n")).collect::<String>(),
    );
    assert_ok(&env.load("old.csv", "old.db", &[], &[]).await);
    let before = env.batches_accepted();
    let e = env.clone();
    let load = tokio::spawn(async move {
        // Told KFR ingests 200,000 a second; it ingests 500.
        e.run(
            &[
                "load",
                "c.csv",
                "--state",
                "s.db",
                "--ingest-rate",
                "200000",
                "--report",
                "r.json",
            ],
            &[],
        )
        .await
    });
    accepted(&env, before).await;
    let left = &id[1_499];
    let (stdout, _) = assert_ok(&env.run(&["remove", left, "--state", "s.db"], &[]).await);
    assert!(stdout.starts_with("held: "), "the barrier is up: {stdout}");
    let (_, stderr) = assert_ok(&load.await.unwrap());
    drained(&env).await;
    let active = env.active();
    assert!(
        !active.contains_key(left),
        "the held remove went after the batch registered the customer again\n{stderr}"
    );
    assert_eq!(active.len(), 1_499, "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(env.dir.join("r.json")).unwrap()).unwrap();
    let by = report["batches"][0]["confirmed_by"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(by.starts_with("witness+time") && by.contains("measured"), "{by}");
}

/// N3: a gateway answering 5xx to every batch upload while lookups work. Each failed upload is
/// probed (the body may have reached KFR) and found absent; the re-sends count toward
/// `--outage-wait-secs` like any outage, so the load stops (exit 1) naming the batch and the
/// resume command instead of re-sending without end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_failures_count_toward_the_outage_wait() {
    let env = setup().await;
    let id = ids(142, 30);
    env.write("c.csv", &id.iter().map(|i| format!("{i}\n")).collect::<String>());
    env.mock.state().set_batch_errors(true);
    let run = env.load("c.csv", "s.db", &["--outage-wait-secs", "3"], &[]);
    // A generous bound so the old behaviour (re-sending for ever) fails instead of hanging.
    let out = tokio::time::timeout(std::time::Duration::from_secs(120), run)
        .await
        .expect("the load stops once the outage wait is used up");
    let (stdout, stderr) = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stderr.contains("batch 1") && stderr.contains("every upload") && stderr.contains("--resume"),
        "{stderr}"
    );
    assert!(batch_posts(&env) >= 2, "it did try again within the wait");
    assert_eq!(env.batches_accepted(), 0);
    // The gateway heals: the resume completes.
    env.mock.state().set_batch_errors(false);
    assert_ok(&env.load("c.csv", "s.db", &["--resume"], &[]).await);
    assert_eq!(env.active().len(), 30);
}

/// N3: SIGTERM while an upload of unknown fate is being probed (and re-sent) stops the load with
/// exit 143, long before the outage wait (10 minutes here) would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_is_answered_while_an_unknown_upload_is_probed() {
    let env = setup().await;
    let id = ids(143, 30);
    env.write("c.csv", &id.iter().map(|i| format!("{i}\n")).collect::<String>());
    env.mock.state().set_batch_errors(true);
    let home = tempfile::tempdir().unwrap();
    let mut child = crate::util::kfr_process(&env.dir, home.path())
        .args(["--config", "kfr.toml", "load", "c.csv", "--state", "s.db"])
        .args(["--ingest-rate", "200000", "--outage-wait-secs", "600"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Signalled once an upload failed: the load is then probing for the batch.
    let t = std::time::Instant::now();
    while batch_posts(&env) == 0 {
        assert!(t.elapsed() < std::time::Duration::from_secs(60), "no upload");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    // A generous bound, so the old behaviour (the signal ignored) fails instead of hanging.
    let t = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t.elapsed() > std::time::Duration::from_secs(60) {
            let _ = child.kill();
            panic!("SIGTERM ignored while the upload was probed");
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(status.code(), Some(143));
    assert_eq!(env.batches_accepted(), 0);
}

/// N4: two loads on one store, one through a symlink to it: the second is refused (exit 1),
/// naming the running job, and nothing is uploaded twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_load_through_a_symlink_to_the_store_is_refused() {
    let (env, first) = crate::load::busy_store(144, "20").await;
    accepted(&env, 0).await;
    std::os::unix::fs::symlink(env.dir.join("s.db"), env.dir.join("link.db")).unwrap();
    for extra in [&["--resume"][..], &[][..]] {
        let out = env.load("c.csv", "link.db", extra, &[]).await;
        let (_, stderr) = output_text(&out);
        assert_eq!(out.status.code(), Some(1), "{extra:?}: {stderr}");
        assert!(stderr.contains("load job 1") && stderr.contains("running"), "{stderr}");
    }
    // A hard link is another name no path resolution leads back to (issue 20): refused too,
    // before anything is opened (SQLite keeps its log by name).
    std::fs::hard_link(env.dir.join("s.db"), env.dir.join("hard.db")).unwrap();
    let out = env.load("c.csv", "hard.db", &["--resume"], &[]).await;
    let (_, stderr) = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("hard link") && stderr.contains("hint:"), "{stderr}");
    std::fs::remove_file(env.dir.join("hard.db")).unwrap();
    assert!(!first.is_finished(), "the refusals did not wait for the first load");
    assert_ok(&first.await.unwrap());
    assert_eq!(env.active().len(), 240);
    let posts = batch_posts(&env);
    assert_eq!(env.batches_accepted(), posts, "no batch uploaded twice");
}

/// An export written in chunks with pauses (the holdout's "complete: 40,000" from half a file):
/// the load waits for the file to be unchanged for the settle window before reading, so a chunk
/// arriving within it refuses the load (exit 1, nothing sent) instead of loading part.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_written_in_chunks_is_never_loaded_in_part() {
    let env = std::sync::Arc::new(setup().await);
    let id = ids(145, 200);
    let path = env.write("c.csv", &id[..100].iter().map(|i| format!("{i}\n")).collect::<String>());
    let e = env.clone();
    let load = tokio::spawn(async move { e.load("c.csv", "s.db", &["--settle-secs", "4"], &[]).await });
    // The second chunk, well inside the settle window.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(
            id[100..]
                .iter()
                .map(|i| format!("{i}\n"))
                .collect::<String>()
                .as_bytes(),
        )
        .unwrap();
    }
    let out = load.await.unwrap();
    let (stdout, stderr) = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stderr.contains("still being written") && stderr.contains("hint: "),
        "{stderr}"
    );
    assert_eq!(env.batches_accepted(), 0, "nothing sent");
    assert!(env.active().is_empty());
}

/// A named FIFO (an export streamed by another program) is read as it streams, not refused as
/// "changed while read" (a regression the holdout found).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_from_a_named_fifo_is_loaded() {
    let env = setup().await;
    let id = ids(146, 40);
    let fifo = env.dir.join("c.fifo");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let text: String = id.iter().map(|i| format!("{i}\n")).collect();
    let path = fifo.clone();
    let writer = std::thread::spawn(move || std::fs::write(&path, text));
    let out = env.load("c.fifo", "s.db", &["--settle-secs", "1"], &[]).await;
    // A load that never opened the FIFO leaves the writer blocked in open(): a reader that
    // opens and closes it lets the writer go (it then fails with a broken pipe), so a failing
    // load fails this test instead of hanging it.
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        let _ = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo);
    }
    let _ = writer.join();
    assert_ok(&out);
    assert_eq!(env.active().len(), 40);
}

/// Issue 20: a load on a named FIFO nobody opens for writing waits in open(2); SIGTERM ends it
/// (it was ignored, for ever) with the interrupted exit code 143 and a message naming the FIFO,
/// and nothing is stored half-way: the store holds no job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_a_load_waiting_for_a_fifo_writer() {
    let env = setup().await;
    let fifo = env.dir.join("c.fifo");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let home = tempfile::tempdir().unwrap();
    let mut child = crate::util::kfr_process(&env.dir, home.path())
        .args(["--config", "kfr.toml", "load", "c.fifo", "--state", "s.db"])
        .args(["--ingest-rate", "200000", "--settle-secs", "0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Signalled once the load holds its store (its lock file names it): the signal handler is
    // installed by then, and the next thing it does is open the input.
    let lock = env.dir.join("s.db.lock");
    let t = std::time::Instant::now();
    while !std::fs::read_to_string(&lock).is_ok_and(|s| s.contains("pid")) {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the load ended before it waited: {:?}",
            child.wait_with_output()
        );
        assert!(
            t.elapsed() < std::time::Duration::from_secs(60),
            "the load never took its store"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    // A hang guard only (the old behaviour waited for ever): generous, not a timing assertion.
    let t = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t.elapsed() > std::time::Duration::from_secs(60) {
            let _ = child.kill();
            panic!("SIGTERM ignored while the load waited for a writer of the FIFO");
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = output_text(&out);
    assert_eq!(out.status.code(), Some(143), "{stdout}{stderr}");
    assert!(
        stderr.contains(
            "error: stopped by SIGTERM while waiting for the input c.fifo (no program has opened it for writing)"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("no load job was created from it and nothing was sent"),
        "{stderr}"
    );
    assert!(stderr.contains("hint: "), "{stderr}");
    let out = env.run(&["load", "status", "--state", "s.db", "--json"], &[]).await;
    let v: serde_json::Value = serde_json::from_str(&assert_ok(&out).0).unwrap();
    assert_eq!(v["jobs"].as_array().map(Vec::len), Some(0), "no job stored: {v}");
    assert_eq!(env.batches_accepted(), 0);
}

/// Names and addresses never leave the export: a rejected line is shown on screen and in the
/// report mailed to Bits by line number, rule and masked identifier only (the rejects file next
/// to the export keeps the line whole, for correction).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_lines_show_no_name_or_address() {
    let env = setup().await;
    let id = ids(147, 3);
    env.write(
        "c.csv",
        &format!(
            "kundeid;navn;adresse;startdato\n{};Kari Nordmann;Storgata 12;2019-01-01\n{}9;Ola Hansen;Fjordveien 3;2019-02-01\n{};Per Berg;Bakken 7;2019-13-01\n",
            id[0], id[1], id[2]
        ),
    );
    let out = env
        .load("c.csv", "s.db", &["--skip-invalid", "--report", "r.json"], &[])
        .await;
    let (stdout, stderr) = assert_ok(&out);
    let report = std::fs::read_to_string(env.dir.join("r.json")).unwrap()
        + &std::fs::read_to_string(env.dir.join("r.md")).unwrap();
    for text in [&stdout, &stderr, &report] {
        for personal in ["Ola", "Hansen", "Fjordveien", "Per", "Berg", "Bakken"] {
            assert!(!text.contains(personal), "{personal} left the export:\n{text}");
        }
        assert!(!text.contains(&id[1]) && !text.contains(&id[2]), "{text}");
    }
    assert!(stderr.contains("line 3") || stderr.contains(":3:"), "{stderr}");
    assert!(
        report.contains("bad_start_date") && report.contains("length"),
        "{report}"
    );
    let rejects = std::fs::read_to_string(env.dir.join("c.rejects.csv")).unwrap();
    assert!(
        rejects.contains("Fjordveien 3"),
        "the rejects file keeps the line: {rejects}"
    );
}

/// `kfr config show` never prints the proxy's password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_show_redacts_the_proxy_password() {
    let env = setup().await;
    let cfg = env.dir.join("kfr.toml");
    let toml = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, format!("proxy = \"http://ops:s3cret@127.0.0.1:9/\"\n{toml}")).unwrap();
    for json in [false, true] {
        let args: &[&str] = if json {
            &["config", "show", "--json"]
        } else {
            &["config", "show"]
        };
        let (stdout, stderr) = assert_ok(&env.run(args, &[]).await);
        assert!(
            !stdout.contains("s3cret") && !stderr.contains("s3cret"),
            "{stdout}{stderr}"
        );
        assert!(stdout.contains("ops:redacted@127.0.0.1"), "{stdout}");
    }
}

/// A missing export is an error with a hint, and creates no state store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_input_file_has_a_hint_and_creates_no_store() {
    let env = setup().await;
    let out = env.load("nope.csv", "s.db", &[], &[]).await;
    let (stdout, stderr) = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stderr.contains("nope.csv") && stderr.contains("hint: "), "{stderr}");
    assert!(!env.dir.join("s.db").exists(), "no store created");
}

/// A bad `KFR_LOG` or an unknown `KFR_*` variable is warned about instead of passing silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_kfr_log_or_an_unknown_kfr_variable_is_warned_about() {
    let env = setup().await;
    let out = env
        .run(
            &["config", "show"],
            &[("KFR_LOG", "kfr=loud"), ("KFR_ORG_NUMBR", "916960190")],
        )
        .await;
    let (_, stderr) = assert_ok(&out);
    assert!(
        stderr.contains("KFR_LOG") && stderr.contains("not a log filter"),
        "{stderr}"
    );
    assert!(
        stderr.contains("KFR_ORG_NUMBR") && stderr.contains("misspelt"),
        "{stderr}"
    );
    // Known ones are not.
    let out = env.run(&["config", "show"], &[("KFR_ORG_NUMBER", "916960190")]).await;
    let (_, stderr) = assert_ok(&out);
    assert!(!stderr.contains("misspelt"), "{stderr}");
}

/// `kfr load status` on an empty file says so and leaves it as it is: no store is made of it and
/// no lock file is created next to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_status_never_turns_an_empty_file_into_a_store() {
    let env = setup().await;
    env.write("empty.db", "");
    let out = env.run(&["load", "status", "--state", "empty.db"], &[]).await;
    let (stdout, stderr) = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stderr.contains("empty file"), "{stderr}");
    assert_eq!(std::fs::metadata(env.dir.join("empty.db")).unwrap().len(), 0);
    assert!(!env.dir.join("empty.db.lock").exists());
}

/// Issue 20: `kfr load status` is strictly read-only. On a store at rest that its user may only
/// read (the file 0444 in a directory 0555; run as `nobody` when the tests run as root, whom
/// file modes do not stop) it answers, and leaves everything as it was: no lock file, no `-wal`
/// or `-shm`, the file's bytes and time unchanged. While a load holds the store, it says so
/// without taking the load's lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_status_is_strictly_read_only() {
    use std::os::unix::fs::PermissionsExt as _;
    let env = setup().await;
    let id = ids(146, 60);
    env.write("c.csv", &id.iter().map(|i| format!("{i}\n")).collect::<String>());
    std::fs::create_dir(env.dir.join("ro")).unwrap();
    let out = env
        .load("c.csv", "ro/s.db", &[], &[("KFR_TEST_ABORT_AT", "confirmed:1")])
        .await;
    assert_ne!(out.status.code(), Some(0));
    let store = env.dir.join("ro/s.db");
    // At rest: the log checkpointed into the file and gone, as after a clean stop.
    {
        let conn = rusqlite::Connection::open(&store).unwrap();
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);").unwrap();
    }
    std::fs::remove_file(env.dir.join("ro/s.db.lock")).unwrap();
    let listing = |dir: &std::path::Path| {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    assert_eq!(listing(&env.dir.join("ro")), ["s.db"]);
    let before = (
        std::fs::read(&store).unwrap(),
        std::fs::metadata(&store).unwrap().modified().unwrap(),
    );
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o444)).unwrap();
    std::fs::set_permissions(env.dir.join("ro"), std::fs::Permissions::from_mode(0o555)).unwrap();
    // As root, the look runs as `nobody`, who may read (and pass through) but not write.
    let root = unsafe { libc::geteuid() } == 0;
    // The one who looks has no credentials either: a configuration naming only the register.
    env.write(
        "look.toml",
        &format!(
            "env = \"local\"\norg_number = \"{ORG}\"\nkfr_base_url = \"{}\"\n",
            env.mock.kfr_base_url()
        ),
    );
    if root {
        let m = std::fs::metadata(&env.dir).unwrap().permissions().mode();
        std::fs::set_permissions(&env.dir, std::fs::Permissions::from_mode(m | 0o055)).unwrap();
    }
    let home = tempfile::tempdir().unwrap();
    std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let look = |json: bool| {
        let mut c = if root {
            let mut c = std::process::Command::new("setpriv");
            c.args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                env!("CARGO_BIN_EXE_kfr"),
            ]);
            c
        } else {
            std::process::Command::new(env!("CARGO_BIN_EXE_kfr"))
        };
        for (k, _) in std::env::vars() {
            if k.starts_with("KFR_") {
                c.env_remove(k);
            }
        }
        c.current_dir(&env.dir)
            .env("NO_COLOR", "1")
            .env(kfr::env_vars::KFR_SYSTEM_CONFIG, "")
            .env(kfr::env_vars::KFR_STATE_HOME, home.path().join("state"))
            .args(["--config", "look.toml", "load", "status", "--state", "ro/s.db"]);
        if json {
            c.arg("--json");
        }
        c.output().unwrap()
    };
    let out = look(true);
    let (stdout, _) = assert_ok(&out);
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["jobs"][0]["status"], "running", "{v}");
    assert_eq!(v["running"], serde_json::Value::Null, "{v}");
    let (text, _) = assert_ok(&look(false));
    assert!(text.contains("no load running on it now"), "{text}");
    assert_eq!(
        listing(&env.dir.join("ro")),
        ["s.db"],
        "nothing created beside the store"
    );
    let after = (
        std::fs::read(&store).unwrap(),
        std::fs::metadata(&store).unwrap().modified().unwrap(),
    );
    assert!(before == after, "the store's bytes and time are unchanged");

    // A writer holding the store (writable again): seen by its pid, its lock left to it.
    std::fs::set_permissions(env.dir.join("ro"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o600)).unwrap();
    use kfr::store::backend::Leases as _;
    let mut writer = kfr::store::sqlite::SqliteBackend::open(&store).unwrap();
    let me = format!("pid {} (the test, as a load)", std::process::id());
    assert_eq!(writer.take_writer(&me).unwrap(), None);
    let out = env.run(&["load", "status", "--state", "ro/s.db", "--json"], &[]).await;
    let (stdout, _) = assert_ok(&out);
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["running"], me.as_str(), "{v}");
    // Still this test's: a load is refused.
    let out = env.load("c.csv", "ro/s.db", &["--resume"], &[]).await;
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out).1);
    writer.release_writer().unwrap();
}

/// Issue 20, N4: a job abandoned under its running load (here by a process that bypasses the
/// writer lock, as an older kfr or a hand-made change would): the load stops writing to it,
/// never calls it complete, and exits 1 saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_whose_job_is_abandoned_under_it_stops_and_exits_1() {
    let (env, first) = crate::load::busy_store(147, "30").await;
    accepted(&env, 0).await;
    {
        use kfr::store::backend::Jobs as _;
        let mut b = kfr::store::sqlite::SqliteBackend::open(&env.dir.join("s.db")).unwrap();
        let action = kfr::store::OperatorAction {
            actor: "test".into(),
            reason: Some("abandoned under the load".into()),
        };
        let r = b
            .abandon_job(1, kfr::store::HeldAtAbandon::Release, &action, chrono::Utc::now())
            .unwrap();
        assert!(matches!(r, kfr::store::Abandonment::Abandoned { .. }), "{r:?}");
    }
    let out = first.await.unwrap();
    let (stdout, stderr) = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stderr.contains("load job 1 was abandoned by an operator while this load ran"),
        "{stderr}"
    );
    assert!(!stdout.contains("complete"), "never called complete: {stdout}");
    let out = env.run(&["load", "status", "--state", "s.db", "--json"], &[]).await;
    let v: serde_json::Value = serde_json::from_str(&assert_ok(&out).0).unwrap();
    assert_eq!(v["jobs"][0]["status"], "abandoned", "{v}");
}
