//! `kfr validate [ID…] [--file FILE] [--json]`: checks customer identifiers offline against the
//! rules and the configured policy (kfr-notes §7), without sending anything.
//!
//! A file is read by the very reader `kfr load` uses ([`crate::input::reader`]): every format it
//! reads (one identifier per line, `ID;DATE`, a header row with quoted fields, BOM, CRLF,
//! Norwegian dates, a Latin-1 name column), with the same line numbers and the same rule for
//! every bad line, dates included. So "validate says it is fine" means "load will accept it".
//!
//! Output (stdout, it is the command's data): one line per rejection,
//! `FILE:LINE: <masked line>: <rule>` (`argument N: …` for identifiers given as arguments),
//! then a summary with counts per kind of the valid lines. `--json` prints the same as one JSON
//! document; it is written while reading, so memory stays constant however many rejections
//! there are. When stdout is closed early (`kfr validate --file F | head -1`) the command stops
//! reading and exits 0 without a word: the reader of the output has all it wanted.
//!
//! Exit code: 0 when every identifier is valid, 1 when any is rejected or the file cannot be
//! read to the end (or has a header with no identifier column), 2 when there is nothing to
//! validate or the file cannot be opened. `--file -` reads standard input.

use crate::error::{Reported, UsageError};
use crate::ids::{CustomerId, IdKind, IdPolicy};
use crate::input::reader::{self, Keep, ReadError, ReadOptions, Rejected};
use std::io::{BufWriter, Read, Write};
use std::path::Path;

pub fn run(settings: &crate::config::Settings, args: &super::ValidateArgs) -> anyhow::Result<()> {
    match validate(settings, args) {
        // The output's reader went away (`| head`): it has what it wanted; not an error.
        Err(e) if stdout_closed(&e) => Ok(()),
        other => other,
    }
}

fn stdout_closed(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn validate(settings: &crate::config::Settings, args: &super::ValidateArgs) -> anyhow::Result<()> {
    if args.ids.is_empty() && args.file.is_none() {
        return Err(UsageError::new("nothing to validate")
            .with_hint("give identifiers as arguments, or --file FILE in any format `kfr load` reads (- for stdin)")
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
        report.check(i + 1, id, &policy)?;
    }
    let mut read_error = None;
    if let Some((name, input)) = input {
        let opts = ReadOptions {
            policy,
            // As `kfr load` decides "in the future" for a new job.
            today: crate::clock::oslo_today(),
            hash: false,
        };
        let read = reader::read_with(input, None, opts, Keep::Counts, |r, _raw| report.line(&name, &r));
        match read {
            Ok(out) => report.add_valid(&out.valid_lines_by_kind),
            Err(ReadError::Callback(e)) => return Err(e.into()),
            Err(e) => read_error = Some(anyhow::Error::new(e).context(format!("reading {name}"))),
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

    /// Validates one identifier given as an argument.
    fn check(&mut self, n: usize, id: &str, policy: &IdPolicy) -> std::io::Result<()> {
        match CustomerId::parse(id, policy) {
            Ok(id) => {
                self.tally.by_kind[id.kind() as usize] += 1;
                Ok(())
            }
            Err(e) => self.reject(Origin::Argument(n), &crate::ids::mask(id), &e.to_string(), e.code()),
        }
    }

    /// A line the reader rejected.
    fn line(&mut self, file: &str, r: &Rejected) -> std::io::Result<()> {
        self.reject(Origin::Line(file, r.line), &r.text, &r.message, r.rule)
    }

    /// The valid lines of a file, by kind.
    fn add_valid(&mut self, by_kind: &[u64; IdKind::ALL.len()]) {
        for (t, n) in self.tally.by_kind.iter_mut().zip(by_kind) {
            *t += n;
        }
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
        let opts = ReadOptions {
            policy,
            today: chrono::NaiveDate::from_ymd_opt(2026, 6, 15).unwrap(),
            hash: false,
        };
        let read = reader::read_with(lines, None, opts, Keep::Counts, |r, _| report.line("ids.txt", &r)).unwrap();
        report.add_valid(&read.valid_lines_by_kind);
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
            "ids.txt:4: 916960191: customer identifier: organisation number check digit does not match\n\
             3 identifiers: 2 valid, 1 rejected\n  fødselsnummer                      2\n"
        );
    }

    #[test]
    fn a_byte_that_is_not_ascii_is_a_rejection_at_its_position_not_a_failure() {
        let (text, tally) = run_report(b"1510\xff8695088\n", false, IdPolicy::prod());
        assert_eq!(tally.rejected, 1);
        assert!(
            text.starts_with("ids.txt:1: ****\u{fffd}*****88: customer identifier: character 5 is not a digit 0-9\n"),
            "{text}"
        );
    }

    #[test]
    fn dated_lines_count_once_per_line_closed_and_duplicates_included() {
        let (text, tally) = run_report(
            b"kundeid;startdato;sluttdato\n15108695088;15.01.2020;\n15108695088;;01.01.2021\n916960190;2030-01-01;\n",
            false,
            IdPolicy::prod(),
        );
        assert_eq!((tally.valid(), tally.rejected), (2, 1));
        assert!(
            text.starts_with("ids.txt:4: 916960190;2030-01-01;: start date 2030-01-01 is in the future\n"),
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
        assert_eq!(v["rejections"][0]["rule"], "customer identifier: 30.02 is not a date");
        assert_eq!(v["rejections"][0]["code"], "not_a_date");
        assert_eq!(v["rejections"][0]["input"], "*********45");
    }

    #[test]
    fn a_closed_stdout_is_recognised_through_the_error_chain() {
        let pipe = std::io::Error::from(std::io::ErrorKind::BrokenPipe);
        let e = anyhow::Error::new(ReadError::Callback(pipe)).context("x");
        assert!(stdout_closed(&e));
        assert!(!stdout_closed(&anyhow::anyhow!("line 1: no identifier column")));
    }
}
