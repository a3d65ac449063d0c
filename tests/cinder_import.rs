//! Cinder's own chunked-driver backups read directly: a chain written in Cinder's posix layout
//! (full + two incrementals, zlib, bz2 and zstd objects, a zero region) restored byte for
//! byte, newest layer first; damaged, missing and orphaned links give typed errors.

mod common;

use std::io::Write;
use std::path::Path;

use common::*;
use md5::Digest as _;
use volback::cinder::{chain, list_cinder_backups, restore_cinder_backup};
use volback::store::{FsStore, ObjectStore};

const MIB: usize = 1 << 20;

fn compress(kind: &str, data: &[u8]) -> Vec<u8> {
    match kind {
        "zlib" => {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        "bz2" => {
            let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::default());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        "zstd" => zstd::encode_all(data, 3).unwrap(),
        _ => data.to_vec(),
    }
}

/// Writes one Cinder backup of `volume` (whose changed 1 MiB objects are `changed`) in the
/// posix layout under `root`, as Cinder's driver names and lays it out.
fn write_backup(
    root: &Path,
    id: &str,
    parent: Option<&str>,
    volume: &[u8],
    changed: &[usize],
    kind: &str,
) {
    let dir = root.join(&id[0..2]).join(&id[2..4]).join(id);
    std::fs::create_dir_all(&dir).unwrap();
    let prefix = format!("volume_vol1_20261205100000_backup_{id}");
    let mut objects = Vec::new();
    for (n, &i) in changed.iter().enumerate() {
        let data = &volume[i * MIB..(i + 1) * MIB];
        let name = format!("{prefix}-{:05}", n + 1);
        std::fs::write(dir.join(&name), compress(kind, data)).unwrap();
        let md5: String = md5::Md5::digest(data)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        objects.push(serde_json::json!({ name: {
            "offset": i * MIB, "length": MIB, "compression": kind, "md5": md5 }}));
    }
    let sha = serde_json::json!({"version": "1.0.0", "backup_id": id, "volume_id": "vol1",
        "chunk_size": 32768, "sha256s": vec!["x"; volume.len() / 32768]});
    std::fs::write(dir.join(format!("{prefix}_sha256file")), sha.to_string()).unwrap();
    let meta = serde_json::json!({"version": "1.0.0", "backup_id": id, "volume_id": "vol1",
        "backup_name": null, "backup_description": null, "created_at": "2026-12-05 10:00:00",
        "parent_id": parent, "volume_meta": null, "objects": objects});
    std::fs::write(dir.join(format!("{prefix}_metadata")), meta.to_string()).unwrap();
}

#[test]
fn a_cinder_chain_restores_byte_for_byte_and_damage_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("backup_posix_path");
    // 8 MiB volume, MiB 2-3 zero; the full stores every MiB, as Cinder does.
    let mut v1 = pseudo_random(8 * MIB, 1);
    v1[2 * MIB..4 * MIB].fill(0);
    write_backup(
        &root,
        "aaaa1111",
        None,
        &v1,
        &(0..8).collect::<Vec<_>>(),
        "zlib",
    );
    let mut v2 = v1.clone();
    v2[5 * MIB..6 * MIB].copy_from_slice(&pseudo_random(MIB, 2));
    write_backup(&root, "bbbb2222", Some("aaaa1111"), &v2, &[5], "bz2");
    let mut v3 = v2.clone();
    v3[0..MIB].copy_from_slice(&pseudo_random(MIB, 3));
    v3[5 * MIB..6 * MIB].fill(0);
    write_backup(&root, "cccc3333", Some("bbbb2222"), &v3, &[0, 5], "zstd");

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
