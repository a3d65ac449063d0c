//! Walking a backup's extents: the extent list fetched a group of chunks at a time.

use std::collections::HashMap;

use bytes::Bytes;
use rayon::prelude::*;

use super::Container;
use super::fetch::{MAX_RANGE_RAW, plan_ranges};
use crate::error::{Error, Result};
use crate::format::chunk::{ChunkKind, Compression};
use crate::format::extent_list::{Extent, ExtentListReader};
use crate::format::keys::manifest_key;
use crate::format::manifest::Manifest;
use crate::format::pack::PackEntry;
use crate::ids::Hash;
use crate::index::{Index, Locate};

/// Extent-list chunks fetched per group when walking a manifest (~1 MiB: a group's fetched
/// ranges are held while it is walked, and 512 made a 16 GiB restore's peak 1–2 MiB higher
/// than a 4 GiB one's).
const META_FETCH: usize = 128;

impl Container {
    /// Calls `f(volume_offset, extent)` for every extent of a backup, in order, fetching the
    /// extent list chunk by chunk (memory stays bounded whatever the volume size). Checks that
    /// the extents add up to the manifest's size.
    pub fn walk_extents(
        &self,
        index: &(impl Locate + ?Sized),
        manifest: &Manifest,
        mut f: impl FnMut(u64, &Extent) -> Result<()>,
    ) -> Result<()> {
        let key = manifest_key(&manifest.backup_id);
        let mut reader = ExtentListReader::new();
        let mut offset = 0u64;
        let mut batch = Vec::new();
        let metas = manifest.meta_ids(&key)?;
        // Extent-list chunks are fetched a group at a time with coalesced ranged reads (a
        // backup's extent list sits together in its metadata packs).
        for group in metas.chunks(META_FETCH) {
            let ids: Vec<Hash> = group.iter().map(|(id, _)| *id).collect();
            let ranges = plan_ranges(index, &ids, MAX_RANGE_RAW, |id| Error::ChunkNotIndexed {
                backup_id: manifest.backup_id.clone(),
                chunk: id.to_hex(),
                volume_offset: offset,
            })?;
            let fetched: Vec<Vec<(Hash, Bytes)>> = self.on_io_pool(|| {
                ranges
                    .par_iter()
                    .map(|r| self.fetch_range(r, |_| offset))
                    .collect::<Result<_>>()
            })?;
            let by_id: HashMap<Hash, Bytes> = fetched.into_iter().flatten().collect();
            for (id, len) in group {
                let chunk = by_id.get(id).ok_or_else(|| {
                    Error::Internal(format!("extent-list chunk {id} not fetched"))
                })?;
                if chunk.len() != *len as usize {
                    return Err(Error::corrupt(
                        &key,
                        0,
                        format!(
                            "extent-list chunk {id} has {} bytes, manifest says {len}",
                            chunk.len()
                        ),
                    ));
                }
                reader.push(&key, chunk, &mut batch)?;
                for e in batch.drain(..) {
                    // Checked before the caller sees the extent: lengths come from storage,
                    // and a sum that wrapped could end at the size and pass the check below.
                    let end = (offset.checked_add(e.len()))
                        .filter(|&end| end <= manifest.size)
                        .ok_or_else(|| {
                            Error::corrupt(
                                &key,
                                0,
                                format!(
                                    "extent of {} bytes at volume offset {offset} runs past the \
                                     volume's {} bytes",
                                    e.len(),
                                    manifest.size
                                ),
                            )
                        })?;
                    f(offset, &e)?;
                    offset = end;
                }
            }
        }
        reader.finish(&key)?;
        if offset != manifest.size {
            return Err(Error::corrupt(
                &key,
                0,
                format!(
                    "extents cover {offset} bytes, manifest says {}",
                    manifest.size
                ),
            ));
        }
        Ok(())
    }
}

/// A backup's extent-list chunks, located by its manifest's hints (`extents[].at`), for
/// reading its extent list without the index; `None` if one has no hint. A hint is only a
/// hint: a collection may have moved the chunk since, which the read finds (the bytes there do
/// not hash to the id, or the pack is gone).
pub fn hinted_meta_index(m: &Manifest) -> Option<Index> {
    let ids = m.meta_ids(&manifest_key(&m.backup_id)).ok()?;
    let mut by_pack: HashMap<Hash, Vec<PackEntry>> = HashMap::new();
    for ((id, len), r) in ids.into_iter().zip(&m.extents) {
        let at = r.at.as_ref()?;
        by_pack
            .entry(Hash::from_hex(&at.pack)?)
            .or_default()
            .push(PackEntry {
                id,
                kind: ChunkKind::Meta,
                compression: if at.zstd {
                    Compression::Zstd
                } else {
                    Compression::None
                },
                raw_len: len,
                stored_len: at.stored_len,
                offset: at.offset,
            });
    }
    let mut index = Index::new();
    for (pack, entries) in by_pack {
        index.add_pack(pack, &entries);
    }
    Some(index)
}
