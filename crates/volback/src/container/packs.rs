//! Packs as a set: listing them, reading their own tables, and rebuilding the index from those.

use rayon::prelude::*;

use super::Container;
use crate::error::{Error, Result};
use crate::format::keys::{PACKS_PREFIX, pack_id_of_key, pack_key};
use crate::format::pack::{PackEntry, Trailer};
use crate::ids::Hash;
use bytes::Bytes;

/// The packs listed at one moment, sorted by id, with their sizes: 40 bytes a pack (a
/// container of 100 TiB has ~3.3 million).
pub struct PackListing(Vec<(Hash, u64)>);

impl PackListing {
    /// Whether the pack was listed.
    pub fn contains(&self, id: &Hash) -> bool {
        self.size(id).is_some()
    }

    /// The listed pack's size.
    pub fn size(&self, id: &Hash) -> Option<u64> {
        self.position(id).map(|i| self.0[i].1)
    }

    /// The listed pack's position in [`PackListing::iter`]'s order.
    pub fn position(&self, id: &Hash) -> Option<usize> {
        self.0.binary_search_by(|(p, _)| p.cmp(id)).ok()
    }

    /// The (id, size) of the pack at `position`.
    pub fn at(&self, position: usize) -> Option<(Hash, u64)> {
        self.0.get(position).copied()
    }

    /// Number of packs.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no pack was listed.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// (id, size) of every pack, by id.
    pub fn into_vec(self) -> Vec<(Hash, u64)> {
        self.0
    }

    /// (id, size) of every pack, by id.
    pub fn iter(&self) -> impl Iterator<Item = (Hash, u64)> + '_ {
        self.0.iter().copied()
    }
}

impl Container {
    /// Every pack that exists now, with its size (one paged LIST, streamed).
    pub fn listed_packs(&self) -> Result<PackListing> {
        let mut packs = Vec::new();
        self.store.list_each(PACKS_PREFIX, &mut |o| {
            if let Some(id) = pack_id_of_key(&o.key) {
                packs.push((id, o.size));
            }
        })?;
        packs.sort_unstable();
        packs.dedup_by_key(|(id, _)| *id);
        packs.shrink_to_fit();
        // Tables number packs by listing position in 31 bits (64 PiB of 32 MiB packs).
        if packs.len() >= crate::index::UNLISTED as usize {
            return Err(Error::Config(format!(
                "{} packs in one container; at most {} are supported",
                packs.len(),
                crate::index::UNLISTED - 1
            )));
        }
        Ok(PackListing(packs))
    }

    /// Reads the tables of `packs` (id, size) in parallel.
    pub fn read_pack_tables(&self, packs: &[(Hash, u64)]) -> Vec<(Hash, Result<Vec<PackEntry>>)> {
        self.on_io_pool(|| {
            packs
                .par_iter()
                .map(|(p, size)| (*p, self.read_pack_table(&pack_key(p), *size)))
                .collect()
        })
    }

    /// Reads the table of one pack (two ranged reads: trailer, then table).
    pub fn read_pack_table(&self, key: &str, size: u64) -> Result<Vec<PackEntry>> {
        let sealer = self.keys()?.sealer();
        let (trailer, table) = self.read_stored_table(key, size)?;
        crate::format::pack::parse_table(key, size, &trailer, &table, sealer)
    }

    /// Reads a pack's trailer and stored table and checks the table's length and BLAKE3:
    /// what can be checked of a pack's structure without the container's key.
    pub fn read_stored_table(&self, key: &str, size: u64) -> Result<(Trailer, Bytes)> {
        use crate::format::pack::{TRAILER_LEN, check_table, parse_trailer};
        if size < TRAILER_LEN {
            return Err(Error::corrupt(
                key,
                0,
                format!("pack too short ({size} bytes)"),
            ));
        }
        let raw = self.store.get_range(key, size - TRAILER_LEN..size)?;
        let trailer = parse_trailer(key, size, &raw)?;
        let table = self
            .store
            .get_range(key, trailer.table_start(size)..size - TRAILER_LEN)?;
        check_table(key, size, &trailer, &table)?;
        Ok((trailer, table))
    }

    /// Rebuilds the index from the packs themselves (packs are self-describing): reads every
    /// pack's table and writes one new segment describing all packs. Existing segments are
    /// left in place (duplicate entries are harmless). Returns (packs read, chunks indexed);
    /// a pack whose table is damaged is reported as an error naming it.
    pub fn rebuild_index(&self) -> Result<(usize, usize)> {
        let packs = self.store.list(PACKS_PREFIX)?;
        let tables: Vec<Result<(Hash, Vec<PackEntry>)>> = self.on_io_pool(|| {
            packs
                .par_iter()
                .map(|o| {
                    let name = o.key.rsplit('/').next().unwrap_or_default();
                    let id = Hash::from_hex(name).ok_or_else(|| {
                        Error::corrupt(&o.key, 0, "pack name is not a BLAKE3 hash")
                    })?;
                    Ok((id, self.read_pack_table(&o.key, o.size)?))
                })
                .collect()
        });
        let tables: Vec<(Hash, Vec<PackEntry>)> = tables.into_iter().collect::<Result<_>>()?;
        let chunks = tables.iter().map(|(_, e)| e.len()).sum();
        for group in tables.chunks(4096) {
            self.write_index_segment(group)?;
        }
        Ok((tables.len(), chunks))
    }
}
