//! Object Lock: everything a committed backup needs is kept from deletion until its date.
//!
//! A container created with [`ObjectLock`] settings lives in an S3 bucket with Object Lock
//! enabled. Before a backup's manifest is committed, every object a restore of it reads is
//! retained (`PutObjectRetention`) until `now + days`: the packs holding its chunks (found
//! through the index, as a restore finds them: `backup/retain.rs`), the config and, in an
//! encrypted container, the key slots. Then the manifest is committed and retained itself; if that fails, the manifest
//! is removed again and the backup fails: a backup is never visible unprotected. Packs a new
//! backup shares with older ones are retained again, to the new date: retention only grows.
//!
//! Deleting such a backup before its date is refused ([`Error::Retained`]) before anything is
//! written; the collector leaves retained packs alone (and says how many, and until when); and
//! deletes remove every version of an object ([`crate::store::versions`]), so nothing reclaimed
//! lingers as a hidden version. The server enforces the dates whoever asks: a writer's stolen
//! credentials cannot delete a retained version either. A plain DELETE by someone else only
//! hides an object behind a delete marker; [`Container::undelete`] removes such markers.

use std::collections::HashMap;

use rayon::prelude::*;

use super::Container;
use crate::clock::now_unix;
use crate::error::{Error, Result};
use crate::format::config::ObjectLock;
use crate::format::key_slot::KEYS_PREFIX;
use crate::format::keys::{CONFIG_KEY, manifest_key, pack_key};
use crate::format::manifest::Manifest;
use crate::ids::Hash;
use crate::store::s3_lock::format_date;

impl Container {
    /// The container's Object Lock settings, if it was created with them.
    pub fn object_lock(&self) -> Option<ObjectLock> {
        self.config.object_lock
    }

    /// Until when (Unix seconds) objects retained now are kept: now plus the retention period.
    pub fn retention_date(lock: ObjectLock) -> u64 {
        now_unix().saturating_add(u64::from(lock.days) * 86_400)
    }

    /// Retains `keys` until `until` in the container's mode, many requests at a time.
    pub(crate) fn retain_all(&self, lock: ObjectLock, keys: &[String], until: u64) -> Result<()> {
        self.on_io_pool(|| {
            keys.par_iter()
                .try_for_each(|k| self.store.retain(k, lock.mode, until))
        })
    }

    /// The objects every backup needs besides its own: the config and the key slots.
    pub(crate) fn container_objects(&self) -> Result<Vec<String>> {
        let mut keys = vec![CONFIG_KEY.to_string()];
        if self.is_encrypted() {
            keys.extend(self.store.list(KEYS_PREFIX)?.into_iter().map(|o| o.key));
        }
        Ok(keys)
    }

    /// Retains the config and key slots of a new container with Object Lock.
    pub(super) fn retain_new_container(&self, lock: ObjectLock) -> Result<()> {
        self.retain_all(lock, &self.container_objects()?, Self::retention_date(lock))
    }

    /// Retains a new key slot as long as a backup committed now.
    pub(super) fn retain_key_slot(&self, key: &str) -> Result<()> {
        match self.object_lock() {
            Some(lock) => self.retain_all(lock, &[key.to_string()], Self::retention_date(lock)),
            None => Ok(()),
        }
    }

    /// After `m` was committed: retains its manifest until `until`. If that fails, the manifest
    /// is removed again (it is not retained yet, so it can be) and the error returned: the
    /// backup never shows without its retention.
    pub(crate) fn retain_manifest(&self, m: &Manifest, lock: ObjectLock, until: u64) -> Result<()> {
        let key = manifest_key(&m.backup_id);
        if let Err(e) = self.store.retain(&key, lock.mode, until) {
            if let Err(undo) = self.store.delete(&key) {
                tracing::error!("backup {} committed without retention: {undo}", m.backup_id);
            }
            return Err(e);
        }
        Ok(())
    }

    /// Brings back every object of the container that a plain DELETE hid behind a delete
    /// marker (anyone with the writer's credentials can hide a retained object, never delete
    /// it; volback's own deletes remove versions and leave no markers). Returns how many.
    /// Refused for a container without Object Lock, whose deletes are final.
    pub fn undelete(&self) -> Result<u64> {
        if self.object_lock().is_none() {
            return Err(Error::Config(format!(
                "container '{}' has no Object Lock: its deleted objects are gone",
                self.url
            )));
        }
        self.store.undelete("")
    }

    /// Refuses to go on if `key` is retained past now ([`Error::Retained`]).
    pub(crate) fn check_not_retained(&self, key: &str) -> Result<()> {
        if self.object_lock().is_none() {
            return Ok(());
        }
        match self.store.retained_until(key)? {
            Some(until) if until > now_unix() => Err(Error::Retained {
                key: key.to_string(),
                until: Some(format_date(until)),
            }),
            _ => Ok(()),
        }
    }

    /// Of `packs`, those retained past now, with their dates (none without Object Lock).
    pub fn retained_packs(&self, packs: &[Hash]) -> Result<HashMap<Hash, u64>> {
        if self.object_lock().is_none() {
            return Ok(HashMap::new());
        }
        let now = now_unix();
        let found: Vec<Option<(Hash, u64)>> = self.on_io_pool(|| {
            packs
                .par_iter()
                .map(|p| {
                    Ok(match self.store.retained_until(&pack_key(p))? {
                        Some(until) if until > now => Some((*p, until)),
                        _ => None,
                    })
                })
                .collect::<Result<_>>()
        })?;
        Ok(found.into_iter().flatten().collect())
    }
}
