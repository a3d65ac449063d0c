//! Leases (`leases/<backup id>-<uuid>`): a running backup, restore or verify announces itself to
//! the garbage collector, which waits for every lease older than its condemnation record.

use serde::{Deserialize, Serialize};

/// Lease format name.
pub const LEASE_FORMAT: &str = "volback-lease";
/// Lease version written by this build.
pub const LEASE_VERSION: u64 = 1;

/// A writer lease (see the GC protocol in the crate docs).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Lease {
    pub format: String,
    pub version: u64,
    pub backup_id: String,
    pub host: String,
    pub pid: u32,
    pub started_unix: u64,
    pub expires_unix: u64,
}

impl Lease {
    /// The stored form (compact JSON).
    pub fn encode(&self) -> crate::error::Result<Vec<u8>> {
        super::versioned::encode_json("lease", self, false)
    }

    /// Parses a stored lease; `None` if it does not parse (a lease is advisory: the collector
    /// skips a torn one).
    pub fn decode(bytes: &[u8]) -> Option<Lease> {
        serde_json::from_slice(bytes).ok()
    }
}
