//! The spool directory source: the core system moves files in atomically; the agent takes them in
//! name order, each file all or nothing (docs/sync.md, "Spool directory").
//!
//! - `*.jsonl`: one JSON event per line ([`crate::sync::event`]).
//! - `*.csv`: `add,ID[,DATE]` or `remove,ID` per line, read with the shared field grammar of
//!   [`crate::input::grammar`] (quoting, and the load's two date forms `YYYY-MM-DD` / `DD.MM.YYYY`).
//! - Anything else, and dotfiles (a writer's temporary name), is left alone; blank lines are
//!   layout; a UTF-8 byte order mark before the first line is skipped.
//!
//! A file whose every line is valid is committed in one transaction, then moved to `done/`. A
//! file with any bad line stores nothing and is moved to `failed/` beside a `NAME.errors` file
//! naming each bad line (`file:line: field: message (rule …)`, identifiers masked); so does one
//! the store refuses (an event id reused for another event, a customer past the flood limit). If
//! the store fails, the file stays where it is and is tried again at the next poll.
//!
//! Only complete files are taken (issue 19: a file renamed in before its writer finished was
//! taken in part). A file is taken when it is unchanged — the same file (device and inode), the
//! same size and modification time — since the previous look, one poll interval earlier, and
//! stays so while it is read; otherwise it is left for a later look. Before a file is moved to
//! `done/` or `failed/` its path is checked to still hold the file that was read, unchanged: a
//! file renamed over the name meanwhile is left in place to be read at the next look, never moved
//! unread. A file that vanishes before its move is logged, not fatal. Files are read line by
//! line and their events streamed into the store's one transaction [`CHUNK`] at a time
//! ([`crate::store::Store::enqueue_stream`]): a file's memory does not grow with its length.
//!
//! Event ids: an event without an `event_id` gets `spool:<file>:<line>:<text>` ([`line_id`]):
//! a SHA-256 of the file's identity — its name, device, inode and birth time — the line's number
//! and a hash of its bytes. The same file taken again after a crash between commit and move has the same identity,
//! so its events come back as duplicates only; a later file with the same bytes is another file
//! (the earlier one still occupies its inode in `done/`), so its events are new (issue 19: ids
//! from the content alone dropped the second `add,X` of `add,X`, `remove,X`, `add,X`). Size and
//! modification time are deliberately not part of the identity: a file that grows after its
//! commit (a writer breaking the rename rule) is left in place, and at its next reading the lines
//! already stored are duplicates and only the new ones are stored.
//!
//! Directories this source creates are `0700`, files `0600` (they name customers), whatever the
//! umask.

use super::{Intake, Source, SourceError, SourceReport};
use crate::input::grammar;
use crate::store::{NewEvent, StoreError, StreamWriter, Streamed};
use crate::sync::event::{self, Broken, Context, Location, Refusal};
use futures::future::BoxFuture;
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the directory is looked at by default.
pub const DEFAULT_POLL: Duration = Duration::from_millis(500);

/// A UTF-8 byte order mark, which some Windows tools put before a file's first line.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Why the spool source cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool directory {path}: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("spool file {path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Where and how often.
#[derive(Debug, Clone)]
pub struct SpoolOptions {
    pub dir: PathBuf,
    /// The source name stored with the events.
    pub name: String,
    pub poll_interval: Duration,
}

impl SpoolOptions {
    pub fn new(dir: impl Into<PathBuf>, name: impl Into<String>) -> Self {
        SpoolOptions {
            dir: dir.into(),
            name: name.into(),
            poll_interval: DEFAULT_POLL,
        }
    }
}

/// What one poll did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Poll {
    /// Files committed and moved to `done/`.
    pub done: Vec<String>,
    /// Files moved to `failed/`.
    pub failed: Vec<String>,
    /// Files left for a later look: new or changed since the previous look, changed while read,
    /// or replaced (or changed) at their name between reading and moving.
    pub left: Vec<String>,
    /// Files that vanished between the listing and their move.
    pub vanished: Vec<String>,
    /// The store refused a commit: the file stays for the next poll.
    pub store_failed: bool,
}

/// Which file a name holds, and in what state: what "unchanged" compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// The file's identity: the same file keeps it across renames and appends.
    pub key: FileKey,
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub modified: i128,
}

/// Device, inode and birth time (when the file system records one): two files alive at once
/// never share it, and a file keeps it when renamed or written to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileKey {
    pub dev: u64,
    pub ino: u64,
    /// Nanoseconds since the epoch; `None` where the file system does not say.
    pub born: Option<i128>,
}

fn nanos(t: std::io::Result<std::time::SystemTime>) -> Option<i128> {
    let t = t.ok()?;
    Some(match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i128,
        Err(e) => -(e.duration().as_nanos() as i128),
    })
}

impl Seen {
    pub fn of(meta: &std::fs::Metadata) -> Seen {
        #[cfg(unix)]
        let (dev, ino) = {
            use std::os::unix::fs::MetadataExt as _;
            (meta.dev(), meta.ino())
        };
        #[cfg(not(unix))]
        let (dev, ino) = (0, 0);
        Seen {
            key: FileKey {
                dev,
                ino,
                born: nanos(meta.created()),
            },
            size: meta.len(),
            modified: nanos(meta.modified()).unwrap_or(0),
        }
    }
}

/// A spool directory source.
pub struct Spool {
    opts: SpoolOptions,
    intake: Intake,
    report: SourceReport,
    /// What the previous look saw at each name.
    looked: HashMap<PathBuf, Seen>,
}

/// What reading one file gave (its events went to the store as they were read).
enum Reading {
    /// Every line valid: this many events were handed to the store, and the stream finished.
    Complete(u64),
    /// At least one bad line: each of them (the stream was aborted).
    Refused(Vec<Refusal>),
    /// Its events committed, with the store's counts.
    Committed(Streamed),
    /// Gone before it could be opened.
    Vanished,
    /// Not the file listed, or changed while read: left for a later look.
    Changed,
}

/// What a move found.
enum Moved {
    Done,
    Vanished,
    /// The name holds another file now, or the same one changed since it was read.
    Replaced,
}

impl Spool {
    /// Checks the directory exists and creates `done/` and `failed/` (0700) in it.
    pub fn new(opts: SpoolOptions, intake: Intake) -> Result<Spool, SpoolError> {
        let dir_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| SpoolError::Dir { path, source }
        };
        if !std::fs::metadata(&opts.dir).map_err(dir_err(&opts.dir))?.is_dir() {
            return Err(SpoolError::Dir {
                path: opts.dir.clone(),
                source: std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory"),
            });
        }
        for sub in ["done", "failed"] {
            let d = opts.dir.join(sub);
            private_dir(&d).map_err(dir_err(&d))?;
        }
        let report = SourceReport {
            name: opts.name.clone(),
            ..Default::default()
        };
        Ok(Spool {
            opts,
            intake,
            report,
            looked: HashMap::new(),
        })
    }

    /// Takes every waiting file that is complete, in name order. Stops at a store failure (the
    /// file stays).
    pub async fn poll_once(&mut self) -> Result<Poll, SpoolError> {
        let mut poll = Poll::default();
        let previous = std::mem::take(&mut self.looked);
        for (path, seen) in waiting(&self.opts.dir)? {
            let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
            self.looked.insert(path.clone(), seen);
            // Unchanged for a whole poll interval, or not yet: a writer still at work (having
            // renamed too early, or writing in place) would be read in part.
            if previous.get(&path) != Some(&seen) {
                poll.left.push(name);
                continue;
            }
            let cx = self.intake.context(&self.opts.name);
            let (p, n) = (path.clone(), name.clone());
            // Reading is blocking file I/O, and a file may be large: off the async workers, its
            // events streamed into one store transaction a chunk at a time (all or nothing, and
            // never the whole file in memory).
            let (reading, answer) = self
                .intake
                .commit_stream(&self.opts.name, move |writer| {
                    read_file(&p, &n, seen, &cx, Some(writer))
                })
                .await;
            let reading = reading.map_err(|e| SpoolError::File {
                path: path.clone(),
                source: std::io::Error::other(e.to_string()),
            })??;
            // An event id reused for another event, or a customer past the flood limit, refuses
            // the file like a bad line (it would be refused again at every look).
            let reading = match (reading, answer) {
                (Reading::Complete(sent), Ok(Some(done))) => {
                    debug_assert_eq!(sent, done.stored() + done.duplicates, "every event read was answered");
                    Reading::Committed(done)
                }
                (
                    Reading::Complete(_),
                    Err(e @ (StoreError::EventIdConflict { .. } | StoreError::CustomerFlood { .. })),
                ) => {
                    let cx = self.intake.context(&self.opts.name);
                    let (p, n) = (path.clone(), name.clone());
                    let refusal = tokio::task::spawn_blocking(move || refusal_for(&p, &n, seen.key, &cx, &e))
                        .await
                        .map_err(|e| SpoolError::File {
                            path: path.clone(),
                            source: std::io::Error::other(e.to_string()),
                        })?;
                    Reading::Refused(vec![refusal])
                }
                (Reading::Complete(_), _) => {
                    poll.store_failed = true;
                    return Ok(poll);
                }
                (other, _) => other,
            };
            match reading {
                Reading::Vanished => {
                    tracing::warn!(source = %self.opts.name, file = %name, "spool file vanished before it was read; nothing of it was taken");
                    poll.vanished.push(name);
                }
                Reading::Changed => {
                    tracing::info!(source = %self.opts.name, file = %name, "spool file changed while it was read; left for a later look");
                    // Forget it, so it must be seen unchanged twice again.
                    self.looked.remove(&path);
                    poll.left.push(name);
                }
                Reading::Refused(refusals) => {
                    self.report.refused += refusals.len() as u64;
                    for r in &refusals {
                        self.intake.refused(&self.opts.name, r);
                    }
                    let text: String = refusals.iter().map(|r| format!("{r}\n")).collect();
                    let failed = self.opts.dir.join("failed");
                    let target = free_name(&failed, &name);
                    let errors = failed.join(format!(
                        "{}.errors",
                        target.file_name().unwrap_or_default().to_string_lossy()
                    ));
                    // The .errors file is written only for the file that was read.
                    match still_there(&path, &seen)? {
                        Moved::Done => {}
                        other => {
                            self.not_moved(other, &name, &path, &mut poll);
                            continue;
                        }
                    }
                    write_private(&errors, text.as_bytes()).map_err(|source| SpoolError::File {
                        path: errors.clone(),
                        source,
                    })?;
                    match move_if_same(&path, &seen, &target)? {
                        Moved::Done => {
                            tracing::warn!(source = %self.opts.name, file = %name, refused = refusals.len(),
                                "spool file refused whole; moved to failed/ with its .errors");
                            poll.failed.push(name);
                        }
                        other => {
                            let _ = std::fs::remove_file(&errors);
                            self.not_moved(other, &name, &path, &mut poll);
                        }
                    }
                }
                Reading::Complete(_) => unreachable!("answered by the store above"),
                Reading::Committed(done) => {
                    let (stored, dup) = (done.stored(), done.duplicates);
                    self.report.stored += stored;
                    self.report.duplicates += dup;
                    let target = free_name(&self.opts.dir.join("done"), &name);
                    match move_if_same(&path, &seen, &target)? {
                        Moved::Done => {
                            tracing::info!(source = %self.opts.name, file = %name, stored, duplicates = dup,
                                    "spool file committed; moved to done/");
                            poll.done.push(name);
                        }
                        other => {
                            tracing::info!(source = %self.opts.name, file = %name, stored, duplicates = dup,
                                    "spool file committed");
                            self.not_moved(other, &name, &path, &mut poll);
                        }
                    }
                }
            }
        }
        Ok(poll)
    }

    /// Logs and notes a file that was read but not moved.
    fn not_moved(&mut self, why: Moved, name: &str, path: &Path, poll: &mut Poll) {
        match why {
            Moved::Vanished => {
                tracing::warn!(source = %self.opts.name, file = %name,
                    "spool file vanished before it could be moved; what was read of it stays as logged above");
                poll.vanished.push(name.to_string());
            }
            Moved::Replaced | Moved::Done => {
                tracing::warn!(source = %self.opts.name, file = %name,
                    "spool file was replaced or changed after it was read; left in place for a later look (lines already stored come back as duplicates)");
                self.looked.remove(path);
                poll.left.push(name.to_string());
            }
        }
    }

    /// Polls until `shutdown`; a file being committed when it comes is finished first.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<SourceReport, SpoolError> {
        loop {
            self.poll_once().await?;
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(self.report),
                _ = tokio::time::sleep(self.opts.poll_interval) => {}
            }
        }
    }
}

impl Source for Spool {
    fn name(&self) -> &str {
        &self.opts.name
    }
    fn run(self: Box<Self>, shutdown: CancellationToken) -> BoxFuture<'static, Result<SourceReport, SourceError>> {
        Box::pin(async move { Ok(Spool::run(*self, shutdown).await?) })
    }
}

/// The files to look at now, in name order, with what each name holds.
fn waiting(dir: &Path) -> Result<Vec<(PathBuf, Seen)>, SpoolError> {
    let err = |source| SpoolError::Dir {
        path: dir.to_path_buf(),
        source,
    };
    let mut out = vec![];
    for entry in std::fs::read_dir(dir).map_err(err)? {
        let entry = entry.map_err(err)?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        // A dot prefix is a writer's name for a file in progress (docs/sync.md).
        let wanted = !name.starts_with('.') && (name.ends_with(".jsonl") || name.ends_with(".csv"));
        if !wanted {
            continue;
        }
        match entry.metadata() {
            Ok(m) if m.is_file() => out.push((entry.path(), Seen::of(&m))),
            Ok(_) => {}
            // Taken away since the listing: nothing to look at.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(e)),
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Whether `path` still holds the file `seen`, unchanged.
fn still_there(path: &Path, seen: &Seen) -> Result<Moved, SpoolError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if Seen::of(&m) == *seen => Ok(Moved::Done),
        Ok(_) => Ok(Moved::Replaced),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Moved::Vanished),
        Err(source) => Err(SpoolError::File {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Moves `path` to `target` if it still holds the file that was read, unchanged. (A rename over
/// the name in the instant between the check and the move cannot be excluded with rename(2);
/// the window is a few microseconds instead of a whole commit.)
fn move_if_same(path: &Path, seen: &Seen, target: &Path) -> Result<Moved, SpoolError> {
    match still_there(path, seen)? {
        Moved::Done => {}
        other => return Ok(other),
    }
    match std::fs::rename(path, target) {
        Ok(()) => Ok(Moved::Done),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Moved::Vanished),
        Err(source) => Err(SpoolError::File {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// How many events go to the store at a time while a file streams in: what bounds the memory
/// a file takes, whatever its length (docs/benchmarks.md, "Spool memory").
const CHUNK: usize = 2_000;

/// Opens and reads one listed file, checking it is the file listed and unchanged throughout,
/// and hands its events to `writer` as they are read: finished when every line was valid and
/// the file unchanged, aborted otherwise.
fn read_file(
    path: &Path,
    name: &str,
    listed: Seen,
    cx: &Context,
    writer: Option<StreamWriter>,
) -> Result<Reading, SpoolError> {
    read_file_then(path, name, listed, cx, writer, || {})
}

/// [`read_file`], running `after_read` between reading the lines and the last check (the tests'
/// stand-in for a writer still at work).
fn read_file_then(
    path: &Path,
    name: &str,
    listed: Seen,
    cx: &Context,
    mut writer: Option<StreamWriter>,
    after_read: impl FnOnce(),
) -> Result<Reading, SpoolError> {
    let file_err = |source| SpoolError::File {
        path: path.to_path_buf(),
        source,
    };
    // Every early return drops `writer`: the stream is aborted, nothing stored.
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Reading::Vanished),
        Err(e) => return Err(file_err(e)),
    };
    if Seen::of(&file.metadata().map_err(file_err)?) != listed {
        return Ok(Reading::Changed);
    }
    let mut reader = std::io::BufReader::with_capacity(64 * 1024, &file);
    let mut chunk = Vec::with_capacity(CHUNK);
    let mut sent = 0u64;
    let mut refusals = vec![];
    let bytes = visit_lines(name, &listed.key, &mut reader, cx, |_, parsed| {
        match parsed {
            Ok(e) if refusals.is_empty() => {
                chunk.push(e);
                if chunk.len() == CHUNK {
                    sent += chunk.len() as u64;
                    let events = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK));
                    // The store stopped taking them: its answer says why; the lines are still
                    // read, for their refusals.
                    if writer.as_mut().is_some_and(|w| !w.send(events)) {
                        writer = None;
                    }
                }
            }
            Ok(_) => {}
            Err(r) => {
                // The first bad line ends the stream at once (the store rolls back and moves on);
                // the rest of the file is read only for its refusals.
                writer = None;
                chunk = vec![];
                refusals.push(r);
            }
        }
        std::ops::ControlFlow::Continue(())
    })
    .map_err(file_err)?;
    after_read();
    // The size and time after reading, from the open file: a writer still at work shows here.
    if Seen::of(&file.metadata().map_err(file_err)?) != listed || bytes != listed.size {
        return Ok(Reading::Changed);
    }
    if !refusals.is_empty() {
        return Ok(Reading::Refused(refusals));
    }
    sent += chunk.len() as u64;
    if let Some(mut w) = writer
        && (chunk.is_empty() || w.send(chunk))
    {
        w.finish();
    }
    Ok(Reading::Complete(sent))
}

/// The refusal of the event the store refused (`e` names its index among the file's events),
/// found by reading the file again up to it: the file's events are not kept in memory.
fn refusal_for(path: &Path, name: &str, key: FileKey, cx: &Context, e: &StoreError) -> Refusal {
    let index = match e {
        StoreError::EventIdConflict { index, .. } | StoreError::CustomerFlood { index, .. } => *index,
        _ => 0,
    };
    let mut found: Option<(u64, NewEvent)> = None;
    let mut at = 0usize;
    if let Ok(file) = std::fs::File::open(path) {
        let mut reader = std::io::BufReader::new(file);
        let _ = visit_lines(name, &key, &mut reader, cx, |line, parsed| {
            if let Ok(ev) = parsed {
                if at == index {
                    found = Some((line, ev));
                    return std::ops::ControlFlow::Break(());
                }
                at += 1;
            }
            std::ops::ControlFlow::Continue(())
        });
    }
    // The file is unchanged since it was read (checked then); should it have changed since, the
    // refusal still names the event's position.
    let (line, event_id, customer) = match found {
        Some((line, ev)) => (line, ev.event_id, ev.customer_id),
        None => (index as u64 + 1, String::new(), String::new()),
    };
    let at = Location::Line {
        file: name.to_string(),
        line,
    };
    match e {
        StoreError::CustomerFlood { max, .. } => super::flood_refusal(at, &event_id, &customer, *max),
        StoreError::EventIdConflict { seq, .. } => Refusal {
            at,
            event_id: (!event_id.is_empty()).then(|| crate::ids::scrub(&event_id)),
            field: "event_id",
            rule: "event_id.conflict".into(),
            message: format!(
                "this event id is stored already, as outbox entry {seq}, for a different event; an event id names one event for good"
            ),
        },
        other => Refusal {
            at,
            event_id: None,
            field: "event",
            rule: "event.store".into(),
            message: other.to_string(),
        },
    }
}

/// `dir/name`, or `dir/name.1`, `.2`… when taken (a name the core system reuses keeps both).
fn free_name(dir: &Path, name: &str) -> PathBuf {
    let first = dir.join(name);
    if !first.exists() {
        return first;
    }
    (1..)
        .map(|n| dir.join(format!("{name}.{n}")))
        .find(|p| !p.exists())
        .expect("some suffix is free")
}

fn private_dir(d: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(d)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        o.mode(0o600);
    }
    let mut f = o.open(path)?;
    #[cfg(unix)]
    {
        // The mode above is reduced by the umask, never widened; set it exactly.
        use std::os::unix::fs::PermissionsExt as _;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    f.write_all(data)?;
    f.sync_all()
}

/// The id of line `line_no` (bytes `line`) of the file `name` with identity `key`, for an event
/// that brings none (see the module documentation for why these parts and no others):
/// `spool:<16 hex of the file's identity>:<line>:<8 hex of the line's text>`. The file's part
/// comes first so a file's ids share a prefix, and the store's unique index on event ids takes a
/// file's events in clustered order rather than scattered over the whole index.
pub fn line_id(name: &str, key: &FileKey, line_no: u64, line: &[u8]) -> String {
    id_in(&file_id(name, key), line_no, line)
}

/// [`line_id`] with the file's part already computed. The line's part is FNV-1a (32 bits): it
/// only tells an edited line from the one committed at the same number of the same file, so it
/// needs to be stable, not collision-proof, and a SHA-256 per line cost more than the rest of
/// the parse in a debug build.
fn id_in(file: &str, line_no: u64, line: &[u8]) -> String {
    let text = line
        .iter()
        .fold(0x811c_9dc5_u32, |h, b| (h ^ u32::from(*b)).wrapping_mul(0x0100_0193));
    format!("spool:{file}:{line_no}:{text:08x}")
}

/// 16 hex digits of a SHA-256 of the file's identity.
fn file_id(name: &str, key: &FileKey) -> String {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([0]);
    h.update(key.dev.to_be_bytes());
    h.update(key.ino.to_be_bytes());
    match key.born {
        Some(b) => h.update(b.to_be_bytes()),
        None => h.update([0xff]),
    }
    hex::encode(&h.finalize()[..8])
}

/// A file's events, or every refusal in it.
pub type Parsed = Result<Vec<NewEvent>, Vec<Refusal>>;

/// Reads a file's lines from `reader`: every event, or every refusal; and how many bytes were
/// read. Lines are read one at a time (a line longer than the grammar's cap is refused without
/// being held whole); once a line is refused, the events are no longer kept.
pub fn parse_lines(
    name: &str,
    key: &FileKey,
    reader: &mut impl BufRead,
    cx: &Context,
) -> std::io::Result<(Parsed, u64)> {
    let mut events = vec![];
    let mut refusals = vec![];
    let bytes = visit_lines(name, key, reader, cx, |_, parsed| {
        match parsed {
            Ok(e) if refusals.is_empty() => events.push(e),
            Ok(_) => {}
            Err(r) => {
                events = vec![];
                refusals.push(r);
            }
        }
        std::ops::ControlFlow::Continue(())
    })?;
    let parsed = if refusals.is_empty() { Ok(events) } else { Err(refusals) };
    Ok((parsed, bytes))
}

/// Reads a file's lines from `reader` one at a time, handing `each` every non-blank line's
/// number and event (or refusal) until it breaks; answers how many bytes were read.
fn visit_lines(
    name: &str,
    key: &FileKey,
    reader: &mut impl BufRead,
    cx: &Context,
    mut each: impl FnMut(u64, Result<NewEvent, Refusal>) -> std::ops::ControlFlow<()>,
) -> std::io::Result<u64> {
    let csv = name.ends_with(".csv");
    let file = file_id(name, key);
    let mut buf = Vec::new();
    let mut bytes = 0u64;
    // The longest line kept: the cap, its line end, and one more byte to tell "too long".
    let cap = grammar::MAX_LINE_BYTES as u64 + 3;
    for line_no in 1u64.. {
        buf.clear();
        let n = std::io::Read::take(&mut *reader, cap).read_until(b'\n', &mut buf)?;
        if n == 0 {
            break;
        }
        bytes += n as u64;
        let ended = buf.last() == Some(&b'\n');
        if !ended && n as u64 == cap {
            // Too long: skip the rest of the line; the length rule below refuses it.
            bytes += reader.skip_until(b'\n')? as u64;
        }
        let raw = buf.strip_suffix(b"\n").unwrap_or(&buf);
        let raw = if line_no == 1 {
            raw.strip_prefix(BOM).unwrap_or(raw)
        } else {
            raw
        };
        let (line, _) = grammar::strip_cr(raw);
        if grammar::is_blank(line) {
            continue;
        }
        let at = Location::Line {
            file: name.to_string(),
            line: line_no,
        };
        let own_id = id_in(&file, line_no, line);
        let parsed = if let Err(e) = grammar::check_length(line) {
            Err(Broken::new("event", e.code(), e.to_string()).at(at, None))
        } else if let Ok(text) = std::str::from_utf8(line) {
            if csv {
                csv_line(text, own_id, cx).map_err(|b| b.at(at, None))
            } else {
                json_line(text, own_id, at, cx)
            }
        } else {
            Err(Broken::new("event", "encoding", "the line is not UTF-8").at(at, None))
        };
        if each(line_no, parsed).is_break() {
            break;
        }
    }
    Ok(bytes)
}

/// Every event of a file held in memory, or every refusal in it (as [`parse_lines`]).
pub fn parse_file(name: &str, key: &FileKey, bytes: &[u8], cx: &Context) -> Parsed {
    let mut reader = bytes;
    parse_lines(name, key, &mut reader, cx)
        .expect("reading from memory does not fail")
        .0
}

/// A JSONL line; the deterministic id fills a missing `event_id`. A repeated key is refused.
fn json_line(text: &str, own_id: String, at: Location, cx: &Context) -> Result<NewEvent, Refusal> {
    let decoded = event::decode(text).map_err(|e| event::json_syntax(&e).at(at.clone(), None))?;
    let mut v = decoded.value;
    if let Some((_, key)) = decoded.duplicates.first() {
        return Err(event::duplicate_key(key).at(at, v.get("event_id").and_then(Value::as_str)));
    }
    if let Value::Object(map) = &mut v
        && map.get("event_id").is_none_or(Value::is_null)
    {
        map.insert("event_id".into(), Value::String(own_id));
    }
    event::from_json(&v, at, cx)
}

/// `add,ID[,DATE]` or `remove,ID`.
fn csv_line(text: &str, own_id: String, cx: &Context) -> Result<NewEvent, Broken> {
    let mut values = vec![];
    for f in grammar::fields(text.as_bytes(), b',') {
        let f = f.map_err(|e| Broken::new("event", e.code(), e.to_string()))?;
        values.push(String::from_utf8_lossy(&f.value()).into_owned());
    }
    if values.len() > 3 {
        return Err(Broken::new(
            "event",
            "too_many_fields",
            "expected add,ID[,DATE] or remove,ID",
        ));
    }
    let op = event::parse_op(values[0].trim())?;
    let id = values
        .get(1)
        .ok_or_else(|| Broken::new("customer_id", "missing", "no customer identifier after the operation"))?;
    let customer = event::check_customer(id.trim(), &cx.policy)?;
    let start = match values.get(2).map(|s| s.trim()).filter(|s| !s.is_empty()) {
        None => None,
        Some(d) => Some(
            grammar::parse_date(d.as_bytes())
                .ok_or_else(|| Broken::new("start_date", "format", "start date must be YYYY-MM-DD or DD.MM.YYYY"))?,
        ),
    };
    let start_date = event::check_start(op, start, cx.today)?;
    Ok(NewEvent {
        event_id: own_id,
        op,
        customer_id: customer.as_str().to_string(),
        start_date,
        occurred_at: cx.received_at,
        source: cx.source.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Operation;
    use crate::sync::source::testkit::{TestOutbox, person};

    fn spool(dir: &Path) -> (Spool, TestOutbox) {
        let mem = TestOutbox::default();
        let s = Spool::new(SpoolOptions::new(dir, "core"), mem.intake()).unwrap();
        (s, mem)
    }

    /// Two looks: the first sees the files, the second takes those unchanged since.
    async fn settle(s: &mut Spool) -> Poll {
        s.poll_once().await.unwrap();
        s.poll_once().await.unwrap()
    }

    #[cfg(unix)]
    fn mode(p: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    /// Appends `text` to `path` (a writer still at work).
    fn append(path: &Path, text: &str) {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    #[tokio::test]
    async fn good_files_are_committed_in_name_order_and_moved_to_done() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, mem) = spool(dir.path());
        std::fs::write(
            dir.path().join("b.csv"),
            format!("add,{},01.05.2020\r\n\nremove,{}\n", person(0), person(1)),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("a.jsonl"),
            format!(
                "{{\"op\":\"add\",\"customer_id\":\"{}\",\"event_id\":\"e-1\"}}\n",
                person(2)
            ),
        )
        .unwrap();
        // Not taken: a writer's temporary dotfile, another extension.
        std::fs::write(dir.path().join(".c.csv"), format!("add,{}\n", person(3))).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "x").unwrap();

        let first = s.poll_once().await.unwrap();
        assert_eq!(first.left, vec!["a.jsonl", "b.csv"], "seen once: not yet taken");
        assert!(mem.stored().is_empty());
        let poll = s.poll_once().await.unwrap();
        assert_eq!(poll.done, vec!["a.jsonl", "b.csv"]);
        let stored = mem.stored();
        let ids: Vec<_> = stored.iter().map(|e| e.customer_id.clone()).collect();
        assert_eq!(ids, vec![person(2), person(0), person(1)]);
        assert_eq!(stored[0].event_id, "e-1");
        let parts = |id: &str| id.split(':').map(str::to_string).collect::<Vec<_>>();
        let (one, three) = (parts(&stored[1].event_id), parts(&stored[2].event_id));
        assert_eq!(
            (one.len(), one[0].as_str(), one[2].as_str()),
            (4, "spool", "1"),
            "{one:?}"
        );
        assert_eq!((one[1].len(), one[3].len()), (16, 8), "{one:?}");
        assert_eq!(three[2], "3", "line numbers count blank lines");
        assert_eq!(one[1], three[1], "one file, one prefix");
        assert_eq!(stored[1].start_date, chrono::NaiveDate::from_ymd_opt(2020, 5, 1));
        assert_eq!(stored[2].op, Operation::Remove);
        assert!(stored.iter().all(|e| e.source == "core"));
        assert!(dir.path().join("done/a.jsonl").exists() && dir.path().join("done/b.csv").exists());
        assert!(dir.path().join(".c.csv").exists() && dir.path().join("notes.txt").exists());
        #[cfg(unix)]
        {
            assert_eq!(mode(&dir.path().join("done")), 0o700);
            assert_eq!(mode(&dir.path().join("failed")), 0o700);
        }
        assert_eq!((s.report.stored, s.report.duplicates), (3, 0));
    }

    #[tokio::test]
    async fn a_file_with_one_bad_line_stores_nothing_and_names_each_bad_line() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, mem) = spool(dir.path());
        let p = person(0);
        let bad_check = format!("{}{}", &p[..10], (p.as_bytes()[10] - b'0' + 1) % 10);
        std::fs::write(
            dir.path().join("x.csv"),
            format!(
                "add,{}\nadd,{bad_check}\nremove,{},2020-01-01\nupsert,{}\n",
                person(1),
                person(2),
                person(3)
            ),
        )
        .unwrap();
        let poll = settle(&mut s).await;
        assert_eq!(poll.failed, vec!["x.csv"]);
        assert!(mem.stored().is_empty(), "all or nothing");
        assert!(dir.path().join("failed/x.csv").exists());
        let errors_path = dir.path().join("failed/x.csv.errors");
        let errors = std::fs::read_to_string(&errors_path).unwrap();
        let lines: Vec<_> = errors.lines().collect();
        assert_eq!(lines.len(), 3, "{errors}");
        assert!(
            lines[0].starts_with("x.csv:2: customer_id: customer identifier *********"),
            "{errors}"
        );
        assert!(lines[0].ends_with("(rule customer_id.second_check_digit)"), "{errors}");
        assert!(lines[1].starts_with("x.csv:3: start_date:"), "{errors}");
        assert!(
            lines[2].starts_with("x.csv:4: op:") && lines[2].ends_with("(rule op.unknown)"),
            "{errors}"
        );
        for n in 0..4 {
            assert!(!errors.contains(&person(n)), "{errors}");
        }
        assert!(!errors.contains(&bad_check));
        #[cfg(unix)]
        assert_eq!(mode(&errors_path), 0o600);
        assert_eq!(s.report.refused, 3);
    }

    #[tokio::test]
    async fn a_file_committed_but_not_moved_before_a_crash_is_not_stored_twice() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, mem) = spool(dir.path());
        let body = format!(
            "{{\"op\":\"add\",\"customer_id\":\"{}\"}}\n{{\"op\":\"remove\",\"customer_id\":\"{}\"}}\n",
            person(0),
            person(1)
        );
        std::fs::write(dir.path().join("f.jsonl"), &body).unwrap();
        settle(&mut s).await;
        assert_eq!(mem.stored().len(), 2);
        // The crash: the commit happened, the move did not. The very same file (a second link
        // to it: same name, inode, birth) is in the spool after the restart, and a new source
        // instance (new process) takes it again.
        std::fs::hard_link(dir.path().join("done/f.jsonl"), dir.path().join("f.jsonl")).unwrap();
        let mut restarted = Spool::new(SpoolOptions::new(dir.path(), "core"), mem.intake()).unwrap();
        let poll = settle(&mut restarted).await;
        assert_eq!(poll.done, vec!["f.jsonl"]);
        assert_eq!(mem.stored().len(), 2, "the second commit found only duplicates");
        assert_eq!((restarted.report.stored, restarted.report.duplicates), (0, 2));
        assert!(
            dir.path().join("done/f.jsonl.1").exists(),
            "the earlier done file is kept"
        );
    }

    /// Issue 19: ids from the content alone made the third file a duplicate of the first, and
    /// the customer ended removed although the bank's last word was an add.
    #[tokio::test]
    async fn a_later_file_with_the_same_bytes_is_new_events() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, mem) = spool(dir.path());
        let x = person(0);
        for body in [format!("add,{x}\n"), format!("remove,{x}\n"), format!("add,{x}\n")] {
            // The same name each time too: a core system may reuse names.
            std::fs::write(dir.path().join("x.csv"), body).unwrap();
            assert_eq!(settle(&mut s).await.done, vec!["x.csv"]);
        }
        let ops: Vec<_> = mem.stored().iter().map(|e| e.op).collect();
        assert_eq!(ops, vec![Operation::Add, Operation::Remove, Operation::Add]);
        assert_eq!((s.report.stored, s.report.duplicates), (3, 0));
    }

    /// Issue 19: a file renamed in before its writer finished was taken in part, and the rest of
    /// it was written into `done/`, never read.
    #[tokio::test]
    async fn a_file_still_growing_is_left_until_it_stays_unchanged_for_a_look() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, mem) = spool(dir.path());
        let path = dir.path().join("big.csv");
        let lines: Vec<String> = (0..10).map(|n| format!("add,{}\n", person(n))).collect();
        std::fs::write(&path, lines[..5].concat()).unwrap();
        assert_eq!(s.poll_once().await.unwrap().left, vec!["big.csv"]);
        append(&path, &lines[5..].concat());
        let poll = s.poll_once().await.unwrap();
        assert_eq!(poll.left, vec!["big.csv"], "changed since the last look");
        assert!(mem.stored().is_empty());
        assert_eq!(s.poll_once().await.unwrap().done, vec!["big.csv"]);
        assert_eq!(mem.stored().len(), 10, "all ten lines");
    }

    #[test]
    fn a_file_that_changes_while_read_or_since_listed_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.csv");
        std::fs::write(&path, format!("add,{}\n", person(0))).unwrap();
        let listed = Seen::of(&std::fs::metadata(&path).unwrap());
        let cx = Context::now(crate::ids::IdPolicy::test(), "core");
        // A writer appends while the agent reads.
        let reading = read_file_then(&path, "w.csv", listed, &cx, None, || {
            append(&path, &format!("remove,{}\n", person(1)))
        })
        .unwrap();
        assert!(matches!(reading, Reading::Changed));
        // Listed before the append: no longer the file that was listed.
        assert!(matches!(
            read_file(&path, "w.csv", listed, &cx, None).unwrap(),
            Reading::Changed
        ));
        let now = Seen::of(&std::fs::metadata(&path).unwrap());
        match read_file(&path, "w.csv", now, &cx, None).unwrap() {
            Reading::Complete(n) => assert_eq!(n, 2),
            _ => panic!("an unchanged file is read"),
        }
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(
            read_file(&path, "w.csv", now, &cx, None).unwrap(),
            Reading::Vanished
        ));
    }

    /// Issue 19: a file renamed over the name being committed was moved to `done/` unread.
    #[tokio::test]
    async fn a_file_renamed_over_the_name_during_the_commit_is_left_for_the_next_look() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, mem) = spool(dir.path());
        let path = dir.path().join("a.csv");
        std::fs::write(&path, format!("add,{}\n", person(0))).unwrap();
        let newer = dir.path().join(".a.csv.tmp");
        std::fs::write(&newer, format!("remove,{}\n", person(1))).unwrap();
        let (from, to) = (newer.clone(), path.clone());
        mem.during_next_commit(move || std::fs::rename(from, to).unwrap());
        let poll = settle(&mut s).await;
        assert!(poll.done.is_empty(), "{poll:?}");
        assert_eq!(poll.left, vec!["a.csv"]);
        assert!(
            !dir.path().join("done/a.csv").exists(),
            "the newer file was not moved unread"
        );
        assert_eq!(mem.stored().len(), 1);
        // The newer file is taken in its turn.
        assert_eq!(settle(&mut s).await.done, vec!["a.csv"]);
        let ops: Vec<_> = mem.stored().iter().map(|e| (e.op, e.customer_id.clone())).collect();
        assert_eq!(ops, vec![(Operation::Add, person(0)), (Operation::Remove, person(1))]);
    }

    /// Issue 19: a taken file that vanished before its move stopped the whole agent.
    #[tokio::test]
    async fn a_file_that_vanishes_before_its_move_is_logged_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, mem) = spool(dir.path());
        let path = dir.path().join("a.csv");
        std::fs::write(&path, format!("add,{}\n", person(0))).unwrap();
        std::fs::write(dir.path().join("b.csv"), format!("add,{}\n", person(1))).unwrap();
        let gone = path.clone();
        mem.during_next_commit(move || std::fs::remove_file(gone).unwrap());
        let poll = settle(&mut s).await;
        assert_eq!(poll.vanished, vec!["a.csv"]);
        assert_eq!(poll.done, vec!["b.csv"], "the poll goes on with the next file");
        assert_eq!(mem.stored().len(), 2, "what was read of it was committed");
    }

    /// Issue 19: the CSV reader took a byte order mark for part of the operation.
    #[tokio::test]
    async fn a_byte_order_mark_is_skipped_in_csv_and_jsonl() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, mem) = spool(dir.path());
        std::fs::write(dir.path().join("a.csv"), format!("\u{feff}add,{}\r\n", person(0))).unwrap();
        std::fs::write(
            dir.path().join("b.jsonl"),
            format!("\u{feff}{{\"op\":\"add\",\"customer_id\":\"{}\"}}\n", person(1)),
        )
        .unwrap();
        let poll = settle(&mut s).await;
        assert_eq!(poll.done, vec!["a.csv", "b.jsonl"], "{poll:?}");
        assert_eq!(mem.stored().len(), 2);
        // Only before the first line: elsewhere it is a character of the line, refused.
        std::fs::write(
            dir.path().join("c.csv"),
            format!("add,{}\n\u{feff}add,{}\n", person(2), person(3)),
        )
        .unwrap();
        assert_eq!(settle(&mut s).await.failed, vec!["c.csv"]);
    }

    /// Issue 19: the per-customer flood guard holds for the spool. A file with an event that
    /// would give its customer one unfinished event too many stores nothing and goes to
    /// `failed/` with its `.errors` naming the line, the rule and the customer masked.
    #[tokio::test]
    async fn a_file_putting_a_customer_past_the_limit_fails_whole() {
        let dir = tempfile::tempdir().unwrap();
        let mem = TestOutbox::default();
        let mut s = Spool::new(SpoolOptions::new(dir.path(), "core"), mem.intake().with_flood_limit(2)).unwrap();
        let (a, b) = (person(0), person(1));
        std::fs::write(
            dir.path().join("1.csv"),
            format!(
                "add,{a}
remove,{a}
"
            ),
        )
        .unwrap();
        assert_eq!(settle(&mut s).await.done, vec!["1.csv"]);
        std::fs::write(
            dir.path().join("2.csv"),
            format!(
                "add,{b}

add,{a}
"
            ),
        )
        .unwrap();
        let poll = settle(&mut s).await;
        assert_eq!(poll.failed, vec!["2.csv"], "{poll:?}");
        assert_eq!(mem.stored().len(), 2, "nothing of the refused file");
        let errors = std::fs::read_to_string(dir.path().join("failed/2.csv.errors")).unwrap();
        assert!(
            errors.starts_with(&format!(
                "2.csv:3: customer_id: customer {} has 2 unfinished",
                crate::ids::mask(&a)
            )),
            "{errors}"
        );
        assert!(
            errors.contains("(rule customer_id.max_events_per_customer)"),
            "{errors}"
        );
        assert!(!errors.contains(&a), "{errors}");
    }

    /// A file longer than one chunk is still all or nothing: a bad last line rolls back the
    /// chunks already in the store; an event id reused in a later chunk is named by its line
    /// (found by reading the file again: its events are not kept).
    #[tokio::test]
    async fn a_file_streamed_in_chunks_is_still_taken_all_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, mem) = spool(dir.path());
        let n = 2 * CHUNK + 5;
        let people = crate::ids::synthetic::tenor_born(7, n + CHUNK + 2);
        let lines: String = people[..n].iter().map(|p| format!("add,{p}\n")).collect();
        std::fs::write(dir.path().join("1.csv"), format!("{lines}upsert,{}\n", person(0))).unwrap();
        assert_eq!(settle(&mut s).await.failed, vec!["1.csv"]);
        assert!(
            mem.stored().is_empty(),
            "the chunks sent before the bad line were rolled back"
        );
        std::fs::write(dir.path().join("2.csv"), &lines).unwrap();
        assert_eq!(settle(&mut s).await.done, vec!["2.csv"]);
        assert_eq!(mem.stored().len(), n);
        let jsonl = |i: usize, op: &str| {
            format!(
                "{{\"op\":\"{op}\",\"customer_id\":\"{}\",\"event_id\":\"j-{i}\"}}\n",
                people[i]
            )
        };
        std::fs::write(dir.path().join("3.jsonl"), jsonl(7, "add")).unwrap();
        assert_eq!(settle(&mut s).await.done, vec!["3.jsonl"]);
        // Line CHUNK + 3 (a blank line before it) reuses j-7 for a remove.
        let mut text: String = (n..n + CHUNK + 1).map(|i| jsonl(i, "add")).collect();
        text.push('\n');
        text.push_str(&jsonl(7, "remove"));
        std::fs::write(dir.path().join("4.jsonl"), text).unwrap();
        assert_eq!(settle(&mut s).await.failed, vec!["4.jsonl"]);
        assert_eq!(mem.stored().len(), n + 1);
        let errors = std::fs::read_to_string(dir.path().join("failed/4.jsonl.errors")).unwrap();
        assert!(
            errors.starts_with(&format!("4.jsonl:{}: event_id:", CHUNK + 3)),
            "{errors}"
        );
        assert!(errors.contains("(rule event_id.conflict)"), "{errors}");
    }

    #[tokio::test]
    async fn a_jsonl_line_naming_a_key_twice_fails_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, mem) = spool(dir.path());
        std::fs::write(
            dir.path().join("d.jsonl"),
            format!(
                "{{\"op\":\"add\",\"customer_id\":\"{}\",\"op\":\"remove\"}}\n",
                person(0)
            ),
        )
        .unwrap();
        assert_eq!(settle(&mut s).await.failed, vec!["d.jsonl"]);
        assert!(mem.stored().is_empty());
        let errors = std::fs::read_to_string(dir.path().join("failed/d.jsonl.errors")).unwrap();
        assert!(
            errors.starts_with("d.jsonl:1: event: key \"op\"") && errors.contains("(rule event.duplicate_key)"),
            "{errors}"
        );
    }

    #[test]
    fn lines_are_read_one_at_a_time_and_an_overlong_one_is_refused_alone() {
        let key = FileKey {
            dev: 1,
            ino: 2,
            born: None,
        };
        let cx = Context::now(crate::ids::IdPolicy::test(), "core");
        let long = "x".repeat(grammar::MAX_LINE_BYTES * 3);
        let text = format!("add,{}\n{long}\nremove,{}", person(0), person(1));
        // A reader handing out a few bytes at a time, as a slow disk or pipe might.
        let mut reader = std::io::BufReader::with_capacity(7, text.as_bytes());
        let (parsed, bytes) = parse_lines("l.csv", &key, &mut reader, &cx).unwrap();
        assert_eq!(bytes, text.len() as u64, "every byte counted, the long line's too");
        let refusals = parsed.unwrap_err();
        assert_eq!(refusals.len(), 1);
        assert_eq!(
            refusals[0].to_string(),
            "l.csv:2: event: line longer than 65536 bytes (rule event.line_too_long)"
        );
        let ok = format!("add,{}\nremove,{}", person(0), person(1));
        let events = parse_file("l.csv", &key, ok.as_bytes(), &cx).unwrap();
        assert_eq!(events.len(), 2, "a last line without a line end counts");
        // Ids: the same file and line give the same id; another file (inode) or line does not.
        assert_eq!(
            events[0].event_id,
            line_id("l.csv", &key, 1, format!("add,{}", person(0)).as_bytes())
        );
        let other = FileKey { ino: 3, ..key };
        assert_ne!(
            parse_file("l.csv", &other, ok.as_bytes(), &cx).unwrap()[0].event_id,
            events[0].event_id
        );
    }

    #[tokio::test]
    async fn a_store_failure_leaves_the_file_for_the_next_poll() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, mem) = spool(dir.path());
        std::fs::write(dir.path().join("a.csv"), format!("add,{}\n", person(0))).unwrap();
        mem.set_failing(true);
        let poll = settle(&mut s).await;
        assert!(poll.store_failed && poll.done.is_empty());
        assert!(dir.path().join("a.csv").exists());
        assert!(!s.intake.health.unready().is_empty(), "not ready while the store fails");
        mem.set_failing(false);
        assert_eq!(s.poll_once().await.unwrap().done, vec!["a.csv"]);
        assert_eq!(mem.stored().len(), 1);
        assert!(s.intake.health.unready().is_empty());
    }

    #[tokio::test]
    async fn run_polls_until_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let mem = TestOutbox::default();
        let opts = SpoolOptions {
            poll_interval: Duration::from_millis(5),
            ..SpoolOptions::new(dir.path(), "core")
        };
        let s = Spool::new(opts, mem.intake()).unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(s.run(shutdown.clone()));
        std::fs::write(dir.path().join("late.csv"), format!("add,{}\n", person(0))).unwrap();
        // The store runs on its own thread, so tokio's paused clock cannot stand in here: wait
        // for the condition, bounded.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            if dir.path().join("done/late.csv").exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(mem.stored().len(), 1);
        shutdown.cancel();
        let report = task.await.unwrap().unwrap();
        assert_eq!((report.name.as_str(), report.stored), ("core", 1));
    }
}
