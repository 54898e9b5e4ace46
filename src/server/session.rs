//! One client connection: the handshake state machine, then the transmission loop
//! (read a request → validate → execute on the pool → reply). Generic over the byte stream, so
//! TCP, unix sockets and in-memory duplex streams all work.
//!
//! Every request runs on the I/O thread pool ([`super::iopool`]), several per hand-off; the
//! connection's task only parses, queues and replies, so it never blocks on the pool lock, a
//! device or a sync. The one exception never waits either: a read whose metadata is resident,
//! with the pool lock's shared side free and its data in memory ([`Pool::try_read`], page
//! cache via `RWF_NOWAIT`), is answered on the task, since a hand-off costs more than it.
//! Replies may come back out of order.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

use super::catalog::PoolCatalog;
use super::iopool::IoPool;
use crate::format::BLOCK_U64;
use crate::metrics::{Cmd as MetricsCmd, RequestMetrics};
use crate::nbd::proto::{
    CMD_FLAG_DF, CMD_FLAG_FUA, CMD_FLAG_NO_HOLE, CMD_FLAG_REQ_ONE, CONTEXT_BASE_ALLOCATION, EINVAL,
    EIO, ESHUTDOWN, STATE_HOLE, STATE_ZERO,
};
use crate::nbd::{
    decode_request_with_limit, encode_block_status, encode_block_status_ext, encode_error_reply,
    encode_offset_hole, encode_ok, encode_read_data_header, validate, CodecError, Command, Decoded,
    Event, Extent, ExtentExt, Handshake, Negotiated, ReplyTarget, Request, ServerConfig,
};
use crate::pool::{MapKind, Pool, PoolError};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Why a session ended abnormally (logged once; other clients are unaffected).
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("handshake: {0}")]
    Handshake(#[from] crate::nbd::HandshakeError),
    #[error("protocol: {0}")]
    Codec(#[from] CodecError),
    #[error("reply encoding: {0}")]
    Encode(#[from] crate::nbd::EncodeError),
    #[error("export {0} disappeared")]
    ExportGone(String),
    #[error("handshake not completed within {0:?}")]
    HandshakeTimeout(std::time::Duration),
    #[error("idle for {0:?}")]
    Idle(std::time::Duration),
    #[error("closed in its handshake to make room for a new client at the connection limit")]
    Evicted,
}

/// NBD errno for a pool error: [`PoolError::errno`] is the one map, onto NBD's errno set.
fn nbd_errno(e: &PoolError) -> u32 {
    u32::try_from(e.errno()).unwrap_or(EIO)
}

/// How a handshake phase ended.
enum Outcome {
    Done(Negotiated),
    StartTls,
    Closed,
}

/// Feed client bytes to the handshake until it reaches an event. With `peer`, every export or
/// session the client is refused is logged with the reason.
async fn negotiate<S>(
    s: &mut S,
    hs: &mut Handshake,
    catalog: &(dyn crate::nbd::ExportCatalog + Sync),
    peer: Option<&str>,
) -> Result<Outcome, SessionError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return Ok(Outcome::Closed); // left during the handshake
        }
        let step = hs.input(buf.get(..n).unwrap_or_default(), catalog)?;
        if let Some(peer) = peer {
            for r in crate::nbd::refusal::refusals(&step.output) {
                tracing::info!(peer, option = %r.option_name(), reason = r.reason(), detail = %r.message, "client refused");
            }
        }
        s.write_all(&step.output).await?;
        s.flush().await?;
        match step.event {
            Some(Event::Done(neg)) => return Ok(Outcome::Done(neg)),
            Some(Event::Abort) => return Ok(Outcome::Closed),
            Some(Event::StartTls) => return Ok(Outcome::StartTls),
            None => {}
        }
    }
}

/// A finished handshake: the stream to serve (plain or TLS), what was negotiated and the
/// bytes the client sent after its last option.
enum Ready<S> {
    Plain(S, Negotiated, Vec<u8>),
    Tls(Box<tokio_rustls::server::TlsStream<S>>, Negotiated, Vec<u8>),
}

/// Serve one client until it disconnects. The handshake (TLS included) must end within
/// [`super::Limits::handshake_timeout`].
pub async fn run<S>(
    s: S,
    shared: Arc<super::Shared>,
    who: crate::access::Peer,
    peer: &str,
    handshaking: super::InHandshake,
) -> Result<(), SessionError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limit = shared.limits.handshake_timeout;
    let evicted = handshaking.evicted();
    let ready = tokio::select! {
        r = tokio::time::timeout(limit, handshake(s, &shared, who, peer)) => {
            r.map_err(|_| SessionError::HandshakeTimeout(limit))??
        }
        () = evicted.notified() => return Err(SessionError::Evicted),
    };
    // Negotiated: no longer a candidate for eviction.
    drop(handshaking);
    match ready {
        None => Ok(()),
        Some(Ready::Plain(s, neg, left)) => attached(s, &shared, neg, left, peer).await,
        Some(Ready::Tls(t, neg, left)) => attached(t, &shared, neg, left, peer).await,
    }
}

/// Run the handshake; `None` when the client left or aborted.
async fn handshake<S>(
    mut s: S,
    shared: &super::Shared,
    who: crate::access::Peer,
    peer: &str,
) -> Result<Option<Ready<S>>, SessionError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut catalog = PoolCatalog {
        pool: shared.pool.clone(),
        maps: shared.maps.clone(),
        peer: who,
    };
    let cfg = ServerConfig {
        tls_available: shared.tls.available(),
        tls_required: shared.tls.required,
        ..ServerConfig::default()
    };
    let mut hs = Handshake::new(cfg);
    s.write_all(&hs.initial_output()).await?;
    match negotiate(&mut s, &mut hs, &catalog, Some(peer)).await? {
        Outcome::Closed => Ok(None),
        Outcome::Done(neg) => Ok(Some(Ready::Plain(s, neg, hs.take_leftover()))),
        Outcome::StartTls => {
            let Some(acceptor) = shared.tls.acceptor() else {
                return Ok(None);
            };
            let mut t = acceptor.accept(s).await?;
            catalog.peer.tls = super::tls::client_identity(t.get_ref().1);
            match negotiate(&mut t, &mut hs, &catalog, Some(peer)).await? {
                Outcome::Done(neg) => Ok(Some(Ready::Tls(Box::new(t), neg, hs.take_leftover()))),
                // The state machine refuses a second STARTTLS itself.
                Outcome::StartTls | Outcome::Closed => Ok(None),
            }
        }
    }
}

/// Tell a client the server will not serve it (`why`, as the error message of its options),
/// then close. The caller bounds the time this may take.
pub async fn refuse<S>(mut s: S, why: String) -> Result<(), SessionError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    /// A refused client is shown nothing.
    struct NoExports;
    impl crate::nbd::ExportCatalog for NoExports {
        fn list(&self) -> Vec<crate::nbd::ExportEntry> {
            Vec::new()
        }
        fn lookup(&self, _: &str) -> crate::nbd::Lookup {
            crate::nbd::Lookup::Refused
        }
        fn meta_contexts(&self, _: &str) -> Vec<String> {
            Vec::new()
        }
    }
    let mut hs = Handshake::new(ServerConfig {
        refusal: Some(why),
        ..ServerConfig::default()
    });
    s.write_all(&hs.initial_output()).await?;
    // The caller logs refusals at the connection limit (rate-limited).
    negotiate(&mut s, &mut hs, &NoExports, None).await?;
    s.shutdown().await?;
    Ok(())
}

async fn attached<S>(
    s: S,
    shared: &super::Shared,
    neg: Negotiated,
    leftover: Vec<u8>,
    peer: &str,
) -> Result<(), SessionError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tracing::info!(peer, export = %neg.export, mode = ?neg.reply_mode, tls = neg.tls, "client attached");
    let att = super::Attached::new(shared.attach.clone(), &neg.export, peer);
    crate::metrics::connections(1.0);
    struct Detach;
    impl Drop for Detach {
        fn drop(&mut self) {
            crate::metrics::connections(-1.0);
        }
    }
    let _detach = Detach;
    let budget = Budget::new(shared.limits.max_inflight_bytes, &shared.inflight);
    transmission(
        s,
        shared.pool.clone(),
        shared.io.clone(),
        neg,
        leftover,
        SessionEnds {
            stopping: shared.stopping.clone(),
            ended: att.ended(),
            idle_timeout: shared.limits.idle_timeout,
            handover: shared.limits.handover_on_stop,
        },
        budget,
    )
    .await
}

/// Units of work handed to I/O threads, or of replies queued for the writer, at once on one
/// connection; further requests wait (back-pressure).
const MAX_IN_FLIGHT: usize = 64;
/// Requests handed to an I/O thread together at most: more go to further threads, so a deep
/// queue of one connection still runs on several.
const JOB_REQUESTS: usize = 8;
/// Work handed to an I/O thread at once at most, in request lengths (the payload of a write,
/// the reply of a read).
const BATCH_BYTES: usize = 256 << 10;
/// Largest read tried on the connection's task ([`Pool::try_read`]: only if nothing waits).
const INLINE_READ_MAX: u64 = 1 << 20;
/// The reader asks the socket for at least this much at a time.
const READ_CHUNK: usize = 256 << 10;
/// Reply buffers kept for reuse per connection, and the largest one kept (by capacity): a
/// connection keeps at most `KEEP_BUFS * KEEP_BUF_MAX` bytes between requests, besides its
/// bytes in flight ([`Budget`]); bigger buffers go back to the allocator when sent.
const KEEP_BUFS: usize = 8;
const KEEP_BUF_MAX: usize = (4 << 20) + (128 << 10);

/// A connection's bound on the bytes it holds in flight: replies not yet sent and payloads of
/// requests queued for or running on I/O threads, counted in KiB against its own semaphore and the
/// server-wide one. The reader takes credit before it executes a request and the writer returns
/// it once the reply is sent, so a client that does not read its replies stops having its
/// requests read (back-pressure) instead of growing the server.
struct Budget {
    conn: Arc<tokio::sync::Semaphore>,
    conn_kib: u32,
    global: Arc<tokio::sync::Semaphore>,
    global_kib: u32,
    global_freed: Arc<tokio::sync::Notify>,
}

/// Credit taken from a [`Budget`]; given back when dropped.
#[derive(Default)]
struct Credit {
    conn: Option<tokio::sync::OwnedSemaphorePermit>,
    global: Option<tokio::sync::OwnedSemaphorePermit>,
    /// Wakes connections waiting for server-wide credit.
    freed: Option<Arc<tokio::sync::Notify>>,
}

impl Drop for Credit {
    fn drop(&mut self) {
        if self.global.take().is_some() {
            if let Some(f) = &self.freed {
                f.notify_waiters();
            }
        }
    }
}

impl Credit {
    /// Hold `other`'s credit too.
    fn absorb(&mut self, other: Credit) {
        fn merge(
            a: &mut Option<tokio::sync::OwnedSemaphorePermit>,
            b: Option<tokio::sync::OwnedSemaphorePermit>,
        ) {
            match (a.as_mut(), b) {
                (Some(a), Some(b)) => a.merge(b),
                (None, b) => *a = b,
                (Some(_), None) => {}
            }
        }
        let mut other = other;
        merge(&mut self.conn, other.conn.take());
        merge(&mut self.global, other.global.take());
        if self.freed.is_none() {
            self.freed = other.freed.take();
        }
    }
}

impl Budget {
    fn new(conn_bytes: u64, global: &super::InflightBudget) -> Self {
        let conn_kib = u32::try_from(conn_bytes.div_ceil(1024).clamp(1, u64::from(u32::MAX >> 3)))
            .unwrap_or(u32::MAX >> 3);
        Budget {
            conn: Arc::new(tokio::sync::Semaphore::new(conn_kib as usize)),
            conn_kib,
            global: global.sem.clone(),
            global_kib: global.kib,
            global_freed: global.freed.clone(),
        }
    }

    /// KiB charged for `bytes`: at least 1, at most the whole budget (a single request larger
    /// than the budget is still served, alone).
    fn kib(bytes: u64, cap: u32) -> u32 {
        u32::try_from(bytes.div_ceil(1024).clamp(1, u64::from(cap))).unwrap_or(cap)
    }

    fn try_take(&self, bytes: u64) -> Option<Credit> {
        let conn = self
            .conn
            .clone()
            .try_acquire_many_owned(Self::kib(bytes, self.conn_kib))
            .ok()?;
        let global = self
            .global
            .clone()
            .try_acquire_many_owned(Self::kib(bytes, self.global_kib))
            .ok()?;
        Some(Credit {
            conn: Some(conn),
            global: Some(global),
            freed: Some(self.global_freed.clone()),
        })
    }

    /// Wait until `bytes` of credit are free (the semaphores are never closed).
    async fn take(&self, bytes: u64) -> Option<Credit> {
        let conn = self
            .conn
            .clone()
            .acquire_many_owned(Self::kib(bytes, self.conn_kib))
            .await
            .ok()?;
        let kib = Self::kib(bytes, self.global_kib);
        let global = loop {
            let freed = self.global_freed.notified();
            tokio::pin!(freed);
            // Registered before trying, so a release in between is not missed.
            freed.as_mut().enable();
            match self.global.clone().try_acquire_many_owned(kib) {
                Ok(p) => break p,
                Err(tokio::sync::TryAcquireError::NoPermits) => freed.await,
                Err(tokio::sync::TryAcquireError::Closed) => return None,
            }
        };
        Some(Credit {
            conn: Some(conn),
            global: Some(global),
            freed: Some(self.global_freed.clone()),
        })
    }

    /// Nothing of this connection is in flight.
    fn idle(&self) -> bool {
        self.conn.available_permits() == self.conn_kib as usize
    }
}

/// Bytes a request holds in memory until its reply is sent: the reply (read data, extents),
/// plus its payload (copied into the job for an I/O thread).
fn inflight_bytes(req: &Request, contexts: usize) -> u64 {
    const REPLY_OVERHEAD: u64 = 1024;
    let reply = match req.command() {
        Some(Command::Read) => req.length,
        // At most one extent (16 bytes with extended headers) per block per context, for at
        // most 1 GiB (see `block_status`).
        Some(Command::BlockStatus) => {
            (req.length.min(1 << 30) / BLOCK_U64 + 1) * 16 * contexts as u64
        }
        _ => 0,
    };
    reply
        .saturating_add(req.payload_len)
        .saturating_add(REPLY_OVERHEAD)
}

/// Everything a request handler needs, shared by the connection's tasks.
struct Ctx {
    pool: Arc<Pool>,
    vol: u64,
    neg: Negotiated,
    /// Selected block-status contexts, in the order they were selected.
    contexts: Vec<(u32, MetaKind)>,
    metrics: RequestMetrics,
    /// Reply buffers handed back by the writer.
    bufs: BufPool,
}

/// Encoded replies waiting for the writer. The buffer's bytes past `len` stay initialised from
/// earlier use, so read data can land in it without zeroing the space first.
#[derive(Default)]
struct Replies {
    buf: Vec<u8>,
    len: usize,
    /// Where encoders write before their output is copied behind `len`.
    scratch: Vec<u8>,
    /// In-flight credit of the replies in `buf`, returned when they have been sent.
    credit: Credit,
    /// The connection's slot these replies hold until they have been sent.
    slot: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Replies {
    fn len(&self) -> usize {
        self.len
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    fn clear(&mut self) {
        self.len = 0;
    }

    fn bytes(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or_default()
    }

    /// Append `n` bytes for the caller to fill (with stale contents, not zeroes).
    fn grow(&mut self, n: usize) -> &mut [u8] {
        let end = self.len + n;
        if self.buf.len() < end {
            self.buf.resize(end, 0);
        }
        let at = std::mem::replace(&mut self.len, end);
        self.buf.get_mut(at..end).unwrap_or_default()
    }

    /// Append what `f` encodes (only when it succeeds).
    fn enc<E>(&mut self, f: impl FnOnce(&mut Vec<u8>) -> Result<(), E>) -> Result<(), E> {
        let mut s = std::mem::take(&mut self.scratch);
        s.clear();
        let r = f(&mut s);
        if r.is_ok() {
            self.grow(s.len()).copy_from_slice(&s);
        }
        self.scratch = s;
        r
    }
}

/// Reply buffers for reuse, so neither a reply nor the read data in it is allocated (or zeroed)
/// per request.
#[derive(Default)]
struct BufPool(std::sync::Mutex<Vec<Replies>>);

impl BufPool {
    fn get(&self) -> Replies {
        let mut l = self.0.lock().unwrap_or_else(|p| p.into_inner());
        l.pop().unwrap_or_default()
    }

    fn put(&self, mut b: Replies) {
        b.credit = Credit::default();
        b.slot = None;
        if b.buf.capacity() > KEEP_BUF_MAX || b.scratch.capacity() > KEEP_BUF_MAX {
            return;
        }
        b.clear();
        let mut l = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if l.len() < KEEP_BUFS {
            l.push(b);
        }
    }
}

/// What a selected metadata context reports.
#[derive(Clone, Copy, Debug)]
enum MetaKind {
    /// `base:allocation`: holes read as zeroes.
    Allocation,
    /// `ssp:sharing`: bit 0 set where the block is shared with another volume.
    Sharing,
    /// `ssp:changed:NAME` and `qemu:dirty-bitmap:NAME`: bit 0 set where the block differs
    /// from volume NAME (by id).
    Changed(u64),
    /// `qemu:allocation-depth`: the layer of the clone chain the block comes from.
    Depth,
}

/// What ends a session other than its client: the server stopping, the operator ending it
/// (shrink, rollback, removal), or the client idling past the idle timeout.
struct SessionEnds {
    stopping: tokio::sync::watch::Receiver<bool>,
    ended: tokio::sync::watch::Receiver<bool>,
    idle_timeout: Option<std::time::Duration>,
    /// [`super::Limits::handover_on_stop`].
    handover: bool,
}

/// Read requests in order and hand them, several at a time, to the I/O threads
/// ([`super::iopool`]), which run them and send their replies to the writer task; the
/// connection's task only parses, queues and replies. Replies may therefore come back out of
/// order; each is sent as one unit.
async fn transmission<S>(
    s: S,
    pool: Arc<Pool>,
    io: Arc<IoPool>,
    neg: Negotiated,
    mut inbuf: Vec<u8>,
    ends: SessionEnds,
    budget: Budget,
) -> Result<(), SessionError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let SessionEnds {
        mut stopping,
        mut ended,
        idle_timeout,
        handover,
    } = ends;
    let vol = pool
        .lu_id(&neg.export)
        .map_err(|_| SessionError::ExportGone(neg.export.clone()))?;
    let extended = neg.reply_mode.extended();
    let max = u64::from(neg.max_payload);
    let contexts = neg
        .meta_contexts
        .iter()
        .filter_map(|(id, n)| {
            let kind = if n == CONTEXT_BASE_ALLOCATION {
                MetaKind::Allocation
            } else if n == super::catalog::CONTEXT_SHARING {
                MetaKind::Sharing
            } else if n == super::catalog::CONTEXT_QEMU_DEPTH {
                MetaKind::Depth
            } else {
                let base = n
                    .strip_prefix(super::catalog::CONTEXT_CHANGED)
                    .or_else(|| n.strip_prefix(super::catalog::CONTEXT_QEMU_BITMAP))?;
                MetaKind::Changed(pool.lu_id(base).ok()?)
            };
            Some((*id, kind))
        })
        .collect();
    let metrics = RequestMetrics::new(&neg.export);
    let ctx = Arc::new(Ctx {
        pool,
        vol,
        neg,
        contexts,
        metrics,
        bufs: BufPool::default(),
    });
    let (mut rd, mut wr) = tokio::io::split(s);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Replies>(MAX_IN_FLIGHT);
    let wctx = ctx.clone();
    let writer = tokio::spawn(async move {
        while let Some(replies) = rx.recv().await {
            match idle_timeout {
                None => wr.write_all(replies.bytes()).await?,
                // A client that takes none of its replies for that long is idle too (it would
                // hold its bytes in flight for ever); one that reads slowly is not.
                Some(limit) => {
                    for part in replies.bytes().chunks(READ_CHUNK) {
                        tokio::time::timeout(limit, wr.write_all(part))
                            .await
                            .map_err(|_| {
                                std::io::Error::new(
                                    std::io::ErrorKind::TimedOut,
                                    format!("the client read none of its replies for {limit:?}"),
                                )
                            })??;
                    }
                }
            }
            wctx.bufs.put(replies);
        }
        wr.flush().await
    });
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    // Replies the reader makes itself (refusals while stopping), not yet handed to the writer.
    let mut batch = ctx.bufs.get();
    // Requests decoded but not yet handed to an I/O thread.
    let mut job = Job::default();
    // `inbuf[pos..]` is received but not yet decoded.
    let mut pos = 0usize;
    let result: Result<(), SessionError> = 'conn: loop {
        // Queue every complete request received so far.
        let need = loop {
            let avail = inbuf.get(pos..).unwrap_or_default();
            let (req, hlen) = match decode_request_with_limit(avail, extended, max) {
                Ok(Decoded::Complete { value, consumed }) => (value, consumed),
                Ok(Decoded::Incomplete { need }) => break need,
                Err(e) => break 'conn Err(e.into()),
            };
            let plen = req.payload_len as usize;
            if avail.len() < hlen + plen {
                break hlen + plen - avail.len();
            }
            let payload = avail.get(hlen..hlen + plen).unwrap_or_default();
            pos += hlen + plen;
            if tx.is_closed() {
                // The writer is gone (the client left or stopped reading past the idle
                // timeout): nobody would see the replies of the requests still received.
                break 'conn Ok(());
            }
            if req.command() == Some(Command::Disc) {
                // Let in-flight requests finish, make their writes durable, then close.
                if !hand_over(&ctx, &io, &mut job, &mut batch, &slots, &tx).await {
                    break 'conn Ok(());
                }
                let _all = slots.acquire_many(MAX_IN_FLIGHT as u32).await;
                let p = ctx.pool.clone();
                let _ = io.run(move || p.flush()).await;
                break 'conn Ok(());
            }
            if handover && *stopping.borrow() {
                // Handing over to the next server: this request and those after it stay
                // unanswered; the client resends them when it reconnects.
                tracing::info!(export = %ctx.neg.export, "session closed for the next server");
                break 'conn Ok(());
            }
            if *stopping.borrow() {
                // The server is stopping: refuse new work, let the client disconnect.
                let target = ReplyTarget::new(ctx.neg.reply_mode, &req);
                batch.enc(|v| {
                    encode_error_reply(v, &target, ESHUTDOWN, "server is shutting down")
                })?;
                continue;
            }
            let want = inflight_bytes(&req, ctx.contexts.len());
            let credit = match budget.try_take(want) {
                Some(c) => c,
                None => {
                    // Out of credit: hand over what is collected (its credit comes back once
                    // its replies are sent), then wait; meanwhile no more requests are read.
                    if !hand_over(&ctx, &io, &mut job, &mut batch, &slots, &tx).await {
                        break 'conn Ok(());
                    }
                    match budget.take(want).await {
                        Some(c) => c,
                        None => break 'conn Ok(()),
                    }
                }
            };
            // A read that needs no wait (metadata resident, pool lock free, data in the page
            // cache or a stream buffer) is answered here: handing it to a thread would cost
            // more than the read. Anything that would wait goes to the I/O threads.
            if req.command() == Some(Command::Read)
                && req.length <= INLINE_READ_MAX
                && execute(&ctx, &req, payload, &mut batch, true).is_some()
            {
                batch.credit.absorb(credit);
                if batch.len() >= BATCH_BYTES
                    && !hand_over(&ctx, &io, &mut job, &mut batch, &slots, &tx).await
                {
                    break 'conn Ok(());
                }
                continue;
            }
            job.push(req, payload, credit);
            if job.reqs.len() >= JOB_REQUESTS || job.bytes >= BATCH_BYTES {
                let full = std::mem::take(&mut job);
                if !submit(&ctx, &io, full, &mut batch, &slots, &tx).await {
                    break 'conn Ok(());
                }
            }
        };
        // Out of requests: hand everything over before waiting for the client.
        if !hand_over(&ctx, &io, &mut job, &mut batch, &slots, &tx).await {
            break Ok(());
        }
        inbuf.drain(..pos);
        pos = 0;
        inbuf.reserve(need.max(READ_CHUNK));
        let got = loop {
            let read = async {
                match idle_timeout {
                    None => Ok(rd.read_buf(&mut inbuf).await),
                    // `read_buf` reads nothing when cancelled, so a timeout loses no bytes.
                    Some(limit) => tokio::time::timeout(limit, rd.read_buf(&mut inbuf)).await,
                }
            };
            tokio::select! {
                biased;
                // Ended by the operator (shrink, rollback, removal): no more requests are read;
                // those in flight finish and get their replies, then the connection closes.
                Ok(_) = ended.wait_for(|e| *e) => {
                    tracing::info!(export = %ctx.neg.export, "session ended by the operator");
                    break 'conn Ok(());
                }
                // Handing over to the next server: as above, then close.
                Ok(_) = stopping.wait_for(|s| *s), if handover => {
                    tracing::info!(export = %ctx.neg.export, "session closed for the next server");
                    break 'conn Ok(());
                }
                r = read => match r {
                    Ok(r) => break r,
                    // Idle: no bytes for the limit (a request cut short counts too) and no
                    // request outstanding.
                    Err(_) if budget.idle() => {
                        break 'conn Err(SessionError::Idle(idle_timeout.unwrap_or_default()))
                    }
                    Err(_) => {}
                },
            }
        };
        match got {
            // The client went away (between requests, or mid-write: nothing was applied).
            Ok(0) => break Ok(()),
            Ok(_) => {}
            Err(e) => break Err(e.into()),
        }
    };
    let _ = hand_over(&ctx, &io, &mut job, &mut batch, &slots, &tx).await;
    finish(tx, writer, result).await
}

/// Requests handed to an I/O thread together: run in order there, their replies sent to the
/// writer as one unit. Several requests per hand-off keep the cost of waking a thread (and the
/// writer) per request away.
#[derive(Default)]
struct Job {
    /// Each request with the range of its payload in `data`.
    reqs: Vec<(Request, std::ops::Range<usize>)>,
    data: Vec<u8>,
    /// In-flight credit of the requests (payloads and replies).
    credit: Credit,
    /// Request lengths.
    bytes: usize,
}

impl Job {
    fn push(&mut self, req: Request, payload: &[u8], credit: Credit) {
        let at = self.data.len();
        self.data.extend_from_slice(payload);
        self.reqs.push((req, at..self.data.len()));
        self.credit.absorb(credit);
        self.bytes = self
            .bytes
            .saturating_add(usize::try_from(req.length).unwrap_or(usize::MAX));
    }
}

/// Hand the pending job (if any) to an I/O thread and the reader's own replies (if any) to the
/// writer. `false`: the client is gone.
async fn hand_over(
    ctx: &Arc<Ctx>,
    io: &Arc<IoPool>,
    job: &mut Job,
    batch: &mut Replies,
    slots: &Arc<tokio::sync::Semaphore>,
    tx: &tokio::sync::mpsc::Sender<Replies>,
) -> bool {
    if !job.reqs.is_empty() {
        let j = std::mem::take(job);
        if !submit(ctx, io, j, batch, slots, tx).await {
            return false;
        }
    }
    if !batch.is_empty() {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return false;
        };
        let mut full = std::mem::replace(batch, ctx.bufs.get());
        full.slot = Some(slot);
        if tx.send(full).await.is_err() {
            return false;
        }
    }
    true
}

/// Give `job` to an I/O thread, which sends its replies to the writer. Each unit of replies
/// holds a slot until the writer has sent it, so at most [`MAX_IN_FLIGHT`] are queued and an
/// I/O thread never waits for the writer. `false`: the client is gone.
async fn submit(
    ctx: &Arc<Ctx>,
    io: &Arc<IoPool>,
    job: Job,
    batch: &mut Replies,
    slots: &Arc<tokio::sync::Semaphore>,
    tx: &tokio::sync::mpsc::Sender<Replies>,
) -> bool {
    let slot = match slots.clone().try_acquire_owned() {
        Ok(slot) => slot,
        Err(_) => {
            // Full: the reader's own replies must not wait for a free slot.
            if !batch.is_empty() {
                let full = std::mem::replace(batch, ctx.bufs.get());
                if tx.send(full).await.is_err() {
                    return false;
                }
            }
            match slots.clone().acquire_owned().await {
                Ok(slot) => slot,
                Err(_) => return false,
            }
        }
    };
    let (ctx, tx) = (ctx.clone(), tx.clone());
    io.submit(move || {
        if tx.is_closed() {
            // The client is gone: no work (and no reply buffer) for nobody.
            return;
        }
        let Job {
            reqs, data, credit, ..
        } = job;
        let mut out = ctx.bufs.get();
        out.credit = credit;
        out.slot = Some(slot);
        // The result of the flush just executed, while only flushes follow it.
        let mut flushed = None;
        for (req, range) in &reqs {
            let flush = req.command() == Some(Command::Flush);
            if let (true, Some(errno)) = (flush, flushed) {
                repeat_flush(&ctx, req, errno, &mut out);
                continue;
            }
            let payload = data.get(range.clone()).unwrap_or_default();
            let mark = out.len();
            // Not inline: every request runs (`Some`).
            let run = std::panic::AssertUnwindSafe(|| {
                execute(&ctx, req, payload, &mut out, false).unwrap_or(EIO)
            });
            let errno = std::panic::catch_unwind(run).unwrap_or_else(|_| {
                // Every request gets an answer: the client must not wait forever.
                out.truncate(mark);
                let target = ReplyTarget::new(ctx.neg.reply_mode, req);
                let _ =
                    out.enc(|v| encode_error_reply(v, &target, EIO, "request handler panicked"));
                EIO
            });
            flushed = flush.then_some(errno);
        }
        // Never waits: this unit holds one of the channel's slots.
        let _ = tx.blocking_send(out);
    });
    true
}

/// Close the reply channel and wait for the writer to send what is queued.
async fn finish(
    tx: tokio::sync::mpsc::Sender<Replies>,
    writer: tokio::task::JoinHandle<std::io::Result<()>>,
    result: Result<(), SessionError>,
) -> Result<(), SessionError> {
    drop(tx);
    // Requests still running on I/O threads hold their own senders; the writer ends when
    // the last one is done.
    let w = writer
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
    result?;
    w.map_err(SessionError::Io)
}

/// The metrics label of a command.
fn metrics_cmd(cmd: Option<Command>) -> MetricsCmd {
    match cmd {
        Some(Command::Read) => MetricsCmd::Read,
        Some(Command::Write) => MetricsCmd::Write,
        Some(Command::Flush) => MetricsCmd::Flush,
        Some(Command::Trim) => MetricsCmd::Trim,
        Some(Command::Cache) => MetricsCmd::Cache,
        Some(Command::WriteZeroes) => MetricsCmd::WriteZeroes,
        Some(Command::BlockStatus) => MetricsCmd::BlockStatus,
        _ => MetricsCmd::Other,
    }
}

/// Execute one request on the calling thread, append its whole reply to `out` and account it in
/// the metrics; the NBD errno it got (0 for success). `inline`: on the connection's task, where
/// a read that would wait is not run (`None`, nothing appended).
fn execute(
    ctx: &Ctx,
    req: &Request,
    payload: &[u8],
    out: &mut Replies,
    inline: bool,
) -> Option<u32> {
    let start = std::time::Instant::now();
    let mark = out.len();
    let target = ReplyTarget::new(ctx.neg.reply_mode, req);
    let errno = match run_request(ctx, req, &target, payload, out, inline) {
        Ok(Some(errno)) => errno,
        Ok(None) => {
            out.truncate(mark);
            return None;
        }
        Err(e) => {
            // Every request gets an answer: the client must not wait forever.
            tracing::warn!("request failed: {e}");
            out.truncate(mark);
            let _ = out.enc(|v| encode_error_reply(v, &target, EIO, &e.to_string()));
            EIO
        }
    };
    let elapsed = start.elapsed();
    let cmd = metrics_cmd(req.command());
    let bytes = match cmd {
        MetricsCmd::Read | MetricsCmd::Write if errno == 0 => req.length,
        _ => 0,
    };
    ctx.metrics.record(cmd, bytes, elapsed.as_secs_f64(), errno);
    Some(errno)
}

/// Answer a FLUSH that came in together with the one just executed, with nothing between them:
/// that flush started after both arrived, so it covered every write this one must cover.
fn repeat_flush(ctx: &Ctx, req: &Request, errno: u32, out: &mut Replies) {
    let target = ReplyTarget::new(ctx.neg.reply_mode, req);
    let _ = if errno == 0 {
        out.enc(|v| encode_ok(v, &target))
    } else {
        out.enc(|v| encode_error_reply(v, &target, errno, "flush failed"))
    };
    ctx.metrics.record(MetricsCmd::Flush, 0, 0.0, errno);
}

/// Validate and execute one request, appending its reply to `out`; the NBD errno it got (0 for
/// success), or `None` when `inline` and the request is a read that would wait.
fn run_request(
    ctx: &Ctx,
    req: &Request,
    target: &ReplyTarget,
    payload: &[u8],
    out: &mut Replies,
    inline: bool,
) -> Result<Option<u32>, SessionError> {
    let (pool, vol, neg) = (&ctx.pool, ctx.vol, &ctx.neg);
    // Size as of now: LUs can be resized while attached. Inline, not even this may wait.
    let size = if inline {
        match pool.try_lu_size(vol) {
            Some(r) => r,
            None => return Ok(None),
        }
    } else {
        pool.lu_size(vol)
    }
    .map_err(|_| SessionError::ExportGone(neg.export.clone()))?;
    if let Err(e) = validate(req, size, neg) {
        tracing::debug!(?req, e, "request refused");
        out.enc(|v| encode_error_reply(v, target, e, "invalid request"))?;
        return Ok(Some(e));
    }
    let mark = out.len();
    let fua = req.has_flag(CMD_FLAG_FUA);
    let (off, len) = (req.offset, req.length);
    let r = match req.command() {
        Some(Command::Read) => match read(pool, vol, req, target, out, inline)? {
            Ok(false) => return Ok(None),
            r => r.map(|_| ()),
        },
        Some(Command::BlockStatus) if ctx.contexts.is_empty() => {
            out.enc(|v| encode_error_reply(v, target, EINVAL, "no metadata context"))?;
            return Ok(Some(EINVAL));
        }
        Some(Command::BlockStatus) => {
            block_status(pool, vol, req, target, &ctx.contexts, size, out)?
        }
        Some(cmd) => {
            let r = match cmd {
                Command::Write => pool.write(vol, off, payload, fua),
                Command::Flush => pool.flush(),
                Command::Trim => {
                    pool.trim(vol, off, len)
                        .and_then(|_| if fua { pool.flush() } else { Ok(()) })
                }
                // NO_HOLE asks for allocated zeroes (zero map entries: metadata only);
                // otherwise zero ranges become holes. Neither uses data space.
                Command::WriteZeroes if req.has_flag(CMD_FLAG_NO_HOLE) => {
                    pool.write_zeroes_allocated(vol, off, len, fua)
                }
                Command::WriteZeroes => pool.write_zeroes(vol, off, len, fua),
                // Everything is served from one shared cache: nothing to prefetch.
                Command::Cache => Ok(()),
                _ => Err(PoolError::Invalid("unsupported command".into())),
            };
            if r.is_ok() {
                out.enc(|v| encode_ok(v, target))?;
            }
            r
        }
        None => {
            out.enc(|v| encode_error_reply(v, target, EINVAL, "unknown command"))?;
            return Ok(Some(EINVAL));
        }
    };
    match r {
        Ok(()) => Ok(Some(0)),
        Err(e) => {
            out.truncate(mark);
            reply_error(out, target, &e)?;
            Ok(Some(nbd_errno(&e)))
        }
    }
}

/// A read's reply: the data goes straight from the pool into `out`, behind its header.
///
/// With structured replies (and no DF), unmapped ranges of a read spanning several blocks go
/// back as hole chunks: no zeroes are read, copied or sent for them. A read within one block is
/// sent as data either way (an unmapped block reads as zeroes), which saves looking its mapping
/// up twice.
///
/// `inline`: only if nothing has to wait (`Ok(false)`: it would, and `out` holds a partial reply
/// for the caller to drop).
fn read(
    pool: &Pool,
    vol: u64,
    req: &Request,
    target: &ReplyTarget,
    out: &mut Replies,
    inline: bool,
) -> Result<Result<bool, PoolError>, SessionError> {
    let (off, len) = (req.offset, req.length);
    if len == 0 {
        out.enc(|v| encode_ok(v, target))?;
        return Ok(Ok(true));
    }
    let one_block = off / BLOCK_U64 == (off + len - 1) / BLOCK_U64;
    if !target.mode.chunks() || req.has_flag(CMD_FLAG_DF) || one_block {
        return read_data(pool, vol, target, off, len, true, out, inline);
    }
    let ext = match if inline {
        pool.try_extents(vol, off, len)
    } else {
        pool.extents(vol, off, len).map(Some)
    } {
        Ok(Some(e)) => e,
        Ok(None) => return Ok(Ok(false)),
        Err(e) => return Ok(Err(e)),
    };
    let Some(last) = ext.len().checked_sub(1) else {
        out.enc(|v| encode_ok(v, target))?;
        return Ok(Ok(true));
    };
    for (i, &(start, n, mapped)) in ext.iter().enumerate() {
        if mapped {
            match read_data(pool, vol, target, start, n, i == last, out, inline)? {
                Ok(true) => {}
                r => return Ok(r),
            }
        } else {
            out.enc(|v| encode_offset_hole(v, target, start, n as u32, i == last))?;
        }
    }
    Ok(Ok(true))
}

/// Append a data chunk (or simple reply) header and `len` bytes read at `off`; with `inline`
/// only if nothing has to wait (`Ok(false)` otherwise).
#[allow(clippy::too_many_arguments)]
fn read_data(
    pool: &Pool,
    vol: u64,
    target: &ReplyTarget,
    off: u64,
    len: u64,
    done: bool,
    out: &mut Replies,
    inline: bool,
) -> Result<Result<bool, PoolError>, SessionError> {
    out.enc(|v| encode_read_data_header(v, target, off, len, done))?;
    let buf = out.grow(len as usize);
    Ok(if inline {
        pool.try_read(vol, off, buf)
    } else {
        pool.read(vol, off, buf).map(|()| true)
    })
}

fn reply_error(out: &mut Replies, target: &ReplyTarget, e: &PoolError) -> Result<(), SessionError> {
    tracing::warn!("request failed: {e}");
    out.enc(|v| encode_error_reply(v, target, nbd_errno(e), &e.to_string()))?;
    Ok(())
}

/// Block status for every selected context; an error from the pool is returned for the caller
/// to reply with.
fn block_status(
    pool: &Pool,
    vol: u64,
    req: &Request,
    target: &ReplyTarget,
    contexts: &[(u32, MetaKind)],
    size: u64,
    out: &mut Replies,
) -> Result<Result<(), PoolError>, SessionError> {
    // Answer at most 1 GiB per request (sharing: 64 MiB); the client asks again for the rest.
    let cap = if contexts
        .iter()
        .any(|(_, k)| !matches!(k, MetaKind::Allocation))
    {
        64 << 20
    } else {
        1 << 30
    };
    let len = req.length.min(size - req.offset).min(cap);
    let off = req.offset;
    let all = contexts
        .iter()
        .map(|&(id, k)| {
            Ok((
                id,
                k,
                match k {
                    // A hole is HOLE|ZERO, allocated zeroes ZERO alone, data neither.
                    MetaKind::Allocation => pool
                        .allocation(vol, off, len)?
                        .into_iter()
                        .map(|(s, l, kind)| {
                            let st = match kind {
                                MapKind::Hole => STATE_HOLE | STATE_ZERO,
                                MapKind::Zero => STATE_ZERO,
                                MapKind::Data => 0,
                            };
                            (s, l, st)
                        })
                        .collect(),
                    MetaKind::Sharing => flag_runs(pool.shared_extents(vol, off, len)?),
                    MetaKind::Changed(base) => {
                        flag_runs(pool.changed_extents(vol, base, off, len)?)
                    }
                    MetaKind::Depth => pool.allocation_depth(vol, off, len)?,
                },
            ))
        })
        .collect::<Result<Vec<_>, PoolError>>();
    let all = match all {
        Ok(e) => e,
        Err(e) => return Ok(Err(e)),
    };
    let last = all.len() - 1;
    for (i, (id, _, mut ext)) in all.into_iter().enumerate() {
        if req.has_flag(CMD_FLAG_REQ_ONE) {
            ext.truncate(1);
        }
        out.enc(|v| encode_extents(v, target, id, &ext, i == last))?;
    }
    Ok(Ok(()))
}

/// Runs with a property (`ssp:` contexts) as runs with status bit 0.
fn flag_runs(ext: Vec<(u64, u64, bool)>) -> Vec<(u64, u64, u32)> {
    ext.into_iter()
        .map(|(s, l, m)| (s, l, u32::from(m)))
        .collect()
}

fn encode_extents(
    out: &mut Vec<u8>,
    target: &ReplyTarget,
    ctx: u32,
    ext: &[(u64, u64, u32)],
    done: bool,
) -> Result<(), SessionError> {
    if target.mode.extended() {
        let e: Vec<ExtentExt> = ext
            .iter()
            .map(|&(_, l, st)| ExtentExt {
                length: l,
                status: u64::from(st),
            })
            .collect();
        encode_block_status_ext(out, target, ctx, &e, done)?;
    } else {
        let e: Vec<Extent> = ext
            .iter()
            .map(|&(_, l, st)| Extent {
                length: l as u32,
                flags: st,
            })
            .collect();
        encode_block_status(out, target, ctx, &e, done)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn budgets_bound_bytes_in_flight_and_serve_oversize_requests_alone() {
        let global = super::super::InflightBudget::new(256 << 10);
        let b = Budget::new(64 << 10, &global);
        // Charged in KiB, at least 1.
        let small = b.try_take(1).unwrap();
        assert_eq!(b.conn.available_permits(), 63);
        assert!(!b.idle());
        drop(small);
        assert!(b.idle());
        // A request larger than the connection's budget takes all of it, and waits for all of it.
        let a = b.try_take(32 << 10).unwrap();
        assert!(b.try_take(1 << 20).is_none());
        let waiter = tokio::time::timeout(Duration::from_millis(50), b.take(1 << 20));
        assert!(waiter.await.is_err(), "granted while credit was out");
        drop(a);
        let all = b.take(1 << 20).await.unwrap();
        assert_eq!(b.conn.available_permits(), 0);
        // The server-wide budget is charged the request's real size (capped by that budget).
        assert_eq!(global.available_kib(), 0);
        // Merged credit goes back as a whole.
        let mut c = Credit::default();
        c.absorb(all);
        drop(c);
        assert!(b.idle());
        assert_eq!(global.available_kib(), 256);
    }

    #[tokio::test]
    async fn a_large_waiter_for_server_wide_credit_does_not_block_small_requests() {
        let global = super::super::InflightBudget::new(200 << 10);
        let (a, b) = (
            Arc::new(Budget::new(1 << 30, &global)),
            Budget::new(1 << 30, &global),
        );
        let held = a.try_take(150 << 10).unwrap();
        // `a` waits for more than is left...
        let a2 = a.clone();
        let big = tokio::spawn(async move { a2.take(100 << 10).await.map(|_| ()) });
        tokio::task::yield_now().await;
        // ...while `b`'s small request is served at once.
        let small = tokio::time::timeout(Duration::from_secs(1), b.take(4096)).await;
        assert!(small.unwrap().is_some());
        // Once credit comes back, the large one is served too.
        drop(held);
        tokio::time::timeout(Duration::from_secs(1), big)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }

    #[test]
    fn replies_reuse_initialised_space() {
        let mut r = Replies::default();
        r.enc(|v| {
            v.extend_from_slice(b"head");
            Ok::<(), ()>(())
        })
        .unwrap();
        r.grow(4).copy_from_slice(b"data");
        assert_eq!(r.bytes(), b"headdata");
        // A failed encoder appends nothing.
        assert!(r
            .enc(|v| {
                v.push(1);
                Err(())
            })
            .is_err());
        assert_eq!(r.len(), 8);
        r.truncate(4);
        assert_eq!(r.bytes(), b"head");
        // Space past the end is handed out again as it was, not zeroed.
        assert_eq!(r.grow(4), b"data");
        let pool = BufPool::default();
        pool.put(r);
        let r = pool.get();
        assert!(r.is_empty());
        assert_eq!(r.buf.len(), 8);
    }
}
