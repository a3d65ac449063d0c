//! The set of chunk ids a container holds, for deduplication, in 16 bytes per chunk.

use crate::ids::Hash;

/// Which chunks a container holds, for deduplication: 16 bytes per chunk instead of a map
/// entry of ~70 (a TiB of unique data at 32 KiB chunks is 32 M chunks: ~520 MiB here, ~2.2 GiB
/// as a `HashMap<Hash, Location>`).
///
/// A chunk is keyed by the first 128 bits of its BLAKE3 id. Two different chunks sharing them
/// would make a backup skip storing the second: by accident that is a ~2⁻⁷⁶ chance per TiB
/// backed up, and on purpose it needs a 2⁶⁴-work birthday search per attempt — and even then
/// restore would refuse the backup (it looks chunks up by the full id and verifies them), not
/// return wrong data.
///
/// Layout, a small log-structured merge: inserts go to a hash set of at most
/// [`ChunkSet::RECENT_MAX`] keys, which is merged into a sorted middle level, which is merged
/// into the sorted base (with a radix table over its top bits, so a lookup touches one or two
/// cache lines) when it reaches an eighth of it. Merges run in place from the back and grow
/// arrays with exact reservations, so memory stays ~16 bytes per key and does not jump.
#[derive(Default)]
pub struct ChunkSet {
    base: Vec<u128>,
    /// `base[radix[b]..radix[b + 1]]` holds the keys whose top `bits` bits are `b`.
    radix: Vec<u32>,
    bits: u32,
    mid: Vec<u128>,
    recent: std::collections::HashSet<u128>,
}

impl ChunkSet {
    /// Keys in the hash set before it is merged (~1 MiB).
    pub const RECENT_MAX: usize = 1 << 16;
    /// Smallest middle level that is merged into the base.
    const MID_MIN: usize = 1 << 20;

    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// A chunk's key: the first 128 bits of its id.
    pub(crate) fn key(id: &Hash) -> u128 {
        let mut k = [0u8; 16];
        k.copy_from_slice(&id.0[..16]);
        u128::from_be_bytes(k)
    }

    /// Number of chunks.
    pub fn len(&self) -> usize {
        self.base.len() + self.mid.len() + self.recent.len()
    }

    /// True if empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of memory held (for measurements).
    pub fn memory_bytes(&self) -> usize {
        (self.base.capacity() + self.mid.capacity()) * 16
            + self.radix.capacity() * 4
            + self.recent.capacity() * 17
    }

    /// Whether the chunk is in the set.
    pub fn contains(&self, id: &Hash) -> bool {
        self.has(Self::key(id))
    }

    fn has(&self, k: u128) -> bool {
        self.base_contains(k) || self.mid.binary_search(&k).is_ok() || self.recent.contains(&k)
    }

    fn base_contains(&self, k: u128) -> bool {
        if self.base.is_empty() {
            return false;
        }
        let b = (k >> (128 - self.bits)) as usize;
        let (lo, hi) = (self.radix[b] as usize, self.radix[b + 1] as usize);
        self.base[lo..hi].binary_search(&k).is_ok()
    }

    /// Adds the chunk; returns false if it was already there.
    pub fn insert(&mut self, id: &Hash) -> bool {
        let k = Self::key(id);
        if self.base_contains(k) || self.mid.binary_search(&k).is_ok() || !self.recent.insert(k) {
            return false;
        }
        if self.recent.len() >= Self::RECENT_MAX {
            let mut add: Vec<u128> = self.recent.drain().collect();
            add.sort_unstable();
            merge_into(&mut self.mid, &add);
            if self.mid.len() >= Self::MID_MIN.max(self.base.len() / 8) {
                self.merge_mid();
            }
        }
        true
    }

    /// A set of `keys` (in any order, repeats allowed), all in the base.
    pub(crate) fn from_keys(mut keys: Vec<u128>) -> ChunkSet {
        keys.sort_unstable();
        keys.dedup();
        keys.shrink_to_fit();
        let mut set = ChunkSet {
            base: keys,
            ..ChunkSet::default()
        };
        set.build_radix();
        set
    }

    fn merge_mid(&mut self) {
        let mid = std::mem::take(&mut self.mid);
        merge_into(&mut self.base, &mid);
        self.build_radix();
    }

    fn build_radix(&mut self) {
        // About 8 keys per radix bucket.
        let len = self.base.len().max(1);
        self.bits = (usize::BITS - len.leading_zeros())
            .saturating_sub(3)
            .clamp(1, 24);
        let buckets = 1usize << self.bits;
        self.radix.clear();
        self.radix.shrink_to(buckets + 1);
        self.radix.reserve_exact(buckets + 1);
        let mut at = 0usize;
        for b in 0..buckets {
            self.radix.push(at as u32);
            while at < self.base.len() && (self.base[at] >> (128 - self.bits)) as usize == b {
                at += 1;
            }
        }
        self.radix.push(at as u32);
    }

    /// Moves everything into the base (after loading, before a backup's lookups).
    pub fn compact(&mut self) {
        let mut add: Vec<u128> = self.recent.drain().collect();
        add.sort_unstable();
        merge_into(&mut self.mid, &add);
        self.recent = std::collections::HashSet::new();
        if !self.mid.is_empty() {
            self.merge_mid();
        }
    }
}

/// Merges sorted `add` into sorted `into`, in place from the back, growing it exactly.
fn merge_into(into: &mut Vec<u128>, add: &[u128]) {
    let (n, m) = (into.len(), add.len());
    into.reserve_exact(m);
    into.resize(n + m, 0);
    let (mut i, mut j, mut w) = (n, m, n + m);
    while j > 0 {
        if i > 0 && into[i - 1] > add[j - 1] {
            into[w - 1] = into[i - 1];
            i -= 1;
        } else {
            into[w - 1] = add[j - 1];
            j -= 1;
        }
        w -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_set_agrees_with_a_hash_set_across_merges() {
        let mut set = ChunkSet::new();
        let mut reference = std::collections::HashSet::new();
        let ids: Vec<Hash> = (0..(ChunkSet::RECENT_MAX as u64 * 40 + 1000))
            .map(|i| Hash::of(&i.to_le_bytes()))
            .collect();
        for (n, id) in ids.iter().enumerate() {
            assert_eq!(set.insert(id), reference.insert(*id), "insert {n}");
            if n % 4099 == 0 {
                // Re-inserting an old id is refused, whether it is merged or recent.
                assert!(!set.insert(&ids[n / 2]));
            }
        }
        set.compact();
        assert_eq!(set.len(), reference.len());
        for id in ids.iter().step_by(97) {
            assert!(set.contains(id));
        }
        for i in 0..10_000u64 {
            let other = Hash::of(&(u64::MAX - i).to_le_bytes());
            assert_eq!(set.contains(&other), reference.contains(&other));
        }
        assert!(
            set.memory_bytes() < reference.len() * 20,
            "{}",
            set.memory_bytes()
        );
    }
}
