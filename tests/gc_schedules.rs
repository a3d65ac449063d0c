//! Garbage collection interleaved with backups, deletes and restores: thousands of seeded
//! schedules of concurrent actors over one in-memory store, one request at a time. The process
//! clock is pinned and moves a second per request (`volback::clock::set_virtual_clock`), so
//! leases, records and sweeps are whole seconds apart as they are between hosts, and every
//! rule that compares their times is exercised both ways. (Its own test binary: the pinned
//! clock is process-wide.)

mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::sched::{Sched, SchedStore};
use common::*;
use volback::backup::source::VolumeSource;
use volback::backup::{BackupOptions, run_backup};
use volback::container::Container;
use volback::gc::{DEFAULT_GC_MEM_ENTRIES, GcOptions, run_gc};
use volback::restore::{TargetMode, run_restore};
use volback::store::{MemStore, ObjectStore};
use volback_testkit::faults::{FaultConfig, FaultStore};

/// Pins the process clock once (the tests of this binary share it; it only moves forward).
fn pin_clock() {
    static PIN: std::sync::Once = std::sync::Once::new();
    PIN.call_once(|| volback::clock::set_virtual_clock(volback::clock::now_unix()));
}

/// Which operations a schedule's rounds hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mix {
    /// 2 to 4 actors a round, each a backup, delete, restore or collection picked at random.
    Random,
    /// The race an incremental's exposed-chunk rule is for: see `run_schedule`.
    ParentDeleted,
}

/// One operation in a schedule.
#[derive(Debug, Clone)]
enum Op {
    Backup {
        vol: usize,
        id: String,
        parent: Option<String>,
    },
    Delete(String),
    /// A collection, once more than this many packs are listed (`None`: at once), and then
    /// after this many requests of nothing (a HEAD of an absent key each).
    Gc(GcOptions, Option<usize>, usize),
    /// A delete, after this many requests of nothing, then a collection.
    DeleteGc(String, GcOptions, usize),
    Restore(String),
}

/// The most requests a parent-delete schedule's collection waits, once the backup beside it
/// has stored a pack, before it starts.
const GC_DELAY_MAX: usize = 3;
/// The most requests a parent-delete schedule's delete waits before it starts (an incremental
/// checks that its parent exists with its second request).
const DELETE_DELAY_MAX: usize = 8;

/// Backups, deletes, collections and restores run as concurrent actors whose requests are
/// interleaved by a seeded scheduler; after every round, every committed backup restores
/// byte-identically. Thousands of schedules (VOLBACK_SCHEDULES overrides the count).
#[test]
fn interleaved_backup_delete_gc_restore_schedules() {
    pin_clock();
    let schedules: u64 = std::env::var("VOLBACK_SCHEDULES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1500);
    let scratch = tempfile::tempdir().unwrap();
    let mut steps = 0;
    for seed in 0..schedules.div_ceil(3) {
        steps += run_schedule(seed, scratch.path(), false, Mix::Random);
    }
    eprintln!("{schedules} schedules, {steps} interleaved requests");
}

/// The race an incremental's exposed-chunk rule is for, in seeded interleavings: three
/// incrementals of one volume in three rounds; beside the second, a collection (whose mark may
/// come before that backup's commit and condemn its new packs, held back by its lease); beside
/// the third (an incremental of the second), a delete of the second and a collection, which may
/// sweep the pending record while the third runs. Without the rule, some seeds lose chunks
/// the third backup relies on.
#[test]
fn interleaved_incremental_parent_delete_gc_schedules() {
    pin_clock();
    let schedules: u64 = std::env::var("VOLBACK_SCHEDULES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1500);
    let scratch = tempfile::tempdir().unwrap();
    let mut steps = 0;
    for seed in 0..schedules.div_ceil(3) {
        steps += run_schedule(2_000_000 + seed, scratch.path(), false, Mix::ParentDeleted);
    }
    eprintln!(
        "{} schedules, {steps} interleaved requests",
        schedules.div_ceil(3)
    );
}

/// The same schedules on a store that ignores create-only puts, as S3-compatible servers that
/// ignore `If-None-Match` do: with distinct backup ids nothing committed is lost or damaged,
/// since the collection protocol never relies on a put being refused. What such a store cannot
/// give is shown too: two commits of one backup id both succeed, the later replacing the
/// earlier (`docs/reliability.md`).
#[test]
fn interleaved_schedules_on_a_store_ignoring_create_only() {
    pin_clock();
    let schedules: u64 = std::env::var("VOLBACK_SCHEDULES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1500)
        / 5;
    let scratch = tempfile::tempdir().unwrap();
    let mut steps = 0;
    for seed in 0..schedules.div_ceil(3) {
        steps += run_schedule(1_000_000 + seed, scratch.path(), true, Mix::Random);
    }
    eprintln!("{schedules} schedules, {steps} interleaved requests");

    let store: Arc<dyn ObjectStore> = Arc::new(ignoring_create_only(Arc::new(MemStore::new())));
    let c = Container::with_store(store, "mem://".into(), true, None).unwrap();
    let vol = scratch.path().join("v.img");
    std::fs::write(&vol, pseudo_random(64 << 10, 1)).unwrap();
    backup_file(&c, &vol, "once", None);
    let (m, _) = c.read_manifest("once").unwrap();
    let other = volback::format::manifest::Manifest {
        volume_id: "another".into(),
        ..m
    };
    c.commit_manifest(&other)
        .expect("the store cannot refuse a second commit of one id");
    assert_eq!(c.read_manifest("once").unwrap().0.volume_id, "another");
}

/// `inner`, with create-only puts that overwrite.
fn ignoring_create_only(inner: Arc<dyn ObjectStore>) -> FaultStore {
    FaultStore::new(
        inner,
        FaultConfig {
            ignore_create_only: true,
            ..Default::default()
        },
    )
}

/// Three rounds of concurrent actors on one container (on a store that ignores create-only
/// puts, with `ignore_create_only`); returns requests scheduled.
fn run_schedule(seed: u64, scratch: &Path, ignore_create_only: bool, mix: Mix) -> u64 {
    let mem: Arc<dyn ObjectStore> = if ignore_create_only {
        Arc::new(ignoring_create_only(Arc::new(MemStore::new())))
    } else {
        Arc::new(MemStore::new())
    };
    let base =
        Container::with_store(mem.clone(), "mem://".into(), true, Some(tiny_chunks())).unwrap();
    let mut rng = pseudo_random(4096, seed).into_iter().cycle();
    let mut pick = |n: usize| -> usize {
        let b = [rng.next().unwrap(), rng.next().unwrap()];
        u16::from_le_bytes(b) as usize % n
    };
    // Two volumes; each backup of a volume changes some blocks of it first.
    let mut volumes: Vec<Vec<u8>> = (0..2)
        .map(|v| {
            let mut d = pseudo_random(96 << 10, seed * 10 + v);
            d[40 << 10..56 << 10].fill(0);
            d
        })
        .collect();
    // Committed, not deleted: id → contents.
    // Odd schedules collect with every sorted table spilled to scratch files in runs of three
    // records, even ones in memory: the same decisions either way.
    let gc_mem = if seed % 2 == 1 {
        3
    } else {
        DEFAULT_GC_MEM_ENTRIES
    };
    let mut committed: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut latest: Vec<Option<String>> = vec![None, None];
    let mut next_id = 0;
    let mut steps = 0;
    for round in 0..3 {
        let mut ops = Vec::new();
        let packs_before = mem.list("packs/").unwrap().len();
        let gc_no_skew = |pick: &mut dyn FnMut(usize) -> usize| {
            let opts = GcOptions {
                clock_skew: Duration::ZERO,
                max_unused: [0.0, 0.05, 1.0][pick(3)],
                mem_entries: gc_mem,
                ..Default::default()
            };
            Op::Gc(opts, Some(packs_before), pick(GC_DELAY_MAX + 1))
        };
        if mix == Mix::ParentDeleted {
            // An incremental of volume 0 each round. Beside the second, two collections: one
            // may mark before that backup commits and condemn its new packs, in a record its
            // lease holds back. Beside the third (an incremental of the second), a delete of
            // the second followed by a collection, which may sweep that record (the third's
            // lease is younger than it) while the third relies on its parent's chunks.
            next_id += 1;
            ops.push(Op::Backup {
                vol: 0,
                id: format!("b{next_id}"),
                parent: latest[0].clone().filter(|p| committed.contains_key(p)),
            });
            match (round, &latest[0]) {
                (1, _) => {
                    ops.push(gc_no_skew(&mut pick));
                    ops.push(gc_no_skew(&mut pick));
                }
                (2, Some(parent)) => {
                    let Op::Gc(opts, ..) = gc_no_skew(&mut pick) else {
                        unreachable!()
                    };
                    ops.push(Op::DeleteGc(
                        parent.clone(),
                        opts,
                        pick(DELETE_DELAY_MAX + 1),
                    ));
                }
                _ => {}
            }
        }
        let n_actors = if mix == Mix::Random { 2 + pick(3) } else { 0 };
        for _ in 0..n_actors {
            let op = match pick(4) {
                0 | 1 => {
                    let vol = pick(2);
                    next_id += 1;
                    Op::Backup {
                        vol,
                        id: format!("b{next_id}"),
                        parent: latest[vol].clone().filter(|p| committed.contains_key(p)),
                    }
                }
                2 if !committed.is_empty() => {
                    let ids: Vec<_> = committed.keys().cloned().collect();
                    if pick(2) == 0 {
                        Op::Delete(ids[pick(ids.len())].clone())
                    } else {
                        Op::Restore(ids[pick(ids.len())].clone())
                    }
                }
                _ => Op::Gc(
                    GcOptions {
                        clock_skew: Duration::from_secs([0, 300][pick(2)]),
                        max_unused: [0.0, 0.05, 1.0][pick(3)],
                        mem_entries: gc_mem,
                        ..Default::default()
                    },
                    None,
                    0,
                ),
            };
            ops.push(op);
        }
        // Volume contents each backup will see (changed before the round starts).
        let mut contents = Vec::new();
        for op in &ops {
            if let Op::Backup { vol, .. } = op {
                let v = &mut volumes[*vol];
                let at = pick(v.len() - 4096) & !511;
                let len = 512 * (1 + pick(16));
                let fill = pseudo_random(len, seed * 1000 + round * 10 + contents.len() as u64);
                let end = (at + len).min(v.len());
                v[at..end].copy_from_slice(&fill[..end - at]);
                contents.push(v.clone());
            } else {
                contents.push(Vec::new());
            }
        }
        // In the parent-delete schedules a collection's request is three times as likely to go
        // next as a backup's (four once a delete is done): the race needs a collection to fit
        // whole between a backup's segment and its commit, and between an incremental's read of
        // its parent's extent list and its commit.
        let weights: Vec<u32> = (ops.iter())
            .map(|op| match (mix, op) {
                (Mix::ParentDeleted, Op::Gc(..)) => 3,
                _ => 1,
            })
            .collect();
        let sched = Sched::weighted(seed * 7 + round, weights);
        let results: Vec<std::result::Result<(), volback::Error>> = std::thread::scope(|s| {
            let handles: Vec<_> = ops
                .iter()
                .zip(&contents)
                .enumerate()
                .map(|(actor, (op, data))| {
                    let store = Arc::new(SchedStore {
                        inner: mem.clone(),
                        sched: sched.clone(),
                        actor,
                    });
                    let sched = sched.clone();
                    let committed = &committed;
                    s.spawn(move || {
                        let r = run_actor(store, op, data, committed, scratch, seed, actor);
                        sched.done(actor);
                        r
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        steps += sched.steps();
        let deleted: HashSet<String> = ops
            .iter()
            .zip(&results)
            .filter_map(|(op, r)| match (op, r) {
                (Op::Delete(id) | Op::DeleteGc(id, ..), Ok(())) => Some(id.clone()),
                _ => None,
            })
            .collect();
        for ((op, r), data) in ops.iter().zip(&results).zip(&contents) {
            let ctx = format!("seed {seed} round {round}: {op:?}");
            match (op, r) {
                (Op::Backup { id, vol, .. }, Ok(())) => {
                    committed.insert(id.clone(), data.clone());
                    latest[*vol] = Some(id.clone());
                }
                // A parent deleted by a concurrent actor is a clean refusal.
                (Op::Backup { .. }, Err(e)) if e.kind() == "parent_not_found" => {}
                (Op::Delete(id) | Op::DeleteGc(id, ..), Ok(())) => {
                    committed.remove(id);
                }
                // Two deletes of one backup: the second says "deleted".
                (Op::Delete(_), Err(e)) if e.kind() == "backup_deleted" => {}
                (Op::Restore(id), Err(e))
                    if deleted.contains(id)
                        && ["backup_deleted", "backup_not_found", "missing_object"]
                            .contains(&e.kind()) => {}
                (_, Ok(())) => {}
                (_, Err(e)) => panic!("{ctx}: {e}"),
            }
        }
        // Every committed backup restores byte-identically, through a fresh container.
        let check = Container::with_store(mem.clone(), "mem://".into(), false, None).unwrap();
        for (id, data) in &committed {
            let out = scratch.join(format!("check-{seed}"));
            let _ = std::fs::remove_file(&out);
            run_restore(&check, id, &out, TargetMode::New, None)
                .unwrap_or_else(|e| panic!("seed {seed} round {round}: restore {id}: {e}"));
            assert!(
                std::fs::read(&out).unwrap() == *data,
                "seed {seed} round {round}: {id} restored different bytes"
            );
            std::fs::remove_file(&out).unwrap();
        }
    }
    // Delete everything: a collection then leaves no pack behind.
    for id in committed.keys() {
        base.delete_backup(id).unwrap();
    }
    let r = run_gc(&base, &GcOptions::default()).unwrap();
    let left = mem.list("packs/").unwrap();
    assert!(
        left.is_empty(),
        "seed {seed}: {} packs left: {r:?}",
        left.len()
    );
    steps
}

fn run_actor(
    store: Arc<SchedStore>,
    op: &Op,
    data: &[u8],
    committed: &BTreeMap<String, Vec<u8>>,
    scratch: &Path,
    seed: u64,
    actor: usize,
) -> volback::Result<()> {
    let sched = store.sched.clone();
    let c = Container::with_store(store, "mem://".into(), false, None)?;
    match op {
        Op::Backup { id, parent, .. } => {
            let opts = BackupOptions {
                backup_id: Some(id.clone()),
                volume_id: "v".into(),
                parent_id: parent.clone(),
                ..Default::default()
            };
            let source = VolumeSource::Reader {
                name: id.clone(),
                reader: Box::new(std::io::Cursor::new(data.to_vec())),
            };
            run_backup(&c, source, &opts, None).map(|_| ())
        }
        Op::Delete(id) => c.delete_backup(id),
        Op::Gc(opts, after_packs, delay) => {
            if let Some(n) = after_packs {
                // Polled a bounded number of times: the backup may fail.
                for _ in 0..200 {
                    if c.store().list("packs/")?.len() > *n {
                        break;
                    }
                }
            }
            for _ in 0..*delay {
                c.store().head("delay")?;
            }
            run_gc(&c, opts).map(|_| ())
        }
        Op::DeleteGc(id, opts, delay) => {
            for _ in 0..*delay {
                c.store().head("delay")?;
            }
            c.delete_backup(id)?;
            sched.set_weight(actor, 4);
            run_gc(&c, opts).map(|_| ())
        }
        Op::Restore(id) => {
            let out = scratch.join(format!("actor-{seed}-{actor}"));
            let _ = std::fs::remove_file(&out);
            run_restore(&c, id, &out, TargetMode::New, None)?;
            let got = std::fs::read(&out).map_err(|e| volback::Error::io("read", &out, e))?;
            let _ = std::fs::remove_file(&out);
            assert!(
                got == committed[id],
                "seed {seed}: concurrent restore of {id} returned different bytes"
            );
            Ok(())
        }
    }
}
