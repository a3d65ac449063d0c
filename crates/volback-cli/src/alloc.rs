//! glibc allocator tuning for the `volback` process (a library embedding the driver sets the
//! same through `MALLOC_MMAP_THRESHOLD_` and `MALLOC_TRIM_THRESHOLD_`).

/// Pins glibc's mmap threshold at its initial 128 KiB. By default glibc raises it to the size
/// of any large block freed, after which the pipeline's 8 MiB buffers come from the heap and
/// fragment it: a 16 GiB backup then peaked 39 % above a 4 GiB one; pinned, within 5 %
/// (`docs/performance.md`, "Memory"), at no measurable cost in throughput.
///
/// Pinning the mmap threshold also pins the trim threshold, at 128 KiB: in a backup, each
/// worker's arena was then handed back to the kernel after every batch of compressed chunks was
/// freed, and faulted in again for the next (~70k page faults, ~10 % of a full backup's CPU).
/// Full backups keep 8 MiB per arena (one batch's worth): faults 92–106k → 26–28k, CPU
/// 8.3 → 7.4 s, peak RSS +3–5 MiB on the fs image. Other commands keep the low threshold: a restore holds
/// +5–8 MiB with it, more at 16 GiB than at 4 (`docs/performance.md`, "Memory"), and so
/// does an incremental, which compresses little: an unchanged incremental of a 16 GiB stream
/// peaked at 36–40 MiB with it against 33–34 MiB without (31–34 MiB at 4 GiB), while a
/// next-day incremental of the fs image took the same time.
pub fn tune_malloc(full_backup: bool) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tunables; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 << 10);
        if full_backup {
            libc::mallopt(libc::M_TRIM_THRESHOLD, 8 << 20);
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = full_backup;
}
