//! The ledger on PostgreSQL: what this tool put into KFR, in the SQLite backend's two tables.
//! `ledger` holds a load's registrations (one row per entry of an accepted batch, replaced as a
//! whole when a resumed batch is accepted again); `ledger_current` one row per register and
//! customer, what KFR holds now as far as this tool knows, changed by the outbox in the
//! transaction of each outcome and here in the transaction of a batch's rows.
//!
//! `ledger_current.customer_id` is collated "C" (migrations): byte order, as on SQLite, so a
//! walk in pages ([`Ledger::ledger_page`]) is a range of the primary key whatever the
//! database's locale.

use super::db::{Fault, PgBackend, Tx};
use super::history::bad_value;
use crate::store::backend::Ledger;
use crate::store::error::StoreError;
use crate::store::types::{LedgerEntry, LedgerState};
use chrono::{DateTime, NaiveDate, Utc};
use std::collections::HashSet;
use uuid::Uuid;

impl PgBackend {
    /// The current ledger of `register` in customer order: all of it (`limit` `None`), or
    /// `limit` rows after the customer `after`.
    fn ledger_rows(
        &mut self,
        register: &str,
        after: &str,
        limit: Option<usize>,
    ) -> Result<Vec<LedgerEntry>, StoreError> {
        // LIMIT NULL is no limit.
        let limit = limit.map(|n| i64::try_from(n).unwrap_or(i64::MAX));
        self.tx(Tx::Read, |tx| {
            tx.query(
                "SELECT customer_id, state, start_date, since, correlation_id FROM ledger_current
                 WHERE register = $1 AND customer_id > $2 ORDER BY customer_id LIMIT $3",
                &[&register, &after, &limit],
            )?
            .iter()
            .map(|r| {
                Ok(LedgerEntry {
                    customer_id: r.get(0),
                    state: match r.get::<_, &str>(1) {
                        "active" => LedgerState::Active,
                        "ended" => LedgerState::Ended,
                        other => return Err(bad_value("ledger_current.state", other)),
                    },
                    start_date: r.get(2),
                    since: r.get(3),
                    correlation_id: r.get(4),
                })
            })
            .collect::<Result<_, Fault>>()
        })
    }
}

impl Ledger for PgBackend {
    fn ledger(&mut self, register: &str) -> Result<Vec<LedgerEntry>, StoreError> {
        self.ledger_rows(register, "", None)
    }

    fn ledger_page(
        &mut self,
        register: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<LedgerEntry>, StoreError> {
        self.ledger_rows(register, after.unwrap_or(""), Some(limit))
    }

    fn unfinished_customers(&mut self, register: &str) -> Result<HashSet<String>, StoreError> {
        self.tx(Tx::Read, |tx| {
            // Every customer with an unfinished event has exactly one head row (`outbox_heads`).
            Ok(tx
                .query(
                    "SELECT customer_id FROM outbox WHERE head AND register = $1",
                    &[&register],
                )?
                .iter()
                .map(|r| r.get(0))
                .collect())
        })
    }

    fn record_batch(
        &mut self,
        job: i64,
        seq: u32,
        correlation_id: Uuid,
        entries: &[(String, Option<NaiveDate>)],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let seq = i32::try_from(seq).map_err(|_| StoreError::job(job, format_args!("has no batch {seq}")))?;
        let ids: Vec<&str> = entries.iter().map(|(id, _)| id.as_str()).collect();
        let starts: Vec<Option<NaiveDate>> = entries.iter().map(|(_, d)| *d).collect();
        self.tx(Tx::Write, |tx| {
            let Some(row) = tx.query_opt("SELECT register FROM load_jobs WHERE id = $1", &[&job])? else {
                return Err(Fault::Store(StoreError::job(job, "does not exist")));
            };
            let register: String = row.get::<_, Option<String>>(0).unwrap_or_default();
            tx.execute("DELETE FROM ledger WHERE job_id = $1 AND batch_seq = $2", &[&job, &seq])?;
            // A batch's rows in two statements whatever its size (a batch holds thousands).
            tx.execute(
                "INSERT INTO ledger (customer_id, start_date, how, at, correlation_id, job_id, batch_seq)
                 SELECT c, d, 'batch', $3, $4, $5, $6 FROM unnest($1::text[], $2::date[]) WITH ORDINALITY AS u(c, d, n)
                 ORDER BY n",
                &[&ids, &starts, &now, &correlation_id, &job, &seq],
            )?;
            // A customer twice in one batch: its last entry counts, as one upsert per entry
            // would leave it (one statement may not change a row twice).
            tx.execute(
                "INSERT INTO ledger_current (register, customer_id, state, start_date, since, correlation_id)
                 SELECT DISTINCT ON (c) $3, c, 'active', d, $4, $5
                 FROM unnest($1::text[], $2::date[]) WITH ORDINALITY AS u(c, d, n)
                 ORDER BY c, n DESC
                 ON CONFLICT (register, customer_id) DO UPDATE SET
                     state = excluded.state, start_date = excluded.start_date, since = excluded.since,
                     correlation_id = excluded.correlation_id",
                &[&ids, &starts, &register, &now, &correlation_id],
            )?;
            Ok(())
        })
    }

    fn ledger_count(&mut self, batch: Option<(i64, u32)>) -> Result<u64, StoreError> {
        self.tx(Tx::Read, |tx| {
            let n: i64 = match batch {
                None => tx.query_one("SELECT count(*) FROM ledger", &[])?.get(0),
                Some((job, seq)) => tx
                    .query_one(
                        "SELECT count(*) FROM ledger WHERE job_id = $1 AND batch_seq = $2",
                        &[&job, &(seq as i32)],
                    )?
                    .get(0),
            };
            Ok(n as u64)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::backend::Jobs as _;
    use crate::store::conformance::t;
    use crate::store::postgres::operations::tests::raw_event;
    use crate::store::postgres::tests::store;
    use crate::store::types::{NewBatch, NewJob};

    fn job(s: &mut PgBackend) -> (i64, String) {
        let settings = r#"{"environment":"test","kfr_base_url":"https://kfr.example/api","org_number":"923609016"}"#;
        let id = s
            .create_job(
                &NewJob {
                    input_path: "c.csv".into(),
                    content_hash: "abc".into(),
                    settings: settings.into(),
                    entries: 3,
                    batches: vec![NewBatch {
                        first_entry: 0,
                        entry_count: 3,
                        bytes: 10,
                        correlation_id: Uuid::new_v4(),
                    }],
                },
                t(0),
            )
            .unwrap();
        let register = s.job(id).unwrap().unwrap().register.unwrap();
        (id, register)
    }

    /// A batch recorded again (a resumed load) replaces its rows; a customer twice in one batch
    /// counts once, with its last entry; the current ledger is in byte order whatever the
    /// database's locale, and walks in pages.
    #[test]
    fn a_batch_replaces_its_rows_and_the_ledger_is_in_byte_order_on_postgres() {
        let (_db, mut s) = store();
        let (job, register) = job(&mut s);
        let day = NaiveDate::from_ymd_opt(2029, 5, 1);
        let cid = Uuid::new_v4();
        let entries = vec![
            ("b-customer".to_string(), None),
            ("B-customer".to_string(), day),
            ("a-customer".to_string(), None),
            ("a-customer".to_string(), day),
        ];
        for _ in 0..2 {
            s.record_batch(job, 1, cid, &entries, t(1)).unwrap();
        }
        assert_eq!(s.ledger_count(Some((job, 1))).unwrap(), 4);
        assert_eq!(s.ledger_count(Some((job, 2))).unwrap(), 0);
        assert_eq!(s.ledger_count(None).unwrap(), 4);
        let current = s.ledger(&register).unwrap();
        let got: Vec<(&str, LedgerState, Option<NaiveDate>)> = current
            .iter()
            .map(|e| (e.customer_id.as_str(), e.state, e.start_date))
            .collect();
        assert_eq!(
            got,
            [
                ("B-customer", LedgerState::Active, day),
                ("a-customer", LedgerState::Active, day),
                ("b-customer", LedgerState::Active, None)
            ],
            "byte order (upper case first), the last entry of a customer counts"
        );
        assert!(current.iter().all(|e| e.correlation_id == cid && e.since == t(1)));
        assert!(s.ledger("other").unwrap().is_empty());
        let page = s.ledger_page(&register, Some("B-customer"), 1).unwrap();
        assert_eq!(
            page.iter().map(|e| e.customer_id.as_str()).collect::<Vec<_>>(),
            ["a-customer"]
        );
        assert_eq!(s.ledger_page(&register, None, 10).unwrap().len(), 3);
        assert!(s.ledger_page(&register, Some("b-customer"), 10).unwrap().is_empty());
        let err = s.record_batch(job + 1, 1, cid, &entries, t(1)).unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
    }

    #[test]
    fn unfinished_customers_are_the_heads_of_the_register_on_postgres() {
        let (_db, mut s) = store();
        raw_event(&mut s, "r1", "a1", "A", "add", "http", "pending", true);
        raw_event(&mut s, "r1", "a2", "A", "add", "http", "pending", false);
        raw_event(&mut s, "r1", "b1", "B", "add", "http", "dead_lettered", true);
        raw_event(&mut s, "r2", "c1", "C", "add", "http", "pending", true);
        let mut got: Vec<String> = s.unfinished_customers("r1").unwrap().into_iter().collect();
        got.sort();
        assert_eq!(got, ["A", "B"]);
    }
}
