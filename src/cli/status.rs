//! `kfr status`: the installation at a glance for an operator or a monitoring check — which
//! configuration and store are in use, whether an agent is alive (its heartbeat in the store),
//! leader or standby, ready or why not, the outbox, dead letters and parked customers, a running
//! load, the last delivery, the certificates' days left, versions.
//!
//! Exit codes: 0 all is well; 1 something needs attention (listed under `attention`); 2 the
//! configuration or the store cannot be read at all.

use super::StatusArgs;
use super::agent_watch::STALE_AFTER;
use super::certwatch::{CertWatch, WARN_DAYS};
use super::printer::Printer;
use crate::config::Settings;
use crate::store::{AgentRole, Heartbeat};
use chrono::{DateTime, Utc};

/// How an agent looks from its heartbeat at `now`.
fn agent_view(h: &Heartbeat, now: DateTime<Utc>) -> serde_json::Value {
    let alive = h.role != AgentRole::Stopped && now - h.at <= STALE_AFTER;
    serde_json::json!({
        "holder": h.holder, "alive": alive, "role": h.role, "ready": alive && h.unready.is_empty(),
        "unready": h.unready, "version": h.version, "started_at": h.started_at, "heartbeat_at": h.at,
        "heartbeat_age_seconds": (now - h.at).num_seconds(),
    })
}

pub async fn run(settings: &Settings, args: &StatusArgs, p: &Printer) -> anyhow::Result<()> {
    let now = Utc::now();
    let register = super::outbox::register(settings)?.key();
    let (store, location) = super::build::existing_store(settings, args.state.as_deref())?;
    let beats = store.heartbeats(Some(register.clone())).await?;
    let outbox = store.status(Some(register.clone())).await?;
    let last_delivery = store.last_delivery(register.clone()).await?;
    let schema = store.schema_version().await?;
    let certs = CertWatch::from_settings(settings, settings.sync.tls_cert.clone()).check(now);

    let mut attention: Vec<String> = vec![];
    let agents: Vec<serde_json::Value> = beats.iter().map(|h| agent_view(h, now)).collect();
    let alive: Vec<&serde_json::Value> = agents.iter().filter(|a| a["alive"] == true).collect();
    if alive.is_empty() {
        attention.push(match beats.first() {
            Some(h) => format!(
                "no kfr sync agent is alive: the last heartbeat ({}) is from {}",
                h.holder,
                h.at.format("%Y-%m-%d %H:%M:%S UTC")
            ),
            None => "no kfr sync agent has ever run on this store".into(),
        });
    } else if !alive.iter().any(|a| a["role"] == "leader") {
        attention.push("no alive agent holds the delivery lease: nothing is delivered".into());
    }
    for a in alive.iter().filter(|a| a["role"] == "leader" && a["ready"] == false) {
        attention.push(format!("the delivering agent is not ready: {}", a["unready"]));
    }
    if outbox.dead_lettered > 0 {
        attention.push(format!(
            "{} dead letter(s), {} customer(s) parked: `kfr dlq list`",
            outbox.dead_lettered, outbox.parked_customers
        ));
    }
    for c in certs.iter().filter(|c| c.needs_attention()) {
        attention.push(match (&c.error, c.days_left) {
            (Some(e), _) => format!("the {} certificate cannot be read: {e}", c.certificate),
            (None, Some(d)) => format!(
                "the {} certificate expires in {d} days (warning from {WARN_DAYS}): renew it",
                c.certificate
            ),
            _ => format!("the {} certificate: expiry unknown", c.certificate),
        });
    }

    if args.json {
        p.json(&serde_json::json!({
            "ok": attention.is_empty(),
            "attention": attention,
            "config_file": settings.config_file,
            "state": location.describe(),
            "register": register,
            "agents": agents,
            "outbox": outbox,
            "load_running": outbox.barrier,
            "last_delivery": last_delivery,
            "certificates": certs,
            "versions": { "kfr": super::VERSION, "store_schema": schema },
        }))?;
    } else {
        let file = settings
            .config_file
            .as_ref()
            .map_or("(no file: defaults and environment)".to_string(), |f| {
                f.display().to_string()
            });
        p.data(format!("configuration  {file}"))?;
        p.data(format!("state store    {location} (schema {schema})"))?;
        p.data(format!("kfr            {}", super::VERSION))?;
        if agents.is_empty() {
            p.data("agents         none has run on this store")?;
        }
        for a in &agents {
            let state = if a["alive"] == false {
                format!("gone (last heartbeat {} s ago)", a["heartbeat_age_seconds"])
            } else if a["ready"] == true {
                format!("alive, {}, ready", a["role"].as_str().unwrap_or("?"))
            } else {
                format!(
                    "alive, {}, not ready: {}",
                    a["role"].as_str().unwrap_or("?"),
                    a["unready"]
                )
            };
            p.data(format!(
                "agent          {} {state}; version {}",
                a["holder"].as_str().unwrap_or("?"),
                a["version"].as_str().unwrap_or("?")
            ))?;
        }
        p.data(format!(
            "outbox         pending {}  in flight {}  awaiting ingestion {}  dead letters {}  parked customers {}",
            outbox.pending, outbox.in_flight, outbox.accepted, outbox.dead_lettered, outbox.parked_customers
        ))?;
        p.data(match outbox.barrier {
            Some(job) => format!("initial load   job {job} running: removes are held until it is confirmed"),
            None => "initial load   none running".to_string(),
        })?;
        p.data(format!(
            "last delivery  {}",
            last_delivery.map_or("never".to_string(), |t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        ))?;
        for c in &certs {
            p.data(match (&c.error, c.not_after, c.days_left) {
                (Some(e), _, _) => format!("certificate    {}: unreadable: {e}", c.certificate),
                (None, Some(t), Some(d)) => format!(
                    "certificate    {}: until {} ({d} days)",
                    c.certificate,
                    t.format("%Y-%m-%d")
                ),
                _ => format!("certificate    {}: unknown", c.certificate),
            })?;
        }
        if attention.is_empty() {
            p.data("all well")?;
        } else {
            for a in &attention {
                p.data(format!("attention: {a}"))?;
            }
        }
    }
    if !attention.is_empty() {
        // Listed above already: exit 1 without a further `error:` line.
        return Err(crate::error::Reported(format!("kfr status: {} item(s) need attention", attention.len())).into());
    }
    Ok(())
}
