//! Reading chunks: ranged GETs planned per pack (neighbours coalesced), decompressed and
//! BLAKE3-verified before anything uses them.

use std::collections::HashMap;

use bytes::Bytes;

use super::Container;
use crate::error::{Error, Result};
use crate::format::chunk::decode_chunk;
use crate::format::keys::pack_key;
use crate::ids::Hash;
use crate::index::{Index, Locate, Location};

/// Neighbouring chunks of a pack are fetched together if the gap between them is at most this
/// (reading a few unneeded bytes costs less than another request).
const COALESCE_GAP: u64 = 256 << 10;
/// Largest single ranged read (bounds memory per request in flight).
const MAX_RANGE: u64 = 4 << 20;
/// Most uncompressed bytes one range serves, by default. Well-compressed data would otherwise
/// make ranges of 20 MiB and more of work each: a restore window of only a dozen such ranges
/// left one of two threads idle for a third of it, waiting on the other's last range.
pub const MAX_RANGE_RAW: u64 = 8 << 20;

/// One ranged read of a pack and the chunks it serves.
pub struct FetchRange {
    pub pack: Hash,
    pub start: u64,
    pub end: u64,
    /// (chunk id, its location)
    pub chunks: Vec<(Hash, Location)>,
    /// Uncompressed bytes of its chunks: the work of decoding it.
    pub raw: u64,
}

/// Groups chunks by pack and merges neighbours into ranged reads of at most `MAX_RANGE`
/// stored and `max_raw` uncompressed bytes. `missing` builds the error for a chunk that no
/// index entry locates.
pub fn plan_ranges(
    index: &(impl Locate + ?Sized),
    ids: &[Hash],
    max_raw: u64,
    missing: impl Fn(&Hash) -> Error,
) -> Result<Vec<FetchRange>> {
    let mut by_pack: HashMap<u32, Vec<(Hash, Location)>> = HashMap::new();
    for (id, loc) in ids.iter().zip(index.locate_all(ids)?) {
        let loc = loc.ok_or_else(|| missing(id))?;
        by_pack.entry(loc.pack).or_default().push((*id, loc));
    }
    let mut ranges = Vec::new();
    for (pack, mut chunks) in by_pack {
        chunks.sort_unstable_by_key(|c| c.1.offset);
        let mut cur: Option<FetchRange> = None;
        for (id, loc) in chunks {
            let start = u64::from(loc.offset);
            let end = start + u64::from(loc.stored_len);
            if let Some(r) = &mut cur
                && start <= r.end + COALESCE_GAP
                && end - r.start <= MAX_RANGE
                && r.raw + u64::from(loc.raw_len) <= max_raw
            {
                r.end = r.end.max(end);
                r.raw += u64::from(loc.raw_len);
                r.chunks.push((id, loc));
                continue;
            }
            ranges.extend(cur.take());
            cur = Some(FetchRange {
                pack: index.pack_id(pack),
                start,
                end,
                chunks: vec![(id, loc)],
                raw: u64::from(loc.raw_len),
            });
        }
        ranges.extend(cur);
    }
    Ok(ranges)
}

impl Container {
    /// Reads one chunk through the index: fetches its stored bytes, decompresses, and verifies
    /// its BLAKE3. `volume_offset` is for the error message only.
    pub fn read_chunk(
        &self,
        index: &Index,
        id: &Hash,
        backup_id: &str,
        volume_offset: u64,
    ) -> Result<Bytes> {
        let loc = index.get(id).ok_or_else(|| Error::ChunkNotIndexed {
            backup_id: backup_id.into(),
            chunk: id.to_hex(),
            volume_offset,
        })?;
        let key = pack_key(&index.pack_id(loc.pack));
        let start = u64::from(loc.offset);
        let stored = self
            .store
            .get_range(&key, start..start + u64::from(loc.stored_len))?;
        let keys = self.keys()?.chunks();
        decode_chunk(&key, start, id, loc.compression, loc.raw_len, &stored, keys)
            .map_err(|e| with_volume_offset(e, volume_offset))
    }

    /// Reads one planned range and returns its chunks decompressed and BLAKE3-verified.
    /// `volume_offset` names, for errors, where a chunk belongs in the volume.
    pub fn fetch_range(
        &self,
        r: &FetchRange,
        volume_offset: impl Fn(&Hash) -> u64,
    ) -> Result<Vec<(Hash, Bytes)>> {
        let key = pack_key(&r.pack);
        let keys = self.keys()?.chunks();
        let data = self.store.get_range(&key, r.start..r.end)?;
        r.chunks
            .iter()
            .map(|(id, loc)| {
                let at = u64::from(loc.offset);
                let s = (at - r.start) as usize;
                let stored = &data[s..s + loc.stored_len as usize];
                decode_chunk(&key, at, id, loc.compression, loc.raw_len, stored, keys)
                    .map(|raw| (*id, raw))
                    .map_err(|e| with_volume_offset(e, volume_offset(id)))
            })
            .collect()
    }
}

impl Container {
    /// Fetches the chunks `wants` (each with its volume offset, for errors) of backup
    /// `backup_id`: ranged reads planned per pack, run in parallel on the container's I/O
    /// threads, every chunk decompressed and checked against its id. A chunk no index entry
    /// locates is [`Error::ChunkNotIndexed`].
    pub fn fetch_chunks(
        &self,
        index: &(impl Locate + ?Sized),
        backup_id: &str,
        wants: &[(Hash, u64)],
    ) -> Result<Vec<(Hash, Bytes)>> {
        use rayon::prelude::*;
        // A chunk used twice is fetched once; errors name its first place.
        let mut at_of: HashMap<Hash, u64> = HashMap::with_capacity(wants.len());
        for (id, at) in wants {
            at_of.entry(*id).or_insert(*at);
        }
        let ids: Vec<Hash> = at_of.keys().copied().collect();
        let ranges = plan_ranges(index, &ids, MAX_RANGE_RAW, |id| Error::ChunkNotIndexed {
            backup_id: backup_id.into(),
            chunk: id.to_hex(),
            volume_offset: at_of.get(id).copied().unwrap_or(0),
        })?;
        let fetched: Vec<Vec<(Hash, Bytes)>> = self.on_io_pool(|| {
            ranges
                .par_iter()
                .map(|r| self.fetch_range(r, |id| at_of.get(id).copied().unwrap_or(0)))
                .collect::<Result<_>>()
        })?;
        Ok(fetched.into_iter().flatten().collect())
    }
}

/// Fills in the volume offset of a chunk verification error.
pub(crate) fn with_volume_offset(e: Error, at: u64) -> Error {
    match e {
        Error::ChunkHashMismatch {
            key, offset, chunk, ..
        } => Error::ChunkHashMismatch {
            key,
            offset,
            chunk,
            volume_offset: at,
        },
        other => other,
    }
}
