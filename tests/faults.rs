//! Faults: transient failures (before or after the request took effect), torn writes and
//! latency are retried and every operation succeeds; a permanent failure at any request of a
//! backup ends in a typed error, with nothing partial visible and nothing committed lost.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use volback::backup::run_backup;
use volback::backup::source::VolumeSource;
use volback::container::Container;
use volback::gc::{GcOptions, run_gc};
use volback::restore::{TargetMode, run_restore};
use volback::store::{MemStore, ObjectStore};
use volback_testkit::faults::{FaultConfig, FaultStore};

/// A collection that treats every unexpired lease as alive but allows no clock skew.
fn gc_now(c: &Container) {
    let opts = GcOptions {
        clock_skew: Duration::ZERO,
        ..Default::default()
    };
    run_gc(c, &opts).unwrap_or_else(|e| panic!("gc: {e}"));
}

fn restore_matches(c: &Container, id: &str, expected: &[u8], scratch: &std::path::Path) {
    let out = scratch.join(format!("r-{id}"));
    let _ = std::fs::remove_file(&out);
    run_restore(c, id, &out, TargetMode::New, None).unwrap_or_else(|e| panic!("restore {id}: {e}"));
    assert!(
        std::fs::read(&out).unwrap() == expected,
        "{id} restored different bytes"
    );
    std::fs::remove_file(&out).unwrap();
}

fn source(data: &[u8]) -> VolumeSource {
    VolumeSource::Reader {
        name: "vol".into(),
        reader: Box::new(std::io::Cursor::new(data.to_vec())),
    }
}

fn volume(seed: u64) -> Vec<u8> {
    let mut v = pseudo_random(3 << 20, seed);
    v[1 << 20..(1 << 20) + (256 << 10)].fill(0);
    v
}

#[test]
fn a_flaky_store_is_retried_and_every_operation_succeeds() {
    let scratch = tempfile::tempdir().unwrap();
    for seed in 0..6 {
        let mem = Arc::new(MemStore::new());
        let flaky = Arc::new(FaultStore::new(
            mem.clone(),
            FaultConfig {
                seed,
                transient: 0.08,
                ghost: 0.05,
                torn: 0.05,
                max_latency: Duration::from_millis(2),
                ..Default::default()
            },
        ));
        let c = Container::with_store(flaky.clone(), "mem://flaky".into(), true, None).unwrap();
        let mut versions = Vec::new();
        let mut v = volume(seed);
        for day in 0..3 {
            if day > 0 {
                let at = day * 700_000;
                v[at..at + 100_000]
                    .copy_from_slice(&pseudo_random(100_000, seed * 10 + day as u64));
            }
            let parent = (day > 0).then(|| format!("d{}", day - 1));
            run_backup(
                &c,
                source(&v),
                &backup_opts(&format!("d{day}"), parent.as_deref()),
                None,
            )
            .unwrap_or_else(|e| panic!("seed {seed} day {day}: {e}"));
            versions.push(v.clone());
        }
        c.delete_backup("d0").unwrap();
        gc_now(&c);
        for (day, v) in versions.iter().enumerate().skip(1) {
            restore_matches(&c, &format!("d{day}"), v, scratch.path());
        }
        // The same container read through a healthy store agrees.
        let healthy = Container::with_store(mem, "mem://".into(), false, None).unwrap();
        for (day, v) in versions.iter().enumerate().skip(1) {
            restore_matches(&healthy, &format!("d{day}"), v, scratch.path());
        }
        let f = flaky.counts();
        assert!(
            f.transient + f.ghost + f.torn > 10,
            "faults were injected: {f:?}"
        );
    }
}

#[test]
fn a_permanent_failure_at_any_request_commits_nothing_partial_and_loses_nothing() {
    let scratch = tempfile::tempdir().unwrap();
    let base = volume(1);
    let mut next = base.clone();
    next[500_000..900_000].copy_from_slice(&pseudo_random(400_000, 77));
    // How many requests a healthy run of the second backup makes.
    let probe = Arc::new(MemStore::new());
    let c = Container::with_store(probe.clone(), "mem://".into(), true, None).unwrap();
    run_backup(&c, source(&base), &backup_opts("base", None), None).unwrap();
    let base_chunks = data_chunks(&probe).len();
    let before = probe.requests();
    let healthy = run_backup(&c, source(&next), &backup_opts("next", Some("base")), None).unwrap();
    let n = probe.requests().since(&before);
    let healthy_new = healthy.2.chunks_new as usize;
    let total = n.put + n.get + n.head + n.list + n.delete;
    assert!(total > 8, "{n:?}");

    // Whether some interrupted run left chunks that its re-run then did not store again.
    let mut reused = false;
    for fail_after in 0..=total + 1 {
        let mem = Arc::new(MemStore::new());
        let c = Container::with_store(mem.clone(), "mem://".into(), true, None).unwrap();
        run_backup(&c, source(&base), &backup_opts("base", None), None).unwrap();
        let failing = Arc::new(FaultStore::new(
            mem.clone(),
            FaultConfig {
                fail_after: Some(fail_after),
                ..Default::default()
            },
        ));
        let fc = Container::with_store(failing, "mem://".into(), false, None);
        let result = fc.and_then(|fc| {
            run_backup(&fc, source(&next), &backup_opts("next", Some("base")), None)
        });
        let committed = mem.head("backups/next").unwrap().is_some();
        match &result {
            Ok(_) => assert!(
                committed,
                "fail_after {fail_after}: success without a manifest"
            ),
            Err(e) => {
                assert_eq!(e.kind(), "remote", "fail_after {fail_after}: {e}");
                assert!(
                    !committed,
                    "fail_after {fail_after}: error after a commit: {e}"
                );
            }
        }
        // Through a healthy store: what was committed is intact, the rest is invisible, a
        // collection tidies up, and the backup can simply be run again.
        let c = Container::with_store(mem.clone(), "mem://".into(), false, None).unwrap();
        let ids: Vec<String> = c
            .list_backups()
            .unwrap()
            .into_iter()
            .map(|m| m.unwrap().backup_id)
            .collect();
        assert_eq!(
            ids.len(),
            1 + usize::from(committed),
            "fail_after {fail_after}: {ids:?}"
        );
        if !committed {
            // The re-run stores only what the interrupted run had not uploaded and indexed:
            // an incremental does not list the packs, it finds those its volume's resume hint
            // names (`backup/resume.rs`).
            let uploaded = data_chunks(&mem).len() - base_chunks;
            let resumable = resumable_chunks(&mem);
            assert!(resumable <= uploaded, "fail_after {fail_after}");
            let r =
                run_backup(&c, source(&next), &backup_opts("next", Some("base")), None).unwrap();
            assert_eq!(
                r.2.chunks_new as usize + resumable,
                healthy_new,
                "fail_after {fail_after}: {uploaded} chunks were uploaded before the failure, \
                 {resumable} of them indexed and named by the resume hint"
            );
            reused |= resumable > 0;
            assert!(
                mem.list("resume/").unwrap().is_empty(),
                "fail_after {fail_after}: the committed re-run leaves no resume hint"
            );
        }
        gc_now(&c);
        restore_matches(&c, "base", &base, scratch.path());
        restore_matches(&c, "next", &next, scratch.path());
    }
    assert!(
        reused,
        "no interrupted run had uploaded a pack: the test shows no reuse"
    );
}

/// The distinct data chunks held by the packs that the index segments named by the resume hint
/// (of the one volume) describe (none if there is no hint).
fn resumable_chunks(store: &MemStore) -> usize {
    let Some(key) = store.list("resume/").unwrap().pop().map(|o| o.key) else {
        return 0;
    };
    let hint = volback::format::resume::Resume::decode(&key, &store.get(&key).unwrap()).unwrap();
    let mut ids = std::collections::HashSet::new();
    for key in &hint.segments {
        let seg =
            volback::format::index_segment::decode_segment(key, &store.get(key).unwrap()).unwrap();
        for (_, entries) in seg {
            ids.extend(
                entries
                    .iter()
                    .filter(|e| e.kind == volback::format::chunk::ChunkKind::Data)
                    .map(|e| e.id),
            );
        }
    }
    ids.len()
}

/// The distinct data chunks in the store's packs.
fn data_chunks(store: &MemStore) -> std::collections::HashSet<volback::ids::Hash> {
    let mut ids = std::collections::HashSet::new();
    for o in store.list("packs/").unwrap() {
        let pack = store.get(&o.key).unwrap();
        for e in volback::format::pack::parse_pack(&o.key, &pack, None).unwrap() {
            if e.kind == volback::format::chunk::ChunkKind::Data {
                ids.insert(e.id);
            }
        }
    }
    ids
}

/// The parent guides an incremental's chunking only to save work. With the parent's extent
/// list gone (its metadata packs deleted), the incremental is still made, complete and
/// restorable, with the same chunks as a guided one.
#[test]
fn an_unreadable_parent_only_costs_the_guide() {
    let scratch = tempfile::tempdir().unwrap();
    let base = volume(3);
    let mut next = base.clone();
    next[700_000..760_000].copy_from_slice(&pseudo_random(60_000, 5));
    let mut reports = Vec::new();
    for damage in [false, true] {
        let mem = Arc::new(MemStore::new());
        let c = Container::with_store(mem.clone(), "mem://".into(), true, None).unwrap();
        run_backup(&c, source(&base), &backup_opts("base", None), None).unwrap();
        if damage {
            let mut deleted = 0;
            for o in mem.list("packs/").unwrap() {
                let pack = mem.get(&o.key).unwrap();
                let entries = volback::format::pack::parse_pack(&o.key, &pack, None).unwrap();
                if entries
                    .iter()
                    .any(|e| e.kind == volback::format::chunk::ChunkKind::Meta)
                {
                    mem.delete(&o.key).unwrap();
                    deleted += 1;
                }
            }
            assert!(deleted > 0);
        }
        let (_, _, r) =
            run_backup(&c, source(&next), &backup_opts("next", Some("base")), None).unwrap();
        restore_matches(&c, "next", &next, scratch.path());
        reports.push((r.chunks_total, r.size, r.zero_bytes));
    }
    assert_eq!(reports[0], reports[1]);
}
