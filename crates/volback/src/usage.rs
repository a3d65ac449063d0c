//! What each backup alone holds: the stored bytes of the chunks no other backup references,
//! which is what deleting it gives back once gc has run (`volback list --exclusive`).
//!
//! Every manifest is read (one at a time) and its extent list walked once, as the collector's
//! mark does. Memory does not grow with the container's chunks: each (chunk, backup) pair goes
//! to a table sorted by chunk, the best copy of every chunk to another (`crate::extsort`, in
//! `$TMPDIR` beyond [`MEM_ENTRIES`] records), and one pass over the two side by side finds the
//! chunks a single backup references and their stored size. What stays in memory is the pack
//! listing of the index scan and a count per backup.

use std::collections::BTreeMap;

use crate::container::{Container, manifest_key};
use crate::error::{Error, Result};
use crate::extsort::{Record, ScratchOps, TableBuilder};
use crate::format::extent_list::Extent;
use crate::format::keys::BACKUPS_PREFIX;
use crate::ids::Hash;
use crate::index::Location;
use crate::index::located::{BestCopy, Located};
use crate::restore::locations::LocationBuilder;

/// Records of each sorted table held in memory before they are spilled (~50 MiB).
pub const MEM_ENTRIES: usize = 1 << 20;

/// A chunk a backup references; one record per (chunk, backup), sorted by chunk.
#[derive(Clone, Copy)]
struct Owned {
    id: Hash,
    backup: u32,
}

impl Record for Owned {
    const LEN: usize = 36;
    const OPS: ScratchOps = ScratchOps {
        create: "create chunk owner table in",
        write: "write chunk owner table in",
        read: "read chunk owner table in",
    };
    type Id = (Hash, u32);
    type Order = (Hash, u32);

    fn id(&self) -> (Hash, u32) {
        (self.id, self.backup)
    }

    fn order(&self) -> (Hash, u32) {
        self.id()
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.id.0);
        out.extend_from_slice(&self.backup.to_le_bytes());
    }

    fn decode(b: &[u8]) -> Result<Owned> {
        let mut id = [0u8; 32];
        id.copy_from_slice(&b[..32]);
        let mut n = [0u8; 4];
        n.copy_from_slice(&b[32..36]);
        Ok(Owned {
            id: Hash(id),
            backup: u32::from_le_bytes(n),
        })
    }
}

/// Stored bytes of the chunks (data and extent list) only that backup references, for every
/// readable backup; pack framing and the manifest itself are not counted.
pub fn exclusive_bytes(c: &Container) -> Result<BTreeMap<String, u64>> {
    exclusive_bytes_with(c, MEM_ENTRIES)
}

/// [`exclusive_bytes`], holding at most `mem_entries` records of each table in memory.
pub fn exclusive_bytes_with(c: &Container, mem_entries: usize) -> Result<BTreeMap<String, u64>> {
    c.keys()?;
    // Where every chunk is (its best copy), and where the extent lists are.
    let mut meta = LocationBuilder::new(mem_entries);
    let mut copies = TableBuilder::new(mem_entries);
    c.scan_index_numbered(|pack, entries, pos, rank| {
        meta.add_meta(*pack, entries, rank);
        for e in entries {
            let loc = Location::of(e, pos);
            copies.push(BestCopy(Located { id: e.id, loc }, rank))?;
        }
        Ok(())
    })?;
    let meta = meta.finish()?;
    let copies = copies.finish()?;

    // Which backups reference each chunk, a manifest at a time.
    let mut owners = TableBuilder::new(mem_entries);
    let mut ids: Vec<String> = Vec::new();
    for o in c.store().list(BACKUPS_PREFIX)? {
        let m = match c.store().get(&o.key) {
            Ok(bytes) => c.decode_manifest(&o.key, &bytes),
            Err(e) => Err(e),
        };
        // An unreadable or vanished manifest is verify's business; its chunks count as nobody's
        // here.
        let Ok(m) = m else { continue };
        let backup = u32::try_from(ids.len())
            .map_err(|_| Error::Internal("more backups than can be counted".into()))?;
        for (id, _) in m.meta_ids(&manifest_key(&m.backup_id))? {
            owners.push(Owned { id, backup })?;
        }
        c.walk_extents(&meta, &m, |_, e| match e {
            Extent::Data { id, .. } => owners.push(Owned { id: *id, backup }),
            Extent::Zero { .. } => Ok(()),
        })?;
        ids.push(m.backup_id);
    }
    let owners = owners.finish()?;

    // One pass: a chunk with one owner adds its best copy's stored size to that owner.
    let mut bytes = vec![0u64; ids.len()];
    let mut o = owners.reader();
    let mut best = copies.reader();
    while let Some(first) = o.next_record()? {
        let mut shared = false;
        while let Some(next) = o.peek()? {
            if next.id != first.id {
                break;
            }
            shared = true;
            o.next_record()?;
        }
        if shared {
            continue;
        }
        while let Some(BestCopy(copy, _)) = best.peek()? {
            if copy.id > first.id {
                break;
            }
            best.next_record()?;
            if copy.id == first.id {
                if let Some(n) = bytes.get_mut(first.backup as usize) {
                    *n = n.saturating_add(u64::from(copy.loc.stored_len));
                }
                break;
            }
        }
    }
    Ok(ids.into_iter().zip(bytes).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::testing::{backup, volume};
    use crate::index::Locate;
    use crate::store::{MemStore, ObjectStore};
    use std::collections::{HashMap, HashSet};
    use std::sync::Arc;

    /// The sorted-table report equals the one computed with every chunk's owners in a hash map
    /// over the in-memory index, with its tables in memory or spilled in runs of three records:
    /// a backup with a twin holds nothing alone, an incremental holds what it changed.
    #[test]
    fn agrees_with_a_hash_map_over_the_index() {
        let store: Arc<dyn ObjectStore> = Arc::new(MemStore::new());
        let c = Container::with_store(store, "m".into(), true, None).unwrap();
        let day1 = volume(1, 4 << 20);
        let mut day2 = day1.clone();
        day2[1 << 20..(1 << 20) + 300_000].copy_from_slice(&volume(2, 300_000));
        backup(&c, "a", "v", None, day1.clone());
        backup(&c, "b", "v", Some("a"), day2);
        backup(&c, "twin", "w", None, day1);
        backup(&c, "alone", "x", None, volume(3, 2 << 20));

        let index = c.load_index().unwrap();
        let mut owners: HashMap<Hash, HashSet<String>> = HashMap::new();
        for m in c.list_backups().unwrap() {
            let m = m.unwrap();
            let key = manifest_key(&m.backup_id);
            let mut mine: Vec<Hash> = m
                .meta_ids(&key)
                .unwrap()
                .into_iter()
                .map(|(id, _)| id)
                .collect();
            c.walk_extents(&index, &m, |_, e| {
                if let Extent::Data { id, .. } = e {
                    mine.push(*id);
                }
                Ok(())
            })
            .unwrap();
            for id in mine {
                owners.entry(id).or_default().insert(m.backup_id.clone());
            }
        }
        let mut want: BTreeMap<String, u64> = ["a", "b", "twin", "alone"]
            .iter()
            .map(|b| (b.to_string(), 0))
            .collect();
        for (id, who) in &owners {
            if who.len() == 1 {
                let loc = index.locate_all(&[*id]).unwrap()[0].unwrap();
                *want.get_mut(who.iter().next().unwrap()).unwrap() += u64::from(loc.stored_len);
            }
        }
        assert_eq!(want["a"], 0, "{want:?}");
        assert_eq!(want["twin"], 0, "{want:?}");
        assert!(want["b"] > 100_000 && want["alone"] > 1_000_000, "{want:?}");
        for mem in [MEM_ENTRIES, 3] {
            assert_eq!(exclusive_bytes_with(&c, mem).unwrap(), want, "mem {mem}");
        }
    }
}
