//! The PostgreSQL backend's connection: opening (connect, migrate, refuse a newer schema), the
//! one transaction runner every part of the backend writes through — which retries what
//! PostgreSQL asks to be retried (serialization failures, deadlocks) and fences a deposed
//! deliverer by its lease epoch — and the mapping of server errors to [`StoreError`].

use super::migrations::MIGRATIONS;
use crate::pg::Target;
use crate::store::backend::Backend;
use crate::store::error::StoreError;
use crate::store::types::{Lease, Seq};
use postgres::error::SqlState;
use postgres::{Client, Transaction};

/// How often a transaction PostgreSQL aborted for a conflict (serialization failure, deadlock)
/// is run again before the caller gets [`StoreError::Busy`].
const RETRIES: u32 = 8;

/// The server-side limit on one statement of the store's connection: a statement stuck behind a
/// lock fails instead of hanging the store thread (and with it the agent) for ever.
const STATEMENT_TIMEOUT_MS: u32 = 30_000;

/// `application_name` of the store's connections (visible in `pg_stat_activity`).
pub(crate) const APPLICATION: &str = "kfr";

/// An open PostgreSQL store: the [`Backend`] over one database.
pub struct PgBackend {
    pub(crate) client: Client,
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
        self.tx(Tx::Read, |tx| version(tx))
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
        mut f: impl FnMut(&mut Transaction<'_>) -> Result<T, Fault>,
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
                let mut tx = if mode == Tx::Read {
                    self.client.build_transaction().read_only(true).start()?
                } else {
                    self.client.transaction()?
                };
                if let Some((register, held)) = &fence {
                    check_epoch(&mut tx, register, *held)?;
                }
                let out = f(&mut tx)?;
                tx.commit()?;
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
            "SET statement_timeout = {STATEMENT_TIMEOUT_MS}; SET lock_timeout = {STATEMENT_TIMEOUT_MS}; SET TIME ZONE 'UTC'"
        ))
        .map_err(|e| StoreError::Unavailable {
            store: target.describe(),
            detail: crate::pg::error_chain(&e),
        })?;
    Ok(client)
}

/// The newest migration applied (0: none; the table may not exist yet).
fn version(tx: &mut Transaction<'_>) -> Result<u32, Fault> {
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
pub(crate) fn check_epoch(tx: &mut Transaction<'_>, register: &str, held: i64) -> Result<(), Fault> {
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
