//! `volback cinder`: backups written by Cinder's own chunked drivers, listed and restored
//! without Cinder, and adopted into a volback container.

use super::*;
use crate::args::{CinderAction, CinderArgs};
use volback::cinder::{
    AdoptOptions, adopt_cinder_backups, describe_cinder_backups, open_source, restore_cinder_backup,
};

pub fn run(args: CinderArgs, access: &Access) -> Result<Outcome> {
    match args.action {
        CinderAction::List { source, json } => {
            let store = open_source(&source, &access.s3)?;
            let rows: Vec<_> = describe_cinder_backups(store.as_ref(), "")?
                .into_iter()
                .map(|b| match b {
                    Ok(b) => json!(b),
                    Err(e) => json!({"error": e.kind(), "message": e.to_string()}),
                })
                .collect();
            if json {
                print_json(&rows)?;
            } else {
                for r in &rows {
                    match r.get("backup_id") {
                        Some(id) => out!(
                            "{}  volume {}  parent {}  {}  {} bytes  {} objects",
                            id.as_str().unwrap_or(""),
                            r["volume_id"].as_str().unwrap_or(""),
                            r["parent_id"].as_str().unwrap_or("-"),
                            r["created_at"].as_str().unwrap_or(""),
                            r["size"],
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
        CinderAction::Adopt {
            source,
            container,
            backup_id,
            volume_id,
            all,
            cinder_export,
            records,
            json,
        } => {
            if backup_id.is_empty() && volume_id.is_none() && !all {
                return Err(Error::Config(
                    "say what to adopt: --backup-id, --volume-id or --all".into(),
                ));
            }
            let store = open_source(&source, &access.s3)?;
            let dst = access.open(&container, true, None)?;
            let opts = AdoptOptions {
                backup_ids: backup_id,
                volume_id,
                cinder_exports: cinder_export
                    .iter()
                    .map(|p| read_input(&p.to_string_lossy()))
                    .collect::<Result<_>>()?,
                cancel: None,
            };
            let r = adopt_cinder_backups(store.as_ref(), "", &dst, &opts)?;
            if let Some(path) = records {
                let list: Vec<_> = r
                    .adopted
                    .iter()
                    .map(|a| {
                        json!({"backup_id": a.backup_id,
                            "backup_service": a.record.backup_service,
                            "backup_url": a.record.backup_url})
                    })
                    .collect();
                let text = serde_json::to_vec_pretty(&list)
                    .map_err(|e| Error::Internal(format!("records do not serialize: {e}")))?;
                std::fs::write(&path, text).map_err(|e| Error::io("write records", &path, e))?;
            }
            if json {
                print_json(&r)?;
            } else {
                for a in &r.adopted {
                    if a.already_adopted {
                        out!("{}  already adopted", a.backup_id)?;
                    } else {
                        out!(
                            "{}  adopted ({} bytes, parent {}, {} objects read, {} bytes written)",
                            a.backup_id,
                            a.size,
                            a.parent_id.as_deref().unwrap_or("-"),
                            a.objects_read,
                            a.bytes_written
                        )?;
                    }
                }
            }
        }
    }
    Ok(Outcome::Done)
}
