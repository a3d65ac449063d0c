//! Differential restore onto an existing volume: a target damaged in scattered blocks, in a
//! zero region, cut short or grown, is brought back byte for byte by writing only the blocks
//! that differ; an identical target is not written at all; keyed chunk ids (encrypted
//! containers) work the same.

mod common;

use common::backend::Env;
use common::*;
use volback::container::Container;
use volback::crypto::KeySource;
use volback::restore::run_restore_differential;

on_all_backends!(a_damaged_volume_heals_by_rewriting_only_what_differs);

const MIB: u64 = 1 << 20;

fn a_damaged_volume_heals_by_rewriting_only_what_differs(e: &Env) {
    heal(&e.c, &e.root);
}

#[test]
fn an_encrypted_container_heals_the_same_way() {
    let dir = tempfile::tempdir().unwrap();
    let url = dir.path().join("c").display().to_string();
    let key = KeySource::secret(b"differential test key".to_vec());
    let c = Container::open_keyed(&url, true, None, &Default::default(), Some(&key)).unwrap();
    assert!(c.is_encrypted());
    heal(&c, dir.path());
}

fn heal(c: &Container, root: &std::path::Path) {
    let img = root.join("vol.img");
    let size = 32 * MIB;
    make_image(&img, size, 5);
    backup_file(c, &img, "b1", None);
    let target = root.join("target.img");

    // Identical: read and compared, nothing written.
    std::fs::copy(&img, &target).unwrap();
    let r = run_restore_differential(c, "b1", &target, None, None).unwrap();
    assert_eq!(
        (r.bytes_written, r.bytes_zeroed, r.chunks_rewritten),
        (0, 0, 0)
    );
    assert_eq!((r.bytes_compared, r.bytes_checked), (size, 0));

    // 1 % of the volume damaged in scattered 4 KiB blocks, plus garbage in a zero MiB (the
    // image's MiB 2 is zeros).
    let blocks = size / 100 / 4096;
    scattered_writes(&target, blocks, 77);
    write_at(&target, 2 * MIB + 8192, 20_000, 78);
    let r = run_restore_differential(c, "b1", &target, None, None).unwrap();
    assert_same(&img, &target);
    assert!(
        r.bytes_written + r.bytes_zeroed <= size / 50,
        "wrote {} + zeroed {} of {size}",
        r.bytes_written,
        r.bytes_zeroed
    );
    assert!(r.bytes_written >= blocks * 4096 / 2, "{r:?}");
    assert!(r.bytes_zeroed > 0, "{r:?}");
    assert_eq!(r.bytes_checked, r.bytes_written + r.bytes_zeroed);

    // Cut short, and grown: the file ends at the volume's size with the backup's bytes.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&target)
        .unwrap();
    f.set_len(size - 3 * MIB - 123).unwrap();
    run_restore_differential(c, "b1", &target, None, None).unwrap();
    assert_same(&img, &target);
    f.set_len(size + 5 * MIB).unwrap();
    write_at(&target, size + MIB, 4096, 79);
    let r = run_restore_differential(c, "b1", &target, None, None).unwrap();
    assert_same(&img, &target);
    assert_eq!(r.bytes_written + r.bytes_zeroed, 0, "{r:?}");

    // Cancelled before the first group: nothing compared or written.
    write_at(&target, 0, 4096, 80);
    let stop = std::sync::atomic::AtomicBool::new(true);
    let err = run_restore_differential(c, "b1", &target, None, Some(&stop)).unwrap_err();
    assert_eq!(err.kind(), "cancelled", "{err}");
    // Progress ends at the volume's size.
    let last = std::sync::atomic::AtomicU64::new(0);
    let p = |n: u64| last.store(n, std::sync::atomic::Ordering::Relaxed);
    run_restore_differential(c, "b1", &target, Some(&p), None).unwrap();
    assert_eq!(last.into_inner(), size);
    assert_same(&img, &target);

    // A missing target is an error, not a new file.
    let err = run_restore_differential(c, "b1", &root.join("nope.img"), None, None).unwrap_err();
    assert_eq!(err.kind(), "io", "{err}");
}
