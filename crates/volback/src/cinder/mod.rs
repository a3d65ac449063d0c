//! Backups written by Cinder's own chunked drivers (posix/NFS directories, S3 buckets), read
//! directly: listed, and restored without Cinder.
//!
//! A Cinder backup is a `<prefix>_metadata` manifest ([`metadata`]) naming data objects beside
//! it, each compressed on its own, plus `<prefix>_sha256file`. An incremental names its parent
//! by id and stores only the blocks that changed, so a restore needs the whole chain. Cinder
//! replays it oldest first, reading every layer in full and trusting every byte. Here the
//! chain is applied **newest first**: each byte of the volume is written once, from the newest
//! layer that has it, and an object that later layers cover entirely is not read at all. Every
//! object read is decompressed, checked against its uncompressed length and the MD5 the
//! manifest recorded (Cinder itself never checks it), and written with positional writes, many
//! objects at a time. Zero blocks are not written to the new target: they stay holes. A
//! restore that fails removes the target it created.

pub mod metadata;

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;

use md5::Digest as _;
use rayon::prelude::*;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::store::ObjectStore;
use metadata::{CinderCompression, CinderManifest, CinderObject, volume_size_from_sha256file};

/// The store holding Cinder's backups at `url`: a directory (Cinder's `backup_posix_path`, or
/// one backup's container directory under it) or `s3://bucket/prefix` (its S3 bucket).
pub fn open_source(
    url: &str,
    s3: &crate::store::s3::S3Options,
) -> Result<std::sync::Arc<dyn ObjectStore>> {
    use crate::container::ContainerUrl;
    let store: std::sync::Arc<dyn ObjectStore> = match ContainerUrl::parse(url)? {
        ContainerUrl::File(p) => std::sync::Arc::new(crate::store::FsStore::open(&p, false)?),
        ContainerUrl::S3 { bucket, prefix } => {
            std::sync::Arc::new(crate::store::s3::S3Store::open(&bucket, &prefix, s3)?)
        }
    };
    Ok(std::sync::Arc::new(crate::store::retry::RetryStore::new(
        store,
    )))
}

/// Suffix of a Cinder backup manifest's key.
pub const METADATA_SUFFIX: &str = "_metadata";
const SHA256_SUFFIX: &str = "_sha256file";

/// A Cinder backup found in a store.
#[derive(Debug, Clone)]
pub struct CinderBackup {
    /// The manifest's key; data objects are named relative to its directory.
    pub key: String,
    pub manifest: CinderManifest,
}

impl CinderBackup {
    fn dir(&self) -> &str {
        self.key.rfind('/').map_or("", |i| &self.key[..i])
    }

    fn object_key(&self, o: &CinderObject) -> String {
        match self.dir() {
            "" => o.name.clone(),
            dir => format!("{dir}/{}", o.name),
        }
    }
}

/// Every Cinder backup under `prefix` of `store`; a manifest that cannot be read is an error in
/// its place, so one damaged backup does not hide the others.
pub fn list_cinder_backups(
    store: &dyn ObjectStore,
    prefix: &str,
) -> Result<Vec<Result<CinderBackup>>> {
    let keys: Vec<String> = store
        .list(prefix)?
        .into_iter()
        .map(|o| o.key)
        .filter(|k| k.ends_with(METADATA_SUFFIX))
        .collect();
    Ok(keys
        .par_iter()
        .map(|key| {
            let bytes = store.get(key)?;
            Ok(CinderBackup {
                key: key.clone(),
                manifest: CinderManifest::decode(key, &bytes)?,
            })
        })
        .collect())
}

/// The chain that restores `backup_id`, oldest first, from `backups`.
pub fn chain<'a>(backups: &'a [CinderBackup], backup_id: &str) -> Result<Vec<&'a CinderBackup>> {
    let find = |id: &str| backups.iter().find(|b| b.manifest.backup_id == id);
    let mut out = vec![find(backup_id).ok_or_else(|| Error::BackupNotFound {
        id: backup_id.into(),
        container: "Cinder backups".into(),
    })?];
    while let Some(parent) = out.last().and_then(|b| b.manifest.parent_id.clone()) {
        if out.len() > backups.len() {
            return Err(Error::corrupt(&out[0].key, 0, "the parent chain loops"));
        }
        let p = find(&parent).ok_or_else(|| Error::ParentNotFound {
            id: parent.clone(),
            container: "Cinder backups".into(),
        })?;
        out.push(p);
    }
    out.reverse();
    Ok(out)
}

/// What a restore of a Cinder backup did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CinderRestoreReport {
    pub backup_id: String,
    /// Backups applied (the chain, full first).
    pub chain: Vec<String>,
    pub size: u64,
    /// Data objects read and verified, and those skipped because newer layers cover them.
    pub objects_read: u64,
    pub objects_skipped: u64,
    /// Volume bytes written (zero blocks are left as holes).
    pub bytes_written: u64,
}

/// Ranges of the volume already written by newer layers, sorted and disjoint.
#[derive(Default)]
struct Covered(Vec<(u64, u64)>);

impl Covered {
    /// The parts of `[start, end)` not covered.
    fn gaps(&self, start: u64, end: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut at = start;
        for &(s, e) in &self.0 {
            if e <= at {
                continue;
            }
            if s >= end {
                break;
            }
            if s > at {
                out.push((at, s));
            }
            at = at.max(e);
            if at >= end {
                break;
            }
        }
        if at < end {
            out.push((at, end));
        }
        out
    }

    fn add(&mut self, ranges: impl IntoIterator<Item = (u64, u64)>) {
        self.0.extend(ranges);
        self.0.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(self.0.len());
        for (s, e) in self.0.drain(..) {
            match merged.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        self.0 = merged;
    }
}

/// Reads, decompresses and checks one object of `b`.
fn read_object(store: &dyn ObjectStore, b: &CinderBackup, o: &CinderObject) -> Result<Vec<u8>> {
    let key = b.object_key(o);
    let stored = store.get(&key)?;
    let len = usize::try_from(o.length)
        .map_err(|_| Error::corrupt(&key, 0, format!("length {} does not fit", o.length)))?;
    let mut out = Vec::with_capacity(len.min(1 << 31));
    let bad = |what: String| {
        Error::corrupt(
            &key,
            0,
            format!("{what} (Cinder backup {})", b.manifest.backup_id),
        )
    };
    // Read one byte past the length: a stream longer than the manifest says is damage too.
    let limit = o.length.saturating_add(1);
    let res = match o.compression {
        CinderCompression::None => {
            out.extend_from_slice(&stored);
            Ok(0)
        }
        CinderCompression::Zlib => flate2::read::ZlibDecoder::new(&stored[..])
            .take(limit)
            .read_to_end(&mut out),
        CinderCompression::Bz2 => bzip2::read::BzDecoder::new(&stored[..])
            .take(limit)
            .read_to_end(&mut out),
        CinderCompression::Zstd => zstd::stream::read::Decoder::new(&stored[..])
            .and_then(|d| d.take(limit).read_to_end(&mut out)),
    };
    res.map_err(|e| bad(format!("does not decompress: {e}")))?;
    if out.len() as u64 != o.length {
        return Err(bad(format!(
            "holds {} bytes, the manifest says {}",
            out.len(),
            o.length
        )));
    }
    if md5::Md5::digest(&out)[..] != o.md5 {
        return Err(bad("MD5 differs from the manifest's".into()));
    }
    Ok(out)
}

/// Writes `data` (volume bytes from `offset`) at its offset, skipping zero blocks.
fn write_nonzero(target: &File, path: &Path, offset: u64, data: &[u8]) -> Result<u64> {
    const BLOCK: usize = 64 << 10;
    let mut written = 0u64;
    for (i, block) in data.chunks(BLOCK).enumerate() {
        if block.iter().all(|&b| b == 0) {
            continue;
        }
        let at = offset + (i * BLOCK) as u64;
        target
            .write_all_at(block, at)
            .map_err(|e| Error::io("write restore target", path, e))?;
        written += block.len() as u64;
    }
    Ok(written)
}

/// Restores Cinder backup `backup_id` from `store` into a new file `target`.
pub fn restore_cinder_backup(
    store: &dyn ObjectStore,
    prefix: &str,
    backup_id: &str,
    target: &Path,
) -> Result<CinderRestoreReport> {
    let backups: Vec<CinderBackup> = list_cinder_backups(store, prefix)?
        .into_iter()
        .filter_map(|b| b.ok())
        .collect();
    let links = chain(&backups, backup_id)?;
    let newest = links[links.len() - 1];
    let sha_key = newest.key.trim_end_matches(METADATA_SUFFIX).to_string() + SHA256_SUFFIX;
    let size = match store.get(&sha_key) {
        Ok(bytes) => volume_size_from_sha256file(&sha_key, &bytes)?,
        Err(Error::MissingObject { .. }) => links
            .iter()
            .map(|b| b.manifest.data_end())
            .max()
            .unwrap_or(0),
        Err(e) => return Err(e),
    };
    let file = File::options()
        .write(true)
        .create_new(true)
        .open(target)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => Error::TargetExists {
                path: target.into(),
            },
            _ => Error::io("create restore target", target, e),
        })?;
    // A restore that fails leaves no target behind: never a half-written volume.
    let filled = (|| -> Result<CinderRestoreReport> {
        file.set_len(size)
            .map_err(|e| Error::io("size restore target", target, e))?;
        let mut report = CinderRestoreReport {
            backup_id: backup_id.into(),
            chain: links.iter().map(|b| b.manifest.backup_id.clone()).collect(),
            size,
            ..Default::default()
        };
        let mut covered = Covered::default();
        for b in links.iter().rev() {
            let work: Vec<(&CinderObject, Vec<(u64, u64)>)> = b
                .manifest
                .objects
                .iter()
                .map(|o| (o, covered.gaps(o.offset, o.offset + o.length)))
                .collect();
            let results: Vec<Result<Option<u64>>> = work
                .par_iter()
                .map(|(o, gaps)| {
                    if gaps.is_empty() {
                        return Ok(None);
                    }
                    if o.offset + o.length > size {
                        return Err(Error::corrupt(
                            &b.key,
                            0,
                            format!("object {} ends past the volume's {size} bytes", o.name),
                        ));
                    }
                    let data = read_object(store, b, o)?;
                    let mut written = 0;
                    for &(s, e) in gaps {
                        let part = &data[(s - o.offset) as usize..(e - o.offset) as usize];
                        written += write_nonzero(&file, target, s, part)?;
                    }
                    Ok(Some(written))
                })
                .collect();
            for r in results {
                match r? {
                    Some(n) => {
                        report.objects_read += 1;
                        report.bytes_written += n;
                    }
                    None => report.objects_skipped += 1,
                }
            }
            covered.add(
                b.manifest
                    .objects
                    .iter()
                    .map(|o| (o.offset, o.offset + o.length)),
            );
        }
        file.sync_all()
            .map_err(|e| Error::io("flush restore target", target, e))?;
        Ok(report)
    })();
    if filled.is_err() {
        let _ = std::fs::remove_file(target);
    }
    filled
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn covered_ranges_leave_the_right_gaps() {
        let mut c = Covered::default();
        c.add([(10, 20), (30, 40)]);
        assert_eq!(c.gaps(0, 50), vec![(0, 10), (20, 30), (40, 50)]);
        assert_eq!(c.gaps(12, 18), vec![]);
        assert_eq!(c.gaps(15, 35), vec![(20, 30)]);
        c.add([(20, 30)]);
        assert_eq!(c.0, vec![(10, 40)]);
    }
}
