//! Held operations: one queue per customer, so what the bank asked for on a customer reaches KFR
//! in the order it was asked (docs/specs/barrier.md).
//!
//! Two rules put an operation in the queue instead of on the wire:
//! - **The delete barrier** (onboarding D-3 step 4): while an initial load job is not confirmed
//!   ingested, a remove waits; it could overtake the batch that registers the relationship.
//! - **Per-customer order**: while any operation on a customer waits (or is being sent), every
//!   later operation on that customer waits behind it, an add as much as a remove. Without this a
//!   `kfr add X` issued after a held `kfr remove X` would reach KFR first and the held remove would
//!   then end the relationship the bank had just re-opened.
//!
//! Adds on a customer with nothing waiting are never held: D-3 step 3 has new relationships go in
//! parallel with the load.
//!
//! The interface ([`CustomerQueue`]) is stated in domain terms so another backend (the sync
//! agent's outbox on PostgreSQL) can implement it with the same guarantees:
//! - [`CustomerQueue::enqueue`] decides and records in one transaction: an operation is either
//!   queued or free to be sent by the caller, never lost in between.
//! - [`CustomerQueue::claim`] hands out only the head of a customer's queue, only with the barrier
//!   down, and marks it in flight, so nothing behind it on that customer can go first.
//! - [`CustomerQueue::settle`] records KFR's answer; the customer's next operation may then go.
//! - [`CustomerQueue::park`] records a failed attempt; the operation keeps its place at the head
//!   and everything behind it keeps waiting until it is settled.
//!
//! Storage: the outbox (docs/specs/outbox.md). A held operation is an outbox event whose source is
//! `kfr remove` or `kfr add`, so `kfr remove` during a load, the load's release of held
//! operations and the sync agent share one queue per customer: an operation held here waits
//! behind the sync agent's earlier events on the customer, and the other way round. Its register
//! is the store's load job's (the running one, else the latest; `''` when that job predates
//! registers). Ids are outbox seqs: issue order, never reused.
//!
//! `kfr add` / `kfr remove` no longer call [`CustomerQueue::enqueue`]: they store and claim
//! through the outbox (`OutboxBackend::enqueue_and_claim`), which applies the same two rules
//! against the sync agent's events of their register as well. What they queue is held here like
//! before (same sources), so the load sends it once confirmed.
//!
//! A failed attempt ([`CustomerQueue::park`]) keeps the event pending at its customer's head with
//! a next-attempt time no clock reaches, so neither the load nor the sync agent sends it again
//! before [`CustomerQueue::release`] (the next `kfr load --resume`).

use super::Store;
use super::outbox::{LedgerState, NewEvent};
use super::outbox_sqlite::{finish_head, insert_event, set_ledger, ts};
use chrono::Utc;
use rusqlite::{OptionalExtension as _, TransactionBehavior, params};
use uuid::Uuid;

/// What the bank asked for on one customer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    /// Register the relationship (POST).
    Add,
    /// End the relationship (DELETE).
    Remove,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Add => "add",
            Operation::Remove => "remove",
        }
    }
    fn parse(s: &str) -> rusqlite::Result<Self> {
        match s {
            "add" => Ok(Operation::Add),
            "remove" => Ok(Operation::Remove),
            other => Err(super::jobs::bad_value("outbox.op", other)),
        }
    }
}

/// Where a held operation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OpState {
    /// Waiting for the barrier or for earlier operations on its customer.
    Queued,
    /// Handed to a sender, answer not recorded yet.
    Claimed,
    /// The last attempt failed; still at the head of its customer's queue.
    Parked,
    /// KFR answered; done.
    Settled,
}

/// One held operation.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HeldOp {
    /// Issue order.
    pub id: i64,
    /// In full: only for the request and the store, never for logs or reports.
    #[serde(skip)]
    pub customer_id: String,
    pub operation: Operation,
    pub correlation_id: Uuid,
    pub queued_at: String,
    pub state: OpState,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub settled_at: Option<String>,
    pub outcome: Option<String>,
}

/// Why an operation was queued rather than sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldReason {
    /// A remove while load job `job` is not confirmed ingested (D-3 step 4).
    Barrier { job: i64 },
    /// `ahead` earlier operations on the same customer are not settled yet; `job` is the load
    /// job still running, if any.
    Behind { ahead: u64, job: Option<i64> },
}

/// An operation the queue kept, and why.
#[derive(Debug, Clone)]
pub struct Queued {
    pub op: HeldOp,
    pub reason: HoldReason,
}

/// The per-customer queue of held operations (see the module docs for the guarantees).
pub trait CustomerQueue {
    /// The load job that holds removes back, if one is not confirmed yet.
    fn barrier(&mut self) -> anyhow::Result<Option<i64>>;
    /// Queues `op` on `customer` if a rule says it must wait, atomically with that decision.
    /// `None`: nothing holds it; the caller sends it now.
    fn enqueue(&mut self, customer: &str, op: Operation, correlation_id: Uuid) -> anyhow::Result<Option<Queued>>;
    /// The oldest operation that may be sent now (barrier down, nothing ahead of it on its
    /// customer), marked in flight; `None` when nothing may go.
    fn claim(&mut self) -> anyhow::Result<Option<HeldOp>>;
    /// Records KFR's answer for a claimed operation; returns the time recorded.
    fn settle(&mut self, id: i64, outcome: &str) -> anyhow::Result<String>;
    /// Records a failed attempt; the operation stays at the head of its customer's queue and is
    /// not claimed again until [`CustomerQueue::release`].
    fn park(&mut self, id: i64, error: &str) -> anyhow::Result<()>;
    /// Puts parked operations, and claimed ones whose sender died, back in line for a new sender
    /// (there is one sender at a time: the load that lifts the barrier). Returns how many.
    fn release(&mut self) -> anyhow::Result<u64>;
    /// Operations not settled, in issue order.
    fn waiting(&mut self) -> anyhow::Result<Vec<HeldOp>>;
}

/// The `next_attempt_at` of a parked operation: later than any claim's "now".
const PARKED: &str = "9999-12-31T23:59:59.999999999Z";

/// Held operations are the outbox events of these sources. The exact text matters: it is the
/// condition of the partial index `outbox_held`, which SQLite uses only for the same terms.
const HELD: &str = "source IN ('kfr remove', 'kfr add') AND finished_at IS NULL";

const COLUMNS: &str = "seq, customer_id, op, correlation_id, received_at, state, attempts, last_error, finished_at, \
     delivery, next_attempt_at";

/// A stored time as the rest of the store writes it (milliseconds).
fn millis(t: String) -> String {
    chrono::DateTime::parse_from_rfc3339(&t)
        .map(|d| {
            d.with_timezone(&Utc)
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        })
        .unwrap_or(t)
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<HeldOp> {
    let cid: String = r.get(3)?;
    let state: String = r.get(5)?;
    let next: Option<String> = r.get(10)?;
    let state = match state.as_str() {
        "pending" if next.as_deref() == Some(PARKED) => OpState::Parked,
        "pending" => OpState::Queued,
        "in_flight" | "accepted" => OpState::Claimed,
        "dead_lettered" => OpState::Parked,
        "delivered" | "dropped" => OpState::Settled,
        other => return Err(super::jobs::bad_value("outbox.state", other)),
    };
    let recorded: u32 = r.get(6)?;
    Ok(HeldOp {
        id: r.get(0)?,
        customer_id: r.get(1)?,
        operation: Operation::parse(&r.get::<_, String>(2)?)?,
        correlation_id: Uuid::parse_str(&cid).map_err(|_| super::jobs::bad_value("outbox.correlation_id", &cid))?,
        queued_at: millis(r.get(4)?),
        // The attempt under way counts, as it did when held operations had their own table.
        attempts: recorded + u32::from(state == OpState::Claimed),
        state,
        last_error: r.get(7)?,
        settled_at: r.get::<_, Option<String>>(8)?.map(millis),
        outcome: r.get(9)?,
    })
}

fn running_job(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<Option<i64>> {
    tx.query_row(
        "SELECT id FROM load_jobs WHERE status = 'running' ORDER BY id DESC LIMIT 1",
        [],
        |r| r.get(0),
    )
    .optional()
}

/// The register of this store's queue: its running load job's, else its latest job's; `''` when
/// that job predates registers (or there is none).
fn queue_register(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<String> {
    let reg: Option<Option<String>> = tx
        .query_row(
            "SELECT register FROM load_jobs ORDER BY status = 'running' DESC, id DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .optional()?;
    Ok(reg.flatten().unwrap_or_default())
}

impl Store {
    /// The register held operations of this store belong to (see the module docs).
    pub fn queue_register(&mut self) -> anyhow::Result<String> {
        let tx = self.conn().transaction()?;
        Ok(queue_register(&tx)?)
    }
}

impl CustomerQueue for Store {
    fn barrier(&mut self) -> anyhow::Result<Option<i64>> {
        let tx = self.conn().transaction()?;
        Ok(running_job(&tx)?)
    }

    fn enqueue(&mut self, customer: &str, op: Operation, correlation_id: Uuid) -> anyhow::Result<Option<Queued>> {
        // IMMEDIATE: the write lock is taken before reading, so neither the job's confirmation
        // nor a sender settling this customer's last operation can slip between our look and our
        // insert.
        let tx = self.conn().transaction_with_behavior(TransactionBehavior::Immediate)?;
        let job = running_job(&tx)?;
        let register = queue_register(&tx)?;
        let ahead: u64 = tx.query_row(
            "SELECT COUNT(*) FROM outbox WHERE register = ?1 AND customer_id = ?2 AND finished_at IS NULL",
            params![register, customer],
            |r| r.get(0),
        )?;
        let reason = match (ahead, job, op) {
            (1.., _, _) => HoldReason::Behind { ahead, job },
            (0, Some(job), Operation::Remove) => HoldReason::Barrier { job },
            _ => return Ok(None),
        };
        let now = Utc::now();
        let event = NewEvent {
            event_id: format!("held-{}", Uuid::new_v4()),
            op,
            customer_id: customer.to_string(),
            start_date: None,
            occurred_at: now,
            source: format!("kfr {}", op.as_str()),
        };
        let id = insert_event(&tx, &register, &event, correlation_id, now)?;
        tx.commit()?;
        Ok(Some(Queued {
            op: HeldOp {
                id,
                customer_id: customer.to_string(),
                operation: op,
                correlation_id,
                queued_at: now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                state: OpState::Queued,
                attempts: 0,
                last_error: None,
                settled_at: None,
                outcome: None,
            },
            reason,
        }))
    }

    fn claim(&mut self) -> anyhow::Result<Option<HeldOp>> {
        let tx = self.conn().transaction_with_behavior(TransactionBehavior::Immediate)?;
        if running_job(&tx)?.is_some() {
            return Ok(None);
        }
        let register = queue_register(&tx)?;
        // Heads only: an operation behind anything on its customer (held or the sync agent's)
        // waits for it.
        let sql = format!(
            "SELECT {COLUMNS} FROM outbox
             WHERE head = 1 AND register = ?1 AND state = 'pending' AND source IN ('kfr remove', 'kfr add')
               AND (next_attempt_at IS NULL OR next_attempt_at <= ?2)
             ORDER BY seq LIMIT 1"
        );
        let Some(mut op) = tx.query_row(&sql, params![register, ts(Utc::now())], row).optional()? else {
            return Ok(None);
        };
        tx.execute(
            "UPDATE outbox SET state = 'in_flight', claimer = 'queue' WHERE seq = ?1",
            [op.id],
        )?;
        tx.commit()?;
        op.state = OpState::Claimed;
        op.attempts += 1;
        Ok(Some(op))
    }

    fn settle(&mut self, id: i64, outcome: &str) -> anyhow::Result<String> {
        let now = Utc::now();
        let tx = self.conn().transaction_with_behavior(TransactionBehavior::Immediate)?;
        let found: Option<(String, String, String, String)> = tx
            .query_row(
                "SELECT register, customer_id, op, correlation_id FROM outbox
                 WHERE seq = ?1 AND state = 'in_flight' AND source IN ('kfr remove', 'kfr add')",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()?;
        let Some((register, customer, op, cid)) = found else {
            anyhow::bail!("held operation {id} is not claimed");
        };
        tx.execute(
            "UPDATE outbox SET state = 'delivered', finished_at = ?1, delivery = ?2, attempts = attempts + 1,
                 last_error = NULL, failing_since = NULL, next_attempt_at = NULL, claimer = NULL
             WHERE seq = ?3",
            params![ts(now), outcome, id],
        )?;
        finish_head(&tx, id, &register, &customer)?;
        // KFR answered with success (idempotent outcomes included): an add leaves the
        // relationship active, a remove ends it — recorded with the outcome, in its transaction.
        let state = match Operation::parse(&op)? {
            Operation::Add => LedgerState::Active,
            Operation::Remove => LedgerState::Ended,
        };
        let cid = Uuid::parse_str(&cid).map_err(|_| super::jobs::bad_value("outbox.correlation_id", &cid))?;
        set_ledger(&tx, &register, &customer, state, None, now, cid)?;
        tx.commit()?;
        Ok(now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
    }

    fn park(&mut self, id: i64, error: &str) -> anyhow::Result<()> {
        let n = self.conn().execute(
            "UPDATE outbox SET state = 'pending', attempts = attempts + 1, last_error = ?1, next_attempt_at = ?2,
                 failing_since = COALESCE(failing_since, ?3), claimer = NULL
             WHERE seq = ?4 AND state = 'in_flight' AND source IN ('kfr remove', 'kfr add')",
            params![error, PARKED, ts(Utc::now()), id],
        )?;
        anyhow::ensure!(n == 1, "held operation {id} is not claimed");
        Ok(())
    }

    fn release(&mut self) -> anyhow::Result<u64> {
        // Only what this queue parked or claimed: events the sync agent holds in flight are its own.
        let sql = format!(
            "UPDATE outbox SET state = 'pending', next_attempt_at = NULL, claimer = NULL
             WHERE {HELD} AND ((state = 'in_flight' AND claimer = 'queue') OR (state = 'pending' AND next_attempt_at = ?1))"
        );
        Ok(self.conn().execute(&sql, [PARKED])? as u64)
    }

    fn waiting(&mut self) -> anyhow::Result<Vec<HeldOp>> {
        let sql = format!("SELECT {COLUMNS} FROM outbox WHERE {HELD} ORDER BY seq");
        let mut stmt = self.conn().prepare(&sql)?;
        let rows = stmt.query_map([], row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::jobs::NewBatch;

    const X: &str = "02013299997";
    const Y: &str = "916960190";

    fn store() -> (tempfile::TempDir, Store) {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("s.db")).unwrap();
        (d, s)
    }

    fn start_job(s: &mut Store) -> i64 {
        let b = NewBatch {
            first_entry: 0,
            entry_count: 1,
            bytes: 10,
            correlation_id: Uuid::new_v4(),
        };
        s.create_job("f", "h", "{}", 1, &[b]).unwrap()
    }

    fn confirm(s: &mut Store, job: i64) {
        s.set_batch_status(job, 1, crate::store::BatchStatus::Confirmed)
            .unwrap();
        assert!(s.confirm_job_if_complete(job).unwrap());
    }

    fn enqueue(s: &mut Store, c: &str, op: Operation) -> Option<HoldReason> {
        s.enqueue(c, op, Uuid::new_v4()).unwrap().map(|q| q.reason)
    }

    #[test]
    fn nothing_is_held_without_a_barrier_or_a_queue() {
        let (_d, mut s) = store();
        assert_eq!(s.barrier().unwrap(), None);
        assert_eq!(enqueue(&mut s, X, Operation::Remove), None);
        assert_eq!(enqueue(&mut s, X, Operation::Add), None);
        assert!(s.waiting().unwrap().is_empty());
    }

    #[test]
    fn the_barrier_holds_removes_and_a_queue_holds_everything_behind_it() {
        let (_d, mut s) = store();
        let job = start_job(&mut s);
        assert_eq!(s.barrier().unwrap(), Some(job));
        // D-3 step 3: an add on a customer with nothing waiting goes in parallel with the load.
        assert_eq!(enqueue(&mut s, Y, Operation::Add), None);
        assert_eq!(enqueue(&mut s, X, Operation::Remove), Some(HoldReason::Barrier { job }));
        assert_eq!(
            enqueue(&mut s, X, Operation::Add),
            Some(HoldReason::Behind {
                ahead: 1,
                job: Some(job)
            })
        );
        assert_eq!(
            enqueue(&mut s, X, Operation::Remove),
            Some(HoldReason::Behind {
                ahead: 2,
                job: Some(job)
            })
        );
        // Nothing may be claimed while the barrier is up.
        assert!(s.claim().unwrap().is_none());
        confirm(&mut s, job);
        assert_eq!(s.barrier().unwrap(), None);

        // Claimed strictly one at a time per customer, in issue order.
        let first = s.claim().unwrap().unwrap();
        assert_eq!((first.operation, first.attempts), (Operation::Remove, 1));
        assert!(
            s.claim().unwrap().is_none(),
            "the add waits until the remove is settled"
        );
        // An add issued while the remove is in flight still queues behind it.
        assert!(matches!(
            enqueue(&mut s, X, Operation::Add),
            Some(HoldReason::Behind { ahead: 3, job: None })
        ));
        s.settle(first.id, "removed").unwrap();
        let order: Vec<Operation> = std::iter::from_fn(|| {
            let op = s.claim().unwrap()?;
            s.settle(op.id, "ok").unwrap();
            Some(op.operation)
        })
        .collect();
        assert_eq!(order, [Operation::Add, Operation::Remove, Operation::Add]);
        assert!(s.waiting().unwrap().is_empty());
        assert_eq!(enqueue(&mut s, X, Operation::Remove), None, "queue empty: free again");
    }

    #[test]
    fn a_parked_operation_keeps_its_place_and_blocks_only_its_customer() {
        let (_d, mut s) = store();
        let job = start_job(&mut s);
        enqueue(&mut s, X, Operation::Remove).unwrap();
        enqueue(&mut s, X, Operation::Add).unwrap();
        enqueue(&mut s, Y, Operation::Remove).unwrap();
        confirm(&mut s, job);

        let x = s.claim().unwrap().unwrap();
        s.park(x.id, "KFR answered 503").unwrap();
        let y = s.claim().unwrap().unwrap();
        assert_eq!(y.customer_id, Y, "another customer is not blocked");
        s.settle(y.id, "removed").unwrap();
        assert!(s.claim().unwrap().is_none(), "X's add stays behind the parked remove");
        // Still held behind it for later callers, though no load runs.
        assert!(matches!(
            enqueue(&mut s, X, Operation::Add),
            Some(HoldReason::Behind { ahead: 2, job: None })
        ));
        let w = s.waiting().unwrap();
        assert_eq!(w[0].state, OpState::Parked);
        assert_eq!(w[0].last_error.as_deref(), Some("KFR answered 503"));

        // A new sender releases it; it goes first again, with its attempts counted.
        assert_eq!(s.release().unwrap(), 1);
        let again = s.claim().unwrap().unwrap();
        assert_eq!((again.id, again.attempts), (x.id, 2));
        assert!(s.settle(again.id, "removed").is_ok());
        assert!(s.settle(again.id, "removed").is_err(), "settled once");
    }
}
