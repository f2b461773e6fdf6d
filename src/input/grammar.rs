//! The field-level grammar every line-oriented input shares: line ends, the line-length cap,
//! separated fields with RFC 4180 quoting, and the syntax of the two field types kfr reads
//! (customer identifiers and dates). Nothing here knows what a line means; [`super::record`] and
//! later the spool source give lines their meaning. The rules are written out in
//! `docs/specs/input.md`.
//!
//! Everything works on bytes. Only identifier and date fields have to be ASCII; any other field
//! (a name in Latin-1, Windows-1252 or UTF-8) passes through untouched, because refusing a
//! customer over the spelling of their name would be worse than useless.

use crate::ids::{CustomerId, IdError, IdPolicy};
use chrono::NaiveDate;
use std::borrow::Cow;

/// Longest line accepted, in bytes, not counting the line end. Far above any real record (an
/// identifier, two dates and a name are under 200 bytes), low enough that a file with no line
/// ends at all is read in bounded memory: the reader never buffers more than this of one line.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// A line-shape rule broken by the field grammar itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GrammarError {
    #[error("line longer than {max} bytes")]
    LineTooLong { max: usize },
    /// `column` is 1-based. Quoted fields may not span lines (see `docs/specs/input.md`).
    #[error("the quoted field in column {column} is not closed on this line (a quoted field may not span lines)")]
    UnterminatedQuote { column: usize },
}

impl GrammarError {
    /// Stable rule name.
    pub fn code(&self) -> &'static str {
        match self {
            GrammarError::LineTooLong { .. } => "line_too_long",
            GrammarError::UnterminatedQuote { .. } => "unterminated_quote",
        }
    }
}

/// Removes a CR left by a CRLF line end (the LF is the splitter's); says whether there was one.
pub fn strip_cr(raw: &[u8]) -> (&[u8], bool) {
    match raw.strip_suffix(b"\r") {
        Some(line) => (line, true),
        None => (raw, false),
    }
}

/// Blank lines (empty or whitespace only) are layout: skipped, but they keep their line number.
pub fn is_blank(line: &[u8]) -> bool {
    line.iter().all(u8::is_ascii_whitespace)
}

/// The cap on a line without its line end.
pub fn check_length(line: &[u8]) -> Result<(), GrammarError> {
    if line.len() > MAX_LINE_BYTES {
        return Err(GrammarError::LineTooLong { max: MAX_LINE_BYTES });
    }
    Ok(())
}

/// One field of a line, borrowed from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field<'a> {
    /// Between the quotes for a quoted field (doubled quotes still doubled), else the field with
    /// surrounding ASCII whitespace removed.
    raw: &'a [u8],
    quoted: bool,
    /// A quoted field holding `""`.
    escaped: bool,
}

impl<'a> Field<'a> {
    /// The field's value: quotes removed and `""` turned into `"`. Borrowed unless there was a
    /// doubled quote to undo.
    pub fn value(&self) -> Cow<'a, [u8]> {
        if !self.escaped {
            return Cow::Borrowed(self.raw);
        }
        let mut out = Vec::with_capacity(self.raw.len());
        let mut rest = self.raw;
        while let Some(q) = memchr::memchr(b'"', rest) {
            out.extend_from_slice(&rest[..=q]);
            // Every quote inside a quoted field is doubled, so the next byte is its twin.
            rest = &rest[(q + 2).min(rest.len())..];
        }
        out.extend_from_slice(rest);
        Cow::Owned(out)
    }

    pub fn is_quoted(&self) -> bool {
        self.quoted
    }
}

/// The fields of `line` (no line end) separated by `delimiter`, RFC 4180 style:
///
/// - a field that starts with `"` (after blanks) is quoted: it runs to the next lone `"`, may
///   hold the delimiter, and writes a quote as `""`;
/// - a quote that is not closed before the end of the line is [`GrammarError::UnterminatedQuote`];
/// - anything else is read as written up to the next delimiter, quotes included (`Ola "Bror"`),
///   and so is a quoted field followed by more text before the delimiter (`"Ola" jr`), which RFC
///   4180 leaves undefined: a name column must never refuse a line;
/// - blanks around a field are not part of it. A line of `n` delimiters has `n + 1` fields.
pub fn fields(line: &[u8], delimiter: u8) -> Fields<'_> {
    Fields {
        rest: Some(line),
        delimiter,
        column: 0,
    }
}

/// Iterator returned by [`fields`]. After an error it yields nothing more.
#[derive(Debug, Clone)]
pub struct Fields<'a> {
    rest: Option<&'a [u8]>,
    delimiter: u8,
    column: usize,
}

impl<'a> Fields<'a> {
    /// Walks the fields not read yet, only to find a quote left open: the line is one record
    /// only if every quote in it closes. Cheap when the rest holds no quote at all.
    pub fn check_rest(mut self) -> Result<(), GrammarError> {
        if self.rest.is_none_or(|r| memchr::memchr(b'"', r).is_none()) {
            return Ok(());
        }
        self.try_for_each(|f| f.map(drop))
    }

    /// Skips blanks (but not the delimiter, which may be a tab) at the start of `b`.
    fn skip_blanks(&self, b: &[u8]) -> usize {
        b.iter()
            .position(|&c| c == self.delimiter || !c.is_ascii_whitespace())
            .unwrap_or(b.len())
    }

    fn quoted(&mut self, rest: &'a [u8], open: usize) -> Result<Field<'a>, GrammarError> {
        let body = &rest[open + 1..];
        let mut at = 0;
        let mut escaped = false;
        let close = loop {
            let Some(q) = memchr::memchr(b'"', &body[at..]) else {
                self.rest = None;
                return Err(GrammarError::UnterminatedQuote { column: self.column });
            };
            let q = at + q;
            if body.get(q + 1) == Some(&b'"') {
                escaped = true;
                at = q + 2;
            } else {
                break q;
            }
        };
        let after = &body[close + 1..];
        let t = self.skip_blanks(after);
        match after.get(t) {
            None => {
                self.rest = None;
            }
            Some(&c) if c == self.delimiter => {
                self.rest = Some(&after[t + 1..]);
            }
            Some(_) => {
                // Text after the closing quote: keep the whole field as written (see `fields`).
                let end = open + 1 + close + 1 + t;
                let stop = memchr::memchr(self.delimiter, &rest[end..]).map(|d| end + d);
                self.rest = stop.map(|d| &rest[d + 1..]);
                return Ok(Field {
                    raw: rest[..stop.unwrap_or(rest.len())].trim_ascii(),
                    quoted: false,
                    escaped: false,
                });
            }
        }
        Ok(Field {
            raw: &body[..close],
            quoted: true,
            escaped,
        })
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<Field<'a>, GrammarError>;

    fn next(&mut self) -> Option<Self::Item> {
        let rest = self.rest?;
        self.column += 1;
        let lead = self.skip_blanks(rest);
        if rest.get(lead) == Some(&b'"') {
            return Some(self.quoted(rest, lead));
        }
        let raw = match memchr::memchr(self.delimiter, rest) {
            Some(d) => {
                self.rest = Some(&rest[d + 1..]);
                &rest[..d]
            }
            None => {
                self.rest = None;
                rest
            }
        };
        Some(Ok(Field {
            raw: raw.trim_ascii(),
            quoted: false,
            escaped: false,
        }))
    }
}

/// The position of the first byte of `set` outside quoted fields (quotes count only where a
/// field can start one, as [`fields`] reads them), for detecting a line's separator.
pub fn first_unquoted(line: &[u8], set: &[u8]) -> Option<usize> {
    if memchr::memchr(b'"', line).is_none() {
        return line.iter().position(|c| set.contains(c));
    }
    let mut in_quotes = false;
    let mut field_start = true;
    for (i, &c) in line.iter().enumerate() {
        if in_quotes {
            // `""` inside quotes toggles twice: no net change, as intended.
            in_quotes = c != b'"';
        } else if set.contains(&c) {
            return Some(i);
        } else if c == b'"' && field_start {
            in_quotes = true;
        } else if !c.is_ascii_whitespace() {
            field_start = false;
        }
    }
    None
}

/// A date field: `YYYY-MM-DD` (ISO 8601, as KFR writes dates) or `DD.MM.YYYY` (the Norwegian
/// form bank exports often use), exactly ten ASCII bytes after trimming, and a real calendar
/// day. Nothing else: `1.2.2020` or `2020-1-2` are more likely a mangled column than a date.
pub fn parse_date(field: &[u8]) -> Option<NaiveDate> {
    let b = field.trim_ascii();
    if b.len() != 10 {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        b[r].iter().try_fold(0u32, |acc, c| {
            c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0'))
        })
    };
    let (y, m, d) = if b[4] == b'-' && b[7] == b'-' {
        (num(0..4)?, num(5..7)?, num(8..10)?)
    } else if b[2] == b'.' && b[5] == b'.' {
        (num(6..10)?, num(3..5)?, num(0..2)?)
    } else {
        return None;
    };
    NaiveDate::from_ymd_opt(y as i32, m, d)
}

/// An identifier field under `policy` (kfr-notes §7). Bytes that are not ASCII cannot be digits:
/// they are reported at their position like any other non-digit, without requiring the field to
/// be UTF-8 first.
pub fn parse_id(field: &[u8], policy: &IdPolicy) -> Result<CustomerId, IdError> {
    match std::str::from_utf8(field) {
        Ok(text) => CustomerId::parse(text, policy),
        // Not UTF-8: the replacement character sits where the first bad byte was.
        Err(_) => CustomerId::parse(&String::from_utf8_lossy(field), policy),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(line: &str, d: u8) -> Vec<Result<(String, bool), GrammarError>> {
        fields(line.as_bytes(), d)
            .map(|f| f.map(|f| (String::from_utf8(f.value().into_owned()).unwrap(), f.is_quoted())))
            .collect()
    }

    fn ok(v: &[(&str, bool)]) -> Vec<Result<(String, bool), GrammarError>> {
        v.iter().map(|(s, q)| Ok((s.to_string(), *q))).collect()
    }

    #[test]
    fn quoted_fields_hold_delimiters_and_doubled_quotes() {
        assert_eq!(
            split(r#""Hansen, Ola",15108695088,2020-01-15"#, b','),
            ok(&[("Hansen, Ola", true), ("15108695088", false), ("2020-01-15", false)])
        );
        assert_eq!(
            split(r#" "Ola ""Bror"" N" ; "" ;x"#, b';'),
            ok(&[(r#"Ola "Bror" N"#, true), ("", true), ("x", false)])
        );
        // A lone `""` at the end of a quoted field is a quote, then the closing one.
        assert_eq!(split(r#""a""""#, b','), ok(&[(r#"a""#, true)]));
    }

    #[test]
    fn empty_fields_and_tabs() {
        assert_eq!(
            split("a;;b;", b';'),
            ok(&[("a", false), ("", false), ("b", false), ("", false)])
        );
        assert_eq!(
            split("\t\"x\t y\"\t", b'\t'),
            ok(&[("", false), ("x\t y", true), ("", false)])
        );
        assert_eq!(split("", b';'), ok(&[("", false)]));
    }

    #[test]
    fn stray_quotes_in_unquoted_text_are_kept_as_written() {
        assert_eq!(
            split(r#"Ola "Bror" Hansen;"Ola" jr;1"#, b';'),
            ok(&[(r#"Ola "Bror" Hansen"#, false), (r#""Ola" jr"#, false), ("1", false)])
        );
    }

    #[test]
    fn an_open_quote_is_an_error_naming_its_column() {
        let got = split(r#"a;"b;c"#, b';');
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], Ok(("a".to_string(), false)), "fields before it are still read");
        assert_eq!(got[1], Err(GrammarError::UnterminatedQuote { column: 2 }));
        let mut f = fields(br#"1;2;x;"open"#, b';');
        f.next();
        assert_eq!(f.check_rest(), Err(GrammarError::UnterminatedQuote { column: 4 }));
        let mut f = fields(br#"1;"a;b";"c""d""#, b';');
        f.next();
        assert_eq!(f.check_rest(), Ok(()));
    }

    #[test]
    fn separators_inside_quotes_are_not_separators() {
        assert_eq!(first_unquoted(b"15108695088;2020-01-15", b";,#"), Some(11));
        assert_eq!(first_unquoted(br#""1,2";x"#, b";,#"), Some(5));
        assert_eq!(first_unquoted(br#""1,""2""";x"#, b";,#"), Some(9));
        assert_eq!(
            first_unquoted(br#"a"b,c"#, b";,#"),
            Some(3),
            "a mid-field quote opens nothing"
        );
        assert_eq!(first_unquoted(br#""1;2"#, b";,#"), None);
    }

    #[test]
    fn dates_in_iso_and_norwegian_form() {
        let d = NaiveDate::from_ymd_opt(2020, 1, 15);
        assert_eq!(parse_date(b"2020-01-15"), d);
        assert_eq!(parse_date(b" 15.01.2020 "), d);
        for bad in [
            "2020-02-30",
            "30.02.2020",
            "1.1.2020",
            "2020-1-15",
            "15/01/2020",
            "2020.01.15",
            "15-01-2020",
            "20200115",
            "+020-01-15",
            "\u{ff11}5.01.2020",
        ] {
            assert_eq!(parse_date(bad.as_bytes()), None, "{bad}");
        }
        assert_eq!(parse_date(b"29.02.2000"), NaiveDate::from_ymd_opt(2000, 2, 29));
    }

    #[test]
    fn identifiers_must_be_ascii_digits_and_non_ascii_is_reported_where_it_is() {
        let p = IdPolicy::test();
        assert!(parse_id(b" 15108695088 ", &p).is_ok());
        assert_eq!(
            parse_id(b"1510\xff8695088", &p).unwrap_err(),
            IdError::NotDigit { position: 5 }
        );
    }

    #[test]
    fn line_cap_and_line_ends() {
        assert!(check_length(&vec![b'1'; MAX_LINE_BYTES]).is_ok());
        assert_eq!(
            check_length(&vec![b'1'; MAX_LINE_BYTES + 1]).unwrap_err().to_string(),
            "line longer than 65536 bytes"
        );
        assert_eq!(strip_cr(b"a\r"), (&b"a"[..], true));
        assert_eq!(strip_cr(b"a"), (&b"a"[..], false));
        assert!(is_blank(b" \t") && !is_blank(b" x"));
    }
}
