//! A small, strict `multipart/form-data` reader for the fake KFR's batch endpoint.
//!
//! Strict on purpose: the mock must refuse what the real KFR refuses (a lenient mock is a
//! defect). KFR FAQ "Boundary i batch" / kfr-notes §4: a quoted `boundary` parameter, or a body
//! whose delimiters do not match the header, gets 403. So this reader accepts exactly the framing
//! of RFC 2046 §5.1.1 / RFC 7578 as our encoder writes it:
//! - the body starts with the first delimiter `--<boundary>` (no preamble);
//! - every delimiter line ends in CRLF, parts are `headers CRLF CRLF content`, and the content is
//!   followed by `CRLF --<boundary>`;
//! - the close delimiter `--<boundary>--` may be followed by one CRLF and nothing else.
//!
//! Anything else is a [`Malformed`] with a reason, which the handler turns into the 403.

/// Why a body or header is not acceptable multipart.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Malformed(pub &'static str);

/// One part: its form-field name and raw content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Part<'a> {
    pub name: String,
    pub content: &'a [u8],
}

/// The boundary from a `Content-Type` header, which must be `multipart/form-data` with an
/// unquoted `boundary` (KFR FAQ: a quoted one is refused with 403).
pub(crate) fn boundary(content_type: &str) -> Result<&str, Malformed> {
    let mut params = content_type.split(';');
    let media = params.next().unwrap_or_default().trim();
    if !media.eq_ignore_ascii_case("multipart/form-data") {
        return Err(Malformed("Content-Type is not multipart/form-data"));
    }
    let mut found = None;
    for p in params {
        let Some((name, value)) = p.split_once('=') else {
            return Err(Malformed("Content-Type has a parameter without '='"));
        };
        if name.trim().eq_ignore_ascii_case("boundary") {
            if found.is_some() {
                return Err(Malformed("Content-Type has more than one boundary"));
            }
            found = Some(value.trim());
        }
    }
    let b = found.ok_or(Malformed("Content-Type has no boundary"))?;
    if b.starts_with('"') {
        return Err(Malformed(
            "the boundary in Content-Type is quoted (KFR requires it unquoted)",
        ));
    }
    // RFC 2046 bchars, minus space (which would need quoting in a header anyway).
    let ok = |c: u8| c.is_ascii_alphanumeric() || b"'()+_,-./:=?".contains(&c);
    if b.is_empty() || b.len() > 70 || !b.bytes().all(ok) {
        return Err(Malformed(
            "the boundary is empty, longer than 70 or has characters RFC 2046 forbids",
        ));
    }
    Ok(b)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Splits `body` into its parts.
pub(crate) fn parse<'a>(body: &'a [u8], boundary: &str) -> Result<Vec<Part<'a>>, Malformed> {
    let delimiter = format!("--{boundary}");
    let next_delimiter = format!("\r\n--{boundary}");
    let mut rest = body
        .strip_prefix(delimiter.as_bytes())
        .ok_or(Malformed("the body does not start with the boundary from Content-Type"))?;
    let mut parts = Vec::new();
    loop {
        if let Some(after) = rest.strip_prefix(b"--") {
            if !(after.is_empty() || after == b"\r\n") {
                return Err(Malformed("data after the closing boundary"));
            }
            if parts.is_empty() {
                return Err(Malformed("the body has no parts"));
            }
            return Ok(parts);
        }
        let part_and_more = rest
            .strip_prefix(b"\r\n")
            .ok_or(Malformed("a boundary line does not end in CRLF"))?;
        let end = find(part_and_more, next_delimiter.as_bytes()).ok_or(Malformed("the closing boundary is missing"))?;
        parts.push(part(&part_and_more[..end])?);
        rest = &part_and_more[end + next_delimiter.len()..];
    }
}

/// One part: header lines, an empty line, the content.
fn part(raw: &[u8]) -> Result<Part<'_>, Malformed> {
    let split = find(raw, b"\r\n\r\n").ok_or(Malformed("a part has no blank line after its headers"))?;
    let head = std::str::from_utf8(&raw[..split]).map_err(|_| Malformed("part headers are not UTF-8"))?;
    let content = &raw[split + 4..];
    let mut name = None;
    for line in head.split("\r\n") {
        let (field, value) = line.split_once(':').ok_or(Malformed("a part header line has no ':'"))?;
        if field.trim().eq_ignore_ascii_case("content-disposition") {
            if name.is_some() {
                return Err(Malformed("a part has two Content-Disposition headers"));
            }
            name = Some(form_data_name(value)?);
        }
    }
    Ok(Part {
        name: name.ok_or(Malformed("a part has no Content-Disposition"))?,
        content,
    })
}

/// The `name` of `form-data; name="x"[; filename="y"]` (RFC 7578 §4.2).
fn form_data_name(value: &str) -> Result<String, Malformed> {
    let mut params = value.split(';');
    if !params
        .next()
        .unwrap_or_default()
        .trim()
        .eq_ignore_ascii_case("form-data")
    {
        return Err(Malformed("a part's Content-Disposition is not form-data"));
    }
    for p in params {
        let (k, v) = p
            .split_once('=')
            .ok_or(Malformed("a Content-Disposition parameter has no '='"))?;
        if k.trim().eq_ignore_ascii_case("name") {
            let v = v.trim();
            let unquoted = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(v);
            return Ok(unquoted.to_string());
        }
    }
    Err(Malformed("a part's Content-Disposition has no name"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{CustomerId, IdPolicy};
    use crate::kfr::batch::{BatchEntry, Layout};

    #[test]
    fn reads_what_our_encoder_writes() {
        let layout = Layout::with_boundary("kfr-test-1");
        let entries = vec![BatchEntry {
            id: CustomerId::parse("916960190", &IdPolicy::test()).unwrap(),
            start: Some("2020-01-02".parse().unwrap()),
        }];
        let body = layout.encode(&entries);
        let b = boundary(&body.content_type).unwrap();
        let parts = parse(&body.bytes, b).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(
            (parts[0].name.as_str(), parts[0].content),
            ("customer_type", &b"DSOPBANK"[..])
        );
        assert_eq!(
            (parts[1].name.as_str(), parts[1].content),
            ("customers", &b"916960190#2020-01-02"[..])
        );
    }

    #[test]
    fn quoted_missing_or_odd_boundaries_are_refused() {
        assert!(
            boundary("multipart/form-data; boundary=\"abc\"")
                .unwrap_err()
                .0
                .contains("quoted")
        );
        assert!(boundary("multipart/form-data").is_err());
        assert!(boundary("text/plain; boundary=abc").is_err());
        assert!(boundary("multipart/form-data; boundary=").is_err());
        assert!(boundary("multipart/form-data; boundary=a; boundary=b").is_err());
        assert_eq!(
            boundary("Multipart/Form-Data; charset=utf-8; boundary=abc").unwrap(),
            "abc"
        );
    }

    #[test]
    fn framing_errors_are_refused() {
        let ok = b"--b\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\n1\r\n--b--\r\n";
        assert_eq!(parse(ok, "b").unwrap()[0].content, b"1");
        assert!(parse(ok, "c").is_err(), "boundary differs from the header");
        assert!(
            parse(
                b"pre\r\n--b\r\nContent-Disposition: form-data; name=x\r\n\r\n1\r\n--b--",
                "b"
            )
            .is_err()
        );
        assert!(parse(b"--b\r\nContent-Disposition: form-data; name=x\r\n\r\n1\r\n--b", "b").is_err());
        assert!(parse(b"--b\nContent-Disposition: form-data; name=x\n\n1\n--b--", "b").is_err());
        assert!(
            parse(b"--b\r\nX: y\r\n\r\n1\r\n--b--", "b").is_err(),
            "no Content-Disposition"
        );
        assert!(
            parse(
                b"--b\r\nContent-Disposition: form-data; name=x\r\n\r\n1\r\n--b--junk",
                "b"
            )
            .is_err()
        );
        assert!(parse(b"--b--", "b").is_err(), "no parts");
    }
}
