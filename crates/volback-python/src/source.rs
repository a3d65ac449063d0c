//! Volumes and targets from Python objects.
//!
//! A real file descriptor (an `int`, or an object whose `fileno()` returns one) is opened again
//! through `/proc/self/fd/N`: the engine then reads it positionally, skips a sparse file's
//! holes, and sizes a block device, as for a path. A `str` or `os.PathLike` is a path. Any
//! other object with `read(n)` (os-brick hands those out for RBD and some transports) is read
//! in large blocks, taking the GIL for each block only; a restore writes such an object front
//! to back, in blocks of megabytes.

use std::io::Read;
use std::path::PathBuf;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};

use volback::restore::StreamSink;

use crate::errors;

/// Where a Python object points.
pub enum Located {
    /// A path (a real descriptor is reached through `/proc/self/fd`).
    Path(PathBuf),
    /// A file-like object without a descriptor.
    Stream(Py<PyAny>),
}

/// Resolves `obj` to a path or a stream.
pub fn locate(obj: &Bound<'_, PyAny>) -> PyResult<Located> {
    if let Ok(fd) = obj.extract::<i32>() {
        return fd_path(fd);
    }
    if obj.is_instance_of::<PyString>() {
        return Ok(Located::Path(PathBuf::from(obj.extract::<String>()?)));
    }
    if obj.hasattr("__fspath__")? {
        let p = obj.call_method0("__fspath__")?;
        return Ok(Located::Path(PathBuf::from(p.extract::<String>()?)));
    }
    if obj.hasattr("fileno")? {
        // io.UnsupportedOperation (an in-memory stream) means: no descriptor, read it instead.
        if let Ok(fd) = obj.call_method0("fileno").and_then(|f| f.extract::<i32>()) {
            return fd_path(fd);
        }
    }
    if obj.hasattr("read")? || obj.hasattr("write")? {
        return Ok(Located::Stream(obj.clone().unbind()));
    }
    Err(errors::config(format!(
        "expected a path, a file descriptor or a file object, got {}",
        obj.get_type().name()?
    )))
}

fn fd_path(fd: i32) -> PyResult<Located> {
    if fd < 0 {
        return Err(errors::config(format!("invalid file descriptor {fd}")));
    }
    Ok(Located::Path(PathBuf::from(format!("/proc/self/fd/{fd}"))))
}

/// A Python file object as a `Read`: one `read(n)` call per engine buffer.
pub struct PyReader {
    obj: Py<PyAny>,
}

impl PyReader {
    pub fn new(obj: Py<PyAny>) -> Self {
        PyReader { obj }
    }
}

impl Read for PyReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        Python::attach(|py| {
            let data = self
                .obj
                .call_method1(py, "read", (buf.len(),))
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            let data = data.bind(py);
            if data.is_none() {
                // A non-blocking stream with nothing yet: ask again.
                return Err(std::io::Error::from(std::io::ErrorKind::Interrupted));
            }
            let bytes = data
                .cast::<PyBytes>()
                .map_err(|_| std::io::Error::other("the volume's read() did not return bytes"))?;
            let b = bytes.as_bytes();
            if b.len() > buf.len() {
                return Err(std::io::Error::other(
                    "the volume's read() returned more bytes than asked for",
                ));
            }
            buf[..b.len()].copy_from_slice(b);
            Ok(b.len())
        })
    }
}

/// A Python file object as a restore's sequential target: one `write()` per block of
/// megabytes (short writes continued), gaps skipped with `seek(n, SEEK_CUR)` where the object
/// is seekable and the volume is new, `flush()` at the end.
pub struct PyWriter {
    obj: Py<PyAny>,
    seekable: bool,
}

impl PyWriter {
    pub fn new(obj: &Bound<'_, PyAny>) -> PyResult<Self> {
        let seekable = obj.hasattr("seek")?
            && match obj.getattr("seekable") {
                Ok(f) => f.call0()?.is_truthy()?,
                Err(_) => true,
            };
        Ok(PyWriter {
            obj: obj.clone().unbind(),
            seekable,
        })
    }
}

fn py_io(e: PyErr) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// CPython's `PyBUF_READ` (a read-only memoryview), part of the stable ABI; pyo3's constant is
/// not exposed for abi3 builds before Python 3.11.
const PYBUF_READ: std::os::raw::c_int = 0x100;

impl PyWriter {
    /// One `write()` of `data`, handed over as a read-only memoryview of the engine's block (no
    /// copy into a bytes object: a copy per block cost a restore 66 MiB more peak RSS, from
    /// the allocator keeping the freed blocks). The view is released before this returns, so
    /// a `write()` that kept a reference to it gets an error on use, never this memory.
    fn write_once(&self, py: Python<'_>, data: &[u8]) -> PyResult<usize> {
        let len = pyo3::ffi::Py_ssize_t::try_from(data.len())
            .map_err(|_| errors::config("write of more than isize::MAX bytes"))?;
        // SAFETY: a read-only view of `data`, which outlives it: the view is released below,
        // before `data` can be touched again.
        let view = unsafe {
            Bound::from_owned_ptr_or_err(
                py,
                pyo3::ffi::PyMemoryView_FromMemory(
                    data.as_ptr() as *mut std::os::raw::c_char,
                    len,
                    PYBUF_READ,
                ),
            )
        }?;
        let written = self.obj.call_method1(py, "write", (&view,));
        // Fails only while something still holds a buffer exported from the view: then the
        // restore must not go on (that memory is about to be reused).
        view.call_method0("release")?;
        // `None` (a raw stream that would block) and 0 are no progress.
        Ok(written?
            .extract::<Option<usize>>(py)
            .ok()
            .flatten()
            .unwrap_or(0))
    }
}

impl StreamSink for PyWriter {
    fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        Python::attach(|py| {
            let mut rest = data;
            while !rest.is_empty() {
                let n = self.write_once(py, rest).map_err(py_io)?;
                if n == 0 || n > rest.len() {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::WriteZero,
                        format!("the target's write() took {n} of {} bytes", rest.len()),
                    ));
                }
                rest = &rest[n..];
            }
            Ok(())
        })
    }

    fn skip(&mut self, len: u64) -> std::io::Result<bool> {
        if !self.seekable {
            return Ok(false);
        }
        Python::attach(|py| {
            (self.obj)
                .call_method1(py, "seek", (len, 1))
                .map_err(py_io)?;
            Ok(true)
        })
    }

    fn finish(&mut self) -> std::io::Result<()> {
        Python::attach(|py| {
            if self.obj.bind(py).hasattr("flush").map_err(py_io)? {
                self.obj.call_method0(py, "flush").map_err(py_io)?;
            }
            Ok(())
        })
    }
}
