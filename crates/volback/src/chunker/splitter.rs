//! The streaming splitter: zero runs first, then FastCDC on the data regions between them.

use bytes::{Bytes, BytesMut};

use super::cdc::Cdc;
use super::guide::Guide;
use super::zero::{is_zero, zero_bytes};
use super::{ChunkerParams, Piece, ZERO_BLOCK};
use crate::ids::Hash;

/// The streaming splitter: feed it the volume in order (data buffers and holes), get pieces.
pub struct Splitter {
    params: ChunkerParams,
    cdc: Cdc,
    /// Absolute volume offset of the next byte to be pushed.
    offset: u64,
    /// Length of the zero run that ends at `offset` (possibly spanning buffers and holes).
    zrun: u64,
    /// A partial block at the end of the last buffer (it starts at `offset`).
    tail: BytesMut,
}

impl Splitter {
    /// A splitter at volume offset 0.
    pub fn new(params: ChunkerParams) -> Self {
        Splitter {
            params,
            cdc: Cdc::new(&params),
            offset: 0,
            zrun: 0,
            tail: BytesMut::new(),
        }
    }

    /// A splitter for an incremental, guided by the parent backup's chunks: the same pieces as
    /// [`Self::new`], but chunks the guide recognises are hashed once and never scanned for a
    /// cut. Most chunks come out as [`Piece::Hashed`], with their ids.
    pub fn with_guide(params: ChunkerParams, guide: Guide) -> Self {
        let mut s = Splitter::new(params);
        s.cdc.guide = Some(guide);
        s
    }

    /// A splitter that takes over at volume offset `at` from a splitter over the whole volume,
    /// producing the same pieces from there on. `at` must be a *fresh point* of the volume: a
    /// piece boundary whose 4 KiB block (the one holding byte `at`) is not all zeros. Then no
    /// zero run crosses that block and no chunk crosses `at`, so nothing before the block
    /// matters (`backup/mapped.rs` relies on it; `docs/change-maps.md` has the argument).
    ///
    /// Push the volume from `at` rounded down to its block: the bytes before `at` take part in
    /// that block's zero test only, and are not chunked.
    pub fn resume_at(params: ChunkerParams, at: u64) -> Self {
        let block = at - at % ZERO_BLOCK;
        let mut s = Splitter::new(params);
        s.offset = block;
        s.cdc.pos = at;
        s.cdc.discard = (at - block) as usize;
        s
    }

    /// Chunks the guide gave (taken without scanning for their cut).
    pub fn followed(&self) -> u64 {
        self.cdc.guide.as_ref().map_or(0, |g| g.followed)
    }

    /// Bytes pushed so far (data and holes).
    pub fn offset(&self) -> u64 {
        self.offset + self.tail.len() as u64
    }

    /// Pushes the next `buf.len()` bytes of the volume. Buffers may have any length; a partial
    /// 4 KiB block at the end is held back until the rest of the block arrives, so zero detection
    /// always sees whole aligned blocks.
    pub fn push_data(&mut self, mut buf: Bytes, out: &mut Vec<Piece>) {
        if !self.tail.is_empty() {
            let take = buf.len().min(ZERO_BLOCK as usize - self.tail.len());
            self.tail.extend_from_slice(&buf[..take]);
            buf = buf.slice(take..);
            if self.tail.len() < ZERO_BLOCK as usize {
                return;
            }
            let block = self.tail.split().freeze();
            self.push_aligned(block, out);
        }
        let partial = ((self.offset + buf.len() as u64) % ZERO_BLOCK) as usize;
        let whole = buf.len() - partial.min(buf.len());
        if whole > 0 {
            self.push_aligned(buf.slice(..whole), out);
        }
        self.tail.extend_from_slice(&buf[whole..]);
    }

    /// Pushes bytes that start at a block boundary (`self.offset` is aligned, the tail empty).
    fn push_aligned(&mut self, buf: Bytes, out: &mut Vec<Piece>) {
        let len = buf.len();
        let mut i = 0usize;
        let mut data_start = 0usize;
        // Bytes of the current zero run that lie inside `buf` (they end at `i`).
        let mut run_in_buf = 0usize;
        while i < len {
            let abs = self.offset + i as u64;
            let step = (ZERO_BLOCK - abs % ZERO_BLOCK) as usize;
            let end = len.min(i + step);
            if is_zero(&buf[i..end]) {
                self.zrun += (end - i) as u64;
                run_in_buf += end - i;
            } else if self.zrun > 0 {
                let run_start = i - run_in_buf;
                let carried = self.zrun - run_in_buf as u64;
                if self.zrun >= u64::from(self.params.zero_min) {
                    if run_start > data_start {
                        self.cdc
                            .feed_guided(buf.slice(data_start..run_start), |c, id| {
                                emit(out, c, id)
                            });
                    }
                    self.cdc.end_region(|c| emit(out, c, None));
                    self.cdc.skip(self.zrun);
                    push_zero(out, self.zrun);
                    data_start = i;
                } else if carried > 0 {
                    // The run began in an earlier buffer or hole and is too short to be a zero
                    // extent: its earlier part becomes data ahead of this buffer's bytes
                    // (data_start is 0 here, since the run covers the buffer up to `i`).
                    self.cdc
                        .feed_guided(zero_bytes(carried), |c, id| emit(out, c, id));
                }
                self.zrun = 0;
                run_in_buf = 0;
            }
            i = end;
        }
        // Feed everything up to the zero run still open at the end (if any); the run is kept as
        // a count and decided when it ends.
        let feed_end = len - run_in_buf;
        if feed_end > data_start {
            self.cdc
                .feed_guided(buf.slice(data_start..feed_end), |c, id| emit(out, c, id));
        }
        self.offset += len as u64;
    }

    /// Pushes a hole of `len` bytes: zeros that need not be read. Whole blocks are counted
    /// without being materialised; the unaligned edges (rare: filesystems report holes in whole
    /// blocks) go through [`Self::push_data`] as zero bytes.
    pub fn push_hole(&mut self, mut len: u64, out: &mut Vec<Piece>) {
        if !self.tail.is_empty() {
            let head = len.min(ZERO_BLOCK - self.tail.len() as u64);
            self.push_data(zero_bytes(head), out);
            len -= head;
        }
        let whole = len - len % ZERO_BLOCK;
        self.zrun += whole;
        self.offset += whole;
        if len > whole {
            self.push_data(zero_bytes(len - whole), out);
        }
    }

    /// The volume ends: flushes the last zero run and chunk.
    pub fn finish(&mut self, out: &mut Vec<Piece>) {
        if !self.tail.is_empty() {
            let block = self.tail.split().freeze();
            self.push_aligned(block, out);
        }
        if self.zrun > 0 {
            if self.zrun >= u64::from(self.params.zero_min) {
                self.cdc.end_region(|c| emit(out, c, None));
                self.cdc.skip(self.zrun);
                push_zero(out, self.zrun);
            } else {
                self.cdc
                    .feed_guided(zero_bytes(self.zrun), |c, id| emit(out, c, id));
                self.cdc.end_region(|c| emit(out, c, None));
            }
            self.zrun = 0;
        } else {
            self.cdc.end_region(|c| emit(out, c, None));
        }
        debug_assert_eq!(self.cdc.pos, self.offset, "chunker position lost track");
    }
}

/// Appends a chunk; one that is all zeros becomes a zero extent (it needs no storage).
fn emit(out: &mut Vec<Piece>, chunk: Bytes, id: Option<Hash>) {
    if is_zero(&chunk) {
        push_zero(out, chunk.len() as u64);
    } else if let Some(id) = id {
        out.push(Piece::Hashed(chunk, id));
    } else {
        out.push(Piece::Data(chunk));
    }
}

/// Appends a zero extent, merging it with a zero extent just before it.
pub(super) fn push_zero(out: &mut Vec<Piece>, len: u64) {
    if let Some(Piece::Zero(prev)) = out.last_mut() {
        *prev += len;
    } else {
        out.push(Piece::Zero(len));
    }
}
