//! A restore whose chunk locations must go to a scratch file, or a backup whose dedup set must,
//! with `$TMPDIR` unusable, fails with a typed error naming that directory, before anything is
//! written or committed. (A test binary of its own: it sets `TMPDIR` for the whole process
//! before any thread starts.)

mod common;

use common::*;
use volback::Error;
use volback::container::Container;
use volback::restore::{RestoreOptions, TargetMode, run_restore_with};

#[test]
fn unusable_scratch_dir_is_a_typed_error_and_nothing_is_written() {
    let root = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("scratch-dir-test");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let missing = root.join("no-such-tmpdir");
    // SAFETY: set before this test starts any thread; the binary runs no other test.
    unsafe { std::env::set_var("TMPDIR", &missing) };
    let c = Container::open(root.join("c").to_str().unwrap(), true, None).unwrap();
    let vol = root.join("v.img");
    make_image(&vol, 4 << 20, 3);
    backup_file(&c, &vol, "b", None);
    let out = root.join("out.img");
    let spilled = RestoreOptions {
        locations_in_memory: 64,
        ..RestoreOptions::new(TargetMode::New)
    };
    match run_restore_with(&c, "b", &out, &spilled, None) {
        Err(Error::Io { path, .. }) => assert_eq!(path, missing),
        other => panic!(
            "expected an io error naming {}: {other:?}",
            missing.display()
        ),
    }
    let left: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains("out.img"))
        .collect();
    assert!(left.is_empty(), "restore left {left:?}");
    // With the table in memory the same restore needs no scratch file.
    run_restore_with(&c, "b", &out, &RestoreOptions::new(TargetMode::New), None).unwrap();
    assert_same(&vol, &out);

    // A backup whose dedup set spills (the container holds more chunks than the 256 a set
    // keeps in memory at least): the same typed error, no backup, no lease left.
    let big = root.join("big.img");
    make_image(&big, 24 << 20, 5);
    assert!(backup_file(&c, &big, "big", None).chunks_new > 256);
    let opts = volback::backup::BackupOptions {
        dedup_mem_keys: Some(256),
        // The file is unchanged since "big": read it, so the dedup set is loaded.
        full_read: true,
        ..backup_opts("b2", Some("big"))
    };
    let source = volback::backup::source::VolumeSource::Path(big.clone());
    match volback::backup::run_backup(&c, source, &opts, None) {
        Err(Error::Io { path, .. }) => assert_eq!(path, missing),
        other => panic!(
            "expected an io error naming {}: {:?}",
            missing.display(),
            other.map(|r| r.2)
        ),
    }
    assert!(!c.backup_id_taken("b2").unwrap());
    let leases = std::fs::read_dir(root.join("c").join("leases"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(leases, 0);
}
