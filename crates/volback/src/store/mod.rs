//! Object stores: the minimal set of operations a container needs, and the backends.
//!
//! A container is a flat key space (`packs/ab/abcd…`, `index/…`, `backups/<id>`), the same on
//! every backend, so a filesystem container copied into a bucket is a valid S3 container. The
//! trait is synchronous: the backup and restore pipelines run on OS threads and rayon, and a
//! network backend drives its own async runtime behind these calls.
//!
//!
//! Backends: [`fs`] (a directory), [`memory`], [`s3`] (any S3-compatible server). Every store
//! is wrapped in [`retry`] (transient failures retried with backoff), a container with Object
//! Lock in [`versions`] (deletes remove every version); [`direct`] writes large
//! files around the page cache.

pub mod direct;
pub mod fs;
pub mod memory;
pub mod retry;
pub mod s3;
pub mod s3_lock;
pub mod versions;

pub use fs::{FsStore, read_local_file};
pub use memory::MemStore;

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use crate::error::{Error, Result};

/// Name and size of a listed object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub key: String,
    pub size: u64,
}

/// Counts of requests made against a store, by kind, and bytes moved.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct RequestCounts {
    pub put: u64,
    pub get: u64,
    pub head: u64,
    pub list: u64,
    pub delete: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

/// Atomic request counters shared by a store's callers.
#[derive(Debug, Default)]
pub struct RequestCounters {
    put: AtomicU64,
    get: AtomicU64,
    head: AtomicU64,
    list: AtomicU64,
    delete: AtomicU64,
    sent: AtomicU64,
    received: AtomicU64,
}

impl RequestCounters {
    pub(crate) fn put(&self, bytes: usize) {
        self.put.fetch_add(1, Ordering::Relaxed);
        self.sent.fetch_add(bytes as u64, Ordering::Relaxed);
    }
    pub(crate) fn get(&self, bytes: usize) {
        self.get.fetch_add(1, Ordering::Relaxed);
        self.received.fetch_add(bytes as u64, Ordering::Relaxed);
    }
    pub(crate) fn head(&self) {
        self.head.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn list(&self) {
        self.list.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn delete(&self) {
        self.delete.fetch_add(1, Ordering::Relaxed);
    }
    /// A snapshot of the counts so far.
    pub fn snapshot(&self) -> RequestCounts {
        RequestCounts {
            put: self.put.load(Ordering::Relaxed),
            get: self.get.load(Ordering::Relaxed),
            head: self.head.load(Ordering::Relaxed),
            list: self.list.load(Ordering::Relaxed),
            delete: self.delete.load(Ordering::Relaxed),
            bytes_sent: self.sent.load(Ordering::Relaxed),
            bytes_received: self.received.load(Ordering::Relaxed),
        }
    }
}

impl RequestCounts {
    /// Requests made between `earlier` and `self`.
    pub fn since(&self, earlier: &RequestCounts) -> RequestCounts {
        RequestCounts {
            put: self.put - earlier.put,
            get: self.get - earlier.get,
            head: self.head - earlier.head,
            list: self.list - earlier.list,
            delete: self.delete - earlier.delete,
            bytes_sent: self.bytes_sent - earlier.bytes_sent,
            bytes_received: self.bytes_received - earlier.bytes_received,
        }
    }
}

/// The operations a container needs from storage. Every write is whole-object and atomic: a
/// reader sees the old object, the new one, or none, never a part.
pub trait ObjectStore: Send + Sync {
    /// Writes `data` under `key`, replacing any object there.
    fn put(&self, key: &str, data: Bytes) -> Result<()>;
    /// Writes `data` under `key` only if no object is there; returns false if one was.
    fn put_if_absent(&self, key: &str, data: Bytes) -> Result<bool>;
    /// Reads a whole object. A missing object is [`Error::MissingObject`].
    fn get(&self, key: &str) -> Result<Bytes>;
    /// Reads `range` of an object; fails with [`Error::Corrupt`] if the object is shorter.
    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes>;
    /// Like [`ObjectStore::get_range`], but a store that reads into memory it is given (a
    /// filesystem) reads into `buf[..range length]`, growing `buf` if it is shorter (never
    /// shrinking it), and returns `None`; a store that receives its own buffers (the network)
    /// returns them, as `get_range` does. A caller reading many ranges reuses one buffer: no
    /// fresh pages to fault in and zero for every read (~6 % of a restore's CPU on a
    /// filesystem), and no copy where the store has its bytes already.
    fn get_range_into(
        &self,
        key: &str,
        range: Range<u64>,
        buf: &mut Vec<u8>,
    ) -> Result<Option<Bytes>> {
        let _ = buf;
        self.get_range(key, range).map(Some)
    }
    /// The size of an object, or None if there is none.
    fn head(&self, key: &str) -> Result<Option<u64>>;
    /// Every object whose key starts with `prefix`, sorted by key.
    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>>;
    /// Hands `f` every object whose key starts with `prefix` as the listing pages arrive, in no
    /// particular order, without holding the whole listing (a container's millions of packs
    /// would otherwise cost ~100 bytes each at once). An object may be handed twice when a
    /// failed listing is retried.
    fn list_each(&self, prefix: &str, f: &mut dyn FnMut(ObjectMeta)) -> Result<()> {
        for o in self.list(prefix)? {
            f(o);
        }
        Ok(())
    }
    /// Removes an object; removing a missing object is not an error.
    fn delete(&self, key: &str) -> Result<()>;
    /// Requests made so far through this store.
    fn requests(&self) -> RequestCounts;
    /// A description for messages (never includes credentials).
    fn describe(&self) -> String;
    /// How many requests callers should keep in flight (uploads, ranged reads).
    fn concurrency(&self) -> usize {
        2
    }
    /// How many packs a backup should upload at once. Each one in flight holds a whole pack
    /// in memory; a remote store needs several to hide request latency.
    fn upload_concurrency(&self) -> usize {
        self.concurrency()
    }
    /// Removes leftovers of writes interrupted by a crash that are older than `age` (temporary
    /// files of a filesystem container); returns how many. Stores without any: 0.
    fn sweep_temporaries(&self, age: std::time::Duration) -> Result<u64> {
        let _ = age;
        Ok(0)
    }
    /// Object Lock: keeps the current version of `key` from deletion until `until_unix`, in
    /// `mode`. Retention is never shortened: a date before the one the object already has is
    /// not an error. Stores without Object Lock: [`Error::Config`].
    fn retain(&self, key: &str, mode: s3_lock::LockMode, until_unix: u64) -> Result<()> {
        let _ = (key, mode, until_unix);
        Err(no_object_lock(self.describe()))
    }
    /// The date until which the current version of `key` is retained (`None`: it is not, or
    /// the store has no Object Lock).
    fn retained_until(&self, key: &str) -> Result<Option<u64>> {
        let _ = key;
        Ok(None)
    }
    /// Removes `key` with every earlier version of it, where the store keeps versions (in a
    /// versioned bucket a plain delete only hides an object). A version under retention is
    /// [`Error::Retained`]; versions without retention are removed all the same.
    fn delete_versions(&self, key: &str) -> Result<()> {
        self.delete(key)
    }
    /// Removes the delete markers that hide objects under `prefix` whose earlier versions
    /// are still stored (in a versioned bucket, a plain DELETE by anyone only hides an object):
    /// each such object is visible again. Returns how many. Stores without versions: 0.
    fn undelete(&self, prefix: &str) -> Result<u64> {
        let _ = prefix;
        Ok(0)
    }
    /// In a versioned bucket: how many versions under `prefix` are not current (deleted or
    /// replaced objects the bucket still keeps, and bills) and their bytes. `None`: the store
    /// keeps no versions (or would not say).
    fn noncurrent_versions(&self, prefix: &str) -> Result<Option<(u64, u64)>> {
        let _ = prefix;
        Ok(None)
    }
    /// Checks that objects written here can be locked ([`ObjectStore::retain`]).
    fn check_object_lock(&self) -> Result<()> {
        Err(no_object_lock(self.describe()))
    }
}

fn no_object_lock(store: String) -> Error {
    Error::Config(format!(
        "{store} has no Object Lock: only an S3 bucket created with Object Lock enabled can \
         keep backups from deletion"
    ))
}

/// Checks that a key is a relative, normalised path made of safe characters, so that no key can
/// name a file outside a filesystem container.
pub fn validate_key(key: &str) -> Result<()> {
    let bad = |reason| {
        Err(Error::InvalidId {
            what: "object key",
            value: key.escape_debug().to_string(),
            reason,
        })
    };
    if key.is_empty() || key.len() > 512 {
        return bad("must be 1 to 512 characters");
    }
    if key.starts_with('/') || key.ends_with('/') {
        return bad("must be relative");
    }
    for part in key.split('/') {
        if part.is_empty() || part == "." || part == ".." || part.starts_with('.') {
            return bad("must not contain empty, '.' or '..' components");
        }
        if !part
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        {
            return bad("may only contain ASCII letters, digits, '-', '_', '.' and '/'");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::fs::{FS_TMP_DIR, fs_err};
    use super::*;

    #[test]
    fn network_filesystem_timeouts_are_transient_and_other_errors_final() {
        use std::io::{Error as IoError, ErrorKind};
        for kind in [
            ErrorKind::TimedOut,
            ErrorKind::Interrupted,
            ErrorKind::WouldBlock,
        ] {
            let e = fs_err("read object", "/c/packs/ab", IoError::from(kind));
            assert_eq!(e.kind(), "transient", "{kind:?}");
            assert!(e.to_string().contains("/c/packs/ab"), "{e}");
        }
        let e = fs_err(
            "read object",
            "/c/x",
            IoError::from_raw_os_error(libc::ETIMEDOUT),
        );
        assert_eq!(e.kind(), "transient");
        for kind in [ErrorKind::PermissionDenied, ErrorKind::StorageFull] {
            let e = fs_err("write temporary object", "/c/x", IoError::from(kind));
            assert_eq!(e.kind(), "io", "{kind:?}");
        }
    }

    /// Objects of every size around direct I/O's thresholds and block size read back exactly,
    /// whether this filesystem takes direct I/O or the page cache does the writing.
    #[test]
    fn large_objects_round_trip_whatever_the_write_path() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path(), true).unwrap();
        let min = direct::FILE_MIN;
        let sizes = [
            min - 1,
            min,
            min + 1,
            4 << 20,
            (4 << 20) + 4095,
            (9 << 20) + 17,
        ];
        for (i, &n) in sizes.iter().enumerate() {
            let data: Vec<u8> = (0..n).map(|k| (k * 31 + i * 7 + k / 4099) as u8).collect();
            let key = format!("packs/{i:02}/object");
            store.put(&key, Bytes::from(data.clone())).unwrap();
            assert_eq!(store.head(&key).unwrap(), Some(n as u64), "size {n}");
            assert_eq!(&store.get(&key).unwrap()[..], &data[..], "size {n}");
            let tail = (n - 5000) as u64..n as u64;
            assert_eq!(
                &store.get_range(&key, tail.clone()).unwrap()[..],
                &data[tail.start as usize..],
                "size {n}"
            );
        }
    }

    #[test]
    fn keys_cannot_escape_the_container() {
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../b",
            "a//b",
            ".tmp/x",
            "a/",
            "a\nb",
            "a b",
        ] {
            assert!(validate_key(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["config", "packs/ab/abcdef", "backups/vol-1_x.2"] {
            validate_key(good).unwrap();
        }
    }

    fn exercise(store: &dyn ObjectStore) {
        assert!(matches!(store.get("a/b"), Err(Error::MissingObject { .. })));
        store.put("a/b", Bytes::from_static(b"hello")).unwrap();
        assert_eq!(&store.get("a/b").unwrap()[..], b"hello");
        assert_eq!(&store.get_range("a/b", 1..4).unwrap()[..], b"ell");
        assert!(matches!(
            store.get_range("a/b", 3..9),
            Err(Error::Corrupt { .. })
        ));
        assert!(
            !store
                .put_if_absent("a/b", Bytes::from_static(b"x"))
                .unwrap()
        );
        assert!(
            store
                .put_if_absent("a/c", Bytes::from_static(b"x"))
                .unwrap()
        );
        store.put("ab", Bytes::from_static(b"y")).unwrap();
        store.put("b/a", Bytes::from_static(b"z")).unwrap();
        let keys: Vec<_> = store
            .list("a")
            .unwrap()
            .into_iter()
            .map(|m| m.key)
            .collect();
        assert_eq!(keys, ["a/b", "a/c", "ab"]);
        let keys: Vec<_> = store
            .list("a/")
            .unwrap()
            .into_iter()
            .map(|m| m.key)
            .collect();
        assert_eq!(keys, ["a/b", "a/c"]);
        assert_eq!(store.head("a/c").unwrap(), Some(1));
        store.delete("a/c").unwrap();
        store.delete("a/c").unwrap();
        assert_eq!(store.head("a/c").unwrap(), None);
        let r = store.requests();
        assert!(r.put >= 4 && r.get >= 2 && r.list == 2 && r.delete == 2);
    }

    #[test]
    fn fs_store_behaves_like_an_object_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(&dir.path().join("c"), true).unwrap();
        exercise(&store);
        // Nothing is left in the temporary directory after writes.
        let tmp: Vec<_> = std::fs::read_dir(dir.path().join("c").join(FS_TMP_DIR))
            .unwrap()
            .collect();
        assert!(tmp.is_empty());
    }

    /// A backup sees its store through the retry layer (and, in fault tests, the fault layer):
    /// both must keep the filesystem's one pack upload at a time, or a backup holds twice the
    /// packs in memory.
    #[test]
    fn wrappers_keep_the_inner_stores_upload_concurrency() {
        let dir = tempfile::tempdir().unwrap();
        let fs: std::sync::Arc<dyn ObjectStore> =
            std::sync::Arc::new(FsStore::open(&dir.path().join("c"), true).unwrap());
        let retry = retry::RetryStore::new(fs);
        assert_eq!(retry.upload_concurrency(), 1);
        let mem = retry::RetryStore::new(std::sync::Arc::new(MemStore::new()));
        assert_eq!(mem.upload_concurrency(), mem.concurrency());
    }

    #[test]
    fn mem_store_behaves_like_an_object_store() {
        exercise(&MemStore::new());
    }
}
