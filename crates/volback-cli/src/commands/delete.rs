//! `volback delete`: Delete a backup (its space is reclaimed by garbage collection; other backups are unaffected).

use super::*;
use crate::args::DeleteArgs;

pub fn run(args: DeleteArgs, s3: &S3Options) -> Result<Outcome> {
    let DeleteArgs {
        container,
        backup_id,
        json,
    } = args;
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
