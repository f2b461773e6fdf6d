//! `kfr validate [ID…] [--file FILE] [--json]`: checks customer identifiers offline against the
//! rules and the configured policy (kfr-notes §7), without sending anything.
//!
//! Output (stdout, it is the command's data): one line per rejection,
//! `FILE:LINE: <masked input>: <rule>` (`argument N: …` for identifiers given as arguments),
//! then a summary with counts per kind. `--json` prints the same as one JSON document; it is
//! written while reading, so memory stays constant however many rejections there are.
//!
//! Exit code: 0 when every identifier is valid, 1 when any is rejected or the file cannot be
//! read to the end, 2 when there is nothing to validate or the file cannot be opened.
//!
//! The file is streamed line by line through one reused buffer: no allocation per valid line,
//! which is what makes this fast enough for a 10-million-line initial-load file. A UTF-8 BOM at
//! the start and CRLF line ends are accepted; blank lines are skipped but still counted for line
//! numbers. `--file -` reads standard input.

use crate::error::{Reported, UsageError};
use crate::ids::{CustomerId, IdKind, IdPolicy, mask};
use anyhow::Context as _;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::Path;

pub fn run(settings: &crate::config::Settings, args: &super::ValidateArgs) -> anyhow::Result<()> {
    if args.ids.is_empty() && args.file.is_none() {
        return Err(UsageError::new("nothing to validate")
            .with_hint("give identifiers as arguments, or --file FILE with one per line (- for stdin)")
            .into());
    }
    let policy = super::build::id_policy(settings);
    // Open before printing anything, so a wrong path is a usage error with no partial output.
    let input: Option<(String, Box<dyn Read>)> = match &args.file {
        None => None,
        Some(p) if p == Path::new("-") => Some(("<stdin>".into(), Box::new(std::io::stdin().lock()))),
        Some(p) => {
            let file = std::fs::File::open(p).map_err(|e| {
                UsageError::new(format!("cannot open {}: {e}", p.display())).with_hint("check the --file path")
            })?;
            Some((p.display().to_string(), Box::new(file)))
        }
    };

    let stdout = std::io::stdout().lock();
    let mut report = Report::new(BufWriter::with_capacity(1 << 16, stdout), args.json)?;
    for (i, id) in args.ids.iter().enumerate() {
        report.check(Origin::Argument(i + 1), id.as_bytes(), &policy)?;
    }
    let mut read_error = None;
    if let Some((name, reader)) = input {
        if let Err(e) = validate_stream(&name, reader, &policy, &mut report) {
            read_error = Some(e);
        }
    }
    let tally = report.finish()?;

    if let Some(e) = read_error {
        return Err(e);
    }
    if tally.rejected > 0 {
        return Err(Reported(format!("{} of {} identifiers rejected", tally.rejected, tally.total())).into());
    }
    Ok(())
}

/// Streams `reader` line by line into `report`.
fn validate_stream(
    name: &str,
    reader: Box<dyn Read>,
    policy: &IdPolicy,
    report: &mut Report<impl Write>,
) -> anyhow::Result<()> {
    let mut reader = BufReader::with_capacity(1 << 20, reader);
    let mut line = Vec::with_capacity(256);
    let mut number = 0u64;
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .with_context(|| format!("reading {name} after line {number}"))?;
        if n == 0 {
            return Ok(());
        }
        number += 1;
        let mut bytes = line.as_slice();
        if number == 1 {
            bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
        }
        // Blank (or whitespace-only) lines are layout, not identifiers.
        if bytes.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        report.check(Origin::Line(name, number), bytes, policy)?;
    }
}

/// Where an identifier came from, for the rejection line.
#[derive(Clone, Copy)]
enum Origin<'a> {
    Argument(usize),
    Line(&'a str, u64),
}

/// Counts per kind and rejections.
#[derive(Default)]
struct Tally {
    by_kind: [u64; IdKind::ALL.len()],
    rejected: u64,
}

impl Tally {
    fn valid(&self) -> u64 {
        self.by_kind.iter().sum()
    }
    fn total(&self) -> u64 {
        self.valid() + self.rejected
    }
}

/// Writes rejections as they are found and the summary at the end, as text or JSON.
struct Report<W: Write> {
    out: W,
    json: bool,
    tally: Tally,
}

impl<W: Write> Report<W> {
    fn new(mut out: W, json: bool) -> std::io::Result<Self> {
        if json {
            out.write_all(b"{\"rejections\":[")?;
        }
        Ok(Self {
            out,
            json,
            tally: Tally::default(),
        })
    }

    /// Validates one identifier; the hot path (a valid line) neither allocates nor writes.
    fn check(&mut self, origin: Origin<'_>, bytes: &[u8], policy: &IdPolicy) -> std::io::Result<()> {
        let (text, rule, code) = match std::str::from_utf8(bytes) {
            Ok(text) => match CustomerId::parse(text, policy) {
                Ok(id) => {
                    self.tally.by_kind[id.kind() as usize] += 1;
                    return Ok(());
                }
                Err(e) => (mask(text), e.to_string(), e.code()),
            },
            Err(_) => (
                mask(&String::from_utf8_lossy(bytes)),
                "not valid UTF-8".to_owned(),
                "not_utf8",
            ),
        };
        self.reject(origin, &text, &rule, code)
    }

    fn reject(&mut self, origin: Origin<'_>, text: &str, rule: &str, code: &str) -> std::io::Result<()> {
        self.tally.rejected += 1;
        if self.json {
            if self.tally.rejected > 1 {
                self.out.write_all(b",")?;
            }
            let value = match origin {
                Origin::Argument(n) => serde_json::json!({"argument": n, "input": text, "rule": rule, "code": code}),
                Origin::Line(file, line) => {
                    serde_json::json!({"file": file, "line": line, "input": text, "rule": rule, "code": code})
                }
            };
            serde_json::to_writer(&mut self.out, &value)?;
            Ok(())
        } else {
            match origin {
                Origin::Argument(n) => writeln!(self.out, "argument {n}: {text}: {rule}"),
                Origin::Line(file, line) => writeln!(self.out, "{file}:{line}: {text}: {rule}"),
            }
        }
    }

    fn finish(mut self) -> std::io::Result<Tally> {
        let t = &self.tally;
        if self.json {
            let by_kind: serde_json::Map<String, serde_json::Value> = IdKind::ALL
                .iter()
                .map(|k| (kind_name(*k), t.by_kind[*k as usize].into()))
                .collect();
            let summary = serde_json::json!({
                "total": t.total(),
                "valid": t.valid(),
                "rejected": t.rejected,
                "by_kind": by_kind,
            });
            // Close the array and merge the summary fields into the same object.
            let summary = serde_json::to_string(&summary)?;
            writeln!(self.out, "],{}", &summary[1..])?;
        } else {
            writeln!(
                self.out,
                "{} {}: {} valid, {} rejected",
                t.total(),
                if t.total() == 1 { "identifier" } else { "identifiers" },
                t.valid(),
                t.rejected
            )?;
            for k in IdKind::ALL {
                let n = t.by_kind[k as usize];
                if n > 0 {
                    writeln!(self.out, "  {:<26}{n:>10}", k.label())?;
                }
            }
        }
        self.out.flush()?;
        Ok(self.tally)
    }
}

fn kind_name(k: IdKind) -> String {
    match serde_json::to_value(k) {
        Ok(serde_json::Value::String(s)) => s,
        _ => unreachable!("IdKind serializes as a string"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_report(lines: &[u8], json: bool, policy: IdPolicy) -> (String, Tally) {
        let mut out = Vec::new();
        let mut report = Report::new(&mut out, json).unwrap();
        validate_stream(
            "ids.txt",
            Box::new(std::io::Cursor::new(lines.to_vec())),
            &policy,
            &mut report,
        )
        .unwrap();
        let tally = report.finish().unwrap();
        (String::from_utf8(out).unwrap(), tally)
    }

    #[test]
    fn bom_crlf_blank_lines_and_line_numbers() {
        let input = b"\xEF\xBB\xBF15108695088\r\n\r\n   \n916960191\r\n02013299997";
        let (text, tally) = run_report(input, false, IdPolicy::prod());
        assert_eq!(tally.by_kind[IdKind::Fodselsnummer as usize], 2);
        assert_eq!(tally.rejected, 1);
        assert_eq!(
            text,
            "ids.txt:4: 916960191: organisation number check digit does not match\n\
             3 identifiers: 2 valid, 1 rejected\n  fødselsnummer                      2\n"
        );
    }

    #[test]
    fn invalid_utf8_is_a_rejection_not_a_failure() {
        let (text, tally) = run_report(b"1510\xff8695088\n", false, IdPolicy::prod());
        assert_eq!(tally.rejected, 1);
        assert!(
            text.starts_with("ids.txt:1: ****\u{fffd}*****88: not valid UTF-8\n"),
            "{text}"
        );
    }

    #[test]
    fn json_is_one_document_with_rejections_and_counts() {
        let (text, _) = run_report(b"15108695088\n30020012345\n", true, IdPolicy::prod());
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["total"], 2);
        assert_eq!(v["rejected"], 1);
        assert_eq!(v["by_kind"]["fodselsnummer"], 1);
        assert_eq!(v["by_kind"]["h_number"], 0);
        assert_eq!(v["rejections"][0]["line"], 2);
        assert_eq!(v["rejections"][0]["rule"], "30.02 is not a date");
        assert_eq!(v["rejections"][0]["code"], "not_a_date");
        assert_eq!(v["rejections"][0]["input"], "*********45");
    }
}
