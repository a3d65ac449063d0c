//! What an incremental deduplicates against: its parent's chunks, found without the index.
//!
//! A full backup deduplicates against every chunk of the container: it lists the packs and
//! reads every index segment ([`super::dedup::load`]), requests and time that grow with the
//! container. An incremental instead deduplicates against its parent's chunks (and its own),
//! which it reads from the parent's extent list through the locations its manifest records
//! ([`crate::format::manifest::MetaAt`]): requests that grow with the volume's metadata, none
//! with the container. Proxmox Backup Server's client does the same with the previous
//! snapshot's index. What it gives up: a changed block that matches another volume's data, or
//! data of an older backup that the parent no longer has, is stored again.
//!
//! Why relying on the parent's chunks is safe (the full argument is in `docs/gc.md`): the
//! parent's manifest exists after this backup's lease was taken (checked by the caller), and a
//! committed manifest's chunks are never all deleted while it exists, so every chunk it names
//! has a copy in some pack. Collections that condemn after the lease wait for it. A
//! condemnation record written before the lease is read here, and every chunk it lists as
//! *exposed* (held by its packs and not copied by its collector into a new pack) is left out of
//! the set: if the parent is deleted meanwhile, that record's sweep may delete the chunk's last
//! copy. A chunk left out is stored again, or read again from the volume (a change map's
//! unread chunks). Packs are never given a condemned name, as in the full path.
//!
//! When a record has no exposed list (written by an earlier release), a hint is missing, or the
//! parent's extent list cannot be read through its hints (a collection moved it), the backup
//! reads the index as a full backup does; its manifest then records fresh hints.

use std::collections::HashSet;

use super::dedup::DedupSet;
use super::resume;
use crate::container::extents::hinted_meta_index;
use crate::container::{Container, manifest_key};
use crate::error::Result;
use crate::format::condemnation::Condemnation;
use crate::format::extent_list::Extent;
use crate::format::manifest::Manifest;
use crate::ids::Hash;
use crate::index::Index;

/// What the pending condemnation records name: their packs and their exposed chunks.
pub(super) struct Exposed {
    packs: HashSet<Hash>,
    /// Sorted chunk-id prefixes ([`Condemnation::exposed_prefix`]).
    chunks: Vec<u64>,
}

impl Exposed {
    /// Lists and reads the pending condemnation records; `None` if one has no exposed list.
    pub(super) fn load(container: &Container) -> Result<Option<Exposed>> {
        let mut packs = HashSet::new();
        let mut chunks = Vec::new();
        for (_, record) in container.load_condemned()? {
            let Some(prefixes) = record.exposed_prefixes() else {
                return Ok(None);
            };
            packs.extend(record.pack_ids());
            chunks.extend(prefixes);
        }
        chunks.sort_unstable();
        chunks.dedup();
        Ok(Some(Exposed { packs, chunks }))
    }

    /// True if no record is pending.
    pub(super) fn is_empty(&self) -> bool {
        self.packs.is_empty() && self.chunks.is_empty()
    }

    /// Whether a pending record exposes `id` (or a chunk sharing its prefix).
    fn holds(&self, id: &Hash) -> bool {
        self.chunks
            .binary_search(&Condemnation::exposed_prefix(id))
            .is_ok()
    }
}

/// An incremental's dedup inputs, from its parent alone.
pub(super) struct ParentScope {
    /// The parent's chunks that no pending record exposes.
    pub(super) known: DedupSet,
    /// Condemned pack names, never to be produced.
    pub(super) condemned: HashSet<Hash>,
    /// Where the parent's extent-list chunks are.
    pub(super) index: Index,
    /// The parent's chunks left out because a pending record exposes them.
    pub(super) exposed: u64,
    /// Whether a resume hint of the volume was found (`backup/resume.rs`).
    pub(super) resumed: bool,
}

/// The parent's chunks as a dedup set (up to `mem_keys` in memory), or `None` when the index
/// must be read instead: see the module documentation. `parent` must have been seen to exist
/// after the backup's lease was taken.
pub(super) fn load(
    container: &Container,
    parent: &Manifest,
    volume_id: &str,
    exposed: Exposed,
    mem_keys: usize,
) -> Result<Option<ParentScope>> {
    let key = manifest_key(&parent.backup_id);
    let Some(index) = hinted_meta_index(parent) else {
        return Ok(None);
    };
    let mut set = DedupSet::builder(mem_keys);
    let mut left_out = 0u64;
    let mut add = |id: &Hash| {
        if exposed.holds(id) {
            left_out += 1;
        } else {
            set.add(id);
        }
    };
    for (id, _) in parent.meta_ids(&key)? {
        add(&id);
    }
    let walked = container.walk_extents(&index, parent, |_, e| {
        if let Extent::Data { id, .. } = e {
            add(id);
        }
        Ok(())
    });
    if let Err(e) = walked {
        tracing::info!(
            parent = %parent.backup_id,
            error = %e,
            "the parent's extent list is not where its manifest says: reading the index"
        );
        return Ok(None);
    }
    // What an interrupted incremental of this volume stored (in packs that exist and are not
    // condemned: safe whatever the records expose).
    let (resumed, hint) = resume::resumable_chunks(container, volume_id, &exposed.packs);
    for id in &resumed {
        set.add(id);
    }
    Ok(Some(ParentScope {
        known: set.finish()?,
        condemned: exposed.packs,
        index,
        exposed: left_out,
        resumed: hint,
    }))
}
