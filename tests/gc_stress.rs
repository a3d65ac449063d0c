//! Multi-process stress: several `volback` processes back up and delete in one container while
//! `volback gc` runs in a loop, on the filesystem and on the local S3 server; then every backup
//! that reported success and was not deleted is restored and compared.
//!
//! On Ceph's RADOS Gateway (one bucket, as several backup hosts share one), and on s3s-fs, the
//! hosts also meet faults: `hosts_with_faults` gives each process its own scratch directory,
//! kills some of them mid-operation (SIGKILL) and kills and restarts the server while they run;
//! then every committed backup restores byte for byte and `verify --read-data` finds nothing
//! damaged.

#[path = "common/cli.rs"]
mod cli_env;
mod common;

use cli_env::CliExt;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::backend::{Env, hash_file, json_of};
use common::*;

on_both_backends!(processes_backing_up_deleting_and_collecting_at_once);

mod rgw {
    use super::*;

    #[test]
    fn hosts_with_faults() {
        let e = Env::rgw();
        let rgw = volback_testkit::ceph::Rgw::shared();
        super::hosts_with_faults(&e.url, &e.cli_env(), &e.root, &|| rgw.restart_gateway());
    }
}

/// The same on s3s-fs, restarted by killing it and starting it again on its port.
#[test]
fn hosts_with_faults_on_s3s_fs() {
    let mut e = Env::s3();
    let env = e.cli_env();
    let server = Mutex::new(e.server.take().expect("an S3 server"));
    hosts_with_faults(&e.url, &env, &e.root, &|| {
        let mut s = server.lock().unwrap();
        let (root, port) = (s.root.clone(), s.port);
        s.stop();
        *s = common::backend::S3Server::start_on(&root, port);
    });
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

/// Runs `volback` as host `host` would: its own scratch directory (`TMPDIR`), the store's
/// credentials from `env`. With `kill_after`, the process is killed (SIGKILL) if it is still
/// running then: `None` means it was.
fn run_host(
    root: &Path,
    env: &[(String, String)],
    host: usize,
    args: &[&str],
    kill_after: Option<Duration>,
) -> Option<Output> {
    let tmp = root.join(format!("host{host}-tmp"));
    std::fs::create_dir_all(&tmp).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_volback"))
        .args(args)
        .envs(env.iter().cloned())
        .env("TMPDIR", &tmp)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(after) = kill_after {
        let deadline = Instant::now() + after;
        while child.try_wait().unwrap().is_none() {
            if Instant::now() >= deadline {
                child.kill().unwrap();
                child.wait().unwrap();
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    Some(child.wait_with_output().unwrap())
}

/// The error kind a failed `--json` command reported.
fn error_kind(out: &Output) -> String {
    json_of(out)["error"].as_str().unwrap_or("").to_string()
}

/// Five hosts on one container while the server is killed and restarted once: three back up
/// volumes of their own and, in turns, one volume they share (incrementals chained across
/// hosts), some killed mid-backup; one deletes and prunes; one restores and compares; one
/// collects garbage in a loop. Then every backup reported committed and not deleted restores
/// byte for byte and `verify --read-data` is clean.
fn hosts_with_faults(
    url: &str,
    env: &[(String, String)],
    root: &Path,
    restart: &(dyn Fn() + Sync),
) {
    let run = |host, args: &[&str]| run_host(root, env, host, args, None).unwrap();
    let shared = root.join("shared.img");
    make_image(&shared, 4 << 20, 99);
    let shared_hash = hash_file(&shared);
    let committed: Mutex<BTreeMap<String, String>> = Mutex::new(BTreeMap::new());
    let deleted: Mutex<HashSet<String>> = Mutex::new(HashSet::new());
    let shared_parent: Mutex<Option<String>> = Mutex::new(None);
    let counts = Mutex::new(BTreeMap::<&str, u32>::new());
    let count = |k| *counts.lock().unwrap().entry(k).or_default() += 1;
    let start = Instant::now();
    let deadline = start + duration();
    std::thread::scope(|s| {
        for h in 0..3usize {
            let (committed, shared_parent, shared, shared_hash) =
                (&committed, &shared_parent, &shared, &shared_hash);
            let count = &count;
            s.spawn(move || {
                let vol = root.join(format!("h{h}.img"));
                make_image(&vol, 3 << 20, h as u64);
                let mut parent: Option<String> = None;
                let mut n = 0u64;
                while Instant::now() < deadline {
                    n += 1;
                    let on_shared = n.is_multiple_of(3);
                    let id = format!("h{h}-{n}");
                    let (path, vid, hash) = if on_shared {
                        (shared.clone(), "shared".to_string(), shared_hash.clone())
                    } else {
                        scattered_writes(&vol, 8, h as u64 * 1000 + n);
                        (vol.clone(), format!("v{h}"), hash_file(&vol))
                    };
                    let p = if on_shared {
                        shared_parent.lock().unwrap().clone()
                    } else {
                        parent.clone()
                    };
                    let v = path.display().to_string();
                    let mut args = vec![
                        "backup",
                        "--container",
                        url,
                        "--volume",
                        &v,
                        "--backup-id",
                        &id,
                        "--volume-id",
                        &vid,
                        "--json",
                    ];
                    if let Some(p) = &p {
                        args.extend(["--parent", p]);
                    }
                    // One backup in four is killed somewhere between its start and its commit.
                    let kill = (n * 7 + h as u64 * 3)
                        .is_multiple_of(4)
                        .then(|| Duration::from_millis(20 + (n * 131 + h as u64 * 61) % 400));
                    let Some(out) = run_host(root, env, h, &args, kill) else {
                        count("backups killed");
                        continue;
                    };
                    if out.status.success() {
                        count("backups committed");
                        committed.lock().unwrap().insert(id.clone(), hash);
                        if on_shared {
                            *shared_parent.lock().unwrap() = Some(id);
                        } else {
                            parent = Some(id);
                        }
                    } else {
                        // The parent was deleted or pruned: the next backup is a full one.
                        assert_eq!(
                            error_kind(&out),
                            "parent_not_found",
                            "backup {id}: {}",
                            json_of(&out)
                        );
                        if on_shared {
                            *shared_parent.lock().unwrap() = None;
                        } else {
                            parent = None;
                        }
                    }
                }
            });
        }
        // Host 3 deletes about one backup in three, and prunes every volume to its newest four.
        {
            let (committed, deleted, count) = (&committed, &deleted, &count);
            s.spawn(move || {
                let mut k = 0usize;
                while Instant::now() < deadline {
                    k += 1;
                    if k.is_multiple_of(8) {
                        let out = run(
                            3,
                            &[
                                "prune",
                                "--container",
                                url,
                                "--keep-last",
                                "4",
                                "--no-gc",
                                "--json",
                            ],
                        );
                        assert!(out.status.success(), "prune: {}", json_of(&out));
                        let removed = json_of(&out)["removed"].as_array().unwrap().clone();
                        let mut d = deleted.lock().unwrap();
                        d.extend(removed.iter().map(|v| v.as_str().unwrap().to_string()));
                        count("prunes");
                    } else {
                        let ids: Vec<String> = committed.lock().unwrap().keys().cloned().collect();
                        let pick = ids
                            .iter()
                            .filter(|id| !deleted.lock().unwrap().contains(*id))
                            .nth(k % 3)
                            .cloned();
                        if let Some(id) = pick {
                            let out = run(
                                3,
                                &["delete", "--container", url, "--backup-id", &id, "--json"],
                            );
                            // A prune may have removed it first.
                            if !out.status.success() {
                                assert_eq!(
                                    error_kind(&out),
                                    "backup_deleted",
                                    "delete {id}: {}",
                                    json_of(&out)
                                );
                            }
                            deleted.lock().unwrap().insert(id);
                            count("deletes");
                        }
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            });
        }
        // Host 4 restores backups as they come and compares them.
        {
            let (committed, deleted, count) = (&committed, &deleted, &count);
            s.spawn(move || {
                let target = root.join("host4-restore.img");
                let mut k = 0usize;
                while Instant::now() < deadline {
                    k += 1;
                    let live: Vec<(String, String)> = committed
                        .lock()
                        .unwrap()
                        .iter()
                        .filter(|(id, _)| !deleted.lock().unwrap().contains(*id))
                        .map(|(a, b)| (a.clone(), b.clone()))
                        .collect();
                    let Some((id, hash)) = live.get(k % live.len().max(1)).cloned() else {
                        std::thread::sleep(Duration::from_millis(50));
                        continue;
                    };
                    let _ = std::fs::remove_file(&target);
                    let t = target.display().to_string();
                    let out = run(
                        4,
                        &[
                            "restore",
                            "--container",
                            url,
                            "--backup-id",
                            &id,
                            "--target",
                            &t,
                            "--json",
                        ],
                    );
                    if out.status.success() {
                        assert_eq!(
                            hash_file(&target),
                            hash,
                            "backup {id} restored different bytes"
                        );
                        count("restores");
                    } else {
                        // Deleted (or pruned) since it was picked.
                        assert_eq!(
                            error_kind(&out),
                            "backup_deleted",
                            "restore {id}: {}",
                            json_of(&out)
                        );
                    }
                }
            });
        }
        // Host 5 collects garbage in a loop.
        {
            let count = &count;
            s.spawn(move || {
                while Instant::now() < deadline {
                    let out = run(
                        5,
                        &["gc", "--container", url, "--clock-skew", "0", "--json"],
                    );
                    assert!(out.status.success(), "gc: {}", json_of(&out));
                    count("gc runs");
                }
            });
        }
        // The server dies and comes back while all of that runs.
        s.spawn(|| {
            std::thread::sleep(duration() * 2 / 5);
            restart();
            count("server restarts");
        });
    });
    let out = run(
        5,
        &["gc", "--container", url, "--clock-skew", "0", "--json"],
    );
    assert!(out.status.success(), "final gc: {}", json_of(&out));

    let counts = counts.into_inner().unwrap();
    let committed = committed.into_inner().unwrap();
    let deleted = deleted.into_inner().unwrap();
    eprintln!(
        "{counts:?}; {} committed, {} deleted",
        committed.len(),
        deleted.len()
    );
    for k in [
        "backups killed",
        "backups committed",
        "deletes",
        "prunes",
        "restores",
        "gc runs",
        "server restarts",
    ] {
        assert!(
            counts.get(k).copied().unwrap_or(0) > 0,
            "no {k}: {counts:?}"
        );
    }
    let mut live = 0;
    for (id, hash) in committed.iter().filter(|(id, _)| !deleted.contains(*id)) {
        let target = root.join(format!("restore-{id}.img"));
        let t = target.display().to_string();
        let out = run(
            0,
            &[
                "restore",
                "--container",
                url,
                "--backup-id",
                id,
                "--target",
                &t,
                "--json",
            ],
        );
        assert!(out.status.success(), "restore {id}: {}", json_of(&out));
        assert_eq!(
            &hash_file(&target),
            hash,
            "backup {id} restored different bytes"
        );
        std::fs::remove_file(&target).unwrap();
        live += 1;
    }
    assert!(live > 0);
    let out = run(0, &["verify", "--container", url, "--read-data", "--json"]);
    let j = json_of(&out);
    assert!(out.status.success(), "verify --read-data: {j}");
    assert_eq!(
        j["damaged_backups"].as_array().map(Vec::len),
        Some(0),
        "{j}"
    );
}
