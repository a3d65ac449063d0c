//! S3-specific behaviour against real S3-compatible servers (s3s-fs on 127.0.0.1, and Ceph's
//! RADOS Gateway for the request budgets, multipart uploads and the create-only commit):
//! failures that must be fast and clear, a server dying mid-backup, and request budgets.

mod common;

use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::backend::{ACCESS_KEY, BUCKET, Env, S3Server, SECRET_KEY, free_port, s3_options};
use common::*;
use volback::backup::source::VolumeSource;
use volback::backup::{BackupOptions, run_backup};
use volback::container::Container;
use volback::restore::{TargetMode, run_restore};

#[test]
fn wrong_credentials_fail_fast_and_never_show_the_secret() {
    let e = Env::s3();
    let endpoint = e.server.as_ref().unwrap().endpoint();
    let mut bad = s3_options(&endpoint);
    bad.secret_access_key = Some("wrong-secret-value-1234".into());
    let t = Instant::now();
    let err = Container::open_with(&e.url, false, None, &bad).expect_err("must fail");
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "took {:?}",
        t.elapsed()
    );
    assert_eq!(err.kind(), "access_denied", "{err}");
    let msg = err.to_string();
    assert!(msg.contains(BUCKET), "{msg}");
    assert!(
        !msg.contains("wrong-secret-value-1234") && !msg.contains(SECRET_KEY),
        "{msg}"
    );

    // The CLI: exit 1, the secret in neither stream.
    let out = Command::new(env!("CARGO_BIN_EXE_volback"))
        .args(["list", "--container", &e.url, "--json"])
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", "wrong-secret-value-1234")
        .env("AWS_ENDPOINT_URL", &endpoint)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(all.contains("access_denied"), "{all}");
    assert!(!all.contains("wrong-secret-value-1234"), "{all}");
}

#[test]
fn missing_bucket_and_unreachable_endpoint_fail_within_seconds() {
    let e = Env::s3();
    let endpoint = e.server.as_ref().unwrap().endpoint();
    let t = Instant::now();
    let err = Container::open_with("s3://no-such-bucket/x", true, None, &s3_options(&endpoint))
        .expect_err("must fail");
    assert!(t.elapsed() < Duration::from_secs(10));
    assert_eq!(err.kind(), "missing_bucket", "{err}");
    assert!(err.to_string().contains("no-such-bucket"));

    let dead = format!("http://127.0.0.1:{}", free_port());
    let t = Instant::now();
    let err = Container::open_with(&e.url, true, None, &s3_options(&dead)).expect_err("must fail");
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "took {:?}",
        t.elapsed()
    );
    assert_eq!(err.kind(), "remote", "{err}");

    // No credentials at all: a configuration error, not a probe of instance metadata.
    let mut none = s3_options(&endpoint);
    none.access_key_id = None;
    none.secret_access_key = None;
    none.profile = Some("volback-no-such-profile".into());
    let err = Container::open_with(&e.url, true, None, &none).expect_err("must fail");
    assert_eq!(err.kind(), "config", "{err}");
}

#[test]
fn server_stopped_mid_backup_commits_nothing_and_the_next_backup_succeeds() {
    let e = Env::s3();
    let vol = e.root.join("v.img");
    std::fs::write(&vol, pseudo_random(160 << 20, 1)).unwrap();
    let server = Mutex::new(e.server);
    let port = server.lock().unwrap().as_ref().unwrap().port;
    let root = server.lock().unwrap().as_ref().unwrap().root.clone();
    // Stop the server once half the volume has been processed.
    let stop_at_half = |done: u64| {
        if done >= 80 << 20
            && let Some(mut s) = server.lock().unwrap().take()
        {
            s.stop();
        }
    };
    let t = Instant::now();
    let err = run_backup(
        &e.c,
        VolumeSource::Path(vol.clone()),
        &backup_opts("b1", None),
        Some(&stop_at_half),
    )
    .expect_err("backup must fail when the server stops");
    assert!(
        t.elapsed() < Duration::from_secs(40),
        "took {:?}",
        t.elapsed()
    );
    assert_eq!(err.kind(), "remote", "{err}");
    assert!(err.to_string().contains(BUCKET), "{err}");

    // Same data, server back: nothing was committed, and a new backup succeeds.
    let _server = S3Server::start_on(&root, port);
    let c = Container::open_with(&e.url, false, None, &e.s3).unwrap();
    assert!(c.list_backups().unwrap().is_empty());
    let r = backup_file(&c, &vol, "b1", None);
    assert_eq!(r.size, 160 << 20);
    let out = e.root.join("out.img");
    run_restore(&c, "b1", &out, TargetMode::New, None).unwrap();
    assert_same(&vol, &out);
}

#[test]
fn request_budgets() {
    request_budgets_on(&Env::s3());
}

#[test]
fn request_budgets_on_rgw() {
    request_budgets_on(&Env::rgw());
}

fn request_budgets_on(e: &Env) {
    let vol = e.root.join("v.img");
    let size: u64 = 256 << 20;
    std::fs::write(&vol, pseudo_random(size as usize, 2)).unwrap();

    // Full backup of incompressible data: at most 100 write requests per GiB.
    let full = run_backup(
        &e.c,
        VolumeSource::Path(vol.clone()),
        &backup_opts("full", None),
        None,
    )
    .unwrap()
    .2;
    assert!(full.requests.put <= 25, "{:?}", full.requests);
    assert!(full.requests.bytes_sent >= size, "{:?}", full.requests);

    // Unchanged incremental (the file's stamp is its parent's): at most 10 requests, whatever
    // the container holds — the lease, the parent's manifest and whether it still exists, the
    // pending condemnation records, the commit.
    let inc = run_backup(
        &e.c,
        VolumeSource::Path(vol.clone()),
        &backup_opts("inc", Some("full")),
        None,
    )
    .unwrap()
    .2;
    assert_eq!(inc.chunks_new, 0);
    let q = &inc.requests;
    let total = q.put + q.get + q.head + q.list + q.delete;
    assert!(total <= 10, "{q:?}");
    assert!(q.put <= 2, "lease and manifest only: {q:?}");

    // The same volume read in full: deduplicated against the parent alone (its extent list
    // read through the manifest's hints), so still one listing and no pack or segment written.
    let reread = run_backup(
        &e.c,
        VolumeSource::Path(vol.clone()),
        &BackupOptions {
            full_read: true,
            ..backup_opts("reread", Some("inc"))
        },
        None,
    )
    .unwrap()
    .2;
    assert_eq!(reread.chunks_new, 0);
    let q = &reread.requests;
    assert_eq!(q.list, 1, "the records only: {q:?}");
    assert!(q.put <= 2, "lease and manifest only: {q:?}");
    assert!(q.bytes_sent < size / 1000, "{q:?}");

    // Restore: ranged reads coalesced per pack (at most 4 MiB each), not one request per
    // chunk: 256 MiB of incompressible data is ~64 reads, not thousands.
    let out = e.root.join("out.img");
    let r = run_restore(&e.c, "reread", &out, TargetMode::New, None).unwrap();
    assert!(
        r.requests.get <= 100,
        "{:?} for {} chunks",
        r.requests,
        full.chunks_total
    );
    assert_same(&vol, &out);
}

#[test]
fn multipart_uploads_above_the_threshold_round_trip() {
    multipart_round_trip(&Env::s3());
}

#[test]
fn multipart_uploads_round_trip_on_rgw() {
    multipart_round_trip(&Env::rgw());
}

/// The commit is create-only on the gateway too: a second, different commit of a backup id is
/// refused by the server (`If-None-Match: *`), not just by volback's own check for the id. The
/// same bytes again are not a second backup: a create-only put that finds exactly its own
/// bytes reports success, since a lost response to its first attempt looks the same.
#[test]
fn the_create_only_commit_holds_on_rgw() {
    let e = Env::rgw();
    let vol = e.root.join("v.img");
    std::fs::write(&vol, pseudo_random(1 << 20, 4)).unwrap();
    backup_file(&e.c, &vol, "once", None);
    let (m, _) = e.c.read_manifest("once").unwrap();
    let other = volback::format::manifest::Manifest {
        volume_id: "another".into(),
        ..m.clone()
    };
    match e.c.commit_manifest(&other) {
        Err(volback::Error::BackupExists { id, .. }) => assert_eq!(id, "once"),
        other => panic!("a second commit must be refused: {other:?}"),
    }
    e.c.commit_manifest(&m)
        .expect("the same bytes again: the put's own earlier attempt");
    assert_eq!(e.c.read_manifest("once").unwrap().0, m);
    // Writers racing to commit one id: exactly one wins.
    let wins: Vec<bool> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4)
            .map(|i| {
                let mi = volback::format::manifest::Manifest {
                    backup_id: "race".into(),
                    volume_id: format!("v{i}"),
                    ..m.clone()
                };
                let c = &e.c;
                s.spawn(move || c.commit_manifest(&mi).is_ok())
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(wins.iter().filter(|w| **w).count(), 1, "{wins:?}");
}

fn multipart_round_trip(e: &Env) {
    let mut o = e.s3.clone();
    o.multipart_threshold = Some(1 << 20);
    o.concurrency = Some(3);
    let c = Container::open_with(&e.url, true, None, &o).unwrap();
    let vol = e.root.join("v.img");
    std::fs::write(&vol, pseudo_random(40 << 20, 3)).unwrap();
    let r = backup_file(&c, &vol, "mp", None);
    // A 32 MiB pack in 16 MiB parts is create + 2 parts + complete: more requests than objects.
    assert!(r.requests.put > r.object_count + 2, "{:?}", r.requests);
    let out = e.root.join("out.img");
    run_restore(&c, "mp", &out, TargetMode::New, None).unwrap();
    assert_same(&vol, &out);
}
