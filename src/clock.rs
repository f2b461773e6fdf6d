//! The Norwegian calendar day: what "today" means for KFR, whatever the host's time zone.
//!
//! KFR is a Norwegian register, so the default start date of an entry, the default lookup
//! period and the day a delete ends a relationship are days in Europe/Oslo. Between 22:00 or
//! 23:00 UTC (summer or winter time) and midnight UTC that day is already tomorrow in Oslo, and a
//! host in UTC (or any other zone) would be a day behind. Every "today" in `kfr` and in the mock
//! comes from here; the time-zone rules come from the tz database (`chrono-tz`), so summer time
//! changes follow the law rather than our arithmetic.

use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Europe::Oslo;

/// The Europe/Oslo calendar date at the instant `utc`.
pub fn oslo_date(utc: DateTime<Utc>) -> NaiveDate {
    utc.with_timezone(&Oslo).date_naive()
}

/// Today in Oslo, by this host's clock.
pub fn oslo_today() -> NaiveDate {
    oslo_date(Utc::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn the_oslo_day_begins_at_23_utc_in_winter_and_22_utc_in_summer() {
        // Winter (CET, UTC+1).
        assert_eq!(oslo_date(at("2026-12-01T23:30:00Z")).to_string(), "2026-12-02");
        assert_eq!(oslo_date(at("2026-12-01T22:59:59Z")).to_string(), "2026-12-01");
        // Summer (CEST, UTC+2).
        assert_eq!(oslo_date(at("2026-07-01T22:00:00Z")).to_string(), "2026-07-02");
        assert_eq!(oslo_date(at("2026-07-01T21:59:59Z")).to_string(), "2026-07-01");
        // The switch days: summer time starts 2026-03-29 01:00 UTC and ends 2026-10-25 01:00 UTC.
        assert_eq!(oslo_date(at("2026-03-28T22:30:00Z")).to_string(), "2026-03-28");
        assert_eq!(oslo_date(at("2026-03-29T22:30:00Z")).to_string(), "2026-03-30");
        assert_eq!(oslo_date(at("2026-10-24T22:30:00Z")).to_string(), "2026-10-25");
        assert_eq!(oslo_date(at("2026-10-25T22:30:00Z")).to_string(), "2026-10-25");
        // New Year's Eve, an hour before midnight UTC.
        assert_eq!(oslo_date(at("2026-12-31T23:00:00Z")).to_string(), "2027-01-01");
    }
}
