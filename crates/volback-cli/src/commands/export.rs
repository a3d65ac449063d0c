//! `volback export`: Print a self-describing record of a backup on stdout.

use super::*;
use crate::args::ExportArgs;

pub fn run(args: ExportArgs, access: &Access) -> Result<Outcome> {
    let ExportArgs {
        container,
        backup_id,
    } = args;
    let c = access.open(&container, false, None)?;
    let text = Driver::with_container(c).export_record(&BackupRecord {
        id: backup_id,
        ..Default::default()
    })?;
    write!(std::io::stdout().lock(), "{text}")
        .map_err(|e| Error::io("write output", "<stdout>", e))?;
    Ok(Outcome::Done)
}
