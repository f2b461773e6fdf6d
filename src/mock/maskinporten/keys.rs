//! Which key signed a grant, and whether the signature holds.
//!
//! Digdir fixes a client's key mode at registration: a business-certificate client sends its
//! certificate chain in `x5c`, a key client names a registered key with `kid`, and the other
//! header is refused (MP-123/MP-124). The client is looked up (by `iss`) before the key for that
//! reason, ahead of the claim checks that would otherwise come first.

use super::{Refusal, describe, x5c};
use crate::mock::config::ClientKeys;
use crate::mock::state::MaskinportenState;
use rustls_pki_types::CertificateDer;
use serde_json::{Map, Value};

/// The certificate that signed a grant (leaf first) and how it was found.
pub(super) struct Signer {
    /// `x5c` as sent (leaf first), or the one certificate registered under `kid`.
    pub chain: Vec<CertificateDer<'static>>,
    /// Found by `kid`: trusted by its registration, so no path check.
    pub by_kid: bool,
}

/// The signing certificate named by the header: `x5c` or `kid`, exactly one, and the one the
/// client is registered for.
pub(super) fn signer(
    mp: &MaskinportenState,
    header: &Map<String, Value>,
    claims: &Map<String, Value>,
) -> Result<Signer, Refusal> {
    let registered = claims
        .get("iss")
        .and_then(Value::as_str)
        .and_then(|iss| mp.clients.as_ref()?.get(iss));
    let registered_keys = match registered.map(|c| &c.keys) {
        Some(ClientKeys::Keys(keys)) => Some(keys),
        _ => None,
    };
    let (chain, by_kid) = match (header.get("x5c"), header.get("kid")) {
        (Some(_), Some(_)) => {
            return Err(Refusal::grant(
                "MP-123",
                "header carries both x5c and kid; send exactly one (x5c with the business certificate)",
            ));
        }
        (None, None) => {
            return Err(Refusal::grant(
                "MP-123",
                "header carries neither x5c nor kid; send x5c with the business certificate",
            ));
        }
        (None, Some(kid)) => match (registered, registered_keys) {
            (_, Some(keys)) => match kid.as_str().and_then(|k| keys.get(k)) {
                Some(der) => (vec![CertificateDer::from(der.clone())], true),
                None => {
                    return Err(Refusal::grant(
                        "MP-124",
                        format!("kid {} is not a key registered for this client", describe(Some(kid))),
                    ));
                }
            },
            (Some(_), None) => {
                return Err(Refusal::grant(
                    "MP-124",
                    "this client is registered for a business certificate: send x5c, not kid",
                ));
            }
            (None, None) => {
                return Err(Refusal::grant(
                    "MP-124",
                    format!(
                        "kid {} is not a key registered for any client (this mock has no pre-registered keys; send x5c)",
                        describe(Some(kid))
                    ),
                ));
            }
        },
        (Some(_), None) if registered_keys.is_some() => {
            return Err(Refusal::grant(
                "MP-123",
                "this client is registered with keys: send kid, not x5c",
            ));
        }
        (Some(x5c), None) => (x5c::parse_x5c(x5c)?, false),
    };
    Ok(Signer { chain, by_kid })
}

/// The signature, with the key of the leaf certificate: the leaf must be a usable X.509
/// certificate (MP-123) with an RSA key that verifies `header.payload` (MP-124). Returns the
/// parsed leaf for the trust check.
pub(super) fn verify_signature<'c>(
    chain: &'c [CertificateDer<'static>],
    signing_input: &str,
    signature: &[u8],
) -> Result<webpki::EndEntityCert<'c>, Refusal> {
    let leaf = webpki::EndEntityCert::try_from(&chain[0])
        .map_err(|_| Refusal::grant("MP-123", "x5c[0] is not a usable X.509 certificate"))?;
    leaf.verify_signature(
        webpki::aws_lc_rs::RSA_PKCS1_2048_8192_SHA256,
        signing_input.as_bytes(),
        signature,
    )
    .map_err(|e| {
        let why = match e {
            webpki::Error::UnsupportedSignatureAlgorithmForPublicKeyContext(_) => {
                "the x5c certificate's key is not an RSA key (RS256 needs one)"
            }
            _ => "signature does not verify with the key of the x5c certificate",
        };
        Refusal::grant("MP-124", why)
    })?;
    Ok(leaf)
}
