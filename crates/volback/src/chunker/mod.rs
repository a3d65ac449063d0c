//! Content-defined chunking with zero-extent detection.
//!
//! A volume is split in two stages, both streaming and both deterministic functions of the
//! volume's bytes (never of how the reader happened to buffer them):
//!
//! 1. **Zero runs.** The volume is seen as 4 KiB blocks aligned to absolute volume offsets. A
//!    run of all-zero blocks of at least [`ChunkerParams::zero_min`] bytes becomes a *zero
//!    extent*: it is never hashed, compressed or stored, and restores as a hole. Holes reported
//!    by the filesystem (`SEEK_HOLE`) enter here too, without being read. Shorter zero runs stay
//!    part of the data around them.
//! 2. **FastCDC.** Each maximal stretch of data between zero extents (a *region*) is cut with
//!    FastCDC v2020 (the `fastcdc` crate, pinned to an exact version because cut points are part
//!    of the container's dedup contract; golden cut points are tested below). Chunking restarts
//!    at every region, so a change in one region never moves cut points in another.
//!
//! The chunker holds at most one maximum-size chunk of carried-over bytes between input
//! buffers, so memory does not depend on the volume size. A data chunk that happens to be all
//! zeros is emitted as a zero extent as well.
//!
//! An incremental is cut with its parent's chunks as a [`Guide`]. A chunk is taken without
//! scanning for its cut when it hashes to the id of a parent chunk the guide expects there:
//! - the one at the same offset;
//! - or the successor of the parent chunk the previous chunk matched.
//!
//! FastCDC would have cut at the same place, so the pieces are the same as without a guide
//! (tested on random edits, moves, holes and buffer sizes). The guide saves the scan and the
//! pipeline's hash.
//!
//! Cutting is the pipeline's one sequential stage, so a long buffer is cut on several threads
//! at once, each part from its own start, and the parts' chains of cuts are joined where they
//! meet the true one (`Cdc::cut_parallel`): the cut points are exactly those of cutting in
//! one go (tested against it, including data whose chains never meet).

mod cdc;
mod guide;
mod parallel;
mod params;
mod splitter;
mod zero;

pub(crate) use cdc::Cdc;
pub use guide::{GUIDE_AHEAD, GUIDE_WINDOW, Guide, GuideEntry, GuideFilter};
pub use params::{ChunkerParams, MAX_CHUNK_LIMIT, ZERO_BLOCK};
pub use splitter::Splitter;
pub use zero::is_zero;

use bytes::Bytes;

use crate::ids::Hash;

/// One piece of the volume, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// A run of zero bytes of this length.
    Zero(u64),
    /// One content-defined chunk.
    Data(Bytes),
    /// A chunk the chunker has already hashed, to this id: an incremental's [`Guide`] needs the
    /// ids of the chunks it cuts.
    Hashed(Bytes, Hash),
    /// A chunk of the parent backup reused in place without being read (an incremental given
    /// a change map, `backup/mapped.rs`): its length and id.
    Reused(u32, Hash),
}

impl Piece {
    /// Length in volume bytes.
    pub fn len(&self) -> u64 {
        match self {
            Piece::Zero(n) => *n,
            Piece::Data(b) | Piece::Hashed(b, _) => b.len() as u64,
            Piece::Reused(n, _) => u64::from(*n),
        }
    }

    /// True for an empty piece (never produced by the splitter).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests;
