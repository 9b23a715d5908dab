//! Entry point: parse the command line, load settings, set up logging, dispatch.

use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use ingestor::cli::{Cli, Command};
use ingestor::commands::{check, healthcheck, replay, report, reset, status};
use ingestor::config;
use ingestor::startup::Application;
use service_support::ReadyFile;

/// The ingestor's own switch for backtraces on errors and panics (`1` or `true`). Read here,
/// before any thread starts, because it works by setting the standard library's variables.
const BACKTRACE_VAR: &str = "INGESTOR_BACKTRACE";

fn main() -> ExitCode {
    // Before the runtime's threads exist: the standard library's backtrace variables are set
    // from our own setting, so that a RUST_BACKTRACE exported for some other program does not
    // turn one start-up error into 70 lines (see `service_support::configure_backtraces`).
    service_support::configure_backtraces(
        std::env::var(BACKTRACE_VAR).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true")),
    );
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("ingestor: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run_command())
}

async fn run_command() -> ExitCode {
    let cli = Cli::parse();
    let settings = match config::load(cli.global.config.as_deref(), &cli.global) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("ingestor: {e}");
            return ExitCode::from(2);
        }
    };
    let command = cli.command.unwrap_or(Command::Run);
    if matches!(command, Command::Run) {
        service_support::init_logging(settings.log_format, "info");
        return match run(settings, cli.global.ready_file.as_deref()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error.cause_chain = ?e, error.message = %format!("{e:#}"), "Ingestor failed");
                ExitCode::FAILURE
            }
        };
    }
    // Operator commands print for people; only warnings go to the log. A reader that stops
    // early (`ingestor check | head -2`) ends them quietly instead of with a panic.
    service_support::end_quietly_on_closed_stdout();
    service_support::init_logging(settings.log_format, "warn");
    let outcome = match command {
        Command::Run => unreachable_run(),
        Command::Check => Ok(check::run(&settings).await),
        Command::Status { json } => status::run(&settings, json).await,
        Command::Report { json } => report::run(&settings, json).await.map(|()| true),
        Command::Replay { file } => replay::run(settings, &file).await,
        Command::Reset {
            yes,
            restore_archived,
        } => reset::run(&settings, yes, restore_archived)
            .await
            .map(|()| true),
        Command::Healthcheck => Ok(healthcheck::run(&settings).await),
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("ingestor: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `run` is dispatched before the operator commands.
fn unreachable_run() -> anyhow::Result<bool> {
    Err(anyhow::anyhow!(
        "internal error: `run` reached the command dispatcher"
    ))
}

async fn run(settings: config::Settings, ready_file: Option<&Path>) -> anyhow::Result<()> {
    let app = Application::build(settings).await?;
    if let Some(path) = ready_file {
        ReadyFile::for_this_process(app.local_addr()?).write(path)?;
    }
    app.run_until_stopped(service_support::shutdown_signal("ingestor"))
        .await?;
    tracing::info!("Ingestor stopped");
    Ok(())
}
