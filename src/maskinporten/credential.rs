//! Placeholder: replaced by the credential loader (branch `creds`).
#![allow(dead_code, unused_variables)]

use std::path::Path;

pub struct Credential;
impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credential")
    }
}
#[derive(Debug, Clone)]
pub struct CertInfo {
    pub subject: String,
    pub issuer: String,
    pub org_number: Option<String>,
    pub not_before: chrono::DateTime<chrono::Utc>,
    pub not_after: chrono::DateTime<chrono::Utc>,
    pub key_usage_digital_signature: Option<bool>,
    pub is_ca: bool,
    pub test_issuer: bool,
    pub sha256_fingerprint: String,
}
#[derive(Debug, thiserror::Error)]
#[error("credential error")]
pub struct CredentialError;
impl crate::error::Hinted for CredentialError {
    fn hint(&self) -> Option<String> {
        None
    }
}
impl Credential {
    pub fn from_config(src: &crate::config::CredentialSource) -> Result<Self, CredentialError> {
        todo!()
    }
    pub fn encoding_key(&self) -> &jsonwebtoken::EncodingKey {
        todo!()
    }
    pub fn leaf_der(&self) -> &[u8] {
        todo!()
    }
    pub fn chain_der(&self) -> &[Vec<u8>] {
        todo!()
    }
    pub fn info(&self) -> &CertInfo {
        todo!()
    }
    pub fn from_pkcs12(path: &Path, password: &secrecy::SecretString) -> Result<Self, CredentialError> {
        todo!()
    }
}
