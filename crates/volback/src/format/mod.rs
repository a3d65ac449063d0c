//! The stored formats: one file per kind of object (specified in full in `docs/format.md`), and
//! [`keys`]: which key holds what.
//!
//! | object | key | file |
//! |---|---|---|
//! | container config | `config` | [`config`] |
//! | key slot (encrypted containers) | `keys/<id>` | [`key_slot`] |
//! | pack (chunks + table) | `packs/<xx>/<blake3>` | [`pack`], chunks in [`chunk`] |
//! | index segment | `index/<blake3>` | [`index_segment`] |
//! | manifest | `backups/<id>` | [`manifest`] |
//! | extent list | chunks in packs, named by the manifest | [`extent_list`] |
//! | tombstone | `deleted/<id>` | [`tombstone`] |
//! | lease | `leases/<id>-<uuid>` | [`lease`] |
//! | condemnation record | `gc/condemned-<time>-<uuid>` | [`condemnation`] |
//! | resume hint | `resume/<hash of the volume id>` | [`resume`] |
//! | exported record | outside the container | [`record`] |
//! | any metadata object of an encrypted container | as above | [`sealed`] |
//!
//! Every format carries a version; a reader refuses a version it does not know with
//! [`crate::Error::UnsupportedVersion`], and refuses damage with an error naming the object and
//! the offset. Nothing here does I/O: these are pure encoders and decoders (the fuzz targets
//! drive them directly).

pub mod chunk;
pub mod condemnation;
pub mod config;
pub mod extent_list;
pub mod index_segment;
pub mod key_slot;
pub mod keys;
pub mod lease;
pub mod manifest;
pub mod pack;
pub mod record;
pub mod resume;
pub mod sealed;
pub mod tombstone;
pub mod versioned;
