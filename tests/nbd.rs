//! A backup served over NBD (`volback::serve`), read by QEMU's own tools from Debian's
//! qemu-utils (`qemu-img`, `qemu-io`), on a filesystem container and on S3: whole exports and
//! random ranges byte-identical to the volume, zero extents reported as zeros, a qcow2 overlay
//! taking writes while the backup stays untouched, and a damaged chunk surfacing as an I/O
//! error, never as wrong bytes.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use common::backend::Env;
use common::*;
use volback::serve::{Export, Listen, NbdServer, ServeOptions, Stopper};

on_all_backends!(
    a_damaged_chunk_is_an_io_error_not_wrong_bytes,
    qemu_reads_the_backup_byte_for_byte_and_skips_its_zeros,
    a_qcow2_overlay_takes_writes_and_leaves_the_backup_untouched,
);

/// A server running on its own thread until dropped.
struct Served {
    uri: String,
    stopper: Stopper,
    export: Arc<Export>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.stopper.stop();
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

fn serve(e: &Env, backup_id: &str, at: Listen, options: &ServeOptions) -> Served {
    let server = NbdServer::bind(&e.c, backup_id, &at, options).unwrap();
    let uri = server.uri();
    let stopper = server.stopper();
    let export = server.export().clone();
    let thread = std::thread::spawn(move || server.run().unwrap());
    Served {
        uri,
        stopper,
        export,
        thread: Some(thread),
    }
}

fn socket(e: &Env) -> Listen {
    Listen::Unix(e.root.join("nbd.sock"))
}

fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd} (Debian's qemu-utils) is needed: {e}"))
}

fn ok(cmd: &str, args: &[&str]) -> String {
    let out = run(cmd, args);
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `qemu-img convert` of a whole image (`format`: raw or qcow2) to a raw file.
fn convert(format: &str, from: &str, out: &Path) -> Output {
    let _ = std::fs::remove_file(out);
    let out = out.display().to_string();
    run(
        "qemu-img",
        &["convert", "-f", format, "-O", "raw", from, &out],
    )
}

/// [`convert`], which must succeed; the copy's bytes.
fn copy_of(format: &str, from: &str, out: &Path) -> Vec<u8> {
    let r = convert(format, from, out);
    assert!(
        r.status.success(),
        "{from}: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    std::fs::read(out).unwrap()
}

/// `qemu-img convert` of `[offset, offset + len)` of the export (the raw driver's offset and
/// size options over the NBD protocol driver) into a file.
fn convert_range(uri: &str, offset: u64, len: u64, out: &Path) -> Vec<u8> {
    let opts = format!(
        "driver=raw,offset={offset},size={len},file.driver=nbd,file.path={},file.export=",
        socket_path(uri).display()
    );
    let _ = std::fs::remove_file(out);
    ok(
        "qemu-img",
        &[
            "convert",
            "--image-opts",
            &opts,
            "-O",
            "raw",
            &out.display().to_string(),
        ],
    );
    std::fs::read(out).unwrap()
}

fn socket_path(uri: &str) -> PathBuf {
    PathBuf::from(uri.split("socket=").nth(1).unwrap())
}

fn qemu_reads_the_backup_byte_for_byte_and_skips_its_zeros(e: &Env) {
    let img = e.root.join("vol.img");
    let size = 40u64 << 20;
    make_image(&img, size, 11);
    let whole = std::fs::read(&img).unwrap();
    backup_file(&e.c, &img, "b1", None);
    // A small cache and read-ahead: chunks are evicted and fetched again during the copy.
    let options = ServeOptions {
        cache_bytes: 8 << 20,
        read_ahead: 2 << 20,
    };
    let s = serve(e, "b1", socket(e), &options);
    assert_eq!(s.export.size(), size);

    // The whole export, as an operator copies it to a new volume.
    let out = e.root.join("copy.img");
    assert!(
        copy_of("raw", &s.uri, &out) == whole,
        "whole export differs"
    );
    // Zero extents were reported by block status and skipped, not read: the copy read at most
    // the volume less its zero MiBs (the third of every four).
    let zero_mibs = (0..(size - size / 8) >> 20).filter(|k| k % 4 == 2).count() as u64;
    let stats = s.export.stats();
    assert!(stats.chunks_fetched > 0);
    assert!(
        stats.bytes_read <= size - (zero_mibs << 20),
        "the copy read {} of {size} bytes",
        stats.bytes_read
    );

    // Random ranges. In whole sectors: QEMU's raw driver takes sizes in sectors, and
    // `convert` rounds the zero ranges it writes to sectors of its output (unaligned byte
    // ranges are checked against the export directly below).
    let r = pseudo_random(16 * 12, 5);
    for i in 0..12 {
        let a = (u64::from_le_bytes(r[i * 16..i * 16 + 8].try_into().unwrap()) % size) & !511;
        let l =
            512 * (1 + u64::from_le_bytes(r[i * 16 + 8..i * 16 + 16].try_into().unwrap()) % 6000);
        let a = a.min(size - l);
        let got = convert_range(&s.uri, a, l, &e.root.join("range.img"));
        let want = &whole[a as usize..(a + l) as usize];
        let first = got.iter().zip(want).position(|(x, y)| x != y);
        assert!(
            got == want,
            "range {a}+{l} differs: {} bytes, first difference at {first:?}",
            got.len()
        );
    }

    // Block status: `qemu-img map` shows every zero MiB of the image (the third of every four)
    // as zero, and no range holding a non-zero byte as zero.
    let map: serde_json::Value =
        serde_json::from_str(&ok("qemu-img", &["map", "--output=json", &s.uri])).unwrap();
    let mut zero_bytes = 0u64;
    for m in map.as_array().unwrap() {
        let (start, len) = (m["start"].as_u64().unwrap(), m["length"].as_u64().unwrap());
        if m["zero"].as_bool().unwrap() {
            assert!(
                whole[start as usize..(start + len) as usize]
                    .iter()
                    .all(|&b| b == 0),
                "{start}+{len} reported zero"
            );
            assert!(!m["data"].as_bool().unwrap());
            zero_bytes += len;
        }
    }
    assert!(zero_bytes >= zero_mibs << 20, "{zero_bytes} zero bytes");
    // Answering block status read no chunk data.
    assert_eq!(s.export.stats().failed, 0);

    // TCP, and the export's name: the backup id and the default name serve it, another not.
    drop(s);
    let t = serve(
        e,
        "b1",
        Listen::Tcp("127.0.0.1:0".parse().unwrap()),
        &options,
    );
    let info = ok("qemu-img", &["info", "--output=json", &t.uri]);
    assert!(
        info.contains(&format!("\"virtual-size\": {size}")),
        "{info}"
    );
    let named = format!("{}b1", t.uri);
    let copy = e.root.join("named.img");
    assert!(copy_of("raw", &named, &copy) == whole);
    let wrong = format!("{}other", t.uri);
    assert!(!run("qemu-img", &["info", &wrong]).status.success());
}

fn a_qcow2_overlay_takes_writes_and_leaves_the_backup_untouched(e: &Env) {
    let img = e.root.join("vol.img");
    let size = 16u64 << 20;
    make_image(&img, size, 12);
    let whole = std::fs::read(&img).unwrap();
    backup_file(&e.c, &img, "b1", None);
    let s = serve(e, "b1", socket(e), &ServeOptions::default());
    // The instant-recovery recipe: a qcow2 overlay whose backing file is the export.
    let overlay = e.root.join("overlay.qcow2");
    let overlay_s = overlay.display().to_string();
    ok(
        "qemu-img",
        &[
            "create", "-f", "qcow2", "-F", "raw", "-b", &s.uri, &overlay_s,
        ],
    );
    ok(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 0xab 1048576 65536",
            &overlay_s,
        ],
    );
    // The overlay reads the write back and the backup's bytes everywhere else.
    ok(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-r",
            "-c",
            "read -P 0xab 1048576 65536",
            &overlay_s,
        ],
    );
    let flat = e.root.join("flat.img");
    let flat = copy_of("qcow2", &overlay_s, &flat);
    let mut expect = whole.clone();
    expect[1 << 20..(1 << 20) + 65536].fill(0xab);
    assert!(flat == expect);
    // A write straight to the export is refused; the backup is unchanged.
    assert!(
        !run("qemu-io", &["-f", "raw", "-c", "write 0 4096", &s.uri])
            .status
            .success()
    );
    let copy = e.root.join("copy.img");
    assert!(copy_of("raw", &s.uri, &copy) == whole);
}

fn a_damaged_chunk_is_an_io_error_not_wrong_bytes(e: &Env) {
    let img = e.root.join("vol.img");
    let size = 16u64 << 20;
    make_image(&img, size, 13);
    backup_file(&e.c, &img, "b1", None);
    // The largest pack holds volume data (extent lists sit in small packs of their own):
    // block status still works, and reads of the damaged chunk fail.
    let store = e.c.store();
    let victim = store
        .list("packs/")
        .unwrap()
        .into_iter()
        .max_by_key(|o| o.size)
        .unwrap()
        .key;
    let mut bytes = store.get(&victim).unwrap().to_vec();
    let at = bytes.len() / 3;
    bytes[at] ^= 0x55;
    store.put(&victim, bytes.into()).unwrap();
    let s = serve(e, "b1", socket(e), &ServeOptions::default());
    let out = e.root.join("copy.img");
    let r = convert("raw", &s.uri, &out);
    assert!(!r.status.success(), "a damaged backup copied without error");
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(stderr.contains("Input/output error"), "{stderr}");
    assert!(s.export.stats().failed > 0);
    // The server keeps serving: the same client error again, not a hang or a crash.
    let r = run(
        "qemu-io",
        &["-r", "-f", "raw", "-c", &format!("read 0 {size}"), &s.uri],
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&r.stdout),
        String::from_utf8_lossy(&r.stderr)
    );
    assert!(text.contains("Input/output error"), "{text}");
}

#[test]
fn reads_and_block_status_match_the_volume_without_qemu() {
    // The export's own answers, checked directly against the volume over many random ranges
    // (at most a few chunks each: the extent map's lookups cross extent-list chunks).
    let e = Env::fs();
    let img = e.root.join("vol.img");
    let size = 24u64 << 20;
    make_image(&img, size, 21);
    let whole = std::fs::read(&img).unwrap();
    backup_file(&e.c, &img, "b1", None);
    let export = Export::open(&e.c, "b1", 4 << 20, 0).unwrap();
    let r = pseudo_random(16 * 200, 8);
    for i in 0..200 {
        let a = u64::from_le_bytes(r[i * 16..i * 16 + 8].try_into().unwrap()) % size;
        let l = u64::from_le_bytes(r[i * 16 + 8..i * 16 + 16].try_into().unwrap()) % (1 << 20);
        let l = l.min(size - a);
        let got = export.read(a, l as u32).unwrap();
        assert!(got == whole[a as usize..(a + l) as usize], "{a}+{l}");
        let mut at = a;
        for st in export.block_status(a, l).unwrap() {
            let part = &whole[at as usize..(at + st.len) as usize];
            if st.zero {
                assert!(
                    part.iter().all(|&b| b == 0),
                    "{at}+{} reported zero",
                    st.len
                );
            }
            at += st.len;
        }
        assert_eq!(at, a + l);
    }
    // Past the end, or larger than a request may be: refused.
    for (a, l) in [(size, 1u32), (size - 1, 2), (u64::MAX, 1)] {
        assert_eq!(export.read(a, l).unwrap_err().kind(), "config");
    }
    assert_eq!(
        export
            .read(0, volback::serve::MAX_REQUEST + 1)
            .unwrap_err()
            .kind(),
        "config"
    );
    assert_eq!(
        Export::open(&e.c, "nope", 1 << 20, 0).err().unwrap().kind(),
        "backup_not_found"
    );
}
