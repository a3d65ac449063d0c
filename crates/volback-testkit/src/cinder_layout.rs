//! Backups in the layout Cinder's posix driver writes (`<id[0:2]>/<id[2:4]>/<id>/`, a
//! `_metadata` manifest version 1.0.0, one compressed object per changed MiB, a
//! `_sha256file`), for tests of `volback cinder` that need no Cinder. (Tests with Cinder's own
//! drivers writing them are in `tests/cinder/`.)

use std::io::Write;
use std::path::Path;

use md5::Digest as _;

const MIB: usize = 1 << 20;

/// `data` compressed as Cinder's `compression` value `kind` names (`zlib`, `bz2`, `zstd`,
/// anything else: stored as is).
pub fn compress(kind: &str, data: &[u8]) -> Vec<u8> {
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
pub fn write_backup(
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

/// A chain of three Cinder backups (ids `aaaa1111`, `bbbb2222`, `cccc3333`, volume `vol1`) of an 8 MiB volume: a zlib full (MiB 2-3 zero), a bz2
/// incremental, a zstd incremental; returns the three volumes.
pub fn write_chain(root: &Path) -> [Vec<u8>; 3] {
    // 8 MiB volume, MiB 2-3 zero; the full stores every MiB, as Cinder does.
    let mut v1 = crate::testdata::pseudo_random(8 * MIB, 1);
    v1[2 * MIB..4 * MIB].fill(0);
    write_backup(
        root,
        "aaaa1111",
        None,
        &v1,
        &(0..8).collect::<Vec<_>>(),
        "zlib",
    );
    let mut v2 = v1.clone();
    v2[5 * MIB..6 * MIB].copy_from_slice(&crate::testdata::pseudo_random(MIB, 2));
    write_backup(root, "bbbb2222", Some("aaaa1111"), &v2, &[5], "bz2");
    let mut v3 = v2.clone();
    v3[0..MIB].copy_from_slice(&crate::testdata::pseudo_random(MIB, 3));
    v3[5 * MIB..6 * MIB].fill(0);
    write_backup(root, "cccc3333", Some("bbbb2222"), &v3, &[0, 5], "zstd");

    [v1, v2, v3]
}
