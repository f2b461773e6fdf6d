//! Leases on SQLite: who delivers a register, and the one load writer per store.
//!
//! A delivery lease is two things: an OS lock on `<store>.lease-<register hash>` (held while the
//! process lives, released by the kernel when it dies, so a standby takes over after `kill -9`)
//! and a row in `leases` whose `epoch` grows on every takeover. The backend remembers the lease
//! it holds and checks that epoch inside every deliverer's write transaction (`db::check_epoch`),
//! so a holder whose lock was lost (its lock file deleted and another process took a new one)
//! writes nothing more: [`StoreError::Fenced`]. A free lock means the last holder is dead, so a
//! standby takes over at once; a lock still held moves only once its holder stopped renewing
//! (`until` passed: a hung process), and that holder is fenced from then on.
//!
//! The load writer is the lock file `<store>.lock` (every spelling of the store's path) and an
//! `flock` on the store file itself (every name of the file, a hard link included): two loads on
//! one store would upload every batch twice (issue 9, issue 20).

use super::db::{Held, SqliteBackend, Tx, check_epoch};
use super::lock::{FileLock, IdentityLock, flock_holder, lock_path};
use super::rows::{parse_ts, ts};
use crate::store::backend::Leases;
use crate::store::error::StoreError;
use crate::store::types::{Lease, LeaseHolder};
use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension as _, params};
use sha2::Digest as _;

/// The lock file suffix of `register`'s lease: a hash, since a register key holds a URL.
fn lease_suffix(register: &str) -> String {
    let h = sha2::Sha256::digest(register.as_bytes());
    format!(".lease-{}", &hex::encode(h)[..12])
}

fn lock_error(store: &str, e: std::io::Error) -> StoreError {
    StoreError::NotWritable {
        store: store.to_string(),
        detail: format!("its lock file: {e}"),
    }
}

impl Leases for SqliteBackend {
    fn take_lease(
        &mut self,
        register: &str,
        holder: &str,
        now: DateTime<Utc>,
        ttl: chrono::Duration,
    ) -> Result<Option<Lease>, StoreError> {
        if let Some(held) = &self.lease
            && held.lease.register == register
        {
            let lease = held.lease.clone();
            match self.renew_lease(&lease, now, ttl) {
                Ok(lease) => return Ok(Some(lease)),
                // Deposed: let go of the old lock and try afresh like anyone else.
                Err(StoreError::Fenced { .. }) => self.lease = None,
                Err(e) => return Err(e),
            }
        }
        let path = lock_path(&self.path, &lease_suffix(register));
        // The lock free means its last holder is gone (the kernel let go when it died): take over
        // at once. Held by another process, the lease moves only once that holder stopped
        // renewing it (hung, or cut off from the store) and `until` passed; the old holder's
        // writes are fenced from then on.
        let lock = FileLock::try_acquire(&path, holder)
            .map_err(|e| lock_error(&self.describe_path(), e))?
            .ok();
        let until = now + ttl;
        let got = lock.is_some();
        let epoch = self.tx(Tx::Write, |tx| {
            let current: Option<String> = tx
                .query_row("SELECT until FROM leases WHERE register = ?1", [register], |r| r.get(0))
                .optional()?;
            let ran_out = current.is_none_or(|u| u <= ts(now));
            if !got && !ran_out {
                return Ok(None);
            }
            Ok(Some(tx.query_row(
                "INSERT INTO leases (register, holder, epoch, until) VALUES (?1, ?2, 1, ?3)
                 ON CONFLICT (register) DO UPDATE SET holder = excluded.holder, epoch = epoch + 1,
                     until = excluded.until
                 RETURNING epoch",
                params![register, holder, ts(until)],
                |r| r.get::<_, i64>(0),
            )?))
        })?;
        let Some(epoch) = epoch else { return Ok(None) };
        let lease = Lease {
            register: register.to_string(),
            holder: holder.to_string(),
            epoch,
            until,
        };
        self.lease = Some(Held {
            lease: lease.clone(),
            _lock: lock,
        });
        Ok(Some(lease))
    }

    fn renew_lease(&mut self, lease: &Lease, now: DateTime<Utc>, ttl: chrono::Duration) -> Result<Lease, StoreError> {
        let until = now + ttl;
        self.tx(Tx::Write, |tx| {
            check_epoch(tx, &lease.register, lease.epoch)?;
            tx.execute(
                "UPDATE leases SET until = ?1 WHERE register = ?2 AND epoch = ?3",
                params![ts(until), lease.register, lease.epoch],
            )?;
            Ok(())
        })?;
        let renewed = Lease { until, ..lease.clone() };
        if let Some(held) = &mut self.lease
            && held.lease.register == lease.register
        {
            held.lease = renewed.clone();
        }
        Ok(renewed)
    }

    fn release_lease(&mut self, lease: &Lease) -> Result<(), StoreError> {
        // Marked run out (if still ours) before the lock goes, so a reader never sees a
        // released lease as held.
        let result = self.tx(Tx::Write, |tx| {
            tx.execute(
                "UPDATE leases SET until = ?1 WHERE register = ?2 AND epoch = ?3",
                params![ts(DateTime::<Utc>::UNIX_EPOCH), lease.register, lease.epoch],
            )?;
            Ok(())
        });
        if self.lease.as_ref().is_some_and(|h| h.lease.register == lease.register) {
            self.lease = None;
        }
        result
    }

    fn lease_holder(&mut self, register: &str) -> Result<Option<LeaseHolder>, StoreError> {
        self.tx(Tx::Read, |tx| {
            let row: Option<(String, i64, String)> = tx
                .query_row(
                    "SELECT holder, epoch, until FROM leases WHERE register = ?1",
                    [register],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            Ok(match row {
                Some((holder, epoch, until)) => Some(LeaseHolder {
                    holder,
                    epoch,
                    until: parse_ts(&until)?,
                }),
                None => None,
            })
        })
    }

    fn take_writer(&mut self, holder: &str) -> Result<Option<String>, StoreError> {
        if self.writer.is_some() {
            return Ok(None);
        }
        let path = lock_path(&self.path, ".lock");
        let lock = match FileLock::try_acquire(&path, holder).map_err(|e| lock_error(&self.describe_path(), e))? {
            Ok(lock) => lock,
            Err(other) => return Ok(Some(other)),
        };
        // The same file under another name (a hard link) has another lock file: the lock on
        // the file itself is what every name meets.
        let identity = super::db::file_identity(&self.path).ok_or_else(|| StoreError::Lost {
            store: self.describe_path(),
            log: None,
        })?;
        match IdentityLock::try_acquire(&self.path, identity).map_err(|e| lock_error(&self.describe_path(), e))? {
            Ok(identity) => {
                self.writer = Some((lock, identity));
                Ok(None)
            }
            Err(pid) => Ok(Some(format!(
                "{} (through another name of this store file, a hard link)",
                pid.map_or("another kfr process".to_string(), |p| format!("pid {p}"))
            ))),
        }
    }

    fn release_writer(&mut self) -> Result<(), StoreError> {
        self.writer = None;
        Ok(())
    }

    fn writer_holder(&mut self) -> Result<Option<String>, StoreError> {
        if self.writer.is_some() {
            return Ok(Some(format!("this process (pid {})", std::process::id())));
        }
        let Some(identity) = super::db::file_identity(&self.path) else {
            return Ok(None);
        };
        // The lock on the file itself, as /proc/locks shows it; the path's lock file (only
        // read) says who, when the holder came by this spelling.
        Ok(flock_holder(identity).map(|pid| {
            let said = std::fs::read_to_string(lock_path(&self.path, ".lock")).unwrap_or_default();
            let said = said.trim();
            if said.contains(&format!("pid {pid}")) {
                said.to_string()
            } else {
                format!("pid {pid}")
            }
        }))
    }
}

impl SqliteBackend {
    fn describe_path(&self) -> String {
        self.path.display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 20: two loads on one store, the second through a hard link to its file. SQLite
    /// keeps its log by name, so the second name is refused at open; and should a link appear
    /// after a load opened the store, the writer lock on the file itself still refuses a second
    /// writer.
    #[test]
    fn a_hard_link_to_the_store_is_refused_and_meets_the_same_writer_lock() {
        let d = tempfile::tempdir().unwrap();
        let state = d.path().join("s.db");
        let other = d.path().join("other.db");
        let mut first = SqliteBackend::open(&state).unwrap();
        let mut second = SqliteBackend::open(&other).unwrap();
        assert_eq!(first.take_writer("pid 1 (first)").unwrap(), None);
        // A link made after both opened: the path locks differ, the file's lock does not.
        std::fs::remove_file(&other).unwrap();
        std::fs::hard_link(&state, &other).unwrap();
        second.path = other.clone();
        let holder = second.take_writer("pid 2 (second)").unwrap().expect("refused");
        assert!(holder.contains("hard link"), "{holder}");
        first.release_writer().unwrap();
        assert_eq!(second.take_writer("pid 2 (second)").unwrap(), None);
        drop(second);
        // Opened by the other name now: refused, naming the store and its link count.
        let err = SqliteBackend::open(&other).err().unwrap();
        assert!(
            matches!(&err, StoreError::HardLinked { links: 2, store } if store.ends_with("other.db")),
            "{err:?}"
        );
    }
}
