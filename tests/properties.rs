//! Property tests: the chunker (deterministic, bounded, lossless, independent of buffering) and
//! every binary format's encode/decode round trip, plus decoders never panicking on bytes.
//!
//! Random bytes stop at a format's magic number, so the decoders are also fed *valid* objects
//! with crafted damage: fields rewritten with their checksums recomputed (so the checks behind
//! the checksum run), bytes flipped, and truncations. Each must be refused with a `corrupt`
//! error or decode to something self-consistent, never panic.

use bytes::Bytes;
use proptest::prelude::*;
use volback::chunker::{ChunkerParams, Piece, Splitter};
use volback::crypto::ChunkKeys;
use volback::format::chunk::{ChunkKind, decode_chunk, encode_chunk};
use volback::format::extent_list::{Extent, ExtentListReader, ExtentListWriter};
use volback::format::index_segment::{decode_segment, encode_segment};
use volback::format::pack::{PackBuilder, parse_pack};
use volback::ids::Hash;

/// Small parameters so that short inputs exercise every boundary case.
fn params() -> ChunkerParams {
    ChunkerParams {
        min: 256,
        avg: 1024,
        max: 4096,
        zero_min: 8192,
    }
}

/// A volume: data with runs of zeros, as (bytes, whether it is a hole) pieces.
fn volume() -> impl Strategy<Value = Vec<(Vec<u8>, bool)>> {
    prop::collection::vec(
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..20_000).prop_map(|v| (v, false)),
            (0usize..40_000).prop_map(|n| (vec![0u8; n], false)),
            (1usize..6).prop_map(|k| (vec![0u8; k * 4096], true)),
            (1usize..4000).prop_map(|n| (vec![7u8; n], false)),
        ],
        0..12,
    )
}

fn split(pieces: &[(Vec<u8>, bool)], buf: usize) -> Vec<Piece> {
    let mut s = Splitter::new(params());
    let mut out = Vec::new();
    for (bytes, hole) in pieces {
        if *hole {
            s.push_hole(bytes.len() as u64, &mut out);
        } else {
            for part in bytes.chunks(buf.max(1)) {
                s.push_data(Bytes::copy_from_slice(part), &mut out);
            }
        }
    }
    s.finish(&mut out);
    out
}

fn flatten(pieces: &[Piece]) -> Vec<u8> {
    let mut v = Vec::new();
    for p in pieces {
        match p {
            Piece::Zero(n) => v.resize(v.len() + *n as usize, 0),
            Piece::Data(b) | Piece::Hashed(b, _) => v.extend_from_slice(b),
            Piece::Reused(..) => unreachable!("the splitter reads everything"),
        }
    }
    v
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn chunker_is_lossless_bounded_and_independent_of_buffering(vol in volume(), buf in 1usize..50_000) {
        let expect: Vec<u8> = vol.iter().flat_map(|(b, _)| b.clone()).collect();
        let whole = split(&vol, usize::MAX);
        prop_assert_eq!(flatten(&whole), expect);
        for p in &whole {
            prop_assert!(!p.is_empty());
            if let Piece::Data(b) = p {
                prop_assert!(b.len() <= params().max as usize);
                prop_assert!(b.iter().any(|&x| x != 0), "all-zero chunks are zero extents");
            }
        }
        let pieces = split(&vol, buf);
        let merge = |v: &[Piece]| -> Vec<(bool, u64)> {
            let mut out: Vec<(bool, u64)> = Vec::new();
            for p in v {
                let z = matches!(p, Piece::Zero(_));
                match out.last_mut() {
                    Some((true, n)) if z => *n += p.len(),
                    _ => out.push((z, p.len())),
                }
            }
            out
        };
        prop_assert_eq!(merge(&pieces), merge(&whole));
    }

    #[test]
    fn extent_list_round_trips(lens in prop::collection::vec((any::<bool>(), 1u32..100_000), 0..3000)) {
        let mut w = ExtentListWriter::new();
        let mut expect: Vec<Extent> = Vec::new();
        for (i, (zero, len)) in lens.iter().enumerate() {
            if *zero {
                w.push_zero(u64::from(*len));
                match expect.last_mut() {
                    Some(Extent::Zero { len: n }) => *n += u64::from(*len),
                    _ => expect.push(Extent::Zero { len: u64::from(*len) }),
                }
            } else {
                let id = Hash::of(&(i as u64).to_le_bytes());
                w.push_data(*len, &id);
                expect.push(Extent::Data { len: *len, id });
            }
        }
        let mut chunks = w.take_chunks();
        chunks.extend(w.finish());
        let mut r = ExtentListReader::new();
        let mut got = Vec::new();
        for c in &chunks {
            r.push("m", c, &mut got).unwrap();
        }
        r.finish("m").unwrap();
        prop_assert_eq!(got, expect);
    }

    #[test]
    fn packs_and_index_segments_round_trip(chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..5000), 1..20)) {
        let mut b = PackBuilder::new();
        for c in &chunks {
            let raw = Bytes::copy_from_slice(c);
            b.add(&encode_chunk(Hash::of(c), ChunkKind::Data, &raw, 1, ChunkKeys::PLAIN));
        }
        let (bytes, id, entries) = b.finish();
        prop_assert_eq!(Hash::of(&bytes), id);
        prop_assert_eq!(&parse_pack("p", &bytes, None).unwrap(), &entries);
        for (e, c) in entries.iter().zip(&chunks) {
            let s = &bytes[e.offset as usize..(e.offset + e.stored_len) as usize];
            prop_assert_eq!(&decode_chunk("p", 0, &e.id, e.compression, e.raw_len, s, ChunkKeys::PLAIN).unwrap()[..], &c[..]);
        }
        let seg = vec![(id, entries)];
        prop_assert_eq!(decode_segment("i", &encode_segment(&seg)).unwrap(), seg);
    }

    #[test]
    fn decoders_never_panic_on_arbitrary_bytes(data in prop::collection::vec(any::<u8>(), 0..4096)) {
        let _ = parse_pack("p", &data, None);
        let _ = decode_segment("i", &data);
        let _ = volback::format::manifest::Manifest::decode("m", &data);
        let _ = volback::format::condemnation::Condemnation::decode("gc/condemned-0-x", &data);
        let mut r = ExtentListReader::new();
        let mut out = Vec::new();
        if r.push("m", &data, &mut out).is_ok() {
            let _ = r.finish("m");
        }
        if let Ok(t) = std::str::from_utf8(&data) {
            let _ = volback::format::record::ExportedRecord::parse(t);
            let _ = volback::container::url::ContainerUrl::parse(t);
        }
    }

    #[test]
    fn condemnation_records_round_trip(ids in prop::collection::vec(any::<[u8; 32]>(), 0..50), t in any::<u32>()) {
        let c = volback::format::condemnation::Condemnation {
            format: volback::format::condemnation::CONDEMNED_FORMAT.into(),
            version: volback::format::condemnation::CONDEMNED_VERSION,
            created_unix: u64::from(t),
            created_at: "2026-11-22T00:00:00Z".into(),
            host: "h".into(),
            packs: ids.iter().map(|i| Hash(*i).to_hex()).collect(),
            exposed: Some(volback::format::condemnation::Condemnation::encode_exposed(
                ids.iter().map(|i| Hash(*i)),
            )),
        };
        let bytes = serde_json::to_vec(&c).unwrap();
        let back = volback::format::condemnation::Condemnation::decode("gc/condemned-0-x", &bytes).unwrap();
        let got: Vec<Hash> = back.pack_ids().collect();
        let want: Vec<Hash> = ids.iter().map(|i| Hash(*i)).collect();
        let mut prefixes: Vec<u64> = want
            .iter()
            .map(volback::format::condemnation::Condemnation::exposed_prefix)
            .collect();
        prefixes.sort_unstable();
        prefixes.dedup();
        prop_assert_eq!(got, want);
        prop_assert_eq!(back.exposed_prefixes(), Some(prefixes));
        prop_assert_eq!(back.created_unix, u64::from(t));
    }
}

/// A valid pack of `chunks` (stored raw where compression does not pay).
fn sample_pack(chunks: &[Vec<u8>]) -> (Vec<u8>, Vec<volback::format::pack::PackEntry>) {
    let mut b = PackBuilder::new();
    for c in chunks {
        b.add(&encode_chunk(
            Hash::of(c),
            ChunkKind::Data,
            &Bytes::copy_from_slice(c),
            1,
            ChunkKeys::PLAIN,
        ));
    }
    let (bytes, _, entries) = b.finish();
    (bytes.to_vec(), entries)
}

/// Rewrites the BLAKE3 of a pack's table in its trailer after the table was changed.
fn rehash_pack_table(pack: &mut [u8], n: usize) {
    let end = pack.len() - 48;
    let table = end - n * 44;
    let h = Hash::of(&pack[table..end]);
    pack[end..end + 32].copy_from_slice(&h.0);
}

/// Rewrites the BLAKE3 that ends an index segment after its body was changed.
fn rehash_segment(seg: &mut [u8]) {
    let body = seg.len() - 32;
    let h = Hash::of(&seg[..body]);
    seg[body..].copy_from_slice(&h.0);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A pack table entry rewritten (lengths, kind, compression) with the table's checksum
    /// made to match: the parser's own checks decide, and what it accepts lies inside the pack.
    #[test]
    fn crafted_pack_tables_are_refused_or_consistent(
        chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..3000), 1..6),
        which in any::<prop::sample::Index>(),
        field in 0usize..4,
        value in any::<u32>(),
    ) {
        let (mut pack, entries) = sample_pack(&chunks);
        let n = entries.len();
        let i = which.index(n);
        let at = pack.len() - 48 - (n - i) * 44;
        match field {
            0 => pack[at + 32..at + 36].copy_from_slice(&value.to_le_bytes()),
            1 => pack[at + 36..at + 40].copy_from_slice(&value.to_le_bytes()),
            2 => pack[at + 40] = value as u8,
            _ => pack[at + 41] = value as u8,
        }
        rehash_pack_table(&mut pack, n);
        match parse_pack("p", &pack, None) {
            Err(e) => prop_assert_eq!(e.kind(), "corrupt", "{}", e),
            Ok(got) => {
                let table = (pack.len() - 48 - n * 44) as u64;
                for e in &got {
                    prop_assert!(u64::from(e.offset) + u64::from(e.stored_len) <= table);
                    prop_assert!(e.raw_len <= volback::chunker::MAX_CHUNK_LIMIT);
                    let s = &pack[e.offset as usize..(e.offset + e.stored_len) as usize];
                    let decoded = decode_chunk("p", u64::from(e.offset), &e.id, e.compression, e.raw_len, s, ChunkKeys::PLAIN);
                    if let Err(err) = decoded {
                        prop_assert!(
                            ["corrupt", "hash_mismatch"].contains(&err.kind()),
                            "{}", err
                        );
                    }
                }
            }
        }
    }

    /// A byte of a valid pack flipped, or the pack cut short: refused as corrupt (or, a flip
    /// in the trailer's version field, as an unsupported version), or (a flip in chunk data)
    /// the table still parses and that chunk fails its hash check.
    #[test]
    fn damaged_packs_are_refused(
        chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..3000), 1..6),
        pos in any::<prop::sample::Index>(),
        flip in 1u8..=255,
        cut in any::<prop::sample::Index>(),
    ) {
        let (pack, entries) = sample_pack(&chunks);
        let mut flipped = pack.clone();
        let p = pos.index(flipped.len());
        flipped[p] ^= flip;
        match parse_pack("p", &flipped, None) {
            Err(e) => prop_assert!(["corrupt", "unsupported_version"].contains(&e.kind()), "{}", e),
            Ok(got) => {
                prop_assert_eq!(&got, &entries, "only chunk bytes can change unnoticed by the table");
                let hit = got
                    .iter()
                    .find(|e| (e.offset as usize..(e.offset + e.stored_len) as usize).contains(&p));
                if let Some(e) = hit {
                    let s = &flipped[e.offset as usize..(e.offset + e.stored_len) as usize];
                    let err = decode_chunk("p", u64::from(e.offset), &e.id, e.compression, e.raw_len, s, ChunkKeys::PLAIN)
                        .unwrap_err();
                    prop_assert!(["corrupt", "hash_mismatch"].contains(&err.kind()), "{}", err);
                }
            }
        }
        let short = &pack[..cut.index(pack.len())];
        prop_assert_eq!(parse_pack("p", short, None).unwrap_err().kind(), "corrupt");
    }

    /// An index segment's fields rewritten (pack position, offset, lengths, kind, compression,
    /// counts) with its checksum made to match: refused as corrupt or decoded consistently.
    #[test]
    fn crafted_index_segments_are_refused_or_consistent(
        chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..2000), 1..5),
        packs in 1usize..3,
        field in 0usize..8,
        which in any::<prop::sample::Index>(),
        value in any::<u32>(),
    ) {
        let (bytes, entries) = sample_pack(&chunks);
        let seg: Vec<_> = (0..packs)
            .map(|k| (Hash::of(&[bytes.as_slice(), &[k as u8]].concat()), entries.clone()))
            .collect();
        let mut enc = encode_segment(&seg);
        let n = entries.len() * packs;
        let entry = 16 + packs * 32 + which.index(n) * 52;
        match field {
            0 => enc[8..12].copy_from_slice(&value.to_le_bytes()),
            1 => enc[12..16].copy_from_slice(&value.to_le_bytes()),
            2 => enc[entry + 32..entry + 36].copy_from_slice(&value.to_le_bytes()),
            3 => enc[entry + 36..entry + 40].copy_from_slice(&value.to_le_bytes()),
            4 => enc[entry + 40..entry + 44].copy_from_slice(&value.to_le_bytes()),
            5 => enc[entry + 44..entry + 48].copy_from_slice(&value.to_le_bytes()),
            6 => enc[entry + 48] = value as u8,
            _ => enc[entry + 49] = value as u8,
        }
        rehash_segment(&mut enc);
        match decode_segment("i", &enc) {
            Err(e) => prop_assert_eq!(e.kind(), "corrupt", "{}", e),
            Ok(got) => {
                prop_assert_eq!(got.len(), packs);
                for (_, es) in &got {
                    for e in es {
                        prop_assert!(e.raw_len <= volback::chunker::MAX_CHUNK_LIMIT);
                        prop_assert!(
                            u64::from(e.offset) + u64::from(e.stored_len)
                                <= volback::format::pack::MAX_PACK_SIZE
                        );
                    }
                }
            }
        }
    }

    /// A valid extent-list stream with a byte changed, or cut short: an error naming the
    /// object, or extents that still add up to what was read.
    #[test]
    fn damaged_extent_lists_are_refused_or_consistent(
        lens in prop::collection::vec((any::<bool>(), 1u32..100_000), 1..200),
        pos in any::<prop::sample::Index>(),
        value in any::<u8>(),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut w = ExtentListWriter::new();
        for (i, (zero, len)) in lens.iter().enumerate() {
            if *zero {
                w.push_zero(u64::from(*len));
            } else {
                w.push_data(*len, &Hash::of(&(i as u64).to_le_bytes()));
            }
        }
        let stream: Vec<u8> = w.finish().iter().flat_map(|c| c.iter().copied()).collect();
        let mut damaged = stream.clone();
        let p = pos.index(damaged.len());
        damaged[p] = value;
        for input in [&damaged[..], &stream[..cut.index(stream.len())]] {
            let mut r = ExtentListReader::new();
            let mut out = Vec::new();
            let res = r.push("m", input, &mut out).and_then(|()| r.finish("m"));
            match res {
                Err(e) => prop_assert_eq!(e.kind(), "corrupt", "{}", e),
                Ok(()) => prop_assert!(out.iter().all(|e| !e.is_empty())),
            }
        }
    }
}
