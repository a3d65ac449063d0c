//! Mark: every chunk a committed manifest references, through its extent list.

use std::collections::HashSet;

use crate::container::{Container, manifest_key};
use crate::error::{Error, Result};
use crate::format::extent_list::Extent;
use crate::format::keys::BACKUPS_PREFIX;
use crate::format::manifest::Manifest;
use crate::ids::Hash;
use crate::index::Index;

/// Marks chunks of committed manifests; remembers which backups were walked.
pub(super) struct Marker<'a> {
    pub(super) c: &'a Container,
    /// Chunk locations for walking extent lists; reloaded if a manifest committed during the
    /// run names extent-list chunks written after it was loaded.
    pub(super) index: Index,
    pub(super) walked: HashSet<String>,
    pub(super) live: HashSet<Hash>,
}

impl<'a> Marker<'a> {
    /// A marker that walks extent lists through `index`.
    pub(super) fn new(c: &'a Container, index: Index) -> Self {
        Marker {
            c,
            index,
            walked: HashSet::new(),
            live: HashSet::new(),
        }
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
                // Committed after the index was loaded, or its extent list was repacked by
                // another collector: look again with a fresh index.
                Err(Error::ChunkNotIndexed { .. } | Error::MissingObject { .. }) => {
                    self.index = self.c.load_index()?;
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
            self.live.insert(id);
        }
        let live = &mut self.live;
        self.c.walk_extents(&self.index, m, |_, e| {
            if let Extent::Data { id, .. } = e {
                live.insert(*id);
            }
            Ok(())
        })
    }
}
