//! Recycled large buffers: volume read buffers and pack buffers.
//!
//! A backup fills hundreds of 4 MiB read buffers and a 33 MiB buffer per data pack. Fresh
//! allocations of that size are new mappings (the `volback` binary pins glibc's mmap threshold),
//! so each would cost thousands of page faults and the kernel's zeroing of every page: on the
//! AMD EPYC test machine `perf` put ~5 % of a full backup's CPU in `clear_page` for the packs
//! alone. A [`BufferPool`] hands finished buffers back for reuse instead: a buffer wrapped by
//! [`BufferPool::freeze`] returns to its pool when the last `Bytes` slicing it is dropped (after
//! the chunks that point into a read buffer are packed, after a pack's upload).
//!
//! A pool keeps at most `keep` buffers, so what it holds between uses is bounded and does not
//! grow with the volume.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;

/// How long [`BufferPool::take`] waits for a buffer to come back when the limit is reached,
/// before it allocates one beyond the limit. The limit bounds memory; it must never stall a
/// pipeline whose stages hold more buffers than expected.
const LIMIT_WAIT: Duration = Duration::from_millis(200);

/// A shared stack of spare buffers.
#[derive(Clone)]
pub struct BufferPool {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    returned: Condvar,
    keep: usize,
    limit: usize,
}

struct State {
    spare: Vec<Vec<u8>>,
    /// Buffers taken and not yet returned.
    out: usize,
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
        Self::with_limit(keep, usize::MAX)
    }

    /// Like [`BufferPool::new`], and [`BufferPool::take`] waits while `limit` buffers are out
    /// (taken and not returned), so that a fast producer cannot fill memory with buffers its
    /// consumers have not reached. A buffer counts as out until the `Bytes` made of it by
    /// [`BufferPool::freeze`] are dropped. If none comes back within 200 ms, `take` hands out
    /// one more: a pipeline whose stages hold more buffers than expected slows down, but never
    /// deadlocks.
    pub fn with_limit(keep: usize, limit: usize) -> Self {
        BufferPool {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    spare: Vec::new(),
                    out: 0,
                }),
                returned: Condvar::new(),
                keep,
                limit: limit.max(1),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state is consistent after any panic (every update is whole), so a poisoned lock
        // is safe to use.
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn give_back(&self, buf: Vec<u8>) {
        let mut st = self.state();
        st.out = st.out.saturating_sub(1);
        if st.spare.len() < self.inner.keep && buf.capacity() > 0 {
            st.spare.push(buf);
        }
        drop(st);
        self.inner.returned.notify_one();
    }

    /// A spare buffer (or an empty one), counted as out; waits while the limit is reached.
    fn take_spare(&self) -> Vec<u8> {
        let mut st = self.state();
        while st.out >= self.inner.limit {
            let (next, wait) = self
                .inner
                .returned
                .wait_timeout(st, LIMIT_WAIT)
                .unwrap_or_else(|p| p.into_inner());
            st = next;
            if wait.timed_out() {
                tracing::debug!(out = st.out, "buffer limit reached for too long: one more");
                break;
            }
        }
        st.out += 1;
        st.spare.pop().unwrap_or_default()
    }

    /// A buffer of exactly `len` bytes (contents unspecified: the caller overwrites them).
    pub fn take(&self, len: usize) -> Vec<u8> {
        let mut v = self.take_spare();
        v.resize(len, 0);
        v
    }

    /// An empty buffer with room for at least `capacity` bytes, so filling it never
    /// reallocates. A new one is advised onto huge pages ([`advise_huge_pages`]).
    pub fn take_empty(&self, capacity: usize) -> Vec<u8> {
        let mut v = self.take_spare();
        v.clear();
        if v.capacity() < capacity {
            v = Vec::with_capacity(capacity);
            advise_huge_pages(&mut v);
        }
        v
    }

    /// Wraps the first `len` bytes of `buf` (taken from this pool) as `Bytes` that return
    /// `buf` here when dropped.
    pub fn freeze(&self, mut buf: Vec<u8>, len: usize) -> Bytes {
        buf.truncate(len);
        Bytes::from_owner(Pooled {
            buf,
            pool: self.clone(),
        })
    }

    /// Allocates `count` spare buffers of `len` bytes now, their pages touched, so that the
    /// memory a pipeline needs is taken up front rather than when it happens to run ahead:
    /// peak memory then does not depend on timing.
    pub fn prefill(&self, count: usize, len: usize) {
        let count = count.min(self.inner.keep);
        let bufs: Vec<Vec<u8>> = (0..count).map(|_| vec![0u8; len]).collect();
        let mut st = self.state();
        for b in bufs {
            if st.spare.len() < self.inner.keep {
                st.spare.push(b);
            }
        }
    }

    /// Spare buffers held now.
    pub fn spare_count(&self) -> usize {
        self.state().spare.len()
    }

    /// Buffers out now (taken and not returned).
    pub fn out_count(&self) -> usize {
        self.state().out
    }
}

/// Asks the kernel to back a large, still untouched buffer with transparent huge pages.
///
/// With 4 KiB pages a 33 MiB pack buffer takes ~8,400 page faults the first time it is filled
/// (~17 % of a backup's CPU on incompressible data); with 2 MiB pages, 17. Only a
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
    fn take_waits_for_a_buffer_while_the_limit_is_reached() {
        let pool = BufferPool::with_limit(2, 2);
        let a = pool.freeze(pool.take(16), 16);
        let _b = pool.freeze(pool.take(16), 16);
        assert_eq!(pool.out_count(), 2);
        let returned = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(50));
                returned.store(true, std::sync::atomic::Ordering::SeqCst);
                drop(a);
            });
            let c = pool.take(16);
            assert!(
                returned.load(std::sync::atomic::Ordering::SeqCst),
                "took before a return"
            );
            assert_eq!(c.len(), 16);
        });
        assert_eq!(pool.out_count(), 2);
    }

    #[test]
    fn a_limit_held_too_long_gives_one_more_buffer() {
        let pool = BufferPool::with_limit(1, 1);
        let _a = pool.freeze(pool.take(16), 16);
        let started = std::time::Instant::now();
        let b = pool.take(16);
        assert!(started.elapsed() >= LIMIT_WAIT);
        assert_eq!(b.len(), 16);
        assert_eq!(pool.out_count(), 2);
    }

    #[test]
    fn prefilled_buffers_are_taken_first() {
        let pool = BufferPool::with_limit(2, 2);
        pool.prefill(3, 64);
        assert_eq!(pool.spare_count(), 2, "no more than it keeps");
        let a = pool.take(64);
        assert_eq!(a.capacity(), 64);
        assert_eq!(pool.spare_count(), 1);
    }

    #[test]
    fn a_spare_too_small_is_replaced() {
        let pool = BufferPool::new(1);
        drop(pool.freeze(pool.take(16), 16));
        let big = pool.take_empty(1 << 10);
        assert!(big.capacity() >= 1 << 10);
    }
}
