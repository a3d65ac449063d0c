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
//! - **Object Lock** retention and object versions ([`super::s3_lock`]): signed requests of
//!   their own, with this store's credentials and client settings.
//!
//! `aws-sdk-s3` is not used: object_store covers every other call volback makes.

use std::ops::Range;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
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
use crate::store::s3_lock::{LockApi, LockMode, ObjectVersion, VersionDelete};
use crate::store::{ObjectMeta, ObjectStore, RequestCounters, RequestCounts, validate_key};

/// S3 connection settings. Unset fields fall back to the environment, then the profile files.
/// Its `Debug` shows neither the secret key nor the session token.
#[derive(Clone, Default)]
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

impl std::fmt::Debug for S3Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hidden = |v: &Option<String>| v.as_ref().map(|_| "[redacted]");
        f.debug_struct("S3Options")
            .field("endpoint", &self.endpoint.as_deref().map(redact_userinfo))
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &hidden(&self.secret_access_key))
            .field("session_token", &hidden(&self.session_token))
            .field("profile", &self.profile)
            .field("concurrency", &self.concurrency)
            .field("multipart_threshold", &self.multipart_threshold)
            .field("retry_timeout", &self.retry_timeout)
            .finish()
    }
}

/// Default concurrent requests.
pub const DEFAULT_CONCURRENCY: usize = 8;
const DEFAULT_MULTIPART_THRESHOLD: u64 = 64 << 20;
/// How long a failed request is retried, unless `S3Options::retry_timeout` says otherwise.
const DEFAULT_RETRY_TIMEOUT: Duration = Duration::from_secs(30);
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

/// The shared credentials and config files to read: those the environment names, else
/// `~/.aws/credentials` and `~/.aws/config`. Without an absolute `$HOME` there are no default
/// files: `.aws/credentials` relative to the working directory would let whoever controls that
/// directory choose the credentials.
fn shared_files(var: &dyn Fn(&str) -> Option<String>) -> Vec<PathBuf> {
    let home = var("HOME").map(PathBuf::from).filter(|h| h.is_absolute());
    let file = |name: &str, default: &str| {
        var(name)
            .map(PathBuf::from)
            .or_else(|| home.as_ref().map(|h| h.join(default)))
    };
    [
        file("AWS_SHARED_CREDENTIALS_FILE", ".aws/credentials"),
        file("AWS_CONFIG_FILE", ".aws/config"),
    ]
    .into_iter()
    .flatten()
    .collect()
}

impl S3Options {
    /// Fills unset fields from the environment and the profile's shared files.
    pub fn resolved(&self) -> S3Options {
        self.resolved_from(&env)
    }

    /// [`S3Options::resolved`] with `var` as the environment.
    fn resolved_from(&self, var: &dyn Fn(&str) -> Option<String>) -> S3Options {
        let mut o = self.clone();
        o.endpoint = o
            .endpoint
            .or_else(|| var("AWS_ENDPOINT_URL_S3"))
            .or_else(|| var("AWS_ENDPOINT_URL"));
        o.region = o
            .region
            .or_else(|| var("AWS_REGION"))
            .or_else(|| var("AWS_DEFAULT_REGION"));
        let env_keys = var("AWS_ACCESS_KEY_ID").zip(var("AWS_SECRET_ACCESS_KEY"));
        if o.access_key_id.is_none()
            && let Some((id, secret)) = env_keys
        {
            o.access_key_id = Some(id);
            o.secret_access_key = o.secret_access_key.or(Some(secret));
            o.session_token = o.session_token.or_else(|| var("AWS_SESSION_TOKEN"));
        }
        let profile = o
            .profile
            .clone()
            .or_else(|| var("AWS_PROFILE"))
            .unwrap_or_else(|| "default".into());
        let mut kv = Vec::new();
        for path in shared_files(var) {
            kv.extend(ini_section(&path, &profile));
        }
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
    /// The secret key and session token, kept out of every message.
    redact: Vec<String>,
    /// Object Lock and version requests, with this store's client settings and credentials
    /// (built on first use: most containers never lock anything).
    lock_api: OnceLock<Result<LockApi, String>>,
    client_options: ClientOptions,
    region: String,
    endpoint: Option<String>,
    /// How long a request is retried (`S3Options::retry_timeout`).
    retry_timeout: Duration,
}

/// The settings' secrets, to be kept out of messages.
fn secrets(o: &S3Options) -> Vec<&str> {
    [&o.secret_access_key, &o.session_token]
        .into_iter()
        .flatten()
        .map(String::as_str)
        .collect()
}

impl S3Store {
    /// Connects to `bucket` (no request is made until the first operation).
    pub fn open(bucket: &str, prefix: &str, options: &S3Options) -> Result<Self> {
        let o = options.resolved();
        let region = o.region.clone().unwrap_or_else(|| "us-east-1".into());
        let client_options = ClientOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(120))
            .with_allow_http(true);
        let mut b = AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_region(&region)
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(100),
                    max_backoff: Duration::from_secs(5),
                    base: 2.0,
                },
                // Bounded by `retry_timeout`, not by a count: six jittered retries spanned about
                // a second, so a gateway restarted under running backups (2–3 s for Ceph's RGW,
                // `tests/gc_stress.rs`) failed every request in flight.
                max_retries: 100,
                retry_timeout: o.retry_timeout.unwrap_or(DEFAULT_RETRY_TIMEOUT),
            })
            .with_client_options(client_options.clone());
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
                clean(&e.to_string(), &secrets(&o))
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
            redact: secrets(&o).into_iter().map(String::from).collect(),
            lock_api: OnceLock::new(),
            client_options,
            region,
            endpoint: o.endpoint.clone(),
            retry_timeout: o.retry_timeout.unwrap_or(DEFAULT_RETRY_TIMEOUT),
        })
    }

    fn lock_api(&self) -> Result<&LockApi> {
        self.lock_api
            .get_or_init(|| {
                LockApi::new(
                    &self.client_options,
                    self.inner.credentials().clone(),
                    &self.region,
                    self.endpoint.as_deref(),
                    &self.bucket,
                )
                .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| Error::Config(e.clone()))
    }

    /// Creates this store's bucket, with Object Lock enabled if `object_lock` (tests, and
    /// operators preparing a bucket; an existing bucket of this owner is not an error).
    pub fn create_bucket(&self, object_lock: bool) -> Result<()> {
        let api = self.lock_api()?;
        self.rt.block_on(api.create_bucket(object_lock))
    }

    /// Every version and delete marker of `key` (a versioned bucket).
    pub fn versions(&self, key: &str) -> Result<Vec<ObjectVersion>> {
        let full = self.full_key_checked(key)?;
        self.counters.list();
        self.rt.block_on(self.lock_api()?.versions(&full))
    }

    /// Every version and delete marker under `prefix` (full keys).
    fn all_versions(&self, prefix: &str) -> Result<Vec<ObjectVersion>> {
        let full_prefix = if prefix.is_empty() {
            self.full_key("")
        } else {
            self.full_key_checked(prefix)?
        };
        self.counters.list();
        self.rt
            .block_on(self.lock_api()?.versions_under(&full_prefix))
    }

    fn full_key_checked(&self, key: &str) -> Result<String> {
        validate_key(key)?;
        Ok(self.full_key(key))
    }

    /// An error naming the object with its `s3://` location.
    fn located(&self, key: &str, e: Error) -> Error {
        match e {
            Error::Remote { op, message, .. } => Error::Remote {
                op,
                location: format!("s3://{}/{}", self.bucket, self.full_key(key)),
                message: clean(
                    &message,
                    &self.redact.iter().map(String::as_str).collect::<Vec<_>>(),
                ),
            },
            other => other,
        }
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
                let redact: Vec<&str> = self.redact.iter().map(String::as_str).collect();
                let text = clean(&format!("{other}"), &redact);
                if body_cut_off(&other) {
                    return Error::Transient {
                        op,
                        key: format!("s3://{}/{}", self.bucket, self.full_key(key)),
                        message: text,
                    };
                }
                Error::Remote {
                    op,
                    location: format!("s3://{}/{}", self.bucket, self.full_key(key)),
                    message: text,
                }
            }
        }
    }

    /// Runs a request that object_store does not retry itself — a conditional PUT, and the
    /// POST a delete is sent as, are not idempotent to it — again on a transport failure, with
    /// backoff, for up to `retry_timeout`: without this, a gateway restarted under running
    /// backups (`tests/gc_stress.rs`) failed the commits and deletes in flight at once. volback
    /// can repeat both (a delete of a deleted object succeeds; a create-only put that finds the
    /// object reads it back). Returns the last result.
    fn retrying<T>(
        &self,
        mut request: impl FnMut() -> object_store::Result<T>,
    ) -> object_store::Result<T> {
        let deadline = std::time::Instant::now() + self.retry_timeout;
        let mut backoff = Duration::from_millis(100);
        loop {
            match request() {
                Err(e) if transport_failure(&e) && std::time::Instant::now() < deadline => {
                    tracing::debug!("{e}; retrying in {backoff:?}");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                other => return other,
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

/// Whether a response was cut off while its body was read (a gateway killed or restarted
/// mid-response): a transport error (`HttpError`) about the response body. object_store retries
/// failed requests, and GET bodies, itself, but not a LIST's body; the store layer above
/// (`store/retry.rs`) repeats such a request, as it can any request volback makes.
/// `tests/gc_stress.rs` (a gateway restarted under running processes) met it.
fn body_cut_off(e: &object_store::Error) -> bool {
    transport_failure(e) && e.to_string().contains("response body")
}

/// Whether a request failed in transport (`HttpError`: connecting, sending, receiving), not
/// with an answer from the server.
fn transport_failure(e: &object_store::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.downcast_ref::<object_store::client::HttpError>()
            .is_some()
        {
            return true;
        }
        source = s.source();
    }
    false
}

/// Keeps the server's answer but never anything that looks like a credential: signed-URL
/// parameters (signature, credential, security token), a user and password inside a URL, and
/// any of the `secrets` (this store's own keys, however they came to be in the text).
fn clean(s: &str, secrets: &[&str]) -> String {
    const MARKERS: [&str; 6] = [
        "signature=",
        "x-amz-credential",
        "credential=",
        "x-amz-security-token",
        "security-token",
        "awsaccesskeyid",
    ];
    let mut out = String::with_capacity(s.len());
    for word in s.split_inclusive(char::is_whitespace) {
        let lower = word.to_ascii_lowercase();
        if MARKERS.iter().any(|m| lower.contains(m)) {
            out.push_str("[redacted]");
            out.push_str(&word[word.trim_end().len()..]);
        } else {
            out.push_str(&redact_userinfo(word));
        }
    }
    for secret in secrets.iter().filter(|s| s.len() >= 4) {
        out = out.replace(secret, "[redacted]");
    }
    out
}

/// `scheme://user:password@host/...` without the user and password.
fn redact_userinfo(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        let authority_end = tail.find(['/', '?', '#', ' ']).unwrap_or(tail.len());
        match tail[..authority_end].rfind('@') {
            Some(user_end) => {
                out.push_str("[redacted]@");
                rest = &tail[user_end + 1..];
            }
            None => rest = tail,
        }
    }
    out.push_str(rest);
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

    /// Create-only: `If-None-Match: *`. Retried on transport failures (see `retrying`); once
    /// an attempt may have been sent, a refusal (the object exists) is checked by reading the
    /// object back: it is ours if it holds exactly what we sent.
    fn put_if_absent(&self, key: &str, data: Bytes) -> Result<bool> {
        let path = self.path(key)?;
        let result = self.retrying(|| {
            self.counters.put(data.len());
            let opts = PutOptions {
                mode: PutMode::Create,
                ..Default::default()
            };
            let put = self
                .inner
                .put_opts(&path, PutPayload::from(data.clone()), opts);
            self.rt.block_on(put)
        });
        match result {
            Ok(_) => Ok(true),
            // The object exists: written by someone else, or by this very put whose response
            // was lost and which was sent again — by `retrying`, or by object_store's own
            // retries, which this code cannot see (a gateway restarted mid-request). The
            // objects created so are small (manifests, records, the config, key slots): read
            // it back, and it is ours if it holds our bytes.
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => match self.get(key) {
                Ok(there) => Ok(there == data),
                Err(Error::MissingObject { .. }) => Ok(false),
                Err(e) => Err(e),
            },
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
        let mut out = Vec::new();
        self.list_each(prefix, &mut |o| out.push(o))?;
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn list_each(&self, prefix: &str, f: &mut dyn FnMut(ObjectMeta)) -> Result<()> {
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
        // Object by object as the pages arrive: the listing is never held whole.
        self.rt
            .block_on(async {
                let mut pages = self.inner.list(p.as_ref());
                while let Some(m) = pages.try_next().await? {
                    let Some(key) = m.location.as_ref().get(strip..) else {
                        continue;
                    };
                    if key.starts_with(prefix) {
                        f(ObjectMeta {
                            key: key.to_string(),
                            size: m.size,
                        });
                    }
                }
                Ok(())
            })
            .map_err(|e| self.err("list", prefix, e))
    }

    fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key)?;
        let result = self.retrying(|| {
            self.counters.delete();
            self.rt.block_on(self.inner.delete(&path))
        });
        match result {
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

    fn retain(&self, key: &str, mode: LockMode, until_unix: u64) -> Result<()> {
        let full = self.full_key_checked(key)?;
        let api = self.lock_api()?;
        self.counters.put(0);
        match self.rt.block_on(api.put_retention(&full, mode, until_unix)) {
            Ok(()) => Ok(()),
            // A shorter date than the object has is refused (retention only grows): fine if
            // what it has covers `until_unix`.
            Err(e @ Error::Remote { .. }) => match self.retained_until(key)? {
                Some(have) if have >= until_unix => Ok(()),
                _ => Err(self.located(key, e)),
            },
            Err(e) => Err(self.located(key, e)),
        }
    }

    fn retained_until(&self, key: &str) -> Result<Option<u64>> {
        let full = self.full_key_checked(key)?;
        self.counters.head();
        self.rt
            .block_on(self.lock_api()?.get_retention(&full))
            .map_err(|e| self.located(key, e))
    }

    fn delete_versions(&self, key: &str) -> Result<()> {
        let full = self.full_key_checked(key)?;
        let api = self.lock_api()?;
        let mut retained = None;
        for v in self.versions(key)? {
            self.counters.delete();
            match self.rt.block_on(api.delete_version(&full, &v.version_id)) {
                Ok(VersionDelete::Deleted) => {}
                Ok(VersionDelete::Retained(_)) => retained = Some(v),
                Err(e) => return Err(self.located(key, e)),
            }
        }
        match retained {
            None => Ok(()),
            Some(_) => Err(Error::Retained {
                key: key.to_string(),
                until: self
                    .retained_until(key)
                    .ok()
                    .flatten()
                    .map(super::s3_lock::format_date),
            }),
        }
    }

    fn noncurrent_versions(&self, prefix: &str) -> Result<Option<(u64, u64)>> {
        let api = self.lock_api()?;
        self.counters.get(0);
        if self.rt.block_on(api.versioning())? != Some(true) {
            return Ok(None);
        }
        let all = self.all_versions(prefix)?;
        let old = all.iter().filter(|v| !v.latest && !v.delete_marker);
        Ok(Some(old.fold((0, 0), |(n, b), v| (n + 1, b + v.size))))
    }

    fn undelete(&self, prefix: &str) -> Result<u64> {
        let api = self.lock_api()?;
        let all = self.all_versions(prefix)?;
        let kept: std::collections::HashSet<&str> = all
            .iter()
            .filter(|v| !v.delete_marker)
            .map(|v| v.key.as_str())
            .collect();
        let mut shown = std::collections::HashSet::new();
        for m in all
            .iter()
            .filter(|v| v.delete_marker && kept.contains(v.key.as_str()))
        {
            self.counters.delete();
            match self
                .rt
                .block_on(api.delete_version(&m.key, &m.version_id))?
            {
                VersionDelete::Deleted => {
                    shown.insert(m.key.as_str());
                }
                VersionDelete::Retained(why) => {
                    return Err(Error::Remote {
                        op: "remove delete marker of",
                        location: format!("s3://{}/{}", self.bucket, m.key),
                        message: why,
                    });
                }
            }
        }
        Ok(shown.len() as u64)
    }

    fn check_object_lock(&self) -> Result<()> {
        self.counters.get(0);
        if self.rt.block_on(self.lock_api()?.lock_enabled())? {
            Ok(())
        } else {
            Err(Error::Config(format!(
                "bucket '{}' does not have Object Lock enabled: it can only be enabled when \
                 the bucket is created (x-amz-bucket-object-lock-enabled)",
                self.bucket
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_cut_off_mid_body_is_transient_and_nothing_else_is() {
        use object_store::client::{HttpError, HttpErrorKind};
        let generic =
            |source: Box<dyn std::error::Error + Send + Sync>| object_store::Error::Generic {
                store: "S3",
                source,
            };
        let cut = || {
            HttpError::new(
                HttpErrorKind::Unknown,
                std::io::Error::other("request or response body error"),
            )
        };
        assert!(body_cut_off(&generic(Box::new(cut()))));
        // A transport error before any response (object_store has retried it already), and a
        // message that only mentions a body, are not.
        let refused = HttpError::new(
            HttpErrorKind::Connect,
            std::io::Error::other("connection refused"),
        );
        assert!(!body_cut_off(&generic(Box::new(refused))));
        let text = std::io::Error::other("bad response body");
        assert!(!body_cut_off(&generic(Box::new(text))));
    }

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
            &[],
        );
        assert!(!s.contains("AKIA") && s.contains("403"));
    }

    /// Without an absolute `$HOME`, no default shared file is read (never `.aws/credentials`
    /// relative to the working directory); files the environment names are.
    #[test]
    fn no_home_means_no_relative_credentials_file() {
        let files = |vars: &[(&str, &str)]| {
            shared_files(&|k| {
                (vars.iter())
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            })
        };
        assert!(files(&[]).is_empty());
        assert!(files(&[("HOME", "relative")]).is_empty());
        assert_eq!(
            files(&[("HOME", "/home/u")]),
            [
                PathBuf::from("/home/u/.aws/credentials"),
                PathBuf::from("/home/u/.aws/config")
            ]
        );
        assert_eq!(
            files(&[("AWS_SHARED_CREDENTIALS_FILE", "/etc/c")]),
            [PathBuf::from("/etc/c")]
        );
    }

    /// Security tokens, credentials inside an endpoint URL and the store's own secrets never
    /// reach a message; `Debug` of the settings shows neither the secret nor the token.
    #[test]
    fn tokens_userinfo_and_known_secrets_are_redacted() {
        let s = clean(
            "error sending request for url (http://h/b/k?X-Amz-Security-Token=TOK1): connect to \
             http://ak:sk-123@h:9000/b/k failed; token TOK2-own in body",
            &["TOK2-own"],
        );
        for secret in ["sk-123", "TOK1", "TOK2-own", "ak:"] {
            assert!(!s.contains(secret), "{secret} in {s}");
        }
        assert!(
            s.contains("http://[redacted]@h:9000/b/k") && s.contains("in body"),
            "{s}"
        );
        let o = S3Options {
            endpoint: Some("http://user:pw-secret@h:9000".into()),
            access_key_id: Some("AKID".into()),
            secret_access_key: Some("very-secret".into()),
            session_token: Some("session-secret".into()),
            ..Default::default()
        };
        let d = format!("{o:?}");
        assert!(d.contains("AKID") && d.contains("h:9000"), "{d}");
        for secret in ["very-secret", "session-secret", "pw-secret"] {
            assert!(!d.contains(secret), "{secret} in {d}");
        }
    }
}
