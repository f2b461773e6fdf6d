//! The batch upload body (`POST …/{fid}/batch`): a `multipart/form-data` document built byte by
//! byte, so its exact size is known before sending and the planner can fill files to the limit.
//!
//! Shape (kfr-notes §4, KFR FAQ "Boundary i batch"): two parts, `customer_type` = `DSOPBANK` and
//! `customers` (`filename="customers.csv"`, `text/plain`) holding entries `ID` or `ID#YYYY-MM-DD`
//! joined by commas. Lines end in CRLF (RFC 7578 / RFC 2046). The boundary in the `Content-Type`
//! header is written **without quotes**: KFR answers 403 to a quoted boundary.
//!
//! The boundary is letters, digits and `-` only; entries are digits, `#`, `-` and `,`, and always
//! start with a digit, so an entry can never contain the delimiter line `--<boundary>`.

use crate::ids::CustomerId;
use chrono::NaiveDate;

/// Default upper bound on a batch body (KFR: at most 10 MB a file).
pub const DEFAULT_MAX_BYTES: usize = 10_000_000;

/// The relationship type KFR knows (and the only one it accepts, KFR-009).
pub const RELATIONSHIP_TYPE: &str = "DSOPBANK";

/// One relationship in a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchEntry {
    pub id: CustomerId,
    /// Start of the relationship; KFR uses the day of ingestion when absent.
    pub start: Option<NaiveDate>,
}

impl BatchEntry {
    /// Encoded length in bytes: 9 or 11 digits, plus `#YYYY-MM-DD` (11 bytes) with a date.
    pub fn encoded_len(&self) -> usize {
        self.id.as_str().len() + if self.start.is_some() { 11 } else { 0 }
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.id.as_str().as_bytes());
        if let Some(d) = self.start {
            out.extend_from_slice(format!("#{}", d.format("%Y-%m-%d")).as_bytes());
        }
    }
}

/// The fixed parts of the body around the entries, for one boundary.
#[derive(Debug, Clone)]
pub struct Layout {
    boundary: String,
}

impl Layout {
    /// A layout with a fresh random boundary.
    pub fn new() -> Self {
        Self::with_boundary(format!("kfr-batch-{}", uuid::Uuid::new_v4().simple()))
    }

    /// A layout with a given boundary (golden tests). Panics on characters that would need
    /// quoting, since the header must carry it unquoted.
    pub fn with_boundary(boundary: impl Into<String>) -> Self {
        let boundary = boundary.into();
        assert!(
            !boundary.is_empty()
                && boundary.len() <= 70
                && boundary.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && boundary.bytes().any(|b| b.is_ascii_alphabetic()),
            "boundary must be 1-70 letters, digits or '-', with a letter"
        );
        Self { boundary }
    }

    pub fn boundary(&self) -> &str {
        &self.boundary
    }

    /// `Content-Type` header value, boundary unquoted (KFR FAQ).
    pub fn content_type(&self) -> String {
        format!("multipart/form-data; boundary={}", self.boundary)
    }

    fn head(&self) -> String {
        format!(
            "--{b}\r\nContent-Disposition: form-data; name=\"customer_type\"\r\n\r\n{RELATIONSHIP_TYPE}\r\n--{b}\r\nContent-Disposition: form-data; name=\"customers\"; filename=\"customers.csv\"\r\nContent-Type: text/plain\r\n\r\n",
            b = self.boundary
        )
    }

    fn tail(&self) -> String {
        format!("\r\n--{}--\r\n", self.boundary)
    }

    /// Bytes of the body that are not entries or the commas between them.
    pub fn overhead(&self) -> usize {
        self.head().len() + self.tail().len()
    }

    /// Exact size of the body for entries whose encoded lengths sum to `entry_bytes`.
    pub fn body_size(&self, entries: usize, entry_bytes: usize) -> usize {
        self.overhead() + entry_bytes + entries.saturating_sub(1)
    }

    /// Encodes the body.
    pub fn encode(&self, entries: &[BatchEntry]) -> BatchBody {
        let entry_bytes: usize = entries.iter().map(BatchEntry::encoded_len).sum();
        let size = self.body_size(entries.len(), entry_bytes);
        let mut out = Vec::with_capacity(size);
        out.extend_from_slice(self.head().as_bytes());
        for (i, e) in entries.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            e.encode_into(&mut out);
        }
        out.extend_from_slice(self.tail().as_bytes());
        debug_assert_eq!(out.len(), size, "size formula and encoder disagree");
        BatchBody {
            content_type: self.content_type(),
            bytes: out,
            entries: entries.len(),
        }
    }
}

impl Default for Layout {
    fn default() -> Self {
        Self::new()
    }
}

/// An encoded batch, ready to send.
#[derive(Debug, Clone)]
pub struct BatchBody {
    pub content_type: String,
    pub bytes: Vec<u8>,
    pub entries: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, start: Option<&str>) -> BatchEntry {
        let policy = crate::ids::IdPolicy {
            allow_synthetic: true,
            allow_h_numbers: false,
        };
        BatchEntry {
            id: CustomerId::parse(id, &policy).unwrap(),
            start: start.map(|s| NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()),
        }
    }

    /// The exact bytes KFR receives: pinned so any change to the wire format is deliberate.
    #[test]
    fn golden_body() {
        let layout = Layout::with_boundary("kfr-batch-0123456789abcdef");
        let body = layout.encode(&[
            entry("15108695088", Some("2019-11-08")),
            entry("916960190", None),
            entry("02013299997", None),
        ]);
        let expected = "--kfr-batch-0123456789abcdef\r\n\
Content-Disposition: form-data; name=\"customer_type\"\r\n\
\r\n\
DSOPBANK\r\n\
--kfr-batch-0123456789abcdef\r\n\
Content-Disposition: form-data; name=\"customers\"; filename=\"customers.csv\"\r\n\
Content-Type: text/plain\r\n\
\r\n\
15108695088#2019-11-08,916960190,02013299997\r\n\
--kfr-batch-0123456789abcdef--\r\n";
        assert_eq!(String::from_utf8(body.bytes.clone()).unwrap(), expected);
        assert_eq!(
            body.content_type,
            "multipart/form-data; boundary=kfr-batch-0123456789abcdef"
        );
        assert!(
            !body.content_type.contains('"'),
            "the boundary must not be quoted (KFR FAQ)"
        );
        assert_eq!(body.entries, 3);
    }

    #[test]
    fn size_is_known_before_encoding() {
        let layout = Layout::new();
        for n in [0usize, 1, 2, 57] {
            let entries: Vec<_> = (0..n)
                .map(|i| {
                    if i % 2 == 0 {
                        entry("15108695088", Some("2020-01-31"))
                    } else {
                        entry("916960190", None)
                    }
                })
                .collect();
            let bytes: usize = entries.iter().map(BatchEntry::encoded_len).sum();
            assert_eq!(
                layout.encode(&entries).bytes.len(),
                layout.body_size(n, bytes),
                "n = {n}"
            );
        }
    }

    #[test]
    #[should_panic(expected = "boundary must be")]
    fn boundaries_that_need_quotes_are_refused() {
        Layout::with_boundary("has space");
    }
}
