//! Progress callbacks: the native side reports bytes done; the callback may stop the operation.
//!
//! The callable is `progress(done: int, total: int) -> bool | None`. It is called at most every
//! [`INTERVAL`] and once at the end, with the GIL taken for the call only. Returning `False`
//! (or raising) sets the operation's cancel flag: the backup or restore stops at its next
//! batch boundary with kind `cancelled`, and an exception raised by the callback is re-raised
//! in its place.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pyo3::prelude::*;

/// Least time between two calls of the callback.
pub const INTERVAL: Duration = Duration::from_millis(250);

/// A cancellation flag the caller holds: `cancel()` stops the operation it was handed to at its
/// next check (between ranges of a restore window, between batches of a backup).
#[pyclass(module = "volback._volback", frozen)]
pub struct CancelToken {
    pub flag: Arc<AtomicBool>,
}

#[pymethods]
impl CancelToken {
    #[new]
    fn new() -> Self {
        CancelToken {
            flag: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Asks the operation to stop.
    fn cancel(&self) {
        self.flag.store(true, Ordering::Relaxed);
    }

    /// Whether `cancel()` was called.
    #[getter]
    fn cancelled(&self) -> bool {
        self.flag.load(Ordering::Relaxed)
    }
}

/// A Python progress callback as the engine's `Fn(u64)`.
pub struct Reporter {
    callback: Option<Py<PyAny>>,
    total: u64,
    last: Mutex<Option<Instant>>,
    /// Set when the callback asks to stop; handed to the engine's options.
    pub cancel: Arc<AtomicBool>,
    /// What the callback raised, if it did.
    raised: Mutex<Option<PyErr>>,
}

impl Reporter {
    /// A reporter for `callback` (None: only the cancel flag) out of `total` bytes, sharing
    /// the caller's cancel token if it gave one.
    pub fn new(callback: Option<Py<PyAny>>, total: u64, token: Option<&CancelToken>) -> Self {
        Reporter {
            callback,
            total,
            last: Mutex::new(None),
            cancel: token.map_or_else(|| Arc::new(AtomicBool::new(false)), |t| t.flag.clone()),
            raised: Mutex::new(None),
        }
    }

    /// Reports `done` bytes (throttled; always at the end).
    pub fn report(&self, done: u64) {
        let Some(cb) = &self.callback else { return };
        if self.cancel.load(Ordering::Relaxed) {
            return;
        }
        {
            let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            let end = self.total > 0 && done >= self.total;
            let due = last.is_none_or(|t| t.elapsed() >= INTERVAL) || end;
            if !due {
                return;
            }
            *last = Some(Instant::now());
        }
        // With no total known (a stream), `total` is 0 and `done` is passed as is.
        let done = if self.total > 0 {
            done.min(self.total)
        } else {
            done
        };
        Python::attach(|py| match cb.call1(py, (done, self.total)) {
            Ok(v) => {
                if v.bind(py).is_instance_of::<pyo3::types::PyBool>()
                    && !v.is_truthy(py).unwrap_or(true)
                {
                    self.cancel.store(true, Ordering::Relaxed);
                }
            }
            Err(e) => {
                *self.raised.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                self.cancel.store(true, Ordering::Relaxed);
            }
        });
    }

    /// The exception the callback raised, if any (it replaces the engine's `cancelled`).
    pub fn take_raised(&self) -> Option<PyErr> {
        self.raised.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}
