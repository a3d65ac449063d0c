//! A fault-injecting store for tests: wraps any store and, from a seeded generator, adds
//! latency, fails requests transiently (before or *after* they took effect on the server), tears
//! writes, and fails every request permanently after a given count.
//!
//! What each fault models:
//!
//! | fault | effect | the client sees |
//! |---|---|---|
//! | transient | nothing happens | [`Error::Transient`] |
//! | ghost | the request takes effect | [`Error::Transient`] (a response lost on the way back) |
//! | torn put | a prefix of the object is stored (overwritable objects only: create-only writes are atomic on every real store) | [`Error::Transient`] |
//! | permanent (after `fail_after` requests) | nothing happens | [`Error::Remote`] |
//! | latency | the request is delayed up to `max_latency` | — |
//! | create-only ignored (`ignore_create_only`) | a create-only put overwrites, as on servers that ignore `If-None-Match` | success, as if the object was new |

use std::ops::Range;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;

use volback::error::{Error, Result};
use volback::store::{ObjectMeta, ObjectStore, RequestCounts};

/// Fault rates (each a probability per request) and limits.
#[derive(Debug, Clone, Default)]
pub struct FaultConfig {
    pub seed: u64,
    pub transient: f64,
    pub ghost: f64,
    pub torn: f64,
    pub max_latency: Duration,
    /// Every request after this many fails permanently.
    pub fail_after: Option<u64>,
    /// Create-only puts overwrite and report that they created the object, as S3-compatible
    /// servers that ignore `If-None-Match` do.
    pub ignore_create_only: bool,
}

/// Counts of faults injected so far.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FaultCounts {
    pub transient: u64,
    pub ghost: u64,
    pub torn: u64,
    pub permanent: u64,
}

/// A store that injects faults into another.
pub struct FaultStore {
    inner: Arc<dyn ObjectStore>,
    cfg: FaultConfig,
    rng: Mutex<u64>,
    requests: AtomicU64,
    counts: Mutex<FaultCounts>,
}

enum Fault {
    None,
    Transient,
    Ghost,
    Torn,
}

impl FaultStore {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn ObjectStore>, cfg: FaultConfig) -> Self {
        let seed = cfg.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        FaultStore {
            inner,
            cfg,
            rng: Mutex::new(seed),
            requests: AtomicU64::new(0),
            counts: Mutex::new(FaultCounts::default()),
        }
    }

    /// Faults injected so far.
    pub fn counts(&self) -> FaultCounts {
        *self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn uniform(&self) -> f64 {
        let mut x = self.rng.lock().unwrap_or_else(|p| p.into_inner());
        *x ^= *x >> 12;
        *x ^= *x << 25;
        *x ^= *x >> 27;
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn count(&self, f: impl FnOnce(&mut FaultCounts)) {
        f(&mut self.counts.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// Decides the fault for one request (after the latency and the permanent limit).
    fn draw(&self, op: &'static str, key: &str) -> Result<Fault> {
        if !self.cfg.max_latency.is_zero() {
            std::thread::sleep(self.cfg.max_latency.mul_f64(self.uniform()));
        }
        let n = self.requests.fetch_add(1, Ordering::Relaxed);
        if self.cfg.fail_after.is_some_and(|limit| n >= limit) {
            self.count(|c| c.permanent += 1);
            return Err(Error::Remote {
                op,
                location: key.to_string(),
                message: "injected permanent fault".into(),
            });
        }
        let u = self.uniform();
        let (t, g, r) = (self.cfg.transient, self.cfg.ghost, self.cfg.torn);
        Ok(if u < t {
            Fault::Transient
        } else if u < t + g {
            Fault::Ghost
        } else if u < t + g + r {
            Fault::Torn
        } else {
            Fault::None
        })
    }

    fn transient(&self, op: &'static str, key: &str, what: &str) -> Error {
        Error::Transient {
            op,
            key: key.to_string(),
            message: format!("injected {what} fault"),
        }
    }

    /// Runs a request that has no torn form.
    fn run<T>(&self, op: &'static str, key: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        match self.draw(op, key)? {
            Fault::None => f(),
            Fault::Transient | Fault::Torn => {
                self.count(|c| c.transient += 1);
                Err(self.transient(op, key, "transient"))
            }
            Fault::Ghost => {
                self.count(|c| c.ghost += 1);
                f()?;
                Err(self.transient(op, key, "ghost"))
            }
        }
    }
}

impl ObjectStore for FaultStore {
    fn put(&self, key: &str, data: Bytes) -> Result<()> {
        match self.draw("put", key)? {
            Fault::None => self.inner.put(key, data),
            Fault::Transient => {
                self.count(|c| c.transient += 1);
                Err(self.transient("put", key, "transient"))
            }
            Fault::Ghost => {
                self.count(|c| c.ghost += 1);
                self.inner.put(key, data)?;
                Err(self.transient("put", key, "ghost"))
            }
            Fault::Torn => {
                self.count(|c| c.torn += 1);
                self.inner.put(key, data.slice(..data.len() / 2))?;
                Err(self.transient("put", key, "torn write"))
            }
        }
    }

    fn put_if_absent(&self, key: &str, data: Bytes) -> Result<bool> {
        if self.cfg.ignore_create_only {
            return self.run("put", key, || self.inner.put(key, data).map(|()| true));
        }
        self.run("put", key, || self.inner.put_if_absent(key, data))
    }

    fn get(&self, key: &str) -> Result<Bytes> {
        self.run("get", key, || self.inner.get(key))
    }

    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        self.run("get", key, || self.inner.get_range(key, range))
    }

    fn get_range_into(
        &self,
        key: &str,
        range: Range<u64>,
        buf: &mut Vec<u8>,
    ) -> Result<Option<Bytes>> {
        self.run("get", key, || self.inner.get_range_into(key, range, buf))
    }

    fn head(&self, key: &str) -> Result<Option<u64>> {
        self.run("head", key, || self.inner.head(key))
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        self.run("list", prefix, || self.inner.list(prefix))
    }

    fn delete(&self, key: &str) -> Result<()> {
        self.run("delete", key, || self.inner.delete(key))
    }

    fn requests(&self) -> RequestCounts {
        self.inner.requests()
    }

    fn describe(&self) -> String {
        format!("{} (with injected faults)", self.inner.describe())
    }

    fn concurrency(&self) -> usize {
        self.inner.concurrency()
    }

    fn upload_concurrency(&self) -> usize {
        self.inner.upload_concurrency()
    }
}
