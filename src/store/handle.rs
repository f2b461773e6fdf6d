//! [`OutboxHandle`]: an outbox backend on its own thread behind an async facade, so a durable
//! commit (an fsync under `synchronous=FULL`) never blocks the async runtime.
//!
//! **Group commit.** Enqueue requests that arrive while the thread is busy are taken together and
//! committed in one transaction (one fsync for many events, however many sources and connections
//! sent them). Each caller is answered only after that transaction committed; if it fails, every
//! caller in it gets the error and nothing of theirs is stored (events of one request are never
//! split across transactions). Other operations run one at a time, in arrival order.

use super::outbox::{
    DeadLetter, DeadLetters, Enqueued, LedgerEntry, NewEvent, OutboxBackend, OutboxEvent, OutboxStatus, Recovered,
    Rejection, Seq, Settlement, StoreError,
};
use chrono::{DateTime, Utc};
use std::sync::mpsc;
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

type Job = Box<dyn FnOnce(&mut dyn OutboxBackend) + Send>;
type EnqueueReply = oneshot::Sender<Result<Vec<Enqueued>, StoreError>>;
type SettleReply = oneshot::Sender<Result<(), StoreError>>;

enum Request {
    Enqueue {
        register: String,
        events: Vec<NewEvent>,
        reply: EnqueueReply,
    },
    Settle {
        settlements: Vec<Settlement>,
        reply: SettleReply,
    },
    Other(Job),
}

/// A cloneable async handle to an outbox backend running on its own thread. The thread ends when
/// the last handle is dropped.
#[derive(Clone)]
pub struct OutboxHandle {
    tx: mpsc::Sender<Request>,
}

impl std::fmt::Debug for OutboxHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OutboxHandle")
    }
}

impl OutboxHandle {
    /// Moves `backend` onto a new thread named `kfr-store`.
    pub fn spawn(backend: Box<dyn OutboxBackend>) -> std::io::Result<OutboxHandle> {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("kfr-store".into())
            .spawn(move || serve(backend, rx))?;
        Ok(OutboxHandle { tx })
    }

    /// See [`OutboxBackend::enqueue`]; answered once the group commit holding it is durable.
    pub async fn enqueue(&self, register: String, events: Vec<NewEvent>) -> Result<Vec<Enqueued>, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Enqueue {
                register,
                events,
                reply,
            })
            .map_err(|_| StoreError::Stopped)?;
        rx.await.map_err(|_| StoreError::Stopped)?
    }

    /// Runs `f` on the store thread and returns its result.
    pub async fn call<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut dyn OutboxBackend) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let job: Job = Box::new(move |b| {
            let _ = reply.send(f(b));
        });
        self.tx.send(Request::Other(job)).map_err(|_| StoreError::Stopped)?;
        rx.await.map_err(|_| StoreError::Stopped)?
    }

    pub async fn recover(&self, register: String) -> Result<Recovered, StoreError> {
        self.call(move |b| b.recover(&register)).await
    }
    pub async fn claim_ready(
        &self,
        register: String,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<OutboxEvent>, StoreError> {
        self.call(move |b| b.claim_ready(&register, now, limit)).await
    }
    pub async fn begin_batch(&self, seqs: Vec<Seq>, batch_correlation_id: Uuid) -> Result<(), StoreError> {
        self.call(move |b| b.begin_batch(&seqs, batch_correlation_id)).await
    }
    pub async fn batch_accepted(&self, batch_correlation_id: Uuid, at: DateTime<Utc>) -> Result<(), StoreError> {
        self.call(move |b| b.batch_accepted(batch_correlation_id, at)).await
    }
    pub async fn batch_unknown(&self, batch_correlation_id: Uuid) -> Result<(), StoreError> {
        self.call(move |b| b.batch_unknown(batch_correlation_id)).await
    }
    pub async fn accepted(&self, register: String) -> Result<Vec<OutboxEvent>, StoreError> {
        self.call(move |b| b.accepted(&register)).await
    }
    /// See [`OutboxBackend::settle`]; settlements of concurrent callers share one transaction.
    pub async fn settle(&self, settlements: Vec<Settlement>) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Settle { settlements, reply })
            .map_err(|_| StoreError::Stopped)?;
        rx.await.map_err(|_| StoreError::Stopped)?
    }
    pub async fn retry_later(&self, seq: Seq, at: DateTime<Utc>, error: String) -> Result<(), StoreError> {
        self.call(move |b| b.retry_later(seq, at, &error)).await
    }
    pub async fn release(&self, seqs: Vec<Seq>) -> Result<(), StoreError> {
        self.call(move |b| b.release(&seqs)).await
    }
    pub async fn dead_letter(&self, seq: Seq, rejection: Rejection, at: DateTime<Utc>) -> Result<(), StoreError> {
        self.call(move |b| b.dead_letter(seq, &rejection, at)).await
    }
    pub async fn dead_letters(&self, register: Option<String>) -> Result<Vec<DeadLetter>, StoreError> {
        self.call(move |b| b.dead_letters(register.as_deref())).await
    }
    pub async fn retry_dead(&self, which: DeadLetters) -> Result<u64, StoreError> {
        self.call(move |b| b.retry_dead(which)).await
    }
    pub async fn drop_dead(&self, which: DeadLetters, at: DateTime<Utc>) -> Result<u64, StoreError> {
        self.call(move |b| b.drop_dead(which, at)).await
    }
    pub async fn status(&self, register: Option<String>) -> Result<OutboxStatus, StoreError> {
        self.call(move |b| b.status(register.as_deref())).await
    }
    pub async fn purge(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        self.call(move |b| b.purge(before)).await
    }
    pub async fn ledger(&self, register: String) -> Result<Vec<LedgerEntry>, StoreError> {
        self.call(move |b| b.ledger(&register)).await
    }
    pub async fn barrier(&self, register: String) -> Result<Option<i64>, StoreError> {
        self.call(move |b| b.barrier(&register)).await
    }
}

/// The store thread: takes requests until every handle is gone.
fn serve(mut backend: Box<dyn OutboxBackend>, rx: mpsc::Receiver<Request>) {
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
                reply,
            } => {
                // Take every enqueue already waiting for the same register into this commit; stop
                // at the first request of another kind (it keeps its place in line).
                let mut group = vec![(events, reply)];
                while group.len() < MAX_GROUP {
                    match rx.try_recv() {
                        Ok(Request::Enqueue {
                            register: r,
                            events,
                            reply,
                        }) if r == register => group.push((events, reply)),
                        Ok(other) => {
                            carried = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                commit_group(backend.as_mut(), &register, group);
            }
        }
    }
}

/// One transaction for every caller's settlements. If it fails, each caller's settlements are
/// tried alone, so one caller's bad seq never fails another's good ones.
fn settle_group(backend: &mut dyn OutboxBackend, group: Vec<(Vec<Settlement>, SettleReply)>) {
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
fn commit_group(backend: &mut dyn OutboxBackend, register: &str, group: Vec<(Vec<NewEvent>, EnqueueReply)>) {
    let sizes: Vec<usize> = group.iter().map(|(e, _)| e.len()).collect();
    let (all, replies): (Vec<Vec<NewEvent>>, Vec<_>) = group.into_iter().unzip();
    let all: Vec<NewEvent> = all.into_iter().flatten().collect();
    match backend.enqueue(register, &all) {
        Ok(results) => {
            let mut rest = results.into_iter();
            for (n, reply) in sizes.into_iter().zip(replies) {
                let _ = reply.send(Ok(rest.by_ref().take(n).collect()));
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
