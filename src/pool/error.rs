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
    /// The errno a client sees for this error: the one kind → errno map, used for NBD replies
    /// and by everything else that reports an errno. NBD can carry only EPERM, EIO, ENOMEM,
    /// EINVAL, ENOSPC, EOVERFLOW, ENOTSUP and ESHUTDOWN (doc/proto.md "Error values"), so
    /// every kind maps onto that set; the match has no catch-all, so a new kind must be placed.
    pub fn errno(&self) -> i32 {
        match self {
            PoolError::NoSpace(_) => libc::ENOSPC,
            // Naming something that does not exist (or exists already) is a bad argument.
            PoolError::NotFound(_)
            | PoolError::Exists(_)
            | PoolError::Invalid(_)
            | PoolError::Config(_) => libc::EINVAL,
            // The pool or the volume refuses writes: not permitted.
            PoolError::ReadOnly | PoolError::VolumeReadOnly(_) => libc::EPERM,
            PoolError::Io { .. }
            | PoolError::Checksum { .. }
            | PoolError::Corrupt { .. }
            | PoolError::Locked(_)
            | PoolError::InUse(_)
            | PoolError::Poisoned(_)
            | PoolError::Internal(_) => libc::EIO,
        }
    }
}

pub type Result<T, E = PoolError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nbd::proto as nbd;

    fn every_kind() -> Vec<PoolError> {
        let io = || std::io::Error::other("x");
        vec![
            PoolError::Io {
                dev: "d".into(),
                offset: 0,
                source: io(),
            },
            PoolError::Checksum {
                dev: "d".into(),
                offset: 0,
                what: "w".into(),
                stored: 1,
                computed: 2,
            },
            PoolError::Corrupt {
                dev: "d".into(),
                offset: 0,
                source: FormatError::Invalid {
                    what: "w",
                    field: "f",
                    detail: "x".into(),
                },
            },
            PoolError::NoSpace("x".into()),
            PoolError::NotFound("x".into()),
            PoolError::Exists("x".into()),
            PoolError::Invalid("x".into()),
            PoolError::Locked("x".into()),
            PoolError::Config("x".into()),
            PoolError::ReadOnly,
            PoolError::VolumeReadOnly("x".into()),
            PoolError::InUse("x".into()),
            PoolError::Poisoned("x".into()),
            PoolError::Internal("x".into()),
        ]
    }

    #[test]
    fn every_kind_maps_onto_the_nbd_errno_set() {
        let allowed = [
            nbd::EPERM,
            nbd::EIO,
            nbd::ENOMEM,
            nbd::EINVAL,
            nbd::ENOSPC,
            nbd::EOVERFLOW,
            nbd::ENOTSUP,
            nbd::ESHUTDOWN,
        ];
        for e in every_kind() {
            let n = u32::try_from(e.errno()).unwrap();
            assert!(allowed.contains(&n), "{e:?} maps to {n}");
        }
    }

    #[test]
    fn errno_of_each_kind() {
        let want = [
            libc::EIO,
            libc::EIO,
            libc::EIO,
            libc::ENOSPC,
            libc::EINVAL,
            libc::EINVAL,
            libc::EINVAL,
            libc::EIO,
            libc::EINVAL,
            libc::EPERM,
            libc::EPERM,
            libc::EIO,
            libc::EIO,
            libc::EIO,
        ];
        for (e, w) in every_kind().iter().zip(want) {
            assert_eq!(e.errno(), w, "{e:?}");
        }
    }
}
