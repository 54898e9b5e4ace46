//! Fixed newstyle handshake (server side) as a sans-IO state machine.
//!
//! proto.md "Handshake" > "Fixed newstyle negotiation", "TLS support", "Values" > "Option
//! types" / "Option reply types", "Metadata querying" and "Block size constraints".
//!
//! Usage: send [`Handshake::initial_output`], then feed every received byte to
//! [`Handshake::input`] and send each [`Step::output`]. The handshake ends with an
//! [`Event`]: [`Event::Done`] (enter transmission; bytes the client sent after its final option
//! are in [`Handshake::take_leftover`]), [`Event::Abort`] (close after sending the output), or
//! [`Event::StartTls`] (send the output, run the TLS handshake, then keep feeding the
//! *decrypted* bytes to the same `Handshake`, which has forgotten all prior negotiation state as
//! the spec requires). An `Err` means the session must be terminated (hard disconnect) without
//! sending anything more.
//!
//! Modes (proto.md "Server-side requirements"): `tls_available == false` is NOTLS;
//! `tls_required` is FORCEDTLS (every option except `NBD_OPT_STARTTLS`/`NBD_OPT_ABORT` gets
//! `NBD_REP_ERR_TLS_REQD`, `NBD_OPT_EXPORT_NAME` closes); `tls_available` alone lets the client
//! upgrade whenever it wants (SELECTIVETLS with no TLS-only exports).

use std::fmt;

use thiserror::Error;

use super::codec::ReplyMode;
use super::proto::*;
use super::wire::{put_u16, put_u32, put_u64, Reader};

/// Options with more data than [`ServerConfig::max_option_len`] but at most this many bytes are
/// skipped and answered with `NBD_REP_ERR_TOO_BIG`; longer ones are treated as a denial of
/// service attempt and close the session.
pub const MAX_SKIPPABLE_OPTION_LEN: u32 = 1024 * 1024;

/// Default for [`ServerConfig::max_options`] (nbdkit also cuts clients off after about 64).
pub const DEFAULT_MAX_OPTIONS: u32 = 64;

/// Server policy for the handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    /// The caller can run a TLS handshake after `NBD_OPT_STARTTLS`.
    pub tls_available: bool,
    /// FORCEDTLS: refuse everything but STARTTLS/ABORT until TLS is active.
    pub tls_required: bool,
    /// Largest option data buffered (default 64 KiB); larger options get `NBD_REP_ERR_TOO_BIG`.
    pub max_option_len: u32,
    /// Maximum payload advertised in `NBD_INFO_BLOCK_SIZE` and enforced on READ/WRITE.
    pub max_payload: u32,
    /// Answer `NBD_OPT_GO` without an `NBD_INFO_BLOCK_SIZE` request with
    /// `NBD_REP_ERR_BLOCK_SIZE_REQD` when the export's minimum block size is above 1.
    /// Off by default, as proto.md recommends for interoperability.
    pub require_block_size: bool,
    /// Options one handshake may send (counted across STARTTLS); the next one gets
    /// `NBD_REP_ERR_POLICY` and the session closes (`NBD_OPT_EXPORT_NAME`, which cannot carry
    /// an error, just closes).
    pub max_options: u32,
    /// Refuse this session (e.g. the server is at its connection limit): every option but
    /// `NBD_OPT_ABORT` gets `NBD_REP_ERR_POLICY` with this message, and `NBD_OPT_GO`/
    /// `NBD_OPT_INFO`/`NBD_OPT_EXPORT_NAME` end the session.
    pub refusal: Option<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            tls_available: false,
            tls_required: false,
            max_option_len: 64 * 1024,
            max_payload: DEFAULT_MAX_PAYLOAD,
            require_block_size: false,
            max_options: DEFAULT_MAX_OPTIONS,
            refusal: None,
        }
    }
}

/// What the server knows about one export.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ExportInfo {
    /// Canonical name (what `""`, the default export, resolved to; sent as `NBD_INFO_NAME`).
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    pub read_only: bool,
    /// Human-readable description (may be empty).
    pub description: String,
    /// Caches are shared across connections (`NBD_FLAG_CAN_MULTI_CONN`).
    pub can_multi_conn: bool,
    /// Minimum block size: a power of two from 1 to 65536 (other values are sanitised).
    pub min_block: u32,
}

impl ExportInfo {
    /// Minimum block size clamped to what proto.md allows (power of two, 1..=2^16).
    pub fn effective_min_block(&self) -> u32 {
        self.min_block.clamp(1, MAX_MIN_BLOCK).next_power_of_two()
    }

    /// Transmission flags for this export once the handshake chose `mode`.
    ///
    /// Always: HAS_FLAGS, SEND_FLUSH, SEND_FUA, SEND_CACHE. Writable exports add SEND_TRIM,
    /// SEND_WRITE_ZEROES and SEND_FAST_ZERO (read-only ones set READ_ONLY instead). SEND_DF only
    /// with structured replies or extended headers (proto.md: MUST be clear otherwise).
    pub fn transmission_flags(&self, mode: ReplyMode) -> u16 {
        let mut f = FLAG_HAS_FLAGS | FLAG_SEND_FLUSH | FLAG_SEND_FUA | FLAG_SEND_CACHE;
        if self.read_only {
            f |= FLAG_READ_ONLY;
        } else {
            f |= FLAG_SEND_TRIM | FLAG_SEND_WRITE_ZEROES | FLAG_SEND_FAST_ZERO;
        }
        if mode.chunks() {
            f |= FLAG_SEND_DF;
        }
        if self.can_multi_conn {
            f |= FLAG_CAN_MULTI_CONN;
        }
        f
    }

    /// `(minimum, preferred, maximum payload)` as advertised in `NBD_INFO_BLOCK_SIZE`.
    pub fn block_sizes(&self, max_payload: u32) -> (u32, u32, u32) {
        let min = self.effective_min_block();
        let preferred = min.max(DEFAULT_PREFERRED_BLOCK);
        (min, preferred, max_payload.max(preferred))
    }
}

/// One `NBD_OPT_LIST` entry.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ExportEntry {
    pub name: String,
    pub description: String,
}

/// Result of looking an export name up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    Found(ExportInfo),
    /// No such export (`NBD_REP_ERR_UNKNOWN`).
    NotFound,
    /// Exists but policy forbids it to this client (`NBD_REP_ERR_POLICY`).
    Refused,
}

/// The exports the handshake may offer. `lookup("")` decides what the default export is.
pub trait ExportCatalog {
    /// Exports shown by `NBD_OPT_LIST`.
    fn list(&self) -> Vec<ExportEntry>;
    /// Resolve a client-supplied name (possibly `""`).
    fn lookup(&self, name: &str) -> Lookup;
    /// Metadata contexts offered for `export` besides `base:allocation` (e.g. `"ssp:sharing"`);
    /// each must be `namespace:leaf`, others are ignored.
    fn meta_contexts(&self, export: &str) -> Vec<String>;
}

/// Everything the transmission phase needs from the handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// Canonical export name ([`ExportInfo::name`]).
    pub export: String,
    pub reply_mode: ReplyMode,
    /// Selected metadata contexts `(id, name)`; empty unless the last `NBD_OPT_SET_META_CONTEXT`
    /// named the same export the client then chose.
    pub meta_contexts: Vec<(u32, String)>,
    pub export_info: ExportInfo,
    /// The client set `NBD_FLAG_C_NO_ZEROES`.
    pub no_zeroes: bool,
    /// Transmission flags that were sent.
    pub transmission_flags: u16,
    /// Maximum payload (advertised, or the default when the client used `NBD_OPT_EXPORT_NAME`).
    pub max_payload: u32,
    /// The session runs over TLS.
    pub tls: bool,
}

/// What ended (or paused) the handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// `NBD_OPT_STARTTLS` acknowledged: send the output, then start TLS.
    StartTls,
    /// `NBD_OPT_ABORT` acknowledged, or the server ended the negotiation after an error reply
    /// (too many options, refused session): send the output, then close.
    Abort,
    /// Enter the transmission phase after sending the output.
    Done(Negotiated),
}

/// Output of one [`Handshake::input`] call.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Step {
    /// Bytes to send to the client (possibly empty).
    pub output: Vec<u8>,
    /// `None`: need more input.
    pub event: Option<Event>,
}

/// Reasons to terminate the session (hard disconnect).
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum HandshakeError {
    /// proto.md: "the server MUST drop the TCP connection if the client sets an unknown flag".
    #[error("unknown client flags {0:#x}")]
    UnknownClientFlags(u32),
    /// FORCEDTLS needs fixed newstyle, which the client did not announce.
    #[error("TLS is required but the client did not set NBD_FLAG_C_FIXED_NEWSTYLE")]
    TlsRequiresFixedNewstyle,
    #[error("bad option magic {0:#018x}")]
    BadOptionMagic(u64),
    #[error("option {option} with {len} bytes of data is too large")]
    OptionTooLarge { option: u32, len: u32 },
    /// `NBD_OPT_EXPORT_NAME` cannot be answered with an error, so refusal closes the session.
    #[error("NBD_OPT_EXPORT_NAME refused: {0}")]
    ExportNameRefused(ExportNameRefusal),
    /// Plaintext bytes followed `NBD_OPT_STARTTLS` (they must not be carried into the TLS
    /// session: that would allow command injection).
    #[error("data received after NBD_OPT_STARTTLS before the TLS handshake")]
    DataAfterStartTls,
    /// `input` was called after the handshake ended or failed.
    #[error("the handshake is already over")]
    Finished,
    /// More than [`ServerConfig::max_options`] options (this error only when the last one was
    /// `NBD_OPT_EXPORT_NAME`, which cannot be answered with an error; otherwise the client gets
    /// an error reply and [`Event::Abort`]).
    #[error("more than {0} options in one handshake")]
    TooManyOptions(u32),
    /// [`ServerConfig::refusal`] and the client asked for an export with
    /// `NBD_OPT_EXPORT_NAME`, which cannot be answered with an error.
    #[error("session refused: {0}")]
    Refused(String),
}

/// Why an `NBD_OPT_EXPORT_NAME` was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExportNameRefusal {
    NotFound(String),
    Policy(String),
    TlsRequired,
    /// Extended headers were negotiated: the client MUST use `NBD_OPT_GO`.
    ExtendedHeaders,
    /// Not a valid string (UTF-8, no NUL, at most 4096 bytes).
    InvalidName,
}

impl fmt::Display for ExportNameRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExportNameRefusal::NotFound(n) => write!(f, "unknown export {n:?}"),
            ExportNameRefusal::Policy(n) => write!(f, "export {n:?} refused by policy"),
            ExportNameRefusal::TlsRequired => write!(f, "TLS required"),
            ExportNameRefusal::ExtendedHeaders => {
                write!(f, "extended headers negotiated; NBD_OPT_GO required")
            }
            ExportNameRefusal::InvalidName => write!(f, "invalid export name"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    ClientFlags,
    OptionHeader,
    OptionData {
        option: u32,
        len: usize,
    },
    Skip {
        option: u32,
        remaining: u64,
    },
    /// Data of an option already answered: drop it silently.
    Discard {
        remaining: u64,
    },
    Over,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct MetaSelection {
    export: String,
    contexts: Vec<(u32, String)>,
}

/// The server side of one connection's handshake.
#[derive(Debug)]
pub struct Handshake {
    cfg: ServerConfig,
    phase: Phase,
    buf: Vec<u8>,
    fixed_newstyle: bool,
    no_zeroes: bool,
    tls_active: bool,
    structured: bool,
    extended: bool,
    meta: Option<MetaSelection>,
    /// Options received so far (not reset by STARTTLS).
    options: u32,
}

const OPTION_HEADER_LEN: usize = 16;

/// Greeting: NBDMAGIC, IHAVEOPT, handshake flags.
const HANDSHAKE_FLAGS: u16 = FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES;

enum Parsed<T> {
    Ok(T),
    Invalid(&'static str),
}

fn valid_string(bytes: &[u8]) -> Option<&str> {
    if bytes.len() > MAX_STRING_LEN || bytes.contains(&0) {
        return None;
    }
    std::str::from_utf8(bytes).ok()
}

fn read_string<'a>(r: &mut Reader<'a>) -> Option<&'a str> {
    let len = usize::try_from(r.u32()?).ok()?;
    valid_string(r.bytes(len)?)
}

/// `NBD_OPT_INFO`/`NBD_OPT_GO` data: name length u32, name, count u16, info types u16 each.
fn parse_info_request(data: &[u8]) -> Parsed<(&str, Vec<u16>)> {
    let mut r = Reader::new(data);
    let parsed = (|| {
        let name_len = usize::try_from(r.u32()?).ok()?;
        let name = r.bytes(name_len)?;
        let n = r.u16()?;
        let mut infos = Vec::with_capacity(usize::from(n).min(16));
        for _ in 0..n {
            infos.push(r.u16()?);
        }
        Some((name, infos))
    })();
    match parsed {
        Some((name, infos)) if r.is_empty() => match valid_string(name) {
            Some(name) => Parsed::Ok((name, infos)),
            None => Parsed::Invalid("invalid export name"),
        },
        _ => Parsed::Invalid("malformed NBD_OPT_INFO/NBD_OPT_GO data"),
    }
}

/// `NBD_OPT_{LIST,SET}_META_CONTEXT` data: export name, u32 count, (u32 length, query)*.
fn parse_meta_request(data: &[u8]) -> Parsed<(&str, Vec<&str>)> {
    let mut r = Reader::new(data);
    let parsed = (|| {
        let name = read_string(&mut r)?;
        let n = r.u32()?;
        let mut queries = Vec::new();
        for _ in 0..n {
            // Each query consumes at least 4 bytes, so a lying count fails fast.
            queries.push(read_string(&mut r)?);
        }
        Some((name, queries))
    })();
    match parsed {
        Some(v) if r.is_empty() => Parsed::Ok(v),
        _ => Parsed::Invalid("malformed metadata context request"),
    }
}

fn namespace(name: &str) -> Option<&str> {
    name.split_once(':')
        .map(|(ns, _)| ns)
        .filter(|ns| !ns.is_empty())
}

fn push_rep(out: &mut Vec<u8>, option: u32, typ: u32, data: &[u8]) {
    put_u64(out, REPLY_MAGIC);
    put_u32(out, option);
    put_u32(out, typ);
    // Replies built here are bounded by MAX_STRING_LEN-sized strings; saturate regardless.
    put_u32(out, u32::try_from(data.len()).unwrap_or(u32::MAX));
    out.extend_from_slice(data);
}

fn push_ack(out: &mut Vec<u8>, option: u32) {
    push_rep(out, option, REP_ACK, &[]);
}

fn push_err(out: &mut Vec<u8>, option: u32, typ: u32, message: &str) {
    push_rep(out, option, typ, message.as_bytes());
}

impl Handshake {
    pub fn new(cfg: ServerConfig) -> Self {
        Handshake {
            cfg,
            phase: Phase::ClientFlags,
            buf: Vec::new(),
            fixed_newstyle: false,
            no_zeroes: false,
            tls_active: false,
            structured: false,
            extended: false,
            meta: None,
            options: 0,
        }
    }

    /// The server greeting: `NBDMAGIC`, `IHAVEOPT`, handshake flags FIXED_NEWSTYLE|NO_ZEROES.
    pub fn initial_output(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(18);
        put_u64(&mut out, NBDMAGIC);
        put_u64(&mut out, IHAVEOPT);
        put_u16(&mut out, HANDSHAKE_FLAGS);
        out
    }

    /// Whether TLS has been started (after [`Event::StartTls`]).
    pub fn tls_active(&self) -> bool {
        self.tls_active
    }

    /// Whether the handshake has ended (successfully, by abort, or by an error).
    pub fn is_over(&self) -> bool {
        self.phase == Phase::Over
    }

    /// Bytes received after the option that completed the handshake (transmission-phase data
    /// sent without waiting for the reply). Empties the internal buffer.
    pub fn take_leftover(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }

    /// Consume `bytes`, process every complete message, and return what to send. Stops at the
    /// first [`Event`]; after [`Event::StartTls`] call again with decrypted bytes.
    pub fn input(
        &mut self,
        bytes: &[u8],
        exports: &dyn ExportCatalog,
    ) -> Result<Step, HandshakeError> {
        if self.phase == Phase::Over {
            return Err(HandshakeError::Finished);
        }
        self.buf.extend_from_slice(bytes);
        let mut output = Vec::new();
        match self.run(&mut output, exports) {
            Ok(event) => Ok(Step { output, event }),
            Err(e) => {
                self.phase = Phase::Over;
                self.buf.clear();
                Err(e)
            }
        }
    }

    fn run(
        &mut self,
        out: &mut Vec<u8>,
        exports: &dyn ExportCatalog,
    ) -> Result<Option<Event>, HandshakeError> {
        loop {
            match self.phase {
                Phase::Over => return Err(HandshakeError::Finished),
                Phase::ClientFlags => {
                    let Some(flags) = Reader::new(&self.buf).u32() else {
                        return Ok(None);
                    };
                    self.buf.drain(..4);
                    if flags & !KNOWN_CLIENT_FLAGS != 0 {
                        return Err(HandshakeError::UnknownClientFlags(flags));
                    }
                    self.fixed_newstyle = flags & FLAG_C_FIXED_NEWSTYLE != 0;
                    self.no_zeroes = flags & FLAG_C_NO_ZEROES != 0;
                    if self.cfg.tls_required && !self.fixed_newstyle {
                        return Err(HandshakeError::TlsRequiresFixedNewstyle);
                    }
                    self.phase = Phase::OptionHeader;
                }
                Phase::OptionHeader => {
                    let mut r = Reader::new(&self.buf);
                    let (Some(magic), Some(option), Some(len)) = (r.u64(), r.u32(), r.u32()) else {
                        // Reject a wrong magic as soon as its 8 bytes are in.
                        if let Some(magic) = Reader::new(&self.buf).u64() {
                            if magic != IHAVEOPT {
                                return Err(HandshakeError::BadOptionMagic(magic));
                            }
                        }
                        return Ok(None);
                    };
                    if magic != IHAVEOPT {
                        return Err(HandshakeError::BadOptionMagic(magic));
                    }
                    self.buf.drain(..OPTION_HEADER_LEN);
                    self.options = self.options.saturating_add(1);
                    if self.options > self.cfg.max_options {
                        let max = self.cfg.max_options;
                        if option == OPT_EXPORT_NAME {
                            return Err(HandshakeError::TooManyOptions(max));
                        }
                        let msg = format!("too many options (at most {max} per handshake)");
                        push_err(out, option, REP_ERR_POLICY, &msg);
                        self.phase = Phase::Over;
                        self.buf.clear();
                        return Ok(Some(Event::Abort));
                    }
                    if let Some(why) = self.cfg.refusal.clone() {
                        if option == OPT_EXPORT_NAME {
                            return Err(HandshakeError::Refused(why));
                        }
                        if option != OPT_ABORT {
                            push_err(out, option, REP_ERR_POLICY, &why);
                        }
                        // The option's data is not needed: skip it (bounded by the caller's
                        // handshake timeout and the option limit above).
                        self.phase = Phase::Discard {
                            remaining: u64::from(len),
                        };
                        if matches!(option, OPT_ABORT | OPT_GO | OPT_INFO) {
                            if option == OPT_ABORT {
                                push_ack(out, option);
                            }
                            self.phase = Phase::Over;
                            self.buf.clear();
                            return Ok(Some(Event::Abort));
                        }
                        continue;
                    }
                    if len > self.cfg.max_option_len {
                        if option == OPT_EXPORT_NAME || len > MAX_SKIPPABLE_OPTION_LEN {
                            return Err(HandshakeError::OptionTooLarge { option, len });
                        }
                        self.phase = Phase::Skip {
                            option,
                            remaining: u64::from(len),
                        };
                    } else {
                        // len <= max_option_len (a u32), so it fits usize on supported targets.
                        let len = usize::try_from(len)
                            .map_err(|_| HandshakeError::OptionTooLarge { option, len })?;
                        self.phase = Phase::OptionData { option, len };
                    }
                }
                Phase::Skip { option, remaining } => {
                    let n = usize::try_from(remaining)
                        .unwrap_or(usize::MAX)
                        .min(self.buf.len());
                    self.buf.drain(..n);
                    let remaining = remaining - n as u64;
                    if remaining > 0 {
                        self.phase = Phase::Skip { option, remaining };
                        return Ok(None);
                    }
                    self.phase = Phase::OptionHeader;
                    if self.cfg.tls_required && !self.tls_active && option != OPT_STARTTLS {
                        push_err(out, option, REP_ERR_TLS_REQD, "TLS required");
                    } else {
                        push_err(out, option, REP_ERR_TOO_BIG, "option data too large");
                    }
                }
                Phase::Discard { remaining } => {
                    let n = usize::try_from(remaining)
                        .unwrap_or(usize::MAX)
                        .min(self.buf.len());
                    self.buf.drain(..n);
                    let remaining = remaining - n as u64;
                    if remaining > 0 {
                        self.phase = Phase::Discard { remaining };
                        return Ok(None);
                    }
                    self.phase = Phase::OptionHeader;
                }
                Phase::OptionData { option, len } => {
                    if self.buf.len() < len {
                        return Ok(None);
                    }
                    let data: Vec<u8> = self.buf.drain(..len).collect();
                    self.phase = Phase::OptionHeader;
                    if let Some(event) = self.option(option, &data, out, exports)? {
                        match event {
                            Event::StartTls => {
                                if !self.buf.is_empty() {
                                    return Err(HandshakeError::DataAfterStartTls);
                                }
                            }
                            Event::Abort | Event::Done(_) => self.phase = Phase::Over,
                        }
                        return Ok(Some(event));
                    }
                }
            }
        }
    }

    fn reply_mode(&self) -> ReplyMode {
        if self.extended {
            ReplyMode::Extended
        } else if self.structured {
            ReplyMode::Structured
        } else {
            ReplyMode::Simple
        }
    }

    fn negotiated(&self, info: ExportInfo, requested_name: &str) -> Negotiated {
        let mode = self.reply_mode();
        let meta_contexts = match &self.meta {
            Some(sel) if sel.export == requested_name => sel.contexts.clone(),
            _ => Vec::new(),
        };
        Negotiated {
            export: info.name.clone(),
            reply_mode: mode,
            meta_contexts,
            transmission_flags: info.transmission_flags(mode),
            max_payload: info.block_sizes(self.cfg.max_payload).2,
            export_info: info,
            no_zeroes: self.no_zeroes,
            tls: self.tls_active,
        }
    }

    fn option(
        &mut self,
        option: u32,
        data: &[u8],
        out: &mut Vec<u8>,
        exports: &dyn ExportCatalog,
    ) -> Result<Option<Event>, HandshakeError> {
        let code = OptionCode::from_u32(option);
        if self.cfg.tls_required && !self.tls_active {
            match code {
                Some(OptionCode::StartTls) | Some(OptionCode::Abort) => {}
                Some(OptionCode::ExportName) => {
                    return Err(HandshakeError::ExportNameRefused(
                        ExportNameRefusal::TlsRequired,
                    ))
                }
                _ => {
                    push_err(out, option, REP_ERR_TLS_REQD, "TLS required");
                    return Ok(None);
                }
            }
        }
        let Some(code) = code else {
            push_err(out, option, REP_ERR_UNSUP, "unsupported option");
            return Ok(None);
        };
        match code {
            OptionCode::ExportName => self.export_name(data, out, exports).map(Some),
            OptionCode::Abort => {
                // "a server SHOULD ignore any data sent by the client".
                push_ack(out, option);
                Ok(Some(Event::Abort))
            }
            OptionCode::List => {
                if !data.is_empty() {
                    push_err(out, option, REP_ERR_INVALID, "NBD_OPT_LIST takes no data");
                    return Ok(None);
                }
                for e in exports.list() {
                    let mut rep = Vec::with_capacity(4 + e.name.len() + e.description.len());
                    put_u32(&mut rep, u32::try_from(e.name.len()).unwrap_or(u32::MAX));
                    rep.extend_from_slice(e.name.as_bytes());
                    rep.extend_from_slice(e.description.as_bytes());
                    push_rep(out, option, REP_SERVER, &rep);
                }
                push_ack(out, option);
                Ok(None)
            }
            OptionCode::StartTls => {
                if !self.cfg.tls_available {
                    push_err(out, option, REP_ERR_UNSUP, "TLS not available");
                } else if !self.fixed_newstyle {
                    // proto.md: NOTLS mode unless both sides did fixed newstyle.
                    push_err(out, option, REP_ERR_POLICY, "TLS needs fixed newstyle");
                } else if self.tls_active {
                    push_err(out, option, REP_ERR_INVALID, "TLS already active");
                } else if !data.is_empty() {
                    push_err(
                        out,
                        option,
                        REP_ERR_INVALID,
                        "NBD_OPT_STARTTLS takes no data",
                    );
                } else {
                    push_ack(out, option);
                    // "the server MUST NOT preserve any negotiation state".
                    self.tls_active = true;
                    self.structured = false;
                    self.extended = false;
                    self.meta = None;
                    return Ok(Some(Event::StartTls));
                }
                Ok(None)
            }
            OptionCode::Info | OptionCode::Go => Ok(self.info_or_go(code, data, out, exports)),
            OptionCode::StructuredReply => {
                if !data.is_empty() {
                    push_err(out, option, REP_ERR_INVALID, "option takes no data");
                } else if self.extended {
                    push_err(
                        out,
                        option,
                        REP_ERR_EXT_HEADER_REQD,
                        "extended headers already negotiated",
                    );
                } else {
                    self.structured = true;
                    push_ack(out, option);
                }
                Ok(None)
            }
            OptionCode::ExtendedHeaders => {
                if !data.is_empty() {
                    push_err(out, option, REP_ERR_INVALID, "option takes no data");
                } else {
                    self.extended = true;
                    self.structured = true;
                    push_ack(out, option);
                }
                Ok(None)
            }
            OptionCode::ListMetaContext => {
                self.meta_context(false, data, out, exports);
                Ok(None)
            }
            OptionCode::SetMetaContext => {
                self.meta_context(true, data, out, exports);
                Ok(None)
            }
        }
    }

    fn export_name(
        &mut self,
        data: &[u8],
        out: &mut Vec<u8>,
        exports: &dyn ExportCatalog,
    ) -> Result<Event, HandshakeError> {
        let refuse = |r| Err(HandshakeError::ExportNameRefused(r));
        if self.extended {
            return refuse(ExportNameRefusal::ExtendedHeaders);
        }
        let Some(name) = valid_string(data) else {
            return refuse(ExportNameRefusal::InvalidName);
        };
        match exports.lookup(name) {
            Lookup::Found(info) => {
                let neg = self.negotiated(info, name);
                put_u64(out, neg.export_info.size);
                put_u16(out, neg.transmission_flags);
                if !self.no_zeroes {
                    out.extend_from_slice(&[0u8; EXPORT_NAME_ZEROES]);
                }
                Ok(Event::Done(neg))
            }
            Lookup::NotFound => refuse(ExportNameRefusal::NotFound(name.to_owned())),
            Lookup::Refused => refuse(ExportNameRefusal::Policy(name.to_owned())),
        }
    }

    fn info_or_go(
        &mut self,
        code: OptionCode,
        data: &[u8],
        out: &mut Vec<u8>,
        exports: &dyn ExportCatalog,
    ) -> Option<Event> {
        let option = code.code();
        let (name, infos) = match parse_info_request(data) {
            Parsed::Ok(v) => v,
            Parsed::Invalid(msg) => {
                push_err(out, option, REP_ERR_INVALID, msg);
                return None;
            }
        };
        let info = match exports.lookup(name) {
            Lookup::Found(info) => info,
            Lookup::NotFound => {
                push_err(out, option, REP_ERR_UNKNOWN, "unknown export");
                return None;
            }
            Lookup::Refused => {
                push_err(out, option, REP_ERR_POLICY, "export refused by policy");
                return None;
            }
        };
        let neg = self.negotiated(info, name);
        let info = &neg.export_info;
        let (min, preferred, max) = info.block_sizes(self.cfg.max_payload);
        let block_size_info = |out: &mut Vec<u8>| {
            let mut rep = Vec::with_capacity(14);
            put_u16(&mut rep, INFO_BLOCK_SIZE);
            put_u32(&mut rep, min);
            put_u32(&mut rep, preferred);
            put_u32(&mut rep, max);
            push_rep(out, option, REP_INFO, &rep);
        };
        let wants = |t: u16| infos.contains(&t);
        if code == OptionCode::Go
            && self.cfg.require_block_size
            && min > 1
            && !wants(INFO_BLOCK_SIZE)
        {
            // "SHOULD ensure it first sends an NBD_INFO_BLOCK_SIZE information reply".
            block_size_info(out);
            push_err(
                out,
                option,
                REP_ERR_BLOCK_SIZE_REQD,
                "this export needs NBD_INFO_BLOCK_SIZE",
            );
            return None;
        }
        let mut rep = Vec::with_capacity(12);
        put_u16(&mut rep, INFO_EXPORT);
        put_u64(&mut rep, info.size);
        put_u16(&mut rep, neg.transmission_flags);
        push_rep(out, option, REP_INFO, &rep);
        if wants(INFO_NAME) {
            let mut rep = Vec::with_capacity(2 + info.name.len());
            put_u16(&mut rep, INFO_NAME);
            rep.extend_from_slice(info.name.as_bytes());
            push_rep(out, option, REP_INFO, &rep);
        }
        if wants(INFO_DESCRIPTION) && !info.description.is_empty() {
            let mut rep = Vec::with_capacity(2 + info.description.len());
            put_u16(&mut rep, INFO_DESCRIPTION);
            rep.extend_from_slice(info.description.as_bytes());
            push_rep(out, option, REP_INFO, &rep);
        }
        block_size_info(out);
        push_ack(out, option);
        (code == OptionCode::Go).then_some(Event::Done(neg))
    }

    /// All contexts this server offers: `base:allocation` then the catalog's, deduplicated.
    fn all_contexts(exports: &dyn ExportCatalog, export: &str) -> Vec<String> {
        let mut all = vec![CONTEXT_BASE_ALLOCATION.to_owned()];
        for c in exports.meta_contexts(export) {
            if namespace(&c).is_some() && valid_string(c.as_bytes()).is_some() && !all.contains(&c)
            {
                all.push(c);
            }
        }
        all
    }

    fn meta_context(
        &mut self,
        set: bool,
        data: &[u8],
        out: &mut Vec<u8>,
        exports: &dyn ExportCatalog,
    ) {
        let option = if set {
            OPT_SET_META_CONTEXT
        } else {
            OPT_LIST_META_CONTEXT
        };
        if set {
            // "replaces all previously-set metadata contexts (including when this command fails)".
            self.meta = None;
            if !self.structured {
                push_err(
                    out,
                    option,
                    REP_ERR_INVALID,
                    "negotiate structured replies first",
                );
                return;
            }
        }
        let (name, queries) = match parse_meta_request(data) {
            Parsed::Ok(v) => v,
            Parsed::Invalid(msg) => {
                push_err(out, option, REP_ERR_INVALID, msg);
                return;
            }
        };
        match exports.lookup(name) {
            Lookup::Found(_) => {}
            Lookup::NotFound => {
                push_err(out, option, REP_ERR_UNKNOWN, "unknown export");
                return;
            }
            Lookup::Refused => {
                push_err(out, option, REP_ERR_POLICY, "export refused by policy");
                return;
            }
        }
        let all = Self::all_contexts(exports, name);
        let mut selected: Vec<&String> = Vec::new();
        if queries.is_empty() {
            // LIST: everything; SET: "If zero queries are sent, the server MUST select no
            // metadata contexts".
            if !set {
                selected.extend(all.iter());
            }
        } else {
            for q in &queries {
                let Some(ns) = namespace(q) else {
                    continue; // not namespace:leaf: ignored like an unknown namespace.
                };
                // "ns:" with an empty leaf-name, or a prefix ending in ':' such as
                // "qemu:dirty-bitmap:" (docs/interop/nbd.txt): every context it starts.
                let wildcard = q.ends_with(':');
                for c in &all {
                    let hit = if wildcard {
                        // Wildcard for LIST only; SET MUST ignore "base:" (and we treat
                        // every empty leaf the same way).
                        !set && namespace(c) == Some(ns) && c.starts_with(*q)
                    } else {
                        c == q
                    };
                    if hit && !selected.contains(&c) {
                        selected.push(c);
                    }
                }
            }
        }
        let mut contexts = Vec::with_capacity(selected.len());
        for (i, c) in selected.into_iter().enumerate() {
            // LIST: "The metadata context ID in these replies is reserved and SHOULD be set to
            // zero". SET: unique ids, 1-based.
            let id = if set {
                u32::try_from(i + 1).unwrap_or(u32::MAX)
            } else {
                0
            };
            let mut rep = Vec::with_capacity(4 + c.len());
            put_u32(&mut rep, id);
            rep.extend_from_slice(c.as_bytes());
            push_rep(out, option, REP_META_CONTEXT, &rep);
            contexts.push((id, c.clone()));
        }
        if set {
            self.meta = Some(MetaSelection {
                export: name.to_owned(),
                contexts,
            });
        }
        push_ack(out, option);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // ---- fixtures -------------------------------------------------------------------------

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        assert!(s.len() % 2 == 0, "odd hex");
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    struct Catalog {
        exports: Vec<ExportInfo>,
        refused: Vec<String>,
        extra: Vec<String>,
    }

    fn lu(name: &str, size: u64, description: &str) -> ExportInfo {
        ExportInfo {
            name: name.into(),
            size,
            read_only: false,
            description: description.into(),
            can_multi_conn: true,
            min_block: 1,
        }
    }

    fn catalog() -> Catalog {
        Catalog {
            exports: vec![
                lu("lu0", 1 << 30, "db"),
                ExportInfo {
                    read_only: true,
                    can_multi_conn: false,
                    min_block: 4096,
                    ..lu("snap", 0x10_0000, "")
                },
            ],
            refused: vec!["secret".into()],
            extra: vec!["ssp:sharing".into(), "ssp:dirty".into(), "bogus".into()],
        }
    }

    impl ExportCatalog for Catalog {
        fn list(&self) -> Vec<ExportEntry> {
            self.exports
                .iter()
                .map(|e| ExportEntry {
                    name: e.name.clone(),
                    description: e.description.clone(),
                })
                .collect()
        }
        fn lookup(&self, name: &str) -> Lookup {
            if self.refused.iter().any(|r| r == name) {
                return Lookup::Refused;
            }
            let name = if name.is_empty() { "lu0" } else { name };
            match self.exports.iter().find(|e| e.name == name) {
                Some(e) => Lookup::Found(e.clone()),
                None => Lookup::NotFound,
            }
        }
        fn meta_contexts(&self, _export: &str) -> Vec<String> {
            self.extra.clone()
        }
    }

    fn opt(code: u32, data: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        put_u64(&mut v, IHAVEOPT);
        put_u32(&mut v, code);
        put_u32(&mut v, data.len() as u32);
        v.extend_from_slice(data);
        v
    }

    fn go_data(name: &str, infos: &[u16]) -> Vec<u8> {
        let mut v = Vec::new();
        put_u32(&mut v, name.len() as u32);
        v.extend_from_slice(name.as_bytes());
        put_u16(&mut v, infos.len() as u16);
        for i in infos {
            put_u16(&mut v, *i);
        }
        v
    }

    fn meta_data(name: &str, queries: &[&str]) -> Vec<u8> {
        let mut v = Vec::new();
        put_u32(&mut v, name.len() as u32);
        v.extend_from_slice(name.as_bytes());
        put_u32(&mut v, queries.len() as u32);
        for q in queries {
            put_u32(&mut v, q.len() as u32);
            v.extend_from_slice(q.as_bytes());
        }
        v
    }

    fn flags(f: u32) -> Vec<u8> {
        f.to_le_bytes().iter().rev().copied().collect()
    }

    /// A parsed option reply (test-side decoder).
    #[derive(Debug, PartialEq, Eq)]
    struct Rep {
        option: u32,
        typ: u32,
        data: Vec<u8>,
    }

    fn parse_reps(mut buf: &[u8]) -> Vec<Rep> {
        let mut reps = Vec::new();
        while !buf.is_empty() {
            let mut r = Reader::new(buf);
            assert_eq!(r.u64(), Some(REPLY_MAGIC), "reply magic");
            let option = r.u32().unwrap();
            let typ = r.u32().unwrap();
            let len = r.u32().unwrap() as usize;
            let data = r.bytes(len).expect("reply data").to_vec();
            buf = &buf[20 + len..];
            reps.push(Rep { option, typ, data });
        }
        reps
    }

    fn types(reps: &[Rep]) -> Vec<u32> {
        reps.iter().map(|r| r.typ).collect()
    }

    /// Feed `script` in one go; return the output and the final result.
    fn run(cfg: ServerConfig, script: &[u8]) -> (Vec<u8>, Result<Option<Event>, HandshakeError>) {
        let mut hs = Handshake::new(cfg);
        match hs.input(script, &catalog()) {
            Ok(step) => (step.output, Ok(step.event)),
            Err(e) => (Vec::new(), Err(e)),
        }
    }

    /// Run the options after client flags `f`, expecting no event, and parse the replies.
    fn reps_for(cfg: ServerConfig, f: u32, options: &[Vec<u8>]) -> Vec<Rep> {
        let mut script = flags(f);
        for o in options {
            script.extend_from_slice(o);
        }
        let (out, res) = run(cfg, &script);
        assert_eq!(res, Ok(None));
        parse_reps(&out)
    }

    const BOTH: u32 = FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES;

    fn golden_script() -> Vec<u8> {
        let mut s = flags(BOTH);
        s.extend(opt(OPT_STRUCTURED_REPLY, &[]));
        s.extend(opt(
            OPT_SET_META_CONTEXT,
            &meta_data("lu0", &[CONTEXT_BASE_ALLOCATION]),
        ));
        s.extend(opt(
            OPT_GO,
            &go_data("lu0", &[INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE]),
        ));
        s
    }

    // ---- golden ---------------------------------------------------------------------------

    #[test]
    fn greeting_golden() {
        let hs = Handshake::new(ServerConfig::default());
        assert_eq!(
            hs.initial_output(),
            hex("4e42444d41474943 49484156454f5054 0003")
        );
        assert_eq!(&hs.initial_output()[..16], b"NBDMAGICIHAVEOPT");
    }

    #[test]
    fn golden_structured_meta_go() {
        let script = golden_script();
        // Check the client script itself, byte by byte.
        assert_eq!(
            script,
            hex("00000003
                 49484156454f5054 00000008 00000000
                 49484156454f5054 0000000a 0000001e
                   00000003 6c7530 00000001 0000000f 626173653a616c6c6f636174696f6e
                 49484156454f5054 00000007 0000000f
                   00000003 6c7530 0003 0001 0002 0003")
        );
        let (out, res) = run(ServerConfig::default(), &script);
        let expected = hex("0003e889045565a9 00000008 00000001 00000000
             0003e889045565a9 0000000a 00000004 00000013
               00000001 626173653a616c6c6f636174696f6e
             0003e889045565a9 0000000a 00000001 00000000
             0003e889045565a9 00000007 00000003 0000000c
               0000 0000000040000000 0ded
             0003e889045565a9 00000007 00000003 00000005
               0001 6c7530
             0003e889045565a9 00000007 00000003 00000004
               0002 6462
             0003e889045565a9 00000007 00000003 0000000e
               0003 00000001 00001000 02000000
             0003e889045565a9 00000007 00000001 00000000");
        assert_eq!(out, expected);
        let Ok(Some(Event::Done(neg))) = res else {
            panic!("{res:?}")
        };
        assert_eq!(
            neg,
            Negotiated {
                export: "lu0".into(),
                reply_mode: ReplyMode::Structured,
                meta_contexts: vec![(1, CONTEXT_BASE_ALLOCATION.into())],
                export_info: lu("lu0", 1 << 30, "db"),
                no_zeroes: true,
                transmission_flags: 0x0ded,
                max_payload: DEFAULT_MAX_PAYLOAD,
                tls: false,
            }
        );
    }

    #[test]
    fn golden_export_name_with_zeroes() {
        let mut script = flags(FLAG_C_FIXED_NEWSTYLE);
        script.extend(opt(OPT_EXPORT_NAME, b"lu0"));
        let (out, res) = run(ServerConfig::default(), &script);
        let mut expected = hex("0000000040000000 0d6d");
        expected.extend_from_slice(&[0; 124]);
        assert_eq!(out, expected);
        assert_eq!(out.len(), 134);
        let Ok(Some(Event::Done(neg))) = res else {
            panic!()
        };
        assert!(!neg.no_zeroes);
        assert_eq!(neg.reply_mode, ReplyMode::Simple);
        assert_eq!(neg.transmission_flags & FLAG_SEND_DF, 0);
    }

    #[test]
    fn golden_export_name_no_zeroes_default_export() {
        let mut script = flags(BOTH);
        script.extend(opt(OPT_STRUCTURED_REPLY, &[]));
        script.extend(opt(OPT_EXPORT_NAME, b""));
        let (out, res) = run(ServerConfig::default(), &script);
        assert_eq!(
            out,
            hex("0003e889045565a9 00000008 00000001 00000000
                 0000000040000000 0ded")
        );
        let Ok(Some(Event::Done(neg))) = res else {
            panic!()
        };
        assert_eq!(neg.export, "lu0"); // the catalog resolved the default export
        assert_eq!(neg.reply_mode, ReplyMode::Structured);
    }

    #[test]
    fn export_name_read_only_flags() {
        let mut script = flags(BOTH);
        script.extend(opt(OPT_EXPORT_NAME, b"snap"));
        let (out, _) = run(ServerConfig::default(), &script);
        // HAS_FLAGS|READ_ONLY|FLUSH|FUA|CACHE = 1+2+4+8+0x400
        assert_eq!(out, hex("0000000000100000 040f"));
    }

    #[test]
    fn export_name_unknown_or_refused_closes() {
        for (name, refusal) in [
            ("nope", ExportNameRefusal::NotFound("nope".into())),
            ("secret", ExportNameRefusal::Policy("secret".into())),
        ] {
            let mut script = flags(BOTH);
            script.extend(opt(OPT_EXPORT_NAME, name.as_bytes()));
            let mut hs = Handshake::new(ServerConfig::default());
            assert_eq!(
                hs.input(&script, &catalog()),
                Err(HandshakeError::ExportNameRefused(refusal))
            );
            assert!(hs.is_over());
            assert_eq!(hs.input(&[], &catalog()), Err(HandshakeError::Finished));
        }
        let mut script = flags(BOTH);
        script.extend(opt(OPT_EXPORT_NAME, b"a\0b"));
        assert_eq!(
            run(ServerConfig::default(), &script).1,
            Err(HandshakeError::ExportNameRefused(
                ExportNameRefusal::InvalidName
            ))
        );
    }

    #[test]
    fn export_name_after_extended_headers_closes() {
        let mut script = flags(BOTH);
        script.extend(opt(OPT_EXTENDED_HEADERS, &[]));
        script.extend(opt(OPT_EXPORT_NAME, b"lu0"));
        assert_eq!(
            run(ServerConfig::default(), &script).1,
            Err(HandshakeError::ExportNameRefused(
                ExportNameRefusal::ExtendedHeaders
            ))
        );
    }

    // ---- options --------------------------------------------------------------------------

    #[test]
    fn list_golden() {
        let (out, res) = run(
            ServerConfig::default(),
            &[flags(BOTH), opt(OPT_LIST, &[])].concat(),
        );
        assert_eq!(res, Ok(None));
        assert_eq!(
            out,
            hex(
                "0003e889045565a9 00000003 00000002 00000009 00000003 6c7530 6462
                 0003e889045565a9 00000003 00000002 00000008 00000004 736e6170
                 0003e889045565a9 00000003 00000001 00000000"
            )
        );
        let reps = reps_for(ServerConfig::default(), BOTH, &[opt(OPT_LIST, b"x")]);
        assert_eq!(types(&reps), [REP_ERR_INVALID]);
    }

    #[test]
    fn unknown_options_get_unsup_and_negotiation_continues() {
        let reps = reps_for(
            ServerConfig::default(),
            BOTH,
            &[
                opt(OPT_PEEK_EXPORT, b"whatever"),
                opt(0xdead_beef, &[1, 2, 3]),
                opt(0, &[]),
                opt(OPT_STRUCTURED_REPLY, &[]),
            ],
        );
        assert_eq!(
            types(&reps),
            [REP_ERR_UNSUP, REP_ERR_UNSUP, REP_ERR_UNSUP, REP_ACK]
        );
        assert_eq!(reps[1].option, 0xdead_beef);
        assert_eq!(reps[0].data, b"unsupported option");
    }

    #[test]
    fn abort_acks_and_ends() {
        let script = [flags(BOTH), opt(OPT_ABORT, b"ignored"), opt(OPT_LIST, &[])].concat();
        let mut hs = Handshake::new(ServerConfig::default());
        let step = hs.input(&script, &catalog()).unwrap();
        assert_eq!(step.event, Some(Event::Abort));
        assert_eq!(
            step.output,
            hex("0003e889045565a9 00000002 00000001 00000000")
        );
        assert!(hs.is_over());
        assert_eq!(hs.take_leftover(), opt(OPT_LIST, &[]));
    }

    #[test]
    fn info_does_not_end_and_go_does() {
        let script = [
            flags(BOTH),
            opt(OPT_INFO, &go_data("snap", &[])),
            opt(OPT_GO, &go_data("snap", &[INFO_BLOCK_SIZE])),
        ]
        .concat();
        let (out, res) = run(ServerConfig::default(), &script);
        let reps = parse_reps(&out);
        assert_eq!(
            types(&reps),
            [REP_INFO, REP_INFO, REP_ACK, REP_INFO, REP_INFO, REP_ACK]
        );
        assert_eq!(reps[0].option, OPT_INFO);
        // Export info: size then flags (read-only, no DF without structured replies).
        assert_eq!(reps[0].data, hex("0000 0000000000100000 040f"));
        // Block size for a min-4096 export is always sent.
        assert_eq!(reps[1].data, hex("0003 00001000 00001000 02000000"));
        assert_eq!(reps[5].option, OPT_GO);
        let Ok(Some(Event::Done(neg))) = res else {
            panic!()
        };
        assert_eq!(neg.export, "snap");
        assert!(neg.meta_contexts.is_empty());
    }

    #[test]
    fn info_go_errors() {
        let reps = reps_for(
            ServerConfig::default(),
            BOTH,
            &[
                opt(OPT_GO, &go_data("nope", &[])),
                opt(OPT_INFO, &go_data("secret", &[])),
                opt(OPT_GO, &[0, 0, 0, 9, b'l', b'u']), // name runs past the data
                opt(OPT_GO, &go_data("lu0", &[1])[..8]), // count missing
                opt(OPT_GO, &[go_data("lu0", &[]), vec![0]].concat()), // trailing byte
                opt(OPT_GO, &go_data("a\0b", &[])),     // NUL in name
                opt(OPT_GO, &[]),
            ],
        );
        assert_eq!(
            types(&reps),
            [
                REP_ERR_UNKNOWN,
                REP_ERR_POLICY,
                REP_ERR_INVALID,
                REP_ERR_INVALID,
                REP_ERR_INVALID,
                REP_ERR_INVALID,
                REP_ERR_INVALID
            ]
        );
    }

    #[test]
    fn go_description_omitted_when_empty_and_unknown_infos_ignored() {
        let reps = reps_for(
            ServerConfig::default(),
            BOTH,
            &[opt(OPT_INFO, &go_data("snap", &[INFO_DESCRIPTION, 77]))],
        );
        assert_eq!(types(&reps), [REP_INFO, REP_INFO, REP_ACK]);
        assert_eq!(&reps[1].data[..2], &[0, 3]);
    }

    #[test]
    fn block_size_required_policy() {
        let cfg = ServerConfig {
            require_block_size: true,
            ..ServerConfig::default()
        };
        let reps = reps_for(
            cfg.clone(),
            BOTH,
            &[
                opt(OPT_GO, &go_data("snap", &[])),
                opt(OPT_INFO, &go_data("snap", &[])), // INFO is never refused for this
            ],
        );
        assert_eq!(
            types(&reps),
            [
                REP_INFO,
                REP_ERR_BLOCK_SIZE_REQD,
                REP_INFO,
                REP_INFO,
                REP_ACK
            ]
        );
        assert_eq!(reps[0].data, hex("0003 00001000 00001000 02000000"));
        // min_block 1 exports do not need it.
        let (_, res) = run(
            cfg.clone(),
            &[flags(BOTH), opt(OPT_GO, &go_data("lu0", &[]))].concat(),
        );
        assert!(matches!(res, Ok(Some(Event::Done(_)))));
        let (_, res) = run(
            cfg,
            &[
                flags(BOTH),
                opt(OPT_GO, &go_data("snap", &[INFO_BLOCK_SIZE])),
            ]
            .concat(),
        );
        assert!(matches!(res, Ok(Some(Event::Done(_)))));
    }

    #[test]
    fn structured_and_extended_headers() {
        let reps = reps_for(
            ServerConfig::default(),
            BOTH,
            &[
                opt(OPT_STRUCTURED_REPLY, b"x"),
                opt(OPT_EXTENDED_HEADERS, b"x"),
                opt(OPT_STRUCTURED_REPLY, &[]),
                opt(OPT_EXTENDED_HEADERS, &[]),
                opt(OPT_STRUCTURED_REPLY, &[]),
            ],
        );
        assert_eq!(
            types(&reps),
            [
                REP_ERR_INVALID,
                REP_ERR_INVALID,
                REP_ACK,
                REP_ACK,
                REP_ERR_EXT_HEADER_REQD
            ]
        );
        // Extended headers alone imply chunks: SET_META_CONTEXT works and GO reports Extended.
        let script = [
            flags(BOTH),
            opt(OPT_EXTENDED_HEADERS, &[]),
            opt(
                OPT_SET_META_CONTEXT,
                &meta_data("lu0", &["base:allocation"]),
            ),
            opt(OPT_GO, &go_data("lu0", &[])),
        ]
        .concat();
        let (out, res) = run(ServerConfig::default(), &script);
        assert_eq!(
            types(&parse_reps(&out)),
            [
                REP_ACK,
                REP_META_CONTEXT,
                REP_ACK,
                REP_INFO,
                REP_INFO,
                REP_ACK
            ]
        );
        let Ok(Some(Event::Done(neg))) = res else {
            panic!()
        };
        assert_eq!(neg.reply_mode, ReplyMode::Extended);
        assert_eq!(neg.meta_contexts, vec![(1, "base:allocation".to_string())]);
        assert_ne!(neg.transmission_flags & FLAG_SEND_DF, 0);
    }

    #[test]
    fn set_meta_context_needs_structured_replies() {
        let reps = reps_for(
            ServerConfig::default(),
            BOTH,
            &[opt(
                OPT_SET_META_CONTEXT,
                &meta_data("lu0", &["base:allocation"]),
            )],
        );
        assert_eq!(types(&reps), [REP_ERR_INVALID]);
    }

    #[test]
    fn list_meta_context() {
        let reps = reps_for(
            ServerConfig::default(),
            BOTH,
            &[
                // zero queries: everything (catalog's malformed "bogus" is dropped)
                opt(OPT_LIST_META_CONTEXT, &meta_data("lu0", &[])),
                // wildcards, exact names, unknown namespaces and leaves, duplicates
                opt(
                    OPT_LIST_META_CONTEXT,
                    &meta_data(
                        "",
                        &[
                            "base:",
                            "x-foo:bar",
                            "ssp:sharing",
                            "base:nope",
                            "nocolon",
                            "base:allocation",
                        ],
                    ),
                ),
                opt(OPT_LIST_META_CONTEXT, &meta_data("lu0", &["ssp:"])),
                opt(OPT_LIST_META_CONTEXT, &meta_data("nope", &[])),
                opt(OPT_LIST_META_CONTEXT, &meta_data("lu0", &["x"])[..12]),
            ],
        );
        let names = |reps: &[Rep]| -> Vec<(u32, String)> {
            reps.iter()
                .filter(|r| r.typ == REP_META_CONTEXT)
                .map(|r| {
                    (
                        u32::from_le_bytes([r.data[3], r.data[2], r.data[1], r.data[0]]),
                        String::from_utf8(r.data[4..].to_vec()).unwrap(),
                    )
                })
                .collect()
        };
        assert_eq!(
            types(&reps[..4]),
            [
                REP_META_CONTEXT,
                REP_META_CONTEXT,
                REP_META_CONTEXT,
                REP_ACK
            ]
        );
        assert_eq!(
            names(&reps[..4]),
            [
                (0, "base:allocation".to_string()),
                (0, "ssp:sharing".to_string()),
                (0, "ssp:dirty".to_string())
            ]
        );
        assert_eq!(
            names(&reps[4..7]),
            [
                (0, "base:allocation".to_string()),
                (0, "ssp:sharing".to_string())
            ]
        );
        assert_eq!(reps[6].typ, REP_ACK);
        assert_eq!(
            names(&reps[7..10]),
            [(0, "ssp:sharing".to_string()), (0, "ssp:dirty".to_string())]
        );
        assert_eq!(
            types(&reps[9..]),
            [REP_ACK, REP_ERR_UNKNOWN, REP_ERR_INVALID]
        );
    }

    #[test]
    fn list_meta_context_prefix_queries() {
        // qemu's docs/interop/nbd.txt: "qemu:" lists the namespace, "qemu:dirty-bitmap:" every
        // bitmap; SET ignores such prefixes and names not offered.
        let cat = Catalog {
            extra: vec![
                "qemu:allocation-depth".into(),
                "qemu:dirty-bitmap:lu0@a".into(),
                "qemu:dirty-bitmap:lu0@b".into(),
            ],
            ..catalog()
        };
        let mut script = flags(BOTH);
        script.extend(opt(OPT_STRUCTURED_REPLY, &[]));
        for q in [
            &["qemu:dirty-bitmap:"][..],
            &["qemu:"],
            &["qemu:dirty-bitmap:lu0@"],
            &["qemu:allocation-depth", "qemu:nope"],
        ] {
            script.extend(opt(OPT_LIST_META_CONTEXT, &meta_data("lu0", q)));
        }
        script.extend(opt(
            OPT_SET_META_CONTEXT,
            &meta_data(
                "lu0",
                &[
                    "qemu:dirty-bitmap:",
                    "qemu:",
                    "qemu:nope",
                    "qemu:dirty-bitmap:lu0@b",
                ],
            ),
        ));
        let out = Handshake::new(ServerConfig::default())
            .input(&script, &cat)
            .unwrap()
            .output;
        let reps = parse_reps(&out);
        let mut got: Vec<Vec<String>> = vec![Vec::new()];
        for r in reps.iter().skip(1) {
            if r.typ == REP_ACK {
                got.push(Vec::new());
            } else {
                assert_eq!(r.typ, REP_META_CONTEXT);
                let id = u32::from_le_bytes([r.data[3], r.data[2], r.data[1], r.data[0]]);
                let name = String::from_utf8(r.data[4..].to_vec()).unwrap();
                got.last_mut().unwrap().push(format!("{id}:{name}"));
            }
        }
        assert_eq!(
            got,
            [
                vec!["0:qemu:dirty-bitmap:lu0@a", "0:qemu:dirty-bitmap:lu0@b"],
                vec![
                    "0:qemu:allocation-depth",
                    "0:qemu:dirty-bitmap:lu0@a",
                    "0:qemu:dirty-bitmap:lu0@b"
                ],
                vec![],
                vec!["0:qemu:allocation-depth"],
                vec!["1:qemu:dirty-bitmap:lu0@b"],
                vec![],
            ]
        );
    }

    #[test]
    fn set_meta_context_selection_rules() {
        let script = [
            flags(BOTH),
            opt(OPT_STRUCTURED_REPLY, &[]),
            // Wildcards select nothing on SET; unknown namespaces are ignored.
            opt(
                OPT_SET_META_CONTEXT,
                &meta_data(
                    "lu0",
                    &[
                        "base:",
                        "x-foo:bar",
                        "ssp:dirty",
                        "base:allocation",
                        "ssp:dirty",
                    ],
                ),
            ),
        ]
        .concat();
        let mut hs = Handshake::new(ServerConfig::default());
        let out = hs.input(&script, &catalog()).unwrap().output;
        let reps = parse_reps(&out);
        assert_eq!(
            types(&reps),
            [REP_ACK, REP_META_CONTEXT, REP_META_CONTEXT, REP_ACK]
        );
        assert_eq!(reps[1].data, [&[0, 0, 0, 1][..], b"ssp:dirty"].concat());
        assert_eq!(
            reps[2].data,
            [&[0, 0, 0, 2][..], b"base:allocation"].concat()
        );

        // GO on a different export: the selection does not carry over.
        let step = hs
            .input(&opt(OPT_GO, &go_data("snap", &[])), &catalog())
            .unwrap();
        let Some(Event::Done(neg)) = step.event else {
            panic!()
        };
        assert!(neg.meta_contexts.is_empty());
    }

    #[test]
    fn failed_set_meta_context_clears_the_selection() {
        let script = [
            flags(BOTH),
            opt(OPT_STRUCTURED_REPLY, &[]),
            opt(
                OPT_SET_META_CONTEXT,
                &meta_data("lu0", &["base:allocation"]),
            ),
            opt(OPT_SET_META_CONTEXT, b"garbage"),
            opt(OPT_GO, &go_data("lu0", &[])),
        ]
        .concat();
        let (out, res) = run(ServerConfig::default(), &script);
        let reps = parse_reps(&out);
        assert_eq!(reps[3].typ, REP_ERR_INVALID);
        let Ok(Some(Event::Done(neg))) = res else {
            panic!()
        };
        assert!(neg.meta_contexts.is_empty());

        // Zero queries on SET: nothing selected, ACK only.
        let reps = reps_for(
            ServerConfig::default(),
            BOTH,
            &[
                opt(OPT_STRUCTURED_REPLY, &[]),
                opt(OPT_SET_META_CONTEXT, &meta_data("lu0", &[])),
            ],
        );
        assert_eq!(types(&reps), [REP_ACK, REP_ACK]);
    }

    // ---- TLS ------------------------------------------------------------------------------

    fn forced_tls() -> ServerConfig {
        ServerConfig {
            tls_available: true,
            tls_required: true,
            ..ServerConfig::default()
        }
    }

    #[test]
    fn tls_required_refuses_everything_but_starttls_and_abort() {
        let reps = reps_for(
            forced_tls(),
            BOTH,
            &[
                opt(OPT_LIST, &[]),
                opt(OPT_INFO, &go_data("lu0", &[])),
                opt(OPT_GO, &go_data("lu0", &[])),
                opt(OPT_STRUCTURED_REPLY, &[]),
                opt(OPT_EXTENDED_HEADERS, &[]),
                opt(OPT_LIST_META_CONTEXT, &meta_data("lu0", &[])),
                opt(OPT_SET_META_CONTEXT, &meta_data("lu0", &[])),
                opt(0x1234, &[]),
            ],
        );
        assert_eq!(types(&reps), [REP_ERR_TLS_REQD; 8]);
        // EXPORT_NAME cannot be errored: hard disconnect.
        let (_, res) = run(
            forced_tls(),
            &[flags(BOTH), opt(OPT_EXPORT_NAME, b"lu0")].concat(),
        );
        assert_eq!(
            res,
            Err(HandshakeError::ExportNameRefused(
                ExportNameRefusal::TlsRequired
            ))
        );
        // ABORT still works.
        let (out, res) = run(forced_tls(), &[flags(BOTH), opt(OPT_ABORT, &[])].concat());
        assert_eq!(res, Ok(Some(Event::Abort)));
        assert_eq!(types(&parse_reps(&out)), [REP_ACK]);
        // Fixed newstyle is a precondition of TLS.
        let (_, res) = run(forced_tls(), &flags(FLAG_C_NO_ZEROES));
        assert_eq!(res, Err(HandshakeError::TlsRequiresFixedNewstyle));
    }

    #[test]
    fn starttls_upgrade_resets_state() {
        let catalog = catalog();
        let mut hs = Handshake::new(forced_tls());
        let step = hs
            .input(&[flags(BOTH), opt(OPT_STARTTLS, &[])].concat(), &catalog)
            .unwrap();
        assert_eq!(step.event, Some(Event::StartTls));
        assert_eq!(
            step.output,
            hex("0003e889045565a9 00000005 00000001 00000000")
        );
        assert!(hs.tls_active());
        // Over "TLS": negotiate, STARTTLS again is invalid.
        let step = hs
            .input(
                &[
                    opt(OPT_STRUCTURED_REPLY, &[]),
                    opt(OPT_STARTTLS, &[]),
                    opt(OPT_LIST, &[]),
                ]
                .concat(),
                &catalog,
            )
            .unwrap();
        assert_eq!(step.event, None);
        assert_eq!(
            types(&parse_reps(&step.output)),
            [REP_ACK, REP_ERR_INVALID, REP_SERVER, REP_SERVER, REP_ACK]
        );
        let step = hs
            .input(&opt(OPT_GO, &go_data("lu0", &[])), &catalog)
            .unwrap();
        let Some(Event::Done(neg)) = step.event else {
            panic!()
        };
        assert!(neg.tls);
        assert_eq!(neg.reply_mode, ReplyMode::Structured);
    }

    #[test]
    fn starttls_forgets_earlier_negotiation() {
        let cfg = ServerConfig {
            tls_available: true,
            ..ServerConfig::default()
        };
        let mut hs = Handshake::new(cfg);
        let step = hs
            .input(
                &[
                    flags(BOTH),
                    opt(OPT_STRUCTURED_REPLY, &[]),
                    opt(
                        OPT_SET_META_CONTEXT,
                        &meta_data("lu0", &["base:allocation"]),
                    ),
                    opt(OPT_STARTTLS, &[]),
                ]
                .concat(),
                &catalog(),
            )
            .unwrap();
        assert_eq!(step.event, Some(Event::StartTls));
        let step = hs
            .input(&opt(OPT_GO, &go_data("lu0", &[])), &catalog())
            .unwrap();
        let Some(Event::Done(neg)) = step.event else {
            panic!()
        };
        assert_eq!(neg.reply_mode, ReplyMode::Simple);
        assert!(neg.meta_contexts.is_empty());
    }

    #[test]
    fn starttls_with_trailing_plaintext_is_fatal() {
        let mut hs = Handshake::new(forced_tls());
        assert_eq!(
            hs.input(
                &[flags(BOTH), opt(OPT_STARTTLS, &[]), opt(OPT_LIST, &[])].concat(),
                &catalog()
            ),
            Err(HandshakeError::DataAfterStartTls)
        );
    }

    #[test]
    fn starttls_refusals() {
        // NOTLS: unsupported.
        let reps = reps_for(ServerConfig::default(), BOTH, &[opt(OPT_STARTTLS, &[])]);
        assert_eq!(types(&reps), [REP_ERR_UNSUP]);
        let cfg = ServerConfig {
            tls_available: true,
            ..ServerConfig::default()
        };
        // Data with STARTTLS: invalid.
        let reps = reps_for(cfg.clone(), BOTH, &[opt(OPT_STARTTLS, b"x")]);
        assert_eq!(types(&reps), [REP_ERR_INVALID]);
        // Non-fixed-newstyle client: NOTLS mode.
        let reps = reps_for(cfg, FLAG_C_NO_ZEROES, &[opt(OPT_STARTTLS, &[])]);
        assert_eq!(types(&reps), [REP_ERR_POLICY]);
    }

    // ---- framing and malformed input ------------------------------------------------------

    #[test]
    fn too_many_options_get_an_error_and_close() {
        let cfg = ServerConfig {
            max_options: 3,
            ..ServerConfig::default()
        };
        let mut script = flags(BOTH);
        for _ in 0..4 {
            script.extend(opt(OPT_LIST, &[]));
        }
        // A fifth option is never looked at.
        script.extend(opt(OPT_GO, &go_data("lu0", &[])));
        let (out, res) = run(cfg.clone(), &script);
        assert_eq!(res, Ok(Some(Event::Abort)));
        let reps = parse_reps(&out);
        let last = reps.last().unwrap();
        assert_eq!((last.option, last.typ), (OPT_LIST, REP_ERR_POLICY));
        assert!(String::from_utf8_lossy(&last.data).contains("too many options"));
        assert_eq!(
            reps.iter().filter(|r| r.typ == REP_ACK).count(),
            3,
            "three LISTs answered"
        );
        // NBD_OPT_EXPORT_NAME cannot carry an error: the session just ends.
        let mut script = flags(BOTH);
        for _ in 0..3 {
            script.extend(opt(OPT_LIST, &[]));
        }
        script.extend(opt(OPT_EXPORT_NAME, b"lu0"));
        assert_eq!(run(cfg, &script).1, Err(HandshakeError::TooManyOptions(3)));
        // The default limit holds across STARTTLS and matches nbdkit's.
        assert_eq!(ServerConfig::default().max_options, 64);
    }

    #[test]
    fn refused_sessions_get_the_reason_and_close() {
        let cfg = ServerConfig {
            refusal: Some("too many connections".into()),
            ..ServerConfig::default()
        };
        let mut script = flags(BOTH);
        script.extend(opt(OPT_STRUCTURED_REPLY, &[]));
        script.extend(opt(OPT_LIST, &[]));
        script.extend(opt(OPT_GO, &go_data("lu0", &[INFO_NAME])));
        let (out, res) = run(cfg.clone(), &script);
        assert_eq!(res, Ok(Some(Event::Abort)));
        let reps = parse_reps(&out);
        assert_eq!(types(&reps), vec![REP_ERR_POLICY; 3]);
        assert_eq!(reps[2].option, OPT_GO);
        assert_eq!(reps[2].data, b"too many connections");
        // Fed one byte at a time, the same.
        let mut hs = Handshake::new(cfg.clone());
        let mut out2 = Vec::new();
        let mut ev = None;
        for b in &script {
            let step = hs.input(&[*b], &catalog()).unwrap();
            out2.extend(step.output);
            if step.event.is_some() {
                ev = step.event;
                break;
            }
        }
        assert_eq!((out2, ev), (out, Some(Event::Abort)));
        let mut script = flags(BOTH);
        script.extend(opt(OPT_EXPORT_NAME, b"lu0"));
        assert_eq!(
            run(cfg, &script).1,
            Err(HandshakeError::Refused("too many connections".into()))
        );
    }

    #[test]
    fn unknown_client_flags_close() {
        let (_, res) = run(ServerConfig::default(), &flags(BOTH | 4));
        assert_eq!(res, Err(HandshakeError::UnknownClientFlags(7)));
    }

    #[test]
    fn bad_option_magic_closes_early() {
        let mut hs = Handshake::new(ServerConfig::default());
        assert_eq!(hs.input(&flags(BOTH), &catalog()).unwrap(), Step::default());
        assert_eq!(
            hs.input(b"IHAVEOPX", &catalog()),
            Err(HandshakeError::BadOptionMagic(0x4948_4156_454f_5058))
        );
        assert_eq!(hs.input(&[], &catalog()), Err(HandshakeError::Finished));
    }

    #[test]
    fn oversize_options() {
        // Over max_option_len but skippable: ERR_TOO_BIG after the data is skipped.
        let big = vec![0u8; 64 * 1024 + 1];
        let reps = reps_for(
            ServerConfig::default(),
            BOTH,
            &[opt(OPT_LIST_META_CONTEXT, &big), opt(OPT_LIST, &[])],
        );
        assert_eq!(
            types(&reps),
            [REP_ERR_TOO_BIG, REP_SERVER, REP_SERVER, REP_ACK]
        );
        // Skipping works across many small inputs.
        let mut hs = Handshake::new(ServerConfig::default());
        let mut out = Vec::new();
        let script = [flags(BOTH), opt(77, &big), opt(OPT_ABORT, &[])].concat();
        let mut event = None;
        for chunk in script.chunks(1000) {
            let step = hs.input(chunk, &catalog()).unwrap();
            out.extend(step.output);
            event = event.or(step.event);
        }
        assert_eq!(event, Some(Event::Abort));
        assert_eq!(types(&parse_reps(&out)), [REP_ERR_TOO_BIG, REP_ACK]);
        // Absurd lengths close at once, without waiting for the data.
        let mut header = flags(BOTH);
        put_u64(&mut header, IHAVEOPT);
        put_u32(&mut header, OPT_GO);
        put_u32(&mut header, u32::MAX);
        assert_eq!(
            run(ServerConfig::default(), &header).1,
            Err(HandshakeError::OptionTooLarge {
                option: OPT_GO,
                len: u32::MAX
            })
        );
        // An oversize EXPORT_NAME cannot be answered: close.
        let mut header = flags(BOTH);
        put_u64(&mut header, IHAVEOPT);
        put_u32(&mut header, OPT_EXPORT_NAME);
        put_u32(&mut header, 70_000);
        assert!(matches!(
            run(ServerConfig::default(), &header).1,
            Err(HandshakeError::OptionTooLarge { .. })
        ));
    }

    #[test]
    fn truncated_input_waits() {
        let script = golden_script();
        let mut hs = Handshake::new(ServerConfig::default());
        let step = hs.input(&script[..script.len() - 1], &catalog()).unwrap();
        assert_eq!(step.event, None);
        let step = hs.input(&script[script.len() - 1..], &catalog()).unwrap();
        assert!(matches!(step.event, Some(Event::Done(_))));
    }

    #[test]
    fn leftover_after_go_is_kept() {
        let mut script = golden_script();
        script.extend_from_slice(b"\x25\x60\x95\x13rest");
        let mut hs = Handshake::new(ServerConfig::default());
        let step = hs.input(&script, &catalog()).unwrap();
        assert!(matches!(step.event, Some(Event::Done(_))));
        assert_eq!(hs.take_leftover(), b"\x25\x60\x95\x13rest");
        assert_eq!(hs.input(b"more", &catalog()), Err(HandshakeError::Finished));
    }

    #[test]
    fn transmission_flags_and_block_sizes() {
        let mut info = lu("x", 0, "");
        assert_eq!(info.transmission_flags(ReplyMode::Simple), 0x0d6d);
        assert_eq!(info.transmission_flags(ReplyMode::Extended), 0x0ded);
        info.can_multi_conn = false;
        info.read_only = true;
        assert_eq!(info.transmission_flags(ReplyMode::Simple), 0x040f);
        assert_eq!(info.block_sizes(DEFAULT_MAX_PAYLOAD), (1, 4096, 1 << 25));
        info.min_block = 0;
        assert_eq!(info.effective_min_block(), 1);
        info.min_block = 3000;
        assert_eq!(info.block_sizes(1024), (4096, 4096, 4096));
        info.min_block = 1 << 20;
        assert_eq!(
            info.block_sizes(DEFAULT_MAX_PAYLOAD),
            (65536, 65536, 1 << 25)
        );
    }

    // ---- properties -----------------------------------------------------------------------

    /// Feed `script` split at `cuts`; return concatenated output and the first event/error.
    fn run_split(
        cfg: ServerConfig,
        script: &[u8],
        cuts: &[usize],
    ) -> (Vec<u8>, Result<Option<Event>, HandshakeError>) {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (script.len() + 1)).collect();
        cuts.sort_unstable();
        let mut hs = Handshake::new(cfg);
        let mut out = Vec::new();
        let mut prev = 0;
        for cut in cuts.into_iter().chain([script.len()]) {
            match hs.input(&script[prev..cut], &catalog()) {
                Ok(step) => {
                    out.extend(step.output);
                    if step.event.is_some() {
                        return (out, Ok(step.event));
                    }
                }
                Err(e) => return (out, Err(e)),
            }
            prev = cut;
        }
        (out, Ok(None))
    }

    #[test]
    fn one_byte_at_a_time_matches_all_at_once() {
        let script = golden_script();
        let all = run(ServerConfig::default(), &script);
        let cuts: Vec<usize> = (0..script.len()).collect();
        assert_eq!(run_split(ServerConfig::default(), &script, &cuts), all);
    }

    fn arb_option() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            Just(opt(OPT_STRUCTURED_REPLY, &[])),
            Just(opt(OPT_EXTENDED_HEADERS, &[])),
            Just(opt(OPT_LIST, &[])),
            Just(opt(OPT_STARTTLS, &[])),
            Just(opt(
                OPT_INFO,
                &go_data("lu0", &[INFO_NAME, INFO_BLOCK_SIZE])
            )),
            Just(opt(OPT_INFO, &go_data("nope", &[]))),
            Just(opt(OPT_LIST_META_CONTEXT, &meta_data("lu0", &[]))),
            Just(opt(
                OPT_SET_META_CONTEXT,
                &meta_data("lu0", &["base:allocation", "ssp:"])
            )),
            (any::<u32>(), proptest::collection::vec(any::<u8>(), 0..40))
                .prop_map(|(code, data)| opt(code % 14, &data)),
        ]
    }

    proptest! {
        #[test]
        fn random_split_points_give_the_same_result(
            cuts in proptest::collection::vec(any::<usize>(), 0..12),
            middle in proptest::collection::vec(arb_option(), 0..6),
        ) {
            // TLS off: after an acknowledged STARTTLS the stream is no longer plaintext, so a
            // single-buffer reference run would (rightly) fail with DataAfterStartTls.
            let cfg = ServerConfig::default();
            let mut script = flags(BOTH);
            for o in &middle {
                script.extend_from_slice(o);
            }
            script.extend(opt(OPT_GO, &go_data("lu0", &[INFO_DESCRIPTION])));
            let all = run(cfg.clone(), &script);
            let split = run_split(cfg, &script, &cuts);
            // An error discards that call's output, so compare outputs only on success.
            prop_assert_eq!(&split.1, &all.1);
            if all.1.is_ok() {
                prop_assert_eq!(split.0, all.0);
            }
        }

        #[test]
        fn random_bytes_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..512),
            cuts in proptest::collection::vec(any::<usize>(), 0..8),
            tls_required: bool,
        ) {
            let cfg = ServerConfig { tls_available: true, tls_required, ..ServerConfig::default() };
            let _ = run_split(cfg.clone(), &bytes, &cuts);
            // Also behind a valid prefix, so option parsing gets exercised.
            let script = [flags(BOTH), bytes].concat();
            let _ = run_split(cfg, &script, &cuts);
        }

        #[test]
        fn random_option_data_gets_exactly_one_final_reply(
            // Every option code up to 13 except those that end or pause the handshake
            // (EXPORT_NAME, ABORT, STARTTLS, GO).
            code in proptest::sample::select(vec![0u32, 3, 4, 6, 8, 9, 10, 11, 12, 13]),
            data in proptest::collection::vec(any::<u8>(), 0..80),
        ) {
            let (out, res) = run(
                ServerConfig::default(),
                &[flags(BOTH), opt(OPT_STRUCTURED_REPLY, &[]), opt(code, &data)].concat(),
            );
            prop_assert_eq!(res, Ok(None));
            let reps = parse_reps(&out);
            let last = reps.last().unwrap();
            prop_assert!(last.typ == REP_ACK || last.typ & REP_FLAG_ERROR != 0);
            // Exactly two final replies: one per option.
            let finals = reps.iter().filter(|r| r.typ == REP_ACK || r.typ & REP_FLAG_ERROR != 0).count();
            prop_assert_eq!(finals, 2);
            prop_assert!(reps.iter().skip(1).all(|r| r.option == code));
        }
    }
}
