//! Records of the scratch tables that keep gc and verify in bounded memory (`crate::extsort`):
//! a chunk and where it is, sorted by chunk ([`ByChunk`]: every copy of a chunk together;
//! [`BestCopy`]: the best one alone) or by place ([`ByPlace`]: chunks in pack order, to read
//! each pack front to back); and chunk ids alone ([`ChunkId`]: a set of chunks).

use std::collections::HashMap;
use std::ops::Deref;

use super::{Locate, Location};
use crate::error::Result;
use crate::extsort::{Record, ScratchOps};
use crate::ids::Hash;

/// A chunk and where it is (`loc.pack` is a position in the caller's pack list).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Located {
    pub(crate) id: Hash,
    pub(crate) loc: Location,
}

/// Names the scratch tables in errors.
const TABLE: &str = "chunk location table";

impl Located {
    const LEN: usize = 32 + Location::ENCODED_LEN;

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.id.0);
        self.loc.encode(out);
    }

    fn decode(b: &[u8]) -> Result<Located> {
        let mut id = [0u8; 32];
        id.copy_from_slice(&b[..32]);
        Ok(Located {
            id: Hash(id),
            loc: Location::decode(&b[32..], TABLE)?,
        })
    }
}

/// Sorted by chunk id, then pack: one record per (chunk, pack) pair.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ByChunk(pub(crate) Located);

/// Sorted by pack, then offset: one record per place.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ByPlace(pub(crate) Located);

impl Deref for ByChunk {
    type Target = Located;
    fn deref(&self) -> &Located {
        &self.0
    }
}

impl Deref for ByPlace {
    type Target = Located;
    fn deref(&self) -> &Located {
        &self.0
    }
}

const OPS: ScratchOps = ScratchOps {
    create: "create chunk location table in",
    write: "write chunk location table in",
    read: "read chunk location table in",
};

impl Record for ByChunk {
    const LEN: usize = Located::LEN;
    const OPS: ScratchOps = OPS;
    type Id = (Hash, u32);
    type Order = (Hash, u32);

    fn id(&self) -> (Hash, u32) {
        (self.0.id, self.0.loc.pack)
    }

    fn order(&self) -> (Hash, u32) {
        self.id()
    }

    fn encode(&self, out: &mut Vec<u8>) {
        self.0.encode(out);
    }

    fn decode(b: &[u8]) -> Result<Self> {
        Located::decode(b).map(ByChunk)
    }
}

impl Record for ByPlace {
    const LEN: usize = Located::LEN;
    const OPS: ScratchOps = OPS;
    type Id = (u32, u32);
    type Order = (u32, u32);

    fn id(&self) -> (u32, u32) {
        (self.0.loc.pack, self.0.loc.offset)
    }

    fn order(&self) -> (u32, u32) {
        self.id()
    }

    fn encode(&self, out: &mut Vec<u8>) {
        self.0.encode(out);
    }

    fn decode(b: &[u8]) -> Result<Self> {
        Located::decode(b).map(ByPlace)
    }
}

/// A chunk id alone, sorted: a set of chunks in a scratch table (the chunks backups reference).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ChunkId(pub(crate) Hash);

impl Record for ChunkId {
    const LEN: usize = 32;
    const OPS: ScratchOps = ScratchOps {
        create: "create chunk set in",
        write: "write chunk set in",
        read: "read chunk set in",
    };
    type Id = Hash;
    type Order = Hash;

    fn id(&self) -> Hash {
        self.0
    }

    fn order(&self) -> Hash {
        self.0
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.0.0);
    }

    fn decode(b: &[u8]) -> Result<ChunkId> {
        let mut id = [0u8; 32];
        id.copy_from_slice(b);
        Ok(ChunkId(Hash(id)))
    }
}

/// The best copy of a chunk: sorted by chunk, one per chunk, the copy of the lowest rank
/// (`crate::container::index_scan::read_rank`: in a live pack, then a condemned one, then an
/// unlisted one) and among equals the first seen.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BestCopy(pub(crate) Located, pub(crate) u8);

impl Record for BestCopy {
    const LEN: usize = Located::LEN + 1;
    const OPS: ScratchOps = OPS;
    type Id = Hash;
    type Order = (Hash, u8);

    fn id(&self) -> Hash {
        self.0.id
    }

    fn order(&self) -> (Hash, u8) {
        (self.0.id, self.1)
    }

    fn encode(&self, out: &mut Vec<u8>) {
        self.0.encode(out);
        out.push(self.1);
    }

    fn decode(b: &[u8]) -> Result<Self> {
        Ok(BestCopy(
            Located::decode(&b[..Located::LEN])?,
            b[Located::LEN],
        ))
    }
}

/// The locations of one batch of chunks read from a [`ByPlace`] table, for planning ranged
/// reads ([`crate::container::plan_ranges`]).
pub(crate) struct Batch<'a> {
    pack_id: &'a (dyn Fn(u32) -> Hash + Sync),
    pub(crate) locs: HashMap<Hash, Location>,
    pub(crate) ids: Vec<Hash>,
}

impl<'a> Batch<'a> {
    /// Takes up to `n` records from `next` (`None`: the table is done).
    pub(crate) fn take(
        pack_id: &'a (dyn Fn(u32) -> Hash + Sync),
        n: usize,
        mut next: impl FnMut() -> Result<Option<ByPlace>>,
    ) -> Result<Batch<'a>> {
        let mut b = Batch {
            pack_id,
            locs: HashMap::new(),
            ids: Vec::new(),
        };
        while b.ids.len() < n {
            let Some(ByPlace(c)) = next()? else { break };
            if b.locs.insert(c.id, c.loc).is_none() {
                b.ids.push(c.id);
            }
        }
        Ok(b)
    }
}

impl Locate for Batch<'_> {
    fn locate_all(&self, ids: &[Hash]) -> Result<Vec<Option<Location>>> {
        Ok(ids.iter().map(|id| self.locs.get(id).copied()).collect())
    }

    fn pack_id(&self, pos: u32) -> Hash {
        (self.pack_id)(pos)
    }
}
