//! How the PostgreSQL backend reads events back, and the few statements every part of it shares:
//! the per-customer lock, a head moving on, the ledger's current row, the barrier, a history
//! line. The trait files of `postgres/` use this one; it uses only `db` (the transaction's
//! fault type).
//!
//! The per-customer lock (module doc of `postgres`, rule 1) is a transaction-scoped advisory
//! lock on (register, customer). Whoever decides which event is a customer's head takes it
//! first: an enqueue (is there a head already?) and whatever ends a head (who is next?). Two
//! such transactions of one customer therefore run one after the other, and since every
//! statement under READ COMMITTED sees what committed before it began, the second one sees the
//! first one's rows: an event inserted while a head finishes is never left without a head.
//! Every transaction takes all its customer locks in one statement, in key order, so two of
//! them never wait for each other in a circle.

use super::db::{Fault, PgTx, wrong};
use crate::store::error::StoreError;
use crate::store::types::*;
use chrono::{DateTime, NaiveDate, Utc};
use postgres::Row;
use postgres::error::SqlState;
use postgres::types::ToSql;
use uuid::Uuid;

/// A stored value kfr does not know: the store was written by something else, or is damaged.
pub(crate) fn bad_value(column: &str, value: &str) -> Fault {
    Fault::Store(StoreError::Other(format!("unexpected {column} value {value:?}")))
}

pub(crate) fn parse_op(s: &str) -> Result<Operation, Fault> {
    match s {
        "add" => Ok(Operation::Add),
        "remove" => Ok(Operation::Remove),
        other => Err(bad_value("outbox.op", other)),
    }
}

pub(crate) fn parse_state(s: &str) -> Result<EventState, Fault> {
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

pub(crate) fn parse_delivery(s: &str) -> Result<Delivery, Fault> {
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

/// The operation a delivery fits (an add is not `Removed`).
pub(crate) fn op_of(d: Delivery) -> Operation {
    match ledger_state(d) {
        LedgerState::Active => Operation::Add,
        LedgerState::Ended => Operation::Remove,
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

/// The columns [`event_row`] reads, in its order, each prefixed with `table.` (`""`: none).
pub(crate) fn event_columns(table: &str) -> String {
    const COLUMNS: [&str; 20] = [
        "seq",
        "register",
        "event_id",
        "op",
        "customer_id",
        "start_date",
        "occurred_at",
        "source",
        "received_at",
        "correlation_id",
        "state",
        "attempts",
        "next_attempt_at",
        "failing_since",
        "last_error",
        "batch_correlation_id",
        "accepted_at",
        "claimer",
        "claimed_until",
        "delivery",
    ];
    let prefix = if table.is_empty() {
        String::new()
    } else {
        format!("{table}.")
    };
    COLUMNS
        .iter()
        .map(|c| format!("{prefix}{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The number of columns [`event_row`] reads (further columns of a row start here).
pub(crate) const EVENT_WIDTH: usize = 20;

/// An event from a row whose first columns are [`event_columns`].
pub(crate) fn event_row(r: &Row) -> Result<OutboxEvent, Fault> {
    let attempts: i32 = r.try_get(11)?;
    Ok(OutboxEvent {
        seq: r.try_get(0)?,
        register: r.try_get(1)?,
        event_id: r.try_get(2)?,
        op: parse_op(r.try_get(3)?)?,
        customer_id: r.try_get(4)?,
        start_date: r.try_get::<_, Option<NaiveDate>>(5)?,
        occurred_at: r.try_get(6)?,
        source: r.try_get(7)?,
        received_at: r.try_get(8)?,
        correlation_id: r.try_get(9)?,
        state: parse_state(r.try_get(10)?)?,
        attempts: u32::try_from(attempts).map_err(|_| bad_value("outbox.attempts", &attempts.to_string()))?,
        next_attempt_at: r.try_get(12)?,
        failing_since: r.try_get(13)?,
        last_error: r.try_get(14)?,
        batch_correlation_id: r.try_get(15)?,
        accepted_at: r.try_get(16)?,
        claimer: r.try_get(17)?,
        claimed_until: r.try_get(18)?,
        delivery: r.try_get::<_, Option<&str>>(19)?.map(parse_delivery).transpose()?,
    })
}

/// Events from rows of [`event_columns`], in issue order (`RETURNING` gives none).
pub(crate) fn events_in_order(rows: &[Row]) -> Result<Vec<OutboxEvent>, Fault> {
    let mut events = rows.iter().map(event_row).collect::<Result<Vec<_>, _>>()?;
    events.sort_unstable_by_key(|e| e.seq);
    Ok(events)
}

/// One event by seq ([`StoreError::WrongState`] when there is none).
pub(crate) fn event(tx: &mut PgTx<'_>, seq: Seq) -> Result<OutboxEvent, Fault> {
    let sql = format!("SELECT {} FROM outbox WHERE seq = $1", event_columns(""));
    match tx.query_opt(&sql, &[&seq])? {
        Some(row) => event_row(&row),
        None => Err(wrong(seq, "does not exist")),
    }
}

/// `Ok` when `ev` is in one of `states`; otherwise `WrongState` naming its state.
pub(crate) fn require(ev: &OutboxEvent, states: &[EventState], doing: &str) -> Result<(), Fault> {
    if states.contains(&ev.state) {
        Ok(())
    } else {
        Err(wrong(ev.seq, format!("is {} and cannot be {doing}", ev.state.as_str())))
    }
}

/// Why a conditional statement left `seq` alone: it does not exist or is in another state. Only
/// reached on a caller's mistake (or a change that beat it), so it reads the row again.
pub(crate) fn unchanged(tx: &mut PgTx<'_>, seq: Seq, states: &[EventState], doing: &str) -> Fault {
    let ev = match event(tx, seq) {
        Ok(ev) => ev,
        Err(f) => return f,
    };
    match require(&ev, states, doing) {
        Err(f) => f,
        Ok(()) => wrong(seq, format!("changed while it was being {doing}; try again")),
    }
}

/// State names as stored, for `state = ANY($n)`.
pub(crate) fn state_names(states: &[EventState]) -> Vec<&'static str> {
    states.iter().map(|s| s.as_str()).collect()
}

/// Applies `set` to those of `seqs` whose state is one of `from` (and which meet `also`, an
/// extra condition on `prev`), in one statement that locks them first, and returns them as they
/// were before: what the history line of the change names (its claimer, say, which the change
/// clears). `$1` is `seqs` and `$2` the states; `set` and `also` number their own parameters
/// (`params`) from `$3` on, and qualify the columns they read with `o.` (the row being changed).
pub(crate) fn transition(
    tx: &mut PgTx<'_>,
    seqs: &[Seq],
    from: &[EventState],
    also: &str,
    set: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<OutboxEvent>, Fault> {
    let sql = format!(
        "WITH prev AS MATERIALIZED (
             SELECT {cols} FROM outbox WHERE seq = ANY($1) AND state = ANY($2) {also} ORDER BY seq FOR UPDATE)
         UPDATE outbox o SET {set} FROM prev WHERE o.seq = prev.seq
         RETURNING {prev_cols}",
        cols = event_columns(""),
        prev_cols = event_columns("prev"),
    );
    let states = state_names(from);
    let mut all: Vec<&(dyn ToSql + Sync)> = vec![&seqs, &states];
    all.extend_from_slice(params);
    events_in_order(&tx.query(&sql, &all)?)
}

/// Takes the per-customer locks of `customers` (register, customer) for the rest of the
/// transaction, all in one statement and in key order (see the module doc).
pub(crate) fn lock_customers<R: AsRef<str>, C: AsRef<str>>(
    tx: &mut PgTx<'_>,
    customers: &[(R, C)],
) -> Result<(), Fault> {
    if customers.is_empty() {
        return Ok(());
    }
    let registers: Vec<&str> = customers.iter().map(|(r, _)| r.as_ref()).collect();
    let ids: Vec<&str> = customers.iter().map(|(_, c)| c.as_ref()).collect();
    tx.execute(
        "SELECT pg_advisory_xact_lock(k)
         FROM (SELECT DISTINCT hashtextextended(r || '|' || c, 0) AS k
               FROM unnest($1::text[], $2::text[]) AS u (r, c) ORDER BY k) AS keys",
        &[&registers, &ids],
    )?;
    Ok(())
}

/// Moves the queue of each customer whose head `seq` has just finished (its `head` already
/// cleared by the caller's statement) on to its next unfinished event, taking the customers'
/// locks first; one statement for them all. Skips finished ones: an operator may have cancelled
/// a pending event behind the head.
pub(crate) fn heads_finished(tx: &mut PgTx<'_>, finished: &[(Seq, &str, &str)]) -> Result<(), Fault> {
    if finished.is_empty() {
        return Ok(());
    }
    let customers: Vec<(&str, &str)> = finished.iter().map(|(_, r, c)| (*r, *c)).collect();
    lock_customers(tx, &customers)?;
    let seqs: Vec<Seq> = finished.iter().map(|(s, _, _)| *s).collect();
    let registers: Vec<&str> = finished.iter().map(|(_, r, _)| *r).collect();
    let ids: Vec<&str> = finished.iter().map(|(_, _, c)| *c).collect();
    tx.execute(
        "UPDATE outbox SET head = true WHERE seq IN (
             SELECT (SELECT o.seq FROM outbox o
                     WHERE o.register = f.r AND o.customer_id = f.c AND o.seq > f.s AND o.finished_at IS NULL
                     ORDER BY o.seq LIMIT 1)
             FROM unnest($1::bigint[], $2::text[], $3::text[]) AS f (s, r, c))",
        &[&seqs, &registers, &ids],
    )
    .map_err(one_head)?;
    Ok(())
}

/// A second head for one customer, refused by the index `outbox_one_head`, as the conflict it
/// is; any other error as it came. (The per-customer lock keeps it from happening.)
pub(crate) fn one_head(e: postgres::Error) -> Fault {
    let second_head = e.code() == Some(&SqlState::UNIQUE_VIOLATION)
        && e.as_db_error().and_then(|d| d.constraint()) == Some("outbox_one_head");
    if second_head {
        Fault::Store(StoreError::Conflict(
            "a customer would have two events at the head of its queue".into(),
        ))
    } else {
        Fault::Db(e)
    }
}

/// Stores one event at the end of its customer's queue (the head if it has none: every
/// customer with an unfinished event has one); `None` when its event id is stored already
/// (nothing written). The caller holds the customer's lock.
pub(crate) fn try_insert_event(
    tx: &mut PgTx<'_>,
    register: &str,
    ev: &NewEvent,
    correlation_id: Uuid,
    received_at: DateTime<Utc>,
) -> Result<Option<Seq>, Fault> {
    let row = tx
        .query_opt(
            "INSERT INTO outbox (register, event_id, op, customer_id, start_date, occurred_at, source, received_at,
                                 correlation_id, state, head)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'pending',
                     CASE WHEN NOT EXISTS (SELECT 1 FROM outbox WHERE register = $1 AND customer_id = $4 AND head)
                          THEN true END)
             ON CONFLICT (event_id) DO NOTHING
             RETURNING seq",
            &[
                &register,
                &ev.event_id,
                &ev.op.as_str(),
                &ev.customer_id,
                &ev.start_date,
                &ev.occurred_at,
                &ev.source,
                &received_at,
                &correlation_id,
            ],
        )
        .map_err(one_head)?;
    Ok(row.map(|r| r.get(0)))
}

/// The load job holding removes of `register` back: a running job of that register, or of an
/// unknown one (NULL: the safe reading).
pub(crate) fn barrier_in(tx: &mut PgTx<'_>, register: &str) -> Result<Option<i64>, Fault> {
    Ok(tx
        .query_opt(
            "SELECT id FROM load_jobs WHERE status = 'running' AND (register = $1 OR register IS NULL)
             ORDER BY id LIMIT 1",
            &[&register],
        )?
        .map(|r| r.get(0)))
}

/// The same as [`barrier_in`] as an SQL condition on the register in parameter `$n`: true while
/// removes of it may go.
pub(crate) fn removes_may_go(n: usize) -> String {
    format!("NOT EXISTS (SELECT 1 FROM load_jobs WHERE status = 'running' AND (register = ${n} OR register IS NULL))")
}

/// What KFR now holds (or no longer holds) for one customer, as [`set_ledger`] records it.
pub(crate) struct LedgerRow<'a> {
    pub register: &'a str,
    pub customer: &'a str,
    pub state: LedgerState,
    pub start_date: Option<NaiveDate>,
    pub since: DateTime<Utc>,
    pub correlation_id: Uuid,
}

/// Records that KFR now holds (or no longer holds) each customer's relationship, in one
/// statement; of two rows for one customer the later one counts.
pub(crate) fn set_ledger(tx: &mut PgTx<'_>, rows: &[LedgerRow<'_>]) -> Result<(), Fault> {
    // One row per customer (an upsert may not touch a row twice), the last one given.
    let mut last: Vec<&LedgerRow<'_>> = vec![];
    for row in rows.iter().rev() {
        if !last
            .iter()
            .any(|l| l.register == row.register && l.customer == row.customer)
        {
            last.push(row);
        }
    }
    if last.is_empty() {
        return Ok(());
    }
    let registers: Vec<&str> = last.iter().map(|r| r.register).collect();
    let customers: Vec<&str> = last.iter().map(|r| r.customer).collect();
    let states: Vec<&str> = last
        .iter()
        .map(|r| match r.state {
            LedgerState::Active => "active",
            LedgerState::Ended => "ended",
        })
        .collect();
    let starts: Vec<Option<NaiveDate>> = last.iter().map(|r| r.start_date).collect();
    let since: Vec<DateTime<Utc>> = last.iter().map(|r| r.since).collect();
    let cids: Vec<Uuid> = last.iter().map(|r| r.correlation_id).collect();
    tx.execute(
        "INSERT INTO ledger_current (register, customer_id, state, start_date, since, correlation_id)
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::date[], $5::timestamptz[], $6::uuid[])
         ON CONFLICT (register, customer_id) DO UPDATE SET
             state = excluded.state, start_date = excluded.start_date, since = excluded.since,
             correlation_id = excluded.correlation_id",
        &[&registers, &customers, &states, &starts, &since, &cids],
    )?;
    Ok(())
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

    /// An operator's action on `ev`.
    pub(crate) fn operator(
        ev: &'a OutboxEvent,
        action: &'a OperatorAction,
        at: DateTime<Utc>,
        what: &'a str,
    ) -> Line<'a> {
        Line {
            kind: HistoryKind::Operator,
            actor: Some(&action.actor),
            detail: action.reason.as_deref(),
            ..Line::attempt(ev, at, what)
        }
    }

    /// Writes `lines` in one statement, in their order.
    pub(crate) fn write_all(tx: &mut PgTx<'_>, lines: &[Line<'_>]) -> Result<(), Fault> {
        if lines.is_empty() {
            return Ok(());
        }
        let at: Vec<DateTime<Utc>> = lines.iter().map(|l| l.at).collect();
        let register: Vec<&str> = lines.iter().map(|l| l.register).collect();
        let customer: Vec<&str> = lines.iter().map(|l| l.customer_id).collect();
        let seq: Vec<Option<Seq>> = lines.iter().map(|l| l.seq).collect();
        let event_id: Vec<Option<&str>> = lines.iter().map(|l| l.event_id).collect();
        let op: Vec<Option<&str>> = lines.iter().map(|l| l.op.map(Operation::as_str)).collect();
        let cid: Vec<Option<Uuid>> = lines.iter().map(|l| l.correlation_id).collect();
        let kind: Vec<&str> = lines.iter().map(|l| l.kind.as_str()).collect();
        let outcome: Vec<&str> = lines.iter().map(|l| l.outcome).collect();
        let status: Vec<Option<i32>> = lines.iter().map(|l| l.status.map(i32::from)).collect();
        let code: Vec<Option<&str>> = lines.iter().map(|l| l.code).collect();
        let detail: Vec<Option<&str>> = lines.iter().map(|l| l.detail).collect();
        let actor: Vec<Option<&str>> = lines.iter().map(|l| l.actor).collect();
        tx.execute(
            "INSERT INTO history (at, register, customer_id, seq, event_id, op, correlation_id, kind, outcome,
                                  status, code, detail, actor)
             SELECT at, register, customer_id, seq, event_id, op, correlation_id, kind, outcome, status, code,
                    detail, actor
             FROM unnest($1::timestamptz[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::text[],
                         $7::uuid[], $8::text[], $9::text[], $10::integer[], $11::text[], $12::text[], $13::text[])
                  WITH ORDINALITY AS l (at, register, customer_id, seq, event_id, op, correlation_id, kind,
                                        outcome, status, code, detail, actor, i)
             ORDER BY i",
            &[
                &at, &register, &customer, &seq, &event_id, &op, &cid, &kind, &outcome, &status, &code, &detail, &actor,
            ],
        )?;
        Ok(())
    }

    pub(crate) fn write(&self, tx: &mut PgTx<'_>) -> Result<(), Fault> {
        let status = self.status.map(i32::from);
        tx.execute(
            "INSERT INTO history (at, register, customer_id, seq, event_id, op, correlation_id, kind, outcome,
                                  status, code, detail, actor)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
            &[
                &self.at,
                &self.register,
                &self.customer_id,
                &self.seq,
                &self.event_id,
                &self.op.map(Operation::as_str),
                &self.correlation_id,
                &self.kind.as_str(),
                &self.outcome,
                &status,
                &self.code,
                &self.detail,
                &self.actor,
            ],
        )?;
        Ok(())
    }
}
