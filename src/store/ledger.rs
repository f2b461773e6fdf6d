//! The ledger of relationships `kfr` registered, and deletes held back by the load barrier.
//!
//! Ledger rows say what this tool put into KFR: the identifier, the start date sent, how (a load
//! batch or a single add), when, and the CorrelationID Bits can trace. Batch rows are written once
//! KFR accepted the batch; whether it is also confirmed stored is the batch's status in
//! [`super::jobs`] (rows of a batch are replaced as a whole, so a resumed batch never appears
//! twice).
//!
//! Held deletes implement onboarding D-3 step 4: while a load job is not confirmed fully ingested,
//! a relationship must not be deleted (the delete could overtake the batch that adds it, and the
//! late insert would leave a relationship the bank has ended). [`Store::hold_delete_if_loading`]
//! checks for such a job and queues the delete in one transaction, so a delete is either held
//! (and later sent by `kfr load`) or free to go — never lost between the two.

use super::{Store, now_text};
use chrono::NaiveDate;
use rusqlite::params;
use uuid::Uuid;

/// A delete waiting for (or sent after) the barrier.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HeldDelete {
    pub id: i64,
    /// In full: only for the request and the store, never for logs.
    #[serde(skip)]
    pub customer_id: String,
    pub queued_at: String,
    pub correlation_id: Uuid,
    pub sent_at: Option<String>,
    pub outcome: Option<String>,
}

impl Store {
    /// Replaces the ledger rows of one batch with `entries` (identifier, start date).
    pub fn record_batch_in_ledger<'a>(
        &mut self,
        job: i64,
        seq: u32,
        correlation_id: Uuid,
        entries: impl IntoIterator<Item = (&'a str, Option<NaiveDate>)>,
    ) -> anyhow::Result<()> {
        let now = now_text();
        let cid = correlation_id.to_string();
        let tx = self.conn().transaction()?;
        tx.execute(
            "DELETE FROM ledger WHERE job_id = ?1 AND batch_seq = ?2",
            params![job, seq],
        )?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO ledger (customer_id, start_date, how, at, correlation_id, job_id, batch_seq)
                 VALUES (?1, ?2, 'batch', ?3, ?4, ?5, ?6)",
            )?;
            for (id, start) in entries {
                stmt.execute(params![id, start.map(|d| d.to_string()), now, cid, job, seq])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Records a single add (`kfr add`, later the sync agent).
    pub fn record_add_in_ledger(
        &mut self,
        customer_id: &str,
        start: Option<NaiveDate>,
        correlation_id: Uuid,
    ) -> anyhow::Result<()> {
        self.conn().execute(
            "INSERT INTO ledger (customer_id, start_date, how, at, correlation_id) VALUES (?1, ?2, 'add', ?3, ?4)",
            params![
                customer_id,
                start.map(|d| d.to_string()),
                now_text(),
                correlation_id.to_string()
            ],
        )?;
        Ok(())
    }

    /// Number of ledger rows (all, or of one batch).
    pub fn ledger_count(&mut self, batch: Option<(i64, u32)>) -> anyhow::Result<u64> {
        Ok(match batch {
            None => self.conn().query_row("SELECT COUNT(*) FROM ledger", [], |r| r.get(0))?,
            Some((job, seq)) => self.conn().query_row(
                "SELECT COUNT(*) FROM ledger WHERE job_id = ?1 AND batch_seq = ?2",
                params![job, seq],
                |r| r.get(0),
            )?,
        })
    }

    /// Queues the delete when a load job is not yet confirmed; returns the queued row, or `None`
    /// when there is no barrier and the caller should send the delete itself.
    pub fn hold_delete_if_loading(
        &mut self,
        customer_id: &str,
        correlation_id: Uuid,
    ) -> anyhow::Result<Option<(i64, HeldDelete)>> {
        let now = now_text();
        // IMMEDIATE: take the write lock before reading, so the job cannot be confirmed (and its
        // held deletes collected) between our check and our insert.
        let tx = self
            .conn()
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let job: Option<i64> = rusqlite::OptionalExtension::optional(tx.query_row(
            "SELECT id FROM load_jobs WHERE status = 'running' ORDER BY id DESC LIMIT 1",
            [],
            |r| r.get(0),
        ))?;
        let Some(job) = job else { return Ok(None) };
        tx.execute(
            "INSERT INTO held_deletes (customer_id, queued_at, correlation_id) VALUES (?1, ?2, ?3)",
            params![customer_id, now, correlation_id.to_string()],
        )?;
        let id = tx.last_insert_rowid();
        tx.commit()?;
        Ok(Some((
            job,
            HeldDelete {
                id,
                customer_id: customer_id.to_string(),
                queued_at: now,
                correlation_id,
                sent_at: None,
                outcome: None,
            },
        )))
    }

    /// Held deletes not yet sent, oldest first.
    pub fn pending_deletes(&mut self) -> anyhow::Result<Vec<HeldDelete>> {
        let mut stmt = self.conn().prepare(
            "SELECT id, customer_id, queued_at, correlation_id, sent_at, outcome FROM held_deletes
             WHERE sent_at IS NULL ORDER BY id",
        )?;
        let rows = stmt.query_map([], |r| {
            let cid: String = r.get(3)?;
            Ok(HeldDelete {
                id: r.get(0)?,
                customer_id: r.get(1)?,
                queued_at: r.get(2)?,
                correlation_id: Uuid::parse_str(&cid).unwrap_or_default(),
                sent_at: r.get(4)?,
                outcome: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Records that a held delete was sent and what KFR answered.
    pub fn mark_delete_sent(&mut self, id: i64, outcome: &str) -> anyhow::Result<String> {
        let now = now_text();
        self.conn().execute(
            "UPDATE held_deletes SET sent_at = ?1, outcome = ?2 WHERE id = ?3",
            params![now, outcome, id],
        )?;
        Ok(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::jobs::NewBatch;

    #[test]
    fn deletes_are_held_only_while_a_job_runs() {
        let d = tempfile::tempdir().unwrap();
        let mut s = Store::open(&d.path().join("s.db")).unwrap();
        assert!(
            s.hold_delete_if_loading("02013299997", Uuid::new_v4())
                .unwrap()
                .is_none()
        );
        let job = s
            .create_job(
                "f",
                "h",
                "{}",
                1,
                &[NewBatch {
                    first_entry: 0,
                    entry_count: 1,
                    bytes: 10,
                    correlation_id: Uuid::new_v4(),
                }],
            )
            .unwrap();
        let (held_by, held) = s
            .hold_delete_if_loading("02013299997", Uuid::new_v4())
            .unwrap()
            .unwrap();
        assert_eq!(held_by, job);
        assert_eq!(s.pending_deletes().unwrap().len(), 1);
        s.mark_delete_sent(held.id, "removed").unwrap();
        assert!(s.pending_deletes().unwrap().is_empty());
    }

    #[test]
    fn ledger_rows_of_a_batch_are_replaced_not_duplicated() {
        let d = tempfile::tempdir().unwrap();
        let mut s = Store::open(&d.path().join("s.db")).unwrap();
        let job = s.create_job("f", "h", "{}", 2, &[]).unwrap();
        let day = NaiveDate::from_ymd_opt(2020, 1, 2);
        let cid = Uuid::new_v4();
        for _ in 0..2 {
            s.record_batch_in_ledger(job, 1, cid, [("02013299997", day), ("916960190", None)])
                .unwrap();
        }
        assert_eq!(s.ledger_count(Some((job, 1))).unwrap(), 2);
        s.record_add_in_ledger("916960190", None, cid).unwrap();
        assert_eq!(s.ledger_count(None).unwrap(), 3);
    }
}
