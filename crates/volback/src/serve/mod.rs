//! Instant recovery: a backup served as a read-only block device over NBD, so a VM boots from
//! it (through a qcow2 overlay that takes its writes) or a copy tool reads it, seconds after the
//! server starts, whatever the volume's size.
//!
//! ```text
//! NbdServer::bind ── Listener (listener.rs): Unix socket by default, or TCP
//!   └─ per client: nbd.rs ── handshake, then requests on WORKERS threads
//!        └─ Export (export.rs) ── read / block status / read-ahead
//!             ├─ ExtentMap (extent_map.rs): offset → extents, from checkpoints per
//!             │    extent-list chunk, walked in the background
//!             └─ ChunkCache (cache.rs): verified chunks, LRU, bounded in bytes
//!                  └─ Container::fetch_range: ranged reads of packs, BLAKE3-checked
//! ```
//!
//! **Time to first byte.** Opening the export reads the manifest and the backup's chunk
//! locations from the index ([`LocationTable`](crate::restore::locations::LocationTable),
//! bounded memory), then
//! listens; the extent list is walked in the background and a read waits only until the walk
//! has passed its range. The first blocks of a volume are served after a few requests whatever
//! its size.
//!
//! **Memory** is the cache's capacity (`cache_bytes`), plus what requests in flight hold (at
//! most [`WORKERS`] × [`MAX_REQUEST`] per connection, far less for a typical client's 64 KiB–2
//! MiB reads), plus one checkpoint per extent-list chunk (~100 bytes per ~7 MiB of volume: 15
//! KiB for a TiB) and the backup's chunk locations' in-memory part (half a byte per chunk).
//!
//! **Integrity.** Every chunk is decompressed and checked against its BLAKE3 id before any of
//! its bytes are served or cached. A damaged or missing chunk fails that request with `EIO`
//! (logged with the pack and offset); other requests go on.
//!
//! **Zeros.** `NBD_CMD_BLOCK_STATUS` on `base:allocation` reports the backup's zero extents as
//! holes that read as zeros (`qemu-img convert` and `map` skip them) without reading anything.
//!
//! **Leases.** The export holds a reader's lease for as long as it is open: a concurrent
//! `delete` + `gc` does not sweep a chunk it may still read, and the collector's sweep of packs
//! condemned meanwhile waits until the server stops.

pub mod cache;
pub mod export;
pub mod extent_map;
pub mod listener;
mod nbd;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub use export::{Export, ExportStats, MAX_REQUEST};
pub use listener::Listen;
pub use nbd::WORKERS;

use crate::container::Container;
use crate::error::Result;
use crate::nbd_protocol::Stream;
use listener::Listener;

/// Default cache capacity.
pub const DEFAULT_CACHE_BYTES: u64 = 256 << 20;
/// Default read-ahead window for sequential readers.
pub const DEFAULT_READ_AHEAD: u64 = 32 << 20;

/// How a backup is served.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Chunk cache capacity in bytes.
    pub cache_bytes: u64,
    /// How far ahead of a sequential reader chunks are fetched (capped at a quarter of the
    /// cache; 0: no read-ahead).
    pub read_ahead: u64,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            cache_bytes: DEFAULT_CACHE_BYTES,
            read_ahead: DEFAULT_READ_AHEAD,
        }
    }
}

/// The default Unix socket for a backup: `$TMPDIR/volback-<backup id>.sock`.
pub fn default_socket(backup_id: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("volback-{backup_id}.sock"))
}

/// Serves one client already connected on `stream` (a socket a supervisor accepted, or one
/// end of a socket pair) until it disconnects; no listener is involved.
pub fn serve_stream(
    export: &Arc<Export>,
    stream: std::os::unix::net::UnixStream,
) -> std::io::Result<()> {
    nbd::serve_connection(export, Stream::Unix(stream))
}

/// A backup served over NBD.
pub struct NbdServer {
    export: Arc<Export>,
    listener: Arc<Listener>,
    state: Arc<State>,
}

#[derive(Default)]
struct State {
    stopped: AtomicBool,
    /// The open connections by number, to be closed on stop.
    clients: Mutex<HashMap<u64, Stream>>,
    next_client: AtomicU64,
}

impl State {
    fn clients(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Stream>> {
        self.clients.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Stops a running server from another thread.
#[derive(Clone)]
pub struct Stopper {
    listener: Arc<Listener>,
    state: Arc<State>,
}

impl Stopper {
    /// Stops accepting clients and disconnects those connected; [`NbdServer::run`] returns.
    pub fn stop(&self) {
        if self.state.stopped.swap(true, Ordering::SeqCst) {
            return;
        }
        self.listener.poke();
        for c in self.state.clients().drain().map(|(_, c)| c) {
            c.shutdown();
        }
    }
}

impl NbdServer {
    /// Opens backup `backup_id` of `container` for serving and listens on `at`. Clients are
    /// served once [`run`](Self::run) is called.
    pub fn bind(
        container: &Container,
        backup_id: &str,
        at: &Listen,
        options: &ServeOptions,
    ) -> Result<NbdServer> {
        let export = Export::open(
            container,
            backup_id,
            options.cache_bytes,
            options.read_ahead,
        )?;
        let listener = Arc::new(Listener::bind(at)?);
        Ok(NbdServer {
            export,
            listener,
            state: Arc::default(),
        })
    }

    /// The export's URI for QEMU's tools: `nbd+unix:///?socket=PATH` or `nbd://HOST:PORT/`
    /// (the default export: the server has one).
    pub fn uri(&self) -> String {
        self.listener.uri("")
    }

    /// The export (its size and counters).
    pub fn export(&self) -> &Arc<Export> {
        &self.export
    }

    /// A handle that stops the server.
    pub fn stopper(&self) -> Stopper {
        Stopper {
            listener: self.listener.clone(),
            state: self.state.clone(),
        }
    }

    /// Accepts clients, each served on its own threads, until stopped.
    pub fn run(&self) -> Result<()> {
        loop {
            let stream = match self.listener.accept() {
                Ok(s) => s,
                Err(e) => {
                    if self.state.stopped.load(Ordering::SeqCst) {
                        self.listener.remove_socket();
                        return Ok(());
                    }
                    tracing::warn!(error = %e, "accept failed");
                    std::thread::sleep(std::time::Duration::from_millis(50));
                    continue;
                }
            };
            if self.state.stopped.load(Ordering::SeqCst) {
                // Removed here, before `run` returns: a process that exits right after must
                // not leave its socket behind (the stopper's thread may never run again).
                self.listener.remove_socket();
                return Ok(());
            }
            let n = self.state.next_client.fetch_add(1, Ordering::Relaxed);
            if let Ok(c) = stream.try_clone() {
                self.state.clients().insert(n, c);
            }
            let (export, state) = (self.export.clone(), self.state.clone());
            let spawned = std::thread::Builder::new()
                .name("volback-nbd".into())
                .spawn(move || {
                    if let Err(e) = nbd::serve_connection(&export, stream) {
                        tracing::debug!(error = %e, "NBD client disconnected");
                    }
                    state.clients().remove(&n);
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "no thread for an NBD client");
            }
        }
    }
}
