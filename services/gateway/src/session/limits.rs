//! Per-connection token buckets (governor's GCRA): inbound bytes per second and publishes per
//! second. A refused message is answered `rate_limited` with the wait and dropped (nothing is
//! written); a client that keeps sending into refusals, `max_strikes` in a row, is closed
//! with 1008 (policy violation).

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// A connection's rate settings.
#[derive(Clone, Copy, Debug)]
pub struct RateSettings {
    pub publishes_per_sec: u32,
    pub publish_burst: u32,
    pub bytes_per_sec: u32,
    /// At least the largest message accepted, so any single message can pass.
    pub bytes_burst: u32,
    pub max_strikes: u32,
}

/// What to do with a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    Accept,
    /// Refuse it; the bucket has room again after this long.
    Refuse(Duration),
    /// Too many refusals in a row: close the connection.
    Close,
}

/// The buckets of one connection.
#[derive(Debug)]
pub struct ConnectionLimits {
    publishes: DefaultDirectRateLimiter,
    bytes: DefaultDirectRateLimiter,
    strikes: Strikes,
}

fn quota(per_sec: u32, burst: u32) -> Quota {
    let rate = NonZeroU32::new(per_sec).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(burst.max(per_sec)).unwrap_or(rate);
    Quota::per_second(rate).allow_burst(burst)
}

impl ConnectionLimits {
    pub fn new(settings: RateSettings) -> Self {
        Self {
            publishes: RateLimiter::direct(quota(
                settings.publishes_per_sec,
                settings.publish_burst,
            )),
            bytes: RateLimiter::direct(quota(settings.bytes_per_sec, settings.bytes_burst)),
            strikes: Strikes::new(settings.max_strikes),
        }
    }

    /// Takes `len` bytes from the byte bucket; the wait if there is not enough.
    pub fn take_bytes(&mut self, len: usize) -> Option<Duration> {
        let n = NonZeroU32::new(u32::try_from(len).unwrap_or(u32::MAX)).unwrap_or(NonZeroU32::MIN);
        match self.bytes.check_n(n) {
            Ok(Ok(())) => None,
            Ok(Err(not_until)) => Some(not_until.wait_time_from(DefaultClock::default().now())),
            // Larger than the burst: it can never pass (the frame limit prevents this).
            Err(_) => Some(Duration::from_secs(1)),
        }
    }

    /// Takes one publish from the publish bucket; the wait if it is empty.
    pub fn take_publish(&mut self) -> Option<Duration> {
        self.publishes
            .check()
            .err()
            .map(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    /// Records the outcome for one whole message (refused by any bucket, or accepted).
    pub fn record(&mut self, refused: Option<Duration>) -> Admission {
        self.strikes.record(refused)
    }
}

/// Refusals in a row; an accepted message clears them.
#[derive(Debug)]
struct Strikes {
    count: u32,
    max: u32,
}

impl Strikes {
    fn new(max: u32) -> Self {
        Self {
            count: 0,
            max: max.max(1),
        }
    }

    fn record(&mut self, refused: Option<Duration>) -> Admission {
        match refused {
            None => {
                self.count = 0;
                Admission::Accept
            }
            Some(_) if self.count + 1 >= self.max => Admission::Close,
            Some(wait) => {
                self.count += 1;
                Admission::Refuse(wait.max(Duration::from_millis(1)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strikes_close_only_after_refusals_in_a_row() {
        let mut strikes = Strikes::new(3);
        let wait = Some(Duration::from_millis(5));
        assert_eq!(
            strikes.record(wait),
            Admission::Refuse(Duration::from_millis(5))
        );
        assert_eq!(
            strikes.record(wait),
            Admission::Refuse(Duration::from_millis(5))
        );
        assert_eq!(strikes.record(None), Admission::Accept);
        assert_eq!(
            strikes.record(wait),
            Admission::Refuse(Duration::from_millis(5))
        );
        assert_eq!(
            strikes.record(wait),
            Admission::Refuse(Duration::from_millis(5))
        );
        assert_eq!(strikes.record(wait), Admission::Close);
    }

    #[test]
    fn a_burst_passes_then_publishes_are_refused_with_a_wait() {
        let mut limits = ConnectionLimits::new(RateSettings {
            publishes_per_sec: 2,
            publish_burst: 3,
            bytes_per_sec: 1_000_000,
            bytes_burst: 1_000_000,
            max_strikes: 100,
        });
        let waits: Vec<Option<Duration>> = (0..4).map(|_| limits.take_publish()).collect();
        assert_eq!(&waits[..3], &[None; 3]);
        assert!(
            matches!(waits[3], Some(wait) if wait > Duration::ZERO && wait <= Duration::from_millis(500))
        );
        assert_eq!(limits.take_bytes(1000), None);
        assert!(matches!(limits.record(waits[3]), Admission::Refuse(_)));
        assert_eq!(limits.record(None), Admission::Accept);
    }
}
