//! Request validation before execution: which `NBD_E*` error a request earns, if any.
//!
//! proto.md "Request types", "Command flags", "Error values" and "Block size constraints".
//! Checks run in this order, so a request with several problems gets the first error:
//!
//! 1. unknown command, or `NBD_CMD_RESIZE` (not advertised) → `NBD_EINVAL`
//!    ("SHOULD return `NBD_EINVAL` if it receives an unknown command");
//! 2. a command flag not documented for the command, or not enabled by negotiation
//!    (`NBD_CMD_FLAG_DF` needs structured replies/extended headers, `NBD_CMD_FLAG_PAYLOAD_LEN`
//!    needs extended headers and is only accepted on `NBD_CMD_WRITE`, where it is mandatory)
//!    → `NBD_EINVAL`;
//! 3. `NBD_CMD_WRITE`/`NBD_CMD_TRIM`/`NBD_CMD_WRITE_ZEROES` on a read-only export → `NBD_EPERM`;
//! 4. `NBD_CMD_FLUSH` with nonzero offset or length ("MUST be set to all-zero") → `NBD_EINVAL`;
//!    `NBD_CMD_BLOCK_STATUS` without a selected metadata context, or with length 0 → `NBD_EINVAL`;
//! 5. `NBD_CMD_READ`/`NBD_CMD_WRITE` longer than the maximum payload → `NBD_EINVAL`;
//! 6. offset or length not a multiple of the minimum block size → `NBD_EINVAL`;
//! 7. past the end of the export (including `offset + length` overflowing u64): `NBD_ENOSPC`
//!    for `NBD_CMD_WRITE` and `NBD_CMD_WRITE_ZEROES`, `NBD_EINVAL` otherwise.
//!
//! `NBD_EOVERFLOW` is never returned here: proto.md reserves it for `NBD_CMD_FLAG_DF` reads that
//! cannot be sent unfragmented and for oversize payload-less commands the server chooses to
//! refuse, both execution-time decisions. Zero-length READ/WRITE/TRIM/WRITE_ZEROES/CACHE pass
//! ("unspecified ... SHOULD NOT disconnect"); the executor should reply with success.
//! `NBD_CMD_DISC` always passes (it has no reply).

use super::codec::Request;
use super::handshake::Negotiated;
use super::proto::*;

/// `Ok(())` if `req` may be executed against an export of `size` bytes on a connection that
/// negotiated `negotiated`; otherwise the `NBD_E*` error to reply with.
pub fn validate(req: &Request, size: u64, negotiated: &Negotiated) -> Result<(), u32> {
    let Some(cmd) = req.command() else {
        return Err(EINVAL);
    };
    let mode = negotiated.reply_mode;
    let info = &negotiated.export_info;

    // 2. Flags. FUA is valid on every command once NBD_FLAG_SEND_FUA is advertised (always).
    let allowed = CMD_FLAG_FUA
        | match cmd {
            Command::Disc => return Ok(()),
            Command::Resize => return Err(EINVAL),
            Command::Read if mode.chunks() => CMD_FLAG_DF,
            Command::Write if mode.extended() => CMD_FLAG_PAYLOAD_LEN,
            Command::WriteZeroes => CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO,
            Command::BlockStatus => CMD_FLAG_REQ_ONE,
            _ => 0,
        };
    if req.flags & !allowed != 0 {
        return Err(EINVAL);
    }

    // 3. Read-only exports.
    let writes = matches!(cmd, Command::Write | Command::Trim | Command::WriteZeroes);
    if writes && info.read_only {
        return Err(EPERM);
    }

    // 4. Command-specific shape.
    if cmd == Command::Flush {
        return if req.offset == 0 && req.length == 0 {
            Ok(())
        } else {
            Err(EINVAL)
        };
    }
    if cmd == Command::BlockStatus
        && (negotiated.meta_contexts.is_empty() || !mode.chunks() || req.length == 0)
    {
        return Err(EINVAL);
    }

    // 5. Payload size.
    if matches!(cmd, Command::Read | Command::Write)
        && req.length > u64::from(negotiated.max_payload)
    {
        return Err(EINVAL);
    }

    // 6. Alignment to the minimum block size.
    let min = u64::from(info.effective_min_block());
    if req.offset % min != 0 || req.length % min != 0 {
        return Err(EINVAL);
    }

    // 7. Bounds.
    let in_bounds = req
        .offset
        .checked_add(req.length)
        .is_some_and(|end| end <= size);
    if !in_bounds {
        return Err(if matches!(cmd, Command::Write | Command::WriteZeroes) {
            ENOSPC
        } else {
            EINVAL
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nbd::codec::ReplyMode;
    use crate::nbd::handshake::ExportInfo;

    const SIZE: u64 = 1 << 20;
    const MIB32: u64 = 32 << 20;

    fn neg(mode: ReplyMode, read_only: bool, min_block: u32, contexts: bool) -> Negotiated {
        let info = ExportInfo {
            name: "lu".into(),
            size: SIZE,
            read_only,
            description: String::new(),
            can_multi_conn: false,
            min_block,
        };
        Negotiated {
            export: "lu".into(),
            reply_mode: mode,
            meta_contexts: if contexts {
                vec![(1, CONTEXT_BASE_ALLOCATION.into())]
            } else {
                Vec::new()
            },
            transmission_flags: info.transmission_flags(mode),
            export_info: info,
            no_zeroes: true,
            max_payload: DEFAULT_MAX_PAYLOAD,
            tls: false,
        }
    }

    fn req(typ: u16, flags: u16, offset: u64, length: u64) -> Request {
        Request {
            flags,
            typ,
            cookie: 1,
            offset,
            length,
            payload_len: 0,
        }
    }

    use ReplyMode::{Extended as E, Simple as S, Structured as T};

    #[test]
    fn table() {
        let rw = |m| neg(m, false, 1, false);
        let ro = |m| neg(m, true, 1, false);
        let bs = |m| neg(m, false, 1, true);
        let aligned = |m| neg(m, false, 4096, true);
        let pl = CMD_FLAG_PAYLOAD_LEN;
        #[rustfmt::skip]
        let cases: Vec<(&str, Request, Negotiated, Result<(), u32>)> = vec![
            // Basic success.
            ("read", req(CMD_READ, 0, 0, 4096), rw(S), Ok(())),
            ("read to end", req(CMD_READ, 0, SIZE - 512, 512), rw(S), Ok(())),
            ("read len 0", req(CMD_READ, 0, 0, 0), rw(S), Ok(())),
            ("read len 0 at end", req(CMD_READ, 0, SIZE, 0), rw(S), Ok(())),
            ("write fua", req(CMD_WRITE, CMD_FLAG_FUA, 0, 512), rw(S), Ok(())),
            ("flush", req(CMD_FLUSH, 0, 0, 0), rw(S), Ok(())),
            ("flush fua", req(CMD_FLUSH, CMD_FLAG_FUA, 0, 0), ro(S), Ok(())),
            ("trim", req(CMD_TRIM, 0, 0, SIZE), rw(S), Ok(())),
            ("cache", req(CMD_CACHE, 0, 0, SIZE), ro(S), Ok(())),
            ("zeroes all flags", req(CMD_WRITE_ZEROES, CMD_FLAG_FUA | CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO, 0, 4096), rw(S), Ok(())),
            ("disc", req(CMD_DISC, 0xffff, 1, 1), rw(S), Ok(())),
            ("block status", req(CMD_BLOCK_STATUS, CMD_FLAG_REQ_ONE, 0, 4096), bs(T), Ok(())),
            ("read df structured", req(CMD_READ, CMD_FLAG_DF, 0, 4096), rw(T), Ok(())),
            ("read df extended", req(CMD_READ, CMD_FLAG_DF, 0, 4096), rw(E), Ok(())),
            ("ext write", req(CMD_WRITE, pl, 0, 4096), rw(E), Ok(())),
            ("ext trim 64-bit", req(CMD_TRIM, 0, 0, SIZE), rw(E), Ok(())),
            ("read max payload", req(CMD_READ, 0, 0, MIB32), neg_big(), Ok(())),
            // Unknown commands.
            ("unknown cmd", req(9, 0, 0, 0), rw(S), Err(EINVAL)),
            ("resize", req(CMD_RESIZE, 0, 0, 0), rw(S), Err(EINVAL)),
            ("huge cmd", req(0xffff, 0, 0, 0), rw(S), Err(EINVAL)),
            // Flags.
            ("unknown flag", req(CMD_READ, 1 << 9, 0, 512), rw(S), Err(EINVAL)),
            ("df simple", req(CMD_READ, CMD_FLAG_DF, 0, 512), rw(S), Err(EINVAL)),
            ("df on write", req(CMD_WRITE, CMD_FLAG_DF, 0, 512), rw(T), Err(EINVAL)),
            ("req_one on read", req(CMD_READ, CMD_FLAG_REQ_ONE, 0, 512), rw(T), Err(EINVAL)),
            ("req_one on trim", req(CMD_TRIM, CMD_FLAG_REQ_ONE, 0, 512), rw(T), Err(EINVAL)),
            ("fast_zero on write", req(CMD_WRITE, CMD_FLAG_FAST_ZERO, 0, 512), rw(S), Err(EINVAL)),
            ("fast_zero on trim", req(CMD_TRIM, CMD_FLAG_FAST_ZERO, 0, 512), rw(S), Err(EINVAL)),
            ("no_hole on write", req(CMD_WRITE, CMD_FLAG_NO_HOLE, 0, 512), rw(S), Err(EINVAL)),
            ("flag on flush", req(CMD_FLUSH, CMD_FLAG_NO_HOLE, 0, 0), rw(S), Err(EINVAL)),
            ("flag on cache", req(CMD_CACHE, CMD_FLAG_DF, 0, 0), rw(T), Err(EINVAL)),
            ("payload_len compact", req(CMD_WRITE, pl, 0, 512), rw(T), Err(EINVAL)),
            ("ext write w/o payload_len", req(CMD_WRITE, 0, 0, 512), rw(E), Ok(())),
            ("payload_len on read", req(CMD_READ, pl, 0, 512), rw(E), Err(EINVAL)),
            ("payload_len on block status", req(CMD_BLOCK_STATUS, pl, 0, 512), bs(E), Err(EINVAL)),
            ("bad flag beats read-only", req(CMD_WRITE, CMD_FLAG_DF, 0, 512), ro(T), Err(EINVAL)),
            // Read-only.
            ("write ro", req(CMD_WRITE, 0, 0, 512), ro(S), Err(EPERM)),
            ("trim ro", req(CMD_TRIM, 0, 0, 512), ro(S), Err(EPERM)),
            ("zeroes ro", req(CMD_WRITE_ZEROES, 0, 0, 512), ro(S), Err(EPERM)),
            ("write ro past end", req(CMD_WRITE, 0, SIZE, 512), ro(S), Err(EPERM)),
            ("read ro", req(CMD_READ, 0, 0, 512), ro(S), Ok(())),
            // Flush shape.
            ("flush offset", req(CMD_FLUSH, 0, 512, 0), rw(S), Err(EINVAL)),
            ("flush length", req(CMD_FLUSH, 0, 0, 512), rw(S), Err(EINVAL)),
            // Block status.
            ("bs no contexts", req(CMD_BLOCK_STATUS, 0, 0, 4096), rw(T), Err(EINVAL)),
            ("bs simple", req(CMD_BLOCK_STATUS, 0, 0, 4096), neg(S, false, 1, true), Err(EINVAL)),
            ("bs len 0", req(CMD_BLOCK_STATUS, 0, 0, 0), bs(T), Err(EINVAL)),
            ("bs past end", req(CMD_BLOCK_STATUS, 0, SIZE - 512, 1024), bs(T), Err(EINVAL)),
            // Payload size.
            ("read over max", req(CMD_READ, 0, 0, MIB32 + 1), neg_big(), Err(EINVAL)),
            ("write over max", req(CMD_WRITE, 0, 0, MIB32 + 1), neg_big(), Err(EINVAL)),
            ("ext read 64-bit", req(CMD_READ, 0, 0, 1 << 33), rw(E), Err(EINVAL)),
            ("trim over max ok", req(CMD_TRIM, 0, 0, MIB32 * 2), neg_big(), Ok(())),
            ("zeroes over max ok", req(CMD_WRITE_ZEROES, 0, 0, MIB32 * 2), neg_big(), Ok(())),
            // Alignment.
            ("aligned", req(CMD_READ, 0, 4096, 8192), aligned(T), Ok(())),
            ("misaligned offset", req(CMD_READ, 0, 512, 4096), aligned(T), Err(EINVAL)),
            ("misaligned length", req(CMD_WRITE, 0, 0, 512), aligned(T), Err(EINVAL)),
            ("misaligned trim", req(CMD_TRIM, 0, 4095, 4096), aligned(T), Err(EINVAL)),
            ("misaligned bs", req(CMD_BLOCK_STATUS, 0, 0, 100), aligned(T), Err(EINVAL)),
            ("misaligned beats bounds", req(CMD_WRITE, 0, SIZE + 1, 4096), aligned(T), Err(EINVAL)),
            // Bounds.
            ("read past end", req(CMD_READ, 0, SIZE - 512, 1024), rw(S), Err(EINVAL)),
            ("read beyond end", req(CMD_READ, 0, SIZE + 512, 512), rw(S), Err(EINVAL)),
            ("read offset past end len 0", req(CMD_READ, 0, SIZE + 1, 0), rw(S), Err(EINVAL)),
            ("write past end", req(CMD_WRITE, 0, SIZE - 512, 1024), rw(S), Err(ENOSPC)),
            ("zeroes past end", req(CMD_WRITE_ZEROES, 0, SIZE, 512), rw(S), Err(ENOSPC)),
            ("trim past end", req(CMD_TRIM, 0, SIZE, 512), rw(S), Err(EINVAL)),
            ("cache past end", req(CMD_CACHE, 0, SIZE, 512), rw(S), Err(EINVAL)),
            ("read overflow", req(CMD_READ, 0, u64::MAX, 512), rw(S), Err(EINVAL)),
            ("write overflow", req(CMD_WRITE, 0, u64::MAX - 100, 512), rw(S), Err(ENOSPC)),
            ("ext zeroes overflow", req(CMD_WRITE_ZEROES, 0, 1, u64::MAX), rw(E), Err(ENOSPC)),
            ("ext trim overflow", req(CMD_TRIM, 0, u64::MAX, u64::MAX), rw(E), Err(EINVAL)),
        ];
        for (name, r, n, want) in cases {
            let size = n.export_info.size;
            assert_eq!(validate(&r, size, &n), want, "{name}");
        }
    }

    /// An export large enough for max-payload tests.
    fn neg_big() -> Negotiated {
        let mut n = neg(ReplyMode::Structured, false, 1, false);
        n.export_info.size = 1 << 30;
        n
    }

    #[test]
    fn size_argument_overrides_export_info() {
        // The caller passes the current size (an export may have been resized since the GO).
        let n = neg(ReplyMode::Simple, false, 1, false);
        assert_eq!(validate(&req(CMD_READ, 0, SIZE, 512), SIZE * 2, &n), Ok(()));
        assert_eq!(validate(&req(CMD_READ, 0, 0, 512), 256, &n), Err(EINVAL));
    }

    #[test]
    fn custom_max_payload() {
        let mut n = neg_big();
        n.max_payload = 4096;
        assert_eq!(validate(&req(CMD_READ, 0, 0, 4096), 1 << 30, &n), Ok(()));
        assert_eq!(
            validate(&req(CMD_READ, 0, 0, 8192), 1 << 30, &n),
            Err(EINVAL)
        );
    }
}
