//! A map whose entries expire a generation at a time: lookups see two generations, inserts
//! go to the newer, and when the newer one is `ttl` old (or holds `max` entries) the older
//! is dropped whole and a new one starts. Expiry costs nothing per access, where a scan for
//! stale entries costs the whole map (a scan on every insert once took a quarter of the
//! gateway's CPU). An entry lives at least `ttl` and at most `2 × ttl` (or until two more
//! generations have filled).

use std::{
    collections::HashMap,
    hash::Hash,
    time::{Duration, Instant},
};

/// See the [module docs](self). Not synchronised: callers keep it behind their own lock.
#[derive(Debug)]
pub struct Generations<K, V> {
    current: HashMap<K, V>,
    previous: HashMap<K, V>,
    started: Instant,
    ttl: Duration,
    max: usize,
}

impl<K: Eq + Hash, V: Clone> Generations<K, V> {
    /// An empty map whose generations last `ttl` and hold at most `max` entries.
    #[must_use]
    pub fn new(ttl: Duration, max: usize) -> Self {
        Self {
            current: HashMap::new(),
            previous: HashMap::new(),
            started: Instant::now(),
            ttl,
            max: max.max(1),
        }
    }

    /// Starts the next generation when this one is due, dropping the one before it.
    fn turn(&mut self) {
        if self.current.len() >= self.max || self.started.elapsed() >= self.ttl {
            self.previous = std::mem::take(&mut self.current);
            self.started = Instant::now();
        }
    }

    /// The value of `key`, if it has not expired. Finding it does not renew it.
    pub fn get(&mut self, key: &K) -> Option<V> {
        self.turn();
        self.current
            .get(key)
            .or_else(|| self.previous.get(key))
            .cloned()
    }

    /// Sets `key` to `value` in the newer generation.
    pub fn insert(&mut self, key: K, value: V) {
        self.turn();
        self.current.insert(key, value);
    }

    /// Forgets `key` at once.
    pub fn remove(&mut self, key: &K) {
        self.current.remove(key);
        self.previous.remove(key);
    }

    /// Entries held, expired or not.
    #[must_use]
    pub fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }

    /// Whether nothing is held.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_lives_one_to_two_generations() {
        let ttl = Duration::from_mins(1);
        let mut map = Generations::new(ttl, 1000);
        map.insert("a", 1);
        assert_eq!(map.get(&"a"), Some(1));
        map.started -= ttl;
        assert_eq!(
            map.get(&"a"),
            Some(1),
            "one ttl on: in the older generation"
        );
        map.insert("b", 2);
        map.started -= ttl;
        assert_eq!(map.get(&"a"), None, "two ttls on: gone");
        assert_eq!(map.get(&"b"), Some(2));
        map.remove(&"b");
        assert_eq!(map.get(&"b"), None, "removed at once");
        assert!(map.is_empty());
    }

    #[test]
    fn a_full_generation_starts_the_next_whatever_its_age() {
        let mut map = Generations::new(Duration::from_mins(1), 4);
        for n in 0..4 {
            map.insert(n, n);
        }
        map.insert(4, 4);
        assert_eq!(map.get(&0), Some(0), "kept for one more generation");
        for n in 5..8 {
            map.insert(n, n);
        }
        map.insert(8, 8);
        assert_eq!(map.get(&0), None);
        assert!(map.len() <= 8);
    }
}
