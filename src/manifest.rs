//! Manifests: the commit point of a backup, and its extent list.
//!
//! A backup's manifest (`backups/<id>`) is a small JSON document: who and what (ids, size,
//! timestamps, volume metadata), the chunker parameters, and the list of *extent-list chunks*.
//! The extent list itself — every extent of the volume in order, each a data chunk id with its
//! length or a zero run — is a binary stream that is cut with content-defined chunking and
//! stored in packs like volume data ([`ChunkKind::Meta`](crate::pack::ChunkKind)). Because
//! records carry lengths rather than offsets, an unchanged region of the volume yields the same
//! extent-list chunks as in the parent backup, so an incremental backup stores only the parts of
//! its extent list that changed: metadata deduplicates the way data does, and a TiB volume's
//! manifest stays a few MiB. The manifest is the last object a backup writes; its existence is
//! what makes the backup exist.
//!
//! Extent-list records (see `docs/format.md`):
//!
//! ```text
//! 0x01 varint(len) chunk_id[32]   data chunk of `len` bytes
//! 0x02 varint(len)                `len` zero bytes
//! ```

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::chunker::{Cdc, ChunkerParams, MAX_CHUNK_LIMIT};
use crate::error::{Error, Result};
use crate::ids::Hash;

/// Manifest format name and version written and read by this build.
pub const MANIFEST_FORMAT: &str = "volback-manifest";
/// Manifest version.
pub const MANIFEST_VERSION: u64 = 1;

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

/// A reference to one extent-list chunk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaRef {
    /// BLAKE3 of the chunk, hex.
    pub id: String,
    /// Bytes of extent-list stream in it.
    pub len: u32,
}

/// Counts recorded with each backup.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestStats {
    /// Data chunks in the volume (counting repeats).
    pub chunks_total: u64,
    /// Chunks this backup stored that the container did not have.
    pub chunks_new: u64,
    /// Bytes this backup added in packs and index segments (not counting the manifest itself).
    pub bytes_new: u64,
    /// Volume bytes in zero extents.
    pub zero_bytes: u64,
    /// Objects this backup wrote, the manifest included.
    pub object_count: u64,
}

/// The manifest document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub version: u64,
    pub backup_id: String,
    pub volume_id: String,
    pub parent_id: Option<String>,
    /// RFC 3339, UTC.
    pub created_at: String,
    /// Seconds since the Unix epoch (for GC grace periods and sorting).
    pub created_unix: u64,
    /// Caller-supplied point in time the data represents (Cinder's data_timestamp).
    pub data_timestamp: Option<String>,
    /// Volume size in bytes.
    pub size: u64,
    pub chunker: ChunkerParams,
    /// Extent-list chunks, in order.
    pub extents: Vec<MetaRef>,
    /// Total bytes of the extent-list stream.
    pub extents_len: u64,
    /// Number of extents in the stream.
    pub extent_count: u64,
    pub stats: ManifestStats,
    /// Opaque JSON volume metadata, handed back on restore.
    pub volume_metadata: Option<serde_json::Value>,
}

impl Manifest {
    /// Serialises to compact JSON (one line, so a decode error's column is a byte offset).
    pub fn encode(&self) -> Vec<u8> {
        // Serialising plain structs and JSON values cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses a manifest read from `key`, rejecting other formats and versions by name.
    pub fn decode(key: &str, bytes: &[u8]) -> Result<Manifest> {
        let m: Manifest =
            decode_versioned_json(key, bytes, "manifest", MANIFEST_FORMAT, MANIFEST_VERSION)?;
        let listed: u64 = m.extents.iter().map(|r| u64::from(r.len)).sum();
        if listed != m.extents_len {
            return Err(Error::corrupt(
                key,
                0,
                "extent-list chunk lengths do not add up",
            ));
        }
        Ok(m)
    }

    /// The extent-list chunk ids, parsed.
    pub fn meta_ids(&self, key: &str) -> Result<Vec<(Hash, u32)>> {
        self.extents
            .iter()
            .map(|r| {
                Hash::from_hex(&r.id).map(|h| (h, r.len)).ok_or_else(|| {
                    Error::corrupt(key, 0, format!("bad extent-list chunk id '{}'", r.id))
                })
            })
            .collect()
    }
}

/// Decodes a JSON object stored under `key` that carries `"format": format` and
/// `"version": version` (every JSON object volback stores does): a parse failure is `Corrupt` at
/// the failing byte (the documents are single-line), another format is `Corrupt`, another
/// version is `UnsupportedVersion`, then the fields are deserialised into `T`.
pub fn decode_versioned_json<T: serde::de::DeserializeOwned>(
    key: &str,
    bytes: &[u8],
    what: &'static str,
    format: &str,
    version: u64,
) -> Result<T> {
    let v: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
        Error::corrupt(
            key,
            e.column().saturating_sub(1) as u64,
            format!("{what} does not parse: {e}"),
        )
    })?;
    if v.get("format").and_then(|f| f.as_str()) != Some(format) {
        return Err(Error::corrupt(
            key,
            0,
            format!("not a volback {what} (format field is not '{format}')"),
        ));
    }
    let found = v.get("version").and_then(|x| x.as_u64()).unwrap_or(0);
    if found != version {
        return Err(Error::UnsupportedVersion {
            key: key.to_string(),
            what,
            found,
            supported: version,
        });
    }
    serde_json::from_value(v).map_err(|e| Error::corrupt(key, 0, format!("{what} fields: {e}")))
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

    #[test]
    fn manifest_versions_are_checked() {
        let m = Manifest {
            format: MANIFEST_FORMAT.into(),
            version: MANIFEST_VERSION,
            backup_id: "b".into(),
            volume_id: "v".into(),
            parent_id: None,
            created_at: "2026-01-01T00:00:00Z".into(),
            created_unix: 0,
            data_timestamp: None,
            size: 10,
            chunker: ChunkerParams::default(),
            extents: vec![MetaRef {
                id: Hash::of(b"x").to_hex(),
                len: 5,
            }],
            extents_len: 5,
            extent_count: 1,
            stats: ManifestStats::default(),
            volume_metadata: Some(serde_json::json!({"k": "v"})),
        };
        let enc = m.encode();
        assert_eq!(Manifest::decode("k", &enc).unwrap(), m);
        let v2 = String::from_utf8(enc.clone())
            .unwrap()
            .replace("\"version\":1", "\"version\":2");
        assert!(matches!(
            Manifest::decode("k", v2.as_bytes()),
            Err(Error::UnsupportedVersion { found: 2, .. })
        ));
        assert!(matches!(
            Manifest::decode("k", &enc[..enc.len() / 2]),
            Err(Error::Corrupt { .. })
        ));
        assert!(matches!(
            Manifest::decode("k", b"{}"),
            Err(Error::Corrupt { .. })
        ));
    }
}
