//! `volback check`: Check that a container is reachable and writable (creating it if missing).

use super::*;
use crate::args::CheckArgs;

pub fn run(args: CheckArgs, access: &Access) -> Result<Outcome> {
    let CheckArgs { container } = args;
    let driver = Driver::new(DriverConfig {
        container,
        create_container: true,
        s3: access.s3.clone(),
        key: access.key.clone(),
        ..Default::default()
    });
    driver.check_for_setup_error()?;
    out!("ok")?;
    Ok(Outcome::Done)
}
