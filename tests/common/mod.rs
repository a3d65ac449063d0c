//! Shared helpers for integration tests: deterministic volume images and edits.
#![allow(dead_code)]

pub mod backend;
pub mod sched;

/// Runs each named scenario `fn(&Env)` as a test on a filesystem container and on a real S3
/// server.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod fs {
            $( #[test] fn $name() { super::$name(&super::Env::fs()); } )*
        }
        mod s3 {
            $( #[test] fn $name() { super::$name(&super::Env::s3()); } )*
        }
    };
}

/// Like `on_both_backends!`, and on Ceph's RADOS Gateway too, for tests that reach the
/// container only through its store (they do not damage objects as files).
#[macro_export]
macro_rules! on_all_backends {
    ($($name:ident),* $(,)?) => {
        on_both_backends!($($name),*);
        mod rgw {
            $( #[test] fn $name() { super::$name(&super::Env::rgw()); } )*
        }
    };
}

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Deterministic pseudo-random bytes; any seed (mixed so that 0 and small seeds are fine).
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    volback_testkit::testdata::pseudo_random(len, seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
}

/// Somewhat compressible data: random words from a small vocabulary.
pub fn text_like(len: usize, seed: u64) -> Vec<u8> {
    let r = pseudo_random(len / 4 + 8, seed);
    let words: [&[u8]; 8] = [
        b"volume ", b"block ", b"backup ", b"chunk ", b"zero ", b"pack\n", b"index ", b"0123 ",
    ];
    let mut out = Vec::with_capacity(len + 8);
    let mut i = 0;
    while out.len() < len {
        out.extend_from_slice(words[(r[i % r.len()] % 8) as usize]);
        i += 1;
    }
    out.truncate(len);
    out
}

/// Writes an image of `size` bytes: random and text-like regions with zero gaps, plus a sparse
/// tail hole.
pub fn make_image(path: &Path, size: u64, seed: u64) {
    let mut f = File::create(path).unwrap();
    let mut off = 0u64;
    let mut k = 0u64;
    let data_end = size - size / 8;
    while off < data_end {
        let n = (1 << 20).min(data_end - off) as usize;
        let block = match k % 4 {
            0 => pseudo_random(n, seed + k),
            1 => text_like(n, seed + k),
            2 => vec![0u8; n],
            _ => {
                let mut b = pseudo_random(n, seed + k);
                b[n / 3..n / 2].fill(0);
                b
            }
        };
        f.write_all(&block).unwrap();
        off += n as u64;
        k += 1;
    }
    f.set_len(size).unwrap();
}

/// Overwrites `len` bytes at `offset` with fresh random data.
pub fn write_at(path: &Path, offset: u64, len: usize, seed: u64) {
    let f = OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(&pseudo_random(len, seed), offset).unwrap();
}

/// Scattered small writes: `count` writes of 4 KiB spread over the image.
pub fn scattered_writes(path: &Path, count: u64, seed: u64) {
    let size = std::fs::metadata(path).unwrap().len();
    let pos = pseudo_random(count as usize * 8, seed);
    for i in 0..count as usize {
        let r = u64::from_le_bytes(pos[i * 8..i * 8 + 8].try_into().unwrap());
        let off = (r % (size - 4096)) & !4095;
        write_at(path, off, 4096, seed + i as u64);
    }
}

/// Asserts two files have identical contents (with a useful message on mismatch).
pub fn assert_same(a: &Path, b: &Path) {
    let x = std::fs::read(a).unwrap();
    let y = std::fs::read(b).unwrap();
    assert_eq!(
        x.len(),
        y.len(),
        "{} and {} differ in length",
        a.display(),
        b.display()
    );
    if let Some(i) = x.iter().zip(&y).position(|(p, q)| p != q) {
        panic!("{} and {} differ at byte {i}", a.display(), b.display());
    }
}

/// Bytes actually allocated on disk for a file.
pub fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().blocks() * 512
}

/// Total size of all files under a directory.
pub fn dir_size(path: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(path).unwrap() {
        let e = e.unwrap();
        let m = e.metadata().unwrap();
        total += if m.is_dir() {
            dir_size(&e.path())
        } else {
            m.len()
        };
    }
    total
}

/// Copies a directory tree.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap_or_else(|e| panic!("{}: {e}", from.display())) {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// Options for backup `id` of volume "vol", incremental of `parent` if given.
pub fn backup_opts(id: &str, parent: Option<&str>) -> volback::backup::BackupOptions {
    volback::backup::BackupOptions {
        backup_id: Some(id.into()),
        volume_id: "vol".into(),
        parent_id: parent.map(String::from),
        ..Default::default()
    }
}

/// Backs up the file `vol` into `c` as `id` (panics with the error otherwise).
pub fn backup_file(
    c: &volback::container::Container,
    vol: &Path,
    id: &str,
    parent: Option<&str>,
) -> volback::backup::BackupReport {
    let source = volback::backup::source::VolumeSource::Path(vol.into());
    volback::backup::run_backup(c, source, &backup_opts(id, parent), None)
        .unwrap_or_else(|e| panic!("backup {id}: {e}"))
        .2
}

/// Every file under `dir`, at any depth (a container's objects, say).
pub fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// A container config with tiny chunks (2 KiB on average) and 1 MiB packs: many chunks and packs
/// from small volumes.
#[allow(dead_code)]
pub fn tiny_chunks() -> volback::format::config::ContainerConfig {
    volback::format::config::ContainerConfig {
        chunker: volback::chunker::ChunkerParams {
            min: 512,
            avg: 2048,
            max: 8192,
            zero_min: 4096,
        },
        pack_target: 1 << 20,
        ..Default::default()
    }
}
