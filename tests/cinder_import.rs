//! Cinder's own chunked-driver backups read directly: a chain written in Cinder's posix layout
//! (full + two incrementals, zlib, bz2 and zstd objects, a zero region) restored byte for
//! byte, newest layer first; damaged, missing and orphaned links give typed errors. The same
//! chain adopted into a volback container: same ids, same bytes, what volback's own backups of
//! the volumes store, records Cinder's `backup-import` takes, re-runs that write nothing.

mod common;

use std::path::Path;

use base64::Engine as _;
use common::*;
use volback::cinder::{
    AdoptOptions, adopt_cinder_backups, find_chain as chain, list_cinder_backups,
    restore_cinder_backup,
};
use volback::container::Container;
use volback::store::{FsStore, ObjectStore};
use volback_testkit::cinder_layout::{compress, write_backup, write_chain};

const MIB: usize = 1 << 20;

#[test]
fn a_cinder_chain_restores_byte_for_byte_and_damage_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("backup_posix_path");
    let [v1, v2, v3] = write_chain(&root);
    let store = FsStore::open(&root, false).unwrap();
    let listed: Vec<_> = list_cinder_backups(&store, "")
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(listed.len(), 3);
    let ids: Vec<_> = chain(&listed, "cccc3333")
        .unwrap()
        .iter()
        .map(|b| b.manifest.backup_id.clone())
        .collect();
    assert_eq!(ids, ["aaaa1111", "bbbb2222", "cccc3333"]);

    for (id, want) in [("aaaa1111", &v1), ("bbbb2222", &v2), ("cccc3333", &v3)] {
        let out = dir.path().join(format!("{id}.img"));
        let r = restore_cinder_backup(&store, "", id, &out).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), *want, "{id}");
        assert_eq!(r.size, want.len() as u64);
        if id == "cccc3333" {
            // Objects the newer layers cover entirely are not read: the full's MiB 0 and 5,
            // the first incremental's MiB 5.
            assert_eq!((r.objects_read, r.objects_skipped), (8, 3), "{r:?}");
            // Zero MiB stay holes.
            assert!(allocated(&out) <= 5 * MIB as u64, "{}", allocated(&out));
        }
    }

    // A damaged object: its MD5 differs; the error names the object and the backup.
    let obj = root.join("bb/bb/bbbb2222/volume_vol1_20261205100000_backup_bbbb2222-00001");
    std::fs::write(&obj, compress("bz2", &pseudo_random(MIB, 99))).unwrap();
    let err =
        restore_cinder_backup(&store, "", "bbbb2222", &dir.path().join("bad.img")).unwrap_err();
    assert_eq!(err.kind(), "corrupt", "{err}");
    assert!(
        err.to_string().contains("bbbb2222-00001") && err.to_string().contains("MD5"),
        "{err}"
    );
    assert!(
        !dir.path().join("bad.img").exists(),
        "a failed restore left its target"
    );
    // A missing object, and a missing parent.
    std::fs::remove_file(&obj).unwrap();
    let err =
        restore_cinder_backup(&store, "", "bbbb2222", &dir.path().join("bad2.img")).unwrap_err();
    assert_eq!(err.kind(), "missing_object", "{err}");
    std::fs::remove_dir_all(root.join("aa")).unwrap();
    let err =
        restore_cinder_backup(&store, "", "cccc3333", &dir.path().join("bad3.img")).unwrap_err();
    assert_eq!(err.kind(), "parent_not_found", "{err}");
    let _ = store.requests();
}

#[test]
fn a_cinder_chain_is_adopted_with_its_ids_deduplicated_verified_and_resumable() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("backup_posix_path");
    let volumes = write_chain(&root);
    let store = FsStore::open(&root, false).unwrap();
    let url = dir.path().join("volback").display().to_string();
    let dst = Container::open_with(&url, true, None, &Default::default()).unwrap();
    let ids = ["aaaa1111", "bbbb2222", "cccc3333"];

    let r = adopt_cinder_backups(&store, "", &dst, &AdoptOptions::default()).unwrap();
    let got: Vec<_> = r.adopted.iter().map(|a| a.backup_id.as_str()).collect();
    assert_eq!(got, ids, "parents first");
    let parents: Vec<_> = r.adopted.iter().map(|a| a.parent_id.as_deref()).collect();
    assert_eq!(parents, [None, Some("aaaa1111"), Some("bbbb2222")]);
    for (a, want) in r.adopted.iter().zip(&volumes) {
        assert!(!a.already_adopted);
        assert_eq!(
            a.volume_blake3.as_deref(),
            Some(blake3::hash(want).to_hex().as_str())
        );
        let out = dir.path().join(format!("{}.img", a.backup_id));
        volback::restore::run_restore(
            &dst,
            &a.backup_id,
            &out,
            volback::restore::TargetMode::New,
            None,
        )
        .unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), *want, "{}", a.backup_id);
        let (m, _) = dst.read_manifest(&a.backup_id).unwrap();
        assert_eq!(m.volume_id, "vol1");
        assert_eq!(m.labels.get("origin").map(String::as_str), Some("cinder"));
        assert_eq!(m.created_at, "2026-12-05T10:00:00Z");
        // The record `cinder backup-import` takes: the backup's fields with the volback
        // driver's record of the adopted backup.
        assert_eq!(
            a.record.backup_service,
            "volback.cinder.VolbackBackupDriver"
        );
        let fields: serde_json::Value = serde_json::from_slice(
            &base64::engine::general_purpose::STANDARD
                .decode(&a.record.backup_url)
                .unwrap(),
        )
        .unwrap();
        assert_eq!(fields["id"], a.backup_id.as_str());
        assert_eq!(fields["container"], dst.url());
        assert_eq!(fields["size"], 1);
        assert_eq!(
            fields["driver_info"]["volback_record"]["backup"]["id"],
            a.backup_id.as_str()
        );
    }

    // Stores what volback's own backups of the same volumes store.
    let own_url = dir.path().join("own").display().to_string();
    let own = Container::open_with(&own_url, true, None, &Default::default()).unwrap();
    let mut own_bytes = 0;
    for (i, v) in volumes.iter().enumerate() {
        let img = dir.path().join(format!("own{i}.img"));
        std::fs::write(&img, v).unwrap();
        let parent = (i > 0).then(|| ids[i - 1]);
        own_bytes += backup_file(&own, &img, ids[i], parent).bytes_new;
    }
    let packs = |p: &str| dir_size(&Path::new(p).join("packs"));
    assert_eq!(packs(&url), packs(&own_url), "adopted vs own packs");
    assert!(
        r.bytes_written <= own_bytes + 4096,
        "{} vs {own_bytes}",
        r.bytes_written
    );

    // Again: nothing read or written, the same records.
    let again = adopt_cinder_backups(&store, "", &dst, &AdoptOptions::default()).unwrap();
    assert!(again.adopted.iter().all(|a| a.already_adopted));
    assert_eq!(again.bytes_written, 0);
    for (a, b) in again.adopted.iter().zip(&r.adopted) {
        assert_eq!(a.record, b.record);
    }

    // A damaged object of a backup not yet adopted: the adoption fails naming it, and commits
    // nothing.
    let mut v4 = volumes[2].clone();
    v4[7 * MIB..8 * MIB].copy_from_slice(&pseudo_random(MIB, 4));
    write_backup(&root, "dddd4444", Some("cccc3333"), &v4, &[7], "zlib");
    let obj = root.join("dd/dd/dddd4444/volume_vol1_20261205100000_backup_dddd4444-00001");
    let good = std::fs::read(&obj).unwrap();
    std::fs::write(&obj, compress("zlib", &pseudo_random(MIB, 5))).unwrap();
    let err = adopt_cinder_backups(&store, "", &dst, &AdoptOptions::default()).unwrap_err();
    assert_eq!(err.kind(), "corrupt", "{err}");
    assert!(err.to_string().contains("dddd4444-00001"), "{err}");
    assert!(!dst.backup_id_taken("dddd4444").unwrap());
    // Repaired: the re-run adopts only the new backup.
    std::fs::write(&obj, good).unwrap();
    let opts = AdoptOptions {
        backup_ids: vec!["dddd4444".into()],
        ..Default::default()
    };
    let r = adopt_cinder_backups(&store, "", &dst, &opts).unwrap();
    assert_eq!(r.adopted.len(), 1);
    assert_eq!(r.adopted[0].parent_id.as_deref(), Some("cccc3333"));
    assert!(r.bytes_written < 2 * MIB as u64, "{}", r.bytes_written);
}

/// One backup of one object of `data`, compressed with `kind` (stored as `stored` if given,
/// recorded with length `length`), in the posix layout; returns the store's root.
fn one_object_backup(root: &Path, kind: &str, data: &[u8], stored: Option<Vec<u8>>, length: usize) {
    use md5::Digest as _;
    let id = "dddd4444";
    let dir = root.join("dd/dd").join(id);
    std::fs::create_dir_all(&dir).unwrap();
    let prefix = format!("volume_vol1_20261205100000_backup_{id}");
    let name = format!("{prefix}-00001");
    std::fs::write(
        dir.join(&name),
        stored.unwrap_or_else(|| compress(kind, data)),
    )
    .unwrap();
    let md5: String = md5::Md5::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let meta = serde_json::json!({"version": "1.0.0", "backup_id": id, "volume_id": "vol1",
        "backup_name": null, "backup_description": null, "created_at": "2026-12-05 10:00:00",
        "parent_id": null, "volume_meta": null, "objects": [{ name: {
            "offset": 0, "length": length, "compression": kind, "md5": md5 }}]});
    std::fs::write(dir.join(format!("{prefix}_metadata")), meta.to_string()).unwrap();
}

#[test]
fn objects_of_any_length_restore_and_bad_streams_are_refused() {
    // Objects read a piece (1 MiB) at a time: lengths across piece and MD5-block boundaries,
    // in every compression.
    for kind in ["none", "zlib", "bz2", "zstd"] {
        for len in [1usize, 4095, MIB - 1, MIB + 64, 2 * MIB + 37] {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().join("posix");
            let data = pseudo_random(len, len as u64);
            one_object_backup(&root, kind, &data, None, len);
            let store = FsStore::open(&root, false).unwrap();
            let out = dir.path().join("out.img");
            restore_cinder_backup(&store, "", "dddd4444", &out)
                .unwrap_or_else(|e| panic!("{kind} {len}: {e}"));
            assert!(std::fs::read(&out).unwrap() == data, "{kind} {len}");
        }
    }
    let data = pseudo_random(2 * MIB + 37, 5);
    for (kind, stored, length, what) in [
        // A stream cut short.
        (
            "zlib",
            Some(compress("zlib", &data)[..1000].to_vec()),
            data.len(),
            "truncated",
        ),
        (
            "zstd",
            Some(compress("zstd", &data)[..1000].to_vec()),
            data.len(),
            "truncated",
        ),
        // More bytes than the manifest says.
        ("zlib", None, data.len() - 1, "more than"),
        ("none", None, data.len() - 64, "more than"),
        // Fewer.
        ("bz2", None, data.len() + 1, "holds"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("posix");
        one_object_backup(&root, kind, &data, stored, length);
        let store = FsStore::open(&root, false).unwrap();
        let out = dir.path().join("out.img");
        let err = restore_cinder_backup(&store, "", "dddd4444", &out).unwrap_err();
        assert_eq!(err.kind(), "corrupt", "{kind} {what}: {err}");
        assert!(
            err.to_string().contains(what) && err.to_string().contains("00001"),
            "{kind} {what}: {err}"
        );
        assert!(!out.exists());
    }
}
