//! A sequential target: the volume written front to back into something that cannot be
//! written at an offset (a pipe, standard output, a file object without a descriptor, such as
//! the ones os-brick hands out for RBD). Stripes arrive in volume order from the writer
//! thread; the gaps between their regions (zero extents) are written as zeros, or skipped
//! where the sink can move forward without writing and the target reads as zeros. Small
//! regions and zeros are gathered into blocks of [`BLOCK`] bytes: a sink pays per call (a
//! Python `write()` takes the GIL), not per byte.

use std::sync::Mutex;

use super::stripe::Stripe;
use crate::error::{Error, Result};

/// Bytes gathered before one call into the sink.
pub(super) const BLOCK: usize = 8 << 20;

/// Where a sequential restore writes: the volume's bytes in order, from offset 0 to its size.
pub trait StreamSink: Send {
    /// Writes all of `data` at the current position.
    fn write_all(&mut self, data: &[u8]) -> std::io::Result<()>;

    /// Moves the position `len` bytes forward without writing, leaving what the target holds
    /// there (zeros, for a new volume): true if done, false if the sink cannot (the restore
    /// then writes zeros). Only asked when the restore's target reads as zeros.
    fn skip(&mut self, len: u64) -> std::io::Result<bool> {
        let _ = len;
        Ok(false)
    }

    /// Called once after the last byte: flush what the sink buffers.
    fn finish(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Any `std::io::Write` as a sink that writes every byte (standard output, a pipe, a socket).
pub struct WriteSink<W>(pub W);

impl<W: std::io::Write + Send> StreamSink for WriteSink<W> {
    fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.0.write_all(data)
    }

    fn finish(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// The writer thread's side of a sequential restore.
pub(super) struct Stream<'a> {
    state: Mutex<State<'a>>,
    /// Told the bytes handed to the sink after each call: a slow sink reports its progress
    /// block by block, not stripe by stripe.
    progress: Option<&'a (dyn Fn(u64) + Sync)>,
    /// What the sink is called in errors.
    name: String,
}

struct State<'a> {
    sink: &'a mut dyn StreamSink,
    /// Bytes of the volume handed to the sink or skipped so far.
    pos: u64,
    size: u64,
    /// Gaps may be skipped instead of written (the target reads as zeros).
    skip_zeros: bool,
    block: Vec<u8>,
}

impl<'a> Stream<'a> {
    pub(super) fn new(
        sink: &'a mut dyn StreamSink,
        size: u64,
        skip_zeros: bool,
        progress: Option<&'a (dyn Fn(u64) + Sync)>,
    ) -> Self {
        Stream {
            progress,
            state: Mutex::new(State {
                sink,
                pos: 0,
                size,
                skip_zeros,
                block: Vec::with_capacity(BLOCK),
            }),
            name: "restore stream".into(),
        }
    }

    fn io(&self, what: &'static str, e: std::io::Error) -> Error {
        Error::io(what, std::path::Path::new(&self.name), e)
    }

    /// Writes one region of a stripe, after the zeros between the last one and it.
    pub(super) fn write_region(&self, stripe: &Stripe, offset: u64, len: u64) -> Result<()> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if offset < s.pos {
            return Err(Error::Internal(format!(
                "region at volume offset {offset} is behind the stream's position {}",
                s.pos
            )));
        }
        self.gap(&mut s, offset, false)?;
        let data = stripe.bytes(offset, len);
        if s.block.len() + data.len() > BLOCK {
            self.flush(&mut s)?;
        }
        if data.len() >= BLOCK {
            (s.sink.write_all(data)).map_err(|e| self.io("write restore stream", e))?;
            if let Some(p) = self.progress {
                p(s.pos + len);
            }
        } else {
            s.block.extend_from_slice(data);
        }
        s.pos += len;
        Ok(())
    }

    /// Brings the position to `to`: zeros written, or skipped where allowed. With `last`, the
    /// final byte is written even when skipping, so a sink that is a file ends at the
    /// volume's size.
    fn gap(&self, s: &mut State<'a>, to: u64, last: bool) -> Result<()> {
        let mut len = to - s.pos;
        if len == 0 {
            return Ok(());
        }
        if s.skip_zeros {
            self.flush(s)?;
            let skip = if last { len - 1 } else { len };
            match s.sink.skip(skip) {
                Ok(true) => {
                    s.pos += skip;
                    len -= skip;
                }
                Ok(false) => s.skip_zeros = false,
                Err(e) => return Err(self.io("seek restore stream", e)),
            }
        }
        while len > 0 {
            if s.block.len() == BLOCK {
                self.flush(s)?;
            }
            let n = len.min((BLOCK - s.block.len()) as u64);
            s.block.resize(s.block.len() + n as usize, 0);
            s.pos += n;
            len -= n;
        }
        Ok(())
    }

    fn flush(&self, s: &mut State<'a>) -> Result<()> {
        if !s.block.is_empty() {
            let State { sink, block, .. } = s;
            (sink.write_all(block)).map_err(|e| self.io("write restore stream", e))?;
            block.clear();
            if let Some(p) = self.progress {
                p(s.pos);
            }
        }
        Ok(())
    }

    /// Writes the zeros after the last region and flushes the sink.
    pub(super) fn finish(self) -> Result<()> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let size = s.size;
        self.gap(&mut s, size, true)?;
        self.flush(&mut s)?;
        (s.sink.finish()).map_err(|e| self.io("flush restore stream", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink that records its calls: the bytes written, and skips as `None`.
    #[derive(Default)]
    struct Recorder {
        out: Vec<u8>,
        calls: usize,
        can_skip: bool,
        finished: bool,
    }

    impl StreamSink for Recorder {
        fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
            self.out.extend_from_slice(data);
            self.calls += 1;
            Ok(())
        }
        fn skip(&mut self, len: u64) -> std::io::Result<bool> {
            if self.can_skip {
                // Stand-in for a seek: what is skipped reads back as 0xEE here, so a test
                // sees which bytes were skipped rather than written.
                self.out.resize(self.out.len() + len as usize, 0xEE);
            }
            Ok(self.can_skip)
        }
        fn finish(&mut self) -> std::io::Result<()> {
            self.finished = true;
            Ok(())
        }
    }

    fn stripe_with(regions: &[(u64, u64)]) -> Stripe {
        let mut s = Stripe::new(64 << 10).unwrap();
        for &(off, len) in regions {
            assert!(s.add(off, len).unwrap());
            // SAFETY: each region is claimed once.
            let out = unsafe { s.claim(off, len as usize) }.unwrap();
            out.fill(7);
        }
        s
    }

    #[test]
    fn gaps_are_zeros_and_the_stream_ends_at_the_size() {
        let mut r = Recorder::default();
        let st = Stream::new(&mut r, 10_000, false, None);
        let s = stripe_with(&[(100, 50), (1_000, 10)]);
        for &(off, len) in &s.regions {
            st.write_region(&s, off, len).unwrap();
        }
        st.finish().unwrap();
        let mut want = vec![0u8; 10_000];
        want[100..150].fill(7);
        want[1_000..1_010].fill(7);
        assert_eq!(r.out, want);
        // Gathered into one call.
        assert_eq!(r.calls, 1);
        assert!(r.finished);
    }

    #[test]
    fn a_sink_that_can_skip_skips_gaps_but_writes_the_last_byte() {
        let mut r = Recorder {
            can_skip: true,
            ..Default::default()
        };
        let st = Stream::new(&mut r, 5_000, true, None);
        let s = stripe_with(&[(100, 50)]);
        st.write_region(&s, 100, 50).unwrap();
        st.finish().unwrap();
        assert_eq!(r.out.len(), 5_000);
        assert!(r.out[..100].iter().all(|&b| b == 0xEE));
        assert!(r.out[100..150].iter().all(|&b| b == 7));
        assert!(r.out[150..4_999].iter().all(|&b| b == 0xEE));
        assert_eq!(r.out[4_999], 0);
    }

    #[test]
    fn a_region_behind_the_position_is_refused() {
        let mut r = Recorder::default();
        let st = Stream::new(&mut r, 5_000, false, None);
        let s = stripe_with(&[(100, 50)]);
        st.write_region(&s, 100, 50).unwrap();
        assert_eq!(st.write_region(&s, 100, 50).unwrap_err().kind(), "internal");
    }
}
