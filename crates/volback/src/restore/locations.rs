//! Chunk locations for reading a backup, in memory that does not grow with the container.
//!
//! A restore needs the location of every chunk its backup references. Holding the whole index
//! as a hash map costs ~100 bytes per chunk of the *container* (2–3 GiB for a TiB of unique
//! data), so a restore host would need memory in proportion to the data. A [`LocationTable`]
//! instead keeps in memory only the pack list and the extent-list ("meta") chunks (~0.1 % of
//! all chunks), and puts the data chunks' locations in a sorted, unlinked temporary file (in
//! `$TMPDIR`), keeping the first id of every block of [`BLOCK_ENTRIES`] entries in memory: half
//! a byte per chunk. Restore looks chunks up a window at a time; a sorted batch is answered with
//! one positional read per block it touches, which the page cache usually serves.
//!
//! Building the table is an external sort. Entries stream from the index segments (the scan
//! the in-memory index uses, in the same protocol order) into sorted runs of `mem_entries`,
//! written to a first temporary file, then merged into the final file. Per chunk the best
//! location is kept, as [`Index`] does: a live pack before a condemned one before a missing
//! one, and among equals the first seen. A container with at most `mem_entries` data chunks
//! never touches the disk: its table is one sorted array.
//!
//! The temporary files hold 52 bytes per chunk of the container (1.7 GiB per TiB, twice that
//! while merging); they vanish when the table is dropped, or with the process.

use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::container::index_scan::read_rank;
use crate::container::{Container, IndexScan, IndexUse};
use crate::error::{Error, Result};
use crate::extsort::{Record, Runs, ScratchOps, Sorted, scratch_err, sort_dedup};
use crate::format::chunk::ChunkKind;
use crate::format::pack::PackEntry;
use crate::ids::Hash;
use crate::index::{Index, Locate, Location};

/// Data-chunk locations held in memory before they are spilled to a temporary file, by default
/// (3.4 MiB; a container of up to ~2 GiB of unique data at 32 KiB chunks stays in memory).
pub const DEFAULT_MEM_ENTRIES: usize = 1 << 16;
/// Entries per block of the table file; the first id of each block is kept in memory.
pub const BLOCK_ENTRIES: usize = 64;
/// Bytes per entry on disk: id[32] pack u32 offset u32 stored_len u32 raw_len u32 kind u8
/// compression u8 rank u8 reserved u8 (an unlinked scratch file of this process; no format to
/// keep stable).
const REC_LEN: usize = 52;

/// Hands the allocator's free pages back to the kernel. glibc keeps freed memory inside its
/// arenas, scattered between live blocks, and later allocations reuse (touch) those holes: a
/// long restore's resident memory would creep up with the volume size without it. Costs well
/// under a millisecond per call; a no-op where the allocator is not glibc's.
pub(crate) fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free heap pages; it takes no pointers.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Names the scratch files in internal errors.
const SCRATCH: &str = "restore location table";

#[derive(Clone, Copy)]
struct Rec {
    id: Hash,
    loc: Location,
    rank: u8,
}

impl Record for Rec {
    const LEN: usize = REC_LEN;
    const OPS: ScratchOps = ScratchOps {
        create: "create restore location table in",
        write: "write restore location table in",
        read: "read restore location table in",
    };
    type Id = Hash;
    /// By id, the best rank first.
    type Order = ([u8; 32], u8);

    fn id(&self) -> Hash {
        self.id
    }

    fn order(&self) -> ([u8; 32], u8) {
        (self.id.0, self.rank)
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.id.0);
        self.loc.encode(out);
        out.extend_from_slice(&[self.rank, 0]);
    }

    fn decode(b: &[u8]) -> Result<Rec> {
        let mut id = [0u8; 32];
        id.copy_from_slice(&b[..32]);
        Ok(Rec {
            id: Hash(id),
            loc: Location::decode(&b[32..50], SCRATCH)?,
            rank: b[50],
        })
    }
}

enum Data {
    /// Sorted by id.
    Memory(Vec<Rec>),
    /// Sorted entries in an unlinked file; `fences[b]` is the first id of block `b`.
    File {
        file: File,
        len: usize,
        fences: Vec<Hash>,
    },
}

/// Where each chunk of a container is, for reading backups: see the module documentation.
pub struct LocationTable {
    /// The pack list and the extent-list chunks.
    meta: Index,
    data: Data,
}

impl LocationTable {
    /// Scans the container's index (see [`Container::scan_index`]) into a table that holds at
    /// most `mem_entries` data-chunk locations in memory at any time.
    pub fn load(container: &Container, mem_entries: usize) -> Result<LocationTable> {
        Ok(Self::load_report(container, mem_entries, true)?.0)
    }

    /// Like [`LocationTable::load`], with what the scan learnt (damaged segments among it).
    /// With `meta_in_memory` false, the extent-list chunks go to the file too (a container's
    /// extent lists are ~0.1–0.4 % of its chunks: ~1 GiB of memory at 100 TiB), and only the
    /// pack list stays in memory, at the cost of a block read per group of extent-list chunks.
    pub fn load_report(
        container: &Container,
        mem_entries: usize,
        meta_in_memory: bool,
    ) -> Result<(LocationTable, IndexScan)> {
        let mut b = LocationBuilder::new(mem_entries, meta_in_memory);
        let scan = container.scan_index(IndexUse::Read, |pack, entries, exists, condemned| {
            b.add(*pack, entries, read_rank(exists, condemned));
        })?;
        let table = b.finish()?;
        // The scan's decoded segments were many small allocations, freed now but scattered
        // through the heap: a restore would otherwise keep ~1 MiB of them per GiB of data for
        // its whole run.
        trim_heap();
        Ok((table, scan))
    }

    /// Number of data chunks located (each once).
    pub fn data_len(&self) -> usize {
        match &self.data {
            Data::Memory(v) => v.len(),
            Data::File { len, .. } => *len,
        }
    }

    /// Whether data-chunk locations went to a temporary file.
    pub fn spilled(&self) -> bool {
        matches!(self.data, Data::File { .. })
    }

    /// Looks up `ids` among the data chunks; `out[i]` is set for each id found.
    fn locate_data(&self, ids: &[(usize, Hash)], out: &mut [Option<Location>]) -> Result<()> {
        match &self.data {
            Data::Memory(v) => {
                for (i, id) in ids {
                    if let Ok(p) = v.binary_search_by(|r| r.id.cmp(id)) {
                        out[*i] = Some(v[p].loc);
                    }
                }
            }
            Data::File { file, len, fences } => {
                let mut order: Vec<&(usize, Hash)> = ids.iter().collect();
                order.sort_unstable_by_key(|(_, id)| *id);
                let mut block = vec![0u8; BLOCK_ENTRIES * REC_LEN];
                let mut loaded: Option<(usize, usize)> = None; // (block, entries in it)
                for (i, id) in order {
                    let b = fences.partition_point(|f| f <= id);
                    if b == 0 {
                        continue;
                    }
                    let b = b - 1;
                    let n = match loaded {
                        Some((lb, n)) if lb == b => n,
                        _ => {
                            let n = BLOCK_ENTRIES.min(len - b * BLOCK_ENTRIES);
                            file.read_exact_at(
                                &mut block[..n * REC_LEN],
                                (b * BLOCK_ENTRIES * REC_LEN) as u64,
                            )
                            .map_err(scratch_err(Rec::OPS.read))?;
                            loaded = Some((b, n));
                            n
                        }
                    };
                    let (mut lo, mut hi) = (0, n);
                    while lo < hi {
                        let mid = (lo + hi) / 2;
                        let r = &block[mid * REC_LEN..(mid + 1) * REC_LEN];
                        match r[..32].cmp(&id.0[..]) {
                            std::cmp::Ordering::Less => lo = mid + 1,
                            std::cmp::Ordering::Greater => hi = mid,
                            std::cmp::Ordering::Equal => {
                                out[*i] = Some(Rec::decode(r)?.loc);
                                break;
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

impl Locate for LocationTable {
    fn locate_all(&self, ids: &[Hash]) -> Result<Vec<Option<Location>>> {
        let mut out: Vec<Option<Location>> =
            ids.iter().map(|id| self.meta.get(id).copied()).collect();
        let rest: Vec<(usize, Hash)> = ids
            .iter()
            .enumerate()
            .filter(|(i, _)| out[*i].is_none())
            .map(|(i, id)| (i, *id))
            .collect();
        self.locate_data(&rest, &mut out)?;
        Ok(out)
    }

    fn pack_id(&self, pos: u32) -> Hash {
        self.meta.pack_id(pos)
    }
}

/// Builds a [`LocationTable`] from packs and their entries, in any order.
pub(crate) struct LocationBuilder {
    meta: Index,
    /// Whether extent-list chunks are kept in memory (else with the data chunks).
    meta_in_memory: bool,
    mem_entries: usize,
    buf: Vec<Rec>,
    runs: Runs,
    /// The first error while spilling (the index scan's visitor cannot return one).
    failed: Option<Error>,
}

impl LocationBuilder {
    /// A builder holding at most `mem_entries` locations in memory besides the extent-list
    /// chunks (and those too unless `meta_in_memory`).
    pub(crate) fn new(mem_entries: usize, meta_in_memory: bool) -> Self {
        LocationBuilder {
            meta: Index::new(),
            meta_in_memory,
            mem_entries: mem_entries.max(BLOCK_ENTRIES),
            buf: Vec::new(),
            runs: Runs::new(),
            failed: None,
        }
    }

    /// Adds a pack's entries with a rank (see [`Index::add_pack_ranked`]; lower is better).
    pub(crate) fn add(&mut self, pack: Hash, entries: &[PackEntry], rank: u8) {
        if self.failed.is_some() {
            return;
        }
        let in_memory = |e: &&PackEntry| self.meta_in_memory && e.kind == ChunkKind::Meta;
        let pos = self
            .meta
            .add_pack_ranked(pack, entries.iter().filter(in_memory), rank);
        let on_disk = entries.iter().filter(|e| !in_memory(e));
        for e in on_disk {
            self.buf.push(Rec {
                id: e.id,
                loc: Location::of(e, pos),
                rank,
            });
            if self.buf.len() >= self.mem_entries {
                if let Err(e) = self.runs.spill(&mut self.buf) {
                    self.failed = Some(e);
                    return;
                }
                self.buf.clear();
            }
        }
    }

    /// Adds the extent-list chunks among a pack's `entries` alone.
    pub(crate) fn add_meta(&mut self, pack: Hash, entries: &[PackEntry], rank: u8) {
        let of_meta: Vec<PackEntry> = entries
            .iter()
            .filter(|e| e.kind == ChunkKind::Meta)
            .cloned()
            .collect();
        if !of_meta.is_empty() {
            self.add(pack, &of_meta, rank);
        }
    }

    /// The table: sorted in memory, or merged into its file.
    pub(crate) fn finish(mut self) -> Result<LocationTable> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        if self.runs.is_empty() {
            sort_dedup(&mut self.buf);
            self.buf.shrink_to_fit();
            return Ok(LocationTable {
                meta: self.meta,
                data: Data::Memory(self.buf),
            });
        }
        if !self.buf.is_empty() {
            self.runs.spill(&mut self.buf)?;
        }
        self.buf = Vec::new();
        let Sorted { file, len, fences } = self.runs.merge::<Rec>(BLOCK_ENTRIES)?;
        Ok(LocationTable {
            meta: self.meta,
            data: Data::File { file, len, fences },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::chunk::Compression;
    use crate::format::pack::PackEntry;
    use crate::store::{MemStore, ObjectStore};
    use std::sync::Arc;

    fn entry(id: Hash, kind: ChunkKind, offset: u32) -> PackEntry {
        PackEntry {
            id,
            kind,
            compression: Compression::Zstd,
            raw_len: 1000 + offset,
            stored_len: 500,
            offset,
        }
    }

    /// Every id the in-memory index locates, the table locates at the same place (also when it
    /// spills, merges runs and dedups copies across them), and no other id.
    #[test]
    fn agrees_with_the_index_in_memory_and_spilled() {
        let store: Arc<dyn ObjectStore> = Arc::new(MemStore::new());
        let c = Container::with_store(store.clone(), "m".into(), true, None).unwrap();
        let mut ids = Vec::new();
        // 40 segments of 50 chunks; every 7th chunk is stored again in the next segment (the
        // copy in an existing pack wins, else the first), every 13th is an extent-list chunk.
        for s in 0..40u32 {
            let mut entries = Vec::new();
            for i in 0..50u32 {
                let id = Hash::of(&(s * 50 + i).to_le_bytes());
                let kind = if i % 13 == 0 {
                    ChunkKind::Meta
                } else {
                    ChunkKind::Data
                };
                entries.push(entry(id, kind, 8 + i * 500));
                ids.push(id);
                if s > 0 && i % 7 == 0 {
                    entries.push(entry(ids[(s as usize - 1) * 50 + i as usize], kind, 9));
                }
            }
            let pack = Hash::of(&[s as u8; 3]);
            if s % 2 == 1 {
                // Odd packs exist: their copies beat those of the (missing) even packs.
                let key = crate::container::pack_key(&pack);
                store.put(&key, bytes::Bytes::from_static(b"x")).unwrap();
            }
            c.write_index_segment(&[(pack, entries)]).unwrap();
        }
        let index = c.load_index().unwrap();
        let absent: Vec<Hash> = (0..100u32).map(|i| Hash::of(&[i as u8; 5])).collect();
        let mut probe: Vec<Hash> = ids.iter().chain(&absent).copied().collect();
        probe.reverse();
        let want = index.locate_all(&probe).unwrap();
        assert_eq!(want.iter().flatten().count(), ids.len());
        for mem in [DEFAULT_MEM_ENTRIES, 64, 100, 333] {
            let t = LocationTable::load(&c, mem).unwrap();
            assert_eq!(t.spilled(), mem < 2000, "mem {mem}");
            let data = index.iter().filter(|(_, l)| l.kind == ChunkKind::Data);
            assert_eq!(t.data_len(), data.count());
            let got = t.locate_all(&probe).unwrap();
            for (n, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(g, w, "mem {mem}, probe {n}");
                if let (Some(g), Some(w)) = (g, w) {
                    assert_eq!(t.pack_id(g.pack), Locate::pack_id(&index, w.pack));
                }
            }
        }
    }
}
