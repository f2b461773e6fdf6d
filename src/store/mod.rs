//! The project's SQLite state store: the one durable record of what `kfr` has done to KFR.
//!
//! Owns the database file, its connection settings and its schema migrations. Tables by role:
//! - [`jobs`]: initial-load jobs and their batches (what was planned, sent, accepted, confirmed).
//! - [`ledger`]: the ledger of relationships this tool registered.
//! - [`queue`]: operations held back, one queue per customer: removes behind the initial-load
//!   barrier (onboarding D-3 step 4) and whatever the bank issued on that customer after them.
//!
//! The sync agent's outbox is meant to grow out of [`queue`] (its interface is the one a later
//! backend implements); nothing here assumes `kfr load` is the only user.
//!
//! Durability rules (the load's resume depends on them):
//! - WAL journal with `synchronous=FULL`: a committed transaction survives power loss, not only a
//!   process kill. Every state change the executor makes is one committed transaction *before* the
//!   action it enables (e.g. a batch is `uploading` before its bytes leave the process).
//! - The file is created with mode 0600: it holds customer identifiers in full (it is the
//!   institution's own operational store; see docs/load.md "State store").
//! - Several processes may open it at once (`kfr load` and `kfr remove`); writers wait up to
//!   [`BUSY_TIMEOUT`] for each other instead of failing.
//!
//! Schema versions are tracked with `PRAGMA user_version`: [`MIGRATIONS`]`[i]` takes the schema from
//! version `i` to `i + 1`. Migrations are append-only; an edited migration would leave existing
//! stores behind.

pub mod handle;
pub mod jobs;
pub mod ledger;
pub mod lock;
pub mod outbox;
mod outbox_sqlite;
pub mod queue;

#[cfg(test)]
pub mod conformance;

pub use handle::OutboxHandle;
pub use jobs::{BatchRecord, BatchStatus, JobRecord, JobStatus};
pub use queue::{CustomerQueue, HeldOp, HoldReason, OpState, Operation, Queued};

use anyhow::Context as _;
use rusqlite::Connection;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long a writer waits for another process's transaction before giving up.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Schema migrations, oldest first. Append only.
pub const MIGRATIONS: &[&str] = &[
    // 1: initial load jobs, their batches, the ledger and held deletes.
    r#"
    CREATE TABLE load_jobs (
        id            INTEGER PRIMARY KEY,
        input_path    TEXT NOT NULL,
        content_hash  TEXT NOT NULL,      -- sha256 of the input file, hex
        settings      TEXT NOT NULL,      -- JSON: everything that shapes the batches
        status        TEXT NOT NULL CHECK (status IN ('running', 'confirmed')),
        entries       INTEGER NOT NULL,
        created_at    TEXT NOT NULL,
        updated_at    TEXT NOT NULL,
        confirmed_at  TEXT
    );
    CREATE TABLE load_batches (
        job_id          INTEGER NOT NULL REFERENCES load_jobs(id),
        seq             INTEGER NOT NULL,  -- 1-based, upload order
        first_entry     INTEGER NOT NULL,  -- index into the job's planned entries
        entry_count     INTEGER NOT NULL,
        bytes           INTEGER NOT NULL,  -- exact encoded body size
        correlation_id  TEXT NOT NULL,     -- fixed at planning: every attempt carries the same one
        status          TEXT NOT NULL CHECK (status IN ('planned', 'uploading', 'accepted', 'confirmed')),
        uploading_at    TEXT,
        accepted_at     TEXT,
        confirmed_at    TEXT,
        PRIMARY KEY (job_id, seq)
    );
    CREATE TABLE ledger (
        id              INTEGER PRIMARY KEY,
        customer_id     TEXT NOT NULL,     -- in full: the institution's own store (mode 0600)
        start_date      TEXT,              -- YYYY-MM-DD; NULL = KFR's default (day of ingestion)
        how             TEXT NOT NULL CHECK (how IN ('batch', 'add')),
        at              TEXT NOT NULL,
        correlation_id  TEXT NOT NULL,
        job_id          INTEGER REFERENCES load_jobs(id),
        batch_seq       INTEGER
    );
    CREATE INDEX ledger_customer ON ledger(customer_id);
    CREATE INDEX ledger_batch ON ledger(job_id, batch_seq);
    CREATE TABLE held_deletes (
        id              INTEGER PRIMARY KEY,
        customer_id     TEXT NOT NULL,
        queued_at       TEXT NOT NULL,
        correlation_id  TEXT NOT NULL,
        sent_at         TEXT,
        outcome         TEXT               -- removed | not_found | error: …
    );
    "#,
    // 2: the held deletes become held operations, one queue per customer (adds wait behind an
    // earlier held operation on the same customer; docs/specs/barrier.md). Rows keep their ids,
    // so issue order survives; a delete already sent is settled with its outcome.
    r#"
    CREATE TABLE held_operations (
        id              INTEGER PRIMARY KEY,  -- issue order
        customer_id     TEXT NOT NULL,        -- in full: the institution's own store (mode 0600)
        operation       TEXT NOT NULL CHECK (operation IN ('add', 'remove')),
        correlation_id  TEXT NOT NULL,        -- given when queued, sent with every attempt
        queued_at       TEXT NOT NULL,
        state           TEXT NOT NULL CHECK (state IN ('queued', 'claimed', 'parked', 'settled')),
        attempts        INTEGER NOT NULL DEFAULT 0,
        last_error      TEXT,
        claimed_at      TEXT,
        settled_at      TEXT,
        outcome         TEXT                  -- added | already_present | removed | not_found
    );
    CREATE INDEX held_operations_customer ON held_operations(customer_id, state);
    INSERT INTO held_operations (id, customer_id, operation, correlation_id, queued_at, state, settled_at, outcome)
        SELECT id, customer_id, 'remove', correlation_id, queued_at,
               CASE WHEN sent_at IS NULL THEN 'queued' ELSE 'settled' END, sent_at, outcome
        FROM held_deletes ORDER BY id;
    DROP TABLE held_deletes;
    "#,
    // 3: what confirms a batch and what it cost (issue 9). `witness` is the offset in the batch
    // of the entry chosen before the upload because it was not visible then (NULL: none was
    // found, or a batch planned before this version); `confirmed_by` says how the batch was
    // confirmed; `resends` counts uploads repeated after an upload whose fate was unknown.
    r#"
    ALTER TABLE load_batches ADD COLUMN witness INTEGER;
    ALTER TABLE load_batches ADD COLUMN witness_checked INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE load_batches ADD COLUMN confirmed_by TEXT;
    ALTER TABLE load_batches ADD COLUMN resends INTEGER NOT NULL DEFAULT 0;
    "#,
    // 4: the outbox (docs/specs/outbox.md). Load jobs get their register (NULL: a job planned
    // before this version, which holds removes of every register, the safe reading) and the
    // status `abandoned`; SQLite cannot alter a CHECK, so the table is rebuilt the documented
    // way (new table, copy, drop, rename; foreign keys are off during migrations, see
    // `Store::migrate`). Unsettled held operations move into the outbox, keeping their ids as
    // seq so issue order survives; settled ones stay in `held_operations` as history.
    r#"
    CREATE TABLE load_jobs_v4 (
        id            INTEGER PRIMARY KEY,
        input_path    TEXT NOT NULL,
        content_hash  TEXT NOT NULL,
        settings      TEXT NOT NULL,
        status        TEXT NOT NULL CHECK (status IN ('running', 'confirmed', 'abandoned')),
        entries       INTEGER NOT NULL,
        created_at    TEXT NOT NULL,
        updated_at    TEXT NOT NULL,
        confirmed_at  TEXT,
        register      TEXT,               -- Register::key; NULL: every register
        abandoned_at  TEXT
    );
    INSERT INTO load_jobs_v4 (id, input_path, content_hash, settings, status, entries, created_at, updated_at, confirmed_at)
        SELECT id, input_path, content_hash, settings, status, entries, created_at, updated_at, confirmed_at
        FROM load_jobs ORDER BY id;
    DROP TABLE load_jobs;
    ALTER TABLE load_jobs_v4 RENAME TO load_jobs;
    CREATE INDEX load_jobs_status ON load_jobs(status, register);

    CREATE TABLE outbox (
        seq                    INTEGER PRIMARY KEY AUTOINCREMENT,  -- issue order; never reused
        register               TEXT NOT NULL,    -- Register::key ('' : a held operation of a job of unknown register)
        event_id               TEXT NOT NULL UNIQUE,
        op                     TEXT NOT NULL CHECK (op IN ('add', 'remove')),
        customer_id            TEXT NOT NULL,    -- in full: the institution's own store (mode 0600)
        start_date             TEXT,
        occurred_at            TEXT NOT NULL,
        source                 TEXT NOT NULL,
        received_at            TEXT NOT NULL,
        correlation_id         TEXT NOT NULL,
        state                  TEXT NOT NULL CHECK (state IN
                                   ('pending', 'in_flight', 'accepted', 'delivered', 'dead_lettered', 'dropped')),
        head                   INTEGER CHECK (head = 1),  -- 1: its customer's oldest unfinished event
        claimer                TEXT,             -- who holds it in flight: 'queue' (kfr load) or NULL
        attempts               INTEGER NOT NULL DEFAULT 0,
        next_attempt_at        TEXT,
        failing_since          TEXT,
        last_error             TEXT,
        batch_correlation_id   TEXT,
        accepted_at            TEXT,
        finished_at            TEXT,
        delivery               TEXT,             -- how it reached the wanted state
        echoed_correlation_id  TEXT,
        rejection              TEXT,             -- JSON: KFR's answer when dead-lettered
        dead_at                TEXT
    );
    -- A customer's queue, and its next event when the head finishes.
    CREATE INDEX outbox_customer ON outbox(register, customer_id, seq);
    -- Heads by state: claim_ready, accepted, recover, dead letters, parked counts.
    CREATE INDEX outbox_heads ON outbox(register, state, seq) WHERE head = 1;
    CREATE INDEX outbox_batch ON outbox(batch_correlation_id) WHERE batch_correlation_id IS NOT NULL;
    CREATE INDEX outbox_finished ON outbox(finished_at) WHERE finished_at IS NOT NULL;
    CREATE INDEX outbox_held ON outbox(seq)
        WHERE source IN ('kfr remove', 'kfr add') AND finished_at IS NULL;

    -- Counts per register and state, kept by triggers so `status` reads a few rows, not the table.
    CREATE TABLE outbox_counts (
        register  TEXT NOT NULL,
        state     TEXT NOT NULL,
        n         INTEGER NOT NULL,
        PRIMARY KEY (register, state)
    ) WITHOUT ROWID;
    CREATE TRIGGER outbox_count_insert AFTER INSERT ON outbox BEGIN
        INSERT INTO outbox_counts (register, state, n) VALUES (new.register, new.state, 1)
            ON CONFLICT (register, state) DO UPDATE SET n = n + 1;
    END;
    CREATE TRIGGER outbox_count_update AFTER UPDATE OF state, register ON outbox
        WHEN old.state != new.state OR old.register != new.register BEGIN
        UPDATE outbox_counts SET n = n - 1 WHERE register = old.register AND state = old.state;
        INSERT INTO outbox_counts (register, state, n) VALUES (new.register, new.state, 1)
            ON CONFLICT (register, state) DO UPDATE SET n = n + 1;
    END;
    CREATE TRIGGER outbox_count_delete AFTER DELETE ON outbox BEGIN
        UPDATE outbox_counts SET n = n - 1 WHERE register = old.register AND state = old.state;
    END;

    -- What this tool last made KFR hold, per register and customer; changed in the same
    -- transaction as the outcome that changed it.
    CREATE TABLE ledger_current (
        register        TEXT NOT NULL,
        customer_id     TEXT NOT NULL,     -- in full: the institution's own store (mode 0600)
        state           TEXT NOT NULL CHECK (state IN ('active', 'ended')),
        start_date      TEXT,
        since           TEXT NOT NULL,
        correlation_id  TEXT NOT NULL,
        PRIMARY KEY (register, customer_id)
    ) WITHOUT ROWID;

    INSERT INTO outbox (seq, register, event_id, op, customer_id, occurred_at, source, received_at,
                        correlation_id, state, attempts, last_error)
        SELECT id, '', 'held-' || id || '-' || correlation_id, operation, customer_id, queued_at,
               'kfr ' || operation, queued_at, correlation_id, 'pending', attempts, last_error
        FROM held_operations WHERE state != 'settled' ORDER BY id;
    UPDATE outbox SET head = 1 WHERE seq IN (SELECT MIN(seq) FROM outbox GROUP BY register, customer_id);
    DELETE FROM held_operations WHERE state != 'settled';
    "#,
];

/// An open state store.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
    path: PathBuf,
    /// Device and inode of the file opened, to notice it deleted or replaced under us.
    identity: Option<(u64, u64)>,
}

/// Device and inode of the file at `path` (`None` when there is none, or off Unix).
pub(crate) fn file_identity(path: &Path) -> Option<(u64, u64)> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
    }
    #[cfg(not(unix))]
    {
        path.exists().then_some((0, 0))
    }
}

/// Now, as stored: RFC 3339 UTC with milliseconds (sorts as text).
pub fn now_text() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl Store {
    /// Opens the store, creating it (mode 0600) and migrating it to the current schema.
    pub fn open(path: &Path) -> anyhow::Result<Store> {
        create_private(path).with_context(|| format!("creating the state store {}", path.display()))?;
        let mut store = Self::connect(path)?;
        store
            .migrate()
            .with_context(|| format!("migrating the state store {}", path.display()))?;
        Ok(store)
    }

    /// Opens the store only if the file exists (`kfr remove` must not create one just to look).
    pub fn open_existing(path: &Path) -> anyhow::Result<Option<Store>> {
        if !path.exists() {
            return Ok(None);
        }
        Self::open(path).map(Some)
    }

    fn connect(path: &Path) -> anyhow::Result<Store> {
        let conn = Connection::open(path).with_context(|| format!("opening the state store {}", path.display()))?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // WAL lets `kfr remove` read while `kfr load` writes; FULL syncs the WAL on every commit
        // so a committed step survives a crash of the machine, not only of the process.
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            anyhow::bail!(
                "the state store {} cannot use WAL (journal_mode is {mode})",
                path.display()
            );
        }
        conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")?;
        // The sync agent touches a customer's queue, head and ledger pages at random: a 32 MiB
        // page cache (default 2 MiB) keeps them in memory, and checkpointing the WAL every 10,000
        // pages (default 1,000) writes a page changed by many commits back once. Together about
        // 8 % more delivered events a second (docs/benchmarks.md, "Sync agent").
        conn.execute_batch("PRAGMA cache_size = -32768; PRAGMA wal_autocheckpoint = 10000;")?;
        Ok(Store {
            conn,
            path: path.to_path_buf(),
            identity: file_identity(path),
        })
    }

    /// The schema version this build writes.
    pub fn current_version() -> u32 {
        MIGRATIONS.len() as u32
    }

    /// The schema version of the open file.
    pub fn version(&self) -> anyhow::Result<u32> {
        Ok(self.conn.query_row("PRAGMA user_version", [], |r| r.get(0))?)
    }

    fn migrate(&mut self) -> anyhow::Result<()> {
        // Foreign keys off while migrating: rebuilding a referenced table (migration 4) would
        // otherwise cascade its drop into the tables that point at it. They are checked before
        // the commit and switched on again whatever happens (SQLite's documented procedure for
        // schema changes ALTER TABLE cannot make). The pragma is a no-op inside a transaction,
        // hence before it.
        self.conn.execute_batch("PRAGMA foreign_keys = OFF;")?;
        let result = self.migrate_inner();
        self.conn.execute_batch("PRAGMA foreign_keys = ON;")?;
        result
    }

    fn migrate_inner(&mut self) -> anyhow::Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let version: u32 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version > Self::current_version() {
            anyhow::bail!(
                "the state store has schema version {version}, newer than this kfr knows ({}); use a newer kfr",
                Self::current_version()
            );
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            tx.execute_batch(sql)
                .with_context(|| format!("schema migration {}", i + 1))?;
        }
        if version < 4 {
            jobs::fill_registers(&tx).context("schema migration 4: the registers of load jobs")?;
        }
        let broken: i64 = tx.query_row("SELECT COUNT(*) FROM pragma_foreign_key_check", [], |r| r.get(0))?;
        anyhow::ensure!(broken == 0, "{broken} rows break a foreign key after migrating");
        tx.pragma_update(None, "user_version", Self::current_version())?;
        tx.commit()?;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The connection, for the table modules.
    pub(crate) fn conn(&mut self) -> &mut Connection {
        &mut self.conn
    }
}

/// Creates the file with mode 0600 if it does not exist yet, and tightens it if it does. SQLite's
/// `-wal` and `-shm` files take the main file's permissions.
fn create_private(path: &Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    opts.open(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_private_file_in_wal_at_current_version() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sub/kfr-state.db");
        let mut s = Store::open(&p).unwrap();
        assert_eq!(s.version().unwrap(), Store::current_version());
        let mode: String = s.conn().query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
        let sync: i64 = s.conn().query_row("PRAGMA synchronous", [], |r| r.get(0)).unwrap();
        assert_eq!(sync, 2, "synchronous = FULL");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        }
        drop(s);
        // Reopening is a no-op migration.
        let s = Store::open(&p).unwrap();
        assert_eq!(s.version().unwrap(), Store::current_version());
    }

    #[test]
    fn refuses_a_newer_schema() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s.db");
        let mut s = Store::open(&p).unwrap();
        s.conn().pragma_update(None, "user_version", 999).unwrap();
        drop(s);
        let err = Store::open(&p).unwrap_err();
        assert!(format!("{err:#}").contains("newer than this kfr knows"), "{err:#}");
    }

    #[test]
    fn held_deletes_of_a_version_1_store_become_held_operations_in_order() {
        use crate::store::queue::{CustomerQueue as _, OpState, Operation};
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("v1.db");
        {
            let c = Connection::open(&p).unwrap();
            c.execute_batch(MIGRATIONS[0]).unwrap();
            c.pragma_update(None, "user_version", 1).unwrap();
            let cid = "0b6a8f0e-7c1e-4a57-9d7e-2f0a4c1b9e11";
            c.execute_batch(&format!(
                "INSERT INTO held_deletes (id, customer_id, queued_at, correlation_id, sent_at, outcome) VALUES
                   (3, '02013299997', '2026-01-01T00:00:00.000Z', '{cid}', NULL, NULL),
                   (7, '916960190', '2026-01-01T00:00:01.000Z', '{cid}', '2026-01-02T00:00:00.000Z', 'removed'),
                   (9, '01010112345', '2026-01-01T00:00:02.000Z', '{cid}', NULL, NULL);"
            ))
            .unwrap();
        }
        let mut s = Store::open(&p).unwrap();
        assert_eq!(s.version().unwrap(), Store::current_version());
        let waiting = s.waiting().unwrap();
        let got: Vec<(i64, &str, Operation)> = waiting
            .iter()
            .map(|o| (o.id, o.customer_id.as_str(), o.operation))
            .collect();
        assert_eq!(
            got,
            [
                (3, "02013299997", Operation::Remove),
                (9, "01010112345", Operation::Remove)
            ]
        );
        assert!(waiting.iter().all(|o| o.state == OpState::Queued));
        let sent: (String, String) = s
            .conn()
            .query_row("SELECT state, outcome FROM held_operations WHERE id = 7", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!(sent, ("settled".to_string(), "removed".to_string()));
        let old: i64 = s
            .conn()
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE name = 'held_deletes'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(old, 0, "the old table is gone");
        // New operations continue after the migrated ids: issue order holds across the upgrade.
        let q = s
            .enqueue("02013299997", Operation::Add, uuid::Uuid::new_v4())
            .unwrap()
            .unwrap();
        assert!(q.op.id > 9);
    }

    #[test]
    fn open_existing_does_not_create() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("none.db");
        assert!(Store::open_existing(&p).unwrap().is_none());
        assert!(!p.exists());
    }
}
