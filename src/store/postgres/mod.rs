//! The PostgreSQL backend of the state store: one database shared by every kfr process of an
//! installation (two agents on two hosts, `kfr load`, an operator's shell), every trait of
//! [`super::backend`] implemented over it.
//!
//! Files by role, as in `store/sqlite/`:
//! - `outbox`: events, claims, outcomes, dead letters, the barrier (docs/specs/outbox.md).
//! - `jobs`: initial-load jobs and their batches; `ledger`: what this tool registered.
//! - `lease`: the delivery lease per register and the one load writer (session advisory locks
//!   on a dedicated connection, plus an epoch row); `history`; `operations`.
//! - `db`: the connection, opening and migrating, the transaction runner and the epoch fence;
//!   `migrations`: the schema; `rows`: reading events back and the statements the others
//!   share (the per-customer lock, a head moving on, the ledger's row, a history line).
//!
//! Concurrency rules (two hosts write at once, so none of SQLite's one-writer-at-a-time holds):
//! - Every enqueue takes a transaction-scoped advisory lock on (register, customer) before it
//!   looks at the customer's queue, so two hosts taking intake for one customer still give one
//!   head and issue order; the partial unique index `outbox_one_head` refuses a second head
//!   whatever happens.
//! - Claims lock the heads they take with `FOR UPDATE SKIP LOCKED`: two claimers never get one
//!   event, and neither waits for the other.
//! - Every transition is one conditional statement (`UPDATE … WHERE state = …`), never a read
//!   and a later write.
//! - Serialization failures and deadlocks are retried inside the backend (`db::Tx`).
//! - Durability is the server's: a commit returns once PostgreSQL has it on disk
//!   (`synchronous_commit` as the DBA set it; docs/operations.md says to keep the default `on`).
//!
//! Opening: [`PgBackend::open`] creates kfr's schema in an empty database and migrates an older
//! one — for the agent and the commands that write. A command that must not make a store to
//! answer opens by [`PgBackend::open_existing`] or, to look only, [`PgBackend::open_read_only`]:
//! both find by reading alone whether kfr's schema is there (`kfr_migrations`), and answer
//! `None` when it is not, having created nothing — the counterpart of a SQLite file that is not
//! there. A look also migrates nothing: an older schema is refused naming what migrates it, as
//! on SQLite.

mod db;
mod history;
mod jobs;
mod lease;
mod ledger;
mod migrations;
mod operations;
mod outbox;
mod plans;
mod rows;
mod transfer;

pub use db::PgBackend;

use crate::pg::Target;
use crate::store::error::StoreError;

impl PgBackend {
    /// Opens the store only if kfr's schema is in the database (`None`: it is not, and nothing
    /// was created); an older schema is migrated as [`PgBackend::open`] does, a newer one
    /// refused. For commands that act on a store but must not make one.
    pub fn open_existing(target: &Target) -> Result<Option<PgBackend>, StoreError> {
        let mut backend = unmigrated(target)?;
        match backend.version()? {
            0 => Ok(None),
            v if v == Self::current_version() => Ok(Some(backend)),
            // Older (migrated) or newer (refused): `open` decides, under its migration lock.
            _ => {
                drop(backend);
                PgBackend::open(target).map(Some)
            }
        }
    }

    /// Opens the store to look only: `None` when kfr's schema is not in the database. Nothing is
    /// created or migrated, and the session is read-only (`default_transaction_read_only`), so
    /// a write slipping into a look fails instead of changing the store. The schema must be
    /// this build's: an older one is refused naming what migrates it, a newer one as `open`
    /// refuses it.
    pub fn open_read_only(target: &Target) -> Result<Option<PgBackend>, StoreError> {
        let mut backend = unmigrated(target)?;
        let store = target.describe();
        backend
            .client
            .batch_execute("SET default_transaction_read_only = on")
            .map_err(|e| StoreError::Unavailable {
                store: store.clone(),
                detail: crate::pg::error_chain(&e),
            })?;
        let current = Self::current_version();
        match backend.version()? {
            0 => Ok(None),
            v if v == current => Ok(Some(backend)),
            v if v > current => Err(StoreError::Corrupt {
                store,
                detail: format!(
                    "the state store has schema version {v}, newer than this kfr knows ({current}); use a newer kfr"
                ),
            }),
            v => Err(StoreError::Unavailable {
                store,
                detail: format!(
                    "its schema version is {v}, this kfr reads {current} (a command that writes, such as `kfr outbox status`, or `kfr sync` starting, migrates it; this one only looks)"
                ),
            }),
        }
    }
}

/// A connection to `target` as a backend, its schema neither checked nor touched.
fn unmigrated(target: &Target) -> Result<PgBackend, StoreError> {
    Ok(on_connection(db::connect(target)?, target))
}

/// `client`, a connection to `target` made by the caller (the store's own, or a test's that
/// keeps the server's notices), as a backend holding no lease.
fn on_connection(client: postgres::Client, target: &Target) -> PgBackend {
    PgBackend {
        client,
        statements: db::Statements::default(),
        target: target.clone(),
        lease: None,
        lock_conn: None,
        writer_conn: None,
    }
}

#[cfg(test)]
mod tests {
    use super::PgBackend;
    use crate::pg::cluster::{self, TestDb};
    use crate::store::conformance;

    /// The PostgreSQL backend under the conformance suite: a fresh database on the test cluster;
    /// a second handle is a second connection (what another host has); a poisoned event id
    /// fails its insert by a trigger.
    struct Postgres {
        db: TestDb,
        store: PgBackend,
    }

    fn target(db: &TestDb) -> crate::pg::Target {
        crate::pg::Target {
            url: db.url.clone(),
            password_file: Some(db.password_file.clone()),
            ca_file: None,
        }
    }

    impl conformance::Harness for Postgres {
        fn backend(&mut self) -> &mut dyn crate::store::backend::Backend {
            &mut self.store
        }
        fn second(&mut self) -> Box<dyn crate::store::backend::Backend> {
            Box::new(PgBackend::open(&target(&self.db)).unwrap())
        }
        fn poison(&mut self, event_id: &str) {
            self.db
                .admin()
                .batch_execute(&format!(
                    "CREATE OR REPLACE FUNCTION kfr_test_poison() RETURNS trigger LANGUAGE plpgsql AS $$
                     BEGIN
                         IF NEW.event_id = '{event_id}' THEN RAISE EXCEPTION 'poisoned for the test'; END IF;
                         RETURN NEW;
                     END $$;
                     DROP TRIGGER IF EXISTS poison ON outbox;
                     CREATE TRIGGER poison BEFORE INSERT ON outbox FOR EACH ROW EXECUTE FUNCTION kfr_test_poison();"
                ))
                .unwrap();
        }
        fn copies_to_a_file(&self) -> bool {
            // Backups are the bank's PostgreSQL tooling's (Operations::backup_to refuses).
            false
        }
    }

    /// A fresh, migrated database of its own.
    pub(crate) fn store() -> (TestDb, PgBackend) {
        let db = cluster::database();
        let store = PgBackend::open(&target(&db)).unwrap();
        (db, store)
    }

    fn harness() -> Box<dyn conformance::Harness> {
        let (db, store) = store();
        Box::new(Postgres { db, store })
    }

    // Each random history needs a database of its own: fewer of them than on SQLite.
    conformance::outbox_conformance_tests!(harness(), random_cases = 8);

    /// The tables in `db`'s public schema (where kfr's would be).
    fn tables(db: &TestDb) -> i64 {
        db.admin()
            .query_one(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'",
                &[],
            )
            .unwrap()
            .get(0)
    }

    /// A database without kfr's schema is no store to the check-only openings, and they leave
    /// it without a table; once kfr made its store there both open it, and a look cannot write
    /// through its session.
    #[test]
    fn the_check_only_openings_create_nothing_and_a_look_cannot_write() {
        use crate::store::backend::Outbox as _;
        use crate::store::conformance::{R, ev, t};
        let db = cluster::database();
        let tg = target(&db);
        assert!(PgBackend::open_read_only(&tg).unwrap().is_none());
        assert!(PgBackend::open_existing(&tg).unwrap().is_none());
        assert_eq!(tables(&db), 0, "nothing was created");

        drop(PgBackend::open(&tg).unwrap());
        assert!(PgBackend::open_existing(&tg).unwrap().is_some());
        let mut look = PgBackend::open_read_only(&tg).unwrap().expect("the store is there now");
        assert_eq!(look.version().unwrap(), PgBackend::current_version());
        let err = look
            .enqueue(R, &[ev("e1", "customer-a", crate::store::Operation::Add)], None, t(0))
            .unwrap_err();
        assert!(matches!(err, crate::store::StoreError::NotWritable { .. }), "{err:?}");
        assert_eq!(
            db.admin()
                .query_one("SELECT count(*) FROM outbox", &[])
                .unwrap()
                .get::<_, i64>(0),
            0
        );
    }

    #[test]
    fn migrates_once_and_refuses_a_newer_schema() {
        let (db, mut store) = store();
        assert_eq!(store.version().unwrap(), PgBackend::current_version());
        drop(store);
        // Opening again is a no-op; two openers at once do not trip over each other.
        let t = target(&db);
        let (a, b) = std::thread::scope(|s| {
            let a = s.spawn(|| PgBackend::open(&t).map(|_| ()));
            let b = s.spawn(|| PgBackend::open(&t).map(|_| ()));
            (a.join().unwrap(), b.join().unwrap())
        });
        a.unwrap();
        b.unwrap();
        db.admin()
            .batch_execute("INSERT INTO kfr_migrations (version, kfr_version) VALUES (999, 'future')")
            .unwrap();
        // By every opening, the check-only ones included.
        type Opening = fn(&crate::pg::Target) -> Result<(), crate::store::StoreError>;
        let openings: [Opening; 3] = [
            |t| PgBackend::open(t).map(|_| ()),
            |t| PgBackend::open_existing(t).map(|_| ()),
            |t| PgBackend::open_read_only(t).map(|_| ()),
        ];
        for open in openings {
            let err = open(&t).expect_err("a newer schema is refused");
            assert!(matches!(err, crate::store::StoreError::Corrupt { .. }), "{err:?}");
            assert!(err.to_string().contains("newer than this kfr knows"), "{err}");
        }
    }
}
