//! `ingestor healthcheck`: asks this host's running ingestor for `/readyz`, for container
//! health checks in images without curl. A raw HTTP/1.0 request: one GET needs no HTTP client.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::Settings;

/// How long the whole check may take.
const TIMEOUT: Duration = Duration::from_secs(3);

/// `true` when `/readyz` answers 200.
pub async fn run(settings: &Settings) -> bool {
    let mut target = settings.listen;
    if target.ip().is_unspecified() {
        target = SocketAddr::from((Ipv4Addr::LOCALHOST, target.port()));
    }
    match tokio::time::timeout(TIMEOUT, ready_status(target)).await {
        Ok(Ok(200)) => true,
        Ok(Ok(status)) => {
            eprintln!("ingestor healthcheck: /readyz on {target} answered {status}");
            false
        }
        Ok(Err(e)) => {
            eprintln!("ingestor healthcheck: cannot reach {target}: {e}");
            false
        }
        Err(_) => {
            eprintln!("ingestor healthcheck: {target} did not answer within {TIMEOUT:?}");
            false
        }
    }
}

async fn ready_status(target: SocketAddr) -> std::io::Result<u16> {
    let mut stream = TcpStream::connect(target).await?;
    stream
        .write_all(b"GET /readyz HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response);
    Ok(text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0))
}
