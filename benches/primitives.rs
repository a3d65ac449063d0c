//! The machine's limits for the pipeline's primitives, on a given image, with both cores:
//! sequential read from page cache, BLAKE3 alone, FastCDC alone, zstd alone (at the container's
//! default level), each over the whole file. Prints one JSON object of MiB/s figures, for the
//! benchmark harness (`benches/harness.py`) to set beside volback's own throughput.
//!
//! Run: `cargo bench --bench primitives -- IMAGE [ZSTD_LEVEL]`

use std::time::Instant;

use rayon::prelude::*;

fn mibps(bytes: usize, secs: f64) -> f64 {
    bytes as f64 / (1 << 20) as f64 / secs
}

fn main() {
    let args: Vec<String> = std::env::args().filter(|a| a != "--bench").collect();
    let Some(path) = args.get(1) else {
        eprintln!("usage: primitives IMAGE [ZSTD_LEVEL]");
        std::process::exit(2);
    };
    let level: i32 = args
        .get(2)
        .and_then(|l| l.parse().ok())
        .unwrap_or(volback::format::config::ContainerConfig::default().zstd_level);
    // Read once to warm the page cache, then time a second read.
    let _ = std::fs::read(path).expect("read image");
    let t = Instant::now();
    let data = std::fs::read(path).expect("read image");
    let read = mibps(data.len(), t.elapsed().as_secs_f64());
    let pieces: Vec<&[u8]> = data.chunks(1 << 20).collect();

    let t = Instant::now();
    let h: Vec<blake3::Hash> = pieces.par_iter().map(|p| blake3::hash(p)).collect();
    let blake = mibps(data.len(), t.elapsed().as_secs_f64());
    std::hint::black_box(h);

    let p = volback::chunker::ChunkerParams::default();
    let t = Instant::now();
    let n: usize = data
        .par_chunks(64 << 20)
        .map(|part| {
            fastcdc::v2020::FastCDC::new(part, p.min as usize, p.avg as usize, p.max as usize)
                .count()
        })
        .sum();
    let cdc = mibps(data.len(), t.elapsed().as_secs_f64());
    std::hint::black_box(n);

    let chunks: Vec<&[u8]> = data.chunks(p.avg as usize).collect();
    let t = Instant::now();
    let z: usize = chunks
        .par_iter()
        .map(|c| {
            zstd::bulk::compress(c, level)
                .map(|v| v.len())
                .unwrap_or(c.len())
        })
        .sum();
    let zstd = mibps(data.len(), t.elapsed().as_secs_f64());

    println!(
        "{{\"bytes\":{},\"read_mibps\":{read:.0},\"blake3_mibps\":{blake:.0},\"fastcdc_mibps\":{cdc:.0},\"zstd_mibps\":{zstd:.0},\"zstd_level\":{level},\"zstd_ratio\":{:.3},\"threads\":{}}}",
        data.len(),
        data.len() as f64 / z.max(1) as f64,
        rayon::current_num_threads()
    );
}
