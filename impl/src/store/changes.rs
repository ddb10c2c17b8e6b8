//! Wake-ups for long polls: one signal per waited job, shared by all its waiters.
//!
//! A waiter subscribes before it reads the job, so a transition that lands between
//! the read and the wait still wakes it. Whatever learns of a transition calls
//! [`Changes::notify`]: the store itself after its own writes, the SQLite watcher
//! when another process wrote, the PostgreSQL listener on `NOTIFY`. A signal lives
//! only while someone waits for its job, so memory follows the waiters.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::watch;
use uuid::Uuid;

use super::cache::JobCache;
use crate::jobs::Job;

/// The jobs someone waits for and their signals, and the read cache that the same
/// changes invalidate.
#[derive(Debug)]
pub struct Changes {
    signals: Mutex<HashMap<Uuid, watch::Sender<()>>>,
    cache: JobCache,
    feed: Feed,
    /// Jobs this process finished whose announcement has not come back yet:
    /// their announcement of creation, if still on its way, is stale.
    unheard: Mutex<HashSet<Uuid>>,
}

/// Whether the change feed (SQLite's watcher, PostgreSQL's NOTIFY listener)
/// works now, and how often it was lost and got back, for `/metrics`.
#[derive(Debug, Default)]
pub struct Feed {
    up: AtomicBool,
    losses: AtomicU64,
    recoveries: AtomicU64,
}

/// What a change of the feed's state was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeedChange {
    /// It was working and is not.
    Lost,
    /// It works again after a loss.
    Recovered,
    /// It works for the first time, or nothing changed.
    Unchanged,
}

impl Feed {
    /// Whether it works now.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Losses and recoveries so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.losses.load(Ordering::Relaxed),
            self.recoveries.load(Ordering::Relaxed),
        )
    }
}

impl Default for Changes {
    /// No cache: for stores without a change feed, and for tests.
    fn default() -> Self {
        Self::new(JobCache::new(
            0,
            std::time::Duration::ZERO,
            std::time::Duration::ZERO,
        ))
    }
}

/// One waiter's interest in one job; dropping it withdraws the interest.
#[derive(Debug)]
pub struct Subscription {
    changes: Arc<Changes>,
    id: Uuid,
    receiver: Option<watch::Receiver<()>>,
}

impl Changes {
    /// Changes with this read cache.
    pub fn new(cache: JobCache) -> Self {
        Self {
            signals: Mutex::default(),
            cache,
            feed: Feed::default(),
            unheard: Mutex::default(),
        }
    }

    /// The change feed's state.
    pub fn feed(&self) -> &Feed {
        &self.feed
    }

    /// The change feed works (`up`) or not. While it does not, the read cache is
    /// off and every waiter is woken to look for itself, since transitions may
    /// go unheard; from the moment it works, the cache may serve again.
    pub fn set_feed(&self, up: bool) -> FeedChange {
        if up {
            // Anything that finished before the feed came back: forgotten, then
            // everyone looks again.
            self.cache.forget_pending();
            self.cache.set_live(true);
        } else {
            self.cache.set_live(false);
            // Their announcements are lost with the feed.
            self.unheard().clear();
        }
        self.notify_all();
        let was = self.feed.up.swap(up, Ordering::AcqRel);
        match (was, up) {
            (true, false) => {
                self.feed.losses.fetch_add(1, Ordering::Relaxed);
                FeedChange::Lost
            }
            (false, true) if self.feed.losses.load(Ordering::Relaxed) > 0 => {
                self.feed.recoveries.fetch_add(1, Ordering::Relaxed);
                FeedChange::Recovered
            }
            _ => FeedChange::Unchanged,
        }
    }

    /// The read cache these changes keep truthful.
    pub fn cache(&self) -> &JobCache {
        &self.cache
    }

    /// `id` has just finished: forget it, then wake its waiters (in that order,
    /// so that they read the new state).
    pub fn finished(&self, id: Uuid) {
        self.unheard().remove(&id);
        self.cache.forget(id);
        self.notify(id);
    }

    /// `id` has just finished by this process's own write: as
    /// [`Changes::finished`], and until the feed announces the finish, an
    /// announcement of the job's creation (still on its way) is not taken.
    pub fn finished_here(&self, id: Uuid) {
        self.unheard().insert(id);
        self.cache.forget(id);
        self.notify(id);
    }

    /// `job` has just been created elsewhere: the cache keeps it, so that its
    /// first poll needs no read.
    pub fn created(&self, job: Job) {
        // Held while the cache takes it, so that `finished_here` comes wholly
        // before (and the job is not taken) or after (and forgets it).
        let unheard = self.unheard();
        if !unheard.contains(&job.id) {
            self.cache.insert_created(job);
        }
    }

    /// `job` has just finished as given: the cache takes the new state, then
    /// its waiters wake (and find it there).
    pub fn finished_as(&self, job: Job) {
        let id = job.id;
        self.unheard().remove(&id);
        self.cache.replace(job);
        self.notify(id);
    }

    /// Any job may have changed or gone (a `TRUNCATE`, or an announcement that
    /// cannot be read): all are forgotten, and every waiter looks.
    pub fn forget_all(&self) {
        self.cache.forget_all();
        self.notify_all();
    }

    fn unheard(&self) -> MutexGuard<'_, HashSet<Uuid>> {
        self.unheard.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn signals(&self) -> MutexGuard<'_, HashMap<Uuid, watch::Sender<()>>> {
        // The map stays consistent whatever panicked while holding it.
        self.signals.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts waiting for `id`; the first later [`Changes::notify`] for it counts.
    pub fn subscribe(self: &Arc<Self>, id: Uuid) -> Subscription {
        let receiver = self
            .signals()
            .entry(id)
            .or_insert_with(|| watch::channel(()).0)
            .subscribe();
        Subscription {
            changes: Arc::clone(self),
            id,
            receiver: Some(receiver),
        }
    }

    /// Wakes everyone waiting for `id`.
    pub fn notify(&self, id: Uuid) {
        if let Some(signal) = self.signals().get(&id) {
            signal.send_replace(());
        }
    }

    /// Wakes every waiter, e.g. after notifications may have been missed.
    pub fn notify_all(&self) {
        for signal in self.signals().values() {
            signal.send_replace(());
        }
    }

    /// How many jobs are waited for, and by how many waiters in all.
    pub fn waiters(&self) -> (usize, usize) {
        let signals = self.signals();
        let waiters = signals.values().map(watch::Sender::receiver_count).sum();
        (signals.len(), waiters)
    }

    /// The jobs someone is waiting for.
    pub fn waited(&self) -> Vec<Uuid> {
        self.signals().keys().copied().collect()
    }
}

impl Subscription {
    /// Resolves at the next notification for the job.
    pub async fn changed(&mut self) {
        if let Some(receiver) = self.receiver.as_mut() {
            // The sender lives while this receiver does, so this never fails.
            if receiver.changed().await.is_ok() {
                return;
            }
        }
        std::future::pending().await
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut signals = self.changes.signals();
        drop(self.receiver.take());
        if signals
            .get(&self.id)
            .is_some_and(|signal| signal.receiver_count() == 0)
        {
            signals.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waiters_share_a_signal_that_goes_with_the_last_of_them() {
        let changes = Arc::new(Changes::default());
        let id = Uuid::new_v4();
        let mut first = changes.subscribe(id);
        let mut second = changes.subscribe(id);
        assert_eq!(changes.waited(), vec![id]);

        changes.notify(id);
        first.changed().await;
        second.changed().await;

        drop(first);
        assert_eq!(changes.waited(), vec![id]);
        drop(second);
        assert!(changes.waited().is_empty());
    }

    #[tokio::test]
    async fn a_notification_before_the_wait_is_not_lost() {
        let changes = Arc::new(Changes::default());
        let id = Uuid::new_v4();
        let mut waiter = changes.subscribe(id);
        changes.notify(id);
        tokio::time::timeout(std::time::Duration::from_secs(1), waiter.changed())
            .await
            .unwrap_or_else(|_| panic!("the notification was lost"));
    }

    #[test]
    fn a_creation_announced_after_this_process_finished_the_job_is_not_taken() {
        let cache = JobCache::new(
            10,
            std::time::Duration::from_secs(60),
            std::time::Duration::from_secs(60),
        );
        cache.set_live(true);
        let changes = Changes::new(cache);
        let job = Job {
            id: Uuid::from_u128(7),
            client_id: "mis-1".into(),
            kind: crate::jobs::Kind::Create,
            state: crate::jobs::State::Pending {
                eta: crate::jobs::Timestamp::from_millis(0),
            },
            created_at: crate::jobs::Timestamp::from_millis(0),
            dedup_hash: None,
        };
        let now = crate::jobs::Timestamp::from_millis(0);
        changes.finished_here(job.id);
        changes.created(job.clone());
        assert_eq!(
            changes.cache().get(job.id, "mis-1", now),
            None,
            "stale: not taken"
        );
        // Once the finish has been heard, announcements are taken again.
        changes.finished(job.id);
        changes.created(job.clone());
        assert_eq!(changes.cache().get(job.id, "mis-1", now), Some(Some(job)));
    }
}
