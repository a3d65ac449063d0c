//! Backups written by Cinder's own chunked drivers (posix/NFS directories, S3 buckets), read
//! directly: listed, and restored without Cinder.
//!
//! A Cinder backup is a `<prefix>_metadata` manifest ([`metadata`]) naming data objects beside
//! it, each compressed on its own (and `<prefix>_sha256file`, not needed here). An incremental names its parent
//! by id and stores only the blocks that changed, so a restore needs the whole chain. Cinder
//! replays it oldest first, reading every layer in full and trusting every byte. Here the
//! chain is applied **newest first**: each byte of the volume is written once, from the newest
//! layer that has it, and an object that later layers cover entirely is not read at all. Every
//! object read is decompressed, checked against its uncompressed length and the MD5 the
//! manifest recorded (Cinder itself never checks it), and written with positional writes, many
//! objects at a time. Zero blocks are not written to the new target: they stay holes. A
//! restore that fails removes the target it created.

pub mod adopt;
mod lanes;
mod md5;
pub mod metadata;
mod object;
mod plan;
pub mod restore;
mod stream;

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::store::ObjectStore;
use metadata::{CinderManifest, CinderObject};

pub use adopt::{AdoptOptions, AdoptReport, adopt_cinder_backups};
pub use restore::{CinderRestoreReport, restore_cinder_backup};

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

/// A Cinder backup found in a store.
#[derive(Debug, Clone)]
pub struct CinderBackup {
    /// The manifest's key; data objects are named relative to its directory.
    pub key: String,
    pub manifest: CinderManifest,
}

impl CinderBackup {
    /// The key of object `o`. Object names are `<prefix>-NNNNN` and the manifest is
    /// `<prefix>_metadata`, both relative to the driver's container; so the container's key
    /// prefix is what precedes `<prefix>` in the manifest's key (a posix backup directory, or
    /// the root of an S3 bucket whose prefixes are `volume_<id>/<time>/az_<az>_backup_<id>`).
    fn object_key(&self, o: &CinderObject) -> String {
        let stem = self.key.strip_suffix(METADATA_SUFFIX).unwrap_or(&self.key);
        let prefix = o.name.rsplit_once('-').map_or(o.name.as_str(), |(p, _)| p);
        let root = match stem.strip_suffix(prefix) {
            Some(root) if root.is_empty() || root.ends_with('/') => root,
            // Not named after the manifest: beside it.
            _ => stem.rfind('/').map_or("", |i| &stem[..=i]),
        };
        format!("{root}{}", o.name)
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

/// What `cinder list` shows of a backup.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CinderListing {
    pub backup_id: String,
    pub volume_id: String,
    pub parent_id: Option<String>,
    pub created_at: String,
    pub name: Option<String>,
    pub description: Option<String>,
    /// Volume bytes (None if the chain is broken: a parent is missing or unreadable).
    pub size: Option<u64>,
    /// Data objects of this backup (an incremental's changed blocks only).
    pub objects: usize,
    /// The manifest's key.
    pub manifest: String,
}

/// Every Cinder backup under `prefix` of `store`, described (an error in place of each
/// unreadable manifest), oldest first.
pub fn describe_cinder_backups(
    store: &dyn ObjectStore,
    prefix: &str,
) -> Result<Vec<Result<CinderListing>>> {
    let found = list_cinder_backups(store, prefix)?;
    let readable: Vec<CinderBackup> = found
        .iter()
        .filter_map(|b| b.as_ref().ok())
        .cloned()
        .collect();
    let mut out: Vec<Result<CinderListing>> = found
        .into_iter()
        .map(|b| {
            let b = b?;
            let m = &b.manifest;
            Ok(CinderListing {
                size: find_chain(&readable, &m.backup_id)
                    .ok()
                    .map(|l| volume_size(&l)),
                backup_id: m.backup_id.clone(),
                volume_id: m.volume_id.clone(),
                parent_id: m.parent_id.clone(),
                created_at: m.created_at.clone(),
                name: m.name.clone(),
                description: m.description.clone(),
                objects: m.objects.len(),
                manifest: b.key,
            })
        })
        .collect();
    out.sort_by(|a, b| match (a, b) {
        (Ok(a), Ok(b)) => a.created_at.cmp(&b.created_at),
        (Ok(_), Err(_)) => std::cmp::Ordering::Less,
        (Err(_), Ok(_)) => std::cmp::Ordering::Greater,
        (Err(_), Err(_)) => std::cmp::Ordering::Equal,
    });
    Ok(out)
}

/// The chain that restores `backup_id`, oldest first, from `backups`.
pub fn find_chain<'a>(
    backups: &'a [CinderBackup],
    backup_id: &str,
) -> Result<Vec<&'a CinderBackup>> {
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

/// The backups under `prefix` whose manifests can be read (the others cannot be restored).
pub(crate) fn readable_backups(store: &dyn ObjectStore, prefix: &str) -> Result<Vec<CinderBackup>> {
    Ok(list_cinder_backups(store, prefix)?
        .into_iter()
        .filter_map(|b| b.ok())
        .collect())
}

/// The volume size of the backup `links` ends with: the end of the chain's furthest object.
/// A full backup stores every block of the volume (zeros included) and Cinder refuses an
/// incremental of a volume whose size changed, so the full's objects reach the volume's end.
/// (`_sha256file` would tell too, but it holds a hash per 32 KiB: 2 GB of JSON for a 1 TiB
/// volume.)
pub fn volume_size(links: &[&CinderBackup]) -> u64 {
    links
        .iter()
        .map(|b| b.manifest.data_end())
        .max()
        .unwrap_or(0)
}
