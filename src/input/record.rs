//! One data line → one customer relationship, or the rule it broke. The record shape shared by
//! `kfr load` and `kfr validate --file` (and later `kfr reconcile`): an identifier, an optional
//! start date and an optional end date, read through [`super::grammar`] in the layout
//! [`super::format`] detected.
//!
//! Rules, in the order they are checked (the first broken one is the line's verdict):
//! line length; line shape (quotes closed, field count, one separator per file, enough columns);
//! the identifier (kfr-notes §7 under the configured policy); the start date (a real date, not in
//! the future, not before 1900: KFR refuses such dates with KFR-010); the end date (a real date,
//! not before the start). Columns other than these three are never looked at beyond finding
//! where they end.

use super::format::{Format, LINE_SEPARATORS};
use super::grammar::{self, GrammarError};
use crate::ids::{CustomerId, IdError, IdPolicy, mask};
use chrono::{Datelike as _, NaiveDate};
use std::borrow::Cow;

/// Why a line was rejected. Never carries the identifier (see [`IdError`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error("customer identifier: {0}")]
    Id(IdError),
    #[error("no customer identifier")]
    MissingId,
    #[error(transparent)]
    Grammar(#[from] GrammarError),
    #[error("expected at most two fields (ID and start date)")]
    TooManyFields,
    #[error("separator '{found}' differs from the file's '{expected}'")]
    MixedSeparators { expected: char, found: char },
    #[error("only {got} column(s), the header names {want}")]
    MissingColumns { got: usize, want: usize },
    #[error("start date is not a date in YYYY-MM-DD or DD.MM.YYYY form")]
    BadStartDate,
    #[error("end date is not a date in YYYY-MM-DD or DD.MM.YYYY form")]
    BadEndDate,
    #[error("start date {0} is in the future")]
    StartInFuture(NaiveDate),
    #[error("start date {0} is before 1900")]
    StartBefore1900(NaiveDate),
    #[error("end date {end} is before start date {start}")]
    EndBeforeStart { start: NaiveDate, end: NaiveDate },
}

impl LineError {
    /// Stable rule name for reports, rejects files and `kfr validate --json`.
    pub fn code(&self) -> &'static str {
        match self {
            LineError::Id(e) => e.code(),
            LineError::MissingId => "missing_id",
            LineError::Grammar(e) => e.code(),
            LineError::TooManyFields => "too_many_fields",
            LineError::MixedSeparators { .. } => "mixed_separators",
            LineError::MissingColumns { .. } => "missing_columns",
            LineError::BadStartDate => "bad_start_date",
            LineError::BadEndDate => "bad_end_date",
            LineError::StartInFuture(_) => "start_in_future",
            LineError::StartBefore1900(_) => "start_before_1900",
            LineError::EndBeforeStart { .. } => "end_before_start",
        }
    }
}

/// A rejected line as shown to people: number, masked text, rule.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Rejected {
    pub line: u64,
    /// The line with identifiers masked ([`mask`]); safe for logs and reports.
    pub text: String,
    pub rule: &'static str,
    pub message: String,
}

/// What the date rules compare against.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    pub policy: IdPolicy,
    /// "Today" for the future rule (and, in the load, for "closed").
    pub today: NaiveDate,
}

/// A valid line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub id: CustomerId,
    pub start: Option<NaiveDate>,
    pub end: Option<NaiveDate>,
}

/// Reads one data line (not blank, line end removed) in `format`. A headerless file's first
/// separated line fixes its separator, hence `&mut`.
pub fn parse(format: &mut Format, line: &[u8], rules: &Rules) -> Result<Record, LineError> {
    grammar::check_length(line)?;
    let (id, start, end) = match format {
        Format::Lines { separator } => {
            // No quote in the line (the usual case): the fields are plain slices, found in one
            // pass as before quoting existed; the load's speed rests on this path. A quote
            // anywhere sends the line through the full grammar instead.
            let first = line.iter().position(|c| matches!(c, b';' | b',' | b'#' | b'"'));
            let plain = first.is_none_or(|i| line[i] != b'"');
            let found = if plain {
                first
            } else {
                grammar::first_unquoted(line, LINE_SEPARATORS)
            };
            let delimiter = match (found, *separator) {
                (None, _) => b';',
                (Some(i), None) => {
                    *separator = Some(char::from(line[i]));
                    line[i]
                }
                (Some(i), Some(expected)) if char::from(line[i]) != expected => {
                    return Err(LineError::MixedSeparators {
                        expected,
                        found: char::from(line[i]),
                    });
                }
                (Some(i), Some(_)) => line[i],
            };
            let plain_fields = match (plain, found) {
                (false, _) => None,
                (true, None) => Some((Cow::Borrowed(line), None, None)),
                (true, Some(i)) => {
                    let rest = &line[i + 1..];
                    match rest.iter().position(|&c| c == delimiter || c == b'"') {
                        Some(j) if rest[j] == delimiter => return Err(LineError::TooManyFields),
                        // A quote after the separator: the full grammar reads the line.
                        Some(_) => None,
                        None => Some((Cow::Borrowed(&line[..i]), Some(Cow::Borrowed(rest)), None)),
                    }
                }
            };
            match plain_fields {
                Some(f) => f,
                None => {
                    let mut fields = grammar::fields(line, delimiter);
                    let id = fields.next().expect("a line has a first field")?;
                    let start = fields.next().transpose()?;
                    if fields.next().is_some() {
                        return Err(LineError::TooManyFields);
                    }
                    (id.value(), start.map(|f| f.value()), None)
                }
            }
        }
        Format::Header {
            delimiter,
            columns,
            id,
            start,
            end,
        } => {
            // Read only up to the last column needed; the rest is only checked for open quotes.
            let want = 1 + [Some(*id), *start, *end].into_iter().flatten().max().unwrap_or(0);
            let mut fields = grammar::fields(line, *delimiter as u8);
            let (mut idf, mut sf, mut ef, mut got) = (None, None, None, 0);
            for (i, f) in fields.by_ref().take(want).enumerate() {
                let f = f?;
                got += 1;
                if i == *id {
                    idf = Some(f);
                } else if Some(i) == *start {
                    sf = Some(f);
                } else if Some(i) == *end {
                    ef = Some(f);
                }
            }
            let (Some(idf), true) = (idf, got == want) else {
                return Err(LineError::MissingColumns {
                    got,
                    want: columns.len(),
                });
            };
            fields.check_rest()?;
            (idf.value(), sf.map(|f| f.value()), ef.map(|f| f.value()))
        }
        Format::Empty => unreachable!("a data line comes after detection"),
    };
    if id.trim_ascii().is_empty() {
        return Err(LineError::MissingId);
    }
    let id = grammar::parse_id(&id, &rules.policy).map_err(LineError::Id)?;
    let start = match date(start) {
        None => None,
        Some(s) => match grammar::parse_date(&s) {
            None => return Err(LineError::BadStartDate),
            Some(d) if d > rules.today => return Err(LineError::StartInFuture(d)),
            Some(d) if d.year() < 1900 => return Err(LineError::StartBefore1900(d)),
            Some(d) => Some(d),
        },
    };
    let end = match date(end) {
        None => None,
        Some(e) => {
            let end = grammar::parse_date(&e).ok_or(LineError::BadEndDate)?;
            if let Some(start) = start.filter(|s| end < *s) {
                return Err(LineError::EndBeforeStart { start, end });
            }
            Some(end)
        }
    };
    Ok(Record { id, start, end })
}

/// A date field's value, `None` when absent or empty (no date given).
fn date(f: Option<Cow<'_, [u8]>>) -> Option<Cow<'_, [u8]>> {
    f.filter(|v| !v.trim_ascii().is_empty())
}

/// Longest part of a rejected line shown (a 64 KiB line is not echoed whole).
const SHOWN_BYTES: usize = 256;

/// The line as shown in messages and reports (issue 20: names and addresses never leave the
/// export): split as the format splits it, the identifier field through [`mask`], a date field
/// as written when it is a date (dates are not personal) and masked otherwise, and every other
/// field — a name, an address, a note — replaced by `…`. A field with letters in a date's place
/// is replaced too. Only built for a rejected line: the valid path never formats.
pub fn shown(format: &Format, line: &[u8]) -> String {
    let line = &line[..line.len().min(SHOWN_BYTES)];
    let (sep, id, dates): (Option<u8>, usize, Vec<usize>) = match format {
        Format::Header {
            delimiter,
            id,
            start,
            end,
            ..
        } => (
            Some(*delimiter as u8),
            *id,
            start.iter().chain(end.iter()).copied().collect(),
        ),
        _ => (
            grammar::first_unquoted(line, LINE_SEPARATORS).map(|i| line[i]),
            0,
            vec![1],
        ),
    };
    let show = |i: usize, b: &[u8]| -> String {
        let s = String::from_utf8_lossy(b.trim_ascii());
        if s.is_empty() {
            String::new()
        } else if s.chars().any(char::is_alphabetic) || i != id && !dates.contains(&i) {
            // Letters are never an identifier or a date: a name, or part of one split at a
            // delimiter inside quotes.
            "…".to_string()
        } else if i == id {
            mask(&s)
        } else if grammar::parse_date(b).is_some() {
            s.into_owned()
        } else {
            mask(&s)
        }
    };
    match sep {
        None => show(id, line),
        // Split on every separator, quoted or not: a line with an open quote must show too.
        Some(sep) => line
            .split(|c| *c == sep)
            .enumerate()
            .map(|(i, b)| show(i, b))
            .collect::<Vec<_>>()
            .join(&char::from(sep).to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Rules {
        Rules {
            policy: IdPolicy::test(),
            today: NaiveDate::from_ymd_opt(2026, 6, 15).unwrap(),
        }
    }

    fn header(row: &str) -> Format {
        Format::header(row.as_bytes(), 1).unwrap()
    }

    fn verdict(format: &mut Format, line: &[u8]) -> Result<(String, Option<String>, Option<String>), &'static str> {
        parse(format, line, &rules())
            .map(|r| {
                (
                    r.id.as_str().to_string(),
                    r.start.map(|d| d.to_string()),
                    r.end.map(|d| d.to_string()),
                )
            })
            .map_err(|e| e.code())
    }

    #[test]
    fn the_first_separated_line_fixes_the_separator() {
        let mut f = Format::Lines { separator: None };
        assert_eq!(verdict(&mut f, b"916960190"), Ok(("916960190".into(), None, None)));
        assert_eq!(f, Format::Lines { separator: None });
        assert_eq!(
            verdict(&mut f, b"\"15108695088\",15.01.2020"),
            Ok(("15108695088".into(), Some("2020-01-15".into()), None))
        );
        assert_eq!(f, Format::Lines { separator: Some(',') });
        assert_eq!(verdict(&mut f, b"15108695088;2020-01-15"), Err("mixed_separators"));
        assert_eq!(verdict(&mut f, b"15108695088,2020-01-15,x"), Err("too_many_fields"));
        assert_eq!(verdict(&mut f, b"15108695088,"), Ok(("15108695088".into(), None, None)));
        assert_eq!(verdict(&mut f, b",2020-01-15"), Err("missing_id"));
        assert_eq!(verdict(&mut f, b"\"1510,8695088\""), Err("not_digit"));
        // A quote after the separator leaves the one-scan path; the verdicts stay the same.
        assert_eq!(
            verdict(&mut f, b"15108695088,\"15.01.2020\""),
            Ok(("15108695088".into(), Some("2020-01-15".into()), None))
        );
        assert_eq!(verdict(&mut f, b"15108695088,2020-01-15,\"x\""), Err("too_many_fields"));
        assert_eq!(verdict(&mut f, b"15108695088,\"2020-01-15,x\""), Err("bad_start_date"));
    }

    #[test]
    fn header_columns_are_found_wherever_they_are() {
        let mut f = header("sluttdato;navn;startdato;kundeid;merknad");
        assert_eq!(
            verdict(&mut f, b"31.12.2099;\"Hansen; Ola\";2020-01-15;15108695088;\"x\"\"y\""),
            Ok((
                "15108695088".into(),
                Some("2020-01-15".into()),
                Some("2099-12-31".into())
            ))
        );
        assert_eq!(
            verdict(&mut f, b";x;;15108695088"),
            Ok(("15108695088".into(), None, None))
        );
        assert_eq!(verdict(&mut f, b";x;2020-01-15"), Err("missing_columns"));
        assert_eq!(verdict(&mut f, b";x;;15108695088;\"open"), Err("unterminated_quote"));
        let e = parse(&mut f, b";x;2020-01-15", &rules()).unwrap_err();
        assert_eq!(e.to_string(), "only 3 column(s), the header names 5");
    }

    #[test]
    fn date_rules() {
        let mut f = header("kundeid;startdato;sluttdato");
        for (line, want) in [
            (&b"15108695088;2026-06-16;"[..], "start_in_future"),
            (b"15108695088;31.12.1899;", "start_before_1900"),
            (b"15108695088;2020-13-01;", "bad_start_date"),
            (b"15108695088;2020-01-15;14.01.2020", "end_before_start"),
            (b"15108695088;;2020-02-30", "bad_end_date"),
            (b"15108695088;15.01.2020\xff;", "bad_start_date"),
        ] {
            assert_eq!(verdict(&mut f, line), Err(want), "{}", String::from_utf8_lossy(line));
        }
        assert_eq!(
            verdict(&mut f, b"15108695088;2026-06-15;2026-06-15"),
            Ok((
                "15108695088".into(),
                Some("2026-06-15".into()),
                Some("2026-06-15".into())
            ))
        );
    }

    #[test]
    fn only_identifier_and_date_fields_must_be_ascii() {
        let mut f = header("navn;kundeid");
        assert!(verdict(&mut f, b"J\xf8rgen \x80\x81;15108695088").is_ok());
        assert_eq!(verdict(&mut f, b"x;1510869508\xf8"), Err("not_digit"));
    }

    #[test]
    fn shown_lines_mask_identifiers_and_keep_dates() {
        let f = header("navn;kundeid;startdato");
        assert_eq!(shown(&f, b"Ola;15108695088;15.01.2020"), "…;*********88;15.01.2020");
        // Issue 20: names and addresses never leave the export, in any column or split.
        let f = header("kundeid,navn,adresse,startdato");
        assert_eq!(
            shown(&f, b"15108695088,Kari Nordmann,Storgata 12 0155,2019-01-01"),
            "*********88,…,…,2019-01-01"
        );
        assert_eq!(
            shown(&f, b"\"Hansen, Ola\",15108695088,2019-01-01"),
            "…,…,…,2019-01-01",
            "a quoted name split at its comma shows nothing of it"
        );
        let lines = Format::Lines { separator: None };
        assert_eq!(shown(&lines, b"Ola Nordmann 15108695088"), "…");
        let f = header("navn;kundeid;startdato");
        assert_eq!(shown(&f, b";15108695088;"), ";*********88;", "empty fields stay empty");
        let f = Format::Lines { separator: None };
        assert_eq!(shown(&f, b"15108695088#2020-01-15"), "*********88#2020-01-15");
        assert_eq!(shown(&f, b"1510\xff8695088"), "****\u{fffd}*****88");
        let long = vec![b'1'; 100_000];
        assert!(shown(&f, &long).chars().count() <= 33);
    }
}
