//! External sort of fixed-size records into unlinked scratch files, for the tables that must not
//! grow in memory with the container: the restore's chunk locations (`locations`) and the
//! backup's dedup set (`dedup`).
//!
//! Records are sorted in memory in runs of a bounded size ([`sort_dedup`]) and appended to one
//! scratch file ([`Runs::spill`]); [`Runs::merge`] then merges the runs into a second file in
//! which each identity appears once, keeping the identity of every block's first record in
//! memory as a fence, so that a lookup reads one block. Both files live in `$TMPDIR` and vanish
//! with their handles, or with the process.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;

use crate::error::{Error, Result};

/// Records read at once from each run while merging.
const MERGE_READ: usize = 1024;

/// What the scratch files are called in I/O errors (which also name `$TMPDIR`).
pub(crate) struct ScratchOps {
    pub create: &'static str,
    pub write: &'static str,
    pub read: &'static str,
}

/// A fixed-size record of a sorted scratch table.
pub(crate) trait Record: Copy {
    /// Bytes per record in the files.
    const LEN: usize;
    /// Error wording for the table's files.
    const OPS: ScratchOps;
    /// What is kept once; also the type of the fences.
    type Id: Ord + Copy;
    /// Sort order: by id first, then by preference (the first record of an id is kept).
    type Order: Ord;
    fn id(&self) -> Self::Id;
    fn order(&self) -> Self::Order;
    fn encode(&self, out: &mut Vec<u8>);
    fn decode(b: &[u8]) -> Result<Self>;
}

/// An I/O error on a scratch file, naming the directory it lives in (`$TMPDIR`).
pub(crate) fn scratch_err(op: &'static str) -> impl Fn(std::io::Error) -> Error {
    move |e| Error::io(op, std::env::temp_dir(), e)
}

/// Sorts by [`Record::order`] (stable: among equals, the first seen comes first) and keeps the
/// first record of each id.
pub(crate) fn sort_dedup<R: Record>(recs: &mut Vec<R>) {
    recs.sort_by_key(R::order);
    recs.dedup_by(|later, kept| later.id() == kept.id());
}

/// Sorted runs, back to back in one scratch file.
pub(crate) struct Runs {
    file: Option<File>,
    /// Each run's length in records.
    lens: Vec<usize>,
}

/// The merged table: `len` records sorted by id, one per id; `fences[b]` is the id of the first
/// record of block `b` (blocks of the `block` records given to [`Runs::merge`]).
pub(crate) struct Sorted<Id> {
    pub file: File,
    pub len: usize,
    pub fences: Vec<Id>,
}

impl Runs {
    pub fn new() -> Self {
        Runs {
            file: None,
            lens: Vec::new(),
        }
    }

    /// Whether no run was written (the table fits in memory).
    pub fn is_empty(&self) -> bool {
        self.lens.is_empty()
    }

    /// Sorts `recs` ([`sort_dedup`]) and appends them as one run.
    pub fn spill<R: Record>(&mut self, recs: &mut Vec<R>) -> Result<()> {
        sort_dedup(recs);
        let file = match &mut self.file {
            Some(f) => f,
            None => self
                .file
                .insert(tempfile::tempfile().map_err(scratch_err(R::OPS.create))?),
        };
        let mut bytes = Vec::with_capacity(recs.len() * R::LEN);
        for r in recs.iter() {
            r.encode(&mut bytes);
        }
        file.write_all(&bytes).map_err(scratch_err(R::OPS.write))?;
        self.lens.push(recs.len());
        Ok(())
    }

    /// Merges the runs into the final table: per id, the record first in [`Record::order`]
    /// (ties go to the earlier run, i.e. the record seen first).
    pub fn merge<R: Record>(self, block: usize) -> Result<Sorted<R::Id>> {
        let runs = self
            .file
            .ok_or_else(|| Error::Internal("no sorted runs to merge".into()))?;
        let mut readers = Vec::with_capacity(self.lens.len());
        let mut start = 0;
        for &n in &self.lens {
            readers.push(RunReader::<R> {
                file: &runs,
                next: start,
                end: start + n,
                buf: Vec::new(),
                at: 0,
            });
            start += n;
        }
        let mut heap = BinaryHeap::new();
        for (i, r) in readers.iter_mut().enumerate() {
            if let Some(rec) = r.peek()? {
                heap.push(Reverse((rec.order(), i)));
            }
        }
        let mut file = tempfile::tempfile().map_err(scratch_err(R::OPS.create))?;
        let mut out = std::io::BufWriter::with_capacity(1 << 18, &mut file);
        let mut bytes = Vec::with_capacity(R::LEN);
        let mut fences = Vec::new();
        let mut len = 0usize;
        let mut last: Option<R::Id> = None;
        while let Some(Reverse((_, i))) = heap.pop() {
            let r = &mut readers[i];
            let rec = r.buf[r.at];
            r.at += 1;
            if let Some(next) = r.peek()? {
                heap.push(Reverse((next.order(), i)));
            }
            if last == Some(rec.id()) {
                continue;
            }
            last = Some(rec.id());
            if len.is_multiple_of(block) {
                fences.push(rec.id());
            }
            bytes.clear();
            rec.encode(&mut bytes);
            out.write_all(&bytes).map_err(scratch_err(R::OPS.write))?;
            len += 1;
        }
        out.flush().map_err(scratch_err(R::OPS.write))?;
        drop(out);
        fences.shrink_to_fit();
        Ok(Sorted { file, len, fences })
    }
}

/// One sorted run being read back during the merge.
struct RunReader<'a, R> {
    file: &'a File,
    /// Next record to read from the file, and the run's end (in records).
    next: usize,
    end: usize,
    buf: Vec<R>,
    at: usize,
}

impl<R: Record> RunReader<'_, R> {
    fn peek(&mut self) -> Result<Option<R>> {
        if self.at == self.buf.len() {
            let n = MERGE_READ.min(self.end - self.next);
            if n == 0 {
                return Ok(None);
            }
            let mut bytes = vec![0u8; n * R::LEN];
            self.file
                .read_exact_at(&mut bytes, (self.next * R::LEN) as u64)
                .map_err(scratch_err(R::OPS.read))?;
            self.buf.clear();
            for b in bytes.chunks_exact(R::LEN) {
                self.buf.push(R::decode(b)?);
            }
            self.next += n;
            self.at = 0;
        }
        Ok(Some(self.buf[self.at]))
    }
}
