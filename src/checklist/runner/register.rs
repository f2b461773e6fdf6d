//! The run's footprint in the register: the preflight proves the cases start from nothing, the
//! own lookup (and the wait for ingestion) tells what KFR holds for us, and the cleanup removes
//! what the run registered, reporting what it could not.

use super::describe::describe_exchange;
use super::{Cleanup, Runner};
use crate::checklist::ChecklistError;
use crate::checklist::cases::{Operation, TokenChoice};
use crate::checklist::wire::{Exchange, Request};
use crate::ids::mask;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

impl Runner {
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

    /// One own lookup of `customer` with our `fid` and a valid token.
    pub(super) async fn lookup_once(&self, customer: &str, from: Option<&str>) -> Result<Exchange, String> {
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

    /// Whether a lookup answer lists our org.nr among the customer's `banks`.
    pub(super) fn shows_us(&self, json: &serde_json::Value) -> bool {
        json.get("banks").and_then(|b| b.as_array()).is_some_and(|banks| {
            banks
                .iter()
                .any(|b| b.get("organizationID").and_then(|o| o.as_str()) == Some(self.cfg.org_number.as_str()))
        })
    }

    /// Polls the own lookup until `customer` shows. kfr-notes §6: ingestion follows file order,
    /// so the last entry of a batch showing means the whole batch is stored.
    pub(super) async fn wait_until_shown(
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
}
