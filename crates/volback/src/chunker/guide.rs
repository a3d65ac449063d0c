//! The incremental guide: the parent backup's chunks, used to take cuts without scanning.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::mpsc::Receiver;

use crate::ids::{ChunkIds, Hash};

/// A chunk of the parent backup that ended at a FastCDC cut (the next extent is data too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuideEntry {
    /// Volume offset where the chunk starts.
    pub offset: u64,
    pub len: u32,
    pub id: Hash,
}

/// The parent backup's chunks, streamed in offset order, as a guide for cutting an incremental.
///
/// FastCDC's cut depends only on the bytes from the chunk's start up to and including the byte
/// after its end (it decides on a cut after hashing that byte). So when the next `len` bytes
/// from a chunk start hash to the id of a parent chunk that ended at a true cut, and the cut
/// test passes there on the byte that follows here (`CutRule::cuts_at` in the `cdc` module), FastCDC would cut
/// exactly there: the chunker takes that cut without scanning for it, and the chunk's id is
/// already known. Only chunks that ended at a true cut are guides, never the last chunk of a
/// region (its end was the region's, not a cut). The chunks are exactly those of cutting
/// without a guide; the guide saves the scan (and the pipeline's hash).
///
/// Two candidates are tried at each chunk start:
/// - the successor of the parent chunk that the previous chunk matched, wherever it was: data
///   that moved (a re-imaged filesystem, a file rewritten elsewhere) is followed chunk by
///   chunk once one of its chunks has been recognised;
/// - the parent chunk that starts at the same offset: data that stayed in place.
///
/// A chunk cut by scanning is hashed here and looked up among the parent chunks of a window
/// around the chunker's position (behind it: [`GUIDE_WINDOW`] chunks), so a moved stretch is
/// picked up after its first chunk. Memory is that window, whatever the volume size.
pub struct Guide {
    // In a mutex only to be `Sync` (the chunker shares itself with its cutting threads); it is
    // locked once per batch of entries.
    rx: Mutex<Receiver<Vec<GuideEntry>>>,
    /// Parent chunks received and not yet dropped; `window[0]` has sequence number `first`.
    window: VecDeque<GuideEntry>,
    first: u64,
    /// First 64 bits of an id → sequence number of the latest window entry with it.
    by_id: HashMap<u64, u64>,
    /// Sequence number of the first entry at or after the chunker's position.
    cursor: u64,
    /// The entry the previous chunk matched.
    pub(super) last: Option<u64>,
    /// Chunks taken from the guide (not scanned for), for the record.
    pub(super) followed: u64,
    /// Chunk starts in a row where no candidate matched.
    pub(super) misses: u32,
    /// How the container computes chunk ids (the parent's ids are compared with these).
    pub(super) ids: ChunkIds,
}

/// Parent chunks kept behind the chunker's position for moved data to be found in (~512 MiB of
/// the parent at 32 KiB chunks; ~1.5 MiB of memory).
pub const GUIDE_WINDOW: u64 = 16384;
/// Parent chunks received ahead of the chunker's position, for data that moved back.
pub const GUIDE_AHEAD: u64 = 4096;

fn id_key(id: &Hash) -> u64 {
    let b = &id.0;
    u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

impl Guide {
    /// A guide fed, in increasing offset order, through `rx`, for a container whose chunk ids
    /// are computed by `ids`. When the sender is gone, it simply has no more entries.
    pub fn new(rx: Receiver<Vec<GuideEntry>>, ids: ChunkIds) -> Self {
        Guide {
            rx: Mutex::new(rx),
            window: VecDeque::new(),
            first: 0,
            by_id: HashMap::new(),
            cursor: 0,
            last: None,
            followed: 0,
            misses: 0,
            ids,
        }
    }

    /// Entry `seq`, receiving more entries if it has not arrived yet.
    fn get(&mut self, seq: u64) -> Option<GuideEntry> {
        while seq >= self.first + self.window.len() as u64 {
            let batch = self.rx.lock().ok()?.recv().ok()?;
            for e in batch {
                let seq = self.first + self.window.len() as u64;
                self.by_id.insert(id_key(&e.id), seq);
                self.window.push_back(e);
            }
        }
        self.window
            .get(seq.checked_sub(self.first)? as usize)
            .copied()
    }

    /// The entry that starts at `offset`, if any. Offsets asked for never decrease; entries
    /// from [`GUIDE_AHEAD`] ahead to [`GUIDE_WINDOW`] behind are kept.
    fn at(&mut self, offset: u64) -> Option<u64> {
        let hit = loop {
            let Some(e) = self.get(self.cursor) else {
                break None;
            };
            if e.offset >= offset {
                break (e.offset == offset).then_some(self.cursor);
            }
            self.cursor += 1;
        };
        let _ = self.get(self.cursor + GUIDE_AHEAD);
        while self.cursor - self.first > GUIDE_WINDOW {
            if let Some(e) = self.window.pop_front()
                && self.by_id.get(&id_key(&e.id)) == Some(&self.first)
            {
                self.by_id.remove(&id_key(&e.id));
            }
            self.first += 1;
        }
        hit
    }

    /// The successor of the entry the previous chunk matched, if the parent had it right
    /// after that one.
    fn successor(&mut self) -> Option<u64> {
        let k = self.last?;
        let (e, next) = (self.get(k)?, self.get(k + 1)?);
        (e.offset + u64::from(e.len) == next.offset).then_some(k + 1)
    }

    /// The length and id of the chunk starting at `offset` in `src` (which starts there), if it
    /// is a parent chunk the guide expects there and FastCDC cuts after it here too
    /// (`cuts_at`, see `CutRule::cuts_at`: the cut also depends on the byte after the chunk).
    pub(super) fn follow(
        &mut self,
        offset: u64,
        src: &[u8],
        cuts_at: impl Fn(&[u8], usize) -> Option<bool>,
    ) -> Option<(usize, Hash)> {
        let next = self.successor();
        let here = self.at(offset).filter(|&h| Some(h) != next);
        let prev = self.last.take();
        let mut short = false;
        let mut tried: Option<(usize, Hash)> = None;
        for seq in [next, here].into_iter().flatten() {
            let Some(e) = self.get(seq) else { continue };
            let n = e.len as usize;
            if n > src.len() {
                short = true; // not all there yet: the caller will ask again with more
                continue;
            }
            if n == 0 {
                continue;
            }
            // Both candidates may have the same length: hash once.
            let id = match tried {
                Some((m, id)) if m == n => id,
                _ => self.ids.of(&src[..n]),
            };
            tried = Some((n, id));
            if id != e.id {
                continue;
            }
            match cuts_at(src, n) {
                None => short = true, // the byte after the chunk is not there yet
                Some(false) => {}     // same bytes, but the next byte moves the cut
                Some(true) => {
                    self.last = Some(seq);
                    self.followed += 1;
                    self.misses = 0;
                    return Some((n, id));
                }
            }
        }
        if short {
            self.last = prev;
        }
        self.misses += 1;
        None
    }

    /// A chunk was cut by scanning and hashed to `id`: if the parent had it nearby, the next
    /// chunk may be its successor.
    pub(super) fn cut_was(&mut self, id: &Hash) {
        self.last = self.by_id.get(&id_key(id)).copied().filter(|&k| {
            k.checked_sub(self.first)
                .and_then(|i| self.window.get(i as usize))
                .is_some_and(|e| e.id == *id)
        });
    }
}

/// Picks a backup's guide entries from its extents, given in order: a data chunk is a guide only
/// if the extent after it is data too (then its end was a FastCDC cut, not a region's end).
#[derive(Debug, Default)]
pub struct GuideFilter {
    prev: Option<GuideEntry>,
}

impl GuideFilter {
    /// The next extent, at `offset`: `Some((len, id))` for a data chunk, `None` for zeros.
    /// Returns the data chunk before it if that one is a guide.
    pub fn next(&mut self, offset: u64, data: Option<(u32, Hash)>) -> Option<GuideEntry> {
        let this = data.map(|(len, id)| GuideEntry { offset, len, id });
        let prev = std::mem::replace(&mut self.prev, this);
        prev.filter(|_| this.is_some())
    }
}
