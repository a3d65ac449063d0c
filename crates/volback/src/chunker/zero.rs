//! Zero detection: whole 4 KiB blocks compared against a static zero page.

use bytes::Bytes;

static ZEROS: [u8; 65536] = [0; 65536];

/// True if every byte is zero. Compares against a static zero page with `memcmp`, which stops at
/// the first non-zero byte and runs at memory speed on zero data.
pub fn is_zero(mut b: &[u8]) -> bool {
    while !b.is_empty() {
        let n = b.len().min(ZEROS.len());
        if b[..n] != ZEROS[..n] {
            return false;
        }
        b = &b[n..];
    }
    true
}

/// A zero-filled buffer of `len` bytes (used for short zero runs that stay data).
pub(super) fn zero_bytes(len: u64) -> Bytes {
    if len <= ZEROS.len() as u64 {
        Bytes::from_static(&ZEROS[..len as usize])
    } else {
        Bytes::from(vec![0u8; len as usize])
    }
}
