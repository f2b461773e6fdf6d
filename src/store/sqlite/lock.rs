//! The OS file lock under the SQLite backend's one-holder rules: the load writer
//! (`<store>.lock` plus an [`IdentityLock`] on the store file itself) and each register's
//! delivery lease (`<store>.lease-<hash>`).
//!
//! An `flock` is released by the kernel when the process ends, however it ends, so a killed
//! holder never leaves a stale lock behind and `--resume` after `kill -9` works. The lock file is
//! named after the store's *resolved* path (symlinks followed), so two spellings of one store —
//! a relative path, a symlink — meet at the same lock (issue 20, N4). The file holds the holder's
//! description for the refusal message; no customer data.
//!
//! A hard link is another name of the same file that no path resolution leads back to, so the
//! load writer also holds an `flock` on the store file's own inode ([`IdentityLock`]): every name
//! of the file meets it (issue 20). Who holds it is read from `/proc/locks` (Linux), without
//! taking anything: what a look-only command (`kfr load status`) uses. SQLite's own locks are
//! POSIX `fcntl` locks, which a Linux `flock` neither blocks nor is blocked by (on a local file
//! system; a network file system is no place for a SQLite store in WAL mode anyway).

use std::io::{Read as _, Seek as _, Write as _};
use std::path::{Path, PathBuf};

/// Held while it lives; dropping it (or the process dying) releases it.
#[derive(Debug)]
pub(crate) struct FileLock {
    _file: std::fs::File,
}

/// The lock file `suffix` of the store at `store`, next to the store's real file.
pub(crate) fn lock_path(store: &Path, suffix: &str) -> PathBuf {
    let real = std::fs::canonicalize(store).unwrap_or_else(|_| store.to_path_buf());
    let mut name = real.into_os_string();
    name.push(suffix);
    PathBuf::from(name)
}

impl FileLock {
    /// Takes the lock at `path` without waiting, writing `holder` into it. `Ok(Err(other))`
    /// when another open file holds it: `other` is what its holder wrote.
    pub(crate) fn try_acquire(path: &Path, holder: &str) -> std::io::Result<Result<FileLock, String>> {
        let mut o = std::fs::OpenOptions::new();
        o.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            o.mode(0o600);
        }
        let mut file = o.open(path)?;
        if !try_lock(&file)? {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            let other = text.trim();
            return Ok(Err(if other.is_empty() {
                "another kfr process".to_string()
            } else {
                other.to_string()
            }));
        }
        file.set_len(0)?;
        file.rewind()?;
        write!(file, "{holder}")?;
        file.flush()?;
        Ok(Ok(FileLock { _file: file }))
    }
}

/// An exclusive `flock` on the store file itself: the load writer's lock that follows the file's
/// identity (device and inode) whatever name it is opened by, a hard link included.
///
/// The descriptor is never closed while the process lives: closing *any* descriptor of a file
/// drops every POSIX lock the process holds on it, SQLite's included (its documented hazard), so
/// a released lock is only unlocked and its descriptor parked for the next take.
#[derive(Debug)]
pub(crate) struct IdentityLock {
    file: Option<std::fs::File>,
    identity: (u64, u64),
}

/// Descriptors of store files whose identity lock was released: kept open (see [`IdentityLock`]).
static PARKED: std::sync::Mutex<Vec<((u64, u64), std::fs::File)>> = std::sync::Mutex::new(Vec::new());

impl IdentityLock {
    /// Takes the lock on the file at `store`, whose device and inode are `identity`, without
    /// waiting. `Ok(Err(pid))` when another open file holds it (`pid` the holder's process, when
    /// `/proc/locks` says).
    pub(crate) fn try_acquire(
        store: &Path,
        identity: (u64, u64),
    ) -> std::io::Result<Result<IdentityLock, Option<u32>>> {
        let parked = {
            let mut p = PARKED.lock().unwrap_or_else(|e| e.into_inner());
            p.iter().position(|(id, _)| *id == identity).map(|i| p.swap_remove(i).1)
        };
        let file = match parked {
            Some(f) => f,
            None => std::fs::File::open(store)?,
        };
        if try_lock(&file)? {
            return Ok(Ok(IdentityLock {
                file: Some(file),
                identity,
            }));
        }
        park(identity, file);
        Ok(Err(flock_holder(identity)))
    }
}

fn park(identity: (u64, u64), file: std::fs::File) {
    PARKED.lock().unwrap_or_else(|e| e.into_inner()).push((identity, file));
}

impl Drop for IdentityLock {
    fn drop(&mut self) {
        if let Some(file) = self.file.take() {
            unlock(&file);
            park(self.identity, file);
        }
    }
}

/// The process holding an exclusive `flock` on the file with `identity` (device, inode), read
/// from `/proc/locks` without taking any lock; `None` when nobody does or it cannot be told.
pub(crate) fn flock_holder(identity: (u64, u64)) -> Option<u32> {
    let text = std::fs::read_to_string("/proc/locks").ok()?;
    flock_holder_in(&text, identity)
}

fn flock_holder_in(locks: &str, (dev, ino): (u64, u64)) -> Option<u32> {
    // glibc's major()/minor() of a dev_t; /proc/locks prints them in hex, the inode in decimal.
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    let wanted = format!("{major:02x}:{minor:02x}:{ino}");
    locks.lines().find_map(|line| {
        // `1: FLOCK  ADVISORY  WRITE 1952 fe:00:5800426 0 EOF`; a waiter's line has `->`.
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.len() >= 6 && f[1] == "FLOCK" && f[3] == "WRITE" && f[5] == wanted)
            .then(|| f[4].parse().ok())
            .flatten()
    })
}

#[cfg(unix)]
fn unlock(file: &std::fs::File) {
    use std::os::unix::io::AsRawFd as _;
    // SAFETY: flock on a descriptor this `File` owns; no memory is passed.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_UN) };
}

#[cfg(not(unix))]
fn unlock(_file: &std::fs::File) {}

/// An exclusive `flock` without waiting: `Ok(false)` when another open file holds it. Separate
/// opens conflict even within one process, which the conformance suite's two handles rely on.
#[cfg(unix)]
fn try_lock(file: &std::fs::File) -> std::io::Result<bool> {
    use std::os::unix::io::AsRawFd as _;
    // SAFETY: flock on a descriptor this `File` owns; no memory is passed.
    let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// Elsewhere no lock is taken (kfr is run on Linux; docs/load.md).
#[cfg(not(unix))]
fn try_lock(_file: &std::fs::File) -> std::io::Result<bool> {
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 20: a hard link to a store meets the same writer lock; `/proc/locks` names the
    /// holder without anyone taking anything, and a released lock can be taken again.
    #[test]
    fn the_identity_lock_follows_the_file_through_a_hard_link() {
        let d = tempfile::tempdir().unwrap();
        let state = d.path().join("s.db");
        std::fs::write(&state, b"x").unwrap();
        let hard = d.path().join("hard.db");
        std::fs::hard_link(&state, &hard).unwrap();
        let identity = {
            use std::os::unix::fs::MetadataExt as _;
            let m = std::fs::metadata(&state).unwrap();
            (m.dev(), m.ino())
        };
        assert_eq!(flock_holder(identity), None);
        let first = IdentityLock::try_acquire(&state, identity).unwrap().unwrap();
        assert_eq!(flock_holder(identity), Some(std::process::id()));
        let other = IdentityLock::try_acquire(&hard, identity).unwrap().unwrap_err();
        assert_eq!(other, Some(std::process::id()));
        drop(first);
        assert_eq!(flock_holder(identity), None);
        let again = IdentityLock::try_acquire(&hard, identity).unwrap();
        assert!(again.is_ok());
    }

    #[test]
    fn proc_locks_lines_are_read_by_device_and_inode() {
        let locks = "1: FLOCK  ADVISORY  WRITE 1952 fe:00:5800426 0 EOF\n\
                     2: -> FLOCK  ADVISORY  WRITE 77 fe:00:42 0 EOF\n\
                     3: POSIX  ADVISORY  WRITE 66 fe:00:42 0 EOF\n\
                     4: FLOCK  ADVISORY  WRITE 1604 103:02:42 0 EOF\n";
        let dev = (0x103u64 << 8) | 0x02;
        assert_eq!(flock_holder_in(locks, (dev, 42)), Some(1604));
        assert_eq!(flock_holder_in(locks, (0xfe00, 5800426)), Some(1952));
        assert_eq!(
            flock_holder_in(locks, (0xfe00, 42)),
            None,
            "a waiter or a POSIX lock is no holder"
        );
    }

    #[test]
    fn a_second_holder_is_refused_until_the_first_is_gone_whatever_the_spelling() {
        let d = tempfile::tempdir().unwrap();
        let state = d.path().join("s.db");
        std::fs::write(&state, b"").unwrap();
        let link = d.path().join("link.db");
        std::os::unix::fs::symlink(&state, &link).unwrap();
        let first = FileLock::try_acquire(&lock_path(&state, ".lock"), "pid 1")
            .unwrap()
            .unwrap();
        let other = FileLock::try_acquire(&lock_path(&link, ".lock"), "pid 2")
            .unwrap()
            .unwrap_err();
        assert_eq!(other, "pid 1");
        drop(first);
        assert!(
            FileLock::try_acquire(&lock_path(&link, ".lock"), "pid 2")
                .unwrap()
                .is_ok()
        );
    }
}
