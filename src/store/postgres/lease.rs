//! Leases on PostgreSQL: who delivers a register, and the one load writer per store.
//!
//! A delivery lease is two things, as on SQLite: a session advisory lock, held on a dedicated,
//! unpooled connection of its own (released by the server when that session ends: the process
//! died, its host was cut off and TCP keepalives gave up, or an operator terminated it), and a
//! row in `leases` whose `epoch` grows on every takeover. Every deliverer's write checks that
//! epoch (`db::check_epoch`, the row read `FOR SHARE`), so a deposed holder writes nothing more:
//! [`StoreError::Fenced`].
//!
//! Takeover: a free lock means the last holder's session is gone, so a standby takes over at
//! once; a lock still held moves only once its holder stopped renewing (`until` passed: a frozen
//! or hung process), and that holder is fenced from then on. The row records whether its holder
//! holds the lock (`locked`): one that took over from a frozen holder has none until the frozen
//! one lets go, and a free lock then says nothing about it — it takes the lock at its next
//! renewal instead. A holder that finds itself fenced
//! drops its lock connection, so a lock is never held by a process that is not the leader and
//! never taken twice by one session (session advisory locks stack: a second
//! `pg_try_advisory_lock` in the same session succeeds and needs two unlocks).
//!
//! The lease connection has its own server-side limits: `statement_timeout` (a renewal stuck
//! behind a lock fails on the server, not only in the client) and TCP keepalives (the server
//! notices a vanished host and ends the session, letting the lock go). Connection poolers in
//! transaction mode (PgBouncer `pool_mode = transaction`) cannot carry it: a session lock there
//! belongs to whichever client the server connection serves next (docs/operations.md).
//!
//! The load writer is a second session lock on a second dedicated connection: two loads on one
//! store would upload every batch twice (issue 9). Its holder's name is kept in `writer` so the
//! refused one can say who.

use super::db::{PgBackend, Tx, check_epoch, connect};
use crate::store::backend::Leases;
use crate::store::error::StoreError;
use crate::store::types::{Lease, LeaseHolder};
use chrono::{DateTime, Utc};
use postgres::Client;

/// The server-side limit on a statement of the lease connection.
const LEASE_STATEMENT_TIMEOUT_MS: u32 = 5_000;

/// The advisory-lock key of `register`'s delivery lease (a 64-bit hash of a fixed prefix and the
/// register, computed by the server so every kfr build agrees).
const LEASE_KEY: &str = "SELECT hashtextextended('kfr.lease|' || $1, 0)";
const WRITER_KEY: &str = "SELECT hashtextextended('kfr.writer', 0)";

impl PgBackend {
    /// A dedicated connection for a session lock, with its watchdog settings.
    fn lock_connection(&self, role: &str) -> Result<Client, StoreError> {
        let mut client = connect(&self.target)?;
        client
            .batch_execute(&format!(
                "SET application_name = 'kfr-{role}'; SET statement_timeout = {LEASE_STATEMENT_TIMEOUT_MS};
                 SET lock_timeout = {LEASE_STATEMENT_TIMEOUT_MS};
                 SET tcp_keepalives_idle = 5; SET tcp_keepalives_interval = 2; SET tcp_keepalives_count = 3"
            ))
            .map_err(|e| self.unavailable(&e))?;
        Ok(client)
    }

    fn unavailable(&self, e: &postgres::Error) -> StoreError {
        StoreError::Unavailable {
            store: self.target.describe(),
            detail: crate::pg::error_chain(e),
        }
    }

    /// Tries `register`'s lease lock on a new dedicated connection: the connection when taken.
    fn try_lease_lock(&self, register: &str) -> Result<Option<Client>, StoreError> {
        let mut conn = self.lock_connection("lease")?;
        let got: bool = conn
            .query_one(&format!("SELECT pg_try_advisory_lock(({LEASE_KEY}))"), &[&register])
            .map_err(|e| self.unavailable(&e))?
            .get(0);
        Ok(got.then_some(conn))
    }

    /// Whether the lease connection is still there (its session, and with it the lock).
    fn lock_alive(&mut self) -> bool {
        self.lock_conn
            .as_mut()
            .is_some_and(|c| !c.is_closed() && c.simple_query("SELECT 1").is_ok())
    }
}

impl Leases for PgBackend {
    fn take_lease(
        &mut self,
        register: &str,
        holder: &str,
        now: DateTime<Utc>,
        ttl: chrono::Duration,
    ) -> Result<Option<Lease>, StoreError> {
        if let Some(held) = self.lease.clone()
            && held.register == register
        {
            match self.renew_lease(&held, now, ttl) {
                Ok(lease) => return Ok(Some(lease)),
                // Deposed: let go of the old lock and try afresh like anyone else.
                Err(StoreError::Fenced { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        self.lease = None;
        self.lock_conn = None;
        let lock = self.try_lease_lock(register)?;
        let got = lock.is_some();
        let until = now + ttl;
        let epoch = self.tx(Tx::Write, |tx| {
            let current: Option<(DateTime<Utc>, bool)> = tx
                .query_opt(
                    "SELECT until, locked FROM leases WHERE register = $1 FOR UPDATE",
                    &[&register],
                )?
                .map(|r| (r.get(0), r.get(1)));
            let take = match current {
                None => true,
                // Ran out: its holder stopped renewing (frozen, cut off, or gave it up).
                Some((until, _)) if until <= now => true,
                // The lock was free, and the holder held it: its session ended.
                Some((_, locked)) => got && locked,
            };
            if !take {
                return Ok(None);
            }
            let epoch: i64 = tx
                .query_one(
                    "INSERT INTO leases (register, holder, epoch, until, locked) VALUES ($1, $2, 1, $3, $4)
                     ON CONFLICT (register) DO UPDATE SET holder = excluded.holder, epoch = leases.epoch + 1,
                         until = excluded.until, locked = excluded.locked
                     RETURNING epoch",
                    &[&register, &holder, &until, &got],
                )?
                .get(0);
            Ok(Some(epoch))
        })?;
        // Not taken: a lock got meanwhile is let go at once (its holder may lead without it).
        let Some(epoch) = epoch else { return Ok(None) };
        let lease = Lease {
            register: register.to_string(),
            holder: holder.to_string(),
            epoch,
            until,
        };
        self.lease = Some(lease.clone());
        self.lock_conn = lock;
        Ok(Some(lease))
    }

    fn renew_lease(&mut self, lease: &Lease, now: DateTime<Utc>, ttl: chrono::Duration) -> Result<Lease, StoreError> {
        let until = now + ttl;
        let ours = self.lease.as_ref().is_some_and(|h| h.register == lease.register);
        // The watchdog: a lease connection that is gone (the server restarted, or an operator
        // terminated it) lost the lock. Take it again on a new connection if it is free; the
        // epoch check below then tells whether anyone took over meanwhile.
        // A holder without the lock (it took over from a frozen one, which still has it) tries
        // again at every renewal, so a free lock goes back to meaning "the holder is gone".
        if ours && !self.lock_alive() {
            self.lock_conn = self.try_lease_lock(&lease.register)?;
        }
        let locked = ours && self.lock_conn.is_some();
        let renewed = self.tx(Tx::Write, |tx| {
            check_epoch(tx, &lease.register, lease.epoch)?;
            tx.execute(
                "UPDATE leases SET until = $1, locked = $4 WHERE register = $2 AND epoch = $3",
                &[&until, &lease.register, &lease.epoch, &locked],
            )?;
            Ok(())
        });
        if let Err(StoreError::Fenced { .. }) = &renewed
            && ours
        {
            // Deposed: give up the lock at once (closing its session), so the new leader's
            // successor can take it and this process never holds a lock it does not lead by.
            // The lease itself is kept: every later write of this process stays fenced by it.
            self.lock_conn = None;
        }
        renewed?;
        let renewed = Lease { until, ..lease.clone() };
        if ours {
            self.lease = Some(renewed.clone());
        }
        Ok(renewed)
    }

    fn release_lease(&mut self, lease: &Lease) -> Result<(), StoreError> {
        // Marked run out (if still ours) before the lock goes, so a reader never sees a
        // released lease as held.
        let result = self.tx(Tx::Write, |tx| {
            tx.execute(
                "UPDATE leases SET until = $1 WHERE register = $2 AND epoch = $3",
                &[&DateTime::<Utc>::UNIX_EPOCH, &lease.register, &lease.epoch],
            )?;
            Ok(())
        });
        if self.lease.as_ref().is_some_and(|h| h.register == lease.register) {
            self.lease = None;
            let_go(self.lock_conn.take());
        }
        result
    }

    fn lease_holder(&mut self, register: &str) -> Result<Option<LeaseHolder>, StoreError> {
        self.tx(Tx::Read, |tx| {
            Ok(tx
                .query_opt(
                    "SELECT holder, epoch, until FROM leases WHERE register = $1",
                    &[&register],
                )?
                .map(|r| LeaseHolder {
                    holder: r.get(0),
                    epoch: r.get(1),
                    until: r.get(2),
                }))
        })
    }

    fn take_writer(&mut self, holder: &str) -> Result<Option<String>, StoreError> {
        if self.writer_conn.is_some() {
            return Ok(None);
        }
        let mut conn = self.lock_connection("writer")?;
        let got: bool = conn
            .query_one(&format!("SELECT pg_try_advisory_lock(({WRITER_KEY}))"), &[])
            .map_err(|e| self.unavailable(&e))?
            .get(0);
        if !got {
            let other = self.tx(Tx::Read, |tx| {
                Ok(tx
                    .query_opt("SELECT holder FROM writer", &[])?
                    .map(|r| r.get::<_, String>(0)))
            })?;
            return Ok(Some(other.unwrap_or_else(|| "another kfr process".into())));
        }
        // Who holds it, for the refused one's message; written on the lock's own session.
        conn.execute(
            "INSERT INTO writer (one, holder) VALUES (true, $1) ON CONFLICT (one) DO UPDATE SET holder = excluded.holder",
            &[&holder],
        )
        .map_err(|e| self.unavailable(&e))?;
        self.writer_conn = Some(conn);
        Ok(None)
    }

    fn writer_holder(&mut self) -> Result<Option<String>, StoreError> {
        if self.writer_conn.is_some() {
            return Ok(Some(format!("this process (pid {})", std::process::id())));
        }
        // The writer's session lock as the server lists it (a bigint key is split into
        // classid, its high half, and objid, its low half), and the name its holder wrote.
        self.tx(Tx::Read, |tx| {
            Ok(tx
                .query_opt(
                    &format!(
                        "WITH k AS ({WRITER_KEY} AS key)
                         SELECT coalesce((SELECT holder FROM writer), 'another kfr process') FROM k
                         WHERE EXISTS (SELECT 1 FROM pg_locks l
                             WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
                               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                               AND l.classid = ((k.key >> 32) & 4294967295)::bigint::text::oid
                               AND l.objid = (k.key & 4294967295)::bigint::text::oid)"
                    ),
                    &[],
                )?
                .map(|r| r.get::<_, String>(0)))
        })
    }

    fn release_writer(&mut self) -> Result<(), StoreError> {
        let_go(self.writer_conn.take());
        Ok(())
    }
}

/// Lets go of the session lock `conn` holds, answered by the server before the connection is
/// closed: closing alone ends the session only once the server has read the goodbye, and
/// whoever looks right after (a second load, the standby) would still see the lock held. A
/// connection that fails here is closed all the same, which lets go too.
fn let_go(conn: Option<Client>) {
    if let Some(mut conn) = conn {
        let _ = conn.simple_query("SELECT pg_advisory_unlock_all()");
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::store;
    use super::*;
    use crate::store::conformance::{R, t};

    fn ttl() -> chrono::Duration {
        chrono::Duration::seconds(30)
    }

    /// Ends every lease session of the test's database from the server, as an operator's
    /// `pg_terminate_backend` (or a network cut the server noticed) would.
    fn terminate_lease_sessions(db: &crate::pg::cluster::TestDb) -> i64 {
        db.admin()
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                 WHERE datname = current_database() AND application_name = 'kfr-lease'",
                &[],
            )
            .unwrap()
            .get(0)
    }

    #[test]
    fn a_terminated_lease_session_lets_the_standby_lead_at_once_and_fences_the_old_leader() {
        let (db, mut a) = store();
        let mut b = PgBackend::open(&a.target.clone()).unwrap();
        let la = a.take_lease(R, "sync:a", t(0), ttl()).unwrap().expect("free");
        assert!(b.take_lease(R, "sync:b", t(1), ttl()).unwrap().is_none(), "a holds it");
        assert_eq!(terminate_lease_sessions(&db), 1);
        // The lock went with the session: b leads long before a's `until` (t(30)).
        let lb = b
            .take_lease(R, "sync:b", t(2), ttl())
            .unwrap()
            .expect("the lock is free");
        assert!(lb.epoch > la.epoch);
        let r = a.renew_lease(&la, t(3), ttl());
        assert!(matches!(r, Err(StoreError::Fenced { .. })), "{r:?}");
        // a, deposed, holds no lock: b's lease stays b's, and a stands by.
        assert!(a.take_lease(R, "sync:a", t(4), ttl()).unwrap().is_none());
        assert_eq!(a.lease_holder(R).unwrap().unwrap().holder, "sync:b");
    }

    #[test]
    fn a_lease_session_lost_with_nobody_taking_over_is_regained_on_renewal() {
        let (db, mut a) = store();
        let mut b = PgBackend::open(&a.target.clone()).unwrap();
        let la = a.take_lease(R, "sync:a", t(0), ttl()).unwrap().expect("free");
        assert_eq!(terminate_lease_sessions(&db), 1);
        let la2 = a.renew_lease(&la, t(5), ttl()).expect("still the leader");
        assert_eq!(la2.epoch, la.epoch);
        assert!(
            b.take_lease(R, "sync:b", t(6), ttl()).unwrap().is_none(),
            "the renewal took the lock again"
        );
    }

    #[test]
    fn a_frozen_leader_is_overtaken_when_its_lease_runs_out_and_lets_go_of_its_lock() {
        let (_db, mut a) = store();
        let mut b = PgBackend::open(&a.target.clone()).unwrap();
        let mut c = PgBackend::open(&a.target.clone()).unwrap();
        let la = a.take_lease(R, "sync:a", t(0), ttl()).unwrap().expect("free");
        // a stops renewing (SIGSTOP): its session and lock stay, its `until` passes.
        assert!(b.take_lease(R, "sync:b", t(29), ttl()).unwrap().is_none());
        let lb = b
            .take_lease(R, "sync:b", t(31), ttl())
            .unwrap()
            .expect("a's lease ran out");
        assert!(lb.epoch > la.epoch);
        // a resumes: fenced, and it drops its lock. The lock is free now, but b (which took
        // over without it) is alive: c must not take over on that alone.
        assert!(matches!(
            a.renew_lease(&la, t(32), ttl()),
            Err(StoreError::Fenced { .. })
        ));
        assert!(
            a.take_lease(R, "sync:a", t(33), ttl()).unwrap().is_none(),
            "a stands by"
        );
        assert!(c.take_lease(R, "sync:c", t(33), ttl()).unwrap().is_none(), "b leads");
        // b takes the lock at its next renewal; once b's session is gone, c leads at once.
        let lb = b.renew_lease(&lb, t(34), ttl()).unwrap();
        assert!(
            c.take_lease(R, "sync:c", t(35), ttl()).unwrap().is_none(),
            "b holds the lock"
        );
        drop(b);
        std::thread::sleep(std::time::Duration::from_millis(300));
        let lc = c
            .take_lease(R, "sync:c", t(36), ttl())
            .unwrap()
            .expect("b's session ended");
        assert!(lc.epoch > lb.epoch);
    }

    #[test]
    fn renewing_never_stacks_the_lock_and_a_release_frees_it_at_once() {
        let (_db, mut a) = store();
        let mut b = PgBackend::open(&a.target.clone()).unwrap();
        let mut la = a.take_lease(R, "sync:a", t(0), ttl()).unwrap().expect("free");
        for i in 1..5 {
            la = a.take_lease(R, "sync:a", t(i), ttl()).unwrap().expect("renewed");
        }
        a.release_lease(&la).unwrap();
        let lb = b
            .take_lease(R, "sync:b", t(6), ttl())
            .unwrap()
            .expect("released: free at once");
        assert!(lb.epoch > la.epoch);
    }

    #[test]
    fn one_load_writer_per_database_naming_the_holder() {
        let (_db, mut a) = store();
        let mut b = PgBackend::open(&a.target.clone()).unwrap();
        assert_eq!(a.take_writer("load:a").unwrap(), None);
        assert_eq!(a.take_writer("load:a").unwrap(), None, "taking it again is a no-op");
        assert_eq!(b.take_writer("load:b").unwrap().as_deref(), Some("load:a"));
        a.release_writer().unwrap();
        assert_eq!(b.take_writer("load:b").unwrap(), None);
        drop(b);
        assert_eq!(
            a.take_writer("load:a").unwrap(),
            None,
            "a holder that is gone holds nothing"
        );
    }
}
