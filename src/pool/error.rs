//! Pool errors: a stable kind for callers (NBD errno, CLI exit) plus context for people.

#![cfg_attr(
    not(test),
    deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)
)]

use crate::format::FormatError;
use thiserror::Error;

/// Everything the pool engine can fail with.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum PoolError {
    #[error("I/O error on {dev} at offset {offset}: {source}")]
    Io {
        dev: String,
        offset: u64,
        source: std::io::Error,
    },
    #[error("checksum mismatch on {dev} at offset {offset} ({what}): stored {stored:#010x}, computed {computed:#010x}")]
    Checksum {
        dev: String,
        offset: u64,
        what: String,
        stored: u32,
        computed: u32,
    },
    #[error("corrupt metadata on {dev} at offset {offset}: {source}")]
    Corrupt {
        dev: String,
        offset: u64,
        source: FormatError,
    },
    #[error("pool is full: {0}")]
    NoSpace(String),
    #[error("no such LU: {0}")]
    NotFound(String),
    #[error("already exists: {0}")]
    Exists(String),
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error("pool is in use by another process (lock {0} is held)")]
    Locked(String),
    #[error("pool configuration: {0}")]
    Config(String),
    #[error("the pool is open read-only")]
    ReadOnly,
    #[error("{0} is read-only")]
    VolumeReadOnly(String),
    #[error("{0}")]
    InUse(String),
    #[error("pool was shut down after a fatal error: {0}")]
    Poisoned(String),
    /// An invariant of the engine did not hold: the operation is refused instead of
    /// panicking under the pool lock (which would stop every client).
    #[error("internal error: {0}")]
    Internal(String),
}

impl PoolError {
    /// errno for a client (NBD replies, exit codes).
    pub fn errno(&self) -> i32 {
        match self {
            PoolError::NoSpace(_) => libc::ENOSPC,
            PoolError::NotFound(_) => libc::ENOENT,
            PoolError::Exists(_) => libc::EEXIST,
            PoolError::Invalid(_) => libc::EINVAL,
            PoolError::Locked(_) => libc::EBUSY,
            PoolError::ReadOnly => libc::EROFS,
            PoolError::VolumeReadOnly(_) => libc::EPERM,
            PoolError::InUse(_) => libc::EBUSY,
            _ => libc::EIO,
        }
    }
}

pub type Result<T, E = PoolError> = std::result::Result<T, E>;
