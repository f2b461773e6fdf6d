//! A register that proves itself right: the ledger (what this tool last made KFR hold) compared
//! with KFR itself, by own lookups, customer by customer (issue 19 item 7).
//!
//! The ledger is the tool's belief; only KFR's answer is the fact. A request applied late, a
//! change made by another system, or an operator's mistake leave them apart without any error on
//! our side, and reconcile (which compares the export with the ledger) cannot see it. This engine
//! looks. It never repairs on its own: it returns the differences and the events that would
//! correct them, and the caller (`kfr verify --repair`) decides, behind the same mass-change
//! guard as reconcile.
//!
//! Customers with an unfinished event in the outbox are skipped: their state is moving, and a
//! lookup would race their delivery.

use crate::ids::{CustomerId, IdPolicy};
use crate::kfr::KfrClient;
use crate::store::{LedgerEntry, LedgerState, NewEvent, Operation};
use chrono::{DateTime, Utc};
use std::collections::HashSet;

/// What one customer looked like on both sides.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Mismatch {
    /// Kind and log pseudonym, never the identifier.
    pub customer: String,
    /// In full, for a repair only; never shown or serialised.
    #[serde(skip)]
    pub customer_id: String,
    /// What the ledger says: `active` or `ended`.
    pub ledger: LedgerState,
    /// Whether KFR shows this institution's relationship now.
    pub kfr_active: bool,
    pub start_date: Option<chrono::NaiveDate>,
}

/// The outcome of a verification.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct VerifyReport {
    /// Customers looked up.
    pub checked: u64,
    /// Found as the ledger says.
    pub matched: u64,
    pub mismatches: Vec<Mismatch>,
    /// Left out: an event of theirs is still in the outbox.
    pub skipped_busy: u64,
    /// Looked up without an answer (after the client's retries); not counted either way.
    pub unanswered: u64,
}

impl VerifyReport {
    /// The events that would make KFR hold what the ledger says (an add with its start date
    /// where KFR lost the relationship, a remove where KFR still holds an ended one), for
    /// `--repair`. Event ids name the run, so a repeat of the same repair is a new event.
    pub fn corrections(&self, now: DateTime<Utc>, run: &str) -> Vec<NewEvent> {
        self.mismatches
            .iter()
            .enumerate()
            .map(|(i, m)| NewEvent {
                event_id: format!("verify-{run}-{i}"),
                op: match m.ledger {
                    LedgerState::Active => Operation::Add,
                    LedgerState::Ended => Operation::Remove,
                },
                customer_id: m.customer_id.clone(),
                start_date: match m.ledger {
                    LedgerState::Active => m.start_date,
                    LedgerState::Ended => None,
                },
                occurred_at: now,
                source: "kfr verify".into(),
            })
            .collect()
    }
}

/// Which ledger entries to look up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sample {
    All,
    /// At most this many, chosen at random (a different set each run, so repeated samples cover
    /// the register over time).
    Some(usize),
}

/// Looks up `sample` of `ledger` (skipping `busy` customers), `parallel` lookups at a time, and
/// compares. `org` is this institution's org.nr (KFR's `organizationId`).
pub async fn verify(
    client: &KfrClient,
    org: &str,
    ledger: Vec<LedgerEntry>,
    busy: &HashSet<String>,
    sample: Sample,
    parallel: usize,
) -> VerifyReport {
    use futures::StreamExt as _;
    use rand::seq::SliceRandom as _;
    let mut report = VerifyReport::default();
    let mut chosen: Vec<LedgerEntry> = ledger
        .into_iter()
        .filter(|e| {
            let moving = busy.contains(&e.customer_id);
            report.skipped_busy += u64::from(moving);
            !moving
        })
        .collect();
    if let Sample::Some(n) = sample {
        chosen.shuffle(&mut rand::rng());
        chosen.truncate(n);
    }
    // Identifiers were checked when they entered the ledger; only their shape matters here.
    let any = IdPolicy {
        allow_synthetic: true,
        allow_h_numbers: true,
    };
    let looked: Vec<(LedgerEntry, Option<bool>, String)> = futures::stream::iter(chosen)
        .map(|e| async {
            let Ok(id) = CustomerId::parse(&e.customer_id, &any) else {
                let shown = crate::ids::mask(&e.customer_id);
                return (e, None, shown);
            };
            let shown = format!("{} {}", id.kind().label(), id.log());
            let answer = client.lookup(&id, None, None, None).await;
            let ours = answer.ok().map(|o| o.value.iter().any(|b| b.organization_id == org));
            (e, ours, shown)
        })
        .buffer_unordered(parallel.max(1))
        .collect()
        .await;
    for (e, ours, shown) in looked {
        let Some(kfr_active) = ours else {
            report.unanswered += 1;
            continue;
        };
        report.checked += 1;
        if kfr_active == (e.state == LedgerState::Active) {
            report.matched += 1;
        } else {
            report.mismatches.push(Mismatch {
                customer: shown,
                customer_id: e.customer_id,
                ledger: e.state,
                kfr_active,
                start_date: e.start_date,
            });
        }
    }
    report.mismatches.sort_by(|a, b| a.customer.cmp(&b.customer));
    report
}
