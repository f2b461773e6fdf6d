//! The stdin source: NDJSON, one event per line, for a core system that pipes events into the
//! agent (docs/sync.md, "Sources").
//!
//! Lines are committed in small groups: whatever lines are already buffered (up to
//! [`MAX_GROUP`]) go in one commit, so a fast producer gets group commit and a slow one gets each
//! line committed as it arrives. A refused line is logged (masked, with its line number) and
//! counted, and the rest go on — unlike HTTP and spool, there is no sender to answer and nothing
//! to resend whole. End of input ends this source, not the agent. If the store fails, the group
//! is retried (backing off up to 30 s) until it commits or shutdown comes; events without an
//! `event_id` get a new UUID, so a producer that may replay lines should send its own ids.
//!
//! Standard input is read by a thread of its own ([`ThreadReader`]), not tokio's stdin: see
//! there for why (a producer that keeps the pipe open must not keep the agent from exiting).

use super::{Intake, Source, SourceError, SourceReport, counts};
use crate::store::NewEvent;
use crate::sync::event::{self, Location};
use futures::future::BoxFuture;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt as _, AsyncRead, BufReader};
use tokio_util::sync::CancellationToken;

/// Most lines in one commit.
pub const MAX_GROUP: usize = 64;

/// NDJSON events from any reader (standard input in the agent; [`Stdin::stdin`]).
pub struct LineSource<R> {
    name: String,
    reader: BufReader<R>,
    intake: Intake,
}

/// The agent's stdin source.
pub type Stdin = LineSource<ThreadReader>;

impl Stdin {
    /// Reads the process's standard input; events carry source `stdin`.
    pub fn stdin(intake: Intake) -> std::io::Result<Stdin> {
        Ok(LineSource::new("stdin", ThreadReader::spawn(std::io::stdin())?, intake))
    }
}

/// A blocking reader read by a plain thread of its own, its bytes handed over in chunks.
///
/// Why not `tokio::io::stdin`: tokio reads standard input with a blocking read on its blocking
/// pool, which cannot be cancelled, and the runtime waits for its blocking tasks when it shuts
/// down; with a producer that kept the pipe open and wrote nothing, the agent printed "stopped"
/// and never exited (issue 19). A thread outside the runtime holds nothing up: the process exits
/// with it still waiting in read(2). Nothing is lost by that: lines not yet read were never
/// acknowledged (this source has no one to acknowledge to), and what was read and committed is
/// in the store.
pub struct ThreadReader {
    rx: tokio::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    pos: usize,
}

impl ThreadReader {
    /// Starts the thread reading `input` until its end or an error.
    pub fn spawn(mut input: impl std::io::Read + Send + 'static) -> std::io::Result<ThreadReader> {
        // A few chunks ahead at most: the thread waits while the source is busy committing.
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        std::thread::Builder::new().name("kfr-stdin".into()).spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let sent = match input.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => tx.blocking_send(Ok(buf[..n].to_vec())),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e));
                        return;
                    }
                };
                // The source is gone (shutdown): stop reading.
                if sent.is_err() {
                    return;
                }
            }
        })?;
        Ok(ThreadReader {
            rx,
            chunk: vec![],
            pos: 0,
        })
    }
}

impl AsyncRead for ThreadReader {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        let this = self.get_mut();
        loop {
            if this.pos < this.chunk.len() {
                let n = buf.remaining().min(this.chunk.len() - this.pos);
                buf.put_slice(&this.chunk[this.pos..this.pos + n]);
                this.pos += n;
                return Poll::Ready(Ok(()));
            }
            match this.rx.poll_recv(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(chunk))) => {
                    this.chunk = chunk;
                    this.pos = 0;
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                // The thread ended: end of input.
                Poll::Ready(None) => return Poll::Ready(Ok(())),
            }
        }
    }
}

impl<R: AsyncRead + Unpin + Send + 'static> LineSource<R> {
    pub fn new(name: impl Into<String>, reader: R, intake: Intake) -> Self {
        LineSource {
            name: name.into(),
            reader: BufReader::new(reader),
            intake,
        }
    }

    /// Reads and commits until end of input or `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<SourceReport, SourceError> {
        let mut report = SourceReport {
            name: self.name.clone(),
            ..Default::default()
        };
        let mut line_no = 0u64;
        let mut buf = Vec::new();
        loop {
            let mut group: Vec<NewEvent> = vec![];
            let mut lines: Vec<u64> = vec![];
            let mut eof = false;
            // The first line waits for input; the next ones only while already buffered.
            loop {
                buf.clear();
                let n = tokio::select! {
                    _ = shutdown.cancelled() => { eof = true; 0 }
                    r = self.reader.read_until(b'\n', &mut buf) => r.map_err(SourceError::Stdin)?,
                };
                if n == 0 {
                    eof = true;
                    break;
                }
                line_no += 1;
                let at = Location::Line {
                    file: self.name.clone(),
                    line: line_no,
                };
                let line = buf.strip_suffix(b"\n").unwrap_or(&buf);
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                if !line.iter().all(u8::is_ascii_whitespace) {
                    let cx = self.intake.context(&self.name);
                    let parsed = match std::str::from_utf8(line) {
                        Ok(text) => event::from_json_text(text, at, &cx),
                        Err(_) => Err(event::Broken::new("event", "encoding", "the line is not UTF-8").at(at, None)),
                    };
                    match parsed {
                        Ok(e) => {
                            group.push(e);
                            lines.push(line_no);
                        }
                        Err(r) => {
                            report.refused += 1;
                            self.intake.refused(&self.name, &r);
                        }
                    }
                }
                if group.len() >= MAX_GROUP || !self.reader.buffer().contains(&b'\n') {
                    break;
                }
            }
            if !group.is_empty() {
                match commit(&self.intake, &self.name, group, lines, &shutdown).await {
                    Some((stored, dup, refused)) => {
                        report.stored += stored;
                        report.duplicates += dup;
                        report.refused += refused;
                    }
                    None => return Ok(report),
                }
            }
            if eof {
                tracing::info!(source = %self.name, lines = line_no, "end of input: source finished");
                return Ok(report);
            }
        }
    }
}

/// Commits one group (`lines`: each event's line number), retrying a store failure until it
/// works; `None` if shutdown came first (the group is then lost to this process, and logged as
/// such). Answers (stored, duplicates, refused). A free function: borrowing the whole source
/// across the await would need the reader to be `Sync`.
async fn commit(
    intake: &Intake,
    name: &str,
    mut group: Vec<NewEvent>,
    mut lines: Vec<u64>,
    shutdown: &CancellationToken,
) -> Option<(u64, u64, u64)> {
    let mut wait = Duration::from_millis(500);
    let mut refused = 0;
    loop {
        if group.is_empty() {
            return Some((0, 0, refused));
        }
        match intake.commit(name, group.clone()).await {
            Ok(results) => {
                let (stored, dup) = counts(&results);
                return Some((stored, dup, refused));
            }
            // Not the store's fault, and it would be refused again: the lines are dropped
            // (logged by the intake, counted as refused).
            Err(crate::store::StoreError::EventIdConflict { .. }) => return Some((0, 0, refused)),
            // Each line is its own request: the line that would flood its customer is refused
            // (logged masked, counted), the group's other lines are committed without it.
            Err(crate::store::StoreError::CustomerFlood { index, max }) if index < group.len() => {
                let ev = group.remove(index);
                let line = lines.remove(index);
                let at = Location::Line {
                    file: name.to_string(),
                    line,
                };
                intake.refused(name, &super::flood_refusal(at, &ev.event_id, &ev.customer_id, max));
                refused += 1;
            }
            Err(_) => {
                tokio::select! {
                    _ = shutdown.cancelled() => {
                        tracing::error!(source = %name, events = group.len(),
                            "shutdown while the store fails: these events were read but not stored");
                        return None;
                    }
                    _ = tokio::time::sleep(wait) => {}
                }
                wait = (wait * 2).min(Duration::from_secs(30));
            }
        }
    }
}

impl<R: AsyncRead + Unpin + Send + 'static> Source for LineSource<R> {
    fn name(&self) -> &str {
        &self.name
    }
    fn run(self: Box<Self>, shutdown: CancellationToken) -> BoxFuture<'static, Result<SourceReport, SourceError>> {
        Box::pin(LineSource::run(*self, shutdown))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::source::testkit::{TestOutbox, person};

    /// A `tracing` writer into a shared buffer, to read what was logged.
    #[derive(Clone, Default)]
    struct Logs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Logs {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn refused_lines_are_counted_and_the_rest_are_committed_until_eof() {
        let logs = Logs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let mem = TestOutbox::default();
        let input = format!(
            "{{\"op\":\"add\",\"customer_id\":\"{}\",\"event_id\":\"s-1\"}}\n\
             \n\
             {{\"op\":\"add\",\"customer_id\":\"{}0\"}}\n\
             not json {}\r\n\
             {{\"op\":\"remove\",\"customer_id\":\"{}\",\"event_id\":\"s-2\"}}\n\
             {{\"op\":\"add\",\"customer_id\":\"{}\",\"event_id\":\"s-1\"}}",
            person(0),
            &person(1)[..10],
            person(2),
            person(3),
            person(0),
        );
        let source = LineSource::new("pipe", std::io::Cursor::new(input.into_bytes()), mem.intake());
        let report = source.run(CancellationToken::new()).await.unwrap();
        assert_eq!((report.stored, report.duplicates, report.refused), (2, 1, 2));
        let ids: Vec<_> = mem.stored().into_iter().map(|e| e.event_id).collect();
        assert_eq!(ids, vec!["s-1", "s-2"]);
        // Each refused line is logged with its line number, and no identifier in full.
        let logged = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
        assert!(logged.contains("pipe:3: customer_id:"), "{logged}");
        assert!(logged.contains("pipe:4: event: not valid JSON"), "{logged}");
        for n in 0..4 {
            assert!(!logged.contains(&person(n)), "{logged}");
        }
        assert!(!logged.contains(&person(1)[..10]), "{logged}");
    }

    /// Issue 19: the per-customer flood guard holds for stdin. Each line is its own request: the
    /// line that would give its customer one unfinished event too many is refused (logged with
    /// its line number, the rule and the customer masked), the lines around it are stored.
    #[tokio::test]
    async fn a_line_past_the_per_customer_limit_is_refused_alone() {
        let logs = Logs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let mem = TestOutbox::default();
        let line = |op: &str, n: usize, id: &str| {
            format!(
                "{{\"op\":\"{op}\",\"customer_id\":\"{}\",\"event_id\":\"{id}\"}}\n",
                person(n)
            )
        };
        let input = [
            line("add", 0, "x-1"),
            line("remove", 0, "x-2"),
            line("add", 0, "x-3"),
            line("add", 1, "y-1"),
        ]
        .concat();
        let intake = mem.intake().with_flood_limit(2);
        let source = LineSource::new("pipe", std::io::Cursor::new(input.into_bytes()), intake);
        let report = source.run(CancellationToken::new()).await.unwrap();
        assert_eq!((report.stored, report.duplicates, report.refused), (3, 0, 1));
        let ids: Vec<_> = mem.stored().into_iter().map(|e| e.event_id).collect();
        assert_eq!(ids, vec!["x-1", "x-2", "y-1"]);
        let logged = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
        assert!(logged.contains("pipe:3: customer_id: customer"), "{logged}");
        assert!(
            logged.contains("(rule customer_id.max_events_per_customer)"),
            "{logged}"
        );
        assert!(logged.contains(&crate::ids::mask(&person(0))), "{logged}");
        assert!(!logged.contains(&person(0)), "{logged}");
    }

    #[tokio::test]
    async fn shutdown_ends_a_source_waiting_for_input() {
        let mem = TestOutbox::default();
        // A pipe whose writer stays open: the source waits for the next line.
        let (_writer, reader) = tokio::io::duplex(64);
        let source = LineSource::new("pipe", reader, mem.intake());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(source.run(shutdown.clone()));
        shutdown.cancel();
        let report = task.await.unwrap().unwrap();
        assert_eq!(report.stored, 0);
    }

    /// A reader that blocks until its sender is dropped, as a pipe whose writer stays open.
    struct Held(std::sync::mpsc::Receiver<()>);

    impl std::io::Read for Held {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            let _ = self.0.recv();
            Ok(0)
        }
    }

    #[test]
    fn a_reader_blocked_in_read_does_not_keep_the_runtime_from_shutting_down() {
        let (_open, rx) = std::sync::mpsc::channel::<()>();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let report = rt.block_on(async {
            let mem = TestOutbox::default();
            let source = LineSource::new("stdin", ThreadReader::spawn(Held(rx)).unwrap(), mem.intake());
            let shutdown = CancellationToken::new();
            let task = tokio::spawn(source.run(shutdown.clone()));
            shutdown.cancel();
            task.await.unwrap().unwrap()
        });
        assert_eq!(report.stored, 0);
        // With tokio's stdin the runtime's drop waited for the blocked read, for ever; a bound
        // here makes that a failure rather than a hung test.
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            drop(rt);
            let _ = done_tx.send(());
        });
        assert!(
            done_rx.recv_timeout(std::time::Duration::from_secs(20)).is_ok(),
            "the runtime shut down"
        );
    }

    #[tokio::test]
    async fn the_thread_reader_hands_over_every_byte_and_the_end() {
        let mem = TestOutbox::default();
        let input = format!(
            "{{\"op\":\"add\",\"customer_id\":\"{}\"}}\n{{\"op\":\"remove\",\"customer_id\":\"{}\"}}",
            person(0),
            person(1)
        );
        let reader = ThreadReader::spawn(std::io::Cursor::new(input.into_bytes())).unwrap();
        let report = LineSource::new("pipe", reader, mem.intake())
            .run(CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(report.stored, 2, "both lines, the last without a line end");
    }
}
