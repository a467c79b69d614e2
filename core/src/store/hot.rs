//! The hot-key cache: a hash table of recently read or written small values in front of the
//! tree, for point reads.
//!
//! Why: on cached GETs the tree walk (a page-table lookup and a binary search per level,
//! each comparison chasing a key on the heap) took half of kvsd's CPU (`docs/benchmarks.md`,
//! profile of 2026-11-26). One hash probe replaces it.
//!
//! Two generations approximate LRU without per-entry bookkeeping: entries go into the young
//! table; a hit in the old table moves the entry to the young one; when the young table holds
//! half the budget, the old table is dropped and the young one becomes old. Every tree change
//! of a cached key goes through [`HotCache::update`], [`HotCache::write_young`] or
//! [`HotCache::remove`] with no await in between, so an entry never disagrees with the tree.
//!
//! Entries also carry a [`Place`]: the leaf and slot that held the key. Writes use it to skip
//! the tree walk (`State::replace_in_leaf` checks it first); for SETs at pipeline 16 the walk
//! was a third of kvsd's CPU (docs/benchmarks.md).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use super::key::Key;
use crate::state::Versioned;

/// FNV-1a: keys are short, and SipHash's setup dominates for them.
#[derive(Default)]
pub struct FnvHasher(u64);

impl Hasher for FnvHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.0 = h;
    }
}

/// For page ids: one multiply spreads consecutive ids over the table.
#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8 | u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

pub type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;
/// Keys as the tree holds them: a short key sits in the table itself, so a probe compares
/// bytes in the table instead of following a pointer to the key's allocation.
type KeyMap = HashMap<Key, Hot, BuildHasherDefault<FnvHasher>>;

/// A cached value, and where the key was when it was cached: its leaf page (0: unknown) and
/// its slot in the leaf. They are a hint for writes ([`super::tree::State::replace_in_leaf`]
/// checks it): a write to a known key then skips the walk down the tree and the search in
/// the leaf.
struct Hot {
    value: Versioned,
    leaf: u64,
    slot: u32,
}

/// Where the tree holds a key: leaf page and slot (a hint, checked before use).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Place {
    pub leaf: u64,
    pub slot: u32,
}

/// Values larger than this are not cached.
pub const HOT_VALUE_MAX: usize = 1024;
/// Bytes an entry is charged beyond its key and value.
const ENTRY_OVERHEAD: usize = 64;

pub struct HotCache {
    young: KeyMap,
    old: KeyMap,
    young_bytes: usize,
    budget: usize,
    pub hits: u64,
    pub misses: u64,
}

fn cost(key: &[u8], hot: &Hot) -> usize {
    key.len() + hot.value.value.len() + ENTRY_OVERHEAD
}

impl HotCache {
    pub fn new(budget: usize) -> HotCache {
        HotCache {
            young: KeyMap::default(),
            old: KeyMap::default(),
            young_bytes: 0,
            budget,
            hits: 0,
            misses: 0,
        }
    }

    pub fn get(&mut self, key: &[u8]) -> Option<Versioned> {
        self.get_with(key, Versioned::clone)
    }

    /// Like `get`, lending the cached value to `f` instead of copying it (a reply rendered
    /// straight from the cache).
    pub fn get_with<R>(&mut self, key: &[u8], f: impl FnOnce(&Versioned) -> R) -> Option<R> {
        if let Some(hot) = self.young.get(key) {
            self.hits += 1;
            return Some(f(&hot.value));
        }
        match self.old.remove(key) {
            Some(hot) => {
                self.hits += 1;
                let out = f(&hot.value);
                self.insert_young(Key::new(key), hot);
                Some(out)
            }
            None => {
                self.misses += 1;
                None
            }
        }
    }

    /// Where a young key is, if the cache knows: a write there may skip the walk down the
    /// tree (`State::replace_in_leaf` checks the place).
    pub fn place_of(&self, key: &[u8]) -> Option<Place> {
        self.young
            .get(key)
            .filter(|hot| hot.leaf != 0)
            .map(|hot| Place {
                leaf: hot.leaf,
                slot: hot.slot,
            })
    }

    /// Records where the young key `key` is now.
    pub fn set_place(&mut self, key: &[u8], place: Place) {
        if let Some(hot) = self.young.get_mut(key) {
            hot.leaf = place.leaf;
            hot.slot = place.slot;
        }
    }

    /// Records a write of `value` at `version` to the young key `key` (its place follows with
    /// [`HotCache::set_place`] once the leaf took the write). The bytes go into the cached
    /// value's own allocation when it has the room and is not far larger (a SET of a
    /// same-sized value, the usual case): a SET through the cache allocated a copy and freed
    /// the old one, ~3% of kvsd's CPU at pipeline 16.
    pub fn write_young(&mut self, key: &[u8], version: u64, value: &[u8]) {
        let hot = self.young.get_mut(key).expect("a young key");
        let before = cost(key, hot);
        let cached = &mut hot.value;
        cached.version = version;
        if cached.value.capacity() >= value.len() && cached.value.capacity() <= 2 * value.len() + 64
        {
            cached.value.clear();
            cached.value.extend_from_slice(value);
        } else {
            cached.value = value.to_vec();
        }
        self.young_bytes = self.young_bytes - before + cost(key, hot);
    }

    fn insert_young(&mut self, key: Key, value: Hot) {
        if self.budget == 0 {
            return;
        }
        self.young_bytes += cost(&key, &value);
        if let Some(old) = self.young.insert(key.clone(), value) {
            self.young_bytes -= cost(&key, &old);
        }
        if self.young_bytes * 2 >= self.budget {
            self.old = std::mem::take(&mut self.young);
            self.young_bytes = 0;
        }
    }

    /// Records what the tree now holds for `key` (a read's result), found in page `leaf`.
    pub fn put(&mut self, key: &[u8], value: &Versioned, place: Place) {
        self.update(key, value.clone(), place);
    }

    /// Records a write of `key`: the tree now holds `value` at `place` (leaf 0: unknown).
    /// A written key is cached as a read one is (write-allocate), so the next write of it
    /// finds its place here and skips the walk down the tree: for SETs at pipeline 16 that
    /// walk and its key comparisons were a quarter of kvsd's CPU while only read keys were
    /// cached (docs/benchmarks.md, 2026-12-04, third session).
    pub fn update(&mut self, key: &[u8], value: Versioned, place: Place) {
        if value.value.len() > HOT_VALUE_MAX {
            self.remove(key);
            return;
        }
        let hot = Hot {
            value,
            leaf: place.leaf,
            slot: place.slot,
        };
        if let Some(slot) = self.young.get_mut(key) {
            let before = cost(key, slot);
            *slot = hot;
            self.young_bytes = self.young_bytes - before + cost(key, slot);
            return;
        }
        self.old.remove(key);
        self.insert_young(Key::new(key), hot);
    }

    pub fn remove(&mut self, key: &[u8]) {
        if let Some(old) = self.young.remove(key) {
            self.young_bytes -= cost(key, &old);
        }
        self.old.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(version: u64, value: &str) -> Versioned {
        Versioned {
            version,
            value: value.as_bytes().to_vec(),
        }
    }

    #[test]
    fn hits_misses_updates_and_generations() {
        let mut cache = HotCache::new(10 * (ENTRY_OVERHEAD + 8));
        assert_eq!(cache.get(b"a"), None);
        cache.put(b"a", &v(1, "one"), Place::default());
        assert_eq!(cache.get(b"a"), Some(v(1, "one")));
        cache.put(b"a", &v(2, "two"), Place::default());
        assert_eq!(cache.get(b"a"), Some(v(2, "two")));
        let at = Place { leaf: 7, slot: 3 };
        cache.update(b"a", v(3, "three"), at);
        assert_eq!(cache.place_of(b"a"), Some(at));
        cache.write_young(b"a", 5, b"five");
        cache.set_place(b"a", Place { leaf: 7, slot: 4 });
        assert_eq!(cache.get(b"a"), Some(v(5, "five")));
        assert_eq!(cache.place_of(b"a"), Some(Place { leaf: 7, slot: 4 }));
        cache.write_young(b"a", 6, &[b'x'; 500]);
        assert_eq!(cache.get(b"a").unwrap().value, vec![b'x'; 500], "grown");
        cache.write_young(b"a", 7, b"five");
        assert_eq!(cache.get(b"a"), Some(v(7, "five")), "shrunk");
        assert_eq!(cache.place_of(b"b"), None);
        cache.update(b"a", v(3, "three"), at);
        assert_eq!(cache.get(b"a"), Some(v(3, "three")));
        cache.remove(b"a");
        assert_eq!(cache.get(b"a"), None);
        cache.update(b"a", v(4, "four"), at);
        assert_eq!(
            cache.get(b"a"),
            Some(v(4, "four")),
            "a written key is cached"
        );
        // Fill past the budget: old entries age out, recent ones stay.
        for i in 0..100u64 {
            cache.put(format!("k{i}").as_bytes(), &v(i, "v"), Place::default());
        }
        assert_eq!(cache.get(b"k99"), Some(v(99, "v")));
        assert_eq!(cache.get(b"k0"), None);
        let big = Versioned {
            version: 1,
            value: vec![0; HOT_VALUE_MAX + 1],
        };
        cache.put(b"k99", &big, Place::default());
        assert_eq!(cache.get(b"k99"), None, "large values are not cached");
    }
}
