//! The restore pipeline: manifest → extents → packs → stripes → target.
//!
//! A backup restores from its own manifest alone (never by replaying a parent chain). The
//! extent list is walked in windows of at most 32 MiB of the volume (a `Stripe`) and a few
//! thousand chunks. Within a window, chunks are grouped by pack and neighbouring chunks of one
//! pack are fetched with one ranged read; ranges are fetched, decompressed and BLAKE3-verified
//! in parallel, largest first, each chunk straight into its place in the stripe, and a chunk
//! that occurs several times in the window is decoded once and copied to its other places.
//!
//! A full stripe goes to a writer thread of its own, which writes its regions in volume order
//! while the restore threads fill the next stripe: they never wait on the disk or on the
//! file's lock, and the disk gets requests of megabytes, in order, not one per run of chunks
//! in whatever order ranges complete. By default the whole blocks of each region are written
//! with direct I/O ([`crate::direct`]), bypassing the page cache (as Cinder's own volume copies
//! do), straight from the stripe, which mirrors the file's block alignment; only the partial
//! blocks at a region's ends go through the page cache. A restore through the page cache
//! (`--buffered`, or a target that refuses direct I/O) has its writeback started every
//! 32 MiB when durable, so the final fsync has little left to wait for.
//!
//! Chunk locations come from a [`LocationTable`], which keeps them in a sorted scratch file
//! once the container is large, so memory is bounded by the stripes and the ranges in flight,
//! not by the volume or the container. Each restore thread reuses its read buffer, and the
//! stripes are reused window after window: no fresh pages to fault in per range.
//!
//! Before anything is written, every chunk the backup needs is checked to be in the index, as
//! long as its extent, and every pack it needs to exist, so a backup that lost objects is
//! refused up front. A new file target is written under a temporary name and renamed into
//! place only when complete (and fsync'd, for a durable restore): a failed restore never
//! leaves a half-written file under the target's name.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;

use crate::container::LeaseGuard;
use crate::container::{
    Container, FetchRange, MAX_RANGE_RAW, pack_key, plan_ranges, with_volume_offset,
};
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
/// been written through the page cache (see [`write_stripes`]).
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
    /// The target opened again for direct I/O, unless the restore is buffered or the target
    /// refuses it (see [`Target::direct`]).
    direct: Option<File>,
}

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

    /// Writes through the page cache, in pieces of at most [`PAGE_CACHE_PIECE`].
    fn write(&self, data: &[u8], offset: u64) -> Result<()> {
        let mut at = 0;
        for piece in data.chunks(PAGE_CACHE_PIECE) {
            (self.file.write_all_at(piece, offset + at as u64))
                .map_err(|e| Error::io("write restore target", &self.path, e))?;
            at += piece.len();
        }
        Ok(())
    }

    /// Writes the whole blocks of later stripes with direct I/O: their bytes go to the disk
    /// from the stripe instead of being copied into new page-cache pages (and, for a durable
    /// restore, written back before the final fsync). Where the target refuses direct I/O,
    /// nothing changes.
    fn direct(&mut self) {
        self.direct = direct::open(&self.path).ok().flatten();
    }

    /// Writes one region of a stripe: its whole blocks with direct I/O while the target takes
    /// it, the partial blocks at its ends through the page cache (the neighbouring region,
    /// possibly in another stripe, shares them, and direct I/O writes whole blocks only).
    /// `direct` is cleared when the target refuses direct I/O.
    fn write_region(
        &self,
        stripe: &Stripe,
        offset: u64,
        len: u64,
        direct: &mut bool,
    ) -> Result<()> {
        let data = stripe.bytes(offset, len);
        if *direct
            && let Some(d) = &self.direct
            && let Some((start, end)) = direct::blocks(offset, data.len())
        {
            let (s, e) = ((start - offset) as usize, (end - offset) as usize);
            // The stripe mirrors the file's block alignment, so `data[s..]` is aligned.
            match d.write_all_at(&data[s..e], start) {
                Ok(()) => {
                    self.write(&data[..s], offset)?;
                    return self.write(&data[e..], end);
                }
                Err(e) if direct::unsupported(&e) => *direct = false,
                Err(e) => return Err(Error::io("write restore target", &self.path, e)),
            }
        }
        self.write(data, offset)
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

/// Largest write through the page cache. The kernel sizes new cache pages (folios) by the
/// write, and on the VMs measured here large ones cost far more: `dd` of 1.4 GB into a sparse
/// file took 0.26–0.56 s of system time in writes of 16–512 KiB (one outlier of 2.3 s) and
/// 1.3–3.6 s in writes of 1 or 32 MiB. A `--buffered` restore of day 2 took 0.42–0.57 s of
/// system time in 256–512 KiB pieces against 1.7–3.3 s in whole regions.
const PAGE_CACHE_PIECE: usize = 512 << 10;

/// Stripes of a restore: one being filled by the restore threads, one being written.
const STRIPES: usize = 2;

/// Volume bytes a window spans at most, on a store read with at most two requests in flight
/// (a filesystem). Larger stripes cost memory; smaller ones decode more, since a chunk that
/// repeats in another window is decoded again there: on day 2 of the benchmark's filesystem
/// image, 16 MiB stripes decoded 1.40 GB, 32 MiB ones 1.33 GB (64 MiB: 1.21 GB, 256 MiB:
/// 1.08 GB) for a volume of 1.40 GB of data. At least the largest chunk.
const STRIPE: usize = 32 << 20;
const _: () = assert!(STRIPE >= crate::chunker::MAX_CHUNK_LIMIT as usize);

/// The stripe for a store read with `concurrency` requests in flight. Each window ends with a
/// barrier and cuts ranges at its ends, so a store with many requests in flight (S3: 8) needs
/// larger windows to keep them busy: from s3s-fs on this machine, day 2 restored in
/// 4.6–5.0 s with 32 MiB stripes, 3.7–3.9 s with 64 MiB ones and 3.1–3.7 s with 128 MiB ones
/// (peak RSS 105, 176 and 308 MiB), against 3.1–3.7 s before stripes (131–143 MiB).
fn stripe_len(concurrency: usize) -> usize {
    if concurrency > 2 { 2 * STRIPE } else { STRIPE }
}

/// Most uncompressed bytes of one range for a store read with `concurrency` requests in
/// flight. On a filesystem (two threads) a window's last range leaves the other thread idle
/// until it is done. With 2 MiB instead of 8, `perf sched` had the threads busy 67 % of the
/// restore instead of 56 %, and day 2's restore without a flush took 0.99 s against 1.09 s
/// in one set of six interleaved warm-cache runs, 1.12 s against 1.15 s in another (durable:
/// 1.07 s against 1.16 s; twelfth session). A network store keeps the larger ranges, which
/// save requests, and has more of them in flight to balance.
fn range_raw(concurrency: usize) -> u64 {
    if concurrency > 2 {
        MAX_RANGE_RAW
    } else {
        2 << 20
    }
}

/// A window's stretch of the target, assembled in memory and then written in one go by the
/// writer thread (see [`write_stripes`]). Volume offset `base + i` is at `mem[pad + i]` with
/// `pad = base % ALIGN`: the stripe mirrors the file's block alignment, so the whole blocks of
/// each region go to the disk with direct I/O straight from it.
///
/// Restore threads decode chunks straight into their extents in the stripe
/// ([`Stripe::claim`]); a chunk that occurs again in the window is copied from its first
/// place. No run buffers, and no copy between decoding and the disk.
struct Stripe {
    mem: direct::Aligned,
    base: u64,
    /// The data extents, adjacent ones merged: `(offset, len)`, in volume order. What lies
    /// between them (zero extents) is not written.
    regions: Vec<(u64, u64)>,
}

impl Stripe {
    fn new(len: usize) -> Result<Stripe> {
        let mem = direct::Aligned::new(len + direct::ALIGN as usize)
            .ok_or_else(|| Error::Internal(format!("no memory for a {len}-byte stripe")))?;
        Ok(Stripe {
            mem,
            base: 0,
            regions: Vec::new(),
        })
    }

    fn pad(&self) -> usize {
        (self.base % direct::ALIGN) as usize
    }

    /// Adds the data extent of `len` bytes at `off`. False if it does not fit: the stripe is
    /// full. An empty stripe starts at the extent. Extents come in volume order and never
    /// overlap (an overlapping one is refused), which is what makes [`Stripe::claim`] sound.
    fn add(&mut self, off: u64, len: u64) -> Result<bool> {
        match self.regions.last() {
            None => self.base = off,
            Some(r) if off < r.0 + r.1 => {
                return Err(Error::Internal(format!(
                    "extent at volume offset {off} overlaps the one before it"
                )));
            }
            Some(_) => {}
        }
        let room = (self.mem.len() - self.pad()) as u64;
        if off - self.base + len > room {
            return Ok(false);
        }
        match self.regions.last_mut() {
            Some(r) if r.0 + r.1 == off => r.1 += len,
            _ => self.regions.push((off, len)),
        }
        Ok(true)
    }

    /// The stripe's bytes for the extent of `len` bytes at volume offset `off`, to decode into.
    ///
    /// # Safety
    /// `off` and `len` must be exactly one extent added to this stripe, and no two live
    /// claims may name the same extent. Extents never overlap (see [`Stripe::add`]), so claims
    /// are then disjoint. A restore window claims each place of each chunk once: a chunk id
    /// is in one range, a range is restored by one thread, and a chunk's places are distinct
    /// extents whose length is checked against the chunk's first.
    #[allow(clippy::mut_from_ref)]
    unsafe fn claim(&self, off: u64, len: usize) -> Result<&mut [u8]> {
        let at = (off.checked_sub(self.base))
            .map(|d| d as usize + self.pad())
            .filter(|at| at + len <= self.mem.len())
            .ok_or_else(|| {
                Error::Internal(format!(
                    "extent at volume offset {off} is not in the stripe"
                ))
            })?;
        // SAFETY: in bounds (checked above); disjoint from every other live claim and from
        // any shared view of the buffer, by the caller's contract.
        Ok(unsafe { std::slice::from_raw_parts_mut(self.mem.as_mut_ptr().add(at), len) })
    }

    /// The bytes of volume offsets `[off, off + len)`, within a region.
    fn bytes(&self, off: u64, len: u64) -> &[u8] {
        let at = (off - self.base) as usize + self.pad();
        &self.mem.as_slice()[at..at + len as usize]
    }
}

thread_local! {
    /// The stored bytes of the range a restore thread is restoring (from stores that read
    /// into a buffer), reused for every range: no fresh pages to fault in per range.
    static READ: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A window's chunks, each with the extents it is restored to. Built by sorting the window in
/// place, not as a map of small vectors: a restore makes no allocation per chunk, so its heap
/// neither churns nor fragments as the volume grows.
struct Places<'a> {
    /// `(offset, chunk, len)`, sorted by chunk and then offset.
    sorted: &'a [(u64, Hash, u32)],
    /// The distinct chunks, sorted.
    ids: Vec<Hash>,
    /// `sorted[starts[i]..starts[i + 1]]` are the places of `ids[i]`.
    starts: Vec<usize>,
}

impl<'a> Places<'a> {
    fn new(window: &'a mut [(u64, Hash, u32)]) -> Self {
        window.sort_unstable_by(|a, b| a.1.cmp(&b.1).then(a.0.cmp(&b.0)));
        let (mut ids, mut starts) = (Vec::new(), Vec::new());
        for (i, (_, id, _)) in window.iter().enumerate() {
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
    fn of(&self, id: &Hash) -> &[(u64, Hash, u32)] {
        match self.ids.binary_search(id) {
            Ok(i) => &self.sorted[self.starts[i]..self.starts[i + 1]],
            Err(_) => &[],
        }
    }
}

/// Restores a window of data extents, `(volume offset, chunk id, length)`, into `stripe`.
fn restore_window(
    container: &Container,
    index: &(impl Locate + ?Sized),
    backup_id: &str,
    stripe: &Stripe,
    window: &mut Vec<(u64, Hash, u32)>,
) -> Result<()> {
    let places = Places::new(window);
    let max_raw = range_raw(container.store().concurrency());
    let mut ranges = plan_ranges(index, &places.ids, max_raw, |id| Error::ChunkNotIndexed {
        backup_id: backup_id.into(),
        chunk: id.to_hex(),
        volume_offset: places.of(id).first().map_or(0, |p| p.0),
    })?;
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
                restore_range(container, backup_id, stripe, &places, r).inspect_err(|_| {
                    failed.store(true, Ordering::Relaxed);
                })?;
            }
            Ok(())
        })
    });
    window.clear();
    res
}

/// Reads, decodes and verifies one range, decoding each chunk straight into its first place
/// in the stripe and copying it to the others (a quarter of a real filesystem image's data
/// repeats): each chunk is decompressed and verified once per window.
fn restore_range(
    container: &Container,
    backup_id: &str,
    stripe: &Stripe,
    places: &Places<'_>,
    r: &FetchRange,
) -> Result<()> {
    let key = pack_key(&r.pack);
    READ.with(|cell| {
        let read = &mut *cell.borrow_mut();
        let own = container
            .store()
            .get_range_into(&key, r.start..r.end, read)?;
        let data = match &own {
            Some(bytes) => &bytes[..],
            None => &read[..(r.end - r.start) as usize],
        };
        for (id, loc) in &r.chunks {
            // Each of the chunk's extents is written over exactly: one of another length
            // would make a claim spill into its neighbour's (check_complete already refused
            // such a backup; this keeps the claims below sound on their own).
            let mismatch = |volume_offset, extent_len| Error::ChunkLengthMismatch {
                backup_id: backup_id.into(),
                chunk: id.to_hex(),
                volume_offset,
                extent_len,
                chunk_len: loc.raw_len,
            };
            let at = places.of(id);
            let Some(&(first, _, len)) = at.first() else {
                continue;
            };
            if len != loc.raw_len {
                return Err(mismatch(first, len));
            }
            let s = (u64::from(loc.offset) - r.start) as usize;
            let stored = &data[s..s + loc.stored_len as usize];
            // SAFETY: `first` is one of this chunk's extents, `len` long; this chunk is in
            // this range only, and this range is restored by this thread only.
            let out = unsafe { stripe.claim(first, len as usize)? };
            decode_chunk_into(&key, loc.offset.into(), id, loc.compression, stored, out)
                .map_err(|e| with_volume_offset(e, first))?;
            for &(off, _, other) in &at[1..] {
                if other != len {
                    return Err(mismatch(off, other));
                }
                // SAFETY: as above; another extent, so disjoint from `out`.
                unsafe { stripe.claim(off, len as usize)? }.copy_from_slice(out);
            }
        }
        Ok(())
    })
}

/// The writer thread of a restore: writes each stripe it is sent, in volume order, and sends
/// it back for another window. The restore threads never wait on the disk or on the file's
/// lock, and direct I/O gets requests of megabytes. After an error it writes nothing more,
/// sets `failed` (the walk stops at its next window) and returns the error once the walk is
/// done. A durable restore's writes through the page cache (all of them where the target
/// refuses direct I/O) get their writeback started every [`WRITEBACK_EVERY`] bytes, so the
/// final fsync has little left to wait for.
fn write_stripes(
    t: &Target,
    todo: std::sync::mpsc::Receiver<Stripe>,
    free: std::sync::mpsc::Sender<Stripe>,
    sync: bool,
    failed: &AtomicBool,
) -> Result<()> {
    let mut res = Ok(());
    let mut direct = t.direct.is_some();
    let mut unflushed = 0u64;
    for stripe in todo {
        if res.is_ok() {
            res = (stripe.regions.iter())
                .try_for_each(|&(off, len)| t.write_region(&stripe, off, len, &mut direct));
            failed.store(res.is_err(), Ordering::Relaxed);
            if sync && !direct {
                unflushed += stripe.regions.iter().map(|r| r.1).sum::<u64>();
                if unflushed >= WRITEBACK_EVERY {
                    t.start_writeback();
                    unflushed = 0;
                }
            }
        }
        // The walk may have stopped already: then nobody waits for the stripe.
        let _ = free.send(stripe);
    }
    res
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
    /// it the restore ends once its data is written, as restic's and borg's do, with no wait
    /// for the final flush: for scratch targets where durability is not wanted.
    pub sync: bool,
    /// Write the target's whole blocks with direct I/O (the default), bypassing the page
    /// cache, as Cinder's own volume copies do (`dd oflag=direct`): a restored volume of many
    /// GiB does not evict the host's cache, and the restore does not pay for a page-cache page
    /// per 4 KiB written. Without it (`--buffered`), every byte goes through the page cache:
    /// for an image that is read right after the restore. Targets that refuse direct I/O
    /// (some FUSE and network filesystems) are written through the page cache either way.
    pub direct_io: bool,
    /// Data-chunk locations held in memory; beyond this the container's locations go to a
    /// temporary file (see [`LocationTable`]), so memory does not grow with the container.
    pub locations_in_memory: usize,
    /// Volume bytes per restore window (its `Stripe`); None for the default, 32 MiB (64 MiB
    /// on stores read with many requests in flight). Never less than the backup's largest
    /// chunk. Small stripes are for tests: they make a small volume cross many windows.
    pub stripe: Option<usize>,
}

impl RestoreOptions {
    /// The defaults for `mode`: durable, direct I/O, [`DEFAULT_MEM_ENTRIES`] locations in
    /// memory.
    pub fn new(mode: TargetMode) -> Self {
        RestoreOptions {
            mode,
            sync: true,
            direct_io: true,
            locations_in_memory: DEFAULT_MEM_ENTRIES,
            stripe: None,
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
    if opts.direct_io {
        t.direct();
    }
    let stripe_len = (opts.stripe).map_or(stripe_len(container.store().concurrency()), |s| {
        s.max(manifest.chunker.max as usize)
    });
    let mut bytes_written = 0u64;
    let mut zero_bytes = 0u64;
    let failed = AtomicBool::new(false);
    let res = std::thread::scope(|s| {
        let (t, failed) = (&t, &failed);
        // Stripes go round: the walk fills one and sends it to the writer thread, which
        // writes it and sends it back for another window.
        let (free_tx, free) = std::sync::mpsc::channel::<Stripe>();
        for _ in 0..STRIPES {
            let _ = free_tx.send(Stripe::new(stripe_len)?);
        }
        let (full, todo) = std::sync::mpsc::sync_channel::<Stripe>(STRIPES);
        let writer = s.spawn(move || write_stripes(t, todo, free_tx, opts.sync, failed));
        let gone = || Error::Internal("the restore's writer thread stopped".into());
        let mut stripe = free.recv().map_err(|_| gone())?;
        let mut window = Vec::with_capacity(WINDOW_CHUNKS);
        // Restores the window into the stripe and hands it to the writer.
        let flush = |window: &mut Vec<(u64, Hash, u32)>, stripe: &mut Stripe| -> Result<()> {
            if failed.load(Ordering::Relaxed) {
                return Err(gone());
            }
            restore_window(container, &index, backup_id, stripe, window)?;
            let mut next = free.recv().map_err(|_| gone())?;
            next.regions.clear();
            full.send(std::mem::replace(stripe, next))
                .map_err(|_| gone())?;
            trim_heap();
            Ok(())
        };
        let res = container.walk_extents(&index, &manifest, |off, e| {
            match e {
                Extent::Data { len, id } => {
                    bytes_written += u64::from(*len);
                    if window.len() >= WINDOW_CHUNKS || !stripe.add(off, u64::from(*len))? {
                        flush(&mut window, &mut stripe)?;
                        if let Some(p) = progress {
                            p(off);
                        }
                        // An empty stripe holds any chunk the backup's chunker cuts, and by
                        // default any extent the manifest's decoder accepts (STRIPE is no
                        // shorter than MAX_CHUNK_LIMIT).
                        if !stripe.add(off, u64::from(*len))? {
                            return Err(Error::Corrupt {
                                key: crate::container::manifest_key(backup_id),
                                offset: 0,
                                reason: format!(
                                    "data extent of {len} bytes at volume offset {off}, more \
                                     than the backup's largest chunk"
                                ),
                            });
                        }
                    }
                    window.push((off, *id, *len));
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
        let res = res.and_then(|()| match window.is_empty() {
            true => Ok(()),
            false => flush(&mut window, &mut stripe),
        });
        drop(full);
        // The writer's error, if it had one, is the cause of any error here.
        let written = writer.join().unwrap_or_else(|_| Err(gone()));
        written.and(res)
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

    fn byte(off: u64) -> u8 {
        (off % 251) as u8 + 1
    }

    proptest! {
        /// Extents added in volume order fill a stripe until the next would not fit; adjacent
        /// ones merge into one region, gaps stay gaps; what is decoded into each extent is what
        /// the writer reads back; and each region's first whole block sits at an aligned
        /// address, so direct I/O can write it from the stripe.
        #[test]
        fn stripes_hold_their_extents_where_the_writer_reads_them(
            base in 0u64..20_000,
            extents in proptest::collection::vec((0u64..3, 1u64..3000), 1..80),
        ) {
            let mut stripe = Stripe::new(64 << 10).unwrap();
            let (mut off, mut added) = (base, Vec::new());
            for &(gap, len) in &extents {
                off += gap * 1000;
                if !stripe.add(off, len).unwrap() {
                    let room = (64 << 10) + direct::ALIGN - stripe.base % direct::ALIGN;
                    prop_assert!(off + len - stripe.base > room);
                    break;
                }
                added.push((off, len));
                off += len;
            }
            prop_assert_eq!(stripe.base, base + extents[0].0 * 1000);
            for &(off, len) in &added {
                // SAFETY: each added extent is claimed once, one at a time.
                let out = unsafe { stripe.claim(off, len as usize) }.unwrap();
                for (i, b) in out.iter_mut().enumerate() {
                    *b = byte(off + i as u64);
                }
            }
            let mut merged: Vec<(u64, u64)> = Vec::new();
            for &(off, len) in &added {
                match merged.last_mut() {
                    Some(r) if r.0 + r.1 == off => r.1 += len,
                    _ => merged.push((off, len)),
                }
            }
            prop_assert_eq!(&stripe.regions, &merged);
            for &(off, len) in &stripe.regions {
                let data = stripe.bytes(off, len);
                prop_assert!(data.iter().enumerate().all(|(i, &b)| b == byte(off + i as u64)));
                if let Some((start, _)) = direct::blocks(off, len as usize) {
                    let at = data[(start - off) as usize..].as_ptr() as usize;
                    prop_assert_eq!(at % direct::ALIGN as usize, 0);
                }
            }
        }
    }

    /// A stripe the writer cannot write fails the restore: the writer reports the error,
    /// flags it for the walk, writes no later stripe and still hands every stripe back.
    #[test]
    fn a_failed_write_stops_the_writer_and_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.img");
        std::fs::write(&path, []).unwrap();
        let read_only = File::open(&path).unwrap();
        let t = Target::new(read_only, path.clone(), None, true, false);
        let (full, todo) = std::sync::mpsc::sync_channel(STRIPES);
        let (free_tx, free) = std::sync::mpsc::channel();
        for base in [0u64, 1 << 20] {
            let mut s = Stripe::new(64 << 10).unwrap();
            assert!(s.add(base, 4096).unwrap());
            full.send(s).unwrap();
        }
        drop(full);
        let failed = AtomicBool::new(false);
        let err = write_stripes(&t, todo, free_tx, true, &failed).unwrap_err();
        assert_eq!(err.kind(), "io", "{err}");
        assert!(failed.load(Ordering::Relaxed));
        assert_eq!(free.iter().count(), 2);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
    }

    #[test]
    fn a_stripe_refuses_overlapping_extents_and_claims_outside_it() {
        let mut stripe = Stripe::new(64 << 10).unwrap();
        assert!(stripe.add(10_000, 5_000).unwrap());
        assert!(stripe.add(14_999, 10).is_err());
        assert!(!stripe.add(20_000, 70 << 10).unwrap());
        // SAFETY: nothing else is claimed.
        assert!(unsafe { stripe.claim(9_999, 10) }.is_err());
        // SAFETY: as above.
        assert!(unsafe { stripe.claim(10_000 + (64 << 10), 8_000) }.is_err());
    }
}
