//! Maskinporten: the business-certificate credential, the JWT-bearer grant (RFC 7523), endpoint
//! discovery (RFC 8414) and the access-token cache (kfr-notes §3, §9).
//!
//! - [`credential`]: loads PKCS#12 / PEM and describes the certificate.
//! - [`grant`]: builds and signs the assertion.
//! - [`discovery`]: finds the token endpoint.
//! - [`clock`]: measures the offset to Maskinporten's clock.
//! - [`client`]: the token client with single flight, refresh-ahead and retries (the policy is
//!   [`crate::http::RetryPolicy`]).
//! - [`error`]: typed errors with MP-codes and operator hints.

pub mod client;
pub mod clock;
mod credential;
pub mod discovery;
mod error;
pub mod grant;

pub use client::{AccessToken, TokenClient, TokenClientConfig, TokenRequest};
pub use credential::{CertInfo, Credential, CredentialError, CredentialSource, IssuingCa, subject_org_number};
pub use error::{TokenError, find_mp_code};
pub use grant::X5cMode;
