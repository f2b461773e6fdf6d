//! KFR errors, decoded from both error bodies KFR sends (`{errorCode, errorMessage, timestamp}`
//! with KFR-/ERR- codes, and the gateway's `{statusCode, message}`), each with the class of its
//! verdict ([`VerdictClass`], see [`super::verdict`]) so callers (the CLI, the load executor, the
//! sync agent) decide the same way.
//!
//! Text a server sends back is shown with long digit runs masked: KFR or a gateway may echo the
//! customer identifier, and a person's number must not reach a log in full.

use super::verdict::{Scope, Verdict, VerdictClass, token_class};
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

    /// The KFR/ERR code, when KFR gave one.
    pub fn code(&self) -> Option<&str> {
        match self {
            KfrError::Api { code, .. } => code.as_deref(),
            _ => None,
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
