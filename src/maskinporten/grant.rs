//! The JWT-bearer grant (RFC 7523) exactly as Maskinporten wants it (kfr-notes §3, §9).
//!
//! Header: `alg` RS256, `typ` JWT, and either `x5c` (an array of *standard* base64 DER strings,
//! by default the leaf only: the KFR FAQ says no chain) or `kid` for a key pre-registered with
//! Digdir. Claims: `aud` (the issuer, trailing slash included), `iss` (client id), `scope`, `iat`,
//! `exp = iat + 120`, a fresh `jti`, optional `consumer_org` and `resource` — and nothing else,
//! since Maskinporten answers 400 to claims it does not list (e.g. `nbf`).

use super::{Credential, TokenError};
use base64::Engine as _;
use secrecy::SecretString;

/// Which certificates go into the grant's `x5c` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum X5cMode {
    /// Only the business certificate (KFR FAQ: no chain). The default.
    Leaf,
    /// The business certificate followed by its intermediates.
    Chain,
}

/// Grant lifetime. Maskinporten's maximum; a short 10 s lifetime is a classic source of
/// failures on hosts with a little skew, and there is no benefit in going lower.
pub const GRANT_LIFETIME_SECS: i64 = 120;

/// Everything that goes into a grant besides the key and the clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantParams {
    /// The Maskinporten issuer identifier, used as `aud`.
    pub audience: String,
    pub client_id: String,
    /// Space-separated scopes.
    pub scope: String,
    pub consumer_org: Option<String>,
    /// Audience(s) of the token, comma- or space-separated; sent as a JSON array (see
    /// [`resource_list`]).
    pub resource: Option<String>,
    pub x5c: X5cMode,
    pub kid: Option<String>,
}

#[derive(serde::Serialize)]
struct Claims<'a> {
    aud: &'a str,
    iss: &'a str,
    scope: &'a str,
    iat: i64,
    exp: i64,
    jti: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    consumer_org: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resource: Option<Vec<&'a str>>,
}

/// The `resource` claim's values. Digdir's grant takes `resource` as an array of audiences
/// (RFC 8707 allows several), and a strict Maskinporten refuses a bare string, so even one
/// audience travels as a one-element array. Configuration holds them in one string separated by
/// commas or whitespace; an empty list means no claim at all.
pub fn resource_list(resource: &str) -> Vec<&str> {
    resource
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|r| !r.is_empty())
        .collect()
}

/// The `x5c` header value: standard base64 (RFC 7515 §4.1.6 — not base64url) of each DER.
pub fn x5c_value(credential: &Credential, mode: X5cMode) -> Vec<String> {
    let mut v = vec![credential.leaf_x5c()];
    if mode == X5cMode::Chain {
        let b64 = base64::engine::general_purpose::STANDARD;
        v.extend(credential.chain_der().iter().map(|c| b64.encode(c)));
    }
    v
}

/// Signs a grant. `now` is the (skew-corrected) Unix time in seconds; `jti` must be fresh.
pub fn sign(
    credential: &Credential,
    params: &GrantParams,
    now: i64,
    jti: uuid::Uuid,
) -> Result<SecretString, TokenError> {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    match &params.kid {
        Some(kid) => header.kid = Some(kid.clone()),
        None => header.x5c = Some(x5c_value(credential, params.x5c)),
    }
    let claims = Claims {
        aud: &params.audience,
        iss: &params.client_id,
        scope: &params.scope,
        iat: now,
        exp: now + GRANT_LIFETIME_SECS,
        jti: jti.to_string(),
        consumer_org: params.consumer_org.as_deref(),
        resource: params.resource.as_deref().map(resource_list).filter(|r| !r.is_empty()),
    };
    jsonwebtoken::encode(&header, &claims, credential.encoding_key())
        .map(SecretString::from)
        .map_err(|e| TokenError::Signing(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn credential() -> (Credential, crate::certs::LocalPki) {
        let pki = crate::certs::generate("916960190", "GRANT TEST AS").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (k, c) = (dir.path().join("k.pem"), dir.path().join("c.pem"));
        std::fs::write(&k, pki.client.key_pem.as_bytes()).unwrap();
        // leaf first, then the CA as "chain", to see what x5c = chain does
        std::fs::write(&c, format!("{}{}", pki.client.cert_pem, pki.ca_cert_pem)).unwrap();
        (Credential::from_pem(&k, &c, None).unwrap(), pki)
    }

    fn parts(jwt: &SecretString) -> (Value, Value) {
        use secrecy::ExposeSecret as _;
        let b = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut it = jwt.expose_secret().split('.');
        let h = serde_json::from_slice(&b.decode(it.next().unwrap()).unwrap()).unwrap();
        let c = serde_json::from_slice(&b.decode(it.next().unwrap()).unwrap()).unwrap();
        assert!(it.next().is_some_and(|s| !s.is_empty()), "signed");
        (h, c)
    }

    fn params() -> GrantParams {
        GrantParams {
            audience: "https://test.maskinporten.no/".into(),
            client_id: "d61fe9d0-802c-499b-8eb8-c7b4c3085d01".into(),
            scope: "bits:kundeforhold.write".into(),
            consumer_org: None,
            resource: None,
            x5c: X5cMode::Leaf,
            kid: None,
        }
    }

    /// The exact header and claim set: nothing missing, nothing extra (kfr-notes §3, §9).
    #[test]
    fn grant_header_and_claims_are_exact() {
        let (cred, pki) = credential();
        let jti = uuid::Uuid::new_v4();
        let (header, claims) = parts(&sign(&cred, &params(), 1_795_000_000, jti).unwrap());
        let std_b64 = base64::engine::general_purpose::STANDARD.encode(&pki.client.cert_der);
        assert_eq!(header, json!({"alg": "RS256", "typ": "JWT", "x5c": [std_b64]}));
        assert_eq!(
            claims,
            json!({
                "aud": "https://test.maskinporten.no/",
                "iss": "d61fe9d0-802c-499b-8eb8-c7b4c3085d01",
                "scope": "bits:kundeforhold.write",
                "iat": 1_795_000_000,
                "exp": 1_795_000_120,
                "jti": jti.to_string(),
            })
        );
    }

    #[test]
    fn optional_claims_chain_and_kid() {
        let (cred, pki) = credential();
        let p = GrantParams {
            consumer_org: Some("999999999".into()),
            resource: Some("https://api.example/".into()),
            x5c: X5cMode::Chain,
            ..params()
        };
        let (header, claims) = parts(&sign(&cred, &p, 1, uuid::Uuid::new_v4()).unwrap());
        let b = base64::engine::general_purpose::STANDARD;
        assert_eq!(
            header["x5c"],
            json!([b.encode(&pki.client.cert_der), b.encode(&pki.ca_cert_der)])
        );
        assert_eq!(claims["consumer_org"], "999999999");
        assert_eq!(claims["resource"], json!(["https://api.example/"]));

        let p = GrantParams {
            kid: Some("registered-key-1".into()),
            ..params()
        };
        let (header, _) = parts(&sign(&cred, &p, 1, uuid::Uuid::new_v4()).unwrap());
        assert_eq!(header, json!({"alg": "RS256", "typ": "JWT", "kid": "registered-key-1"}));
    }

    /// The signature verifies with the certificate's public key (what Maskinporten checks).
    #[test]
    fn signature_verifies_with_the_certificate_key() {
        use secrecy::ExposeSecret as _;
        let (cred, pki) = credential();
        let jwt = sign(&cred, &params(), 1_795_000_000, uuid::Uuid::new_v4()).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&pki.client.cert_der).unwrap();
        let spki = cert.public_key().subject_public_key.data.to_vec();
        let key = jsonwebtoken::DecodingKey::from_rsa_der(&spki);
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        v.validate_exp = false;
        v.set_audience(&["https://test.maskinporten.no/"]);
        jsonwebtoken::decode::<serde_json::Value>(jwt.expose_secret(), &key, &v).expect("verifies");
    }
}
