//! What a restore writes to: a file or block device written at offsets ([`Target`]), or a
//! sequential sink written front to back ([`Stream`]).

use super::stream::Stream;
use super::stripe::Stripe;
use super::target::Target;
use crate::error::Result;

pub(super) enum Output<'a> {
    File(Target),
    Stream(Stream<'a>),
}

impl Output<'_> {
    /// Zero extents must be written (as zeros or punched holes) by the walk. A stream writes
    /// the gaps between regions itself.
    pub(super) fn write_zeros(&self) -> bool {
        match self {
            Output::File(t) => t.write_zeros,
            Output::Stream(_) => false,
        }
    }

    /// Makes `len` bytes at `offset` read as zeros (a file target).
    pub(super) fn zero(&self, offset: u64, len: u64) -> Result<()> {
        match self {
            Output::File(t) => t.zero(offset, len),
            Output::Stream(_) => Ok(()),
        }
    }

    /// Whole blocks go around the page cache.
    pub(super) fn is_direct(&self) -> bool {
        matches!(self, Output::File(t) if t.direct.is_some())
    }

    /// Writes one region of a stripe (see [`Target::write_region`]); returns the bytes written
    /// with direct I/O.
    pub(super) fn write_region(
        &self,
        stripe: &Stripe,
        offset: u64,
        len: u64,
        direct: &mut bool,
    ) -> Result<u64> {
        match self {
            Output::File(t) => t.write_region(stripe, offset, len, direct),
            Output::Stream(s) => s.write_region(stripe, offset, len).map(|()| 0),
        }
    }

    pub(super) fn start_writeback(&self) {
        if let Output::File(t) = self {
            t.start_writeback();
        }
    }

    /// Completes the target: flushed (if `sync`) and renamed into place, or the stream's last
    /// zeros written and the sink flushed.
    pub(super) fn finish(self, sync: bool) -> Result<()> {
        match self {
            Output::File(t) => t.finish(sync),
            Output::Stream(s) => s.finish(),
        }
    }

    pub(super) fn abandon(self) {
        if let Output::File(t) = self {
            t.abandon();
        }
    }
}
