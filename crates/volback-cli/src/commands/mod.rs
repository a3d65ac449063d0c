//! Each subcommand, one file each, run against the library; the helpers they share.

use std::io::Read;
use std::io::Write;
use std::path::PathBuf;

use serde_json::json;

mod backup;
mod cat;
mod check;
mod cinder;
mod copy;
mod delete;
mod export;
mod gc;
mod import;
mod key;
mod list;
mod prune;
mod rebuild_index;
mod restore;
mod serve;
mod undelete;
mod verify;

use crate::args::Cmd;
use crate::events;
use crate::out;
use crate::output::{print_json, progress_bar};
use volback::backup::BackupOptions;
use volback::backup::source::VolumeSource;
use volback::container::Container;
use volback::crypto::KeySource;
use volback::driver::{Driver, DriverConfig};
use volback::format::config::ContainerConfig;
use volback::format::record::BackupRecord;
use volback::gc::{GcOptions, run_gc};
use volback::restore::{RestoreOptions, TargetMode, run_restore_with};
use volback::store::s3::S3Options;
use volback::verify::{VerifyOptions, run_verify};
use volback::{Error, Result};

/// A volume id from a file name: invalid characters become '_'.
fn volume_id_from(volume: &str) -> String {
    let name = std::path::Path::new(volume)
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let mut id: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(128)
        .collect();
    if volume == "-" {
        id = "stdin".into();
    } else if id.is_empty() || id.starts_with('.') {
        id = format!("volume{id}");
    }
    id
}

fn read_input(path: &str) -> Result<String> {
    let bytes = if path == "-" {
        let mut b = Vec::new();
        std::io::stdin()
            .read_to_end(&mut b)
            .map_err(|e| Error::io("read", "<stdin>", e))?;
        b
    } else {
        volback::store::read_local_file(std::path::Path::new(path))?
    };
    String::from_utf8(bytes)
        .map_err(|_| volback::error::RecordError::Malformed("not UTF-8 text".into()).into())
}

/// `key=value` labels from repeated `--label` flags.
fn labels_of(flags: &[String]) -> Result<std::collections::BTreeMap<String, String>> {
    flags
        .iter()
        .map(|l| volback::format::manifest::parse_label(l))
        .collect()
}

/// How the command reaches containers: S3 settings and the key of an encrypted container.
pub struct Access {
    pub s3: S3Options,
    pub key: Option<KeySource>,
}

impl Access {
    /// Opens (or, with `create`, creates: encrypted if a key was given) a container.
    pub fn open(
        &self,
        url: &str,
        create: bool,
        init: Option<ContainerConfig>,
    ) -> Result<Container> {
        Container::open_keyed(url, create, init, &self.s3, self.key.as_ref())
    }
}

/// How a command that did not fail ended.
pub enum Outcome {
    Done,
    /// `verify` found damage.
    Damaged,
}

/// Runs one subcommand.
pub fn run(cmd: Cmd, access: &Access) -> Result<Outcome> {
    match cmd {
        Cmd::Backup(a) => backup::run(a, access),
        Cmd::Restore(a) => restore::run(a, access),
        Cmd::Delete(a) => delete::run(a, access),
        Cmd::Export(a) => export::run(a, access),
        Cmd::Cat(a) => cat::run(a, access),
        Cmd::Serve(a) => serve::run(a, access),
        Cmd::Import(a) => import::run(a, access),
        Cmd::List(a) => list::run(a, access),
        Cmd::RebuildIndex(a) => rebuild_index::run(a, access),
        Cmd::Undelete(a) => undelete::run(a, access),
        Cmd::Copy(a) => copy::run(a, access),
        Cmd::Cinder(a) => cinder::run(a, access),
        Cmd::Gc(a) => gc::run(a, access),
        Cmd::Prune(a) => prune::run(a, access),
        Cmd::Verify(a) => verify::run(a, access),
        Cmd::Check(a) => check::run(a, access),
        Cmd::Key(a) => key::run(a, access),
    }
}
