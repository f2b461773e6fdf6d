//! The input reader: one pass over the bank's export, streaming, into a compact sorted set of
//! unique active relationships.
//!
//! Accepted shapes (the format is detected and stated in the plan):
//! - one identifier per line, `ID`, optionally followed by a start date: `ID;YYYY-MM-DD`,
//!   `ID,YYYY-MM-DD` or `ID#YYYY-MM-DD` (KFR's own batch notation). The separator is the first one
//!   seen; a line using another one is an error (a file mixing them was probably concatenated
//!   from different exports);
//! - a delimited file (`;`, `,`, tab or `|`) whose first line names the columns:
//!   `customer_id`/`kundeid` (required), `start_date`/`startdato`, `end_date`/`sluttdato`
//!   (optional, any case); other columns are ignored.
//!
//! UTF-8 with or without a BOM, LF or CRLF, blank lines skipped. Rules per line, each a
//! [`LineError`] with a stable code: the identifier passes kfr-notes §7 under the configured
//! policy; a start date is a real `YYYY-MM-DD` date, not in the future and not before 1900; an end
//! date is a real date, not before the start. Rows whose end date is today or earlier are closed
//! relationships: counted and left out (onboarding D-3 step 1: closed relationships are not loaded
//! at first registration). Duplicates collapse to the earliest start date (an undated row means
//! "today" to KFR, the latest possible), and are counted.
//!
//! Memory: apart from a fixed read buffer, each unique relationship costs one `u64` (see
//! [`Packed`]); 10 M lines fit well under 200 MB. Rejected lines are passed to a callback and not
//! kept.

use crate::ids::{CustomerId, IdError, IdKind, IdPolicy, mask};
use chrono::{Datelike as _, NaiveDate};
use sha2::Digest as _;
use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;

/// Bytes read at a time.
const CHUNK: usize = 1 << 20;

/// How the input was laid out.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Format {
    /// No data line yet (empty file).
    Empty,
    /// `ID`, or `ID<sep>YYYY-MM-DD` with `sep` the separator seen.
    Lines { separator: Option<char> },
    /// A header row naming the columns.
    Header {
        delimiter: char,
        columns: Vec<String>,
        id: usize,
        start: Option<usize>,
        end: Option<usize>,
    },
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

/// Why a line was rejected. Never carries the identifier (see [`IdError`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error("customer identifier: {0}")]
    Id(IdError),
    #[error("no customer identifier")]
    MissingId,
    #[error("not valid UTF-8")]
    NotUtf8,
    #[error("expected at most two fields (ID and start date)")]
    TooManyFields,
    #[error("separator '{found}' differs from the file's '{expected}'")]
    MixedSeparators { expected: char, found: char },
    #[error("only {got} column(s), the header names {want}")]
    MissingColumns { got: usize, want: usize },
    #[error("start date is not a date in YYYY-MM-DD form")]
    BadStartDate,
    #[error("end date is not a date in YYYY-MM-DD form")]
    BadEndDate,
    #[error("start date {0} is in the future")]
    StartInFuture(NaiveDate),
    #[error("start date {0} is before 1900")]
    StartBefore1900(NaiveDate),
    #[error("end date {end} is before start date {start}")]
    EndBeforeStart { start: NaiveDate, end: NaiveDate },
}

impl LineError {
    /// Stable rule name for reports and rejects files.
    pub fn code(&self) -> &'static str {
        match self {
            LineError::Id(e) => e.code(),
            LineError::MissingId => "missing_id",
            LineError::NotUtf8 => "not_utf8",
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

/// The whole file is unusable (not a line: e.g. a header without an identifier column).
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(
        "line {line}: the header row names no customer identifier column (customer_id or kundeid); columns: {columns}"
    )]
    NoIdColumn { line: u64, columns: String },
    #[error(transparent)]
    Io(#[from] std::io::Error),
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
    #[cfg(test)]
    fn new(id: &CustomerId, start: Option<NaiveDate>) -> Packed {
        Self::from_digits(id.as_str().as_bytes(), id.kind(), start)
    }

    /// As [`Packed::new`] from the digits `CustomerId::parse` accepted (the hot path: no second
    /// UTF-8 check).
    fn from_digits(digits: &[u8], kind: IdKind, start: Option<NaiveDate>) -> Packed {
        let number = digits.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
        let date = start.map_or(NO_DATE, |d| (d.num_days_from_ce() - EPOCH_CE) as u64);
        let kind = IdKind::ALL.iter().position(|k| *k == kind).expect("listed") as u64;
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
    /// Unique active relationships, sorted by identifier.
    pub entries: Vec<Packed>,
    pub by_kind: BTreeMap<IdKind, u64>,
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

struct State<'a, F: FnMut(Rejected, &[u8])> {
    opts: ReadOptions,
    format: Format,
    line: u64,
    data_lines: u64,
    blank: u64,
    rejected: u64,
    closed: u64,
    entries: Vec<Packed>,
    crlf: bool,
    on_reject: &'a mut F,
}

/// Most threads parsing lines; beyond this the single reading thread is the limit.
const MAX_WORKERS: usize = 4;

impl Format {
    /// True when no later line can change the format: a header was read, or the separator of a
    /// headerless file is known. Only then can chunks be parsed independently.
    fn is_fixed(&self) -> bool {
        matches!(self, Format::Header { .. } | Format::Lines { separator: Some(_) })
    }
}

/// What a worker found in one chunk.
struct ChunkResult {
    idx: u64,
    entries: Vec<Packed>,
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
        opts: ReadOptions,
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
                        let mut push = |r: Rejected, raw: &[u8]| rejects.push((r, raw.to_vec()));
                        let mut st = State {
                            opts,
                            format: format.clone(),
                            line: first_line,
                            data_lines: 0,
                            blank: 0,
                            rejected: 0,
                            closed: 0,
                            entries: Vec::with_capacity(chunk.len() / 10),
                            crlf: false,
                            on_reject: &mut push,
                        };
                        let res = st.chunk(&chunk).map(|()| ChunkResult {
                            idx,
                            entries: std::mem::take(&mut st.entries),
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

    fn send<F: FnMut(Rejected, &[u8])>(
        &mut self,
        chunk: Vec<u8>,
        first_line: u64,
        st: &mut State<'_, F>,
    ) -> Result<(), ReadError> {
        let jobs = self.jobs.as_ref().expect("not finished");
        jobs.send((self.sent, chunk, first_line)).map_err(|_| worker_gone())?;
        self.sent += 1;
        while let Ok(r) = self.results.try_recv() {
            self.accept(r?, st);
        }
        Ok(())
    }

    fn accept<F: FnMut(Rejected, &[u8])>(&mut self, r: ChunkResult, st: &mut State<'_, F>) {
        self.pending.insert(r.idx, r);
        while let Some(r) = self.pending.remove(&self.next) {
            st.absorb(r);
            self.next += 1;
        }
    }

    fn finish<F: FnMut(Rejected, &[u8])>(mut self, st: &mut State<'_, F>) -> Result<(), ReadError> {
        self.jobs = None; // workers stop once the queue is empty
        while self.next < self.sent {
            let r = self.results.recv().map_err(|_| worker_gone())??;
            self.accept(r, st);
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

/// Reads `input` to the end. `on_reject` sees each bad line (masked, with its rule) and the raw
/// bytes (for a rejects file the institution keeps; never log them).
pub fn read(
    mut input: impl Read,
    size_hint: Option<u64>,
    opts: ReadOptions,
    mut on_reject: impl FnMut(Rejected, &[u8]),
) -> Result<ReadOutcome, ReadError> {
    let mut hasher = sha2::Sha256::new();
    // The shortest line is 10 bytes (9 digits + LF): never more entries than that.
    let cap = size_hint.map_or(0, |n| (n / 10) as usize).min(1 << 28);
    let mut st = State {
        opts,
        format: Format::Empty,
        line: 0,
        data_lines: 0,
        blank: 0,
        rejected: 0,
        closed: 0,
        entries: Vec::with_capacity(cap),
        crlf: false,
        on_reject: &mut on_reject,
    };
    let mut buf = vec![0u8; CHUNK];
    let mut filled = 0;
    let mut first = true;
    let mut bom = false;
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(MAX_WORKERS);
    std::thread::scope(|scope| -> Result<(), ReadError> {
        // Chunks go to workers once the format is fixed (see `Parallel`); until then, and on a
        // one-core machine, lines are handled here.
        let mut par: Option<Parallel<'_>> = None;
        loop {
            if filled == buf.len() {
                buf.resize(buf.len() * 2, 0); // one line longer than the buffer
            }
            let n = input.read(&mut buf[filled..])?;
            if opts.hash {
                hasher.update(&buf[filled..filled + n]);
            }
            let eof = n == 0;
            filled += n;
            let mut start = 0;
            if first && (filled >= 3 || eof) {
                first = false;
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
                    None => {
                        buf.copy_within(start..filled, 0);
                        filled -= start;
                        continue;
                    }
                }
            };
            if end > start {
                if par.is_none() && workers > 1 && st.format.is_fixed() {
                    par = Some(Parallel::start(scope, workers, st.format.clone(), opts));
                }
                match par.as_mut() {
                    Some(p) => {
                        let chunk = &buf[start..end];
                        let lines =
                            memchr::memchr_iter(b'\n', chunk).count() as u64 + u64::from(chunk.last() != Some(&b'\n'));
                        p.send(chunk.to_vec(), st.line, &mut st)?;
                        st.line += lines;
                    }
                    None => st.chunk(&buf[start..end])?,
                }
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
        crlf,
        ..
    } = st;
    entries.sort_unstable();
    let before = entries.len();
    entries.dedup_by_key(|p| p.key());
    entries.shrink_to_fit();
    let mut kinds = [0u64; IdKind::ALL.len()];
    for e in &entries {
        kinds[(e.0 & 7) as usize] += 1;
    }
    let by_kind: BTreeMap<IdKind, u64> = IdKind::ALL.into_iter().zip(kinds).filter(|(_, n)| *n > 0).collect();
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
        content_hash: if opts.hash {
            hex::encode(hasher.finalize())
        } else {
            String::new()
        },
    })
}

fn is_blank(b: &[u8]) -> bool {
    b.iter().all(|c| c.is_ascii_whitespace())
}

fn trim(b: &[u8]) -> &[u8] {
    b.trim_ascii()
}

fn unquote(b: &[u8]) -> &[u8] {
    let b = trim(b);
    if b.len() >= 2 && b[0] == b'"' && b[b.len() - 1] == b'"' {
        trim(&b[1..b.len() - 1])
    } else {
        b
    }
}

/// Parses exactly `YYYY-MM-DD`.
fn parse_date(b: &[u8]) -> Option<NaiveDate> {
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        b[r].iter().try_fold(0u32, |acc, c| {
            c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0'))
        })
    };
    NaiveDate::from_ymd_opt(num(0..4)? as i32, num(5..7)?, num(8..10)?)
}

/// A field as shown in messages: dates as written (not personal), anything else masked.
fn show_field(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(trim(b));
    if parse_date(trim(b)).is_some() {
        s.into_owned()
    } else {
        mask(&s)
    }
}

impl<F: FnMut(Rejected, &[u8])> State<'_, F> {
    /// Handles a run of whole lines (ending in LF, except at the end of the file).
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
    fn absorb(&mut self, r: ChunkResult) {
        self.entries.extend_from_slice(&r.entries);
        self.data_lines += r.data_lines;
        self.blank += r.blank;
        self.rejected += r.rejects.len() as u64;
        self.closed += r.closed;
        self.crlf |= r.crlf;
        for (rej, raw) in r.rejects {
            (self.on_reject)(rej, &raw);
        }
    }

    fn line(&mut self, raw: &[u8]) -> Result<(), ReadError> {
        self.line += 1;
        let line = match raw.strip_suffix(b"\r") {
            Some(l) => {
                self.crlf = true;
                l
            }
            None => raw,
        };
        if is_blank(line) {
            self.blank += 1;
            return Ok(());
        }
        if self.format == Format::Empty {
            if line.iter().any(u8::is_ascii_alphabetic) {
                return self.header(line);
            }
            self.format = Format::Lines { separator: None };
        }
        self.data_lines += 1;
        if !line.is_ascii() && std::str::from_utf8(line).is_err() {
            return self.reject(raw, line, LineError::NotUtf8);
        }
        let (id, start, end) = match &mut self.format {
            Format::Lines { separator } => {
                let found = line.iter().position(|c| matches!(c, b';' | b',' | b'#'));
                match found {
                    None => (line, None, None),
                    Some(i) => {
                        let sep = line[i] as char;
                        match *separator {
                            None => *separator = Some(sep),
                            Some(expected) if expected != sep => {
                                let e = LineError::MixedSeparators { expected, found: sep };
                                return self.reject(raw, line, e);
                            }
                            Some(_) => {}
                        }
                        if line[i + 1..].contains(&line[i]) {
                            return self.reject(raw, line, LineError::TooManyFields);
                        }
                        (&line[..i], Some(&line[i + 1..]), None)
                    }
                }
            }
            Format::Header {
                delimiter,
                id,
                start,
                end,
                columns,
            } => {
                // Split only up to the last column needed; nothing is allocated.
                let want = 1 + [Some(*id), *start, *end].iter().flatten().max().copied().unwrap_or(0);
                let (mut idf, mut sf, mut ef, mut got): (&[u8], _, _, usize) = (&[], None, None, 0);
                for (i, f) in line.split(|c| *c == *delimiter as u8).enumerate().take(want) {
                    got += 1;
                    if i == *id {
                        idf = unquote(f);
                    }
                    if Some(i) == *start {
                        sf = Some(unquote(f));
                    }
                    if Some(i) == *end {
                        ef = Some(unquote(f));
                    }
                }
                if got < want {
                    let e = LineError::MissingColumns {
                        got,
                        want: columns.len(),
                    };
                    return self.reject(raw, line, e);
                }
                (idf, sf, ef)
            }
            Format::Empty => unreachable!("set above"),
        };
        let id = trim(id);
        if id.is_empty() {
            return self.reject(raw, line, LineError::MissingId);
        }
        let id_text = std::str::from_utf8(id).expect("checked UTF-8");
        let customer = match CustomerId::parse(id_text, &self.opts.policy) {
            Ok(c) => c,
            Err(e) => return self.reject(raw, line, LineError::Id(e)),
        };
        let start = match start.map(trim).filter(|s| !s.is_empty()) {
            None => None,
            Some(s) => match parse_date(s) {
                None => return self.reject(raw, line, LineError::BadStartDate),
                Some(d) if d > self.opts.today => return self.reject(raw, line, LineError::StartInFuture(d)),
                Some(d) if d.year() < 1900 => return self.reject(raw, line, LineError::StartBefore1900(d)),
                Some(d) => Some(d),
            },
        };
        if let Some(e) = end.map(trim).filter(|s| !s.is_empty()) {
            let Some(end) = parse_date(e) else {
                return self.reject(raw, line, LineError::BadEndDate);
            };
            if let Some(start) = start.filter(|s| end < *s) {
                return self.reject(raw, line, LineError::EndBeforeStart { start, end });
            }
            if end <= self.opts.today {
                self.closed += 1;
                return Ok(());
            }
        }
        self.entries
            .push(Packed::from_digits(id_text.trim().as_bytes(), customer.kind(), start));
        Ok(())
    }

    fn header(&mut self, line: &[u8]) -> Result<(), ReadError> {
        let text = String::from_utf8_lossy(line);
        let delimiter = [';', ',', '\t', '|']
            .into_iter()
            .find(|d| text.contains(*d))
            .unwrap_or(';');
        let columns: Vec<String> = text
            .split(delimiter)
            .map(|c| c.trim().trim_matches('"').trim().to_string())
            .collect();
        let find = |names: &[&str]| {
            columns
                .iter()
                .position(|c| names.iter().any(|n| c.eq_ignore_ascii_case(n)))
        };
        let Some(id) = find(&["customer_id", "kundeid", "kunde_id", "customerid"]) else {
            return Err(ReadError::NoIdColumn {
                line: self.line,
                columns: columns.iter().map(|c| mask(c)).collect::<Vec<_>>().join(", "),
            });
        };
        self.format = Format::Header {
            delimiter,
            id,
            start: find(&["start_date", "startdato", "start_dato"]),
            end: find(&["end_date", "sluttdato", "slutt_dato"]),
            columns,
        };
        Ok(())
    }

    /// The line as shown in messages: split as the format splits it, each field through
    /// [`show_field`], so dates stay readable and identifiers are masked. Only built for a
    /// rejected line: the valid path never formats.
    fn shown(&self, line: &[u8]) -> String {
        if std::str::from_utf8(line).is_err() {
            return mask(&String::from_utf8_lossy(line));
        }
        let sep = match &self.format {
            Format::Header { delimiter, .. } => Some(*delimiter as u8),
            _ => line.iter().copied().find(|c| matches!(c, b';' | b',' | b'#')),
        };
        match sep {
            None => mask(&String::from_utf8_lossy(line)),
            Some(sep) => line
                .split(|c| *c == sep)
                .map(show_field)
                .collect::<Vec<_>>()
                .join(&(sep as char).to_string()),
        }
    }

    fn reject(&mut self, raw: &[u8], line: &[u8], err: LineError) -> Result<(), ReadError> {
        self.rejected += 1;
        let r = Rejected {
            line: self.line,
            text: self.shown(line),
            rule: err.code(),
            message: err.to_string(),
        };
        (self.on_reject)(r, raw.strip_suffix(b"\r").unwrap_or(raw));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn today() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 6, 15).unwrap()
    }

    fn run(text: &str) -> (ReadOutcome, Vec<Rejected>) {
        let mut rej = vec![];
        let out = read(
            text.as_bytes(),
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
}
