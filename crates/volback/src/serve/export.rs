//! One backup as a read-only volume: any range read on demand from the container, every chunk
//! verified, zero extents known without reading anything.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::cache::{ChunkCache, Want};
use super::extent_map::{ExtentMap, FetchFn};
use crate::container::{Container, LEASE_TTL, LeaseGuard};
use crate::error::{Error, Result};
use crate::format::extent_list::Extent;
use crate::format::keys::manifest_key;
use crate::restore::locations::{DEFAULT_MEM_ENTRIES, LocationTable};

/// Largest read one request may ask for (NBD's customary maximum; advertised to clients).
pub const MAX_REQUEST: u32 = 32 << 20;

/// What an export has served so far.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ExportStats {
    pub reads: u64,
    pub bytes_read: u64,
    /// Chunks fetched from the container (each verified), and chunks served from the cache.
    pub chunks_fetched: u64,
    pub cache_hits: u64,
    /// Requests that failed (a damaged or missing chunk): each logged with the object.
    pub failed: u64,
    /// Bytes the cache holds now.
    pub cache_bytes: u64,
}

#[derive(Default)]
struct Counters {
    reads: AtomicU64,
    bytes_read: AtomicU64,
    chunks_fetched: AtomicU64,
    cache_hits: AtomicU64,
    failed: AtomicU64,
}

/// A backup served as a volume.
pub struct Export {
    backup_id: String,
    map: Arc<ExtentMap>,
    fetch: Arc<FetchFn>,
    cache: Arc<ChunkCache>,
    counters: Arc<Counters>,
    prefetch: Mutex<SyncSender<(u64, u64)>>,
    read_ahead: u64,
    _lease: Option<LeaseGuard>,
}

/// A zero extent or data, over a length, for block-status replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    pub len: u64,
    pub zero: bool,
}

impl Export {
    /// Opens backup `backup_id` for serving: reads its manifest and the container's chunk
    /// locations, takes a reader's lease, and starts walking its extent list in the background.
    /// `cache_bytes` bounds the chunk cache; `read_ahead` is how far ahead of a sequential
    /// reader chunks are fetched (0: never).
    pub fn open(
        container: &Container,
        backup_id: &str,
        cache_bytes: u64,
        read_ahead: u64,
    ) -> Result<Arc<Export>> {
        let (manifest, _) = container.read_manifest(backup_id)?;
        // Like a restore, a server holds a reader's lease for as long as it runs: the
        // collector's sweep of packs condemned meanwhile waits for it (best effort).
        let lease = LeaseGuard::take(container, backup_id, LEASE_TTL).ok();
        let index = Arc::new(LocationTable::for_backup(
            container,
            &manifest,
            DEFAULT_MEM_ENTRIES,
        )?);
        let map = Arc::new(ExtentMap::new(&manifest)?);
        let cache = Arc::new(ChunkCache::new(cache_bytes));
        let counters = Arc::new(Counters::default());
        let fetch: Arc<FetchFn> = {
            let (container, cache, counters) = (container.clone(), cache.clone(), counters.clone());
            let backup_id = backup_id.to_string();
            Arc::new(move |wants: &[Want]| {
                let (chunks, stats) = cache.get(wants, |miss| {
                    container.fetch_chunks(&*index, &backup_id, miss)
                })?;
                counters.cache_hits.fetch_add(stats.hits, Ordering::Relaxed);
                counters
                    .chunks_fetched
                    .fetch_add(stats.fetched, Ordering::Relaxed);
                Ok(chunks)
            })
        };
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(f)
                .map(drop)
                .map_err(|e| Error::Internal(format!("{name} thread: {e}")))
        };
        {
            let (map, fetch) = (map.clone(), fetch.clone());
            spawn("volback-walk", Box::new(move || map.walk(&*fetch)))?;
        }
        // Read-ahead runs on one thread, a request or two queued at most: it never competes
        // with more than that for the store, and a reader that stops being sequential leaves
        // no backlog behind.
        let (tx, rx) = std::sync::mpsc::sync_channel::<(u64, u64)>(2);
        {
            let (map, fetch) = (map.clone(), fetch.clone());
            spawn(
                "volback-readahead",
                Box::new(move || {
                    for (from, to) in rx {
                        if let Err(e) = fetch_range(&map, &*fetch, from, to) {
                            tracing::debug!(from, to, error = %e, "read-ahead failed");
                        }
                    }
                }),
            )?;
        }
        Ok(Arc::new(Export {
            backup_id: backup_id.into(),
            map,
            fetch,
            cache,
            counters,
            prefetch: Mutex::new(tx),
            read_ahead: read_ahead.min(cache_bytes / 4),
            _lease: lease,
        }))
    }

    /// The backup served.
    pub fn backup_id(&self) -> &str {
        &self.backup_id
    }

    /// The volume's size.
    pub fn size(&self) -> u64 {
        self.map.size()
    }

    /// How far ahead of a sequential reader chunks are fetched.
    pub fn read_ahead(&self) -> u64 {
        self.read_ahead
    }

    /// Counters so far.
    pub fn stats(&self) -> ExportStats {
        let c = &self.counters;
        ExportStats {
            reads: c.reads.load(Ordering::Relaxed),
            bytes_read: c.bytes_read.load(Ordering::Relaxed),
            chunks_fetched: c.chunks_fetched.load(Ordering::Relaxed),
            cache_hits: c.cache_hits.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            cache_bytes: self.cache.bytes(),
        }
    }

    fn end_of(&self, offset: u64, len: u64) -> Result<u64> {
        offset
            .checked_add(len)
            .filter(|&end| end <= self.size())
            .ok_or_else(|| {
                Error::Config(format!(
                    "{len} bytes from offset {offset} run past the end of backup {} ({} bytes)",
                    self.backup_id,
                    self.size()
                ))
            })
    }

    /// Bytes `[offset, offset + len)` of the volume; every chunk is verified before its bytes
    /// are used. A failure (a damaged or missing chunk) is logged with the object it names.
    pub fn read(&self, offset: u64, len: u32) -> Result<Vec<u8>> {
        let result = self.read_inner(offset, len);
        self.counters.reads.fetch_add(1, Ordering::Relaxed);
        if result.is_ok() {
            self.counters
                .bytes_read
                .fetch_add(u64::from(len), Ordering::Relaxed);
        }
        self.count_failure("read", offset, u64::from(len), result)
    }

    /// Counts and logs a failed request (with the object its error names).
    fn count_failure<T>(&self, what: &str, offset: u64, len: u64, r: Result<T>) -> Result<T> {
        if let Err(e) = &r {
            self.counters.failed.fetch_add(1, Ordering::Relaxed);
            tracing::error!(backup = %self.backup_id, offset, len, error = %e, "{what} failed");
        }
        r
    }

    fn read_inner(&self, offset: u64, len: u32) -> Result<Vec<u8>> {
        if len > MAX_REQUEST {
            return Err(Error::Config(format!(
                "a read of {len} bytes is larger than the {MAX_REQUEST} bytes served at once"
            )));
        }
        let end = self.end_of(offset, u64::from(len))?;
        let extents = self.map.extents(offset, end, &*self.fetch)?;
        let wants: Vec<Want> = extents
            .iter()
            .filter_map(|(at, e)| match e {
                Extent::Data { id, .. } => Some((*id, *at)),
                Extent::Zero { .. } => None,
            })
            .collect();
        let chunks = (self.fetch)(&wants)?;
        let mut out = vec![0u8; len as usize];
        for (at, e) in &extents {
            let Extent::Data { id, len: elen } = e else {
                continue;
            };
            let chunk = &chunks[id];
            if chunk.len() != *elen as usize {
                return Err(Error::corrupt(
                    &manifest_key(&self.backup_id),
                    0,
                    format!(
                        "the extent at volume offset {at} has {elen} bytes, its chunk {id} {}",
                        chunk.len()
                    ),
                ));
            }
            // The overlap of [at, at + elen) with [offset, end), in both coordinates.
            let from = offset.max(*at);
            let to = end.min(at + u64::from(*elen));
            out[(from - offset) as usize..(to - offset) as usize]
                .copy_from_slice(&chunk[(from - at) as usize..(to - at) as usize]);
        }
        Ok(out)
    }

    /// Which parts of `[offset, offset + len)` are zero extents and which hold data, in order,
    /// neighbours of one kind merged, clipped to the range.
    pub fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Status>> {
        let r = self.block_status_inner(offset, len);
        self.count_failure("block status", offset, len, r)
    }

    fn block_status_inner(&self, offset: u64, len: u64) -> Result<Vec<Status>> {
        let end = self.end_of(offset, len)?;
        let mut out: Vec<Status> = Vec::new();
        for (at, e) in self.map.extents(offset, end, &*self.fetch)? {
            let from = offset.max(at);
            let to = end.min(at + e.len());
            let zero = matches!(e, Extent::Zero { .. });
            match out.last_mut() {
                Some(last) if last.zero == zero => last.len += to - from,
                _ => out.push(Status {
                    len: to - from,
                    zero,
                }),
            }
        }
        Ok(out)
    }

    /// Asks for `[from, to)` to be fetched into the cache in the background (dropped if the
    /// read-ahead thread is busy).
    pub fn prefetch(&self, from: u64, to: u64) {
        let to = to.min(self.size());
        if from >= to {
            return;
        }
        let tx = self.prefetch.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(TrySendError::Disconnected(_)) = tx.try_send((from, to)) {
            tracing::debug!("read-ahead thread gone");
        }
    }
}

/// Fetches the chunks of `[from, to)` into the cache.
fn fetch_range(map: &ExtentMap, fetch: &FetchFn, from: u64, to: u64) -> Result<()> {
    let wants: Vec<Want> = map
        .extents(from, to, fetch)?
        .into_iter()
        .filter_map(|(at, e)| match e {
            Extent::Data { id, .. } => Some((id, at)),
            Extent::Zero { .. } => None,
        })
        .collect();
    fetch(&wants).map(drop)
}

/// Follows one client's reads and says when to read ahead: a read that starts near where the
/// furthest read so far ended is sequential (clients keep several requests in flight, so reads
/// arrive a little out of order); a sequential reader gets the next `window` bytes fetched
/// ahead of it, asked for half a window at a time.
#[derive(Debug, Default)]
pub struct ReadAhead {
    furthest: u64,
    ahead_until: u64,
}

impl ReadAhead {
    /// Notes a read of `[offset, end)`; the range to prefetch, if any.
    pub fn note(&mut self, offset: u64, end: u64, window: u64) -> Option<(u64, u64)> {
        let near = window.max(1 << 20);
        let sequential = self.furthest > 0
            && offset <= self.furthest.saturating_add(near)
            && offset.saturating_add(near) >= self.furthest;
        if !sequential || window == 0 {
            // Random access, or a new stream starting here.
            self.furthest = end;
            self.ahead_until = end;
            return None;
        }
        self.furthest = self.furthest.max(end);
        if self.ahead_until >= self.furthest.saturating_add(window / 2) {
            return None;
        }
        let from = self.ahead_until.max(self.furthest);
        self.ahead_until = self.furthest.saturating_add(window);
        Some((from, self.ahead_until))
    }
}

#[cfg(test)]
mod tests {
    use super::ReadAhead;

    #[test]
    fn read_ahead_follows_sequential_readers_only() {
        let w = 8 << 20;
        let mut ra = ReadAhead::default();
        // The first read says nothing about the pattern.
        assert_eq!(ra.note(0, 65536, w), None);
        // Sequential: a window ahead, then nothing until half of it is used.
        assert_eq!(ra.note(65536, 131072, w), Some((131072, 131072 + w)));
        assert_eq!(ra.note(131072, 1 << 20, w), None);
        let at = 131072 + w / 2;
        assert_eq!(
            ra.note(at, at + 65536, w),
            Some((131072 + w, at + 65536 + w))
        );
        // A jump far away (either way) is random access: no read-ahead, and a stream starts
        // over from there.
        for base in [1u64 << 40, 1 << 30] {
            assert_eq!(ra.note(base, base + 4096, w), None);
            assert_eq!(
                ra.note(base + 4096, base + 8192, w),
                Some((base + 8192, base + 8192 + w))
            );
        }
        // No window, no read-ahead.
        let mut off = ReadAhead::default();
        off.note(0, 4096, 0);
        assert_eq!(off.note(4096, 8192, 0), None);
    }
}
