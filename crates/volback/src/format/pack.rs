//! Packs: many compressed chunks in one object, with a table at the end that describes them.
//!
//! Packing turns a TiB volume into tens of thousands of objects instead of tens of millions of
//! chunk files (one PUT, one LIST entry and one DELETE each). The table at the end makes each
//! pack self-describing: the index can always be rebuilt by reading pack tails, so an index is a
//! cache of pack tables, never the only copy of where a chunk lives. A pack is named by the
//! BLAKE3 of its bytes, so a pack can be verified without any other object, and two writers that
//! happen to build the same pack write the same object.
//!
//! Layout (all integers little-endian; specified in `docs/format.md`):
//!
//! ```text
//! "VBPK" u16 version u16 reserved            8-byte header
//! chunk bytes, back to back                  each zstd frame or raw, as its entry says
//! table: n entries of 44 bytes               id[32] raw_len u32 stored_len u32 kind u8 comp u8 0u16
//! trailer, 48 bytes:                         blake3(table)[32] n u32 version u16 0u16 0u32 "VBPE"
//! ```
//!
//! Version 1 is a plaintext container's pack. Version 2 is an encrypted container's: each
//! chunk's stored bytes are sealed (`nonce || ciphertext || tag`, the chunk id as associated
//! data; see `chunk`), and the table is sealed as one message (associated data
//! `volback pack table`), so it is `n * 44 + 28` bytes; the trailer's BLAKE3 is over the
//! sealed table, and the pack is still named by the BLAKE3 of its bytes: integrity can be
//! checked without the key.

use bytes::Bytes;

use super::chunk::{ChunkKind, Compression, EncodedChunk};
use crate::chunker::MAX_CHUNK_LIMIT;
use crate::crypto::{SEAL_OVERHEAD, Sealer};
use crate::error::{Error, Result};
use crate::ids::Hash;

/// Pack format version of plaintext containers, written and read by this build.
pub const PACK_VERSION: u16 = 1;
/// Pack format version of encrypted containers (sealed chunks and table).
pub const SEALED_PACK_VERSION: u16 = 2;
/// Associated data of a sealed pack table.
const TABLE_AAD: &[u8] = b"volback pack table";
const HEADER: &[u8; 4] = b"VBPK";
const END: &[u8; 4] = b"VBPE";
/// Size of the fixed header.
pub const HEADER_LEN: u64 = 8;
/// Size of one table entry.
pub const ENTRY_LEN: u64 = 44;
/// Size of the trailer.
pub const TRAILER_LEN: u64 = 48;
/// Packs never exceed this (offsets in index entries are 32-bit).
pub const MAX_PACK_SIZE: u64 = 1 << 30;

/// One chunk's place in a pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackEntry {
    pub id: Hash,
    pub kind: ChunkKind,
    pub compression: Compression,
    /// Uncompressed length.
    pub raw_len: u32,
    /// Bytes in the pack.
    pub stored_len: u32,
    /// Byte offset of the stored bytes in the pack.
    pub offset: u32,
}

/// Builds one pack in memory.
pub struct PackBuilder {
    buf: Vec<u8>,
    entries: Vec<PackEntry>,
    /// Seals the table (the chunks come sealed), in an encrypted container.
    sealer: Option<Sealer>,
}

impl Default for PackBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl PackBuilder {
    /// An empty pack.
    pub fn new() -> Self {
        Self::with_capacity(0)
    }

    /// An empty pack with room for `bytes` (so filling it never reallocates and copies).
    pub fn with_capacity(bytes: usize) -> Self {
        Self::with_buffer(Vec::with_capacity(bytes))
    }

    /// An empty pack built in `buf` (its contents are discarded, its capacity kept): a
    /// backup reuses the buffers of packs already uploaded (`buffers::BufferPool`).
    pub fn with_buffer(mut buf: Vec<u8>) -> Self {
        buf.clear();
        buf.extend_from_slice(HEADER);
        buf.extend_from_slice(&PACK_VERSION.to_le_bytes());
        buf.extend_from_slice(&[0, 0]);
        PackBuilder {
            buf,
            entries: Vec::new(),
            sealer: None,
        }
    }

    /// The same pack, in an encrypted container's format if `sealer` is given (its chunks must
    /// be sealed with the same key: [`super::chunk::encode_chunk`] with the container's keys).
    pub fn sealed(mut self, sealer: Option<&Sealer>) -> Self {
        if let Some(s) = sealer {
            self.buf[4..6].copy_from_slice(&SEALED_PACK_VERSION.to_le_bytes());
            self.sealer = Some(s.clone());
        }
        self
    }

    /// Bytes the pack will have, table and trailer included.
    pub fn size(&self) -> u64 {
        let seal = if self.sealer.is_some() {
            SEAL_OVERHEAD as u64
        } else {
            0
        };
        self.buf.len() as u64 + self.entries.len() as u64 * ENTRY_LEN + seal + TRAILER_LEN
    }

    /// Number of chunks.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no chunk was added.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Appends a chunk.
    pub fn add(&mut self, c: &EncodedChunk) {
        let offset = self.buf.len() as u32;
        self.buf.extend_from_slice(&c.stored);
        self.entries.push(PackEntry {
            id: c.id,
            kind: c.kind,
            compression: c.compression,
            raw_len: c.raw_len,
            stored_len: c.stored.len() as u32,
            offset,
        });
    }

    /// Writes the table and trailer; returns the pack's bytes, its id and its entries.
    pub fn finish(self) -> (Bytes, Hash, Vec<PackEntry>) {
        self.finish_avoiding(&std::collections::HashSet::new())
    }

    /// Like [`PackBuilder::finish`], but never returns a pack whose id is in `avoid`.
    ///
    /// Packs are named by their content, so a writer that stores again the chunks of a pack the
    /// collector has condemned could build a byte-identical pack — and the collector's sweep
    /// would then delete the new backup's copy. If the id is condemned, the first chunk is
    /// appended once more (a pack may list a chunk twice; readers use either entry), which
    /// changes the bytes and so the name.
    pub fn finish_avoiding(
        self,
        avoid: &std::collections::HashSet<Hash>,
    ) -> (Bytes, Hash, Vec<PackEntry>) {
        let (buf, id, entries) = self.finish_into_vec(avoid);
        (Bytes::from(buf), id, entries)
    }

    /// Like [`PackBuilder::finish_avoiding`], returning the buffer the pack was built in.
    pub fn finish_into_vec(
        mut self,
        avoid: &std::collections::HashSet<Hash>,
    ) -> (Vec<u8>, Hash, Vec<PackEntry>) {
        loop {
            let table_start = self.buf.len();
            let id = self.close();
            if !avoid.contains(&id) || self.entries.is_empty() {
                return (self.buf, id, self.entries);
            }
            self.buf.truncate(table_start);
            let first = self.entries[0];
            let start = first.offset as usize;
            let stored =
                Bytes::copy_from_slice(&self.buf[start..start + first.stored_len as usize]);
            self.add(&EncodedChunk {
                id: first.id,
                kind: first.kind,
                compression: first.compression,
                raw_len: first.raw_len,
                stored,
            });
        }
    }

    /// Appends the table (sealed, in an encrypted container) and trailer; returns the pack's id.
    fn close(&mut self) -> Hash {
        let table_start = self.buf.len();
        let mut table = Vec::with_capacity(self.entries.len() * ENTRY_LEN as usize);
        for e in &self.entries {
            table.extend_from_slice(&e.id.0);
            table.extend_from_slice(&e.raw_len.to_le_bytes());
            table.extend_from_slice(&e.stored_len.to_le_bytes());
            table.push(e.kind as u8);
            table.push(e.compression as u8);
            table.extend_from_slice(&[0, 0]);
        }
        let version = match &self.sealer {
            Some(s) => {
                s.seal_into(TABLE_AAD, &table, &mut self.buf);
                SEALED_PACK_VERSION
            }
            None => {
                self.buf.extend_from_slice(&table);
                PACK_VERSION
            }
        };
        let table_hash = Hash::of(&self.buf[table_start..]);
        self.buf.extend_from_slice(&table_hash.0);
        self.buf
            .extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(&version.to_le_bytes());
        self.buf.extend_from_slice(&[0; 6]);
        self.buf.extend_from_slice(END);
        Hash::of(&self.buf)
    }
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// What a pack's trailer says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trailer {
    /// Number of table entries.
    pub n: u32,
    /// BLAKE3 of the stored table.
    pub table_hash: Hash,
    /// [`PACK_VERSION`] or [`SEALED_PACK_VERSION`].
    pub version: u16,
}

impl Trailer {
    /// True for an encrypted container's pack.
    pub fn is_sealed(&self) -> bool {
        self.version == SEALED_PACK_VERSION
    }

    /// Bytes of the stored table.
    pub fn table_len(&self) -> u64 {
        let seal = if self.is_sealed() {
            SEAL_OVERHEAD as u64
        } else {
            0
        };
        u64::from(self.n) * ENTRY_LEN + seal
    }

    /// Where the table starts in a pack of `pack_size` bytes (checked by [`parse_trailer`]).
    pub fn table_start(&self, pack_size: u64) -> u64 {
        pack_size - TRAILER_LEN - self.table_len()
    }
}

/// Parses the trailer (the last 48 bytes of a pack of `pack_size` bytes).
pub fn parse_trailer(key: &str, pack_size: u64, trailer: &[u8]) -> Result<Trailer> {
    let at = pack_size.saturating_sub(TRAILER_LEN);
    if pack_size < HEADER_LEN + TRAILER_LEN || trailer.len() != TRAILER_LEN as usize {
        return Err(Error::corrupt(
            key,
            0,
            format!("pack too short ({pack_size} bytes)"),
        ));
    }
    // Offsets into a pack are 32-bit in the index: a larger object is not a pack this format
    // wrote, whatever its trailer says.
    if pack_size > MAX_PACK_SIZE {
        return Err(Error::corrupt(
            key,
            0,
            format!("pack of {pack_size} bytes, more than the format's {MAX_PACK_SIZE}"),
        ));
    }
    if &trailer[44..48] != END {
        return Err(Error::corrupt(
            key,
            at + 44,
            "pack trailer magic missing (truncated pack?)",
        ));
    }
    let version = u16::from_le_bytes([trailer[36], trailer[37]]);
    if version != PACK_VERSION && version != SEALED_PACK_VERSION {
        return Err(Error::UnsupportedVersion {
            key: key.to_string(),
            what: "pack",
            found: u64::from(version),
            supported: u64::from(SEALED_PACK_VERSION),
        });
    }
    let n = le_u32(trailer, 32);
    let provisional = Trailer {
        n,
        table_hash: Hash([0; 32]),
        version,
    };
    if HEADER_LEN + provisional.table_len() + TRAILER_LEN > pack_size {
        return Err(Error::corrupt(
            key,
            at + 32,
            format!("pack claims {n} entries, too many for its size"),
        ));
    }
    let table_hash =
        Hash::from_slice(&trailer[..32]).ok_or_else(|| Error::corrupt(key, at, "short trailer"))?;
    Ok(Trailer {
        table_hash,
        ..provisional
    })
}

/// Checks a stored table (the [`Trailer::table_len`] bytes before the trailer) against the
/// trailer's length and hash: all that can be checked of a sealed table without the key.
pub fn check_table(key: &str, pack_size: u64, trailer: &Trailer, table: &[u8]) -> Result<()> {
    let table_start = trailer.table_start(pack_size);
    if table.len() as u64 != trailer.table_len() {
        return Err(Error::corrupt(
            key,
            table_start,
            "pack table has the wrong length",
        ));
    }
    if Hash::of(table) != trailer.table_hash {
        return Err(Error::corrupt(
            key,
            table_start,
            "pack table fails its BLAKE3 check",
        ));
    }
    Ok(())
}

/// Parses a pack's table, checking it ([`check_table`]), opening it with `sealer` if the pack
/// is sealed, and checking that the chunks exactly fill the space between header and table.
pub fn parse_table(
    key: &str,
    pack_size: u64,
    trailer: &Trailer,
    table: &[u8],
    sealer: Option<&Sealer>,
) -> Result<Vec<PackEntry>> {
    check_table(key, pack_size, trailer, table)?;
    let table_start = trailer.table_start(pack_size);
    let opened;
    let table = match (trailer.is_sealed(), sealer) {
        (false, None) => table,
        (true, Some(s)) => {
            opened = s.open(TABLE_AAD, table).ok_or_else(|| {
                Error::corrupt(
                    key,
                    table_start,
                    "sealed pack table fails authentication (another container's key?)",
                )
            })?;
            &opened[..]
        }
        (true, None) => {
            return Err(Error::corrupt(
                key,
                table_start,
                "sealed pack in a plaintext container",
            ));
        }
        (false, Some(_)) => {
            return Err(Error::corrupt(
                key,
                table_start,
                "plaintext pack in an encrypted container",
            ));
        }
    };
    let n = trailer.n;
    let mut entries = Vec::with_capacity(n as usize);
    let mut offset = HEADER_LEN;
    for (i, e) in table.chunks_exact(ENTRY_LEN as usize).enumerate() {
        let at = table_start + i as u64 * ENTRY_LEN;
        let id = Hash::from_slice(e).ok_or_else(|| Error::corrupt(key, at, "short entry"))?;
        let raw_len = le_u32(e, 32);
        let stored_len = le_u32(e, 36);
        let kind = ChunkKind::from_u8(e[40])
            .ok_or_else(|| Error::corrupt(key, at + 40, format!("unknown chunk kind {}", e[40])))?;
        let compression = Compression::from_u8(e[41]).ok_or_else(|| {
            Error::corrupt(key, at + 41, format!("unknown compression {}", e[41]))
        })?;
        if raw_len > MAX_CHUNK_LIMIT {
            return Err(Error::corrupt(
                key,
                at + 32,
                format!("chunk length {raw_len} exceeds limit"),
            ));
        }
        let offset32 = u32::try_from(offset)
            .map_err(|_| Error::corrupt(key, at, "chunk offset beyond 4 GiB"))?;
        entries.push(PackEntry {
            id,
            kind,
            compression,
            raw_len,
            stored_len,
            offset: offset32,
        });
        offset += u64::from(stored_len);
        if offset > table_start {
            return Err(Error::corrupt(
                key,
                at + 36,
                "pack entries overrun the table",
            ));
        }
    }
    if offset != table_start {
        return Err(Error::corrupt(
            key,
            offset,
            "pack has bytes no entry accounts for",
        ));
    }
    Ok(entries)
}

/// Parses a whole pack held in memory (used by verify and index rebuild); `sealer` opens an
/// encrypted container's pack.
pub fn parse_pack(key: &str, pack: &[u8], sealer: Option<&Sealer>) -> Result<Vec<PackEntry>> {
    let size = pack.len() as u64;
    if size < HEADER_LEN + TRAILER_LEN {
        return Err(Error::corrupt(
            key,
            0,
            format!("pack too short ({size} bytes)"),
        ));
    }
    if &pack[..4] != HEADER {
        return Err(Error::corrupt(key, 0, "pack header magic missing"));
    }
    let trailer = parse_trailer(key, size, &pack[(size - TRAILER_LEN) as usize..])?;
    let header_version = u16::from_le_bytes([pack[4], pack[5]]);
    if header_version != trailer.version {
        return Err(Error::corrupt(
            key,
            4,
            format!(
                "pack header says version {header_version}, trailer {}",
                trailer.version
            ),
        ));
    }
    let start = trailer.table_start(size) as usize;
    parse_table(
        key,
        size,
        &trailer,
        &pack[start..(size - TRAILER_LEN) as usize],
        sealer,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::ChunkKeys;
    use crate::format::chunk::{decode_chunk, encode_chunk};

    fn sample() -> (Bytes, Hash, Vec<PackEntry>, Vec<Bytes>) {
        let raws: Vec<Bytes> = vec![
            Bytes::from(vec![7u8; 10_000]),
            Bytes::from(
                (0..5000u32)
                    .map(|i| (i.wrapping_mul(2654435761u32) >> 13) as u8)
                    .collect::<Vec<_>>(),
            ),
            Bytes::from_static(b"x"),
        ];
        let mut b = PackBuilder::new();
        for r in &raws {
            b.add(&encode_chunk(
                Hash::of(r),
                ChunkKind::Data,
                r,
                3,
                ChunkKeys::PLAIN,
            ));
        }
        let expected = b.size();
        let (bytes, id, entries) = b.finish();
        assert_eq!(bytes.len() as u64, expected);
        (bytes, id, entries, raws)
    }

    #[test]
    fn pack_round_trip() {
        let (bytes, id, entries, raws) = sample();
        assert_eq!(id, Hash::of(&bytes));
        assert_eq!(entries[0].compression, Compression::Zstd);
        assert_eq!(entries[2].compression, Compression::None);
        let parsed = parse_pack("p", &bytes, None).unwrap();
        assert_eq!(parsed, entries);
        for (e, raw) in entries.iter().zip(&raws) {
            let s = &bytes[e.offset as usize..(e.offset + e.stored_len) as usize];
            let got = decode_chunk(
                "p",
                e.offset.into(),
                &e.id,
                e.compression,
                e.raw_len,
                s,
                ChunkKeys::PLAIN,
            )
            .unwrap();
            assert_eq!(&got, raw);
        }
    }

    /// A pack object listed larger than the format allows (offsets beyond 4 GiB would be cut
    /// to 32 bits in the index) is refused by size, before its trailer is believed.
    #[test]
    fn a_pack_listed_over_the_format_limit_is_refused() {
        let (bytes, _, _, _) = sample();
        let trailer = &bytes[bytes.len() - TRAILER_LEN as usize..];
        assert!(parse_trailer("p", bytes.len() as u64, trailer).is_ok());
        for size in [MAX_PACK_SIZE + 1, 5 << 30, u64::MAX] {
            let err = parse_trailer("p", size, trailer).unwrap_err();
            assert_eq!(err.kind(), "corrupt", "{size}: {err}");
            assert!(err.to_string().contains("more than the format"), "{err}");
        }
    }

    /// The per-thread compression scratch buffer is reused from chunk to chunk: every chunk,
    /// large after small and small after large, must still come back exactly, and chunks that
    /// do not shrink by 1/32 must stay raw.
    #[test]
    fn reused_scratch_buffer_keeps_chunks_apart() {
        let noise = |n: usize, seed: u64| -> Bytes {
            let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            (0..n)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x >> 24) as u8
                })
                .collect::<Vec<u8>>()
                .into()
        };
        let mut half = noise(64 << 10, 1).to_vec();
        half[..2 << 10].fill(0); // saves ~3 %: just under the 1/32 it must save
        let chunks: Vec<(Bytes, Compression)> = vec![
            (Bytes::from(vec![1u8; 128 << 10]), Compression::Zstd),
            (noise(128 << 10, 2), Compression::None),
            (Bytes::from(vec![2u8; 100]), Compression::Zstd),
            (noise(3000, 3), Compression::None),
            (Bytes::from(half), Compression::None),
            (Bytes::from(b"abc".repeat(20_000)), Compression::Zstd),
            (Bytes::from(vec![3u8; 7]), Compression::None),
        ];
        for (raw, want) in &chunks {
            let id = Hash::of(raw);
            let e = encode_chunk(id, ChunkKind::Data, raw, 1, ChunkKeys::PLAIN);
            assert_eq!(e.compression, *want, "chunk of {} bytes", raw.len());
            let got = decode_chunk(
                "p",
                0,
                &id,
                e.compression,
                e.raw_len,
                &e.stored,
                ChunkKeys::PLAIN,
            )
            .unwrap();
            assert_eq!(&got, raw);
        }
    }

    #[test]
    fn damage_is_detected_by_name_and_offset() {
        let (bytes, _, entries, _) = sample();
        // Truncation.
        for cut in [0, 10, bytes.len() - 1] {
            assert!(matches!(
                parse_pack("p", &bytes[..cut], None),
                Err(Error::Corrupt { .. })
            ));
        }
        // A flipped byte in the table.
        let mut t = bytes.to_vec();
        let at = t.len() - 48 - 10;
        t[at] ^= 1;
        assert!(matches!(
            parse_pack("p", &t, None),
            Err(Error::Corrupt { .. })
        ));
        // A flipped byte in a chunk: decode fails or the hash check does.
        let e = entries[1];
        let mut t = bytes.to_vec();
        t[e.offset as usize + 3] ^= 0x40;
        let s = &t[e.offset as usize..(e.offset + e.stored_len) as usize];
        let err = decode_chunk(
            "p",
            e.offset.into(),
            &e.id,
            e.compression,
            e.raw_len,
            s,
            ChunkKeys::PLAIN,
        )
        .unwrap_err();
        assert!(
            matches!(err, Error::Corrupt { .. } | Error::ChunkHashMismatch { .. }),
            "{err}"
        );
        // An unknown version.
        let mut t = bytes.to_vec();
        let at = t.len() - 12;
        t[at] = 9;
        assert!(matches!(
            parse_pack("p", &t, None),
            Err(Error::UnsupportedVersion { .. })
        ));
    }
}
