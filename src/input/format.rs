//! Which layout a file has and which column holds what: format detection and the header aliases.
//! One table of names for every command, so a file `kfr load` reads is read the same way by
//! `kfr validate` and, later, by the spool source and `kfr reconcile`.
//!
//! Detection looks only at the first non-blank line: if it holds an ASCII letter it is a header
//! row naming the columns (an identifier or a date never does); otherwise the file is headerless,
//! one relationship per line, and the first line with a separator fixes the separator.

use super::grammar::{self, GrammarError};
use crate::ids::mask;
use std::fmt;

/// Separators of a headerless line `ID<sep>DATE`; `#` is KFR's own batch notation (kfr-notes §4).
pub const LINE_SEPARATORS: &[u8] = b";,#";

/// Delimiters of a file with a header row, in order of preference when a header holds several.
pub const HEADER_DELIMITERS: &[u8] = b";,\t|";

/// What a named column holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column {
    Id,
    Start,
    End,
}

impl Column {
    fn label(self) -> &'static str {
        match self {
            Column::Id => "customer identifier",
            Column::Start => "start date",
            Column::End => "end date",
        }
    }
}

/// The header names each column answers to, compared after [`normalise`]: so `Kunde-ID`,
/// `kunde_id`, `KUNDEID` and `Kunde ID` are all the identifier column.
const ALIASES: &[(&str, Column)] = &[
    ("customerid", Column::Id),
    ("kundeid", Column::Id),
    ("startdate", Column::Start),
    ("startdato", Column::Start),
    ("enddate", Column::End),
    ("sluttdato", Column::End),
];

/// A header name in the form [`ALIASES`] uses: ASCII lower case, without spaces, `_`, `-`, `.`.
fn normalise(name: &str) -> String {
    name.chars()
        .filter(|c| !matches!(c, ' ' | '_' | '-' | '.'))
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// Whether a header name the aliases do not know reads like a date column (`fra_dato`, `til_dato`,
/// `start`, `opened`, …). Such a column is refused rather than ignored: if it held the start or
/// end of the relationship, ignoring it would load closed relationships as active and replace
/// every start date with the day of the load (issue 9; docs/specs/input.md §5).
pub fn looks_like_date(name: &str) -> bool {
    let n = normalise(name);
    const WORDS: &[&str] = &["dato", "date"];
    const WHOLE: &[&str] = &[
        "start",
        "end",
        "slutt",
        "fra",
        "til",
        "from",
        "to",
        "fom",
        "tom",
        "opened",
        "closed",
        "opprettet",
        "avsluttet",
        "startet",
        "sluttet",
        "since",
        "until",
    ];
    WORDS.iter().any(|w| n.contains(w))
        || WHOLE.contains(&n.as_str())
        || n.starts_with("start")
        || n.starts_with("slutt")
        || n.starts_with("gyldig")
        || n.starts_with("valid")
}

/// The role of a header column, if it has one.
pub fn column_of(name: &str) -> Option<Column> {
    let n = normalise(name);
    ALIASES.iter().find(|(a, _)| *a == n).map(|(_, c)| *c)
}

/// How the input is laid out.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Format {
    /// No data line yet (empty file).
    Empty,
    /// `ID`, or `ID<sep>DATE` with `sep` the separator seen.
    Lines { separator: Option<char> },
    /// A header row naming the columns; indices are 0-based.
    Header {
        delimiter: char,
        columns: Vec<String>,
        id: usize,
        start: Option<usize>,
        end: Option<usize>,
    },
}

impl Format {
    /// True when no later line can change the format: a header was read, or the separator of a
    /// headerless file is known. Only then can lines be read independently of each other.
    pub fn is_fixed(&self) -> bool {
        matches!(self, Format::Header { .. } | Format::Lines { separator: Some(_) })
    }

    /// The format a file starts with, from its first non-blank line (no line end): a header, or
    /// a headerless file whose separator the first separated line will fix.
    pub fn detect(first: &[u8], line: u64) -> Result<Format, HeaderError> {
        if first.iter().any(u8::is_ascii_alphabetic) {
            Format::header(first, line)
        } else {
            Ok(Format::Lines { separator: None })
        }
    }

    /// Reads a header row. The delimiter is the candidate found most often outside quotes (ties
    /// go to the earlier one in [`HEADER_DELIMITERS`]; a one-column header gets `;`).
    pub fn header(row: &[u8], line: u64) -> Result<Format, HeaderError> {
        grammar::check_length(row).map_err(|e| HeaderError::Grammar { line, source: e })?;
        let delimiter = HEADER_DELIMITERS
            .iter()
            .copied()
            .map(|d| (d, count_unquoted(row, d)))
            .fold((b';', 0), |best, (d, n)| if n > best.1 { (d, n) } else { best })
            .0;
        let columns = grammar::fields(row, delimiter)
            .map(|f| f.map(|f| String::from_utf8_lossy(&f.value()).trim().to_string()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| HeaderError::Grammar { line, source: e })?;
        let mut found: [Option<usize>; 3] = [None; 3];
        for (i, name) in columns.iter().enumerate() {
            let Some(col) = column_of(name) else { continue };
            let slot = &mut found[col as usize];
            if let Some(first) = *slot {
                // Two columns for one role: reading either could load the wrong data.
                return Err(HeaderError::Ambiguous {
                    line,
                    role: col.label(),
                    first: columns[first].clone(),
                    second: name.clone(),
                });
            }
            *slot = Some(i);
        }
        let Some(id) = found[Column::Id as usize] else {
            return Err(HeaderError::NoIdColumn {
                line,
                // A "header" that is really a data line may hold identifiers: mask each name.
                columns: columns.iter().map(|c| mask(c)).collect::<Vec<_>>().join(", "),
            });
        };
        let unmapped: Vec<String> = columns
            .iter()
            .filter(|c| column_of(c).is_none() && looks_like_date(c))
            .cloned()
            .collect();
        if !unmapped.is_empty() {
            return Err(HeaderError::UnmappedDateColumns {
                line,
                columns: unmapped.iter().map(|c| mask(c)).collect::<Vec<_>>().join(", "),
            });
        }
        Ok(Format::Header {
            delimiter: char::from(delimiter),
            columns,
            id,
            start: found[Column::Start as usize],
            end: found[Column::End as usize],
        })
    }
}

/// How often `d` occurs outside quoted fields.
fn count_unquoted(row: &[u8], d: u8) -> usize {
    let mut n = 0;
    let mut rest = row;
    while let Some(i) = grammar::first_unquoted(rest, &[d]) {
        n += 1;
        rest = &rest[i + 1..];
    }
    n
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Format::Empty => f.write_str("empty (no data lines)"),
            Format::Lines { separator: None } => f.write_str("one identifier per line (ID)"),
            Format::Lines { separator: Some(s) } => write!(f, "one relationship per line (ID{s}YYYY-MM-DD)"),
            Format::Header {
                delimiter,
                columns,
                id,
                start,
                end,
            } => {
                let d = if *delimiter == '\t' {
                    "tab".to_string()
                } else {
                    format!("'{delimiter}'")
                };
                write!(f, "delimited by {d} with a header row: id = {}", columns[*id])?;
                if let Some(s) = start {
                    write!(f, ", start = {}", columns[*s])?;
                }
                if let Some(e) = end {
                    write!(f, ", end = {}", columns[*e])?;
                }
                Ok(())
            }
        }
    }
}

/// A header row kfr cannot use: the whole file is refused, since no line of it can be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error(
        "line {line}: the header row names no customer identifier column (customer_id or kundeid); columns: {columns}"
    )]
    NoIdColumn { line: u64, columns: String },
    #[error("line {line}: the header row has two {role} columns, {first} and {second}")]
    Ambiguous {
        line: u64,
        role: &'static str,
        first: String,
        second: String,
    },
    #[error(
        "line {line}: the header row has date column(s) kfr does not read: {columns}; their dates would be lost (closed relationships loaded as active, start dates replaced by the load day)"
    )]
    UnmappedDateColumns { line: u64, columns: String },
    #[error(
        "line {line}: column {column} holds a date ({value}) but is not a start or end date column kfr reads; its dates would be lost"
    )]
    DateValues { line: u64, column: String, value: String },
    #[error("line {line}: the header row cannot be read: {source}")]
    Grammar { line: u64, source: GrammarError },
}

impl crate::error::Hinted for HeaderError {
    fn hint(&self) -> Option<String> {
        Some(match self {
            HeaderError::NoIdColumn { .. } => {
                "name the identifier column customer_id or kundeid (start_date/startdato and end_date/sluttdato for the dates), or give a file with one identifier per line and no header".into()
            }
            HeaderError::Ambiguous { .. } => "keep one column per role, or rename the one kfr should not read".into(),
            HeaderError::Grammar { .. } => "the first non-blank line must be a header row or a data line".into(),
            HeaderError::UnmappedDateColumns { .. } | HeaderError::DateValues { .. } => {
                "rename the column in the header: start_date (or startdato) for the day the relationship began, end_date (or sluttdato) for the day it ended; if it holds neither, rename it to something that is not a date name (e.g. x_registrert) or drop the column".into()
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(row: &str) -> Result<Format, HeaderError> {
        Format::header(row.as_bytes(), 1)
    }

    #[test]
    fn aliases_in_any_spelling() {
        for name in [
            "kundeid",
            "Kunde-ID",
            "kunde_id",
            "KUNDE ID",
            "customer_id",
            "CustomerId",
        ] {
            assert_eq!(column_of(name), Some(Column::Id), "{name}");
        }
        for name in ["startdato", "Start dato", "start_date", "START-DATE"] {
            assert_eq!(column_of(name), Some(Column::Start), "{name}");
        }
        for name in ["sluttdato", "end_date", "Slutt.dato"] {
            assert_eq!(column_of(name), Some(Column::End), "{name}");
        }
        for name in ["navn", "id", "kundenummer", "fødselsnummer", "date"] {
            assert_eq!(column_of(name), None, "{name}");
        }
    }

    #[test]
    fn the_delimiter_is_the_most_frequent_candidate_outside_quotes() {
        let f = header("navn,kundeid,startdato").unwrap();
        assert_eq!(
            f,
            Format::Header {
                delimiter: ',',
                columns: vec!["navn".into(), "kundeid".into(), "startdato".into()],
                id: 1,
                start: Some(2),
                end: None,
            }
        );
        let Format::Header { delimiter, id, .. } = header("\"navn; fornavn\",kundeid,\"x;y\"").unwrap() else {
            panic!()
        };
        assert_eq!((delimiter, id), (',', 1));
        let Format::Header { delimiter, .. } = header("a\tkundeid\tb|c").unwrap() else {
            panic!()
        };
        assert_eq!(delimiter, '\t');
        let Format::Header { delimiter, .. } = header("Kundeid").unwrap() else {
            panic!()
        };
        assert_eq!(delimiter, ';');
    }

    #[test]
    fn unusable_headers_refuse_the_file_with_the_line() {
        let e = header("navn;dato").unwrap_err();
        assert_eq!(
            e.to_string(),
            "line 1: the header row names no customer identifier column (customer_id or kundeid); columns: navn, dato"
        );
        let e = header("kundeid;customer_id").unwrap_err();
        assert_eq!(
            e.to_string(),
            "line 1: the header row has two customer identifier columns, kundeid and customer_id"
        );
        let e = header("\"kundeid;navn").unwrap_err();
        assert!(e.to_string().contains("not closed"), "{e}");
        // A data line with names taken for a header does not echo the identifier.
        let e = header("Ola;15108695088").unwrap_err();
        assert!(e.to_string().ends_with("columns: Ola, *********88"), "{e}");
    }

    #[test]
    fn detection_by_letters() {
        assert_eq!(
            Format::detect(b"15108695088;15.01.2020", 1).unwrap(),
            Format::Lines { separator: None }
        );
        assert!(Format::detect(b"kundeid", 1).unwrap().is_fixed());
    }
}
