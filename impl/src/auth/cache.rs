//! Verification outcomes, remembered per token, so that a client polling every
//! few seconds pays for signature verification once per token, not per request.
//! The verifier keeps two: callers of valid tokens until the token expires, and
//! refusals that the key set decided (a bad signature stays bad under it).
//!
//! Each outcome carries the generation of the key set it was decided under and
//! is used only while that set is in force: a rotation re-verifies every token
//! once, and a removed key's tokens are refused from the moment its set goes.
//! Keyed by the whole token, in a [`Bounded`] map: O(1) whatever the size, and a
//! flood of tokens seen once cannot push out the ones clients keep using.

use crate::bounded::Bounded;

/// Outcomes (`V`) of recently verified tokens.
pub(super) struct TokenCache<V> {
    map: Bounded<Box<[u8]>, Remembered<V>>,
}

impl<V: Clone> std::fmt::Debug for TokenCache<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("map", &self.map)
            .finish()
    }
}

#[derive(Clone, Debug)]
struct Remembered<V> {
    value: V,
    /// Seconds since the epoch after which the token must be verified again
    /// (its `exp` plus the allowed leeway, the same rule as verification).
    valid_until: u64,
    /// The key set that decided it.
    generation: u64,
}

impl<V: Clone> TokenCache<V> {
    /// A cache of at most `capacity` tokens; 0 turns it off.
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            map: Bounded::new(capacity),
        }
    }

    /// The outcome for `token`, if it was decided under key set `generation` and
    /// is still valid at `now`.
    pub(super) fn get(&self, token: &[u8], now: u64, generation: u64) -> Option<V> {
        self.map
            .get(token, |entry| {
                entry.generation == generation && now <= entry.valid_until
            })
            .map(|entry| entry.value)
    }

    /// Remembers `value` for `token`, decided under key set `generation`, until
    /// `valid_until`.
    pub(super) fn insert(&self, token: &[u8], value: V, valid_until: u64, generation: u64) {
        self.map.insert(
            token.into(),
            Remembered {
                value,
                valid_until,
                generation,
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
        cache.insert(b"a.b.c", caller("mis-1"), 100, 1);
        assert_eq!(cache.get(b"a.b.c", 100, 1), Some(caller("mis-1")));
        assert_eq!(cache.get(b"a.b.c", 101, 1), None);
        assert_eq!(cache.get(b"a.b.d", 50, 1), None);
    }

    #[test]
    fn an_outcome_is_forgotten_when_another_key_set_comes_into_force() {
        let cache = TokenCache::new(10);
        cache.insert(b"a.b.c", caller("mis-1"), 100, 1);
        assert_eq!(cache.get(b"a.b.c", 50, 2), None);
        // Gone for good: the older set never comes back under its generation.
        assert_eq!(cache.get(b"a.b.c", 50, 1), None);
    }

    #[test]
    fn zero_turns_it_off() {
        let cache = TokenCache::new(0);
        cache.insert(b"a.b.c", caller("mis-1"), 100, 1);
        assert_eq!(cache.get(b"a.b.c", 0, 1), None);
    }
}
