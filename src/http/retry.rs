//! Retrying one HTTP operation: the policy (how many attempts, how long between them), capped
//! exponential backoff with full jitter, and the server's `Retry-After` in both of its forms.
//!
//! Used by the Maskinporten token client and the KFR client alike; neither keeps its own copy.
//! Deciding *whether* an answer is worth retrying is the caller's business (each service has its
//! own error model); this module only says how long to wait and when to stop.

use std::time::{Duration, SystemTime};

/// How one operation is retried after a transient failure or a rate limit.
///
/// Between attempts the client waits a random time in `0..=min(max_delay, base_delay·2^(n-1))`
/// (full jitter, so many clients that failed together do not come back together), but never
/// less than the server's `Retry-After`, which is honoured up to `retry_after_cap`. The cap is
/// separate from `max_delay` and much larger: a server that says "come back in two minutes"
/// means it, and coming back after eight seconds only earns another refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, including the first (at least 1).
    pub max_attempts: u32,
    pub base_delay: Duration,
    /// Ceiling of our own backoff.
    pub max_delay: Duration,
    /// Longest `Retry-After` waited for; a longer one is waited for this long.
    pub retry_after_cap: Duration,
}

/// Default attempts in all.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 4;
/// Default first backoff ceiling.
pub const DEFAULT_BASE_DELAY: Duration = Duration::from_millis(250);
/// Default backoff ceiling.
pub const DEFAULT_MAX_DELAY: Duration = Duration::from_secs(8);
/// Default cap on a server's `Retry-After`: minutes, not seconds.
pub const DEFAULT_RETRY_AFTER_CAP: Duration = Duration::from_secs(300);

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            base_delay: DEFAULT_BASE_DELAY,
            max_delay: DEFAULT_MAX_DELAY,
            retry_after_cap: DEFAULT_RETRY_AFTER_CAP,
        }
    }
}

impl RetryPolicy {
    /// No waiting between attempts, not even for `Retry-After`: for tests, so retry paths run
    /// in milliseconds. Combine with [`RetryPolicy::with_retry_after_cap`] to test that a
    /// server's delay is honoured.
    pub fn immediate(max_attempts: u32) -> Self {
        Self {
            max_attempts,
            base_delay: Duration::ZERO,
            max_delay: Duration::ZERO,
            retry_after_cap: Duration::ZERO,
        }
    }

    /// The same policy with another cap on `Retry-After`.
    pub fn with_retry_after_cap(mut self, cap: Duration) -> Self {
        self.retry_after_cap = cap;
        self
    }

    /// Our own backoff before retry number `retry` (1-based): full jitter over
    /// `min(max_delay, base_delay·2^(retry-1))`.
    pub fn backoff(&self, retry: u32) -> Duration {
        let ceiling = self
            .base_delay
            .saturating_mul(1 << retry.saturating_sub(1).min(16))
            .min(self.max_delay);
        ceiling.mul_f64(rand::random::<f64>())
    }

    /// The wait before retry number `retry`: the backoff, but at least the server's delay
    /// (`Retry-After`) as far as the cap allows.
    pub fn delay(&self, retry: u32, server_delay: Option<Duration>) -> Duration {
        let floor = server_delay.unwrap_or_default().min(self.retry_after_cap);
        self.backoff(retry).max(floor)
    }

    /// After `attempts_made` attempts failed in a retryable way: the wait before the next one,
    /// or `None` when the attempts are used up.
    pub fn next_delay(&self, attempts_made: u32, server_delay: Option<Duration>) -> Option<Duration> {
        (attempts_made < self.max_attempts.max(1)).then(|| self.delay(attempts_made, server_delay))
    }
}

/// A response's `Retry-After` as a duration.
///
/// The HTTP-date form is measured against the response's own `Date` header when it has one, so
/// a host whose clock is off does not misread the server's wish; without `Date`, against the
/// local clock. A date in the past means "now".
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    let now = headers
        .get(reqwest::header::DATE)
        .and_then(|d| d.to_str().ok())
        .and_then(|d| httpdate::parse_http_date(d).ok())
        .unwrap_or_else(SystemTime::now);
    parse_retry_after(value, now)
}

/// Parses a `Retry-After` value (RFC 9110 §10.2.3): delta-seconds or an HTTP-date, relative to
/// `now`. Anything else (negative, fractional, garbage) is `None`.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        // Absurdly long digit strings saturate instead of failing: the cap bounds the wait.
        return Some(Duration::from_secs(v.parse().unwrap_or(u64::MAX)));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            retry_after_cap: Duration::from_secs(300),
        }
    }

    #[test]
    fn backoff_is_capped_and_jittered() {
        let p = policy();
        for retry in 1..20 {
            let d = p.delay(retry, None);
            assert!(d <= Duration::from_secs(1), "{d:?}");
            assert!(d <= Duration::from_millis(100).saturating_mul(2u32.saturating_pow(retry - 1)));
        }
        // Full jitter: over many draws the waits differ (not a fixed schedule).
        let draws: std::collections::HashSet<_> = (0..50).map(|_| p.backoff(4)).collect();
        assert!(draws.len() > 1);
        assert_eq!(RetryPolicy::immediate(3).delay(2, None), Duration::ZERO);
    }

    #[test]
    fn retry_after_is_honoured_up_to_its_own_cap_not_max_delay() {
        let p = policy();
        assert_eq!(p.delay(1, Some(Duration::from_secs(120))), Duration::from_secs(120));
        assert_eq!(p.delay(1, Some(Duration::from_secs(3600))), Duration::from_secs(300));
        assert!(p.delay(1, Some(Duration::from_millis(1500))) >= Duration::from_millis(1500));
        // The test policy waits for nothing unless told to.
        assert_eq!(
            RetryPolicy::immediate(2).delay(1, Some(Duration::from_secs(60))),
            Duration::ZERO
        );
        assert_eq!(
            RetryPolicy::immediate(2)
                .with_retry_after_cap(Duration::from_secs(2))
                .delay(1, Some(Duration::from_secs(60))),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn next_delay_stops_after_max_attempts() {
        let p = RetryPolicy::immediate(3);
        assert!(p.next_delay(1, None).is_some());
        assert!(p.next_delay(2, None).is_some());
        assert_eq!(p.next_delay(3, None), None);
        assert_eq!(RetryPolicy::immediate(0).next_delay(1, None), None, "0 behaves as 1");
    }

    #[test]
    fn retry_after_in_both_forms() {
        let now = httpdate::parse_http_date("Tue, 01 Dec 2026 12:00:00 GMT").unwrap();
        assert_eq!(parse_retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Tue, 01 Dec 2026 12:02:30 GMT", now),
            Some(Duration::from_secs(150))
        );
        assert_eq!(
            parse_retry_after("Tue, 01 Dec 2026 11:59:00 GMT", now),
            Some(Duration::ZERO),
            "a past date means now"
        );
        for bad in ["", "-5", "1.5", "soon", "99999999999999999999x"] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
        assert_eq!(
            parse_retry_after("99999999999999999999", now),
            Some(Duration::from_secs(u64::MAX))
        );
    }

    #[test]
    fn the_date_form_is_read_against_the_servers_date_header() {
        use reqwest::header::{DATE, HeaderMap, HeaderValue, RETRY_AFTER};
        let mut h = HeaderMap::new();
        // The server's clock says 12:00; it wants us back at 12:01, whatever our clock says.
        h.insert(DATE, HeaderValue::from_static("Tue, 01 Dec 2026 12:00:00 GMT"));
        h.insert(RETRY_AFTER, HeaderValue::from_static("Tue, 01 Dec 2026 12:01:00 GMT"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(60)));
        h.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.remove(RETRY_AFTER);
        assert_eq!(retry_after(&h), None);
    }
}
