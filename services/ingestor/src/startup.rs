//! Building and running the service: bind the HTTP listener, open the input directory, create
//! the pool, then run the loader and the server under one cancellation token until shutdown.

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::claim;
use crate::config::Settings;
use crate::http;
use crate::internal_events::Metrics;
use crate::pipeline::worker::{self, WorkerState};
use crate::readiness::Readiness;
use crate::routes::{router, AppState, StatusSnapshot};
use crate::source::kafka::KafkaSource;
use crate::source::{lifecycle, DirectorySource, Discovery};
use crate::store::presence::Presence;
use crate::store::{build_pool, Pool};

/// A built, not yet running, ingestor.
pub struct Application {
    settings: Arc<Settings>,
    listener: TcpListener,
    /// The input directory's watch; `None` for the Kafka source.
    discovery: Option<Discovery>,
    pool: Pool,
    metrics: Metrics,
}

impl Application {
    /// Binds the listener (port 0 picks a free port), checks the input directory and creates the
    /// archive and failed directories. Does not need the database: it may come later.
    ///
    /// # Errors
    /// When the address cannot be bound or the directories are unusable.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("cannot listen on {}", settings.listen))?;
        // The Kafka source has no directory to watch or prepare.
        let discovery = match settings.kafka {
            Some(_) => None,
            None => {
                let discovery = Discovery::start(&settings.input_dir, settings.settle)?;
                lifecycle::prepare_dirs(&settings)?;
                Some(discovery)
            }
        };
        let metrics = Metrics::new().context("cannot register metrics")?;
        let pool = build_pool(&settings);
        Ok(Application {
            settings: Arc::new(settings),
            listener,
            discovery,
            pool,
            metrics,
        })
    }

    /// The bound HTTP port.
    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// The bound HTTP address.
    ///
    /// # Errors
    /// When the socket cannot tell (it has been closed under us).
    pub fn local_addr(&self) -> anyhow::Result<std::net::SocketAddr> {
        self.listener
            .local_addr()
            .context("cannot read the bound address")
    }

    /// Runs until `shutdown` completes, then stops taking new files and lets the batch in
    /// flight commit within the drain timeout.
    ///
    /// # Errors
    /// When the HTTP server fails, or the loader stopped by itself (a loop panicked).
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let Application {
            settings,
            listener,
            discovery,
            pool,
            metrics,
        } = self;
        tracing::info!(
            input_dir = %settings.input_dir.display(),
            database = %settings.database_display,
            listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            instance = %settings.instance_id,
            tls = %settings.tls.describe(),
            source = match &settings.kafka {
                Some(kafka) => format!("kafka {} {:?}", kafka.brokers, kafka.topics.iter().map(|t| &t.name).collect::<Vec<_>>()),
                None => "directory".to_owned(),
            },
            inotify = discovery.as_ref().is_some_and(Discovery::is_watching),
            "Ingestor starting"
        );
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let readiness = Readiness::new(metrics.clone());
        let state = AppState {
            pool: pool.clone(),
            metrics: metrics.clone(),
            settings: settings.clone(),
            readiness: readiness.clone(),
            status: StatusSnapshot::new(settings.clone()),
        };
        let worker_state = WorkerState {
            metrics: metrics.clone(),
            readiness: readiness.clone(),
            presence: Presence::spawn(settings.clone(), cancel.clone()),
        };
        let mut loader = tracker.spawn({
            let (settings, cancel) = (settings.clone(), cancel.clone());
            async move {
                // One directory, one database: nothing is loaded before the input directory is
                // claimed for this database (`claim`); a directory of another database ends the
                // loader with the reason, and so the process.
                let result = async {
                    match (discovery, settings.kafka.clone()) {
                        (Some(discovery), _) => {
                            claim::claim_directory(&settings, &pool, &metrics, &cancel).await?;
                            let source = DirectorySource::new(discovery, settings.clone());
                            worker::run(settings, pool, source, worker_state, cancel).await
                        }
                        (None, Some(kafka)) => {
                            let source = KafkaSource::start(
                                &settings,
                                kafka,
                                pool.clone(),
                                readiness.clone(),
                                metrics,
                                cancel.clone(),
                            )?;
                            worker::run(settings, pool, source, worker_state, cancel).await
                        }
                        (None, None) => anyhow::bail!("no source: neither a directory nor Kafka"),
                    }
                }
                .await;
                readiness.loader_stopped();
                result
            }
        });
        // Bounded whatever clients do (see `http`): it returns within the drain timeout of
        // the cancellation, so it never holds up the exit.
        let server = tracker.spawn({
            let (cancel, drain, metrics) = (
                cancel.clone(),
                settings.drain_timeout,
                state.metrics.clone(),
            );
            async move {
                http::serve(listener, router(state), cancel, drain, metrics).await;
                anyhow::Ok(())
            }
        });
        tracker.close();
        let loader_result = tokio::select! {
            () = shutdown => {
                tracing::info!(
                    drain_timeout_ms = settings.drain_timeout.as_millis() as u64,
                    "Shutdown requested; finishing the batch in flight"
                );
                cancel.cancel();
                match tokio::time::timeout(settings.drain_timeout, &mut loader).await {
                    Ok(joined) => joined.context("loader task failed")?,
                    Err(_) => {
                        tracing::warn!("Drain timeout reached; the open transaction is rolled back");
                        loader.abort();
                        // Abandoning a batch is not a clean stop: exit non-zero so that an
                        // operator or orchestrator can tell the two apart (issue 12 item 9).
                        Err(anyhow::anyhow!(
                            "the drain timeout of {} ms ran out before the batch in flight \
                             finished; it was abandoned and its transaction rolled back (its \
                             files load at the next start)",
                            settings.drain_timeout.as_millis()
                        ))
                    }
                }
            }
            // The loader only ends by itself when a loop panicked: stop serving and exit
            // non-zero so the orchestrator restarts the process.
            joined = &mut loader => {
                cancel.cancel();
                joined.context("loader task failed")?
            }
        };
        let _ = tokio::time::timeout(settings.drain_timeout, tracker.wait()).await;
        loader_result?;
        match server.await {
            Ok(result) => result.context("HTTP server failed"),
            Err(e) if e.is_cancelled() => Ok(()),
            Err(e) => Err(e).context("HTTP server task panicked"),
        }
    }
}
