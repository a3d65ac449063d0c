//! MD5, as Cinder records it for every object.
//!
//! One message: AWS-LC's assembly implementation (701 MB/s on one core here against the
//! pure-Rust md-5's 554 MB/s). MD5 is the largest cost of checking a Cinder restore, ahead of
//! inflating zlib, and one message's blocks depend on each other, so a faster single stream
//! does not exist; independent messages (the objects of a restore) can share SIMD lanes
//! instead: [`advance`] moves up to eight at once in the eight 32-bit lanes of AVX2 registers
//! where the CPU has AVX2. Neither AWS-LC nor RustCrypto offers multi-buffer MD5;
//! the lanes' arithmetic is MD5's own, checked against md-5 on every length class in the
//! tests below.

/// The MD5 digest of `data`.
pub(crate) fn md5(data: &[u8]) -> [u8; 16] {
    finish(INIT, 0, data)
}

/// Finishes a digest with AWS-LC: `state` after `done` bytes (a multiple of 64), then `rest`.
pub(crate) fn finish(state: [u32; 4], done: u64, rest: &[u8]) -> [u8; 16] {
    let mut out = [0u8; 16];
    let bits = done.wrapping_mul(8);
    // SAFETY: MD5_CTX is plain data that MD5_Init fully initialises; its chaining value and
    // bit count are then set to where `done` bytes left them (OpenSSL's documented layout:
    // `h`, `Nl`/`Nh` the bit count, no buffered bytes). Update reads exactly `rest.len()`
    // bytes from a live slice; Final writes exactly 16 bytes into `out`.
    unsafe {
        let mut ctx = std::mem::zeroed::<aws_lc_sys::MD5_CTX>();
        aws_lc_sys::MD5_Init(&mut ctx);
        ctx.h = state;
        ctx.Nl = bits as u32;
        ctx.Nh = (bits >> 32) as u32;
        aws_lc_sys::MD5_Update(&mut ctx, rest.as_ptr().cast(), rest.len());
        aws_lc_sys::MD5_Final(out.as_mut_ptr(), &mut ctx);
    }
    out
}

/// MD5's initial chaining value.
pub(crate) const INIT: [u32; 4] = [0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476];

/// Advances several messages' MD5 states over one piece each, all pieces of one length, a
/// multiple of 64: in the eight 32-bit lanes of AVX2 registers where the CPU has AVX2 and there
/// are two pieces or more (eight lanes cost as much as one: 3.7 GB/s together against one
/// stream's 0.7 GB/s here), one at a time with AWS-LC otherwise.
pub(crate) fn advance(states: &mut [[u32; 4]], pieces: &[&[u8]]) {
    debug_assert_eq!(states.len(), pieces.len());
    let len = pieces.first().map_or(0, |p| p.len());
    debug_assert!(len.is_multiple_of(64) && pieces.iter().all(|p| p.len() == len));
    #[cfg(target_arch = "x86_64")]
    if pieces.len() > 1 && std::arch::is_x86_feature_detected!("avx2") {
        for (states, pieces) in states.chunks_mut(8).zip(pieces.chunks(8)) {
            let mut lanes = [pieces[0]; 8];
            lanes[..pieces.len()].copy_from_slice(pieces);
            let mut all = [INIT; 8];
            all[..states.len()].copy_from_slice(states);
            // SAFETY: AVX2 is present (checked above); every lane holds `len / 64` blocks.
            unsafe { avx2::compress(&mut all, &lanes, len / 64) };
            states.copy_from_slice(&all[..states.len()]);
        }
        return;
    }
    for (state, piece) in states.iter_mut().zip(pieces) {
        // SAFETY: as in `finish`; a whole number of blocks leaves nothing buffered, so the
        // chaining value read back is the state after `piece`.
        unsafe {
            let mut ctx = std::mem::zeroed::<aws_lc_sys::MD5_CTX>();
            aws_lc_sys::MD5_Init(&mut ctx);
            ctx.h = *state;
            aws_lc_sys::MD5_Update(&mut ctx, piece.as_ptr().cast(), piece.len());
            *state = ctx.h;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx2")]
    fn f(b: __m256i, c: __m256i, d: __m256i) -> __m256i {
        _mm256_or_si256(_mm256_and_si256(b, c), _mm256_andnot_si256(b, d))
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn g(b: __m256i, c: __m256i, d: __m256i) -> __m256i {
        _mm256_or_si256(_mm256_and_si256(b, d), _mm256_andnot_si256(d, c))
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn h(b: __m256i, c: __m256i, d: __m256i) -> __m256i {
        _mm256_xor_si256(_mm256_xor_si256(b, c), d)
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn i(b: __m256i, c: __m256i, d: __m256i) -> __m256i {
        _mm256_xor_si256(
            c,
            _mm256_or_si256(b, _mm256_xor_si256(d, _mm256_set1_epi32(-1))),
        )
    }

    /// Lane `l` of the result holds word `w` of lane `l`'s block, for the eight words of
    /// `rows` (row `l`: eight consecutive words of lane `l`): an 8×8 transpose.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn transpose(r: [__m256i; 8]) -> [__m256i; 8] {
        let t0 = _mm256_unpacklo_epi32(r[0], r[1]);
        let t1 = _mm256_unpackhi_epi32(r[0], r[1]);
        let t2 = _mm256_unpacklo_epi32(r[2], r[3]);
        let t3 = _mm256_unpackhi_epi32(r[2], r[3]);
        let t4 = _mm256_unpacklo_epi32(r[4], r[5]);
        let t5 = _mm256_unpackhi_epi32(r[4], r[5]);
        let t6 = _mm256_unpacklo_epi32(r[6], r[7]);
        let t7 = _mm256_unpackhi_epi32(r[6], r[7]);
        let u0 = _mm256_unpacklo_epi64(t0, t2);
        let u1 = _mm256_unpackhi_epi64(t0, t2);
        let u2 = _mm256_unpacklo_epi64(t1, t3);
        let u3 = _mm256_unpackhi_epi64(t1, t3);
        let u4 = _mm256_unpacklo_epi64(t4, t6);
        let u5 = _mm256_unpackhi_epi64(t4, t6);
        let u6 = _mm256_unpacklo_epi64(t5, t7);
        let u7 = _mm256_unpackhi_epi64(t5, t7);
        [
            _mm256_permute2x128_si256::<0x20>(u0, u4),
            _mm256_permute2x128_si256::<0x20>(u1, u5),
            _mm256_permute2x128_si256::<0x20>(u2, u6),
            _mm256_permute2x128_si256::<0x20>(u3, u7),
            _mm256_permute2x128_si256::<0x31>(u0, u4),
            _mm256_permute2x128_si256::<0x31>(u1, u5),
            _mm256_permute2x128_si256::<0x31>(u2, u6),
            _mm256_permute2x128_si256::<0x31>(u3, u7),
        ]
    }

    /// Advances the eight lanes' states over their first `blocks` 64-byte blocks.
    ///
    /// # Safety
    /// The CPU must have AVX2, and every lane at least `blocks * 64` bytes.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn compress(states: &mut [[u32; 4]; 8], lanes: &[&[u8]; 8], blocks: usize) {
        let lane = |s: usize| {
            _mm256_setr_epi32(
                states[0][s] as i32,
                states[1][s] as i32,
                states[2][s] as i32,
                states[3][s] as i32,
                states[4][s] as i32,
                states[5][s] as i32,
                states[6][s] as i32,
                states[7][s] as i32,
            )
        };
        let (mut a, mut b, mut c, mut d) = (lane(0), lane(1), lane(2), lane(3));
        for n in 0..blocks {
            let at = n * 64;
            let mut m = [_mm256_setzero_si256(); 16];
            for half in 0..2 {
                let mut rows = [_mm256_setzero_si256(); 8];
                for (l, row) in rows.iter_mut().enumerate() {
                    debug_assert!(lanes[l].len() >= at + 64);
                    // SAFETY: the lane holds `blocks` whole blocks (the caller's promise);
                    // this reads 32 bytes of block `n`.
                    *row =
                        unsafe { _mm256_loadu_si256(lanes[l].as_ptr().add(at + half * 32).cast()) };
                }
                let words = transpose(rows);
                m[half * 8..half * 8 + 8].copy_from_slice(&words);
            }
            let (a0, b0, c0, d0) = (a, b, c, d);
            macro_rules! step {
                ($fun:ident, $a:ident, $b:ident, $c:ident, $d:ident, $m:expr, $k:expr, $s:expr) => {
                    let t = _mm256_add_epi32(
                        _mm256_add_epi32($a, $fun($b, $c, $d)),
                        _mm256_add_epi32($m, _mm256_set1_epi32($k as u32 as i32)),
                    );
                    $a = _mm256_add_epi32(
                        $b,
                        _mm256_or_si256(
                            _mm256_slli_epi32::<$s>(t),
                            _mm256_srli_epi32::<{ 32 - $s }>(t),
                        ),
                    );
                };
            }
            step!(f, a, b, c, d, m[0], 0xd76aa478, 7);
            step!(f, d, a, b, c, m[1], 0xe8c7b756, 12);
            step!(f, c, d, a, b, m[2], 0x242070db, 17);
            step!(f, b, c, d, a, m[3], 0xc1bdceee, 22);
            step!(f, a, b, c, d, m[4], 0xf57c0faf, 7);
            step!(f, d, a, b, c, m[5], 0x4787c62a, 12);
            step!(f, c, d, a, b, m[6], 0xa8304613, 17);
            step!(f, b, c, d, a, m[7], 0xfd469501, 22);
            step!(f, a, b, c, d, m[8], 0x698098d8, 7);
            step!(f, d, a, b, c, m[9], 0x8b44f7af, 12);
            step!(f, c, d, a, b, m[10], 0xffff5bb1, 17);
            step!(f, b, c, d, a, m[11], 0x895cd7be, 22);
            step!(f, a, b, c, d, m[12], 0x6b901122, 7);
            step!(f, d, a, b, c, m[13], 0xfd987193, 12);
            step!(f, c, d, a, b, m[14], 0xa679438e, 17);
            step!(f, b, c, d, a, m[15], 0x49b40821, 22);
            step!(g, a, b, c, d, m[1], 0xf61e2562, 5);
            step!(g, d, a, b, c, m[6], 0xc040b340, 9);
            step!(g, c, d, a, b, m[11], 0x265e5a51, 14);
            step!(g, b, c, d, a, m[0], 0xe9b6c7aa, 20);
            step!(g, a, b, c, d, m[5], 0xd62f105d, 5);
            step!(g, d, a, b, c, m[10], 0x02441453, 9);
            step!(g, c, d, a, b, m[15], 0xd8a1e681, 14);
            step!(g, b, c, d, a, m[4], 0xe7d3fbc8, 20);
            step!(g, a, b, c, d, m[9], 0x21e1cde6, 5);
            step!(g, d, a, b, c, m[14], 0xc33707d6, 9);
            step!(g, c, d, a, b, m[3], 0xf4d50d87, 14);
            step!(g, b, c, d, a, m[8], 0x455a14ed, 20);
            step!(g, a, b, c, d, m[13], 0xa9e3e905, 5);
            step!(g, d, a, b, c, m[2], 0xfcefa3f8, 9);
            step!(g, c, d, a, b, m[7], 0x676f02d9, 14);
            step!(g, b, c, d, a, m[12], 0x8d2a4c8a, 20);
            step!(h, a, b, c, d, m[5], 0xfffa3942, 4);
            step!(h, d, a, b, c, m[8], 0x8771f681, 11);
            step!(h, c, d, a, b, m[11], 0x6d9d6122, 16);
            step!(h, b, c, d, a, m[14], 0xfde5380c, 23);
            step!(h, a, b, c, d, m[1], 0xa4beea44, 4);
            step!(h, d, a, b, c, m[4], 0x4bdecfa9, 11);
            step!(h, c, d, a, b, m[7], 0xf6bb4b60, 16);
            step!(h, b, c, d, a, m[10], 0xbebfbc70, 23);
            step!(h, a, b, c, d, m[13], 0x289b7ec6, 4);
            step!(h, d, a, b, c, m[0], 0xeaa127fa, 11);
            step!(h, c, d, a, b, m[3], 0xd4ef3085, 16);
            step!(h, b, c, d, a, m[6], 0x04881d05, 23);
            step!(h, a, b, c, d, m[9], 0xd9d4d039, 4);
            step!(h, d, a, b, c, m[12], 0xe6db99e5, 11);
            step!(h, c, d, a, b, m[15], 0x1fa27cf8, 16);
            step!(h, b, c, d, a, m[2], 0xc4ac5665, 23);
            step!(i, a, b, c, d, m[0], 0xf4292244, 6);
            step!(i, d, a, b, c, m[7], 0x432aff97, 10);
            step!(i, c, d, a, b, m[14], 0xab9423a7, 15);
            step!(i, b, c, d, a, m[5], 0xfc93a039, 21);
            step!(i, a, b, c, d, m[12], 0x655b59c3, 6);
            step!(i, d, a, b, c, m[3], 0x8f0ccc92, 10);
            step!(i, c, d, a, b, m[10], 0xffeff47d, 15);
            step!(i, b, c, d, a, m[1], 0x85845dd1, 21);
            step!(i, a, b, c, d, m[8], 0x6fa87e4f, 6);
            step!(i, d, a, b, c, m[15], 0xfe2ce6e0, 10);
            step!(i, c, d, a, b, m[6], 0xa3014314, 15);
            step!(i, b, c, d, a, m[13], 0x4e0811a1, 21);
            step!(i, a, b, c, d, m[4], 0xf7537e82, 6);
            step!(i, d, a, b, c, m[11], 0xbd3af235, 10);
            step!(i, c, d, a, b, m[2], 0x2ad7d2bb, 15);
            step!(i, b, c, d, a, m[9], 0xeb86d391, 21);
            a = _mm256_add_epi32(a, a0);
            b = _mm256_add_epi32(b, b0);
            c = _mm256_add_epi32(c, c0);
            d = _mm256_add_epi32(d, d0);
        }
        let mut out = [[0u32; 8]; 4];
        for (o, v) in out.iter_mut().zip([a, b, c, d]) {
            // SAFETY: 32 bytes stored into a [u32; 8].
            unsafe { _mm256_storeu_si256(o.as_mut_ptr().cast(), v) };
        }
        for (l, state) in states.iter_mut().enumerate() {
            *state = [out[0][l], out[1][l], out[2][l], out[3][l]];
        }
    }
}

#[cfg(test)]
mod tests {
    use md5::Digest as _;

    fn data(len: usize, seed: u32) -> Vec<u8> {
        (0..len as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 11) as u8)
            .collect()
    }

    #[test]
    fn agrees_with_md5_reference() {
        assert_eq!(
            super::md5(b"The quick brown fox jumps over the lazy dog"),
            [
                0x9e, 0x10, 0x7d, 0x9d, 0x37, 0x2b, 0xb6, 0x82, 0x6b, 0xd8, 0x1d, 0x35, 0x42, 0xa4,
                0x19, 0xd6
            ]
        );
        let data = data(100_000, 1);
        assert_eq!(super::md5(&data)[..], md5::Md5::digest(&data)[..]);
        assert_eq!(super::md5(b"")[..], md5::Md5::digest(b"")[..]);
    }

    #[test]
    fn lanes_agree_with_one_message_at_a_time() {
        // Messages hashed a piece at a time, 1..=11 of them side by side (all lanes, some,
        // more than eight), then finished with tails across block and padding boundaries.
        for count in [1usize, 2, 3, 7, 8, 9, 11] {
            for tail in [0usize, 1, 55, 56, 63, 64, 65, 1000] {
                let pieces = 3;
                let piece = 4096;
                let msgs: Vec<Vec<u8>> = (0..count)
                    .map(|i| data(pieces * piece + tail + i % 2, i as u32))
                    .collect();
                let mut states = vec![super::INIT; count];
                for p in 0..pieces {
                    let refs: Vec<&[u8]> = msgs
                        .iter()
                        .map(|m| &m[p * piece..(p + 1) * piece])
                        .collect();
                    super::advance(&mut states, &refs);
                }
                let done = pieces * piece;
                for (m, state) in msgs.iter().zip(&states) {
                    let got = super::finish(*state, done as u64, &m[done..]);
                    assert_eq!(
                        got[..],
                        md5::Md5::digest(m)[..],
                        "{} bytes of {count}",
                        m.len()
                    );
                }
            }
        }
    }
}
