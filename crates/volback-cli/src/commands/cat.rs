//! `volback cat`: part of a backup's volume on stdout, for file-level recovery tools.

use super::*;
use crate::args::CatArgs;

pub fn run(args: CatArgs, access: &Access) -> Result<Outcome> {
    let CatArgs {
        container,
        backup_id,
        offset,
        length,
    } = args;
    let c = access.open(&container, false, None)?;
    let length = match length {
        Some(n) => n,
        None => {
            let size = c.read_manifest(&backup_id)?.0.size;
            size.checked_sub(offset).ok_or_else(|| {
                Error::Config(format!(
                    "offset {offset} is past the end of backup {backup_id} ({size} bytes)"
                ))
            })?
        }
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
    volback::restore::read_range(&c, &backup_id, offset, length, &mut out)?;
    Ok(Outcome::Done)
}
