//! The checklist's raw request layer: one KFR request, exactly as the step asks for it, one
//! attempt, and a record of the exchange (status, CorrelationID sent and echoed, error code,
//! body).
//!
//! It does not use the KFR client on purpose: that client validates identifiers, always sends
//! a proper token and retries, which is right for `kfr add` and wrong for a test that must send
//! a bad request once and record KFR's answer (kfr-notes §8).

use super::cases::Operation;
use crate::ids::scrub;
use crate::kfr::batch::RELATIONSHIP_TYPE;
use url::Url;

/// One request to send.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub operation: Operation,
    pub fid: String,
    /// The bearer value; `None` sends no `Authorization` header.
    pub bearer: Option<String>,
    /// The `CustomerID` header (add, remove, lookup).
    pub customer: Option<String>,
    pub relationship_type: Option<String>,
    /// Lookup query parameters, sent as written.
    pub query: Vec<(&'static str, String)>,
    /// Batch body and its `Content-Type`.
    pub body: Option<(String, Vec<u8>)>,
}

/// What came back.
#[derive(Debug, Clone)]
pub(crate) struct Exchange {
    pub status: u16,
    pub correlation_id: uuid::Uuid,
    /// Whether the answer carried the same `CorrelationID`.
    pub echoed: bool,
    /// The body as JSON (`Null` when empty or not JSON).
    pub json: serde_json::Value,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
}

#[derive(Debug, Clone)]
pub(crate) struct Wire {
    http: reqwest::Client,
    base: Url,
}

impl Wire {
    pub fn new(http: reqwest::Client, base: Url) -> Self {
        Self { http, base }
    }

    fn url(&self, req: &Request) -> Url {
        let mut url = self.base.clone();
        {
            let mut p = url.path_segments_mut().expect("KFR base URL is http(s)");
            p.pop_if_empty()
                .extend(["customers", "financialInstitutions", &req.fid]);
            match req.operation {
                Operation::Add | Operation::Remove => {
                    let ty = req.relationship_type.as_deref().unwrap_or(RELATIONSHIP_TYPE);
                    p.extend(["relationshipType", ty]);
                }
                // The spec's lookup path ends in a slash.
                Operation::Lookup => {
                    p.push("");
                }
                Operation::Batch => {
                    p.push("batch");
                }
            }
        }
        if !req.query.is_empty() {
            url.query_pairs_mut()
                .extend_pairs(req.query.iter().map(|(k, v)| (*k, v.as_str())));
        }
        url
    }

    /// Sends `req` once. `Err` is a transport failure (no HTTP answer), described for the report.
    pub async fn send(&self, req: &Request) -> Result<Exchange, String> {
        let correlation_id = uuid::Uuid::new_v4();
        let method = match req.operation {
            Operation::Add | Operation::Batch => reqwest::Method::POST,
            Operation::Remove => reqwest::Method::DELETE,
            Operation::Lookup => reqwest::Method::GET,
        };
        let mut builder = self
            .http
            .request(method, self.url(req))
            .header("CorrelationID", correlation_id.to_string());
        if let Some(b) = &req.bearer {
            builder = builder.bearer_auth(b);
        }
        if let Some(c) = &req.customer {
            builder = builder.header("CustomerID", c);
        }
        if let Some((content_type, bytes)) = &req.body {
            builder = builder
                .header(reqwest::header::CONTENT_TYPE, content_type)
                .body(bytes.clone());
        } else if req.operation != Operation::Lookup {
            // RFC 9110 §8.6, as the KFR client does: a strict front end answers 411 otherwise.
            builder = builder.header(reqwest::header::CONTENT_LENGTH, "0");
        }
        let resp = builder.send().await.map_err(|e| crate::http::describe(&e).0)?;
        let status = resp.status().as_u16();
        let echoed = resp
            .headers()
            .get("CorrelationID")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case(&correlation_id.to_string()));
        let bytes = resp.bytes().await.map_err(|e| crate::http::describe(&e).0)?;
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        let text = |k: &str| json.get(k).and_then(|v| v.as_str()).map(str::to_string);
        let error_code = text("errorCode");
        let error_message = text("errorMessage").or_else(|| text("message")).map(|m| scrub(&m));
        Ok(Exchange {
            status,
            correlation_id,
            echoed,
            json,
            error_code,
            error_message,
        })
    }
}

/// A batch body built from raw entry texts, for `request` steps that must send what the batch
/// encoder refuses to produce (a malformed date or identifier, a quoted boundary). Framing as
/// in `crate::kfr::batch`, CRLF line ends.
pub(crate) fn raw_batch(entries: &[String], quoted_boundary: bool) -> (String, Vec<u8>) {
    let b = format!("kfr-checklist-{}", uuid::Uuid::new_v4().simple());
    let body = format!(
        "--{b}\r\nContent-Disposition: form-data; name=\"customer_type\"\r\n\r\n{RELATIONSHIP_TYPE}\r\n--{b}\r\nContent-Disposition: form-data; name=\"customers\"; filename=\"customers.csv\"\r\nContent-Type: text/plain\r\n\r\n{}\r\n--{b}--\r\n",
        entries.join(",")
    );
    let content_type = if quoted_boundary {
        format!("multipart/form-data; boundary=\"{b}\"")
    } else {
        format!("multipart/form-data; boundary={b}")
    };
    (content_type, body.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrub_masks_eleven_digit_runs_only() {
        assert_eq!(scrub("entry 1: 15888610046 bad"), "entry 1: *********46 bad");
        assert_eq!(scrub("org 916960190, code 400"), "org 916960190, code 400");
    }

    #[test]
    fn urls_follow_the_spec_paths() {
        let w = Wire::new(reqwest::Client::new(), Url::parse("http://h/kar-ws/api/v1").unwrap());
        let mut r = Request {
            operation: Operation::Lookup,
            fid: "916960190".into(),
            bearer: None,
            customer: None,
            relationship_type: None,
            query: vec![("fromDate", "2020-01-15".into())],
            body: None,
        };
        assert_eq!(
            w.url(&r).as_str(),
            "http://h/kar-ws/api/v1/customers/financialInstitutions/916960190/?fromDate=2020-01-15"
        );
        r.operation = Operation::Add;
        r.query.clear();
        r.relationship_type = Some("DSOP BANK".into());
        assert_eq!(
            w.url(&r).as_str(),
            "http://h/kar-ws/api/v1/customers/financialInstitutions/916960190/relationshipType/DSOP%20BANK"
        );
    }

    #[test]
    fn raw_batch_quotes_the_boundary_only_when_asked() {
        let (ct, body) = raw_batch(&["310558125".into()], false);
        assert!(!ct.contains('"'));
        let b = ct.split("boundary=").nth(1).unwrap();
        assert!(String::from_utf8(body).unwrap().starts_with(&format!("--{b}\r\n")));
        let (ct, _) = raw_batch(&["310558125".into()], true);
        assert!(ct.ends_with('"') && ct.contains("boundary=\""));
    }
}
