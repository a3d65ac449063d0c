//! Encrypted containers, end to end: nothing readable or recognisable is stored, keys are
//! managed by re-wrapping only, wrong or missing keys fail clearly, and structure can be
//! verified without the key. Each scenario runs on a filesystem container and on a real S3
//! server.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use common::backend::{BUCKET, Env};
use common::*;
use volback::container::Container;
use volback::crypto::{KdfParams, KeySource};
use volback::driver::Driver;
use volback::format::record::BackupRecord;
use volback::ids::Hash;
use volback::verify::{VerifyOptions, run_verify};

on_all_backends!(
    wrong_and_missing_keys_fail_before_any_data_is_read,
    gc_and_exported_records_work_and_carry_no_key,
);

// These damage, measure or copy objects as files.
mod files {
    use super::*;
    on_both_backends!(
        nothing_readable_or_recognisable_is_stored,
        keys_are_added_removed_and_changed_without_touching_data,
        structure_is_verified_without_the_key,
        moved_or_planted_objects_are_refused,
    );
}

const MARKER: &[u8] = b"plaintext-marker-that-must-never-be-stored-in-the-clear";

/// A second container next to the Env's, on the same backend: (URL, directory of its objects).
fn encrypted_location(e: &Env) -> (String, PathBuf) {
    let dir = e.objects.parent().unwrap().join("enc");
    let url = match &e.server {
        Some(_) => format!("s3://{BUCKET}/enc"),
        None => dir.display().to_string(),
    };
    (url, dir)
}

fn key(secret: &str) -> KeySource {
    KeySource::secret(secret.as_bytes().to_vec())
}

fn open(e: &Env, url: &str, k: Option<&KeySource>) -> volback::Result<Container> {
    Container::open_keyed(url, false, None, &e.s3, k)
}

fn create(e: &Env, url: &str, secret: &str) -> Container {
    Container::open_keyed(url, true, None, &e.s3, Some(&key(secret))).unwrap()
}

/// A volume with random blocks (stored raw, so a plaintext pack holds them verbatim), text
/// carrying the marker, and zeros.
fn volume(path: &Path) -> Vec<u8> {
    let mut v = pseudo_random(3 << 20, 5);
    for i in 0..2000 {
        v.extend_from_slice(MARKER);
        v.extend_from_slice(format!(" line {i}\n").as_bytes());
    }
    v.extend_from_slice(&vec![0u8; 1 << 20]);
    v.extend_from_slice(&pseudo_random(1 << 20, 6));
    std::fs::write(path, &v).unwrap();
    v
}

fn backup_labelled(c: &Container, vol: &Path, id: &str, parent: Option<&str>) -> u64 {
    let mut opts = backup_opts(id, parent);
    opts.volume_id = "volume-name-secret".into();
    opts.labels
        .insert("tenant".into(), "tenant-name-secret".into());
    let source = volback::backup::source::VolumeSource::Path(vol.into());
    volback::backup::run_backup(c, source, &opts, None)
        .unwrap_or_else(|e| panic!("backup {id}: {e}"))
        .2
        .bytes_new
}

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let name = p.strip_prefix(dir).unwrap().display().to_string();
                out.push((name, std::fs::read(&p).unwrap()));
            }
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Every chunk id of a container (from its index).
fn chunk_ids(c: &Container) -> HashSet<Hash> {
    c.load_index().unwrap().iter().map(|(id, _)| *id).collect()
}

fn restore_new(c: &Container, id: &str, out: &Path) -> volback::Result<()> {
    volback::restore::run_restore(c, id, out, volback::restore::TargetMode::New, None).map(|_| ())
}

fn restore_and_compare(c: &Container, id: &str, expected: &[u8], at: &Path) {
    let _ = std::fs::remove_file(at);
    restore_new(c, id, at).unwrap_or_else(|e| panic!("restore {id}: {e}"));
    assert!(
        std::fs::read(at).unwrap() == expected,
        "restore of {id} differs"
    );
}

fn nothing_readable_or_recognisable_is_stored(e: &Env) {
    let vol = e.root.join("v.img");
    let data = volume(&vol);
    // The same volume in the plaintext container: what a reader of the bucket would see there.
    backup_labelled(&e.c, &vol, "b1", None);
    let (url, dir) = encrypted_location(e);
    let c = create(e, &url, "correct horse battery staple");
    let first = backup_labelled(&c, &vol, "b1", None);
    // Dedup works inside the encrypted container: a second full backup stores (almost) nothing.
    let again = backup_labelled(&c, &vol, "b2", None);
    assert!(
        again < first / 100,
        "second backup stored {again} of {first} bytes"
    );
    restore_and_compare(&c, "b2", &data, &e.root.join("r.img"));

    let random_slice = &data[100_000..100_048];
    let plain_ids = chunk_ids(&e.c);
    let plain_objects = files(&e.objects);
    let all =
        |objs: &[(String, Vec<u8>)], needle: &[u8]| objs.iter().any(|(_, b)| contains(b, needle));
    // The needles are visible in the plaintext container, so the search below can fail.
    assert!(all(&plain_objects, random_slice));
    assert!(all(&plain_objects, b"volume-name-secret"));
    assert!(all(&plain_objects, b"tenant-name-secret"));
    let some_id = plain_ids.iter().next().unwrap();
    assert!(all(&plain_objects, &some_id.0));

    let enc_ids = chunk_ids(&c);
    assert!(!enc_ids.is_empty());
    assert!(
        enc_ids.is_disjoint(&plain_ids),
        "chunk ids must be keyed: a plain BLAKE3 id would confirm a known block"
    );
    let secret_needles: Vec<Vec<u8>> = [
        random_slice.to_vec(),
        MARKER[..24].to_vec(),
        b"volume-name-secret".to_vec(),
        b"tenant-name-secret".to_vec(),
        b"correct horse".to_vec(),
        b"\"chunker\"".to_vec(),
    ]
    .into_iter()
    .collect();
    for (name, bytes) in files(&dir) {
        for n in &secret_needles {
            assert!(
                !contains(&bytes, n),
                "{name} holds {:?}",
                String::from_utf8_lossy(n)
            );
        }
        for id in plain_ids.iter().chain(&enc_ids) {
            assert!(!contains(&bytes, &id.0), "{name} holds chunk id {id}");
            assert!(!name.contains(&id.to_hex()), "{name} names chunk id {id}");
            let hex = id.to_hex();
            assert!(
                !contains(&bytes, hex.as_bytes()),
                "{name} holds chunk id {id} in hex"
            );
        }
    }
}

fn keys_are_added_removed_and_changed_without_touching_data(e: &Env) {
    let vol = e.root.join("v.img");
    let data = volume(&vol);
    let (url, dir) = encrypted_location(e);
    let c = create(e, &url, "first");
    backup_labelled(&c, &vol, "b1", None);
    let data_files: Vec<(String, Vec<u8>)> = files(&dir)
        .into_iter()
        .filter(|(n, _)| !n.starts_with("keys") && !n.starts_with("leases"))
        .collect();
    let first_slot = c.list_keys().unwrap()[0].id.clone();

    let second = c
        .add_key(&key("second"), KdfParams::insecure_for_tests())
        .unwrap();
    let c2 = open(e, &url, Some(&key("second"))).unwrap();
    restore_and_compare(&c2, "b1", &data, &e.root.join("r.img"));
    let listed = c2.list_keys().unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().any(|k| k.id == second && k.current));

    c2.remove_key(&first_slot).unwrap();
    assert_eq!(
        open(e, &url, Some(&key("first"))).unwrap_err().kind(),
        "wrong_key"
    );
    let last = c2.remove_key(&second).unwrap_err();
    assert_eq!(last.kind(), "key", "{last}");
    assert_eq!(c2.remove_key("0000000000000000").unwrap_err().kind(), "key");

    // Changing the passphrase: the new one opens, the old one no longer does.
    let mut c3 = open(e, &url, Some(&key("second"))).unwrap();
    c3.change_key(&key("third"), KdfParams::insecure_for_tests())
        .unwrap();
    assert_eq!(
        open(e, &url, Some(&key("second"))).unwrap_err().kind(),
        "wrong_key"
    );
    let c4 = open(e, &url, Some(&key("third"))).unwrap();
    restore_and_compare(&c4, "b1", &data, &e.root.join("r.img"));
    assert_eq!(c4.list_keys().unwrap().len(), 1);
    // No data object was rewritten by any of it.
    let after: Vec<(String, Vec<u8>)> = files(&dir)
        .into_iter()
        .filter(|(n, _)| !n.starts_with("keys") && !n.starts_with("leases"))
        .collect();
    let mut before = data_files;
    let mut after = after;
    before.sort();
    after.sort();
    assert!(
        before == after,
        "key management must not touch data objects"
    );
}

fn wrong_and_missing_keys_fail_before_any_data_is_read(e: &Env) {
    let vol = e.root.join("v.img");
    volume(&vol);
    let (url, _) = encrypted_location(e);
    let c = create(e, &url, "right");
    backup_labelled(&c, &vol, "b1", None);
    drop(c);

    let t = Instant::now();
    let err = open(e, &url, Some(&key("wrong"))).unwrap_err();
    assert_eq!(err.kind(), "wrong_key", "{err}");
    assert!(
        t.elapsed().as_secs() < 5,
        "a wrong key is refused in one derivation"
    );

    // Without a key: every operation that needs one says so.
    let locked = open(e, &url, None).unwrap();
    assert!(locked.is_encrypted());
    assert_eq!(
        locked.read_manifest("b1").unwrap_err().kind(),
        "key_required"
    );
    assert_eq!(locked.list_backups().unwrap_err().kind(), "key_required");
    let source = volback::backup::source::VolumeSource::Path(vol.clone());
    let b = volback::backup::run_backup(&locked, source, &backup_opts("b2", None), None);
    assert_eq!(b.err().unwrap().kind(), "key_required");
    let r = restore_new(&locked, "b1", &e.root.join("r.img"));
    assert_eq!(r.unwrap_err().kind(), "key_required");
    assert!(!e.root.join("r.img").exists());
    assert_eq!(
        locked.delete_backup("b1").unwrap_err().kind(),
        "key_required"
    );

    // A key for a plaintext container is refused: its data is not encrypted.
    let plain = open(e, &e.url, Some(&key("right"))).unwrap_err();
    assert_eq!(plain.kind(), "key", "{plain}");
}

fn structure_is_verified_without_the_key(e: &Env) {
    let vol = e.root.join("v.img");
    volume(&vol);
    let (url, dir) = encrypted_location(e);
    let c = create(e, &url, "k");
    backup_labelled(&c, &vol, "b1", None);
    backup_labelled(&c, &vol, "b2", None);
    let locked = open(e, &url, None).unwrap();
    let all = VerifyOptions {
        read_data: true,
        ..Default::default()
    };
    let r = run_verify(&locked, &all).unwrap();
    assert!(r.without_key && r.ok() && r.backups_checked == 2, "{r:?}");
    assert!(r.bytes_read > 4 << 20, "{r:?}");

    // One flipped byte in a pack's data: only reading the data (or the key) finds it.
    let pack = files(&dir)
        .into_iter()
        .filter(|(n, _)| n.starts_with("packs/"))
        .max_by_key(|(_, b)| b.len())
        .unwrap()
        .0;
    let path = dir.join(&pack);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[100] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let quick = run_verify(&locked, &VerifyOptions::default()).unwrap();
    assert!(quick.ok(), "{quick:?}");
    let deep = run_verify(&locked, &all).unwrap();
    assert_eq!(deep.damaged_objects.len(), 1, "{deep:?}");
    assert!(
        deep.damaged_objects[0]
            .object
            .ends_with(pack.rsplit('/').next().unwrap())
    );
    let unlocked = open(e, &url, Some(&key("k"))).unwrap();
    let keyed = run_verify(&unlocked, &all).unwrap();
    assert!(
        !keyed.without_key && keyed.damaged_backups.len() == 2,
        "{keyed:?}"
    );

    // A damaged manifest envelope is found without the key.
    let m = dir.join("backups/b2");
    let mut mb = std::fs::read(&m).unwrap();
    mb[0] = b'X';
    std::fs::write(&m, &mb).unwrap();
    let r = run_verify(&locked, &VerifyOptions::default()).unwrap();
    assert_eq!(r.damaged_backups, vec!["b2".to_string()], "{r:?}");
}

fn moved_or_planted_objects_are_refused(e: &Env) {
    let vol = e.root.join("v.img");
    let data = volume(&vol);
    let (url, dir) = encrypted_location(e);
    let c = create(e, &url, "k");
    backup_labelled(&c, &vol, "b1", None);
    std::fs::write(e.root.join("v2.img"), &data[..1 << 20]).unwrap();
    backup_labelled(&c, &e.root.join("v2.img"), "b2", None);
    // b2's sealed manifest copied over b1's: bound to its name, it does not open as b1.
    std::fs::copy(dir.join("backups/b2"), dir.join("backups/b1")).unwrap();
    let c = open(e, &url, Some(&key("k"))).unwrap();
    assert_eq!(c.read_manifest("b1").unwrap_err().kind(), "corrupt");
    // A plaintext manifest planted in an encrypted container is refused too.
    let plain_vol = e.root.join("p.img");
    std::fs::write(&plain_vol, b"planted").unwrap();
    backup_file(&e.c, &plain_vol, "p", None);
    std::fs::copy(e.objects.join("backups/p"), dir.join("backups/p")).unwrap();
    assert_eq!(c.read_manifest("p").unwrap_err().kind(), "corrupt");
    assert_eq!(c.read_manifest("b2").unwrap().0.size, 1 << 20);
}

fn gc_and_exported_records_work_and_carry_no_key(e: &Env) {
    let vol = e.root.join("v.img");
    let data = volume(&vol);
    let (url, _) = encrypted_location(e);
    let c = create(e, &url, "the-secret-passphrase");
    backup_labelled(&c, &vol, "b1", None);
    write_at(&vol, 2 << 20, 300_000, 77);
    let data2 = std::fs::read(&vol).unwrap();
    backup_labelled(&c, &vol, "b2", Some("b1"));
    c.delete_backup("b1").unwrap();
    let report = volback::gc::run_gc(&c, &Default::default()).unwrap();
    assert!(
        report.packs_deleted + report.packs_repacked > 0,
        "{report:?}"
    );
    restore_and_compare(&c, "b2", &data2, &e.root.join("r.img"));
    assert_ne!(data, data2);

    let driver = Driver::with_container(c.clone());
    let record = BackupRecord {
        id: "b2".into(),
        volume_id: "volume-name-secret".into(),
        ..Default::default()
    };
    let text = driver.export_record(&record).unwrap();
    assert!(
        !text.contains("the-secret-passphrase") && !text.contains("keys/"),
        "{text}"
    );
    let imported = driver.import_record(&text, None).unwrap();
    assert_eq!(imported.size, data2.len() as u64);
}
