//! `volback verify`: Check that backups can be restored: structure always, every chunk with --read-data. Exit status 3 if anything is damaged.

use super::*;
use crate::args::VerifyArgs;

pub fn run(args: VerifyArgs, access: &Access) -> Result<Outcome> {
    let VerifyArgs {
        container,
        backup_id,
        read_data,
        json,
    } = args;
    let c = access.open(&container, false, None)?;
    let r = run_verify(
        &c,
        &VerifyOptions {
            backup_id,
            read_data,
            ..VerifyOptions::default()
        },
    )?;
    events::finished(&r);
    if json {
        print_json(&r)?;
    } else {
        for b in &r.backups {
            let read = b
                .read
                .as_ref()
                .map(|r| format!(" (read: {r})"))
                .unwrap_or_default();
            if b.ok {
                out!("ok       {}{read}", b.backup_id)?;
            } else {
                out!("DAMAGED  {} ({} problems)", b.backup_id, b.problem_count)?;
                for p in &b.problems {
                    out!("         {}: {}", p.object, p.message)?;
                }
            }
        }
        for p in &r.damaged_objects {
            out!("DAMAGED  object {}: {}", p.object, p.message)?;
        }
        out!(
            "{} backups checked, {} damaged; {} chunk references checked{}",
            r.backups_checked,
            r.damaged_backups.len(),
            r.chunks_checked,
            if read_data {
                format!(
                    ", {} chunks ({} bytes) read and re-hashed",
                    r.chunks_read, r.bytes_read
                )
            } else {
                String::new()
            }
        )?;
    }
    Ok(if r.ok() {
        Outcome::Done
    } else {
        Outcome::Damaged
    })
}
