//! Transmission-phase codec: request headers in, reply headers out. No I/O.
//!
//! proto.md "Transmission": "Request message" (compact 28-byte and extended 32-byte headers),
//! "Simple reply message" (16 bytes), "Structured reply chunk message" (20 bytes) and
//! "Extended reply chunk message" (32 bytes), with payloads from "Structured reply types".
//!
//! # Requests and their payload
//!
//! [`decode_request`] decodes the *header only*. A request that carries a payload (an
//! `NBD_CMD_WRITE`, or an extended request with `NBD_CMD_FLAG_PAYLOAD_LEN`) reports its size in
//! [`Request::payload_len`]; the caller then reads exactly that many bytes from the stream
//! before decoding the next header. This keeps large writes out of any intermediate buffer.
//!
//! A payload longer than the limit (default [`DEFAULT_MAX_PAYLOAD`], 32 MiB) is reported as
//! [`CodecError::PayloadTooLarge`] *without* waiting for the payload. The error carries the
//! decoded header, so the caller may either reply with an error and skip (read and discard)
//! `payload_len` bytes, or initiate a hard disconnect, which proto.md allows ("SHOULD initiate
//! hard disconnect" for an extended `NBD_CMD_FLAG_PAYLOAD_LEN` over the maximum payload; "MAY"
//! for a payload deemed a denial of service).
//!
//! # Replies
//!
//! Every reply encoder takes a [`ReplyTarget`], which includes the negotiated [`ReplyMode`].
//! The header is chosen from the mode, so a compact (simple or structured) header can never be
//! emitted on a connection that negotiated extended headers, and a chunk can never be emitted
//! on a connection that did not negotiate structured replies: those calls return
//! [`EncodeError`] instead.

use thiserror::Error;

use super::proto::*;
use super::wire::{put_u16, put_u32, put_u64, Reader};

/// Compact request header length.
pub const COMPACT_REQUEST_LEN: usize = 28;
/// Extended request header length.
pub const EXTENDED_REQUEST_LEN: usize = 32;
/// Simple reply header length.
pub const SIMPLE_REPLY_LEN: usize = 16;
/// Structured reply chunk header length.
pub const STRUCTURED_REPLY_LEN: usize = 20;
/// Extended reply chunk header length.
pub const EXTENDED_REPLY_LEN: usize = 32;

/// Result of feeding a possibly-partial buffer to a decoder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decoded<T> {
    /// Not enough bytes yet: at least `need` *more* bytes are required (beyond `buf.len()`).
    Incomplete { need: usize },
    /// A complete value, which used the first `consumed` bytes of the buffer.
    Complete { value: T, consumed: usize },
}

/// A decoded request header (compact or extended).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// Command flags (`NBD_CMD_FLAG_*`).
    pub flags: u16,
    /// Raw command type; see [`Request::command`].
    pub typ: u16,
    /// Client cookie (formerly "handle"), echoed in every reply.
    pub cookie: u64,
    /// Offset into the export.
    pub offset: u64,
    /// Length field as sent (zero-extended in compact mode): an effect length, or for payload
    /// carrying requests the payload length.
    pub length: u64,
    /// Bytes of payload that follow this header on the wire and that the caller must read
    /// (or skip) before the next header: `length` for a compact `NBD_CMD_WRITE` or an extended
    /// request with `NBD_CMD_FLAG_PAYLOAD_LEN`, otherwise 0.
    pub payload_len: u64,
}

impl Request {
    /// The command, or `None` for a type proto.md does not define.
    pub fn command(&self) -> Option<Command> {
        Command::from_u16(self.typ)
    }

    /// Whether every bit of `flag` is set.
    pub fn has_flag(&self, flag: u16) -> bool {
        self.flags & flag == flag
    }
}

/// Request decoding failures. Both are fatal for the byte stream unless handled as described.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum CodecError {
    /// The header does not start with the magic expected in this mode: the stream is out of
    /// sync (or the client used the wrong header style) and the connection must be dropped.
    #[error("bad request magic {found:#010x} (expected {expected:#010x})")]
    BadMagic { found: u32, expected: u32 },
    /// The header is valid but announces a payload over the limit. `header_len` header bytes
    /// were decoded; the caller either replies with an error to `request.cookie` and then
    /// discards `request.payload_len` bytes, or disconnects.
    #[error("request payload of {} bytes exceeds the {max}-byte limit", request.payload_len)]
    PayloadTooLarge {
        request: Request,
        max: u64,
        header_len: usize,
    },
}

/// Decode one request header with the default 32 MiB payload limit. `extended` is whether
/// `NBD_OPT_EXTENDED_HEADERS` was negotiated (then only 32-byte extended headers are valid).
/// The payload, if any, is not part of the decoded bytes: see the module docs.
pub fn decode_request(buf: &[u8], extended: bool) -> Result<Decoded<Request>, CodecError> {
    decode_request_with_limit(buf, extended, u64::from(DEFAULT_MAX_PAYLOAD))
}

/// [`decode_request`] with an explicit payload limit.
pub fn decode_request_with_limit(
    buf: &[u8],
    extended: bool,
    max_payload: u64,
) -> Result<Decoded<Request>, CodecError> {
    let (expected, header_len) = if extended {
        (EXTENDED_REQUEST_MAGIC, EXTENDED_REQUEST_LEN)
    } else {
        (REQUEST_MAGIC, COMPACT_REQUEST_LEN)
    };
    // Check the magic as soon as it is available, so garbage is rejected without waiting.
    let mut r = Reader::new(buf);
    let Some(magic) = r.u32() else {
        return Ok(Decoded::Incomplete {
            need: header_len - buf.len(),
        });
    };
    if magic != expected {
        return Err(CodecError::BadMagic {
            found: magic,
            expected,
        });
    }
    if buf.len() < header_len {
        return Ok(Decoded::Incomplete {
            need: header_len - buf.len(),
        });
    }
    let fields = (|| {
        let flags = r.u16()?;
        let typ = r.u16()?;
        let cookie = r.u64()?;
        let offset = r.u64()?;
        let length = if extended {
            r.u64()?
        } else {
            u64::from(r.u32()?)
        };
        Some((flags, typ, cookie, offset, length))
    })();
    let Some((flags, typ, cookie, offset, length)) = fields else {
        // Unreachable: the length was checked above. Report it as "need more" rather than panic.
        return Ok(Decoded::Incomplete { need: 1 });
    };
    // A WRITE always carries `length` bytes; in extended mode other commands carry a payload
    // only with NBD_CMD_FLAG_PAYLOAD_LEN (clients such as QEMU do not set it on WRITE).
    let carries_payload = typ == CMD_WRITE || (extended && flags & CMD_FLAG_PAYLOAD_LEN != 0);
    let request = Request {
        flags,
        typ,
        cookie,
        offset,
        length,
        payload_len: if carries_payload { length } else { 0 },
    };
    if request.payload_len > max_payload {
        return Err(CodecError::PayloadTooLarge {
            request,
            max: max_payload,
            header_len,
        });
    }
    Ok(Decoded::Complete {
        value: request,
        consumed: header_len,
    })
}

/// Encode a request header (client side; used by tests and tools). `payload_len` is ignored:
/// the header's length field is `req.length`. Compact headers need `length` to fit in 32 bits.
pub fn encode_request(out: &mut Vec<u8>, req: &Request, extended: bool) -> Result<(), EncodeError> {
    if extended {
        put_u32(out, EXTENDED_REQUEST_MAGIC);
    } else {
        if req.length > u64::from(u32::MAX) {
            return Err(EncodeError::TooLong {
                what: "compact request length",
                len: req.length,
            });
        }
        put_u32(out, REQUEST_MAGIC);
    }
    put_u16(out, req.flags);
    put_u16(out, req.typ);
    put_u64(out, req.cookie);
    put_u64(out, req.offset);
    if extended {
        put_u64(out, req.length);
    } else {
        put_u32(out, req.length as u32);
    }
    Ok(())
}

/// Which reply headers the handshake negotiated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReplyMode {
    /// Neither structured replies nor extended headers: simple replies only.
    Simple,
    /// `NBD_OPT_STRUCTURED_REPLY`: 20-byte chunks; simple replies for payload-less answers.
    Structured,
    /// `NBD_OPT_EXTENDED_HEADERS`: 32-byte chunks only; simple replies are forbidden.
    Extended,
}

impl ReplyMode {
    /// Whether reply chunks (structured or extended) may be sent.
    pub fn chunks(self) -> bool {
        !matches!(self, ReplyMode::Simple)
    }

    /// Whether extended headers are in use (requests and replies).
    pub fn extended(self) -> bool {
        matches!(self, ReplyMode::Extended)
    }
}

/// Addressing for one reply: the connection's mode plus what identifies the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplyTarget {
    pub mode: ReplyMode,
    /// The request's cookie.
    pub cookie: u64,
    /// The request's offset (echoed in extended reply headers only).
    pub offset: u64,
}

impl ReplyTarget {
    /// Target for replies to `req` on a connection in `mode`.
    pub fn new(mode: ReplyMode, req: &Request) -> Self {
        ReplyTarget {
            mode,
            cookie: req.cookie,
            offset: req.offset,
        }
    }
}

/// A reply that cannot be encoded: either the negotiated mode forbids it or the arguments
/// violate a MUST of the chunk type.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum EncodeError {
    #[error("simple replies are forbidden once extended headers are negotiated")]
    SimpleReplyInExtendedMode,
    #[error("reply chunks need structured replies or extended headers to be negotiated")]
    ChunksNotNegotiated,
    #[error("NBD_REPLY_TYPE_BLOCK_STATUS_EXT needs extended headers to be negotiated")]
    ExtendedHeadersRequired,
    #[error("{what} of {len} bytes does not fit its length field")]
    TooLong { what: &'static str, len: u64 },
    #[error("invalid reply: {0}")]
    Invalid(&'static str),
}

/// Simple reply header: magic, error, cookie. For a successful `NBD_CMD_READ` in
/// [`ReplyMode::Simple`], the caller appends the data (exactly the requested length).
/// Refused in [`ReplyMode::Extended`]; allowed in [`ReplyMode::Structured`] only for replies
/// without payload to commands other than `NBD_CMD_READ` (the caller's responsibility).
pub fn encode_simple_reply(
    out: &mut Vec<u8>,
    target: &ReplyTarget,
    error: u32,
) -> Result<(), EncodeError> {
    if target.mode.extended() {
        return Err(EncodeError::SimpleReplyInExtendedMode);
    }
    put_u32(out, SIMPLE_REPLY_MAGIC);
    put_u32(out, error);
    put_u64(out, target.cookie);
    Ok(())
}

/// Generic chunk header (structured or extended, per the mode) announcing `payload_len` bytes
/// of payload, which the caller appends. Prefer the typed encoders below.
pub fn encode_chunk_header(
    out: &mut Vec<u8>,
    target: &ReplyTarget,
    flags: u16,
    typ: u16,
    payload_len: u64,
) -> Result<(), EncodeError> {
    match target.mode {
        ReplyMode::Simple => Err(EncodeError::ChunksNotNegotiated),
        ReplyMode::Structured => {
            let len = u32::try_from(payload_len).map_err(|_| EncodeError::TooLong {
                what: "structured reply payload",
                len: payload_len,
            })?;
            put_u32(out, STRUCTURED_REPLY_MAGIC);
            put_u16(out, flags);
            put_u16(out, typ);
            put_u64(out, target.cookie);
            put_u32(out, len);
            Ok(())
        }
        ReplyMode::Extended => {
            put_u32(out, EXTENDED_REPLY_MAGIC);
            put_u16(out, flags);
            put_u16(out, typ);
            put_u64(out, target.cookie);
            put_u64(out, target.offset);
            put_u64(out, payload_len);
            Ok(())
        }
    }
}

fn done_flag(done: bool) -> u16 {
    if done {
        REPLY_FLAG_DONE
    } else {
        0
    }
}

/// `NBD_REPLY_TYPE_NONE` with `NBD_REPLY_FLAG_DONE` (the only legal flags for it).
pub fn encode_none(out: &mut Vec<u8>, target: &ReplyTarget) -> Result<(), EncodeError> {
    encode_chunk_header(out, target, REPLY_FLAG_DONE, REPLY_TYPE_NONE, 0)
}

/// `NBD_REPLY_TYPE_OFFSET_DATA` header plus its 8-byte offset; the caller appends `data_len`
/// bytes of data (at least 1).
pub fn encode_offset_data_header(
    out: &mut Vec<u8>,
    target: &ReplyTarget,
    data_offset: u64,
    data_len: u64,
    done: bool,
) -> Result<(), EncodeError> {
    if data_len == 0 {
        return Err(EncodeError::Invalid(
            "OFFSET_DATA must carry at least one byte",
        ));
    }
    let payload = data_len.checked_add(8).ok_or(EncodeError::TooLong {
        what: "OFFSET_DATA payload",
        len: data_len,
    })?;
    encode_chunk_header(
        out,
        target,
        done_flag(done),
        REPLY_TYPE_OFFSET_DATA,
        payload,
    )?;
    put_u64(out, data_offset);
    Ok(())
}

/// Header for a successful read's data, whatever the mode: a simple reply (error 0) in
/// [`ReplyMode::Simple`], which must then be followed by the *whole* requested length, or an
/// `NBD_REPLY_TYPE_OFFSET_DATA` chunk header otherwise.
pub fn encode_read_data_header(
    out: &mut Vec<u8>,
    target: &ReplyTarget,
    data_offset: u64,
    data_len: u64,
    done: bool,
) -> Result<(), EncodeError> {
    match target.mode {
        ReplyMode::Simple => encode_simple_reply(out, target, 0),
        _ => encode_offset_data_header(out, target, data_offset, data_len, done),
    }
}

/// `NBD_REPLY_TYPE_OFFSET_HOLE`: `hole_len` (nonzero) bytes of zeroes at `hole_offset`.
pub fn encode_offset_hole(
    out: &mut Vec<u8>,
    target: &ReplyTarget,
    hole_offset: u64,
    hole_len: u32,
    done: bool,
) -> Result<(), EncodeError> {
    if hole_len == 0 {
        return Err(EncodeError::Invalid("OFFSET_HOLE size must be nonzero"));
    }
    encode_chunk_header(out, target, done_flag(done), REPLY_TYPE_OFFSET_HOLE, 12)?;
    put_u64(out, hole_offset);
    put_u32(out, hole_len);
    Ok(())
}

fn check_error(error: u32, message: &str) -> Result<u16, EncodeError> {
    if error == 0 {
        return Err(EncodeError::Invalid("error chunks need a nonzero error"));
    }
    if message.len() > MAX_STRING_LEN {
        return Err(EncodeError::TooLong {
            what: "error message",
            len: message.len() as u64,
        });
    }
    // MAX_STRING_LEN < u16::MAX, so this cannot fail after the check above.
    u16::try_from(message.len()).map_err(|_| EncodeError::TooLong {
        what: "error message",
        len: message.len() as u64,
    })
}

/// `NBD_REPLY_TYPE_ERROR`: `error` (nonzero `NBD_E*`) with an optional message (may be empty).
pub fn encode_error(
    out: &mut Vec<u8>,
    target: &ReplyTarget,
    error: u32,
    message: &str,
    done: bool,
) -> Result<(), EncodeError> {
    let msg_len = check_error(error, message)?;
    encode_chunk_header(
        out,
        target,
        done_flag(done),
        REPLY_TYPE_ERROR,
        6 + u64::from(msg_len),
    )?;
    put_u32(out, error);
    put_u16(out, msg_len);
    out.extend_from_slice(message.as_bytes());
    Ok(())
}

/// `NBD_REPLY_TYPE_ERROR_OFFSET`: `error` at `error_offset`, with an optional message.
pub fn encode_error_offset(
    out: &mut Vec<u8>,
    target: &ReplyTarget,
    error: u32,
    message: &str,
    error_offset: u64,
    done: bool,
) -> Result<(), EncodeError> {
    let msg_len = check_error(error, message)?;
    encode_chunk_header(
        out,
        target,
        done_flag(done),
        REPLY_TYPE_ERROR_OFFSET,
        14 + u64::from(msg_len),
    )?;
    put_u32(out, error);
    put_u16(out, msg_len);
    out.extend_from_slice(message.as_bytes());
    put_u64(out, error_offset);
    Ok(())
}

/// One `NBD_REPLY_TYPE_BLOCK_STATUS` descriptor (32-bit length).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// Extent length (nonzero).
    pub length: u32,
    /// Status flags defined by the context (`NBD_STATE_*` for `base:allocation`).
    pub flags: u32,
}

/// One `NBD_REPLY_TYPE_BLOCK_STATUS_EXT` descriptor (64-bit length and status).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExtentExt {
    /// Extent length (nonzero).
    pub length: u64,
    /// Status flags. Written as 64 bits; contexts with 32-bit flags leave the high half zero,
    /// which is also the "32 bits padding (MUST be zero) + 32 bits flags" layout.
    pub status: u64,
}

/// `NBD_REPLY_TYPE_BLOCK_STATUS` for `context_id`: at least one descriptor, each nonzero.
/// Valid with structured replies and with extended headers.
pub fn encode_block_status(
    out: &mut Vec<u8>,
    target: &ReplyTarget,
    context_id: u32,
    extents: &[Extent],
    done: bool,
) -> Result<(), EncodeError> {
    if extents.is_empty() {
        return Err(EncodeError::Invalid(
            "block status needs at least one descriptor",
        ));
    }
    if extents.iter().any(|e| e.length == 0) {
        return Err(EncodeError::Invalid(
            "block status descriptor lengths must be nonzero",
        ));
    }
    let payload = 4 + 8 * extents.len() as u64;
    encode_chunk_header(
        out,
        target,
        done_flag(done),
        REPLY_TYPE_BLOCK_STATUS,
        payload,
    )?;
    put_u32(out, context_id);
    for e in extents {
        put_u32(out, e.length);
        put_u32(out, e.flags);
    }
    Ok(())
}

/// `NBD_REPLY_TYPE_BLOCK_STATUS_EXT` for `context_id`, with the descriptor count filled in
/// (so the header length is `count * 16 + 8`). Only valid with extended headers.
pub fn encode_block_status_ext(
    out: &mut Vec<u8>,
    target: &ReplyTarget,
    context_id: u32,
    extents: &[ExtentExt],
    done: bool,
) -> Result<(), EncodeError> {
    if !target.mode.extended() {
        return Err(EncodeError::ExtendedHeadersRequired);
    }
    if extents.is_empty() {
        return Err(EncodeError::Invalid(
            "block status needs at least one descriptor",
        ));
    }
    if extents.iter().any(|e| e.length == 0) {
        return Err(EncodeError::Invalid(
            "block status descriptor lengths must be nonzero",
        ));
    }
    let count = u32::try_from(extents.len()).map_err(|_| EncodeError::TooLong {
        what: "descriptor count",
        len: extents.len() as u64,
    })?;
    let payload = 8 + 16 * u64::from(count);
    encode_chunk_header(
        out,
        target,
        done_flag(done),
        REPLY_TYPE_BLOCK_STATUS_EXT,
        payload,
    )?;
    put_u32(out, context_id);
    put_u32(out, count);
    for e in extents {
        put_u64(out, e.length);
        put_u64(out, e.status);
    }
    Ok(())
}

/// Complete successful reply without payload (any command but a non-empty read): a simple
/// reply with error 0 in [`ReplyMode::Simple`], otherwise `NBD_REPLY_TYPE_NONE` + DONE (always
/// valid with chunks, including for a zero-length read).
pub fn encode_ok(out: &mut Vec<u8>, target: &ReplyTarget) -> Result<(), EncodeError> {
    match target.mode {
        ReplyMode::Simple => encode_simple_reply(out, target, 0),
        _ => encode_none(out, target),
    }
}

/// Complete error reply: a simple reply carrying `error` in [`ReplyMode::Simple`] (the message
/// cannot be sent), otherwise a final `NBD_REPLY_TYPE_ERROR` chunk with the message.
pub fn encode_error_reply(
    out: &mut Vec<u8>,
    target: &ReplyTarget,
    error: u32,
    message: &str,
) -> Result<(), EncodeError> {
    match target.mode {
        ReplyMode::Simple => {
            if error == 0 {
                return Err(EncodeError::Invalid("error replies need a nonzero error"));
            }
            encode_simple_reply(out, target, error)
        }
        _ => encode_error(out, target, error, message, true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        assert!(s.len() % 2 == 0, "odd hex");
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn target(mode: ReplyMode) -> ReplyTarget {
        ReplyTarget {
            mode,
            cookie: 0x0102_0304_0506_0708,
            offset: 0x1000,
        }
    }

    // ---- requests -------------------------------------------------------------------------

    #[test]
    fn decode_compact_read() {
        let buf = hex("25609513 0001 0000 1122334455667788 0000000000010000 00001000");
        assert_eq!(buf.len(), COMPACT_REQUEST_LEN);
        let d = decode_request(&buf, false).unwrap();
        assert_eq!(
            d,
            Decoded::Complete {
                value: Request {
                    flags: CMD_FLAG_FUA,
                    typ: CMD_READ,
                    cookie: 0x1122_3344_5566_7788,
                    offset: 0x10000,
                    length: 0x1000,
                    payload_len: 0,
                },
                consumed: 28,
            }
        );
    }

    #[test]
    fn decode_compact_write_reports_payload_but_does_not_consume_it() {
        let mut buf = hex("25609513 0000 0001 0000000000000001 0000000000000200 00000004");
        buf.extend_from_slice(b"DATA");
        let Decoded::Complete { value, consumed } = decode_request(&buf, false).unwrap() else {
            panic!("incomplete")
        };
        assert_eq!(consumed, 28);
        assert_eq!(value.command(), Some(Command::Write));
        assert_eq!(value.payload_len, 4);
        assert_eq!(&buf[consumed..], b"DATA");
    }

    #[test]
    fn decode_compact_ignores_payload_len_flag_for_framing() {
        // PAYLOAD_LEN is invalid in compact mode (validate rejects it); framing follows the
        // compact rule: only WRITE carries a payload.
        let buf = hex("25609513 0020 0004 0000000000000001 0000000000000000 00001000");
        let Decoded::Complete { value, .. } = decode_request(&buf, false).unwrap() else {
            panic!()
        };
        assert_eq!(value.payload_len, 0);
    }

    #[test]
    fn decode_extended_write_and_trim() {
        let buf = hex("21e41c71 0021 0001 00000000000000aa 0000000000001000 0000000000000200");
        assert_eq!(buf.len(), EXTENDED_REQUEST_LEN);
        let Decoded::Complete { value, consumed } = decode_request(&buf, true).unwrap() else {
            panic!()
        };
        assert_eq!(consumed, 32);
        assert_eq!(value.flags, CMD_FLAG_PAYLOAD_LEN | CMD_FLAG_FUA);
        assert_eq!(value.payload_len, 0x200);

        // A 64-bit effect length on TRIM: no payload.
        let buf = hex("21e41c71 0000 0004 00000000000000ab 0000000000000000 0000000200000000");
        let Decoded::Complete { value, .. } = decode_request(&buf, true).unwrap() else {
            panic!()
        };
        assert_eq!(value.length, 0x2_0000_0000);
        assert_eq!(value.payload_len, 0);
    }

    #[test]
    fn extended_write_without_payload_len_still_carries_its_data() {
        // QEMU sends extended WRITEs without NBD_CMD_FLAG_PAYLOAD_LEN: the length is the payload.
        let buf = hex("21e41c71 0000 0001 0000000000000001 0000000000000000 0000000000000200");
        let Decoded::Complete { value, .. } = decode_request(&buf, true).unwrap() else {
            panic!()
        };
        assert_eq!(value.payload_len, 0x200);
    }

    #[test]
    fn decode_incomplete_reports_missing_bytes() {
        let full = hex("25609513 0000 0000 0000000000000001 0000000000000000 00000200");
        for n in 0..full.len() {
            assert_eq!(
                decode_request(&full[..n], false).unwrap(),
                Decoded::Incomplete { need: 28 - n },
                "prefix {n}"
            );
        }
        let ext = hex("21e41c71");
        assert_eq!(
            decode_request(&ext, true).unwrap(),
            Decoded::Incomplete { need: 28 }
        );
    }

    #[test]
    fn decode_bad_magic_is_early_and_mode_strict() {
        // Garbage is rejected as soon as 4 bytes arrived.
        assert_eq!(
            decode_request(&hex("deadbeef"), false),
            Err(CodecError::BadMagic {
                found: 0xdead_beef,
                expected: REQUEST_MAGIC
            })
        );
        // A compact header after extended headers were negotiated is a protocol violation.
        let compact = hex("25609513 0000 0000 0000000000000001 0000000000000000 00000200 00000000");
        assert!(matches!(
            decode_request(&compact, true),
            Err(CodecError::BadMagic {
                expected: EXTENDED_REQUEST_MAGIC,
                ..
            })
        ));
        let ext = hex("21e41c71 0000 0000 0000000000000001 0000000000000000 0000000000000200");
        assert!(matches!(
            decode_request(&ext, false),
            Err(CodecError::BadMagic {
                expected: REQUEST_MAGIC,
                ..
            })
        ));
    }

    #[test]
    fn oversize_payload_is_rejected_from_the_header_alone() {
        let over = DEFAULT_MAX_PAYLOAD + 1;
        let req = Request {
            flags: 0,
            typ: CMD_WRITE,
            cookie: 7,
            offset: 0,
            length: u64::from(over),
            payload_len: 0,
        };
        let mut buf = Vec::new();
        encode_request(&mut buf, &req, false).unwrap();
        match decode_request(&buf, false) {
            Err(CodecError::PayloadTooLarge {
                request,
                max,
                header_len,
            }) => {
                assert_eq!(request.cookie, 7);
                assert_eq!(request.payload_len, u64::from(over));
                assert_eq!(max, u64::from(DEFAULT_MAX_PAYLOAD));
                assert_eq!(header_len, 28);
            }
            other => panic!("{other:?}"),
        }
        // Exactly the limit is fine; a large READ is not a payload.
        let mut buf = Vec::new();
        encode_request(
            &mut buf,
            &Request {
                length: u64::from(DEFAULT_MAX_PAYLOAD),
                ..req
            },
            false,
        )
        .unwrap();
        assert!(matches!(
            decode_request(&buf, false),
            Ok(Decoded::Complete { .. })
        ));
        let mut buf = Vec::new();
        encode_request(
            &mut buf,
            &Request {
                typ: CMD_READ,
                ..req
            },
            false,
        )
        .unwrap();
        assert!(matches!(
            decode_request(&buf, false),
            Ok(Decoded::Complete { .. })
        ));
        // Custom limit.
        assert!(matches!(
            decode_request_with_limit(&buf, false, 0),
            Ok(Decoded::Complete { .. })
        ));
        let mut buf = Vec::new();
        encode_request(&mut buf, &Request { length: 2, ..req }, false).unwrap();
        assert!(matches!(
            decode_request_with_limit(&buf, false, 1),
            Err(CodecError::PayloadTooLarge { .. })
        ));
    }

    #[test]
    fn compact_request_encode_rejects_64bit_length() {
        let req = Request {
            flags: 0,
            typ: CMD_TRIM,
            cookie: 1,
            offset: 0,
            length: 1 << 32,
            payload_len: 0,
        };
        assert!(encode_request(&mut Vec::new(), &req, false).is_err());
        assert!(encode_request(&mut Vec::new(), &req, true).is_ok());
    }

    proptest! {
        #[test]
        fn request_round_trip(flags: u16, typ: u16, cookie: u64, offset: u64, length: u64, extended: bool) {
            let length = if extended { length } else { length & 0xffff_ffff };
            let req = Request { flags, typ, cookie, offset, length, payload_len: 0 };
            let mut buf = Vec::new();
            encode_request(&mut buf, &req, extended).unwrap();
            match decode_request_with_limit(&buf, extended, u64::MAX).unwrap() {
                Decoded::Complete { value, consumed } => {
                    prop_assert_eq!(consumed, buf.len());
                    prop_assert_eq!(Request { payload_len: 0, ..value }, req);
                    let carries = typ == CMD_WRITE || (extended && flags & CMD_FLAG_PAYLOAD_LEN != 0);
                    prop_assert_eq!(value.payload_len, if carries { length } else { 0 });
                }
                Decoded::Incomplete { .. } => prop_assert!(false, "incomplete"),
            }
        }

        #[test]
        fn decode_random_bytes_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..64), extended: bool) {
            match decode_request(&buf, extended) {
                Ok(Decoded::Complete { consumed, .. }) => prop_assert!(consumed <= buf.len()),
                Ok(Decoded::Incomplete { need }) => prop_assert!(need > 0 && buf.len() + need <= 32),
                Err(_) => {}
            }
        }
    }

    // ---- replies --------------------------------------------------------------------------

    #[test]
    fn simple_reply_golden() {
        let mut out = Vec::new();
        encode_simple_reply(&mut out, &target(ReplyMode::Simple), EIO).unwrap();
        assert_eq!(out, hex("67446698 00000005 0102030405060708"));
        assert_eq!(out.len(), SIMPLE_REPLY_LEN);
        // Allowed (for payload-less replies) with structured replies...
        assert!(encode_simple_reply(&mut Vec::new(), &target(ReplyMode::Structured), 0).is_ok());
        // ...never with extended headers.
        let mut out = Vec::new();
        assert_eq!(
            encode_simple_reply(&mut out, &target(ReplyMode::Extended), 0),
            Err(EncodeError::SimpleReplyInExtendedMode)
        );
        assert!(out.is_empty());
    }

    #[test]
    fn chunks_refused_in_simple_mode() {
        let t = target(ReplyMode::Simple);
        let mut out = Vec::new();
        assert_eq!(
            encode_none(&mut out, &t),
            Err(EncodeError::ChunksNotNegotiated)
        );
        assert_eq!(
            encode_error(&mut out, &t, EIO, "", true),
            Err(EncodeError::ChunksNotNegotiated)
        );
        assert_eq!(
            encode_block_status(
                &mut out,
                &t,
                1,
                &[Extent {
                    length: 1,
                    flags: 0
                }],
                true
            ),
            Err(EncodeError::ChunksNotNegotiated)
        );
        assert!(out.is_empty());
    }

    #[test]
    fn none_golden() {
        let mut out = Vec::new();
        encode_none(&mut out, &target(ReplyMode::Structured)).unwrap();
        assert_eq!(out, hex("668e33ef 0001 0000 0102030405060708 00000000"));
        assert_eq!(out.len(), STRUCTURED_REPLY_LEN);
        let mut out = Vec::new();
        encode_none(&mut out, &target(ReplyMode::Extended)).unwrap();
        assert_eq!(
            out,
            hex("6e8a278c 0001 0000 0102030405060708 0000000000001000 0000000000000000")
        );
        assert_eq!(out.len(), EXTENDED_REPLY_LEN);
    }

    #[test]
    fn offset_data_golden() {
        let mut out = Vec::new();
        encode_offset_data_header(&mut out, &target(ReplyMode::Structured), 0x1200, 4, false)
            .unwrap();
        out.extend_from_slice(b"abcd");
        assert_eq!(
            out,
            hex("668e33ef 0000 0001 0102030405060708 0000000c 0000000000001200 61626364")
        );
        let mut out = Vec::new();
        encode_offset_data_header(&mut out, &target(ReplyMode::Extended), 0x1200, 4, true).unwrap();
        assert_eq!(
            out,
            hex(
                "6e8a278c 0001 0001 0102030405060708 0000000000001000 000000000000000c
                 0000000000001200"
            )
        );
        assert!(
            encode_offset_data_header(&mut out, &target(ReplyMode::Extended), 0, 0, true).is_err()
        );
        // Structured: 32-bit length field.
        assert!(matches!(
            encode_offset_data_header(
                &mut Vec::new(),
                &target(ReplyMode::Structured),
                0,
                u64::from(u32::MAX),
                true
            ),
            Err(EncodeError::TooLong { .. })
        ));
    }

    #[test]
    fn read_data_header_per_mode() {
        let mut out = Vec::new();
        encode_read_data_header(&mut out, &target(ReplyMode::Simple), 0x1000, 512, true).unwrap();
        assert_eq!(out, hex("67446698 00000000 0102030405060708"));
        let mut out = Vec::new();
        encode_read_data_header(&mut out, &target(ReplyMode::Structured), 0x1000, 512, true)
            .unwrap();
        assert_eq!(
            out,
            hex("668e33ef 0001 0001 0102030405060708 00000208 0000000000001000")
        );
    }

    #[test]
    fn offset_hole_golden() {
        let mut out = Vec::new();
        encode_offset_hole(
            &mut out,
            &target(ReplyMode::Structured),
            0x2000,
            0x1000,
            true,
        )
        .unwrap();
        assert_eq!(
            out,
            hex("668e33ef 0001 0002 0102030405060708 0000000c 0000000000002000 00001000")
        );
        let mut out = Vec::new();
        encode_offset_hole(
            &mut out,
            &target(ReplyMode::Extended),
            0x2000,
            0x1000,
            false,
        )
        .unwrap();
        assert_eq!(
            out,
            hex(
                "6e8a278c 0000 0002 0102030405060708 0000000000001000 000000000000000c
                 0000000000002000 00001000"
            )
        );
        assert!(encode_offset_hole(&mut out, &target(ReplyMode::Extended), 0, 0, true).is_err());
    }

    #[test]
    fn error_golden() {
        let mut out = Vec::new();
        encode_error(
            &mut out,
            &target(ReplyMode::Structured),
            EINVAL,
            "bad",
            true,
        )
        .unwrap();
        assert_eq!(
            out,
            hex("668e33ef 0001 8001 0102030405060708 00000009 00000016 0003 626164")
        );
        let mut out = Vec::new();
        encode_error(&mut out, &target(ReplyMode::Extended), EIO, "", true).unwrap();
        assert_eq!(
            out,
            hex(
                "6e8a278c 0001 8001 0102030405060708 0000000000001000 0000000000000006
                 00000005 0000"
            )
        );
        assert_eq!(
            encode_error(&mut out, &target(ReplyMode::Extended), 0, "", true),
            Err(EncodeError::Invalid("error chunks need a nonzero error"))
        );
        let long = "x".repeat(MAX_STRING_LEN + 1);
        assert!(matches!(
            encode_error(&mut out, &target(ReplyMode::Extended), EIO, &long, true),
            Err(EncodeError::TooLong { .. })
        ));
    }

    #[test]
    fn error_offset_golden() {
        let mut out = Vec::new();
        encode_error_offset(
            &mut out,
            &target(ReplyMode::Structured),
            EIO,
            "io",
            0x1800,
            false,
        )
        .unwrap();
        assert_eq!(
            out,
            hex(
                "668e33ef 0000 8002 0102030405060708 00000010 00000005 0002 696f
                 0000000000001800"
            )
        );
    }

    #[test]
    fn block_status_golden() {
        let mut out = Vec::new();
        encode_block_status(
            &mut out,
            &target(ReplyMode::Structured),
            1,
            &[
                Extent {
                    length: 0x1000,
                    flags: 0,
                },
                Extent {
                    length: 0x3000,
                    flags: STATE_HOLE | STATE_ZERO,
                },
            ],
            true,
        )
        .unwrap();
        assert_eq!(
            out,
            hex("668e33ef 0001 0005 0102030405060708 00000014 00000001
                 00001000 00000000 00003000 00000003")
        );
        // Compact block status is also allowed with extended headers.
        let mut out = Vec::new();
        encode_block_status(
            &mut out,
            &target(ReplyMode::Extended),
            2,
            &[Extent {
                length: 0x200,
                flags: 0,
            }],
            false,
        )
        .unwrap();
        assert_eq!(
            out,
            hex(
                "6e8a278c 0000 0005 0102030405060708 0000000000001000 000000000000000c
                 00000002 00000200 00000000"
            )
        );
        assert!(encode_block_status(&mut out, &target(ReplyMode::Extended), 1, &[], true).is_err());
        assert!(encode_block_status(
            &mut out,
            &target(ReplyMode::Extended),
            1,
            &[Extent {
                length: 0,
                flags: 0
            }],
            true
        )
        .is_err());
    }

    #[test]
    fn block_status_ext_golden() {
        let mut out = Vec::new();
        encode_block_status_ext(
            &mut out,
            &target(ReplyMode::Extended),
            1,
            &[
                ExtentExt {
                    length: 0x1_0000_0000,
                    status: u64::from(STATE_HOLE | STATE_ZERO),
                },
                ExtentExt {
                    length: 0x1000,
                    status: 0,
                },
            ],
            true,
        )
        .unwrap();
        assert_eq!(
            out,
            hex(
                "6e8a278c 0001 0006 0102030405060708 0000000000001000 0000000000000028
                 00000001 00000002
                 0000000100000000 0000000000000003
                 0000000000001000 0000000000000000"
            )
        );
        assert_eq!(
            encode_block_status_ext(
                &mut Vec::new(),
                &target(ReplyMode::Structured),
                1,
                &[ExtentExt {
                    length: 1,
                    status: 0
                }],
                true
            ),
            Err(EncodeError::ExtendedHeadersRequired)
        );
    }

    #[test]
    fn ok_and_error_reply_per_mode() {
        let mut out = Vec::new();
        encode_ok(&mut out, &target(ReplyMode::Simple)).unwrap();
        assert_eq!(out, hex("67446698 00000000 0102030405060708"));
        let mut out = Vec::new();
        encode_ok(&mut out, &target(ReplyMode::Structured)).unwrap();
        assert_eq!(out, hex("668e33ef 0001 0000 0102030405060708 00000000"));

        let mut out = Vec::new();
        encode_error_reply(&mut out, &target(ReplyMode::Simple), EPERM, "read-only").unwrap();
        assert_eq!(out, hex("67446698 00000001 0102030405060708"));
        let mut out = Vec::new();
        encode_error_reply(&mut out, &target(ReplyMode::Extended), EPERM, "ro").unwrap();
        assert_eq!(
            out,
            hex(
                "6e8a278c 0001 8001 0102030405060708 0000000000001000 0000000000000008
                 00000001 0002 726f"
            )
        );
        assert!(encode_error_reply(&mut out, &target(ReplyMode::Simple), 0, "").is_err());
    }

    #[test]
    fn reply_target_from_request() {
        let req = Request {
            flags: 0,
            typ: CMD_READ,
            cookie: 9,
            offset: 4096,
            length: 512,
            payload_len: 0,
        };
        let t = ReplyTarget::new(ReplyMode::Extended, &req);
        assert_eq!(
            t,
            ReplyTarget {
                mode: ReplyMode::Extended,
                cookie: 9,
                offset: 4096
            }
        );
        assert!(t.mode.chunks() && t.mode.extended());
        assert!(!ReplyMode::Simple.chunks());
        assert!(ReplyMode::Structured.chunks() && !ReplyMode::Structured.extended());
    }
}
