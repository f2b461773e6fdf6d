//! `kfr history ID`: what this installation reported to KFR for one customer — its events still
//! in the outbox, and from the history every attempt with KFR's answer and every operator's
//! action, kept for `sync.history_retention_days` after the outbox purged the events.
//!
//! The identifier is masked in the output unless `--show-id` asks for it (an operator looking
//! one customer up already has it; a pasted output should not carry it).

use super::HistoryArgs;
use super::printer::Printer;
use crate::config::Settings;
use crate::ids::CustomerId;

pub async fn run(settings: &Settings, args: &HistoryArgs, p: &Printer) -> anyhow::Result<()> {
    let id = CustomerId::parse(args.id.trim(), &super::build::id_policy(settings))?;
    let (store, location) = super::build::existing_store(settings, args.store.state.as_deref())?;
    // The events of this configuration's register (read by index); the history of every one.
    let register = super::outbox::register(settings)?.key();
    let events = store.events_of(Some(register), Some(id.as_str().to_string())).await?;
    let lines = store.history(Some(id.as_str().to_string()), None, None).await?;
    let shown = if args.show_id {
        id.as_str().to_string()
    } else {
        id.log().to_string()
    };
    if args.store.json {
        let _ = p.json(&serde_json::json!({
            "customer": shown, "kind": id.kind(), "state": location.describe(),
            "events": events, "history": lines,
        }));
        return Ok(());
    }
    let _ = p.data(format!("{} {} in {location}", id.kind().label(), shown));
    if events.is_empty() {
        let _ = p.data("  outbox: no events (none yet, or purged after delivery: see the history below)");
    } else {
        let _ = p.data("  outbox:");
        for e in &events {
            let _ = p.data(format!(
                "    {}  {} {:?}  attempts {}  received {}  (event {}, CorrelationID {})",
                e.seq,
                e.op.as_str(),
                e.state,
                e.attempts,
                e.received_at.format("%Y-%m-%d %H:%M:%S UTC"),
                crate::ids::scrub(&e.event_id),
                e.correlation_id
            ));
        }
    }
    if lines.is_empty() {
        let _ = p.data("  history: nothing recorded");
        return Ok(());
    }
    let _ = p.data("  history:");
    for l in &lines {
        let status = l.status.map(|s| format!(" HTTP {s}")).unwrap_or_default();
        let code = l.code.as_deref().map(|c| format!(" {c}")).unwrap_or_default();
        let op = l.op.map(|o| format!(" {}", o.as_str())).unwrap_or_default();
        let seq = l.seq.map(|s| format!(" #{s}")).unwrap_or_default();
        let cid = l
            .correlation_id
            .map(|c| format!(" CorrelationID {c}"))
            .unwrap_or_default();
        let who = l.actor.as_deref().map(|a| format!(" by {a}")).unwrap_or_default();
        let detail = l
            .detail
            .as_deref()
            .map(|d| format!(": {}", crate::ids::scrub(d)))
            .unwrap_or_default();
        let _ = p.data(format!(
            "    {}  {}{seq}{op}  {}{status}{code}{cid}{who}{detail}",
            l.at.format("%Y-%m-%d %H:%M:%S UTC"),
            l.kind.as_str(),
            l.outcome
        ));
    }
    Ok(())
}
