//! The OS file lock under the SQLite backend's one-holder rules: the load writer
//! (`<store>.lock`) and each register's delivery lease (`<store>.lease-<hash>`).
//!
//! An `flock` is released by the kernel when the process ends, however it ends, so a killed
//! holder never leaves a stale lock behind and `--resume` after `kill -9` works. The lock file is
//! named after the store's *resolved* path (symlinks followed), so two spellings of one store —
//! a relative path, a symlink — meet at the same lock (issue 20, N4). The file holds the holder's
//! description for the refusal message; no customer data.

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
