//! The chunk index in memory: where each chunk lives (pack, offset, lengths).
//!
//! On storage the index is a set of immutable segments (`index/<blake3>`, format in
//! [`crate::format::index_segment`]). An [`Index`] is a hash map from chunk id to a compact
//! [`Location`], preferring copies in live packs, for small sets of chunks (an extent list's, a
//! repack batch's, a restore's extent-list chunks). Over the whole container nothing is held
//! per chunk: a restore sorts the locations into a scratch file (`restore::locations`), and gc
//! and verify sort the records of `located` (a chunk and where it is, by chunk or by place) and
//! walk them in order. A backup needs only to know which chunks exist:
//! it loads a `backup::dedup::DedupSet`, a [`ChunkSet`] of 16 bytes per chunk for a
//! small container and a sorted scratch file beyond that, and keeps the chunks it stores in a
//! [`ChunkSet`].

mod chunk_set;
pub(crate) mod located;

pub use chunk_set::ChunkSet;

use std::collections::HashMap;

use crate::error::Result;
use crate::format::chunk::{ChunkKind, Compression};
use crate::format::pack::PackEntry;
use crate::ids::Hash;

/// Tables that number packs by their position in a pack listing number the packs the listing
/// did not have (named by the index, but missing) from here on: a listing holds fewer packs than
/// this ([`crate::container::PackListing`] refuses more).
pub(crate) const UNLISTED: u32 = 1 << 31;

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

impl Location {
    /// Bytes of [`Location::encode`]: offset, lengths and pack position as little-endian u32s
    /// (pack, offset, stored, raw), then kind and compression (scratch files of one process;
    /// no format to keep stable).
    pub(crate) const ENCODED_LEN: usize = 18;

    /// Appends the location's [`Location::ENCODED_LEN`] bytes.
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        for v in [self.pack, self.offset, self.stored_len, self.raw_len] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&[self.kind as u8, self.compression as u8]);
    }

    /// Reads what [`Location::encode`] wrote; `table` names the scratch file in the error.
    pub(crate) fn decode(b: &[u8], table: &str) -> Result<Location> {
        let u = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        let (kind, compression) = ChunkKind::from_u8(b[16])
            .zip(Compression::from_u8(b[17]))
            .ok_or_else(|| crate::error::Error::Internal(format!("{table}: damaged entry")))?;
        Ok(Location {
            pack: u(0),
            offset: u(4),
            stored_len: u(8),
            raw_len: u(12),
            kind,
            compression,
        })
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
/// [`crate::restore::locations::LocationTable`] a restore uses.
pub trait Locate: Sync {
    /// The locations of `ids`, in their order (`None`: not indexed). Callers pass many ids at
    /// once: a table on disk answers a sorted batch with one read per block it touches.
    fn locate_all(&self, ids: &[Hash]) -> Result<Vec<Option<Location>>>;

    /// The id of the pack at position `pos` of a location.
    fn pack_id(&self, pos: u32) -> Hash;

    /// Whether the pack at `pos` was in the pack listing taken while the locations were read
    /// (`None`: these locations do not know).
    fn pack_listed(&self, _pos: u32) -> Option<bool> {
        None
    }
}

impl Locate for Index {
    fn locate_all(&self, ids: &[Hash]) -> Result<Vec<Option<Location>>> {
        Ok(ids.iter().map(|id| self.chunks.get(id).copied()).collect())
    }

    fn pack_id(&self, pos: u32) -> Hash {
        self.packs[pos as usize]
    }
}
