//! Condemnation records (`gc/condemned-<unix time>-<uuid>`): packs the garbage collector proposes
//! to delete. Writers read them before deduplicating and skip the packs they name; the collector
//! deletes the packs only once no lease that may predate the record is alive.
//!
//! Version 2 also lists the *exposed* chunks: those the condemned packs hold and the collector did
//! not copy into a new pack. An incremental that deduplicates against its parent's chunks
//! without reading the index (`backup/parent_scope.rs`) stores those again rather than rely on
//! them. Version 1 records (no such list) are still read: a writer that sees one reads the index.

use serde::{Deserialize, Serialize};

use super::versioned::{decode_versioned_json, hex_decode, hex_encode};
use crate::error::{Error, Result};
use crate::ids::Hash;

/// Condemnation record format name.
pub const CONDEMNED_FORMAT: &str = "volback-condemned";
/// Condemnation record version written by this build (it also reads version 1).
pub const CONDEMNED_VERSION: u64 = 2;
/// Bytes of a chunk id kept in the exposed list: a false match only makes a writer store a
/// chunk again, never rely on one it should not.
pub const EXPOSED_PREFIX_LEN: usize = 8;

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
    /// Version 2: the first [`EXPOSED_PREFIX_LEN`] bytes of the id of every chunk the packs hold
    /// that the collector did not copy into a new pack, sorted, concatenated, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposed: Option<String>,
}

impl Condemnation {
    /// Decodes a record, checking its format, version and pack ids.
    pub fn decode(key: &str, bytes: &[u8]) -> Result<Self> {
        // Version 1 is read too: the version field decides which is expected.
        let version = serde_json::from_slice::<serde_json::Value>(bytes)
            .ok()
            .and_then(|v| v.get("version").and_then(|x| x.as_u64()))
            .filter(|v| *v == 1)
            .unwrap_or(CONDEMNED_VERSION);
        let c: Condemnation =
            decode_versioned_json(key, bytes, "condemnation record", CONDEMNED_FORMAT, version)?;
        if let Some(bad) = c.packs.iter().find(|p| Hash::from_hex(p).is_none()) {
            return Err(Error::corrupt(key, 0, format!("'{bad}' is not a pack id")));
        }
        match (&c.exposed, version) {
            (None, 1) => {}
            (Some(x), 2) if x.len() % (2 * EXPOSED_PREFIX_LEN) == 0 && hex_decode(x).is_some() => {}
            _ => {
                return Err(Error::corrupt(
                    key,
                    0,
                    "the exposed chunk list does not match the record's version",
                ));
            }
        }
        Ok(c)
    }

    /// The exposed chunk prefixes (version 2), sorted; `None` for a version 1 record.
    pub fn exposed_prefixes(&self) -> Option<Vec<u64>> {
        let bytes = hex_decode(self.exposed.as_deref()?)?;
        let mut v: Vec<u64> = bytes
            .chunks_exact(EXPOSED_PREFIX_LEN)
            .map(|c| u64::from_be_bytes(c.try_into().unwrap_or_default()))
            .collect();
        v.sort_unstable();
        Some(v)
    }

    /// The prefix of `id` kept in the exposed list.
    pub fn exposed_prefix(id: &Hash) -> u64 {
        let mut b = [0u8; EXPOSED_PREFIX_LEN];
        b.copy_from_slice(&id.0[..EXPOSED_PREFIX_LEN]);
        u64::from_be_bytes(b)
    }

    /// The `exposed` field for `ids`.
    pub fn encode_exposed(ids: impl Iterator<Item = Hash>) -> String {
        let mut v: Vec<u64> = ids.map(|id| Self::exposed_prefix(&id)).collect();
        v.sort_unstable();
        v.dedup();
        let bytes: Vec<u8> = v.iter().flat_map(|p| p.to_be_bytes()).collect();
        hex_encode(&bytes)
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
        assert!(
            Condemnation::decode("k", ok)
                .unwrap()
                .exposed_prefixes()
                .is_none()
        );
        let v3 = String::from_utf8_lossy(ok).replace("\"version\":1", "\"version\":3");
        assert!(matches!(
            Condemnation::decode("k", v3.as_bytes()),
            Err(Error::UnsupportedVersion { found: 3, .. })
        ));
        // Version 2 needs its exposed list, version 1 must not have one.
        let v2 = String::from_utf8_lossy(ok).replace("\"version\":1", "\"version\":2");
        assert!(matches!(
            Condemnation::decode("k", v2.as_bytes()),
            Err(Error::Corrupt { .. })
        ));
        let ids = [Hash::of(b"b"), Hash::of(b"a"), Hash::of(b"a")];
        let exposed = Condemnation::encode_exposed(ids.into_iter());
        let with = v2.replace("[]}", &format!("[],\"exposed\":\"{exposed}\"}}"));
        let c = Condemnation::decode("k", with.as_bytes()).unwrap();
        let mut want: Vec<u64> = ids[..2].iter().map(Condemnation::exposed_prefix).collect();
        want.sort_unstable();
        assert_eq!(c.exposed_prefixes().unwrap(), want);
        let v1_with = String::from_utf8_lossy(ok).replace("[]}", "[],\"exposed\":\"\"}");
        assert!(matches!(
            Condemnation::decode("k", v1_with.as_bytes()),
            Err(Error::Corrupt { .. })
        ));
        let odd = with.replace(&exposed, &exposed[1..]);
        assert!(matches!(
            Condemnation::decode("k", odd.as_bytes()),
            Err(Error::Corrupt { .. })
        ));
        let bad = String::from_utf8_lossy(ok).replace("[]", "[\"zz\"]");
        assert!(matches!(
            Condemnation::decode("k", bad.as_bytes()),
            Err(Error::Corrupt { .. })
        ));
    }
}
