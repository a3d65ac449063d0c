//! Where a secret comes from: a variable, a file, a command (how a service plugs in its key
//! manager), or bytes handed over by a library caller.
//!
//! A source is named on the command line as `env:NAME`, `file:PATH` or `cmd:COMMAND`, so the
//! secret itself never appears in `ps`, a shell history or a log. One trailing newline is
//! removed from what a file or command yields (as `echo` and editors add one).

use std::path::PathBuf;

use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// Secrets longer than this are refused (a key file that is really a disk image, say).
const MAX_SECRET_LEN: usize = 64 * 1024;

/// Where a container key's secret comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum KeySource {
    /// The value of an environment variable.
    Env(String),
    /// The contents of a file.
    File(PathBuf),
    /// The standard output of a command run with `sh -c` (it must exit 0).
    Command(String),
    /// Bytes a library caller holds.
    Secret(Zeroizing<Vec<u8>>),
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::Env(n) => write!(f, "env:{n}"),
            KeySource::File(p) => write!(f, "file:{}", p.display()),
            KeySource::Command(c) => write!(f, "cmd:{c}"),
            KeySource::Secret(_) => f.write_str("<secret>"),
        }
    }
}

impl KeySource {
    /// Parses `env:NAME`, `file:PATH` or `cmd:COMMAND`.
    pub fn parse(spec: &str) -> Result<KeySource> {
        let bad = || {
            Error::Key(format!(
                "key source must be env:NAME, file:PATH or cmd:COMMAND (got '{}')",
                spec.split(':').next().unwrap_or_default()
            ))
        };
        let (kind, rest) = spec.split_once(':').ok_or_else(bad)?;
        if rest.is_empty() {
            return Err(bad());
        }
        match kind {
            "env" => Ok(KeySource::Env(rest.into())),
            "file" => Ok(KeySource::File(rest.into())),
            "cmd" => Ok(KeySource::Command(rest.into())),
            _ => Err(bad()),
        }
    }

    /// A source holding `secret` itself.
    pub fn secret(secret: impl Into<Vec<u8>>) -> KeySource {
        KeySource::Secret(Zeroizing::new(secret.into()))
    }

    /// Reads the secret. Errors name the source, never the secret.
    pub fn read(&self) -> Result<Zeroizing<Vec<u8>>> {
        let fail = |why: String| Error::Key(format!("key source {self:?}: {why}"));
        let mut secret = match self {
            KeySource::Env(name) => match std::env::var_os(name) {
                Some(v) => Zeroizing::new(v.into_encoded_bytes()),
                None => return Err(fail("the variable is not set".into())),
            },
            KeySource::File(path) => Zeroizing::new(
                std::fs::read(path).map_err(|e| fail(format!("cannot read the file: {e}")))?,
            ),
            KeySource::Command(cmd) => {
                let out = std::process::Command::new("sh")
                    .arg("-c")
                    .arg(cmd)
                    .stdin(std::process::Stdio::null())
                    .stderr(std::process::Stdio::inherit())
                    .output()
                    .map_err(|e| fail(format!("cannot run the command: {e}")))?;
                let stdout = Zeroizing::new(out.stdout);
                if !out.status.success() {
                    return Err(fail(format!("the command failed ({})", out.status)));
                }
                stdout
            }
            KeySource::Secret(s) => s.clone(),
        };
        if !matches!(self, KeySource::Secret(_)) {
            let n = secret.len();
            if secret.ends_with(b"\r\n") {
                secret.truncate(n - 2);
            } else if secret.ends_with(b"\n") {
                secret.truncate(n - 1);
            }
        }
        if secret.is_empty() {
            return Err(fail("the secret is empty".into()));
        }
        if secret.len() > MAX_SECRET_LEN {
            return Err(fail(format!(
                "the secret is {} bytes, more than {MAX_SECRET_LEN}",
                secret.len()
            )));
        }
        Ok(secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse_read_and_never_show_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("k");
        std::fs::write(&f, "from file\n").unwrap();
        let src = KeySource::parse(&format!("file:{}", f.display())).unwrap();
        assert_eq!(&src.read().unwrap()[..], b"from file");
        let cmd = KeySource::parse("cmd:printf 'from cmd\\r\\n'").unwrap();
        assert_eq!(&cmd.read().unwrap()[..], b"from cmd");
        let failing = KeySource::parse("cmd:printf ABC$((1+1)); exit 3").unwrap();
        let e = failing.read().unwrap_err();
        assert_eq!(e.kind(), "key");
        assert!(!e.to_string().contains("ABC2"), "{e}");
        let unset = KeySource::parse("env:VOLBACK_TEST_SURELY_UNSET").unwrap();
        assert_eq!(unset.read().unwrap_err().kind(), "key");
        for bad in ["", "env:", "passphrase:x", "x"] {
            assert_eq!(KeySource::parse(bad).unwrap_err().kind(), "key", "{bad}");
        }
        let lit = KeySource::secret(b"hunter2".to_vec());
        assert_eq!(format!("{lit:?}"), "<secret>");
        std::fs::write(&f, "").unwrap();
        assert!(src.read().is_err(), "an empty secret is refused");
    }
}
