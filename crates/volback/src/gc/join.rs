//! The collector's one pass over the container's chunks: the holder table (sorted by chunk)
//! merged with the live set (sorted the same way), so that every decision about a chunk sees
//! all the packs that hold it at once, in time linear in the chunks and memory that does not
//! grow with them.

use crate::error::Result;
use crate::extsort::{Merged, Table};
use crate::ids::Hash;

use crate::index::located::{ByChunk, ChunkId};

/// Calls `f(chunk, live, holders)` for every chunk some pack holds, in chunk order, with
/// whether a committed backup references it and every copy of it. `holders` and `live` are each
/// read as one table. Returns the number of live chunks no pack holds.
pub(super) fn for_each_chunk(
    holders: &[&Table<ByChunk>],
    live: &[&Table<ChunkId>],
    mut f: impl FnMut(&Hash, bool, &[ByChunk]) -> Result<()>,
) -> Result<u64> {
    let mut h = Merged::new(holders);
    let mut l = Merged::new(live);
    let mut group: Vec<ByChunk> = Vec::new();
    let mut missing = 0u64;
    while let Some(first) = h.next_record()? {
        group.clear();
        group.push(first);
        while let Some(next) = h.peek()? {
            if next.id != first.id {
                break;
            }
            group.push(next);
            h.next_record()?;
        }
        let mut is_live = false;
        while let Some(ChunkId(id)) = l.peek()? {
            if id > first.id {
                break;
            }
            l.next_record()?;
            if id == first.id {
                is_live = true;
                break;
            }
            missing += 1;
        }
        f(&first.id, is_live, &group)?;
    }
    while l.next_record()?.is_some() {
        missing += 1;
    }
    Ok(missing)
}
