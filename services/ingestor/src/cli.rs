//! The command line: `ingestor run` (the default) and the operator commands, each with help
//! text a newcomer can act on.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use serde::Serialize;

use crate::config::LogFormat;

/// Loads e-commerce event CSV files from a directory into PostgreSQL, exactly once.
///
/// Every complete file that appears in the input directory is validated row by row,
/// deduplicated by event_id and committed in one transaction together with its ledger entry
/// and its rejected rows. Every line is accounted for: accepted, duplicate or rejected with a
/// reason. Settings come from (lowest to highest) built-in defaults, a TOML file (--config),
/// INGESTOR_* environment variables (and DATABASE_URL), and the flags below.
#[derive(Debug, Parser)]
#[command(name = "ingestor", version, about, long_about)]
pub struct Cli {
    /// Settings shared by every command.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// What to do; `run` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Settings that every command accepts.
#[derive(Debug, Default, Args, Serialize)]
pub struct GlobalArgs {
    /// TOML file with settings (keys as in docs/configuration.md).
    #[arg(long, global = true, value_name = "FILE", env = "INGESTOR_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Once listening, write `{"listen": "<addr>", "pid": <pid>}` to this file (for whoever
    /// started `run` with `--listen 127.0.0.1:0` and needs the port that was picked).
    #[arg(long, global = true, value_name = "FILE")]
    #[serde(skip)]
    pub ready_file: Option<PathBuf>,
    /// Directory to watch for event files [default: data/incoming].
    #[arg(long, global = true, value_name = "DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_dir: Option<PathBuf>,
    /// PostgreSQL connection string [env: DATABASE_URL].
    #[arg(long, global = true, value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
    /// Address for /metrics, /healthz and /readyz [default: 127.0.0.1:9100].
    #[arg(long, global = true, value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// Where loaded files are moved [default: <input-dir>/processed].
    #[arg(long, global = true, value_name = "DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub archive_dir: Option<PathBuf>,
    /// Where files that cannot be loaded are moved [default: <input-dir>/failed].
    #[arg(long, global = true, value_name = "DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_dir: Option<PathBuf>,
    /// Archive or delete a file once loaded [default: archive].
    // The values as strings, which the settings layer reads as `config::AfterLoad`: the
    // settings stay free of command-line types.
    #[arg(long, global = true, value_parser = ["archive", "delete"])]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after_load: Option<String>,
    /// Log format [default: text].
    #[arg(long, global = true, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,
}

/// The ingestor's commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Watch the input directory and load files until SIGTERM/SIGINT (the default command).
    Run,
    /// Check the setup: configuration, directories, database, schema and role privileges.
    Check,
    /// Show backlog, last commit, totals and recent failures from the ledger.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show analytics of the stored events: totals, events by type, revenue by product, top
    /// users, funnel, latest events and rejections by reason.
    ///
    /// Read-only, in one consistent snapshot; works with the ingestor's own (least-privilege)
    /// DATABASE_URL. Money is exact: JSON carries amounts and ratios as decimal strings.
    Report {
        /// Print JSON (for scripts) instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Load one file now, e.g. a failed file after it was fixed; still exactly once.
    Replay {
        /// The file to load (anywhere, e.g. in the failed directory).
        file: PathBuf,
    },
    /// Empty the events, ledger and rejected-rows tables (needs an owner/admin DATABASE_URL).
    Reset {
        /// Confirm that all loaded data is to be deleted.
        #[arg(long)]
        yes: bool,
        /// Also move archived files back into the input directory for a full re-load.
        #[arg(long)]
        restore_archived: bool,
    },
    /// Exit 0 if this host's running ingestor answers ready on /readyz (for container checks).
    Healthcheck,
}
