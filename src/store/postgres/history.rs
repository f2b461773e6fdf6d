//! The history on PostgreSQL: an append-only table of attempts and operator actions. Lines are
//! written in the transaction of the change they record ([`Line::write`]); here they are read
//! back (a customer's through `history_customer`, everyone's by time through `history_at`) and
//! purged after `sync.history_retention_days`, apart from the outbox's own purge.

use super::db::{Fault, PgBackend, Tx};
use crate::store::backend::History;
use crate::store::error::StoreError;
use crate::store::types::{HistoryKind, HistoryRecord, Operation};
use chrono::{DateTime, Utc};
use postgres::types::ToSql;

/// A stored value kfr does not know: the database was written by something else, or damaged.
pub(super) fn bad_value(column: &str, value: &str) -> Fault {
    Fault::Store(StoreError::Other(format!("unexpected {column} value {value:?}")))
}

pub(super) fn parse_op(s: &str) -> Result<Operation, Fault> {
    match s {
        "add" => Ok(Operation::Add),
        "remove" => Ok(Operation::Remove),
        other => Err(bad_value("op", other)),
    }
}

pub(super) use super::rows::Line;

fn history_row(r: &postgres::Row) -> Result<HistoryRecord, Fault> {
    let kind: String = r.get(7);
    let status: Option<i32> = r.get(9);
    Ok(HistoryRecord {
        at: r.get(0),
        register: r.get(1),
        customer_id: r.get(2),
        seq: r.get(3),
        event_id: r.get(4),
        op: r.get::<_, Option<String>>(5).as_deref().map(parse_op).transpose()?,
        correlation_id: r.get(6),
        kind: match kind.as_str() {
            "attempt" => HistoryKind::Attempt,
            "operator" => HistoryKind::Operator,
            other => return Err(bad_value("history.kind", other)),
        },
        outcome: r.get(8),
        status: status
            .map(|s| u16::try_from(s).map_err(|_| bad_value("history.status", &s.to_string())))
            .transpose()?,
        code: r.get(10),
        detail: r.get(11),
        actor: r.get(12),
    })
}

impl History for PgBackend {
    fn history(
        &mut self,
        customer: Option<&str>,
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
    ) -> Result<Vec<HistoryRecord>, StoreError> {
        // Only the conditions asked for, so the planner sees plain comparisons: a customer's
        // lines through `history_customer`, every customer's by time through `history_at` (the
        // table holds years of attempts).
        let mut conditions = vec![];
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![];
        if let Some(c) = &customer {
            params.push(c);
            conditions.push(format!("customer_id = ${}", params.len()));
        }
        if let Some(f) = &from {
            params.push(f);
            conditions.push(format!("at >= ${}", params.len()));
        }
        if let Some(t) = &to {
            params.push(t);
            conditions.push(format!("at < ${}", params.len()));
        }
        let filter = if conditions.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conditions.join(" AND "))
        };
        let sql = format!(
            "SELECT at, register, customer_id, seq, event_id, op, correlation_id, kind, outcome, status, code,
                    detail, actor
             FROM history {filter}
             ORDER BY at, id"
        );
        self.tx(Tx::Read, |tx| {
            tx.query(&sql, &params)?.iter().map(history_row).collect()
        })
    }

    fn purge_history(&mut self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        self.tx(Tx::Write, |tx| {
            Ok(tx.execute("DELETE FROM history WHERE at < $1", &[&before])?)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance::t;
    use crate::store::postgres::tests::store;

    fn line<'a>(at: i64, customer: &'a str, outcome: &'a str, kind: HistoryKind) -> Line<'a> {
        Line {
            at: t(at),
            register: "r",
            customer_id: customer,
            seq: Some(at),
            event_id: Some("e"),
            op: Some(Operation::Remove),
            correlation_id: Some(uuid::Uuid::nil()),
            kind,
            outcome,
            status: Some(404),
            code: Some("KFR-008"),
            detail: Some("why"),
            actor: Some("sync:x"),
        }
    }

    #[test]
    fn history_reads_back_by_customer_and_time_and_purges_on_postgres() {
        let (_db, mut s) = store();
        s.tx(Tx::Write, |tx| {
            for (at, c, outcome, kind) in [
                (3, "A", "delivered:not_found", HistoryKind::Attempt),
                (1, "A", "retry_later", HistoryKind::Attempt),
                (2, "B", "dlq_drop", HistoryKind::Operator),
                (3, "B", "cancelled", HistoryKind::Operator),
            ] {
                line(at, c, outcome, kind).write(tx)?;
            }
            Ok(())
        })
        .unwrap();
        let a = s.history(Some("A"), None, None).unwrap();
        assert_eq!(
            a.iter().map(|l| (l.at, l.outcome.as_str())).collect::<Vec<_>>(),
            [(t(1), "retry_later"), (t(3), "delivered:not_found")],
            "oldest first"
        );
        assert_eq!(
            a[0],
            HistoryRecord {
                at: t(1),
                register: "r".into(),
                customer_id: "A".into(),
                seq: Some(1),
                event_id: Some("e".into()),
                op: Some(Operation::Remove),
                correlation_id: Some(uuid::Uuid::nil()),
                kind: HistoryKind::Attempt,
                outcome: "retry_later".into(),
                status: Some(404),
                code: Some("KFR-008".into()),
                detail: Some("why".into()),
                actor: Some("sync:x".into()),
            }
        );
        let between: Vec<String> = s
            .history(None, Some(t(2)), Some(t(3)))
            .unwrap()
            .into_iter()
            .map(|l| l.outcome)
            .collect();
        assert_eq!(between, ["dlq_drop"], "from inclusive, to exclusive");
        assert_eq!(s.history(Some("B"), Some(t(3)), None).unwrap().len(), 1);
        assert_eq!(s.history(None, None, None).unwrap().len(), 4);
        assert_eq!(s.purge_history(t(3)).unwrap(), 2);
        assert_eq!(s.history(None, None, None).unwrap().len(), 2);
    }
}
