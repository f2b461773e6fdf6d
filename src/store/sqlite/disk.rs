//! The SQLite store's files as they lie on disk, read before SQLite opens them: the main file's
//! header, the write-ahead log (`-wal`) and its index (`-shm`).
//!
//! Why kfr looks itself (issue 20: "a lost `-wal` loses the job", "a truncated store errors
//! without naming it"): SQLite, opening a store no other process has open, rebuilds the log's
//! index from whatever log it finds. A log that was deleted or replaced is then taken for an
//! empty one, and every change committed into it but not yet copied into the main file is gone
//! without a word: the load's job vanished and a new load sent accepted batches again. The index
//! of the log that was lost is still on disk, though, and says how many pages the log held and
//! how many were copied already, so a loss can be told and refused, naming the file.
//!
//! The formats read here are SQLite's documented, stable file formats (the database header,
//! "the WAL-index format"); nothing is written. Both checks refuse only what they can tell for
//! certain, and let SQLite decide the rest.

use crate::store::error::StoreError;
use std::io::Read as _;
use std::path::{Path, PathBuf};

/// The store's write-ahead log: `<store>-wal`, next to the store's real file (SQLite follows a
/// symlink to name it).
pub(crate) fn log_path(store: &Path) -> PathBuf {
    with_suffix(store, "-wal")
}

/// The log's index (SQLite's shared memory): `<store>-shm`.
pub(crate) fn index_path(store: &Path) -> PathBuf {
    with_suffix(store, "-shm")
}

fn with_suffix(store: &Path, suffix: &str) -> PathBuf {
    // The name as given when it is the file's own (a symlinked directory on the way leads to the
    // same directory, and messages keep the operator's spelling).
    let own = std::fs::symlink_metadata(store).map_or(true, |m| !m.file_type().is_symlink());
    let real = if own {
        store.to_path_buf()
    } else {
        std::fs::canonicalize(store).unwrap_or_else(|_| store.to_path_buf())
    };
    let mut name = real.into_os_string();
    name.push(suffix);
    PathBuf::from(name)
}

/// The first bytes of every SQLite database file.
const MAGIC: &[u8; 16] = b"SQLite format 3\0";
/// `iVersion` of a WAL index header (the WAL format of SQLite 3.7.0, still current).
const INDEX_VERSION: u32 = 3_007_000;
/// Bytes of a log's header, and of each frame's header before its page.
const LOG_HEADER: u64 = 32;
const FRAME_HEADER: u64 = 24;

/// Refuses to open a store whose files on disk say it is damaged or lost committed changes: a
/// main file shorter than its own header says ([`StoreError::Corrupt`], naming the file and the
/// rule), or a log that is missing, too short or replaced while its index says it held pages not
/// yet copied into the main file ([`StoreError::LogMissing`]). Anything else is for SQLite.
pub(crate) fn check_before_open(store: &Path) -> Result<(), StoreError> {
    if let Some(lost) = lost_log(store) {
        return Err(lost);
    }
    if let Some(detail) = truncated(store) {
        return Err(StoreError::Corrupt {
            store: store.display().to_string(),
            detail,
        });
    }
    Ok(())
}

/// What the log's index says, from its first header copy and its checkpoint record.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Index {
    /// Frames (pages) in the log that belong to committed transactions.
    frames: u32,
    /// Of those, how many were copied into the main file (a checkpoint's `nBackfill`).
    copied: u32,
    page_size: u64,
    /// The log header's salts the index was built from: a log with others is another log.
    salt: [u8; 8],
}

/// Reads the index at `path` (`None` when there is none, or it cannot be told: too short, not
/// initialised, another format, or its two header copies differ because a writer is at work).
fn read_index(path: &Path) -> Option<Index> {
    let mut b = [0u8; 100];
    std::fs::File::open(path).ok()?.read_exact(&mut b).ok()?;
    // Two copies of a 48-byte header, then the checkpoint record; host byte order.
    if b[..48] != b[48..96] {
        return None;
    }
    let u32_at = |i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    if u32_at(0) != INDEX_VERSION || b[12] == 0 {
        return None;
    }
    let size = u16::from_ne_bytes([b[14], b[15]]);
    Some(Index {
        frames: u32_at(16),
        copied: u32_at(96),
        page_size: if size == 1 { 65_536 } else { u64::from(size) },
        salt: b[32..40].try_into().ok()?,
    })
}

/// The lost-log refusal, when the index of `store`'s log says it held pages not yet in the main
/// file and the log is gone, too short for them, or another log (other salts).
fn lost_log(store: &Path) -> Option<StoreError> {
    let (log, index) = (log_path(store), index_path(store));
    let before = read_index(&index)?;
    if before.frames <= before.copied {
        return None;
    }
    let needed = LOG_HEADER + u64::from(before.frames) * (FRAME_HEADER + before.page_size);
    let problem = match std::fs::File::open(&log) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "is missing".to_string(),
        Err(_) => return None,
        Ok(mut f) => {
            let len = f.metadata().ok()?.len();
            let mut header = [0u8; 32];
            if len < LOG_HEADER || f.read_exact(&mut header).is_err() {
                "is empty".to_string()
            } else if header[16..24] != before.salt {
                "is not the log its index was built from (another file was put in its place)".to_string()
            } else if len < needed {
                format!("holds {len} bytes, fewer than the {needed} its index counts")
            } else {
                return None;
            }
        }
    };
    // A process closing the store as the last one copies the log, then removes the index and
    // the log: read again, a loss is one the index still says.
    (read_index(&index).as_ref() == Some(&before)).then(|| StoreError::LogMissing {
        store: store.display().to_string(),
        log: log.display().to_string(),
        index: index.display().to_string(),
        problem,
        frames: before.frames - before.copied,
    })
}

/// Why the SQLite file at `store` is cut short, when its header says so: it holds fewer bytes
/// than the pages its header counts, and no log could hold the rest (none, or an empty one).
/// `None` for anything else (no file, an empty one, not SQLite, a header that does not count).
fn truncated(store: &Path) -> Option<String> {
    let mut f = std::fs::File::open(store).ok()?;
    let len = f.metadata().ok()?.len();
    let mut b = [0u8; 100];
    let got = read_up_to(&mut f, &mut b)?;
    if got < MAGIC.len() || &b[..16] != MAGIC {
        return None;
    }
    if got < b.len() {
        return Some(format!(
            "truncated: the file holds {len} bytes, fewer than the 100 of its own header (rule: a SQLite store file holds every page its header counts)"
        ));
    }
    let be32 = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let size = u16::from_be_bytes([b[16], b[17]]);
    let page = if size == 1 { 65_536 } else { u64::from(size) };
    let pages = be32(28);
    // The header's page count is valid only when its change counter and "version valid for"
    // agree (SQLite's file format, §1.3.7).
    if pages == 0 || be32(24) != be32(92) {
        return None;
    }
    let log_frames = std::fs::metadata(log_path(store)).map_or(0, |m| m.len());
    let counted = u64::from(pages) * page;
    (len < counted && log_frames <= LOG_HEADER).then(|| {
        format!(
            "truncated: the file holds {len} bytes, its header counts {pages} pages of {page} bytes ({counted} bytes) (rule: a SQLite store file holds every page its header counts; a full disk or an interrupted copy cuts it short)"
        )
    })
}

/// Reads until `buf` is full or the file ends; the bytes read.
fn read_up_to(f: &mut std::fs::File, buf: &mut [u8]) -> Option<usize> {
    let mut got = 0;
    while got < buf.len() {
        match f.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    Some(got)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index_bytes(frames: u32, copied: u32, salt: [u8; 8]) -> Vec<u8> {
        let mut h = vec![0u8; 48];
        h[0..4].copy_from_slice(&INDEX_VERSION.to_ne_bytes());
        h[12] = 1;
        h[14..16].copy_from_slice(&4096u16.to_ne_bytes());
        h[16..20].copy_from_slice(&frames.to_ne_bytes());
        h[32..40].copy_from_slice(&salt);
        let mut b = h.clone();
        b.extend_from_slice(&h);
        let mut ckpt = vec![0u8; 40];
        ckpt[0..4].copy_from_slice(&copied.to_ne_bytes());
        b.extend_from_slice(&ckpt);
        b
    }

    #[test]
    fn an_index_is_read_only_when_both_header_copies_agree() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s.db-shm");
        std::fs::write(&p, index_bytes(7, 3, [1; 8])).unwrap();
        assert_eq!(
            read_index(&p),
            Some(Index {
                frames: 7,
                copied: 3,
                page_size: 4096,
                salt: [1; 8]
            })
        );
        let mut torn = index_bytes(7, 3, [1; 8]);
        torn[16] = 9;
        std::fs::write(&p, torn).unwrap();
        assert_eq!(read_index(&p), None, "a header being written cannot be told");
    }

    #[test]
    fn a_log_is_lost_only_when_its_index_counts_pages_not_yet_copied() {
        let d = tempfile::tempdir().unwrap();
        let store = d.path().join("s.db");
        std::fs::write(index_path(&store), index_bytes(5, 5, [2; 8])).unwrap();
        assert!(lost_log(&store).is_none(), "every page was copied: nothing is lost");
        std::fs::write(index_path(&store), index_bytes(5, 2, [2; 8])).unwrap();
        let lost = lost_log(&store).expect("three pages lost");
        let text = lost.to_string();
        assert!(
            text.contains("s.db-wal is missing") && text.contains("3 committed pages"),
            "{text}"
        );
        let mut log = vec![0u8; 32];
        log[16..24].copy_from_slice(&[9; 8]);
        std::fs::write(log_path(&store), &log).unwrap();
        assert!(
            lost_log(&store)
                .unwrap()
                .to_string()
                .contains("another file was put in its place")
        );
        log[16..24].copy_from_slice(&[2; 8]);
        std::fs::write(log_path(&store), &log).unwrap();
        assert!(lost_log(&store).unwrap().to_string().contains("fewer than the"));
        log.resize(32 + 5 * (24 + 4096), 0);
        std::fs::write(log_path(&store), &log).unwrap();
        assert!(lost_log(&store).is_none(), "the log is there, whole");
    }
}
