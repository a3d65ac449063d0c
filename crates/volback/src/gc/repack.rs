//! Repack: the live chunks of sparse packs, copied (verified) into new packs before the sparse
//! packs are condemned, and indexed.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use rayon::prelude::*;

use super::GcReport;
use super::condemn::Chosen;
use super::packs::Packs;
use crate::container::{Container, MAX_RANGE_RAW, pack_key, plan_ranges};
use crate::error::{Error, Result};
use crate::format::chunk::{ChunkKind, EncodedChunk, encode_chunk};
use crate::format::pack::{PackBuilder, PackEntry};
use crate::ids::Hash;
use crate::index::Index;

/// Live chunks copied per batch while repacking (bounds memory).
const REPACK_BATCH: usize = 2048;

/// Copies the live chunks of `chosen.sparse` that have no other live copy into new packs, indexes
/// them, and adds them to `packs` and `listed`. Returns the chunks copied.
pub(super) fn copy_live(
    c: &Container,
    chosen: &Chosen,
    condemned_before: &HashSet<Hash>,
    live: &HashSet<Hash>,
    packs: &mut Packs,
    listed: &mut HashMap<Hash, u64>,
    report: &mut GcReport,
) -> Result<HashSet<Hash>> {
    let (unreferenced, sparse) = (&chosen.unreferenced, &chosen.sparse);
    let mut leaving: HashSet<Hash> = condemned_before.clone();
    leaving.extend(unreferenced.iter().chain(sparse).copied());
    let to_copy: Vec<Hash> = {
        let mut seen = HashSet::new();
        sparse
            .iter()
            .flat_map(|p| packs.table[p].1.iter())
            .filter(|e| live.contains(&e.id) && seen.insert(e.id))
            .filter(|e| {
                !packs.holders[&e.id]
                    .iter()
                    .any(|q| !leaving.contains(q) && listed.contains_key(q))
            })
            .map(|e| e.id)
            .collect()
    };
    if !to_copy.is_empty() {
        let mut source = Index::new();
        for p in sparse {
            source.add_pack(*p, &packs.table[p].1);
        }
        let written = repack(c, &source, &to_copy, &leaving)?;
        report.packs_written = written.len();
        report.bytes_written = written.iter().map(|(_, size, _)| size).sum();
        let seg: Vec<(Hash, Vec<PackEntry>)> =
            written.iter().map(|(p, _, e)| (*p, e.clone())).collect();
        for group in seg.chunks(4096) {
            c.write_index_segment(group)?;
            report.segments_written += 1;
        }
        for (p, size, entries) in written {
            listed.insert(p, size);
            packs.add(p, size, entries);
        }
    }
    Ok(to_copy.into_iter().collect())
}

/// Copies chunks (read through `source`, verified) into new packs that avoid `avoid`'s names;
/// returns (pack id, size, entries) of each pack written.
fn repack(
    c: &Container,
    source: &Index,
    ids: &[Hash],
    avoid: &HashSet<Hash>,
) -> Result<Vec<(Hash, u64, Vec<PackEntry>)>> {
    let level = c.config().zstd_level;
    let target = c.config().pack_target;
    let keys = c.keys()?;
    let fresh = || PackBuilder::new().sealed(keys.sealer());
    let mut out = Vec::new();
    let mut builders = [fresh(), fresh()];
    let seal = |b: PackBuilder, out: &mut Vec<_>| -> Result<()> {
        if b.is_empty() {
            return Ok(());
        }
        let (bytes, id, entries) = b.finish_avoiding(avoid);
        let size = bytes.len() as u64;
        c.store().put(&pack_key(&id), bytes)?;
        out.push((id, size, entries));
        Ok(())
    };
    for batch in ids.chunks(REPACK_BATCH) {
        let ranges = plan_ranges(source, batch, MAX_RANGE_RAW, |id| {
            Error::Internal(format!("repack: chunk {id} not in its pack"))
        })?;
        // A pack another collector deleted meanwhile had verified copies of its live chunks
        // elsewhere: nothing to copy from it.
        let fetched: Vec<Vec<(Hash, Bytes)>> = c.on_io_pool(|| {
            ranges
                .par_iter()
                .map(|r| match c.fetch_range(r, |_| 0) {
                    Err(Error::MissingObject { .. }) => Ok(Vec::new()),
                    other => other,
                })
                .collect::<Result<_>>()
        })?;
        let encoded: Vec<EncodedChunk> = fetched
            .into_par_iter()
            .flatten()
            .map(|(id, raw)| {
                let kind = source.get(&id).map_or(ChunkKind::Data, |l| l.kind);
                encode_chunk(id, kind, &raw, level, keys.chunks())
            })
            .collect();
        for e in encoded {
            let slot = usize::from(e.kind == ChunkKind::Meta);
            builders[slot].add(&e);
            if builders[slot].size() >= target {
                let full = std::mem::replace(&mut builders[slot], fresh());
                seal(full, &mut out)?;
            }
        }
    }
    for b in builders {
        seal(b, &mut out)?;
    }
    Ok(out)
}
