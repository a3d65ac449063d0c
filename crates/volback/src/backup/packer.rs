//! Deduplication and packing: new chunks go into data or extent-list packs, full packs to the
//! writer.

use std::collections::{HashMap, HashSet};
use std::sync::mpsc::SyncSender;

use bytes::Bytes;
use rayon::prelude::*;

use super::buffers::BufferPool;
use super::dedup::DedupSet;
use super::writer::WriterMsg;
use crate::crypto::Keys;
use crate::error::{Error, Result};
use crate::format::chunk::{ChunkKind, EncodedChunk, encode_chunk};
use crate::format::manifest::{MetaAt, MetaRef};
use crate::format::pack::PackBuilder;
use crate::format::pack::PackEntry;
use crate::ids::Hash;

/// Extent-list packs are closed at this size (or the container's pack size if smaller).
const META_PACK_TARGET: u64 = 4 << 20;

/// Chunk dedup and packing state of one backup.
pub(super) struct Packer<'a> {
    /// Chunks the container holds (in packs that exist and are not condemned) and chunks this
    /// backup has stored; the container's beyond a few MiB live in a temporary file.
    pub(super) known: DedupSet,
    /// Condemned pack ids: never produce a pack with one of these names.
    pub(super) avoid: &'a HashSet<Hash>,
    pub(super) level: i32,
    /// Data chunks and extent-list chunks go to separate packs, so that a backup's extent list
    /// sits together and is read with a few requests (and the collector can walk manifests
    /// without touching data packs).
    pub(super) data_pack: PackBuilder,
    pub(super) meta_pack: PackBuilder,
    /// The container's keys: chunk ids, and the sealer of an encrypted container's packs.
    pub(super) keys: &'a Keys,
    pub(super) target: u64,
    pub(super) tx: SyncSender<WriterMsg>,
    /// Buffers of uploaded packs, reused for the next ones. One spare: on a filesystem one
    /// pack fills while the previous one is written, so two buffers serve the whole backup
    /// and the kernel zeroes no new pages (~5 % of a full backup's CPU, measured with
    /// `perf`).
    pub(super) buffers: BufferPool,
    pub(super) chunks_new: u64,
    /// Where extent-list chunks are: the parent's, and those this backup stores (recorded in
    /// the manifest as hints for the next incremental).
    pub(super) meta_at: HashMap<Hash, MetaAt>,
}

impl Packer<'_> {
    pub(super) fn add(&mut self, chunks: Vec<EncodedChunk>) -> Result<()> {
        for c in chunks {
            let pack = if c.kind == ChunkKind::Data {
                self.chunks_new += 1;
                &mut self.data_pack
            } else {
                &mut self.meta_pack
            };
            if pack.is_empty() {
                // Room for a full pack, so the builder never reallocates while it fills, in the
                // buffer of a pack already uploaded when there is one.
                let fresh = match c.kind {
                    ChunkKind::Data => PackBuilder::with_buffer(
                        self.buffers.take_empty(self.target as usize + (1 << 20)),
                    ),
                    ChunkKind::Meta => PackBuilder::new(),
                };
                *pack = fresh.sealed(self.keys.sealer());
            }
            pack.add(&c);
            // Extent-list packs are closed early: they fill slowly (~1 MiB per GiB of volume)
            // and would otherwise grow with the volume until the end of the backup.
            let target = match c.kind {
                ChunkKind::Data => self.target,
                ChunkKind::Meta => self.target.min(META_PACK_TARGET),
            };
            if pack.size() >= target {
                let full = std::mem::take(pack);
                self.send(full)?;
            }
        }
        Ok(())
    }

    /// Closes the open packs.
    pub(super) fn flush(&mut self) -> Result<()> {
        let data = std::mem::take(&mut self.data_pack);
        self.send(data)?;
        let meta = std::mem::take(&mut self.meta_pack);
        self.send(meta)
    }

    fn send(&mut self, pack: PackBuilder) -> Result<()> {
        if pack.is_empty() {
            return Ok(());
        }
        let (buf, id, entries) = pack.finish_into_vec(self.avoid);
        for e in entries.iter().filter(|e| e.kind == ChunkKind::Meta) {
            self.meta_at.insert(e.id, meta_at(&id, e));
        }
        let len = buf.len();
        let bytes = self.buffers.freeze(buf, len);
        // A closed channel means the writer stopped on an error; the caller collects it.
        self.tx
            .send(WriterMsg::Pack(id, bytes, entries))
            .map_err(|_| Error::Internal("pack writer stopped".into()))
    }

    /// Hashes, dedups and stores extent-list chunks, returning their references in order.
    pub(super) fn add_meta(&mut self, chunks: Vec<Bytes>, refs: &mut Vec<MetaRef>) -> Result<()> {
        let chunk_ids = self.keys.ids();
        let ids: Vec<Hash> = chunks.par_iter().map(|c| chunk_ids.of(c)).collect();
        let known = self.known.check_and_add(&ids)?;
        let mut new = Vec::new();
        for ((c, id), known) in chunks.iter().zip(&ids).zip(known) {
            refs.push(MetaRef {
                id: id.to_hex(),
                len: c.len() as u32,
                at: None,
            });
            if !known {
                new.push((c, *id));
            }
        }
        let (level, keys) = (self.level, self.keys.chunks());
        let enc: Vec<EncodedChunk> = new
            .par_iter()
            .map(|(c, id)| encode_chunk(*id, ChunkKind::Meta, c, level, keys))
            .collect();
        self.add(enc)
    }
}

/// The manifest's hint for an extent-list chunk stored in `pack` as `e`.
pub(super) fn meta_at(pack: &Hash, e: &PackEntry) -> MetaAt {
    MetaAt {
        pack: pack.to_hex(),
        offset: e.offset,
        stored_len: e.stored_len,
        zstd: e.compression == crate::format::chunk::Compression::Zstd,
    }
}
