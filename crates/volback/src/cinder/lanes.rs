//! Many objects read at once, a piece at a time, their MD5s advanced together in SIMD lanes.
//!
//! Checking an object's MD5 costs as much CPU as inflating it, and one MD5 stream cannot go
//! faster than ~0.7 GB/s here; eight streams in AVX2 lanes go 3.7 GB/s together
//! ([`super::md5::advance`]). So each reading thread keeps up to [`LANES`] objects open: it
//! fetches each one's stored bytes in ranges ([`INPUT`] at a time), inflates the next
//! [`PIECE`] of every open object, advances their MD5s side by side and hands the pieces on.
//! When an object ends, its length and MD5 are checked and the next object takes its lane.
//! Memory is bounded by the lanes (an input range, a decompressor and a piece each), not by
//! the objects' sizes (Cinder's posix driver writes objects of up to 1.86 GiB).
//!
//! Pieces are handed on before their object's MD5 is known: a consumer must treat its
//! output as unverified until [`read_in_lanes`] returns `Ok` (a restore removes its target
//! on error).

use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::store::ObjectStore;

use super::CinderBackup;
use super::md5;
use super::metadata::{CinderCompression, CinderObject};

/// Objects open at once per reading thread: AVX2's eight 32-bit lanes.
pub const LANES: usize = 8;
/// Uncompressed bytes per piece (a multiple of 64, MD5's block, and of 4 KiB, for direct I/O).
pub const PIECE: usize = 1 << 20;
/// Stored bytes fetched per ranged read.
const INPUT: u64 = 4 << 20;

/// A decompressor fed in pieces.
enum Inflater {
    None,
    Zlib(Box<flate2::Decompress>),
    Bz2(Box<bzip2::Decompress>),
    Zstd(Box<zstd::stream::raw::Decoder<'static>>),
}

impl Inflater {
    fn new(c: CinderCompression) -> std::io::Result<Inflater> {
        Ok(match c {
            CinderCompression::None => Inflater::None,
            CinderCompression::Zlib => Inflater::Zlib(Box::new(flate2::Decompress::new(true))),
            CinderCompression::Bz2 => Inflater::Bz2(Box::new(bzip2::Decompress::new(false))),
            CinderCompression::Zstd => Inflater::Zstd(Box::new(zstd::stream::raw::Decoder::new()?)),
        })
    }

    /// Decodes from `input` into `out`; (bytes consumed, bytes produced, the stream ended).
    fn run(&mut self, input: &[u8], out: &mut [u8]) -> std::io::Result<(usize, usize, bool)> {
        match self {
            Inflater::None => {
                let n = input.len().min(out.len());
                out[..n].copy_from_slice(&input[..n]);
                Ok((n, n, false))
            }
            Inflater::Zlib(z) => {
                let (i, o) = (z.total_in(), z.total_out());
                let status = z
                    .decompress(input, out, flate2::FlushDecompress::None)
                    .map_err(std::io::Error::other)?;
                let ended = status == flate2::Status::StreamEnd;
                Ok((
                    (z.total_in() - i) as usize,
                    (z.total_out() - o) as usize,
                    ended,
                ))
            }
            Inflater::Bz2(z) => {
                let (i, o) = (z.total_in(), z.total_out());
                let status = z.decompress(input, out).map_err(std::io::Error::other)?;
                let ended = status == bzip2::Status::StreamEnd;
                Ok((
                    (z.total_in() - i) as usize,
                    (z.total_out() - o) as usize,
                    ended,
                ))
            }
            Inflater::Zstd(z) => {
                use zstd::stream::raw::{InBuffer, Operation, OutBuffer};
                let mut src = InBuffer::around(input);
                let mut dst = OutBuffer::around(out);
                let hint = z.run(&mut src, &mut dst)?;
                // 0: a frame ended and is flushed (another may follow in the input).
                Ok((src.pos(), dst.pos(), hint == 0))
            }
        }
    }
}

/// One open object.
struct Lane<'a> {
    work: usize,
    b: &'a CinderBackup,
    o: &'a CinderObject,
    key: String,
    stored: u64,
    fetched: u64,
    input: Bytes,
    at: usize,
    inflater: Inflater,
    /// Uncompressed bytes produced so far (all hashed but the last piece's).
    produced: u64,
    md5: [u32; 4],
    /// The decompressor reported the end of its stream.
    ended: bool,
}

impl<'a> Lane<'a> {
    fn open(
        store: &dyn ObjectStore,
        work: usize,
        b: &'a CinderBackup,
        o: &'a CinderObject,
    ) -> Result<Self> {
        let key = b.object_key(o);
        let stored = store
            .head(&key)?
            .ok_or_else(|| Error::MissingObject { key: key.clone() })?;
        let inflater = Inflater::new(o.compression)
            .map_err(|e| self::damaged(b, &key, format!("no decompressor: {e}")))?;
        Ok(Lane {
            work,
            b,
            o,
            key,
            stored,
            fetched: 0,
            input: Bytes::new(),
            at: 0,
            inflater,
            produced: 0,
            md5: md5::INIT,
            ended: false,
        })
    }

    /// The next [`PIECE`] of the object (less at its end) into `out`; true if it is the last.
    fn next_piece(&mut self, store: &dyn ObjectStore, out: &mut Vec<u8>) -> Result<bool> {
        // A buffer handed back by the writer is usually a whole piece already: nothing to
        // fill then (the bytes are overwritten below; only `filled` of them are kept).
        out.resize(PIECE, 0);
        let mut filled = 0;
        while filled < PIECE {
            if self.at == self.input.len() {
                if self.fetched == self.stored {
                    self.ended |= matches!(self.inflater, Inflater::None);
                    break;
                }
                let end = self.fetched.saturating_add(INPUT).min(self.stored);
                self.input = store.get_range(&self.key, self.fetched..end)?;
                if self.input.is_empty() {
                    return Err(self.damaged("shorter than its listed size".into()));
                }
                self.fetched += self.input.len() as u64;
                self.at = 0;
            }
            let (used, made, end) = self
                .inflater
                .run(&self.input[self.at..], &mut out[filled..])
                .map_err(|e| self.damaged(format!("does not decompress: {e}")))?;
            self.at += used;
            filled += made;
            if end {
                // A zstd object may hold several frames; zlib and bz2 end at their stream's
                // end, as Cinder's own reader does.
                let more = self.at < self.input.len() || self.fetched < self.stored;
                if !(more && matches!(self.inflater, Inflater::Zstd(_))) {
                    self.ended = true;
                    break;
                }
                continue;
            }
            if used == 0 && made == 0 && self.at < self.input.len() {
                return Err(self.damaged("the compressed stream makes no progress".into()));
            }
        }
        out.truncate(filled);
        self.produced += filled as u64;
        if self.produced > self.o.length {
            return Err(self.damaged(format!(
                "holds more than the {} bytes the manifest says",
                self.o.length
            )));
        }
        Ok(self.ended || filled < PIECE)
    }

    fn damaged(&self, what: String) -> Error {
        damaged(self.b, &self.key, what)
    }

    /// Checks the whole object once its last piece is read (`last`: that piece, not yet
    /// hashed).
    fn check(&self, last: &[u8]) -> Result<()> {
        if !self.ended {
            return Err(self.damaged("the compressed stream is truncated".into()));
        }
        if self.produced != self.o.length {
            return Err(self.damaged(format!(
                "holds {} bytes, the manifest says {}",
                self.produced, self.o.length
            )));
        }
        let done = self.produced - last.len() as u64;
        if md5::finish(self.md5, done, last) != self.o.md5 {
            return Err(self.damaged("MD5 differs from the manifest's".into()));
        }
        Ok(())
    }
}

fn damaged(b: &CinderBackup, key: &str, what: String) -> Error {
    Error::corrupt(
        key,
        0,
        format!("{what} (Cinder backup {})", b.manifest.backup_id),
    )
}

/// Reads the objects `objects` (each with the index it is handed on with) on `threads`
/// threads, [`LANES`] at a time per thread, and hands `(index, offset in the object, piece)`
/// to `emit` as it goes (pieces of one object in order; `emit` gives the buffer back or keeps
/// it). Every object's length and MD5 are checked once it is read; the first failure (or
/// `emit`'s) stops everything and is returned.
pub fn read_in_lanes<'a>(
    store: &dyn ObjectStore,
    objects: &[(usize, &'a CinderBackup, &'a CinderObject)],
    threads: usize,
    buffers: &(dyn Fn() -> Vec<u8> + Sync),
    emit: &(dyn Fn(usize, u64, Vec<u8>) -> Result<()> + Sync),
) -> Result<()> {
    let next = AtomicUsize::new(0);
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads.max(1))
            .map(|_| {
                s.spawn(|| {
                    let r = lane_worker(store, objects, &next, &stop, buffers, emit);
                    if r.is_err() {
                        stop.store(true, Ordering::Relaxed);
                    }
                    r
                })
            })
            .collect();
        let mut first = Ok(());
        for w in workers {
            let r = w
                .join()
                .unwrap_or_else(|_| Err(Error::Internal("a reading thread panicked".into())));
            // The first error that is a cause, not another thread's cancellation.
            if let Err(e) = r
                && (first.is_ok() || matches!(first, Err(Error::Cancelled { .. })))
            {
                first = Err(e);
            }
        }
        first
    })
}

fn lane_worker<'a>(
    store: &dyn ObjectStore,
    objects: &[(usize, &'a CinderBackup, &'a CinderObject)],
    next: &AtomicUsize,
    stop: &std::sync::atomic::AtomicBool,
    buffers: &(dyn Fn() -> Vec<u8> + Sync),
    emit: &(dyn Fn(usize, u64, Vec<u8>) -> Result<()> + Sync),
) -> Result<()> {
    let mut lanes: Vec<Lane<'a>> = Vec::with_capacity(LANES);
    loop {
        if stop.load(Ordering::Relaxed) {
            return Err(Error::Cancelled { what: "restore" });
        }
        while lanes.len() < LANES {
            let n = next.fetch_add(1, Ordering::Relaxed);
            let Some(&(work, b, o)) = objects.get(n) else {
                break;
            };
            lanes.push(Lane::open(store, work, b, o)?);
        }
        if lanes.is_empty() {
            return Ok(());
        }
        let mut pieces = Vec::with_capacity(lanes.len());
        for lane in &mut lanes {
            let mut piece = buffers();
            let offset = lane.produced;
            let last = lane.next_piece(store, &mut piece)?;
            pieces.push((piece, offset, last));
        }
        // Whole pieces of objects that go on advance their MD5s together.
        let going: Vec<usize> = (0..lanes.len()).filter(|&i| !pieces[i].2).collect();
        let mut states: Vec<[u32; 4]> = going.iter().map(|&i| lanes[i].md5).collect();
        let refs: Vec<&[u8]> = going.iter().map(|&i| &pieces[i].0[..]).collect();
        md5::advance(&mut states, &refs);
        for (&i, state) in going.iter().zip(states) {
            lanes[i].md5 = state;
        }
        for (lane, (piece, _, last)) in lanes.iter().zip(&pieces) {
            if *last {
                lane.check(piece)?;
            }
        }
        let mut kept = Vec::with_capacity(lanes.len());
        for (lane, (piece, offset, last)) in lanes.drain(..).zip(pieces) {
            emit(lane.work, offset, piece)?;
            if !last {
                kept.push(lane);
            }
        }
        lanes = kept;
    }
}
