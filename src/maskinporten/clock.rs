//! Clock-offset measurement. Maskinporten refuses grants whose `iat` is more than ~10 s off its
//! own clock (kfr-notes §3), and a host with a drifting clock is a classic first-day failure.
//! We read the server's `Date` header (RFC 9110 §6.6.1, one-second resolution) on every answer
//! and shift `iat`/`exp` by the offset when it is large enough to matter.

use std::time::{SystemTime, UNIX_EPOCH};

/// Offsets smaller than this are treated as zero: `Date` has one-second resolution and the
/// answer took some time to arrive, so ±1 s is measurement noise, not skew.
pub const SIGNIFICANT_OFFSET_SECS: i64 = 2;

/// Local Unix time in seconds (fractional).
pub fn local_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// `server - local` in whole seconds from a response's `Date` header, or `None` without one.
pub fn offset_from(resp: &reqwest::Response) -> Option<i64> {
    let date = resp.headers().get(reqwest::header::DATE)?.to_str().ok()?;
    offset_from_date(date, local_now())
}

/// As [`offset_from`], for a header value and a local time (testable).
pub fn offset_from_date(date: &str, local: f64) -> Option<i64> {
    let server = httpdate::parse_http_date(date)
        .ok()?
        .duration_since(UNIX_EPOCH)
        .ok()?
        .as_secs() as f64;
    // The server truncated its clock to the second: its true time was in [server, server + 1).
    let raw = (server + 0.5 - local).round() as i64;
    Some(if raw.abs() < SIGNIFICANT_OFFSET_SECS { 0 } else { raw })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_offsets_are_noise_large_ones_are_measured() {
        let t = 1_795_000_000.0;
        let fmt = |s: f64| httpdate::fmt_http_date(UNIX_EPOCH + std::time::Duration::from_secs_f64(s));
        assert_eq!(offset_from_date(&fmt(t), t + 0.4), Some(0));
        assert_eq!(offset_from_date(&fmt(t + 60.0), t + 0.2), Some(60));
        assert_eq!(offset_from_date(&fmt(t - 45.0), t + 0.2), Some(-45));
        assert_eq!(offset_from_date("not a date", t), None);
    }
}
