//! The native half of the `volback` Python package (`volback._volback`).
//!
//! `NativeContainer` wraps an open container: backup, restore, delete, export/import of
//! records, list, verify and gc. `NativeCinderSource` reads backups Cinder's own drivers
//! wrote: lists, restores and adopts them. `NativeNbdServer` serves a backup over NBD. Every call releases the GIL for its native
//! work; it re-takes it only to read a file-like volume (`source.rs`) and to call the progress
//! callback (`progress.rs`), which may stop the operation. Reports cross the boundary as JSON
//! text that the Python side parses into typed dictionaries; errors as `VolbackError(kind,
//! message)`, which the Python side maps to one exception class per kind.

mod cinder_source;
mod container;
mod errors;
mod nbd_server;
mod progress;
mod source;

use pyo3::prelude::*;

/// The module `volback._volback`.
#[pymodule]
fn _volback(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<container::NativeContainer>()?;
    m.add_class::<cinder_source::NativeCinderSource>()?;
    m.add_class::<nbd_server::NativeNbdServer>()?;
    m.add_class::<progress::CancelToken>()?;
    m.add("VolbackError", m.py().get_type::<errors::VolbackError>())?;
    m.add("KINDS", volback::KINDS.to_vec())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
