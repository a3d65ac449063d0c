//! Key slots (`keys/<slot id>`): an encrypted container's master key, wrapped by one secret.
//!
//! ```json
//! {"format":"volback-key","version":1,"id":"<16 hex>","container_id":"<32 hex>",
//!  "created_at":"…","kdf":"argon2id","params":{"memory_kib":65536,"iterations":3,"parallelism":1},
//!  "salt":"<32 hex>","wrapped":"<120 hex: nonce[12] sealed master key[32] tag[16]>"}
//! ```
//!
//! The key-encryption key is Argon2id(secret, salt) with the slot's parameters (`kdf`
//! `"argon2id"`), or, when the secret is a 256-bit key written as 64 hex digits (what
//! `openssl rand -hex 32` and key managers hand out), BLAKE3 `derive_key` over salt and key
//! (`kdf` `"key256"`, no `params`): a random 256-bit key needs no stretching, and skipping it
//! saves every open the derivation's 0.14 s and 64 MiB. The master key is sealed with the
//! key-encryption key (AES-256-GCM-SIV), the associated data being
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
    /// `"argon2id"` (a passphrase) or `"key256"` (a 256-bit key).
    pub kdf: String,
    /// Argon2id's cost (`argon2id` slots only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<KdfParams>,
    pub salt: String,
    pub wrapped: String,
}

fn wrap_aad(container_id: &str, slot: &str) -> Vec<u8> {
    format!("volback-key|{container_id}|{slot}").into_bytes()
}

/// Key derivation of slots whose secret is a passphrase.
pub const KDF_ARGON2ID: &str = "argon2id";
/// Key derivation of slots whose secret is a 256-bit key.
pub const KDF_KEY256: &str = "key256";
const KEY256_CONTEXT: &str = "volback 2026-12 key slot from a 256-bit key";

/// The 256-bit key a secret of exactly 64 hex digits is.
pub fn key256(secret: &[u8]) -> Option<Zeroizing<[u8; 32]>> {
    if secret.len() != 64 {
        return None;
    }
    let bytes = Zeroizing::new(hex_decode(std::str::from_utf8(secret).ok()?)?);
    let mut key = Zeroizing::new([0u8; 32]);
    key.copy_from_slice(&bytes);
    Some(key)
}

fn key256_kek(key: &[u8; 32], salt: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut input = Zeroizing::new(salt.to_vec());
    input.extend_from_slice(key);
    Zeroizing::new(blake3::derive_key(KEY256_CONTEXT, &input))
}

impl KeySlot {
    /// A new slot of container `container_id` wrapping `master` under `secret`: a `key256` slot
    /// if the secret is 64 hex digits, else an Argon2id slot with cost `params`.
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
        let (kdf, params, kek) = match key256(secret) {
            Some(k) => (KDF_KEY256, None, key256_kek(&k, &salt)),
            None => (
                KDF_ARGON2ID,
                Some(params),
                params.derive(&key_slot_key(&id), secret, &salt)?,
            ),
        };
        let wrapped = Sealer::new(&kek).seal(&wrap_aad(container_id, &id), master);
        Ok(KeySlot {
            format: KEY_SLOT_FORMAT.into(),
            version: KEY_SLOT_VERSION,
            id,
            container_id: container_id.into(),
            created_at: now_rfc3339(),
            kdf: kdf.into(),
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
        match (slot.kdf.as_str(), &slot.params) {
            (KDF_ARGON2ID, Some(p)) => p.check(key)?,
            (KDF_KEY256, None) => {}
            _ => {
                return Err(Error::corrupt(
                    key,
                    0,
                    format!(
                        "unknown key derivation '{}' (or parameters that do not go with it)",
                        slot.kdf.escape_debug()
                    ),
                ));
            }
        }
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

    /// True if trying a secret on this slot costs no key stretching.
    pub fn is_cheap(&self) -> bool {
        self.kdf == KDF_KEY256
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
        let kek = match (self.kdf.as_str(), &self.params) {
            (KDF_ARGON2ID, Some(p)) => p.derive(&key, secret, &salt)?,
            (KDF_KEY256, None) => match key256(secret) {
                Some(k) => key256_kek(&k, &salt),
                None => return Ok(None), // a passphrase cannot open a key's slot
            },
            _ => return Err(malformed()),
        };
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
        greedy.params = Some(KdfParams {
            memory_kib: u32::MAX,
            ..p
        });
        assert_eq!(
            KeySlot::decode(&key, &greedy.encode().unwrap())
                .unwrap_err()
                .kind(),
            "corrupt"
        );
    }

    #[test]
    fn a_256_bit_key_is_not_stretched() {
        let hex = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        let slot = KeySlot::new("c1", &[5; 32], hex.as_bytes(), KdfParams::default()).unwrap();
        assert_eq!((slot.kdf.as_str(), slot.params), (KDF_KEY256, None));
        let t = std::time::Instant::now();
        let upper = hex.to_uppercase();
        assert_eq!(
            *slot.unwrap_master("c1", upper.as_bytes()).unwrap().unwrap(),
            [5; 32]
        );
        assert!(
            slot.unwrap_master("c1", &hex.as_bytes()[1..])
                .unwrap()
                .is_none()
        );
        assert!(t.elapsed().as_millis() < 50, "no Argon2id");
        let pass = KeySlot::new(
            "c1",
            &[5; 32],
            b"a passphrase",
            KdfParams::insecure_for_tests(),
        );
        assert_eq!(pass.unwrap().kdf, KDF_ARGON2ID);
        let mut mixed = slot.clone();
        mixed.params = Some(KdfParams::insecure_for_tests());
        let key = key_slot_key(&slot.id);
        assert!(KeySlot::decode(&key, &mixed.encode().unwrap()).is_err());
    }
}
