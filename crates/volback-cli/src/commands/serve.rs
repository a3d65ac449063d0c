//! `volback serve`: a backup as a read-only NBD export until SIGINT or SIGTERM.

use super::*;
use crate::args::ServeArgs;
use volback::serve::{Listen, NbdServer, ServeOptions, default_socket};

pub fn run(args: ServeArgs, access: &Access) -> Result<Outcome> {
    // The signals are taken by one thread (sigwait) rather than by a handler: blocked here,
    // before any thread starts, every thread inherits the mask.
    let signals = block_stop_signals();
    let c = access.open(&args.container, false, None)?;
    let at = match args.tcp {
        Some(addr) => Listen::Tcp(addr),
        None => Listen::Unix(
            args.socket
                .unwrap_or_else(|| default_socket(&args.backup_id)),
        ),
    };
    let mib = |n: u64, what: &str| {
        n.checked_mul(1 << 20)
            .ok_or_else(|| Error::Config(format!("--{what} {n} is too large")))
    };
    let options = ServeOptions {
        cache_bytes: mib(args.cache_mib, "cache-mib")?,
        read_ahead: mib(args.read_ahead_mib, "read-ahead-mib")?,
    };
    let server = NbdServer::bind(&c, &args.backup_id, &at, &options)?;
    let size = server.export().size();
    if args.json {
        print_json(&json!({"uri": server.uri(), "backup_id": args.backup_id, "size": size}))?;
    } else {
        out!(
            "serving backup {} ({size} bytes) at {}",
            args.backup_id,
            server.uri()
        )?;
    }
    let stopper = server.stopper();
    std::thread::spawn(move || {
        wait_for(signals);
        stopper.stop();
    });
    server.run()?;
    let stats = server.export().stats();
    if args.json {
        print_json(&stats)?;
    } else {
        out!(
            "stopped: {} reads, {} bytes, {} chunks fetched, {} cache hits, {} failed requests",
            stats.reads,
            stats.bytes_read,
            stats.chunks_fetched,
            stats.cache_hits,
            stats.failed
        )?;
    }
    Ok(Outcome::Done)
}

fn block_stop_signals() -> libc::sigset_t {
    // SAFETY: the set is initialised by sigemptyset before use; pthread_sigmask only reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn wait_for(set: libc::sigset_t) {
    let mut sig = 0;
    // SAFETY: `set` was built by block_stop_signals; sigwait writes the signal number.
    unsafe {
        libc::sigwait(&set, &mut sig);
    }
}
