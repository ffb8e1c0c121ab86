//! Remembering the API server's answers about callers for a while, as the kubelet's webhook
//! authenticator and authorizer do, so a scraper polling every few seconds costs the API
//! server one review per TTL rather than two per scrape.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The most answers kept; past it, expired ones are dropped, and if none were, all are (a
/// flood of distinct tokens must not grow memory without bound).
const CAPACITY: usize = 4096;

/// Answers by key, each until its own deadline.
pub(crate) struct TtlCache<K, V> {
    entries: Mutex<HashMap<K, (Instant, V)>>,
}

impl<K: Eq + Hash, V: Clone> TtlCache<K, V> {
    pub(crate) fn new() -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The answer for `key`, if one is still fresh.
    pub(crate) fn get(&self, key: &K) -> Option<V> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(key)
            .filter(|(deadline, _)| *deadline > Instant::now())
            .map(|(_, value)| value.clone())
    }

    /// Keeps `value` for `ttl`.
    pub(crate) fn put(&self, key: K, value: V, ttl: Duration) {
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= CAPACITY {
            entries.retain(|_, (deadline, _)| *deadline > now);
            if entries.len() >= CAPACITY {
                entries.clear();
            }
        }
        entries.insert(key, (now + ttl, value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_expire_and_the_cache_stays_bounded() {
        let cache = TtlCache::new();
        cache.put("a", 1, Duration::from_secs(60));
        cache.put("gone", 2, Duration::ZERO);
        assert_eq!(cache.get(&"a"), Some(1));
        assert_eq!(cache.get(&"gone"), None);
        for n in 0..CAPACITY * 2 {
            cache.put(
                Box::leak(n.to_string().into_boxed_str()),
                n,
                Duration::from_secs(60),
            );
        }
        assert!(cache.entries.lock().unwrap().len() <= CAPACITY);
    }
}
