//! Deletes that leave no version behind, for containers in versioned buckets.
//!
//! A bucket with Object Lock is versioned: a plain DELETE only puts a delete marker in front
//! of the object, whose bytes stay (and are billed) until something deletes that version. A
//! container with Object Lock sees its store through [`AllVersions`], whose `delete` removes
//! every version of the key ([`ObjectStore::delete_versions`]): leases, records and swept packs
//! go for good, and a version still under retention is [`crate::Error::Retained`], never a
//! silently hidden object.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::error::Result;
use crate::store::s3_lock::LockMode;
use crate::store::{ObjectMeta, ObjectStore, RequestCounts};

/// A store whose deletes remove every version (see the module documentation).
pub struct AllVersions {
    inner: Arc<dyn ObjectStore>,
}

impl AllVersions {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        AllVersions { inner }
    }
}

impl ObjectStore for AllVersions {
    fn put(&self, key: &str, data: Bytes) -> Result<()> {
        self.inner.put(key, data)
    }
    fn put_if_absent(&self, key: &str, data: Bytes) -> Result<bool> {
        self.inner.put_if_absent(key, data)
    }
    fn get(&self, key: &str) -> Result<Bytes> {
        self.inner.get(key)
    }
    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        self.inner.get_range(key, range)
    }
    fn get_range_into(
        &self,
        key: &str,
        range: Range<u64>,
        buf: &mut Vec<u8>,
    ) -> Result<Option<Bytes>> {
        self.inner.get_range_into(key, range, buf)
    }
    fn head(&self, key: &str) -> Result<Option<u64>> {
        self.inner.head(key)
    }
    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        self.inner.list(prefix)
    }
    fn list_each(&self, prefix: &str, f: &mut dyn FnMut(ObjectMeta)) -> Result<()> {
        self.inner.list_each(prefix, f)
    }
    fn delete(&self, key: &str) -> Result<()> {
        self.inner.delete_versions(key)
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
    fn sweep_temporaries(&self, age: Duration) -> Result<u64> {
        self.inner.sweep_temporaries(age)
    }
    fn retain(&self, key: &str, mode: LockMode, until_unix: u64) -> Result<()> {
        self.inner.retain(key, mode, until_unix)
    }
    fn retained_until(&self, key: &str) -> Result<Option<u64>> {
        self.inner.retained_until(key)
    }
    fn delete_versions(&self, key: &str) -> Result<()> {
        self.inner.delete_versions(key)
    }
    fn undelete(&self, prefix: &str) -> Result<u64> {
        self.inner.undelete(prefix)
    }
    fn noncurrent_versions(&self, prefix: &str) -> Result<Option<(u64, u64)>> {
        self.inner.noncurrent_versions(prefix)
    }
    fn check_object_lock(&self) -> Result<()> {
        self.inner.check_object_lock()
    }
}
