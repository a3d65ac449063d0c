//! A store that interleaves several actors' requests in an order chosen by a seeded generator.
//!
//! Each actor (a backup, a delete, a collection, a restore) opens its own container over its
//! own [`SchedStore`] handle; all handles share one in-memory store. A request waits at the gate
//! until every unfinished actor is itself waiting at the gate (so no actor is racing ahead on
//! its own), then the generator picks which waiting actor goes next. One request runs at a
//! time, so a schedule is a sequence of whole requests, and the seed decides it.

use std::ops::Range;
use std::sync::{Arc, Condvar, Mutex};

use bytes::Bytes;
use volback::Result;
use volback::store::{ObjectMeta, ObjectStore, RequestCounts};

#[derive(Default)]
struct State {
    rng: u64,
    /// Per actor: requests waiting at the gate; None once the actor is done.
    waiting: Vec<Option<usize>>,
    /// Per actor: how likely its request is to go next, relative to the others'.
    weights: Vec<u32>,
    granted: Option<usize>,
    running: bool,
    steps: u64,
}

impl State {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Grants the next request if every live actor is waiting and nothing runs.
    fn pick(&mut self) -> bool {
        if self.running || self.granted.is_some() {
            return false;
        }
        let live: Vec<usize> = (0..self.waiting.len())
            .filter(|&a| self.waiting[a].is_some())
            .collect();
        if live.is_empty() || live.iter().any(|&a| self.waiting[a] == Some(0)) {
            return false;
        }
        let total: u64 = live.iter().map(|&a| u64::from(self.weights[a])).sum();
        let mut r = self.next() % total.max(1);
        for &a in &live {
            let w = u64::from(self.weights[a]);
            if r < w {
                self.granted = Some(a);
                return true;
            }
            r -= w;
        }
        self.granted = live.last().copied();
        true
    }
}

/// The shared scheduler.
pub struct Sched {
    state: Mutex<State>,
    cv: Condvar,
}

impl Sched {
    /// A scheduler for one actor per weight: a waiting actor's request goes next with
    /// probability its weight over the waiting actors' sum.
    pub fn weighted(seed: u64, weights: Vec<u32>) -> Arc<Sched> {
        Arc::new(Sched {
            state: Mutex::new(State {
                rng: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
                waiting: vec![Some(0); weights.len()],
                weights: weights.into_iter().map(|w| w.max(1)).collect(),
                ..Default::default()
            }),
            cv: Condvar::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks an actor finished (its thread calls this when its operation returns).
    pub fn done(&self, actor: usize) {
        let mut st = self.lock();
        st.waiting[actor] = None;
        st.pick();
        self.cv.notify_all();
    }

    /// Changes how likely an actor's requests are to go next, from now on.
    pub fn set_weight(&self, actor: usize, weight: u32) {
        self.lock().weights[actor] = weight.max(1);
    }

    /// Requests run so far.
    pub fn steps(&self) -> u64 {
        self.lock().steps
    }

    fn gate<T>(&self, actor: usize, f: impl FnOnce() -> T) -> T {
        let mut st = self.lock();
        if let Some(n) = st.waiting[actor].as_mut() {
            *n += 1;
        }
        loop {
            if st.granted == Some(actor) {
                st.granted = None;
                st.running = true;
                st.steps += 1;
                if let Some(n) = st.waiting[actor].as_mut() {
                    *n -= 1;
                }
                break;
            }
            if st.pick() {
                self.cv.notify_all();
                continue;
            }
            st = self.cv.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        drop(st);
        // A pinned clock (gc_schedules.rs) moves a second per request.
        volback::clock::advance_virtual_clock(1);
        let out = f();
        let mut st = self.lock();
        st.running = false;
        st.pick();
        self.cv.notify_all();
        out
    }
}

/// One actor's view of the shared store.
pub struct SchedStore {
    pub inner: Arc<dyn ObjectStore>,
    pub sched: Arc<Sched>,
    pub actor: usize,
}

impl ObjectStore for SchedStore {
    fn put(&self, key: &str, data: Bytes) -> Result<()> {
        self.sched.gate(self.actor, || self.inner.put(key, data))
    }
    fn put_if_absent(&self, key: &str, data: Bytes) -> Result<bool> {
        self.sched
            .gate(self.actor, || self.inner.put_if_absent(key, data))
    }
    fn get(&self, key: &str) -> Result<Bytes> {
        self.sched.gate(self.actor, || self.inner.get(key))
    }
    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        self.sched
            .gate(self.actor, || self.inner.get_range(key, range))
    }
    fn head(&self, key: &str) -> Result<Option<u64>> {
        self.sched.gate(self.actor, || self.inner.head(key))
    }
    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        self.sched.gate(self.actor, || self.inner.list(prefix))
    }
    fn delete(&self, key: &str) -> Result<()> {
        self.sched.gate(self.actor, || self.inner.delete(key))
    }
    fn requests(&self) -> RequestCounts {
        self.inner.requests()
    }
    fn describe(&self) -> String {
        format!("scheduled actor {}", self.actor)
    }
    fn concurrency(&self) -> usize {
        1
    }
}
