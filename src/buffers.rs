//! Recycled large buffers: volume read buffers and pack buffers.
//!
//! A backup fills hundreds of 4 MiB read buffers and a 33 MiB buffer per data pack. Fresh
//! allocations of that size are new mappings (the `volback` binary pins glibc's mmap threshold),
//! so each would cost thousands of page faults and the kernel's zeroing of every page: on the
//! tenth session's machine `perf` put ~5 % of a full backup's CPU in `clear_page` for the packs
//! alone. A [`BufferPool`] hands finished buffers back for reuse instead: a buffer wrapped by
//! [`BufferPool::freeze`] returns to its pool when the last `Bytes` slicing it is dropped (after
//! the chunks that point into a read buffer are packed, after a pack's upload).
//!
//! A pool keeps at most `keep` buffers, so what it holds between uses is bounded and does not
//! grow with the volume.

use std::sync::{Arc, Mutex};

use bytes::Bytes;

/// A shared stack of spare buffers.
#[derive(Clone)]
pub struct BufferPool {
    spare: Arc<Mutex<Vec<Vec<u8>>>>,
    keep: usize,
}

/// A pooled buffer owned by `Bytes`; goes back to its pool on drop.
struct Pooled {
    buf: Vec<u8>,
    pool: BufferPool,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.pool.give_back(std::mem::take(&mut self.buf));
    }
}

impl BufferPool {
    /// A pool that keeps up to `keep` spare buffers (more are freed).
    pub fn new(keep: usize) -> Self {
        BufferPool {
            spare: Arc::new(Mutex::new(Vec::new())),
            keep,
        }
    }

    fn spare(&self) -> std::sync::MutexGuard<'_, Vec<Vec<u8>>> {
        // A spare list is consistent after any panic (push and pop are whole), so a poisoned
        // lock is safe to use.
        self.spare.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn give_back(&self, buf: Vec<u8>) {
        let mut spare = self.spare();
        if spare.len() < self.keep && buf.capacity() > 0 {
            spare.push(buf);
        }
    }

    /// A buffer of exactly `len` bytes (contents unspecified: the caller overwrites them).
    pub fn take(&self, len: usize) -> Vec<u8> {
        let mut v = self.spare().pop().unwrap_or_default();
        v.resize(len, 0);
        v
    }

    /// An empty buffer with room for at least `capacity` bytes, so filling it never
    /// reallocates. A new one is advised onto huge pages ([`advise_huge_pages`]).
    pub fn take_empty(&self, capacity: usize) -> Vec<u8> {
        let mut v = self.spare().pop().unwrap_or_default();
        v.clear();
        if v.capacity() < capacity {
            v = Vec::with_capacity(capacity);
            advise_huge_pages(&mut v);
        }
        v
    }

    /// Wraps the first `len` bytes of `buf` as `Bytes` that return `buf` here when dropped.
    pub fn freeze(&self, mut buf: Vec<u8>, len: usize) -> Bytes {
        buf.truncate(len);
        Bytes::from_owner(Pooled {
            buf,
            pool: self.clone(),
        })
    }

    /// Spare buffers held now.
    pub fn spare_count(&self) -> usize {
        self.spare().len()
    }
}

/// Asks the kernel to back a large, still untouched buffer with transparent huge pages.
///
/// With 4 KiB pages a 33 MiB pack buffer takes ~8,400 page faults the first time it is filled
/// (~17 % of a backup's CPU on incompressible data, fifth session); with 2 MiB pages, 17. Only a
/// hint: where THP is off or unsupported, nothing changes.
pub fn advise_huge_pages(buf: &mut Vec<u8>) {
    const MIN: usize = 4 << 20;
    if buf.capacity() < MIN {
        return;
    }
    let page = 4096usize;
    let start = buf.as_mut_ptr() as usize;
    let first = start.next_multiple_of(page);
    let end = (start + buf.capacity()) & !(page - 1);
    if end > first {
        // SAFETY: the range lies inside `buf`'s own allocation and is page aligned; the advice
        // changes no contents and the call takes no other memory.
        unsafe {
            libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_HUGEPAGE);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frozen_buffer_returns_when_its_last_slice_is_dropped() {
        let pool = BufferPool::new(1);
        let mut buf = pool.take_empty(1 << 20);
        buf.extend_from_slice(b"pack bytes");
        let ptr = buf.as_ptr();
        let bytes = pool.freeze(buf, 4);
        assert_eq!(&bytes[..], b"pack");
        let slice = bytes.slice(1..3);
        drop(bytes);
        assert_eq!(pool.spare_count(), 0, "a slice still holds it");
        assert_eq!(&slice[..], b"ac");
        drop(slice);
        assert_eq!(pool.spare_count(), 1);
        let again = pool.take_empty(1 << 20);
        assert_eq!(again.as_ptr(), ptr, "the same allocation is reused");
        assert!(again.is_empty());
    }

    #[test]
    fn a_pool_keeps_at_most_its_limit() {
        let pool = BufferPool::new(1);
        let a = pool.freeze(pool.take(16), 16);
        let b = pool.freeze(pool.take(16), 16);
        drop(a);
        drop(b);
        assert_eq!(pool.spare_count(), 1);
        assert_eq!(pool.take(32).len(), 32);
        assert_eq!(pool.spare_count(), 0);
    }

    #[test]
    fn a_spare_too_small_is_replaced() {
        let pool = BufferPool::new(1);
        drop(pool.freeze(pool.take(16), 16));
        let big = pool.take_empty(1 << 10);
        assert!(big.capacity() >= 1 << 10);
    }
}
