//! Condemnation records (`gc/condemned-<unix time>-<uuid>`): packs the garbage collector proposes
//! to delete. Writers read them before deduplicating and skip the packs they name; the collector
//! deletes the packs only once no lease that may predate the record is alive.

use serde::{Deserialize, Serialize};

use super::versioned::decode_versioned_json;
use crate::error::{Error, Result};
use crate::ids::Hash;

/// Condemnation record format name.
pub const CONDEMNED_FORMAT: &str = "volback-condemned";
/// Condemnation record version written and read by this build.
pub const CONDEMNED_VERSION: u64 = 1;

/// A condemnation record: packs the collector proposes to delete.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Condemnation {
    pub format: String,
    pub version: u64,
    /// When the record was written, by the collector's clock.
    pub created_unix: u64,
    pub created_at: String,
    pub host: String,
    /// Pack ids (hex).
    pub packs: Vec<String>,
}

impl Condemnation {
    /// Decodes a record, checking its format, version and pack ids.
    pub fn decode(key: &str, bytes: &[u8]) -> Result<Self> {
        let c: Condemnation = decode_versioned_json(
            key,
            bytes,
            "condemnation record",
            CONDEMNED_FORMAT,
            CONDEMNED_VERSION,
        )?;
        if let Some(bad) = c.packs.iter().find(|p| Hash::from_hex(p).is_none()) {
            return Err(Error::corrupt(key, 0, format!("'{bad}' is not a pack id")));
        }
        Ok(c)
    }

    /// The condemned pack ids.
    pub fn pack_ids(&self) -> impl Iterator<Item = Hash> + '_ {
        self.packs.iter().filter_map(|p| Hash::from_hex(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_versions_and_bad_pack_ids_are_refused() {
        let ok = br#"{"format":"volback-condemned","version":1,"created_unix":1,"created_at":"x","host":"h","packs":[]}"#;
        assert!(Condemnation::decode("k", ok).is_ok());
        let v2 = String::from_utf8_lossy(ok).replace("\"version\":1", "\"version\":2");
        assert!(matches!(
            Condemnation::decode("k", v2.as_bytes()),
            Err(Error::UnsupportedVersion { found: 2, .. })
        ));
        let bad = String::from_utf8_lossy(ok).replace("[]", "[\"zz\"]");
        assert!(matches!(
            Condemnation::decode("k", bad.as_bytes()),
            Err(Error::Corrupt { .. })
        ));
    }
}
