//! The backup pipeline: volume → chunks → packs → index → manifest.
//!
//! Three stages overlap, each on its own thread(s), connected by bounded channels so memory is
//! bounded by a few read buffers and a few packs whatever the volume size:
//!
//! ```text
//!  reader thread            main thread (rayon pool)                 writer thread
//!  read 4 MiB buffers  -->  BLAKE3 every chunk (parallel)        -->  PUT pack (data first)
//!  SEEK_HOLE, zero runs     dedup against index + this backup        every 64 packs and at the
//!  FastCDC cut points       zstd new chunks (parallel)                end: PUT index segment
//!                           append to pack; extent list
//! ```
//!
//! An incremental adds one more thread: it walks the parent's extent list and feeds the chunker
//! the parent's chunks as a guide (`chunker::Guide`), so unchanged chunks are hashed once and
//! not scanned for cut points.
//!
//! Then the manifest is committed with a create-only write: the backup exists from that moment,
//! and not a moment before. A failure anywhere leaves only unreferenced packs and index entries,
//! which the garbage collector reclaims after its grace period.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rayon::prelude::*;
use serde::Serialize;

use crate::buffers::BufferPool;
use crate::chunker::{Guide, GuideEntry, GuideFilter, Piece, Splitter};
use crate::container::{Container, LeaseGuard, manifest_key, now_rfc3339, now_unix, pack_key};
use crate::dedup::{DEFAULT_MEM_KEYS, DedupSet};
use crate::error::{Error, Result};
use crate::ids::{Hash, new_backup_id, validate_id};
use crate::index::Index;
use crate::manifest::{
    Extent, ExtentListWriter, MANIFEST_FORMAT, MANIFEST_VERSION, Manifest, ManifestStats, MetaRef,
};
use crate::pack::{ChunkKind, EncodedChunk, PackBuilder, PackEntry, encode_chunk};
use crate::source::{Input, OpenVolume, VolumeSource};
use crate::store::RequestCounts;

/// Index segments are written every this many packs (and at the end), so an interrupted backup
/// leaves indexed packs that a re-run can reuse.
const PACKS_PER_SEGMENT: usize = 64;
/// Extent-list packs are closed at this size (or the container's pack size if smaller).
const META_PACK_TARGET: u64 = 4 << 20;
/// Pack bytes being uploaded at once (bounds memory; see the writer threads).
const MAX_UPLOAD_BYTES: u64 = 96 << 20;
/// How long a lease is valid unless the caller says otherwise. It is renewed every eighth of
/// this, so it only runs out when its process is gone (or stalled): then the collector may
/// sweep after `LEASE_TTL` plus its clock-skew bound, and the stalled backup will not commit.
pub const LEASE_TTL: Duration = Duration::from_secs(15 * 60);

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
    pub elapsed_s: f64,
    pub requests: RequestCounts,
}

/// Progress callback: bytes of the volume processed so far.
pub type Progress<'a> = &'a (dyn Fn(u64) + Sync);

struct Written {
    objects: u64,
    bytes: u64,
}

enum WriterMsg {
    Pack(Hash, Bytes, Vec<PackEntry>),
}

/// Pack uploads shared by the writer threads.
struct WriterState {
    unindexed: Vec<(Hash, Vec<PackEntry>)>,
    done: Written,
}

/// Puts packs with `threads` concurrent uploads, then the index segments that describe them
/// (data first, index next: a segment is written only after all its packs are stored).
fn writer_loop(container: &Container, rx: Receiver<WriterMsg>, threads: usize) -> Result<Written> {
    let rx = Mutex::new(rx);
    let state = Mutex::new(WriterState {
        unindexed: Vec::new(),
        done: Written {
            objects: 0,
            bytes: 0,
        },
    });
    let failed = AtomicBool::new(false);
    let lock = |m| -> std::sync::MutexGuard<'_, WriterState> { unpoison(m) };
    let upload = || -> Result<()> {
        while !failed.load(Ordering::Relaxed) {
            let msg = unpoison(&rx).recv();
            let Ok(WriterMsg::Pack(id, bytes, entries)) = msg else {
                return Ok(());
            };
            let len = bytes.len() as u64;
            if let Err(e) = container.store().put(&pack_key(&id), bytes) {
                failed.store(true, Ordering::Relaxed);
                return Err(e);
            }
            let segment = {
                let mut st = lock(&state);
                st.done.objects += 1;
                st.done.bytes += len;
                st.unindexed.push((id, entries));
                (st.unindexed.len() >= PACKS_PER_SEGMENT).then(|| std::mem::take(&mut st.unindexed))
            };
            if let Some(seg) = segment {
                match container.write_index_segment(&seg) {
                    Ok((_, n)) => {
                        let mut st = lock(&state);
                        st.done.objects += 1;
                        st.done.bytes += n;
                    }
                    Err(e) => {
                        failed.store(true, Ordering::Relaxed);
                        return Err(e);
                    }
                }
            }
        }
        Ok(())
    };
    let results: Vec<Result<()>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads.max(1)).map(|_| s.spawn(upload)).collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::Internal("pack writer panicked".into())))
            })
            .collect()
    });
    results.into_iter().collect::<Result<()>>()?;
    let mut st = state.into_inner().unwrap_or_else(|p| p.into_inner());
    if !st.unindexed.is_empty() {
        let (_, n) = container.write_index_segment(&st.unindexed)?;
        st.done.objects += 1;
        st.done.bytes += n;
    }
    Ok(st.done)
}

/// Locks a mutex whose data stays consistent even if a holder panicked (every update is a
/// complete assignment), so a poisoned lock is safe to use.
fn unpoison<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Chunk dedup and packing state of one backup.
struct Packer<'a> {
    /// Chunks the container holds (in packs that exist and are not condemned) and chunks this
    /// backup has stored; the container's beyond a few MiB live in a temporary file.
    known: DedupSet,
    /// Condemned pack ids: never produce a pack with one of these names.
    avoid: &'a HashSet<Hash>,
    level: i32,
    /// Data chunks and extent-list chunks go to separate packs, so that a backup's extent list
    /// sits together and is read with a few requests (and the collector can walk manifests
    /// without touching data packs).
    data_pack: PackBuilder,
    meta_pack: PackBuilder,
    target: u64,
    tx: SyncSender<WriterMsg>,
    /// Buffers of uploaded packs, reused for the next ones. One spare: on a filesystem one
    /// pack fills while the previous one is written, so two buffers serve the whole backup
    /// and the kernel zeroes no new pages (~5 % of a full backup's CPU on the tenth session's
    /// machine, twelfth session).
    buffers: BufferPool,
    chunks_new: u64,
}

impl Packer<'_> {
    fn add(&mut self, chunks: Vec<EncodedChunk>) -> Result<()> {
        for c in chunks {
            let pack = if c.kind == ChunkKind::Data {
                self.chunks_new += 1;
                &mut self.data_pack
            } else {
                &mut self.meta_pack
            };
            if pack.is_empty() && c.kind == ChunkKind::Data {
                // Room for a full pack, so the builder never reallocates while it fills, in the
                // buffer of a pack already uploaded when there is one.
                let buf = self.buffers.take_empty(self.target as usize + (1 << 20));
                *pack = PackBuilder::with_buffer(buf);
            }
            pack.add(&c);
            // Extent-list packs are closed early: they fill slowly (~1 MiB per GiB of volume)
            // and would otherwise grow with the volume until the end of the backup.
            let target = match c.kind {
                ChunkKind::Data => self.target,
                ChunkKind::Meta => self.target.min(META_PACK_TARGET),
            };
            if pack.size() >= target {
                let full = std::mem::take(pack);
                self.send(full)?;
            }
        }
        Ok(())
    }

    /// Closes the open packs.
    fn flush(&mut self) -> Result<()> {
        let data = std::mem::take(&mut self.data_pack);
        self.send(data)?;
        let meta = std::mem::take(&mut self.meta_pack);
        self.send(meta)
    }

    fn send(&mut self, pack: PackBuilder) -> Result<()> {
        if pack.is_empty() {
            return Ok(());
        }
        let (buf, id, entries) = pack.finish_into_vec(self.avoid);
        let len = buf.len();
        let bytes = self.buffers.freeze(buf, len);
        // A closed channel means the writer stopped on an error; the caller collects it.
        self.tx
            .send(WriterMsg::Pack(id, bytes, entries))
            .map_err(|_| Error::Internal("pack writer stopped".into()))
    }

    /// Hashes, dedups and stores extent-list chunks, returning their references in order.
    fn add_meta(&mut self, chunks: Vec<Bytes>, refs: &mut Vec<MetaRef>) -> Result<()> {
        let ids: Vec<Hash> = chunks.par_iter().map(|c| Hash::of(c)).collect();
        let known = self.known.check_and_add(&ids)?;
        let mut new = Vec::new();
        for ((c, id), known) in chunks.iter().zip(&ids).zip(known) {
            refs.push(MetaRef {
                id: id.to_hex(),
                len: c.len() as u32,
            });
            if !known {
                new.push((c, *id));
            }
        }
        let level = self.level;
        let enc: Vec<EncodedChunk> = new
            .par_iter()
            .map(|(c, id)| encode_chunk(*id, ChunkKind::Meta, c, level))
            .collect();
        self.add(enc)
    }
}

/// Runs a backup of `source` into `container`. Returns the committed manifest, its bytes and a
/// report.
pub fn run_backup(
    container: &Container,
    source: VolumeSource,
    opts: &BackupOptions,
    progress: Option<Progress<'_>>,
) -> Result<(Manifest, Bytes, BackupReport)> {
    let started = Instant::now();
    let requests_before = container.store().requests();
    let backup_id = opts.backup_id.clone().unwrap_or_else(new_backup_id);
    validate_id("backup id", &backup_id)?;
    validate_id("volume id", &opts.volume_id)?;
    if container.backup_id_taken(&backup_id)? {
        return Err(Error::BackupExists {
            id: backup_id,
            container: container.url().into(),
        });
    }
    let mut parent_manifest = None;
    if let Some(parent) = &opts.parent_id {
        validate_id("parent id", parent)?;
        match container.read_manifest(parent) {
            Ok((m, _)) => parent_manifest = Some(m),
            Err(
                Error::BackupNotFound { id, container } | Error::BackupDeleted { id, container },
            ) => {
                return Err(Error::ParentNotFound { id, container });
            }
            Err(e) => return Err(e),
        }
    }
    let cfg = container.config().clone();
    // A parent cut with other parameters (impossible within one container) would guide to cuts
    // FastCDC would not make here.
    parent_manifest = parent_manifest.filter(|m| m.chunker == cfg.chunker);
    let level = opts.zstd_level.unwrap_or(cfg.zstd_level);
    if !crate::pack::valid_zstd_level(level) {
        return Err(Error::Config(format!(
            "zstd level {level} must be -7..=-1 or 1..=22"
        )));
    }
    let volume = OpenVolume::open(source)?;
    let volume_name = volume.name().to_string();
    // The lease comes before the index is read (collection protocol): a collector that
    // condemns packs after this point sees the lease and waits for this backup to end; one that
    // condemned packs before it is seen by the index load, which skips condemned packs.
    let lease = LeaseGuard::take(container, &backup_id, opts.lease_ttl.unwrap_or(LEASE_TTL))?;
    // An incremental is cut guided by its parent's chunks (`chunker::Guide`); their extent list
    // is located in the same pass over the index.
    let parent_metas: HashSet<Hash> = match parent_manifest
        .as_ref()
        .map(|m| m.meta_ids(&manifest_key(&m.backup_id)))
    {
        Some(Ok(ids)) => ids.into_iter().map(|(id, _)| id).collect(),
        Some(Err(e)) => {
            tracing::warn!(error = %e, "parent extent list unreadable: the volume is cut unguided");
            parent_manifest = None;
            HashSet::new()
        }
        None => HashSet::new(),
    };
    let (known, condemned, parent_index) = container.load_dedup_set(
        &parent_metas,
        opts.dedup_mem_keys.unwrap_or(DEFAULT_MEM_KEYS),
    )?;

    let bytes_read = AtomicU64::new(0);
    let result = std::thread::scope(|s| -> Result<_> {
        let (batch_tx, batch_rx) = sync_channel::<Result<Vec<Piece>>>(2);
        let (pack_tx, pack_rx) = sync_channel::<WriterMsg>(0);
        // Reading and chunking are separate threads: reading copies from the page cache or
        // waits on the device while the chunker (zero runs + FastCDC, sequential by nature)
        // works on the previous buffer.
        let (input_tx, input_rx) = sync_channel::<Result<Input>>(2);
        let reader = s.spawn(|| {
            let tx = input_tx;
            let res = volume.read_all(&bytes_read, |input| tx.send(Ok(input)).is_ok());
            if let Err(e) = res {
                let _ = tx.send(Err(e));
            }
        });
        let guide = parent_manifest.as_ref().map(|parent| {
            let (tx, rx) = sync_channel(2);
            let parent_index = &parent_index;
            s.spawn(move || feed_guide(container, parent_index, parent, tx));
            Guide::new(rx)
        });
        // Returns how many chunks the guide gave.
        let chunker = s.spawn(|| -> u64 {
            let mut splitter = match guide {
                Some(g) => Splitter::with_guide(cfg.chunker, g),
                None => Splitter::new(cfg.chunker),
            };
            let tx = batch_tx;
            for input in input_rx {
                let mut out = Vec::new();
                match input {
                    Ok(Input::Data(b)) => splitter.push_data(b, &mut out),
                    Ok(Input::Hole(n)) => splitter.push_hole(n, &mut out),
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return 0;
                    }
                }
                if !out.is_empty() && tx.send(Ok(out)).is_err() {
                    return 0;
                }
            }
            let mut out = Vec::new();
            splitter.finish(&mut out);
            let _ = tx.send(Ok(out));
            splitter.followed()
        });
        // Uploads in flight hold whole packs: cap them at ~96 MiB whatever the store's request
        // concurrency, so peak memory stays bounded (3 x 32 MiB packs by default; one on a
        // filesystem).
        let threads = container
            .store()
            .upload_concurrency()
            .min((MAX_UPLOAD_BYTES / cfg.pack_target.max(1)) as usize)
            .max(1);
        let writer = s.spawn(move || writer_loop(container, pack_rx, threads));

        let mut packer = Packer {
            known,
            avoid: &condemned,
            level,
            data_pack: PackBuilder::new(),
            meta_pack: PackBuilder::new(),
            target: cfg.pack_target,
            tx: pack_tx,
            buffers: BufferPool::new(1),
            chunks_new: 0,
        };
        let main = (|| -> Result<_> {
            let mut extents = ExtentListWriter::new();
            let mut meta_refs = Vec::new();
            let mut size = 0u64;
            let mut zero_bytes = 0u64;
            let mut chunks_total = 0u64;
            // The previous batch's compressed chunks, appended to packs (a serial copy) while
            // the pool hashes this batch, rather than leaving a core idle.
            let mut pending: Vec<EncodedChunk> = Vec::new();
            for batch in batch_rx {
                let pieces = batch?;
                let done = std::mem::take(&mut pending);
                let (ids, added) = rayon::join(
                    || -> Vec<Option<Hash>> {
                        pieces
                            .par_iter()
                            .map(|p| match p {
                                Piece::Data(b) => Some(Hash::of(b)),
                                Piece::Hashed(_, id) => Some(*id),
                                Piece::Zero(_) => None,
                            })
                            .collect()
                    },
                    || packer.add(done),
                );
                added?;
                let data_ids: Vec<Hash> = ids.iter().flatten().copied().collect();
                let mut known = packer.known.check_and_add(&data_ids)?.into_iter();
                let mut new: Vec<(&Bytes, Hash)> = Vec::new();
                for (p, id) in pieces.iter().zip(&ids) {
                    size += p.len();
                    match (p, id) {
                        (Piece::Data(b) | Piece::Hashed(b, _), Some(id)) => {
                            chunks_total += 1;
                            extents.push_data(b.len() as u32, id);
                            if known.next() != Some(true) {
                                new.push((b, *id));
                            }
                        }
                        _ => {
                            zero_bytes += p.len();
                            extents.push_zero(p.len());
                        }
                    }
                }
                pending = new
                    .par_iter()
                    .map(|(b, id)| encode_chunk(*id, ChunkKind::Data, b, level))
                    .collect();
                packer.add_meta(extents.take_chunks(), &mut meta_refs)?;
                if let Some(p) = progress {
                    p(size);
                }
            }
            packer.add(pending)?;
            packer.add_meta(extents.finish(), &mut meta_refs)?;
            packer.flush()?;
            Ok((extents, meta_refs, size, zero_bytes, chunks_total))
        })();
        let chunks_new = packer.chunks_new;
        drop(packer); // closes the writer's channel
        let written = writer
            .join()
            .map_err(|_| Error::Internal("pack writer panicked".into()))?;
        reader
            .join()
            .map_err(|_| Error::Internal("volume reader panicked".into()))?;
        let chunks_guided = chunker
            .join()
            .map_err(|_| Error::Internal("chunker panicked".into()))?;
        // The writer's error is the root cause when the main loop only saw a closed channel.
        let written = written?;
        let (extents, meta_refs, size, zero_bytes, chunks_total) = main?;
        let counts = ChunkCounts {
            total: chunks_total,
            new: chunks_new,
            guided: chunks_guided,
        };
        Ok((extents, meta_refs, size, zero_bytes, counts, written))
    });
    let (extents, meta_refs, size, zero_bytes, counts, written) = result?;
    let ChunkCounts {
        total: chunks_total,
        new: chunks_new,
        guided: chunks_guided,
    } = counts;
    if let Some(expected) = opts.expected_size
        && expected != size
    {
        return Err(Error::VolumeTooShort {
            volume: volume_name,
            expected,
            actual: size,
        });
    }

    let mut manifest = Manifest {
        format: MANIFEST_FORMAT.into(),
        version: MANIFEST_VERSION,
        backup_id: backup_id.clone(),
        volume_id: opts.volume_id.clone(),
        parent_id: opts.parent_id.clone(),
        created_at: now_rfc3339(),
        created_unix: now_unix(),
        data_timestamp: opts.data_timestamp.clone(),
        size,
        chunker: cfg.chunker,
        extents: meta_refs,
        extents_len: extents.stream_len,
        extent_count: extents.count,
        stats: ManifestStats {
            chunks_total,
            chunks_new,
            bytes_new: 0,
            zero_bytes,
            object_count: written.objects + 1,
        },
        volume_metadata: opts.volume_metadata.clone(),
    };
    manifest.stats.bytes_new = written.bytes;
    lease.check_valid()?;
    let bytes = container.commit_manifest(&manifest)?;
    drop(lease); // after the commit: the collector then sees the manifest

    let report = BackupReport {
        backup_id,
        volume_id: manifest.volume_id.clone(),
        parent_id: manifest.parent_id.clone(),
        container: container.url().into(),
        manifest_key: manifest_key(&manifest.backup_id),
        size,
        bytes_read: bytes_read.load(Ordering::Relaxed),
        bytes_new: written.bytes + bytes.len() as u64,
        chunks_total,
        chunks_new,
        chunks_guided,
        zero_bytes,
        object_count: manifest.stats.object_count,
        elapsed_s: started.elapsed().as_secs_f64(),
        requests: container.store().requests().since(&requests_before),
    };
    Ok((manifest, bytes, report))
}

struct ChunkCounts {
    total: u64,
    new: u64,
    guided: u64,
}

/// Guide entries sent to the chunker at a time.
const GUIDE_BATCH: usize = 4096;

/// Walks the parent's extent list and sends the chunker the parent's chunks that ended at a
/// FastCDC cut: a data extent followed by another data extent (see `chunker::Guide`). The guide
/// only saves work, so a parent whose extent list cannot be read just leaves the rest of the
/// volume unguided (with a warning); the backup does not depend on it.
fn feed_guide(
    container: &Container,
    index: &Index,
    parent: &Manifest,
    tx: SyncSender<Vec<GuideEntry>>,
) {
    let mut batch = Vec::with_capacity(GUIDE_BATCH);
    let mut filter = GuideFilter::default();
    let mut gone = false;
    let res = container.walk_extents(index, parent, |offset, e| {
        let data = match e {
            Extent::Data { len, id } => Some((*len, *id)),
            Extent::Zero { .. } => None,
        };
        if let Some(g) = filter.next(offset, data) {
            batch.push(g);
            if batch.len() == GUIDE_BATCH {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(GUIDE_BATCH));
                if tx.send(full).is_err() {
                    gone = true;
                    return Err(Error::Internal("chunker gone".into()));
                }
            }
        }
        Ok(())
    });
    match res {
        Ok(()) => {
            let _ = tx.send(batch);
        }
        Err(_) if gone => {} // the chunker stopped first
        Err(e) => tracing::warn!(
            parent = %parent.backup_id,
            error = %e,
            "parent extent list unreadable: the rest of the volume is cut unguided"
        ),
    }
}
