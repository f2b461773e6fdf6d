//! `kfr load abandon JOB`: an operator ends a load job that will not be completed, under a rule
//! that loses nothing silently (issue 9 item 11, docs/load.md "Abandoning a job").
//!
//! - **Batches already sent stay in KFR.** KFR has no batch undo; what it accepted is (or will be)
//!   registered, and the store's ledger keeps the record of every accepted batch's entries. The
//!   outcome counts them by state so the operator can say what KFR holds.
//! - **Held operations are never left behind unannounced.** While any waits in the job's register
//!   the job is not abandoned unless the operator chooses: `--send-held` sends them now, each
//!   customer's in issue order, by the same path the load uses after confirmation; `--drop-held`
//!   finishes them as dropped (never sent), listed masked so they can be issued again by hand.
//!   The choice and the abandonment are one transaction in the store.
//! - **The barrier lifts** (an abandoned job holds no remove back) and `--resume` never picks the
//!   job up again.
//!
//! Like the load, this prints nothing: it returns an [`AbandonOutcome`] (and reports held
//! operations sent as [`super::LoadEvent`]s).

use super::report::SentOperation;
use super::{EventSink, LoadError};
use crate::ids::{CustomerId, IdPolicy};
use crate::kfr::KfrClient;
use crate::store::{
    Abandonment, BatchStatus, HeldAtAbandon, OWN_SOURCES, Operation, OperatorAction, OutboxEvent, Store,
};

/// What to do with the operations held in the job's register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeldChoice {
    /// Refuse while any waits (no flag).
    None,
    /// `--send-held`.
    Send,
    /// `--drop-held`.
    Drop,
}

/// Everything `kfr load abandon` needs, as values.
#[derive(Debug, Clone)]
pub struct AbandonOptions {
    /// Where the state store is, for messages (the store itself is passed to [`abandon`]).
    pub state: String,
    /// Who abandons and why, for the history.
    pub action: OperatorAction,
    /// As [`super::LoadOptions::request_budget`] and [`super::LoadOptions::in_doubt`].
    pub request_budget: std::time::Duration,
    pub in_doubt: std::time::Duration,
    pub job: i64,
    pub held: HeldChoice,
    /// The KFR this run talks to: held operations are sent only to the job's own.
    pub org_number: String,
    pub kfr_base_url: String,
    pub environment: String,
}

/// Batches of one state and the relationships in them.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct BatchCount {
    pub batches: u64,
    pub relationships: u64,
}

/// A held operation dropped with the job: kind and masked identifier, never in full.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DroppedOperation {
    pub customer: String,
    pub operation: Operation,
    pub correlation_id: uuid::Uuid,
    pub queued_at: String,
}

/// What abandoning did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AbandonOutcome {
    pub job: i64,
    pub input: String,
    /// False when the job was abandoned before and only its held operations were settled now.
    pub abandoned_now: bool,
    /// Confirmed stored in KFR.
    pub confirmed: BatchCount,
    /// Accepted by KFR (201), not confirmed: KFR registers them all the same.
    pub accepted: BatchCount,
    /// Sent, answer never recorded: KFR may hold them.
    pub uploading: BatchCount,
    /// Never sent.
    pub planned: BatchCount,
    /// The store's ledger rows of the job: relationships recorded as sent in accepted batches.
    pub ledger_rows: u64,
    pub held_sent: Vec<SentOperation>,
    pub held_dropped: Vec<DroppedOperation>,
    /// Held operations whose sending failed: they stay first in their customer's queue.
    pub held_failed: usize,
    /// Held operations of the job still waiting after `--send-held` (the failed ones and those
    /// behind them on the same customer); `kfr load abandon JOB --send-held` tries them again.
    pub held_still_waiting: usize,
}

/// How an operation is named to people: kind and masked identifier (docs/ids.md).
fn masked(op: &OutboxEvent) -> String {
    let all = IdPolicy {
        allow_synthetic: true,
        allow_h_numbers: true,
    };
    match CustomerId::parse(&op.customer_id, &all) {
        Ok(id) => format!("{} {}", id.kind().label(), crate::ids::mask(id.as_str())),
        Err(_) => crate::ids::mask(&op.customer_id),
    }
}

/// `kfr load abandon`: see the module docs for the rule.
pub async fn abandon(
    opts: &AbandonOptions,
    store: Option<&Store>,
    client: Option<&KfrClient>,
    on: EventSink<'_>,
) -> Result<AbandonOutcome, LoadError> {
    let Some(store) = store else {
        return Err(LoadError::NoStore {
            state: opts.state.clone(),
        });
    };
    // A running load owns the job: abandoning under it would race its next step.
    super::take_writer(store, "kfr load abandon", &opts.state, opts.job).await?;
    let result = abandon_as_writer(opts, store, client, on).await;
    super::release_writer(store).await;
    result
}

async fn abandon_as_writer(
    opts: &AbandonOptions,
    store: &Store,
    client: Option<&KfrClient>,
    on: EventSink<'_>,
) -> Result<AbandonOutcome, LoadError> {
    // Held operations go to the job's own KFR or nowhere (a job belongs to one KFR).
    if opts.held == HeldChoice::Send
        && let Some(job) = store.job(opts.job).await?
    {
        super::same_kfr(&job, &opts.environment, &opts.kfr_base_url, &opts.org_number)?;
    }
    let rule = match opts.held {
        HeldChoice::None => HeldAtAbandon::Refuse,
        HeldChoice::Send => HeldAtAbandon::Release,
        HeldChoice::Drop => HeldAtAbandon::Drop,
    };
    let (was_running, held) = match store
        .abandon_job(opts.job, rule, opts.action.clone(), chrono::Utc::now())
        .await?
    {
        Abandonment::NoSuchJob => {
            return Err(LoadError::NoSuchJob {
                job: opts.job,
                state: opts.state.clone(),
            });
        }
        Abandonment::Confirmed => {
            return Err(LoadError::JobNotRunning {
                job: opts.job,
                status: "confirmed",
            });
        }
        // Abandoned before, and what it held was delivered since (by `kfr sync`, or an earlier
        // `--send-held`): what was asked is done; the outcome says nothing was left to send
        // (issue 20: this exited 1).
        Abandonment::AlreadyAbandoned { held } if held.is_empty() && opts.held == HeldChoice::Send => (false, held),
        Abandonment::AlreadyAbandoned { held } if held.is_empty() => {
            return Err(LoadError::JobNotRunning {
                job: opts.job,
                status: "abandoned",
            });
        }
        Abandonment::HeldWaiting { held } | Abandonment::AlreadyAbandoned { held } => {
            let n = |o: Operation| held.iter().filter(|h| h.op == o).count();
            return Err(LoadError::HeldOperationsWait {
                job: opts.job,
                adds: n(Operation::Add),
                removes: n(Operation::Remove),
            });
        }
        Abandonment::Abandoned { was_running, held } => (was_running, held),
    };
    let register = held.first().map(|h| h.register.clone()).unwrap_or_default();
    let mut sent = vec![];
    let mut failed = 0;
    let mut dropped = vec![];
    match opts.held {
        HeldChoice::Send if !held.is_empty() => {
            let client = client.expect("--send-held comes with a KFR client");
            (sent, failed) =
                super::send_held_operations(store, client, &register, (opts.request_budget, opts.in_doubt), on).await?;
        }
        HeldChoice::Drop => {
            dropped = held
                .iter()
                .map(|op| DroppedOperation {
                    customer: masked(op),
                    operation: op.op,
                    correlation_id: op.correlation_id,
                    queued_at: crate::store::time_text(op.received_at),
                })
                .collect();
        }
        _ => {}
    }
    // What the sending left (a failure, and whatever waits behind it on that customer) is
    // counted, so nothing hides in the queue.
    let still_held = if opts.held == HeldChoice::Send {
        let sources = OWN_SOURCES.iter().map(|s| s.to_string()).collect();
        let left: std::collections::BTreeSet<i64> = store
            .unfinished_of(register.clone(), sources)
            .await?
            .iter()
            .map(|w| w.seq)
            .collect();
        held.iter().filter(|h| left.contains(&h.seq)).count()
    } else {
        0
    };
    let job = store
        .job(opts.job)
        .await?
        .ok_or_else(|| anyhow::anyhow!("load job {} is gone from the state store", opts.job))?;
    let batches = store.batches(opts.job).await?;
    let count = |st: BatchStatus| {
        let of: Vec<_> = batches.iter().filter(|b| b.status == st).collect();
        BatchCount {
            batches: of.len() as u64,
            relationships: of.iter().map(|b| b.entry_count).sum(),
        }
    };
    let mut ledger_rows = 0;
    for b in &batches {
        ledger_rows += store.ledger_count(Some((opts.job, b.seq))).await?;
    }
    Ok(AbandonOutcome {
        job: opts.job,
        input: job.input_path,
        abandoned_now: was_running,
        confirmed: count(BatchStatus::Confirmed),
        accepted: count(BatchStatus::Accepted),
        uploading: count(BatchStatus::Uploading),
        planned: count(BatchStatus::Planned),
        ledger_rows,
        held_sent: sent,
        held_dropped: dropped,
        held_failed: failed,
        held_still_waiting: still_held,
    })
}
