//! `kfr add`, `kfr remove`, `kfr lookup`: one relationship at a time.
//!
//! The identifier is validated locally first; one that breaks a rule is refused before any
//! request is sent (exit 1, the rule named). "Already present" and "not registered" are
//! successes: the register is in the wanted state (kfr-notes §6). Output names the customer by
//! kind and pseudonym only, since command output often ends up in job logs.
//!
//! Per-customer order (docs/specs/barrier.md, docs/specs/outbox.md): an add or remove goes
//! through the installation's outbox, the one queue per customer that the sync agent and the
//! load's held operations share. In one transaction it is stored and, if nothing on the customer
//! is ahead of it (and, for a remove, no initial load of this register is unconfirmed: onboarding
//! D-3 step 4), claimed in flight for this command alone; then it is sent and its answer recorded
//! (delivered, retry later, handed back, dead-lettered: as the agent would), the ledger with it.
//! A sync agent therefore never has a request for the same customer out at the same time, and
//! neither overtakes the other. With something ahead, the operation waits behind it (exit 0,
//! "held" or "queued") and whoever delivers that queue (the agent, or the load once confirmed)
//! sends it in turn; what this command itself queued earlier on the customer (a rerun after a
//! failure) it sends first. An add with nothing ahead is never held (D-3 step 3: new
//! relationships go in parallel with the load). The store is the installation's one state store
//! (`state`, default in the state home, issue 9 item 10), so a forgotten `--state` cannot slip an
//! operation past a load or the agent. A load of another KFR (environment, URL or org.nr) in
//! that store does not hold this command's operation.

use super::printer::Printer;
use super::{LookupArgs, RelationshipArgs};
use crate::config::Settings;
use crate::ids::CustomerId;
use crate::kfr::{AddOutcome, RemoveOutcome, VerdictClass};
use crate::store::outbox::{
    ClaimEnd, ClaimFinished, Delivery, NewEvent, OutboxBackend as _, OutboxEvent, OwnEvent, Rejection,
};
use crate::store::{Operation, Store};
use anyhow::Context as _;
use chrono::Utc;

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

/// The sources of operations issued by `kfr add` / `kfr remove` (and held by a load): what a
/// run of either may send itself, ahead of its own operation on the same customer.
const OWN_SOURCES: [&str; 2] = ["kfr add", "kfr remove"];

/// One `kfr add` / `kfr remove`: through the outbox, so it never overtakes anything issued
/// earlier on the customer (the sync agent's events, a load's held operations, an earlier run).
async fn change(settings: Settings, args: &RelationshipArgs, p: Printer, op: Operation) -> anyhow::Result<()> {
    let id = parse_id(&settings, &args.id)?;
    let cid = args.correlation_id.unwrap_or_else(uuid::Uuid::new_v4);
    let org = settings.require_org_number()?.to_string();
    let register = super::outbox::register(&settings)?.key();
    // Built before anything is stored: a configuration problem leaves nothing behind.
    let client = super::build::kfr_client(&settings)?;
    let state = state_path(&settings, args)?;
    super::build::create_state_dir(&state)?;
    let mut store = Store::open(&state)?;
    if let Some(job) = store.unconfirmed_job()?
        && !same_register(&job.settings, &settings, &org)
    {
        p.warning(format_args!(
            "load job {} in {} runs against another KFR (environment, URL or org.nr), so it does not hold this {}",
            job.id,
            state.display(),
            op.as_str()
        ));
    }
    // One claimer name per run: only this run may record the answer to what it claimed.
    let claimer = format!("cli:{}", uuid::Uuid::new_v4());
    let now = Utc::now();
    let event = NewEvent {
        event_id: format!("cli-{}", uuid::Uuid::new_v4()),
        op,
        customer_id: id.as_str().to_string(),
        start_date: None,
        occurred_at: now,
        source: format!("kfr {}", op.as_str()),
    };
    let ctx = Ctx {
        p: &p,
        args,
        state: &state,
        register: &register,
        claimer: &claimer,
        client: &client,
        org: &org,
        own_op: op,
    };
    let (seq, ahead, barrier) = match store.enqueue_and_claim(&register, &event, cid, &claimer, now)? {
        OwnEvent::Claimed(ev) => return ctx.send(&mut store, &ev, true).await,
        OwnEvent::Queued {
            seq, ahead, barrier, ..
        } => (seq, ahead, barrier),
        OwnEvent::Duplicate { seq } => anyhow::bail!("outbox entry {seq} already has this run's event id"),
    };
    // Something is ahead. What this command issued earlier on the customer (a rerun after a
    // failure, or a load's held operations once the barrier is down) it sends first, in order;
    // anything else ahead (the sync agent's events, an operation in flight elsewhere, a dead
    // letter, the barrier) keeps it queued for whoever delivers that queue.
    let mut sent_ahead = 0;
    while let Some(head) = store.claim_head_of(&register, id.as_str(), &OWN_SOURCES, &claimer, Utc::now())? {
        let ours = head.seq == seq;
        ctx.send(&mut store, &head, ours).await?;
        if ours {
            return Ok(());
        }
        sent_ahead += 1;
    }
    let ahead = ahead.saturating_sub(sent_ahead);
    if args.json {
        let _ = p.json(&serde_json::json!({
            "operation": op, "outcome": "held",
            "reason": if ahead == 0 { "barrier" } else { "behind" }, "behind": ahead,
            "customer": id.log().to_string(), "kind": id.kind(), "correlation_id": cid,
            "load_job": barrier, "state": state.display().to_string(), "seq": seq,
        }));
        return Ok(());
    }
    let _ = match (ahead, barrier) {
        (0, Some(job)) => p.data(format!(
            "held: {} is queued in {}, not sent: initial load job {job} is not confirmed ingested yet (onboarding D-3); `kfr load` sends it when the load is confirmed (CorrelationID {cid})",
            who(&id),
            state.display()
        )),
        _ => {
            let when = match barrier {
                Some(job) => format!("`kfr load` or `kfr sync` sends it after them once load job {job} is confirmed ingested"),
                None => "`kfr sync` sends it once they have gone (or `kfr load FILE --resume`, for operations a load held)".to_string(),
            };
            p.data(format!(
                "queued: {} of {} waits in {} behind {ahead} earlier operation(s) on this customer, so KFR gets them in the order they were issued; {when} (CorrelationID {cid})",
                op.as_str(),
                who(&id),
                state.display()
            ))
        }
    };
    Ok(())
}

/// What sending one claimed operation needs.
struct Ctx<'a> {
    p: &'a Printer,
    args: &'a RelationshipArgs,
    state: &'a std::path::Path,
    register: &'a str,
    claimer: &'a str,
    client: &'a crate::kfr::KfrClient,
    org: &'a str,
    /// This command's own operation.
    own_op: Operation,
}

impl Ctx<'_> {
    /// Sends the claimed `ev` and records the answer (delivered, retry later, handed back, or
    /// dead-lettered, as the sync agent would). `ours`: it is this command's own operation (what
    /// it prints and its exit status are about it); otherwise an earlier one sent ahead of it.
    async fn send(&self, store: &mut Store, ev: &OutboxEvent, ours: bool) -> anyhow::Result<()> {
        // Stored by this command's rules (or a load's): valid when issued, so not refused now.
        let all = crate::ids::IdPolicy {
            allow_synthetic: true,
            allow_h_numbers: true,
        };
        let id = CustomerId::parse(&ev.customer_id, &all).context("an operation's identifier in the state store")?;
        let cid = ev.correlation_id;
        let answer = match ev.op {
            Operation::Add => self.client.add(&id, Some(cid)).await.map(|o| {
                let (d, text) = match o.value {
                    AddOutcome::Added => (Delivery::Added, "added"),
                    AddOutcome::AlreadyPresent => (Delivery::AlreadyPresent, "already present"),
                };
                (
                    d,
                    text,
                    serde_json::to_value(o.value).unwrap_or_default(),
                    o.status,
                    o.echoed_correlation_id,
                )
            }),
            Operation::Remove => self.client.remove(&id, Some(cid)).await.map(|o| {
                let (d, text) = match o.value {
                    RemoveOutcome::Removed => (Delivery::Removed, "removed"),
                    RemoveOutcome::NotFound => (Delivery::NotFound, "not registered (nothing to remove)"),
                };
                (
                    d,
                    text,
                    serde_json::to_value(o.value).unwrap_or_default(),
                    o.status,
                    o.echoed_correlation_id,
                )
            }),
        };
        let now = Utc::now();
        let where_ = format!("outbox entry {} in {}", ev.seq, self.state.display());
        match answer {
            Ok((delivery, text, value, status, echoed)) => {
                let end = ClaimEnd::Delivered {
                    delivery,
                    echoed_correlation_id: echoed,
                };
                let finished = store.finish_claim(ev.seq, self.claimer, &end, now)?;
                if finished == ClaimFinished::Recorded && ev.op == Operation::Add {
                    // The ledger's history of single adds, as before the outbox carried them.
                    store.record_add_in_ledger_for(self.register, &ev.customer_id, None, cid)?;
                }
                if let ClaimFinished::TakenOver { .. } = finished {
                    // A sync agent that started meanwhile took the entry back and sends it again
                    // with the same CorrelationID; KFR's answer to a repeat is the same state.
                    self.p.warning(format_args!(
                        "{where_} was taken over by a sync agent that started while this request was out; it records its own answer"
                    ));
                }
                if !ours {
                    if self.args.json {
                        return Ok(());
                    }
                    let _ = self.p.data(format!(
                        "sent first: the earlier {} of {} queued in {} ({text}, HTTP {status}, CorrelationID {cid})",
                        ev.op.as_str(),
                        who(&id),
                        self.state.display()
                    ));
                    return Ok(());
                }
                if self.args.json {
                    let _ = self.p.json(&serde_json::json!({
                        "operation": ev.op, "outcome": value, "status": status,
                        "customer": id.log().to_string(), "kind": id.kind(),
                        "correlation_id": cid, "org_number": self.org, "seq": ev.seq,
                    }));
                } else {
                    let in_kfr = if ev.op == Operation::Add { " in KFR" } else { "" };
                    let _ = self.p.data(format!(
                        "{text}: {}{in_kfr} for {} (HTTP {status}, CorrelationID {cid})",
                        who(&id),
                        self.org
                    ));
                }
                Ok(())
            }
            Err(e) => {
                let error = crate::ids::scrub(&e.to_string());
                let (end, then) = match e.class() {
                    VerdictClass::Rejected => (
                        ClaimEnd::DeadLetter(Rejection {
                            status: e.status(),
                            code: e.code().map(String::from),
                            body: error.clone(),
                            reason: format!("KFR refused it: {error}"),
                        }),
                        format!(
                            "it is dead-lettered as {where_}, and later operations on the customer wait behind it (`kfr dlq list`, then `kfr dlq retry` or `kfr dlq drop`)"
                        ),
                    ),
                    VerdictClass::Transient | VerdictClass::RateLimited => (
                        ClaimEnd::RetryLater {
                            not_before: now + e.retry_after().unwrap_or_default(),
                            error: error.clone(),
                        },
                        format!(
                            "it stays first in the customer's queue as {where_}; `kfr sync`, or this command run again, sends it with the same CorrelationID"
                        ),
                    ),
                    VerdictClass::Systemic(_) => (
                        ClaimEnd::Release { error: error.clone() },
                        format!(
                            "it stays first in the customer's queue as {where_}; once the cause is fixed, `kfr sync`, or this command run again, sends it with the same CorrelationID"
                        ),
                    ),
                };
                let finished = store.finish_claim(ev.seq, self.claimer, &end, now)?;
                let then = match finished {
                    ClaimFinished::Recorded => then,
                    ClaimFinished::TakenOver { .. } => {
                        format!("{where_} was taken over by a sync agent that started meanwhile; it sends it again")
                    }
                };
                let (what, behind) = if ours {
                    ("", String::new())
                } else {
                    (
                        "the earlier ",
                        format!("; this {} waits behind it", self.own_op.as_str()),
                    )
                };
                Err(anyhow::Error::new(e).context(format!(
                    "cannot {} {what}{}: {then}{behind}",
                    ev.op.as_str(),
                    who(&id)
                )))
            }
        }
    }
}

pub async fn add(settings: Settings, args: &RelationshipArgs, p: Printer) -> anyhow::Result<()> {
    change(settings, args, p, Operation::Add).await
}

pub async fn remove(settings: Settings, args: &RelationshipArgs, p: Printer) -> anyhow::Result<()> {
    change(settings, args, p, Operation::Remove).await
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
