//! The pack writer: uploads packs (data first), then the index segments that describe them.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;

use bytes::Bytes;

use super::resume::ResumeLog;
use crate::container::{Container, pack_key};
use crate::error::{Error, Result};
use crate::format::index_segment::PACKS_PER_SEGMENT;
use crate::format::pack::PackEntry;
use crate::ids::Hash;

/// Pack bytes being uploaded at once (bounds memory; see [`writer_loop`]).
pub(super) const MAX_UPLOAD_BYTES: u64 = 96 << 20;

/// What the writer stored.
pub(super) struct Written {
    pub(super) objects: u64,
    pub(super) bytes: u64,
}

/// A closed pack for the writer.
pub(super) enum WriterMsg {
    Pack(Hash, Bytes, Vec<PackEntry>),
}

/// Pack uploads shared by the writer threads.
struct WriterState {
    unindexed: Vec<(Hash, Vec<PackEntry>)>,
    done: Written,
}

/// Puts packs with `threads` concurrent uploads, then the index segments that describe them
/// (data first, index next: a segment is written only after all its packs are stored).
/// An incremental's `resume` hint is rewritten after each segment.
pub(super) fn writer_loop(
    container: &Container,
    rx: Receiver<WriterMsg>,
    threads: usize,
    resume: Option<&ResumeLog>,
) -> Result<Written> {
    let rx = Mutex::new(rx);
    let state = Mutex::new(WriterState {
        unindexed: Vec::new(),
        done: Written {
            objects: 0,
            bytes: 0,
        },
    });
    let failed = AtomicBool::new(false);
    let lock = |m| -> std::sync::MutexGuard<'_, WriterState> { unpoison(m) };
    let upload = || -> Result<()> {
        while !failed.load(Ordering::Relaxed) {
            let msg = unpoison(&rx).recv();
            let Ok(WriterMsg::Pack(id, bytes, entries)) = msg else {
                return Ok(());
            };
            let len = bytes.len() as u64;
            if let Err(e) = container.store().put(&pack_key(&id), bytes) {
                failed.store(true, Ordering::Relaxed);
                return Err(e);
            }
            let segment = {
                let mut st = lock(&state);
                st.done.objects += 1;
                st.done.bytes += len;
                st.unindexed.push((id, entries));
                (st.unindexed.len() >= PACKS_PER_SEGMENT).then(|| std::mem::take(&mut st.unindexed))
            };
            if let Some(seg) = segment {
                match write_segment(container, &seg, resume) {
                    Ok(n) => {
                        let mut st = lock(&state);
                        st.done.objects += 1;
                        st.done.bytes += n;
                    }
                    Err(e) => {
                        failed.store(true, Ordering::Relaxed);
                        return Err(e);
                    }
                }
            }
        }
        Ok(())
    };
    let results: Vec<Result<()>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads.max(1)).map(|_| s.spawn(upload)).collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::Internal("pack writer panicked".into())))
            })
            .collect()
    });
    results.into_iter().collect::<Result<()>>()?;
    let mut st = state.into_inner().unwrap_or_else(|p| p.into_inner());
    if !st.unindexed.is_empty() {
        let n = write_segment(container, &st.unindexed, resume)?;
        st.done.objects += 1;
        st.done.bytes += n;
    }
    Ok(st.done)
}

/// Writes an index segment for `packs`, then the resume hint naming it; returns the segment's
/// bytes.
fn write_segment(
    container: &Container,
    packs: &[(Hash, Vec<PackEntry>)],
    resume: Option<&ResumeLog>,
) -> Result<u64> {
    let (key, n) = container.write_index_segment(packs)?;
    if let Some(r) = resume {
        r.record(container, key)?;
    }
    Ok(n)
}

/// Locks a mutex whose data stays consistent even if a holder panicked (every update is a
/// complete assignment), so a poisoned lock is safe to use.
fn unpoison<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
