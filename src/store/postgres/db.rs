//! The PostgreSQL backend's connection: opening (connect, migrate, refuse a newer schema), the
//! one transaction runner every part of the backend writes through — which retries what
//! PostgreSQL asks to be retried (serialization failures, deadlocks) and fences a deposed
//! deliverer by its lease epoch — and the mapping of server errors to [`StoreError`].
//!
//! Every statement runs prepared, once per connection ([`PgTx`] keeps them): a statement sent
//! as text is parsed, analysed and planned anew each time, which cost more than executing the
//! hot path's statements (1–3 ms of planning each, measured with `EXPLAIN ANALYZE` during
//! `bench/sync/throughput.sh`), and took two round trips instead of one.

use super::migrations::MIGRATIONS;
use crate::pg::Target;
use crate::store::backend::Backend;
use crate::store::error::StoreError;
use crate::store::types::{Lease, Seq};
use postgres::error::SqlState;
use postgres::types::ToSql;
use postgres::{Client, Row, Statement, Transaction};
use std::collections::HashMap;

/// How often a transaction PostgreSQL aborted for a conflict (serialization failure, deadlock)
/// is run again before the caller gets [`StoreError::Busy`].
const RETRIES: u32 = 8;

/// The server-side limit on one statement of the store's connection: a statement stuck behind a
/// lock fails instead of hanging the store thread (and with it the agent) for ever.
const STATEMENT_TIMEOUT_MS: u32 = 30_000;

/// The server ends a session that sits inside a transaction this long without a statement: a
/// frozen process (SIGSTOP, a stuck VM) caught between two statements would otherwise keep its
/// row locks — the lease row among them — and no standby could take over. kfr's transactions
/// issue their statements back to back, so only a process that stopped running meets it.
const IDLE_IN_TRANSACTION_MS: u32 = 5_000;

/// How many prepared statements a connection keeps. The backend's statements are a fixed set
/// plus a few built per call (a list of sources); past this the cache starts again, so text
/// that varies without bound cannot grow the server's memory or ours.
const STATEMENTS_KEPT: usize = 256;

/// `application_name` of the store's connections (visible in `pg_stat_activity`).
pub(crate) const APPLICATION: &str = "kfr";

/// An open PostgreSQL store: the [`Backend`] over one database.
pub struct PgBackend {
    pub(crate) client: Client,
    /// The statements prepared on `client`, by their text (emptied with a new connection).
    pub(crate) statements: Statements,
    pub(crate) target: Target,
    /// The delivery lease this process holds (its writes are fenced by its epoch).
    pub(crate) lease: Option<Lease>,
    /// The dedicated, unpooled connection holding the delivery lease's session advisory lock
    /// (`None`: no lock held). The lock lasts exactly as long as the session; dropping the
    /// connection is how it is let go, so it is never taken twice (session locks stack).
    pub(crate) lock_conn: Option<Client>,
    /// The same for the load writer's lock.
    pub(crate) writer_conn: Option<Client>,
}

impl Backend for PgBackend {
    fn describe(&self) -> String {
        self.target.describe()
    }
}

/// What a backend call's closure may fail with: a server error, or a decision of our own.
#[derive(Debug)]
pub(crate) enum Fault {
    Db(postgres::Error),
    Store(StoreError),
}

impl From<postgres::Error> for Fault {
    fn from(e: postgres::Error) -> Self {
        Fault::Db(e)
    }
}

impl From<StoreError> for Fault {
    fn from(e: StoreError) -> Self {
        Fault::Store(e)
    }
}

/// `WrongState` for `seq`, as the trait documents.
pub(crate) fn wrong(seq: Seq, problem: impl Into<String>) -> Fault {
    Fault::Store(StoreError::WrongState {
        seq,
        problem: problem.into(),
    })
}

/// How a call's transaction runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tx {
    /// Reads only.
    Read,
    /// Writes (READ COMMITTED; what must not change under it is locked or written conditionally).
    Write,
    /// A write of the deliverer: as `Write`, and refused ([`StoreError::Fenced`]) when this
    /// backend holds a delivery lease whose epoch the store has moved past. The lease row is
    /// read `FOR SHARE`, so a takeover (which updates it) waits until this transaction ends:
    /// no write of an older epoch can commit after a newer epoch was granted.
    Fenced,
}

impl PgBackend {
    /// Connects to the database and migrates it to the current schema.
    pub fn open(target: &Target) -> Result<PgBackend, StoreError> {
        let client = connect(target)?;
        let mut backend = PgBackend {
            client,
            statements: Statements::default(),
            target: target.clone(),
            lease: None,
            lock_conn: None,
            writer_conn: None,
        };
        backend.migrate()?;
        Ok(backend)
    }

    /// The schema version this build writes.
    pub fn current_version() -> u32 {
        MIGRATIONS.len() as u32
    }

    /// The schema version of the database (0: kfr's tables are not there yet).
    pub fn version(&mut self) -> Result<u32, StoreError> {
        self.tx(Tx::Read, version)
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let store = self.describe();
        self.tx(Tx::Write, |tx| {
            // One migrator at a time (two agents starting together on an empty database).
            tx.execute("SELECT pg_advisory_xact_lock(hashtext('kfr.migrate'))", &[])?;
            tx.batch_execute(
                "CREATE TABLE IF NOT EXISTS kfr_migrations (
                     version      integer PRIMARY KEY,
                     applied_at   timestamptz NOT NULL DEFAULT now(),
                     kfr_version  text NOT NULL
                 )",
            )?;
            let have = version(tx)?;
            if have > Self::current_version() {
                return Err(Fault::Store(StoreError::Corrupt {
                    store: store.clone(),
                    detail: format!(
                        "the state store has schema version {have}, newer than this kfr knows ({}); use a newer kfr",
                        Self::current_version()
                    ),
                }));
            }
            for (i, sql) in MIGRATIONS.iter().enumerate().skip(have as usize) {
                tx.batch_execute(sql)?;
                tx.execute(
                    "INSERT INTO kfr_migrations (version, kfr_version) VALUES ($1, $2)",
                    &[&((i + 1) as i32), &env!("CARGO_PKG_VERSION")],
                )?;
            }
            Ok(())
        })
    }

    /// Runs `f` in one transaction, committing if it succeeds; runs it again (up to [`RETRIES`]
    /// times) when PostgreSQL aborted it for a conflict it asks clients to retry. `f` may
    /// therefore run more than once and must not act outside the transaction.
    pub(crate) fn tx<T>(
        &mut self,
        mode: Tx,
        mut f: impl FnMut(&mut PgTx<'_>) -> Result<T, Fault>,
    ) -> Result<T, StoreError> {
        let store = self.describe();
        let fence = match (&self.lease, mode) {
            (Some(lease), Tx::Fenced) => Some((lease.register.clone(), lease.epoch)),
            _ => None,
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = (|| -> Result<T, Fault> {
                let inner = if mode == Tx::Read {
                    self.client.build_transaction().read_only(true).start()?
                } else {
                    self.client.transaction()?
                };
                let mut tx = PgTx {
                    inner,
                    statements: &mut self.statements,
                };
                if let Some((register, held)) = &fence {
                    check_epoch(&mut tx, register, *held)?;
                }
                let out = f(&mut tx)?;
                tx.inner.commit()?;
                Ok(out)
            })();
            match result {
                Ok(out) => return Ok(out),
                Err(Fault::Db(e)) if retryable(&e) && attempt < RETRIES => continue,
                Err(Fault::Db(e)) if retryable(&e) => return Err(StoreError::Busy { store }),
                Err(Fault::Db(e)) => return Err(self.db_error(e)),
                Err(Fault::Store(e)) => return Err(e),
            }
        }
    }

    /// A server or connection error in the terms an operator acts on. A connection that is
    /// gone is replaced (the next call uses a new one), so a restarted server is waited out by
    /// the callers' own retries.
    pub(crate) fn db_error(&mut self, e: postgres::Error) -> StoreError {
        let store = self.describe();
        let detail = crate::pg::error_chain(&e);
        if self.client.is_closed() || e.as_db_error().is_none() && e.code().is_none() {
            if let Ok(client) = connect(&self.target) {
                self.client = client;
                self.statements = Statements::default();
            }
            return StoreError::Unavailable { store, detail };
        }
        store_error(&store, &e, detail)
    }
}

/// The server's answer as a [`StoreError`].
pub(crate) fn store_error(store: &str, e: &postgres::Error, detail: String) -> StoreError {
    let store = store.to_string();
    match e.code() {
        Some(c) if *c == SqlState::DISK_FULL || *c == SqlState::READ_ONLY_SQL_TRANSACTION => {
            StoreError::NotWritable { store, detail }
        }
        Some(c) if *c == SqlState::INSUFFICIENT_PRIVILEGE => StoreError::NotWritable { store, detail },
        Some(c) if *c == SqlState::QUERY_CANCELED || *c == SqlState::LOCK_NOT_AVAILABLE => StoreError::Busy { store },
        Some(c)
            if *c == SqlState::ADMIN_SHUTDOWN
                || *c == SqlState::CRASH_SHUTDOWN
                || *c == SqlState::CANNOT_CONNECT_NOW
                || *c == SqlState::CONNECTION_FAILURE =>
        {
            StoreError::Unavailable { store, detail }
        }
        Some(c) if *c == SqlState::DATA_CORRUPTED || *c == SqlState::INDEX_CORRUPTED => {
            StoreError::Corrupt { store, detail }
        }
        _ => StoreError::Other(format!("{store}: {detail}")),
    }
}

/// Conflicts PostgreSQL resolves by aborting one side, which may simply run again.
fn retryable(e: &postgres::Error) -> bool {
    e.code()
        .is_some_and(|c| *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED)
}

/// A new connection for the store, with its server-side statement limit and UTC session time.
pub(crate) fn connect(target: &Target) -> Result<Client, StoreError> {
    let mut client = target
        .connect_blocking(APPLICATION)
        .map_err(|e| StoreError::Unavailable {
            store: target.describe(),
            detail: e.to_string(),
        })?;
    client
        .batch_execute(&format!(
            "SET statement_timeout = {STATEMENT_TIMEOUT_MS}; SET lock_timeout = {STATEMENT_TIMEOUT_MS}; \
             SET idle_in_transaction_session_timeout = {IDLE_IN_TRANSACTION_MS}; SET TIME ZONE 'UTC'"
        ))
        .map_err(|e| StoreError::Unavailable {
            store: target.describe(),
            detail: crate::pg::error_chain(&e),
        })?;
    Ok(client)
}

/// The newest migration applied (0: none; the table may not exist yet).
fn version(tx: &mut PgTx<'_>) -> Result<u32, Fault> {
    let exists: bool = tx
        .query_one("SELECT to_regclass('kfr_migrations') IS NOT NULL", &[])?
        .get(0);
    if !exists {
        return Ok(0);
    }
    let v: Option<i32> = tx.query_one("SELECT max(version) FROM kfr_migrations", &[])?.get(0);
    Ok(v.unwrap_or(0) as u32)
}

/// Fails with [`StoreError::Fenced`] unless `register`'s lease is still at epoch `held`; holds
/// the lease row (`FOR SHARE`) until the transaction ends, so no takeover commits in between.
pub(crate) fn check_epoch(tx: &mut PgTx<'_>, register: &str, held: i64) -> Result<(), Fault> {
    let current: Option<i64> = tx
        .query_opt("SELECT epoch FROM leases WHERE register = $1 FOR SHARE", &[&register])?
        .map(|r| r.get(0));
    if current == Some(held) {
        return Ok(());
    }
    Err(Fault::Store(StoreError::Fenced {
        register: register.to_string(),
        held,
        current: current.unwrap_or(0),
    }))
}

/// The statements prepared on one connection, by their text.
#[derive(Default)]
pub(crate) struct Statements(HashMap<String, Statement>);

/// One transaction of the store's connection. Its statements run prepared: each text is
/// prepared on the connection the first time (one round trip) and then only bound and executed
/// (one round trip, no parsing or planning of a custom plan once the server settles on a
/// generic one). A statement prepared in a transaction that rolls back stays prepared: the
/// protocol's prepared statements are not transactional.
pub(crate) struct PgTx<'a> {
    pub(crate) inner: Transaction<'a>,
    statements: &'a mut Statements,
}

/// A statement's parameters.
pub(crate) type Params<'p> = [&'p (dyn ToSql + Sync)];

impl<'a> PgTx<'a> {
    /// `sql`'s prepared statement on this connection, preparing it the first time.
    fn prepared(&mut self, sql: &str) -> Result<Statement, postgres::Error> {
        if let Some(statement) = self.statements.0.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.inner.prepare(sql)?;
        if self.statements.0.len() >= STATEMENTS_KEPT {
            self.statements.0.clear();
        }
        self.statements.0.insert(sql.to_string(), statement.clone());
        Ok(statement)
    }

    pub(crate) fn query(&mut self, sql: &str, params: &Params<'_>) -> Result<Vec<Row>, postgres::Error> {
        let statement = self.prepared(sql)?;
        self.inner.query(&statement, params)
    }

    pub(crate) fn query_one(&mut self, sql: &str, params: &Params<'_>) -> Result<Row, postgres::Error> {
        let statement = self.prepared(sql)?;
        self.inner.query_one(&statement, params)
    }

    pub(crate) fn query_opt(&mut self, sql: &str, params: &Params<'_>) -> Result<Option<Row>, postgres::Error> {
        let statement = self.prepared(sql)?;
        self.inner.query_opt(&statement, params)
    }

    pub(crate) fn execute(&mut self, sql: &str, params: &Params<'_>) -> Result<u64, postgres::Error> {
        let statement = self.prepared(sql)?;
        self.inner.execute(&statement, params)
    }

    /// Runs `sql` (one or more statements, no parameters) as text: schema changes and
    /// savepoints, which are not worth preparing.
    pub(crate) fn batch_execute(&mut self, sql: &str) -> Result<(), postgres::Error> {
        self.inner.batch_execute(sql)
    }
}
