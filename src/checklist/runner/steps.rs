//! What each kind of step does: ask Maskinporten for a token, send one request to KFR (a batch
//! body built from the case's entries and filler), or wait for a batch to be ingested. Each
//! returns what happened in words, the problems against the step's expectations, and the
//! exchange kept as evidence; what a request may have registered is tracked for the cleanup.

use super::Runner;
use super::describe::describe_exchange;
use crate::checklist::cases::{Action, EntryId, Operation, Step, TokenChoice};
use crate::checklist::wire::{Exchange, Request, raw_batch};
use crate::ids::{CustomerId, IdPolicy};
use crate::kfr::batch::{BatchEntry, Layout};
use base64::Engine as _;
use chrono::{NaiveDate, Utc};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

impl Runner {
    /// A token step: Maskinporten gives a token for the scope asked, and its scope, type,
    /// consumer and lifetime match the expectations.
    pub(super) async fn token_step(&mut self, step: &Step) -> (String, Vec<String>, Option<Exchange>) {
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

    /// A request step (add, remove, lookup or batch): sends it as the case says (token, `fid`,
    /// dates, body) and judges KFR's answer; what it may have registered is tracked.
    pub(super) async fn request_step(&mut self, step: &Step) -> (String, Vec<String>, Option<Exchange>) {
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

    /// Batch entry texts in file order (filler first), and the body to send.
    pub(super) fn batch_body(&self, step: &Step) -> (Vec<String>, (String, Vec<u8>)) {
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
        if step.action == Action::Batch {
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

    /// Deterministic test organisation numbers (prefix 399) for `filler`: the same ones every
    /// run, so a run cut short leaves nothing the next run's cleanup would not find again.
    pub(super) fn filler(&self, n: usize) -> Vec<CustomerId> {
        let taken: BTreeSet<&str> = self.ids.values().map(|id| id.as_str()).collect();
        (0u32..)
            .filter_map(|i| crate::ids::synthetic::complete_org(&format!("399{i:05}")))
            .filter(|text| !taken.contains(text.as_str()))
            .filter_map(|text| CustomerId::parse(&text, &IdPolicy::test()).ok())
            .take(n)
            .collect()
    }

    /// Remembers what may now be registered (and what no longer is) for the cleanup.
    pub(super) fn track(&mut self, op: Operation, fid: &str, customer: Option<&str>, batch: &[String], status: u16) {
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

    /// A wait step: the last entry of an accepted batch shows in the own lookup within the
    /// ingest timeout, which proves the whole batch was stored (file order).
    pub(super) async fn wait_step(&mut self, step: &Step) -> (String, Vec<String>, Option<Exchange>) {
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
}

/// A real token with its `exp` moved into the past. The signature no longer matches, so KFR
/// must refuse it whether it checks the expiry or the signature first; a KFR that accepts it
/// checks neither. Tokens that are not JWTs cannot be aged this way.
pub(super) fn expired(token: &str) -> Result<String, String> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
