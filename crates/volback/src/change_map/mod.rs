//! Change maps: which ranges of a volume changed since the snapshot its parent backup was made
//! from, as the storage under the volume already knows them.
//!
//! An incremental given a map reads only the changed ranges and a few chunks around each
//! (`backup/mapped.rs`); everything else reuses the parent's chunks without being read. Four
//! sources are understood, one file each:
//!
//! | source | file | what it says |
//! |---|---|---|
//! | a generic list of changed extents, JSON or CSV | [`extents`] | offset, length, optionally "now zero" |
//! | `rbd diff --from-snap A --format json` (Ceph RBD) | [`rbd`] | `exists: false` ranges read as zeros |
//! | `thin_delta` XML (LVM thin pools, dm-thin) | [`thin`] | `left_only` blocks are unmapped: zeros |
//! | a QEMU dirty bitmap read over NBD (`qemu-nbd -B NAME`) | [`nbd`] | `qemu:dirty-bitmap:NAME` |
//!
//! Every map is checked in full before the backup writes anything: ranges sorted, not
//! overlapping, non-empty, inside the volume, on the block size the format declares. A bad map
//! is an [`Error::ChangeMap`] naming the map and the entry.
//!
//! A map that misses a change would make a wrong backup, silently. The sampled check and the
//! full-read policy (`BackupOptions::map_sample`, `full_read_every`, `full_read_after`) bound
//! that risk; `docs/change-maps.md` says what each guarantees.

pub mod extents;
pub mod nbd;
pub mod rbd;
pub mod thin;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// What produced a change map (recorded in the manifest of a backup made with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MapKind {
    /// A generic list of changed extents (JSON or CSV).
    Extents,
    /// `rbd diff --format json` (or its plain-text table).
    RbdDiff,
    /// `thin_delta` XML.
    ThinDelta,
    /// A QEMU dirty bitmap read over NBD.
    NbdDirtyBitmap,
}

impl MapKind {
    /// The name used on the command line and in manifests.
    pub fn name(self) -> &'static str {
        match self {
            MapKind::Extents => "extents",
            MapKind::RbdDiff => "rbd-diff",
            MapKind::ThinDelta => "thin-delta",
            MapKind::NbdDirtyBitmap => "nbd-dirty-bitmap",
        }
    }

    /// The kind of a file map named `name` on the command line.
    pub fn of_file_format(name: &str) -> Result<Option<MapKind>> {
        Ok(match name {
            "auto" => None,
            "extents" => Some(MapKind::Extents),
            "rbd-diff" => Some(MapKind::RbdDiff),
            "thin-delta" => Some(MapKind::ThinDelta),
            _ => {
                return Err(Error::Config(format!(
                    "change map format '{name}': one of auto, extents, rbd-diff, thin-delta"
                )));
            }
        })
    }
}

/// One changed range of the volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    pub offset: u64,
    pub len: u64,
    /// The range now reads as zeros (discarded, unmapped): it is not read.
    pub zeroed: bool,
}

impl Change {
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.offset + self.len
    }
}

/// Where a change map comes from.
#[derive(Debug, Clone)]
pub enum MapSource {
    /// A file; its format detected from its first bytes when `kind` is None.
    File {
        path: PathBuf,
        kind: Option<MapKind>,
    },
    /// A map's text handed over in memory (Python, the Cinder driver); `name` is for messages.
    Text {
        name: String,
        text: String,
        kind: Option<MapKind>,
    },
    /// A QEMU dirty bitmap, read over NBD from `uri` (`nbd+unix:///EXPORT?socket=PATH` or
    /// `nbd://HOST:PORT/EXPORT`).
    Nbd { uri: String, bitmap: String },
}

/// The changed ranges of a volume, checked: sorted, disjoint, non-empty, inside the volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeMap {
    pub kind: MapKind,
    /// The map's name for messages: a path, an NBD URI.
    pub name: String,
    /// The volume size the map says it describes, when it says one (NBD exports do).
    pub volume_size: Option<u64>,
    pub changes: Vec<Change>,
}

impl ChangeMap {
    /// Loads and checks a map. Nothing is written anywhere.
    pub fn load(source: &MapSource) -> Result<ChangeMap> {
        match source {
            MapSource::File { path, kind } => {
                let name = path.display().to_string();
                let text = std::fs::read_to_string(path).map_err(|e| Error::ChangeMap {
                    map: name.clone(),
                    at: "file".into(),
                    reason: format!("unreadable: {e}"),
                })?;
                Self::parse(&name, &text, *kind)
            }
            MapSource::Text { name, text, kind } => Self::parse(name, text, *kind),
            MapSource::Nbd { uri, bitmap } => nbd::read_dirty_bitmap(uri, bitmap),
        }
    }

    /// Parses a map's text, of format `kind` (or detected: `<` is thin_delta XML, a JSON list
    /// whose entries say `exists` is `rbd diff`, a table headed `Offset Length Type` too, and
    /// anything else a generic extent list).
    pub fn parse(name: &str, text: &str, kind: Option<MapKind>) -> Result<ChangeMap> {
        let kind = kind.unwrap_or_else(|| detect(text));
        match kind {
            MapKind::Extents => extents::parse(name, text),
            MapKind::RbdDiff => rbd::parse(name, text),
            MapKind::ThinDelta => thin::parse(name, text),
            MapKind::NbdDirtyBitmap => Err(Error::ChangeMap {
                map: name.into(),
                at: "format".into(),
                reason: "a dirty bitmap is read over NBD, not from a file".into(),
            }),
        }
    }

    /// Checks the ranges (in the order the source gave them) and makes the map.
    pub(crate) fn new(
        kind: MapKind,
        name: &str,
        volume_size: Option<u64>,
        changes: Vec<(String, Change)>,
    ) -> Result<ChangeMap> {
        let bad = |at: &str, reason: String| Error::ChangeMap {
            map: name.into(),
            at: at.into(),
            reason,
        };
        let mut out: Vec<Change> = Vec::with_capacity(changes.len());
        for (at, c) in changes {
            if c.len == 0 {
                return Err(bad(&at, "empty range (length 0)".into()));
            }
            let end = c
                .offset
                .checked_add(c.len)
                .ok_or_else(|| bad(&at, format!("range {}+{} wraps around", c.offset, c.len)))?;
            if let Some(prev) = out.last_mut() {
                if c.offset < prev.end() {
                    let why = if c.offset < prev.offset {
                        "not sorted"
                    } else {
                        "overlaps the range before it"
                    };
                    return Err(bad(
                        &at,
                        format!(
                            "range {}..{end} {why} (previous ends at {})",
                            c.offset,
                            prev.end()
                        ),
                    ));
                }
                // Adjacent ranges of the same kind are one.
                if c.offset == prev.end() && c.zeroed == prev.zeroed {
                    prev.len += c.len;
                    continue;
                }
            }
            out.push(c);
        }
        let map = ChangeMap {
            kind,
            name: name.into(),
            volume_size,
            changes: out,
        };
        if let Some(size) = volume_size {
            map.check_size(size)?;
        }
        Ok(map)
    }

    /// Checks the map against the volume it is applied to: no range past its end, and the
    /// size the map describes (if it says one) the volume's.
    pub fn check_size(&self, volume_size: u64) -> Result<()> {
        if let Some(said) = self.volume_size
            && said != volume_size
        {
            return Err(Error::ChangeMap {
                map: self.name.clone(),
                at: "size".into(),
                reason: format!("describes a volume of {said} bytes, the volume has {volume_size}"),
            });
        }
        if let Some(last) = self.changes.last()
            && last.end() > volume_size
        {
            return Err(Error::ChangeMap {
                map: self.name.clone(),
                at: format!("range {}..{}", last.offset, last.end()),
                reason: format!("past the end of the volume ({volume_size} bytes)"),
            });
        }
        Ok(())
    }

    /// Volume bytes the map calls changed.
    pub fn changed_bytes(&self) -> u64 {
        self.changes.iter().map(|c| c.len).sum()
    }

    /// True when nothing changed.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }
}

/// Guesses a map's format from its text.
fn detect(text: &str) -> MapKind {
    let t = text.trim_start();
    if t.starts_with('<') {
        MapKind::ThinDelta
    } else if (t.starts_with('[') && t.contains("\"exists\""))
        || t.to_ascii_lowercase().starts_with("offset") && t.contains("Type")
    {
        MapKind::RbdDiff
    } else {
        MapKind::Extents
    }
}

/// A block-granular range `begin + length` blocks of `block` bytes, checked, as bytes; the last
/// block may run past the end of a volume whose size is not a multiple of it (it is clipped
/// there by [`clip_to`]).
pub(crate) fn blocks(
    name: &str,
    at: &str,
    begin: u64,
    length: u64,
    block: u64,
) -> Result<(u64, u64)> {
    let bad = || Error::ChangeMap {
        map: name.into(),
        at: at.into(),
        reason: format!("blocks {begin}+{length} of {block} bytes overflow 64 bits"),
    };
    let offset = begin.checked_mul(block).ok_or_else(bad)?;
    let len = length.checked_mul(block).ok_or_else(bad)?;
    offset.checked_add(len).ok_or_else(bad)?;
    Ok((offset, len))
}

/// Clips the last range of a block-granular map to a volume of `size` bytes, when it covers
/// the volume's partial last block (and no more).
pub fn clip_to(map: &mut ChangeMap, size: u64, block: u64) {
    if let Some(last) = map.changes.last_mut()
        && last.end() > size
        && last.offset < size
        && last.end() - size < block
    {
        last.len = size - last.offset;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(offset: u64, len: u64) -> (String, Change) {
        (
            format!("entry at {offset}"),
            Change {
                offset,
                len,
                zeroed: false,
            },
        )
    }

    #[test]
    fn bad_ranges_are_refused_with_the_entry_named() {
        let kind = |r: Result<ChangeMap>| match r {
            Err(Error::ChangeMap { at, reason, .. }) => format!("{at}: {reason}"),
            other => panic!("{other:?}"),
        };
        let e = kind(ChangeMap::new(
            MapKind::Extents,
            "m",
            None,
            vec![c(10, 5), c(0, 5)],
        ));
        assert!(e.contains("entry at 0") && e.contains("not sorted"), "{e}");
        let e = kind(ChangeMap::new(
            MapKind::Extents,
            "m",
            None,
            vec![c(0, 10), c(5, 5)],
        ));
        assert!(e.contains("overlaps"), "{e}");
        let e = kind(ChangeMap::new(MapKind::Extents, "m", None, vec![c(0, 0)]));
        assert!(e.contains("empty"), "{e}");
        let e = kind(ChangeMap::new(
            MapKind::Extents,
            "m",
            None,
            vec![c(u64::MAX, 2)],
        ));
        assert!(e.contains("wraps"), "{e}");
        let m = ChangeMap::new(MapKind::Extents, "m", None, vec![c(0, 4096), c(8192, 4096)]);
        let e = kind(m.unwrap().check_size(10000).map(|_| unreachable!()));
        assert!(e.contains("past the end"), "{e}");
        let m = ChangeMap::new(MapKind::Extents, "m", Some(100), vec![]).unwrap();
        assert!(m.check_size(200).is_err());
    }

    #[test]
    fn adjacent_ranges_merge() {
        let m = ChangeMap::new(MapKind::Extents, "m", None, vec![c(0, 4), c(4, 4), c(9, 1)]);
        let m = m.unwrap();
        assert_eq!(m.changes.len(), 2);
        assert_eq!((m.changes[0].len, m.changed_bytes()), (8, 9));
    }
}
