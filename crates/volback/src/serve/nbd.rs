//! The NBD protocol, server side: the fixed newstyle handshake and the transmission phase of a
//! read-only export (`doc/proto.md` of the NBD project is the specification).
//!
//! Handshake options understood: `EXPORT_NAME`, `ABORT`, `LIST`, `INFO`, `GO`,
//! `STRUCTURED_REPLY`, `LIST_META_CONTEXT` and `SET_META_CONTEXT` (the `base:allocation`
//! context); every other option, TLS included, is answered "unsupported" and the client goes
//! on without it. The export answers to the empty (default) name and to its backup id.
//!
//! Transmission: `READ`, `BLOCK_STATUS` (zero extents are reported as holes that read as
//! zeros, so copy tools skip them), `CACHE` (fetches into the cache), `FLUSH` (nothing to do)
//! and `DISC`; writes, trims and write-zeroes are refused with `EPERM`. Requests are handled
//! concurrently by a few workers per connection and answered as they complete, in any order,
//! as the protocol allows; each reply goes out whole under the connection's write lock.

use std::io::{self, IoSlice, Read, Write};
use std::sync::mpsc::{Receiver, channel};
use std::sync::{Arc, Mutex};

use super::export::{Export, MAX_REQUEST, ReadAhead};
use crate::error::Error;

use crate::nbd_protocol::*;

/// The one metadata context served, and the id it gets.
const BASE_ALLOCATION: &str = "base:allocation";
const BASE_ALLOCATION_ID: u32 = 1;

/// Longest option payload read; a longer one ends the connection (names and context queries
/// are a few bytes).
const MAX_OPTION: u32 = 64 << 10;
/// Most descriptors in one block-status reply (a client asks again for the rest).
const MAX_DESCRIPTORS: usize = 1 << 16;
/// Requests handled at once per connection.
pub const WORKERS: usize = 8;

/// What the handshake settled.
#[derive(Debug, Default, Clone, Copy)]
struct Session {
    structured: bool,
    base_allocation: bool,
}

fn read_u32(r: &mut impl Read) -> io::Result<u32> {
    let mut b = [0; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}

fn read_u64(r: &mut impl Read) -> io::Result<u64> {
    let mut b = [0; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_be_bytes(b))
}

fn protocol_error(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// Serves one client until it disconnects (or breaks the protocol, or the server stops).
pub(crate) fn serve_connection(export: &Arc<Export>, mut stream: Stream) -> io::Result<()> {
    let Some(session) = handshake(export, &mut stream)? else {
        return Ok(());
    };
    let writer = Mutex::new(stream.try_clone()?);
    let read_ahead = Mutex::new(ReadAhead::default());
    let (tx, rx) = channel::<Request>();
    let rx = Mutex::new(rx);
    std::thread::scope(|s| {
        for _ in 0..WORKERS {
            s.spawn(|| worker(export, session, &rx, &writer, &read_ahead));
        }
        let result = read_requests(&mut stream, session, &writer, |req| {
            tx.send(req).map_err(|_| protocol_error("workers gone"))
        });
        drop(tx);
        result
    })
}

/// The handshake; `None` if the client ended it without starting transmission.
fn handshake(export: &Export, s: &mut Stream) -> io::Result<Option<Session>> {
    let mut hello = Vec::with_capacity(18);
    hello.extend_from_slice(&NBDMAGIC.to_be_bytes());
    hello.extend_from_slice(&IHAVEOPT.to_be_bytes());
    hello.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    s.write_all(&hello)?;
    let client_flags = read_u32(s)?;
    let no_zeroes = client_flags & CLIENT_NO_ZEROES != 0;
    let mut session = Session::default();
    loop {
        if read_u64(s)? != IHAVEOPT {
            return Err(protocol_error("option without IHAVEOPT"));
        }
        let opt = read_u32(s)?;
        let len = read_u32(s)?;
        if len > MAX_OPTION {
            return Err(protocol_error(format!("option {opt} of {len} bytes")));
        }
        let mut data = vec![0u8; len as usize];
        s.read_exact(&mut data)?;
        match opt {
            OPT_EXPORT_NAME => {
                if !known_name(export, &data) {
                    return Err(protocol_error("unknown export name"));
                }
                let mut reply = Vec::with_capacity(10 + 124);
                reply.extend_from_slice(&export.size().to_be_bytes());
                reply.extend_from_slice(&TRANSMISSION_FLAGS.to_be_bytes());
                if !no_zeroes {
                    reply.extend_from_slice(&[0; 124]);
                }
                s.write_all(&reply)?;
                return Ok(Some(session));
            }
            OPT_ABORT => {
                option_reply(s, opt, REP_ACK, &[])?;
                return Ok(None);
            }
            OPT_LIST => {
                if !data.is_empty() {
                    option_reply(s, opt, REP_ERR_INVALID, b"LIST takes no data")?;
                    continue;
                }
                let name = export.backup_id().as_bytes();
                let mut payload = (name.len() as u32).to_be_bytes().to_vec();
                payload.extend_from_slice(name);
                option_reply(s, opt, REP_SERVER, &payload)?;
                option_reply(s, opt, REP_ACK, &[])?;
            }
            OPT_INFO | OPT_GO => match parse_info(&data) {
                None => option_reply(s, opt, REP_ERR_INVALID, b"malformed request")?,
                Some(name) if !known_name(export, name) => {
                    option_reply(s, opt, REP_ERR_UNKNOWN, b"no such export")?
                }
                Some(_) => {
                    let mut info = INFO_EXPORT.to_be_bytes().to_vec();
                    info.extend_from_slice(&export.size().to_be_bytes());
                    info.extend_from_slice(&TRANSMISSION_FLAGS.to_be_bytes());
                    option_reply(s, opt, REP_INFO, &info)?;
                    let mut sizes = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
                    for v in [1u32, 4096, MAX_REQUEST] {
                        sizes.extend_from_slice(&v.to_be_bytes());
                    }
                    option_reply(s, opt, REP_INFO, &sizes)?;
                    option_reply(s, opt, REP_ACK, &[])?;
                    if opt == OPT_GO {
                        return Ok(Some(session));
                    }
                }
            },
            OPT_STRUCTURED_REPLY => {
                if data.is_empty() {
                    session.structured = true;
                    option_reply(s, opt, REP_ACK, &[])?;
                } else {
                    option_reply(s, opt, REP_ERR_INVALID, b"takes no data")?;
                }
            }
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
                let set = opt == OPT_SET_META_CONTEXT;
                match parse_meta_context(&data) {
                    None => option_reply(s, opt, REP_ERR_INVALID, b"malformed request")?,
                    Some(_) if set && !session.structured => option_reply(
                        s,
                        opt,
                        REP_ERR_INVALID,
                        b"structured replies must be negotiated first",
                    )?,
                    Some((name, _)) if !known_name(export, name) => {
                        option_reply(s, opt, REP_ERR_UNKNOWN, b"no such export")?
                    }
                    Some((_, queries)) => {
                        // LIST with no query lists every context; SET selects exactly those
                        // queried (none: none).
                        let matches =
                            |q: &[u8]| q == BASE_ALLOCATION.as_bytes() || (!set && q == b"base:");
                        let selected =
                            (!set && queries.is_empty()) || queries.iter().any(|q| matches(q));
                        if set {
                            session.base_allocation = selected;
                        }
                        if selected {
                            let id = if set { BASE_ALLOCATION_ID } else { 0 };
                            let mut payload = id.to_be_bytes().to_vec();
                            payload.extend_from_slice(BASE_ALLOCATION.as_bytes());
                            option_reply(s, opt, REP_META_CONTEXT, &payload)?;
                        }
                        option_reply(s, opt, REP_ACK, &[])?;
                    }
                }
            }
            _ => option_reply(s, opt, REP_ERR_UNSUP, b"not supported")?,
        }
    }
}

fn known_name(export: &Export, name: &[u8]) -> bool {
    name.is_empty() || name == export.backup_id().as_bytes()
}

fn option_reply(s: &mut Stream, opt: u32, kind: u32, data: &[u8]) -> io::Result<()> {
    let mut b = Vec::with_capacity(20 + data.len());
    b.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    b.extend_from_slice(&opt.to_be_bytes());
    b.extend_from_slice(&kind.to_be_bytes());
    b.extend_from_slice(&(data.len() as u32).to_be_bytes());
    b.extend_from_slice(data);
    s.write_all(&b)
}

/// Splits `n` bytes off the front of `data`.
fn take<'a>(data: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if data.len() < n {
        return None;
    }
    let (head, rest) = data.split_at(n);
    *data = rest;
    Some(head)
}

fn take_u32(data: &mut &[u8]) -> Option<u32> {
    take(data, 4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// INFO/GO data: the export name (the information requests after it are answered the same
/// whatever they are).
fn parse_info(data: &[u8]) -> Option<&[u8]> {
    let mut d = data;
    let len = take_u32(&mut d)? as usize;
    let name = take(&mut d, len)?;
    let n = take(&mut d, 2).map(|b| u16::from_be_bytes([b[0], b[1]]))?;
    take(&mut d, usize::from(n) * 2)?;
    d.is_empty().then_some(name)
}

/// LIST/SET_META_CONTEXT data: the export name and the queries.
fn parse_meta_context(data: &[u8]) -> Option<(&[u8], Vec<&[u8]>)> {
    let mut d = data;
    let len = take_u32(&mut d)? as usize;
    let name = take(&mut d, len)?;
    let n = take_u32(&mut d)?;
    let mut queries = Vec::new();
    for _ in 0..n {
        let len = take_u32(&mut d)? as usize;
        queries.push(take(&mut d, len)?);
    }
    d.is_empty().then_some((name, queries))
}

/// One transmission request.
#[derive(Debug, Clone, Copy)]
struct Request {
    flags: u16,
    kind: u16,
    cookie: u64,
    offset: u64,
    length: u32,
}

/// Reads requests until `DISC` or the end of the stream; answers the ones that need no work at
/// once and hands the others to `dispatch`.
fn read_requests(
    s: &mut Stream,
    session: Session,
    writer: &Mutex<Stream>,
    mut dispatch: impl FnMut(Request) -> io::Result<()>,
) -> io::Result<()> {
    loop {
        let mut h = [0u8; 28];
        match s.read_exact(&mut h) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let be32 = |at: usize| u32::from_be_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]]);
        if be32(0) != REQUEST_MAGIC {
            return Err(protocol_error("bad request magic"));
        }
        let mut u64_at = [0u8; 8];
        u64_at.copy_from_slice(&h[8..16]);
        let cookie = u64::from_be_bytes(u64_at);
        u64_at.copy_from_slice(&h[16..24]);
        let req = Request {
            flags: u16::from_be_bytes([h[4], h[5]]),
            kind: u16::from_be_bytes([h[6], h[7]]),
            cookie,
            offset: u64::from_be_bytes(u64_at),
            length: be32(24),
        };
        match req.kind {
            CMD_DISC => return Ok(()),
            CMD_READ | CMD_CACHE => dispatch(req)?,
            CMD_BLOCK_STATUS if session.base_allocation => dispatch(req)?,
            CMD_FLUSH => reply_ok(writer, session, req.cookie)?,
            CMD_WRITE => {
                // The payload follows the header: skip it to stay in step, then refuse.
                let skipped = io::copy(&mut s.take(u64::from(req.length)), &mut io::sink())?;
                if skipped != u64::from(req.length) {
                    return Ok(());
                }
                reply_error(writer, session, req.cookie, EPERM, "read-only export")?;
            }
            CMD_TRIM | CMD_WRITE_ZEROES => {
                reply_error(writer, session, req.cookie, EPERM, "read-only export")?
            }
            CMD_BLOCK_STATUS => reply_error(
                writer,
                session,
                req.cookie,
                EINVAL,
                "no metadata context was negotiated",
            )?,
            _ => reply_error(writer, session, req.cookie, EINVAL, "unknown command")?,
        }
    }
}

fn worker(
    export: &Arc<Export>,
    session: Session,
    rx: &Mutex<Receiver<Request>>,
    writer: &Mutex<Stream>,
    read_ahead: &Mutex<ReadAhead>,
) {
    loop {
        let req = {
            let rx = rx.lock().unwrap_or_else(|p| p.into_inner());
            match rx.recv() {
                Ok(req) => req,
                Err(_) => return,
            }
        };
        if let Err(e) = handle(export, session, req, writer, read_ahead) {
            // The connection is gone or broken: stop reading from it too.
            tracing::debug!(error = %e, "NBD reply failed");
            writer.lock().unwrap_or_else(|p| p.into_inner()).shutdown();
            return;
        }
    }
}

fn errno(e: &Error) -> u32 {
    match e {
        Error::Config(_) => EINVAL,
        _ => EIO,
    }
}

fn handle(
    export: &Arc<Export>,
    session: Session,
    req: Request,
    writer: &Mutex<Stream>,
    read_ahead: &Mutex<ReadAhead>,
) -> io::Result<()> {
    let end = req.offset.saturating_add(u64::from(req.length));
    match req.kind {
        CMD_READ => {
            let ahead = read_ahead.lock().unwrap_or_else(|p| p.into_inner()).note(
                req.offset,
                end,
                export.read_ahead(),
            );
            if let Some((from, to)) = ahead {
                export.prefetch(from, to);
            }
            match export.read(req.offset, req.length) {
                Ok(data) => reply_data(writer, session, req, &data),
                Err(e) => reply_error(writer, session, req.cookie, errno(&e), &e.to_string()),
            }
        }
        CMD_CACHE => {
            let len = req.length.min(MAX_REQUEST);
            match export.read(req.offset, len) {
                Ok(_) => reply_ok(writer, session, req.cookie),
                Err(e) => reply_error(writer, session, req.cookie, errno(&e), &e.to_string()),
            }
        }
        _ => match export.block_status(req.offset, u64::from(req.length)) {
            Ok(mut status) => {
                status.truncate(if req.flags & CMD_FLAG_REQ_ONE != 0 {
                    1
                } else {
                    MAX_DESCRIPTORS
                });
                let mut payload = Vec::with_capacity(4 + 8 * status.len());
                payload.extend_from_slice(&BASE_ALLOCATION_ID.to_be_bytes());
                for st in status {
                    // Clipped to the request, whose length is a u32.
                    let len = u32::try_from(st.len).unwrap_or(!4095);
                    let flags = if st.zero { STATE_HOLE | STATE_ZERO } else { 0 };
                    payload.extend_from_slice(&len.to_be_bytes());
                    payload.extend_from_slice(&flags.to_be_bytes());
                }
                structured(writer, REPLY_TYPE_BLOCK_STATUS, req.cookie, &[&payload])
            }
            Err(e) => reply_error(writer, session, req.cookie, errno(&e), &e.to_string()),
        },
    }
}

fn send(writer: &Mutex<Stream>, parts: &[&[u8]]) -> io::Result<()> {
    let mut w = writer.lock().unwrap_or_else(|p| p.into_inner());
    let mut slices: Vec<IoSlice> = parts.iter().map(|p| IoSlice::new(p)).collect();
    let mut slices = &mut slices[..];
    while !slices.is_empty() {
        let n = w.write_vectored(slices)?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut slices, n);
    }
    Ok(())
}

fn simple(writer: &Mutex<Stream>, error: u32, cookie: u64, data: &[u8]) -> io::Result<()> {
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    h[4..8].copy_from_slice(&error.to_be_bytes());
    h[8..].copy_from_slice(&cookie.to_be_bytes());
    send(writer, &[&h, data])
}

/// One structured reply chunk, the last of its request.
fn structured(writer: &Mutex<Stream>, kind: u16, cookie: u64, payload: &[&[u8]]) -> io::Result<()> {
    let len: usize = payload.iter().map(|p| p.len()).sum();
    let mut h = [0u8; 20];
    h[..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    h[4..6].copy_from_slice(&REPLY_FLAG_DONE.to_be_bytes());
    h[6..8].copy_from_slice(&kind.to_be_bytes());
    h[8..16].copy_from_slice(&cookie.to_be_bytes());
    h[16..].copy_from_slice(&(len as u32).to_be_bytes());
    let mut parts: Vec<&[u8]> = vec![&h];
    parts.extend_from_slice(payload);
    send(writer, &parts)
}

fn reply_ok(writer: &Mutex<Stream>, session: Session, cookie: u64) -> io::Result<()> {
    if session.structured {
        structured(writer, REPLY_TYPE_NONE, cookie, &[])
    } else {
        simple(writer, 0, cookie, &[])
    }
}

fn reply_data(
    writer: &Mutex<Stream>,
    session: Session,
    req: Request,
    data: &[u8],
) -> io::Result<()> {
    if !session.structured {
        return simple(writer, 0, req.cookie, data);
    }
    if data.is_empty() {
        return structured(writer, REPLY_TYPE_NONE, req.cookie, &[]);
    }
    structured(
        writer,
        REPLY_TYPE_OFFSET_DATA,
        req.cookie,
        &[&req.offset.to_be_bytes(), data],
    )
}

fn reply_error(
    writer: &Mutex<Stream>,
    session: Session,
    cookie: u64,
    error: u32,
    message: &str,
) -> io::Result<()> {
    if !session.structured {
        return simple(writer, error, cookie, &[]);
    }
    let mut message = message.as_bytes();
    message = &message[..message.len().min(4096)];
    let mut head = error.to_be_bytes().to_vec();
    head.extend_from_slice(&(message.len() as u16).to_be_bytes());
    structured(writer, REPLY_TYPE_ERROR, cookie, &[&head, message])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_payloads_are_parsed_strictly() {
        let mut info = 3u32.to_be_bytes().to_vec();
        info.extend_from_slice(b"abc");
        info.extend_from_slice(&1u16.to_be_bytes());
        info.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
        assert_eq!(parse_info(&info), Some(&b"abc"[..]));
        // Truncated, or with bytes left over: refused.
        assert_eq!(parse_info(&info[..info.len() - 1]), None);
        let mut longer = info.clone();
        longer.push(0);
        assert_eq!(parse_info(&longer), None);
        // A name length past the end (crafted) is refused, not read past.
        assert_eq!(parse_info(&u32::MAX.to_be_bytes()), None);

        let mut meta = 0u32.to_be_bytes().to_vec();
        meta.extend_from_slice(&2u32.to_be_bytes());
        for q in [&b"base:allocation"[..], b"qemu:dirty-bitmap:x"] {
            meta.extend_from_slice(&(q.len() as u32).to_be_bytes());
            meta.extend_from_slice(q);
        }
        let (name, queries) = parse_meta_context(&meta).unwrap();
        assert!(name.is_empty());
        assert_eq!(
            queries,
            vec![&b"base:allocation"[..], b"qemu:dirty-bitmap:x"]
        );
        assert_eq!(parse_meta_context(&meta[..meta.len() - 2]), None);
        let mut many = 0u32.to_be_bytes().to_vec();
        many.extend_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(parse_meta_context(&many), None);
    }
}
