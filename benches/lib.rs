//! Helpers the scale benchmarks share (the benchmarks themselves are beside this file:
//! `cargo bench -p volback-benches`).

use volback::ids::Hash;

/// A field of `/proc/self/status` in KiB (`VmHWM:` is the peak RSS), 0 where there is none.
pub fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// The `i`-th of a sequence of distinct, uniformly spread ids (what BLAKE3 ids look like),
/// cheaper than hashing data.
pub fn id(i: u64) -> Hash {
    let mut h = [0u8; 32];
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    for c in h.chunks_mut(8) {
        x ^= x >> 31;
        x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x ^= x >> 27;
        c.copy_from_slice(&x.to_le_bytes());
    }
    Hash(h)
}
