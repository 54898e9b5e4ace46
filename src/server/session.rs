//! One client connection: the handshake state machine, then the transmission loop
//! (read a request → validate → execute on the pool → reply). Generic over the byte stream, so
//! TCP, unix sockets and in-memory duplex streams all work.
//!
//! Requests of one connection are executed in order; connections run in parallel.

use super::catalog::PoolCatalog;
use crate::nbd::proto::{
    CMD_FLAG_FUA, CMD_FLAG_NO_HOLE, CMD_FLAG_REQ_ONE, CONTEXT_BASE_ALLOCATION, EINVAL, EIO, ENOSPC,
    EPERM, STATE_HOLE, STATE_ZERO,
};
use crate::nbd::{
    decode_request_with_limit, encode_block_status, encode_block_status_ext, encode_error_reply,
    encode_ok, encode_read_data_header, validate, CodecError, Command, Decoded, Event, Extent,
    ExtentExt, Handshake, Negotiated, ReplyTarget, Request, ServerConfig,
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

/// Serve one client until it disconnects.
pub async fn run<S>(mut s: S, pool: Arc<Pool>, peer: &str) -> Result<(), SessionError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let catalog = PoolCatalog { pool: pool.clone() };
    let mut hs = Handshake::new(ServerConfig::default());
    s.write_all(&hs.initial_output()).await?;
    let mut buf = vec![0u8; 64 * 1024];
    let neg = loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return Ok(()); // left during the handshake
        }
        let step = hs.input(&buf[..n], &catalog)?;
        s.write_all(&step.output).await?;
        match step.event {
            Some(Event::Done(neg)) => break neg,
            Some(Event::Abort) => return Ok(()),
            // TLS is not offered, so the state machine never asks for it.
            Some(Event::StartTls) => return Ok(()),
            None => {}
        }
    };
    tracing::info!(peer, export = %neg.export, mode = ?neg.reply_mode, "client attached");
    let leftover = hs.take_leftover();
    transmission(s, pool, neg, leftover).await
}

/// Read from `s` until `inbuf` holds at least `want` bytes; false on a clean EOF.
async fn fill<S: AsyncRead + Unpin>(
    s: &mut S,
    inbuf: &mut Vec<u8>,
    want: usize,
) -> Result<bool, SessionError> {
    let mut chunk = vec![0u8; 256 * 1024];
    while inbuf.len() < want {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Ok(false);
        }
        inbuf.extend_from_slice(&chunk[..n]);
    }
    Ok(true)
}

async fn transmission<S>(
    mut s: S,
    pool: Arc<Pool>,
    neg: Negotiated,
    mut inbuf: Vec<u8>,
) -> Result<(), SessionError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let vol = pool
        .lu_id(&neg.export)
        .map_err(|_| SessionError::ExportGone(neg.export.clone()))?;
    let extended = neg.reply_mode.extended();
    let max = u64::from(neg.max_payload);
    let alloc_ctx = neg
        .meta_contexts
        .iter()
        .find(|(_, n)| n == CONTEXT_BASE_ALLOCATION)
        .map(|(id, _)| *id);
    let mut out = Vec::with_capacity(64 * 1024);
    loop {
        let req = loop {
            match decode_request_with_limit(&inbuf, extended, max)? {
                Decoded::Complete { value, consumed } => {
                    inbuf.drain(..consumed);
                    break value;
                }
                Decoded::Incomplete { need } => {
                    let want = inbuf.len() + need;
                    if !fill(&mut s, &mut inbuf, want).await? {
                        return Ok(()); // client went away between requests
                    }
                }
            }
        };
        let plen = req.payload_len as usize;
        if !fill(&mut s, &mut inbuf, plen).await? {
            return Ok(()); // disconnected mid-write: nothing was applied
        }
        let payload: Vec<u8> = inbuf.drain(..plen).collect();
        let target = ReplyTarget::new(neg.reply_mode, &req);
        out.clear();
        // Size as of now: LUs can be resized while attached.
        let size = pool
            .lu_get(&neg.export)
            .map(|l| l.size)
            .map_err(|_| SessionError::ExportGone(neg.export.clone()))?;
        if let Err(errno) = validate(&req, size, &neg) {
            tracing::debug!(?req, errno, "request refused");
            encode_error_reply(&mut out, &target, errno, "invalid request")?;
            s.write_all(&out).await?;
            continue;
        }
        match req.command() {
            Some(Command::Disc) => {
                let p = pool.clone();
                let _ = tokio::task::spawn_blocking(move || p.flush()).await;
                return Ok(());
            }
            Some(Command::Read) => {
                let (p, off, len) = (pool.clone(), req.offset, req.length as usize);
                let r = tokio::task::spawn_blocking(move || {
                    let mut data = vec![0u8; len];
                    p.read(vol, off, &mut data).map(|_| data)
                })
                .await
                .unwrap_or_else(|e| Err(PoolError::Poisoned(e.to_string())));
                match r {
                    Ok(data) => {
                        if data.is_empty() {
                            encode_ok(&mut out, &target)?;
                        } else {
                            encode_read_data_header(
                                &mut out,
                                &target,
                                req.offset,
                                data.len() as u64,
                                true,
                            )?;
                        }
                        s.write_all(&out).await?;
                        s.write_all(&data).await?;
                        continue;
                    }
                    Err(e) => reply_error(&mut out, &target, &e)?,
                }
            }
            Some(Command::BlockStatus) => match alloc_ctx {
                Some(ctx) => block_status(&pool, vol, &req, &target, ctx, size, &mut out).await?,
                None => encode_error_reply(&mut out, &target, EINVAL, "no metadata context")?,
            },
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
                    Command::WriteZeroes if no_hole => {
                        p.write(vol, off, &vec![0u8; len as usize], fua)
                    }
                    Command::WriteZeroes => p.write_zeroes(vol, off, len, fua),
                    // Everything is served from one shared cache: nothing to prefetch.
                    Command::Cache => Ok(()),
                    _ => Err(PoolError::Invalid("unsupported command".into())),
                })
                .await
                .unwrap_or_else(|e| Err(PoolError::Poisoned(e.to_string())));
                match r {
                    Ok(()) => encode_ok(&mut out, &target)?,
                    Err(e) => reply_error(&mut out, &target, &e)?,
                }
            }
            None => encode_error_reply(&mut out, &target, EINVAL, "unknown command")?,
        }
        s.write_all(&out).await?;
    }
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
    ctx: u32,
    size: u64,
    out: &mut Vec<u8>,
) -> Result<(), SessionError> {
    let p = pool.clone();
    // Answer at most 1 GiB per request; the client asks again for the rest.
    let len = req.length.min(size - req.offset).min(1 << 30);
    let off = req.offset;
    let r = tokio::task::spawn_blocking(move || p.extents(vol, off, len))
        .await
        .unwrap_or_else(|e| Err(PoolError::Poisoned(e.to_string())));
    let mut ext = match r {
        Ok(e) => e,
        Err(e) => return reply_error(out, target, &e),
    };
    if req.has_flag(CMD_FLAG_REQ_ONE) {
        ext.truncate(1);
    }
    let flags = |mapped: bool| if mapped { 0 } else { STATE_HOLE | STATE_ZERO };
    if target.mode.extended() {
        let e: Vec<ExtentExt> = ext
            .iter()
            .map(|&(_, l, m)| ExtentExt {
                length: l,
                status: u64::from(flags(m)),
            })
            .collect();
        encode_block_status_ext(out, target, ctx, &e, true)?;
    } else {
        let e: Vec<Extent> = ext
            .iter()
            .map(|&(_, l, m)| Extent {
                length: l as u32,
                flags: flags(m),
            })
            .collect();
        encode_block_status(out, target, ctx, &e, true)?;
    }
    Ok(())
}
