//! A QEMU dirty bitmap read over NBD: the change map of a VM disk whose writes QEMU tracked.
//!
//! QEMU (and `qemu-nbd -B NAME`) exports a persistent dirty bitmap as the NBD metadata context
//! `qemu:dirty-bitmap:NAME`. This is a minimal NBD client (fixed newstyle handshake,
//! structured replies, `SET_META_CONTEXT`, `GO`, then `BLOCK_STATUS` over the whole export)
//! that turns the bitmap's dirty extents into a [`ChangeMap`]. The export's size is recorded
//! in the map, so a bitmap of another disk is refused. Nothing is read but the bitmap.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use super::{Change, ChangeMap, MapKind};
use crate::error::{Error, Result};
use crate::nbd_protocol::*;

/// The longest option reply or block-status payload read (a reply of 8-byte descriptors
/// for a 1 GiB request at 4 KiB granularity is 2 MiB).
const MAX_PAYLOAD: u32 = 64 << 20;
/// Bytes asked about per block-status request.
const STATUS_STEP: u64 = 1 << 30;
/// How long a silent server is waited for.
const TIMEOUT: Duration = Duration::from_secs(120);

/// Where an NBD URI points.
#[derive(Debug, PartialEq, Eq)]
enum Address {
    Unix(String),
    Tcp(String),
}

/// Parses `nbd+unix:///EXPORT?socket=PATH` or `nbd://HOST[:PORT]/EXPORT` into an address and
/// an export name.
fn parse_uri(uri: &str) -> std::result::Result<(Address, String), String> {
    if let Some(rest) = uri.strip_prefix("nbd+unix://") {
        let (path, query) = rest
            .split_once('?')
            .ok_or("an nbd+unix URI needs ?socket=PATH")?;
        let socket = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("socket="))
            .ok_or("an nbd+unix URI needs ?socket=PATH")?;
        let export = path.trim_start_matches('/').to_string();
        return Ok((Address::Unix(socket.to_string()), export));
    }
    if let Some(rest) = uri.strip_prefix("nbd://") {
        let (host, export) = rest.split_once('/').unwrap_or((rest, ""));
        if host.is_empty() {
            return Err("an nbd URI needs a host".into());
        }
        let host = if host.contains(':') && !host.ends_with(']') {
            host.to_string()
        } else {
            format!("{host}:10809")
        };
        return Ok((Address::Tcp(host), export.to_string()));
    }
    Err("not an NBD URI (nbd+unix:///EXPORT?socket=PATH or nbd://HOST:PORT/EXPORT)".into())
}

/// The client's side of one conversation; every failure names the URI.
struct Client<'a> {
    conn: Stream,
    uri: &'a str,
}

impl Client<'_> {
    fn fail(&self, at: &str, reason: impl Into<String>) -> Error {
        Error::ChangeMap {
            map: self.uri.into(),
            at: at.into(),
            reason: reason.into(),
        }
    }

    fn io(&self, at: &str) -> impl Fn(std::io::Error) -> Error + '_ {
        let at = at.to_string();
        move |e| self.fail(&at, format!("NBD connection: {e}"))
    }

    fn read_exact(&mut self, at: &str, buf: &mut [u8]) -> Result<()> {
        let r = self.conn.read_exact(buf);
        r.map_err(self.io(at))
    }

    fn u16(&mut self, at: &str) -> Result<u16> {
        let mut b = [0; 2];
        self.read_exact(at, &mut b)?;
        Ok(u16::from_be_bytes(b))
    }

    fn u32(&mut self, at: &str) -> Result<u32> {
        let mut b = [0; 4];
        self.read_exact(at, &mut b)?;
        Ok(u32::from_be_bytes(b))
    }

    fn u64(&mut self, at: &str) -> Result<u64> {
        let mut b = [0; 8];
        self.read_exact(at, &mut b)?;
        Ok(u64::from_be_bytes(b))
    }

    fn payload(&mut self, at: &str, len: u32) -> Result<Vec<u8>> {
        if len > MAX_PAYLOAD {
            return Err(self.fail(at, format!("a {len}-byte reply is larger than allowed")));
        }
        let mut buf = vec![0; len as usize];
        self.read_exact(at, &mut buf)?;
        Ok(buf)
    }

    fn send(&mut self, at: &str, bytes: &[u8]) -> Result<()> {
        let r = self.conn.write_all(bytes);
        r.map_err(self.io(at))
    }

    fn option(&mut self, opt: u32, data: &[u8]) -> Result<()> {
        let mut b = Vec::with_capacity(16 + data.len());
        b.extend_from_slice(&IHAVEOPT.to_be_bytes());
        b.extend_from_slice(&opt.to_be_bytes());
        b.extend_from_slice(&(data.len() as u32).to_be_bytes());
        b.extend_from_slice(data);
        self.send("handshake", &b)
    }

    /// One option reply: its type and data.
    fn reply(&mut self, opt: u32) -> Result<(u32, Vec<u8>)> {
        let at = "handshake";
        if self.u64(at)? != OPTION_REPLY_MAGIC {
            return Err(self.fail(at, "bad option reply magic: not an NBD server"));
        }
        let (got, kind, len) = (self.u32(at)?, self.u32(at)?, self.u32(at)?);
        let data = self.payload(at, len)?;
        if got != opt {
            return Err(self.fail(at, format!("reply to option {got}, asked {opt}")));
        }
        if kind & (1 << 31) != 0 {
            let msg = String::from_utf8_lossy(&data).into_owned();
            return Err(self.fail(at, format!("option {opt} refused (error {kind:#x}) {msg}")));
        }
        Ok((kind, data))
    }
}

fn with_name(name: &str) -> Vec<u8> {
    let mut b = (name.len() as u32).to_be_bytes().to_vec();
    b.extend_from_slice(name.as_bytes());
    b
}

/// Reads dirty bitmap `bitmap` of the export at `uri` as a change map.
pub fn read_dirty_bitmap(uri: &str, bitmap: &str) -> Result<ChangeMap> {
    let bad_uri = |reason: String| Error::ChangeMap {
        map: uri.into(),
        at: "uri".into(),
        reason,
    };
    let (addr, export) = parse_uri(uri).map_err(|r| bad_uri(r.to_string()))?;
    let conn = match &addr {
        Address::Unix(p) => UnixStream::connect(p).and_then(|s| {
            s.set_read_timeout(Some(TIMEOUT))?;
            Ok(Stream::Unix(s))
        }),
        Address::Tcp(h) => TcpStream::connect(h).and_then(|s| {
            s.set_read_timeout(Some(TIMEOUT))?;
            s.set_nodelay(true)?;
            Ok(Stream::Tcp(s))
        }),
    }
    .map_err(|e| bad_uri(format!("cannot connect: {e}")))?;
    let mut c = Client { conn, uri };
    let context = format!("qemu:dirty-bitmap:{bitmap}");

    let at = "handshake";
    if c.u64(at)? != NBDMAGIC || c.u64(at)? != IHAVEOPT {
        return Err(c.fail(at, "not a newstyle NBD server"));
    }
    let flags = c.u16(at)?;
    if flags & FLAG_FIXED_NEWSTYLE == 0 {
        return Err(c.fail(at, "the server does not speak fixed newstyle NBD"));
    }
    let client_flags = u32::from(FLAG_FIXED_NEWSTYLE) | (u32::from(flags) & CLIENT_NO_ZEROES);
    c.send(at, &client_flags.to_be_bytes())?;

    c.option(OPT_STRUCTURED_REPLY, &[])?;
    c.reply(OPT_STRUCTURED_REPLY)?;

    let mut q = with_name(&export);
    q.extend_from_slice(&1u32.to_be_bytes());
    q.extend_from_slice(&with_name(&context));
    c.option(OPT_SET_META_CONTEXT, &q)?;
    let mut context_id = None;
    loop {
        let (kind, data) = c.reply(OPT_SET_META_CONTEXT)?;
        match kind {
            REP_META_CONTEXT if data.len() >= 4 => {
                if data[4..] == *context.as_bytes() {
                    context_id = Some(u32::from_be_bytes([data[0], data[1], data[2], data[3]]));
                }
            }
            REP_ACK => break,
            _ => return Err(c.fail(at, format!("unexpected meta context reply {kind}"))),
        }
    }
    let Some(context_id) = context_id else {
        let _ = c.option(OPT_ABORT, &[]); // a polite goodbye; the error is the news
        return Err(c.fail(
            at,
            format!("export '{export}' has no dirty bitmap '{bitmap}' (qemu-nbd -B {bitmap})"),
        ));
    };

    let mut go = with_name(&export);
    go.extend_from_slice(&0u16.to_be_bytes());
    c.option(OPT_GO, &go)?;
    let mut size = None;
    loop {
        let (kind, data) = c.reply(OPT_GO)?;
        match kind {
            REP_INFO if data.len() >= 12 && data[..2] == INFO_EXPORT.to_be_bytes() => {
                let mut s = [0; 8];
                s.copy_from_slice(&data[2..10]);
                size = Some(u64::from_be_bytes(s));
            }
            REP_INFO => {}
            REP_ACK => break,
            _ => return Err(c.fail(at, format!("unexpected reply {kind} to GO"))),
        }
    }
    let size = size.ok_or_else(|| c.fail(at, "the server did not say the export's size"))?;

    let mut changes: Vec<(String, Change)> = Vec::new();
    let mut offset = 0u64;
    let mut cookie = 0u64;
    while offset < size {
        let at = format!("block status at {offset}");
        let len = (size - offset).min(STATUS_STEP) as u32;
        cookie += 1;
        let mut req = Vec::with_capacity(28);
        req.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        req.extend_from_slice(&0u16.to_be_bytes());
        req.extend_from_slice(&CMD_BLOCK_STATUS.to_be_bytes());
        req.extend_from_slice(&cookie.to_be_bytes());
        req.extend_from_slice(&offset.to_be_bytes());
        req.extend_from_slice(&len.to_be_bytes());
        c.send(&at, &req)?;
        let mut cursor = offset;
        loop {
            let magic = c.u32(&at)?;
            if magic == SIMPLE_REPLY_MAGIC {
                let err = c.u32(&at)?;
                let _cookie = c.u64(&at)?;
                return Err(c.fail(&at, format!("block status refused (error {err})")));
            }
            if magic != STRUCTURED_REPLY_MAGIC {
                return Err(c.fail(&at, format!("bad reply magic {magic:#x}")));
            }
            let (flags, kind, got, plen) = (c.u16(&at)?, c.u16(&at)?, c.u64(&at)?, c.u32(&at)?);
            let data = c.payload(&at, plen)?;
            if got != cookie {
                return Err(c.fail(&at, format!("reply to request {got}, sent {cookie}")));
            }
            match kind {
                REPLY_TYPE_BLOCK_STATUS => {
                    if data.len() < 4 || (data.len() - 4) % 8 != 0 {
                        return Err(c.fail(&at, "malformed block status reply"));
                    }
                    let id = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
                    if id != context_id {
                        continue; // another context's (none was asked for)
                    }
                    for d in data[4..].chunks_exact(8) {
                        let n = u64::from(u32::from_be_bytes([d[0], d[1], d[2], d[3]]));
                        let state = u32::from_be_bytes([d[4], d[5], d[6], d[7]]);
                        if n == 0 {
                            return Err(c.fail(&at, "a zero-length extent"));
                        }
                        let n = n.min(size - cursor);
                        if n == 0 {
                            break; // the server described past the end: ignored
                        }
                        if state & STATE_DIRTY != 0 {
                            changes.push((
                                format!("extent at {cursor}"),
                                Change {
                                    offset: cursor,
                                    len: n,
                                    zeroed: false,
                                },
                            ));
                        }
                        cursor += n;
                    }
                }
                REPLY_TYPE_NONE => {}
                REPLY_TYPE_ERROR | REPLY_TYPE_ERROR_OFFSET => {
                    let msg = String::from_utf8_lossy(data.get(6..).unwrap_or_default());
                    return Err(c.fail(&at, format!("block status failed: {msg}")));
                }
                other => return Err(c.fail(&at, format!("unexpected reply type {other}"))),
            }
            if flags & REPLY_FLAG_DONE != 0 {
                break;
            }
        }
        if cursor == offset {
            return Err(c.fail(&at, "the server described no extent"));
        }
        offset = cursor;
    }
    let mut disc = Vec::with_capacity(28);
    disc.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
    disc.extend_from_slice(&0u16.to_be_bytes());
    disc.extend_from_slice(&CMD_DISC.to_be_bytes());
    disc.extend_from_slice(&[0; 20]);
    let _ = c.send("disconnect", &disc);
    ChangeMap::new(MapKind::NbdDirtyBitmap, uri, Some(size), changes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_are_understood() {
        assert_eq!(
            parse_uri("nbd+unix:///disk?socket=/tmp/s.sock").unwrap(),
            (Address::Unix("/tmp/s.sock".into()), "disk".into())
        );
        assert_eq!(
            parse_uri("nbd://127.0.0.1:10900/disk").unwrap(),
            (Address::Tcp("127.0.0.1:10900".into()), "disk".into())
        );
        assert_eq!(
            parse_uri("nbd://localhost").unwrap(),
            (Address::Tcp("localhost:10809".into()), String::new())
        );
        assert!(parse_uri("nbd+unix:///disk").is_err());
        assert!(parse_uri("http://x/").is_err());
    }
}
