//! Sweep: a condemnation record's packs are deleted once no lease that may predate it is alive,
//! and only those whose live chunks have copies elsewhere, checked twice (the second time on
//! fresh listings of records and packs).

use std::collections::HashSet;

use rayon::prelude::*;

use super::join::for_each_chunk;
use super::mark::Marker;
use super::merge::merge_segments;
use super::survey::{Known, Survey};
use super::{GcOptions, GcReport};
use crate::clock::now_unix;
use crate::container::{Container, pack_key};
use crate::error::{Error, Result};
use crate::extsort::Table;
use crate::format::condemnation::Condemnation;
use crate::format::keys::{PROBES_PREFIX, probe_time};
use crate::ids::Hash;
use crate::index::located::{ByChunk, ChunkId};

/// What the sweep reads besides the container.
pub(super) struct SweepInputs<'a> {
    /// Every condemnation record, this run's included.
    pub(super) records: &'a [(String, Condemnation)],
    pub(super) survey: &'a Survey,
    /// The chunks of the packs this run wrote (the survey's holders are the others').
    pub(super) written: &'a Table<ByChunk>,
    /// The chunks marked live so far.
    pub(super) live: Table<ChunkId>,
}

/// A setup-check probe older than this was left by a check that crashed (a check takes a
/// second).
const PROBE_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(3600);

// The sweep's time rules. Every time comes from the container (a lease or record anyone with
// write access can forge) or from a flag; the sums saturate, so a huge number only ever
// keeps things longer: a wrapped sum must never make a record due or a lease dead early.

/// A lease that expires at `expires` may still be held at `now`, give or take the clock skew.
fn lease_may_be_alive(expires: u64, now: u64, opts: &GcOptions) -> bool {
    expires.saturating_add(opts.clock_skew.as_secs()) >= now
}

/// A condemnation record written at `created` may be swept at `now` (it is `min_age` old).
fn record_is_due(created: u64, now: u64, opts: &GcOptions) -> bool {
    now >= created.saturating_add(opts.min_age.as_secs())
}

/// A lease taken at `started` may predate the record written at `created`, give or take the
/// clock skew: its holder may rely on the record's packs.
fn lease_may_predate(started: u64, created: u64, opts: &GcOptions) -> bool {
    started <= created.saturating_add(opts.clock_skew.as_secs())
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
        survey,
        written,
        live,
    } = inputs;
    let packs = &survey.packs;
    let holders = [&survey.holders, written];
    // Sweep: leases are listed after this run's record is written.
    let now = now_unix();
    let leases = c.list_leases()?;
    let live_leases: Vec<_> = leases
        .iter()
        .filter(|(_, l)| lease_may_be_alive(l.expires_unix, now, opts))
        .collect();
    let (sweepable, deferred): (Vec<_>, Vec<_>) = all_records.iter().partition(|(_, r)| {
        record_is_due(r.created_unix, now, opts)
            && !live_leases
                .iter()
                .any(|(_, l)| lease_may_predate(l.started_unix, r.created_unix, opts))
    });
    report.records_deferred = deferred.len();
    if !sweepable.is_empty() {
        // Manifests committed since the mark (a backup drops its lease after its commit).
        marker.mark_all()?;
        let since = marker.take_live()?;
        let live = [&live, &since];
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
        let all_listed = vec![true; packs.len()];
        let first = safe_to_delete(
            survey,
            &holders,
            &live,
            &candidates,
            &all_listed,
            &packs.flags(|p| condemned_now.contains(p)),
        )?;
        // Second look, on records and packs listed now (records first): another collector that
        // condemned the copies this run counts on has written its record by now, or will see
        // this run's record before it deletes them.
        let records_again: HashSet<Hash> = c
            .load_condemned()?
            .iter()
            .flat_map(|(_, r)| r.pack_ids())
            .chain(condemned_now.iter().copied())
            .collect();
        let exists_now = c.listed_packs()?;
        let deletable = safe_to_delete(
            survey,
            &holders,
            &live,
            &first,
            &packs.flags(|p| exists_now.contains(p)),
            &packs.flags(|p| records_again.contains(p)),
        )?;
        report.packs_kept = candidates.len() - deletable.len();
        let gone: HashSet<Hash> = deletable.iter().copied().collect();

        merge_segments(
            c,
            survey,
            |p| !gone.contains(p) && exists_now.contains(p),
            report,
        )?;
        let results: Vec<(u64, Result<()>)> = c.on_io_pool(|| {
            deletable
                .par_iter()
                .map(|p| {
                    let size = packs.size_of(p);
                    (size, c.store().delete(&pack_key(p)))
                })
                .collect()
        });
        for (size, r) in results {
            match r {
                Ok(()) => {
                    report.bytes_deleted = report.bytes_deleted.saturating_add(size);
                    report.packs_deleted += 1;
                }
                // Retained since it was chosen (a date the survey did not see): it stays, out
                // of the index, and a later run condemns it again.
                Err(Error::Retained { .. }) => {
                    report.bytes_retained = report.bytes_retained.saturating_add(size);
                    report.packs_retained += 1;
                }
                Err(e) => return Err(e),
            }
        }
        for (key, _) in &sweepable {
            c.store().delete(key)?;
            report.records_swept += 1;
        }
    }
    if sweepable.is_empty() {
        merge_segments(c, survey, |p| packs.pos(p).is_some(), report)?;
    }
    for (key, l) in &leases {
        if !lease_may_be_alive(l.expires_unix, now, opts) {
            c.store().delete(key)?;
            report.leases_removed += 1;
        }
    }
    for probe in c.store().list(PROBES_PREFIX)? {
        let stale =
            probe_time(&probe.key).is_some_and(|t| t.saturating_add(PROBE_MAX_AGE.as_secs()) < now);
        if stale {
            c.store().delete(&probe.key)?;
            report.probes_removed += 1;
        }
    }
    Ok(())
}

/// The packs of `candidates` that may be deleted: those not in the survey's listing or not
/// `exists` (already gone), and those whose contents are known and whose every live chunk has a copy in a pack
/// that `exists` and is not `condemned` (flags by pack position). One pass over the chunks.
fn safe_to_delete(
    survey: &Survey,
    holders: &[&Table<ByChunk>],
    live: &[&Table<ChunkId>],
    candidates: &[Hash],
    exists: &[bool],
    condemned: &[bool],
) -> Result<Vec<Hash>> {
    let packs = &survey.packs;
    let is_candidate = packs.flags_of(candidates);
    // Candidates whose contents are unknown are kept; the others until a chunk says otherwise.
    let mut kept: Vec<bool> = (0..packs.len())
        .map(|i| is_candidate[i] && packs.known[i] == Known::No)
        .collect();
    if is_candidate.iter().any(|&c| c) {
        for_each_chunk(holders, live, |_, is_live, hs| {
            let of_candidate = || hs.iter().any(|h| is_candidate[h.loc.pack as usize]);
            if !is_live || !of_candidate() {
                return Ok(());
            }
            let copy_stays = hs.iter().any(|h| {
                let i = h.loc.pack as usize;
                exists[i] && !condemned[i]
            });
            if !copy_stays {
                for h in hs.iter().filter(|h| is_candidate[h.loc.pack as usize]) {
                    kept[h.loc.pack as usize] = true;
                }
            }
            Ok(())
        })?;
    }
    Ok(candidates
        .iter()
        .filter(|p| {
            packs
                .pos(p)
                .is_none_or(|i| !exists[i as usize] || !kept[i as usize])
        })
        .copied()
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Forged times and huge flags never make a record due or a lease dead early: every sum
    /// saturates instead of wrapping.
    #[test]
    fn huge_times_and_flags_only_ever_keep_things_longer() {
        let now = 1_800_000_000;
        let huge = GcOptions {
            clock_skew: Duration::from_secs(u64::MAX),
            min_age: Duration::from_secs(u64::MAX),
            ..GcOptions::default()
        };
        let normal = GcOptions::default();
        let hour = GcOptions {
            min_age: Duration::from_secs(3600),
            ..GcOptions::default()
        };
        // A record "written" near the end of time is not due now, with any flags.
        for opts in [&normal, &huge, &hour] {
            assert!(!record_is_due(u64::MAX - 10, now, opts));
            assert!(!record_is_due(now + 1, now, opts));
        }
        assert!(!record_is_due(0, now, &huge));
        assert!(record_is_due(now - 1, now, &normal));
        // A lease with a forged far-future expiry is alive, and a huge skew keeps every lease
        // alive and counts every lease as predating every record.
        assert!(lease_may_be_alive(u64::MAX, now, &normal));
        assert!(lease_may_be_alive(u64::MAX - 1, now, &huge));
        assert!(lease_may_be_alive(0, now, &huge));
        assert!(!lease_may_be_alive(now - 1_000, now, &normal));
        assert!(lease_may_predate(now, u64::MAX - 5, &normal));
        assert!(lease_may_predate(u64::MAX, now, &huge));
        assert!(!lease_may_predate(now + 1_000, now, &normal));
    }
}
