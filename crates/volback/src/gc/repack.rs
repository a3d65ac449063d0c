//! Repack: the live chunks of sparse packs, copied (verified) into new packs before the sparse
//! packs are condemned, and indexed. What to copy is decided in one pass over the chunks and
//! sorted by pack and offset in bounded memory; the copies are made a batch at a time.

use std::collections::HashSet;

use bytes::Bytes;
use rayon::prelude::*;

use super::GcReport;
use super::condemn::Chosen;
use super::join::for_each_chunk;
use super::survey::Survey;
use crate::container::{Container, MAX_RANGE_RAW, pack_key, plan_ranges};
use crate::error::{Error, Result};
use crate::extsort::{Table, TableBuilder};
use crate::format::chunk::{ChunkKind, EncodedChunk, encode_chunk};
use crate::format::index_segment::PACKS_PER_SEGMENT;
use crate::format::pack::{PackBuilder, PackEntry};
use crate::ids::Hash;
use crate::index::Location;
use crate::index::located::{Batch, ByChunk, ByPlace, ChunkId, Located};

/// Live chunks copied per batch while repacking (bounds memory).
const REPACK_BATCH: usize = 2048;

/// What a run copies, and what its record exposes.
pub(super) struct Plan {
    /// Live chunks of sparse packs with no copy in a pack that is listed and stays.
    pub(super) copy: Table<ByPlace>,
    /// Every chunk the chosen packs hold but those copied: the record's exposed list.
    pub(super) exposed: Vec<Hash>,
}

/// Decides, in one pass over the chunks, which live chunks of `chosen.sparse` must be copied
/// (no other copy in a pack that is listed and neither chosen nor condemned before) and which
/// chunks the record exposes.
pub(super) fn plan(
    survey: &Survey,
    live: &Table<ChunkId>,
    chosen: &Chosen,
    condemned_before: &[bool],
    mem_entries: usize,
) -> Result<Plan> {
    let packs = &survey.packs;
    let sparse = packs.flags_of(&chosen.sparse);
    let mut leaving = packs.flags_of(chosen.unreferenced.iter().chain(&chosen.sparse));
    let chosen_flags = leaving.clone();
    for (l, c) in leaving.iter_mut().zip(condemned_before) {
        *l |= c;
    }
    let mut copy = TableBuilder::new(mem_entries);
    let mut exposed = Vec::new();
    if chosen_flags.iter().any(|&f| f) {
        for_each_chunk(&[&survey.holders], &[live], |id, is_live, holders| {
            let at = |flags: &[bool]| holders.iter().find(|h| flags[h.loc.pack as usize]);
            let Some(_) = at(&chosen_flags) else {
                return Ok(());
            };
            let stays = holders.iter().any(|h| !leaving[h.loc.pack as usize]);
            match at(&sparse) {
                Some(from) if is_live && !stays => copy.push(ByPlace(from.0)),
                _ => {
                    exposed.push(*id);
                    Ok(())
                }
            }
        })?;
    }
    Ok(Plan {
        copy: copy.finish()?,
        exposed,
    })
}

/// Copies the chunks of `plan` into new packs (named to avoid every pack leaving), indexes
/// them a segment per [`PACKS_PER_SEGMENT`] packs, and adds them to the survey's pack list.
/// Returns the holder table of the packs written.
pub(super) fn copy_live(
    c: &Container,
    plan: &Plan,
    chosen: &Chosen,
    condemned_before: &HashSet<Hash>,
    survey: &mut Survey,
    mem_entries: usize,
    report: &mut GcReport,
) -> Result<Table<ByChunk>> {
    let mut avoid: HashSet<Hash> = condemned_before.clone();
    avoid.extend(chosen.unreferenced.iter().chain(&chosen.sparse).copied());
    let mut out = Written {
        c,
        holders: TableBuilder::new(mem_entries),
        pending: Vec::new(),
    };
    let mut reader = plan.copy.reader();
    let keys = c.keys()?;
    let fresh = || PackBuilder::new().sealed(keys.sealer());
    let mut builders = [fresh(), fresh()];
    loop {
        let packs = &survey.packs;
        let pack_id = |pos: u32| packs.id(pos);
        let batch = Batch::take(&pack_id, REPACK_BATCH, || reader.next_record())?;
        if batch.ids.is_empty() {
            break;
        }
        let encoded = fetch_encoded(c, &batch)?;
        for e in encoded {
            let slot = usize::from(e.kind == ChunkKind::Meta);
            builders[slot].add(&e);
            if builders[slot].size() >= c.config().pack_target {
                let full = std::mem::replace(&mut builders[slot], fresh());
                out.seal(full, &avoid, survey, report)?;
            }
        }
    }
    for b in builders {
        out.seal(b, &avoid, survey, report)?;
    }
    out.flush_segment(report)?;
    out.holders.finish()
}

/// The packs a repack wrote: their holders, and those not yet in an index segment.
struct Written<'a> {
    c: &'a Container,
    holders: TableBuilder<ByChunk>,
    pending: Vec<(Hash, Vec<PackEntry>)>,
}

impl Written<'_> {
    /// Writes the pack `b` (if it holds anything) under a name none of `avoid`.
    fn seal(
        &mut self,
        b: PackBuilder,
        avoid: &HashSet<Hash>,
        survey: &mut Survey,
        report: &mut GcReport,
    ) -> Result<()> {
        if b.is_empty() {
            return Ok(());
        }
        let (bytes, id, entries) = b.finish_avoiding(avoid);
        let size = bytes.len() as u64;
        self.c.store().put(&pack_key(&id), bytes)?;
        report.packs_written += 1;
        report.bytes_written = report.bytes_written.saturating_add(size);
        let pos = survey.packs.add_written(id, size);
        for e in &entries {
            self.holders.push(ByChunk(Located {
                id: e.id,
                loc: Location::of(e, pos),
            }))?;
        }
        self.pending.push((id, entries));
        if self.pending.len() >= PACKS_PER_SEGMENT {
            self.flush_segment(report)?;
        }
        Ok(())
    }

    fn flush_segment(&mut self, report: &mut GcReport) -> Result<()> {
        if !self.pending.is_empty() {
            self.c.write_index_segment(&self.pending)?;
            report.segments_written += 1;
            self.pending.clear();
        }
        Ok(())
    }
}

/// Reads the batch's chunks (coalesced ranged reads, verified) and encodes them again.
fn fetch_encoded(c: &Container, source: &Batch<'_>) -> Result<Vec<EncodedChunk>> {
    let level = c.config().zstd_level;
    let keys = c.keys()?;
    let ranges = plan_ranges(source, &source.ids, MAX_RANGE_RAW, |id| {
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
    Ok(fetched
        .into_par_iter()
        .flatten()
        .map(|(id, raw)| {
            let kind = source.locs.get(&id).map_or(ChunkKind::Data, |l| l.kind);
            encode_chunk(id, kind, &raw, level, keys.chunks())
        })
        .collect())
}
