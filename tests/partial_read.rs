//! Partial reads of a backup (`read_range`, `volback cat`): any range of the volume, byte for
//! byte, reading only the chunks it overlaps; a range past the end is refused before anything
//! is written; a damaged pack fails the read with a typed error, never wrong bytes.

mod common;

use common::backend::Env;
use common::*;
use volback::restore::read_range;

on_all_backends!(ranges_read_exactly_their_bytes_and_only_their_chunks);

fn ranges_read_exactly_their_bytes_and_only_their_chunks(e: &Env) {
    let img = e.root.join("vol.img");
    let size = 24u64 << 20;
    make_image(&img, size, 7);
    let whole = std::fs::read(&img).unwrap();
    let report = backup_file(&e.c, &img, "b1", None);
    assert!(report.chunks_new > 100, "{report:?}");
    let read = |offset: u64, length: u64| {
        let mut out = Vec::new();
        read_range(&e.c, "b1", offset, length, &mut out).map(|r| (r, out))
    };
    let mut ranges = vec![
        (0, 0),
        (0, 1),
        (0, 4096),
        (size - 1, 1),
        (size - (3 << 20), 3 << 20),
        (0, size),
        // Across a zero MiB (the image's third MiB of every four is zeros).
        (2 << 20, 1 << 20),
        ((2 << 20) - 10, (1 << 20) + 20),
    ];
    let r = pseudo_random(64 * 8, 3);
    for i in 0..32 {
        let a = u64::from_le_bytes(r[i * 16..i * 16 + 8].try_into().unwrap()) % size;
        let l = u64::from_le_bytes(r[i * 16 + 8..i * 16 + 16].try_into().unwrap()) % (1 << 20);
        ranges.push((a, l.min(size - a)));
    }
    for (offset, length) in ranges {
        let (rep, out) = read(offset, length).unwrap_or_else(|e| panic!("{offset}+{length}: {e}"));
        assert_eq!(
            out,
            whole[offset as usize..(offset + length) as usize],
            "{offset}+{length}"
        );
        // A small range reads a few chunks (at most 256 KiB each), not the volume.
        if length <= 4096 {
            assert!(rep.chunks_read <= 2, "{offset}+{length}: {rep:?}");
        }
    }
    // Past the end: refused, nothing written.
    for (offset, length) in [(size, 1), (size - 1, 2), (u64::MAX, 2), (1, u64::MAX)] {
        let mut out = Vec::new();
        let err = read_range(&e.c, "b1", offset, length, &mut out).unwrap_err();
        assert_eq!(err.kind(), "config", "{offset}+{length}: {err}");
        assert!(out.is_empty());
    }
    assert_eq!(
        read_range(&e.c, "nope", 0, 1, &mut Vec::new())
            .unwrap_err()
            .kind(),
        "backup_not_found"
    );
    // A damaged pack: a range over it fails with the chunk named, never wrong bytes.
    let store = e.c.store();
    let victim = store.list("packs/").unwrap().remove(0).key;
    let mut bytes = store.get(&victim).unwrap().to_vec();
    bytes[100] ^= 0xff;
    store.put(&victim, bytes.into()).unwrap();
    let err = read(0, size).unwrap_err();
    assert!(
        ["hash_mismatch", "corrupt"].contains(&err.kind()),
        "{}: {err}",
        err.kind()
    );
}
