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
use crate::error::StillQueued;
use crate::ids::CustomerId;
use crate::store::{ClaimEnd, ClaimFinished, Claimer, Delivery, NewEvent, OWN_SOURCES, OutboxEvent, OwnEvent};
use crate::store::{Operation, Store};
use crate::sync::outcome::{Effect, Outcome, Rules, decide};
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

/// Whether a load job's recorded register (environment, KFR base URL, org.nr) is the one this
/// command talks to. URLs are compared by scheme, host, port and path.
fn same_register(job_settings: &str, settings: &Settings, org: &str) -> bool {
    let v: serde_json::Value = serde_json::from_str(job_settings).unwrap_or_default();
    let text = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
    let (env, url, job_org) = (text("environment"), text("kfr_base_url"), text("org_number"));
    use crate::store::canonical_url;
    (env.is_empty() || env == settings.env.as_str())
        && (url.is_empty() || canonical_url(&url) == canonical_url(settings.kfr_base_url.as_str()))
        && (job_org.is_empty() || job_org == org)
}

/// How long transient failures of an operation queued by this command are retried (by the
/// agent, or a rerun) before it is dead-lettered for an operator, as the agent's own events are.
const GIVE_UP_AFTER: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// One `kfr add` / `kfr remove`: through the outbox, so it never overtakes anything issued
/// earlier on the customer (the sync agent's events, a load's held operations, an earlier run).
async fn change(settings: Settings, args: &RelationshipArgs, p: Printer, op: Operation) -> anyhow::Result<()> {
    let id = parse_id(&settings, &args.id)?;
    let cid = args.correlation_id.unwrap_or_else(uuid::Uuid::new_v4);
    let org = settings.require_org_number()?.to_string();
    let register = super::outbox::register(&settings)?.key();
    // Built before anything is stored: a configuration problem leaves nothing behind.
    let client = super::build::kfr_client(&settings)?;
    let (store, location) = super::build::writable_store(&settings, args.state.as_deref())?;
    let state = location.describe();
    if let Some(job) = store.unconfirmed_job().await?
        && !same_register(&job.settings, &settings, &org)
    {
        p.warning(format_args!(
            "load job {} in {state} runs against another KFR (environment, URL or org.nr), so it does not hold this {}",
            job.id,
            op.as_str()
        ));
    }
    // One claimer name per run: only this run may record the answer to what it claimed. Its
    // claims outlast one attempt, so a sync agent never takes one back while its request is out.
    let claimer = Claimer {
        name: format!("cli:{}", uuid::Uuid::new_v4()),
        epoch: None,
        ttl: chrono::Duration::from_std(super::build::request_budget(&settings) * 2)
            .unwrap_or(chrono::Duration::minutes(5)),
    };
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
        store: &store,
        claimer: &claimer,
        client: &client,
        org: &org,
        own_op: op,
        rules: Rules {
            retry: super::build::retry_policy(&settings),
            give_up_after: GIVE_UP_AFTER,
            in_doubt: settings.sync.in_doubt,
        },
    };
    let (seq, ahead, barrier) = match store
        .enqueue_and_claim(register.clone(), event, cid, claimer.clone(), now)
        .await?
    {
        OwnEvent::Claimed(ev) => return ctx.send(*ev, true).await,
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
    let sources: Vec<String> = OWN_SOURCES.iter().map(|s| s.to_string()).collect();
    while let Some(head) = store
        .claim_head_of(
            register.clone(),
            id.as_str().to_string(),
            sources.clone(),
            claimer.clone(),
            Utc::now(),
        )
        .await?
    {
        let ours = head.seq == seq;
        ctx.send(head, ours).await?;
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
            "load_job": barrier, "state": state, "seq": seq,
        }));
        return Ok(());
    }
    let _ = match (ahead, barrier) {
        (0, Some(job)) => p.data(format!(
            "held: {} is queued in {state}, not sent: initial load job {job} is not confirmed ingested yet (onboarding D-3); `kfr load` sends it when the load is confirmed (CorrelationID {cid})",
            who(&id),
        )),
        _ => {
            let when = match barrier {
                Some(job) => format!("`kfr load` or `kfr sync` sends it after them once load job {job} is confirmed ingested"),
                None => "`kfr sync` sends it once they have gone (or `kfr load FILE --resume`, for operations a load held)".to_string(),
            };
            p.data(format!(
                "queued: {} of {} waits in {state} behind {ahead} earlier operation(s) on this customer, so KFR gets them in the order they were issued; {when} (CorrelationID {cid})",
                op.as_str(),
                who(&id),
            ))
        }
    };
    Ok(())
}

/// One attempt's result: the outcome recorded (or not: taken over), and what KFR said.
struct Tried {
    outcome: Outcome,
    finished: ClaimFinished,
    status: Option<u16>,
    error: Option<crate::kfr::KfrError>,
}

/// What sending one claimed operation needs.
struct Ctx<'a> {
    p: &'a Printer,
    args: &'a RelationshipArgs,
    state: &'a str,
    store: &'a Store,
    claimer: &'a Claimer,
    client: &'a crate::kfr::KfrClient,
    org: &'a str,
    /// This command's own operation.
    own_op: Operation,
    rules: Rules,
}

impl Ctx<'_> {
    /// One attempt at the claimed `ev`, its verdict recorded by the rule every sender uses
    /// ([`decide`]).
    async fn attempt(&self, id: &CustomerId, ev: &OutboxEvent) -> anyhow::Result<Tried> {
        let (outcome, status, error) = match ev.op {
            Operation::Add => {
                let a = self.client.add_once(id, ev.correlation_id).await;
                let outcome = decide(&a, ev, &self.rules, Utc::now());
                (outcome, a.status, a.into_result().err())
            }
            Operation::Remove => {
                let a = self.client.remove_once(id, ev.correlation_id).await;
                let outcome = decide(&a, ev, &self.rules, Utc::now());
                (outcome, a.status, a.into_result().err())
            }
        };
        let finished = self
            .store
            .finish_claim(ev.seq, self.claimer.name.clone(), outcome.end.clone(), Utc::now())
            .await?;
        Ok(Tried {
            outcome,
            finished,
            status,
            error,
        })
    }

    /// Sends the claimed `ev` and records the answer (delivered, retry later, handed back, or
    /// dead-lettered, as the sync agent would). A transient failure is tried again here, as the
    /// retry policy allows, each time under a new claim; what is left stays queued. `ours`: it
    /// is this command's own operation (what it prints and its exit status are about it);
    /// otherwise an earlier one sent ahead of it.
    async fn send(&self, mut ev: OutboxEvent, ours: bool) -> anyhow::Result<()> {
        // Stored by this command's rules (or a load's): valid when issued, so not refused now.
        let all = crate::ids::IdPolicy {
            allow_synthetic: true,
            allow_h_numbers: true,
        };
        let id = CustomerId::parse(&ev.customer_id, &all).context("an operation's identifier in the state store")?;
        let cid = ev.correlation_id;
        let where_ = format!("outbox entry {} in {}", ev.seq, self.state);
        let mut tries = 1;
        let Tried {
            outcome,
            finished,
            status,
            error,
        } = loop {
            let tried = self.attempt(&id, &ev).await?;
            // Tried again here only after a short wait: an attempt in doubt holds its customer
            // for minutes (`sync.in_doubt_secs`), which the agent or a rerun waits out instead.
            let again = match (&tried.outcome.end, &tried.finished) {
                (ClaimEnd::RetryLater { not_before, .. }, ClaimFinished::Recorded)
                    if tries < self.rules.retry.max_attempts.max(1)
                        && *not_before - Utc::now() <= chrono::Duration::seconds(10) =>
                {
                    Some(*not_before)
                }
                _ => None,
            };
            let Some(not_before) = again else {
                break tried;
            };
            tokio::time::sleep((not_before - Utc::now()).to_std().unwrap_or_default()).await;
            tries += 1;
            let sources = vec![ev.source.clone()];
            match self
                .store
                .claim_head_of(
                    ev.register.clone(),
                    ev.customer_id.clone(),
                    sources,
                    self.claimer.clone(),
                    Utc::now(),
                )
                .await?
            {
                Some(again) if again.seq == ev.seq => ev = again,
                // Someone else (a sync agent) has it now: it sends it.
                _ => break tried,
            }
        };
        if let ClaimFinished::TakenOver { .. } = finished {
            // Its claim ran out and a sync agent took it back: it sends it again with the same
            // CorrelationID and records its own answer (KFR's answer to a repeat is the same
            // state).
            self.p.warning(format_args!(
                "{where_} was taken over by a sync agent while this request was out; it records its own answer"
            ));
        }
        match outcome.end {
            ClaimEnd::Delivered { delivery, .. } => {
                let (value, text) = match delivery {
                    Delivery::Added => (serde_json::to_value(crate::kfr::AddOutcome::Added), "added"),
                    Delivery::AlreadyPresent => (
                        serde_json::to_value(crate::kfr::AddOutcome::AlreadyPresent),
                        "already present",
                    ),
                    Delivery::Removed => (serde_json::to_value(crate::kfr::RemoveOutcome::Removed), "removed"),
                    _ => (
                        serde_json::to_value(crate::kfr::RemoveOutcome::NotFound),
                        "not registered (nothing to remove)",
                    ),
                };
                let value = value.unwrap_or_default();
                let status = status.map_or("-".to_string(), |s| s.to_string());
                if !ours {
                    if self.args.json {
                        return Ok(());
                    }
                    let _ = self.p.data(format!(
                        "sent first: the earlier {} of {} queued in {} ({text}, HTTP {status}, CorrelationID {cid})",
                        ev.op.as_str(),
                        who(&id),
                        self.state
                    ));
                    return Ok(());
                }
                if self.args.json {
                    let _ = self.p.json(&serde_json::json!({
                        "operation": ev.op, "outcome": value, "status": status.parse::<u16>().ok(),
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
            end => {
                let then = match (&end, &finished) {
                    (_, ClaimFinished::TakenOver { .. }) => {
                        format!("{where_} was taken over by a sync agent meanwhile; it sends it again")
                    }
                    (ClaimEnd::DeadLetter(_), _) => format!(
                        "it is dead-lettered as {where_}, and later operations on the customer wait behind it (`kfr dlq list`, then `kfr dlq retry` or `kfr dlq drop`)"
                    ),
                    (_, _) if matches!(outcome.effect, Effect::Systemic { .. }) => format!(
                        "it stays first in the customer's queue as {where_}; once the cause is fixed, `kfr sync`, or this command run again, sends it with the same CorrelationID"
                    ),
                    _ => format!(
                        "it stays first in the customer's queue as {where_}; `kfr sync`, or this command run again, sends it with the same CorrelationID"
                    ),
                };
                // KFR's error itself (with its hint); the recorded text when there is none.
                let error = match (error, &end) {
                    (Some(e), _) => anyhow::Error::new(e),
                    (None, ClaimEnd::DeadLetter(r)) => anyhow::anyhow!("{}", r.reason),
                    (None, ClaimEnd::RetryLater { error, .. } | ClaimEnd::Release { error }) => {
                        anyhow::anyhow!("{error}")
                    }
                    (None, ClaimEnd::Delivered { .. }) => unreachable!("handled above"),
                };
                let (what, behind) = if ours {
                    ("", String::new())
                } else {
                    (
                        "the earlier ",
                        format!("; this {} waits behind it", self.own_op.as_str()),
                    )
                };
                let message = format!("cannot {} {what}{}: {then}{behind}", ev.op.as_str(), who(&id));
                if matches!(end, ClaimEnd::DeadLetter(_)) {
                    return Err(error.context(message));
                }
                // Failed, yet queued: say so plainly, with how to withdraw it (exit code 3). The
                // cause's hint (KFR's, the network's) is found behind it by the error walk.
                Err(anyhow::Error::new(StillQueued::new(
                    format!(
                        "{message}. The operation is still queued for the sync agent; to withdraw it instead: kfr outbox cancel {} --reason …",
                        ev.seq
                    ),
                    error,
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
    if let (Some(from), Some(to)) = (args.from, args.to)
        && from > to
    {
        return Err(crate::error::UsageError::new(format!("--from {from} is after --to {to}")).into());
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
