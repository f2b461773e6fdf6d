//! Entry points for the coverage-guided fuzz targets in `fuzz/` (issue 19, deliver 8; run them
//! with `bench/fuzz.sh SECONDS`). Each takes arbitrary bytes, runs one of kfr's parsers or its
//! batch encoder on them, and panics when an invariant breaks: a panic is what libFuzzer reports
//! as a crash. The ordinary test suite runs the same functions over proptest inputs and over
//! every crash found (`tests` below), so CI checks the invariants on stable Rust, without the
//! nightly toolchain `cargo fuzz` needs.
//!
//! The invariants, besides "no panic, no hang":
//! - a parser's verdict is whole: a request or a spool file gives events or refusals, never both
//!   (nothing is stored half-way);
//! - whatever it accepts passes the door's rules on its own (identifier, dates, event id);
//! - no refusal or rejected-line text repeats ten or more digits of the input in a row
//!   (identifiers are masked in every message);
//! - reading the same bytes in other pieces gives the same result (a spool file from a slow disk,
//!   a load file from a pipe);
//! - the duplicate-key check decodes exactly what serde_json decodes;
//! - the bundled mock reads back exactly the batch body kfr encodes, and its size is the one
//!   computed before encoding.

use crate::ids::{CustomerId, IdPolicy};
use crate::input::reader;
use crate::kfr::batch::{BatchEntry, Layout};
use crate::store::NewEvent;
use crate::store::Operation;
use crate::sync::event::{self, Context, Refusal};
use crate::sync::source::http::{Shape, parse_body};
use crate::sync::source::spool::{FileKey, parse_file, parse_lines};
use chrono::{DateTime, NaiveDate, Utc};

/// The fixed "now" of every target, so a crash replays the same way on any day.
fn context() -> Context {
    let received_at = DateTime::parse_from_rfc3339("2024-06-01T10:00:00Z")
        .expect("a valid time")
        .with_timezone(&Utc);
    Context {
        policy: IdPolicy::test(),
        today: NaiveDate::from_ymd_opt(2024, 6, 1).expect("a valid date"),
        received_at,
        source: "fuzz".into(),
    }
}

/// Panics if `shown` holds a run of ten or more ASCII digits that is also in `input`: an
/// identifier (11 digits) echoed unmasked. (Nine digits may stay: an organisation number.)
fn assert_masked(shown: &str, input: &[u8]) {
    for run in shown.split(|c: char| !c.is_ascii_digit()).filter(|r| r.len() >= 10) {
        assert!(
            !input.windows(run.len()).any(|w| w == run.as_bytes()),
            "digits of the input shown unmasked: {shown:?}"
        );
    }
}

/// Panics unless `e` passes the door's rules on its own.
fn assert_valid(e: &NewEvent, cx: &Context) {
    CustomerId::parse(&e.customer_id, &cx.policy).expect("an accepted identifier is valid");
    event::check_event_id(&e.event_id).expect("an accepted event id is valid");
    event::check_start(e.op, e.start_date, cx.today).expect("an accepted start date is valid");
    if e.op == Operation::Remove {
        assert_eq!(e.start_date, None, "a remove has no start date");
    }
}

fn assert_refusals(refusals: &[Refusal], input: &[u8]) {
    for r in refusals {
        assert!(
            r.rule.starts_with(r.field),
            "rule {} is not of field {}",
            r.rule,
            r.field
        );
        assert_masked(&r.to_string(), input);
        assert_masked(&serde_json::to_string(r).expect("a refusal serialises"), input);
    }
}

/// `POST /events`: the first byte picks the body's shape (JSON or NDJSON), the rest is the body.
pub fn events_body(data: &[u8]) {
    let Some((&first, body)) = data.split_first() else {
        return;
    };
    let shape = if first & 1 == 0 { Shape::Json } else { Shape::Ndjson };
    let cx = context();
    let (events, refusals) = parse_body(body, shape, &cx);
    assert!(
        events.is_empty() != refusals.is_empty(),
        "a request is taken whole or refused whole"
    );
    for e in &events {
        assert_valid(e, &cx);
    }
    assert_refusals(&refusals, body);
    // The duplicate-key decoder against serde_json itself: the same verdict, the same value.
    if let Ok(text) = std::str::from_utf8(body) {
        match (event::decode(text), serde_json::from_str::<serde_json::Value>(text)) {
            (Ok(d), Ok(v)) => assert_eq!(d.value, v, "decode differs from serde_json"),
            (Err(_), Err(_)) => {}
            (d, v) => panic!("decode and serde_json disagree: {d:?} / {v:?}"),
        }
    }
}

/// A spool file: the first byte picks CSV or JSONL and the read buffer's size; the rest is the
/// file.
pub fn spool_file(data: &[u8]) {
    let Some((&first, body)) = data.split_first() else {
        return;
    };
    let name = if first & 1 == 0 { "f.csv" } else { "f.jsonl" };
    let key = FileKey {
        dev: 1,
        ino: 2,
        born: Some(3),
    };
    let cx = context();
    let whole = parse_file(name, &key, body, &cx);
    // The same bytes through a small buffer: the file as a slow disk hands it out.
    let capacity = 1 + usize::from(first >> 1) % 16;
    let mut reader = std::io::BufReader::with_capacity(capacity, body);
    let (streamed, bytes) = parse_lines(name, &key, &mut reader, &cx).expect("reading from memory");
    assert_eq!(bytes, body.len() as u64, "every byte is counted");
    assert_eq!(whole, streamed, "the buffer's size changed the result");
    match whole {
        Ok(events) => {
            for e in &events {
                assert_valid(e, &cx);
            }
            let mut own: Vec<_> = events
                .iter()
                .map(|e| e.event_id.as_str())
                .filter(|id| id.starts_with("spool:"))
                .collect();
            let n = own.len();
            own.sort_unstable();
            own.dedup();
            assert_eq!(own.len(), n, "two lines got one generated id");
        }
        Err(refusals) => {
            assert!(!refusals.is_empty());
            assert_refusals(&refusals, body);
        }
    }
}

/// A reader that hands out one byte per read, as a pipe may.
struct Trickle<'a>(&'a [u8]);

impl std::io::Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match (self.0.split_first(), buf.first_mut()) {
            (Some((&b, rest)), Some(slot)) => {
                *slot = b;
                self.0 = rest;
                Ok(1)
            }
            _ => Ok(0),
        }
    }
}

/// The load's input grammar (`kfr load`, `kfr validate`, `kfr reconcile`): a whole file.
pub fn load_input(data: &[u8]) {
    let opts = reader::ReadOptions {
        policy: IdPolicy::test(),
        today: NaiveDate::from_ymd_opt(2024, 6, 1).expect("a valid date"),
        hash: false,
    };
    let mut rejects = vec![];
    let outcome = reader::read(data, Some(data.len() as u64), opts, |r, _raw| rejects.push(r));
    let trickled = reader::read(Trickle(data), None, opts, |_, _| {});
    match (outcome, trickled) {
        (Ok(o), Ok(t)) => {
            assert_eq!(o.rejected, rejects.len() as u64, "each rejected line is handed on");
            let valid: u64 = o.valid_lines_by_kind.iter().sum();
            assert_eq!(valid + o.rejected, o.data_lines, "each data line is valid or rejected");
            for r in &rejects {
                assert_masked(&r.text, data);
                assert_masked(&r.message, data);
            }
            assert_eq!(
                (
                    o.entries,
                    o.data_lines,
                    o.rejected,
                    o.blank_lines,
                    o.closed,
                    o.duplicates
                ),
                (
                    t.entries,
                    t.data_lines,
                    t.rejected,
                    t.blank_lines,
                    t.closed,
                    t.duplicates
                ),
                "reading byte by byte changed the result"
            );
        }
        (Err(e), Err(_)) => assert_masked(&e.to_string(), data),
        (o, t) => panic!(
            "reading byte by byte changed the verdict: {:?} / {:?}",
            o.err(),
            t.err()
        ),
    }
}

/// Completes `digits` (8 or 9) with the mod-11 check digit(s) of an organisation number or a
/// fødselsnummer (`ids::synthetic`, the rules' own weights); `None` when a check digit would be
/// 10 (no such number exists).
fn with_check_digits(digits: &[u32]) -> Option<String> {
    let text: String = digits.iter().map(|x| char::from(b'0' + *x as u8)).collect();
    if digits.len() == 8 {
        crate::ids::synthetic::complete_org(&text)
    } else {
        crate::ids::synthetic::complete_person(&text)
    }
}

/// The batch encoder: the bytes choose a boundary and the entries (identifiers completed with
/// valid check digits, some with a start date); the mock must read back exactly those.
pub fn batch_body(data: &[u8]) {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-";
    let Some((&len, rest)) = data.split_first() else {
        return;
    };
    let len = 1 + usize::from(len) % 70;
    let (b, rest) = rest.split_at(len.min(rest.len()));
    let mut boundary: String = b
        .iter()
        .map(|x| char::from(ALPHABET[usize::from(*x) % ALPHABET.len()]))
        .collect();
    if !boundary.bytes().any(|c| c.is_ascii_alphabetic()) {
        boundary.truncate(69);
        boundary.insert(0, 'k');
    }
    let all = IdPolicy {
        allow_synthetic: true,
        allow_h_numbers: true,
    };
    let epoch = NaiveDate::from_ymd_opt(1900, 1, 1).expect("a valid date");
    let mut entries = vec![];
    for chunk in rest.chunks_exact(12) {
        let org = chunk[0] & 1 == 0;
        let digits: Vec<u32> = chunk[1..if org { 9 } else { 10 }]
            .iter()
            .map(|x| u32::from(*x % 10))
            .collect();
        let Some(text) = with_check_digits(&digits) else {
            continue;
        };
        let Ok(id) = CustomerId::parse(&text, &all) else {
            continue;
        };
        let days = u16::from_be_bytes([chunk[10], chunk[11]]);
        let start = (chunk[0] & 2 == 0).then(|| epoch + chrono::Days::new(u64::from(days) * 2));
        entries.push(BatchEntry { id, start });
    }
    let layout = Layout::with_boundary(boundary.clone());
    let body = layout.encode(&entries);
    let entry_bytes = entries.iter().map(BatchEntry::encoded_len).sum();
    assert_eq!(body.bytes.len(), layout.body_size(entries.len(), entry_bytes));
    assert_eq!(
        crate::mock::multipart::boundary(&body.content_type).expect("the mock reads our header"),
        boundary
    );
    let parts = crate::mock::multipart::parse(&body.bytes, &boundary).expect("the mock reads our body");
    let names: Vec<_> = parts.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["customer_type", "customers"]);
    assert_eq!(parts[0].content, crate::kfr::batch::RELATIONSHIP_TYPE.as_bytes());
    let expected: Vec<String> = entries
        .iter()
        .map(|e| match e.start {
            Some(d) => format!("{}#{}", e.id.as_str(), d.format("%Y-%m-%d")),
            None => e.id.as_str().to_string(),
        })
        .collect();
    assert_eq!(parts[1].content, expected.join(",").as_bytes());
}

#[cfg(test)]
mod tests {
    //! The fuzz targets' invariants on stable Rust: a short proptest run of each (CI), and the
    //! inputs that crashed a target once (regressions).

    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn events_body_holds(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            events_body(&data);
        }

        #[test]
        fn events_body_holds_on_json_like_text(text in r#"[\[\]{}",:0-9a-z_ \n-]{0,200}"#) {
            events_body(format!("\0{text}").as_bytes());
            events_body(format!("\x01{text}").as_bytes());
        }

        #[test]
        fn spool_file_holds(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            spool_file(&data);
        }

        #[test]
        fn spool_file_holds_on_csv_like_text(text in r#"[a-z0-9,".\r\n -]{0,200}"#) {
            spool_file(format!("\0{text}").as_bytes());
        }

        #[test]
        fn load_input_holds(text in r#"[0-9a-z;,"\t.\r\n -]{0,300}"#) {
            load_input(text.as_bytes());
        }

        #[test]
        fn batch_body_holds(data in proptest::collection::vec(any::<u8>(), 0..400)) {
            batch_body(&data);
        }
    }

    #[test]
    fn the_targets_accept_what_they_should() {
        // Valid inputs reach the deep paths (a target that refuses everything tests little).
        let cx = context();
        let person = "15108695088";
        let body = format!("\0[{{\"op\":\"add\",\"customer_id\":\"{person}\",\"start_date\":\"2020-01-01\"}}]");
        let (events, _) = parse_body(&body.as_bytes()[1..], Shape::Json, &cx);
        assert_eq!(events.len(), 1);
        events_body(body.as_bytes());
        spool_file(format!("\0add,{person}\nremove,{person}\n").as_bytes());
        load_input(format!("{person}\n916960190;2020-01-01\n").as_bytes());
        let mut batch = vec![10u8];
        batch.extend_from_slice(b"kfr-batch-");
        batch.extend_from_slice(&[1, 1, 5, 1, 0, 8, 6, 9, 5, 0, 0, 0]);
        batch_body(&batch);
    }

    #[test]
    #[should_panic(expected = "unmasked")]
    fn the_mask_check_catches_an_echoed_identifier() {
        assert_masked("bad id 15108695088", b"x 15108695088 y");
    }
}
