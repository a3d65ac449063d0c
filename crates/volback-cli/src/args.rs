//! The command line's grammar: every subcommand and flag.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use volback::gc::GcOptions;
use volback::store::s3::S3Options;

#[derive(Parser)]
#[command(
    name = "volback",
    version,
    about = "Deduplicating, compressed, verifiable backups of block-storage volumes"
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
    #[command(flatten)]
    pub s3: S3Args,
    /// Write job events (started, progress, finished with the report, error) as JSON lines to
    /// this file (appended) or to `fd:N`, an open descriptor.
    #[arg(long, global = true, value_name = "PATH|fd:N")]
    pub events: Option<String>,
    /// Where the key of an encrypted container comes from: `env:NAME` (a variable),
    /// `file:PATH` (a file) or `cmd:COMMAND` (what the command prints, e.g. a key manager's
    /// client). A container created with a key is encrypted; one without stays plaintext.
    /// The secret itself is never taken on the command line.
    #[arg(long, global = true, value_name = "env:NAME|file:PATH|cmd:COMMAND")]
    pub key: Option<String>,
}

/// S3 settings; anything not given comes from the AWS environment variables and profile files.
/// Secrets are never taken on the command line (they would show in `ps`).
#[derive(clap::Args)]
pub struct S3Args {
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
    pub fn options(&self) -> S3Options {
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
pub enum Cmd {
    /// Back up a volume image, block device or stdin ('-') into a container.
    Backup(BackupArgs),
    /// Restore a backup onto a file or block device.
    Restore(RestoreArgs),
    /// Delete a backup (its space is reclaimed by garbage collection; other backups are unaffected).
    Delete(DeleteArgs),
    /// Print a self-describing record of a backup on stdout.
    Export(ExportArgs),
    /// Write part of a backup's volume to stdout (every chunk read is verified).
    Cat(CatArgs),
    /// Serve a backup as a read-only block device over NBD (instant recovery): QEMU's tools
    /// and VMs read it while chunks are fetched on demand. Runs until SIGINT or SIGTERM.
    Serve(ServeArgs),
    /// Validate an exported record against a container ('-' reads stdin).
    Import(ImportArgs),
    /// List the backups in a container.
    List(ListArgs),
    /// Rebuild the chunk index from the packs' own tables (repairs a lost or damaged index).
    RebuildIndex(RebuildIndexArgs),
    /// Copy backups into a second container (another directory, bucket or endpoint, other
    /// credentials, other keys), writing only the chunks it lacks; again: nothing.
    Copy(CopyArgs),
    /// Backups written by Cinder's own chunked drivers (posix/NFS directory, S3 bucket): list
    /// them, restore one (its whole chain, every object's MD5 checked) without Cinder.
    Cinder(CinderArgs),
    /// Bring back the objects of a container with Object Lock that a plain DELETE hid behind
    /// delete markers (retained versions cannot be deleted, only hidden).
    Undelete(UndeleteArgs),
    /// Reclaim the space of deleted backups and interrupted ones; safe alongside anything.
    Gc(GcArgs),
    /// Apply retention rules (restic's --keep-* semantics) per volume or per label value:
    /// delete what no rule keeps, then reclaim the space.
    Prune(PruneArgs),
    /// Check that backups can be restored: structure always, every chunk with --read-data.
    /// Exit status 3 if anything is damaged.
    Verify(VerifyArgs),
    /// Manage an encrypted container's keys: list, add, remove, change (never re-encrypts data).
    Key(KeyArgs),
    /// Check that a container is reachable and writable (creating it if missing).
    Check(CheckArgs),
}

impl Cmd {
    /// The subcommand's name, as events name the operation.
    pub fn name(&self) -> &'static str {
        match self {
            Cmd::Backup(_) => "backup",
            Cmd::Restore(_) => "restore",
            Cmd::Delete(_) => "delete",
            Cmd::Export(_) => "export",
            Cmd::Cat(_) => "cat",
            Cmd::Serve(_) => "serve",
            Cmd::Import(_) => "import",
            Cmd::List(_) => "list",
            Cmd::RebuildIndex(_) => "rebuild-index",
            Cmd::Undelete(_) => "undelete",
            Cmd::Copy(_) => "copy",
            Cmd::Cinder(_) => "cinder",
            Cmd::Gc(_) => "gc",
            Cmd::Prune(_) => "prune",
            Cmd::Verify(_) => "verify",
            Cmd::Check(_) => "check",
            Cmd::Key(_) => "key",
        }
    }
}

/// Arguments of `volback backup`.
#[derive(clap::Args)]
pub struct BackupArgs {
    /// Container URL: file:///abs/dir or a plain path (created if missing).
    #[arg(long)]
    pub container: String,
    /// Volume to read: a file, a block device, or '-' for stdin.
    #[arg(long)]
    pub volume: String,
    /// Id for the backup (default: a new UUID).
    #[arg(long)]
    pub backup_id: Option<String>,
    /// Id of the volume (default: derived from the volume's file name).
    #[arg(long)]
    pub volume_id: Option<String>,
    /// Make an incremental backup of this parent backup.
    #[arg(long)]
    pub parent: Option<String>,
    /// JSON file with volume metadata to store with the backup.
    #[arg(long)]
    pub metadata: Option<PathBuf>,
    /// Point-in-time label stored with the backup (Cinder's data_timestamp).
    #[arg(long)]
    pub data_timestamp: Option<String>,
    /// zstd level for this backup (default: the container's): 1..=22, or -7..=-1 for
    /// zstd's fast levels (faster, larger).
    #[arg(long, allow_negative_numbers = true)]
    pub zstd_level: Option<i32>,
    /// Average chunk size in bytes for a container created by this command.
    #[arg(long)]
    pub chunk_avg: Option<u32>,
    /// For a container created by this command (an S3 bucket created with Object Lock
    /// enabled): keep every backup, and everything it needs, from deletion for this many days
    /// after it is committed.
    #[arg(long, value_name = "DAYS")]
    pub object_lock_days: Option<u32>,
    /// Object Lock mode: `compliance` (no one can delete early) or `governance` (only a user
    /// allowed to bypass governance retention can).
    #[arg(long, default_value = "compliance", requires = "object_lock_days")]
    pub object_lock_mode: String,
    /// Seconds the backup's lease lives without renewal (renewed every eighth of it).
    #[arg(long, default_value_t = volback::container::LEASE_TTL.as_secs())]
    pub lease_ttl: u64,
    /// A `key=value` label stored with the backup (repeat for more), e.g. `policy=daily`:
    /// `list` filters on labels and `prune` can group by one.
    #[arg(long)]
    pub label: Vec<String>,
    /// Read the volume even if it is a file whose device, inode, size, modification and
    /// change times are those its parent recorded (by default such a file is not read: the
    /// parent's extents are reused, as restic skips an unchanged file).
    #[arg(long)]
    pub full_read: bool,
    /// A change map: what changed since the parent's snapshot (a list of extents as JSON or
    /// CSV, `rbd diff --format json` output, or `thin_delta` XML). Only those ranges, and a
    /// few chunks around each, are read; the rest reuses the parent's chunks.
    #[arg(long, value_name = "FILE", conflicts_with = "changes_nbd")]
    pub changes: Option<PathBuf>,
    /// The change map's format: auto, extents, rbd-diff or thin-delta.
    #[arg(long, default_value = "auto", value_name = "FORMAT")]
    pub changes_format: String,
    /// A change map read as a QEMU dirty bitmap over NBD (nbd+unix:///EXPORT?socket=PATH or
    /// nbd://HOST:PORT/EXPORT), with --dirty-bitmap.
    #[arg(long, value_name = "URI", requires = "dirty_bitmap")]
    pub changes_nbd: Option<String>,
    /// The dirty bitmap's name (qemu-nbd -B NAME).
    #[arg(long, value_name = "NAME", requires = "changes_nbd")]
    pub dirty_bitmap: Option<String>,
    /// Fraction (0 to 1) of the chunks a change map leaves unread that are read back and
    /// checked against the parent's: a map that missed a change fails the backup.
    #[arg(long, value_name = "FRACTION")]
    pub map_sample: Option<f64>,
    /// When the sampled check finds a change the map missed, read the whole volume instead of
    /// failing.
    #[arg(long)]
    pub map_fallback: bool,
    /// Read the whole volume when this many backups in a row did not (by a change map or an
    /// unchanged file).
    #[arg(long, value_name = "N")]
    pub full_read_every: Option<u32>,
    /// Read the whole volume when the last backup that did is this many days old.
    #[arg(long, value_name = "DAYS")]
    pub full_read_after_days: Option<u32>,
    /// Print one JSON object and nothing else.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `volback restore`.
#[derive(clap::Args)]
pub struct RestoreArgs {
    #[arg(long)]
    pub container: String,
    #[arg(long)]
    pub backup_id: String,
    /// Target file or block device. A new file is created sparse. `-` writes the whole
    /// volume, zeros included, to standard output (for a pipe; the report, with `--json`,
    /// then goes to standard error).
    #[arg(long)]
    pub target: PathBuf,
    /// Overwrite an existing target (zero extents are written as zeros).
    #[arg(long)]
    pub existing: bool,
    /// With --existing: read the target first and rewrite only the chunks and zero ranges
    /// that differ from the backup, then check the result (for a volume the backup came
    /// from, damaged or changed a little).
    #[arg(long, requires = "existing")]
    pub differential: bool,
    /// Write the volume metadata stored with the backup to this file.
    #[arg(long)]
    pub metadata_out: Option<PathBuf>,
    /// Do not flush the target to stable storage before reporting success (scratch
    /// targets only; by default a restore that reports success is on disk).
    #[arg(long)]
    pub no_sync: bool,
    /// Write through the page cache, for an image that is read right after the restore.
    /// By default whole blocks bypass it with direct I/O, as Cinder's volume copies do:
    /// restoring a large volume neither evicts the host's cache nor pays for a new cache
    /// page per 4 KiB.
    #[arg(long)]
    pub buffered: bool,
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `volback delete`.
#[derive(clap::Args)]
pub struct DeleteArgs {
    #[arg(long)]
    pub container: String,
    #[arg(long)]
    pub backup_id: String,
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `volback export`.
#[derive(clap::Args)]
pub struct ExportArgs {
    #[arg(long)]
    pub container: String,
    #[arg(long)]
    pub backup_id: String,
}

/// Arguments of `volback serve`.
#[derive(clap::Args)]
pub struct ServeArgs {
    #[arg(long)]
    pub container: String,
    #[arg(long)]
    pub backup_id: String,
    /// Unix socket to listen on (default: `$TMPDIR/volback-<backup id>.sock`).
    #[arg(long, conflicts_with = "tcp")]
    pub socket: Option<PathBuf>,
    /// Listen on TCP instead, e.g. 127.0.0.1:10809 (port 0: any free port). NBD has no
    /// authentication here: bind to an address only trusted clients reach.
    #[arg(long)]
    pub tcp: Option<std::net::SocketAddr>,
    /// Chunk cache, MiB.
    #[arg(long, default_value_t = 256)]
    pub cache_mib: u64,
    /// Read-ahead for sequential readers, MiB (at most a quarter of the cache; 0: none).
    #[arg(long, default_value_t = 32)]
    pub read_ahead_mib: u64,
    /// Print the ready line (and the counters on exit) as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `volback cat`.
#[derive(clap::Args)]
pub struct CatArgs {
    #[arg(long)]
    pub container: String,
    #[arg(long)]
    pub backup_id: String,
    /// First byte of the volume to write.
    #[arg(long, default_value_t = 0)]
    pub offset: u64,
    /// Bytes to write (default: to the volume's end).
    #[arg(long)]
    pub length: Option<u64>,
}

/// Arguments of `volback import`.
#[derive(clap::Args)]
pub struct ImportArgs {
    #[arg(long)]
    pub container: String,
    #[arg(long)]
    pub record: String,
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `volback list`.
#[derive(clap::Args)]
pub struct ListArgs {
    #[arg(long)]
    pub container: String,
    /// Only this volume's backups.
    #[arg(long)]
    pub volume_id: Option<String>,
    /// Only backups carrying this `key=value` label (repeat: all of them).
    #[arg(long)]
    pub label: Vec<String>,
    /// Also show the stored bytes each backup alone holds: what deleting it gives back after
    /// gc (walks every backup's extent list).
    #[arg(long)]
    pub exclusive: bool,
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `volback prune`.
#[derive(clap::Args)]
pub struct PruneArgs {
    #[arg(long)]
    pub container: String,
    /// Keep the N newest backups.
    #[arg(long, value_name = "N")]
    pub keep_last: Option<u32>,
    /// Keep the newest backup of each of the N newest hours that have one.
    #[arg(long, value_name = "N")]
    pub keep_hourly: Option<u32>,
    /// The same per day.
    #[arg(long, value_name = "N")]
    pub keep_daily: Option<u32>,
    /// The same per ISO week.
    #[arg(long, value_name = "N")]
    pub keep_weekly: Option<u32>,
    /// The same per month.
    #[arg(long, value_name = "N")]
    pub keep_monthly: Option<u32>,
    /// The same per year.
    #[arg(long, value_name = "N")]
    pub keep_yearly: Option<u32>,
    /// Keep every backup newer than this span before the group's newest (e.g. 1y2m3d4h).
    #[arg(long, value_name = "SPAN")]
    pub keep_within: Option<String>,
    /// Apply the rules per volume (default) or per value of a label: `volume` or `label:KEY`.
    #[arg(long, default_value = "volume")]
    pub group_by: String,
    /// Only backups carrying this `key=value` label (repeat: all of them).
    #[arg(long)]
    pub label: Vec<String>,
    /// Let the rules remove a group's newest backup (kept by default).
    #[arg(long)]
    pub allow_removing_newest: bool,
    /// Decide and report; delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Delete only; leave the space to a later `gc`.
    #[arg(long)]
    pub no_gc: bool,
    /// Largest clock difference between hosts sharing the container, in seconds (for gc).
    #[arg(long, default_value_t = GcOptions::default().clock_skew.as_secs())]
    pub clock_skew: u64,
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `volback copy`.
#[derive(clap::Args)]
pub struct CopyArgs {
    /// The container to copy from (opened with the global S3 settings and --key).
    #[arg(long)]
    pub from: String,
    /// The container to copy into (created if missing; encrypted if --to-key is given).
    #[arg(long)]
    pub to: String,
    /// Copy this backup (repeat for more).
    #[arg(long)]
    pub backup_id: Vec<String>,
    /// Copy this volume's backups.
    #[arg(long)]
    pub volume_id: Option<String>,
    /// Copy the backups carrying this `key=value` label (repeat: all of them).
    #[arg(long)]
    pub label: Vec<String>,
    /// Copy every backup.
    #[arg(long)]
    pub all: bool,
    /// The destination's S3 endpoint (then its region and profile too come from the --to-s3
    /// flags and the AWS environment, not from the source's flags).
    #[arg(long)]
    pub to_s3_endpoint: Option<String>,
    #[arg(long)]
    pub to_s3_region: Option<String>,
    /// Profile in ~/.aws/credentials for the destination (its own credentials).
    #[arg(long)]
    pub to_s3_profile: Option<String>,
    /// Where the destination's key comes from (env:NAME, file:PATH, cmd:COMMAND).
    #[arg(long, value_name = "env:NAME|file:PATH|cmd:COMMAND")]
    pub to_key: Option<String>,
    /// Allow copying an encrypted container's backups into a plaintext one (refused otherwise).
    #[arg(long)]
    pub allow_plaintext_destination: bool,
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `volback cinder`.
#[derive(clap::Args)]
pub struct CinderArgs {
    #[command(subcommand)]
    pub action: CinderAction,
}

/// What `volback cinder` does.
#[derive(Subcommand)]
pub enum CinderAction {
    /// List the Cinder backups found (id, volume, parent, time, objects).
    List {
        /// Cinder's backup_posix_path (or a directory under it), or s3://bucket/prefix.
        #[arg(long)]
        source: String,
        #[arg(long)]
        json: bool,
    },
    /// Restore a Cinder backup (its chain applied newest layer first) into a new file.
    Restore {
        #[arg(long)]
        source: String,
        #[arg(long)]
        backup_id: String,
        #[arg(long)]
        target: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Adopt Cinder backups into a volback container: same backup ids, deduplicated, each
    /// verified by a restore to hash; prints the records `cinder backup-import` takes.
    Adopt {
        #[arg(long)]
        source: String,
        /// The volback container (created if missing; encrypted with the global --key).
        #[arg(long)]
        container: String,
        /// Adopt these backups (repeatable).
        #[arg(long)]
        backup_id: Vec<String>,
        /// Adopt the backups of this volume.
        #[arg(long)]
        volume_id: Option<String>,
        /// Adopt every backup found.
        #[arg(long)]
        all: bool,
        /// The old driver's `cinder backup-export` output for a backup (its backup_url, or
        /// the JSON with backup_service and backup_url), whose fields the new record keeps
        /// (repeatable).
        #[arg(long)]
        cinder_export: Vec<PathBuf>,
        /// Write the records (a JSON list of backup_id, backup_service, backup_url) here.
        #[arg(long)]
        records: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

impl CinderAction {
    pub fn json(&self) -> bool {
        match self {
            CinderAction::List { json, .. }
            | CinderAction::Restore { json, .. }
            | CinderAction::Adopt { json, .. } => *json,
        }
    }
}

/// Arguments of `volback undelete`.
#[derive(clap::Args)]
pub struct UndeleteArgs {
    #[arg(long)]
    pub container: String,
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `volback rebuild-index`.
#[derive(clap::Args)]
pub struct RebuildIndexArgs {
    #[arg(long)]
    pub container: String,
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `volback gc`.
#[derive(clap::Args)]
pub struct GcArgs {
    #[arg(long)]
    pub container: String,
    /// Report what would be condemned; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Unused bytes tolerated in partly live packs, as a fraction of live bytes; beyond it
    /// the sparsest packs are rewritten (1 disables repacking).
    #[arg(long, default_value_t = GcOptions::default().max_unused)]
    pub max_unused: f64,
    /// Largest clock difference between hosts sharing the container, in seconds.
    #[arg(long, default_value_t = GcOptions::default().clock_skew.as_secs())]
    pub clock_skew: u64,
    /// Sweep condemned packs only this many seconds after they were condemned.
    #[arg(long, default_value_t = 0)]
    pub min_age: u64,
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `volback verify`.
#[derive(clap::Args)]
pub struct VerifyArgs {
    #[arg(long)]
    pub container: String,
    /// Only this backup (default: all).
    #[arg(long)]
    pub backup_id: Option<String>,
    /// Read back, decompress and re-hash every chunk.
    #[arg(long)]
    pub read_data: bool,
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `volback check`.
#[derive(clap::Args)]
pub struct CheckArgs {
    #[arg(long)]
    pub container: String,
}

/// Arguments of `volback key`.
#[derive(clap::Args)]
pub struct KeyArgs {
    #[command(subcommand)]
    pub action: KeyAction,
}

/// The container a `volback key` action works on.
#[derive(clap::Args)]
pub struct KeyTarget {
    #[arg(long)]
    pub container: String,
    #[arg(long)]
    pub json: bool,
}

/// What `volback key` does. Every action but `list` needs the container unlocked (`--key`).
#[derive(Subcommand)]
pub enum KeyAction {
    /// List the key slots (ids, creation times, passphrase or 256-bit key; which one `--key`
    /// opens).
    List(KeyTarget),
    /// Add a key: a new slot wrapping the container's master key under another secret.
    Add {
        #[command(flatten)]
        target: KeyTarget,
        /// Source of the new secret (env:NAME, file:PATH or cmd:COMMAND).
        #[arg(long, value_name = "SOURCE")]
        new_key: String,
    },
    /// Remove a key slot (refused for the last one).
    Remove {
        #[command(flatten)]
        target: KeyTarget,
        /// Id of the slot to remove (see `key list`).
        #[arg(long)]
        id: String,
    },
    /// Change the key `--key` opens to a new secret (adds the new slot, removes the old).
    Change {
        #[command(flatten)]
        target: KeyTarget,
        #[arg(long, value_name = "SOURCE")]
        new_key: String,
    },
}

impl KeyAction {
    /// The container and output form the action names.
    pub fn target(&self) -> &KeyTarget {
        match self {
            KeyAction::List(t) => t,
            KeyAction::Add { target, .. }
            | KeyAction::Remove { target, .. }
            | KeyAction::Change { target, .. } => target,
        }
    }
}
