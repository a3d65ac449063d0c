//! Garbage collection: space given back, nothing a committed backup needs ever removed — alone,
//! under leases, and at the exact points where an incremental's rules matter (the seeded
//! schedules are in `gc_schedules.rs`).

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::backend::Env;
use common::*;
use volback::backup::run_backup;
use volback::backup::source::VolumeSource;
use volback::container::{Container, LeaseGuard, pack_id_of_key};
use volback::gc::{GcOptions, GcReport, run_gc};
use volback::restore::{TargetMode, run_restore};
use volback::store::{MemStore, ObjectStore};

on_all_backends!(
    ten_daily_backups_then_delete_all_but_newest_leaves_at_most_1_15x_a_full,
    a_running_backup_holds_back_the_sweep_and_commits_intact,
    orphans_of_interrupted_backups_are_reclaimed_after_their_lease,
    setup_probes_are_not_leases_and_crashed_ones_are_collected,
);

fn backup(c: &Container, vol: &Path, id: &str, parent: Option<&str>) -> u64 {
    backup_file(c, vol, id, parent).bytes_new
}

fn restores_to(c: &Container, id: &str, expected: &Path, scratch: &Path) {
    let out = scratch.join(format!("restore-{id}.img"));
    let _ = std::fs::remove_file(&out);
    run_restore(c, id, &out, TargetMode::New, None).unwrap_or_else(|e| panic!("restore {id}: {e}"));
    assert_same(expected, &out);
    std::fs::remove_file(&out).unwrap();
}

fn gc(c: &Container) -> GcReport {
    run_gc(c, &GcOptions::default()).unwrap_or_else(|e| panic!("gc: {e}"))
}

/// Bytes of every object in a container.
fn stored(c: &Container) -> u64 {
    c.store().list("").unwrap().iter().map(|o| o.size).sum()
}

fn ten_daily_backups_then_delete_all_but_newest_leaves_at_most_1_15x_a_full(e: &Env) {
    let c = e.c.clone();
    let vol = e.root.join("v.img");
    make_image(&vol, 24 << 20, 7);
    backup(&c, &vol, "day1", None);
    for day in 2..=10 {
        scattered_writes(&vol, 40, 100 * day);
        write_at(&vol, (day * 1_900_000) % (20 << 20), 300_000, 7 * day);
        backup(
            &c,
            &vol,
            &format!("day{day}"),
            Some(&format!("day{}", day - 1)),
        );
    }
    for day in 1..=9 {
        c.delete_backup(&format!("day{day}")).unwrap();
    }
    let before = stored(&c);
    let dry = run_gc(
        &c,
        &GcOptions {
            dry_run: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(stored(&c), before, "a dry run changes nothing");
    assert!(dry.packs_unreferenced + dry.packs_repacked > 0, "{dry:?}");
    let r = gc(&c);
    assert_eq!(r.records_deferred, 0, "{r:?}");
    assert!(r.packs_deleted > 0 && r.bytes_reclaimed > 0, "{r:?}");
    restores_to(&c, "day10", &vol, &e.root);
    assert_eq!(
        restores_to_err(&c, "day3", &e.root),
        "backup_deleted",
        "a deleted backup says so"
    );

    // A fresh full backup of the same volume, in a new container of the same kind.
    let fresh =
        Container::with_store(Arc::new(MemStore::new()), "mem://fresh".into(), true, None).unwrap();
    backup(&fresh, &vol, "full", None);
    let (after, full) = (stored(&c), stored(&fresh));
    eprintln!("before gc {before}, after {after}, fresh full {full}: {r:?}");
    assert!(
        after as f64 <= 1.15 * full as f64,
        "after delete + gc {after} bytes, fresh full {full}"
    );
    // A second run finds nothing more to do.
    let again = gc(&c);
    assert_eq!(again.packs_deleted, 0, "{again:?}");
    assert_eq!(again.packs_unreferenced, 0, "{again:?}");
}

/// A setup check leaves nothing behind; the probe a crashed check left is not a lease (it
/// never holds the sweep back) and is removed by gc once it is an hour old, a fresh one
/// (a check running right now) is not.
fn setup_probes_are_not_leases_and_crashed_ones_are_collected(e: &Env) {
    e.c.check_writable().unwrap();
    assert!(
        e.c.store()
            .list("")
            .unwrap()
            .iter()
            .all(|o| o.key == "config")
    );
    let now = volback::clock::now_unix();
    let (old, fresh) = (
        format!("probes/{}-abc", now - 7200),
        format!("probes/{now}-def"),
    );
    for k in [&old, &fresh] {
        e.c.store()
            .put(k, bytes::Bytes::from_static(b"probe"))
            .unwrap();
    }
    assert!(e.c.list_leases().unwrap().is_empty());
    let r = gc(&e.c);
    assert_eq!(r.probes_removed, 1);
    let left: Vec<String> =
        e.c.store()
            .list("probes/")
            .unwrap()
            .into_iter()
            .map(|o| o.key)
            .collect();
    assert_eq!(left, [fresh]);
}

fn restores_to_err(c: &Container, id: &str, scratch: &Path) -> &'static str {
    let out = scratch.join(format!("restore-{id}.img"));
    run_restore(c, id, &out, TargetMode::New, None)
        .unwrap_err()
        .kind()
}

/// A backup that started before a condemnation holds back the sweep; one that starts after it
/// stores the condemned chunks again (never in a pack with a condemned name); both commit
/// intact and the old packs go once the lease is gone.
fn a_running_backup_holds_back_the_sweep_and_commits_intact(e: &Env) {
    let c = &e.c;
    let vol = e.root.join("v.img");
    make_image(&vol, 6 << 20, 3);
    backup(c, &vol, "old", None);
    c.delete_backup("old").unwrap();
    // A lease as a backup running on another host would hold.
    let lease = LeaseGuard::take(c, "elsewhere", Duration::from_secs(600)).unwrap();
    let r = gc(c);
    assert!(r.packs_unreferenced >= 2, "{r:?}");
    assert_eq!((r.records_deferred, r.packs_deleted), (1, 0), "{r:?}");
    let condemned: HashSet<_> = c
        .load_condemned()
        .unwrap()
        .iter()
        .flat_map(|(_, r)| r.pack_ids().collect::<Vec<_>>())
        .collect();
    // Same volume again: every chunk's only copy is condemned, so all are stored again, and
    // the packs (same chunks in the same order) get names other than the condemned ones.
    let new_bytes = backup(c, &vol, "new", None);
    assert!(new_bytes > 3 << 20, "stored again: {new_bytes}");
    let packs: Vec<_> = c
        .store()
        .list("packs/")
        .unwrap()
        .iter()
        .filter_map(|o| pack_id_of_key(&o.key))
        .collect();
    assert_eq!(packs.len(), condemned.len() * 2, "{packs:?}");
    let r = gc(c);
    assert_eq!((r.records_deferred, r.packs_deleted), (1, 0), "{r:?}");
    drop(lease);
    let r = gc(c);
    assert_eq!(r.records_deferred, 0, "{r:?}");
    assert_eq!(r.packs_deleted, condemned.len(), "{r:?}");
    restores_to(c, "new", &vol, &e.root);
    assert!(c.load_condemned().unwrap().is_empty());
}

/// Packs and a lease left by a backup that died are reclaimed once the lease has expired.
fn orphans_of_interrupted_backups_are_reclaimed_after_their_lease(e: &Env) {
    let c = &e.c;
    let vol = e.root.join("v.img");
    make_image(&vol, 4 << 20, 5);
    let kept = e.root.join("kept.img");
    std::fs::copy(&vol, &kept).unwrap();
    backup(c, &vol, "kept", None);
    let kept_bytes = stored(c);
    write_at(&vol, 0, 2 << 20, 99);
    backup(c, &vol, "orphan", Some("kept"));
    // What a crash just before the commit leaves: packs, segments, and a lease nobody renews
    // (expired an hour ago), plus one still within its time to live.
    c.store().delete("backups/orphan").unwrap();
    let dead = serde_json::json!({"format": "volback-lease", "version": 1, "backup_id": "orphan",
        "host": "gone", "pid": 1, "started_unix": 1, "expires_unix": volback::clock::now_unix() - 3600});
    c.store()
        .put("leases/orphan-dead", dead.to_string().into())
        .unwrap();
    c.write_lease("leases/orphan-live", "orphan", 1, Duration::from_secs(600))
        .unwrap();
    let r = gc(c);
    assert_eq!(
        (
            r.packs_unreferenced,
            r.records_deferred,
            r.packs_deleted,
            r.leases_removed
        ),
        (2, 1, 0, 1),
        "an unexpired lease holds the orphans: {r:?}"
    );
    c.store().delete("leases/orphan-live").unwrap();
    let r = run_gc(
        c,
        &GcOptions {
            clock_skew: Duration::from_secs(60),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(r.packs_deleted, 2, "{r:?}");
    assert!(
        c.store().list("leases/").unwrap().is_empty(),
        "expired lease removed"
    );
    restores_to(c, "kept", &kept, &e.root);
    let after = stored(c);
    assert!(
        after <= kept_bytes + (64 << 10),
        "back to the size before the orphan: {after} vs {kept_bytes}"
    );
}

/// A store that runs `hook` once, just before the first write of a key starting with `prefix`:
/// a concurrent host acting at that exact point of a backup.
struct HookStore {
    inner: Arc<dyn ObjectStore>,
    hook: std::sync::Mutex<Option<(String, Hook)>>,
}

type Hook = Box<dyn FnOnce() + Send>;

impl HookStore {
    fn new(
        inner: Arc<dyn ObjectStore>,
        prefix: &str,
        hook: impl FnOnce() + Send + 'static,
    ) -> Self {
        HookStore {
            inner,
            hook: std::sync::Mutex::new(Some((prefix.into(), Box::new(hook)))),
        }
    }

    fn at(&self, key: &str) {
        let mut h = self.hook.lock().unwrap();
        if h.as_ref().is_some_and(|(p, _)| key.starts_with(p.as_str())) {
            let (_, f) = h.take().unwrap();
            drop(h);
            f();
        }
    }
}

impl ObjectStore for HookStore {
    fn put(&self, key: &str, data: bytes::Bytes) -> volback::Result<()> {
        self.at(key);
        self.inner.put(key, data)
    }
    fn put_if_absent(&self, key: &str, data: bytes::Bytes) -> volback::Result<bool> {
        self.at(key);
        self.inner.put_if_absent(key, data)
    }
    fn get(&self, key: &str) -> volback::Result<bytes::Bytes> {
        self.inner.get(key)
    }
    fn get_range(&self, key: &str, range: std::ops::Range<u64>) -> volback::Result<bytes::Bytes> {
        self.inner.get_range(key, range)
    }
    fn head(&self, key: &str) -> volback::Result<Option<u64>> {
        self.inner.head(key)
    }
    fn list(&self, prefix: &str) -> volback::Result<Vec<volback::store::ObjectMeta>> {
        self.inner.list(prefix)
    }
    fn delete(&self, key: &str) -> volback::Result<()> {
        self.inner.delete(key)
    }
    fn requests(&self) -> volback::store::RequestCounts {
        self.inner.requests()
    }
    fn describe(&self) -> String {
        "hooked".into()
    }
}

/// An incremental of a volume read as a stream (no stamp: the volume is read), through a
/// store that runs `hook` before the first request for `prefix`.
fn incremental_with_hook(
    mem: &Arc<dyn ObjectStore>,
    data: &[u8],
    id: &str,
    parent: &str,
    prefix: &str,
    hook: impl FnOnce() + Send + 'static,
) -> volback::backup::BackupReport {
    let store: Arc<dyn ObjectStore> = Arc::new(HookStore::new(mem.clone(), prefix, hook));
    let c = Container::with_store(store, "mem://".into(), false, None).unwrap();
    let source = VolumeSource::Reader {
        name: id.into(),
        reader: Box::new(std::io::Cursor::new(data.to_vec())),
    };
    run_backup(&c, source, &backup_opts(id, Some(parent)), None)
        .unwrap_or_else(|e| panic!("backup {id}: {e}"))
        .2
}

/// Deletes `id` and collects with no clock-skew allowance, as another host would.
fn delete_and_collect(mem: &Arc<dyn ObjectStore>, id: &str) -> GcReport {
    let c = Container::with_store(mem.clone(), "mem://".into(), false, None).unwrap();
    c.delete_backup(id).unwrap();
    run_gc(&c, &no_skew()).unwrap()
}

fn no_skew() -> GcOptions {
    GcOptions {
        clock_skew: Duration::ZERO,
        ..Default::default()
    }
}

/// The rule an incremental follows when it deduplicates against its parent alone: it stores
/// again every chunk a pending condemnation record exposes. The record here is a real
/// collector's, which marked before the parent was committed (so it condemned the parent's
/// fresh packs) and was held back by the parent's lease. The incremental starts after the
/// record; before it commits, the parent is deleted and a collection sweeps the record: the
/// parent's packs go, and the incremental must not have relied on them.
#[test]
fn an_incremental_stores_again_what_a_pending_record_exposes() {
    let mem: Arc<dyn ObjectStore> = Arc::new(MemStore::new());
    let c = Container::with_store(mem.clone(), "mem://".into(), true, Some(tiny_chunks())).unwrap();
    let data = pseudo_random(256 << 10, 77);
    // The parent's commit waits for a collection that marks without it.
    let gc_store = mem.clone();
    let parent_store: Arc<dyn ObjectStore> =
        Arc::new(HookStore::new(mem.clone(), "backups/parent", move || {
            let c = Container::with_store(gc_store, "mem://".into(), false, None).unwrap();
            let r = run_gc(&c, &no_skew()).unwrap();
            assert!(r.packs_unreferenced > 0 && r.records_deferred == 1, "{r:?}");
        }));
    let pc = Container::with_store(parent_store, "mem://".into(), false, None).unwrap();
    let source = VolumeSource::Reader {
        name: "parent".into(),
        reader: Box::new(std::io::Cursor::new(data.clone())),
    };
    run_backup(&pc, source, &backup_opts("parent", None), None).unwrap();
    let records = c.load_condemned().unwrap();
    assert_eq!(records.len(), 1);
    // The incremental's lease must start after the record (whole seconds).
    std::thread::sleep(Duration::from_millis(1100));
    let sweeper = mem.clone();
    let r = incremental_with_hook(&mem, &data, "child", "parent", "backups/child", move || {
        let r = delete_and_collect(&sweeper, "parent");
        assert!(r.packs_deleted > 0, "the parent's packs are swept: {r:?}");
    });
    assert!(
        r.bytes_new > 200 << 10,
        "the exposed chunks are stored again: {r:?}"
    );
    restores_bytes(&c, "child", &data);
}

/// The other rule: the parent must still exist once the incremental's lease is taken. Here the
/// parent is deleted and collected (record and packs gone) between the moment the incremental
/// read the parent's manifest and its lease: nothing pending shows it, so without the check
/// the incremental would rely on chunks already deleted.
#[test]
fn an_incremental_whose_parent_vanished_before_its_lease_reads_the_index() {
    let mem: Arc<dyn ObjectStore> = Arc::new(MemStore::new());
    let c = Container::with_store(mem.clone(), "mem://".into(), true, Some(tiny_chunks())).unwrap();
    let data = pseudo_random(256 << 10, 78);
    let source = VolumeSource::Reader {
        name: "parent".into(),
        reader: Box::new(std::io::Cursor::new(data.clone())),
    };
    run_backup(&c, source, &backup_opts("parent", None), None).unwrap();
    let sweeper = mem.clone();
    let r = incremental_with_hook(&mem, &data, "child", "parent", "leases/child", move || {
        let r = delete_and_collect(&sweeper, "parent");
        assert!(r.packs_deleted > 0 && r.records_deferred == 0, "{r:?}");
    });
    assert!(r.bytes_new > 200 << 10, "stored again: {r:?}");
    restores_bytes(&c, "child", &data);
}

/// An incremental of an unchanged volume deduplicates against its parent without listing the
/// packs or reading an index segment, and records where its extent list is for the next one.
#[test]
fn an_incremental_reads_neither_the_pack_listing_nor_the_index() {
    let mem: Arc<dyn ObjectStore> = Arc::new(MemStore::new());
    let c = Container::with_store(mem.clone(), "mem://".into(), true, Some(tiny_chunks())).unwrap();
    let data = pseudo_random(512 << 10, 79);
    // Other volumes' data makes the container larger; the incremental must not see it.
    for v in 0..4 {
        let source = VolumeSource::Reader {
            name: format!("other{v}"),
            reader: Box::new(std::io::Cursor::new(pseudo_random(256 << 10, 100 + v))),
        };
        run_backup(&c, source, &backup_opts(&format!("other{v}"), None), None).unwrap();
    }
    let source = VolumeSource::Reader {
        name: "parent".into(),
        reader: Box::new(std::io::Cursor::new(data.clone())),
    };
    run_backup(&c, source, &backup_opts("parent", None), None).unwrap();
    let (parent, _) = c.read_manifest("parent").unwrap();
    assert!(
        parent.extents.iter().all(|r| r.at.is_some()),
        "hints recorded"
    );
    let r = incremental_with_hook(&mem, &data, "child", "parent", "index/", || {
        panic!("the incremental wrote an index segment")
    });
    assert_eq!(r.chunks_new, 0, "{r:?}");
    // The pending-record listing is the only listing; the rest is the manifests, the lease and
    // the parent's extent list.
    assert_eq!(r.requests.list, 1, "{:?}", r.requests);
    eprintln!("{:?}", r.requests);
    let (child, _) = c.read_manifest("child").unwrap();
    assert_eq!(
        child.extents, parent.extents,
        "same extent list, same hints"
    );
    restores_bytes(&c, "child", &data);
}

/// Restores `id` through `c` and compares it with `data`.
fn restores_bytes(c: &Container, id: &str, data: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    run_restore(c, id, &out, TargetMode::New, None).unwrap_or_else(|e| panic!("restore {id}: {e}"));
    assert!(
        std::fs::read(&out).unwrap() == data,
        "{id} restored different bytes"
    );
}

/// A store whose listing says every pack is nearly 2^64 bytes long (a crafted or broken
/// server): the collector's sums saturate instead of wrapping or panicking, and no backup
/// loses a chunk.
#[test]
fn pack_sizes_near_the_limit_of_u64_saturate_the_report() {
    struct Inflated(Arc<dyn ObjectStore>);
    impl ObjectStore for Inflated {
        fn put(&self, key: &str, data: bytes::Bytes) -> volback::Result<()> {
            self.0.put(key, data)
        }
        fn put_if_absent(&self, key: &str, data: bytes::Bytes) -> volback::Result<bool> {
            self.0.put_if_absent(key, data)
        }
        fn get(&self, key: &str) -> volback::Result<bytes::Bytes> {
            self.0.get(key)
        }
        fn get_range(
            &self,
            key: &str,
            range: std::ops::Range<u64>,
        ) -> volback::Result<bytes::Bytes> {
            self.0.get_range(key, range)
        }
        fn head(&self, key: &str) -> volback::Result<Option<u64>> {
            self.0.head(key)
        }
        fn list(&self, prefix: &str) -> volback::Result<Vec<volback::store::ObjectMeta>> {
            let mut listed = self.0.list(prefix)?;
            for o in &mut listed {
                if o.key.starts_with("packs/") {
                    o.size = u64::MAX - 1000;
                }
            }
            Ok(listed)
        }
        fn delete(&self, key: &str) -> volback::Result<()> {
            self.0.delete(key)
        }
        fn requests(&self) -> volback::store::RequestCounts {
            self.0.requests()
        }
        fn describe(&self) -> String {
            "inflated".into()
        }
    }

    let mem: Arc<dyn ObjectStore> = Arc::new(MemStore::new());
    let c = Container::with_store(mem.clone(), "mem://".into(), true, Some(tiny_chunks())).unwrap();
    let data: Vec<Vec<u8>> = (0..3).map(|i| pseudo_random(96 << 10, 90 + i)).collect();
    for (i, d) in data.iter().enumerate() {
        let source = VolumeSource::Reader {
            name: format!("b{i}"),
            reader: Box::new(std::io::Cursor::new(d.clone())),
        };
        run_backup(&c, source, &backup_opts(&format!("b{i}"), None), None).unwrap();
    }
    c.delete_backup("b0").unwrap();
    let lying =
        Container::with_store(Arc::new(Inflated(mem)), "mem://".into(), false, None).unwrap();
    let r = run_gc(&lying, &no_skew()).unwrap();
    assert_eq!(r.bytes_before, u64::MAX, "{r:?}");
    for (i, d) in data.iter().enumerate().skip(1) {
        restores_bytes(&c, &format!("b{i}"), d);
    }
}
