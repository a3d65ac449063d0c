//! Client-side encryption of a container (`docs/format.md`, "Encryption").
//!
//! An encrypted container has one random 256-bit master key. It is stored only wrapped, in key
//! slots (`keys/<id>`, [`crate::format::key_slot`]), each by a key-encryption key derived from
//! a secret: with Argon2id ([`kdf`]) for a passphrase, directly for a 256-bit key; the secret
//! comes from a [`KeySource`]. Adding, removing
//! or changing a key rewrites one slot and never touches data. From the master key come:
//!
//! - the **data key**, which seals ([`Sealer`]: AES-256-GCM-SIV) every chunk in a pack,
//!   every pack's table and every metadata object (manifests, index segments, tombstones,
//!   leases, condemnation records, the container's settings);
//! - the **chunk-id key**: chunk ids are BLAKE3 in keyed mode ([`ChunkIds`]), so a stored id
//!   reveals nothing about a block and nobody without the key can test whether a known block
//!   is in a volume. Dedup works as before within the container.
//!
//! Objects are still named by the plain BLAKE3 of their stored (sealed) bytes, so anyone can
//! check that every object is present and intact without the key (`verify` without a key).

pub mod kdf;
pub mod seal;
pub mod source;

use zeroize::Zeroizing;

pub use crate::ids::ChunkIds;
pub use kdf::KdfParams;
pub use seal::{SEAL_OVERHEAD, Sealer, random_bytes};
pub use source::KeySource;

/// Context strings of the keys derived from a master key (BLAKE3 `derive_key`).
const DATA_KEY_CONTEXT: &str = "volback 2026-12 container data key";
const CHUNK_ID_KEY_CONTEXT: &str = "volback 2026-12 chunk id key";

/// What reading and writing a container's objects needs: how chunk ids are computed and, in an
/// encrypted container, the sealer. A plaintext container's keys are [`Keys::plain`].
#[derive(Clone)]
pub struct Keys {
    ids: ChunkIds,
    sealer: Option<Sealer>,
    /// The master key and the slot that opened it (encrypted containers only), for adding keys.
    master: Option<(Zeroizing<[u8; 32]>, String)>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.master {
            None => f.write_str("Keys(plaintext)"),
            Some((_, slot)) => write!(f, "Keys(encrypted, opened by slot {slot})"),
        }
    }
}

impl Keys {
    /// A plaintext container: plain BLAKE3 ids, nothing sealed.
    pub fn plain() -> Keys {
        Keys {
            ids: ChunkIds::PLAIN,
            sealer: None,
            master: None,
        }
    }

    /// The keys of an encrypted container with `master`, opened through key slot `slot`.
    pub fn from_master(master: Zeroizing<[u8; 32]>, slot: String) -> Keys {
        let data = Zeroizing::new(blake3::derive_key(DATA_KEY_CONTEXT, master.as_ref()));
        let ids = blake3::derive_key(CHUNK_ID_KEY_CONTEXT, master.as_ref());
        Keys {
            ids: ChunkIds::keyed(ids),
            sealer: Some(Sealer::new(&data)),
            master: Some((master, slot)),
        }
    }

    /// A fresh random master key.
    pub fn new_master() -> Zeroizing<[u8; 32]> {
        let mut m = Zeroizing::new([0u8; 32]);
        random_bytes(m.as_mut());
        m
    }

    /// True for an encrypted container.
    pub fn is_encrypted(&self) -> bool {
        self.sealer.is_some()
    }

    /// How chunk ids are computed.
    pub fn ids(&self) -> ChunkIds {
        self.ids
    }

    /// The sealer, in an encrypted container.
    pub fn sealer(&self) -> Option<&Sealer> {
        self.sealer.as_ref()
    }

    /// What the chunk codec needs.
    pub fn chunks(&self) -> ChunkKeys<'_> {
        ChunkKeys {
            ids: self.ids,
            sealer: self.sealer.as_ref(),
        }
    }

    /// The master key and the slot that opened it (encrypted containers).
    pub fn master(&self) -> Option<(&[u8; 32], &str)> {
        self.master.as_ref().map(|(m, s)| (&**m, s.as_str()))
    }
}

/// What encoding and decoding one chunk needs: the id function and, if the container is
/// encrypted, the sealer. Copy, so the hot paths pass it by value.
#[derive(Clone, Copy, Debug)]
pub struct ChunkKeys<'a> {
    pub ids: ChunkIds,
    pub sealer: Option<&'a Sealer>,
}

impl ChunkKeys<'static> {
    /// A plaintext container's.
    pub const PLAIN: ChunkKeys<'static> = ChunkKeys {
        ids: ChunkIds::PLAIN,
        sealer: None,
    };
}
