//! Verified tokens, remembered until they expire, so that a client polling every
//! few seconds pays for signature verification once per token, not per request.
//!
//! Bounded: when full, expired entries go first, then an arbitrary one. Keyed by
//! a fast hash with a per-process random seed (foldhash), and every hit compares
//! the whole token, so no hash collision can stand in for a verification.

use std::collections::HashMap;
use std::hash::BuildHasher;

use foldhash::fast::RandomState;
use std::sync::{Mutex, PoisonError};

use super::Caller;

/// Callers of recently verified tokens.
#[derive(Debug)]
pub struct TokenCache {
    capacity: usize,
    keys: RandomState,
    entries: Mutex<HashMap<u64, Entry>>,
}

#[derive(Debug)]
struct Entry {
    token: Box<str>,
    caller: Caller,
    /// Seconds since the epoch after which the token must be verified again
    /// (its `exp` plus the allowed leeway, the same rule as verification).
    valid_until: u64,
}

impl TokenCache {
    /// A cache of at most `capacity` tokens; 0 turns it off.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            keys: RandomState::default(),
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The caller of `token` if it was verified and is still valid at `now`.
    pub fn get(&self, token: &str, now: u64) -> Option<Caller> {
        if self.capacity == 0 {
            return None;
        }
        let key = self.keys.hash_one(token);
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries
            .get(&key)
            .filter(|entry| *entry.token == *token && now <= entry.valid_until)
            .map(|entry| entry.caller.clone())
    }

    /// Remembers that `token` identifies `caller` until `valid_until`.
    pub fn insert(&self, token: &str, caller: Caller, valid_until: u64, now: u64) {
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
                caller,
                valid_until,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(client_id: &str) -> Caller {
        Caller {
            client_id: client_id.into(),
            subject: None,
            scopes: ["composition:read".to_owned()].into(),
        }
    }

    #[test]
    fn a_token_is_remembered_until_it_expires() {
        let cache = TokenCache::new(10);
        cache.insert("a.b.c", caller("mis-1"), 100, 50);
        assert_eq!(cache.get("a.b.c", 100), Some(caller("mis-1")));
        assert_eq!(cache.get("a.b.c", 101), None);
        assert_eq!(cache.get("a.b.d", 50), None);
    }

    #[test]
    fn the_cache_stays_within_its_bound() {
        let cache = TokenCache::new(3);
        for n in 0..10 {
            cache.insert(&format!("token-{n}"), caller("mis-1"), 100, 0);
        }
        assert_eq!(cache.entries.lock().map(|e| e.len()).unwrap_or(0), 3);
        assert_eq!(cache.get("token-9", 0), Some(caller("mis-1")));
    }

    #[test]
    fn zero_turns_it_off() {
        let cache = TokenCache::new(0);
        cache.insert("a.b.c", caller("mis-1"), 100, 0);
        assert_eq!(cache.get("a.b.c", 0), None);
    }
}
