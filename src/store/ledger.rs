//! The ledger of relationships `kfr` registered.
//!
//! Ledger rows say what this tool put into KFR: the identifier, the start date sent, how (a load
//! batch or a single add), when, and the CorrelationID Bits can trace. Batch rows are written once
//! KFR accepted the batch; whether it is also confirmed stored is the batch's status in
//! [`super::jobs`] (rows of a batch are replaced as a whole, so a resumed batch never appears
//! twice). Operations held back by the load barrier live in [`super::queue`].
//!
//! Beside that history, `ledger_current` holds one row per register and customer: what KFR holds
//! now as far as this tool knows (active with its start date, or ended). The outbox changes it in
//! the same transaction as the outcome (docs/specs/outbox.md); the load's batches and `kfr add`
//! change it here, in the transaction of their history rows. A batch row's register is its job's;
//! a single add's is the store's queue register ([`Store::queue_register`]) unless the caller
//! names one ([`Store::record_add_in_ledger_for`]).

use super::Store;
use super::outbox::LedgerState;
use super::outbox_sqlite::set_ledger;
use chrono::{NaiveDate, Utc};
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
        let at = Utc::now();
        let now = at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let cid = correlation_id.to_string();
        let tx = self
            .conn()
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let register: Option<String> =
            tx.query_row("SELECT register FROM load_jobs WHERE id = ?1", [job], |r| r.get(0))?;
        let register = register.unwrap_or_default();
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
                set_ledger(&tx, &register, id, LedgerState::Active, start, at, correlation_id)?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Records a single add (`kfr add`, a held add the load sent) in the store's queue register.
    pub fn record_add_in_ledger(
        &mut self,
        customer_id: &str,
        start: Option<NaiveDate>,
        correlation_id: Uuid,
    ) -> anyhow::Result<()> {
        let register = self.queue_register()?;
        self.record_add_in_ledger_for(&register, customer_id, start, correlation_id)
    }

    /// Records a single add in `register` ([`super::outbox::Register::key`]): a history row and
    /// the customer's current state, in one transaction.
    pub fn record_add_in_ledger_for(
        &mut self,
        register: &str,
        customer_id: &str,
        start: Option<NaiveDate>,
        correlation_id: Uuid,
    ) -> anyhow::Result<()> {
        let at = Utc::now();
        let tx = self
            .conn()
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute(
            "INSERT INTO ledger (customer_id, start_date, how, at, correlation_id) VALUES (?1, ?2, 'add', ?3, ?4)",
            params![
                customer_id,
                start.map(|d| d.to_string()),
                at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                correlation_id.to_string()
            ],
        )?;
        set_ledger(
            &tx,
            register,
            customer_id,
            LedgerState::Active,
            start,
            at,
            correlation_id,
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Records a single remove in `register`: the customer's current state becomes ended (the
    /// history table keeps registrations only).
    pub fn record_remove_in_ledger_for(
        &mut self,
        register: &str,
        customer_id: &str,
        correlation_id: Uuid,
    ) -> anyhow::Result<()> {
        let tx = self
            .conn()
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        set_ledger(
            &tx,
            register,
            customer_id,
            LedgerState::Ended,
            None,
            Utc::now(),
            correlation_id,
        )?;
        tx.commit()?;
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

    #[test]
    fn batches_and_single_adds_keep_the_current_ledger() {
        use crate::store::outbox::{LedgerState, OutboxBackend as _};
        let d = tempfile::tempdir().unwrap();
        let mut s = Store::open(&d.path().join("s.db")).unwrap();
        let settings = r#"{"environment":"test","kfr_base_url":"https://kfr.example/api","org_number":"923609016"}"#;
        let job = s.create_job("f", "h", settings, 2, &[]).unwrap();
        let register = s.job(job).unwrap().register.unwrap();
        let day = NaiveDate::from_ymd_opt(2020, 1, 2);
        let cid = Uuid::new_v4();
        s.record_batch_in_ledger(job, 1, cid, [("customer-a", day), ("customer-b", None)])
            .unwrap();
        s.record_add_in_ledger("customer-c", None, Uuid::new_v4()).unwrap();
        let current = s.ledger(&register).unwrap();
        let got: Vec<(&str, LedgerState, Option<NaiveDate>)> = current
            .iter()
            .map(|e| (e.customer_id.as_str(), e.state, e.start_date))
            .collect();
        assert_eq!(
            got,
            [
                ("customer-a", LedgerState::Active, day),
                ("customer-b", LedgerState::Active, None),
                ("customer-c", LedgerState::Active, None)
            ]
        );
        assert_eq!(current[0].correlation_id, cid);
    }
}
