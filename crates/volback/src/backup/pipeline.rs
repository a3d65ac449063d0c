//! The pipeline's threads: reader → chunker → hash, dedup, compress (rayon) → pack writer.

use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, sync_channel};

use bytes::Bytes;
use rayon::prelude::*;

use super::Progress;
use super::buffers::BufferPool;
use super::dedup::DedupSet;
use super::mapped::{MapPlan, MappedReader, MappedStats, ParentExtents, VolumeFile};
use super::packer::{Packer, meta_at};
use super::parent_guide::{feed_extents, feed_guide};
use super::resume::ResumeLog;
use super::source::{Input, OpenVolume};
use super::writer::{MAX_UPLOAD_BYTES, WriterMsg, Written, writer_loop};
use crate::chunker::{ChunkerParams, Guide, Piece, Splitter};
use crate::container::Container;
use crate::error::{Error, Result};
use crate::format::chunk::{ChunkKind, EncodedChunk, encode_chunk};
use crate::format::extent_list::ExtentListWriter;
use crate::format::manifest::{Manifest, MetaAt, MetaRef};
use crate::format::pack::PackBuilder;
use crate::format::pack::PackEntry;
use crate::ids::{ChunkIds, Hash};
use crate::index::Index;

/// What the pipeline needs besides the volume.
pub(super) struct Inputs<'a> {
    pub(super) container: &'a Container,
    /// The parent's manifest (an incremental) and where its extent-list chunks are.
    pub(super) parent: Option<(&'a crate::format::manifest::Manifest, &'a Index)>,
    /// What the container holds, to deduplicate against.
    pub(super) known: DedupSet,
    /// Pack names the collector condemned: never produce one.
    pub(super) condemned: &'a HashSet<Hash>,
    pub(super) level: i32,
    pub(super) progress: Option<Progress<'a>>,
    /// Set by the caller to stop the backup.
    pub(super) cancel: Option<&'a AtomicBool>,
    /// Bytes read from the volume, counted by the reader.
    pub(super) bytes_read: &'a AtomicU64,
    /// An incremental given a change map: what to read, and from where.
    pub(super) mapped: Option<MapInput<'a>>,
    /// An incremental's resume hint, rewritten after each index segment.
    pub(super) resume: Option<&'a ResumeLog>,
}

/// The change map's plan and the volume file it is read from.
pub(super) struct MapInput<'a> {
    pub(super) plan: &'a MapPlan,
    pub(super) file: &'a File,
    pub(super) name: &'a str,
    pub(super) size: u64,
}

/// What the pipeline produced: the extent list and what it stored.
pub(super) struct Pipelined {
    pub(super) extents: ExtentListWriter,
    pub(super) meta_refs: Vec<MetaRef>,
    pub(super) size: u64,
    pub(super) zero_bytes: u64,
    pub(super) counts: ChunkCounts,
    pub(super) written: Written,
    /// What the mapped reader did, for an incremental with a change map.
    pub(super) mapped: Option<MappedStats>,
}

/// Chunks of the volume, stored, and taken from the guide.
pub(super) struct ChunkCounts {
    pub(super) total: u64,
    pub(super) new: u64,
    pub(super) guided: u64,
}

/// Runs the reader, chunker, main and writer stages over `volume` until it ends or one fails.
/// Every pack and index segment is stored when it returns `Ok`; nothing is committed.
pub(super) fn run(volume: OpenVolume, inputs: Inputs<'_>) -> Result<Pipelined> {
    let Inputs {
        container,
        parent,
        known,
        condemned,
        level,
        progress,
        cancel,
        bytes_read,
        mapped,
        resume,
    } = inputs;
    let reread = mapped.as_ref().map(|m| (m.file, m.name));
    let cfg = container.config().clone();
    let keys = container.keys()?.clone();
    let ids = keys.ids();
    std::thread::scope(|s| -> Result<_> {
        let (batch_tx, batch_rx) = sync_channel::<Result<Vec<Piece>>>(2);
        let (pack_tx, pack_rx) = sync_channel::<WriterMsg>(0);
        let producer = s.spawn(move || match mapped {
            None => read_and_cut(
                container,
                volume,
                parent,
                cfg.chunker,
                ids,
                bytes_read,
                batch_tx,
            ),
            Some(m) => read_mapped(container, parent, m, cfg.chunker, ids, bytes_read, batch_tx),
        });
        // Uploads in flight hold whole packs: cap them at ~96 MiB whatever the store's request
        // concurrency, so peak memory stays bounded (3 x 32 MiB packs by default; one on a
        // filesystem).
        let threads = container
            .store()
            .upload_concurrency()
            .min((MAX_UPLOAD_BYTES / cfg.pack_target.max(1)) as usize)
            .max(1);
        let writer = s.spawn(move || writer_loop(container, pack_rx, threads, resume));

        let mut packer = Packer {
            known,
            avoid: condemned,
            level,
            data_pack: PackBuilder::new(),
            meta_pack: PackBuilder::new(),
            keys: &keys,
            target: cfg.pack_target,
            tx: pack_tx,
            buffers: BufferPool::new(1),
            chunks_new: 0,
            meta_at: parent
                .map(|(_, index)| parent_meta_at(index))
                .unwrap_or_default(),
        };
        let main = (|| -> Result<_> {
            let mut extents = ExtentListWriter::new();
            let mut meta_refs = Vec::new();
            let mut size = 0u64;
            let mut zero_bytes = 0u64;
            let mut chunks_total = 0u64;
            // The previous batch's compressed chunks, appended to packs (a serial copy) while
            // the pool hashes this batch, rather than leaving a core idle.
            let mut pending: Vec<EncodedChunk> = Vec::new();
            for batch in batch_rx {
                if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
                    return Err(Error::Cancelled { what: "backup" });
                }
                let pieces = batch?;
                let done = std::mem::take(&mut pending);
                let (ids, added) = rayon::join(
                    || -> Vec<Option<Hash>> {
                        pieces
                            .par_iter()
                            .map(|p| match p {
                                Piece::Data(b) => Some(ids.of(b)),
                                Piece::Hashed(_, id) | Piece::Reused(_, id) => Some(*id),
                                Piece::Zero(_) => None,
                            })
                            .collect()
                    },
                    || packer.add(done),
                );
                added?;
                let data_ids: Vec<Hash> = ids.iter().flatten().copied().collect();
                let mut known = packer.known.check_and_add(&data_ids)?.into_iter();
                let mut new: Vec<(Bytes, Hash)> = Vec::new();
                for (p, id) in pieces.iter().zip(&ids) {
                    let offset = size;
                    size += p.len();
                    match (p, id) {
                        (Piece::Data(b) | Piece::Hashed(b, _), Some(id)) => {
                            chunks_total += 1;
                            extents.push_data(b.len() as u32, id);
                            if known.next() != Some(true) {
                                new.push((b.clone(), *id));
                            }
                        }
                        (Piece::Reused(len, _), Some(id)) => {
                            chunks_total += 1;
                            extents.push_data(*len, id);
                            if known.next() != Some(true) {
                                // Its only copies are in condemned packs, or a pending
                                // record exposes it: read it again.
                                let b = reread_chunk(reread, offset, *len, id, keys.ids())?;
                                new.push((b, *id));
                            }
                        }
                        _ => {
                            zero_bytes += p.len();
                            extents.push_zero(p.len());
                        }
                    }
                }
                pending = new
                    .par_iter()
                    .map(|(b, id)| encode_chunk(*id, ChunkKind::Data, b, level, keys.chunks()))
                    .collect();
                packer.add_meta(extents.take_chunks(), &mut meta_refs)?;
                if let Some(p) = progress {
                    p(size);
                }
            }
            packer.add(pending)?;
            packer.add_meta(extents.finish(), &mut meta_refs)?;
            packer.flush()?;
            Ok((extents, meta_refs, size, zero_bytes, chunks_total))
        })();
        let chunks_new = packer.chunks_new;
        let meta_at = std::mem::take(&mut packer.meta_at);
        drop(packer); // closes the writer's channel
        let written = writer
            .join()
            .map_err(|_| Error::Internal("pack writer panicked".into()))?;
        let produced = producer
            .join()
            .map_err(|_| Error::Internal("volume reader panicked".into()))?;
        // The writer's error is the root cause when the main loop only saw a closed channel.
        let written = written?;
        let (extents, mut meta_refs, size, zero_bytes, chunks_total) = main?;
        for r in &mut meta_refs {
            r.at = Hash::from_hex(&r.id).and_then(|id| meta_at.get(&id).cloned());
        }
        let counts = ChunkCounts {
            total: chunks_total,
            new: chunks_new,
            guided: produced.guided,
        };
        Ok(Pipelined {
            extents,
            meta_refs,
            size,
            zero_bytes,
            counts,
            written,
            mapped: produced.mapped,
        })
    })
}

/// Where the parent's extent-list chunks are (`index` locates only those).
fn parent_meta_at(index: &Index) -> std::collections::HashMap<Hash, MetaAt> {
    index
        .iter()
        .map(|(id, loc)| {
            let e = PackEntry {
                id: *id,
                kind: loc.kind,
                compression: loc.compression,
                raw_len: loc.raw_len,
                stored_len: loc.stored_len,
                offset: loc.offset,
            };
            (*id, meta_at(&index.pack_id(loc.pack), &e))
        })
        .collect()
}

/// Reads a chunk the change map called unchanged, to store it again, checking that it still
/// has its id.
fn reread_chunk(
    file: Option<(&File, &str)>,
    offset: u64,
    len: u32,
    id: &Hash,
    ids: ChunkIds,
) -> Result<Bytes> {
    let (file, name) =
        file.ok_or_else(|| Error::Internal("a reused chunk without a volume file".into()))?;
    let mut buf = vec![0u8; len as usize];
    file.read_exact_at(&mut buf, offset).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            // The volume shrank since the backup began.
            Error::VolumeTooShort {
                volume: name.into(),
                expected: offset.saturating_add(u64::from(len)),
                actual: file.metadata().map_or(0, |m| m.len()),
            }
        } else {
            Error::io("read volume", name, e)
        }
    })?;
    if ids.of(&buf) != *id {
        return Err(Error::ChangeMapMissed {
            volume: name.into(),
            offset,
            len,
            chunk: id.to_hex(),
        });
    }
    Ok(Bytes::from(buf))
}

/// What the thread that reads and cuts the volume did besides.
struct Produced {
    /// Chunks the parent's guide gave.
    guided: u64,
    /// What the mapped reader did, with a change map.
    mapped: Option<MappedStats>,
}

/// Reads the whole volume and cuts it (guided by the parent's chunks, for an incremental),
/// sending the pieces to `tx`. Reading and chunking are separate threads: reading copies from
/// the page cache or waits on the device while the chunker (zero runs + FastCDC, sequential by
/// nature) works on the previous buffer.
fn read_and_cut(
    container: &Container,
    volume: OpenVolume,
    parent: Option<(&Manifest, &Index)>,
    params: ChunkerParams,
    ids: ChunkIds,
    bytes_read: &AtomicU64,
    tx: SyncSender<Result<Vec<Piece>>>,
) -> Produced {
    std::thread::scope(|s| {
        let (input_tx, input_rx) = sync_channel::<Result<Input>>(2);
        s.spawn(|| {
            let tx = input_tx;
            let res = volume.read_all(bytes_read, |input| tx.send(Ok(input)).is_ok());
            if let Err(e) = res {
                let _ = tx.send(Err(e));
            }
        });
        let guide = parent.map(|(parent, parent_index)| {
            let (tx, rx) = sync_channel(2);
            s.spawn(move || feed_guide(container, parent_index, parent, tx));
            Guide::new(rx, ids)
        });
        let mut splitter = match guide {
            Some(g) => Splitter::with_guide(params, g),
            None => Splitter::new(params),
        };
        let guided = || -> u64 {
            for input in input_rx {
                let mut out = Vec::new();
                match input {
                    Ok(Input::Data(b)) => splitter.push_data(b, &mut out),
                    Ok(Input::Hole(n)) => splitter.push_hole(n, &mut out),
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return 0;
                    }
                }
                if !out.is_empty() && tx.send(Ok(out)).is_err() {
                    return 0;
                }
            }
            let mut out = Vec::new();
            splitter.finish(&mut out);
            let _ = tx.send(Ok(out));
            splitter.followed()
        };
        Produced {
            guided: guided(),
            mapped: None,
        }
    })
}

/// An incremental with a change map: the parent's extents stream in from a feeder thread and
/// the mapped reader sends the pieces of the whole volume to `tx` (`backup/mapped.rs`).
fn read_mapped(
    container: &Container,
    parent: Option<(&Manifest, &Index)>,
    map: MapInput<'_>,
    params: ChunkerParams,
    ids: ChunkIds,
    bytes_read: &AtomicU64,
    tx: SyncSender<Result<Vec<Piece>>>,
) -> Produced {
    let Some((parent, parent_index)) = parent else {
        let _ = tx.send(Err(Error::Internal("a change map without a parent".into())));
        return Produced {
            guided: 0,
            mapped: None,
        };
    };
    std::thread::scope(|s| {
        let (ptx, prx) = sync_channel(2);
        s.spawn(move || feed_extents(container, parent_index, parent, ptx));
        let reader = MappedReader {
            vol: VolumeFile {
                file: map.file,
                name: map.name,
                size: map.size,
                bytes_read,
                small: BufferPool::new(VolumeFile::POOLED),
                large: BufferPool::new(VolumeFile::POOLED),
            },
            params,
            plan: map.plan,
            ids,
            parent: ParentExtents::new(crate::container::manifest_key(&parent.backup_id), prx),
            tx: tx.clone(),
        };
        match reader.run() {
            Ok(stats) => Produced {
                guided: 0,
                mapped: Some(stats),
            },
            Err(e) => {
                let _ = tx.send(Err(e));
                Produced {
                    guided: 0,
                    mapped: None,
                }
            }
        }
    })
}
