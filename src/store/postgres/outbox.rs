//! The outbox on PostgreSQL: [`Outbox`] for [`PgBackend`] (docs/specs/outbox.md), the same
//! behaviour as the SQLite backend's over the same table layout (`migrations`).
//!
//! One `outbox` row per event, `seq` its issue order (an identity, never reused). `head` is true
//! on each customer's oldest unfinished event and NULL elsewhere — the unique partial index
//! `outbox_one_head` allows one per (register, customer) — and moves only when a head finishes
//! (delivered, dropped), to the customer's next event. Only a head is ever in flight, accepted
//! or dead-lettered, so every rule about one customer's queue is a rule about its head row.
//!
//! Two hosts write at once, so (module doc of `postgres`):
//! - enqueues and whatever ends a head take the per-customer lock first (`rows`), so an event
//!   stored while its customer's head finishes is never left without a head;
//! - claims take heads with `FOR UPDATE SKIP LOCKED` inside the statement that marks them, so two
//!   claimers never get one event and neither waits for the other;
//! - every transition is one conditional statement (`UPDATE … WHERE state = …`); the ones whose
//!   history line names what the change clears (the claimer) lock the rows and return them as
//!   they were (`rows::transition`). A statement that matched nothing is explained afterwards
//!   (`WrongState` naming the state), which a caller's mistake alone reaches.
//!
//! The deliverer's writes are fenced by its lease epoch (`Tx::Fenced`), as on SQLite. Every
//! outcome writes its history line in the same transaction. Counts come from the index
//! `outbox_state` (no counter rows: a hot counter row would serialise every writer).
//!
//! A call's many customers or ids are looked up one by one, each a subquery over `unnest($n)`
//! the planner cannot turn around, never tested with `= ANY($n)` or joined: statements run
//! prepared, and in a generic plan an array that is not an index condition is searched from its
//! start for every row (the flood guard's count took 2.8 s per 5,000-event chunk at 50,000
//! events in `bench/sync/throughput.sh`), while a join, with the statistics of a table just
//! filled, was planned as a loop over the whole table (7.4 s). The lookups take milliseconds.

use super::db::{Fault, PgBackend, PgTx, Tx, wrong};
use super::rows::*;
use crate::store::backend::Outbox;
use crate::store::error::StoreError;
use crate::store::types::*;
use chrono::{DateTime, Utc};
use postgres::types::ToSql;
use uuid::Uuid;

/// Sources as an SQL list for `IN (…)`. Written out rather than bound, so the planner can read
/// the held operations (`kfr add`, `kfr remove`) through the partial index `outbox_held`; they
/// are kfr's own constants, quoted safely all the same.
fn sources_sql(sources: &[&str]) -> String {
    sources
        .iter()
        .map(|s| format!("'{}'", s.replace('\'', "''")))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `claimed_until` for a claim by `claimer` at `now`.
fn claim_until(claimer: &Claimer, now: DateTime<Utc>) -> DateTime<Utc> {
    now + claimer.ttl
}

/// The states a single's or a batch event's outcome may be recorded from.
const OUT: [EventState; 2] = [EventState::InFlight, EventState::Accepted];

/// What clears an event's claim and batch when it goes back to pending (or is dead-lettered).
const UNCLAIM: &str = "batch_correlation_id = NULL, accepted_at = NULL, claimer = NULL, claim_epoch = NULL, \
                       claimed_until = NULL";

impl Outbox for PgBackend {
    fn enqueue(
        &mut self,
        register: &str,
        events: &[NewEvent],
        max_unfinished: Option<u64>,
        now: DateTime<Utc>,
    ) -> Result<Vec<Enqueued>, StoreError> {
        self.tx(Tx::Write, |tx| {
            let out = enqueue_in(tx, register, events, now)?;
            flood_check(tx, register, events, &out, 0, max_unfinished)?;
            Ok(out)
        })
    }

    fn enqueue_stream(
        &mut self,
        register: &str,
        chunks: &mut dyn Iterator<Item = Chunk>,
        max_unfinished: Option<u64>,
        now: DateTime<Utc>,
    ) -> Result<Option<Streamed>, StoreError> {
        let mut started = false;
        self.tx(Tx::Write, |tx| {
            // The chunks can be read once: a transaction the server aborted is not run again
            // (the caller retries the whole file).
            if std::mem::replace(&mut started, true) {
                return Err(Fault::Store(StoreError::Busy {
                    store: "the PostgreSQL store".into(),
                }));
            }
            let mut done = Streamed::default();
            let mut offset = 0;
            // An abort undoes the stream's inserts and commits nothing else.
            tx.batch_execute("SAVEPOINT kfr_stream")?;
            for chunk in &mut *chunks {
                let events = match chunk {
                    Chunk::Events(events) => events,
                    Chunk::Abort => {
                        tx.batch_execute("ROLLBACK TO SAVEPOINT kfr_stream")?;
                        return Ok(None);
                    }
                };
                let shifted = |f: Fault| match f {
                    Fault::Store(StoreError::EventIdConflict { index, seq }) => {
                        Fault::Store(StoreError::EventIdConflict {
                            index: index + offset,
                            seq,
                        })
                    }
                    other => other,
                };
                let out = enqueue_in(tx, register, &events, now).map_err(shifted)?;
                flood_check(tx, register, &events, &out, offset, max_unfinished)?;
                for (e, o) in events.iter().zip(&out) {
                    match (o, e.op) {
                        (Enqueued::Duplicate { .. }, _) => done.duplicates += 1,
                        (Enqueued::Stored { .. }, Operation::Add) => done.stored_adds += 1,
                        (Enqueued::Stored { .. }, Operation::Remove) => done.stored_removes += 1,
                    }
                }
                offset += events.len();
            }
            Ok(Some(done))
        })
    }

    fn recover(
        &mut self,
        register: &str,
        epoch: i64,
        now: DateTime<Utc>,
        hold: chrono::Duration,
    ) -> Result<Recovered, StoreError> {
        let hold_us = hold
            .num_microseconds()
            .ok_or_else(|| StoreError::Other(format!("a hold of {hold} is too long")))?;
        self.tx(Tx::Fenced, |tx| {
            // Only claims that ran out (a request under them can no longer be on the wire) and
            // that are not this deliverer's own (older epoch, or a claimer with none). A claim
            // without an expiry (NULL) counts as run out at `now`.
            const RAN_OUT: &str = "head AND register = $1 AND state = 'in_flight'
                AND (claimed_until IS NULL OR claimed_until <= $2) AND (claim_epoch IS NULL OR claim_epoch < $3)";
            // Batch events: their upload's fate is unknown, probed before anything resends them.
            let unknown_uploads = tx.execute(
                &format!(
                    "UPDATE outbox SET state = 'accepted', accepted_at = NULL, claimer = NULL, claim_epoch = NULL,
                         claimed_until = NULL
                     WHERE {RAN_OUT} AND batch_correlation_id IS NOT NULL"
                ),
                &[&register, &now, &epoch],
            )?;
            // Singles: a request sent under the claim may be carried out up to `hold` after the
            // claim ended, so the event (and its customer) waits until then.
            let requeued = tx.execute(
                &format!(
                    "UPDATE outbox SET state = 'pending', claimer = NULL, claim_epoch = NULL, claimed_until = NULL,
                         next_attempt_at = COALESCE(claimed_until, $2) + $4::bigint::double precision * interval '1 microsecond'
                     WHERE {RAN_OUT} AND batch_correlation_id IS NULL"
                ),
                &[&register, &now, &epoch, &hold_us],
            )?;
            Ok(Recovered {
                requeued,
                unknown_uploads,
            })
        })
    }

    fn claim_ready(
        &mut self,
        register: &str,
        claimer: &Claimer,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<OutboxEvent>, StoreError> {
        let until = claim_until(claimer, now);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let sql = format!(
            "WITH ready AS MATERIALIZED (
                 SELECT seq FROM outbox
                 WHERE head AND register = $1 AND state = 'pending'
                   AND (next_attempt_at IS NULL OR next_attempt_at <= $2)
                   AND (op = 'add' OR {may_go})
                 ORDER BY seq LIMIT $3
                 FOR UPDATE SKIP LOCKED)
             UPDATE outbox o SET state = 'in_flight', claimer = $4, claim_epoch = $5, claimed_until = $6
             FROM ready WHERE o.seq = ready.seq AND o.head AND o.state = 'pending'
             RETURNING {cols}",
            may_go = removes_may_go(1),
            cols = event_columns("o"),
        );
        self.tx(Tx::Fenced, |tx| {
            let rows = tx.query(&sql, &[&register, &now, &limit, &claimer.name, &claimer.epoch, &until])?;
            events_in_order(&rows)
        })
    }

    fn begin_batch(&mut self, seqs: &[Seq], batch_correlation_id: Uuid) -> Result<(), StoreError> {
        self.tx(Tx::Fenced, |tx| {
            let marked: Vec<Seq> = tx
                .query(
                    "UPDATE outbox SET batch_correlation_id = $1, accepted_at = NULL
                     WHERE seq = ANY($2) AND state = 'in_flight' RETURNING seq",
                    &[&batch_correlation_id, &seqs],
                )?
                .iter()
                .map(|r| r.get(0))
                .collect();
            match seqs.iter().find(|s| !marked.contains(s)) {
                Some(&seq) => Err(unchanged(tx, seq, &[EventState::InFlight], "put in a batch")),
                None => Ok(()),
            }
        })
    }

    fn batch_accepted(&mut self, batch_correlation_id: Uuid, at: DateTime<Utc>) -> Result<(), StoreError> {
        let sql = format!(
            "UPDATE outbox SET attempts = attempts + (accepted_at IS NULL)::integer, state = 'accepted',
                 accepted_at = $1
             WHERE batch_correlation_id = $2 AND state IN ('in_flight', 'accepted')
             RETURNING {}",
            event_columns("")
        );
        self.tx(Tx::Fenced, |tx| {
            // The upload's answer is recorded now: one attempt, unless a probe of an unknown
            // upload is what found it accepted (its attempt was never answered, so it counts now).
            let events = events_in_order(&tx.query(&sql, &[&at, &batch_correlation_id])?)?;
            if events.is_empty() {
                return Err(wrong(
                    0,
                    format!("batch {batch_correlation_id} carries no event in flight"),
                ));
            }
            for ev in &events {
                Line {
                    status: Some(201),
                    ..Line::attempt(ev, at, "batch_accepted")
                }
                .write(tx)?;
            }
            Ok(())
        })
    }

    fn batch_unknown(&mut self, batch_correlation_id: Uuid, at: DateTime<Utc>) -> Result<(), StoreError> {
        let sql = format!(
            "UPDATE outbox SET state = 'accepted', accepted_at = NULL
             WHERE batch_correlation_id = $1 AND state = 'in_flight'
             RETURNING {}",
            event_columns("")
        );
        self.tx(Tx::Fenced, |tx| {
            // No answer: the events stay their customers' heads as `accepted` with no
            // `accepted_at`, so nothing resends them before a probe says KFR does not have them.
            let events = events_in_order(&tx.query(&sql, &[&batch_correlation_id])?)?;
            if events.is_empty() {
                return Err(wrong(
                    0,
                    format!("batch {batch_correlation_id} carries no event in flight"),
                ));
            }
            for ev in &events {
                Line::attempt(ev, at, "batch_unknown").write(tx)?;
            }
            Ok(())
        })
    }

    fn accepted(&mut self, register: &str) -> Result<Vec<OutboxEvent>, StoreError> {
        let sql = format!(
            "SELECT {} FROM outbox WHERE head AND register = $1 AND state = 'accepted' ORDER BY seq",
            event_columns("")
        );
        self.tx(Tx::Read, |tx| events_in_order(&tx.query(&sql, &[&register])?))
    }

    fn settle(&mut self, settlements: &[Settlement]) -> Result<(), StoreError> {
        let sql = format!(
            "UPDATE outbox o SET state = 'delivered', finished_at = s.at, delivery = s.delivery,
                 echoed_correlation_id = s.echoed, attempts = o.attempts + (o.state = 'in_flight')::integer,
                 failing_since = NULL, next_attempt_at = NULL, head = NULL
             FROM unnest($1::bigint[], $2::text[], $3::text[], $4::timestamptz[], $5::text[])
                  AS s (seq, delivery, echoed, at, op)
             WHERE o.seq = ANY($1) AND o.seq = s.seq AND o.state IN ('in_flight', 'accepted') AND o.op = s.op
             RETURNING {}",
            event_columns("o")
        );
        let seqs: Vec<Seq> = settlements.iter().map(|s| s.seq).collect();
        let deliveries: Vec<&str> = settlements.iter().map(|s| delivery_str(s.delivery)).collect();
        let echoed: Vec<Option<&str>> = settlements.iter().map(|s| s.echoed_correlation_id.as_deref()).collect();
        let at: Vec<DateTime<Utc>> = settlements.iter().map(|s| s.at).collect();
        let ops: Vec<&str> = settlements.iter().map(|s| op_of(s.delivery).as_str()).collect();
        self.tx(Tx::Fenced, |tx| {
            if settlements.is_empty() {
                return Ok(());
            }
            // One statement checks every event's state and operation, records the outcomes and
            // ends the heads (the hot path of every delivery); a single's answer is an attempt
            // recorded now, a batch event's was counted when the batch was accepted. Then the
            // queues move on under their locks, and the ledger and history follow.
            let rows = tx.query(&sql, &[&seqs, &deliveries, &echoed, &at, &ops])?;
            let events = rows.iter().map(event_row).collect::<Result<Vec<_>, _>>()?;
            let mut done = Vec::with_capacity(settlements.len());
            for (i, s) in settlements.iter().enumerate() {
                let repeated = seqs[..i].contains(&s.seq);
                match events.iter().find(|e| e.seq == s.seq) {
                    Some(ev) if !repeated => done.push((ev, s)),
                    _ if repeated => return Err(wrong(s.seq, "is settled twice in one call")),
                    _ => return Err(unsettleable(tx, s)),
                }
            }
            let finished: Vec<(Seq, &str, &str)> = done
                .iter()
                .map(|(ev, _)| (ev.seq, ev.register.as_str(), ev.customer_id.as_str()))
                .collect();
            heads_finished(tx, &finished)?;
            let outcomes: Vec<String> = done
                .iter()
                .map(|(_, s)| format!("delivered:{}", delivery_str(s.delivery)))
                .collect();
            let ledger: Vec<LedgerRow<'_>> = done.iter().map(|(ev, s)| ledger_row(ev, s.delivery, s.at)).collect();
            set_ledger(tx, &ledger)?;
            let lines: Vec<Line<'_>> = done
                .iter()
                .zip(&outcomes)
                .map(|((ev, s), outcome)| Line {
                    status: delivery_status(s.delivery),
                    ..Line::attempt(ev, s.at, outcome)
                })
                .collect();
            Line::write_all(tx, &lines)
        })
    }

    fn retry_later(&mut self, seq: Seq, at: DateTime<Utc>, error: &str, now: DateTime<Utc>) -> Result<(), StoreError> {
        self.tx(Tx::Fenced, |tx| {
            let changed = transition(
                tx,
                &[seq],
                &OUT,
                "",
                &format!(
                    "state = 'pending', attempts = o.attempts + 1, next_attempt_at = $3,
                     failing_since = COALESCE(o.failing_since, $4), last_error = $5, {UNCLAIM}"
                ),
                &[&at, &now, &error],
            )?;
            let Some(ev) = changed.first() else {
                return Err(unchanged(tx, seq, &OUT, "retried later"));
            };
            Line {
                detail: Some(error),
                ..Line::attempt(ev, now, "retry_later")
            }
            .write(tx)
        })
    }

    fn release(&mut self, seqs: &[Seq], now: DateTime<Utc>) -> Result<(), StoreError> {
        self.tx(Tx::Fenced, |tx| {
            let changed = transition(tx, seqs, &OUT, "", &format!("state = 'pending', {UNCLAIM}"), &[])?;
            if let Some(&seq) = seqs.iter().find(|s| !changed.iter().any(|e| e.seq == **s)) {
                return Err(unchanged(tx, seq, &OUT, "released"));
            }
            for ev in &changed {
                Line::attempt(ev, now, "released").write(tx)?;
            }
            Ok(())
        })
    }

    fn dead_letter(&mut self, seq: Seq, rejection: &Rejection, at: DateTime<Utc>) -> Result<(), StoreError> {
        let json = serde_json::to_value(rejection).map_err(|e| StoreError::Other(e.to_string()))?;
        self.tx(Tx::Fenced, |tx| match park(tx, seq, "", &[], rejection, &json, at)? {
            true => Ok(()),
            false => Err(unchanged(tx, seq, &OUT, "dead-lettered")),
        })
    }

    fn dead_letters(&mut self, register: Option<&str>) -> Result<Vec<DeadLetter>, StoreError> {
        let filter = if register.is_some() { "AND h.register = $1" } else { "" };
        let sql = format!(
            "SELECT {cols}, h.rejection, h.dead_at,
                    (SELECT count(*) FROM outbox o
                     WHERE o.register = h.register AND o.customer_id = h.customer_id AND o.seq > h.seq
                       AND o.finished_at IS NULL)
             FROM outbox h WHERE h.head AND h.state = 'dead_lettered' {filter} ORDER BY h.seq",
            cols = event_columns("h")
        );
        self.tx(Tx::Read, |tx| {
            let rows = match register {
                Some(r) => tx.query(&sql, &[&r])?,
                None => tx.query(&sql, &[])?,
            };
            let mut out = Vec::with_capacity(rows.len());
            for row in &rows {
                let event = event_row(row)?;
                let rejection: Option<serde_json::Value> = row.try_get(EVENT_WIDTH)?;
                let dead_at: Option<DateTime<Utc>> = row.try_get(EVENT_WIDTH + 1)?;
                let parked_behind: i64 = row.try_get(EVENT_WIDTH + 2)?;
                let rejection = rejection
                    .and_then(|j| serde_json::from_value::<Rejection>(j).ok())
                    .unwrap_or_else(|| Rejection {
                        status: None,
                        code: None,
                        body: String::new(),
                        reason: event.last_error.clone().unwrap_or_default(),
                    });
                out.push(DeadLetter {
                    dead_at: dead_at.unwrap_or(event.received_at),
                    event,
                    rejection,
                    parked_behind: parked_behind.max(0) as u64,
                });
            }
            Ok(out)
        })
    }

    fn retry_dead(
        &mut self,
        which: DeadLetters,
        action: &OperatorAction,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        self.tx(Tx::Write, |tx| {
            let changed = dead(
                tx,
                which,
                "state = 'pending', next_attempt_at = NULL, failing_since = NULL",
                &[],
                "retried from the dead letters",
            )?;
            for ev in &changed {
                Line::operator(ev, action, now, "dlq_retry").write(tx)?;
            }
            Ok(changed.len() as u64)
        })
    }

    fn drop_dead(
        &mut self,
        which: DeadLetters,
        action: &OperatorAction,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        self.tx(Tx::Write, |tx| {
            let set = "state = 'dropped', finished_at = $3, head = NULL";
            let changed = dead(tx, which, set, &[&now], "dropped")?;
            let finished: Vec<(Seq, &str, &str)> = changed
                .iter()
                .map(|ev| (ev.seq, ev.register.as_str(), ev.customer_id.as_str()))
                .collect();
            heads_finished(tx, &finished)?;
            for ev in &changed {
                Line::operator(ev, action, now, "dlq_drop").write(tx)?;
            }
            Ok(changed.len() as u64)
        })
    }

    fn status(&mut self, register: Option<&str>) -> Result<OutboxStatus, StoreError> {
        self.tx(Tx::Read, |tx| status_in(tx, register))
    }

    fn purge(&mut self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        self.tx(Tx::Write, |tx| {
            Ok(tx.execute(
                "DELETE FROM outbox WHERE finished_at < $1 AND state IN ('delivered', 'dropped')",
                &[&before],
            )?)
        })
    }

    fn barrier(&mut self, register: &str) -> Result<Option<i64>, StoreError> {
        self.tx(Tx::Read, |tx| barrier_in(tx, register))
    }

    fn enqueue_and_claim(
        &mut self,
        register: &str,
        event: &NewEvent,
        correlation_id: Uuid,
        claimer: &Claimer,
        now: DateTime<Utc>,
    ) -> Result<OwnEvent, StoreError> {
        self.tx(Tx::Write, |tx| {
            enqueue_and_claim_in(tx, register, event, correlation_id, claimer, now)
        })
    }

    fn finish_claim(
        &mut self,
        seq: Seq,
        claimer: &str,
        end: &ClaimEnd,
        at: DateTime<Utc>,
    ) -> Result<ClaimFinished, StoreError> {
        let json = match end {
            ClaimEnd::DeadLetter(rejection) => {
                Some(serde_json::to_value(rejection).map_err(|e| StoreError::Other(e.to_string()))?)
            }
            _ => None,
        };
        self.tx(Tx::Write, |tx| {
            finish_claim_in(tx, seq, claimer, end, json.as_ref(), at)
        })
    }

    fn claim_head_of(
        &mut self,
        register: &str,
        customer: &str,
        sources: &[&str],
        claimer: &Claimer,
        now: DateTime<Utc>,
    ) -> Result<Option<OutboxEvent>, StoreError> {
        let until = claim_until(claimer, now);
        let sql = format!(
            "UPDATE outbox SET state = 'in_flight', claimer = $4, claim_epoch = $5, claimed_until = $6
             WHERE register = $1 AND customer_id = $2 AND head AND state = 'pending'
               AND (next_attempt_at IS NULL OR next_attempt_at <= $3) AND source = ANY($7)
               AND (op = 'add' OR {may_go})
             RETURNING {cols}",
            may_go = removes_may_go(1),
            cols = event_columns(""),
        );
        self.tx(Tx::Write, |tx| {
            let row = tx.query_opt(
                &sql,
                &[
                    &register,
                    &customer,
                    &now,
                    &claimer.name,
                    &claimer.epoch,
                    &until,
                    &sources,
                ],
            )?;
            row.as_ref().map(event_row).transpose()
        })
    }

    fn claim_next_of(
        &mut self,
        register: &str,
        sources: &[&str],
        claimer: &Claimer,
        now: DateTime<Utc>,
    ) -> Result<Option<OutboxEvent>, StoreError> {
        if sources.is_empty() {
            return Ok(None);
        }
        let until = claim_until(claimer, now);
        let sql = format!(
            "WITH next AS MATERIALIZED (
                 SELECT seq FROM outbox
                 WHERE head AND register = $1 AND state = 'pending' AND source IN ({sources})
                   AND finished_at IS NULL AND (next_attempt_at IS NULL OR next_attempt_at <= $2)
                   AND (op = 'add' OR {may_go})
                 ORDER BY seq LIMIT 1
                 FOR UPDATE SKIP LOCKED)
             UPDATE outbox o SET state = 'in_flight', claimer = $3, claim_epoch = $4, claimed_until = $5
             FROM next WHERE o.seq = next.seq AND o.head AND o.state = 'pending'
             RETURNING {cols}",
            sources = sources_sql(sources),
            may_go = removes_may_go(1),
            cols = event_columns("o"),
        );
        self.tx(Tx::Write, |tx| {
            let row = tx.query_opt(&sql, &[&register, &now, &claimer.name, &claimer.epoch, &until])?;
            row.as_ref().map(event_row).transpose()
        })
    }

    fn events_of(&mut self, register: Option<&str>, customer: Option<&str>) -> Result<Vec<OutboxEvent>, StoreError> {
        // Only the predicates asked for, so a customer's events of a register are read through
        // the index `outbox_customer` rather than the table.
        let mut filters = vec![];
        let mut args: Vec<&str> = vec![];
        if let Some(r) = register {
            args.push(r);
            filters.push(format!("register = ${}", args.len()));
        }
        if let Some(c) = customer {
            args.push(c);
            filters.push(format!("customer_id = ${}", args.len()));
        }
        let filter = if filters.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", filters.join(" AND "))
        };
        let sql = format!("SELECT {} FROM outbox {filter} ORDER BY seq", event_columns(""));
        self.tx(Tx::Read, |tx| {
            let params: Vec<&(dyn ToSql + Sync)> = args.iter().map(|a| a as &(dyn ToSql + Sync)).collect();
            events_in_order(&tx.query(&sql, &params)?)
        })
    }

    fn enqueue_from_cursor(
        &mut self,
        register: &str,
        events: &[NewEvent],
        source: &str,
        cursor: &str,
        max_unfinished: Option<u64>,
        now: DateTime<Utc>,
    ) -> Result<Vec<Enqueued>, StoreError> {
        self.tx(Tx::Write, |tx| {
            let out = enqueue_in(tx, register, events, now)?;
            flood_check(tx, register, events, &out, 0, max_unfinished)?;
            tx.execute(
                "INSERT INTO source_cursors (source, cursor, at) VALUES ($1, $2, $3)
                 ON CONFLICT (source) DO UPDATE SET cursor = excluded.cursor, at = excluded.at",
                &[&source, &cursor, &now],
            )?;
            Ok(out)
        })
    }

    fn source_cursor(&mut self, source: &str) -> Result<Option<String>, StoreError> {
        self.tx(Tx::Read, |tx| {
            Ok(tx
                .query_opt("SELECT cursor FROM source_cursors WHERE source = $1", &[&source])?
                .map(|r| r.get(0)))
        })
    }

    fn unfinished_of(&mut self, register: &str, sources: &[&str]) -> Result<Vec<OutboxEvent>, StoreError> {
        if sources.is_empty() {
            return Ok(vec![]);
        }
        let sql = format!(
            "SELECT {} FROM outbox WHERE register = $1 AND finished_at IS NULL AND source IN ({}) ORDER BY seq",
            event_columns(""),
            sources_sql(sources)
        );
        self.tx(Tx::Read, |tx| events_in_order(&tx.query(&sql, &[&register])?))
    }
}

/// [`Outbox::enqueue`] inside its transaction, in three statements whatever the number of
/// events (the agent's intake group-commits many at once): the customers' locks; the inserts,
/// in the call's order (so a customer's events get growing seqs), skipping known event ids;
/// the head for each customer of the call that has none (its oldest unfinished event: every
/// customer with an unfinished event has one). Known ids are then told apart: the same event
/// (a duplicate) or another one (the call fails whole).
fn enqueue_in(
    tx: &mut PgTx<'_>,
    register: &str,
    events: &[NewEvent],
    now: DateTime<Utc>,
) -> Result<Vec<Enqueued>, Fault> {
    if events.is_empty() {
        return Ok(vec![]);
    }
    let customers: Vec<(&str, &str)> = events.iter().map(|e| (register, e.customer_id.as_str())).collect();
    lock_customers(tx, &customers)?;
    let ids: Vec<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
    let ops: Vec<&str> = events.iter().map(|e| e.op.as_str()).collect();
    let who: Vec<&str> = events.iter().map(|e| e.customer_id.as_str()).collect();
    let starts: Vec<Option<chrono::NaiveDate>> = events.iter().map(|e| e.start_date).collect();
    let occurred: Vec<DateTime<Utc>> = events.iter().map(|e| e.occurred_at).collect();
    let sources: Vec<&str> = events.iter().map(|e| e.source.as_str()).collect();
    let cids: Vec<Uuid> = events.iter().map(|_| Uuid::new_v4()).collect();
    // Each customer's first event of the call: the head if its customer has none (then it has no
    // unfinished event either), found in the insert itself through `outbox_one_head`.
    let mut seen = std::collections::HashSet::with_capacity(events.len());
    let firsts: Vec<bool> = events.iter().map(|e| seen.insert(e.customer_id.as_str())).collect();
    let stored: std::collections::HashMap<String, Seq> = tx
        .query(
            "INSERT INTO outbox (register, event_id, op, customer_id, start_date, occurred_at, source, received_at,
                                 correlation_id, state, head)
             SELECT $1, e.id, e.op, e.customer_id, e.start_date, e.occurred_at, e.source, $2, e.cid, 'pending',
                    CASE WHEN e.first AND NOT EXISTS (
                             SELECT 1 FROM outbox h WHERE h.head AND h.register = $1 AND h.customer_id = e.customer_id)
                         THEN true END
             FROM unnest($3::text[], $4::text[], $5::text[], $6::date[], $7::timestamptz[], $8::text[], $9::uuid[],
                         $10::boolean[])
                  WITH ORDINALITY AS e (id, op, customer_id, start_date, occurred_at, source, cid, first, i)
             ORDER BY e.i
             ON CONFLICT (event_id) DO NOTHING
             RETURNING event_id, seq",
            &[
                &register, &now, &ids, &ops, &who, &starts, &occurred, &sources, &cids, &firsts,
            ],
        )
        .map_err(one_head)?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    // A customer whose first event of the call was a known id (nothing stored) may still have
    // got a later one: that one is the head if the customer has none, looked for the general way.
    let got: std::collections::HashSet<&str> = events
        .iter()
        .filter(|e| stored.contains_key(&e.event_id))
        .map(|e| e.customer_id.as_str())
        .collect();
    let unmarked: Vec<&str> = events
        .iter()
        .zip(&firsts)
        .filter(|(e, first)| **first && !stored.contains_key(&e.event_id) && got.contains(e.customer_id.as_str()))
        .map(|(e, _)| e.customer_id.as_str())
        .collect();
    if !unmarked.is_empty() {
        tx.execute(
            "UPDATE outbox SET head = true WHERE seq IN (
                 SELECT (SELECT min(o.seq) FROM outbox o
                         WHERE o.register = $1 AND o.customer_id = c.id AND o.finished_at IS NULL
                         HAVING bool_or(o.head) IS NOT TRUE)
                 FROM unnest($2::text[]) AS c (id))",
            &[&register, &unmarked],
        )
        .map_err(one_head)?;
    }
    // Ids stored before this call: what they name, to tell a duplicate from a reuse.
    let first = |id: &str| events.iter().position(|e| e.event_id == id);
    let known: Vec<&str> = ids
        .iter()
        .enumerate()
        .filter(|(i, id)| !stored.contains_key(**id) && first(id) == Some(*i))
        .map(|(_, id)| *id)
        .collect();
    let mut before: std::collections::HashMap<String, (Seq, String, String, String, Option<chrono::NaiveDate>)> =
        Default::default();
    if !known.is_empty() {
        for r in tx.query(
            "SELECT o.event_id, o.seq, o.register, o.op, o.customer_id, o.start_date
             FROM unnest($1::text[]) AS k (id),
                  LATERAL (SELECT * FROM outbox WHERE event_id = k.id) AS o",
            &[&known],
        )? {
            before.insert(r.get(0), (r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)));
        }
    }
    let mut out = Vec::with_capacity(events.len());
    for (index, ev) in events.iter().enumerate() {
        let at = first(&ev.event_id).unwrap_or(index);
        if at == index
            && let Some(&seq) = stored.get(&ev.event_id)
        {
            out.push(Enqueued::Stored { seq });
            continue;
        }
        // A known id is a duplicate only if it names the same event; reused for another one,
        // the call fails whole (the transaction rolls back).
        let (seq, same) = match stored.get(&ev.event_id) {
            Some(&seq) => {
                let was = &events[at];
                (
                    seq,
                    was.op == ev.op && was.customer_id == ev.customer_id && was.start_date == ev.start_date,
                )
            }
            None => match before.get(&ev.event_id) {
                Some((seq, reg, op, customer, start)) => (
                    *seq,
                    reg == register && op == ev.op.as_str() && *customer == ev.customer_id && *start == ev.start_date,
                ),
                None => {
                    // Purged between the insert and this look: what holds now is decided afresh.
                    return Err(Fault::Store(StoreError::Conflict(format!(
                        "event {index}: its event id was purged while it was being stored"
                    ))));
                }
            },
        };
        if !same {
            return Err(Fault::Store(StoreError::EventIdConflict { index, seq }));
        }
        out.push(Enqueued::Duplicate { seq });
    }
    Ok(out)
}

/// The flood guard, inside the enqueue's transaction (after its inserts, under its customer
/// locks): an event that gave its customer more than `max` unfinished events fails the call
/// with its index (`offset` added: its place in a stream). The customers' counts come from the
/// `outbox_unfinished` index.
fn flood_check(
    tx: &mut PgTx<'_>,
    register: &str,
    events: &[NewEvent],
    out: &[Enqueued],
    offset: usize,
    max: Option<u64>,
) -> Result<(), Fault> {
    let Some(max) = max else { return Ok(()) };
    let mut mine: std::collections::HashMap<&str, Vec<usize>> = Default::default();
    for (i, (e, o)) in events.iter().zip(out).enumerate() {
        if matches!(o, Enqueued::Stored { .. }) {
            mine.entry(e.customer_id.as_str()).or_default().push(i);
        }
    }
    if mine.is_empty() {
        return Ok(());
    }
    let customers: Vec<&str> = mine.keys().copied().collect();
    let mut first_over: Option<usize> = None;
    for r in tx.query(
        "SELECT id, n FROM (
             SELECT c.id, (SELECT count(*) FROM outbox o
                           WHERE o.register = $1 AND o.customer_id = c.id AND o.finished_at IS NULL) AS n
             FROM unnest($2::text[]) AS c (id)) AS counted
         WHERE n > $3",
        &[&register, &customers, &i64::try_from(max).unwrap_or(i64::MAX)],
    )? {
        let (customer, total): (String, i64) = (r.get(0), r.get(1));
        let Some(stored) = mine.get(customer.as_str()) else {
            continue;
        };
        let total = total as u64;
        if total <= max {
            continue;
        }
        // Those before this call, then this call's in order: the first past `max` is refused.
        let before = total - stored.len() as u64;
        let allowed = max.saturating_sub(before) as usize;
        let index = stored[allowed.min(stored.len() - 1)];
        first_over = Some(first_over.map_or(index, |f: usize| f.min(index)));
    }
    match first_over {
        Some(index) => Err(Fault::Store(StoreError::CustomerFlood {
            index: index + offset,
            max,
        })),
        None => Ok(()),
    }
}

/// Why a settlement matched no event that may be settled: the event is missing, in another
/// state, or of the other operation.
fn unsettleable(tx: &mut PgTx<'_>, s: &Settlement) -> Fault {
    let ev = match event(tx, s.seq) {
        Ok(ev) => ev,
        Err(f) => return f,
    };
    if let Err(f) = require(&ev, &OUT, "settled") {
        return f;
    }
    wrong(
        s.seq,
        format!(
            "is {} and cannot be settled as {}",
            ev.op.as_str(),
            delivery_str(s.delivery)
        ),
    )
}

/// The ledger's row for the customer of `ev`, delivered as `delivery` at `at`.
fn ledger_row(ev: &OutboxEvent, delivery: Delivery, at: DateTime<Utc>) -> LedgerRow<'_> {
    let state = ledger_state(delivery);
    LedgerRow {
        register: &ev.register,
        customer: &ev.customer_id,
        state,
        start_date: match state {
            LedgerState::Active => ev.start_date,
            LedgerState::Ended => None,
        },
        since: at,
        correlation_id: ev.correlation_id,
    }
}

/// What a delivery of `ev` leaves behind besides the event (its queue moved on already): the
/// ledger's row for the customer and the attempt's history line.
fn delivered(tx: &mut PgTx<'_>, ev: &OutboxEvent, delivery: Delivery, at: DateTime<Utc>) -> Result<(), Fault> {
    set_ledger(tx, &[ledger_row(ev, delivery, at)])?;
    let outcome = format!("delivered:{}", delivery_str(delivery));
    Line {
        status: delivery_status(delivery),
        ..Line::attempt(ev, at, &outcome)
    }
    .write(tx)
}

/// Dead-letters `seq` if it is in flight or accepted (and meets `also`, numbered from `$3` with
/// `also_params`), writing its history line; whether it did.
fn park(
    tx: &mut PgTx<'_>,
    seq: Seq,
    also: &str,
    also_params: &[&(dyn ToSql + Sync)],
    rejection: &Rejection,
    json: &serde_json::Value,
    at: DateTime<Utc>,
) -> Result<bool, Fault> {
    let n = 3 + also_params.len();
    let set = format!(
        "state = 'dead_lettered', attempts = o.attempts + 1, rejection = ${}, dead_at = ${}, last_error = ${},
         {UNCLAIM}",
        n,
        n + 1,
        n + 2
    );
    let mut params: Vec<&(dyn ToSql + Sync)> = also_params.to_vec();
    params.push(json);
    params.push(&at);
    params.push(&rejection.reason);
    let changed = transition(tx, &[seq], &OUT, also, &set, &params)?;
    let Some(ev) = changed.first() else {
        return Ok(false);
    };
    Line {
        status: rejection.status,
        code: rejection.code.as_deref(),
        detail: Some(&rejection.reason),
        ..Line::attempt(ev, at, "dead_lettered")
    }
    .write(tx)?;
    Ok(true)
}

/// Applies an operator's `set` (parameters from `$3` on) to the dead letters `which` names;
/// they, as they were, in issue order. One that is not a dead letter is
/// [`StoreError::WrongState`] saying what it is.
fn dead(
    tx: &mut PgTx<'_>,
    which: DeadLetters,
    set: &str,
    params: &[&(dyn ToSql + Sync)],
    doing: &str,
) -> Result<Vec<OutboxEvent>, Fault> {
    const DEAD: [EventState; 1] = [EventState::DeadLettered];
    let seqs: Vec<Seq> = match which {
        DeadLetters::One(seq) => vec![seq],
        DeadLetters::All => tx
            .query(
                "SELECT seq FROM outbox WHERE head AND state = 'dead_lettered' ORDER BY seq",
                &[],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect(),
    };
    // Conditional on each still being a dead letter: one an agent or another operator changed
    // meanwhile is left alone (and, asked for by seq, reported).
    let changed = transition(tx, &seqs, &DEAD, "", set, params)?;
    if let DeadLetters::One(seq) = which
        && changed.is_empty()
    {
        return Err(unchanged(tx, seq, &DEAD, doing));
    }
    Ok(changed)
}

/// [`Outbox::status`] inside its read transaction: counts by state from the index
/// `outbox_state`, the parked customers and what waits behind them, the oldest unfinished
/// event (its customer's head), the barrier.
fn status_in(tx: &mut PgTx<'_>, register: Option<&str>) -> Result<OutboxStatus, Fault> {
    let (filter, h_filter) = match register {
        Some(_) => ("WHERE register = $1", "AND h.register = $1"),
        None => ("", ""),
    };
    let args: Vec<&(dyn ToSql + Sync)> = match &register {
        Some(r) => vec![r],
        None => vec![],
    };
    let mut st = OutboxStatus::default();
    let counts = tx.query(
        &format!("SELECT state, count(*) FROM outbox {filter} GROUP BY state"),
        &args,
    )?;
    for row in &counts {
        let n = row.try_get::<_, i64>(1)?.max(0) as u64;
        match parse_state(row.try_get(0)?)? {
            EventState::Pending => st.pending += n,
            EventState::InFlight => st.in_flight += n,
            EventState::Accepted => st.accepted += n,
            EventState::Delivered => st.delivered += n,
            EventState::DeadLettered => st.dead_lettered += n,
            EventState::Dropped => st.dropped += n,
        }
    }
    // Every dead-lettered event is a head, so it is one parked customer.
    st.parked_customers = st.dead_lettered;
    let parked: i64 = tx
        .query_one(
            &format!(
                "SELECT count(*) FROM outbox h JOIN outbox o
                   ON o.register = h.register AND o.customer_id = h.customer_id AND o.seq > h.seq
                      AND o.finished_at IS NULL
                 WHERE h.head AND h.state = 'dead_lettered' {h_filter}"
            ),
            &args,
        )?
        .try_get(0)?;
    st.parked_events = parked.max(0) as u64;
    // The oldest unfinished event is its customer's head (only unfinished events are heads).
    let head_filter = if register.is_some() { "AND register = $1" } else { "" };
    st.oldest_unfinished = tx
        .query_opt(
            &format!("SELECT received_at FROM outbox WHERE head {head_filter} ORDER BY seq LIMIT 1"),
            &args,
        )?
        .map(|r| r.try_get(0))
        .transpose()?;
    st.barrier = match register {
        Some(r) => barrier_in(tx, r)?,
        None => tx
            .query_opt(
                "SELECT id FROM load_jobs WHERE status = 'running' ORDER BY id LIMIT 1",
                &[],
            )?
            .map(|r| r.get(0)),
    };
    Ok(st)
}

// ---- A caller's own claim (`kfr add`, `kfr remove`) ------------------------------------------

/// [`Outbox::enqueue_and_claim`] inside its transaction: under the customer's lock the look at
/// its queue, the insert and the claim cannot be overtaken by another enqueue of the customer,
/// and no claimer sees the event pending in between (it commits claimed).
fn enqueue_and_claim_in(
    tx: &mut PgTx<'_>,
    register: &str,
    ev: &NewEvent,
    correlation_id: Uuid,
    claimer: &Claimer,
    now: DateTime<Utc>,
) -> Result<OwnEvent, Fault> {
    lock_customers(tx, &[(register, ev.customer_id.as_str())])?;
    let known = tx.query_opt("SELECT seq FROM outbox WHERE event_id = $1", &[&ev.event_id])?;
    if let Some(known) = known {
        return Ok(OwnEvent::Duplicate { seq: known.get(0) });
    }
    let ahead: i64 = tx
        .query_one(
            "SELECT count(*) FROM outbox WHERE register = $1 AND customer_id = $2 AND finished_at IS NULL",
            &[&register, &ev.customer_id],
        )?
        .get(0);
    let ahead = ahead.max(0) as u64;
    let barrier = barrier_in(tx, register)?;
    let Some(seq) = try_insert_event(tx, register, ev, correlation_id, now)? else {
        // Stored by someone else since the look above: as a duplicate.
        let seq: Seq = tx
            .query_one("SELECT seq FROM outbox WHERE event_id = $1", &[&ev.event_id])?
            .get(0);
        return Ok(OwnEvent::Duplicate { seq });
    };
    // The barrier holds a remove at a head (D-3 step 4); an add with nothing ahead goes in
    // parallel with the load (step 3), as `claim_ready` decides for the dispatcher.
    if ahead > 0 || (ev.op == Operation::Remove && barrier.is_some()) {
        return Ok(OwnEvent::Queued {
            seq,
            correlation_id,
            ahead,
            barrier,
        });
    }
    let sql = format!(
        "UPDATE outbox SET state = 'in_flight', claimer = $1, claim_epoch = $2, claimed_until = $3
         WHERE seq = $4 AND head AND state = 'pending'
         RETURNING {}",
        event_columns("")
    );
    let until = claim_until(claimer, now);
    match tx.query_opt(&sql, &[&claimer.name, &claimer.epoch, &until, &seq])? {
        Some(row) => Ok(OwnEvent::Claimed(Box::new(event_row(&row)?))),
        None => Err(wrong(seq, "was stored as its customer's head but could not be claimed")),
    }
}

/// [`Outbox::finish_claim`] inside its transaction: each ending one statement conditional on
/// the event being in flight for `claimer`; when it matched nothing, the event was taken over.
fn finish_claim_in(
    tx: &mut PgTx<'_>,
    seq: Seq,
    claimer: &str,
    end: &ClaimEnd,
    rejection_json: Option<&serde_json::Value>,
    at: DateTime<Utc>,
) -> Result<ClaimFinished, Fault> {
    const MINE: &str = "AND claimer = $3";
    const IN_FLIGHT: [EventState; 1] = [EventState::InFlight];
    let recorded = match end {
        ClaimEnd::Delivered {
            delivery,
            echoed_correlation_id,
        } => {
            let sql = format!(
                "UPDATE outbox SET state = 'delivered', finished_at = $1, delivery = $2, echoed_correlation_id = $3,
                     attempts = attempts + 1, failing_since = NULL, next_attempt_at = NULL, last_error = NULL,
                     head = NULL
                 WHERE seq = $4 AND state = 'in_flight' AND claimer = $5 AND op = $6
                 RETURNING {}",
                event_columns("")
            );
            let row = tx.query_opt(
                &sql,
                &[
                    &at,
                    &delivery_str(*delivery),
                    echoed_correlation_id,
                    &seq,
                    &claimer,
                    &op_of(*delivery).as_str(),
                ],
            )?;
            match row {
                Some(row) => {
                    let ev = event_row(&row)?;
                    heads_finished(tx, &[(ev.seq, ev.register.as_str(), ev.customer_id.as_str())])?;
                    delivered(tx, &ev, *delivery, at)?;
                    true
                }
                None => {
                    let ev = event(tx, seq)?;
                    if ev.state == EventState::InFlight && ev.claimer.as_deref() == Some(claimer) {
                        return Err(wrong(
                            seq,
                            format!(
                                "is {} and cannot be settled as {}",
                                ev.op.as_str(),
                                delivery_str(*delivery)
                            ),
                        ));
                    }
                    false
                }
            }
        }
        ClaimEnd::RetryLater { not_before, error } => {
            let set = "state = 'pending', attempts = o.attempts + 1, next_attempt_at = $4,
                 failing_since = COALESCE(o.failing_since, $5), last_error = $6, claimer = NULL, claim_epoch = NULL,
                 claimed_until = NULL";
            let changed = transition(tx, &[seq], &IN_FLIGHT, MINE, set, &[&claimer, not_before, &at, error])?;
            match changed.first() {
                Some(ev) => {
                    Line {
                        detail: Some(error),
                        ..Line::attempt(ev, at, "retry_later")
                    }
                    .write(tx)?;
                    true
                }
                None => false,
            }
        }
        ClaimEnd::Release { error } => {
            let set = "state = 'pending', last_error = $4, claimer = NULL, claim_epoch = NULL, claimed_until = NULL";
            let changed = transition(tx, &[seq], &IN_FLIGHT, MINE, set, &[&claimer, error])?;
            match changed.first() {
                Some(ev) => {
                    Line {
                        detail: Some(error),
                        ..Line::attempt(ev, at, "released")
                    }
                    .write(tx)?;
                    true
                }
                None => false,
            }
        }
        ClaimEnd::DeadLetter(rejection) => {
            let json = rejection_json.ok_or_else(|| Fault::Store(StoreError::Other("no rejection".into())))?;
            park(
                tx,
                seq,
                "AND state = 'in_flight' AND claimer = $3",
                &[&claimer],
                rejection,
                json,
                at,
            )?
        }
    };
    if recorded {
        return Ok(ClaimFinished::Recorded);
    }
    let ev = event(tx, seq)?;
    Ok(ClaimFinished::TakenOver { state: ev.state })
}

#[cfg(test)]
mod tests {
    use super::super::tests::store;
    use super::PgBackend;
    use crate::pg::cluster::TestDb;
    use crate::store::backend::Outbox as _;
    use crate::store::conformance::{R, agent, ev, t};
    use crate::store::types::*;

    /// Another connection to the test's database: what a second host has.
    fn second(db: &TestDb) -> PgBackend {
        PgBackend::open(&crate::pg::Target {
            url: db.url.clone(),
            password_file: Some(db.password_file.clone()),
            ca_file: None,
        })
        .unwrap()
    }

    /// Waits until `n` sessions of the test's database wait for an advisory lock, or `done`.
    fn until_waiting(admin: &mut postgres::Client, n: i64, done: impl Fn() -> bool) {
        loop {
            let waiting: i64 = admin
                .query_one(
                    "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database
                     WHERE l.locktype = 'advisory' AND NOT l.granted AND d.datname = current_database()",
                    &[],
                )
                .unwrap()
                .get(0);
            if waiting >= n || done() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// Two hosts: one stores an event of a customer while the other delivers the customer's
    /// head. The enqueue decided "not the head" (the head was still in flight when its insert
    /// began), so the delivery must make it the head once it is stored, or the customer's queue
    /// would stop for good. The insert is held inside its statement (a trigger waiting for the
    /// test) until the delivery has run as far as it can.
    #[test]
    fn an_event_stored_while_its_customers_head_is_delivered_becomes_the_next_head() {
        let (db, mut s) = store();
        s.enqueue(R, &[ev("first", "customer-a", Operation::Add)], None, t(0))
            .unwrap();
        let head = s.claim_ready(R, &agent(), t(0), 10).unwrap();
        assert_eq!(head.len(), 1);
        let mut admin = db.admin();
        admin
            .batch_execute(
                "SELECT pg_advisory_lock(42);
                 CREATE FUNCTION kfr_test_hold() RETURNS trigger LANGUAGE plpgsql AS $$
                 BEGIN PERFORM pg_advisory_lock(42); PERFORM pg_advisory_unlock(42); RETURN NEW; END $$;
                 CREATE TRIGGER hold BEFORE INSERT ON outbox FOR EACH ROW
                     WHEN (NEW.event_id = 'late') EXECUTE FUNCTION kfr_test_hold();",
            )
            .unwrap();
        let mut other = second(&db);
        let enqueuer = std::thread::spawn(move || {
            other
                .enqueue(R, &[ev("late", "customer-a", Operation::Remove)], None, t(1))
                .map(|_| ())
        });
        until_waiting(&mut admin, 1, || enqueuer.is_finished());
        let seq = head[0].seq;
        let deliverer = std::thread::spawn(move || {
            let done = Settlement {
                seq,
                delivery: Delivery::Added,
                echoed_correlation_id: None,
                at: t(1),
            };
            let r = s.settle(&[done]);
            (s, r)
        });
        // The delivery waits for the customer's lock the enqueue holds (without that lock it
        // would finish now, finding nothing to promote).
        until_waiting(&mut admin, 2, || deliverer.is_finished());
        admin.execute("SELECT pg_advisory_unlock(42)", &[]).unwrap();
        enqueuer.join().unwrap().unwrap();
        let (mut s, settled) = deliverer.join().unwrap();
        settled.unwrap();
        let next = s.claim_ready(R, &agent(), t(2), 10).unwrap();
        let ids: Vec<&str> = next.iter().map(|e| e.event_id.as_str()).collect();
        assert_eq!(ids, ["late"], "the event stored meanwhile is its customer's head");
    }
}
