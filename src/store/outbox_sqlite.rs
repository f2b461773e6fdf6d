//! The SQLite backend of the outbox: [`OutboxBackend`] for [`Store`] (docs/specs/outbox.md).
//!
//! Layout (migration 4): one `outbox` row per event, `seq` its issue order (AUTOINCREMENT, so a
//! purge never lets a seq be reused). The column `head` is 1 on each customer's oldest
//! unfinished event and NULL elsewhere; it moves only when a head finishes (delivered, dropped),
//! to the customer's next event. So `claim_ready` reads the index of heads by state — the
//! customers that may go, oldest first, `limit` of them — and never the backlog behind them,
//! whatever its size. Only a head is ever in flight, accepted or dead-lettered, so every rule
//! about one customer's queue is a rule about its head row.
//!
//! Every method is one transaction; those that read and then write take the write lock first
//! (IMMEDIATE), so two processes on one file cannot both see a head as free. Times are stored as
//! RFC 3339 UTC with nanoseconds (fixed width, so they sort as text).

use super::Store;
use super::outbox::{ClaimEnd, ClaimFinished, OwnEvent};
use super::outbox::{
    DeadLetter, DeadLetters, Delivery, Enqueued, EventState, LedgerEntry, LedgerState, NewEvent, OutboxBackend,
    OutboxEvent, OutboxStatus, Recovered, Rejection, Seq, Settlement, StoreError,
};
use super::queue::Operation;
use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use rusqlite::{Connection, OptionalExtension as _, Transaction, TransactionBehavior, params};
use uuid::Uuid;

/// A time as stored.
pub(super) fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Nanos, true)
}

fn parse_ts(s: &str) -> rusqlite::Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| super::jobs::bad_value("outbox time", s))
}

fn opt_ts(s: Option<String>) -> rusqlite::Result<Option<DateTime<Utc>>> {
    s.as_deref().map(parse_ts).transpose()
}

fn parse_uuid(s: &str) -> rusqlite::Result<Uuid> {
    Uuid::parse_str(s).map_err(|_| super::jobs::bad_value("outbox correlation id", s))
}

pub(super) fn state_str(s: EventState) -> &'static str {
    match s {
        EventState::Pending => "pending",
        EventState::InFlight => "in_flight",
        EventState::Accepted => "accepted",
        EventState::Delivered => "delivered",
        EventState::DeadLettered => "dead_lettered",
        EventState::Dropped => "dropped",
    }
}

pub(super) fn parse_state(s: &str) -> rusqlite::Result<EventState> {
    Ok(match s {
        "pending" => EventState::Pending,
        "in_flight" => EventState::InFlight,
        "accepted" => EventState::Accepted,
        "delivered" => EventState::Delivered,
        "dead_lettered" => EventState::DeadLettered,
        "dropped" => EventState::Dropped,
        other => return Err(super::jobs::bad_value("outbox.state", other)),
    })
}

fn delivery_str(d: Delivery) -> &'static str {
    match d {
        Delivery::Added => "added",
        Delivery::AlreadyPresent => "already_present",
        Delivery::Removed => "removed",
        Delivery::NotFound => "not_found",
        Delivery::IngestedSeen => "ingested_seen",
        Delivery::IngestedByTime => "ingested_by_time",
    }
}

/// What a delivery leaves KFR holding for the customer.
fn ledger_state(d: Delivery) -> LedgerState {
    match d {
        Delivery::Added | Delivery::AlreadyPresent | Delivery::IngestedSeen | Delivery::IngestedByTime => {
            LedgerState::Active
        }
        Delivery::Removed | Delivery::NotFound => LedgerState::Ended,
    }
}

/// The columns of [`event_row`], in its order.
pub(super) const EVENT_COLUMNS: &str = "seq, register, event_id, op, customer_id, start_date, occurred_at, source, \
     received_at, correlation_id, state, attempts, next_attempt_at, failing_since, last_error, \
     batch_correlation_id, accepted_at";

pub(super) fn event_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<OutboxEvent> {
    let op: String = r.get(3)?;
    let start: Option<String> = r.get(5)?;
    let bcid: Option<String> = r.get(15)?;
    Ok(OutboxEvent {
        seq: r.get(0)?,
        register: r.get(1)?,
        event_id: r.get(2)?,
        op: match op.as_str() {
            "add" => Operation::Add,
            "remove" => Operation::Remove,
            other => return Err(super::jobs::bad_value("outbox.op", other)),
        },
        customer_id: r.get(4)?,
        start_date: start
            .map(|d| {
                d.parse::<NaiveDate>()
                    .map_err(|_| super::jobs::bad_value("outbox.start_date", &d))
            })
            .transpose()?,
        occurred_at: parse_ts(&r.get::<_, String>(6)?)?,
        source: r.get(7)?,
        received_at: parse_ts(&r.get::<_, String>(8)?)?,
        correlation_id: parse_uuid(&r.get::<_, String>(9)?)?,
        state: parse_state(&r.get::<_, String>(10)?)?,
        attempts: r.get(11)?,
        next_attempt_at: opt_ts(r.get(12)?)?,
        failing_since: opt_ts(r.get(13)?)?,
        last_error: r.get(14)?,
        batch_correlation_id: bcid.as_deref().map(parse_uuid).transpose()?,
        accepted_at: opt_ts(r.get(16)?)?,
    })
}

/// An operation's failure before its store path is known.
pub(super) enum Fault {
    Sql(rusqlite::Error),
    Store(StoreError),
}

impl From<rusqlite::Error> for Fault {
    fn from(e: rusqlite::Error) -> Self {
        Fault::Sql(e)
    }
}

fn wrong(seq: Seq, problem: impl Into<String>) -> Fault {
    Fault::Store(StoreError::WrongState {
        seq,
        problem: problem.into(),
    })
}

/// SQLite's answer in the terms an operator acts on (busy: wait or stop the other process;
/// corrupt: restore; not writable: free the disk or fix permissions).
pub(super) fn store_error(path: &str, e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode as C;
    let detail = e.to_string();
    match e.sqlite_error_code() {
        Some(C::DatabaseBusy | C::DatabaseLocked) => StoreError::Busy { path: path.into() },
        Some(C::DatabaseCorrupt | C::NotADatabase) => StoreError::Corrupt {
            path: path.into(),
            detail,
        },
        Some(C::DiskFull | C::ReadOnly | C::SystemIoFailure | C::CannotOpen | C::PermissionDenied) => {
            StoreError::NotWritable {
                path: path.into(),
                detail,
            }
        }
        _ => StoreError::Other(detail),
    }
}

impl crate::error::Hinted for StoreError {
    fn hint(&self) -> Option<String> {
        Some(match self {
            StoreError::Busy { .. } => {
                "another kfr process holds the state store's write lock; wait for it to finish, or stop it, and run the command again".into()
            }
            StoreError::Corrupt { path, .. } => format!(
                "{path} is damaged or not a kfr state store; restore it from a backup (it is the record of what kfr sent) or point kfr at the right file"
            ),
            StoreError::NotWritable { path, .. } => format!(
                "free disk space or fix the permissions of {path} and its directory (kfr needs to write it, its -wal and -shm files)"
            ),
            StoreError::Replaced { path } => format!(
                "put the store back at {path} (or restore it from a backup) and restart kfr: events acknowledged before this were written to the file kfr had open"
            ),
            StoreError::WrongState { .. } => return None,
            StoreError::Stopped => "the state store's thread stopped after an earlier error; see the log above it and restart kfr".into(),
            StoreError::Other(_) => return None,
        })
    }
}

/// Where a later head comes from when a head finishes: the customer's next event, if any (only
/// heads finish, so every later event of the customer is unfinished).
pub(super) fn finish_head(tx: &Transaction<'_>, seq: Seq, register: &str, customer: &str) -> rusqlite::Result<()> {
    // Cached statements here and in the settle path: they run once per delivered event, and
    // compiling them each time was a measurable share of the agent's CPU (docs/benchmarks.md).
    tx.prepare_cached("UPDATE outbox SET head = NULL WHERE seq = ?1")?
        .execute([seq])?;
    promote_next(tx, seq, register, customer)
}

/// Makes the customer's next event after `seq` its head (the head `seq` has just finished).
fn promote_next(tx: &Transaction<'_>, seq: Seq, register: &str, customer: &str) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "UPDATE outbox SET head = 1 WHERE seq = (SELECT seq FROM outbox
             WHERE register = ?1 AND customer_id = ?2 AND seq > ?3 ORDER BY seq LIMIT 1)",
    )?
    .execute(params![register, customer, seq])?;
    Ok(())
}

/// Stores one event at the end of its customer's queue (the head if the queue was empty);
/// `None` when its event id is stored already (nothing written). One statement: the agent's
/// intake runs it for every event, so it decides the head itself (no unfinished event of the
/// customer before it) and leaves a known event id alone.
pub(super) fn try_insert_event(
    tx: &Transaction<'_>,
    register: &str,
    ev: &NewEvent,
    correlation_id: Uuid,
    received_at: DateTime<Utc>,
) -> rusqlite::Result<Option<Seq>> {
    tx.prepare_cached(
        "INSERT INTO outbox (register, event_id, op, customer_id, start_date, occurred_at, source, received_at,
                             correlation_id, state, head)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'pending',
                 CASE WHEN COALESCE((SELECT state IN ('delivered', 'dropped') FROM outbox
                                     WHERE register = ?1 AND customer_id = ?4 ORDER BY seq DESC LIMIT 1), 1)
                      THEN 1 END)
         ON CONFLICT (event_id) DO NOTHING
         RETURNING seq",
    )?
    .query_row(
        params![
            register,
            ev.event_id,
            ev.op.as_str(),
            ev.customer_id,
            ev.start_date.map(|d| d.to_string()),
            ts(ev.occurred_at),
            ev.source,
            ts(received_at),
            correlation_id.to_string(),
        ],
        |r| r.get(0),
    )
    .optional()
}

/// [`try_insert_event`] for an event id the caller knows is new; a known one is the unique
/// constraint's failure, as a plain insert would report it.
pub(super) fn insert_event(
    tx: &Transaction<'_>,
    register: &str,
    ev: &NewEvent,
    correlation_id: Uuid,
    received_at: DateTime<Utc>,
) -> rusqlite::Result<Seq> {
    try_insert_event(tx, register, ev, correlation_id, received_at)?.ok_or_else(|| {
        rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE),
            Some(format!("event id {} is stored already", ev.event_id)),
        )
    })
}

/// The load job holding removes of `register` back: a running job of that register, or of an
/// unknown one (NULL: the safe reading).
pub(super) fn barrier_in(conn: &Connection, register: &str) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached(
        "SELECT id FROM load_jobs WHERE status = 'running' AND (register = ?1 OR register IS NULL)
         ORDER BY id LIMIT 1",
    )?
    .query_row([register], |r| r.get(0))
    .optional()
}

/// Records that KFR now holds (or no longer holds) the customer's relationship.
pub(super) fn set_ledger(
    tx: &Transaction<'_>,
    register: &str,
    customer: &str,
    state: LedgerState,
    start_date: Option<NaiveDate>,
    since: DateTime<Utc>,
    correlation_id: Uuid,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO ledger_current (register, customer_id, state, start_date, since, correlation_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (register, customer_id) DO UPDATE SET
             state = excluded.state, start_date = excluded.start_date, since = excluded.since,
             correlation_id = excluded.correlation_id",
    )?
    .execute(params![
        register,
        customer,
        match state {
            LedgerState::Active => "active",
            LedgerState::Ended => "ended",
        },
        start_date.map(|d| d.to_string()),
        ts(since),
        correlation_id.to_string()
    ])?;
    Ok(())
}

/// One event by seq.
fn event(tx: &Transaction<'_>, seq: Seq) -> Result<OutboxEvent, Fault> {
    let sql = format!("SELECT {EVENT_COLUMNS} FROM outbox WHERE seq = ?1");
    tx.prepare_cached(&sql)?
        .query_row([seq], event_row)
        .optional()?
        .ok_or_else(|| wrong(seq, "does not exist"))
}

/// Why `s` matched no event that may be settled: the event is missing, in another state, or of
/// the other operation. Only reached on a caller's mistake, so it may read the whole row.
fn unsettleable(tx: &Transaction<'_>, s: &Settlement) -> Fault {
    let ev = match event(tx, s.seq) {
        Ok(ev) => ev,
        Err(f) => return f,
    };
    if let Err(f) = require(&ev, &[EventState::InFlight, EventState::Accepted], "settled") {
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

fn require(ev: &OutboxEvent, states: &[EventState], doing: &str) -> Result<(), Fault> {
    if states.contains(&ev.state) {
        Ok(())
    } else {
        Err(wrong(
            ev.seq,
            format!("is {} and cannot be {doing}", state_str(ev.state)),
        ))
    }
}

impl Store {
    /// Runs `f` in one transaction (IMMEDIATE when `write`), committing if it succeeds.
    fn outbox_tx<T>(
        &mut self,
        write: bool,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, Fault>,
    ) -> Result<T, StoreError> {
        let path = self.path.display().to_string();
        let behavior = if write {
            TransactionBehavior::Immediate
        } else {
            TransactionBehavior::Deferred
        };
        let identity = self.identity;
        let file = self.path.clone();
        // A write goes only to the file that is still at the store's path: one written to a
        // deleted or replaced file would be acknowledged and then lost. Checked before (a
        // replacement can also confuse SQLite's shared WAL index, whose errors say less) and
        // again just before the commit.
        let still_ours = || -> Result<(), Fault> {
            if write && super::file_identity(&file) != identity {
                return Err(Fault::Store(StoreError::Replaced {
                    path: file.display().to_string(),
                }));
            }
            Ok(())
        };
        let run = |conn: &mut Connection| -> Result<T, Fault> {
            still_ours()?;
            let tx = conn.transaction_with_behavior(behavior)?;
            let out = f(&tx)?;
            still_ours()?;
            tx.commit()?;
            Ok(out)
        };
        run(&mut self.conn).map_err(|e| match e {
            Fault::Sql(e) => store_error(&path, e),
            Fault::Store(e) => e,
        })
    }
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
        let rejection: Option<String> = r.get(17)?;
        let dead_at: Option<String> = r.get(18)?;
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
            "SELECT COUNT(*) FROM outbox WHERE register = ?1 AND customer_id = ?2 AND seq > ?3",
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

impl OutboxBackend for Store {
    fn enqueue(&mut self, register: &str, events: &[NewEvent]) -> Result<Vec<Enqueued>, StoreError> {
        let now = Utc::now();
        self.outbox_tx(true, |tx| {
            let mut out = Vec::with_capacity(events.len());
            for ev in events {
                let stored = try_insert_event(tx, register, ev, Uuid::new_v4(), now)?;
                out.push(match stored {
                    Some(seq) => Enqueued::Stored { seq },
                    None => Enqueued::Duplicate {
                        seq: tx
                            .prepare_cached("SELECT seq FROM outbox WHERE event_id = ?1")?
                            .query_row([&ev.event_id], |r| r.get(0))?,
                    },
                });
            }
            Ok(out)
        })
    }

    fn recover(&mut self, register: &str) -> Result<Recovered, StoreError> {
        self.outbox_tx(true, |tx| {
            let requeued = tx.execute(
                "UPDATE outbox SET state = 'pending', claimer = NULL
                 WHERE head = 1 AND register = ?1 AND state = 'in_flight' AND batch_correlation_id IS NULL",
                [register],
            )? as u64;
            let unknown_uploads = tx.execute(
                "UPDATE outbox SET state = 'accepted', accepted_at = NULL, claimer = NULL
                 WHERE head = 1 AND register = ?1 AND state = 'in_flight' AND batch_correlation_id IS NOT NULL",
                [register],
            )? as u64;
            Ok(Recovered {
                requeued,
                unknown_uploads,
            })
        })
    }

    fn claim_ready(
        &mut self,
        register: &str,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<OutboxEvent>, StoreError> {
        self.outbox_tx(true, |tx| {
            let removes_may_go = barrier_in(tx, register)?.is_none();
            // One statement marks the oldest ready heads and returns them (RETURNING gives no
            // order, so they are sorted here).
            let sql = format!(
                "UPDATE outbox SET state = 'in_flight', claimer = NULL WHERE seq IN (
                     SELECT seq FROM outbox
                     WHERE head = 1 AND register = ?1 AND state = 'pending'
                       AND (next_attempt_at IS NULL OR next_attempt_at <= ?2)
                       AND (?3 OR op = 'add')
                     ORDER BY seq LIMIT ?4)
                 RETURNING {EVENT_COLUMNS}"
            );
            let mut events: Vec<OutboxEvent> = tx
                .prepare_cached(&sql)?
                .query_map(params![register, ts(now), removes_may_go, limit as i64], event_row)?
                .collect::<Result<_, _>>()?;
            events.sort_unstable_by_key(|e| e.seq);
            Ok(events)
        })
    }

    fn begin_batch(&mut self, seqs: &[Seq], batch_correlation_id: Uuid) -> Result<(), StoreError> {
        self.outbox_tx(true, |tx| {
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
        self.outbox_tx(true, |tx| {
            // The upload's answer is recorded now: one attempt, unless a probe of an unknown
            // upload is what found it accepted (its attempt was never answered, so it counts now).
            let n = tx.execute(
                "UPDATE outbox SET attempts = attempts + (accepted_at IS NULL), state = 'accepted', accepted_at = ?1
                 WHERE batch_correlation_id = ?2 AND state IN ('in_flight', 'accepted')",
                params![ts(at), batch_correlation_id.to_string()],
            )?;
            if n == 0 {
                return Err(wrong(
                    0,
                    format!("batch {batch_correlation_id} carries no event in flight"),
                ));
            }
            Ok(())
        })
    }

    fn batch_unknown(&mut self, batch_correlation_id: Uuid) -> Result<(), StoreError> {
        self.outbox_tx(true, |tx| {
            // No answer: the events stay their customers' heads as `accepted` with no
            // `accepted_at`, so nothing resends them before a probe says KFR does not have them.
            let n = tx.execute(
                "UPDATE outbox SET state = 'accepted', accepted_at = NULL, claimer = NULL
                 WHERE batch_correlation_id = ?1 AND state = 'in_flight'",
                [batch_correlation_id.to_string()],
            )?;
            if n == 0 {
                return Err(wrong(
                    0,
                    format!("batch {batch_correlation_id} carries no event in flight"),
                ));
            }
            Ok(())
        })
    }

    fn accepted(&mut self, register: &str) -> Result<Vec<OutboxEvent>, StoreError> {
        self.outbox_tx(false, |tx| {
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
        self.outbox_tx(true, |tx| {
            for s in settlements {
                let wanted = ledger_state(s.delivery);
                let op = match wanted {
                    LedgerState::Active => Operation::Add,
                    LedgerState::Ended => Operation::Remove,
                };
                // One statement checks the state and the operation, records the outcome, ends the
                // head and returns what the ledger needs; the hot path of every delivery. A
                // single's answer is an attempt recorded now; a batch event's was counted when
                // the batch was accepted.
                let row = tx
                    .prepare_cached(
                        "UPDATE outbox SET state = 'delivered', finished_at = ?1, delivery = ?2,
                             echoed_correlation_id = ?3, attempts = attempts + (state = 'in_flight'),
                             failing_since = NULL, next_attempt_at = NULL, claimer = NULL, head = NULL
                         WHERE seq = ?4 AND state IN ('in_flight', 'accepted') AND op = ?5
                         RETURNING register, customer_id, start_date, correlation_id",
                    )?
                    .query_row(
                        params![
                            ts(s.at),
                            delivery_str(s.delivery),
                            s.echoed_correlation_id,
                            s.seq,
                            op.as_str()
                        ],
                        |r| {
                            Ok((
                                r.get::<_, String>(0)?,
                                r.get::<_, String>(1)?,
                                r.get::<_, Option<String>>(2)?,
                                r.get::<_, String>(3)?,
                            ))
                        },
                    )
                    .optional()?;
                let Some((register, customer, start, correlation_id)) = row else {
                    return Err(unsettleable(tx, s));
                };
                promote_next(tx, s.seq, &register, &customer)?;
                let start = match (wanted, start) {
                    (LedgerState::Active, Some(d)) => Some(
                        d.parse::<NaiveDate>()
                            .map_err(|_| super::jobs::bad_value("outbox.start_date", &d))?,
                    ),
                    _ => None,
                };
                set_ledger(
                    tx,
                    &register,
                    &customer,
                    wanted,
                    start,
                    s.at,
                    parse_uuid(&correlation_id)?,
                )?;
            }
            Ok(())
        })
    }

    fn retry_later(&mut self, seq: Seq, at: DateTime<Utc>, error: &str) -> Result<(), StoreError> {
        let now = Utc::now();
        self.outbox_tx(true, |tx| {
            require(
                &event(tx, seq)?,
                &[EventState::InFlight, EventState::Accepted],
                "retried later",
            )?;
            tx.execute(
                "UPDATE outbox SET state = 'pending', attempts = attempts + 1, next_attempt_at = ?1,
                     failing_since = COALESCE(failing_since, ?2), last_error = ?3,
                     batch_correlation_id = NULL, accepted_at = NULL, claimer = NULL
                 WHERE seq = ?4",
                params![ts(at), ts(now), error, seq],
            )?;
            Ok(())
        })
    }

    fn release(&mut self, seqs: &[Seq]) -> Result<(), StoreError> {
        self.outbox_tx(true, |tx| {
            for &seq in seqs {
                require(&event(tx, seq)?, &[EventState::InFlight, EventState::Accepted], "released")?;
                tx.execute(
                    "UPDATE outbox SET state = 'pending', batch_correlation_id = NULL, accepted_at = NULL, claimer = NULL
                     WHERE seq = ?1",
                    [seq],
                )?;
            }
            Ok(())
        })
    }

    fn dead_letter(&mut self, seq: Seq, rejection: &Rejection, at: DateTime<Utc>) -> Result<(), StoreError> {
        let json = serde_json::to_string(rejection).map_err(|e| StoreError::Other(e.to_string()))?;
        self.outbox_tx(true, |tx| {
            require(
                &event(tx, seq)?,
                &[EventState::InFlight, EventState::Accepted],
                "dead-lettered",
            )?;
            tx.execute(
                "UPDATE outbox SET state = 'dead_lettered', attempts = attempts + 1, rejection = ?1, dead_at = ?2,
                     last_error = ?3, batch_correlation_id = NULL, accepted_at = NULL, claimer = NULL
                 WHERE seq = ?4",
                params![json, ts(at), rejection.reason, seq],
            )?;
            Ok(())
        })
    }

    fn dead_letters(&mut self, register: Option<&str>) -> Result<Vec<DeadLetter>, StoreError> {
        self.outbox_tx(false, |tx| match register {
            Some(r) => dead_letters_where(tx, "AND register = ?1", &[&r]),
            None => dead_letters_where(tx, "", &[]),
        })
    }

    fn retry_dead(&mut self, which: DeadLetters) -> Result<u64, StoreError> {
        self.outbox_tx(true, |tx| {
            const SET: &str = "UPDATE outbox SET state = 'pending', next_attempt_at = NULL, failing_since = NULL";
            Ok(match which {
                DeadLetters::One(seq) => {
                    require(
                        &event(tx, seq)?,
                        &[EventState::DeadLettered],
                        "retried from the dead letters",
                    )?;
                    tx.execute(&format!("{SET} WHERE seq = ?1"), [seq])? as u64
                }
                DeadLetters::All => {
                    tx.execute(&format!("{SET} WHERE head = 1 AND state = 'dead_lettered'"), [])? as u64
                }
            })
        })
    }

    fn drop_dead(&mut self, which: DeadLetters, at: DateTime<Utc>) -> Result<u64, StoreError> {
        self.outbox_tx(true, |tx| {
            let targets: Vec<OutboxEvent> = match which {
                DeadLetters::One(seq) => {
                    let ev = event(tx, seq)?;
                    require(&ev, &[EventState::DeadLettered], "dropped")?;
                    vec![ev]
                }
                DeadLetters::All => {
                    let sql = format!("SELECT {EVENT_COLUMNS} FROM outbox WHERE head = 1 AND state = 'dead_lettered'");
                    tx.prepare(&sql)?.query_map([], event_row)?.collect::<Result<_, _>>()?
                }
            };
            for ev in &targets {
                tx.execute(
                    "UPDATE outbox SET state = 'dropped', finished_at = ?1 WHERE seq = ?2",
                    params![ts(at), ev.seq],
                )?;
                finish_head(tx, ev.seq, &ev.register, &ev.customer_id)?;
            }
            Ok(targets.len() as u64)
        })
    }

    fn status(&mut self, register: Option<&str>) -> Result<OutboxStatus, StoreError> {
        self.outbox_tx(false, |tx| {
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
        self.outbox_tx(true, |tx| {
            Ok(tx.execute(
                "DELETE FROM outbox WHERE finished_at < ?1 AND state IN ('delivered', 'dropped')",
                [ts(before)],
            )? as u64)
        })
    }

    fn unfinished_customers(&mut self, register: &str) -> Result<std::collections::HashSet<String>, StoreError> {
        self.outbox_tx(false, |tx| {
            // Every customer with an unfinished event has exactly one head row.
            let mut stmt = tx.prepare("SELECT customer_id FROM outbox WHERE head = 1 AND register = ?1")?;
            let out = stmt
                .query_map([register], |r| r.get::<_, String>(0))?
                .collect::<Result<_, _>>()?;
            Ok(out)
        })
    }

    fn ledger(&mut self, register: &str) -> Result<Vec<LedgerEntry>, StoreError> {
        self.outbox_tx(false, |tx| {
            let mut stmt = tx.prepare(
                "SELECT customer_id, state, start_date, since, correlation_id FROM ledger_current
                 WHERE register = ?1 ORDER BY customer_id",
            )?;
            let rows = stmt.query_map([register], |r| {
                let state: String = r.get(1)?;
                let start: Option<String> = r.get(2)?;
                Ok(LedgerEntry {
                    customer_id: r.get(0)?,
                    state: match state.as_str() {
                        "active" => LedgerState::Active,
                        "ended" => LedgerState::Ended,
                        other => return Err(super::jobs::bad_value("ledger_current.state", other)),
                    },
                    start_date: start
                        .map(|d| {
                            d.parse::<NaiveDate>()
                                .map_err(|_| super::jobs::bad_value("ledger_current.start_date", &d))
                        })
                        .transpose()?,
                    since: parse_ts(&r.get::<_, String>(3)?)?,
                    correlation_id: parse_uuid(&r.get::<_, String>(4)?)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    fn barrier(&mut self, register: &str) -> Result<Option<i64>, StoreError> {
        self.outbox_tx(false, |tx| Ok(barrier_in(tx, register)?))
    }

    fn enqueue_and_claim(
        &mut self,
        register: &str,
        event: &NewEvent,
        correlation_id: Uuid,
        claimer: &str,
        now: DateTime<Utc>,
    ) -> Result<OwnEvent, StoreError> {
        self.outbox_tx(true, |tx| {
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
        self.outbox_tx(true, |tx| finish_claim_in(tx, seq, claimer, end, at))
    }

    fn claim_head_of(
        &mut self,
        register: &str,
        customer: &str,
        sources: &[&str],
        claimer: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<OutboxEvent>, StoreError> {
        self.outbox_tx(true, |tx| {
            let sql =
                format!("SELECT {EVENT_COLUMNS} FROM outbox WHERE register = ?1 AND customer_id = ?2 AND head = 1");
            let Some(mut head) = tx.query_row(&sql, params![register, customer], event_row).optional()? else {
                return Ok(None);
            };
            let due = head.next_attempt_at.is_none_or(|t| t <= now);
            let barred = head.op == Operation::Remove && barrier_in(tx, register)?.is_some();
            if head.state != EventState::Pending || !due || barred || !sources.contains(&head.source.as_str()) {
                return Ok(None);
            }
            tx.execute(
                "UPDATE outbox SET state = 'in_flight', claimer = ?1 WHERE seq = ?2",
                params![claimer, head.seq],
            )?;
            head.state = EventState::InFlight;
            Ok(Some(head))
        })
    }
}

// ---- A caller's own claim (`kfr add`, `kfr remove`) ------------------------------------------
//
// Kept apart from the dispatcher's paths above: these run once per command, so they favour
// plain statements over cached ones, and share only the helpers (`insert_event`, `finish_head`,
// `set_ledger`) with them.

/// [`OutboxBackend::enqueue_and_claim`] inside its write transaction: the look at the customer's
/// queue, the insert and the claim happen under one write lock, so no dispatcher's `claim_ready`
/// can see the event pending in between.
fn enqueue_and_claim_in(
    tx: &Transaction<'_>,
    register: &str,
    ev: &NewEvent,
    correlation_id: Uuid,
    claimer: &str,
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
    tx.execute(
        "UPDATE outbox SET state = 'in_flight', claimer = ?1 WHERE seq = ?2 AND head = 1 AND state = 'pending'",
        params![claimer, seq],
    )?;
    let claimed = event(tx, seq)?;
    require(&claimed, &[EventState::InFlight], "claimed")?;
    Ok(OwnEvent::Claimed(claimed))
}

/// [`OutboxBackend::finish_claim`] inside its write transaction.
fn finish_claim_in(
    tx: &Transaction<'_>,
    seq: Seq,
    claimer: &str,
    end: &ClaimEnd,
    at: DateTime<Utc>,
) -> Result<ClaimFinished, Fault> {
    let ev = event(tx, seq)?;
    let holder: Option<String> = tx.query_row("SELECT claimer FROM outbox WHERE seq = ?1", [seq], |r| r.get(0))?;
    if ev.state != EventState::InFlight || holder.as_deref() != Some(claimer) {
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
                     attempts = attempts + 1, failing_since = NULL, next_attempt_at = NULL, last_error = NULL,
                     claimer = NULL
                 WHERE seq = ?4",
                params![ts(at), delivery_str(*delivery), echoed_correlation_id, seq],
            )?;
            finish_head(tx, seq, &ev.register, &ev.customer_id)?;
            let start = (wanted == LedgerState::Active).then_some(ev.start_date).flatten();
            set_ledger(tx, &ev.register, &ev.customer_id, wanted, start, at, ev.correlation_id)?;
        }
        ClaimEnd::RetryLater { not_before, error } => {
            tx.execute(
                "UPDATE outbox SET state = 'pending', attempts = attempts + 1, next_attempt_at = ?1,
                     failing_since = COALESCE(failing_since, ?2), last_error = ?3, claimer = NULL
                 WHERE seq = ?4",
                params![ts(*not_before), ts(at), error, seq],
            )?;
        }
        ClaimEnd::Release { error } => {
            tx.execute(
                "UPDATE outbox SET state = 'pending', last_error = ?1, claimer = NULL WHERE seq = ?2",
                params![error, seq],
            )?;
        }
        ClaimEnd::DeadLetter(rejection) => {
            let json = serde_json::to_string(rejection).map_err(|e| Fault::Store(StoreError::Other(e.to_string())))?;
            tx.execute(
                "UPDATE outbox SET state = 'dead_lettered', attempts = attempts + 1, rejection = ?1, dead_at = ?2,
                     last_error = ?3, claimer = NULL
                 WHERE seq = ?4",
                params![json, ts(at), rejection.reason, seq],
            )?;
        }
    }
    Ok(ClaimFinished::Recorded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance;

    fn store() -> (tempfile::TempDir, Store) {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("s.db")).unwrap();
        (d, s)
    }

    /// The SQLite backend under the conformance suite: a fresh store in a temporary directory;
    /// loads are jobs in `load_jobs`; a poisoned event id fails its insert by a temporary trigger.
    struct Sqlite {
        _dir: tempfile::TempDir,
        store: Store,
    }

    impl conformance::Harness for Sqlite {
        fn backend(&mut self) -> &mut dyn OutboxBackend {
            &mut self.store
        }
        fn start_load(&mut self, register: &str) -> i64 {
            let job = self.store.create_job("in.txt", "00", "{}", 0, &[]).unwrap();
            self.store
                .conn()
                .execute(
                    "UPDATE load_jobs SET register = ?1 WHERE id = ?2",
                    params![register, job],
                )
                .unwrap();
            job
        }
        fn end_load(&mut self, job: i64) {
            self.store.abandon_job(job).unwrap();
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
        Box::new(Sqlite { _dir: dir, store })
    }

    conformance::outbox_conformance_tests!(harness());

    mod random {
        use super::*;
        use crate::store::conformance::{R, ev, t};
        use proptest::prelude::*;
        use std::collections::{HashMap, VecDeque};

        #[derive(Debug, Clone)]
        enum Step {
            Enqueue { customer: u8, add: bool },
            Claim { limit: u8 },
            Settle(u8),
            Retry(u8),
            DeadLetter(u8),
            Release(u8),
            RetryDead,
            DropDead,
            Recover,
        }

        fn step() -> impl Strategy<Value = Step> {
            prop_oneof![
                4 => (0u8..5, any::<bool>()).prop_map(|(customer, add)| Step::Enqueue { customer, add }),
                3 => (1u8..6).prop_map(|limit| Step::Claim { limit }),
                2 => any::<u8>().prop_map(Step::Settle),
                1 => any::<u8>().prop_map(Step::Retry),
                1 => any::<u8>().prop_map(Step::DeadLetter),
                1 => any::<u8>().prop_map(Step::Release),
                1 => Just(Step::RetryDead),
                1 => Just(Step::DropDead),
                1 => Just(Step::Recover),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

            /// Whatever happens to a store, a claim hands out only a customer's oldest unfinished
            /// event, and never a second one of a customer while one is out.
            #[test]
            fn random_histories_hand_out_only_heads_one_per_customer(steps in proptest::collection::vec(step(), 1..60)) {
                let (_d, mut s) = store();
                // Durability is not what this checks; fsyncs would only slow it down.
                s.conn().execute_batch("PRAGMA synchronous = OFF").unwrap();
                let mut open: HashMap<String, VecDeque<Seq>> = HashMap::new();
                let mut out: Vec<OutboxEvent> = vec![];
                let mut n = 0;
                for step in steps {
                    let take = |out: &mut Vec<OutboxEvent>, i: u8| (!out.is_empty()).then(|| out.remove(i as usize % out.len()));
                    match step {
                        Step::Enqueue { customer, add } => {
                            n += 1;
                            let c = format!("customer-{customer}");
                            let op = if add { Operation::Add } else { Operation::Remove };
                            let r = s.enqueue(R, &[ev(&format!("e{n}"), &c, op)]).unwrap();
                            let Enqueued::Stored { seq } = r[0] else { panic!("{r:?}") };
                            open.entry(c).or_default().push_back(seq);
                        }
                        Step::Claim { limit } => {
                            let got = s.claim_ready(R, t(10), limit as usize).unwrap();
                            prop_assert!(got.len() <= limit as usize);
                            for e in got {
                                prop_assert_eq!(open[&e.customer_id].front(), Some(&e.seq), "not the head");
                                prop_assert!(out.iter().all(|o| o.customer_id != e.customer_id), "two out for one customer");
                                out.push(e);
                            }
                        }
                        Step::Settle(i) => if let Some(e) = take(&mut out, i) {
                            let delivery = if e.op == Operation::Add { Delivery::Added } else { Delivery::Removed };
                            s.settle(&[Settlement { seq: e.seq, delivery, echoed_correlation_id: None, at: t(10) }]).unwrap();
                            open.get_mut(&e.customer_id).unwrap().pop_front();
                        },
                        Step::Retry(i) => if let Some(e) = take(&mut out, i) {
                            s.retry_later(e.seq, t(5), "HTTP 503").unwrap();
                        },
                        Step::DeadLetter(i) => if let Some(e) = take(&mut out, i) {
                            let rej = Rejection { status: Some(400), code: None, body: String::new(), reason: "refused".into() };
                            s.dead_letter(e.seq, &rej, t(10)).unwrap();
                        },
                        Step::Release(i) => if let Some(e) = take(&mut out, i) {
                            s.release(&[e.seq]).unwrap();
                        },
                        Step::RetryDead => { s.retry_dead(DeadLetters::All).unwrap(); }
                        Step::DropDead => {
                            let dead = s.dead_letters(Some(R)).unwrap();
                            prop_assert_eq!(s.drop_dead(DeadLetters::All, t(10)).unwrap(), dead.len() as u64);
                            for d in dead {
                                prop_assert_eq!(open.get_mut(&d.event.customer_id).unwrap().pop_front(), Some(d.event.seq));
                            }
                        }
                        Step::Recover => {
                            s.recover(R).unwrap();
                            out.clear();
                        }
                    }
                }
                let st = s.status(Some(R)).unwrap();
                let unfinished: usize = open.values().map(VecDeque::len).sum();
                prop_assert_eq!((st.pending + st.in_flight + st.dead_lettered) as usize, unfinished);
                prop_assert_eq!(st.in_flight as usize, out.len());
            }
        }
    }

    /// `OutboxHandle`: enqueues that arrive while the store thread is busy are committed together,
    /// every caller is answered, and an event id sent by several callers is stored once.
    #[tokio::test]
    async fn the_handle_group_commits_concurrent_enqueues() {
        use crate::store::OutboxHandle;
        use crate::store::conformance::{R, ev};
        let (d, s) = store();
        let path = s.path().to_path_buf();
        let h = OutboxHandle::spawn(Box::new(s)).unwrap();
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
                    h.enqueue(R.to_string(), events).await
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
        let mut other = Store::open(&path).unwrap();
        let times: i64 = other
            .conn()
            .query_row("SELECT COUNT(DISTINCT received_at) FROM outbox", [], |r| r.get(0))
            .unwrap();
        assert_eq!(times, 1, "one group commit");
        drop(d);
    }

    /// The query plans that keep a 1,000,000-event backlog cheap: a claim reads heads by index,
    /// never the outbox table row by row.
    #[test]
    fn claims_and_counts_use_indexes_not_scans() {
        let (_d, mut s) = store();
        let plan = |s: &mut Store, sql: &str| -> String {
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
        ] {
            let p = plan(&mut s, sql);
            // Only the partial index of held operations (a handful of rows) may be read whole.
            let scans = p
                .lines()
                .filter(|l| l.starts_with("SCAN outbox") && !l.ends_with("INDEX outbox_held"));
            assert_eq!(scans.count(), 0, "{sql}\n{p}");
            assert!(!p.contains("TEMP B-TREE"), "sorts in memory: {sql}\n{p}");
        }
    }

    /// The state file deleted or replaced under a running agent: an enqueue must fail (so its
    /// source answers 503) rather than commit into a file nobody will open again.
    #[test]
    fn nothing_is_committed_once_the_file_at_the_path_is_not_the_one_opened() {
        use crate::error::Hinted as _;
        use conformance::ev;
        let (d, mut s) = store();
        let path = d.path().join("s.db");
        let reg = "env|http://kfr|916960190";
        s.enqueue(reg, &[ev("e1", "c1", Operation::Add)]).unwrap();
        // Moved away and a fresh file put in its place (a restore over a running agent, say).
        std::fs::rename(&path, d.path().join("moved.db")).unwrap();
        let err = s.enqueue(reg, &[ev("e2", "c1", Operation::Add)]).unwrap_err();
        assert!(matches!(err, StoreError::Replaced { .. }), "{err:?}");
        assert!(err.hint().unwrap().contains("restart kfr"));
        Store::open(&path).unwrap();
        let r = s.enqueue(reg, &[ev("e3", "c1", Operation::Add)]);
        assert!(matches!(r, Err(StoreError::Replaced { .. })), "{r:?}");
        // Deleted outright.
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(
            s.enqueue(reg, &[ev("e4", "c1", Operation::Add)]),
            Err(StoreError::Replaced { .. })
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
                StoreError::NotWritable { path, .. } => assert_eq!(path, "/s.db"),
                other => panic!("{code}: {other:?}"),
            }
        }
        use crate::error::Hinted as _;
        // (cli::report::diagnose lists StoreError; its own test keeps that honest.)
        assert!(
            StoreError::Busy { path: "/s.db".into() }
                .hint()
                .unwrap()
                .contains("another kfr process")
        );
        assert!(
            StoreError::Corrupt {
                path: "/s.db".into(),
                detail: "x".into()
            }
            .hint()
            .unwrap()
            .contains("/s.db")
        );
    }
}
