//! `kfr load` and its SQLite store's files (issue 20): a lost `-wal` must not lose the job (a
//! resume that finds nothing invites a new load, which sends accepted batches again: the worst
//! outcome), a `-wal` removed under a running load stops it naming the file, a truncated store
//! is refused naming the file and the rule. The built binary against the in-process mock.

use crate::load::{assert_ok, ids, setup};
use crate::util::output_text;

/// Batches the mock was sent (accepted or not), from its request counters.
fn batch_posts(env: &crate::load::Env) -> u64 {
    env.mock
        .state()
        .snapshot()
        .kfr_requests_by_operation
        .get("batch")
        .map_or(0, |by_status| by_status.values().sum())
}

/// A load killed (`kill -9`, here the test hook's abort) at a step, its `s.db-wal` then removed
/// (an over-eager clean-up, a copy of the store without it): the resume finds the job with every
/// step it had taken, completes it and sends no batch twice. Before, the store came back empty:
/// "nothing to resume", and a new load sent the accepted batches again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wal_lost_after_a_kill_loses_no_step_of_the_load() {
    let env = setup().await;
    for (n, stage) in ["uploading:2", "accepted:2", "confirmed:1"].into_iter().enumerate() {
        let id = ids(150 + n as u32, 80);
        let file = format!("c{n}.csv");
        env.write(&file, &id.iter().map(|i| format!("{i}\n")).collect::<String>());
        let state = format!("s{n}.db");
        let before = env.batches_accepted();
        let out = env.load(&file, &state, &[], &[("KFR_TEST_ABORT_AT", stage)]).await;
        assert!(output_text(&out).1.contains("test abort at"), "{stage}: the hook fired");
        let wal = env.dir.join(format!("{state}-wal"));
        assert!(wal.exists(), "{stage}: a killed load leaves its log");
        std::fs::remove_file(&wal).unwrap();
        let out = env.load(&file, &state, &["--resume"], &[]).await;
        let (stdout, stderr) = assert_ok(&out);
        assert!(
            stdout.contains("complete: 80 relationships in 2 batches"),
            "{stage}: {stdout}{stderr}"
        );
        assert_eq!(
            env.batches_accepted() - before,
            2,
            "{stage}: no batch accepted twice\n{stderr}"
        );
        let active = env.active();
        assert!(id.iter().all(|i| active.contains_key(i)), "{stage}: register complete");
    }
    let posts = batch_posts(&env);
    assert_eq!(env.batches_accepted(), posts, "no upload repeated");
}

/// The `-wal` removed while the load runs: its next step is refused, the load stops (exit 1)
/// naming the file and what to do, and the resume (the step it had taken copied into the main
/// file) completes without sending a batch twice. Before, the load went on writing to a log
/// nobody could find again and ended "complete".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wal_removed_under_a_running_load_stops_it_naming_the_file() {
    let (env, first) = crate::load::busy_store(155, "30").await;
    // The first batch is with KFR (accepted, ingesting): the load's next step is its confirmation.
    let since = std::time::Instant::now();
    while env.batches_accepted() == 0 {
        assert!(since.elapsed() < std::time::Duration::from_secs(60), "no upload");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let wal = env.dir.join("s.db-wal");
    std::fs::remove_file(&wal).unwrap();
    let out = first.await.unwrap();
    let (stdout, stderr) = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stderr.contains("error: ") && stderr.contains("s.db-wal") && stderr.contains("was removed or replaced"),
        "names the file: {stderr}"
    );
    assert!(stderr.contains("hint: never delete, move or replace"), "{stderr}");
    assert!(stderr.contains("--resume"), "says how to go on: {stderr}");
    assert!(!stdout.contains("complete"), "never called complete: {stdout}");
    let out = env.load("c.csv", "s.db", &["--resume"], &[]).await;
    let (stdout, stderr) = assert_ok(&out);
    assert!(stdout.contains("complete: 240 relationships"), "{stdout}{stderr}");
    assert_eq!(env.active().len(), 240);
    assert_eq!(env.batches_accepted(), batch_posts(&env), "no batch uploaded twice");
}

/// A store file cut short (a full disk, an interrupted copy): `kfr load --resume` and `kfr load
/// status` refuse it naming the file and the rule, with a hint; nothing is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_store_is_refused_naming_the_file_and_the_rule() {
    let env = setup().await;
    let id = ids(156, 80);
    env.write("c.csv", &id.iter().map(|i| format!("{i}\n")).collect::<String>());
    let out = env.load("c.csv", "s.db", &[], &[]).await;
    assert_ok(&out);
    let posts = batch_posts(&env);
    // A copy made the way a backup should be (the log inside it), then cut in half.
    let copy = env.dir.join("copy.db");
    let out = env.run(&["backup", "copy.db", "--state", "s.db"], &[]).await;
    assert_ok(&out);
    let len = std::fs::metadata(&copy).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&copy)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    for args in [
        &["load", "c.csv", "--resume", "--state", "copy.db"][..],
        &["load", "status", "--state", "copy.db"][..],
    ] {
        let out = env.run(args, &[]).await;
        let (stdout, stderr) = output_text(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stdout}{stderr}");
        assert!(
            stderr.contains("copy.db") && stderr.contains("truncated"),
            "names the file: {stderr}"
        );
        assert!(
            stderr.contains("rule: a SQLite store file holds every page its header counts"),
            "names the rule: {stderr}"
        );
        assert!(stderr.contains("hint: "), "{stderr}");
    }
    assert_eq!(batch_posts(&env), posts, "nothing sent");
}
