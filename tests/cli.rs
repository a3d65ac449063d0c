//! The command line, exactly as scripts use it: forms, JSON output, exit codes.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::backend::Env;
use common::*;

fn volback(args: &[&str]) -> Output {
    run_with(&[], args)
}

/// Runs the CLI with extra environment (S3 endpoint and credentials for an S3 container).
fn run_with(env: &[(String, String)], args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_volback"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap()
}

on_all_backends!(backup_restore_list_delete_with_json,);

// These damage, measure or copy objects as files.
mod files {
    use super::*;
    on_both_backends!(export_then_import_in_a_fresh_process_into_a_copy,);
}

/// The container URL as a user would type it: file:// for the filesystem, s3:// for S3.
fn url_of(e: &Env) -> String {
    if e.server.is_some() {
        e.url.clone()
    } else {
        format!("file://{}", e.objects.display())
    }
}

fn json_of(out: &Output) -> serde_json::Value {
    let s = String::from_utf8(out.stdout.clone()).unwrap();
    assert_eq!(
        s.trim().lines().count(),
        1,
        "--json prints exactly one line: {s}"
    );
    serde_json::from_str(s.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

fn ok(out: Output) -> Output {
    assert!(
        out.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Fails with exit code 1 (never a panic's 101) and a message.
fn fails(out: Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(1),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(err.starts_with("volback: error:"), "{err}");
    assert!(!err.contains("panicked"));
    err
}

fn backup_restore_list_delete_with_json(e: &Env) {
    let env = e.cli_env();
    let volback = |args: &[&str]| run_with(&env, args);
    let d = e.root.as_path();
    let vol = d.join("disk.img");
    make_image(&vol, 6 << 20, 5);
    let c = url_of(e);
    let v = vol.to_str().unwrap();

    let b1 = json_of(&ok(volback(&[
        "backup",
        "--container",
        &c,
        "--volume",
        v,
        "--backup-id",
        "b1",
        "--volume-id",
        "vol-1",
        "--json",
    ])));
    for field in [
        "backup_id",
        "parent_id",
        "size",
        "bytes_read",
        "bytes_new",
        "chunks_total",
        "chunks_new",
        "zero_bytes",
        "object_count",
        "elapsed_s",
    ] {
        assert!(b1.get(field).is_some(), "backup --json lacks {field}: {b1}");
    }
    assert_eq!(b1["size"], 6 << 20);
    assert_eq!(b1["backup_id"], "b1");
    assert!(b1["parent_id"].is_null());

    scattered_writes(&vol, 5, 9);
    let b2 = json_of(&ok(volback(&[
        "backup",
        "--container",
        &c,
        "--volume",
        v,
        "--backup-id",
        "b2",
        "--parent",
        "b1",
        "--json",
    ])));
    assert_eq!(b2["parent_id"], "b1");
    assert!(b2["bytes_new"].as_u64().unwrap() < b1["bytes_new"].as_u64().unwrap() / 4);

    let target = d.join("restored.img");
    let r = json_of(&ok(volback(&[
        "restore",
        "--container",
        &c,
        "--backup-id",
        "b2",
        "--target",
        target.to_str().unwrap(),
        "--json",
    ])));
    for field in [
        "backup_id",
        "size",
        "bytes_written",
        "zero_bytes",
        "elapsed_s",
    ] {
        assert!(r.get(field).is_some(), "restore --json lacks {field}: {r}");
    }
    assert_same(&vol, &target);

    // --existing over a file with other content.
    std::fs::write(&target, pseudo_random(1 << 20, 1)).unwrap();
    ok(volback(&[
        "restore",
        "--container",
        &c,
        "--backup-id",
        "b2",
        "--target",
        target.to_str().unwrap(),
        "--existing",
    ]));
    assert_same(&vol, &target);

    let l = json_of(&ok(volback(&["list", "--container", &c, "--json"])));
    let ids: Vec<&str> = l["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["backup_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["b1", "b2"]);

    ok(volback(&["delete", "--container", &c, "--backup-id", "b1"]));
    let err = fails(volback(&["delete", "--container", &c, "--backup-id", "b1"]));
    assert!(err.contains("deleted"), "{err}");
    let err = fails(volback(&[
        "restore",
        "--container",
        &c,
        "--backup-id",
        "b1",
        "--target",
        d.join("x").to_str().unwrap(),
    ]));
    assert!(err.contains("b1"), "{err}");
    // The child of the deleted parent still restores.
    let t2 = d.join("t2.img");
    ok(volback(&[
        "restore",
        "--container",
        &c,
        "--backup-id",
        "b2",
        "--target",
        t2.to_str().unwrap(),
    ]));
    assert_same(&vol, &t2);

    // Errors under --json are one JSON object too.
    let out = volback(&[
        "restore",
        "--container",
        &c,
        "--backup-id",
        "nope",
        "--target",
        d.join("y").to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(json_of(&out)["error"], "backup_not_found");
}

#[test]
fn stdin_backup_and_plain_path_container() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Zero runs in the middle and at the end: holes in a file, zeros on standard output.
    let mut data = text_like(3_000_000, 8);
    data[1_000_000..2_200_000].fill(0);
    data.extend_from_slice(&[0u8; 700_000]);
    let c = d.join("plain");
    let mut child = Command::new(env!("CARGO_BIN_EXE_volback"))
        .args([
            "backup",
            "--container",
            c.to_str().unwrap(),
            "--volume",
            "-",
            "--backup-id",
            "s",
            "--json",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&data).unwrap();
    let out = ok(child.wait_with_output().unwrap());
    assert_eq!(json_of(&out)["size"], data.len());
    // --no-sync skips only the flush, --buffered only direct I/O: the same bytes, under the
    // target's name.
    for (name, flags) in [
        ("s.img", &[][..]),
        ("s-nosync.img", &["--no-sync"][..]),
        ("s-buffered.img", &["--buffered"][..]),
        ("s-both.img", &["--no-sync", "--buffered"][..]),
    ] {
        let t = d.join(name);
        let mut args = vec![
            "restore",
            "--container",
            c.to_str().unwrap(),
            "--backup-id",
            "s",
            "--target",
            t.to_str().unwrap(),
        ];
        args.extend_from_slice(flags);
        ok(volback(&args));
        assert!(std::fs::read(&t).unwrap() == data, "restore {flags:?}");
    }
    // `--target -`: every byte on standard output, in order; the report on standard error.
    let out = ok(volback(&[
        "restore",
        "--container",
        c.to_str().unwrap(),
        "--backup-id",
        "s",
        "--target",
        "-",
        "--json",
    ]));
    assert!(out.stdout == data, "restore to standard output");
    let report: serde_json::Value = serde_json::from_slice(&out.stderr).unwrap();
    // Zero runs are found block by block: all but the partial blocks at their ends.
    assert!(
        report["zero_bytes"].as_u64().unwrap() > 1_800_000,
        "{report}"
    );

    // A reader that went away (`volback export … | head -c 0`): a typed error and exit 1,
    // never a panic; the backup that was reported is still there.
    for args in [
        vec!["list", "--container", c.to_str().unwrap()],
        vec![
            "export",
            "--container",
            c.to_str().unwrap(),
            "--backup-id",
            "s",
        ],
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = Command::new(env!("CARGO_BIN_EXE_volback"))
            .args(&args)
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains("write output") && !err.contains("panicked"),
            "{err}"
        );
    }
}

fn export_then_import_in_a_fresh_process_into_a_copy(e: &Env) {
    let env = e.cli_env();
    let volback = |args: &[&str]| run_with(&env, args);
    let d = e.root.as_path();
    let vol = d.join("v.img");
    make_image(&vol, 3 << 20, 77);
    let c = url_of(e);
    let cs = c.as_str();
    ok(volback(&[
        "backup",
        "--container",
        cs,
        "--volume",
        vol.to_str().unwrap(),
        "--backup-id",
        "x1",
    ]));
    let rec = ok(volback(&["export", "--container", cs, "--backup-id", "x1"])).stdout;
    let rec_path = d.join("x1.record");
    std::fs::write(&rec_path, &rec).unwrap();
    let (copy, _) = e.copy_container();
    let imported = json_of(&ok(volback(&[
        "import",
        "--container",
        copy.as_str(),
        "--record",
        rec_path.to_str().unwrap(),
        "--json",
    ])));
    assert_eq!(imported["id"], "x1");
    // From stdin too.
    let mut child = Command::new(env!("CARGO_BIN_EXE_volback"))
        .envs(env.iter().map(|(k, v)| (k, v)))
        .args(["import", "--container", copy.as_str(), "--record", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&rec).unwrap();
    ok(child.wait_with_output().unwrap());
    let t = d.join("t.img");
    ok(volback(&[
        "restore",
        "--container",
        copy.as_str(),
        "--backup-id",
        "x1",
        "--target",
        t.to_str().unwrap(),
    ]));
    assert_same(&vol, &t);

    // Garbage records: a clear error, never a panic.
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("binary", vec![0xff, 0xfe, 0, 1, 2]),
        ("json array", b"[1,2,3]".to_vec()),
        ("truncated", rec[..rec.len() / 2].to_vec()),
        (
            "future",
            String::from_utf8(rec.clone())
                .unwrap()
                .replace("\"version\": 1", "\"version\": 2")
                .into_bytes(),
        ),
        (
            "traversal",
            String::from_utf8(rec.clone())
                .unwrap()
                .replace("backups/x1", "backups/../../../etc/passwd")
                .into_bytes(),
        ),
    ];
    for (name, bytes) in cases {
        let p = d.join(format!("bad-{}", name.replace(' ', "_")));
        std::fs::write(&p, bytes).unwrap();
        let err = fails(volback(&[
            "import",
            "--container",
            copy.as_str(),
            "--record",
            p.to_str().unwrap(),
        ]));
        assert!(err.contains("record"), "{name}: {err}");
    }
}

#[test]
fn usage_and_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert_eq!(volback(&["backup"]).status.code(), Some(2));
    let err = fails(volback(&[
        "list",
        "--container",
        d.join("none").to_str().unwrap(),
    ]));
    assert!(err.contains("none"), "{err}");
    let err = fails(volback(&[
        "backup",
        "--container",
        d.join("c").to_str().unwrap(),
        "--volume",
        "/nonexistent/vol.img",
    ]));
    assert!(err.contains("/nonexistent/vol.img"), "{err}");
    let err = fails(volback(&["list", "--container", "s4://bucket"]));
    assert!(err.contains("scheme"), "{err}");
    // An average chunk size whose maximum (x4) would wrap a u32 is refused, and no container
    // is created with it.
    std::fs::write(d.join("small.img"), text_like(10_000, 1)).unwrap();
    let err = fails(volback(&[
        "backup",
        "--container",
        d.join("c-avg").to_str().unwrap(),
        "--volume",
        d.join("small.img").to_str().unwrap(),
        "--chunk-avg",
        "1610612738",
    ]));
    assert!(err.contains("--chunk-avg"), "{err}");
    assert!(!d.join("c-avg/config").exists());
    // A lease that outlives the calendar is a lease that never expires, not one that already
    // has; labels are checked.
    let b = json_of(&ok(volback(&[
        "backup",
        "--container",
        d.join("c-ttl").to_str().unwrap(),
        "--volume",
        d.join("small.img").to_str().unwrap(),
        "--lease-ttl",
        &u64::MAX.to_string(),
        "--label",
        "policy=daily",
        "--json",
    ])));
    assert_eq!(b["size"], 10_000);
    let err = fails(volback(&[
        "backup",
        "--container",
        d.join("c-ttl").to_str().unwrap(),
        "--volume",
        d.join("small.img").to_str().unwrap(),
        "--label",
        "no equals sign",
    ]));
    assert!(err.contains("key=value"), "{err}");
    ok(volback(&[
        "check",
        "--container",
        d.join("c2").to_str().unwrap(),
    ]));
    let unwritable = Path::new("/proc/volback-test");
    fails(volback(&[
        "check",
        "--container",
        unwritable.to_str().unwrap(),
    ]));

    // Unwritable or impossible restore targets: a message naming the target, nothing written.
    let c = d.join("c3");
    let vol = d.join("v.img");
    std::fs::write(&vol, text_like(100_000, 3)).unwrap();
    let cs = c.to_str().unwrap();
    ok(volback(&[
        "backup",
        "--container",
        cs,
        "--volume",
        vol.to_str().unwrap(),
        "--backup-id",
        "b",
    ]));
    for target in ["/nonexistent-dir/x.img", "/proc/volback-target.img", "/"] {
        let err = fails(volback(&[
            "restore",
            "--container",
            cs,
            "--backup-id",
            "b",
            "--target",
            target,
        ]));
        assert!(err.contains(target), "{target}: {err}");
    }
    // A corrupt container config is named.
    std::fs::write(c.join("config"), b"{not json").unwrap();
    let err = fails(volback(&["list", "--container", cs]));
    assert!(err.contains("config"), "{err}");
}

/// zstd's fast levels are a per-backup choice from the command line (`--zstd-level -1`, not
/// taken for a flag): they store more than level 1 and restore the same bytes. Level 0 (zstd's
/// "default") and levels out of range are refused before anything is written.
#[test]
fn fast_zstd_levels_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = text_like(4_000_000, 5);
    let vol = d.join("v.img");
    std::fs::write(&vol, &data).unwrap();
    let mut stored = Vec::new();
    for level in ["1", "-1", "-7"] {
        let c = d.join(format!("c{level}"));
        let cs = c.to_str().unwrap();
        let out = ok(volback(&[
            "backup",
            "--container",
            cs,
            "--volume",
            vol.to_str().unwrap(),
            "--backup-id",
            "b",
            "--zstd-level",
            level,
            "--json",
        ]));
        let bytes_new = json_of(&out)["bytes_new"].as_u64().unwrap();
        assert!(
            bytes_new < data.len() as u64 / 2,
            "level {level}: {bytes_new}"
        );
        stored.push(bytes_new);
        let t = d.join(format!("r{level}.img"));
        ok(volback(&[
            "restore",
            "--container",
            cs,
            "--backup-id",
            "b",
            "--target",
            t.to_str().unwrap(),
            "--no-sync",
        ]));
        assert!(std::fs::read(&t).unwrap() == data, "level {level}");
    }
    assert!(stored[0] < stored[1] && stored[1] < stored[2], "{stored:?}");
    for level in ["0", "-8", "23"] {
        let c = d.join("refused");
        let err = fails(volback(&[
            "backup",
            "--container",
            c.to_str().unwrap(),
            "--volume",
            vol.to_str().unwrap(),
            "--zstd-level",
            level,
        ]));
        assert!(err.contains("zstd level"), "{level}: {err}");
        let l = json_of(&ok(volback(&[
            "list",
            "--container",
            c.to_str().unwrap(),
            "--json",
        ])));
        assert_eq!(
            l["backups"].as_array().map(Vec::len),
            Some(0),
            "level {level}"
        );
    }
}

/// Labels set at backup time are listed and filtered on; `prune` applies keep-rules per
/// volume, a dry run changes nothing, and the survivors are what `list` shows afterwards.
#[test]
fn labels_list_filters_and_prune() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let c = d.join("c");
    let cs = c.to_str().unwrap();
    for (vol, n, vm) in [("a", 3, "web"), ("b", 2, "db")] {
        for i in 0..n {
            let img = d.join(format!("{vol}.img"));
            std::fs::write(&img, text_like(200_000, i)).unwrap();
            ok(volback(&[
                "backup",
                "--container",
                cs,
                "--volume",
                img.to_str().unwrap(),
                "--volume-id",
                vol,
                "--backup-id",
                &format!("{vol}{i}"),
                "--label",
                &format!("vm={vm}"),
                "--label",
                "policy=daily",
            ]));
        }
    }
    let ids = |args: &[&str]| -> Vec<String> {
        let mut all = vec!["list", "--container", cs, "--json"];
        all.extend_from_slice(args);
        json_of(&ok(volback(&all)))["backups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["backup_id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(ids(&["--label", "vm=db"]), ["b0", "b1"]);
    assert_eq!(
        ids(&["--volume-id", "a", "--label", "policy=daily"]).len(),
        3
    );
    assert!(ids(&["--label", "vm=none"]).is_empty());
    let listed = json_of(&ok(volback(&["list", "--container", cs, "--json"])));
    assert_eq!(listed["backups"][0]["labels"]["vm"], "web");

    let prune = |extra: &[&str]| {
        let mut args = vec!["prune", "--container", cs, "--keep-last", "1", "--json"];
        args.extend_from_slice(extra);
        json_of(&ok(volback(&args)))
    };
    let dry = prune(&["--dry-run"]);
    let mut removed: Vec<&str> = dry["removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    removed.sort();
    assert_eq!(removed, ["a0", "a1", "b0"]);
    assert_eq!(ids(&[]).len(), 5, "a dry run deletes nothing");
    let r = prune(&[]);
    assert_eq!(r["kept"], 2);
    assert!(r["gc"]["bytes_deleted"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(ids(&[]), ["a2", "b1"]);
    // No rule: refused, not everything removed.
    let err = fails(volback(&["prune", "--container", cs]));
    assert!(err.contains("no retention rule"), "{err}");
    assert_eq!(ids(&[]).len(), 2);

    // What each backup alone holds: a backup of the same data as another holds nothing alone,
    // and neither does that other one any more.
    ok(volback(&[
        "backup",
        "--container",
        cs,
        "--volume",
        d.join("b.img").to_str().unwrap(),
        "--volume-id",
        "b-copy",
        "--backup-id",
        "b1-copy",
    ]));
    let l = json_of(&ok(volback(&[
        "list",
        "--container",
        cs,
        "--exclusive",
        "--json",
    ])));
    let alone: BTreeMap<&str, u64> = l["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            let n = b["exclusive_bytes"].as_u64().unwrap();
            (b["backup_id"].as_str().unwrap(), n)
        })
        .collect();
    assert_eq!(alone["b1"], 0, "{alone:?}");
    assert_eq!(alone["b1-copy"], 0, "{alone:?}");
    assert!(alone["a2"] > 10_000, "{alone:?}");
}

/// `--events FILE`: one JSON object per line — started, progress (ending at 100 %), finished
/// with the same report `--json` prints; an error ends with its kind and message.
#[test]
fn job_events_as_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let c = d.join("c");
    let vol = d.join("v.img");
    std::fs::write(&vol, text_like(3_000_000, 4)).unwrap();
    let events = |path: &Path| -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    };
    let ev = d.join("backup.events");
    let out = ok(volback(&[
        "backup",
        "--container",
        c.to_str().unwrap(),
        "--volume",
        vol.to_str().unwrap(),
        "--backup-id",
        "b",
        "--json",
        "--events",
        ev.to_str().unwrap(),
    ]));
    let e = events(&ev);
    assert_eq!(e[0]["event"], "started");
    assert!(e.iter().all(|x| x["op"] == "backup"));
    let progress: Vec<_> = e.iter().filter(|x| x["event"] == "progress").collect();
    assert!(!progress.is_empty());
    assert_eq!(progress.last().unwrap()["percent"], 100.0);
    assert_eq!(progress.last().unwrap()["bytes_total"], 3_000_000);
    let last = e.last().unwrap();
    assert_eq!(last["event"], "finished");
    assert_eq!(last["report"], json_of(&out), "the report is --json's");

    let ev = d.join("restore.events");
    ok(volback(&[
        "restore",
        "--container",
        c.to_str().unwrap(),
        "--backup-id",
        "b",
        "--target",
        d.join("out.img").to_str().unwrap(),
        "--events",
        ev.to_str().unwrap(),
    ]));
    let e = events(&ev);
    let last_progress = e.iter().rev().find(|x| x["event"] == "progress").unwrap();
    assert_eq!(last_progress["percent"], 100.0);
    assert_eq!(e.last().unwrap()["report"]["size"], 3_000_000);

    let ev = d.join("error.events");
    fails(volback(&[
        "restore",
        "--container",
        c.to_str().unwrap(),
        "--backup-id",
        "nope",
        "--target",
        d.join("out2.img").to_str().unwrap(),
        "--events",
        ev.to_str().unwrap(),
    ]));
    let e = events(&ev);
    assert_eq!(e.len(), 2, "{e:?}");
    assert_eq!(e[1]["event"], "error");
    assert_eq!(e[1]["kind"], "backup_not_found");
    // A descriptor that is not open is a usage error before anything runs.
    let err = fails(volback(&[
        "list",
        "--container",
        c.to_str().unwrap(),
        "--events",
        "fd:99",
    ]));
    assert!(err.contains("fd:99"), "{err}");
}

#[test]
fn encrypted_container_keys_from_env_file_and_command() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let vol = d.join("v.img");
    make_image(&vol, 4 << 20, 3);
    let c = d.join("c").display().to_string();
    let secret = "env-secret-passphrase-123";
    let env = vec![("VOLBACK_TEST_PASS".to_string(), secret.to_string())];
    let v = vol.display().to_string();
    let run = |args: &[&str]| run_with(&env, args);
    ok(run(&[
        "backup",
        "--key",
        "env:VOLBACK_TEST_PASS",
        "--container",
        &c,
        "--volume",
        &v,
        "--backup-id",
        "b1",
    ]));
    // Everything the container holds, and every output, is free of the secret.
    let stored: Vec<u8> = std::fs::read_dir(d.join("c/keys"))
        .unwrap()
        .flat_map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .chain(std::fs::read(d.join("c/config")).unwrap())
        .collect();
    assert!(!String::from_utf8_lossy(&stored).contains(secret));

    // Without the key: list fails with key_required; verify checks structure.
    let out = run(&["list", "--container", &c, "--json"]);
    assert_eq!(json_of(&out)["error"], "key_required");
    let out = ok(run(&["verify", "--container", &c, "--read-data", "--json"]));
    assert_eq!(json_of(&out)["without_key"], true);
    // A wrong key: wrong_key, and the message shows neither secret.
    let key_file = d.join("key");
    std::fs::write(&key_file, "file-secret\n").unwrap();
    let kf = format!("file:{}", key_file.display());
    let err = fails(run(&["list", "--key", &kf, "--container", &c]));
    assert!(err.contains("no key of container"), "{err}");
    assert!(
        !err.contains("file-secret") && !err.contains(secret),
        "{err}"
    );

    // Add the file's key, then change the env key to a command's output, then remove.
    let added = json_of(&ok(run(&[
        "key",
        "add",
        "--new-key",
        &kf,
        "--key",
        "env:VOLBACK_TEST_PASS",
        "--container",
        &c,
        "--json",
    ])));
    let added = added["added"].as_str().unwrap().to_string();
    let listed = json_of(&ok(run(&[
        "key",
        "list",
        "--key",
        &kf,
        "--container",
        &c,
        "--json",
    ])));
    assert_eq!(listed.as_array().unwrap().len(), 2);
    ok(run(&[
        "key",
        "change",
        "--new-key",
        "cmd:echo command-secret",
        "--key",
        "env:VOLBACK_TEST_PASS",
        "--container",
        &c,
    ]));
    fails(run(&[
        "list",
        "--key",
        "env:VOLBACK_TEST_PASS",
        "--container",
        &c,
    ]));
    let out = d.join("out.img");
    ok(run(&[
        "restore",
        "--key",
        "cmd:echo command-secret",
        "--container",
        &c,
        "--backup-id",
        "b1",
        "--target",
        &out.display().to_string(),
    ]));
    assert_same(&vol, &out);
    ok(run(&[
        "key",
        "remove",
        "--id",
        &added,
        "--key",
        "cmd:echo command-secret",
        "--container",
        &c,
    ]));
    let listed = json_of(&ok(run(&[
        "key",
        "list",
        "--key",
        "cmd:echo command-secret",
        "--container",
        &c,
        "--json",
    ])));
    let only = listed.as_array().unwrap()[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let out = run(&[
        "key",
        "remove",
        "--id",
        &only,
        "--key",
        "cmd:echo command-secret",
        "--container",
        &c,
        "--json",
    ]);
    assert_eq!(json_of(&out)["error"], "key", "the last key stays");
    // A bad source is a usage error, before anything is opened.
    assert_eq!(
        run(&["list", "--key", "secret", "--container", &c])
            .status
            .code(),
        Some(2)
    );
}

/// `copy`: an encrypted container's backups into a second, plaintext one and into a third with
/// its own key; a second run copies nothing; a copy needs a selection.
#[test]
fn copy_between_containers_with_their_own_keys() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let vol = d.join("v.img");
    make_image(&vol, 4 << 20, 8);
    let (src, plain, other) = (
        d.join("src").display().to_string(),
        d.join("plain").display().to_string(),
        d.join("other").display().to_string(),
    );
    let env = vec![
        ("SRC_KEY".to_string(), "source passphrase".to_string()),
        ("DST_KEY".to_string(), "destination passphrase".to_string()),
    ];
    let run = |args: &[&str]| run_with(&env, args);
    let v = vol.display().to_string();
    for id in ["b1", "b2"] {
        ok(run(&[
            "backup",
            "--key",
            "env:SRC_KEY",
            "--container",
            &src,
            "--volume",
            &v,
            "--backup-id",
            id,
            "--label",
            "tier=gold",
        ]));
    }
    let copy = |to: &str, extra: &[&str]| {
        let mut args = vec!["copy", "--key", "env:SRC_KEY", "--from", &src, "--to", to];
        args.extend_from_slice(extra);
        args.push("--json");
        json_of(&ok(run(&args)))
    };
    let err = fails(run(&[
        "copy",
        "--key",
        "env:SRC_KEY",
        "--from",
        &src,
        "--to",
        &plain,
        "--all",
    ]));
    assert!(err.contains("is encrypted"), "{err}");
    let r = copy(
        &plain,
        &["--label", "tier=gold", "--allow-plaintext-destination"],
    );
    assert_eq!(r["copied"].as_array().unwrap().len(), 2, "{r}");
    let r = copy(&plain, &["--all", "--allow-plaintext-destination"]);
    assert_eq!(
        (
            r["copied"].as_array().unwrap().len(),
            r["bytes_written"].as_u64()
        ),
        (0, Some(0)),
        "{r}"
    );
    let r = copy(&other, &["--backup-id", "b2", "--to-key", "env:DST_KEY"]);
    assert_eq!(r["copied"][0]["backup_id"], "b2", "{r}");
    let out = d.join("out.img");
    ok(run(&[
        "restore",
        "--key",
        "env:DST_KEY",
        "--container",
        &other,
        "--backup-id",
        "b2",
        "--target",
        out.to_str().unwrap(),
    ]));
    assert_same(&vol, &out);
    let err = fails(run(&[
        "copy",
        "--key",
        "env:SRC_KEY",
        "--from",
        &src,
        "--to",
        &plain,
    ]));
    assert!(err.contains("--all"), "{err}");
}

#[test]
fn cinder_backups_listed_restored_and_adopted_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("backup_posix_path");
    let volumes = volback_testkit::cinder_layout::write_chain(&root);
    let src = root.to_str().unwrap();
    let listed = json_of(&ok(volback(&["cinder", "list", "--source", src, "--json"])));
    let ids: Vec<_> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["backup_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["aaaa1111", "bbbb2222", "cccc3333"]);
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .all(|b| b["size"] == 8 << 20)
    );
    let target = dir.path().join("r.img");
    let t = target.to_str().unwrap();
    let r = json_of(&ok(volback(&[
        "cinder",
        "restore",
        "--source",
        src,
        "--backup-id",
        "cccc3333",
        "--target",
        t,
        "--json",
    ])));
    assert_eq!(r["chain"].as_array().unwrap().len(), 3);
    assert_eq!(std::fs::read(&target).unwrap(), volumes[2]);
    // Restoring onto an existing file is refused: never overwritten.
    let err = fails(volback(&[
        "cinder",
        "restore",
        "--source",
        src,
        "--backup-id",
        "cccc3333",
        "--target",
        t,
    ]));
    assert!(err.contains("exists"), "{err}");

    let container = dir.path().join("volback");
    let c = container.to_str().unwrap();
    let records = dir.path().join("records.json");
    let adopt = [
        "cinder",
        "adopt",
        "--source",
        src,
        "--container",
        c,
        "--all",
        "--records",
        records.to_str().unwrap(),
        "--json",
    ];
    let r = json_of(&ok(volback(&adopt)));
    assert_eq!(r["adopted"].as_array().unwrap().len(), 3);
    let recs: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&records).unwrap()).unwrap();
    assert_eq!(recs[2]["backup_id"], "cccc3333");
    assert_eq!(
        recs[2]["backup_service"],
        "volback.cinder.VolbackBackupDriver"
    );
    let again = json_of(&ok(volback(&adopt)));
    assert_eq!(again["bytes_written"], 0);
    let out = dir.path().join("adopted.img");
    ok(volback(&[
        "restore",
        "--container",
        c,
        "--backup-id",
        "bbbb2222",
        "--target",
        out.to_str().unwrap(),
    ]));
    assert_eq!(std::fs::read(&out).unwrap(), volumes[1]);
    // Nothing selected is an error, not a silent no-op.
    let err = fails(volback(&[
        "cinder",
        "adopt",
        "--source",
        src,
        "--container",
        c,
    ]));
    assert!(err.contains("--all"), "{err}");
}

#[test]
fn cat_writes_any_range_of_a_backup() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("vol.img");
    make_image(&img, 6 << 20, 11);
    let whole = std::fs::read(&img).unwrap();
    let c = dir.path().join("c");
    let c = c.to_str().unwrap();
    ok(volback(&[
        "backup",
        "--container",
        c,
        "--volume",
        img.to_str().unwrap(),
        "--backup-id",
        "b1",
    ]));
    for (offset, length) in [
        (0u64, Some(512u64)),
        (1_000_001, Some(2_000_000)),
        (5 << 20, None),
    ] {
        let mut args = vec![
            "cat".to_string(),
            "--container".into(),
            c.into(),
            "--backup-id".into(),
            "b1".into(),
            "--offset".into(),
            offset.to_string(),
        ];
        if let Some(l) = length {
            args.extend(["--length".into(), l.to_string()]);
        }
        let out = ok(volback(
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
        ));
        let end = length.map_or(whole.len(), |l| (offset + l) as usize);
        assert!(out.stdout == whole[offset as usize..end], "{offset}");
    }
    let err = fails(volback(&[
        "cat",
        "--container",
        c,
        "--backup-id",
        "b1",
        "--offset",
        "6291455",
        "--length",
        "2",
    ]));
    assert!(err.contains("past the end"), "{err}");
}

#[test]
fn serve_exports_a_backup_until_sigterm() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("vol.img");
    make_image(&img, 6 << 20, 12);
    let c = dir.path().join("c");
    let c = c.to_str().unwrap();
    ok(volback(&[
        "backup",
        "--container",
        c,
        "--volume",
        img.to_str().unwrap(),
        "--backup-id",
        "b1",
    ]));
    let sock = dir.path().join("b1.sock");
    let mut child = Command::new(env!("CARGO_BIN_EXE_volback"))
        .args(["serve", "--container", c, "--backup-id", "b1", "--json"])
        .args(["--socket", sock.to_str().unwrap()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    // The ready line comes once the server listens.
    let ready: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    let uri = ready["uri"].as_str().unwrap().to_string();
    assert_eq!(uri, format!("nbd+unix:///?socket={}", sock.display()));
    assert_eq!(ready["size"], 6 << 20);
    let out = dir.path().join("copy.img");
    let convert = Command::new("qemu-img")
        .args([
            "convert",
            "-f",
            "raw",
            "-O",
            "raw",
            &uri,
            out.to_str().unwrap(),
        ])
        .output()
        .expect("qemu-img (Debian's qemu-utils)");
    assert!(convert.status.success(), "{convert:?}");
    assert!(std::fs::read(&out).unwrap() == std::fs::read(&img).unwrap());
    // A second server on the same socket is refused while the first runs.
    let err = fails(volback(&[
        "serve",
        "--container",
        c,
        "--backup-id",
        "b1",
        "--socket",
        sock.to_str().unwrap(),
    ]));
    assert!(err.contains("already listening"), "{err}");
    // SIGTERM: a clean stop with the counters, and the socket removed.
    // SAFETY: kill only sends a signal to the child's pid.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let stats: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert!(stats["reads"].as_u64().unwrap() > 0, "{stats}");
    assert_eq!(stats["failed"], 0);
    assert!(child.wait().unwrap().success());
    assert!(!sock.exists());
}

#[test]
fn backup_from_a_change_map_file() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("vol.img");
    make_image(&img, 6 << 20, 12);
    let c = dir.path().join("c");
    let (c, vol) = (c.to_str().unwrap(), img.to_str().unwrap());
    let backup = |extra: &[&str]| {
        let mut args = vec!["backup", "--container", c, "--volume", vol, "--json"];
        args.extend_from_slice(extra);
        volback(&args)
    };
    ok(backup(&["--backup-id", "b1"]));
    write_at(&img, 2 << 20, 10_000, 5);
    let map = dir.path().join("changes.csv");
    std::fs::write(&map, format!("offset,length\n{},10000\n", 2 << 20)).unwrap();
    let m = map.to_str().unwrap();
    let r = json_of(&ok(backup(&[
        "--backup-id",
        "b2",
        "--parent",
        "b1",
        "--changes",
        m,
        "--map-sample",
        "0.5",
    ])));
    // The change and the chunks around it, and half the others read back by the sample.
    assert!(r["bytes_read"].as_u64().unwrap() < 5 << 20, "{r}");
    let listed = json_of(&ok(volback(&["list", "--container", c, "--json"])));
    let b2 = &listed["backups"][1];
    assert_eq!(b2["read"], "change-map", "{listed}");
    assert_eq!(b2["change_map"]["changed_bytes"], 10_000);
    assert_eq!(b2["since_full_read"]["backups"], 1);
    assert!(
        b2["change_map"]["sampled_chunks"].as_u64().unwrap() > 10,
        "{listed}"
    );
    let target = dir.path().join("out.img");
    ok(volback(&[
        "restore",
        "--container",
        c,
        "--backup-id",
        "b2",
        "--target",
        target.to_str().unwrap(),
    ]));
    assert_same(&img, &target);
    // A map that names bytes past the end, a map without a parent, an unknown format.
    std::fs::write(&map, format!("{},4096\n", 7 << 20)).unwrap();
    let err = fails(backup(&[
        "--backup-id",
        "b3",
        "--parent",
        "b1",
        "--changes",
        m,
    ]));
    assert!(err.contains("past the end"), "{err}");
    fails(backup(&["--backup-id", "b3", "--changes", m]));
    let err = fails(backup(&[
        "--backup-id",
        "b3",
        "--parent",
        "b1",
        "--changes",
        m,
        "--changes-format",
        "qcow2",
    ]));
    assert!(err.contains("qcow2"), "{err}");
}
