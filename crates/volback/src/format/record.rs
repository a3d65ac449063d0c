//! Exported backup records: everything a fresh process on another host needs to find, check and
//! restore a backup, as self-describing text.
//!
//! A record is a JSON object (format `volback-record`, version 1) with the container URL, the
//! manifest's key, size and BLAKE3, and the backup's fields as a block-storage service keeps them.
//! It never holds credentials. `import_record` trusts nothing in it: it parses strictly, checks
//! the version, validates every id, and compares the manifest in the container byte-for-byte (by
//! BLAKE3) with the one the record was exported from.

use serde::{Deserialize, Serialize};

use crate::error::{RecordError, Result};
use crate::ids::validate_id;

/// Record format name.
pub const RECORD_FORMAT: &str = "volback-record";
/// Record version written and read by this build.
pub const RECORD_VERSION: u64 = 1;
/// Records larger than this are refused before parsing.
pub const MAX_RECORD_LEN: usize = 1 << 20;

/// A backup as the calling service records it (Cinder's backup object, the fields a driver
/// reads and writes).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct BackupRecord {
    pub id: String,
    pub volume_id: String,
    /// Container URL; None means the driver's default container.
    pub container: Option<String>,
    pub parent_id: Option<String>,
    /// Volume size in bytes.
    pub size: u64,
    /// Objects the backup wrote.
    pub object_count: u64,
    /// Driver-private locator (the manifest key).
    pub service_metadata: Option<String>,
    pub data_timestamp: Option<String>,
}

/// The exported record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportedRecord {
    pub format: String,
    pub version: u64,
    pub container: String,
    pub manifest_key: String,
    pub manifest_size: u64,
    pub manifest_blake3: String,
    pub backup: BackupRecord,
}

impl ExportedRecord {
    /// The record as pretty JSON text.
    pub fn to_text(&self) -> Result<String> {
        let bytes = super::versioned::encode_json("backup record", self, true)?;
        let mut s = String::from_utf8(bytes).map_err(|e| {
            crate::error::Error::Internal(format!("backup record is not UTF-8: {e}"))
        })?;
        s.push('\n');
        Ok(s)
    }

    /// Parses and validates record text. Fails with a distinct [`RecordError`] for malformed
    /// text and for an unknown version.
    pub fn parse(text: &str) -> Result<ExportedRecord> {
        if text.len() > MAX_RECORD_LEN {
            return Err(RecordError::Malformed(format!(
                "record is {} bytes, limit {MAX_RECORD_LEN}",
                text.len()
            ))
            .into());
        }
        let v: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| RecordError::Malformed(format!("not JSON: {e}")))?;
        if !v.is_object() {
            return Err(RecordError::Malformed("not a JSON object".into()).into());
        }
        if v.get("format").and_then(|f| f.as_str()) != Some(RECORD_FORMAT) {
            return Err(
                RecordError::Malformed(format!("format field is not '{RECORD_FORMAT}'")).into(),
            );
        }
        let version = v
            .get("version")
            .and_then(|x| x.as_u64())
            .ok_or_else(|| RecordError::Malformed("version missing or not a number".into()))?;
        if version != RECORD_VERSION {
            return Err(RecordError::UnknownVersion {
                found: version,
                supported: RECORD_VERSION,
            }
            .into());
        }
        let r: ExportedRecord = serde_json::from_value(v)
            .map_err(|e| RecordError::Malformed(format!("fields: {e}")))?;
        let check = |what, id: &str| {
            validate_id(what, id).map_err(|e| RecordError::Malformed(e.to_string()))
        };
        check("backup id", &r.backup.id)?;
        check("volume id", &r.backup.volume_id)?;
        if let Some(p) = &r.backup.parent_id {
            check("parent id", p)?;
        }
        if r.manifest_key != super::keys::manifest_key(&r.backup.id) {
            return Err(RecordError::Malformed(format!(
                "manifest key '{}' does not belong to backup '{}'",
                r.manifest_key.escape_debug(),
                r.backup.id
            ))
            .into());
        }
        if crate::ids::Hash::from_hex(&r.manifest_blake3).is_none() {
            return Err(
                RecordError::Malformed("manifest_blake3 is not 64 hex digits".into()).into(),
            );
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    fn sample() -> ExportedRecord {
        ExportedRecord {
            format: RECORD_FORMAT.into(),
            version: RECORD_VERSION,
            container: "file:///c".into(),
            manifest_key: "backups/b1".into(),
            manifest_size: 100,
            manifest_blake3: crate::ids::Hash::of(b"m").to_hex(),
            backup: BackupRecord {
                id: "b1".into(),
                volume_id: "v".into(),
                ..Default::default()
            },
        }
    }

    #[test]
    fn round_trip_and_refusals() {
        let r = sample();
        assert_eq!(ExportedRecord::parse(&r.to_text().unwrap()).unwrap(), r);
        let kind = |t: &str| ExportedRecord::parse(t).unwrap_err().kind();
        assert_eq!(kind("garbage"), "record_malformed");
        assert_eq!(kind("[]"), "record_malformed");
        assert_eq!(kind(""), "record_malformed");
        assert_eq!(
            kind(
                &r.to_text()
                    .unwrap()
                    .replace("\"version\": 1", "\"version\": 99")
            ),
            "record_unknown_version"
        );
        assert_eq!(
            kind(
                &r.to_text()
                    .unwrap()
                    .replace("backups/b1", "backups/../../etc")
            ),
            "record_malformed"
        );
        assert_eq!(
            kind(&r.to_text().unwrap().replace("\"b1\"", "\"../b1\"")),
            "record_malformed"
        );
        let big = "x".repeat(MAX_RECORD_LEN + 1);
        assert!(matches!(
            ExportedRecord::parse(&big),
            Err(Error::Record(RecordError::Malformed(_)))
        ));
    }
}
