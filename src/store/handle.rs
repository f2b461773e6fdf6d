//! [`Store`]: a backend on its own thread behind an async facade, so a durable commit (an fsync
//! under `synchronous=FULL`) never blocks the async runtime, and every caller (agent, load,
//! commands) shares one interface.
//!
//! **Group commit.** Enqueue requests that arrive while the thread is busy are taken together and
//! committed in one transaction (one fsync for many events, however many sources and connections
//! sent them). Each caller is answered only after that transaction committed; if it fails, every
//! caller in it gets the error and nothing of theirs is stored (events of one request are never
//! split across transactions). Other operations run one at a time, in arrival order.

use super::backend::Backend;
use super::error::StoreError;
use super::types::*;
use chrono::{DateTime, NaiveDate, Utc};
use std::collections::HashSet;
use std::sync::{Arc, mpsc};
use tokio::sync::oneshot;
use uuid::Uuid;

/// Most requests taken into one group commit (bounds a transaction's size and latency).
const MAX_GROUP: usize = 256;

/// How long a settlement may wait for others to share its commit, and how many end the wait
/// early. Settlements come from many requests finishing close together; a commit (a WAL write
/// and an fsync) per few of them was the largest single cost of a delivered event
/// (docs/benchmarks.md, "Sync agent"). A request of another kind ends the wait at once.
const SETTLE_WAIT: std::time::Duration = std::time::Duration::from_millis(2);
const SETTLE_ENOUGH: usize = 64;

type Job = Box<dyn FnOnce(&mut dyn Backend) + Send>;
type EnqueueReply = oneshot::Sender<Result<Vec<Enqueued>, StoreError>>;
type SettleReply = oneshot::Sender<Result<(), StoreError>>;

enum Request {
    Enqueue {
        register: String,
        events: Vec<NewEvent>,
        max_unfinished: Option<u64>,
        now: DateTime<Utc>,
        reply: EnqueueReply,
    },
    Settle {
        settlements: Vec<Settlement>,
        reply: SettleReply,
    },
    Other(Job),
}

/// The state store as every caller sees it: a cloneable async handle to a backend running on its
/// own thread. The thread ends when the last handle is dropped (and with it any lease or writer
/// lock the backend held).
#[derive(Clone)]
pub struct Store {
    tx: mpsc::Sender<Request>,
    describe: Arc<str>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.describe)
    }
}

/// Typed wrappers: each runs one backend call on the store thread.
macro_rules! calls {
    ($( $(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty => |$b:ident| $body:expr; )*) => {
        $(
            $(#[$doc])*
            pub async fn $name(&self, $($arg: $ty),*) -> Result<$ret, StoreError> {
                self.call(move |$b| $body).await
            }
        )*
    };
}

impl Store {
    /// Opens (creating when missing) the store at `location` and starts its thread.
    pub fn open(location: &Location) -> Result<Store, StoreError> {
        match location {
            Location::Sqlite(path) => Self::spawn(Box::new(super::sqlite::SqliteBackend::open(path)?)),
            // Opened on the store's own thread: the blocking PostgreSQL client runs a small
            // runtime of its own, which must never start inside the caller's async runtime.
            Location::Postgres(target) => {
                let target = target.clone();
                // `open` gives a backend or an error, never `None`.
                Self::spawn_opening(move || Ok(Some(boxed(super::postgres::PgBackend::open(&target)?))))?
                    .ok_or(StoreError::Stopped)
            }
        }
    }

    /// Opens an existing store to look only: nothing created, migrated, locked or written.
    /// `None` when there is no store at `location` (no file; a database without kfr's schema).
    pub fn open_read_only(location: &Location) -> Result<Option<Store>, StoreError> {
        match location {
            Location::Sqlite(path) if !path.exists() => Ok(None),
            Location::Sqlite(path) => {
                Self::spawn(Box::new(super::sqlite::SqliteBackend::open_read_only(path)?)).map(Some)
            }
            Location::Postgres(target) => {
                let target = target.clone();
                Self::spawn_opening(move || Ok(super::postgres::PgBackend::open_read_only(&target)?.map(boxed)))
            }
        }
    }

    /// Opens the store only if it exists (a command that acts on a store must not create one to
    /// answer): `None` when there is no file, or no kfr schema in the database. An older schema
    /// is migrated, as [`Store::open`] does.
    pub fn open_existing(location: &Location) -> Result<Option<Store>, StoreError> {
        match location {
            Location::Sqlite(path) if !path.exists() => Ok(None),
            Location::Sqlite(_) => Self::open(location).map(Some),
            Location::Postgres(target) => {
                let target = target.clone();
                Self::spawn_opening(move || Ok(super::postgres::PgBackend::open_existing(&target)?.map(boxed)))
            }
        }
    }

    /// Moves `backend` onto a new thread named `kfr-store`.
    pub fn spawn(backend: Box<dyn Backend>) -> Result<Store, StoreError> {
        let describe: Arc<str> = backend.describe().into();
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("kfr-store".into())
            .spawn(move || serve(backend, rx))
            .map_err(|e| StoreError::Other(format!("starting the state store's thread: {e}")))?;
        Ok(Store { tx, describe })
    }

    /// Opens a backend with `open` on a new store thread (so whatever it blocks on stays there)
    /// and serves it; the opening error, if any, is returned here, and `None` (there was no
    /// store to open) ends the thread.
    fn spawn_opening(
        open: impl FnOnce() -> Result<Option<Box<dyn Backend>>, StoreError> + Send + 'static,
    ) -> Result<Option<Store>, StoreError> {
        let (tx, rx) = mpsc::channel::<Request>();
        let (opened_tx, opened_rx) = mpsc::channel::<Result<Option<Arc<str>>, StoreError>>();
        std::thread::Builder::new()
            .name("kfr-store".into())
            .spawn(move || match open() {
                Ok(Some(backend)) => {
                    let _ = opened_tx.send(Ok(Some(backend.describe().into())));
                    serve(backend, rx);
                }
                Ok(None) => {
                    let _ = opened_tx.send(Ok(None));
                }
                Err(e) => {
                    let _ = opened_tx.send(Err(e));
                }
            })
            .map_err(|e| StoreError::Other(format!("starting the state store's thread: {e}")))?;
        let opened = opened_rx.recv().map_err(|_| StoreError::Stopped)??;
        Ok(opened.map(|describe| Store { tx, describe }))
    }

    /// What the store is, for messages.
    pub fn describe(&self) -> &str {
        &self.describe
    }

    /// See [`Outbox::enqueue`] (`max_unfinished`: the per-customer flood guard); answered once
    /// the group commit holding it is durable.
    ///
    /// [`Outbox::enqueue`]: super::backend::Outbox::enqueue
    pub async fn enqueue(
        &self,
        register: String,
        events: Vec<NewEvent>,
        max_unfinished: Option<u64>,
        now: DateTime<Utc>,
    ) -> Result<Vec<Enqueued>, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Enqueue {
                register,
                events,
                max_unfinished,
                now,
                reply,
            })
            .map_err(|_| StoreError::Stopped)?;
        rx.await.map_err(|_| StoreError::Stopped)?
    }

    /// Starts [`Outbox::enqueue_stream`] on the store thread: events go in through the
    /// [`StreamWriter`] (from any thread, a blocking one for file reading: each `send` waits
    /// while the store is [`STREAM_DEPTH`] chunks behind, so memory stays bounded whatever the
    /// stream's length), and the future answers once the stream committed or was aborted. The
    /// stream commits only through [`StreamWriter::finish`]; a writer dropped without it (an early
    /// return, a panic) aborts it.
    ///
    /// [`Outbox::enqueue_stream`]: super::backend::Outbox::enqueue_stream
    pub fn enqueue_stream(
        &self,
        register: String,
        max_unfinished: Option<u64>,
        now: DateTime<Utc>,
    ) -> (
        StreamWriter,
        impl std::future::Future<Output = Result<Option<Streamed>, StoreError>> + Send + 'static,
    ) {
        let (tx, rx) = mpsc::sync_channel::<Piece>(STREAM_DEPTH);
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |b| {
            let mut pieces = Pieces(rx);
            let _ = reply.send(b.enqueue_stream(&register, &mut pieces, max_unfinished, now));
        });
        let sent = self.tx.send(Request::Other(job)).is_ok();
        let answer = async move {
            if !sent {
                return Err(StoreError::Stopped);
            }
            answer.await.map_err(|_| StoreError::Stopped)?
        };
        (StreamWriter { tx: Some(tx) }, answer)
    }

    /// Runs `f` on the store thread and returns its result.
    pub async fn call<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut dyn Backend) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let job: Job = Box::new(move |b| {
            let _ = reply.send(f(b));
        });
        self.tx.send(Request::Other(job)).map_err(|_| StoreError::Stopped)?;
        rx.await.map_err(|_| StoreError::Stopped)?
    }

    /// See [`Outbox::settle`]; settlements of concurrent callers share one transaction.
    pub async fn settle(&self, settlements: Vec<Settlement>) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Settle { settlements, reply })
            .map_err(|_| StoreError::Stopped)?;
        rx.await.map_err(|_| StoreError::Stopped)?
    }

    calls! {
        // ---- outbox
        fn recover(register: String, epoch: i64, now: DateTime<Utc>, hold: std::time::Duration) -> Recovered
            => |b| b.recover(&register, epoch, now, chrono::Duration::from_std(hold).unwrap_or(chrono::Duration::MAX));
        fn claim_ready(register: String, claimer: Claimer, now: DateTime<Utc>, limit: usize) -> Vec<OutboxEvent>
            => |b| b.claim_ready(&register, &claimer, now, limit);
        fn begin_batch(seqs: Vec<Seq>, batch: Uuid) -> () => |b| b.begin_batch(&seqs, batch);
        fn batch_accepted(batch: Uuid, at: DateTime<Utc>) -> () => |b| b.batch_accepted(batch, at);
        fn batch_unknown(batch: Uuid, at: DateTime<Utc>) -> () => |b| b.batch_unknown(batch, at);
        fn accepted(register: String) -> Vec<OutboxEvent> => |b| b.accepted(&register);
        fn retry_later(seq: Seq, at: DateTime<Utc>, error: String, now: DateTime<Utc>) -> ()
            => |b| b.retry_later(seq, at, &error, now);
        fn release(seqs: Vec<Seq>, now: DateTime<Utc>) -> () => |b| b.release(&seqs, now);
        fn dead_letter(seq: Seq, rejection: Rejection, at: DateTime<Utc>) -> () => |b| b.dead_letter(seq, &rejection, at);
        fn dead_letters(register: Option<String>) -> Vec<DeadLetter> => |b| b.dead_letters(register.as_deref());
        fn retry_dead(which: DeadLetters, action: OperatorAction, now: DateTime<Utc>) -> u64 => |b| b.retry_dead(which, &action, now);
        fn drop_dead(which: DeadLetters, action: OperatorAction, now: DateTime<Utc>) -> u64 => |b| b.drop_dead(which, &action, now);
        fn status(register: Option<String>) -> OutboxStatus => |b| b.status(register.as_deref());
        fn purge(before: DateTime<Utc>) -> u64 => |b| b.purge(before);
        fn barrier(register: String) -> Option<i64> => |b| b.barrier(&register);
        fn enqueue_and_claim(register: String, event: NewEvent, correlation_id: Uuid, claimer: Claimer, now: DateTime<Utc>) -> OwnEvent
            => |b| b.enqueue_and_claim(&register, &event, correlation_id, &claimer, now);
        fn finish_claim(seq: Seq, claimer: String, end: ClaimEnd, at: DateTime<Utc>) -> ClaimFinished
            => |b| b.finish_claim(seq, &claimer, &end, at);
        fn claim_head_of(register: String, customer: String, sources: Vec<String>, claimer: Claimer, now: DateTime<Utc>) -> Option<OutboxEvent>
            => |b| b.claim_head_of(&register, &customer, &sources.iter().map(String::as_str).collect::<Vec<_>>(), &claimer, now);
        fn claim_next_of(register: String, sources: Vec<String>, claimer: Claimer, now: DateTime<Utc>) -> Option<OutboxEvent>
            => |b| b.claim_next_of(&register, &sources.iter().map(String::as_str).collect::<Vec<_>>(), &claimer, now);
        fn enqueue_from_cursor(register: String, events: Vec<NewEvent>, source: String, cursor: String, max_unfinished: Option<u64>, now: DateTime<Utc>) -> Vec<Enqueued>
            => |b| b.enqueue_from_cursor(&register, &events, &source, &cursor, max_unfinished, now);
        fn source_cursor(source: String) -> Option<String> => |b| b.source_cursor(&source);
        fn unfinished_of(register: String, sources: Vec<String>) -> Vec<OutboxEvent>
            => |b| b.unfinished_of(&register, &sources.iter().map(String::as_str).collect::<Vec<_>>());
        fn events_of(register: Option<String>, customer: Option<String>) -> Vec<OutboxEvent>
            => |b| b.events_of(register.as_deref(), customer.as_deref());
        // ---- moving to another backend
        fn export_rows(table: TransferTable, offset: u64, limit: usize) -> Vec<serde_json::Value>
            => |b| b.export_rows(table, offset, limit);
        fn import_rows(table: TransferTable, rows: Vec<serde_json::Value>) -> () => |b| b.import_rows(table, &rows);
        fn count_rows(table: TransferTable) -> u64 => |b| b.count_rows(table);
        fn finish_import() -> () => |b| b.finish_import();
        fn discard_import() -> () => |b| b.discard_import();
        // ---- jobs
        fn create_job(job: NewJob, now: DateTime<Utc>) -> i64 => |b| b.create_job(&job, now);
        fn unconfirmed_job() -> Option<JobRecord> => |b| b.unconfirmed_job();
        fn jobs() -> Vec<JobRecord> => |b| b.jobs();
        fn latest_job() -> Option<JobRecord> => |b| b.latest_job();
        fn job(id: i64) -> Option<JobRecord> => |b| b.job(id);
        fn batches(job: i64) -> Vec<BatchRecord> => |b| b.batches(job);
        fn update_batch(job: i64, seq: u32, change: BatchChange, now: DateTime<Utc>) -> () => |b| b.update_batch(job, seq, &change, now);
        fn abandon_job(id: i64, rule: HeldAtAbandon, action: OperatorAction, now: DateTime<Utc>) -> Abandonment
            => |b| b.abandon_job(id, rule, &action, now);
        fn confirm_job_if_complete(job: i64, now: DateTime<Utc>) -> bool => |b| b.confirm_job_if_complete(job, now);
        // ---- ledger
        fn ledger(register: String) -> Vec<LedgerEntry> => |b| b.ledger(&register);
        fn ledger_page(register: String, after: Option<String>, limit: usize) -> Vec<LedgerEntry>
            => |b| b.ledger_page(&register, after.as_deref(), limit);
        fn unfinished_customers(register: String) -> HashSet<String> => |b| b.unfinished_customers(&register);
        fn record_batch(job: i64, seq: u32, correlation_id: Uuid, entries: Vec<(String, Option<NaiveDate>)>, now: DateTime<Utc>) -> ()
            => |b| b.record_batch(job, seq, correlation_id, &entries, now);
        fn ledger_count(batch: Option<(i64, u32)>) -> u64 => |b| b.ledger_count(batch);
        // ---- leases
        fn take_lease(register: String, holder: String, now: DateTime<Utc>, ttl: chrono::Duration) -> Option<Lease>
            => |b| b.take_lease(&register, &holder, now, ttl);
        fn renew_lease(lease: Lease, now: DateTime<Utc>, ttl: chrono::Duration) -> Lease => |b| b.renew_lease(&lease, now, ttl);
        fn release_lease(lease: Lease) -> () => |b| b.release_lease(&lease);
        fn lease_holder(register: String) -> Option<LeaseHolder> => |b| b.lease_holder(&register);
        fn take_writer(holder: String) -> Option<String> => |b| b.take_writer(&holder);
        fn release_writer() -> () => |b| b.release_writer();
        fn writer_holder() -> Option<String> => |b| b.writer_holder();
        // ---- history
        fn history(customer: Option<String>, from: Option<DateTime<Utc>>, to: Option<DateTime<Utc>>) -> Vec<HistoryRecord>
            => |b| b.history(customer.as_deref(), from, to);
        fn purge_history(before: DateTime<Utc>) -> u64 => |b| b.purge_history(before);
        // ---- operations
        fn cancel(which: ToCancel, action: OperatorAction, now: DateTime<Utc>) -> Cancelled => |b| b.cancel(&which, &action, now);
        fn unfinished_count(register: String, customer: String) -> u64 => |b| b.unfinished_count(&register, &customer);
        fn record_heartbeat(beat: Heartbeat) -> () => |b| b.record_heartbeat(&beat);
        fn heartbeats(register: Option<String>) -> Vec<Heartbeat> => |b| b.heartbeats(register.as_deref());
        fn last_delivery(register: String) -> Option<DateTime<Utc>> => |b| b.last_delivery(&register);
        fn schema_version() -> u32 => |b| b.schema_version();
        fn backup_to(dest: std::path::PathBuf) -> BackupInfo => |b| b.backup_to(&dest);
    }
}

/// Chunks a stream's writer may be ahead of the store.
pub const STREAM_DEPTH: usize = 2;

/// What travels from a [`StreamWriter`] to the store thread.
enum Piece {
    Events(Vec<NewEvent>),
    Finish,
}

/// The store thread's view of a stream: the chunks until `Finish`; a writer gone without it
/// is an abort.
struct Pieces(mpsc::Receiver<Piece>);

impl Iterator for Pieces {
    type Item = Chunk;
    fn next(&mut self) -> Option<Chunk> {
        match self.0.recv() {
            Ok(Piece::Events(events)) => Some(Chunk::Events(events)),
            Ok(Piece::Finish) => None,
            Err(_) => Some(Chunk::Abort),
        }
    }
}

/// The sending end of [`Store::enqueue_stream`].
pub struct StreamWriter {
    tx: Option<mpsc::SyncSender<Piece>>,
}

impl StreamWriter {
    /// Hands the next events to the store, waiting while it is behind. `false` when the store
    /// stopped taking them (the stream failed there: its answer says why); the caller stops
    /// sending.
    pub fn send(&mut self, events: Vec<NewEvent>) -> bool {
        match &self.tx {
            Some(tx) => tx.send(Piece::Events(events)).is_ok(),
            None => false,
        }
    }

    /// Ends the stream: the store commits what it was sent.
    pub fn finish(mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Piece::Finish);
        }
    }

    /// Ends the stream storing nothing of it (the same as dropping the writer).
    pub fn abort(self) {}
}

/// The store thread: takes requests until every handle is gone.
/// A backend as the store thread serves it.
fn boxed(backend: impl Backend + 'static) -> Box<dyn Backend> {
    Box::new(backend)
}

fn serve(mut backend: Box<dyn Backend>, rx: mpsc::Receiver<Request>) {
    let mut carried: Option<Request> = None;
    loop {
        let first = match carried.take() {
            Some(r) => r,
            None => match rx.recv() {
                Ok(r) => r,
                Err(_) => return,
            },
        };
        match first {
            Request::Other(job) => job(backend.as_mut()),
            Request::Settle { settlements, reply } => {
                let mut group = vec![(settlements, reply)];
                let mut count = group[0].0.len();
                let until = std::time::Instant::now() + SETTLE_WAIT;
                while group.len() < MAX_GROUP {
                    let next = match rx.try_recv() {
                        Ok(r) => r,
                        Err(mpsc::TryRecvError::Disconnected) => break,
                        Err(mpsc::TryRecvError::Empty) => {
                            let left = until.saturating_duration_since(std::time::Instant::now());
                            if count >= SETTLE_ENOUGH || left.is_zero() {
                                break;
                            }
                            match rx.recv_timeout(left) {
                                Ok(r) => r,
                                Err(_) => break,
                            }
                        }
                    };
                    match next {
                        Request::Settle { settlements, reply } => {
                            count += settlements.len();
                            group.push((settlements, reply));
                        }
                        other => {
                            carried = Some(other);
                            break;
                        }
                    }
                }
                settle_group(backend.as_mut(), group);
            }
            Request::Enqueue {
                register,
                events,
                max_unfinished,
                now,
                reply,
            } => {
                // Take every enqueue already waiting for the same register (and flood limit) into
                // this commit; stop at the first request of another kind (it keeps its place in
                // line).
                let mut group = vec![(events, reply)];
                while group.len() < MAX_GROUP {
                    match rx.try_recv() {
                        Ok(Request::Enqueue {
                            register: r,
                            events,
                            max_unfinished: m,
                            reply,
                            ..
                        }) if r == register && m == max_unfinished => group.push((events, reply)),
                        Ok(other) => {
                            carried = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                commit_group(backend.as_mut(), &register, max_unfinished, now, group);
            }
        }
    }
}

/// One transaction for every caller's settlements. If it fails, each caller's settlements are
/// tried alone, so one caller's bad seq never fails another's good ones.
fn settle_group(backend: &mut dyn Backend, group: Vec<(Vec<Settlement>, SettleReply)>) {
    if group.len() == 1 {
        let (s, reply) = group.into_iter().next().expect("one");
        let _ = reply.send(backend.settle(&s));
        return;
    }
    let all: Vec<Settlement> = group.iter().flat_map(|(s, _)| s.iter().cloned()).collect();
    if backend.settle(&all).is_ok() {
        for (_, reply) in group {
            let _ = reply.send(Ok(()));
        }
        return;
    }
    for (s, reply) in group {
        let _ = reply.send(backend.settle(&s));
    }
}

/// One transaction for the whole group; each caller gets its own slice of the answer.
fn commit_group(
    backend: &mut dyn Backend,
    register: &str,
    max_unfinished: Option<u64>,
    now: DateTime<Utc>,
    group: Vec<(Vec<NewEvent>, EnqueueReply)>,
) {
    let sizes: Vec<usize> = group.iter().map(|(e, _)| e.len()).collect();
    let (all, replies): (Vec<Vec<NewEvent>>, Vec<_>) = group.into_iter().unzip();
    let all: Vec<NewEvent> = all.into_iter().flatten().collect();
    match backend.enqueue(register, &all, max_unfinished, now) {
        Ok(results) => {
            let mut rest = results.into_iter();
            for (n, reply) in sizes.into_iter().zip(replies) {
                let _ = reply.send(Ok(rest.by_ref().take(n).collect()));
            }
        }
        // One caller reused an event id for another event, or pushed a customer past the flood
        // limit: that caller's request alone is refused (in arrival order, the earlier requests
        // keep their places); the others are committed without it, each request whole or not at
        // all.
        Err(StoreError::EventIdConflict { .. } | StoreError::CustomerFlood { .. }) if replies.len() > 1 => {
            let mut at = 0;
            for (n, reply) in sizes.into_iter().zip(replies) {
                let _ = reply.send(backend.enqueue(register, &all[at..at + n], max_unfinished, now));
                at += n;
            }
        }
        Err(e) => {
            // The whole transaction failed: every caller hears it, nothing of theirs is stored.
            let text = e.to_string();
            let mut first = Some(e);
            for reply in replies {
                let err = first.take().unwrap_or_else(|| StoreError::Other(text.clone()));
                let _ = reply.send(Err(err));
            }
        }
    }
}
