//! Job events: `--events PATH` (a file, appended to) or `--events fd:N` (an open descriptor)
//! receives one JSON object per line as a long operation runs, for services that stream or
//! poll job state:
//!
//! ```text
//! {"event":"started","op":"backup","unix":1764900000}
//! {"event":"progress","op":"backup","bytes_done":…,"bytes_total":…,"percent":…,"bytes_per_sec":…,"eta_s":…}
//! {"event":"finished","op":"backup","elapsed_s":…,"report":{…the --json report…}}
//! {"event":"error","op":"backup","elapsed_s":…,"kind":"…","message":"…"}
//! ```
//!
//! Progress comes at most once a second (and at the end); `bytes_total`, `percent` and
//! `eta_s` are null when the size is not known. The progress bar and `--json` are unchanged.

use std::fs::File;
use std::io::Write;
use std::os::fd::FromRawFd;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use volback::{Error, Result};

struct Events {
    out: Mutex<File>,
    op: &'static str,
    started: Instant,
    last: Mutex<Option<Instant>>,
}

static EVENTS: OnceLock<Events> = OnceLock::new();

/// Opens the events destination for operation `op` and writes its `started` event.
pub fn open(dest: &str, op: &'static str) -> Result<()> {
    let out = match dest.strip_prefix("fd:") {
        Some(n) => {
            let fd: i32 =
                n.parse().ok().filter(|fd| *fd > 2).ok_or_else(|| {
                    Error::Config(format!("--events {dest}: expected fd:N, N > 2"))
                })?;
            // The descriptor must be open; `fcntl` tells without touching it.
            // SAFETY: F_GETFD on any integer is harmless; it fails on a closed descriptor.
            if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
                return Err(Error::io(
                    "open events descriptor",
                    dest,
                    std::io::Error::last_os_error(),
                ));
            }
            // SAFETY: an open descriptor the caller handed this process for its events; it is
            // owned from here on (closed at exit).
            unsafe { File::from_raw_fd(fd) }
        }
        None => File::options()
            .create(true)
            .append(true)
            .open(dest)
            .map_err(|e| Error::io("open events file", dest, e))?,
    };
    let events = Events {
        out: Mutex::new(out),
        op,
        started: Instant::now(),
        last: Mutex::new(None),
    };
    let _ = EVENTS.set(events);
    emit(json!({"event": "started", "unix": volback::clock::now_unix()}));
    Ok(())
}

/// Whether events are being written.
pub fn enabled() -> bool {
    EVENTS.get().is_some()
}

/// Writes one event line (the operation's name added). Events are best effort: a reader that
/// went away does not fail the operation.
fn emit(mut v: Value) {
    if let Some(e) = EVENTS.get() {
        v["op"] = json!(e.op);
        let line = format!("{v}\n");
        let mut out = e.out.lock().unwrap_or_else(|p| p.into_inner());
        let _ = out.write_all(line.as_bytes());
    }
}

/// Progress: `done` of `total` bytes (at most one event a second, and the last one).
pub fn progress(done: u64, total: Option<u64>) {
    let Some(e) = EVENTS.get() else { return };
    let now = Instant::now();
    let complete = total.is_some_and(|t| done >= t);
    {
        let mut last = e.last.lock().unwrap_or_else(|p| p.into_inner());
        if !complete && last.is_some_and(|l| now - l < Duration::from_secs(1)) {
            return;
        }
        *last = Some(now);
    }
    let secs = (now - e.started).as_secs_f64();
    let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
    let total = total.filter(|t| *t > 0);
    let percent = total.map(|t| (done.min(t) as f64 * 100.0 / t as f64 * 10.0).round() / 10.0);
    let eta = total
        .filter(|_| rate > 0.0)
        .map(|t| (t.saturating_sub(done) as f64 / rate * 10.0).round() / 10.0);
    emit(json!({
        "event": "progress", "bytes_done": done, "bytes_total": total, "percent": percent,
        "bytes_per_sec": rate.round(), "eta_s": eta,
    }));
}

/// The operation ended with `report`.
pub fn finished(report: &impl serde::Serialize) {
    if let Some(e) = EVENTS.get() {
        emit(json!({
            "event": "finished", "elapsed_s": e.started.elapsed().as_secs_f64(),
            "report": serde_json::to_value(report).unwrap_or(Value::Null),
        }));
    }
}

/// The operation failed.
pub fn error(err: &Error) {
    if let Some(e) = EVENTS.get() {
        emit(json!({
            "event": "error", "elapsed_s": e.started.elapsed().as_secs_f64(),
            "kind": err.kind(), "message": err.to_string(),
        }));
    }
}
