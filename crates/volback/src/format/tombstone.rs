//! Tombstones (`deleted/<backup id>`): written before a backup's manifest is removed, so that a
//! reader can tell a deleted backup from one that never existed.

use serde::{Deserialize, Serialize};

/// Tombstone format name.
pub const TOMBSTONE_FORMAT: &str = "volback-tombstone";
/// Tombstone version written by this build.
pub const TOMBSTONE_VERSION: u64 = 1;

/// A deleted backup's tombstone. Readers only test for its presence; its fields are for people.
/// (Fields in this order: the stored JSON has its keys sorted.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tombstone {
    pub backup_id: String,
    /// RFC 3339, UTC.
    pub deleted_at: String,
    pub format: String,
    pub version: u64,
    pub volume_id: String,
}

impl Tombstone {
    /// A tombstone for `backup_id` of `volume_id`, deleted at `deleted_at`.
    pub fn new(backup_id: &str, volume_id: &str, deleted_at: String) -> Self {
        Tombstone {
            backup_id: backup_id.into(),
            deleted_at,
            format: TOMBSTONE_FORMAT.into(),
            version: TOMBSTONE_VERSION,
            volume_id: volume_id.into(),
        }
    }

    /// The stored form (compact JSON).
    pub fn encode(&self) -> crate::error::Result<Vec<u8>> {
        super::versioned::encode_json("tombstone", self, false)
    }
}
