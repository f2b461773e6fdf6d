//! Initial-load jobs and their batches.
//!
//! A job is one input file (identified by its content hash) planned into batches under fixed
//! settings. Batch states move only forward:
//!
//! ```text
//! planned ──▶ uploading ──▶ accepted ──▶ confirmed
//!     ▲           │
//!     └───────────┘  only when KFR definitely refused the upload, or a lookup proved it absent
//! ```
//!
//! `uploading` is written (and synced) before the request is sent, so after a crash a batch in
//! that state is "maybe sent": the executor looks up its last entry before deciding to send it
//! again. `accepted` means KFR answered 201 (valid, not yet stored, kfr-notes §5); `confirmed`
//! means own-lookups saw it stored. A job is `confirmed` when all its batches are: that is what
//! lifts the delete barrier. An operator may instead declare a job `abandoned`
//! ([`Jobs::abandon_job`]): it will never be confirmed, and the barrier lifts all the same.
//!
//! A job belongs to one register ([`crate::store::Register::key`]), stored in `register` from
//! the job's settings (environment, KFR base URL, org.nr) when it is created; a job whose settings
//! do not name all three (planned before kfr recorded them) has none, and then holds removes of
//! every register — the safe reading of not knowing.

use super::db::{SqliteBackend, Tx};
use super::migrations::register_of_settings;
use super::rows::{EVENT_COLUMNS, Fault, Line, bad_value, event_row, finish_head, ts};
use crate::store::backend::Jobs;
use crate::store::error::StoreError;
use crate::store::time_text;
use crate::store::types::*;
use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension as _, params};
use uuid::Uuid;

const JOB_COLUMNS: &str = "id, input_path, content_hash, settings, status, entries, created_at, confirmed_at, register";

fn job_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<JobRecord> {
    Ok(JobRecord {
        id: r.get(0)?,
        input_path: r.get(1)?,
        content_hash: r.get(2)?,
        settings: r.get(3)?,
        status: parse_job_status(&r.get::<_, String>(4)?)?,
        entries: r.get(5)?,
        created_at: r.get(6)?,
        confirmed_at: r.get(7)?,
        register: r.get(8)?,
    })
}

fn parse_job_status(s: &str) -> rusqlite::Result<JobStatus> {
    match s {
        "running" => Ok(JobStatus::Running),
        "confirmed" => Ok(JobStatus::Confirmed),
        "abandoned" => Ok(JobStatus::Abandoned),
        other => Err(bad_value("load_jobs.status", other)),
    }
}

fn parse_batch_status(s: &str) -> rusqlite::Result<BatchStatus> {
    match s {
        "planned" => Ok(BatchStatus::Planned),
        "uploading" => Ok(BatchStatus::Uploading),
        "accepted" => Ok(BatchStatus::Accepted),
        "confirmed" => Ok(BatchStatus::Confirmed),
        other => Err(bad_value("load_batches.status", other)),
    }
}

/// The timestamp column set when a batch enters `status`.
fn time_column(status: BatchStatus) -> Option<&'static str> {
    match status {
        BatchStatus::Planned => None,
        BatchStatus::Uploading => Some("uploading_at"),
        BatchStatus::Accepted => Some("accepted_at"),
        BatchStatus::Confirmed => Some("confirmed_at"),
    }
}

fn no_batch(job: i64, seq: u32) -> Fault {
    Fault::Store(StoreError::job(job, format_args!("has no batch {seq}")))
}

impl Jobs for SqliteBackend {
    fn create_job(&mut self, job: &NewJob, now: DateTime<Utc>) -> Result<i64, StoreError> {
        let at = time_text(now);
        self.kept_tx(|tx| {
            tx.execute(
                "INSERT INTO load_jobs (input_path, content_hash, settings, status, entries, created_at, updated_at, register)
                 VALUES (?1, ?2, ?3, 'running', ?4, ?5, ?5, ?6)",
                params![
                    job.input_path,
                    job.content_hash,
                    job.settings,
                    job.entries,
                    at,
                    register_of_settings(&job.settings)
                ],
            )?;
            let id = tx.last_insert_rowid();
            let mut stmt = tx.prepare(
                "INSERT INTO load_batches (job_id, seq, first_entry, entry_count, bytes, correlation_id, status)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'planned')",
            )?;
            for (i, b) in job.batches.iter().enumerate() {
                stmt.execute(params![
                    id,
                    i as u32 + 1,
                    b.first_entry,
                    b.entry_count,
                    b.bytes,
                    b.correlation_id.to_string()
                ])?;
            }
            Ok(id)
        })
    }

    fn unconfirmed_job(&mut self) -> Result<Option<JobRecord>, StoreError> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM load_jobs WHERE status = 'running' ORDER BY id DESC LIMIT 1");
        self.tx(Tx::Read, |tx| Ok(tx.query_row(&sql, [], job_row).optional()?))
    }

    fn jobs(&mut self) -> Result<Vec<JobRecord>, StoreError> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM load_jobs ORDER BY id");
        self.tx(Tx::Read, |tx| {
            let mut stmt = tx.prepare(&sql)?;
            let rows = stmt.query_map([], job_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    fn latest_job(&mut self) -> Result<Option<JobRecord>, StoreError> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM load_jobs ORDER BY id DESC LIMIT 1");
        self.tx(Tx::Read, |tx| Ok(tx.query_row(&sql, [], job_row).optional()?))
    }

    fn job(&mut self, id: i64) -> Result<Option<JobRecord>, StoreError> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM load_jobs WHERE id = ?1");
        self.tx(Tx::Read, |tx| Ok(tx.query_row(&sql, [id], job_row).optional()?))
    }

    fn batches(&mut self, job: i64) -> Result<Vec<BatchRecord>, StoreError> {
        self.tx(Tx::Read, |tx| {
            let mut stmt = tx.prepare(
                "SELECT seq, first_entry, entry_count, bytes, correlation_id, status, uploading_at, accepted_at, confirmed_at,
                        witness, witness_checked, confirmed_by, resends
                 FROM load_batches WHERE job_id = ?1 ORDER BY seq",
            )?;
            let rows = stmt.query_map([job], |r| {
                let cid: String = r.get(4)?;
                Ok(BatchRecord {
                    seq: r.get(0)?,
                    first_entry: r.get(1)?,
                    entry_count: r.get(2)?,
                    bytes: r.get(3)?,
                    correlation_id: Uuid::parse_str(&cid).map_err(|_| bad_value("load_batches.correlation_id", &cid))?,
                    status: parse_batch_status(&r.get::<_, String>(5)?)?,
                    uploading_at: r.get(6)?,
                    accepted_at: r.get(7)?,
                    confirmed_at: r.get(8)?,
                    witness: r.get(9)?,
                    witness_checked: r.get::<_, i64>(10)? != 0,
                    confirmed_by: r.get(11)?,
                    resends: r.get(12)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    fn update_batch(&mut self, job: i64, seq: u32, change: &BatchChange, now: DateTime<Utc>) -> Result<(), StoreError> {
        let at = time_text(now);
        self.kept_tx(|tx| {
            // A load's writes stop once its job is not running: an operator who abandoned it
            // under the load must not see batches confirmed behind their back (issue 20, N4).
            let status: Option<String> = tx
                .query_row("SELECT status FROM load_jobs WHERE id = ?1", [job], |r| r.get(0))
                .optional()?;
            match status.as_deref() {
                None => return Err(Fault::Store(StoreError::job(job, "does not exist"))),
                Some("abandoned") => {
                    return Err(Fault::Store(StoreError::job(
                        job,
                        "was abandoned by an operator (kfr load abandon); this load writes nothing more to it",
                    )));
                }
                _ => {}
            }
            let n = match change {
                BatchChange::Status(status) => {
                    let sql = match time_column(*status) {
                        Some(col) => {
                            format!("UPDATE load_batches SET status = ?1, {col} = ?4 WHERE job_id = ?2 AND seq = ?3")
                        }
                        None => "UPDATE load_batches SET status = ?1 WHERE job_id = ?2 AND seq = ?3 AND ?4 IS NOT NULL"
                            .to_string(),
                    };
                    tx.execute(&sql, params![status.as_str(), job, seq, at])?
                }
                BatchChange::Witness(witness) => tx.execute(
                    "UPDATE load_batches SET witness = ?1, witness_checked = 1 WHERE job_id = ?2 AND seq = ?3",
                    params![witness, job, seq],
                )?,
                BatchChange::ConfirmedBy(by) => tx.execute(
                    "UPDATE load_batches SET confirmed_by = ?1 WHERE job_id = ?2 AND seq = ?3",
                    params![by, job, seq],
                )?,
                BatchChange::Resent => tx.execute(
                    "UPDATE load_batches SET resends = resends + 1 WHERE job_id = ?1 AND seq = ?2",
                    params![job, seq],
                )?,
            };
            if n != 1 {
                return Err(no_batch(job, seq));
            }
            tx.execute("UPDATE load_jobs SET updated_at = ?1 WHERE id = ?2", params![at, job])?;
            Ok(())
        })
    }

    fn abandon_job(
        &mut self,
        id: i64,
        rule: HeldAtAbandon,
        action: &OperatorAction,
        now: DateTime<Utc>,
    ) -> Result<Abandonment, StoreError> {
        let at = time_text(now);
        self.kept_tx(|tx| {
            let sql = format!("SELECT {JOB_COLUMNS} FROM load_jobs WHERE id = ?1");
            let Some(job) = tx.query_row(&sql, [id], job_row).optional()? else {
                return Ok(Abandonment::NoSuchJob);
            };
            if job.status == JobStatus::Confirmed {
                return Ok(Abandonment::Confirmed);
            }
            let register = job.register.clone().unwrap_or_default();
            // Held operations are the outbox events of `kfr remove` / `kfr add` (OWN_SOURCES).
            let held: Vec<OutboxEvent> = {
                let sql = format!(
                    "SELECT {EVENT_COLUMNS} FROM outbox
                     WHERE source IN ('kfr remove', 'kfr add') AND finished_at IS NULL AND register = ?1 ORDER BY seq"
                );
                let mut stmt = tx.prepare(&sql)?;
                stmt.query_map([&register], event_row)?.collect::<Result<_, _>>()?
            };
            let running = job.status == JobStatus::Running;
            if held.is_empty() && !running || !held.is_empty() && rule == HeldAtAbandon::Refuse {
                return Ok(if running {
                    Abandonment::HeldWaiting { held }
                } else {
                    Abandonment::AlreadyAbandoned { held }
                });
            }
            if rule == HeldAtAbandon::Drop
                && held
                    .iter()
                    .any(|e| matches!(e.state, EventState::InFlight | EventState::Accepted))
            {
                return Err(Fault::Store(StoreError::Conflict(format!(
                    "a held operation of load job {id} is being sent by another process right now; run the command again when it has been answered"
                ))));
            }
            if running {
                tx.execute(
                    "UPDATE load_jobs SET status = 'abandoned', abandoned_at = ?1, updated_at = ?1 WHERE id = ?2",
                    params![at, id],
                )?;
            }
            let what = match rule {
                HeldAtAbandon::Drop => "abandon --drop-held",
                HeldAtAbandon::Release => "abandon --send-held",
                HeldAtAbandon::Refuse => "abandon",
            };
            let detail = format!("load job {id}{}", action.reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default());
            Line {
                at: now,
                register: &register,
                customer_id: "",
                seq: None,
                event_id: None,
                op: None,
                correlation_id: None,
                kind: HistoryKind::Operator,
                outcome: what,
                status: None,
                code: None,
                detail: Some(&detail),
                actor: Some(&action.actor),
            }
            .write(tx)?;
            let mut ops = vec![];
            for mut op in held {
                if rule == HeldAtAbandon::Drop {
                    // Finished without being sent, like a dropped dead letter: the ledger is not
                    // touched, and the customer's next event (if any) becomes its head.
                    tx.execute(
                        "UPDATE outbox SET state = 'dropped', finished_at = ?1, claimer = NULL, next_attempt_at = NULL,
                             last_error = ?2 WHERE seq = ?3",
                        params![
                            ts(now),
                            format!("dropped: load job {id} abandoned by an operator (kfr load abandon --drop-held)"),
                            op.seq
                        ],
                    )?;
                    finish_head(tx, op.seq, &register, &op.customer_id)?;
                    Line {
                        kind: HistoryKind::Operator,
                        actor: Some(&action.actor),
                        detail: Some(&detail),
                        ..Line::attempt(&op, now, "dropped")
                    }
                    .write(tx)?;
                    op.state = EventState::Dropped;
                }
                ops.push(op);
            }
            Ok(Abandonment::Abandoned {
                was_running: running,
                held: ops,
            })
        })
    }

    fn confirm_job_if_complete(&mut self, job: i64, now: DateTime<Utc>) -> Result<bool, StoreError> {
        let at = time_text(now);
        self.kept_tx(|tx| {
            let open: i64 = tx.query_row(
                "SELECT COUNT(*) FROM load_batches WHERE job_id = ?1 AND status != 'confirmed'",
                [job],
                |r| r.get(0),
            )?;
            if open > 0 {
                return Ok(false);
            }
            // A job confirmed earlier keeps its original confirmation time; an abandoned one
            // stays abandoned (the load under it is told so by `update_batch`).
            let n = tx.execute(
                "UPDATE load_jobs SET status = 'confirmed', confirmed_at = ?1, updated_at = ?1 WHERE id = ?2 AND status = 'running'",
                params![at, job],
            )?;
            if n == 0 {
                let status: String = tx.query_row("SELECT status FROM load_jobs WHERE id = ?1", [job], |r| r.get(0))?;
                return Ok(status == "confirmed");
            }
            Ok(true)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::backend::Outbox as _;
    use crate::store::conformance::{ev, t};

    fn store() -> (tempfile::TempDir, SqliteBackend) {
        let d = tempfile::tempdir().unwrap();
        let s = SqliteBackend::open(&d.path().join("s.db")).unwrap();
        (d, s)
    }

    fn batch(first: u64, n: u64) -> NewBatch {
        NewBatch {
            first_entry: first,
            entry_count: n,
            bytes: 100 + n,
            correlation_id: Uuid::new_v4(),
        }
    }

    fn new_job(settings: &str, batches: Vec<NewBatch>) -> NewJob {
        NewJob {
            input_path: "c.csv".into(),
            content_hash: "abc".into(),
            settings: settings.into(),
            entries: batches.iter().map(|b| b.entry_count).sum(),
            batches,
        }
    }

    fn operator() -> OperatorAction {
        OperatorAction {
            actor: "ops-test".into(),
            reason: Some("test".into()),
        }
    }

    #[test]
    fn job_lifecycle() {
        let (_d, mut s) = store();
        assert!(s.unconfirmed_job().unwrap().is_none());
        let job = s
            .create_job(&new_job("{}", vec![batch(0, 3), batch(3, 2)]), t(0))
            .unwrap();
        let j = s.unconfirmed_job().unwrap().unwrap();
        assert_eq!((j.id, j.status, j.entries), (job, JobStatus::Running, 5));
        let b = s.batches(job).unwrap();
        assert_eq!(b.len(), 2);
        assert_eq!((b[1].seq, b[1].first_entry, b[1].entry_count), (2, 3, 2));
        assert!(b.iter().all(|b| b.status == BatchStatus::Planned));

        let status = |s: &mut SqliteBackend, seq, st| s.update_batch(job, seq, &BatchChange::Status(st), t(1));
        for st in [BatchStatus::Uploading, BatchStatus::Accepted, BatchStatus::Confirmed] {
            status(&mut s, 1, st).unwrap();
        }
        assert!(!s.confirm_job_if_complete(job, t(2)).unwrap());
        status(&mut s, 2, BatchStatus::Uploading).unwrap();
        status(&mut s, 2, BatchStatus::Planned).unwrap();
        let b = s.batches(job).unwrap();
        assert_eq!(b[1].status, BatchStatus::Planned);
        assert!(b[1].uploading_at.is_some(), "attempt history is kept");
        status(&mut s, 2, BatchStatus::Confirmed).unwrap();
        assert!(s.confirm_job_if_complete(job, t(3)).unwrap());
        assert!(s.unconfirmed_job().unwrap().is_none());
        assert_eq!(s.latest_job().unwrap().unwrap().status, JobStatus::Confirmed);
        assert!(status(&mut s, 9, BatchStatus::Accepted).is_err());
    }

    #[test]
    fn a_job_knows_its_register_and_a_load_cannot_write_to_an_abandoned_one() {
        let (_d, mut s) = store();
        let settings = r#"{"environment":"test","kfr_base_url":"https://kfr.example/api/","org_number":"923609016"}"#;
        let job = s.create_job(&new_job(settings, vec![batch(0, 1)]), t(0)).unwrap();
        let reg = crate::store::Register {
            environment: "test".into(),
            base_url: "https://kfr.example:443/api".into(),
            org_number: "923609016".into(),
        };
        assert_eq!(s.job(job).unwrap().unwrap().register, Some(reg.key()));
        let old = s.create_job(&new_job("{}", vec![]), t(0)).unwrap();
        assert_eq!(
            s.job(old).unwrap().unwrap().register,
            None,
            "unknown: holds every register"
        );

        assert!(matches!(
            s.abandon_job(job, HeldAtAbandon::Refuse, &operator(), t(1)).unwrap(),
            Abandonment::Abandoned { was_running: true, .. }
        ));
        assert_eq!(s.job(job).unwrap().unwrap().status, JobStatus::Abandoned);
        assert_eq!(s.unconfirmed_job().unwrap().map(|j| j.id), Some(old));
        let err = s
            .update_batch(job, 1, &BatchChange::Status(BatchStatus::Confirmed), t(2))
            .unwrap_err();
        assert!(err.to_string().contains("abandoned"), "{err}");
        assert!(
            !s.confirm_job_if_complete(job, t(2)).unwrap(),
            "abandoned stays abandoned"
        );
        let history = crate::store::backend::History::history(&mut s, None, None, None).unwrap();
        assert_eq!(history.len(), 1, "{history:?}");
        assert_eq!(history[0].actor.as_deref(), Some("ops-test"));
    }

    /// Abandoning decides about held operations in the same transaction: refused while any
    /// waits (nothing changes), dropped ones are finished unsent and the customer's next event
    /// becomes its head, released ones stay queued with the barrier down.
    #[test]
    fn abandoning_settles_held_operations_in_one_step() {
        let x = "02013299997";
        let settings = r#"{"environment":"test","kfr_base_url":"https://kfr.example/api","org_number":"923609016"}"#;
        let reg = register_of_settings(settings).unwrap();
        let held_op = |id: &str, op| NewEvent {
            source: format!("kfr {}", op_name(op)),
            ..ev(id, x, op)
        };
        let (_d, mut s) = store();
        let job = s.create_job(&new_job(settings, vec![batch(0, 1)]), t(0)).unwrap();
        s.enqueue(
            &reg,
            &[held_op("r1", Operation::Remove), held_op("a1", Operation::Add)],
            None,
            t(0),
        )
        .unwrap();

        let held = |a: Abandonment| match a {
            Abandonment::HeldWaiting { held } => held.len(),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            held(s.abandon_job(job, HeldAtAbandon::Refuse, &operator(), t(1)).unwrap()),
            2
        );
        assert_eq!(
            s.job(job).unwrap().unwrap().status,
            JobStatus::Running,
            "nothing changed"
        );
        assert!(matches!(
            s.abandon_job(job + 1, HeldAtAbandon::Drop, &operator(), t(1)).unwrap(),
            Abandonment::NoSuchJob
        ));
        match s.abandon_job(job, HeldAtAbandon::Drop, &operator(), t(1)).unwrap() {
            Abandonment::Abandoned { was_running, held } => {
                assert!(was_running);
                let ops: Vec<_> = held.iter().map(|h| (h.op, h.state)).collect();
                assert_eq!(
                    ops,
                    [
                        (Operation::Remove, EventState::Dropped),
                        (Operation::Add, EventState::Dropped)
                    ]
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(
            s.unfinished_of(&reg, &OWN_SOURCES).unwrap().is_empty(),
            "dropped: finished"
        );
        assert!(matches!(
            s.abandon_job(job, HeldAtAbandon::Refuse, &operator(), t(2)).unwrap(),
            Abandonment::AlreadyAbandoned { held } if held.is_empty()
        ));

        // Release: abandoned, and the held operation may then be claimed.
        let (_d2, mut s) = store();
        let job = s.create_job(&new_job(settings, vec![batch(0, 1)]), t(0)).unwrap();
        s.enqueue(&reg, &[held_op("r1", Operation::Remove)], None, t(0))
            .unwrap();
        let claimer = Claimer {
            name: "load:test".into(),
            epoch: None,
            ttl: chrono::Duration::seconds(60),
        };
        assert!(
            s.claim_next_of(&reg, &OWN_SOURCES, &claimer, t(1)).unwrap().is_none(),
            "barrier up"
        );
        assert!(matches!(
            s.abandon_job(job, HeldAtAbandon::Release, &operator(), t(1)).unwrap(),
            Abandonment::Abandoned { was_running: true, ref held } if held.len() == 1
        ));
        assert_eq!(
            s.claim_next_of(&reg, &OWN_SOURCES, &claimer, t(2)).unwrap().unwrap().op,
            Operation::Remove
        );
    }

    fn op_name(op: Operation) -> &'static str {
        op.as_str()
    }
}
