//! The fake KFR: every operation of the spec's "Financial institution" tag under
//! `/kar-ws/api/v1`, with the spec's status codes, error codes, body shapes and `CorrelationID`
//! echo (kfr-api v1.1.2, kfr-notes §4), plus the batch ingest task.
//!
//! Every answer goes through one funnel, [`finish`]: a handler returns `Ok(response)` or a
//! [`Refusal`] whose [`Failure`] decides status, code and body for the operation. Each operation
//! declares the failures it can produce ([`Op::failures`]); [`finish`] asserts a refusal is one
//! of them, and the unit test `every_answer_is_listed_in_the_spec` checks each declared answer
//! against a hand-written table of the spec (`tests::SPEC`). Adding a new refusal therefore
//! means declaring it and, if the spec does not list it, failing that test.
//!
//! Checks run in this order, the first failure answers: injected faults (outage, latency,
//! timeout, 429, 500), token (401), scope (403), `fid` = token's org (403), then the operation's
//! own checks. docs/mock.md lists them all.

use super::config::DEFAULT_SCOPE;
use super::multipart;
use super::quirks::Quirk;
use super::register::{Added, Day, IdKey, PendingEntry, day};
use super::state::{MockState, RequestLogEntry, lock};
use crate::ids::{CustomerId, mask};
use crate::kfr::batch::RELATIONSHIP_TYPE;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::NaiveDate;
use serde_json::json;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// The KFR base path; the local env's base URL is `http://127.0.0.1:8080/kar-ws/api/v1`.
pub const BASE_PATH: &str = "/kar-ws/api/v1";

pub(crate) fn routes() -> Router<Arc<MockState>> {
    Router::new()
        .route(
            "/kar-ws/api/v1/customers/financialInstitutions/{fid}/relationshipType/{type}",
            post(add).delete(remove),
        )
        // The trailing slash is part of the spec's path; without it the route does not exist.
        .route(
            "/kar-ws/api/v1/customers/financialInstitutions/{fid}/",
            get(lookup).fallback(method_not_allowed),
        )
        .route(
            "/kar-ws/api/v1/customers/financialInstitutions/{fid}/batch",
            post(batch),
        )
}

/// The spec lists 405 for the own lookup with its `ErrorResponse` body, but names no code; the
/// mock's `MOCK-405` is its own, so a client must key on the status, not the code.
async fn method_not_allowed(State(state): State<Arc<MockState>>) -> Response {
    let body = json!({
        "errorCode": "MOCK-405",
        "errorMessage": "Method is not allowed (the own lookup is GET only)",
        "timestamp": timestamp(&state),
    });
    let mut resp = (StatusCode::METHOD_NOT_ALLOWED, axum::Json(body)).into_response();
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("GET,HEAD"));
    resp
}

/// The four operations, by the names `/_mock/state` counts them under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    /// `addCustomerDSOPGW`
    Add,
    /// `deleteCustomerDSOPGW`
    Remove,
    /// `getCustomerRelationForOwnBank`
    Lookup,
    /// `addCustomerDSOPGWByFile`
    Batch,
}

impl Op {
    #[cfg(test)]
    pub(crate) const ALL: [Op; 4] = [Op::Add, Op::Remove, Op::Lookup, Op::Batch];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Op::Add => "add",
            Op::Remove => "remove",
            Op::Lookup => "lookup",
            Op::Batch => "batch",
        }
    }

    /// Success statuses the handler can answer.
    pub(crate) fn successes(self) -> &'static [u16] {
        match self {
            Op::Add => &[201, 200],
            Op::Remove => &[204],
            Op::Lookup => &[200],
            Op::Batch => &[201],
        }
    }

    /// Every failure the operation's handler can produce.
    pub(crate) fn failures(self) -> &'static [Failure] {
        use Failure::*;
        match self {
            Op::Add => &[
                LengthRequired,
                Unauthenticated,
                NoAccess,
                WrongInstitution,
                InvalidRequest,
                MissingCustomerId,
                InvalidCustomerId,
                InvalidType,
                Internal,
                RateLimited,
                Outage,
            ],
            Op::Remove => &[
                LengthRequired,
                Unauthenticated,
                NoAccess,
                WrongInstitution,
                InvalidRequest,
                MissingCustomerId,
                InvalidCustomerId,
                InvalidType,
                NotFound,
                Internal,
                RateLimited,
                Outage,
            ],
            Op::Lookup => &[
                Unauthenticated,
                NoAccess,
                WrongInstitution,
                MissingCustomerId,
                InvalidCustomerId,
                InvalidPeriod,
                Internal,
                RateLimited,
                Outage,
            ],
            Op::Batch => &[
                Unauthenticated,
                NoAccess,
                WrongInstitution,
                InvalidRequest,
                InvalidCustomerId,
                InvalidType,
                InvalidDate,
                MalformedMultipart,
                TooLarge,
                Internal,
                RateLimited,
                Outage,
            ],
        }
    }
}

/// Why a request is refused. The answer depends on the operation: the own lookup speaks the
/// KAR dialect (`ERR-` codes), the others the `KFR-` one (spec, per operation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// No token, or one this mock did not issue, or expired.
    Unauthenticated,
    /// The token lacks `bits:kundeforhold.write`.
    NoAccess,
    /// `fid` is not the org.nr the token was issued to.
    WrongInstitution,
    /// Missing or non-UUID `CorrelationID`, or a batch without its two parts.
    InvalidRequest,
    MissingCustomerId,
    /// Fails the identifier rules of `crate::ids` under the mock's environment.
    InvalidCustomerId,
    /// Relationship type other than `DSOPBANK` (path or `customer_type` part).
    InvalidType,
    /// A batch entry's date is not a valid `YYYY-MM-DD`.
    InvalidDate,
    /// Lookup: `fromDate`/`toDate` not `YYYY-MM-DD`, or `fromDate` after `toDate`.
    InvalidPeriod,
    /// Delete of a relationship that is not registered (or already ended).
    NotFound,
    /// Quoted boundary, or a body that is not the multipart the header announces. The real KFR
    /// answers 403 (KFR FAQ "Boundary i batch"); the spec's 403 codes are KFR-002/003, and
    /// "no access" is the one that fits.
    MalformedMultipart,
    /// Batch body over the size limit. The spec has no 413; a refusal of the request as such
    /// is its 400 KFR-004.
    TooLarge,
    /// Injected 500.
    Internal,
    /// Injected 429 with `Retry-After`; not in the spec (fault injection only).
    RateLimited,
    /// Injected outage: 503 with `Retry-After`; not in the spec (fault injection only).
    Outage,
    /// A bodiless POST/DELETE without `Content-Length` (or `Transfer-Encoding`): 411, as a
    /// strict front end answers (RFC 9110 §15.5.12); not in the spec, from the gateway.
    LengthRequired,
}

/// The parts of an error answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ErrorAnswer {
    pub status: u16,
    /// `Some` for the spec's `{errorCode, errorMessage, timestamp}`; `None` for the gateway
    /// shape `{statusCode, message}` of injected 429/503.
    pub code: Option<&'static str>,
    pub message: &'static str,
}

impl Failure {
    pub(crate) fn answer(self, op: Op) -> ErrorAnswer {
        use Failure::*;
        let a = |status, code, message| ErrorAnswer {
            status,
            code: Some(code),
            message,
        };
        if op == Op::Lookup {
            // The own lookup's responses carry the KAR codes (spec: ERR-001/002/003).
            match self {
                Unauthenticated => return a(401, "ERR-001", "Klient er ikke autorisert"),
                NoAccess | WrongInstitution => return a(403, "ERR-001", "Klient er ikke autorisert"),
                MissingCustomerId | InvalidCustomerId => return a(400, "ERR-002", "Ugyldig KUNDEID"),
                InvalidPeriod => return a(400, "ERR-003", "Ugyldig periode eller datoformat"),
                _ => {}
            }
        }
        match self {
            Unauthenticated => a(401, "KFR-001", "Client is not authenticated"),
            NoAccess | MalformedMultipart => a(403, "KFR-002", "Client does not have access"),
            WrongInstitution => a(
                403,
                "KFR-003",
                "Client cannot manage customer relationships for the given organisation number",
            ),
            InvalidRequest | MissingCustomerId | TooLarge => a(400, "KFR-004", "Invalid request"),
            InvalidCustomerId => a(400, "KFR-005", "Invalid customer identifier"),
            InvalidType => a(400, "KFR-009", "Invalid customer relationship type"),
            InvalidDate | InvalidPeriod => a(400, "KFR-010", "Invalid date format"),
            NotFound => a(404, "KFR-008", "Customer relationship not found"),
            Internal => a(500, "KFR-007", "Internal error"),
            RateLimited => ErrorAnswer {
                status: 429,
                code: None,
                message: "Too many requests",
            },
            Outage => ErrorAnswer {
                status: 503,
                code: None,
                message: "Service unavailable",
            },
            LengthRequired => ErrorAnswer {
                status: 411,
                code: None,
                message: "Length Required",
            },
        }
    }
}

/// A failure with the mock's explanation (appended to the spec's message so a developer sees
/// which rule fired) and, for 429/503, the `Retry-After` seconds.
#[derive(Debug)]
pub(crate) struct Refusal {
    failure: Failure,
    detail: Option<String>,
    retry_after: Option<u64>,
}

impl Refusal {
    fn new(failure: Failure) -> Self {
        Self {
            failure,
            detail: None,
            retry_after: None,
        }
    }

    fn because(failure: Failure, detail: impl Into<String>) -> Self {
        Self {
            failure,
            detail: Some(detail.into()),
            retry_after: None,
        }
    }

    fn into_response(self, op: Op, state: &MockState) -> Response {
        let a = self.failure.answer(op);
        let message = match &self.detail {
            Some(d) => format!("{} ({d})", a.message),
            None => a.message.to_string(),
        };
        let body = match a.code {
            Some(code) => json!({
                "errorCode": code,
                "errorMessage": message,
                "timestamp": timestamp(state),
            }),
            None => json!({ "statusCode": a.status, "message": message }),
        };
        let status = StatusCode::from_u16(a.status).expect("statuses in Failure::answer are valid");
        let mut resp = (status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if a.status == 401 {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

/// `2018-02-05T12:54:12Z`, the spec's timestamp shape, from the mock's clock.
fn timestamp(state: &MockState) -> String {
    chrono::DateTime::<chrono::Utc>::from(state.clock().now())
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Echoes `CorrelationID`, counts the answer and logs it. The one exit of every handler.
fn finish(state: &MockState, op: Op, headers: &HeaderMap, result: Result<Response, Refusal>) -> Response {
    let correlation = headers.get("CorrelationID").cloned();
    let mut resp = match result {
        Ok(resp) => {
            debug_assert!(
                op.successes().contains(&resp.status().as_u16()),
                "{op:?} answered an undeclared success"
            );
            resp
        }
        Err(refusal) => {
            debug_assert!(
                op.failures().contains(&refusal.failure),
                "{op:?} produced undeclared failure {:?}",
                refusal.failure
            );
            tracing::info!(operation = op.name(), failure = ?refusal.failure, detail = refusal.detail.as_deref().unwrap_or(""), "KFR request refused");
            refusal.into_response(op, state)
        }
    };
    if op != Op::Lookup && !(op == Op::Batch && resp.status() == StatusCode::CREATED) {
        // An accepted batch logged its entries itself ([`handle_batch`]).
        log_write(state, op, headers, resp.status().as_str(), None, None);
    }
    if let Some(c) = correlation {
        resp.headers_mut().insert("CorrelationID", c);
    }
    record(state, op, resp.status().as_str());
    resp
}

/// One entry of the write-request log (`GET /_mock/requests`).
fn log_write(
    state: &MockState,
    op: Op,
    headers: &HeaderMap,
    status: &str,
    customer_id: Option<String>,
    start_date: Option<NaiveDate>,
) {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    state.log_request(RequestLogEntry {
        n: 0,
        op: op.name(),
        customer_id: customer_id.or_else(|| text("CustomerID")),
        correlation_id: text("CorrelationID"),
        status: status.to_string(),
        start_date,
    });
}

fn record(state: &MockState, op: Op, status: &str) {
    let stats = &state.kfr.stats;
    stats.requests.fetch_add(1, Ordering::Relaxed);
    *lock(&stats.by_operation)
        .entry(op.name())
        .or_default()
        .entry(status.to_string())
        .or_default() += 1;
}

fn count_fault(state: &MockState, kind: &'static str) {
    state.kfr.stats.faults_injected.fetch_add(1, Ordering::Relaxed);
    *lock(&state.kfr.stats.faults_by_kind).entry(kind).or_default() += 1;
}

fn hit(rate: f64) -> bool {
    rate > 0.0 && rand::random::<f64>() < rate
}

/// Injected faults, then the token checks shared by every operation.
async fn gate(state: &MockState, op: Op, fid: &str, headers: &HeaderMap) -> Result<(), Refusal> {
    if let Some(left) = state.outage_remaining_secs() {
        count_fault(state, "outage");
        return Err(Refusal {
            retry_after: Some(left),
            ..Refusal::because(Failure::Outage, format!("kfr mock: injected outage, {left} s left"))
        });
    }
    let faults = state.kfr_faults();
    if faults.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(faults.latency_ms)).await;
    }
    if hit(faults.timeout_rate) {
        count_fault(state, "timeout");
        record(state, op, "timeout");
        if op != Op::Lookup {
            log_write(state, op, headers, "timeout", None, None);
        }
        tracing::info!(operation = op.name(), "KFR request: injected timeout, holding it open");
        // Held until the server stops (then released with a 503 so graceful shutdown ends) or a
        // day has passed; the client's own timeout is what this rehearses.
        let mut stopping = state.kfr.stopping.subscribe();
        tokio::select! {
            _ = stopping.wait_for(|s| *s) => {}
            _ = tokio::time::sleep(Duration::from_secs(24 * 3600)) => {}
        }
        return Err(Refusal::because(Failure::Outage, "kfr mock: held request released"));
    }
    if hit(faults.rate_limit_rate) {
        count_fault(state, "rate_limit");
        return Err(Refusal {
            retry_after: Some(faults.retry_after_secs),
            ..Refusal::because(Failure::RateLimited, "kfr mock: injected rate limit")
        });
    }
    if op == Op::Batch && state.batch_errors() {
        count_fault(state, "batch_error");
        return Err(Refusal::because(
            Failure::Internal,
            "kfr mock: injected error on batch uploads",
        ));
    }
    if hit(faults.error_rate) {
        count_fault(state, "error");
        return Err(Refusal::because(Failure::Internal, "kfr mock: injected error"));
    }
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .ok_or_else(|| Refusal::because(Failure::Unauthenticated, "no Bearer token"))?;
    let claims = state
        .verify_access_token(bearer)
        .map_err(|e| Refusal::because(Failure::Unauthenticated, e.to_string()))?;
    if !claims.scope.iter().any(|s| s == DEFAULT_SCOPE) {
        return Err(Refusal::because(
            Failure::NoAccess,
            format!("the token's scope lacks {DEFAULT_SCOPE}"),
        ));
    }
    // A delegated token serves its consumer only while the delegation stands: the grant was
    // checked at issue, but a revoked delegation must not live on for the token's lifetime.
    if let Some(supplier) = &claims.supplier_org
        && !state.is_delegated(&claims.consumer_org, supplier, DEFAULT_SCOPE)
    {
        return Err(Refusal::because(
            Failure::WrongInstitution,
            format!(
                "no delegation from {} to {supplier} backs this token",
                claims.consumer_org
            ),
        ));
    }
    if claims.consumer_org != fid && !state.has_quirk(Quirk::ForeignFidAccepted) {
        return Err(Refusal::because(
            Failure::WrongInstitution,
            format!("the token was issued to {}", claims.consumer_org),
        ));
    }
    Ok(())
}

/// Spec: `CorrelationID` is a required UUID on add, delete and batch.
/// Only the hyphenated 8-4-4-4-12 form counts: the spec's example and format are that form, and
/// `uuid` would also take the simple, braced and URN spellings, which KFR is not documented to.
fn require_correlation_id(headers: &HeaderMap) -> Result<(), Refusal> {
    let value = single(headers, "CorrelationID", Failure::InvalidRequest)?
        .ok_or_else(|| Refusal::because(Failure::InvalidRequest, "CorrelationID header is missing"))?;
    value
        .to_str()
        .ok()
        .filter(|v| is_hyphenated_uuid(v))
        .map(|_| ())
        .ok_or_else(|| {
            Refusal::because(
                Failure::InvalidRequest,
                "CorrelationID is not a UUID in the 8-4-4-4-12 form",
            )
        })
}

/// `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, hex digits either case.
pub(crate) fn is_hyphenated_uuid(v: &str) -> bool {
    let b = v.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// A header that must appear at most once. Two values would leave it to chance which one counts
/// (a proxy may join them, a framework take the first), so a repeat is refused as `failure`.
fn single<'h>(headers: &'h HeaderMap, name: &str, failure: Failure) -> Result<Option<&'h HeaderValue>, Refusal> {
    let mut values = headers.get_all(name).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(Refusal::because(
            failure,
            format!("{name} header is given more than once"),
        ));
    }
    Ok(first)
}

/// The `CustomerID` header, validated with `crate::ids` under the mock's environment.
fn customer_id(state: &MockState, headers: &HeaderMap) -> Result<CustomerId, Refusal> {
    let raw = single(headers, "CustomerID", Failure::MissingCustomerId)?
        .ok_or_else(|| Refusal::because(Failure::MissingCustomerId, "CustomerID header is missing"))?
        .to_str()
        .map_err(|_| Refusal::because(Failure::InvalidCustomerId, "CustomerID is not ASCII"))?;
    parse_id(state, raw)
}

/// Strict: only the digits (the spec's 9 or 11), nothing around them — `CustomerId::parse`
/// would trim whitespace, which KFR is not documented to do.
fn parse_id(state: &MockState, raw: &str) -> Result<CustomerId, Refusal> {
    if raw.is_empty() || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Refusal::because(
            Failure::InvalidCustomerId,
            format!("{}: only 9 or 11 digits are allowed", mask(raw)),
        ));
    }
    CustomerId::parse(raw, &state.kfr.policy)
        .map_err(|e| Refusal::because(Failure::InvalidCustomerId, format!("{}: {e}", mask(raw))))
}

/// The `reject_customers` switch: a customer refused as KFR refuses an invalid identifier.
fn refuse_if_listed(state: &MockState, id: &CustomerId) -> Result<(), Refusal> {
    if state.is_rejected_customer(id.as_str()) {
        return Err(Refusal::because(
            Failure::InvalidCustomerId,
            format!("{}: kfr mock: refused by reject_customers", mask(id.as_str())),
        ));
    }
    Ok(())
}

/// `YYYY-MM-DD` exactly (zero-padded), a real calendar day.
pub(crate) fn parse_date(s: &str) -> Option<NaiveDate> {
    let b = s.as_bytes();
    let digits_at = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' || !digits_at(0..4) || !digits_at(5..7) || !digits_at(8..10) {
        return None;
    }
    NaiveDate::from_ymd_opt(s[0..4].parse().ok()?, s[5..7].parse().ok()?, s[8..10].parse().ok()?)
}

fn relationship_type(ty: &str) -> Result<(), Refusal> {
    if ty == RELATIONSHIP_TYPE {
        Ok(())
    } else {
        Err(Refusal::because(
            Failure::InvalidType,
            format!("only {RELATIONSHIP_TYPE} is a relationship type"),
        ))
    }
}

fn status_only(status: StatusCode) -> Response {
    status.into_response()
}

async fn add(
    State(state): State<Arc<MockState>>,
    Path((fid, ty)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    gated(&state, Op::Add, &fid, &ty, &headers, handle_add).await
}

async fn remove(
    State(state): State<Arc<MockState>>,
    Path((fid, ty)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    gated(&state, Op::Remove, &fid, &ty, &headers, handle_remove).await
}

/// Runs a single-relationship operation behind the gate (token, rate, faults), then records it.
async fn gated(
    state: &Arc<MockState>,
    op: Op,
    fid: &str,
    ty: &str,
    headers: &HeaderMap,
    handle: fn(&MockState, &str, &str, &HeaderMap) -> Result<Response, Refusal>,
) -> Response {
    let _writing = WriteInFlight::enter(state, headers);
    let result = match require_length(headers) {
        Ok(()) => match gate(state, op, fid, headers).await {
            Ok(()) => match state.take_late_apply(op.name()) {
                // Answered 500 now, carried out later: what a sender that gave up cannot see.
                Some(delay) => {
                    count_fault(state, "late_apply");
                    let late = (state.clone(), fid.to_string(), ty.to_string(), headers.clone());
                    tokio::spawn(async move {
                        let (state, fid, ty, headers) = late;
                        tokio::time::sleep(delay).await;
                        let r = handle(&state, &fid, &ty, &headers);
                        count_fault(&state, "late_applied");
                        tracing::info!(
                            operation = op.name(),
                            carried_out = r.is_ok(),
                            "KFR write carried out late (injected)"
                        );
                    });
                    Err(Refusal::because(
                        Failure::Internal,
                        "kfr mock: injected fault, this write will be carried out later",
                    ))
                }
                None => handle(state, fid, ty, headers),
            },
            Err(r) => Err(r),
        },
        Err(r) => Err(r),
    };
    finish(state, op, headers, result)
}

/// An add or remove being answered, by customer, while it lives: a second write of the same
/// customer arriving meanwhile is counted as overlapping (`overlapping_writes`).
struct WriteInFlight<'a> {
    state: &'a MockState,
    customer: Option<String>,
}

impl<'a> WriteInFlight<'a> {
    fn enter(state: &'a MockState, headers: &HeaderMap) -> Self {
        let customer = headers
            .get("CustomerID")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        if let Some(c) = &customer {
            let mut w = lock(&state.kfr.stats.writes_in_flight);
            let n = w.entry(c.clone()).or_default();
            if *n > 0 {
                state.kfr.stats.overlapping_writes.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("KFR write: a second write of a customer arrived while the first was being answered");
            }
            *n += 1;
        }
        WriteInFlight { state, customer }
    }
}

impl Drop for WriteInFlight<'_> {
    fn drop(&mut self) {
        if let Some(c) = &self.customer {
            let mut w = lock(&self.state.kfr.stats.writes_in_flight);
            if let Some(n) = w.get_mut(c) {
                *n -= 1;
                if *n == 0 {
                    w.remove(c);
                }
            }
        }
    }
}

/// RFC 9110 §8.6: a POST or DELETE whose body is empty should carry `Content-Length: 0`. KFR sits
/// behind an API gateway we cannot test; a strict one answers 411 before anything else, so the
/// mock does too.
fn require_length(headers: &HeaderMap) -> Result<(), Refusal> {
    if headers.contains_key(header::CONTENT_LENGTH) || headers.contains_key(header::TRANSFER_ENCODING) {
        Ok(())
    } else {
        Err(Refusal::because(
            Failure::LengthRequired,
            "a POST or DELETE without a body must send Content-Length: 0",
        ))
    }
}

/// What add and remove both check first: CorrelationID, relationship type, the identifier.
fn relationship_target(state: &MockState, ty: &str, headers: &HeaderMap) -> Result<(CustomerId, IdKey, Day), Refusal> {
    require_correlation_id(headers)?;
    relationship_type(ty)?;
    let id = customer_id(state, headers).map_err(|r| {
        // Quirk: the single operations mislabel an invalid identifier as a malformed request.
        if r.failure == Failure::InvalidCustomerId && state.has_quirk(Quirk::InvalidIdWrongCode) {
            Refusal {
                failure: Failure::InvalidRequest,
                ..r
            }
        } else {
            r
        }
    })?;
    refuse_if_listed(state, &id)?;
    let key = IdKey::pack(id.as_str()).expect("validated identifiers are 9 or 11 digits");
    Ok((id, key, day(state.clock().today())))
}

fn handle_add(state: &MockState, fid: &str, ty: &str, headers: &HeaderMap) -> Result<Response, Refusal> {
    let (id, key, today) = relationship_target(state, ty, headers)?;
    let added = lock(&state.kfr.register).add(fid, key, today);
    tracing::info!(customer = %id.log(), outcome = ?added, "KFR add");
    Ok(status_only(match added {
        Added::New => StatusCode::CREATED,
        // Quirk: "already registered" is reported as a new registration.
        Added::AlreadyPresent if state.has_quirk(Quirk::DuplicateAdd201) => StatusCode::CREATED,
        Added::AlreadyPresent => StatusCode::OK,
    }))
}

fn handle_remove(state: &MockState, fid: &str, ty: &str, headers: &HeaderMap) -> Result<Response, Refusal> {
    let (id, key, today) = relationship_target(state, ty, headers)?;
    let removed = lock(&state.kfr.register).remove(fid, key, today);
    tracing::info!(customer = %id.log(), removed, "KFR remove");
    // Quirk: a delete of nothing pretends to have ended a relationship.
    if removed || state.has_quirk(Quirk::DeleteMissing204) {
        Ok(status_only(StatusCode::NO_CONTENT))
    } else {
        Err(Refusal::new(Failure::NotFound))
    }
}

async fn lookup(
    State(state): State<Arc<MockState>>,
    Path(fid): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let result = match gate(&state, Op::Lookup, &fid, &headers).await {
        Ok(()) => handle_lookup(&state, &fid, query.as_deref().unwrap_or(""), &headers),
        Err(r) => Err(r),
    };
    finish(&state, Op::Lookup, &headers, result)
}

fn handle_lookup(state: &MockState, fid: &str, query: &str, headers: &HeaderMap) -> Result<Response, Refusal> {
    let id = customer_id(state, headers)?;
    let (mut from, mut to) = (None, None);
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        let slot = match k.as_ref() {
            "fromDate" => &mut from,
            "toDate" => &mut to,
            _ => continue,
        };
        if slot.is_some() {
            return Err(Refusal::because(Failure::InvalidPeriod, format!("{k} is given twice")));
        }
        let d = parse_date(&v)
            .ok_or_else(|| Refusal::because(Failure::InvalidPeriod, format!("{k} is not a YYYY-MM-DD date")))?;
        *slot = Some(d);
    }
    // Spec: both default to today.
    let today = state.clock().today();
    let (from, to) = (from.unwrap_or(today), to.unwrap_or(today));
    if from > to {
        return Err(Refusal::because(Failure::InvalidPeriod, "fromDate is after toDate"));
    }
    let key = IdKey::pack(id.as_str()).expect("validated identifiers are 9 or 11 digits");
    let found = {
        let register = lock(&state.kfr.register);
        register.overlaps(fid, key, day(from), day(to))
            // Quirk: accepted but not yet ingested batch entries already show.
            || (state.has_quirk(Quirk::BatchVisibleBeforeIngested) && register.is_queued(fid, key))
    };
    tracing::info!(customer = %id.log(), %from, %to, found, "KFR lookup");
    let banks = if found {
        vec![json!({ "organizationID": fid, "bankName": bank_name(fid), "activeAccount": false })]
    } else {
        vec![]
    };
    Ok(axum::Json(json!({ "banks": banks })).into_response())
}

/// A fixed name per institution; the real KFR takes it from Brønnøysundregistrene.
pub(crate) fn bank_name(fid: &str) -> String {
    format!("KFR MOCK INSTITUTION {fid}")
}

async fn batch(
    State(state): State<Arc<MockState>>,
    Path(fid): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result = match gate(&state, Op::Batch, &fid, &headers).await {
        Ok(()) => handle_batch(&state, &fid, &headers, body).await,
        Err(r) => Err(r),
    };
    finish(&state, Op::Batch, &headers, result)
}

async fn handle_batch(state: &MockState, fid: &str, headers: &HeaderMap, body: Body) -> Result<Response, Refusal> {
    require_correlation_id(headers)?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    // Quirk: quotes around the boundary are dropped instead of refused.
    let unquoted;
    let content_type = if state.has_quirk(Quirk::QuotedBoundaryAccepted) {
        unquoted = content_type.replace('"', "");
        unquoted.as_str()
    } else {
        content_type
    };
    let boundary = multipart::boundary(content_type).map_err(|e| Refusal::because(Failure::MalformedMultipart, e.0))?;
    let limit = state.kfr.max_batch_bytes;
    let too_large = || Refusal::because(Failure::TooLarge, format!("the body exceeds {limit} bytes"));
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| too_large())?;
    let parts = multipart::parse(&bytes, boundary).map_err(|e| Refusal::because(Failure::MalformedMultipart, e.0))?;
    let mut customer_type = None;
    let mut customers = None;
    for p in &parts {
        let slot = match p.name.as_str() {
            "customer_type" => &mut customer_type,
            "customers" => &mut customers,
            other => {
                return Err(Refusal::because(
                    Failure::InvalidRequest,
                    format!("unknown part {:?}", other.chars().take(40).collect::<String>()),
                ));
            }
        };
        if slot.replace(p.content).is_some() {
            return Err(Refusal::because(
                Failure::InvalidRequest,
                format!("part {} is given twice", p.name),
            ));
        }
    }
    let (Some(customer_type), Some(customers)) = (customer_type, customers) else {
        return Err(Refusal::because(
            Failure::InvalidRequest,
            "parts customer_type and customers are both required",
        ));
    };
    // Bits' own batch example (KFR FAQ) has a blank line after DSOPBANK, so its part content is
    // DSOPBANK plus one CRLF; the real service documents that request, so it must pass here.
    // Nothing else around the type is forgiven.
    let customer_type = customer_type.strip_suffix(b"\r\n").unwrap_or(customer_type);
    if customer_type != RELATIONSHIP_TYPE.as_bytes() {
        return Err(Refusal::because(
            Failure::InvalidType,
            format!("customer_type must be {RELATIONSHIP_TYPE}"),
        ));
    }
    let entries = parse_entries(state, customers)?;
    let count = entries.len();
    // Valid UTF-8 and well-formed: parse_entries checked every entry.
    for entry in String::from_utf8_lossy(customers).split(',') {
        let (id, date) = match entry.split_once('#') {
            Some((id, d)) => (id, parse_date(d)),
            None => (entry, None),
        };
        log_write(state, Op::Batch, headers, "201", Some(id.to_string()), date);
    }
    lock(&state.kfr.register).enqueue(fid, entries);
    state.kfr.stats.batches_accepted.fetch_add(1, Ordering::Relaxed);
    tracing::info!(
        entries = count,
        bytes = bytes.len(),
        "KFR batch accepted; ingesting asynchronously"
    );
    Ok(status_only(StatusCode::CREATED))
}

/// Entries `ID` or `ID#YYYY-MM-DD`, comma-separated, exactly as the spec describes them: no
/// whitespace, no empty entries, no trailing comma. The first bad entry in file order rejects
/// the whole batch, so nothing of it is stored.
fn parse_entries(state: &MockState, customers: &[u8]) -> Result<Vec<PendingEntry>, Refusal> {
    let text = std::str::from_utf8(customers)
        .map_err(|_| Refusal::because(Failure::InvalidCustomerId, "customers is not UTF-8 text"))?;
    if text.is_empty() {
        return Err(Refusal::because(Failure::InvalidRequest, "customers holds no entries"));
    }
    let mut out = Vec::with_capacity(text.len() / 12 + 1);
    for (i, entry) in text.split(',').enumerate() {
        let n = i + 1;
        let (id, date) = match entry.split_once('#') {
            Some((id, date)) => (id, Some(date)),
            None => (entry, None),
        };
        let id = parse_id(state, id)
            .and_then(|id| refuse_if_listed(state, &id).map(|()| id))
            .map_err(|r| Refusal {
                detail: r.detail.map(|d| format!("entry {n}: {d}")),
                ..r
            })?;
        let start = match date {
            None => None,
            Some(d) => Some(parse_date(d).ok_or_else(|| {
                Refusal::because(
                    Failure::InvalidDate,
                    format!("entry {n}: the start date is not a YYYY-MM-DD date"),
                )
            })?),
        };
        out.push(PendingEntry {
            key: IdKey::pack(id.as_str()).expect("validated identifiers are 9 or 11 digits"),
            start: start.map(day),
        });
    }
    Ok(out)
}

/// How often the ingest task wakes. Small enough that ingestion looks continuous to a poller,
/// large enough to cost nothing when idle.
const TICK: Duration = Duration::from_millis(10);

/// Starts the task that moves accepted batch entries into the register at the configured rate
/// (kfr-notes §5). It paces by elapsed time rather than by ticks, so a late tick catches up and
/// 50,000/s really is 50,000/s; at most 100 ms of backlog is caught up at once, so a stall
/// does not turn into a burst. It holds only a weak reference and ends with the state.
pub(crate) fn spawn_ingest(state: &Arc<MockState>) -> JoinHandle<()> {
    let weak: Weak<MockState> = Arc::downgrade(state);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last = Instant::now();
        let mut credit = 0.0f64;
        loop {
            tick.tick().await;
            let Some(state) = weak.upgrade() else { break };
            let now = Instant::now();
            let elapsed = now.duration_since(last).as_secs_f64();
            last = now;
            let rate = state.ingest_rate() as f64;
            let mut register = lock(&state.kfr.register);
            if register.queued() == 0 {
                credit = 0.0;
                continue;
            }
            credit = (credit + rate * elapsed).min(rate * 0.1 + 1.0);
            let due = credit.floor() as usize;
            if due > 0 {
                let done = register.ingest(due, day(state.clock().today()));
                credit -= done as f64;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The spec's (kfr-api v1.1.2) responses per "Financial institution" operation: status and
    /// the error codes its examples give for it. An empty list on an error status means the
    /// spec lists the status without naming a code (the own lookup's 405 and 500).
    /// A response the spec lists: status and the codes of its examples.
    type SpecResponse = (u16, &'static [&'static str]);

    pub(super) const SPEC: &[(Op, &[SpecResponse])] = &[
        (
            Op::Add,
            &[
                (200, &[]),
                (201, &[]),
                (400, &["KFR-004", "KFR-005", "KFR-009"]),
                (401, &["KFR-001"]),
                (403, &["KFR-002", "KFR-003"]),
                (500, &["KFR-007"]),
            ],
        ),
        (
            Op::Remove,
            &[
                (204, &[]),
                (400, &["KFR-004", "KFR-005", "KFR-009"]),
                (401, &["KFR-001"]),
                (403, &["KFR-002", "KFR-003"]),
                (404, &["KFR-008"]),
                (500, &["KFR-007"]),
            ],
        ),
        (
            Op::Batch,
            &[
                (201, &[]),
                (400, &["KFR-004", "KFR-005", "KFR-009", "KFR-010"]),
                (401, &["KFR-001"]),
                (403, &["KFR-002", "KFR-003"]),
                (500, &["KFR-007"]),
            ],
        ),
        (
            Op::Lookup,
            &[
                (200, &[]),
                (400, &["ERR-002", "ERR-003"]),
                (401, &["ERR-001"]),
                (403, &["ERR-001"]),
                (405, &[]),
                (500, &[]),
            ],
        ),
    ];

    /// Statuses the mock answers only when a fault is injected, deliberately outside the spec:
    /// a gateway's rate limit and outage, which a client must survive (kfr-notes §6).
    /// The 411 of a bodiless write without `Content-Length` is the front end's, not KFR's.
    const FAULT_ONLY: &[(Failure, u16)] = &[
        (Failure::RateLimited, 429),
        (Failure::Outage, 503),
        (Failure::LengthRequired, 411),
    ];

    fn spec_for(op: Op) -> &'static [SpecResponse] {
        SPEC.iter()
            .find(|(o, _)| *o == op)
            .expect("every operation is in the table")
            .1
    }

    #[test]
    fn every_answer_is_listed_in_the_spec() {
        for op in Op::ALL {
            let spec = spec_for(op);
            for status in op.successes() {
                assert!(
                    spec.iter().any(|(s, _)| s == status),
                    "{op:?} can answer {status}, which the spec does not list"
                );
            }
            for failure in op.failures() {
                let a = failure.answer(op);
                if let Some((_, status)) = FAULT_ONLY.iter().find(|(f, _)| f == failure) {
                    assert_eq!(a.status, *status);
                    assert!(a.code.is_none(), "fault answers use the gateway body");
                    assert!(
                        !spec.iter().any(|(s, _)| *s == a.status),
                        "{status} is in the spec after all"
                    );
                    continue;
                }
                let code = a
                    .code
                    .unwrap_or_else(|| panic!("{op:?}/{failure:?} answers without an error code"));
                let listed = spec
                    .iter()
                    .any(|(s, codes)| *s == a.status && (codes.is_empty() || codes.contains(&code)));
                assert!(
                    listed,
                    "{op:?}/{failure:?} answers {} {code}, which the spec does not list",
                    a.status
                );
            }
        }
    }

    #[test]
    fn lookup_speaks_err_codes_and_the_rest_kfr_codes() {
        for op in Op::ALL {
            for f in op.failures() {
                let Some(code) = f.answer(op).code else { continue };
                let want = if op == Op::Lookup && *f != Failure::Internal {
                    "ERR-"
                } else {
                    "KFR-"
                };
                assert!(code.starts_with(want), "{op:?}/{f:?}: {code}");
            }
        }
    }

    #[test]
    fn dates_must_be_zero_padded_real_days() {
        assert_eq!(parse_date("2024-02-29"), NaiveDate::from_ymd_opt(2024, 2, 29));
        for bad in [
            "2023-02-29",
            "2024-2-29",
            "24-02-29",
            "2024/02/29",
            "2024-02-29 ",
            "",
            "2024-13-01",
            "+024-01-01",
        ] {
            assert_eq!(parse_date(bad), None, "{bad:?}");
        }
    }
}
