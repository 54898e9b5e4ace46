//! NBD wire constants, named and grouped as in proto.md.
//!
//! Every constant carries the proto.md name without the `NBD_` prefix (`NBD_OPT_GO` is
//! [`OPT_GO`]). Values were checked against `doc/proto.md` of NetworkBlockDevice/nbd, including
//! the `NBD_OPT_EXTENDED_HEADERS` additions (extended request/reply headers,
//! `NBD_CMD_FLAG_PAYLOAD_LEN`, `NBD_REPLY_TYPE_BLOCK_STATUS_EXT`, `NBD_REP_ERR_EXT_HEADER_REQD`).

// ---------------------------------------------------------------------------------------------
// "Newstyle negotiation" / "Fixed newstyle negotiation"
// ---------------------------------------------------------------------------------------------

/// `NBDMAGIC` (ASCII "NBDMAGIC", also `INIT_PASSWD`): first 8 bytes the server sends.
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT` (ASCII "IHAVEOPT"): second greeting word, and the prefix of every client option.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Magic prefixing every option reply in fixed newstyle negotiation.
pub const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;

// "Values" > "Handshake phase" > "Handshake flags" (16 bits, server → client).

/// `NBD_FLAG_FIXED_NEWSTYLE`: the server supports fixed newstyle.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
/// `NBD_FLAG_NO_ZEROES`: the server can omit the 124 zero bytes after `NBD_OPT_EXPORT_NAME`.
pub const FLAG_NO_ZEROES: u16 = 1 << 1;

// "Client flags" (32 bits, client → server).

/// `NBD_FLAG_C_FIXED_NEWSTYLE`.
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
/// `NBD_FLAG_C_NO_ZEROES`.
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;
/// Every client flag this server understands; any other bit closes the connection.
pub const KNOWN_CLIENT_FLAGS: u32 = FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES;

// "Transmission flags" (16 bits, sent with the export size).

/// `NBD_FLAG_HAS_FLAGS`: MUST always be set.
pub const FLAG_HAS_FLAGS: u16 = 1 << 0;
/// `NBD_FLAG_READ_ONLY`.
pub const FLAG_READ_ONLY: u16 = 1 << 1;
/// `NBD_FLAG_SEND_FLUSH`.
pub const FLAG_SEND_FLUSH: u16 = 1 << 2;
/// `NBD_FLAG_SEND_FUA`.
pub const FLAG_SEND_FUA: u16 = 1 << 3;
/// `NBD_FLAG_ROTATIONAL`.
pub const FLAG_ROTATIONAL: u16 = 1 << 4;
/// `NBD_FLAG_SEND_TRIM`.
pub const FLAG_SEND_TRIM: u16 = 1 << 5;
/// `NBD_FLAG_SEND_WRITE_ZEROES`.
pub const FLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
/// `NBD_FLAG_SEND_DF`: MUST be clear unless structured replies (or extended headers) were negotiated.
pub const FLAG_SEND_DF: u16 = 1 << 7;
/// `NBD_FLAG_CAN_MULTI_CONN`.
pub const FLAG_CAN_MULTI_CONN: u16 = 1 << 8;
/// `NBD_FLAG_SEND_RESIZE` (experimental RESIZE extension).
pub const FLAG_SEND_RESIZE: u16 = 1 << 9;
/// `NBD_FLAG_SEND_CACHE`.
pub const FLAG_SEND_CACHE: u16 = 1 << 10;
/// `NBD_FLAG_SEND_FAST_ZERO`: MUST be clear if `NBD_FLAG_SEND_WRITE_ZEROES` is.
pub const FLAG_SEND_FAST_ZERO: u16 = 1 << 11;
/// `NBD_FLAG_BLOCK_STAT_PAYLOAD` (block status payload extension; not used by this server).
pub const FLAG_BLOCK_STAT_PAYLOAD: u16 = 1 << 12;

// "Option types" (32 bits).

/// `NBD_OPT_EXPORT_NAME`.
pub const OPT_EXPORT_NAME: u32 = 1;
/// `NBD_OPT_ABORT`.
pub const OPT_ABORT: u32 = 2;
/// `NBD_OPT_LIST`.
pub const OPT_LIST: u32 = 3;
/// `NBD_OPT_PEEK_EXPORT` (withdrawn, not in use: answered with `NBD_REP_ERR_UNSUP`).
pub const OPT_PEEK_EXPORT: u32 = 4;
/// `NBD_OPT_STARTTLS`.
pub const OPT_STARTTLS: u32 = 5;
/// `NBD_OPT_INFO`.
pub const OPT_INFO: u32 = 6;
/// `NBD_OPT_GO`.
pub const OPT_GO: u32 = 7;
/// `NBD_OPT_STRUCTURED_REPLY`.
pub const OPT_STRUCTURED_REPLY: u32 = 8;
/// `NBD_OPT_LIST_META_CONTEXT`.
pub const OPT_LIST_META_CONTEXT: u32 = 9;
/// `NBD_OPT_SET_META_CONTEXT`.
pub const OPT_SET_META_CONTEXT: u32 = 10;
/// `NBD_OPT_EXTENDED_HEADERS`.
pub const OPT_EXTENDED_HEADERS: u32 = 11;

// "Option reply types" (32 bits). Errors have bit 31 set.

/// `NBD_REP_ACK`.
pub const REP_ACK: u32 = 1;
/// `NBD_REP_SERVER`.
pub const REP_SERVER: u32 = 2;
/// `NBD_REP_INFO`.
pub const REP_INFO: u32 = 3;
/// `NBD_REP_META_CONTEXT`.
pub const REP_META_CONTEXT: u32 = 4;
/// Bit 31: marks an error reply.
pub const REP_FLAG_ERROR: u32 = 1 << 31;
/// `NBD_REP_ERR_UNSUP`.
pub const REP_ERR_UNSUP: u32 = REP_FLAG_ERROR + 1;
/// `NBD_REP_ERR_POLICY`.
pub const REP_ERR_POLICY: u32 = REP_FLAG_ERROR + 2;
/// `NBD_REP_ERR_INVALID`.
pub const REP_ERR_INVALID: u32 = REP_FLAG_ERROR + 3;
/// `NBD_REP_ERR_PLATFORM`.
pub const REP_ERR_PLATFORM: u32 = REP_FLAG_ERROR + 4;
/// `NBD_REP_ERR_TLS_REQD`.
pub const REP_ERR_TLS_REQD: u32 = REP_FLAG_ERROR + 5;
/// `NBD_REP_ERR_UNKNOWN`.
pub const REP_ERR_UNKNOWN: u32 = REP_FLAG_ERROR + 6;
/// `NBD_REP_ERR_SHUTDOWN`.
pub const REP_ERR_SHUTDOWN: u32 = REP_FLAG_ERROR + 7;
/// `NBD_REP_ERR_BLOCK_SIZE_REQD`.
pub const REP_ERR_BLOCK_SIZE_REQD: u32 = REP_FLAG_ERROR + 8;
/// `NBD_REP_ERR_TOO_BIG`.
pub const REP_ERR_TOO_BIG: u32 = REP_FLAG_ERROR + 9;
/// `NBD_REP_ERR_EXT_HEADER_REQD`.
pub const REP_ERR_EXT_HEADER_REQD: u32 = REP_FLAG_ERROR + 10;

// `NBD_REP_INFO` information types (16 bits).

/// `NBD_INFO_EXPORT`: size u64 + transmission flags u16 (reply length 12).
pub const INFO_EXPORT: u16 = 0;
/// `NBD_INFO_NAME`: canonical export name.
pub const INFO_NAME: u16 = 1;
/// `NBD_INFO_DESCRIPTION`: human-readable description.
pub const INFO_DESCRIPTION: u16 = 2;
/// `NBD_INFO_BLOCK_SIZE`: minimum, preferred, maximum payload (u32 each; reply length 14).
pub const INFO_BLOCK_SIZE: u16 = 3;

// ---------------------------------------------------------------------------------------------
// "Transmission": request and reply magics
// ---------------------------------------------------------------------------------------------

/// `NBD_REQUEST_MAGIC`: compact (28-byte) request header.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// `NBD_EXTENDED_REQUEST_MAGIC`: extended (32-byte) request header.
pub const EXTENDED_REQUEST_MAGIC: u32 = 0x21e4_1c71;
/// `NBD_SIMPLE_REPLY_MAGIC`: simple (16-byte) reply header.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// `NBD_STRUCTURED_REPLY_MAGIC`: structured (20-byte) reply chunk header.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;
/// `NBD_EXTENDED_REPLY_MAGIC`: extended (32-byte) reply chunk header.
pub const EXTENDED_REPLY_MAGIC: u32 = 0x6e8a_278c;

// "Command flags" (16 bits).

/// `NBD_CMD_FLAG_FUA`: valid on every command once `NBD_FLAG_SEND_FUA` is advertised.
pub const CMD_FLAG_FUA: u16 = 1 << 0;
/// `NBD_CMD_FLAG_NO_HOLE`: `NBD_CMD_WRITE_ZEROES` only.
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;
/// `NBD_CMD_FLAG_DF`: `NBD_CMD_READ` only, and only with `NBD_FLAG_SEND_DF`.
pub const CMD_FLAG_DF: u16 = 1 << 2;
/// `NBD_CMD_FLAG_REQ_ONE`: `NBD_CMD_BLOCK_STATUS` only.
pub const CMD_FLAG_REQ_ONE: u16 = 1 << 3;
/// `NBD_CMD_FLAG_FAST_ZERO`: `NBD_CMD_WRITE_ZEROES` only.
pub const CMD_FLAG_FAST_ZERO: u16 = 1 << 4;
/// `NBD_CMD_FLAG_PAYLOAD_LEN`: extended headers only; *length* is a payload length.
pub const CMD_FLAG_PAYLOAD_LEN: u16 = 1 << 5;

// "Structured and extended header reply flags" (16 bits).

/// `NBD_REPLY_FLAG_DONE`: final chunk of a reply.
pub const REPLY_FLAG_DONE: u16 = 1 << 0;

// "Structured reply types" (16 bits). Error chunk types have bit 15 set.

/// `NBD_REPLY_TYPE_NONE`: no payload; always with `NBD_REPLY_FLAG_DONE`.
pub const REPLY_TYPE_NONE: u16 = 0;
/// `NBD_REPLY_TYPE_OFFSET_DATA`: offset u64 + data.
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
/// `NBD_REPLY_TYPE_OFFSET_HOLE`: offset u64 + hole size u32.
pub const REPLY_TYPE_OFFSET_HOLE: u16 = 2;
/// `NBD_REPLY_TYPE_BLOCK_STATUS`: context id u32 + (length u32, flags u32)*.
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
/// `NBD_REPLY_TYPE_BLOCK_STATUS_EXT`: context id u32 + count u32 + (length u64, status u64)*.
pub const REPLY_TYPE_BLOCK_STATUS_EXT: u16 = 6;
/// Bit 15: marks an error chunk.
pub const REPLY_TYPE_FLAG_ERROR: u16 = 1 << 15;
/// `NBD_REPLY_TYPE_ERROR`: error u32 + message length u16 + message.
pub const REPLY_TYPE_ERROR: u16 = REPLY_TYPE_FLAG_ERROR + 1;
/// `NBD_REPLY_TYPE_ERROR_OFFSET`: error u32 + message length u16 + message + offset u64.
pub const REPLY_TYPE_ERROR_OFFSET: u16 = REPLY_TYPE_FLAG_ERROR + 2;

// "Request types" (16 bits).

/// `NBD_CMD_READ`.
pub const CMD_READ: u16 = 0;
/// `NBD_CMD_WRITE`.
pub const CMD_WRITE: u16 = 1;
/// `NBD_CMD_DISC`.
pub const CMD_DISC: u16 = 2;
/// `NBD_CMD_FLUSH`.
pub const CMD_FLUSH: u16 = 3;
/// `NBD_CMD_TRIM`.
pub const CMD_TRIM: u16 = 4;
/// `NBD_CMD_CACHE`.
pub const CMD_CACHE: u16 = 5;
/// `NBD_CMD_WRITE_ZEROES`.
pub const CMD_WRITE_ZEROES: u16 = 6;
/// `NBD_CMD_BLOCK_STATUS`.
pub const CMD_BLOCK_STATUS: u16 = 7;
/// `NBD_CMD_RESIZE` (experimental RESIZE extension; not supported).
pub const CMD_RESIZE: u16 = 8;

// "Error values" (32 bits, in simple replies and error chunks).

/// `NBD_EPERM`: operation not permitted (write to a read-only export).
pub const EPERM: u32 = 1;
/// `NBD_EIO`: input/output error.
pub const EIO: u32 = 5;
/// `NBD_ENOMEM`: cannot allocate memory (SHOULD NOT be used).
pub const ENOMEM: u32 = 12;
/// `NBD_EINVAL`: invalid argument.
pub const EINVAL: u32 = 22;
/// `NBD_ENOSPC`: no space left on device (write past the end, or pool full).
pub const ENOSPC: u32 = 28;
/// `NBD_EOVERFLOW`: value too large (READ with DF, or oversize payload-less command).
pub const EOVERFLOW: u32 = 75;
/// `NBD_ENOTSUP`: operation not supported (WRITE_ZEROES with FAST_ZERO only).
pub const ENOTSUP: u32 = 95;
/// `NBD_ESHUTDOWN`: server shutting down.
pub const ESHUTDOWN: u32 = 108;

// ---------------------------------------------------------------------------------------------
// "Metadata querying" > "`base:allocation` metadata context"
// ---------------------------------------------------------------------------------------------

/// Name of the one context the spec defines.
pub const CONTEXT_BASE_ALLOCATION: &str = "base:allocation";
/// `NBD_STATE_HOLE`: extent not allocated.
pub const STATE_HOLE: u32 = 1 << 0;
/// `NBD_STATE_ZERO`: extent reads as zeroes.
pub const STATE_ZERO: u32 = 1 << 1;

// ---------------------------------------------------------------------------------------------
// Limits ("Conventions", "Block size constraints")
// ---------------------------------------------------------------------------------------------

/// Strings (export names, messages, context names) MUST be no longer than this.
pub const MAX_STRING_LEN: usize = 4096;
/// Zero padding after the `NBD_OPT_EXPORT_NAME` reply unless `NBD_FLAG_C_NO_ZEROES`.
pub const EXPORT_NAME_ZEROES: usize = 124;
/// Portable maximum payload (2^25): never to be treated as a denial of service.
pub const DEFAULT_MAX_PAYLOAD: u32 = 32 * 1024 * 1024;
/// Default preferred block size.
pub const DEFAULT_PREFERRED_BLOCK: u32 = 4096;
/// Largest minimum block size the spec allows (2^16).
pub const MAX_MIN_BLOCK: u32 = 65536;

/// Transmission-phase commands (`NBD_CMD_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Command {
    Read,
    Write,
    Disc,
    Flush,
    Trim,
    Cache,
    WriteZeroes,
    BlockStatus,
    Resize,
}

impl Command {
    /// Decode a request *type* field; `None` for a value proto.md does not define.
    pub fn from_u16(v: u16) -> Option<Command> {
        Some(match v {
            CMD_READ => Command::Read,
            CMD_WRITE => Command::Write,
            CMD_DISC => Command::Disc,
            CMD_FLUSH => Command::Flush,
            CMD_TRIM => Command::Trim,
            CMD_CACHE => Command::Cache,
            CMD_WRITE_ZEROES => Command::WriteZeroes,
            CMD_BLOCK_STATUS => Command::BlockStatus,
            CMD_RESIZE => Command::Resize,
            _ => return None,
        })
    }

    /// The wire value.
    pub fn code(self) -> u16 {
        match self {
            Command::Read => CMD_READ,
            Command::Write => CMD_WRITE,
            Command::Disc => CMD_DISC,
            Command::Flush => CMD_FLUSH,
            Command::Trim => CMD_TRIM,
            Command::Cache => CMD_CACHE,
            Command::WriteZeroes => CMD_WRITE_ZEROES,
            Command::BlockStatus => CMD_BLOCK_STATUS,
            Command::Resize => CMD_RESIZE,
        }
    }
}

/// Handshake options (`NBD_OPT_*`) this server knows. `NBD_OPT_PEEK_EXPORT` (withdrawn) is
/// deliberately absent: it decodes to `None` and is answered like any unknown option.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OptionCode {
    ExportName,
    Abort,
    List,
    StartTls,
    Info,
    Go,
    StructuredReply,
    ListMetaContext,
    SetMetaContext,
    ExtendedHeaders,
}

impl OptionCode {
    /// Decode an option field; `None` for an option this server does not implement.
    pub fn from_u32(v: u32) -> Option<OptionCode> {
        Some(match v {
            OPT_EXPORT_NAME => OptionCode::ExportName,
            OPT_ABORT => OptionCode::Abort,
            OPT_LIST => OptionCode::List,
            OPT_STARTTLS => OptionCode::StartTls,
            OPT_INFO => OptionCode::Info,
            OPT_GO => OptionCode::Go,
            OPT_STRUCTURED_REPLY => OptionCode::StructuredReply,
            OPT_LIST_META_CONTEXT => OptionCode::ListMetaContext,
            OPT_SET_META_CONTEXT => OptionCode::SetMetaContext,
            OPT_EXTENDED_HEADERS => OptionCode::ExtendedHeaders,
            _ => return None,
        })
    }

    /// The wire value.
    pub fn code(self) -> u32 {
        match self {
            OptionCode::ExportName => OPT_EXPORT_NAME,
            OptionCode::Abort => OPT_ABORT,
            OptionCode::List => OPT_LIST,
            OptionCode::StartTls => OPT_STARTTLS,
            OptionCode::Info => OPT_INFO,
            OptionCode::Go => OPT_GO,
            OptionCode::StructuredReply => OPT_STRUCTURED_REPLY,
            OptionCode::ListMetaContext => OPT_LIST_META_CONTEXT,
            OptionCode::SetMetaContext => OPT_SET_META_CONTEXT,
            OptionCode::ExtendedHeaders => OPT_EXTENDED_HEADERS,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magics_spell_their_ascii_names() {
        assert_eq!(
            &NBDMAGIC
                .to_le_bytes()
                .iter()
                .rev()
                .copied()
                .collect::<Vec<u8>>(),
            b"NBDMAGIC"
        );
        assert_eq!(
            &IHAVEOPT
                .to_le_bytes()
                .iter()
                .rev()
                .copied()
                .collect::<Vec<u8>>(),
            b"IHAVEOPT"
        );
    }

    #[test]
    fn values_match_proto_md() {
        assert_eq!(REPLY_MAGIC, 0x3e889045565a9);
        assert_eq!(REP_ERR_UNSUP, 0x8000_0001);
        assert_eq!(REP_ERR_EXT_HEADER_REQD, 0x8000_000a);
        assert_eq!(REPLY_TYPE_ERROR, 32769);
        assert_eq!(REPLY_TYPE_ERROR_OFFSET, 32770);
        assert_eq!(FLAG_BLOCK_STAT_PAYLOAD, 4096);
        assert_eq!(FLAG_SEND_FAST_ZERO, 2048);
        assert_eq!(CMD_FLAG_PAYLOAD_LEN, 32);
        assert_eq!(DEFAULT_MAX_PAYLOAD, 1 << 25);
    }

    #[test]
    fn command_round_trip() {
        for v in 0..=u16::MAX {
            if let Some(c) = Command::from_u16(v) {
                assert_eq!(c.code(), v);
            } else {
                assert!(v > CMD_RESIZE);
            }
        }
    }

    #[test]
    fn option_round_trip() {
        for v in 0..64 {
            match OptionCode::from_u32(v) {
                Some(o) => assert_eq!(o.code(), v),
                None => assert!(v == 0 || v == OPT_PEEK_EXPORT || v > OPT_EXTENDED_HEADERS),
            }
        }
        assert_eq!(OptionCode::from_u32(u32::MAX), None);
    }
}
