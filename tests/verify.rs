//! `verify` names exactly the damaged backups and objects, for every kind of object damaged by
//! a flipped byte, a truncation or a deletion; restore refuses the damaged backups by name.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use common::backend::Env;
use common::*;
use volback::container::Container;
use volback::restore::{TargetMode, run_restore};
use volback::verify::{VerifyOptions, VerifyReport, run_verify};

on_all_backends!(verify_names_exactly_the_damaged_backups_and_objects);

fn backup(c: &Container, vol: &Path, id: &str, parent: Option<&str>) {
    backup_file(c, vol, id, parent);
}

/// The container's objects under `prefix`, with their sizes (through its store: the same on
/// every backend).
fn objects_under(c: &Container, prefix: &str) -> BTreeMap<String, u64> {
    c.store()
        .list(prefix)
        .unwrap()
        .into_iter()
        .map(|o| (o.key, o.size))
        .collect()
}

/// Verifies with every sorted table in memory, and again with every table spilled to scratch
/// files in runs of two records: the two must find the same.
fn verify(c: &Container, read_data: bool) -> VerifyReport {
    let run = |mem_entries| {
        let opts = VerifyOptions {
            read_data,
            mem_entries,
            ..VerifyOptions::default()
        };
        run_verify(c, &opts).unwrap()
    };
    let (memory, spilled) = (run(usize::MAX), run(2));
    let found = |r: &VerifyReport| {
        let backups: Vec<_> = r
            .backups
            .iter()
            .map(|b| {
                (
                    b.backup_id.clone(),
                    b.ok,
                    b.problem_count,
                    b.problems.clone(),
                )
            })
            .collect();
        (
            backups,
            r.damaged_objects.clone(),
            r.chunks_checked,
            r.chunks_read,
        )
    };
    assert_eq!(
        found(&memory),
        found(&spilled),
        "spilled tables found otherwise"
    );
    memory
}

fn damaged(r: &VerifyReport) -> Vec<&str> {
    r.damaged_backups.iter().map(String::as_str).collect()
}

/// Applies `damage` to object `key` (an emptied object is deleted), runs `check`, and puts the
/// original bytes back, all through the container's store.
fn with_damage(c: &Container, key: &str, damage: impl FnOnce(&mut Vec<u8>), check: impl FnOnce()) {
    let store = c.store();
    let good = store.get(key).unwrap();
    let mut bad = good.to_vec();
    damage(&mut bad);
    if bad.is_empty() && good.len() > 1 {
        store.delete(key).unwrap();
    } else {
        store.put(key, bad.into()).unwrap();
    }
    check();
    store.put(key, good).unwrap();
}

fn restore_err(c: &Container, id: &str, scratch: &Path) -> volback::Error {
    let out = scratch.join(format!("r-{id}"));
    let err = run_restore(c, id, &out, TargetMode::New, None).unwrap_err();
    assert!(!out.exists(), "no partial target");
    err
}

fn verify_names_exactly_the_damaged_backups_and_objects(e: &Env) {
    let c = &e.c;
    let va = e.root.join("a.img");
    make_image(&va, 6 << 20, 11);
    backup(c, &va, "a", None);
    let packs_a = objects_under(c, "packs/");
    scattered_writes(&va, 10, 12);
    write_at(&va, 0, 4096, 13); // b no longer shares a's first chunk
    backup(c, &va, "b", Some("a"));
    let packs_ab = objects_under(c, "packs/");
    let vc = e.root.join("c.img");
    std::fs::write(&vc, pseudo_random(3 << 20, 14)).unwrap();
    backup(c, &vc, "c", None);
    let packs_c: BTreeMap<String, u64> = objects_under(c, "packs/")
        .into_iter()
        .filter(|(k, _)| !packs_ab.contains_key(k))
        .collect();
    let largest = |m: &BTreeMap<String, u64>| m.iter().max_by_key(|(_, n)| **n).unwrap().0.clone();
    let data_c = largest(&packs_c);
    let meta_c = packs_c.iter().min_by_key(|(_, n)| **n).unwrap().0.clone();
    let data_a = largest(&packs_a);
    // A pack's name: its id, the last part of its key.
    let name = |k: &str| k.rsplit('/').next().unwrap().to_string();

    let clean = verify(c, true);
    assert!(clean.ok(), "{clean:?}");
    assert_eq!(clean.backups_checked, 3);
    assert!(
        clean.chunks_read > 100 && clean.bytes_read > 4 << 20,
        "{clean:?}"
    );

    // A flipped byte in a chunk only c uses: only --read-data sees it; restore refuses c.
    with_damage(
        c,
        &data_c,
        |b| b[8 + 100] ^= 0x40,
        || {
            assert!(verify(c, false).ok());
            let r = verify(c, true);
            assert_eq!(damaged(&r), ["c"], "{r:?}");
            assert!(r.backups[2].problems[0].object.contains(&name(&data_c)));
            assert_eq!(r.backups[2].problems[0].kind, "hash_mismatch");
            let err = restore_err(c, "c", &e.root);
            assert!(err.to_string().contains(&name(&data_c)), "{err}");
        },
    );
    // The first chunk of a's data pack: a needs it, b rewrote that block.
    with_damage(
        c,
        &data_a,
        |b| b[8 + 10] ^= 1,
        || {
            let r = verify(c, true);
            assert_eq!(damaged(&r), ["a"], "{r:?}");
        },
    );
    // A chunk of a's data pack that b needs too: both are damaged.
    let index = c.load_index().unwrap();
    let (m_b, _) = c.read_manifest("b").unwrap();
    let mut shared = None;
    c.walk_extents(&index, &m_b, |off, x| {
        if let volback::format::extent_list::Extent::Data { id, .. } = x {
            let loc = index.get(id).unwrap();
            if off > 1 << 20
                && shared.is_none()
                && name(&data_a) == index.pack_id(loc.pack).to_hex()
            {
                shared = Some(loc.offset as usize);
            }
        }
        Ok(())
    })
    .unwrap();
    let shared = shared.expect("b shares chunks with a");
    with_damage(
        c,
        &data_a,
        |b| b[shared + 1] ^= 1,
        || {
            let r = verify(c, true);
            assert_eq!(damaged(&r), ["a", "b"], "{r:?}");
        },
    );
    // A truncated pack is seen without reading data (the listing gives its size).
    with_damage(
        c,
        &data_c,
        |b| b.truncate(b.len() / 2),
        || {
            let r = verify(c, false);
            assert_eq!(damaged(&r), ["c"], "{r:?}");
            assert!(
                r.damaged_objects
                    .iter()
                    .any(|p| p.object.contains(&name(&data_c)))
            );
            restore_err(c, "c", &e.root);
        },
    );
    // A missing pack.
    with_damage(
        c,
        &data_c,
        |b| b.clear(),
        || {
            let r = verify(c, false);
            assert_eq!(damaged(&r), ["c"], "{r:?}");
            assert_eq!(r.backups[2].problems[0].kind, "missing_object");
            assert_eq!(restore_err(c, "c", &e.root).kind(), "missing_object");
        },
    );
    // c's extent list (its metadata pack): the structure check reads and verifies it.
    with_damage(
        c,
        &meta_c,
        |b| b[8 + 5] ^= 2,
        || {
            let r = verify(c, false);
            assert_eq!(damaged(&r), ["c"], "{r:?}");
            restore_err(c, "c", &e.root);
        },
    );
    // A damaged pack table: chunks are still served through the index, so no backup is
    // damaged, but the pack is named (the index could not be rebuilt from it).
    with_damage(
        c,
        &data_c,
        |b| {
            let n = b.len();
            b[n - 60] ^= 4
        },
        || {
            let r = verify(c, true);
            assert!(damaged(&r).is_empty(), "{r:?}");
            assert!(
                r.damaged_objects
                    .iter()
                    .any(|p| p.object.contains(&name(&data_c))),
                "{r:?}"
            );
        },
    );
    // A truncated manifest.
    with_damage(
        c,
        "backups/b",
        |b| b.truncate(b.len() / 2),
        || {
            let r = verify(c, false);
            assert_eq!(damaged(&r), ["b"], "{r:?}");
            assert_eq!(r.backups[1].problems[0].object, "backups/b");
            assert_eq!(restore_err(c, "b", &e.root).kind(), "corrupt");
        },
    );
    // A flipped byte in an index segment: the packs' tables stand in; the segment is named.
    let seg = objects_under(c, "index/").into_keys().next().unwrap();
    with_damage(
        c,
        &seg,
        |b| b[20] ^= 8,
        || {
            let r = verify(c, true);
            assert!(damaged(&r).is_empty(), "{r:?}");
            assert_eq!(r.damaged_objects.len(), 1, "{r:?}");
            assert!(r.damaged_objects[0].object.starts_with("index/"));
        },
    );

    // The CLI: exit status 3 and the damaged backup in the JSON report.
    with_damage(
        c,
        &data_c,
        |b| b[8 + 100] ^= 0x40,
        || {
            let out = Command::new(env!("CARGO_BIN_EXE_volback"))
                .args(["verify", "--container", &e.url, "--read-data", "--json"])
                .envs(e.cli_env())
                .output()
                .unwrap();
            assert_eq!(out.status.code(), Some(3));
            let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(j["damaged_backups"], serde_json::json!(["c"]));
        },
    );
    let out = Command::new(env!("CARGO_BIN_EXE_volback"))
        .args(["verify", "--container", &e.url, "--backup-id", "a"])
        .envs(e.cli_env())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
