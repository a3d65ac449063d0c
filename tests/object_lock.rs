//! S3 Object Lock against a server that enforces it (Ceph's RADOS Gateway on 127.0.0.1): what a
//! committed backup needs is retained before the backup shows; no delete, by volback or by
//! anyone with the writer's credentials, removes it early; the collector leaves retained packs
//! alone and says so, and reclaims the rest without leaving versions behind; what a plain DELETE
//! hid comes back with `undelete`.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::backend::json_of;
use common::*;
use volback::backup::run_backup;
use volback::backup::source::VolumeSource;
use volback::container::Container;
use volback::crypto::KeySource;
use volback::format::config::{ContainerConfig, ObjectLock};
use volback::gc::{GcOptions, run_gc};
use volback::prune::{GroupBy, Policy, PruneOptions, run_prune};
use volback::restore::{TargetMode, run_restore};
use volback::store::ObjectStore;
use volback::store::s3::S3Store;
use volback::store::s3_lock::LockMode;
use volback_testkit::ceph::Rgw;

const DAY: u64 = 86_400;

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A new bucket on the gateway, with Object Lock enabled if `lock`; its raw store.
fn bucket(name: &str, lock: bool) -> S3Store {
    let s = S3Store::open(name, "c", &Rgw::shared().options()).unwrap();
    s.create_bucket(lock).unwrap();
    s
}

fn locked_config(mode: LockMode) -> ContainerConfig {
    ContainerConfig {
        object_lock: Some(ObjectLock { mode, days: 1 }),
        // Small packs: a few MiB of volume make several, each retained on its own.
        pack_target: 1 << 20,
        ..Default::default()
    }
}

fn open(name: &str, create: bool, mode: LockMode, key: Option<&KeySource>) -> Container {
    Container::open_keyed(
        &format!("s3://{name}/c"),
        create,
        Some(locked_config(mode)),
        &Rgw::shared().options(),
        key,
    )
    .unwrap()
}

/// The keys under `prefix`, as the bucket lists them.
fn keys(raw: &S3Store, prefix: &str) -> Vec<String> {
    raw.list(prefix)
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect()
}

/// A collection that sweeps at once (one host, no clock skew).
fn prompt_gc() -> GcOptions {
    GcOptions {
        clock_skew: Duration::ZERO,
        ..GcOptions::default()
    }
}

/// Every version of `key`, delete markers included.
fn versions(raw: &S3Store, key: &str) -> usize {
    raw.versions(key).unwrap().len()
}

/// Packs a cancelled backup left in `c` (no backup needs them; none is retained).
fn orphan_packs(c: &Container, raw: &S3Store) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let vol = dir.path().join("vol.img");
    make_image(&vol, 40 << 20, 9);
    let cancel = Arc::new(AtomicBool::new(false));
    let progress = |done: u64| {
        if done >= 24 << 20 {
            cancel.store(true, Ordering::Relaxed);
        }
    };
    let opts = volback::backup::BackupOptions {
        cancel: Some(cancel.clone()),
        ..backup_opts("cancelled", None)
    };
    let err = run_backup(c, VolumeSource::Path(vol.clone()), &opts, Some(&progress)).unwrap_err();
    assert_eq!(err.kind(), "cancelled");
    let orphans = keys(raw, "packs/");
    assert!(orphans.len() >= 2, "{orphans:?}");
    orphans
}

#[test]
fn committed_backups_are_retained_and_no_delete_removes_them_early() {
    let raw = bucket("lock-commit", true);
    let c = open("lock-commit", true, LockMode::Compliance, None);
    let dir = tempfile::tempdir().unwrap();
    let vol = dir.path().join("vol.img");
    make_image(&vol, 24 << 20, 7);
    let full = backup_file(&c, &vol, "full", None);
    scattered_writes(&vol, 20, 8);
    let incr = backup_file(&c, &vol, "incr", Some("full"));
    let packs = raw.list("packs/").unwrap();
    assert!(packs.len() >= 2, "{packs:?}");
    assert!(full.objects_retained >= packs.len() as u64 - 1, "{full:?}");
    assert!(incr.objects_retained >= 3, "{incr:?}");
    assert!(incr.retained_until.is_some());

    // Every pack, both manifests and the config are retained for a day from their commit.
    let t = now();
    for key in packs.iter().map(|o| o.key.clone()).chain([
        "backups/full".into(),
        "backups/incr".into(),
        "config".into(),
    ]) {
        let until = raw.retained_until(&key).unwrap().expect(&key);
        assert!(
            until + 120 >= t + DAY && until <= t + DAY + 120,
            "{key}: {until}"
        );
    }

    // volback refuses to delete them, and changes nothing.
    let err = c.delete_backup("full").unwrap_err();
    assert_eq!(err.kind(), "retained", "{err}");
    assert!(err.to_string().contains("backups/full"), "{err}");
    assert_eq!(c.list_backups().unwrap().len(), 2);
    assert!(raw.head("deleted/full").unwrap().is_none());

    // Whoever holds the writer's credentials cannot delete a retained version either.
    for key in packs
        .iter()
        .map(|o| o.key.clone())
        .chain(["backups/incr".into(), "config".into()])
    {
        let err = raw.delete_versions(&key).unwrap_err();
        assert_eq!(err.kind(), "retained", "{key}: {err}");
    }
    // A plain DELETE only hides an object behind a delete marker; `undelete` brings it back.
    let hidden: Vec<String> = packs
        .iter()
        .map(|o| o.key.clone())
        .chain(["backups/incr".into()])
        .collect();
    for key in &hidden {
        raw.delete(key).unwrap();
    }
    assert_eq!(c.list_backups().unwrap().len(), 1);
    assert_eq!(c.undelete().unwrap(), hidden.len() as u64);
    assert_eq!(c.list_backups().unwrap().len(), 2);
    let out = dir.path().join("out.img");
    run_restore(&c, "incr", &out, TargetMode::New, None).unwrap();
    assert_same(&vol, &out);

    // Prune keeps what its rules would remove while it is retained, and says until when; the
    // collector has nothing to take and takes nothing.
    let r = run_prune(
        &c,
        &PruneOptions {
            policy: Policy {
                last: Some(1),
                ..Policy::default()
            },
            group_by: GroupBy::Volume,
            labels: Default::default(),
            dry_run: false,
            allow_removing_newest: false,
            gc: Some(GcOptions::default()),
        },
    )
    .unwrap();
    assert!(r.removed.is_empty(), "{r:?}");
    assert_eq!(r.retained.len(), 1, "{r:?}");
    assert_eq!(r.retained[0].backup_id, "full");
    assert!(r.retained[0].until.is_some());
    let gc = r.gc.unwrap();
    assert_eq!((gc.packs_deleted, gc.packs_unreferenced), (0, 0), "{gc:?}");
    assert_eq!(c.list_backups().unwrap().len(), 2);
    assert_eq!(raw.list("packs/").unwrap().len(), packs.len());
}

/// Packs no backup needs: those never retained (a cancelled backup's) are reclaimed with every
/// version; a retained one is left, reported with its date, and reclaimed once the date passes.
#[test]
fn gc_reclaims_unretained_packs_for_good_and_waits_for_retained_ones() {
    let raw = bucket("lock-gc", true);
    let c = open("lock-gc", true, LockMode::Governance, None);
    let orphans = orphan_packs(&c, &raw);
    for k in &orphans {
        assert_eq!(raw.retained_until(k).unwrap(), None, "{k}");
    }
    // One orphan is retained for a few seconds (as if an uncommitted backup had retained it).
    let held = &orphans[0];
    raw.retain(held, LockMode::Governance, now() + 6).unwrap();

    let gc = prompt_gc();
    let r = run_gc(&c, &gc).unwrap();
    assert_eq!(r.packs_retained, 1, "{r:?}");
    assert!(r.retained_until.is_some(), "{r:?}");
    assert_eq!(r.packs_deleted, orphans.len() - 1, "{r:?}");
    let left = keys(&raw, "packs/");
    assert_eq!(left, vec![held.clone()]);
    for k in &orphans[1..] {
        assert_eq!(versions(&raw, k), 0, "{k} left a version behind");
    }

    std::thread::sleep(Duration::from_secs(8));
    let r = run_gc(&c, &gc).unwrap();
    assert_eq!((r.packs_deleted, r.packs_retained), (1, 0), "{r:?}");
    assert_eq!(versions(&raw, held), 0);
    // Leases and records went for good too: nothing is left but config and index.
    let all = raw.list("").unwrap();
    assert!(
        all.iter()
            .all(|o| o.key == "config" || o.key.starts_with("index/")),
        "{all:?}"
    );
}

#[test]
fn encrypted_containers_retain_their_key_slots() {
    let raw = bucket("lock-keys", true);
    let k1 = KeySource::secret(b"first passphrase".to_vec());
    let k2 = KeySource::secret(b"second passphrase".to_vec());
    let mut c = open("lock-keys", true, LockMode::Compliance, Some(&k1));
    let slots = raw.list("keys/").unwrap();
    assert_eq!(slots.len(), 1);
    assert!(raw.retained_until(&slots[0].key).unwrap().is_some());
    let added = c
        .add_key(&k2, volback::crypto::KdfParams::insecure_for_tests())
        .unwrap();
    assert!(
        raw.retained_until(&format!("keys/{added}"))
            .unwrap()
            .is_some()
    );
    assert_eq!(c.remove_key(&added).unwrap_err().kind(), "retained");
    let before = raw.list("keys/").unwrap().len();
    let err = c
        .change_key(&k2, volback::crypto::KdfParams::insecure_for_tests())
        .unwrap_err();
    assert_eq!(err.kind(), "retained", "{err}");
    assert_eq!(raw.list("keys/").unwrap().len(), before, "nothing added");
    let dir = tempfile::tempdir().unwrap();
    let vol = dir.path().join("vol.img");
    make_image(&vol, 4 << 20, 3);
    backup_file(&c, &vol, "b1", None);
    let c2 = open("lock-keys", false, LockMode::Compliance, Some(&k2));
    let out = dir.path().join("out.img");
    run_restore(&c2, "b1", &out, TargetMode::New, None).unwrap();
    assert_same(&vol, &out);
}

#[test]
fn object_lock_needs_a_bucket_created_with_it() {
    bucket("lock-none", false);
    let err = Container::open_with(
        "s3://lock-none/c",
        true,
        Some(locked_config(LockMode::Compliance)),
        &Rgw::shared().options(),
    )
    .unwrap_err();
    assert_eq!(err.kind(), "config", "{err}");
    assert!(err.to_string().contains("Object Lock"), "{err}");
    let raw = S3Store::open("lock-none", "c", &Rgw::shared().options()).unwrap();
    assert!(raw.list("").unwrap().is_empty(), "nothing was written");

    let dir = tempfile::tempdir().unwrap();
    let err = Container::open(
        dir.path().join("fs").to_str().unwrap(),
        true,
        Some(locked_config(LockMode::Compliance)),
    )
    .unwrap_err();
    assert!(err.to_string().contains("Object Lock"), "{err}");
}

/// The CLI: `backup --object-lock-days` creates the container with retention and reports the
/// date; `delete` of a retained backup exits 1 with kind `retained`.
#[test]
fn cli_creates_locked_containers_and_refuses_early_deletes() {
    bucket("lock-cli", true);
    let rgw = Rgw::shared();
    let o = rgw.options();
    let dir = tempfile::tempdir().unwrap();
    let vol = dir.path().join("vol.img");
    make_image(&vol, 4 << 20, 5);
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_volback"))
            .args(args)
            .env("AWS_ENDPOINT_URL", rgw.endpoint())
            .env("AWS_ACCESS_KEY_ID", o.access_key_id.as_ref().unwrap())
            .env(
                "AWS_SECRET_ACCESS_KEY",
                o.secret_access_key.as_ref().unwrap(),
            )
            .env("AWS_REGION", "us-east-1")
            .output()
            .unwrap()
    };
    let url = "s3://lock-cli/c";
    let out = run(&[
        "backup",
        "--container",
        url,
        "--volume",
        vol.to_str().unwrap(),
        "--backup-id",
        "b1",
        "--object-lock-days",
        "2",
        "--json",
    ]);
    assert!(out.status.success(), "{out:?}");
    let report = json_of(&out);
    assert!(
        report["objects_retained"].as_u64().unwrap() >= 3,
        "{report}"
    );
    assert!(report["retained_until"].is_string(), "{report}");
    let out = run(&["delete", "--container", url, "--backup-id", "b1", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("retained")
            || String::from_utf8_lossy(&out.stderr).contains("retained"),
        "{out:?}"
    );
    let out = run(&["undelete", "--container", url, "--json"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(json_of(&out)["objects_restored"], 0);
}

/// A plaintext container in a versioned bucket: its deletes leave noncurrent versions, which
/// gc reports (the bucket's lifecycle rules decide when they go).
#[test]
fn gc_reports_what_a_versioned_bucket_still_keeps() {
    let raw = bucket("versioned-plain", true);
    let c = Container::open_with(
        "s3://versioned-plain/c",
        true,
        Some(ContainerConfig {
            pack_target: 1 << 20,
            ..Default::default()
        }),
        &Rgw::shared().options(),
    )
    .unwrap();
    let orphans = orphan_packs(&c, &raw);
    let gc = prompt_gc();
    let r = run_gc(&c, &gc).unwrap();
    assert_eq!(r.packs_deleted, orphans.len(), "{r:?}");
    assert!(raw.list("packs/").unwrap().is_empty());
    assert!(
        r.noncurrent_versions.unwrap() >= orphans.len() as u64,
        "{r:?}"
    );
    assert!(r.noncurrent_bytes.unwrap() >= r.bytes_deleted, "{r:?}");
    assert!(
        versions(&raw, &orphans[0]) >= 2,
        "a version and a delete marker"
    );
}
