//! The restore's target: a new sparse file (written under a temporary name, renamed when
//! complete), an existing file, or a block device; whole blocks written with direct I/O.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use super::TargetMode;
use super::stripe::Stripe;
use crate::error::{Error, Result};
use crate::store::direct;

/// Largest write through the page cache. The kernel sizes new cache pages (folios) by the
/// write, and on the VMs measured here large ones cost far more: `dd` of 1.4 GB into a sparse
/// file took 0.26–0.56 s of system time in writes of 16–512 KiB (one outlier of 2.3 s) and
/// 1.3–3.6 s in writes of 1 or 32 MiB. A `--buffered` restore of day 2 took 0.42–0.57 s of
/// system time in 256–512 KiB pieces against 1.7–3.3 s in whole regions.
pub(super) const PAGE_CACHE_PIECE: usize = 512 << 10;

/// Where a restore writes.
pub(super) struct Target {
    pub(super) file: File,
    /// Where the file is being written (a temporary name for new files).
    pub(super) path: PathBuf,
    /// Final name if `path` is temporary.
    pub(super) rename_to: Option<PathBuf>,
    pub(super) is_file: bool,
    pub(super) write_zeros: bool,
    /// The target opened again for direct I/O, unless the restore is buffered or the target
    /// refuses it (see [`Target::direct`]).
    pub(super) direct: Option<File>,
}

impl Target {
    pub(super) fn new(
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

    pub(super) fn open(path: &Path, mode: TargetMode, size: u64) -> Result<Target> {
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
            TargetMode::Existing | TargetMode::Zeroed => {
                let file = OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(path)
                    .map_err(|e| Error::io("open restore target", path, e))?;
                file.set_len(size)
                    .map_err(|e| Error::io("size restore target", path, e))?;
                let write_zeros = mode == TargetMode::Existing;
                Ok(Target::new(file, path.into(), None, true, write_zeros))
            }
        }
    }

    /// Writes through the page cache, in pieces of at most [`PAGE_CACHE_PIECE`].
    pub(super) fn write(&self, data: &[u8], offset: u64) -> Result<()> {
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
    pub(super) fn direct(&mut self) {
        self.direct = direct::open(&self.path).ok().flatten();
    }

    /// Writes one region of a stripe: its whole blocks with direct I/O while the target takes
    /// it, the partial blocks at its ends through the page cache (the neighbouring region,
    /// possibly in another stripe, shares them, and direct I/O writes whole blocks only).
    /// `direct` is cleared when the target refuses direct I/O. Returns the bytes written with
    /// direct I/O.
    pub(super) fn write_region(
        &self,
        stripe: &Stripe,
        offset: u64,
        len: u64,
        direct: &mut bool,
    ) -> Result<u64> {
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
                    self.write(&data[e..], end)?;
                    return Ok(end - start);
                }
                Err(e) if direct::unsupported(&e) => *direct = false,
                Err(e) => return Err(Error::io("write restore target", &self.path, e)),
            }
        }
        self.write(data, offset)?;
        Ok(0)
    }

    /// Starts writing back what was written so far, without waiting for the I/O.
    pub(super) fn start_writeback(&self) {
        // SAFETY: sync_file_range on a valid descriptor; no memory is passed. Failure (not
        // supported here) only means the final fsync does all the work.
        unsafe {
            libc::sync_file_range(self.file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
        }
    }

    /// Makes `len` bytes at `offset` read as zeros: a punched hole on a file, `BLKZEROOUT` on
    /// a block device (which may unmap the range instead of writing it), written zeros where
    /// neither is supported.
    pub(super) fn zero(&self, offset: u64, len: u64) -> Result<()> {
        if !self.is_file && blk_zero_out(&self.file, offset, len) {
            return Ok(());
        }
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
    pub(super) fn finish(self, sync: bool) -> Result<()> {
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

    pub(super) fn abandon(self) {
        if self.rename_to.is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// `BLKZEROOUT` on `len` bytes at `offset` of a block device; false where it is not supported
/// (the caller then writes zeros).
pub(super) fn blk_zero_out(device: &File, offset: u64, len: u64) -> bool {
    /// `_IO(0x12, 127)`: zero a byte range of a block device.
    const BLKZEROOUT: libc::c_ulong = 0x127f;
    let range: [u64; 2] = [offset, len];
    // SAFETY: BLKZEROOUT reads two u64 (start, length) from a live array.
    unsafe { libc::ioctl(device.as_raw_fd(), BLKZEROOUT, range.as_ptr()) == 0 }
}
