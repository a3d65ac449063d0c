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
//! with direct I/O ([`crate::store::direct`]), bypassing the page cache (as Cinder's own volume copies
//! do), straight from the stripe, which mirrors the file's block alignment; only the partial
//! blocks at a region's ends go through the page cache. A restore through the page cache
//! (`--buffered`, or a target that refuses direct I/O) has its writeback started every
//! 32 MiB when durable, so the final fsync has little left to wait for.
//!
//! Chunk locations come from a [`LocationTable`] of the backup's own chunks, which keeps them
//! in a sorted scratch file once the backup is large, so memory is bounded by the stripes and
//! the ranges in flight, not by the volume or the container. Each restore thread reuses its read buffer, and the
//! stripes are reused window after window: no fresh pages to fault in per range.
//!
//! Before anything is written, every chunk the backup needs is checked to be in the index, as
//! long as its extent, and every pack it needs to exist, so a backup that lost objects is
//! refused up front. A new file target is written under a temporary name and renamed into
//! place only when complete (and fsync'd, for a durable restore): a failed restore never
//! leaves a half-written file under the target's name.
//!
//! A target that cannot be written at an offset (standard output, a pipe, a file object
//! without a descriptor) gets the same stripes in the same order, with the zeros between them
//! filled in ([`run_restore_to_stream`]).

mod check;
pub mod differential;
pub mod locations;
mod output;
pub mod range;
mod stream;
mod stripe;
mod target;
mod window;
mod writer;

pub use check::check_complete;
pub use differential::{DifferentialReport, run_restore_differential};
pub use range::{RangeReport, read_range};
pub use stream::{StreamSink, WriteSink};

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde::Serialize;

use crate::container::{Container, LEASE_TTL, LeaseGuard};
use crate::error::{Error, Result};
use crate::format::extent_list::Extent;
use crate::format::manifest::Manifest;
use crate::ids::Hash;
use crate::store::RequestCounts;
use locations::{DEFAULT_MEM_ENTRIES, LocationTable, trim_heap};
use output::Output;
use stream::Stream;
use stripe::{STRIPES, Stripe, stripe_len};
use target::Target;
use window::{WINDOW_CHUNKS, restore_window};
use writer::write_stripes;

/// How the target is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetMode {
    /// A fresh volume: zero extents are left as holes (a new file is sparse). A regular file
    /// must not exist yet; a block device is assumed to read as zeros.
    New,
    /// Overwrite an existing volume: zero extents are written as zeros (punched holes on files).
    Existing,
    /// An existing target known to read as zeros (a file just created or truncated, as a
    /// service opening a file-backed volume with `'wb'` leaves it; a new block device): written
    /// in place, zero extents skipped, a file sized to the volume.
    Zeroed,
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
    /// Bytes written with direct I/O, around the page cache (0 for a buffered restore, or where
    /// the target refuses direct I/O).
    #[serde(skip)]
    pub direct_bytes: u64,
    /// The volume metadata stored with the backup.
    #[serde(skip)]
    pub volume_metadata: Option<serde_json::Value>,
}

/// How a restore treats its target.
#[derive(Debug, Clone)]
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
    /// Data-chunk locations held in memory; beyond this the backup's locations go to a
    /// temporary file (see [`LocationTable`]), so memory does not grow with the volume.
    pub locations_in_memory: usize,
    /// Volume bytes per restore window (its `Stripe`); None for the default, 32 MiB (64 MiB
    /// on stores read with many requests in flight). Never less than the backup's largest
    /// chunk. Small stripes are for tests: they make a small volume cross many windows.
    pub stripe: Option<usize>,
    /// Set to stop the restore: checked before each window (at most 32 MiB of the volume). A
    /// cancelled restore fails with [`Error::Cancelled`]; a new file target is removed, an
    /// existing target is left partly written.
    pub cancel: Option<std::sync::Arc<AtomicBool>>,
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
            cancel: None,
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
    restore_into(container, backup_id, opts, progress, |size| {
        let mut t = Target::open(target, opts.mode, size)?;
        if opts.direct_io {
            t.direct();
        }
        Ok(Output::File(t))
    })
}

/// Restores backup `backup_id` into `sink`, front to back: every byte of the volume in order,
/// for targets that cannot be written at an offset (standard output, a pipe, a file object
/// without a descriptor). Zero extents are written as zeros, or skipped with
/// [`StreamSink::skip`] when `opts.mode` says the target reads as zeros
/// ([`TargetMode::New`], [`TargetMode::Zeroed`]). `opts.sync` and `opts.direct_io` are the
/// sink's business ([`StreamSink::finish`] is called at the end).
pub fn run_restore_to_stream(
    container: &Container,
    backup_id: &str,
    sink: &mut dyn StreamSink,
    opts: &RestoreOptions,
    progress: Option<&(dyn Fn(u64) + Sync)>,
) -> Result<RestoreReport> {
    let skip_zeros = opts.mode != TargetMode::Existing;
    restore_into(container, backup_id, opts, progress, |size| {
        Ok(Output::Stream(Stream::new(
            sink, size, skip_zeros, progress,
        )))
    })
}

/// The restore itself, onto the output `open` makes for a volume of the given size.
fn restore_into<'a>(
    container: &Container,
    backup_id: &str,
    opts: &RestoreOptions,
    progress: Option<&(dyn Fn(u64) + Sync)>,
    open: impl FnOnce(u64) -> Result<Output<'a>>,
) -> Result<RestoreReport> {
    let started = Instant::now();
    let requests_before = container.store().requests();
    let (manifest, _) = container.read_manifest(backup_id)?;
    // A reader's lease holds back the collector's sweep while this restore relies on the
    // locations it loads. Best effort: with read-only credentials there is no lease, and a
    // concurrent sweep can at worst make the restore fail cleanly, naming the missing pack.
    let _lease = LeaseGuard::take(container, backup_id, LEASE_TTL).ok();
    let index = LocationTable::for_backup(container, &manifest, opts.locations_in_memory)?;
    check_complete(container, &index, &manifest)?;
    // The check's transient listings and lookups leave holes in the heap (more of them the
    // larger the backup); so does every window. Trimming after each keeps a 16 GiB restore's
    // peak within a few percent of a 4 GiB one's instead of ~10 % above it.
    trim_heap();
    let t = open(manifest.size)?;
    let stripe_len = (opts.stripe).map_or(stripe_len(container.store().concurrency()), |s| {
        s.max(manifest.chunker.max as usize)
    });
    let res = restore_extents(container, &index, &manifest, &t, opts, stripe_len, progress);
    let Written {
        bytes_written,
        zero_bytes,
        direct_bytes,
    } = match res {
        Ok(w) => w,
        Err(e) => {
            t.abandon();
            return Err(e);
        }
    };
    t.finish(opts.sync)?;
    if let Some(p) = progress {
        p(manifest.size);
    }
    Ok(RestoreReport {
        backup_id: backup_id.into(),
        size: manifest.size,
        bytes_written,
        direct_bytes,
        zero_bytes,
        elapsed_s: started.elapsed().as_secs_f64(),
        requests: container.store().requests().since(&requests_before),
        volume_metadata: manifest.volume_metadata,
    })
}

/// What the walk wrote.
struct Written {
    bytes_written: u64,
    zero_bytes: u64,
    direct_bytes: u64,
}

/// Walks the backup's extents: data extents are restored a window at a time into stripes that
/// the writer thread writes in volume order; zero extents are skipped (a new target) or
/// written as zeros.
fn restore_extents(
    container: &Container,
    index: &LocationTable,
    manifest: &Manifest,
    t: &Output<'_>,
    opts: &RestoreOptions,
    stripe_len: usize,
    progress: Option<&(dyn Fn(u64) + Sync)>,
) -> Result<Written> {
    let backup_id = manifest.backup_id.as_str();
    let mut bytes_written = 0u64;
    let mut zero_bytes = 0u64;
    let failed = AtomicBool::new(false);
    std::thread::scope(|s| {
        let failed = &failed;
        // Stripes go round: the walk fills one and sends it to the writer thread, which
        // writes it and sends it back for another window.
        let (free_tx, free) = std::sync::mpsc::channel::<Stripe>();
        for _ in 0..STRIPES {
            let _ = free_tx.send(Stripe::new(stripe_len)?);
        }
        let (full, todo) = std::sync::mpsc::sync_channel::<Stripe>(STRIPES);
        let writer = s.spawn(move || {
            write_stripes(
                t,
                todo,
                free_tx,
                opts.sync,
                failed,
                progress,
                opts.cancel.as_deref(),
            )
        });
        let gone = || Error::Internal("the restore's writer thread stopped".into());
        let mut stripe = free.recv().map_err(|_| gone())?;
        let mut window = Vec::with_capacity(WINDOW_CHUNKS);
        // Restores the window into the stripe and hands it to the writer.
        let flush = |window: &mut Vec<(u64, Hash, u32)>, stripe: &mut Stripe| -> Result<()> {
            if failed.load(Ordering::Relaxed) {
                return Err(gone());
            }
            if opts
                .cancel
                .as_ref()
                .is_some_and(|c| c.load(Ordering::Relaxed))
            {
                return Err(Error::Cancelled { what: "restore" });
            }
            restore_window(
                container,
                index,
                backup_id,
                stripe,
                window,
                opts.cancel.as_deref(),
            )?;
            let mut next = free.recv().map_err(|_| gone())?;
            next.regions.clear();
            full.send(std::mem::replace(stripe, next))
                .map_err(|_| gone())?;
            trim_heap();
            Ok(())
        };
        let res = container.walk_extents(index, manifest, |off, e| {
            match e {
                Extent::Data { len, id } => {
                    bytes_written += u64::from(*len);
                    if window.len() >= WINDOW_CHUNKS || !stripe.add(off, u64::from(*len))? {
                        flush(&mut window, &mut stripe)?;
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
                    if t.write_zeros() {
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
        written.and_then(|direct_bytes| {
            res.map(|()| Written {
                bytes_written,
                zero_bytes,
                direct_bytes,
            })
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::direct;
    use proptest::prelude::*;
    use std::fs::File;

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
        let t = Output::File(Target::new(read_only, path.clone(), None, true, false));
        let (full, todo) = std::sync::mpsc::sync_channel(STRIPES);
        let (free_tx, free) = std::sync::mpsc::channel();
        for base in [0u64, 1 << 20] {
            let mut s = Stripe::new(64 << 10).unwrap();
            assert!(s.add(base, 4096).unwrap());
            full.send(s).unwrap();
        }
        drop(full);
        let failed = AtomicBool::new(false);
        let err = write_stripes(&t, todo, free_tx, true, &failed, None, None).unwrap_err();
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
