//! Each subcommand run against the library.

use std::io::Read;
use std::io::Write;
use std::path::PathBuf;

use serde_json::json;

use crate::args::Cmd;
use crate::out;
use crate::output::{print_json, progress_bar};
use volback::backup::BackupOptions;
use volback::backup::source::VolumeSource;
use volback::container::Container;
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

/// How a command that did not fail ended.
pub enum Outcome {
    Done,
    /// `verify` found damage.
    Damaged,
}

pub fn run(cmd: Cmd, s3: &S3Options) -> Result<Outcome> {
    match cmd {
        Cmd::Backup {
            container,
            volume,
            backup_id,
            volume_id,
            parent,
            metadata,
            data_timestamp,
            zstd_level,
            chunk_avg,
            lease_ttl,
            json,
        } => {
            let init = chunk_avg.map(|avg| {
                let mut c = ContainerConfig::default();
                c.chunker.avg = avg;
                c.chunker.min = avg / 4;
                c.chunker.max = avg * 4;
                c
            });
            let c = Container::open_with(&container, true, init, s3)?;
            let volume_metadata = match metadata {
                Some(p) => {
                    let text = volback::store::read_local_file(&p)?;
                    Some(serde_json::from_slice(&text).map_err(|e| {
                        Error::Config(format!("metadata file '{}' is not JSON: {e}", p.display()))
                    })?)
                }
                None => None,
            };
            let size_hint = if volume == "-" {
                None
            } else {
                std::fs::metadata(&volume)
                    .ok()
                    .map(|m| m.len())
                    .filter(|n| *n > 0)
            };
            let source = if volume == "-" {
                VolumeSource::stdin()
            } else {
                VolumeSource::Path(PathBuf::from(&volume))
            };
            let opts = BackupOptions {
                backup_id,
                volume_id: volume_id.unwrap_or_else(|| volume_id_from(&volume)),
                parent_id: parent,
                data_timestamp,
                volume_metadata,
                expected_size: None,
                zstd_level,
                dedup_mem_keys: None,
                lease_ttl: Some(std::time::Duration::from_secs(lease_ttl.max(1))),
            };
            let pb = progress_bar(json, size_hint);
            let cb = |n: u64| {
                if let Some(pb) = &pb {
                    pb.set_position(n);
                }
            };
            let driver = Driver::with_container(c.clone());
            let out = driver.backup_with(&c, source, &opts, Some(&cb));
            if let Some(pb) = pb {
                pb.finish_and_clear();
            }
            let r = out?.report;
            if json {
                print_json(&r)?;
            } else {
                // An incremental says how much of the volume its parent's chunks recognised.
                let guided = if r.parent_id.is_some() {
                    format!(", {} recognised from the parent", r.chunks_guided)
                } else {
                    String::new()
                };
                out!(
                    "backup {} of {} bytes: read {}, stored {} new bytes in {} objects ({} of {} chunks new{guided}, {} zero bytes) in {:.2}s",
                    r.backup_id,
                    r.size,
                    r.bytes_read,
                    r.bytes_new,
                    r.object_count,
                    r.chunks_new,
                    r.chunks_total,
                    r.zero_bytes,
                    r.elapsed_s
                )?;
            }
            Ok(Outcome::Done)
        }
        Cmd::Restore {
            container,
            backup_id,
            target,
            existing,
            metadata_out,
            no_sync,
            buffered,
            json,
        } => {
            let c = Container::open_with(&container, false, None, s3)?;
            let opts = RestoreOptions {
                sync: !no_sync,
                direct_io: !buffered,
                ..RestoreOptions::new(if existing {
                    TargetMode::Existing
                } else {
                    TargetMode::New
                })
            };
            let pb = progress_bar(json, None);
            let cb = |n: u64| {
                if let Some(pb) = &pb {
                    pb.set_position(n);
                }
            };
            let r = run_restore_with(&c, &backup_id, &target, &opts, Some(&cb));
            if let Some(pb) = pb {
                pb.finish_and_clear();
            }
            let r = r?;
            if let (Some(p), Some(doc)) = (metadata_out, &r.volume_metadata) {
                std::fs::write(&p, serde_json::to_vec_pretty(doc).unwrap_or_default())
                    .map_err(|e| Error::io("write metadata", &p, e))?;
            }
            if json {
                print_json(&r)?;
            } else {
                out!(
                    "restored backup {} ({} bytes, {} data, {} zero) to {} in {:.2}s",
                    r.backup_id,
                    r.size,
                    r.bytes_written,
                    r.zero_bytes,
                    target.display(),
                    r.elapsed_s
                )?;
            }
            Ok(Outcome::Done)
        }
        Cmd::Delete {
            container,
            backup_id,
            json,
        } => {
            let c = Container::open_with(&container, false, None, s3)?;
            Driver::with_container(c).delete_backup(&BackupRecord {
                id: backup_id.clone(),
                ..Default::default()
            })?;
            if json {
                print_json(&json!({"backup_id": backup_id, "deleted": true}))?;
            } else {
                out!("deleted backup {backup_id}")?;
            }
            Ok(Outcome::Done)
        }
        Cmd::Export {
            container,
            backup_id,
        } => {
            let c = Container::open_with(&container, false, None, s3)?;
            let text = Driver::with_container(c).export_record(&BackupRecord {
                id: backup_id,
                ..Default::default()
            })?;
            write!(std::io::stdout().lock(), "{text}")
                .map_err(|e| Error::io("write output", "<stdout>", e))?;
            Ok(Outcome::Done)
        }
        Cmd::Import {
            container,
            record,
            json,
        } => {
            let text = read_input(&record)?;
            let driver = Driver::new(DriverConfig {
                container: container.clone(),
                s3: s3.clone(),
                ..Default::default()
            });
            let r = driver.import_record(&text, Some(&container))?;
            if json {
                print_json(&r)?;
            } else {
                out!(
                    "imported backup {} of volume {} ({} bytes)",
                    r.id,
                    r.volume_id,
                    r.size
                )?;
            }
            Ok(Outcome::Done)
        }
        Cmd::List { container, json } => {
            let c = Container::open_with(&container, false, None, s3)?;
            let backups = c.list_backups()?;
            if json {
                let items: Vec<_> = backups
                    .iter()
                    .map(|b| match b {
                        Ok(m) => json!({
                            "backup_id": m.backup_id, "volume_id": m.volume_id, "parent_id": m.parent_id,
                            "size": m.size, "created_at": m.created_at, "data_timestamp": m.data_timestamp,
                            "bytes_new": m.stats.bytes_new, "object_count": m.stats.object_count,
                        }),
                        Err(e) => json!({"error": e.kind(), "message": e.to_string()}),
                    })
                    .collect();
                print_json(&json!({"container": c.url(), "backups": items}))?;
            } else {
                out!(
                    "{:<38} {:<20} {:>16} {:<22} parent",
                    "backup",
                    "volume",
                    "size",
                    "created"
                )?;
                for b in &backups {
                    match b {
                        Ok(m) => out!(
                            "{:<38} {:<20} {:>16} {:<22} {}",
                            m.backup_id,
                            m.volume_id,
                            m.size,
                            m.created_at,
                            m.parent_id.as_deref().unwrap_or("-")
                        )?,
                        Err(e) => out!("damaged: {e}")?,
                    }
                }
            }
            Ok(Outcome::Done)
        }
        Cmd::RebuildIndex { container, json } => {
            let c = Container::open_with(&container, false, None, s3)?;
            let (packs, chunks) = c.rebuild_index()?;
            if json {
                print_json(&json!({"packs": packs, "chunks": chunks}))?;
            } else {
                out!("indexed {chunks} chunks from {packs} packs")?;
            }
            Ok(Outcome::Done)
        }
        Cmd::Gc {
            container,
            dry_run,
            max_unused,
            clock_skew,
            min_age,
            json,
        } => {
            if max_unused.is_nan() || max_unused < 0.0 {
                return Err(Error::Config(format!(
                    "--max-unused {max_unused} must be 0 or more"
                )));
            }
            let c = Container::open_with(&container, false, None, s3)?;
            let r = run_gc(
                &c,
                &GcOptions {
                    dry_run,
                    max_unused,
                    clock_skew: std::time::Duration::from_secs(clock_skew),
                    min_age: std::time::Duration::from_secs(min_age),
                },
            )?;
            if json {
                print_json(&r)?;
            } else {
                out!(
                    "{}{} backups, {} live chunks; condemned {} unreferenced and {} sparse packs; wrote {} packs ({} bytes); deleted {} packs ({} bytes); reclaimed {} bytes; {} condemnation records swept, {} deferred, in {:.2}s",
                    if dry_run { "dry run: " } else { "" },
                    r.backups,
                    r.live_chunks,
                    r.packs_unreferenced,
                    r.packs_repacked,
                    r.packs_written,
                    r.bytes_written,
                    r.packs_deleted,
                    r.bytes_deleted,
                    r.bytes_reclaimed,
                    r.records_swept,
                    r.records_deferred,
                    r.elapsed_s
                )?;
                if r.live_chunks_missing > 0 {
                    out!(
                        "warning: {} chunks needed by backups are in no pack; run verify",
                        r.live_chunks_missing
                    )?;
                }
            }
            Ok(Outcome::Done)
        }
        Cmd::Verify {
            container,
            backup_id,
            read_data,
            json,
        } => {
            let c = Container::open_with(&container, false, None, s3)?;
            let r = run_verify(
                &c,
                &VerifyOptions {
                    backup_id,
                    read_data,
                },
            )?;
            if json {
                print_json(&r)?;
            } else {
                for b in &r.backups {
                    if b.ok {
                        out!("ok       {}", b.backup_id)?;
                    } else {
                        out!("DAMAGED  {} ({} problems)", b.backup_id, b.problem_count)?;
                        for p in &b.problems {
                            out!("         {}: {}", p.object, p.message)?;
                        }
                    }
                }
                for p in &r.damaged_objects {
                    out!("DAMAGED  object {}: {}", p.object, p.message)?;
                }
                out!(
                    "{} backups checked, {} damaged; {} chunk references checked{}",
                    r.backups_checked,
                    r.damaged_backups.len(),
                    r.chunks_checked,
                    if read_data {
                        format!(
                            ", {} chunks ({} bytes) read and re-hashed",
                            r.chunks_read, r.bytes_read
                        )
                    } else {
                        String::new()
                    }
                )?;
            }
            Ok(if r.ok() {
                Outcome::Done
            } else {
                Outcome::Damaged
            })
        }
        Cmd::Check { container } => {
            let driver = Driver::new(DriverConfig {
                container,
                create_container: true,
                s3: s3.clone(),
                ..Default::default()
            });
            driver.check_for_setup_error()?;
            out!("ok")?;
            Ok(Outcome::Done)
        }
    }
}
