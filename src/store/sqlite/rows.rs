//! How the SQLite backend stores values and reads them back, and the few statements every
//! part of it shares (a head finishing, the ledger's current row, the barrier, an event's
//! insert, a history line). The other files of `sqlite/` use this one; it uses none of them.
//!
//! Times are stored as RFC 3339 UTC with nanoseconds (fixed width, so they sort as text).

use crate::store::error::StoreError;
use crate::store::types::*;
use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use rusqlite::{Connection, OptionalExtension as _, Transaction, params};
use uuid::Uuid;

/// A stored value kfr does not know: the store was written by something else, or is damaged.
pub(crate) fn bad_value(column: &str, value: &str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        0,
        rusqlite::types::Type::Text,
        format!("unexpected {column} value {value:?}").into(),
    )
}

pub(crate) fn parse_op(s: &str) -> rusqlite::Result<Operation> {
    match s {
        "add" => Ok(Operation::Add),
        "remove" => Ok(Operation::Remove),
        other => Err(bad_value("outbox.op", other)),
    }
}

pub(crate) fn parse_delivery(s: &str) -> rusqlite::Result<Delivery> {
    Ok(match s {
        "added" => Delivery::Added,
        "already_present" => Delivery::AlreadyPresent,
        "removed" => Delivery::Removed,
        "not_found" => Delivery::NotFound,
        "ingested_seen" => Delivery::IngestedSeen,
        "ingested_by_time" => Delivery::IngestedByTime,
        other => return Err(bad_value("outbox.delivery", other)),
    })
}

/// A time as stored.
pub(crate) fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Nanos, true)
}

pub(crate) fn parse_ts(s: &str) -> rusqlite::Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| bad_value("outbox time", s))
}

pub(crate) fn opt_ts(s: Option<String>) -> rusqlite::Result<Option<DateTime<Utc>>> {
    s.as_deref().map(parse_ts).transpose()
}

pub(crate) fn parse_uuid(s: &str) -> rusqlite::Result<Uuid> {
    Uuid::parse_str(s).map_err(|_| bad_value("outbox correlation id", s))
}

pub(crate) fn state_str(s: EventState) -> &'static str {
    match s {
        EventState::Pending => "pending",
        EventState::InFlight => "in_flight",
        EventState::Accepted => "accepted",
        EventState::Delivered => "delivered",
        EventState::DeadLettered => "dead_lettered",
        EventState::Dropped => "dropped",
    }
}

pub(crate) fn parse_state(s: &str) -> rusqlite::Result<EventState> {
    Ok(match s {
        "pending" => EventState::Pending,
        "in_flight" => EventState::InFlight,
        "accepted" => EventState::Accepted,
        "delivered" => EventState::Delivered,
        "dead_lettered" => EventState::DeadLettered,
        "dropped" => EventState::Dropped,
        other => return Err(bad_value("outbox.state", other)),
    })
}

pub(crate) fn delivery_str(d: Delivery) -> &'static str {
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
pub(crate) fn ledger_state(d: Delivery) -> LedgerState {
    match d {
        Delivery::Added | Delivery::AlreadyPresent | Delivery::IngestedSeen | Delivery::IngestedByTime => {
            LedgerState::Active
        }
        Delivery::Removed | Delivery::NotFound => LedgerState::Ended,
    }
}

/// The columns of [`event_row`], in its order.
pub(crate) const EVENT_COLUMNS: &str = "seq, register, event_id, op, customer_id, start_date, occurred_at, source, \
     received_at, correlation_id, state, attempts, next_attempt_at, failing_since, last_error, \
     batch_correlation_id, accepted_at, claimer, claimed_until, delivery";

pub(crate) fn event_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<OutboxEvent> {
    let op: String = r.get(3)?;
    let start: Option<String> = r.get(5)?;
    let bcid: Option<String> = r.get(15)?;
    Ok(OutboxEvent {
        seq: r.get(0)?,
        register: r.get(1)?,
        event_id: r.get(2)?,
        op: parse_op(&op)?,
        customer_id: r.get(4)?,
        start_date: start
            .map(|d| d.parse::<NaiveDate>().map_err(|_| bad_value("outbox.start_date", &d)))
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
        claimer: r.get(17)?,
        claimed_until: opt_ts(r.get(18)?)?,
        delivery: r
            .get::<_, Option<String>>(19)?
            .as_deref()
            .map(parse_delivery)
            .transpose()?,
    })
}

/// An operation's failure before its store path is known.
pub(crate) enum Fault {
    Sql(rusqlite::Error),
    Store(StoreError),
}

impl From<rusqlite::Error> for Fault {
    fn from(e: rusqlite::Error) -> Self {
        Fault::Sql(e)
    }
}

pub(crate) fn wrong(seq: Seq, problem: impl Into<String>) -> Fault {
    Fault::Store(StoreError::WrongState {
        seq,
        problem: problem.into(),
    })
}

/// SQLite's answer in the terms an operator acts on (busy: wait or stop the other process;
/// corrupt: restore; not writable: free the disk or fix permissions).
pub(crate) fn store_error(store: &str, e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode as C;
    let detail = e.to_string();
    match e.sqlite_error_code() {
        Some(C::DatabaseBusy | C::DatabaseLocked) => StoreError::Busy { store: store.into() },
        Some(C::DatabaseCorrupt | C::NotADatabase) => StoreError::Corrupt {
            store: store.into(),
            detail,
        },
        Some(C::DiskFull | C::ReadOnly | C::SystemIoFailure | C::CannotOpen | C::PermissionDenied) => {
            StoreError::NotWritable {
                store: store.into(),
                detail,
            }
        }
        _ => StoreError::Other(detail),
    }
}

/// Where a later head comes from when a head finishes: the customer's next event, if any (only
/// heads finish, so every later event of the customer is unfinished).
pub(crate) fn finish_head(tx: &Transaction<'_>, seq: Seq, register: &str, customer: &str) -> rusqlite::Result<()> {
    // Cached statements here and in the settle path: they run once per delivered event, and
    // compiling them each time was a measurable share of the agent's CPU (docs/benchmarks.md).
    tx.prepare_cached("UPDATE outbox SET head = NULL WHERE seq = ?1")?
        .execute([seq])?;
    promote_next(tx, seq, register, customer)
}

/// Makes the customer's next unfinished event after `seq` its head (the head `seq` has just
/// finished). Skips finished ones: an operator may cancel a pending event behind the head.
pub(crate) fn promote_next(tx: &Transaction<'_>, seq: Seq, register: &str, customer: &str) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "UPDATE outbox SET head = 1 WHERE seq = (SELECT seq FROM outbox
             WHERE register = ?1 AND customer_id = ?2 AND seq > ?3 AND finished_at IS NULL ORDER BY seq LIMIT 1)",
    )?
    .execute(params![register, customer, seq])?;
    Ok(())
}

/// Stores one event at the end of its customer's queue (the head if the queue was empty);
/// `None` when its event id is stored already (nothing written). One statement: the agent's
/// intake runs it for every event, so it decides the head itself (no unfinished event of the
/// customer before it: no head, since every customer with an unfinished event has one, even
/// when an operator cancelled its latest event) and leaves a known event id alone.
pub(crate) fn try_insert_event(
    tx: &Transaction<'_>,
    register: &str,
    ev: &NewEvent,
    correlation_id: Uuid,
    received_at: DateTime<Utc>,
) -> rusqlite::Result<Option<Seq>> {
    Ok(try_insert_event_as_head(tx, register, ev, correlation_id, received_at)?.map(|(seq, _)| seq))
}

/// [`try_insert_event`], also saying whether the event became its customer's head (its queue was
/// empty: the flood guard then has nothing to count).
pub(crate) fn try_insert_event_as_head(
    tx: &Transaction<'_>,
    register: &str,
    ev: &NewEvent,
    correlation_id: Uuid,
    received_at: DateTime<Utc>,
) -> rusqlite::Result<Option<(Seq, bool)>> {
    tx.prepare_cached(
        "INSERT INTO outbox (register, event_id, op, customer_id, start_date, occurred_at, source, received_at,
                             correlation_id, state, head)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'pending',
                 CASE WHEN NOT EXISTS (SELECT 1 FROM outbox WHERE register = ?1 AND customer_id = ?4 AND head = 1)
                      THEN 1 END)
         ON CONFLICT (event_id) DO NOTHING
         RETURNING seq, head IS NOT NULL",
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
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()
}

/// [`try_insert_event`] for an event id the caller knows is new; a known one is the unique
/// constraint's failure, as a plain insert would report it.
pub(crate) fn insert_event(
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
pub(crate) fn barrier_in(conn: &Connection, register: &str) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached(
        "SELECT id FROM load_jobs WHERE status = 'running' AND (register = ?1 OR register IS NULL)
         ORDER BY id LIMIT 1",
    )?
    .query_row([register], |r| r.get(0))
    .optional()
}

/// Records that KFR now holds (or no longer holds) the customer's relationship.
pub(crate) fn set_ledger(
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
pub(crate) fn event(tx: &Transaction<'_>, seq: Seq) -> Result<OutboxEvent, Fault> {
    let sql = format!("SELECT {EVENT_COLUMNS} FROM outbox WHERE seq = ?1");
    tx.prepare_cached(&sql)?
        .query_row([seq], event_row)
        .optional()?
        .ok_or_else(|| wrong(seq, "does not exist"))
}

/// Why `s` matched no event that may be settled: the event is missing, in another state, or of
/// the other operation. Only reached on a caller's mistake, so it may read the whole row.
pub(crate) fn unsettleable(tx: &Transaction<'_>, s: &Settlement) -> Fault {
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

pub(crate) fn require(ev: &OutboxEvent, states: &[EventState], doing: &str) -> Result<(), Fault> {
    if states.contains(&ev.state) {
        Ok(())
    } else {
        Err(wrong(
            ev.seq,
            format!("is {} and cannot be {doing}", state_str(ev.state)),
        ))
    }
}

/// One history line, written in the transaction of the change it records.
pub(crate) struct Line<'a> {
    pub at: DateTime<Utc>,
    pub register: &'a str,
    pub customer_id: &'a str,
    pub seq: Option<Seq>,
    pub event_id: Option<&'a str>,
    pub op: Option<Operation>,
    pub correlation_id: Option<Uuid>,
    pub kind: HistoryKind,
    pub outcome: &'a str,
    pub status: Option<u16>,
    pub code: Option<&'a str>,
    pub detail: Option<&'a str>,
    pub actor: Option<&'a str>,
}

impl<'a> Line<'a> {
    /// An attempt's line for `ev`, by `actor` (its claimer).
    pub(crate) fn attempt(ev: &'a OutboxEvent, at: DateTime<Utc>, outcome: &'a str) -> Line<'a> {
        Line {
            at,
            register: &ev.register,
            customer_id: &ev.customer_id,
            seq: Some(ev.seq),
            event_id: Some(&ev.event_id),
            op: Some(ev.op),
            correlation_id: Some(ev.correlation_id),
            kind: HistoryKind::Attempt,
            outcome,
            status: None,
            code: None,
            detail: None,
            actor: ev.claimer.as_deref(),
        }
    }

    pub(crate) fn write(&self, tx: &Transaction<'_>) -> rusqlite::Result<()> {
        tx.prepare_cached(
            "INSERT INTO history (at, register, customer_id, seq, event_id, op, correlation_id, kind, outcome,
                                  status, code, detail, actor)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
        )?
        .execute(params![
            ts(self.at),
            self.register,
            self.customer_id,
            self.seq,
            self.event_id,
            self.op.map(Operation::as_str),
            self.correlation_id.map(|c| c.to_string()),
            self.kind.as_str(),
            self.outcome,
            self.status,
            self.code,
            self.detail,
            self.actor,
        ])?;
        Ok(())
    }
}

/// The HTTP status a delivery stands for (KFR's answer that meant it), for the history.
pub(crate) fn delivery_status(d: Delivery) -> Option<u16> {
    match d {
        Delivery::Added => Some(201),
        Delivery::AlreadyPresent => Some(200),
        Delivery::Removed => Some(204),
        Delivery::NotFound => Some(404),
        Delivery::IngestedSeen | Delivery::IngestedByTime => None,
    }
}
