//! Differential restore: an existing volume brought back to a backup by rewriting only what
//! differs (rustic's restore-in-place, for block volumes).
//!
//! The target is read along the backup's own extents, a group of them (up to [`GROUP_BYTES`]
//! of volume) at a time: each data extent's bytes are hashed with the container's chunk-id
//! function (BLAKE3, keyed in an encrypted container) and compared with the extent's id; each
//! zero extent is checked for zeros. Only the chunks whose ids differ are fetched from the
//! container (ranged reads, each chunk checked against its id as any restore checks it), and
//! of each only the 4 KiB blocks that differ are written; zero extents that are not zero are zeroed (a punched hole on a file,
//! `BLKZEROOUT` on a block device, written zeros where neither works). The ranges rewritten in
//! a group are then flushed to stable storage, dropped from the page cache and read back from
//! the device: a restore reports success only for a target that now holds the backup.
//!
//! Before anything is written the whole backup is checked to be restorable (every chunk
//! indexed) and a block device to be large enough. A regular file target ends at the volume's
//! size, as any restore onto an existing file does.
//!
//! Cost: the target is read once and hashed (BLAKE3 on every core), what was rewritten is read
//! back once, and the container is read only for the chunks that differ; a target that differs by 1 % is restored by writing about
//! 1 % of the volume.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::Path;
use std::time::Instant;

use bytes::Bytes;
use rayon::prelude::*;
use serde::Serialize;

use super::check_complete;
use super::locations::{DEFAULT_MEM_ENTRIES, LocationTable};
use crate::container::fetch::{MAX_RANGE_RAW, plan_ranges};
use crate::container::{Container, LEASE_TTL, LeaseGuard};
use crate::error::{Error, Result};
use crate::format::extent_list::Extent;
use crate::ids::{ChunkIds, Hash};
use crate::store::RequestCounts;

/// Volume bytes read from the target and compared per group of extents.
pub const GROUP_BYTES: u64 = 32 << 20;

/// What a differential restore did (the CLI's `restore --differential --json`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct DifferentialReport {
    pub backup_id: String,
    pub size: u64,
    /// Target bytes read and compared with the backup.
    pub bytes_compared: u64,
    /// Bytes rewritten and then read back from the device (flushed and dropped from the page
    /// cache first) and checked.
    pub bytes_checked: u64,
    /// Chunks whose bytes on the target differed from the backup's (each fetched from the
    /// container), and the bytes written for them: only their 4 KiB blocks that differed.
    pub chunks_rewritten: u64,
    pub bytes_written: u64,
    /// Zero-extent bytes that were not zero on the target, zeroed.
    pub bytes_zeroed: u64,
    pub requests: RequestCounts,
    pub elapsed_s: f64,
}

/// Brings the existing volume `target` (a regular file or a block device) back to backup
/// `backup_id`, writing only what differs, then checks it. `progress` is told the volume bytes
/// compared so far; `cancel`, checked before each group, stops the restore with
/// [`Error::Cancelled`] (the target is then partly repaired: every range rewritten so far
/// holds the backup's bytes).
pub fn run_restore_differential(
    container: &Container,
    backup_id: &str,
    target: &Path,
    progress: Option<&(dyn Fn(u64) + Sync)>,
    cancel: Option<&std::sync::atomic::AtomicBool>,
) -> Result<DifferentialReport> {
    let started = Instant::now();
    let requests_before = container.store().requests();
    let (manifest, _) = container.read_manifest(backup_id)?;
    let _lease = LeaseGuard::take(container, backup_id, LEASE_TTL).ok();
    let index = LocationTable::for_backup(container, &manifest, DEFAULT_MEM_ENTRIES)?;
    check_complete(container, &index, &manifest)?;
    let ids = container.keys()?.chunks().ids;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(target)
        .map_err(|e| Error::io("open restore target", target, e))?;
    let meta = file
        .metadata()
        .map_err(|e| Error::io("open restore target", target, e))?;
    let is_block = meta.file_type().is_block_device();
    if is_block {
        let actual = device_size(&file).map_err(|e| Error::io("size restore target", target, e))?;
        if actual < manifest.size {
            return Err(Error::TargetTooSmall {
                path: target.into(),
                needed: manifest.size,
                actual,
            });
        }
    } else if !meta.is_file() {
        return Err(Error::io(
            "open restore target",
            target,
            std::io::Error::other("neither a regular file nor a block device"),
        ));
    } else {
        file.set_len(manifest.size)
            .map_err(|e| Error::io("size restore target", target, e))?;
    }
    let t = Differ {
        container,
        index: &index,
        backup_id,
        ids,
        file: &file,
        path: target,
        is_block,
    };
    t.advise(0, 0, libc::POSIX_FADV_SEQUENTIAL);
    let mut report = DifferentialReport {
        backup_id: backup_id.into(),
        size: manifest.size,
        ..Default::default()
    };
    t.walk(&manifest, |group, start, data| {
        if cancel.is_some_and(|c| c.load(std::sync::atomic::Ordering::Relaxed)) {
            return Err(Error::Cancelled { what: "restore" });
        }
        report.bytes_compared += data.len() as u64;
        let r = t.repair(group, start, data)?;
        report.bytes_written += r.written;
        report.bytes_zeroed += r.zeroed;
        report.chunks_rewritten += r.chunks;
        report.bytes_checked += r.checked;
        if let Some(p) = progress {
            p(report.bytes_compared);
        }
        Ok(())
    })?;
    file.sync_all()
        .map_err(|e| Error::io("sync restore target", target, e))?;
    report.requests = container.store().requests().since(&requests_before);
    report.elapsed_s = started.elapsed().as_secs_f64();
    Ok(report)
}

/// What repairing one group did.
#[derive(Default)]
struct Repaired {
    written: u64,
    zeroed: u64,
    chunks: u64,
    checked: u64,
}

/// One extent of a group whose bytes on the target differ from the backup's.
struct Difference {
    at: u64,
    extent: Extent,
}

struct Differ<'a> {
    container: &'a Container,
    index: &'a LocationTable,
    backup_id: &'a str,
    ids: ChunkIds,
    file: &'a File,
    path: &'a Path,
    is_block: bool,
}

impl Differ<'_> {
    /// Calls `f(group, group_start, target_bytes)` for the backup's extents, a group at a time,
    /// with the target's bytes of the group's range.
    fn walk(
        &self,
        manifest: &crate::format::manifest::Manifest,
        mut f: impl FnMut(&[(u64, Extent)], u64, &[u8]) -> Result<()>,
    ) -> Result<()> {
        let mut group: Vec<(u64, Extent)> = Vec::new();
        let mut buf = Vec::new();
        let mut run = |group: &mut Vec<(u64, Extent)>, buf: &mut Vec<u8>| -> Result<()> {
            let Some(&(start, _)) = group.first() else {
                return Ok(());
            };
            let end = group.last().map_or(start, |(at, e)| at + e.len());
            buf.resize((end - start) as usize, 0);
            // Several reads in flight: a device serves a queue faster than one read at a time
            // (1.0 GB/s with one, against 1.4 GB/s with a queue, on this machine's disk).
            const PIECE: usize = 4 << 20;
            buf.par_chunks_mut(PIECE)
                .enumerate()
                .try_for_each(|(i, piece)| {
                    self.file.read_exact_at(piece, start + (i * PIECE) as u64)
                })
                .map_err(|e| Error::io("read restore target", self.path, e))?;
            // The kernel reads the next group while this one is hashed.
            self.advise(end, GROUP_BYTES, libc::POSIX_FADV_WILLNEED);
            f(group, start, buf)?;
            group.clear();
            Ok(())
        };
        let mut bytes = 0u64;
        self.container.walk_extents(self.index, manifest, |at, e| {
            group.push((at, *e));
            bytes += e.len();
            if bytes >= GROUP_BYTES {
                run(&mut group, &mut buf)?;
                bytes = 0;
            }
            Ok(())
        })?;
        run(&mut group, &mut buf)
    }

    /// Passes `advice` for `len` bytes at `offset` of the target to the kernel (best effort).
    fn advise(&self, offset: u64, len: u64, advice: libc::c_int) {
        if let (Ok(o), Ok(l)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) {
            // SAFETY: posix_fadvise on a valid descriptor; no memory is passed.
            unsafe { libc::posix_fadvise(self.file.as_raw_fd(), o, l, advice) };
        }
    }

    /// The extents of `group` whose bytes in `data` (the target from `start`) differ.
    fn differences(&self, group: &[(u64, Extent)], start: u64, data: &[u8]) -> Vec<Difference> {
        group
            .par_iter()
            .filter_map(|&(at, e)| {
                let s = (at - start) as usize;
                let bytes = &data[s..s + e.len() as usize];
                let same = match e {
                    Extent::Data { id, .. } => self.ids.of(bytes) == id,
                    Extent::Zero { .. } => is_zero(bytes),
                };
                (!same).then_some(Difference { at, extent: e })
            })
            .collect()
    }

    /// Rewrites what differs in `group` (the target's bytes from `start` are `data`), then
    /// reads it back from the device and checks it.
    fn repair(&self, group: &[(u64, Extent)], start: u64, data: &[u8]) -> Result<Repaired> {
        let diffs = self.differences(group, start, data);
        let mut zeroed = 0;
        // (volume offset, expected bytes: None for zeros, length)
        let mut rewritten: Vec<(u64, Option<Bytes>, usize)> = Vec::new();
        let mut at_of: HashMap<Hash, u64> = HashMap::new();
        for d in &diffs {
            match d.extent {
                Extent::Zero { len } => {
                    // Only the 4 KiB blocks that are not zero.
                    let s = (d.at - start) as usize;
                    for (from, to) in nonzero_blocks(d.at, &data[s..s + len as usize]) {
                        self.zero(d.at + from as u64, (to - from) as u64)?;
                        zeroed += (to - from) as u64;
                        rewritten.push((d.at + from as u64, None, to - from));
                    }
                }
                Extent::Data { id, .. } => {
                    at_of.entry(id).or_insert(d.at);
                }
            }
        }
        if at_of.is_empty() {
            let checked = self.check_rewritten(&rewritten)?;
            return Ok(Repaired {
                zeroed,
                checked,
                ..Default::default()
            });
        }
        let wanted: Vec<Hash> = at_of.keys().copied().collect();
        let ranges = plan_ranges(self.index, &wanted, MAX_RANGE_RAW, |id| {
            Error::ChunkNotIndexed {
                backup_id: self.backup_id.into(),
                chunk: id.to_hex(),
                volume_offset: at_of.get(id).copied().unwrap_or(0),
            }
        })?;
        let fetched: Vec<Vec<(Hash, Bytes)>> = self.container.on_io_pool(|| {
            ranges
                .par_iter()
                .map(|r| {
                    self.container
                        .fetch_range(r, |id| at_of.get(id).copied().unwrap_or(0))
                })
                .collect::<Result<_>>()
        })?;
        let chunks: HashMap<Hash, Bytes> = fetched.into_iter().flatten().collect();
        let mut written = 0;
        let mut count = 0;
        for d in &diffs {
            if let Extent::Data { id, len } = d.extent {
                let chunk = chunks
                    .get(&id)
                    .ok_or_else(|| Error::Internal(format!("chunk {id} not fetched")))?;
                if chunk.len() != len as usize {
                    return Err(Error::corrupt(
                        &crate::format::keys::manifest_key(self.backup_id),
                        0,
                        format!(
                            "the extent at volume offset {} has {len} bytes, its chunk {id} {}",
                            d.at,
                            chunk.len()
                        ),
                    ));
                }
                // Only the 4 KiB blocks that differ are written: a chunk hit by one bad
                // block costs one block of writes, not the chunk.
                let s = (d.at - start) as usize;
                let have = &data[s..s + len as usize];
                for (from, to) in differing_blocks(d.at, have, chunk) {
                    self.file
                        .write_all_at(&chunk[from..to], d.at + from as u64)
                        .map_err(|e| Error::io("write restore target", self.path, e))?;
                    written += (to - from) as u64;
                    rewritten.push((d.at + from as u64, Some(chunk.slice(from..to)), to - from));
                }
                count += 1;
            }
        }
        let checked = self.check_rewritten(&rewritten)?;
        Ok(Repaired {
            written,
            zeroed,
            chunks: count,
            checked,
        })
    }

    /// Flushes the ranges just rewritten, drops them from the page cache and reads them back
    /// from the device: each must hold what was written. Returns the bytes checked.
    fn check_rewritten(&self, rewritten: &[(u64, Option<Bytes>, usize)]) -> Result<u64> {
        if rewritten.is_empty() {
            return Ok(0);
        }
        self.file
            .sync_data()
            .map_err(|e| Error::io("sync restore target", self.path, e))?;
        // Many reads in flight (on the container's I/O pool, whose threads are meant to wait):
        // the ranges are scattered, and a device serves a queue of small reads far faster
        // than one at a time.
        self.container.on_io_pool(|| {
            rewritten.par_iter().try_for_each(|(at, want, len)| {
                // Failure only means the range is read back from the cache.
                self.advise(*at, *len as u64, libc::POSIX_FADV_DONTNEED);
                let mut buf = vec![0u8; *len];
                self.file
                    .read_exact_at(&mut buf, *at)
                    .map_err(|e| Error::io("read restore target", self.path, e))?;
                let same = match want {
                    Some(w) => buf[..] == w[..],
                    None => is_zero(&buf),
                };
                if same {
                    return Ok(());
                }
                Err(Error::io(
                    "check restore target",
                    self.path,
                    std::io::Error::other(format!(
                        "{len} bytes at volume offset {at} read back differently than they \
                         were written"
                    )),
                ))
            })
        })?;
        let checked = rewritten.iter().map(|(_, _, len)| *len as u64).sum();
        Ok(checked)
    }

    /// Makes `len` bytes at `offset` read as zeros: `BLKZEROOUT` on a block device, a punched
    /// hole on a file, written zeros where neither is supported.
    fn zero(&self, offset: u64, len: u64) -> Result<()> {
        let fd = self.file.as_raw_fd();
        let done = if self.is_block {
            super::target::blk_zero_out(self.file, offset, len)
        } else {
            match (libc::off_t::try_from(offset), libc::off_t::try_from(len)) {
                // SAFETY: fallocate on a valid descriptor; no memory is passed.
                (Ok(o), Ok(l)) => unsafe {
                    libc::fallocate(
                        fd,
                        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                        o,
                        l,
                    ) == 0
                },
                _ => false,
            }
        };
        if done {
            return Ok(());
        }
        static ZEROS: [u8; 1 << 16] = [0; 1 << 16];
        let mut at = 0u64;
        while at < len {
            let n = (len - at).min(ZEROS.len() as u64) as usize;
            self.file
                .write_all_at(&ZEROS[..n], offset + at)
                .map_err(|e| Error::io("write restore target", self.path, e))?;
            at += n as u64;
        }
        Ok(())
    }
}

/// Granularity of the writes: the volume's blocks of this size (at multiples of it) that
/// differ are rewritten whole.
const BLOCK: usize = 4096;

/// The blocks of `len` bytes at volume offset `base`, as `(from, to)` relative to `base`: cut
/// at the volume's 4 KiB boundaries, so a rewritten block is a device block.
fn blocks(base: u64, len: usize) -> impl Iterator<Item = (usize, usize)> {
    let first = (BLOCK - (base % BLOCK as u64) as usize).min(len);
    std::iter::once((0, first))
        .chain(
            (first..len)
                .step_by(BLOCK)
                .map(move |f| (f, (f + BLOCK).min(len))),
        )
        .filter(|(f, t)| f < t)
}

/// Runs `[from, to)` (relative to `base`, the volume offset of both) of blocks where `have`
/// and `want` (equal lengths) differ.
fn differing_blocks(base: u64, have: &[u8], want: &[u8]) -> Vec<(usize, usize)> {
    runs(blocks(base, want.len()).map(|(f, t)| (have[f..t] != want[f..t], f, t)))
}

/// Runs `[from, to)` (relative to `base`) of blocks of `have` that are not all zeros.
fn nonzero_blocks(base: u64, have: &[u8]) -> Vec<(usize, usize)> {
    runs(blocks(base, have.len()).map(|(f, t)| (!is_zero(&have[f..t]), f, t)))
}

/// Merges consecutive blocks flagged `true` (each `(flag, from, to)`) into byte runs.
fn runs(blocks: impl Iterator<Item = (bool, usize, usize)>) -> Vec<(usize, usize)> {
    let mut out: Vec<(usize, usize)> = Vec::new();
    for (flag, from, to) in blocks {
        if flag {
            match out.last_mut() {
                Some(last) if last.1 == from => last.1 = to,
                _ => out.push((from, to)),
            }
        }
    }
    out
}

fn is_zero(data: &[u8]) -> bool {
    static ZEROS: [u8; 1 << 16] = [0; 1 << 16];
    data.chunks(ZEROS.len()).all(|c| c == &ZEROS[..c.len()])
}

/// The size of a block device (its end, as `lseek` finds it).
fn device_size(file: &File) -> std::io::Result<u64> {
    use std::io::{Seek, SeekFrom};
    let mut f = file;
    f.seek(SeekFrom::End(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differing_and_nonzero_blocks_merge_into_runs() {
        let want = vec![1u8; 5 * BLOCK + 100];
        let mut have = want.clone();
        have[10] = 0; // block 0
        have[BLOCK + 1] = 0; // block 1: merges with 0
        have[3 * BLOCK] = 0; // block 3
        have[5 * BLOCK + 99] = 0; // the short last block
        assert_eq!(
            differing_blocks(0, &have, &want),
            vec![
                (0, 2 * BLOCK),
                (3 * BLOCK, 4 * BLOCK),
                (5 * BLOCK, 5 * BLOCK + 100)
            ]
        );
        // At volume offset 100: blocks are cut at the volume's 4 KiB boundaries.
        assert_eq!(
            differing_blocks(100, &have, &want),
            vec![
                (0, 2 * BLOCK - 100),
                (3 * BLOCK - 100, 4 * BLOCK - 100),
                (5 * BLOCK - 100, 5 * BLOCK + 100)
            ]
        );
        let mut zeros = vec![0u8; 3 * BLOCK];
        assert!(nonzero_blocks(0, &zeros).is_empty());
        zeros[2 * BLOCK + 5] = 9;
        assert_eq!(nonzero_blocks(0, &zeros), vec![(2 * BLOCK, 3 * BLOCK)]);
        assert_eq!(
            nonzero_blocks(5, &zeros),
            vec![(2 * BLOCK - 5, 3 * BLOCK - 5)]
        );
        assert_eq!(blocks(4095, 2).collect::<Vec<_>>(), vec![(0, 1), (1, 2)]);
        assert_eq!(blocks(0, 0).count(), 0);
    }
}
