//! Runs the cases: every step sends one request (or polls, for `wait_ingested`), its answer is
//! checked against the step's expectations, and the evidence (status, error code, CorrelationID
//! and its echo, timestamps) is kept for the report.
//!
//! The register is left as the run found it: the identifiers the cases use must be absent at
//! the start ([`Runner::preflight`]), everything a step registered is tracked, and
//! [`Runner::cleanup`] removes it at the end, after waiting for accepted batches to be ingested
//! (a delete before ingestion would be undone by it, onboarding D-3). What cannot be removed is
//! reported as a leftover.

use super::ChecklistError;
use super::cases::{Case, CaseFile, EntryId, Expect, FidChoice, Operation, Step, Target, TokenChoice};
use super::wire::{Exchange, Request, Wire, raw_batch};
use crate::environment::Environment;
use crate::ids::{CustomerId, IdPolicy, mask};
use crate::kfr::batch::{BatchEntry, Layout};
use crate::maskinporten::{TokenClient, TokenRequest};
use base64::Engine as _;
use chrono::{DateTime, NaiveDate, Utc};
use secrecy::ExposeSecret as _;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::{Duration, Instant};
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

    pub fn other_fid(&self) -> &str {
        &self.other_fid
    }

    /// Refuses to start when an identifier the cases use is already registered for us today:
    /// the cases expect them absent, and the cleanup would remove a relationship the run did not
    /// make.
    pub async fn preflight(&self) -> Result<(), ChecklistError> {
        let mut present = Vec::new();
        for (name, id) in &self.ids {
            let ex = self
                .lookup_once(id.as_str(), None)
                .await
                .map_err(ChecklistError::Preflight)?;
            if ex.status != 200 {
                return Err(ChecklistError::Preflight(format!(
                    "own lookup of {name} answered {}{}",
                    ex.status,
                    ex.error_code.map(|c| format!(" {c}")).unwrap_or_default()
                )));
            }
            if self.shows_us(&ex.json) {
                present.push(format!("{name} ({})", mask(id.as_str())));
            }
        }
        if present.is_empty() {
            Ok(())
        } else {
            Err(ChecklistError::AlreadyRegistered(present.join(", ")))
        }
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

    async fn run_step(&mut self, n: usize, step: &Step) -> StepResult {
        let started = Utc::now();
        let clock = Instant::now();
        let (actual, problems, ex) = match step.action {
            super::cases::Action::Token => self.token_step(step).await,
            super::cases::Action::WaitIngested => self.wait_step(step).await,
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

    fn other_request(&self) -> TokenRequest {
        TokenRequest {
            scope: self.other_scope.clone(),
            ..self.tokens.config().default_request.clone()
        }
    }

    async fn token_step(&mut self, step: &Step) -> (String, Vec<String>, Option<Exchange>) {
        let got = match step.token {
            TokenChoice::OtherScope => self.tokens.token_for(&self.other_request()).await,
            _ => self.tokens.token().await,
        };
        match got {
            Ok(t) => {
                let seen = serde_json::json!({
                    "scope": t.scope, "token_type": t.token_type, "consumer_org": t.consumer_org,
                    "expires_in": t.expires_in.as_secs(),
                });
                let problems = self.check_fields(&step.expect, &seen);
                let actual = format!(
                    "token: scope {}, type {}, consumer {}, expires in {} s",
                    t.scope,
                    t.token_type,
                    t.consumer_org.as_deref().unwrap_or("(not readable)"),
                    t.expires_in.as_secs()
                );
                (actual, problems, None)
            }
            Err(e) => (
                format!("no token: {e}"),
                vec!["Maskinporten refused the token".into()],
                None,
            ),
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

    fn fid(&self, choice: FidChoice) -> String {
        match choice {
            FidChoice::Own => self.cfg.org_number.clone(),
            FidChoice::Other => self.other_fid.clone(),
        }
    }

    fn target_text(&self, target: &Target) -> String {
        match target {
            Target::Named(n) => self.ids[n].as_str().to_string(),
            Target::Raw(r) => r.clone(),
        }
    }

    /// Deterministic test organisation numbers (prefix 399) for `filler`: the same ones every
    /// run, so a run cut short leaves nothing the next run's cleanup would not find again.
    fn filler(&self, n: usize) -> Vec<CustomerId> {
        let taken: BTreeSet<&str> = self.ids.values().map(|id| id.as_str()).collect();
        (0u32..)
            .filter_map(|i| {
                let digits = format!("399{i:05}");
                let weights = [3u32, 2, 7, 6, 5, 4, 3, 2];
                let sum: u32 = digits.bytes().zip(weights).map(|(d, w)| u32::from(d - b'0') * w).sum();
                let check = match sum % 11 {
                    0 => 0,
                    1 => return None,
                    r => 11 - r,
                };
                let text = format!("{digits}{check}");
                (!taken.contains(text.as_str())).then(|| CustomerId::parse(&text, &IdPolicy::test()).ok())?
            })
            .take(n)
            .collect()
    }

    /// Batch entry texts in file order (filler first), and the body to send.
    fn batch_body(&self, step: &Step) -> (Vec<String>, (String, Vec<u8>)) {
        let filler = self.filler(step.filler);
        let texts: Vec<(String, Option<String>)> = filler
            .iter()
            .map(|id| (id.as_str().to_string(), None))
            .chain(step.entries.iter().map(|e| {
                let id = match &e.id {
                    EntryId::Named(n) => self.ids[n].as_str().to_string(),
                    EntryId::Raw(r) => r.clone(),
                };
                (id, e.start.clone())
            }))
            .collect();
        let ids: Vec<String> = texts.iter().map(|(id, _)| id.clone()).collect();
        if step.action == super::cases::Action::Batch {
            // A plain batch goes through kfr's own encoder: the checklist then tests what
            // `kfr load` sends. Its entries were validated when the case file was read.
            let entries: Vec<BatchEntry> = texts
                .iter()
                .map(|(id, start)| BatchEntry {
                    id: CustomerId::parse(id, &IdPolicy::test()).expect("resolved identifiers are valid"),
                    start: start
                        .as_ref()
                        .map(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").expect("checked when parsing")),
                })
                .collect();
            let body = Layout::new().encode(&entries);
            return (ids, (body.content_type, body.bytes));
        }
        let raw: Vec<String> = texts
            .into_iter()
            .map(|(id, start)| match start {
                Some(d) => format!("{id}#{d}"),
                None => id,
            })
            .collect();
        (ids, raw_batch(&raw, step.quoted_boundary))
    }

    async fn request_step(&mut self, step: &Step) -> (String, Vec<String>, Option<Exchange>) {
        let operation = step.operation.expect("request-like steps have an operation");
        let bearer = match self.bearer(step.token).await {
            Ok(b) => b,
            Err(why) => return (why, vec!["nothing was sent".into()], None),
        };
        let fid = self.fid(step.fid);
        let customer = step.target.as_ref().map(|t| self.target_text(t));
        let mut query = Vec::new();
        if let Some(f) = &step.from {
            query.push(("fromDate", f.clone()));
        }
        if let Some(t) = &step.to {
            query.push(("toDate", t.clone()));
        }
        let (batch_ids, body) = if operation == Operation::Batch {
            let (ids, body) = self.batch_body(step);
            (ids, Some(body))
        } else {
            (Vec::new(), None)
        };
        let req = Request {
            operation,
            fid: fid.clone(),
            bearer,
            customer: customer.clone(),
            relationship_type: step.relationship_type.clone(),
            query,
            body,
        };
        let ex = match self.wire.send(&req).await {
            Ok(ex) => ex,
            Err(why) => return (format!("no answer: {why}"), vec!["the request failed".into()], None),
        };
        self.track(operation, &fid, customer.as_deref(), &batch_ids, ex.status);
        let problems = self.check(&step.expect, &ex);
        (describe_exchange(&ex), problems, Some(ex))
    }

    /// Remembers what may now be registered (and what no longer is) for the cleanup.
    fn track(&mut self, op: Operation, fid: &str, customer: Option<&str>, batch: &[String], status: u16) {
        let valid = |s: &str| CustomerId::parse(s, &IdPolicy::test()).is_ok() && s.bytes().all(|b| b.is_ascii_digit());
        match (op, status) {
            (Operation::Add, 200 | 201) => {
                if let Some(c) = customer.filter(|c| valid(c)) {
                    self.added.insert((fid.to_string(), c.to_string()));
                }
            }
            (Operation::Remove, 204) => {
                if let Some(c) = customer {
                    self.added.remove(&(fid.to_string(), c.to_string()));
                }
            }
            (Operation::Batch, 200..=299) => {
                for id in batch.iter().filter(|c| valid(c)) {
                    self.added.insert((fid.to_string(), id.clone()));
                }
                if let Some(last) = batch.last() {
                    self.pending.push((fid.to_string(), last.clone()));
                }
            }
            _ => {}
        }
    }

    async fn lookup_once(&self, customer: &str, from: Option<&str>) -> Result<Exchange, String> {
        let req = Request {
            operation: Operation::Lookup,
            fid: self.cfg.org_number.clone(),
            bearer: self.bearer(TokenChoice::Valid).await?,
            customer: Some(customer.to_string()),
            relationship_type: None,
            query: from.map(|f| vec![("fromDate", f.to_string())]).unwrap_or_default(),
            body: None,
        };
        self.wire.send(&req).await
    }

    fn shows_us(&self, json: &serde_json::Value) -> bool {
        json.get("banks").and_then(|b| b.as_array()).is_some_and(|banks| {
            banks
                .iter()
                .any(|b| b.get("organizationID").and_then(|o| o.as_str()) == Some(self.cfg.org_number.as_str()))
        })
    }

    /// Polls the own lookup until `customer` shows. kfr-notes §6: ingestion follows file order,
    /// so the last entry of a batch showing means the whole batch is stored.
    async fn wait_until_shown(
        &self,
        customer: &str,
        from: Option<&str>,
        timeout: Duration,
    ) -> (bool, usize, Option<Exchange>, String) {
        let clock = Instant::now();
        let mut polls = 0;
        let mut last = None;
        loop {
            polls += 1;
            match self.lookup_once(customer, from).await {
                Ok(ex) => {
                    let shown = ex.status == 200 && self.shows_us(&ex.json);
                    let summary = describe_exchange(&ex);
                    last = Some(ex);
                    if shown {
                        return (true, polls, last, summary);
                    }
                    if clock.elapsed() >= timeout {
                        return (false, polls, last, summary);
                    }
                }
                Err(why) if clock.elapsed() >= timeout => return (false, polls, last, why),
                Err(_) => {}
            }
            tokio::time::sleep(self.cfg.poll_interval).await;
        }
    }

    async fn wait_step(&mut self, step: &Step) -> (String, Vec<String>, Option<Exchange>) {
        let customer = self.target_text(step.target.as_ref().expect("checked when parsing"));
        // Waiting only makes sense for the last entry of a batch KFR accepted; otherwise (the
        // batch was refused, or the case names another customer) one lookup decides, instead
        // of polling for minutes for something that cannot come.
        let org = &self.cfg.org_number;
        let awaited = self.pending.iter().any(|(f, c)| f == org && *c == customer);
        let timeout = if awaited {
            step.timeout_secs
                .map(Duration::from_secs)
                .unwrap_or(self.cfg.ingest_timeout)
        } else {
            Duration::ZERO
        };
        let clock = Instant::now();
        let (shown, polls, ex, last) = self.wait_until_shown(&customer, step.from.as_deref(), timeout).await;
        let secs = clock.elapsed().as_secs_f64();
        if shown {
            let org = self.cfg.org_number.clone();
            self.pending.retain(|(f, c)| !(f == &org && c == &customer));
            (format!("shown after {polls} lookup(s), {secs:.2} s"), vec![], ex)
        } else {
            (
                format!("not shown after {secs:.0} s ({polls} lookups); last: {last}"),
                vec!["not ingested in time".into()],
                ex,
            )
        }
    }

    fn check(&self, expect: &Expect, ex: &Exchange) -> Vec<String> {
        let mut problems = Vec::new();
        if !expect.status.is_empty() && !expect.status.contains(&ex.status) {
            problems.push(format!("expected status {}", or_list(&expect.status)));
        }
        if !expect.error_code.is_empty() && !ex.error_code.as_ref().is_some_and(|c| expect.error_code.contains(c)) {
            problems.push(format!("expected errorCode {}", or_list(&expect.error_code)));
        }
        if let Some(want) = expect.correlation_id_echoed
            && want != ex.echoed
        {
            problems.push(if want {
                "CorrelationID not echoed".to_string()
            } else {
                "CorrelationID echoed".to_string()
            });
        }
        if let Some(want) = expect.found
            && want != self.shows_us(&ex.json)
        {
            problems.push(if want {
                "our org.nr is not in banks".to_string()
            } else {
                "our org.nr is in banks".to_string()
            });
        }
        problems.extend(self.check_fields(expect, &ex.json));
        problems
    }

    fn check_fields(&self, expect: &Expect, json: &serde_json::Value) -> Vec<String> {
        let mut problems = Vec::new();
        for (path, want) in &expect.fields {
            let want = self.expected_json(want);
            let got = field(json, path);
            if got.as_ref() != Some(&want) {
                problems.push(format!(
                    "{path} is {}, expected {want}",
                    got.map(|g| g.to_string()).unwrap_or_else(|| "absent".into())
                ));
            }
        }
        problems
    }

    /// The expected value as JSON, `{org}` / `{other_fid}` replaced.
    fn expected_json(&self, v: &toml::Value) -> serde_json::Value {
        match v {
            toml::Value::String(s) => serde_json::Value::String(
                s.replace("{org}", &self.cfg.org_number)
                    .replace("{other_fid}", &self.other_fid),
            ),
            other => serde_json::to_value(other).unwrap_or(serde_json::Value::Null),
        }
    }

    fn name_of(&self, target: &Target) -> String {
        match target {
            Target::Named(n) => format!("{n} ({})", mask(self.ids[n].as_str())),
            Target::Raw(r) => format!("raw {}", mask(r)),
        }
    }

    /// The step in words, identifiers masked.
    fn describe(&self, step: &Step) -> String {
        use super::cases::Action;
        let mut s = String::new();
        let op = |o: Operation| match o {
            Operation::Add => "add",
            Operation::Remove => "remove",
            Operation::Lookup => "lookup",
            Operation::Batch => "batch",
        };
        match step.action {
            Action::Token => {
                let scope = match step.token {
                    TokenChoice::OtherScope => self.other_scope.as_str(),
                    _ => self.tokens.config().default_request.scope.as_str(),
                };
                let _ = write!(s, "token for {scope}");
            }
            Action::WaitIngested => {
                let _ = write!(
                    s,
                    "wait until {} shows in the own lookup",
                    self.name_of(step.target.as_ref().expect("checked"))
                );
            }
            _ => {
                if step.action == Action::Request {
                    s.push_str("request ");
                }
                s.push_str(op(step.operation.expect("checked")));
                if let Some(t) = &step.target {
                    let _ = write!(s, " {}", self.name_of(t));
                }
                if step.operation == Some(Operation::Batch) {
                    let entries: Vec<String> = step
                        .entries
                        .iter()
                        .map(|e| {
                            let id = match &e.id {
                                EntryId::Named(n) => self.name_of(&Target::Named(n.clone())),
                                EntryId::Raw(r) => format!("raw {}", mask(r)),
                            };
                            match &e.start {
                                Some(d) => format!("{id}#{d}"),
                                None => id,
                            }
                        })
                        .collect();
                    if step.filler > 0 {
                        let _ = write!(s, " of {} test organisations, then", step.filler);
                    }
                    let _ = write!(s, " [{}]", entries.join(", "));
                }
                if let Some(f) = &step.from {
                    let _ = write!(s, " fromDate={f}");
                }
                if let Some(t) = &step.to {
                    let _ = write!(s, " toDate={t}");
                }
                if step.fid == FidChoice::Other {
                    let _ = write!(s, ", fid {} (another institution)", self.other_fid);
                }
                match step.token {
                    TokenChoice::Valid => {}
                    TokenChoice::None => s.push_str(", no token"),
                    TokenChoice::Expired => s.push_str(", expired token"),
                    TokenChoice::OtherScope => {
                        let _ = write!(s, ", token for {} only", self.other_scope);
                    }
                }
                if let Some(t) = &step.relationship_type {
                    let _ = write!(s, ", relationship type {t}");
                }
                if step.quoted_boundary {
                    s.push_str(", quoted boundary");
                }
            }
        }
        s
    }

    fn describe_expect(&self, step: &Step) -> String {
        let e = &step.expect;
        let mut parts = Vec::new();
        if !e.status.is_empty() {
            parts.push(format!("status {}", or_list(&e.status)));
        }
        if !e.error_code.is_empty() {
            parts.push(format!("errorCode {}", or_list(&e.error_code)));
        }
        if e.correlation_id_echoed == Some(true) {
            parts.push("CorrelationID echoed".into());
        }
        match e.found {
            Some(true) => parts.push("our org.nr in banks".into()),
            Some(false) => parts.push("our org.nr not in banks".into()),
            None => {}
        }
        for (k, v) in &e.fields {
            parts.push(format!("{k} = {}", self.expected_json(v)));
        }
        if step.action == super::cases::Action::WaitIngested {
            parts.push("shown in the own lookup".into());
        }
        parts.join(", ")
    }

    /// Removes what the run registered. Batches are waited for first: a delete that overtakes
    /// ingestion finds nothing and the entry is stored afterwards (onboarding D-3).
    pub async fn cleanup(&mut self) -> Cleanup {
        let mut out = Cleanup::default();
        for (fid, last) in std::mem::take(&mut self.pending) {
            if fid == self.cfg.org_number {
                let (shown, ..) = self.wait_until_shown(&last, None, self.cfg.ingest_timeout).await;
                if !shown {
                    out.leftovers.push(format!(
                        "batch ending with {} was not seen ingested; its entries may still appear",
                        mask(&last)
                    ));
                }
            }
        }
        let named: BTreeSet<String> = self.ids.values().map(|id| id.as_str().to_string()).collect();
        let mut to_verify = Vec::new();
        for (fid, id) in std::mem::take(&mut self.added) {
            let bearer = match self.bearer(TokenChoice::Valid).await {
                Ok(b) => b,
                Err(why) => {
                    out.leftovers
                        .push(format!("{} for {fid}: not removed ({why})", mask(&id)));
                    continue;
                }
            };
            let req = Request {
                operation: Operation::Remove,
                fid: fid.clone(),
                bearer,
                customer: Some(id.clone()),
                relationship_type: None,
                query: vec![],
                body: None,
            };
            match self.wire.send(&req).await {
                Ok(ex) if ex.status == 204 => out.removed += 1,
                Ok(ex) if ex.status == 404 && ex.error_code.as_deref() == Some("KFR-008") => out.already_absent += 1,
                Ok(ex) => out.leftovers.push(format!(
                    "{} for {fid}: delete answered {}",
                    mask(&id),
                    describe_exchange(&ex)
                )),
                Err(why) => out
                    .leftovers
                    .push(format!("{} for {fid}: delete failed: {why}", mask(&id))),
            }
            if fid == self.cfg.org_number && named.contains(&id) {
                to_verify.push(id);
            }
        }
        for id in to_verify {
            if let Ok(ex) = self.lookup_once(&id, None).await
                && self.shows_us(&ex.json)
            {
                out.leftovers.push(format!(
                    "{} is still shown by today's own lookup after the delete",
                    mask(&id)
                ));
            }
        }
        out
    }
}

/// A real token with its `exp` moved into the past. The signature no longer matches, so KFR
/// must refuse it whether it checks the expiry or the signature first; a KFR that accepts it
/// checks neither. Tokens that are not JWTs cannot be aged this way.
fn expired(token: &str) -> Result<String, String> {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let parts: Vec<&str> = token.split('.').collect();
    let [header, payload, signature] = parts.as_slice() else {
        return Err("the access token is not a JWT, so no expired copy can be made".into());
    };
    let mut claims: serde_json::Value = b64
        .decode(payload)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or("the access token's payload is not JSON")?;
    let now = Utc::now().timestamp();
    claims["exp"] = serde_json::json!(now - 600);
    claims["iat"] = serde_json::json!(now - 720);
    let payload = b64.encode(serde_json::to_vec(&claims).map_err(|e| e.to_string())?);
    Ok(format!("{header}.{payload}.{signature}"))
}

/// `json` at a dotted path; a numeric segment indexes an array, `#` is an array's length.
fn field(json: &serde_json::Value, path: &str) -> Option<serde_json::Value> {
    let mut cur = json;
    let segments: Vec<&str> = path.split('.').collect();
    for (i, seg) in segments.iter().enumerate() {
        if *seg == "#" && i + 1 == segments.len() {
            return cur.as_array().map(|a| serde_json::json!(a.len()));
        }
        cur = match seg.parse::<usize>() {
            Ok(n) => cur.get(n)?,
            Err(_) => cur.get(*seg)?,
        };
    }
    Some(cur.clone())
}

fn or_list<T: std::fmt::Display>(items: &[T]) -> String {
    items.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(" or ")
}

/// The answer in one line: status, error code and message, echo, and the `banks` of a lookup.
fn describe_exchange(ex: &Exchange) -> String {
    let mut s = format!("status {}", ex.status);
    if let Some(c) = &ex.error_code {
        let _ = write!(s, " {c}");
    }
    if let Some(m) = &ex.error_message {
        let _ = write!(s, " ({m})");
    }
    if let Some(banks) = ex.json.get("banks").and_then(|b| b.as_array()) {
        let orgs: Vec<String> = banks
            .iter()
            .map(|b| {
                format!(
                    "{} activeAccount={}",
                    b.get("organizationID").and_then(|o| o.as_str()).unwrap_or("?"),
                    b.get("activeAccount")
                        .map(|a| a.to_string())
                        .unwrap_or_else(|| "?".into())
                )
            })
            .collect();
        let _ = write!(s, ", banks [{}]", orgs.join("; "));
    }
    s.push_str(if ex.echoed {
        ", CorrelationID echoed"
    } else {
        ", CorrelationID not echoed"
    });
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_follow_dotted_paths_and_lengths() {
        let j = serde_json::json!({"banks": [{"organizationID": "916960190", "activeAccount": false}]});
        assert_eq!(field(&j, "banks.#"), Some(serde_json::json!(1)));
        assert_eq!(field(&j, "banks.0.activeAccount"), Some(serde_json::json!(false)));
        assert_eq!(field(&j, "banks.1.organizationID"), None);
        assert_eq!(
            field(&serde_json::json!({"banks": []}), "banks.#"),
            Some(serde_json::json!(0))
        );
    }

    #[test]
    fn an_expired_copy_keeps_header_and_signature_and_moves_exp_into_the_past() {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let payload = b64.encode(br#"{"exp":99999999999,"scope":"s"}"#);
        let t = expired(&format!("h.{payload}.sig")).unwrap();
        let parts: Vec<&str> = t.split('.').collect();
        assert_eq!((parts[0], parts[2]), ("h", "sig"));
        let claims: serde_json::Value = serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
        assert!(claims["exp"].as_i64().unwrap() < Utc::now().timestamp());
        assert_eq!(claims["scope"], "s");
        assert!(expired("opaque").is_err());
    }
}
