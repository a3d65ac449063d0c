//! One chunk's stored form: its id, kind, and bytes as one zstd frame or raw.
//!
//! A chunk is compressed only when that makes it shorter; decoding checks the length and the
//! BLAKE3 of the result against the entry that describes it. In an encrypted container the
//! stored bytes (compressed or not) are then sealed, with the chunk's id as associated data
//! (`nonce[12] || ciphertext || tag[16]`), and the id is keyed BLAKE3 ([`ChunkKeys`]).

use std::cell::RefCell;

use bytes::Bytes;

use crate::chunker::MAX_CHUNK_LIMIT;
use crate::crypto::{ChunkKeys, SEAL_OVERHEAD};
use crate::error::{Error, Result};
use crate::ids::Hash;

/// What a chunk holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ChunkKind {
    /// Volume bytes.
    Data = 0,
    /// Part of a manifest's extent list (see `manifest`).
    Meta = 1,
}

/// How a chunk's bytes are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Compression {
    /// Stored as is (compression did not pay).
    None = 0,
    /// One zstd frame.
    Zstd = 1,
}

impl ChunkKind {
    pub(crate) fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(ChunkKind::Data),
            1 => Some(ChunkKind::Meta),
            _ => None,
        }
    }
}

impl Compression {
    pub(crate) fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Compression::None),
            1 => Some(Compression::Zstd),
            _ => None,
        }
    }
}

/// A chunk ready to be packed: its id and stored form.
#[derive(Debug, Clone)]
pub struct EncodedChunk {
    pub id: Hash,
    pub kind: ChunkKind,
    pub compression: Compression,
    pub raw_len: u32,
    pub stored: Bytes,
}

thread_local! {
    // One zstd context per thread and level, reused for every chunk: creating a context costs
    // more than compressing a small chunk. Its output goes to a reused scratch buffer: a fresh
    // one per chunk meant fresh pages (page faults) for output that, for incompressible data,
    // is thrown away.
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(None) };
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
    // A sealed, compressed chunk is opened here before it is decompressed.
    static OPENED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Compresses `data`; if the result is shorter than `limit`, returns `stored(result)` (which
/// copies it out of the reused scratch buffer, sealing it on the way in an encrypted container).
fn zstd_compress_below(
    data: &[u8],
    level: i32,
    limit: usize,
    stored: impl FnOnce(&[u8]) -> Vec<u8>,
) -> std::io::Result<Option<Vec<u8>>> {
    COMPRESSOR.with(|cell| {
        SCRATCH.with(|scratch| {
            let mut slot = cell.borrow_mut();
            let (_, c) = match slot.take() {
                Some((l, c)) if l == level => slot.insert((l, c)),
                _ => slot.insert((level, zstd::bulk::Compressor::new(level)?)),
            };
            let mut out = scratch.borrow_mut();
            out.clear();
            out.reserve(zstd::zstd_safe::compress_bound(data.len()));
            c.compress_to_buffer(data, &mut *out)?;
            Ok((out.len() < limit).then(|| stored(&out)))
        })
    })
}

fn zstd_decompress_into(data: &[u8], out: &mut [u8]) -> std::io::Result<usize> {
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(zstd::bulk::Decompressor::new()?);
        }
        match slot.as_mut() {
            Some(d) => d.decompress_to_buffer(data, out),
            None => zstd::bulk::decompress_to_buffer(data, out),
        }
    })
}

/// zstd levels a container or backup may use: zstd's fast (negative) levels down to -7 and
/// its regular levels 1..=22. Level 0 would mean zstd's own default (3), so it is refused.
pub fn valid_zstd_level(level: i32) -> bool {
    (-7..=22).contains(&level) && level != 0
}

/// Compresses a chunk with zstd at `level`, keeping the raw bytes when compression saves less
/// than 1/32 (decompressing costs more than the bytes saved are worth), and seals the result
/// if `keys` has a sealer.
pub fn encode_chunk(
    id: Hash,
    kind: ChunkKind,
    raw: &Bytes,
    level: i32,
    keys: ChunkKeys<'_>,
) -> EncodedChunk {
    let raw_len = raw.len() as u32;
    // Sealed as it leaves the compressor's scratch buffer: one copy, not two.
    let finish = |b: &[u8]| match keys.sealer {
        Some(s) => s.seal(&id.0, b),
        None => b.to_vec(),
    };
    let compressed = match level {
        0 => None,
        _ => zstd_compress_below(raw, level, raw.len() - raw.len() / 32, finish)
            .ok()
            .flatten(),
    };
    let (compression, stored) = match compressed {
        Some(c) => (Compression::Zstd, Bytes::from(c)),
        None => match keys.sealer {
            Some(s) => (Compression::None, Bytes::from(s.seal(&id.0, raw))),
            None => (Compression::None, raw.clone()),
        },
    };
    EncodedChunk {
        id,
        kind,
        compression,
        raw_len,
        stored,
    }
}

/// Turns stored bytes back into the chunk (opening it first if `keys` has a sealer) and checks
/// its id. `key` and `offset` name the pack and position for the error.
pub fn decode_chunk(
    key: &str,
    offset: u64,
    id: &Hash,
    compression: Compression,
    raw_len: u32,
    stored: &[u8],
    keys: ChunkKeys<'_>,
) -> Result<Bytes> {
    check_raw_len(key, offset, raw_len)?;
    let mut raw = vec![0u8; raw_len as usize];
    decode_chunk_into(key, offset, id, compression, stored, &mut raw, keys)?;
    Ok(Bytes::from(raw))
}

fn check_raw_len(key: &str, offset: u64, raw_len: u32) -> Result<()> {
    if raw_len > MAX_CHUNK_LIMIT {
        return Err(Error::corrupt(
            key,
            offset,
            format!("chunk length {raw_len} exceeds limit"),
        ));
    }
    Ok(())
}

/// Like [`decode_chunk`], into `out`, whose length is the chunk's raw length: the restore path
/// decompresses straight into the buffer it writes to the target, with no allocation or copy
/// per chunk.
pub fn decode_chunk_into(
    key: &str,
    offset: u64,
    id: &Hash,
    compression: Compression,
    stored: &[u8],
    out: &mut [u8],
    keys: ChunkKeys<'_>,
) -> Result<()> {
    check_raw_len(key, offset, out.len() as u32)?;
    let Some(sealer) = keys.sealer else {
        unpack_into(key, offset, id, compression, stored, out)?;
        return check_id(key, offset, id, out, keys);
    };
    let refused = || {
        Error::corrupt(
            key,
            offset,
            format!("sealed chunk {id} fails authentication (damaged, moved, or another key)"),
        )
    };
    match compression {
        // Opened straight into the target buffer: no copy.
        Compression::None => {
            if !sealer.open_into(&id.0, stored, out) {
                return Err(refused());
            }
        }
        Compression::Zstd => OPENED.with(|cell| {
            let mut opened = cell.borrow_mut();
            let len = stored
                .len()
                .checked_sub(SEAL_OVERHEAD)
                .ok_or_else(refused)?;
            if len > MAX_CHUNK_LIMIT as usize * 2 {
                return Err(refused());
            }
            opened.resize(len, 0);
            if !sealer.open_into(&id.0, stored, &mut opened) {
                return Err(refused());
            }
            unpack_into(key, offset, id, compression, &opened, out)
        })?,
    }
    check_id(key, offset, id, out, keys)
}

/// Decompresses (or copies) unsealed stored bytes into `out`, which they must exactly fill.
fn unpack_into(
    key: &str,
    offset: u64,
    id: &Hash,
    compression: Compression,
    stored: &[u8],
    out: &mut [u8],
) -> Result<()> {
    let n = match compression {
        Compression::None => {
            if stored.len() == out.len() {
                out.copy_from_slice(stored);
            }
            stored.len()
        }
        Compression::Zstd => zstd_decompress_into(stored, out).map_err(|e| {
            Error::corrupt(
                key,
                offset,
                format!("zstd frame of chunk {id} does not decode: {e}"),
            )
        })?,
    };
    if n != out.len() {
        return Err(Error::corrupt(
            key,
            offset,
            format!("chunk {id} decodes to {n} bytes, expected {}", out.len()),
        ));
    }
    Ok(())
}

/// Checks that the chunk's bytes have its id.
fn check_id(key: &str, offset: u64, id: &Hash, out: &[u8], keys: ChunkKeys<'_>) -> Result<()> {
    if keys.ids.of(out) != *id {
        return Err(Error::ChunkHashMismatch {
            key: key.to_string(),
            offset,
            chunk: id.to_hex(),
            volume_offset: 0,
        });
    }
    Ok(())
}
