//! FastCDC over a stream of region slices, with the guide consulted at each chunk start.

use bytes::{Bytes, BytesMut};
use fastcdc::v2020::{self, Normalization};

use super::ChunkerParams;
use super::guide::Guide;
use crate::ids::Hash;

/// Guide misses in a row (no parent chunk starts there, or its bytes changed) after which the
/// rest of a buffer is cut in parallel, unguided: the data there has moved or changed.
const GUIDE_MISSES: u32 = 4;

/// Smallest stretch of a buffer cut on a thread of its own (see [`Cdc::cut_parallel`]).
pub(super) const PAR_SEGMENT: usize = 1 << 20;

/// FastCDC's parameters and masks, enough to tell whether it cuts at a given position.
#[derive(Clone, Copy)]
pub(super) struct CutRule {
    pub(super) min: usize,
    avg: usize,
    pub(super) max: usize,
    mask_s: u64,
    mask_l: u64,
}

impl CutRule {
    /// Whether FastCDC, given `src` (a chunk's start onwards) whose first `n` bytes are a chunk
    /// another volume cut at `n`, cuts at `n` here too; None if `src` ends before it can tell.
    ///
    /// The bytes before `n` are the same, so FastCDC makes no earlier cut here either. But it
    /// decides a cut at `n` after hashing the byte at `n`, the next chunk's first byte (the crate's
    /// `cut_gear` returns the index it just hashed), so a chunk followed by other bytes may not
    /// end there. The gear hash shifts one bit per byte, so at `n` it is the sum of the gear
    /// values of bytes `n - 63 ..= n` (no further back than the scan's start at `min`), each
    /// shifted by its distance from `n`; the mask is the small-chunk one before `avg`. A cut at
    /// the maximum size needs no byte after it.
    pub(super) fn cuts_at(self, src: &[u8], n: usize) -> Option<bool> {
        if n == self.max {
            return Some(true);
        }
        if n < self.min || n > self.max {
            return Some(false);
        }
        if n >= src.len() {
            return None;
        }
        let (gear, _) = v2020::get_gear_with_seed(0);
        let from = n.saturating_sub(63).max(self.min);
        let hash = src[from..=n]
            .iter()
            .fold(0u64, |h, &b| (h << 1).wrapping_add(gear[b as usize]));
        let mask = if n < self.avg {
            self.mask_s
        } else {
            self.mask_l
        };
        Some(hash & mask == 0)
    }
}

/// FastCDC over a stream of region slices; emits a chunk only once its cut point is certain.
pub(crate) struct Cdc {
    min: usize,
    avg: usize,
    max: usize,
    mask_s: u64,
    mask_l: u64,
    pending: BytesMut,
    /// Threads a long buffer is cut on, and the least bytes each gets.
    pub(super) threads: usize,
    pub(super) par_segment: usize,
    /// Volume offset of the next chunk's start (where `pending` starts).
    pub(super) pos: u64,
    pub(super) guide: Option<Guide>,
    /// Bytes still to drop from the front of what is fed: the head of the first block of a
    /// splitter resumed mid-block (`Splitter::resume_at`).
    pub(super) discard: usize,
}

impl Cdc {
    pub(crate) fn new(p: &ChunkerParams) -> Self {
        let (mask_s, mask_l) = v2020::select_masks(p.avg as usize, Normalization::Level1);
        Cdc {
            min: p.min as usize,
            avg: p.avg as usize,
            max: p.max as usize,
            mask_s,
            mask_l,
            pending: BytesMut::new(),
            threads: std::thread::available_parallelism().map_or(1, |n| n.get().min(8)),
            par_segment: PAR_SEGMENT,
            pos: 0,
            guide: None,
            discard: 0,
        }
    }

    /// With a guide, a chunk cut by scanning is hashed, so that the guide can follow the parent
    /// from it (its id also spares the pipeline a hash).
    fn hash_cut(guide: &mut Option<Guide>, chunk: &[u8]) -> Option<Hash> {
        let g = guide.as_mut()?;
        let id = g.ids.of(chunk);
        g.cut_was(&id);
        Some(id)
    }

    /// Volume bytes that bypass the chunker (a zero extent between regions).
    pub(crate) fn skip(&mut self, len: u64) {
        debug_assert!(self.pending.is_empty());
        self.pos += len;
        if let Some(g) = self.guide.as_mut() {
            g.last = None;
        }
    }

    /// Length of the first chunk of `src`, as FastCDC would cut it if `src` were all there is.
    pub(super) fn cut(&self, src: &[u8]) -> usize {
        v2020::cut(
            src,
            self.min,
            self.avg,
            self.max,
            self.mask_s,
            self.mask_l,
            self.mask_s << 1,
            self.mask_l << 1,
        )
        .1
    }

    /// FastCDC's cut condition with this chunker's parameters, for the guide to check with.
    pub(super) fn rule(&self) -> CutRule {
        CutRule {
            min: self.min,
            avg: self.avg,
            max: self.max,
            mask_s: self.mask_s,
            mask_l: self.mask_l,
        }
    }

    /// A cut at `n` of `avail` bytes is final if FastCDC stopped before the end of the data it
    /// was given, or at the maximum size. Otherwise more bytes could move it, so we wait. (A cut
    /// found before the end never moves: FastCDC's masks at a position depend only on that
    /// position relative to the chunk start, never on how much data follows.)
    pub(super) fn is_final(&self, n: usize, avail: usize) -> bool {
        n < avail || n == self.max
    }

    /// Feeds the next bytes of the current region; `sink` receives every chunk whose cut point is
    /// final.
    pub(crate) fn feed(&mut self, data: Bytes, mut sink: impl FnMut(Bytes)) {
        self.feed_guided(data, |c, _| sink(c));
    }

    /// Like [`Self::feed`]; `sink` also gets the id of a chunk the guide recognised.
    pub(super) fn feed_guided(&mut self, data: Bytes, mut sink: impl FnMut(Bytes, Option<Hash>)) {
        let mut pos = 0;
        if self.discard > 0 {
            pos = self.discard.min(data.len());
            self.discard -= pos;
        }
        // While a chunk is in progress in `pending`, top it up from `data` and cut it there. (A
        // cut may fall inside the old pending bytes: FastCDC never tests the last byte of an
        // odd-length input, which more data makes testable.)
        while !self.pending.is_empty() {
            let old = self.pending.len();
            let take = (data.len() - pos).min(self.max - old);
            self.pending.extend_from_slice(&data[pos..pos + take]);
            pos += take;
            let rule = self.rule();
            let guided = self
                .guide
                .as_mut()
                .and_then(|g| g.follow(self.pos, &self.pending, |src, n| rule.cuts_at(src, n)));
            let (n, id) = match guided {
                Some((n, id)) => (n, Some(id)),
                None => (self.cut(&self.pending), None),
            };
            if id.is_none() && !self.is_final(n, self.pending.len()) {
                return; // all of `data` is pending now
            }
            let id = id.or_else(|| Self::hash_cut(&mut self.guide, &self.pending[..n]));
            sink(self.pending.split_to(n).freeze(), id);
            self.pos += n as u64;
            if n >= old {
                // The rest of `pending` was copied from `data`: continue there without copying.
                pos -= self.pending.len();
                self.pending.clear();
            }
        }
        while pos < data.len() {
            let rest = &data[pos..];
            let rule = self.rule();
            if let Some((n, id)) = self
                .guide
                .as_mut()
                .and_then(|g| g.follow(self.pos, rest, |src, n| rule.cuts_at(src, n)))
            {
                sink(data.slice(pos..pos + n), Some(id));
                pos += n;
                self.pos += n as u64;
                continue;
            }
            // Unguided, or the guide keeps missing: cut what is left of a long buffer in
            // parallel.
            let parts = (rest.len() / self.par_segment).min(self.threads);
            let unguided = self.guide.as_ref().is_none_or(|g| g.misses >= GUIDE_MISSES);
            if parts >= 2 && unguided {
                if let Some(g) = self.guide.as_mut() {
                    g.misses = 0;
                    g.last = None;
                }
                let rest = self.cut_parallel(&data, pos, parts, &mut |c| sink(c, None));
                let end = rest.unwrap_or(data.len());
                self.pos += (end - pos) as u64;
                self.pending.extend_from_slice(&data[end..]);
                return;
            }
            let n = self.cut(rest);
            if !self.is_final(n, rest.len()) {
                self.pending.extend_from_slice(rest);
                return;
            }
            let id = Self::hash_cut(&mut self.guide, &rest[..n]);
            sink(data.slice(pos..pos + n), id);
            pos += n;
            self.pos += n as u64;
        }
    }

    /// The region ends: whatever is pending is its last chunk.
    pub(crate) fn end_region(&mut self, mut sink: impl FnMut(Bytes)) {
        if let Some(g) = self.guide.as_mut() {
            g.last = None;
        }
        if !self.pending.is_empty() {
            self.pos += self.pending.len() as u64;
            sink(self.pending.split().freeze());
        }
    }
}
