//! KFR errors, decoded from both error bodies KFR sends (`{errorCode, errorMessage, timestamp}`
//! with KFR-/ERR- codes, and the gateway's `{statusCode, message}`), each with a retry class so
//! callers (the CLI, the load executor, the sync scheduler) decide the same way.

use crate::error::Hinted;
use crate::maskinporten::TokenError;
use uuid::Uuid;

/// What a caller should do with a failed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RetryClass {
    /// Connect failure, timeout, 5xx, 429: the same request may succeed later.
    Transient,
    /// 401: the token was not accepted; get a new token and retry once.
    Auth,
    /// 403: scope, fid, or (on batch) a malformed multipart. Retrying will not help.
    Forbidden,
    /// 400 and other refusals of the request itself.
    Permanent,
}

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
        retry_after: Option<u64>,
        class: RetryClass,
    },
    /// No answer at all.
    #[error("no answer from KFR at {url}: {reason} (CorrelationID {correlation_id})")]
    Transport {
        url: String,
        reason: String,
        timeout: bool,
        correlation_id: Uuid,
    },
    /// The answer could not be understood.
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

impl KfrError {
    pub fn class(&self) -> RetryClass {
        match self {
            KfrError::Api { class, .. } => *class,
            KfrError::Transport { .. } => RetryClass::Transient,
            KfrError::Token(e) if e.is_transient() => RetryClass::Transient,
            KfrError::Token(_) => RetryClass::Permanent,
            KfrError::InvalidResponse { status, .. } if *status >= 500 => RetryClass::Transient,
            KfrError::InvalidResponse { .. } | KfrError::BatchTooLarge { .. } => RetryClass::Permanent,
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

    pub fn retry_after(&self) -> Option<u64> {
        match self {
            KfrError::Api { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// Retry class of an HTTP status (kfr-notes §4, §6).
pub fn classify(status: u16) -> RetryClass {
    match status {
        401 => RetryClass::Auth,
        403 => RetryClass::Forbidden,
        408 | 429 | 500..=599 => RetryClass::Transient,
        _ => RetryClass::Permanent,
    }
}

/// Decodes an error body: the KFR shape, the gateway shape, or neither (kept as text).
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
        return (Some(b.error_code), b.error_message.unwrap_or_default());
    }
    if let Ok(b) = serde_json::from_str::<GatewayBody>(body) {
        return (None, b.message);
    }
    let text: String = body.trim().chars().take(200).collect();
    (None, if text.is_empty() { "(empty body)".into() } else { text })
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
    fn statuses_map_to_retry_classes() {
        assert_eq!(classify(401), RetryClass::Auth);
        assert_eq!(classify(403), RetryClass::Forbidden);
        assert_eq!(classify(429), RetryClass::Transient);
        assert_eq!(classify(503), RetryClass::Transient);
        assert_eq!(classify(400), RetryClass::Permanent);
        assert_eq!(classify(404), RetryClass::Permanent);
    }
}
