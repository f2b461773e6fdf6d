//! The streaming reader of the initial-load file: one pass over the bank's export into a compact
//! sorted set of unique active relationships, plus the counts the plan shows. The line grammar
//! and the per-line rules are not here: they are [`super::grammar`], [`super::format`] and
//! [`super::record`], shared with `kfr validate --file`; this file adds reading fast and in
//! bounded memory, and what the load makes of valid lines.
//!
//! - Rows whose end date is today or earlier are closed relationships: counted and left out
//!   (onboarding D-3 step 1: closed relationships are not loaded at first registration).
//! - Duplicates collapse to the earliest start date (an undated row means "today" to KFR, the
//!   latest possible), and are counted.
//! - A UTF-8 BOM at the start is skipped; LF or CRLF; blank lines are counted and skipped.
//!
//! Memory: a fixed 1 MiB read buffer (a line never grows it: longer than
//! [`MAX_LINE_BYTES`] it is rejected and skipped to its end), a few chunks in flight to the
//! parsing threads, and one `u64` per unique relationship (see [`Packed`]); 10 M lines fit well
//! under 200 MB. Rejected lines are passed to a callback and not kept.

pub use super::format::{Format, HeaderError};
pub use super::grammar::MAX_LINE_BYTES;
pub use super::record::{LineError, Rejected};
use super::{grammar, record};
use crate::ids::{CustomerId, IdKind, IdPolicy};
use chrono::{Datelike as _, NaiveDate};
use sha2::Digest as _;
use std::collections::BTreeMap;
use std::io::Read;

/// Bytes read at a time. Larger than [`MAX_LINE_BYTES`] + 2, so a buffer without a line end in
/// it always means a line over the cap.
const CHUNK: usize = 1 << 20;
const _: () = assert!(CHUNK > MAX_LINE_BYTES + 2);

/// The whole file is unusable (not a line: e.g. a header without an identifier column).
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Header(#[from] HeaderError),
    #[error(
        "line {line}: the line ends are CR only (old Mac style): the file reads as one line, so no relationship in it can be read"
    )]
    CrLineEnds { line: u64 },
    /// The file is UTF-16 (a byte order mark says so, or NUL bytes between the characters of
    /// its first line): read as bytes it would be one long line (issue 20: it was called "CR
    /// only").
    #[error("line {line}: the file is UTF-16 ({endian}{how}); kfr reads UTF-8 or Latin-1 text")]
    Utf16 {
        line: u64,
        endian: &'static str,
        how: &'static str,
    },
    #[error("line {line}: the first line is longer than {max} bytes, so the file's format cannot be read")]
    FirstLineTooLong { line: u64, max: usize },
    /// The rejected-line callback failed (e.g. its output was closed); reading stopped.
    #[error("handing on a rejected line")]
    Callback(#[source] std::io::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl crate::error::Hinted for ReadError {
    fn hint(&self) -> Option<String> {
        match self {
            ReadError::CrLineEnds { .. } => {
                Some("convert the file to LF or CRLF line ends (e.g. `tr '\\r' '\\n' < in > out`) and run again".into())
            }
            ReadError::Utf16 { .. } => Some(
                "convert the file to UTF-8 (e.g. `iconv -f UTF-16 -t UTF-8 in.csv > out.csv`, or save it as \"CSV UTF-8\") and run again; nothing was sent".into(),
            ),
            ReadError::FirstLineTooLong { .. } => Some(
                "check that the file is a text export with one relationship per line (LF or CRLF line ends)".into(),
            ),
            ReadError::Header(h) => h.hint(),
            ReadError::Callback(_) | ReadError::Io(_) => None,
        }
    }
}

/// One unique relationship packed into a `u64`, so 10 M of them take 80 MB and sort as integers:
/// bits 63..20 the identifier's digits as a number, 19..3 the start date as days since 1899-12-31
/// (all ones: no date), 2..0 the [`IdKind`]. Sorting orders by identifier, then start date, with
/// "no date" last: exactly the order in which the first of a run of duplicates is the one to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Packed(pub u64);

const NO_DATE: u64 = (1 << 17) - 1;
/// `num_days_from_ce` of 1899-12-31, the day before the earliest start date accepted.
const EPOCH_CE: i32 = 693_595;
fn epoch() -> NaiveDate {
    NaiveDate::from_ymd_opt(1899, 12, 31).expect("valid")
}

impl Packed {
    /// Packs a validated identifier (the record rules keep start dates from 1900 on).
    pub fn new(id: &CustomerId, start: Option<NaiveDate>) -> Packed {
        let number = id.as_str().bytes().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
        let date = start.map_or(NO_DATE, |d| (d.num_days_from_ce() - EPOCH_CE) as u64);
        let kind = IdKind::ALL.iter().position(|k| *k == id.kind()).expect("listed") as u64;
        Packed(number << 20 | date << 3 | kind)
    }

    fn key(self) -> u64 {
        self.0 >> 20
    }

    pub fn kind(self) -> IdKind {
        IdKind::ALL[(self.0 & 7) as usize]
    }

    pub fn start(self) -> Option<NaiveDate> {
        let days = (self.0 >> 3) & NO_DATE;
        (days != NO_DATE).then(|| epoch() + chrono::Days::new(days))
    }

    /// 9 digits for organisation numbers, 11 for everything else.
    pub fn id_len(self) -> usize {
        if matches!(self.kind(), IdKind::OrgNumber | IdKind::TestOrgNumber) {
            9
        } else {
            11
        }
    }

    /// The identifier's digits (zero-padded to its length).
    pub fn id_text(self) -> String {
        format!("{:0width$}", self.key(), width = self.id_len())
    }

    /// Encoded length in a batch body (kfr-notes §4: `ID` or `ID#YYYY-MM-DD`).
    pub fn encoded_len(self) -> usize {
        self.id_len() + if (self.0 >> 3) & NO_DATE != NO_DATE { 11 } else { 0 }
    }

    /// The identifier again. It was validated when read; it is re-parsed under a policy that
    /// accepts every kind, so the kind it was read as is kept.
    pub fn customer_id(self) -> CustomerId {
        let all = IdPolicy {
            allow_synthetic: true,
            allow_h_numbers: true,
        };
        CustomerId::parse(&self.id_text(), &all).expect("validated when read")
    }
}

/// What one pass over the input produced.
#[derive(Debug)]
pub struct ReadOutcome {
    pub format: Format,
    pub bom: bool,
    pub crlf: bool,
    /// Non-blank lines after the header.
    pub data_lines: u64,
    pub blank_lines: u64,
    pub rejected: u64,
    /// Valid rows with an end date today or earlier (left out).
    pub closed: u64,
    /// Valid active rows folded into an earlier row for the same identifier.
    pub duplicates: u64,
    /// Unique active relationships, sorted by identifier (empty with [`Keep::Counts`]).
    pub entries: Vec<Packed>,
    /// Unique active relationships by kind.
    pub by_kind: BTreeMap<IdKind, u64>,
    /// Every valid line (closed and duplicates included) by kind, indexed by `IdKind as usize`.
    pub valid_lines_by_kind: [u64; IdKind::ALL.len()],
    /// sha256 of the file's bytes, hex (empty unless [`ReadOptions::hash`]).
    pub content_hash: String,
}

/// Reader settings.
#[derive(Debug, Clone, Copy)]
pub struct ReadOptions {
    pub policy: IdPolicy,
    /// "Today" for the future/closed rules (fixed per load job so a resume decides the same way).
    pub today: NaiveDate,
    /// Compute the content hash (a load job needs it; a dry run does not).
    pub hash: bool,
}

/// What to keep of the valid lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// The unique active relationships (the load).
    Entries,
    /// Counts only (`kfr validate`): memory stays constant however long the file.
    Counts,
}

struct State<'a, F: FnMut(Rejected, &[u8]) -> std::io::Result<()>> {
    rules: record::Rules,
    keep: Keep,
    format: Format,
    line: u64,
    data_lines: u64,
    blank: u64,
    rejected: u64,
    closed: u64,
    entries: Vec<Packed>,
    kinds: [u64; IdKind::ALL.len()],
    crlf: bool,
    /// The next data line is the first under a header: look at the columns kfr does not read.
    probe_values: bool,
    on_reject: &'a mut F,
}

/// Most threads parsing lines; beyond this the single reading thread is the limit.
const MAX_WORKERS: usize = 4;

/// What a worker found in one chunk.
struct ChunkResult {
    idx: u64,
    entries: Vec<Packed>,
    kinds: [u64; IdKind::ALL.len()],
    data_lines: u64,
    blank: u64,
    closed: u64,
    crlf: bool,
    rejects: Vec<(Rejected, Vec<u8>)>,
}

type Job = (u64, Vec<u8>, u64);

/// Parallel parsing: the reading thread hands whole-line chunks (with the number of their first
/// line) to workers and adds their results back strictly in chunk order, so entries, counts and
/// the order in which bad lines are reported are exactly those of a serial pass. Results are
/// absorbed as they come, so memory stays one entry vector plus a few chunks in flight.
struct Parallel<'scope> {
    jobs: Option<std::sync::mpsc::SyncSender<Job>>,
    results: std::sync::mpsc::Receiver<Result<ChunkResult, ReadError>>,
    pending: BTreeMap<u64, ChunkResult>,
    sent: u64,
    next: u64,
    handles: Vec<std::thread::ScopedJoinHandle<'scope, ()>>,
}

impl<'scope> Parallel<'scope> {
    fn start<'env>(
        scope: &'scope std::thread::Scope<'scope, 'env>,
        workers: usize,
        format: Format,
        rules: record::Rules,
        keep: Keep,
    ) -> Self {
        let (jobs, job_rx) = std::sync::mpsc::sync_channel::<Job>(workers * 2);
        let job_rx = std::sync::Arc::new(std::sync::Mutex::new(job_rx));
        let (res_tx, results) = std::sync::mpsc::channel();
        let handles = (0..workers)
            .map(|_| {
                let (job_rx, res_tx, format) = (job_rx.clone(), res_tx.clone(), format.clone());
                scope.spawn(move || {
                    loop {
                        let job = job_rx.lock().map(|rx| rx.recv());
                        let Ok(Ok((idx, chunk, first_line))) = job else { return };
                        let mut rejects = vec![];
                        let mut push = |r: Rejected, raw: &[u8]| {
                            rejects.push((r, raw.to_vec()));
                            Ok(())
                        };
                        let mut st = State::new(rules, keep, format.clone(), &mut push);
                        st.line = first_line;
                        if keep == Keep::Entries {
                            st.entries.reserve(chunk.len() / 10);
                        }
                        let res = st.chunk(&chunk).map(|()| ChunkResult {
                            idx,
                            entries: std::mem::take(&mut st.entries),
                            kinds: st.kinds,
                            data_lines: st.data_lines,
                            blank: st.blank,
                            closed: st.closed,
                            crlf: st.crlf,
                            rejects: vec![],
                        });
                        drop(st);
                        let res = res.map(|mut r| {
                            r.rejects = rejects;
                            r
                        });
                        if res_tx.send(res).is_err() {
                            return;
                        }
                    }
                })
            })
            .collect();
        Parallel {
            jobs: Some(jobs),
            results,
            pending: BTreeMap::new(),
            sent: 0,
            next: 0,
            handles,
        }
    }

    fn send<F: FnMut(Rejected, &[u8]) -> std::io::Result<()>>(
        &mut self,
        chunk: Vec<u8>,
        first_line: u64,
        st: &mut State<'_, F>,
    ) -> Result<(), ReadError> {
        let jobs = self.jobs.as_ref().expect("not finished");
        jobs.send((self.sent, chunk, first_line)).map_err(|_| worker_gone())?;
        self.sent += 1;
        while let Ok(r) = self.results.try_recv() {
            self.accept(r?, st)?;
        }
        Ok(())
    }

    fn accept<F: FnMut(Rejected, &[u8]) -> std::io::Result<()>>(
        &mut self,
        r: ChunkResult,
        st: &mut State<'_, F>,
    ) -> Result<(), ReadError> {
        self.pending.insert(r.idx, r);
        while let Some(r) = self.pending.remove(&self.next) {
            st.absorb(r)?;
            self.next += 1;
        }
        Ok(())
    }

    fn finish<F: FnMut(Rejected, &[u8]) -> std::io::Result<()>>(
        mut self,
        st: &mut State<'_, F>,
    ) -> Result<(), ReadError> {
        self.jobs = None; // workers stop once the queue is empty
        while self.next < self.sent {
            let r = self.results.recv().map_err(|_| worker_gone())??;
            self.accept(r, st)?;
        }
        for h in self.handles {
            h.join().map_err(|_| worker_gone())?;
        }
        Ok(())
    }
}

fn worker_gone() -> ReadError {
    ReadError::Io(std::io::Error::other("a line-parsing thread stopped unexpectedly"))
}

/// Reads `input` to the end, keeping the unique active relationships. `on_reject` sees each bad
/// line (masked, with its rule) in file order, and its raw bytes (for a rejects file the
/// institution keeps; never log them).
pub fn read(
    input: impl Read,
    size_hint: Option<u64>,
    opts: ReadOptions,
    mut on_reject: impl FnMut(Rejected, &[u8]),
) -> Result<ReadOutcome, ReadError> {
    read_with(input, size_hint, opts, Keep::Entries, |r, raw| {
        on_reject(r, raw);
        Ok(())
    })
}

/// As [`read`], keeping what `keep` says; an error from `on_reject` stops the reading and is
/// returned as [`ReadError::Callback`] (so `kfr validate | head` stops when `head` does).
pub fn read_with(
    mut input: impl Read,
    size_hint: Option<u64>,
    opts: ReadOptions,
    keep: Keep,
    mut on_reject: impl FnMut(Rejected, &[u8]) -> std::io::Result<()>,
) -> Result<ReadOutcome, ReadError> {
    let mut hasher = sha2::Sha256::new();
    let rules = record::Rules {
        policy: opts.policy,
        today: opts.today,
    };
    let mut st = State::new(rules, keep, Format::Empty, &mut on_reject);
    if keep == Keep::Entries {
        // The shortest line is 10 bytes (9 digits + LF): never more entries than that.
        st.entries
            .reserve(size_hint.map_or(0, |n| (n / 10) as usize).min(1 << 28));
    }
    let mut buf = vec![0u8; CHUNK];
    let mut filled = 0;
    let mut first = true;
    let mut bom = false;
    // Inside a line over the cap: its head was handed on, the rest is dropped up to its LF.
    let mut skipping = false;
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(MAX_WORKERS);
    std::thread::scope(|scope| -> Result<(), ReadError> {
        // Chunks go to workers once the format is fixed (see `Parallel`); until then, and on a
        // one-core machine, lines are handled here.
        let mut par: Option<Parallel<'_>> = None;
        let mut dispatch = |chunk: &[u8], st: &mut State<'_, _>| -> Result<(), ReadError> {
            if par.is_none() && workers > 1 && st.format.is_fixed() {
                par = Some(Parallel::start(scope, workers, st.format.clone(), rules, keep));
            }
            match par.as_mut() {
                Some(p) => {
                    let lines =
                        memchr::memchr_iter(b'\n', chunk).count() as u64 + u64::from(chunk.last() != Some(&b'\n'));
                    p.send(chunk.to_vec(), st.line, st)?;
                    st.line += lines;
                    Ok(())
                }
                None => st.chunk(chunk),
            }
        };
        loop {
            debug_assert!(filled < buf.len(), "a partial line never fills the buffer");
            let n = input.read(&mut buf[filled..])?;
            if opts.hash {
                hasher.update(&buf[filled..filled + n]);
            }
            let eof = n == 0;
            let fresh = filled;
            filled += n;
            let mut start = 0;
            if skipping {
                match memchr::memchr(b'\n', &buf[fresh..filled]) {
                    None => {
                        filled = 0;
                        if eof {
                            break;
                        }
                        continue;
                    }
                    Some(i) => {
                        start = fresh + i + 1;
                        skipping = false;
                    }
                }
            }
            if first && (filled >= 3 || eof) {
                first = false;
                // A UTF-16 byte order mark: the file is not text kfr can read byte by byte.
                for (mark, endian) in [(b"\xFF\xFE", "little-endian"), (b"\xFE\xFF", "big-endian")] {
                    if buf[..filled].starts_with(mark) {
                        return Err(ReadError::Utf16 {
                            line: 1,
                            endian,
                            how: ", by its byte order mark",
                        });
                    }
                }
                if buf[..filled].starts_with(b"\xEF\xBB\xBF") {
                    bom = true;
                    start = 3;
                }
            } else if first {
                continue;
            }
            let end = if eof {
                filled
            } else {
                match memchr::memrchr(b'\n', &buf[start..filled]) {
                    Some(i) => start + i + 1,
                    None if filled - start > MAX_LINE_BYTES + 1 => {
                        // Over the cap even if its last byte is the CR of a CRLF: hand on a head
                        // that the line rule rejects (so the rejection comes in line order, with
                        // its number) and drop the rest of the line unread.
                        dispatch(&buf[start..start + MAX_LINE_BYTES + 2], &mut st)?;
                        filled = 0;
                        skipping = true;
                        continue;
                    }
                    None => {
                        buf.copy_within(start..filled, 0);
                        filled -= start;
                        continue;
                    }
                }
            };
            if end > start {
                dispatch(&buf[start..end], &mut st)?;
            }
            buf.copy_within(end..filled, 0);
            filled -= end;
            if eof {
                break;
            }
        }
        if let Some(p) = par {
            p.finish(&mut st)?;
        }
        Ok(())
    })?;
    let State {
        format,
        data_lines,
        blank,
        rejected,
        closed,
        mut entries,
        kinds,
        crlf,
        ..
    } = st;
    entries.sort_unstable();
    let before = entries.len();
    entries.dedup_by_key(|p| p.key());
    entries.shrink_to_fit();
    let mut unique = [0u64; IdKind::ALL.len()];
    for e in &entries {
        unique[(e.0 & 7) as usize] += 1;
    }
    let by_kind: BTreeMap<IdKind, u64> = IdKind::ALL.into_iter().zip(unique).filter(|(_, n)| *n > 0).collect();
    Ok(ReadOutcome {
        format,
        bom,
        crlf,
        data_lines,
        blank_lines: blank,
        rejected,
        closed,
        duplicates: (before - entries.len()) as u64,
        entries,
        by_kind,
        valid_lines_by_kind: kinds,
        content_hash: if opts.hash {
            hex::encode(hasher.finalize())
        } else {
            String::new()
        },
    })
}

/// The first data line under a header: a column kfr does not read that holds a date refuses the
/// file (issue 9: a start or end date under an unknown name would silently vanish). The first
/// data line is always read on this thread (the format is fixed by the header in the same chunk),
/// so the check does not depend on how the file is split.
fn check_unread_dates(format: &Format, line: &[u8], number: u64) -> Result<(), ReadError> {
    let Format::Header {
        delimiter,
        columns,
        id,
        start,
        end,
    } = format
    else {
        return Ok(());
    };
    for (i, field) in grammar::fields(line, *delimiter as u8).enumerate() {
        let Ok(field) = field else { return Ok(()) };
        if i == *id || Some(i) == *start || Some(i) == *end || i >= columns.len() {
            continue;
        }
        let value = field.value();
        if grammar::parse_date(&value).is_some() {
            return Err(HeaderError::DateValues {
                line: number,
                column: crate::ids::mask(&columns[i]),
                value: String::from_utf8_lossy(&value).trim().to_string(),
            }
            .into());
        }
    }
    Ok(())
}

impl<'a, F: FnMut(Rejected, &[u8]) -> std::io::Result<()>> State<'a, F> {
    fn new(rules: record::Rules, keep: Keep, format: Format, on_reject: &'a mut F) -> Self {
        State {
            rules,
            keep,
            format,
            line: 0,
            data_lines: 0,
            blank: 0,
            rejected: 0,
            closed: 0,
            entries: Vec::new(),
            kinds: [0; IdKind::ALL.len()],
            crlf: false,
            probe_values: false,
            on_reject,
        }
    }

    /// Handles a run of whole lines (ending in LF, except at the end of the file or for the
    /// head of a line over the cap).
    fn chunk(&mut self, chunk: &[u8]) -> Result<(), ReadError> {
        for line in chunk.split(|b| *b == b'\n') {
            self.line(line)?;
        }
        // `split` yields a final empty piece after the last LF, counted as a line: undo.
        if chunk.last() == Some(&b'\n') {
            self.line -= 1;
            self.blank -= 1;
        }
        Ok(())
    }

    /// Adds a worker's result for the chunk that follows everything added so far.
    fn absorb(&mut self, r: ChunkResult) -> Result<(), ReadError> {
        self.entries.extend_from_slice(&r.entries);
        for (k, n) in self.kinds.iter_mut().zip(r.kinds) {
            *k += n;
        }
        self.data_lines += r.data_lines;
        self.blank += r.blank;
        self.rejected += r.rejects.len() as u64;
        self.closed += r.closed;
        self.crlf |= r.crlf;
        for (rej, raw) in r.rejects {
            (self.on_reject)(rej, &raw).map_err(ReadError::Callback)?;
        }
        Ok(())
    }

    fn line(&mut self, raw: &[u8]) -> Result<(), ReadError> {
        self.line += 1;
        let (line, cr) = grammar::strip_cr(raw);
        self.crlf |= cr;
        if grammar::is_blank(line) {
            self.blank += 1;
            return Ok(());
        }
        if self.format == Format::Empty {
            // NUL bytes between the characters: UTF-16 without a byte order mark (a NUL at
            // even positions is the high byte first).
            if let Some(at) = memchr::memchr(0, line) {
                let digits_at_odd = line.iter().skip(1).step_by(2).any(|b| b.is_ascii_digit());
                let endian = if at % 2 == 0 && digits_at_odd {
                    "big-endian"
                } else {
                    "little-endian"
                };
                return Err(ReadError::Utf16 {
                    line: self.line,
                    endian,
                    how: ", by the NUL bytes between its characters",
                });
            }
            // A CR inside the first line (its line-end CR is already stripped) means CR-only
            // line ends: every relationship would run into one line (issue 9).
            if memchr::memchr(b'\r', line).is_some() {
                return Err(ReadError::CrLineEnds { line: self.line });
            }
            if grammar::check_length(line).is_err() {
                return Err(ReadError::FirstLineTooLong {
                    line: self.line,
                    max: MAX_LINE_BYTES,
                });
            }
            self.format = Format::detect(line, self.line)?;
            if matches!(self.format, Format::Header { .. }) {
                self.probe_values = true;
                return Ok(());
            }
        }
        self.data_lines += 1;
        if std::mem::take(&mut self.probe_values) {
            check_unread_dates(&self.format, line, self.line)?;
        }
        let rec = match record::parse(&mut self.format, line, &self.rules) {
            Ok(rec) => rec,
            Err(e) => return self.reject(line, e),
        };
        self.kinds[rec.id.kind() as usize] += 1;
        if rec.end.is_some_and(|end| end <= self.rules.today) {
            self.closed += 1;
            return Ok(());
        }
        if self.keep == Keep::Entries {
            self.entries.push(Packed::new(&rec.id, rec.start));
        }
        Ok(())
    }

    fn reject(&mut self, line: &[u8], err: LineError) -> Result<(), ReadError> {
        self.rejected += 1;
        let r = Rejected {
            line: self.line,
            text: record::shown(&self.format, line),
            rule: err.code(),
            message: err.to_string(),
        };
        (self.on_reject)(r, line).map_err(ReadError::Callback)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn today() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 6, 15).unwrap()
    }

    fn run(text: &str) -> (ReadOutcome, Vec<Rejected>) {
        run_bytes(text.as_bytes())
    }

    fn run_bytes(text: &[u8]) -> (ReadOutcome, Vec<Rejected>) {
        let mut rej = vec![];
        let out = read(
            text,
            None,
            ReadOptions {
                policy: IdPolicy::test(),
                today: today(),
                hash: true,
            },
            |r, _| rej.push(r),
        )
        .unwrap();
        (out, rej)
    }

    fn ids(out: &ReadOutcome) -> Vec<(String, Option<String>)> {
        out.entries
            .iter()
            .map(|p| (p.id_text(), p.start().map(|d| d.to_string())))
            .collect()
    }

    /// Issue 20: UTF-16 input is named as such (it was called "CR only"), with or without a
    /// byte order mark, either byte order.
    #[test]
    fn utf16_is_named_as_such() {
        let utf16 = |text: &str, big: bool, bom: bool| {
            let mut out: Vec<u8> = vec![];
            if bom {
                out.extend(if big { [0xFE, 0xFF] } else { [0xFF, 0xFE] });
            }
            for u in text.encode_utf16() {
                out.extend(if big { u.to_be_bytes() } else { u.to_le_bytes() });
            }
            out
        };
        for (big, bom) in [(false, true), (true, true), (false, false), (true, false)] {
            let bytes = utf16("02013299997;2020-01-02\r\n916960190\r\n", big, bom);
            let err = read(
                &bytes[..],
                None,
                ReadOptions {
                    policy: IdPolicy::test(),
                    today: today(),
                    hash: true,
                },
                |_, _| {},
            )
            .unwrap_err();
            let text = err.to_string();
            assert!(text.contains("UTF-16"), "{big} {bom}: {text}");
            let endian = if big { "big-endian" } else { "little-endian" };
            assert!(text.contains(endian), "{big} {bom}: {text}");
            assert!(!text.contains("CR only"), "{text}");
            use crate::error::Hinted as _;
            assert!(err.hint().unwrap().contains("iconv"), "{err:?}");
        }
    }

    #[test]
    fn plain_and_separated_lines() {
        for sep in [";", ",", "#"] {
            let (out, rej) = run(&format!("02013299997{sep}2020-01-02\n916960190\n\n"));
            assert!(rej.is_empty(), "{rej:?}");
            assert_eq!(
                out.format,
                Format::Lines {
                    separator: sep.chars().next()
                }
            );
            assert_eq!(
                ids(&out),
                // Sorted by number: organisation numbers (9 digits) first.
                vec![
                    ("916960190".into(), None),
                    ("02013299997".into(), Some("2020-01-02".into())),
                ]
            );
            assert_eq!((out.data_lines, out.blank_lines), (2, 1));
        }
        let (out, _) = run("916960190\n");
        assert_eq!(out.format.to_string(), "one identifier per line (ID)");
    }

    #[test]
    fn bom_crlf_and_no_final_newline() {
        let (out, rej) = run("\u{feff}02013299997;2020-01-02\r\n\r\n916960190");
        assert!(rej.is_empty(), "{rej:?}");
        assert!(out.bom && out.crlf);
        assert_eq!(out.entries.len(), 2);
        assert_eq!(out.blank_lines, 1);
    }

    #[test]
    fn header_rows_name_columns() {
        let (out, rej) = run(
            "Kundeid;Navn;Startdato;Sluttdato\n02013299997;x;2020-01-02;\n916960190;y;2019-05-05;2026-06-15\n\"15108695088\";z;2018-01-01;2030-01-01\n",
        );
        assert!(rej.is_empty(), "{rej:?}");
        assert_eq!(out.closed, 1, "end date today is closed");
        assert_eq!(out.entries.len(), 2);
        assert!(out.format.to_string().contains("id = Kundeid"), "{}", out.format);
        let (out, _) = run("customer_id,start_date\n916960190,2020-01-01\n");
        assert_eq!(out.entries.len(), 1);
        let err = read(
            "navn;dato\n".as_bytes(),
            None,
            ReadOptions {
                policy: IdPolicy::test(),
                today: today(),
                hash: true,
            },
            |_, _| {},
        )
        .unwrap_err();
        assert!(err.to_string().contains("line 1"), "{err}");
    }

    #[test]
    fn duplicates_keep_the_earliest_start() {
        let (out, _) =
            run("02013299997;2021-01-01\n02013299997;2020-01-01\n02013299997\n916960190\n916960190;2001-01-01\n");
        assert_eq!(out.duplicates, 3);
        assert_eq!(
            ids(&out),
            vec![
                ("916960190".into(), Some("2001-01-01".into())),
                ("02013299997".into(), Some("2020-01-01".into())),
            ]
        );
    }

    #[test]
    fn every_bad_line_is_reported_masked_with_its_rule() {
        let (out, rej) = run(
            "02013299997;2020-01-01\n02013299987\n02013299997;2027-01-01\n02013299997;1899-12-31\n02013299997;2020-02-30\n916960190,2020-01-01\n02013299997;2020-01-01;x\n",
        );
        let got: Vec<(u64, &str)> = rej.iter().map(|r| (r.line, r.rule)).collect();
        assert_eq!(
            got,
            vec![
                (2, "first_check_digit"),
                (3, "start_in_future"),
                (4, "start_before_1900"),
                (5, "bad_start_date"),
                (6, "mixed_separators"),
                (7, "too_many_fields"),
            ]
        );
        assert_eq!(out.rejected, 6);
        for r in &rej {
            assert!(!r.text.contains("0201329"), "unmasked: {}", r.text);
        }
        assert_eq!(rej[1].text, "*********97;2027-01-01");
    }

    #[test]
    fn packed_round_trips() {
        assert_eq!(epoch().num_days_from_ce(), EPOCH_CE);
        let id = CustomerId::parse("02013299997", &IdPolicy::test()).unwrap();
        let d = NaiveDate::from_ymd_opt(1900, 1, 1);
        let p = Packed::new(&id, d);
        assert_eq!(
            (p.id_text(), p.start(), p.kind()),
            ("02013299997".into(), d, IdKind::Fodselsnummer)
        );
        assert_eq!(p.encoded_len(), 22);
        let p = Packed::new(&id, None);
        assert_eq!((p.start(), p.encoded_len()), (None, 11));
        assert_eq!(p.customer_id().as_str(), "02013299997");
    }

    /// Large inputs are parsed by several threads; results (and the order bad lines are
    /// reported in) must be exactly those of one serial pass.
    #[test]
    fn parallel_chunks_keep_line_numbers_and_order() {
        let mut text = String::from("916960190;2020-01-01\n");
        let mut want = vec![];
        for i in 2..=300_000u64 {
            if i % 25_000 == 0 {
                text.push_str("916960191;2020-01-01\r\n");
                want.push(i);
            } else if i % 3 == 0 {
                text.push('\n');
            } else {
                text.push_str("02013299997;2021-01-01\n");
            }
        }
        let (out, rej) = run(&text);
        assert_eq!(rej.iter().map(|r| r.line).collect::<Vec<_>>(), want);
        assert_eq!(
            out.blank_lines,
            (2..=300_000u64).filter(|i| i % 3 == 0 && i % 25_000 != 0).count() as u64
        );
        assert_eq!(out.data_lines + out.blank_lines, 300_000);
        assert_eq!(out.entries.len(), 2);
        assert!(out.crlf);
    }

    #[test]
    fn lines_longer_than_the_buffer_and_chunk_edges() {
        let mut text = String::new();
        for _ in 0..100_000 {
            text.push_str("916960190;2020-01-01\n");
        }
        let (out, rej) = run(&text);
        assert!(rej.is_empty());
        assert_eq!(
            (out.data_lines, out.entries.len(), out.duplicates),
            (100_000, 1, 99_999)
        );
    }

    #[test]
    fn a_quoted_field_may_hold_the_separator_and_doubled_quotes() {
        let (out, rej) = run(
            "navn,kundeid,startdato\n\"Hansen, Ola\",15108695088,2020-01-15\n\"Ola \"\"Bror\"\", Nordmann\",916960190,\"2019-05-05\"\n",
        );
        assert!(rej.is_empty(), "{rej:?}");
        assert_eq!(
            ids(&out),
            vec![
                ("916960190".into(), Some("2019-05-05".into())),
                ("15108695088".into(), Some("2020-01-15".into())),
            ]
        );
    }

    #[test]
    fn norwegian_dates_are_read_as_well_as_iso() {
        let (out, rej) = run("15108695088;15.01.2020\n916960190;2019-05-05\n");
        assert!(rej.is_empty(), "{rej:?}");
        assert_eq!(
            ids(&out),
            vec![
                ("916960190".into(), Some("2019-05-05".into())),
                ("15108695088".into(), Some("2020-01-15".into())),
            ]
        );
        let (out, rej) =
            run("kundeid;startdato;sluttdato\n15108695088;01.02.2003;31.12.2099\n02013299997;30.02.2003;\n");
        assert_eq!(ids(&out), vec![("15108695088".into(), Some("2003-02-01".into()))]);
        assert_eq!(
            rej.iter().map(|r| (r.line, r.rule)).collect::<Vec<_>>(),
            vec![(3, "bad_start_date")]
        );
    }

    #[test]
    fn a_latin1_name_column_does_not_refuse_the_line() {
        let (out, rej) = run_bytes(b"navn;kundeid;startdato\nJ\xF8rgen \xC6rlig;15108695088;2020-01-15\n");
        assert!(rej.is_empty(), "{rej:?}");
        assert_eq!(ids(&out), vec![("15108695088".into(), Some("2020-01-15".into()))]);
    }

    #[test]
    fn header_aliases_ignore_case_spaces_dashes_and_underscores() {
        let (out, rej) = run("Navn|Kunde-ID|Start dato|SLUTT_DATO\nx|15108695088|2020-01-15|\n");
        assert!(rej.is_empty(), "{rej:?}");
        assert_eq!(ids(&out), vec![("15108695088".into(), Some("2020-01-15".into()))]);
        assert!(out.format.to_string().contains("end = SLUTT_DATO"), "{}", out.format);
    }

    #[test]
    fn a_line_longer_than_the_cap_is_one_rejection_and_reading_goes_on() {
        // Longer than the read buffer (the head is handed on, the rest skipped unread), and
        // within one buffer; the CRLF case is exactly one byte over the cap.
        let mut text = String::from("15108695088;2020-01-15\n");
        text.push_str(&"1".repeat(3 * CHUNK));
        text.push_str("\n916960190;2020-01-15\n");
        text.push_str(&format!("916960190;{}\n", "x".repeat(MAX_LINE_BYTES)));
        text.push_str(&format!("{}\r\n", "2".repeat(MAX_LINE_BYTES + 1)));
        text.push_str(&format!("{}\r\n", "3".repeat(MAX_LINE_BYTES)));
        text.push_str("02013299997");
        let (out, rej) = run(&text);
        assert_eq!(
            rej.iter().map(|r| (r.line, r.rule)).collect::<Vec<_>>(),
            vec![
                (2, "line_too_long"),
                (4, "line_too_long"),
                (5, "line_too_long"),
                (6, "length")
            ]
        );
        assert_eq!(rej[0].message, format!("line longer than {MAX_LINE_BYTES} bytes"));
        assert!(rej[0].text.len() < 100, "not echoed whole");
        assert_eq!(out.entries.len(), 3);
        assert_eq!(out.data_lines, 7);
    }

    /// A file without line ends is read in bounded memory and refused at its first line: no
    /// format can be told from a line that cannot be read.
    #[test]
    fn a_file_without_line_ends_is_refused_without_buffering_it() {
        let endless = std::io::repeat(b'1').take(256 << 20);
        let opts = ReadOptions {
            policy: IdPolicy::test(),
            today: today(),
            hash: false,
        };
        let err = read(endless, None, opts, |_, _| panic!("no line is complete")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "line 1: the first line is longer than 65536 bytes, so the file's format cannot be read"
        );
    }

    #[test]
    fn a_quote_left_open_refuses_the_line_not_the_file() {
        let (out, rej) = run("navn;kundeid\n\"Hansen;15108695088\n\"Ola\";916960190\n");
        assert_eq!(
            rej.iter().map(|r| (r.line, r.rule)).collect::<Vec<_>>(),
            vec![(2, "unterminated_quote")]
        );
        assert_eq!(out.entries.len(), 1);
    }
}
