//! `kfr verify [--sample N | --all] [--json] [--repair [--allow-mass-change]]`: the ledger
//! checked against KFR by own lookups (engine: `sync::verify`). Exit 0 only when every customer
//! looked up is as the ledger says; 1 when one is not, or when a lookup got no answer (a check
//! that did not happen is not a pass); 2 for a usage error.
//!
//! `--repair` enqueues the corrections (the ledger's state is the bank's last word) for the sync
//! agent, behind the same guard as reconcile: more than 5 % of the customers checked needs
//! `--allow-mass-change`, since a wholesale difference more likely means the wrong register or
//! ledger than a register gone wrong.

use super::VerifyArgs;
use super::printer::Printer;
use crate::config::Settings;
use crate::sync::verify::{Sample, verify};
use chrono::Utc;

/// Share of the customers checked above which `--repair` wants `--allow-mass-change`.
const MASS_CHANGE_SHARE: f64 = 0.05;

/// Lookups at a time: a few, well inside any rate KFR tolerates for reads.
const PARALLEL: usize = 4;

pub async fn run(settings: &Settings, args: &VerifyArgs, p: &Printer) -> anyhow::Result<()> {
    super::install_pseudonyms(settings)?;
    let register = super::outbox::register(settings)?;
    let client = super::build::kfr_client(settings)?;
    let (store, location) = super::build::existing_store(settings, args.state.as_deref())?;
    let ledger = store.ledger(register.key()).await?;
    let busy = store.unfinished_customers(register.key()).await?;
    let sample = if args.all {
        Sample::All
    } else {
        Sample::Some(args.sample.unwrap_or(100))
    };
    let report = verify(&client, &register.org_number, ledger, &busy, sample, PARALLEL).await;
    let mut enqueued = 0;
    if args.repair && !report.mismatches.is_empty() {
        let share = report.mismatches.len() as f64 / report.checked.max(1) as f64;
        if share > MASS_CHANGE_SHARE && !args.allow_mass_change {
            return Err(crate::error::UsageError::new(format!(
                "--repair refused: {} of {} customers checked differ ({:.1} %, over {:.0} %); nothing was enqueued",
                report.mismatches.len(),
                report.checked,
                share * 100.0,
                MASS_CHANGE_SHARE * 100.0
            ))
            .with_hint("check that the configuration names the right register and store; if the differences are real, run again with --allow-mass-change")
            .into());
        }
        let run = uuid::Uuid::new_v4().simple().to_string();
        let events = report.corrections(Utc::now(), &run[..12]);
        enqueued = store.enqueue(register.key(), events, None, Utc::now()).await?.len();
    }
    if args.json {
        let _ = p.json(&serde_json::json!({
            "state": location.describe(), "checked": report.checked, "matched": report.matched,
            "mismatches": report.mismatches, "skipped_busy": report.skipped_busy,
            "unanswered": report.unanswered, "enqueued": enqueued,
        }));
    } else {
        let _ = p.data(format!(
            "checked {} customer(s) against KFR: {} as the ledger says, {} different, {} without an answer; {} left out (events still in the outbox)",
            report.checked,
            report.matched,
            report.mismatches.len(),
            report.unanswered,
            report.skipped_busy
        ));
        for m in &report.mismatches {
            let _ = p.data(format!(
                "  {}: ledger {}, KFR {}",
                m.customer,
                match m.ledger {
                    crate::store::LedgerState::Active => "active",
                    crate::store::LedgerState::Ended => "ended",
                },
                if m.kfr_active { "active" } else { "not registered" }
            ));
        }
        if enqueued > 0 {
            let _ = p.data(format!(
                "enqueued {enqueued} correction(s) in {location}; `kfr sync` delivers them"
            ));
        }
    }
    if !report.mismatches.is_empty() {
        anyhow::bail!(
            "{} customer(s) differ between the ledger and KFR{}",
            report.mismatches.len(),
            if enqueued > 0 {
                "; the corrections are queued"
            } else {
                " (`kfr verify --repair` queues corrections)"
            }
        );
    }
    if report.unanswered > 0 {
        anyhow::bail!(
            "{} lookup(s) got no answer from KFR: those customers are not verified",
            report.unanswered
        );
    }
    Ok(())
}
