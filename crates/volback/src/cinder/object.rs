//! One data object of a Cinder backup: read, decompressed and checked.

use std::io::Read;

use md5::Digest as _;

use crate::error::{Error, Result};
use crate::store::ObjectStore;

use super::CinderBackup;
use super::metadata::{CinderCompression, CinderObject};

/// Reads object `o` of backup `b`, decompresses it and checks it against the manifest: its
/// uncompressed length and the MD5 Cinder recorded (and never checks itself). Any difference
/// is [`Error::Corrupt`] naming the object and the backup; a missing object is
/// [`Error::MissingObject`].
pub(crate) fn read_object(
    store: &dyn ObjectStore,
    b: &CinderBackup,
    o: &CinderObject,
) -> Result<Vec<u8>> {
    let key = b.object_key(o);
    let stored = store.get(&key)?;
    let bad = |what: String| {
        Error::corrupt(
            &key,
            0,
            format!("{what} (Cinder backup {})", b.manifest.backup_id),
        )
    };
    let len = usize::try_from(o.length)
        .map_err(|_| bad(format!("length {} does not fit in memory", o.length)))?;
    // Never trust the length for an allocation beyond what decompression proves.
    let mut out = Vec::with_capacity(len.min(stored.len().saturating_mul(4)).min(1 << 30));
    // Read one byte past the length: a stream longer than the manifest says is damage too.
    let limit = o.length.saturating_add(1);
    let res = match o.compression {
        CinderCompression::None => {
            out.extend_from_slice(&stored);
            Ok(0)
        }
        CinderCompression::Zlib => flate2::read::ZlibDecoder::new(&stored[..])
            .take(limit)
            .read_to_end(&mut out),
        CinderCompression::Bz2 => bzip2::read::BzDecoder::new(&stored[..])
            .take(limit)
            .read_to_end(&mut out),
        CinderCompression::Zstd => zstd::stream::read::Decoder::new(&stored[..])
            .and_then(|d| d.take(limit).read_to_end(&mut out)),
    };
    res.map_err(|e| bad(format!("does not decompress: {e}")))?;
    if out.len() as u64 != o.length {
        return Err(bad(format!(
            "holds {} bytes, the manifest says {}",
            out.len(),
            o.length
        )));
    }
    if md5::Md5::digest(&out)[..] != o.md5 {
        return Err(bad("MD5 differs from the manifest's".into()));
    }
    Ok(out)
}
