//! The ingestor as users run it: a real `ingestor` against a real PostgreSQL database (a fresh
//! one per test), fed with files from the real generator. One test binary with modules, so the
//! harness compiles once. A test that needs a process of its own (kill -9, signals, limits,
//! stdout, exit codes) starts the binary (`helpers::Ingestor`); the others run the application
//! inside the test (`app::spawn_app`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod app;
mod helpers;

mod bad_input;
mod business_dashboard;
mod connection_causes;
mod crash;
mod dashboards;
mod database_encoding;
mod database_faults;
mod database_refusals;
mod database_tls;
mod directory_claim;
mod directory_faults;
mod end_to_end;
mod endpoints;
mod file_changes;
mod http_limits;
mod kafka_source;
mod operator_commands;
mod postgres_exporter;
mod replicas;
mod report;
mod source_seam;
