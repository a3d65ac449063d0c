//! The chunk index: where each chunk lives (pack, offset, lengths).
//!
//! On storage the index is a set of immutable *segments* (`index/<blake3>`), each written by one
//! backup after the packs it describes and before that backup's manifest. Segments are never
//! modified; a later garbage collector consolidates them by writing a new segment first and
//! deleting the old ones after. A chunk may appear in several segments (two backups racing to
//! store it); any entry whose pack exists is valid, so duplicates are harmless.
//!
//! In memory, verify and gc load an [`Index`]: a hash map from chunk id to a compact
//! [`Location`], preferring copies in live packs (a restore sorts the same into a scratch file,
//! `locations`). A backup needs only to know which chunks exist: it loads a
//! `dedup::DedupSet`, a [`ChunkSet`] of 16 bytes per chunk for a small container and a sorted
//! scratch file beyond that, and keeps the chunks it stores in a [`ChunkSet`].
//!
//! Segment layout (little-endian; see `docs/format.md`):
//!
//! ```text
//! "VBIX" u16 version=1 u16 0 u32 n_packs u32 n_entries   16-byte header
//! n_packs x pack id[32]
//! n_entries x: chunk id[32] pack u32 offset u32 stored_len u32 raw_len u32 kind u8 comp u8 0u16
//! blake3(all bytes above)[32]
//! ```

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::ids::Hash;
use crate::pack::{ChunkKind, Compression, MAX_PACK_SIZE, PackEntry};

/// Index segment format version written and read by this build.
pub const INDEX_VERSION: u16 = 1;
const MAGIC: &[u8; 4] = b"VBIX";
const HEADER_LEN: usize = 16;
const ENTRY_LEN: usize = 52;

/// Where a chunk is, compactly (20 bytes besides its id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// Position of the pack in [`Index::pack_id`].
    pub pack: u32,
    pub offset: u32,
    pub stored_len: u32,
    pub raw_len: u32,
    pub kind: ChunkKind,
    pub compression: Compression,
}

impl Location {
    /// Where pack entry `e` is, the pack being at position `pack`.
    pub fn of(e: &PackEntry, pack: u32) -> Location {
        Location {
            pack,
            offset: e.offset,
            stored_len: e.stored_len,
            raw_len: e.raw_len,
            kind: e.kind,
            compression: e.compression,
        }
    }
}

/// All chunk locations known from the segments loaded so far.
#[derive(Default)]
pub struct Index {
    packs: Vec<Hash>,
    /// Rank of each pack (see [`Index::add_pack_ranked`]).
    ranks: Vec<u8>,
    pack_pos: HashMap<Hash, u32>,
    chunks: HashMap<Hash, Location>,
}

impl Index {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of chunks.
    pub fn len(&self) -> usize {
        self.chunks.len()
    }

    /// True if no chunk is indexed.
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Whether the chunk is indexed.
    pub fn contains(&self, id: &Hash) -> bool {
        self.chunks.contains_key(id)
    }

    /// The chunk's location.
    pub fn get(&self, id: &Hash) -> Option<&Location> {
        self.chunks.get(id)
    }

    /// The id of the pack at position `pos`.
    pub fn pack_id(&self, pos: u32) -> Hash {
        self.packs[pos as usize]
    }

    /// Every pack id the index knows.
    pub fn packs(&self) -> &[Hash] {
        &self.packs
    }

    /// Adds a pack's entries. The first location recorded for a chunk wins.
    pub fn add_pack(&mut self, pack: Hash, entries: &[PackEntry]) {
        self.add_pack_ranked(pack, entries, 0);
    }

    /// Adds a pack's entries with a rank (lower is better): a chunk already located in a pack
    /// of a worse rank moves to this one. Returns the pack's position.
    pub fn add_pack_ranked<'a>(
        &mut self,
        pack: Hash,
        entries: impl IntoIterator<Item = &'a PackEntry>,
        rank: u8,
    ) -> u32 {
        let next = self.packs.len() as u32;
        let pos = *self.pack_pos.entry(pack).or_insert(next);
        if pos == next {
            self.packs.push(pack);
            self.ranks.push(rank);
        }
        for e in entries {
            let loc = Location::of(e, pos);
            match self.chunks.entry(e.id) {
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(loc);
                }
                std::collections::hash_map::Entry::Occupied(mut o) => {
                    if self.ranks[o.get().pack as usize] > rank {
                        o.insert(loc);
                    }
                }
            }
        }
        pos
    }

    /// Iterates over every (chunk id, location).
    pub fn iter(&self) -> impl Iterator<Item = (&Hash, &Location)> {
        self.chunks.iter()
    }
}

/// Where chunks are, for reading a backup: an in-memory [`Index`], or the bounded-memory
/// [`crate::locations::LocationTable`] a restore uses.
pub trait Locate: Sync {
    /// The locations of `ids`, in their order (`None`: not indexed). Callers pass many ids at
    /// once: a table on disk answers a sorted batch with one read per block it touches.
    fn locate_all(&self, ids: &[Hash]) -> Result<Vec<Option<Location>>>;

    /// The id of the pack at position `pos` of a location.
    fn pack_id(&self, pos: u32) -> Hash;
}

impl Locate for Index {
    fn locate_all(&self, ids: &[Hash]) -> Result<Vec<Option<Location>>> {
        Ok(ids.iter().map(|id| self.chunks.get(id).copied()).collect())
    }

    fn pack_id(&self, pos: u32) -> Hash {
        self.packs[pos as usize]
    }
}

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

/// The contents of one index segment: each pack with its entries.
pub type Segment = Vec<(Hash, Vec<PackEntry>)>;

/// Encodes one segment describing `packs`.
pub fn encode_segment(packs: &[(Hash, Vec<PackEntry>)]) -> Vec<u8> {
    let n_entries: usize = packs.iter().map(|(_, e)| e.len()).sum();
    let mut b = Vec::with_capacity(HEADER_LEN + packs.len() * 32 + n_entries * ENTRY_LEN + 32);
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&INDEX_VERSION.to_le_bytes());
    b.extend_from_slice(&[0, 0]);
    b.extend_from_slice(&(packs.len() as u32).to_le_bytes());
    b.extend_from_slice(&(n_entries as u32).to_le_bytes());
    for (id, _) in packs {
        b.extend_from_slice(&id.0);
    }
    for (i, (_, entries)) in packs.iter().enumerate() {
        for e in entries {
            b.extend_from_slice(&e.id.0);
            b.extend_from_slice(&(i as u32).to_le_bytes());
            b.extend_from_slice(&e.offset.to_le_bytes());
            b.extend_from_slice(&e.stored_len.to_le_bytes());
            b.extend_from_slice(&e.raw_len.to_le_bytes());
            b.push(e.kind as u8);
            b.push(e.compression as u8);
            b.extend_from_slice(&[0, 0]);
        }
    }
    let h = Hash::of(&b);
    b.extend_from_slice(&h.0);
    b
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Decodes a segment read from object `key`, checking its checksum and every bound.
pub fn decode_segment(key: &str, b: &[u8]) -> Result<Segment> {
    if b.len() < HEADER_LEN + 32 {
        return Err(Error::corrupt(
            key,
            0,
            format!("index segment too short ({} bytes)", b.len()),
        ));
    }
    if &b[..4] != MAGIC {
        return Err(Error::corrupt(key, 0, "index segment magic missing"));
    }
    let version = u16::from_le_bytes([b[4], b[5]]);
    if version != INDEX_VERSION {
        return Err(Error::UnsupportedVersion {
            key: key.to_string(),
            what: "index segment",
            found: u64::from(version),
            supported: u64::from(INDEX_VERSION),
        });
    }
    let n_packs = u32_at(b, 8) as usize;
    let n_entries = u32_at(b, 12) as usize;
    let expect =
        (HEADER_LEN as u64) + n_packs as u64 * 32 + n_entries as u64 * ENTRY_LEN as u64 + 32;
    if expect != b.len() as u64 {
        return Err(Error::corrupt(
            key,
            8,
            format!(
                "index segment declares {n_packs} packs and {n_entries} entries but has {} bytes",
                b.len()
            ),
        ));
    }
    let body = &b[..b.len() - 32];
    if Hash::of(body).0[..] != b[b.len() - 32..] {
        return Err(Error::corrupt(
            key,
            body.len() as u64,
            "index segment fails its BLAKE3 check",
        ));
    }
    let mut out: Vec<(Hash, Vec<PackEntry>)> = (0..n_packs)
        .map(|i| {
            let at = HEADER_LEN + i * 32;
            (
                Hash(b[at..at + 32].try_into().unwrap_or([0; 32])),
                Vec::new(),
            )
        })
        .collect();
    let base = HEADER_LEN + n_packs * 32;
    // Each pack's entries get their exact capacity up front: growing them by doubling left
    // a trail of freed blocks in the allocator, which a restore's heap then kept for its whole
    // run (~3 MiB more for a 16 GiB backup than a 4 GiB one).
    let mut counts = vec![0usize; n_packs];
    for i in 0..n_entries {
        let pack = u32_at(&b[base + i * ENTRY_LEN..], 32) as usize;
        if let Some(c) = counts.get_mut(pack) {
            *c += 1;
        }
    }
    for ((_, entries), n) in out.iter_mut().zip(counts) {
        entries.reserve_exact(n);
    }
    for i in 0..n_entries {
        let at = base + i * ENTRY_LEN;
        let e = &b[at..at + ENTRY_LEN];
        let pack = u32_at(e, 32) as usize;
        let offset = u32_at(e, 36);
        let stored_len = u32_at(e, 40);
        let raw_len = u32_at(e, 44);
        let kind = ChunkKind::from_u8(e[48]).ok_or_else(|| {
            Error::corrupt(
                key,
                (at + 48) as u64,
                format!("unknown chunk kind {}", e[48]),
            )
        })?;
        let compression = Compression::from_u8(e[49]).ok_or_else(|| {
            Error::corrupt(
                key,
                (at + 49) as u64,
                format!("unknown compression {}", e[49]),
            )
        })?;
        if pack >= n_packs {
            return Err(Error::corrupt(
                key,
                (at + 32) as u64,
                format!("entry names pack {pack} of {n_packs}"),
            ));
        }
        if u64::from(offset) + u64::from(stored_len) > MAX_PACK_SIZE
            || raw_len > crate::chunker::MAX_CHUNK_LIMIT
        {
            return Err(Error::corrupt(
                key,
                (at + 36) as u64,
                "entry lies outside any valid pack",
            ));
        }
        let id = Hash(e[..32].try_into().unwrap_or([0; 32]));
        out[pack].1.push(PackEntry {
            id,
            kind,
            compression,
            raw_len,
            stored_len,
            offset,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
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

    use super::*;

    fn entry(n: u8, offset: u32) -> PackEntry {
        PackEntry {
            id: Hash([n; 32]),
            kind: ChunkKind::Data,
            compression: Compression::Zstd,
            raw_len: 1000,
            stored_len: 500,
            offset,
        }
    }

    #[test]
    fn segment_round_trip_and_damage() {
        let packs = vec![
            (Hash([1; 32]), vec![entry(10, 8), entry(11, 508)]),
            (Hash([2; 32]), vec![entry(12, 8)]),
        ];
        let seg = encode_segment(&packs);
        assert_eq!(decode_segment("i", &seg).unwrap(), packs);
        let mut idx = Index::new();
        for (p, e) in &packs {
            idx.add_pack(*p, e);
        }
        assert_eq!(idx.len(), 3);
        let loc = idx.get(&Hash([12; 32])).unwrap();
        assert_eq!(idx.pack_id(loc.pack), Hash([2; 32]));
        for cut in [0, 15, seg.len() - 1] {
            assert!(decode_segment("i", &seg[..cut]).is_err());
        }
        let mut bad = seg.clone();
        bad[20] ^= 1;
        assert!(matches!(
            decode_segment("i", &bad),
            Err(Error::Corrupt { .. })
        ));
        let mut bad = seg.clone();
        bad[4] = 2;
        assert!(matches!(
            decode_segment("i", &bad),
            Err(Error::UnsupportedVersion { .. })
        ));
    }
}
