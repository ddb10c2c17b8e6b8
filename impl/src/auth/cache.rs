//! Verification outcomes, remembered per token, so that a client polling every
//! few seconds pays for signature verification once per token, not per request.
//! The verifier keeps two: callers of valid tokens until the token expires, and
//! refusals that can never turn into acceptances (a bad signature stays bad).
//!
//! Bounded: when full, expired entries go first, then an arbitrary one. Keyed by
//! a fast hash with a per-process random seed (foldhash), and every hit compares
//! the whole token, so no hash collision can stand in for a verification.

use std::collections::HashMap;
use std::hash::BuildHasher;

use foldhash::fast::RandomState;
use std::sync::{Mutex, PoisonError};

/// Outcomes (`V`) of recently verified tokens.
#[derive(Debug)]
pub struct TokenCache<V> {
    capacity: usize,
    keys: RandomState,
    entries: Mutex<HashMap<u64, Entry<V>, RandomState>>,
}

#[derive(Debug)]
struct Entry<V> {
    token: Box<[u8]>,
    value: V,
    /// Seconds since the epoch after which the token must be verified again
    /// (its `exp` plus the allowed leeway, the same rule as verification).
    valid_until: u64,
}

impl<V: Clone> TokenCache<V> {
    /// A cache of at most `capacity` tokens; 0 turns it off.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            keys: RandomState::default(),
            entries: Mutex::new(HashMap::default()),
        }
    }

    /// The outcome for `token` if it was remembered and is still valid at `now`.
    pub fn get(&self, token: &[u8], now: u64) -> Option<V> {
        if self.capacity == 0 {
            return None;
        }
        let key = self.keys.hash_one(token);
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries
            .get(&key)
            .filter(|entry| *entry.token == *token && now <= entry.valid_until)
            .map(|entry| entry.value.clone())
    }

    /// Remembers `value` for `token` until `valid_until`.
    pub fn insert(&self, token: &[u8], value: V, valid_until: u64, now: u64) {
        if self.capacity == 0 {
            return;
        }
        let key = self.keys.hash_one(token);
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= self.capacity && !entries.contains_key(&key) {
            entries.retain(|_, entry| now <= entry.valid_until);
            if entries.len() >= self.capacity
                && let Some(any) = entries.keys().next().copied()
            {
                entries.remove(&any);
            }
        }
        entries.insert(
            key,
            Entry {
                token: token.into(),
                value,
                valid_until,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Caller;

    fn caller(client_id: &str) -> Caller {
        Caller::new(
            client_id.into(),
            None,
            ["composition:read".to_owned()].into(),
        )
    }

    #[test]
    fn a_token_is_remembered_until_it_expires() {
        let cache = TokenCache::new(10);
        cache.insert(b"a.b.c", caller("mis-1"), 100, 50);
        assert_eq!(cache.get(b"a.b.c", 100), Some(caller("mis-1")));
        assert_eq!(cache.get(b"a.b.c", 101), None);
        assert_eq!(cache.get(b"a.b.d", 50), None);
    }

    #[test]
    fn the_cache_stays_within_its_bound() {
        let cache = TokenCache::new(3);
        for n in 0..10 {
            cache.insert(format!("token-{n}").as_bytes(), caller("mis-1"), 100, 0);
        }
        assert_eq!(cache.entries.lock().map(|e| e.len()).unwrap_or(0), 3);
        assert_eq!(cache.get(b"token-9", 0), Some(caller("mis-1")));
    }

    #[test]
    fn zero_turns_it_off() {
        let cache = TokenCache::new(0);
        cache.insert(b"a.b.c", caller("mis-1"), 100, 0);
        assert_eq!(cache.get(b"a.b.c", 0), None);
    }
}
