//! The `kfr` commands on a PostgreSQL store (issue 22 item 4), run as the binary against the
//! bundled mock and a database of its own on the throwaway test cluster: `kfr.toml` names the
//! store by `store.url` and `store.password_file` only (no `--state`), and every command family
//! works as on SQLite — load with load status and abandon, add/remove, outbox, dlq, history,
//! reconcile, verify — while messages name the store by its URL, never with the password.
//! `kfr backup` is refused there, naming the bank's PostgreSQL tooling.

use crate::load::{Env, RATE, assert_ok, ids, setup};
use crate::pg_cluster::{self, TestDb};
use crate::util::output_text;

/// The test role's password (pg_cluster's): it must never appear in anything kfr prints.
const PASSWORD: &str = "synthetic-test-password";

/// A test directory whose `kfr.toml` points at a fresh database on the test cluster.
async fn pg_setup() -> (Env, TestDb) {
    let env = setup().await;
    let db = tokio::task::spawn_blocking(pg_cluster::database).await.unwrap();
    let cfg = env.dir.join("kfr.toml");
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    assert!(!text.contains("[store]"), "{text}");
    text.push_str(&format!(
        "\n[store]\nurl = \"{}\"\npassword_file = \"{}\"\n",
        db.url,
        db.password_file.display()
    ));
    std::fs::write(&cfg, text).unwrap();
    (env, db)
}

/// Runs `kfr` and checks that nothing it printed carries the password.
async fn run(env: &Env, args: &[&str]) -> std::process::Output {
    let out = env.run(args, &[]).await;
    let (o, e) = output_text(&out);
    assert!(
        !o.contains(PASSWORD) && !e.contains(PASSWORD),
        "the password was printed: {o}{e}"
    );
    out
}

fn json(out: &std::process::Output) -> serde_json::Value {
    let (o, e) = assert_ok(out);
    serde_json::from_str(&o).unwrap_or_else(|err| panic!("not JSON ({err}): {o}{e}"))
}

async fn outbox_status(env: &Env) -> serde_json::Value {
    json(&run(env, &["outbox", "status", "--json"]).await)["status"].clone()
}

/// `kfr load` with the fast test settings and no `--state`: the configuration's store.
async fn load(env: &Env, file: &str, vars: &[(&str, &str)]) -> std::process::Output {
    let rate = RATE.to_string();
    let args = [
        "load",
        file,
        "--ingest-rate",
        &rate,
        "--max-batch-bytes",
        "1024",
        "--settle-secs",
        "0",
    ];
    let out = env.run(&args, vars).await;
    let (o, e) = output_text(&out);
    assert!(
        !o.contains(PASSWORD) && !e.contains(PASSWORD),
        "the password was printed: {o}{e}"
    );
    out
}

/// A load runs to confirmed on PostgreSQL and `kfr load status` reads it back naming the store
/// by URL; a load killed after its first batch leaves a running job whose resume command names
/// no SQLite file; `kfr load abandon` ends it, and a held remove is sent by `--send-held`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_load_status_and_abandon_work_on_postgres() {
    let (env, db) = pg_setup().await;
    let people = ids(220, 40);
    env.write("c.csv", &people.iter().map(|p| format!("{p}\n")).collect::<String>());
    let (o, e) = assert_ok(&load(&env, "c.csv", &[]).await);
    assert!(
        e.contains(&format!("load job 1 created in {}", db.url))
            || o.contains(&format!("load job 1 created in {}", db.url)),
        "{o}{e}"
    );
    assert_eq!(env.active().len(), 40, "every relationship is in KFR");

    let st = json(&run(&env, &["load", "status", "--json"]).await);
    assert_eq!(st["state"], db.url.as_str(), "{st}");
    assert_eq!(st["jobs"][0]["status"], "confirmed", "{st}");
    assert_eq!(st["jobs"][0]["entries"], 40, "{st}");
    assert!(st["running"].is_null(), "{st}");
    let text = assert_ok(&run(&env, &["load", "status"]).await).0;
    assert!(text.starts_with(&format!("state store {}", db.url)), "{text}");

    // A second load killed (as kill -9 would) after its first batch was accepted.
    let more = ids(221, 80);
    env.write("d.csv", &more.iter().map(|p| format!("{p}\n")).collect::<String>());
    let out = load(&env, "d.csv", &[("KFR_TEST_ABORT_AT", "accepted:1")]).await;
    assert_ne!(out.status.code(), Some(0));
    // A new load is refused while it runs; the resume command it gives names no --state.
    let out = load(&env, "d.csv", &[]).await;
    let (_, e) = output_text(&out);
    assert_eq!(out.status.code(), Some(2), "{e}");
    assert!(e.contains("load job 2 (") && e.contains(&db.url), "{e}");
    assert!(!e.contains("--state"), "a PostgreSQL store is the configuration's: {e}");
    // A remove during the load is held in the shared store.
    let held = assert_ok(&run(&env, &["remove", &people[0]]).await).0;
    assert!(held.starts_with("held: ") && held.contains(&db.url), "{held}");
    let st = json(&run(&env, &["load", "status", "--json"]).await);
    assert_eq!(st["jobs"][1]["status"], "running", "{st}");
    assert_eq!(st["held_operations"]["remove"], 1, "{st}");

    let out = run(&env, &["load", "abandon", "2"]).await;
    let (_, e) = output_text(&out);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a held remove waits: refused without a choice: {e}"
    );
    assert!(e.contains("--send-held"), "{e}");
    let out = run(&env, &["load", "abandon", "2", "--send-held", "--json"]).await;
    let v = json(&out);
    assert_eq!(v["abandoned_now"], true, "{v}");
    let sent = v["held_operations"]["sent"].as_array().unwrap();
    assert_eq!(sent.len(), 1, "{v}");
    assert_eq!(sent[0]["outcome"], "removed", "{v}");
    assert!(!v.to_string().contains(people[0].as_str()), "masked: {v}");
    assert!(env.ended().contains(&people[0]), "the held remove reached KFR");
    let st = json(&run(&env, &["load", "status", "--json"]).await);
    assert_eq!(st["jobs"][1]["status"], "abandoned", "{st}");
    assert_eq!(st["held_operations"]["remove"], 0, "{st}");
}

/// add/remove go straight to KFR through the PostgreSQL outbox; a refused add is a dead letter
/// that `kfr dlq` lists and drops with who and why; `kfr outbox status` and `cancel` act on
/// the shared outbox; `kfr history` shows every attempt and action.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_remove_outbox_dlq_and_history_work_on_postgres() {
    let (env, db) = pg_setup().await;
    let people = ids(222, 3);
    let (x, refused, queued) = (&people[0], &people[1], &people[2]);
    assert_ok(&run(&env, &["add", x]).await);
    assert!(env.active().contains_key(x.as_str()));
    assert_ok(&run(&env, &["remove", x]).await);
    assert!(env.ended().contains(x));

    env.mock.state().set_reject_customers([refused.clone()]);
    let out = run(&env, &["add", refused]).await;
    assert_eq!(out.status.code(), Some(1), "{:?}", output_text(&out));
    let list = assert_ok(&run(&env, &["dlq", "list", "--json"]).await).0;
    let dead: Vec<serde_json::Value> = list.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(dead.len(), 1, "{list}");
    let seq = dead[0]["seq"].as_i64().unwrap().to_string();
    let st = outbox_status(&env).await;
    assert_eq!(
        (st["delivered"].as_u64(), st["dead_lettered"].as_u64()),
        (Some(2), Some(1)),
        "{st}"
    );
    let drop = [
        "dlq",
        "drop",
        &seq,
        "--actor",
        "kari.nordmann",
        "--reason",
        "customer left",
    ];
    assert_ok(&run(&env, &drop).await);
    assert!(
        assert_ok(&run(&env, &["dlq", "list", "--json"]).await)
            .0
            .trim()
            .is_empty()
    );

    // Queued (not sent): cancelled by an operator.
    let add = json(&run(&env, &["enqueue", "add", queued, "--json"]).await);
    let qseq = add["seq"].as_i64().unwrap().to_string();
    assert_eq!(outbox_status(&env).await["pending"], 1);
    let cancel = ["outbox", "cancel", &qseq, "--actor", "kari", "--reason", "by mistake"];
    let out = assert_ok(&run(&env, &cancel).await).0;
    assert!(out.contains(&format!("cancelled 1 event(s) (#{qseq})")), "{out}");
    let again = run(&env, &cancel).await;
    assert_eq!(again.status.code(), Some(2), "{:?}", output_text(&again));
    let st = outbox_status(&env).await;
    assert_eq!(
        (st["pending"].as_u64(), st["dropped"].as_u64()),
        (Some(0), Some(2)),
        "{st}"
    );

    let text = assert_ok(&run(&env, &["history", x]).await).0;
    assert!(text.contains(&format!("in {}", db.url)), "{text}");
    assert!(
        text.contains("delivered:added") && text.contains("delivered:removed"),
        "{text}"
    );
    assert!(!text.contains(x.as_str()), "masked: {text}");
    let text = assert_ok(&run(&env, &["history", refused]).await).0;
    assert!(text.contains("dead_lettered") && text.contains("KFR-005"), "{text}");
    assert!(
        text.contains("dlq_drop") && text.contains("by kari.nordmann") && text.contains("customer left"),
        "{text}"
    );
    let h = json(&run(&env, &["history", queued, "--json"]).await);
    let lines = h["history"].as_array().unwrap();
    assert_eq!(lines.len(), 1, "{h}");
    assert_eq!(
        (lines[0]["outcome"].as_str(), lines[0]["actor"].as_str()),
        (Some("cancelled"), Some("kari"))
    );
}

/// `kfr verify` checks the PostgreSQL ledger against KFR; `kfr reconcile` diffs an export with
/// it and enqueues the differences into the shared outbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_and_reconcile_work_on_postgres() {
    let (env, _db) = pg_setup().await;
    let people = ids(223, 3);
    let (a, b, c) = (&people[0], &people[1], &people[2]);
    for id in [a, b] {
        assert_ok(&run(&env, &["add", id]).await);
    }
    let v = json(&run(&env, &["verify", "--sample", "100", "--json"]).await);
    assert_eq!(
        (v["checked"].as_u64(), v["matched"].as_u64()),
        (Some(2), Some(2)),
        "{v}"
    );

    std::fs::write(env.dir.join("export.csv"), format!("{a}\n{c}\n")).unwrap();
    let v = json(&run(&env, &["reconcile", "export.csv", "--dry-run", "--json"]).await);
    assert_eq!(
        (
            v["summary"]["adds"].as_u64(),
            v["summary"]["removes"].as_u64(),
            v["enqueued"].as_u64()
        ),
        (Some(1), Some(1), Some(0)),
        "{v}"
    );
    assert_ok(&run(&env, &["reconcile", "export.csv", "--allow-mass-delete"]).await);
    assert_eq!(outbox_status(&env).await["pending"], 2);
}

/// `kfr backup` on a PostgreSQL store: refused (exit 1) with a hint naming pg_dump, nothing
/// written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_on_postgres_is_refused_naming_the_banks_tooling() {
    let (env, db) = pg_setup().await;
    // A store to back up (on an empty database there is none: "no state store", exit 2).
    assert_ok(&run(&env, &["enqueue", "add", &ids(226, 1)[0]]).await);
    let out = run(&env, &["backup", "copy.db"]).await;
    let (o, e) = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{o}{e}");
    assert!(e.contains(&db.url) && e.contains("cannot be copied to a file"), "{e}");
    assert!(e.contains("hint:") && e.contains("pg_dump"), "{e}");
    assert!(!env.dir.join("copy.db").exists());
}

/// `kfr store migrate`: an installation on SQLite (a delivered add, a queued add) moves to the
/// configured PostgreSQL store; every table's count is the same on both sides, the outbox reads
/// the same from PostgreSQL, and a second migration into the now non-empty database is refused
/// with a hint, changing nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_migrate_moves_a_sqlite_installation_to_postgres() {
    let env = setup().await;
    let people = ids(224, 2);
    assert_ok(&env.run(&["add", &people[0]], &[]).await);
    assert_ok(&env.run(&["enqueue", "add", &people[1]], &[]).await);
    let before = json(&env.run(&["outbox", "status", "--json"], &[]).await)["status"].clone();
    assert_eq!(before["delivered"], 1, "{before}");

    let db = tokio::task::spawn_blocking(pg_cluster::database).await.unwrap();
    let cfg = env.dir.join("kfr.toml");
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(&format!(
        "\n[store]\nurl = \"{}\"\npassword_file = \"{}\"\n",
        db.url,
        db.password_file.display()
    ));
    std::fs::write(&cfg, text).unwrap();

    let moved = json(&run(&env, &["store", "migrate", "--json"]).await);
    let outbox = moved["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "outbox")
        .unwrap()
        .clone();
    assert_eq!(outbox["rows"], 2, "{moved}");
    assert!(moved["to"].as_str().unwrap().starts_with("postgres://"), "{moved}");
    // PostgreSQL keeps instants to the microsecond (SQLite's text kept nanoseconds).
    let to_ms = |mut v: serde_json::Value| {
        let t = v["oldest_unfinished"].as_str().unwrap().to_string();
        v["oldest_unfinished"] = serde_json::Value::String(t[..23].to_string());
        v
    };
    let before = to_ms(before);
    let after = to_ms(outbox_status(&env).await);
    assert_eq!(after, before, "the outbox reads the same from PostgreSQL");

    let again = run(&env, &["store", "migrate"]).await;
    assert_eq!(again.status.code(), Some(1), "{:?}", output_text(&again));
    let (_, e) = output_text(&again);
    assert!(e.contains("already holds") && e.contains("hint:"), "{e}");
    assert_eq!(to_ms(outbox_status(&env).await), before, "nothing changed");
}

/// The tables kfr could have made in `db` (anything in its public schema).
fn tables(db: &TestDb) -> i64 {
    db.query_i64("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'")
}

/// Commands that only look, pointed at a database without kfr's tables, say there is no state
/// store at its URL with the exit code a missing SQLite file gets, and leave the database as
/// they found it: no table, no migrations row (they used to create kfr's whole schema).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn look_only_commands_on_an_empty_database_create_nothing_and_say_so() {
    let (env, db) = pg_setup().await;
    assert_eq!(tables(&db), 0, "a fresh database");

    // The model: the same command on a SQLite store that is not there.
    let sqlite = run(&env, &["outbox", "status", "--state", "missing.db"]).await;
    let (_, e) = output_text(&sqlite);
    assert!(e.contains("there is no state store at missing.db"), "{e}");
    assert!(!env.dir.join("missing.db").exists());
    let code = sqlite.status.code();
    assert_eq!(code, Some(2), "{e}");

    let id = &ids(225, 1)[0];
    for args in [
        &["outbox", "status"][..],
        &["outbox", "status", "--json"],
        &["dlq", "list"],
        &["history", id],
        &["status"],
    ] {
        let out = run(&env, args).await;
        let (o, e) = output_text(&out);
        assert_eq!(out.status.code(), code, "kfr {args:?}: {o}{e}");
        assert!(
            e.contains(&format!("error: there is no state store at {}", db.url)),
            "kfr {args:?}: {e}"
        );
        assert!(e.contains("hint:") && e.contains("store.url"), "kfr {args:?}: {e}");
        assert_eq!(tables(&db), 0, "kfr {args:?} created tables: {e}");
    }
    // `kfr load status` opens strictly read-only; it answers as it does for a missing file.
    let missing = run(&env, &["load", "status", "--state", "missing.db"]).await;
    let out = run(&env, &["load", "status"]).await;
    let (o, e) = output_text(&out);
    assert_eq!(out.status.code(), missing.status.code(), "{o}{e}");
    assert!(e.contains(&format!("no state store at {}", db.url)), "{e}");
    assert_eq!(tables(&db), 0, "kfr load status created tables: {e}");
    assert_eq!(
        db.query_i64("SELECT count(*) FROM pg_catalog.pg_class WHERE relname = 'kfr_migrations'"),
        0
    );

    // A command that writes makes the store; the look-only commands then answer from it.
    assert_ok(&run(&env, &["enqueue", "add", id]).await);
    assert!(tables(&db) > 0);
    assert_eq!(outbox_status(&env).await["pending"], 1);
    let (o, _) = assert_ok(&run(&env, &["load", "status", "--json"]).await);
    assert!(o.contains(&db.url), "{o}");
}
