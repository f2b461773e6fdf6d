//! `kfr enqueue`, `kfr outbox status`, `kfr dlq list|retry|drop` and `kfr reconcile`: the
//! operator's hands on the outbox the sync agent delivers from.
//!
//! They work on the installation's state store directly (one short transaction each), so they
//! work whether or not `kfr sync` is running; an agent that runs picks up what they enqueue or
//! put back. Output names customers by mask or pseudonym only.

use super::printer::Printer;
use crate::config::Settings;
use crate::ids::CustomerId;
use crate::store::Operation;
use crate::store::{DeadLetters, Enqueued, OperatorAction, Register};
use anyhow::Context as _;
use chrono::Utc;
use std::collections::HashSet;
use std::path::Path;

/// The register (KFR + institution) this configuration writes to.
pub(crate) fn register(settings: &Settings) -> anyhow::Result<Register> {
    Ok(Register {
        environment: settings.env.as_str().to_string(),
        base_url: settings.kfr_base_url.to_string(),
        org_number: settings.require_org_number()?.to_string(),
    })
}

/// Who did an operator's action, for the history: `--actor`, else the OS user.
pub(crate) fn operator(actor: Option<&str>, reason: Option<&str>) -> OperatorAction {
    let actor = actor
        .map(str::to_string)
        .or_else(|| std::env::var("USER").ok().filter(|u| !u.is_empty()))
        .or_else(|| std::env::var("LOGNAME").ok().filter(|u| !u.is_empty()))
        .unwrap_or_else(|| {
            // SAFETY: getuid has no preconditions and cannot fail.
            format!("uid {}", unsafe { libc::getuid() })
        });
    OperatorAction {
        actor,
        reason: reason.map(str::to_string),
    }
}

/// `kfr enqueue add|remove ID [--start-date D] [--event-id X]`.
pub async fn enqueue(settings: &Settings, args: &super::EnqueueArgs, p: &Printer) -> anyhow::Result<()> {
    let op = match args.op {
        super::EnqueueOp::Add => Operation::Add,
        super::EnqueueOp::Remove => Operation::Remove,
    };
    let (raw_id, start_date, event_id, json) = (&args.id, args.start_date.clone(), args.event_id.clone(), args.json);
    super::install_pseudonyms(settings)?;
    // The same rules as every source of the agent (`sync::event`): one door, one verdict.
    let mut event = crate::sync::event::enqueue_event(
        op,
        raw_id,
        start_date.as_deref(),
        &super::build::id_policy(settings),
        Utc::now(),
    )
    .context("the event was refused; nothing was stored")?;
    if let Some(e) = event_id {
        event.event_id = crate::sync::event::check_event_id(&e)
            .map_err(|b| b.at(crate::sync::event::Location::Index { index: 0, line: None }, None))
            .context("the event was refused; nothing was stored")?;
    }
    let id = CustomerId::parse(&event.customer_id, &super::build::id_policy(settings))?;
    let register = register(settings)?;
    let (store, location) = super::build::writable_store(settings, args.state.as_deref())?;
    // The flood guard is kept by the store, inside the enqueue's own write transaction.
    let max = settings.sync.max_events_per_customer;
    let result = match store
        .enqueue(register.key(), vec![event.clone()], Some(max), Utc::now())
        .await
    {
        Err(crate::store::StoreError::CustomerFlood { max, .. }) => {
            return Err(anyhow::Error::new(FloodRefused {
                customer: id.log().to_string(),
                unfinished: max,
                max,
            }));
        }
        other => other?,
    };
    let (seq, dup) = match result.first() {
        Some(Enqueued::Stored { seq }) => (*seq, false),
        Some(Enqueued::Duplicate { seq }) => (*seq, true),
        None => anyhow::bail!("the store answered nothing for the event"),
    };
    // Event ids are shown as the logs show them: senders build them from customer numbers.
    let shown_id = crate::ids::scrub(&event.event_id);
    if json {
        let _ = p.json(&serde_json::json!({
            "operation": op, "seq": seq, "event_id": shown_id, "duplicate": dup,
            "customer": id.log().to_string(), "kind": id.kind(), "state": location.describe(),
        }));
    } else if dup {
        let _ = p.data(format!(
            "already stored: event {shown_id} is outbox entry {seq}; nothing was added"
        ));
    } else {
        let _ = p.data(format!(
            "stored: {} of {} {} as outbox entry {seq} (event {}); `kfr sync` delivers it in order",
            op.as_str(),
            id.kind().label(),
            id.log(),
            shown_id
        ));
    }
    Ok(())
}

/// `kfr outbox status`.
pub async fn status(settings: &Settings, state: Option<&Path>, json: bool, p: &Printer) -> anyhow::Result<()> {
    let (store, location) = super::build::existing_store(settings, state)?;
    let register = register(settings).ok().map(|r| r.key());
    let s = store.status(register.clone()).await?;
    if json {
        let _ = p.json(&serde_json::json!({
            "state": location.describe(), "register": register, "status": s,
        }));
        return Ok(());
    }
    let age = s
        .oldest_unfinished
        .map(|t| format!(", oldest unfinished since {}", t.format("%Y-%m-%d %H:%M:%S UTC")))
        .unwrap_or_default();
    let _ = p.data(format!("outbox {location}{age}"));
    let _ = p.data(format!(
        "  pending {}  in flight {}  awaiting ingestion {}  delivered {}  dead-lettered {}  dropped {}",
        s.pending, s.in_flight, s.accepted, s.delivered, s.dead_lettered, s.dropped
    ));
    let _ = p.data(format!(
        "  parked customers {} (events waiting behind them {})",
        s.parked_customers, s.parked_events
    ));
    if let Some(job) = s.barrier {
        let _ = p.data(format!(
            "  removes held: initial load job {job} is not confirmed ingested (onboarding D-3)"
        ));
    }
    Ok(())
}

/// `kfr dlq list`.
pub async fn dlq_list(settings: &Settings, state: Option<&Path>, json: bool, p: &Printer) -> anyhow::Result<()> {
    let (store, _) = super::build::existing_store(settings, state)?;
    let dead = store.dead_letters(None).await?;
    if json {
        for d in &dead {
            // KFR's text is masked when stored; masked again here (idempotent) so this output
            // never depends on how an older version stored it.
            let mut rejection = d.rejection.clone();
            rejection.reason = crate::ids::scrub(&rejection.reason);
            rejection.body = crate::ids::scrub(&rejection.body);
            let _ = p.json(&serde_json::json!({
                "seq": d.event.seq, "event_id": crate::ids::scrub(&d.event.event_id), "operation": d.event.op,
                "customer": crate::ids::mask(&d.event.customer_id), "start_date": d.event.start_date,
                "source": d.event.source, "correlation_id": d.event.correlation_id,
                "attempts": d.event.attempts, "dead_at": d.dead_at, "rejection": rejection,
                "parked_behind": d.parked_behind,
            }));
        }
        return Ok(());
    }
    if dead.is_empty() {
        let _ = p.data("the dead-letter queue is empty");
        return Ok(());
    }
    for d in &dead {
        let _ = p.data(format!(
            "{}  {} {}  {}  HTTP {} {}  {} waiting behind  (event {}, CorrelationID {})",
            d.event.seq,
            d.event.op.as_str(),
            crate::ids::mask(&d.event.customer_id),
            d.dead_at.format("%Y-%m-%d %H:%M:%S UTC"),
            d.rejection.status.map_or("-".into(), |s| s.to_string()),
            d.rejection.code.as_deref().unwrap_or(""),
            d.parked_behind,
            crate::ids::scrub(&d.event.event_id),
            d.event.correlation_id
        ));
        let _ = p.data(format!("      {}", crate::ids::scrub(&d.rejection.reason)));
    }
    let _ = p.data(format!(
        "{} dead letter(s): `kfr dlq retry SEQ|--all` puts them back in line, `kfr dlq drop SEQ` gives up on one",
        dead.len()
    ));
    Ok(())
}

/// `kfr dlq retry SEQ|--all` and `kfr dlq drop SEQ`.
pub async fn dlq_act(
    settings: &Settings,
    state: Option<&Path>,
    which: DeadLetters,
    retry: bool,
    action: OperatorAction,
    json: bool,
    p: &Printer,
) -> anyhow::Result<()> {
    let (store, _) = super::build::existing_store(settings, state)?;
    let n = if retry {
        store.retry_dead(which, action, Utc::now()).await
    } else {
        store.drop_dead(which, action, Utc::now()).await
    };
    // An entry that exists but is not a dead letter is the operator's mistake like an unknown
    // number: a usage error, exit 2 (docs/sync.md "Dead letters").
    let n = match (n, which) {
        (Err(e @ crate::store::StoreError::WrongState { .. }), DeadLetters::One(seq)) => {
            return Err(anyhow::Error::new(
                crate::error::UsageError::new(format!("outbox entry {seq} is not in the dead-letter queue ({e})"))
                    .with_hint("`kfr dlq list` shows the dead letters and their numbers"),
            ));
        }
        (n, _) => n?,
    };
    if let (0, DeadLetters::One(seq)) = (n, which) {
        return Err(anyhow::Error::new(
            crate::error::UsageError::new(format!("outbox entry {seq} is not in the dead-letter queue"))
                .with_hint("`kfr dlq list` shows the dead letters and their numbers"),
        ));
    }
    let verb = if retry { "retried" } else { "dropped" };
    if json {
        let _ = p.json(&serde_json::json!({ "action": verb, "count": n }));
    } else if retry {
        let _ = p.data(format!(
            "{n} dead letter(s) back in line; `kfr sync` sends them next for their customers"
        ));
    } else {
        let _ = p.data(format!(
            "{n} dead letter(s) dropped (never sent); their customers' later events go on"
        ));
    }
    Ok(())
}

/// `kfr reconcile FILE [--dry-run] [--allow-mass-delete]`.
pub async fn reconcile(settings: &Settings, args: &super::ReconcileArgs, p: &Printer) -> anyhow::Result<()> {
    let (file, dry_run, allow_mass_delete, json) = (&args.file, args.dry_run, args.allow_mass_delete, args.store.json);
    super::install_pseudonyms(settings)?;
    let register = register(settings)?.key();
    let f = std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    let size = f.metadata().ok().map(|m| m.len());
    let opts = crate::input::reader::ReadOptions {
        policy: super::build::id_policy(settings),
        today: crate::clock::oslo_today(),
        hash: false,
    };
    let mut first_rejects = vec![];
    let export = crate::input::reader::read(std::io::BufReader::new(f), size, opts, |r, _raw| {
        if first_rejects.len() < 5 {
            first_rejects.push(r);
        }
    })
    .with_context(|| format!("reading {}", file.display()))?;
    for r in &first_rejects {
        p.problem(format!(
            "{}:{}: {} ({}): {}",
            file.display(),
            r.line,
            r.message,
            r.rule,
            r.text
        ));
    }
    let state = args.store.state.as_deref();
    let (store, location) = if dry_run {
        super::build::existing_store(settings, state)?
    } else {
        super::build::writable_store(settings, state)?
    };
    let ledger = store.ledger(register.clone()).await?;
    let busy: HashSet<String> = store.unfinished_customers(register.clone()).await?;
    let diff = crate::sync::reconcile::diff(&export, &ledger, &busy)
        .with_context(|| format!("cannot reconcile {}", file.display()))?;
    let summary = diff.summary();
    if !dry_run {
        diff.check_mass_delete(allow_mass_delete)
            .with_context(|| format!("reconcile of {} refused; nothing was enqueued", file.display()))?;
    }
    let enqueued = if dry_run {
        0
    } else {
        let events = diff.events(Utc::now());
        store.enqueue(register.clone(), events, None, Utc::now()).await?.len()
    };
    if json {
        let _ = p.json(&serde_json::json!({
            "file": file.display().to_string(), "dry_run": dry_run, "summary": summary, "enqueued": enqueued,
            "mass_delete_refused": dry_run && diff.check_mass_delete(allow_mass_delete).is_err(),
        }));
        return Ok(());
    }
    let _ = p.data(format!(
        "export: {} active; ledger: {} active; to add {}, to remove {}, unchanged {} ({} with another start date: KFR keeps its own), left for later {} (events still in the outbox)",
        summary.export_active,
        summary.ledger_active,
        summary.adds,
        summary.removes,
        summary.unchanged,
        summary.start_date_differs,
        summary.busy
    ));
    if !summary.add_examples.is_empty() {
        let _ = p.data(format!("  adds, e.g.: {}", summary.add_examples.join(", ")));
    }
    if !summary.remove_examples.is_empty() {
        let _ = p.data(format!("  removes, e.g.: {}", summary.remove_examples.join(", ")));
    }
    if dry_run {
        if let Err(e) = diff.check_mass_delete(allow_mass_delete) {
            p.warning(format!("a real run would be refused: {e}"));
        }
        let _ = p.data("dry run: nothing was enqueued");
    } else {
        let _ = p.data(format!(
            "enqueued {enqueued} event(s) in {location}; `kfr sync` delivers them"
        ));
    }
    Ok(())
}

/// `kfr outbox cancel SEQ|--customer ID|--event-id ID`: cancels pending events, recorded in the
/// history with who (`--actor`, else the OS user) and why, in one transaction. An event in
/// flight, accepted, dead-lettered or finished is refused with exit 2 naming its state: its
/// request may be on the wire, or KFR has it already.
pub async fn cancel(settings: &Settings, args: &super::CancelArgs, p: &Printer) -> anyhow::Result<()> {
    use crate::store::{StoreError, ToCancel};
    super::install_pseudonyms(settings)?;
    let register = register(settings)?.key();
    let (which, what) = match (&args.seq, &args.customer, &args.event_id) {
        (Some(seq), _, _) => (ToCancel::Seq(*seq), format!("outbox entry {seq}")),
        (_, Some(raw), _) => {
            let id = CustomerId::parse(raw.trim(), &super::build::id_policy(settings))?;
            let what = format!("the pending events of {} {}", id.kind().label(), id.log());
            (
                ToCancel::Customer {
                    register: register.clone(),
                    customer_id: id.as_str().to_string(),
                },
                what,
            )
        }
        (_, _, Some(e)) => (ToCancel::EventId(e.clone()), format!("event {}", crate::ids::scrub(e))),
        _ => unreachable!("clap requires one of them"),
    };
    let action = operator(args.who.actor.as_deref(), args.who.reason.as_deref());
    let (store, location) = super::build::existing_store(settings, args.store.state.as_deref())?;
    let done = match store.cancel(which, action.clone(), Utc::now()).await {
        Ok(done) => done,
        Err(e @ (StoreError::WrongState { .. } | StoreError::NotFound(_))) => {
            let hint = match &e {
                StoreError::WrongState { problem, .. } if problem.contains("dead_lettered") => {
                    "a dead letter is dropped with `kfr dlq drop SEQ --reason …`, not cancelled"
                }
                StoreError::WrongState { .. } => {
                    "only a pending event can be cancelled: one in flight may be on the wire, one accepted or delivered is in KFR (undo it with the opposite operation); see `kfr history ID`"
                }
                _ => "see `kfr history ID` or `kfr outbox status` for what the outbox holds",
            };
            return Err(anyhow::Error::new(
                crate::error::UsageError::new(format!("cannot cancel {what}: {e}")).with_hint(hint),
            ));
        }
        Err(e) => return Err(e).with_context(|| format!("cancelling {what} in {location}")),
    };
    let seqs: Vec<i64> = done.events.iter().map(|e| e.seq).collect();
    if args.store.json {
        let _ = p.json(&serde_json::json!({
            "cancelled": done.events.iter().map(|e| serde_json::json!({
                "seq": e.seq, "event_id": e.event_id, "operation": e.op,
                "customer": crate::ids::mask(&e.customer_id), "correlation_id": e.correlation_id,
            })).collect::<Vec<_>>(),
            "left": done.left.iter().map(|(seq, state)| serde_json::json!({"seq": seq, "state": state})).collect::<Vec<_>>(),
            "actor": action.actor, "reason": action.reason, "state": location.describe(),
        }));
        return Ok(());
    }
    let _ = p.data(format!(
        "cancelled {} event(s) ({}) in {location}; recorded in the history as done by {}",
        seqs.len(),
        seqs.iter().map(|s| format!("#{s}")).collect::<Vec<_>>().join(", "),
        action.actor
    ));
    for (seq, state) in &done.left {
        let _ = p.data(format!(
            "  left alone: #{seq} is {} (only pending events are cancelled)",
            state.as_str()
        ));
    }
    if action.reason.is_none() {
        p.warning("no --reason given: the history records who, but not why");
    }
    Ok(())
}

/// More unfinished events for one customer than `sync.max_events_per_customer` allows.
#[derive(Debug, thiserror::Error)]
#[error(
    "refused: {customer} has {unfinished} unfinished events in the outbox already (sync.max_events_per_customer = {max}); nothing was stored"
)]
pub struct FloodRefused {
    customer: String,
    unfinished: u64,
    max: u64,
}

impl crate::error::Hinted for FloodRefused {
    fn hint(&self) -> Option<String> {
        Some("look at the customer's queue (`kfr history ID`); cancel what was sent by mistake (`kfr outbox cancel --customer ID --reason …`), or raise sync.max_events_per_customer if the volume is real".into())
    }
}
