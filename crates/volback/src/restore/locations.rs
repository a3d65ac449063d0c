//! Where a backup's chunks are, for reading it, in memory that does not grow with the
//! container.
//!
//! The index is a set of segments describing every pack of the container; a restore needs the
//! location of the chunks of one backup. [`LocationTable::for_backup`] reads the index once and
//! keeps only those:
//!
//! 1. **The backup's chunks first, when its manifest says where its extent list is** (the
//!    `extents[].at` hints every backup records). The extent list is read through them, and the
//!    chunk ids it names go into a sorted table (in memory up to `mem_entries`, then a scratch
//!    file) and into a Bloom filter (`Wanted`: 16 bits a chunk, 32 MiB at most).
//! 2. **The index scan** (the scan every reader uses, in the collection protocol's order) then
//!    sets aside the data-chunk locations the filter may want, and the backup's own extent-list
//!    chunks. Per chunk the best copy is kept, as [`crate::index::Index`] does: a live pack
//!    before a condemned one before a missing one, and among equals the first seen. Without
//!    hints (or with a hint a collection made stale), the scan sets aside every data-chunk
//!    location, and the extent list is read afterwards through the extent-list chunks the scan
//!    found.
//! 3. **A join.** The set-aside locations are sorted (in runs of `mem_entries`, merged in
//!    `crate::extsort`) and walked beside the sorted chunk ids, keeping a location only for a
//!    chunk the backup has. Packs are numbered by their position in the scan's pack listing;
//!    once the join is done, the table keeps the ids of the packs it names alone and the
//!    listing is dropped.
//!
//! The result holds a backup's locations: in memory up to `mem_entries`, else a sorted scratch
//! file in `$TMPDIR` (52 bytes a chunk of the backup) with the first id of every block of
//! [`BLOCK_ENTRIES`] kept in memory, half a byte a chunk. Restore looks chunks up a window at a
//! time: a sorted batch is answered with one positional read per block it touches. During the
//! scan, memory is the pack listing (41 bytes a pack), the filter and the sort buffers; at
//! 100 TiB that is ~200 MiB (`docs/performance.md`).
//!
//! gc and verify walk every backup's extent list: they use a `LocationBuilder` of the
//! extent-list chunks of the whole container, on disk beyond `mem_entries`.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::os::unix::fs::FileExt;

use crate::container::extents::hinted_meta_index;
use crate::container::pack_numbers::{Unlisted, is_listed};
use crate::container::{Container, PackListing, manifest_key};
use crate::error::{Error, Result};
use crate::extsort::{Indexed, Record, ScratchOps, Sorted, Table, TableBuilder, scratch_err};
use crate::format::chunk::ChunkKind;
use crate::format::extent_list::Extent;
use crate::format::manifest::Manifest;
use crate::format::pack::PackEntry;
use crate::ids::Hash;
use crate::index::located::ChunkId;
use crate::index::{Locate, Location};

/// Locations held in memory before they are spilled to a temporary file, by default (3.4 MiB;
/// a backup of up to ~2 GiB of data at 32 KiB chunks stays in memory).
pub const DEFAULT_MEM_ENTRIES: usize = 1 << 16;
/// Entries per block of the table file; the first id of each block is kept in memory.
pub const BLOCK_ENTRIES: usize = 64;
/// Bytes per entry on disk: id[32] pack u32 offset u32 stored_len u32 raw_len u32 kind u8
/// compression u8 rank u8 reserved u8 (an unlinked scratch file of this process; no format to
/// keep stable).
const REC_LEN: usize = 52;
/// The Bloom filter's size at most: 16 bits a chunk up to 16 million chunks (a 512 GiB volume
/// at 32 KiB chunks), fewer bits a chunk beyond, so more of the container's locations pass it
/// (they are dropped by the join, at the cost of sorting them).
const WANTED_MAX_BYTES: usize = 32 << 20;

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

/// Looks up `ids` in a sorted table; `out[i]` is set for each id found.
fn locate_in(t: &Indexed<Rec>, ids: &[(usize, Hash)], out: &mut [Option<Location>]) -> Result<()> {
    match t {
        Indexed::Memory(v) => {
            for (i, id) in ids {
                if let Ok(p) = v.binary_search_by(|r| r.id.cmp(id)) {
                    out[*i] = Some(v[p].loc);
                }
            }
        }
        Indexed::File(Sorted { file, len, fences }) => {
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

fn indexed_len(t: &Indexed<Rec>) -> usize {
    match t {
        Indexed::Memory(v) => v.len(),
        Indexed::File(s) => s.len,
    }
}

/// Pack ids by the numbers the table's locations hold.
enum Packs {
    /// Numbered as first seen ([`LocationBuilder`]).
    Own(Vec<Hash>),
    /// By position in the index scan's listing (while a table for a backup is built).
    Listing {
        listed: PackListing,
        unlisted: Unlisted,
    },
    /// The packs a backup's locations name, sorted by number (listing numbers).
    Named(Vec<(u32, Hash)>),
}

impl Packs {
    fn id(&self, n: u32) -> Hash {
        match self {
            Packs::Own(v) => v.get(n as usize).copied().unwrap_or(Hash([0; 32])),
            Packs::Listing { listed, unlisted } => unlisted.id(listed, n),
            Packs::Named(v) => match v.binary_search_by_key(&n, |(p, _)| *p) {
                Ok(i) => v[i].1,
                Err(_) => Hash([0; 32]),
            },
        }
    }
}

/// Where chunks are, for reading backups: see the module documentation.
pub struct LocationTable {
    /// The backup's extent-list chunks, sorted by id (empty in a [`LocationBuilder`]'s table,
    /// which keeps them in `data`).
    meta: Vec<Rec>,
    data: Indexed<Rec>,
    packs: Packs,
}

impl LocationTable {
    /// The locations of every chunk backup `m` needs (its extent list's and its data's), read
    /// from the container's index: see the module documentation. At most `mem_entries` data
    /// locations are held in memory at any time; the rest go to scratch files in `$TMPDIR`.
    pub fn for_backup(c: &Container, m: &Manifest, mem_entries: usize) -> Result<LocationTable> {
        let key = manifest_key(&m.backup_id);
        let metas: HashSet<Hash> = m.meta_ids(&key)?.into_iter().map(|(id, _)| id).collect();
        let early = match hinted_meta_index(m) {
            Some(hinted) => match needed_chunks(c, &hinted, m, mem_entries) {
                Ok(needed) => Some(needed),
                Err(e) => {
                    tracing::info!(
                        backup = %m.backup_id,
                        error = %e,
                        "the extent list is not where the manifest says: reading it after the index"
                    );
                    None
                }
            },
            None => None,
        };
        let wanted = early.as_ref().map(Wanted::of).transpose()?;
        let mut meta: Vec<Rec> = Vec::new();
        let mut data: TableBuilder<Rec> = TableBuilder::new(mem_entries.max(BLOCK_ENTRIES));
        let (scan, unlisted) = c.scan_index_numbered(|_, entries, pos, rank| {
            for e in entries {
                let rec = Rec {
                    id: e.id,
                    loc: Location::of(e, pos),
                    rank,
                };
                if e.kind == ChunkKind::Meta {
                    if metas.contains(&e.id) {
                        meta.push(rec);
                    }
                } else if wanted.as_ref().is_none_or(|w| w.may_hold(&e.id)) {
                    data.push(rec)?;
                }
            }
            Ok(())
        })?;
        drop(wanted);
        crate::extsort::sort_dedup(&mut meta);
        // The decoded segments were many small allocations, freed now but scattered through
        // the heap: a restore would otherwise keep ~1 MiB of them per GiB of data for its run.
        trim_heap();
        let mut table = LocationTable {
            meta,
            data: Indexed::Memory(Vec::new()),
            packs: Packs::Listing {
                listed: scan.listed,
                unlisted,
            },
        };
        let needed = match early {
            Some(needed) => needed,
            None => needed_chunks(c, &table, m, mem_entries)?,
        };
        let mut used: BTreeSet<u32> = table.meta.iter().map(|r| r.loc.pack).collect();
        let mut ids = needed.reader();
        table.data = data.finish_indexed(BLOCK_ENTRIES, |r| {
            while let Some(ChunkId(id)) = ids.peek()? {
                if id > r.id {
                    return Ok(false);
                }
                ids.next_record()?;
                if id == r.id {
                    used.insert(r.loc.pack);
                    return Ok(true);
                }
            }
            Ok(false)
        })?;
        table.packs = Packs::Named(used.into_iter().map(|n| (n, table.packs.id(n))).collect());
        trim_heap();
        Ok(table)
    }

    /// Number of data chunks located (each once).
    pub fn data_len(&self) -> usize {
        indexed_len(&self.data)
    }

    /// Whether data-chunk locations went to a temporary file.
    pub fn spilled(&self) -> bool {
        matches!(self.data, Indexed::File(_))
    }
}

/// The data chunks backup `m` names, each once, sorted: its extent list read through `meta`.
fn needed_chunks(
    c: &Container,
    meta: &(impl Locate + ?Sized),
    m: &Manifest,
    mem_entries: usize,
) -> Result<Table<ChunkId>> {
    let mut ids = TableBuilder::new(mem_entries);
    c.walk_extents(meta, m, |_, e| match e {
        Extent::Data { id, .. } => ids.push(ChunkId(*id)),
        Extent::Zero { .. } => Ok(()),
    })?;
    ids.finish()
}

/// A Bloom filter of the chunks a backup needs, so the index scan sets aside only their
/// locations (and a few others). Chunk ids are BLAKE3 hashes, uniformly distributed, so the
/// probe positions come from the id's own bytes (double hashing on two of its words): no hash
/// function, and no crate needed for ~30 lines.
struct Wanted {
    bits: Vec<u64>,
    /// Bits − 1 (the bit count is a power of two).
    mask: u64,
    probes: u32,
}

impl Wanted {
    fn of(needed: &Table<ChunkId>) -> Result<Wanted> {
        let n = needed.len().max(1) as u64;
        let max_bits = (WANTED_MAX_BYTES * 8) as u64;
        let nbits = n.saturating_mul(16).next_power_of_two().clamp(64, max_bits);
        // ln 2 · bits per chunk probes minimise false positives (at least one).
        let probes = ((nbits as f64 / n as f64) * std::f64::consts::LN_2).round() as u32;
        let mut w = Wanted {
            bits: vec![0; (nbits / 64) as usize],
            mask: nbits - 1,
            probes: probes.clamp(1, 12),
        };
        let mut r = needed.reader();
        while let Some(ChunkId(id)) = r.next_record()? {
            for bit in w.positions(&id) {
                w.bits[(bit / 64) as usize] |= 1 << (bit % 64);
            }
        }
        Ok(w)
    }

    fn positions(&self, id: &Hash) -> impl Iterator<Item = u64> + use<> {
        let word = |i: usize| u64::from_le_bytes(id.0[i..i + 8].try_into().unwrap_or([0; 8]));
        let (h1, h2) = (word(0), word(8) | 1);
        let mask = self.mask;
        (0..u64::from(self.probes)).map(move |i| h1.wrapping_add(i.wrapping_mul(h2)) & mask)
    }

    /// False only for a chunk the backup does not need.
    fn may_hold(&self, id: &Hash) -> bool {
        self.positions(id)
            .all(|bit| self.bits[(bit / 64) as usize] & (1 << (bit % 64)) != 0)
    }
}

impl Locate for LocationTable {
    fn locate_all(&self, ids: &[Hash]) -> Result<Vec<Option<Location>>> {
        let mut out: Vec<Option<Location>> = ids
            .iter()
            .map(|id| {
                self.meta
                    .binary_search_by(|r| r.id.cmp(id))
                    .ok()
                    .map(|p| self.meta[p].loc)
            })
            .collect();
        let rest: Vec<(usize, Hash)> = ids
            .iter()
            .enumerate()
            .filter(|(i, _)| out[*i].is_none())
            .map(|(i, id)| (i, *id))
            .collect();
        locate_in(&self.data, &rest, &mut out)?;
        Ok(out)
    }

    fn pack_id(&self, pos: u32) -> Hash {
        self.packs.id(pos)
    }

    fn pack_listed(&self, pos: u32) -> Option<bool> {
        match self.packs {
            Packs::Own(_) => None,
            Packs::Listing { .. } | Packs::Named(_) => Some(is_listed(pos)),
        }
    }
}

/// Builds a [`LocationTable`] of the extent-list chunks of every pack it is given, for gc and
/// verify (which walk every backup's extent list), holding at most `mem_entries` locations in
/// memory; packs are numbered as they come, only those that hold extent-list chunks.
pub(crate) struct LocationBuilder {
    packs: Vec<Hash>,
    numbers: HashMap<Hash, u32>,
    recs: TableBuilder<Rec>,
    /// The first error while spilling (the index scan's visitor cannot return one).
    failed: Option<Error>,
}

impl LocationBuilder {
    /// A builder holding at most `mem_entries` locations in memory.
    pub(crate) fn new(mem_entries: usize) -> Self {
        LocationBuilder {
            packs: Vec::new(),
            numbers: HashMap::new(),
            recs: TableBuilder::new(mem_entries.max(BLOCK_ENTRIES)),
            failed: None,
        }
    }

    /// Adds the extent-list chunks among a pack's `entries`, with the pack's rank (see
    /// `container::index_scan::read_rank`; lower is better).
    pub(crate) fn add_meta(&mut self, pack: Hash, entries: &[PackEntry], rank: u8) {
        if self.failed.is_some() {
            return;
        }
        let mut of_meta = entries
            .iter()
            .filter(|e| e.kind == ChunkKind::Meta)
            .peekable();
        if of_meta.peek().is_none() {
            return;
        }
        let next = self.packs.len() as u32;
        let pos = *self.numbers.entry(pack).or_insert(next);
        if pos == next {
            self.packs.push(pack);
        }
        for e in of_meta {
            let rec = Rec {
                id: e.id,
                loc: Location::of(e, pos),
                rank,
            };
            if let Err(e) = self.recs.push(rec) {
                self.failed = Some(e);
                return;
            }
        }
    }

    /// The table: sorted in memory, or merged into its file.
    pub(crate) fn finish(self) -> Result<LocationTable> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        Ok(LocationTable {
            meta: Vec::new(),
            data: self.recs.finish_indexed(BLOCK_ENTRIES, |_| Ok(true))?,
            packs: Packs::Own(self.packs),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::testing::{backup, volume};
    use crate::store::{MemStore, ObjectStore};
    use std::sync::Arc;

    /// A backup's table locates each of its chunks where the whole index does (the best copy),
    /// in a pack it names and knows to be listed, and no chunk of another backup: read through
    /// the manifest's hints, without them, or through a stale one, in memory or spilled.
    #[test]
    fn locates_a_backups_chunks_as_the_index_does_and_no_others() {
        let store: Arc<dyn ObjectStore> = Arc::new(MemStore::new());
        let c = Container::with_store(store, "m".into(), true, None).unwrap();
        let day1 = volume(1, 6 << 20);
        let mut day2 = day1.clone();
        day2[1 << 20..(1 << 20) + 200_000].copy_from_slice(&volume(2, 200_000));
        backup(&c, "a", "v", None, day1);
        let other = backup(&c, "other", "v", None, volume(3, 2 << 20));
        let m = backup(&c, "b", "v", Some("a"), day2);
        assert!(m.extents.iter().all(|r| r.at.is_some()));
        let index = c.load_index().unwrap();
        let ids_of = |m: &Manifest| {
            let mut ids = Vec::new();
            c.walk_extents(&index, m, |_, e| {
                if let Extent::Data { id, .. } = e {
                    ids.push(*id);
                }
                Ok(())
            })
            .unwrap();
            ids.sort();
            ids.dedup();
            ids
        };
        let own = ids_of(&m);
        assert!(own.len() > 2 * BLOCK_ENTRIES, "{}", own.len());
        let foreign: Vec<Hash> = ids_of(&other)
            .into_iter()
            .filter(|id| own.binary_search(id).is_err())
            .collect();
        assert!(!foreign.is_empty());
        let metas: Vec<Hash> = m
            .meta_ids("b")
            .unwrap()
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        let probe: Vec<Hash> = own.iter().chain(&metas).copied().collect();
        let want = index.locate_all(&probe).unwrap();

        let unhinted = Manifest {
            extents: (m.extents.iter())
                .map(|r| crate::format::manifest::MetaRef {
                    at: None,
                    ..r.clone()
                })
                .collect(),
            ..m.clone()
        };
        let mut stale = m.clone();
        if let Some(at) = stale.extents[0].at.as_mut() {
            at.offset += 1;
        }
        for (name, m) in [("hinted", &m), ("unhinted", &unhinted), ("stale", &stale)] {
            for mem in [DEFAULT_MEM_ENTRIES, BLOCK_ENTRIES] {
                let t = LocationTable::for_backup(&c, m, mem).unwrap();
                assert_eq!(t.data_len(), own.len(), "{name}, mem {mem}");
                assert_eq!(t.spilled(), mem == BLOCK_ENTRIES, "{name}, mem {mem}");
                let got = t.locate_all(&probe).unwrap();
                for (n, (g, w)) in got.iter().zip(&want).enumerate() {
                    let (g, w) = (g.unwrap(), w.unwrap());
                    assert_eq!(
                        (g.offset, g.raw_len, g.stored_len, g.kind),
                        (w.offset, w.raw_len, w.stored_len, w.kind),
                        "{name}, mem {mem}, probe {n}"
                    );
                    assert_eq!(t.pack_id(g.pack), Locate::pack_id(&index, w.pack));
                    assert_eq!(t.pack_listed(g.pack), Some(true));
                }
                let none = t.locate_all(&foreign).unwrap();
                assert!(none.iter().all(Option::is_none), "{name}, mem {mem}");
            }
        }
    }

    /// The filter never drops a chunk it was given, and passes few others.
    #[test]
    fn the_filter_holds_what_it_was_given() {
        let mut b = TableBuilder::new(1000);
        for i in 0..5000u32 {
            b.push(ChunkId(Hash::of(&i.to_le_bytes()))).unwrap();
        }
        let w = Wanted::of(&b.finish().unwrap()).unwrap();
        assert!((0..5000u32).all(|i| w.may_hold(&Hash::of(&i.to_le_bytes()))));
        let passed = (5000..105_000u32)
            .filter(|i| w.may_hold(&Hash::of(&i.to_le_bytes())))
            .count();
        assert!(passed < 100, "{passed} of 100,000 others passed");
    }
}
