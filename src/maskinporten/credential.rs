//! The institution's business certificate (virksomhetssertifikat) and its private key.

/// Placeholder.
#[derive(Debug)]
pub struct Credential;
/// Placeholder.
#[derive(Debug)]
pub struct CertInfo;
/// Placeholder.
#[derive(Debug, thiserror::Error)]
#[error("credential error")]
pub struct CredentialError;

impl crate::error::Hinted for CredentialError {
    fn hint(&self) -> Option<String> {
        None
    }
}
