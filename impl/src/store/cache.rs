//! The read cache of the polling path: each job as last read, for a moment.
//!
//! Clients poll the same PENDING job every few seconds, and many instances of
//! many clients poll at once, so most reads repeat the last one. The cache answers
//! them from memory and stays truthful through the same signals that wake long
//! polls ([`super::Changes`]):
//! - a transition made by this process forgets its job;
//! - SQLite: any commit by another connection (seen by the `data_version`
//!   watcher) forgets every PENDING job; finished jobs never change;
//! - PostgreSQL: each `NOTIFY` forgets its job; while the listener is down the
//!   cache is off, and it starts empty of PENDING jobs when the listener is back.
//!
//! So a poll may lag a transition by the time the change takes to be seen (a
//! SQLite watcher tick, a NOTIFY), and never by more than `max_age`, whatever
//! happens. The cache serves only while a change feed runs (`live`), so the CLI
//! and a store without one always read the database. Only found jobs are kept:
//! unknown ids always reach the database, so nobody can fill the cache with them.
//! A read that raced an invalidation is not kept (the generation counter).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use foldhash::fast::RandomState;
use uuid::Uuid;

use crate::jobs::{self, Job, State, Timestamp};

/// Jobs as last read, each for at most `max_age`.
#[derive(Debug)]
pub struct JobCache {
    capacity: usize,
    max_age: Duration,
    ttl: Duration,
    live: AtomicBool,
    generation: AtomicU64,
    entries: Mutex<HashMap<Uuid, Entry, RandomState>>,
}

#[derive(Debug)]
struct Entry {
    job: Arc<Job>,
    read_at: Instant,
}

impl JobCache {
    /// A cache of at most `capacity` jobs kept for `max_age`, hiding those that
    /// finished more than `ttl` ago; `capacity` 0 turns it off.
    pub fn new(capacity: usize, max_age: Duration, ttl: Duration) -> Self {
        Self {
            capacity,
            max_age,
            ttl,
            live: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            entries: Mutex::new(HashMap::default()),
        }
    }

    fn entries(&self) -> MutexGuard<'_, HashMap<Uuid, Entry, RandomState>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The answer for `id` asked by `client_id` at `now`, if the cache knows it:
    /// `Some(None)` when the job is another client's or has expired, exactly as
    /// the database would answer.
    pub fn get(&self, id: Uuid, client_id: &str, now: Timestamp) -> Option<Option<Job>> {
        if self.capacity == 0 || !self.live.load(Ordering::Acquire) {
            return None;
        }
        let job = {
            let entries = self.entries();
            let entry = entries.get(&id)?;
            if entry.read_at.elapsed() > self.max_age {
                return None;
            }
            Arc::clone(&entry.job)
        };
        let expired = match job.state {
            State::Pending { .. } => false,
            State::Done { finished_at, .. } | State::Failed { finished_at, .. } => {
                finished_at <= jobs::expiry_cutoff(now, self.ttl)
            }
        };
        Some((job.client_id == client_id && !expired).then(|| Job::clone(&job)))
    }

    /// The generation to hand back to [`JobCache::insert`] after reading.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Keeps `job`, read when the generation was `generation`, unless something
    /// was invalidated since.
    pub fn insert(&self, job: &Job, generation: u64) {
        if self.capacity == 0 || !self.live.load(Ordering::Acquire) {
            return;
        }
        let mut entries = self.entries();
        if self.generation() != generation {
            return;
        }
        if entries.len() >= self.capacity && !entries.contains_key(&job.id) {
            let max_age = self.max_age;
            entries.retain(|_, entry| entry.read_at.elapsed() <= max_age);
            if entries.len() >= self.capacity
                && let Some(any) = entries.keys().next().copied()
            {
                entries.remove(&any);
            }
        }
        entries.insert(
            job.id,
            Entry {
                job: Arc::new(job.clone()),
                read_at: Instant::now(),
            },
        );
    }

    /// Forgets `id`: it has just changed.
    pub fn forget(&self, id: Uuid) {
        let mut entries = self.entries();
        self.generation.fetch_add(1, Ordering::AcqRel);
        entries.remove(&id);
    }

    /// Forgets every PENDING job: any of them may have changed.
    pub fn forget_pending(&self) {
        let mut entries = self.entries();
        self.generation.fetch_add(1, Ordering::AcqRel);
        entries.retain(|_, entry| !matches!(entry.job.state, State::Pending { .. }));
    }

    /// Whether a change feed runs; the cache serves only while one does, and
    /// forgets everything when it stops.
    pub fn set_live(&self, live: bool) {
        if !live {
            let mut entries = self.entries();
            self.generation.fetch_add(1, Ordering::AcqRel);
            entries.clear();
        }
        self.live.store(live, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::{Kind, Link};

    const TTL: Duration = Duration::from_secs(60);

    fn job(client_id: &str, state: State) -> Job {
        Job {
            id: Uuid::from_u128(1),
            client_id: client_id.into(),
            kind: Kind::Create,
            state,
            created_at: Timestamp::from_millis(0),
            dedup_hash: None,
        }
    }

    fn live_cache() -> JobCache {
        let cache = JobCache::new(10, Duration::from_secs(60), TTL);
        cache.set_live(true);
        cache
    }

    #[test]
    fn answers_like_the_database_would() {
        let cache = live_cache();
        let now = Timestamp::from_millis(1_000_000);
        let pending = job("mis-1", State::Pending { eta: now });
        cache.insert(&pending, cache.generation());
        assert_eq!(
            cache.get(pending.id, "mis-1", now),
            Some(Some(pending.clone()))
        );
        assert_eq!(
            cache.get(pending.id, "mis-2", now),
            Some(None),
            "another client's"
        );
        assert_eq!(
            cache.get(Uuid::from_u128(2), "mis-1", now),
            None,
            "unknown: ask the database"
        );

        let done = job(
            "mis-1",
            State::Done {
                links: vec![Link::new("e", "composition/x").unwrap_or_else(|e| panic!("{e}"))],
                finished_at: now,
            },
        );
        cache.forget(done.id);
        cache.insert(&done, cache.generation());
        assert_eq!(
            cache.get(done.id, "mis-1", now.plus(TTL)),
            Some(None),
            "expired"
        );
    }

    #[test]
    fn a_read_that_raced_an_invalidation_is_not_kept() {
        let cache = live_cache();
        let now = Timestamp::from_millis(0);
        let generation = cache.generation();
        cache.forget_pending();
        cache.insert(&job("mis-1", State::Pending { eta: now }), generation);
        assert_eq!(cache.get(Uuid::from_u128(1), "mis-1", now), None);
    }

    #[test]
    fn serves_only_while_live_and_only_for_max_age() {
        let cache = JobCache::new(10, Duration::from_millis(30), TTL);
        let now = Timestamp::from_millis(0);
        let pending = job("mis-1", State::Pending { eta: now });
        cache.insert(&pending, cache.generation());
        assert_eq!(cache.get(pending.id, "mis-1", now), None, "not live");
        cache.set_live(true);
        cache.insert(&pending, cache.generation());
        assert!(cache.get(pending.id, "mis-1", now).is_some());
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(cache.get(pending.id, "mis-1", now), None, "too old");
    }
}
