//! `ingestor healthcheck`: asks this host's running ingestor for `/readyz`, for container
//! health checks in images without curl (see `service_support::health_status`).

use std::time::Duration;

use service_support::health_status;

use crate::config::Settings;

/// How long the whole check may take.
const TIMEOUT: Duration = Duration::from_secs(3);

/// `true` when `/readyz` answers 200.
pub async fn run(settings: &Settings) -> bool {
    let listen = settings.listen;
    let checked =
        tokio::task::spawn_blocking(move || health_status(listen, "/readyz", TIMEOUT)).await;
    match checked {
        Ok(Ok(200)) => true,
        Ok(Ok(status)) => {
            eprintln!("ingestor healthcheck: /readyz on {listen} answered {status}");
            false
        }
        Ok(Err(e)) => {
            eprintln!("ingestor healthcheck: cannot reach {listen}: {e}");
            false
        }
        Err(e) => {
            eprintln!("ingestor healthcheck: the check itself failed: {e}");
            false
        }
    }
}
