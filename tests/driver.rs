//! End-to-end driver scenarios, each run on a filesystem container and on a real S3-compatible
//! server (s3s-fs on 127.0.0.1).

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};

use common::*;
use volback::Error;
use volback::backup::source::VolumeSource;
use volback::backup::{BackupOptions, BackupReport, run_backup};
use volback::container::Container;
use volback::driver::{Driver, VolumeMetadata};
use volback::format::record::BackupRecord;
use volback::restore::{
    RestoreOptions, TargetMode, WriteSink, run_restore, run_restore_to_stream, run_restore_with,
};

use common::backend::Env;

on_all_backends!(
    corrupt_and_missing_objects_are_refused_by_name,
    chain_of_incrementals_restores_every_link_byte_identically,
    dedup_against_a_set_spilled_to_a_file,
    zero_regions_and_holes_are_not_stored_and_restore_sparse,
    restore_onto_existing_target_writes_zeros_and_ends_at_volume_size,
    deletes_never_break_other_backups,
    backup_ids_are_unique_and_validated,
    streams_and_empty_volumes,
    repeated_chunks_restore_byte_identically,
    cancelled_backups_commit_nothing_and_cancelled_restores_leave_no_new_target,
);

// These damage, measure or copy objects as files.
mod files {
    use super::*;
    on_both_backends!(
        dedup_across_volumes_and_full_backups,
        index_is_rebuilt_from_self_describing_packs,
        driver_verbs_with_metadata_export_and_import_into_a_copy,
    );
}

fn index_is_rebuilt_from_self_describing_packs(e: &Env) {
    let vol = e.root.join("v.img");
    make_image(&vol, 6 << 20, 41);
    backup(&e.c, &vol, "b", None);
    scattered_writes(&vol, 20, 42);
    backup(&e.c, &vol, "b2", Some("b"));
    for seg in std::fs::read_dir(e.objects.join("index")).unwrap() {
        std::fs::remove_file(seg.unwrap().path()).unwrap();
    }
    // Packs are self-describing: without any segment, a restore reads their tables.
    let out = e.root.join("out.img");
    restore_new(&e.c, "b2", &out).unwrap();
    assert_same(&vol, &out);
    std::fs::remove_file(&out).unwrap();
    let (packs, chunks) = e.c.rebuild_index().unwrap();
    assert!(packs >= 2 && chunks > 100, "{packs} packs, {chunks} chunks");
    restore_new(&e.c, "b2", &out).unwrap();
    assert_same(&vol, &out);
}

fn backup(c: &Container, vol: &Path, id: &str, parent: Option<&str>) -> BackupReport {
    backup_file(c, vol, id, parent)
}

fn restore_new(c: &Container, id: &str, out: &Path) -> volback::Result<()> {
    run_restore(c, id, out, TargetMode::New, None).map(|_| ())
}

fn chain_of_incrementals_restores_every_link_byte_identically(e: &Env) {
    let vol = e.root.join("vol.img");
    make_image(&vol, 24 << 20, 1);
    let mut versions = Vec::new();
    let full = backup(&e.c, &vol, "b0", None);
    assert_eq!(full.size, 24 << 20);
    assert_eq!(full.chunks_guided, 0, "a full backup has no guide");
    versions.push(std::fs::read(&vol).unwrap());
    let mut parent = "b0".to_string();
    for day in 1..=5u64 {
        match day {
            1 => write_at(&vol, 3 << 20, 200_000, 100), // clustered
            2 => scattered_writes(&vol, 40, 200),       // scattered
            3 => {
                // grown volume, with new data at the end
                let f = std::fs::OpenOptions::new().write(true).open(&vol).unwrap();
                f.set_len(30 << 20).unwrap();
                write_at(&vol, 28 << 20, 1 << 20, 300);
            }
            4 => {
                // shrunk volume
                let f = std::fs::OpenOptions::new().write(true).open(&vol).unwrap();
                f.set_len(20 << 20).unwrap();
            }
            _ => {} // unchanged
        }
        let id = format!("b{day}");
        let r = backup(&e.c, &vol, &id, Some(&parent));
        assert_eq!(r.parent_id.as_deref(), Some(parent.as_str()));
        assert_eq!(r.size, std::fs::metadata(&vol).unwrap().len());
        // Unchanged chunks are recognised from the parent rather than scanned for.
        assert!(
            r.chunks_guided * 10 >= r.chunks_total * 8,
            "day {day}: {} of {} chunks guided",
            r.chunks_guided,
            r.chunks_total
        );
        // An incremental stores a small fraction of the volume.
        assert!(
            r.bytes_new < r.size / 10,
            "day {day}: {} new of {}",
            r.bytes_new,
            r.size
        );
        if day == 5 {
            assert_eq!(r.chunks_new, 0, "unchanged volume stores no chunk");
            assert!(
                r.bytes_new < r.size / 1000,
                "unchanged: {} bytes new",
                r.bytes_new
            );
        }
        versions.push(std::fs::read(&vol).unwrap());
        parent = id;
    }
    for (i, want) in versions.iter().enumerate() {
        let out = e.root.join(format!("restore{i}.img"));
        restore_new(&e.c, &format!("b{i}"), &out).unwrap();
        assert!(
            std::fs::read(&out).unwrap() == *want,
            "backup b{i} restores differently"
        );
        // The same with the chunk locations in a temporary file (sorted runs of 64, merged),
        // as a restore of a large container keeps them, written through the page cache, in
        // stripes of 1 MiB.
        let out = e.root.join(format!("restore{i}-spilled.img"));
        let opts = RestoreOptions {
            locations_in_memory: 64,
            direct_io: false,
            stripe: Some(1 << 20),
            ..RestoreOptions::new(TargetMode::New)
        };
        run_restore_with(&e.c, &format!("b{i}"), &out, &opts, None).unwrap();
        assert!(
            std::fs::read(&out).unwrap() == *want,
            "backup b{i} restores differently through a spilled location table"
        );
        // Front to back into a sink that cannot seek, zeros written, in the same stripes.
        let mut sink = WriteSink(Vec::new());
        let opts = RestoreOptions {
            stripe: Some(1 << 20),
            ..RestoreOptions::new(TargetMode::Existing)
        };
        run_restore_to_stream(&e.c, &format!("b{i}"), &mut sink, &opts, None).unwrap();
        assert!(sink.0 == *want, "backup b{i} streams differently");
    }
}

fn dedup_across_volumes_and_full_backups(e: &Env) {
    let a = e.root.join("a.img");
    make_image(&a, 16 << 20, 7);
    let first = backup(&e.c, &a, "a1", None);
    let stored = dir_size(&e.objects);
    // The same data as another volume, as a full backup: nothing new but metadata.
    let b = e.root.join("b.img");
    std::fs::copy(&a, &b).unwrap();
    let second = backup(&e.c, &b, "b1", None);
    assert_eq!(second.chunks_new, 0);
    assert!(second.bytes_new < 64 << 10, "{}", second.bytes_new);
    assert_eq!(first.chunks_total, second.chunks_total);
    // Compression and zero elision: the container is smaller than the volume's data.
    assert!(stored < (16 << 20) * 7 / 10, "stored {stored}");
    assert!(first.zero_bytes >= 2 << 20);
    // Finished backups leave no lease behind (a stale lease would hold garbage collection back).
    let leases = std::fs::read_dir(e.objects.join("leases"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(leases, 0);
}

/// A container whose chunks do not fit the dedup set's memory (here 256 keys; by default
/// 65,536) is deduplicated against a temporary file, with the same outcome as in memory.
fn dedup_against_a_set_spilled_to_a_file(e: &Env) {
    let spilled = |id: &str, vol: &Path, parent: Option<&str>| -> BackupReport {
        let opts = BackupOptions {
            dedup_mem_keys: Some(256),
            ..backup_opts(id, parent)
        };
        run_backup(&e.c, VolumeSource::Path(vol.into()), &opts, None)
            .unwrap_or_else(|err| panic!("backup {id}: {err}"))
            .2
    };
    let a = e.root.join("a.img");
    make_image(&a, 24 << 20, 11);
    let first = backup(&e.c, &a, "a1", None);
    assert!(first.chunks_new > 256, "{}", first.chunks_new);
    // The same data as another volume: every chunk is found in the file.
    let b = e.root.join("b.img");
    std::fs::copy(&a, &b).unwrap();
    let again = spilled("b1", &b, None);
    assert_eq!(again.chunks_new, 0);
    assert_eq!(again.chunks_total, first.chunks_total);
    // A changed block is the only new data of an incremental; restores are byte-identical.
    let mut data = std::fs::read(&a).unwrap();
    for byte in &mut data[5 << 20..(5 << 20) + 4096] {
        *byte = !*byte;
    }
    std::fs::write(&a, &data).unwrap();
    let incr = spilled("a2", &a, Some("a1"));
    assert!(
        (1..=4).contains(&incr.chunks_new),
        "{} new chunks",
        incr.chunks_new
    );
    // A chunk new to the container but repeated within the backup is stored once.
    let c = e.root.join("c.img");
    let block: Vec<u8> = (0..1 << 20)
        .map(|i: u32| (i.wrapping_mul(2654435761) >> 7) as u8)
        .collect();
    std::fs::write(&c, block.repeat(4)).unwrap();
    let repeated = spilled("c1", &c, None);
    assert!(repeated.chunks_new < repeated.chunks_total, "{repeated:?}");
    for (id, vol) in [("a2", &a), ("b1", &b), ("c1", &c)] {
        let out = e.root.join(format!("{id}.out"));
        restore_new(&e.c, id, &out).unwrap();
        assert_eq!(
            std::fs::read(&out).unwrap(),
            std::fs::read(vol).unwrap(),
            "{id}"
        );
    }
}

/// A volume whose blocks repeat, out of order and far apart (copies of files): every
/// occurrence of a chunk is restored, adjacent to different neighbours each time.
fn repeated_chunks_restore_byte_identically(e: &Env) {
    let vol = e.root.join("rep.img");
    let blocks: Vec<Vec<u8>> = (0..4u64)
        .map(|i| match i % 2 {
            0 => pseudo_random(256 << 10, 40 + i),
            _ => text_like(256 << 10, 40 + i),
        })
        .collect();
    let order = pseudo_random(96, 9);
    let data: Vec<u8> = order
        .iter()
        .flat_map(|b| blocks[usize::from(*b) % blocks.len()].iter().copied())
        .collect();
    std::fs::write(&vol, &data).unwrap();
    let r = backup(&e.c, &vol, "rep", None);
    assert!(
        r.chunks_new * 3 < r.chunks_total,
        "{} new of {}",
        r.chunks_new,
        r.chunks_total
    );
    let out = e.root.join("rep-out.img");
    restore_new(&e.c, "rep", &out).unwrap();
    assert_same(&vol, &out);
    // The same across many windows: a repeated chunk is decoded again in each window it is in.
    let out = e.root.join("rep-out-striped.img");
    restore_in_small_stripes(&e.c, "rep", &out, TargetMode::New, true).unwrap();
    assert_same(&vol, &out);
}

/// Restores in stripes of 1 MiB, so that even a small volume crosses many windows: stripes are
/// filled, written and reused many times.
fn restore_in_small_stripes(
    c: &Container,
    id: &str,
    out: &Path,
    mode: TargetMode,
    direct_io: bool,
) -> volback::Result<()> {
    let opts = RestoreOptions {
        stripe: Some(1 << 20),
        direct_io,
        ..RestoreOptions::new(mode)
    };
    let r = run_restore_with(c, id, out, &opts, None)?;
    // Direct I/O, when asked for, really wrote the whole blocks (a target that refused it
    // would fall back to the page cache without a word): the test directory must take it.
    if direct_io {
        assert!(
            r.direct_bytes * 2 > r.bytes_written,
            "{} of {} bytes went around the page cache: does {} take O_DIRECT?",
            r.direct_bytes,
            r.bytes_written,
            out.display()
        );
    } else {
        assert_eq!(r.direct_bytes, 0, "a buffered restore used direct I/O");
    }
    Ok(())
}

fn zero_regions_and_holes_are_not_stored_and_restore_sparse(e: &Env) {
    let vol = e.root.join("thin.img");
    {
        let f = std::fs::File::create(&vol).unwrap();
        f.set_len(256 << 20).unwrap();
    }
    write_at(&vol, 100 << 20, 1 << 20, 5);
    write_at(&vol, 200 << 20, 4096, 6);
    let r = backup(&e.c, &vol, "thin", None);
    assert!(r.bytes_read <= 2 << 20, "holes were read: {}", r.bytes_read);
    assert!(r.zero_bytes >= 254 << 20);
    assert!(r.bytes_new < 2 << 20);
    let out = e.root.join("out.img");
    restore_new(&e.c, "thin", &out).unwrap();
    assert_same(&vol, &out);
    assert!(
        allocated(&out) < 8 << 20,
        "restore is not sparse: {}",
        allocated(&out)
    );
}

fn restore_onto_existing_target_writes_zeros_and_ends_at_volume_size(e: &Env) {
    let vol = e.root.join("v.img");
    make_image(&vol, 8 << 20, 3);
    backup(&e.c, &vol, "b", None);
    let out = e.root.join("existing.img");
    std::fs::write(&out, pseudo_random(12 << 20, 99)).unwrap();
    run_restore(&e.c, "b", &out, TargetMode::Existing, None).unwrap();
    assert_same(&vol, &out);
    // The same over other bytes again, across many windows, direct and through the page cache.
    for direct_io in [true, false] {
        std::fs::write(&out, pseudo_random(12 << 20, 98)).unwrap();
        restore_in_small_stripes(&e.c, "b", &out, TargetMode::Existing, direct_io).unwrap();
        assert_same(&vol, &out);
    }
    // A file that reads as zeros (just truncated, as a service opening a volume with 'wb'
    // leaves it) is restored in place with its zero extents skipped: sparse, and exact.
    std::fs::File::create(&out).unwrap();
    run_restore(&e.c, "b", &out, TargetMode::Zeroed, None).unwrap();
    assert_same(&vol, &out);
    assert!(allocated(&out) < std::fs::metadata(&vol).unwrap().len());
    // A new-target restore refuses to clobber an existing file.
    let err = restore_new(&e.c, "b", &out).unwrap_err();
    assert_eq!(err.kind(), "target_exists");
}

fn deletes_never_break_other_backups(e: &Env) {
    let vol = e.root.join("v.img");
    make_image(&vol, 8 << 20, 11);
    let mut want = Vec::new();
    for i in 0..4 {
        if i > 0 {
            scattered_writes(&vol, 10, 1000 + i);
        }
        backup(
            &e.c,
            &vol,
            &format!("d{i}"),
            if i > 0 { Some("d0") } else { None },
        );
        want.push(std::fs::read(&vol).unwrap());
    }
    // Delete the parent and a middle link.
    e.c.delete_backup("d0").unwrap();
    e.c.delete_backup("d2").unwrap();
    for i in [1, 3] {
        let out = e.root.join(format!("r{i}"));
        restore_new(&e.c, &format!("d{i}"), &out).unwrap();
        assert!(std::fs::read(&out).unwrap() == want[i]);
    }
    assert_eq!(
        restore_new(&e.c, "d2", &e.root.join("x"))
            .unwrap_err()
            .kind(),
        "backup_deleted"
    );
    assert_eq!(
        e.c.delete_backup("d2").unwrap_err().kind(),
        "backup_deleted"
    );
    assert_eq!(
        e.c.delete_backup("nope").unwrap_err().kind(),
        "backup_not_found"
    );
    let listed: Vec<String> =
        e.c.list_backups()
            .unwrap()
            .into_iter()
            .map(|m| m.unwrap().backup_id)
            .collect();
    assert_eq!(listed, ["d1", "d3"]);
    // A deleted parent cannot be the parent of a new incremental.
    let opts = BackupOptions {
        volume_id: "vol".into(),
        parent_id: Some("d0".into()),
        ..Default::default()
    };
    let err = run_backup(&e.c, VolumeSource::Path(vol.clone()), &opts, None).unwrap_err();
    assert!(matches!(err, Error::ParentNotFound { .. }), "{err}");
}

fn backup_ids_are_unique_and_validated(e: &Env) {
    let vol = e.root.join("v.img");
    make_image(&vol, 1 << 20, 2);
    backup(&e.c, &vol, "same", None);
    let opts = |id: &str| BackupOptions {
        backup_id: Some(id.into()),
        volume_id: "vol".into(),
        ..Default::default()
    };
    let err = run_backup(&e.c, VolumeSource::Path(vol.clone()), &opts("same"), None).unwrap_err();
    assert_eq!(err.kind(), "backup_exists");
    for bad in ["../escape", "a/b", ".x", ""] {
        let err = run_backup(&e.c, VolumeSource::Path(vol.clone()), &opts(bad), None).unwrap_err();
        assert_eq!(err.kind(), "invalid_id", "{bad}");
    }
    let err = run_backup(
        &e.c,
        VolumeSource::Path(e.root.join("missing.img")),
        &opts("m"),
        None,
    )
    .unwrap_err();
    assert_eq!(err.kind(), "io");
    assert!(err.to_string().contains("missing.img"));
}

fn streams_and_empty_volumes(e: &Env) {
    let data = text_like(5_000_001, 4);
    let src = VolumeSource::Reader {
        name: "pipe".into(),
        reader: Box::new(std::io::Cursor::new(data.clone())),
    };
    let opts = BackupOptions {
        backup_id: Some("s".into()),
        volume_id: "vol".into(),
        ..Default::default()
    };
    let r = run_backup(&e.c, src, &opts, None).unwrap().2;
    assert_eq!(r.size, data.len() as u64);
    let out = e.root.join("s.img");
    restore_new(&e.c, "s", &out).unwrap();
    assert!(std::fs::read(&out).unwrap() == data);

    let empty = e.root.join("empty.img");
    std::fs::write(&empty, b"").unwrap();
    backup(&e.c, &empty, "e", None);
    let out = e.root.join("e.img");
    restore_new(&e.c, "e", &out).unwrap();
    assert_eq!(std::fs::metadata(&out).unwrap().len(), 0);

    // A volume shorter than the caller expects is refused, and nothing is committed.
    let src = VolumeSource::Reader {
        name: "short".into(),
        reader: Box::new(std::io::Cursor::new(vec![1u8; 1000])),
    };
    let opts = BackupOptions {
        backup_id: Some("short".into()),
        volume_id: "vol".into(),
        expected_size: Some(4096),
        ..Default::default()
    };
    let err = run_backup(&e.c, src, &opts, None).unwrap_err();
    assert_eq!(err.kind(), "volume_too_short");
    assert_eq!(
        restore_new(&e.c, "short", &e.root.join("z"))
            .unwrap_err()
            .kind(),
        "backup_not_found"
    );
}

/// The largest pack's key (a data pack), found through the container's store.
fn largest_pack(c: &Container) -> String {
    let packs = c.store().list("packs/").unwrap();
    packs.into_iter().max_by_key(|o| o.size).unwrap().key
}

fn corrupt_and_missing_objects_are_refused_by_name(e: &Env) {
    let vol = e.root.join("v.img");
    make_image(&vol, 4 << 20, 21);
    backup(&e.c, &vol, "b", None);
    let store = e.c.store();
    let pack = largest_pack(&e.c);
    let pack_name = pack.rsplit('/').next().unwrap().to_string();
    let good = store.get(&pack).unwrap();

    // A flipped byte in chunk data: refused, naming the pack; no target file is left behind.
    let mut bad = good.to_vec();
    bad[1000] ^= 0x55;
    store.put(&pack, bad.into()).unwrap();
    let out = e.root.join("out.img");
    let err = restore_new(&e.c, "b", &out).unwrap_err();
    assert!(
        matches!(err, Error::ChunkHashMismatch { .. } | Error::Corrupt { .. }),
        "{err}"
    );
    assert!(err.to_string().contains(&pack_name), "{err}");
    assert!(!out.exists());
    let leftovers: Vec<_> = std::fs::read_dir(&e.root)
        .unwrap()
        .filter(|d| {
            d.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains("volback-partial")
        })
        .collect();
    assert!(leftovers.is_empty());

    // A missing pack: refused before anything is written.
    store.delete(&pack).unwrap();
    let err = restore_new(&e.c, "b", &out).unwrap_err();
    assert_eq!(err.kind(), "missing_object");
    assert!(err.to_string().contains(&pack_name));
    store.put(&pack, good).unwrap();
    restore_new(&e.c, "b", &out).unwrap();
    assert_same(&vol, &out);

    // A truncated manifest.
    let text = store.get("backups/b").unwrap();
    store
        .put("backups/b", text.slice(..text.len() / 2))
        .unwrap();
    let err = restore_new(&e.c, "b", &e.root.join("o2")).unwrap_err();
    assert_eq!(err.kind(), "corrupt");
    assert!(err.to_string().contains("backups/b"));

    // A corrupt index segment.
    store.put("backups/b", text).unwrap();
    let seg = store.list("index/").unwrap().remove(0).key;
    let mut s = store.get(&seg).unwrap().to_vec();
    let n = s.len();
    s[n / 2] ^= 1;
    store.put(&seg, s.into()).unwrap();
    // A segment is a cache of pack tables: the packs it described are read from their own
    // tables, and the restore is still byte-identical.
    let loaded = e.c.load_index_report().unwrap();
    assert_eq!(loaded.damaged_segments.len(), 1);
    assert!(loaded.damaged_segments[0].1.to_string().contains("index/"));
    assert!(loaded.adopted >= 1);
    let o3 = e.root.join("o3");
    restore_new(&e.c, "b", &o3).unwrap();
    assert_same(&vol, &o3);
}

#[derive(Default)]
struct MetaStore(Mutex<Vec<(String, serde_json::Value)>>);

impl VolumeMetadata for MetaStore {
    fn get_metadata(&self, volume_id: &str) -> volback::Result<Option<serde_json::Value>> {
        Ok(Some(
            serde_json::json!({"version": 2, "volume-metadata": {"owner": volume_id}}),
        ))
    }
    fn put_metadata(&self, volume_id: &str, doc: &serde_json::Value) -> volback::Result<()> {
        self.0.lock().unwrap().push((volume_id.into(), doc.clone()));
        Ok(())
    }
}

fn driver_verbs_with_metadata_export_and_import_into_a_copy(e: &Env) {
    let vol = e.root.join("v.img");
    make_image(&vol, 4 << 20, 31);
    let meta = Arc::new(MetaStore::default());
    let driver = Driver::with_container(e.c.clone()).with_metadata(meta.clone());
    let record = BackupRecord {
        id: "rec1".into(),
        volume_id: "volume-1".into(),
        data_timestamp: Some("2026-11-22T00:00:00Z".into()),
        ..Default::default()
    };
    let out = driver
        .backup(&record, VolumeSource::Path(vol.clone()), None)
        .unwrap();
    assert_eq!(out.updates.size, 4 << 20);
    assert_eq!(out.updates.service_metadata, "backups/rec1");
    assert!(out.updates.object_count >= 3);
    assert_eq!(
        driver.get_metadata(&record).unwrap().unwrap()["volume-metadata"]["owner"],
        "volume-1"
    );
    let text = driver.export_record(&record).unwrap();
    assert!(text.contains("\"version\": 1") && text.contains("manifest_blake3"));

    // Import into a copy of the container, as another host configured for it would.
    let (copy_url, copy) = e.copy_container();
    let other = Driver::new(volback::driver::DriverConfig {
        container: copy_url.clone(),
        s3: e.s3.clone(),
        ..Default::default()
    })
    .with_metadata(meta.clone());
    let imported = other.import_record(&text, Some(&copy_url)).unwrap();
    assert_eq!(imported.id, "rec1");
    assert_eq!(imported.size, 4 << 20);
    assert_eq!(
        imported.data_timestamp.as_deref(),
        Some("2026-11-22T00:00:00Z")
    );
    let target = e.root.join("restored.img");
    other.restore(&imported, &target, true).unwrap();
    assert_same(&vol, &target);
    assert_eq!(meta.0.lock().unwrap().len(), 1);

    // Each kind of bad record is its own error.
    let kind = |t: &str| other.import_record(t, Some(&copy_url)).unwrap_err().kind();
    assert_eq!(kind("not a record"), "record_malformed");
    assert_eq!(
        kind(&text.replace("\"version\": 1", "\"version\": 9")),
        "record_unknown_version"
    );
    let m = copy.join("backups/rec1");
    let manifest = std::fs::read(&m).unwrap();
    let mut tampered = manifest.clone();
    let at = tampered.len() - 3;
    tampered[at] = b' ';
    std::fs::write(&m, &tampered).unwrap();
    assert_eq!(kind(&text), "record_manifest_mismatch");
    std::fs::remove_file(&m).unwrap();
    assert_eq!(kind(&text), "record_missing_manifest");
    std::fs::write(&m, &manifest).unwrap();
    other.import_record(&text, Some(&copy_url)).unwrap();
}

/// An index entry whose length differs from the extent the manifest restores it to (a damaged
/// index) is refused before anything is written, naming the chunk and its volume offset: the
/// chunk would otherwise spill into its neighbour or leave part of its extent as it was.
#[test]
fn a_chunk_whose_length_differs_from_its_extent_is_refused() {
    use volback::format::chunk::ChunkKind;
    use volback::ids::Hash;
    use volback::index::{Index, Locate, Location};
    use volback::restore::check_complete;

    /// The container's index, but every data chunk one byte shorter (the extent list's own
    /// chunks are left alone, so the walk reaches the data extents).
    struct Shortened(Index);
    impl Locate for Shortened {
        fn locate_all(&self, ids: &[Hash]) -> volback::Result<Vec<Option<Location>>> {
            let locs = self.0.locate_all(ids)?;
            Ok(locs
                .into_iter()
                .map(|l| {
                    l.map(|l| match l.kind {
                        ChunkKind::Data => Location {
                            raw_len: l.raw_len - 1,
                            ..l
                        },
                        ChunkKind::Meta => l,
                    })
                })
                .collect())
        }
        fn pack_id(&self, pos: u32) -> Hash {
            self.0.pack_id(pos)
        }
    }

    let e = Env::fs();
    let vol = e.root.join("v.img");
    make_image(&vol, 3 << 20, 7);
    backup(&e.c, &vol, "b", None);
    let (manifest, _) = e.c.read_manifest("b").unwrap();
    let index = e.c.load_index().unwrap();
    check_complete(&e.c, &index, &manifest).unwrap();
    let err = check_complete(&e.c, &Shortened(index), &manifest).unwrap_err();
    assert_eq!(err.kind(), "chunk_length_mismatch", "{err}");
    let Error::ChunkLengthMismatch {
        backup_id,
        volume_offset,
        extent_len,
        chunk_len,
        ..
    } = err
    else {
        unreachable!()
    };
    assert_eq!((backup_id.as_str(), chunk_len + 1), ("b", extent_len));
    assert!(volume_offset < 3 << 20);
}

/// A backup cancelled part-way (from its progress callback, as a service does when the backup
/// is being deleted) fails with `cancelled` and commits nothing; the same backup id is then free.
/// A restore cancelled part-way fails the same way and leaves no new target behind.
fn cancelled_backups_commit_nothing_and_cancelled_restores_leave_no_new_target(e: &Env) {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let vol = e.root.join("big.img");
    make_image(&vol, 48 << 20, 61);
    let cancel = Arc::new(AtomicBool::new(false));
    let calls = AtomicU64::new(0);
    let progress = |done: u64| {
        calls.fetch_add(1, Ordering::Relaxed);
        if done >= 8 << 20 {
            cancel.store(true, Ordering::Relaxed);
        }
    };
    let opts = BackupOptions {
        cancel: Some(cancel.clone()),
        ..backup_opts("c1", None)
    };
    let source = VolumeSource::Path(vol.clone());
    let err = run_backup(&e.c, source, &opts, Some(&progress)).unwrap_err();
    assert_eq!(err.kind(), "cancelled", "{err}");
    assert!(calls.load(Ordering::Relaxed) >= 1);
    assert!(
        e.c.list_backups().unwrap().is_empty(),
        "a cancelled backup was committed"
    );
    assert_eq!(
        e.c.read_manifest("c1").unwrap_err().kind(),
        "backup_not_found"
    );
    assert!(
        e.c.list_leases().unwrap().is_empty(),
        "the cancelled backup left its lease"
    );
    // Not cancelled, the same id backs up and restores.
    backup(&e.c, &vol, "c1", None);

    let out = e.root.join("cancelled-restore.img");
    let cancel = Arc::new(AtomicBool::new(false));
    let progress = |done: u64| {
        if done > 0 {
            cancel.store(true, Ordering::Relaxed);
        }
    };
    let opts = RestoreOptions {
        stripe: Some(1 << 20),
        cancel: Some(cancel.clone()),
        ..RestoreOptions::new(TargetMode::New)
    };
    let err = run_restore_with(&e.c, "c1", &out, &opts, Some(&progress)).unwrap_err();
    assert_eq!(err.kind(), "cancelled", "{err}");
    assert!(!out.exists(), "a cancelled restore left its new target");
    let leftovers: Vec<_> = std::fs::read_dir(&e.root)
        .unwrap()
        .map(|d| d.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("cancelled-restore"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    restore_new(&e.c, "c1", &out).unwrap();
    assert_same(&vol, &out);
}

/// An incremental of a file whose stamp (device, inode, size, mtime, ctime) is its parent's
/// is not read: it reuses the parent's extents, restores byte-identically and says how it was
/// made. A write (even one that keeps the size and puts the mtime back), `full_read`, or a
/// pending condemnation record makes it read the volume again.
#[test]
fn an_unchanged_file_is_not_read_again() {
    let e = Env::fs();
    let vol = e.root.join("v.img");
    make_image(&vol, 8 << 20, 3);
    let report = |id: &str, parent: &str, full_read: bool| {
        let opts = BackupOptions {
            full_read,
            ..backup_opts(id, Some(parent))
        };
        run_backup(&e.c, VolumeSource::Path(vol.clone()), &opts, None)
            .unwrap_or_else(|err| panic!("{id}: {err}"))
    };
    backup_file(&e.c, &vol, "b0", None);
    let (m, _, r) = report("b1", "b0", false);
    assert_eq!(r.bytes_read, 0);
    assert_eq!(m.read.as_deref(), Some("source-unchanged"));
    assert_eq!(r.object_count, 1);
    assert!(r.bytes_new < 4096, "only the manifest: {}", r.bytes_new);
    let (parent, _) = e.c.read_manifest("b0").unwrap();
    assert_eq!(
        (m.extents.clone(), m.size),
        (parent.extents.clone(), parent.size)
    );
    assert_eq!(m.source, parent.source);
    let out = e.root.join("r1.img");
    restore_new(&e.c, "b1", &out).unwrap();
    assert_same(&vol, &out);

    // Forced: read in full, and the same chunks.
    let (m, _, r) = report("b2", "b1", true);
    assert!(r.bytes_read >= r.size - r.zero_bytes, "{}", r.bytes_read);
    assert_eq!(m.read, None);
    assert_eq!(r.chunks_new, 0);

    // A write that keeps the size and sets the mtime back still changes the ctime.
    let mtime = std::fs::metadata(&vol).unwrap().modified().unwrap();
    write_at(&vol, 1 << 20, 4096, 99);
    std::fs::File::options()
        .write(true)
        .open(&vol)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let (m, _, r) = report("b3", "b2", false);
    assert!(r.bytes_read > 0);
    assert_eq!(m.read, None);
    let out = e.root.join("r3.img");
    restore_new(&e.c, "b3", &out).unwrap();
    assert_same(&vol, &out);

    // While a condemnation record is pending, the volume is read.
    e.c.store()
        .put(
            "gc/condemned-1-test",
            bytes::Bytes::from_static(
                br#"{"format":"volback-condemned","version":1,"created_unix":1,"created_at":"1970-01-01T00:00:01Z","host":"h","packs":[]}"#,
            ),
        )
        .unwrap();
    let (m, _, r) = report("b4", "b3", false);
    assert!(r.bytes_read > 0 && m.read.is_none());
    e.c.store().delete("gc/condemned-1-test").unwrap();
    let (m, _, _) = report("b5", "b4", false);
    assert_eq!(m.read.as_deref(), Some("source-unchanged"));
}
