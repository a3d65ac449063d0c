//! Crashes: `volback backup` killed with SIGKILL at many points, on a filesystem container and
//! on the local S3 server. Afterwards `list`, `verify`, `gc` and `restore` agree, nothing
//! committed is lost, and re-running the killed backup completes, reusing what was uploaded.

#[path = "common/cli.rs"]
mod cli_env;
mod common;

use cli_env::CliExt;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::backend::{BUCKET, Env, hash_file, json_of};
use common::*;
use volback::container::Container;
use volback::format::config::ContainerConfig;

on_both_backends!(
    backups_killed_at_random_points_leave_a_consistent_container,
    a_rerun_after_a_crash_at_90_percent_stores_little
);

/// A second container in the test's backend, with 1 MiB packs (many packs per backup, so a
/// crash lands between uploads).
fn small_pack_container(e: &Env, name: &str) -> String {
    let url = match &e.server {
        Some(_) => format!("s3://{BUCKET}/{name}"),
        None => e.root.join(name).display().to_string(),
    };
    let cfg = ContainerConfig {
        pack_target: 1 << 20,
        ..Default::default()
    };
    Container::open_with(&url, true, Some(cfg), &e.s3).unwrap();
    url
}

fn cli(e: &Env) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_volback"));
    c.envs(e.cli_env());
    c
}

fn listed(e: &Env, url: &str) -> Vec<String> {
    let out = e.cli(&["list", "--container", url, "--json"]);
    assert!(out.status.success());
    json_of(&out)["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            b["backup_id"]
                .as_str()
                .expect("no damaged backup")
                .to_string()
        })
        .collect()
}

fn backup_args<'a>(url: &'a str, vol: &'a str, id: &'a str) -> Vec<&'a str> {
    vec![
        "backup",
        "--container",
        url,
        "--volume",
        vol,
        "--backup-id",
        id,
        "--json",
    ]
}

fn backups_killed_at_random_points_leave_a_consistent_container(e: &Env) {
    let url = small_pack_container(e, "crashes");
    let vol = e.root.join("v.img");
    make_image(&vol, 24 << 20, 3);
    let v = vol.display().to_string();
    assert!(e.cli(&backup_args(&url, &v, "base")).status.success());
    let mut expected = vec![("base".to_string(), hash_file(&vol))];
    let change = |i: u64| {
        scattered_writes(&vol, 30, 100 + i);
        write_at(&vol, (i * 700_000) % (20 << 20), 1 << 20, 200 + i);
    };
    // How long an uninterrupted run of the loop's kind (an incremental) takes here.
    change(1000);
    let t0 = Instant::now();
    assert!(e.cli(&backup_args(&url, &v, "calib")).status.success());
    let mut span = t0.elapsed();
    expected.push(("calib".to_string(), hash_file(&vol)));
    let runs = 25;
    let jitter = pseudo_random(runs * 8, 5);
    let mut completed_before_kill = 0;
    for i in 0..runs {
        change(i as u64);
        let id = format!("k{i}");
        let r = u64::from_le_bytes(jitter[i * 8..i * 8 + 8].try_into().unwrap());
        // Kill anywhere from process start to the time a run takes. The machine's speed
        // drifts (shared CI hosts), so the span shrinks whenever a run beats its kill.
        let delay = span.mul_f64((r % 1000) as f64 / 1000.0);
        let mut child = cli(e)
            .args(backup_args(&url, &v, &id))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        let ids = listed(e, &url);
        let committed = ids.contains(&id);
        if status.success() {
            assert!(committed, "run {i}: exited 0 without a committed backup");
            completed_before_kill += 1;
            span = span.mul_f64(0.8);
        }
        // Consistent after the crash: every listed backup's structure is intact.
        let out = e.cli(&["verify", "--container", &url, "--json"]);
        assert_eq!(out.status.code(), Some(0), "run {i}: {}", json_of(&out));
        if !committed {
            // Re-running the same backup completes.
            let out = e.cli(&backup_args(&url, &v, &id));
            assert!(out.status.success(), "rerun {id}: {}", json_of(&out));
        }
        expected.push((id, hash_file(&vol)));
        if i % 10 == 9 {
            let out = e.cli(&["gc", "--container", &url, "--json"]);
            assert!(out.status.success(), "gc: {}", json_of(&out));
        }
    }
    eprintln!("{runs} kills, {completed_before_kill} runs finished before their kill");
    assert!(
        completed_before_kill < runs / 2,
        "most kills interrupted a backup"
    );
    // Everything committed is there and restores byte-identically; data re-hashed.
    assert_eq!(listed(e, &url).len(), expected.len());
    let out = e.cli(&["verify", "--container", &url, "--read-data", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", json_of(&out));
    for (id, h) in expected.iter().rev().step_by(7) {
        let target = e.root.join(format!("r-{id}"));
        let out = e.cli_restore(&url, id, &target);
        assert!(out.status.success(), "restore {id}: {}", json_of(&out));
        assert_eq!(&hash_file(&target), h, "{id}");
        std::fs::remove_file(&target).unwrap();
    }
}

/// Bytes of packs stored so far (read from the objects' files, as the backup runs).
fn pack_bytes(dir: &Path) -> u64 {
    if dir.exists() { dir_size(dir) } else { 0 }
}

fn a_rerun_after_a_crash_at_90_percent_stores_little(e: &Env) {
    let url = small_pack_container(e, "resume");
    let packs_dir = match &e.server {
        Some(_) => e.objects.parent().unwrap().join("resume/packs"),
        None => e.root.join("resume/packs"),
    };
    let vol = e.root.join("big.img");
    let size: u64 = 96 << 20;
    std::fs::write(&vol, pseudo_random(size as usize, 9)).unwrap();
    let v = vol.display().to_string();
    let mut child = cli(e)
        .args(backup_args(&url, &v, "big"))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // Kill when 90 % of the volume's stored size has been uploaded.
    let deadline = Instant::now() + Duration::from_secs(120);
    while pack_bytes(&packs_dir) < size * 9 / 10 {
        assert!(Instant::now() < deadline, "backup too slow");
        assert!(
            child.try_wait().unwrap().is_none(),
            "backup ended before 90 %"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(listed(e, &url).is_empty(), "nothing committed");
    let out = e.cli(&backup_args(&url, &v, "big"));
    assert!(out.status.success(), "{}", json_of(&out));
    let r = json_of(&out);
    let new = r["bytes_new"].as_u64().unwrap();
    eprintln!("re-run after a crash at 90 %: {new} new bytes of {size}");
    assert!(
        new * 100 <= size * 15,
        "re-run stored {new} bytes of {size}"
    );
    let target = e.root.join("big.out");
    let out = e.cli_restore(&url, "big", &target);
    assert!(out.status.success(), "{}", json_of(&out));
    assert_same(&vol, &target);
}
