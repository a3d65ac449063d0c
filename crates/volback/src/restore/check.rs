//! The check before a restore writes anything: every chunk indexed, as long as its extent, and
//! every pack present.

use rayon::prelude::*;

use super::window::WINDOW_CHUNKS;
use crate::container::{Container, pack_key};
use crate::error::{Error, Result};
use crate::format::extent_list::Extent;
use crate::format::manifest::Manifest;
use crate::ids::Hash;
use crate::index::Locate;

/// Checks, before writing anything, that every chunk of the backup is indexed and every pack it
/// needs exists (as the pack listing taken with the locations said, when they were read with
/// one, else with a request per pack or one listing). Chunks are looked up a window at a time
/// (a [`super::locations::LocationTable`] on disk answers a sorted batch with one read per
/// block).
pub fn check_complete(
    container: &Container,
    index: &(impl Locate + ?Sized),
    manifest: &Manifest,
) -> Result<()> {
    let mut packs = std::collections::HashSet::new();
    let mut window: Vec<(u64, Hash, u32)> = Vec::with_capacity(WINDOW_CHUNKS);
    let mut check = |window: &mut Vec<(u64, Hash, u32)>| -> Result<()> {
        let ids: Vec<Hash> = window.iter().map(|(_, id, _)| *id).collect();
        for ((off, id, len), loc) in window.drain(..).zip(index.locate_all(&ids)?) {
            let loc = loc.ok_or_else(|| Error::ChunkNotIndexed {
                backup_id: manifest.backup_id.clone(),
                chunk: id.to_hex(),
                volume_offset: off,
            })?;
            // A chunk is written over exactly its extent: one of another length would spill
            // into its neighbour or leave part of its extent unwritten.
            if loc.raw_len != len {
                return Err(Error::ChunkLengthMismatch {
                    backup_id: manifest.backup_id.clone(),
                    chunk: id.to_hex(),
                    volume_offset: off,
                    extent_len: len,
                    chunk_len: loc.raw_len,
                });
            }
            packs.insert(loc.pack);
        }
        Ok(())
    };
    container.walk_extents(index, manifest, |off, e| {
        if let Extent::Data { id, len } = e {
            window.push((off, *id, *len));
            if window.len() >= WINDOW_CHUNKS {
                check(&mut window)?;
            }
        }
        Ok(())
    })?;
    check(&mut window)?;
    // Locations read with a pack listing (a restore's) know which packs were listed after
    // the restore's lease was taken: a pack not listed then is missing, and no request is
    // needed for the others (a pack deleted since fails its read, naming it).
    let mut keys: Vec<String> = Vec::with_capacity(packs.len());
    for p in packs {
        let key = pack_key(&index.pack_id(p));
        match index.pack_listed(p) {
            Some(false) => return Err(Error::MissingObject { key }),
            Some(true) => {}
            None => keys.push(key),
        }
    }
    if keys.len() > 64 {
        // One paged listing is cheaper than a request per pack.
        let present = container.listed_packs()?;
        let missing = keys
            .into_iter()
            .find(|k| crate::container::pack_id_of_key(k).is_none_or(|id| !present.contains(&id)));
        return match missing {
            Some(key) => Err(Error::MissingObject { key }),
            None => Ok(()),
        };
    }
    container.on_io_pool(|| {
        keys.into_par_iter()
            .try_for_each(|key| match container.store().head(&key)? {
                Some(_) => Ok(()),
                None => Err(Error::MissingObject { key }),
            })
    })
}
