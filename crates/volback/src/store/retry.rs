//! Retries of transient store failures, for every backend.
//!
//! The S3 client retries HTTP-level failures itself; this layer sits above every store and
//! retries what a store reports as [`Error::Transient`] (an interrupted or timed-out call on a
//! network filesystem, a fault injected by a test), with exponential backoff. Every store
//! operation volback uses is safe to repeat: puts of content-named objects and deletes are
//! idempotent, and a create-only put whose first attempt landed although it reported failure
//! is recognised by reading the object back and comparing it with what was sent.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::store::s3_lock::LockMode;
use crate::store::{ObjectMeta, ObjectStore, RequestCounts};

/// Attempts per operation (the first included).
const ATTEMPTS: u32 = 6;
/// Backoff before the second attempt; quadrupled each time, at most `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// A store that retries transient failures of the store it wraps.
pub struct RetryStore {
    inner: Arc<dyn ObjectStore>,
}

impl RetryStore {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        RetryStore { inner }
    }

    fn retry<T>(&self, mut f: impl FnMut(u32) -> Result<T>) -> Result<T> {
        let mut backoff = FIRST_BACKOFF;
        let mut attempt = 0;
        loop {
            match f(attempt) {
                Err(Error::Transient { op, key, message }) if attempt + 1 < ATTEMPTS => {
                    tracing::debug!("{op} '{key}': {message}; retrying in {backoff:?}");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 4).min(MAX_BACKOFF);
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

impl ObjectStore for RetryStore {
    fn put(&self, key: &str, data: Bytes) -> Result<()> {
        self.retry(|_| self.inner.put(key, data.clone()))
    }

    fn put_if_absent(&self, key: &str, data: Bytes) -> Result<bool> {
        self.retry(|attempt| {
            let created = self.inner.put_if_absent(key, data.clone())?;
            if created || attempt == 0 {
                return Ok(created);
            }
            // An earlier attempt may have landed and reported failure: the object is ours if it
            // holds exactly what we sent.
            match self.inner.get(key) {
                Ok(there) => Ok(there == data),
                Err(Error::MissingObject { .. }) => Ok(false),
                Err(e) => Err(e),
            }
        })
    }

    fn get(&self, key: &str) -> Result<Bytes> {
        self.retry(|_| self.inner.get(key))
    }

    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        self.retry(|_| self.inner.get_range(key, range.clone()))
    }

    fn get_range_into(
        &self,
        key: &str,
        range: Range<u64>,
        buf: &mut Vec<u8>,
    ) -> Result<Option<Bytes>> {
        self.retry(|_| self.inner.get_range_into(key, range.clone(), buf))
    }

    fn head(&self, key: &str) -> Result<Option<u64>> {
        self.retry(|_| self.inner.head(key))
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        self.retry(|_| self.inner.list(prefix))
    }

    fn list_each(&self, prefix: &str, f: &mut dyn FnMut(ObjectMeta)) -> Result<()> {
        self.retry(|_| self.inner.list_each(prefix, f))
    }

    fn delete(&self, key: &str) -> Result<()> {
        self.retry(|_| self.inner.delete(key))
    }

    fn requests(&self) -> RequestCounts {
        self.inner.requests()
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn concurrency(&self) -> usize {
        self.inner.concurrency()
    }

    fn upload_concurrency(&self) -> usize {
        self.inner.upload_concurrency()
    }

    fn retain(&self, key: &str, mode: LockMode, until_unix: u64) -> Result<()> {
        self.retry(|_| self.inner.retain(key, mode, until_unix))
    }

    fn retained_until(&self, key: &str) -> Result<Option<u64>> {
        self.retry(|_| self.inner.retained_until(key))
    }

    fn delete_versions(&self, key: &str) -> Result<()> {
        self.retry(|_| self.inner.delete_versions(key))
    }

    fn undelete(&self, prefix: &str) -> Result<u64> {
        self.retry(|_| self.inner.undelete(prefix))
    }

    fn noncurrent_versions(&self, prefix: &str) -> Result<Option<(u64, u64)>> {
        self.retry(|_| self.inner.noncurrent_versions(prefix))
    }

    fn check_object_lock(&self) -> Result<()> {
        self.retry(|_| self.inner.check_object_lock())
    }

    fn sweep_temporaries(&self, age: Duration) -> Result<u64> {
        self.inner.sweep_temporaries(age)
    }
}
