//! `kfr sync` with the core system's outbox table as its source (issue 22): rows inserted into
//! `kfr_outbox` in a real PostgreSQL database (a throwaway cluster) end up in the mock KFR, each
//! customer's in the order its rows committed, once each — also across a restart of the agent.

use crate::load::{ids, setup};
use crate::pg_cluster;
use crate::sync_cli::{Agent, active, until_outbox_empty};
use std::collections::BTreeMap;

const DOC: &str = include_str!("../docs/operations.md");

/// The text between a line `start` and the next line `-- end` in docs/operations.md.
fn doc_block(start: &str) -> String {
    let from = DOC
        .find(&format!("{start}\n"))
        .unwrap_or_else(|| panic!("{start} in docs"));
    let rest = &DOC[from + start.len() + 1..];
    rest[..rest.find("-- end\n").expect("-- end")].to_string()
}

/// The documented insert of one event, placeholders filled in.
fn insert(id: i64, op: &str, customer: &str) -> String {
    doc_block("-- kfr-outbox-insert")
        .replace(":customer_id", &format!("'{customer}'"))
        .replace(":id", &id.to_string())
        .replace(":op", &format!("'{op}'"))
}

/// The core system: its database, with the documented table (and the grant the reader needs).
fn core_db() -> pg_cluster::TestDb {
    let db = pg_cluster::database();
    let mut admin = db.admin();
    admin.batch_execute(&doc_block("-- kfr-outbox-ddl")).unwrap();
    admin
        .batch_execute(&format!("GRANT SELECT ON kfr_outbox TO {}", pg_cluster::ROLE))
        .unwrap();
    db
}

/// Each customer's operations as KFR received them, in arrival order.
fn per_customer(env: &crate::load::Env) -> BTreeMap<String, Vec<&'static str>> {
    let mut out: BTreeMap<String, Vec<&'static str>> = BTreeMap::new();
    for r in env.mock.state().requests() {
        if r.status.starts_with('2') {
            out.entry(r.customer_id.clone().unwrap()).or_default().push(r.op);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_of_the_core_systems_outbox_table_reach_kfr_in_commit_order_once() {
    let env = setup().await;
    let db = tokio::task::spawn_blocking(core_db).await.unwrap();
    let config = env.dir.join("kfr.toml");
    let mut toml = std::fs::read_to_string(&config).unwrap();
    toml.push_str(&format!(
        "\n[[sync.sources]]\nkind = \"pg_outbox\"\nname = \"core\"\nurl = \"{}\"\ntable = \"kfr_outbox\"\npassword_file = \"{}\"\n",
        db.url,
        db.password_file.display()
    ));
    std::fs::write(&config, toml).unwrap();
    let c = ids(92, 4);
    let agent = Agent::spawn(&env, &[]);
    assert!(
        agent
            .log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("taking events from the outbox table kfr_outbox")),
        "the agent names its source"
    );

    // c0: add, remove, add; c1: add; c2: add, then remove committed in a transaction that took
    // a lower id than c3's add but committed after it.
    let (c0, c1, c2, c3) = (c[0].clone(), c[1].clone(), c[2].clone(), c[3].clone());
    let (db2, c3b) = (db.clone(), c3.clone());
    let db1 = db.clone();
    tokio::task::spawn_blocking(move || {
        let mut core = db1.admin();
        core.batch_execute(&insert(1, "add", &c0)).unwrap();
        core.batch_execute(&insert(2, "remove", &c0)).unwrap();
        core.batch_execute(&insert(3, "add", &c1)).unwrap();
        core.batch_execute(&insert(4, "add", &c2)).unwrap();
        let mut tx = core.transaction().unwrap();
        tx.batch_execute(&insert(100, "remove", &c2)).unwrap();
        db2.admin().batch_execute(&insert(101, "add", &c3b)).unwrap();
        tx.commit().unwrap();
        core.batch_execute(&insert(5, "add", &c0)).unwrap();
    })
    .await
    .unwrap();
    until_outbox_empty(&env).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let want: std::collections::BTreeSet<String> = [c[0].clone(), c[1].clone(), c[3].clone()].into();
    while active(&env).await != want {
        assert!(
            std::time::Instant::now() < deadline,
            "register: {:?}",
            active(&env).await
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        until_outbox_empty(&env).await;
    }
    let seen = per_customer(&env);
    assert_eq!(seen[&c[0]], vec!["add", "remove", "add"]);
    assert_eq!(seen[&c[1]], vec!["add"]);
    assert_eq!(seen[&c[2]], vec!["add", "remove"]);
    assert_eq!(seen[&c[3]], vec!["add"]);
    let (code, log) = agent.stop();
    assert_eq!(code, Some(0), "{log}");

    // A restart: it resumes after what it stored — nothing sent twice, the new row sent.
    let agent = Agent::spawn(&env, &[]);
    let c1 = c[1].clone();
    let db1 = db.clone();
    tokio::task::spawn_blocking(move || {
        db1.admin().batch_execute(&insert(6, "remove", &c1)).unwrap();
    })
    .await
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while active(&env).await.contains(&c[1]) {
        assert!(std::time::Instant::now() < deadline, "c1 was removed");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    until_outbox_empty(&env).await;
    let seen = per_customer(&env);
    assert_eq!(seen[&c[0]], vec!["add", "remove", "add"], "nothing sent twice");
    assert_eq!(seen[&c[1]], vec!["add", "remove"]);
    assert_eq!(seen[&c[2]], vec!["add", "remove"]);
    let (code, log) = agent.stop();
    assert_eq!(code, Some(0), "{log}");
    for id in c.iter().filter(|id| id.len() == 11) {
        assert!(!log.contains(id.as_str()), "no person identifier in the log: {log}");
    }
}

/// A source whose table is not there is a configuration mistake: the agent exits 1 naming the
/// source, the table and what to do, instead of waiting for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_exits_1_naming_the_table_when_it_is_missing() {
    let env = setup().await;
    let db = tokio::task::spawn_blocking(pg_cluster::database).await.unwrap();
    let config = env.dir.join("kfr.toml");
    let mut toml = std::fs::read_to_string(&config).unwrap();
    toml.push_str(&format!(
        "\n[[sync.sources]]\nkind = \"pg_outbox\"\nname = \"core\"\nurl = \"{}\"\ntable = \"kfr_outbox\"\npassword_file = \"{}\"\n",
        db.url,
        db.password_file.display()
    ));
    std::fs::write(&config, toml).unwrap();
    let (code, log) = Agent::spawn(&env, &[]).exited().await;
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("error: kfr sync stopped: the source `core` failed"),
        "{log}"
    );
    assert!(log.contains("the outbox table kfr_outbox in postgres://"), "{log}");
    assert!(
        log.contains("hint: create the table as docs/operations.md shows"),
        "{log}"
    );
}
