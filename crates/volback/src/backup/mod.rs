//! The backup pipeline: volume → chunks → packs → index → manifest.
//!
//! Three stages overlap, each on its own thread(s), connected by bounded channels so memory is
//! bounded by a few read buffers and a few packs whatever the volume size:
//!
//! ```text
//!  reader thread            main thread (rayon pool)                 writer thread
//!  read 4 MiB buffers  -->  BLAKE3 every chunk (parallel)        -->  PUT pack (data first)
//!  SEEK_HOLE, zero runs     dedup against the known chunks           every 64 packs and at the
//!  FastCDC cut points       + this backup's                          end: PUT index segment
//!                           zstd new chunks (parallel)                (an incremental: and its
//!                           append to pack; extent list               resume hint)
//! ```
//!
//! The known chunks are the container's for a backup of a new volume (`dedup.rs`: the whole
//! index is read), and the parent's for an incremental (`parent_scope.rs`: the parent's extent
//! list, read through its manifest's location hints; nothing else is listed or read).
//!
//! An incremental adds one more thread: it walks the parent's extent list and feeds the chunker
//! the parent's chunks as a guide ([`crate::chunker::Guide`]), so unchanged chunks are hashed once and
//! not scanned for cut points.
//!
//! Then the manifest is committed with a create-only write: the backup exists from that moment,
//! and not a moment before. A failure anywhere leaves only unreferenced packs and index entries,
//! which the garbage collector reclaims after its grace period.

pub mod buffers;
pub mod dedup;
mod mapped;
mod packer;
mod parent_guide;
mod parent_scope;
mod pipeline;
mod read_mode;
mod resume;
pub mod retain;
pub mod source;
#[cfg(test)]
pub(crate) mod testing;
mod unchanged;
mod writer;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;

use crate::change_map::MapSource;
use crate::clock::{now_rfc3339, now_unix};
use crate::container::{Container, LEASE_TTL, LeaseGuard, manifest_key};
use crate::error::{Error, Result};
use crate::format::manifest::{
    ChangeMapUse, MANIFEST_FORMAT, MANIFEST_VERSION, Manifest, ManifestStats, READ_CHANGE_MAP,
};
use crate::ids::{Hash, new_backup_id, validate_id};
use crate::store::RequestCounts;
use dedup::DEFAULT_MEM_KEYS;
use dedup::DedupSet;
use pipeline::{Inputs, MapInput, Pipelined};
use source::{OpenVolume, VolumeSource};

/// What the caller asks of a backup.
#[derive(Debug, Clone, Default)]
pub struct BackupOptions {
    /// Id for the new backup; a UUID is generated if None.
    pub backup_id: Option<String>,
    /// The volume this is a backup of.
    pub volume_id: String,
    /// Makes this an incremental of that backup (which must exist).
    pub parent_id: Option<String>,
    /// Caller's point-in-time label (Cinder's data_timestamp).
    pub data_timestamp: Option<String>,
    /// Lease time to live (default [`LEASE_TTL`]).
    pub lease_ttl: Option<Duration>,
    /// Opaque volume metadata stored with the backup.
    pub volume_metadata: Option<serde_json::Value>,
    /// Fail unless the volume has exactly this many bytes.
    pub expected_size: Option<u64>,
    /// zstd level for this backup (default: the container's).
    pub zstd_level: Option<i32>,
    /// The container's chunks kept in memory for deduplication before the rest go to a
    /// temporary file (default [`DEFAULT_MEM_KEYS`]; tests set it low to exercise the file).
    pub dedup_mem_keys: Option<usize>,
    /// Set to stop the backup: it is checked between batches of the volume (every few MiB),
    /// and a cancelled backup fails with [`Error::Cancelled`], committing nothing.
    pub cancel: Option<Arc<AtomicBool>>,
    /// `key=value` labels stored with the backup (see
    /// [`crate::format::manifest::validate_labels`]).
    pub labels: std::collections::BTreeMap<String, String>,
    /// Read the volume even when it is a regular file whose stamp matches the parent's (by
    /// default such a volume is not read: see `backup/unchanged.rs`).
    pub full_read: bool,
    /// The backup's creation time (Unix seconds, RFC 3339) instead of now: a copy keeps its
    /// source's, so that retention rules see the same history in both containers.
    pub created: Option<(u64, String)>,
    /// What changed since the parent's snapshot, as the storage knows it: only those ranges
    /// (and a few chunks around each) are read (`change_map`, `backup/mapped.rs`).
    pub changes: Option<MapSource>,
    /// Fraction of the chunks a change map leaves unread that are read back and checked
    /// against the parent's ids (0 to 1; default 0). A mismatch fails the backup with
    /// [`Error::ChangeMapMissed`], or falls back to a full read with `map_fallback`.
    pub map_sample: Option<f64>,
    /// On a sampled mismatch, read the whole volume instead of failing.
    pub map_fallback: bool,
    /// Read the whole volume when this many backups in a row were made without doing so
    /// (by a change map or an unchanged source).
    pub full_read_every: Option<u32>,
    /// Read the whole volume when the last backup that did is this old.
    pub full_read_after: Option<Duration>,
}

impl BackupOptions {
    /// When the backup was created (RFC 3339): [`BackupOptions::created`], else now.
    pub(crate) fn created_at(&self) -> String {
        self.created
            .as_ref()
            .map_or_else(now_rfc3339, |(_, at)| at.clone())
    }

    /// When the backup was created (Unix seconds): [`BackupOptions::created`], else now.
    pub(crate) fn created_unix(&self) -> u64 {
        self.created
            .as_ref()
            .map_or_else(now_unix, |(unix, _)| *unix)
    }
}

/// What a backup did (the CLI's `backup --json`).
#[derive(Debug, Clone, Serialize)]
pub struct BackupReport {
    pub backup_id: String,
    pub volume_id: String,
    pub parent_id: Option<String>,
    pub container: String,
    pub manifest_key: String,
    /// Volume size in bytes.
    pub size: u64,
    /// Bytes read from the volume (holes are not read).
    pub bytes_read: u64,
    /// Bytes this backup wrote to the container.
    pub bytes_new: u64,
    pub chunks_total: u64,
    pub chunks_new: u64,
    /// Chunks an incremental took from its parent's guide, without scanning for their cut
    /// (`chunker::Guide`): how much of the volume was recognised in place or followed. It
    /// counts work saved, not what was stored: two runs over the same volume make the same
    /// chunks, but this count can differ slightly between them (by ~0.5 % on the harness's
    /// next-day image, with a cold or a warm page cache).
    pub chunks_guided: u64,
    pub zero_bytes: u64,
    /// Objects this backup wrote (packs, index segments, the manifest).
    pub object_count: u64,
    /// Objects put under Object Lock retention for this backup (its manifest, the packs it
    /// reads, the config and key slots); 0 in a container without Object Lock.
    pub objects_retained: u64,
    /// Until when they are retained (RFC 3339), in a container with Object Lock.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retained_until: Option<String>,
    pub elapsed_s: f64,
    pub requests: RequestCounts,
}

/// Progress callback: bytes of the volume processed so far.
pub type Progress<'a> = &'a (dyn Fn(u64) + Sync);

/// Runs a backup of `source` into `container`. Returns the committed manifest, its bytes and a
/// report.
///
/// The steps, in the order the crash-safety and collection rules need them: check the request;
/// take a lease, then read the index (what to deduplicate against); store packs and index
/// segments; commit the manifest, create-only, while the lease is still valid; drop the lease.
pub fn run_backup(
    container: &Container,
    source: VolumeSource,
    opts: &BackupOptions,
    progress: Option<Progress<'_>>,
) -> Result<(Manifest, Bytes, BackupReport)> {
    let started = Instant::now();
    let requests_before = container.store().requests();
    let Request {
        backup_id,
        mut parent,
        level,
    } = check_request(container, opts)?;
    let volume = OpenVolume::open(source)?;
    let volume_name = volume.name().to_string();
    let full_read = opts.full_read
        || parent
            .as_ref()
            .is_some_and(|p| read_mode::full_read_due(p, opts, opts.created_unix()));
    let mapped = read_mode::load_map(opts, &backup_id, parent.as_ref(), &volume, full_read)?;

    // The lease comes before the index is read (collection protocol): a collector that
    // condemns packs after this point sees the lease and waits for this backup to end; one that
    // condemned packs before it is seen by the index load, which skips condemned packs (or, in
    // an incremental, by the records' exposed chunks, which are stored again).
    let lease = LeaseGuard::take(container, &backup_id, opts.lease_ttl.unwrap_or(LEASE_TTL))?;
    let mut done = Done {
        container,
        opts,
        volume_name,
        started,
        requests_before,
        resume_key: None,
    };
    let shortcut = mapped
        .as_ref()
        .is_none_or(|m| m.map.is_empty() && m.sample_rate == 0.0)
        && unchanged::stamp_matches(parent.as_ref(), &volume, full_read);
    // An incremental is cut guided by its parent's chunks ([`crate::chunker::Guide`]).
    let parent_metas = parent_extent_list(&mut parent);
    let mem_keys = opts.dedup_mem_keys.unwrap_or(DEFAULT_MEM_KEYS);
    // What the incremental may rely on, read after the lease (`backup/parent_scope.rs`): the
    // parent still exists, and the pending condemnation records.
    let mut scope = None;
    if let Some(p) = &parent
        && container
            .store()
            .head(&manifest_key(&p.backup_id))?
            .is_some()
        && let Some(exposed) = parent_scope::Exposed::load(container)?
    {
        if shortcut && exposed.is_empty() {
            return done.reuse_parent(backup_id, p, lease, progress);
        }
        scope = parent_scope::load(container, p, &opts.volume_id, exposed, mem_keys)?;
        if shortcut && scope.as_ref().is_some_and(|s| s.exposed == 0) {
            return done.reuse_parent(backup_id, p, lease, progress);
        }
    }
    if mapped.is_some() && parent.is_none() {
        return Err(Error::Config(
            "change map: the parent's extent list cannot be read".into(),
        ));
    }
    let stamp = volume.stamp;
    // An incremental keeps a resume hint while it writes; the one it found, or wrote, is
    // deleted once it commits.
    let resume_key = resume::hint_key(container, &opts.volume_id)?;
    let resume_log = parent
        .as_ref()
        .map(|_| resume::ResumeLog::new(resume_key.clone(), &backup_id));
    let resumed = scope.as_ref().is_some_and(|s| s.resumed);
    let (known, condemned, parent_index) = match scope {
        Some(s) => (s.known, s.condemned, s.index),
        // A full backup, or an incremental that cannot rely on its parent alone: the whole
        // index, which also locates the parent's extent list.
        None => dedup::load(container, &parent_metas, mem_keys)?,
    };

    let bytes_read = AtomicU64::new(0);
    let run = |volume: OpenVolume, known: DedupSet, map: Option<MapInput<'_>>| {
        pipeline::run(
            volume,
            Inputs {
                container,
                parent: parent.as_ref().map(|m| (m, &parent_index)),
                known,
                condemned: &condemned,
                level,
                progress,
                cancel: opts.cancel.as_deref(),
                bytes_read: &bytes_read,
                mapped: map,
                resume: resume_log.as_ref(),
            },
        )
    };
    let mut map_used = None;
    let mut stored = match &mapped {
        None => run(volume, known, None)?,
        Some(m) => {
            let first = {
                let file = volume
                    .seekable()
                    .ok_or_else(|| Error::Internal("change map on a stream".into()))?;
                let input = MapInput {
                    plan: &m.plan,
                    file,
                    name: volume.name(),
                    size: volume.size.unwrap_or(0),
                };
                run(volume.reopen()?, known, Some(input))
            };
            match first {
                Err(Error::ChangeMapMissed {
                    offset, len, chunk, ..
                }) if opts.map_fallback => {
                    tracing::warn!(
                        offset,
                        len,
                        chunk,
                        "the change map missed a change: reading the whole volume"
                    );
                    let (known, _, _) = dedup::load(container, &HashSet::new(), mem_keys)?;
                    bytes_read.store(0, Ordering::Relaxed);
                    run(volume, known, None)?
                }
                other => {
                    let stored = other?;
                    map_used = Some(m);
                    stored
                }
            }
        }
    };
    let mut manifest = new_manifest(backup_id, opts, container.config().chunker, &mut stored);
    manifest.source = stamp;
    if let (Some(m), Some(stats), Some(parent)) = (map_used, stored.mapped, parent.as_ref()) {
        manifest.read = Some(READ_CHANGE_MAP.into());
        manifest.change_map = Some(ChangeMapUse {
            kind: m.map.kind.name().into(),
            ranges: m.map.changes.len() as u64,
            changed_bytes: m.map.changed_bytes(),
            bytes_read: bytes_read.load(Ordering::Relaxed),
            reused_chunks: stats.reused,
            sample_rate: m.sample_rate,
            sampled_chunks: stats.sampled,
        });
        manifest.since_full_read = Some(read_mode::one_more_without_full_read(parent));
    }
    if resumed || resume_log.as_ref().is_some_and(|l| l.written()) {
        done.resume_key = Some(resume_key);
    }
    done.commit(
        manifest,
        lease,
        bytes_read.load(Ordering::Relaxed),
        stored.written.bytes,
        stored.counts.guided,
    )
}

/// What a backup's last step needs: where it commits, what it was asked, and what its report
/// counts from.
struct Done<'a> {
    container: &'a Container,
    opts: &'a BackupOptions,
    volume_name: String,
    started: Instant,
    requests_before: RequestCounts,
    /// The volume's resume hint, deleted after the commit (`backup/resume.rs`).
    resume_key: Option<String>,
}

impl Done<'_> {
    /// Commits a backup that reuses `parent`'s extents without reading the volume
    /// (`backup/unchanged.rs`).
    fn reuse_parent(
        self,
        backup_id: String,
        parent: &Manifest,
        lease: LeaseGuard,
        progress: Option<Progress<'_>>,
    ) -> Result<(Manifest, Bytes, BackupReport)> {
        let manifest = unchanged::manifest_from_parent(backup_id, self.opts, parent);
        if let Some(p) = progress {
            p(manifest.size);
        }
        let guided = manifest.stats.chunks_total;
        self.commit(manifest, lease, 0, 0, guided)
    }

    /// Checks the volume's size, commits the manifest while the lease is valid, drops the lease
    /// (after the commit: the collector then sees the manifest) and reports. `bytes_read`,
    /// `bytes_written` (packs and index segments) and `guided` are what the backup did besides.
    fn commit(
        self,
        manifest: Manifest,
        lease: LeaseGuard,
        bytes_read: u64,
        bytes_written: u64,
        guided: u64,
    ) -> Result<(Manifest, Bytes, BackupReport)> {
        if let Some(expected) = self.opts.expected_size
            && expected != manifest.size
        {
            return Err(Error::VolumeTooShort {
                volume: self.volume_name,
                expected,
                actual: manifest.size,
            });
        }
        // Object Lock: what the backup reads is retained before the manifest shows it, and the
        // manifest right after (container/retention.rs).
        let lock = self.container.object_lock();
        let retained_until = lock.map(Container::retention_date);
        let mut objects_retained = 0;
        if let (Some(lock), Some(until)) = (lock, retained_until) {
            objects_retained = retain::retain_backup(self.container, &manifest, lock, until)?;
        }
        lease.check_valid()?;
        let bytes = self.container.commit_manifest(&manifest)?;
        if let (Some(lock), Some(until)) = (lock, retained_until) {
            self.container.retain_manifest(&manifest, lock, until)?;
            objects_retained += 1;
        }
        drop(lease);
        if let Some(key) = &self.resume_key
            && let Err(e) = self.container.store().delete(key)
        {
            // A stale hint costs the next incremental a few reads, nothing more.
            tracing::info!(key, error = %e, "resume hint left behind");
        }
        let report = BackupReport {
            backup_id: manifest.backup_id.clone(),
            volume_id: manifest.volume_id.clone(),
            parent_id: manifest.parent_id.clone(),
            container: self.container.url().into(),
            manifest_key: manifest_key(&manifest.backup_id),
            size: manifest.size,
            bytes_read,
            bytes_new: bytes_written + bytes.len() as u64,
            chunks_total: manifest.stats.chunks_total,
            chunks_new: manifest.stats.chunks_new,
            chunks_guided: guided,
            zero_bytes: manifest.stats.zero_bytes,
            object_count: manifest.stats.object_count,
            objects_retained,
            retained_until: retained_until.map(crate::store::s3_lock::format_date),
            elapsed_s: self.started.elapsed().as_secs_f64(),
            requests: self
                .container
                .store()
                .requests()
                .since(&self.requests_before),
        };
        Ok((manifest, bytes, report))
    }
}

/// A backup request that passed its checks.
struct Request {
    backup_id: String,
    /// The parent's manifest (an incremental), if it was cut with this container's chunker.
    parent: Option<Manifest>,
    level: i32,
}

/// Checks the ids (the new one must be free), reads the parent, and checks the zstd level.
fn check_request(container: &Container, opts: &BackupOptions) -> Result<Request> {
    let backup_id = opts.backup_id.clone().unwrap_or_else(new_backup_id);
    validate_id("backup id", &backup_id)?;
    validate_id("volume id", &opts.volume_id)?;
    crate::format::manifest::validate_labels(&opts.labels)?;
    if container.backup_id_taken(&backup_id)? {
        return Err(Error::BackupExists {
            id: backup_id,
            container: container.url().into(),
        });
    }
    let mut parent = None;
    if let Some(parent_id) = &opts.parent_id {
        validate_id("parent id", parent_id)?;
        match container.read_manifest(parent_id) {
            Ok((m, _)) => parent = Some(m),
            Err(
                Error::BackupNotFound { id, container } | Error::BackupDeleted { id, container },
            ) => {
                return Err(Error::ParentNotFound { id, container });
            }
            Err(e) => return Err(e),
        }
    }
    let cfg = container.config();
    // A parent cut with other parameters (impossible within one container) would guide to cuts
    // FastCDC would not make here.
    let parent = parent.filter(|m| m.chunker == cfg.chunker);
    let level = opts.zstd_level.unwrap_or(cfg.zstd_level);
    if !crate::format::chunk::valid_zstd_level(level) {
        return Err(Error::Config(format!(
            "zstd level {level} must be -7..=-1 or 1..=22"
        )));
    }
    Ok(Request {
        backup_id,
        parent,
        level,
    })
}

/// The parent's extent-list chunks, to be located in the index scan. A parent whose manifest
/// names them badly is dropped: the volume is then cut unguided (the guide only saves work).
fn parent_extent_list(parent: &mut Option<Manifest>) -> HashSet<Hash> {
    match parent
        .as_ref()
        .map(|m| m.meta_ids(&manifest_key(&m.backup_id)))
    {
        Some(Ok(ids)) => ids.into_iter().map(|(id, _)| id).collect(),
        Some(Err(e)) => {
            tracing::warn!(error = %e, "parent extent list unreadable: the volume is cut unguided");
            *parent = None;
            HashSet::new()
        }
        None => HashSet::new(),
    }
}

/// The manifest of a backup whose data the pipeline stored (its extent-list references are
/// moved into it).
fn new_manifest(
    backup_id: String,
    opts: &BackupOptions,
    chunker: crate::chunker::ChunkerParams,
    stored: &mut Pipelined,
) -> Manifest {
    Manifest {
        format: MANIFEST_FORMAT.into(),
        version: MANIFEST_VERSION,
        backup_id,
        volume_id: opts.volume_id.clone(),
        parent_id: opts.parent_id.clone(),
        created_at: opts.created_at(),
        created_unix: opts.created_unix(),
        data_timestamp: opts.data_timestamp.clone(),
        size: stored.size,
        chunker,
        extents: std::mem::take(&mut stored.meta_refs),
        extents_len: stored.extents.stream_len,
        extent_count: stored.extents.count,
        stats: ManifestStats {
            chunks_total: stored.counts.total,
            chunks_new: stored.counts.new,
            bytes_new: stored.written.bytes,
            zero_bytes: stored.zero_bytes,
            object_count: stored.written.objects + 1,
        },
        volume_metadata: opts.volume_metadata.clone(),
        labels: opts.labels.clone(),
        source: None,
        read: None,
        change_map: None,
        since_full_read: None,
    }
}
