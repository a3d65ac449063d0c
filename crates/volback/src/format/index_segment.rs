//! Index segments (`index/<blake3>`): immutable tables of where each chunk lives.
//!
//! Each segment is written by one backup after the packs it describes and before that backup's
//! manifest. Segments are never modified; the garbage collector consolidates them by writing a
//! new segment first and deleting the old ones after. A chunk may appear in several segments
//! (two backups racing to store it); any entry whose pack exists is valid, so duplicates are
//! harmless.
//!
//! Segment layout (little-endian; see `docs/format.md`):
//!
//! ```text
//! "VBIX" u16 version=1 u16 0 u32 n_packs u32 n_entries   16-byte header
//! n_packs x pack id[32]
//! n_entries x: chunk id[32] pack u32 offset u32 stored_len u32 raw_len u32 kind u8 comp u8 0u16
//! blake3(all bytes above)[32]
//! ```

use super::chunk::{ChunkKind, Compression};
use super::pack::{MAX_PACK_SIZE, PackEntry};
use crate::error::{Error, Result};
use crate::ids::Hash;

/// Index segment format version written and read by this build.
pub const INDEX_VERSION: u16 = 1;
const MAGIC: &[u8; 4] = b"VBIX";
const HEADER_LEN: usize = 16;
const ENTRY_LEN: usize = 52;

/// Packs a segment describes, at most, when written by a backup (every this many packs and at
/// the end, so an interrupted backup leaves indexed packs that a re-run can reuse) or by the
/// collector merging segments (~3.4 MiB at 32 MiB packs of 32 KiB chunks).
pub const PACKS_PER_SEGMENT: usize = 64;

/// The contents of one index segment: each pack with its entries.
pub type Segment = Vec<(Hash, Vec<PackEntry>)>;

/// Encodes one segment describing `packs`.
pub fn encode_segment(packs: &[(Hash, Vec<PackEntry>)]) -> Vec<u8> {
    let n_entries: usize = packs.iter().map(|(_, e)| e.len()).sum();
    let mut b = Vec::with_capacity(HEADER_LEN + packs.len() * 32 + n_entries * ENTRY_LEN + 32);
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&INDEX_VERSION.to_le_bytes());
    b.extend_from_slice(&[0, 0]);
    b.extend_from_slice(&(packs.len() as u32).to_le_bytes());
    b.extend_from_slice(&(n_entries as u32).to_le_bytes());
    for (id, _) in packs {
        b.extend_from_slice(&id.0);
    }
    for (i, (_, entries)) in packs.iter().enumerate() {
        for e in entries {
            b.extend_from_slice(&e.id.0);
            b.extend_from_slice(&(i as u32).to_le_bytes());
            b.extend_from_slice(&e.offset.to_le_bytes());
            b.extend_from_slice(&e.stored_len.to_le_bytes());
            b.extend_from_slice(&e.raw_len.to_le_bytes());
            b.push(e.kind as u8);
            b.push(e.compression as u8);
            b.extend_from_slice(&[0, 0]);
        }
    }
    let h = Hash::of(&b);
    b.extend_from_slice(&h.0);
    b
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Decodes a segment read from object `key`, checking its checksum and every bound.
pub fn decode_segment(key: &str, b: &[u8]) -> Result<Segment> {
    if b.len() < HEADER_LEN + 32 {
        return Err(Error::corrupt(
            key,
            0,
            format!("index segment too short ({} bytes)", b.len()),
        ));
    }
    if &b[..4] != MAGIC {
        return Err(Error::corrupt(key, 0, "index segment magic missing"));
    }
    let version = u16::from_le_bytes([b[4], b[5]]);
    if version != INDEX_VERSION {
        return Err(Error::UnsupportedVersion {
            key: key.to_string(),
            what: "index segment",
            found: u64::from(version),
            supported: u64::from(INDEX_VERSION),
        });
    }
    let n_packs = u32_at(b, 8) as usize;
    let n_entries = u32_at(b, 12) as usize;
    let expect =
        (HEADER_LEN as u64) + n_packs as u64 * 32 + n_entries as u64 * ENTRY_LEN as u64 + 32;
    if expect != b.len() as u64 {
        return Err(Error::corrupt(
            key,
            8,
            format!(
                "index segment declares {n_packs} packs and {n_entries} entries but has {} bytes",
                b.len()
            ),
        ));
    }
    let body = &b[..b.len() - 32];
    if Hash::of(body).0[..] != b[b.len() - 32..] {
        return Err(Error::corrupt(
            key,
            body.len() as u64,
            "index segment fails its BLAKE3 check",
        ));
    }
    let mut out: Vec<(Hash, Vec<PackEntry>)> = (0..n_packs)
        .map(|i| {
            let at = HEADER_LEN + i * 32;
            (
                Hash(b[at..at + 32].try_into().unwrap_or([0; 32])),
                Vec::new(),
            )
        })
        .collect();
    let base = HEADER_LEN + n_packs * 32;
    // Each pack's entries get their exact capacity up front: growing them by doubling left
    // a trail of freed blocks in the allocator, which a restore's heap then kept for its whole
    // run (~3 MiB more for a 16 GiB backup than a 4 GiB one).
    let mut counts = vec![0usize; n_packs];
    for i in 0..n_entries {
        let pack = u32_at(&b[base + i * ENTRY_LEN..], 32) as usize;
        if let Some(c) = counts.get_mut(pack) {
            *c += 1;
        }
    }
    for ((_, entries), n) in out.iter_mut().zip(counts) {
        entries.reserve_exact(n);
    }
    for i in 0..n_entries {
        let at = base + i * ENTRY_LEN;
        let e = &b[at..at + ENTRY_LEN];
        let pack = u32_at(e, 32) as usize;
        let offset = u32_at(e, 36);
        let stored_len = u32_at(e, 40);
        let raw_len = u32_at(e, 44);
        let kind = ChunkKind::from_u8(e[48]).ok_or_else(|| {
            Error::corrupt(
                key,
                (at + 48) as u64,
                format!("unknown chunk kind {}", e[48]),
            )
        })?;
        let compression = Compression::from_u8(e[49]).ok_or_else(|| {
            Error::corrupt(
                key,
                (at + 49) as u64,
                format!("unknown compression {}", e[49]),
            )
        })?;
        if pack >= n_packs {
            return Err(Error::corrupt(
                key,
                (at + 32) as u64,
                format!("entry names pack {pack} of {n_packs}"),
            ));
        }
        if u64::from(offset) + u64::from(stored_len) > MAX_PACK_SIZE
            || raw_len > crate::chunker::MAX_CHUNK_LIMIT
        {
            return Err(Error::corrupt(
                key,
                (at + 36) as u64,
                "entry lies outside any valid pack",
            ));
        }
        let id = Hash(e[..32].try_into().unwrap_or([0; 32]));
        out[pack].1.push(PackEntry {
            id,
            kind,
            compression,
            raw_len,
            stored_len,
            offset,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::Index;

    fn entry(n: u8, offset: u32) -> PackEntry {
        PackEntry {
            id: Hash([n; 32]),
            kind: ChunkKind::Data,
            compression: Compression::Zstd,
            raw_len: 1000,
            stored_len: 500,
            offset,
        }
    }

    #[test]
    fn segment_round_trip_and_damage() {
        let packs = vec![
            (Hash([1; 32]), vec![entry(10, 8), entry(11, 508)]),
            (Hash([2; 32]), vec![entry(12, 8)]),
        ];
        let seg = encode_segment(&packs);
        assert_eq!(decode_segment("i", &seg).unwrap(), packs);
        let mut idx = Index::new();
        for (p, e) in &packs {
            idx.add_pack(*p, e);
        }
        assert_eq!(idx.len(), 3);
        let loc = idx.get(&Hash([12; 32])).unwrap();
        assert_eq!(idx.pack_id(loc.pack), Hash([2; 32]));
        for cut in [0, 15, seg.len() - 1] {
            assert!(decode_segment("i", &seg[..cut]).is_err());
        }
        let mut bad = seg.clone();
        bad[20] ^= 1;
        assert!(matches!(
            decode_segment("i", &bad),
            Err(Error::Corrupt { .. })
        ));
        let mut bad = seg.clone();
        bad[4] = 2;
        assert!(matches!(
            decode_segment("i", &bad),
            Err(Error::UnsupportedVersion { .. })
        ));
    }
}
