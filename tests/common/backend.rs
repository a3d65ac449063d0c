//! Test backends: a filesystem container, or a real S3-compatible server
//! ([`volback_testkit::s3server`]) started on 127.0.0.1 for the test and stopped when it ends.
//! Both store objects as plain files, so tests can damage stored objects the same way on both.
#![allow(dead_code)]

use std::path::PathBuf;

use volback::container::Container;
use volback::store::s3::S3Options;
#[allow(unused_imports)]
pub use volback_testkit::s3server::{
    ACCESS_KEY, BUCKET, S3Server, SECRET_KEY, free_port, s3_options,
};

/// Where a test's container lives.
pub struct Env {
    _dir: tempfile::TempDir,
    /// Scratch space for volumes and restores.
    pub root: PathBuf,
    /// Container URL.
    pub url: String,
    /// The directory holding the container's objects as files (`<objects>/packs/...`).
    pub objects: PathBuf,
    pub s3: S3Options,
    pub server: Option<S3Server>,
    /// On Ceph's RADOS Gateway: its endpoint (objects are not files there: `objects` is not
    /// used).
    pub rgw: Option<String>,
    pub c: Container,
}

impl Env {
    pub fn fs() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let objects = root.join("container");
        let url = objects.display().to_string();
        let s3 = S3Options::default();
        let c = Container::open_with(&url, true, None, &s3).unwrap();
        Env {
            _dir: dir,
            root,
            url,
            objects,
            s3,
            server: None,
            rgw: None,
            c,
        }
    }

    /// A container in a bucket of its own on the test process's Ceph RADOS Gateway (a real
    /// distributed object store: monitor, OSD, gateway), started on first use.
    pub fn rgw() -> Env {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let rgw = volback_testkit::ceph::Rgw::shared();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let bucket = format!(
            "vb-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let s3 = rgw.options();
        volback::store::s3::S3Store::open(&bucket, "c1", &s3)
            .unwrap()
            .create_bucket(false)
            .unwrap();
        let url = format!("s3://{bucket}/c1");
        let c = Container::open_with(&url, true, None, &s3).unwrap();
        Env {
            objects: root.join("not-files-on-rgw"),
            _dir: dir,
            root,
            url,
            s3,
            server: None,
            rgw: Some(rgw.endpoint().to_string()),
            c,
        }
    }

    pub fn s3() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let server_root = root.join("s3");
        std::fs::create_dir_all(server_root.join(BUCKET)).unwrap();
        let server = S3Server::start(&server_root);
        let s3 = s3_options(&server.endpoint());
        let url = format!("s3://{BUCKET}/c1");
        let objects = server_root.join(BUCKET).join("c1");
        let c = Container::open_with(&url, true, None, &s3).unwrap();
        Env {
            _dir: dir,
            root,
            url,
            objects,
            s3,
            server: Some(server),
            rgw: None,
            c,
        }
    }

    /// A URL and directory for a copy of the container (same backend).
    pub fn copy_container(&self) -> (String, PathBuf) {
        match &self.server {
            None => {
                let p = self.root.join("copy");
                super::copy_dir(&self.objects, &p);
                (p.display().to_string(), p)
            }
            Some(_) => {
                let p = self.objects.parent().unwrap().join("copy");
                super::copy_dir(&self.objects, &p);
                (format!("s3://{BUCKET}/copy"), p)
            }
        }
    }

    /// The URL and object directory of another, empty container `name` on the same backend.
    pub fn second_container(&self, name: &str) -> (String, PathBuf) {
        match &self.server {
            None => {
                let p = self.root.join(name);
                (p.display().to_string(), p)
            }
            Some(_) => (
                format!("s3://{BUCKET}/{name}"),
                self.objects.parent().unwrap().join(name),
            ),
        }
    }

    /// Environment and flags that point the CLI at this container.
    /// Bytes the container's objects take, as its store lists them (on every backend).
    pub fn stored_bytes(&self) -> u64 {
        self.c
            .store()
            .list("")
            .unwrap()
            .iter()
            .map(|o| o.size)
            .sum()
    }

    pub fn cli_env(&self) -> Vec<(String, String)> {
        if let Some(endpoint) = &self.rgw {
            return vec![
                ("AWS_ACCESS_KEY_ID".into(), "volbacktest".into()),
                ("AWS_SECRET_ACCESS_KEY".into(), "volbacktestsecret".into()),
                ("AWS_ENDPOINT_URL".into(), endpoint.clone()),
                ("AWS_REGION".into(), "us-east-1".into()),
            ];
        }
        match &self.server {
            None => vec![],
            Some(s) => vec![
                ("AWS_ACCESS_KEY_ID".into(), ACCESS_KEY.into()),
                ("AWS_SECRET_ACCESS_KEY".into(), SECRET_KEY.into()),
                ("AWS_ENDPOINT_URL".into(), s.endpoint()),
                ("AWS_REGION".into(), "us-east-1".into()),
            ],
        }
    }
}

/// The JSON object a `--json` command printed (panics with its output if there is none).
pub fn json_of(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "not JSON: {} / {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// BLAKE3 of a file's contents, hex.
pub fn hash_file(p: &std::path::Path) -> String {
    blake3::hash(&std::fs::read(p).unwrap())
        .to_hex()
        .to_string()
}
