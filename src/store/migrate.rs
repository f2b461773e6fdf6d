//! Moving an installation's state from one store to another (`kfr store migrate`, e.g. SQLite to
//! PostgreSQL) with nothing lost: every table row by row through [`super::backend::Transfer`],
//! then the counts compared. The target must be empty, and no agent or load may be running on
//! the source (each row is copied once, so a row written meanwhile would be left behind). A
//! migration that fails part-way is undone: the target is emptied again, and the source, which
//! is only read, stays the installation's store.

use super::error::StoreError;
use super::handle::Store;
use super::types::TransferTable;
use chrono::{DateTime, Utc};

/// Rows moved per page (one transaction on the target each).
const PAGE: usize = 2_000;

/// A heartbeat newer than this says an agent runs on the source.
const AGENT_ALIVE_SECS: i64 = 120;

/// What was moved: rows per table, counted on both sides after the copy.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Migrated {
    pub tables: Vec<(String, u64)>,
}

/// Why a migration did not happen (nothing of it is left in the target).
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("the target store already holds {rows} rows in {table}")]
    TargetNotEmpty { table: &'static str, rows: u64 },
    #[error("kfr sync ({holder}) was running on the source store {seconds} s ago")]
    AgentRunning { holder: String, seconds: i64 },
    #[error("a load or another migration holds the source store ({holder})")]
    WriterBusy { holder: String },
    #[error(
        "{table}: {source_rows} rows in the source but {target_rows} in the target after the copy; the target was emptied again"
    )]
    CountsDiffer {
        table: &'static str,
        source_rows: u64,
        target_rows: u64,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl crate::error::Hinted for MigrateError {
    fn hint(&self) -> Option<String> {
        Some(match self {
            MigrateError::TargetNotEmpty { .. } => {
                "migrate into a new, empty database (CREATE DATABASE … OWNER kfr); nothing was copied".into()
            }
            MigrateError::AgentRunning { .. } => {
                "stop every kfr sync of the installation (systemctl stop kfr-sync) and run the migration again".into()
            }
            MigrateError::WriterBusy { .. } => "let the load finish (kfr load status), then migrate".into(),
            MigrateError::CountsDiffer { .. } => {
                "nothing changed in the source: keep using it and report this as a kfr bug".into()
            }
            MigrateError::Store(e) => return e.hint(),
        })
    }
}

/// Copies every table of `from` into the empty `to`; `now` for the agent check.
pub async fn migrate(from: &Store, to: &Store, holder: &str, now: DateTime<Utc>) -> Result<Migrated, MigrateError> {
    for table in TransferTable::ALL {
        let rows = to.count_rows(table).await?;
        if rows > 0 {
            return Err(MigrateError::TargetNotEmpty {
                table: table.name(),
                rows,
            });
        }
    }
    if let Some(beat) = from
        .heartbeats(None)
        .await?
        .into_iter()
        .find(|b| (now - b.at).num_seconds() < AGENT_ALIVE_SECS && b.role != super::types::AgentRole::Stopped)
    {
        return Err(MigrateError::AgentRunning {
            seconds: (now - beat.at).num_seconds().max(0),
            holder: beat.holder,
        });
    }
    if let Some(other) = from.take_writer(holder.to_string()).await? {
        return Err(MigrateError::WriterBusy { holder: other });
    }
    if let Some(other) = to.take_writer(holder.to_string()).await? {
        return Err(MigrateError::WriterBusy { holder: other });
    }
    match copy(from, to).await {
        Ok(moved) => Ok(moved),
        Err(e) => {
            // Undo: the target held nothing before, so emptying it restores it exactly.
            if let Err(undo) = to.discard_import().await {
                tracing::error!(error = %undo, "could not empty the target after a failed migration");
            }
            Err(e)
        }
    }
}

async fn copy(from: &Store, to: &Store) -> Result<Migrated, MigrateError> {
    let mut tables = vec![];
    for table in TransferTable::ALL {
        let mut offset = 0u64;
        loop {
            let rows = from.export_rows(table, offset, PAGE).await?;
            if rows.is_empty() {
                break;
            }
            offset += rows.len() as u64;
            to.import_rows(table, rows).await?;
        }
        let (source_rows, target_rows) = (from.count_rows(table).await?, to.count_rows(table).await?);
        if source_rows != target_rows || source_rows != offset {
            return Err(MigrateError::CountsDiffer {
                table: table.name(),
                source_rows,
                target_rows,
            });
        }
        tables.push((table.name().to_string(), target_rows));
    }
    to.finish_import().await?;
    Ok(Migrated { tables })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance::{R, ev, operator, t};
    use crate::store::types::*;

    fn json<T: serde::Serialize>(v: &T) -> serde_json::Value {
        serde_json::to_value(v).unwrap()
    }

    /// Everything an operator or the agent can read, as JSON (what "nothing lost" means).
    async fn picture(s: &Store, job: i64) -> Vec<serde_json::Value> {
        vec![
            json(&s.events_of(None, None).await.unwrap()),
            json(&s.dead_letters(None).await.unwrap()),
            json(&s.status(None).await.unwrap()),
            json(&s.ledger(R.into()).await.unwrap()),
            json(&s.jobs().await.unwrap()),
            json(&s.batches(job).await.unwrap()),
            json(&s.history(None, None, None).await.unwrap()),
            json(&s.source_cursor("core".into()).await.unwrap()),
        ]
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sqlite_store_moves_to_postgres_with_everything_readable_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let from = Store::open(&Location::Sqlite(dir.path().join("s.db"))).unwrap();
        let db = crate::pg::cluster::database();
        let target = crate::pg::Target {
            url: db.url.clone(),
            password_file: Some(db.password_file.clone()),
            ca_file: None,
        };
        let to = Store::open(&Location::Postgres(target)).unwrap();

        // A little of everything: a load job with a batch and its ledger rows, events in every
        // state, a dead letter, an operator's cancel, a source cursor.
        let job = from
            .create_job(
                NewJob {
                    input_path: "export.csv".into(),
                    content_hash: "ab".into(),
                    settings: serde_json::json!({"environment": "test", "kfr_base_url": "https://kfr.example:443/api", "org_number": "923609016"}).to_string(),
                    entries: 2,
                    batches: vec![NewBatch { first_entry: 0, entry_count: 2, bytes: 40, correlation_id: uuid::Uuid::new_v4() }],
                },
                t(0),
            )
            .await
            .unwrap();
        from.record_batch(
            job,
            1,
            uuid::Uuid::new_v4(),
            vec![
                ("c-1".into(), None),
                (
                    "c-2".into(),
                    Some(chrono::NaiveDate::from_ymd_opt(2020, 1, 15).unwrap()),
                ),
            ],
            t(1),
        )
        .await
        .unwrap();
        from.abandon_job(job, HeldAtAbandon::Release, operator(), t(2))
            .await
            .unwrap();
        let evs: Vec<NewEvent> = (0..30)
            .map(|i| {
                ev(
                    &format!("e{i}"),
                    &format!("c-{}", i % 7),
                    if i % 3 == 0 { Operation::Remove } else { Operation::Add },
                )
            })
            .collect();
        from.enqueue_from_cursor(R.into(), evs, "core".into(), "17".into(), t(3))
            .await
            .unwrap();
        let claimer = crate::store::conformance::agent();
        let heads = from.claim_ready(R.into(), claimer, t(4), 5).await.unwrap();
        let settlements: Vec<Settlement> = heads[..3]
            .iter()
            .map(|e| Settlement {
                seq: e.seq,
                delivery: if e.op == Operation::Add {
                    Delivery::Added
                } else {
                    Delivery::NotFound
                },
                echoed_correlation_id: Some(e.correlation_id.to_string()),
                at: t(5),
            })
            .collect();
        from.settle(settlements).await.unwrap();
        from.dead_letter(
            heads[3].seq,
            Rejection {
                status: Some(400),
                code: Some("KFR-005".into()),
                body: "{}".into(),
                reason: "refused".into(),
            },
            t(6),
        )
        .await
        .unwrap();
        from.cancel(ToCancel::EventId("e29".into()), operator(), t(7))
            .await
            .unwrap();

        let moved = migrate(&from, &to, "migrate:test", t(100)).await.unwrap();
        assert!(moved.tables.iter().any(|(t, n)| t == "outbox" && *n == 30), "{moved:?}");
        assert_eq!(picture(&from, job).await, picture(&to, job).await);

        // New rows continue after the moved ones; a second migration into it is refused.
        let more = to
            .enqueue(R.into(), vec![ev("e-new", "c-9", Operation::Add)], t(200))
            .await
            .unwrap();
        assert!(matches!(more[0], Enqueued::Stored { seq } if seq > 30), "{more:?}");
        let err = migrate(&from, &to, "migrate:test", t(300)).await.unwrap_err();
        assert!(matches!(err, MigrateError::TargetNotEmpty { .. }), "{err}");
    }
}
