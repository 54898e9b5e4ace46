//! The send/receive stream (`ondisk-format/STREAM.md`): a header, extent records (data, zero,
//! hole) in ascending offset order, and an end record. One pure module per record, no I/O:
//! each has `encode` and `decode(&[u8])`, a crc32c, and a fixed little-endian layout. The
//! resume token a receiver hands back to the sender lives in [`token`].

#![cfg_attr(
    not(test),
    deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)
)]

pub mod end;
pub mod extent;
pub mod header;
pub mod token;
#[cfg(test)]
mod vectors;

pub use end::End;
pub use extent::{Extent, ExtentKind};
pub use header::Header;
pub use token::ResumeToken;

/// Stream format version written by this code (and the only one it reads).
pub const STREAM_VERSION: u16 = 1;
/// Block size the stream's offsets are counted against (the pool block size).
pub const STREAM_BLOCK: u32 = 4096;
/// Largest data payload of one extent record (a longer run is split).
pub const MAX_DATA: u64 = 1 << 20;
/// Every record after the header starts with this many bytes: type (1), reserved (7),
/// then the record's own fields.
pub const RECORD_PREFIX: usize = 8;

/// Why bytes are not a valid stream.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum StreamError {
    #[error("not an ssp send stream (bad magic)")]
    Magic,
    #[error(
        "stream format version {0} is not supported (this ssp reads version {STREAM_VERSION})"
    )]
    Version(u16),
    #[error("stream {what} is truncated: {need} bytes needed, {have} present")]
    Short {
        what: &'static str,
        need: usize,
        have: usize,
    },
    #[error("stream {what} checksum mismatch (stored {stored:#010x}, computed {computed:#010x}): the stream is corrupt")]
    Crc {
        what: &'static str,
        stored: u32,
        computed: u32,
    },
    #[error("bad stream {what}: {why}")]
    Invalid { what: &'static str, why: String },
}

pub(crate) fn invalid(what: &'static str, why: impl Into<String>) -> StreamError {
    StreamError::Invalid {
        what,
        why: why.into(),
    }
}

/// Bounds-checked little-endian reads.
pub(crate) struct Rd<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Rd<'a> {
    pub(crate) fn new(buf: &'a [u8], what: &'static str) -> Self {
        Rd { buf, pos: 0, what }
    }
    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], StreamError> {
        let end = self.pos.checked_add(n).ok_or(StreamError::Short {
            what: self.what,
            need: usize::MAX,
            have: self.buf.len(),
        })?;
        let b = self.buf.get(self.pos..end).ok_or(StreamError::Short {
            what: self.what,
            need: end,
            have: self.buf.len(),
        })?;
        self.pos = end;
        Ok(b)
    }
    pub(crate) fn arr<const N: usize>(&mut self) -> Result<[u8; N], StreamError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.bytes(N)?);
        Ok(a)
    }
    pub(crate) fn u8(&mut self) -> Result<u8, StreamError> {
        Ok(self.arr::<1>()?[0])
    }
    pub(crate) fn u16(&mut self) -> Result<u16, StreamError> {
        Ok(u16::from_le_bytes(self.arr()?))
    }
    pub(crate) fn u32(&mut self) -> Result<u32, StreamError> {
        Ok(u32::from_le_bytes(self.arr()?))
    }
    pub(crate) fn u64(&mut self) -> Result<u64, StreamError> {
        Ok(u64::from_le_bytes(self.arr()?))
    }
    pub(crate) fn pos(&self) -> usize {
        self.pos
    }
}

/// Check a stored crc32c against the bytes it covers.
pub(crate) fn check_crc(
    what: &'static str,
    covered: &[u8],
    stored: u32,
) -> Result<(), StreamError> {
    let computed = crc32c::crc32c(covered);
    if computed == stored {
        Ok(())
    } else {
        Err(StreamError::Crc {
            what,
            stored,
            computed,
        })
    }
}
