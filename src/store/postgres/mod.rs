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
//!   `migrations`: the schema.
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

mod db;
mod history;
mod jobs;
mod lease;
mod ledger;
mod migrations;
mod operations;
mod outbox;
mod transfer;

pub use db::PgBackend;

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

    conformance::outbox_conformance_tests!(harness());

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
        let err = PgBackend::open(&t).err().expect("a newer schema is refused");
        assert!(matches!(err, crate::store::StoreError::Corrupt { .. }), "{err:?}");
        assert!(err.to_string().contains("newer than this kfr knows"), "{err}");
    }
}
