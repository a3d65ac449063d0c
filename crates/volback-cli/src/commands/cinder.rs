//! `volback cinder`: backups written by Cinder's own chunked drivers, listed and restored
//! without Cinder.

use super::*;
use crate::args::{CinderAction, CinderArgs};
use volback::cinder::{list_cinder_backups, open_source, restore_cinder_backup};

pub fn run(args: CinderArgs, access: &Access) -> Result<Outcome> {
    match args.action {
        CinderAction::List { source, json } => {
            let store = open_source(&source, &access.s3)?;
            let mut rows = Vec::new();
            for b in list_cinder_backups(store.as_ref(), "")? {
                rows.push(match b {
                    Ok(b) => json!({
                        "backup_id": b.manifest.backup_id,
                        "volume_id": b.manifest.volume_id,
                        "parent_id": b.manifest.parent_id,
                        "created_at": b.manifest.created_at,
                        "objects": b.manifest.objects.len(),
                        "data_end": b.manifest.data_end(),
                        "manifest": b.key,
                    }),
                    Err(e) => json!({"error": e.kind(), "message": e.to_string()}),
                });
            }
            if json {
                print_json(&rows)?;
            } else {
                for r in &rows {
                    match r.get("backup_id") {
                        Some(id) => out!(
                            "{}  volume {}  parent {}  {}  {} objects",
                            id.as_str().unwrap_or(""),
                            r["volume_id"].as_str().unwrap_or(""),
                            r["parent_id"].as_str().unwrap_or("-"),
                            r["created_at"].as_str().unwrap_or(""),
                            r["objects"]
                        )?,
                        None => out!("unreadable: {}", r["message"].as_str().unwrap_or(""))?,
                    }
                }
            }
        }
        CinderAction::Restore {
            source,
            backup_id,
            target,
            json,
        } => {
            let store = open_source(&source, &access.s3)?;
            let r = restore_cinder_backup(store.as_ref(), "", &backup_id, &target)?;
            if json {
                print_json(&r)?;
            } else {
                out!(
                    "restored Cinder backup {} ({} links, {} bytes; {} objects read, {} covered by newer links)",
                    r.backup_id,
                    r.chain.len(),
                    r.size,
                    r.objects_read,
                    r.objects_skipped
                )?;
            }
        }
    }
    Ok(Outcome::Done)
}
