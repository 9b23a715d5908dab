//! The ingestor: turns every complete event CSV file in a directory into PostgreSQL rows,
//! exactly once, across crashes, restarts, database outages and replicas, and accounts for every
//! line (accepted, duplicate, or rejected with a reason).
//!
//! # Layout
//! - [`model`]: the types that cross layers (ledger status, file failures, ...), below all of
//!   the modules that use them.
//! - [`cli`], [`config`]: command line and layered settings (logging set-up is shared with the
//!   generator in the `service-support` crate).
//! - [`source`]: where work comes from, behind the `Source` trait (the seam a second kind of
//!   source plugs into); the directory source: discovery of ready files (inotify + periodic
//!   rescan, oldest first), [`source::reader`] parsing a file into chunks (where a row is parsed,
//!   via the event contract) and [`source::lifecycle`] archiving, deleting or failing files
//!   after commit.
//! - [`pipeline`]: [`pipeline::loader`] writes a batch of units in one transaction,
//!   [`pipeline::worker`] is the loop with batching, retries and shutdown.
//! - [`store`]: the PostgreSQL side: pool, ledger (claims), binary COPY (where a row is written).
//! - [`tls`]: TLS to PostgreSQL with libpq's `sslmode` meanings (rustls), for every connection.
//! - [`claim`]: one directory, one database: the marker naming the database an input
//!   directory is loaded into, checked before loading starts.
//! - [`readiness`]: whether this replica can load, in one place (the loops report, `/readyz`
//!   reads).
//! - [`internal_events`]: every log line and metric the service emits (where a row is counted).
//! - [`status`]: the status report, one type for `ingestor status --json` and `GET /status`.
//! - [`routes`]: `/metrics`, `/healthz`, `/livez`, `/readyz`, `/status`.
//! - [`http`]: the HTTP listener, bounded (connection limit, header and idle timeouts, a
//!   shutdown within the drain timeout) so that no client can starve the loader.
//! - [`startup`]: wiring and graceful shutdown; [`commands`]: the operator commands.

pub mod claim;
pub mod cli;
pub mod commands;
pub mod config;
pub mod http;
pub mod internal_events;
pub mod model;
pub mod pipeline;
pub mod readiness;
pub mod routes;
pub mod source;
pub mod startup;
pub mod status;
pub mod store;
pub mod tls;
