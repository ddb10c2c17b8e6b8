//! Over-polling protection: a token bucket per (client, job), in memory, bounded.
//!
//! Each pair may poll `burst` times at once, then `per_second` times a second.
//! The buckets live in one [`Bounded`] map of at most `entries` pairs, so a full
//! map evicts in O(1), and a pair polled once goes before the pairs polled
//! again and again (an evicted bucket starts full, as an idle one would be).
//! Pairs are keyed by a fast hash with a per-process random seed (foldhash), so
//! the map holds no client ids and its layout cannot be predicted from outside.
//! A poll answered 304 is given back ([`RateLimiter::give_back`]): a client that
//! polls with `If-None-Match` costs almost nothing and is never punished for it.

use std::hash::BuildHasher;
use std::time::{Duration, Instant};

use foldhash::fast::RandomState;
use uuid::Uuid;

use crate::bounded::Bounded;
use crate::config::PollingConfig;

/// Limits how often one client polls one job.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    per_second: f64,
    burst: f64,
    keys: RandomState,
    buckets: Bounded<u64, Bucket>,
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl Bucket {
    /// Refills it up to `now`, then adds `change` (within 0 and `burst`) if the
    /// result stays at or above 0; says whether it did.
    fn take(&mut self, now: Instant, per_second: f64, burst: f64, change: f64) -> Result<(), f64> {
        let tokens = (self.tokens
            + now.saturating_duration_since(self.updated).as_secs_f64() * per_second)
            .min(burst);
        self.updated = now;
        self.tokens = tokens;
        if tokens + change < 0.0 {
            return Err(tokens);
        }
        self.tokens = (tokens + change).min(burst);
        Ok(())
    }
}

impl RateLimiter {
    /// A limiter with `config`'s rate, burst and size.
    pub(crate) fn new(config: &PollingConfig) -> Self {
        Self {
            per_second: config.limit_per_second,
            burst: f64::from(config.limit_burst),
            keys: RandomState::default(),
            buckets: Bounded::new(config.limit_entries),
        }
    }

    /// Takes one poll of `job` by `client_id`, or says how long to wait for one.
    pub(crate) fn check(&self, client_id: &str, job: Uuid) -> Result<(), Duration> {
        match self.change(client_id, job, -1.0) {
            Err(tokens) => Err(Duration::from_secs_f64((1.0 - tokens) / self.per_second)),
            Ok(()) => Ok(()),
        }
    }

    /// Gives back the poll [`RateLimiter::check`] took: it was answered 304.
    pub(crate) fn give_back(&self, client_id: &str, job: Uuid) {
        let _ = self.change(client_id, job, 1.0);
    }

    fn change(&self, client_id: &str, job: Uuid, change: f64) -> Result<(), f64> {
        if self.per_second == 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        let (per_second, burst) = (self.per_second, self.burst);
        let fresh = || Bucket {
            tokens: burst,
            updated: now,
        };
        self.buckets
            .update(self.keys.hash_one((client_id, job)), fresh, |bucket| {
                bucket.take(now, per_second, burst, change)
            })
            // A map of no entries limits nothing.
            .unwrap_or(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(per_second: f64, burst: u32, entries: usize) -> RateLimiter {
        RateLimiter::new(&PollingConfig {
            limit_per_second: per_second,
            limit_burst: burst,
            limit_entries: entries,
            ..PollingConfig::default()
        })
    }

    #[test]
    fn a_burst_then_the_rate() {
        let limiter = limiter(2.0, 3, 10);
        let job = Uuid::new_v4();
        for _ in 0..3 {
            assert_eq!(limiter.check("mis-1", job), Ok(()));
        }
        let wait = limiter.check("mis-1", job).expect_err("over the burst");
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        // Other pairs are not affected.
        assert_eq!(limiter.check("mis-2", job), Ok(()));
        assert_eq!(limiter.check("mis-1", Uuid::new_v4()), Ok(()));
        std::thread::sleep(Duration::from_millis(600));
        assert_eq!(limiter.check("mis-1", job), Ok(()));
    }

    #[test]
    fn the_map_stays_within_its_bound() {
        let limiter = limiter(1.0, 1, 4);
        for _ in 0..100 {
            let _ = limiter.check("mis-1", Uuid::new_v4());
        }
        assert!(limiter.buckets.len() <= 8, "{}", limiter.buckets.len());
    }

    #[test]
    fn a_poll_given_back_is_not_counted() {
        let limiter = limiter(1.0, 2, 10);
        let job = Uuid::new_v4();
        for _ in 0..100 {
            assert_eq!(limiter.check("mis-1", job), Ok(()));
            limiter.give_back("mis-1", job);
        }
        assert_eq!(limiter.check("mis-1", job), Ok(()));
        assert_eq!(limiter.check("mis-1", job), Ok(()));
        assert!(limiter.check("mis-1", job).is_err(), "the burst is spent");
        // Giving back never raises a bucket over its burst.
        for _ in 0..10 {
            limiter.give_back("mis-1", job);
        }
        assert_eq!(limiter.check("mis-1", job), Ok(()));
        assert_eq!(limiter.check("mis-1", job), Ok(()));
        assert!(limiter.check("mis-1", job).is_err());
    }

    #[test]
    fn zero_turns_the_limit_off() {
        let limiter = limiter(0.0, 1, 1);
        let job = Uuid::new_v4();
        for _ in 0..100 {
            assert_eq!(limiter.check("mis-1", job), Ok(()));
        }
    }
}
