//! A Cinder backup restored into a new file: every object the plan (`cinder/plan.rs`) needs read
//! once, many at a time, and its pieces written at their offsets; zeros left as holes.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::store::ObjectStore;
use crate::store::direct::{self, Aligned};

use super::lanes::{LANES, PIECE, read_in_lanes};
use super::plan::Plan;
use super::{find_chain, volume_size};

/// What a restore of a Cinder backup did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CinderRestoreReport {
    pub backup_id: String,
    /// Backups applied (the chain, full first).
    pub chain: Vec<String>,
    pub size: u64,
    /// Data objects read and verified, and those skipped because newer layers cover them.
    pub objects_read: u64,
    pub objects_skipped: u64,
    /// Volume bytes written (zero blocks are left as holes).
    pub bytes_written: u64,
    pub elapsed_s: f64,
}

/// Where a restore writes: the target, and the same file opened for direct I/O with its
/// aligned buffer, unless the filesystem refuses direct I/O.
struct Output<'a> {
    file: &'a File,
    path: &'a Path,
    direct: Option<(File, Aligned)>,
}

impl Output<'_> {
    /// Writes `data` at `offset`: its whole blocks with direct I/O (the target is not read
    /// back soon, and on this project's VMs a new page-cache page costs more than the copy into
    /// a resident aligned buffer: `store/direct.rs`), the partial blocks at its ends through
    /// the page cache. A target that refuses direct I/O is written through the page cache.
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        let io = |e| Error::io("write restore target", self.path, e);
        if let Some((f, buf)) = &mut self.direct
            && let Some((start, end)) = direct::blocks(offset, data.len())
        {
            let (head, rest) = data.split_at((start - offset) as usize);
            let (whole, tail) = rest.split_at((end - start) as usize);
            match direct::write_blocks(f, buf, whole, start) {
                Ok(()) => {
                    self.file.write_all_at(head, offset).map_err(io)?;
                    return self.file.write_all_at(tail, end).map_err(io);
                }
                Err(e) if direct::unsupported(&e) => self.direct = None,
                Err(e) => return Err(io(e)),
            }
        }
        self.file.write_all_at(data, offset).map_err(io)?;
        start_writeback(self.file, offset, data.len() as u64);
        Ok(())
    }
}

/// Writes `data` (volume bytes from `offset`) at its offset, skipping zero blocks: runs of
/// non-zero 4 KiB blocks are written with one call each, zero blocks stay holes.
fn write_nonzero(out: &mut Output<'_>, offset: u64, data: &[u8]) -> Result<u64> {
    const BLOCK: usize = 4 << 10;
    static ZEROS: [u8; BLOCK] = [0; BLOCK];
    let mut written = 0u64;
    let mut run: Option<usize> = None;
    let mut flush = |from: usize, to: usize| -> Result<()> {
        out.write(offset + from as u64, &data[from..to])?;
        written += (to - from) as u64;
        Ok(())
    };
    for (i, block) in data.chunks(BLOCK).enumerate() {
        // A slice comparison is a vectorised memcmp; a byte-wise `all` is not.
        let zero = block == &ZEROS[..block.len()];
        match (zero, run) {
            (false, None) => run = Some(i * BLOCK),
            (true, Some(from)) => {
                flush(from, i * BLOCK)?;
                run = None;
            }
            _ => {}
        }
    }
    if let Some(from) = run {
        flush(from, data.len())?;
    }
    Ok(written)
}

/// Starts writing back `[offset, offset + len)` of `file` without waiting: the final fsync
/// then finds little left, instead of the whole volume (1.5 s of a 5.5 s restore of the
/// benchmark's image without it).
fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: sync_file_range on a valid descriptor; no memory is passed. Failure (not
    // supported here) only means the final fsync does all the work.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
    }
}

/// Each writer's aligned buffer for direct I/O.
const DIRECT_BUFFER: usize = 4 << 20;
/// Writer threads: direct writes wait for the device, so several keep several in flight.
const WRITERS: usize = 3;

/// An object (chain link, object index) and the volume ranges `[start, end)` it supplies.
type ObjectWork = ((usize, usize), Vec<(u64, u64)>);

/// The objects of `work` (each with the volume ranges it supplies) read and checked in lanes
/// (`cinder/lanes.rs`: several objects per thread, their MD5s computed together, in bounded
/// memory whatever the objects' sizes), and written by one writer thread: a writer held up by
/// the device does not stop the decompression, which goes on into the next pieces. Pieces
/// are written before their object's MD5 is checked; a failed check fails the restore, which
/// then removes its target. Returns the bytes written.
fn read_and_write(
    store: &dyn ObjectStore,
    links: &[&super::CinderBackup],
    work: &[ObjectWork],
    file: &File,
    target: &Path,
) -> Result<u64> {
    let pool = std::sync::Mutex::new(Vec::<Vec<u8>>::new());
    let (tx, rx) = std::sync::mpsc::sync_channel::<(usize, u64, Vec<u8>)>(2 * LANES);
    let objects: Vec<_> = work
        .iter()
        .enumerate()
        .map(|(i, ((link, object), _))| (i, links[*link], &links[*link].manifest.objects[*object]))
        .collect();
    let rx = std::sync::Mutex::new(rx);
    std::thread::scope(|s| {
        // Direct writes wait for the device: several writers keep several in flight.
        let writers: Vec<_> = (0..WRITERS)
            .map(|_| {
                s.spawn(|| -> Result<u64> {
                    let direct = direct::open(target)
                        .map_err(|e| Error::io("open restore target", target, e))?
                        .zip(Aligned::new(DIRECT_BUFFER));
                    let mut out = Output {
                        file,
                        path: target,
                        direct,
                    };
                    let mut n = 0;
                    loop {
                        let next = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                        let Ok((i, at, piece)) = next else {
                            return Ok(n);
                        };
                        let ((link, object), ranges) = &work[i];
                        let o = &links[*link].manifest.objects[*object];
                        // The piece's volume range; what of it the plan takes from this object.
                        let start = o.offset + at;
                        let end = start + piece.len() as u64;
                        for &(s, e) in ranges {
                            let (s, e) = (s.max(start), e.min(end));
                            if s < e {
                                let part = &piece[(s - start) as usize..(e - start) as usize];
                                n += write_nonzero(&mut out, s, part)?;
                            }
                        }
                        pool.lock().unwrap_or_else(|p| p.into_inner()).push(piece);
                    }
                })
            })
            .collect();
        let buffers = || {
            pool.lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop()
                .unwrap_or_else(|| Vec::with_capacity(PIECE))
        };
        let tx = std::sync::Mutex::new(tx);
        let emit = |i: usize, at: u64, piece: Vec<u8>| -> Result<()> {
            let tx = tx.lock().unwrap_or_else(|p| p.into_inner()).clone();
            // The writer has stopped (it failed): its error is the cause.
            tx.send((i, at, piece))
                .map_err(|_| Error::Cancelled { what: "restore" })
        };
        let read = read_in_lanes(
            store,
            &objects,
            rayon::current_num_threads(),
            &buffers,
            &emit,
        );
        drop(tx);
        let mut written = Ok(0u64);
        for w in writers {
            let r = w
                .join()
                .unwrap_or_else(|_| Err(Error::Internal("the restore's writer panicked".into())));
            written = match (written, r) {
                (Ok(a), Ok(b)) => Ok(a + b),
                (Err(e), _) | (_, Err(e)) => Err(e),
            };
        }
        match (read, written) {
            (Ok(()), written) => written,
            (Err(Error::Cancelled { .. }), Err(e)) => Err(e),
            (Err(e), _) => Err(e),
        }
    })
}

/// Restores Cinder backup `backup_id`, found under `prefix` of `store`, into a new file
/// `target`. A restore that fails removes the target it created: never a half-written volume.
pub fn restore_cinder_backup(
    store: &dyn ObjectStore,
    prefix: &str,
    backup_id: &str,
    target: &Path,
) -> Result<CinderRestoreReport> {
    let started = std::time::Instant::now();
    let backups = super::readable_backups(store, prefix)?;
    let links = find_chain(&backups, backup_id)?;
    let size = volume_size(&links);
    let plan = Plan::new(&links, size)?;
    let file = File::options()
        .write(true)
        .create_new(true)
        .open(target)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => Error::TargetExists {
                path: target.into(),
            },
            _ => Error::io("create restore target", target, e),
        })?;
    let filled = (|| -> Result<CinderRestoreReport> {
        file.set_len(size)
            .map_err(|e| Error::io("size restore target", target, e))?;
        let mut by_object: BTreeMap<(usize, usize), Vec<(u64, u64)>> = BTreeMap::new();
        for p in &plan.pieces {
            by_object
                .entry((p.link, p.object))
                .or_default()
                .push((p.start, p.end));
        }
        let work: Vec<_> = by_object.into_iter().collect();
        let written = read_and_write(store, &links, &work, &file, target)?;
        file.sync_all()
            .map_err(|e| Error::io("flush restore target", target, e))?;
        Ok(CinderRestoreReport {
            backup_id: backup_id.into(),
            chain: links.iter().map(|b| b.manifest.backup_id.clone()).collect(),
            size,
            objects_read: work.len() as u64,
            objects_skipped: plan.objects_skipped,
            bytes_written: written,
            elapsed_s: started.elapsed().as_secs_f64(),
        })
    })();
    if filled.is_err() {
        let _ = std::fs::remove_file(target);
    }
    filled
}
