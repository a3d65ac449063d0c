//! `volback rebuild-index`: Rebuild the chunk index from the packs' own tables (repairs a lost or damaged index).

use super::*;
use crate::args::RebuildIndexArgs;

pub fn run(args: RebuildIndexArgs, access: &Access) -> Result<Outcome> {
    let RebuildIndexArgs { container, json } = args;
    let c = access.open(&container, false, None)?;
    let (packs, chunks) = c.rebuild_index()?;
    if json {
        print_json(&json!({"packs": packs, "chunks": chunks}))?;
    } else {
        out!("indexed {chunks} chunks from {packs} packs")?;
    }
    Ok(Outcome::Done)
}
