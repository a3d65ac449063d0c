//! Partial reads: `length` bytes of a backup's volume from `offset`, for file-level recovery
//! tools that need a superblock, a partition table or one file's blocks, not the volume.
//!
//! The extent list is walked to the range (it is small: one entry per chunk); only the chunks
//! the range overlaps are fetched, with ranged reads of their packs, and each is checked
//! against its BLAKE3 id as a restore checks it. The range is written in order to `out`,
//! zero extents as zeros, a group of chunks (up to [`GROUP_BYTES`] of volume) at a time, so
//! memory stays bounded whatever the length.

use std::collections::HashMap;
use std::io::Write;

use bytes::Bytes;
use serde::Serialize;

use super::locations::{DEFAULT_MEM_ENTRIES, LocationTable};
use crate::container::{Container, LEASE_TTL, LeaseGuard};
use crate::error::{Error, Result};
use crate::format::extent_list::Extent;
use crate::ids::Hash;

/// Volume bytes fetched and written per group of chunks.
pub const GROUP_BYTES: u64 = 32 << 20;

/// What a partial read did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RangeReport {
    pub backup_id: String,
    pub offset: u64,
    pub length: u64,
    /// Chunks fetched and verified (zero extents need none).
    pub chunks_read: u64,
}

/// Writes bytes `[offset, offset + length)` of backup `backup_id`'s volume to `out`. A range
/// that runs past the volume's end is refused before anything is written.
pub fn read_range(
    container: &Container,
    backup_id: &str,
    offset: u64,
    length: u64,
    out: &mut dyn Write,
) -> Result<RangeReport> {
    let (manifest, _) = container.read_manifest(backup_id)?;
    let end = offset
        .checked_add(length)
        .filter(|&end| end <= manifest.size)
        .ok_or_else(|| {
            Error::Config(format!(
                "{length} bytes from offset {offset} run past the end of backup {backup_id} \
                 ({} bytes)",
                manifest.size
            ))
        })?;
    let mut report = RangeReport {
        backup_id: backup_id.into(),
        offset,
        length,
        ..Default::default()
    };
    if length == 0 {
        return Ok(report);
    }
    // As a restore: a reader's lease holds back the collector's sweep (best effort).
    let _lease = LeaseGuard::take(container, backup_id, LEASE_TTL).ok();
    let index = LocationTable::for_backup(container, &manifest, DEFAULT_MEM_ENTRIES)?;
    let mut group: Vec<(u64, Extent)> = Vec::new();
    let mut group_bytes = 0u64;
    let mut write_group = |group: &mut Vec<(u64, Extent)>| -> Result<()> {
        report.chunks_read += write_group(container, &index, backup_id, group, offset, end, out)?;
        group.clear();
        Ok(())
    };
    container.walk_extents(&index, &manifest, |at, e| {
        let e_end = at.saturating_add(e.len());
        if e_end <= offset || at >= end {
            return Ok(());
        }
        group_bytes += e.len();
        group.push((at, *e));
        if group_bytes >= GROUP_BYTES {
            write_group(&mut group)?;
            group_bytes = 0;
        }
        Ok(())
    })?;
    write_group(&mut group)?;
    out.flush()
        .map_err(|e| Error::io("write range", "<output>", e))?;
    Ok(report)
}

/// Fetches the chunks of `group` (extents at their volume offsets) and writes the part of
/// each inside `[offset, end)`; returns the chunks fetched.
fn write_group(
    container: &Container,
    index: &LocationTable,
    backup_id: &str,
    group: &[(u64, Extent)],
    offset: u64,
    end: u64,
    out: &mut dyn Write,
) -> Result<u64> {
    let wants: Vec<(Hash, u64)> = group
        .iter()
        .filter_map(|(at, e)| match e {
            Extent::Data { id, .. } => Some((*id, *at)),
            Extent::Zero { .. } => None,
        })
        .collect();
    let fetched = container.fetch_chunks(index, backup_id, &wants)?;
    let chunks: HashMap<Hash, Bytes> = fetched.into_iter().collect();
    let io = |e| Error::io("write range", "<output>", e);
    for (at, e) in group {
        // The part of this extent inside the range, relative to the extent.
        let from = offset.saturating_sub(*at);
        let to = (end - at).min(e.len());
        match e {
            Extent::Zero { .. } => {
                static ZEROS: [u8; 1 << 16] = [0; 1 << 16];
                let mut left = to - from;
                while left > 0 {
                    let n = left.min(ZEROS.len() as u64) as usize;
                    out.write_all(&ZEROS[..n]).map_err(io)?;
                    left -= n as u64;
                }
            }
            Extent::Data { id, .. } => {
                let chunk = chunks
                    .get(id)
                    .ok_or_else(|| Error::Internal(format!("chunk {id} not fetched")))?;
                if chunk.len() as u64 != e.len() {
                    return Err(Error::corrupt(
                        &crate::format::keys::manifest_key(backup_id),
                        0,
                        format!(
                            "the extent at volume offset {at} has {} bytes, its chunk {id} {}",
                            e.len(),
                            chunk.len()
                        ),
                    ));
                }
                out.write_all(&chunk[from as usize..to as usize])
                    .map_err(io)?;
            }
        }
    }
    Ok(chunks.len() as u64)
}
