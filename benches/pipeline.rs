//! Criterion micro-benchmarks of the pipeline's stages, one per concept: chunking, zero
//! detection, hashing, compression, pack building, extent-list (manifest) encode and decode.
//! Throughput is reported per input byte, so stages can be compared with each other and with
//! `benches/primitives.rs` (the machine's limits).
//!
//! Run: `cargo bench --bench pipeline` (add a filter, e.g. `-- chunking`).

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use volback::chunker::{ChunkerParams, Guide, GuideEntry, GuideFilter, Piece, Splitter, is_zero};
use volback::crypto::ChunkKeys;
use volback::format::chunk::{ChunkKind, decode_chunk, encode_chunk};
use volback::format::extent_list::{ExtentListReader, ExtentListWriter};
use volback::format::pack::PackBuilder;
use volback::ids::Hash;
use volback_testkit::testdata::pseudo_random;

/// Compressible, file-like data: random words from a small vocabulary.
fn text_like(len: usize) -> Vec<u8> {
    let r = pseudo_random(len, 9);
    let words: [&[u8]; 6] = [
        b"volume ", b"backup ", b"chunk\n", b"the ", b"block ", b"0x1f ",
    ];
    let mut out = Vec::with_capacity(len + 8);
    let mut i = 0;
    while out.len() < len {
        out.extend_from_slice(words[(r[i] % 6) as usize]);
        i += 1;
    }
    out.truncate(len);
    out
}

fn split(data: &Bytes) -> Vec<Piece> {
    split_with(Splitter::new(ChunkerParams::default()), data)
}

fn split_with(mut s: Splitter, data: &Bytes) -> Vec<Piece> {
    let mut out = Vec::new();
    for i in (0..data.len()).step_by(8 << 20) {
        s.push_data(data.slice(i..(i + (8 << 20)).min(data.len())), &mut out);
    }
    s.finish(&mut out);
    out
}

/// What an incremental's guide thread sends for a parent backup of `data`.
fn guide_entries(data: &Bytes) -> Vec<GuideEntry> {
    let mut filter = GuideFilter::default();
    let mut offset = 0;
    let mut entries = Vec::new();
    for p in split(data) {
        let chunk = match &p {
            Piece::Data(b) | Piece::Hashed(b, _) => Some((b.len() as u32, Hash::of(b))),
            Piece::Zero(_) | Piece::Reused(..) => None,
        };
        entries.extend(filter.next(offset, chunk));
        offset += p.len();
    }
    entries
}

fn guided(entries: &[GuideEntry]) -> Splitter {
    let (tx, rx) = std::sync::mpsc::channel();
    for batch in entries.chunks(4096) {
        let _ = tx.send(batch.to_vec());
    }
    Splitter::with_guide(
        ChunkerParams::default(),
        Guide::new(rx, volback::ids::ChunkIds::PLAIN),
    )
}

fn chunks_of(data: &Bytes) -> Vec<Bytes> {
    split(data)
        .into_iter()
        .filter_map(|p| match p {
            Piece::Data(b) | Piece::Hashed(b, _) => Some(b),
            Piece::Zero(_) | Piece::Reused(..) => None,
        })
        .collect()
}

fn benches(c: &mut Criterion) {
    let random = Bytes::from(pseudo_random(32 << 20, 1));
    let text = Bytes::from(text_like(8 << 20));
    let zeros = vec![0u8; 8 << 20];

    let mut g = c.benchmark_group("chunking");
    g.throughput(Throughput::Bytes(random.len() as u64));
    g.sample_size(10);
    g.bench_function("zero runs + FastCDC, 32 MiB random", |b| {
        b.iter(|| black_box(split(&random)).len())
    });
    // An unchanged volume cut with its parent as the guide: hashed (the pipeline's hash comes
    // with it), not scanned.
    let entries = guide_entries(&random);
    g.bench_function(
        "guided by an identical parent (hashing included), 32 MiB random",
        |b| b.iter(|| black_box(split_with(guided(&entries), &random)).len()),
    );
    g.finish();

    let mut g = c.benchmark_group("zero detection");
    g.throughput(Throughput::Bytes(zeros.len() as u64));
    g.bench_function("is_zero, 8 MiB of zeros", |b| {
        b.iter(|| is_zero(black_box(&zeros)))
    });
    g.finish();

    let chunks = chunks_of(&random);
    let mut g = c.benchmark_group("hashing");
    g.throughput(Throughput::Bytes(random.len() as u64));
    g.sample_size(10);
    g.bench_function("BLAKE3 per chunk, 32 MiB", |b| {
        b.iter(|| chunks.iter().map(|c| Hash::of(c).0[0] as u64).sum::<u64>())
    });
    g.finish();

    let text_chunks = chunks_of(&text);
    let mut g = c.benchmark_group("compression");
    g.throughput(Throughput::Bytes(text.len() as u64));
    g.sample_size(10);
    for level in [1, 3] {
        g.bench_function(format!("zstd-{level} per chunk, 8 MiB text"), |b| {
            b.iter(|| {
                text_chunks
                    .iter()
                    .map(|c| {
                        encode_chunk(Hash([0; 32]), ChunkKind::Data, c, level, ChunkKeys::PLAIN)
                            .stored
                            .len()
                    })
                    .sum::<usize>()
            })
        });
    }
    let encoded: Vec<_> = text_chunks
        .iter()
        .map(|c| encode_chunk(Hash::of(c), ChunkKind::Data, c, 1, ChunkKeys::PLAIN))
        .collect();
    g.bench_function("decode + verify per chunk, 8 MiB text", |b| {
        b.iter(|| {
            encoded
                .iter()
                .map(|e| {
                    decode_chunk(
                        "bench",
                        0,
                        &e.id,
                        e.compression,
                        e.raw_len,
                        &e.stored,
                        ChunkKeys::PLAIN,
                    )
                    .map(|r| r.len())
                    .unwrap_or(0)
                })
                .sum::<usize>()
        })
    });
    g.finish();

    let mut g = c.benchmark_group("pack building");
    g.throughput(Throughput::Bytes(text.len() as u64));
    g.sample_size(10);
    g.bench_function("add + finish, 8 MiB of encoded chunks", |b| {
        b.iter(|| {
            let mut p = PackBuilder::with_capacity(16 << 20);
            for e in &encoded {
                p.add(e);
            }
            p.finish().1
        })
    });
    g.finish();

    let ids: Vec<Hash> = (0..100_000u32)
        .map(|i| Hash::of(&i.to_le_bytes()))
        .collect();
    let mut g = c.benchmark_group("manifest");
    g.throughput(Throughput::Elements(ids.len() as u64));
    g.sample_size(10);
    g.bench_function("extent list encode, 100k extents", |b| {
        b.iter(|| {
            let mut w = ExtentListWriter::new();
            for (i, id) in ids.iter().enumerate() {
                if i % 10 == 0 {
                    w.push_zero(65536);
                }
                w.push_data(32768, id);
            }
            let mut chunks = w.take_chunks();
            chunks.extend(w.finish());
            chunks.len()
        })
    });
    let mut w = ExtentListWriter::new();
    for id in &ids {
        w.push_data(32768, id);
    }
    let mut stream = w.take_chunks();
    stream.extend(w.finish());
    g.bench_function("extent list decode, 100k extents", |b| {
        b.iter(|| {
            let mut r = ExtentListReader::new();
            let mut out = Vec::new();
            for c in &stream {
                r.push("bench", c, &mut out).map(|_| ()).unwrap_or(());
            }
            out.len()
        })
    });
    g.finish();
}

criterion_group!(pipeline, benches);
criterion_main!(pipeline);
