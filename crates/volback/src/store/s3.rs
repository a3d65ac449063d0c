//! S3-compatible object storage, through the `object_store` crate.
//!
//! The S3 backend implements the same synchronous [`ObjectStore`] trait as the filesystem: each
//! call drives an async request to completion on a small private tokio runtime. Concurrency comes
//! from the callers — several pack-upload threads during a backup, a pool of range readers during
//! a restore — which keeps in-flight bytes bounded by (threads x pack size).
//!
//! - **Configuration** comes from, in order of precedence: explicit [`S3Options`] (CLI flags,
//!   the driver's config), the standard environment variables (`AWS_ENDPOINT_URL`,
//!   `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`,
//!   `AWS_DEFAULT_REGION`), then the shared files for `AWS_PROFILE` (`~/.aws/credentials` and
//!   `~/.aws/config`, or `AWS_SHARED_CREDENTIALS_FILE` / `AWS_CONFIG_FILE`). Requests are
//!   path-style when an endpoint is set; plain `http://` endpoints are allowed.
//! - **Retries**: object_store retries 5xx, throttling, timeouts and connection resets with
//!   exponential backoff and jitter, bounded in count and total time; 4xx answers (403, missing
//!   bucket) fail at once, so a bad configuration is reported in seconds.
//! - **Create-only writes** (manifests, config) use `If-None-Match: *`.
//! - **Multipart upload** above a threshold (default 64 MiB, above the default pack size, so a
//!   pack is normally one PUT: request count matters more than part parallelism here).
//! - Credentials never appear in messages: errors are rebuilt from the operation, the key and
//!   the server's answer, and `describe()` shows only `s3://bucket/prefix`.
//!
//! `aws-sdk-s3` is not used: object_store covers every call volback makes.

use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as OsPath;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore as _, ObjectStoreExt, PutMode, PutOptions,
    PutPayload, RetryConfig,
};

use crate::error::{Error, Result};
use crate::store::{ObjectMeta, ObjectStore, RequestCounters, RequestCounts, validate_key};

/// S3 connection settings. Unset fields fall back to the environment, then the profile files.
#[derive(Debug, Clone, Default)]
pub struct S3Options {
    /// Endpoint URL, e.g. `http://127.0.0.1:9000` (None: AWS).
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    /// Never printed or logged.
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    /// Profile in the shared files (`AWS_PROFILE`).
    pub profile: Option<String>,
    /// Concurrent requests (uploads during backup, ranged reads during restore).
    pub concurrency: Option<usize>,
    /// Objects larger than this are uploaded with multipart upload.
    pub multipart_threshold: Option<u64>,
    /// Give up on a request that keeps failing transiently after this long.
    pub retry_timeout: Option<Duration>,
}

/// Default concurrent requests.
pub const DEFAULT_CONCURRENCY: usize = 8;
const DEFAULT_MULTIPART_THRESHOLD: u64 = 64 << 20;
const PART_SIZE: usize = 16 << 20;

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Reads `[section]` key/values from an INI-style AWS shared file.
fn ini_section(path: &std::path::Path, section: &str) -> Vec<(String, String)> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut inside = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') && line.ends_with(']') {
            let name = line[1..line.len() - 1].trim();
            inside =
                name == section || name.strip_prefix("profile ").map(str::trim) == Some(section);
            continue;
        }
        if inside && let Some((k, v)) = line.split_once('=') {
            out.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    out
}

impl S3Options {
    /// Fills unset fields from the environment and the profile's shared files.
    pub fn resolved(&self) -> S3Options {
        let mut o = self.clone();
        o.endpoint = o
            .endpoint
            .or_else(|| env("AWS_ENDPOINT_URL_S3"))
            .or_else(|| env("AWS_ENDPOINT_URL"));
        o.region = o
            .region
            .or_else(|| env("AWS_REGION"))
            .or_else(|| env("AWS_DEFAULT_REGION"));
        let env_keys = env("AWS_ACCESS_KEY_ID").zip(env("AWS_SECRET_ACCESS_KEY"));
        if o.access_key_id.is_none()
            && let Some((id, secret)) = env_keys
        {
            o.access_key_id = Some(id);
            o.secret_access_key = o.secret_access_key.or(Some(secret));
            o.session_token = o.session_token.or_else(|| env("AWS_SESSION_TOKEN"));
        }
        let profile = o
            .profile
            .clone()
            .or_else(|| env("AWS_PROFILE"))
            .unwrap_or_else(|| "default".into());
        let home = env("HOME").map(PathBuf::from).unwrap_or_default();
        let creds = env("AWS_SHARED_CREDENTIALS_FILE")
            .map(PathBuf::from)
            .unwrap_or_else(|| home.join(".aws/credentials"));
        let config = env("AWS_CONFIG_FILE")
            .map(PathBuf::from)
            .unwrap_or_else(|| home.join(".aws/config"));
        let mut kv = ini_section(&creds, &profile);
        kv.extend(ini_section(&config, &profile));
        let get = |k: &str| kv.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
        if o.access_key_id.is_none() {
            o.access_key_id = get("aws_access_key_id");
            o.secret_access_key = o.secret_access_key.or_else(|| get("aws_secret_access_key"));
            o.session_token = o.session_token.or_else(|| get("aws_session_token"));
        }
        o.region = o.region.or_else(|| get("region"));
        o.endpoint = o.endpoint.or_else(|| get("endpoint_url"));
        o
    }
}

/// A container under `s3://bucket/prefix`.
pub struct S3Store {
    rt: tokio::runtime::Runtime,
    inner: Arc<AmazonS3>,
    bucket: String,
    prefix: String,
    concurrency: usize,
    multipart_threshold: u64,
    counters: RequestCounters,
}

impl S3Store {
    /// Connects to `bucket` (no request is made until the first operation).
    pub fn open(bucket: &str, prefix: &str, options: &S3Options) -> Result<Self> {
        let o = options.resolved();
        let mut b = AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_region(o.region.clone().unwrap_or_else(|| "us-east-1".into()))
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(100),
                    max_backoff: Duration::from_secs(5),
                    base: 2.0,
                },
                max_retries: 6,
                retry_timeout: o.retry_timeout.unwrap_or(Duration::from_secs(30)),
            })
            .with_client_options(
                ClientOptions::new()
                    .with_connect_timeout(Duration::from_secs(5))
                    .with_timeout(Duration::from_secs(120))
                    .with_allow_http(true),
            );
        if let Some(e) = &o.endpoint {
            b = b.with_endpoint(e).with_virtual_hosted_style_request(false);
        }
        match (&o.access_key_id, &o.secret_access_key) {
            (Some(id), Some(secret)) => {
                b = b.with_access_key_id(id).with_secret_access_key(secret);
                if let Some(t) = &o.session_token {
                    b = b.with_token(t);
                }
            }
            (Some(_), None) => {
                return Err(Error::Config(
                    "S3 access key id given without a secret access key".into(),
                ));
            }
            // Never fall back to instance-metadata credentials (a request to 169.254.169.254 that
            // hangs or fails obscurely off-cloud): say what is missing instead.
            _ => {
                return Err(Error::Config(format!(
                    "no S3 credentials for s3://{bucket}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, \
                     or AWS_PROFILE with ~/.aws/credentials"
                )));
            }
        }
        let inner = b.build().map_err(|e| {
            Error::Config(format!(
                "S3 container s3://{bucket}/{prefix}: {}",
                clean(&e.to_string())
            ))
        })?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("volback-s3")
            .enable_all()
            .build()
            .map_err(|e| Error::Internal(format!("tokio runtime: {e}")))?;
        Ok(S3Store {
            rt,
            inner: Arc::new(inner),
            bucket: bucket.into(),
            prefix: prefix.trim_matches('/').into(),
            concurrency: o.concurrency.unwrap_or(DEFAULT_CONCURRENCY).max(1),
            multipart_threshold: o.multipart_threshold.unwrap_or(DEFAULT_MULTIPART_THRESHOLD),
            counters: RequestCounters::default(),
        })
    }

    fn path(&self, key: &str) -> Result<OsPath> {
        validate_key(key)?;
        let full = if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.prefix)
        };
        OsPath::parse(&full).map_err(|e| Error::Config(format!("bad S3 key '{full}': {e}")))
    }

    fn err(&self, op: &'static str, key: &str, e: object_store::Error) -> Error {
        match e {
            object_store::Error::NotFound { .. } => Error::MissingObject {
                key: key.to_string(),
            },
            other => {
                let text = clean(&format!("{other}"));
                Error::Remote {
                    op,
                    location: format!("s3://{}/{}", self.bucket, self.full_key(key)),
                    message: text,
                }
            }
        }
    }

    fn full_key(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.prefix)
        }
    }

    async fn multipart(&self, path: &OsPath, data: Bytes) -> object_store::Result<u64> {
        let mut up = self.inner.put_multipart(path).await?;
        let mut parts = Vec::new();
        let mut off = 0;
        while off < data.len() {
            let end = (off + PART_SIZE).min(data.len());
            parts.push(up.put_part(PutPayload::from(data.slice(off..end))));
            off = end;
        }
        let n = parts.len() as u64;
        match futures::future::try_join_all(parts).await {
            Ok(_) => {
                up.complete().await?;
                Ok(n + 2)
            }
            Err(e) => {
                let _ = up.abort().await;
                Err(e)
            }
        }
    }
}

/// Keeps the server's answer but never anything that looks like a credential.
fn clean(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for word in s.split_inclusive(char::is_whitespace) {
        let w = word.trim();
        let secretish =
            w.contains("Signature=") || w.contains("X-Amz-Credential") || w.contains("Credential=");
        if secretish {
            out.push_str("[redacted] ");
        } else {
            out.push_str(word);
        }
    }
    out
}

impl ObjectStore for S3Store {
    fn put(&self, key: &str, data: Bytes) -> Result<()> {
        let path = self.path(key)?;
        let len = data.len();
        if len as u64 > self.multipart_threshold {
            let n = self
                .rt
                .block_on(self.multipart(&path, data))
                .map_err(|e| self.err("upload", key, e))?;
            for _ in 1..n {
                self.counters.put(0);
            }
            self.counters.put(len);
            return Ok(());
        }
        self.counters.put(len);
        self.rt
            .block_on(self.inner.put(&path, PutPayload::from(data)))
            .map(|_| ())
            .map_err(|e| self.err("put", key, e))
    }

    fn put_if_absent(&self, key: &str, data: Bytes) -> Result<bool> {
        let path = self.path(key)?;
        self.counters.put(data.len());
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self
            .rt
            .block_on(self.inner.put_opts(&path, PutPayload::from(data), opts))
        {
            Ok(_) => Ok(true),
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => Ok(false),
            Err(e) => Err(self.err("create", key, e)),
        }
    }

    fn get(&self, key: &str) -> Result<Bytes> {
        let path = self.path(key)?;
        let data = self
            .rt
            .block_on(async { self.inner.get(&path).await?.bytes().await })
            .map_err(|e| self.err("get", key, e))?;
        self.counters.get(data.len());
        Ok(data)
    }

    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        let path = self.path(key)?;
        let want = range.end - range.start;
        let data = self
            .rt
            .block_on(self.inner.get_range(&path, range.clone()))
            .map_err(|e| self.err("get range", key, e))?;
        self.counters.get(data.len());
        if data.len() as u64 != want {
            return Err(Error::corrupt(
                key,
                range.start,
                format!("object ends before byte {}", range.end),
            ));
        }
        Ok(data)
    }

    fn head(&self, key: &str) -> Result<Option<u64>> {
        let path = self.path(key)?;
        self.counters.head();
        match self.rt.block_on(self.inner.head(&path)) {
            Ok(m) => Ok(Some(m.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err("head", key, e)),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        self.counters.list();
        let dir = prefix.rfind('/').map(|i| &prefix[..i]).unwrap_or("");
        let full_dir = match (self.prefix.is_empty(), dir.is_empty()) {
            (true, _) => dir.to_string(),
            (false, true) => self.prefix.clone(),
            (false, false) => format!("{}/{dir}", self.prefix),
        };
        let p = if full_dir.is_empty() {
            None
        } else {
            Some(OsPath::from(full_dir.as_str()))
        };
        let strip = if self.prefix.is_empty() {
            0
        } else {
            self.prefix.len() + 1
        };
        let metas: Vec<object_store::ObjectMeta> = self
            .rt
            .block_on(self.inner.list(p.as_ref()).try_collect())
            .map_err(|e| self.err("list", prefix, e))?;
        let mut out: Vec<ObjectMeta> = metas
            .into_iter()
            .filter_map(|m| {
                let k = m.location.as_ref();
                let key = k.get(strip..)?.to_string();
                key.starts_with(prefix)
                    .then_some(ObjectMeta { key, size: m.size })
            })
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key)?;
        self.counters.delete();
        match self.rt.block_on(self.inner.delete(&path)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err("delete", key, e)),
        }
    }

    fn requests(&self) -> RequestCounts {
        self.counters.snapshot()
    }

    fn describe(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }

    fn concurrency(&self) -> usize {
        self.concurrency
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("credentials");
        std::fs::write(&creds, "[default]\naws_access_key_id = A\n[ci]\naws_access_key_id=B\naws_secret_access_key = S\n").unwrap();
        let kv = ini_section(&creds, "ci");
        assert_eq!(
            kv,
            vec![
                ("aws_access_key_id".into(), "B".into()),
                ("aws_secret_access_key".into(), "S".into())
            ]
        );
        let conf = dir.path().join("config");
        std::fs::write(&conf, "[profile ci]\nregion = eu-west-1\n").unwrap();
        assert_eq!(
            ini_section(&conf, "ci"),
            vec![("region".into(), "eu-west-1".into())]
        );
    }

    #[test]
    fn messages_never_carry_signatures() {
        let s = clean(
            "GET http://h/b?X-Amz-Credential=AKIA%2F&X-Amz-Signature=abc failed: 403 Forbidden",
        );
        assert!(!s.contains("AKIA") && s.contains("403"));
    }
}
