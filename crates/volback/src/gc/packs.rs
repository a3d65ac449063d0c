//! The container's packs as the collector sees them: what each holds, and who holds each chunk.

use std::collections::{HashMap, HashSet};

use crate::container::Container;
use crate::format::index_segment::Segment;
use crate::format::pack::PackEntry;
use crate::ids::Hash;
use crate::index::Index;

/// The packs of the container and what each holds.
pub(super) struct Packs {
    /// Pack id → (size in bytes, entries).
    pub(super) table: HashMap<Hash, (u64, Vec<PackEntry>)>,
    /// Chunk id → packs holding a copy.
    pub(super) holders: HashMap<Hash, Vec<Hash>>,
}

impl Packs {
    pub(super) fn add(&mut self, pack: Hash, size: u64, entries: Vec<PackEntry>) {
        for e in &entries {
            let h = self.holders.entry(e.id).or_default();
            if !h.contains(&pack) {
                h.push(pack);
            }
        }
        self.table.insert(pack, (size, entries));
    }

    /// Whether every live chunk of `pack` has a copy in a pack that exists and is not condemned.
    pub(super) fn live_copies_elsewhere(
        &self,
        pack: &Hash,
        live: &HashSet<Hash>,
        exists: impl Fn(&Hash) -> bool,
        condemned: &HashSet<Hash>,
    ) -> bool {
        let Some((_, entries)) = self.table.get(pack) else {
            return false;
        };
        entries.iter().filter(|e| live.contains(&e.id)).all(|e| {
            self.holders.get(&e.id).is_some_and(|hs| {
                hs.iter()
                    .any(|q| q != pack && exists(q) && !condemned.contains(q))
            })
        })
    }
    /// What each listed pack holds: from the index segments, or from the pack's own table for
    /// packs no segment describes yet (a running or interrupted backup's). Also returns the
    /// locations to walk manifests with: live packs first, as for a restore.
    pub(super) fn survey(
        c: &Container,
        segments: &[(String, Segment)],
        listed: &HashMap<Hash, u64>,
        condemned_before: &HashSet<Hash>,
    ) -> (Packs, Index) {
        let mut packs = Packs {
            table: HashMap::new(),
            holders: HashMap::new(),
        };
        let mut index = Index::new();
        for (_, seg) in segments {
            for (pack, entries) in seg {
                if let Some(size) = listed.get(pack)
                    && !packs.table.contains_key(pack)
                {
                    packs.add(*pack, *size, entries.clone());
                }
            }
        }
        let unindexed: Vec<(Hash, u64)> = listed
            .iter()
            .filter(|(p, _)| !packs.table.contains_key(*p))
            .map(|(p, s)| (*p, *s))
            .collect();
        for (p, entries) in c.read_pack_tables(&unindexed) {
            // A pack whose table cannot be read is left alone (verify reports it).
            if let Ok(entries) = entries {
                packs.add(p, listed[&p], entries);
            }
        }
        // Locations for walking manifests: live packs first, as for a restore.
        for pass in [false, true] {
            for (p, (_, entries)) in &packs.table {
                if condemned_before.contains(p) == pass {
                    index.add_pack(*p, entries);
                }
            }
        }

        (packs, index)
    }
}
