//! Wall-clock time and the host's name, as stored in manifests, leases and records.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A clock set by tests (seconds since the epoch); 0 means the system clock.
static VIRTUAL_UNIX: AtomicU64 = AtomicU64::new(0);

/// Pins this process's clock to `unix` seconds (0: back to the system clock). For tests that
/// schedule requests one at a time and need leases and records to be whole seconds apart
/// (`tests/gc_schedules.rs` moves the clock a second per request).
#[doc(hidden)]
pub fn set_virtual_clock(unix: u64) {
    VIRTUAL_UNIX.store(unix, Ordering::SeqCst);
}

/// Moves a clock pinned by [`set_virtual_clock`] forward by `secs`; nothing otherwise.
#[doc(hidden)]
pub fn advance_virtual_clock(secs: u64) {
    let _ = VIRTUAL_UNIX.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |t| {
        (t != 0).then(|| t.saturating_add(secs))
    });
}

/// Current time as RFC 3339 (UTC, seconds).
pub fn now_rfc3339() -> String {
    rfc3339(now_unix())
}

/// `unix` (seconds since the epoch) as RFC 3339 (UTC, seconds).
pub fn rfc3339(unix: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix)).to_string()
}

/// Current time in seconds since the epoch.
pub fn now_unix() -> u64 {
    let pinned = VIRTUAL_UNIX.load(Ordering::Relaxed);
    if pinned != 0 {
        return pinned;
    }
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

/// This host's name, as leases and condemnation records record it.
pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}
