//! Container layout: which object holds what, and the operations on them.
//!
//! ```text
//! config                   container config (JSON): chunker parameters, pack size, compression
//! packs/<h0h1>/<blake3>    packs of chunks, named by the BLAKE3 of their bytes
//! index/<blake3>           index segments (chunk -> pack, offset), one or more per backup
//! backups/<backup_id>      manifests: a backup exists iff its manifest does
//! deleted/<backup_id>      tombstones of deleted backups (so "deleted" differs from "unknown")
//! leases/<lease_id>        writer leases: a running backup announces itself to the collector
//! ```
//!
//! Packs are spread over 256 prefixes so that neither a directory nor an S3 key prefix grows
//! without bound. Every key is validated ([`crate::store::validate_key`]), and every id that goes
//! into a key is validated first ([`crate::ids::validate_id`]).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::chunker::ChunkerParams;
use crate::dedup::DedupSet;
use crate::error::{Error, Result};
use crate::ids::{Hash, validate_id};
use crate::index::{Index, Locate, Location, Segment, decode_segment, encode_segment};
use crate::manifest::{Extent, ExtentListReader, Manifest, decode_versioned_json};
use crate::pack::{PackEntry, decode_chunk};
use crate::s3::{S3Options, S3Store};
use crate::store::{FsStore, ObjectMeta, ObjectStore};

/// Container config format name and version.
pub const CONFIG_FORMAT: &str = "volback-container";
/// Container config version written and read by this build.
pub const CONFIG_VERSION: u64 = 1;
/// Key of the container config.
pub const CONFIG_KEY: &str = "config";
/// Extent-list chunks fetched per group when walking a manifest (~1 MiB: a group's fetched
/// ranges are held while it is walked, and 512 made a 16 GiB restore's peak 1–2 MiB higher
/// than a 4 GiB one's).
const META_FETCH: usize = 128;

/// Per-container settings, fixed when the container is created so that every backup in it
/// chunks identically (the precondition for dedup across backups and volumes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerConfig {
    pub format: String,
    pub version: u64,
    pub chunker: ChunkerParams,
    /// Packs are closed once they reach this many bytes.
    pub pack_target: u64,
    /// Default zstd level for new chunks (a backup may override; readers need no level).
    pub zstd_level: i32,
    pub created_at: String,
}

impl Default for ContainerConfig {
    fn default() -> Self {
        ContainerConfig {
            format: CONFIG_FORMAT.into(),
            version: CONFIG_VERSION,
            chunker: ChunkerParams::default(),
            pack_target: 32 << 20,
            zstd_level: 1,
            created_at: now_rfc3339(),
        }
    }
}

impl ContainerConfig {
    fn validate(&self) -> Result<()> {
        self.chunker.validate().map_err(Error::Config)?;
        if self.pack_target < 1 << 20 || self.pack_target > crate::pack::MAX_PACK_SIZE / 2 {
            return Err(Error::Config(format!(
                "pack target {} must be between 1 MiB and 512 MiB",
                self.pack_target
            )));
        }
        if !crate::pack::valid_zstd_level(self.zstd_level) {
            return Err(Error::Config(format!(
                "zstd level {} must be -7..=-1 or 1..=22",
                self.zstd_level
            )));
        }
        Ok(())
    }
}

/// Current time as RFC 3339 (UTC, seconds).
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// Current time in seconds since the epoch.
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

/// Where a container lives, parsed from a URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerUrl {
    /// A directory: `file:///abs/dir` or a plain path.
    File(PathBuf),
    /// An S3 bucket and key prefix: `s3://bucket/prefix`.
    S3 { bucket: String, prefix: String },
}

impl ContainerUrl {
    /// Parses `file:///abs/dir` or a plain (absolute or relative) path.
    pub fn parse(url: &str) -> Result<Self> {
        if url.is_empty() || url.chars().any(|c| c.is_control()) {
            return Err(Error::Config(format!(
                "invalid container URL '{}'",
                url.escape_debug()
            )));
        }
        if let Some(rest) = url.strip_prefix("file://") {
            if !rest.starts_with('/') {
                return Err(Error::Config(format!(
                    "container URL '{url}' must be file:///absolute/path"
                )));
            }
            return Ok(ContainerUrl::File(PathBuf::from(rest)));
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let prefix = prefix.trim_matches('/');
            let bucket_ok = (3..=63).contains(&bucket.len())
                && bucket.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'
                });
            if !bucket_ok {
                return Err(Error::Config(format!(
                    "container URL '{url}': '{bucket}' is not a valid S3 bucket name"
                )));
            }
            if !prefix.is_empty() {
                crate::store::validate_key(prefix).map_err(|_| {
                    Error::Config(format!("container URL '{url}': invalid key prefix"))
                })?;
            }
            return Ok(ContainerUrl::S3 {
                bucket: bucket.into(),
                prefix: prefix.into(),
            });
        }
        if let Some((scheme, _)) = url.split_once("://") {
            return Err(Error::Config(format!(
                "container URL scheme '{scheme}://' is not supported (use s3://bucket/prefix, file:///path or a plain path)"
            )));
        }
        let p = Path::new(url);
        let abs = if p.is_absolute() {
            p.to_path_buf()
        } else {
            std::env::current_dir()
                .map_err(|e| Error::io("resolve current directory", ".", e))?
                .join(p)
        };
        Ok(ContainerUrl::File(abs))
    }

    /// The canonical URL string (what records and `--json` show).
    pub fn to_url(&self) -> String {
        match self {
            ContainerUrl::File(p) => format!("file://{}", p.display()),
            ContainerUrl::S3 { bucket, prefix } if prefix.is_empty() => format!("s3://{bucket}"),
            ContainerUrl::S3 { bucket, prefix } => format!("s3://{bucket}/{prefix}"),
        }
    }
}

/// An open container: a store plus its config.
#[derive(Clone)]
pub struct Container {
    store: Arc<dyn ObjectStore>,
    url: String,
    config: ContainerConfig,
    /// Threads for blocking requests, as many as the store wants in flight.
    io_pool: Arc<rayon::ThreadPool>,
}

/// Key of a pack.
pub fn pack_key(id: &Hash) -> String {
    let h = id.to_hex();
    format!("packs/{}/{}", &h[..2], h)
}

/// The pack id a `packs/xx/<hex>` key names, if it is one.
pub fn pack_id_of_key(key: &str) -> Option<Hash> {
    let rest = key.strip_prefix("packs/")?;
    let (dir, name) = rest.split_once('/')?;
    let id = Hash::from_hex(name)?;
    (name.starts_with(dir) && dir.len() == 2).then_some(id)
}

/// What an index is scanned for (see [`Container::scan_index`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexUse {
    /// Deduplication: only chunks the collector cannot be about to delete.
    Backup,
    /// Restore, verify, export: every chunk, preferring copies in live packs.
    Read,
}

/// An index with what was learnt while loading it.
pub struct LoadedIndex {
    pub index: Index,
    /// Packs named by condemnation records (a writer must not produce a pack with such a name).
    pub condemned: HashSet<Hash>,
    /// Number of index segments read.
    pub segments: usize,
    /// Segments that failed to decode (their packs were read from their own tables).
    pub damaged_segments: Vec<(String, Error)>,
    /// Packs no readable segment described, read from their own tables.
    pub adopted: usize,
}

/// What [`Container::scan_index`] learnt besides the entries.
pub struct IndexScan {
    pub condemned: HashSet<Hash>,
    pub segments: usize,
    pub damaged_segments: Vec<(String, Error)>,
    pub adopted: usize,
}

/// How good a copy of a chunk is for reading (lower is better): in a pack that exists and is
/// not condemned, then in a condemned one, then in one that is not listed (so that a missing
/// pack is reported by name when it is really needed).
pub(crate) fn read_rank(exists: bool, condemned: bool) -> u8 {
    match (exists, condemned) {
        (true, false) => 0,
        (true, true) => 1,
        (false, _) => 2,
    }
}

/// Index segments read at once while scanning the index, at most, and their bytes at most (a
/// full segment is ~3.4 MiB; decoded segments are held until the group is visited, so this
/// bounds a scan's memory whatever the index's size).
const SEGMENTS_AT_ONCE: usize = 16;
const SEGMENT_BYTES_AT_ONCE: u64 = 8 << 20;

/// Index segments read from a container.
#[derive(Default)]
pub struct Segments {
    /// (key, contents) of each segment that decoded.
    pub good: Vec<(String, Segment)>,
    /// Keys and decode errors of the others.
    pub damaged: Vec<(String, Error)>,
}

/// Key of a backup's manifest.
pub fn manifest_key(backup_id: &str) -> String {
    format!("backups/{backup_id}")
}

/// Key of a deleted backup's tombstone.
pub fn tombstone_key(backup_id: &str) -> String {
    format!("deleted/{backup_id}")
}

/// A writer lease (see the GC protocol in the crate docs).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Lease {
    pub format: String,
    pub version: u64,
    pub backup_id: String,
    pub host: String,
    pub pid: u32,
    pub started_unix: u64,
    pub expires_unix: u64,
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
        let parsed = ContainerUrl::parse(url)?;
        let store: Arc<dyn ObjectStore> = match &parsed {
            ContainerUrl::File(p) => Arc::new(FsStore::open(p, create)?),
            ContainerUrl::S3 { bucket, prefix } => Arc::new(S3Store::open(bucket, prefix, s3)?),
        };
        Self::with_store(store, parsed.to_url(), create, init)
    }

    /// Opens a container on an existing store (in-memory tests, simulations).
    pub fn with_store(
        store: Arc<dyn ObjectStore>,
        url: String,
        create: bool,
        init: Option<ContainerConfig>,
    ) -> Result<Self> {
        let store: Arc<dyn ObjectStore> = Arc::new(crate::retry::RetryStore::new(store));
        let config = match store.get(CONFIG_KEY) {
            Ok(bytes) => Self::decode_config(&bytes)?,
            Err(Error::MissingObject { .. }) if create => {
                // Some S3-compatible servers answer a GET in a missing bucket with NoSuchKey and
                // create the bucket on PUT; a listing tells a missing bucket apart everywhere.
                store.list("leases/")?;
                let cfg = init.unwrap_or_default();
                cfg.validate()?;
                let bytes = serde_json::to_vec_pretty(&cfg).unwrap_or_default();
                // Create-only: if another process initialised the container first, use its config.
                if store.put_if_absent(CONFIG_KEY, Bytes::from(bytes))? {
                    cfg
                } else {
                    Self::decode_config(&store.get(CONFIG_KEY)?)?
                }
            }
            Err(Error::MissingObject { .. }) => {
                return Err(Error::Config(format!(
                    "'{url}' is not a volback container (no '{CONFIG_KEY}' object)"
                )));
            }
            Err(e) => return Err(e),
        };
        let io_pool = rayon::ThreadPoolBuilder::new()
            .num_threads(store.concurrency())
            .thread_name(|i| format!("volback-io-{i}"))
            .build()
            .map_err(|e| Error::Internal(format!("thread pool: {e}")))?;
        Ok(Container {
            store,
            url,
            config,
            io_pool: Arc::new(io_pool),
        })
    }

    /// Runs `f` on the I/O pool, whose parallel iterators keep `store.concurrency()` requests in
    /// flight (more than there are cores: the threads mostly wait on the network).
    pub fn on_io_pool<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.io_pool.install(f)
    }

    /// Keys (with sizes) of every pack in the container, for checks that need many of them:
    /// one paged LIST instead of a HEAD per pack.
    pub fn list_packs(&self) -> Result<std::collections::HashMap<String, u64>> {
        Ok(self
            .store
            .list("packs/")?
            .into_iter()
            .map(|o| (o.key, o.size))
            .collect())
    }

    fn decode_config(bytes: &[u8]) -> Result<ContainerConfig> {
        let cfg: ContainerConfig = decode_versioned_json(
            CONFIG_KEY,
            bytes,
            "container config",
            CONFIG_FORMAT,
            CONFIG_VERSION,
        )?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The store underneath.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The container's URL (no credentials).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The container's settings.
    pub fn config(&self) -> &ContainerConfig {
        &self.config
    }

    /// Checks that the container can be written and read back (Cinder's `check_for_setup_error`).
    pub fn check_writable(&self) -> Result<()> {
        let key = format!("leases/setup-check-{}", uuid::Uuid::new_v4().simple());
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

    /// Reads and decodes a backup's manifest, distinguishing deleted from unknown backups.
    /// Returns the manifest and its raw bytes (whose BLAKE3 goes into exported records).
    pub fn read_manifest(&self, backup_id: &str) -> Result<(Manifest, Bytes)> {
        validate_id("backup id", backup_id)?;
        let key = manifest_key(backup_id);
        match self.store.get(&key) {
            Ok(bytes) => {
                let m = Manifest::decode(&key, &bytes)?;
                if m.backup_id != backup_id {
                    return Err(Error::corrupt(
                        &key,
                        0,
                        format!("manifest is for backup '{}'", m.backup_id),
                    ));
                }
                Ok((m, bytes))
            }
            Err(Error::MissingObject { .. }) => {
                if self.store.head(&tombstone_key(backup_id))?.is_some() {
                    Err(Error::BackupDeleted {
                        id: backup_id.into(),
                        container: self.url.clone(),
                    })
                } else {
                    Err(Error::BackupNotFound {
                        id: backup_id.into(),
                        container: self.url.clone(),
                    })
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Whether a backup (or its tombstone) already uses this id.
    pub fn backup_id_taken(&self, backup_id: &str) -> Result<bool> {
        Ok(self.store.head(&manifest_key(backup_id))?.is_some()
            || self.store.head(&tombstone_key(backup_id))?.is_some())
    }

    /// Commits a manifest; fails if a backup with this id was committed meanwhile.
    pub fn commit_manifest(&self, m: &Manifest) -> Result<Bytes> {
        let bytes = Bytes::from(m.encode());
        if !self
            .store
            .put_if_absent(&manifest_key(&m.backup_id), bytes.clone())?
        {
            return Err(Error::BackupExists {
                id: m.backup_id.clone(),
                container: self.url.clone(),
            });
        }
        Ok(bytes)
    }

    /// Every committed backup's manifest, oldest first. Unreadable manifests are returned as
    /// errors in place so that one damaged backup does not hide the others.
    pub fn list_backups(&self) -> Result<Vec<Result<Manifest>>> {
        let keys = self.store.list("backups/")?;
        let mut out: Vec<Result<Manifest>> = self.on_io_pool(|| {
            keys.par_iter()
                .map(|o| {
                    let bytes = self.store.get(&o.key)?;
                    Manifest::decode(&o.key, &bytes)
                })
                .collect()
        });
        out.sort_by_key(|r| match r {
            Ok(m) => (0, m.created_unix, m.backup_id.clone()),
            Err(_) => (1, 0, String::new()),
        });
        Ok(out)
    }

    /// Writes an index segment for `packs`; returns (key, bytes written).
    pub fn write_index_segment(&self, packs: &[(Hash, Vec<PackEntry>)]) -> Result<(String, u64)> {
        let seg = encode_segment(packs);
        let key = format!("index/{}", Hash::of(&seg).to_hex());
        let n = seg.len() as u64;
        self.store.put(&key, Bytes::from(seg))?;
        Ok((key, n))
    }

    /// Reads every index segment into memory (the collector needs them all). Segments that
    /// fail to decode are returned apart: a segment is only a cache of pack tables, so the packs
    /// it described are read from their own tables instead (see [`Container::scan_index`]).
    pub fn read_segments(&self) -> Result<Segments> {
        let mut out = Segments::default();
        self.for_each_segment(usize::MAX, u64::MAX, |key, seg| match seg {
            Ok(seg) => out.good.push((key, seg)),
            Err(e) => out.damaged.push((key, e)),
        })?;
        Ok(out)
    }

    /// Reads the index segments `at_once` at a time (in parallel) and hands each to `f`, with
    /// its decode error if it is damaged (logged). A segment that vanishes between the listing
    /// and the read was merged by a concurrent collector, which wrote the merged segment first:
    /// a listing taken after the miss has it, so the listing is taken again and only keys not
    /// seen yet are read.
    fn for_each_segment(
        &self,
        at_once: usize,
        bytes_at_once: u64,
        mut f: impl FnMut(String, Result<Segment>),
    ) -> Result<()> {
        let mut seen: HashSet<String> = HashSet::new();
        for attempt in 0.. {
            let keys: Vec<_> = self
                .store
                .list("index/")?
                .into_iter()
                .filter(|o| !seen.contains(&o.key))
                .collect();
            let mut missed = false;
            for group in groups(&keys, at_once.max(1), bytes_at_once) {
                let read: Vec<Result<(String, Result<Segment>)>> = self.on_io_pool(|| {
                    group
                        .par_iter()
                        .map(|o| {
                            let bytes = self.store.get(&o.key)?;
                            Ok((o.key.clone(), decode_segment(&o.key, &bytes)))
                        })
                        .collect()
                });
                for r in read {
                    match r {
                        Err(Error::MissingObject { .. }) if attempt < 16 => missed = true,
                        Err(e) => return Err(e),
                        Ok((key, seg)) => {
                            if let Err(e) = &seg {
                                tracing::warn!("{e}; reading the packs' own tables instead");
                            }
                            seen.insert(key.clone());
                            f(key, seg);
                        }
                    }
                }
            }
            if !missed {
                break;
            }
        }
        Ok(())
    }
}

/// Splits `objects` into consecutive groups of at most `count` objects and `bytes` bytes (a
/// larger object makes a group of its own).
fn groups(objects: &[ObjectMeta], count: usize, bytes: u64) -> Vec<&[ObjectMeta]> {
    let mut out = Vec::new();
    let (mut start, mut size) = (0, 0u64);
    for (i, o) in objects.iter().enumerate() {
        if i > start && (i - start == count || size + o.size > bytes) {
            out.push(&objects[start..i]);
            (start, size) = (i, 0);
        }
        size += o.size;
    }
    if start < objects.len() {
        out.push(&objects[start..]);
    }
    out
}

impl Container {
    /// Every pack that exists now, with its size (one paged LIST).
    pub fn listed_packs(&self) -> Result<HashMap<Hash, u64>> {
        Ok(self
            .store
            .list("packs/")?
            .iter()
            .filter_map(|o| pack_id_of_key(&o.key).map(|id| (id, o.size)))
            .collect())
    }

    /// Ids of the packs that exist now (one paged LIST).
    pub fn existing_packs(&self) -> Result<HashSet<Hash>> {
        Ok(self.listed_packs()?.into_keys().collect())
    }

    /// Reads the tables of `packs` (id, size) in parallel.
    pub fn read_pack_tables(&self, packs: &[(Hash, u64)]) -> Vec<(Hash, Result<Vec<PackEntry>>)> {
        self.on_io_pool(|| {
            packs
                .par_iter()
                .map(|(p, size)| (*p, self.read_pack_table(&pack_key(p), *size)))
                .collect()
        })
    }

    /// Loads the index for reading (restore, verify, export): every indexed chunk, located
    /// preferably in a pack that exists and is not condemned by the collector.
    pub fn load_index(&self) -> Result<Index> {
        Ok(self.load_index_report()?.index)
    }

    /// Like [`Container::load_index`], with what was learnt while loading (damaged segments,
    /// packs read from their own tables). Chunks are located preferably in a pack that exists
    /// and is not condemned, then in a condemned one, then in one that is not listed (so that a
    /// missing pack is reported by name when it is really needed). See
    /// [`Container::scan_index`] for the order of reads the collection protocol requires.
    pub fn load_index_report(&self) -> Result<LoadedIndex> {
        let mut index = Index::new();
        let scan = self.scan_index(IndexUse::Read, |pack, entries, exists, condemned| {
            index.add_pack_ranked(*pack, entries, read_rank(exists, condemned));
        })?;
        Ok(LoadedIndex {
            index,
            condemned: scan.condemned,
            segments: scan.segments,
            damaged_segments: scan.damaged_segments,
            adopted: scan.adopted,
        })
    }

    /// What a backup deduplicates against: the chunks held by packs that exist and are not
    /// condemned, as a [`DedupSet`] holding at most `mem_keys` of them in memory (the rest in a
    /// temporary file), and the condemned pack names it must not produce.
    ///
    /// Also returns where the chunks in `wanted` are (an incremental's parent extent list), so
    /// they are found in the same pass over the index.
    pub fn load_dedup_set(
        &self,
        wanted: &HashSet<Hash>,
        mem_keys: usize,
    ) -> Result<(DedupSet, HashSet<Hash>, Index)> {
        let mut set = DedupSet::builder(mem_keys);
        let mut found = Index::new();
        let scan = self.scan_index(IndexUse::Backup, |pack, entries, exists, condemned| {
            if exists && !condemned {
                for e in entries {
                    set.add(&e.id);
                }
                if !wanted.is_empty() {
                    let hits: Vec<PackEntry> = entries
                        .iter()
                        .filter(|e| wanted.contains(&e.id))
                        .copied()
                        .collect();
                    if !hits.is_empty() {
                        found.add_pack(*pack, &hits);
                    }
                }
            }
        })?;
        Ok((set.finish()?, scan.condemned, found))
    }

    /// Visits every pack the index knows, with whether it exists and whether it is condemned,
    /// in the protocol's order: condemnation records first, then the pack listing (a pack a
    /// sweep deleted is either condemned by a record still there, or absent from the listing),
    /// then the segments, streamed a few at a time so memory does not grow with the index.
    /// Packs that exist but no readable segment describes (an interrupted backup's last packs, a
    /// damaged segment's) are read from their own tables; for a backup, a segment is written
    /// for them, so a re-run after a crash reuses everything that was uploaded.
    pub fn scan_index(
        &self,
        usage: IndexUse,
        mut visit: impl FnMut(&Hash, &[PackEntry], bool, bool),
    ) -> Result<IndexScan> {
        let condemned: HashSet<Hash> = crate::gc::load_condemned(self)?
            .iter()
            .flat_map(|(_, c)| c.pack_ids())
            .collect();
        let listed = self.listed_packs()?;
        let mut covered: HashSet<Hash> = HashSet::new();
        let mut damaged = Vec::new();
        let mut segments = 0;
        self.for_each_segment(
            SEGMENTS_AT_ONCE,
            SEGMENT_BYTES_AT_ONCE,
            |key, seg| match seg {
                Ok(seg) => {
                    segments += 1;
                    for (pack, entries) in &seg {
                        covered.insert(*pack);
                        visit(
                            pack,
                            entries,
                            listed.contains_key(pack),
                            condemned.contains(pack),
                        );
                    }
                }
                Err(e) => damaged.push((key, e)),
            },
        )?;
        let mut unindexed: Vec<(Hash, u64)> = listed
            .iter()
            .filter(|(p, _)| !covered.contains(*p))
            .filter(|(p, _)| usage == IndexUse::Read || !condemned.contains(*p))
            .map(|(p, s)| (*p, *s))
            .collect();
        unindexed.sort();
        let mut tables: Segment = Vec::new();
        for (p, t) in self.read_pack_tables(&unindexed) {
            match t {
                Ok(entries) => tables.push((p, entries)),
                Err(e) => tracing::warn!("{e}"),
            }
        }
        if usage == IndexUse::Backup && !tables.is_empty() {
            for group in tables.chunks(4096) {
                self.write_index_segment(group)?;
            }
        }
        for (pack, entries) in &tables {
            visit(pack, entries, true, condemned.contains(pack));
        }
        Ok(IndexScan {
            condemned,
            segments,
            damaged_segments: damaged,
            adopted: tables.len(),
        })
    }

    /// Reads the table of one pack (two ranged reads: trailer, then table).
    pub fn read_pack_table(&self, key: &str, size: u64) -> Result<Vec<PackEntry>> {
        use crate::pack::{ENTRY_LEN, TRAILER_LEN, parse_table, parse_trailer};
        if size < TRAILER_LEN {
            return Err(Error::corrupt(
                key,
                0,
                format!("pack too short ({size} bytes)"),
            ));
        }
        let trailer = self.store.get_range(key, size - TRAILER_LEN..size)?;
        let (n, hash) = parse_trailer(key, size, &trailer)?;
        let table_start = size - TRAILER_LEN - u64::from(n) * ENTRY_LEN;
        let table = self.store.get_range(key, table_start..size - TRAILER_LEN)?;
        parse_table(key, size, n, &hash, &table)
    }

    /// Rebuilds the index from the packs themselves (packs are self-describing): reads every
    /// pack's table and writes one new segment describing all packs. Existing segments are
    /// left in place (duplicate entries are harmless). Returns (packs read, chunks indexed);
    /// a pack whose table is damaged is reported as an error naming it.
    pub fn rebuild_index(&self) -> Result<(usize, usize)> {
        let packs = self.store.list("packs/")?;
        let tables: Vec<Result<(Hash, Vec<PackEntry>)>> = self.on_io_pool(|| {
            packs
                .par_iter()
                .map(|o| {
                    let name = o.key.rsplit('/').next().unwrap_or_default();
                    let id = Hash::from_hex(name).ok_or_else(|| {
                        Error::corrupt(&o.key, 0, "pack name is not a BLAKE3 hash")
                    })?;
                    Ok((id, self.read_pack_table(&o.key, o.size)?))
                })
                .collect()
        });
        let tables: Vec<(Hash, Vec<PackEntry>)> = tables.into_iter().collect::<Result<_>>()?;
        let chunks = tables.iter().map(|(_, e)| e.len()).sum();
        for group in tables.chunks(4096) {
            self.write_index_segment(group)?;
        }
        Ok((tables.len(), chunks))
    }

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
            format: "volback-lease".into(),
            version: 1,
            backup_id: backup_id.into(),
            host: hostname(),
            pid: std::process::id(),
            started_unix,
            expires_unix: now_unix() + ttl.as_secs(),
        };
        self.store.put(
            key,
            Bytes::from(serde_json::to_vec(&lease).unwrap_or_default()),
        )?;
        Ok(lease.expires_unix)
    }

    /// Every lease in the container (unreadable ones are skipped: a lease is advisory, and a
    /// torn one is treated as live by the collector through its key's presence only if valid).
    pub fn list_leases(&self) -> Result<Vec<(String, Lease)>> {
        let keys = self.store.list("leases/")?;
        let leases: Vec<Option<(String, Lease)>> = self.on_io_pool(|| {
            keys.par_iter()
                .map(|o| {
                    let bytes = self.store.get(&o.key).ok()?;
                    let lease: Lease = serde_json::from_slice(&bytes).ok()?;
                    Some((o.key.clone(), lease))
                })
                .collect()
        });
        Ok(leases.into_iter().flatten().collect())
    }

    /// Deletes a backup: tombstone first, then the manifest. Its chunks stay until the garbage
    /// collector finds no committed manifest needs them, so no other backup is affected.
    pub fn delete_backup(&self, backup_id: &str) -> Result<()> {
        let (m, _) = self.read_manifest(backup_id)?;
        let tomb = serde_json::json!({
            "format": "volback-tombstone",
            "version": 1,
            "backup_id": backup_id,
            "volume_id": m.volume_id,
            "deleted_at": now_rfc3339(),
        });
        self.store
            .put(&tombstone_key(backup_id), Bytes::from(tomb.to_string()))?;
        self.store.delete(&manifest_key(backup_id))
    }
}

impl Container {
    /// Reads one chunk through the index: fetches its stored bytes, decompresses, and verifies
    /// its BLAKE3. `volume_offset` is for the error message only.
    pub fn read_chunk(
        &self,
        index: &Index,
        id: &Hash,
        backup_id: &str,
        volume_offset: u64,
    ) -> Result<Bytes> {
        let loc = index.get(id).ok_or_else(|| Error::ChunkNotIndexed {
            backup_id: backup_id.into(),
            chunk: id.to_hex(),
            volume_offset,
        })?;
        let key = pack_key(&index.pack_id(loc.pack));
        let start = u64::from(loc.offset);
        let stored = self
            .store
            .get_range(&key, start..start + u64::from(loc.stored_len))?;
        decode_chunk(&key, start, id, loc.compression, loc.raw_len, &stored)
            .map_err(|e| with_volume_offset(e, volume_offset))
    }

    /// Calls `f(volume_offset, extent)` for every extent of a backup, in order, fetching the
    /// extent list chunk by chunk (memory stays bounded whatever the volume size). Checks that
    /// the extents add up to the manifest's size.
    pub fn walk_extents(
        &self,
        index: &(impl Locate + ?Sized),
        manifest: &Manifest,
        mut f: impl FnMut(u64, &Extent) -> Result<()>,
    ) -> Result<()> {
        let key = manifest_key(&manifest.backup_id);
        let mut reader = ExtentListReader::new();
        let mut offset = 0u64;
        let mut batch = Vec::new();
        let metas = manifest.meta_ids(&key)?;
        // Extent-list chunks are fetched a group at a time with coalesced ranged reads (a
        // backup's extent list sits together in its metadata packs).
        for group in metas.chunks(META_FETCH) {
            let ids: Vec<Hash> = group.iter().map(|(id, _)| *id).collect();
            let ranges = plan_ranges(index, &ids, MAX_RANGE_RAW, |id| Error::ChunkNotIndexed {
                backup_id: manifest.backup_id.clone(),
                chunk: id.to_hex(),
                volume_offset: offset,
            })?;
            let fetched: Vec<Vec<(Hash, Bytes)>> = self.on_io_pool(|| {
                ranges
                    .par_iter()
                    .map(|r| self.fetch_range(r, |_| offset))
                    .collect::<Result<_>>()
            })?;
            let by_id: HashMap<Hash, Bytes> = fetched.into_iter().flatten().collect();
            for (id, len) in group {
                let chunk = by_id.get(id).ok_or_else(|| {
                    Error::Internal(format!("extent-list chunk {id} not fetched"))
                })?;
                if chunk.len() != *len as usize {
                    return Err(Error::corrupt(
                        &key,
                        0,
                        format!(
                            "extent-list chunk {id} has {} bytes, manifest says {len}",
                            chunk.len()
                        ),
                    ));
                }
                reader.push(&key, chunk, &mut batch)?;
                for e in batch.drain(..) {
                    f(offset, &e)?;
                    offset += e.len();
                }
            }
        }
        reader.finish(&key)?;
        if offset != manifest.size {
            return Err(Error::corrupt(
                &key,
                0,
                format!(
                    "extents cover {offset} bytes, manifest says {}",
                    manifest.size
                ),
            ));
        }
        Ok(())
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
        let key = format!("leases/{}-{}", backup_id, uuid::Uuid::new_v4().simple());
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
        if now_unix() + self.ttl.as_secs() / 2 > until {
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

/// Neighbouring chunks of a pack are fetched together if the gap between them is at most this
/// (reading a few unneeded bytes costs less than another request).
const COALESCE_GAP: u64 = 256 << 10;
/// Largest single ranged read (bounds memory per request in flight).
const MAX_RANGE: u64 = 4 << 20;
/// Most uncompressed bytes one range serves, by default. Well-compressed data would otherwise
/// make ranges of 20 MiB and more of work each: a restore window of only a dozen such ranges
/// left one of two threads idle for a third of it, waiting on the other's last range.
pub const MAX_RANGE_RAW: u64 = 8 << 20;

/// One ranged read of a pack and the chunks it serves.
pub struct FetchRange {
    pub pack: Hash,
    pub start: u64,
    pub end: u64,
    /// (chunk id, its location)
    pub chunks: Vec<(Hash, Location)>,
    /// Uncompressed bytes of its chunks: the work of decoding it.
    pub raw: u64,
}

/// Groups chunks by pack and merges neighbours into ranged reads of at most `MAX_RANGE`
/// stored and `max_raw` uncompressed bytes. `missing` builds the error for a chunk that no
/// index entry locates.
pub fn plan_ranges(
    index: &(impl Locate + ?Sized),
    ids: &[Hash],
    max_raw: u64,
    missing: impl Fn(&Hash) -> Error,
) -> Result<Vec<FetchRange>> {
    let mut by_pack: HashMap<u32, Vec<(Hash, Location)>> = HashMap::new();
    for (id, loc) in ids.iter().zip(index.locate_all(ids)?) {
        let loc = loc.ok_or_else(|| missing(id))?;
        by_pack.entry(loc.pack).or_default().push((*id, loc));
    }
    let mut ranges = Vec::new();
    for (pack, mut chunks) in by_pack {
        chunks.sort_unstable_by_key(|c| c.1.offset);
        let mut cur: Option<FetchRange> = None;
        for (id, loc) in chunks {
            let start = u64::from(loc.offset);
            let end = start + u64::from(loc.stored_len);
            if let Some(r) = &mut cur
                && start <= r.end + COALESCE_GAP
                && end - r.start <= MAX_RANGE
                && r.raw + u64::from(loc.raw_len) <= max_raw
            {
                r.end = r.end.max(end);
                r.raw += u64::from(loc.raw_len);
                r.chunks.push((id, loc));
                continue;
            }
            ranges.extend(cur.take());
            cur = Some(FetchRange {
                pack: index.pack_id(pack),
                start,
                end,
                chunks: vec![(id, loc)],
                raw: u64::from(loc.raw_len),
            });
        }
        ranges.extend(cur);
    }
    Ok(ranges)
}

impl Container {
    /// Reads one planned range and returns its chunks decompressed and BLAKE3-verified.
    /// `volume_offset` names, for errors, where a chunk belongs in the volume.
    pub fn fetch_range(
        &self,
        r: &FetchRange,
        volume_offset: impl Fn(&Hash) -> u64,
    ) -> Result<Vec<(Hash, Bytes)>> {
        let key = pack_key(&r.pack);
        let data = self.store.get_range(&key, r.start..r.end)?;
        r.chunks
            .iter()
            .map(|(id, loc)| {
                let at = u64::from(loc.offset);
                let s = (at - r.start) as usize;
                let stored = &data[s..s + loc.stored_len as usize];
                decode_chunk(&key, at, id, loc.compression, loc.raw_len, stored)
                    .map(|raw| (*id, raw))
                    .map_err(|e| with_volume_offset(e, volume_offset(id)))
            })
            .collect()
    }
}

/// Fills in the volume offset of a chunk verification error.
pub(crate) fn with_volume_offset(e: Error, at: u64) -> Error {
    match e {
        Error::ChunkHashMismatch {
            key, offset, chunk, ..
        } => Error::ChunkHashMismatch {
            key,
            offset,
            chunk,
            volume_offset: at,
        },
        other => other,
    }
}

pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            ContainerUrl::parse("file:///a/b").unwrap(),
            ContainerUrl::File("/a/b".into())
        );
        assert_eq!(ContainerUrl::parse("/x").unwrap().to_url(), "file:///x");
        assert!(ContainerUrl::parse("file://rel").is_err());
        assert!(ContainerUrl::parse("gopher://x").is_err());
        assert_eq!(
            ContainerUrl::parse("s3://my-bucket/a/b/").unwrap(),
            ContainerUrl::S3 {
                bucket: "my-bucket".into(),
                prefix: "a/b".into()
            }
        );
        assert_eq!(
            ContainerUrl::parse("s3://bkt").unwrap().to_url(),
            "s3://bkt"
        );
        assert!(ContainerUrl::parse("s3://B_ad").is_err());
        assert!(ContainerUrl::parse("s3://bucket/../x").is_err());
        assert!(ContainerUrl::parse("").is_err());
        assert!(ContainerUrl::parse("a\nb").is_err());
    }

    #[test]
    fn segment_reads_are_grouped_by_count_and_bytes() {
        let objs: Vec<ObjectMeta> = [5u64, 5, 20, 1, 1, 1, 1]
            .iter()
            .map(|&size| ObjectMeta {
                key: String::new(),
                size,
            })
            .collect();
        let sizes = |count, bytes| -> Vec<Vec<u64>> {
            groups(&objs, count, bytes)
                .iter()
                .map(|g| g.iter().map(|o| o.size).collect())
                .collect()
        };
        assert_eq!(sizes(16, 10), vec![vec![5, 5], vec![20], vec![1, 1, 1, 1]]);
        assert_eq!(
            sizes(3, u64::MAX),
            vec![vec![5, 5, 20], vec![1, 1, 1], vec![1]]
        );
        assert_eq!(sizes(16, 0).len(), 7);
        assert!(groups(&[], 16, 10).is_empty());
    }

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
