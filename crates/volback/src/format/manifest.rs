//! The manifest (`backups/<id>`): the commit point of a backup.
//!
//! A small JSON document: who and what (ids, size, timestamps, volume metadata), the chunker
//! parameters, and the list of *extent-list chunks* (see [`super::extent_list`]). The manifest is
//! the last object a backup writes; its existence is what makes the backup exist.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::versioned::decode_versioned_json;
use crate::chunker::ChunkerParams;
use crate::error::{Error, Result};
use crate::ids::Hash;

/// Manifest format name and version written and read by this build.
pub const MANIFEST_FORMAT: &str = "volback-manifest";
/// Manifest version.
pub const MANIFEST_VERSION: u64 = 1;

/// A reference to one extent-list chunk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaRef {
    /// BLAKE3 of the chunk, hex.
    pub id: String,
    /// Bytes of extent-list stream in it.
    pub len: u32,
    /// Where the chunk was stored when the backup was made, if known: a hint, not a promise
    /// (the collector may have moved the chunk since).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<MetaAt>,
}

/// Where an extent-list chunk was stored when its backup was made. An incremental reads its
/// parent's extent list through these hints without reading the container's index
/// (`backup/parent_scope.rs`); a hint that no longer holds (the pack was repacked and deleted,
/// or the bytes there are not the chunk) only sends it to the index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaAt {
    /// The pack's id, hex.
    pub pack: String,
    /// Offset and stored length of the chunk in the pack.
    pub offset: u32,
    pub stored_len: u32,
    /// Whether the stored bytes are one zstd frame.
    pub zstd: bool,
}

/// What identified a regular-file volume when a backup opened it: device, inode, size, and
/// modification and change times in nanoseconds. A later incremental whose volume shows the
/// same stamp as its parent's reuses the parent's extents without reading the file (restic's
/// and rustic's file-metadata check); the change time cannot be set back by a writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceStamp {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
}

/// How a backup whose volume was not read came to be: its source's stamp matched its parent's.
pub const READ_SOURCE_UNCHANGED: &str = "source-unchanged";
/// How a backup that read only what a change map called changed came to be.
pub const READ_CHANGE_MAP: &str = "change-map";

/// How a change map made a backup: what it said, what was read, what was checked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangeMapUse {
    /// `extents`, `rbd-diff`, `thin-delta` or `nbd-dirty-bitmap`.
    pub kind: String,
    /// Ranges and bytes the map called changed.
    pub ranges: u64,
    pub changed_bytes: u64,
    /// Volume bytes read (the changed ranges, the chunks around them, the sample).
    pub bytes_read: u64,
    /// Chunks reused from the parent without being read.
    pub reused_chunks: u64,
    /// Fraction of those read back and checked, and how many that was.
    pub sample_rate: f64,
    pub sampled_chunks: u64,
}

/// Backups in a row made without reading the whole volume (a change map, an unchanged
/// source), this one included, and when the last backup that read it all was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinceFullRead {
    pub backups: u32,
    pub full_read_unix: u64,
}

/// Counts recorded with each backup.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestStats {
    /// Data chunks in the volume (counting repeats).
    pub chunks_total: u64,
    /// Chunks this backup stored that the container did not have.
    pub chunks_new: u64,
    /// Bytes this backup added in packs and index segments (not counting the manifest itself).
    pub bytes_new: u64,
    /// Volume bytes in zero extents.
    pub zero_bytes: u64,
    /// Objects this backup wrote, the manifest included.
    pub object_count: u64,
}

/// The manifest document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub version: u64,
    pub backup_id: String,
    pub volume_id: String,
    pub parent_id: Option<String>,
    /// RFC 3339, UTC.
    pub created_at: String,
    /// Seconds since the Unix epoch (for GC grace periods and sorting).
    pub created_unix: u64,
    /// Caller-supplied point in time the data represents (Cinder's data_timestamp).
    pub data_timestamp: Option<String>,
    /// Volume size in bytes.
    pub size: u64,
    pub chunker: ChunkerParams,
    /// Extent-list chunks, in order.
    pub extents: Vec<MetaRef>,
    /// Total bytes of the extent-list stream.
    pub extents_len: u64,
    /// Number of extents in the stream.
    pub extent_count: u64,
    pub stats: ManifestStats,
    /// Opaque JSON volume metadata, handed back on restore.
    pub volume_metadata: Option<serde_json::Value>,
    /// The caller's `key=value` labels (`policy=daily`, `vm=<uuid>`): listed and filtered on,
    /// and the groups retention rules apply to. Absent when empty (earlier manifests have none).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The stamp of a regular-file volume as the backup opened it (absent for devices and
    /// streams, and in earlier manifests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceStamp>,
    /// How the volume was read: absent when every byte was read (or its holes skipped);
    /// [`READ_SOURCE_UNCHANGED`] when it was not read at all, its stamp matching the parent's;
    /// [`READ_CHANGE_MAP`] when only what a change map called changed was read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read: Option<String>,
    /// With `read` = [`READ_CHANGE_MAP`]: the map and what was read and checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change_map: Option<ChangeMapUse>,
    /// On a backup that did not read the whole volume: how many in a row did not, and when
    /// the last full read was (the full-read policy counts from it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_full_read: Option<SinceFullRead>,
}

/// Most labels a backup carries.
pub const MAX_LABELS: usize = 64;

/// Checks labels: at most [`MAX_LABELS`]; keys of 1–64 characters of `[A-Za-z0-9._/-]`,
/// values of at most 256 characters without control characters.
pub fn validate_labels(labels: &BTreeMap<String, String>) -> Result<()> {
    if labels.len() > MAX_LABELS {
        return Err(Error::Config(format!(
            "{} labels, at most {MAX_LABELS}",
            labels.len()
        )));
    }
    for (k, v) in labels {
        let key_ok = (1..=64).contains(&k.len())
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._/-".contains(c));
        if !key_ok {
            return Err(Error::Config(format!(
                "label key '{k}': 1-64 characters of A-Z a-z 0-9 . _ / -"
            )));
        }
        if v.chars().count() > 256 || v.chars().any(char::is_control) {
            return Err(Error::Config(format!(
                "label '{k}': the value must be at most 256 characters, without control characters"
            )));
        }
    }
    Ok(())
}

/// Parses `key=value` into a label.
pub fn parse_label(text: &str) -> Result<(String, String)> {
    let (k, v) = text
        .split_once('=')
        .ok_or_else(|| Error::Config(format!("label '{text}' is not key=value")))?;
    let one = BTreeMap::from([(k.to_string(), v.to_string())]);
    validate_labels(&one)?;
    Ok((k.into(), v.into()))
}

impl Manifest {
    /// Serialises to compact JSON (one line, so a decode error's column is a byte offset).
    pub fn encode(&self) -> Result<Vec<u8>> {
        super::versioned::encode_json("manifest", self, false)
    }

    /// Parses a manifest read from `key`, rejecting other formats and versions by name.
    pub fn decode(key: &str, bytes: &[u8]) -> Result<Manifest> {
        let m: Manifest =
            decode_versioned_json(key, bytes, "manifest", MANIFEST_FORMAT, MANIFEST_VERSION)?;
        let listed: u64 = m.extents.iter().map(|r| u64::from(r.len)).sum();
        if listed != m.extents_len {
            return Err(Error::corrupt(
                key,
                0,
                "extent-list chunk lengths do not add up",
            ));
        }
        Ok(m)
    }

    /// The extent-list chunk ids, parsed.
    pub fn meta_ids(&self, key: &str) -> Result<Vec<(Hash, u32)>> {
        self.extents
            .iter()
            .map(|r| {
                Hash::from_hex(&r.id).map(|h| (h, r.len)).ok_or_else(|| {
                    Error::corrupt(key, 0, format!("bad extent-list chunk id '{}'", r.id))
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_versions_are_checked() {
        let m = Manifest {
            format: MANIFEST_FORMAT.into(),
            version: MANIFEST_VERSION,
            backup_id: "b".into(),
            volume_id: "v".into(),
            parent_id: None,
            created_at: "2026-01-01T00:00:00Z".into(),
            created_unix: 0,
            data_timestamp: None,
            size: 10,
            chunker: ChunkerParams::default(),
            extents: vec![MetaRef {
                id: Hash::of(b"x").to_hex(),
                len: 5,
                at: None,
            }],
            extents_len: 5,
            extent_count: 1,
            stats: ManifestStats::default(),
            volume_metadata: Some(serde_json::json!({"k": "v"})),
            labels: BTreeMap::new(),
            source: None,
            read: None,
            change_map: None,
            since_full_read: None,
        };
        let enc = m.encode().unwrap();
        assert_eq!(Manifest::decode("k", &enc).unwrap(), m);
        // No labels: no `labels` field, as manifests were before labels existed.
        assert!(!String::from_utf8_lossy(&enc).contains("labels"));
        let labelled = Manifest {
            labels: BTreeMap::from([("policy".into(), "daily".into())]),
            ..m.clone()
        };
        let enc_l = labelled.encode().unwrap();
        assert_eq!(Manifest::decode("k", &enc_l).unwrap(), labelled);
        let v2 = String::from_utf8(enc.clone())
            .unwrap()
            .replace("\"version\":1", "\"version\":2");
        assert!(matches!(
            Manifest::decode("k", v2.as_bytes()),
            Err(Error::UnsupportedVersion { found: 2, .. })
        ));
        assert!(matches!(
            Manifest::decode("k", &enc[..enc.len() / 2]),
            Err(Error::Corrupt { .. })
        ));
        assert!(matches!(
            Manifest::decode("k", b"{}"),
            Err(Error::Corrupt { .. })
        ));
    }
}
