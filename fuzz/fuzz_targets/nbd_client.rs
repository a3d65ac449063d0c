#![no_main]
//! What an NBD client sends comes from the network: any bytes, in the handshake or in the requests
//! after it, must give replies or a closed connection; never a panic, a hang or a read past
//! the export. Half the inputs are raw handshakes; the other half are turned into well-formed
//! request headers after a valid handshake, so the fuzzer reaches every command with any
//! flags, offsets and lengths.
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use volback::backup::source::VolumeSource;
use volback::backup::{BackupOptions, run_backup};
use volback::container::Container;
use volback::serve::{Export, serve_stream};
use volback::store::memory::MemStore;

const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const SIZE: usize = 256 << 10;

fn export() -> Arc<Export> {
    static EXPORT: OnceLock<Arc<Export>> = OnceLock::new();
    EXPORT
        .get_or_init(|| {
            // SAFETY: ignoring SIGPIPE only changes how a write to a closed socket is
            // reported (EPIPE instead of killing the process).
            unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
            let c = Container::with_store(
                Arc::new(MemStore::new()),
                "memory://fuzz".into(),
                true,
                None,
            )
            .unwrap();
            // Data, a zero run, data: block status has both kinds to report.
            let mut volume: Vec<u8> = (0..SIZE as u32)
                .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
                .collect();
            volume[64 << 10..128 << 10].fill(0);
            let source = VolumeSource::Reader {
                name: "fuzz".into(),
                reader: Box::new(std::io::Cursor::new(volume)),
            };
            let opts = BackupOptions {
                backup_id: Some("b1".into()),
                volume_id: "v".into(),
                ..Default::default()
            };
            run_backup(&c, source, &opts, None).unwrap();
            Export::open(&c, "b1", 1 << 20, 64 << 10).unwrap()
        })
        .clone()
}

fn option(out: &mut Vec<u8>, opt: u32, data: &[u8]) {
    out.extend_from_slice(&IHAVEOPT.to_be_bytes());
    out.extend_from_slice(&opt.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
}

/// A valid handshake (structured replies, base:allocation, GO), then one request per 16
/// bytes of `data`.
fn requests_after_handshake(data: &[u8]) -> Vec<u8> {
    let mut out = 3u32.to_be_bytes().to_vec();
    option(&mut out, 8, &[]);
    let q = b"base:allocation";
    let mut meta = 0u32.to_be_bytes().to_vec();
    meta.extend_from_slice(&1u32.to_be_bytes());
    meta.extend_from_slice(&(q.len() as u32).to_be_bytes());
    meta.extend_from_slice(q);
    option(&mut out, 10, &meta);
    option(&mut out, 7, &[0, 0, 0, 0, 0, 0]);
    for (cookie, r) in data.chunks_exact(16).enumerate() {
        let flags = u16::from_be_bytes([r[0], r[1]]);
        let kind = u16::from(r[2] % 10);
        let offset = u64::from_be_bytes(r[3..11].try_into().unwrap());
        // Offsets near the export and past it, lengths small and huge.
        let offset = if r[11] & 1 == 0 {
            offset % (SIZE as u64 + 8192)
        } else {
            offset
        };
        let len = u32::from_be_bytes(r[12..16].try_into().unwrap());
        let len = if kind == 1 {
            len % 4096
        } else if r[11] & 2 == 0 {
            len % (SIZE as u32)
        } else {
            len
        };
        out.extend_from_slice(&0x2560_9513u32.to_be_bytes());
        out.extend_from_slice(&flags.to_be_bytes());
        out.extend_from_slice(&kind.to_be_bytes());
        out.extend_from_slice(&(cookie as u64).to_be_bytes());
        out.extend_from_slice(&offset.to_be_bytes());
        out.extend_from_slice(&len.to_be_bytes());
        if kind == 1 {
            out.extend(std::iter::repeat_n(0xa5, len as usize));
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let input = if mode & 1 == 0 {
        rest.to_vec()
    } else {
        requests_after_handshake(rest)
    };
    let export = export();
    let (mut client, server) = UnixStream::pair().unwrap();
    let served = std::thread::spawn(move || {
        let _ = serve_stream(&export, server);
    });
    let mut reader = client.try_clone().unwrap();
    let drained = std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = reader.read_to_end(&mut sink);
    });
    let _ = client.write_all(&input);
    let _ = client.shutdown(std::net::Shutdown::Write);
    served.join().unwrap();
    let _ = client.shutdown(std::net::Shutdown::Both);
    drained.join().unwrap();
});
