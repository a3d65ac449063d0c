//! A real Ceph RADOS Gateway, for the Object Lock tests (it enforces S3 retention as AWS does;
//! s3s-fs has no Object Lock at all) and for many hosts sharing one distributed store. Started
//! once per test process by `scripts/ceph-rgw.sh` in a temporary directory, and stopped by that
//! script's watcher when the process ends. A missing Ceph is a test failure, never a skip:
//! `scripts/test.sh` installs it.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use volback::store::s3::S3Options;

/// A running gateway.
pub struct Rgw {
    endpoint: String,
    _dir: PathBuf,
}

impl Rgw {
    /// The gateway of this test process, started on first use.
    pub fn shared() -> &'static Rgw {
        static RGW: OnceLock<Rgw> = OnceLock::new();
        RGW.get_or_init(Rgw::start)
    }

    fn start() -> Rgw {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/ceph-rgw.sh");
        let dir = std::env::temp_dir().join(format!("volback-rgw-{}", std::process::id()));
        let out = Command::new("bash")
            .arg(&script)
            .arg("start")
            .arg(&dir)
            .arg(std::process::id().to_string())
            .output()
            .expect("run scripts/ceph-rgw.sh");
        assert!(
            out.status.success(),
            "Ceph RGW did not start (install it with `bash scripts/test.sh`, which runs \
             apt-get install ceph-mon ceph-osd radosgw ceph-common):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Rgw {
            endpoint: String::from_utf8_lossy(&out.stdout).trim().to_string(),
            _dir: dir,
        }
    }

    /// The cluster's `ceph.conf`, for the `ceph` and `rbd` tools (the cluster has no
    /// authentication).
    pub fn conf(&self) -> PathBuf {
        self._dir.join("ceph.conf")
    }

    /// Kills the gateway (SIGKILL, as a crash would) and starts it again on the same port; the
    /// cluster's data, in the OSD, stays. Returns once the gateway answers again.
    pub fn restart_gateway(&self) {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/ceph-rgw.sh");
        let out = Command::new("bash")
            .arg(&script)
            .arg("restart-gateway")
            .arg(&self._dir)
            .output()
            .expect("run scripts/ceph-rgw.sh");
        assert!(
            out.status.success(),
            "the gateway did not restart:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Options that reach the gateway as its test user.
    pub fn options(&self) -> S3Options {
        S3Options {
            endpoint: Some(self.endpoint.clone()),
            region: Some("us-east-1".into()),
            access_key_id: Some("volbacktest".into()),
            secret_access_key: Some("volbacktestsecret".into()),
            retry_timeout: Some(Duration::from_secs(10)),
            ..Default::default()
        }
    }
}
