//! Why a load stopped, as a type the caller can branch on; each variant knows its hint and whether
//! it is about how `kfr load` was invoked (exit 2) or about the data or KFR (exit 1).

use crate::error::Hinted;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("nothing to resume: the state store {state} has no load job")]
    NothingToResume { state: String },

    #[error("load job {job} ({input}) in {state} is not confirmed complete yet")]
    JobUnconfirmed { job: i64, input: String, state: String },

    #[error("nothing to resume for {}: the last load job ({job}, from {input}) is complete", file.display())]
    JobComplete { file: PathBuf, job: i64, input: String },

    #[error("load job {job} was started for organisation {job_org}, but org_number is {org}")]
    OtherOrganisation { job: i64, job_org: String, org: String },

    #[error(
        "{} has changed since load job {job} was planned from it (sha256 {then}… then, {now}… now); refusing to resume",
        file.display()
    )]
    InputChanged {
        file: PathBuf,
        job: i64,
        then: String,
        now: String,
    },

    #[error("the batches planned now differ from those stored for load job {job}: refusing to resume")]
    PlanMismatch { job: i64 },

    #[error(
        "{} has {count} bad line(s), listed above with line number and rule; nothing was uploaded",
        file.display()
    )]
    BadLines { file: PathBuf, count: u64 },

    #[error("opening the input {}", path.display())]
    OpenInput { path: PathBuf, source: std::io::Error },

    #[error(
        "{failed} held operation(s) could not be sent; they and whatever was issued after them on the same customers still wait"
    )]
    HeldOperationsNotSent { failed: usize },

    /// The state store, KFR or the input failed; the chain says where (and may carry its own
    /// hint, e.g. a KFR error code).
    #[error(
        "load job {job} was started against KFR {job_url} (env {job_env}), but this run talks to {url} (env {env}); refusing to resume it there"
    )]
    OtherKfr {
        job: i64,
        job_env: String,
        job_url: String,
        env: String,
        url: String,
    },

    #[error(
        "{}: nothing to load ({data_lines} data line(s), {closed} closed, {rejected} rejected, 0 active relationships)",
        file.display()
    )]
    NothingToLoad {
        file: PathBuf,
        data_lines: u64,
        closed: u64,
        rejected: u64,
    },

    #[error(
        "{}load job {} is running in another process ({holder}) on the state store {}",
        input.as_deref().map(|i| format!("{i}: ")).unwrap_or_default(),
        job.map(|j| j.to_string()).unwrap_or_else(|| "(new)".into()),
        state
    )]
    StoreBusy {
        /// The store, as [`crate::store::Location::describe`] names it.
        state: String,
        job: Option<i64>,
        input: Option<String>,
        /// What the lock file says about the process holding it.
        holder: String,
    },

    #[error(
        "{} changed while it was read ({before} bytes when opened, {after} bytes after reading): it is probably still being written",
        file.display()
    )]
    ChangedWhileRead { file: PathBuf, before: u64, after: u64 },

    #[error("--report: {message}")]
    BadReportPath { message: String },

    #[error("the rejects file {} is a symlink; identifiers are never written through one", path.display())]
    RejectsSymlink { path: PathBuf },

    #[error("no state store at {state}")]
    NoStore { state: String },

    #[error("the state store {state} has no load job {job}")]
    NoSuchJob { job: i64, state: String },

    #[error("load job {job} is still running: its held operations are sent when the load confirms it")]
    StillRunning { job: i64 },

    #[error("load job {job} is {status}: only a running job can be abandoned")]
    JobNotRunning { job: i64, status: &'static str },

    #[error(
        "load job {job} holds {removes} remove(s) and {adds} add(s) back; abandoning it would leave them without a sender"
    )]
    HeldOperationsWait { job: i64, adds: usize, removes: usize },

    #[error(
        "load job {job} is abandoned, but {left} of its held operation(s) could not be sent; they and whatever was issued after them on the same customers still wait"
    )]
    AbandonedHeldLeft { job: i64, left: usize },

    #[error("the last load job ({job}, from {input}) was abandoned: there is nothing to resume")]
    JobAbandoned { job: i64, input: String },

    /// An operator abandoned the job while this load ran (issue 20, N4): it stopped writing to
    /// it and never calls it complete.
    #[error(
        "load job {job} was abandoned by an operator while this load ran; the load stopped and the job is not complete ({confirmed} of {batches} batches confirmed stored)"
    )]
    AbandonedUnderIt { job: i64, confirmed: usize, batches: usize },

    /// A signal asked the load to stop while it waited for its input: a named FIFO nobody
    /// opened for writing, or a writer that sent nothing more (issue 20: it blocked in open(2)
    /// and ignored SIGTERM). Nothing of the input went into a job and nothing was sent; the
    /// caller exits 128 + `signal`.
    #[error(
        "stopped by {} while waiting for the input {} ({waiting}); no load job was created from it and nothing was sent",
        if *signal == 15 { "SIGTERM" } else { "Ctrl-C (SIGINT)" },
        file.display()
    )]
    StoppedWaitingForInput {
        file: PathBuf,
        signal: i32,
        waiting: &'static str,
    },

    /// The state store failed (its own error says what an operator can do).
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),

    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl LoadError {
    /// Whether the error is about how the load was asked for (exit 2: nothing was attempted).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            LoadError::NothingToResume { .. }
                | LoadError::JobUnconfirmed { .. }
                | LoadError::JobComplete { .. }
                | LoadError::OtherOrganisation { .. }
                | LoadError::OtherKfr { .. }
                | LoadError::BadReportPath { .. }
                | LoadError::RejectsSymlink { .. }
                | LoadError::NoSuchJob { .. }
                | LoadError::JobNotRunning { .. }
                | LoadError::StillRunning { .. }
                | LoadError::HeldOperationsWait { .. }
                | LoadError::JobAbandoned { .. }
        )
    }
}

impl Hinted for LoadError {
    fn exit(&self) -> crate::error::Exit {
        if self.is_usage() {
            crate::error::Exit::Usage
        } else {
            crate::error::Exit::Failure
        }
    }

    fn hint(&self) -> Option<String> {
        Some(match self {
            LoadError::NothingToResume { .. } => "start the load without --resume".into(),
            LoadError::JobUnconfirmed { .. } => "continue it with `kfr load FILE --resume` (same file); a second load cannot start before the first is confirmed".into(),
            LoadError::JobComplete { .. } => "start a new load without --resume".into(),
            LoadError::OtherOrganisation { .. } => "run the load with the org_number it was started with".into(),
            LoadError::InputChanged { job, .. } => format!(
                "resume with the unchanged file; a new export can be loaded once job {job} is confirmed"
            ),
            LoadError::PlanMismatch { .. } => "resume with the kfr version that planned the job, or finish it before upgrading".into(),
            LoadError::BadLines { .. } => "fix the lines, or pass --skip-invalid to load the valid ones and write the bad ones to a rejects file".into(),
            LoadError::OpenInput { source, .. } => match source.kind() {
                std::io::ErrorKind::NotFound => "check the path (relative paths are from the current directory); nothing was created or sent".into(),
                std::io::ErrorKind::PermissionDenied => "the user running kfr must be able to read the export; nothing was created or sent".into(),
                _ => return None,
            },
            LoadError::HeldOperationsNotSent { .. } => "`kfr load retry-held JOB` (no export needed) or `kfr load FILE --resume` sends them again, in order, once KFR can be reached; `kfr dlq list` shows any KFR refused".into(),
            LoadError::StillRunning { .. } => "finish the load (`kfr load FILE --resume`), or abandon it with --send-held (`kfr load abandon JOB --send-held`)".into(),
            LoadError::OtherKfr { .. } => "resume with the configuration (env, kfr_base_url) the job was started with; to load into this KFR, use another state store (--state) once you have decided what to do with the job (`kfr load status`)".into(),
            LoadError::NothingToLoad { .. } => "check that this is the right export, complete and written through; pass --allow-empty if the institution really has no active relationship to register".into(),
            LoadError::StoreBusy { .. } => "one load at a time per state store: wait for the running one to finish, or stop it (Ctrl-C) and run `kfr load FILE --resume`".into(),
            LoadError::ChangedWhileRead { .. } => "wait until the export is completely written (or copy it to a place nothing writes to) and run again; nothing was uploaded".into(),
            LoadError::BadReportPath { .. } => "give a report path in an existing directory that is not a symlink; nothing was sent".into(),
            LoadError::RejectsSymlink { .. } => "remove the link or give another path with --rejects; nothing was read or sent".into(),
            LoadError::NoStore { .. } => "check --state or `state` in the configuration: `kfr load status` shows the store's jobs".into(),
            LoadError::NoSuchJob { .. } => "`kfr load status` lists the store's jobs and their ids".into(),
            LoadError::JobNotRunning { status, .. } => if *status == "confirmed" {
                "a confirmed job is complete: its held operations were sent by the load (`kfr load --resume` sends any that failed)".into()
            } else {
                "it is abandoned already and holds nothing back; `kfr load status` shows it".into()
            },
            LoadError::HeldOperationsWait { job, .. } => format!(
                "choose what becomes of them: `kfr load abandon {job} --send-held` sends them to KFR now (each customer's in the order issued), `--drop-held` drops them unsent and lists them (masked) so they can be issued again; or finish the load with `kfr load --resume`"
            ),
            LoadError::AbandonedHeldLeft { job, .. } => format!(
                "`kfr load abandon {job} --send-held` sends them again, in order, once KFR can be reached"
            ),
            LoadError::AbandonedUnderIt { .. } => "`kfr load status` shows the job; what was sent stays in KFR (see docs/load.md, \"Abandoning a job\"); start a new load without --resume".into(),
            LoadError::JobAbandoned { .. } => "start a new load without --resume (`kfr load status` shows the abandoned job)".into(),
            LoadError::StoppedWaitingForInput { .. } => "start the load again once the program that writes the export is running (a FIFO is read while it is written; `kfr load status` shows any earlier job)".into(),
            LoadError::Store(e) => return crate::error::Hinted::hint(e),
            LoadError::Other(_) => return None,
        })
    }
}
