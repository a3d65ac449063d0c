//! volback's errors as one Python exception carrying the stable kind string.

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

create_exception!(
    _volback,
    VolbackError,
    PyException,
    "A volback error: args are (kind, message); kind is one of KINDS."
);

/// The Python exception for a volback error.
pub fn to_py(e: volback::Error) -> PyErr {
    VolbackError::new_err((e.kind(), e.to_string()))
}

/// A usage error found by the binding itself (a bad argument type), as kind `config`.
pub fn config(message: impl Into<String>) -> PyErr {
    VolbackError::new_err(("config", message.into()))
}
