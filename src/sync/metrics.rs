//! The agent's Prometheus metrics: the agreed names as constants, their descriptions (so every
//! series has HELP/TYPE), the process-wide recorder, and the small recording functions of intake
//! and outbox gauges. Delivery metrics are recorded by the dispatcher with the same names.
//!
//! Labels never carry identifiers: no customer ids and no event ids, only sources, operations,
//! rule names, outcomes and causes (the personal-data rule).

use crate::store::Operation;
use crate::store::OutboxStatus;
use chrono::{DateTime, Utc};
use metrics::{Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::Mutex;

pub const EVENTS_RECEIVED: &str = "kfr_sync_events_received_total";
pub const EVENTS_DUPLICATE: &str = "kfr_sync_events_duplicate_total";
pub const EVENTS_REFUSED: &str = "kfr_sync_events_refused_total";
pub const EVENTS_DELIVERED: &str = "kfr_sync_events_delivered_total";
pub const EVENTS_IDEMPOTENT: &str = "kfr_sync_events_idempotent_total";
pub const EVENTS_REJECTED: &str = "kfr_sync_events_rejected_total";
pub const ATTEMPTS: &str = "kfr_sync_attempts_total";
pub const KFR_REQUEST_DURATION: &str = "kfr_sync_kfr_request_duration_seconds";
pub const OUTBOX_DEPTH: &str = "kfr_sync_outbox_depth";
pub const OUTBOX_OLDEST_PENDING_AGE: &str = "kfr_sync_outbox_oldest_pending_age_seconds";
pub const DLQ_SIZE: &str = "kfr_sync_dlq_size";
pub const PARKED_CUSTOMERS: &str = "kfr_sync_parked_customers";
pub const RATE_LIMIT_WAITS: &str = "kfr_sync_rate_limit_waits_total";
pub const RATE_LIMIT_WAIT_SECONDS: &str = "kfr_sync_rate_limit_wait_seconds_total";
pub const PAUSES: &str = "kfr_sync_pauses_total";
pub const PAUSED: &str = "kfr_sync_paused";
pub const RETRIES_SCHEDULED: &str = "kfr_sync_retries_scheduled_total";
pub const TOKEN_REFRESHES: &str = "kfr_sync_token_refreshes_total";
pub const READY: &str = "kfr_sync_ready";
pub const STANDBY: &str = "kfr_sync_standby";
pub const SOURCE_STALLED: &str = "kfr_sync_source_stalled";
pub const REGISTER_CHECKS: &str = "kfr_register_checks_total";
pub const CERTIFICATE_EXPIRY: &str = "kfr_certificate_expiry_seconds";

/// Bucket bounds of the KFR request latency histogram, in seconds (a single add is typically
/// tens of milliseconds; a batch upload or a slow gateway seconds).
pub const DURATION_BUCKETS: &[f64] = &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Why the recorder could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot install the Prometheus recorder: {0}")]
    Install(String),
}

static HANDLE: Mutex<Option<PrometheusHandle>> = Mutex::new(None);

/// Installs the Prometheus recorder for this process (once: later calls return the same handle)
/// and registers every description. Render the handle from `/metrics` ([`crate::sync::ops_server`]).
pub fn install() -> Result<PrometheusHandle, MetricsError> {
    let mut slot = HANDLE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(h) = slot.as_ref() {
        return Ok(h.clone());
    }
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(KFR_REQUEST_DURATION.into()), DURATION_BUCKETS)
        .map_err(|e| MetricsError::Install(e.to_string()))?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder)
        .map_err(|_| MetricsError::Install("another metrics recorder is already installed".into()))?;
    describe();
    *slot = Some(handle.clone());
    Ok(handle)
}

/// HELP and TYPE for every agreed name.
pub fn describe() {
    describe_counter!(
        EVENTS_RECEIVED,
        "Events committed to the outbox (new, not duplicates), by source and op."
    );
    describe_counter!(EVENTS_DUPLICATE, "Events whose event_id was already stored, by source.");
    describe_counter!(
        EVENTS_REFUSED,
        "Events refused at the door, by source and rule (reason)."
    );
    describe_counter!(EVENTS_DELIVERED, "Events KFR holds as wanted, by op and outcome.");
    describe_counter!(
        EVENTS_IDEMPOTENT,
        "Adds answered 200 and removes answered 404 KFR-008 (also in delivered)."
    );
    describe_counter!(
        EVENTS_REJECTED,
        "Events dead-lettered, by op and KFR code or HTTP status."
    );
    describe_counter!(ATTEMPTS, "Delivery attempts, by op and verdict class.");
    describe_histogram!(
        KFR_REQUEST_DURATION,
        Unit::Seconds,
        "Latency of each KFR attempt, by op."
    );
    describe_gauge!(OUTBOX_DEPTH, "Unfinished events: pending, in flight and accepted.");
    describe_gauge!(
        OUTBOX_OLDEST_PENDING_AGE,
        Unit::Seconds,
        "Age of the oldest unfinished event."
    );
    describe_gauge!(DLQ_SIZE, "Events in the dead-letter queue.");
    describe_gauge!(PARKED_CUSTOMERS, "Customers whose head event is dead-lettered.");
    describe_counter!(RATE_LIMIT_WAITS, "Pauses of the whole dispatcher on a 429.");
    describe_counter!(RATE_LIMIT_WAIT_SECONDS, Unit::Seconds, "Seconds spent paused on 429s.");
    describe_counter!(PAUSES, "Delivery pauses, by cause.");
    describe_gauge!(PAUSED, "1 while delivery is paused for the cause, else 0.");
    describe_counter!(RETRIES_SCHEDULED, "Transient backoffs persisted, by op.");
    describe_counter!(TOKEN_REFRESHES, "Maskinporten token refreshes.");
    describe_counter!(
        REGISTER_CHECKS,
        "Customers of the ledger looked up in KFR by the agent's own check, by result (match, mismatch, unanswered, skipped)."
    );
    describe_gauge!(
        SOURCE_STALLED,
        "1 while a source cannot take events, by source and cause (unreachable, bad_row)."
    );
    describe_gauge!(READY, "1 when the agent is ready (see /readyz), else 0.");
    describe_gauge!(
        CERTIFICATE_EXPIRY,
        Unit::Seconds,
        "Seconds until a certificate expires (negative: expired), by certificate: business, intake_tls."
    );
    describe_gauge!(
        STANDBY,
        "1 while another agent holds the delivery lease and this one stands by, else 0."
    );
}

/// An event committed as new.
pub fn event_received(source: &str, op: Operation) {
    counter!(EVENTS_RECEIVED, "source" => source.to_string(), "op" => op.as_str()).increment(1);
}

/// An event whose id was already stored.
pub fn event_duplicate(source: &str) {
    counter!(EVENTS_DUPLICATE, "source" => source.to_string()).increment(1);
}

/// `n` events of `op` stored at once (a streamed spool file).
pub fn events_received(source: &str, op: Operation, n: u64) {
    counter!(EVENTS_RECEIVED, "source" => source.to_string(), "op" => op.as_str()).increment(n);
}

/// `n` events whose ids were already stored.
pub fn events_duplicate(source: &str, n: u64) {
    counter!(EVENTS_DUPLICATE, "source" => source.to_string()).increment(n);
}

/// An event refused at the door; `rule` is its rule name (`customer_id.length`).
pub fn event_refused(source: &str, rule: &str) {
    counter!(EVENTS_REFUSED, "source" => source.to_string(), "reason" => rule.to_string()).increment(1);
}

/// 1 while this agent stands by (another holds the register's delivery lease), else 0.
/// 1 while the source `source` cannot take events for `cause` (`unreachable`: its database;
/// `bad_row`: parked at a row that breaks a rule), else 0.
pub fn set_source_stalled(source: &str, cause: &'static str, stalled: bool) {
    gauge!(SOURCE_STALLED, "source" => source.to_string(), "cause" => cause).set(if stalled { 1.0 } else { 0.0 });
}

pub fn set_standby(standby: bool) {
    gauge!(STANDBY).set(if standby { 1.0 } else { 0.0 });
}

/// Seconds until `certificate` (`business`, `intake_tls`) expires.
pub fn set_certificate_expiry(certificate: &'static str, seconds: f64) {
    gauge!(CERTIFICATE_EXPIRY, "certificate" => certificate).set(seconds);
}

/// The agent's readiness as a 0/1 gauge.
pub fn set_ready(ready: bool) {
    gauge!(READY).set(if ready { 1.0 } else { 0.0 });
}

/// Refreshes the outbox gauges from a status read at `now` (the agent calls this periodically).
pub fn refresh_outbox(status: &OutboxStatus, now: DateTime<Utc>) {
    gauge!(OUTBOX_DEPTH).set((status.pending + status.in_flight + status.accepted) as f64);
    let age = status
        .oldest_unfinished
        .map(|t| (now - t).num_milliseconds().max(0) as f64 / 1000.0)
        .unwrap_or(0.0);
    gauge!(OUTBOX_OLDEST_PENDING_AGE).set(age);
    gauge!(DLQ_SIZE).set(status.dead_lettered as f64);
    gauge!(PARKED_CUSTOMERS).set(status.parked_customers as f64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_agreed_series_renders_with_help_and_type() {
        let h = install().unwrap();
        assert!(install().is_ok(), "a second install returns the same handle");
        event_received("metrics-test", Operation::Add);
        event_duplicate("metrics-test");
        event_refused("metrics-test", "customer_id.length");
        let now = Utc::now();
        refresh_outbox(
            &OutboxStatus {
                pending: 3,
                in_flight: 1,
                accepted: 2,
                dead_lettered: 4,
                parked_customers: 2,
                oldest_unfinished: Some(now - chrono::Duration::seconds(90)),
                ..Default::default()
            },
            now,
        );
        metrics::histogram!(KFR_REQUEST_DURATION, "op" => "add").record(0.03);
        let text = h.render();
        for line in [
            "# TYPE kfr_sync_events_received_total counter",
            "# HELP kfr_sync_events_received_total Events committed",
            r#"kfr_sync_events_received_total{source="metrics-test",op="add"} 1"#,
            r#"kfr_sync_events_duplicate_total{source="metrics-test"} 1"#,
            r#"kfr_sync_events_refused_total{source="metrics-test",reason="customer_id.length"} 1"#,
            "kfr_sync_outbox_depth 6",
            "kfr_sync_outbox_oldest_pending_age_seconds 90",
            "kfr_sync_dlq_size 4",
            "kfr_sync_parked_customers 2",
            "# TYPE kfr_sync_kfr_request_duration_seconds histogram",
            r#"kfr_sync_kfr_request_duration_seconds_bucket{op="add",le="0.05"} 1"#,
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }
}
