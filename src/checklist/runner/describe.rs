//! The report's words: each step and its expectations as a sentence, and an answer in one line.
//! Identifiers appear masked only.

use super::Runner;
use super::expect::or_list;
use crate::checklist::cases::{Action, EntryId, FidChoice, Operation, Step, Target, TokenChoice};
use crate::checklist::wire::Exchange;
use crate::ids::mask;
use std::fmt::Write as _;

impl Runner {
    /// The step in words, identifiers masked.
    pub(super) fn describe(&self, step: &Step) -> String {
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

    /// The step's expectations in words: what the report's "expected" column says.
    pub(super) fn describe_expect(&self, step: &Step) -> String {
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
        if step.action == Action::WaitIngested {
            parts.push("shown in the own lookup".into());
        }
        parts.join(", ")
    }

    /// A target as the report names it: the case file's name with the identifier masked.
    pub(super) fn name_of(&self, target: &Target) -> String {
        match target {
            Target::Named(n) => format!("{n} ({})", mask(self.ids[n].as_str())),
            Target::Raw(r) => format!("raw {}", mask(r)),
        }
    }
}

/// The answer in one line: status, error code and message, echo, and the `banks` of a lookup.
pub(super) fn describe_exchange(ex: &Exchange) -> String {
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
