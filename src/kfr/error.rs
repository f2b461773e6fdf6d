//! KFR errors, decoded from both error bodies KFR sends (`{errorCode, errorMessage, timestamp}`
//! with KFR-/ERR- codes, and the gateway's `{statusCode, message}`), and the classes of verdict
//! ([`VerdictClass`], [`Scope`]) an answer carries, so callers (the CLI, the load executor, the
//! sync agent) decide the same way.
//!
//! The classes are defined here because an answer's error carries one; the rules that decide
//! them, and the class and verdict of every other failure (`KfrError::class`,
//! `KfrError::verdict`), are in [`super::verdict`]. That module names this one, never the
//! reverse (`src/architecture.rs`: no circle among a module's files).
//!
//! Text a server sends back is shown with long digit runs masked: KFR or a gateway may echo the
//! customer identifier, and a person's number must not reach a log in full.

use crate::error::Hinted;
use crate::ids::scrub;
use crate::maskinporten::TokenError;
use std::time::Duration;
use uuid::Uuid;

/// A failed KFR request.
#[derive(Debug, Clone, thiserror::Error)]
pub enum KfrError {
    /// KFR answered with an error status.
    #[error("KFR answered {status}{}: {message} (CorrelationID {correlation_id})", .code.as_deref().map(|c| format!(" {c}")).unwrap_or_default())]
    Api {
        status: u16,
        /// `KFR-005`, `ERR-003`, …; `None` for the gateway's `{statusCode, message}` body.
        code: Option<String>,
        message: String,
        correlation_id: Uuid,
        /// The answer's `Retry-After`, either form.
        retry_after: Option<Duration>,
        class: VerdictClass,
    },
    /// No answer at all.
    #[error("no answer from KFR at {url}: {reason} (CorrelationID {correlation_id})")]
    Transport {
        url: String,
        reason: String,
        timeout: bool,
        correlation_id: Uuid,
    },
    /// A success status whose body could not be understood (systemic for the endpoint).
    #[error("unexpected answer from KFR ({status}): {reason} (CorrelationID {correlation_id})")]
    InvalidResponse {
        status: u16,
        reason: String,
        correlation_id: Uuid,
    },
    /// No token, so no request was sent.
    #[error("cannot get a Maskinporten token for KFR")]
    Token(#[source] TokenError),
    /// The batch body exceeds the configured limit; nothing was sent.
    #[error("batch body is {size} bytes, over the limit of {limit} bytes")]
    BatchTooLarge { size: usize, limit: usize },
}

/// What cannot work now when a verdict is systemic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// The certificate, the Maskinporten client or the token is refused: Maskinporten refused the
    /// grant (`invalid_grant`, `invalid_client`, most MP-codes), or KFR answered 401 to a token
    /// fetched just before.
    Credentials,
    /// The token is valid but may not do this: KFR-002 (and the lookup's 403 ERR-001), or
    /// Maskinporten refusing the scope (`invalid_scope`, MP-200/201/250).
    Permission,
    /// The credential cannot act for this organisation: KFR-003 (`fid` is not the token's
    /// org.nr), or a missing Altinn delegation (MP-251).
    Institution,
    /// The service at the configured URL does not answer as KFR (or Maskinporten) does: a 404
    /// other than a delete's KFR-008, 405, 406, a redirect, a success we cannot read, a
    /// discovery document for another issuer. A wrong base URL or a proxy in the way.
    Endpoint,
}

/// The class of a verdict other than delivered: what [`KfrError`] carries so every caller (the
/// CLI, the load, the sync agent) branches the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "class", content = "scope")]
pub enum VerdictClass {
    /// The same request may succeed later: 5xx, 408, timeout, connection failure, Maskinporten
    /// unreachable or failing.
    Transient,
    /// 429: slow down, at least for `Retry-After`.
    RateLimited,
    /// Nothing sent with this credential/institution/endpoint can succeed until someone acts.
    Systemic(Scope),
    /// This request is refused for what it says; other events are unaffected.
    Rejected,
}

impl VerdictClass {
    /// Worth repeating unchanged (after a wait).
    pub fn is_retryable(self) -> bool {
        matches!(self, VerdictClass::Transient | VerdictClass::RateLimited)
    }
}

impl KfrError {
    /// Whether the request may still be carried out after this answer: no answer came (a
    /// timeout, a lost connection), or a 5xx, which a gateway gives while the request may still
    /// reach KFR, or a success whose body did not parse. Such an attempt is **in doubt**: the
    /// customer's next event must not be sent before it can no longer be applied
    /// (docs/specs/outbox.md, "In doubt means hold"). A token failure, a refused size, a 4xx
    /// and a 429 are definite: nothing was (or will be) done.
    pub fn fate_unknown(&self) -> bool {
        match self {
            KfrError::Transport { .. } | KfrError::InvalidResponse { .. } => true,
            KfrError::Api { status, .. } => *status >= 500,
            KfrError::Token(_) | KfrError::BatchTooLarge { .. } => false,
        }
    }

    /// The KFR/ERR code, when KFR gave one.
    pub fn code(&self) -> Option<&str> {
        match self {
            KfrError::Api { code, .. } => code.as_deref(),
            _ => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            KfrError::Api { status, .. } | KfrError::InvalidResponse { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The server's `Retry-After` (KFR's, or Maskinporten's when the token failed).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            KfrError::Api { retry_after, .. } => *retry_after,
            KfrError::Token(e) => e.retry_after(),
            _ => None,
        }
    }

    /// The CorrelationID of the request, when one was sent.
    pub fn correlation_id(&self) -> Option<Uuid> {
        match self {
            KfrError::Api { correlation_id, .. }
            | KfrError::Transport { correlation_id, .. }
            | KfrError::InvalidResponse { correlation_id, .. } => Some(*correlation_id),
            KfrError::Token(_) | KfrError::BatchTooLarge { .. } => None,
        }
    }
}

/// Decodes an error body: the KFR shape, the gateway shape, or neither (kept as text, cut to
/// 200 characters). The message is scrubbed of identifiers.
pub fn decode_body(body: &str) -> (Option<String>, String) {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct KfrBody {
        error_code: String,
        error_message: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct GatewayBody {
        message: String,
    }
    if let Ok(b) = serde_json::from_str::<KfrBody>(body) {
        return (Some(b.error_code), scrub(&b.error_message.unwrap_or_default()));
    }
    if let Ok(b) = serde_json::from_str::<GatewayBody>(body) {
        return (None, scrub(&b.message));
    }
    let text: String = body.trim().chars().take(200).collect();
    (
        None,
        if text.is_empty() {
            "(empty body)".into()
        } else {
            scrub(&text)
        },
    )
}

impl Hinted for KfrError {
    fn hint(&self) -> Option<String> {
        let by_code = match self.code() {
            Some("KFR-001") | Some("ERR-001") => {
                "the token was refused: check the Maskinporten environment matches KFR's (env)"
            }
            Some("KFR-002") => "the token lacks the scope bits:kundeforhold.write: ask Bits to grant it to the client",
            Some("KFR-003") => "org_number must be the organisation the token (certificate) was issued to",
            Some("KFR-005") | Some("ERR-002") => {
                "KFR refused the customer identifier; `kfr validate ID` shows the local rules"
            }
            Some("KFR-008") => "the relationship is not registered",
            Some("KFR-009") => "the relationship type must be DSOPBANK",
            Some("KFR-010") => "start dates must be YYYY-MM-DD",
            Some("ERR-003") => "dates must be YYYY-MM-DD and fromDate must not be after toDate",
            Some("KFR-007") => "KFR had an internal error; it is retried automatically where safe",
            _ => "",
        };
        if !by_code.is_empty() {
            return Some(by_code.into());
        }
        Some(match self {
            KfrError::Api { status: 403, .. } => {
                "KFR refused access: check scope and org_number; on a batch, a 403 also means a malformed multipart body".into()
            }
            KfrError::Api { status: 429, .. } => "KFR is rate limiting: lower the request rate".into(),
            KfrError::Api {
                class: VerdictClass::Systemic(Scope::Endpoint),
                ..
            }
            | KfrError::InvalidResponse { .. } => {
                "the answer is not KFR's: check kfr_base_url (it ends in /kar-ws/api/v1) and any proxy in between".into()
            }
            KfrError::Api {
                class: VerdictClass::Systemic(Scope::Credentials),
                ..
            } => "KFR refused a freshly fetched token: check the Maskinporten environment matches KFR's (env)".into(),
            KfrError::Transport { .. } => "check network access to kfr_base_url (firewall, proxy); `kfr doctor` tests it".into(),
            KfrError::Token(e) => return e.hint(),
            KfrError::BatchTooLarge { .. } => "split the batch (kfr load does this automatically)".into(),
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_both_error_shapes() {
        assert_eq!(
            decode_body(
                r#"{"errorCode":"KFR-005","errorMessage":"Invalid customer identifier","timestamp":"2026-01-01T00:00:00Z"}"#
            ),
            (Some("KFR-005".into()), "Invalid customer identifier".into())
        );
        assert_eq!(
            decode_body(r#"{"statusCode":401,"message":"Unauthorized. Access token is missing or invalid"}"#),
            (None, "Unauthorized. Access token is missing or invalid".into())
        );
        assert_eq!(decode_body("<html>bad gateway</html>").1, "<html>bad gateway</html>");
    }

    #[test]
    fn echoed_identifiers_are_masked() {
        let (_, m) = decode_body(
            r#"{"errorCode":"KFR-005","errorMessage":"Invalid customer identifier 15108695088","timestamp":"x"}"#,
        );
        assert_eq!(m, "Invalid customer identifier *********88");
        assert_eq!(
            scrub("fid 916960190 at 2026-01-01T00:00:00Z, ref 12345678"),
            "fid 916960190 at 2026-01-01T00:00:00Z, ref 12345678",
            "org.nr, dates and short runs stay"
        );
        assert_eq!(scrub("<p>41108695088</p>"), "<p>*********88</p>");
        assert!(!decode_body("no such customer 15108695088").1.contains("1510869"));
    }
}
