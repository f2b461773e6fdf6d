//! Maskinporten: the business-certificate credential, the JWT-bearer grant (RFC 7523), endpoint
//! discovery (RFC 8414) and the access-token cache (kfr-notes §3, §9).

mod credential;

pub use credential::{CertInfo, Credential, CredentialError};

/// Placeholder until the token client lands.
#[derive(Debug, thiserror::Error)]
#[error("token error")]
pub struct TokenError;

impl crate::error::Hinted for TokenError {
    fn hint(&self) -> Option<String> {
        None
    }
}
