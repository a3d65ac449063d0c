//! Scale model: what a backup of a 1 TiB volume of unique data needs, measured on the real data
//! structures and encoders rather than extrapolated from a small run.
//!
//! `cargo bench --bench scale [-- TIB]` (default 1): inserts one 128-bit key per chunk into the
//! in-memory set that holds the chunks a backup stores ([`volback::index::ChunkSet`]) and
//! measures its memory and lookup speed; builds the dedup set a later backup loads for a
//! container of that size ([`volback::backup::dedup::DedupSet`], spilled to a temporary file) and
//! measures the same; encodes the extent list of that many chunks with the real writer (chunked
//! as a backup chunks it) and sizes the manifest; counts the write requests of the pack layout.
//! Takes about two minutes, ~600 MiB of RAM and ~1 GiB of `$TMPDIR` per TiB.

use std::time::Instant;

use volback::backup::dedup::{DEFAULT_MEM_KEYS, DedupSet};
use volback::format::config::ContainerConfig;
use volback::format::extent_list::ExtentListWriter;
use volback::ids::Hash;
use volback::index::ChunkSet;

fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn id(i: u64) -> Hash {
    // Distinct, uniformly spread ids (what BLAKE3 ids look like), cheaper than hashing data.
    let mut h = [0u8; 32];
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    for c in h.chunks_mut(8) {
        x ^= x >> 31;
        x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x ^= x >> 27;
        c.copy_from_slice(&x.to_le_bytes());
    }
    Hash(h)
}

fn main() {
    let tib: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1);
    let cfg = ContainerConfig::default();
    let volume = tib << 40;
    let avg = u64::from(cfg.chunker.avg);
    let n = volume / avg;
    println!("# Scale model: {tib} TiB of unique data, {n} chunks of {avg} B average\n");
    let rss0 = vm_hwm_kib();

    // 1. The dedup set a backup holds.
    let t = Instant::now();
    let mut set = ChunkSet::new();
    for i in 0..n {
        set.insert(&id(i));
    }
    set.compact();
    let build = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let probes = 2_000_000u64;
    let mut hits = 0;
    for i in 0..probes {
        hits += usize::from(set.contains(&id(i * 7 % n)));
        hits += usize::from(set.contains(&id(n + i)));
    }
    let lookup_ns = t.elapsed().as_nanos() as f64 / (2 * probes) as f64;
    assert_eq!(hits as u64, probes);
    let set_bytes = set.memory_bytes() as u64;
    let rss_set = vm_hwm_kib().saturating_sub(rss0);
    drop(set);

    // 1b. The dedup set a backup loads from a container holding those chunks: keys beyond
    // DEFAULT_MEM_KEYS go to a sorted temporary file; lookups come in sorted batches of 128
    // (a 4 MiB read buffer's chunks), half hits and half misses.
    let t = Instant::now();
    let mut builder = DedupSet::builder(DEFAULT_MEM_KEYS);
    for i in 0..n {
        builder.add(&id(i));
    }
    let mut loaded = match builder.finish() {
        Ok(s) => s,
        Err(e) => panic!("building the dedup set: {e}"),
    };
    let load_s = t.elapsed().as_secs_f64();
    let loaded_mem = loaded.memory_bytes() as u64;
    let t = Instant::now();
    let batches = 20_000u64;
    let mut known = 0usize;
    for b in 0..batches {
        let ids: Vec<Hash> = (0..64)
            .flat_map(|k| [id((b * 64 + k) * 7919 % n), id(2 * n + b * 64 + k)])
            .collect();
        match loaded.check_and_add(&ids) {
            Ok(v) => known += v.iter().filter(|k| **k).count(),
            Err(e) => panic!("dedup lookup: {e}"),
        }
    }
    let loaded_ns = t.elapsed().as_nanos() as f64 / (batches * 128) as f64;
    assert_eq!(known as u64, batches * 64);
    let loaded_spilled = loaded.spilled();
    drop(loaded);

    // 2. The extent list (streamed into chunks as a backup does) and the manifest.
    let t = Instant::now();
    let mut w = ExtentListWriter::new();
    let (mut meta_chunks, mut meta_bytes, mut max_meta) = (0u64, 0u64, 0usize);
    for i in 0..n {
        // Lengths spread like FastCDC's around the average.
        let len = (avg / 2 + (i * 2_654_435_761) % avg) as u32;
        w.push_data(len, &id(i));
        if i % 65_536 == 0 {
            for c in w.take_chunks() {
                meta_chunks += 1;
                meta_bytes += c.len() as u64;
                max_meta = max_meta.max(c.len());
            }
        }
    }
    for c in w.finish() {
        meta_chunks += 1;
        meta_bytes += c.len() as u64;
    }
    let extent_s = t.elapsed().as_secs_f64();
    // The manifest lists each extent-list chunk as {"id": 64 hex, "len": n}.
    let manifest_bytes = meta_chunks * (r#"{"id":"","len":8192},"#.len() as u64 + 64) + 1024;

    // 3. Write requests of a full backup: data packs, extent-list packs (4 MiB), index
    // segments (one per 64 packs), the manifest, and the lease (written, renewed every
    // TTL/8 = 112 s, deleted) for a run at 1 GB/s.
    let data_packs = volume / cfg.pack_target;
    let meta_packs = meta_bytes.div_ceil(4 << 20);
    let segments = (data_packs + meta_packs).div_ceil(64);
    let lease = 2 + volume / 1_000_000_000 / 112;
    let puts = data_packs + meta_packs + segments + 1 + lease;
    let index_bytes = n * 52 + (data_packs + meta_packs) * 32;

    let gib = (volume >> 30) as f64;
    println!("| quantity | value |");
    println!("|---|---|");
    println!(
        "| chunks a full backup stores (ChunkSet), memory | {:.0} MiB ({:.1} B per chunk) |",
        set_bytes as f64 / 1048576.0,
        set_bytes as f64 / n as f64
    );
    println!(
        "| peak RSS added while building it | {:.0} MiB |",
        rss_set as f64 / 1024.0
    );
    println!(
        "| build time, lookup time | {build:.1} s, {lookup_ns:.0} ns per lookup (half hits, half misses) |"
    );
    println!(
        "| a container of that size, as the next backup's dedup set (DedupSet) | {:.2} MiB of memory ({:.3} B per chunk; in a temporary file: {loaded_spilled}, {:.0} MiB), loaded in {load_s:.1} s |",
        loaded_mem as f64 / 1048576.0,
        loaded_mem as f64 / n as f64,
        (n * 16) as f64 / 1048576.0
    );
    println!(
        "| its lookup time | {loaded_ns:.0} ns per lookup (batches of 128, half hits, half misses; every hit reads a 4 KiB block, from the page cache) |"
    );
    println!(
        "| extent list stream | {:.0} MiB ({:.3} % of the volume) in {meta_chunks} chunks (largest {max_meta} B), encoded in {extent_s:.1} s |",
        meta_bytes as f64 / 1048576.0,
        100.0 * meta_bytes as f64 / volume as f64
    );
    println!(
        "| manifest (JSON) | {:.1} MiB |",
        manifest_bytes as f64 / 1048576.0
    );
    println!(
        "| index segments (stored; loaded only by restore and gc) | {:.0} MiB |",
        index_bytes as f64 / 1048576.0
    );
    println!(
        "| write requests, full backup | {puts} ({:.1} per GiB: {data_packs} data packs, {meta_packs} extent-list packs, {segments} segments, 1 manifest, {lease} lease writes) |",
        puts as f64 / gib
    );
    println!(
        "| metadata written, full backup | {:.3} % of the volume |",
        100.0 * (meta_bytes + index_bytes + manifest_bytes) as f64 / volume as f64
    );
}
