//! Restoring one window: its chunks grouped by pack into ranged reads, fetched in parallel
//! (largest first), decoded and verified straight into their places in the stripe.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use rayon::prelude::*;

use super::stripe::{Places, Stripe};
use crate::container::fetch::with_volume_offset;
use crate::container::{Container, FetchRange, MAX_RANGE_RAW, pack_key, plan_ranges};
use crate::error::{Error, Result};
use crate::format::chunk::decode_chunk_into;
use crate::ids::Hash;
use crate::index::Locate;

/// Chunks per restore window.
pub(super) const WINDOW_CHUNKS: usize = 8192;

thread_local! {
    /// The stored bytes of the range a restore thread is restoring (from stores that read
    /// into a buffer), reused for every range: no fresh pages to fault in per range.
    static READ: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}
/// Most uncompressed bytes of one range for a store read with `concurrency` requests in
/// flight. On a filesystem (two threads) a window's last range leaves the other thread idle
/// until it is done. With 2 MiB instead of 8, `perf sched` had the threads busy 67 % of the
/// restore instead of 56 %, and day 2's restore without a flush took 0.99 s against 1.09 s
/// in one set of six interleaved warm-cache runs, 1.12 s against 1.15 s in another (durable:
/// 1.07 s against 1.16 s). A network store keeps the larger ranges, which
/// save requests, and has more of them in flight to balance.
pub(super) fn range_raw(concurrency: usize) -> u64 {
    if concurrency > 2 {
        MAX_RANGE_RAW
    } else {
        2 << 20
    }
}

/// Restores a window of data extents, `(volume offset, chunk id, length)`, into `stripe`.
pub(super) fn restore_window(
    container: &Container,
    index: &(impl Locate + ?Sized),
    backup_id: &str,
    stripe: &Stripe,
    window: &mut Vec<(u64, Hash, u32)>,
    cancel: Option<&AtomicBool>,
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
    // A cancelled restore stops between ranges (a window on S3 spans 64 MiB).
    let cancelled = || cancel.is_some_and(|c| c.load(Ordering::Relaxed));
    let take = || {
        let i = next.fetch_add(1, Ordering::Relaxed);
        ranges
            .get(i)
            .filter(|_| !failed.load(Ordering::Relaxed) && !cancelled())
    };
    let res: Result<()> = container.on_io_pool(|| {
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
    res?;
    if cancelled() {
        return Err(Error::Cancelled { what: "restore" });
    }
    Ok(())
}

/// Reads, decodes and verifies one range, decoding each chunk straight into its first place
/// in the stripe and copying it to the others (a quarter of a real filesystem image's data
/// repeats): each chunk is decompressed and verified once per window.
pub(super) fn restore_range(
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
        let keys = container.keys()?.chunks();
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
            decode_chunk_into(
                &key,
                loc.offset.into(),
                id,
                loc.compression,
                stored,
                out,
                keys,
            )
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
