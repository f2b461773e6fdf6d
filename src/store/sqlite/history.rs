//! The history on SQLite: an append-only table of attempts and operator actions. Lines are
//! written by the outbox and jobs code in the transaction of the change they record
//! ([`super::rows::Line`]); here they are read back and purged after
//! `sync.history_retention_days`, apart from the outbox's own purge.

use super::db::{SqliteBackend, Tx};
use super::rows::{Fault, bad_value, parse_op, parse_ts, ts};
use crate::store::backend::History;
use crate::store::error::StoreError;
use crate::store::types::{HistoryKind, HistoryRecord};
use chrono::{DateTime, Utc};
use uuid::Uuid;

impl History for SqliteBackend {
    fn history(
        &mut self,
        customer: Option<&str>,
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
    ) -> Result<Vec<HistoryRecord>, StoreError> {
        // A customer's lines through `history_customer`, every customer's by time through
        // `history_at`: the table holds years of attempts.
        let by = if customer.is_some() {
            "customer_id = ?1"
        } else {
            "?1 IS NULL"
        };
        let sql = format!(
            "SELECT at, register, customer_id, seq, event_id, op, correlation_id, kind, outcome, status, code,
                    detail, actor
             FROM history
             WHERE {by} AND at >= COALESCE(?2, '') AND at < COALESCE(?3, 'z')
             ORDER BY at, id"
        );
        self.tx(Tx::Read, |tx| {
            let mut stmt = tx.prepare(&sql)?;
            let rows = stmt.query_map(rusqlite::params![customer, from.map(ts), to.map(ts)], |r| {
                let kind: String = r.get(7)?;
                let cid: Option<String> = r.get(6)?;
                Ok(HistoryRecord {
                    at: parse_ts(&r.get::<_, String>(0)?)?,
                    register: r.get(1)?,
                    customer_id: r.get(2)?,
                    seq: r.get(3)?,
                    event_id: r.get(4)?,
                    op: r.get::<_, Option<String>>(5)?.as_deref().map(parse_op).transpose()?,
                    correlation_id: cid
                        .as_deref()
                        .map(|c| Uuid::parse_str(c).map_err(|_| bad_value("history.correlation_id", c)))
                        .transpose()?,
                    kind: match kind.as_str() {
                        "attempt" => HistoryKind::Attempt,
                        "operator" => HistoryKind::Operator,
                        other => return Err(bad_value("history.kind", other)),
                    },
                    outcome: r.get(8)?,
                    status: r.get(9)?,
                    code: r.get(10)?,
                    detail: r.get(11)?,
                    actor: r.get(12)?,
                })
            })?;
            rows.collect::<Result<Vec<_>, _>>().map_err(Fault::from)
        })
    }

    fn purge_history(&mut self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        self.tx(Tx::Write, |tx| {
            Ok(tx.execute("DELETE FROM history WHERE at < ?1", [ts(before)])? as u64)
        })
    }
}
