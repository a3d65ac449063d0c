//! Retention: the same survivors as restic's `forget` on the same backup times, and `prune` on
//! a real container deletes exactly what no rule keeps, leaves the survivors restorable and
//! gives the space back.

mod common;

use std::collections::BTreeMap;

use common::backend::Env;
use common::*;
use volback::backup::source::VolumeSource;
use volback::backup::{BackupOptions, run_backup};
use volback::gc::GcOptions;
use volback::prune::{GroupBy, Policy, PruneOptions, Span, decide, run_prune};
use volback::restore::{TargetMode, run_restore};

fn unix(text: &str) -> u64 {
    let t = humantime::parse_rfc3339(text).unwrap();
    t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

fn policy_of(args: &[String]) -> Policy {
    let mut p = Policy::default();
    for pair in args.chunks(2) {
        let (flag, v) = (pair[0].as_str(), pair[1].as_str());
        let n = || Some(v.parse::<u32>().unwrap());
        match flag {
            "--keep-last" => p.last = n(),
            "--keep-hourly" => p.hourly = n(),
            "--keep-daily" => p.daily = n(),
            "--keep-weekly" => p.weekly = n(),
            "--keep-monthly" => p.monthly = n(),
            "--keep-yearly" => p.yearly = n(),
            "--keep-within" => p.within = Some(Span::parse(v).unwrap()),
            other => panic!("flag {other}"),
        }
    }
    p
}

/// `tests/fixtures/retention/restic-forget.json` holds what restic 0.14's `forget` kept of 90
/// backup times spread over two and a half years, for twelve policies
/// (`make_restic_forget.py` regenerates it). volback keeps exactly the same backups.
#[test]
fn the_same_survivors_as_restic_forget() {
    let doc: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/retention/restic-forget.json")).unwrap();
    let times: Vec<(String, u64)> = doc["times"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t.as_str().unwrap().to_string(), unix(t.as_str().unwrap())))
        .collect();
    let cases = doc["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 12);
    for case in cases {
        let args: Vec<String> = serde_json::from_value(case["args"].clone()).unwrap();
        let want: Vec<String> = serde_json::from_value(case["kept"].clone()).unwrap();
        let mut got: Vec<String> = decide(&policy_of(&args), &times)
            .unwrap()
            .into_iter()
            .filter(|d| !d.kept_by.is_empty())
            .map(|d| d.backup_id)
            .collect();
        got.sort();
        assert_eq!(got, want, "{args:?}");
    }
}

fn labelled(id: &str, volume: &str, labels: &[(&str, &str)]) -> BackupOptions {
    BackupOptions {
        backup_id: Some(id.into()),
        volume_id: volume.into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    }
}

/// Three volumes, four backups each (keep-last 2 per volume), and a labelled group: prune
/// deletes exactly the rest, gc gives their space back, every survivor restores.
fn prune_deletes_what_no_rule_keeps_and_gc_reclaims(e: &Env) {
    let mut volumes = BTreeMap::new();
    for v in 0..3u64 {
        let path = e.root.join(format!("vol{v}.img"));
        for b in 0..4u64 {
            make_image(&path, 2 << 20, v * 10 + b);
            let id = format!("v{v}-b{b}");
            let opts = labelled(
                &id,
                &format!("vol{v}"),
                &[("vm", if v < 2 { "a" } else { "b" })],
            );
            run_backup(&e.c, VolumeSource::Path(path.clone()), &opts, None).unwrap();
            volumes.insert(id, std::fs::read(&path).unwrap());
        }
    }
    let opts = PruneOptions {
        policy: Policy {
            last: Some(2),
            ..Policy::default()
        },
        group_by: GroupBy::Volume,
        labels: BTreeMap::new(),
        dry_run: true,
        allow_removing_newest: false,
        gc: Some(GcOptions {
            clock_skew: std::time::Duration::ZERO,
            ..GcOptions::default()
        }),
    };
    // A dry run decides and deletes nothing.
    let dry = run_prune(&e.c, &opts).unwrap();
    let mut removed = dry.removed.clone();
    removed.sort();
    assert_eq!(
        removed,
        ["v0-b0", "v0-b1", "v1-b0", "v1-b1", "v2-b0", "v2-b1"]
    );
    assert_eq!(dry.kept, 6);
    assert_eq!(e.c.list_backups().unwrap().len(), 12);
    let before = e.stored_bytes();
    let r = run_prune(
        &e.c,
        &PruneOptions {
            dry_run: false,
            ..opts.clone()
        },
    )
    .unwrap();
    assert_eq!(r.removed.len(), 6);
    let gc = r.gc.expect("gc ran");
    assert!(gc.bytes_deleted > 0, "{gc:?}");
    assert!(e.stored_bytes() < before * 3 / 4, "space given back");
    for m in e.c.list_backups().unwrap() {
        let m = m.unwrap();
        let out = e.root.join(format!("r-{}.img", m.backup_id));
        run_restore(&e.c, &m.backup_id, &out, TargetMode::New, None).unwrap();
        assert!(
            std::fs::read(&out).unwrap() == volumes[&m.backup_id],
            "{}",
            m.backup_id
        );
    }
    // Grouped by label, filtered: only vm=b's backups are considered, and the newest of the
    // group stays even when no rule keeps it.
    let r = run_prune(
        &e.c,
        &PruneOptions {
            policy: Policy {
                hourly: Some(0),
                ..Policy::default()
            },
            group_by: GroupBy::Label("vm".into()),
            labels: BTreeMap::from([("vm".into(), "b".into())]),
            ..opts.clone()
        },
    )
    .unwrap();
    assert_eq!(r.groups.len(), 1);
    assert_eq!(r.groups[0].group, "b");
    assert_eq!(r.removed, ["v2-b2"]);
    assert_eq!(r.groups[0].backups[0].kept_by, ["newest"]);
    // No rule at all is refused rather than removing everything.
    let err = run_prune(
        &e.c,
        &PruneOptions {
            policy: Policy::default(),
            ..opts
        },
    )
    .unwrap_err();
    assert_eq!(err.kind(), "config");
}

on_all_backends!(prune_deletes_what_no_rule_keeps_and_gc_reclaims);
