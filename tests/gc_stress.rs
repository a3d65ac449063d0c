//! Multi-process stress: several `volback` processes back up and delete in one container while
//! `volback gc` runs in a loop, on the filesystem, on the local S3 server and on Ceph's RADOS
//! Gateway (one bucket, as several backup hosts share one); then every backup that reported
//! success and was not deleted is restored and compared.

#[path = "common/cli.rs"]
mod cli_env;
mod common;

use cli_env::CliExt;

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::backend::{Env, hash_file, json_of};
use common::*;

on_both_backends!(processes_backing_up_deleting_and_collecting_at_once);

mod rgw {
    #[test]
    fn processes_backing_up_deleting_and_collecting_at_once() {
        super::processes_backing_up_deleting_and_collecting_at_once(&super::Env::rgw());
    }
}

/// How long the workers run (VOLBACK_STRESS_SECS overrides).
fn duration() -> Duration {
    Duration::from_secs(
        std::env::var("VOLBACK_STRESS_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(10),
    )
}

fn processes_backing_up_deleting_and_collecting_at_once(e: &Env) {
    let url = e.url.as_str();
    let stop = AtomicBool::new(false);
    // Backup id → BLAKE3 of the volume it was taken of, for every backup reported committed.
    let committed: Mutex<BTreeMap<String, String>> = Mutex::new(BTreeMap::new());
    let deleted: Mutex<HashSet<String>> = Mutex::new(HashSet::new());
    // Collections run while the workers ran, and the packs they condemned and deleted.
    let gc_runs = Mutex::new((0u32, 0u64, 0u64));
    let deadline = Instant::now() + duration();
    std::thread::scope(|s| {
        for w in 0..3u64 {
            let (committed, stop) = (&committed, &stop);
            s.spawn(move || {
                let vol = e.root.join(format!("w{w}.img"));
                make_image(&vol, 3 << 20, w);
                let mut parent: Option<String> = None;
                let mut n = 0u64;
                while Instant::now() < deadline {
                    n += 1;
                    scattered_writes(&vol, 8, w * 1000 + n);
                    let id = format!("w{w}-{n}");
                    let v = vol.display().to_string();
                    let mut args = vec![
                        "backup",
                        "--container",
                        url,
                        "--volume",
                        &v,
                        "--backup-id",
                        &id,
                        "--volume-id",
                        "vol",
                        "--json",
                    ];
                    if let Some(p) = &parent {
                        args.extend(["--parent", p]);
                    }
                    let out = e.cli(&args);
                    if out.status.success() {
                        committed
                            .lock()
                            .unwrap()
                            .insert(id.clone(), hash_file(&vol));
                        parent = Some(id);
                    } else {
                        let j = json_of(&out);
                        // The parent was deleted by the deleter: the next backup is a full one.
                        assert_eq!(j["error"], "parent_not_found", "backup {id}: {j}");
                        parent = None;
                    }
                }
                stop.store(true, Ordering::Relaxed);
            });
        }
        {
            let (committed, deleted) = (&committed, &deleted);
            s.spawn(move || {
                let mut k = 0usize;
                while Instant::now() < deadline {
                    k += 1;
                    let ids: Vec<String> = committed.lock().unwrap().keys().cloned().collect();
                    // Delete about two in three backups, oldest first, keeping the newest.
                    let Some(id) = ids
                        .iter()
                        .filter(|id| !deleted.lock().unwrap().contains(*id))
                        .nth(k % 2)
                    else {
                        std::thread::sleep(Duration::from_millis(50));
                        continue;
                    };
                    let out = e.cli(&["delete", "--container", url, "--backup-id", id, "--json"]);
                    assert!(out.status.success(), "delete {id}: {}", json_of(&out));
                    deleted.lock().unwrap().insert(id.clone());
                    std::thread::sleep(Duration::from_millis(100));
                }
            });
        }
        {
            let gc_runs = &gc_runs;
            s.spawn(move || {
                while Instant::now() < deadline {
                    let out = e.cli(&["gc", "--container", url, "--clock-skew", "0", "--json"]);
                    assert!(out.status.success(), "gc: {}", json_of(&out));
                    let j = json_of(&out);
                    let count = |k: &str| j[k].as_u64().unwrap_or_else(|| panic!("{k}: {j}"));
                    let mut runs = gc_runs.lock().unwrap();
                    runs.0 += 1;
                    runs.1 += count("packs_unreferenced") + count("packs_repacked");
                    runs.2 += count("packs_deleted");
                }
            });
        }
    });
    // Backups that ended with the deadline may still hold expired-free leases: none left now.
    let out = e.cli(&["gc", "--container", url, "--clock-skew", "0", "--json"]);
    assert!(out.status.success(), "final gc: {}", json_of(&out));
    let last = json_of(&out);

    let committed = committed.into_inner().unwrap();
    let deleted = deleted.into_inner().unwrap();
    let live: Vec<_> = committed
        .iter()
        .filter(|(id, _)| !deleted.contains(*id))
        .collect();
    let (runs, condemned, swept) = gc_runs.into_inner().unwrap();
    eprintln!(
        "{} backups committed, {} deleted, {runs} gc runs (packs condemned {condemned}, \
         deleted {swept}); last gc: {last}",
        committed.len(),
        deleted.len(),
    );
    assert!(committed.len() >= 6 && !deleted.is_empty() && !live.is_empty());
    // The collector really ran alongside the writers and gave space back: otherwise the
    // restores below would prove nothing about collecting while backups run.
    assert!(
        runs >= 2,
        "only {runs} collections ran alongside the workers"
    );
    let last_condemned = last["packs_unreferenced"].as_u64().unwrap_or(0)
        + last["packs_repacked"].as_u64().unwrap_or(0);
    assert!(
        condemned > 0,
        "no collection condemned a pack while backups ran (last gc: {last})"
    );
    assert!(
        swept + last["packs_deleted"].as_u64().unwrap_or(0) > 0,
        "no pack was ever deleted ({last_condemned} condemned by the last gc)"
    );
    for (id, hash) in live {
        let out_path = e.root.join(format!("restore-{id}.img"));
        let out = e.cli_restore(url, id, &out_path);
        assert!(out.status.success(), "restore {id}: {}", json_of(&out));
        assert_eq!(
            &hash_file(&out_path),
            hash,
            "backup {id} restored different bytes"
        );
        std::fs::remove_file(&out_path).unwrap();
    }
    // A deleted backup says so.
    if let Some(id) = deleted.iter().next() {
        let out = e.cli_restore(url, id, &e.root.join("gone.img"));
        assert_eq!(json_of(&out)["error"], "backup_deleted");
    }
}
