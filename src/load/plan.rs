//! The planner: unique relationships → batch files, each within the size limit and filled to at
//! least 95 % of it except the last (of the load, or of a day with `--max-per-day`).
//!
//! Sizes are exact, not estimated: [`Layout::body_size`] is the size of the multipart body the
//! encoder will produce, so a batch is never refused for size and never sent half-empty. Filling
//! greedily in identifier order leaves at most one entry's worth (23 bytes + a comma) unused per
//! batch, which is why `max_batch_bytes` has a floor (`MIN_BATCH_BYTES` in the configuration).
//!
//! Day schedule (onboarding D-3 step 5): with `max_per_day`, batches never straddle a day, and the
//! plan says whether any day exceeds 100,000 relationships, the threshold above which Bits must be
//! told in advance.

use super::reader::Packed;
use crate::kfr::Layout;

/// More relationships than this in one day must be announced to Bits (DSOP@bits.no).
pub const NOTIFY_BITS_ABOVE_PER_DAY: u64 = 100_000;

/// Share of the size limit every batch but the last must reach.
pub const MIN_FILL: f64 = 0.95;

/// One planned batch file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PlannedBatch {
    /// 1-based upload order.
    pub seq: u32,
    /// Index of the first entry in the sorted entry list.
    pub first: usize,
    pub count: usize,
    /// Exact encoded body size.
    pub bytes: usize,
    /// 1-based day of the schedule.
    pub day: u32,
}

/// One day of the schedule.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Day {
    pub day: u32,
    pub first_batch: u32,
    pub last_batch: u32,
    pub entries: u64,
}

/// The whole plan.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Plan {
    pub max_batch_bytes: usize,
    pub ingest_rate: u32,
    pub max_per_day: Option<u64>,
    pub batches: Vec<PlannedBatch>,
    pub days: Vec<Day>,
    pub entries: u64,
    /// Seconds KFR needs to ingest everything at `ingest_rate`.
    pub ingestion_secs: f64,
    /// Most relationships registered in one day, and whether that needs telling Bits.
    pub peak_per_day: u64,
    pub notify_bits: bool,
    /// The start dates the batches carry, so the operator can see them before anything is sent
    /// (a wrong date column shows up here as a surprising range).
    pub start_dates: StartDates,
}

/// The range of start dates in a plan.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct StartDates {
    pub earliest: Option<chrono::NaiveDate>,
    pub latest: Option<chrono::NaiveDate>,
    /// Entries without a start date: KFR gives them the day it ingests them.
    pub undated: u64,
}

/// Plans `entries` (already sorted and unique) into batches.
pub fn plan(
    entries: &[Packed],
    layout: &Layout,
    max_batch_bytes: usize,
    ingest_rate: u32,
    max_per_day: Option<u64>,
) -> Plan {
    let mut batches: Vec<PlannedBatch> = vec![];
    let mut days: Vec<Day> = vec![];
    let (mut first, mut count, mut entry_bytes) = (0usize, 0usize, 0usize);
    let mut day = 1u32;
    let mut day_used = 0u64;
    // `Layout::body_size` formats the fixed parts on every call; per entry that is too slow for
    // 10 M lines, so the same formula runs here with the overhead computed once, and each
    // closed batch is checked against the layout's own answer.
    let overhead = layout.overhead();
    let size = |n: usize, bytes: usize| overhead + bytes + n.saturating_sub(1);
    let close = |batches: &mut Vec<PlannedBatch>, first: usize, count: usize, entry_bytes: usize, day: u32| {
        let bytes = layout.body_size(count, entry_bytes);
        debug_assert_eq!(bytes, size(count, entry_bytes));
        batches.push(PlannedBatch {
            seq: batches.len() as u32 + 1,
            first,
            count,
            bytes,
            day,
        });
    };
    let mut start_dates = StartDates::default();
    for (i, e) in entries.iter().enumerate() {
        match e.start() {
            Some(d) => {
                start_dates.earliest = Some(start_dates.earliest.map_or(d, |x| x.min(d)));
                start_dates.latest = Some(start_dates.latest.map_or(d, |x| x.max(d)));
            }
            None => start_dates.undated += 1,
        }
        let len = e.encoded_len();
        let day_full = max_per_day.is_some_and(|m| day_used + count as u64 >= m);
        if count > 0 && (day_full || size(count + 1, entry_bytes + len) > max_batch_bytes) {
            close(&mut batches, first, count, entry_bytes, day);
            day_used += count as u64;
            if day_full {
                day += 1;
                day_used = 0;
            }
            (first, count, entry_bytes) = (i, 0, 0);
        }
        count += 1;
        entry_bytes += len;
    }
    if count > 0 {
        close(&mut batches, first, count, entry_bytes, day);
    }
    for b in &batches {
        match days.last_mut() {
            Some(d) if d.day == b.day => {
                d.last_batch = b.seq;
                d.entries += b.count as u64;
            }
            _ => days.push(Day {
                day: b.day,
                first_batch: b.seq,
                last_batch: b.seq,
                entries: b.count as u64,
            }),
        }
    }
    let total = entries.len() as u64;
    // Without a daily cap everything is sent at once; a day then holds what KFR ingests in 24 h.
    let peak_per_day = match max_per_day {
        Some(_) => days.iter().map(|d| d.entries).max().unwrap_or(0),
        None => total.min(u64::from(ingest_rate) * 86_400),
    };
    Plan {
        start_dates,
        max_batch_bytes,
        ingest_rate,
        max_per_day,
        batches,
        days,
        entries: total,
        ingestion_secs: total as f64 / f64::from(ingest_rate),
        peak_per_day,
        notify_bits: peak_per_day > NOTIFY_BITS_ABOVE_PER_DAY,
    }
}

/// `1 h 13 min 20 s` style.
pub fn human_duration(secs: f64) -> String {
    let s = secs.ceil() as u64;
    let (h, m, s) = (s / 3600, s / 60 % 60, s % 60);
    match (h, m) {
        (0, 0) => format!("{s} s"),
        (0, _) => format!("{m} min {s} s"),
        _ => format!("{h} h {m} min {s} s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{CustomerId, IdPolicy};
    use crate::kfr::BatchEntry;
    use crate::load::ToEntry as _;

    fn entries(n: usize) -> Vec<Packed> {
        // Synthetic org numbers with valid check digits, every third one dated.
        let mut out = vec![];
        let mut base = 30_000_000_u64;
        while out.len() < n {
            base += 1;
            let text = format!("{base:08}");
            let w = [3, 2, 7, 6, 5, 4, 3, 2];
            let sum: u32 = text.bytes().zip(w).map(|(b, w)| u32::from(b - b'0') * w).sum();
            let check = match 11 - sum % 11 {
                11 => 0,
                10 => continue,
                c => c,
            };
            let id = format!("{text}{check}");
            let date = if out.len() % 3 == 0 { ";2020-02-29" } else { "" };
            let line = format!("{id}{date}\n");
            let r = super::super::reader::read(
                line.as_bytes(),
                None,
                super::super::reader::ReadOptions {
                    policy: IdPolicy::test(),
                    today: chrono::NaiveDate::from_ymd_opt(2026, 1, 1).unwrap(),
                    hash: false,
                },
                |_, _| panic!("invalid {id}"),
            )
            .unwrap();
            out.extend(r.entries);
        }
        out.sort_unstable();
        out
    }

    #[test]
    fn batches_are_exact_within_limit_and_filled() {
        let es = entries(2_000);
        let layout = Layout::new();
        for max in [1024usize, 4000, 9999] {
            let p = plan(&es, &layout, max, 250, None);
            assert_eq!(p.batches.iter().map(|b| b.count).sum::<usize>(), es.len());
            for (i, b) in p.batches.iter().enumerate() {
                let body: Vec<BatchEntry> = es[b.first..b.first + b.count].iter().map(|e| e.to_entry()).collect();
                assert_eq!(layout.encode(&body).bytes.len(), b.bytes, "exact size");
                assert!(b.bytes <= max);
                if i + 1 < p.batches.len() {
                    assert!(
                        b.bytes as f64 >= MIN_FILL * max as f64,
                        "batch {} is {} of {max}",
                        b.seq,
                        b.bytes
                    );
                }
            }
        }
        let _ = CustomerId::parse("916960190", &IdPolicy::test()).unwrap();
    }

    #[test]
    fn days_cap_entries_and_say_when_bits_must_be_told() {
        let es = entries(1_000);
        let p = plan(&es, &Layout::new(), 1024, 250, Some(300));
        assert_eq!(p.days.len(), 4);
        assert!(p.days.iter().all(|d| d.entries <= 300));
        assert_eq!(p.days.iter().map(|d| d.entries).sum::<u64>(), 1_000);
        assert!(p.batches.windows(2).all(|w| w[0].day <= w[1].day));
        assert!(!p.notify_bits);
        let p = plan(&es, &Layout::new(), 1024, 250, None);
        assert_eq!(p.peak_per_day, 1_000);
        assert!((p.ingestion_secs - 4.0).abs() < 1e-9);
        assert_eq!(human_duration(4400.0), "1 h 13 min 20 s");
    }

    #[test]
    fn empty_input_has_no_batches() {
        let p = plan(&[], &Layout::new(), 1024, 250, None);
        assert!(p.batches.is_empty() && p.days.is_empty());
    }
}
