//! The restore pipeline: manifest → extents → packs → target.
//!
//! A backup restores from its own manifest alone (never by replaying a parent chain). The
//! extent list is walked in windows of a few thousand chunks; within a window, chunks are grouped
//! by pack and neighbouring chunks of one pack are fetched with one ranged read, ranges are
//! fetched, decompressed and BLAKE3-verified in parallel, largest first (a chunk that occurs
//! several times in the window once), and each chunk is written with positional writes at every
//! offset where it occurs, in whatever order ranges complete. One thread writes at a time: a
//! thread that finds the target busy keeps decoding and writes its runs later, rather than
//! spinning on the file's lock in the kernel. A durable restore writes the whole blocks of each
//! run with direct I/O ([`crate::direct`]) and only the partial blocks at its ends through the
//! page cache; writeback of those is started every 32 MiB on a thread of its own, so the final
//! fsync has little left to wait for.
//! Chunk locations come from a [`LocationTable`], which keeps them in a sorted scratch
//! file once the container is large, so memory is bounded by the window and the ranges in
//! flight, not by the volume or the container. Each restore thread reuses its buffers (ranged
//! read, assembled run, repeated chunks): no fresh pages to fault in per range.
//!
//! Before anything is written, every chunk the backup needs is checked to be in the index, as
//! long as its extent, and every pack it needs to exist, so a backup that lost objects is
//! refused up front. A new file
//! target is written under a temporary name and renamed into place only when complete and
//! fsync'd: a failed restore never leaves a half-written file under the target's name.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, TryLockError};
use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;

use crate::container::LeaseGuard;
use crate::container::{Container, FetchRange, pack_key, plan_ranges, with_volume_offset};
use crate::direct;
use crate::error::{Error, Result};
use crate::ids::Hash;
use crate::index::Locate;
use crate::locations::{DEFAULT_MEM_ENTRIES, LocationTable, trim_heap};
use crate::manifest::{Extent, Manifest};
use crate::pack::decode_chunk_into;
use crate::pipeline::LEASE_TTL;
use crate::store::RequestCounts;

/// Chunks per restore window.
const WINDOW_CHUNKS: usize = 8192;
/// Writeback of a durable restore's target is started each time this many more bytes have
/// been written (see `run_restore_with`).
const WRITEBACK_EVERY: u64 = 32 << 20;

/// How the target is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetMode {
    /// A fresh volume: zero extents are left as holes (a new file is sparse). A regular file
    /// must not exist yet; a block device is assumed to read as zeros.
    New,
    /// Overwrite an existing volume: zero extents are written as zeros (punched holes on files).
    Existing,
}

/// What a restore did (the CLI's `restore --json`).
#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    pub backup_id: String,
    pub size: u64,
    /// Bytes of data written to the target.
    pub bytes_written: u64,
    /// Volume bytes in zero extents (holes or zeros on the target).
    pub zero_bytes: u64,
    pub elapsed_s: f64,
    pub requests: RequestCounts,
    /// The volume metadata stored with the backup.
    #[serde(skip)]
    pub volume_metadata: Option<serde_json::Value>,
}

struct Target {
    file: File,
    /// Where the file is being written (a temporary name for new files).
    path: PathBuf,
    /// Final name if `path` is temporary.
    rename_to: Option<PathBuf>,
    is_file: bool,
    write_zeros: bool,
    /// Held by whoever is writing data: one writer at a time (see [`Target::try_writer`]).
    writing: Mutex<()>,
    /// For a durable restore, the target opened again for direct I/O (see [`Target::direct`]).
    direct: Option<DirectTarget>,
}

/// What a durable restore writes whole blocks through.
struct DirectTarget {
    file: File,
    /// The aligned buffer the blocks are copied into (only the writer uses it).
    buf: Mutex<direct::Aligned>,
    /// Cleared when the target refuses a direct write; later writes go through the page cache.
    ok: AtomicBool,
}

/// Runs shorter than this are written through the page cache even in a durable restore.
const DIRECT_MIN: usize = 64 << 10;

impl Target {
    fn new(
        file: File,
        path: PathBuf,
        rename_to: Option<PathBuf>,
        is_file: bool,
        write_zeros: bool,
    ) -> Target {
        Target {
            file,
            path,
            rename_to,
            is_file,
            write_zeros,
            writing: Mutex::new(()),
            direct: None,
        }
    }

    fn open(path: &Path, mode: TargetMode, size: u64) -> Result<Target> {
        let meta = std::fs::metadata(path);
        let is_block = matches!(&meta, Ok(m) if m.file_type().is_block_device());
        if is_block {
            let file = OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(|e| Error::io("open restore target", path, e))?;
            let actual = {
                use std::io::{Seek, SeekFrom};
                let mut f = &file;
                f.seek(SeekFrom::End(0))
                    .map_err(|e| Error::io("size restore target", path, e))?
            };
            if actual < size {
                return Err(Error::TargetTooSmall {
                    path: path.into(),
                    needed: size,
                    actual,
                });
            }
            return Ok(Target::new(
                file,
                path.into(),
                None,
                false,
                mode == TargetMode::Existing,
            ));
        }
        if let Ok(m) = &meta
            && m.is_dir()
        {
            return Err(Error::io(
                "open restore target",
                path,
                std::io::Error::other("is a directory"),
            ));
        }
        match mode {
            TargetMode::New => {
                if meta.is_ok() {
                    return Err(Error::TargetExists { path: path.into() });
                }
                let name = path.file_name().ok_or_else(|| {
                    Error::io(
                        "open restore target",
                        path,
                        std::io::Error::other("no file name"),
                    )
                })?;
                let tmp = path.with_file_name(format!(
                    ".{}.volback-partial-{}",
                    name.to_string_lossy(),
                    uuid::Uuid::new_v4().simple()
                ));
                let file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&tmp)
                    .map_err(|e| Error::io("create restore target", path, e))?;
                file.set_len(size)
                    .map_err(|e| Error::io("size restore target", path, e))?;
                Ok(Target::new(file, tmp, Some(path.into()), true, false))
            }
            TargetMode::Existing => {
                let file = OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(path)
                    .map_err(|e| Error::io("open restore target", path, e))?;
                file.set_len(size)
                    .map_err(|e| Error::io("size restore target", path, e))?;
                Ok(Target::new(file, path.into(), None, true, true))
            }
        }
    }

    fn write(&self, data: &[u8], offset: u64) -> Result<()> {
        self.writer().write(data, offset)
    }

    /// Writes the whole blocks of later writes with direct I/O, for a durable restore: their
    /// bytes go to the disk from an aligned buffer instead of being copied into new page-cache
    /// pages and written back before the final fsync (see `crate::direct`). The partial blocks
    /// at a run's ends still go through the page cache: neighbouring runs share them, and
    /// direct I/O writes whole blocks only. Where the target refuses direct I/O, nothing
    /// changes.
    fn direct(&mut self) {
        let file = direct::open(&self.path).ok().flatten();
        self.direct = file
            .zip(direct::Aligned::new())
            .map(|(file, buf)| DirectTarget {
                file,
                buf: Mutex::new(buf),
                ok: AtomicBool::new(true),
            });
    }

    /// The right to write data, once no other thread is writing.
    fn writer(&self) -> Writer<'_> {
        Writer {
            target: self,
            _one: self.writing.lock().unwrap_or_else(|p| p.into_inner()),
        }
    }

    /// The right to write data if no other thread is writing now. Buffered writes to one file
    /// serialise on its inode lock in the kernel, where a second writer spins (~5 % of a
    /// page-cache restore's CPU); a restore thread that finds the file busy goes on decoding
    /// and writes later instead.
    fn try_writer(&self) -> Option<Writer<'_>> {
        let one = match self.writing.try_lock() {
            Ok(one) => one,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return None,
        };
        Some(Writer {
            target: self,
            _one: one,
        })
    }

    /// Starts writing back what was written so far, without waiting for the I/O.
    fn start_writeback(&self) {
        // SAFETY: sync_file_range on a valid descriptor; no memory is passed. Failure (not
        // supported here) only means the final fsync does all the work.
        unsafe {
            libc::sync_file_range(self.file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
        }
    }

    /// Makes `len` bytes at `offset` read as zeros: a punched hole on a file, written zeros on
    /// a device (or where punching is unsupported).
    fn zero(&self, offset: u64, len: u64) -> Result<()> {
        if self.is_file {
            // SAFETY: fallocate on a valid descriptor; no memory is passed.
            let r = unsafe {
                libc::fallocate(
                    self.file.as_raw_fd(),
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    offset as libc::off_t,
                    len as libc::off_t,
                )
            };
            if r == 0 {
                return Ok(());
            }
        }
        let zeros = vec![0u8; (1 << 20).min(len as usize)];
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(zeros.len() as u64) as usize;
            self.write(&zeros[..n], offset + done)?;
            done += n as u64;
        }
        Ok(())
    }

    /// Flushes (if `sync`) and moves a new file into place.
    fn finish(self, sync: bool) -> Result<()> {
        if sync {
            self.file
                .sync_all()
                .map_err(|e| Error::io("sync restore target", &self.path, e))?;
        }
        if let Some(to) = &self.rename_to {
            std::fs::rename(&self.path, to)
                .map_err(|e| Error::io("rename restore target", to, e))?;
            if sync
                && let Some(dir) = to.parent()
                && let Ok(d) = File::open(if dir.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    dir
                })
            {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }

    fn abandon(self) {
        if self.rename_to.is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The one thread writing data to a [`Target`] for as long as it holds this.
struct Writer<'a> {
    target: &'a Target,
    _one: MutexGuard<'a, ()>,
}

impl Writer<'_> {
    fn write(&self, data: &[u8], offset: u64) -> Result<()> {
        let t = self.target;
        let err = |e| Error::io("write restore target", &t.path, e);
        if let Some(d) = &t.direct
            && data.len() >= DIRECT_MIN
            && d.ok.load(Ordering::Relaxed)
            && let Some((start, end)) = direct::blocks(offset, data.len())
        {
            let mut buf = d.buf.lock().unwrap_or_else(|p| p.into_inner());
            let (s, e) = ((start - offset) as usize, (end - offset) as usize);
            match direct::write_blocks(&d.file, &mut buf, &data[s..e], start) {
                Ok(()) => {
                    t.file.write_all_at(&data[..s], offset).map_err(err)?;
                    return t.file.write_all_at(&data[e..], end).map_err(err);
                }
                // Refused: this write and every later one go through the page cache.
                Err(e) if direct::unsupported(&e) => d.ok.store(false, Ordering::Relaxed),
                Err(e) => return Err(err(e)),
            }
        }
        t.file.write_all_at(data, offset).map_err(err)
    }
}

/// Largest run of adjacent chunks assembled in memory before it must be written.
const MAX_RUN: usize = 8 << 20;
/// A run is written in parts of at least this size whenever no other thread is writing.
const EAGER_WRITE: usize = 1 << 20;
/// The run buffers of all restore threads together: a store read with many threads in flight
/// (S3: 8) gets shorter runs, so its restore holds ~32 MiB of them, not 8 × 8 MiB.
const RUN_BUDGET: usize = 32 << 20;

/// Per-thread buffers, allocated once and reused for every range.
#[derive(Default)]
struct Buffers {
    /// The run of adjacent chunks being assembled: chunks are decompressed straight into it
    /// (no allocation, page faults or copy per chunk).
    run: Vec<u8>,
    /// Plain copies of the range's chunks that occur more than once in the window, so each is
    /// decompressed and verified once (a quarter of a real filesystem image's data repeats).
    repeats: Vec<u8>,
    /// Where each chunk of the range (by its position in the range) is in `repeats`.
    repeat_at: Vec<Option<usize>>,
    /// Whether each chunk of the range goes to more than one place.
    many: Vec<bool>,
    /// Every place a chunk of the range goes: (volume offset, position in the range).
    places: Vec<(u64, usize)>,
    /// What `run` holds that is not written yet.
    unwritten: Unwritten,
    /// The stored bytes of the range being restored (from stores that read into it).
    read: Vec<u8>,
}

thread_local! {
    static BUFFERS: std::cell::RefCell<Buffers> = std::cell::RefCell::new(Buffers::default());
}

/// A window's chunks, each with the volume offsets it is restored to. Built by sorting the
/// window in place, not as a map of small vectors: a restore makes no allocation per chunk, so
/// its heap neither churns nor fragments as the volume grows.
struct Places<'a> {
    /// `(offset, chunk)`, sorted by chunk and then offset.
    sorted: &'a [(u64, Hash)],
    /// The distinct chunks, sorted.
    ids: Vec<Hash>,
    /// `sorted[starts[i]..starts[i + 1]]` are the places of `ids[i]`.
    starts: Vec<usize>,
}

impl<'a> Places<'a> {
    fn new(window: &'a mut [(u64, Hash)]) -> Self {
        window.sort_unstable_by(|a, b| a.1.cmp(&b.1).then(a.0.cmp(&b.0)));
        let (mut ids, mut starts) = (Vec::new(), Vec::new());
        for (i, (_, id)) in window.iter().enumerate() {
            if ids.last() != Some(id) {
                ids.push(*id);
                starts.push(i);
            }
        }
        starts.push(window.len());
        Places {
            sorted: window,
            ids,
            starts,
        }
    }

    /// The places of a chunk of the window, in volume order.
    fn of(&self, id: &Hash) -> &[(u64, Hash)] {
        match self.ids.binary_search(id) {
            Ok(i) => &self.sorted[self.starts[i]..self.starts[i + 1]],
            Err(_) => &[],
        }
    }
}

/// Restores a window of data extents: `(volume offset, chunk id)`.
fn restore_window(
    container: &Container,
    index: &(impl Locate + ?Sized),
    backup_id: &str,
    target: &Target,
    window: &mut Vec<(u64, Hash)>,
    wrote: &(dyn Fn(usize) + Sync),
) -> Result<()> {
    let places = Places::new(window);
    let mut ranges = plan_ranges(index, &places.ids, |id| Error::ChunkNotIndexed {
        backup_id: backup_id.into(),
        chunk: id.to_hex(),
        volume_offset: places.of(id).first().map_or(0, |p| p.0),
    })?;
    let max_run = (RUN_BUDGET / container.store().concurrency().max(1)).clamp(1 << 20, MAX_RUN);
    // Largest first, each thread taking the next range when it is done with one: the window
    // ends with the small ranges, so no thread waits long for another's last one.
    ranges.sort_unstable_by_key(|r| std::cmp::Reverse(r.raw));
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let take = || {
        let i = next.fetch_add(1, Ordering::Relaxed);
        ranges.get(i).filter(|_| !failed.load(Ordering::Relaxed))
    };
    let res = container.on_io_pool(|| {
        let threads = rayon::current_num_threads().min(ranges.len());
        (0..threads).into_par_iter().try_for_each(|_| {
            while let Some(r) = take() {
                restore_range(container, target, &places, r, max_run, wrote).inspect_err(|_| {
                    failed.store(true, Ordering::Relaxed);
                })?;
            }
            Ok(())
        })
    });
    window.clear();
    res
}

/// Reads, decodes and verifies one range and writes its chunks wherever they go.
fn restore_range(
    container: &Container,
    target: &Target,
    places: &Places<'_>,
    r: &FetchRange,
    max_run: usize,
    wrote: &(dyn Fn(usize) + Sync),
) -> Result<()> {
    let key = pack_key(&r.pack);
    BUFFERS.with(|cell| {
        let Buffers {
            run: buf,
            repeats,
            repeat_at,
            many,
            places: order,
            unwritten,
            read,
        } = &mut *cell.borrow_mut();
        // Every place each chunk of the range goes, in volume order.
        order.clear();
        many.clear();
        for (k, (id, _)) in r.chunks.iter().enumerate() {
            let at = places.of(id);
            order.extend(at.iter().map(|p| (p.0, k)));
            many.push(at.len() > 1);
        }
        order.sort_unstable_by_key(|p| p.0);
        let own = container
            .store()
            .get_range_into(&key, r.start..r.end, read)?;
        let data = match &own {
            Some(bytes) => &bytes[..],
            None => &read[..(r.end - r.start) as usize],
        };
        repeats.clear();
        repeat_at.clear();
        repeat_at.resize(r.chunks.len(), None);
        // Chunks are decoded into the run buffer, adjacent ones side by side, and written
        // when the buffer is full or the range done, or earlier if no other thread is writing.
        unwritten.clear();
        for &(off, k) in order.iter() {
            let (id, loc) = &r.chunks[k];
            let len = loc.raw_len as usize;
            let used = unwritten.used();
            if used > 0 && used + len > max_run {
                unwritten.write_all(buf, &target.writer(), wrote)?;
            }
            let at = unwritten.used();
            if buf.len() < at + len {
                buf.resize(max_run + len, 0);
            }
            let out = &mut buf[at..at + len];
            if let Some(p) = repeat_at[k] {
                out.copy_from_slice(&repeats[p..p + len]);
            } else {
                let at = u64::from(loc.offset);
                let s = (at - r.start) as usize;
                let stored = &data[s..s + loc.stored_len as usize];
                decode_chunk_into(&key, at, id, loc.compression, stored, out)
                    .map_err(|e| with_volume_offset(e, off))?;
                if many[k] {
                    repeat_at[k] = Some(repeats.len());
                    repeats.extend_from_slice(out);
                }
            }
            unwritten.push(off, len);
            if unwritten.used() >= EAGER_WRITE
                && let Some(one) = target.try_writer()
            {
                unwritten.write_all(buf, &one, wrote)?;
            }
        }
        if unwritten.used() > 0 {
            unwritten.write_all(buf, &target.writer(), wrote)?;
        }
        Ok::<(), Error>(())
    })
}

/// The decoded chunks in a restore thread's run buffer that are not written yet: runs of chunks
/// adjacent in the volume, `(volume offset, start, end in the buffer)`, back to back from the
/// buffer's start.
#[derive(Default)]
struct Unwritten {
    runs: Vec<(u64, usize, usize)>,
}

impl Unwritten {
    fn clear(&mut self) {
        self.runs.clear();
    }

    /// Bytes of the buffer in use; the next chunk is decoded right after them.
    fn used(&self) -> usize {
        self.runs.last().map_or(0, |r| r.2)
    }

    /// Records that the next `len` bytes of the buffer hold the chunk at volume offset `off`.
    fn push(&mut self, off: u64, len: usize) {
        let at = self.used();
        match self.runs.last_mut() {
            Some(run) if run.0 + (run.2 - run.1) as u64 == off => run.2 += len,
            _ => self.runs.push((off, at, at + len)),
        }
    }

    /// Writes every run and empties the buffer.
    fn write_all(
        &mut self,
        buf: &[u8],
        to: &impl WriteAt,
        wrote: &(dyn Fn(usize) + Sync),
    ) -> Result<()> {
        for &(off, from, end) in &self.runs {
            to.write_at(&buf[from..end], off)?;
            wrote(end - from);
        }
        self.runs.clear();
        Ok(())
    }
}

/// Where [`Unwritten`] writes to: a [`Writer`], or an image in memory in tests.
trait WriteAt {
    fn write_at(&self, data: &[u8], offset: u64) -> Result<()>;
}

impl WriteAt for Writer<'_> {
    fn write_at(&self, data: &[u8], offset: u64) -> Result<()> {
        self.write(data, offset)
    }
}

/// Checks, before writing anything, that every chunk of the backup is indexed and every pack it
/// needs exists. Chunks are looked up a window at a time (a [`LocationTable`] on disk answers a
/// sorted batch with one read per block).
pub fn check_complete(
    container: &Container,
    index: &(impl Locate + ?Sized),
    manifest: &Manifest,
) -> Result<()> {
    let mut packs = std::collections::HashSet::new();
    let mut window: Vec<(u64, Hash, u32)> = Vec::with_capacity(WINDOW_CHUNKS);
    let mut check = |window: &mut Vec<(u64, Hash, u32)>| -> Result<()> {
        let ids: Vec<Hash> = window.iter().map(|(_, id, _)| *id).collect();
        for ((off, id, len), loc) in window.drain(..).zip(index.locate_all(&ids)?) {
            let loc = loc.ok_or_else(|| Error::ChunkNotIndexed {
                backup_id: manifest.backup_id.clone(),
                chunk: id.to_hex(),
                volume_offset: off,
            })?;
            // A chunk is written over exactly its extent: one of another length would spill
            // into its neighbour or leave part of its extent unwritten.
            if loc.raw_len != len {
                return Err(Error::ChunkLengthMismatch {
                    backup_id: manifest.backup_id.clone(),
                    chunk: id.to_hex(),
                    volume_offset: off,
                    extent_len: len,
                    chunk_len: loc.raw_len,
                });
            }
            packs.insert(loc.pack);
        }
        Ok(())
    };
    container.walk_extents(index, manifest, |off, e| {
        if let Extent::Data { id, len } = e {
            window.push((off, *id, *len));
            if window.len() >= WINDOW_CHUNKS {
                check(&mut window)?;
            }
        }
        Ok(())
    })?;
    check(&mut window)?;
    let keys: Vec<String> = packs
        .into_iter()
        .map(|p| pack_key(&index.pack_id(p)))
        .collect();
    if keys.len() > 64 {
        // One paged listing is cheaper than a request per pack.
        let present = container.list_packs()?;
        return match keys.into_iter().find(|k| !present.contains_key(k)) {
            Some(key) => Err(Error::MissingObject { key }),
            None => Ok(()),
        };
    }
    container.on_io_pool(|| {
        keys.into_par_iter()
            .try_for_each(|key| match container.store().head(&key)? {
                Some(_) => Ok(()),
                None => Err(Error::MissingObject { key }),
            })
    })
}

/// How a restore treats its target.
#[derive(Debug, Clone, Copy)]
pub struct RestoreOptions {
    pub mode: TargetMode,
    /// Flush the target to stable storage before reporting success (the default). Without
    /// it the restore ends once its data is in the page cache, as restic's and borg's do:
    /// for scratch targets (a tmpfs, a file about to be copied elsewhere) where durability is
    /// not wanted and the disk's write speed would otherwise bound the restore.
    pub sync: bool,
    /// Data-chunk locations held in memory; beyond this the container's locations go to a
    /// temporary file (see [`LocationTable`]), so memory does not grow with the container.
    pub locations_in_memory: usize,
}

impl RestoreOptions {
    /// The defaults for `mode`: durable, [`DEFAULT_MEM_ENTRIES`] locations in memory.
    pub fn new(mode: TargetMode) -> Self {
        RestoreOptions {
            mode,
            sync: true,
            locations_in_memory: DEFAULT_MEM_ENTRIES,
        }
    }
}

/// Restores backup `backup_id` onto `target`, durably.
pub fn run_restore(
    container: &Container,
    backup_id: &str,
    target: &Path,
    mode: TargetMode,
    progress: Option<&(dyn Fn(u64) + Sync)>,
) -> Result<RestoreReport> {
    run_restore_with(
        container,
        backup_id,
        target,
        &RestoreOptions::new(mode),
        progress,
    )
}

/// Restores backup `backup_id` onto `target` as `opts` says.
pub fn run_restore_with(
    container: &Container,
    backup_id: &str,
    target: &Path,
    opts: &RestoreOptions,
    progress: Option<&(dyn Fn(u64) + Sync)>,
) -> Result<RestoreReport> {
    let started = Instant::now();
    let requests_before = container.store().requests();
    let (manifest, _) = container.read_manifest(backup_id)?;
    // A reader's lease holds back the collector's sweep while this restore relies on the
    // locations it loads. Best effort: with read-only credentials there is no lease, and a
    // concurrent sweep can at worst make the restore fail cleanly, naming the missing pack.
    let _lease = LeaseGuard::take(container, backup_id, LEASE_TTL).ok();
    let index = LocationTable::load(container, opts.locations_in_memory)?;
    check_complete(container, &index, &manifest)?;
    // The check's transient listings and lookups leave holes in the heap (more of them the
    // larger the backup); so does every window. Trimming after each keeps a 16 GiB restore's
    // peak within a few percent of a 4 GiB one's instead of ~10 % above it.
    trim_heap();
    let mut t = Target::open(target, opts.mode, manifest.size)?;
    if opts.sync {
        t.direct();
    }
    let mut window = Vec::with_capacity(WINDOW_CHUNKS);
    let mut bytes_written = 0u64;
    let mut zero_bytes = 0u64;
    let res = std::thread::scope(|s| {
        // Writeback is started on a thread of its own every WRITEBACK_EVERY bytes written: the
        // kernel's block allocation and I/O submission then overlap the restore instead of
        // stalling its threads, and the final fsync waits only for the last few MiB. A signal
        // sent while the thread is busy needs no call of its own: each call covers everything
        // written so far.
        let (flush, flushes) = std::sync::mpsc::sync_channel::<()>(1);
        let written = std::sync::atomic::AtomicU64::new(0);
        let wrote = |n: usize| {
            let before = written.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
            if opts.sync && (before + n as u64) / WRITEBACK_EVERY != before / WRITEBACK_EVERY {
                let _ = flush.try_send(());
            }
        };
        let t = &t;
        if opts.sync {
            s.spawn(move || {
                for () in flushes {
                    t.start_writeback();
                }
            });
        }
        let res = container.walk_extents(&index, &manifest, |off, e| {
            match e {
                Extent::Data { len, id } => {
                    bytes_written += u64::from(*len);
                    window.push((off, *id));
                    if window.len() >= WINDOW_CHUNKS {
                        restore_window(container, &index, backup_id, t, &mut window, &wrote)?;
                        trim_heap();
                        if let Some(p) = progress {
                            p(off + u64::from(*len));
                        }
                    }
                }
                Extent::Zero { len } => {
                    zero_bytes += len;
                    if t.write_zeros {
                        t.zero(off, *len)?;
                    }
                }
            }
            Ok(())
        });
        res.and_then(|_| restore_window(container, &index, backup_id, t, &mut window, &wrote))
    });
    if let Err(e) = res {
        t.abandon();
        return Err(e);
    }
    t.finish(opts.sync)?;
    if let Some(p) = progress {
        p(manifest.size);
    }
    Ok(RestoreReport {
        backup_id: backup_id.into(),
        size: manifest.size,
        bytes_written,
        zero_bytes,
        elapsed_s: started.elapsed().as_secs_f64(),
        requests: container.store().requests().since(&requests_before),
        volume_metadata: manifest.volume_metadata,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::cell::RefCell;

    /// A volume image in memory.
    struct Image(RefCell<Vec<u8>>);

    impl WriteAt for Image {
        fn write_at(&self, data: &[u8], offset: u64) -> Result<()> {
            let mut img = self.0.borrow_mut();
            let at = offset as usize;
            if img.len() < at + data.len() {
                img.resize(at + data.len(), 0);
            }
            img[at..at + data.len()].copy_from_slice(data);
            Ok(())
        }
    }

    fn byte(off: u64) -> u8 {
        (off % 251) as u8 + 1
    }

    proptest! {
        /// Chunks decoded into one buffer, written whenever the buffer would overflow, at random
        /// moments in between (the target was free) and at the end, land at their offsets:
        /// runs of adjacent chunks merge, gaps stay gaps, nothing is written twice.
        #[test]
        fn unwritten_runs_land_where_they_belong(
            chunks in proptest::collection::vec((0u64..3, 1usize..3000, any::<bool>()), 1..60),
            max_run in 1usize..8000,
        ) {
            let img = Image(RefCell::new(Vec::new()));
            let written = std::sync::atomic::AtomicUsize::new(0);
            let wrote = |n: usize| {
                written.fetch_add(n, Ordering::Relaxed);
            };
            let (mut buf, mut pending) = (Vec::new(), Unwritten::default());
            let (mut off, mut expected) = (0u64, Vec::new());
            for &(gap, len, free) in &chunks {
                off += gap * 1000;
                let used = pending.used();
                if used > 0 && used + len > max_run {
                    pending.write_all(&buf, &img, &wrote).unwrap();
                }
                let at = pending.used();
                if buf.len() < at + len {
                    buf.resize(max_run + len, 0);
                }
                for (i, b) in buf[at..at + len].iter_mut().enumerate() {
                    *b = byte(off + i as u64);
                }
                pending.push(off, len);
                prop_assert!(pending.used() <= max_run.max(len));
                if free {
                    pending.write_all(&buf, &img, &wrote).unwrap();
                    prop_assert_eq!(pending.used(), 0);
                }
                expected.resize((off as usize) + len, 0);
                for i in 0..len {
                    expected[off as usize + i] = byte(off + i as u64);
                }
                off += len as u64;
            }
            pending.write_all(&buf, &img, &wrote).unwrap();
            prop_assert_eq!(&*img.0.borrow(), &expected);
            let total: usize = chunks.iter().map(|c| c.1).sum();
            prop_assert_eq!(written.load(Ordering::Relaxed), total);
        }
    }
}
