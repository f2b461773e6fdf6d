//! Adds with a start date other than today: the single add has no start date (KFR records the
//! day of the call), so these go through the batch endpoint as `ID#DATE` entries, and the
//! customer's later events wait (the event stays its head, `Accepted`) until the entry is
//! confirmed ingested (issue 11 item 5).
//!
//! - **Before the upload** each entry's date is looked up (`fromDate = toDate = start`). If our
//!   org.nr already shows, a later lookup proves nothing, so that entry is confirmed by time:
//!   the expected ingestion time plus a margin (`IngestedByTime`). Otherwise it is confirmed
//!   when a lookup shows it (`IngestedSeen`).
//! - **An upload whose answer never came** (timeout, 5xx after the body went out) is never sent
//!   again blindly: `batch_unknown`, then after the expected ingestion time a lookup per entry;
//!   seen (and not seen before) ⇒ settled, else handed back to go again.
//! - **After a restart** what was seen before the upload is not known (it lives in memory):
//!   accepted entries are confirmed by time and a lookup; unknown uploads seen ⇒ settled by time.

use super::{Done, Shared, lock};
use crate::kfr::{BatchEntry, Layout, Verdict};
use crate::store::{Delivery, OutboxEvent, Rejection, Seq};
use chrono::{DateTime, NaiveDate, Utc};
use std::collections::HashMap;
use uuid::Uuid;

/// What is known in memory about uploads in progress.
#[derive(Debug, Default)]
pub(super) struct Book {
    /// Whether the entry was visible before its upload (`true`: confirm by time).
    visible_before: HashMap<Seq, bool>,
    /// When an upload was found to be of unknown fate (this run).
    unknown_since: HashMap<Uuid, DateTime<Utc>>,
}

/// What a lookup said.
enum Seen {
    Yes,
    No,
    /// Not answered; the failure was handled (paused, dead-lettered) or is worth another pass.
    Unknown,
}

impl Shared {
    /// Expected ingestion time of a batch of `entries`, plus the margin.
    fn ingest_wait(&self, entries: usize) -> chrono::Duration {
        let secs = entries as f64 / self.cfg.ingest_rate.max(0.001);
        chrono::Duration::milliseconds((secs * 1000.0) as i64)
            + chrono::Duration::from_std(self.cfg.ingest_margin).unwrap_or(chrono::Duration::zero())
    }

    /// One own lookup for `ev`'s start date, with its CorrelationID. A failure is handled here
    /// for the event when `fail_event` (before the upload); during confirmation only the pauses
    /// and a rejection act (the event stays accepted).
    async fn seen(&self, ev: &OutboxEvent, date: NaiveDate, fail_event: bool) -> Seen {
        let id = match self.customer(ev) {
            Ok(id) => id,
            Err(_) => return Seen::Unknown,
        };
        let a = {
            let _slot = self.slot().await;
            self.client
                .lookup_once(&id, Some(date), Some(date), ev.correlation_id)
                .await
        };
        self.observe("lookup", &a);
        if let Verdict::Delivered(banks) = &a.verdict {
            let visible = banks.iter().any(|b| b.organization_id == self.org);
            if lock(&self.pause).delivered() {
                self.health.set_paused(None);
                tracing::info!("delivery resumes: a lookup was answered");
            }
            return if visible { Seen::Yes } else { Seen::No };
        }
        let Some(f) = crate::sync::outcome::undelivered(&a, ev, &self.cfg.rules(), self.clock.now()) else {
            return Seen::Unknown;
        };
        if fail_event {
            self.failed(ev, f, false).await;
            return Seen::Unknown;
        }
        // A lookup while confirming an accepted entry: the event stays accepted; only what the
        // verdict means for every sender applies (a refusal parks it).
        match f.effect {
            crate::sync::outcome::Effect::RateLimited { retry_after } => {
                let wait = self.cfg.retry.delay(1, retry_after).min(self.cfg.retry.retry_after_cap);
                self.pause_for(wait, "rate_limited");
            }
            crate::sync::outcome::Effect::Systemic { scope, reason } => self.systemic(scope, reason),
            crate::sync::outcome::Effect::None | crate::sync::outcome::Effect::Outage { .. } => {}
        }
        if let crate::store::ClaimEnd::DeadLetter(r) = f.end {
            self.dead_letter(ev, r).await;
        }
        Seen::Unknown
    }

    /// Uploads one batch of back-dated adds (all claimed, in flight).
    pub(super) async fn upload(self: std::sync::Arc<Self>, batch: Vec<OutboxEvent>) -> Done {
        // 1. What KFR shows for each entry's date before we send anything: the lookups in
        // parallel, as many as the in-flight cap and the rate allow (each takes a request slot),
        // in the batch's order.
        use futures::StreamExt as _;
        let this = &self;
        let looked: Vec<(OutboxEvent, Seen)> = futures::stream::iter(batch)
            .map(|ev| async move {
                let date = ev.start_date.expect("back-dated adds have a start date");
                let seen = this.seen(&ev, date, true).await;
                (ev, seen)
            })
            .buffered(self.cfg.max_in_flight.max(1))
            .collect()
            .await;
        let mut going = vec![];
        for (ev, seen) in looked {
            match seen {
                Seen::Yes => {
                    lock(&self.book).visible_before.insert(ev.seq, true);
                    going.push(ev);
                }
                Seen::No => {
                    lock(&self.book).visible_before.insert(ev.seq, false);
                    going.push(ev);
                }
                // The event's failure was recorded (retry later, released, dead-lettered).
                Seen::Unknown => {}
            }
        }
        if going.is_empty() {
            return Done::Upload;
        }
        let mut entries = Vec::with_capacity(going.len());
        let mut ok = vec![];
        for ev in going {
            match self.customer(&ev) {
                Ok(id) => {
                    entries.push(BatchEntry {
                        id,
                        start: ev.start_date,
                    });
                    ok.push(ev);
                }
                Err(e) => {
                    let r = Rejection {
                        status: None,
                        code: None,
                        body: String::new(),
                        reason: format!("the stored customer identifier is not usable: {}", e.code()),
                    };
                    self.dead_letter(&ev, r).await;
                }
            }
        }
        let seqs: Vec<Seq> = ok.iter().map(|e| e.seq).collect();
        let body = Layout::new().encode(&entries);
        let bcid = Uuid::new_v4();
        // 2. Marked as carried by this upload before its first byte: from here on a restart
        // treats it as of unknown fate, never as unsent.
        if let Err(e) = self.store.begin_batch(seqs.clone(), bcid).await {
            self.store_problem("marking a batch upload", &e);
            return Done::Upload;
        }
        seqs.iter().for_each(|s| self.settled(*s));
        for ev in &ok {
            tracing::info!(seq = ev.seq, customer = %self.masked(ev), correlation_id = %ev.correlation_id, batch_correlation_id = %bcid, start = ?ev.start_date, "back-dated add goes by batch");
        }
        let a = {
            let _slot = self.slot().await;
            self.client.batch_once(&body, bcid).await
        };
        self.observe("batch", &a);
        let now = self.clock.now();
        // A batch's verdict, as `outcome::decide` reads a single's, except that a transient
        // failure after the body went out leaves the upload's fate unknown (probed, never
        // re-sent blindly) and a refusal parks every entry of it.
        let result = match &a.verdict {
            Verdict::Delivered(()) => {
                tracing::info!(batch_correlation_id = %bcid, entries = ok.len(), "batch accepted; confirming ingestion");
                lock(&self.tally).batches_accepted += 1;
                if lock(&self.pause).delivered() {
                    self.health.set_paused(None);
                }
                self.store.batch_accepted(bcid, now).await
            }
            // Nothing went out (no token): safe to hand back.
            Verdict::Transient { .. } if a.requests == 0 => self.store.release(seqs.clone(), now).await,
            Verdict::Transient { reason, server_delay } => {
                tracing::warn!(batch_correlation_id = %bcid, error = %crate::ids::scrub(reason), "batch upload's answer never came: its fate is unknown; probing before anything is sent again");
                lock(&self.tally).batches_unknown += 1;
                lock(&self.book).unknown_since.insert(bcid, now);
                if let Some(d) = server_delay {
                    self.pause_for((*d).min(self.cfg.retry.retry_after_cap), "outage");
                }
                self.store.batch_unknown(bcid, now).await
            }
            Verdict::RateLimited { retry_after } => {
                let wait = self
                    .cfg
                    .retry
                    .delay(1, *retry_after)
                    .min(self.cfg.retry.retry_after_cap);
                metrics::counter!("kfr_sync_rate_limit_waits_total").increment(1);
                metrics::counter!("kfr_sync_rate_limit_wait_seconds_total").increment(wait.as_secs());
                self.pause_for(wait, "rate_limited");
                self.store.release(seqs.clone(), now).await
            }
            Verdict::Systemic { scope, reason, .. } => {
                self.systemic(*scope, reason.clone());
                self.store.release(seqs.clone(), now).await
            }
            Verdict::Rejected { code, message } => {
                let r = crate::sync::outcome::rejection(&a, code, message);
                // Refused for content: every entry of it goes to the dead letters with the answer.
                for ev in &ok {
                    lock(&self.unsettled).insert(ev.seq);
                    self.dead_letter(ev, r.clone()).await;
                }
                Ok(())
            }
        };
        if let Err(e) = result {
            self.store_problem("recording a batch upload's answer", &e);
        }
        Done::Upload
    }

    /// One pass over the accepted entries: confirm what can be confirmed.
    pub(super) async fn confirm_pass(self: std::sync::Arc<Self>) -> Done {
        let accepted = match self.store.accepted(self.register.clone()).await {
            Ok(a) => a,
            Err(e) => {
                self.store_problem("reading accepted events", &e);
                return Done::Confirm;
            }
        };
        let mut sizes: HashMap<Option<Uuid>, usize> = HashMap::new();
        for ev in &accepted {
            *sizes.entry(ev.batch_correlation_id).or_default() += 1;
        }
        for ev in accepted {
            if lock(&self.pause).blocks(tokio::time::Instant::now()) {
                break;
            }
            let Some(date) = ev.start_date else {
                // Not ours to confirm by lookup (an accepted event always has its date here).
                continue;
            };
            let now = self.clock.now();
            let wait = self.ingest_wait(sizes[&ev.batch_correlation_id]);
            let before = lock(&self.book).visible_before.get(&ev.seq).copied();
            match ev.accepted_at {
                Some(at) => {
                    // Not seen before: every pass looks. Seen before or not known: only a look
                    // after the expected time counts, and then by time.
                    if before != Some(false) && now < at + wait {
                        continue;
                    }
                    match self.seen(&ev, date, false).await {
                        Seen::Yes => {
                            let how = if before == Some(false) {
                                Delivery::IngestedSeen
                            } else {
                                Delivery::IngestedByTime
                            };
                            tracing::info!(seq = ev.seq, customer = %self.masked(&ev), outcome = ?how, "back-dated add confirmed{}", if how == Delivery::IngestedByTime { " by the expected ingestion time (it was visible before the upload, so a lookup alone proves nothing)" } else { "" });
                            self.finish(&ev, how).await;
                        }
                        Seen::No => {
                            let bound =
                                chrono::Duration::from_std(self.cfg.give_up_after).unwrap_or(chrono::Duration::MAX);
                            if now - at >= bound {
                                let r = Rejection {
                                    status: Some(201),
                                    code: None,
                                    body: String::new(),
                                    reason: format!(
                                        "KFR accepted the batch at {at} but the entry was not seen ingested since"
                                    ),
                                };
                                lock(&self.unsettled).insert(ev.seq);
                                self.dead_letter(&ev, r).await;
                            } else if now >= at + wait {
                                tracing::warn!(seq = ev.seq, customer = %self.masked(&ev), "back-dated add not seen yet past its expected ingestion time");
                            }
                        }
                        Seen::Unknown => {}
                    }
                }
                None => {
                    let bcid = ev.batch_correlation_id.unwrap_or_default();
                    let since = *lock(&self.book).unknown_since.entry(bcid).or_insert(now);
                    if now < since + wait {
                        continue;
                    }
                    match (self.seen(&ev, date, false).await, before) {
                        (Seen::Yes, Some(false)) => self.finish(&ev, Delivery::IngestedSeen).await,
                        // Seen, but not known whether it was before (restart): by time.
                        (Seen::Yes, None) => self.finish(&ev, Delivery::IngestedByTime).await,
                        // Not seen, or seen before the upload (which proves nothing): it goes
                        // again. Sending an entry KFR already holds changes nothing.
                        (Seen::Yes, Some(true)) | (Seen::No, _) => {
                            tracing::info!(seq = ev.seq, customer = %self.masked(&ev), "upload of unknown fate not confirmed: the add goes again");
                            if let Err(e) = self.store.release(vec![ev.seq], self.clock.now()).await {
                                self.store_problem("handing back an unconfirmed upload", &e);
                            }
                            lock(&self.book).visible_before.remove(&ev.seq);
                        }
                        (Seen::Unknown, _) => {}
                    }
                }
            }
        }
        Done::Confirm
    }

    async fn finish(&self, ev: &OutboxEvent, how: Delivery) {
        lock(&self.book).visible_before.remove(&ev.seq);
        self.settle(ev, how, None).await;
    }
}
