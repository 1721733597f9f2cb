//! The quota and the GCRA arithmetic both stores share.

use std::time::Duration;

/// `requests` per `window`, with up to `burst` at once; see the [module docs](super).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    requests: u32,
    window: Duration,
    burst: u32,
}

/// A quota that cannot be enforced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidQuota {
    /// Zero requests per window.
    #[error("a quota needs at least one request per window")]
    NoRequests,
    /// A window shorter than a millisecond or longer than a year.
    #[error("the window must be between 1 ms and 365 days, got {0:?}")]
    Window(Duration),
    /// A burst of zero.
    #[error("the burst must be at least 1")]
    NoBurst,
}

const MAX_WINDOW: Duration = Duration::from_secs(365 * 24 * 3600);

impl Quota {
    /// `requests` per `window`; the burst is `requests` (the whole budget may be spent at once).
    ///
    /// # Errors
    ///
    /// [`InvalidQuota`] for zero requests or a window outside 1 ms ..= 365 days.
    pub fn new(requests: u32, window: Duration) -> Result<Self, InvalidQuota> {
        if requests == 0 {
            return Err(InvalidQuota::NoRequests);
        }
        if window < Duration::from_millis(1) || window > MAX_WINDOW {
            return Err(InvalidQuota::Window(window));
        }
        Ok(Quota { requests, window, burst: requests })
    }

    /// `requests` per second.
    ///
    /// # Errors
    ///
    /// [`InvalidQuota::NoRequests`] for zero.
    pub fn per_second(requests: u32) -> Result<Self, InvalidQuota> {
        Self::new(requests, Duration::from_secs(1))
    }

    /// `requests` per minute.
    ///
    /// # Errors
    ///
    /// [`InvalidQuota::NoRequests`] for zero.
    pub fn per_minute(requests: u32) -> Result<Self, InvalidQuota> {
        Self::new(requests, Duration::from_secs(60))
    }

    /// `requests` per hour.
    ///
    /// # Errors
    ///
    /// [`InvalidQuota::NoRequests`] for zero.
    pub fn per_hour(requests: u32) -> Result<Self, InvalidQuota> {
        Self::new(requests, Duration::from_secs(3600))
    }

    /// At most `burst` requests at once (default: the whole quota); the budget still refills
    /// at `requests / window`.
    ///
    /// # Errors
    ///
    /// [`InvalidQuota::NoBurst`] for zero.
    pub fn with_burst(mut self, burst: u32) -> Result<Self, InvalidQuota> {
        if burst == 0 {
            return Err(InvalidQuota::NoBurst);
        }
        self.burst = burst;
        Ok(self)
    }

    /// Requests per window.
    pub fn requests(&self) -> u32 {
        self.requests
    }

    /// The window.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Requests allowed at once.
    pub fn burst(&self) -> u32 {
        self.burst
    }

    /// The emission interval `window / requests`, in units of `unit` (ns or µs), at least 1.
    pub(crate) fn interval_in(&self, unit: Duration) -> u64 {
        let interval = self.window.as_nanos() / u128::from(self.requests) / unit.as_nanos();
        u64::try_from(interval).unwrap_or(u64::MAX).max(1)
    }
}

/// The answer of a store for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may go on.
    pub allowed: bool,
    /// Requests the key may still make right now.
    pub remaining: u64,
    /// Until the whole burst is available again.
    pub reset: Duration,
    /// For a refused request: until the next request would be allowed.
    pub retry_after: Duration,
}

impl Decision {
    /// GCRA on integer time (any unit, `unit` long): `stored` is the key's theoretical arrival
    /// time, if any. Returns the decision and, when allowed, the new arrival time to store.
    pub(crate) fn gcra(
        stored: Option<u64>,
        now: u64,
        interval: u64,
        burst: u32,
        unit: Duration,
    ) -> (Self, Option<u64>) {
        let span = interval.saturating_mul(u64::from(burst));
        let tat = stored.unwrap_or(now).max(now);
        let next = tat.saturating_add(interval);
        let ahead = next - now;
        let to_duration = |units: u64| Duration::from_nanos(units.saturating_mul(unit.as_nanos() as u64));
        if ahead > span {
            let decision = Decision {
                allowed: false,
                remaining: 0,
                reset: to_duration(tat - now),
                retry_after: to_duration(ahead - span),
            };
            (decision, None)
        } else {
            let decision = Decision {
                allowed: true,
                remaining: (span - ahead) / interval,
                reset: to_duration(ahead),
                retry_after: Duration::ZERO,
            };
            (decision, Some(next))
        }
    }
}

/// Whole seconds, rounded up: a client that waits that long is never early.
pub(crate) fn ceil_secs(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NS: Duration = Duration::from_nanos(1);

    #[test]
    fn a_fresh_key_gets_the_whole_burst_then_waits_one_interval() {
        let quota = Quota::per_minute(3).unwrap();
        let interval = quota.interval_in(NS);
        assert_eq!(interval, 20_000_000_000);
        let mut tat = None;
        for expected in [2, 1, 0] {
            let (decision, next) = Decision::gcra(tat, 0, interval, 3, NS);
            assert!(decision.allowed);
            assert_eq!(decision.remaining, expected);
            tat = next;
        }
        let (refused, next) = Decision::gcra(tat, 0, interval, 3, NS);
        assert!(!refused.allowed && next.is_none());
        assert_eq!(refused.retry_after, Duration::from_secs(20));
        assert_eq!(refused.reset, Duration::from_secs(60));
        // One interval later, exactly one more.
        let (later, _) = Decision::gcra(tat, interval, interval, 3, NS);
        assert!(later.allowed);
        assert_eq!(later.remaining, 0);
    }

    #[test]
    fn bad_quotas_are_refused() {
        assert_eq!(Quota::per_minute(0), Err(InvalidQuota::NoRequests));
        assert_eq!(Quota::new(1, Duration::ZERO), Err(InvalidQuota::Window(Duration::ZERO)));
        assert_eq!(Quota::per_minute(1).unwrap().with_burst(0), Err(InvalidQuota::NoBurst));
    }

    #[test]
    fn seconds_round_up() {
        assert_eq!(ceil_secs(Duration::from_millis(1)), 1);
        assert_eq!(ceil_secs(Duration::from_secs(2)), 2);
        assert_eq!(ceil_secs(Duration::from_millis(2001)), 3);
    }
}
