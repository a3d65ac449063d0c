//! `NativeNbdServer`: a backup served over NBD on a background thread (see `volback::serve`).

use std::sync::Mutex;
use std::thread::JoinHandle;

use pyo3::prelude::*;

use crate::errors::to_py;
use volback::container::Container;
use volback::serve::{Export, Listen, NbdServer, ServeOptions, Stopper, default_socket};

/// A running NBD server; stopped by `stop()` or when collected.
#[pyclass(module = "volback._volback", frozen)]
pub struct NativeNbdServer {
    uri: String,
    export: std::sync::Arc<Export>,
    stopper: Stopper,
    thread: Mutex<Option<JoinHandle<volback::Result<()>>>>,
}

impl NativeNbdServer {
    /// Binds (in the caller, so errors surface at once) and starts serving on a thread.
    pub fn start(
        py: Python<'_>,
        container: &Container,
        backup_id: &str,
        socket: Option<String>,
        tcp: Option<String>,
        options: ServeOptions,
    ) -> PyResult<NativeNbdServer> {
        let at = match (socket, tcp) {
            (Some(_), Some(_)) => {
                return Err(to_py(volback::Error::Config(
                    "give a socket or a TCP address, not both".into(),
                )));
            }
            (_, Some(addr)) => Listen::Tcp(addr.parse().map_err(|e| {
                to_py(volback::Error::Config(format!(
                    "bad TCP address '{addr}': {e}"
                )))
            })?),
            (Some(path), None) => Listen::Unix(path.into()),
            (None, None) => Listen::Unix(default_socket(backup_id)),
        };
        let server = py
            .detach(|| NbdServer::bind(container, backup_id, &at, &options))
            .map_err(to_py)?;
        let (uri, export, stopper) = (server.uri(), server.export().clone(), server.stopper());
        let thread = std::thread::Builder::new()
            .name("volback-nbd-accept".into())
            .spawn(move || server.run())
            .map_err(|e| to_py(volback::Error::Internal(format!("server thread: {e}"))))?;
        Ok(NativeNbdServer {
            uri,
            export,
            stopper,
            thread: Mutex::new(Some(thread)),
        })
    }
}

#[pymethods]
impl NativeNbdServer {
    /// The export's URI for QEMU's tools.
    #[getter]
    fn uri(&self) -> String {
        self.uri.clone()
    }

    /// The volume's size in bytes.
    #[getter]
    fn size(&self) -> u64 {
        self.export.size()
    }

    /// The export's counters as JSON.
    fn stats(&self) -> String {
        serde_json::to_string(&self.export.stats()).unwrap_or_default()
    }

    /// Stops accepting clients, disconnects those connected and waits for the server thread.
    fn stop(&self, py: Python<'_>) -> PyResult<()> {
        self.stopper.stop();
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = thread {
            py.detach(|| t.join())
                .map_err(|_| to_py(volback::Error::Internal("server thread panicked".into())))?
                .map_err(to_py)?;
        }
        Ok(())
    }
}

impl Drop for NativeNbdServer {
    fn drop(&mut self) {
        self.stopper.stop();
    }
}
