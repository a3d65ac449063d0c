//! The file-metadata shortcut: an incremental of a regular file whose stamp (device, inode,
//! size, modification and change times) is the one its parent recorded is not read at all.
//! Its manifest reuses the parent's extent list: the same chunks, which the parent's backup
//! stored, so nothing is uploaded but the manifest. restic and rustic skip an unchanged image
//! file the same way; `BackupOptions::full_read` (`--full-read`) reads it regardless, and so
//! does a backup the full-read policy asks to (`backup/read_mode.rs`).
//!
//! Collection safety is the normal path's: the check runs after the backup's lease is taken,
//! so a condemnation written later is held back until the manifest is committed, and its
//! sweep then marks that manifest; a condemnation written earlier could name packs holding
//! the parent's only copies of chunks (if the parent is deleted meanwhile), so while any
//! condemnation record is pending the volume is read as usual, and the dedup load steers
//! around condemned packs. The parent must also still exist once the lease is taken: a
//! collection that condemned and swept its packs before then leaves no record to see.

use super::BackupOptions;
use super::read_mode::one_more_without_full_read;
use super::source::OpenVolume;
use crate::container::Container;
use crate::error::Result;
use crate::format::keys::CONDEMNED_PREFIX;
use crate::format::manifest::{Manifest, ManifestStats, READ_SOURCE_UNCHANGED};

/// The parent whose extents this backup may reuse without reading the volume, if any.
pub(super) fn reusable_parent<'a>(
    container: &Container,
    parent: Option<&'a Manifest>,
    volume: &OpenVolume,
    full_read: bool,
) -> Result<Option<&'a Manifest>> {
    let (Some(parent), Some(stamp)) = (parent, volume.stamp) else {
        return Ok(None);
    };
    if full_read || parent.source != Some(stamp) {
        return Ok(None);
    }
    if !container.store().list(CONDEMNED_PREFIX)?.is_empty() {
        return Ok(None);
    }
    // The parent was read before the lease was taken. If it was deleted since, a collection
    // that finished before the lease may have swept its packs (its record gone from the
    // listing above); if it still exists, every collection that swept before the lease saw it
    // live, and every later one waits for this lease.
    if container
        .store()
        .head(&crate::container::manifest_key(&parent.backup_id))?
        .is_none()
    {
        return Ok(None);
    }
    Ok(Some(parent))
}

/// The manifest of a backup that reuses `parent`'s extents.
pub(super) fn manifest_from_parent(
    backup_id: String,
    opts: &BackupOptions,
    parent: &Manifest,
) -> Manifest {
    Manifest {
        backup_id,
        volume_id: opts.volume_id.clone(),
        parent_id: opts.parent_id.clone(),
        created_at: opts.created_at(),
        created_unix: opts.created_unix(),
        data_timestamp: opts.data_timestamp.clone(),
        stats: ManifestStats {
            chunks_total: parent.stats.chunks_total,
            chunks_new: 0,
            bytes_new: 0,
            zero_bytes: parent.stats.zero_bytes,
            object_count: 1,
        },
        volume_metadata: opts.volume_metadata.clone(),
        labels: opts.labels.clone(),
        read: Some(READ_SOURCE_UNCHANGED.into()),
        change_map: None,
        since_full_read: Some(one_more_without_full_read(parent)),
        ..parent.clone()
    }
}
