//! Object stores: the minimal set of operations a container needs, and the backends.
//!
//! A container is a flat key space (`packs/ab/abcd…`, `index/…`, `backups/<id>`), the same on
//! every backend, so a filesystem container copied into a bucket is a valid S3 container. The
//! trait is synchronous: the backup and restore pipelines run on OS threads and rayon, and a
//! network backend drives its own async runtime behind these calls.
//!
//! The filesystem backend is written here rather than taken from `object_store`'s
//! `LocalFileSystem`, because a backup's commit point needs guarantees that one does not give:
//! every object is written to a temporary file, fsync'd, and renamed into place, and the directory
//! is fsync'd, so a crash never leaves a torn object under its final name; and create-only writes
//! (`put_if_absent`) use `link(2)`, which is atomic on every POSIX filesystem.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
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

/// A container on a local or network filesystem.
pub struct FsStore {
    root: PathBuf,
    tmp_seq: AtomicU64,
    counters: RequestCounters,
}

/// Directory (under the root) for objects being written; never a valid key because of the dot.
const FS_TMP_DIR: &str = ".tmp";

impl FsStore {
    /// Opens a filesystem container at `root`, creating it (mode 0700) when `create` is set.
    pub fn open(root: &Path, create: bool) -> Result<Self> {
        if create {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(root)
                .map_err(|e| Error::io("create container directory", root, e))?;
        }
        let meta = fs::metadata(root).map_err(|e| Error::io("open container", root, e))?;
        if !meta.is_dir() {
            return Err(Error::Config(format!(
                "container '{}' is not a directory",
                root.display()
            )));
        }
        let tmp = root.join(FS_TMP_DIR);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&tmp)
            .map_err(|e| Error::io("create temporary directory", &tmp, e))?;
        Ok(FsStore {
            root: root.to_path_buf(),
            tmp_seq: AtomicU64::new(0),
            counters: RequestCounters::default(),
        })
    }

    fn path(&self, key: &str) -> Result<PathBuf> {
        validate_key(key)?;
        Ok(self.root.join(key))
    }

    /// Writes `data` to a fresh temporary file and fsyncs it; the caller renames or links it.
    fn write_temp(&self, data: &[u8]) -> Result<PathBuf> {
        let seq = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        let name = format!(
            "{}-{}-{}",
            std::process::id(),
            seq,
            uuid::Uuid::new_v4().simple()
        );
        let tmp = self.root.join(FS_TMP_DIR).join(name);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| fs_err("create temporary object", &tmp, e))?;
        // Large objects (packs) skip the page cache: they are fsync'd next anyway (`direct`).
        let res = match crate::direct::write_file(&tmp, data) {
            Ok(true) => f.sync_all(),
            Ok(false) => f.write_all(data).and_then(|_| f.sync_all()),
            Err(e) => Err(e),
        };
        if let Err(e) = res {
            let _ = fs::remove_file(&tmp);
            return Err(fs_err("write temporary object", &tmp, e));
        }
        Ok(tmp)
    }

    fn ensure_parent(&self, path: &Path) -> Result<()> {
        if let Some(parent) = path.parent() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(|e| fs_err("create directory", parent, e))?;
        }
        Ok(())
    }

    fn sync_parent(path: &Path) {
        // Makes the rename durable. Failure to open a directory for fsync (some network
        // filesystems refuse it) is not worth failing the backup for: the data is already synced.
        if let Some(parent) = path.parent()
            && let Ok(d) = File::open(parent)
        {
            let _ = d.sync_all();
        }
    }

    fn map_read_err(&self, key: &str, path: &Path, e: std::io::Error) -> Error {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::MissingObject {
                key: key.to_string(),
            }
        } else {
            fs_err("read object", path, e)
        }
    }
}

impl ObjectStore for FsStore {
    /// One: writing a second pack in parallel gains nothing on a local disk (each pack is
    /// fsync'd, and the disk is the limit), but holds another 32 MiB pack in memory, and made
    /// the peak depend on whether the disk stalled: 4 GiB / 16 GiB stream backups peaked at
    /// 110–138 / 132–135 MiB with two, 111–113 / 117 MiB with one, at the same speed.
    fn upload_concurrency(&self) -> usize {
        1
    }

    fn put(&self, key: &str, data: Bytes) -> Result<()> {
        let path = self.path(key)?;
        self.counters.put(data.len());
        self.ensure_parent(&path)?;
        let tmp = self.write_temp(&data)?;
        if let Err(e) = fs::rename(&tmp, &path) {
            let _ = fs::remove_file(&tmp);
            return Err(fs_err("rename object into place", &path, e));
        }
        Self::sync_parent(&path);
        Ok(())
    }

    fn put_if_absent(&self, key: &str, data: Bytes) -> Result<bool> {
        let path = self.path(key)?;
        self.counters.put(data.len());
        self.ensure_parent(&path)?;
        let tmp = self.write_temp(&data)?;
        // link(2) fails with EEXIST if the name is taken: an atomic create-only commit.
        let res = fs::hard_link(&tmp, &path);
        let _ = fs::remove_file(&tmp);
        match res {
            Ok(()) => {
                Self::sync_parent(&path);
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(fs_err("link object into place", &path, e)),
        }
    }

    fn get(&self, key: &str) -> Result<Bytes> {
        let path = self.path(key)?;
        let data = fs::read(&path).map_err(|e| self.map_read_err(key, &path, e))?;
        self.counters.get(data.len());
        Ok(Bytes::from(data))
    }

    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        let mut buf = Vec::new();
        self.get_range_into(key, range, &mut buf)?;
        Ok(Bytes::from(buf))
    }

    fn get_range_into(
        &self,
        key: &str,
        range: Range<u64>,
        buf: &mut Vec<u8>,
    ) -> Result<Option<Bytes>> {
        use std::os::unix::fs::FileExt;
        let path = self.path(key)?;
        let f = File::open(&path).map_err(|e| self.map_read_err(key, &path, e))?;
        let len = range.end.saturating_sub(range.start) as usize;
        if buf.len() < len {
            buf.resize(len, 0);
        }
        let buf = &mut buf[..len];
        let mut done = 0usize;
        while done < buf.len() {
            match f.read_at(&mut buf[done..], range.start + done as u64) {
                Ok(0) => {
                    return Err(Error::corrupt(
                        key,
                        range.start + done as u64,
                        format!("object ends before byte {}", range.end),
                    ));
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(fs_err("read object", &path, e)),
            }
        }
        self.counters.get(len);
        Ok(None)
    }

    fn head(&self, key: &str) -> Result<Option<u64>> {
        let path = self.path(key)?;
        self.counters.head();
        match fs::metadata(&path) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(fs_err("stat object", &path, e)),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        self.counters.list();
        // Walk the directory that holds the prefix; keys are '/'-separated paths.
        let (dir, _) = match prefix.rfind('/') {
            Some(i) => (&prefix[..i], &prefix[i + 1..]),
            None => ("", prefix),
        };
        let mut out = Vec::new();
        let start = if dir.is_empty() {
            self.root.clone()
        } else {
            self.root.join(dir)
        };
        let mut stack = vec![(start, dir.to_string())];
        while let Some((path, key_prefix)) = stack.pop() {
            let rd = match fs::read_dir(&path) {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(fs_err("list container", &path, e)),
            };
            for entry in rd {
                let entry = entry.map_err(|e| fs_err("list container", &path, e))?;
                let name = entry.file_name();
                let Some(name) = name.to_str() else { continue };
                if name.starts_with('.') {
                    continue;
                }
                let key = if key_prefix.is_empty() {
                    name.to_string()
                } else {
                    format!("{key_prefix}/{name}")
                };
                let ft = entry
                    .file_type()
                    .map_err(|e| fs_err("list container", entry.path(), e))?;
                if ft.is_dir() {
                    if prefix.starts_with(&format!("{key}/")) || key.starts_with(prefix) {
                        stack.push((entry.path(), key));
                    }
                } else if ft.is_file() && key.starts_with(prefix) {
                    // An object deleted since readdir (a collector at work) is simply gone.
                    let size = match entry.metadata() {
                        Ok(m) => m.len(),
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(fs_err("list container", entry.path(), e)),
                    };
                    out.push(ObjectMeta { key, size });
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key)?;
        self.counters.delete();
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(fs_err("delete object", &path, e)),
        }
    }

    fn sweep_temporaries(&self, age: std::time::Duration) -> Result<u64> {
        let dir = self.root.join(FS_TMP_DIR);
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(fs_err("list temporary objects", &dir, e)),
        };
        let mut removed = 0;
        for entry in rd.flatten() {
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|elapsed| elapsed >= age);
            if old && fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }

    fn requests(&self) -> RequestCounts {
        self.counters.snapshot()
    }

    fn describe(&self) -> String {
        format!("file://{}", self.root.display())
    }
}

/// An in-memory store, for tests and simulations.
#[derive(Default)]
pub struct MemStore {
    objects: Mutex<BTreeMap<String, Bytes>>,
    counters: RequestCounters,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Bytes>> {
        // A panic while holding the lock cannot leave the map half-updated (every update is a
        // single insert or remove), so a poisoned lock is safe to reuse.
        self.objects.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ObjectStore for MemStore {
    fn put(&self, key: &str, data: Bytes) -> Result<()> {
        validate_key(key)?;
        self.counters.put(data.len());
        self.lock().insert(key.to_string(), data);
        Ok(())
    }

    fn put_if_absent(&self, key: &str, data: Bytes) -> Result<bool> {
        validate_key(key)?;
        self.counters.put(data.len());
        let mut map = self.lock();
        if map.contains_key(key) {
            return Ok(false);
        }
        map.insert(key.to_string(), data);
        Ok(true)
    }

    fn get(&self, key: &str) -> Result<Bytes> {
        let data = self
            .lock()
            .get(key)
            .cloned()
            .ok_or_else(|| Error::MissingObject {
                key: key.to_string(),
            })?;
        self.counters.get(data.len());
        Ok(data)
    }

    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        let data = self.get(key)?;
        if range.end > data.len() as u64 || range.start > range.end {
            return Err(Error::corrupt(
                key,
                data.len() as u64,
                format!("object ends before byte {}", range.end),
            ));
        }
        Ok(data.slice(range.start as usize..range.end as usize))
    }

    fn head(&self, key: &str) -> Result<Option<u64>> {
        self.counters.head();
        Ok(self.lock().get(key).map(|d| d.len() as u64))
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        self.counters.list();
        Ok(self
            .lock()
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| ObjectMeta {
                key: k.clone(),
                size: v.len() as u64,
            })
            .collect())
    }

    fn delete(&self, key: &str) -> Result<()> {
        self.counters.delete();
        self.lock().remove(key);
        Ok(())
    }

    fn requests(&self) -> RequestCounts {
        self.counters.snapshot()
    }

    fn describe(&self) -> String {
        "memory://".to_string()
    }
}

/// An I/O error of the filesystem store on an object. Interrupted and timed-out calls — what a
/// network filesystem (NFS, SMB) under load returns — are [`Error::Transient`] and retried by
/// [`crate::retry`] like a flaky S3 request; everything else is final.
fn fs_err(op: &'static str, path: impl AsRef<Path>, e: std::io::Error) -> Error {
    use std::io::ErrorKind::{Interrupted, TimedOut, WouldBlock};
    let path = path.as_ref();
    if matches!(e.kind(), Interrupted | TimedOut | WouldBlock) {
        return Error::Transient {
            op,
            key: path.display().to_string(),
            message: e.to_string(),
        };
    }
    Error::io(op, path, e)
}

/// Reads a whole local file, mapping errors to [`Error::Io`]; used for records and metadata.
pub fn read_local_file(path: &Path) -> Result<Vec<u8>> {
    let mut f = File::open(path).map_err(|e| Error::io("open", path, e))?;
    let mut buf = Vec::new();
    f.seek(SeekFrom::Start(0))
        .and_then(|_| f.read_to_end(&mut buf))
        .map_err(|e| Error::io("read", path, e))?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
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
        let min = crate::direct::FILE_MIN;
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
        let tmp: Vec<_> = fs::read_dir(dir.path().join("c").join(FS_TMP_DIR))
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
        let retry = crate::retry::RetryStore::new(fs.clone());
        assert_eq!(retry.upload_concurrency(), 1);
        let faults = crate::faults::FaultStore::new(fs, crate::faults::FaultConfig::default());
        assert_eq!(faults.upload_concurrency(), 1);
        let mem = crate::retry::RetryStore::new(std::sync::Arc::new(MemStore::new()));
        assert_eq!(mem.upload_concurrency(), mem.concurrency());
    }

    #[test]
    fn mem_store_behaves_like_an_object_store() {
        exercise(&MemStore::new());
    }
}
