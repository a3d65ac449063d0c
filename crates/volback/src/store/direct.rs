//! Direct I/O (`O_DIRECT`): writing large amounts of data to a file without the page cache.
//!
//! Two writers use it:
//! - A filesystem container's packs, which are fsync'd before they are renamed into place: the
//!   bytes must reach the disk before the backup goes on, so copying them into the page cache
//!   first buys nothing.
//! - A restore's target (unless `--buffered`): a restored volume is rarely read again soon,
//!   and a volume of many GiB written through the page cache would evict the host's cache;
//!   Cinder copies volumes with `dd oflag=direct` for the same reason.
//!
//! Through the page cache every byte is first copied into a newly allocated cache page, with the
//! filesystem's delayed-allocation bookkeeping for each page, and written back later. On the
//! shared VMs this project is measured on, a new page costs far more than its copy, and by an
//! amount that changes from minute to minute: system time of the same restore ranged from 0.5
//! to 2.9 s within one quarter of an hour. With direct I/O the disk reads the bytes from a
//! reused buffer that is already resident (see `docs/performance.md`, "Decisions").
//!
//! Direct I/O wants the buffer's address, the file offset and the length aligned to the
//! device's logical block size. A pack is a `Bytes` with no such alignment, so it is copied into
//! an aligned buffer first ([`write_file`]), a user-space copy into memory that stays resident.
//! A restore decodes into an [`Aligned`] stripe laid out like the file, and writes from it
//! directly. Parts of a write that do not cover whole blocks are left to the caller, which
//! writes them through the page cache.
//!
//! Filesystems without direct I/O (tmpfs before Linux 6.6, some FUSE and network filesystems)
//! refuse it with `EINVAL`; callers then write through the page cache as before.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

/// Offsets, lengths and buffer addresses are multiples of this: the largest logical block size
/// direct I/O asks for on common Linux filesystems and block devices.
pub const ALIGN: u64 = 4096;
/// Bytes copied into the aligned buffer and written per request.
const BUF: usize = 4 << 20;

/// A zero-initialised buffer whose address is a multiple of [`ALIGN`].
pub struct Aligned {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

// SAFETY: the buffer is plain memory owned by this value alone.
unsafe impl Send for Aligned {}
// SAFETY: shared references read it; writers through `as_mut_ptr` keep to disjoint parts.
unsafe impl Sync for Aligned {}

impl Aligned {
    fn layout(len: usize) -> Option<std::alloc::Layout> {
        std::alloc::Layout::from_size_align(len.max(1), ALIGN as usize).ok()
    }

    /// A new buffer of `len` bytes, or None if the allocator has none (the caller writes
    /// through the page cache instead).
    pub fn new(len: usize) -> Option<Self> {
        let layout = Self::layout(len)?;
        // SAFETY: the layout has a non-zero size. Zeroed memory is only mapped, not touched,
        // until it is written.
        let ptr = std::ptr::NonNull::new(unsafe { std::alloc::alloc_zeroed(layout) })?;
        Some(Aligned { ptr, len })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the allocation is `len` initialised bytes, owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The buffer's address, for callers that hand out disjoint parts of it to several
    /// threads at once (see `restore::Stripe::claim`).
    pub fn as_mut_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: the allocation is `len` initialised bytes, owned by self and borrowed
        // mutably here only.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        if let Some(layout) = Self::layout(self.len) {
            // SAFETY: allocated in `new` with the same layout.
            unsafe { std::alloc::dealloc(self.ptr.as_ptr(), layout) }
        }
    }
}

/// Whether an error means "direct I/O is not supported here" rather than a failed write.
pub fn unsupported(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EINVAL)
}

/// Opens `path` for writing with direct I/O; `Ok(None)` where the filesystem refuses it.
pub fn open(path: &Path) -> io::Result<Option<File>> {
    match OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
    {
        Ok(f) => Ok(Some(f)),
        Err(e) if unsupported(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The unit [`blocks`] rounds to: [`ALIGN`], or the page size where pages are larger (64 KiB
/// on some arm64 and ppc64 kernels). A direct write must not share a page-cache page with the
/// buffered writes of a neighbouring region's partial blocks: the kernel invalidates the
/// pages a direct write covers, and a page dirtied meanwhile could later be written back over
/// the direct write's bytes.
pub fn block() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    ALIGN.max(u64::try_from(page).unwrap_or(0))
}

/// The whole blocks of `len` bytes at `offset`: the range `[start, end)` of file offsets that
/// a direct write can cover without sharing a page with bytes outside it, or None if it holds
/// no whole block (see [`block`]).
pub fn blocks(offset: u64, len: usize) -> Option<(u64, u64)> {
    let b = block();
    let start = offset.div_ceil(b) * b;
    let end = (offset + len as u64) / b * b;
    (end > start).then_some((start, end))
}

/// Writes `data` at `offset` of `f` (opened by [`open`]) in aligned pieces through `buf`.
/// `offset` must be a multiple of [`ALIGN`]; if `data`'s length is not, its last block is
/// padded with zeros, which the caller must overwrite or cut off (`set_len`).
pub fn write_blocks(f: &File, buf: &mut Aligned, data: &[u8], offset: u64) -> io::Result<()> {
    debug_assert_eq!(offset % ALIGN, 0);
    let buf = buf.as_mut_slice();
    let mut at = 0usize;
    while at < data.len() {
        let n = (data.len() - at).min(buf.len());
        let padded = (n as u64).div_ceil(ALIGN) as usize * ALIGN as usize;
        buf[..n].copy_from_slice(&data[at..at + n]);
        buf[n..padded].fill(0);
        f.write_all_at(&buf[..padded], offset + at as u64)?;
        at += n;
    }
    Ok(())
}

thread_local! {
    /// The buffer of [`write_file`], one per thread that writes objects.
    static FILE_BUFFER: std::cell::RefCell<Option<Aligned>> = const { std::cell::RefCell::new(None) };
}

/// Objects smaller than this are written through the page cache by [`write_file`]: manifests,
/// index segments and small packs gain nothing worth a second open.
pub const FILE_MIN: usize = 1 << 20;

/// Writes `data` to the empty file at `path` with direct I/O and sets its length. Returns
/// `Ok(false)`, having written nothing, where direct I/O is unsupported or `data` is shorter
/// than [`FILE_MIN`]; the caller then writes it the usual way. The caller still fsyncs the
/// file: direct I/O puts the data on the disk, not the file's size and block map.
pub fn write_file(path: &Path, data: &[u8]) -> io::Result<bool> {
    if data.len() < FILE_MIN {
        return Ok(false);
    }
    let Some(f) = open(path)? else {
        return Ok(false);
    };
    FILE_BUFFER.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Aligned::new(BUF);
        }
        let Some(buf) = slot.as_mut() else {
            return Ok(false);
        };
        match write_blocks(&f, buf, data, 0) {
            Ok(()) => {}
            // Refused at the first write: nothing was written.
            Err(e) if unsupported(&e) && f.metadata()?.len() == 0 => return Ok(false),
            Err(e) => return Err(e),
        }
        f.set_len(data.len() as u64)?;
        Ok(true)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_the_whole_aligned_blocks_inside_a_write() {
        let b = block();
        assert!(b >= ALIGN && b.is_multiple_of(ALIGN));
        let n = b as usize;
        assert_eq!(blocks(0, n), Some((0, b)));
        assert_eq!(blocks(1, 2 * n - 1), Some((b, 2 * b)));
        assert_eq!(blocks(1, 2 * n - 2), None);
        assert_eq!(blocks(b - 1, n + 1), Some((b, 2 * b)));
        assert_eq!(blocks(2 * b, 0), None);
        if b == 4096 {
            assert_eq!(blocks(10_000, 100_000), Some((12_288, 106_496)));
        }
    }

    /// Whether the filesystem under `dir` takes an aligned direct write, asked of the kernel
    /// directly rather than through the code under test.
    fn takes_direct_io(dir: &Path) -> bool {
        let path = dir.join("probe");
        let f = OpenOptions::new()
            .create(true)
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path);
        let ok = f.is_ok_and(|f| {
            let buf = Aligned::new(ALIGN as usize).unwrap();
            f.write_all_at(buf.as_slice(), 0).is_ok()
        });
        let _ = std::fs::remove_file(&path);
        ok
    }

    /// `write_file` writes with direct I/O exactly where the filesystem takes it, and then the
    /// file's length is exact (the padding of the last block is cut off); where it does not,
    /// nothing is written and the caller is told so. The test directory must take direct I/O
    /// (as ext4, XFS, btrfs and tmpfs do), or the direct path would go untested:
    /// `VOLBACK_TEST_NO_DIRECT_IO=1` accepts one that does not.
    #[test]
    fn direct_writes_are_exact_or_declined() {
        let dir = tempfile::tempdir().unwrap();
        let supported = takes_direct_io(dir.path());
        assert!(
            supported || std::env::var_os("VOLBACK_TEST_NO_DIRECT_IO").is_some(),
            "{} does not take O_DIRECT: the direct write path cannot be tested there",
            dir.path().display()
        );
        let path = dir.path().join("object");
        let data: Vec<u8> = (0..(5 << 20) + 123).map(|k| (k % 251) as u8).collect();
        File::create(&path).unwrap();
        let wrote = write_file(&path, &data).unwrap();
        assert_eq!(
            wrote, supported,
            "direct I/O used where the kernel says {supported}"
        );
        let on_disk = std::fs::read(&path).unwrap();
        if wrote {
            assert_eq!(on_disk, data);
        } else {
            assert!(on_disk.is_empty());
        }
        assert!(!write_file(&path, &data[..FILE_MIN - 1]).unwrap());
    }
}
