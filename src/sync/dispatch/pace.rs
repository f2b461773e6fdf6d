//! The dispatcher's pace: the one global rate limit every KFR request passes (on tokio's clock,
//! so paused-time tests drive it), and the pause that stops all claiming after a 429, an
//! outage's `Retry-After`, or a systemic verdict (issue 11 item 4).

use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// Added to the spacing so that a late wake-up of one request and a punctual one of the request
/// `rate` places after it still lie a full second apart: tokio's timer wakes on whole
/// milliseconds, plus scheduling. It costs 0.5 % of the rate at any rate.
const JITTER_MARGIN: Duration = Duration::from_millis(5);

/// The global rate limit: at most `rate` requests in any one second, spaced evenly (no burst).
///
/// Each caller reserves the next free slot when it asks and sleeps until it, so the schedule
/// does not drift when a sleeper wakes late. (A check-then-sleep GCRA limiter with burst 1, as
/// this was with the `governor` crate, restarts the spacing from each late wake-up: at 250/s that
/// lost ~1 ms of every 4 and delivered 196/s; docs/benchmarks.md "Sync agent".) Slots are
/// `(1 s + JITTER_MARGIN) / rate` apart, so even with wake-ups up to that margin late, request
/// `i + rate` goes at least one second after request `i`. A reserved slot whose caller gave up
/// (shutdown) stays used: the rate only errs low.
#[derive(Debug)]
pub(crate) struct RateGate {
    period: Duration,
    /// The next free slot.
    next: Mutex<Option<Instant>>,
}

impl RateGate {
    /// `rate` requests a second (at least one a day; non-finite or non-positive means one a second).
    pub(crate) fn new(rate: f64) -> Self {
        let rate = if rate.is_finite() && rate > 0.0 { rate } else { 1.0 };
        let secs = (1.0 + JITTER_MARGIN.as_secs_f64()) / rate;
        let period = Duration::from_secs_f64(secs.min(86_400.0)).max(Duration::from_nanos(1));
        Self {
            period,
            next: Mutex::new(None),
        }
    }

    /// Waits (tokio time) until a request may go.
    pub(crate) async fn until_ready(&self) {
        let at = {
            let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let at = next.map_or(now, |n| n.max(now));
            *next = Some(at + self.period);
            at
        };
        tokio::time::sleep_until(at).await;
    }
}

/// Why the dispatcher is paused, as the metrics label it.
pub(crate) type Cause = &'static str;

/// What the main loop may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Gate {
    Open,
    /// Paused: claim nothing.
    Closed,
    /// Paused on a systemic verdict, and a probe is due: claim one event and send it.
    Probe,
}

/// The pause state, behind the dispatcher's mutex.
#[derive(Debug, Default)]
pub(crate) struct Pause {
    /// A timed pause (429, an outage's `Retry-After`) ends here.
    until: Option<(Instant, Cause)>,
    /// A systemic pause: its cause and reason; ends only when a probe is delivered.
    systemic: Option<(Cause, String)>,
    next_probe: Option<Instant>,
    /// 429s in a row, for the backoff that grows while KFR keeps refusing.
    pub(crate) rate_limited_streak: u32,
}

impl Pause {
    pub(crate) fn gate(&mut self, now: Instant) -> Gate {
        if let Some((until, cause)) = self.until {
            if now < until {
                return Gate::Closed;
            }
            self.until = None;
            metrics::gauge!("kfr_sync_paused", "cause" => cause).set(0.0);
            tracing::info!(cause, "delivery resumes after a timed pause");
        }
        if self.systemic.is_some() {
            if self.next_probe.is_some_and(|p| now >= p) {
                self.next_probe = None;
                return Gate::Probe;
            }
            return Gate::Closed;
        }
        Gate::Open
    }

    /// When the gate may change by itself: a timed pause ends or a probe falls due. The main
    /// loop wakes then instead of at its next poll.
    pub(crate) fn changes_at(&self) -> Option<Instant> {
        let until = self.until.map(|(u, _)| u);
        let probe = self.systemic.as_ref().and(self.next_probe);
        match (until, probe) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether a request not sent as a probe must wait: any pause is on.
    pub(crate) fn blocks(&self, now: Instant) -> bool {
        self.systemic.is_some() || self.until.is_some_and(|(u, _)| now < u)
    }

    /// Pauses everything until `now + wait` (a longer pause already on is kept).
    pub(crate) fn pause_for(&mut self, now: Instant, wait: Duration, cause: Cause) {
        let until = now + wait;
        if self.until.is_some_and(|(u, _)| u >= until) {
            return;
        }
        if self.until.is_none() {
            metrics::counter!("kfr_sync_pauses_total", "cause" => cause).increment(1);
        }
        metrics::gauge!("kfr_sync_paused", "cause" => cause).set(1.0);
        self.until = Some((until, cause));
    }

    /// A systemic verdict: pause until a probe is delivered; the first probe after `probe_in`.
    /// Returns whether this started the pause (rather than extended one).
    pub(crate) fn systemic(&mut self, now: Instant, probe_in: Duration, cause: Cause, reason: String) -> bool {
        let started = self.systemic.is_none();
        if started {
            metrics::counter!("kfr_sync_pauses_total", "cause" => cause).increment(1);
            metrics::gauge!("kfr_sync_paused", "cause" => cause).set(1.0);
        }
        self.systemic = Some((cause, reason));
        self.next_probe = Some(now + probe_in);
        started
    }

    /// A probe came back without a systemic verdict but not delivered: probe again later.
    pub(crate) fn probe_later(&mut self, now: Instant, probe_in: Duration) {
        if self.systemic.is_some() && self.next_probe.is_none() {
            self.next_probe = Some(now + probe_in);
        }
    }

    /// Something was delivered: a systemic pause is over. Returns whether one was on.
    pub(crate) fn delivered(&mut self) -> bool {
        self.rate_limited_streak = 0;
        match self.systemic.take() {
            Some((cause, _)) => {
                self.next_probe = None;
                metrics::gauge!("kfr_sync_paused", "cause" => cause).set(0.0);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The limiter's promise, on tokio's paused clock: however many callers wait, no one-second
    /// window holds more than `rate` permits (plus the one exactly at its end), and they are not
    /// slower than the rate either.
    #[tokio::test(start_paused = true)]
    async fn no_second_holds_more_than_the_rate() {
        let gate = std::sync::Arc::new(RateGate::new(5.0));
        let start = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..23 {
            let g = gate.clone();
            tasks.spawn(async move {
                g.until_ready().await;
                Instant::now()
            });
        }
        let mut times = vec![];
        while let Some(t) = tasks.join_next().await {
            times.push(t.unwrap());
        }
        times.sort();
        for (i, t) in times.iter().enumerate() {
            let within = times[i..]
                .iter()
                .take_while(|u| **u < *t + Duration::from_secs(1))
                .count();
            assert!(within <= 5, "{within} permits within one second from permit {i}");
        }
        // 23 permits at 5/s: the last one 4.4 s after the first, not later.
        let span = *times.last().unwrap() - start;
        assert!(span <= Duration::from_millis(4500), "{span:?}");
    }

    #[test]
    fn a_timed_pause_closes_the_gate_until_it_ends_and_a_systemic_one_until_a_probe() {
        let now = Instant::now();
        let mut p = Pause::default();
        assert_eq!(p.gate(now), Gate::Open);
        p.pause_for(now, Duration::from_secs(10), "rate_limited");
        p.pause_for(now, Duration::from_secs(2), "rate_limited");
        assert_eq!(
            p.gate(now + Duration::from_secs(9)),
            Gate::Closed,
            "the longer pause holds"
        );
        assert_eq!(p.changes_at(), Some(now + Duration::from_secs(10)));
        assert_eq!(p.gate(now + Duration::from_secs(10)), Gate::Open);
        assert_eq!(p.changes_at(), None);

        p.systemic(now, Duration::from_secs(60), "credentials", "grant refused".into());
        assert!(p.blocks(now + Duration::from_secs(3600)));
        assert_eq!(p.gate(now + Duration::from_secs(59)), Gate::Closed);
        assert_eq!(
            p.changes_at(),
            Some(now + Duration::from_secs(60)),
            "the probe is due then"
        );
        assert_eq!(p.gate(now + Duration::from_secs(60)), Gate::Probe);
        assert_eq!(
            p.gate(now + Duration::from_secs(61)),
            Gate::Closed,
            "one probe at a time"
        );
        p.probe_later(now + Duration::from_secs(61), Duration::from_secs(60));
        assert_eq!(p.gate(now + Duration::from_secs(121)), Gate::Probe);
        assert!(p.delivered());
        assert_eq!(p.gate(now + Duration::from_secs(122)), Gate::Open);
    }
}
