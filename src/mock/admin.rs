//! The admin surface shared by both halves of the mock: health, a counters snapshot, a reset and
//! runtime fault switches. Paths under `/_mock/` never collide with Maskinporten or KFR paths.

use super::config::check_fail_rate;
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

pub(crate) fn routes() -> Router<Arc<MockState>> {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/_mock/state", get(state))
        .route("/_mock/reset", post(reset))
        .route("/_mock/faults", post(faults))
}

async fn state(State(state): State<Arc<MockState>>) -> Response {
    axum::Json(state.snapshot()).into_response()
}

/// Zeroes the counters and forgets the seen jtis; settings stay.
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
    let current = state.token_faults();
    state.set_token_faults(TokenFaults {
        latency_ms: update.token_latency_ms.unwrap_or(current.latency_ms),
        fail_rate: update.token_fail_rate.unwrap_or(current.fail_rate),
        fail_first: update.token_fail_first.unwrap_or(current.fail_first),
    });
    if let Some(skew) = update.clock_skew_secs {
        state.set_clock_skew_secs(skew);
    }
    axum::Json(state.snapshot()).into_response()
}

fn bad_request(message: String) -> Response {
    (StatusCode::BAD_REQUEST, axum::Json(json!({ "error": message }))).into_response()
}
