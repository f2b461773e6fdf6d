//! Where the agent's events come from: one [`Source`] trait, several sources running at once in
//! one agent (HTTP ingest, spool directories, stdin), all committing through one [`Intake`]
//! (docs/sync.md, "Sources").
//!
//! A source validates at the door ([`crate::sync::event`]), commits through the outbox handle (a
//! durable group commit), and only then tells its sender the events were taken. What it refuses is
//! counted (`kfr_sync_events_refused_total`) and logged with the identifier masked.

pub mod http;
pub mod spool;
pub mod stdin;

use super::event::{Context, Refusal};
use super::health::Health;
use super::metrics;
use crate::ids::IdPolicy;
use crate::store::OutboxHandle;
use crate::store::outbox::{Enqueued, NewEvent, StoreError};
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

/// One source of events. `run` goes on until `shutdown` is cancelled (or, for a finite source
/// such as stdin, its input ends: that ends the source, not the agent).
///
/// Shutdown order for the agent: `Health::set_draining` first (HTTP answers 503 from then on),
/// then cancel the token; each source stops taking new input, finishes what it has read
/// (committing it, or leaving a spool file in place) and returns its counts.
pub trait Source: Send {
    /// The name stored with its events and used as the `source` metric label.
    fn name(&self) -> &str;
    fn run(self: Box<Self>, shutdown: CancellationToken) -> BoxFuture<'static, Result<SourceReport, SourceError>>;
}

/// What a source did before it ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct SourceReport {
    pub name: String,
    /// Events committed (new).
    pub stored: u64,
    /// Events whose id was already stored.
    pub duplicates: u64,
    /// Events refused at the door.
    pub refused: u64,
}

/// Why a source stopped early.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Http(#[from] http::IngestError),
    #[error(transparent)]
    Spool(#[from] spool::SpoolError),
    #[error("reading standard input: {0}")]
    Stdin(#[source] std::io::Error),
}

/// What every source commits through: the outbox, the register the events are for, the shared
/// readiness, and the identifier policy of the environment.
#[derive(Debug, Clone)]
pub struct Intake {
    pub handle: OutboxHandle,
    /// [`crate::store::outbox::Register::key`] of the KFR the agent delivers to.
    pub register: String,
    pub health: Health,
    pub policy: IdPolicy,
    /// Woken after each commit, so the dispatcher looks at once instead of at its next poll.
    pub waker: Option<std::sync::Arc<tokio::sync::Notify>>,
}

impl Intake {
    pub fn new(handle: OutboxHandle, register: String, health: Health, policy: IdPolicy) -> Self {
        Intake {
            handle,
            register,
            health,
            policy,
            waker: None,
        }
    }

    /// Wakes `waker` after every commit (the dispatcher's [`crate::sync::dispatch::Dispatcher::waker`]).
    pub fn with_waker(mut self, waker: std::sync::Arc<tokio::sync::Notify>) -> Self {
        self.waker = Some(waker);
        self
    }

    /// The validation context for events of `source` received now.
    pub fn context(&self, source: &str) -> Context {
        Context::now(self.policy, source)
    }

    /// Commits `events` in one transaction and counts them. A store failure marks the agent not
    /// ready (the store is the agent's promise); a later successful commit clears that, since it
    /// proves the store writable again.
    pub async fn commit(&self, source: &str, events: Vec<NewEvent>) -> Result<Vec<Enqueued>, StoreError> {
        let ops: Vec<_> = events.iter().map(|e| e.op).collect();
        match self.handle.enqueue(self.register.clone(), events).await {
            Ok(results) => {
                self.health.set_store_problem(None);
                if let Some(w) = &self.waker {
                    w.notify_one();
                }
                for (op, r) in ops.into_iter().zip(&results) {
                    match r {
                        Enqueued::Stored { .. } => metrics::event_received(source, op),
                        Enqueued::Duplicate { .. } => metrics::event_duplicate(source),
                    }
                }
                Ok(results)
            }
            Err(e) => {
                tracing::error!(source, error = %e, "the state store did not commit events; nothing of them was stored");
                self.health.set_store_problem(Some(e.to_string()));
                Err(e)
            }
        }
    }

    /// Counts and logs a refusal (the refusal's text is masked).
    pub fn refused(&self, source: &str, r: &Refusal) {
        metrics::event_refused(source, &r.rule);
        tracing::warn!(source, refusal = %r, "event refused");
    }
}

/// Counts of one commit's answer: (stored, duplicates).
pub fn counts(results: &[Enqueued]) -> (u64, u64) {
    let stored = results.iter().filter(|r| matches!(r, Enqueued::Stored { .. })).count() as u64;
    (stored, results.len() as u64 - stored)
}

#[cfg(test)]
pub(crate) mod testkit {
    //! Test doubles shared by the source tests: synthetic identifiers and an in-memory outbox.

    use super::*;
    use crate::store::outbox::{
        DeadLetter, DeadLetters, LedgerEntry, OutboxBackend, OutboxEvent, OutboxStatus, Recovered, Rejection, Seq,
        Settlement,
    };
    use chrono::{DateTime, Utc};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    /// The `n`th synthetic (Tenor, month + 80) fødselsnummer: valid under the test policy,
    /// refused by the prod policy.
    pub fn person(n: usize) -> String {
        const W1: [u32; 9] = [3, 7, 6, 1, 8, 9, 4, 5, 2];
        const W2: [u32; 10] = [5, 4, 3, 2, 7, 6, 5, 4, 3, 2];
        let digits = |s: &str| s.bytes().map(|b| u32::from(b - b'0')).collect::<Vec<_>>();
        (100..999)
            .filter_map(|i| {
                let first9 = format!("158986{i}");
                let k1 = (11 - digits(&first9).iter().zip(W1).map(|(a, w)| a * w).sum::<u32>() % 11) % 11;
                if k1 == 10 {
                    return None;
                }
                let first10 = format!("{first9}{k1}");
                let k2 = (11 - digits(&first10).iter().zip(W2).map(|(a, w)| a * w).sum::<u32>() % 11) % 11;
                (k2 != 10).then(|| format!("{first10}{k2}"))
            })
            .nth(n)
            .expect("enough synthetic persons")
    }

    /// Something a test does inside the next commit, before it returns (another process acting
    /// while the source waits for the store).
    pub type Meanwhile = Box<dyn FnOnce() + Send>;

    /// The outbox's enqueue and nothing else: event-id dedupe, all-or-nothing, a switch to fail.
    #[derive(Clone, Default)]
    pub struct MemOutbox {
        pub events: Arc<Mutex<Vec<(String, NewEvent)>>>,
        pub fail: Arc<AtomicBool>,
        pub meanwhile: Arc<Mutex<Option<Meanwhile>>>,
    }

    impl MemOutbox {
        pub fn stored(&self) -> Vec<NewEvent> {
            self.events.lock().unwrap().iter().map(|(_, e)| e.clone()).collect()
        }
        pub fn set_failing(&self, on: bool) {
            self.fail.store(on, Ordering::SeqCst)
        }
        /// Runs `f` during the next commit.
        pub fn during_next_commit(&self, f: impl FnOnce() + Send + 'static) {
            *self.meanwhile.lock().unwrap() = Some(Box::new(f));
        }
        /// An intake over a fresh handle to this outbox, register `test|reg`, test policy.
        pub fn intake(&self) -> Intake {
            let handle = OutboxHandle::spawn(Box::new(self.clone())).unwrap();
            Intake::new(handle, "test|reg".into(), Health::new(), IdPolicy::test())
        }
    }

    fn absent<T>() -> Result<T, StoreError> {
        Err(StoreError::Other("not in this test double".into()))
    }

    impl OutboxBackend for MemOutbox {
        fn enqueue(&mut self, register: &str, events: &[NewEvent]) -> Result<Vec<Enqueued>, StoreError> {
            let meanwhile = self.meanwhile.lock().unwrap().take();
            if let Some(f) = meanwhile {
                f();
            }
            if self.fail.load(Ordering::SeqCst) {
                return Err(StoreError::NotWritable {
                    path: "mem".into(),
                    detail: "disk full (test)".into(),
                });
            }
            let mut all = self.events.lock().unwrap();
            let mut out = vec![];
            for e in events {
                match all.iter().position(|(_, s)| s.event_id == e.event_id) {
                    Some(i) => out.push(Enqueued::Duplicate { seq: i as Seq + 1 }),
                    None => {
                        all.push((register.to_string(), e.clone()));
                        out.push(Enqueued::Stored { seq: all.len() as Seq });
                    }
                }
            }
            Ok(out)
        }
        fn recover(&mut self, _: &str) -> Result<Recovered, StoreError> {
            absent()
        }
        fn claim_ready(&mut self, _: &str, _: DateTime<Utc>, _: usize) -> Result<Vec<OutboxEvent>, StoreError> {
            absent()
        }
        fn begin_batch(&mut self, _: &[Seq], _: uuid::Uuid) -> Result<(), StoreError> {
            absent()
        }
        fn batch_accepted(&mut self, _: uuid::Uuid, _: DateTime<Utc>) -> Result<(), StoreError> {
            absent()
        }
        fn batch_unknown(&mut self, _: uuid::Uuid) -> Result<(), StoreError> {
            absent()
        }
        fn accepted(&mut self, _: &str) -> Result<Vec<OutboxEvent>, StoreError> {
            absent()
        }
        fn settle(&mut self, _: &[Settlement]) -> Result<(), StoreError> {
            absent()
        }
        fn retry_later(&mut self, _: Seq, _: DateTime<Utc>, _: &str) -> Result<(), StoreError> {
            absent()
        }
        fn release(&mut self, _: &[Seq]) -> Result<(), StoreError> {
            absent()
        }
        fn dead_letter(&mut self, _: Seq, _: &Rejection, _: DateTime<Utc>) -> Result<(), StoreError> {
            absent()
        }
        fn dead_letters(&mut self, _: Option<&str>) -> Result<Vec<DeadLetter>, StoreError> {
            absent()
        }
        fn retry_dead(&mut self, _: DeadLetters) -> Result<u64, StoreError> {
            absent()
        }
        fn drop_dead(&mut self, _: DeadLetters, _: DateTime<Utc>) -> Result<u64, StoreError> {
            absent()
        }
        fn status(&mut self, _: Option<&str>) -> Result<OutboxStatus, StoreError> {
            absent()
        }
        fn purge(&mut self, _: DateTime<Utc>) -> Result<u64, StoreError> {
            absent()
        }
        fn unfinished_customers(&mut self, _: &str) -> Result<std::collections::HashSet<String>, StoreError> {
            Err(StoreError::Other("not in this test double".into()))
        }

        fn ledger(&mut self, _: &str) -> Result<Vec<LedgerEntry>, StoreError> {
            absent()
        }
        fn barrier(&mut self, _: &str) -> Result<Option<i64>, StoreError> {
            absent()
        }

        fn enqueue_and_claim(
            &mut self,
            _: &str,
            _: &NewEvent,
            _: uuid::Uuid,
            _: &str,
            _: DateTime<Utc>,
        ) -> Result<crate::store::outbox::OwnEvent, StoreError> {
            absent()
        }

        fn finish_claim(
            &mut self,
            _: Seq,
            _: &str,
            _: &crate::store::outbox::ClaimEnd,
            _: DateTime<Utc>,
        ) -> Result<crate::store::outbox::ClaimFinished, StoreError> {
            absent()
        }

        fn claim_head_of(
            &mut self,
            _: &str,
            _: &str,
            _: &[&str],
            _: &str,
            _: DateTime<Utc>,
        ) -> Result<Option<OutboxEvent>, StoreError> {
            absent()
        }
    }
}
