//! Runs the cases: every step sends one request (or polls, for `wait_ingested`), its answer is
//! checked against the step's expectations, and the evidence (status, error code, CorrelationID
//! and its echo, timestamps) is kept for the report.
//!
//! The register is left as the run found it: the identifiers the cases use must be absent at
//! the start ([`Runner::preflight`]), everything a step registered is tracked, and
//! [`Runner::cleanup`] removes it at the end, after waiting for accepted batches to be ingested
//! (a delete before ingestion would be undone by it, onboarding D-3). What cannot be removed is
//! reported as a leftover.
//!
//! Files by role: this one holds the run's shape (cases → steps → one [`StepResult`] each) and
//! the run's settings; `steps` what each kind of step does; `expect` how an answer is judged
//! against the step's expectations; `describe` the words of the report; `register` the run's
//! footprint in the register (preflight, the own lookup, cleanup).

mod describe;
mod expect;
mod register;
mod steps;

use super::ChecklistError;
use super::cases::{Action, Case, CaseFile, FidChoice, Step, Target, TokenChoice};
use super::wire::Wire;
use crate::environment::Environment;
use crate::ids::CustomerId;
use crate::maskinporten::{TokenClient, TokenRequest};
use chrono::{DateTime, Utc};
use secrecy::ExposeSecret as _;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};
use steps::expired;
use url::Url;

/// The wrong-scope token's scope when neither the case file nor a flag names one: the one
/// `kfr mock` grants besides the write scope (the checklist does not depend on the mock module,
/// so the name is repeated here).
pub const DEFAULT_OTHER_SCOPE: &str = "kfr-mock:other";

/// What a run needs besides the cases (built by the CLI from the settings).
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub env: Environment,
    /// Our org.nr: the `fid` of every request unless a step asks for another.
    pub org_number: String,
    pub kfr_base_url: Url,
    /// Overrides `[settings] other_fid` of the case file.
    pub other_fid: Option<String>,
    /// Overrides `[settings] other_scope`.
    pub other_scope: Option<String>,
    /// Longest wait for a batch entry to show in the own lookup.
    pub ingest_timeout: Duration,
    /// Pause between lookups while waiting.
    pub poll_interval: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    Fail,
}

impl Verdict {
    /// The verdict as the report prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Fail => "FAIL",
        }
    }
}

/// One step's evidence. Identifiers appear masked only.
#[derive(Debug, Clone, Serialize)]
pub struct StepResult {
    pub n: usize,
    pub step: String,
    pub expected: String,
    pub actual: String,
    pub passed: bool,
    pub status: Option<u16>,
    pub error_code: Option<String>,
    pub correlation_id: Option<uuid::Uuid>,
    pub correlation_id_echoed: Option<bool>,
    pub started: DateTime<Utc>,
    pub duration_ms: u64,
}

/// One case's result: the row of the report.
#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    pub id: String,
    pub title: String,
    pub verdict: Verdict,
    /// The steps' expectations, one numbered line each.
    pub expected: String,
    /// What happened, one numbered line per step.
    pub actual: String,
    pub correlation_ids: Vec<uuid::Uuid>,
    pub started: DateTime<Utc>,
    pub finished: DateTime<Utc>,
    pub duration_ms: u64,
    pub steps: Vec<StepResult>,
}

/// What the end-of-run cleanup did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Cleanup {
    /// Relationships the run registered and then removed (204).
    pub removed: usize,
    /// Tracked relationships KFR no longer had (404 KFR-008).
    pub already_absent: usize,
    /// What is still (or may still be) registered, masked, with the reason.
    pub leftovers: Vec<String>,
}

/// Executes a case file against one KFR.
pub struct Runner {
    wire: Wire,
    tokens: TokenClient,
    cfg: RunConfig,
    other_fid: String,
    other_scope: String,
    ids: BTreeMap<String, CustomerId>,
    /// `(fid, identifier)` a step may have registered and no step has removed yet.
    added: BTreeSet<(String, String)>,
    /// `(fid, last entry)` of accepted batches not yet seen ingested.
    pending: Vec<(String, String)>,
}

impl Runner {
    /// Checks the run's identifiers (synthetic only, kfr-notes §7) and the other `fid`.
    pub fn new(
        http: reqwest::Client,
        tokens: TokenClient,
        cfg: RunConfig,
        file: &CaseFile,
        id_overrides: &[(String, String)],
    ) -> Result<Runner, ChecklistError> {
        let ids = super::cases::resolve_identifiers(file, id_overrides, cfg.env)?;
        let other_fid = cfg
            .other_fid
            .clone()
            .or_else(|| file.settings.other_fid.clone())
            .unwrap_or_default();
        if other_fid.len() != 9 || !other_fid.bytes().all(|b| b.is_ascii_digit()) || other_fid == cfg.org_number {
            return Err(ChecklistError::BadOtherFid(other_fid));
        }
        let other_scope = cfg
            .other_scope
            .clone()
            .or_else(|| file.settings.other_scope.clone())
            .unwrap_or_else(|| DEFAULT_OTHER_SCOPE.to_string());
        Ok(Runner {
            wire: Wire::new(http, cfg.kfr_base_url.clone()),
            tokens,
            cfg,
            other_fid,
            other_scope,
            ids,
            added: BTreeSet::new(),
            pending: Vec::new(),
        })
    }

    /// The other institution's org.nr the cases use for `fid = "other"`.
    pub fn other_fid(&self) -> &str {
        &self.other_fid
    }

    /// Runs the cases in order, calling `progress` after each.
    pub async fn run(&mut self, cases: &[Case], mut progress: impl FnMut(usize, &CaseResult)) -> Vec<CaseResult> {
        let mut out = Vec::with_capacity(cases.len());
        for (i, case) in cases.iter().enumerate() {
            let r = self.run_case(case).await;
            progress(i + 1, &r);
            out.push(r);
        }
        out
    }

    /// One case: its steps in order, and PASS only when every step passed.
    async fn run_case(&mut self, case: &Case) -> CaseResult {
        let started = Utc::now();
        let clock = Instant::now();
        let mut steps = Vec::new();
        // Every step runs even after a failure: the later answers are evidence too, and what a
        // step registers is tracked for the cleanup either way.
        for (i, step) in case.steps.iter().enumerate() {
            steps.push(self.run_step(i + 1, step).await);
        }
        let verdict = if steps.iter().all(|s| s.passed) {
            Verdict::Pass
        } else {
            Verdict::Fail
        };
        let lines = |f: &dyn Fn(&StepResult) -> String| {
            steps
                .iter()
                .map(|s| format!("{}. {}", s.n, f(s)))
                .collect::<Vec<_>>()
                .join("\n")
        };
        CaseResult {
            id: case.id.clone(),
            title: case.title.clone(),
            verdict,
            expected: lines(&|s| format!("{}: {}", s.step, s.expected)),
            actual: lines(&|s| format!("{}{}", if s.passed { "" } else { "FAILED: " }, s.actual)),
            correlation_ids: steps.iter().filter_map(|s| s.correlation_id).collect(),
            started,
            finished: Utc::now(),
            duration_ms: clock.elapsed().as_millis() as u64,
            steps,
        }
    }

    /// One step: runs it by its kind and keeps its evidence (status, error code, CorrelationID
    /// and its echo, timing) with the problems found.
    async fn run_step(&mut self, n: usize, step: &Step) -> StepResult {
        let started = Utc::now();
        let clock = Instant::now();
        let (actual, problems, ex) = match step.action {
            Action::Token => self.token_step(step).await,
            Action::WaitIngested => self.wait_step(step).await,
            _ => self.request_step(step).await,
        };
        let passed = problems.is_empty();
        let actual = if passed {
            actual
        } else {
            format!("{actual} [{}]", problems.join("; "))
        };
        StepResult {
            n,
            step: self.describe(step),
            expected: self.describe_expect(step),
            actual,
            passed,
            status: ex.as_ref().map(|e| e.status),
            error_code: ex.as_ref().and_then(|e| e.error_code.clone()),
            correlation_id: ex.as_ref().map(|e| e.correlation_id),
            correlation_id_echoed: ex.as_ref().map(|e| e.echoed),
            started,
            duration_ms: clock.elapsed().as_millis() as u64,
        }
    }

    /// Our usual token request with the other scope: the wrong-scope cases' token.
    fn other_request(&self) -> TokenRequest {
        TokenRequest {
            scope: self.other_scope.clone(),
            ..self.tokens.config().default_request.clone()
        }
    }

    /// The bearer value for `choice`, or why there is none.
    async fn bearer(&self, choice: TokenChoice) -> Result<Option<String>, String> {
        let token = match choice {
            TokenChoice::None => return Ok(None),
            TokenChoice::OtherScope => self.tokens.token_for(&self.other_request()).await,
            TokenChoice::Valid | TokenChoice::Expired => self.tokens.token().await,
        }
        .map_err(|e| format!("no token: {e}"))?;
        let value = token.secret().expose_secret().to_string();
        if choice == TokenChoice::Expired {
            return expired(&value).map(Some);
        }
        Ok(Some(value))
    }

    /// The `fid` a step sends: ours, or the other institution's.
    fn fid(&self, choice: FidChoice) -> String {
        match choice {
            FidChoice::Own => self.cfg.org_number.clone(),
            FidChoice::Other => self.other_fid.clone(),
        }
    }

    /// The identifier a step sends, unmasked (it goes on the wire, never into the report).
    fn target_text(&self, target: &Target) -> String {
        match target {
            Target::Named(n) => self.ids[n].as_str().to_string(),
            Target::Raw(r) => r.clone(),
        }
    }
}
