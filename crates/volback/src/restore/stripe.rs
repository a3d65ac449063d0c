//! Stripes: a window's stretch of the target, assembled in aligned memory, then written whole.

use crate::error::{Error, Result};
use crate::ids::Hash;
use crate::store::direct;

/// Stripes of a restore: one being filled by the restore threads, one being written.
pub(super) const STRIPES: usize = 2;

/// Volume bytes a window spans at most, on a store read with at most two requests in flight
/// (a filesystem). Larger stripes cost memory; smaller ones decode more, since a chunk that
/// repeats in another window is decoded again there: on day 2 of the benchmark's filesystem
/// image, 16 MiB stripes decoded 1.40 GB, 32 MiB ones 1.33 GB (64 MiB: 1.21 GB, 256 MiB:
/// 1.08 GB) for a volume of 1.40 GB of data. At least the largest chunk.
pub(super) const STRIPE: usize = 32 << 20;
const _: () = assert!(STRIPE >= crate::chunker::MAX_CHUNK_LIMIT as usize);

/// The stripe for a store read with `concurrency` requests in flight. Each window ends with a
/// barrier and cuts ranges at its ends, so a store with many requests in flight (S3: 8) needs
/// larger windows to keep them busy: from s3s-fs on this machine, day 2 restored in
/// 4.6–5.0 s with 32 MiB stripes, 3.7–3.9 s with 64 MiB ones and 3.1–3.7 s with 128 MiB ones
/// (peak RSS 105, 176 and 308 MiB), against 3.1–3.7 s before stripes (131–143 MiB).
pub(super) fn stripe_len(concurrency: usize) -> usize {
    if concurrency > 2 { 2 * STRIPE } else { STRIPE }
}

/// A window's stretch of the target, assembled in memory and then written in one go by the
/// writer thread (see [`write_stripes`]). Volume offset `base + i` is at `mem[pad + i]` with
/// `pad = base % ALIGN`: the stripe mirrors the file's block alignment, so the whole blocks of
/// each region go to the disk with direct I/O straight from it.
///
/// Restore threads decode chunks straight into their extents in the stripe
/// ([`Stripe::claim`]); a chunk that occurs again in the window is copied from its first
/// place. No run buffers, and no copy between decoding and the disk.
pub(super) struct Stripe {
    pub(super) mem: direct::Aligned,
    pub(super) base: u64,
    /// The data extents, adjacent ones merged: `(offset, len)`, in volume order. What lies
    /// between them (zero extents) is not written.
    pub(super) regions: Vec<(u64, u64)>,
}

impl Stripe {
    pub(super) fn new(len: usize) -> Result<Stripe> {
        let mem = direct::Aligned::new(len + direct::ALIGN as usize)
            .ok_or_else(|| Error::Internal(format!("no memory for a {len}-byte stripe")))?;
        Ok(Stripe {
            mem,
            base: 0,
            regions: Vec::new(),
        })
    }

    pub(super) fn pad(&self) -> usize {
        (self.base % direct::ALIGN) as usize
    }

    /// Adds the data extent of `len` bytes at `off`. False if it does not fit: the stripe is
    /// full. An empty stripe starts at the extent. Extents come in volume order and never
    /// overlap (an overlapping one is refused), which is what makes [`Stripe::claim`] sound.
    pub(super) fn add(&mut self, off: u64, len: u64) -> Result<bool> {
        match self.regions.last() {
            None => self.base = off,
            Some(r) if off < r.0 + r.1 => {
                return Err(Error::Internal(format!(
                    "extent at volume offset {off} overlaps the one before it"
                )));
            }
            Some(_) => {}
        }
        let room = (self.mem.len() - self.pad()) as u64;
        if off - self.base + len > room {
            return Ok(false);
        }
        match self.regions.last_mut() {
            Some(r) if r.0 + r.1 == off => r.1 += len,
            _ => self.regions.push((off, len)),
        }
        Ok(true)
    }

    /// The stripe's bytes for the extent of `len` bytes at volume offset `off`, to decode into.
    ///
    /// # Safety
    /// `off` and `len` must be exactly one extent added to this stripe, and no two live
    /// claims may name the same extent. Extents never overlap (see [`Stripe::add`]), so claims
    /// are then disjoint. A restore window claims each place of each chunk once: a chunk id
    /// is in one range, a range is restored by one thread, and a chunk's places are distinct
    /// extents whose length is checked against the chunk's first.
    #[allow(clippy::mut_from_ref)]
    pub(super) unsafe fn claim(&self, off: u64, len: usize) -> Result<&mut [u8]> {
        let at = (off.checked_sub(self.base))
            .map(|d| d as usize + self.pad())
            .filter(|at| at + len <= self.mem.len())
            .ok_or_else(|| {
                Error::Internal(format!(
                    "extent at volume offset {off} is not in the stripe"
                ))
            })?;
        // SAFETY: in bounds (checked above); disjoint from every other live claim and from
        // any shared view of the buffer, by the caller's contract.
        Ok(unsafe { std::slice::from_raw_parts_mut(self.mem.as_mut_ptr().add(at), len) })
    }

    /// The bytes of volume offsets `[off, off + len)`, within a region.
    pub(super) fn bytes(&self, off: u64, len: u64) -> &[u8] {
        let at = (off - self.base) as usize + self.pad();
        &self.mem.as_slice()[at..at + len as usize]
    }
}

/// A window's chunks, each with the extents it is restored to. Built by sorting the window in
/// place, not as a map of small vectors: a restore makes no allocation per chunk, so its heap
/// neither churns nor fragments as the volume grows.
pub(super) struct Places<'a> {
    /// `(offset, chunk, len)`, sorted by chunk and then offset.
    pub(super) sorted: &'a [(u64, Hash, u32)],
    /// The distinct chunks, sorted.
    pub(super) ids: Vec<Hash>,
    /// `sorted[starts[i]..starts[i + 1]]` are the places of `ids[i]`.
    pub(super) starts: Vec<usize>,
}

impl<'a> Places<'a> {
    pub(super) fn new(window: &'a mut [(u64, Hash, u32)]) -> Self {
        window.sort_unstable_by(|a, b| a.1.cmp(&b.1).then(a.0.cmp(&b.0)));
        let (mut ids, mut starts) = (Vec::new(), Vec::new());
        for (i, (_, id, _)) in window.iter().enumerate() {
            if ids.last() != Some(id) {
                ids.push(*id);
                starts.push(i);
            }
        }
        starts.push(window.len());
        Places {
            sorted: window,
            ids,
            starts,
        }
    }

    /// The places of a chunk of the window, in volume order.
    pub(super) fn of(&self, id: &Hash) -> &[(u64, Hash, u32)] {
        match self.ids.binary_search(id) {
            Ok(i) => &self.sorted[self.starts[i]..self.starts[i + 1]],
            Err(_) => &[],
        }
    }
}
