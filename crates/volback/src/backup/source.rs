//! Volume sources: files (sparse-aware), block devices and streams.
//!
//! A regular file is read region by region with `SEEK_DATA`/`SEEK_HOLE`, so the holes of a
//! sparse image are never read: they go straight to the chunker as zero runs. Block devices and
//! streams (stdin, pipes) are read sequentially in large buffers. Every buffer but the last is a
//! multiple of 4 KiB, so zero detection sees whole aligned blocks.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::os::unix::io::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use crate::backup::buffers::BufferPool;
use crate::error::{Error, Result};
use crate::format::manifest::SourceStamp;

/// Bytes read per buffer. With [`READ_BUFS_IN_FLIGHT`] this sets much of a backup's memory:
/// 4 MiB reads cost no speed against 8 MiB here and peak ~30 MiB less (fs-image full backup
/// 112–123 → 83–92 MiB; 16 GiB stream 175 → 132 MiB).
pub const READ_BUF: usize = 4 << 20;

/// Read buffers out at once: being filled, queued for the chunker, cut, or holding chunks the
/// packer has not copied yet. The reader waits for one to come back rather than read further
/// ahead of the pipeline. Without the limit up to ~8 were out, but only when the volume
/// outran the pipeline, so peak memory depended on timing: unchanged incrementals of a
/// 4 GiB and a 16 GiB stream peaked 3–4 and 7 buffers apart. Now the buffers are allocated
/// when reading starts (fewer for a volume smaller than four), so the peak no longer depends on
/// timing. With four (no harness case ran out of buffers even with three) the fs-image full
/// backup is as fast and peaks ~16 MiB lower (`docs/performance.md`, "Decisions").
pub const READ_BUFS_IN_FLIGHT: usize = 4;

/// Where a backup's volume data comes from.
pub enum VolumeSource {
    /// A regular file or a block device.
    Path(PathBuf),
    /// Any stream (stdin, a pipe, a decompressor); `name` is used in messages.
    Reader {
        name: String,
        reader: Box<dyn Read + Send>,
    },
}

impl VolumeSource {
    /// A source reading standard input.
    pub fn stdin() -> Self {
        VolumeSource::Reader {
            name: "<stdin>".into(),
            reader: Box::new(std::io::stdin()),
        }
    }

    /// Name for messages.
    pub fn name(&self) -> String {
        match self {
            VolumeSource::Path(p) => p.display().to_string(),
            VolumeSource::Reader { name, .. } => name.clone(),
        }
    }
}

/// One step of reading a volume, in order.
#[derive(Debug)]
pub enum Input {
    /// The next bytes of the volume.
    Data(Bytes),
    /// The next bytes are a hole (zeros, not read).
    Hole(u64),
}

/// An opened volume: its size if known up front, and a way to read it.
pub struct OpenVolume {
    name: String,
    kind: Kind,
    /// Size in bytes, known for files and block devices.
    pub size: Option<u64>,
    /// A regular file's stamp as it was opened (before any byte is read).
    pub stamp: Option<SourceStamp>,
    /// The file or block device, for reads at offsets (an incremental with a change map);
    /// None for a stream.
    seekable: Option<File>,
}

enum Kind {
    File(File),
    Stream(Box<dyn Read + Send>),
}

impl OpenVolume {
    /// Opens the source (fails early, before any backup state is created).
    pub fn open(source: VolumeSource) -> Result<Self> {
        match source {
            VolumeSource::Path(p) => {
                let f = File::open(&p).map_err(|e| Error::io("open volume", &p, e))?;
                let meta = f.metadata().map_err(|e| Error::io("stat volume", &p, e))?;
                let name = p.display().to_string();
                let seekable = f.try_clone().ok();
                if meta.is_file() {
                    let ns = |s: i64, n: i64| s.saturating_mul(1_000_000_000).saturating_add(n);
                    Ok(OpenVolume {
                        name,
                        size: Some(meta.len()),
                        stamp: Some(SourceStamp {
                            dev: meta.dev(),
                            ino: meta.ino(),
                            size: meta.len(),
                            mtime_ns: ns(meta.mtime(), meta.mtime_nsec()),
                            ctime_ns: ns(meta.ctime(), meta.ctime_nsec()),
                        }),
                        kind: Kind::File(f),
                        seekable,
                    })
                } else if meta.file_type().is_block_device() {
                    let size =
                        block_device_size(&f).map_err(|e| Error::io("size block device", &p, e))?;
                    Ok(OpenVolume {
                        name,
                        size: Some(size),
                        stamp: None,
                        kind: Kind::Stream(Box::new(f)),
                        seekable,
                    })
                } else if meta.is_dir() {
                    Err(Error::io(
                        "open volume",
                        &p,
                        std::io::Error::other("is a directory, not a volume image"),
                    ))
                } else {
                    Ok(OpenVolume {
                        name,
                        size: None,
                        stamp: None,
                        kind: Kind::Stream(Box::new(f)),
                        seekable: None,
                    })
                }
            }
            VolumeSource::Reader { name, reader } => Ok(OpenVolume {
                name,
                size: None,
                stamp: None,
                kind: Kind::Stream(reader),
                seekable: None,
            }),
        }
    }

    /// Name for messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The file or block device, if the volume is one (not a stream).
    pub fn seekable(&self) -> Option<&File> {
        self.seekable.as_ref()
    }

    /// The same volume opened again from its start, for a second pass (a file or block device
    /// only).
    pub fn reopen(&self) -> Result<OpenVolume> {
        let f = self.seekable.as_ref().ok_or_else(|| {
            Error::Internal(format!(
                "volume '{}' is a stream: it cannot be read twice",
                self.name
            ))
        })?;
        let again = |f: &File| {
            f.try_clone()
                .map_err(|e| Error::io("open volume", &self.name, e))
        };
        let kind = if self.stamp.is_some() {
            Kind::File(again(f)?)
        } else {
            let mut dev = again(f)?;
            std::io::Seek::seek(&mut dev, std::io::SeekFrom::Start(0))
                .map_err(|e| Error::io("seek volume", &self.name, e))?;
            Kind::Stream(Box::new(dev))
        };
        Ok(OpenVolume {
            name: self.name.clone(),
            kind,
            size: self.size,
            stamp: self.stamp,
            seekable: Some(again(f)?),
        })
    }

    /// Reads the whole volume in order, handing each step to `sink`; counts bytes actually read
    /// in `read`. Stops early (returning Ok) if `sink` returns false.
    pub fn read_all(self, read: &AtomicU64, mut sink: impl FnMut(Input) -> bool) -> Result<u64> {
        let name = self.name.clone();
        match self.kind {
            Kind::File(f) => read_sparse_file(&name, &f, self.size.unwrap_or(0), read, &mut sink),
            Kind::Stream(mut r) => read_stream(&name, &mut *r, read, &mut sink),
        }
    }
}

fn block_device_size(f: &File) -> std::io::Result<u64> {
    use std::io::{Seek, SeekFrom};
    let mut f = f.try_clone()?;
    let size = f.seek(SeekFrom::End(0))?;
    f.seek(SeekFrom::Start(0))?;
    Ok(size)
}

/// `lseek` with SEEK_DATA / SEEK_HOLE. None means "no more data" (ENXIO); an error means the
/// filesystem does not support it.
fn seek_region(f: &File, pos: u64, whence: i32) -> std::io::Result<Option<u64>> {
    // SAFETY: lseek on a valid open descriptor has no memory-safety preconditions.
    let r = unsafe { libc::lseek(f.as_raw_fd(), pos as libc::off_t, whence) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENXIO) {
            return Ok(None);
        }
        return Err(e);
    }
    Ok(Some(r as u64))
}

fn read_sparse_file(
    name: &str,
    f: &File,
    size: u64,
    read: &AtomicU64,
    sink: &mut dyn FnMut(Input) -> bool,
) -> Result<u64> {
    let mut pos = 0u64;
    let pool = BufferPool::with_limit(READ_BUFS_IN_FLIGHT, READ_BUFS_IN_FLIGHT);
    let bufs = size
        .div_ceil(READ_BUF as u64)
        .min(READ_BUFS_IN_FLIGHT as u64) as usize;
    pool.prefill(bufs, READ_BUF.min(size as usize));
    let sparse_ok = seek_region(f, 0, libc::SEEK_DATA).is_ok();
    while pos < size {
        let (data_start, data_end) = if sparse_ok {
            let start = match seek_region(f, pos, libc::SEEK_DATA) {
                Ok(Some(s)) => s.min(size),
                Ok(None) => size,
                Err(e) => return Err(Error::io("seek volume", name, e)),
            };
            let end = match seek_region(f, start, libc::SEEK_HOLE) {
                Ok(Some(e)) => e.min(size),
                Ok(None) => size,
                Err(e) => return Err(Error::io("seek volume", name, e)),
            };
            (start, end.max(start))
        } else {
            (pos, size)
        };
        if data_start > pos && !sink(Input::Hole(data_start - pos)) {
            return Ok(pos);
        }
        pos = data_start;
        while pos < data_end {
            let n = ((data_end - pos) as usize).min(READ_BUF);
            let mut buf = pool.take(n);
            let mut done = 0;
            while done < n {
                match f.read_at(&mut buf[done..], pos + done as u64) {
                    Ok(0) => {
                        return Err(Error::VolumeTooShort {
                            volume: name.to_string(),
                            expected: size,
                            actual: pos + done as u64,
                        });
                    }
                    Ok(k) => done += k,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(Error::io("read volume", name, e)),
                }
            }
            read.fetch_add(n as u64, Ordering::Relaxed);
            pos += n as u64;
            if !sink(Input::Data(pool.freeze(buf, n))) {
                return Ok(pos);
            }
        }
    }
    Ok(pos)
}

fn read_stream(
    name: &str,
    r: &mut dyn Read,
    read: &AtomicU64,
    sink: &mut dyn FnMut(Input) -> bool,
) -> Result<u64> {
    let mut total = 0u64;
    let pool = BufferPool::with_limit(READ_BUFS_IN_FLIGHT, READ_BUFS_IN_FLIGHT);
    pool.prefill(READ_BUFS_IN_FLIGHT, READ_BUF);
    loop {
        let mut buf = pool.take(READ_BUF);
        let mut done = 0;
        while done < READ_BUF {
            match r.read(&mut buf[done..]) {
                Ok(0) => break,
                Ok(k) => done += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io("read volume", name, e)),
            }
        }
        if done == 0 {
            return Ok(total);
        }
        total += done as u64;
        read.fetch_add(done as u64, Ordering::Relaxed);
        if !sink(Input::Data(pool.freeze(buf, done))) || done < READ_BUF {
            return Ok(total);
        }
    }
}
