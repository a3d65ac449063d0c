//! One data object of a Cinder backup: read, decompressed and checked.

use std::io::Read;

use crate::error::{Error, Result};
use crate::store::ObjectStore;

use super::CinderBackup;
use super::metadata::{CinderCompression, CinderObject};

/// Most bytes reserved ahead of decompressing: an object's length comes from its manifest, and
/// a crafted one must not make a huge allocation before the data proves it.
const RESERVE_AHEAD: u64 = 256 << 20;

/// Reads object `o` of backup `b` into `out` (replacing what it held; its allocation is
/// reused), decompresses it and checks it against the manifest: its uncompressed length and
/// the MD5 Cinder recorded (and never checks itself). Any difference is [`Error::Corrupt`]
/// naming the object and the backup; a missing object is [`Error::MissingObject`].
pub(crate) fn read_object_into(
    store: &dyn ObjectStore,
    b: &CinderBackup,
    o: &CinderObject,
    out: &mut Vec<u8>,
) -> Result<()> {
    let key = b.object_key(o);
    let stored = store.get(&key)?;
    let bad = |what: String| {
        Error::corrupt(
            &key,
            0,
            format!("{what} (Cinder backup {})", b.manifest.backup_id),
        )
    };
    out.clear();
    // One byte past the length is read: a stream longer than the manifest says is damage too.
    let limit = o.length.saturating_add(1);
    let res = match o.compression {
        CinderCompression::None => {
            out.extend_from_slice(&stored);
            Ok(())
        }
        CinderCompression::Zlib => inflate_zlib(&stored, limit, out),
        CinderCompression::Bz2 => bzip2::read::BzDecoder::new(&stored[..])
            .take(limit)
            .read_to_end(out)
            .map(drop),
        CinderCompression::Zstd => zstd::stream::read::Decoder::new(&stored[..])
            .and_then(|d| d.take(limit).read_to_end(out))
            .map(drop),
    };
    res.map_err(|e| bad(format!("does not decompress: {e}")))?;
    if out.len() as u64 != o.length {
        return Err(bad(format!(
            "holds {} bytes, the manifest says {}",
            out.len(),
            o.length
        )));
    }
    if super::md5::md5(out) != o.md5 {
        return Err(bad("MD5 differs from the manifest's".into()));
    }
    Ok(())
}

/// [`read_object_into`] a new buffer.
pub(crate) fn read_object(
    store: &dyn ObjectStore,
    b: &CinderBackup,
    o: &CinderObject,
) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    read_object_into(store, b, o, &mut out)?;
    Ok(out)
}

/// Inflates the zlib stream `input` into `out`, at most `limit` bytes, straight into the
/// buffer's spare capacity (no zero-filling first, as a `Read` adapter would).
fn inflate_zlib(input: &[u8], limit: u64, out: &mut Vec<u8>) -> std::io::Result<()> {
    use flate2::{Decompress, FlushDecompress, Status};
    let mut z = Decompress::new(true);
    loop {
        if out.len() == out.capacity() {
            let room = limit
                .saturating_sub(out.len() as u64)
                .clamp(1, RESERVE_AHEAD);
            out.reserve(room as usize);
        }
        let consumed = z.total_in() as usize;
        let before = out.len();
        let status = z
            .decompress_vec(&input[consumed..], out, FlushDecompress::Finish)
            .map_err(std::io::Error::other)?;
        if out.len() as u64 >= limit {
            return Ok(()); // too long: the length check names it
        }
        match status {
            Status::StreamEnd => return Ok(()),
            Status::Ok | Status::BufError
                if out.len() == before && z.total_in() as usize == consumed =>
            {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the zlib stream is truncated",
                ));
            }
            Status::Ok | Status::BufError => {}
        }
    }
}
