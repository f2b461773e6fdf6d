//! Initial-load jobs and their batches on PostgreSQL: the same states and rules as the SQLite
//! backend's `jobs` (batch states move only forward, uploading → planned only after a definite
//! refusal; a running job holds removes of its register back; an abandoned job takes no more
//! writes).
//!
//! Two processes may act on one job at once (the load writing its batches, an operator
//! abandoning it from another host), so every write first locks the job's row: the load's
//! writes take it `FOR SHARE` and are refused once the job is abandoned, an abandon takes it
//! `FOR UPDATE`, so neither commits on a state the other has changed.

use super::db::{Fault, PgBackend, PgTx, Tx};
use super::history::{Line, bad_value};
use super::operations::drop_unsent;
use super::rows::{event_columns, event_row, lock_customers};
use crate::store::backend::Jobs;
use crate::store::error::StoreError;
use crate::store::time_text;
use crate::store::types::*;
use chrono::{DateTime, Utc};

const JOB_COLUMNS: &str = "id, input_path, content_hash, settings, status, entries, created_at, confirmed_at, register";

/// The register named by a job's settings JSON (`environment`, `kfr_base_url`, `org_number`), if
/// it names all three (as the SQLite backend decides it).
fn register_of_settings(settings: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(settings).ok()?;
    let field = |k: &str| {
        v.get(k)
            .and_then(|x| x.as_str())
            .filter(|x| !x.is_empty())
            .map(str::to_string)
    };
    Some(
        Register {
            environment: field("environment")?,
            base_url: field("kfr_base_url")?,
            org_number: field("org_number")?,
        }
        .key(),
    )
}

fn count(v: i64, column: &str) -> Result<u64, Fault> {
    u64::try_from(v).map_err(|_| bad_value(column, &v.to_string()))
}

fn job_row(r: &postgres::Row) -> Result<JobRecord, Fault> {
    let created_at: DateTime<Utc> = r.get(6);
    let confirmed_at: Option<DateTime<Utc>> = r.get(7);
    Ok(JobRecord {
        id: r.get(0),
        input_path: r.get(1),
        content_hash: r.get(2),
        settings: r.get(3),
        status: match r.get::<_, &str>(4) {
            "running" => JobStatus::Running,
            "confirmed" => JobStatus::Confirmed,
            "abandoned" => JobStatus::Abandoned,
            other => return Err(bad_value("load_jobs.status", other)),
        },
        entries: count(r.get(5), "load_jobs.entries")?,
        // Job and batch records carry their times as text, as the SQLite backend stores them.
        created_at: time_text(created_at),
        confirmed_at: confirmed_at.map(time_text),
        register: r.get(8),
    })
}

fn batch_row(r: &postgres::Row) -> Result<BatchRecord, Fault> {
    let seq: i32 = r.get(0);
    let at = |i: usize| r.get::<_, Option<DateTime<Utc>>>(i).map(time_text);
    let witness: Option<i64> = r.get(9);
    let resends: i32 = r.get(12);
    Ok(BatchRecord {
        seq: u32::try_from(seq).map_err(|_| bad_value("load_batches.seq", &seq.to_string()))?,
        first_entry: count(r.get(1), "load_batches.first_entry")?,
        entry_count: count(r.get(2), "load_batches.entry_count")?,
        bytes: count(r.get(3), "load_batches.bytes")?,
        correlation_id: r.get(4),
        status: match r.get::<_, &str>(5) {
            "planned" => BatchStatus::Planned,
            "uploading" => BatchStatus::Uploading,
            "accepted" => BatchStatus::Accepted,
            "confirmed" => BatchStatus::Confirmed,
            other => return Err(bad_value("load_batches.status", other)),
        },
        uploading_at: at(6),
        accepted_at: at(7),
        confirmed_at: at(8),
        witness: witness.map(|w| count(w, "load_batches.witness")).transpose()?,
        witness_checked: r.get(10),
        confirmed_by: r.get(11),
        resends: u32::try_from(resends).map_err(|_| bad_value("load_batches.resends", &resends.to_string()))?,
    })
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

fn i64_of(v: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Other(format!("{what} {v} is too large to store")))
}

/// One job by id, `FOR UPDATE` or `FOR SHARE` as asked.
fn job_locked(tx: &mut PgTx<'_>, id: i64, lock: &str) -> Result<Option<JobRecord>, Fault> {
    let sql = format!("SELECT {JOB_COLUMNS} FROM load_jobs WHERE id = $1 {lock}");
    tx.query_opt(&sql, &[&id])?.as_ref().map(job_row).transpose()
}

impl PgBackend {
    fn one_job(
        &mut self,
        filter: &str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> Result<Option<JobRecord>, StoreError> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM load_jobs {filter}");
        self.tx(Tx::Read, |tx| {
            tx.query_opt(&sql, params)?.as_ref().map(job_row).transpose()
        })
    }
}

impl Jobs for PgBackend {
    fn create_job(&mut self, job: &NewJob, now: DateTime<Utc>) -> Result<i64, StoreError> {
        let entries = i64_of(job.entries, "the job's entry count")?;
        let register = register_of_settings(&job.settings);
        // The batches as one array per column, inserted in one statement: a job of a large
        // file plans thousands.
        let n = job.batches.len();
        let (mut seqs, mut firsts, mut counts, mut bytes, mut cids) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for (i, b) in job.batches.iter().enumerate() {
            seqs.push(i32::try_from(i + 1).map_err(|_| StoreError::Other("too many batches in one job".into()))?);
            firsts.push(i64_of(b.first_entry, "a batch's first entry")?);
            counts.push(i64_of(b.entry_count, "a batch's entry count")?);
            bytes.push(i64_of(b.bytes, "a batch's size")?);
            cids.push(b.correlation_id);
        }
        self.tx(Tx::Write, |tx| {
            let id: i64 = tx
                .query_one(
                    "INSERT INTO load_jobs (input_path, content_hash, settings, status, entries, created_at, updated_at, register)
                     VALUES ($1, $2, $3, 'running', $4, $5, $5, $6) RETURNING id",
                    &[&job.input_path, &job.content_hash, &job.settings, &entries, &now, &register],
                )?
                .get(0);
            tx.execute(
                "INSERT INTO load_batches (job_id, seq, first_entry, entry_count, bytes, correlation_id, status)
                 SELECT $1, s, f, c, b, u, 'planned'
                 FROM unnest($2::integer[], $3::bigint[], $4::bigint[], $5::bigint[], $6::uuid[]) AS x(s, f, c, b, u)",
                &[&id, &seqs, &firsts, &counts, &bytes, &cids],
            )?;
            Ok(id)
        })
    }

    fn unconfirmed_job(&mut self) -> Result<Option<JobRecord>, StoreError> {
        self.one_job("WHERE status = 'running' ORDER BY id DESC LIMIT 1", &[])
    }

    fn jobs(&mut self) -> Result<Vec<JobRecord>, StoreError> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM load_jobs ORDER BY id");
        self.tx(Tx::Read, |tx| tx.query(&sql, &[])?.iter().map(job_row).collect())
    }

    fn latest_job(&mut self) -> Result<Option<JobRecord>, StoreError> {
        self.one_job("ORDER BY id DESC LIMIT 1", &[])
    }

    fn job(&mut self, id: i64) -> Result<Option<JobRecord>, StoreError> {
        self.one_job("WHERE id = $1", &[&id])
    }

    fn batches(&mut self, job: i64) -> Result<Vec<BatchRecord>, StoreError> {
        self.tx(Tx::Read, |tx| {
            tx.query(
                "SELECT seq, first_entry, entry_count, bytes, correlation_id, status, uploading_at, accepted_at, confirmed_at,
                        witness, witness_checked, confirmed_by, resends
                 FROM load_batches WHERE job_id = $1 ORDER BY seq",
                &[&job],
            )?
            .iter()
            .map(batch_row)
            .collect()
        })
    }

    fn update_batch(&mut self, job: i64, seq: u32, change: &BatchChange, now: DateTime<Utc>) -> Result<(), StoreError> {
        let seq_i = i32::try_from(seq).map_err(|_| StoreError::job(job, format_args!("has no batch {seq}")))?;
        let witness = match change {
            BatchChange::Witness(w) => w.map(|w| i64_of(w, "a witness offset")).transpose()?,
            _ => None,
        };
        self.tx(Tx::Write, |tx| {
            // A load's writes stop once its job is not running: an operator who abandoned it
            // under the load (from any host) must not see batches confirmed behind their back.
            // `FOR SHARE` keeps an abandon from committing until this write has.
            match job_locked(tx, job, "FOR SHARE")? {
                None => return Err(Fault::Store(StoreError::job(job, "does not exist"))),
                Some(j) if j.status == JobStatus::Abandoned => {
                    return Err(Fault::Store(StoreError::job(
                        job,
                        "was abandoned by an operator (kfr load abandon); this load writes nothing more to it",
                    )));
                }
                Some(_) => {}
            }
            let n = match change {
                BatchChange::Status(status) => match time_column(*status) {
                    Some(col) => tx.execute(
                        &format!("UPDATE load_batches SET status = $1, {col} = $4 WHERE job_id = $2 AND seq = $3"),
                        &[&status.as_str(), &job, &seq_i, &now],
                    )?,
                    None => tx.execute(
                        "UPDATE load_batches SET status = $1 WHERE job_id = $2 AND seq = $3",
                        &[&status.as_str(), &job, &seq_i],
                    )?,
                },
                BatchChange::Witness(_) => tx.execute(
                    "UPDATE load_batches SET witness = $1, witness_checked = true WHERE job_id = $2 AND seq = $3",
                    &[&witness, &job, &seq_i],
                )?,
                BatchChange::ConfirmedBy(by) => tx.execute(
                    "UPDATE load_batches SET confirmed_by = $1 WHERE job_id = $2 AND seq = $3",
                    &[by, &job, &seq_i],
                )?,
                BatchChange::Resent => tx.execute(
                    "UPDATE load_batches SET resends = resends + 1 WHERE job_id = $1 AND seq = $2",
                    &[&job, &seq_i],
                )?,
            };
            if n != 1 {
                return Err(Fault::Store(StoreError::job(job, format_args!("has no batch {seq}"))));
            }
            tx.execute("UPDATE load_jobs SET updated_at = $1 WHERE id = $2", &[&now, &job])?;
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
        self.tx(Tx::Write, |tx| {
            let Some(job) = job_locked(tx, id, "FOR UPDATE")? else {
                return Ok(Abandonment::NoSuchJob);
            };
            if job.status == JobStatus::Confirmed {
                return Ok(Abandonment::Confirmed);
            }
            let register = job.register.clone().unwrap_or_default();
            // Held operations are the outbox events of `kfr remove` / `kfr add` (OWN_SOURCES).
            // Their customers' queues are locked first (in key order, as the outbox takes
            // several), then the events themselves, so none is claimed or joined while deciding.
            let customers: Vec<String> = tx
                .query(
                    "SELECT DISTINCT customer_id FROM outbox
                     WHERE source = ANY($2) AND finished_at IS NULL AND register = $1",
                    &[&register, &OWN_SOURCES.as_slice()],
                )?
                .iter()
                .map(|r| r.get(0))
                .collect();
            let keys: Vec<(&str, &str)> = customers.iter().map(|c| (register.as_str(), c.as_str())).collect();
            lock_customers(tx, &keys)?;
            let sql = format!(
                "SELECT {} FROM outbox
                 WHERE source = ANY($2) AND finished_at IS NULL AND register = $1 ORDER BY seq FOR UPDATE",
                event_columns("")
            );
            let held: Vec<OutboxEvent> = tx
                .query(&sql, &[&register, &OWN_SOURCES.as_slice()])?
                .iter()
                .map(event_row)
                .collect::<Result<_, _>>()?;
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
                    "UPDATE load_jobs SET status = 'abandoned', abandoned_at = $1, updated_at = $1
                     WHERE id = $2 AND status = 'running'",
                    &[&now, &id],
                )?;
            }
            let what = match rule {
                HeldAtAbandon::Drop => "abandon --drop-held",
                HeldAtAbandon::Release => "abandon --send-held",
                HeldAtAbandon::Refuse => "abandon",
            };
            let detail = format!(
                "load job {id}{}",
                action.reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default()
            );
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
                    let why = format!("dropped: load job {id} abandoned by an operator (kfr load abandon --drop-held)");
                    if !drop_unsent(tx, &op, now, Some(&why))? {
                        return Err(Fault::Store(StoreError::Conflict(format!(
                            "a held operation of load job {id} changed while it was being dropped"
                        ))));
                    }
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
        self.tx(Tx::Write, |tx| {
            // The job's row first: an abandon from another host waits, or is seen.
            let Some(j) = job_locked(tx, job, "FOR UPDATE")? else {
                return Err(Fault::Store(StoreError::job(job, "does not exist")));
            };
            let open: i64 = tx
                .query_one(
                    "SELECT count(*) FROM load_batches WHERE job_id = $1 AND status <> 'confirmed'",
                    &[&job],
                )?
                .get(0);
            if open > 0 {
                return Ok(false);
            }
            // A job confirmed earlier keeps its original confirmation time; an abandoned one
            // stays abandoned (the load under it is told so by `update_batch`).
            match j.status {
                JobStatus::Running => {
                    tx.execute(
                        "UPDATE load_jobs SET status = 'confirmed', confirmed_at = $1, updated_at = $1
                         WHERE id = $2 AND status = 'running'",
                        &[&now, &job],
                    )?;
                    Ok(true)
                }
                JobStatus::Confirmed => Ok(true),
                JobStatus::Abandoned => Ok(false),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::backend::{History as _, Operations as _};
    use crate::store::conformance::t;
    use crate::store::postgres::operations::tests::raw_event;
    use crate::store::postgres::tests::store;
    use uuid::Uuid;

    const SETTINGS: &str =
        r#"{"environment":"test","kfr_base_url":"https://kfr.example/api/","org_number":"923609016"}"#;

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
    fn job_lifecycle_on_postgres() {
        let (_db, mut s) = store();
        assert!(s.unconfirmed_job().unwrap().is_none());
        let planned = vec![batch(0, 3), batch(3, 2)];
        let cids: Vec<Uuid> = planned.iter().map(|b| b.correlation_id).collect();
        let job = s.create_job(&new_job("{}", planned), t(0)).unwrap();
        let j = s.unconfirmed_job().unwrap().unwrap();
        assert_eq!(
            (j.id, j.status, j.entries, j.register),
            (job, JobStatus::Running, 5, None)
        );
        assert_eq!(
            j.created_at, "2030-01-01T00:00:00.000Z",
            "times as the SQLite backend writes them"
        );
        let b = s.batches(job).unwrap();
        assert_eq!(b.len(), 2);
        assert_eq!(
            (b[1].seq, b[1].first_entry, b[1].entry_count, b[1].bytes),
            (2, 3, 2, 102)
        );
        assert_eq!(b.iter().map(|b| b.correlation_id).collect::<Vec<_>>(), cids);
        assert!(b.iter().all(|b| b.status == BatchStatus::Planned && !b.witness_checked));

        let status = |s: &mut PgBackend, seq, st| s.update_batch(job, seq, &BatchChange::Status(st), t(1));
        for st in [BatchStatus::Uploading, BatchStatus::Accepted, BatchStatus::Confirmed] {
            status(&mut s, 1, st).unwrap();
        }
        assert!(!s.confirm_job_if_complete(job, t(2)).unwrap());
        status(&mut s, 2, BatchStatus::Uploading).unwrap();
        status(&mut s, 2, BatchStatus::Planned).unwrap();
        s.update_batch(job, 2, &BatchChange::Witness(None), t(1)).unwrap();
        let b = s.batches(job).unwrap();
        assert_eq!(b[1].status, BatchStatus::Planned);
        assert!(b[1].uploading_at.is_some(), "attempt history is kept");
        assert!(b[1].witness_checked && b[1].witness.is_none());
        status(&mut s, 2, BatchStatus::Confirmed).unwrap();
        assert!(s.confirm_job_if_complete(job, t(3)).unwrap());
        assert!(
            s.confirm_job_if_complete(job, t(9)).unwrap(),
            "confirmed stays confirmed"
        );
        assert!(s.unconfirmed_job().unwrap().is_none());
        let latest = s.latest_job().unwrap().unwrap();
        assert_eq!(
            (latest.status, latest.confirmed_at.as_deref()),
            (JobStatus::Confirmed, Some("2030-01-01T00:00:03.000Z")),
            "the first confirmation's time is kept"
        );
        let err = status(&mut s, 9, BatchStatus::Accepted).unwrap_err();
        assert!(err.to_string().contains("has no batch 9"), "{err}");
        let err = s.update_batch(job + 1, 1, &BatchChange::Resent, t(1)).unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
    }

    #[test]
    fn a_job_knows_its_register_and_a_load_cannot_write_to_an_abandoned_one_on_postgres() {
        let (_db, mut s) = store();
        let job = s.create_job(&new_job(SETTINGS, vec![batch(0, 1)]), t(0)).unwrap();
        let reg = Register {
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
        let history = s.history(None, None, None).unwrap();
        assert_eq!(history.len(), 1, "{history:?}");
        assert_eq!(
            (
                history[0].outcome.as_str(),
                history[0].actor.as_deref(),
                history[0].detail.as_deref()
            ),
            ("abandon", Some("ops-test"), Some(&*format!("load job {job}: test")))
        );
        assert_eq!(s.jobs().unwrap().iter().map(|j| j.id).collect::<Vec<_>>(), [job, old]);
    }

    /// As on SQLite: refused while held operations wait (nothing changes); dropped ones are
    /// finished unsent, the customer's next event (the agent's) becoming its head; the held
    /// operation being sent right now makes a drop a conflict.
    #[test]
    fn abandoning_settles_held_operations_in_one_step_on_postgres() {
        let (_db, mut s) = store();
        let reg = register_of_settings(SETTINGS).unwrap();
        let job = s.create_job(&new_job(SETTINGS, vec![batch(0, 1)]), t(0)).unwrap();
        let r1 = raw_event(&mut s, &reg, "r1", "x", "remove", "kfr remove", "pending", true);
        let a1 = raw_event(&mut s, &reg, "a1", "x", "add", "kfr add", "pending", false);
        let agent = raw_event(&mut s, &reg, "agent", "x", "add", "http", "pending", false);

        let held = |a: Abandonment| match a {
            Abandonment::HeldWaiting { held } => held.iter().map(|e| e.seq).collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            held(s.abandon_job(job, HeldAtAbandon::Refuse, &operator(), t(1)).unwrap()),
            [r1, a1]
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
                let ops: Vec<_> = held.iter().map(|h| (h.seq, h.state)).collect();
                assert_eq!(ops, [(r1, EventState::Dropped), (a1, EventState::Dropped)]);
            }
            other => panic!("{other:?}"),
        }
        let rows = s
            .client
            .query(
                "SELECT seq, state, head IS NOT NULL, last_error FROM outbox ORDER BY seq",
                &[],
            )
            .unwrap();
        let got: Vec<(i64, String, bool)> = rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
        assert_eq!(
            got,
            [
                (r1, "dropped".into(), false),
                (a1, "dropped".into(), false),
                (agent, "pending".into(), true)
            ],
            "the agent's event is the head now"
        );
        assert!(rows[0].get::<_, Option<String>>(3).unwrap().contains("--drop-held"));
        assert_eq!(s.unfinished_count(&reg, "x").unwrap(), 1);
        let dropped: Vec<_> = s
            .history(Some("x"), None, None)
            .unwrap()
            .into_iter()
            .filter(|l| l.outcome == "dropped")
            .map(|l| (l.seq, l.kind, l.actor))
            .collect();
        assert_eq!(
            dropped,
            [
                (Some(r1), HistoryKind::Operator, Some("ops-test".into())),
                (Some(a1), HistoryKind::Operator, Some("ops-test".into()))
            ]
        );
        assert!(matches!(
            s.abandon_job(job, HeldAtAbandon::Refuse, &operator(), t(2)).unwrap(),
            Abandonment::AlreadyAbandoned { held } if held.is_empty()
        ));

        // A held operation in flight: a drop is refused whole.
        let (_db2, mut s) = store();
        let job = s.create_job(&new_job(SETTINGS, vec![]), t(0)).unwrap();
        raw_event(&mut s, &reg, "r1", "x", "remove", "kfr remove", "in_flight", true);
        let err = s.abandon_job(job, HeldAtAbandon::Drop, &operator(), t(1)).unwrap_err();
        assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
        assert_eq!(
            s.job(job).unwrap().unwrap().status,
            JobStatus::Running,
            "nothing changed"
        );
        assert!(matches!(
            s.abandon_job(job, HeldAtAbandon::Release, &operator(), t(1)).unwrap(),
            Abandonment::Abandoned { was_running: true, ref held } if held.len() == 1 && held[0].state == EventState::InFlight
        ));
    }
}
