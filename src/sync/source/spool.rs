//! The spool directory source: the core system moves files in atomically; the agent takes them in
//! name order, each file all or nothing (docs/sync.md, "Sources").
//!
//! - `*.jsonl`: one JSON event per line ([`crate::sync::event`]).
//! - `*.csv`: `add,ID[,DATE]` or `remove,ID` per line, read with the shared field grammar of
//!   [`crate::input::grammar`] (quoting, and the load's two date forms `YYYY-MM-DD` / `DD.MM.YYYY`).
//! - Anything else, and dotfiles (a writer's temporary name), is left alone; blank lines are
//!   layout.
//!
//! A file whose every line is valid is committed in one transaction, then moved to `done/`. A
//! file with any bad line stores nothing and is moved to `failed/` beside a `NAME.errors` file
//! naming each bad line (`file:line: field: message (rule …)`, identifiers masked). If the store
//! fails, the file stays where it is and is tried again at the next poll.
//!
//! Crash safety: an event without an `event_id` gets `spool:<first 16 hex of the file's
//! SHA-256>:<line>`, so a file committed but not yet moved when the agent died is committed again
//! after the restart as duplicates only. Directories this source creates are `0700`, files `0600`
//! (they name customers), whatever the umask.

use super::{Intake, Source, SourceError, SourceReport, counts};
use crate::input::grammar;
use crate::store::NewEvent;
use crate::sync::event::{self, Broken, Context, Location, Refusal};
use futures::future::BoxFuture;
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the directory is looked at by default.
pub const DEFAULT_POLL: Duration = Duration::from_millis(500);

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
    /// The store refused a commit: the file stays for the next poll.
    pub store_failed: bool,
}

/// A spool directory source.
pub struct Spool {
    opts: SpoolOptions,
    intake: Intake,
    report: SourceReport,
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
        Ok(Spool { opts, intake, report })
    }

    /// Takes every waiting file, in name order. Stops at a store failure (the file stays).
    pub async fn poll_once(&mut self) -> Result<Poll, SpoolError> {
        let mut poll = Poll::default();
        for path in waiting(&self.opts.dir)? {
            let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
            let bytes = match tokio::fs::read(&path).await {
                Ok(b) => b,
                // Taken away between listing and reading: nothing to do.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => return Err(SpoolError::File { path, source }),
            };
            let cx = self.intake.context(&self.opts.name);
            match parse_file(&name, &bytes, &cx) {
                Err(refusals) => {
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
                    write_private(&errors, text.as_bytes()).map_err(|source| SpoolError::File {
                        path: errors.clone(),
                        source,
                    })?;
                    std::fs::rename(&path, &target).map_err(|source| SpoolError::File {
                        path: path.clone(),
                        source,
                    })?;
                    tracing::warn!(source = %self.opts.name, file = %name, refused = refusals.len(),
                        "spool file refused whole; moved to failed/ with its .errors");
                    poll.failed.push(name);
                }
                Ok(events) => match self.intake.commit(&self.opts.name, events).await {
                    Ok(results) => {
                        let (stored, dup) = counts(&results);
                        self.report.stored += stored;
                        self.report.duplicates += dup;
                        let target = free_name(&self.opts.dir.join("done"), &name);
                        std::fs::rename(&path, &target).map_err(|source| SpoolError::File {
                            path: path.clone(),
                            source,
                        })?;
                        tracing::info!(source = %self.opts.name, file = %name, stored, duplicates = dup,
                            "spool file committed; moved to done/");
                        poll.done.push(name);
                    }
                    Err(_) => {
                        poll.store_failed = true;
                        return Ok(poll);
                    }
                },
            }
        }
        Ok(poll)
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

/// The files to take now, in name order.
fn waiting(dir: &Path) -> Result<Vec<PathBuf>, SpoolError> {
    let err = |source| SpoolError::Dir {
        path: dir.to_path_buf(),
        source,
    };
    let mut out = vec![];
    for entry in std::fs::read_dir(dir).map_err(err)? {
        let entry = entry.map_err(err)?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let wanted = !name.starts_with('.') && (name.ends_with(".jsonl") || name.ends_with(".csv"));
        if wanted && entry.file_type().map_err(err)?.is_file() {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
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

/// Every event of a file, or every refusal in it.
pub fn parse_file(name: &str, bytes: &[u8], cx: &Context) -> Result<Vec<NewEvent>, Vec<Refusal>> {
    let digest = hex::encode(Sha256::digest(bytes));
    let short = &digest[..16];
    let csv = name.ends_with(".csv");
    let mut events = vec![];
    let mut refusals = vec![];
    for (n, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let line_no = n as u64 + 1;
        let (line, _) = grammar::strip_cr(raw);
        if grammar::is_blank(line) {
            continue;
        }
        let at = Location::Line {
            file: name.to_string(),
            line: line_no,
        };
        let own_id = format!("spool:{short}:{line_no}");
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
        match parsed {
            Ok(e) => events.push(e),
            Err(r) => refusals.push(r),
        }
    }
    if refusals.is_empty() { Ok(events) } else { Err(refusals) }
}

/// A JSONL line; the deterministic id fills a missing `event_id`.
fn json_line(text: &str, own_id: String, at: Location, cx: &Context) -> Result<NewEvent, Refusal> {
    let mut v: Value = serde_json::from_str(text).map_err(|e| event::json_syntax(&e).at(at.clone(), None))?;
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

    #[cfg(unix)]
    fn mode(p: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
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

        let poll = s.poll_once().await.unwrap();
        assert_eq!(poll.done, vec!["a.jsonl", "b.csv"]);
        let stored = mem.stored();
        let ids: Vec<_> = stored.iter().map(|e| e.customer_id.clone()).collect();
        assert_eq!(ids, vec![person(2), person(0), person(1)]);
        assert_eq!(stored[0].event_id, "e-1");
        assert!(stored[1].event_id.starts_with("spool:") && stored[1].event_id.ends_with(":1"));
        assert!(stored[2].event_id.ends_with(":3"), "line numbers count blank lines");
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
        let poll = s.poll_once().await.unwrap();
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
        s.poll_once().await.unwrap();
        assert_eq!(mem.stored().len(), 2);
        // The crash: the commit happened, the move did not. After the restart the same bytes are
        // back in the spool; a new source instance (new process) takes them again.
        std::fs::write(dir.path().join("f.jsonl"), &body).unwrap();
        let mut restarted = Spool::new(SpoolOptions::new(dir.path(), "core"), mem.intake()).unwrap();
        let poll = restarted.poll_once().await.unwrap();
        assert_eq!(poll.done, vec!["f.jsonl"]);
        assert_eq!(mem.stored().len(), 2, "the second commit found only duplicates");
        assert_eq!((restarted.report.stored, restarted.report.duplicates), (0, 2));
        assert!(
            dir.path().join("done/f.jsonl.1").exists(),
            "the earlier done file is kept"
        );
    }

    #[tokio::test]
    async fn a_store_failure_leaves_the_file_for_the_next_poll() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, mem) = spool(dir.path());
        std::fs::write(dir.path().join("a.csv"), format!("add,{}\n", person(0))).unwrap();
        mem.set_failing(true);
        let poll = s.poll_once().await.unwrap();
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
