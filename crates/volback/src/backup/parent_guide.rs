//! An incremental's guide: the parent's chunks, streamed to the chunker from its extent list.

use std::sync::mpsc::SyncSender;

use crate::chunker::{GuideEntry, GuideFilter};
use crate::container::Container;
use crate::error::{Error, Result};
use crate::format::extent_list::Extent;
use crate::format::manifest::Manifest;
use crate::index::Index;

/// Guide entries sent to the chunker at a time.
const GUIDE_BATCH: usize = 4096;

/// Walks the parent's extent list and sends the chunker the parent's chunks that ended at a
/// FastCDC cut: a data extent followed by another data extent (see `chunker::Guide`). The guide
/// only saves work, so a parent whose extent list cannot be read just leaves the rest of the
/// volume unguided (with a warning); the backup does not depend on it.
pub(super) fn feed_guide(
    container: &Container,
    index: &Index,
    parent: &Manifest,
    tx: SyncSender<Vec<GuideEntry>>,
) {
    let mut batch = Vec::with_capacity(GUIDE_BATCH);
    let mut filter = GuideFilter::default();
    let mut gone = false;
    let res = container.walk_extents(index, parent, |offset, e| {
        let data = match e {
            Extent::Data { len, id } => Some((*len, *id)),
            Extent::Zero { .. } => None,
        };
        if let Some(g) = filter.next(offset, data) {
            batch.push(g);
            if batch.len() == GUIDE_BATCH {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(GUIDE_BATCH));
                if tx.send(full).is_err() {
                    gone = true;
                    return Err(Error::Internal("chunker gone".into()));
                }
            }
        }
        Ok(())
    });
    match res {
        Ok(()) => {
            let _ = tx.send(batch);
        }
        Err(_) if gone => {} // the chunker stopped first
        Err(e) => tracing::warn!(
            parent = %parent.backup_id,
            error = %e,
            "parent extent list unreadable: the rest of the volume is cut unguided"
        ),
    }
}

/// Walks the parent's extent list and sends every extent with its offset, in batches, to an
/// incremental given a change map (`backup/mapped.rs`), which cannot do without them: a
/// failure is sent on as the last batch.
pub(super) fn feed_extents(
    container: &Container,
    index: &Index,
    parent: &Manifest,
    tx: SyncSender<Result<Vec<(u64, Extent)>>>,
) {
    let mut batch = Vec::with_capacity(GUIDE_BATCH);
    let mut gone = false;
    let res = container.walk_extents(index, parent, |offset, e| {
        batch.push((offset, *e));
        if batch.len() == GUIDE_BATCH {
            let full = std::mem::replace(&mut batch, Vec::with_capacity(GUIDE_BATCH));
            if tx.send(Ok(full)).is_err() {
                gone = true;
                return Err(Error::Internal("mapped reader gone".into()));
            }
        }
        Ok(())
    });
    let _ = match res {
        Ok(()) => tx.send(Ok(batch)),
        Err(_) if gone => Ok(()),
        Err(e) => tx.send(Err(e)),
    };
}
