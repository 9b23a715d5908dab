//! A TCP proxy that cuts every connection it carries on command: the network between the
//! ingestor and PostgreSQL failing at moments nobody chose (mid-query, mid-COPY, mid-COMMIT).
//!
//! Each accepted client connection gets its own upstream connection and a task that copies bytes
//! both ways. The proxy keeps one [`oneshot::Sender`] per live pair; [`ChaosProxy::cut_all`]
//! sends on each, and the pair's task then drops both sockets, either with an orderly close (FIN)
//! or with a reset (RST, via a zero linger), as the caller chose.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How a connection pair is cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// Both sockets closed normally: the peers read end-of-file.
    Close,
    /// Both sockets reset: the peers read `ECONNRESET`.
    Reset,
}

/// Live connection pairs by id. A std mutex: it is never held across an `.await`.
type Live = Arc<Mutex<HashMap<u64, oneshot::Sender<Cut>>>>;

/// A running proxy; stops accepting and cuts every pair when dropped.
pub struct ChaosProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    live: Live,
    accepted: Arc<AtomicU64>,
    accept_task: JoinHandle<()>,
}

impl ChaosProxy {
    /// Listens on a free port of 127.0.0.1 and forwards every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> ChaosProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let live: Live = Arc::default();
        let accepted = Arc::new(AtomicU64::new(0));
        let accept_task = tokio::spawn({
            let (live, accepted) = (live.clone(), accepted.clone());
            async move {
                let mut next_id = 0_u64;
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        // E.g. out of file descriptors: do not spin, try again shortly.
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                        continue;
                    };
                    next_id += 1;
                    accepted.fetch_add(1, Ordering::Relaxed);
                    let (cut_tx, cut_rx) = oneshot::channel();
                    live.lock().unwrap().insert(next_id, cut_tx);
                    tokio::spawn(pipe(next_id, client, upstream, cut_rx, live.clone()));
                }
            }
        });
        ChaosProxy {
            addr,
            live,
            accepted,
            accept_task,
        }
    }

    /// Cuts every live pair; returns how many were cut.
    pub fn cut_all(&self, mut how: impl FnMut() -> Cut) -> usize {
        let victims: Vec<oneshot::Sender<Cut>> = self
            .live
            .lock()
            .unwrap()
            .drain()
            .map(|(_, tx)| tx)
            .collect();
        // A send fails only if the pair ended on its own in the meantime.
        victims
            .into_iter()
            .filter(|tx| !tx.is_closed())
            .map(|tx| tx.send(how()))
            .filter(Result::is_ok)
            .count()
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for ChaosProxy {
    fn drop(&mut self) {
        self.accept_task.abort();
        self.cut_all(|| Cut::Close);
    }
}

/// Carries one pair until either side closes or the pair is cut.
async fn pipe(
    id: u64,
    mut client: TcpStream,
    upstream: SocketAddr,
    mut cut: oneshot::Receiver<Cut>,
    live: Live,
) {
    // Connecting upstream may itself be cut: then the client simply sees its socket close.
    let mut server = tokio::select! {
        connected = TcpStream::connect(upstream) => match connected {
            Ok(server) => server,
            Err(_) => {
                live.lock().unwrap().remove(&id);
                return;
            }
        },
        _ = &mut cut => return,
    };
    // Like both real ends: without it, Nagle's algorithm meets delayed ACKs and every small
    // protocol message may wait tens of milliseconds in the proxy.
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {
            live.lock().unwrap().remove(&id);
        }
        how = &mut cut => {
            if how == Ok(Cut::Reset) {
                let _ = client.set_zero_linger();
                let _ = server.set_zero_linger();
            }
        }
    }
}
