//! The admin surface shared by both halves of the mock: health, a counters snapshot, a reset,
//! runtime fault switches and a dump of the fake KFR's register. Paths under `/_mock/` never
//! collide with Maskinporten or KFR paths. Loopback test surface with synthetic data: the
//! register dump shows full identifiers on purpose (tests compare them).

use super::config::{Delegation, KfrFaults, check_fail_rate, check_ingest_rate};
use super::state::{MockState, TokenFaults};
use axum::Router;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

pub(crate) fn routes() -> Router<Arc<MockState>> {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/_mock/state", get(state))
        .route("/_mock/reset", post(reset))
        .route("/_mock/faults", post(faults))
        .route("/_mock/relationships", get(relationships))
        .route("/_mock/requests", get(requests))
}

/// The fake KFR's write requests in arrival order: `[{n, op, customer_id, correlation_id,
/// status, start_date}]` (full identifiers, like the register dump).
async fn requests(State(state): State<Arc<MockState>>) -> Response {
    axum::Json(state.requests()).into_response()
}

/// Every period of the fake KFR's register: `[{organization_id, customer_id, start_date,
/// end_date}]`, sorted; `end_date` is `null` while a relationship lasts.
async fn relationships(State(state): State<Arc<MockState>>) -> Response {
    axum::Json(state.relationships()).into_response()
}

async fn state(State(state): State<Arc<MockState>>) -> Response {
    axum::Json(state.snapshot()).into_response()
}

/// Zeroes the counters, forgets the seen jtis, empties the register and ingest queue; settings
/// stay.
async fn reset(State(state): State<Arc<MockState>>) -> Response {
    state.reset();
    axum::Json(state.snapshot()).into_response()
}

/// A partial update of the runtime switches; absent fields keep their value. Unknown fields are
/// refused so that a typo is not silently ignored.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultsUpdate {
    clock_skew_secs: Option<i64>,
    token_latency_ms: Option<u64>,
    token_fail_rate: Option<f64>,
    token_fail_first: Option<u32>,
    /// Refuse every grant with `invalid_client` (MP-100) while on.
    token_refuse: Option<bool>,
    // The fake KFR's switches, named like the `kfr mock` flags.
    error_rate: Option<f64>,
    rate_limit_rate: Option<f64>,
    retry_after_secs: Option<u64>,
    timeout_rate: Option<f64>,
    latency_ms: Option<u64>,
    /// Starts an outage of this many seconds now; 0 ends one.
    outage_secs: Option<u64>,
    ingest_rate: Option<u64>,
    /// Replaces the declared delegations: `["CONSUMER=SUPPLIER[:SCOPE]", …]`.
    delegations: Option<Vec<String>>,
    /// Replaces the customers refused with 400 KFR-005 on add, delete and batch.
    reject_customers: Option<Vec<String>>,
    /// The next `count` writes of `op` are answered 500 and carried out `delay_ms` later.
    late_apply: Option<LateApplyUpdate>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LateApplyUpdate {
    op: String,
    count: u32,
    delay_ms: u64,
}

async fn faults(
    State(state): State<Arc<MockState>>,
    body: Result<axum::Json<FaultsUpdate>, JsonRejection>,
) -> Response {
    let update = match body {
        Ok(axum::Json(u)) => u,
        Err(e) => return bad_request(e.body_text()),
    };
    if let Some(Err(e)) = update.token_fail_rate.map(check_fail_rate) {
        return bad_request(e.message);
    }
    let kfr = state.kfr_faults();
    let kfr = KfrFaults {
        error_rate: update.error_rate.unwrap_or(kfr.error_rate),
        rate_limit_rate: update.rate_limit_rate.unwrap_or(kfr.rate_limit_rate),
        retry_after_secs: update.retry_after_secs.unwrap_or(kfr.retry_after_secs),
        timeout_rate: update.timeout_rate.unwrap_or(kfr.timeout_rate),
        latency_ms: update.latency_ms.unwrap_or(kfr.latency_ms),
    };
    if let Err(e) = kfr.check() {
        return bad_request(e.message);
    }
    if let Some(Err(e)) = update.ingest_rate.map(check_ingest_rate) {
        return bad_request(e.message);
    }
    let delegations = match update
        .delegations
        .as_deref()
        .map(|ds| ds.iter().map(|d| Delegation::parse(d)).collect::<Result<Vec<_>, _>>())
    {
        Some(Err(e)) => return bad_request(e.message),
        Some(Ok(ds)) => Some(ds),
        None => None,
    };
    // Everything is checked: apply all or nothing.
    if let Some(ds) = delegations {
        state.set_delegations(ds);
    }
    if let Some(l) = &update.late_apply
        && let Err(e) = state.set_late_apply(&l.op, l.count, Duration::from_millis(l.delay_ms))
    {
        return bad_request(e);
    }
    if let Some(ids) = update.reject_customers {
        state.set_reject_customers(ids);
    }
    state.set_kfr_faults(kfr);
    if let Some(secs) = update.outage_secs {
        state.set_outage_secs(secs);
    }
    if let Some(rate) = update.ingest_rate {
        state.set_ingest_rate(rate);
    }
    let current = state.token_faults();
    state.set_token_faults(TokenFaults {
        latency_ms: update.token_latency_ms.unwrap_or(current.latency_ms),
        fail_rate: update.token_fail_rate.unwrap_or(current.fail_rate),
        fail_first: update.token_fail_first.unwrap_or(current.fail_first),
    });
    if let Some(on) = update.token_refuse {
        state.set_token_refuse(on);
    }
    if let Some(skew) = update.clock_skew_secs {
        state.set_clock_skew_secs(skew);
    }
    axum::Json(state.snapshot()).into_response()
}

fn bad_request(message: String) -> Response {
    (StatusCode::BAD_REQUEST, axum::Json(json!({ "error": message }))).into_response()
}
