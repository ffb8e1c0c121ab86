//! Remembering the API server's answers about callers for a while, as the kubelet's webhook
//! authenticator and authorizer do, so a scraper polling every few seconds costs the API
//! server one review per TTL rather than two per scrape.

use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hashlink::LruCache;

/// The most answers kept; past it, the least recently used go (a flood of distinct tokens
/// must not grow memory without bound, nor push out the answers in use).
const CAPACITY: usize = 4096;

/// Answers by key, each until its own deadline.
pub(crate) struct TtlCache<K: Eq + Hash, V> {
    entries: Mutex<LruCache<K, (Instant, V)>>,
}

impl<K: Eq + Hash, V: Clone> TtlCache<K, V> {
    pub(crate) fn new() -> Self {
        Self {
            entries: Mutex::new(LruCache::new(CAPACITY)),
        }
    }

    /// The answer for `key`, if one is still fresh.
    pub(crate) fn get(&self, key: &K) -> Option<V> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(key)
            .filter(|(deadline, _)| *deadline > Instant::now())
            .map(|(_, value)| value.clone())
    }

    /// Keeps `value` for `ttl`.
    pub(crate) fn put(&self, key: K, value: V, ttl: Duration) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.insert(key, (Instant::now() + ttl, value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_expire_and_the_cache_stays_bounded() {
        let cache = TtlCache::new();
        cache.put("a".to_string(), 1, Duration::from_secs(60));
        cache.put("gone".to_string(), 2, Duration::ZERO);
        assert_eq!(cache.get(&"a".to_string()), Some(1));
        assert_eq!(cache.get(&"gone".to_string()), None);
        for n in 0..CAPACITY * 2 {
            cache.put(n.to_string(), n, Duration::from_secs(60));
        }
        assert_eq!(cache.entries.lock().unwrap().len(), CAPACITY);
    }

    #[test]
    fn a_flood_of_new_keys_pushes_out_the_least_recently_used_not_everything() {
        let cache = TtlCache::new();
        cache.put("scraper".to_string(), 1, Duration::from_secs(60));
        for n in 0..CAPACITY * 2 {
            // The scraper keeps asking while the flood goes on.
            assert_eq!(cache.get(&"scraper".to_string()), Some(1), "lost at {n}");
            cache.put(format!("flood-{n}"), 0, Duration::from_secs(60));
        }
    }
}
