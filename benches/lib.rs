//! Nothing to link: this package only holds the benchmarks beside it (`cargo bench -p volback-benches`).
