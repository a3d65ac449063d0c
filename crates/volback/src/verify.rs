//! `verify`: proves that backups can be restored, without restoring them.
//!
//! Structure check (always): every manifest decodes; its extent list is read, verified against
//! its BLAKE3 ids and checked to cover the volume; every data chunk is indexed, in a pack that
//! exists and is long enough to hold it; every index segment decodes; every pack's table reads.
//! With `read_data`, every chunk a checked backup needs is read back, decompressed and
//! re-hashed (each pack once, with coalesced ranged reads, in bounded memory).
//!
//! Memory grows with the container's packs (two pack listings, 40 bytes a pack each) but not
//! with its chunks: the best copy of every chunk (from the index) and the chunks the backups
//! reference (from their extent lists, each once) are tables sorted into scratch files in
//! `$TMPDIR` (`crate::extsort`), checked against each other in one pass; the chunks to read
//! back are sorted again by pack and offset. Damage found is attributed to the backups that
//! need the damaged chunks, at their volume offsets, by walking their extent lists again.
//!
//! Without the key of an encrypted container, only what is visible without it is checked
//! ([`run_verify`] says so in [`VerifyReport::without_key`]): every manifest and index segment is
//! a well-formed sealed object, every segment and (with `read_data`) every pack hashes to its
//! name, and every pack's trailer and sealed table are intact.
//!
//! Damage is reported per backup (which backups cannot be restored, and why, naming the object
//! and offset) and per object (damaged objects that no backup depends on, such as a segment the
//! packs' own tables stand in for). Verification only reads, under a lease, so it is safe
//! alongside any other operation.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;

use crate::container::pack_numbers::Unlisted;
use crate::container::{
    Container, LEASE_TTL, LeaseGuard, MAX_RANGE_RAW, PackListing, manifest_key, pack_key,
    plan_ranges,
};
use crate::error::{Error, Result};
use crate::extsort::{Table, TableBuilder};
use crate::format::chunk::{ChunkKind, decode_chunk};
use crate::format::extent_list::Extent;
use crate::format::keys::BACKUPS_PREFIX;
use crate::format::manifest::Manifest;
use crate::ids::Hash;
use crate::index::Location;
use crate::index::located::{Batch, BestCopy, ByPlace, ChunkId, Located};
use crate::restore::locations::{DEFAULT_MEM_ENTRIES, LocationBuilder, LocationTable};
use crate::store::RequestCounts;

/// Problems listed per backup (the count is always complete).
const MAX_LISTED: usize = 20;
/// Chunks located, and planned into ranged reads, at a time.
const READ_BATCH: usize = 8192;
/// Pack tables read at once.
const TABLES_AT_ONCE: usize = 256;

/// What to verify.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// Only this backup (default: every backup in the container).
    pub backup_id: Option<String>,
    /// Also read back and re-hash every chunk.
    pub read_data: bool,
    /// Chunk records each of verify's sorted tables (chunk locations, the chunks backups need,
    /// the chunks to read back) holds in memory; beyond it they are sorted in runs into scratch
    /// files in `$TMPDIR`. Bounds memory whatever the container's size.
    pub mem_entries: usize,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions {
            backup_id: None,
            read_data: false,
            mem_entries: DEFAULT_MEM_ENTRIES,
        }
    }
}

/// One problem, naming the damaged object.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Problem {
    /// The damaged or missing object's key.
    pub object: String,
    /// The error kind (`Error::kind`).
    pub kind: String,
    pub message: String,
}

impl Problem {
    fn of(object: &str, e: &Error) -> Self {
        Problem {
            object: object.to_string(),
            kind: e.kind().to_string(),
            message: e.to_string(),
        }
    }
}

/// A chunk that failed to read back, before it is attributed to a backup's volume offset.
#[derive(Clone)]
struct BadChunk {
    object: String,
    error_kind: &'static str,
    /// Set for a hash mismatch: (pack offset, chunk id); the message is rebuilt per backup.
    mismatch: Option<(u64, String)>,
    message: String,
}

impl BadChunk {
    fn new(object: &str, e: &Error) -> Self {
        let mismatch = match e {
            Error::ChunkHashMismatch { offset, chunk, .. } => Some((*offset, chunk.clone())),
            _ => None,
        };
        BadChunk {
            object: object.to_string(),
            error_kind: e.kind(),
            mismatch,
            message: e.to_string(),
        }
    }

    fn at_volume_offset(&self, volume_offset: u64) -> Problem {
        let message = match &self.mismatch {
            Some((offset, chunk)) => Error::ChunkHashMismatch {
                key: self.object.clone(),
                offset: *offset,
                chunk: chunk.clone(),
                volume_offset,
            }
            .to_string(),
            None => self.message.clone(),
        };
        Problem {
            object: self.object.clone(),
            kind: self.error_kind.to_string(),
            message,
        }
    }
}

/// The verdict on one backup.
#[derive(Debug, Clone, Serialize)]
pub struct BackupVerdict {
    pub backup_id: String,
    pub ok: bool,
    /// Number of problems found (only the first few are listed).
    pub problem_count: usize,
    pub problems: Vec<Problem>,
    /// How the backup read its volume, when not in full: `source-unchanged`, or
    /// `change-map (KIND)`: what verify proves of it is that it restores as recorded, not that
    /// the map was right.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read: Option<String>,
}

/// What `verify` found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    pub read_data: bool,
    /// Checked without the key of an encrypted container: structure and integrity of the
    /// stored objects only, not what they hold.
    pub without_key: bool,
    pub backups_checked: usize,
    /// Ids of the backups that cannot be restored intact.
    pub damaged_backups: Vec<String>,
    pub backups: Vec<BackupVerdict>,
    /// Damaged objects no backup depends on (damaged index segments, unreadable pack tables).
    pub damaged_objects: Vec<Problem>,
    pub chunks_checked: u64,
    pub chunks_read: u64,
    pub bytes_read: u64,
    pub requests: RequestCounts,
    pub elapsed_s: f64,
}

impl VerifyReport {
    /// True if nothing is damaged.
    pub fn ok(&self) -> bool {
        self.damaged_backups.is_empty() && self.damaged_objects.is_empty()
    }
}

#[derive(Default)]
struct Findings {
    count: usize,
    listed: Vec<Problem>,
}

impl Findings {
    fn add(&mut self, p: Problem) {
        self.count += 1;
        if self.listed.len() < MAX_LISTED && !self.listed.contains(&p) {
            self.listed.push(p);
        }
    }
}

/// Verifies a container (or one backup in it). A locked encrypted container (opened without
/// its key) is checked as far as that allows.
pub fn run_verify(c: &Container, opts: &VerifyOptions) -> Result<VerifyReport> {
    if c.keys().is_err() {
        return run_verify_without_key(c, opts);
    }
    let started = Instant::now();
    let before = c.store().requests();
    let mut report = VerifyReport {
        read_data: opts.read_data,
        ..Default::default()
    };
    let _lease = LeaseGuard::take(c, opts.backup_id.as_deref().unwrap_or("verify"), LEASE_TTL).ok();
    // Packs are numbered by the listing the index scan takes before it reads the segments, and
    // checked against one taken after it: a pack a backup writes while verify runs is indexed
    // only after it exists.
    let mut index = Locations::load(c, opts.mem_entries)?;
    let listed = c.listed_packs()?;
    for (key, e) in &index.damaged_segments {
        report.damaged_objects.push(Problem::of(key, e));
    }

    // Pack tables: a pack whose table is damaged can still serve its chunks through the index,
    // but the index could not be rebuilt from it.
    let packs: Vec<(Hash, u64)> = listed.iter().collect();
    for batch in packs.chunks(TABLES_AT_ONCE) {
        for (p, t) in c.read_pack_tables(batch) {
            if let Err(e) = t {
                report.damaged_objects.push(Problem::of(&pack_key(&p), &e));
            }
        }
    }
    drop(packs);

    // Manifests, one at a time: their structure, and the chunks they need (each once).
    let mut findings: BTreeMap<String, Findings> = BTreeMap::new();
    let ids: Vec<String> = match &opts.backup_id {
        Some(id) => vec![id.clone()],
        None => c
            .store()
            .list(BACKUPS_PREFIX)?
            .into_iter()
            .map(|o| o.key.trim_start_matches(BACKUPS_PREFIX).to_string())
            .collect(),
    };
    let read_manifest = |id: &str| -> Result<Option<Manifest>> {
        if opts.backup_id.is_some() {
            return c.read_manifest(id).map(|(m, _)| Some(m));
        }
        let key = manifest_key(id);
        match c.store().get(&key) {
            Ok(bytes) => c.decode_manifest(&key, &bytes).map(Some),
            Err(Error::MissingObject { .. }) => Ok(None), // deleted meanwhile
            Err(e) => Err(e),
        }
    };
    let mut read_by = BTreeMap::new();
    let mut needed: TableBuilder<ChunkId> = TableBuilder::new(opts.mem_entries);
    let mut walked = Vec::new();
    for id in &ids {
        let m = match read_manifest(id) {
            Ok(Some(m)) => m,
            Ok(None) => continue,
            Err(e) if opts.backup_id.is_none() => {
                findings
                    .entry(id.clone())
                    .or_default()
                    .add(Problem::of(&manifest_key(id), &e));
                continue;
            }
            Err(e) => return Err(e),
        };
        if let Some(r) = read_mode(&m) {
            read_by.insert(m.backup_id.clone(), r);
        }
        let f = findings.entry(m.backup_id.clone()).or_default();
        let walk = c.walk_extents(&index.meta, &m, |_, e| match e {
            Extent::Data { id, .. } => {
                report.chunks_checked += 1;
                needed.push(ChunkId(*id))
            }
            _ => Ok(()),
        });
        if let Err(e) = walk {
            f.add(walk_problem(&m.backup_id, &e));
        }
        walked.push(m.backup_id);
    }

    // Every needed chunk located, in one pass over both sorted tables; then read back.
    let needed = needed.finish()?;
    let (mut bad, to_read) = index.check(&needed, &listed, opts)?;
    drop(needed);
    if to_read.len() > 0 {
        read_back(c, &index, &to_read, &mut bad, &mut report)?;
    }
    index.data = None;

    // Attribute what failed to the backups that need it, at their volume offsets.
    if !bad.is_empty() {
        for id in &walked {
            let Some(m) = read_manifest(id)? else {
                continue;
            };
            let f = findings.entry(m.backup_id.clone()).or_default();
            let _ = c.walk_extents(&index.meta, &m, |off, e| {
                if let Extent::Data { id, .. } = e
                    && let Some(b) = bad.get(id)
                {
                    f.add(b.problem(&m.backup_id, id, off));
                }
                Ok(())
            });
        }
    }

    add_verdicts(&mut report, findings, &read_by);
    report.requests = c.store().requests().since(&before);
    report.elapsed_s = started.elapsed().as_secs_f64();
    Ok(report)
}

/// A problem found while walking a backup, named by the object it is in.
fn walk_problem(backup_id: &str, e: &Error) -> Problem {
    let object = match e {
        Error::Corrupt { key, .. } | Error::ChunkHashMismatch { key, .. } => key.clone(),
        Error::MissingObject { key } => key.clone(),
        _ => manifest_key(backup_id),
    };
    Problem::of(&object, e)
}

/// What is wrong with a chunk backups need.
enum Bad {
    /// No index segment or pack table lists it.
    NotIndexed,
    /// Its pack is not listed.
    PackMissing { key: String },
    /// Its pack is shorter than its entry says.
    Truncated { key: String, size: u64, end: u64 },
    /// It did not read back intact.
    Read(BadChunk),
}

impl Bad {
    fn problem(&self, backup_id: &str, id: &Hash, off: u64) -> Problem {
        match self {
            Bad::NotIndexed => Problem::of(
                &manifest_key(backup_id),
                &Error::ChunkNotIndexed {
                    backup_id: backup_id.to_string(),
                    chunk: id.to_hex(),
                    volume_offset: off,
                },
            ),
            Bad::PackMissing { key } => {
                Problem::of(key, &Error::MissingObject { key: key.clone() })
            }
            Bad::Truncated { key, size, end } => Problem::of(
                key,
                &Error::corrupt(
                    key,
                    *size,
                    format!("pack truncated: chunk {id} (volume offset {off}) ends at {end}"),
                ),
            ),
            Bad::Read(b) => b.at_volume_offset(off),
        }
    }
}

/// Where chunks are, for verify, in memory that grows with the packs but not the chunks: the
/// extent-list chunks in a [`LocationTable`] (on disk beyond a few MiB), and the best copy of
/// every data chunk in a table sorted by chunk, read once front to back. Packs are numbered by
/// their position in the listing; packs the index names that are not listed come after.
struct Locations {
    meta: LocationTable,
    data: Option<Table<BestCopy>>,
    /// The listing the index scan took before reading the segments.
    listed: PackListing,
    unlisted: Unlisted,
    damaged_segments: Vec<(String, Error)>,
}

impl Locations {
    fn load(c: &Container, mem_entries: usize) -> Result<Self> {
        let mut meta = LocationBuilder::new(mem_entries);
        let mut data = TableBuilder::new(mem_entries);
        let (scan, unlisted) = c.scan_index_numbered(|pack, entries, pos, rank| {
            meta.add_meta(*pack, entries, rank);
            for e in entries.iter().filter(|e| e.kind != ChunkKind::Meta) {
                data.push(BestCopy(
                    Located {
                        id: e.id,
                        loc: Location::of(e, pos),
                    },
                    rank,
                ))?;
            }
            Ok(())
        })?;
        Ok(Locations {
            meta: meta.finish()?,
            data: Some(data.finish()?),
            listed: scan.listed,
            unlisted,
            damaged_segments: scan.damaged_segments,
        })
    }

    fn pack_id(&self, pos: u32) -> Hash {
        self.unlisted.id(&self.listed, pos)
    }

    /// Locates every `needed` chunk (both tables sorted by chunk: one pass) and checks that its
    /// pack is in `listed` and long enough. Returns the chunks that are not, and (with
    /// `opts.read_data`) the others by place, to read back.
    fn check(
        &self,
        needed: &Table<ChunkId>,
        listed: &PackListing,
        opts: &VerifyOptions,
    ) -> Result<(HashMap<Hash, Bad>, Table<ByPlace>)> {
        let mut bad = HashMap::new();
        let mut to_read = TableBuilder::new(opts.mem_entries);
        let Some(data) = &self.data else {
            return Err(Error::Internal("verify: chunk locations dropped".into()));
        };
        let mut copies = data.reader();
        let mut n = needed.reader();
        while let Some(ChunkId(id)) = n.next_record()? {
            let mut found = None;
            while let Some(BestCopy(c, _)) = copies.peek()? {
                if c.id > id {
                    break;
                }
                copies.next_record()?;
                if c.id == id {
                    found = Some(c.loc);
                    break;
                }
            }
            let Some(loc) = found else {
                bad.insert(id, Bad::NotIndexed);
                continue;
            };
            let key = pack_key(&self.pack_id(loc.pack));
            let end = u64::from(loc.offset) + u64::from(loc.stored_len);
            match listed.size(&self.pack_id(loc.pack)) {
                None => {
                    bad.insert(id, Bad::PackMissing { key });
                }
                Some(size) if size < end => {
                    bad.insert(id, Bad::Truncated { key, size, end });
                }
                Some(_) if opts.read_data => to_read.push(ByPlace(Located { id, loc }))?,
                Some(_) => {}
            }
        }
        Ok((bad, to_read.finish()?))
    }
}

/// How a backup read its volume, if not in full (the manifest's `read`, with the map's kind).
fn read_mode(m: &Manifest) -> Option<String> {
    let read = m.read.as_ref()?;
    Some(match &m.change_map {
        Some(cm) => format!("{read} ({})", cm.kind),
        None => read.clone(),
    })
}

/// One verdict per backup checked, damaged ones listed apart.
fn add_verdicts(
    report: &mut VerifyReport,
    findings: BTreeMap<String, Findings>,
    read_by: &BTreeMap<String, String>,
) {
    report.backups_checked = findings.len();
    for (id, f) in findings {
        if f.count > 0 {
            report.damaged_backups.push(id.clone());
        }
        report.backups.push(BackupVerdict {
            read: read_by.get(&id).cloned(),
            backup_id: id,
            ok: f.count == 0,
            problem_count: f.count,
            problems: f.listed,
        });
    }
}

/// Of one ranged read: chunks read, bytes read, chunks that failed.
type RangeOutcome = (u64, u64, Vec<(Hash, BadChunk)>);

/// Reads and re-hashes the chunks of `to_read`, pack by pack (each pack once, with coalesced
/// ranges); adds the ones that fail to `bad`.
fn read_back(
    c: &Container,
    index: &Locations,
    to_read: &Table<ByPlace>,
    bad: &mut HashMap<Hash, Bad>,
    report: &mut VerifyReport,
) -> Result<()> {
    let keys = c.keys()?;
    let mut reader = to_read.reader();
    let pack_id = |pos: u32| index.pack_id(pos);
    loop {
        let batch = Batch::take(&pack_id, READ_BATCH, || reader.next_record())?;
        if batch.ids.is_empty() {
            break;
        }
        let ranges = plan_ranges(&batch, &batch.ids, MAX_RANGE_RAW, |id| {
            Error::Internal(format!("{id} not indexed"))
        })?;
        let results: Vec<RangeOutcome> = c.on_io_pool(|| {
            ranges
                .par_iter()
                .map(|r| {
                    let key = pack_key(&r.pack);
                    match c.store().get_range(&key, r.start..r.end) {
                        Err(e) => {
                            let p = BadChunk::new(&key, &e);
                            (
                                0,
                                0,
                                r.chunks.iter().map(|(id, _)| (*id, p.clone())).collect(),
                            )
                        }
                        Ok(data) => {
                            let mut failed = Vec::new();
                            for (id, loc) in &r.chunks {
                                let at = u64::from(loc.offset);
                                let s = (at - r.start) as usize;
                                let stored = &data[s..s + loc.stored_len as usize];
                                let keys = keys.chunks();
                                let raw_len = loc.raw_len;
                                if let Err(e) = decode_chunk(
                                    &key,
                                    at,
                                    id,
                                    loc.compression,
                                    raw_len,
                                    stored,
                                    keys,
                                ) {
                                    failed.push((*id, BadChunk::new(&key, &e)));
                                }
                            }
                            (r.chunks.len() as u64, data.len() as u64, failed)
                        }
                    }
                })
                .collect()
        });
        for (chunks, bytes, failed) in results {
            report.chunks_read += chunks;
            report.bytes_read += bytes;
            bad.extend(failed.into_iter().map(|(id, b)| (id, Bad::Read(b))));
        }
    }
    Ok(())
}

/// Pack bytes hashed per ranged read when a pack's name is checked without the key.
const HASH_RANGE: u64 = 8 << 20;

/// Verifies what an encrypted container shows without its key (see the module docs).
fn run_verify_without_key(c: &Container, opts: &VerifyOptions) -> Result<VerifyReport> {
    use crate::format::sealed::check_envelope;
    let started = Instant::now();
    let before = c.store().requests();
    let mut report = VerifyReport {
        read_data: opts.read_data,
        without_key: true,
        ..Default::default()
    };
    let manifests: Vec<String> = match &opts.backup_id {
        Some(id) => {
            crate::ids::validate_id("backup id", id)?;
            vec![manifest_key(id)]
        }
        None => c
            .store()
            .list("backups/")?
            .into_iter()
            .map(|o| o.key)
            .collect(),
    };
    let checked: Vec<(String, Result<()>)> = c.on_io_pool(|| {
        manifests
            .par_iter()
            .map(|key| {
                let r = c.store().get(key).and_then(|b| check_envelope(key, &b));
                (key.clone(), r)
            })
            .collect()
    });
    let mut findings: BTreeMap<String, Findings> = BTreeMap::new();
    for (key, r) in checked {
        let id = key.trim_start_matches("backups/").to_string();
        match r {
            Err(Error::MissingObject { .. }) if opts.backup_id.is_none() => {} // deleted meanwhile
            Err(e) => findings.entry(id).or_default().add(Problem::of(&key, &e)),
            Ok(()) => {
                findings.entry(id).or_default();
            }
        }
    }
    // Without the key the manifests' contents are not read: how each was made is not known.
    add_verdicts(&mut report, findings, &BTreeMap::new());

    let segments = c.store().list("index/")?;
    let damaged: Vec<Problem> = c.on_io_pool(|| {
        segments
            .par_iter()
            .filter_map(|o| {
                let r = c.store().get(&o.key).and_then(|b| {
                    check_envelope(&o.key, &b)?;
                    if crate::format::keys::segment_key(&b) != o.key {
                        return Err(Error::corrupt(
                            &o.key,
                            0,
                            "segment does not hash to its name",
                        ));
                    }
                    Ok(())
                });
                r.err().map(|e| Problem::of(&o.key, &e))
            })
            .collect()
    });
    report.damaged_objects.extend(damaged);

    let mut packs: Vec<(Hash, u64)> = c.listed_packs()?.into_vec();
    packs.sort();
    let damaged: Vec<Problem> = c.on_io_pool(|| {
        packs
            .par_iter()
            .filter_map(|(id, size)| {
                let key = pack_key(id);
                let mut r = c.read_stored_table(&key, *size).map(|_| ());
                if r.is_ok() && opts.read_data {
                    r = hash_matches_name(c, &key, id, *size);
                }
                r.err().map(|e| Problem::of(&key, &e))
            })
            .collect()
    });
    report.damaged_objects.extend(damaged);
    if opts.read_data {
        report.bytes_read = packs.iter().map(|(_, s)| s).sum();
    }
    report.requests = c.store().requests().since(&before);
    report.elapsed_s = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Reads a pack in ranges and checks that its bytes hash to its name.
fn hash_matches_name(c: &Container, key: &str, id: &Hash, size: u64) -> Result<()> {
    let mut h = blake3::Hasher::new();
    let mut at = 0;
    while at < size {
        let end = size.min(at.saturating_add(HASH_RANGE));
        h.update(&c.store().get_range(key, at..end)?);
        at = end;
    }
    if Hash(*h.finalize().as_bytes()) != *id {
        return Err(Error::corrupt(key, 0, "pack does not hash to its name"));
    }
    Ok(())
}
