//! Index segments merged: rewritten without the packs a sweep deleted (or that vanished), small
//! segments gathered into full ones, and damaged segments replaced by the packs' own tables.
//! New segments first, old ones after. The segments are read again one at a time, so memory
//! holds one segment and the merged one being filled.

use std::collections::HashSet;

use super::GcReport;
use super::survey::{Known, Survey};
use crate::container::Container;
use crate::error::{Error, Result};
use crate::format::index_segment::PACKS_PER_SEGMENT;
use crate::format::pack::PackEntry;
use crate::ids::Hash;

/// Small segments (under half of [`PACKS_PER_SEGMENT`] packs: each backup leaves one) are
/// gathered into full ones when there are more than this many.
const MERGE_SMALL_ABOVE: usize = 64;

/// Pack tables read at once when replacing damaged segments.
const TABLES_AT_ONCE: usize = 256;

/// Rewrites the index segments that name packs `keep` rejects (deleted, vanished) and the small
/// ones if there are many, and replaces damaged segments with the packs' own tables: the new
/// segments are written first, then the old ones deleted, so a concurrent reader always finds
/// every live pack.
pub(super) fn merge_segments(
    c: &Container,
    survey: &Survey,
    keep: impl Fn(&Hash) -> bool,
    report: &mut GcReport,
) -> Result<()> {
    let packs = &survey.packs;
    let small = |n: usize| n < PACKS_PER_SEGMENT / 2;
    let gather = survey
        .segments
        .iter()
        .filter(|s| small(s.pack_count()))
        .count()
        > MERGE_SMALL_ABOVE;
    let affected: Vec<&str> = survey
        .segments
        .iter()
        .filter(|s| {
            (gather && small(s.pack_count()))
                || s.listed.iter().any(|&p| !keep(&packs.id(p)))
                || s.unlisted.iter().any(|p| !keep(p))
        })
        .map(|s| s.key.as_str())
        .collect();
    if affected.is_empty() && survey.damaged.is_empty() {
        return Ok(());
    }
    let mut out = Merged {
        c,
        pending: Vec::new(),
        included: vec![false; packs.len()],
        included_unlisted: HashSet::new(),
        written: HashSet::new(),
    };
    for key in &affected {
        let seg = match c.store().get(key) {
            Ok(bytes) => c.decode_segment(key, bytes)?,
            // Merged by another collector, which wrote its merged segment first.
            Err(Error::MissingObject { .. }) => continue,
            Err(e) => return Err(e),
        };
        for (p, entries) in seg {
            if keep(&p) {
                out.add(packs.pos(&p), p, entries, report)?;
            }
        }
    }
    if !survey.damaged.is_empty() {
        // Packs no readable segment describes: their tables were read from the packs.
        let from_tables: Vec<(Hash, u64)> = (0..packs.listed_len() as u32)
            .filter(|&p| packs.known[p as usize] == Known::Table && keep(&packs.id(p)))
            .map(|p| (packs.id(p), packs.size(p)))
            .collect();
        for batch in from_tables.chunks(TABLES_AT_ONCE) {
            for (p, entries) in c.read_pack_tables(batch) {
                match entries {
                    Ok(entries) => out.add(packs.pos(&p), p, entries, report)?,
                    Err(e) => tracing::warn!("{e}"),
                }
            }
        }
    }
    out.flush(report)?;
    for key in affected
        .into_iter()
        .chain(survey.damaged.iter().map(|k| k.as_str()))
    {
        if !out.written.contains(key) {
            c.store().delete(key)?;
            report.segments_deleted += 1;
        }
    }
    Ok(())
}

/// The merged segments being written.
struct Merged<'a> {
    c: &'a Container,
    pending: Vec<(Hash, Vec<PackEntry>)>,
    /// Packs already in a merged segment: by position, and the unlisted ones by id.
    included: Vec<bool>,
    included_unlisted: HashSet<Hash>,
    /// Keys written (a merged segment may have the name of one it replaces).
    written: HashSet<String>,
}

impl Merged<'_> {
    fn add(
        &mut self,
        pos: Option<u32>,
        pack: Hash,
        entries: Vec<PackEntry>,
        report: &mut GcReport,
    ) -> Result<()> {
        let first = match pos {
            Some(p) => !std::mem::replace(&mut self.included[p as usize], true),
            None => self.included_unlisted.insert(pack),
        };
        if first {
            self.pending.push((pack, entries));
            if self.pending.len() >= PACKS_PER_SEGMENT {
                self.flush(report)?;
            }
        }
        Ok(())
    }

    fn flush(&mut self, report: &mut GcReport) -> Result<()> {
        if !self.pending.is_empty() {
            self.written
                .insert(self.c.write_index_segment(&self.pending)?.0);
            report.segments_written += 1;
            self.pending.clear();
        }
        Ok(())
    }
}
