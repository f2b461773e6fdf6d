//! The KFR API client for the "Financial institution" operations (kfr-notes §4): add, remove,
//! own lookup and batch, each with a `CorrelationID`, a bearer token from Maskinporten, typed
//! outcomes and errors that carry their verdict's class.
//!
//! Two layers (docs/specs/verdicts.md):
//! - `*_once` ([`KfrClient::add_once`], …) make one attempt and return its [`Attempt`] with a
//!   [`Verdict`](super::Verdict). The attempt includes the one retry with a fresh token after a
//!   401; nothing else is repeated. This is what a scheduler with its own durable retries (the
//!   sync agent) calls.
//! - [`KfrClient::add`], [`KfrClient::remove`], [`KfrClient::lookup`] and [`KfrClient::batch`]
//!   sit on top: they repeat transient and rate-limited attempts with the configured
//!   [`RetryPolicy`] (waiting at least a 429's `Retry-After`, up to the policy's cap) and return
//!   systemic and rejected verdicts as errors at once. The CLI and the load use these.
//!
//! All attempts of one operation carry the same CorrelationID, so Bits can find every attempt
//! of it. Durable retrying across restarts belongs to the sync agent, not here.
//!
//! Person identifiers are only ever logged as pseudonyms (`CustomerId::log`).

use super::batch::{BatchBody, RELATIONSHIP_TYPE};
use super::error::{KfrError, decode_body};
use super::verdict::{Attempt, AttemptMeta, Delivery, Operation, classify};
use crate::http::RetryPolicy;
use crate::ids::CustomerId;
use crate::ids::scrub;
use crate::maskinporten::TokenClient;
use chrono::NaiveDate;
use reqwest::Method;
use secrecy::ExposeSecret as _;
use std::time::{Duration, Instant};
use url::Url;
use uuid::Uuid;

/// Result of adding a relationship.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AddOutcome {
    /// 201: registered now.
    Added,
    /// 200: it was already registered (the register is in the wanted state, kfr-notes §6).
    AlreadyPresent,
}

/// Result of removing a relationship.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RemoveOutcome {
    /// 204: ended now.
    Removed,
    /// 404 KFR-008: there was nothing to end (the wanted state, kfr-notes §6).
    NotFound,
}

/// One institution in an own-lookup answer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Bank {
    #[serde(rename = "organizationID")]
    pub organization_id: String,
    #[serde(rename = "bankName")]
    pub bank_name: String,
    /// Always false in KFR (FAQ: KFR knows no accounts).
    #[serde(rename = "activeAccount")]
    pub active_account: bool,
}

/// An operation's result with what identifies it for Bits and for our records.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Outcome<T> {
    pub value: T,
    pub status: u16,
    pub correlation_id: Uuid,
    /// The CorrelationID KFR echoed, if it did.
    pub echoed_correlation_id: Option<String>,
    /// Attempts made (a 401 with its token refresh is one attempt).
    pub attempts: u32,
}

/// Client settings besides the token source.
#[derive(Debug, Clone)]
pub struct KfrClientConfig {
    /// Base URL, e.g. `https://preprod.api.bits.no/kar-ws/api/v1`.
    pub base_url: Url,
    /// The institution's org.nr (`fid`).
    pub org_number: String,
    pub retry: RetryPolicy,
    /// Largest batch body sent (KFR: 10 MB a file).
    pub max_batch_bytes: usize,
}

/// The KFR client; cheap to clone.
#[derive(Debug, Clone)]
pub struct KfrClient {
    http: reqwest::Client,
    tokens: TokenClient,
    cfg: KfrClientConfig,
}

struct Request<'a> {
    op: Operation,
    method: Method,
    path: String,
    customer: Option<&'a CustomerId>,
    query: Vec<(&'static str, String)>,
    body: Option<(&'a str, &'a [u8])>,
    correlation_id: Uuid,
}

/// An HTTP answer as read by one attempt.
struct Answer {
    status: u16,
    /// The body, or why it could not be read.
    body: Result<String, reqwest::Error>,
    retry_after: Option<Duration>,
}

impl KfrClient {
    pub fn new(http: reqwest::Client, tokens: TokenClient, cfg: KfrClientConfig) -> Self {
        Self { http, tokens, cfg }
    }

    pub fn config(&self) -> &KfrClientConfig {
        &self.cfg
    }

    pub fn tokens(&self) -> &TokenClient {
        &self.tokens
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.cfg.base_url.as_str().trim_end_matches('/'), path)
    }

    fn relationship_request<'a>(
        &self,
        op: Operation,
        id: &'a CustomerId,
        relationship_type: &str,
        correlation_id: Uuid,
    ) -> Request<'a> {
        Request {
            op,
            method: if op == Operation::Remove {
                Method::DELETE
            } else {
                Method::POST
            },
            path: format!(
                "/customers/financialInstitutions/{}/relationshipType/{relationship_type}",
                self.cfg.org_number
            ),
            customer: Some(id),
            query: vec![],
            body: None,
            correlation_id,
        }
    }

    fn lookup_request<'a>(
        &self,
        id: &'a CustomerId,
        from: Option<NaiveDate>,
        to: Option<NaiveDate>,
        correlation_id: Uuid,
    ) -> Request<'a> {
        let mut query = vec![];
        if let Some(d) = from {
            query.push(("fromDate", d.format("%Y-%m-%d").to_string()));
        }
        if let Some(d) = to {
            query.push(("toDate", d.format("%Y-%m-%d").to_string()));
        }
        Request {
            op: Operation::Lookup,
            method: Method::GET,
            // The trailing slash is part of the path in the spec and is kept.
            path: format!("/customers/financialInstitutions/{}/", self.cfg.org_number),
            customer: Some(id),
            query,
            body: None,
            correlation_id,
        }
    }

    fn batch_request<'a>(&self, body: &'a BatchBody, correlation_id: Uuid) -> Request<'a> {
        Request {
            op: Operation::Batch,
            method: Method::POST,
            path: format!("/customers/financialInstitutions/{}/batch", self.cfg.org_number),
            customer: None,
            query: vec![],
            body: Some((&body.content_type, &body.bytes)),
            correlation_id,
        }
    }

    fn check_batch_size(&self, body: &BatchBody) -> Result<(), KfrError> {
        if body.bytes.len() > self.cfg.max_batch_bytes {
            return Err(KfrError::BatchTooLarge {
                size: body.bytes.len(),
                limit: self.cfg.max_batch_bytes,
            });
        }
        Ok(())
    }

    // ---- single attempts -------------------------------------------------------------------

    /// One attempt to register a relationship (`POST …/relationshipType/DSOPBANK`).
    pub async fn add_once(&self, id: &CustomerId, correlation_id: Uuid) -> Attempt<AddOutcome> {
        let req = self.relationship_request(Operation::Add, id, RELATIONSHIP_TYPE, correlation_id);
        self.attempt(&req, add_outcome).await
    }

    /// One attempt to end a relationship (`DELETE …/relationshipType/DSOPBANK`).
    pub async fn remove_once(&self, id: &CustomerId, correlation_id: Uuid) -> Attempt<RemoveOutcome> {
        let req = self.relationship_request(Operation::Remove, id, RELATIONSHIP_TYPE, correlation_id);
        self.attempt(&req, remove_outcome).await
    }

    /// One own lookup (`GET …/financialInstitutions/{fid}/`).
    pub async fn lookup_once(
        &self,
        id: &CustomerId,
        from: Option<NaiveDate>,
        to: Option<NaiveDate>,
        correlation_id: Uuid,
    ) -> Attempt<Vec<Bank>> {
        let req = self.lookup_request(id, from, to, correlation_id);
        self.attempt(&req, banks).await
    }

    /// One batch upload (`POST …/{fid}/batch`). A body over the size limit is not sent: the
    /// attempt is rejected with no status.
    ///
    /// Beware: a transient verdict after the body went out (timeout, 5xx) does not say whether
    /// KFR accepted the file; sending it again may load it twice.
    pub async fn batch_once(&self, body: &BatchBody, correlation_id: Uuid) -> Attempt<()> {
        if let Err(e) = self.check_batch_size(body) {
            let meta = AttemptMeta {
                status: None,
                latency: Duration::ZERO,
                correlation_id,
                echoed_correlation_id: None,
                requests: 0,
            };
            return Attempt::new(meta, Err(e));
        }
        let req = self.batch_request(body, correlation_id);
        self.attempt(&req, accepted).await
    }

    // ---- retrying operations ---------------------------------------------------------------

    /// Registers a relationship (`POST …/relationshipType/DSOPBANK`), retrying transient and
    /// rate-limited attempts.
    pub async fn add(&self, id: &CustomerId, correlation_id: Option<Uuid>) -> Result<Outcome<AddOutcome>, KfrError> {
        self.add_with_type(id, RELATIONSHIP_TYPE, correlation_id).await
    }

    /// As [`KfrClient::add`] with an explicit relationship type (the checklist's negative case).
    pub async fn add_with_type(
        &self,
        id: &CustomerId,
        relationship_type: &str,
        correlation_id: Option<Uuid>,
    ) -> Result<Outcome<AddOutcome>, KfrError> {
        let cid = correlation_id.unwrap_or_else(Uuid::new_v4);
        let req = self.relationship_request(Operation::Add, id, relationship_type, cid);
        let out = self.run(&req, add_outcome).await?;
        tracing::info!(customer = %id.log(), correlation_id = %cid, outcome = ?out.value, "add");
        Ok(out)
    }

    /// Ends a relationship (`DELETE …/relationshipType/DSOPBANK`), retrying transient and
    /// rate-limited attempts.
    pub async fn remove(
        &self,
        id: &CustomerId,
        correlation_id: Option<Uuid>,
    ) -> Result<Outcome<RemoveOutcome>, KfrError> {
        let cid = correlation_id.unwrap_or_else(Uuid::new_v4);
        let req = self.relationship_request(Operation::Remove, id, RELATIONSHIP_TYPE, cid);
        let out = self.run(&req, remove_outcome).await?;
        tracing::info!(customer = %id.log(), correlation_id = %cid, outcome = ?out.value, "remove");
        Ok(out)
    }

    /// Own lookup (`GET …/financialInstitutions/{fid}/`). `from`/`to` default to today on KFR's
    /// side.
    pub async fn lookup(
        &self,
        id: &CustomerId,
        from: Option<NaiveDate>,
        to: Option<NaiveDate>,
        correlation_id: Option<Uuid>,
    ) -> Result<Outcome<Vec<Bank>>, KfrError> {
        let cid = correlation_id.unwrap_or_else(Uuid::new_v4);
        let req = self.lookup_request(id, from, to, cid);
        let out = self.run(&req, banks).await?;
        tracing::debug!(customer = %id.log(), correlation_id = %cid, banks = out.value.len(), "lookup");
        Ok(out)
    }

    /// Uploads a batch (`POST …/{fid}/batch`). 201 means accepted, **not** stored: KFR ingests
    /// asynchronously (kfr-notes §5).
    pub async fn batch(&self, body: &BatchBody, correlation_id: Option<Uuid>) -> Result<Outcome<()>, KfrError> {
        self.check_batch_size(body)?;
        let cid = correlation_id.unwrap_or_else(Uuid::new_v4);
        let req = self.batch_request(body, cid);
        let out = self.run(&req, accepted).await?;
        tracing::info!(correlation_id = %cid, entries = body.entries, bytes = body.bytes.len(), "batch accepted");
        Ok(out)
    }

    /// Attempts `req` until it is delivered, or its verdict is systemic or rejected, or the
    /// policy's attempts are used up. Transient and rate-limited attempts are repeated after
    /// the policy's delay, which is at least the server's `Retry-After` (up to the cap).
    ///
    /// A verdict that came from the token client is not repeated here: it has already retried
    /// Maskinporten with the same policy, and repeating would multiply the attempts.
    async fn run<D>(
        &self,
        req: &Request<'_>,
        deliver: fn(Delivery, &str) -> Result<D, String>,
    ) -> Result<Outcome<D>, KfrError> {
        let mut attempts = 1;
        loop {
            let a = self.attempt(req, deliver).await;
            let status = a.status.unwrap_or_default();
            let echoed_correlation_id = a.echoed_correlation_id.clone();
            let e = match a.into_result() {
                Ok(value) => {
                    return Ok(Outcome {
                        value,
                        status,
                        correlation_id: req.correlation_id,
                        echoed_correlation_id,
                        attempts,
                    });
                }
                Err(e) => e,
            };
            if !e.class().is_retryable() || matches!(e, KfrError::Token(_)) {
                return Err(e);
            }
            let Some(delay) = self.cfg.retry.next_delay(attempts, e.retry_after()) else {
                return Err(e);
            };
            tracing::info!(error = %e, attempt = attempts, ?delay, "KFR request failed; retrying");
            tokio::time::sleep(delay).await;
            attempts += 1;
        }
    }

    /// One attempt: a token, the request, and after a 401 one more request with a fresh token
    /// (the token may have been revoked or expired in flight, kfr-notes §4). A second 401 is
    /// the verdict: KFR refuses a token Maskinporten has just issued.
    async fn attempt<D>(&self, req: &Request<'_>, deliver: fn(Delivery, &str) -> Result<D, String>) -> Attempt<D> {
        let started = Instant::now();
        let mut meta = AttemptMeta {
            status: None,
            latency: Duration::ZERO,
            correlation_id: req.correlation_id,
            echoed_correlation_id: None,
            requests: 0,
        };
        let mut refreshed = false;
        loop {
            let token = match self.tokens.token().await {
                Ok(t) => t,
                Err(e) => {
                    if meta.requests == 0 {
                        meta.latency = started.elapsed();
                    }
                    return Attempt::new(meta, Err(KfrError::Token(e)));
                }
            };
            let url = self.url(&req.path);
            let mut b = self
                .http
                .request(req.method.clone(), &url)
                .bearer_auth(token.secret().expose_secret())
                .header("CorrelationID", req.correlation_id.to_string())
                .header(reqwest::header::ACCEPT, "application/json");
            if let Some(id) = req.customer {
                b = b.header("CustomerID", id.as_str());
            }
            if !req.query.is_empty() {
                b = b.query(&req.query);
            }
            if let Some((content_type, bytes)) = req.body {
                b = b
                    .header(reqwest::header::CONTENT_TYPE, content_type)
                    .body(bytes.to_vec());
            } else if req.method != Method::GET {
                // RFC 9110 §8.6: a POST or DELETE without a body should still say so, and the API
                // gateway in front of KFR may answer 411 Length Required when it does not; the
                // HTTP client leaves the header out for a bodiless request.
                b = b.header(reqwest::header::CONTENT_LENGTH, "0");
            }
            meta.requests += 1;
            let sent = Instant::now();
            let resp = match b.send().await {
                Ok(resp) => resp,
                Err(e) => {
                    meta.latency = sent.elapsed();
                    meta.status = None;
                    meta.echoed_correlation_id = None;
                    let (reason, timeout) = crate::http::describe(&e);
                    let err = KfrError::Transport {
                        url,
                        reason,
                        timeout,
                        correlation_id: req.correlation_id,
                    };
                    return Attempt::new(meta, Err(err));
                }
            };
            let status = resp.status().as_u16();
            meta.status = Some(status);
            meta.echoed_correlation_id = resp
                .headers()
                .get("CorrelationID")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let retry_after = crate::http::retry_after(resp.headers());
            let body = resp.text().await;
            meta.latency = sent.elapsed();
            tracing::debug!(method = %req.method, path = %req.path, status, correlation_id = %req.correlation_id, elapsed_ms = meta.latency.as_millis() as u64, "KFR answered");
            if status == 401 && !refreshed {
                self.tokens.invalidate(&token);
                refreshed = true;
                continue;
            }
            let answer = Answer {
                status,
                body,
                retry_after,
            };
            let result = judge(req.op, &url, req.correlation_id, answer, deliver);
            return Attempt::new(meta, result);
        }
    }
}

/// The verdict on a final answer (after the attempt's one token refresh): [`classify`] decides,
/// this adds the particulars. A success status is decided by the status alone, except the
/// lookup's, whose body is the answer; an error whose body cannot be read is transient, since
/// without the body a delete's KFR-008 cannot be told from a wrong URL's 404.
fn judge<D>(
    op: Operation,
    url: &str,
    correlation_id: Uuid,
    answer: Answer,
    deliver: fn(Delivery, &str) -> Result<D, String>,
) -> Result<D, KfrError> {
    let Answer {
        status,
        body,
        retry_after,
    } = answer;
    let unreadable = |e: reqwest::Error| {
        let (reason, timeout) = crate::http::describe(&e);
        KfrError::Transport {
            url: url.to_string(),
            reason: format!("HTTP {status}, but the body could not be read: {reason}"),
            timeout,
            correlation_id,
        }
    };
    let (code, message) = match &body {
        Ok(text) => decode_body(text),
        Err(_) => (None, String::new()),
    };
    match classify(op, status, code.as_deref()) {
        Ok(delivery) => {
            let text = match body {
                Ok(text) => text,
                Err(e) if delivery == Delivery::Answered => return Err(unreadable(e)),
                Err(_) => String::new(),
            };
            deliver(delivery, &text).map_err(|reason| KfrError::InvalidResponse {
                status,
                // A parser's message quotes the body, which may echo a customer identifier.
                reason: scrub(&reason),
                correlation_id,
            })
        }
        Err(class) => match body {
            Err(e) => Err(unreadable(e)),
            Ok(_) => Err(KfrError::Api {
                status,
                code,
                message,
                correlation_id,
                retry_after,
                class,
            }),
        },
    }
}

fn add_outcome(d: Delivery, _: &str) -> Result<AddOutcome, String> {
    match d {
        Delivery::Added => Ok(AddOutcome::Added),
        Delivery::AlreadyPresent => Ok(AddOutcome::AlreadyPresent),
        other => Err(format!("{other:?} is not an answer to an add")),
    }
}

fn remove_outcome(d: Delivery, _: &str) -> Result<RemoveOutcome, String> {
    match d {
        Delivery::Removed => Ok(RemoveOutcome::Removed),
        Delivery::NotFound => Ok(RemoveOutcome::NotFound),
        other => Err(format!("{other:?} is not an answer to a remove")),
    }
}

fn accepted(d: Delivery, _: &str) -> Result<(), String> {
    match d {
        Delivery::Accepted => Ok(()),
        other => Err(format!("{other:?} is not an answer to a batch")),
    }
}

fn banks(d: Delivery, body: &str) -> Result<Vec<Bank>, String> {
    #[derive(serde::Deserialize)]
    struct Banks {
        banks: Vec<Bank>,
    }
    match d {
        Delivery::Answered => serde_json::from_str::<Banks>(body)
            .map(|b| b.banks)
            .map_err(|e| format!("not a ListCustomerRelation ({e})")),
        other => Err(format!("{other:?} is not an answer to a lookup")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kfr::verdict::{Scope, Verdict, VerdictClass};

    fn answer(status: u16, body: &str, retry_after: Option<u64>) -> Answer {
        Answer {
            status,
            body: Ok(body.to_string()),
            retry_after: retry_after.map(Duration::from_secs),
        }
    }

    fn verdict_of<D>(op: Operation, a: Answer, deliver: fn(Delivery, &str) -> Result<D, String>) -> Verdict<D> {
        match judge(op, "https://kfr", Uuid::nil(), a, deliver) {
            Ok(d) => Verdict::Delivered(d),
            Err(e) => e.verdict(),
        }
    }

    const KFR_008: &str = r#"{"errorCode":"KFR-008","errorMessage":"Customer relationship not found","timestamp":"2026-01-01T00:00:00Z"}"#;

    #[test]
    fn rate_limits_carry_retry_after_when_given() {
        let gateway = r#"{"statusCode":429,"message":"Too many requests"}"#;
        assert_eq!(
            verdict_of(Operation::Add, answer(429, gateway, Some(7)), add_outcome),
            Verdict::RateLimited {
                retry_after: Some(Duration::from_secs(7))
            }
        );
        assert_eq!(
            verdict_of(Operation::Remove, answer(429, "", None), remove_outcome),
            Verdict::RateLimited { retry_after: None }
        );
    }

    #[test]
    fn server_errors_are_transient_with_the_servers_delay() {
        match verdict_of(Operation::Batch, answer(503, "", Some(30)), accepted) {
            Verdict::Transient { server_delay, reason } => {
                assert_eq!(server_delay, Some(Duration::from_secs(30)));
                assert!(reason.contains("503"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn not_found_needs_kfrs_own_code() {
        assert_eq!(
            verdict_of(Operation::Remove, answer(404, KFR_008, None), remove_outcome),
            Verdict::Delivered(RemoveOutcome::NotFound)
        );
        let proxy = verdict_of(
            Operation::Remove,
            answer(404, "<html>Not Found</html>", None),
            remove_outcome,
        );
        assert_eq!(proxy.class(), Some(VerdictClass::Systemic(Scope::Endpoint)));
    }

    #[test]
    fn a_lookup_answer_must_be_readable() {
        let ok = r#"{"banks":[{"organizationID":"916960190","bankName":"X","activeAccount":false}]}"#;
        assert!(matches!(
            verdict_of(Operation::Lookup, answer(200, ok, None), banks),
            Verdict::Delivered(b) if b.len() == 1
        ));
        let garbled = verdict_of(Operation::Lookup, answer(200, "<html>login</html>", None), banks);
        assert_eq!(garbled.class(), Some(VerdictClass::Systemic(Scope::Endpoint)));
    }

    #[test]
    fn rejections_keep_kfrs_code_and_masked_message() {
        let body =
            r#"{"errorCode":"KFR-005","errorMessage":"Invalid customer identifier 15108695088","timestamp":"x"}"#;
        assert_eq!(
            verdict_of(Operation::Add, answer(400, body, None), add_outcome),
            Verdict::Rejected {
                code: Some("KFR-005".into()),
                message: "Invalid customer identifier *********88".into()
            }
        );
    }
}
