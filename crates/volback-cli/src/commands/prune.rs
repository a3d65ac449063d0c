//! `volback prune`: Apply retention rules per volume or per label value, then reclaim the space.

use super::*;
use crate::args::PruneArgs;
use volback::prune::{GroupBy, Policy, PruneOptions, Span, run_prune};

pub fn run(args: PruneArgs, access: &Access) -> Result<Outcome> {
    let PruneArgs {
        container,
        keep_last,
        keep_hourly,
        keep_daily,
        keep_weekly,
        keep_monthly,
        keep_yearly,
        keep_within,
        group_by,
        label,
        allow_removing_newest,
        dry_run,
        no_gc,
        clock_skew,
        json,
    } = args;
    let group_by = match group_by.as_str() {
        "volume" => GroupBy::Volume,
        other => match other.strip_prefix("label:") {
            Some(key) if !key.is_empty() => GroupBy::Label(key.into()),
            _ => {
                return Err(Error::Config(format!(
                    "--group-by '{other}': expected 'volume' or 'label:KEY'"
                )));
            }
        },
    };
    let policy = Policy {
        last: keep_last,
        hourly: keep_hourly,
        daily: keep_daily,
        weekly: keep_weekly,
        monthly: keep_monthly,
        yearly: keep_yearly,
        within: keep_within.as_deref().map(Span::parse).transpose()?,
    };
    let c = access.open(&container, false, None)?;
    let r = run_prune(
        &c,
        &PruneOptions {
            policy,
            group_by,
            labels: labels_of(&label)?,
            dry_run,
            allow_removing_newest,
            gc: (!no_gc).then(|| GcOptions {
                clock_skew: std::time::Duration::from_secs(clock_skew),
                ..GcOptions::default()
            }),
        },
    )?;
    events::finished(&r);
    if json {
        print_json(&r)?;
        return Ok(Outcome::Done);
    }
    for g in &r.groups {
        out!("{}:", g.group)?;
        for d in &g.backups {
            if d.kept_by.is_empty() {
                out!("  remove {}", d.backup_id)?;
            } else {
                out!("  keep   {} ({})", d.backup_id, d.kept_by.join(", "))?;
            }
        }
    }
    let verb = if dry_run { "would remove" } else { "removed" };
    out!(
        "{verb} {} backups, kept {}{}",
        r.removed.len(),
        r.kept,
        r.gc.as_ref()
            .map(|g| format!("; reclaimed {} bytes", g.bytes_reclaimed))
            .unwrap_or_default()
    )?;
    for b in &r.retained {
        out!(
            "kept {}: under Object Lock retention until {}",
            b.backup_id,
            b.until.as_deref().unwrap_or("its date")
        )?;
    }
    Ok(Outcome::Done)
}
