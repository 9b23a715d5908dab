//! The command line: flags for every setting (layered over the environment and the TOML file
//! by [`crate::config`]) and the `healthcheck` subcommand.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use serde::Serialize;

use crate::config::{KafkaFormat, LogFormat, SinkKind};

/// Writes realistic synthetic e-commerce event CSV files into a directory, atomically, or
/// produces the same events to a Kafka topic.
///
/// Every flag can also be set as `GENERATOR_<FLAG>` (e.g. `GENERATOR_RATE=5000`) or in a TOML
/// file given with `--config`; flags win over the environment, which wins over the file.
#[derive(Debug, Default, Parser, Serialize)]
#[command(name = "generator", version, about, long_about = None, allow_negative_numbers = true)]
pub struct Cli {
    /// TOML file with settings (keys as the long flags, with `_` for `-`).
    #[arg(long, value_name = "FILE", env = "GENERATOR_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Directory to publish files into [default: data/incoming].
    #[arg(long, value_name = "DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub out: Option<PathBuf>,
    /// Target events per second [default: 1000].
    #[arg(long, value_name = "EVENTS_PER_SECOND")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    /// Rows per file [default: 1000].
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    /// Files to write before exiting; 0 runs until SIGINT/SIGTERM [default: 0].
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files: Option<u64>,
    /// Random seed: the same seed gives the same events [default: random, logged].
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// RFC 3339 time of the first event, for reproducible timestamps [default: now].
    #[arg(long, value_name = "RFC3339")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    /// Share of rows that break the contract (0 to 1) [default: 0].
    #[arg(long, value_name = "RATIO")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invalid_ratio: Option<f64>,
    /// Share of rows that repeat an earlier event_id (0 to 1) [default: 0].
    #[arg(long, value_name = "RATIO")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duplicate_ratio: Option<f64>,
    /// Share of events stamped 1 to 30 minutes late (0 to 1) [default: 0].
    #[arg(long, value_name = "RATIO")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub late_ratio: Option<f64>,
    /// Products in the catalog [default: 5000].
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub products: Option<u32>,
    /// Distinct users [default: 100000].
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub users: Option<u32>,
    /// Concurrent shopping sessions [default: 500].
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sessions: Option<u32>,
    /// Once listening, write `{"listen": "<addr>", "pid": <pid>}` to this file (for whoever
    /// started the generator with `--listen 127.0.0.1:0` and needs the port that was picked).
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub ready_file: Option<PathBuf>,
    /// Log format [default: text].
    #[arg(long, value_enum, value_name = "FORMAT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,
    /// HTTP address for /metrics, /livez and /healthz; port 0 picks a free one
    /// [default: 127.0.0.1:9101].
    #[arg(long, value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// Where rows go: CSV files in --out, or Kafka messages [default: directory].
    #[arg(long, value_enum, value_name = "SINK")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sink: Option<SinkKind>,
    /// Kafka bootstrap servers, host:port[,host:port...] (required with --sink kafka).
    #[arg(long, value_name = "BROKERS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kafka_brokers: Option<String>,
    /// Kafka topic to produce to [default: events].
    #[arg(long, value_name = "TOPIC")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kafka_topic: Option<String>,
    /// Kafka message format [default: csv].
    #[arg(long, value_enum, value_name = "FORMAT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kafka_format: Option<KafkaFormat>,
    /// Without a command, the generator runs.
    #[command(subcommand)]
    #[serde(skip)]
    pub command: Option<Command>,
}

/// What else the binary can do besides generating.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// Ask the generator running with these settings for `/livez` on its `listen` address: exit
    /// 0 when it answers 200, 1 otherwise. For container health checks (the image has no curl).
    Healthcheck,
}
