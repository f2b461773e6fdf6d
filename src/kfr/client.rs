//! The KFR API client for the "Financial institution" operations (kfr-notes §4): add, remove,
//! own lookup and batch, each with a `CorrelationID`, a bearer token from Maskinporten, typed
//! outcomes and errors with a retry class.
//!
//! Retries inside the client are for one operation only: transient failures with capped,
//! jittered backoff (honouring `Retry-After`), and one retry with a fresh token after a 401.
//! All attempts of one operation carry the same CorrelationID, so Bits can find every attempt
//! of it. Durable retrying across restarts belongs to the sync agent, not here.
//!
//! Person identifiers are only ever logged as pseudonyms (`CustomerId::log`).

use super::batch::{BatchBody, RELATIONSHIP_TYPE};
use super::error::{KfrError, RetryClass, classify, decode_body};
use crate::ids::CustomerId;
use crate::maskinporten::{RetryPolicy, TokenClient};
use chrono::NaiveDate;
use reqwest::Method;
use secrecy::ExposeSecret as _;
use std::time::Instant;
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
    method: Method,
    path: String,
    customer: Option<&'a CustomerId>,
    query: Vec<(&'static str, String)>,
    body: Option<(&'a str, &'a [u8])>,
    correlation_id: Uuid,
}

struct Response {
    status: u16,
    body: String,
    echoed: Option<String>,
    attempts: u32,
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

    fn relationship_path(&self, relationship_type: &str) -> String {
        format!(
            "/customers/financialInstitutions/{}/relationshipType/{relationship_type}",
            self.cfg.org_number
        )
    }

    /// Registers a relationship (`POST …/relationshipType/DSOPBANK`).
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
        let req = Request {
            method: Method::POST,
            path: self.relationship_path(relationship_type),
            customer: Some(id),
            query: vec![],
            body: None,
            correlation_id: correlation_id.unwrap_or_else(Uuid::new_v4),
        };
        let resp = self.execute(&req).await?;
        let value = match resp.status {
            201 => AddOutcome::Added,
            200 => AddOutcome::AlreadyPresent,
            _ => return Err(self.error(&req, resp)),
        };
        tracing::info!(customer = %id.log(), correlation_id = %req.correlation_id, outcome = ?value, "add");
        Ok(outcome(value, &req, resp))
    }

    /// Ends a relationship (`DELETE …/relationshipType/DSOPBANK`).
    pub async fn remove(
        &self,
        id: &CustomerId,
        correlation_id: Option<Uuid>,
    ) -> Result<Outcome<RemoveOutcome>, KfrError> {
        let req = Request {
            method: Method::DELETE,
            path: self.relationship_path(RELATIONSHIP_TYPE),
            customer: Some(id),
            query: vec![],
            body: None,
            correlation_id: correlation_id.unwrap_or_else(Uuid::new_v4),
        };
        let resp = self.execute(&req).await?;
        let value = match resp.status {
            204 => RemoveOutcome::Removed,
            // Only KFR's own "not found" counts as the wanted state: a bare 404 (a wrong base URL,
            // a proxy's error page) must not be mistaken for "nothing to end" (kfr-notes §6).
            404 if decode_body(&resp.body).0.as_deref() == Some("KFR-008") => RemoveOutcome::NotFound,
            _ => return Err(self.error(&req, resp)),
        };
        tracing::info!(customer = %id.log(), correlation_id = %req.correlation_id, outcome = ?value, "remove");
        Ok(outcome(value, &req, resp))
    }

    /// Own lookup (`GET …/financialInstitutions/{fid}/` — the trailing slash is part of the
    /// path in the spec and is kept). `from`/`to` default to today on KFR's side.
    pub async fn lookup(
        &self,
        id: &CustomerId,
        from: Option<NaiveDate>,
        to: Option<NaiveDate>,
        correlation_id: Option<Uuid>,
    ) -> Result<Outcome<Vec<Bank>>, KfrError> {
        let mut query = vec![];
        if let Some(d) = from {
            query.push(("fromDate", d.format("%Y-%m-%d").to_string()));
        }
        if let Some(d) = to {
            query.push(("toDate", d.format("%Y-%m-%d").to_string()));
        }
        let req = Request {
            method: Method::GET,
            path: format!("/customers/financialInstitutions/{}/", self.cfg.org_number),
            customer: Some(id),
            query,
            body: None,
            correlation_id: correlation_id.unwrap_or_else(Uuid::new_v4),
        };
        let resp = self.execute(&req).await?;
        if resp.status != 200 {
            return Err(self.error(&req, resp));
        }
        #[derive(serde::Deserialize)]
        struct Banks {
            banks: Vec<Bank>,
        }
        let banks: Banks = serde_json::from_str(&resp.body).map_err(|e| KfrError::InvalidResponse {
            status: resp.status,
            reason: format!("not a ListCustomerRelation ({e})"),
            correlation_id: req.correlation_id,
        })?;
        tracing::debug!(customer = %id.log(), correlation_id = %req.correlation_id, banks = banks.banks.len(), "lookup");
        Ok(outcome(banks.banks, &req, resp))
    }

    /// Uploads a batch (`POST …/{fid}/batch`). 201 means accepted, **not** stored: KFR ingests
    /// asynchronously (kfr-notes §5).
    pub async fn batch(&self, body: &BatchBody, correlation_id: Option<Uuid>) -> Result<Outcome<()>, KfrError> {
        if body.bytes.len() > self.cfg.max_batch_bytes {
            return Err(KfrError::BatchTooLarge {
                size: body.bytes.len(),
                limit: self.cfg.max_batch_bytes,
            });
        }
        let req = Request {
            method: Method::POST,
            path: format!("/customers/financialInstitutions/{}/batch", self.cfg.org_number),
            customer: None,
            query: vec![],
            body: Some((&body.content_type, &body.bytes)),
            correlation_id: correlation_id.unwrap_or_else(Uuid::new_v4),
        };
        let resp = self.execute(&req).await?;
        if resp.status != 201 {
            return Err(self.error(&req, resp));
        }
        tracing::info!(correlation_id = %req.correlation_id, entries = body.entries, bytes = body.bytes.len(), "batch accepted");
        Ok(outcome((), &req, resp))
    }

    fn error(&self, req: &Request<'_>, resp: Response) -> KfrError {
        let (code, message) = decode_body(&resp.body);
        KfrError::Api {
            status: resp.status,
            code,
            message,
            correlation_id: req.correlation_id,
            retry_after: None,
            class: classify(resp.status),
        }
    }

    /// Sends with retries: transient failures with backoff, and a 401 once with a new token.
    /// Returns the final response for the caller to interpret, or the error that ended it.
    async fn execute(&self, req: &Request<'_>) -> Result<Response, KfrError> {
        let mut attempt = 1;
        let mut auth_retried = false;
        loop {
            let token = self.tokens.token().await.map_err(KfrError::Token)?;
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
            }
            let started = Instant::now();
            let result = b.send().await;
            let err = match result {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let retry_after = crate::maskinporten::client::retry_after(&resp);
                    let echoed = resp
                        .headers()
                        .get("CorrelationID")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    let body = resp.text().await.unwrap_or_default();
                    tracing::debug!(method = %req.method, path = %req.path, status, correlation_id = %req.correlation_id, elapsed_ms = started.elapsed().as_millis() as u64, "KFR answered");
                    match classify(status) {
                        RetryClass::Auth if !auth_retried && status == 401 => {
                            // The token may have been revoked or expired in flight: one retry
                            // with a fresh one, then give up (kfr-notes §4).
                            self.tokens.invalidate(&token);
                            auth_retried = true;
                            continue;
                        }
                        RetryClass::Transient if status != 200 && status != 201 && status != 204 => {
                            let (code, message) = decode_body(&body);
                            KfrError::Api {
                                status,
                                code,
                                message,
                                correlation_id: req.correlation_id,
                                retry_after,
                                class: RetryClass::Transient,
                            }
                        }
                        _ => {
                            return Ok(Response {
                                status,
                                body,
                                echoed,
                                attempts: attempt,
                            });
                        }
                    }
                }
                Err(e) => {
                    let (reason, timeout) = crate::http::describe(&e);
                    KfrError::Transport {
                        url,
                        reason,
                        timeout,
                        correlation_id: req.correlation_id,
                    }
                }
            };
            if attempt >= self.cfg.retry.max_attempts {
                return Err(err);
            }
            let delay = self.cfg.retry.delay(attempt, err.retry_after());
            tracing::info!(error = %err, attempt, ?delay, "KFR request failed; retrying");
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }
}

fn outcome<T>(value: T, req: &Request<'_>, resp: Response) -> Outcome<T> {
    Outcome {
        value,
        status: resp.status,
        correlation_id: req.correlation_id,
        echoed_correlation_id: resp.echoed,
        attempts: resp.attempts,
    }
}
