//! Entry point: parse flags, load configuration, set up logging, run until done or signalled.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use generator::cli::{Cli, Command};
use generator::config;
use generator::internal_events::{GeneratorFailed, GeneratorFinished};
use generator::startup;
use service_support::ReadyFile;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match config::load(cli.config.as_deref(), &cli) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("generator: {e}");
            return ExitCode::from(2);
        }
    };
    if cli.command == Some(Command::Healthcheck) {
        return healthcheck(settings.listen);
    }
    service_support::init_logging(settings.log_format, "info");
    let run = async {
        let app = startup::Application::build(settings).await?;
        if let Some(path) = &cli.ready_file {
            ReadyFile::for_this_process(app.local_addr()?).write(path)?;
        }
        app.run_until_stopped(service_support::shutdown_signal("generator"))
            .await
    };
    match run.await {
        Ok(summary) => {
            GeneratorFinished { summary: &summary }.emit();
            ExitCode::SUCCESS
        }
        Err(e) => {
            GeneratorFailed { error: &e }.emit();
            ExitCode::FAILURE
        }
    }
}

/// `generator healthcheck`: 0 when the running generator's `/livez` answers 200.
fn healthcheck(listen: SocketAddr) -> ExitCode {
    match service_support::health_status(listen, "/livez", Duration::from_secs(3)) {
        Ok(200) => ExitCode::SUCCESS,
        Ok(status) => {
            eprintln!("generator healthcheck: /livez on {listen} answered {status}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("generator healthcheck: cannot reach {listen}: {e}");
            ExitCode::FAILURE
        }
    }
}
