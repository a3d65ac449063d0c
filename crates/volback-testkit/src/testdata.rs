//! Deterministic test data shared by unit tests, integration tests and benchmarks.
//!
//! Golden values (FastCDC cut points) are computed over this generator, so it is written out here
//! rather than taken from a crate whose output could change between versions.

/// `len` pseudo-random bytes from xorshift64* seeded with `seed` (which must not be 0).
pub fn pseudo_random(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        seed ^= seed >> 12;
        seed ^= seed << 25;
        seed ^= seed >> 27;
        out.extend_from_slice(&seed.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}
