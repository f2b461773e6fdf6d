//! The checklist's cases as data: the TOML model, parsing with file and line in every refusal,
//! and the checks that make a case file usable before anything is sent.
//!
//! Bits' own spreadsheet is not public (kfr-notes §8), so the cases live in a file testers can
//! rename and extend; the built-in one is `integration-tests/checklists/kfr.toml`. Its format is
//! described in docs/checklist.md. Every step that talks to KFR must state an expected status,
//! so a case cannot pass by asserting nothing.

use super::ChecklistError;
use crate::environment::Environment;
use crate::ids::{CustomerId, IdKind, IdPolicy};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use toml::Spanned;

/// The built-in case file.
pub const DEFAULT_CASES: &str = include_str!("../../integration-tests/checklists/kfr.toml");

/// How the built-in case file is named in messages and reports.
pub const DEFAULT_CASES_NAME: &str = "(built-in) integration-tests/checklists/kfr.toml";

/// A case file refused: where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {reason}")]
pub struct CaseFileError {
    pub file: String,
    /// 1-based line of the offending item (1 when TOML gives no position).
    pub line: usize,
    pub reason: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRaw {
    #[serde(default)]
    settings: Settings,
    #[serde(default)]
    identifiers: BTreeMap<String, Spanned<String>>,
    #[serde(rename = "case", default)]
    cases: Vec<Spanned<CaseRaw>>,
}

/// `[settings]` of a case file; command-line flags override them.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Another institution's org.nr for the "another fid" override (KFR-003).
    pub other_fid: Option<String>,
    /// A scope the client may get that is not `bits:kundeforhold.write` (KFR-002).
    pub other_scope: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseRaw {
    id: String,
    title: String,
    #[serde(rename = "step", default)]
    steps: Vec<Spanned<StepRaw>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StepRaw {
    #[serde(rename = "do")]
    action: Action,
    operation: Option<Operation>,
    customer: Option<String>,
    raw_customer: Option<String>,
    fid: Option<FidChoice>,
    token: Option<TokenChoice>,
    relationship_type: Option<String>,
    from: Option<String>,
    to: Option<String>,
    entries: Option<Vec<EntryRaw>>,
    filler: Option<usize>,
    quoted_boundary: Option<bool>,
    timeout_secs: Option<u64>,
    expect: Option<ExpectRaw>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryRaw {
    customer: Option<String>,
    raw: Option<String>,
    start: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<T> OneOrMany<T> {
    fn into_vec(self) -> Vec<T> {
        match self {
            OneOrMany::One(t) => vec![t],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpectRaw {
    status: Option<OneOrMany<u16>>,
    error_code: Option<OneOrMany<String>>,
    correlation_id_echoed: Option<bool>,
    found: Option<bool>,
    #[serde(default)]
    fields: BTreeMap<String, toml::Value>,
}

/// What a step does. `request` is the one that deliberately deviates from what a correct
/// client sends (the overrides); the others send exactly what `kfr` itself would.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Token,
    Add,
    Remove,
    Lookup,
    Batch,
    WaitIngested,
    Request,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Action::Token => "token",
            Action::Add => "add",
            Action::Remove => "remove",
            Action::Lookup => "lookup",
            Action::Batch => "batch",
            Action::WaitIngested => "wait_ingested",
            Action::Request => "request",
        }
    }
}

/// The KFR operation of a `request` step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    Add,
    Remove,
    Lookup,
    Batch,
}

/// Whose `fid` goes into the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FidChoice {
    #[default]
    Own,
    Other,
}

/// Which bearer token is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenChoice {
    /// A token for `bits:kundeforhold.write`, as a correct client sends.
    #[default]
    Valid,
    /// No `Authorization` header.
    None,
    /// A real token whose `exp` is rewritten into the past (see runner).
    Expired,
    /// A token for the configured other scope, without write access.
    OtherScope,
}

/// One batch entry: a named identifier or raw text, and an optional start date as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryId {
    Named(String),
    Raw(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: EntryId,
    pub start: Option<String>,
}

/// Expectations on one step's answer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Expect {
    /// Any of these statuses (empty: not checked).
    pub status: Vec<u16>,
    /// Any of these `errorCode`s (empty: not checked).
    pub error_code: Vec<String>,
    pub correlation_id_echoed: Option<bool>,
    /// Own lookup: whether `banks` holds our org.nr.
    pub found: Option<bool>,
    /// JSON fields by dotted path (`banks.0.activeAccount`; `banks.#` is the array length);
    /// `{org}` and `{other_fid}` in string values stand for the org numbers.
    pub fields: BTreeMap<String, toml::Value>,
}

/// The customer a single-relationship step names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Named(String),
    Raw(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub action: Action,
    /// The operation: `action` itself, or for `request` its `operation`.
    pub operation: Option<Operation>,
    pub target: Option<Target>,
    pub fid: FidChoice,
    pub token: TokenChoice,
    pub relationship_type: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub entries: Vec<Entry>,
    pub filler: usize,
    pub quoted_boundary: bool,
    pub timeout_secs: Option<u64>,
    pub expect: Expect,
    pub line: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Case {
    pub id: String,
    pub title: String,
    pub steps: Vec<Step>,
    pub line: usize,
}

/// A parsed, checked case file.
#[derive(Debug, Clone, PartialEq)]
pub struct CaseFile {
    /// Where it came from, for messages and the report.
    pub source: String,
    pub settings: Settings,
    /// Name → identifier text as written (resolved by [`resolve_identifiers`]).
    pub identifiers: BTreeMap<String, String>,
    pub cases: Vec<Case>,
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].bytes().filter(|b| *b == b'\n').count() + 1
}

/// Parses and checks a case file. `source` names it in errors (a path, or the built-in name).
pub fn parse(text: &str, source: &str) -> Result<CaseFile, CaseFileError> {
    let err = |offset: usize, reason: String| CaseFileError {
        file: source.to_string(),
        line: line_of(text, offset),
        reason,
    };
    let raw: FileRaw = toml::from_str(text).map_err(|e| {
        let offset = e.span().map(|s| s.start).unwrap_or(0);
        err(offset, e.message().trim().to_string())
    })?;

    let mut identifiers = BTreeMap::new();
    for (name, value) in raw.identifiers {
        if !is_name(&name) {
            return Err(err(
                value.span().start,
                format!("identifier name {name:?} must be letters, digits and '_'"),
            ));
        }
        identifiers.insert(name, value.into_inner());
    }

    if raw.cases.is_empty() {
        return Err(err(0, "no [[case]] in the file".into()));
    }
    let mut seen = BTreeSet::new();
    let mut cases = Vec::new();
    for spanned in raw.cases {
        let at = spanned.span().start;
        let case = spanned.into_inner();
        if case.id.trim().is_empty() || case.id.chars().any(char::is_whitespace) {
            return Err(err(
                at,
                format!("case id {:?} must be non-empty without spaces", case.id),
            ));
        }
        if !seen.insert(case.id.clone()) {
            return Err(err(at, format!("case id {} is used twice", case.id)));
        }
        if case.title.trim().is_empty() {
            return Err(err(at, format!("case {} has an empty title", case.id)));
        }
        if case.steps.is_empty() {
            return Err(err(at, format!("case {} has no [[case.step]]", case.id)));
        }
        let mut steps = Vec::new();
        for s in case.steps {
            let at = s.span().start;
            let step = check_step(s.into_inner(), line_of(text, at), &identifiers)
                .map_err(|reason| err(at, format!("case {}: {reason}", case.id)))?;
            steps.push(step);
        }
        cases.push(Case {
            id: case.id,
            title: case.title,
            steps,
            line: line_of(text, at),
        });
    }
    Ok(CaseFile {
        source: source.to_string(),
        settings: raw.settings,
        identifiers,
        cases,
    })
}

fn is_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Checks one step against the vocabulary: which fields each action takes, which it needs.
fn check_step(s: StepRaw, line: usize, ids: &BTreeMap<String, String>) -> Result<Step, String> {
    let a = s.action;
    let known = |name: &str| -> Result<(), String> {
        if ids.contains_key(name) {
            Ok(())
        } else {
            Err(format!(
                "step `{}` names identifier {name:?}, which [identifiers] does not define",
                a.name()
            ))
        }
    };
    let forbid = |present: bool, field: &str| -> Result<(), String> {
        if present {
            Err(format!("step `{}` does not take `{field}`", a.name()))
        } else {
            Ok(())
        }
    };
    let is_request = a == Action::Request;
    // The overrides make a request deliberately wrong; only `request` may carry them.
    if !is_request {
        forbid(s.operation.is_some(), "operation")?;
        forbid(s.raw_customer.is_some(), "raw_customer (use `do = \"request\"`)")?;
        forbid(s.fid.is_some(), "fid (use `do = \"request\"`)")?;
        forbid(
            s.relationship_type.is_some(),
            "relationship_type (use `do = \"request\"`)",
        )?;
        forbid(s.quoted_boundary.is_some(), "quoted_boundary (use `do = \"request\"`)")?;
        if a != Action::Token {
            forbid(s.token.is_some(), "token (use `do = \"request\"`)")?;
        }
    }
    let operation = match a {
        Action::Request => Some(
            s.operation
                .ok_or("step `request` needs `operation` (add, remove, lookup or batch)")?,
        ),
        Action::Add => Some(Operation::Add),
        Action::Remove => Some(Operation::Remove),
        Action::Lookup => Some(Operation::Lookup),
        Action::Batch => Some(Operation::Batch),
        Action::Token | Action::WaitIngested => None,
    };
    let single =
        matches!(operation, Some(Operation::Add | Operation::Remove | Operation::Lookup)) || a == Action::WaitIngested;
    let target = match (&s.customer, &s.raw_customer) {
        (Some(_), Some(_)) => return Err("give `customer` or `raw_customer`, not both".into()),
        (Some(c), None) => {
            known(c)?;
            Some(Target::Named(c.clone()))
        }
        (None, Some(r)) => Some(Target::Raw(r.clone())),
        (None, None) => None,
    };
    if single && target.is_none() {
        return Err(format!("step `{}` needs `customer`", a.name()));
    }
    if !single {
        forbid(target.is_some(), "customer")?;
    }
    let lookup_like = operation == Some(Operation::Lookup) || a == Action::WaitIngested;
    forbid(!lookup_like && s.from.is_some(), "from")?;
    forbid(!lookup_like && s.to.is_some(), "to")?;
    forbid(a == Action::WaitIngested && s.to.is_some(), "to")?;
    let is_batch = operation == Some(Operation::Batch);
    forbid(!is_batch && s.entries.is_some(), "entries")?;
    forbid(!is_batch && s.filler.is_some(), "filler")?;
    forbid(!is_batch && s.quoted_boundary.is_some(), "quoted_boundary")?;
    forbid(a != Action::WaitIngested && s.timeout_secs.is_some(), "timeout_secs")?;
    forbid(
        matches!(operation, Some(Operation::Lookup | Operation::Batch)) && s.relationship_type.is_some(),
        "relationship_type",
    )?;
    if a == Action::Token && matches!(s.token, Some(TokenChoice::None | TokenChoice::Expired)) {
        return Err("step `token` takes `token = \"valid\"` or `\"other_scope\"` only".into());
    }

    let mut entries = Vec::new();
    for (i, e) in s.entries.unwrap_or_default().into_iter().enumerate() {
        let n = i + 1;
        let id = match (e.customer, e.raw) {
            (Some(c), None) => {
                known(&c)?;
                EntryId::Named(c)
            }
            (None, Some(r)) if is_request => EntryId::Raw(r),
            (None, Some(_)) => return Err(format!("entry {n}: `raw` entries need `do = \"request\"`")),
            _ => return Err(format!("entry {n}: give exactly one of `customer` or `raw`")),
        };
        if !is_request
            && let Some(d) = &e.start
            && chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").is_err()
        {
            return Err(format!(
                "entry {n}: start {d:?} is not a YYYY-MM-DD date (a malformed date needs `do = \"request\"`)"
            ));
        }
        entries.push(Entry { id, start: e.start });
    }
    let filler = s.filler.unwrap_or(0);
    if is_batch && entries.is_empty() {
        return Err("a batch step needs `entries` (the last one is what `wait_ingested` watches)".into());
    }
    if filler > 10_000 {
        return Err(format!("filler {filler} is more than 10000 entries"));
    }

    let expect = match s.expect {
        None => Expect::default(),
        Some(e) => Expect {
            status: e.status.map(OneOrMany::into_vec).unwrap_or_default(),
            error_code: e.error_code.map(OneOrMany::into_vec).unwrap_or_default(),
            correlation_id_echoed: e.correlation_id_echoed,
            found: e.found,
            fields: e.fields,
        },
    };
    // A step that talks to KFR and checks nothing could never fail.
    if operation.is_some() && expect.status.is_empty() {
        return Err(format!("step `{}` needs `expect.status`", a.name()));
    }
    if a == Action::Token && !expect.status.is_empty() {
        return Err("step `token` checks `expect.fields` (scope, token_type, consumer_org), not a status".into());
    }
    if a == Action::Token && expect.fields.is_empty() {
        return Err("step `token` needs `expect.fields`".into());
    }
    if a == Action::WaitIngested && (expect != Expect::default()) {
        return Err("step `wait_ingested` takes no `expect`: it passes when the customer shows".into());
    }
    if expect.found.is_some() && operation != Some(Operation::Lookup) {
        return Err("`expect.found` applies to lookups only".into());
    }
    Ok(Step {
        action: a,
        operation,
        target,
        fid: s.fid.unwrap_or_default(),
        token: s.token.unwrap_or_default(),
        relationship_type: s.relationship_type,
        from: s.from,
        to: s.to,
        entries,
        filler,
        quoted_boundary: s.quoted_boundary.unwrap_or(false),
        timeout_secs: s.timeout_secs,
        expect,
        line,
    })
}

impl CaseFile {
    /// Keeps only the cases in `only` (all when empty); an unknown id is an error.
    pub fn select(&mut self, only: &[String]) -> Result<(), ChecklistError> {
        if only.is_empty() {
            return Ok(());
        }
        let unknown: Vec<&String> = only
            .iter()
            .filter(|id| !self.cases.iter().any(|c| &c.id == *id))
            .collect();
        if !unknown.is_empty() {
            return Err(ChecklistError::UnknownCase {
                ids: unknown.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(", "),
                known: self.cases.iter().map(|c| c.id.clone()).collect::<Vec<_>>().join(", "),
            });
        }
        self.cases.retain(|c| only.contains(&c.id));
        Ok(())
    }

    /// The identifier names the cases use.
    pub fn used_names(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for step in self.cases.iter().flat_map(|c| &c.steps) {
            if let Some(Target::Named(n)) = &step.target {
                out.insert(n.clone());
            }
            for e in &step.entries {
                if let EntryId::Named(n) = &e.id {
                    out.insert(n.clone());
                }
            }
        }
        out
    }
}

/// The kinds a checklist run may use: synthetic identities only, since the run writes to a
/// register (kfr-notes §7: Tenor +80 persons and 2/3-prefixed test organisations).
pub fn is_synthetic(kind: IdKind) -> bool {
    matches!(
        kind,
        IdKind::SyntheticFodselsnummer | IdKind::SyntheticDNumber | IdKind::TestOrgNumber
    )
}

/// Applies `NAME=ID` overrides and validates every identifier the cases use: each must be a
/// valid synthetic identity. Raw texts (meant to be invalid) must not be a real person's number.
pub fn resolve_identifiers(
    file: &CaseFile,
    overrides: &[(String, String)],
    env: Environment,
) -> Result<BTreeMap<String, CustomerId>, ChecklistError> {
    if env == Environment::Prod {
        return Err(ChecklistError::Production);
    }
    let mut texts = file.identifiers.clone();
    for (name, value) in overrides {
        if !texts.contains_key(name) {
            return Err(ChecklistError::UnknownIdentifier {
                name: name.clone(),
                known: texts.keys().cloned().collect::<Vec<_>>().join(", "),
            });
        }
        texts.insert(name.clone(), value.clone());
    }
    let used = file.used_names();
    let mut out = BTreeMap::new();
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for (name, text) in &texts {
        if !used.contains(name) {
            continue;
        }
        let id = CustomerId::parse(text, &IdPolicy::test()).map_err(|e| ChecklistError::BadIdentifier {
            name: name.clone(),
            masked: crate::ids::mask(text),
            reason: e.to_string(),
        })?;
        if !is_synthetic(id.kind()) {
            return Err(ChecklistError::NotSynthetic {
                name: name.clone(),
                masked: crate::ids::mask(text),
                kind: id.kind().label(),
            });
        }
        // Two names for one identifier would make the cases interfere with each other.
        if let Some(other) = seen.insert(id.as_str().to_string(), name.clone()) {
            return Err(ChecklistError::DuplicateIdentifier {
                a: other,
                b: name.clone(),
            });
        }
        out.insert(name.clone(), id);
    }
    for step in file.cases.iter().flat_map(|c| &c.steps) {
        let raws = step
            .entries
            .iter()
            .filter_map(|e| match &e.id {
                EntryId::Raw(r) => Some(r),
                EntryId::Named(_) => None,
            })
            .chain(match &step.target {
                Some(Target::Raw(r)) => Some(r),
                _ => None,
            });
        for raw in raws {
            if let Ok(id) = CustomerId::parse(raw, &IdPolicy::test())
                && id.is_person()
                && !is_synthetic(id.kind())
            {
                return Err(ChecklistError::RawLooksReal {
                    line: step.line,
                    masked: crate::ids::mask(raw),
                });
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_err(text: &str) -> CaseFileError {
        parse(text, "cases.toml").unwrap_err()
    }

    const MINIMAL: &str = r#"
[identifiers]
person = "15888610046"

[[case]]
id = "A"
title = "add"
[[case.step]]
do = "add"
customer = "person"
expect = { status = 201 }
"#;

    #[test]
    fn the_built_in_file_parses_with_at_least_17_cases_and_synthetic_identifiers() {
        let f = parse(DEFAULT_CASES, DEFAULT_CASES_NAME).unwrap();
        assert!(f.cases.len() >= 17, "{} cases", f.cases.len());
        let ids = resolve_identifiers(&f, &[], Environment::Test).unwrap();
        assert!(ids.values().all(|id| is_synthetic(id.kind())));
        assert!(f.settings.other_fid.is_some() && f.settings.other_scope.is_some());
    }

    #[test]
    fn a_minimal_file_parses() {
        let f = parse(MINIMAL, "x").unwrap();
        assert_eq!(f.cases[0].steps[0].expect.status, vec![201]);
        assert_eq!(f.cases[0].steps[0].target, Some(Target::Named("person".into())));
        assert_eq!(f.cases[0].steps[0].line, 8);
    }

    #[test]
    fn toml_syntax_errors_carry_file_and_line() {
        let e = parse_err("[identifiers]\nperson = \"1\"\n\n[[case]]\nid = \n");
        assert_eq!((e.file.as_str(), e.line), ("cases.toml", 5), "{e}");
        assert!(e.to_string().starts_with("cases.toml:5: "), "{e}");
    }

    #[test]
    fn unknown_fields_and_actions_are_refused_at_their_line() {
        let e = parse_err(&MINIMAL.replace("do = \"add\"", "do = \"add\"\ncolour = 1"));
        assert_eq!(e.line, 10, "{e}");
        assert!(e.reason.contains("colour"), "{e}");
        let e = parse_err(&MINIMAL.replace("do = \"add\"", "do = \"append\""));
        assert!(e.reason.contains("append"), "{e}");
        assert_eq!(e.line, 9, "{e}");
    }

    #[test]
    fn vocabulary_rules_are_enforced_with_the_step_line() {
        let e = parse_err(&MINIMAL.replace("customer = \"person\"", "customer = \"nobody\""));
        assert!(e.reason.contains("nobody") && e.reason.contains("case A"), "{e}");
        // Rules across a step's fields point at the step's `[[case.step]]` line.
        assert_eq!(e.line, 8);
        let e = parse_err(&MINIMAL.replace("expect = { status = 201 }", ""));
        assert!(e.reason.contains("expect.status"), "{e}");
        let e = parse_err(&MINIMAL.replace("customer = \"person\"", "customer = \"person\"\nfid = \"other\""));
        assert!(e.reason.contains("request"), "{e}");
        let e = parse_err(&format!(
            "{MINIMAL}\n[[case]]\nid = \"A\"\ntitle = \"again\"\n[[case.step]]\ndo = \"token\"\nexpect = {{ fields = {{ scope = \"x\" }} }}\n"
        ));
        assert!(e.reason.contains("used twice"), "{e}");
        assert_eq!(e.line, 13, "the second [[case]] header");
    }

    #[test]
    fn real_people_and_invalid_identifiers_are_refused() {
        let f = parse(MINIMAL, "x").unwrap();
        // 02013299997: a published valid fødselsnummer (not synthetic).
        let e = resolve_identifiers(&f, &[("person".into(), "02013299997".into())], Environment::Test).unwrap_err();
        assert!(matches!(e, ChecklistError::NotSynthetic { .. }), "{e}");
        assert!(!e.to_string().contains("02013299997"), "{e}");
        let e = resolve_identifiers(&f, &[("person".into(), "15888610047".into())], Environment::Local).unwrap_err();
        assert!(matches!(e, ChecklistError::BadIdentifier { .. }), "{e}");
        let e = resolve_identifiers(&f, &[("nobody".into(), "15888610046".into())], Environment::Test).unwrap_err();
        assert!(matches!(e, ChecklistError::UnknownIdentifier { .. }), "{e}");
        assert!(matches!(
            resolve_identifiers(&f, &[], Environment::Prod).unwrap_err(),
            ChecklistError::Production
        ));
    }

    #[test]
    fn a_raw_customer_that_is_a_real_person_is_refused() {
        let text = MINIMAL.replace(
            "do = \"add\"\ncustomer = \"person\"",
            "do = \"request\"\noperation = \"add\"\nraw_customer = \"02013299997\"",
        );
        let f = parse(&text, "x").unwrap();
        let e = resolve_identifiers(&f, &[], Environment::Local).unwrap_err();
        assert!(matches!(e, ChecklistError::RawLooksReal { .. }), "{e}");
    }

    #[test]
    fn only_selects_cases_and_refuses_unknown_ids() {
        let mut f = parse(DEFAULT_CASES, DEFAULT_CASES_NAME).unwrap();
        let first = f.cases[0].id.clone();
        assert!(f.select(&["NOPE".into()]).is_err());
        f.select(std::slice::from_ref(&first)).unwrap();
        assert_eq!(f.cases.len(), 1);
    }
}
