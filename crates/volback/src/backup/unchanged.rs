//! The file-metadata shortcut: an incremental of a regular file whose stamp (device, inode,
//! size, modification and change times) is the one its parent recorded is not read at all.
//! Its manifest reuses the parent's extent list: the same chunks, which the parent's backup
//! stored, so nothing is uploaded but the manifest. restic and rustic skip an unchanged image
//! file the same way; `BackupOptions::full_read` (`--full-read`) reads it regardless, and so
//! does a backup the full-read policy asks to (`backup/read_mode.rs`).
//!
//! Collection safety is an incremental's (`backup/parent_scope.rs`): the checks run after the
//! backup's lease is taken, so a condemnation written later is held back until the manifest is
//! committed, and its sweep then marks that manifest. The parent must still exist once the
//! lease is taken (a collection that swept its packs before then leaves no record to see), and
//! no condemnation record written earlier may expose one of its chunks: with no record
//! pending, nothing more is read; with one pending, the parent's extent list is read and
//! checked against the records, and any exposed chunk sends the backup down the normal path.

use super::BackupOptions;
use super::read_mode::one_more_without_full_read;
use super::source::OpenVolume;
use crate::format::manifest::{Manifest, ManifestStats, READ_SOURCE_UNCHANGED};

/// Whether `volume` is the file `parent` was made from, unchanged since (same stamp), and
/// may be taken from the parent without reading it. The caller must still check that the
/// parent exists and that no pending condemnation record exposes its chunks, after its lease.
pub(super) fn stamp_matches(
    parent: Option<&Manifest>,
    volume: &OpenVolume,
    full_read: bool,
) -> bool {
    match (parent, volume.stamp) {
        (Some(parent), Some(stamp)) => !full_read && parent.source == Some(stamp),
        _ => false,
    }
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
