//! The `volback` command line: the driver's verbs for operators and scripts.
//!
//! Exit status: 0 on success, 1 on any error (the message names the object and offset), 2 on a
//! usage error, 3 when `verify` finds damage. With `--json`, stdout carries exactly one JSON object (an error too:
//! `{"error": kind, "message": ...}`) and nothing else.

mod alloc;
mod args;
mod commands;
mod events;
mod output;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use serde_json::json;

use args::{Cli, Cmd};
use commands::{Outcome, run};

fn main() -> ExitCode {
    let cli = Cli::parse();
    alloc::tune_malloc(matches!(&cli.cmd, Cmd::Backup(a) if a.parent.is_none()));
    let json = match &cli.cmd {
        Cmd::Backup(a) => a.json,
        Cmd::Restore(a) => a.json,
        Cmd::Delete(a) => a.json,
        Cmd::Import(a) => a.json,
        Cmd::List(a) => a.json,
        Cmd::RebuildIndex(a) => a.json,
        Cmd::Undelete(a) => a.json,
        Cmd::Copy(a) => a.json,
        Cmd::Cinder(a) => a.action.json(),
        Cmd::Gc(a) => a.json,
        Cmd::Prune(a) => a.json,
        Cmd::Verify(a) => a.json,
        Cmd::Key(a) => a.action.target().json,
        Cmd::Serve(a) => a.json,
        Cmd::Export(_) | Cmd::Cat(_) | Cmd::Check(_) => false,
    };
    let key = match cli.key.as_deref().map(volback::crypto::KeySource::parse) {
        None => None,
        Some(Ok(k)) => Some(k),
        Some(Err(e)) => {
            eprintln!("volback: error: {e}");
            return ExitCode::from(2);
        }
    };
    let access = commands::Access {
        s3: cli.s3.options(),
        key,
    };
    init_logging();
    if let Some(dest) = &cli.events
        && let Err(e) = events::open(dest, cli.cmd.name())
    {
        eprintln!("volback: error: {e}");
        return ExitCode::from(1);
    }
    let result = run(cli.cmd, &access);
    if let Err(e) = &result {
        events::error(e);
    }
    match result {
        Ok(Outcome::Done) => ExitCode::SUCCESS,
        Ok(Outcome::Damaged) => ExitCode::from(3),
        Err(e) => {
            if json {
                let _ = writeln!(
                    std::io::stdout().lock(),
                    "{}",
                    json!({"error": e.kind(), "message": e.to_string()})
                );
            }
            eprintln!("volback: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Warnings (a damaged index segment worked around, say) go to stderr; `VOLBACK_LOG=debug`
/// shows more (retries, for one).
fn init_logging() {
    let level = std::env::var("VOLBACK_LOG")
        .ok()
        .and_then(|v| v.parse::<tracing::Level>().ok())
        .unwrap_or(tracing::Level::WARN);
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}
