//! [`Operations`] on PostgreSQL: an operator's cancel of pending events, the flood guard's count
//! (from the index `outbox_unfinished`), the agents' heartbeats, the last delivery (from the
//! partial index `history_delivered`), and the backup, which this backend leaves to the bank's
//! PostgreSQL tooling (see [`PgBackend::backup_to`]).
//!
//! Also dropping an unsent event, which `jobs` shares (a held operation dropped with its load);
//! the rows it reads and the per-customer lock and head moving on it takes are `rows`' (module
//! doc there), the same statements the outbox's own transitions use.

use super::db::{Fault, PgBackend, PgTx, Tx, wrong};
use super::history::{Line, bad_value};
use super::rows::{event_columns, event_row, heads_finished, lock_customers};
use crate::store::backend::{Backend as _, Operations};
use crate::store::error::StoreError;
use crate::store::types::*;
use chrono::{DateTime, Utc};
use std::path::Path;

/// Heartbeats older than this before a new one of the register are deleted: agents that stopped
/// long ago are no longer worth showing.
const HEARTBEAT_KEPT_DAYS: i64 = 7;

/// Finishes event `seq` as dropped (never sent; the ledger is untouched) if it is not finished
/// and not being sent (in flight, accepted): one conditional statement, which also ends its
/// place at the head (the value before it is returned). Moves the customer's queue on when it
/// was the head. `false`: the event was not in a state to drop.
pub(super) fn drop_unsent(
    tx: &mut PgTx<'_>,
    ev: &OutboxEvent,
    now: DateTime<Utc>,
    last_error: Option<&str>,
) -> Result<bool, Fault> {
    let row = tx.query_opt(
        "WITH prev AS MATERIALIZED (
             SELECT seq, head FROM outbox
             WHERE seq = $3 AND finished_at IS NULL AND state IN ('pending', 'dead_lettered') FOR UPDATE)
         UPDATE outbox o SET state = 'dropped', finished_at = $1, claimer = NULL, next_attempt_at = NULL,
                last_error = COALESCE($2, o.last_error), head = NULL
         FROM prev WHERE o.seq = prev.seq
         RETURNING prev.head IS NOT NULL",
        &[&now, &last_error, &ev.seq],
    )?;
    let Some(row) = row else { return Ok(false) };
    if row.get::<_, bool>(0) {
        heads_finished(tx, &[(ev.seq, ev.register.as_str(), ev.customer_id.as_str())])?;
    }
    Ok(true)
}

/// The unfinished events of one customer, oldest first, locked for this transaction (the
/// customer's queue lock taken first, as every enqueue takes it).
fn customer_events(tx: &mut PgTx<'_>, register: &str, customer: &str) -> Result<Vec<OutboxEvent>, Fault> {
    lock_customers(tx, &[(register, customer)])?;
    let sql = format!(
        "SELECT {} FROM outbox
         WHERE register = $1 AND customer_id = $2 AND finished_at IS NULL ORDER BY seq FOR UPDATE",
        event_columns("")
    );
    tx.query(&sql, &[&register, &customer])?.iter().map(event_row).collect()
}

/// One event by seq, locked for this transaction (its customer's queue lock taken first).
fn locked_event(tx: &mut PgTx<'_>, seq: Seq) -> Result<OutboxEvent, Fault> {
    let Some(row) = tx.query_opt("SELECT register, customer_id FROM outbox WHERE seq = $1", &[&seq])? else {
        return Err(wrong(seq, "does not exist"));
    };
    let (register, customer): (String, String) = (row.get(0), row.get(1));
    lock_customers(tx, &[(register, customer)])?;
    let sql = format!("SELECT {} FROM outbox WHERE seq = $1 FOR UPDATE", event_columns(""));
    match tx.query_opt(&sql, &[&seq])? {
        Some(row) => event_row(&row),
        // Purged in between (only finished events are): as if it never was.
        None => Err(wrong(seq, "does not exist")),
    }
}

impl Operations for PgBackend {
    fn cancel(
        &mut self,
        which: &ToCancel,
        action: &OperatorAction,
        now: DateTime<Utc>,
    ) -> Result<Cancelled, StoreError> {
        self.tx(Tx::Write, |tx| {
            // Candidates are read under the customer's lock and locked themselves, so a claim
            // (which skips locked rows) cannot take one between the decision and the change.
            let candidates: Vec<OutboxEvent> = match which {
                ToCancel::Seq(seq) => vec![locked_event(tx, *seq)?],
                ToCancel::EventId(id) => match tx.query_opt("SELECT seq FROM outbox WHERE event_id = $1", &[id])? {
                    Some(row) => vec![locked_event(tx, row.get(0))?],
                    None => {
                        return Err(Fault::Store(StoreError::NotFound(format!(
                            "no event in the outbox has the event id {id}"
                        ))));
                    }
                },
                ToCancel::Customer { register, customer_id } => {
                    let found = customer_events(tx, register, customer_id)?;
                    if found.is_empty() {
                        return Err(Fault::Store(StoreError::NotFound(
                            "the customer has no unfinished event in this register".into(),
                        )));
                    }
                    found
                }
            };
            let (pending, left): (Vec<OutboxEvent>, Vec<OutboxEvent>) =
                candidates.into_iter().partition(|e| e.state == EventState::Pending);
            if pending.is_empty() {
                // One event asked for, or a customer with nothing pending: name the state.
                let first = &left[0];
                return Err(wrong(
                    first.seq,
                    format!("is {} and cannot be cancelled", first.state.as_str()),
                ));
            }
            // One statement, conditional on the states read under the lock, ends them all and
            // their places at the head (returning the value before); a miss would be a bug in
            // the locking, and then nothing of the call is kept. Only a head's end moves its
            // queue on; a cancelled event behind the head is skipped when the head finishes.
            let seqs: Vec<Seq> = pending.iter().map(|e| e.seq).collect();
            let rows = tx.query(
                "WITH prev AS MATERIALIZED (
                     SELECT seq, head FROM outbox WHERE seq = ANY($2) AND state = 'pending' ORDER BY seq FOR UPDATE)
                 UPDATE outbox o SET state = 'dropped', finished_at = $1, next_attempt_at = NULL, head = NULL
                 FROM prev WHERE o.seq = prev.seq
                 RETURNING o.seq, prev.head IS NOT NULL",
                &[&now, &seqs],
            )?;
            if let Some(missed) = seqs.iter().find(|s| !rows.iter().any(|r| r.get::<_, Seq>(0) == **s)) {
                return Err(Fault::Store(StoreError::Conflict(format!(
                    "event {missed} changed while it was being cancelled"
                ))));
            }
            let heads: Vec<(Seq, &str, &str)> = pending
                .iter()
                .filter(|ev| rows.iter().any(|r| r.get::<_, Seq>(0) == ev.seq && r.get::<_, bool>(1)))
                .map(|ev| (ev.seq, ev.register.as_str(), ev.customer_id.as_str()))
                .collect();
            heads_finished(tx, &heads)?;
            let lines: Vec<Line<'_>> = pending
                .iter()
                .map(|ev| Line::operator(ev, action, now, "cancelled"))
                .collect();
            Line::write_all(tx, &lines)?;
            Ok(Cancelled {
                events: pending.clone(),
                left: left.iter().map(|e| (e.seq, e.state)).collect(),
            })
        })
    }

    fn unfinished_count(&mut self, register: &str, customer: &str) -> Result<u64, StoreError> {
        self.tx(Tx::Read, |tx| {
            let n: i64 = tx
                .query_one(
                    "SELECT count(*) FROM outbox WHERE register = $1 AND customer_id = $2 AND finished_at IS NULL",
                    &[&register, &customer],
                )?
                .get(0);
            Ok(n as u64)
        })
    }

    fn record_heartbeat(&mut self, beat: &Heartbeat) -> Result<(), StoreError> {
        let unready = serde_json::to_value(&beat.unready).map_err(|e| StoreError::Other(e.to_string()))?;
        let stale = beat.at - chrono::Duration::days(HEARTBEAT_KEPT_DAYS);
        self.tx(Tx::Write, |tx| {
            tx.execute(
                "INSERT INTO heartbeats (register, holder, role, unready, version, started_at, at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (register, holder) DO UPDATE SET role = excluded.role, unready = excluded.unready,
                     version = excluded.version, started_at = excluded.started_at, at = excluded.at",
                &[
                    &beat.register,
                    &beat.holder,
                    &beat.role.as_str(),
                    &unready,
                    &beat.version,
                    &beat.started_at,
                    &beat.at,
                ],
            )?;
            tx.execute(
                "DELETE FROM heartbeats WHERE register = $1 AND at < $2",
                &[&beat.register, &stale],
            )?;
            Ok(())
        })
    }

    fn heartbeats(&mut self, register: Option<&str>) -> Result<Vec<Heartbeat>, StoreError> {
        self.tx(Tx::Read, |tx| {
            let rows = tx.query(
                "SELECT register, holder, role, unready, version, started_at, at FROM heartbeats
                 WHERE $1::text IS NULL OR register = $1 ORDER BY at DESC, holder",
                &[&register],
            )?;
            rows.iter()
                .map(|r| {
                    let role: &str = r.get(2);
                    let unready: serde_json::Value = r.get(3);
                    Ok(Heartbeat {
                        register: r.get(0),
                        holder: r.get(1),
                        role: match role {
                            "leader" => AgentRole::Leader,
                            "standby" => AgentRole::Standby,
                            "stopped" => AgentRole::Stopped,
                            other => return Err(bad_value("heartbeats.role", other)),
                        },
                        unready: serde_json::from_value(unready.clone())
                            .map_err(|_| bad_value("heartbeats.unready", &unready.to_string()))?,
                        version: r.get(4),
                        started_at: r.get(5),
                        at: r.get(6),
                    })
                })
                .collect()
        })
    }

    fn last_delivery(&mut self, register: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.tx(Tx::Read, |tx| {
            // Matches the partial index `history_delivered` (register, at).
            Ok(tx
                .query_one(
                    "SELECT max(at) FROM history WHERE register = $1 AND outcome LIKE 'delivered%'",
                    &[&register],
                )?
                .get(0))
        })
    }

    fn schema_version(&mut self) -> Result<u32, StoreError> {
        self.version()
    }

    /// Refused: a PostgreSQL store is backed up by the bank's own PostgreSQL tooling (`pg_dump`
    /// of kfr's database, or the cluster's base backups and WAL archive), which the DBAs already
    /// run, restore-test and monitor. A file written by kfr would be a second, untested backup
    /// path holding customers' identifiers outside the database's access control. Nothing is
    /// written at `dest` (docs/operations.md, "Two hosts on PostgreSQL" → "Backup").
    fn backup_to(&mut self, dest: &Path) -> Result<BackupInfo, StoreError> {
        let _ = dest;
        Err(StoreError::Unsupported {
            store: self.describe(),
            what: "be copied to a file by kfr".into(),
            instead: "back up kfr's PostgreSQL database with the bank's own PostgreSQL tooling (pg_dump of the database, or the cluster's base backups with WAL archiving; see \"Two hosts on PostgreSQL\" in docs/operations.md)".into(),
        })
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::store::backend::History as _;
    use crate::store::conformance::{R, R2, t};
    use crate::store::postgres::tests::store;

    /// An outbox row written behind the backend's back (the outbox's own code is tested by the
    /// conformance suite): what these tests need to find in the table.
    #[allow(clippy::too_many_arguments)]
    pub(in crate::store::postgres) fn raw_event(
        s: &mut PgBackend,
        register: &str,
        event_id: &str,
        customer: &str,
        op: &str,
        source: &str,
        state: &str,
        head: bool,
    ) -> Seq {
        s.client
            .query_one(
                "INSERT INTO outbox (register, event_id, op, customer_id, occurred_at, source, received_at,
                                     correlation_id, state, head, claimer)
                 VALUES ($1, $2, $3, $4, $5, $6, $5, gen_random_uuid(), $7, CASE WHEN $8 THEN true END,
                         CASE WHEN $7 = 'in_flight' THEN 'sync:test' END)
                 RETURNING seq",
                &[&register, &event_id, &op, &customer, &t(0), &source, &state, &head],
            )
            .unwrap()
            .get(0)
    }

    fn heads(s: &mut PgBackend) -> Vec<(String, Seq)> {
        s.client
            .query("SELECT event_id, seq FROM outbox WHERE head ORDER BY seq", &[])
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    }

    #[test]
    fn cancel_on_postgres_moves_the_head_on_and_records_who() {
        let (_db, mut s) = store();
        let action = OperatorAction {
            actor: "kari".into(),
            reason: Some("sent twice".into()),
        };
        let a1 = raw_event(&mut s, R, "a1", "A", "add", "http", "pending", true);
        let a2 = raw_event(&mut s, R, "a2", "A", "remove", "http", "pending", false);
        let b1 = raw_event(&mut s, R, "b1", "B", "add", "http", "in_flight", true);
        let b2 = raw_event(&mut s, R, "b2", "B", "remove", "http", "pending", false);
        let b3 = raw_event(&mut s, R, "b3", "B", "add", "http", "pending", false);

        let done = s.cancel(&ToCancel::Seq(a1), &action, t(1)).unwrap();
        assert_eq!(done.events.iter().map(|e| e.seq).collect::<Vec<_>>(), [a1]);
        assert_eq!(
            heads(&mut s),
            [("a2".to_string(), a2), ("b1".to_string(), b1)],
            "a2 is A's head now"
        );
        assert_eq!(s.unfinished_count(R, "A").unwrap(), 1);
        assert_eq!(s.unfinished_count(R2, "A").unwrap(), 0);

        let err = s.cancel(&ToCancel::Seq(b1), &action, t(2)).unwrap_err();
        assert!(
            matches!(&err, StoreError::WrongState { seq, .. } if *seq == b1) && err.to_string().contains("in_flight"),
            "{err}"
        );
        let err = s.cancel(&ToCancel::EventId("b1".into()), &action, t(2)).unwrap_err();
        assert!(err.to_string().contains("in_flight"), "{err}");
        let done = s
            .cancel(
                &ToCancel::Customer {
                    register: R.into(),
                    customer_id: "B".into(),
                },
                &action,
                t(3),
            )
            .unwrap();
        assert_eq!(done.events.iter().map(|e| e.seq).collect::<Vec<_>>(), [b2, b3]);
        assert_eq!(done.left, [(b1, EventState::InFlight)]);
        assert!(
            heads(&mut s).contains(&("b1".into(), b1)),
            "the head in flight stays the head"
        );
        let err = s.cancel(&ToCancel::Seq(b2), &action, t(4)).unwrap_err();
        assert!(err.to_string().contains("dropped"), "{err}");
        assert!(matches!(
            s.cancel(&ToCancel::EventId("nope".into()), &action, t(4)),
            Err(StoreError::NotFound(_))
        ));
        assert!(matches!(
            s.cancel(
                &ToCancel::Customer {
                    register: R.into(),
                    customer_id: "C".into()
                },
                &action,
                t(4)
            ),
            Err(StoreError::NotFound(_))
        ));
        let lines = s.history(Some("B"), None, None).unwrap();
        assert_eq!(lines.len(), 2);
        assert!(lines.iter().all(|l| l.outcome == "cancelled"
            && l.kind == HistoryKind::Operator
            && l.actor.as_deref() == Some("kari")
            && l.detail.as_deref() == Some("sent twice")));
    }

    #[test]
    fn heartbeats_and_last_delivery_on_postgres() {
        let (_db, mut s) = store();
        let beat = |holder: &str, role: AgentRole, at: i64| Heartbeat {
            register: R.into(),
            holder: holder.into(),
            role,
            unready: if role == AgentRole::Standby {
                vec!["standby: sync:x delivers".into()]
            } else {
                vec![]
            },
            version: "0.1.0 (test)".into(),
            started_at: t(0),
            at: t(at),
        };
        s.record_heartbeat(&beat("sync:x", AgentRole::Leader, 1)).unwrap();
        s.record_heartbeat(&beat("sync:y", AgentRole::Standby, 2)).unwrap();
        s.record_heartbeat(&beat("sync:x", AgentRole::Leader, 3)).unwrap();
        assert_eq!(
            s.heartbeats(Some(R)).unwrap(),
            [
                beat("sync:x", AgentRole::Leader, 3),
                beat("sync:y", AgentRole::Standby, 2)
            ]
        );
        assert!(s.heartbeats(Some(R2)).unwrap().is_empty());
        s.record_heartbeat(&beat("sync:z", AgentRole::Stopped, 8 * 86_400))
            .unwrap();
        assert_eq!(
            s.heartbeats(None).unwrap().len(),
            1,
            "a week later the stale ones are gone"
        );

        assert_eq!(s.last_delivery(R).unwrap(), None);
        let ev = OutboxEvent {
            seq: 1,
            register: R.into(),
            event_id: "e".into(),
            op: Operation::Add,
            customer_id: "A".into(),
            start_date: None,
            occurred_at: t(0),
            source: "http".into(),
            received_at: t(0),
            correlation_id: uuid::Uuid::new_v4(),
            state: EventState::Delivered,
            attempts: 1,
            next_attempt_at: None,
            failing_since: None,
            last_error: None,
            batch_correlation_id: None,
            accepted_at: None,
            claimer: Some("sync:x".into()),
            claimed_until: None,
            delivery: Some(Delivery::Added),
        };
        s.tx(Tx::Write, |tx| {
            Line::attempt(&ev, t(5), "delivered:added").write(tx)?;
            Line::attempt(&ev, t(7), "retry_later").write(tx)
        })
        .unwrap();
        assert_eq!(s.last_delivery(R).unwrap(), Some(t(5)), "only delivered lines count");
        assert_eq!(s.last_delivery(R2).unwrap(), None);
        assert_eq!(s.schema_version().unwrap(), PgBackend::current_version());
    }
}
