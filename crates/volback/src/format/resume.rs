//! Resume hints (`resume/<hash of the volume id>`, [`super::keys::resume_key`]): the index segments an incremental of that volume has
//! written so far. An incremental does not list the container's packs (`backup/parent_scope.rs`),
//! so without this an interrupted one, run again, would not find what it had uploaded. The
//! object is rewritten after each index segment (every 64 packs) and deleted once a backup of
//! the volume commits; a reader checks that each pack still exists and is not condemned before
//! relying on it, so a stale or damaged hint costs requests, never data.

use serde::{Deserialize, Serialize};

use super::versioned::decode_versioned_json;
use crate::error::{Error, Result};

/// Resume hint format name.
pub const RESUME_FORMAT: &str = "volback-resume";
/// Resume hint version written and read by this build.
pub const RESUME_VERSION: u64 = 1;

/// The index segments an unfinished incremental wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resume {
    pub format: String,
    pub version: u64,
    /// The backup that wrote them.
    pub backup_id: String,
    /// Keys of its index segments (`index/<blake3>`), in the order written.
    pub segments: Vec<String>,
}

impl Resume {
    /// A hint for `backup_id` naming `segments`.
    pub fn new(backup_id: &str, segments: Vec<String>) -> Self {
        Resume {
            format: RESUME_FORMAT.into(),
            version: RESUME_VERSION,
            backup_id: backup_id.into(),
            segments,
        }
    }

    /// The stored form (compact JSON).
    pub fn encode(&self) -> Result<Vec<u8>> {
        super::versioned::encode_json("resume hint", self, false)
    }

    /// Decodes the hint stored under `key`; a segment key that is not an index segment's is
    /// refused.
    pub fn decode(key: &str, bytes: &[u8]) -> Result<Self> {
        let r: Resume =
            decode_versioned_json(key, bytes, "resume hint", RESUME_FORMAT, RESUME_VERSION)?;
        let is_segment = |k: &String| {
            k.strip_prefix(super::keys::INDEX_PREFIX)
                .and_then(crate::ids::Hash::from_hex)
                .is_some()
        };
        if let Some(bad) = r.segments.iter().find(|k| !is_segment(k)) {
            return Err(Error::corrupt(
                key,
                0,
                format!("'{bad}' is not an index segment key"),
            ));
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_round_trip_and_bad_ones_are_refused() {
        let seg = format!("index/{}", crate::ids::Hash::of(b"s").to_hex());
        let r = Resume::new("b1", vec![seg]);
        let bytes = r.encode().unwrap();
        assert_eq!(Resume::decode("resume/v", &bytes).unwrap(), r);
        let other = String::from_utf8(bytes).unwrap();
        let bad = other.replace("index/", "packs/");
        assert!(matches!(
            Resume::decode("resume/v", bad.as_bytes()),
            Err(Error::Corrupt { .. })
        ));
        let v2 = other.replace("\"version\":1", "\"version\":2");
        assert!(matches!(
            Resume::decode("resume/v", v2.as_bytes()),
            Err(Error::UnsupportedVersion { found: 2, .. })
        ));
    }
}
