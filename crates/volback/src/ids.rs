//! Identifiers: content hashes of chunks and objects, and the names callers give backups.

use std::fmt;

use crate::error::{Error, Result};

/// A BLAKE3 hash naming a chunk (over its uncompressed bytes) or an object (over its stored
/// bytes). Content addressing is what makes dedup, verification and safe concurrent writers
/// possible: two writers storing the same chunk store the same bytes under the same name.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    /// BLAKE3 of `data`.
    pub fn of(data: &[u8]) -> Self {
        Hash(*blake3::hash(data).as_bytes())
    }

    /// Lower-case hex, 64 characters.
    pub fn to_hex(&self) -> String {
        blake3::Hash::from_bytes(self.0).to_hex().to_string()
    }

    /// Parses 64 hex characters.
    pub fn from_hex(s: &str) -> Option<Self> {
        if s.len() != 64 {
            return None;
        }
        blake3::Hash::from_hex(s).ok().map(|h| Hash(*h.as_bytes()))
    }

    /// Reads a hash from the first 32 bytes of `b` (which the caller has length-checked).
    pub fn from_slice(b: &[u8]) -> Option<Self> {
        b.get(..32)?.try_into().ok().map(Hash)
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", &self.to_hex()[..16])
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// How a container computes chunk ids: plain BLAKE3, or (encrypted containers) BLAKE3 in keyed
/// mode with the container's chunk-id key, so that an id says nothing about the block to anyone
/// without the key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ChunkIds(Option<[u8; 32]>);

impl ChunkIds {
    /// Plain BLAKE3 (plaintext containers).
    pub const PLAIN: ChunkIds = ChunkIds(None);

    /// Keyed BLAKE3 with `key`.
    pub fn keyed(key: [u8; 32]) -> Self {
        ChunkIds(Some(key))
    }

    /// The id of a chunk whose bytes are `data`.
    #[inline]
    pub fn of(&self, data: &[u8]) -> Hash {
        match &self.0 {
            None => Hash::of(data),
            Some(k) => Hash(*blake3::keyed_hash(k, data).as_bytes()),
        }
    }
}

impl fmt::Debug for ChunkIds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "ChunkIds(keyed BLAKE3)"
        } else {
            "ChunkIds(BLAKE3)"
        })
    }
}

/// Checks a caller-supplied id (backup id, volume id): 1 to 128 characters of ASCII letters,
/// digits, '-', '_' and '.', not starting with '.'. Ids become parts of object keys, so this is
/// what stops a record or a command line from naming a path outside the container.
pub fn validate_id(what: &'static str, id: &str) -> Result<()> {
    let bad = |reason| {
        Err(Error::InvalidId {
            what,
            value: id.escape_debug().to_string(),
            reason,
        })
    };
    if id.is_empty() || id.len() > 128 {
        return bad("must be 1 to 128 characters");
    }
    if id.starts_with('.') {
        return bad("must not start with '.'");
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return bad("may only contain ASCII letters, digits, '-', '_' and '.'");
    }
    Ok(())
}

/// A fresh random backup id (a UUID, as Cinder uses).
pub fn new_backup_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let h = Hash::of(b"abc");
        assert_eq!(Hash::from_hex(&h.to_hex()), Some(h));
        assert_eq!(Hash::from_hex("zz"), None);
        assert_eq!(Hash::from_hex(&"g".repeat(64)), None);
    }

    #[test]
    fn ids_are_validated() {
        for bad in ["", "../x", "a/b", ".hidden", "a b", "x\0", &"a".repeat(129)] {
            assert!(validate_id("backup id", bad).is_err(), "{bad:?}");
        }
        validate_id("backup id", &new_backup_id()).unwrap();
        validate_id("backup id", "vol-1_day.2").unwrap();
    }
}
