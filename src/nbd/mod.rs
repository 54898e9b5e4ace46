//! NBD protocol layer, sans-IO: pure encoders, decoders and state machines over byte slices.
//!
//! Source of truth: the NBD protocol specification, `doc/proto.md` in
//! NetworkBlockDevice/nbd (section names below are proto.md's), including the
//! `NBD_OPT_EXTENDED_HEADERS` extension (64-bit requests, 32-byte replies).
//!
//! ```text
//!   (server: sockets, TLS, export I/O)     not here: owns the bytes and the clock
//!        │ bytes in / bytes out
//!   handshake   "Handshake" > "Fixed newstyle negotiation", "TLS support",
//!               "Option types", "Option reply types", "Metadata querying",
//!               "Block size constraints": greeting, options, ExportCatalog → Negotiated
//!   codec       "Transmission" > "Request message", "Simple reply message",
//!               "Structured reply chunk message", "Extended reply chunk message",
//!               "Structured reply types": request headers in, reply headers out
//!   validate    "Request types", "Command flags", "Error values": request → NBD errno
//!   proto       "Values": every wire constant, `Command`, `OptionCode`
//! ```
//!
//! Nothing in this module performs I/O, allocates threads or reads clocks: the caller feeds
//! received bytes in and writes the returned bytes out. A connection runs
//! [`Handshake`] until [`Event::Done`], then loops: [`decode_request`] a header, read its
//! [`Request::payload_len`] bytes of payload, [`validate()`] it against the [`Negotiated`]
//! parameters, execute, and answer with the reply encoders for the negotiated [`ReplyMode`].
//! Decoders never panic on malformed input; they return errors that mean "disconnect".
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

pub mod codec;
#[cfg(test)]
mod fuzz_tests;
pub mod handshake;
pub mod proto;
pub mod refusal;
pub mod validate;
pub(crate) mod wire;

pub use codec::{
    decode_request, decode_request_with_limit, encode_block_status, encode_block_status_ext,
    encode_chunk_header, encode_error, encode_error_offset, encode_error_reply, encode_none,
    encode_offset_data_header, encode_offset_hole, encode_ok, encode_read_data_header,
    encode_request, encode_simple_reply, CodecError, Decoded, EncodeError, Extent, ExtentExt,
    ReplyMode, ReplyTarget, Request,
};
pub use handshake::{
    Event, ExportCatalog, ExportEntry, ExportInfo, ExportNameRefusal, Handshake, HandshakeError,
    Lookup, Negotiated, ServerConfig, Step,
};
pub use proto::{Command, OptionCode};
pub use validate::validate;
