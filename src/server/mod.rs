//! The tokio edge: listeners, one task per connection, graceful shutdown.

pub mod catalog;
pub mod session;

use crate::pool::Pool;
use std::sync::Arc;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// A bound listening socket.
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// Accept clients on every listener until `shutdown` turns true, then wait (bounded) for the
/// sessions to finish.
pub async fn serve(pool: Arc<Pool>, listeners: Vec<Listener>, mut shutdown: watch::Receiver<bool>) {
    let mut accepts = JoinSet::new();
    let sessions = Arc::new(tokio::sync::Mutex::new(JoinSet::new()));
    for l in listeners {
        let (pool, sessions, mut stop) = (pool.clone(), sessions.clone(), shutdown.clone());
        accepts.spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = stop.changed() => return,
                    a = accept(&l) => a,
                };
                match accepted {
                    Ok((stream, peer)) => {
                        let pool = pool.clone();
                        sessions.lock().await.spawn(async move {
                            let r = match stream {
                                Stream::Tcp(s) => {
                                    let _ = s.set_nodelay(true);
                                    session::run(s, pool, &peer).await
                                }
                                Stream::Unix(s) => session::run(s, pool, &peer).await,
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
    let _ = shutdown.wait_for(|s| *s).await;
    accepts.shutdown().await;
    // Give in-flight requests a moment to complete, then drop the rest.
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
