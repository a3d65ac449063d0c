//! Incrementals given a change map: the central property is that, given an accurate map, the
//! extent list is the one a full-read incremental makes, extent for extent; and that the
//! backup restores byte for byte. Volumes, edits and maps are random (zero runs short and
//! long, moved and resized volumes, maps that over-report); wrong maps are caught by the
//! sampled check; bad maps are refused before anything is written.

mod common;

use std::path::Path;
use std::sync::Arc;

use proptest::prelude::*;
use volback::backup::BackupOptions;
use volback::backup::source::VolumeSource;
use volback::change_map::MapSource;
use volback::chunker::ChunkerParams;
use volback::container::Container;
use volback::format::config::ContainerConfig;
use volback::format::extent_list::Extent;
use volback::format::manifest::Manifest;
use volback::restore::{TargetMode, run_restore};
use volback::store::{MemStore, ObjectStore};

use common::pseudo_random;

/// Small chunks and zero runs, so that a small volume has many of both.
fn container() -> Container {
    let cfg = ContainerConfig {
        chunker: ChunkerParams {
            min: 512,
            avg: 2048,
            max: 8192,
            zero_min: 8192,
        },
        pack_target: 1 << 20,
        ..Default::default()
    };
    Container::with_store(Arc::new(MemStore::new()), "mem://".into(), true, Some(cfg)).unwrap()
}

fn extents(c: &Container, id: &str) -> Vec<(u64, Extent)> {
    let (m, _): (Manifest, _) = c.read_manifest(id).unwrap();
    let index = c.load_index().unwrap();
    let mut out = Vec::new();
    c.walk_extents(&index, &m, |off, e| {
        out.push((off, *e));
        Ok(())
    })
    .unwrap();
    out
}

fn opts(id: &str, parent: Option<&str>) -> BackupOptions {
    common::backup_opts(id, parent)
}

fn backup(c: &Container, vol: &Path, o: &BackupOptions) -> volback::Result<Manifest> {
    volback::backup::run_backup(c, VolumeSource::Path(vol.into()), o, None).map(|r| r.0)
}

/// A volume of random stretches, zero runs of every length, and repeats.
fn volume(size: usize, seed: u64) -> Vec<u8> {
    let r = pseudo_random(size / 64 + 64, seed);
    let mut v = Vec::with_capacity(size);
    let mut k = 0usize;
    while v.len() < size {
        let pick = r[k % r.len()];
        let n = (u32::from(r[(k + 1) % r.len()]) * 131 + 100) as usize;
        match pick % 6 {
            0..=2 => v.extend(pseudo_random(n, seed ^ k as u64)),
            3 => v.extend(std::iter::repeat_n(0u8, n * (1 + pick as usize % 4))),
            4 => {
                let from = v.len().saturating_sub(n * 3);
                let copy: Vec<u8> = v[from..].iter().take(n).copied().collect();
                v.extend(copy);
            }
            _ => v.extend(std::iter::repeat_n(pick, n / 3 + 1)),
        }
        k += 2;
    }
    v.truncate(size);
    v
}

/// One edit of a volume: where and what.
#[derive(Debug, Clone)]
enum Edit {
    Random { at: f64, len: usize },
    Zero { at: f64, len: usize, say_zero: bool },
    Byte { at: f64 },
}

fn edit_strategy() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (0.0..1.0f64, 1usize..40_000).prop_map(|(at, len)| Edit::Random { at, len }),
        (0.0..1.0f64, 1usize..40_000, any::<bool>()).prop_map(|(at, len, say_zero)| Edit::Zero {
            at,
            len,
            say_zero
        }),
        (0.0..1.0f64).prop_map(|at| Edit::Byte { at }),
    ]
}

/// Applies the edits; returns the map's lines (`offset,length[,zero]`), as accurate as asked.
fn apply(v: &mut [u8], edits: &[Edit], seed: u64) -> Vec<(u64, u64, bool)> {
    let mut ranges: Vec<(u64, u64, bool)> = Vec::new();
    for (i, e) in edits.iter().enumerate() {
        let pos = |at: f64| ((v.len() as f64 * at) as usize).min(v.len().saturating_sub(1));
        let (start, len, zero) = match *e {
            Edit::Random { at, len } => {
                let s = pos(at);
                let len = len.min(v.len() - s);
                v[s..s + len].copy_from_slice(&pseudo_random(len, seed + i as u64));
                (s, len, false)
            }
            Edit::Zero { at, len, say_zero } => {
                let s = pos(at);
                let len = len.min(v.len() - s);
                v[s..s + len].fill(0);
                (s, len, say_zero)
            }
            Edit::Byte { at } => {
                let s = pos(at);
                v[s] = v[s].wrapping_add(1);
                (s, 1, false)
            }
        };
        if len > 0 {
            ranges.push((start as u64, len as u64, zero));
        }
    }
    // A map is sorted and disjoint: overlapping edits become one changed range (zero only if
    // every part said so and nothing later wrote data there).
    ranges.sort_unstable();
    let mut merged: Vec<(u64, u64, bool)> = Vec::new();
    for (s, l, z) in ranges {
        match merged.last_mut() {
            Some(m) if s <= m.0 + m.1 => {
                m.1 = m.1.max(s + l - m.0);
                m.2 = false;
            }
            _ => merged.push((s, l, z)),
        }
    }
    for m in &mut merged {
        if m.2
            && v[m.0 as usize..(m.0 + m.1) as usize]
                .iter()
                .any(|&b| b != 0)
        {
            m.2 = false;
        }
    }
    merged
}

fn csv(ranges: &[(u64, u64, bool)]) -> String {
    ranges
        .iter()
        .map(|(o, l, z)| format!("{o},{l},{z}\n"))
        .collect()
}

/// Backs up `old`, then `new` twice as incrementals: with the map and by a full read. The
/// two extent lists must be the same, and the mapped one must restore `new`.
fn mapped_is_full_read(old: &[u8], new: &[u8], map: &str) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let c = container();
    let vol = dir.path().join("vol.img");
    std::fs::write(&vol, old).unwrap();
    backup(&c, &vol, &opts("p", None)).unwrap();
    std::fs::write(&vol, new).unwrap();
    let mut with_map = opts("m", Some("p"));
    with_map.changes = Some(MapSource::Text {
        name: "map".into(),
        text: map.into(),
        kind: None,
    });
    with_map.map_sample = Some(1.0);
    let m = backup(&c, &vol, &with_map).unwrap();
    prop_assert_eq!(m.read.as_deref(), Some("change-map"));
    let mut full = opts("f", Some("p"));
    full.full_read = true;
    backup(&c, &vol, &full).unwrap();
    let (a, b) = (extents(&c, "m"), extents(&c, "f"));
    prop_assert_eq!(a.len(), b.len());
    prop_assert!(a == b, "extent lists differ");
    let target = dir.path().join("restored.img");
    run_restore(&c, "m", &target, TargetMode::New, None).unwrap();
    prop_assert!(std::fs::read(&target).unwrap() == new, "restore differs");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn an_accurate_map_makes_the_full_read_extent_list(
        size in 20_000usize..400_000,
        seed in any::<u64>(),
        edits in prop::collection::vec(edit_strategy(), 0..8),
        grow in prop_oneof![Just(0i64), -30_000i64..30_000],
        spurious in prop::collection::vec((0.0..1.0f64, 1u64..20_000), 0..3),
    ) {
        let old = volume(size, seed);
        let mut new = old.clone();
        let mut ranges = apply(&mut new, &edits, seed);
        // A resized volume: the map covers the new size only; the new tail is read anyway.
        let new_len = (size as i64 + grow).max(1) as usize;
        if new_len > new.len() {
            let tail = volume(new_len - new.len(), seed ^ 7);
            new.extend(tail);
        }
        new.truncate(new_len);
        ranges.retain_mut(|r| {
            r.1 = r.1.min((new_len as u64).saturating_sub(r.0));
            r.0 < new_len as u64 && r.1 > 0
        });
        // Over-reporting (a range that did not change) is allowed.
        for (at, len) in spurious {
            let s = (new_len as f64 * at) as u64;
            let l = len.min(new_len as u64 - s);
            if l > 0 && ranges.iter().all(|r| s + l <= r.0 || s >= r.0 + r.1) {
                ranges.push((s, l, false));
            }
        }
        ranges.sort_unstable();
        mapped_is_full_read(&old, &new, &csv(&ranges))?;
    }
}

#[test]
fn an_empty_map_and_an_unchanged_volume_reuse_everything() {
    let old = volume(300_000, 3);
    mapped_is_full_read(&old, &old, "").unwrap();
}

#[test]
fn a_map_that_misses_a_change_is_caught_by_the_sample() {
    let dir = tempfile::tempdir().unwrap();
    let c = container();
    let vol = dir.path().join("vol.img");
    let old = volume(400_000, 11);
    std::fs::write(&vol, &old).unwrap();
    backup(&c, &vol, &opts("p", None)).unwrap();
    let mut new = old.clone();
    // Two changes; the map names only the first.
    new[10_000..12_000].copy_from_slice(&pseudo_random(2000, 5));
    new[300_000..300_500].copy_from_slice(&pseudo_random(500, 6));
    std::fs::write(&vol, &new).unwrap();
    let map = "10000,2000\n";
    let with = |id: &str, sample: f64, fallback: bool| {
        let mut o = opts(id, Some("p"));
        o.changes = Some(MapSource::Text {
            name: "map".into(),
            text: map.into(),
            kind: None,
        });
        o.map_sample = Some(sample);
        o.map_fallback = fallback;
        o
    };
    // Every reused chunk checked: caught, nothing committed.
    match backup(&c, &vol, &with("a", 1.0, false)) {
        Err(volback::Error::ChangeMapMissed { offset, .. }) => {
            assert!(offset <= 300_000 && offset + 8192 >= 300_000, "{offset}");
        }
        other => panic!("{other:?}"),
    }
    assert!(c.read_manifest("a").is_err());
    // With the fallback, the backup reads the whole volume and is right.
    let m = backup(&c, &vol, &with("b", 1.0, true)).unwrap();
    assert_eq!(m.read, None);
    let target = dir.path().join("b.img");
    run_restore(&c, "b", &target, TargetMode::New, None).unwrap();
    assert!(std::fs::read(&target).unwrap() == new);
    // Without the check, the map is believed: the backup restores the old bytes there.
    let m = backup(&c, &vol, &with("c", 0.0, false)).unwrap();
    assert_eq!(m.read.as_deref(), Some("change-map"));
    let target = dir.path().join("c.img");
    run_restore(&c, "c", &target, TargetMode::New, None).unwrap();
    let got = std::fs::read(&target).unwrap();
    assert_eq!(got[300_000..300_500], old[300_000..300_500]);
}

#[test]
fn bad_maps_are_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemStore::new());
    let c = Container::with_store(store.clone(), "mem://".into(), true, None).unwrap();
    let vol = dir.path().join("vol.img");
    std::fs::write(&vol, volume(100_000, 1)).unwrap();
    backup(&c, &vol, &opts("p", None)).unwrap();
    let before = store.list("").unwrap();
    for (text, kind) in [
        ("8192,4096\n0,4096\n", "change_map"), // unsorted
        ("0,8192\n4096,4096\n", "change_map"), // overlapping
        ("98304,8192\n", "change_map"),        // past the end
        ("0,x\n", "change_map"),               // unreadable
        (
            r#"{"block_size": 4096, "extents": [{"offset": 10, "length": 4096}]}"#,
            "change_map",
        ),
        (
            "<superblock data_block_size=\"100\"><diff/></superblock>",
            "change_map",
        ),
    ] {
        let mut o = opts("x", Some("p"));
        o.changes = Some(MapSource::Text {
            name: "map".into(),
            text: text.into(),
            kind: None,
        });
        let e = backup(&c, &vol, &o).unwrap_err();
        assert_eq!(e.kind(), kind, "{text}: {e}");
    }
    let mut o = opts("x", None);
    o.changes = Some(MapSource::File {
        path: dir.path().join("no-such-map"),
        kind: None,
    });
    assert_eq!(backup(&c, &vol, &o).unwrap_err().kind(), "config");
    let mut o = opts("x", Some("p"));
    o.changes = Some(MapSource::File {
        path: dir.path().join("no-such-map"),
        kind: None,
    });
    assert_eq!(backup(&c, &vol, &o).unwrap_err().kind(), "change_map");
    assert_eq!(
        store.list("").unwrap(),
        before,
        "a refused map wrote something"
    );
}

#[test]
fn the_full_read_policy_counts_backups_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let c = container();
    let vol = dir.path().join("vol.img");
    let mut v = volume(200_000, 9);
    std::fs::write(&vol, &v).unwrap();
    backup(&c, &vol, &opts("b0", None)).unwrap();
    let mut reads = Vec::new();
    for i in 1..=5 {
        v[i * 1000] ^= 1;
        std::fs::write(&vol, &v).unwrap();
        let mut o = opts(&format!("b{i}"), Some(&format!("b{}", i - 1)));
        o.changes = Some(MapSource::Text {
            name: "map".into(),
            text: format!("{},1\n", i * 1000),
            kind: None,
        });
        o.full_read_every = Some(2);
        let m = backup(&c, &vol, &o).unwrap();
        reads.push((m.read.clone(), m.since_full_read.map(|s| s.backups)));
    }
    let map = || (Some("change-map".to_string()), Some(1));
    let map2 = (Some("change-map".to_string()), Some(2));
    assert_eq!(reads, vec![map(), map2.clone(), (None, None), map(), map2]);
}

#[test]
fn only_the_changes_and_a_few_chunks_around_them_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let c = container();
    let vol = dir.path().join("vol.img");
    let old = pseudo_random(4 << 20, 21);
    std::fs::write(&vol, &old).unwrap();
    backup(&c, &vol, &opts("p", None)).unwrap();
    let mut new = old.clone();
    new[1 << 20..(1 << 20) + 4096].fill(7);
    new[3 << 20..(3 << 20) + 100].fill(9);
    std::fs::write(&vol, &new).unwrap();
    let mut o = opts("m", Some("p"));
    o.changes = Some(MapSource::Text {
        name: "map".into(),
        text: format!("{},4096\n{},100\n", 1 << 20, 3 << 20),
        kind: None,
    });
    let (m, _, report) =
        volback::backup::run_backup(&c, VolumeSource::Path(vol.clone()), &o, None).unwrap();
    let used = m.change_map.clone().unwrap();
    assert_eq!((used.ranges, used.changed_bytes), (2, 4196));
    assert_eq!(report.bytes_read, used.bytes_read);
    // Per change: the block before the window, the window's chunks, one read step past it.
    assert!(used.bytes_read < 2 * 100 * 1024, "{used:?}");
    assert!(used.reused_chunks > m.stats.chunks_total - 20, "{used:?}");
    let mut full = opts("f", Some("p"));
    full.full_read = true;
    backup(&c, &vol, &full).unwrap();
    assert!(extents(&c, "m") == extents(&c, "f"));
}

/// Runs a tool, panicking with its output if it fails.
fn tool(cmd: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd} is needed (scripts/test.sh installs it): {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Backs up `old` then `new` with `map` and by a full read; the two must agree, and the mapped
/// one must have read less than the volume.
fn check_map_source(dir: &Path, old: &Path, new: &Path, map: MapSource) -> Manifest {
    let c = container();
    let vol = dir.join("vol.img");
    std::fs::copy(old, &vol).unwrap();
    backup(&c, &vol, &opts("p", None)).unwrap();
    std::fs::copy(new, &vol).unwrap();
    let mut o = opts("m", Some("p"));
    o.changes = Some(map);
    let m = backup(&c, &vol, &o).unwrap();
    let mut full = opts("f", Some("p"));
    full.full_read = true;
    backup(&c, &vol, &full).unwrap();
    assert!(extents(&c, "m") == extents(&c, "f"), "extent lists differ");
    let used = m.change_map.clone().unwrap();
    assert!(used.bytes_read < m.size / 2, "{used:?}");
    m
}

#[test]
fn a_qemu_dirty_bitmap_read_over_nbd_is_a_change_map() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let disk = d.join("disk.qcow2");
    let disk_s = disk.to_str().unwrap();
    tool("qemu-img", &["create", "-q", "-f", "qcow2", disk_s, "8M"]);
    let mut fill = vec![];
    for k in 0..8 {
        fill.push(format!("write -P {} {}M 1M", k + 1, k));
    }
    let mut args: Vec<&str> = fill.iter().flat_map(|c| ["-c", c.as_str()]).collect();
    args.push(disk_s);
    tool("qemu-io", &args);
    let old = d.join("old.raw");
    tool(
        "qemu-img",
        &["convert", "-O", "raw", disk_s, old.to_str().unwrap()],
    );
    // The bitmap records every write from now on: the VM's day.
    tool("qemu-img", &["bitmap", "--add", disk_s, "day"]);
    tool(
        "qemu-io",
        &[
            "-c",
            "write -P 77 1M 64k",
            "-c",
            "write -P 99 5000k 4k",
            "-c",
            "write -z 7M 128k",
            disk_s,
        ],
    );
    let new = d.join("new.raw");
    tool(
        "qemu-img",
        &["convert", "-O", "raw", disk_s, new.to_str().unwrap()],
    );
    let sock = d.join("nbd.sock");
    let mut server = std::process::Command::new("qemu-nbd")
        .args([
            "-r",
            "-t",
            "-B",
            "day",
            "-f",
            "qcow2",
            "-k",
            sock.to_str().unwrap(),
            disk_s,
        ])
        .spawn()
        .expect("qemu-nbd (Debian's qemu-utils) is needed");
    for _ in 0..100 {
        if sock.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let uri = format!("nbd+unix:///?socket={}", sock.display());
    let map = volback::change_map::ChangeMap::load(&MapSource::Nbd {
        uri: uri.clone(),
        bitmap: "day".into(),
    });
    // A bitmap the disk does not have is refused by name.
    let missing = volback::change_map::ChangeMap::load(&MapSource::Nbd {
        uri: uri.clone(),
        bitmap: "nope".into(),
    });
    let m = check_map_source(
        d,
        &old,
        &new,
        MapSource::Nbd {
            uri,
            bitmap: "day".into(),
        },
    );
    server.kill().unwrap();
    let _ = server.wait();
    let map = map.unwrap();
    assert_eq!(map.volume_size, Some(8 << 20));
    // The bitmap's 64 KiB granularity: three dirty stretches.
    let ranges: Vec<(u64, u64)> = map.changes.iter().map(|c| (c.offset, c.len)).collect();
    assert_eq!(
        ranges,
        vec![(1 << 20, 65536), (78 * 65536, 65536), (7 << 20, 131072)]
    );
    assert_eq!(m.change_map.unwrap().kind, "nbd-dirty-bitmap");
    match missing {
        Err(volback::Error::ChangeMap { reason, .. }) => {
            assert!(reason.contains("nope"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn thin_delta_output_of_a_real_thin_pool_metadata_is_a_change_map() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Two thin devices sharing most of their 64 KiB blocks, as a snapshot and its origin a
    // day later: block b of device 1 maps data block b; device 2 remaps some, drops some and
    // maps some that device 1 did not have.
    const BLOCKS: u64 = 64;
    let dev1: Vec<Option<u64>> = (0..BLOCKS).map(|b| (b % 16 != 15).then_some(b)).collect();
    let mut dev2 = dev1.clone();
    for (b, to) in [
        (3, Some(200)),
        (4, Some(201)),
        (20, None),
        (31, Some(202)),
        (40, Some(203)),
    ] {
        dev2[b] = to;
    }
    let mappings = |dev: &[Option<u64>]| -> String {
        dev.iter()
            .enumerate()
            .filter_map(|(b, m)| {
                m.map(|data| {
                    format!(
                        "<single_mapping origin_block=\"{b}\" data_block=\"{data}\" time=\"0\"/>\n"
                    )
                })
            })
            .collect()
    };
    let xml = format!(
        "<superblock uuid=\"\" time=\"1\" transaction=\"1\" flags=\"0\" version=\"2\" data_block_size=\"128\" nr_data_blocks=\"1024\">\n\
         <device dev_id=\"1\" mapped_blocks=\"{}\" transaction=\"0\" creation_time=\"0\" snap_time=\"0\">\n{}</device>\n\
         <device dev_id=\"2\" mapped_blocks=\"{}\" transaction=\"0\" creation_time=\"0\" snap_time=\"1\">\n{}</device>\n\
         </superblock>\n",
        dev1.iter().flatten().count(),
        mappings(&dev1),
        dev2.iter().flatten().count(),
        mappings(&dev2)
    );
    let xml_path = d.join("meta.xml");
    std::fs::write(&xml_path, xml).unwrap();
    let meta = d.join("meta.bin");
    std::fs::write(&meta, vec![0u8; 8 << 20]).unwrap();
    tool(
        "thin_restore",
        &[
            "-i",
            xml_path.to_str().unwrap(),
            "-o",
            meta.to_str().unwrap(),
        ],
    );
    let delta = tool(
        "thin_delta",
        &["--snap1", "1", "--snap2", "2", meta.to_str().unwrap()],
    );
    // The devices' contents: a data block's bytes are its own; unmapped blocks read as zeros.
    let image = |dev: &[Option<u64>]| -> Vec<u8> {
        dev.iter()
            .flat_map(|m| match m {
                Some(data) => pseudo_random(65536, 1000 + data),
                None => vec![0u8; 65536],
            })
            .collect()
    };
    let (old, new) = (d.join("old.img"), d.join("new.img"));
    std::fs::write(&old, image(&dev1)).unwrap();
    std::fs::write(&new, image(&dev2)).unwrap();
    let delta_path = d.join("delta.xml");
    std::fs::write(&delta_path, &delta).unwrap();
    let m = check_map_source(
        d,
        &old,
        &new,
        MapSource::File {
            path: delta_path,
            kind: None,
        },
    );
    let used = m.change_map.unwrap();
    assert_eq!((used.kind.as_str(), used.ranges), ("thin-delta", 4));
    assert_eq!(used.changed_bytes, 5 * 65536);
}

#[test]
fn rbd_diff_between_two_snapshots_of_a_real_ceph_image_is_a_change_map() {
    let rgw = volback_testkit::ceph::Rgw::shared();
    let conf = rgw.conf();
    let conf = conf.to_str().unwrap();
    let rbd = |args: &[&str]| {
        let mut all = vec!["-c", conf];
        all.extend_from_slice(args);
        tool("rbd", &all)
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pool = "volback-maps";
    let _ = std::process::Command::new("ceph")
        .args(["-c", conf, "osd", "pool", "create", pool, "8"])
        .output();
    rbd(&["pool", "init", pool]);
    let image = format!("{pool}/vol{}", std::process::id());
    let first = d.join("first.raw");
    std::fs::write(&first, volume(8 << 20, 31)).unwrap();
    rbd(&["import", first.to_str().unwrap(), &image]);
    rbd(&["snap", "create", &format!("{image}@monday")]);
    // Scattered 4 KiB writes through librbd, then the next snapshot.
    rbd(&[
        "bench",
        "--io-type",
        "write",
        "--io-size",
        "4096",
        "--io-total",
        "131072",
        "--io-pattern",
        "rand",
        &image,
    ]);
    rbd(&["snap", "create", &format!("{image}@tuesday")]);
    let diff = rbd(&[
        "diff",
        "--from-snap",
        "monday",
        &format!("{image}@tuesday"),
        "--format",
        "json",
    ]);
    let (old, new) = (d.join("old.raw"), d.join("new.raw"));
    rbd(&["export", &format!("{image}@monday"), old.to_str().unwrap()]);
    rbd(&["export", &format!("{image}@tuesday"), new.to_str().unwrap()]);
    let diff_path = d.join("diff.json");
    std::fs::write(&diff_path, &diff).unwrap();
    let m = check_map_source(
        d,
        &old,
        &new,
        MapSource::File {
            path: diff_path,
            kind: None,
        },
    );
    let used = m.change_map.unwrap();
    assert_eq!(used.kind, "rbd-diff");
    // What rbd bench wrote (its threads may overshoot the total a little), in 4 KiB extents.
    assert!(
        used.ranges >= 1 && used.changed_bytes <= 1 << 20,
        "{used:?}"
    );
    assert!(std::fs::read(&old).unwrap() != std::fs::read(&new).unwrap());
}

/// A volume of 1 MiB of data, `zeros` MiB of zeros and 1 MiB of data, backed up; then 64 KiB
/// of fresh data written at each of `at` (inside the zeros) and backed up with a map naming
/// them. The mapped backup must read less than `bound` bytes and match a full read.
fn changes_in_zeros(zeros: usize, at: &[usize], bound: u64) {
    let dir = tempfile::tempdir().unwrap();
    let c = container();
    let vol = dir.path().join("vol.img");
    let mut old = pseudo_random(1 << 20, 41);
    old.extend(vec![0u8; zeros << 20]);
    old.extend(pseudo_random(1 << 20, 42));
    std::fs::write(&vol, &old).unwrap();
    backup(&c, &vol, &opts("p", None)).unwrap();
    let mut new = old.clone();
    let mut map = String::new();
    for (k, &a) in at.iter().enumerate() {
        new[a..a + 65536].copy_from_slice(&pseudo_random(65536, 43 + k as u64));
        map += &format!("{a},65536\n");
    }
    std::fs::write(&vol, &new).unwrap();
    let mut o = opts("m", Some("p"));
    o.changes = Some(MapSource::Text {
        name: "map".into(),
        text: map,
        kind: None,
    });
    let m = backup(&c, &vol, &o).unwrap();
    let used = m.change_map.unwrap();
    assert!(used.bytes_read < bound, "{used:?}");
    let mut full = opts("f", Some("p"));
    full.full_read = true;
    backup(&c, &vol, &full).unwrap();
    assert!(extents(&c, "m") == extents(&c, "f"));
}

#[test]
fn a_change_inside_a_long_zero_run_reads_only_itself() {
    // The change, and the blocks around it: the zeros on either side are the parent's.
    changes_in_zeros(8, &[4 << 20], 256 << 10);
}

#[test]
fn changes_between_zero_runs_read_only_themselves() {
    // Two changes inside one long zero run: after the first, the window's resynchronisation
    // passes the parent's zero extent; the zeros after the second are still not read.
    changes_in_zeros(16, &[3 << 20, 9 << 20], 512 << 10);
}

/// A parent whose manifest claims more bytes than its extent list covers is refused as corrupt,
/// naming that manifest, before anything is committed.
#[test]
fn a_parent_shorter_than_its_manifest_says_is_corrupt() {
    let store = Arc::new(MemStore::new());
    let c = Container::with_store(store.clone(), "mem://".into(), true, None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let vol = dir.path().join("v.img");
    let data = pseudo_random(1 << 20, 11);
    std::fs::write(&vol, &data).unwrap();
    backup(&c, &vol, &opts("p", None)).unwrap();
    // The manifest now says the volume was twice as long as its extents are.
    let mut m: serde_json::Value =
        serde_json::from_slice(&store.get("backups/p").unwrap()).unwrap();
    m["size"] = serde_json::json!(2u64 << 20);
    store.delete("backups/p").unwrap();
    store
        .put("backups/p", serde_json::to_vec(&m).unwrap().into())
        .unwrap();
    let mut grown = data.clone();
    grown.extend(pseudo_random(1 << 20, 12));
    std::fs::write(&vol, &grown).unwrap();
    let mut o = opts("next", Some("p"));
    o.changes = Some(MapSource::Text {
        name: "map".into(),
        text: "4096,4096\n".into(),
        kind: None,
    });
    let err = backup(&c, &vol, &o).expect_err("a parent shorter than its manifest");
    assert_eq!(err.kind(), "corrupt", "{err}");
    assert!(err.to_string().contains("backups/p"), "{err}");
    assert!(store.get("backups/next").is_err());
}
