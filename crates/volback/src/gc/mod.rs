//! Garbage collection: mark, condemn, sweep — with no lock, safe while backups, restores,
//! deletes and other collectors run on other hosts.
//!
//! Deleting a backup removes only its manifest. The collector gives the space back:
//!
//! 1. **Mark.** List the manifests and mark every chunk they reference (data chunks through the
//!    extent list, and the extent-list chunks themselves).
//! 2. **Condemn.** Packs holding no marked chunk, and the sparsest partly live packs while the
//!    unused bytes exceed [`GcOptions::max_unused`] (after their live chunks are copied into new
//!    packs and indexed), are listed in a new record `gc/condemned-<unix>-<uuid>`. Nothing is deleted yet.
//! 3. **Sweep** a record (the new one included) only when no lease that may predate it is
//!    alive: a lease blocks it if it has not expired (plus the clock-skew bound) and started no
//!    later than the record (plus the bound). Then the manifests are listed *again* (after the
//!    leases: a backup deletes its lease only after its manifest is visible), and a condemned
//!    pack is deleted only if every chunk of it that a manifest now needs has a copy in a pack
//!    that exists and is condemned by no record. That check is made twice, the second time on a
//!    fresh listing of records and packs taken after this run's own record was written, so that
//!    two collectors condemning each other's copies see each other (each writes its record
//!    before it reads the other's). Index segments are then merged without the deleted packs,
//!    the packs deleted, and the record deleted last.
//! 4. **Writers** ([`crate::backup::dedup::load`]) read the records, then the pack listing, then
//!    the index, and deduplicate only against chunks in packs that exist and are not condemned;
//!    they never produce a pack whose name is condemned (`PackBuilder::finish_avoiding`).
//!
//! Why this is safe, and for which pairs of operations, is argued in `docs/gc.md`.
//!
//! Memory grows with the packs, not the chunks: what each pack holds is a table of (chunk,
//! pack) records sorted by chunk (`survey.rs`), the live set a table of chunk ids sorted the
//! same way (`mark.rs`), both spilled to scratch files beyond [`GcOptions::mem_entries`]; every
//! per-chunk decision above is made walking the two side by side (`join.rs`).

mod condemn;
mod join;
mod mark;
mod merge;
mod repack;
mod survey;
mod sweep;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::container::Container;
use crate::error::Result;
use crate::ids::Hash;
use crate::store::RequestCounts;
use crate::store::s3_lock::format_date;
use mark::Marker;
use survey::Survey;
use sweep::SweepInputs;

/// A temporary file is written and renamed within one store request, so one this old was left
/// by a process that died.
const TEMPORARY_MAX_AGE: Duration = Duration::from_secs(3600);

/// What the caller asks of a collection.
#[derive(Debug, Clone)]
pub struct GcOptions {
    /// Report what would be done; write and delete nothing.
    pub dry_run: bool,
    /// Unused bytes left in partly live packs, as a fraction of the live bytes. Beyond it, the
    /// sparsest packs are rewritten (their live chunks copied to new packs) and condemned until
    /// the rest is within it — the whole container, not each pack, so a large, mostly live pack
    /// is not rewritten to reclaim a little. 1 or more disables repacking.
    pub max_unused: f64,
    /// Largest difference between any two hosts' clocks that the protocol tolerates.
    pub clock_skew: Duration,
    /// A condemnation record is swept no earlier than this after it was written (a grace period
    /// on top of the lease rule; 0 sweeps in the same run when no lease holds it back).
    pub min_age: Duration,
    /// Chunk records each of the collector's sorted tables (the chunks and the packs holding
    /// them, the live set, the copy list) holds in memory; beyond it they are sorted in runs
    /// into scratch files in `$TMPDIR`. Bounds memory whatever the container's size.
    pub mem_entries: usize,
}

/// Default [`GcOptions::mem_entries`]: 1 Mi records (50 MiB for the chunk table, the largest);
/// containers of up to 32 GiB of unique data at 32 KiB chunks are collected in memory.
pub const DEFAULT_GC_MEM_ENTRIES: usize = 1 << 20;

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            dry_run: false,
            max_unused: 0.05,
            clock_skew: Duration::from_secs(300),
            min_age: Duration::ZERO,
            mem_entries: DEFAULT_GC_MEM_ENTRIES,
        }
    }
}

/// What a collection did (or, with `dry_run`, would do).
#[derive(Debug, Clone, Default, Serialize)]
pub struct GcReport {
    pub dry_run: bool,
    /// Committed backups marked.
    pub backups: usize,
    /// Distinct chunks they reference.
    pub live_chunks: usize,
    /// Packs and their bytes when the run started.
    pub packs_before: usize,
    pub bytes_before: u64,
    /// Packs condemned by this run because they hold no live chunk.
    pub packs_unreferenced: usize,
    /// Packs condemned by this run after their live chunks were copied (repacked).
    pub packs_repacked: usize,
    /// New packs written by repacking, and their bytes.
    pub packs_written: usize,
    pub bytes_written: u64,
    /// Packs deleted by this run's sweep, and their bytes.
    pub packs_deleted: usize,
    pub bytes_deleted: u64,
    /// Bytes deleted minus bytes written.
    pub bytes_reclaimed: i64,
    /// Condemned packs the sweep kept because a backup committed since needs them.
    pub packs_kept: usize,
    /// Packs this run would have condemned but left alone because they are under Object Lock
    /// retention (or whose delete the server refused for it), their bytes, and the earliest
    /// date one of them can be reclaimed (RFC 3339).
    pub packs_retained: usize,
    pub bytes_retained: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retained_until: Option<String>,
    /// Condemnation records swept, and those left for a later run (held back by a lease or
    /// younger than `min_age`).
    pub records_swept: usize,
    pub records_deferred: usize,
    /// Index segments merged away and written.
    pub segments_deleted: usize,
    pub segments_written: usize,
    /// Expired leases removed (left by processes that died).
    pub leases_removed: usize,
    /// Setup-check probes over an hour old removed (left by checks that crashed).
    pub probes_removed: usize,
    /// Chunks that committed backups reference but no existing pack holds (damage: run verify).
    pub live_chunks_missing: usize,
    /// In a versioned bucket: versions of the container's objects that are no longer current
    /// (deleted or replaced, still stored and billed until the bucket's lifecycle rules or an
    /// administrator remove them) and their bytes. A container with Object Lock deletes every
    /// version itself, so there it counts only what someone else's deletes left.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub noncurrent_versions: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub noncurrent_bytes: Option<u64>,
    /// Temporary files of interrupted writes removed (filesystem containers).
    pub temporaries_removed: u64,
    pub requests: RequestCounts,
    pub elapsed_s: f64,
}

/// Runs one collection. Safe to run at any time, from any host, alongside anything.
pub fn run_gc(c: &Container, opts: &GcOptions) -> Result<GcReport> {
    let started = Instant::now();
    let requests_before = c.store().requests();
    let mut report = GcReport {
        dry_run: opts.dry_run,
        ..Default::default()
    };

    // Records first: a pack a concurrent sweep deletes is then either condemned by a record we
    // read, or absent from the pack listing taken after it (the order writers use too).
    let records = c.load_condemned()?;
    let condemned_before: HashSet<Hash> = records.iter().flat_map(|(_, r)| r.pack_ids()).collect();
    let mut survey = Survey::take(c, c.listed_packs()?, &condemned_before, opts.mem_entries)?;
    report.packs_before = survey.packs.listed_len();
    report.bytes_before = survey.packs.listed_bytes();

    let meta = survey.meta.take();
    let mut marker = Marker::new(c, meta, opts.mem_entries);
    marker.mark_all()?;
    let live = marker.take_live()?;
    let (live_bytes, missing) = condemn::live_bytes(&survey, &live)?;
    let condemned_flags = survey.packs.flags(|p| condemned_before.contains(p));

    let mut chosen = condemn::choose(
        &survey.packs,
        &live_bytes,
        &condemned_flags,
        opts.max_unused,
    );
    drop(live_bytes);
    // Object Lock: a retained pack cannot be deleted before its date; repacking it would only
    // store its live chunks twice. Leave it for a run after the date.
    let candidates: Vec<Hash> = chosen
        .unreferenced
        .iter()
        .chain(&chosen.sparse)
        .copied()
        .collect();
    let retained = c.retained_packs(&candidates)?;
    if !retained.is_empty() {
        chosen.unreferenced.retain(|p| !retained.contains_key(p));
        chosen.sparse.retain(|p| !retained.contains_key(p));
        report.packs_retained = retained.len();
        report.bytes_retained =
            (retained.keys()).fold(0u64, |sum, p| sum.saturating_add(survey.packs.size_of(p)));
        report.retained_until = retained.values().min().map(|&u| format_date(u));
    }
    let (unreferenced, sparse) = (&chosen.unreferenced, &chosen.sparse);
    report.backups = marker.walked.len();
    report.live_chunks = live.len();
    report.live_chunks_missing = usize::try_from(missing).unwrap_or(usize::MAX);
    report.packs_unreferenced = unreferenced.len();
    report.packs_repacked = sparse.len();
    if opts.dry_run {
        let swept = |p: &Hash| survey.packs.size_of(p);
        report.bytes_deleted =
            (unreferenced.iter().chain(sparse)).fold(0u64, |sum, p| sum.saturating_add(swept(p)));
        report.packs_deleted = unreferenced.len() + sparse.len();
        report.bytes_reclaimed = i64::try_from(report.bytes_deleted).unwrap_or(i64::MAX);
        report.records_deferred = records.len();
        return Ok(finish(c, report, started, &requests_before));
    }

    // Repack: copy the live chunks of sparse packs that have no other live copy.
    let plan = repack::plan(&survey, &live, &chosen, &condemned_flags, opts.mem_entries)?;
    let written = repack::copy_live(
        c,
        &plan,
        &chosen,
        &condemned_before,
        &mut survey,
        opts.mem_entries,
        &mut report,
    )?;
    let mut all_records = records;
    all_records.extend(condemn::write_record(c, &chosen, plan.exposed)?);

    sweep::sweep(
        c,
        opts,
        &mut marker,
        SweepInputs {
            records: &all_records,
            survey: &survey,
            written: &written,
            live,
        },
        &mut report,
    )?;
    report.temporaries_removed = c.store().sweep_temporaries(TEMPORARY_MAX_AGE)?;
    if let Some((n, bytes)) = c.store().noncurrent_versions("")? {
        report.noncurrent_versions = Some(n);
        report.noncurrent_bytes = Some(bytes);
    }
    let signed = |b: u64| i64::try_from(b).unwrap_or(i64::MAX);
    report.bytes_reclaimed =
        signed(report.bytes_deleted).saturating_sub(signed(report.bytes_written));
    Ok(finish(c, report, started, &requests_before))
}

fn finish(c: &Container, mut r: GcReport, started: Instant, before: &RequestCounts) -> GcReport {
    r.requests = c.store().requests().since(before);
    r.elapsed_s = started.elapsed().as_secs_f64();
    r
}
