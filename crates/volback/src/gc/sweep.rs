//! Sweep: a condemnation record's packs are deleted once no lease that may predate it is alive,
//! and only those whose live chunks have copies elsewhere, checked twice (the second time on
//! fresh listings of records and packs).

use std::collections::{HashMap, HashSet};

use rayon::prelude::*;

use super::mark::Marker;
use super::merge::merge_segments;
use super::packs::Packs;
use super::{GcOptions, GcReport};
use crate::clock::now_unix;
use crate::container::{Container, pack_key};
use crate::error::Result;
use crate::format::condemnation::Condemnation;
use crate::format::index_segment::Segment;
use crate::ids::Hash;

/// What the sweep reads besides the container.
pub(super) struct SweepInputs<'a> {
    /// Every condemnation record, this run's included.
    pub(super) records: &'a [(String, Condemnation)],
    pub(super) segments: &'a [(String, Segment)],
    pub(super) damaged: &'a [String],
    pub(super) packs: &'a Packs,
    pub(super) listed: &'a HashMap<Hash, u64>,
}

/// Sweeps every record no lease holds back, merges the index segments, and removes expired
/// leases.
pub(super) fn sweep(
    c: &Container,
    opts: &GcOptions,
    marker: &mut Marker<'_>,
    inputs: SweepInputs<'_>,
    report: &mut GcReport,
) -> Result<()> {
    let SweepInputs {
        records: all_records,
        segments,
        damaged,
        packs,
        listed,
    } = inputs;
    let skew = opts.clock_skew.as_secs();
    // Sweep: leases are listed after this run's record is written.
    let now = now_unix();
    let leases = c.list_leases()?;
    let live_leases: Vec<_> = leases
        .iter()
        .filter(|(_, l)| l.expires_unix + skew >= now)
        .collect();
    let (sweepable, deferred): (Vec<_>, Vec<_>) = all_records.iter().partition(|(_, r)| {
        now >= r.created_unix + opts.min_age.as_secs()
            && !live_leases
                .iter()
                .any(|(_, l)| l.started_unix <= r.created_unix + skew)
    });
    report.records_deferred = deferred.len();
    if !sweepable.is_empty() {
        // Manifests committed since the mark (a backup drops its lease after its commit).
        marker.mark_all()?;
        let live = &marker.live;
        // A pack also named by a deferred record stays: that record's lease rule protects it.
        let held: HashSet<Hash> = deferred.iter().flat_map(|(_, r)| r.pack_ids()).collect();
        let candidates: Vec<Hash> = {
            let mut set: Vec<Hash> = sweepable
                .iter()
                .flat_map(|(_, r)| r.pack_ids())
                .filter(|p| !held.contains(p))
                .collect();
            set.sort();
            set.dedup();
            set
        };
        let condemned_now: HashSet<Hash> =
            all_records.iter().flat_map(|(_, r)| r.pack_ids()).collect();
        let first: Vec<Hash> = candidates
            .iter()
            .filter(|p| {
                !listed.contains_key(*p)
                    || packs.live_copies_elsewhere(
                        p,
                        live,
                        |q| listed.contains_key(q),
                        &condemned_now,
                    )
            })
            .copied()
            .collect();
        // Second look, on records and packs listed now (records first): another collector that
        // condemned the copies this run counts on has written its record by now, or will see
        // this run's record before it deletes them.
        let records_again: HashSet<Hash> = c
            .load_condemned()?
            .iter()
            .flat_map(|(_, r)| r.pack_ids())
            .chain(condemned_now.iter().copied())
            .collect();
        let exists_now = c.existing_packs()?;
        let deletable: Vec<Hash> = first
            .into_iter()
            .filter(|p| {
                !exists_now.contains(p)
                    || packs.live_copies_elsewhere(
                        p,
                        live,
                        |q| exists_now.contains(q),
                        &records_again,
                    )
            })
            .collect();
        report.packs_kept = candidates.len() - deletable.len();
        let gone: HashSet<Hash> = deletable.iter().copied().collect();

        merge_segments(
            c,
            segments,
            damaged,
            packs,
            &gone,
            |p| exists_now.contains(p),
            report,
        )?;
        let results: Vec<Result<u64>> = c.on_io_pool(|| {
            deletable
                .par_iter()
                .map(|p| {
                    let size = listed.get(p).copied().unwrap_or(0);
                    c.store().delete(&pack_key(p)).map(|_| size)
                })
                .collect()
        });
        for r in results {
            report.bytes_deleted += r?;
            report.packs_deleted += 1;
        }
        for (key, _) in &sweepable {
            c.store().delete(key)?;
            report.records_swept += 1;
        }
    }
    if sweepable.is_empty() {
        merge_segments(
            c,
            segments,
            damaged,
            packs,
            &HashSet::new(),
            |p| listed.contains_key(p),
            report,
        )?;
    }
    for (key, l) in &leases {
        if l.expires_unix + skew < now {
            c.store().delete(key)?;
            report.leases_removed += 1;
        }
    }
    Ok(())
}
