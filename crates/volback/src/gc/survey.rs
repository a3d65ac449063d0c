//! The container as the collector sees it, in memory that grows with its packs but not with its
//! chunks: the pack list (~50 bytes per pack), every (chunk, pack) pair in a table sorted by
//! chunk ([`ByChunk`] records, 50 bytes each, in `$TMPDIR` beyond [`super::GcOptions::mem_entries`]),
//! the extent-list chunks' locations (in memory: ~0.1 % of the chunks), and which packs each
//! index segment names (4 bytes per pack) so that segments can be merged later by reading them
//! again.

use std::collections::{HashMap, HashSet};

use crate::container::index_scan::read_rank;
use crate::container::{Container, PackListing};
use crate::error::{Error, Result};
use crate::extsort::{Table, TableBuilder};
use crate::format::pack::PackEntry;
use crate::ids::Hash;
use crate::index::Location;
use crate::index::located::{ByChunk, Located};
use crate::restore::locations::{DEFAULT_MEM_ENTRIES, LocationBuilder, LocationTable};

/// Pack tables read at once, for packs no segment describes.
const TABLES_AT_ONCE: usize = 256;

/// Where the collector learnt what a pack holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Known {
    /// Nowhere (its table could not be read): it is never condemned, and a condemned pack
    /// whose copies it might hold is kept.
    No,
    /// From an index segment.
    Segment,
    /// From the pack's own table (no readable segment describes it).
    Table,
}

/// The packs listed when the collection started (sorted, so a position is found by binary
/// search), then those this run writes: 41 bytes a pack.
pub(super) struct PackList {
    /// (id, size): listed, sorted, then written.
    packs: Vec<(Hash, u64)>,
    pub(super) known: Vec<Known>,
    /// Packs listed at the start: `packs[..listed]` is sorted.
    listed: usize,
    written: HashMap<Hash, u32>,
}

impl PackList {
    fn new(listing: PackListing) -> Self {
        let packs = listing.into_vec();
        PackList {
            known: vec![Known::No; packs.len()],
            listed: packs.len(),
            packs,
            written: HashMap::new(),
        }
    }

    /// Number of packs (listed, then written).
    pub(super) fn len(&self) -> usize {
        self.packs.len()
    }

    /// The position of a pack listed at the start or written by this run.
    pub(super) fn pos(&self, id: &Hash) -> Option<u32> {
        match self.packs[..self.listed].binary_search_by(|(p, _)| p.cmp(id)) {
            Ok(p) => Some(p as u32),
            Err(_) => self.written.get(id).copied(),
        }
    }

    pub(super) fn id(&self, pos: u32) -> Hash {
        self.packs[pos as usize].0
    }

    pub(super) fn size(&self, pos: u32) -> u64 {
        self.packs[pos as usize].1
    }

    /// The size of a pack listed or written, 0 for another.
    pub(super) fn size_of(&self, id: &Hash) -> u64 {
        self.pos(id).map_or(0, |p| self.size(p))
    }

    /// Bytes of the packs listed at the start (sizes come from the listing: the sum saturates).
    pub(super) fn listed_bytes(&self) -> u64 {
        (self.packs[..self.listed].iter()).fold(0u64, |sum, (_, s)| sum.saturating_add(*s))
    }

    /// Packs listed at the start.
    pub(super) fn listed_len(&self) -> usize {
        self.listed
    }

    /// Adds a pack this run wrote; returns its position.
    pub(super) fn add_written(&mut self, id: Hash, size: u64) -> u32 {
        let pos = self.packs.len() as u32;
        self.packs.push((id, size));
        self.known.push(Known::Table);
        self.written.insert(id, pos);
        pos
    }

    /// Per position, whether the pack is in `set`.
    pub(super) fn flags(&self, set: impl Fn(&Hash) -> bool) -> Vec<bool> {
        self.packs.iter().map(|(p, _)| set(p)).collect()
    }

    /// Per position, `false`; then `true` at the positions of the packs of `ids` that are here.
    pub(super) fn flags_of<'a>(&self, ids: impl IntoIterator<Item = &'a Hash>) -> Vec<bool> {
        let mut out = vec![false; self.len()];
        for p in ids.into_iter().filter_map(|id| self.pos(id)) {
            out[p as usize] = true;
        }
        out
    }
}

/// The packs an index segment names: [`PackList`] positions of those listed at the start, and
/// the ids of the others (written after the listing, or already deleted).
pub(super) struct SegmentPacks {
    pub(super) key: String,
    pub(super) listed: Vec<u32>,
    pub(super) unlisted: Vec<Hash>,
}

impl SegmentPacks {
    pub(super) fn pack_count(&self) -> usize {
        self.listed.len() + self.unlisted.len()
    }
}

/// What the collector knows of the container's packs and chunks; see the module documentation.
pub(super) struct Survey {
    pub(super) packs: PackList,
    /// Every (chunk, pack) pair of the listed packs whose contents are known.
    pub(super) holders: Table<ByChunk>,
    /// Locations of the extent-list chunks, for walking manifests: live packs first; in a
    /// sorted scratch file beyond a few MiB.
    pub(super) meta: Option<LocationTable>,
    /// The index segments that decoded, and the keys of those that did not.
    pub(super) segments: Vec<SegmentPacks>,
    pub(super) damaged: Vec<String>,
}

/// Collects holders while the segments stream past (the visitor cannot return an error).
struct Collect {
    holders: TableBuilder<ByChunk>,
    meta: LocationBuilder,
    failed: Option<Error>,
}

impl Collect {
    fn add(&mut self, packs: &mut PackList, pos: u32, entries: &[PackEntry], condemned: bool) {
        let rank = read_rank(true, condemned);
        self.meta.add_meta(packs.id(pos), entries, rank);
        for e in entries {
            if self.failed.is_some() {
                return;
            }
            let h = ByChunk(Located {
                id: e.id,
                loc: Location::of(e, pos),
            });
            if let Err(e) = self.holders.push(h) {
                self.failed = Some(e);
            }
        }
    }
}

impl Survey {
    /// Surveys the packs of `listing` (taken after the condemnation records were read): their
    /// contents from the index segments, streamed, or from their own tables for packs no
    /// readable segment describes.
    pub(super) fn take(
        c: &Container,
        listing: PackListing,
        condemned_before: &HashSet<Hash>,
        mem_entries: usize,
    ) -> Result<Survey> {
        let mut packs = PackList::new(listing);
        let mut collect = Collect {
            holders: TableBuilder::new(mem_entries),
            meta: meta_builder(mem_entries),
            failed: None,
        };
        let mut segments = Vec::new();
        let mut damaged = Vec::new();
        c.stream_segments(|key, seg| match seg {
            Ok(seg) => {
                let mut named = SegmentPacks {
                    key,
                    listed: Vec::new(),
                    unlisted: Vec::new(),
                };
                for (pack, entries) in &seg {
                    let Some(pos) = packs.pos(pack) else {
                        named.unlisted.push(*pack);
                        continue;
                    };
                    named.listed.push(pos);
                    if packs.known[pos as usize] == Known::No {
                        packs.known[pos as usize] = Known::Segment;
                        collect.add(&mut packs, pos, entries, condemned_before.contains(pack));
                    }
                }
                named.listed.shrink_to_fit();
                segments.push(named);
            }
            Err(_) => damaged.push(key),
        })?;
        if let Some(e) = collect.failed.take() {
            return Err(e);
        }
        let unindexed: Vec<(Hash, u64)> = (0..packs.listed_len() as u32)
            .filter(|&p| packs.known[p as usize] == Known::No)
            .map(|p| (packs.id(p), packs.size(p)))
            .collect();
        for batch in unindexed.chunks(TABLES_AT_ONCE) {
            for (p, entries) in c.read_pack_tables(batch) {
                // A pack whose table cannot be read is left alone (verify reports it).
                let Ok(entries) = entries else { continue };
                let Some(pos) = packs.pos(&p) else { continue };
                packs.known[pos as usize] = Known::Table;
                collect.add(&mut packs, pos, &entries, condemned_before.contains(&p));
            }
            if let Some(e) = collect.failed.take() {
                return Err(e);
            }
        }
        segments.shrink_to_fit();
        Ok(Survey {
            packs,
            holders: collect.holders.finish()?,
            meta: Some(collect.meta.finish()?),
            segments,
            damaged,
        })
    }
}

/// A builder for extent-list chunk locations: all on disk beyond [`DEFAULT_MEM_ENTRIES`] (or
/// `mem_entries` if smaller), a block read per lookup batch.
pub(super) fn meta_builder(mem_entries: usize) -> LocationBuilder {
    LocationBuilder::new(DEFAULT_MEM_ENTRIES.min(mem_entries))
}
