//! The tokio edge: listeners, one task per connection, graceful shutdown.

#![cfg_attr(
    not(test),
    deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)
)]

pub mod catalog;
pub mod iopool;
pub mod session;
pub mod socket;
pub mod tls;

use crate::access::{MapStore, Peer};
use crate::admin::handle_connection;
use crate::pool::Pool;
use std::path::Path;
use std::sync::{Arc, Mutex};

pub use catalog::{AttachMap, Attached};
pub use socket::{claim_socket_path, SocketFile, SocketPathError};

/// Serve admin requests on the unix socket at `path` (mode 0600) on background threads: one
/// per connection, at most [`crate::admin::MAX_ADMIN_CONNECTIONS`] at once (more get an error
/// line and are closed). Each connection must send a request line, and take a reply, within
/// `timeout`.
pub fn spawn_admin(
    pool: Arc<Pool>,
    attach: Arc<AttachMap>,
    maps: Arc<MapStore>,
    path: &Path,
    timeout: Duration,
) -> std::io::Result<()> {
    use crate::admin::MAX_ADMIN_CONNECTIONS;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    claim_socket_path(path).map_err(std::io::Error::other)?;
    let listener = std::os::unix::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    /// Counts an admin connection as served until dropped.
    struct Active(Arc<AtomicUsize>);
    impl Drop for Active {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::AcqRel);
        }
    }
    std::thread::spawn(move || {
        let active = Arc::new(AtomicUsize::new(0));
        let (mut failed, mut refused) = (RateLog::new(), RateLog::new());
        let mut backoff = Duration::ZERO;
        for conn in listener.incoming() {
            let conn = match conn {
                Ok(c) => {
                    backoff = Duration::ZERO;
                    c
                }
                Err(e) => {
                    // Out of descriptors: back off instead of spinning.
                    if let Some(n) = failed.hit() {
                        tracing::warn!(failures = n, "admin socket: accept failed: {e}");
                    }
                    backoff =
                        (backoff * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
                    std::thread::sleep(backoff);
                    continue;
                }
            };
            if active.fetch_add(1, Ordering::AcqRel) >= MAX_ADMIN_CONNECTIONS {
                active.fetch_sub(1, Ordering::AcqRel);
                if let Some(n) = refused.hit() {
                    tracing::warn!(refused = n, "admin socket: too many connections");
                }
                crate::admin::refuse_connection(
                    conn,
                    &format!(
                        "too many admin connections (at most {MAX_ADMIN_CONNECTIONS}); try again"
                    ),
                );
                continue;
            }
            let guard = Active(active.clone());
            let (pool, attach, maps) = (pool.clone(), attach.clone(), maps.clone());
            let spawned = std::thread::Builder::new()
                .name("admin".into())
                .spawn(move || {
                    let _guard = guard;
                    let ctx = crate::admin::AdminCtx {
                        pool: &pool,
                        attach: attach.as_ref(),
                        maps: &maps,
                        who: crate::audit::Requester::socket_peer(&conn),
                    };
                    if let Err(e) = handle_connection(conn, &ctx, timeout) {
                        tracing::warn!("admin connection: {e}");
                    }
                });
            if let Err(e) = spawned {
                tracing::warn!("admin socket: cannot start a thread: {e}");
            }
        }
    });
    Ok(())
}
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

/// A bound listening socket.
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// Bounds on what clients can make the server hold (sspd's `--max-connections`,
/// `--handshake-timeout`, `--idle-timeout`, `--max-inflight-bytes`,
/// `--max-total-inflight-bytes`).
#[derive(Clone, Debug)]
pub struct Limits {
    /// NBD connections served at once; clients over the cap are refused during the handshake.
    pub max_connections: usize,
    /// A client must finish the handshake (TLS included) within this time, else it is closed.
    pub handshake_timeout: Duration,
    /// Close an attached client that sent no request and has no request outstanding for this
    /// long (off by default).
    pub idle_timeout: Option<Duration>,
    /// Bytes of replies and request payloads one connection may hold in memory at once; when
    /// they are used up the server stops reading that client's requests until its replies are
    /// sent. A single larger request is still served (it takes the whole budget).
    pub max_inflight_bytes: u64,
    /// The same bound over all connections together.
    pub max_total_inflight_bytes: u64,
    /// When the server stops, close each session once the requests it is running are answered,
    /// leaving later ones unanswered, instead of answering them with `ESHUTDOWN`: the listening
    /// socket outlives this server (socket activation), so clients that reconnect (qemu's
    /// `reconnect-delay`) resend them to the next one and see a pause, not an error.
    pub handover_on_stop: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1000,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: None,
            max_inflight_bytes: 64 << 20,
            max_total_inflight_bytes: 1 << 30,
            handover_on_stop: false,
        }
    }
}

/// File descriptors kept free of NBD clients: the admin socket and its connections, the
/// metrics listener, pool files opened later, and clients being refused.
pub const FD_RESERVE: u64 = 64 + MAX_REFUSING as u64 + crate::admin::MAX_ADMIN_CONNECTIONS as u64;
/// Clients over the connection cap being answered with a refusal at once; beyond this they
/// are closed without one.
const MAX_REFUSING: usize = 16;
/// How long a refused client has to read its refusal.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(1);
/// Repeated warnings (refusals, accept failures) are logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Raise the soft RLIMIT_NOFILE to the hard one; the resulting soft limit.
pub fn raise_nofile_limit() -> std::io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: `raised` is a valid rlimit; raising the soft limit up to the hard one is
        // always allowed.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim = raised;
        } else {
            tracing::warn!(
                "cannot raise the open file limit: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(lim.rlim_cur)
}

/// The connection cap that fits the open file limit `nofile`: `wanted`, or fewer when
/// `nofile` minus the descriptors open now and [`FD_RESERVE`] leaves less room.
pub fn connections_for_fd_limit(wanted: usize, nofile: u64) -> usize {
    let open = std::fs::read_dir("/proc/self/fd").map_or(32, |d| d.count() as u64);
    let room = nofile.saturating_sub(open + FD_RESERVE).max(1);
    let room = usize::try_from(room).unwrap_or(usize::MAX);
    if wanted > room {
        tracing::warn!(
            wanted,
            room,
            nofile,
            "the open file limit leaves room for {room} connections: --max-connections lowered"
        );
    }
    wanted.min(room)
}

/// A warning that repeats (one per refused client, one per failed accept) is logged once per
/// [`LOG_EVERY`] with the number of occurrences since the last time.
struct RateLog {
    last: Option<Instant>,
    since: u64,
}

impl RateLog {
    fn new() -> Self {
        RateLog {
            last: None,
            since: 0,
        }
    }

    /// Count one occurrence; `Some(count)` when it is time to log.
    fn hit(&mut self) -> Option<u64> {
        self.since += 1;
        let now = Instant::now();
        if self.last.is_some_and(|t| now.duration_since(t) < LOG_EVERY) {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.since))
    }
}

/// Bytes in flight over all connections, counted in KiB (see [`Limits::max_total_inflight_bytes`]).
///
/// Connections wait for it without queueing (`freed` wakes them to try again): a connection
/// waiting for a large amount must not hold up the small requests of others, as a fair
/// semaphore's queue would.
pub struct InflightBudget {
    pub(crate) sem: Arc<Semaphore>,
    pub(crate) kib: u32,
    pub(crate) freed: Arc<tokio::sync::Notify>,
}

impl InflightBudget {
    pub fn new(bytes: u64) -> Self {
        let kib = u32::try_from(bytes.div_ceil(1024).clamp(1, u64::from(u32::MAX >> 3)))
            .unwrap_or(u32::MAX >> 3);
        InflightBudget {
            sem: Arc::new(Semaphore::new(kib as usize)),
            kib,
            freed: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// KiB available now (for tests and metrics).
    pub fn available_kib(&self) -> usize {
        self.sem.available_permits()
    }
}

/// What every session of a server shares.
pub struct Shared {
    pub pool: Arc<Pool>,
    pub attach: Arc<AttachMap>,
    pub maps: Arc<MapStore>,
    pub tls: Arc<tls::TlsPolicy>,
    /// Turns true when the server stops: new requests get ESHUTDOWN.
    pub stopping: watch::Receiver<bool>,
    pub limits: Limits,
    /// Shared by all connections: [`Limits::max_total_inflight_bytes`].
    pub inflight: InflightBudget,
    /// The threads that run every pool call of the data path (sspd's `--io-threads`).
    pub io: Arc<iopool::IoPool>,
}

/// An accepted client on its way to a session task.
enum Job {
    Serve(Stream, String, OwnedSemaphorePermit, InHandshake),
    Refuse(Stream, OwnedSemaphorePermit),
}

/// How long a newcomer at the connection cap waits for the slot of the client it evicted.
const EVICTION_WAIT: Duration = Duration::from_millis(200);

/// Clients still in their handshake, oldest first. At the connection cap the oldest of them is
/// closed to make room for a newcomer.
#[derive(Default)]
pub struct Handshaking {
    next: std::sync::atomic::AtomicU64,
    waiting: Mutex<std::collections::BTreeMap<u64, Arc<tokio::sync::Notify>>>,
}

impl Handshaking {
    fn enter(self: &Arc<Self>) -> InHandshake {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let evicted = Arc::new(tokio::sync::Notify::new());
        self.waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, evicted.clone());
        InHandshake {
            set: self.clone(),
            id,
            evicted,
        }
    }

    /// Tell the client longest in its handshake to go; `false` when none is.
    fn evict_oldest(&self) -> bool {
        let oldest = self
            .waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop_first();
        // `notify_one` keeps the wake-up for a session not yet waiting on it.
        oldest.map(|(_, n)| n.notify_one()).is_some()
    }
}

/// A client counted as in its handshake until dropped (negotiated, or gone).
pub struct InHandshake {
    set: Arc<Handshaking>,
    id: u64,
    evicted: Arc<tokio::sync::Notify>,
}

impl InHandshake {
    /// Notified when the client is to make room for a newcomer.
    pub(crate) fn evicted(&self) -> Arc<tokio::sync::Notify> {
        self.evicted.clone()
    }
}

impl Drop for InHandshake {
    fn drop(&mut self) {
        self.set
            .waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

/// Accept clients on every listener until `shared.stopping` turns true, then wait (bounded) for
/// the sessions to finish their requests. At most [`Limits::max_connections`] clients are served
/// at once; finished sessions are reaped as they end.
pub async fn serve(shared: Arc<Shared>, listeners: Vec<Listener>) {
    let cap = shared.limits.max_connections.max(1);
    let conns = Arc::new(Semaphore::new(cap));
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    let refused_log = Arc::new(Mutex::new(RateLog::new()));
    let handshaking = Arc::new(Handshaking::default());
    let (jobs_tx, mut jobs) = mpsc::channel::<Job>(64);
    let mut accepts = JoinSet::new();
    for l in listeners {
        let (conns, refusing, refused_log) = (conns.clone(), refusing.clone(), refused_log.clone());
        let handshaking = handshaking.clone();
        let jobs_tx = jobs_tx.clone();
        let mut stop = shared.stopping.clone();
        accepts.spawn(async move {
            let mut failed = RateLog::new();
            let mut backoff = Duration::ZERO;
            loop {
                let accepted = tokio::select! {
                    _ = stop.changed() => return,
                    a = accept(&l) => a,
                };
                let job = match accepted {
                    Ok((stream, peer)) => {
                        backoff = Duration::ZERO;
                        let mut permit = conns.clone().try_acquire_owned().ok();
                        if permit.is_none() && handshaking.evict_oldest() {
                            // At the cap: the client longest in its handshake makes room (a
                            // real handshake takes milliseconds; a flood of silent connections
                            // must not lock everyone out until the handshake timeout).
                            permit =
                                tokio::time::timeout(EVICTION_WAIT, conns.clone().acquire_owned())
                                    .await
                                    .ok()
                                    .and_then(|p| p.ok());
                        }
                        match permit {
                            Some(permit) => Job::Serve(stream, peer, permit, handshaking.enter()),
                            None => {
                                let n = refused_log.lock().unwrap_or_else(|p| p.into_inner()).hit();
                                if let Some(n) = n {
                                    tracing::warn!(
                                        peer,
                                        refused = n,
                                        "at the connection limit ({cap}): refusing new clients"
                                    );
                                }
                                crate::metrics::connection_refused();
                                match refusing.clone().try_acquire_owned() {
                                    Ok(permit) => Job::Refuse(stream, permit),
                                    // Too many refusals at once: close without one.
                                    Err(_) => continue,
                                }
                            }
                        }
                    }
                    Err(e) => {
                        // Out of descriptors or memory: retrying at once only spins. Back off
                        // (the client waits in the listen backlog) and say so now and then.
                        let resource = matches!(
                            e.raw_os_error(),
                            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                        );
                        if let Some(n) = failed.hit() {
                            tracing::warn!(failures = n, "accept failed: {e}");
                        }
                        backoff = if resource {
                            (backoff * 2).clamp(Duration::from_millis(10), Duration::from_secs(1))
                        } else {
                            Duration::from_millis(1)
                        };
                        tokio::time::sleep(backoff).await;
                        continue;
                    }
                };
                if jobs_tx.send(job).await.is_err() {
                    return;
                }
            }
        });
    }
    drop(jobs_tx);
    let mut sessions = JoinSet::new();
    let mut stopping = shared.stopping.clone();
    loop {
        tokio::select! {
            _ = stopping.wait_for(|s| *s) => break,
            Some(job) = jobs.recv() => {
                let shared = shared.clone();
                sessions.spawn(async move {
                    match job {
                        Job::Serve(stream, peer, _permit, hs) => serve_one(stream, shared, peer, hs).await,
                        Job::Refuse(stream, _permit) => {
                            let why = format!("too many connections (limit {cap}); try again later");
                            let _ = tokio::time::timeout(
                                REFUSAL_TIMEOUT,
                                refuse_one(stream, why),
                            )
                            .await;
                        }
                    }
                });
            }
            // Reap finished sessions as they end (their tasks' memory goes with them).
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
        }
    }
    accepts.shutdown().await;
    // Give in-flight requests a moment to complete (later ones get ESHUTDOWN), then drop the
    // rest.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while sessions.join_next().await.is_some() {}
    })
    .await;
    sessions.shutdown().await;
}

async fn serve_one(stream: Stream, shared: Arc<Shared>, peer: String, hs: InHandshake) {
    let r = match stream {
        Stream::Tcp(s) => {
            let _ = s.set_nodelay(true);
            let ip = s.peer_addr().map(|a| a.ip());
            let who = Peer::tcp(ip.unwrap_or([0, 0, 0, 0].into()));
            session::run(s, shared, who, &peer, hs).await
        }
        Stream::Unix(s) => {
            let uid = s.peer_cred().ok().map(|c| c.uid());
            session::run(s, shared, Peer::unix(uid), &peer, hs).await
        }
    };
    match r {
        Ok(()) => tracing::info!(peer, "client detached"),
        // Timeouts are the limits doing their job: a flood of them must not flood the log.
        Err(
            e @ (session::SessionError::HandshakeTimeout(_)
            | session::SessionError::Idle(_)
            | session::SessionError::Evicted),
        ) => {
            tracing::info!(peer, "session closed: {e}")
        }
        Err(e) => tracing::warn!(peer, "session ended: {e}"),
    }
}

async fn refuse_one(stream: Stream, why: String) {
    let _ = match stream {
        Stream::Tcp(s) => session::refuse(s, why).await,
        Stream::Unix(s) => session::refuse(s, why).await,
    };
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
