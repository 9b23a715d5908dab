//! The generator: realistic synthetic e-commerce traffic, written as CSV files that appear
//! atomically in a directory or produced as Kafka messages, with knobs to inject the faults a
//! real feed has (invalid rows, duplicates, late events).
//!
//! # Layout
//! - [`cli`]: the command line (flags for every setting, `healthcheck`).
//! - [`config`]: figment-layered settings (defaults < TOML < `GENERATOR_*` env < flags), validated;
//!   logging set-up is shared with the ingestor in the `service-support` crate.
//! - [`catalog`]: products with stable prices and Zipf popularity; the user base.
//! - [`sessions`]: shopping sessions walking the view -> cart -> purchase funnel.
//! - [`faults`]: turning a valid event into a row with one specific contract violation.
//! - [`rows`]: the seeded row stream mixing events and faults at the configured ratios.
//! - [`pacing`]: holding the target rate on an absolute schedule.
//! - [`sink`]: where rows go, one batch at a time ([`sink::Sink`]): the directory (temp file,
//!   fsync, link to the final name: atomic publication) or Kafka (an idempotent producer, one
//!   message per row keyed by user id, a batch complete when every message is acknowledged).
//! - [`summary`]: what a run produced, for the exit summary line.
//! - [`internal_events`]: every metric and log line the generator emits, declared in one place;
//!   the Prometheus registry it owns, moved once per published batch.
//! - [`routes`]: the HTTP surface: `/metrics`, `/livez` and `/healthz`.
//! - [`startup`]: [`startup::Application`] binds the listener, then runs the write loop and the
//!   HTTP server under one shutdown.

pub mod catalog;
pub mod cli;
pub mod config;
pub mod faults;
pub mod internal_events;
pub mod pacing;
pub mod routes;
pub mod rows;
pub mod sessions;
pub mod sink;
pub mod startup;
pub mod summary;
