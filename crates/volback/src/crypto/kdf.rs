//! Key-encryption keys from passphrases: Argon2id, with parameters stored in each key slot.
//!
//! A passphrase — whatever its source: typed into a file, a variable, a command's output — is
//! stretched with Argon2id before it unwraps the container's master key: one derivation per
//! open, 0.14 s and 64 MiB with the defaults on the benchmark machine, freed before any data
//! moves. A secret of exactly 64 hex digits is a 256-bit key (a key manager's), which needs no
//! stretching ([`crate::format::key_slot`]).

use argon2::{Algorithm, Argon2, Params, Version};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// Argon2id's cost, as stored in a key slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes over the memory.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl Default for KdfParams {
    /// 64 MiB, 3 passes, 1 lane: above OWASP's recommended minimum (19 MiB, 2 passes).
    fn default() -> Self {
        KdfParams {
            memory_kib: 64 * 1024,
            iterations: 3,
            parallelism: 1,
        }
    }
}

/// The most a stored slot may ask for: a crafted slot must not make an open allocate without
/// bound or run for hours.
const MAX_MEMORY_KIB: u32 = 1024 * 1024;
const MAX_ITERATIONS: u32 = 64;
const MAX_PARALLELISM: u32 = 16;

impl KdfParams {
    /// The cheapest parameters Argon2id accepts: for tests only (they make a guess cheap).
    pub fn insecure_for_tests() -> Self {
        KdfParams {
            memory_kib: 8,
            iterations: 1,
            parallelism: 1,
        }
    }

    /// Checks the parameters a stored slot names against the bounds above; `slot` names it.
    pub fn check(&self, slot: &str) -> Result<()> {
        if self.memory_kib > MAX_MEMORY_KIB
            || self.iterations == 0
            || self.iterations > MAX_ITERATIONS
            || self.parallelism == 0
            || self.parallelism > MAX_PARALLELISM
            || self.memory_kib < 8 * self.parallelism
        {
            return Err(Error::corrupt(
                slot,
                0,
                format!(
                    "key slot asks Argon2id for {} KiB, {} passes, {} lanes (at most {} KiB, \
                     {} passes, {} lanes)",
                    self.memory_kib,
                    self.iterations,
                    self.parallelism,
                    MAX_MEMORY_KIB,
                    MAX_ITERATIONS,
                    MAX_PARALLELISM
                ),
            ));
        }
        Ok(())
    }

    /// The 32-byte key-encryption key for `secret` and `salt`.
    pub fn derive(&self, slot: &str, secret: &[u8], salt: &[u8]) -> Result<Zeroizing<[u8; 32]>> {
        self.check(slot)?;
        let params = Params::new(self.memory_kib, self.iterations, self.parallelism, Some(32))
            .map_err(|e| Error::corrupt(slot, 0, format!("Argon2id parameters: {e}")))?;
        let mut out = Zeroizing::new([0u8; 32]);
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password_into(secret, salt, out.as_mut())
            .map_err(|e| Error::corrupt(slot, 0, format!("Argon2id: {e}")))?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crafted_costs_are_refused_before_any_work() {
        for p in [
            KdfParams {
                memory_kib: u32::MAX,
                ..KdfParams::default()
            },
            KdfParams {
                iterations: 0,
                ..KdfParams::default()
            },
            KdfParams {
                parallelism: 1000,
                ..KdfParams::default()
            },
        ] {
            let e = p.derive("keys/x", b"s", &[0; 16]).unwrap_err();
            assert_eq!(e.kind(), "corrupt", "{p:?}");
        }
        let t = KdfParams::insecure_for_tests();
        let a = t.derive("k", b"secret", &[1; 16]).unwrap();
        assert_eq!(*a, *t.derive("k", b"secret", &[1; 16]).unwrap());
        assert_ne!(*a, *t.derive("k", b"secret", &[2; 16]).unwrap());
        assert_ne!(*a, *t.derive("k", b"secreT", &[1; 16]).unwrap());
    }
}
