//! An encrypted container's key slots: creating the container, unlocking it, and adding,
//! removing or changing keys — each by writing or deleting one slot, never by touching data.

use std::sync::Arc;

use bytes::Bytes;

use super::Container;
use crate::crypto::{KdfParams, KeySource, Keys, random_bytes};
use crate::error::{Error, Result};
use crate::format::config::{ContainerConfig, EncryptedConfig, StoredConfig};
use crate::format::key_slot::{KEYS_PREFIX, KeySlot, key_slot_key};
use crate::format::keys::CONFIG_KEY;
use crate::format::versioned::hex_encode;
use crate::store::ObjectStore;

/// What `volback key list` shows of a slot.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KeyInfo {
    pub id: String,
    pub created_at: String,
    /// `argon2id` (a passphrase) or `key256` (a 256-bit key, not stretched).
    pub kdf: String,
    /// Argon2id memory (KiB) and passes (0 for a `key256` slot).
    pub memory_kib: u32,
    pub iterations: u32,
    /// True for the slot this process opened the container with.
    pub current: bool,
}

/// Creates an encrypted container in `store`: a random master key, its first slot (under
/// `source`'s secret), then the config, create-only. The slot goes first, so a config is never
/// visible without a key that opens it. Returns the config and the keys (no second Argon2id
/// derivation to unlock what was just created). If another process created the container
/// meanwhile, its config is returned without keys, to be unlocked as usual (and this process's
/// slot, bound to a container id that lost, is deleted: it opens nothing).
pub(super) fn create_encrypted(
    store: &Arc<dyn ObjectStore>,
    settings: &ContainerConfig,
    source: &KeySource,
) -> Result<(StoredConfig, Option<Keys>)> {
    let secret = source.read()?;
    let mut id = [0u8; 16];
    random_bytes(&mut id);
    let container_id = hex_encode(&id);
    let master = Keys::new_master();
    let slot = KeySlot::new(&container_id, &master, &secret, KdfParams::default())?;
    let slot_key = key_slot_key(&slot.id);
    store.put(&slot_key, Bytes::from(slot.encode()?))?;
    let keys = Keys::from_master(master, slot.id.clone());
    let sealer = keys
        .sealer()
        .ok_or_else(|| Error::Internal("a master key without a sealer".into()))?;
    let cfg = EncryptedConfig::seal(settings, sealer, container_id)?;
    if store.put_if_absent(CONFIG_KEY, Bytes::from(cfg.encode()?))? {
        Ok((StoredConfig::Encrypted(cfg), Some(keys)))
    } else {
        store.delete(&slot_key)?;
        Ok((StoredConfig::decode(&store.get(CONFIG_KEY)?)?, None))
    }
}

impl Container {
    fn encrypted_config(&self) -> Result<&EncryptedConfig> {
        self.encrypted.as_ref().ok_or_else(|| {
            Error::Key(format!(
                "container '{}' is not encrypted: it has no keys",
                self.url
            ))
        })
    }

    /// Every readable key slot of this container. A slot that does not parse, or belongs to
    /// another container, is skipped with a warning: it opens nothing.
    fn key_slots(&self) -> Result<Vec<KeySlot>> {
        let cid = &self.encrypted_config()?.container_id;
        let mut slots = Vec::new();
        for o in self.store.list(KEYS_PREFIX)? {
            let bytes = self.store.get(&o.key)?;
            match KeySlot::decode(&o.key, &bytes) {
                Ok(s) if &s.container_id == cid => slots.push(s),
                Ok(_) => tracing::warn!(key = %o.key, "key slot of another container: skipped"),
                Err(e) => tracing::warn!(key = %o.key, error = %e, "unreadable key slot: skipped"),
            }
        }
        Ok(slots)
    }

    /// Unlocks an encrypted container with the secret from `source`: tries each slot (the
    /// 256-bit-key slots first, then one Argon2id derivation per passphrase slot) and fails
    /// with [`Error::WrongKey`] if none opens, before any backup data is read.
    pub fn unlock(&mut self, source: &KeySource) -> Result<()> {
        let cfg = self.encrypted_config()?.clone();
        let secret = source.read()?;
        let mut slots = self.key_slots()?;
        slots.sort_by_key(|s| !s.is_cheap());
        for slot in slots {
            if let Some(master) = slot.unwrap_master(&cfg.container_id, &secret)? {
                let keys = Keys::from_master(master, slot.id.clone());
                let sealer = keys
                    .sealer()
                    .ok_or_else(|| Error::Internal("a master key without a sealer".into()))?;
                self.config = cfg.open(sealer)?;
                self.keys = Some(Arc::new(keys));
                return Ok(());
            }
        }
        Err(Error::WrongKey {
            container: self.url.clone(),
        })
    }

    /// The unlocked master key and the slot that opened it.
    fn master(&self) -> Result<(&[u8; 32], &str)> {
        self.encrypted_config()?;
        self.keys()?
            .master()
            .ok_or_else(|| Error::Internal("an encrypted container without a master key".into()))
    }

    /// Adds a key: a new slot wrapping the master key under `source`'s secret, with Argon2id
    /// cost `params` (retained like a backup committed now, in a container with Object Lock).
    /// Returns the new slot's id. The container must be unlocked.
    pub fn add_key(&self, source: &KeySource, params: KdfParams) -> Result<String> {
        let cid = self.encrypted_config()?.container_id.clone();
        let (master, _) = self.master()?;
        let secret = source.read()?;
        let slot = KeySlot::new(&cid, master, &secret, params)?;
        let key = key_slot_key(&slot.id);
        if !self
            .store
            .put_if_absent(&key, Bytes::from(slot.encode()?))?
        {
            return Err(Error::Internal(format!("key slot '{key}' exists already")));
        }
        self.retain_key_slot(&key)?;
        Ok(slot.id)
    }

    /// Removes key slot `id`. Refused for the last slot (the container could never be opened
    /// again), for a slot that does not exist, and for a slot still under Object Lock
    /// retention ([`Error::Retained`]). The container must be unlocked, so only a
    /// holder of a key can remove one. The check is not atomic with the delete: two holders
    /// removing each other's slot of the last two at the same moment could leave none (key
    /// management is an operator's act, not something to run concurrently).
    pub fn remove_key(&self, id: &str) -> Result<()> {
        self.master()?;
        let slots = self.key_slots()?;
        if !slots.iter().any(|s| s.id == id) {
            return Err(Error::Key(format!(
                "container '{}' has no key '{}'",
                self.url,
                id.escape_debug()
            )));
        }
        if slots.len() < 2 {
            return Err(Error::Key(format!(
                "refusing to remove key '{id}': it is the last key of container '{}', which \
                 could never be opened again",
                self.url
            )));
        }
        self.check_not_retained(&key_slot_key(id))?;
        self.store.delete(&key_slot_key(id))
    }

    /// Changes the key this container was unlocked with to `source`'s secret: adds the new
    /// slot, then removes the old one. Returns the new slot's id. While the old slot is under
    /// Object Lock retention this is refused ([`Error::Retained`]) before anything is written:
    /// add a key now and remove the old one after its date.
    pub fn change_key(&mut self, source: &KeySource, params: KdfParams) -> Result<String> {
        let (master, old) = self.master()?;
        let (master, old) = (zeroize::Zeroizing::new(*master), old.to_string());
        // A retained slot cannot be removed: refuse before adding the new one.
        self.check_not_retained(&key_slot_key(&old))?;
        let new = self.add_key(source, params)?;
        self.store.delete(&key_slot_key(&old))?;
        self.keys = Some(Arc::new(Keys::from_master(master, new.clone())));
        Ok(new)
    }

    /// The container's key slots.
    pub fn list_keys(&self) -> Result<Vec<KeyInfo>> {
        let current = self
            .keys
            .as_ref()
            .and_then(|k| k.master())
            .map(|m| m.1.to_string());
        Ok(self
            .key_slots()?
            .into_iter()
            .map(|s| KeyInfo {
                current: current.as_deref() == Some(s.id.as_str()),
                id: s.id,
                created_at: s.created_at,
                memory_kib: s.params.map_or(0, |p| p.memory_kib),
                iterations: s.params.map_or(0, |p| p.iterations),
                kdf: s.kdf,
            })
            .collect())
    }
}
