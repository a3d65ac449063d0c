//! What each backup alone holds: the stored bytes of the chunks no other backup references,
//! which is what deleting it gives back once gc has run (`volback list --exclusive`).
//!
//! Every manifest's extent list is walked once, as the collector's mark does; memory grows with
//! the container's distinct chunks (one map entry each), so this is asked for, not listed by
//! default.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::container::{Container, manifest_key};
use crate::error::Result;
use crate::format::extent_list::Extent;
use crate::ids::Hash;
use crate::index::Locate;

/// Which backups reference a chunk: one (its position in the listing) or several.
enum Owner {
    One(usize),
    Many,
}

/// Stored bytes of the chunks (data and extent list) only that backup references, for every
/// readable backup; pack framing and the manifest itself are not counted.
pub fn exclusive_bytes(c: &Container) -> Result<BTreeMap<String, u64>> {
    let index = c.load_index()?;
    let mut owners: HashMap<Hash, Owner> = HashMap::new();
    let mut ids = Vec::new();
    for m in c.list_backups()? {
        // An unreadable manifest is verify's business; its chunks count as nobody's here.
        let Ok(m) = m else { continue };
        let me = ids.len();
        let mut mine: HashSet<Hash> = (m.meta_ids(&manifest_key(&m.backup_id))?)
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        c.walk_extents(&index, &m, |_, e| {
            if let Extent::Data { id, .. } = e {
                mine.insert(*id);
            }
            Ok(())
        })?;
        for id in mine {
            owners
                .entry(id)
                .and_modify(|o| *o = Owner::Many)
                .or_insert(Owner::One(me));
        }
        ids.push(m.backup_id);
    }
    let single: Vec<(Hash, usize)> = owners
        .into_iter()
        .filter_map(|(id, o)| match o {
            Owner::One(b) => Some((id, b)),
            Owner::Many => None,
        })
        .collect();
    let hashes: Vec<Hash> = single.iter().map(|(id, _)| *id).collect();
    let mut bytes = vec![0u64; ids.len()];
    for ((_, b), loc) in single.iter().zip(index.locate_all(&hashes)?) {
        if let (Some(loc), Some(n)) = (loc, bytes.get_mut(*b)) {
            *n = n.saturating_add(u64::from(loc.stored_len));
        }
    }
    Ok(ids.into_iter().zip(bytes).collect())
}
