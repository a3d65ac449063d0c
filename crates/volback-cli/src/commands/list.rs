//! `volback list`: List the backups in a container.

use super::*;
use crate::args::ListArgs;

pub fn run(args: ListArgs, s3: &S3Options) -> Result<Outcome> {
    let ListArgs { container, json } = args;
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
