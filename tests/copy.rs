//! `copy`: backups copied into a second container, on a filesystem and on S3, plaintext and
//! encrypted either side: only what the destination lacks is written, a second copy writes
//! nothing, an interrupted copy resumes, and the copies restore byte for byte from the
//! destination alone with their ids, labels and times.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::backend::Env;
use common::*;
use volback::container::Container;
use volback::copy::{CopyOptions, Selection, run_copy};
use volback::crypto::KeySource;
use volback::restore::{TargetMode, run_restore};

on_all_backends!(an_interrupted_copy_resumes_and_a_conflicting_id_is_refused,);

// These damage, measure or copy objects as files.
mod files {
    use super::*;
    on_both_backends!(copies_write_only_what_the_destination_lacks_and_restore_from_it_alone,);
}

/// Five daily backups of a volume (a full, then incrementals with scattered writes), labelled.
fn five_days(e: &Env) -> Vec<std::path::PathBuf> {
    let vol = e.root.join("vol.img");
    make_image(&vol, 24 << 20, 11);
    let mut images = Vec::new();
    for day in 0..5u64 {
        if day > 0 {
            scattered_writes(&vol, 12, 100 + day);
        }
        let id = format!("day{day}");
        let parent = (day > 0).then(|| format!("day{}", day - 1));
        let mut opts = backup_opts(&id, parent.as_deref());
        opts.labels.insert("policy".into(), "daily".into());
        let source = volback::backup::source::VolumeSource::Path(vol.clone());
        volback::backup::run_backup(&e.c, source, &opts, None).unwrap();
        let keep = e.root.join(format!("{id}.img"));
        std::fs::copy(&vol, &keep).unwrap();
        images.push(keep);
    }
    images
}

fn all() -> CopyOptions {
    CopyOptions::default()
}

fn copies_write_only_what_the_destination_lacks_and_restore_from_it_alone(e: &Env) {
    let images = five_days(e);
    let (url, objects) = e.second_container("dst");
    let dst = Container::open_with(&url, true, None, &e.s3).unwrap();
    let last = std::sync::Mutex::new((0u64, 0u64));
    let progress = |done: u64, total: u64| *last.lock().unwrap() = (done, total);
    let r = run_copy(&e.c, &dst, &all(), Some(&progress)).unwrap();
    assert_eq!(r.copied.len(), 5, "{r:?}");
    let (done, total) = *last.lock().unwrap();
    assert_eq!(
        (done, total),
        (r.bytes_read, 5 * (24 << 20)),
        "progress ends at the total"
    );
    assert_eq!(r.copied[1].parent_id.as_deref(), Some("day0"));
    // What the destination stores is what the source stores, within 5 %.
    let (src_bytes, dst_bytes) = (dir_size(&e.objects), dir_size(&objects));
    assert!(
        dst_bytes as f64 <= src_bytes as f64 * 1.05,
        "source {src_bytes}, destination {dst_bytes}"
    );
    // Again: nothing to copy, nothing written.
    let again = run_copy(&e.c, &dst, &all(), None).unwrap();
    assert!(again.copied.is_empty(), "{again:?}");
    assert_eq!(again.skipped.len(), 5);
    assert_eq!(again.destination_requests.put, 0, "{again:?}");
    // The copies keep ids, volume, labels and times, and restore from the destination alone.
    let originals = e.c.list_backups().unwrap();
    let copies = dst.list_backups().unwrap();
    for (a, b) in originals.iter().zip(&copies) {
        let (a, b) = (a.as_ref().unwrap(), b.as_ref().unwrap());
        assert_eq!(
            (
                &a.backup_id,
                &a.volume_id,
                &a.labels,
                a.created_unix,
                &a.created_at,
                a.size
            ),
            (
                &b.backup_id,
                &b.volume_id,
                &b.labels,
                b.created_unix,
                &b.created_at,
                b.size
            )
        );
    }
    for (day, image) in images.iter().enumerate() {
        let out = e.root.join(format!("restored{day}.img"));
        run_restore(&dst, &format!("day{day}"), &out, TargetMode::New, None).unwrap();
        assert_same(image, &out);
    }
    // By label and volume: the same five, all already there.
    let by_label = CopyOptions {
        selection: Selection {
            labels: [("policy".to_string(), "daily".to_string())].into(),
            volume_id: Some("vol".into()),
            ..Selection::default()
        },
        ..all()
    };
    assert_eq!(
        run_copy(&e.c, &dst, &by_label, None).unwrap().skipped.len(),
        5
    );
}

fn an_interrupted_copy_resumes_and_a_conflicting_id_is_refused(e: &Env) {
    five_days(e);
    let (url, _) = e.second_container("dst");
    let dst = Container::open_with(&url, true, None, &e.s3).unwrap();
    // Stopped while day 2 is copied: days 0 and 1 are there, day 2 is not.
    let cancel = Arc::new(AtomicBool::new(false));
    let opts = CopyOptions {
        selection: Selection {
            backup_ids: vec!["day0".into(), "day1".into()],
            ..Selection::default()
        },
        ..all()
    };
    run_copy(&e.c, &dst, &opts, None).unwrap();
    cancel.store(true, Ordering::Relaxed);
    let stopped = CopyOptions {
        cancel: Some(cancel),
        ..all()
    };
    let err = run_copy(&e.c, &dst, &stopped, None).unwrap_err();
    assert_eq!(err.kind(), "cancelled", "{err}");
    assert_eq!(dst.list_backups().unwrap().len(), 2);
    let r = run_copy(&e.c, &dst, &all(), None).unwrap();
    assert_eq!((r.copied.len(), r.skipped.len()), (3, 2), "{r:?}");

    // A destination backup that shares an id with a different source backup is refused.
    let (url2, _) = e.second_container("other");
    let other = Container::open_with(&url2, true, None, &e.s3).unwrap();
    let vol = e.root.join("other.img");
    make_image(&vol, 1 << 20, 99);
    backup_file(&other, &vol, "day0", None);
    let err = run_copy(&e.c, &other, &all(), None).unwrap_err();
    assert_eq!(err.kind(), "backup_exists", "{err}");
    // An unknown id is an error, not an empty copy.
    let missing = CopyOptions {
        selection: Selection {
            backup_ids: vec!["nope".into()],
            ..Selection::default()
        },
        ..all()
    };
    assert_eq!(
        run_copy(&e.c, &dst, &missing, None).unwrap_err().kind(),
        "backup_not_found"
    );
}

/// Encrypted to plaintext, plaintext to encrypted, and between two encrypted containers with
/// unrelated keys: each copy restores byte for byte and dedups within its destination.
#[test]
fn copies_cross_encryption_boundaries() {
    let dir = tempfile::tempdir().unwrap();
    let k1 = KeySource::secret(b"source passphrase".to_vec());
    let k2 = KeySource::secret(b"destination passphrase".to_vec());
    let open = |name: &str, key: Option<&KeySource>| {
        Container::open_keyed(
            dir.path().join(name).to_str().unwrap(),
            true,
            None,
            &Default::default(),
            key,
        )
        .unwrap()
    };
    let enc = open("enc", Some(&k1));
    let vol = dir.path().join("vol.img");
    make_image(&vol, 8 << 20, 5);
    backup_file(&enc, &vol, "b1", None);
    scattered_writes(&vol, 4, 6);
    backup_file(&enc, &vol, "b2", Some("b1"));
    let plain = open("plain", None);
    let enc2 = open("enc2", Some(&k2));
    // Encrypted backups go into a plaintext container only when the caller says so.
    let err = run_copy(&enc, &plain, &all(), None).unwrap_err();
    assert_eq!(err.kind(), "key", "{err}");
    assert!(plain.list_backups().unwrap().is_empty());
    let allowed = CopyOptions {
        allow_plaintext: true,
        ..all()
    };
    for dst in [&plain, &enc2] {
        let r = run_copy(&enc, dst, &allowed, None).unwrap();
        assert_eq!(r.copied.len(), 2);
        // The incremental writes far less than the full (dedup in the destination's ids).
        assert!(
            r.copied[1].bytes_written * 3 < r.copied[0].bytes_written,
            "{r:?}"
        );
        let out = dir.path().join("out.img");
        let _ = std::fs::remove_file(&out);
        run_restore(dst, "b2", &out, TargetMode::New, None).unwrap();
        assert_same(&vol, &out);
    }
    let back = open("back", Some(&k1));
    run_copy(&plain, &back, &all(), None).unwrap();
    assert!(back.is_encrypted());
}

/// From a filesystem container into S3, stopped half-way through (a backup part-copied) and
/// run again, then from S3 into a new filesystem container: every copy restores byte for byte.
#[test]
fn copies_between_a_filesystem_and_s3_resume_after_an_interruption() {
    let (fs, s3) = (Env::fs(), Env::s3());
    let images = five_days(&fs);
    let cancel = Arc::new(AtomicBool::new(false));
    let progress = |done: u64, total: u64| {
        if done > total / 2 {
            cancel.store(true, Ordering::Relaxed);
        }
    };
    let stopped = CopyOptions {
        cancel: Some(cancel.clone()),
        ..all()
    };
    let err = run_copy(&fs.c, &s3.c, &stopped, Some(&progress)).unwrap_err();
    assert_eq!(err.kind(), "cancelled", "{err}");
    let done = s3.c.list_backups().unwrap().len();
    assert!((1..5).contains(&done), "{done} copied before the stop");
    let r = run_copy(&fs.c, &s3.c, &all(), None).unwrap();
    assert_eq!((r.copied.len(), r.skipped.len()), (5 - done, done), "{r:?}");
    let (url, _) = fs.second_container("back");
    let back = Container::open_with(&url, true, None, &fs.s3).unwrap();
    assert_eq!(
        run_copy(&s3.c, &back, &all(), None).unwrap().copied.len(),
        5
    );
    let out = fs.root.join("back.img");
    run_restore(&back, "day4", &out, TargetMode::New, None).unwrap();
    assert_same(&images[4], &out);
}
