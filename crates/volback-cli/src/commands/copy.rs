//! `volback copy`: Copy backups into a second container (another directory, bucket or S3
//! endpoint, other credentials, other keys), writing only the chunks it lacks.

use super::*;
use crate::args::CopyArgs;
use volback::copy::{CopyOptions, Selection, run_copy};

pub fn run(args: CopyArgs, access: &Access) -> Result<Outcome> {
    let CopyArgs {
        from,
        to,
        backup_id,
        volume_id,
        label,
        all,
        to_s3_endpoint,
        to_s3_region,
        to_s3_profile,
        to_key,
        allow_plaintext_destination,
        json,
    } = args;
    if backup_id.is_empty() && volume_id.is_none() && label.is_empty() && !all {
        return Err(Error::Config(
            "say what to copy: --backup-id, --volume-id, --label or --all".into(),
        ));
    }
    let src = access.open(&from, false, None)?;
    // The destination: its own endpoint, region and profile where given, else the source's.
    let mut s3 = access.s3.clone();
    if to_s3_endpoint.is_some() || to_s3_region.is_some() || to_s3_profile.is_some() {
        s3 = volback::store::s3::S3Options {
            endpoint: to_s3_endpoint,
            region: to_s3_region,
            profile: to_s3_profile,
            concurrency: s3.concurrency,
            ..Default::default()
        };
    }
    let key = to_key.as_deref().map(KeySource::parse).transpose()?;
    let dst = Container::open_keyed(&to, true, None, &s3, key.as_ref())?;
    let pb = progress_bar(json, None);
    let progress = |done: u64, total: u64| {
        if let Some(pb) = &pb {
            pb.set_length(total);
            pb.set_position(done);
        }
        events::progress(done, Some(total));
    };
    let r = run_copy(
        &src,
        &dst,
        &CopyOptions {
            selection: Selection {
                backup_ids: backup_id,
                volume_id,
                labels: labels_of(&label)?,
            },
            allow_plaintext: allow_plaintext_destination,
            cancel: None,
        },
        Some(&progress),
    )?;
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    events::finished(&r);
    if json {
        print_json(&r)?;
    } else {
        for c in &r.copied {
            out!(
                "copied {} ({} bytes of volume, {} bytes written) in {:.2}s",
                c.backup_id,
                c.size,
                c.bytes_written,
                c.elapsed_s
            )?;
        }
        out!(
            "copied {} backups, {} already there; read {} bytes, wrote {} bytes, in {:.2}s",
            r.copied.len(),
            r.skipped.len(),
            r.bytes_read,
            r.bytes_written,
            r.elapsed_s
        )?;
    }
    Ok(Outcome::Done)
}
