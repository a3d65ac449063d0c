//! The container: an object store holding one volback format, and the operations on it.
//!
//! [`Container`] wraps a store (with retries) and the container's config. Its operations are
//! grouped by what they touch:
//! - [`url`]: where a container lives (which key holds what is [`crate::format::keys`]);
//! - `backups.rs`: manifests read, committed create-only, listed, deleted behind a tombstone;
//! - `packs.rs` and [`index_scan`]: the packs that exist, their tables, and the index read in the
//!   collection protocol's order;
//! - [`keyring`]: an encrypted container's key slots: unlock, add, remove, change;
//! - [`leases`]: what a running operation shows the collector;
//! - [`retention`]: Object Lock: what a committed backup needs, kept from deletion;
//! - [`fetch`] and [`extents`]: reading chunks and walking a backup's extents.

mod backups;
pub mod extents;
pub mod fetch;
pub mod index_scan;
pub mod keyring;
pub mod leases;
pub(crate) mod pack_numbers;
mod packs;
pub mod retention;
pub mod url;

pub use crate::format::keys::{manifest_key, pack_id_of_key, pack_key, tombstone_key};
pub use fetch::{FetchRange, MAX_RANGE_RAW, plan_ranges};
pub use index_scan::{IndexScan, IndexUse, LoadedIndex};
pub use leases::{LEASE_TTL, LeaseGuard};
pub use packs::PackListing;
pub use url::ContainerUrl;

use std::sync::Arc;

use bytes::Bytes;

use crate::crypto::{KeySource, Keys};
use crate::error::{Error, Result};
use crate::format::config::{ContainerConfig, EncryptedConfig, StoredConfig};
use crate::format::keys::{CONFIG_KEY, LEASES_PREFIX};
use crate::store::s3::{S3Options, S3Store};
use crate::store::versions::AllVersions;
use crate::store::{FsStore, ObjectStore};

/// An open container: a store plus its config and, once known, its keys.
#[derive(Clone)]
pub struct Container {
    store: Arc<dyn ObjectStore>,
    url: String,
    config: ContainerConfig,
    /// How objects are sealed and chunk ids computed; `None` while an encrypted container is
    /// locked (opened without its key: only structure can be checked).
    keys: Option<Arc<Keys>>,
    /// The stored config of an encrypted container (its id and sealed settings).
    encrypted: Option<EncryptedConfig>,
    /// Threads for blocking requests, as many as the store wants in flight.
    io_pool: Arc<rayon::ThreadPool>,
}

impl std::fmt::Debug for Container {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match (&self.encrypted, &self.keys) {
            (None, _) => "plaintext",
            (Some(_), Some(_)) => "encrypted, unlocked",
            (Some(_), None) => "encrypted, locked",
        };
        write!(f, "Container({}, {state})", self.url)
    }
}

impl Container {
    /// Opens the container at `url`, creating it with `init` settings if it does not exist and
    /// `create` is set.
    pub fn open(url: &str, create: bool, init: Option<ContainerConfig>) -> Result<Self> {
        Self::open_with(url, create, init, &S3Options::default())
    }

    /// Like [`Container::open`], with explicit S3 settings (unset ones come from the
    /// environment and the AWS profile files).
    pub fn open_with(
        url: &str,
        create: bool,
        init: Option<ContainerConfig>,
        s3: &S3Options,
    ) -> Result<Self> {
        Self::open_keyed(url, create, init, s3, None)
    }

    /// Like [`Container::open_with`], with a key. A container created here with a key is
    /// encrypted; an encrypted container opened with one is unlocked (a wrong key fails with
    /// [`Error::WrongKey`] before any data is read); an encrypted container opened without one
    /// is locked: its structure can be verified, nothing else. A key for a plaintext
    /// container is refused ([`Error::Key`]): the caller believes its data is encrypted.
    pub fn open_keyed(
        url: &str,
        create: bool,
        init: Option<ContainerConfig>,
        s3: &S3Options,
        key: Option<&KeySource>,
    ) -> Result<Self> {
        let parsed = ContainerUrl::parse(url)?;
        let store: Arc<dyn ObjectStore> = match &parsed {
            ContainerUrl::File(p) => Arc::new(FsStore::open(p, create)?),
            ContainerUrl::S3 { bucket, prefix } => Arc::new(S3Store::open(bucket, prefix, s3)?),
        };
        Self::with_store_keyed(store, parsed.to_url(), create, init, key)
    }

    /// Opens a container on an existing store (in-memory tests, simulations).
    pub fn with_store(
        store: Arc<dyn ObjectStore>,
        url: String,
        create: bool,
        init: Option<ContainerConfig>,
    ) -> Result<Self> {
        Self::with_store_keyed(store, url, create, init, None)
    }

    /// Like [`Container::with_store`], with a key (see [`Container::open_keyed`]).
    pub fn with_store_keyed(
        store: Arc<dyn ObjectStore>,
        url: String,
        create: bool,
        init: Option<ContainerConfig>,
        key: Option<&KeySource>,
    ) -> Result<Self> {
        let store: Arc<dyn ObjectStore> = Arc::new(crate::store::retry::RetryStore::new(store));
        // The keys of an encrypted container this call created.
        let mut created = None;
        // The Object Lock settings of a container this call created.
        let mut created_lock = None;
        let stored = match store.get(CONFIG_KEY) {
            Ok(bytes) => StoredConfig::decode(&bytes)?,
            Err(Error::MissingObject { .. }) if create => {
                // Some S3-compatible servers answer a GET in a missing bucket with NoSuchKey and
                // create the bucket on PUT; a listing tells a missing bucket apart everywhere.
                store.list(LEASES_PREFIX)?;
                let mut cfg = init.unwrap_or_default();
                cfg.version = cfg.stored_version();
                cfg.validate()?;
                if cfg.object_lock.is_some() {
                    store.check_object_lock()?;
                }
                match key {
                    None => {
                        let bytes = cfg.encode()?;
                        // Create-only: if another process initialised the container first,
                        // use its config.
                        if store.put_if_absent(CONFIG_KEY, Bytes::from(bytes))? {
                            created_lock = cfg.object_lock;
                            StoredConfig::Plain(cfg)
                        } else {
                            StoredConfig::decode(&store.get(CONFIG_KEY)?)?
                        }
                    }
                    Some(source) => {
                        let (stored, keys) = keyring::create_encrypted(&store, &cfg, source)?;
                        if keys.is_some() {
                            created_lock = cfg.object_lock;
                        }
                        created = keys.map(|k| (k, cfg));
                        stored
                    }
                }
            }
            Err(Error::MissingObject { .. }) => {
                return Err(Error::Config(format!(
                    "'{url}' is not a volback container (no '{CONFIG_KEY}' object)"
                )));
            }
            Err(e) => return Err(e),
        };
        let (config, keys, encrypted) = match stored {
            StoredConfig::Plain(cfg) => {
                if key.is_some() {
                    return Err(Error::Key(format!(
                        "container '{url}' is not encrypted (it was created without a key); \
                         refusing a key so that no one believes its data is encrypted"
                    )));
                }
                (cfg, Some(Arc::new(Keys::plain())), None)
            }
            StoredConfig::Encrypted(e) => (ContainerConfig::default(), None, Some(e)),
        };
        let io_pool = rayon::ThreadPoolBuilder::new()
            .num_threads(store.concurrency())
            .thread_name(|i| format!("volback-io-{i}"))
            .build()
            .map_err(|e| Error::Internal(format!("thread pool: {e}")))?;
        let mut c = Container {
            store,
            url,
            config,
            keys,
            encrypted,
            io_pool: Arc::new(io_pool),
        };
        match (created, key) {
            (Some((keys, settings)), _) => {
                c.config = settings;
                c.keys = Some(Arc::new(keys));
            }
            (None, Some(source)) => c.unlock(source)?,
            (None, None) => {}
        }
        if c.keys.is_some() && c.config.object_lock.is_some() {
            c.store = Arc::new(AllVersions::new(c.store.clone()));
        }
        if let Some(lock) = created_lock {
            c.retain_new_container(lock)?;
        }
        Ok(c)
    }

    /// Runs `f` on the I/O pool, whose parallel iterators keep `store.concurrency()` requests in
    /// flight (more than there are cores: the threads mostly wait on the network).
    pub fn on_io_pool<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.io_pool.install(f)
    }

    /// The store underneath.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The container's URL (no credentials).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The container's settings (an encrypted container's only once it is unlocked).
    pub fn config(&self) -> &ContainerConfig {
        &self.config
    }

    /// The keys objects are read and written with: [`Error::KeyRequired`] while an encrypted
    /// container is locked.
    pub fn keys(&self) -> Result<&Arc<Keys>> {
        self.keys.as_ref().ok_or_else(|| Error::KeyRequired {
            container: self.url.clone(),
        })
    }

    /// True if the container is encrypted (whether or not it is unlocked).
    pub fn is_encrypted(&self) -> bool {
        self.encrypted.is_some()
    }

    /// The stored form of metadata object `name`'s plaintext `plain`: sealed under that name
    /// in an encrypted container, as is in a plaintext one.
    pub fn seal_object(&self, name: &str, plain: Vec<u8>) -> Result<Bytes> {
        Ok(match self.keys()?.sealer() {
            Some(s) => Bytes::from(crate::format::sealed::seal_object(s, name, &plain)),
            None => Bytes::from(plain),
        })
    }

    /// The plaintext of metadata object `name`, stored under `key` as `stored` (see
    /// [`Container::seal_object`]).
    pub fn open_object(&self, key: &str, name: &str, stored: Bytes) -> Result<Bytes> {
        Ok(match self.keys()?.sealer() {
            Some(s) => Bytes::from(crate::format::sealed::open_object(s, key, name, &stored)?),
            None => stored,
        })
    }

    /// Checks that the container can be written and read back (Cinder's `check_for_setup_error`).
    /// The probe object goes under `probes/`, named by its time: one a crash left behind is
    /// removed by gc an hour later, and is never mistaken for a lease.
    pub fn check_writable(&self) -> Result<()> {
        let key = crate::format::keys::probe_key(crate::clock::now_unix());
        let probe = Bytes::from_static(b"volback setup check");
        self.store.put(&key, probe.clone())?;
        let back = self.store.get(&key);
        self.store.delete(&key)?;
        if back? != probe {
            return Err(Error::Config(format!(
                "container '{}' did not return what was written",
                self.url
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_created_once_and_checked() {
        let store: Arc<dyn ObjectStore> = Arc::new(crate::store::MemStore::new());
        assert!(matches!(
            Container::with_store(store.clone(), "m".into(), false, None),
            Err(Error::Config(_))
        ));
        let a = Container::with_store(store.clone(), "m".into(), true, None).unwrap();
        let other = ContainerConfig {
            zstd_level: 9,
            ..Default::default()
        };
        let b = Container::with_store(store.clone(), "m".into(), true, Some(other)).unwrap();
        assert_eq!(a.config(), b.config(), "the first config wins");
        a.check_writable().unwrap();
        store
            .put(
                CONFIG_KEY,
                Bytes::from(r#"{"format":"volback-container","version":7}"#),
            )
            .unwrap();
        assert!(matches!(
            Container::with_store(store, "m".into(), false, None),
            Err(Error::UnsupportedVersion { found: 7, .. })
        ));
    }
}
