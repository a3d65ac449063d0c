//! Backups for unit tests elsewhere in the crate: volumes of bytes that do not repeat, backed up
//! from memory.

use super::source::VolumeSource;
use super::{BackupOptions, run_backup};
use crate::container::Container;
use crate::format::manifest::Manifest;

/// `len` bytes that do not repeat (so every chunk is new), from a seed.
pub(crate) fn volume(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Backs `data` up as backup `id` of volume `volume_id` (an incremental of `parent`, if given).
pub(crate) fn backup(
    c: &Container,
    id: &str,
    volume_id: &str,
    parent: Option<&str>,
    data: Vec<u8>,
) -> Manifest {
    let source = VolumeSource::Reader {
        name: id.into(),
        reader: Box::new(std::io::Cursor::new(data)),
    };
    let opts = BackupOptions {
        backup_id: Some(id.into()),
        volume_id: volume_id.into(),
        parent_id: parent.map(Into::into),
        ..Default::default()
    };
    match run_backup(c, source, &opts, None) {
        Ok((m, _, _)) => m,
        Err(e) => panic!("backup {id}: {e}"),
    }
}
