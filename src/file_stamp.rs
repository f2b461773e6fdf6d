//! Whether files changed on disk since they were last read: each file's modification time, size
//! and inode. A renewed certificate copied over the old one changes the first two; a Kubernetes
//! Secret update (a symlink swapped to a new directory) changes the inode. The agent re-reads its
//! business certificate and its intake TLS certificate when their stamp changes (issue 21), so a
//! renewal needs no restart.

use std::path::PathBuf;
use std::time::SystemTime;

/// The files' state as last seen; a missing file is part of the state too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStamp(Vec<Option<(SystemTime, u64, u64)>>);

impl FileStamp {
    /// The stamp of `files` now (following symlinks, as a reader does).
    pub fn of(files: &[PathBuf]) -> FileStamp {
        FileStamp(
            files
                .iter()
                .map(|f| {
                    let m = std::fs::metadata(f).ok()?;
                    #[cfg(unix)]
                    let ino = std::os::unix::fs::MetadataExt::ino(&m);
                    #[cfg(not(unix))]
                    let ino = 0;
                    Some((m.modified().ok()?, m.len(), ino))
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replaced_or_removed_file_changes_the_stamp_and_nothing_else_does() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("cert.pem");
        std::fs::write(&f, "one").unwrap();
        let files = vec![f.clone()];
        let first = FileStamp::of(&files);
        assert_eq!(FileStamp::of(&files), first, "unchanged");
        // Same size, same second: the new inode of a file renamed into place still shows.
        let tmp = d.path().join("new.pem");
        std::fs::write(&tmp, "two").unwrap();
        std::fs::rename(&tmp, &f).unwrap();
        let renamed = FileStamp::of(&files);
        assert_ne!(renamed, first);
        std::fs::remove_file(&f).unwrap();
        assert_ne!(FileStamp::of(&files), renamed);
    }
}
