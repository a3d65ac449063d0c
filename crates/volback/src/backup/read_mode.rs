//! How an incremental reads its volume: all of it, none of it (an unchanged source), or only
//! what a change map calls changed; and the full-read policy that bounds how long a chain of
//! backups can go without reading everything.

use std::time::Duration;

use super::BackupOptions;
use super::mapped::MapPlan;
use super::source::OpenVolume;
use crate::change_map::ChangeMap;
use crate::error::{Error, Result};
use crate::format::manifest::{Manifest, SinceFullRead};

/// Whether the policy asks this backup to read the whole volume: `full_read_every` backups in
/// a row were made without a full read, or the last full read is `full_read_after` old.
pub(super) fn full_read_due(parent: &Manifest, opts: &BackupOptions, now_unix: u64) -> bool {
    let since = since_full_read(parent);
    let by_count = opts
        .full_read_every
        .is_some_and(|n| since.backups >= n.max(1));
    let by_age = opts
        .full_read_after
        .is_some_and(|t: Duration| now_unix.saturating_sub(since.full_read_unix) >= t.as_secs());
    by_count || by_age
}

/// The parent's count of backups without a full read (0 if it read everything) and when the
/// last full read was.
fn since_full_read(parent: &Manifest) -> SinceFullRead {
    parent.since_full_read.unwrap_or(SinceFullRead {
        backups: 0,
        full_read_unix: parent.created_unix,
    })
}

/// The record of a backup made from `parent` without a full read.
pub(super) fn one_more_without_full_read(parent: &Manifest) -> SinceFullRead {
    let s = since_full_read(parent);
    SinceFullRead {
        backups: s.backups.saturating_add(1),
        full_read_unix: s.full_read_unix,
    }
}

/// A change map loaded, checked against the volume, and planned; before anything is written.
pub(super) struct Mapped {
    pub(super) map: ChangeMap,
    pub(super) plan: MapPlan,
    pub(super) sample_rate: f64,
}

/// Loads the caller's change map, if any, for an incremental of `volume` from `parent`.
/// Returns None when there is no map or the policy asks for a full read.
pub(super) fn load_map(
    opts: &BackupOptions,
    backup_id: &str,
    parent: Option<&Manifest>,
    volume: &OpenVolume,
    full_read: bool,
) -> Result<Option<Mapped>> {
    let Some(source) = &opts.changes else {
        return Ok(None);
    };
    let bad = |reason: &str| Error::Config(format!("change map: {reason}"));
    let sample_rate = opts.map_sample.unwrap_or(0.0);
    if !(0.0..=1.0).contains(&sample_rate) {
        return Err(bad(&format!(
            "sample rate {sample_rate} is not between 0 and 1"
        )));
    }
    let parent = parent.ok_or_else(|| {
        bad("a change map says what changed since a parent backup: give --parent (of this container's chunking)")
    })?;
    if volume.seekable().is_none() {
        return Err(bad(&format!(
            "volume '{}' is a stream: a change map needs a file or block device",
            volume.name()
        )));
    }
    // Loaded and checked even when the policy reads everything: a bad map is an error.
    let map = ChangeMap::load(source)?;
    let size = volume.size.unwrap_or(0);
    map.check_size(size)?;
    if full_read {
        return Ok(None);
    }
    let seed = u64::from_le_bytes(
        blake3::hash(backup_id.as_bytes()).as_bytes()[..8]
            .try_into()
            .expect("8 bytes"),
    );
    let plan = MapPlan::new(&map, size, parent.size, sample_rate, seed);
    Ok(Some(Mapped {
        map,
        plan,
        sample_rate,
    }))
}
