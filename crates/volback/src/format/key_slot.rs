//! Key slots (`keys/<slot id>`): an encrypted container's master key, wrapped by one secret.
//!
//! ```json
//! {"format":"volback-key","version":1,"id":"<16 hex>","container_id":"<32 hex>",
//!  "created_at":"…","kdf":"argon2id","params":{"memory_kib":65536,"iterations":3,"parallelism":1},
//!  "salt":"<32 hex>","wrapped":"<120 hex: nonce[12] sealed master key[32] tag[16]>"}
//! ```
//!
//! The key-encryption key is Argon2id(secret, salt) with the slot's parameters; the master key
//! is sealed with it (AES-256-GCM-SIV), the associated data being
//! `volback-key|<container_id>|<slot id>`, so a slot copied from another container, or renamed,
//! does not open. A slot holds nothing that helps without its secret.

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::versioned::{decode_versioned_json, hex_decode, hex_encode};
use crate::clock::now_rfc3339;
use crate::crypto::{KdfParams, SEAL_OVERHEAD, Sealer, random_bytes};
use crate::error::{Error, Result};

/// Key slot format name.
pub const KEY_SLOT_FORMAT: &str = "volback-key";
/// Key slot version written and read by this build.
pub const KEY_SLOT_VERSION: u64 = 1;
/// Prefix of every key slot.
pub const KEYS_PREFIX: &str = "keys/";
const SALT_LEN: usize = 16;

/// Key of slot `id`.
pub fn key_slot_key(id: &str) -> String {
    format!("{KEYS_PREFIX}{id}")
}

/// One wrapped copy of the master key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySlot {
    pub format: String,
    pub version: u64,
    pub id: String,
    pub container_id: String,
    pub created_at: String,
    pub kdf: String,
    pub params: KdfParams,
    pub salt: String,
    pub wrapped: String,
}

fn wrap_aad(container_id: &str, slot: &str) -> Vec<u8> {
    format!("volback-key|{container_id}|{slot}").into_bytes()
}

impl KeySlot {
    /// A new slot of container `container_id` wrapping `master` under `secret`.
    pub fn new(
        container_id: &str,
        master: &[u8; 32],
        secret: &[u8],
        params: KdfParams,
    ) -> Result<KeySlot> {
        let mut id = [0u8; 8];
        random_bytes(&mut id);
        let id = hex_encode(&id);
        let mut salt = [0u8; SALT_LEN];
        random_bytes(&mut salt);
        let kek = params.derive(&key_slot_key(&id), secret, &salt)?;
        let wrapped = Sealer::new(&kek).seal(&wrap_aad(container_id, &id), master);
        Ok(KeySlot {
            format: KEY_SLOT_FORMAT.into(),
            version: KEY_SLOT_VERSION,
            id,
            container_id: container_id.into(),
            created_at: now_rfc3339(),
            kdf: "argon2id".into(),
            params,
            salt: hex_encode(&salt),
            wrapped: hex_encode(&wrapped),
        })
    }

    /// Parses the slot stored under `key`, checking every field a reader acts on.
    pub fn decode(key: &str, bytes: &[u8]) -> Result<KeySlot> {
        let slot: KeySlot =
            decode_versioned_json(key, bytes, "key slot", KEY_SLOT_FORMAT, KEY_SLOT_VERSION)?;
        if key_slot_key(&slot.id) != key {
            return Err(Error::corrupt(key, 0, "key slot's id is not its name"));
        }
        if slot.kdf != "argon2id" {
            return Err(Error::corrupt(
                key,
                0,
                format!("unknown key derivation '{}'", slot.kdf.escape_debug()),
            ));
        }
        slot.params.check(key)?;
        let salt_ok = hex_decode(&slot.salt).is_some_and(|s| s.len() == SALT_LEN);
        let wrapped_ok = hex_decode(&slot.wrapped).is_some_and(|w| w.len() == 32 + SEAL_OVERHEAD);
        if !salt_ok || !wrapped_ok {
            return Err(Error::corrupt(
                key,
                0,
                "key slot's salt or wrapped key is malformed",
            ));
        }
        Ok(slot)
    }

    /// The stored form (pretty JSON).
    pub fn encode(&self) -> Result<Vec<u8>> {
        super::versioned::encode_json("key slot", self, true)
    }

    /// The master key if `secret` opens this slot of container `container_id`; `None` if it
    /// does not (a wrong secret, or a slot of another container).
    pub fn unwrap_master(
        &self,
        container_id: &str,
        secret: &[u8],
    ) -> Result<Option<Zeroizing<[u8; 32]>>> {
        let key = key_slot_key(&self.id);
        let malformed = || Error::corrupt(&key, 0, "key slot's salt or wrapped key is malformed");
        let salt = hex_decode(&self.salt).ok_or_else(malformed)?;
        let wrapped = hex_decode(&self.wrapped).ok_or_else(malformed)?;
        let kek = self.params.derive(&key, secret, &salt)?;
        let mut master = Zeroizing::new([0u8; 32]);
        let ok = Sealer::new(&kek).open_into(
            &wrap_aad(container_id, &self.id),
            &wrapped,
            master.as_mut(),
        );
        Ok(ok.then_some(master))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_for_one_secret_and_one_container() {
        let p = KdfParams::insecure_for_tests();
        let slot = KeySlot::new("c1", &[9; 32], b"pw", p).unwrap();
        let key = key_slot_key(&slot.id);
        let back = KeySlot::decode(&key, &slot.encode().unwrap()).unwrap();
        assert_eq!(*back.unwrap_master("c1", b"pw").unwrap().unwrap(), [9; 32]);
        assert!(back.unwrap_master("c1", b"pW").unwrap().is_none());
        assert!(back.unwrap_master("c2", b"pw").unwrap().is_none());
        assert_eq!(
            KeySlot::decode("keys/other", &slot.encode().unwrap())
                .unwrap_err()
                .kind(),
            "corrupt"
        );
        let mut greedy = slot.clone();
        greedy.params.memory_kib = u32::MAX;
        assert_eq!(
            KeySlot::decode(&key, &greedy.encode().unwrap())
                .unwrap_err()
                .kind(),
            "corrupt"
        );
    }
}
