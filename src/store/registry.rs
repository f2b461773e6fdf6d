//! The machine-wide list of initial loads in progress, so the delete barrier holds no matter
//! which state store a `kfr remove` (or a later `kfr add` on a held customer) was pointed at.
//!
//! Why: onboarding D-3 step 4 says deletes wait until the initial load is ingested. The held
//! delete lives in the load's own store, but an operator running `kfr remove` from another
//! directory (or without `--state`) would otherwise open a different store, see no load and send
//! the delete straight away — exactly what D-3 forbids. So `kfr load` announces its job here and
//! withdraws it once the job is confirmed and nothing waits in its queue; `remove` and `add`
//! consult the list for loads of the same institution against the same KFR (an add must find the
//! queue that holds an earlier operation on its customer, docs/specs/barrier.md).
//!
//! Location: `$KFR_STATE_HOME`, else `$XDG_STATE_HOME/kfr`, else `$HOME/.local/state/kfr`; one
//! small JSON file per state store under `active-loads/` (mode 0600, no customer data). The list
//! is advisory: an entry whose store is gone, or whose job is confirmed with nothing waiting, is
//! withdrawn by whoever notices, and a list that cannot be written only costs the announcement (a warning), never the
//! load.

use super::Store;
use super::queue::{CustomerQueue as _, Operation, Queued};
use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::path::{Path, PathBuf};

/// One announced load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActiveLoad {
    /// The load's state store, absolute.
    pub state: PathBuf,
    pub org_number: String,
    pub kfr_base_url: String,
    pub job: i64,
    pub announced_at: String,
}

/// The directory of the list, from the environment (see the module comment).
pub fn dir() -> Option<PathBuf> {
    crate::env_vars::state_home(|k| std::env::var(k).ok()).map(|d| d.join("active-loads"))
}

/// The entry file of a state store: named by a hash of its absolute path, so announcing twice
/// replaces, and two stores never share an entry.
fn entry_path(dir: &Path, state: &Path) -> PathBuf {
    let digest = Sha256::digest(state.as_os_str().as_encoded_bytes());
    dir.join(format!("{}.json", &hex::encode(digest)[..32]))
}

fn absolute(state: &Path) -> anyhow::Result<PathBuf> {
    std::fs::canonicalize(state).with_context(|| format!("resolving the state store path {}", state.display()))
}

/// Announces that `job` in `state` is a load not yet confirmed ingested.
pub fn announce(state: &Path, org_number: &str, kfr_base_url: &str, job: i64) -> anyhow::Result<PathBuf> {
    let dir = dir().context("no directory for the list of running loads: set KFR_STATE_HOME (or HOME)")?;
    announce_in(&dir, state, org_number, kfr_base_url, job)
}

fn announce_in(dir: &Path, state: &Path, org_number: &str, kfr_base_url: &str, job: i64) -> anyhow::Result<PathBuf> {
    let entry = ActiveLoad {
        state: absolute(state)?,
        org_number: org_number.to_string(),
        kfr_base_url: kfr_base_url.to_string(),
        job,
        announced_at: super::now_text(),
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = entry_path(dir, &entry.state);
    // Write aside and rename: a reader never sees half an entry.
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            opts.mode(0o600);
        }
        std::io::Write::write_all(&mut opts.open(&tmp)?, &serde_json::to_vec_pretty(&entry)?)?;
        std::fs::rename(&tmp, &path)
    };
    write().with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Withdraws the announcement of `state` (nothing to do if there is none).
pub fn withdraw(state: &Path) -> anyhow::Result<()> {
    match dir() {
        Some(dir) => withdraw_in(&dir, &absolute(state)?),
        None => Ok(()),
    }
}

fn withdraw_in(dir: &Path, absolute_state: &Path) -> anyhow::Result<()> {
    let path = entry_path(dir, absolute_state);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// Whether two KFR base URLs name the same register, however they are spelt: scheme, host and
/// port (default ports made explicit, every loopback name the same host) and path without a
/// trailing slash. The held delete is sent by the load's own client, so "same" must mean the
/// same service, never merely the same institution.
pub fn same_register(a: &str, b: &str) -> bool {
    fn key(u: &str) -> Option<(String, String, u16, String)> {
        let url = url::Url::parse(u).ok()?;
        let host = match url.host()? {
            url::Host::Domain(d) if d.eq_ignore_ascii_case("localhost") => "loopback".to_string(),
            url::Host::Domain(d) => d.to_ascii_lowercase(),
            url::Host::Ipv4(ip) if ip.is_loopback() => "loopback".to_string(),
            url::Host::Ipv6(ip) if ip.is_loopback() => "loopback".to_string(),
            h => h.to_string(),
        };
        let path = url.path().trim_end_matches('/').to_string();
        Some((url.scheme().to_string(), host, url.port_or_known_default()?, path))
    }
    match (key(a), key(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

/// Announced loads of this institution (against any KFR). Unreadable entries are skipped with a
/// warning; they never stop a command.
fn announced_in(dir: &Path, org_number: &str) -> Vec<ActiveLoad> {
    let Ok(read) = std::fs::read_dir(dir) else {
        return vec![];
    };
    let mut out = vec![];
    for e in read.flatten() {
        let path = e.path();
        if path.extension().is_none_or(|x| x != "json") {
            continue;
        }
        match std::fs::read(&path)
            .map_err(anyhow::Error::from)
            .and_then(|b| serde_json::from_slice::<ActiveLoad>(&b).map_err(anyhow::Error::from))
        {
            Ok(a) if a.org_number == org_number => out.push(a),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(entry = %path.display(), error = %e, "skipping an unreadable entry in the list of running loads")
            }
        }
    }
    out.sort_by(|a, b| a.state.cmp(&b.state));
    out
}

/// Where an operation was held: the store whose queue keeps it, and why.
#[derive(Debug, Clone)]
pub struct HeldAt {
    pub state: PathBuf,
    pub queued: Queued,
}

/// Whether a store still needs its announcement: a load not confirmed, or operations waiting
/// (a customer's later operations must find the queue that holds its earlier ones).
pub fn holds_anything(store: &mut Store) -> anyhow::Result<bool> {
    Ok(store.barrier()?.is_some() || !store.waiting()?.is_empty())
}

/// The barrier and per-customer order for one operation (docs/specs/barrier.md): queues it in
/// the store that must hold it — `own` first (the store the command was given), then any
/// announced load of the same institution and KFR — and says where. `None`: nothing holds it,
/// the caller sends it now.
pub fn hold(
    own: &Path,
    org_number: &str,
    kfr_base_url: &str,
    customer_id: &str,
    op: Operation,
    correlation_id: uuid::Uuid,
) -> anyhow::Result<Option<HeldAt>> {
    hold_with(
        dir().as_deref(),
        own,
        org_number,
        kfr_base_url,
        customer_id,
        op,
        correlation_id,
    )
}

fn hold_with(
    dir: Option<&Path>,
    own: &Path,
    org_number: &str,
    kfr_base_url: &str,
    customer_id: &str,
    op: Operation,
    correlation_id: uuid::Uuid,
) -> anyhow::Result<Option<HeldAt>> {
    if let Some(mut store) = Store::open_existing(own)? {
        if let Some(queued) = store.enqueue(customer_id, op, correlation_id)? {
            return Ok(Some(HeldAt {
                state: own.to_path_buf(),
                queued,
            }));
        }
    }
    let Some(dir) = dir else { return Ok(None) };
    for a in announced_in(dir, org_number) {
        // A store that is gone, or that holds nothing any more, needs no announcement.
        let Some(mut store) = Store::open_existing(&a.state)? else {
            withdraw_in(dir, &a.state)?;
            continue;
        };
        if !same_register(&a.kfr_base_url, kfr_base_url) {
            if let Some(job) = store.barrier()? {
                tracing::warn!(
                    "load job {job} in {} for {org_number} runs against KFR at {}, not {kfr_base_url}; this {} is not held by it",
                    a.state.display(),
                    a.kfr_base_url,
                    op.as_str()
                );
            }
            continue;
        }
        if let Some(queued) = store.enqueue(customer_id, op, correlation_id)? {
            return Ok(Some(HeldAt { state: a.state, queued }));
        }
        if !holds_anything(&mut store)? {
            withdraw_in(dir, &a.state)?;
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::jobs::NewBatch;
    use crate::store::queue::HoldReason;

    const ORG: &str = "916960190";
    const URL: &str = "http://127.0.0.1:9/kar-ws/api/v1";

    fn hold_remove(reg: &Path, own: &Path, org: &str, url: &str) -> Option<HeldAt> {
        let cid = uuid::Uuid::new_v4();
        hold_with(Some(reg), own, org, url, "01010112345", Operation::Remove, cid).unwrap()
    }

    fn store_with_job(path: &Path) -> (Store, i64) {
        let mut s = Store::open(path).unwrap();
        let batch = NewBatch {
            first_entry: 0,
            entry_count: 1,
            bytes: 10,
            correlation_id: uuid::Uuid::new_v4(),
        };
        let job = s.create_job("in.txt", "00", "{}", 1, &[batch]).unwrap();
        (s, job)
    }

    #[test]
    fn a_delete_elsewhere_is_held_in_the_announced_load_store() {
        let tmp = tempfile::tempdir().unwrap();
        let reg = tmp.path().join("reg");
        let load_state = tmp.path().join("load/kfr-state.db");
        let (_s, job) = store_with_job(&load_state);
        announce_in(&reg, &load_state, ORG, URL, job).unwrap();

        // The remove is pointed at a different (absent) store.
        let other = tmp.path().join("elsewhere/kfr-state.db");
        let held = hold_remove(&reg, &other, ORG, URL).expect("held");
        assert_eq!(held.state, absolute(&load_state).unwrap());
        assert_eq!(held.queued.reason, HoldReason::Barrier { job });
        assert!(!other.exists(), "remove must not create a store just to look");
        // A later add on the same customer, from the same elsewhere, is found and queued behind.
        let add = hold_with(
            Some(&reg),
            &other,
            ORG,
            URL,
            "01010112345",
            Operation::Add,
            uuid::Uuid::new_v4(),
        )
        .unwrap()
        .expect("held behind the remove");
        assert_eq!(
            add.queued.reason,
            HoldReason::Behind {
                ahead: 1,
                job: Some(job)
            }
        );
        let mut s = Store::open(&load_state).unwrap();
        assert_eq!(s.waiting().unwrap().len(), 2);
    }

    #[test]
    fn other_institutions_or_registers_do_not_hold_and_stale_entries_are_withdrawn() {
        let tmp = tempfile::tempdir().unwrap();
        let reg = tmp.path().join("reg");
        let load_state = tmp.path().join("kfr-state.db");
        let (_s, job) = store_with_job(&load_state);
        announce_in(&reg, &load_state, ORG, URL, job).unwrap();
        let own = tmp.path().join("none.db");

        assert!(hold_remove(&reg, &own, "923609016", URL).is_none());
        let other_url = "http://127.0.0.1:10/kar-ws/api/v1";
        assert!(hold_remove(&reg, &own, ORG, other_url).is_none());
        // The same register spelt differently holds.
        let respelt = "http://localhost:9/kar-ws/api/v1/";
        let held = hold_remove(&reg, &own, ORG, respelt).map(|h| h.queued.reason);
        assert_eq!(held, Some(HoldReason::Barrier { job }));
        assert_eq!(announced_in(&reg, ORG).len(), 1, "a foreign query does not withdraw");

        // Confirmed, but the held remove is still waiting: the entry stays, so a later
        // operation on that customer still finds its queue.
        let mut s = Store::open(&load_state).unwrap();
        s.conn()
            .execute("UPDATE load_jobs SET status = 'confirmed'", [])
            .unwrap();
        assert!(hold_remove(&reg, &own, ORG, URL).is_some());
        assert_eq!(announced_in(&reg, ORG).len(), 1);
        // Once nothing waits, the entry is stale: the remove is sent and the entry goes.
        s.conn()
            .execute(
                "UPDATE outbox SET state = 'delivered', finished_at = '2030-01-01T00:00:00.000000000Z', head = NULL",
                [],
            )
            .unwrap();
        assert!(hold_remove(&reg, &own, ORG, URL).is_none());
        assert!(announced_in(&reg, ORG).is_empty());

        // A store that no longer exists: withdrawn too.
        let gone = tmp.path().join("gone.db");
        let (_g, job) = store_with_job(&gone);
        announce_in(&reg, &gone, ORG, URL, job).unwrap();
        let abs = absolute(&gone).unwrap();
        drop(_g);
        std::fs::remove_file(&gone).unwrap();
        assert!(hold_remove(&reg, &own, ORG, URL).is_none());
        assert!(!entry_path(&reg, &abs).exists());
    }

    #[test]
    fn same_register_ignores_spelling_but_not_the_service() {
        let base = "https://preprod.api.bits.no/kar-ws/api/v1";
        assert!(same_register(base, "https://PREPROD.api.bits.no:443/kar-ws/api/v1/"));
        assert!(same_register(
            "http://127.0.0.1:8080/kar-ws/api/v1",
            "http://localhost:8080/kar-ws/api/v1"
        ));
        assert!(same_register(
            "http://[::1]:8080/kar-ws/api/v1",
            "http://127.0.0.1:8080/kar-ws/api/v1/"
        ));
        assert!(!same_register(base, "https://api.bits.no/kar-ws/api/v1"));
        assert!(!same_register(base, "http://preprod.api.bits.no/kar-ws/api/v1"));
        assert!(!same_register(
            "http://127.0.0.1:8080/kar-ws/api/v1",
            "http://127.0.0.1:8081/kar-ws/api/v1"
        ));
        assert!(!same_register(base, "https://preprod.api.bits.no/kar-ws/api/v2"));
    }

    #[test]
    fn withdraw_removes_only_that_store_and_tolerates_absence() {
        let tmp = tempfile::tempdir().unwrap();
        let reg = tmp.path().join("reg");
        let a = tmp.path().join("a.db");
        let b = tmp.path().join("b.db");
        std::fs::write(&a, b"").unwrap();
        std::fs::write(&b, b"").unwrap();
        announce_in(&reg, &a, ORG, URL, 1).unwrap();
        announce_in(&reg, &b, ORG, URL, 2).unwrap();
        announce_in(&reg, &b, ORG, URL, 3).unwrap(); // replaces, not duplicates
        assert_eq!(announced_in(&reg, ORG).len(), 2);
        withdraw_in(&reg, &absolute(&a).unwrap()).unwrap();
        withdraw_in(&reg, &absolute(&a).unwrap()).unwrap();
        let left = announced_in(&reg, ORG);
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].job, 3);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(entry_path(&reg, &left[0].state))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
