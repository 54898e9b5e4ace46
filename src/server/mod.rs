//! The tokio edge: listeners, one task per connection, graceful shutdown.

#![cfg_attr(
    not(test),
    deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)
)]

pub mod catalog;
pub mod session;
pub mod socket;
pub mod tls;

use crate::access::{MapStore, Peer};
use crate::admin::handle_connection;
use crate::pool::Pool;
use std::path::Path;
use std::sync::Arc;

pub use catalog::{AttachMap, Attached};
pub use socket::{claim_socket_path, SocketFile, SocketPathError};

/// Serve admin requests on the unix socket at `path` (mode 0600) on background threads.
pub fn spawn_admin(
    pool: Arc<Pool>,
    attach: Arc<AttachMap>,
    maps: Arc<MapStore>,
    path: &Path,
) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    claim_socket_path(path).map_err(std::io::Error::other)?;
    let listener = std::os::unix::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let (pool, attach, maps) = (pool.clone(), attach.clone(), maps.clone());
            std::thread::spawn(move || {
                let ctx = crate::admin::AdminCtx {
                    pool: &pool,
                    attach: attach.as_ref(),
                    maps: &maps,
                };
                if let Err(e) = handle_connection(conn, &ctx) {
                    tracing::warn!("admin connection: {e}");
                }
            });
        }
    });
    Ok(())
}
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// A bound listening socket.
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// What every session of a server shares.
pub struct Shared {
    pub pool: Arc<Pool>,
    pub attach: Arc<AttachMap>,
    pub maps: Arc<MapStore>,
    pub tls: Arc<tls::TlsPolicy>,
    /// Turns true when the server stops: new requests get ESHUTDOWN.
    pub stopping: watch::Receiver<bool>,
}

/// Accept clients on every listener until `shared.stopping` turns true, then wait (bounded) for
/// the sessions to finish their requests.
pub async fn serve(shared: Arc<Shared>, listeners: Vec<Listener>) {
    let mut accepts = JoinSet::new();
    let sessions = Arc::new(tokio::sync::Mutex::new(JoinSet::new()));
    for l in listeners {
        let (shared, sessions) = (shared.clone(), sessions.clone());
        let mut stop = shared.stopping.clone();
        accepts.spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = stop.changed() => return,
                    a = accept(&l) => a,
                };
                match accepted {
                    Ok((stream, peer)) => {
                        let shared = shared.clone();
                        sessions.lock().await.spawn(async move {
                            let r = match stream {
                                Stream::Tcp(s) => {
                                    let _ = s.set_nodelay(true);
                                    let ip = s.peer_addr().map(|a| a.ip());
                                    let who = Peer::tcp(ip.unwrap_or([0, 0, 0, 0].into()));
                                    session::run(s, shared, who, &peer).await
                                }
                                Stream::Unix(s) => {
                                    let uid = s.peer_cred().ok().map(|c| c.uid());
                                    session::run(s, shared, Peer::unix(uid), &peer).await
                                }
                            };
                            match r {
                                Ok(()) => tracing::info!(peer, "client detached"),
                                Err(e) => tracing::warn!(peer, "session ended: {e}"),
                            }
                        });
                    }
                    Err(e) => {
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                }
            }
        });
    }
    let mut stopping = shared.stopping.clone();
    let _ = stopping.wait_for(|s| *s).await;
    accepts.shutdown().await;
    // Give in-flight requests a moment to complete (later ones get ESHUTDOWN), then drop the
    // rest.
    let mut s = sessions.lock().await;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        while s.join_next().await.is_some() {}
    })
    .await;
    s.shutdown().await;
}

enum Stream {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

async fn accept(l: &Listener) -> std::io::Result<(Stream, String)> {
    match l {
        Listener::Tcp(t) => t
            .accept()
            .await
            .map(|(s, a)| (Stream::Tcp(s), a.to_string())),
        Listener::Unix(u) => u
            .accept()
            .await
            .map(|(s, _)| (Stream::Unix(s), "unix".to_string())),
    }
}
