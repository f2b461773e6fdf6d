//! The core system's outbox table as a source: the bank's core system inserts one row per event
//! into a table of its own PostgreSQL database (`kfr_outbox`, DDL in docs/operations.md), in the
//! same transaction as the change it reports; this source reads the rows in commit order and
//! commits them to kfr's state store (docs/sync.md, "The core system's outbox table").
//!
//! Commit order, not sequence order: an id (or any sequence value) is taken when a row is
//! inserted, but rows become visible when their transaction commits, and a row with id 100 may
//! commit after the row with id 101. A reader that remembers "up to id 101" skips 100 for good.
//! Each row therefore carries its transaction's id (`xid xid8 DEFAULT pg_current_xact_id()`),
//! and the source reads by snapshots, as PgQ does: a *round* takes the rows whose transaction is
//! visible in a snapshot `T` taken now but was not in the snapshot `B` where the previous round
//! ended — exactly the transactions that committed in between, whatever their ids — ordered by
//! `(xid, id)`. A transaction still running when `T` is taken is in no round yet; it is in the
//! round after its commit. Rounds follow one another, so rows are taken in the order their
//! transactions committed, as finely as the rounds are (two transactions committing between the
//! same two rounds are taken in `(xid, id)` order). Only transactions not visible in `B` are
//! looked at, and they all have `xid >= xmin(B)`, so a round reads the index on `(xid, id)` from
//! there on, never the whole table.
//!
//! The cursor is `B|T|xid:id`: the round and the last row of it taken. It is stored with the
//! events in one kfr store transaction ([`crate::store::Outbox::enqueue_from_cursor`]), so a
//! restart resumes after the last row stored: nothing skipped, nothing taken twice.
//!
//! Wake-ups: the source `LISTEN`s on the channel named like the table; a trigger on the table
//! may `NOTIFY` it (docs/operations.md). A notification is a hint only — the rows are found by
//! the snapshot query, which also runs every poll interval (1 s by default) whether or not
//! anything was notified.
//!
//! Failures:
//! - The core system's database unreachable, restarting, or the connection lost: waited out,
//!   reconnecting with backoff (0.5 s doubling to 30 s); logged once when lost and once when
//!   back; `kfr_sync_source_stalled{cause="unreachable"}` is 1 meanwhile. The rest of the agent
//!   goes on.
//! - The table missing, a column missing or of another type, or no SELECT privilege: the source
//!   fails with an error naming the table and what is wrong (the agent exits 1): a configuration
//!   mistake nobody fixes by waiting.
//! - A row that breaks an event rule (an op that is neither add nor remove, a customer id that
//!   fails the identifier rules, a start date on a remove or in the future): the source *parks*
//!   at that row — the rows before it are stored, nothing after it is taken — and logs an error
//!   naming the row's id, the field and the rule (identifier masked), with
//!   `kfr_sync_source_stalled{cause="bad_row"}` 1. Skipping it could lose an event or reorder a
//!   customer's events; the bank corrects (or deletes) the row in its own table and the source
//!   goes on by itself at its next look (docs/decisions.md).
//!
//! Least privilege: SELECT on the table is all the source needs; it never writes to the core
//! system's database.

use super::{Intake, Source, SourceError, SourceReport, counts};
use crate::store::NewEvent;
use crate::sync::event::{self, Broken, Location, Refusal};
use chrono::{DateTime, NaiveDate, Utc};
use futures::future::BoxFuture;
use std::time::Duration;
use tokio_postgres::types::Type;
use tokio_util::sync::CancellationToken;

/// How often the table is looked at when nothing is notified.
pub const DEFAULT_POLL: Duration = Duration::from_secs(1);

/// Most rows in one kfr store commit.
pub const DEFAULT_BATCH: i64 = 500;

/// First wait before reconnecting; doubled up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The application name the source shows in the core system's `pg_stat_activity`.
const APPLICATION: &str = "kfr sync (pg_outbox)";

/// What the source reads from, and how.
#[derive(Debug, Clone)]
pub struct PgOutboxOptions {
    /// The source's name: stored with its events, the key of its cursor, the metrics label.
    pub name: String,
    pub target: crate::pg::Target,
    /// `table` or `schema.table` (plain lower-case names: checked by the configuration).
    pub table: String,
    pub poll_interval: Duration,
    pub batch: i64,
}

impl PgOutboxOptions {
    pub fn new(name: impl Into<String>, target: crate::pg::Target, table: impl Into<String>) -> Self {
        PgOutboxOptions {
            name: name.into(),
            target,
            table: table.into(),
            poll_interval: DEFAULT_POLL,
            batch: DEFAULT_BATCH,
        }
    }
}

/// Why the source stopped.
#[derive(Debug, thiserror::Error)]
pub enum PgOutboxError {
    /// The table cannot be read as an outbox table: missing, a column missing or of another
    /// type, no privilege.
    #[error("the outbox table {table} in {url} cannot be read: {detail}")]
    Table { table: String, url: String, detail: String },
    /// The configured URL or table cannot make event ids.
    #[error("the outbox table source `{name}`: {detail}")]
    Setup { name: String, detail: String },
    /// The cursor stored in kfr's state store is not one this source wrote.
    #[error("the stored position of the source `{name}` is not readable ({cursor:?}): {detail}")]
    Cursor {
        name: String,
        cursor: String,
        detail: String,
    },
}

impl crate::error::Hinted for PgOutboxError {
    fn hint(&self) -> Option<String> {
        Some(match self {
            PgOutboxError::Table { .. } => "create the table as docs/operations.md shows (\"The core system's outbox table\") and GRANT SELECT on it to the role kfr connects as".into(),
            PgOutboxError::Setup { .. } => "check the source's url and table in [[sync.sources]]".into(),
            PgOutboxError::Cursor { .. } => "the position is kept in kfr's state store (table source_cursors); restore the store from a backup rather than editing it".into(),
        })
    }
}

/// A snapshot-round position (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// Where the previous round ended: its transactions are taken.
    pub base: String,
    /// This round's snapshot.
    pub target: String,
    /// The last row of this round taken: `(xid, id)`.
    pub after: (u64, i64),
}

/// The start, before any row: a snapshot in which no transaction is visible.
const NOTHING_VISIBLE: &str = "1:1:";

impl Cursor {
    /// The text stored in kfr's state store: `B|T|xid:id`.
    pub fn text(&self) -> String {
        format!("{}|{}|{}:{}", self.base, self.target, self.after.0, self.after.1)
    }

    pub fn parse(text: &str) -> Option<Cursor> {
        let mut parts = text.split('|');
        let (base, target, after) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || !is_snapshot(base) || !is_snapshot(target) {
            return None;
        }
        let (xid, id) = after.split_once(':')?;
        Some(Cursor {
            base: base.into(),
            target: target.into(),
            after: (xid.parse().ok()?, id.parse().ok()?),
        })
    }
}

/// `xmin:xmax:xip,…` (PostgreSQL's `pg_snapshot` text).
fn is_snapshot(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    parts.len() == 3
        && parts[0].parse::<u64>().is_ok()
        && parts[1].parse::<u64>().is_ok()
        && (parts[2].is_empty() || parts[2].split(',').all(|x| x.parse::<u64>().is_ok()))
}

/// Where the source is between looks: inside a round, or between rounds.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Position {
    /// Rounds done up to this snapshot; the next look starts a round from it.
    Between(String),
    /// In a round, after a row of it.
    In(Cursor),
}

impl Position {
    fn from_stored(stored: Option<String>, name: &str) -> Result<Position, PgOutboxError> {
        match stored {
            None => Ok(Position::Between(NOTHING_VISIBLE.into())),
            Some(text) => Cursor::parse(&text).map(Position::In).ok_or(PgOutboxError::Cursor {
                name: name.into(),
                cursor: text,
                detail: "expected base|target|xid:id".into(),
            }),
        }
    }
}

/// The outbox table source.
pub struct PgOutbox {
    opts: PgOutboxOptions,
    intake: Intake,
    report: SourceReport,
    /// `pg:<database>.<table>:`, before each row's id: the event id.
    id_prefix: String,
    /// The row the source is parked at, and the rule it breaks (logged once per row and rule).
    parked: Option<(i64, String)>,
    /// Tests only: how many times the source went to wait for a notification or its poll.
    #[cfg(test)]
    waits: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
}

/// How a session with the core system's database ended.
enum Ended {
    /// Shutdown was asked for.
    Shutdown,
    /// The session was lost (or never worked): wait and reconnect.
    Lost(String),
}

/// What one look did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Look {
    /// Events committed to kfr's store (new and duplicate).
    pub taken: usize,
    /// Look again at once: rows were taken, more may be waiting.
    pub more: bool,
    /// Parked at this row id.
    pub parked_at: Option<i64>,
}

/// A failure of one look.
enum LookError {
    /// The core system's database: the session is given up and made again.
    Db(tokio_postgres::Error),
    /// kfr's own store refused the commit (logged by the intake): tried again at the next look.
    Store,
    Fatal(PgOutboxError),
}

impl From<tokio_postgres::Error> for LookError {
    fn from(e: tokio_postgres::Error) -> Self {
        LookError::Db(e)
    }
}

impl PgOutbox {
    pub fn new(opts: PgOutboxOptions, intake: Intake) -> Result<PgOutbox, PgOutboxError> {
        let setup = |detail: String| PgOutboxError::Setup {
            name: opts.name.clone(),
            detail,
        };
        let config: tokio_postgres::Config = opts
            .target
            .url
            .parse()
            .map_err(|e: tokio_postgres::Error| setup(format!("its url is not a PostgreSQL URL: {e}")))?;
        let db = config
            .get_dbname()
            .or(config.get_user())
            .ok_or_else(|| setup("its url names no database".into()))?;
        let mut id_prefix = format!("pg:{db}.{}:", opts.table);
        // Ids are at most 128 visible ASCII characters; a row id takes up to 20 of them.
        if id_prefix.len() > event::MAX_EVENT_ID - 20 || !id_prefix.chars().all(|c| c.is_ascii_graphic()) {
            use sha2::Digest as _;
            let digest = sha2::Sha256::digest(id_prefix.as_bytes());
            id_prefix = format!("pg:{}:", hex::encode(&digest[..8]));
        }
        let report = SourceReport {
            name: opts.name.clone(),
            ..Default::default()
        };
        Ok(PgOutbox {
            opts,
            intake,
            report,
            id_prefix,
            parked: None,
            #[cfg(test)]
            waits: Default::default(),
        })
    }

    /// The event id of the row with id `id`: `pg:<database>.<table>:<id>` — the same row gives
    /// the same id whatever the source is called, so a row read twice is a duplicate, never a
    /// second event; two databases with tables of the same name do not collide.
    pub fn event_id(&self, id: i64) -> String {
        format!("{}{id}", self.id_prefix)
    }

    fn channel(&self) -> &str {
        self.opts.table.rsplit('.').next().unwrap_or(&self.opts.table)
    }

    fn table_error(&self, detail: impl Into<String>) -> PgOutboxError {
        PgOutboxError::Table {
            table: self.opts.table.clone(),
            url: self.opts.target.describe(),
            detail: detail.into(),
        }
    }

    /// Reads until `shutdown`, waiting out the core system's database when it is away.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<SourceReport, PgOutboxError> {
        let mut backoff = FIRST_BACKOFF;
        // Why the source is waiting, once logged; cleared when a session works again.
        let mut waiting: Option<String> = None;
        loop {
            if shutdown.is_cancelled() {
                return Ok(self.report);
            }
            let ended = match self.opts.target.connect_listening(APPLICATION).await {
                Err(e) => Ended::Lost(e.to_string()),
                Ok((client, notes, conn)) => {
                    let ended = self
                        .session(&client, notes, conn, &shutdown, &mut waiting, &mut backoff)
                        .await?;
                    drop(client);
                    ended
                }
            };
            match ended {
                Ended::Shutdown => return Ok(self.report),
                Ended::Lost(detail) => {
                    if waiting.is_none() {
                        tracing::warn!(source = %self.opts.name, table = %self.opts.table, url = %self.opts.target.describe(),
                            error = %detail, "the core system's database cannot be read: waiting for it, reconnecting with backoff (the agent goes on)");
                        super::super::metrics::set_source_stalled(&self.opts.name, "unreachable", true);
                        waiting = Some(detail);
                    } else {
                        tracing::debug!(source = %self.opts.name, error = %detail, "still waiting for the core system's database");
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(self.report),
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One session: checks the table, listens, and looks until the session ends or shutdown.
    async fn session(
        &mut self,
        client: &tokio_postgres::Client,
        mut notes: crate::pg::Notifications,
        mut conn: tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
        shutdown: &CancellationToken,
        waiting: &mut Option<String>,
        backoff: &mut Duration,
    ) -> Result<Ended, PgOutboxError> {
        let lost = |e: &dyn std::error::Error| Ended::Lost(crate::pg::error_chain(e));
        match self.check_table(client).await {
            Ok(()) => {}
            Err(LookError::Fatal(e)) => return Err(e),
            Err(LookError::Db(e)) => return Ok(lost(&e)),
            Err(LookError::Store) => unreachable!("the check does not write"),
        }
        if let Err(e) = client.batch_execute(&format!("LISTEN {}", self.channel())).await {
            return Ok(lost(&e));
        }
        if waiting.take().is_some() {
            tracing::info!(source = %self.opts.name, table = %self.opts.table, "the core system's database is back: reading the outbox table again");
            super::super::metrics::set_source_stalled(&self.opts.name, "unreachable", false);
        }
        *backoff = FIRST_BACKOFF;
        let mut store_wait = FIRST_BACKOFF;
        loop {
            // Notifications that came before this look are answered by it.
            while notes.try_recv().is_ok() {}
            let pause = match self.look(client).await {
                Ok(look) if look.more => Duration::ZERO,
                Ok(_) => {
                    store_wait = FIRST_BACKOFF;
                    self.opts.poll_interval
                }
                Err(LookError::Db(e)) => {
                    if is_table_problem(&e) {
                        return Err(self.table_error(crate::pg::error_chain(&e)));
                    }
                    return Ok(lost(&e));
                }
                Err(LookError::Store) => {
                    store_wait = (store_wait * 2).min(MAX_BACKOFF);
                    store_wait
                }
                Err(LookError::Fatal(e)) => return Err(e),
            };
            if pause.is_zero() {
                if shutdown.is_cancelled() {
                    return Ok(Ended::Shutdown);
                }
                continue;
            }
            #[cfg(test)]
            self.waits.send_modify(|n| *n += 1);
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(Ended::Shutdown),
                _ = tokio::time::sleep(pause) => {}
                note = notes.recv() => {
                    if note.is_none() {
                        // The session ended; the connection's task says why.
                        let why = match (&mut conn).await {
                            Ok(Err(e)) => crate::pg::error_chain(&e),
                            _ => "the connection closed".into(),
                        };
                        return Ok(Ended::Lost(why));
                    }
                }
            }
        }
    }

    /// The table has the columns of an outbox table, of types kfr reads without loss, and the
    /// role may read it.
    async fn check_table(&self, client: &tokio_postgres::Client) -> Result<(), LookError> {
        let sql = format!(
            "SELECT id, op, customer_id, start_date, occurred_at, xid FROM {} LIMIT 0",
            self.opts.table
        );
        let stmt = match client.prepare(&sql).await {
            Ok(s) => s,
            Err(e) if is_table_problem(&e) => {
                return Err(LookError::Fatal(self.table_error(crate::pg::error_chain(&e))));
            }
            Err(e) => return Err(LookError::Db(e)),
        };
        let text = [Type::TEXT, Type::VARCHAR];
        let expected: [(&str, &[Type], &str); 6] = [
            ("id", &[Type::INT8, Type::INT4, Type::INT2], "bigint"),
            ("op", &text, "text"),
            // Text, never a number: a number loses a fødselsnummer's leading zero.
            ("customer_id", &text, "text"),
            ("start_date", &[Type::DATE], "date"),
            ("occurred_at", &[Type::TIMESTAMPTZ], "timestamptz"),
            ("xid", &[Type::XID8], "xid8 DEFAULT pg_current_xact_id()"),
        ];
        for (col, (name, ok, want)) in stmt.columns().iter().zip(expected) {
            if !ok.contains(col.type_()) {
                return Err(LookError::Fatal(self.table_error(format!(
                    "column {name} is {}, expected {want}",
                    col.type_().name()
                ))));
            }
        }
        Ok(())
    }

    /// Takes what is waiting: up to one batch of the current round (starting a round if none is
    /// under way), committed with the cursor in one kfr store transaction.
    async fn look(&mut self, client: &tokio_postgres::Client) -> Result<Look, LookError> {
        let stored = self
            .intake
            .handle
            .source_cursor(self.opts.name.clone())
            .await
            .map_err(|e| {
                tracing::error!(source = %self.opts.name, error = %e, "cannot read the source's position from the state store; trying again");
                LookError::Store
            })?;
        let mut position = Position::from_stored(stored, &self.opts.name).map_err(LookError::Fatal)?;
        loop {
            let cursor = match position {
                Position::In(c) => c,
                Position::Between(base) => {
                    let row = client.query_one("SELECT pg_current_snapshot()::text", &[]).await?;
                    Cursor {
                        base,
                        target: row.get(0),
                        after: (0, i64::MIN),
                    }
                }
            };
            let rows = client
                .query(
                    &format!(
                        "SELECT id::int8, op::text, customer_id::text, start_date, occurred_at, xid::text
                         FROM {}
                         WHERE xid >= pg_snapshot_xmin($1::text::pg_snapshot)
                           AND NOT pg_visible_in_snapshot(xid, $1::text::pg_snapshot)
                           AND pg_visible_in_snapshot(xid, $2::text::pg_snapshot)
                           AND (xid, id) > ($3::text::xid8, $4::int8)
                         ORDER BY xid, id
                         LIMIT $5",
                        self.opts.table
                    ),
                    &[
                        &cursor.base,
                        &cursor.target,
                        &cursor.after.0.to_string(),
                        &cursor.after.1,
                        &self.opts.batch,
                    ],
                )
                .await?;
            if rows.is_empty() {
                // The round is done. Between rounds nothing needs storing: the stored cursor's
                // round has nothing left after it, so a restart from it finds the same.
                if cursor.after == (0, i64::MIN) {
                    // A new round that found nothing. The stored cursor stays where the last
                    // commit put it: the round after it is found empty again.
                    self.unpark();
                    return Ok(Look::default());
                }
                position = Position::Between(cursor.target);
                continue;
            }
            let cx = self.intake.context(&self.opts.name);
            let mut events = vec![];
            let mut last = cursor.after;
            let mut parked_at = None;
            for row in &rows {
                let id: i64 = row.get(0);
                let xid: String = row.get(5);
                let xid: u64 = xid.parse().map_err(|_| {
                    LookError::Fatal(self.table_error(format!("row id {id}: xid {xid:?} is not a transaction id")))
                })?;
                match self.event_of(row, id, &cx) {
                    Ok(e) => {
                        events.push(e);
                        last = (xid, id);
                    }
                    Err(refusal) => {
                        self.park(id, &refusal);
                        parked_at = Some(id);
                        break;
                    }
                }
            }
            if parked_at.is_none() {
                self.unpark();
            }
            let taken = events.len();
            if taken > 0 {
                let next = Cursor { after: last, ..cursor };
                let results = match self
                    .intake
                    .commit_from_cursor(&self.opts.name, events, next.text())
                    .await
                {
                    Ok(r) => r,
                    Err(crate::store::StoreError::EventIdConflict { index, seq }) => {
                        // A row's event id names another stored event: the row was changed
                        // after kfr took it, or another source uses the same ids.
                        let id = rows[index].get::<_, i64>(0);
                        let refusal = Broken::new(
                            "event_id",
                            "conflict",
                            format!(
                                "this row's event id is stored already, as outbox entry {seq}, for a different event"
                            ),
                        )
                        .at(self.location(id), Some(&self.event_id(id)));
                        self.park(id, &refusal);
                        return Ok(Look {
                            taken: 0,
                            more: false,
                            parked_at: Some(id),
                        });
                    }
                    Err(_) => return Err(LookError::Store),
                };
                let (stored, dup) = counts(&results);
                self.report.stored += stored;
                self.report.duplicates += dup;
                tracing::debug!(source = %self.opts.name, stored, duplicates = dup, "outbox table rows stored");
            }
            return Ok(Look {
                taken,
                // After a commit, look again at once: the round may go on, and rows that
                // committed meanwhile are the next round's.
                more: taken > 0 && parked_at.is_none(),
                parked_at,
            });
        }
    }

    fn location(&self, id: i64) -> Location {
        Location::Row {
            table: self.opts.table.as_str().into(),
            id,
        }
    }

    /// One row as an event, by the same rules as every source.
    fn event_of(&self, row: &tokio_postgres::Row, id: i64, cx: &event::Context) -> Result<NewEvent, Refusal> {
        let event_id = self.event_id(id);
        let build = || -> Result<NewEvent, Broken> {
            let op: Option<String> = row.get(1);
            let op = event::parse_op(
                op.as_deref()
                    .ok_or_else(|| Broken::new("op", "missing", "op is required: \"add\" or \"remove\""))?,
            )?;
            let customer: Option<String> = row.get(2);
            let customer = customer.ok_or_else(|| Broken::new("customer_id", "missing", "customer_id is required"))?;
            let customer = event::check_customer(&customer, &cx.policy)?;
            let start: Option<NaiveDate> = row.get(3);
            let start_date = event::check_start(op, start, cx.today)?;
            let occurred: Option<DateTime<Utc>> = row.get(4);
            Ok(NewEvent {
                event_id: event::check_event_id(&event_id)?,
                op,
                customer_id: customer.as_str().to_string(),
                start_date,
                occurred_at: occurred.unwrap_or(cx.received_at),
                source: cx.source.clone(),
            })
        };
        build().map_err(|b| b.at(self.location(id), Some(&event_id)))
    }

    /// Parks at row `id`: logged and counted once per row and rule.
    fn park(&mut self, id: i64, refusal: &Refusal) {
        let key = (id, refusal.rule.clone());
        if self.parked.as_ref() == Some(&key) {
            return;
        }
        self.parked = Some(key);
        self.report.refused += 1;
        super::super::metrics::event_refused(&self.opts.name, &refusal.rule);
        super::super::metrics::set_source_stalled(&self.opts.name, "bad_row", true);
        tracing::error!(source = %self.opts.name, row_id = id, refusal = %refusal,
            "outbox table row refused: the source waits at this row (nothing after it is taken) until the row is corrected or deleted in the core system's table");
    }

    fn unpark(&mut self) {
        if let Some((id, _)) = self.parked.take() {
            tracing::info!(source = %self.opts.name, row_id = id, "the refused outbox table row was corrected or deleted: reading on");
            super::super::metrics::set_source_stalled(&self.opts.name, "bad_row", false);
        }
    }
}

/// Errors that say the table is not there for kfr: missing, a column missing, no privilege.
fn is_table_problem(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    e.code().is_some_and(|c| {
        [
            SqlState::UNDEFINED_TABLE,
            SqlState::UNDEFINED_COLUMN,
            SqlState::INSUFFICIENT_PRIVILEGE,
            SqlState::INVALID_SCHEMA_NAME,
            SqlState::UNDEFINED_FUNCTION,
        ]
        .contains(c)
    })
}

impl Source for PgOutbox {
    fn name(&self) -> &str {
        &self.opts.name
    }
    fn run(self: Box<Self>, shutdown: CancellationToken) -> BoxFuture<'static, Result<SourceReport, SourceError>> {
        Box::pin(async move { Ok(PgOutbox::run(*self, shutdown).await?) })
    }
}

#[cfg(test)]
mod tests {
    //! Against a real server: the test cluster of [`crate::pg::cluster`], kfr's store a
    //! temporary SQLite file. Waits are for conditions (bounded), never for times.

    use super::*;
    use crate::pg::cluster;
    use crate::store::Operation;
    use crate::sync::source::testkit::{TestOutbox, person};

    const DOC: &str = include_str!("../../../docs/operations.md");

    /// The text between a line `start` and the next line `-- end` in docs/operations.md.
    fn doc_block(start: &str) -> String {
        let from = DOC
            .find(&format!("{start}\n"))
            .unwrap_or_else(|| panic!("{start} in docs"));
        let rest = &DOC[from + start.len() + 1..];
        rest[..rest.find("-- end\n").expect("-- end")].to_string()
    }

    fn target(db: &cluster::TestDb) -> crate::pg::Target {
        crate::pg::Target {
            url: db.url.clone(),
            password_file: Some(db.password_file.clone()),
            ca_file: None,
        }
    }

    /// A session of the core system (the role owning the database).
    async fn core(db: &cluster::TestDb) -> tokio_postgres::Client {
        target(db).connect("core system").await.unwrap().0
    }

    /// A database holding the documented table, created by the documented DDL as written.
    async fn with_table() -> (cluster::TestDb, tokio_postgres::Client) {
        let db = tokio::task::spawn_blocking(cluster::database).await.unwrap();
        let c = core(&db).await;
        c.batch_execute(&doc_block("-- kfr-outbox-ddl")).await.unwrap();
        (db, c)
    }

    /// The documented insert, placeholders filled in.
    fn insert_sql(id: i64, op: &str, customer: &str) -> String {
        doc_block("-- kfr-outbox-insert")
            .replace(":customer_id", &format!("'{customer}'"))
            .replace(":id", &id.to_string())
            .replace(":op", &format!("'{op}'"))
    }

    fn source(db: &cluster::TestDb, mem: &TestOutbox) -> PgOutbox {
        PgOutbox::new(PgOutboxOptions::new("core", target(db), "kfr_outbox"), mem.intake()).unwrap()
    }

    /// Looks until a look takes nothing more.
    async fn settle(s: &mut PgOutbox, c: &tokio_postgres::Client) -> Look {
        loop {
            match s.look(c).await {
                Ok(l) if l.more => continue,
                Ok(l) => return l,
                Err(LookError::Db(e)) => panic!("{e}"),
                Err(LookError::Store) => panic!("store"),
                Err(LookError::Fatal(e)) => panic!("{e}"),
            }
        }
    }

    fn ids(mem: &TestOutbox) -> Vec<String> {
        mem.stored().into_iter().map(|e| e.event_id).collect()
    }

    /// Waits (bounded) until `n` events are stored.
    async fn stored(mem: &TestOutbox, n: usize) -> Vec<String> {
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        while std::time::Instant::now() < deadline {
            if mem.stored().len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        ids(mem)
    }

    /// The acceptance of issue 22: id 100 commits after id 101. A cursor over ids would have
    /// passed 100 when it took 101; both are taken, each once, in the order they committed.
    #[tokio::test]
    async fn a_row_that_commits_after_a_higher_id_is_taken_in_commit_order() {
        let (db, first) = with_table().await;
        let second = core(&db).await;
        let mem = TestOutbox::default();
        let mut s = source(&db, &mem);
        let reader = target(&db).connect("kfr").await.unwrap().0;
        // The first session opens its transaction first and inserts id 100, and keeps it open.
        first.batch_execute("BEGIN").await.unwrap();
        first.batch_execute(&insert_sql(100, "add", &person(0))).await.unwrap();
        // The second inserts id 101 and commits.
        second.batch_execute(&insert_sql(101, "add", &person(1))).await.unwrap();
        settle(&mut s, &reader).await;
        let prefix = format!("pg:{}.kfr_outbox:", db.name);
        assert_eq!(
            ids(&mem),
            vec![format!("{prefix}101")],
            "101 is committed, 100 is not yet"
        );
        first.batch_execute("COMMIT").await.unwrap();
        settle(&mut s, &reader).await;
        assert_eq!(ids(&mem), vec![format!("{prefix}101"), format!("{prefix}100")]);
        // Looking again takes nothing twice.
        settle(&mut s, &reader).await;
        assert_eq!(mem.stored().len(), 2);
        assert_eq!((s.report.stored, s.report.duplicates), (2, 0));
        let e = &mem.stored()[1];
        assert_eq!(
            (e.op, e.customer_id.as_str(), e.source.as_str()),
            (Operation::Add, person(0).as_str(), "core")
        );
    }

    /// A restart (a new source over the same store) resumes after the stored position: every
    /// row once, in order, also when it stopped in the middle of a round.
    #[tokio::test]
    async fn a_restart_resumes_after_the_stored_position_without_gaps_or_duplicates() {
        let (db, c) = with_table().await;
        let mem = TestOutbox::default();
        for id in 1..=5 {
            c.batch_execute(&insert_sql(id, "add", &person(id as usize)))
                .await
                .unwrap();
        }
        let reader = target(&db).connect("kfr").await.unwrap().0;
        let mut s = source(&db, &mem);
        s.opts.batch = 2;
        let look = s.look(&reader).await.ok().unwrap();
        assert_eq!((look.taken, look.more), (2, true), "one batch of the round");
        drop(s);
        // Meanwhile, more rows commit.
        for id in 6..=7 {
            c.batch_execute(&insert_sql(id, "remove", &person(id as usize)))
                .await
                .unwrap();
        }
        let mut restarted = source(&db, &mem);
        restarted.opts.batch = 2;
        settle(&mut restarted, &reader).await;
        let prefix = format!("pg:{}.kfr_outbox:", db.name);
        let want: Vec<String> = (1..=7).map(|id| format!("{prefix}{id}")).collect();
        assert_eq!(ids(&mem), want);
        assert_eq!((restarted.report.stored, restarted.report.duplicates), (5, 0));
    }

    /// A row that breaks a rule: the rows before it are stored, the source waits at it (nothing
    /// after it is taken), and goes on once the bank corrects the row.
    #[tokio::test]
    async fn a_bad_row_parks_the_source_until_it_is_corrected() {
        let db = tokio::task::spawn_blocking(cluster::database).await.unwrap();
        let c = core(&db).await;
        // A table made without the documented CHECK on op.
        c.batch_execute(&doc_block("-- kfr-outbox-ddl").replace(" CHECK (op IN ('add', 'remove'))", ""))
            .await
            .unwrap();
        let p = person(2);
        let bad_check = format!("{}{}", &p[..10], (p.as_bytes()[10] - b'0' + 1) % 10);
        c.batch_execute(&insert_sql(1, "add", &person(1))).await.unwrap();
        c.batch_execute(&insert_sql(2, "add", &bad_check)).await.unwrap();
        c.batch_execute(&insert_sql(3, "upsert", &person(3))).await.unwrap();
        c.batch_execute(&insert_sql(4, "remove", &person(1))).await.unwrap();
        let mem = TestOutbox::default();
        let reader = target(&db).connect("kfr").await.unwrap().0;
        let mut s = source(&db, &mem);
        let look = settle(&mut s, &reader).await;
        assert_eq!(look.parked_at, Some(2));
        assert_eq!(mem.stored().len(), 1, "row 1 only");
        assert_eq!(
            s.parked.as_ref().map(|p| p.1.as_str()),
            Some("customer_id.second_check_digit")
        );
        // Looking again: still parked, counted once.
        assert_eq!(settle(&mut s, &reader).await.parked_at, Some(2));
        assert_eq!(s.report.refused, 1);
        // The bank corrects row 2: the source moves on, to row 3's unknown op.
        c.batch_execute(&format!(
            "UPDATE kfr_outbox SET customer_id = '{}' WHERE id = 2",
            person(2)
        ))
        .await
        .unwrap();
        assert_eq!(settle(&mut s, &reader).await.parked_at, Some(3));
        assert_eq!(s.parked.as_ref().map(|p| p.1.as_str()), Some("op.unknown"));
        // The bank deletes row 3 (its decision): row 4 follows.
        c.batch_execute("DELETE FROM kfr_outbox WHERE id = 3").await.unwrap();
        assert_eq!(settle(&mut s, &reader).await.parked_at, None);
        let got: Vec<_> = mem.stored().iter().map(|e| (e.op, e.customer_id.clone())).collect();
        assert_eq!(
            got,
            vec![
                (Operation::Add, person(1)),
                (Operation::Add, person(2)),
                (Operation::Remove, person(1))
            ]
        );
        assert_eq!(s.report.refused, 2);
    }

    /// The refusal names the row, the field and the rule, and masks the identifier.
    #[test]
    fn a_refused_row_is_named_by_table_and_id_with_the_identifier_masked() {
        let p = person(0);
        let r = Broken::new(
            "customer_id",
            "second_check_digit",
            format!("customer identifier {}", crate::ids::mask(&p)),
        )
        .at(
            Location::Row {
                table: "kfr_outbox".into(),
                id: 2,
            },
            Some("pg:core.kfr_outbox:2"),
        );
        let text = r.to_string();
        assert!(
            text.starts_with("kfr_outbox row id 2: customer_id: customer identifier "),
            "{text}"
        );
        assert!(text.ends_with("(rule customer_id.second_check_digit)"), "{text}");
        assert!(!text.contains(&p), "{text}");
    }

    /// With the documented trigger, a commit wakes the source: the poll interval is an hour, so
    /// only the notification can have made it look.
    #[tokio::test]
    async fn a_notification_wakes_the_source_before_its_poll_interval() {
        let (db, c) = with_table().await;
        let mem = TestOutbox::default();
        let mut opts = PgOutboxOptions::new("core", target(&db), "kfr_outbox");
        opts.poll_interval = Duration::from_secs(3600);
        let shutdown = CancellationToken::new();
        // Row 1 is there before the source starts: its first looks take it, then it waits.
        c.batch_execute(&insert_sql(1, "add", &person(1))).await.unwrap();
        let source = PgOutbox::new(opts, mem.intake()).unwrap();
        let mut waits = source.waits.subscribe();
        let task = tokio::spawn(source.run(shutdown.clone()));
        waits.wait_for(|n| *n >= 1).await.unwrap();
        assert_eq!(mem.stored().len(), 1, "taken before the source went to wait");
        // Asleep for an hour: only the notification can wake it for row 2.
        c.batch_execute(&insert_sql(2, "add", &person(2))).await.unwrap();
        assert_eq!(stored(&mem, 2).await.len(), 2, "woken by the notification");
        shutdown.cancel();
        let report = task.await.unwrap().unwrap();
        assert_eq!(report.stored, 2);
    }

    /// A `tracing` writer into a shared buffer, to read what was logged.
    #[derive(Clone, Default)]
    struct Logs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Logs {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The server restarts mid-stream: the source waits, reconnects and reads on from where it
    /// was, the agent (here: the task) never stopping; the outage is logged once, and its end.
    #[tokio::test]
    async fn a_server_restart_is_waited_out() {
        let logs = Logs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let server = tokio::task::spawn_blocking(|| cluster::Cluster::start().unwrap())
            .await
            .unwrap();
        let server = std::sync::Arc::new(server);
        let db = {
            let s = server.clone();
            tokio::task::spawn_blocking(move || s.database()).await.unwrap()
        };
        let c = core(&db).await;
        c.batch_execute(&doc_block("-- kfr-outbox-ddl")).await.unwrap();
        let mem = TestOutbox::default();
        let mut opts = PgOutboxOptions::new("core", target(&db), "kfr_outbox");
        opts.poll_interval = Duration::from_millis(50);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(PgOutbox::new(opts, mem.intake()).unwrap().run(shutdown.clone()));
        c.batch_execute(&insert_sql(1, "add", &person(1))).await.unwrap();
        assert_eq!(stored(&mem, 1).await.len(), 1);
        drop(c);
        let s = server.clone();
        tokio::task::spawn_blocking(move || {
            s.stop();
            s.start_again();
        })
        .await
        .unwrap();
        assert!(!task.is_finished(), "the source waits the restart out");
        let c = core(&db).await;
        c.batch_execute(&insert_sql(2, "remove", &person(1))).await.unwrap();
        c.batch_execute(&insert_sql(3, "add", &person(3))).await.unwrap();
        let prefix = format!("pg:{}.kfr_outbox:", db.name);
        assert_eq!(
            stored(&mem, 3).await,
            (1..=3).map(|id| format!("{prefix}{id}")).collect::<Vec<_>>()
        );
        shutdown.cancel();
        let report = task.await.unwrap().unwrap();
        assert_eq!((report.stored, report.duplicates), (3, 0));
        let logged = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
        assert_eq!(logged.matches("cannot be read: waiting for it").count(), 1, "{logged}");
        assert_eq!(logged.matches("database is back").count(), 1, "{logged}");
    }

    /// The documented grants are all the source needs: a role with SELECT only reads the table.
    #[tokio::test]
    async fn a_role_with_the_documented_grants_only_reads_the_table() {
        let (db, c) = with_table().await;
        c.batch_execute(&insert_sql(7, "add", &person(7))).await.unwrap();
        let role = format!("{}_reader", db.name);
        let grants = doc_block("-- kfr-outbox-grants")
            .replace("kfr_reader", &role)
            .replace(":'password'", "'synthetic-test-password'")
            .replace("ON DATABASE core", &format!("ON DATABASE {}", db.name));
        let admin_db = db.clone();
        tokio::task::spawn_blocking(move || {
            let mut admin = admin_db.admin();
            admin.batch_execute("REVOKE ALL ON SCHEMA public FROM PUBLIC").unwrap();
            admin.batch_execute(&grants).unwrap();
        })
        .await
        .unwrap();
        let reader_target = crate::pg::Target {
            url: db.url.replace(&format!("{}@", cluster::ROLE), &format!("{role}@")),
            ..target(&db)
        };
        let mem = TestOutbox::default();
        let mut s = PgOutbox::new(
            PgOutboxOptions::new("core", reader_target.clone(), "kfr_outbox"),
            mem.intake(),
        )
        .unwrap();
        let reader = reader_target.connect("kfr").await.unwrap().0;
        s.check_table(&reader).await.ok().expect("the table is readable");
        settle(&mut s, &reader).await;
        assert_eq!(mem.stored().len(), 1);
        // And it can write nothing.
        let err = reader.batch_execute("DELETE FROM kfr_outbox").await.unwrap_err();
        assert_eq!(
            err.code(),
            Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE)
        );
    }

    /// A table kfr cannot read as an outbox: the source stops with an error naming it and what
    /// is wrong, instead of waiting for ever or reading a customer id as a number.
    #[tokio::test]
    async fn a_table_of_the_wrong_shape_or_missing_stops_the_source_naming_it() {
        let db = tokio::task::spawn_blocking(cluster::database).await.unwrap();
        let mem = TestOutbox::default();
        let run = |table: &str| {
            PgOutbox::new(PgOutboxOptions::new("core", target(&db), table), mem.intake())
                .unwrap()
                .run(CancellationToken::new())
        };
        let err = run("kfr_outbox").await.unwrap_err().to_string();
        assert!(
            err.contains("the outbox table kfr_outbox in postgres://") && err.contains("does not exist"),
            "{err}"
        );
        let c = core(&db).await;
        c.batch_execute(
            "CREATE TABLE numeric_ids (id bigint PRIMARY KEY, op text NOT NULL, customer_id bigint NOT NULL,
             start_date date, occurred_at timestamptz, xid xid8 NOT NULL DEFAULT pg_current_xact_id())",
        )
        .await
        .unwrap();
        let err = run("numeric_ids").await.unwrap_err().to_string();
        assert!(err.contains("column customer_id is int8, expected text"), "{err}");
    }

    #[test]
    fn the_cursor_text_round_trips_and_nonsense_is_refused() {
        let c = Cursor {
            base: "10:12:10".into(),
            target: "12:15:13,14".into(),
            after: (11, 100),
        };
        assert_eq!(c.text(), "10:12:10|12:15:13,14|11:100");
        assert_eq!(Cursor::parse(&c.text()), Some(c));
        assert_eq!(Cursor::parse("41"), None);
        assert_eq!(Cursor::parse("1:1:|x|1:2"), None);
        assert!(Position::from_stored(Some("41".into()), "core").is_err());
    }
}
