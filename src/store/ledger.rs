//! The ledger of relationships `kfr` registered.
//!
//! Ledger rows say what this tool put into KFR: the identifier, the start date sent, how (a load
//! batch or a single add), when, and the CorrelationID Bits can trace. Batch rows are written once
//! KFR accepted the batch; whether it is also confirmed stored is the batch's status in
//! [`super::jobs`] (rows of a batch are replaced as a whole, so a resumed batch never appears
//! twice). Operations held back by the load barrier live in [`super::queue`].

use super::{Store, now_text};
use chrono::NaiveDate;
use rusqlite::params;
use uuid::Uuid;

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
}

#[cfg(test)]
mod tests {
    use super::*;

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
