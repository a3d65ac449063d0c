//! Reading the index in the order the collection protocol requires: condemnation records, then
//! the pack listing, then the segments, a few at a time (memory does not grow with the index).

use std::collections::HashSet;

use bytes::Bytes;
use rayon::prelude::*;

use super::Container;
use super::pack_numbers::Unlisted;
use super::packs::PackListing;
use crate::error::{Error, Result};
use crate::format::condemnation::Condemnation;
use crate::format::index_segment::{Segment, decode_segment, encode_segment};
use crate::format::keys::{CONDEMNED_PREFIX, INDEX_PREFIX, segment_key};
use crate::format::pack::PackEntry;
use crate::ids::Hash;
use crate::index::Index;
use crate::store::ObjectMeta;

/// What an index is scanned for (see [`Container::scan_index`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexUse {
    /// Deduplication: only chunks the collector cannot be about to delete.
    Backup,
    /// Restore, verify, export: every chunk, preferring copies in live packs.
    Read,
}

/// An index with what was learnt while loading it.
pub struct LoadedIndex {
    pub index: Index,
    /// Packs named by condemnation records (a writer must not produce a pack with such a name).
    pub condemned: HashSet<Hash>,
    /// Number of index segments read.
    pub segments: usize,
    /// Segments that failed to decode (their packs were read from their own tables).
    pub damaged_segments: Vec<(String, Error)>,
    /// Packs no readable segment described, read from their own tables.
    pub adopted: usize,
}

/// What [`Container::scan_index`] learnt besides the entries.
pub struct IndexScan {
    /// The pack listing the scan took (after the records, before the segments); the positions
    /// handed to the visitor are positions in it.
    pub listed: PackListing,
    pub condemned: HashSet<Hash>,
    pub segments: usize,
    pub damaged_segments: Vec<(String, Error)>,
    pub adopted: usize,
}

/// How good a copy of a chunk is for reading (lower is better): in a pack that exists and is
/// not condemned, then in a condemned one, then in one that is not listed (so that a missing
/// pack is reported by name when it is really needed).
pub(crate) fn read_rank(exists: bool, condemned: bool) -> u8 {
    match (exists, condemned) {
        (true, false) => 0,
        (true, true) => 1,
        (false, _) => 2,
    }
}

/// Index segments read at once while scanning the index, at most, and their bytes at most (a
/// full segment is ~3.4 MiB; decoded segments are held until the group is visited, so this
/// bounds a scan's memory whatever the index's size).
const SEGMENTS_AT_ONCE: usize = 16;
/// The name index segments are sealed under (they are named by their content).
const SEGMENT_NAME: &str = "index";
const SEGMENT_BYTES_AT_ONCE: u64 = 8 << 20;

impl Container {
    /// Writes an index segment for `packs`; returns (key, bytes written).
    pub fn write_index_segment(&self, packs: &[(Hash, Vec<PackEntry>)]) -> Result<(String, u64)> {
        let seg = self.seal_object(SEGMENT_NAME, encode_segment(packs))?;
        let key = segment_key(&seg);
        let n = seg.len() as u64;
        self.store.put(&key, seg)?;
        Ok((key, n))
    }

    /// Decodes the index segment stored under `key` (opening it in an encrypted container).
    pub fn decode_segment(&self, key: &str, stored: Bytes) -> Result<Segment> {
        decode_segment(key, &self.open_object(key, SEGMENT_NAME, stored)?)
    }

    /// Hands every index segment to `f` with its key, a few at a time (memory does not grow
    /// with the index), or its decode error if it is damaged: a segment is only a cache of pack
    /// tables, so the packs it described can be read from their own tables instead.
    pub(crate) fn stream_segments(&self, f: impl FnMut(String, Result<Segment>)) -> Result<()> {
        self.for_each_segment(SEGMENTS_AT_ONCE, SEGMENT_BYTES_AT_ONCE, f)
    }

    /// Reads the index segments `at_once` at a time (in parallel) and hands each to `f`, with
    /// its decode error if it is damaged (logged). A segment that vanishes between the listing
    /// and the read was merged by a concurrent collector, which wrote the merged segment first:
    /// a listing taken after the miss has it, so the listing is taken again and only keys not
    /// seen yet are read.
    fn for_each_segment(
        &self,
        at_once: usize,
        bytes_at_once: u64,
        mut f: impl FnMut(String, Result<Segment>),
    ) -> Result<()> {
        let mut seen: HashSet<String> = HashSet::new();
        for attempt in 0.. {
            let keys: Vec<_> = self
                .store
                .list(INDEX_PREFIX)?
                .into_iter()
                .filter(|o| !seen.contains(&o.key))
                .collect();
            let mut missed = false;
            for group in groups(&keys, at_once.max(1), bytes_at_once) {
                let read: Vec<Result<(String, Result<Segment>)>> = self.on_io_pool(|| {
                    group
                        .par_iter()
                        .map(|o| {
                            let bytes = self.store.get(&o.key)?;
                            Ok((o.key.clone(), self.decode_segment(&o.key, bytes)))
                        })
                        .collect()
                });
                for r in read {
                    match r {
                        Err(Error::MissingObject { .. }) if attempt < 16 => missed = true,
                        Err(e) => return Err(e),
                        Ok((key, seg)) => {
                            if let Err(e) = &seg {
                                tracing::warn!("{e}; reading the packs' own tables instead");
                            }
                            seen.insert(key.clone());
                            f(key, seg);
                        }
                    }
                }
            }
            if !missed {
                break;
            }
        }
        Ok(())
    }

    /// Loads the index for reading (restore, verify, export): every indexed chunk, located
    /// preferably in a pack that exists and is not condemned by the collector.
    pub fn load_index(&self) -> Result<Index> {
        Ok(self.load_index_report()?.index)
    }

    /// Like [`Container::load_index`], with what was learnt while loading (damaged segments,
    /// packs read from their own tables). Chunks are located preferably in a pack that exists
    /// and is not condemned, then in a condemned one, then in one that is not listed (so that a
    /// missing pack is reported by name when it is really needed). See
    /// [`Container::scan_index`] for the order of reads the collection protocol requires.
    pub fn load_index_report(&self) -> Result<LoadedIndex> {
        let mut index = Index::new();
        let scan = self.scan_index(IndexUse::Read, |pack, entries, listed, condemned| {
            index.add_pack_ranked(*pack, entries, read_rank(listed.is_some(), condemned));
        })?;
        Ok(LoadedIndex {
            index,
            condemned: scan.condemned,
            segments: scan.segments,
            damaged_segments: scan.damaged_segments,
            adopted: scan.adopted,
        })
    }

    /// Visits every pack the index knows, with its position in the pack listing (`None`: not
    /// listed, so it does not exist) and whether it is condemned, in the protocol's order:
    /// condemnation records first, then the pack listing (a pack a sweep deleted is either
    /// condemned by a record still there, or absent from the listing),
    /// then the segments, streamed a few at a time so memory does not grow with the index.
    /// Packs that exist but no readable segment describes (an interrupted backup's last packs, a
    /// damaged segment's) are read from their own tables; for a backup, a segment is written
    /// for them, so a re-run after a crash reuses everything that was uploaded.
    pub fn scan_index(
        &self,
        usage: IndexUse,
        mut visit: impl FnMut(&Hash, &[PackEntry], Option<usize>, bool),
    ) -> Result<IndexScan> {
        let condemned: HashSet<Hash> = self
            .load_condemned()?
            .iter()
            .flat_map(|(_, c)| c.pack_ids())
            .collect();
        let listed = self.listed_packs()?;
        // Which listed packs a segment described, by listing position (a byte a pack).
        let mut covered = vec![false; listed.len()];
        let mut damaged = Vec::new();
        let mut segments = 0;
        self.for_each_segment(
            SEGMENTS_AT_ONCE,
            SEGMENT_BYTES_AT_ONCE,
            |key, seg| match seg {
                Ok(seg) => {
                    segments += 1;
                    for (pack, entries) in &seg {
                        let at = listed.position(pack);
                        if let Some(i) = at {
                            covered[i] = true;
                        }
                        visit(pack, entries, at, condemned.contains(pack));
                    }
                }
                Err(e) => damaged.push((key, e)),
            },
        )?;
        let unindexed: Vec<(Hash, u64)> = listed
            .iter()
            .zip(&covered)
            .filter(|(_, covered)| !**covered)
            .map(|(p, _)| p)
            .filter(|(p, _)| usage == IndexUse::Read || !condemned.contains(p))
            .collect();
        drop(covered);
        let mut tables: Segment = Vec::new();
        for (p, t) in self.read_pack_tables(&unindexed) {
            match t {
                Ok(entries) => tables.push((p, entries)),
                Err(e) => tracing::warn!("{e}"),
            }
        }
        if usage == IndexUse::Backup && !tables.is_empty() {
            for group in tables.chunks(4096) {
                self.write_index_segment(group)?;
            }
        }
        for (pack, entries) in &tables {
            visit(
                pack,
                entries,
                listed.position(pack),
                condemned.contains(pack),
            );
        }
        Ok(IndexScan {
            listed,
            condemned,
            segments,
            damaged_segments: damaged,
            adopted: tables.len(),
        })
    }

    /// [`Container::scan_index`] for reading, with each pack numbered by its position in the
    /// scan's pack listing (or, not listed, by the returned [`Unlisted`]) and its read rank
    /// ([`read_rank`]): `visit(pack, entries, number, rank)`. The first error `visit` returns
    /// ends the visits and is returned once the scan is done.
    pub(crate) fn scan_index_numbered(
        &self,
        mut visit: impl FnMut(&Hash, &[PackEntry], u32, u8) -> Result<()>,
    ) -> Result<(IndexScan, Unlisted)> {
        let mut unlisted = Unlisted::default();
        let mut failed = None;
        let scan = self.scan_index(IndexUse::Read, |pack, entries, listed, condemned| {
            if failed.is_some() {
                return;
            }
            let rank = read_rank(listed.is_some(), condemned);
            let visited =
                (unlisted.number(pack, listed)).and_then(|n| visit(pack, entries, n, rank));
            if let Err(e) = visited {
                failed = Some(e);
            }
        })?;
        match failed {
            Some(e) => Err(e),
            None => Ok((scan, unlisted)),
        }
    }

    /// Every condemnation record in the container. A record deleted between the listing and the
    /// read was swept (its packs are gone, which the pack listing that follows will show).
    pub fn load_condemned(&self) -> Result<Vec<(String, Condemnation)>> {
        let keys = self.store.list(CONDEMNED_PREFIX)?;
        let records: Vec<Result<Option<(String, Condemnation)>>> = self.on_io_pool(|| {
            keys.par_iter()
                .map(|o| match self.store.get(&o.key) {
                    Ok(bytes) => {
                        let plain = self.open_object(&o.key, &o.key, bytes)?;
                        Ok(Some((o.key.clone(), Condemnation::decode(&o.key, &plain)?)))
                    }
                    Err(Error::MissingObject { .. }) => Ok(None),
                    Err(e) => Err(e),
                })
                .collect()
        });
        let mut out: Vec<_> = records
            .into_iter()
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .flatten()
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }
}

/// Splits `objects` into consecutive groups of at most `count` objects and `bytes` bytes (a
/// larger object makes a group of its own).
fn groups(objects: &[ObjectMeta], count: usize, bytes: u64) -> Vec<&[ObjectMeta]> {
    let mut out = Vec::new();
    let (mut start, mut size) = (0, 0u64);
    for (i, o) in objects.iter().enumerate() {
        if i > start && (i - start == count || size + o.size > bytes) {
            out.push(&objects[start..i]);
            (start, size) = (i, 0);
        }
        size += o.size;
    }
    if start < objects.len() {
        out.push(&objects[start..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_reads_are_grouped_by_count_and_bytes() {
        let objs: Vec<ObjectMeta> = [5u64, 5, 20, 1, 1, 1, 1]
            .iter()
            .map(|&size| ObjectMeta {
                key: String::new(),
                size,
            })
            .collect();
        let sizes = |count, bytes| -> Vec<Vec<u64>> {
            groups(&objs, count, bytes)
                .iter()
                .map(|g| g.iter().map(|o| o.size).collect())
                .collect()
        };
        assert_eq!(sizes(16, 10), vec![vec![5, 5], vec![20], vec![1, 1, 1, 1]]);
        assert_eq!(
            sizes(3, u64::MAX),
            vec![vec![5, 5, 20], vec![1, 1, 1], vec![1]]
        );
        assert_eq!(sizes(16, 0).len(), 7);
        assert!(groups(&[], 16, 10).is_empty());
    }
}
