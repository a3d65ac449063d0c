//! Object names: which key holds what.
//!
//! ```text
//! config                           container config (JSON): chunker parameters, pack size, zstd level
//! packs/<h0h1>/<blake3>            packs of chunks, named by the BLAKE3 of their bytes
//! index/<blake3>                   index segments (chunk -> pack, offset), one or more per backup
//! backups/<backup_id>              manifests: a backup exists iff its manifest does
//! deleted/<backup_id>              tombstones of deleted backups (so "deleted" differs from "unknown")
//! leases/<backup_id>-<uuid>        leases: a running backup, restore or verify announces itself
//! gc/condemned-<unix>-<uuid>       condemnation records: packs the collector proposes to delete
//! probes/<unix>-<uuid>             setup checks' probe objects (written, read back, deleted)
//! resume/<blake3 of the volume id> the index segments an unfinished incremental of the volume wrote
//! ```
//!
//! Packs are spread over 256 prefixes so that neither a directory nor an S3 key prefix grows
//! without bound. Every key is validated ([`crate::store::validate_key`]), and every id that goes
//! into a key is validated first ([`crate::ids::validate_id`]).

use crate::ids::Hash;

/// Key of the container config.
pub const CONFIG_KEY: &str = "config";
/// Prefix of every pack.
pub const PACKS_PREFIX: &str = "packs/";
/// Prefix of every index segment.
pub const INDEX_PREFIX: &str = "index/";
/// Prefix of every manifest.
pub const BACKUPS_PREFIX: &str = "backups/";
/// Prefix of every lease.
pub const LEASES_PREFIX: &str = "leases/";
/// Prefix of condemnation records.
pub const CONDEMNED_PREFIX: &str = "gc/condemned-";
/// Prefix of resume hints.
pub const RESUME_PREFIX: &str = "resume/";
/// Prefix of setup-check probes.
pub const PROBES_PREFIX: &str = "probes/";

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

/// Key of the index segment whose bytes are `segment`.
pub fn segment_key(segment: &[u8]) -> String {
    format!("index/{}", Hash::of(segment).to_hex())
}

/// Key of a backup's manifest.
pub fn manifest_key(backup_id: &str) -> String {
    format!("backups/{backup_id}")
}

/// Key of a deleted backup's tombstone.
pub fn tombstone_key(backup_id: &str) -> String {
    format!("deleted/{backup_id}")
}

/// Key of a new lease for `backup_id`.
pub fn lease_key(backup_id: &str) -> String {
    format!("leases/{}-{}", backup_id, uuid::Uuid::new_v4().simple())
}

/// Key of the resume hint of incrementals of the volume whose id hashes to `volume` (the
/// chunk-id hash: keyed in an encrypted container, so the key does not show the volume id).
pub fn resume_key(volume: &Hash) -> String {
    format!("{RESUME_PREFIX}{}", volume.to_hex())
}

/// Key of a new condemnation record written at `unix` seconds.
pub fn condemnation_key(unix: u64) -> String {
    format!("{CONDEMNED_PREFIX}{unix}-{}", uuid::Uuid::new_v4().simple())
}

/// Key of a new setup-check probe written at `unix` seconds.
pub fn probe_key(unix: u64) -> String {
    format!("{PROBES_PREFIX}{unix}-{}", uuid::Uuid::new_v4().simple())
}

/// When the probe at `key` was written, if `key` is a probe's.
pub fn probe_time(key: &str) -> Option<u64> {
    let rest = key.strip_prefix(PROBES_PREFIX)?;
    rest.split_once('-')?.0.parse().ok()
}
