//! Resuming an interrupted incremental: the resume hint (`format/resume.rs`) it keeps while it
//! writes, and what a later incremental of the same volume takes from it.

use std::collections::HashSet;
use std::sync::Mutex;

use crate::container::{Container, pack_key};
use crate::error::Result;
use crate::format::keys::resume_key;
use crate::format::resume::Resume;
use crate::ids::Hash;

/// The resume hint a running incremental rewrites after each index segment.
pub(super) struct ResumeLog {
    key: String,
    backup_id: String,
    segments: Mutex<Vec<String>>,
}

/// The key of `volume_id`'s resume hint in `container`.
pub(super) fn hint_key(container: &Container, volume_id: &str) -> Result<String> {
    let name = format!("volume:{volume_id}");
    Ok(resume_key(&container.keys()?.ids().of(name.as_bytes())))
}

impl ResumeLog {
    pub(super) fn new(key: String, backup_id: &str) -> Self {
        ResumeLog {
            key,
            backup_id: backup_id.into(),
            segments: Mutex::new(Vec::new()),
        }
    }

    /// Whether the hint was written.
    pub(super) fn written(&self) -> bool {
        !self
            .segments
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }

    /// Adds the segment just written at `segment` and rewrites the hint.
    pub(super) fn record(&self, container: &Container, segment: String) -> Result<()> {
        let mut segs = self.segments.lock().unwrap_or_else(|p| p.into_inner());
        segs.push(segment);
        let plain = Resume::new(&self.backup_id, segs.clone()).encode()?;
        container
            .store()
            .put(&self.key, container.seal_object(&self.key, plain)?)
    }
}

/// The chunks held by packs a resume hint of `volume_id` names that still exist and are not in
/// `condemned`, and whether there was a hint. Must run after the backup's lease and the
/// reading of the condemnation records: a pack seen then is either condemned by a record read
/// or, if condemned later, held back by the lease. A hint that cannot be read is ignored.
pub(super) fn resumable_chunks(
    container: &Container,
    volume_id: &str,
    condemned: &HashSet<Hash>,
) -> (Vec<Hash>, bool) {
    match read(container, volume_id, condemned) {
        Ok(found) => found,
        Err(e) => {
            tracing::info!(volume = volume_id, error = %e, "resume hint ignored");
            (Vec::new(), true)
        }
    }
}

fn read(
    container: &Container,
    volume_id: &str,
    condemned: &HashSet<Hash>,
) -> Result<(Vec<Hash>, bool)> {
    let key = hint_key(container, volume_id)?;
    let stored = match container.store().get(&key) {
        Ok(b) => b,
        Err(crate::Error::MissingObject { .. }) => return Ok((Vec::new(), false)),
        Err(e) => return Err(e),
    };
    let hint = Resume::decode(&key, &container.open_object(&key, &key, stored)?)?;
    let mut chunks = Vec::new();
    for seg_key in &hint.segments {
        let seg = match container.store().get(seg_key) {
            Ok(b) => container.decode_segment(seg_key, b)?,
            // Merged away by a collector: its packs are indexed elsewhere, not worth a listing.
            Err(crate::Error::MissingObject { .. }) => continue,
            Err(e) => return Err(e),
        };
        for (pack, entries) in seg {
            if !condemned.contains(&pack) && container.store().head(&pack_key(&pack))?.is_some() {
                chunks.extend(entries.iter().map(|e| e.id));
            }
        }
    }
    tracing::info!(
        volume = volume_id,
        backup = %hint.backup_id,
        chunks = chunks.len(),
        "resuming what an unfinished backup of this volume stored"
    );
    Ok((chunks, true))
}
