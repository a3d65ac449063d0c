//! Scale model: what a backup of a 1 TiB volume of unique data needs, measured on the real data
//! structures and encoders rather than extrapolated from a small run.
//!
//! Part 1, `cargo bench --bench scale [-- TIB]` (default 1): inserts one 128-bit key per chunk into the
//! in-memory set that holds the chunks a backup stores ([`volback::index::ChunkSet`]) and
//! measures its memory and lookup speed; builds the dedup set a later backup loads for a
//! container of that size ([`volback::backup::dedup::DedupSet`], spilled to a temporary file) and
//! measures the same; encodes the extent list of that many chunks with the real writer (chunked
//! as a backup chunks it) and sizes the manifest; counts the write requests of the pack layout.
//! Takes about two minutes, ~600 MiB of RAM and ~1 GiB of `$TMPDIR` per TiB.
//!
//! Part 2 models a container of 100 TiB of unique data holding 1,000 volumes with 30 daily
//! incrementals each. What does not depend on the container's size is measured: real
//! incrementals run against an in-memory container, first alone and then beside 200,000 packs
//! and 3,125 index segments of other volumes (placeholders that would fail to decode if read),
//! and their requests must come out equal. What does depend on it (a backup of a new volume,
//! restore, gc, verify) is computed from the same constants the code uses, per request and
//! per byte held.

use std::time::Instant;

use volback::backup::dedup::{DEFAULT_MEM_KEYS, DedupSet};
use volback::format::config::ContainerConfig;
use volback::format::extent_list::ExtentListWriter;
use volback::ids::Hash;
use volback::index::ChunkSet;
use volback_benches::{id, status_kib};

fn main() {
    if std::env::args().any(|a| a == "--model-only") {
        model();
        return;
    }
    let tib: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1);
    let cfg = ContainerConfig::default();
    let volume = tib << 40;
    let avg = u64::from(cfg.chunker.avg);
    let n = volume / avg;
    println!("# Scale model: {tib} TiB of unique data, {n} chunks of {avg} B average\n");
    let rss0 = status_kib("VmHWM:");

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
    let rss_set = status_kib("VmHWM:").saturating_sub(rss0);
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

/// Deterministic pseudo-random bytes.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len.div_ceil(8))
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .take(len)
        .collect()
}

/// Requests and dedup-set memory of an incremental, in the container `c`.
fn incremental(
    c: &volback::container::Container,
    data: &[u8],
    id: &str,
    parent: &str,
) -> volback::backup::BackupReport {
    use volback::backup::source::VolumeSource;
    use volback::backup::{BackupOptions, run_backup};
    let opts = BackupOptions {
        backup_id: Some(id.into()),
        volume_id: "vol".into(),
        parent_id: Some(parent.into()),
        ..Default::default()
    };
    let source = VolumeSource::Reader {
        name: id.into(),
        reader: Box::new(std::io::Cursor::new(data.to_vec())),
    };
    match run_backup(c, source, &opts, None) {
        Ok((_, _, r)) => r,
        Err(e) => panic!("incremental {id}: {e}"),
    }
}

/// Part 2: see the module documentation.
fn model() {
    use std::sync::Arc;
    use volback::container::{Container, pack_key};
    use volback::store::{MemStore, ObjectStore, RequestCounts};

    // Measured: two incrementals of a 256 MiB volume (unchanged, then 1 % changed in 16
    // places), alone and beside other volumes' packs and segments.
    let total = |q: &RequestCounts| q.put + q.get + q.head + q.list + q.delete;
    let size = 256 << 20;
    let day1 = noise(size, 1);
    let mut day2 = day1.clone();
    for k in 0..16 {
        let at = k * (size / 16) + 4096;
        day2[at..at + size / 1600].copy_from_slice(&noise(size / 1600, 100 + k as u64));
    }
    let mut rows = Vec::new();
    for others in [0usize, 200_000] {
        let mem: Arc<dyn ObjectStore> = Arc::new(MemStore::new());
        let c = match Container::with_store(mem.clone(), "mem://".into(), true, None) {
            Ok(c) => c,
            Err(e) => panic!("container: {e}"),
        };
        let full = {
            use volback::backup::source::VolumeSource;
            use volback::backup::{BackupOptions, run_backup};
            let opts = BackupOptions {
                backup_id: Some("d0".into()),
                volume_id: "vol".into(),
                ..Default::default()
            };
            let source = VolumeSource::Reader {
                name: "d0".into(),
                reader: Box::new(std::io::Cursor::new(day1.clone())),
            };
            match run_backup(&c, source, &opts, None) {
                Ok((_, _, r)) => r,
                Err(e) => panic!("full: {e}"),
            }
        };
        for i in 0..others as u64 {
            let junk = bytes::Bytes::from_static(b"another volume's pack");
            if let Err(e) = mem.put(&pack_key(&id(i)), junk) {
                panic!("{e}");
            }
            if i % 64 == 0 {
                let seg = format!("index/{}", id(u64::MAX - i).to_hex());
                if let Err(e) = mem.put(&seg, bytes::Bytes::from_static(b"not a segment")) {
                    panic!("{e}");
                }
            }
        }
        let same = incremental(&c, &day1, "d1", "d0");
        let changed = incremental(&c, &day2, "d2", "d1");
        // A file whose stamp is its parent's: not read at all.
        let file = std::env::temp_dir().join(format!("volback-scale-{}.img", std::process::id()));
        if let Err(e) = std::fs::write(&file, &day2) {
            panic!("{}: {e}", file.display());
        }
        let file_backup = |id: &str, parent: Option<&str>| {
            use volback::backup::source::VolumeSource;
            use volback::backup::{BackupOptions, run_backup};
            let opts = BackupOptions {
                backup_id: Some(id.into()),
                volume_id: "vol".into(),
                parent_id: parent.map(String::from),
                ..Default::default()
            };
            match run_backup(&c, VolumeSource::Path(file.clone()), &opts, None) {
                Ok((_, _, r)) => r,
                Err(e) => panic!("backup {id}: {e}"),
            }
        };
        file_backup("f0", Some("d2"));
        let stamped = file_backup("f1", Some("f0"));
        let _ = std::fs::remove_file(&file);
        rows.push((others, full, same, changed, stamped));
    }
    let (_, _, same0, changed0, stamped0) = &rows[0];
    let (_, _, same1, changed1, stamped1) = &rows[1];
    assert_eq!(
        (
            total(&same0.requests),
            total(&changed0.requests),
            total(&stamped0.requests)
        ),
        (
            total(&same1.requests),
            total(&changed1.requests),
            total(&stamped1.requests)
        ),
        "an incremental's requests changed with the container's size"
    );

    // Computed: 100 TiB of unique data in 32 KiB chunks and 32 MiB packs, 64 packs per index
    // segment, 52 bytes of segment per chunk, 1,000 keys per S3 LIST page.
    let tib = 100u64;
    let cfg = ContainerConfig::default();
    let bytes = tib << 40;
    let chunks = bytes / u64::from(cfg.chunker.avg);
    let packs = bytes / cfg.pack_target;
    let segments = packs.div_ceil(64);
    let index_gib = (chunks * 52 + packs * 32) as f64 / (1u64 << 30) as f64;
    let pages = |n: u64| n.div_ceil(1000);
    let volume_gib = 77.0; // 1,000 volumes, each 1.3x its size in unique data after 30 days at 1 %
    let volume_chunks = (volume_gib * (1u64 << 30) as f64 / f64::from(cfg.chunker.avg)) as u64;
    let mib = |b: f64| b / 1048576.0;

    println!(
        "\n# Model: a container of {tib} TiB of unique data, 1,000 volumes of ~{volume_gib} GiB, 30 daily incrementals each\n"
    );
    println!(
        "{chunks} chunks, {packs} packs, {segments} index segments ({index_gib:.0} GiB of index)\n"
    );
    println!(
        "Measured on a 256 MiB volume, alone / beside 200,000 other packs and 3,125 segments:\n"
    );
    println!("| incremental | requests | LIST | GET | PUT | bytes stored |");
    println!("|---|---|---|---|---|---|");
    for (name, a, b) in [
        ("unchanged file (same stamp: not read)", stamped0, stamped1),
        ("unchanged (volume read)", same0, same1),
        ("1 % changed", changed0, changed1),
    ] {
        println!(
            "| {name} | {} / {} | {} / {} | {} / {} | {} / {} | {} / {} |",
            total(&a.requests),
            total(&b.requests),
            a.requests.list,
            b.requests.list,
            a.requests.get,
            b.requests.get,
            a.requests.put,
            b.requests.put,
            a.bytes_new,
            b.bytes_new,
        );
    }
    println!();
    println!(
        "| operation at {tib} TiB | requests | peak memory besides the pipeline | meets the bound? |"
    );
    println!("|---|---|---|---|");
    println!(
        "| incremental, unchanged file or empty change map | {} as measured, plus 1 GET of the container's config when the process opens it | none | yes |",
        total(&stamped1.requests)
    );
    println!(
        "| incremental, volume read | {} as measured, plus ~{} more ranged GETs of the parent's extent list (~{:.0} MiB) and a PUT per 32 MiB of new data | dedup set of the parent's {} chunks: {:.1} MiB in memory, {:.0} MiB in $TMPDIR | yes |",
        total(&same1.requests),
        (volume_chunks * 36).div_ceil(4 << 20),
        mib(volume_chunks as f64 * 36.0),
        volume_chunks,
        mib(volume_chunks as f64 / 16.0),
        mib(volume_chunks as f64 * 16.0),
    );
    println!(
        "| backup of a new volume | {} LIST + {} segment GETs | the pack listing while the index is read (41 B per pack) and the dedup set of the container's chunks ({:.0} MiB in memory): ~{:.0} MiB; {:.0} GiB in $TMPDIR | memory yes, requests no |",
        pages(packs) + pages(segments) + 1,
        segments,
        mib(chunks as f64 / 16.0),
        mib(chunks as f64 / 16.0 + packs as f64 * 41.0),
        (chunks * 16) as f64 / (1u64 << 30) as f64,
    );
    // Restore: the pack listing (40 bytes a pack and a byte for the scan's flag), the Bloom
    // filter of the backup's chunks (16 bits a chunk, a power of two, at most 32 MiB), the sort
    // buffer (1.5x, as gc's) and merge buffers of its runs, and the fences of its table
    // (constants of restore/locations.rs and extsort.rs).
    let filter_bits = (volume_chunks * 16).next_power_of_two().min(32 << 23);
    let fp_rate = {
        let per = filter_bits as f64 / volume_chunks as f64;
        let k = (per * std::f64::consts::LN_2).round().clamp(1.0, 12.0);
        (1.0 - (-k / per).exp()).powf(k)
    };
    let set_aside = volume_chunks as f64 + fp_rate * chunks as f64;
    let runs = (set_aside / (1u64 << 16) as f64).ceil().min(256.0);
    let restore_mem = packs as f64 * 41.0
        + filter_bits as f64 / 8.0
        + (1u64 << 16) as f64 * 52.0 * 1.5
        + runs * 1024.0 * 52.0
        + volume_chunks as f64 / 2.0;
    println!(
        "| restore | {} LIST + {} segment GETs (~{index_gib:.0} GiB read) and the extent list read three times (~{} ranged GETs each) before the first byte, then ranged GETs of its packs | the pack listing (41 B per pack), a Bloom filter of its {volume_chunks} chunks ({:.0} MiB), sort and merge buffers: ~{:.0} MiB; {:.1} GiB in $TMPDIR (its chunks' locations, and the ~{:.0} thousand others the filter passes) | yes |",
        pages(packs) + pages(segments) + 1,
        segments,
        (volume_chunks * 36).div_ceil(4 << 20),
        mib(filter_bits as f64 / 8.0),
        mib(restore_mem),
        (set_aside * 52.0 * 2.0 + volume_chunks as f64 * 32.0) / (1u64 << 30) as f64,
        fp_rate * chunks as f64 / 1e3,
    );
    // gc and verify: per pack, what stays in memory; per chunk, what goes to $TMPDIR; the
    // sort and merge buffers are fixed (constants of gc/mod.rs, restore/locations.rs and
    // extsort.rs).
    let gc_per_pack = 41.0 + 4.0 + 40.0 + 4.0 + 1.0; // pack list, segment packs, re-listing, flags, merged
    let gc_buffers = (1u64 << 20) as f64 * 52.0 * 1.5 + 256.0 * 1024.0 * 52.0;
    let verify_buffers = 3.0 * (1u64 << 16) as f64 * 56.0 * 1.5 + 256.0 * 1024.0 * 52.0;
    let gib = |b: f64| b / (1u64 << 30) as f64;
    println!(
        "| gc | {} LIST + {} segment GETs + every manifest and extent list, and the pack listing again | {gc_per_pack:.0} B per pack, {:.0} MiB of sort and merge buffers: ~{:.0} MiB; {:.0} GiB in $TMPDIR (the chunk table, twice while merging, and the live set) | memory yes |",
        pages(packs) * 2 + pages(segments) + 3,
        segments,
        mib(gc_buffers),
        mib(packs as f64 * gc_per_pack + gc_buffers),
        gib(chunks as f64 * (50.0 * 2.0 + 32.0)),
    );
    println!(
        "| verify | {} LIST + {} segment GETs + the extent lists | two pack listings, before and after the index is read (80 B per pack), {:.0} MiB of sort and merge buffers: ~{:.0} MiB; {:.0} GiB in $TMPDIR (the chunk table, twice while merging, and the chunks backups need) | memory yes |",
        pages(packs) * 2 + pages(segments) + 1,
        segments,
        mib(verify_buffers),
        mib(packs as f64 * 80.0 + verify_buffers),
        gib(chunks as f64 * (51.0 * 2.0 + 32.0)),
    );
    println!(
        "\nThe parent's full backup: {} requests, {} bytes stored.",
        total(&rows[0].1.requests),
        rows[0].1.bytes_new
    );
}
