//! # volback — deduplicating backup of block-storage volumes into object storage
//!
//! volback is a backup driver in the shape of OpenStack Cinder's (`backup`, `restore`,
//! `delete_backup`, `export_record`, `import_record`, `get_metadata`/`put_metadata`), built the
//! way the best deduplicating backup tools are: content-defined chunks, content addressing,
//! packs, parallel hashing and compression, and a manifest as the single commit point.
//!
//! ## Data flow
//!
//! ```text
//! backup:  volume ──read (SEEK_HOLE skips holes)──> zero runs + FastCDC chunks      [source, chunker]
//!            ──BLAKE3 (parallel)──> dedup against the index ──zstd (parallel)──>   [pipeline]
//!            pack builder ──PUT pack──> index segment ──PUT──> manifest (create-only) [pack, index, manifest]
//!
//! restore: manifest ──> extent-list chunks ──> windows of extents ──group by pack──>  [restore]
//!            ranged GETs (coalesced, parallel) ──zstd -d, BLAKE3 verify──> pwrite at offsets
//! ```
//!
//! ## Container format in brief (full specification: `docs/format.md`)
//!
//! | object | written | what it is |
//! |---|---|---|
//! | `config` | once, create-only | chunker parameters, pack size, zstd level; every backup in the container uses them |
//! | `packs/<xx>/<blake3>` | by backups (later: the collector's repack) | chunks back to back + a table at the end; named by its own BLAKE3 |
//! | `index/<blake3>` | after the packs it describes | chunk id → (pack, offset, lengths); immutable segments |
//! | `backups/<id>` | last, create-only | the manifest: ids, size, metadata, and the extent-list chunk ids |
//! | `deleted/<id>` | by delete | tombstone: tells "deleted" from "never existed" |
//! | `leases/<id>` | while a backup runs | writer lease read by the garbage collector |
//!
//! A chunk's id is the BLAKE3 of its uncompressed bytes. A manifest names chunks by id only,
//! never by pack, so packs can be rewritten (repacked) without touching any manifest. The extent
//! list (every extent of the volume: a chunk id and length, or a zero run) is itself stored as
//! content-defined chunks, so an incremental backup re-stores only the parts of its extent list
//! that changed.
//!
//! ## Crash safety: data first, manifest last
//!
//! A backup writes packs, then the index segments describing them, then its manifest with a
//! create-only write (`link(2)` on a filesystem; `If-None-Match: *` on S3). On a filesystem every
//! object is written to a temporary file, fsync'd and renamed. A backup exists exactly when its
//! manifest does, so an interrupted backup is never visible; what it left behind is unreferenced
//! and reclaimed by the collector.
//!
//! ## Garbage-collection protocol (implemented by the `gc` issue; the format already carries it)
//!
//! Deleting a backup removes only its manifest (after writing a tombstone). Space is reclaimed by
//! a mark-and-sweep collector that can run while backups run on other hosts:
//!
//! 1. **Leases.** Every backup writes `leases/<id>` (start time, expiry) before it reads the
//!    index, refreshes it while it runs, and deletes it after its manifest is committed.
//! 2. **Mark.** The collector lists manifests and marks every chunk they reference.
//! 3. **Condemn.** Packs with no live chunk (or below the repack threshold, after their live
//!    chunks are rewritten into new packs and indexed) are listed in a `gc/condemned-<time>`
//!    object — not deleted.
//! 4. **Sweep, later.** A condemned pack is deleted only by a later collector run, when (a) it is
//!    still unreferenced by every manifest committed since, and (b) every lease that was live
//!    when it was condemned has ended or expired (plus the clock-skew bound). A backup that
//!    started before the condemnation either committed (and its manifest is seen by (a)) or is
//!    still running (and holds back the sweep by (b)).
//! 5. **Writers skip condemned packs.** A backup that starts after a condemnation loads the
//!    condemned lists with the index and does not dedup against chunks that live only in
//!    condemned packs: it stores them again.
//!
//! ## Which operations may run concurrently
//!
//! There is no lock anywhere: safety comes from immutable, content-named objects, create-only
//! commits, and the lease rule above. (`gc` and `verify` are built by later issues on this
//! protocol; the rows below are the contract they must keep.)
//!
//! | pair | safe? | why |
//! |---|---|---|
//! | backup ∥ backup (same or other volume, any host) | yes | packs and index segments are named by their content, so two writers never overwrite each other's objects differently; a chunk stored twice is harmless; manifests are create-only, so two backups with one id cannot both commit |
//! | backup ∥ restore | yes | a restore reads only objects a committed manifest reaches; a running backup adds objects but changes none |
//! | backup ∥ delete | yes | delete removes one manifest; the chunks stay until the collector proves no manifest needs them, so a backup deduplicating against the deleted backup's chunks still finds them |
//! | backup ∥ gc | yes | the backup's lease is older than any condemnation made while it runs, so the sweep waits for it (step 4); a backup started after a condemnation never reuses condemned chunks (step 5) |
//! | backup ∥ import / export | yes | both read one manifest and the index |
//! | restore ∥ restore, export, import, verify | yes | all read-only |
//! | restore ∥ delete (same backup) | clean error | the restore fails with "backup deleted" or a missing object, naming it; nothing else is affected |
//! | restore ∥ gc | yes | only packs unreferenced by every committed manifest are condemned, and one is deleted only a full collector cycle later |
//! | delete ∥ delete (same backup) | yes | tombstone then manifest removal; the second reports "deleted", not "not found" |
//! | delete ∥ gc | yes | a manifest deleted during marking makes its chunks collectable one cycle later, never earlier |
//! | gc ∥ gc | yes | condemnation records are content-named; a sweep deletes only packs condemned by an earlier run and re-checked against current manifests |
//! | verify ∥ anything | yes | read-only; a pack deleted under a verify of a deleted backup is reported as missing for that backup only |
//!
//! On S3 the create-only commit is `If-None-Match: *`. Servers that ignore it (Garage 2.5, for
//! one) still never lose data — content-named objects are identical whoever writes them — but
//! two backups racing to commit the *same backup id* would both appear to succeed there.
//!
//! ## Modules
//!
//! - [`driver`]: the Cinder verbs; start here as a caller.
//! - [`pipeline`]: the backup pipeline. [`restore`]: the restore pipeline.
//! - [`chunker`]: zero runs and FastCDC. [`source`]: reading volumes.
//! - [`pack`], [`index`], [`manifest`], [`record`]: the on-storage formats.
//! - [`container`]: object names and container-level operations. [`store`]: the storage trait,
//!   filesystem and in-memory backends. [`s3`]: S3-compatible object storage.
//! - [`error`]: the error type; every variant names the object and offset.
//!
//! ## Example
//!
//! ```
//! use volback::driver::{Driver, DriverConfig};
//! use volback::record::BackupRecord;
//! use volback::source::VolumeSource;
//!
//! let dir = tempfile::tempdir()?;
//! let image = dir.path().join("vol.img");
//! std::fs::write(&image, vec![7u8; 1 << 20])?;
//! let driver = Driver::new(DriverConfig {
//!     container: dir.path().join("container").display().to_string(),
//!     create_container: true,
//!     ..Default::default()
//! });
//! driver.check_for_setup_error()?;
//! let record = BackupRecord { id: "b1".into(), volume_id: "vol".into(), ..Default::default() };
//! let out = driver.backup(&record, VolumeSource::Path(image.clone()), None)?;
//! assert_eq!(out.updates.size, 1 << 20);
//! let restored = dir.path().join("restored.img");
//! driver.restore(&record, &restored, true)?;
//! assert_eq!(std::fs::read(&restored)?, std::fs::read(&image)?);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod chunker;
pub mod container;
pub mod driver;
pub mod error;
pub mod gc;
pub mod ids;
pub mod index;
pub mod manifest;
pub mod pack;
pub mod pipeline;
pub mod record;
pub mod restore;
pub mod s3;
pub mod source;
pub mod store;
#[doc(hidden)]
pub mod testdata;

pub use error::{Error, Result};
