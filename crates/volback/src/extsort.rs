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
    /// (ties go to the earlier run, i.e. the record seen first). At most [`MAX_FAN_IN`] runs are
    /// merged at once (each holds a read buffer): more are first merged in groups into longer
    /// runs, a pass over the data per level, so memory stays bounded at any table size.
    pub fn merge<R: Record>(self, block: usize) -> Result<Sorted<R::Id>> {
        self.merge_filtered::<R>(block, |_| Ok(true))
    }

    /// Like [`Runs::merge`], keeping only the records `keep` accepts; `keep` sees the merged
    /// records in order, one per id (so it can walk another sorted table alongside: a join).
    pub fn merge_filtered<R: Record>(
        mut self,
        block: usize,
        mut keep: impl FnMut(&R) -> Result<bool>,
    ) -> Result<Sorted<R::Id>> {
        while self.lens.len() > MAX_FAN_IN {
            self = self.merge_level::<R>()?;
        }
        let runs = self
            .file
            .ok_or_else(|| Error::Internal("no sorted runs to merge".into()))?;
        let mut file = tempfile::tempfile().map_err(scratch_err(R::OPS.create))?;
        let mut out = std::io::BufWriter::with_capacity(1 << 18, &mut file);
        let mut bytes = Vec::with_capacity(R::LEN);
        let mut fences = Vec::new();
        let mut len = 0usize;
        merge_runs::<R>(&runs, &self.lens, 0, |rec| {
            if !keep(rec)? {
                return Ok(());
            }
            if len.is_multiple_of(block) {
                fences.push(rec.id());
            }
            bytes.clear();
            rec.encode(&mut bytes);
            len += 1;
            out.write_all(&bytes).map_err(scratch_err(R::OPS.write))
        })?;
        out.flush().map_err(scratch_err(R::OPS.write))?;
        drop(out);
        fences.shrink_to_fit();
        Ok(Sorted { file, len, fences })
    }

    /// Merges consecutive groups of [`MAX_FAN_IN`] runs into one run each, in a new file.
    fn merge_level<R: Record>(self) -> Result<Runs> {
        let runs = self
            .file
            .ok_or_else(|| Error::Internal("no sorted runs to merge".into()))?;
        let mut file = tempfile::tempfile().map_err(scratch_err(R::OPS.create))?;
        let mut lens = Vec::new();
        {
            let mut out = std::io::BufWriter::with_capacity(1 << 18, &mut file);
            let mut bytes = Vec::with_capacity(R::LEN);
            let mut start = 0usize;
            for group in self.lens.chunks(MAX_FAN_IN) {
                let mut n = 0usize;
                merge_runs::<R>(&runs, group, start, |rec| {
                    bytes.clear();
                    rec.encode(&mut bytes);
                    n += 1;
                    out.write_all(&bytes).map_err(scratch_err(R::OPS.write))
                })?;
                lens.push(n);
                start += group.iter().sum::<usize>();
            }
            out.flush().map_err(scratch_err(R::OPS.write))?;
        }
        Ok(Runs {
            file: Some(file),
            lens,
        })
    }
}

/// Runs merged at once, at most: each holds a read buffer of [`MERGE_READ`] records (a 52-byte
/// record makes that 13 MiB at most).
pub(crate) const MAX_FAN_IN: usize = 256;

/// Merges the runs of `lens` records each that start at record `start` of `file`, handing
/// `emit` the first record (in [`Record::order`]) of each id, in order.
fn merge_runs<R: Record>(
    file: &File,
    lens: &[usize],
    start: usize,
    mut emit: impl FnMut(&R) -> Result<()>,
) -> Result<()> {
    let mut readers = Vec::with_capacity(lens.len());
    let mut at = start;
    for &n in lens {
        readers.push(RunReader::<R> {
            file,
            next: at,
            end: at + n,
            buf: Vec::new(),
            at: 0,
        });
        at += n;
    }
    let mut heap = BinaryHeap::new();
    for (i, r) in readers.iter_mut().enumerate() {
        if let Some(rec) = r.peek()? {
            heap.push(Reverse((rec.order(), i)));
        }
    }
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
        emit(&rec)?;
    }
    Ok(())
}

/// One sorted run (or a whole table) being read back.
pub(crate) struct RunReader<'a, R> {
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

/// A table of records sorted by [`Record::order`], one per id, read front to back: in memory
/// while it fits in the builder's bound, else in an unlinked scratch file.
pub(crate) enum Table<R> {
    Memory(Vec<R>),
    File { file: File, len: usize },
}

/// Builds a [`Table`] holding at most `mem` records in memory at any time.
pub(crate) struct TableBuilder<R> {
    mem: usize,
    buf: Vec<R>,
    runs: Runs,
}

impl<R: Record> TableBuilder<R> {
    pub fn new(mem: usize) -> Self {
        TableBuilder {
            mem: mem.max(1),
            buf: Vec::new(),
            runs: Runs::new(),
        }
    }

    /// Adds a record; the buffer is sorted and spilled as a run when it is full.
    pub fn push(&mut self, r: R) -> Result<()> {
        self.buf.push(r);
        if self.buf.len() >= self.mem {
            self.runs.spill(&mut self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }

    /// The sorted table (per id, the record first in [`Record::order`], the first seen among
    /// equals).
    pub fn finish(mut self) -> Result<Table<R>> {
        if self.runs.is_empty() {
            sort_dedup(&mut self.buf);
            self.buf.shrink_to_fit();
            return Ok(Table::Memory(self.buf));
        }
        if !self.buf.is_empty() {
            self.runs.spill(&mut self.buf)?;
        }
        self.buf = Vec::new();
        let Sorted { file, len, .. } = self.runs.merge::<R>(usize::MAX)?;
        Ok(Table::File { file, len })
    }
}

/// A table kept for lookups by id: sorted in memory, or in a scratch file with a fence per
/// block (a lookup reads one block).
pub(crate) enum Indexed<R: Record> {
    Memory(Vec<R>),
    File(Sorted<R::Id>),
}

impl<R: Record> TableBuilder<R> {
    /// The sorted table for lookups, blocks of `block` records, keeping only what `keep` accepts
    /// (it sees the records in order, one per id, as [`Runs::merge_filtered`] says).
    pub fn finish_indexed(
        mut self,
        block: usize,
        mut keep: impl FnMut(&R) -> Result<bool>,
    ) -> Result<Indexed<R>> {
        if self.runs.is_empty() {
            sort_dedup(&mut self.buf);
            let mut failed = None;
            // `retain` visits the records once each, in order.
            self.buf.retain(|r| match keep(r) {
                Ok(k) => k,
                Err(e) => {
                    failed.get_or_insert(e);
                    false
                }
            });
            if let Some(e) = failed {
                return Err(e);
            }
            self.buf.shrink_to_fit();
            return Ok(Indexed::Memory(self.buf));
        }
        if !self.buf.is_empty() {
            self.runs.spill(&mut self.buf)?;
        }
        self.buf = Vec::new();
        Ok(Indexed::File(self.runs.merge_filtered(block, keep)?))
    }
}

impl<R: Record> Table<R> {
    /// Number of records.
    pub fn len(&self) -> usize {
        match self {
            Table::Memory(v) => v.len(),
            Table::File { len, .. } => *len,
        }
    }

    /// Whether the records went to a scratch file.
    #[cfg(test)]
    pub fn spilled(&self) -> bool {
        matches!(self, Table::File { .. })
    }

    /// Reads the table front to back.
    pub fn reader(&self) -> TableReader<'_, R> {
        match self {
            Table::Memory(v) => TableReader::Memory(v, 0),
            Table::File { file, len } => TableReader::File(RunReader {
                file,
                next: 0,
                end: *len,
                buf: Vec::new(),
                at: 0,
            }),
        }
    }
}

/// Reads a [`Table`] in order, [`MERGE_READ`] records at a time from a file.
pub(crate) enum TableReader<'a, R> {
    Memory(&'a [R], usize),
    File(RunReader<'a, R>),
}

impl<R: Record> TableReader<'_, R> {
    /// The next record, without taking it.
    pub fn peek(&mut self) -> Result<Option<R>> {
        match self {
            TableReader::Memory(v, at) => Ok(v.get(*at).copied()),
            TableReader::File(r) => r.peek(),
        }
    }

    /// Takes the next record.
    pub fn next_record(&mut self) -> Result<Option<R>> {
        let r = self.peek()?;
        if r.is_some() {
            match self {
                TableReader::Memory(_, at) => *at += 1,
                TableReader::File(f) => f.at += 1,
            }
        }
        Ok(r)
    }
}

/// Several tables read as one, in [`Record::order`]; an id in more than one table is given once
/// (from the first table that has it).
pub(crate) struct Merged<'a, R> {
    readers: Vec<TableReader<'a, R>>,
}

impl<'a, R: Record> Merged<'a, R> {
    pub fn new(tables: &[&'a Table<R>]) -> Self {
        Merged {
            readers: tables.iter().map(|t| t.reader()).collect(),
        }
    }

    /// The next record, without taking it.
    pub fn peek(&mut self) -> Result<Option<R>> {
        let mut best: Option<R> = None;
        for r in &mut self.readers {
            if let Some(rec) = r.peek()?
                && best.is_none_or(|b| rec.order() < b.order())
            {
                best = Some(rec);
            }
        }
        Ok(best)
    }

    /// Takes the next record (and its copies under the same id in the other tables).
    pub fn next_record(&mut self) -> Result<Option<R>> {
        let Some(best) = self.peek()? else {
            return Ok(None);
        };
        for r in &mut self.readers {
            while let Some(rec) = r.peek()? {
                if rec.id() != best.id() {
                    break;
                }
                r.next_record()?;
            }
        }
        Ok(Some(best))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key and a payload; the key is the id, the payload says which copy was kept.
    #[derive(Clone, Copy, Debug, PartialEq)]
    struct Kv(u32, u32);

    impl Record for Kv {
        const LEN: usize = 8;
        const OPS: ScratchOps = ScratchOps {
            create: "create test table in",
            write: "write test table in",
            read: "read test table in",
        };
        type Id = u32;
        type Order = u32;
        fn id(&self) -> u32 {
            self.0
        }
        fn order(&self) -> u32 {
            self.0
        }
        fn encode(&self, out: &mut Vec<u8>) {
            out.extend_from_slice(&self.0.to_le_bytes());
            out.extend_from_slice(&self.1.to_le_bytes());
        }
        fn decode(b: &[u8]) -> Result<Kv> {
            let u = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
            Ok(Kv(u(0), u(4)))
        }
    }

    fn all(t: &Table<Kv>) -> Vec<Kv> {
        let mut r = t.reader();
        let mut out = Vec::new();
        while let Some(k) = r.next_record().unwrap() {
            out.push(k);
        }
        out
    }

    /// More runs than are merged at once go through intermediate levels and give the same
    /// table as one in memory: sorted, each id once, the first-seen copy kept.
    #[test]
    fn many_runs_merge_in_levels_like_a_table_in_memory() {
        let n = (MAX_FAN_IN * 3 + 7) as u32;
        let recs: Vec<Kv> = (0..n * 3)
            .map(|i| Kv((i.wrapping_mul(2_654_435_761)) % (n * 2), i))
            .collect();
        let mut spilled = TableBuilder::new(3);
        let mut memory = TableBuilder::new(usize::MAX);
        for r in &recs {
            spilled.push(*r).unwrap();
            memory.push(*r).unwrap();
        }
        let (spilled, memory) = (spilled.finish().unwrap(), memory.finish().unwrap());
        assert!(spilled.spilled() && !memory.spilled());
        let got = all(&spilled);
        assert_eq!(got, all(&memory));
        assert!(got.windows(2).all(|w| w[0].0 < w[1].0));
        for k in &got {
            let first = recs.iter().find(|r| r.0 == k.0).unwrap();
            assert_eq!(k, first, "the first-seen copy is kept");
        }
    }

    /// Tables read as one give each id once, from the first table that has it.
    #[test]
    fn merged_tables_give_each_id_once() {
        let table = |v: &[(u32, u32)]| {
            let mut b = TableBuilder::new(2);
            for &(k, p) in v {
                b.push(Kv(k, p)).unwrap();
            }
            b.finish().unwrap()
        };
        let a = table(&[(1, 10), (4, 10), (9, 10)]);
        let b = table(&[(0, 20), (4, 20), (5, 20), (9, 20)]);
        let mut m = Merged::new(&[&a, &b]);
        let mut got = Vec::new();
        while let Some(k) = m.next_record().unwrap() {
            got.push((k.0, k.1));
        }
        assert_eq!(got, [(0, 20), (1, 10), (4, 10), (5, 20), (9, 10)]);
    }
}
