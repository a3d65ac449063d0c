//! The extent list: every extent of the volume, in order, as a chunked binary stream.
//!
//! Each extent is a data chunk id with its length or a zero run. The stream is cut with
//! content-defined chunking ([`META_CHUNKER`]) and stored in packs like volume data
//! ([`ChunkKind::Meta`](super::chunk::ChunkKind)). Because records carry lengths rather than
//! offsets, an unchanged region of the volume yields the same extent-list chunks as in the
//! parent backup, so an incremental backup stores only the parts of its extent list that
//! changed: metadata deduplicates the way data does, and a TiB volume's extent list stays a few
//! MiB.
//!
//! Records (see `docs/format.md`):
//!
//! ```text
//! 0x01 varint(len) chunk_id[32]   data chunk of `len` bytes
//! 0x02 varint(len)                `len` zero bytes
//! ```

use bytes::{Bytes, BytesMut};

use crate::chunker::{Cdc, ChunkerParams, MAX_CHUNK_LIMIT};
use crate::error::{Error, Result};
use crate::ids::Hash;

/// Chunking of the extent-list stream: small, because a changed data chunk rewrites the
/// extent-list chunk around it.
pub const META_CHUNKER: ChunkerParams = ChunkerParams {
    min: 2048,
    avg: 8192,
    max: 32768,
    zero_min: 4096,
};

/// One extent of the volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extent {
    /// A data chunk.
    Data { len: u32, id: Hash },
    /// A run of zeros.
    Zero { len: u64 },
}

impl Extent {
    /// Volume bytes covered.
    pub fn len(&self) -> u64 {
        match self {
            Extent::Data { len, .. } => u64::from(*len),
            Extent::Zero { len } => *len,
        }
    }

    /// True for a zero-length extent (never written).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn put_varint(b: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        b.extend_from_slice(&[(v as u8) | 0x80]);
        v >>= 7;
    }
    b.extend_from_slice(&[v as u8]);
}

/// Builds the extent-list stream and cuts it into chunks as it grows.
pub struct ExtentListWriter {
    buf: BytesMut,
    cdc: Cdc,
    zero_run: u64,
    chunks: Vec<Bytes>,
    /// Extents written.
    pub count: u64,
    /// Stream bytes produced.
    pub stream_len: u64,
}

impl Default for ExtentListWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl ExtentListWriter {
    /// An empty list.
    pub fn new() -> Self {
        ExtentListWriter {
            buf: BytesMut::new(),
            cdc: Cdc::new(&META_CHUNKER),
            zero_run: 0,
            chunks: Vec::new(),
            count: 0,
            stream_len: 0,
        }
    }

    fn flush_zero(&mut self) {
        if self.zero_run > 0 {
            self.buf.extend_from_slice(&[2]);
            put_varint(&mut self.buf, self.zero_run);
            self.zero_run = 0;
            self.count += 1;
        }
    }

    /// Appends a data chunk extent.
    pub fn push_data(&mut self, len: u32, id: &Hash) {
        self.flush_zero();
        self.buf.extend_from_slice(&[1]);
        put_varint(&mut self.buf, u64::from(len));
        self.buf.extend_from_slice(&id.0);
        self.count += 1;
        if self.buf.len() >= 1 << 18 {
            self.cut();
        }
    }

    /// Appends zeros (merged with a zero extent just before).
    pub fn push_zero(&mut self, len: u64) {
        self.zero_run += len;
    }

    fn cut(&mut self) {
        let data = self.buf.split().freeze();
        self.stream_len += data.len() as u64;
        let chunks = &mut self.chunks;
        self.cdc.feed(data, |c| chunks.push(c));
    }

    /// Extent-list chunks completed so far (the caller stores them in order).
    pub fn take_chunks(&mut self) -> Vec<Bytes> {
        std::mem::take(&mut self.chunks)
    }

    /// Ends the list; returns its last chunks.
    pub fn finish(&mut self) -> Vec<Bytes> {
        self.flush_zero();
        self.cut();
        let chunks = &mut self.chunks;
        self.cdc.end_region(|c| chunks.push(c));
        self.take_chunks()
    }
}

/// Decodes the extent-list stream fed in pieces (one per extent-list chunk).
#[derive(Default)]
pub struct ExtentListReader {
    carry: Vec<u8>,
    /// Stream offset of the first carried byte (for error messages).
    pos: u64,
}

impl ExtentListReader {
    /// A reader at the start of the stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Where the reader stands between two pieces: the bytes of an unfinished record it carries
    /// (at most one record, 42 bytes) and their stream offset. A reader [`resume`]d from it
    /// decodes the following pieces exactly as this one would, so a random-access reader can
    /// start at any extent-list chunk without the chunks before it.
    ///
    /// [`resume`]: ExtentListReader::resume
    pub fn position(&self) -> (Vec<u8>, u64) {
        (self.carry.clone(), self.pos)
    }

    /// A reader at a [`position`](ExtentListReader::position) taken earlier.
    pub fn resume(carry: Vec<u8>, pos: u64) -> Self {
        ExtentListReader { carry, pos }
    }

    /// Decodes every complete record in `data` (after any bytes carried from before). `key`
    /// names the manifest for errors.
    pub fn push(&mut self, key: &str, data: &[u8], out: &mut Vec<Extent>) -> Result<()> {
        self.carry.extend_from_slice(data);
        let b = &self.carry;
        let mut i = 0usize;
        loop {
            let start = i;
            let Some(&tag) = b.get(i) else { break };
            i += 1;
            let mut len: u64 = 0;
            let mut shift = 0;
            let complete = loop {
                let Some(&byte) = b.get(i) else { break false };
                i += 1;
                if shift > 56 {
                    return Err(Error::corrupt(
                        key,
                        self.pos + start as u64,
                        "extent length varint too long",
                    ));
                }
                len |= u64::from(byte & 0x7f) << shift;
                shift += 7;
                if byte & 0x80 == 0 {
                    break true;
                }
            };
            if !complete {
                i = start;
                break;
            }
            match tag {
                1 => {
                    if b.len() < i + 32 {
                        i = start;
                        break;
                    }
                    if len == 0 || len > u64::from(MAX_CHUNK_LIMIT) {
                        return Err(Error::corrupt(
                            key,
                            self.pos + start as u64,
                            format!("data extent of {len} bytes"),
                        ));
                    }
                    let id = Hash(b[i..i + 32].try_into().unwrap_or([0; 32]));
                    i += 32;
                    out.push(Extent::Data {
                        len: len as u32,
                        id,
                    });
                }
                2 => {
                    if len == 0 {
                        return Err(Error::corrupt(
                            key,
                            self.pos + start as u64,
                            "empty zero extent",
                        ));
                    }
                    out.push(Extent::Zero { len });
                }
                t => {
                    return Err(Error::corrupt(
                        key,
                        self.pos + start as u64,
                        format!("unknown extent tag {t}"),
                    ));
                }
            }
        }
        self.carry.drain(..i);
        self.pos += i as u64;
        Ok(())
    }

    /// Checks that the stream ended on a record boundary.
    pub fn finish(&self, key: &str) -> Result<()> {
        if self.carry.is_empty() {
            Ok(())
        } else {
            Err(Error::corrupt(
                key,
                self.pos,
                "extent list ends inside a record (truncated)",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extent_list_round_trip_in_any_pieces() {
        let mut w = ExtentListWriter::new();
        let mut expect = Vec::new();
        for i in 0..50_000u32 {
            if i % 7 == 0 {
                w.push_zero(4096);
                w.push_zero(8192);
                expect.push(Extent::Zero { len: 12288 });
            } else {
                let id = Hash::of(&i.to_le_bytes());
                w.push_data(1000 + i, &id);
                expect.push(Extent::Data { len: 1000 + i, id });
            }
        }
        let mut chunks = w.take_chunks();
        chunks.extend(w.finish());
        assert!(chunks.len() > 50, "stream is cut into many chunks");
        assert_eq!(w.count, expect.len() as u64);
        assert_eq!(
            chunks.iter().map(|c| c.len() as u64).sum::<u64>(),
            w.stream_len
        );
        let mut r = ExtentListReader::new();
        let mut got = Vec::new();
        for c in &chunks {
            // Feed in odd pieces too.
            let (a, b) = c.split_at(c.len() / 3);
            r.push("m", a, &mut got).unwrap();
            r.push("m", b, &mut got).unwrap();
        }
        r.finish("m").unwrap();
        assert_eq!(got, expect);
    }

    #[test]
    fn bad_streams_are_errors() {
        let mut r = ExtentListReader::new();
        let mut out = Vec::new();
        assert!(r.push("m", &[9, 1], &mut out).is_err());
        let mut r = ExtentListReader::new();
        r.push("m", &[1, 5, 1, 2], &mut out).unwrap();
        assert!(r.finish("m").is_err());
        let mut r = ExtentListReader::new();
        assert!(
            r.push(
                "m",
                &[
                    1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f
                ],
                &mut out
            )
            .is_err()
        );
    }
}
