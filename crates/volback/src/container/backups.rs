//! Manifests as backups: read, commit (create-only), list, delete (tombstone first).

use bytes::Bytes;
use rayon::prelude::*;

use super::Container;
use crate::clock::now_rfc3339;
use crate::error::{Error, Result};
use crate::format::keys::{BACKUPS_PREFIX, manifest_key, tombstone_key};
use crate::format::manifest::Manifest;
use crate::format::tombstone::Tombstone;
use crate::ids::validate_id;

impl Container {
    /// Reads and decodes a backup's manifest, distinguishing deleted from unknown backups.
    /// Returns the manifest and its raw bytes (whose BLAKE3 goes into exported records).
    pub fn read_manifest(&self, backup_id: &str) -> Result<(Manifest, Bytes)> {
        validate_id("backup id", backup_id)?;
        let key = manifest_key(backup_id);
        match self.store.get(&key) {
            Ok(bytes) => {
                let m = self.decode_manifest(&key, &bytes)?;
                if m.backup_id != backup_id {
                    return Err(Error::corrupt(
                        &key,
                        0,
                        format!("manifest is for backup '{}'", m.backup_id),
                    ));
                }
                Ok((m, bytes))
            }
            Err(Error::MissingObject { .. }) => {
                if self.store.head(&tombstone_key(backup_id))?.is_some() {
                    Err(Error::BackupDeleted {
                        id: backup_id.into(),
                        container: self.url.clone(),
                    })
                } else {
                    Err(Error::BackupNotFound {
                        id: backup_id.into(),
                        container: self.url.clone(),
                    })
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Decodes the manifest stored under `key` as `stored` (opening it first in an encrypted
    /// container, where it is sealed under its key).
    pub fn decode_manifest(&self, key: &str, stored: &Bytes) -> Result<Manifest> {
        let plain = self.open_object(key, key, stored.clone())?;
        Manifest::decode(key, &plain)
    }

    /// Whether a backup (or its tombstone) already uses this id.
    pub fn backup_id_taken(&self, backup_id: &str) -> Result<bool> {
        Ok(self.store.head(&manifest_key(backup_id))?.is_some()
            || self.store.head(&tombstone_key(backup_id))?.is_some())
    }

    /// Commits a manifest; fails if a backup with this id was committed meanwhile. Returns the
    /// stored bytes (sealed, in an encrypted container).
    pub fn commit_manifest(&self, m: &Manifest) -> Result<Bytes> {
        let key = manifest_key(&m.backup_id);
        let bytes = self.seal_object(&key, m.encode()?)?;
        if !self.store.put_if_absent(&key, bytes.clone())? {
            return Err(Error::BackupExists {
                id: m.backup_id.clone(),
                container: self.url.clone(),
            });
        }
        Ok(bytes)
    }

    /// Every committed backup's manifest, oldest first. Unreadable manifests are returned as
    /// errors in place so that one damaged backup does not hide the others.
    pub fn list_backups(&self) -> Result<Vec<Result<Manifest>>> {
        self.keys()?;
        let keys = self.store.list(BACKUPS_PREFIX)?;
        let mut out: Vec<Result<Manifest>> = self.on_io_pool(|| {
            keys.par_iter()
                .map(|o| {
                    let bytes = self.store.get(&o.key)?;
                    self.decode_manifest(&o.key, &bytes)
                })
                .collect()
        });
        out.sort_by_key(|r| match r {
            Ok(m) => (0, m.created_unix, m.backup_id.clone()),
            Err(_) => (1, 0, String::new()),
        });
        Ok(out)
    }

    /// Deletes a backup: tombstone first, then the manifest. Its chunks stay until the garbage
    /// collector finds no committed manifest needs them, so no other backup is affected.
    ///
    /// In a container with Object Lock, a backup still retained is refused
    /// ([`Error::Retained`]) before anything is written.
    pub fn delete_backup(&self, backup_id: &str) -> Result<()> {
        let (m, _) = self.read_manifest(backup_id)?;
        self.check_not_retained(&manifest_key(backup_id))?;
        let tomb = Tombstone::new(backup_id, &m.volume_id, now_rfc3339());
        let key = tombstone_key(backup_id);
        self.store
            .put(&key, self.seal_object(&key, tomb.encode()?)?)?;
        self.store.delete(&manifest_key(backup_id))
    }
}
