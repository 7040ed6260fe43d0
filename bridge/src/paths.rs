//! Device paths as the bridge keeps them in memory, and the map of the known ones.
//!
//! A path is its 128-bit hash (SHA-256, truncated): 16 bytes however long the path, and two
//! paths of one fleet share a hash with a probability of about 10⁻²⁷ — never, in practice.
//!
//! `PathMap` holds a million paths in about 40 MiB: parallel arrays sorted by hash (found by
//! binary search; 40 bytes per path with its device id and last use), and the paths learned since
//! the last merge in a small hash map. A linked LRU (hashlink's, used before) took 83 bytes per
//! path, a node per entry plus its table: 79 MiB for a million, measured. Past its bound the least
//! recently used sixteenth goes at once, so that a full map does not pay a search per insert.

use std::collections::HashMap;

use sha2::{Digest as _, Sha256};
use uuid::Uuid;

/// A device path as the bridge keeps it.
pub type PathKey = [u8; 16];

pub fn path_key(path: &str) -> PathKey {
    let digest = Sha256::digest(path.as_bytes());
    digest[..16].try_into().expect("16 bytes")
}

/// Paths learned since the last merge, at most this many (or a sixteenth of the arrays).
const MIN_RECENT: usize = 1024;

/// Path hash → device id, bounded, least recently used first out.
pub struct PathMap {
    max: usize,
    /// Sorted. An entry whose id is nil was removed (until the next merge drops it).
    keys: Vec<PathKey>,
    ids: Vec<Uuid>,
    /// The `clock` of each entry's last use.
    used: Vec<u64>,
    removed: usize,
    recent: HashMap<PathKey, (Uuid, u64)>,
    clock: u64,
}

impl PathMap {
    /// A map of at most `max` paths (at least one).
    pub fn new(max: usize) -> PathMap {
        PathMap {
            max: max.max(1),
            keys: Vec::new(),
            ids: Vec::new(),
            used: Vec::new(),
            removed: 0,
            recent: HashMap::new(),
            clock: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.keys.len() - self.removed + self.recent.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The device of `key`, which becomes the most recently used.
    pub fn get(&mut self, key: &PathKey) -> Option<Uuid> {
        self.clock += 1;
        if let Some((id, used)) = self.recent.get_mut(key) {
            *used = self.clock;
            return Some(*id);
        }
        let i = self.live(key)?;
        self.used[i] = self.clock;
        Some(self.ids[i])
    }

    /// The device of `key`, its last use unchanged.
    pub fn peek(&self, key: &PathKey) -> Option<Uuid> {
        match self.recent.get(key) {
            Some((id, _)) => Some(*id),
            None => self.live(key).map(|i| self.ids[i]),
        }
    }

    /// Maps `key` to `id` (the most recently used); the id it had before.
    pub fn insert(&mut self, key: PathKey, id: Uuid) -> Option<Uuid> {
        debug_assert!(!id.is_nil(), "nil marks a removed entry");
        self.clock += 1;
        if let Some(i) = self.live(&key) {
            self.used[i] = self.clock;
            return Some(std::mem::replace(&mut self.ids[i], id));
        }
        let before = self.recent.insert(key, (id, self.clock)).map(|(id, _)| id);
        if before.is_none() {
            if self.len() > self.max {
                self.evict();
            } else if self.recent.len() > MIN_RECENT.max(self.keys.len() / 16) {
                self.merge();
            }
        }
        before
    }

    pub fn remove(&mut self, key: &PathKey) -> Option<Uuid> {
        if let Some((id, _)) = self.recent.remove(key) {
            return Some(id);
        }
        let i = self.live(key)?;
        self.removed += 1;
        Some(std::mem::replace(&mut self.ids[i], Uuid::nil()))
    }

    /// Every path mapped to `id`.
    pub fn keys_of(&self, id: Uuid) -> Vec<PathKey> {
        let recent = self.recent.iter().filter(|(_, (i, _))| *i == id);
        let merged = self.keys.iter().zip(&self.ids).filter(|(_, i)| **i == id);
        recent
            .map(|(k, _)| *k)
            .chain(merged.map(|(k, _)| *k))
            .collect()
    }

    /// Every entry, least recently used first.
    pub fn by_use(&mut self) -> impl Iterator<Item = (PathKey, Uuid)> + '_ {
        self.merge();
        // An index per entry (4 bytes), not a copy of the entries.
        let mut order: Vec<u32> = (0..self.keys.len() as u32).collect();
        order.sort_unstable_by_key(|&i| self.used[i as usize]);
        order
            .into_iter()
            .map(|i| (self.keys[i as usize], self.ids[i as usize]))
    }

    fn live(&self, key: &PathKey) -> Option<usize> {
        let i = self.keys.binary_search(key).ok()?;
        (!self.ids[i].is_nil()).then_some(i)
    }

    /// Moves the recent entries into the arrays, dropping the removed ones.
    fn merge(&mut self) {
        if self.removed > 0 {
            let mut kept = 0;
            for i in 0..self.keys.len() {
                if !self.ids[i].is_nil() {
                    self.keys[kept] = self.keys[i];
                    self.ids[kept] = self.ids[i];
                    self.used[kept] = self.used[i];
                    kept += 1;
                }
            }
            self.truncate(kept);
            self.removed = 0;
        }
        if self.recent.is_empty() {
            return;
        }
        let mut recent: Vec<(PathKey, (Uuid, u64))> = self.recent.drain().collect();
        recent.sort_unstable_by_key(|(key, _)| *key);
        // Merged from the back, in place: the arrays grow by exactly what is added.
        let old = self.keys.len();
        let new = old + recent.len();
        self.keys.reserve_exact(recent.len());
        self.ids.reserve_exact(recent.len());
        self.used.reserve_exact(recent.len());
        self.keys.resize(new, [0; 16]);
        self.ids.resize(new, Uuid::nil());
        self.used.resize(new, 0);
        let (mut i, mut j) = (old, recent.len());
        for k in (0..new).rev() {
            let take_recent = j > 0 && (i == 0 || recent[j - 1].0 > self.keys[i - 1]);
            if take_recent {
                j -= 1;
                let (key, (id, used)) = recent[j];
                (self.keys[k], self.ids[k], self.used[k]) = (key, id, used);
            } else {
                i -= 1;
                (self.keys[k], self.ids[k], self.used[k]) =
                    (self.keys[i], self.ids[i], self.used[i]);
            }
        }
        self.recent.shrink_to(MIN_RECENT);
    }

    /// Back within the bound, and a sixteenth below it: the least recently used go.
    fn evict(&mut self) {
        self.merge();
        let keep = self.max - self.max / 16;
        let excess = self.keys.len().saturating_sub(keep);
        if excess == 0 {
            return;
        }
        let mut used = self.used.clone();
        let (_, cutoff, _) = used.select_nth_unstable(excess - 1);
        // Uses are unique (a tick each): exactly `excess` entries are at or below the cutoff.
        let cutoff = *cutoff;
        drop(used);
        for (i, used) in self.used.iter().enumerate() {
            if *used <= cutoff {
                self.ids[i] = Uuid::nil();
            }
        }
        self.removed = excess;
        self.merge();
    }

    fn truncate(&mut self, len: usize) {
        self.keys.truncate(len);
        self.ids.truncate(len);
        self.used.truncate(len);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn key(i: u64) -> PathKey {
        path_key(&format!("plant/{i}"))
    }

    /// Random inserts, lookups and removals against a plain map: the same answers while under
    /// the bound (across many merges).
    #[test]
    fn it_answers_as_a_plain_map_does() {
        let mut map = PathMap::new(1 << 20);
        let mut model: HashMap<PathKey, Uuid> = HashMap::new();
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..60_000 {
            let k = key(next() % 5_000);
            match next() % 4 {
                0 | 1 => {
                    let id = Uuid::from_u64_pair(next(), next() | 1);
                    assert_eq!(map.insert(k, id), model.insert(k, id));
                }
                2 => assert_eq!(map.get(&k), model.get(&k).copied()),
                _ => assert_eq!(map.remove(&k), model.remove(&k)),
            }
            assert_eq!(map.len(), model.len());
        }
        map.merge();
        for (k, id) in &model {
            assert_eq!(map.peek(k), Some(*id));
        }
        let all: HashMap<PathKey, Uuid> = map.by_use().collect();
        assert_eq!(all, model);
    }

    #[test]
    fn past_the_bound_the_least_recently_used_go_first() {
        let mut map = PathMap::new(3200);
        for i in 0..3200 {
            map.insert(key(i), Uuid::from_u64_pair(1, i + 1));
        }
        // The first hundred used again: now the most recent.
        for i in 0..100 {
            assert!(map.get(&key(i)).is_some());
        }
        map.insert(key(9999), Uuid::from_u64_pair(1, 9999));
        assert_eq!(map.len(), 3000, "a sixteenth below the bound");
        for i in 0..100 {
            assert!(map.peek(&key(i)).is_some(), "used lately: kept");
        }
        for i in 100..301 {
            assert!(map.peek(&key(i)).is_none(), "least recently used: gone");
        }
        assert!(map.peek(&key(9999)).is_some());
        let order: Vec<PathKey> = map.by_use().map(|(k, _)| k).collect();
        assert_eq!(order.last(), Some(&key(9999)));
        assert_eq!(order[order.len() - 101], key(0), "then the ones used again");
    }

    #[test]
    fn a_device_under_several_paths_is_found_by_its_id() {
        let mut map = PathMap::new(10);
        let id = Uuid::from_u64_pair(7, 7);
        map.insert(key(1), id);
        map.merge();
        map.insert(key(2), id);
        map.insert(key(3), Uuid::from_u64_pair(8, 8));
        let mut keys = map.keys_of(id);
        keys.sort_unstable();
        let mut expected = vec![key(1), key(2)];
        expected.sort_unstable();
        assert_eq!(keys, expected);
    }
}
