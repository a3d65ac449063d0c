//! The writer thread: writes each filled stripe in volume order and hands it back.

use std::sync::atomic::{AtomicBool, Ordering};

use super::output::Output;
use super::stripe::Stripe;
use crate::error::{Error, Result};

/// Writeback of a durable restore's target is started each time this many more bytes have
/// been written through the page cache (see [`write_stripes`]).
pub(super) const WRITEBACK_EVERY: u64 = 32 << 20;

/// The writer thread of a restore: writes each stripe it is sent, in volume order, and sends
/// it back for another window. The restore threads never wait on the disk or on the file's
/// lock, and direct I/O gets requests of megabytes. After an error it writes nothing more,
/// sets `failed` (the walk stops at its next window) and returns the error once the walk is
/// done. A durable restore's writes through the page cache (all of them where the target
/// refuses direct I/O) get their writeback started every [`WRITEBACK_EVERY`] bytes, so the
/// final fsync has little left to wait for. `progress` is told the volume offset written up
/// to after each stripe; a set `cancel` stops the writing before the next stripe. Returns the
/// bytes written with direct I/O.
pub(super) fn write_stripes(
    t: &Output<'_>,
    todo: std::sync::mpsc::Receiver<Stripe>,
    free: std::sync::mpsc::Sender<Stripe>,
    sync: bool,
    failed: &AtomicBool,
    progress: Option<&(dyn Fn(u64) + Sync)>,
    cancel: Option<&AtomicBool>,
) -> Result<u64> {
    let mut res = Ok(0u64);
    let mut direct = t.is_direct();
    let mut unflushed = 0u64;
    for stripe in todo {
        if res.is_ok() && cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
            // Asked to stop, perhaps by the progress callback after the last stripe: the
            // restore fails rather than completing behind the caller's back.
            res = Err(Error::Cancelled { what: "restore" });
            failed.store(true, Ordering::Relaxed);
        }
        if let Ok(done) = res {
            res = (stripe.regions.iter()).try_fold(done, |n, &(off, len)| {
                Ok(n + t.write_region(&stripe, off, len, &mut direct)?)
            });
            failed.store(res.is_err(), Ordering::Relaxed);
            if let (Ok(_), Some(p), Some(r)) = (&res, progress, stripe.regions.last()) {
                p(r.0 + r.1);
            }
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
