//! Where the agent's events come from: one [`Source`] trait, several sources running at once in
//! one agent (HTTP ingest, spool directories, stdin), all committing through one [`Intake`]
//! (docs/sync.md, "Sources").
//!
//! A source validates at the door ([`crate::sync::event`]), commits through the outbox handle (a
//! durable group commit), and only then tells its sender the events were taken. What it refuses is
//! counted (`kfr_sync_events_refused_total`) and logged with the identifier masked.

pub mod http;
pub mod pg_outbox;
pub mod spool;
pub mod stdin;

use super::event::{Context, Refusal};
use super::health::Health;
use super::metrics;
use crate::ids::IdPolicy;
use crate::store::Store;
use crate::store::{Enqueued, NewEvent, StoreError, Streamed};
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
    #[error(transparent)]
    PgOutbox(#[from] pg_outbox::PgOutboxError),
    #[error("reading standard input: {0}")]
    Stdin(#[source] std::io::Error),
}

/// What every source commits through: the outbox, the register the events are for, the shared
/// readiness, and the identifier policy of the environment.
#[derive(Debug, Clone)]
pub struct Intake {
    pub handle: Store,
    /// [`crate::store::Register::key`] of the KFR the agent delivers to.
    pub register: String,
    pub health: Health,
    pub policy: IdPolicy,
    /// The per-customer flood guard (`sync.max_events_per_customer`): an event that would give
    /// its customer more unfinished events than this is refused with its whole request, by the
    /// store inside the commit's own transaction. `None`: no limit.
    pub max_per_customer: Option<u64>,
    /// Woken after each commit, so the dispatcher looks at once instead of at its next poll.
    pub waker: Option<std::sync::Arc<tokio::sync::Notify>>,
    /// Tests only: something another process does while this commit waits for the store.
    #[cfg(test)]
    pub before_commit: Option<testkit::Hook>,
}

impl Intake {
    pub fn new(handle: Store, register: String, health: Health, policy: IdPolicy) -> Self {
        Intake {
            handle,
            register,
            health,
            policy,
            max_per_customer: None,
            waker: None,
            #[cfg(test)]
            before_commit: None,
        }
    }

    /// Refuses events that would give a customer more than `max` unfinished events.
    pub fn with_flood_limit(mut self, max: u64) -> Self {
        self.max_per_customer = Some(max);
        self
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
        self.commit_with(source, events, None).await
    }

    /// [`Intake::commit`], storing in the same transaction the position `cursor` the source read
    /// the events up to (a source that reads from somewhere with its own order: the outbox
    /// table).
    pub async fn commit_from_cursor(
        &self,
        source: &str,
        events: Vec<NewEvent>,
        cursor: String,
    ) -> Result<Vec<Enqueued>, StoreError> {
        self.commit_with(source, events, Some(cursor)).await
    }

    async fn commit_with(
        &self,
        source: &str,
        events: Vec<NewEvent>,
        cursor: Option<String>,
    ) -> Result<Vec<Enqueued>, StoreError> {
        let ops: Vec<_> = events.iter().map(|e| e.op).collect();
        #[cfg(test)]
        if let Some(f) = self.before_commit.as_ref().and_then(|m| m.0.lock().unwrap().take()) {
            f();
        }
        let now = chrono::Utc::now();
        let committed = match cursor {
            None => {
                self.handle
                    .enqueue(self.register.clone(), events, self.max_per_customer, now)
                    .await
            }
            Some(cursor) => {
                self.handle
                    .enqueue_from_cursor(
                        self.register.clone(),
                        events,
                        source.to_string(),
                        cursor,
                        self.max_per_customer,
                        now,
                    )
                    .await
            }
        };
        match committed {
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
            // A sender's mistake (an event id reused for another event): refused, the store is fine.
            Err(e @ StoreError::EventIdConflict { .. }) => {
                metrics::event_refused(source, "event.event_id_conflict");
                tracing::warn!(source, error = %e, "events refused: an event id names another stored event; nothing of them was stored");
                Err(e)
            }
            // A sender flooding one customer: refused, the store is fine. The refusal, with the
            // customer masked, is the caller's to present, count and log ([`Intake::refused`]
            // with [`flood_refusal`]): it has the events.
            Err(e @ StoreError::CustomerFlood { .. }) => Err(e),
            Err(e) => {
                tracing::error!(source, error = %e, "the state store did not commit events; nothing of them was stored");
                self.health.set_store_problem(Some(e.to_string()));
                Err(e)
            }
        }
    }

    /// Streams events into one transaction ([`Store::enqueue_stream`]): `produce` runs on a
    /// blocking thread with the stream's writer (file reading) and its value comes back with the
    /// store's answer, which gets the same bookkeeping as [`Intake::commit`]. A refused stream
    /// (an event id reused, a customer flooded) is the caller's to present: it has the lines.
    pub async fn commit_stream<T: Send + 'static>(
        &self,
        source: &str,
        produce: impl FnOnce(crate::store::StreamWriter) -> T + Send + 'static,
    ) -> (Result<T, tokio::task::JoinError>, Result<Option<Streamed>, StoreError>) {
        let (writer, answer) =
            self.handle
                .enqueue_stream(self.register.clone(), self.max_per_customer, chrono::Utc::now());
        let produced = tokio::task::spawn_blocking(move || produce(writer));
        let (produced, answer) = futures::future::join(produced, answer).await;
        // Tests: what another process does while the commit is on its way (after the reading).
        #[cfg(test)]
        if let Some(f) = self.before_commit.as_ref().and_then(|m| m.0.lock().unwrap().take()) {
            f();
        }
        match &answer {
            Ok(Some(done)) => {
                self.health.set_store_problem(None);
                if let Some(w) = &self.waker {
                    w.notify_one();
                }
                metrics::events_received(source, crate::store::Operation::Add, done.stored_adds);
                metrics::events_received(source, crate::store::Operation::Remove, done.stored_removes);
                metrics::events_duplicate(source, done.duplicates);
            }
            // Aborted by the producer: nothing to say about the store.
            Ok(None) => {}
            Err(StoreError::EventIdConflict { .. } | StoreError::CustomerFlood { .. }) => {}
            Err(e) => {
                tracing::error!(source, error = %e, "the state store did not commit events; nothing of them was stored");
                self.health.set_store_problem(Some(e.to_string()));
            }
        }
        (produced, answer)
    }

    /// Counts and logs a refusal (the refusal's text is masked).
    pub fn refused(&self, source: &str, r: &Refusal) {
        metrics::event_refused(source, &r.rule);
        tracing::warn!(source, refusal = %r, "event refused");
    }
}

/// The rule of a refusal by the per-customer flood guard.
pub const FLOOD_RULE: &str = "customer_id.max_events_per_customer";

/// The refusal of the event `event_id` for `customer`, at `at`, by the flood guard: its
/// customer, masked, has `max` unfinished events already.
pub fn flood_refusal(at: super::event::Location, event_id: &str, customer: &str, max: u64) -> Refusal {
    Refusal {
        at,
        event_id: Some(crate::ids::scrub(event_id)),
        field: "customer_id",
        rule: FLOOD_RULE.into(),
        message: format!(
            "customer {} has {max} unfinished events in the outbox already (sync.max_events_per_customer = {max}); nothing of the request was stored",
            crate::ids::mask(customer)
        ),
    }
}

/// Counts of one commit's answer: (stored, duplicates).
pub fn counts(results: &[Enqueued]) -> (u64, u64) {
    let stored = results.iter().filter(|r| matches!(r, Enqueued::Stored { .. })).count() as u64;
    (stored, results.len() as u64 - stored)
}

#[cfg(test)]
pub(crate) mod testkit {
    //! What the source tests share: synthetic identifiers and a temporary SQLite store.

    use super::*;
    use std::sync::{Arc, Mutex};

    /// The `n`th synthetic (Tenor, month + 80) fødselsnummer: valid under the test policy,
    /// refused by the prod policy.
    pub fn person(n: usize) -> String {
        crate::ids::synthetic::tenor_person(n)
    }

    /// Something a test does inside the next commit, before it returns (another process acting
    /// while the source waits for the store).
    pub type Meanwhile = Box<dyn FnOnce() + Send>;

    /// Where [`TestOutbox::during_next_commit`] leaves it for the intake.
    #[derive(Clone, Default)]
    pub struct Hook(pub Arc<Mutex<Option<Meanwhile>>>);

    impl std::fmt::Debug for Hook {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Hook")
        }
    }

    /// A real (SQLite) store in a temporary directory for the source tests, with what they look
    /// at: the events stored, and a switch that makes every insert fail (a full disk, say).
    #[derive(Clone)]
    pub struct TestOutbox {
        dir: Arc<tempfile::TempDir>,
        store: Store,
        meanwhile: Hook,
    }

    impl Default for TestOutbox {
        fn default() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let backend = crate::store::sqlite::SqliteBackend::open(&dir.path().join("s.db")).unwrap();
            TestOutbox {
                dir: Arc::new(dir),
                store: Store::spawn(Box::new(backend)).unwrap(),
                meanwhile: Default::default(),
            }
        }
    }

    impl TestOutbox {
        fn conn(&self) -> rusqlite::Connection {
            rusqlite::Connection::open(self.dir.path().join("s.db")).unwrap()
        }

        /// Every event stored, in issue order.
        pub fn stored(&self) -> Vec<NewEvent> {
            let c = self.conn();
            let mut stmt = c
                .prepare("SELECT event_id, op, customer_id, start_date, occurred_at, source FROM outbox ORDER BY seq")
                .unwrap();
            stmt.query_map([], |r| {
                let op: String = r.get(1)?;
                let start: Option<String> = r.get(3)?;
                let at: String = r.get(4)?;
                Ok(NewEvent {
                    event_id: r.get(0)?,
                    op: if op == "add" {
                        crate::store::Operation::Add
                    } else {
                        crate::store::Operation::Remove
                    },
                    customer_id: r.get(2)?,
                    start_date: start.map(|d| d.parse().unwrap()),
                    occurred_at: chrono::DateTime::parse_from_rfc3339(&at)
                        .unwrap()
                        .with_timezone(&chrono::Utc),
                    source: r.get(5)?,
                })
            })
            .unwrap()
            .map(Result::unwrap)
            .collect()
        }

        /// From now on every insert fails (`on`), or works again.
        pub fn set_failing(&self, on: bool) {
            let sql = if on {
                "CREATE TRIGGER IF NOT EXISTS test_fail BEFORE INSERT ON outbox
                 BEGIN SELECT RAISE(ABORT, 'disk full (test)'); END;"
            } else {
                "DROP TRIGGER IF EXISTS test_fail;"
            };
            self.conn().execute_batch(sql).unwrap();
        }

        /// An intake over this store, register `test|reg`, test policy.
        pub fn intake(&self) -> Intake {
            let mut intake = Intake::new(self.store.clone(), "test|reg".into(), Health::new(), IdPolicy::test());
            intake.before_commit = Some(self.meanwhile.clone());
            intake
        }

        /// Runs `f` during the next commit, before the store writes.
        pub fn during_next_commit(&self, f: impl FnOnce() + Send + 'static) {
            *self.meanwhile.0.lock().unwrap() = Some(Box::new(f));
        }
    }
}
