//! One attempt, one verdict, one outcome: the single function that turns KFR's verdict on an
//! attempt at an outbox event into what the outbox records ([`ClaimEnd`]) and what the sender
//! must do besides ([`Effect`]). The sync agent's dispatcher, `kfr add/remove` and the load's
//! held operations all call [`decide`], so a verdict means the same whoever sent the request
//! (docs/specs/verdicts.md):
//!
//! - delivered → the event is settled (200 and 404 on a remove count as delivered: idempotent);
//! - rejected → dead-lettered: only its customer is parked, visible in `kfr dlq list`;
//! - transient → retried later with backoff, until `give_up_after` since the first failure of
//!   the run, then dead-lettered saying so; when the request may still be carried out (no
//!   answer, a 5xx: its fate is unknown) not before `in_doubt` has passed, so the customer's
//!   next event cannot be overtaken by it (in doubt means hold);
//! - rate-limited → handed back without counting an attempt; every sender pauses;
//! - systemic (credentials, permission, institution, endpoint) → handed back untouched; the
//!   sender stops (an agent pauses and probes, a command or a load ends) — it never parks an
//!   event, since nothing about the event is wrong.

use crate::http::RetryPolicy;
use crate::ids::scrub;
use crate::kfr::{AddOutcome, Attempt, RemoveOutcome, Scope, Verdict};
use crate::store::{ClaimEnd, Delivery, OutboxEvent, Rejection};
use chrono::{DateTime, Utc};
use std::time::Duration;

/// How transient failures are retried.
#[derive(Debug, Clone)]
pub struct Rules {
    pub retry: RetryPolicy,
    /// Transient failures are retried for this long after the first one of a run, then the event
    /// is dead-lettered (bounded by time, not count).
    pub give_up_after: Duration,
    /// How long a request may still be carried out after its sender gave up on it (between us
    /// and KFR: a gateway's queue, KFR's own processing): an attempt whose fate is unknown holds
    /// its customer at least this long before the same operation is tried again.
    pub in_doubt: Duration,
}

/// What the sender does besides recording the outcome.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Nothing: go on with the next event.
    None,
    /// The service named a time to come back (`Retry-After` on a 5xx): nobody sends before then.
    Outage { wait: Duration },
    /// 429: every sender pauses; the server's `Retry-After`, if it sent one.
    RateLimited { retry_after: Option<Duration> },
    /// Nothing can succeed in `scope` until someone acts: stop sending (an agent pauses and
    /// probes).
    Systemic { scope: Scope, reason: String },
}

/// What one attempt means for its event.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub end: ClaimEnd,
    pub effect: Effect,
}

/// A delivered answer as the outbox records it.
pub trait AsDelivery {
    fn delivery(&self) -> Delivery;
}

impl AsDelivery for AddOutcome {
    fn delivery(&self) -> Delivery {
        match self {
            AddOutcome::Added => Delivery::Added,
            AddOutcome::AlreadyPresent => Delivery::AlreadyPresent,
        }
    }
}

impl AsDelivery for RemoveOutcome {
    fn delivery(&self) -> Delivery {
        match self {
            RemoveOutcome::Removed => Delivery::Removed,
            RemoveOutcome::NotFound => Delivery::NotFound,
        }
    }
}

/// The outcome of attempt `a` at event `ev`, at `now`.
pub fn decide<D: AsDelivery>(a: &Attempt<D>, ev: &OutboxEvent, rules: &Rules, now: DateTime<Utc>) -> Outcome {
    match &a.verdict {
        Verdict::Delivered(d) => Outcome {
            end: ClaimEnd::Delivered {
                delivery: d.delivery(),
                echoed_correlation_id: a.echoed_correlation_id.clone(),
            },
            effect: Effect::None,
        },
        _ => undelivered(a, ev, rules, now).expect("a verdict other than delivered"),
    }
}

/// The outcome for `ev` of an attempt that did not deliver (any request made for the event: its
/// add or remove, or a lookup it needed); `None` when it was delivered.
pub fn undelivered<D>(a: &Attempt<D>, ev: &OutboxEvent, rules: &Rules, now: DateTime<Utc>) -> Option<Outcome> {
    let (end, effect) = match &a.verdict {
        Verdict::Delivered(_) => return None,
        Verdict::Transient { reason, server_delay } => {
            let effect = server_delay.map_or(Effect::None, |d| Effect::Outage {
                wait: d.min(rules.retry.retry_after_cap),
            });
            let in_doubt = a.error().is_some_and(crate::kfr::KfrError::fate_unknown);
            (transient(ev, reason, *server_delay, in_doubt, rules, now), effect)
        }
        Verdict::RateLimited { retry_after } => (
            ClaimEnd::Release {
                error: "rate limited (429)".into(),
            },
            Effect::RateLimited {
                retry_after: *retry_after,
            },
        ),
        Verdict::Systemic { scope, reason, .. } => (
            ClaimEnd::Release { error: scrub(reason) },
            Effect::Systemic {
                scope: *scope,
                reason: reason.clone(),
            },
        ),
        Verdict::Rejected { code, message } => (ClaimEnd::DeadLetter(rejection(a, code, message)), Effect::None),
    };
    Some(Outcome { end, effect })
}

/// A transient failure: the next attempt's time, or a dead letter once the run of failures has
/// lasted `give_up_after`.
fn transient(
    ev: &OutboxEvent,
    reason: &str,
    server_delay: Option<Duration>,
    in_doubt: bool,
    rules: &Rules,
    now: DateTime<Utc>,
) -> ClaimEnd {
    let since = ev.failing_since.unwrap_or(now);
    let bound = chrono::Duration::from_std(rules.give_up_after).unwrap_or(chrono::Duration::MAX);
    if now - since >= bound {
        let hours = rules.give_up_after.as_secs_f64() / 3600.0;
        return ClaimEnd::DeadLetter(Rejection {
            status: None,
            code: None,
            body: scrub(reason),
            reason: format!(
                "transient failures for {hours:.0} h (since {since}); last: {}",
                scrub(reason)
            ),
        });
    }
    let mut delay = rules.retry.delay(ev.attempts + 1, server_delay);
    let mut error = scrub(reason);
    if in_doubt {
        // The request may still be carried out: nothing of this customer goes (not even this
        // operation again) until it no longer can. The next attempt then settles it.
        delay = delay.max(rules.in_doubt);
        error = format!("{error} (in doubt: it may still be carried out, so its customer waits)");
    }
    ClaimEnd::RetryLater {
        not_before: now + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::zero()),
        error,
    }
}

/// KFR's refusal, kept whole for the operator (server text masked).
pub(crate) fn rejection<D>(a: &Attempt<D>, code: &Option<String>, message: &str) -> Rejection {
    let body = a.error().map(|e| scrub(&e.to_string())).unwrap_or_default();
    Rejection {
        status: a.status,
        code: code.clone(),
        reason: format!(
            "KFR refused it{}{}: {}",
            a.status.map(|s| format!(" ({s}")).unwrap_or_default(),
            match (a.status, code) {
                (Some(_), Some(c)) => format!(" {c})"),
                (Some(_), None) => ")".into(),
                _ => String::new(),
            },
            scrub(message)
        ),
        body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kfr::KfrError;
    use crate::kfr::verdict::AttemptMeta;
    use crate::store::{EventState, OutboxEvent};
    use chrono::TimeZone as _;
    use uuid::Uuid;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2030, 1, 1, 12, 0, 0).unwrap()
    }

    fn event(failing_since: Option<DateTime<Utc>>) -> OutboxEvent {
        OutboxEvent {
            seq: 1,
            register: "r".into(),
            event_id: "e".into(),
            op: crate::store::Operation::Remove,
            customer_id: "c".into(),
            start_date: None,
            occurred_at: now(),
            source: "test".into(),
            received_at: now(),
            correlation_id: Uuid::nil(),
            state: EventState::InFlight,
            attempts: 0,
            next_attempt_at: None,
            failing_since,
            last_error: None,
            batch_correlation_id: None,
            accepted_at: None,
            claimer: None,
            claimed_until: None,
            delivery: None,
        }
    }

    fn rules() -> Rules {
        Rules {
            retry: RetryPolicy::immediate(u32::MAX),
            give_up_after: Duration::from_secs(3600),
            in_doubt: Duration::from_secs(120),
        }
    }

    fn failed(status: Option<u16>, e: KfrError) -> Attempt<RemoveOutcome> {
        let meta = AttemptMeta {
            status,
            latency: Duration::ZERO,
            correlation_id: Uuid::nil(),
            echoed_correlation_id: None,
            requests: 1,
        };
        Attempt::new(meta, Err(e))
    }

    fn api(status: u16, code: Option<&str>) -> KfrError {
        let class = crate::kfr::verdict::classify(crate::kfr::Operation::Remove, status, code).unwrap_err();
        KfrError::Api {
            status,
            code: code.map(str::to_string),
            message: "m".into(),
            correlation_id: Uuid::nil(),
            retry_after: None,
            class,
        }
    }

    #[test]
    fn an_attempt_of_unknown_fate_holds_its_customer_for_the_bound() {
        let timeout = KfrError::Transport {
            url: "u".into(),
            reason: "timed out".into(),
            timeout: true,
            correlation_id: Uuid::nil(),
        };
        for a in [failed(None, timeout), failed(Some(502), api(502, None))] {
            let o = decide(&a, &event(None), &rules(), now());
            let ClaimEnd::RetryLater { not_before, error } = o.end else {
                panic!("{o:?}")
            };
            assert!(not_before >= now() + chrono::Duration::seconds(120), "{not_before}");
            assert!(error.contains("in doubt"), "{error}");
        }
    }

    #[test]
    fn each_verdict_has_its_one_outcome() {
        // Refused for its content: a dead letter with KFR's code.
        let o = decide(
            &failed(Some(400), api(400, Some("KFR-005"))),
            &event(None),
            &rules(),
            now(),
        );
        assert!(
            matches!(&o.end, ClaimEnd::DeadLetter(r) if r.code.as_deref() == Some("KFR-005")),
            "{o:?}"
        );
        // A rate limit: handed back, everyone pauses.
        let o = decide(&failed(Some(429), api(429, None)), &event(None), &rules(), now());
        assert!(matches!(o.end, ClaimEnd::Release { .. }) && matches!(o.effect, Effect::RateLimited { .. }));
        // No access for the institution: handed back, never parked, the sender stops.
        let o = decide(
            &failed(Some(403), api(403, Some("KFR-002"))),
            &event(None),
            &rules(),
            now(),
        );
        assert!(matches!(o.end, ClaimEnd::Release { .. }), "{o:?}");
        assert!(matches!(o.effect, Effect::Systemic { .. }), "{o:?}");
        // Transient for longer than give_up_after: dead-lettered saying so.
        let since = now() - chrono::Duration::hours(2);
        let o = decide(&failed(Some(503), api(503, None)), &event(Some(since)), &rules(), now());
        assert!(
            matches!(&o.end, ClaimEnd::DeadLetter(r) if r.reason.starts_with("transient failures")),
            "{o:?}"
        );
        // Delivered: settled with what KFR answered.
        let meta = AttemptMeta {
            status: Some(404),
            latency: Duration::ZERO,
            correlation_id: Uuid::nil(),
            echoed_correlation_id: Some("x".into()),
            requests: 1,
        };
        let o = decide(
            &Attempt::new(meta, Ok(RemoveOutcome::NotFound)),
            &event(None),
            &rules(),
            now(),
        );
        assert_eq!(
            o.end,
            ClaimEnd::Delivered {
                delivery: Delivery::NotFound,
                echoed_correlation_id: Some("x".into())
            }
        );
    }
}
