//! `volback key`: manage an encrypted container's keys (list, add, remove, change).

use super::*;
use crate::args::{KeyAction, KeyArgs};
use volback::crypto::KdfParams;

pub fn run(args: KeyArgs, access: &Access) -> Result<Outcome> {
    let KeyArgs { action } = args;
    let json = action.target().json;
    let mut c = access.open(&action.target().container, false, None)?;
    if !c.is_encrypted() {
        return Err(Error::Key(format!(
            "container '{}' is not encrypted: it has no keys",
            c.url()
        )));
    }
    let new_source = |spec: &str| KeySource::parse(spec);
    let (what, id) = match action {
        KeyAction::List(_) => {
            let keys = c.list_keys()?;
            if json {
                print_json(&keys)?;
            } else {
                for k in keys {
                    let mark = if k.current { " (opened by --key)" } else { "" };
                    let kdf = match k.memory_kib {
                        0 => "256-bit key".to_string(),
                        m => format!("passphrase, Argon2id {} MiB x {}", m / 1024, k.iterations),
                    };
                    out!("{}  created {}  {kdf}{mark}", k.id, k.created_at)?;
                }
            }
            return Ok(Outcome::Done);
        }
        KeyAction::Add { new_key, .. } => (
            "added",
            c.add_key(&new_source(&new_key)?, KdfParams::default())?,
        ),
        KeyAction::Remove { id, .. } => {
            c.remove_key(&id)?;
            ("removed", id)
        }
        KeyAction::Change { new_key, .. } => (
            "changed to",
            c.change_key(&new_source(&new_key)?, KdfParams::default())?,
        ),
    };
    if json {
        print_json(&json!({ what: id }))?;
    } else {
        out!("key {what} {id}")?;
    }
    Ok(Outcome::Done)
}
