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
//! ([`Store::abandon_job`]): it will never be confirmed, and the barrier lifts all the same.
//!
//! A job belongs to one register ([`super::outbox::Register::key`]), stored in `register` from
//! the job's settings (environment, KFR base URL, org.nr) when it is created; a job whose settings
//! do not name all three (planned before kfr recorded them) has none, and then holds removes of
//! every register — the safe reading of not knowing.

use super::{HeldOp, Store, now_text};
use rusqlite::{OptionalExtension as _, params};
use uuid::Uuid;

/// A job's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Planned, partly uploaded or not yet confirmed: deletes are held.
    Running,
    /// Every batch confirmed ingested.
    Confirmed,
    /// Given up by an operator: never confirmed, no longer holds removes back.
    Abandoned,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Running => "running",
            JobStatus::Confirmed => "confirmed",
            JobStatus::Abandoned => "abandoned",
        }
    }
    fn parse(s: &str) -> rusqlite::Result<Self> {
        match s {
            "running" => Ok(JobStatus::Running),
            "confirmed" => Ok(JobStatus::Confirmed),
            "abandoned" => Ok(JobStatus::Abandoned),
            other => Err(bad_value("load_jobs.status", other)),
        }
    }
}

/// A batch's state (see the module docs for the transitions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchStatus {
    Planned,
    Uploading,
    Accepted,
    Confirmed,
}

impl BatchStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            BatchStatus::Planned => "planned",
            BatchStatus::Uploading => "uploading",
            BatchStatus::Accepted => "accepted",
            BatchStatus::Confirmed => "confirmed",
        }
    }
    fn parse(s: &str) -> rusqlite::Result<Self> {
        match s {
            "planned" => Ok(BatchStatus::Planned),
            "uploading" => Ok(BatchStatus::Uploading),
            "accepted" => Ok(BatchStatus::Accepted),
            "confirmed" => Ok(BatchStatus::Confirmed),
            other => Err(bad_value("load_batches.status", other)),
        }
    }
    /// The timestamp column set when entering this state.
    fn time_column(self) -> Option<&'static str> {
        match self {
            BatchStatus::Planned => None,
            BatchStatus::Uploading => Some("uploading_at"),
            BatchStatus::Accepted => Some("accepted_at"),
            BatchStatus::Confirmed => Some("confirmed_at"),
        }
    }
}

pub(super) fn bad_value(column: &str, value: &str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        0,
        rusqlite::types::Type::Text,
        format!("unexpected {column} value {value:?}").into(),
    )
}

/// A stored job.
#[derive(Debug, Clone, serde::Serialize)]
pub struct JobRecord {
    pub id: i64,
    pub input_path: String,
    pub content_hash: String,
    /// JSON written by the load module: the settings that shaped the batches.
    pub settings: String,
    pub status: JobStatus,
    pub entries: u64,
    pub created_at: String,
    pub confirmed_at: Option<String>,
    /// The register the job loads ([`super::outbox::Register::key`]); `None`: unknown, so it
    /// holds removes of every register while running.
    pub register: Option<String>,
}

/// What [`Store::abandon_job_with`] does with the operations held in the job's register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeldAtAbandon {
    /// Abandon only if none waits.
    Refuse,
    /// Abandon and leave them queued, the barrier down: the caller sends them now.
    Release,
    /// Abandon and finish them as dropped, never sent.
    Drop,
}

/// The answer of [`Store::abandon_job_with`].
#[derive(Debug)]
pub enum Abandonment {
    NoSuchJob,
    /// Confirmed jobs are complete: nothing to abandon (nothing changed).
    Confirmed,
    /// Held operations wait and the rule was [`HeldAtAbandon::Refuse`]: nothing changed.
    HeldWaiting {
        held: Vec<HeldOp>,
    },
    /// The job was abandoned before and there is nothing (more) to do: nothing changed. `held`:
    /// what still waits in its register (with `Refuse`).
    AlreadyAbandoned {
        held: Vec<HeldOp>,
    },
    /// Abandoned now (`was_running`), or abandoned before and its held operations settled now.
    /// `held`: the operations that waited, in issue order (dropped ones marked so).
    Abandoned {
        was_running: bool,
        held: Vec<HeldOp>,
    },
}

/// A batch to create with its job.
#[derive(Debug, Clone)]
pub struct NewBatch {
    pub first_entry: u64,
    pub entry_count: u64,
    pub bytes: u64,
    pub correlation_id: Uuid,
}

/// A stored batch.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BatchRecord {
    pub seq: u32,
    pub first_entry: u64,
    pub entry_count: u64,
    pub bytes: u64,
    pub correlation_id: Uuid,
    pub status: BatchStatus,
    pub uploading_at: Option<String>,
    pub accepted_at: Option<String>,
    pub confirmed_at: Option<String>,
    /// Offset in the batch of the entry not visible before the upload, which confirms it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub witness: Option<u64>,
    /// Whether the entries were checked before the upload (a witness chosen, or none found).
    #[serde(skip)]
    pub witness_checked: bool,
    /// How the batch was confirmed: `witness`, `witness+time` or `time`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confirmed_by: Option<String>,
    /// Uploads repeated after one whose fate was unknown and whose entries were not found.
    pub resends: u32,
}

const JOB_COLUMNS: &str = "id, input_path, content_hash, settings, status, entries, created_at, confirmed_at, register";

fn job_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<JobRecord> {
    Ok(JobRecord {
        id: r.get(0)?,
        input_path: r.get(1)?,
        content_hash: r.get(2)?,
        settings: r.get(3)?,
        status: JobStatus::parse(&r.get::<_, String>(4)?)?,
        entries: r.get(5)?,
        created_at: r.get(6)?,
        confirmed_at: r.get(7)?,
        register: r.get(8)?,
    })
}

/// The register named by a job's settings JSON (`environment`, `kfr_base_url`, `org_number`), if
/// it names all three.
pub(super) fn register_of_settings(settings: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(settings).ok()?;
    let field = |k: &str| {
        v.get(k)
            .and_then(|x| x.as_str())
            .filter(|x| !x.is_empty())
            .map(str::to_string)
    };
    Some(
        super::outbox::Register {
            environment: field("environment")?,
            base_url: field("kfr_base_url")?,
            org_number: field("org_number")?,
        }
        .key(),
    )
}

/// Migration 4's part SQL cannot do: the register of every job planned before it, from its
/// settings; then held operations moved into the outbox without a register take the running
/// job's (they were held by it). What stays unknown stays NULL / ''.
pub(super) fn fill_registers(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<()> {
    let jobs: Vec<(i64, String)> = {
        let mut stmt = tx.prepare("SELECT id, settings FROM load_jobs WHERE register IS NULL")?;
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?
    };
    for (id, settings) in jobs {
        if let Some(register) = register_of_settings(&settings) {
            tx.execute(
                "UPDATE load_jobs SET register = ?1 WHERE id = ?2",
                params![register, id],
            )?;
        }
    }
    let running: Option<Option<String>> = tx
        .query_row(
            "SELECT register FROM load_jobs WHERE status = 'running' ORDER BY id DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(Some(register)) = running {
        tx.execute("UPDATE outbox SET register = ?1 WHERE register = ''", [register])?;
    }
    Ok(())
}

impl Store {
    /// Creates a job with all its batches `planned`, in one transaction.
    pub fn create_job(
        &mut self,
        input_path: &str,
        content_hash: &str,
        settings: &str,
        entries: u64,
        batches: &[NewBatch],
    ) -> anyhow::Result<i64> {
        let now = now_text();
        let tx = self
            .conn()
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute(
            "INSERT INTO load_jobs (input_path, content_hash, settings, status, entries, created_at, updated_at, register)
             VALUES (?1, ?2, ?3, 'running', ?4, ?5, ?5, ?6)",
            params![
                input_path,
                content_hash,
                settings,
                entries,
                now,
                register_of_settings(settings)
            ],
        )?;
        let job = tx.last_insert_rowid();
        {
            let mut stmt = tx.prepare(
                "INSERT INTO load_batches (job_id, seq, first_entry, entry_count, bytes, correlation_id, status)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'planned')",
            )?;
            for (i, b) in batches.iter().enumerate() {
                stmt.execute(params![
                    job,
                    i as u32 + 1,
                    b.first_entry,
                    b.entry_count,
                    b.bytes,
                    b.correlation_id.to_string()
                ])?;
            }
        }
        tx.commit()?;
        Ok(job)
    }

    /// The most recent job that is not confirmed, if any (at most one exists: `kfr load` refuses
    /// to start a second one).
    pub fn unconfirmed_job(&mut self) -> anyhow::Result<Option<JobRecord>> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM load_jobs WHERE status = 'running' ORDER BY id DESC LIMIT 1");
        Ok(self.conn().query_row(&sql, [], job_row).optional()?)
    }

    /// Every job, oldest first.
    pub fn jobs(&mut self) -> anyhow::Result<Vec<JobRecord>> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM load_jobs ORDER BY id");
        let mut stmt = self.conn().prepare(&sql)?;
        let rows = stmt.query_map([], job_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The most recent job of any state.
    pub fn latest_job(&mut self) -> anyhow::Result<Option<JobRecord>> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM load_jobs ORDER BY id DESC LIMIT 1");
        Ok(self.conn().query_row(&sql, [], job_row).optional()?)
    }

    pub fn job(&mut self, id: i64) -> anyhow::Result<JobRecord> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM load_jobs WHERE id = ?1");
        Ok(self.conn().query_row(&sql, [id], job_row)?)
    }

    /// A job's batches in upload order.
    pub fn batches(&mut self, job: i64) -> anyhow::Result<Vec<BatchRecord>> {
        let mut stmt = self.conn().prepare(
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
                status: BatchStatus::parse(&r.get::<_, String>(5)?)?,
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
    }

    /// Records the entry that will confirm a batch (checked not visible before its upload), or
    /// that none was found (`None`). Committed before the upload, so a resume knows it.
    pub fn set_batch_witness(&mut self, job: i64, seq: u32, witness: Option<u64>) -> anyhow::Result<()> {
        let n = self.conn().execute(
            "UPDATE load_batches SET witness = ?1, witness_checked = 1 WHERE job_id = ?2 AND seq = ?3",
            params![witness, job, seq],
        )?;
        anyhow::ensure!(n == 1, "load job {job} has no batch {seq}");
        Ok(())
    }

    /// Records how a batch was confirmed (`witness`, `witness+time`, `time`).
    pub fn set_batch_confirmed_by(&mut self, job: i64, seq: u32, by: &str) -> anyhow::Result<()> {
        self.conn().execute(
            "UPDATE load_batches SET confirmed_by = ?1 WHERE job_id = ?2 AND seq = ?3",
            params![by, job, seq],
        )?;
        Ok(())
    }

    /// Counts one more upload of a batch after an upload whose fate was unknown.
    pub fn count_batch_resend(&mut self, job: i64, seq: u32) -> anyhow::Result<()> {
        self.conn().execute(
            "UPDATE load_batches SET resends = resends + 1 WHERE job_id = ?1 AND seq = ?2",
            params![job, seq],
        )?;
        Ok(())
    }

    /// Moves a batch to `status`, stamping the state's time column (`planned` clears nothing: a
    /// batch sent back to planned keeps its history of attempts in `uploading_at`).
    pub fn set_batch_status(&mut self, job: i64, seq: u32, status: BatchStatus) -> anyhow::Result<()> {
        let now = now_text();
        let tx = self
            .conn()
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let sql = match status.time_column() {
            Some(col) => format!("UPDATE load_batches SET status = ?1, {col} = ?4 WHERE job_id = ?2 AND seq = ?3"),
            None => "UPDATE load_batches SET status = ?1 WHERE job_id = ?2 AND seq = ?3 AND ?4 IS NOT NULL".to_string(),
        };
        let n = tx.execute(&sql, params![status.as_str(), job, seq, now])?;
        anyhow::ensure!(n == 1, "load job {job} has no batch {seq}");
        tx.execute("UPDATE load_jobs SET updated_at = ?1 WHERE id = ?2", params![now, job])?;
        tx.commit()?;
        Ok(())
    }

    /// Gives up a running job: it will never be confirmed, and the barrier it held lifts (its
    /// held removes may then go). Refused for a job that is not running.
    pub fn abandon_job(&mut self, id: i64) -> anyhow::Result<()> {
        let now = now_text();
        let n = self.conn().execute(
            "UPDATE load_jobs SET status = 'abandoned', abandoned_at = ?1, updated_at = ?1
             WHERE id = ?2 AND status = 'running'",
            params![now, id],
        )?;
        anyhow::ensure!(
            n == 1,
            "load job {id} is not running (only a running job can be abandoned)"
        );
        Ok(())
    }

    /// Abandons job `id` (`kfr load abandon`) deciding, in the same transaction, what becomes of
    /// the operations held in its register (docs/load.md): none may be lost silently, and none
    /// may slip out between the barrier lifting and the decision. See [`Abandonment`] for the
    /// answers. A job already abandoned may be asked again, to settle what it left held.
    pub fn abandon_job_with(&mut self, id: i64, rule: HeldAtAbandon) -> anyhow::Result<Abandonment> {
        let now = now_text();
        let tx = self
            .conn()
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let sql = format!("SELECT {JOB_COLUMNS} FROM load_jobs WHERE id = ?1");
        let Some(job) = tx.query_row(&sql, [id], job_row).optional()? else {
            return Ok(Abandonment::NoSuchJob);
        };
        if job.status == JobStatus::Confirmed {
            return Ok(Abandonment::Confirmed);
        }
        let register = job.register.clone().unwrap_or_default();
        // Held operations are the outbox events of `kfr remove` / `kfr add` (store::queue).
        let held: Vec<(HeldOp, bool)> = {
            let mut stmt = tx.prepare(
                "SELECT seq, customer_id, op, correlation_id, received_at, state, attempts, last_error, claimer
                 FROM outbox WHERE source IN ('kfr remove', 'kfr add') AND finished_at IS NULL AND register = ?1
                 ORDER BY seq",
            )?;
            stmt.query_map([&register], |r| {
                let cid: String = r.get(3)?;
                let op: String = r.get(2)?;
                let state: String = r.get(5)?;
                let claimer: Option<String> = r.get(8)?;
                let elsewhere =
                    matches!(state.as_str(), "in_flight" | "accepted") && claimer.as_deref() != Some("queue");
                Ok((
                    HeldOp {
                        id: r.get(0)?,
                        customer_id: r.get(1)?,
                        operation: match op.as_str() {
                            "add" => super::Operation::Add,
                            "remove" => super::Operation::Remove,
                            other => return Err(bad_value("outbox.op", other)),
                        },
                        correlation_id: Uuid::parse_str(&cid).map_err(|_| bad_value("outbox.correlation_id", &cid))?,
                        queued_at: r.get(4)?,
                        state: super::OpState::Queued,
                        attempts: r.get(6)?,
                        last_error: r.get(7)?,
                        settled_at: None,
                        outcome: None,
                    },
                    elsewhere,
                ))
            })?
            .collect::<Result<_, _>>()?
        };
        let running = job.status == JobStatus::Running;
        if held.is_empty() && !running || !held.is_empty() && rule == HeldAtAbandon::Refuse {
            let held = held.into_iter().map(|(op, _)| op).collect();
            return Ok(if running {
                Abandonment::HeldWaiting { held }
            } else {
                Abandonment::AlreadyAbandoned { held }
            });
        }
        if rule == HeldAtAbandon::Drop && held.iter().any(|(_, elsewhere)| *elsewhere) {
            anyhow::bail!(
                "a held operation of load job {id} is being sent by another process (the sync agent) right now; run the command again when it has been answered"
            );
        }
        if running {
            tx.execute(
                "UPDATE load_jobs SET status = 'abandoned', abandoned_at = ?1, updated_at = ?1 WHERE id = ?2",
                params![now, id],
            )?;
        }
        let mut ops = vec![];
        for (mut op, _) in held {
            if rule == HeldAtAbandon::Drop {
                // Finished without being sent, like a dropped dead letter: the ledger is not
                // touched, and the customer's next event (if any) becomes its head.
                tx.execute(
                    "UPDATE outbox SET state = 'dropped', finished_at = ?1, claimer = NULL, next_attempt_at = NULL,
                         last_error = ?2 WHERE seq = ?3",
                    params![
                        super::outbox_sqlite::ts(chrono::Utc::now()),
                        format!("dropped: load job {id} abandoned by an operator (kfr load abandon --drop-held)"),
                        op.id
                    ],
                )?;
                super::outbox_sqlite::finish_head(&tx, op.id, &register, &op.customer_id)?;
                op.state = super::OpState::Settled;
                op.outcome = Some("dropped".into());
            }
            ops.push(op);
        }
        tx.commit()?;
        Ok(Abandonment::Abandoned {
            was_running: running,
            held: ops,
        })
    }

    /// Marks the job confirmed when every batch is; returns whether it now is.
    pub fn confirm_job_if_complete(&mut self, job: i64) -> anyhow::Result<bool> {
        let now = now_text();
        let tx = self
            .conn()
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let open: i64 = tx.query_row(
            "SELECT COUNT(*) FROM load_batches WHERE job_id = ?1 AND status != 'confirmed'",
            [job],
            |r| r.get(0),
        )?;
        if open > 0 {
            return Ok(false);
        }
        // A job confirmed earlier keeps its original confirmation time.
        tx.execute(
            "UPDATE load_jobs SET status = 'confirmed', confirmed_at = ?1, updated_at = ?1 WHERE id = ?2 AND status = 'running'",
            params![now, job],
        )?;
        tx.commit()?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("s.db")).unwrap();
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

    #[test]
    fn job_lifecycle() {
        let (_d, mut s) = store();
        assert!(s.unconfirmed_job().unwrap().is_none());
        let job = s
            .create_job("c.csv", "abc", "{}", 5, &[batch(0, 3), batch(3, 2)])
            .unwrap();
        let j = s.unconfirmed_job().unwrap().unwrap();
        assert_eq!((j.id, j.status, j.entries), (job, JobStatus::Running, 5));
        let b = s.batches(job).unwrap();
        assert_eq!(b.len(), 2);
        assert_eq!((b[1].seq, b[1].first_entry, b[1].entry_count), (2, 3, 2));
        assert!(b.iter().all(|b| b.status == BatchStatus::Planned));

        for st in [BatchStatus::Uploading, BatchStatus::Accepted, BatchStatus::Confirmed] {
            s.set_batch_status(job, 1, st).unwrap();
        }
        assert!(!s.confirm_job_if_complete(job).unwrap());
        s.set_batch_status(job, 2, BatchStatus::Uploading).unwrap();
        s.set_batch_status(job, 2, BatchStatus::Planned).unwrap();
        let b = s.batches(job).unwrap();
        assert_eq!(b[1].status, BatchStatus::Planned);
        assert!(b[1].uploading_at.is_some(), "attempt history is kept");
        s.set_batch_status(job, 2, BatchStatus::Confirmed).unwrap();
        assert!(s.confirm_job_if_complete(job).unwrap());
        assert!(s.unconfirmed_job().unwrap().is_none());
        assert_eq!(s.latest_job().unwrap().unwrap().status, JobStatus::Confirmed);
        assert!(s.set_batch_status(job, 9, BatchStatus::Accepted).is_err());
    }

    #[test]
    fn a_job_knows_its_register_and_can_be_abandoned() {
        let (_d, mut s) = store();
        let settings = r#"{"environment":"test","kfr_base_url":"https://kfr.example/api/","org_number":"923609016"}"#;
        let job = s.create_job("c.csv", "abc", settings, 1, &[batch(0, 1)]).unwrap();
        let reg = crate::store::outbox::Register {
            environment: "test".into(),
            base_url: "https://kfr.example:443/api".into(),
            org_number: "923609016".into(),
        };
        assert_eq!(s.job(job).unwrap().register, Some(reg.key()));
        let old = s.create_job("d.csv", "abd", "{}", 1, &[]).unwrap();
        assert_eq!(s.job(old).unwrap().register, None, "unknown: holds every register");

        s.abandon_job(job).unwrap();
        assert_eq!(s.job(job).unwrap().status, JobStatus::Abandoned);
        assert_eq!(s.unconfirmed_job().unwrap().map(|j| j.id), Some(old));
        assert!(s.abandon_job(job).is_err(), "only a running job");
    }

    /// Abandoning decides about held operations in the same transaction: refused while any
    /// waits (nothing changes), dropped ones are finished unsent and the customer's next event
    /// becomes its head, released ones stay queued with the barrier down.
    #[test]
    fn abandoning_settles_held_operations_in_one_step() {
        use crate::store::{CustomerQueue as _, Operation};
        let x = "02013299997";
        let (_d, mut s) = store();
        let settings = r#"{"environment":"test","kfr_base_url":"https://kfr.example/api","org_number":"923609016"}"#;
        let job = s.create_job("c.csv", "abc", settings, 1, &[batch(0, 1)]).unwrap();
        s.enqueue(x, Operation::Remove, Uuid::new_v4()).unwrap().unwrap();
        s.enqueue(x, Operation::Add, Uuid::new_v4()).unwrap().unwrap();

        let held = |a: Abandonment| match a {
            Abandonment::HeldWaiting { held } => held.len(),
            other => panic!("{other:?}"),
        };
        assert_eq!(held(s.abandon_job_with(job, HeldAtAbandon::Refuse).unwrap()), 2);
        assert_eq!(s.job(job).unwrap().status, JobStatus::Running, "nothing changed");
        assert!(matches!(
            s.abandon_job_with(job + 1, HeldAtAbandon::Drop).unwrap(),
            Abandonment::NoSuchJob
        ));

        match s.abandon_job_with(job, HeldAtAbandon::Drop).unwrap() {
            Abandonment::Abandoned { was_running, held } => {
                assert!(was_running);
                let ops: Vec<_> = held.iter().map(|h| (h.operation, h.outcome.as_deref())).collect();
                assert_eq!(
                    ops,
                    [(Operation::Remove, Some("dropped")), (Operation::Add, Some("dropped"))]
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(s.job(job).unwrap().status, JobStatus::Abandoned);
        assert!(s.waiting().unwrap().is_empty(), "dropped: finished");
        assert!(s.claim().unwrap().is_none(), "never sent");
        assert!(matches!(
            s.abandon_job_with(job, HeldAtAbandon::Refuse).unwrap(),
            Abandonment::AlreadyAbandoned { held } if held.is_empty()
        ));
        // The customer's queue moved on: a new remove goes straight out (no barrier, no head).
        assert!(s.enqueue(x, Operation::Remove, Uuid::new_v4()).unwrap().is_none());

        // Release: abandoned, and the held operation is handed out in order.
        let (_d2, mut s) = store();
        let job = s.create_job("c.csv", "abc", settings, 1, &[batch(0, 1)]).unwrap();
        s.enqueue(x, Operation::Remove, Uuid::new_v4()).unwrap().unwrap();
        assert!(s.claim().unwrap().is_none(), "barrier up");
        assert!(matches!(
            s.abandon_job_with(job, HeldAtAbandon::Release).unwrap(),
            Abandonment::Abandoned { was_running: true, ref held } if held.len() == 1
        ));
        assert_eq!(s.claim().unwrap().unwrap().operation, Operation::Remove);
        s.set_batch_status(job, 1, BatchStatus::Confirmed).unwrap();
        assert!(
            matches!(
                s.abandon_job_with(job, HeldAtAbandon::Drop).unwrap(),
                Abandonment::Abandoned { was_running: false, .. }
            ),
            "abandoned before: what it held may still be settled"
        );
    }
}
