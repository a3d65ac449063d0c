//! Running the `volback` binary against a test backend: for the tests of the binary's own
//! package (`CARGO_BIN_EXE_volback` exists only there).

use crate::common::backend::Env;

/// Runs the CLI with the backend's S3 settings in its environment.
pub trait CliExt {
    /// Runs the `volback` binary against this backend (S3 settings in its environment).
    fn cli(&self, args: &[&str]) -> std::process::Output;
    /// `volback restore --json` of backup `id` in container `url` to a new file `target`.
    fn cli_restore(&self, url: &str, id: &str, target: &std::path::Path) -> std::process::Output;
}

impl CliExt for Env {
    fn cli(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new(env!("CARGO_BIN_EXE_volback"))
            .args(args)
            .envs(self.cli_env())
            .output()
            .unwrap()
    }

    fn cli_restore(&self, url: &str, id: &str, target: &std::path::Path) -> std::process::Output {
        let t = target.display().to_string();
        self.cli(&[
            "restore",
            "--container",
            url,
            "--backup-id",
            id,
            "--target",
            &t,
            "--json",
        ])
    }
}
