//! `volback restore`: Restore a backup onto a file or block device.

use super::*;
use crate::args::RestoreArgs;
use volback::restore::{WriteSink, run_restore_to_stream};

pub fn run(args: RestoreArgs, access: &Access) -> Result<Outcome> {
    let RestoreArgs {
        container,
        backup_id,
        target,
        existing,
        differential,
        metadata_out,
        no_sync,
        buffered,
        json,
    } = args;
    let c = access.open(&container, false, None)?;
    if differential {
        let r = volback::restore::run_restore_differential(&c, &backup_id, &target, None, None)?;
        if json {
            print_json(&r)?;
        } else {
            out!(
                "restored backup {} onto {} differentially: {} chunks rewritten ({} bytes), {} \
                 bytes zeroed, {} bytes compared, in {:.2}s",
                r.backup_id,
                target.display(),
                r.chunks_rewritten,
                r.bytes_written,
                r.bytes_zeroed,
                r.bytes_compared,
                r.elapsed_s
            )?;
        }
        return Ok(Outcome::Done);
    }
    let opts = RestoreOptions {
        sync: !no_sync,
        direct_io: !buffered,
        ..RestoreOptions::new(if existing {
            TargetMode::Existing
        } else {
            TargetMode::New
        })
    };
    let pb = progress_bar(json, None);
    // The volume's size, for the events' percentages (one more small read, only for them).
    let total = events::enabled()
        .then(|| c.read_manifest(&backup_id).ok().map(|(m, _)| m.size))
        .flatten();
    let cb = |n: u64| {
        if let Some(pb) = &pb {
            pb.set_position(n);
        }
        events::progress(n, total);
    };
    let to_stdout = target.as_os_str() == "-";
    let r = if to_stdout {
        let mut sink = WriteSink(std::io::stdout());
        run_restore_to_stream(&c, &backup_id, &mut sink, &opts, Some(&cb))
    } else {
        run_restore_with(&c, &backup_id, &target, &opts, Some(&cb))
    };
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    let r = r?;
    events::finished(&r);
    if let (Some(p), Some(doc)) = (metadata_out, &r.volume_metadata) {
        std::fs::write(&p, serde_json::to_vec_pretty(doc).unwrap_or_default())
            .map_err(|e| Error::io("write metadata", &p, e))?;
    }
    if to_stdout {
        // Standard output holds the volume; the report goes to standard error.
        if json {
            eprintln!("{}", serde_json::to_string(&r).unwrap_or_default());
        }
    } else if json {
        print_json(&r)?;
    } else {
        out!(
            "restored backup {} ({} bytes, {} data, {} zero) to {} in {:.2}s",
            r.backup_id,
            r.size,
            r.bytes_written,
            r.zero_bytes,
            target.display(),
            r.elapsed_s
        )?;
    }
    Ok(Outcome::Done)
}
