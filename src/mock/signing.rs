//! The mock Maskinporten's own RSA key and the access tokens it signs: generating the key, its
//! JWK for the JWKS endpoint, signing a token, and reading one back for the fake KFR.
//!
//! A leaf of the mock: the shared state holds the key, the token endpoint signs with it and the
//! KFR half checks tokens with it, so it names none of them (that is what keeps `state.rs` and
//! the Maskinporten half from importing each other).

use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::KeyPair as _;
use aws_lc_rs::signature::{ParsedPublicKey, RSA_PKCS1_2048_8192_SHA256, RSA_PKCS1_SHA256};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value, json};

/// The mock's own RSA key, which signs access tokens.
pub(crate) struct SigningKey {
    pair: KeyPair,
    /// The public half, parsed once: the KFR side checks a token on every request, and parsing
    /// the key each time was a quarter of the mock's CPU under load (docs/benchmarks.md).
    public: ParsedPublicKey,
    kid: String,
    n: String,
    e: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    pub(crate) fn generate() -> anyhow::Result<Self> {
        let pair = KeyPair::generate(KeySize::Rsa2048).map_err(|_| anyhow::anyhow!("generating the mock's RSA key"))?;
        let public = pair.public_key();
        let n = URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero());
        let e = URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero());
        // RFC 7638 thumbprint: SHA-256 of the required members in lexicographic order.
        let thumbprint_input = format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#);
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, thumbprint_input.as_bytes());
        let kid = URL_SAFE_NO_PAD.encode(digest.as_ref());
        let public = ParsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, pair.public_key().as_ref())
            .map_err(|_| anyhow::anyhow!("parsing the mock's own public key"))?;
        Ok(Self {
            pair,
            public,
            kid,
            n,
            e,
        })
    }

    pub(crate) fn jwk(&self) -> Value {
        json!({ "kty": "RSA", "kid": self.kid, "alg": "RS256", "use": "sig", "n": self.n, "e": self.e })
    }

    pub(crate) fn sign_jwt(&self, claims: &Value) -> String {
        let header = json!({ "alg": "RS256", "typ": "JWT", "kid": self.kid });
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut sig = vec![0; self.pair.public_modulus_len()];
        let rng = aws_lc_rs::rand::SystemRandom::new();
        // Signing with a freshly generated 2048-bit key cannot fail short of a broken crypto
        // library; a panic here is the honest answer.
        self.pair
            .sign(&RSA_PKCS1_SHA256, &rng, input.as_bytes(), &mut sig)
            .expect("RSA signing with the mock's own key");
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
    }

    /// Reads back an access token this key signed: RS256 signature, `issuer`, and `exp` after
    /// `now`. The state caches the answer ([`MockState::verify_access_token`]); this is the full
    /// check behind the cache.
    ///
    /// [`MockState::verify_access_token`]: super::MockState::verify_access_token
    pub(crate) fn read_token(&self, issuer: &str, bearer: &str, now: i64) -> Result<AccessClaims, TokenRejection> {
        let (input, sig) = bearer
            .rsplit_once('.')
            .ok_or(TokenRejection::Malformed("no signature"))?;
        let (h, p) = input.split_once('.').ok_or(TokenRejection::Malformed("no payload"))?;
        let parse = |seg: &str| -> Option<Map<String, Value>> {
            match serde_json::from_slice(&URL_SAFE_NO_PAD.decode(seg).ok()?).ok()? {
                Value::Object(m) => Some(m),
                _ => None,
            }
        };
        let header = parse(h).ok_or(TokenRejection::Malformed("header"))?;
        let claims = parse(p).ok_or(TokenRejection::Malformed("payload"))?;
        let sig = URL_SAFE_NO_PAD
            .decode(sig)
            .map_err(|_| TokenRejection::Malformed("signature"))?;
        if header.get("alg").and_then(Value::as_str) != Some("RS256") {
            return Err(TokenRejection::BadSignature);
        }
        self.public
            .verify_sig(input.as_bytes(), &sig)
            .map_err(|_| TokenRejection::BadSignature)?;
        if claims.get("iss").and_then(Value::as_str) != Some(issuer) {
            return Err(TokenRejection::WrongIssuer);
        }
        let exp = claims
            .get("exp")
            .and_then(Value::as_i64)
            .ok_or(TokenRejection::Malformed("exp"))?;
        if exp <= now {
            return Err(TokenRejection::Expired { exp, now });
        }
        let consumer_org = claims
            .get("consumer")
            .and_then(|c| c.get("ID"))
            .and_then(Value::as_str)
            .and_then(|id| id.strip_prefix("0192:"))
            .ok_or(TokenRejection::Malformed("consumer"))?
            .to_string();
        let supplier_org = match claims.get("supplier") {
            None => None,
            Some(s) => Some(
                s.get("ID")
                    .and_then(Value::as_str)
                    .and_then(|id| id.strip_prefix("0192:"))
                    .ok_or(TokenRejection::Malformed("supplier"))?
                    .to_string(),
            ),
        };
        let scope = claims
            .get("scope")
            .and_then(Value::as_str)
            .ok_or(TokenRejection::Malformed("scope"))?
            .split_ascii_whitespace()
            .map(str::to_string)
            .collect();
        let client_id = claims
            .get("client_id")
            .and_then(Value::as_str)
            .ok_or(TokenRejection::Malformed("client_id"))?
            .to_string();
        Ok(AccessClaims {
            consumer_org,
            supplier_org,
            scope,
            client_id,
            exp,
        })
    }
}

/// Claims of an access token issued by this mock, as the fake KFR needs them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessClaims {
    /// The org.nr the token was issued to (`consumer`), 9 digits.
    pub consumer_org: String,
    /// The certificate holder acting for `consumer_org` (`supplier`), when the token is delegated.
    pub supplier_org: Option<String>,
    pub scope: Vec<String>,
    pub client_id: String,
    pub exp: i64,
}

/// Why an access token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenRejection {
    #[error("the token is not a well-formed JWT ({0})")]
    Malformed(&'static str),
    #[error("the token is not signed by this mock's key")]
    BadSignature,
    #[error("the token was issued by another issuer")]
    WrongIssuer,
    #[error("the token expired at {exp} (mock clock {now})")]
    Expired { exp: i64, now: i64 },
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::signature::UnparsedPublicKey;

    #[test]
    fn signing_key_tokens_verify_and_tampering_is_detected() {
        let key = SigningKey::generate().unwrap();
        let token = key.sign_jwt(&json!({"a": 1}));
        let (input, sig) = token.rsplit_once('.').unwrap();
        let public = UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, key.pair.public_key().as_ref());
        let sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
        assert!(public.verify(input.as_bytes(), &sig).is_ok());
        assert!(public.verify(format!("{input}x").as_bytes(), &sig).is_err());
        assert_eq!(key.jwk()["kid"], key.kid.as_str());
    }
}
