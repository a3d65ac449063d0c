//! Cutting one long buffer on several threads, with exactly the cut points of cutting it in one
//! go: chunking is the backup pipeline's one sequential stage.

use bytes::Bytes;

use super::cdc::Cdc;

impl Cdc {
    /// The chain of cuts that starts at `q`, as chunk ends, until a chunk ends at or past
    /// `stop`; and where the chain stops without a final cut (the rest would be pending), if it
    /// does.
    fn chain(&self, data: &[u8], mut q: usize, stop: usize) -> (Vec<usize>, Option<usize>) {
        let mut ends = Vec::new();
        while q < stop {
            let n = self.cut(&data[q..]);
            if !self.is_final(n, data.len() - q) {
                return (ends, Some(q));
            }
            q += n;
            ends.push(q);
        }
        (ends, None)
    }

    /// Cuts `data[pos..]` (`pos` is a chunk start) on `parts` threads, with exactly the cut
    /// points of cutting it in one go. Chunking is the one sequential stage of a backup, and it
    /// bounds an incremental of mostly unchanged data.
    ///
    /// Each part is cut from its own start as if a chunk began there. A cut depends only on the
    /// bytes from its chunk's start (FastCDC's hash restarts with every chunk), so once the true
    /// chain of cuts, continued from the previous part, lands on a cut (or the start) of this
    /// part's chain, the two coincide from there on. Until then the true chain is continued one
    /// cut at a time: usually a chunk or two per part. Returns where the pending rest starts, if
    /// the last chunk's cut is not final.
    pub(super) fn cut_parallel(
        &self,
        data: &Bytes,
        pos: usize,
        parts: usize,
        sink: &mut impl FnMut(Bytes),
    ) -> Option<usize> {
        let len = data.len();
        let step = (len - pos) / parts;
        let starts: Vec<usize> = (0..parts).map(|k| pos + k * step).collect();
        let stop = |k: usize| starts.get(k + 1).copied().unwrap_or(len);
        let chains: Vec<(Vec<usize>, Option<usize>)> = std::thread::scope(|s| {
            let others: Vec<_> = (1..parts)
                .map(|k| {
                    let (from, to) = (starts[k], stop(k));
                    s.spawn(move || self.chain(data, from, to))
                })
                .collect();
            let mut chains = vec![self.chain(data, starts[0], stop(0))];
            for h in others {
                chains.push(h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)));
            }
            chains
        });
        let (mut q, mut k) = (pos, 0);
        loop {
            while k + 1 < parts && q >= starts[k + 1] {
                k += 1;
            }
            let (ends, tail) = &chains[k];
            let joined = if q == starts[k] {
                Some(0)
            } else {
                ends.binary_search(&q).ok().map(|i| i + 1)
            };
            if let Some(from) = joined {
                for &e in &ends[from..] {
                    sink(data.slice(q..e));
                    q = e;
                }
                if tail.is_some() {
                    return Some(q);
                }
            } else {
                let n = self.cut(&data[q..]);
                if !self.is_final(n, len - q) {
                    return Some(q);
                }
                sink(data.slice(q..q + n));
                q += n;
            }
            if q >= len {
                return None;
            }
        }
    }
}
