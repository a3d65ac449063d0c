//! Property tests: the chunker (deterministic, bounded, lossless, independent of buffering) and
//! every binary format's encode/decode round trip, plus decoders never panicking on bytes.

use bytes::Bytes;
use proptest::prelude::*;
use volback::chunker::{ChunkerParams, Piece, Splitter};
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
            b.add(&encode_chunk(Hash::of(c), ChunkKind::Data, &raw, 1));
        }
        let (bytes, id, entries) = b.finish();
        prop_assert_eq!(Hash::of(&bytes), id);
        prop_assert_eq!(&parse_pack("p", &bytes).unwrap(), &entries);
        for (e, c) in entries.iter().zip(&chunks) {
            let s = &bytes[e.offset as usize..(e.offset + e.stored_len) as usize];
            prop_assert_eq!(&decode_chunk("p", 0, &e.id, e.compression, e.raw_len, s).unwrap()[..], &c[..]);
        }
        let seg = vec![(id, entries)];
        prop_assert_eq!(decode_segment("i", &encode_segment(&seg)).unwrap(), seg);
    }

    #[test]
    fn decoders_never_panic_on_arbitrary_bytes(data in prop::collection::vec(any::<u8>(), 0..4096)) {
        let _ = parse_pack("p", &data);
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
        };
        let bytes = serde_json::to_vec(&c).unwrap();
        let back = volback::format::condemnation::Condemnation::decode("gc/condemned-0-x", &bytes).unwrap();
        let got: Vec<Hash> = back.pack_ids().collect();
        let want: Vec<Hash> = ids.iter().map(|i| Hash(*i)).collect();
        prop_assert_eq!(got, want);
        prop_assert_eq!(back.created_unix, u64::from(t));
    }
}
