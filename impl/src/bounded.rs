//! One bounded, concurrent map for every cache the service keeps: the verified
//! and refused tokens, and whatever else must stay within a memory bound while
//! strangers choose its keys.
//!
//! It is quick_cache underneath: sharded (so threads rarely wait for each
//! other), O(1) insertion and eviction whatever the size, and S3-FIFO eviction,
//! which lets an entry seen once (a flood of made-up tokens) go before the
//! entries that are used again and again. Keys are hashed with a per-process
//! random seed, so nobody can aim at one shard.
//!
//! What "fresh" means is the caller's: a value may carry its own expiry or the
//! generation of whatever it was decided under, and [`Bounded::get`] is told how
//! to read it. A stale value is a miss and is dropped.

use std::fmt;
use std::hash::Hash;

use foldhash::fast::RandomState;
use quick_cache::sync::{Cache, DefaultLifecycle, EntryAction, EntryResult};
use quick_cache::{Equivalent, UnitWeighter};

type Shards<K, V> = Cache<K, V, UnitWeighter, RandomState, DefaultLifecycle<K, V>>;

/// At most `capacity` values by key; capacity 0 keeps nothing.
pub(crate) struct Bounded<K, V> {
    cache: Option<Shards<K, V>>,
}

impl<K: Eq + Hash, V: Clone> Bounded<K, V> {
    /// A map of at most `capacity` entries (0: none, every lookup misses).
    pub(crate) fn new(capacity: usize) -> Self {
        let cache = (capacity > 0).then(|| {
            Cache::with(
                capacity,
                capacity as u64,
                UnitWeighter,
                RandomState::default(),
                DefaultLifecycle::default(),
            )
        });
        Self { cache }
    }

    /// The value for `key`, if there is one and `fresh` accepts it. A value
    /// `fresh` refuses is removed.
    pub(crate) fn get<Q>(&self, key: &Q, fresh: impl Fn(&V) -> bool) -> Option<V>
    where
        Q: Hash + Equivalent<K> + ?Sized,
    {
        let cache = self.cache.as_ref()?;
        let value = cache.get(key)?;
        if fresh(&value) {
            return Some(value);
        }
        cache.remove_if(key, |value| !fresh(value));
        None
    }

    /// Remembers `value` for `key`, evicting another entry if the map is full.
    pub(crate) fn insert(&self, key: K, value: V) {
        if let Some(cache) = &self.cache {
            cache.insert(key, value);
        }
    }

    /// Changes the value for `key` in place (`make` gives the first one), with
    /// no other call on that key in between, and returns what `change` says;
    /// `None` when the map is off.
    pub(crate) fn update<T>(
        &self,
        key: K,
        make: impl FnOnce() -> V,
        change: impl Fn(&mut V) -> T,
    ) -> Option<T>
    where
        K: Clone,
    {
        let cache = self.cache.as_ref()?;
        match cache.entry(&key, None, |_, value| EntryAction::Retain(change(value))) {
            EntryResult::Retained(answer) => Some(answer),
            EntryResult::Vacant(guard) | EntryResult::Replaced(guard, _) => {
                let mut value = make();
                let answer = change(&mut value);
                let _ = guard.insert(value);
                Some(answer)
            }
            // Neither is asked for: `change` never removes, and there is no timeout.
            EntryResult::Removed(..) | EntryResult::Timeout => None,
        }
    }

    /// Forgets `key`.
    pub(crate) fn remove<Q>(&self, key: &Q)
    where
        Q: Hash + Equivalent<K> + ?Sized,
    {
        if let Some(cache) = &self.cache {
            cache.remove(key);
        }
    }

    /// Keeps only the entries `keep` accepts.
    pub(crate) fn retain(&self, keep: impl Fn(&K, &V) -> bool) {
        if let Some(cache) = &self.cache {
            cache.retain(keep);
        }
    }

    /// Forgets everything.
    pub(crate) fn clear(&self) {
        if let Some(cache) = &self.cache {
            cache.clear();
        }
    }

    /// How many entries it holds now.
    pub(crate) fn len(&self) -> usize {
        self.cache.as_ref().map_or(0, Cache::len)
    }

    /// The most entries it holds (0: it is off).
    pub(crate) fn capacity(&self) -> u64 {
        self.cache.as_ref().map_or(0, Cache::capacity)
    }
}

impl<K: Eq + Hash, V: Clone> fmt::Debug for Bounded<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bounded")
            .field("capacity", &self.capacity())
            .field("len", &self.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_is_served_while_fresh_and_dropped_once_stale() {
        let map = Bounded::new(10);
        map.insert("a".to_owned(), 5_u64);
        assert_eq!(map.get("a", |until| 4 <= *until), Some(5));
        assert_eq!(map.get("a", |until| 6 <= *until), None);
        assert_eq!(map.len(), 0, "the stale value is gone");
        assert_eq!(map.get("b", |_| true), None);
    }

    #[test]
    fn it_stays_within_its_bound() {
        let map = Bounded::new(100);
        for n in 0..10_000_u32 {
            map.insert(n, n);
        }
        assert!(map.len() <= 110, "{} entries", map.len());
        assert!(map.capacity() <= 110);
    }

    #[test]
    fn updates_of_one_key_never_interleave() {
        let map = std::sync::Arc::new(Bounded::new(10));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let map = std::sync::Arc::clone(&map);
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        map.update(1_u32, || 0_u64, |n| *n += 1);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread
                .join()
                .unwrap_or_else(|_| panic!("a thread panicked"));
        }
        assert_eq!(map.get(&1, |_| true), Some(40_000));
        assert_eq!(map.update(2, || 7, |n| *n), Some(7), "made, then changed");
    }

    #[test]
    fn entries_are_removed_kept_or_cleared_on_demand() {
        let map = Bounded::new(10);
        for n in 0..6_u32 {
            map.insert(n, n);
        }
        map.remove(&0);
        map.retain(|_, n| n % 2 == 0);
        assert_eq!(map.len(), 2, "2 and 4");
        assert_eq!(map.get(&4, |_| true), Some(4));
        map.clear();
        assert_eq!(map.len(), 0);
    }

    #[test]
    fn zero_keeps_nothing() {
        let map = Bounded::new(0);
        map.insert(1_u32, 1_u32);
        assert_eq!(map.update(1, || 0, |_| ()), None);
        assert_eq!(map.get(&1, |_| true), None);
        assert_eq!(map.len(), 0);
    }

    #[test]
    fn values_used_again_outlive_a_flood_of_values_seen_once() {
        let map = Bounded::new(1000);
        for hot in 0..100_u32 {
            map.insert(hot, hot);
        }
        for round in 0..50_u32 {
            // The hot ones are asked for between floods, as a polling client's are.
            for hot in 0..100 {
                let _ = map.get(&hot, |_| true);
            }
            for once in 0..1000 {
                map.insert(1_000_000 + round * 1000 + once, 0);
            }
        }
        let kept = (0..100)
            .filter(|hot| map.get(hot, |_| true).is_some())
            .count();
        assert!(
            kept >= 90,
            "only {kept} of 100 hot entries survived the flood"
        );
    }
}
