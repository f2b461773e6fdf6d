//! One attempt, one verdict: what a single KFR request (with its one token refresh after a 401)
//! means for the caller, decided in one place for every operation (docs/specs/verdicts.md).
//!
//! - [`classify`] is the pure rule: operation, HTTP status and KFR's error code in, a
//!   [`Delivery`] or a [`VerdictClass`] out. The unit test below walks every status and code the
//!   KFR spec lists for the four "Financial institution" operations.
//! - [`Verdict`] is that rule with its particulars (the server's delay, KFR's code and message,
//!   the delivered value), and [`Attempt`] is one attempt's record: status, latency, the
//!   CorrelationID sent and the one echoed, and the verdict.
//! - [`token_class`] classes a failure to get a token, and `KfrError::class` / `KfrError::verdict`
//!   (here, beside the rules) say what any failed request stands for. The classes themselves,
//!   [`VerdictClass`] and [`Scope`], live in [`super::error`] with the answer that carries one.
//!
//! The scope of a systemic verdict is the point of this module: a systemic failure says "this
//! credential, permission, institution or endpoint cannot work now", so it is never the event's
//! fault and must never send the event to a dead letter. Only [`Verdict::Rejected`] is about the
//! event itself.

use super::error::KfrError;
// The classes live with the error that carries them (kfr/error.rs); they are named here as well
// because the rules below produce them.
pub use super::error::{Scope, VerdictClass};
use crate::maskinporten::TokenError;
use std::time::Duration;
use uuid::Uuid;

/// The four operations of the spec's "Financial institution" tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    /// `addCustomerDSOPGW`: POST one relationship.
    Add,
    /// `deleteCustomerDSOPGW`: DELETE one relationship.
    Remove,
    /// `getCustomerRelationForOwnBank`: the own lookup.
    Lookup,
    /// `addCustomerDSOPGWByFile`: the batch upload.
    Batch,
}

/// What a successful answer says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    /// Add, 201.
    Added,
    /// Add, 200: it was there already, which is the wanted state (kfr-notes §6).
    AlreadyPresent,
    /// Remove, 204.
    Removed,
    /// Remove, 404 with KFR-008: nothing to end, which is the wanted state (kfr-notes §6).
    NotFound,
    /// Batch, 201: the file was accepted, not yet stored (ingestion is asynchronous).
    Accepted,
    /// Lookup, 200: an answer to read.
    Answered,
}

/// The rule: an answer's operation, status and KFR error code to what it means.
///
/// Called on the final answer of an attempt, i.e. a 401 here is a 401 to a token fetched after a
/// first 401 (the attempt's one refresh). The rules, with their reasons:
/// - the operation's success statuses are delivered; a delete's 404 is delivered only with
///   KFR-008, since a bare 404 (wrong base URL, a proxy's page) says nothing about the register;
/// - 429 is rate limited; 408 and every 5xx transient;
/// - 401 (after the refresh) is systemic for the credentials; 403 KFR-003 for the institution,
///   any other 403 for the permission (KFR-002, the lookup's ERR-001, and a batch's malformed
///   multipart, which our encoder never produces);
/// - a 404 other than the delete's KFR-008, 405, 406, 1xx/3xx and a 2xx the operation does not
///   define are systemic for the endpoint: every request would meet them;
/// - every other 4xx (400 KFR-004/005/009/010, ERR-002/003, …) is rejected: about this request.
pub fn classify(op: Operation, status: u16, code: Option<&str>) -> Result<Delivery, VerdictClass> {
    use Operation::*;
    match (op, status) {
        (Add, 201) => return Ok(Delivery::Added),
        (Add, 200) => return Ok(Delivery::AlreadyPresent),
        (Remove, 204) => return Ok(Delivery::Removed),
        (Remove, 404) if code == Some("KFR-008") => return Ok(Delivery::NotFound),
        (Lookup, 200) => return Ok(Delivery::Answered),
        (Batch, 201) => return Ok(Delivery::Accepted),
        _ => {}
    }
    Err(match status {
        429 => VerdictClass::RateLimited,
        408 | 500..=599 => VerdictClass::Transient,
        401 => VerdictClass::Systemic(Scope::Credentials),
        403 if code == Some("KFR-003") => VerdictClass::Systemic(Scope::Institution),
        403 => VerdictClass::Systemic(Scope::Permission),
        404..=406 | 100..=399 => VerdictClass::Systemic(Scope::Endpoint),
        _ => VerdictClass::Rejected,
    })
}

/// The class of a failure to get a token. Maskinporten's refusals are systemic, never
/// per-event: a refused grant fails every request until the certificate, client, scope or
/// delegation is fixed (kfr-notes §9 names the codes).
pub fn token_class(e: &TokenError) -> VerdictClass {
    if e.is_rate_limited() {
        return VerdictClass::RateLimited;
    }
    if e.is_transient() {
        return VerdictClass::Transient;
    }
    VerdictClass::Systemic(match e {
        TokenError::Rejected { error, mp_code, .. } => match mp_code.as_deref() {
            Some("MP-200" | "MP-201" | "MP-250") => Scope::Permission,
            Some("MP-251") => Scope::Institution,
            Some(_) => Scope::Credentials,
            None if error == "invalid_scope" => Scope::Permission,
            None => Scope::Credentials,
        },
        TokenError::Credential(_) | TokenError::Signing(_) => Scope::Credentials,
        TokenError::Transport { .. }
        | TokenError::Status { .. }
        | TokenError::InvalidResponse { .. }
        | TokenError::IssuerMismatch { .. } => Scope::Endpoint,
    })
}

/// The classification of a failed request: the class and the verdict a [`KfrError`] stands for.
/// An answer's class was set by [`classify`] when it came; the other failures are classed here.
impl KfrError {
    /// The class of the verdict this error stands for.
    pub fn class(&self) -> VerdictClass {
        match self {
            KfrError::Api { class, .. } => *class,
            KfrError::Transport { .. } => VerdictClass::Transient,
            KfrError::Token(e) => token_class(e),
            KfrError::InvalidResponse { .. } => VerdictClass::Systemic(Scope::Endpoint),
            KfrError::BatchTooLarge { .. } => VerdictClass::Rejected,
        }
    }

    /// Systemic: no other request with this credential, institution or endpoint can succeed
    /// now either, so the event it was about must not be given up on.
    pub fn is_systemic(&self) -> bool {
        matches!(self.class(), VerdictClass::Systemic(_))
    }

    /// The verdict this error stands for.
    pub fn verdict<D>(&self) -> Verdict<D> {
        match self.class() {
            VerdictClass::Transient => Verdict::Transient {
                reason: self.to_string(),
                server_delay: self.retry_after(),
            },
            VerdictClass::RateLimited => Verdict::RateLimited {
                retry_after: self.retry_after(),
            },
            VerdictClass::Systemic(scope) => Verdict::Systemic {
                scope,
                code: self.any_code(),
                reason: self.to_string(),
            },
            VerdictClass::Rejected => Verdict::Rejected {
                code: self.any_code(),
                message: match self {
                    KfrError::Api { message, .. } => message.clone(),
                    other => other.to_string(),
                },
            },
        }
    }

    /// KFR's code, or for a token refusal Digdir's MP-code, else the OAuth2 error.
    fn any_code(&self) -> Option<String> {
        match self {
            KfrError::Token(TokenError::Rejected { mp_code, error, .. }) => {
                Some(mp_code.clone().unwrap_or_else(|| error.clone()))
            }
            other => other.code().map(String::from),
        }
    }
}

/// One attempt's verdict. `D` is what a delivered answer carries: [`super::AddOutcome`],
/// [`super::RemoveOutcome`], the lookup's banks, or `()` for an accepted batch.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict<D> {
    /// KFR is in the wanted state (or, for a batch, has accepted the file).
    Delivered(D),
    /// Try again later; `server_delay` is the answer's `Retry-After`, if any.
    Transient {
        reason: String,
        server_delay: Option<Duration>,
    },
    /// 429 from KFR or Maskinporten.
    RateLimited { retry_after: Option<Duration> },
    /// Nothing can succeed in this `scope` until someone acts; never the event's fault.
    Systemic {
        scope: Scope,
        /// KFR's code (`KFR-002`), Digdir's MP-code, or the OAuth2 error.
        code: Option<String>,
        reason: String,
    },
    /// This request is refused for its content; only this event is affected.
    Rejected { code: Option<String>, message: String },
}

impl<D> Verdict<D> {
    /// `None` when delivered.
    pub fn class(&self) -> Option<VerdictClass> {
        Some(match self {
            Verdict::Delivered(_) => return None,
            Verdict::Transient { .. } => VerdictClass::Transient,
            Verdict::RateLimited { .. } => VerdictClass::RateLimited,
            Verdict::Systemic { scope, .. } => VerdictClass::Systemic(*scope),
            Verdict::Rejected { .. } => VerdictClass::Rejected,
        })
    }

    pub fn is_delivered(&self) -> bool {
        matches!(self, Verdict::Delivered(_))
    }

    /// How long the server asked us to wait (`Retry-After` of a 429, or of a 5xx that sent one).
    pub fn server_delay(&self) -> Option<Duration> {
        match self {
            Verdict::Transient { server_delay, .. } => *server_delay,
            Verdict::RateLimited { retry_after } => *retry_after,
            _ => None,
        }
    }

    /// The delivered value, if any.
    pub fn delivered(&self) -> Option<&D> {
        match self {
            Verdict::Delivered(d) => Some(d),
            _ => None,
        }
    }
}

/// The record of one attempt: one request to KFR, or two when the first answer was 401 and a
/// fresh token was fetched (kfr-notes §4); none when no token could be had.
#[derive(Debug)]
pub struct Attempt<D> {
    /// The status of the last answer KFR gave in this attempt; `None` when none came (timeout,
    /// connection, no token). After a 401 whose fresh token could not be had, it is that 401.
    pub status: Option<u16>,
    /// Round trip of the last request sent (from sending to the answer's body read); when no
    /// request could be sent, the time spent trying to get a token.
    pub latency: Duration,
    /// The CorrelationID sent (the same on both requests of a 401 refresh).
    pub correlation_id: Uuid,
    /// The CorrelationID KFR echoed, if it did.
    pub echoed_correlation_id: Option<String>,
    /// Requests sent to KFR in this attempt (0, 1, or 2 after a 401).
    pub requests: u32,
    pub verdict: Verdict<D>,
    /// The error behind any verdict but delivered, with its hint and full detail.
    error: Option<KfrError>,
}

/// What is known about an attempt besides its result.
pub(crate) struct AttemptMeta {
    pub status: Option<u16>,
    pub latency: Duration,
    pub correlation_id: Uuid,
    pub echoed_correlation_id: Option<String>,
    pub requests: u32,
}

impl<D> Attempt<D> {
    pub(crate) fn new(meta: AttemptMeta, result: Result<D, KfrError>) -> Self {
        let (verdict, error) = match result {
            Ok(d) => (Verdict::Delivered(d), None),
            Err(e) => (e.verdict(), Some(e)),
        };
        Self {
            status: meta.status,
            latency: meta.latency,
            correlation_id: meta.correlation_id,
            echoed_correlation_id: meta.echoed_correlation_id,
            requests: meta.requests,
            verdict,
            error,
        }
    }

    /// The error behind the verdict; `None` when delivered.
    pub fn error(&self) -> Option<&KfrError> {
        self.error.as_ref()
    }

    /// The delivered value or the error.
    pub fn into_result(self) -> Result<D, KfrError> {
        match (self.verdict, self.error) {
            (Verdict::Delivered(d), _) => Ok(d),
            (_, Some(e)) => Err(e),
            // `new` is the only constructor and pairs every other verdict with its error.
            (_, None) => unreachable!("an undelivered attempt always carries its error"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Delivery::*;
    use Operation::*;
    use Scope::*;
    use VerdictClass::*;

    /// Every status and error code the KFR spec (v1.1.2) lists for each "Financial institution"
    /// operation, plus what the spec does not list but the network and gateways produce. The
    /// 401 rows are answers to a token fetched after a first 401 (the attempt's one refresh).
    /// operation, status, KFR's code, expected verdict.
    type Row = (Operation, u16, Option<&'static str>, Result<Delivery, VerdictClass>);

    #[rustfmt::skip]
    const TABLE: &[Row] = &[
        // addCustomerDSOPGW
        (Add, 201, None, Ok(Added)),
        (Add, 200, None, Ok(AlreadyPresent)),
        (Add, 400, Some("KFR-004"), Err(Rejected)),
        (Add, 400, Some("KFR-005"), Err(Rejected)),
        (Add, 400, Some("KFR-009"), Err(Rejected)),
        (Add, 401, Some("KFR-001"), Err(Systemic(Credentials))),
        (Add, 403, Some("KFR-002"), Err(Systemic(Permission))),
        (Add, 403, Some("KFR-003"), Err(Systemic(Institution))),
        (Add, 500, Some("KFR-007"), Err(Transient)),
        // deleteCustomerDSOPGW
        (Remove, 204, None, Ok(Removed)),
        (Remove, 400, Some("KFR-004"), Err(Rejected)),
        (Remove, 400, Some("KFR-005"), Err(Rejected)),
        (Remove, 400, Some("KFR-009"), Err(Rejected)),
        (Remove, 401, Some("KFR-001"), Err(Systemic(Credentials))),
        (Remove, 403, Some("KFR-002"), Err(Systemic(Permission))),
        (Remove, 403, Some("KFR-003"), Err(Systemic(Institution))),
        (Remove, 404, Some("KFR-008"), Ok(NotFound)),
        (Remove, 500, Some("KFR-007"), Err(Transient)),
        // addCustomerDSOPGWByFile
        (Batch, 201, None, Ok(Accepted)),
        (Batch, 400, Some("KFR-004"), Err(Rejected)),
        (Batch, 400, Some("KFR-005"), Err(Rejected)),
        (Batch, 400, Some("KFR-009"), Err(Rejected)),
        (Batch, 400, Some("KFR-010"), Err(Rejected)),
        (Batch, 401, Some("KFR-001"), Err(Systemic(Credentials))),
        (Batch, 403, Some("KFR-002"), Err(Systemic(Permission))),
        (Batch, 403, Some("KFR-003"), Err(Systemic(Institution))),
        (Batch, 500, Some("KFR-007"), Err(Transient)),
        // getCustomerRelationForOwnBank
        (Lookup, 200, None, Ok(Answered)),
        (Lookup, 400, Some("ERR-002"), Err(Rejected)),
        (Lookup, 400, Some("ERR-003"), Err(Rejected)),
        (Lookup, 401, Some("ERR-001"), Err(Systemic(Credentials))),
        (Lookup, 403, Some("ERR-001"), Err(Systemic(Permission))),
        (Lookup, 405, None, Err(Systemic(Endpoint))),
        (Lookup, 500, None, Err(Transient)),
        // Not in the spec, for every operation: the gateway's bodies carry no code.
        (Add, 429, None, Err(RateLimited)),
        (Remove, 429, None, Err(RateLimited)),
        (Lookup, 429, None, Err(RateLimited)),
        (Batch, 429, None, Err(RateLimited)),
        (Add, 502, None, Err(Transient)),
        (Remove, 503, None, Err(Transient)),
        (Lookup, 504, None, Err(Transient)),
        (Batch, 503, None, Err(Transient)),
        (Add, 408, None, Err(Transient)),
        (Add, 401, None, Err(Systemic(Credentials))),
        (Batch, 403, None, Err(Systemic(Permission))),
        // A 404 is "not found" only from a delete and only with KFR's own code.
        (Remove, 404, None, Err(Systemic(Endpoint))),
        (Remove, 404, Some("KFR-005"), Err(Systemic(Endpoint))),
        (Add, 404, None, Err(Systemic(Endpoint))),
        (Add, 404, Some("KFR-008"), Err(Systemic(Endpoint))),
        (Lookup, 404, None, Err(Systemic(Endpoint))),
        (Batch, 404, None, Err(Systemic(Endpoint))),
        (Add, 405, None, Err(Systemic(Endpoint))),
        (Add, 406, None, Err(Systemic(Endpoint))),
        // Redirects are not followed; a success the operation does not define is not trusted.
        (Add, 302, None, Err(Systemic(Endpoint))),
        (Add, 204, None, Err(Systemic(Endpoint))),
        (Remove, 200, None, Err(Systemic(Endpoint))),
        (Batch, 200, None, Err(Systemic(Endpoint))),
        (Batch, 202, None, Err(Systemic(Endpoint))),
        (Lookup, 201, None, Err(Systemic(Endpoint))),
        // Other refusals of the request itself stay with the request.
        (Batch, 413, None, Err(Rejected)),
        (Add, 400, None, Err(Rejected)),
        (Add, 422, None, Err(Rejected)),
    ];

    #[test]
    fn every_listed_answer_has_its_verdict() {
        let mut wrong = vec![];
        for &(op, status, code, expected) in TABLE {
            let got = classify(op, status, code);
            if got != expected {
                wrong.push(format!("{op:?} {status} {code:?}: expected {expected:?}, got {got:?}"));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    /// The spec's own rows, in one place, so a row missing from [`TABLE`] fails here.
    #[test]
    fn the_table_covers_every_row_of_the_spec() {
        /// A status with the codes the spec lists for it.
        type Listed = (u16, &'static [&'static str]);
        #[rustfmt::skip]
        let spec: &[(Operation, &[Listed])] = &[
            (Add, &[(200, &[]), (201, &[]), (400, &["KFR-004", "KFR-005", "KFR-009"]), (401, &["KFR-001"]),
                    (403, &["KFR-002", "KFR-003"]), (500, &["KFR-007"])]),
            (Remove, &[(204, &[]), (400, &["KFR-004", "KFR-005", "KFR-009"]), (401, &["KFR-001"]),
                    (403, &["KFR-002", "KFR-003"]), (404, &["KFR-008"]), (500, &["KFR-007"])]),
            (Batch, &[(201, &[]), (400, &["KFR-004", "KFR-005", "KFR-009", "KFR-010"]), (401, &["KFR-001"]),
                    (403, &["KFR-002", "KFR-003"]), (500, &["KFR-007"])]),
            (Lookup, &[(200, &[]), (400, &["ERR-002", "ERR-003"]), (401, &["ERR-001"]), (403, &["ERR-001"]),
                    (405, &[]), (500, &[])]),
        ];
        for (op, rows) in spec {
            for (status, codes) in *rows {
                let listed = |code: Option<&str>| TABLE.iter().any(|r| (r.0, r.1, r.2) == (*op, *status, code));
                if codes.is_empty() {
                    assert!(listed(None), "{op:?} {status} missing from TABLE");
                }
                for c in *codes {
                    assert!(listed(Some(c)), "{op:?} {status} {c} missing from TABLE");
                }
            }
        }
    }

    fn rejected(error: &str, mp: Option<&str>) -> TokenError {
        TokenError::Rejected {
            status: 400,
            error: error.into(),
            description: mp.map(|c| format!("refused ({c})")),
            mp_code: mp.map(String::from),
            error_uri: None,
            env: "test".into(),
        }
    }

    fn status(status: u16, retry_after: Option<u64>) -> TokenError {
        TokenError::Status {
            url: "https://test.maskinporten.no/token".into(),
            status,
            body: String::new(),
            retry_after: retry_after.map(Duration::from_secs),
        }
    }

    /// A token that cannot be had is never the event's fault: unreachable or failing
    /// Maskinporten is transient, a refusal is systemic with the scope the operator must fix.
    #[test]
    fn token_failures_are_transient_rate_limited_or_systemic() {
        #[rustfmt::skip]
        let table: Vec<(TokenError, VerdictClass)> = vec![
            (rejected("invalid_grant", None), Systemic(Credentials)),
            (rejected("invalid_client", None), Systemic(Credentials)),
            (rejected("invalid_scope", None), Systemic(Permission)),
            (rejected("invalid_client", Some("MP-100")), Systemic(Credentials)),
            (rejected("invalid_grant", Some("MP-110")), Systemic(Credentials)),
            (rejected("invalid_grant", Some("MP-120")), Systemic(Credentials)),
            (rejected("invalid_grant", Some("MP-122")), Systemic(Credentials)),
            (rejected("invalid_grant", Some("MP-123")), Systemic(Credentials)),
            (rejected("invalid_grant", Some("MP-124")), Systemic(Credentials)),
            (rejected("invalid_grant", Some("MP-130")), Systemic(Credentials)),
            (rejected("invalid_grant", Some("MP-012")), Systemic(Credentials)),
            (rejected("invalid_scope", Some("MP-200")), Systemic(Permission)),
            (rejected("invalid_scope", Some("MP-201")), Systemic(Permission)),
            (rejected("invalid_scope", Some("MP-250")), Systemic(Permission)),
            (rejected("invalid_grant", Some("MP-251")), Systemic(Institution)),
            (TokenError::Credential("bad password".into()), Systemic(Credentials)),
            (TokenError::Signing("not RSA".into()), Systemic(Credentials)),
            (TokenError::Transport { url: "u".into(), reason: "connection refused".into(), timeout: false }, Transient),
            (TokenError::Transport { url: "u".into(), reason: "timed out".into(), timeout: true }, Transient),
            (status(500, None), Transient),
            (status(503, Some(30)), Transient),
            (status(429, Some(5)), RateLimited),
            (status(404, None), Systemic(Endpoint)),
            (TokenError::IssuerMismatch { url: "u".into(), configured: "a".into(), discovered: "b".into() },
                Systemic(Endpoint)),
        ];
        for (e, expected) in table {
            assert_eq!(token_class(&e), expected, "{e}");
            let v: Verdict<()> = KfrError::Token(e.clone()).verdict();
            assert_eq!(v.class(), Some(expected), "{e}");
        }
        // The server's delay travels with the verdict.
        assert_eq!(
            KfrError::Token(status(429, Some(5))).verdict::<()>(),
            Verdict::RateLimited {
                retry_after: Some(Duration::from_secs(5))
            }
        );
        assert_eq!(
            KfrError::Token(status(503, Some(30))).verdict::<()>().server_delay(),
            Some(Duration::from_secs(30))
        );
        assert!(matches!(
            KfrError::Token(status(503, Some(30))).verdict::<()>(),
            Verdict::Transient { server_delay: Some(d), .. } if d == Duration::from_secs(30)
        ));
        assert!(matches!(
            KfrError::Token(rejected("invalid_scope", Some("MP-200"))).verdict::<()>(),
            Verdict::Systemic { scope: Permission, code: Some(c), .. } if c == "MP-200"
        ));
    }

    #[test]
    fn only_transient_and_rate_limited_are_retryable() {
        assert!(Transient.is_retryable() && RateLimited.is_retryable());
        for scope in [Credentials, Permission, Institution, Endpoint] {
            assert!(!Systemic(scope).is_retryable());
        }
        assert!(!Rejected.is_retryable());
    }

    #[test]
    fn answers_without_a_kfr_request_have_their_class() {
        let cid = Uuid::nil();
        let transport = |timeout| KfrError::Transport {
            url: "https://kfr".into(),
            reason: if timeout { "timed out" } else { "connection refused" }.into(),
            timeout,
            correlation_id: cid,
        };
        assert_eq!(transport(true).class(), VerdictClass::Transient);
        assert_eq!(transport(false).class(), VerdictClass::Transient);
        let unreadable = KfrError::InvalidResponse {
            status: 200,
            reason: "not a ListCustomerRelation".into(),
            correlation_id: cid,
        };
        assert_eq!(unreadable.class(), VerdictClass::Systemic(Scope::Endpoint));
        let big = KfrError::BatchTooLarge { size: 11, limit: 10 };
        assert!(matches!(big.verdict::<()>(), Verdict::Rejected { code: None, .. }));
    }
}
