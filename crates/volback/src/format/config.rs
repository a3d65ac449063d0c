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
/// Config version of a container with Object Lock: version 1 plus `object_lock`. A build that
/// does not know it must not open such a container (its deletes would only hide objects).
pub const LOCKED_CONFIG_VERSION: u64 = 3;
/// Longest Object Lock retention a container may ask for (100 years).
pub const MAX_LOCK_DAYS: u32 = 36_500;

/// S3 Object Lock retention for everything a committed backup needs: its manifest, the packs
/// holding its chunks, the config and the key slots. Each is kept from deletion for `days`
/// after the last backup that needs it was committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectLock {
    pub mode: crate::store::s3_lock::LockMode,
    pub days: u32,
}

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
    /// Object Lock retention (config version 3); `None` in version 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_lock: Option<ObjectLock>,
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
            object_lock: None,
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
        if let Some(lock) = self.object_lock
            && !(1..=MAX_LOCK_DAYS).contains(&lock.days)
        {
            return Err(Error::Config(format!(
                "Object Lock retention of {} days must be 1 to {MAX_LOCK_DAYS} days",
                lock.days
            )));
        }
        let want = self.stored_version();
        if self.version != want {
            return Err(Error::corrupt(
                super::keys::CONFIG_KEY,
                0,
                format!(
                    "config version {} {} Object Lock settings",
                    self.version,
                    if want == CONFIG_VERSION {
                        "has"
                    } else {
                        "lacks"
                    }
                ),
            ));
        }
        Ok(())
    }

    /// The version these settings are stored with: [`LOCKED_CONFIG_VERSION`] with Object Lock,
    /// else [`CONFIG_VERSION`].
    pub fn stored_version(&self) -> u64 {
        match self.object_lock {
            Some(_) => LOCKED_CONFIG_VERSION,
            None => CONFIG_VERSION,
        }
    }

    /// Parses the `config` object, rejecting other formats and versions by name.
    pub fn decode(bytes: &[u8]) -> Result<ContainerConfig> {
        let version = match stored_version(bytes) {
            Some(LOCKED_CONFIG_VERSION) => LOCKED_CONFIG_VERSION,
            _ => CONFIG_VERSION,
        };
        let cfg: ContainerConfig = decode_versioned_json(
            super::keys::CONFIG_KEY,
            bytes,
            "container config",
            CONFIG_FORMAT,
            version,
        )?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The stored form (pretty JSON, as `config` has always been written).
    pub fn encode(&self) -> Result<Vec<u8>> {
        super::versioned::encode_json("container config", self, true)
    }
}

/// The `version` field of a stored config, if it parses that far.
fn stored_version(bytes: &[u8]) -> Option<u64> {
    #[derive(Deserialize)]
    struct Head {
        version: Option<u64>,
    }
    serde_json::from_slice::<Head>(bytes)
        .ok()
        .and_then(|h| h.version)
}

/// Config version of an encrypted container: the settings above are sealed inside it.
pub const ENCRYPTED_CONFIG_VERSION: u64 = 2;
/// The cipher name an encrypted config carries.
pub const CIPHER_NAME: &str = "aes-256-gcm-siv";

/// The `config` of an encrypted container: what is needed to find and use its keys, and the
/// container's settings ([`ContainerConfig`], as version 1 stores them) sealed under the name
/// `config/<container_id>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptedConfig {
    pub format: String,
    pub version: u64,
    /// 32 hex digits, random: binds key slots and the sealed settings to this container.
    pub container_id: String,
    pub cipher: String,
    pub created_at: String,
    /// Hex of the sealed settings (a `sealed` object).
    pub sealed: String,
}

/// A `config` object as stored: a plaintext container's settings, or an encrypted one's.
#[derive(Debug, Clone)]
pub enum StoredConfig {
    Plain(ContainerConfig),
    Encrypted(EncryptedConfig),
}

impl StoredConfig {
    /// Parses `config`, whichever version this build reads.
    pub fn decode(bytes: &[u8]) -> Result<StoredConfig> {
        if stored_version(bytes) != Some(ENCRYPTED_CONFIG_VERSION) {
            return ContainerConfig::decode(bytes).map(StoredConfig::Plain);
        }
        let c: EncryptedConfig = decode_versioned_json(
            super::keys::CONFIG_KEY,
            bytes,
            "container config",
            CONFIG_FORMAT,
            ENCRYPTED_CONFIG_VERSION,
        )?;
        if c.cipher != CIPHER_NAME {
            return Err(Error::Config(format!(
                "container cipher '{}' is not supported (this volback knows {CIPHER_NAME})",
                c.cipher.escape_debug()
            )));
        }
        if c.container_id.len() != 32 || super::versioned::hex_decode(&c.container_id).is_none() {
            return Err(Error::corrupt(
                super::keys::CONFIG_KEY,
                0,
                "container id is not 32 hex digits",
            ));
        }
        Ok(StoredConfig::Encrypted(c))
    }
}

impl EncryptedConfig {
    fn sealed_name(container_id: &str) -> String {
        format!("config/{container_id}")
    }

    /// A new encrypted container's config with `settings` sealed by `sealer`.
    pub fn seal(
        settings: &ContainerConfig,
        sealer: &crate::crypto::Sealer,
        container_id: String,
    ) -> Result<EncryptedConfig> {
        let plain = settings.encode()?;
        let sealed = super::sealed::seal_object(sealer, &Self::sealed_name(&container_id), &plain);
        Ok(EncryptedConfig {
            format: CONFIG_FORMAT.into(),
            version: ENCRYPTED_CONFIG_VERSION,
            container_id,
            cipher: CIPHER_NAME.into(),
            created_at: settings.created_at.clone(),
            sealed: super::versioned::hex_encode(&sealed),
        })
    }

    /// The sealed settings, opened with `sealer` and checked.
    pub fn open(&self, sealer: &crate::crypto::Sealer) -> Result<ContainerConfig> {
        let key = super::keys::CONFIG_KEY;
        let sealed = super::versioned::hex_decode(&self.sealed)
            .ok_or_else(|| Error::corrupt(key, 0, "sealed settings are not hex"))?;
        let plain = super::sealed::open_object(
            sealer,
            key,
            &Self::sealed_name(&self.container_id),
            &sealed,
        )?;
        ContainerConfig::decode(&plain)
    }

    /// The stored form (pretty JSON).
    pub fn encode(&self) -> Result<Vec<u8>> {
        super::versioned::encode_json("container config", self, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::s3_lock::LockMode;

    /// Object Lock settings are stored as version 3, which a build that does not know them
    /// refuses; a version that does not match the settings is refused too.
    #[test]
    fn object_lock_settings_are_version_3_and_checked() {
        let mut cfg = ContainerConfig {
            object_lock: Some(ObjectLock {
                mode: LockMode::Compliance,
                days: 30,
            }),
            ..Default::default()
        };
        cfg.version = cfg.stored_version();
        let bytes = cfg.encode().unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(
            text.contains("\"version\": 3") && text.contains("\"compliance\""),
            "{text}"
        );
        assert_eq!(ContainerConfig::decode(&bytes).unwrap(), cfg);
        let v1_with_lock = text.replace("\"version\": 3", "\"version\": 1");
        assert_eq!(
            ContainerConfig::decode(v1_with_lock.as_bytes())
                .unwrap_err()
                .kind(),
            "corrupt"
        );
        let plain = ContainerConfig::default().encode().unwrap();
        let v3_without = String::from_utf8(plain)
            .unwrap()
            .replace("\"version\": 1", "\"version\": 3");
        assert_eq!(
            ContainerConfig::decode(v3_without.as_bytes())
                .unwrap_err()
                .kind(),
            "corrupt"
        );
        for days in [0, MAX_LOCK_DAYS + 1] {
            cfg.object_lock = Some(ObjectLock {
                mode: LockMode::Governance,
                days,
            });
            assert_eq!(cfg.validate().unwrap_err().kind(), "config", "{days}");
        }
        assert!(LockMode::parse("legal-hold").is_err());
        assert_eq!(LockMode::parse("GOVERNANCE").unwrap(), LockMode::Governance);
    }
}
