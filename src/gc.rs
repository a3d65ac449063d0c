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
//! 4. **Writers** (`Container::load_dedup_set`) read the records, then the pack listing, then
//!    the index, and deduplicate only against chunks in packs that exist and are not condemned;
//!    they never produce a pack whose name is condemned (`PackBuilder::finish_avoiding`).
//!
//! Why this is safe, and for which pairs of operations, is argued in `docs/gc.md`.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::container::{
    Container, MAX_RANGE_RAW, Segments, hostname, now_rfc3339, now_unix, pack_key, plan_ranges,
};
use crate::error::{Error, Result};
use crate::ids::Hash;
use crate::index::{Index, Segment};
use crate::manifest::{Extent, Manifest, decode_versioned_json};
use crate::pack::{ChunkKind, ENTRY_LEN, EncodedChunk, PackBuilder, PackEntry, encode_chunk};
use crate::store::RequestCounts;

/// Prefix of condemnation records.
pub const CONDEMNED_PREFIX: &str = "gc/condemned-";
/// Condemnation record format name.
pub const CONDEMNED_FORMAT: &str = "volback-condemned";
/// Condemnation record version written and read by this build.
pub const CONDEMNED_VERSION: u64 = 1;
/// Live chunks copied per batch while repacking (bounds memory).
const REPACK_BATCH: usize = 2048;
/// A temporary file is written and renamed within one store request, so one this old was left
/// by a process that died.
const TEMPORARY_MAX_AGE: Duration = Duration::from_secs(3600);
/// Index segments are merged when a run deletes packs, or when there are more than this many.
const MERGE_SEGMENTS_ABOVE: usize = 64;

/// A condemnation record: packs the collector proposes to delete.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Condemnation {
    pub format: String,
    pub version: u64,
    /// When the record was written, by the collector's clock.
    pub created_unix: u64,
    pub created_at: String,
    pub host: String,
    /// Pack ids (hex).
    pub packs: Vec<String>,
}

impl Condemnation {
    /// Decodes a record, checking its format, version and pack ids.
    pub fn decode(key: &str, bytes: &[u8]) -> Result<Self> {
        let c: Condemnation = decode_versioned_json(
            key,
            bytes,
            "condemnation record",
            CONDEMNED_FORMAT,
            CONDEMNED_VERSION,
        )?;
        if let Some(bad) = c.packs.iter().find(|p| Hash::from_hex(p).is_none()) {
            return Err(Error::corrupt(key, 0, format!("'{bad}' is not a pack id")));
        }
        Ok(c)
    }

    /// The condemned pack ids.
    pub fn pack_ids(&self) -> impl Iterator<Item = Hash> + '_ {
        self.packs.iter().filter_map(|p| Hash::from_hex(p))
    }
}

/// Every condemnation record in the container. A record deleted between the listing and the
/// read was swept (its packs are gone, which the pack listing that follows will show).
pub fn load_condemned(c: &Container) -> Result<Vec<(String, Condemnation)>> {
    let keys = c.store().list(CONDEMNED_PREFIX)?;
    let records: Vec<Result<Option<(String, Condemnation)>>> = c.on_io_pool(|| {
        keys.par_iter()
            .map(|o| match c.store().get(&o.key) {
                Ok(bytes) => Ok(Some((o.key.clone(), Condemnation::decode(&o.key, &bytes)?))),
                Err(Error::MissingObject { .. }) => Ok(None),
                Err(e) => Err(e),
            })
            .collect()
    });
    let mut out: Vec<_> = records
        .into_iter()
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .flatten()
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

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
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            dry_run: false,
            max_unused: 0.05,
            clock_skew: Duration::from_secs(300),
            min_age: Duration::ZERO,
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
    /// Condemnation records swept, and those left for a later run (held back by a lease or
    /// younger than `min_age`).
    pub records_swept: usize,
    pub records_deferred: usize,
    /// Index segments merged away and written.
    pub segments_deleted: usize,
    pub segments_written: usize,
    /// Expired leases removed (left by processes that died).
    pub leases_removed: usize,
    /// Chunks that committed backups reference but no existing pack holds (damage: run verify).
    pub live_chunks_missing: usize,
    /// Temporary files of interrupted writes removed (filesystem containers).
    pub temporaries_removed: u64,
    pub requests: RequestCounts,
    pub elapsed_s: f64,
}

/// Marks chunks of committed manifests; remembers which backups were walked.
struct Marker<'a> {
    c: &'a Container,
    /// Chunk locations for walking extent lists; reloaded if a manifest committed during the
    /// run names extent-list chunks written after it was loaded.
    index: Index,
    walked: HashSet<String>,
    live: HashSet<Hash>,
}

impl Marker<'_> {
    /// Walks every manifest not walked yet. A manifest that cannot be read or walked stops the
    /// collection: its chunks are unknown, so nothing could be proven unreferenced.
    fn mark_all(&mut self) -> Result<()> {
        let keys = self.c.store().list("backups/")?;
        for o in keys {
            let id = o.key.trim_start_matches("backups/").to_string();
            if self.walked.contains(&id) {
                continue;
            }
            let bytes = match self.c.store().get(&o.key) {
                Ok(b) => b,
                Err(Error::MissingObject { .. }) => continue, // deleted meanwhile
                Err(e) => return Err(e),
            };
            let m = Manifest::decode(&o.key, &bytes)?;
            match self.mark(&m) {
                // Committed after the index was loaded, or its extent list was repacked by
                // another collector: look again with a fresh index.
                Err(Error::ChunkNotIndexed { .. } | Error::MissingObject { .. }) => {
                    self.index = self.c.load_index()?;
                    self.mark(&m)?;
                }
                other => other?,
            }
            self.walked.insert(id);
        }
        Ok(())
    }

    fn mark(&mut self, m: &Manifest) -> Result<()> {
        for (id, _) in m.meta_ids(&format!("backups/{}", m.backup_id))? {
            self.live.insert(id);
        }
        let live = &mut self.live;
        self.c.walk_extents(&self.index, m, |_, e| {
            if let Extent::Data { id, .. } = e {
                live.insert(*id);
            }
            Ok(())
        })
    }
}

/// The packs of the container and what each holds.
struct Packs {
    /// Pack id → (size in bytes, entries).
    table: HashMap<Hash, (u64, Vec<PackEntry>)>,
    /// Chunk id → packs holding a copy.
    holders: HashMap<Hash, Vec<Hash>>,
}

impl Packs {
    fn add(&mut self, pack: Hash, size: u64, entries: Vec<PackEntry>) {
        for e in &entries {
            let h = self.holders.entry(e.id).or_default();
            if !h.contains(&pack) {
                h.push(pack);
            }
        }
        self.table.insert(pack, (size, entries));
    }

    /// Whether every live chunk of `pack` has a copy in a pack that exists and is not condemned.
    fn live_copies_elsewhere(
        &self,
        pack: &Hash,
        live: &HashSet<Hash>,
        exists: impl Fn(&Hash) -> bool,
        condemned: &HashSet<Hash>,
    ) -> bool {
        let Some((_, entries)) = self.table.get(pack) else {
            return false;
        };
        entries.iter().filter(|e| live.contains(&e.id)).all(|e| {
            self.holders.get(&e.id).is_some_and(|hs| {
                hs.iter()
                    .any(|q| q != pack && exists(q) && !condemned.contains(q))
            })
        })
    }
}

/// Runs one collection. Safe to run at any time, from any host, alongside anything.
pub fn run_gc(c: &Container, opts: &GcOptions) -> Result<GcReport> {
    let started = Instant::now();
    let requests_before = c.store().requests();
    let skew = opts.clock_skew.as_secs();
    let mut report = GcReport {
        dry_run: opts.dry_run,
        ..Default::default()
    };

    // Records first: a pack a concurrent sweep deletes is then either condemned by a record we
    // read, or absent from the pack listing taken after it (the order writers use too).
    let records = load_condemned(c)?;
    let Segments {
        good: segments,
        damaged,
    } = c.read_segments()?;
    let damaged: Vec<String> = damaged.into_iter().map(|(key, _)| key).collect();
    let mut listed = c.listed_packs()?;
    report.packs_before = listed.len();
    report.bytes_before = listed.values().sum();
    let condemned_before: HashSet<Hash> = records.iter().flat_map(|(_, r)| r.pack_ids()).collect();

    // What each existing pack holds: from the index, or from the pack's own table for packs no
    // segment describes yet (a running or interrupted backup's).
    let mut packs = Packs {
        table: HashMap::new(),
        holders: HashMap::new(),
    };
    let mut index = Index::new();
    for (_, seg) in &segments {
        for (pack, entries) in seg {
            if let Some(size) = listed.get(pack)
                && !packs.table.contains_key(pack)
            {
                packs.add(*pack, *size, entries.clone());
            }
        }
    }
    let unindexed: Vec<(Hash, u64)> = listed
        .iter()
        .filter(|(p, _)| !packs.table.contains_key(*p))
        .map(|(p, s)| (*p, *s))
        .collect();
    for (p, entries) in c.read_pack_tables(&unindexed) {
        // A pack whose table cannot be read is left alone (verify reports it).
        if let Ok(entries) = entries {
            packs.add(p, listed[&p], entries);
        }
    }
    // Locations for walking manifests: live packs first, as for a restore.
    for pass in [false, true] {
        for (p, (_, entries)) in &packs.table {
            if condemned_before.contains(p) == pass {
                index.add_pack(*p, entries);
            }
        }
    }

    // Mark.
    let mut marker = Marker {
        c,
        index,
        walked: HashSet::new(),
        live: HashSet::new(),
    };
    marker.mark_all()?;

    // Condemn: packs with no live chunk, and sparse packs once their live chunks are copied.
    let mut unreferenced = Vec::new();
    let mut partial = Vec::new();
    let mut total_live = 0u64;
    for (p, (size, entries)) in &packs.table {
        if condemned_before.contains(p) {
            continue;
        }
        let mut live_bytes = 0u64;
        let mut counted = HashSet::new();
        for e in entries {
            if marker.live.contains(&e.id) && counted.insert(e.id) {
                live_bytes += u64::from(e.stored_len) + ENTRY_LEN;
            }
        }
        total_live += live_bytes;
        if live_bytes == 0 {
            unreferenced.push(*p);
        } else if live_bytes < *size {
            partial.push((live_bytes as f64 / *size as f64, *p, size - live_bytes));
        }
    }
    // Sparsest first, until the unused bytes left are within the bound.
    partial.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let mut unused: u64 = partial.iter().map(|(_, _, dead)| dead).sum();
    let allowed = opts.max_unused.max(0.0) * total_live as f64;
    let mut sparse = Vec::new();
    for (_, p, dead) in partial {
        if unused as f64 <= allowed {
            break;
        }
        sparse.push(p);
        unused -= dead;
    }
    unreferenced.sort();
    sparse.sort();
    report.backups = marker.walked.len();
    report.live_chunks = marker.live.len();
    report.live_chunks_missing = marker
        .live
        .iter()
        .filter(|id| !packs.holders.contains_key(*id))
        .count();
    report.packs_unreferenced = unreferenced.len();
    report.packs_repacked = sparse.len();
    if opts.dry_run {
        let swept = |p: &Hash| listed.get(p).copied().unwrap_or(0);
        report.bytes_deleted = unreferenced.iter().chain(&sparse).map(swept).sum();
        report.packs_deleted = unreferenced.len() + sparse.len();
        report.bytes_reclaimed = report.bytes_deleted as i64;
        report.records_deferred = records.len();
        return Ok(finish(c, report, started, &requests_before));
    }

    // Repack: copy the live chunks of sparse packs that have no other live copy.
    let mut leaving: HashSet<Hash> = condemned_before.clone();
    leaving.extend(unreferenced.iter().chain(&sparse).copied());
    let to_copy: Vec<Hash> = {
        let mut seen = HashSet::new();
        sparse
            .iter()
            .flat_map(|p| packs.table[p].1.iter())
            .filter(|e| marker.live.contains(&e.id) && seen.insert(e.id))
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
        for p in &sparse {
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
    let mut all_records = records;
    if !unreferenced.is_empty() || !sparse.is_empty() {
        let record = Condemnation {
            format: CONDEMNED_FORMAT.into(),
            version: CONDEMNED_VERSION,
            created_unix: now_unix(),
            created_at: now_rfc3339(),
            host: hostname(),
            packs: unreferenced
                .iter()
                .chain(&sparse)
                .map(|p| p.to_hex())
                .collect(),
        };
        let key = format!(
            "{CONDEMNED_PREFIX}{}-{}",
            record.created_unix,
            uuid::Uuid::new_v4().simple()
        );
        let bytes = serde_json::to_vec(&record).map_err(|e| Error::Internal(e.to_string()))?;
        if !c.store().put_if_absent(&key, Bytes::from(bytes))? {
            return Err(Error::Internal(format!("condemnation record {key} exists")));
        }
        all_records.push((key, record));
    }

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
        let records_again: HashSet<Hash> = load_condemned(c)?
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
            &segments,
            &damaged,
            &packs,
            &gone,
            |p| exists_now.contains(p),
            &mut report,
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
            &segments,
            &damaged,
            &packs,
            &HashSet::new(),
            |p| listed.contains_key(p),
            &mut report,
        )?;
    }
    for (key, l) in &leases {
        if l.expires_unix + skew < now {
            c.store().delete(key)?;
            report.leases_removed += 1;
        }
    }
    report.temporaries_removed = c.store().sweep_temporaries(TEMPORARY_MAX_AGE)?;
    report.bytes_reclaimed = report.bytes_deleted as i64 - report.bytes_written as i64;
    Ok(finish(c, report, started, &requests_before))
}

/// Rewrites the index segments that name deleted or vanished packs (all of them if there are
/// many), and replaces damaged segments with the packs' own tables: the new segment is written
/// first, then the old ones are deleted, so a concurrent reader always finds every live pack.
fn merge_segments(
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

fn finish(c: &Container, mut r: GcReport, started: Instant, before: &RequestCounts) -> GcReport {
    r.requests = c.store().requests().since(before);
    r.elapsed_s = started.elapsed().as_secs_f64();
    r
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
    let mut out = Vec::new();
    let mut builders = [PackBuilder::new(), PackBuilder::new()];
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
                encode_chunk(id, kind, &raw, level)
            })
            .collect();
        for e in encoded {
            let slot = usize::from(e.kind == ChunkKind::Meta);
            builders[slot].add(&e);
            if builders[slot].size() >= target {
                let full = std::mem::take(&mut builders[slot]);
                seal(full, &mut out)?;
            }
        }
    }
    for b in builders {
        seal(b, &mut out)?;
    }
    Ok(out)
}
