//! Random access to a backup's extent list, in memory that grows with the number of
//! extent-list chunks (one per ~7 MiB of volume), not with the number of extents.
//!
//! The extent list is a stream of records cut into chunks by content (see
//! [`format::extent_list`](crate::format::extent_list)); records carry lengths, not offsets,
//! so the volume offset of an extent is only known by summing every extent before it. A
//! background walk reads the list once, front to back, and keeps one checkpoint per
//! extent-list chunk: the volume offset of the first extent that chunk completes and the bytes
//! of the unfinished record carried into it. Any chunk can then be decoded alone. A lookup
//! finds the checkpoint at or before its offset, decodes that chunk (and the next ones, as far
//! as the range reaches) through the chunk cache, and keeps the last few decoded chunks.
//!
//! The walk publishes its progress: a lookup waits only until the walk has passed the end of
//! its range, so the first blocks of a volume are served while the rest of the list is read,
//! and the time to the first byte does not grow with the volume. The walk checks what a
//! restore checks (lengths that add up to the manifest's size without overflow, a stream that
//! ends on a record boundary); a failure fails every later lookup with that error.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::format::extent_list::{Extent, ExtentListReader};
use crate::format::keys::manifest_key;
use crate::format::manifest::Manifest;
use crate::ids::Hash;

/// Extent-list chunks fetched per step of the walk.
const WALK_GROUP: usize = 64;
/// Decoded extent-list chunks kept (each ~200 extents, ~10 KiB).
const DECODED_KEEP: usize = 256;

/// Where one extent-list chunk starts decoding.
#[derive(Debug, Clone)]
struct Checkpoint {
    /// Volume offset of the first extent this chunk completes.
    volume_offset: u64,
    /// Bytes of an unfinished record carried in from the chunk before, and their stream offset.
    carry: Vec<u8>,
    stream_pos: u64,
}

#[derive(Default)]
struct Walk {
    checkpoints: Vec<Checkpoint>,
    /// Volume bytes covered by the extents decoded so far.
    reached: u64,
    done: bool,
    failed: Option<Arc<Error>>,
}

/// The extents one extent-list chunk completes, each with its volume offset.
type Decoded = Arc<Vec<(u64, Extent)>>;

/// Fetches verified chunks (through the export's cache): `(id, volume offset)` pairs in, the
/// chunks out.
pub type FetchFn = dyn Fn(&[(Hash, u64)]) -> Result<HashMap<Hash, Bytes>> + Send + Sync;

/// A backup's extent list, looked up by volume offset.
pub struct ExtentMap {
    key: String,
    size: u64,
    metas: Vec<(Hash, u32)>,
    walk: Mutex<Walk>,
    progress: Condvar,
    decoded: Mutex<VecDeque<(usize, Decoded)>>,
}

impl ExtentMap {
    /// The map of `manifest`'s extent list; nothing is read until [`walk`](Self::walk) runs.
    pub fn new(manifest: &Manifest) -> Result<ExtentMap> {
        let key = manifest_key(&manifest.backup_id);
        let metas = manifest.meta_ids(&key)?;
        Ok(ExtentMap {
            key,
            size: manifest.size,
            metas,
            walk: Mutex::new(Walk::default()),
            progress: Condvar::new(),
            decoded: Mutex::new(VecDeque::new()),
        })
    }

    /// The volume's size.
    pub fn size(&self) -> u64 {
        self.size
    }

    fn lock(&self) -> MutexGuard<'_, Walk> {
        self.walk.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads the whole extent list once, recording checkpoints as it goes (run on its own
    /// thread; lookups wait for it as far as they need).
    pub fn walk(&self, fetch: &FetchFn) {
        let result = self.walk_inner(fetch);
        let mut w = self.lock();
        w.done = true;
        if let Err(e) = result {
            tracing::error!(manifest = %self.key, error = %e, "extent list unreadable");
            w.failed = Some(Arc::new(e));
        }
        self.progress.notify_all();
    }

    fn walk_inner(&self, fetch: &FetchFn) -> Result<()> {
        let mut reader = ExtentListReader::new();
        let mut offset = 0u64;
        let mut batch = Vec::new();
        for (g, group) in self.metas.chunks(WALK_GROUP).enumerate() {
            let wants: Vec<(Hash, u64)> = group.iter().map(|(id, _)| (*id, offset)).collect();
            let chunks = fetch(&wants)?;
            let mut checkpoints = Vec::with_capacity(group.len());
            for (i, (id, len)) in group.iter().enumerate() {
                let chunk = self.meta_chunk(&chunks, g * WALK_GROUP + i, id, *len)?;
                let (carry, stream_pos) = reader.position();
                checkpoints.push(Checkpoint {
                    volume_offset: offset,
                    carry,
                    stream_pos,
                });
                reader.push(&self.key, chunk, &mut batch)?;
                for e in batch.drain(..) {
                    offset = self.advance(offset, &e)?;
                }
            }
            let mut w = self.lock();
            w.checkpoints.extend(checkpoints);
            w.reached = offset;
            self.progress.notify_all();
        }
        reader.finish(&self.key)?;
        if offset != self.size {
            return Err(Error::corrupt(
                &self.key,
                0,
                format!("extents cover {offset} bytes, manifest says {}", self.size),
            ));
        }
        Ok(())
    }

    /// The volume offset after extent `e` at `offset`; an extent past the volume's end (or a
    /// sum that would wrap) is corruption.
    fn advance(&self, offset: u64, e: &Extent) -> Result<u64> {
        offset
            .checked_add(e.len())
            .filter(|&end| end <= self.size)
            .ok_or_else(|| {
                Error::corrupt(
                    &self.key,
                    0,
                    format!(
                        "extent of {} bytes at volume offset {offset} runs past the volume's {} \
                         bytes",
                        e.len(),
                        self.size
                    ),
                )
            })
    }

    fn meta_chunk<'a>(
        &self,
        chunks: &'a HashMap<Hash, Bytes>,
        n: usize,
        id: &Hash,
        len: u32,
    ) -> Result<&'a Bytes> {
        let chunk = chunks
            .get(id)
            .ok_or_else(|| Error::Internal(format!("extent-list chunk {id} not fetched")))?;
        if chunk.len() != len as usize {
            return Err(Error::corrupt(
                &self.key,
                0,
                format!(
                    "extent-list chunk {n} ({id}) has {} bytes, manifest says {len}",
                    chunk.len()
                ),
            ));
        }
        Ok(chunk)
    }

    /// Waits until the walk has covered `[.., end)` (or ended); the checkpoints known then.
    fn wait_for(&self, end: u64) -> Result<MutexGuard<'_, Walk>> {
        let mut w = self.lock();
        loop {
            if w.reached >= end {
                return Ok(w);
            }
            if let Some(e) = &w.failed {
                return Err(Error::Internal(format!(
                    "the extent list of {} could not be read: {e}",
                    self.key
                )));
            }
            if w.done {
                return Err(Error::Internal(format!(
                    "the extent list of {} ends at {}, before {end}",
                    self.key, w.reached
                )));
            }
            w = self.progress.wait(w).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// The extents overlapping `[offset, end)`, each with its volume offset, in order.
    pub fn extents(&self, offset: u64, end: u64, fetch: &FetchFn) -> Result<Vec<(u64, Extent)>> {
        let mut out = Vec::new();
        if offset >= end {
            return Ok(out);
        }
        let (mut n, count) = {
            let w = self.wait_for(end)?;
            let n = w
                .checkpoints
                .partition_point(|c| c.volume_offset <= offset)
                .saturating_sub(1);
            (n, w.checkpoints.len())
        };
        while n < count {
            let decoded = self.decoded_chunk(n, fetch)?;
            for &(at, e) in decoded.iter() {
                if at >= end {
                    return Ok(out);
                }
                if at + e.len() > offset {
                    out.push((at, e));
                }
            }
            n += 1;
        }
        Ok(out)
    }

    /// Extent-list chunk `n`, decoded from its checkpoint (kept for the next lookups).
    fn decoded_chunk(&self, n: usize, fetch: &FetchFn) -> Result<Decoded> {
        {
            let d = self.decoded.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((_, v)) = d.iter().find(|(i, _)| *i == n) {
                return Ok(v.clone());
            }
        }
        let cp = self.lock().checkpoints[n].clone();
        let (id, len) = self.metas[n];
        let chunks = fetch(&[(id, cp.volume_offset)])?;
        let chunk = self.meta_chunk(&chunks, n, &id, len)?;
        let mut reader = ExtentListReader::resume(cp.carry, cp.stream_pos);
        let mut batch = Vec::new();
        reader.push(&self.key, chunk, &mut batch)?;
        let mut at = cp.volume_offset;
        let mut v = Vec::with_capacity(batch.len());
        for e in batch {
            let end = self.advance(at, &e)?;
            v.push((at, e));
            at = end;
        }
        let v = Arc::new(v);
        let mut d = self.decoded.lock().unwrap_or_else(|p| p.into_inner());
        if d.len() >= DECODED_KEEP {
            d.pop_front();
        }
        d.push_back((n, v.clone()));
        Ok(v)
    }

    /// Checkpoints held (one per extent-list chunk walked).
    pub fn checkpoints(&self) -> usize {
        self.lock().checkpoints.len()
    }
}
