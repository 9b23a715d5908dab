//! Plumbing the generator and the ingestor share, so the two services log and read their
//! configuration files the same way. Domain code does not belong here: the event contract has
//! its own crate, and each service keeps its own settings.
//!
//! # Layout
//! - [`LogFormat`] and [`init_logging`]: tracing set-up, text or JSON, level from `RUST_LOG`.
//! - [`existing_file`]: the check that a configuration file named on the command line exists
//!   (figment silently ignores a missing file, which would hide a typo).
#![warn(missing_docs)]

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing_subscriber::EnvFilter;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Installs the global tracing subscriber. The level comes from `RUST_LOG`, or `default_level`
/// (e.g. `info`) when it is unset. Call once, early in `main`; a second call is a no-op.
pub fn init_logging(format: LogFormat, default_level: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    // `try_init` fails only if a subscriber is already set (e.g. twice in one test process).
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// `path` if it names an existing file.
///
/// # Errors
/// The path, when there is no such file.
pub fn existing_file(path: &Path) -> Result<&Path, PathBuf> {
    if path.is_file() {
        Ok(path)
    } else {
        Err(path.to_owned())
    }
}
