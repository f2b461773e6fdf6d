//! The outbox on SQLite: [`Outbox`] for [`SqliteBackend`] (docs/specs/outbox.md).
//!
//! Layout (migrations 4 and 5): one `outbox` row per event, `seq` its issue order (AUTOINCREMENT,
//! so a purge never lets a seq be reused). The column `head` is 1 on each customer's oldest
//! unfinished event and NULL elsewhere — a unique partial index allows one per (register,
//! customer) — and moves only when a head finishes (delivered, dropped), to the customer's next
//! event. So `claim_ready` reads the index of heads by state — the customers that may go, oldest
//! first, `limit` of them — and never the backlog behind them, whatever its size. Only a head is
//! ever in flight, accepted or dead-lettered, so every rule about one customer's queue is a rule
//! about its head row.
//!
//! A claim writes `claimer`, `claim_epoch` (the deliverer's lease epoch, if any) and
//! `claimed_until`; `recover` takes back only claims that ran out and were made under an older
//! epoch (or none). Every method is one transaction; those that read and then write take the
//! write lock first (IMMEDIATE), so two processes on one file cannot both see a head as free.
//! The deliverer's writes are fenced by its lease epoch ([`Tx::Fenced`]). Every outcome writes
//! its history line in the same transaction.

use super::db::{SqliteBackend, Tx};
use super::rows::*;
use crate::store::backend::Outbox;
use crate::store::error::StoreError;
use crate::store::types::*;
use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension as _, Transaction, params};
use uuid::Uuid;

/// The claim columns' values for `claimer` at `now`.
fn claim_of(claimer: &Claimer, now: DateTime<Utc>) -> (String, Option<i64>, String) {
    (claimer.name.clone(), claimer.epoch, ts(now + claimer.ttl))
}

/// Sources as an SQL list literal for `IN (…)`; they are kfr's own constants, quoted safely.
fn sources_sql(sources: &[&str]) -> String {
    sources
        .iter()
        .map(|s| format!("'{}'", s.replace('\'', "''")))
        .collect::<Vec<_>>()
        .join(", ")
}

fn dead_letters_where(
    tx: &Transaction<'_>,
    filter: &str,
    args: &[&dyn rusqlite::ToSql],
) -> Result<Vec<DeadLetter>, Fault> {
    let sql = format!(
        "SELECT {EVENT_COLUMNS}, rejection, dead_at FROM outbox WHERE head = 1 AND state = 'dead_lettered' {filter} ORDER BY seq"
    );
    let mut stmt = tx.prepare(&sql)?;
    let rows = stmt.query_map(args, |r| {
        let ev = event_row(r)?;
        let rejection: Option<String> = r.get(20)?;
        let dead_at: Option<String> = r.get(21)?;
        Ok((ev, rejection, dead_at))
    })?;
    let mut out = vec![];
    for row in rows {
        let (event, rejection, dead_at) = row?;
        let rejection = rejection
            .as_deref()
            .and_then(|j| serde_json::from_str::<Rejection>(j).ok())
            .unwrap_or_else(|| Rejection {
                status: None,
                code: None,
                body: String::new(),
                reason: event.last_error.clone().unwrap_or_default(),
            });
        let parked_behind: u64 = tx.query_row(
            "SELECT COUNT(*) FROM outbox WHERE register = ?1 AND customer_id = ?2 AND seq > ?3 AND finished_at IS NULL",
            params![event.register, event.customer_id, event.seq],
            |r| r.get(0),
        )?;
        out.push(DeadLetter {
            dead_at: opt_ts(dead_at)?.unwrap_or(event.received_at),
            event,
            rejection,
            parked_behind,
        });
    }
    Ok(out)
}

impl Outbox for SqliteBackend {
    fn enqueue(
        &mut self,
        register: &str,
        events: &[NewEvent],
        max_unfinished: Option<u64>,
        now: DateTime<Utc>,
    ) -> Result<Vec<Enqueued>, StoreError> {
        self.tx(Tx::Write, |tx| enqueue_in(tx, register, events, max_unfinished, now))
    }

    fn enqueue_stream(
        &mut self,
        register: &str,
        chunks: &mut dyn Iterator<Item = Chunk>,
        max_unfinished: Option<u64>,
        now: DateTime<Utc>,
    ) -> Result<Option<Streamed>, StoreError> {
        let mut aborted = false;
        let out = self.tx(Tx::Write, |tx| {
            let mut done = Streamed::default();
            let mut base = 0;
            for chunk in chunks {
                let events = match chunk {
                    Chunk::Events(events) => events,
                    Chunk::Abort => {
                        aborted = true;
                        // Any error rolls the transaction back; this one is not reported.
                        return Err(Fault::Store(StoreError::Other("aborted by the caller".into())));
                    }
                };
                let results = enqueue_in(tx, register, &events, max_unfinished, now).map_err(|e| match e {
                    Fault::Store(StoreError::EventIdConflict { index, seq }) => {
                        Fault::Store(StoreError::EventIdConflict {
                            index: base + index,
                            seq,
                        })
                    }
                    Fault::Store(StoreError::CustomerFlood { index, max }) => Fault::Store(StoreError::CustomerFlood {
                        index: base + index,
                        max,
                    }),
                    other => other,
                })?;
                for (ev, r) in events.iter().zip(&results) {
                    match (r, ev.op) {
                        (Enqueued::Duplicate { .. }, _) => done.duplicates += 1,
                        (Enqueued::Stored { .. }, Operation::Add) => done.stored_adds += 1,
                        (Enqueued::Stored { .. }, Operation::Remove) => done.stored_removes += 1,
                    }
                }
                base += events.len();
            }
            Ok(done)
        });
        match out {
            Err(_) if aborted => Ok(None),
            other => other.map(Some),
        }
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
            let out = enqueue_in(tx, register, events, max_unfinished, now)?;
            tx.execute(
                "INSERT INTO source_cursors (source, cursor, at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (source) DO UPDATE SET cursor = excluded.cursor, at = excluded.at",
                params![source, cursor, ts(now)],
            )?;
            Ok(out)
        })
    }

    fn source_cursor(&mut self, source: &str) -> Result<Option<String>, StoreError> {
        self.tx(Tx::Read, |tx| {
            Ok(tx
                .query_row("SELECT cursor FROM source_cursors WHERE source = ?1", [source], |r| {
                    r.get(0)
                })
                .optional()?)
        })
    }

    fn recover(
        &mut self,
        register: &str,
        epoch: i64,
        now: DateTime<Utc>,
        hold: chrono::Duration,
    ) -> Result<Recovered, StoreError> {
        self.tx(Tx::Fenced, |tx| {
            // Only claims that ran out (a request under them can no longer be on the wire) and
            // that are not this deliverer's own (older epoch, or a claimer with none). A claim
            // from before claims had an expiry (NULL) counts as run out at `now`.
            let taken: Vec<(Seq, Option<String>, bool)> = tx
                .prepare_cached(
                    "SELECT seq, claimed_until, batch_correlation_id IS NOT NULL FROM outbox
                     WHERE head = 1 AND register = ?1 AND state = 'in_flight'
                       AND (claimed_until IS NULL OR claimed_until <= ?2)
                       AND (claim_epoch IS NULL OR claim_epoch < ?3)",
                )?
                .query_map(params![register, ts(now), epoch], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })?
                .collect::<Result<_, _>>()?;
            let mut out = Recovered::default();
            for (seq, until, batch) in taken {
                if batch {
                    tx.execute(
                        "UPDATE outbox SET state = 'accepted', accepted_at = NULL, claimer = NULL, claim_epoch = NULL,
                             claimed_until = NULL
                         WHERE seq = ?1",
                        [seq],
                    )?;
                    out.unknown_uploads += 1;
                } else {
                    // A request sent under the claim may be carried out up to `hold` after the
                    // claim ended: the event (and its customer) waits until then.
                    let ended = until.as_deref().map(parse_ts).transpose()?.unwrap_or(now);
                    tx.execute(
                        "UPDATE outbox SET state = 'pending', claimer = NULL, claim_epoch = NULL, claimed_until = NULL,
                             next_attempt_at = ?2
                         WHERE seq = ?1",
                        params![seq, ts(ended + hold)],
                    )?;
                    out.requeued += 1;
                }
            }
            Ok(out)
        })
    }

    fn claim_ready(
        &mut self,
        register: &str,
        claimer: &Claimer,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<OutboxEvent>, StoreError> {
        let (name, epoch, until) = claim_of(claimer, now);
        self.tx(Tx::Fenced, |tx| {
            let removes_may_go = barrier_in(tx, register)?.is_none();
            // One statement marks the oldest ready heads and returns them (RETURNING gives no
            // order, so they are sorted here).
            let sql = format!(
                "UPDATE outbox SET state = 'in_flight', claimer = ?5, claim_epoch = ?6, claimed_until = ?7
                 WHERE seq IN (
                     SELECT seq FROM outbox
                     WHERE head = 1 AND register = ?1 AND state = 'pending'
                       AND (next_attempt_at IS NULL OR next_attempt_at <= ?2)
                       AND (?3 OR op = 'add')
                     ORDER BY seq LIMIT ?4)
                 RETURNING {EVENT_COLUMNS}"
            );
            let mut events: Vec<OutboxEvent> = tx
                .prepare_cached(&sql)?
                .query_map(
                    params![register, ts(now), removes_may_go, limit as i64, name, epoch, until],
                    event_row,
                )?
                .collect::<Result<_, _>>()?;
            events.sort_unstable_by_key(|e| e.seq);
            Ok(events)
        })
    }

    fn begin_batch(&mut self, seqs: &[Seq], batch_correlation_id: Uuid) -> Result<(), StoreError> {
        self.tx(Tx::Fenced, |tx| {
            for &seq in seqs {
                require(&event(tx, seq)?, &[EventState::InFlight], "put in a batch")?;
                tx.execute(
                    "UPDATE outbox SET batch_correlation_id = ?1, accepted_at = NULL WHERE seq = ?2",
                    params![batch_correlation_id.to_string(), seq],
                )?;
            }
            Ok(())
        })
    }

    fn batch_accepted(&mut self, batch_correlation_id: Uuid, at: DateTime<Utc>) -> Result<(), StoreError> {
        self.tx(Tx::Fenced, |tx| {
            // The upload's answer is recorded now: one attempt, unless a probe of an unknown
            // upload is what found it accepted (its attempt was never answered, so it counts now).
            let events: Vec<OutboxEvent> = tx
                .prepare_cached(&format!(
                    "UPDATE outbox SET attempts = attempts + (accepted_at IS NULL), state = 'accepted', accepted_at = ?1
                     WHERE batch_correlation_id = ?2 AND state IN ('in_flight', 'accepted')
                     RETURNING {EVENT_COLUMNS}"
                ))?
                .query_map(params![ts(at), batch_correlation_id.to_string()], event_row)?
                .collect::<Result<_, _>>()?;
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
        self.tx(Tx::Fenced, |tx| {
            // No answer: the events stay their customers' heads as `accepted` with no
            // `accepted_at`, so nothing resends them before a probe says KFR does not have them.
            let events: Vec<OutboxEvent> = tx
                .prepare_cached(&format!(
                    "UPDATE outbox SET state = 'accepted', accepted_at = NULL
                     WHERE batch_correlation_id = ?1 AND state = 'in_flight'
                     RETURNING {EVENT_COLUMNS}"
                ))?
                .query_map([batch_correlation_id.to_string()], event_row)?
                .collect::<Result<_, _>>()?;
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
        self.tx(Tx::Read, |tx| {
            let sql = format!(
                "SELECT {EVENT_COLUMNS} FROM outbox WHERE head = 1 AND register = ?1 AND state = 'accepted' ORDER BY seq"
            );
            Ok(tx
                .prepare(&sql)?
                .query_map([register], event_row)?
                .collect::<Result<_, _>>()?)
        })
    }

    fn settle(&mut self, settlements: &[Settlement]) -> Result<(), StoreError> {
        self.tx(Tx::Fenced, |tx| {
            for s in settlements {
                let wanted = ledger_state(s.delivery);
                let op = match wanted {
                    LedgerState::Active => Operation::Add,
                    LedgerState::Ended => Operation::Remove,
                };
                // One statement checks the state and the operation, records the outcome, ends the
                // head and returns what the ledger and the history need; the hot path of every
                // delivery. A single's answer is an attempt recorded now; a batch event's was
                // counted when the batch was accepted.
                let ev = tx
                    .prepare_cached(&format!(
                        "UPDATE outbox SET state = 'delivered', finished_at = ?1, delivery = ?2,
                             echoed_correlation_id = ?3, attempts = attempts + (state = 'in_flight'),
                             failing_since = NULL, next_attempt_at = NULL, head = NULL
                         WHERE seq = ?4 AND state IN ('in_flight', 'accepted') AND op = ?5
                         RETURNING {EVENT_COLUMNS}"
                    ))?
                    .query_row(
                        params![
                            ts(s.at),
                            delivery_str(s.delivery),
                            s.echoed_correlation_id,
                            s.seq,
                            op.as_str()
                        ],
                        event_row,
                    )
                    .optional()?;
                let Some(ev) = ev else {
                    return Err(unsettleable(tx, s));
                };
                promote_next(tx, s.seq, &ev.register, &ev.customer_id)?;
                let start = match wanted {
                    LedgerState::Active => ev.start_date,
                    LedgerState::Ended => None,
                };
                set_ledger(
                    tx,
                    &ev.register,
                    &ev.customer_id,
                    wanted,
                    start,
                    s.at,
                    ev.correlation_id,
                )?;
                let outcome = format!("delivered:{}", delivery_str(s.delivery));
                Line {
                    status: delivery_status(s.delivery),
                    ..Line::attempt(&ev, s.at, &outcome)
                }
                .write(tx)?;
            }
            Ok(())
        })
    }

    fn retry_later(&mut self, seq: Seq, at: DateTime<Utc>, error: &str, now: DateTime<Utc>) -> Result<(), StoreError> {
        self.tx(Tx::Fenced, |tx| {
            let ev = event(tx, seq)?;
            require(&ev, &[EventState::InFlight, EventState::Accepted], "retried later")?;
            tx.execute(
                "UPDATE outbox SET state = 'pending', attempts = attempts + 1, next_attempt_at = ?1,
                     failing_since = COALESCE(failing_since, ?2), last_error = ?3,
                     batch_correlation_id = NULL, accepted_at = NULL, claimer = NULL, claim_epoch = NULL,
                     claimed_until = NULL
                 WHERE seq = ?4",
                params![ts(at), ts(now), error, seq],
            )?;
            Line {
                detail: Some(error),
                ..Line::attempt(&ev, now, "retry_later")
            }
            .write(tx)?;
            Ok(())
        })
    }

    fn release(&mut self, seqs: &[Seq], now: DateTime<Utc>) -> Result<(), StoreError> {
        self.tx(Tx::Fenced, |tx| {
            for &seq in seqs {
                let ev = event(tx, seq)?;
                require(&ev, &[EventState::InFlight, EventState::Accepted], "released")?;
                tx.execute(
                    "UPDATE outbox SET state = 'pending', batch_correlation_id = NULL, accepted_at = NULL, claimer = NULL,
                         claim_epoch = NULL, claimed_until = NULL
                     WHERE seq = ?1",
                    [seq],
                )?;
                Line::attempt(&ev, now, "released").write(tx)?;
            }
            Ok(())
        })
    }

    fn dead_letter(&mut self, seq: Seq, rejection: &Rejection, at: DateTime<Utc>) -> Result<(), StoreError> {
        let json = serde_json::to_string(rejection).map_err(|e| StoreError::Other(e.to_string()))?;
        self.tx(Tx::Fenced, |tx| {
            let ev = event(tx, seq)?;
            require(&ev, &[EventState::InFlight, EventState::Accepted], "dead-lettered")?;
            park(tx, &ev, rejection, &json, at)
        })
    }

    fn dead_letters(&mut self, register: Option<&str>) -> Result<Vec<DeadLetter>, StoreError> {
        self.tx(Tx::Read, |tx| match register {
            Some(r) => dead_letters_where(tx, "AND register = ?1", &[&r]),
            None => dead_letters_where(tx, "", &[]),
        })
    }

    fn retry_dead(
        &mut self,
        which: DeadLetters,
        action: &OperatorAction,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        self.tx(Tx::Write, |tx| {
            let targets = dead_targets(tx, which, "retried from the dead letters")?;
            for ev in &targets {
                tx.execute(
                    "UPDATE outbox SET state = 'pending', next_attempt_at = NULL, failing_since = NULL WHERE seq = ?1",
                    [ev.seq],
                )?;
                operator_line(ev, action, now, "dlq_retry").write(tx)?;
            }
            Ok(targets.len() as u64)
        })
    }

    fn drop_dead(
        &mut self,
        which: DeadLetters,
        action: &OperatorAction,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        self.tx(Tx::Write, |tx| {
            let targets = dead_targets(tx, which, "dropped")?;
            for ev in &targets {
                tx.execute(
                    "UPDATE outbox SET state = 'dropped', finished_at = ?1 WHERE seq = ?2",
                    params![ts(now), ev.seq],
                )?;
                finish_head(tx, ev.seq, &ev.register, &ev.customer_id)?;
                operator_line(ev, action, now, "dlq_drop").write(tx)?;
            }
            Ok(targets.len() as u64)
        })
    }

    fn status(&mut self, register: Option<&str>) -> Result<OutboxStatus, StoreError> {
        self.tx(Tx::Read, |tx| {
            let registers: Vec<String> = match register {
                Some(r) => vec![r.to_string()],
                None => tx
                    .prepare("SELECT DISTINCT register FROM outbox_counts")?
                    .query_map([], |r| r.get(0))?
                    .collect::<Result<_, _>>()?,
            };
            let mut st = OutboxStatus::default();
            let mut oldest: Option<Seq> = None;
            for reg in &registers {
                let mut stmt = tx.prepare_cached("SELECT state, n FROM outbox_counts WHERE register = ?1")?;
                let counts = stmt.query_map([reg], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
                for c in counts {
                    let (state, n) = c?;
                    let n = n.max(0) as u64;
                    match parse_state(&state)? {
                        EventState::Pending => st.pending += n,
                        EventState::InFlight => st.in_flight += n,
                        EventState::Accepted => st.accepted += n,
                        EventState::Delivered => st.delivered += n,
                        EventState::DeadLettered => st.dead_lettered += n,
                        EventState::Dropped => st.dropped += n,
                    }
                }
                // Every dead-lettered event is a head, so it is one parked customer.
                st.parked_events += tx
                    .prepare_cached(
                        "SELECT COUNT(*) FROM outbox h JOIN outbox o
                           ON o.register = h.register AND o.customer_id = h.customer_id AND o.seq > h.seq
                              AND o.finished_at IS NULL
                         WHERE h.head = 1 AND h.register = ?1 AND h.state = 'dead_lettered'",
                    )?
                    .query_row([reg], |r| r.get::<_, u64>(0))?;
                // The oldest unfinished event is its customer's head: the least seq over the
                // heads of each unfinished state (each an index lookup).
                for state in ["pending", "in_flight", "accepted", "dead_lettered"] {
                    let min: Option<Seq> = tx
                        .prepare_cached("SELECT MIN(seq) FROM outbox WHERE head = 1 AND register = ?1 AND state = ?2")?
                        .query_row(params![reg, state], |r| r.get(0))?;
                    oldest = match (oldest, min) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                }
            }
            st.parked_customers = st.dead_lettered;
            if let Some(seq) = oldest {
                let at: String = tx.query_row("SELECT received_at FROM outbox WHERE seq = ?1", [seq], |r| r.get(0))?;
                st.oldest_unfinished = Some(parse_ts(&at)?);
            }
            st.barrier = match register {
                Some(r) => barrier_in(tx, r)?,
                None => tx
                    .query_row(
                        "SELECT id FROM load_jobs WHERE status = 'running' ORDER BY id LIMIT 1",
                        [],
                        |r| r.get(0),
                    )
                    .optional()?,
            };
            Ok(st)
        })
    }

    fn purge(&mut self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        self.tx(Tx::Write, |tx| {
            Ok(tx.execute(
                "DELETE FROM outbox WHERE finished_at < ?1 AND state IN ('delivered', 'dropped')",
                [ts(before)],
            )? as u64)
        })
    }

    fn barrier(&mut self, register: &str) -> Result<Option<i64>, StoreError> {
        self.tx(Tx::Read, |tx| Ok(barrier_in(tx, register)?))
    }

    fn enqueue_and_claim(
        &mut self,
        register: &str,
        event: &NewEvent,
        correlation_id: Uuid,
        claimer: &Claimer,
        now: DateTime<Utc>,
    ) -> Result<OwnEvent, StoreError> {
        self.kept_tx(|tx| enqueue_and_claim_in(tx, register, event, correlation_id, claimer, now))
    }

    fn finish_claim(
        &mut self,
        seq: Seq,
        claimer: &str,
        end: &ClaimEnd,
        at: DateTime<Utc>,
    ) -> Result<ClaimFinished, StoreError> {
        self.kept_tx(|tx| finish_claim_in(tx, seq, claimer, end, at))
    }

    fn claim_head_of(
        &mut self,
        register: &str,
        customer: &str,
        sources: &[&str],
        claimer: &Claimer,
        now: DateTime<Utc>,
    ) -> Result<Option<OutboxEvent>, StoreError> {
        self.kept_tx(|tx| {
            let sql =
                format!("SELECT {EVENT_COLUMNS} FROM outbox WHERE register = ?1 AND customer_id = ?2 AND head = 1");
            let Some(head) = tx.query_row(&sql, params![register, customer], event_row).optional()? else {
                return Ok(None);
            };
            let due = head.next_attempt_at.is_none_or(|t| t <= now);
            let barred = head.op == Operation::Remove && barrier_in(tx, register)?.is_some();
            if head.state != EventState::Pending || !due || barred || !sources.contains(&head.source.as_str()) {
                return Ok(None);
            }
            claim_one(tx, head.seq, claimer, now)
        })
    }

    fn claim_next_of(
        &mut self,
        register: &str,
        sources: &[&str],
        claimer: &Claimer,
        now: DateTime<Utc>,
    ) -> Result<Option<OutboxEvent>, StoreError> {
        self.kept_tx(|tx| {
            let removes_may_go = barrier_in(tx, register)?.is_none();
            let sql = format!(
                "SELECT seq FROM outbox
                 WHERE head = 1 AND register = ?1 AND state = 'pending' AND source IN ({})
                   AND (next_attempt_at IS NULL OR next_attempt_at <= ?2) AND (?3 OR op = 'add')
                 ORDER BY seq LIMIT 1",
                sources_sql(sources)
            );
            let next: Option<Seq> = tx
                .query_row(&sql, params![register, ts(now), removes_may_go], |r| r.get(0))
                .optional()?;
            match next {
                Some(seq) => claim_one(tx, seq, claimer, now),
                None => Ok(None),
            }
        })
    }

    fn events_of(&mut self, register: Option<&str>, customer: Option<&str>) -> Result<Vec<OutboxEvent>, StoreError> {
        // Only the predicates asked for, so a customer's events of a register are read through
        // the index `outbox_customer` rather than the table.
        let mut filters = vec![];
        let mut args: Vec<&str> = vec![];
        if let Some(r) = register {
            filters.push(format!("register = ?{}", args.len() + 1));
            args.push(r);
        }
        if let Some(c) = customer {
            filters.push(format!("customer_id = ?{}", args.len() + 1));
            args.push(c);
        }
        let filter = if filters.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", filters.join(" AND "))
        };
        self.tx(Tx::Read, |tx| {
            let sql = format!("SELECT {EVENT_COLUMNS} FROM outbox {filter} ORDER BY seq");
            Ok(tx
                .prepare(&sql)?
                .query_map(rusqlite::params_from_iter(args.iter()), event_row)?
                .collect::<Result<_, _>>()?)
        })
    }

    fn unfinished_of(&mut self, register: &str, sources: &[&str]) -> Result<Vec<OutboxEvent>, StoreError> {
        self.tx(Tx::Read, |tx| {
            let sql = format!(
                "SELECT {EVENT_COLUMNS} FROM outbox WHERE register = ?1 AND finished_at IS NULL AND source IN ({})
                 ORDER BY seq",
                sources_sql(sources)
            );
            Ok(tx
                .prepare(&sql)?
                .query_map([register], event_row)?
                .collect::<Result<_, _>>()?)
        })
    }
}

/// [`Outbox::enqueue`] inside its write transaction.
fn enqueue_in(
    tx: &Transaction<'_>,
    register: &str,
    events: &[NewEvent],
    max_unfinished: Option<u64>,
    now: DateTime<Utc>,
) -> Result<Vec<Enqueued>, Fault> {
    let mut out = Vec::with_capacity(events.len());
    for (index, ev) in events.iter().enumerate() {
        let stored = try_insert_event_as_head(tx, register, ev, Uuid::new_v4(), now)?;
        out.push(match stored {
            Some((seq, head)) => {
                // A new head has nothing before it: one unfinished event, within any limit.
                if let Some(max) = max_unfinished.filter(|_| !head) {
                    guard_flood(tx, register, &ev.customer_id, index, max)?;
                }
                Enqueued::Stored { seq }
            }
            None => {
                // A known id is a duplicate only if it names the same event; reused for
                // another one, the call fails whole (the transaction rolls back).
                let (seq, same) = tx
                    .prepare_cached(
                        "SELECT seq, register = ?2 AND op = ?3 AND customer_id = ?4 AND start_date IS ?5
                         FROM outbox WHERE event_id = ?1",
                    )?
                    .query_row(
                        params![
                            ev.event_id,
                            register,
                            ev.op.as_str(),
                            ev.customer_id,
                            ev.start_date.map(|d| d.to_string())
                        ],
                        |r| Ok((r.get::<_, Seq>(0)?, r.get::<_, bool>(1)?)),
                    )?;
                if !same {
                    return Err(Fault::Store(StoreError::EventIdConflict { index, seq }));
                }
                Enqueued::Duplicate { seq }
            }
        });
    }
    Ok(out)
}

/// The flood guard, after the insert of `seq` and inside its write transaction (so the count
/// includes what this call stored before, and no other writer can slip in between): more than
/// `max` unfinished events for the customer fails the call, which rolls back whole.
fn guard_flood(tx: &Transaction<'_>, register: &str, customer: &str, index: usize, max: u64) -> Result<(), Fault> {
    let unfinished: u64 = tx
        .prepare_cached("SELECT COUNT(*) FROM outbox WHERE register = ?1 AND customer_id = ?2 AND finished_at IS NULL")?
        .query_row(params![register, customer], |r| r.get(0))?;
    if unfinished > max {
        return Err(Fault::Store(StoreError::CustomerFlood { index, max }));
    }
    Ok(())
}

/// Claims the pending head `seq` for `claimer` (the caller checked it may go).
fn claim_one(
    tx: &Transaction<'_>,
    seq: Seq,
    claimer: &Claimer,
    now: DateTime<Utc>,
) -> Result<Option<OutboxEvent>, Fault> {
    let (name, epoch, until) = claim_of(claimer, now);
    let sql = format!(
        "UPDATE outbox SET state = 'in_flight', claimer = ?1, claim_epoch = ?2, claimed_until = ?3
         WHERE seq = ?4 AND head = 1 AND state = 'pending'
         RETURNING {EVENT_COLUMNS}"
    );
    Ok(tx
        .query_row(&sql, params![name, epoch, until, seq], event_row)
        .optional()?)
}

/// Dead-letters `ev` (the caller checked its state) and writes its history line.
fn park(
    tx: &Transaction<'_>,
    ev: &OutboxEvent,
    rejection: &Rejection,
    json: &str,
    at: DateTime<Utc>,
) -> Result<(), Fault> {
    tx.execute(
        "UPDATE outbox SET state = 'dead_lettered', attempts = attempts + 1, rejection = ?1, dead_at = ?2,
             last_error = ?3, batch_correlation_id = NULL, accepted_at = NULL, claimer = NULL, claim_epoch = NULL,
             claimed_until = NULL
         WHERE seq = ?4",
        params![json, ts(at), rejection.reason, ev.seq],
    )?;
    Line {
        status: rejection.status,
        code: rejection.code.as_deref(),
        detail: Some(&rejection.reason),
        ..Line::attempt(ev, at, "dead_lettered")
    }
    .write(tx)?;
    Ok(())
}

/// The dead letters an operator's action applies to.
fn dead_targets(tx: &Transaction<'_>, which: DeadLetters, doing: &str) -> Result<Vec<OutboxEvent>, Fault> {
    Ok(match which {
        DeadLetters::One(seq) => {
            let ev = event(tx, seq)?;
            require(&ev, &[EventState::DeadLettered], doing)?;
            vec![ev]
        }
        DeadLetters::All => {
            let sql =
                format!("SELECT {EVENT_COLUMNS} FROM outbox WHERE head = 1 AND state = 'dead_lettered' ORDER BY seq");
            tx.prepare(&sql)?.query_map([], event_row)?.collect::<Result<_, _>>()?
        }
    })
}

/// An operator's action on `ev`, for the history.
fn operator_line<'a>(ev: &'a OutboxEvent, action: &'a OperatorAction, now: DateTime<Utc>, what: &'a str) -> Line<'a> {
    Line {
        kind: HistoryKind::Operator,
        actor: Some(&action.actor),
        detail: action.reason.as_deref(),
        ..Line::attempt(ev, now, what)
    }
}

// ---- A caller's own claim (`kfr add`, `kfr remove`) ------------------------------------------
//
// Kept apart from the dispatcher's paths above: these run once per command, so they favour
// plain statements over cached ones, and share only the helpers (`insert_event`, `finish_head`,
// `set_ledger`) with them.

/// [`Outbox::enqueue_and_claim`] inside its write transaction: the look at the customer's
/// queue, the insert and the claim happen under one write lock, so no dispatcher's `claim_ready`
/// can see the event pending in between.
fn enqueue_and_claim_in(
    tx: &Transaction<'_>,
    register: &str,
    ev: &NewEvent,
    correlation_id: Uuid,
    claimer: &Claimer,
    now: DateTime<Utc>,
) -> Result<OwnEvent, Fault> {
    let known: Option<Seq> = tx
        .query_row("SELECT seq FROM outbox WHERE event_id = ?1", [&ev.event_id], |r| {
            r.get(0)
        })
        .optional()?;
    if let Some(seq) = known {
        return Ok(OwnEvent::Duplicate { seq });
    }
    let ahead: u64 = tx.query_row(
        "SELECT COUNT(*) FROM outbox WHERE register = ?1 AND customer_id = ?2 AND state NOT IN ('delivered', 'dropped')",
        params![register, ev.customer_id],
        |r| r.get(0),
    )?;
    let barrier = barrier_in(tx, register)?;
    let seq = insert_event(tx, register, ev, correlation_id, now)?;
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
    match claim_one(tx, seq, claimer, now)? {
        Some(claimed) => Ok(OwnEvent::Claimed(Box::new(claimed))),
        None => Err(wrong(seq, "was stored as its customer's head but could not be claimed")),
    }
}

/// [`Outbox::finish_claim`] inside its write transaction.
fn finish_claim_in(
    tx: &Transaction<'_>,
    seq: Seq,
    claimer: &str,
    end: &ClaimEnd,
    at: DateTime<Utc>,
) -> Result<ClaimFinished, Fault> {
    let ev = event(tx, seq)?;
    if ev.state != EventState::InFlight || ev.claimer.as_deref() != Some(claimer) {
        return Ok(ClaimFinished::TakenOver { state: ev.state });
    }
    match end {
        ClaimEnd::Delivered {
            delivery,
            echoed_correlation_id,
        } => {
            let wanted = match ev.op {
                Operation::Add => LedgerState::Active,
                Operation::Remove => LedgerState::Ended,
            };
            if ledger_state(*delivery) != wanted {
                return Err(wrong(
                    seq,
                    format!(
                        "is {} and cannot be settled as {}",
                        ev.op.as_str(),
                        delivery_str(*delivery)
                    ),
                ));
            }
            tx.execute(
                "UPDATE outbox SET state = 'delivered', finished_at = ?1, delivery = ?2, echoed_correlation_id = ?3,
                     attempts = attempts + 1, failing_since = NULL, next_attempt_at = NULL, last_error = NULL
                 WHERE seq = ?4",
                params![ts(at), delivery_str(*delivery), echoed_correlation_id, seq],
            )?;
            finish_head(tx, seq, &ev.register, &ev.customer_id)?;
            let start = (wanted == LedgerState::Active).then_some(ev.start_date).flatten();
            set_ledger(tx, &ev.register, &ev.customer_id, wanted, start, at, ev.correlation_id)?;
            let outcome = format!("delivered:{}", delivery_str(*delivery));
            Line {
                status: delivery_status(*delivery),
                ..Line::attempt(&ev, at, &outcome)
            }
            .write(tx)?;
        }
        ClaimEnd::RetryLater { not_before, error } => {
            tx.execute(
                "UPDATE outbox SET state = 'pending', attempts = attempts + 1, next_attempt_at = ?1,
                     failing_since = COALESCE(failing_since, ?2), last_error = ?3, claimer = NULL, claim_epoch = NULL,
                     claimed_until = NULL
                 WHERE seq = ?4",
                params![ts(*not_before), ts(at), error, seq],
            )?;
            Line {
                detail: Some(error),
                ..Line::attempt(&ev, at, "retry_later")
            }
            .write(tx)?;
        }
        ClaimEnd::Release { error } => {
            tx.execute(
                "UPDATE outbox SET state = 'pending', last_error = ?1, claimer = NULL, claim_epoch = NULL,
                     claimed_until = NULL
                 WHERE seq = ?2",
                params![error, seq],
            )?;
            Line {
                detail: Some(error),
                ..Line::attempt(&ev, at, "released")
            }
            .write(tx)?;
        }
        ClaimEnd::DeadLetter(rejection) => {
            let json = serde_json::to_string(rejection).map_err(|e| Fault::Store(StoreError::Other(e.to_string())))?;
            park(tx, &ev, rejection, &json, at)?;
        }
    }
    Ok(ClaimFinished::Recorded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance;

    fn store() -> (tempfile::TempDir, SqliteBackend) {
        let d = tempfile::tempdir().unwrap();
        let s = SqliteBackend::open(&d.path().join("s.db")).unwrap();
        (d, s)
    }

    /// The SQLite backend under the conformance suite: a fresh store in a temporary directory;
    /// a second handle is a second connection to the file (what another process has); a
    /// poisoned event id fails its insert by a temporary trigger on the first connection.
    struct Sqlite {
        dir: tempfile::TempDir,
        store: SqliteBackend,
    }

    impl conformance::Harness for Sqlite {
        fn backend(&mut self) -> &mut dyn crate::store::backend::Backend {
            &mut self.store
        }
        fn second(&mut self) -> Box<dyn crate::store::backend::Backend> {
            Box::new(SqliteBackend::open(&self.dir.path().join("s.db")).unwrap())
        }
        fn poison(&mut self, event_id: &str) {
            self.store
                .conn()
                .execute_batch(&format!(
                    "CREATE TEMP TRIGGER poison BEFORE INSERT ON main.outbox WHEN new.event_id = '{event_id}'
                     BEGIN SELECT RAISE(ABORT, 'poisoned for the test'); END;"
                ))
                .unwrap();
        }
    }

    fn harness() -> Box<dyn conformance::Harness> {
        let (dir, store) = store();
        Box::new(Sqlite { dir, store })
    }

    conformance::outbox_conformance_tests!(harness());

    /// `Store`: enqueues that arrive while the store thread is busy are committed together,
    /// every caller is answered, and an event id sent by several callers is stored once.
    #[tokio::test]
    async fn the_handle_group_commits_concurrent_enqueues() {
        use crate::store::Store;
        use crate::store::conformance::{R, ev, t};
        let (d, s) = store();
        let path = d.path().join("s.db");
        let h = Store::spawn(Box::new(s)).unwrap();
        // Hold the store thread until every enqueue is waiting in its queue.
        let (open, gate) = std::sync::mpsc::channel::<()>();
        let blocked = h.call(move |_| {
            let _ = gate.recv();
            Ok(())
        });
        futures::pin_mut!(blocked);
        assert!(futures::poll!(&mut blocked).is_pending());
        let callers: Vec<_> = (0..30)
            .map(|i| {
                let h = h.clone();
                async move {
                    let c = format!("customer-{i}");
                    let events = vec![
                        ev(&format!("{i}-add"), &c, Operation::Add),
                        ev(&format!("{i}-remove"), &c, Operation::Remove),
                        ev("sent-by-everyone", "customer-shared", Operation::Add),
                    ];
                    h.enqueue(R.to_string(), events, None, t(0)).await
                }
            })
            .collect();
        let all = futures::future::join_all(callers);
        futures::pin_mut!(all);
        assert!(futures::poll!(&mut all).is_pending());
        open.send(()).unwrap();
        blocked.await.unwrap();
        let answers: Vec<Vec<Enqueued>> = all.await.into_iter().map(Result::unwrap).collect();
        assert!(
            answers
                .iter()
                .all(|a| a.len() == 3 && matches!(a[0], Enqueued::Stored { .. }))
        );
        let shared: Vec<Enqueued> = answers.iter().map(|a| a[2]).collect();
        let Enqueued::Stored { seq } = shared[0] else {
            panic!("{shared:?}")
        };
        assert!(
            shared[1..].iter().all(|e| *e == Enqueued::Duplicate { seq }),
            "{shared:?}"
        );
        assert_eq!(h.status(Some(R.to_string())).await.unwrap().pending, 61);
        // One transaction for all 30 callers: every event carries the one reception time.
        let mut other = SqliteBackend::open(&path).unwrap();
        let times: i64 = other
            .conn()
            .query_row("SELECT COUNT(DISTINCT received_at) FROM outbox", [], |r| r.get(0))
            .unwrap();
        assert_eq!(times, 1, "one group commit");
        drop(d);
    }

    /// A group commit with one caller reusing an event id for another event refuses that caller
    /// alone; the others' requests are stored whole.
    #[tokio::test]
    async fn a_conflicting_caller_in_a_group_commit_fails_alone() {
        use crate::store::Store;
        use crate::store::conformance::{R, ev, t};
        let (_d, s) = store();
        let h = Store::spawn(Box::new(s)).unwrap();
        h.enqueue(R.to_string(), vec![ev("known", "c0", Operation::Add)], None, t(0))
            .await
            .unwrap();
        // Hold the store thread so both requests meet in one group.
        let (open, gate) = std::sync::mpsc::channel::<()>();
        let blocked = h.call(move |_| {
            let _ = gate.recv();
            Ok(())
        });
        futures::pin_mut!(blocked);
        assert!(futures::poll!(&mut blocked).is_pending());
        let good = h.enqueue(
            R.to_string(),
            vec![ev("g1", "c1", Operation::Add), ev("g2", "c2", Operation::Add)],
            None,
            t(1),
        );
        let bad = h.enqueue(
            R.to_string(),
            vec![ev("b1", "c3", Operation::Add), ev("known", "c0", Operation::Remove)],
            None,
            t(1),
        );
        let both = futures::future::join(good, bad);
        futures::pin_mut!(both);
        assert!(futures::poll!(&mut both).is_pending());
        open.send(()).unwrap();
        blocked.await.unwrap();
        let (good, bad) = both.await;
        assert_eq!(good.unwrap().len(), 2);
        assert!(
            matches!(bad, Err(StoreError::EventIdConflict { index: 1, .. })),
            "{bad:?}"
        );
        assert_eq!(
            h.status(Some(R.to_string())).await.unwrap().pending,
            3,
            "known, g1, g2; not b1"
        );
    }

    /// A group commit with one caller pushing a customer past the flood limit refuses that
    /// caller alone (the earlier caller keeps its place); the others are stored whole.
    #[tokio::test]
    async fn a_flooding_caller_in_a_group_commit_fails_alone() {
        use crate::store::Store;
        use crate::store::conformance::{R, ev, t};
        let (_d, s) = store();
        let h = Store::spawn(Box::new(s)).unwrap();
        let (open, gate) = std::sync::mpsc::channel::<()>();
        let blocked = h.call(move |_| {
            let _ = gate.recv();
            Ok(())
        });
        futures::pin_mut!(blocked);
        assert!(futures::poll!(&mut blocked).is_pending());
        let max = Some(2);
        let first = h.enqueue(
            R.to_string(),
            vec![ev("f1", "c0", Operation::Add), ev("f2", "c0", Operation::Remove)],
            max,
            t(1),
        );
        let flood = h.enqueue(
            R.to_string(),
            vec![ev("x1", "c1", Operation::Add), ev("x2", "c0", Operation::Add)],
            max,
            t(1),
        );
        let other = h.enqueue(R.to_string(), vec![ev("o1", "c2", Operation::Add)], max, t(1));
        let all = futures::future::join3(first, flood, other);
        futures::pin_mut!(all);
        assert!(futures::poll!(&mut all).is_pending());
        open.send(()).unwrap();
        blocked.await.unwrap();
        let (first, flood, other) = all.await;
        assert_eq!(first.unwrap().len(), 2);
        assert!(
            matches!(flood, Err(StoreError::CustomerFlood { index: 1, max: 2 })),
            "{flood:?}"
        );
        assert_eq!(other.unwrap().len(), 1);
        assert_eq!(h.status(Some(R.to_string())).await.unwrap().pending, 3, "f1, f2, o1");
    }

    /// The query plans that keep a 1,000,000-event backlog cheap: a claim reads heads by index,
    /// never the outbox table row by row.
    #[test]
    fn claims_and_counts_use_indexes_not_scans() {
        let (_d, mut s) = store();
        let plan = |s: &mut SqliteBackend, sql: &str| -> String {
            let mut stmt = s.conn().prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let rows = stmt.query_map([], |r| r.get::<_, String>(3)).unwrap();
            rows.map(Result::unwrap).collect::<Vec<_>>().join("\n")
        };
        let claim = format!(
            "UPDATE outbox SET state = 'in_flight' WHERE seq IN (
               SELECT seq FROM outbox WHERE head = 1 AND register = 'r' AND state = 'pending'
               AND (next_attempt_at IS NULL OR next_attempt_at <= 'z') AND (1 OR op = 'add') ORDER BY seq LIMIT 10)
             RETURNING {EVENT_COLUMNS}"
        );
        for sql in [
            claim.as_str(),
            "SELECT state FROM outbox WHERE register = 'r' AND customer_id = 'c' ORDER BY seq DESC LIMIT 1",
            "SELECT seq FROM outbox WHERE register = 'r' AND customer_id = 'c' AND seq > 5 ORDER BY seq LIMIT 1",
            "SELECT MIN(seq) FROM outbox WHERE head = 1 AND register = 'r' AND state = 'accepted'",
            "SELECT seq FROM outbox WHERE event_id = 'e'",
            "DELETE FROM outbox WHERE finished_at < 'x' AND state IN ('delivered', 'dropped')",
            "SELECT seq FROM outbox WHERE source IN ('kfr remove', 'kfr add') AND finished_at IS NULL ORDER BY seq",
            // A customer's events (`kfr history`) and history lines.
            "SELECT seq FROM outbox WHERE register = 'r' AND customer_id = 'c' ORDER BY seq",
            "SELECT outcome FROM history WHERE customer_id = 'c' AND at >= COALESCE(NULL, '') AND at < COALESCE(NULL, 'z') ORDER BY at, id",
            // Claims that ran out (`recover`) are heads in flight: the index of heads.
            "UPDATE outbox SET state = 'pending' WHERE head = 1 AND register = 'r' AND state = 'in_flight'
               AND (claimed_until IS NULL OR claimed_until <= 'x') AND (claim_epoch IS NULL OR claim_epoch < 2)",
        ] {
            let p = plan(&mut s, sql);
            // Only the partial index of held operations (a handful of rows) may be read whole.
            let scans = p.lines().filter(|l| {
                (l.starts_with("SCAN outbox") && !l.ends_with("INDEX outbox_held")) || l.starts_with("SCAN history")
            });
            assert_eq!(scans.count(), 0, "{sql}\n{p}");
            assert!(!p.contains("TEMP B-TREE"), "sorts in memory: {sql}\n{p}");
        }
    }

    /// The state file deleted or replaced under a running agent: an enqueue must fail (so its
    /// source answers 503) rather than commit into a file nobody will open again.
    #[test]
    fn nothing_is_committed_once_the_file_at_the_path_is_not_the_one_opened() {
        use crate::error::Hinted as _;
        use conformance::{ev, t};
        let (d, mut s) = store();
        let path = d.path().join("s.db");
        let reg = "env|http://kfr|916960190";
        s.enqueue(reg, &[ev("e1", "c1", Operation::Add)], None, t(0)).unwrap();
        // Moved away and a fresh file put in its place (a restore over a running agent, say).
        std::fs::rename(&path, d.path().join("moved.db")).unwrap();
        let err = s
            .enqueue(reg, &[ev("e2", "c1", Operation::Add)], None, t(0))
            .unwrap_err();
        assert!(matches!(err, StoreError::Lost { .. }), "{err:?}");
        assert!(err.hint().unwrap().contains("restart kfr"));
        SqliteBackend::open(&path).unwrap();
        let r = s.enqueue(reg, &[ev("e3", "c1", Operation::Add)], None, t(0));
        assert!(matches!(r, Err(StoreError::Lost { .. })), "{r:?}");
        // Deleted outright.
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(
            s.enqueue(reg, &[ev("e4", "c1", Operation::Add)], None, t(0)),
            Err(StoreError::Lost { .. })
        ));
    }

    #[test]
    fn sqlite_failures_map_to_what_an_operator_can_act_on() {
        use rusqlite::ffi;
        let err = |code| rusqlite::Error::SqliteFailure(ffi::Error::new(code), None);
        assert!(matches!(
            store_error("/s.db", err(ffi::SQLITE_BUSY)),
            StoreError::Busy { .. }
        ));
        assert!(matches!(
            store_error("/s.db", err(ffi::SQLITE_CORRUPT)),
            StoreError::Corrupt { .. }
        ));
        assert!(matches!(
            store_error("/s.db", err(ffi::SQLITE_NOTADB)),
            StoreError::Corrupt { .. }
        ));
        for code in [
            ffi::SQLITE_FULL,
            ffi::SQLITE_READONLY,
            ffi::SQLITE_IOERR,
            ffi::SQLITE_CANTOPEN,
        ] {
            match store_error("/s.db", err(code)) {
                StoreError::NotWritable { store, .. } => assert_eq!(store, "/s.db"),
                other => panic!("{code}: {other:?}"),
            }
        }
        use crate::error::Hinted as _;
        // (cli::report::diagnose lists StoreError; its own test keeps that honest.)
        assert!(
            StoreError::Busy { store: "/s.db".into() }
                .hint()
                .unwrap()
                .contains("another kfr process")
        );
        assert!(
            StoreError::Corrupt {
                store: "/s.db".into(),
                detail: "x".into()
            }
            .hint()
            .unwrap()
            .contains("/s.db")
        );
    }
}
