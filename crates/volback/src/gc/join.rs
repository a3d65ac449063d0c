//! The collector's one pass over the container's chunks: the holder table (sorted by chunk)
//! merged with the live set (sorted the same way), so that every decision about a chunk sees
//! all the packs that hold it at once, in time linear in the chunks and memory that does not
//! grow with them.

use crate::error::Result;
use crate::extsort::{Merged, Record, ScratchOps, Table};
use crate::ids::Hash;

use crate::index::located::ByChunk;

/// A chunk a committed backup references (the live set is a [`Table`] of these).
#[derive(Debug, Clone, Copy)]
pub(super) struct Live(pub(super) Hash);

impl Record for Live {
    const LEN: usize = 32;
    const OPS: ScratchOps = ScratchOps {
        create: "create gc live set in",
        write: "write gc live set in",
        read: "read gc live set in",
    };
    type Id = Hash;
    type Order = Hash;

    fn id(&self) -> Hash {
        self.0
    }

    fn order(&self) -> Hash {
        self.0
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.0.0);
    }

    fn decode(b: &[u8]) -> Result<Live> {
        let mut id = [0u8; 32];
        id.copy_from_slice(b);
        Ok(Live(Hash(id)))
    }
}

/// Calls `f(chunk, live, holders)` for every chunk some pack holds, in chunk order, with
/// whether a committed backup references it and every copy of it. `holders` and `live` are each
/// read as one table. Returns the number of live chunks no pack holds.
pub(super) fn for_each_chunk(
    holders: &[&Table<ByChunk>],
    live: &[&Table<Live>],
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
        while let Some(Live(id)) = l.peek()? {
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
