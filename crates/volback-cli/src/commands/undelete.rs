//! `volback undelete`: Bring back the objects of a container with Object Lock that a plain
//! DELETE hid behind delete markers.

use super::*;
use crate::args::UndeleteArgs;

pub fn run(args: UndeleteArgs, access: &Access) -> Result<Outcome> {
    let UndeleteArgs { container, json } = args;
    let c = access.open(&container, false, None)?;
    let restored = c.undelete()?;
    if json {
        print_json(&json!({"objects_restored": restored}))?;
    } else {
        out!("{restored} hidden objects visible again")?;
    }
    Ok(Outcome::Done)
}
