//! What a load reports while it runs: typed events handed to a sink the caller supplies.
//!
//! The engine never prints (issue 8: engines return, the CLI presents). Each event carries the
//! facts; the CLI's printer turns them into a progress bar, lines on stderr or JSON lines on
//! stdout. Serialised with `event` as the tag, the events that `kfr load --json` prints are the
//! JSON lines themselves; the others ([`LoadEvent::is_json`] false) are for people only.
//!
//! Personal data: customers appear as kind and log pseudonym, rejected lines masked — the same
//! rule as the logs.

use super::plan::Plan;
use super::reader::{Format, Rejected};
use super::report::{Counts, SentOperation};
use std::path::PathBuf;
use uuid::Uuid;

/// Receives events as they happen. Called from the load's task, one event at a time.
pub type EventSink<'a> = &'a (dyn Fn(LoadEvent) + Send + Sync);

/// The plan and the counts it rests on: what `--dry-run` shows and what a run starts with.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PlanSummary {
    pub file: PathBuf,
    pub format: Format,
    /// The format as people read it, e.g. `ID;YYYY-MM-DD`.
    pub format_text: String,
    pub bom: bool,
    pub crlf: bool,
    pub blank_lines: u64,
    pub counts: Counts,
    pub plan: Plan,
}

/// Where an ingested count comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IngestedBasis {
    /// Own lookups proved at least this many stored.
    Measured,
    /// Predicted at the ingest rate; nothing proved yet.
    Estimate,
}

/// One thing that happened during a load.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum LoadEvent {
    /// A bad line (masked). `skipped`: `--skip-invalid` leaves it out and the load goes on;
    /// otherwise it is part of why the load is refused.
    LineRejected {
        rejected: Rejected,
        skipped: bool,
    },
    /// Bad lines beyond the first few examples of each rule, and every bad line counted by rule
    /// (the full list is only in the rejects file).
    MoreRejected {
        count: u64,
        by_rule: std::collections::BTreeMap<String, u64>,
    },
    /// An entry KFR already held before its batch went out, with a later start date than the
    /// file's: KFR keeps its own date (issue 9 item 9). `customer`: kind and masked identifier.
    KfrKeepsItsDate {
        customer: String,
        file_start: chrono::NaiveDate,
    },
    /// `--dry-run --report`: the plan report was written.
    PlanReportWritten {
        path: PathBuf,
    },
    /// The bad lines went to the rejects file (identifiers in full, mode 0600).
    RejectsWritten {
        count: u64,
        path: PathBuf,
    },
    /// The plan is ready (a resumed job plans the same batches again).
    Plan {
        #[serde(flatten)]
        summary: Box<PlanSummary>,
        resumed: bool,
    },
    /// A new job is in the store; removes are held until it is confirmed.
    JobCreated {
        job: i64,
        /// The store, as [`crate::store::Location::describe`] names it.
        state: String,
    },
    /// An unfinished job is being continued.
    JobResumed {
        job: i64,
        batches: usize,
        confirmed: usize,
    },
    /// Uploading starts: `total` relationships, `ingested` of them already confirmed.
    Started {
        total: u64,
        ingested: u64,
    },
    /// Relationships KFR has ingested, for the progress bar (a tick every 200 ms while a batch
    /// is ingested): a lower bound own lookups proved (`measured`), or the count the ingest rate
    /// predicts (`estimate`) until a lookup proves one.
    Ingesting {
        batch: u32,
        batches: u32,
        ingested: u64,
        ingested_basis: IngestedBasis,
        /// A lookup found KFR behind the planned rate on this batch.
        slower: bool,
    },
    /// The ingested count after a measuring lookup (a few per 30 s, at most two a second):
    /// `ingested` is measured (a lower bound: ingestion follows file order, so an entry new in
    /// the batch being visible proves every entry before it ingested) or an estimate at the
    /// ingest rate; `expected` is what the plan predicts by now.
    Progress {
        batch: u32,
        batches: u32,
        ingested: u64,
        ingested_basis: IngestedBasis,
        expected: u64,
        total: u64,
    },
    /// A measuring lookup found KFR behind the planned rate on this batch (told once a batch):
    /// `ingested` is the measured count, `expected` the plan's.
    KfrSlowerThanPlanned {
        batch: u32,
        ingested: u64,
        expected: u64,
    },
    /// `--max-per-day` is reached before `batch`.
    Paused {
        batch: u32,
        max_per_day: Option<u64>,
    },
    /// A batch may have been sent before the last run stopped; its last entry is looked up.
    CheckingUnknownUpload {
        batch: u32,
        correlation_id: Uuid,
    },
    UnknownUploadFound {
        batch: u32,
    },
    UnknownUploadAbsent {
        batch: u32,
    },
    /// KFR answered 201: valid, not yet stored.
    BatchAccepted {
        batch: u32,
        entries: u64,
        bytes: u64,
        correlation_id: Uuid,
    },
    /// Checked entries of a batch are not visible yet after its expected ingestion time: KFR is
    /// slower than planned. `ingested` is the measured count (confirmed batches, plus the part
    /// of this one a lookup proved), `expected` the plan's (this batch complete).
    WaitingForIngestion {
        batch: u32,
        missing: usize,
        ingested: u64,
        expected: u64,
    },
    /// Own lookups saw the batch stored.
    BatchConfirmed {
        batch: u32,
        entries: u64,
        correlation_id: Uuid,
        ingested: u64,
        /// How: `witness` (own lookup of an entry not visible before the upload), `witness+time`
        /// (that, plus the expected time for the entries after it, which were visible already),
        /// or `time` (no entry of the batch was new: the expected ingestion time plus a margin).
        by: String,
    },
    /// An entry chosen as evidence of the batch's ingestion was touched through kfr meanwhile
    /// (`kfr add`, the agent): its being visible proves nothing, so a lower one is used (issue 20,
    /// N1). `customer`: kind and log pseudonym.
    EvidenceTouched {
        batch: u32,
        customer: String,
    },
    /// Entries of the batch no lookup can prove are waited for by time: `entries` at `rate` a
    /// second, `measured` (by this job's lookups) or not, for `wait_secs` in all (issue 20, N2).
    WaitingByTime {
        batch: u32,
        entries: u64,
        rate: u64,
        measured: bool,
        wait_secs: f64,
    },
    /// KFR failed transiently, rate limited or was out; the step is tried again after `retry_in`.
    KfrUnavailable {
        step: String,
        error: String,
        retry_in_secs: f64,
        waited_secs: u64,
    },
    /// A batch upload got no usable answer after its body went out (timeout, 5xx): KFR may or
    /// may not have taken it. Its entries are probed before anything is sent again.
    UploadUnknown {
        batch: u32,
        error: String,
    },
    /// A batch whose earlier upload was not found in KFR is sent again (counted in the report).
    BatchResent {
        batch: u32,
        resends: u32,
    },
    /// Uploading is over (the bar can go).
    Finished,
    /// An operation held behind the barrier or behind an earlier one on its customer was sent.
    HeldOperationSent(SentOperation),
    /// A held operation could not be sent; it stays at the head of its customer's queue.
    HeldOperationFailed {
        customer: String,
        operation: crate::store::Operation,
        error: String,
    },
    /// The report files were written.
    ReportWritten {
        json: PathBuf,
        markdown: PathBuf,
    },
    /// Something the operator should know that does not stop the load.
    Warning {
        message: String,
    },
}

impl LoadEvent {
    /// Whether `kfr load --json` prints this event as a JSON line (the others are human-only:
    /// progress ticks, and messages that went to stderr before there were events).
    pub fn is_json(&self) -> bool {
        !matches!(
            self,
            LoadEvent::LineRejected { .. }
                | LoadEvent::MoreRejected { .. }
                | LoadEvent::RejectsWritten { .. }
                | LoadEvent::JobCreated { .. }
                | LoadEvent::JobResumed { .. }
                | LoadEvent::Started { .. }
                | LoadEvent::Ingesting { .. }
                | LoadEvent::Finished
                | LoadEvent::ReportWritten { .. }
                | LoadEvent::PlanReportWritten { .. }
                | LoadEvent::Warning { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Operation;

    /// `kfr load --json` consumers read these names and fields; a rename is a visible change.
    #[test]
    fn json_lines_carry_the_event_name_and_flat_fields() {
        let cid = Uuid::nil();
        let v = serde_json::to_value(LoadEvent::BatchConfirmed {
            batch: 2,
            entries: 35,
            correlation_id: cid,
            ingested: 70,
            by: "witness".into(),
        })
        .unwrap();
        assert_eq!(
            v,
            serde_json::json!({"event": "batch_confirmed", "batch": 2, "entries": 35,
                "correlation_id": cid, "ingested": 70, "by": "witness"})
        );
        let sent = SentOperation {
            customer: "fødselsnummer p-0123456789ab".into(),
            operation: Operation::Add,
            queued_at: "t0".into(),
            sent_at: "t1".into(),
            outcome: "added".into(),
            correlation_id: cid,
        };
        let v = serde_json::to_value(LoadEvent::HeldOperationSent(sent)).unwrap();
        assert_eq!(v["event"], "held_operation_sent");
        assert_eq!(v["operation"], "add");
        assert_eq!(v["outcome"], "added");
        assert_eq!(v["customer"], "fødselsnummer p-0123456789ab");
    }

    #[test]
    fn only_progress_facts_are_json_lines() {
        assert!(LoadEvent::UnknownUploadFound { batch: 1 }.is_json());
        assert!(
            LoadEvent::Paused {
                batch: 1,
                max_per_day: Some(5)
            }
            .is_json()
        );
        assert!(
            !LoadEvent::Ingesting {
                batch: 1,
                batches: 1,
                ingested: 1,
                ingested_basis: IngestedBasis::Estimate,
                slower: false
            }
            .is_json(),
            "bar ticks are not lines"
        );
        let v = serde_json::to_value(LoadEvent::Progress {
            batch: 1,
            batches: 2,
            ingested: 41,
            ingested_basis: IngestedBasis::Measured,
            expected: 50,
            total: 400,
        })
        .unwrap();
        assert_eq!(v["event"], "progress");
        assert_eq!(v["ingested_basis"], "measured");
        assert!(
            LoadEvent::Progress {
                batch: 1,
                batches: 2,
                ingested: 41,
                ingested_basis: IngestedBasis::Estimate,
                expected: 50,
                total: 400,
            }
            .is_json()
        );
        assert!(
            !LoadEvent::Warning { message: "x".into() }.is_json(),
            "warnings go to stderr"
        );
    }
}
