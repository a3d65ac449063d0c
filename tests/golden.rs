//! Compatibility with containers written by earlier releases: `tests/fixtures/container-v1` was
//! written by volback 0.1.0 (format version 1) from fixed inputs, with two backups (a full one
//! carrying volume metadata, and an incremental of it), a deleted third backup, and the records
//! exported for the first two. Every later build must list it, restore both backups
//! byte-identically, import both records, verify every chunk, and tell the deleted backup from
//! an unknown one. The fixture's objects are pinned by their BLAKE3 so that it cannot be
//! rewritten by accident: a format change adds a new fixture, it never replaces this one.

mod common;

use std::path::{Path, PathBuf};

use common::copy_dir;
use volback::container::Container;
use volback::driver::{Driver, DriverConfig};
use volback::format::record::BackupRecord;
use volback::format::tombstone::Tombstone;
use volback::ids::Hash;
use volback::verify::{VerifyOptions, run_verify};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// BLAKE3 of every object under `root`, by key.
fn object_hashes(root: &Path) -> serde_json::Map<String, serde_json::Value> {
    let mut out = serde_json::Map::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let key = p.strip_prefix(root).unwrap().display().to_string();
                out.insert(key, Hash::of(&std::fs::read(&p).unwrap()).to_hex().into());
            }
        }
    }
    out
}

/// Every object under `root` is pinned in `want["objects"]` with its hash, and every pinned
/// object is there.
fn assert_pinned(root: &Path, want: &serde_json::Value) {
    let found = object_hashes(root);
    for (key, hash) in &found {
        assert_eq!(
            Some(hash),
            want["objects"].get(key),
            "{key} is not pinned as it is"
        );
    }
    assert_eq!(
        found.len(),
        want["objects"].as_object().unwrap().len(),
        "objects missing from the fixture"
    );
}

fn expected() -> serde_json::Value {
    let text = std::fs::read_to_string(fixture().join("container-v1.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The fixture is the one that was written, object for object.
#[test]
fn the_fixture_is_unchanged() {
    assert_pinned(&fixture().join("container-v1"), &expected());
}

/// A copy of the fixture (restores and verifies write leases) and a driver for it.
fn open_copy(dir: &Path) -> (String, Driver) {
    let copy = dir.join("container");
    copy_dir(&fixture().join("container-v1"), &copy);
    let url = copy.display().to_string();
    let driver = Driver::new(DriverConfig {
        container: url.clone(),
        create_container: false,
        ..Default::default()
    });
    (url, driver)
}

#[test]
fn a_version_1_container_lists_restores_imports_and_verifies() {
    let want = expected();
    let dir = tempfile::tempdir().unwrap();
    let (url, driver) = open_copy(dir.path());
    driver.check_for_setup_error().unwrap();
    let c = Container::open(&url, false, None).unwrap();

    let listed: Vec<(String, Option<String>, u64)> = c
        .list_backups()
        .unwrap()
        .into_iter()
        .map(|m| {
            let m = m.unwrap();
            (m.backup_id, m.parent_id, m.size)
        })
        .collect();
    assert_eq!(
        listed,
        vec![
            ("full-1".into(), None, 2 << 20),
            ("incr-2".into(), Some("full-1".into()), 2 << 20),
        ]
    );

    for id in ["full-1", "incr-2"] {
        // The exported record imports against the container (wherever it now lives).
        let text = want["records"][id].as_str().unwrap();
        let record = driver.import_record(text, Some(&url)).unwrap();
        assert_eq!(record.id, id);
        assert_eq!(record.volume_id, "vol-a");
        let out = dir.path().join(format!("{id}.img"));
        let report = driver
            .restore(
                &BackupRecord {
                    container: Some(url.clone()),
                    ..record
                },
                &out,
                true,
            )
            .unwrap();
        let bytes = std::fs::read(&out).unwrap();
        assert_eq!(bytes.len() as u64, want["sizes"][id].as_u64().unwrap());
        assert_eq!(
            Hash::of(&bytes).to_hex(),
            want["volumes"][id].as_str().unwrap(),
            "{id} restores different bytes"
        );
        if let Some(meta) = want["volume_metadata"].get(id) {
            assert_eq!(report.volume_metadata.as_ref(), Some(meta));
        }
    }

    let v = run_verify(
        &c,
        &VerifyOptions {
            read_data: true,
            ..VerifyOptions::default()
        },
    )
    .unwrap();
    assert!(v.ok(), "{v:?}");
    assert_eq!(v.backups_checked, 2);
    assert!(v.chunks_read > 0);

    // The deleted backup is reported as deleted, not unknown; its tombstone reads and writes
    // back to the same bytes.
    assert_eq!(
        c.read_manifest("gone-3").unwrap_err().kind(),
        "backup_deleted"
    );
    assert_eq!(
        c.read_manifest("never").unwrap_err().kind(),
        "backup_not_found"
    );
    let stored = std::fs::read(fixture().join("container-v1/deleted/gone-3")).unwrap();
    let t: Tombstone = serde_json::from_slice(&stored).unwrap();
    assert_eq!(t.encode().unwrap(), stored);
}

/// Today's build backs up into the old container, deduplicating against what it holds, and the
/// new backup restores too.
#[test]
fn a_version_1_container_takes_new_backups() {
    let want = expected();
    let dir = tempfile::tempdir().unwrap();
    let (url, _) = open_copy(dir.path());
    let c = Container::open(&url, false, None).unwrap();
    // The incremental's volume, rebuilt from its restore, backed up again: nothing new to store.
    let vol = dir.path().join("again.img");
    volback::restore::run_restore(&c, "incr-2", &vol, volback::restore::TargetMode::New, None)
        .unwrap();
    let r = common::backup_file(&c, &vol, "again-4", Some("incr-2"));
    assert_eq!(r.chunks_new, 0, "every chunk is already in the container");
    let out = dir.path().join("again-out.img");
    volback::restore::run_restore(&c, "again-4", &out, volback::restore::TargetMode::New, None)
        .unwrap();
    assert_eq!(
        Hash::of(&std::fs::read(&out).unwrap()).to_hex(),
        want["volumes"]["incr-2"].as_str().unwrap()
    );
}

/// The encrypted format (config v2, sealed objects, v2 packs, a key slot) is pinned the same
/// way: `tests/fixtures/container-v2-encrypted` holds two backups of fixed volumes (a full one
/// with labels and metadata, and an incremental of it), written with the passphrase in
/// `container-v2-encrypted.json`. `VOLBACK_WRITE_FIXTURE=1 cargo test --test golden -- --ignored`
/// writes it anew into `target/` (a format change adds a fixture; it never replaces this one).
mod encrypted {
    use super::*;
    use volback::crypto::KeySource;

    const NAME: &str = "container-v2-encrypted";

    fn volumes() -> [Vec<u8>; 2] {
        let mut first = common::pseudo_random(1 << 20, 71);
        first.extend_from_slice(&vec![0u8; 256 << 10]);
        first.extend_from_slice(&common::text_like(768 << 10, 72));
        let mut second = first.clone();
        second[300_000..364_000].copy_from_slice(&common::pseudo_random(64_000, 73));
        [first, second]
    }

    fn want() -> serde_json::Value {
        let text = std::fs::read_to_string(fixture().join(format!("{NAME}.json"))).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    fn key() -> KeySource {
        KeySource::secret(want()["passphrase"].as_str().unwrap().as_bytes().to_vec())
    }

    #[test]
    #[ignore = "writes the fixture; run by hand for a new format version"]
    fn write_fixture() {
        if std::env::var_os("VOLBACK_WRITE_FIXTURE").is_none() {
            return;
        }
        let out = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../target")
            .join(NAME);
        let _ = std::fs::remove_dir_all(&out);
        let url = out.display().to_string();
        let pass = "golden fixture passphrase";
        let c = Container::open_keyed(
            &url,
            true,
            None,
            &Default::default(),
            Some(&KeySource::secret(pass.as_bytes().to_vec())),
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let [first, second] = volumes();
        for (id, parent, bytes) in [
            ("full-1", None, &first),
            ("incr-2", Some("full-1"), &second),
        ] {
            let vol = dir.path().join(id);
            std::fs::write(&vol, bytes).unwrap();
            let mut opts = common::backup_opts(id, parent);
            opts.volume_id = "vol-secret".into();
            opts.labels.insert("policy".into(), "daily".into());
            opts.volume_metadata = Some(serde_json::json!({"name": "db-volume"}));
            let source = volback::backup::source::VolumeSource::Path(vol);
            volback::backup::run_backup(&c, source, &opts, None).unwrap();
        }
        let _ = std::fs::remove_dir_all(out.join("leases"));
        let _ = std::fs::remove_dir(out.join(".tmp"));
        let objects = object_hashes(&out);
        let doc = serde_json::json!({
            "comment": "An encrypted container (config v2) written from fixed inputs; tests/golden.rs reads it with every later build. Object and volume hashes are BLAKE3.",
            "passphrase": pass,
            "objects": objects,
            "volumes": {"full-1": Hash::of(&first).to_hex(), "incr-2": Hash::of(&second).to_hex()},
        });
        std::fs::write(
            out.with_extension("json"),
            serde_json::to_string_pretty(&doc).unwrap(),
        )
        .unwrap();
    }

    #[test]
    fn the_fixture_is_unchanged() {
        let want = want();
        assert_pinned(&fixture().join(NAME), &want);
        // Fixed inputs: the volumes this build generates are the ones the fixture holds.
        let [first, second] = volumes();
        assert_eq!(Hash::of(&first).to_hex(), want["volumes"]["full-1"]);
        assert_eq!(Hash::of(&second).to_hex(), want["volumes"]["incr-2"]);
    }

    #[test]
    fn an_encrypted_container_restores_verifies_and_refuses_other_keys() {
        let want = want();
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("c");
        copy_dir(&fixture().join(NAME), &copy);
        let url = copy.display().to_string();
        let s3 = Default::default();
        let wrong = KeySource::secret(b"not the passphrase".to_vec());
        let err = Container::open_keyed(&url, false, None, &s3, Some(&wrong)).unwrap_err();
        assert_eq!(err.kind(), "wrong_key");
        let locked = Container::open_keyed(&url, false, None, &s3, None).unwrap();
        let v = run_verify(
            &locked,
            &VerifyOptions {
                read_data: true,
                ..VerifyOptions::default()
            },
        )
        .unwrap();
        assert!(v.ok() && v.without_key && v.backups_checked == 2, "{v:?}");

        let c = Container::open_keyed(&url, false, None, &s3, Some(&key())).unwrap();
        let listed = c.list_backups().unwrap();
        assert_eq!(listed.len(), 2);
        for m in listed {
            let m = m.unwrap();
            assert_eq!(m.volume_id, "vol-secret");
            assert_eq!(m.labels.get("policy").map(String::as_str), Some("daily"));
            let out = dir.path().join(&m.backup_id);
            let report = volback::restore::run_restore(
                &c,
                &m.backup_id,
                &out,
                volback::restore::TargetMode::New,
                None,
            )
            .unwrap();
            assert_eq!(
                report.volume_metadata,
                Some(serde_json::json!({"name": "db-volume"}))
            );
            assert_eq!(
                Hash::of(&std::fs::read(&out).unwrap()).to_hex(),
                want["volumes"][&m.backup_id].as_str().unwrap(),
                "{} restores different bytes",
                m.backup_id
            );
        }
        let v = run_verify(
            &c,
            &VerifyOptions {
                read_data: true,
                ..VerifyOptions::default()
            },
        )
        .unwrap();
        assert!(v.ok() && !v.without_key && v.chunks_read > 0, "{v:?}");
    }
}
