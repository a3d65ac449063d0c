//! Retention: `prune` applies a [`Policy`] to each group of backups (a volume's, or those
//! sharing a label's value), deletes what no rule keeps, and then collects the space with
//! [`crate::gc`]. It is delete + gc underneath, so it is as safe alongside running backups,
//! restores and other collectors as they are (see the table in the crate's documentation).

pub mod policy;

use std::collections::BTreeMap;

use serde::Serialize;

use crate::container::Container;
use crate::error::{Error, Result};
use crate::gc::{GcOptions, GcReport, run_gc};
pub use policy::{Decision, Policy, Span, decide};

/// How backups are grouped before the policy is applied to each group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum GroupBy {
    /// One group per volume id (the default).
    Volume,
    /// One group per value of this label; backups without it are left alone.
    Label(String),
}

/// What `prune` does.
#[derive(Debug, Clone)]
pub struct PruneOptions {
    pub policy: Policy,
    pub group_by: GroupBy,
    /// Only backups carrying all of these labels are considered.
    pub labels: BTreeMap<String, String>,
    /// Decide and report, delete nothing.
    pub dry_run: bool,
    /// Let the rules remove a group's newest backup (by default it is always kept).
    pub allow_removing_newest: bool,
    /// Collect the space after deleting (`None`: only delete; `gc` later).
    pub gc: Option<GcOptions>,
}

/// One group's decisions.
#[derive(Debug, Clone, Serialize)]
pub struct PruneGroup {
    /// The volume id, or the label's value.
    pub group: String,
    /// Newest first.
    pub backups: Vec<Decision>,
}

/// What `prune` decided and did (the CLI's `prune --json`).
#[derive(Debug, Clone, Serialize)]
pub struct PruneReport {
    pub dry_run: bool,
    pub groups: Vec<PruneGroup>,
    pub kept: usize,
    pub removed: Vec<String>,
    /// Backups no rule keeps that are still under Object Lock retention: left in place, each
    /// with its date; a prune after the date removes them.
    pub retained: Vec<RetainedBackup>,
    /// Unreadable manifests, left alone (`verify` says more).
    pub unreadable: usize,
    pub gc: Option<GcReport>,
}

/// A backup prune would remove but Object Lock retains.
#[derive(Debug, Clone, Serialize)]
pub struct RetainedBackup {
    pub backup_id: String,
    /// RFC 3339.
    pub until: Option<String>,
}

/// Applies `opts.policy` to the container's backups.
pub fn run_prune(c: &Container, opts: &PruneOptions) -> Result<PruneReport> {
    if opts.policy.is_empty() {
        return Err(Error::Config(
            "no retention rule given: refusing to remove every backup".into(),
        ));
    }
    let mut groups: BTreeMap<String, Vec<(String, u64)>> = BTreeMap::new();
    let mut unreadable = 0;
    for m in c.list_backups()? {
        let Ok(m) = m else {
            unreadable += 1;
            continue;
        };
        if !opts.labels.iter().all(|(k, v)| m.labels.get(k) == Some(v)) {
            continue;
        }
        let group = match &opts.group_by {
            GroupBy::Volume => m.volume_id.clone(),
            GroupBy::Label(key) => match m.labels.get(key) {
                Some(v) => v.clone(),
                None => continue,
            },
        };
        groups
            .entry(group)
            .or_default()
            .push((m.backup_id.clone(), m.created_unix));
    }
    let mut report = PruneReport {
        dry_run: opts.dry_run,
        groups: Vec::new(),
        kept: 0,
        removed: Vec::new(),
        retained: Vec::new(),
        unreadable,
        gc: None,
    };
    for (group, list) in groups {
        let mut backups = decide(&opts.policy, &list)?;
        if !opts.allow_removing_newest
            && let Some(newest) = backups.first_mut()
            && newest.kept_by.is_empty()
        {
            newest.kept_by.push("newest");
        }
        for d in &backups {
            if d.kept_by.is_empty() {
                report.removed.push(d.backup_id.clone());
            } else {
                report.kept += 1;
            }
        }
        report.groups.push(PruneGroup { group, backups });
    }
    if opts.dry_run {
        return Ok(report);
    }
    let mut retained = Vec::new();
    for id in &report.removed {
        match c.delete_backup(id) {
            // Deleted meanwhile by someone else: the outcome is the same.
            Ok(()) | Err(Error::BackupNotFound { .. }) | Err(Error::BackupDeleted { .. }) => {}
            Err(Error::Retained { until, .. }) => retained.push(RetainedBackup {
                backup_id: id.clone(),
                until,
            }),
            Err(e) => return Err(e),
        }
    }
    report
        .removed
        .retain(|id| !retained.iter().any(|r| &r.backup_id == id));
    report.retained = retained;
    if let Some(gc) = &opts.gc {
        report.gc = Some(run_gc(c, gc)?);
    }
    Ok(report)
}
