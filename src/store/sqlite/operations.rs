//! [`Operations`] on SQLite: an operator's cancel of pending events, the flood guard's count,
//! the agents' heartbeats, the last delivery, and a consistent copy of the file (`VACUUM INTO`,
//! which reads one snapshot while the agent goes on writing).

use super::db::{SqliteBackend, Tx};
use super::rows::{EVENT_COLUMNS, Fault, Line, event, event_row, finish_head, parse_ts, ts};
use crate::store::backend::Operations;
use crate::store::error::StoreError;
use crate::store::types::*;
use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension as _, params};
use std::path::Path;

/// Heartbeats older than this before a new one of the register are deleted: agents that stopped
/// long ago are no longer worth showing.
const HEARTBEAT_KEPT_DAYS: i64 = 7;

impl Operations for SqliteBackend {
    fn cancel(
        &mut self,
        which: &ToCancel,
        action: &OperatorAction,
        now: DateTime<Utc>,
    ) -> Result<Cancelled, StoreError> {
        self.tx(Tx::Write, |tx| {
            let candidates: Vec<OutboxEvent> = match which {
                ToCancel::Seq(seq) => vec![event(tx, *seq)?],
                ToCancel::EventId(id) => {
                    let seq: Option<Seq> = tx
                        .query_row("SELECT seq FROM outbox WHERE event_id = ?1", [id], |r| r.get(0))
                        .optional()?;
                    match seq {
                        Some(seq) => vec![event(tx, seq)?],
                        None => {
                            return Err(Fault::Store(StoreError::NotFound(format!(
                                "no event in the outbox has the event id {id}"
                            ))));
                        }
                    }
                }
                ToCancel::Customer { register, customer_id } => {
                    let sql = format!(
                        "SELECT {EVENT_COLUMNS} FROM outbox
                         WHERE register = ?1 AND customer_id = ?2 AND finished_at IS NULL ORDER BY seq"
                    );
                    let found: Vec<OutboxEvent> = tx
                        .prepare(&sql)?
                        .query_map(params![register, customer_id], event_row)?
                        .collect::<Result<_, _>>()?;
                    if found.is_empty() {
                        return Err(Fault::Store(StoreError::NotFound(
                            "the customer has no unfinished event in this register".into(),
                        )));
                    }
                    found
                }
            };
            let (pending, left): (Vec<OutboxEvent>, Vec<OutboxEvent>) =
                candidates.into_iter().partition(|e| e.state == EventState::Pending);
            if pending.is_empty() {
                // One event asked for, or a customer with nothing pending: name the state.
                let first = &left[0];
                return Err(Fault::Store(StoreError::WrongState {
                    seq: first.seq,
                    problem: format!("is {} and cannot be cancelled", first.state.as_str()),
                }));
            }
            for ev in &pending {
                tx.execute(
                    "UPDATE outbox SET state = 'dropped', finished_at = ?1, next_attempt_at = NULL WHERE seq = ?2",
                    params![ts(now), ev.seq],
                )?;
                // Only the head's end moves the queue on; a cancelled event behind the head is
                // skipped when the head finishes (`promote_next`).
                let is_head: bool =
                    tx.query_row("SELECT head IS NOT NULL FROM outbox WHERE seq = ?1", [ev.seq], |r| {
                        r.get(0)
                    })?;
                if is_head {
                    finish_head(tx, ev.seq, &ev.register, &ev.customer_id)?;
                }
                Line {
                    kind: HistoryKind::Operator,
                    actor: Some(&action.actor),
                    detail: action.reason.as_deref(),
                    ..Line::attempt(ev, now, "cancelled")
                }
                .write(tx)?;
            }
            Ok(Cancelled {
                events: pending,
                left: left.iter().map(|e| (e.seq, e.state)).collect(),
            })
        })
    }

    fn unfinished_count(&mut self, register: &str, customer: &str) -> Result<u64, StoreError> {
        self.tx(Tx::Read, |tx| {
            Ok(tx.query_row(
                "SELECT COUNT(*) FROM outbox WHERE register = ?1 AND customer_id = ?2 AND finished_at IS NULL",
                params![register, customer],
                |r| r.get(0),
            )?)
        })
    }

    fn record_heartbeat(&mut self, beat: &Heartbeat) -> Result<(), StoreError> {
        let unready = serde_json::to_string(&beat.unready).map_err(|e| StoreError::Other(e.to_string()))?;
        self.tx(Tx::Write, |tx| {
            tx.execute(
                "INSERT INTO heartbeats (register, holder, role, unready, version, started_at, at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (register, holder) DO UPDATE SET role = excluded.role, unready = excluded.unready,
                     version = excluded.version, started_at = excluded.started_at, at = excluded.at",
                params![
                    beat.register,
                    beat.holder,
                    beat.role.as_str(),
                    unready,
                    beat.version,
                    ts(beat.started_at),
                    ts(beat.at)
                ],
            )?;
            tx.execute(
                "DELETE FROM heartbeats WHERE register = ?1 AND at < ?2",
                params![beat.register, ts(beat.at - chrono::Duration::days(HEARTBEAT_KEPT_DAYS))],
            )?;
            Ok(())
        })
    }

    fn heartbeats(&mut self, register: Option<&str>) -> Result<Vec<Heartbeat>, StoreError> {
        self.tx(Tx::Read, |tx| {
            let mut stmt = tx.prepare(
                "SELECT register, holder, role, unready, version, started_at, at FROM heartbeats
                 WHERE ?1 IS NULL OR register = ?1 ORDER BY at DESC, holder",
            )?;
            let rows = stmt.query_map([register], |r| {
                let role: String = r.get(2)?;
                let unready: String = r.get(3)?;
                Ok(Heartbeat {
                    register: r.get(0)?,
                    holder: r.get(1)?,
                    role: match role.as_str() {
                        "leader" => AgentRole::Leader,
                        "standby" => AgentRole::Standby,
                        "stopped" => AgentRole::Stopped,
                        other => return Err(super::rows::bad_value("heartbeats.role", other)),
                    },
                    unready: serde_json::from_str(&unready)
                        .map_err(|_| super::rows::bad_value("heartbeats.unready", &unready))?,
                    version: r.get(4)?,
                    started_at: parse_ts(&r.get::<_, String>(5)?)?,
                    at: parse_ts(&r.get::<_, String>(6)?)?,
                })
            })?;
            rows.collect::<Result<Vec<_>, _>>().map_err(Fault::from)
        })
    }

    fn last_delivery(&mut self, register: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.tx(Tx::Read, |tx| {
            let at: Option<String> = tx.query_row(
                "SELECT MAX(at) FROM history WHERE register = ?1 AND outcome LIKE 'delivered%'",
                [register],
                |r| r.get(0),
            )?;
            Ok(at.as_deref().map(parse_ts).transpose()?)
        })
    }

    fn schema_version(&mut self) -> Result<u32, StoreError> {
        self.version().map_err(|e| StoreError::Other(format!("{e:#}")))
    }

    fn backup_to(&mut self, dest: &Path) -> Result<BackupInfo, StoreError> {
        let fail = |detail: String| StoreError::NotWritable {
            store: dest.display().to_string(),
            detail,
        };
        if dest.exists() {
            return Err(fail("it exists already; a backup never overwrites a file".into()));
        }
        // Written under a temporary name next to `dest` and renamed when checked, so `dest` is
        // either a whole, verified copy or absent.
        let name = dest
            .file_name()
            .ok_or_else(|| fail("it names no file".into()))?
            .to_string_lossy()
            .to_string();
        let partial = dest.with_file_name(format!(".{name}.partial"));
        let _ = std::fs::remove_file(&partial);
        let result = (|| {
            create_private(&partial).map_err(|e| fail(format!("creating {}: {e}", partial.display())))?;
            let store = self.path.display().to_string();
            self.raw_conn()
                .execute("VACUUM INTO ?1", [partial.display().to_string()])
                .map_err(|e| super::rows::store_error(&store, e))?;
            let info = verify(&partial).map_err(|e| fail(format!("the copy does not check out: {e}")))?;
            // VACUUM INTO writes into the file created above, so its mode stays 0600; set again
            // in case SQLite ever replaces it.
            restrict(&partial).map_err(|e| fail(e.to_string()))?;
            std::fs::rename(&partial, dest).map_err(|e| fail(format!("renaming the checked copy into place: {e}")))?;
            Ok(info)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&partial);
        }
        result
    }
}

/// Opens a copy read-only and checks it: SQLite's integrity check passes and its schema version
/// is one this kfr knows.
fn verify(path: &Path) -> anyhow::Result<BackupInfo> {
    let conn = rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let check: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
    anyhow::ensure!(check == "ok", "integrity check: {check}");
    let schema_version: u32 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    anyhow::ensure!(
        schema_version == SqliteBackend::current_version(),
        "schema version {schema_version}, expected {}",
        SqliteBackend::current_version()
    );
    let _: i64 = conn.query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0))?;
    drop(conn);
    Ok(BackupInfo {
        schema_version,
        bytes: std::fs::metadata(path)?.len(),
    })
}

/// Creates an empty file only its owner may read, whatever the umask.
fn create_private(path: &Path) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    opts.open(path)?;
    restrict(path)
}

fn restrict(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}
