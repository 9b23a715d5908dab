//! Plumbing the generator and the ingestor share, so the two services log, report configuration
//! errors and register metrics the same way. Domain code does not belong here: the event contract has
//! its own crate, and each service keeps its own settings.
//!
//! # Layout
//! - [`LogFormat`] and [`init_logging`]: tracing set-up, text or JSON, level from `RUST_LOG`,
//!   colours only on a terminal.
//! - [`configure_backtraces`] and [`end_quietly_on_closed_stdout`]: backtraces only when the
//!   service's own setting asks, and no panic when a reader closes standard output early.
//! - [`settings`] and [`declare_settings!`]: each setting declared once (name, type, default,
//!   doc, range), [`settings::Millis`] for the `_ms` keys.
//! - [`docs_check`]: the checks holding `docs/configuration.md` and the flags to the declarations.
//! - [`config`]: the layering both services' settings share (defaults < TOML file <
//!   environment < flags), [`ConfigError`] naming the key and the value, and the tests that
//!   hold `docs/configuration.md` and the flags to the declarations.
//! - [`register`], [`counter_vec`], [`histogram`], [`register_process_metrics`]: metric
//!   registration in a service-owned `prometheus::Registry`, labelled series pre-created at 0,
//!   and the process collector.
//! - [`ReadyFile`]: the file a service writes its bound address to (`--ready-file`), so whoever
//!   started it on port 0 finds the port without reading logs.
//! - [`shutdown_signal`]: SIGINT/SIGTERM, a second one exits at once.
//! - [`health_status`]: one GET against a service's own health endpoint, for the `healthcheck`
//!   subcommands container health checks run (the images have no curl).
#![warn(missing_docs)]

pub mod config;
pub mod docs_check;
mod ready_file;
pub mod settings;
mod shutdown;

pub use config::ConfigError;
pub use ready_file::ReadyFile;
pub use shutdown::shutdown_signal;

use std::io::{IsTerminal, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};

use std::time::Duration;

use prometheus::{Histogram, HistogramOpts, IntCounterVec, Opts, Registry};
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
    // Colour codes only for a person at a terminal (and not with NO_COLOR set): in a
    // redirected log or a log shipper they are noise around every field.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(
            std::io::stdout().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        );
    // `try_init` fails only if a subscriber is already set (e.g. twice in one test process).
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Makes backtraces follow the service's own setting (`enabled`) rather than `RUST_BACKTRACE`:
/// exported for some other program, it would turn every logged error into dozens of lines of
/// frames (anyhow captures one per error, and the cause chain prints it), e.g. 500 lines for
/// 20 s of a wrong password. Sets `RUST_LIB_BACKTRACE` (errors) and `RUST_BACKTRACE` (panics).
///
/// Call first thing in `main`, before any other thread exists: it sets environment variables.
pub fn configure_backtraces(enabled: bool) {
    let value = if enabled { "1" } else { "0" };
    std::env::set_var("RUST_LIB_BACKTRACE", value);
    std::env::set_var("RUST_BACKTRACE", value);
}

/// Ends the process quietly (exit 0, nothing on standard error) when standard output is closed
/// under it, as by `cmd | head -2`, instead of panicking with exit 101.
///
/// Why a panic hook: `println!` panics when the write fails, and Rust ignores SIGPIPE (the
/// workspace forbids the `unsafe` that would restore it). The hook recognises that one panic,
/// "failed printing to stdout" with a broken pipe, and passes every other panic on unchanged.
/// For the commands that print for people, not for services.
pub fn end_quietly_on_closed_stdout() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.starts_with("failed printing to stdout") && message.contains("os error 32") {
            std::process::exit(0);
        }
        previous(info);
    }));
}

/// Registers `metric` in `registry` and hands it back.
///
/// # Errors
/// Only on a programming error (a duplicate or malformed metric name).
pub fn register<M: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: M,
) -> prometheus::Result<M> {
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

/// A registered counter with one label, every series in `values` created at 0, so dashboards
/// and `rate()` see them before the first event.
///
/// # Errors
/// Only on a programming error (a duplicate or malformed metric name).
pub fn counter_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    label: &str,
    values: &[&str],
) -> prometheus::Result<IntCounterVec> {
    let metric = IntCounterVec::new(Opts::new(name, help), &[label])?;
    for value in values {
        metric.with_label_values(&[value]);
    }
    register(registry, metric)
}

/// A registered histogram with the given buckets.
///
/// # Errors
/// Only on a programming error (a duplicate or malformed metric name).
pub fn histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    buckets: &[f64],
) -> prometheus::Result<Histogram> {
    register(
        registry,
        Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))?,
    )
}

/// Registers the process collector (`process_cpu_seconds_total`, `process_resident_memory_bytes`,
/// `process_open_fds`, `process_max_fds`, `process_start_time_seconds`, ...) in a service's own
/// registry, so each service reports its own CPU, memory, descriptors and restarts (a new start
/// time) under its scrape job. Linux only (it reads `/proc/self`); elsewhere nothing is
/// registered.
///
/// # Errors
/// Only on a programming error (registered twice in one registry).
pub fn register_process_metrics(registry: &Registry) -> prometheus::Result<()> {
    #[cfg(target_os = "linux")]
    registry.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ))?;
    #[cfg(not(target_os = "linux"))]
    let _ = registry;
    Ok(())
}

/// The HTTP status of `GET path` on a service's own listen address (an unspecified address such
/// as `0.0.0.0` is asked on 127.0.0.1), within `timeout`. A raw HTTP/1.0 request over a blocking
/// socket: one GET in a short-lived health-check process needs no HTTP client or runtime.
///
/// # Errors
/// When nothing listens, the connection breaks, or it takes longer than `timeout`.
pub fn health_status(listen: SocketAddr, path: &str, timeout: Duration) -> std::io::Result<u16> {
    let mut target = listen;
    if target.ip().is_unspecified() {
        target = SocketAddr::from((Ipv4Addr::LOCALHOST, target.port()));
    }
    let mut stream = TcpStream::connect_timeout(&target, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    Ok(String::from_utf8_lossy(&response)
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0))
}

#[cfg(test)]
mod health_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn health_status_reads_the_status_code_and_fails_when_nothing_listens() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut request = [0u8; 256];
            let n = conn.read(&mut request).unwrap();
            assert!(String::from_utf8_lossy(&request[..n]).starts_with("GET /livez HTTP/1.0"));
            conn.write_all(b"HTTP/1.1 503 Service Unavailable\r\n\r\n")
                .unwrap();
        });
        let unspecified = SocketAddr::from(([0, 0, 0, 0], addr.port()));
        assert_eq!(
            health_status(unspecified, "/livez", Duration::from_secs(3)).unwrap(),
            503
        );
        server.join().unwrap();
        assert!(health_status(addr, "/livez", Duration::from_secs(1)).is_err());
    }
}
