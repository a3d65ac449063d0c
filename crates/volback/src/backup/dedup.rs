//! A backup's dedup set, in memory that does not grow with the container.
//!
//! A backup must know which chunks the container already holds, so that it stores each chunk
//! once. Held in memory as a [`ChunkSet`] (16 bytes per chunk), that costs ~0.5 GiB per TiB of
//! the container's unique data: a small volume backed up into a large container would need
//! memory in proportion to the container, and an incremental of a 16 GiB volume peaked ~25 %
//! above one of a 4 GiB volume (`benches/rss.py`).
//!
//! A [`DedupSet`] keeps a small container's chunks in memory (up to `mem_keys`; by default
//! [`DEFAULT_MEM_KEYS`], ~2 GiB of unique data). A larger container's chunks go to a sorted,
//! unlinked temporary file in `$TMPDIR` (16 bytes per chunk), with the first key of every block
//! of [`BLOCK_KEYS`] keys kept in memory: 1/16 byte per chunk. The chunks of a batch are looked
//! up together, in key order, with one positional read per block they touch (served by the page
//! cache: the file is small and hot). Building it is an external sort of the keys streamed from
//! the index scan: sorted runs of `mem_keys` keys, merged into the final file.
//!
//! Chunks the backup itself stores go to an in-memory [`ChunkSet`]: they grow with the volume's
//! new data, not with the container.
//!
//! Keys are the first 128 bits of a chunk's BLAKE3 id, as in [`ChunkSet`] (whose documentation
//! weighs the collision risk).

use std::os::unix::fs::FileExt;

use std::collections::HashSet;

use crate::container::{Container, IndexUse};
use crate::error::{Error, Result};
use crate::extsort::{Record, Runs, ScratchOps, Sorted, scratch_err};
use crate::format::pack::PackEntry;
use crate::ids::Hash;
use crate::index::{ChunkSet, Index};

/// Keys held in memory before they are spilled to a temporary file (1 MiB): containers of up to
/// ~2 GiB of unique data at 32 KiB chunks stay in memory, where a lookup costs no system call.
pub const DEFAULT_MEM_KEYS: usize = 1 << 16;
/// Keys per block of the file (4 KiB, one read); the first key of each block stays in memory.
pub const BLOCK_KEYS: usize = 256;
const KEY_LEN: usize = 16;

/// Which chunks a backup need not store: see the module documentation.
pub struct DedupSet {
    /// The container's chunks, when spilled to a file.
    held: Option<Sorted<u128>>,
    /// The chunks this backup stored, and the container's when they fit in memory.
    added: ChunkSet,
}

impl DedupSet {
    /// An empty set (a new container).
    pub fn new() -> Self {
        DedupSet {
            held: None,
            added: ChunkSet::new(),
        }
    }

    /// A builder that keeps at most `mem_keys` keys in memory.
    pub fn builder(mem_keys: usize) -> DedupBuilder {
        DedupBuilder {
            mem_keys: mem_keys.max(BLOCK_KEYS),
            buf: Vec::new(),
            runs: Runs::new(),
            failed: None,
        }
    }

    /// Number of distinct chunks (the container's and this backup's).
    pub fn len(&self) -> usize {
        self.held.as_ref().map_or(0, |h| h.len) + self.added.len()
    }

    /// True if the set holds no chunk.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the container's chunks went to a temporary file.
    pub fn spilled(&self) -> bool {
        self.held.is_some()
    }

    /// For each of `ids`, in order: true if the set holds it (the container's, stored by this
    /// backup, or earlier in `ids`), else false, and from then on the set holds it.
    pub fn check_and_add(&mut self, ids: &[Hash]) -> Result<Vec<bool>> {
        let mut known = vec![false; ids.len()];
        if let Some(held) = &self.held {
            held.mark(ids, &mut known)?;
        }
        for (k, id) in known.iter_mut().zip(ids) {
            if !*k {
                *k = !self.added.insert(id);
            }
        }
        Ok(known)
    }

    /// Memory held, in bytes (for measurements).
    pub fn memory_bytes(&self) -> usize {
        self.held
            .as_ref()
            .map_or(0, |h| h.fences.capacity() * KEY_LEN)
            + self.added.memory_bytes()
    }
}

impl Default for DedupSet {
    fn default() -> Self {
        Self::new()
    }
}

/// The container's chunks when they did not fit in memory.
impl Sorted<u128> {
    /// Sets `known[i]` for each of `ids` in the file: the ids are visited in key order, each
    /// block read once.
    fn mark(&self, ids: &[Hash], known: &mut [bool]) -> Result<()> {
        let mut order: Vec<(u128, usize)> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| (ChunkSet::key(id), i))
            .collect();
        order.sort_unstable();
        let mut bytes = vec![0u8; BLOCK_KEYS * KEY_LEN];
        let mut keys = 0; // in the loaded block
        let mut loaded = None;
        for (key, i) in order {
            let b = self.fences.partition_point(|f| *f <= key);
            if b == 0 {
                continue;
            }
            let b = b - 1;
            if loaded != Some(b) {
                let n = BLOCK_KEYS.min(self.len - b * BLOCK_KEYS);
                self.file
                    .read_exact_at(&mut bytes[..n * KEY_LEN], (b * BLOCK_KEYS * KEY_LEN) as u64)
                    .map_err(scratch_err(u128::OPS.read))?;
                keys = n;
                loaded = Some(b);
            }
            // Keys are stored big-endian, so byte order is key order.
            let want = key.to_be_bytes();
            let (mut lo, mut hi) = (0, keys);
            while lo < hi {
                let mid = (lo + hi) / 2;
                match bytes[mid * KEY_LEN..(mid + 1) * KEY_LEN].cmp(&want[..]) {
                    std::cmp::Ordering::Less => lo = mid + 1,
                    std::cmp::Ordering::Greater => hi = mid,
                    std::cmp::Ordering::Equal => {
                        known[i] = true;
                        break;
                    }
                }
            }
        }
        Ok(())
    }
}

/// A key as a record of the scratch table: 16 bytes, big-endian, so that byte order is key
/// order (lookups compare the block's bytes as they are).
impl Record for u128 {
    const LEN: usize = KEY_LEN;
    const OPS: ScratchOps = ScratchOps {
        create: "create dedup set in",
        write: "write dedup set in",
        read: "read dedup set in",
    };
    type Id = u128;
    type Order = u128;

    fn id(&self) -> u128 {
        *self
    }

    fn order(&self) -> u128 {
        *self
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_be_bytes());
    }

    fn decode(b: &[u8]) -> Result<u128> {
        let mut k = [0u8; KEY_LEN];
        k.copy_from_slice(b);
        Ok(u128::from_be_bytes(k))
    }
}

/// Collects the container's chunks during the index scan (see [`DedupSet::builder`]).
pub struct DedupBuilder {
    mem_keys: usize,
    buf: Vec<u128>,
    runs: Runs,
    /// The first error while spilling (the index scan's visitor cannot return one).
    failed: Option<Error>,
}

impl DedupBuilder {
    /// Adds a chunk the container holds.
    pub fn add(&mut self, id: &Hash) {
        if self.failed.is_some() {
            return;
        }
        self.buf.push(ChunkSet::key(id));
        if self.buf.len() >= self.mem_keys {
            if let Err(e) = self.runs.spill(&mut self.buf) {
                self.failed = Some(e);
            }
            self.buf.clear();
        }
    }

    /// The set: in memory if at most `mem_keys` keys were added, else in a temporary file.
    pub fn finish(mut self) -> Result<DedupSet> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        if self.runs.is_empty() {
            return Ok(DedupSet {
                held: None,
                added: ChunkSet::from_keys(self.buf),
            });
        }
        if !self.buf.is_empty() {
            self.runs.spill(&mut self.buf)?;
        }
        self.buf = Vec::new();
        Ok(DedupSet {
            held: Some(self.runs.merge::<u128>(BLOCK_KEYS)?),
            added: ChunkSet::new(),
        })
    }
}

/// What a backup deduplicates against: the chunks held by packs that exist and are not
/// condemned, as a [`DedupSet`] holding at most `mem_keys` of them in memory (the rest in a
/// temporary file), and the condemned pack names it must not produce.
///
/// Also returns where the chunks in `wanted` are (an incremental's parent extent list), so
/// they are found in the same pass over the index.
pub fn load(
    container: &Container,
    wanted: &HashSet<Hash>,
    mem_keys: usize,
) -> Result<(DedupSet, HashSet<Hash>, Index)> {
    let mut set = DedupSet::builder(mem_keys);
    let mut found = Index::new();
    let scan = container.scan_index(IndexUse::Backup, |pack, entries, listed, condemned| {
        if listed.is_some() && !condemned {
            for e in entries {
                set.add(&e.id);
            }
            if !wanted.is_empty() {
                let hits: Vec<PackEntry> = entries
                    .iter()
                    .filter(|e| wanted.contains(&e.id))
                    .copied()
                    .collect();
                if !hits.is_empty() {
                    found.add_pack(*pack, &hits);
                }
            }
        }
    })?;
    Ok((set.finish()?, scan.condemned, found))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(n: u64) -> Hash {
        Hash::of(&n.to_le_bytes())
    }

    fn build(held: &[u64], mem_keys: usize) -> DedupSet {
        let mut b = DedupSet::builder(mem_keys);
        for n in held {
            b.add(&id(*n));
        }
        b.finish().unwrap()
    }

    #[test]
    fn a_spilled_set_answers_like_one_in_memory() {
        // 3,000 held chunks (each added twice, as two index segments may list a chunk), in runs
        // of 256 keys: 12 blocks and a short last one.
        let held: Vec<u64> = (0..3000).chain(0..3000).collect();
        let mut spilled = build(&held, BLOCK_KEYS);
        let mut memory = build(&held, 1 << 20);
        assert!(spilled.spilled());
        assert!(!memory.spilled());
        assert_eq!(spilled.len(), 3000);
        assert_eq!(memory.len(), 3000);
        // Held, new, and new twice in one batch.
        let ids: Vec<Hash> = (2900..3100).chain(3050..3060).map(id).collect();
        let a = spilled.check_and_add(&ids).unwrap();
        let b = memory.check_and_add(&ids).unwrap();
        assert_eq!(a, b);
        assert!(a[..100].iter().all(|k| *k), "held");
        assert!(a[100..200].iter().all(|k| !*k), "new");
        assert!(a[200..].iter().all(|k| *k), "added earlier in the batch");
        // What a batch added is known to the next.
        assert!(spilled.check_and_add(&[id(3100 - 1)]).unwrap()[0]);
        assert_eq!(spilled.len(), 3100);
    }

    #[test]
    fn an_empty_set_knows_nothing_until_added() {
        let mut s = DedupSet::new();
        assert!(s.is_empty());
        assert_eq!(s.check_and_add(&[id(1), id(1)]).unwrap(), vec![false, true]);
        let mut built = build(&[], BLOCK_KEYS);
        assert!(!built.spilled());
        assert_eq!(built.check_and_add(&[id(1)]).unwrap(), vec![false]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        #[test]
        fn lookups_agree_with_a_hash_set(
            held in proptest::collection::vec(0u64..5000, 0..2000),
            batches in proptest::collection::vec(proptest::collection::vec(0u64..6000, 0..300), 1..5),
            mem_keys in 1usize..1200,
        ) {
            let mut set = build(&held, mem_keys);
            let mut reference: std::collections::HashSet<u64> = held.iter().copied().collect();
            prop_assert_eq!(set.len(), reference.len());
            for batch in batches {
                let ids: Vec<Hash> = batch.iter().map(|n| id(*n)).collect();
                let known = set.check_and_add(&ids).unwrap();
                for (n, k) in batch.iter().zip(known) {
                    prop_assert_eq!(k, !reference.insert(*n));
                }
            }
        }
    }
}
