//! Device I/O: the only code that touches file descriptors.
//!
//! A [`BlockDev`] is a byte-addressed device (a PV). It knows nothing of the pool format.
//! Contract (every backend, every test relies on it):
//! - `read_at`/`write_at` transfer the whole buffer or fail; offsets and lengths are any value
//!   within `len()` (the pool always uses 4096-byte aligned I/O, but backends must not assume it).
//! - A `write_at` is *not* durable until a later `sync` returns `Ok`. After a crash, any subset of
//!   unsynced writes may be lost, and a lost write may be torn at any 512-byte sector boundary.
//! - A failed `sync` is never retried as if it had worked: the caller treats the device as failed.
//! - Methods take `&self`: backends are safe to call from several threads at once.

use std::io;

pub mod direct;
mod fault;
mod file;
pub mod iomode;
mod mem;
mod uring;

#[cfg(test)]
mod conformance;

pub use fault::{CrashMode, FaultControl, FaultDev};
pub use file::FileDev;
pub use iomode::{Cache, CacheChoice, Engine, EngineChoice, IoConfig};
pub use mem::MemDev;

/// Sector size used for torn-write simulation and the durability contract.
pub const SECTOR: u64 = 512;

/// A positional block device: a file, a block device, memory, or a fault-injecting wrapper.
#[allow(clippy::len_without_is_empty)] // a device is never meaningfully "empty"
pub trait BlockDev: Send + Sync {
    /// Read exactly `buf.len()` bytes at `offset`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Read exactly `buf.len()` bytes at `offset` only if that needs no wait for the device
    /// (the data is in memory, e.g. the host's page cache). `false`: it would wait, or failed;
    /// `buf` may then hold anything, and the caller reads with [`BlockDev::read_at`] where
    /// waiting (and reporting the error) is fine. Backends that cannot tell return `false`.
    fn try_read_at(&self, _buf: &mut [u8], _offset: u64) -> bool {
        false
    }
    /// Write all of `buf` at `offset` (not durable until [`BlockDev::sync`]).
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Write every `(bytes, offset)` pair, as [`BlockDev::write_at`] each, in any order (the
    /// ranges must not overlap). Engines that can submit a batch at once do (io_uring: one
    /// `io_uring_enter`); the rest write them one by one. On an error, any subset may have
    /// been written.
    fn write_many_at(&self, writes: &[(&[u8], u64)]) -> io::Result<()> {
        writes
            .iter()
            .try_for_each(|(b, off)| self.write_at(b, *off))
    }
    /// The engine and cache mode of a file or block device (`None`: memory, a test device).
    fn io_mode(&self) -> Option<(Engine, Cache)> {
        None
    }
    /// Make every completed write durable (fdatasync).
    fn sync(&self) -> io::Result<()>;
    /// Size of the device in bytes.
    fn len(&self) -> u64;
    /// Human-readable name for error messages (usually the path).
    fn name(&self) -> &str;
    /// Allocate backing store for `[offset, offset + len)` so later writes there cannot fail
    /// for lack of space (fallocate on a sparse file). An error of kind
    /// [`io::ErrorKind::StorageFull`] or [`io::ErrorKind::QuotaExceeded`] means the host has no
    /// room now; backends with nothing to allocate (block devices, memory) return `Ok`.
    fn reserve(&self, _offset: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }
    /// Whether the device is still the one that was opened and can be written: `Err` names
    /// what changed under the pool (file deleted, truncated, replaced, made read-only).
    fn health(&self) -> Result<(), String> {
        Ok(())
    }
}

/// Whether an I/O error means "no space on the host" (ENOSPC, EDQUOT) rather than a failed
/// device.
pub fn is_no_space(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}
