//! The in-memory store, for tests and simulations.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Mutex;

use bytes::Bytes;

use super::{ObjectMeta, ObjectStore, RequestCounters, RequestCounts, validate_key};
use crate::error::{Error, Result};

/// An in-memory store, for tests and simulations.
#[derive(Default)]
pub struct MemStore {
    objects: Mutex<BTreeMap<String, Bytes>>,
    counters: RequestCounters,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Bytes>> {
        // A panic while holding the lock cannot leave the map half-updated (every update is a
        // single insert or remove), so a poisoned lock is safe to reuse.
        self.objects.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ObjectStore for MemStore {
    fn put(&self, key: &str, data: Bytes) -> Result<()> {
        validate_key(key)?;
        self.counters.put(data.len());
        self.lock().insert(key.to_string(), data);
        Ok(())
    }

    fn put_if_absent(&self, key: &str, data: Bytes) -> Result<bool> {
        validate_key(key)?;
        self.counters.put(data.len());
        let mut map = self.lock();
        if map.contains_key(key) {
            return Ok(false);
        }
        map.insert(key.to_string(), data);
        Ok(true)
    }

    fn get(&self, key: &str) -> Result<Bytes> {
        let data = self
            .lock()
            .get(key)
            .cloned()
            .ok_or_else(|| Error::MissingObject {
                key: key.to_string(),
            })?;
        self.counters.get(data.len());
        Ok(data)
    }

    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        let data = self.get(key)?;
        if range.end > data.len() as u64 || range.start > range.end {
            return Err(Error::corrupt(
                key,
                data.len() as u64,
                format!("object ends before byte {}", range.end),
            ));
        }
        Ok(data.slice(range.start as usize..range.end as usize))
    }

    fn head(&self, key: &str) -> Result<Option<u64>> {
        self.counters.head();
        Ok(self.lock().get(key).map(|d| d.len() as u64))
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        self.counters.list();
        Ok(self
            .lock()
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| ObjectMeta {
                key: k.clone(),
                size: v.len() as u64,
            })
            .collect())
    }

    fn delete(&self, key: &str) -> Result<()> {
        self.counters.delete();
        self.lock().remove(key);
        Ok(())
    }

    fn requests(&self) -> RequestCounts {
        self.counters.snapshot()
    }

    fn describe(&self) -> String {
        "memory://".to_string()
    }
}
