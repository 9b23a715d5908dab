//! The one shutdown signal both services wait for: the first SIGINT or SIGTERM starts a graceful
//! stop, a second one exits at once.

/// Completes on the first SIGINT or SIGTERM; a second one exits the process at once with 130
/// (work in flight is safe to abandon: PostgreSQL rolls back an open transaction when its
/// connection drops, and the generator publishes files by rename, so nothing half-done is seen).
///
/// The listeners are created once, before the first signal, and reused for the second: a signal
/// arriving between the two waits is queued by them instead of being lost.
pub async fn shutdown_signal(service: &'static str) {
    let mut signals = match Signals::listen() {
        Ok(signals) => signals,
        Err(e) => {
            tracing::warn!(error = %e, "Cannot listen for SIGINT/SIGTERM; stop the {service} with SIGKILL");
            return std::future::pending().await;
        }
    };
    signals.next().await;
    tokio::spawn(async move {
        signals.next().await;
        eprintln!("{service}: second signal, exiting now");
        std::process::exit(130);
    });
}

/// SIGINT and SIGTERM listeners.
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    fn listen() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    async fn next(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}
