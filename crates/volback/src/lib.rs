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
//! backup:  volume ──read (SEEK_HOLE skips holes)──> zero runs + FastCDC (parallel) [source, chunker]
//!            (incremental: the parent's chunks guide the cuts; an unchanged chunk is hashed, not scanned)
//!            ──BLAKE3 (parallel)──> dedup set (memory, or a temp file) ──zstd (parallel)──> [pipeline, dedup]
//!            (encrypted: sealed, AES-256-GCM-SIV) pack builder ──PUT pack──> index segment ──PUT──>
//!            (Object Lock: the packs it reads retained) manifest (create-only, then retained)
//!                                                                                 [pack, index, manifest]
//!
//! restore: manifest ──hints──> extent list ──> the backup's chunk ids (sorted, Bloom filter)
//!          index segments ──filter, external sort, join──> its location table     [locations]
//!          extent-list chunks ──> windows of extents ──group by pack──>          [restore]
//!            ranged GETs (coalesced, parallel) ──(open,) zstd -d, BLAKE3 verify──> 32 MiB stripe
//!            ──writer thread, volume order──> target
//! ```
//!
//! Large writes skip the page cache ([`store::direct`]): a filesystem container's packs (fsync'd
//! before they are renamed into place) go to the disk with direct I/O from a reused aligned
//! buffer, and a restore decodes into aligned stripes laid out like the target, whose whole
//! blocks a writer thread writes with direct I/O while the next stripe is decoded (unless
//! `--buffered`), rather than copying them into new cache pages to be written back later.
//! Filesystems that refuse direct I/O get buffered writes.
//!
//! An incremental reads its parent's extent list alongside the volume, as a guide
//! ([`chunker::Guide`]). FastCDC's cut depends only on the bytes from the chunk's start up to
//! and including the byte after its end. So where the next bytes hash to the id of a parent
//! chunk the guide expects there, and FastCDC's cut test passes at its end on the byte that
//! follows here (64 table lookups, not a scan), FastCDC would cut exactly there, and the
//! chunker takes that cut without scanning for it. The guide
//! expects two chunks:
//! - the parent's chunk at the same offset (data that stayed in place);
//! - the successor of the parent chunk the previous chunk matched (data that moved).
//!
//! An incremental given a **change map** ([`change_map`]: a list of changed extents, `rbd
//! diff`, `thin_delta`, a QEMU dirty bitmap over NBD) reads only the changed ranges and a few
//! chunks around each (`backup/mapped.rs`). Each changed range is re-chunked from the last
//! parent boundary before it whose 4 KiB block is not all zeros (no chunk and no zero run
//! crosses such a *fresh point*, so a chunker resumed there cuts as one that ran from the
//! start), until its cuts meet the parent's at another fresh point; the rest reuses the
//! parent's chunks unread. The extent list is the one a full read makes (the property test in
//! `tests/change_maps.rs`). A sampled read-back of reused chunks and a full-read policy bound
//! the damage of a wrong map; the manifest records how the backup was made
//! (`docs/change-maps.md`).
//!
//! The chunks are the same as without the guide. An unchanged volume is hashed once and never
//! scanned. The guide only saves work: ids are computed from the volume's bytes, and a parent
//! that cannot be read leaves the volume unguided.
//!
//! Memory grows neither with the volume nor with the container: a backup holds a window of the
//! pipeline (at most four 4 MiB read buffers, the pack being built and the packs uploading: one
//! on a filesystem, up to three on S3; a finished pack's buffer is reused for a later one) and a
//! dedup set ([`backup::dedup`]) that keeps up to 65,536 known chunks in memory and the
//! rest in a sorted temporary file (1/16 byte per chunk stays in memory), plus 16 bytes per
//! chunk the backup stores. The known chunks are the container's for a backup of a new volume,
//! and only the parent's for an incremental (`backup/parent_scope.rs`): an incremental reads its
//! parent's extent list through the locations the parent's manifest records, and neither lists
//! the packs nor reads the index, so its requests and memory do not grow with the container (an
//! unchanged file or an empty change map: nine requests). A restore holds two stripes (32 MiB each, 64 MiB on S3) and the
//! locations of its backup's chunks alone, in a sorted temporary file beyond 65,536 (half a
//! byte per chunk of the backup stays in memory); while it reads the index it holds the pack
//! listing (41 bytes a pack) and a Bloom filter of the backup's chunks (at most 32 MiB). The `volback` binary also tunes glibc's allocator (mmap threshold pinned at
//! 128 KiB; for full backups, an 8 MiB trim threshold): a process embedding the driver gets
//! the same with `MALLOC_MMAP_THRESHOLD_=131072` and, for full backups,
//! `MALLOC_TRIM_THRESHOLD_=8388608` (`docs/performance.md`).
//!
//! ## Container format in brief (full specification: `docs/format.md`)
//!
//! | object | written | what it is |
//! |---|---|---|
//! | `config` | once, create-only | chunker parameters, pack size, zstd level; every backup in the container uses them (encrypted: sealed, with the container id and cipher beside) |
//! | `keys/<id>` | encrypted containers: creation, key add/change | the master key wrapped by one secret (Argon2id) |
//! | `packs/<xx>/<blake3>` | by backups (later: the collector's repack) | chunks back to back + a table at the end; named by its own BLAKE3 |
//! | `index/<blake3>` | after the packs it describes | chunk id → (pack, offset, lengths); immutable segments |
//! | `backups/<id>` | last, create-only | the manifest: ids, size, metadata, and the extent-list chunk ids (with where they were stored, as hints) |
//! | `deleted/<id>` | by delete | tombstone: tells "deleted" from "never existed" |
//! | `leases/<id>-<uuid>` | while a backup, restore or verify runs | lease read by the garbage collector |
//! | `gc/condemned-<time>-<uuid>` | by the collector | packs proposed for deletion, and the chunks that thereby lose a copy no one else holds (*exposed*) |
//! | `resume/<hash of the volume id>` | by an unfinished incremental, after each index segment | the segments it wrote, so a re-run finds its packs without a listing |
//!
//! With Object Lock, `config` is settings version 3 (the retention mode and days), and the
//! manifests, the packs they read, `config` and the key slots are retained on S3.
//!
//! A chunk's id is the BLAKE3 of its uncompressed bytes (keyed BLAKE3 in an encrypted
//! container). A manifest names chunks by id only,
//! never by pack, so packs can be rewritten (repacked) without touching any manifest. The extent
//! list (every extent of the volume: a chunk id and length, or a zero run) is itself stored as
//! content-defined chunks, so an incremental backup re-stores only the parts of its extent list
//! that changed.
//!
//! ## Encryption ([`crypto`]; specified in `docs/format.md`, "Encryption")
//!
//! A container created with a key is encrypted on the client. A random master key, stored
//! only wrapped (one `keys/<id>` slot per secret, Argon2id), gives a data key and a chunk-id
//! key. Every chunk in a pack, every pack table and every metadata object (manifest, index
//! segment, tombstone, lease, condemnation record, the settings in `config`) is sealed with
//! AES-256-GCM-SIV under a random nonce, bound to its name; chunk ids are keyed
//! BLAKE3. Objects stay named by the BLAKE3 of their stored bytes, so everything above works
//! unchanged on ciphertext, and structure and integrity can be verified without the key. A
//! container opened without its key is *locked* ([`container::Container::keys`] fails with
//! `key_required`); a wrong key fails with `wrong_key` before any other object is read.
//!
//! ## Object Lock ([`container::retention`]; specified in `docs/format.md`, "Object Lock")
//!
//! A container created with Object Lock settings lives in an S3 bucket with Object Lock
//! enabled. Before a backup's manifest is committed, the packs a restore of it reads (found
//! through the index), the config and the key slots are retained until now + the retention
//! period; the manifest is retained right after its commit, or removed again if that fails.
//! No one, volback or a thief with the writer's credentials, can delete a retained version
//! before its date: `delete` of such a backup fails with `retained`, the collector leaves
//! retained packs and reports them, and every delete volback makes removes all versions, so
//! nothing reclaimed lingers in the versioned bucket. What a plain DELETE hid behind a delete
//! marker, `undelete` brings back.
//!
//! ## Crash safety: data first, manifest last
//!
//! A backup writes packs, then the index segments describing them, then its manifest with a
//! create-only write (`link(2)` on a filesystem; `If-None-Match: *` on S3). On a filesystem every
//! object is written to a temporary file, fsync'd and renamed. A backup exists exactly when its
//! manifest does, so an interrupted backup is never visible; what it left behind is unreferenced
//! and reclaimed by the collector.
//!
//! ## Garbage-collection protocol ([`gc`]; argued in full in `docs/gc.md`)
//!
//! Deleting a backup removes only its manifest (after writing a tombstone). Space is reclaimed by
//! a mark-and-sweep collector that runs while backups run on other hosts, with no lock:
//!
//! 1. **Leases.** A backup (and a restore or verify) writes `leases/<id>-<uuid>` before it reads
//!    the index, renews it every TTL/8, and deletes it when done — a backup only after its
//!    manifest is committed, and it refuses to commit if its lease has less than half its TTL
//!    left.
//! 2. **Mark.** The collector lists manifests and marks every chunk they reference.
//! 3. **Condemn.** Packs with no live chunk, and the sparsest partly live packs (after their live
//!    chunks are copied into new packs and indexed) are listed in a create-only
//!    `gc/condemned-<time>-<uuid>` record — not deleted.
//! 4. **Sweep.** A record is swept when no lease that may predate it (started before it, plus
//!    the clock-skew bound, and not expired) is alive — in the same run if none is. The
//!    collector marks again (manifests committed since), and deletes a condemned pack only if
//!    every live chunk in it has a copy in a pack that exists and no record condemns, checked
//!    twice, the second time on fresh listings. Index segments are merged, then packs deleted,
//!    then the record.
//! 5. **Writers skip condemned packs.** A backup of a new volume reads the records, then lists
//!    packs, then reads the index; it deduplicates only against chunks in existing, uncondemned
//!    packs. An incremental checks that its parent still exists, reads the records, and
//!    deduplicates only against its parent's chunks that no record exposes. Neither builds a
//!    pack whose name is condemned.
//!
//! ## Which operations may run concurrently
//!
//! Safety comes from immutable, content-named objects, create-only commits and the rules above.
//!
//! | pair | safe? | why |
//! |---|---|---|
//! | backup ∥ backup (same or other volume, any host) | yes | packs and index segments are named by their content, so two writers never overwrite each other's objects differently; a chunk stored twice is harmless; manifests are create-only, so two backups with one id cannot both commit |
//! | backup ∥ restore | yes | a restore reads only objects a committed manifest reaches; a running backup adds objects but changes none |
//! | backup ∥ delete | yes | delete removes one manifest; the chunks stay until a sweep proves no manifest needs them |
//! | backup ∥ gc | yes | a lease older than a condemnation holds back its sweep (step 4); a backup started after it never reuses condemned chunks, nor an incremental exposed ones (step 5); one whose lease lapsed does not commit (step 1) |
//! | backup ∥ verify, import, export | yes | these read one manifest and the index |
//! | restore ∥ restore, verify, import, export | yes | all read-only |
//! | restore ∥ delete (same backup) | clean error | the restore fails with "backup deleted" or a missing object, naming it; no partial target is left |
//! | restore ∥ gc | yes | the restore's lease holds back sweeps of records made while it runs, and it prefers copies in live packs |
//! | delete ∥ delete (same backup) | yes | tombstone then manifest removal; the second reports "deleted", not "not found" |
//! | delete ∥ gc | yes | a manifest deleted during marking makes its chunks collectable a run later, never earlier |
//! | gc ∥ gc | yes | records are create-only; each sweep re-checks copies on listings taken after its own record was written, so two collectors never delete each other's last copy; segments are merged new-first |
//! | verify ∥ anything | yes | read-only, under a lease |
//! | prune ∥ anything | yes | prune is delete + gc: each backup it removes is a delete, then one collection |
//! | copy ∥ anything | yes | a copy is a restore of the source (under its lease) streamed into a backup of the destination (under its own): each side is as safe as those are |
//! | `cat`, differential restore ∥ anything | yes | a restore's reads, under a restore's lease: `cat` fetches only the chunks its range needs; a differential restore reads the target and fetches only the chunks that differ |
//! | `serve` (NBD) ∥ anything | yes | a restore's reads for as long as it runs, under a restore's lease: a sweep of packs condemned meanwhile waits until it stops, so a delete of the served backup frees its space only after that |
//! | `cinder adopt` ∥ anything | yes | each adopted backup is a backup (create-only, committed last, under its lease), then a restore to a hash; an adoption that fails deletes what it committed |
//! | backup ∥ gc, Object Lock | yes | as above; retention only adds refusals: a pack whose delete the server refuses stays, out of the index, and a later collection condemns it again |
//! | delete ∥ anything, Object Lock | yes | a retained backup's delete is refused before it writes a tombstone; an expired one is deleted as above |
//!
//! On S3 the create-only commit is `If-None-Match: *`. Servers that ignore it (Garage 2.5, for
//! one) still never lose data — content-named objects are identical whoever writes them — but
//! two backups racing to commit the *same backup id* would both appear to succeed there.
//!
//! ## Where things are
//!
//! One folder per concept, one file per thing; the folders depend on each other only downwards
//! in this list (no cycles):
//!
//! ```text
//! error.rs, ids.rs, clock.rs    the error type (stable kind() strings), ids and hashes, time
//! crypto/                       seal (AES-256-GCM-SIV), kdf (Argon2id), source (where a
//!                               secret comes from); mod: Keys, what reading and writing need
//! chunker/                      params, zero (zero runs), cdc (FastCDC), parallel (cutting on
//!                               several threads), guide (the parent's chunks), splitter
//!                               (also resumed mid-volume at a fresh point)
//! nbd_protocol.rs               the NBD protocol's numbers (serve/ and change_map/ speak it)
//! change_map/                   what changed since the parent: extents (JSON/CSV), rbd (rbd
//!                               diff), thin (thin_delta XML), nbd (a QEMU dirty bitmap read
//!                               over NBD); mod: ChangeMap, checked before use
//! format/                       one file per stored object: config, chunk, pack, index_segment,
//!                               manifest, extent_list, record, lease, condemnation, tombstone,
//!                               key_slot, sealed (an encrypted container's envelope);
//!                               keys (which key holds what); versioned (JSON versions)
//! store/                        the ObjectStore trait; fs, memory, s3, s3_lock (Object Lock and
//!                               versions); retry; versions (deletes of every version); direct
//! index/                        the index in memory (Index, Locate), the dedup ChunkSet, and
//!                               located (the records gc and verify sort)
//! container/                    Container: url, open/create (mod), keyring (key slots),
//!                               backups (manifests), packs, index_scan (the protocol's read order), leases,
//!                               fetch (ranged reads, verified), extents (walking a backup),
//!                               retention (Object Lock)
//! backup/                       source (reading volumes), buffers, dedup (the dedup set),
//!                               parent_scope (an incremental's: the parent's chunks), resume
//!                               (an interrupted incremental's packs), pipeline (the threads),
//!                               packer, writer, parent_guide,
//!                               unchanged (an unchanged file is not read), mapped (only what
//!                               a change map names is read), read_mode (which of the three,
//!                               and the full-read policy), retain (Object Lock at commit);
//!                               mod: run_backup
//! restore/                      locations (chunk locations table), check, window, stripe,
//!                               writer, output: target (a file or device) or stream (a
//!                               sink written front to back); range (part of a volume:
//!                               `volback cat`), differential (onto an existing volume,
//!                               rewriting only what differs); mod: run_restore
//! gc/                           survey (the packs, and a chunk-to-packs table sorted on disk),
//!                               mark (the live set, sorted on disk), join (one pass over both),
//!                               condemn, repack, sweep, merge: the protocol's steps
//! extsort.rs                    external sort: the bounded-memory tables restore, backup
//!                               and gc sort into scratch files
//! prune/                        policy (retention rules, restic's semantics); mod: run_prune
//! copy/                         backups into a second container: a restore streamed into a
//!                               backup of the destination; mod: run_copy
//! cinder/                       backups Cinder's chunked drivers wrote: metadata (their
//!                               manifest), plan (which object supplies each byte, newest
//!                               layer first), object (read, inflate, MD5 check), md5
//!                               (AWS-LC, and eight messages in AVX2 lanes), lanes (many
//!                               objects read a piece at a time, MD5s together), restore
//!                               (into a new file), stream (front to back), adopt (into
//!                               volback backups with the same ids + backup-import
//!                               records); mod: list, chain
//! serve/                        a backup as an NBD block device: listener (Unix socket or
//!                               TCP), nbd (the protocol), export (reads, block status,
//!                               read-ahead), extent_map (offset → extents from per-chunk
//!                               checkpoints), cache (verified chunks, LRU); mod: NbdServer
//! verify.rs                     what verify checks without restoring
//! usage.rs                      what each backup alone holds (list --exclusive)
//! driver.rs                     the Cinder verbs over all of the above; start here as a caller
//! ```
//!
//! A byte of `volback backup` goes [`backup::source`] → [`chunker`] → `backup/pipeline.rs`
//! (BLAKE3, [`backup::dedup`], zstd in [`format::chunk`]) → `backup/packer.rs` →
//! `backup/writer.rs` → [`store`] as a [`format::pack`], described by a
//! [`format::index_segment`], reachable from a [`format::manifest`] through its
//! [`format::extent_list`]. `volback restore` brings it back: [`restore::locations`] → the
//! extent list via [`container::extents`] → `restore/window.rs` ([`container::fetch`]: ranged
//! read, zstd -d, BLAKE3 check) → `restore/stripe.rs` → `restore/writer.rs` →
//! `restore/target.rs` (or `restore/stream.rs`, for a pipe or a file object). The `volback` binary (crate `volback-cli`) parses arguments and calls
//! these; the Python package (crate `volback-python`) wraps them for Python and holds the
//! Cinder driver, `volback.cinder.VolbackBackupDriver`; the test-support crate
//! (`volback-testkit`) holds the fault-injecting store, the deterministic data and the S3 test
//! server.
//!
//! ## Example
//!
//! ```
//! use volback::driver::{Driver, DriverConfig};
//! use volback::format::record::BackupRecord;
//! use volback::backup::source::VolumeSource;
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

pub mod backup;
pub mod change_map;
pub mod chunker;
pub mod cinder;
pub mod clock;
pub mod container;
pub mod copy;
pub mod crypto;
pub mod driver;
pub mod error;
pub(crate) mod extsort;
pub mod format;
pub mod gc;
pub mod ids;
pub mod index;
mod nbd_protocol;
pub mod prune;
pub mod restore;
pub mod serve;
pub mod store;
pub mod usage;
pub mod verify;

pub use error::{Error, KINDS, Result};
