//! The read cache of the polling path: each job as last read.
//!
//! Clients poll the same PENDING job every few seconds, and many instances of
//! many clients poll at once, so most reads repeat the last one. The cache answers
//! them from memory and stays truthful through the same signals that wake long
//! polls ([`super::Changes`]):
//! - a transition made by this process forgets its job;
//! - SQLite: after any commit by another connection (seen by the
//!   `data_version` watcher), the jobs the log of finished and deleted jobs
//!   names since the last look are forgotten;
//! - PostgreSQL: each new and each finished row is announced whole by `NOTIFY`
//!   and taken as it comes, so the polls that follow need no read (a finished
//!   row too long to carry is forgotten instead), and deleted rows are
//!   announced by id and forgotten; while the listener is down the cache is
//!   off, and it starts empty of PENDING jobs when the listener is back.
//!
//! The triggers refuse every other change to a row (only `PENDING → DONE` or
//! `FAILED` is an update), so an entry is as fresh as the later of its read
//! and the feed's last confirmation ([`JobCache::confirm`]): the moment up to
//! which every change is known to have been heard (a SQLite watcher tick that
//! saw nothing new, a PostgreSQL heartbeat `NOTIFY` that came back through the
//! listener behind every notification before it). So it lives as long as the
//! feed keeps confirming, and a poll never lags a change by more than
//! `max_age`, whatever happens: a feed that stops confirming lets its entries
//! age out. A finished job's expiry, `jobs.ttl` after `finished_at`, is
//! applied on the way out by the rule the purge uses.
//!
//! The cache serves only while a change feed runs (`live`), so the CLI and a
//! store without one always read the database. Only found jobs are kept, and a
//! job is served only to its owner: an unknown id and another client's job
//! both go to the database, by the same path and in the same time, so neither
//! the cache's memory nor its timing tells anyone which ids exist. A read that
//! raced an invalidation is not kept (the generation counter).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::bounded::Bounded;
use crate::jobs::{self, Job, State, Timestamp};

/// Jobs as last read, each served while no fresher than `max_age` allows.
#[derive(Debug)]
pub struct JobCache {
    entries: Bounded<Uuid, Entry>,
    max_age: Duration,
    ttl: Duration,
    live: AtomicBool,
    generation: AtomicU64,
    /// Held by writers only, so that an invalidation and the check of a
    /// read's generation never interleave; lookups never take it.
    writers: Mutex<()>,
    /// Every instant below is kept as nanoseconds since this one.
    epoch: Instant,
    /// The latest confirmation of the feed (nanoseconds since `epoch`).
    confirmed: AtomicU64,
}

#[derive(Clone, Debug)]
struct Entry {
    job: Arc<Job>,
    /// When the read that found it began (nanoseconds since the epoch).
    read_at: u64,
}

/// What a read must hand back to [`JobCache::insert`]: when it began, and what
/// had been invalidated by then.
#[derive(Clone, Copy, Debug)]
pub struct Ticket {
    generation: u64,
    at: u64,
}

impl JobCache {
    /// A cache of at most `capacity` jobs, none served staler than `max_age`,
    /// hiding those that finished more than `ttl` ago; `capacity` 0 turns it off.
    pub fn new(capacity: usize, max_age: Duration, ttl: Duration) -> Self {
        Self {
            entries: Bounded::new(capacity),
            max_age,
            ttl,
            live: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            writers: Mutex::new(()),
            epoch: Instant::now(),
            confirmed: AtomicU64::new(0),
        }
    }

    /// The most any answer may lag a transition.
    pub fn max_age(&self) -> Duration {
        self.max_age
    }

    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// The answer for `id` asked by `client_id` at `now`, if the cache may give
    /// it: `Some(None)` when the owner's job has expired, exactly as the
    /// database would answer. Another client's job is `None`, as an unknown id.
    pub fn get(&self, id: Uuid, client_id: &str, now: Timestamp) -> Option<Option<Job>> {
        if !self.live.load(Ordering::Acquire) {
            return None;
        }
        let oldest = self
            .nanos(Instant::now())
            .saturating_sub(u64::try_from(self.max_age.as_nanos()).unwrap_or(u64::MAX));
        let confirmed = self.confirmed.load(Ordering::Acquire);
        // Every change a row can have (its finish, its deletion) is on the feed.
        let fresh = |entry: &Entry| entry.read_at.max(confirmed) >= oldest;
        let entry = self
            .entries
            .get(&id, fresh)
            .filter(|entry| entry.job.client_id == client_id)?;
        let expired = match entry.job.state {
            State::Pending { .. } => false,
            State::Done { finished_at, .. } | State::Failed { finished_at, .. } => {
                finished_at <= jobs::expiry_cutoff(now, self.ttl)
            }
        };
        Some((!expired).then(|| Job::clone(&entry.job)))
    }

    /// To be taken before reading the database and handed to [`JobCache::insert`].
    pub fn ticket(&self) -> Ticket {
        Ticket {
            generation: self.generation.load(Ordering::Acquire),
            at: self.nanos(Instant::now()),
        }
    }

    /// Keeps `job`, read under `ticket`, unless something was invalidated since.
    pub fn insert(&self, job: &Job, ticket: Ticket) {
        if !self.live.load(Ordering::Acquire) {
            return;
        }
        let _writers = self.writers.lock().unwrap_or_else(PoisonError::into_inner);
        if self.generation.load(Ordering::Acquire) != ticket.generation {
            return;
        }
        self.entries.insert(
            job.id,
            Entry {
                job: Arc::new(job.clone()),
                read_at: ticket.at,
            },
        );
    }

    /// `job` has just been created: kept as if just read, unless the cache
    /// holds it already (from a read at least as recent).
    pub fn insert_created(&self, job: Job) {
        if !self.live.load(Ordering::Acquire) {
            return;
        }
        let _writers = self.writers.lock().unwrap_or_else(PoisonError::into_inner);
        self.keep_if(job, false);
    }

    /// Keeps `job` as read now if the cache holds it (`held`) or does not;
    /// writers only, under `writers`.
    fn keep_if(&self, job: Job, held: bool) {
        if self.entries.get(&job.id, |_| true).is_some() == held {
            let read_at = self.nanos(Instant::now());
            let entry = Entry {
                job: Arc::new(job),
                read_at,
            };
            self.entries.insert(entry.job.id, entry);
        }
    }

    /// Every change made before `at` has been heard: entries are as fresh as
    /// that, whenever they were read.
    pub fn confirm(&self, at: Instant) {
        self.confirmed.fetch_max(self.nanos(at), Ordering::AcqRel);
    }

    /// Forgets `id`: it has just changed.
    pub fn forget(&self, id: Uuid) {
        self.invalidate(|| self.entries.remove(&id));
    }

    /// `job` has just changed to this state: an entry for it takes the new
    /// one, as if just read (and a read in flight, which may have seen the
    /// old, is not kept). A job not in the cache stays out of it: this
    /// instance may never be asked for it.
    pub fn replace(&self, job: Job) {
        self.invalidate(|| self.keep_if(job, true));
    }

    /// Forgets every PENDING job: any of them may have changed.
    pub fn forget_pending(&self) {
        self.invalidate(|| {
            self.entries
                .retain(|_, entry| !matches!(entry.job.state, State::Pending { .. }));
        });
    }

    /// Forgets every job.
    pub fn forget_all(&self) {
        self.invalidate(|| self.entries.clear());
    }

    fn invalidate(&self, forget: impl FnOnce()) {
        let _writers = self.writers.lock().unwrap_or_else(PoisonError::into_inner);
        self.generation.fetch_add(1, Ordering::AcqRel);
        forget();
    }

    /// Whether a change feed runs; the cache serves only while one does, and
    /// forgets everything when it stops.
    pub fn set_live(&self, live: bool) {
        if !live {
            self.forget_all();
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

    fn done_at(finished_at: Timestamp) -> Job {
        job(
            "mis-1",
            State::Done {
                links: vec![Link::new("e", "composition/x").unwrap_or_else(|e| panic!("{e}"))],
                finished_at,
            },
        )
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
        cache.insert(&pending, cache.ticket());
        assert_eq!(
            cache.get(pending.id, "mis-1", now),
            Some(Some(pending.clone()))
        );
        assert_eq!(
            cache.get(pending.id, "mis-2", now),
            None,
            "another client's: ask the database, as for an unknown id"
        );
        assert_eq!(
            cache.get(Uuid::from_u128(2), "mis-1", now),
            None,
            "unknown: ask the database"
        );

        let done = done_at(now);
        cache.forget(done.id);
        cache.insert(&done, cache.ticket());
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
        let ticket = cache.ticket();
        cache.forget_pending();
        cache.insert(&job("mis-1", State::Pending { eta: now }), ticket);
        assert_eq!(cache.get(Uuid::from_u128(1), "mis-1", now), None);
    }

    #[test]
    fn serves_only_while_live_and_only_for_max_age() {
        let cache = JobCache::new(10, Duration::from_millis(30), TTL);
        let now = Timestamp::from_millis(0);
        let pending = job("mis-1", State::Pending { eta: now });
        cache.insert(&pending, cache.ticket());
        assert_eq!(cache.get(pending.id, "mis-1", now), None, "not live");
        cache.set_live(true);
        cache.insert(&pending, cache.ticket());
        assert!(cache.get(pending.id, "mis-1", now).is_some());
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(cache.get(pending.id, "mis-1", now), None, "too old");
    }

    #[test]
    fn entries_live_as_long_as_the_feed_confirms() {
        let cache = JobCache::new(10, Duration::from_millis(30), TTL);
        cache.set_live(true);
        let now = Timestamp::from_millis(0);
        let pending = job("mis-1", State::Pending { eta: now });
        cache.insert(&pending, cache.ticket());
        for _ in 0..4 {
            std::thread::sleep(Duration::from_millis(20));
            cache.confirm(Instant::now());
            assert!(
                cache.get(pending.id, "mis-1", now).is_some(),
                "confirmed within max_age"
            );
        }
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(
            cache.get(pending.id, "mis-1", now),
            None,
            "no confirmation for longer than max_age"
        );
        // A finished job too, until it expires.
        let done = done_at(now);
        cache.forget(done.id);
        cache.insert(&done, cache.ticket());
        std::thread::sleep(Duration::from_millis(20));
        cache.confirm(Instant::now());
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(cache.get(done.id, "mis-1", now), Some(Some(done.clone())));
        assert_eq!(cache.get(done.id, "mis-1", now.plus(TTL)), Some(None));
        // A confirmation older than the entry's read changes nothing.
        let before = Instant::now();
        cache.insert(&pending, cache.ticket());
        cache.confirm(before);
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(cache.get(pending.id, "mis-1", now), None);
    }

    #[test]
    fn an_announced_job_is_taken_without_a_read() {
        let cache = live_cache();
        let now = Timestamp::from_millis(0);
        let pending = job("mis-1", State::Pending { eta: now });
        // A new job: kept. A finish replaces only what is there.
        cache.insert_created(pending.clone());
        assert_eq!(
            cache.get(pending.id, "mis-1", now),
            Some(Some(pending.clone()))
        );
        let done = done_at(now);
        cache.replace(done.clone());
        assert_eq!(cache.get(done.id, "mis-1", now), Some(Some(done.clone())));
        // A late announcement of its creation does not undo the finish.
        cache.insert_created(pending.clone());
        assert_eq!(cache.get(done.id, "mis-1", now), Some(Some(done.clone())));
        // A job this instance never held stays out, and a read in flight
        // across a replacement is not kept.
        let ticket = cache.ticket();
        cache.forget(done.id);
        cache.replace(done.clone());
        assert_eq!(cache.get(done.id, "mis-1", now), None);
        cache.insert(&pending, ticket);
        assert_eq!(cache.get(done.id, "mis-1", now), None);
    }
}
