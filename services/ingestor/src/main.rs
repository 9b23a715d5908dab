//! Entry point: parse the command line, load settings, set up logging, dispatch.

use std::process::ExitCode;

use clap::Parser;
use ingestor::cli::{Cli, Command};
use ingestor::config;
use ingestor::startup::Application;
use ingestor::telemetry;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match config::load(&cli.global) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("ingestor: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(settings.log_format);
    let result = match cli.command.unwrap_or(Command::Run) {
        Command::Run => run(settings).await,
        _ => Err(anyhow::anyhow!("command not available yet")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error.cause_chain = ?e, error.message = %e, "Ingestor failed");
            ExitCode::FAILURE
        }
    }
}

async fn run(settings: config::Settings) -> anyhow::Result<()> {
    let app = Application::build(settings).await?;
    app.run_until_stopped(shutdown_signal()).await?;
    tracing::info!("Ingestor stopped");
    Ok(())
}

/// Completes on the first SIGINT or SIGTERM; a second one exits at once (the open transaction
/// is rolled back by PostgreSQL when the connection drops, so nothing is lost).
async fn shutdown_signal() {
    wait_for_signal().await;
    tokio::spawn(async {
        wait_for_signal().await;
        eprintln!("ingestor: second signal, exiting now");
        std::process::exit(130);
    });
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let interrupt = tokio::signal::ctrl_c();
    match signal(SignalKind::terminate()) {
        Ok(mut terminate) => {
            tokio::select! {
                _ = interrupt => {}
                _ = terminate.recv() => {}
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "Cannot listen for SIGTERM; only SIGINT stops the ingestor");
            let _ = interrupt.await;
        }
    }
}
