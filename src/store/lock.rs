//! One writer per state store: the lock a running `kfr load` holds on its store.
//!
//! Two loads (or a load and a `--resume`) on one store would each upload the job's batches, so
//! every batch would reach KFR twice (issue 9). The lock is an OS file lock (`flock`) on
//! `<store>.lock` next to the store: the kernel releases it when the process ends, however it
//! ends, so a killed load never leaves a stale lock behind and `--resume` after `kill -9` works.
//! The file holds the holder's pid and start time for the refusal message; no customer data.

use std::io::{Read as _, Seek as _, Write as _};
use std::path::{Path, PathBuf};

/// Held while it lives; dropping it (or the process dying) releases the store.
#[derive(Debug)]
pub struct WriterLock {
    _file: std::fs::File,
    path: PathBuf,
}

/// The lock file of a store: `s.db` → `s.db.lock`.
pub fn lock_path(state: &Path) -> PathBuf {
    let mut name = state.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

impl WriterLock {
    /// Takes the store's writer lock without waiting. `Ok(Err(holder))` when another process
    /// holds it: `holder` is what that process wrote (its pid and since when).
    pub fn acquire(state: &Path) -> anyhow::Result<Result<WriterLock, String>> {
        let path = lock_path(state);
        let mut o = std::fs::OpenOptions::new();
        o.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            o.mode(0o600);
        }
        let mut file = o
            .open(&path)
            .map_err(|e| anyhow::anyhow!("opening the store's lock file {}: {e}", path.display()))?;
        match try_lock(&file) {
            Ok(true) => {}
            Ok(false) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                let holder = text.trim();
                return Ok(Err(if holder.is_empty() {
                    "another kfr process".to_string()
                } else {
                    holder.to_string()
                }));
            }
            Err(e) => return Err(anyhow::anyhow!("locking {}: {e}", path.display())),
        }
        file.set_len(0)?;
        file.rewind()?;
        write!(file, "pid {}, since {}", std::process::id(), super::now_text())?;
        file.flush()?;
        Ok(Ok(WriterLock { _file: file, path }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// An exclusive `flock` without waiting: `Ok(false)` when another open file holds it.
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
    fn a_second_writer_is_refused_until_the_first_is_gone() {
        let d = tempfile::tempdir().unwrap();
        let state = d.path().join("s.db");
        let first = WriterLock::acquire(&state).unwrap().unwrap();
        let holder = WriterLock::acquire(&state).unwrap().unwrap_err();
        assert!(holder.starts_with(&format!("pid {}", std::process::id())), "{holder}");
        drop(first);
        assert!(WriterLock::acquire(&state).unwrap().is_ok());
    }
}
