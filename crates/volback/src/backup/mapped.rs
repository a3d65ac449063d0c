//! An incremental given a change map: only the changed ranges, and a few chunks around each,
//! are read; every other chunk is the parent's, reused in place without being read.
//!
//! The result is the backup a full read would make, extent for extent (the property test in
//! `tests/change_maps.rs` checks it over random volumes, edits and maps). The chunker's output
//! is a function of the volume's bytes in which two things reach across a point: a chunk (its
//! cut depends on the bytes from its start through the byte after it) and a zero run (whether
//! it is long enough to be a zero extent depends on all its blocks). So:
//!
//! - A **fresh point** is a piece boundary whose 4 KiB block is not all zeros: no chunk and no
//!   zero run crosses it, and a splitter started there (`Splitter::resume_at`) makes the same
//!   pieces as one that ran from the start.
//! - Each **dirty** range (the map's ranges widened to whole blocks) is re-chunked from the
//!   last parent boundary `S` whose block lies before it and is not all zeros. Everything
//!   before that block is unchanged, so the full read's pieces before `S` are the parent's and
//!   `S` is a fresh point of the new volume too.
//! - Reading continues past the range until the new pieces end at a boundary `E` that the
//!   parent has too, whose block is clean and not all zeros: a fresh point of both volumes,
//!   after which they hold the same bytes up to the next dirty range, so the pieces are the
//!   parent's again. FastCDC's cuts resynchronise within a chunk or two.
//!
//! A volume whose size changed is dirty from the block holding the old end (the parent's last
//! chunk ended there because the volume did, not at a cut). Ranges the map says now read as
//! zeros, and unchanged ranges the parent holds as zero extents, are pushed as holes, not read.
//!
//! The sampled check reads a pseudo-random fraction of the chunks reused without reading and
//! compares their hashes with the parent's (and of the average-chunk-sized stretches of reused
//! zero extents, which must still read as zeros): a map that missed a change is caught with
//! that probability per missed chunk. Reused chunks the dedup set does not hold (their packs are
//! condemned) are read by the main loop and stored again, checked the same way.

use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};

use bytes::Bytes;
use rayon::prelude::*;

use super::buffers::BufferPool;
use crate::change_map::ChangeMap;
use crate::chunker::{ChunkerParams, Piece, Splitter, ZERO_BLOCK, is_zero};
use crate::error::{Error, Result};
use crate::format::extent_list::Extent;
use crate::ids::{ChunkIds, Hash};

/// Parent extents held back, newest last, as candidates for where a window starts.
const LOOKBEHIND: usize = 64;
/// Bytes read at a time past the changed bytes (while looking for the resynchronisation).
const STEP_CLEAN: u64 = 64 << 10;
/// Bytes read at a time inside changed bytes.
const STEP_DIRTY: u64 = 1 << 20;
/// Pieces sent to the main loop at a time.
const BATCH: usize = 4096;
/// Bytes of dirty ranges (and their neighbourhoods) handed to the kernel's readahead ahead of
/// the reader: all at once, the disk gets them sorted and queued deep. On the 16 GiB benchmark
/// volume (1 % changed in ~320 runs) 64 ranges ahead took 1.06–1.80 s and everything ahead
/// 0.93–1.07 s; the bound keeps the page cache a hint's worth for larger maps.
const ADVISE_BYTES: u64 = 512 << 20;

/// What an incremental with a change map reads, decided before the backup writes anything.
#[derive(Debug, Clone)]
pub struct MapPlan {
    /// Ranges to re-chunk: the map's ranges widened to whole 4 KiB blocks and merged, plus
    /// the tail of a volume whose size changed.
    pub dirty: Vec<(u64, u64)>,
    /// Exact ranges the map says now read as zeros (pushed as holes, not read).
    pub zeroed: Vec<(u64, u64)>,
    /// Fraction of the reused chunks read back and checked (0 to 1).
    pub sample_rate: f64,
    /// Seed of the sample's choice (from the backup id: another backup samples other chunks).
    pub seed: u64,
}

impl MapPlan {
    /// The plan for applying `map` to a volume of `size` bytes whose parent had
    /// `parent_size`.
    pub fn new(map: &ChangeMap, size: u64, parent_size: u64, sample_rate: f64, seed: u64) -> Self {
        let mut dirty: Vec<(u64, u64)> = Vec::new();
        let mut add = |start: u64, end: u64| {
            let start = start - start % ZERO_BLOCK;
            let end = end
                .div_ceil(ZERO_BLOCK)
                .saturating_mul(ZERO_BLOCK)
                .min(size);
            if start >= end {
                return;
            }
            match dirty.last_mut() {
                Some(last) if start <= last.1 => last.1 = last.1.max(end),
                _ => dirty.push((start, end)),
            }
        };
        for c in &map.changes {
            add(c.offset, c.end());
        }
        if size != parent_size {
            // From the block holding the last byte both volumes have, to the new end.
            let common = size.min(parent_size);
            add(common.saturating_sub(1), size);
        }
        let zeroed = map
            .changes
            .iter()
            .filter(|c| c.zeroed)
            .map(|c| (c.offset, c.end()))
            .collect();
        MapPlan {
            dirty,
            zeroed,
            sample_rate,
            seed,
        }
    }
}

/// The parent's extents, in order, as the feeder thread sends them.
pub(super) struct ParentExtents {
    /// The parent's manifest, named in errors.
    manifest_key: String,
    rx: Receiver<Result<Vec<(u64, Extent)>>>,
    buf: VecDeque<(u64, Extent)>,
    /// The extent taken last: a window may still be reading inside it.
    taken: Option<(u64, Extent)>,
}

impl ParentExtents {
    pub(super) fn new(manifest_key: String, rx: Receiver<Result<Vec<(u64, Extent)>>>) -> Self {
        ParentExtents {
            manifest_key,
            rx,
            buf: VecDeque::new(),
            taken: None,
        }
    }

    fn peek(&mut self) -> Result<Option<(u64, Extent)>> {
        while self.buf.is_empty() {
            match self.rx.recv() {
                Ok(batch) => self.buf.extend(batch?),
                Err(_) => return Ok(None),
            }
        }
        Ok(self.buf.front().copied())
    }

    fn next(&mut self) -> Result<Option<(u64, Extent)>> {
        self.peek()?;
        let e = self.buf.pop_front();
        self.taken = e.or(self.taken);
        Ok(e)
    }

    /// The end of the parent's zero extent holding volume offset `pos`, if it is in one
    /// (looking ahead without taking anything).
    fn zero_end_at(&mut self, pos: u64) -> Result<Option<u64>> {
        if let Some((off, e)) = self.taken
            && off <= pos
            && pos < off + e.len()
        {
            return Ok(matches!(e, Extent::Zero { .. }).then_some(off + e.len()));
        }
        let mut i = 0;
        loop {
            while i >= self.buf.len() {
                match self.rx.recv() {
                    Ok(batch) => self.buf.extend(batch?),
                    Err(_) => return Ok(None),
                }
            }
            let (off, e) = self.buf[i];
            if off > pos {
                return Ok(None);
            }
            if off + e.len() > pos {
                return Ok(matches!(e, Extent::Zero { .. }).then_some(off + e.len()));
            }
            i += 1;
        }
    }

    /// Puts extents taken back in front, in order.
    fn unread(&mut self, extents: impl DoubleEndedIterator<Item = (u64, Extent)>) {
        for e in extents.rev() {
            self.buf.push_front(e);
        }
    }
}

/// What the mapped reader did, for the report and the manifest.
#[derive(Debug, Default, Clone, Copy)]
pub struct MappedStats {
    /// Chunks reused from the parent without reading them.
    pub reused: u64,
    /// Of those, chunks read back by the sampled check.
    pub sampled: u64,
    /// Windows re-chunked.
    pub windows: u64,
}

/// The mapped reader: reads the windows, chunks them, and sends the pieces of the whole
/// volume, in order, to the main loop.
pub(super) struct MappedReader<'a> {
    pub(super) vol: VolumeFile<'a>,
    pub(super) params: ChunkerParams,
    pub(super) plan: &'a MapPlan,
    pub(super) ids: ChunkIds,
    pub(super) parent: ParentExtents,
    pub(super) tx: SyncSender<Result<Vec<Piece>>>,
}

/// The volume, read at offsets.
pub(super) struct VolumeFile<'a> {
    pub(super) file: &'a File,
    pub(super) name: &'a str,
    pub(super) size: u64,
    /// Bytes read, counted for the report.
    pub(super) bytes_read: &'a AtomicU64,
    /// Read buffers, reused once the chunks cut from them are packed: a fresh buffer costs a
    /// page fault and the kernel's zeroing per 4 KiB page, which `perf` put at ~20 % of a
    /// mapped backup's CPU on the 16 GiB benchmark volume.
    pub(super) small: BufferPool,
    pub(super) large: BufferPool,
}

fn fadvise(file: &File, advice: libc::c_int) {
    // SAFETY: posix_fadvise on a valid descriptor has no memory-safety preconditions.
    unsafe {
        libc::posix_fadvise(file.as_raw_fd(), 0, 0, advice);
    }
}

/// Readahead off while it lives.
struct RandomAccess<'a>(&'a File);

impl Drop for RandomAccess<'_> {
    fn drop(&mut self) {
        fadvise(self.0, libc::POSIX_FADV_NORMAL);
    }
}

/// The volume bytes a window has read lately, for the zero test of a candidate's block.
struct Recent {
    bufs: VecDeque<(u64, Bytes)>,
}

impl Recent {
    const KEEP: usize = 4;

    fn push(&mut self, at: u64, b: Bytes) {
        self.bufs.push_back((at, b));
        if self.bufs.len() > Self::KEEP {
            self.bufs.pop_front();
        }
    }

    /// The bytes `[from, to)` if one buffer holds them all.
    fn get(&self, from: u64, to: u64) -> Option<&[u8]> {
        self.bufs.iter().find_map(|(at, b)| {
            let end = at + b.len() as u64;
            (from >= *at && to <= end).then(|| &b[(from - at) as usize..(to - at) as usize])
        })
    }
}

impl<'a> VolumeFile<'a> {
    /// Read buffers kept for reuse, of each size class.
    pub(super) const POOLED: usize = 8;

    fn read(&self, at: u64, len: u64) -> Result<Bytes> {
        let (pool, class) = if len <= STEP_CLEAN {
            (&self.small, STEP_CLEAN)
        } else {
            (&self.large, STEP_DIRTY.max(len))
        };
        let mut buf = pool.take_empty(class as usize);
        buf.resize(len as usize, 0);
        let mut done = 0usize;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], at + done as u64) {
                Ok(0) => {
                    return Err(Error::VolumeTooShort {
                        volume: self.name.into(),
                        expected: self.size,
                        actual: at + done as u64,
                    });
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io("read volume", self.name, e)),
            }
        }
        self.bytes_read.fetch_add(len, Ordering::Relaxed);
        Ok(pool.freeze(buf, len as usize))
    }

    /// Turns the kernel's readahead off for the volume until the guard is dropped (the file
    /// description is shared with the volume a fallback full read then reads).
    fn random_access(&self) -> RandomAccess<'a> {
        fadvise(self.file, libc::POSIX_FADV_RANDOM);
        RandomAccess(self.file)
    }

    fn advise(&self, from: u64, to: u64) {
        let len = to.saturating_sub(from);
        if len > 0 {
            // SAFETY: posix_fadvise on a valid descriptor has no memory-safety preconditions.
            unsafe {
                libc::posix_fadvise(
                    self.file.as_raw_fd(),
                    from as libc::off_t,
                    len as libc::off_t,
                    libc::POSIX_FADV_WILLNEED,
                );
            }
        }
    }
}

impl MappedReader<'_> {
    /// The zeroed range (exact) holding `at`, if any.
    fn zeroed_at(&self, at: u64) -> Option<(u64, u64)> {
        let z = &self.plan.zeroed;
        let i = z.partition_point(|r| r.1 <= at);
        z.get(i).copied().filter(|r| r.0 <= at)
    }

    /// The start of the first zeroed range after `at`, or `limit`.
    fn next_zeroed(&self, at: u64, limit: u64) -> u64 {
        let z = &self.plan.zeroed;
        let i = z.partition_point(|r| r.1 <= at);
        z.get(i).map_or(limit, |r| r.0.max(at).min(limit))
    }

    /// Whether the 4 KiB block holding byte `at` has a non-zero byte: from `recent` when it
    /// holds the block, else read (a block inside a zeroed range is zeros).
    fn block_nonzero(&self, at: u64, recent: &Recent) -> Result<bool> {
        let start = at - at % ZERO_BLOCK;
        let end = (start + ZERO_BLOCK).min(self.vol.size);
        if let Some(b) = recent.get(start, end) {
            return Ok(!is_zero(b));
        }
        if self.zeroed_at(start).is_some_and(|z| z.1 >= end) {
            return Ok(false);
        }
        Ok(!is_zero(&self.vol.read(start, end - start)?))
    }

    fn sampled(&self, offset: u64) -> bool {
        if self.plan.sample_rate <= 0.0 {
            return false;
        }
        // splitmix64 of the offset and the seed: a fixed pseudo-random choice per backup.
        let mut z = offset ^ self.plan.seed;
        z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        ((z >> 11) as f64 / (1u64 << 53) as f64) < self.plan.sample_rate
    }

    /// Runs the reader to the end of the volume.
    pub(super) fn run(mut self) -> Result<MappedStats> {
        // The kernel's readahead would turn each small window read into megabytes (8 MiB
        // here: 2.8 GiB read for 164 MiB of changes on the 16 GiB benchmark volume); the
        // windows are announced ahead instead (`advise`).
        let _random = self.vol.random_access();
        let mut stats = MappedStats::default();
        let mut out: Vec<Piece> = Vec::with_capacity(BATCH);
        let mut samples: Vec<(u64, u32, Option<Hash>)> = Vec::new();
        // Everything before `pos` has been sent; `pos` is a fresh point when `anchored`.
        let mut pos = 0u64;
        let mut anchored = true;
        let mut behind: VecDeque<(u64, Extent)> = VecDeque::new();
        let dirty = self.plan.dirty.clone();
        // Dirty bytes before each range, for the readahead hints.
        let before: Vec<u64> = dirty
            .iter()
            .scan(0u64, |sum, (a, b)| {
                let here = *sum;
                *sum += b - a;
                Some(here)
            })
            .collect();
        let mut advised = 0usize;
        let mut i = 0usize;
        while i < dirty.len() {
            let (d0, _) = dirty[i];
            if dirty[i].1 <= pos {
                i += 1;
                continue;
            }
            let max = u64::from(self.params.max);
            while advised < dirty.len() && before[advised] - before[i] < ADVISE_BYTES {
                let (a, b) = dirty[advised];
                self.vol
                    .advise(a.saturating_sub(2 * max), b.saturating_add(2 * max));
                advised += 1;
            }
            // The parent's extents up to the range, the last few held back as candidates.
            while let Some((off, e)) = self.parent.peek()? {
                if off - off % ZERO_BLOCK + ZERO_BLOCK > d0 {
                    break;
                }
                self.parent.next()?;
                behind.push_back((off, e));
                if behind.len() > LOOKBEHIND {
                    let old = behind.pop_front().expect("not empty");
                    pos = old.0 + old.1.len();
                    anchored = false;
                    self.reuse(old, &mut out, &mut samples, &mut stats)?;
                }
            }
            // The window's start: the newest candidate that is a fresh point.
            let recent = Recent {
                bufs: VecDeque::new(),
            };
            let mut start = None;
            for k in (0..behind.len()).rev() {
                let off = behind[k].0;
                if (off == pos && anchored) || self.block_nonzero(off, &recent)? {
                    start = Some(k);
                    break;
                }
            }
            let start_at = match start {
                Some(k) => {
                    let before: Vec<_> = behind.drain(..k).collect();
                    for e in before {
                        self.reuse(e, &mut out, &mut samples, &mut stats)?;
                    }
                    behind[0].0
                }
                None if behind.is_empty() && anchored => pos,
                None => {
                    return Err(Error::Internal(format!(
                        "no chunk boundary to re-chunk the change at {d0} from"
                    )));
                }
            };
            self.parent.unread(behind.drain(..));
            stats.windows += 1;
            pos = self.window(start_at, &dirty, i, &mut out)?;
            anchored = true;
            self.flush(&mut out, false)?;
        }
        // The rest is the parent's (a volume whose size changed was read to its end).
        while pos < self.vol.size {
            let Some(e) = self.parent.next()? else {
                return Err(Error::Corrupt {
                    key: self.parent.manifest_key.clone(),
                    offset: pos,
                    reason: format!(
                        "the parent's extent list ends at volume offset {pos}, before the \
                         volume's {} bytes",
                        self.vol.size
                    ),
                });
            };
            pos = e.0 + e.1.len();
            self.reuse(e, &mut out, &mut samples, &mut stats)?;
        }
        self.flush(&mut out, true)?;
        self.check_samples(&samples)?;
        stats.sampled = samples.len() as u64;
        Ok(stats)
    }

    /// Sends a parent extent on as reused (sampling data chunks for the check).
    fn reuse(
        &self,
        (off, e): (u64, Extent),
        out: &mut Vec<Piece>,
        samples: &mut Vec<(u64, u32, Option<Hash>)>,
        stats: &mut MappedStats,
    ) -> Result<()> {
        match e {
            Extent::Data { len, id } => {
                stats.reused += 1;
                if self.sampled(off) {
                    samples.push((off, len, Some(id)));
                }
                out.push(Piece::Reused(len, id));
            }
            Extent::Zero { len } => {
                // A zero extent is sampled as the chunks it would be if it held data: each
                // average-sized stretch of it, at the same rate, must still read as zeros.
                if self.plan.sample_rate > 0.0 {
                    let unit = u64::from(self.params.avg);
                    let mut at = off;
                    while at < off + len {
                        let n = unit.min(off + len - at);
                        if self.sampled(at) {
                            samples.push((at, n as u32, None));
                        }
                        at += n;
                    }
                }
                out.push(Piece::Zero(len));
            }
        }
        self.flush(out, false)
    }

    fn flush(&self, out: &mut Vec<Piece>, all: bool) -> Result<()> {
        if out.len() >= BATCH || (all && !out.is_empty()) {
            let batch = std::mem::replace(out, Vec::with_capacity(BATCH));
            self.tx
                .send(Ok(batch))
                .map_err(|_| Error::Internal("backup main loop gone".into()))?;
        }
        Ok(())
    }

    /// Re-chunks from `start` (a fresh point) through dirty range `first` and any it runs
    /// into, until the pieces meet the parent's at a fresh point; returns that point (or the
    /// volume's end).
    fn window(
        &mut self,
        start: u64,
        dirty: &[(u64, u64)],
        first: usize,
        out: &mut Vec<Piece>,
    ) -> Result<u64> {
        let mut sp = if start == 0 {
            Splitter::new(self.params)
        } else {
            Splitter::resume_at(self.params, start)
        };
        let mut recent = Recent {
            bufs: VecDeque::new(),
        };
        let mut read_pos = start - start % ZERO_BLOCK;
        // Pieces cut but not yet passed on, and where the first of them starts.
        let mut cut: VecDeque<Piece> = VecDeque::new();
        let mut cut_at = start;
        // Dirty ranges taken into the window, and the end of the last.
        let mut j = first;
        let mut dirty_end = 0u64;
        loop {
            if read_pos >= self.vol.size {
                let mut tail = Vec::new();
                sp.finish(&mut tail);
                out.extend(cut.drain(..));
                out.extend(tail);
                return Ok(self.vol.size);
            }
            // Read (or hole) the next stretch.
            // Inside a dirty range, to its end (at most a large step); past it, small steps.
            let k = dirty.partition_point(|d| d.1 <= read_pos);
            let limit = match dirty.get(k) {
                Some(d) if d.0 <= read_pos => d.1.min(read_pos + STEP_DIRTY),
                _ => read_pos + STEP_CLEAN,
            };
            let mut new = Vec::new();
            // Unchanged bytes the parent holds as zeros are zeros: not read.
            let clean_zero = match dirty.get(k) {
                Some(d) if d.0 <= read_pos => None,
                next => self
                    .parent
                    .zero_end_at(read_pos)?
                    .map(|z| next.map_or(z, |d| z.min(d.0))),
            };
            if let Some(end) = clean_zero {
                let end = end.min(self.vol.size);
                sp.push_hole(end - read_pos, &mut new);
                read_pos = end;
            } else if let Some((_, zend)) = self.zeroed_at(read_pos) {
                let end = zend.min(self.vol.size);
                sp.push_hole(end - read_pos, &mut new);
                read_pos = end;
            } else {
                let end = limit.min(self.vol.size);
                let end = self.next_zeroed(read_pos, end);
                let b = self.vol.read(read_pos, end - read_pos)?;
                recent.push(read_pos, b.clone());
                sp.push_data(b, &mut new);
                read_pos = end;
            }
            cut.extend(new);
            // Look for the resynchronisation among the pieces cut so far.
            let mut edge = cut_at;
            let mut taken = 0usize;
            let mut found = None;
            for (n, p) in cut.iter().enumerate() {
                let e = edge + p.len();
                edge = e;
                let block = e - e % ZERO_BLOCK;
                if e >= self.vol.size || (block + ZERO_BLOCK > read_pos && read_pos < self.vol.size)
                {
                    break; // its block is not all read yet
                }
                taken = n + 1;
                while j < dirty.len() && dirty[j].0 < block + ZERO_BLOCK {
                    dirty_end = dirty_end.max(dirty[j].1);
                    j += 1;
                }
                if j == first || block < dirty_end {
                    continue; // before the range, or its block changed
                }
                // The parent's boundaries up to here are inside the window: passed over.
                while let Some((off, _)) = self.parent.peek()? {
                    if off >= e {
                        break;
                    }
                    self.parent.next()?;
                }
                if self.parent.peek()?.is_some_and(|(off, _)| off == e)
                    && self.block_nonzero(e, &recent)?
                {
                    found = Some((n + 1, e));
                    break;
                }
            }
            if let Some((n, e)) = found {
                out.extend(cut.drain(..n));
                return Ok(e);
            }
            // Pieces examined and passed over go on now.
            for p in cut.drain(..taken) {
                cut_at += p.len();
                out.push(p);
            }
        }
    }

    /// Reads the sampled chunks (in parallel, after a readahead hint) and checks their hashes.
    fn check_samples(&self, samples: &[(u64, u32, Option<Hash>)]) -> Result<()> {
        for (off, len, _) in samples {
            self.vol.advise(*off, off + u64::from(*len));
        }
        let (vol, ids) = (&self.vol, self.ids);
        samples.par_iter().try_for_each(|&(off, len, id)| {
            let b = vol.read(off, u64::from(len))?;
            let same = match id {
                Some(id) => ids.of(&b) == id,
                None => is_zero(&b),
            };
            if !same {
                return Err(Error::ChangeMapMissed {
                    volume: vol.name.into(),
                    offset: off,
                    len,
                    chunk: id.map_or_else(|| "(zeros)".into(), |id| id.to_hex()),
                });
            }
            Ok(())
        })
    }
}
