//! The export's chunk cache: verified chunks by id, least recently used first out, bounded in
//! bytes; concurrent readers of one chunk share a single fetch.
//!
//! A chunk is inserted only after [`Container::fetch_range`](crate::container::Container)
//! decompressed it and checked its BLAKE3, so whatever the cache returns is verified. Requests
//! in flight hold their own references to the chunks they use, so memory is at most the
//! capacity plus what the requests in flight (each at most the largest request) hold.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Condvar, Mutex, MutexGuard};

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::ids::Hash;

/// A chunk wanted by a request: its id and where it sits in the volume (for error messages).
pub type Want = (Hash, u64);

#[derive(Default)]
struct Inner {
    /// id → (chunk, last use)
    chunks: HashMap<Hash, (Bytes, u64)>,
    /// last use → id, oldest first
    by_use: BTreeMap<u64, Hash>,
    /// Chunks some thread is fetching now.
    in_flight: HashSet<Hash>,
    bytes: u64,
    clock: u64,
}

/// A bounded cache of verified chunks.
pub struct ChunkCache {
    inner: Mutex<Inner>,
    fetched: Condvar,
    capacity: u64,
}

/// What a cache lookup found, for the export's statistics.
#[derive(Debug, Default, Clone, Copy)]
pub struct Lookup {
    /// Chunks served from the cache (or from another request's fetch).
    pub hits: u64,
    /// Chunks this call fetched.
    pub fetched: u64,
}

impl ChunkCache {
    /// A cache holding at most `capacity` bytes of chunks.
    pub fn new(capacity: u64) -> Self {
        ChunkCache {
            inner: Mutex::new(Inner::default()),
            fetched: Condvar::new(),
            capacity,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes of chunks held now.
    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }

    /// The chunks `wants`, from the cache where it has them; the rest are fetched with
    /// `fetch` (one call for all of them) and kept. A chunk another thread is fetching is
    /// waited for rather than fetched twice; if that fetch fails, this call fetches it itself,
    /// so each request sees its own error.
    pub fn get(
        &self,
        wants: &[Want],
        fetch: impl Fn(&[Want]) -> Result<Vec<(Hash, Bytes)>>,
    ) -> Result<(HashMap<Hash, Bytes>, Lookup)> {
        let mut out = HashMap::with_capacity(wants.len());
        let mut stats = Lookup::default();
        let mut mine = Vec::new();
        let mut theirs = Vec::new();
        {
            let mut g = self.lock();
            for &(id, at) in wants {
                if out.contains_key(&id) || mine.iter().any(|(m, _)| *m == id) {
                    continue;
                }
                if let Some(chunk) = touch(&mut g, &id) {
                    out.insert(id, chunk);
                    stats.hits += 1;
                } else if g.in_flight.contains(&id) {
                    theirs.push((id, at));
                } else {
                    g.in_flight.insert(id);
                    mine.push((id, at));
                }
            }
        }
        if !mine.is_empty() {
            let result = fetch(&mine);
            let mut g = self.lock();
            for (id, _) in &mine {
                g.in_flight.remove(id);
            }
            match result {
                Ok(chunks) => {
                    for (id, chunk) in chunks {
                        self.insert(&mut g, id, chunk.clone());
                        out.insert(id, chunk);
                    }
                    stats.fetched += mine.len() as u64;
                }
                Err(e) => {
                    self.fetched.notify_all();
                    return Err(e);
                }
            }
            self.fetched.notify_all();
        }
        // Chunks another request was fetching: wait for them; fetch what it failed to get (or
        // what was evicted again meanwhile) here.
        let mut again = Vec::new();
        if !theirs.is_empty() {
            let mut g = self.lock();
            for (id, at) in theirs {
                loop {
                    if let Some(chunk) = touch(&mut g, &id) {
                        out.insert(id, chunk);
                        stats.hits += 1;
                        break;
                    }
                    if !g.in_flight.contains(&id) {
                        again.push((id, at));
                        break;
                    }
                    g = self.fetched.wait(g).unwrap_or_else(|p| p.into_inner());
                }
            }
        }
        if !again.is_empty() {
            let chunks = fetch(&again)?;
            let mut g = self.lock();
            for (id, chunk) in chunks {
                self.insert(&mut g, id, chunk.clone());
                out.insert(id, chunk);
            }
            stats.fetched += again.len() as u64;
        }
        for (id, at) in wants {
            if !out.contains_key(id) {
                return Err(Error::Internal(format!(
                    "chunk {id} at volume offset {at} was not fetched"
                )));
            }
        }
        Ok((out, stats))
    }

    fn insert(&self, g: &mut Inner, id: Hash, chunk: Bytes) {
        if g.chunks.contains_key(&id) || chunk.len() as u64 > self.capacity {
            return;
        }
        g.clock += 1;
        let now = g.clock;
        g.bytes += chunk.len() as u64;
        g.chunks.insert(id, (chunk, now));
        g.by_use.insert(now, id);
        while g.bytes > self.capacity {
            let Some((_, old)) = g.by_use.pop_first() else {
                break;
            };
            if let Some((c, _)) = g.chunks.remove(&old) {
                g.bytes -= c.len() as u64;
            }
        }
    }
}

/// The chunk `id` if cached, marked as just used.
fn touch(g: &mut Inner, id: &Hash) -> Option<Bytes> {
    g.clock += 1;
    let now = g.clock;
    let (chunk, used) = g.chunks.get_mut(id)?;
    let before = std::mem::replace(used, now);
    let chunk = chunk.clone();
    g.by_use.remove(&before);
    g.by_use.insert(now, *id);
    Some(chunk)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    fn id(n: u8) -> Hash {
        Hash([n; 32])
    }

    #[test]
    fn keeps_at_most_its_capacity_and_evicts_the_least_recently_used() {
        let cache = ChunkCache::new(3000);
        let calls = AtomicU64::new(0);
        let fetch = |w: &[Want]| {
            calls.fetch_add(1, Ordering::Relaxed);
            Ok(w.iter()
                .map(|(id, _)| (*id, Bytes::from(vec![id.0[0]; 1000])))
                .collect())
        };
        for n in [1, 2, 3] {
            cache.get(&[(id(n), 0)], fetch).unwrap();
        }
        assert_eq!(cache.bytes(), 3000);
        // 1 is used again, so 2 is the oldest when 4 comes in.
        let (got, stats) = cache.get(&[(id(1), 0)], fetch).unwrap();
        assert_eq!(got[&id(1)][0], 1);
        assert_eq!((stats.hits, stats.fetched), (1, 0));
        cache.get(&[(id(4), 0)], fetch).unwrap();
        assert_eq!(cache.bytes(), 3000);
        assert_eq!(calls.load(Ordering::Relaxed), 4);
        let (_, stats) = cache
            .get(&[(id(1), 0), (id(3), 0), (id(4), 0)], fetch)
            .unwrap();
        assert_eq!((stats.hits, stats.fetched), (3, 0));
        let (_, stats) = cache.get(&[(id(2), 0)], fetch).unwrap();
        assert_eq!((stats.hits, stats.fetched), (0, 1));
    }

    #[test]
    fn a_failed_fetch_is_an_error_and_leaves_nothing_in_flight() {
        let cache = ChunkCache::new(1 << 20);
        let err = cache
            .get(&[(id(9), 77)], |_| Err(Error::Internal("damaged".into())))
            .unwrap_err();
        assert_eq!(err.kind(), "internal");
        let (got, _) = cache
            .get(&[(id(9), 77)], |w| {
                Ok(w.iter()
                    .map(|(i, _)| (*i, Bytes::from_static(b"x")))
                    .collect())
            })
            .unwrap();
        assert_eq!(&got[&id(9)][..], b"x");
        // A fetch that does not return a wanted chunk is an error, not a short answer.
        let err = cache.get(&[(id(10), 5)], |_| Ok(Vec::new())).unwrap_err();
        assert!(err.to_string().contains("volume offset 5"), "{err}");
    }

    #[test]
    fn concurrent_readers_of_one_chunk_fetch_it_once() {
        let cache = ChunkCache::new(1 << 20);
        let calls = AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    cache
                        .get(&[(id(5), 0)], |w| {
                            calls.fetch_add(1, Ordering::Relaxed);
                            std::thread::sleep(std::time::Duration::from_millis(50));
                            Ok(w.iter()
                                .map(|(i, _)| (*i, Bytes::from_static(b"c")))
                                .collect())
                        })
                        .unwrap()
                });
            }
        });
        assert_eq!(calls.load(Ordering::Relaxed), 1);
    }
}
