//! Chunking parameters: recorded in a container's config, used by every backup into it.

/// Zero detection works on blocks of this size, aligned to absolute volume offsets.
pub const ZERO_BLOCK: u64 = 4096;
/// The largest chunk any container may configure (and the bound decoders enforce).
pub const MAX_CHUNK_LIMIT: u32 = 16 * 1024 * 1024;

/// Chunking parameters. They are recorded in the container's config when it is created and every
/// backup into that container uses them, so identical data always yields identical chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChunkerParams {
    /// Smallest chunk FastCDC cuts (except at the end of a region).
    pub min: u32,
    /// Target average chunk size.
    pub avg: u32,
    /// Largest chunk.
    pub max: u32,
    /// Shortest run of zero bytes that becomes a zero extent (a multiple of 4 KiB).
    pub zero_min: u32,
}

impl Default for ChunkerParams {
    /// 8 / 32 / 128 KiB: see `docs/chunk-size.md` for the measurement behind these numbers.
    fn default() -> Self {
        ChunkerParams {
            min: 8 * 1024,
            avg: 32 * 1024,
            max: 128 * 1024,
            zero_min: 32 * 1024,
        }
    }
}

impl ChunkerParams {
    /// Parameters around an average chunk size of `avg` bytes, the smallest a quarter of it
    /// and the largest four times it (as the defaults are), checked.
    pub fn around(avg: u32) -> Result<ChunkerParams, String> {
        let max = avg
            .checked_mul(4)
            .ok_or_else(|| format!("average chunk size {avg} is too large (at most 4 MiB)"))?;
        let p = ChunkerParams {
            min: avg / 4,
            avg,
            max,
            ..ChunkerParams::default()
        };
        p.validate()?;
        Ok(p)
    }

    /// Checks the parameters against FastCDC's limits and our own.
    pub fn validate(&self) -> Result<(), String> {
        let ok = self.min >= 64
            && self.min <= 1024 * 1024
            && self.avg >= 256
            && self.avg <= 4 * 1024 * 1024
            && self.max >= 1024
            && self.max <= MAX_CHUNK_LIMIT
            && self.min < self.avg
            && self.avg < self.max
            && self.min.is_multiple_of(2)
            && self.avg.is_multiple_of(2)
            && self.max.is_multiple_of(2)
            && self.zero_min >= ZERO_BLOCK as u32
            && u64::from(self.zero_min).is_multiple_of(ZERO_BLOCK);
        if ok {
            Ok(())
        } else {
            Err(format!(
                "chunker parameters {self:?} out of range: need 64 <= min < avg < max, \
                 min <= 1 MiB, 256 <= avg <= 4 MiB, 1 KiB <= max <= 16 MiB, all even, \
                 zero_min a non-zero multiple of 4 KiB"
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn around_an_average_is_checked_not_wrapped() {
        assert_eq!(
            ChunkerParams::around(32 * 1024),
            Ok(ChunkerParams::default())
        );
        // 4 x 1.5 GiB wraps a u32 to a small, plausible maximum: refused, not wrapped.
        for avg in [0, 100, (3 << 29) + 2, u32::MAX, 8 << 20] {
            assert!(ChunkerParams::around(avg).is_err(), "{avg}");
        }
    }
}
