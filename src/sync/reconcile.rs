//! Reconcile: compare a full export of the core system's active relationships with the ledger
//! (what this tool last made KFR hold) and turn the differences into outbox events.
//!
//! Rules (docs/sync.md "Reconcile"):
//! - The export is read with the same grammar and rules as `kfr load` (formats, dates, closed
//!   rows, duplicates). A file with any rejected line is refused: a customer whose line was
//!   unreadable would otherwise look absent and be removed.
//! - A customer active in the export and not active in the ledger is an add (with the export's
//!   start date); one active in the ledger and absent from the export is a remove. A customer
//!   active in both is left alone, even if the start dates differ (KFR keeps its own date; the
//!   count is reported).
//! - Mass deletes are refused: more removes than [`MASS_DELETE_SHARE`] of the ledger's active
//!   customers needs an explicit allowance, since a truncated export looks exactly like that.
//! - Customers with events still unfinished in the outbox are left out (their state is about to
//!   change; the next reconcile sees the result), and counted.

use crate::ids::mask;
use crate::input::reader::ReadOutcome;
use crate::store::Operation;
use crate::store::{LedgerEntry, LedgerState, NewEvent};
use chrono::{DateTime, NaiveDate, Utc};
use std::collections::{HashMap, HashSet};

/// Removes beyond this share of the ledger's active customers need `--allow-mass-delete`.
pub const MASS_DELETE_SHARE: f64 = 0.05;

/// The differences between an export and the ledger.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Diff {
    /// In the export, not active in the ledger: (identifier in full, start date).
    pub adds: Vec<(String, Option<NaiveDate>)>,
    /// Active in the ledger, absent from the export (identifier in full).
    pub removes: Vec<String>,
    /// Active in both.
    pub unchanged: u64,
    /// Active in both with another start date in the export than in the ledger.
    pub start_date_differs: u64,
    /// Left out because the outbox still has unfinished events for them.
    pub busy: u64,
    /// Unique active relationships in the export.
    pub export_active: u64,
    /// Active customers in the ledger.
    pub ledger_active: u64,
}

/// Counts for screens and `--json`: no identifiers.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Summary {
    pub export_active: u64,
    pub ledger_active: u64,
    pub adds: u64,
    pub removes: u64,
    pub unchanged: u64,
    pub start_date_differs: u64,
    pub busy: u64,
    /// Masked examples of each kind (at most [`EXAMPLES`]).
    pub add_examples: Vec<String>,
    pub remove_examples: Vec<String>,
}

/// Masked examples shown per kind.
pub const EXAMPLES: usize = 5;

/// Why a reconcile is refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ReconcileError {
    #[error("the export has {rejected} rejected line(s); a reconcile needs every line readable")]
    RejectedLines { rejected: u64 },
    #[error(
        "{removes} removes is {percent:.1} % of the {ledger_active} active customers in the ledger (limit {limit:.0} %)"
    )]
    MassDelete {
        removes: u64,
        ledger_active: u64,
        percent: f64,
        limit: f64,
    },
}

impl crate::error::Hinted for ReconcileError {
    fn hint(&self) -> Option<String> {
        Some(match self {
            ReconcileError::RejectedLines { .. } => {
                "fix the lines `kfr validate --file FILE` lists, then run the reconcile again".into()
            }
            ReconcileError::MassDelete { .. } => "check that the export is complete (a truncated export looks \
                 like this); if the removes are intended, add --allow-mass-delete"
                .into(),
        })
    }
}

/// Compares `export` with `ledger`; `busy` holds customers with unfinished outbox events.
pub fn diff(export: &ReadOutcome, ledger: &[LedgerEntry], busy: &HashSet<String>) -> Result<Diff, ReconcileError> {
    if export.rejected > 0 {
        return Err(ReconcileError::RejectedLines {
            rejected: export.rejected,
        });
    }
    let active: HashMap<&str, Option<NaiveDate>> = ledger
        .iter()
        .filter(|e| e.state == LedgerState::Active)
        .map(|e| (e.customer_id.as_str(), e.start_date))
        .collect();
    let mut d = Diff {
        export_active: export.entries.len() as u64,
        ledger_active: active.len() as u64,
        ..Diff::default()
    };
    let mut in_export = HashSet::with_capacity(export.entries.len());
    for p in &export.entries {
        let id = p.id_text();
        let start = p.start();
        if busy.contains(&id) {
            d.busy += 1;
        } else {
            match active.get(id.as_str()) {
                Some(ledger_start) => {
                    d.unchanged += 1;
                    if *ledger_start != start {
                        d.start_date_differs += 1;
                    }
                }
                None => d.adds.push((id.clone(), start)),
            }
        }
        in_export.insert(id);
    }
    let mut removes: Vec<String> = active
        .keys()
        .filter(|id| !in_export.contains(**id))
        .filter(|id| {
            let b = busy.contains(**id);
            if b {
                d.busy += 1;
            }
            !b
        })
        .map(|id| id.to_string())
        .collect();
    removes.sort();
    d.removes = removes;
    Ok(d)
}

impl Diff {
    /// Refuses more removes than [`MASS_DELETE_SHARE`] of the ledger unless `allowed`.
    pub fn check_mass_delete(&self, allowed: bool) -> Result<(), ReconcileError> {
        let removes = self.removes.len() as u64;
        if allowed || removes == 0 {
            return Ok(());
        }
        let share = removes as f64 / self.ledger_active.max(1) as f64;
        if share > MASS_DELETE_SHARE {
            return Err(ReconcileError::MassDelete {
                removes,
                ledger_active: self.ledger_active,
                percent: share * 100.0,
                limit: MASS_DELETE_SHARE * 100.0,
            });
        }
        Ok(())
    }

    pub fn summary(&self) -> Summary {
        Summary {
            export_active: self.export_active,
            ledger_active: self.ledger_active,
            adds: self.adds.len() as u64,
            removes: self.removes.len() as u64,
            unchanged: self.unchanged,
            start_date_differs: self.start_date_differs,
            busy: self.busy,
            add_examples: self.adds.iter().take(EXAMPLES).map(|(id, _)| mask(id)).collect(),
            remove_examples: self.removes.iter().take(EXAMPLES).map(|id| mask(id)).collect(),
        }
    }

    /// The events to enqueue: removes first, then adds, each with a fresh event id (a second
    /// reconcile of the same export finds these customers busy or settled, not missing).
    pub fn events(&self, now: DateTime<Utc>) -> Vec<NewEvent> {
        let event = |op, id: &str, start| NewEvent {
            event_id: format!("reconcile-{}", uuid::Uuid::new_v4()),
            op,
            customer_id: id.to_string(),
            start_date: start,
            occurred_at: now,
            source: "reconcile".into(),
        };
        self.removes
            .iter()
            .map(|id| event(Operation::Remove, id, None))
            .chain(self.adds.iter().map(|(id, start)| event(Operation::Add, id, *start)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::IdPolicy;
    use crate::input::reader::{ReadOptions, read};

    fn export(text: &str) -> ReadOutcome {
        let opts = ReadOptions {
            policy: IdPolicy::test(),
            today: NaiveDate::from_ymd_opt(2026, 12, 1).unwrap(),
            hash: false,
        };
        read(text.as_bytes(), None, opts, |_, _| {}).unwrap()
    }

    fn active(id: &str, start: Option<&str>) -> LedgerEntry {
        LedgerEntry {
            customer_id: id.into(),
            state: LedgerState::Active,
            start_date: start.map(|s| s.parse().unwrap()),
            since: Utc::now(),
            correlation_id: uuid::Uuid::new_v4(),
        }
    }

    // Synthetic (Tenor-style) identifiers, valid under the test policy.
    const A: &str = "02013299997";
    const B: &str = "15108695088";

    #[test]
    fn adds_what_the_ledger_lacks_and_removes_what_the_export_lacks() {
        let ex = export(&format!("{A};2020-01-15\n"));
        let ledger = vec![active(B, None)];
        let d = diff(&ex, &ledger, &HashSet::new()).unwrap();
        assert_eq!(d.adds, vec![(A.to_string(), NaiveDate::from_ymd_opt(2020, 1, 15))]);
        assert_eq!(d.removes, vec![B.to_string()]);
        let events = d.events(Utc::now());
        assert_eq!(events[0].op, Operation::Remove);
        assert_eq!(events[1].op, Operation::Add);
        assert_eq!(events[1].start_date, NaiveDate::from_ymd_opt(2020, 1, 15));
        let s = d.summary();
        assert!(!format!("{s:?}").contains(A) && !format!("{s:?}").contains(B));
    }

    #[test]
    fn an_ended_customer_in_the_export_is_added_again_and_busy_customers_are_left_alone() {
        let ex = export(&format!("{A}\n{B}\n"));
        let mut ended = active(A, None);
        ended.state = LedgerState::Ended;
        let busy: HashSet<String> = [B.to_string()].into();
        let d = diff(&ex, &[ended], &busy).unwrap();
        assert_eq!(d.adds.len(), 1);
        assert_eq!(d.busy, 1);
        assert!(d.removes.is_empty());
    }

    #[test]
    fn a_rejected_line_refuses_the_reconcile() {
        let ex = export(&format!("{A}\n12345678901\n"));
        assert_eq!(
            diff(&ex, &[], &HashSet::new()),
            Err(ReconcileError::RejectedLines { rejected: 1 })
        );
    }

    #[test]
    fn more_than_five_percent_removes_needs_the_allowance() {
        let ex = export("");
        let ledger = vec![active(A, None)];
        let d = diff(&ex, &ledger, &HashSet::new()).unwrap();
        assert!(matches!(
            d.check_mass_delete(false),
            Err(ReconcileError::MassDelete { removes: 1, .. })
        ));
        assert!(d.check_mass_delete(true).is_ok());
        let kept = Diff {
            removes: vec![A.into()],
            ledger_active: 20,
            ..Diff::default()
        };
        assert!(kept.check_mass_delete(false).is_ok(), "1 of 20 is exactly 5 %");
    }
}
