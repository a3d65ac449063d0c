//! A real S3-compatible server for tests: s3s-fs (SigV4-checking, objects stored as plain files
//! `ROOT/bucket/key`, so tests can damage them) started on 127.0.0.1 at a free port and stopped
//! when dropped.
//!
//! A missing s3s-fs is a test failure, never a skip: `scripts/test.sh` installs it.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use volback::store::s3::S3Options;

/// Credentials the server accepts (the secret must never appear in output).
pub const ACCESS_KEY: &str = "volback-test-key";
pub const SECRET_KEY: &str = "volback-test-secret-do-not-print";
/// The bucket tests use.
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

    /// The server's URL.
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

/// A TCP port on 127.0.0.1 that nothing listens on right now.
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
