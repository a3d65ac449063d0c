//! Where the server listens: a Unix socket (the default: reachable only through the file
//! system's permissions) or TCP (for a client on another host or in a VM's network).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::nbd_protocol::Stream;

/// The address to listen on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// A Unix socket at this path. A stale socket left by a server that was killed is
    /// replaced; a socket a live server answers on is an error.
    Unix(PathBuf),
    /// A TCP address (port 0: any free port).
    Tcp(SocketAddr),
}

/// A bound listener.
pub(crate) enum Listener {
    Unix(UnixListener, PathBuf),
    Tcp(TcpListener, SocketAddr),
}

/// Longest Unix socket path the kernel takes (`sun_path` holds 108 bytes with the NUL).
const UNIX_PATH_MAX: usize = 107;

impl Listener {
    pub(crate) fn bind(at: &Listen) -> Result<Listener> {
        match at {
            Listen::Unix(path) => {
                if path.as_os_str().len() > UNIX_PATH_MAX {
                    return Err(Error::Config(format!(
                        "socket path {} is longer than the {UNIX_PATH_MAX} bytes a Unix socket \
                         allows",
                        path.display()
                    )));
                }
                remove_stale_socket(path)?;
                let l = UnixListener::bind(path).map_err(|e| Error::io("listen on", path, e))?;
                Ok(Listener::Unix(l, path.clone()))
            }
            Listen::Tcp(addr) => {
                let l = TcpListener::bind(addr)
                    .map_err(|e| Error::io("listen on", addr.to_string(), e))?;
                let addr = l
                    .local_addr()
                    .map_err(|e| Error::io("listen on", addr.to_string(), e))?;
                Ok(Listener::Tcp(l, addr))
            }
        }
    }

    pub(crate) fn accept(&self) -> std::io::Result<Stream> {
        match self {
            Listener::Unix(l, _) => l.accept().map(|(s, _)| Stream::Unix(s)),
            Listener::Tcp(l, _) => l.accept().map(|(s, _)| {
                // Reply headers go out at once, not held back for the data behind them.
                let _ = s.set_nodelay(true);
                Stream::Tcp(s)
            }),
        }
    }

    /// Connects to the listener once, to wake a thread blocked in [`accept`](Self::accept).
    pub(crate) fn poke(&self) {
        let _ = match self {
            Listener::Unix(_, path) => UnixStream::connect(path).map(drop),
            Listener::Tcp(_, addr) => TcpStream::connect(addr).map(drop),
        };
    }

    /// The export's URI in the form QEMU's tools take (`nbd+unix:///NAME?socket=PATH` or
    /// `nbd://HOST:PORT/NAME`).
    pub(crate) fn uri(&self, name: &str) -> String {
        match self {
            Listener::Unix(_, path) => format!("nbd+unix:///{name}?socket={}", path.display()),
            Listener::Tcp(_, addr) => format!("nbd://{addr}/{name}"),
        }
    }

    /// Removes a Unix socket's file (a stopped server leaves nothing behind to connect to).
    pub(crate) fn remove_socket(&self) {
        if let Listener::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.remove_socket();
    }
}

/// Removes a socket file nobody answers on; refuses to touch anything else.
fn remove_stale_socket(path: &Path) -> Result<()> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(Error::Config(format!(
            "{} exists and is not a socket",
            path.display()
        )));
    }
    if UnixStream::connect(path).is_ok() {
        return Err(Error::Config(format!(
            "a server is already listening on {}",
            path.display()
        )));
    }
    std::fs::remove_file(path).map_err(|e| Error::io("remove stale socket", path, e))
}
