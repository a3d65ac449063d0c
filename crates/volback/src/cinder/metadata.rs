//! Cinder's chunked-driver backup manifest (`<prefix>_metadata`, version "1.0.0"), as Cinder's
//! posix, S3, Swift and GCS drivers write it.
//!
//! `objects` is an ordered list of single-key objects, each naming a data object (in the same
//! directory or key prefix as the manifest) with its absolute volume `offset`, its
//! *uncompressed* `length`, its `compression` ("none", "zlib", "bz2"/"bzip2", "zstd"; "gzip" is
//! Cinder's alias for zlib streams) and the hex MD5 of its uncompressed bytes. Every number is
//! checked here: an object that ends past `u64`, a name that is not one object name, an MD5
//! that is not 32 hex digits is [`Error::Corrupt`] naming the manifest.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::error::{Error, Result};

/// The one manifest version Cinder has written.
pub const CINDER_METADATA_VERSION: &str = "1.0.0";

/// How an object's bytes are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CinderCompression {
    None,
    Zlib,
    Bz2,
    Zstd,
}

impl CinderCompression {
    fn parse(s: Option<&str>) -> Option<CinderCompression> {
        Some(match s.map(str::to_ascii_lowercase).as_deref() {
            None | Some("none" | "off" | "no") => CinderCompression::None,
            Some("zlib" | "gzip") => CinderCompression::Zlib,
            Some("bz2" | "bzip2") => CinderCompression::Bz2,
            Some("zstd") => CinderCompression::Zstd,
            Some(_) => return None,
        })
    }
}

/// One data object of a Cinder backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CinderObject {
    /// The object's name, relative to the driver's container (`<prefix>-00001`, where the
    /// manifest is `<prefix>_metadata`).
    pub name: String,
    pub offset: u64,
    /// Uncompressed length.
    pub length: u64,
    pub compression: CinderCompression,
    /// MD5 of the uncompressed bytes.
    pub md5: [u8; 16],
}

/// A Cinder backup's manifest, checked.
#[derive(Debug, Clone)]
pub struct CinderManifest {
    pub backup_id: String,
    pub volume_id: String,
    pub parent_id: Option<String>,
    pub created_at: String,
    pub name: Option<String>,
    pub description: Option<String>,
    /// Cinder's volume metadata: a JSON document inside a string, as the driver stored it.
    pub volume_meta: Option<String>,
    pub objects: Vec<CinderObject>,
}

#[derive(Deserialize)]
struct RawObject {
    offset: u64,
    length: u64,
    #[serde(default)]
    compression: Option<String>,
    md5: String,
}

#[derive(Deserialize)]
struct RawManifest {
    version: String,
    backup_id: String,
    volume_id: String,
    #[serde(default)]
    parent_id: Option<String>,
    #[serde(default)]
    created_at: Option<String>,
    #[serde(default)]
    backup_name: Option<String>,
    #[serde(default)]
    backup_description: Option<String>,
    #[serde(default)]
    volume_meta: Option<String>,
    objects: Vec<BTreeMap<String, RawObject>>,
}

fn md5_of_hex(s: &str) -> Option<[u8; 16]> {
    let bytes = crate::format::versioned::hex_decode(s)?;
    bytes.try_into().ok()
}

/// Whether `name` is an object name: `/`-separated segments (the S3 and Swift drivers' names
/// have them), none empty, none starting with a dot (nothing that climbs out).
fn object_name_ok(name: &str) -> bool {
    name.len() <= 1024
        && name.split('/').all(|seg| {
            !seg.is_empty()
                && seg.len() <= 255
                && !seg.starts_with('.')
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        })
}

impl CinderManifest {
    /// Parses the manifest stored under `key`.
    pub fn decode(key: &str, bytes: &[u8]) -> Result<CinderManifest> {
        let raw: RawManifest = serde_json::from_slice(bytes)
            .map_err(|e| Error::corrupt(key, 0, format!("not a Cinder backup manifest: {e}")))?;
        if raw.version != CINDER_METADATA_VERSION {
            return Err(Error::Config(format!(
                "'{key}': Cinder backup manifest version '{}' is not supported (this volback \
                 reads {CINDER_METADATA_VERSION})",
                raw.version.escape_debug()
            )));
        }
        let mut objects = Vec::with_capacity(raw.objects.len());
        for (i, entry) in raw.objects.into_iter().enumerate() {
            let bad = |why: String| Error::corrupt(key, 0, format!("object {i}: {why}"));
            if entry.len() != 1 {
                return Err(bad(format!("{} names, not one", entry.len())));
            }
            let Some((name, o)) = entry.into_iter().next() else {
                return Err(bad("no name".into()));
            };
            if !object_name_ok(&name) {
                return Err(bad(format!(
                    "name '{}' is not an object name",
                    name.escape_debug()
                )));
            }
            if o.length == 0 || o.offset.checked_add(o.length).is_none() {
                return Err(bad(format!(
                    "offset {} + length {} is empty or overflows",
                    o.offset, o.length
                )));
            }
            let compression = CinderCompression::parse(o.compression.as_deref())
                .ok_or_else(|| bad(format!("compression {:?} is not known", o.compression)))?;
            let md5 = md5_of_hex(&o.md5).ok_or_else(|| {
                bad(format!(
                    "md5 '{}' is not 32 hex digits",
                    o.md5.escape_debug()
                ))
            })?;
            objects.push(CinderObject {
                name,
                offset: o.offset,
                length: o.length,
                compression,
                md5,
            });
        }
        Ok(CinderManifest {
            backup_id: raw.backup_id,
            volume_id: raw.volume_id,
            parent_id: raw.parent_id,
            created_at: raw.created_at.unwrap_or_default(),
            name: raw.backup_name,
            description: raw.backup_description,
            volume_meta: raw.volume_meta,
            objects,
        })
    }

    /// Where the backup's data ends: the end of its furthest object.
    pub fn data_end(&self) -> u64 {
        self.objects
            .iter()
            .map(|o| o.offset.saturating_add(o.length))
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"backup_id": "b2", "backup_name": null, "created_at": "2026-12-05 10:00:00",
      "objects": [{"volume_v_20261205100000_backup_b2-00001":
        {"compression": "zlib", "length": 65536, "md5": "0123456789abcdef0123456789abcdef", "offset": 1048576}}],
      "parent_id": "b1", "version": "1.0.0", "volume_id": "v", "volume_meta": "{\"version\": 2}"}"#;

    #[test]
    fn manifests_are_read_and_checked() {
        let m = CinderManifest::decode("k", GOOD.as_bytes()).unwrap();
        assert_eq!(m.parent_id.as_deref(), Some("b1"));
        assert_eq!(m.objects[0].compression, CinderCompression::Zlib);
        assert_eq!(m.data_end(), 1048576 + 65536);
        for (from, to, kind) in [
            ("\"1.0.0\"", "\"2.0.0\"", "config"),
            ("\"zlib\"", "\"lzma\"", "corrupt"),
            (
                "\"offset\": 1048576",
                "\"offset\": 18446744073709551615",
                "corrupt",
            ),
            ("volume_v_20261205100000_backup_b2-00001", "../x", "corrupt"),
            ("0123456789abcdef0123456789abcdef", "0123", "corrupt"),
        ] {
            let bad = GOOD.replace(from, to);
            let err = CinderManifest::decode("k", bad.as_bytes()).unwrap_err();
            assert_eq!(err.kind(), kind, "{from} -> {to}: {err}");
        }
    }
}
