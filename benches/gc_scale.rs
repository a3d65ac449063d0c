//! gc and verify at scale: `cargo bench -p volback-benches --bench gc_scale [-- MILLIONS]`
//! (default 10) builds a filesystem container in `$TMPDIR` holding MILLIONS million chunks of
//! 100 volumes (one backup each, with real extent lists in real packs, and the data chunks in
//! packs of 1,024 that the index segments describe and sparse files of the right size stand in
//! for), deletes 10 of the backups, and runs in this process one collection (it marks every
//! chunk, condemns the deleted volumes' packs and sweeps them, merging the index segments) and
//! then a structure verify (every backup walked, every chunk located in a pack long enough;
//! the stand-ins' own tables do not read, which it reports). Before those, what a restore does
//! before its first byte, for one backup of 1 % of the chunks: its locations read from the index
//! (`LocationTable::for_backup`) and the completeness check. Reports each one's time, peak RSS
//! (reset before each) and requests. Needs ~60 bytes of disk per chunk for the container and
//! as much again of `$TMPDIR` while they run.

use std::time::{Duration, Instant};

use bytes::Bytes;
use volback::backup::source::VolumeSource;
use volback::backup::{BackupOptions, run_backup};
use volback::container::{Container, pack_key};
use volback::format::chunk::{ChunkKind, Compression, encode_chunk};
use volback::format::extent_list::ExtentListWriter;
use volback::format::manifest::{MetaAt, MetaRef};
use volback::format::pack::{PackBuilder, PackEntry};
use volback::gc::{GcOptions, run_gc};
use volback::ids::Hash;
use volback::restore::check_complete;
use volback::restore::locations::{DEFAULT_MEM_ENTRIES, LocationTable};
use volback::verify::{VerifyOptions, run_verify};
use volback_benches::{id, status_kib};

const VOLUMES: u64 = 100;
const DELETED: u64 = 10;
const CHUNKS_PER_PACK: u64 = 1024;
const CHUNK: u32 = 32 << 10;

fn or_die<T, E: std::fmt::Display>(r: Result<T, E>, what: &str) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {e}"))
}

fn main() {
    let millions: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(10);
    let n = millions * 1_000_000;
    let dir = or_die(tempfile::tempdir(), "scratch directory");
    let url = dir.path().join("container").display().to_string();
    let c = or_die(Container::open(&url, true, None), "container");
    let t = Instant::now();

    // A real backup gives the manifest every volume's is made from.
    let opts = BackupOptions {
        backup_id: Some("template".into()),
        volume_id: "template".into(),
        ..Default::default()
    };
    let source = VolumeSource::Reader {
        name: "template".into(),
        reader: Box::new(std::io::Cursor::new(vec![7u8; 1 << 20])),
    };
    let (template, _, _) = or_die(run_backup(&c, source, &opts, None), "template backup");

    let per_volume = n / VOLUMES;
    let keys = or_die(c.keys(), "keys").clone();
    let mut segment: Vec<(Hash, Vec<PackEntry>)> = Vec::new();
    let flush = |segment: &mut Vec<(Hash, Vec<PackEntry>)>, force: bool| {
        if segment.len() >= 64 || (force && !segment.is_empty()) {
            or_die(c.write_index_segment(segment), "segment");
            segment.clear();
        }
    };
    for v in 0..VOLUMES {
        let mut extents = ExtentListWriter::new();
        let mut meta = PackBuilder::new().sealed(keys.sealer());
        let mut refs = Vec::new();
        let mut metas = |chunks: Vec<Bytes>, meta: &mut PackBuilder| {
            for raw in chunks {
                let mid = Hash(*blake3::hash(&raw).as_bytes());
                refs.push(MetaRef {
                    id: mid.to_hex(),
                    len: raw.len() as u32,
                    at: None,
                });
                meta.add(&encode_chunk(mid, ChunkKind::Meta, &raw, 3, keys.chunks()));
            }
        };
        for p in 0..per_volume.div_ceil(CHUNKS_PER_PACK) {
            let first = v * per_volume + p * CHUNKS_PER_PACK;
            let last = (first + CHUNKS_PER_PACK).min((v + 1) * per_volume);
            let entries: Vec<PackEntry> = (first..last)
                .map(|i| {
                    extents.push_data(CHUNK, &id(i));
                    PackEntry {
                        id: id(i),
                        kind: ChunkKind::Data,
                        compression: Compression::Zstd,
                        raw_len: CHUNK,
                        stored_len: CHUNK / 2,
                        offset: ((i - first) as u32) * (CHUNK / 2),
                    }
                })
                .collect();
            let pack = id(u64::MAX - first);
            // A sparse file of the pack's size: listed like the real one, never read.
            let path = dir.path().join("container").join(pack_key(&pack));
            or_die(
                std::fs::create_dir_all(path.parent().unwrap()),
                "pack directory",
            );
            let f = or_die(std::fs::File::create(&path), "pack");
            or_die(
                f.set_len(u64::from(CHUNK / 2) * (last - first)),
                "pack size",
            );
            segment.push((pack, entries));
            flush(&mut segment, false);
            metas(extents.take_chunks(), &mut meta);
        }
        metas(extents.finish(), &mut meta);
        let (bytes, pack, entries) = meta.finish();
        // Where each extent-list chunk is, as a backup's manifest records it.
        for (r, e) in refs.iter_mut().zip(&entries) {
            r.at = Some(MetaAt {
                pack: pack.to_hex(),
                offset: e.offset,
                stored_len: e.stored_len,
                zstd: e.compression == Compression::Zstd,
            });
        }
        or_die(c.store().put(&pack_key(&pack), bytes), "extent-list pack");
        segment.push((pack, entries));
        flush(&mut segment, true);
        let mut m = template.clone();
        m.backup_id = format!("vol-{v}");
        m.volume_id = format!("vol-{v}");
        m.size = per_volume * u64::from(CHUNK);
        m.extents_len = refs.iter().map(|r| u64::from(r.len)).sum();
        m.extent_count = per_volume;
        m.extents = refs;
        m.source = None;
        m.read = None;
        or_die(c.commit_manifest(&m), "manifest");
    }
    for v in 0..DELETED {
        or_die(c.delete_backup(&format!("vol-{v}")), "delete");
    }
    println!(
        "# gc of a container of {n} chunks ({} packs of {CHUNKS_PER_PACK}), {VOLUMES} backups, {DELETED} deleted\n",
        n.div_ceil(CHUNKS_PER_PACK)
    );
    println!("built in {:.0} s", t.elapsed().as_secs_f64());

    // A restore up to its first byte: the backup's locations and the check.
    or_die(
        std::fs::write("/proc/self/clear_refs", "5"),
        "reset peak RSS",
    );
    let before_restore = c.store().requests();
    let t = Instant::now();
    let (m, _) = or_die(c.read_manifest(&format!("vol-{}", VOLUMES - 1)), "manifest");
    let table = or_die(
        LocationTable::for_backup(&c, &m, DEFAULT_MEM_ENTRIES),
        "restore locations",
    );
    or_die(check_complete(&c, &table, &m), "restore check");
    let restore_secs = t.elapsed().as_secs_f64();
    let restore_peak = status_kib("VmHWM:");
    let restore_requests = c.store().requests().since(&before_restore);
    assert_eq!(table.data_len() as u64, per_volume);
    drop(table);

    // Peak RSS from here on: the collection alone.
    or_die(
        std::fs::write("/proc/self/clear_refs", "5"),
        "reset peak RSS",
    );
    let before = status_kib("VmHWM:");
    let t = Instant::now();
    let r = or_die(
        run_gc(
            &c,
            &GcOptions {
                clock_skew: Duration::ZERO,
                ..GcOptions::default()
            },
        ),
        "gc",
    );
    let secs = t.elapsed().as_secs_f64();
    let peak = status_kib("VmHWM:");
    assert!(r.live_chunks as u64 >= n - DELETED * per_volume);
    assert_eq!(r.live_chunks_missing, 0);
    assert!(r.packs_deleted as u64 >= DELETED * per_volume / CHUNKS_PER_PACK);
    let gc_requests = r.requests;

    or_die(
        std::fs::write("/proc/self/clear_refs", "5"),
        "reset peak RSS",
    );
    let t = Instant::now();
    let v = or_die(run_verify(&c, &VerifyOptions::default()), "verify");
    let verify_secs = t.elapsed().as_secs_f64();
    let verify_peak = status_kib("VmHWM:");
    assert_eq!(v.backups_checked as u64, VOLUMES - DELETED + 1);
    assert!(v.damaged_backups.is_empty(), "{:?}", v.backups);
    assert!(v.chunks_checked > (VOLUMES - DELETED) * per_volume);

    println!("| quantity | restore, to its first byte | gc | verify |\n|---|---|---|---|");
    println!(
        "| chunks | {per_volume} located | {} marked live | {} checked |",
        r.live_chunks, v.chunks_checked
    );
    println!(
        "| time | {restore_secs:.1} s | {secs:.1} s ({:.2} µs per chunk) | {verify_secs:.1} s ({:.2} µs per chunk) |",
        secs * 1e6 / n as f64,
        verify_secs * 1e6 / v.chunks_checked as f64
    );
    println!(
        "| peak RSS | {} MiB | {} MiB | {} MiB |",
        restore_peak >> 10,
        peak >> 10,
        verify_peak >> 10
    );
    let req = |q: &volback::store::RequestCounts| {
        format!(
            "{} GET, {} LIST, {} PUT, {} DELETE",
            q.get, q.list, q.put, q.delete
        )
    };
    println!(
        "| requests | {} | {} | {} |",
        req(&restore_requests),
        req(&gc_requests),
        req(&v.requests)
    );
    println!(
        "\ngc condemned and deleted {} packs ({} MiB), merged away {} index segments and wrote {}; \
         the process held {} MiB before it.",
        r.packs_deleted,
        r.bytes_deleted >> 20,
        r.segments_deleted,
        r.segments_written,
        before >> 10
    );
}
