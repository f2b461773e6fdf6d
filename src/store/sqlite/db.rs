//! The SQLite backend's connection: opening (created 0600, WAL, `synchronous=FULL`), migrating,
//! and the one transaction runner every part of the backend writes through — which refuses to
//! write to a file, or a write-ahead log, that is no longer the one opened, and fences a deposed
//! deliverer by its lease epoch; and the kept transaction ([`SqliteBackend::kept_tx`]) of the few
//! steps that must be in the main file, not only in the log (issue 20: a lost `-wal` lost the
//! load's job).

use super::disk::{check_before_open, log_path};
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
    /// Device and inode of its write-ahead log (`-wal`) as this connection writes it: a log
    /// deleted or replaced under us takes with it whatever was not yet copied into the file.
    log_identity: Option<(u64, u64)>,
    /// Whether what this connection committed was copied into the file after its log was lost.
    log_rescued: bool,
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
        check_before_open(path)?;
        create_private(path).map_err(|e| StoreError::Unavailable {
            store: store.clone(),
            detail: format!("creating it: {e}"),
        })?;
        let mut backend = Self::connect(path).map_err(|e| opening_error(&store, e))?;
        backend
            .migrate()
            .map_err(|e| opening_error(&store, e.context("migrating the schema")))?;
        // SQLite opened (or made) the log by now; a log it makes later is noted at its first write.
        backend.log_identity = file_identity(&log_path(path));
        Ok(backend)
    }

    /// Opens an existing store to look only: nothing is created, migrated, locked or written —
    /// not the file, not its lock files (issue 20: `kfr load status` wrote to the store and its
    /// lock file, and failed for a user who may only read). The schema must be this build's.
    pub fn open_read_only(path: &Path) -> Result<SqliteBackend, StoreError> {
        use rusqlite::OpenFlags;
        let store = path.display().to_string();
        refuse_hard_links(path)?;
        check_before_open(path)?;
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
            log_identity: None,
            log_rescued: false,
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
            log_identity: None,
            log_rescued: false,
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
        let (log, log_identity) = (log_path(&self.path), self.log_identity);
        let fence = match (&self.lease, mode) {
            (Some(held), Tx::Fenced) => Some((held.lease.register.clone(), held.lease.epoch)),
            _ => None,
        };
        // A write goes only to the file that is still at the store's path, through the log that
        // is still at the log's: one written to a deleted or replaced file would be acknowledged
        // and then lost, and so would one written to a log SQLite will no longer find (issue 20:
        // a load whose `-wal` was removed went on, and its job vanished). Checked before (a
        // replacement can also confuse SQLite's shared WAL index, whose errors say less) and
        // again just before the commit.
        let still_ours = || -> Result<(), Fault> {
            if !write {
                return Ok(());
            }
            if file_identity(&file) != identity {
                return Err(Fault::Store(StoreError::Lost {
                    store: file.display().to_string(),
                    log: None,
                }));
            }
            if log_identity.is_some() && file_identity(&log) != log_identity {
                return Err(Fault::Store(StoreError::Lost {
                    store: file.display().to_string(),
                    log: Some(log.display().to_string()),
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
        let out = run(&mut self.conn).map_err(|e| match e {
            Fault::Sql(e) => store_error(&store, e),
            Fault::Store(e) => e,
        });
        match &out {
            Ok(_) if write && self.log_identity.is_none() => self.log_identity = file_identity(&log),
            Err(StoreError::Lost { log: Some(_), .. }) => self.rescue_lost_log(),
            _ => {}
        }
        out
    }

    /// Runs `f` as a write ([`Tx::Write`]) and then copies the log into the main file (a
    /// checkpoint), so what it committed survives the loss of the `-wal` — SQLite otherwise
    /// copies it only every 10,000 pages or when the last connection closes, which a killed
    /// process never does. For the few steps whose loss would make kfr repeat what KFR already
    /// holds or forget what an operator asked for: a load job and each step of its batches, the
    /// ledger of a batch, `kfr add`/`kfr remove` and their held operations, an abandon (issue 20).
    /// Cheap at that rate (docs/benchmarks.md, "Load: the kept steps").
    pub(crate) fn kept_tx<T>(&mut self, f: impl FnOnce(&Transaction<'_>) -> Result<T, Fault>) -> Result<T, StoreError> {
        let out = self.tx(Tx::Write, f)?;
        self.checkpoint();
        Ok(out)
    }

    /// Copies every committed page of the log into the main file and syncs it (`FULL`: waits,
    /// up to the busy timeout, for writers and for readers of older snapshots). What is not
    /// copied (a reader held an old snapshot past the timeout) stays in the log, safe while the
    /// log is, and the next kept step copies it; a warning says so.
    fn checkpoint(&mut self) {
        let done = self.conn.query_row("PRAGMA wal_checkpoint(FULL)", [], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
        });
        match done {
            Ok((0, log, copied)) if copied >= log => {}
            Ok((_, log, copied)) => tracing::warn!(
                "the state store {}: {copied} of {log} pages of its write-ahead log copied into the file (another process kept an older snapshot open); the rest follows at the next step",
                self.path.display()
            ),
            Err(e) => tracing::warn!(
                "the state store {}: copying its write-ahead log into the file failed: {e}",
                self.path.display()
            ),
        }
    }

    /// After the log was found removed or replaced: copies what this connection committed
    /// (still readable through the log it has open) into the main file, once, and says whether
    /// that worked — the operator's next step depends on it.
    fn rescue_lost_log(&mut self) {
        if std::mem::replace(&mut self.log_rescued, true) {
            return;
        }
        let log = log_path(&self.path);
        match self.conn.query_row("PRAGMA wal_checkpoint(FULL)", [], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
        }) {
            Ok((0, pages, copied)) if copied >= pages => tracing::warn!(
                "the write-ahead log {} was removed or replaced: all {pages} pages of the log this process has open are copied into {}",
                log.display(),
                self.path.display()
            ),
            Ok((_, pages, copied)) => tracing::error!(
                "the write-ahead log {} was removed or replaced: only {copied} of the {pages} pages of the log this process has open could be copied into {}",
                log.display(),
                self.path.display()
            ),
            Err(e) => tracing::error!(
                "the write-ahead log {} was removed or replaced: what this process had in it could not be copied into {}: {e}",
                log.display(),
                self.path.display()
            ),
        }
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

    /// A store left as `kill -9` leaves it: the connection never closed (SQLite copies the log
    /// into the file only when the last one closes), the `-wal` and `-shm` on disk.
    fn killed(s: SqliteBackend) {
        std::mem::forget(s);
    }

    fn a_job() -> crate::store::NewJob {
        crate::store::NewJob {
            input_path: "c.csv".into(),
            content_hash: "abc".into(),
            settings: "{}".into(),
            entries: 5,
            batches: (0..2)
                .map(|i| crate::store::NewBatch {
                    first_entry: i * 3,
                    entry_count: 3 - i,
                    bytes: 100,
                    correlation_id: uuid::Uuid::new_v4(),
                })
                .collect(),
        }
    }

    /// Issue 20: a load killed after a batch was accepted, its `-wal` then removed: the job and
    /// the batch's state are in the main file, so the resume finds them (it found nothing, and a
    /// new load sent the accepted batches again).
    #[test]
    fn a_load_job_and_its_batch_steps_survive_a_lost_log() {
        use crate::store::backend::{Jobs as _, Ledger as _};
        use crate::store::{BatchChange, BatchStatus};
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s.db");
        let mut s = SqliteBackend::open(&p).unwrap();
        let job = s.create_job(&a_job(), crate::store::conformance::t(0)).unwrap();
        let cid = s.batches(job).unwrap()[0].correlation_id;
        for st in [BatchStatus::Uploading, BatchStatus::Accepted] {
            s.update_batch(job, 1, &BatchChange::Status(st), crate::store::conformance::t(1))
                .unwrap();
        }
        let entries = vec![("02013299997".to_string(), None); 1];
        s.record_batch(job, 1, cid, &entries, crate::store::conformance::t(2))
            .unwrap();
        killed(s);
        std::fs::remove_file(d.path().join("s.db-wal")).unwrap();
        let mut s = SqliteBackend::open(&p).unwrap();
        let j = s.unconfirmed_job().unwrap().expect("the job is in the main file");
        assert_eq!(j.id, job);
        let b = s.batches(job).unwrap();
        assert_eq!(b[0].status, BatchStatus::Accepted, "{b:?}");
        assert_eq!(s.ledger_count(Some((job, 1))).unwrap(), 1);
    }

    /// Issue 20: a `-wal` lost with pages its index says were never copied into the file: the
    /// store is not opened (SQLite would silently open it as it was before them), and the
    /// refusal names the log, what is wrong with it and the index.
    #[test]
    fn a_store_whose_log_was_lost_with_uncopied_pages_is_refused_naming_it() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s.db");
        let mut s = SqliteBackend::open(&p).unwrap();
        // The agent's intake: not a kept step, so it sits in the log until a checkpoint.
        s.enqueue(
            "r",
            &[crate::store::conformance::ev("e1", "c", Operation::Add)],
            None,
            crate::store::conformance::t(0),
        )
        .unwrap();
        killed(s);
        let log = d.path().join("s.db-wal");
        std::fs::remove_file(&log).unwrap();
        for err in [
            SqliteBackend::open(&p).err().unwrap(),
            SqliteBackend::open_read_only(&p).err().unwrap(),
        ] {
            assert!(matches!(err, StoreError::LogMissing { .. }), "{err:?}");
            let text = err.to_string();
            assert!(text.contains(&format!("{} is missing", log.display())), "{text}");
            assert!(text.contains("s.db-shm") && text.contains("not yet in"), "{text}");
            let hint = crate::error::Hinted::hint(&err).unwrap();
            assert!(hint.contains("put ") && hint.contains("remove "), "{hint}");
        }
        assert!(!log.exists(), "nothing was created by the refusals");
    }

    /// Issue 20: the `-wal` removed while kfr writes: the next write is refused naming it, and
    /// so is every one after; what this connection had committed is copied into the file.
    #[test]
    fn a_log_removed_while_open_stops_every_write_naming_it() {
        use crate::store::backend::Jobs as _;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s.db");
        let mut s = SqliteBackend::open(&p).unwrap();
        let now = crate::store::conformance::t(0);
        s.enqueue(
            "r",
            &[crate::store::conformance::ev("e1", "c", Operation::Add)],
            None,
            now,
        )
        .unwrap();
        let log = d.path().join("s.db-wal");
        std::fs::remove_file(&log).unwrap();
        for _ in 0..2 {
            let err = s
                .enqueue(
                    "r",
                    &[crate::store::conformance::ev("e2", "d", Operation::Add)],
                    None,
                    now,
                )
                .unwrap_err();
            assert!(matches!(err, StoreError::Lost { log: Some(_), .. }), "{err:?}");
            assert!(err.to_string().contains(&log.display().to_string()), "{err}");
            assert!(s.create_job(&a_job(), now).is_err(), "a kept step is refused too");
        }
        killed(s);
        std::fs::remove_file(d.path().join("s.db-shm")).unwrap();
        let mut s = SqliteBackend::open(&p).unwrap();
        let kept: Vec<String> = s
            .events_of(None, None)
            .unwrap()
            .into_iter()
            .map(|e| e.event_id)
            .collect();
        assert_eq!(kept, ["e1"], "committed before the loss: copied into the file");
    }

    /// Issue 20: "a truncated store errors without naming it". The file cut short is refused at
    /// open, naming the file and the rule it breaks, by both kinds of open.
    #[test]
    fn a_truncated_store_is_refused_naming_the_file_and_the_rule() {
        use crate::store::backend::Jobs as _;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s.db");
        let mut s = SqliteBackend::open(&p).unwrap();
        for i in 0..200 {
            s.create_job(&a_job(), crate::store::conformance::t(i)).unwrap();
        }
        drop(s);
        assert!(!d.path().join("s.db-wal").exists(), "closed: the log is in the file");
        let len = std::fs::metadata(&p).unwrap().len();
        let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        f.set_len(len / 2).unwrap();
        drop(f);
        for err in [
            SqliteBackend::open(&p).err().unwrap(),
            SqliteBackend::open_read_only(&p).err().unwrap(),
        ] {
            assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
            let text = err.to_string();
            assert!(text.contains(&p.display().to_string()), "{text}");
            assert!(
                text.contains("truncated") && text.contains(&format!("holds {} bytes", len / 2)),
                "{text}"
            );
            assert!(
                text.contains("rule: a SQLite store file holds every page its header counts"),
                "{text}"
            );
        }
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
