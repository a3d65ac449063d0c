//! Mark: every chunk a committed manifest references, through its extent list, into a live set
//! sorted in bounded memory.

use std::collections::HashSet;

use super::survey::meta_builder;
use crate::container::index_scan::read_rank;
use crate::container::{Container, IndexUse, manifest_key};
use crate::error::{Error, Result};
use crate::extsort::{Table, TableBuilder};
use crate::format::extent_list::Extent;
use crate::format::keys::BACKUPS_PREFIX;
use crate::format::manifest::Manifest;
use crate::index::located::ChunkId;
use crate::restore::locations::LocationTable;

/// Marks chunks of committed manifests; remembers which backups were walked.
pub(super) struct Marker<'a> {
    c: &'a Container,
    /// Extent-list chunk locations for walking manifests (loaded on first use if not given);
    /// reloaded if a manifest committed during the run names extent-list chunks written after
    /// they were loaded.
    meta: Option<LocationTable>,
    pub(super) walked: HashSet<String>,
    live: TableBuilder<ChunkId>,
    mem_entries: usize,
}

impl<'a> Marker<'a> {
    /// A marker that walks extent lists through `meta` and holds at most `mem_entries` live
    /// chunk ids in memory.
    pub(super) fn new(c: &'a Container, meta: Option<LocationTable>, mem_entries: usize) -> Self {
        Marker {
            c,
            meta,
            walked: HashSet::new(),
            live: TableBuilder::new(mem_entries),
            mem_entries,
        }
    }

    /// The chunks marked since the last call, sorted, each once.
    pub(super) fn take_live(&mut self) -> Result<Table<ChunkId>> {
        std::mem::replace(&mut self.live, TableBuilder::new(self.mem_entries)).finish()
    }

    /// Walks every manifest not walked yet. A manifest that cannot be read or walked stops the
    /// collection: its chunks are unknown, so nothing could be proven unreferenced.
    pub(super) fn mark_all(&mut self) -> Result<()> {
        let keys = self.c.store().list(BACKUPS_PREFIX)?;
        for o in keys {
            let id = o.key.trim_start_matches(BACKUPS_PREFIX).to_string();
            if self.walked.contains(&id) {
                continue;
            }
            let bytes = match self.c.store().get(&o.key) {
                Ok(b) => b,
                Err(Error::MissingObject { .. }) => continue, // deleted meanwhile
                Err(e) => return Err(e),
            };
            let m = self.c.decode_manifest(&o.key, &bytes)?;
            match self.mark(&m) {
                // Committed after the locations were loaded, or its extent list was repacked
                // by another collector: look again with fresh locations. Chunks marked by the
                // failed walk stay marked: marking too much only keeps more.
                Err(Error::ChunkNotIndexed { .. } | Error::MissingObject { .. }) => {
                    self.meta = Some(meta_locations(self.c, self.mem_entries)?);
                    self.mark(&m)?;
                }
                other => other?,
            }
            self.walked.insert(id);
        }
        Ok(())
    }

    fn mark(&mut self, m: &Manifest) -> Result<()> {
        for (id, _) in m.meta_ids(&manifest_key(&m.backup_id))? {
            self.live.push(ChunkId(id))?;
        }
        let meta = match self.meta.take() {
            Some(meta) => meta,
            None => meta_locations(self.c, self.mem_entries)?,
        };
        let live = &mut self.live;
        let walked = self.c.walk_extents(&meta, m, |_, e| match e {
            Extent::Data { id, .. } => live.push(ChunkId(*id)),
            _ => Ok(()),
        });
        self.meta = Some(meta);
        walked
    }
}

/// The extent-list chunks' locations, read from the whole index: live packs first.
fn meta_locations(c: &Container, mem_entries: usize) -> Result<LocationTable> {
    let mut meta = meta_builder(mem_entries);
    c.scan_index(IndexUse::Read, |pack, entries, listed, condemned| {
        meta.add_meta(*pack, entries, read_rank(listed.is_some(), condemned));
    })?;
    meta.finish()
}
