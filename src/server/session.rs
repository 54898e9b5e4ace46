//! One client connection: the handshake state machine, then the transmission loop
//! (read a request → validate → execute on the pool → reply). Generic over the byte stream, so
//! TCP, unix sockets and in-memory duplex streams all work.
//!
//! Requests of one connection run concurrently (bounded) and may complete out of order.

use super::catalog::PoolCatalog;
use crate::nbd::proto::{
    CMD_FLAG_DF, CMD_FLAG_FUA, CMD_FLAG_NO_HOLE, CMD_FLAG_REQ_ONE, CONTEXT_BASE_ALLOCATION, EINVAL,
    EIO, ENOSPC, EPERM, ESHUTDOWN, STATE_HOLE, STATE_ZERO,
};
use crate::nbd::{
    decode_request_with_limit, encode_block_status, encode_block_status_ext, encode_error_reply,
    encode_offset_hole, encode_ok, encode_read_data_header, validate, CodecError, Command, Decoded,
    Event, Extent, ExtentExt, Handshake, Negotiated, ReplyTarget, Request, ServerConfig,
};
use crate::pool::{Pool, PoolError};
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
}

/// NBD errno for a pool error.
fn nbd_errno(e: &PoolError) -> u32 {
    match e {
        PoolError::NoSpace(_) => ENOSPC,
        PoolError::Invalid(_) | PoolError::NotFound(_) => EINVAL,
        PoolError::ReadOnly => EPERM,
        _ => EIO,
    }
}

/// How a handshake phase ended.
enum Outcome {
    Done(Negotiated),
    StartTls,
    Closed,
}

/// Feed client bytes to the handshake until it reaches an event.
async fn negotiate<S>(
    s: &mut S,
    hs: &mut Handshake,
    catalog: &PoolCatalog,
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
        let step = hs.input(&buf[..n], catalog)?;
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

/// Serve one client until it disconnects.
pub async fn run<S>(
    mut s: S,
    shared: Arc<super::Shared>,
    who: crate::access::Peer,
    peer: &str,
) -> Result<(), SessionError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut catalog = PoolCatalog {
        pool: shared.pool.clone(),
        maps: shared.maps.clone(),
        peer: who,
    };
    let cfg = ServerConfig {
        tls_available: shared.tls.acceptor.is_some(),
        tls_required: shared.tls.required,
        ..ServerConfig::default()
    };
    let mut hs = Handshake::new(cfg);
    s.write_all(&hs.initial_output()).await?;
    match negotiate(&mut s, &mut hs, &catalog).await? {
        Outcome::Closed => Ok(()),
        Outcome::Done(neg) => attached(s, &shared, neg, hs.take_leftover(), peer).await,
        Outcome::StartTls => {
            let Some(acceptor) = shared.tls.acceptor.clone() else {
                return Ok(());
            };
            let mut t = acceptor.accept(s).await?;
            catalog.peer.tls = super::tls::client_identity(t.get_ref().1);
            match negotiate(&mut t, &mut hs, &catalog).await? {
                Outcome::Done(neg) => attached(t, &shared, neg, hs.take_leftover(), peer).await,
                // The state machine refuses a second STARTTLS itself.
                Outcome::StartTls | Outcome::Closed => Ok(()),
            }
        }
    }
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
    let _attached = super::Attached::new(shared.attach.clone(), &neg.export);
    crate::metrics::connections(1.0);
    struct Detach;
    impl Drop for Detach {
        fn drop(&mut self) {
            crate::metrics::connections(-1.0);
        }
    }
    let _detach = Detach;
    transmission(
        s,
        shared.pool.clone(),
        neg,
        leftover,
        shared.stopping.clone(),
    )
    .await
}

/// Read from `s` until `inbuf` holds at least `want` bytes; false on a clean EOF.
async fn fill<S: AsyncRead + Unpin>(
    s: &mut S,
    inbuf: &mut Vec<u8>,
    want: usize,
) -> Result<bool, SessionError> {
    while inbuf.len() < want {
        // Read straight into the buffer's spare room; take what is there beyond `want` too.
        inbuf.reserve((want - inbuf.len()).max(64 * 1024));
        if s.read_buf(inbuf).await? == 0 {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Requests executed at once on one connection; further requests wait (back-pressure).
const MAX_IN_FLIGHT: usize = 64;

/// Everything a request handler needs, shared by the connection's tasks.
struct Ctx {
    pool: Arc<Pool>,
    vol: u64,
    neg: Negotiated,
    /// Selected block-status contexts, in the order they were selected.
    contexts: Vec<(u32, MetaKind)>,
}

/// What a selected metadata context reports.
#[derive(Clone, Copy, Debug)]
enum MetaKind {
    /// `base:allocation`: holes read as zeroes.
    Allocation,
    /// `ssp:sharing`: bit 0 set where the block is shared with another volume.
    Sharing,
    /// `ssp:changed:NAME`: bit 0 set where the block differs from volume NAME (by id).
    Changed(u64),
}

/// Read requests in order and run each as its own task; a writer task sends every reply as one
/// unit as soon as it is ready, so replies may come back out of order.
async fn transmission<S>(
    s: S,
    pool: Arc<Pool>,
    neg: Negotiated,
    mut inbuf: Vec<u8>,
    stopping: tokio::sync::watch::Receiver<bool>,
) -> Result<(), SessionError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
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
            } else {
                let base = n.strip_prefix(super::catalog::CONTEXT_CHANGED)?;
                MetaKind::Changed(pool.lu_id(base).ok()?)
            };
            Some((*id, kind))
        })
        .collect();
    let ctx = Arc::new(Ctx {
        pool,
        vol,
        neg,
        contexts,
    });
    let (mut rd, mut wr) = tokio::io::split(s);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(MAX_IN_FLIGHT);
    let writer = tokio::spawn(async move {
        while let Some(reply) = rx.recv().await {
            wr.write_all(&reply).await?;
        }
        wr.flush().await
    });
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let result = loop {
        let req = loop {
            match decode_request_with_limit(&inbuf, extended, max) {
                Ok(Decoded::Complete { value, consumed }) => {
                    inbuf.drain(..consumed);
                    break Some(value);
                }
                Ok(Decoded::Incomplete { need }) => {
                    let want = inbuf.len() + need;
                    match fill(&mut rd, &mut inbuf, want).await {
                        Ok(true) => {}
                        Ok(false) => break None, // client went away between requests
                        Err(e) => return finish(tx, writer, Err(e)).await,
                    }
                }
                Err(e) => return finish(tx, writer, Err(e.into())).await,
            }
        };
        let Some(req) = req else { break Ok(()) };
        let plen = req.payload_len as usize;
        match fill(&mut rd, &mut inbuf, plen).await {
            Ok(true) => {}
            Ok(false) => break Ok(()), // disconnected mid-write: nothing was applied
            Err(e) => break Err(e),
        }
        let payload: Vec<u8> = inbuf.drain(..plen).collect();
        if req.command() == Some(Command::Disc) {
            // Let in-flight requests finish, make their writes durable, then close.
            let _all = slots.acquire_many(MAX_IN_FLIGHT as u32).await;
            let p = ctx.pool.clone();
            let _ = tokio::task::spawn_blocking(move || p.flush()).await;
            break Ok(());
        }
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break Ok(());
        };
        if *stopping.borrow() {
            // The server is stopping: refuse new work, let the client disconnect.
            let mut out = Vec::new();
            let target = ReplyTarget::new(ctx.neg.reply_mode, &req);
            encode_error_reply(&mut out, &target, ESHUTDOWN, "server is shutting down")?;
            drop(slot);
            if tx.send(out).await.is_err() {
                break Ok(());
            }
            continue;
        }
        let (ctx, tx) = (ctx.clone(), tx.clone());
        tokio::spawn(async move {
            let reply = match handle(&ctx, req, payload).await {
                Ok(r) => r,
                Err(e) => {
                    // Every request gets an answer: the client must not wait forever.
                    tracing::warn!("request failed: {e}");
                    let mut out = Vec::new();
                    let target = ReplyTarget::new(ctx.neg.reply_mode, &req);
                    let _ = encode_error_reply(&mut out, &target, EIO, &e.to_string());
                    out
                }
            };
            let _ = tx.send(reply).await;
            drop(slot);
        });
    };
    finish(tx, writer, result).await
}

/// Close the reply channel and wait for the writer to send what is queued.
async fn finish(
    tx: tokio::sync::mpsc::Sender<Vec<u8>>,
    writer: tokio::task::JoinHandle<std::io::Result<()>>,
    result: Result<(), SessionError>,
) -> Result<(), SessionError> {
    drop(tx);
    // Handlers still running hold their own senders; the writer ends when the last one is done.
    let w = writer
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
    result?;
    w.map_err(SessionError::Io)
}

/// Execute one request and encode its whole reply; account it in the metrics.
async fn handle(ctx: &Ctx, req: Request, payload: Vec<u8>) -> Result<Vec<u8>, SessionError> {
    let start = std::time::Instant::now();
    let mut errno = 0u32;
    let out = handle_inner(ctx, &req, payload, &mut errno).await?;
    let cmd = match req.command() {
        Some(Command::Read) => "read",
        Some(Command::Write) => "write",
        Some(Command::Flush) => "flush",
        Some(Command::Trim) => "trim",
        Some(Command::Cache) => "cache",
        Some(Command::WriteZeroes) => "write_zeroes",
        Some(Command::BlockStatus) => "block_status",
        _ => "other",
    };
    let bytes = match req.command() {
        Some(Command::Read | Command::Write) if errno == 0 => req.length,
        _ => 0,
    };
    crate::metrics::request(cmd, bytes, start.elapsed().as_secs_f64(), errno);
    Ok(out)
}

async fn handle_inner(
    ctx: &Ctx,
    req: &Request,
    payload: Vec<u8>,
    errno: &mut u32,
) -> Result<Vec<u8>, SessionError> {
    let req = *req;
    let (pool, vol, neg) = (&ctx.pool, ctx.vol, &ctx.neg);
    let target = ReplyTarget::new(neg.reply_mode, &req);
    let mut out = Vec::new();
    // Size as of now: LUs can be resized while attached.
    let size = pool
        .lu_size(vol)
        .map_err(|_| SessionError::ExportGone(neg.export.clone()))?;
    if let Err(e) = validate(&req, size, neg) {
        tracing::debug!(?req, e, "request refused");
        *errno = e;
        encode_error_reply(&mut out, &target, e, "invalid request")?;
        return Ok(out);
    }
    match req.command() {
        Some(Command::Read) => {
            let (p, off, len) = (pool.clone(), req.offset, req.length);
            // With structured replies (and no DF), unmapped ranges go back as hole chunks: no
            // zeroes are read, copied or sent for them.
            let holes = target.mode.chunks() && !req.has_flag(CMD_FLAG_DF) && len > 0;
            let r = tokio::task::spawn_blocking(move || {
                let ext = if holes {
                    p.extents(vol, off, len)?
                } else {
                    vec![(off, len, true)]
                };
                let mut parts = Vec::with_capacity(ext.len());
                for (start, n, mapped) in ext {
                    let mut data = Vec::new();
                    if mapped {
                        data = vec![0u8; n as usize];
                        p.read(vol, start, &mut data)?;
                    }
                    parts.push((start, n, data));
                }
                Ok(parts)
            })
            .await
            .unwrap_or_else(|e| Err(PoolError::Poisoned(e.to_string())));
            match r {
                Ok(parts) if len == 0 || parts.is_empty() => encode_ok(&mut out, &target)?,
                Ok(parts) => {
                    let last = parts.len() - 1;
                    for (i, (start, n, data)) in parts.into_iter().enumerate() {
                        if data.is_empty() {
                            encode_offset_hole(&mut out, &target, start, n as u32, i == last)?;
                        } else {
                            encode_read_data_header(&mut out, &target, start, n, i == last)?;
                            out.extend_from_slice(&data);
                        }
                    }
                }
                Err(e) => {
                    *errno = nbd_errno(&e);
                    reply_error(&mut out, &target, &e)?
                }
            }
        }
        Some(Command::BlockStatus) if ctx.contexts.is_empty() => {
            *errno = EINVAL;
            encode_error_reply(&mut out, &target, EINVAL, "no metadata context")?
        }
        Some(Command::BlockStatus) => {
            block_status(pool, vol, &req, &target, &ctx.contexts, size, &mut out).await?
        }
        Some(cmd) => {
            let p = pool.clone();
            let fua = req.has_flag(CMD_FLAG_FUA);
            let (off, len) = (req.offset, req.length);
            let no_hole = req.has_flag(CMD_FLAG_NO_HOLE);
            let r = tokio::task::spawn_blocking(move || match cmd {
                Command::Write => p.write(vol, off, &payload, fua),
                Command::Flush => p.flush(),
                Command::Trim => {
                    p.trim(vol, off, len)
                        .and_then(|_| if fua { p.flush() } else { Ok(()) })
                }
                // NO_HOLE asks for allocated zeroes; otherwise zero ranges use no space.
                Command::WriteZeroes if no_hole => p.write(vol, off, &vec![0u8; len as usize], fua),
                Command::WriteZeroes => p.write_zeroes(vol, off, len, fua),
                // Everything is served from one shared cache: nothing to prefetch.
                Command::Cache => Ok(()),
                _ => Err(PoolError::Invalid("unsupported command".into())),
            })
            .await
            .unwrap_or_else(|e| Err(PoolError::Poisoned(e.to_string())));
            match r {
                Ok(()) => encode_ok(&mut out, &target)?,
                Err(e) => {
                    *errno = nbd_errno(&e);
                    reply_error(&mut out, &target, &e)?
                }
            }
        }
        None => {
            *errno = EINVAL;
            encode_error_reply(&mut out, &target, EINVAL, "unknown command")?
        }
    }
    Ok(out)
}

fn reply_error(out: &mut Vec<u8>, target: &ReplyTarget, e: &PoolError) -> Result<(), SessionError> {
    tracing::warn!("request failed: {e}");
    encode_error_reply(out, target, nbd_errno(e), &e.to_string())?;
    Ok(())
}

/// `base:allocation` extents: unmapped ranges are holes that read as zeroes.
async fn block_status(
    pool: &Arc<Pool>,
    vol: u64,
    req: &Request,
    target: &ReplyTarget,
    contexts: &[(u32, MetaKind)],
    size: u64,
    out: &mut Vec<u8>,
) -> Result<(), SessionError> {
    let p = pool.clone();
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
    let kinds = contexts.to_vec();
    let r = tokio::task::spawn_blocking(move || {
        kinds
            .iter()
            .map(|&(id, k)| {
                Ok((
                    id,
                    k,
                    match k {
                        MetaKind::Allocation => p.extents(vol, off, len)?,
                        MetaKind::Sharing => p.shared_extents(vol, off, len)?,
                        MetaKind::Changed(base) => p.changed_extents(vol, base, off, len)?,
                    },
                ))
            })
            .collect::<Result<Vec<_>, PoolError>>()
    })
    .await
    .unwrap_or_else(|e| Err(PoolError::Poisoned(e.to_string())));
    let all = match r {
        Ok(e) => e,
        Err(e) => return reply_error(out, target, &e),
    };
    let last = all.len() - 1;
    for (i, (id, kind, mut ext)) in all.into_iter().enumerate() {
        if req.has_flag(CMD_FLAG_REQ_ONE) {
            ext.truncate(1);
        }
        let flags = |set: bool| match kind {
            MetaKind::Allocation if !set => STATE_HOLE | STATE_ZERO,
            MetaKind::Allocation => 0,
            _ => u32::from(set),
        };
        encode_extents(out, target, id, &ext, &flags, i == last)?;
    }
    Ok(())
}

fn encode_extents(
    out: &mut Vec<u8>,
    target: &ReplyTarget,
    ctx: u32,
    ext: &[(u64, u64, bool)],
    flags: &dyn Fn(bool) -> u32,
    done: bool,
) -> Result<(), SessionError> {
    if target.mode.extended() {
        let e: Vec<ExtentExt> = ext
            .iter()
            .map(|&(_, l, m)| ExtentExt {
                length: l,
                status: u64::from(flags(m)),
            })
            .collect();
        encode_block_status_ext(out, target, ctx, &e, done)?;
    } else {
        let e: Vec<Extent> = ext
            .iter()
            .map(|&(_, l, m)| Extent {
                length: l as u32,
                flags: flags(m),
            })
            .collect();
        encode_block_status(out, target, ctx, &e, done)?;
    }
    Ok(())
}
