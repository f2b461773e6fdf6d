//! The fake KFR's register and its batch ingest queue: which customers each institution has
//! registered, over which periods, and the accepted-but-not-yet-stored batch entries.
//!
//! History (kfr-notes §1, §6): a relationship is a period `[start, end)`. `start` comes from a
//! batch entry's `#YYYY-MM-DD` or is the mock's today; `end` is the day of deletion and is
//! exclusive, so a relationship deleted today no longer shows in today's own lookup (kfr-notes
//! §8 case 6) while lookups over earlier days still find it. Re-adding after a deletion starts a
//! new period.
//!
//! Memory: the e2e benchmark pushes 1.1 M relationships through the mock, so storage is compact.
//! A customer identifier (9 or 11 digits) is packed into a `u64` ([`IdKey`]); a period is two
//! day numbers. The latest period of every customer lives in one flat map (≈ 16 bytes payload a
//! relationship); only customers with ended earlier periods get a `Vec` in a second map.
//!
//! Ingestion (kfr-notes §6): accepted batches queue up whole and are drained in file order, batch
//! after batch, so "last entry visible ⇒ whole batch stored" holds. Register and queue share one
//! lock so that a reset or a drain step is atomic with respect to lookups.

use chrono::{Datelike, NaiveDate};
use std::collections::{HashMap, VecDeque};

/// A customer identifier packed into an integer: the digits as a number, with the digit count in
/// bits 40.. so that leading zeros survive (11 digits < 2^37).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct IdKey(u64);

impl IdKey {
    const LEN_SHIFT: u32 = 40;

    /// Packs a string of 1..=11 ASCII digits; anything else is `None`.
    pub(crate) fn pack(digits: &str) -> Option<IdKey> {
        let b = digits.as_bytes();
        if b.is_empty() || b.len() > 11 || !b.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = b.iter().fold(0u64, |acc, d| acc * 10 + u64::from(d - b'0'));
        Some(IdKey(n | ((b.len() as u64) << Self::LEN_SHIFT)))
    }

    /// The digits again, leading zeros included.
    pub(crate) fn unpack(self) -> String {
        let len = (self.0 >> Self::LEN_SHIFT) as usize;
        let n = self.0 & ((1 << Self::LEN_SHIFT) - 1);
        format!("{n:0len$}")
    }
}

/// A day as days since 0001-01-01 (chrono's "from CE"). Plain integers let the open end be a
/// sentinel ([`OPEN`]) instead of an `Option`, and keep a period at 8 bytes.
pub(crate) type Day = i32;

/// `end` of a period that has not ended.
const OPEN: Day = Day::MAX;

pub(crate) fn day(date: NaiveDate) -> Day {
    date.num_days_from_ce()
}

fn date(day: Day) -> NaiveDate {
    NaiveDate::from_num_days_from_ce_opt(day).expect("day numbers come from valid dates")
}

/// One relationship period, `[start, end)`; `end == OPEN` while it lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Period {
    start: Day,
    end: Day,
}

impl Period {
    fn is_open(&self) -> bool {
        self.end == OPEN
    }

    /// Overlap with the closed day range `[from, to]`; an empty period (added and deleted the
    /// same day) overlaps nothing.
    fn overlaps(&self, from: Day, to: Day) -> bool {
        self.start < self.end && self.start <= to && self.end > from
    }
}

/// One institution's relationships.
#[derive(Debug, Default)]
struct OrgRegister {
    /// The latest period of every customer ever registered.
    latest: HashMap<IdKey, Period>,
    /// Earlier, ended periods; only for customers that were deleted and added again.
    past: HashMap<IdKey, Vec<Period>>,
    /// Customers whose latest period is open.
    active: usize,
}

/// Result of registering one relationship.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Added {
    /// A new period started (201).
    New,
    /// An open period already existed; nothing changed (200).
    AlreadyPresent,
}

impl OrgRegister {
    fn add(&mut self, key: IdKey, start: Day) -> Added {
        match self.latest.get(&key).copied() {
            Some(p) if p.is_open() => Added::AlreadyPresent,
            Some(ended) => {
                self.past.entry(key).or_default().push(ended);
                self.latest.insert(key, Period { start, end: OPEN });
                self.active += 1;
                Added::New
            }
            None => {
                self.latest.insert(key, Period { start, end: OPEN });
                self.active += 1;
                Added::New
            }
        }
    }

    /// Ends the open period on `today`. A period dated to start after today (a future start
    /// from a batch entry) ends at its own start: it never was in force.
    fn remove(&mut self, key: IdKey, today: Day) -> bool {
        match self.latest.get_mut(&key) {
            Some(p) if p.is_open() => {
                p.end = today.max(p.start);
                self.active -= 1;
                true
            }
            _ => false,
        }
    }

    fn overlaps(&self, key: IdKey, from: Day, to: Day) -> bool {
        self.latest.get(&key).is_some_and(|p| p.overlaps(from, to))
            || self
                .past
                .get(&key)
                .is_some_and(|ps| ps.iter().any(|p| p.overlaps(from, to)))
    }
}

/// One accepted batch entry waiting to be ingested.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PendingEntry {
    pub key: IdKey,
    /// The entry's start date; `None` means "the day it is ingested" (spec: default today).
    pub start: Option<Day>,
}

#[derive(Debug)]
struct QueuedBatch {
    org: String,
    entries: Vec<PendingEntry>,
    /// Entries before this index are ingested.
    next: usize,
}

/// A register row for `GET /_mock/relationships`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RelationshipRow {
    pub organization_id: String,
    pub customer_id: String,
    pub start_date: NaiveDate,
    /// The day of deletion (exclusive); `null` while the relationship lasts.
    pub end_date: Option<NaiveDate>,
}

/// Every institution's register plus the ingest queue.
#[derive(Debug, Default)]
pub(crate) struct Register {
    orgs: HashMap<String, OrgRegister>,
    queue: VecDeque<QueuedBatch>,
    /// Entries waiting in `queue`.
    queued: usize,
    /// Entries ingested since start or reset.
    ingested: u64,
}

impl Register {
    pub(crate) fn add(&mut self, org: &str, key: IdKey, today: Day) -> Added {
        self.org_mut(org).add(key, today)
    }

    pub(crate) fn remove(&mut self, org: &str, key: IdKey, today: Day) -> bool {
        self.orgs.get_mut(org).is_some_and(|r| r.remove(key, today))
    }

    /// Whether `org` had a relationship with the customer on any day of `[from, to]`.
    pub(crate) fn overlaps(&self, org: &str, key: IdKey, from: Day, to: Day) -> bool {
        self.orgs.get(org).is_some_and(|r| r.overlaps(key, from, to))
    }

    fn org_mut(&mut self, org: &str) -> &mut OrgRegister {
        if !self.orgs.contains_key(org) {
            self.orgs.insert(org.to_string(), OrgRegister::default());
        }
        self.orgs.get_mut(org).expect("just inserted")
    }

    /// Queues a whole, already validated batch behind the ones before it.
    pub(crate) fn enqueue(&mut self, org: &str, entries: Vec<PendingEntry>) {
        if entries.is_empty() {
            return;
        }
        self.queued += entries.len();
        self.queue.push_back(QueuedBatch {
            org: org.to_string(),
            entries,
            next: 0,
        });
    }

    /// Ingests up to `max` queued entries in file order; entries without a date start on
    /// `today`. Returns how many were ingested.
    pub(crate) fn ingest(&mut self, max: usize, today: Day) -> usize {
        let mut done = 0;
        while done < max {
            let Some(batch) = self.queue.front_mut() else { break };
            let take = (max - done).min(batch.entries.len() - batch.next);
            let org = self.orgs.entry(batch.org.clone()).or_default();
            for e in &batch.entries[batch.next..batch.next + take] {
                // An entry for a customer already registered leaves the open period as it is,
                // like a single add answering 200.
                org.add(e.key, e.start.unwrap_or(today));
            }
            batch.next += take;
            done += take;
            if batch.next == batch.entries.len() {
                self.queue.pop_front();
            }
        }
        self.queued -= done;
        self.ingested += done as u64;
        done
    }

    /// Whether an accepted batch entry for `org` and the customer still waits to be ingested.
    pub(crate) fn is_queued(&self, org: &str, key: IdKey) -> bool {
        self.queue
            .iter()
            .filter(|b| b.org == org)
            .any(|b| b.entries[b.next..].iter().any(|e| e.key == key))
    }

    pub(crate) fn queued(&self) -> usize {
        self.queued
    }

    pub(crate) fn ingested(&self) -> u64 {
        self.ingested
    }

    /// Open relationships over all institutions.
    pub(crate) fn active(&self) -> usize {
        self.orgs.values().map(|r| r.active).sum()
    }

    /// Every period of every institution, sorted by institution, customer and start.
    pub(crate) fn rows(&self) -> Vec<RelationshipRow> {
        let mut keyed: Vec<(&str, IdKey, Period)> = Vec::new();
        for (org, r) in &self.orgs {
            for (k, p) in &r.latest {
                keyed.push((org, *k, *p));
            }
            for (k, ps) in &r.past {
                keyed.extend(ps.iter().map(|p| (org.as_str(), *k, *p)));
            }
        }
        keyed.sort_unstable_by(|a, b| (a.0, a.1, a.2.start).cmp(&(b.0, b.1, b.2.start)));
        keyed
            .into_iter()
            .map(|(org, k, p)| RelationshipRow {
                organization_id: org.to_string(),
                customer_id: k.unpack(),
                start_date: date(p.start),
                end_date: (!p.is_open()).then(|| date(p.end)),
            })
            .collect()
    }

    /// Forgets every relationship and every queued entry.
    pub(crate) fn clear(&mut self) {
        *self = Register::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Day {
        day(s.parse().unwrap())
    }

    fn key(s: &str) -> IdKey {
        IdKey::pack(s).unwrap()
    }

    #[test]
    fn id_keys_keep_leading_zeros_and_length() {
        for s in ["01010112345", "916960190", "00000000000", "99999999999", "000000001"] {
            assert_eq!(key(s).unpack(), s);
        }
        assert_ne!(key("000000001"), key("00000000001"));
        assert!(IdKey::pack("").is_none() && IdKey::pack("123456789012").is_none() && IdKey::pack("12a").is_none());
    }

    #[test]
    fn add_remove_readd_keeps_history_with_exclusive_end() {
        let mut r = Register::default();
        let k = key("916960190");
        assert_eq!(r.add("o", k, d("2024-01-10")), Added::New);
        assert_eq!(r.add("o", k, d("2024-01-11")), Added::AlreadyPresent);
        assert!(r.remove("o", k, d("2024-02-01")));
        assert!(!r.remove("o", k, d("2024-02-01")), "nothing open any more");
        assert!(r.overlaps("o", k, d("2024-01-10"), d("2024-01-10")));
        assert!(r.overlaps("o", k, d("2024-01-31"), d("2024-01-31")));
        assert!(
            !r.overlaps("o", k, d("2024-02-01"), d("2024-02-01")),
            "end is exclusive"
        );
        assert!(!r.overlaps("o", k, d("2024-01-01"), d("2024-01-09")));
        assert!(r.overlaps("o", k, d("2023-01-01"), d("2030-01-01")));
        assert!(
            !r.overlaps("other", k, d("2023-01-01"), d("2030-01-01")),
            "per institution"
        );
        assert_eq!(r.active(), 0);
        assert_eq!(r.add("o", k, d("2024-03-01")), Added::New);
        assert_eq!(r.active(), 1);
        assert!(
            !r.overlaps("o", k, d("2024-02-10"), d("2024-02-20")),
            "the gap stays a gap"
        );
        let rows = r.rows();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].end_date, Some("2024-02-01".parse().unwrap()));
        assert_eq!(rows[1].start_date, "2024-03-01".parse::<NaiveDate>().unwrap());
        assert_eq!(rows[1].end_date, None);
    }

    #[test]
    fn ingestion_follows_file_order_across_batches() {
        let mut r = Register::default();
        let entries = |ids: &[&str]| {
            ids.iter()
                .map(|s| PendingEntry {
                    key: key(s),
                    start: None,
                })
                .collect::<Vec<_>>()
        };
        r.enqueue("o", entries(&["000000001", "000000002", "000000003"]));
        r.enqueue("o", entries(&["000000004"]));
        r.enqueue("o", vec![]);
        assert_eq!(r.queued(), 4);
        let today = d("2025-05-05");
        assert_eq!(r.ingest(2, today), 2);
        assert!(r.overlaps("o", key("000000002"), today, today));
        assert!(!r.overlaps("o", key("000000003"), today, today));
        assert_eq!(r.ingest(10, today), 2);
        assert!(r.overlaps("o", key("000000004"), today, today));
        assert_eq!((r.queued(), r.ingested(), r.active()), (0, 4, 4));
        assert_eq!(r.ingest(10, today), 0);
        r.clear();
        assert_eq!((r.queued(), r.ingested(), r.active(), r.rows().len()), (0, 0, 0, 0));
    }

    #[test]
    fn removing_a_future_dated_relationship_leaves_an_empty_period() {
        let mut r = Register::default();
        let k = key("916960190");
        r.add("o", k, d("2030-01-01"));
        assert!(r.remove("o", k, d("2025-01-01")));
        assert!(!r.overlaps("o", k, d("2000-01-01"), d("2040-01-01")));
    }
}
