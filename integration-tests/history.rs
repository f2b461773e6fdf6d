//! `kfr history ID` (issue 18 item 7): what was reported for one customer — every attempt with
//! KFR's answer and CorrelationID, and operators' actions with who and why — still there after
//! the outbox purged the events; the identifier masked unless asked for.

use crate::load::{Env, assert_ok, ids, setup};
use kfr::store::backend::Outbox as _;

async fn history(env: &Env, id: &str, extra: &[&str]) -> String {
    let mut args = vec!["history", id, "--state", "s.db"];
    args.extend_from_slice(extra);
    assert_ok(&env.run(&args, &[]).await).0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_shows_attempts_and_answers_after_the_outbox_purged_them() {
    let env = setup().await;
    let x = ids(120, 1).remove(0);
    assert_ok(&env.run(&["add", &x, "--state", "s.db"], &[]).await);
    assert_ok(&env.run(&["remove", &x, "--state", "s.db"], &[]).await);
    // The agent purges delivered events after `sync.retention_days`; here through the store's
    // own interface, with a cut-off past them.
    let mut store = kfr::store::sqlite::SqliteBackend::open(&env.dir.join("s.db")).unwrap();
    let purged = store.purge(chrono::Utc::now() + chrono::Duration::days(1)).unwrap();
    assert_eq!(purged, 2);
    assert!(store.events_of(None, Some(&x)).unwrap().is_empty());
    drop(store);

    let text = history(&env, &x, &[]).await;
    assert!(text.contains("delivered:added") && text.contains("HTTP 201"), "{text}");
    assert!(
        text.contains("delivered:removed") && text.contains("HTTP 204"),
        "{text}"
    );
    assert!(text.contains("CorrelationID"), "{text}");
    assert!(text.contains("purged"), "the outbox part says why it is empty: {text}");
    assert!(!text.contains(x.as_str()), "the identifier is masked: {text}");
    assert!(history(&env, &x, &["--show-id"]).await.contains(x.as_str()));

    let json: serde_json::Value = serde_json::from_str(&history(&env, &x, &["--json"]).await).unwrap();
    let lines = json["history"].as_array().unwrap();
    assert_eq!(lines.len(), 2, "{json}");
    assert_eq!(lines[0]["outcome"], "delivered:added");
    assert_eq!(lines[1]["status"], 204);
    assert!(
        lines
            .iter()
            .all(|l| l["correlation_id"].is_string() && l["actor"].is_string())
    );
    assert!(!json.to_string().contains(x.as_str()), "masked in JSON too: {json}");
}

/// An operator's dead-letter action is recorded with who (`--actor`, else the OS user) and why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_dead_letter_is_recorded_with_who_and_why() {
    let env = setup().await;
    let x = ids(121, 1).remove(0);
    env.mock.state().set_reject_customers([x.clone()]);
    let out = env.run(&["add", &x, "--state", "s.db"], &[]).await;
    assert_eq!(out.status.code(), Some(1));
    let list = assert_ok(&env.run(&["dlq", "list", "--state", "s.db", "--json"], &[]).await).0;
    let seq = serde_json::from_str::<serde_json::Value>(list.lines().next().unwrap()).unwrap()["seq"]
        .as_i64()
        .unwrap()
        .to_string();
    let args = [
        "dlq",
        "drop",
        &seq,
        "--state",
        "s.db",
        "--actor",
        "kari.nordmann",
        "--reason",
        "customer left in 2019",
    ];
    assert_ok(&env.run(&args, &[]).await);
    let text = history(&env, &x, &[]).await;
    assert!(text.contains("dead_lettered") && text.contains("KFR-005"), "{text}");
    assert!(
        text.contains("dlq_drop") && text.contains("by kari.nordmann") && text.contains("customer left in 2019"),
        "{text}"
    );
}
