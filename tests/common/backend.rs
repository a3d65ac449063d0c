//! Test backends: a filesystem container, or a real S3-compatible server (s3s-fs) started on
//! 127.0.0.1 at a free port for the test and stopped when it ends. s3s-fs stores objects as plain
//! files (`ROOT/bucket/key`), so tests can damage stored objects the same way on both backends.
//!
//! A missing s3s-fs is a test failure, never a skip: `scripts/test.sh` installs it.
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use volback::container::Container;
use volback::s3::S3Options;

pub const ACCESS_KEY: &str = "volback-test-key";
pub const SECRET_KEY: &str = "volback-test-secret-do-not-print";
pub const BUCKET: &str = "volback-test";

/// A running s3s-fs; killed on drop.
pub struct S3Server {
    child: Child,
    pub port: u16,
    pub root: PathBuf,
}

fn s3s_fs_binary() -> PathBuf {
    if let Ok(p) = std::env::var("VOLBACK_S3S_FS") {
        return p.into();
    }
    if let Ok(out) = Command::new("sh")
        .args(["-c", "command -v s3s-fs"])
        .output()
        && out.status.success()
    {
        return String::from_utf8_lossy(&out.stdout).trim().into();
    }
    let home = std::env::var("HOME").unwrap_or_default();
    let p = Path::new(&home).join(".cargo/bin/s3s-fs");
    assert!(
        p.exists(),
        "s3s-fs is not installed: run `bash scripts/test.sh`, which installs it \
         (cargo install s3s-fs --version 0.14.1 --features binary --locked)"
    );
    p
}

impl S3Server {
    /// Starts a server over `root` (bucket directories are created by the caller).
    pub fn start(root: &Path) -> S3Server {
        Self::start_on(root, free_port())
    }

    /// Starts a server over `root` on `port`.
    pub fn start_on(root: &Path, port: u16) -> S3Server {
        std::fs::create_dir_all(root).unwrap();
        let child = Command::new(s3s_fs_binary())
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start s3s-fs");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "s3s-fs did not start on port {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        S3Server {
            child,
            port,
            root: root.into(),
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Stops the server now.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Options that reach the test server with the right credentials.
pub fn s3_options(endpoint: &str) -> S3Options {
    S3Options {
        endpoint: Some(endpoint.into()),
        region: Some("us-east-1".into()),
        access_key_id: Some(ACCESS_KEY.into()),
        secret_access_key: Some(SECRET_KEY.into()),
        retry_timeout: Some(Duration::from_secs(5)),
        ..Default::default()
    }
}

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

    /// Environment and flags that point the CLI at this container.
    pub fn cli_env(&self) -> Vec<(String, String)> {
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

impl Env {
    /// Runs the `volback` binary against this backend (S3 settings in its environment).
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new(env!("CARGO_BIN_EXE_volback"))
            .args(args)
            .envs(self.cli_env())
            .output()
            .unwrap()
    }

    /// `volback restore --json` of backup `id` in container `url` to a new file `target`.
    pub fn cli_restore(
        &self,
        url: &str,
        id: &str,
        target: &std::path::Path,
    ) -> std::process::Output {
        let t = target.display().to_string();
        self.cli(&[
            "restore",
            "--container",
            url,
            "--backup-id",
            id,
            "--target",
            &t,
            "--json",
        ])
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
