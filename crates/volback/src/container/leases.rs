//! Leases: written before an operation reads the index, renewed by a thread every TTL/8, deleted
//! when it is done. The collector's sweep waits for every lease that may predate its record.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::time::Duration;

use rayon::prelude::*;

use super::Container;
use crate::clock::{hostname, now_unix};
use crate::error::{Error, Result};
use crate::format::keys::{LEASES_PREFIX, lease_key};
use crate::format::lease::{LEASE_FORMAT, LEASE_VERSION, Lease};

/// How long a lease is valid unless the caller says otherwise. It is renewed every eighth of
/// this, so it only runs out when its process is gone (or stalled): then the collector may
/// sweep after [`LEASE_TTL`] plus its clock-skew bound, and the stalled backup will not commit.
pub const LEASE_TTL: Duration = Duration::from_secs(15 * 60);

impl Container {
    /// Writes (or renews) a lease: started at `started_unix`, valid for `ttl` from now.
    /// Returns the expiry written.
    pub fn write_lease(
        &self,
        key: &str,
        backup_id: &str,
        started_unix: u64,
        ttl: Duration,
    ) -> Result<u64> {
        let lease = Lease {
            format: LEASE_FORMAT.into(),
            version: LEASE_VERSION,
            backup_id: backup_id.into(),
            host: hostname(),
            pid: std::process::id(),
            started_unix,
            // Saturating: a huge TTL is a lease that never expires, not one that already has.
            expires_unix: now_unix().saturating_add(ttl.as_secs()),
        };
        self.store
            .put(key, self.seal_object(key, lease.encode()?)?)?;
        Ok(lease.expires_unix)
    }

    /// Every lease in the container (unreadable ones are skipped: a lease is advisory, and a
    /// torn one is treated as live by the collector through its key's presence only if valid).
    pub fn list_leases(&self) -> Result<Vec<(String, Lease)>> {
        let keys = self.store.list(LEASES_PREFIX)?;
        let leases: Vec<Option<(String, Lease)>> = self.on_io_pool(|| {
            keys.par_iter()
                .map(|o| {
                    let bytes = self.store.get(&o.key).ok()?;
                    let plain = self.open_object(&o.key, &o.key, bytes).ok()?;
                    let lease = Lease::decode(&plain)?;
                    Some((o.key.clone(), lease))
                })
                .collect()
        });
        Ok(leases.into_iter().flatten().collect())
    }
}

/// A lease held while an operation relies on chunk locations it read from the index (a backup
/// deduplicating, a restore or verify reading): the collector's sweep waits for every lease older
/// than its condemnation record. A thread renews the lease every `ttl / 8`; dropping the guard
/// stops it and deletes the lease.
pub struct LeaseGuard {
    container: Container,
    key: String,
    ttl: Duration,
    valid_until: Arc<AtomicU64>,
    stop: Option<std::sync::mpsc::Sender<()>>,
    renewer: Option<std::thread::JoinHandle<()>>,
}

impl LeaseGuard {
    /// Writes the lease for `backup_id` and starts renewing it.
    pub fn take(container: &Container, backup_id: &str, ttl: Duration) -> Result<Self> {
        let key = lease_key(backup_id);
        let started = now_unix();
        let expires = container.write_lease(&key, backup_id, started, ttl)?;
        let valid_until = Arc::new(AtomicU64::new(expires));
        let (stop, rx) = std::sync::mpsc::channel::<()>();
        let renewer = {
            let (c, key, id, valid) = (
                container.clone(),
                key.clone(),
                backup_id.to_string(),
                valid_until.clone(),
            );
            let every = (ttl / 8).max(Duration::from_millis(100));
            std::thread::Builder::new()
                .name("volback-lease".into())
                .spawn(move || {
                    while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                        rx.recv_timeout(every)
                    {
                        if let Ok(expires) = c.write_lease(&key, &id, started, ttl) {
                            valid.store(expires, AtomicOrdering::Relaxed);
                        }
                    }
                })
                .map_err(|e| Error::Internal(format!("lease thread: {e}")))?
        };
        Ok(LeaseGuard {
            container: container.clone(),
            key,
            ttl,
            valid_until,
            stop: Some(stop),
            renewer: Some(renewer),
        })
    }

    /// The lease's key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Fails unless the lease still has at least half its time to live. A backup checks this
    /// just before committing: a collector treats a lease as dead only after it expired (plus
    /// the clock-skew bound), so a writer that could not renew for that long must not commit a
    /// manifest that may name chunks swept meanwhile.
    pub fn check_valid(&self) -> Result<()> {
        let until = self.valid_until.load(AtomicOrdering::Relaxed);
        if now_unix().saturating_add(self.ttl.as_secs() / 2) > until {
            return Err(Error::LeaseExpired {
                key: self.key.clone(),
                expires_unix: until,
            });
        }
        Ok(())
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(h) = self.renewer.take() {
            let _ = h.join();
        }
        let _ = self.container.store.delete(&self.key);
    }
}
