//! The record keys of the events committed since the last fold (`native::Tail`), kept so
//! that the writer finds a record sent again before it reaches `event_keys`. An exact set:
//! the keys themselves in a list (the fold writes them from it), found through a table of
//! their seeded 64-bit hashes. A hash that two keys share (never seen, but possible) moves
//! the second to the next free value, and a lookup walks on until it meets a free one.
//!
//! Why not a `HashMap<String, _>`: hashing and probing owned strings was 3.4% of the CPU per
//! committed MQTT event (measured 2026-12-07); the table of integers is a quarter of the size
//! and compares a key's text only when its hash matches.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};

/// Where `lookup` found a key, or the hash value it would take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    Found,
    Free(u64),
}

/// The keys and the `seq` of the event each belongs to.
#[derive(Debug, Default)]
pub struct Keys<S = foldhash::quality::RandomState> {
    /// Seeded per process: the keys come from devices.
    hasher: S,
    /// Hash value → index in `list`.
    slots: HashMap<u64, usize, BuildHasherDefault<Passed>>,
    list: Vec<(String, i64)>,
}

impl<S: BuildHasher> Keys<S> {
    #[cfg(test)]
    fn with_hasher(hasher: S) -> Self {
        Keys { hasher, slots: HashMap::default(), list: Vec::new() }
    }

    pub fn lookup(&self, key: &str) -> Lookup {
        let mut h = self.hasher.hash_one(key);
        loop {
            match self.slots.get(&h) {
                None => return Lookup::Free(h),
                Some(&i) if self.list.get(i).is_some_and(|(k, _)| k == key) => return Lookup::Found,
                Some(_) => h = h.wrapping_add(1),
            }
        }
    }

    /// Adds `key` at the value `lookup` answered for it (nothing was added in between).
    pub fn insert(&mut self, at: u64, key: String, seq: i64) {
        self.slots.insert(at, self.list.len());
        self.list.push((key, seq));
    }

    /// The keys in byte order, as the fold writes them.
    pub fn sorted(&self) -> Vec<(&str, i64)> {
        let mut keys: Vec<(&str, i64)> = self.list.iter().map(|(k, s)| (k.as_str(), *s)).collect();
        keys.sort_unstable();
        keys
    }

    pub fn clear(&mut self) {
        self.slots.clear();
        self.list.clear();
        // A burst's tables are not kept at their largest through the quiet hours after it.
        self.slots.shrink_to(4_096);
        self.list.shrink_to(4_096);
    }
}

/// The hasher of `slots`: its keys are hashes already.
#[derive(Debug, Default)]
struct Passed(u64);

impl Hasher for Passed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every key the same hash: the worst a collision can do.
    #[derive(Default)]
    struct Colliding;

    impl BuildHasher for Colliding {
        type Hasher = Passed;
        fn build_hasher(&self) -> Passed {
            Passed(7)
        }
    }

    fn add<S: BuildHasher>(keys: &mut Keys<S>, key: &str, seq: i64) {
        match keys.lookup(key) {
            Lookup::Free(at) => keys.insert(at, key.to_owned(), seq),
            Lookup::Found => panic!("{key} found before it was added"),
        }
    }

    #[test]
    fn keys_that_share_a_hash_are_each_found_and_no_other_is() {
        let mut keys = Keys::with_hasher(Colliding);
        for n in 0..200 {
            add(&mut keys, &format!("access:AC-{n}:7"), n);
        }
        assert_eq!(keys.sorted().len(), 200);
        for n in 0..200 {
            assert_eq!(keys.lookup(&format!("access:AC-{n}:7")), Lookup::Found, "{n}");
        }
        assert!(matches!(keys.lookup("access:AC-200:7"), Lookup::Free(_)));
        assert!(matches!(keys.lookup(""), Lookup::Free(_)));
        let sorted = keys.sorted();
        assert!(sorted.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(sorted.iter().find(|(k, _)| *k == "access:AC-42:7").map(|(_, s)| *s), Some(42));
        keys.clear();
        assert!(keys.sorted().is_empty());
        assert!(matches!(keys.lookup("access:AC-0:7"), Lookup::Free(_)));
    }

    #[test]
    fn the_seeded_table_finds_what_it_holds() {
        let mut keys: Keys = Keys::default();
        for n in 0..5_000 {
            add(&mut keys, &format!("vehicle:{n}|{}", n * 3), n);
        }
        assert!((0..5_000).all(|n| keys.lookup(&format!("vehicle:{n}|{}", n * 3)) == Lookup::Found));
        assert!((5_000..6_000).all(|n| keys.lookup(&format!("vehicle:{n}|{}", n * 3)) != Lookup::Found));
    }
}
