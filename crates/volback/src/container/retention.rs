//! Object Lock: everything a committed backup needs is kept from deletion until its date.
//!
//! A container created with [`ObjectLock`] settings lives in an S3 bucket with Object Lock
//! enabled. Before a backup's manifest is committed, every object a restore of it reads is
//! retained (`PutObjectRetention`) until `now + days`: the packs holding its chunks (found
//! through the index, as a restore finds them), the config and, in an encrypted container, the
//! key slots. Then the manifest is committed and retained itself; if that fails, the manifest
//! is removed again and the backup fails: a backup is never visible unprotected. Packs a new
//! backup shares with older ones are retained again, to the new date: retention only grows.
//!
//! Deleting such a backup before its date is refused ([`Error::Retained`]) before anything is
//! written; the collector leaves retained packs alone (and says how many, and until when); and
//! deletes remove every version of an object ([`crate::store::versions`]), so nothing reclaimed
//! lingers as a hidden version. The server enforces the dates whoever asks: a writer's stolen
//! credentials cannot delete a retained version either. A plain DELETE by someone else only
//! hides an object behind a delete marker; [`Container::undelete`] removes such markers.

use std::collections::{HashMap, HashSet};

use rayon::prelude::*;

use super::Container;
use crate::clock::now_unix;
use crate::error::{Error, Result};
use crate::format::config::ObjectLock;
use crate::format::extent_list::Extent;
use crate::format::key_slot::KEYS_PREFIX;
use crate::format::keys::{CONFIG_KEY, manifest_key, pack_key};
use crate::format::manifest::Manifest;
use crate::ids::Hash;
use crate::index::Locate;
use crate::restore::locations::{DEFAULT_MEM_ENTRIES, LocationTable};
use crate::store::s3_lock::format_date;

/// Chunk ids located per batch when collecting a backup's packs.
const LOCATE_BATCH: usize = 4096;

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
    fn retain_all(&self, lock: ObjectLock, keys: &[String], until: u64) -> Result<()> {
        self.on_io_pool(|| {
            keys.par_iter()
                .try_for_each(|k| self.store.retain(k, lock.mode, until))
        })
    }

    /// The objects every backup needs besides its own: the config and the key slots.
    fn container_objects(&self) -> Result<Vec<String>> {
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

    /// The packs a restore of `m` reads: those holding its extent-list and data chunks, found
    /// through the index as a restore finds them (in memory that does not grow with the
    /// container: [`LocationTable`]).
    pub fn packs_needed(&self, m: &Manifest) -> Result<Vec<String>> {
        let table = LocationTable::load(self, DEFAULT_MEM_ENTRIES)?;
        let mut packs: HashSet<u32> = HashSet::new();
        let locate = |ids: &[Hash], packs: &mut HashSet<u32>| -> Result<()> {
            for (id, loc) in ids.iter().zip(table.locate_all(ids)?) {
                let loc = loc.ok_or_else(|| Error::ChunkNotIndexed {
                    backup_id: m.backup_id.clone(),
                    chunk: id.to_hex(),
                    volume_offset: 0,
                })?;
                packs.insert(loc.pack);
            }
            Ok(())
        };
        let metas: Vec<Hash> = m
            .meta_ids(&manifest_key(&m.backup_id))?
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        locate(&metas, &mut packs)?;
        let mut batch = Vec::with_capacity(LOCATE_BATCH);
        self.walk_extents(&table, m, |_, e| {
            if let Extent::Data { id, .. } = e {
                batch.push(*id);
                if batch.len() == LOCATE_BATCH {
                    locate(&batch, &mut packs)?;
                    batch.clear();
                }
            }
            Ok(())
        })?;
        locate(&batch, &mut packs)?;
        let mut keys: Vec<String> = packs
            .into_iter()
            .map(|p| pack_key(&table.pack_id(p)))
            .collect();
        keys.sort();
        Ok(keys)
    }

    /// Before `m` is committed: retains every object a restore of it reads until `until`.
    /// Returns how many objects that was.
    pub(crate) fn retain_backup(&self, m: &Manifest, lock: ObjectLock, until: u64) -> Result<u64> {
        let mut keys = self.packs_needed(m)?;
        keys.extend(self.container_objects()?);
        self.retain_all(lock, &keys, until)?;
        Ok(keys.len() as u64)
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
