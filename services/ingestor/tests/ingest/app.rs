//! The ingestor run inside the test's own process (zero-to-production's `spawn_app`): built by
//! `Application::build` on port 0 from settings made by the public config API, and run on a task
//! until the test stops it. Tests that need no separate process (no kill -9, no signal, no
//! process-level limit, no stdout or exit code) use it: no binary to start, no ready file to wait
//! for, and a shutdown the test controls and can await.

use std::path::Path;

use ingestor::startup::Application;
use serde_json::{Map, Value};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::helpers::FAST;

/// An ingestor running on a task of the test's runtime; asked to stop when dropped.
pub struct TestApp {
    /// Its HTTP port on 127.0.0.1.
    pub port: u16,
    shutdown: CancellationToken,
    running: Option<JoinHandle<anyhow::Result<()>>>,
}

/// Builds and starts an ingestor on `input` and `database_url`, with the settings
/// [`crate::helpers::Ingestor::spawn`] gives a process: any free port, the [`FAST`] settings,
/// then `envs` (named as the environment variables a process would get, e.g.
/// `INGESTOR_LOADERS`). The port is bound when this returns.
pub async fn spawn_app(database_url: &str, input: &Path, envs: &[(&str, &str)]) -> TestApp {
    let mut overrides = Map::new();
    for (variable, value) in FAST.iter().chain(envs) {
        overrides.insert(setting_key(variable), setting_value(value));
    }
    overrides.insert("input_dir".into(), input.display().to_string().into());
    overrides.insert("database_url".into(), database_url.into());
    overrides.insert("listen".into(), "127.0.0.1:0".into());
    // The flags' layer, the last and strongest: the test's values win over the environment.
    let settings = ingestor::config::load(None, &overrides)
        .unwrap_or_else(|e| panic!("test settings {overrides:?}: {e}"));
    let app = Application::build(settings)
        .await
        .unwrap_or_else(|e| panic!("the ingestor did not build: {e:#}"));
    let port = app.port();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(app.run_until_stopped(shutdown.clone().cancelled_owned()));
    TestApp {
        port,
        shutdown,
        running: Some(running),
    }
}

impl TestApp {
    /// Asks it to stop (as SIGTERM does a process) and waits until it has: the result of
    /// `run_until_stopped`.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        match self.running.take() {
            Some(running) => running.await?,
            None => Ok(()),
        }
    }

    /// `GET path` on its HTTP port: (status code, body).
    pub fn get(&self, path: &str) -> (u16, String) {
        crate::helpers::http_get(self.port, path)
    }
}

impl Drop for TestApp {
    /// Starts the graceful shutdown; the runtime's end (the test's) ends whatever is left.
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// `INGESTOR_SETTLE_MS` to `settle_ms`: the key the environment variable sets.
fn setting_key(variable: &str) -> String {
    variable
        .strip_prefix(ingestor::config::ENV_PREFIX)
        .unwrap_or_else(|| panic!("{variable} is not an ingestor setting's variable"))
        .to_ascii_lowercase()
}

/// An environment value as the typed value figment would read from it: a number or a boolean
/// where it is one, else the string.
fn setting_value(value: &str) -> Value {
    serde_json::from_str::<Value>(value)
        .ok()
        .filter(|v| v.is_number() || v.is_boolean())
        .unwrap_or_else(|| value.into())
}
