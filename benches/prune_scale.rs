//! How long `prune` takes to decide on a container of many backups.
//!
//! `cargo bench --bench prune_scale [-- N]` (default 1000): N backups of a small volume (each
//! with a few changed blocks, an incremental of the one before) in a filesystem container, one
//! an hour as their creation times say, then `prune` with restic-style rules (24 hourly, 7
//! daily, 4 weekly, 6 monthly), first as a dry run (listing and reading every manifest,
//! deciding) and then for real (deleting what no rule keeps, without the collection).

use std::time::Instant;

use volback::backup::source::VolumeSource;
use volback::backup::{BackupOptions, run_backup};
use volback::container::Container;
use volback::prune::{GroupBy, Policy, PruneOptions, run_prune};

fn main() {
    let n: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1000);
    let dir = tempfile_dir();
    let url = dir.join("c").display().to_string();
    let c = Container::open(&url, true, None).unwrap();
    let vol = dir.join("vol.img");
    let mut data = volback_testkit::testdata::pseudo_random(1 << 20, 7);
    let start = 1_700_000_000u64;
    let t = Instant::now();
    for i in 0..n {
        let at = (i as usize * 4096 * 7) % data.len();
        data[at..at + 64].copy_from_slice(&volback_testkit::testdata::pseudo_random(64, i + 1));
        std::fs::write(&vol, &data).unwrap();
        let created = start + i * 3600;
        let opts = BackupOptions {
            backup_id: Some(format!("b{i:05}")),
            volume_id: "vol".into(),
            parent_id: (i > 0).then(|| format!("b{:05}", i - 1)),
            created: Some((created, volback::clock::rfc3339(created))),
            full_read: true,
            ..Default::default()
        };
        run_backup(&c, VolumeSource::Path(vol.clone()), &opts, None).unwrap();
    }
    println!("{n} backups made in {:.1} s", t.elapsed().as_secs_f64());
    let opts = |dry_run| PruneOptions {
        policy: Policy {
            hourly: Some(24),
            daily: Some(7),
            weekly: Some(4),
            monthly: Some(6),
            ..Policy::default()
        },
        group_by: GroupBy::Volume,
        labels: Default::default(),
        dry_run,
        allow_removing_newest: false,
        gc: None,
    };
    for dry_run in [true, false] {
        let t = Instant::now();
        let r = run_prune(&c, &opts(dry_run)).unwrap();
        println!(
            "prune{}: {} kept, {} removed, in {:.3} s",
            if dry_run { " --dry-run" } else { "" },
            r.kept,
            r.removed.len(),
            t.elapsed().as_secs_f64()
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

fn tempfile_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("volback-prune-scale-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}
