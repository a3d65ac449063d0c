//! The container config (`config`): chunker parameters, pack size and zstd level, fixed when the
//! container is created so that every backup in it chunks identically.

use serde::{Deserialize, Serialize};

use super::versioned::decode_versioned_json;
use crate::chunker::ChunkerParams;
use crate::clock::now_rfc3339;
use crate::error::{Error, Result};

/// Container config format name and version.
pub const CONFIG_FORMAT: &str = "volback-container";
/// Container config version written and read by this build.
pub const CONFIG_VERSION: u64 = 1;

/// Per-container settings, fixed when the container is created so that every backup in it
/// chunks identically (the precondition for dedup across backups and volumes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerConfig {
    pub format: String,
    pub version: u64,
    pub chunker: ChunkerParams,
    /// Packs are closed once they reach this many bytes.
    pub pack_target: u64,
    /// Default zstd level for new chunks (a backup may override; readers need no level).
    pub zstd_level: i32,
    pub created_at: String,
}

impl Default for ContainerConfig {
    fn default() -> Self {
        ContainerConfig {
            format: CONFIG_FORMAT.into(),
            version: CONFIG_VERSION,
            chunker: ChunkerParams::default(),
            pack_target: 32 << 20,
            zstd_level: 1,
            created_at: now_rfc3339(),
        }
    }
}

impl ContainerConfig {
    /// Checks every setting against what readers and writers support.
    pub fn validate(&self) -> Result<()> {
        self.chunker.validate().map_err(Error::Config)?;
        if self.pack_target < 1 << 20 || self.pack_target > super::pack::MAX_PACK_SIZE / 2 {
            return Err(Error::Config(format!(
                "pack target {} must be between 1 MiB and 512 MiB",
                self.pack_target
            )));
        }
        if !super::chunk::valid_zstd_level(self.zstd_level) {
            return Err(Error::Config(format!(
                "zstd level {} must be -7..=-1 or 1..=22",
                self.zstd_level
            )));
        }
        Ok(())
    }

    /// Parses the `config` object, rejecting other formats and versions by name.
    pub fn decode(bytes: &[u8]) -> Result<ContainerConfig> {
        let cfg: ContainerConfig = decode_versioned_json(
            super::keys::CONFIG_KEY,
            bytes,
            "container config",
            CONFIG_FORMAT,
            CONFIG_VERSION,
        )?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The stored form (pretty JSON, as `config` has always been written).
    pub fn encode(&self) -> Result<Vec<u8>> {
        super::versioned::encode_json("container config", self, true)
    }
}
