//! The manifest (`backups/<id>`): the commit point of a backup.
//!
//! A small JSON document: who and what (ids, size, timestamps, volume metadata), the chunker
//! parameters, and the list of *extent-list chunks* (see [`super::extent_list`]). The manifest is
//! the last object a backup writes; its existence is what makes the backup exist.

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
}

impl Manifest {
    /// Serialises to compact JSON (one line, so a decode error's column is a byte offset).
    pub fn encode(&self) -> Vec<u8> {
        // Serialising plain structs and JSON values cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
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
            }],
            extents_len: 5,
            extent_count: 1,
            stats: ManifestStats::default(),
            volume_metadata: Some(serde_json::json!({"k": "v"})),
        };
        let enc = m.encode();
        assert_eq!(Manifest::decode("k", &enc).unwrap(), m);
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
