//! Object Lock at commit: the packs a backup's restore reads, retained before its manifest
//! shows (the rest of the rules: [`crate::container::retention`]).

use std::collections::HashSet;

use crate::container::Container;
use crate::error::{Error, Result};
use crate::format::config::ObjectLock;
use crate::format::extent_list::Extent;
use crate::format::keys::{manifest_key, pack_key};
use crate::format::manifest::Manifest;
use crate::ids::Hash;
use crate::index::Locate;
use crate::restore::locations::{DEFAULT_MEM_ENTRIES, LocationTable};

/// Chunk ids located per batch when collecting a backup's packs.
const LOCATE_BATCH: usize = 4096;

/// The packs a restore of `m` reads: those holding its extent-list and data chunks, found
/// through the index as a restore finds them (in memory that does not grow with the
/// container: [`LocationTable`]).
pub fn packs_needed(c: &Container, m: &Manifest) -> Result<Vec<String>> {
    let table = LocationTable::for_backup(c, m, DEFAULT_MEM_ENTRIES)?;
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
    c.walk_extents(&table, m, |_, e| {
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
pub(crate) fn retain_backup(
    c: &Container,
    m: &Manifest,
    lock: ObjectLock,
    until: u64,
) -> Result<u64> {
    let mut keys = packs_needed(c, m)?;
    keys.extend(c.container_objects()?);
    c.retain_all(lock, &keys, until)?;
    Ok(keys.len() as u64)
}
