//! Over-polling protection: a token bucket per (client, job), in memory, bounded.
//!
//! Each pair may poll `burst` times at once, then `per_second` times a second.
//! The buckets live in one map of at most `entries` pairs: when it is full, the
//! buckets that have refilled (idle pairs) go first, then the least recently used.
//! Pairs are keyed by a fast hash with a per-process random seed (foldhash), so
//! the map holds no client ids and its layout cannot be predicted from outside.

use std::collections::HashMap;
use std::hash::BuildHasher;

use foldhash::fast::RandomState;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::config::PollingConfig;

/// Limits how often one client polls one job.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    per_second: f64,
    burst: f64,
    entries: usize,
    keys: RandomState,
    buckets: Mutex<HashMap<u64, Bucket, RandomState>>,
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl Bucket {
    fn refilled(self, now: Instant, per_second: f64, burst: f64) -> f64 {
        (self.tokens + now.duration_since(self.updated).as_secs_f64() * per_second).min(burst)
    }
}

impl RateLimiter {
    /// A limiter with `config`'s rate, burst and size.
    pub(crate) fn new(config: &PollingConfig) -> Self {
        Self {
            per_second: config.limit_per_second,
            burst: f64::from(config.limit_burst),
            entries: config.limit_entries,
            keys: RandomState::default(),
            buckets: Mutex::new(HashMap::default()),
        }
    }

    /// Takes one poll of `job` by `client_id`, or says how long to wait for one.
    pub(crate) fn check(&self, client_id: &str, job: Uuid) -> Result<(), Duration> {
        if self.per_second == 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        let key = self.keys.hash_one((client_id, job));
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if buckets.len() >= self.entries && !buckets.contains_key(&key) {
            self.make_room(&mut buckets, now);
        }
        let bucket = buckets.entry(key).or_insert(Bucket {
            tokens: self.burst,
            updated: now,
        });
        let tokens = bucket.refilled(now, self.per_second, self.burst);
        *bucket = Bucket {
            tokens: if tokens >= 1.0 { tokens - 1.0 } else { tokens },
            updated: now,
        };
        if tokens >= 1.0 {
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - tokens) / self.per_second))
        }
    }

    fn make_room(&self, buckets: &mut HashMap<u64, Bucket, RandomState>, now: Instant) {
        buckets.retain(|_, bucket| bucket.refilled(now, self.per_second, self.burst) < self.burst);
        if buckets.len() >= self.entries
            && let Some(oldest) = buckets
                .iter()
                .min_by_key(|(_, bucket)| bucket.updated)
                .map(|(key, _)| *key)
        {
            buckets.remove(&oldest);
        }
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
        assert!(limiter.buckets.lock().map(|b| b.len()).unwrap_or(0) <= 4);
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
