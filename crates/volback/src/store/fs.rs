//! The filesystem store: a directory holding the container's keys as files.
//!
//! Written here rather than taken from `object_store`'s `LocalFileSystem`, because a backup's
//! commit point needs guarantees that one does not give: every object is written to a temporary
//! file, fsync'd, and renamed into place, and the directory is fsync'd, so a crash never leaves a
//! torn object under its final name; and create-only writes (`put_if_absent`) use `link(2)`,
//! which is atomic on every POSIX filesystem. Large objects are written with direct I/O
//! ([`super::direct`]).

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use super::{ObjectMeta, ObjectStore, RequestCounters, RequestCounts, validate_key};
use crate::error::{Error, Result};

/// A container on a local or network filesystem.
pub struct FsStore {
    root: PathBuf,
    tmp_seq: AtomicU64,
    counters: RequestCounters,
}

/// Directory (under the root) for objects being written; never a valid key because of the dot.
pub(super) const FS_TMP_DIR: &str = ".tmp";

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
        let res = match super::direct::write_file(&tmp, data) {
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
        let mut out = Vec::new();
        self.list_each(prefix, &mut |o| out.push(o))?;
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn list_each(&self, prefix: &str, f: &mut dyn FnMut(ObjectMeta)) -> Result<()> {
        self.counters.list();
        // Walk the directory that holds the prefix; keys are '/'-separated paths.
        let (dir, _) = match prefix.rfind('/') {
            Some(i) => (&prefix[..i], &prefix[i + 1..]),
            None => ("", prefix),
        };
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
                    f(ObjectMeta { key, size });
                }
            }
        }
        Ok(())
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

/// An I/O error of the filesystem store on an object. Interrupted and timed-out calls — what a
/// network filesystem (NFS, SMB) under load returns — are [`Error::Transient`] and retried by
/// [`super::retry`] like a flaky S3 request; everything else is final.
pub(super) fn fs_err(op: &'static str, path: impl AsRef<Path>, e: std::io::Error) -> Error {
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
