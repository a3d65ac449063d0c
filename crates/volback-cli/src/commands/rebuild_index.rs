//! `volback rebuild-index`: Rebuild the chunk index from the packs' own tables (repairs a lost or damaged index).

use super::*;
use crate::args::RebuildIndexArgs;

pub fn run(args: RebuildIndexArgs, s3: &S3Options) -> Result<Outcome> {
    let RebuildIndexArgs { container, json } = args;
    let c = Container::open_with(&container, false, None, s3)?;
    let (packs, chunks) = c.rebuild_index()?;
    if json {
        print_json(&json!({"packs": packs, "chunks": chunks}))?;
    } else {
        out!("indexed {chunks} chunks from {packs} packs")?;
    }
    Ok(Outcome::Done)
}
