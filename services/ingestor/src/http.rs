//! The HTTP listener, bounded whatever clients do: a limit on open connections, a deadline for
//! each request head, an idle timeout on every connection, and a shutdown that never outlasts
//! `drain_timeout_ms`.
//!
//! Why not `axum::serve`: it accepts every connection (300 idle clients exhausted the process's
//! file descriptors, and the loader could no longer open files), sets no header read timeout
//! (hyper's needs a timer, which `axum::serve` does not give it), and its graceful shutdown
//! waits for every connection to end, so one client that sent half a request kept the process
//! from exiting after SIGTERM until it left. A tower `ConcurrencyLimit` or `TimeoutLayer` would
//! not help: both act on requests, and an idle connection has none.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

use crate::internal_events::{
    HttpAcceptFailed, HttpConnectionRefused, HttpConnectionTimedOut, HttpConnectionsAbandoned,
    Metrics, HTTP_TIMEOUTS,
};

/// At most this many HTTP connections are open at once (fewer under a low descriptor limit, see
/// [`connection_limit`]). The clients are a Prometheus scraper, orchestrator probes and an
/// operator's curl: a handful. A connection beyond the limit is accepted, answered `503` and
/// closed at once, so it holds a descriptor for microseconds and a new client learns at once
/// that it must retry (waiting in the kernel's backlog behind idle connections, it would wait
/// for their timeouts).
pub const MAX_HTTP_CONNECTIONS: usize = 64;

/// HTTP may hold at most this fraction of the process's open-file limit (`RLIMIT_NOFILE`, soft):
/// with a limit of 1,024 (Linux's usual default) that is [`MAX_HTTP_CONNECTIONS`], with 256 it
/// is 32. The rest is the loader's: its database connections, the files it reads, inotify, the
/// directories it moves files between.
const HTTP_SHARE_OF_DESCRIPTORS: u64 = 8;

/// A request head (request line and headers) must arrive within this time of the connection
/// being ready for one: after it opened, or after the previous response on a keep-alive
/// connection. So it is also how long an idle keep-alive connection stays open; a scraper
/// reconnects at its next scrape. A client that sends half a request, or a byte a second, is
/// closed after it.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection on which no byte moved either way for this long is closed: a client that stops
/// reading its response, or trickles a request body nobody reads. Above every handler's own
/// time limit (2 s for `/readyz` and `/status`), so a request being answered is never cut.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Pause after an accept error other than a connection's own failure (descriptors exhausted,
/// out of memory), so the loop does not spin while the condition lasts.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Refused connections that may linger at once (see [`refuse`]); beyond that, a refused
/// connection is closed at once. Part of HTTP's descriptor bound.
const REFUSALS_IN_FLIGHT: usize = 16;

/// How long a refused connection lingers, reading what its client sent, before it is closed.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// The answer to a connection beyond the limit. Written with one non-blocking `write` on the
/// fresh socket (whose send buffer is empty, so it fits) and never waited on.
const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
connection: close\r\ncontent-length: 62\r\n\r\n\
{\"status\":\"unavailable\",\"reason\":\"too many HTTP connections\"}\n";

/// The connection limit for this process: [`MAX_HTTP_CONNECTIONS`], or an eighth of the soft
/// `RLIMIT_NOFILE` if that is smaller (at least 1). HTTP then holds at most this many
/// descriptors plus the listener, one connection being accepted and [`REFUSALS_IN_FLIGHT`]
/// refused ones, however many clients connect (82 with the usual limit of 1,024, 50 with 256),
/// so loading never runs out of descriptors because of HTTP.
pub fn connection_limit() -> usize {
    let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX);
    let share = usize::try_from(soft / HTTP_SHARE_OF_DESCRIPTORS).unwrap_or(usize::MAX);
    MAX_HTTP_CONNECTIONS.min(share).max(1)
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then stops accepting, lets open
/// connections finish their requests (idle ones close at once), and returns after at most
/// `drain`: connections still open then are dropped, whatever their clients are doing.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
    drain: Duration,
    metrics: Metrics,
) {
    let limit = connection_limit();
    let permits = Arc::new(Semaphore::new(limit));
    let refusals = Arc::new(Semaphore::new(REFUSALS_IN_FLIGHT));
    let mut connections = JoinSet::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true);
    tracing::debug!(limit, "HTTP connection limit");
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
            // Reap finished connection tasks as they end, so the set stays as small as the
            // number of open connections.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                HttpAcceptFailed { error: &e }.emit(&metrics);
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => continue,
                }
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            refuse(stream, &refusals, &mut connections);
            HttpConnectionRefused { limit }.emit(&metrics);
            continue;
        };
        let io = TokioIo::new(IdleTimeout::new(stream, IDLE_TIMEOUT, permit));
        let service = TowerToHyperService::new(router.clone());
        let connection = builder.serve_connection(io, service);
        let (shutdown, metrics) = (shutdown.clone(), metrics.clone());
        connections.spawn(async move {
            tokio::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = shutdown.cancelled() => {
                    // Finishes the request in progress, then closes; an idle connection
                    // closes at once. Bounded by the drain deadline below.
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = result {
                if let Some(timeout) = timeout_kind(&e) {
                    HttpConnectionTimedOut { timeout }.emit(&metrics);
                } else {
                    tracing::debug!(error = %e, "HTTP connection ended with an error");
                }
            }
        });
    }
    // New connections now wait in the kernel's backlog and are reset when the listener closes.
    drop(listener);
    let deadline = Instant::now() + drain;
    while !connections.is_empty() {
        match tokio::time::timeout_at(deadline, connections.join_next()).await {
            Ok(_) => {}
            Err(_) => {
                HttpConnectionsAbandoned {
                    connections: connections.len(),
                    drain,
                }
                .emit(&metrics);
                // Dropping a connection's task closes its socket; the client sees a reset.
                connections.shutdown().await;
            }
        }
    }
}

/// Answers a connection beyond the limit with a 503 and closes it. Closing a socket whose
/// client's request is still unread makes the kernel send a reset, which can destroy the answer
/// before the client reads it; so the connection lingers for up to [`REFUSAL_LINGER`], reading
/// and discarding what the client sent until it closes. At most [`REFUSALS_IN_FLIGHT`] linger at
/// once (a flood of connections is then closed at once: a reset is a refusal too).
fn refuse(stream: TcpStream, refusals: &Arc<Semaphore>, tasks: &mut JoinSet<()>) {
    // A fresh socket's send buffer is empty, so the write fits; if it does not, the client
    // sees the connection closed, which is a refusal too.
    let _ = stream.try_write(REFUSAL);
    let Ok(permit) = refusals.clone().try_acquire_owned() else {
        return;
    };
    tasks.spawn(async move {
        let _permit = permit;
        let mut stream = stream;
        let _ = stream.shutdown().await;
        let mut discard = [0_u8; 1024];
        let drain = async { while matches!(stream.read(&mut discard).await, Ok(n) if n > 0) {} };
        let _ = tokio::time::timeout(REFUSAL_LINGER, drain).await;
    });
}

/// Which of our timeouts ended a connection, if one did.
fn timeout_kind(error: &hyper::Error) -> Option<&'static str> {
    if error.is_timeout() {
        return Some(HTTP_TIMEOUTS[0]);
    }
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if cause
            .downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::TimedOut)
        {
            return Some(HTTP_TIMEOUTS[1]);
        }
        source = cause.source();
    }
    None
}

/// Errors that concern one incoming connection only (it was reset before we took it): the
/// listener is fine, accept again at once.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// A connection's socket that fails with `TimedOut` once no byte moved either way for `idle`,
/// and holds the connection's place under the limit until it is dropped.
struct IdleTimeout {
    stream: TcpStream,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
    /// Released (a place under the limit freed) when the connection is dropped.
    _permit: OwnedSemaphorePermit,
}

impl IdleTimeout {
    fn new(stream: TcpStream, idle: Duration, permit: OwnedSemaphorePermit) -> Self {
        IdleTimeout {
            stream,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
            _permit: permit,
        }
    }

    /// Pushes the deadline back after progress.
    fn progressed(&mut self) {
        let next = Instant::now() + self.idle;
        self.deadline.as_mut().reset(next);
    }

    /// On `Pending`: whether the deadline passed (then the operation fails).
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.deadline.as_mut().poll(cx).is_ready()
    }

    fn timed_out() -> io::Error {
        io::Error::new(io::ErrorKind::TimedOut, "HTTP connection idle for too long")
    }
}

impl AsyncRead for IdleTimeout {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.progressed();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(Self::timed_out())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncWrite for IdleTimeout {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.stream).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.progressed();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(Self::timed_out())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.stream).poll_shutdown(cx) {
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(Self::timed_out())),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_is_a_complete_response_with_the_length_it_declares() {
        let text = std::str::from_utf8(REFUSAL).unwrap_or_default();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or_default();
        assert!(head.starts_with("HTTP/1.1 503 "), "{head}");
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head} / {body:?}"
        );
    }

    #[test]
    fn the_connection_limit_stays_within_the_descriptor_share() {
        let limit = connection_limit();
        assert!((1..=MAX_HTTP_CONNECTIONS).contains(&limit), "{limit}");
    }
}
