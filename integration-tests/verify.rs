//! `kfr verify` (issue 19 item 7): the ledger checked against KFR by own lookups. A customer
//! changed behind kfr's back is reported — masked — and the command exits 1; `--repair` queues
//! the correction only behind the mass-change guard.

use crate::load::{Env, assert_ok, ids, setup};
use crate::util::output_text;

async fn verify(env: &Env, args: &[&str]) -> (Option<i32>, serde_json::Value, String) {
    let mut all = vec!["verify", "--state", "s.db", "--json"];
    all.extend_from_slice(args);
    let out = env.run(&all, &[]).await;
    let (stdout, stderr) = output_text(&out);
    let v = serde_json::from_str(&stdout).unwrap_or(serde_json::Value::Null);
    (out.status.code(), v, stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_changed_behind_kfrs_back_is_reported_masked_and_exits_1() {
    let env = setup().await;
    let people = ids(130, 5);
    for p in &people {
        assert_ok(&env.run(&["add", p, "--state", "s.db"], &[]).await);
    }
    let (code, v, stderr) = verify(&env, &["--sample", "100"]).await;
    assert_eq!(code, Some(0), "{v} {stderr}");
    assert_eq!(
        (v["checked"].as_u64(), v["matched"].as_u64()),
        (Some(5), Some(5)),
        "{v}"
    );

    // Behind kfr's back: removed through another store, so this ledger still says active.
    let gone = &people[2];
    assert_ok(&env.run(&["remove", gone, "--state", "elsewhere.db"], &[]).await);
    let (code, v, stderr) = verify(&env, &["--sample", "100"]).await;
    assert_eq!(code, Some(1), "{v} {stderr}");
    let diff = v["mismatches"].as_array().unwrap();
    assert_eq!(diff.len(), 1, "{v}");
    assert_eq!(
        (diff[0]["ledger"].as_str(), diff[0]["kfr_active"].as_bool()),
        (Some("active"), Some(false))
    );
    assert!(!v.to_string().contains(gone.as_str()), "masked: {v}");
    assert!(!stderr.contains(gone.as_str()), "masked: {stderr}");

    // One of five differs (20 %): a repair needs --allow-mass-change, and then queues the add.
    let (code, _, stderr) = verify(&env, &["--all", "--repair"]).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--allow-mass-change"), "{stderr}");
    let (code, v, _) = verify(&env, &["--all", "--repair", "--allow-mass-change"]).await;
    assert_eq!((code, v["enqueued"].as_u64()), (Some(1), Some(1)), "{v}");
    let out = env.run(&["outbox", "status", "--state", "s.db", "--json"], &[]).await;
    let status: serde_json::Value = serde_json::from_str(&assert_ok(&out).0).unwrap();
    assert_eq!(status["status"]["pending"], 1, "{status}");
}

/// Issue 19's acceptance, literally: one customer changed behind kfr's back by a direct DELETE
/// to the mock's KFR API, with a token from `kfr token --show-token`; `kfr verify --sample 100
/// --json` reports exactly that one, masked, and exits 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_delete_with_a_token_from_kfr_token_is_found_by_verify() {
    let env = setup().await;
    let people = ids(131, 6);
    for p in &people {
        assert_ok(&env.run(&["add", p, "--state", "s.db"], &[]).await);
    }
    let out = env.run(&["token", "--json", "--show-token"], &[]).await;
    let (stdout, _) = assert_ok(&out);
    let token: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let token = token["access_token"].as_str().expect("the token is shown").to_string();
    let gone = &people[4];
    let url = format!(
        "{}/customers/financialInstitutions/{}/relationshipType/DSOPBANK",
        env.mock.kfr_base_url(),
        crate::util::ORG
    );
    let answer = reqwest::Client::new()
        .delete(&url)
        .bearer_auth(&token)
        .header("CorrelationID", uuid::Uuid::new_v4().to_string())
        .header("CustomerID", gone.as_str())
        .header("Content-Length", "0")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 204, "{:?}", answer.text().await);
    assert!(!env.active().contains_key(gone.as_str()), "KFR no longer has it");

    let (code, v, stderr) = verify(&env, &["--sample", "100"]).await;
    assert_eq!(code, Some(1), "{v} {stderr}");
    assert_eq!(v["checked"].as_u64(), Some(6), "{v}");
    let diff = v["mismatches"].as_array().unwrap();
    assert_eq!(diff.len(), 1, "exactly that one: {v}");
    assert_eq!(
        (diff[0]["ledger"].as_str(), diff[0]["kfr_active"].as_bool()),
        (Some("active"), Some(false)),
        "{v}"
    );
    for p in &people {
        assert!(!v.to_string().contains(p.as_str()), "masked: {v}");
        assert!(!stderr.contains(p.as_str()), "masked: {stderr}");
    }
    // The one reported is the one deleted: its repair queues the add for exactly that customer.
    let (code, v, _) = verify(&env, &["--all", "--repair", "--allow-mass-change"]).await;
    assert_eq!((code, v["enqueued"].as_u64()), (Some(1), Some(1)), "{v}");
    let conn = rusqlite::Connection::open(env.dir.join("s.db")).unwrap();
    let queued: Vec<(String, String)> = conn
        .prepare("SELECT customer_id, op FROM outbox WHERE finished_at IS NULL")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(queued, [(gone.clone(), "add".to_string())]);
}
