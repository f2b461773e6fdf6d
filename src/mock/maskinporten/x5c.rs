//! The business certificate of a grant: the `x5c` header's shape, the chain's trust at the mock's
//! clock, the leaf's KeyUsage, and the organisation number its subject names.
//!
//! The trust check is a real path validation (webpki) against the mock's trusted CAs, not a name
//! comparison, so an expired, not-yet-valid or foreign certificate fails here as it would at
//! Digdir (MP-120).

use super::{Refusal, describe};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use serde_json::Value;
use std::time::Duration;

/// `x5c` must be a JSON array of standard-base64 DER strings (kfr-notes §9): leaf first, optionally
/// followed by intermediates.
pub(super) fn parse_x5c(x5c: &Value) -> Result<Vec<CertificateDer<'static>>, Refusal> {
    let Value::Array(items) = x5c else {
        return Err(Refusal::grant(
            "MP-123",
            format!(
                "x5c must be a JSON array of base64 certificates, got {}",
                describe(Some(x5c))
            ),
        ));
    };
    if items.is_empty() {
        return Err(Refusal::grant("MP-123", "x5c is an empty array"));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let Value::String(b64) = item else {
                return Err(Refusal::grant("MP-123", format!("x5c[{i}] is not a string")));
            };
            // STANDARD requires the +/ alphabet and canonical padding, so base64url is refused.
            let der = STANDARD.decode(b64).map_err(|_| {
                Refusal::grant(
                    "MP-123",
                    format!("x5c[{i}] is not standard base64 (RFC 7515 §4.1.6: base64, not base64url)"),
                )
            })?;
            // RFC 7515 §4.1.6: every element is a DER certificate, not only the first; a chain
            // with garbage in it is refused rather than the garbage skipped.
            match x509_parser::parse_x509_certificate(&der) {
                Ok((&[], _)) => Ok(CertificateDer::from(der)),
                _ => Err(Refusal::grant(
                    "MP-123",
                    format!("x5c[{i}] is not a DER X.509 certificate"),
                )),
            }
        })
        .collect()
}

/// Trust (MP-120): `chain[0]` (already parsed as `leaf`) must chain through the rest of `chain` to
/// a trusted CA and be valid at `now`, and its KeyUsage must allow signing.
pub(super) fn check_trust(
    leaf: &webpki::EndEntityCert<'_>,
    chain: &[CertificateDer<'_>],
    trusted_ca_der: &[Vec<u8>],
    now: i64,
) -> Result<(), Refusal> {
    verify_chain(leaf, &chain[1..], trusted_ca_der, now)?;
    // webpki does not look at an end-entity's KeyUsage; a certificate whose KeyUsage leaves
    // out digitalSignature may not sign grants (RFC 5280 §4.2.1.3), so refuse it like a bad
    // certificate.
    if !key_usage_allows_signing(chain[0].as_ref()) {
        return Err(Refusal::grant(
            "MP-120",
            "certificate key usage does not include digitalSignature, so it cannot sign grants",
        ));
    }
    Ok(())
}

fn verify_chain(
    leaf: &webpki::EndEntityCert<'_>,
    intermediates: &[CertificateDer<'_>],
    trusted_ca_der: &[Vec<u8>],
    now: i64,
) -> Result<(), Refusal> {
    let anchors: Vec<TrustAnchor<'static>> = trusted_ca_der
        .iter()
        .filter_map(|der| {
            webpki::anchor_from_trusted_cert(&CertificateDer::from(der.as_slice()))
                .ok()
                .map(|a| a.to_owned())
        })
        .collect();
    let time = UnixTime::since_unix_epoch(Duration::from_secs(u64::try_from(now).unwrap_or(0)));
    let result = leaf.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        intermediates,
        time,
        webpki::KeyUsage::client_auth(),
        None,
        None,
    );
    match result {
        Ok(_) => Ok(()),
        Err(webpki::Error::CertExpired { not_after, .. }) => Err(Refusal::grant(
            "MP-120",
            format!(
                "certificate expired (valid until {}, Maskinporten clock {})",
                rfc3339(not_after.as_secs()),
                rfc3339(u64::try_from(now).unwrap_or(0))
            ),
        )),
        Err(webpki::Error::CertNotValidYet { not_before, .. }) => Err(Refusal::grant(
            "MP-120",
            format!(
                "certificate is not yet valid (valid from {}, Maskinporten clock {})",
                rfc3339(not_before.as_secs()),
                rfc3339(u64::try_from(now).unwrap_or(0))
            ),
        )),
        Err(webpki::Error::UnknownIssuer) => Err(Refusal::grant(
            "MP-120",
            "certificate is not issued by a trusted CA (is it a production certificate in test, or the wrong CA?)",
        )),
        Err(other) => Err(Refusal::grant(
            "MP-120",
            format!("certificate is not issued by a trusted CA (path validation failed: {other})"),
        )),
    }
}

fn rfc3339(secs: u64) -> String {
    chrono::DateTime::from_timestamp(i64::try_from(secs).unwrap_or(i64::MAX), 0)
        .map_or_else(|| secs.to_string(), |t| t.to_rfc3339())
}

/// The org.nr of a business certificate, by the client's own reading of the subject
/// ([`crate::maskinporten::subject_org_number`]), so mock and client cannot disagree about it.
pub(super) fn org_number(cert_der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    crate::maskinporten::subject_org_number(cert.subject())
}

/// False only when a KeyUsage extension is present without digitalSignature (or the certificate
/// cannot be parsed at all); no extension means no restriction.
fn key_usage_allows_signing(cert_der: &[u8]) -> bool {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(cert_der) else {
        return false;
    };
    match cert.key_usage() {
        Ok(Some(ku)) => ku.value.digital_signature(),
        Ok(None) => true,
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn x5c_must_be_an_array_of_standard_base64() {
        let err = parse_x5c(&json!("MIIB")).unwrap_err();
        assert_eq!(err.code, "MP-123");
        assert!(parse_x5c(&json!([])).is_err());
        assert!(parse_x5c(&json!([1])).is_err());
        // '-' and '_' belong to base64url only; a missing '=' is not canonical base64.
        assert!(parse_x5c(&json!(["ab-_"])).is_err());
        assert!(parse_x5c(&json!(["YWI"])).is_err());
        // Good base64 that is not a certificate is refused too, at any position.
        let e = parse_x5c(&json!(["YWI="])).unwrap_err();
        assert!(e.description.contains("x5c[0] is not a DER X.509 certificate"), "{e:?}");
    }

    #[test]
    fn org_number_reads_a_padded_subject_like_the_client() {
        let ca = crate::certs::TestCa::new().unwrap();
        let leaf = ca
            .issue("916960190", "A AS", &crate::certs::LeafOptions::standard())
            .unwrap();
        assert_eq!(org_number(&leaf.cert_der).as_deref(), Some("916960190"));
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CustomDnType(vec![2, 5, 4, 5]), " 916960190 ");
        let padded = params.self_signed(&key).unwrap();
        assert_eq!(org_number(padded.der()).as_deref(), Some("916960190"));
        assert_eq!(org_number(b"not a certificate"), None);
    }
}
