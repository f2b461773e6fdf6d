//! The ledger on SQLite: what this tool put into KFR.
//!
//! Two tables. `ledger` holds a load's registrations: one row per entry of an accepted batch
//! (identifier, start date, CorrelationID), replaced as a whole when a resumed batch is accepted
//! again, so a batch never appears twice; whether it is also confirmed stored is the batch's
//! status (`jobs`). `ledger_current` holds one row per register and customer: what KFR holds now
//! as far as this tool knows (active with its start date, or ended). The outbox changes it in
//! the same transaction as each outcome (docs/specs/outbox.md); a batch changes it here, in the
//! transaction of its rows.

use super::db::{SqliteBackend, Tx};
use super::rows::{bad_value, parse_ts, parse_uuid, set_ledger};
use crate::store::backend::Ledger;
use crate::store::error::StoreError;
use crate::store::types::{LedgerEntry, LedgerState};
use chrono::{DateTime, NaiveDate, Utc};
use rusqlite::params;
use uuid::Uuid;

impl SqliteBackend {
    /// The current ledger of `register` in customer order: all of it, or `limit` rows after the
    /// customer `after` (a range of the primary key, whatever the ledger's size).
    fn ledger_rows(
        &mut self,
        register: &str,
        after: Option<&str>,
        limit: Option<usize>,
    ) -> Result<Vec<LedgerEntry>, StoreError> {
        self.tx(Tx::Read, |tx| {
            let mut stmt = tx.prepare_cached(
                "SELECT customer_id, state, start_date, since, correlation_id FROM ledger_current
                 WHERE register = ?1 AND customer_id > ?2 ORDER BY customer_id LIMIT ?3",
            )?;
            let limit = limit.map_or(-1, |n| n as i64);
            let rows = stmt.query_map(rusqlite::params![register, after.unwrap_or(""), limit], |r| {
                let state: String = r.get(1)?;
                let start: Option<String> = r.get(2)?;
                Ok(LedgerEntry {
                    customer_id: r.get(0)?,
                    state: match state.as_str() {
                        "active" => LedgerState::Active,
                        "ended" => LedgerState::Ended,
                        other => return Err(bad_value("ledger_current.state", other)),
                    },
                    start_date: start
                        .map(|d| {
                            d.parse::<NaiveDate>()
                                .map_err(|_| bad_value("ledger_current.start_date", &d))
                        })
                        .transpose()?,
                    since: parse_ts(&r.get::<_, String>(3)?)?,
                    correlation_id: parse_uuid(&r.get::<_, String>(4)?)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }
}

impl Ledger for SqliteBackend {
    fn unfinished_customers(&mut self, register: &str) -> Result<std::collections::HashSet<String>, StoreError> {
        self.tx(Tx::Read, |tx| {
            // Every customer with an unfinished event has exactly one head row.
            let mut stmt = tx.prepare("SELECT customer_id FROM outbox WHERE head = 1 AND register = ?1")?;
            let out = stmt
                .query_map([register], |r| r.get::<_, String>(0))?
                .collect::<Result<_, _>>()?;
            Ok(out)
        })
    }

    fn ledger(&mut self, register: &str) -> Result<Vec<LedgerEntry>, StoreError> {
        self.ledger_rows(register, None, None)
    }

    fn ledger_page(
        &mut self,
        register: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<LedgerEntry>, StoreError> {
        self.ledger_rows(register, Some(after.unwrap_or("")), Some(limit))
    }

    fn record_batch(
        &mut self,
        job: i64,
        seq: u32,
        correlation_id: Uuid,
        entries: &[(String, Option<NaiveDate>)],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let at = crate::store::time_text(now);
        let cid = correlation_id.to_string();
        self.kept_tx(|tx| {
            let register: Option<String> =
                tx.query_row("SELECT register FROM load_jobs WHERE id = ?1", [job], |r| r.get(0))?;
            let register = register.unwrap_or_default();
            tx.execute(
                "DELETE FROM ledger WHERE job_id = ?1 AND batch_seq = ?2",
                params![job, seq],
            )?;
            let mut stmt = tx.prepare_cached(
                "INSERT INTO ledger (customer_id, start_date, how, at, correlation_id, job_id, batch_seq)
                 VALUES (?1, ?2, 'batch', ?3, ?4, ?5, ?6)",
            )?;
            for (id, start) in entries {
                stmt.execute(params![id, start.map(|d| d.to_string()), at, cid, job, seq])?;
                set_ledger(tx, &register, id, LedgerState::Active, *start, now, correlation_id)?;
            }
            Ok(())
        })
    }

    fn ledger_count(&mut self, batch: Option<(i64, u32)>) -> Result<u64, StoreError> {
        self.tx(Tx::Read, |tx| {
            Ok(match batch {
                None => tx.query_row("SELECT COUNT(*) FROM ledger", [], |r| r.get(0))?,
                Some((job, seq)) => tx.query_row(
                    "SELECT COUNT(*) FROM ledger WHERE job_id = ?1 AND batch_seq = ?2",
                    params![job, seq],
                    |r| r.get(0),
                )?,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::backend::Jobs as _;
    use crate::store::conformance::t;
    use crate::store::types::NewJob;

    fn job(s: &mut SqliteBackend, settings: &str) -> i64 {
        let job = NewJob {
            input_path: "f".into(),
            content_hash: "h".into(),
            settings: settings.into(),
            entries: 2,
            batches: vec![],
        };
        s.create_job(&job, t(0)).unwrap()
    }

    #[test]
    fn ledger_rows_of_a_batch_are_replaced_not_duplicated_and_keep_the_current_ledger() {
        let d = tempfile::tempdir().unwrap();
        let mut s = SqliteBackend::open(&d.path().join("s.db")).unwrap();
        let settings = r#"{"environment":"test","kfr_base_url":"https://kfr.example/api","org_number":"923609016"}"#;
        let job = job(&mut s, settings);
        let register = s.job(job).unwrap().unwrap().register.unwrap();
        let day = NaiveDate::from_ymd_opt(2020, 1, 2);
        let cid = Uuid::new_v4();
        let entries = vec![("customer-a".to_string(), day), ("customer-b".to_string(), None)];
        for _ in 0..2 {
            s.record_batch(job, 1, cid, &entries, t(1)).unwrap();
        }
        assert_eq!(s.ledger_count(Some((job, 1))).unwrap(), 2);
        assert_eq!(s.ledger_count(None).unwrap(), 2);
        let current = s.ledger(&register).unwrap();
        let got: Vec<(&str, LedgerState, Option<NaiveDate>)> = current
            .iter()
            .map(|e| (e.customer_id.as_str(), e.state, e.start_date))
            .collect();
        assert_eq!(
            got,
            [
                ("customer-a", LedgerState::Active, day),
                ("customer-b", LedgerState::Active, None)
            ]
        );
        assert_eq!(current[0].correlation_id, cid);
    }
}
