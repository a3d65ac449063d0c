//! `volback delete`: Delete a backup (its space is reclaimed by garbage collection; other backups are unaffected).

use super::*;
use crate::args::DeleteArgs;

pub fn run(args: DeleteArgs, access: &Access) -> Result<Outcome> {
    let DeleteArgs {
        container,
        backup_id,
        json,
    } = args;
    let c = access.open(&container, false, None)?;
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
