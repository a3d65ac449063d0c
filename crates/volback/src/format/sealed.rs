//! Sealed objects: how an encrypted container stores a metadata object (manifest, index
//! segment, tombstone, lease, condemnation record, the container's settings).
//!
//! ```text
//! "VBSL" u16 version=1 u16 cipher=1        8-byte header (cipher 1: AES-256-GCM-SIV)
//! nonce[12] ciphertext tag[16]             the object's plaintext form, sealed
//! ```
//!
//! The associated data is the header followed by the object's *name*: its key for objects
//! with a fixed name (`backups/<id>`, …), a fixed word for content-named ones (`index`). So a
//! sealed manifest moved to another backup's key, or a sealed tombstone replayed as a manifest,
//! fails to open. Chunks in packs are sealed without this header (the pack's version says they
//! are sealed; see `pack`).

use crate::crypto::{SEAL_OVERHEAD, Sealer};
use crate::error::{Error, Result};

/// Sealed-object envelope version written and read by this build.
pub const SEALED_VERSION: u16 = 1;
/// The only cipher: AES-256-GCM-SIV.
pub const CIPHER_AES_256_GCM_SIV: u16 = 1;
const MAGIC: &[u8; 4] = b"VBSL";
/// Bytes of the header.
pub const HEADER_LEN: usize = 8;

fn header() -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..4].copy_from_slice(MAGIC);
    h[4..6].copy_from_slice(&SEALED_VERSION.to_le_bytes());
    h[6..8].copy_from_slice(&CIPHER_AES_256_GCM_SIV.to_le_bytes());
    h
}

fn aad(name: &str) -> Vec<u8> {
    let mut a = header().to_vec();
    a.extend_from_slice(name.as_bytes());
    a
}

/// `plain` sealed as the object named `name`.
pub fn seal_object(sealer: &Sealer, name: &str, plain: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + plain.len() + SEAL_OVERHEAD);
    out.extend_from_slice(&header());
    sealer.seal_into(&aad(name), plain, &mut out);
    out
}

/// Checks the envelope of the object stored under `key` without opening it: magic, version,
/// cipher and a length that can hold a sealed message (what `verify` checks without a key).
pub fn check_envelope(key: &str, stored: &[u8]) -> Result<()> {
    if stored.len() < HEADER_LEN + SEAL_OVERHEAD || &stored[..4] != MAGIC {
        return Err(Error::corrupt(
            key,
            0,
            "not a sealed object (an encrypted container stores every object sealed)",
        ));
    }
    let version = u16::from_le_bytes([stored[4], stored[5]]);
    let cipher = u16::from_le_bytes([stored[6], stored[7]]);
    if version != SEALED_VERSION || cipher != CIPHER_AES_256_GCM_SIV {
        return Err(Error::UnsupportedVersion {
            key: key.to_string(),
            what: "sealed object",
            found: u64::from(version) << 16 | u64::from(cipher),
            supported: u64::from(SEALED_VERSION) << 16 | u64::from(CIPHER_AES_256_GCM_SIV),
        });
    }
    Ok(())
}

/// Opens the object stored under `key`, sealed as `name`: its plaintext form, or an error
/// naming the object (damaged, planted, moved from another name, or sealed under another key).
pub fn open_object(sealer: &Sealer, key: &str, name: &str, stored: &[u8]) -> Result<Vec<u8>> {
    check_envelope(key, stored)?;
    sealer
        .open(&aad(name), &stored[HEADER_LEN..])
        .ok_or_else(|| {
            Error::corrupt(
                key,
                HEADER_LEN as u64,
                "sealed object fails authentication (damaged, or not written by this \
                 container under this name)",
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bound_to_name_and_key() {
        let s = Sealer::new(&[1; 32]);
        let sealed = seal_object(&s, "backups/a", b"{}");
        assert_eq!(open_object(&s, "k", "backups/a", &sealed).unwrap(), b"{}");
        assert_eq!(
            open_object(&s, "k", "backups/b", &sealed)
                .unwrap_err()
                .kind(),
            "corrupt"
        );
        assert_eq!(
            open_object(&s, "k", "backups/a", b"{\"format\":1}")
                .unwrap_err()
                .kind(),
            "corrupt"
        );
        let mut v2 = sealed.clone();
        v2[4] = 2;
        assert_eq!(
            open_object(&s, "k", "backups/a", &v2).unwrap_err().kind(),
            "unsupported_version"
        );
    }
}
