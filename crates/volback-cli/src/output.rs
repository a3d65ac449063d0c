//! What the command line prints: one JSON object with `--json`, a progress bar on a terminal.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

use volback::Error;

pub fn progress_bar(json: bool, len: Option<u64>) -> Option<ProgressBar> {
    if json || !std::io::stderr().is_terminal() {
        return None;
    }
    let pb = match len {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::no_length(),
    };
    pb.set_style(
        ProgressStyle::with_template(
            "{spinner} {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {wide_bar}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    Some(pb)
}

/// Writes a line to stdout. A closed stdout (`volback list | head -1`) is a typed error (the
/// report or record did not reach its reader), never a panic.
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {
        std::io::Write::write_fmt(&mut std::io::stdout().lock(), format_args!("{}\n", format_args!($($arg)*)))
            .map_err(|e| volback::Error::io("write output", "<stdout>", e))
    };
}

pub fn print_json(v: &impl serde::Serialize) -> Result<(), Error> {
    out!("{}", serde_json::to_string(v).unwrap_or_default())
}
