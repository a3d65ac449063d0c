//! The `volback` command line: the driver's verbs for operators and scripts.
//!
//! Exit status: 0 on success, 1 on any error (the message names the object and offset), 2 on a
//! usage error, 3 when `verify` finds damage. With `--json`, stdout carries exactly one JSON object (an error too:
//! `{"error": kind, "message": ...}`) and nothing else.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use volback::container::{Container, ContainerConfig};
use volback::driver::{Driver, DriverConfig};
use volback::gc::{GcOptions, run_gc};
use volback::pipeline::BackupOptions;
use volback::record::BackupRecord;
use volback::restore::{RestoreOptions, TargetMode, run_restore_with};
use volback::s3::S3Options;
use volback::source::VolumeSource;
use volback::verify::{VerifyOptions, run_verify};
use volback::{Error, Result};

#[derive(Parser)]
#[command(
    name = "volback",
    version,
    about = "Deduplicating, compressed, verifiable backups of block-storage volumes"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    #[command(flatten)]
    s3: S3Args,
}

/// S3 settings; anything not given comes from the AWS environment variables and profile files.
/// Secrets are never taken on the command line (they would show in `ps`).
#[derive(clap::Args)]
struct S3Args {
    /// S3 endpoint URL, e.g. http://127.0.0.1:9000 (default: $AWS_ENDPOINT_URL, then AWS).
    #[arg(long, global = true)]
    s3_endpoint: Option<String>,
    /// S3 region (default: $AWS_REGION, the profile's region, then us-east-1).
    #[arg(long, global = true)]
    s3_region: Option<String>,
    /// Profile in ~/.aws/credentials and ~/.aws/config (default: $AWS_PROFILE, then "default").
    #[arg(long, global = true)]
    s3_profile: Option<String>,
    /// Concurrent S3 requests (default 8).
    #[arg(long, global = true)]
    s3_concurrency: Option<usize>,
}

impl S3Args {
    fn options(&self) -> S3Options {
        S3Options {
            endpoint: self.s3_endpoint.clone(),
            region: self.s3_region.clone(),
            profile: self.s3_profile.clone(),
            concurrency: self.s3_concurrency,
            ..Default::default()
        }
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Back up a volume image, block device or stdin ('-') into a container.
    Backup {
        /// Container URL: file:///abs/dir or a plain path (created if missing).
        #[arg(long)]
        container: String,
        /// Volume to read: a file, a block device, or '-' for stdin.
        #[arg(long)]
        volume: String,
        /// Id for the backup (default: a new UUID).
        #[arg(long)]
        backup_id: Option<String>,
        /// Id of the volume (default: derived from the volume's file name).
        #[arg(long)]
        volume_id: Option<String>,
        /// Make an incremental backup of this parent backup.
        #[arg(long)]
        parent: Option<String>,
        /// JSON file with volume metadata to store with the backup.
        #[arg(long)]
        metadata: Option<PathBuf>,
        /// Point-in-time label stored with the backup (Cinder's data_timestamp).
        #[arg(long)]
        data_timestamp: Option<String>,
        /// zstd level for this backup (default: the container's): 1..=22, or -7..=-1 for
        /// zstd's fast levels (faster, larger).
        #[arg(long, allow_negative_numbers = true)]
        zstd_level: Option<i32>,
        /// Average chunk size in bytes for a container created by this command.
        #[arg(long)]
        chunk_avg: Option<u32>,
        /// Seconds the backup's lease lives without renewal (renewed every eighth of it).
        #[arg(long, default_value_t = volback::pipeline::LEASE_TTL.as_secs())]
        lease_ttl: u64,
        /// Print one JSON object and nothing else.
        #[arg(long)]
        json: bool,
    },
    /// Restore a backup onto a file or block device.
    Restore {
        #[arg(long)]
        container: String,
        #[arg(long)]
        backup_id: String,
        /// Target file or block device. A new file is created sparse.
        #[arg(long)]
        target: PathBuf,
        /// Overwrite an existing target (zero extents are written as zeros).
        #[arg(long)]
        existing: bool,
        /// Write the volume metadata stored with the backup to this file.
        #[arg(long)]
        metadata_out: Option<PathBuf>,
        /// Do not flush the target to stable storage before reporting success (scratch
        /// targets only; by default a restore that reports success is on disk).
        #[arg(long)]
        no_sync: bool,
        /// Write through the page cache, for an image that is read right after the restore.
        /// By default whole blocks bypass it with direct I/O, as Cinder's volume copies do:
        /// restoring a large volume neither evicts the host's cache nor pays for a new cache
        /// page per 4 KiB.
        #[arg(long)]
        buffered: bool,
        #[arg(long)]
        json: bool,
    },
    /// Delete a backup (its space is reclaimed by garbage collection; other backups are unaffected).
    Delete {
        #[arg(long)]
        container: String,
        #[arg(long)]
        backup_id: String,
        #[arg(long)]
        json: bool,
    },
    /// Print a self-describing record of a backup on stdout.
    Export {
        #[arg(long)]
        container: String,
        #[arg(long)]
        backup_id: String,
    },
    /// Validate an exported record against a container ('-' reads stdin).
    Import {
        #[arg(long)]
        container: String,
        #[arg(long)]
        record: String,
        #[arg(long)]
        json: bool,
    },
    /// List the backups in a container.
    List {
        #[arg(long)]
        container: String,
        #[arg(long)]
        json: bool,
    },
    /// Rebuild the chunk index from the packs' own tables (repairs a lost or damaged index).
    RebuildIndex {
        #[arg(long)]
        container: String,
        #[arg(long)]
        json: bool,
    },
    /// Reclaim the space of deleted backups and interrupted ones; safe alongside anything.
    Gc {
        #[arg(long)]
        container: String,
        /// Report what would be condemned; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Unused bytes tolerated in partly live packs, as a fraction of live bytes; beyond it
        /// the sparsest packs are rewritten (1 disables repacking).
        #[arg(long, default_value_t = GcOptions::default().max_unused)]
        max_unused: f64,
        /// Largest clock difference between hosts sharing the container, in seconds.
        #[arg(long, default_value_t = GcOptions::default().clock_skew.as_secs())]
        clock_skew: u64,
        /// Sweep condemned packs only this many seconds after they were condemned.
        #[arg(long, default_value_t = 0)]
        min_age: u64,
        #[arg(long)]
        json: bool,
    },
    /// Check that backups can be restored: structure always, every chunk with --read-data.
    /// Exit status 3 if anything is damaged.
    Verify {
        #[arg(long)]
        container: String,
        /// Only this backup (default: all).
        #[arg(long)]
        backup_id: Option<String>,
        /// Read back, decompress and re-hash every chunk.
        #[arg(long)]
        read_data: bool,
        #[arg(long)]
        json: bool,
    },
    /// Check that a container is reachable and writable (creating it if missing).
    Check {
        #[arg(long)]
        container: String,
    },
}

/// Pins glibc's mmap threshold at its initial 128 KiB. By default glibc raises it to the size
/// of any large block freed, after which the pipeline's 8 MiB buffers come from the heap and
/// fragment it: a 16 GiB backup then peaked 39 % above a 4 GiB one; pinned, within 5 %
/// (`docs/performance.md`, peak RSS), at no measurable cost in throughput.
///
/// Pinning the mmap threshold also pins the trim threshold, at 128 KiB: in a backup, each
/// worker's arena was then handed back to the kernel after every batch of compressed chunks was
/// freed, and faulted in again for the next (~70k page faults, ~10 % of a full backup's CPU).
/// Full backups keep 8 MiB per arena (one batch's worth): faults 92–106k → 26–28k, CPU
/// 8.3 → 7.4 s, peak RSS +3–5 MiB on the fs image. Other commands keep the low threshold: a restore holds
/// +5–8 MiB with it, more at 16 GiB than at 4 (`docs/performance.md`, sixth session), and so
/// does an incremental, which compresses little: an unchanged incremental of a 16 GiB stream
/// peaked at 36–40 MiB with it against 33–34 MiB without (31–34 MiB at 4 GiB), while a
/// next-day incremental of the fs image took the same time (twelfth session).
fn tune_malloc(full_backup: bool) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tunables; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 << 10);
        if full_backup {
            libc::mallopt(libc::M_TRIM_THRESHOLD, 8 << 20);
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = full_backup;
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tune_malloc(matches!(cli.cmd, Cmd::Backup { parent: None, .. }));
    let json = match &cli.cmd {
        Cmd::Backup { json, .. }
        | Cmd::Restore { json, .. }
        | Cmd::Delete { json, .. }
        | Cmd::Import { json, .. }
        | Cmd::List { json, .. }
        | Cmd::RebuildIndex { json, .. }
        | Cmd::Gc { json, .. }
        | Cmd::Verify { json, .. } => *json,
        _ => false,
    };
    let s3 = cli.s3.options();
    init_logging();
    match run(cli.cmd, &s3) {
        Ok(Outcome::Done) => ExitCode::SUCCESS,
        Ok(Outcome::Damaged) => ExitCode::from(3),
        Err(e) => {
            if json {
                let _ = writeln!(
                    std::io::stdout().lock(),
                    "{}",
                    json!({"error": e.kind(), "message": e.to_string()})
                );
            }
            eprintln!("volback: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn progress_bar(json: bool, len: Option<u64>) -> Option<ProgressBar> {
    if json || !std::io::stderr().is_terminal() {
        return None;
    }
    let pb = match len {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::no_length(),
    };
    pb.set_style(
        ProgressStyle::with_template(
            "{spinner} {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {wide_bar}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    Some(pb)
}

/// Writes a line to stdout. A closed stdout (`volback list | head -1`) is a typed error (the
/// report or record did not reach its reader), never a panic.
macro_rules! out {
    ($($arg:tt)*) => {
        writeln!(std::io::stdout().lock(), $($arg)*)
            .map_err(|e| Error::io("write output", "<stdout>", e))
    };
}

fn print_json(v: &impl serde::Serialize) -> Result<(), Error> {
    out!("{}", serde_json::to_string(v).unwrap_or_default())
}

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
enum Outcome {
    Done,
    /// `verify` found damage.
    Damaged,
}

fn run(cmd: Cmd, s3: &S3Options) -> Result<Outcome> {
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

/// Warnings (a damaged index segment worked around, say) go to stderr; `VOLBACK_LOG=debug`
/// shows more (retries, for one).
fn init_logging() {
    let level = std::env::var("VOLBACK_LOG")
        .ok()
        .and_then(|v| v.parse::<tracing::Level>().ok())
        .unwrap_or(tracing::Level::WARN);
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}
