//! `kfr add`, `kfr remove`, `kfr lookup`: one relationship at a time.
//!
//! The identifier is validated locally first; one that breaks a rule is refused before any
//! request is sent (exit 1, the rule named). "Already present" and "not registered" are
//! successes: the register is in the wanted state (kfr-notes §6). Output names the customer by
//! kind and pseudonym only, since command output often ends up in job logs.
//!
//! Delete barrier (onboarding D-3 step 4) and per-customer order (docs/specs/barrier.md): while an
//! initial load job is not confirmed ingested, `remove` does not send; it queues the delete in the
//! load's store (exit 0) and `kfr load` sends it once the last batch is confirmed. While anything
//! on a customer waits there, a later `add` or `remove` of that customer waits behind it (exit 0,
//! "queued"), so KFR gets them in the order they were issued. The barrier is a property of the
//! installation's one state store (`state`, default in the state home, issue 9 item 10): every
//! command of the installation finds the same store wherever it runs, so a forgotten `--state`
//! cannot slip an operation past a load. A load in that store against another KFR (another
//! environment, URL or org.nr) does not hold this command's operation: its held operations are
//! sent by that load's client, to that KFR. An `add` with nothing ahead of it is never held
//! (D-3 step 3: new relationships go in parallel with the load) and is recorded in the ledger
//! when a store exists.

use super::printer::Printer;
use super::{LookupArgs, RelationshipArgs};
use crate::config::Settings;
use crate::ids::CustomerId;
use crate::kfr::{AddOutcome, RemoveOutcome};
use crate::store::{CustomerQueue as _, HoldReason, Operation, Store};
use anyhow::Context as _;

fn parse_id(settings: &Settings, raw: &str) -> anyhow::Result<CustomerId> {
    super::install_pseudonyms(settings)?;
    CustomerId::parse(raw, &super::build::id_policy(settings)).with_context(|| {
        format!(
            "customer identifier {} refused locally; nothing was sent to KFR",
            crate::ids::mask(raw)
        )
    })
}

fn who(id: &CustomerId) -> String {
    format!("{} {}", id.kind().label(), id.log())
}

fn state_path(settings: &Settings, args: &RelationshipArgs) -> anyhow::Result<std::path::PathBuf> {
    super::build::state_path(settings, args.state.as_deref())
}

/// Whether a load job's recorded register (environment, KFR base URL, org.nr) is the one this
/// command talks to. URLs are compared by scheme, host, port and path.
fn same_register(job_settings: &str, settings: &Settings, org: &str) -> bool {
    let v: serde_json::Value = serde_json::from_str(job_settings).unwrap_or_default();
    let text = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
    let (env, url, job_org) = (text("environment"), text("kfr_base_url"), text("org_number"));
    use crate::store::outbox::canonical_url;
    (env.is_empty() || env == settings.env.as_str())
        && (url.is_empty() || canonical_url(&url) == canonical_url(settings.kfr_base_url.as_str()))
        && (job_org.is_empty() || job_org == org)
}

/// Queues the operation where a held one on the same customer (or, for a remove, a running load)
/// says it must wait; prints where and why. Returns whether it was held.
fn hold(
    p: &Printer,
    settings: &Settings,
    args: &RelationshipArgs,
    id: &CustomerId,
    op: Operation,
    cid: uuid::Uuid,
) -> anyhow::Result<bool> {
    let state = state_path(settings, args)?;
    let org = settings.require_org_number()?;
    // `remove` must not create a store just to look.
    let Some(mut store) = Store::open_existing(&state)? else {
        return Ok(false);
    };
    if let Some(job) = store.unconfirmed_job()?
        && !same_register(&job.settings, settings, org)
    {
        p.warning(format_args!(
            "load job {} in {} runs against another KFR (environment, URL or org.nr), so it does not hold this {}; sending it now",
            job.id,
            state.display(),
            op.as_str()
        ));
        return Ok(false);
    }
    let Some(queued) = store.enqueue(id.as_str(), op, cid)? else {
        return Ok(false);
    };
    let (reason, ahead, job) = match queued.reason {
        HoldReason::Barrier { job } => ("barrier", 0, Some(job)),
        HoldReason::Behind { ahead, job } => ("behind", ahead, job),
    };
    if args.json {
        let _ = p.json(&serde_json::json!({
            "operation": op, "outcome": "held", "reason": reason, "behind": ahead,
            "customer": id.log().to_string(), "kind": id.kind(), "correlation_id": cid,
            "load_job": job, "state": state.display().to_string(),
        }));
        return Ok(true);
    }
    let when = match job {
        Some(job) => format!("`kfr load` sends it when load job {job} is confirmed ingested"),
        None => "`kfr load FILE --resume` sends it once they have gone".to_string(),
    };
    let _ = match queued.reason {
        HoldReason::Barrier { job } => p.data(format!(
            "held: {} is queued in {}, not sent: initial load job {job} is not confirmed ingested yet (onboarding D-3); `kfr load` sends it when the load is confirmed (CorrelationID {cid})",
            who(id),
            state.display()
        )),
        HoldReason::Behind { ahead, .. } => p.data(format!(
            "queued: {} of {} waits in {} behind {ahead} earlier held operation(s) on this customer, so KFR gets them in the order they were issued; {when} (CorrelationID {cid})",
            op.as_str(),
            who(id),
            state.display()
        )),
    };
    Ok(true)
}

pub async fn add(settings: Settings, args: &RelationshipArgs, p: Printer) -> anyhow::Result<()> {
    let id = parse_id(&settings, &args.id)?;
    let cid = args.correlation_id.unwrap_or_else(uuid::Uuid::new_v4);
    if hold(&p, &settings, args, &id, Operation::Add, cid)? {
        return Ok(());
    }
    let client = super::build::kfr_client(&settings)?;
    let out = client
        .add(&id, Some(cid))
        .await
        .with_context(|| format!("cannot add {}", who(&id)))?;
    // The ledger is per register: the sync agent's reconcile compares against this one.
    {
        // The installation's store keeps the ledger (what reconcile compares against), so it is
        // created if this is the first command to write it.
        let state = state_path(&settings, args)?;
        super::build::create_state_dir(&state)?;
        let mut store = Store::open(&state)?;
        let register = super::outbox::register(&settings)?.key();
        store.record_add_in_ledger_for(&register, id.as_str(), None, out.correlation_id)?;
    }
    let outcome = match out.value {
        AddOutcome::Added => "added",
        AddOutcome::AlreadyPresent => "already present",
    };
    if args.json {
        let _ = p.json(&serde_json::json!({
            "operation": "add", "outcome": out.value, "status": out.status,
            "customer": id.log().to_string(), "kind": id.kind(),
            "correlation_id": out.correlation_id, "org_number": client.config().org_number,
        }));
    } else {
        let _ = p.data(format!(
            "{outcome}: {} in KFR for {} (HTTP {}, CorrelationID {})",
            who(&id),
            client.config().org_number,
            out.status,
            out.correlation_id
        ));
    }
    Ok(())
}

pub async fn remove(settings: Settings, args: &RelationshipArgs, p: Printer) -> anyhow::Result<()> {
    let id = parse_id(&settings, &args.id)?;
    let cid = args.correlation_id.unwrap_or_else(uuid::Uuid::new_v4);
    if hold(&p, &settings, args, &id, Operation::Remove, cid)? {
        return Ok(());
    }
    let client = super::build::kfr_client(&settings)?;
    let out = client
        .remove(&id, Some(cid))
        .await
        .with_context(|| format!("cannot remove {}", who(&id)))?;
    {
        // The installation's store keeps the ledger (what reconcile compares against), so it is
        // created if this is the first command to write it.
        let state = state_path(&settings, args)?;
        super::build::create_state_dir(&state)?;
        let mut store = Store::open(&state)?;
        let register = super::outbox::register(&settings)?.key();
        store.record_remove_in_ledger_for(&register, id.as_str(), out.correlation_id)?;
    }
    let outcome = match out.value {
        RemoveOutcome::Removed => "removed",
        RemoveOutcome::NotFound => "not registered (nothing to remove)",
    };
    if args.json {
        let _ = p.json(&serde_json::json!({
            "operation": "remove", "outcome": out.value, "status": out.status,
            "customer": id.log().to_string(), "kind": id.kind(),
            "correlation_id": out.correlation_id, "org_number": client.config().org_number,
        }));
    } else {
        let _ = p.data(format!(
            "{outcome}: {} for {} (HTTP {}, CorrelationID {})",
            who(&id),
            client.config().org_number,
            out.status,
            out.correlation_id
        ));
    }
    Ok(())
}

pub async fn lookup(settings: Settings, args: &LookupArgs, p: Printer) -> anyhow::Result<()> {
    let id = parse_id(&settings, &args.target.id)?;
    if let (Some(from), Some(to)) = (args.from, args.to) {
        if from > to {
            return Err(crate::error::UsageError::new(format!("--from {from} is after --to {to}")).into());
        }
    }
    let client = super::build::kfr_client(&settings)?;
    let out = client
        .lookup(&id, args.from, args.to, args.target.correlation_id)
        .await
        .with_context(|| format!("cannot look up {}", who(&id)))?;
    if args.target.json {
        let _ = p.json(&serde_json::json!({
            "operation": "lookup", "status": out.status, "customer": id.log().to_string(), "kind": id.kind(),
            "from": args.from, "to": args.to, "banks": out.value, "correlation_id": out.correlation_id,
        }));
        return Ok(());
    }
    let period = match (args.from, args.to) {
        (None, None) => "today".to_string(),
        (f, t) => format!(
            "{} to {}",
            f.map_or("today".into(), |d| d.to_string()),
            t.map_or("today".into(), |d| d.to_string())
        ),
    };
    let ours = out
        .value
        .iter()
        .any(|b| b.organization_id == client.config().org_number);
    let _ = p.data(format!(
        "{}: {} institution(s) for {period}{} (CorrelationID {})",
        who(&id),
        out.value.len(),
        if ours { ", including this one" } else { "" },
        out.correlation_id
    ));
    for b in &out.value {
        let _ = p.data(format!(
            "  {}  {}  activeAccount {}",
            b.organization_id, b.bank_name, b.active_account
        ));
    }
    Ok(())
}
