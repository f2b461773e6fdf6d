//! `kfr load retry-held JOB`: sends again the operations held behind a job that is no longer
//! running (confirmed, or abandoned), without the export (issue 20, deliver 6).
//!
//! After a job is confirmed its held operations are sent by the load; one that fails stays first
//! in its customer's queue (docs/specs/barrier.md, rule 8). Before this command the only way to
//! send it again was `kfr load FILE --resume` with the byte-identical export, which a bank may no
//! longer have. The operations are in the store with everything a request needs, so this sends
//! them by the same path and verdict rule as the load ([`super::send_held_operations`]): per
//! customer in issue order, each with the CorrelationID given when it was queued, only to the
//! job's own KFR, and only while no load holds the store.

use super::report::SentOperation;
use super::{EventSink, LoadError};
use crate::kfr::KfrClient;
use crate::store::{JobStatus, OWN_SOURCES, Store};

/// Everything `kfr load retry-held` needs, as values.
#[derive(Debug, Clone)]
pub struct RetryOptions {
    /// Where the state store is, for messages.
    pub state: String,
    pub job: i64,
    /// As [`super::LoadOptions::request_budget`].
    pub request_budget: std::time::Duration,
    /// As [`super::LoadOptions::in_doubt`].
    pub in_doubt: std::time::Duration,
    /// The KFR this run talks to: held operations go to the job's own only.
    pub org_number: String,
    pub kfr_base_url: String,
    pub environment: String,
}

/// What the retry did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RetryOutcome {
    pub job: i64,
    pub sent: Vec<SentOperation>,
    /// Attempts that failed (they stay first in their customer's queue).
    pub failed: usize,
    /// Held operations of the job's KFR still waiting afterwards.
    pub still_waiting: usize,
}

/// `kfr load retry-held`: see the module docs.
pub async fn retry_held(
    opts: &RetryOptions,
    store: Option<&Store>,
    client: &KfrClient,
    on: EventSink<'_>,
) -> Result<RetryOutcome, LoadError> {
    let Some(store) = store else {
        return Err(LoadError::NoStore {
            state: opts.state.clone(),
        });
    };
    super::take_writer(store, "kfr load retry-held", &opts.state, opts.job).await?;
    let result = retry_as_writer(opts, store, client, on).await;
    super::release_writer(store).await;
    result
}

async fn retry_as_writer(
    opts: &RetryOptions,
    store: &Store,
    client: &KfrClient,
    on: EventSink<'_>,
) -> Result<RetryOutcome, LoadError> {
    let Some(job) = store.job(opts.job).await? else {
        return Err(LoadError::NoSuchJob {
            job: opts.job,
            state: opts.state.clone(),
        });
    };
    if job.status == JobStatus::Running {
        // Its barrier is up: the held operations wait for the load to confirm the job.
        return Err(LoadError::StillRunning { job: opts.job });
    }
    super::same_kfr(&job, &opts.environment, &opts.kfr_base_url, &opts.org_number)?;
    let register = job.register.unwrap_or_default();
    let (sent, failed) =
        super::send_held_operations(store, client, &register, (opts.request_budget, opts.in_doubt), on).await?;
    let sources = OWN_SOURCES.iter().map(|s| s.to_string()).collect();
    let still_waiting = store.unfinished_of(register, sources).await?.len();
    Ok(RetryOutcome {
        job: opts.job,
        sent,
        failed,
        still_waiting,
    })
}
