//! The SQLite backend's connection: opening (created 0600, WAL, `synchronous=FULL`), migrating,
//! and the one transaction runner every part of the backend writes through — which refuses to
//! write to a file that is no longer the one opened, and fences a deposed deliverer by its lease
//! epoch.

use super::lock::{FileLock, IdentityLock};
use super::migrations::{self, MIGRATIONS};
use super::rows::{Fault, store_error};
use crate::store::backend::Backend;
use crate::store::error::StoreError;
use crate::store::types::Lease;
use anyhow::Context as _;
use rusqlite::{Connection, OptionalExtension as _, Transaction, TransactionBehavior};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long a writer waits for another process's transaction before giving up.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// An open SQLite store: the [`Backend`] over one file.
pub struct SqliteBackend {
    conn: Connection,
    pub(crate) path: PathBuf,
    /// Device and inode of the file opened, to notice it deleted or replaced under us.
    identity: Option<(u64, u64)>,
    /// The delivery lease this process holds (its writes are fenced by its epoch) and the lock
    /// file under it.
    pub(crate) lease: Option<Held>,
    /// The load writer lock (the path's lock file, the file's own lock), while held.
    pub(crate) writer: Option<(FileLock, IdentityLock)>,
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

impl Backend for SqliteBackend {
    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

impl SqliteBackend {
    /// Opens the store, creating it (mode 0600) and migrating it to the current schema.
    pub fn open(path: &Path) -> Result<SqliteBackend, StoreError> {
        let store = path.display().to_string();
        refuse_hard_links(path)?;
        create_private(path).map_err(|e| StoreError::Unavailable {
            store: store.clone(),
            detail: format!("creating it: {e}"),
        })?;
        let mut backend = Self::connect(path).map_err(|e| opening_error(&store, e))?;
        backend
            .migrate()
            .map_err(|e| opening_error(&store, e.context("migrating the schema")))?;
        Ok(backend)
    }

    /// Opens an existing store to look only: nothing is created, migrated, locked or written —
    /// not the file, not its lock files (issue 20: `kfr load status` wrote to the store and its
    /// lock file, and failed for a user who may only read). The schema must be this build's.
    pub fn open_read_only(path: &Path) -> Result<SqliteBackend, StoreError> {
        use rusqlite::OpenFlags;
        let store = path.display().to_string();
        refuse_hard_links(path)?;
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI;
        let open = |uri: &str| -> anyhow::Result<(Connection, u32)> {
            let conn = Connection::open_with_flags(uri, flags)?;
            conn.busy_timeout(BUSY_TIMEOUT)?;
            let version: u32 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
            // Reading a table proves the file readable (a WAL store needs its shared memory).
            conn.query_row("SELECT COUNT(*) FROM sqlite_schema", [], |r| r.get::<_, i64>(0))?;
            Ok((conn, version))
        };
        let file = uri_path(path);
        let (conn, version) = match open(&format!("file:{file}?mode=ro")) {
            Ok(found) => found,
            // A WAL store whose shared-memory file is missing and cannot be made by this user (a
            // read-only directory): no writer can be at work through it either, so it is read as
            // the file stands.
            Err(e) if !wal_files_present(path) => {
                open(&format!("file:{file}?mode=ro&immutable=1")).map_err(|_| opening_error(&store, e))?
            }
            Err(e) => return Err(opening_error(&store, e)),
        };
        if version != Self::current_version() {
            return Err(StoreError::Unavailable {
                store,
                detail: format!(
                    "its schema version is {version}, this kfr reads {} (a command that writes, such as `kfr outbox status`, migrates it; this one only looks)",
                    Self::current_version()
                ),
            });
        }
        Ok(SqliteBackend {
            conn,
            path: path.to_path_buf(),
            identity: file_identity(path),
            lease: None,
            writer: None,
        })
    }

    fn connect(path: &Path) -> anyhow::Result<SqliteBackend> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // WAL lets `kfr remove` read while `kfr load` writes; FULL syncs the WAL on every commit
        // so a committed step survives a crash of the machine, not only of the process.
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            anyhow::bail!("it cannot use WAL (journal_mode is {mode})");
        }
        conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")?;
        // The sync agent touches a customer's queue, head and ledger pages at random: a 32 MiB
        // page cache (default 2 MiB) keeps them in memory, and checkpointing the WAL every 10,000
        // pages (default 1,000) writes a page changed by many commits back once. Together about
        // 8 % more delivered events a second (docs/benchmarks.md, "Sync agent").
        conn.execute_batch("PRAGMA cache_size = -32768; PRAGMA wal_autocheckpoint = 10000;")?;
        Ok(SqliteBackend {
            conn,
            path: path.to_path_buf(),
            identity: file_identity(path),
            lease: None,
            writer: None,
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
        if version == Self::current_version() {
            return Ok(());
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            tx.execute_batch(sql)
                .with_context(|| format!("schema migration {}", i + 1))?;
            if i + 1 == 4 {
                migrations::fill_registers(&tx).context("schema migration 4: the registers of load jobs")?;
            }
        }
        let broken: i64 = tx.query_row("SELECT COUNT(*) FROM pragma_foreign_key_check", [], |r| r.get(0))?;
        anyhow::ensure!(broken == 0, "{broken} rows break a foreign key after migrating");
        tx.pragma_update(None, "user_version", Self::current_version())?;
        tx.commit()?;
        Ok(())
    }

    /// The connection outside any transaction (`VACUUM INTO` cannot run inside one).
    pub(crate) fn raw_conn(&self) -> &Connection {
        &self.conn
    }

    /// Runs `sql` on the store's file, for tests that stage what the interface cannot (a
    /// trigger standing in for a full disk, say).
    #[cfg(test)]
    pub fn run_sql_for_tests(&mut self, sql: &str) {
        self.conn.execute_batch(sql).expect("the test's SQL runs");
    }

    /// The connection, for tests that look under the interface.
    #[cfg(test)]
    pub(crate) fn conn(&mut self) -> &mut Connection {
        &mut self.conn
    }
}

/// How a call's transaction runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tx {
    /// Reads only (deferred).
    Read,
    /// Writes: takes the write lock first (IMMEDIATE), so what it reads holds until it commits.
    Write,
    /// A write of the deliverer: as `Write`, and refused ([`StoreError::Fenced`]) when this
    /// backend holds a delivery lease whose epoch the store has moved past.
    Fenced,
}

impl SqliteBackend {
    /// Runs `f` in one transaction, committing if it succeeds. Every write of every part of the
    /// backend (outbox, jobs, ledger, leases, history) goes through here.
    pub(crate) fn tx<T>(
        &mut self,
        mode: Tx,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, Fault>,
    ) -> Result<T, StoreError> {
        let store = self.path.display().to_string();
        let write = mode != Tx::Read;
        let behavior = if write {
            TransactionBehavior::Immediate
        } else {
            TransactionBehavior::Deferred
        };
        let identity = self.identity;
        let file = self.path.clone();
        let fence = match (&self.lease, mode) {
            (Some(held), Tx::Fenced) => Some((held.lease.register.clone(), held.lease.epoch)),
            _ => None,
        };
        // A write goes only to the file that is still at the store's path: one written to a
        // deleted or replaced file would be acknowledged and then lost. Checked before (a
        // replacement can also confuse SQLite's shared WAL index, whose errors say less) and
        // again just before the commit.
        let still_ours = || -> Result<(), Fault> {
            if write && file_identity(&file) != identity {
                return Err(Fault::Store(StoreError::Lost {
                    store: file.display().to_string(),
                }));
            }
            Ok(())
        };
        let run = |conn: &mut Connection| -> Result<T, Fault> {
            still_ours()?;
            let tx = conn.transaction_with_behavior(behavior)?;
            if let Some((register, held)) = &fence {
                check_epoch(&tx, register, *held)?;
            }
            let out = f(&tx)?;
            still_ours()?;
            tx.commit()?;
            Ok(out)
        };
        run(&mut self.conn).map_err(|e| match e {
            Fault::Sql(e) => store_error(&store, e),
            Fault::Store(e) => e,
        })
    }
}

/// A failure to open or migrate, as the store's error: a file that is not a database (or a
/// truncated one) or a newer schema is `Corrupt`, a lock or a full disk says so, the rest is
/// `Unavailable`.
fn opening_error(store: &str, e: anyhow::Error) -> StoreError {
    use rusqlite::ErrorCode as C;
    let detail = format!("{e:#}");
    let code = e
        .chain()
        .find_map(|c| c.downcast_ref::<rusqlite::Error>())
        .and_then(rusqlite::Error::sqlite_error_code);
    let store = store.to_string();
    match code {
        Some(C::DatabaseCorrupt | C::NotADatabase) => StoreError::Corrupt { store, detail },
        Some(C::DatabaseBusy | C::DatabaseLocked) => StoreError::Busy { store },
        Some(C::DiskFull | C::ReadOnly | C::PermissionDenied) => StoreError::NotWritable { store, detail },
        _ if detail.contains("newer than this kfr knows") => StoreError::Corrupt { store, detail },
        _ => StoreError::Unavailable { store, detail },
    }
}

/// Creates the file with mode 0600 if it does not exist yet, and tightens it if it does. SQLite's
/// `-wal` and `-shm` files take the main file's permissions.
/// `path` for a SQLite URI: `%`, `?` and `#` escaped.
fn uri_path(path: &Path) -> String {
    path.display()
        .to_string()
        .replace('%', "%25")
        .replace('?', "%3f")
        .replace('#', "%23")
}

/// Whether the store's `-wal` or `-shm` file exists (a writer may be at work).
fn wal_files_present(path: &Path) -> bool {
    ["-wal", "-shm"].iter().any(|suffix| {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        Path::new(&name).exists()
    })
}

/// A store file with more than one name (a hard link) is refused: SQLite keeps its write-ahead
/// log and shared memory next to the name it was opened by, so two processes on two names of one
/// file would each write a log of their own, and lose or corrupt what the other committed (SQLite's
/// documented hazard; issue 20: two loads through two names of one store).
fn refuse_hard_links(path: &Path) -> Result<(), StoreError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt as _;
        if let Ok(m) = std::fs::metadata(path)
            && m.is_file()
            && m.nlink() > 1
        {
            return Err(StoreError::HardLinked {
                store: path.display().to_string(),
                links: m.nlink(),
            });
        }
    }
    Ok(())
}

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

/// The delivery lease a backend holds, and the lock under it.
pub(crate) struct Held {
    pub lease: Lease,
    /// `None` when the lease was taken over from a holder that stopped renewing it but still
    /// holds the lock (see `Leases::take_lease`).
    pub _lock: Option<FileLock>,
}

/// Fails with [`StoreError::Fenced`] unless `register`'s lease is still at epoch `held`.
pub(crate) fn check_epoch(tx: &Transaction<'_>, register: &str, held: i64) -> Result<(), Fault> {
    let current: Option<i64> = tx
        .prepare_cached("SELECT epoch FROM leases WHERE register = ?1")?
        .query_row([register], |r| r.get(0))
        .optional()?;
    if current == Some(held) {
        return Ok(());
    }
    Err(Fault::Store(StoreError::Fenced {
        register: register.to_string(),
        held,
        current: current.unwrap_or(0),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::backend::Outbox as _;
    use crate::store::types::{EventState, OWN_SOURCES, Operation};

    #[test]
    fn creates_private_file_in_wal_at_current_version() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sub/kfr-state.db");
        let mut s = SqliteBackend::open(&p).unwrap();
        assert_eq!(s.version().unwrap(), SqliteBackend::current_version());
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
        let s = SqliteBackend::open(&p).unwrap();
        assert_eq!(s.version().unwrap(), SqliteBackend::current_version());
    }

    #[test]
    fn refuses_a_newer_schema() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s.db");
        let mut s = SqliteBackend::open(&p).unwrap();
        s.conn().pragma_update(None, "user_version", 999).unwrap();
        drop(s);
        let err = SqliteBackend::open(&p).err().unwrap();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
        assert!(err.to_string().contains("newer than this kfr knows"), "{err}");
    }

    #[test]
    fn a_truncated_or_foreign_file_is_named_as_damaged() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s.db");
        std::fs::write(&p, b"this is not a database, it is a shopping list\n".repeat(100)).unwrap();
        let err = SqliteBackend::open(&p).err().unwrap();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
        assert!(err.to_string().contains(&p.display().to_string()), "{err}");
    }

    #[test]
    fn held_deletes_of_a_version_1_store_become_held_operations_in_order() {
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
        let mut s = SqliteBackend::open(&p).unwrap();
        assert_eq!(s.version().unwrap(), SqliteBackend::current_version());
        let waiting = s.unfinished_of("", &OWN_SOURCES).unwrap();
        let got: Vec<(i64, &str, Operation)> = waiting.iter().map(|o| (o.seq, o.customer_id.as_str(), o.op)).collect();
        assert_eq!(
            got,
            [
                (3, "02013299997", Operation::Remove),
                (9, "01010112345", Operation::Remove)
            ]
        );
        assert!(waiting.iter().all(|o| o.state == EventState::Pending));
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
    }

    #[test]
    fn a_held_operation_parked_by_an_old_load_becomes_a_visible_dead_letter() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("v4.db");
        {
            let c = Connection::open(&p).unwrap();
            for m in &MIGRATIONS[..4] {
                c.execute_batch(m).unwrap();
            }
            c.pragma_update(None, "user_version", 4).unwrap();
            c.execute_batch(
                "INSERT INTO outbox (seq, register, event_id, op, customer_id, occurred_at, source, received_at,
                                     correlation_id, state, head, attempts, last_error, next_attempt_at)
                 VALUES (5, 'r', 'held-5', 'remove', '02013299997', '2026-01-01T00:00:00Z', 'kfr remove',
                         '2026-01-01T00:00:00Z', '0b6a8f0e-7c1e-4a57-9d7e-2f0a4c1b9e11', 'pending', 1, 1,
                         'KFR-005 invalid', '9999-12-31T23:59:59.999999999Z');",
            )
            .unwrap();
        }
        let mut s = SqliteBackend::open(&p).unwrap();
        let dead = s.dead_letters(None).unwrap();
        assert_eq!(dead.len(), 1, "{dead:?}");
        assert_eq!(dead[0].event.seq, 5);
        assert!(
            dead[0].rejection.reason.contains("KFR-005 invalid"),
            "{:?}",
            dead[0].rejection
        );
    }

    #[test]
    fn a_second_head_for_one_customer_is_refused_by_the_schema() {
        let d = tempfile::tempdir().unwrap();
        let mut s = SqliteBackend::open(&d.path().join("s.db")).unwrap();
        let now = crate::store::conformance::t(0);
        s.enqueue(
            "r",
            &[crate::store::conformance::ev("e1", "c", Operation::Add)],
            None,
            now,
        )
        .unwrap();
        s.enqueue(
            "r",
            &[crate::store::conformance::ev("e2", "c", Operation::Remove)],
            None,
            now,
        )
        .unwrap();
        // What a lost race would write: the second event made a head too.
        let err = s
            .conn()
            .execute("UPDATE outbox SET head = 1 WHERE event_id = 'e2'", [])
            .unwrap_err();
        assert!(err.to_string().contains("UNIQUE"), "{err}");
    }
}
