//! `volback list`: List the backups in a container.

use super::*;
use crate::args::ListArgs;

pub fn run(args: ListArgs, access: &Access) -> Result<Outcome> {
    let ListArgs {
        container,
        volume_id,
        label,
        exclusive,
        json,
    } = args;
    let labels = labels_of(&label)?;
    let c = access.open(&container, false, None)?;
    let mut backups = c.list_backups()?;
    // Filters apply to readable manifests; damaged ones are always listed.
    backups.retain(|b| match b {
        Ok(m) => {
            volume_id.as_ref().is_none_or(|v| &m.volume_id == v)
                && labels.iter().all(|(k, v)| m.labels.get(k) == Some(v))
        }
        Err(_) => true,
    });
    let alone = if exclusive {
        Some(volback::usage::exclusive_bytes(&c)?)
    } else {
        None
    };
    let alone_of = |id: &str| alone.as_ref().and_then(|a| a.get(id).copied());
    if json {
        let items: Vec<_> = backups
            .iter()
            .map(|b| match b {
                Ok(m) => {
                    let mut item = json!({
                        "backup_id": m.backup_id, "volume_id": m.volume_id,
                        "parent_id": m.parent_id, "size": m.size, "created_at": m.created_at,
                        "data_timestamp": m.data_timestamp, "created_unix": m.created_unix,
                        "bytes_new": m.stats.bytes_new, "object_count": m.stats.object_count,
                        "labels": m.labels, "read": m.read, "change_map": m.change_map,
                        "since_full_read": m.since_full_read,
                    });
                    if alone.is_some() {
                        item["exclusive_bytes"] = json!(alone_of(&m.backup_id));
                    }
                    item
                }
                Err(e) => json!({"error": e.kind(), "message": e.to_string()}),
            })
            .collect();
        print_json(&json!({"container": c.url(), "backups": items}))?;
    } else {
        out!(
            "{:<38} {:<20} {:>16} {:<22} {:<38} labels",
            "backup",
            "volume",
            "size",
            "created",
            "parent"
        )?;
        for b in &backups {
            match b {
                Ok(m) => out!(
                    "{:<38} {:<20} {:>16} {:<22} {:<38} {}",
                    m.backup_id,
                    m.volume_id,
                    m.size,
                    m.created_at,
                    m.parent_id.as_deref().unwrap_or("-"),
                    (m.labels.iter())
                        .map(|(k, v)| format!("{k}={v}"))
                        .chain(alone_of(&m.backup_id).map(|n| format!("(alone holds {n} bytes)")))
                        .collect::<Vec<_>>()
                        .join(",")
                )?,
                Err(e) => out!("damaged: {e}")?,
            }
        }
    }
    Ok(Outcome::Done)
}
