//! Index segments merged: rewritten without the packs a sweep deleted (or that vanished), and
//! damaged segments replaced by the packs' own tables. New segment first, old ones after.

use std::collections::HashSet;

use super::GcReport;
use super::packs::Packs;
use crate::container::Container;
use crate::error::Result;
use crate::format::index_segment::Segment;
use crate::format::pack::PackEntry;
use crate::ids::Hash;

/// Index segments are merged when a run deletes packs, or when there are more than this many.
const MERGE_SEGMENTS_ABOVE: usize = 64;

/// Rewrites the index segments that name deleted or vanished packs (all of them if there are
/// many), and replaces damaged segments with the packs' own tables: the new segment is written
/// first, then the old ones are deleted, so a concurrent reader always finds every live pack.
pub(super) fn merge_segments(
    c: &Container,
    segments: &[(String, Segment)],
    damaged: &[String],
    packs: &Packs,
    gone: &HashSet<Hash>,
    exists: impl Fn(&Hash) -> bool,
    report: &mut GcReport,
) -> Result<()> {
    let keep = |p: &Hash| !gone.contains(p) && exists(p);
    let all = segments.len() > MERGE_SEGMENTS_ABOVE;
    let affected: Vec<&(String, Segment)> = segments
        .iter()
        .filter(|(_, seg)| all || seg.iter().any(|(p, _)| !keep(p)))
        .collect();
    if affected.is_empty() && damaged.is_empty() {
        return Ok(());
    }
    let mut included = HashSet::new();
    let mut merged: Vec<(Hash, Vec<PackEntry>)> = Vec::new();
    for (_, seg) in &affected {
        for (p, entries) in seg {
            if keep(p) && included.insert(*p) {
                merged.push((*p, entries.clone()));
            }
        }
    }
    if !damaged.is_empty() {
        // Packs no readable segment describes: their tables were read from the packs.
        let covered: HashSet<Hash> = segments
            .iter()
            .flat_map(|(_, seg)| seg.iter().map(|(p, _)| *p))
            .collect();
        let mut extra: Vec<_> = packs
            .table
            .iter()
            .filter(|(p, _)| !covered.contains(*p) && keep(p) && included.insert(**p))
            .map(|(p, (_, entries))| (*p, entries.clone()))
            .collect();
        extra.sort_by_key(|(p, _)| *p);
        merged.extend(extra);
    }
    let mut written = HashSet::new();
    for group in merged.chunks(4096) {
        written.insert(c.write_index_segment(group)?.0);
        report.segments_written += 1;
    }
    for key in affected.iter().map(|(k, _)| k).chain(damaged) {
        if !written.contains(key) {
            c.store().delete(key)?;
            report.segments_deleted += 1;
        }
    }
    Ok(())
}
