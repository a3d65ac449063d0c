//! A Cinder backup's volume read front to back, as a stream: what an adoption feeds into a
//! volback backup.
//!
//! Objects are read in the order the volume first needs them, a bounded batch at a time on
//! rayon's threads while the previous batch is being written, and each is dropped after the
//! last piece that needs it. Memory holds at most two batches in flight (each up to
//! [`BATCH_BYTES`], or one object if larger) plus the objects still needed further on: with
//! Cinder's layout (incremental objects inside the full's object boundaries) that is one
//! object more.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, sync_channel};

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::store::ObjectStore;

use super::CinderBackup;
use super::object::read_object;
use super::plan::Plan;

/// Uncompressed bytes read per batch (more than one object's worth when objects are small).
pub const BATCH_BYTES: u64 = 64 << 20;

type Batch = Result<Vec<((usize, usize), Arc<Vec<u8>>)>>;

/// Writes the volume `plan` describes (from `links`, oldest first) to `out`, every byte in
/// order, zeros included. Returns the objects read.
pub(crate) fn write_volume(
    store: &dyn ObjectStore,
    links: &[&CinderBackup],
    plan: &Plan,
    name: &str,
    out: &mut dyn Write,
) -> Result<u64> {
    let order = plan.objects_in_order();
    let last_use: HashMap<(usize, usize), usize> = order.iter().copied().collect();
    let ids: Vec<(usize, usize)> = order.iter().map(|(id, _)| *id).collect();
    std::thread::scope(|s| {
        let (tx, rx) = sync_channel::<Batch>(1);
        s.spawn(move || {
            let mut at = 0;
            while at < ids.len() {
                let mut end = at;
                let mut bytes = 0u64;
                while end < ids.len() && (end == at || bytes < BATCH_BYTES) {
                    let (l, o) = ids[end];
                    bytes = bytes.saturating_add(links[l].manifest.objects[o].length);
                    end += 1;
                }
                let batch: Batch = ids[at..end]
                    .par_iter()
                    .map(|&(l, o)| {
                        let data = read_object(store, links[l], &links[l].manifest.objects[o])?;
                        Ok(((l, o), Arc::new(data)))
                    })
                    .collect();
                let failed = batch.is_err();
                // The writer has gone (it failed): stop reading.
                if tx.send(batch).is_err() || failed {
                    return;
                }
                at = end;
            }
        });
        emit(links, plan, &last_use, rx, name, out)
    })
}

/// The writing side: pieces in volume order, zeros between them.
fn emit(
    links: &[&CinderBackup],
    plan: &Plan,
    last_use: &HashMap<(usize, usize), usize>,
    rx: Receiver<Batch>,
    name: &str,
    out: &mut dyn Write,
) -> Result<u64> {
    let io = |e| Error::io("write the volume stream", name, e);
    let mut resident: HashMap<(usize, usize), Arc<Vec<u8>>> = HashMap::new();
    let mut read = 0u64;
    let mut pos = 0u64;
    for (i, p) in plan.pieces.iter().enumerate() {
        write_zeros(out, p.start - pos).map_err(io)?;
        let id = (p.link, p.object);
        while !resident.contains_key(&id) {
            let batch = rx
                .recv()
                .map_err(|_| Error::Internal(format!("{name}: the object reader stopped")))??;
            read += batch.len() as u64;
            resident.extend(batch);
        }
        let o = &links[p.link].manifest.objects[p.object];
        let data = &resident[&id];
        out.write_all(&data[(p.start - o.offset) as usize..(p.end - o.offset) as usize])
            .map_err(io)?;
        if last_use[&id] == i {
            resident.remove(&id);
        }
        pos = p.end;
    }
    write_zeros(out, plan.size - pos).map_err(io)?;
    out.flush().map_err(io)?;
    Ok(read)
}

fn write_zeros(out: &mut dyn Write, mut n: u64) -> std::io::Result<()> {
    static ZEROS: [u8; 1 << 16] = [0; 1 << 16];
    while n > 0 {
        let k = n.min(ZEROS.len() as u64) as usize;
        out.write_all(&ZEROS[..k])?;
        n -= k as u64;
    }
    Ok(())
}
