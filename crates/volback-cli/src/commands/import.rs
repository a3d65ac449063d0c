//! `volback import`: Validate an exported record against a container ('-' reads stdin).

use super::*;
use crate::args::ImportArgs;

pub fn run(args: ImportArgs, access: &Access) -> Result<Outcome> {
    let ImportArgs {
        container,
        record,
        json,
    } = args;
    let text = read_input(&record)?;
    let driver = Driver::new(DriverConfig {
        container: container.clone(),
        s3: access.s3.clone(),
        key: access.key.clone(),
        ..Default::default()
    });
    let r = driver.import_record(&text, Some(&container))?;
    if json {
        print_json(&r)?;
    } else {
        out!(
            "imported backup {} of volume {} ({} bytes)",
            r.id,
            r.volume_id,
            r.size
        )?;
    }
    Ok(Outcome::Done)
}
