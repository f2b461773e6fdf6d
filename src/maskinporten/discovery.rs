//! Finding the token endpoint from `{issuer}.well-known/oauth-authorization-server` (RFC 8414)
//! instead of hard-coding it (kfr-notes §2), and checking the document's `issuer` against ours.

use super::TokenError;
use super::clock;
use url::Url;

/// The parts of the authorization-server metadata `kfr` uses.
#[derive(Debug, Clone)]
pub struct Metadata {
    pub issuer: String,
    pub token_endpoint: Url,
}

#[derive(serde::Deserialize)]
struct Document {
    issuer: String,
    token_endpoint: String,
}

/// The discovery URL for an issuer (which always ends in `/`, see config).
pub fn discovery_url(issuer: &Url) -> Result<Url, TokenError> {
    issuer
        .join(".well-known/oauth-authorization-server")
        .map_err(|e| TokenError::InvalidResponse {
            url: issuer.to_string(),
            reason: format!("cannot form the discovery URL: {e}"),
        })
}

/// Fetches and checks the metadata. Also returns the server's clock offset measured from the
/// answer's `Date` header, so the very first grant can already be skew-corrected.
pub async fn discover(http: &reqwest::Client, issuer: &Url) -> Result<(Metadata, Option<i64>), TokenError> {
    let url = discovery_url(issuer)?;
    let resp = http
        .get(url.clone())
        .send()
        .await
        .map_err(|e| super::error::transport_error(&url, &e))?;
    let offset = clock::offset_from(&resp);
    let status = resp.status();
    if !status.is_success() {
        let retry_after = super::error::retry_after(&resp);
        let body = super::error::short_body(resp).await;
        return Err(TokenError::Status {
            url: url.to_string(),
            status: status.as_u16(),
            body,
            retry_after,
        });
    }
    let text = resp.text().await.map_err(|e| super::error::transport_error(&url, &e))?;
    let doc: Document = serde_json::from_str(&text).map_err(|e| TokenError::InvalidResponse {
        url: url.to_string(),
        reason: format!("not an RFC 8414 metadata document ({e})"),
    })?;
    // RFC 8414 §3.3: the issuer in the document must be identical to the one used to build the
    // URL; it is also the grant's aud, so a mismatch would only fail later and less clearly.
    if doc.issuer != issuer.as_str() {
        return Err(TokenError::IssuerMismatch {
            url: url.to_string(),
            configured: issuer.to_string(),
            discovered: doc.issuer,
        });
    }
    let token_endpoint = Url::parse(&doc.token_endpoint).map_err(|e| TokenError::InvalidResponse {
        url: url.to_string(),
        reason: format!("token_endpoint {:?} is not a URL ({e})", doc.token_endpoint),
    })?;
    Ok((
        Metadata {
            issuer: doc.issuer,
            token_endpoint,
        },
        offset,
    ))
}
