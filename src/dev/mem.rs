//! [`MemDev`]: a plain in-memory device for tests and benches.

use std::io;
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::BlockDev;

/// An in-memory device. Nothing is volatile, so `sync` is a no-op.
pub struct MemDev {
    name: String,
    len: u64,
    data: Mutex<Vec<u8>>,
}

impl MemDev {
    /// A zero-filled device of `size` bytes.
    pub fn new(name: &str, size: u64) -> MemDev {
        let bytes = usize::try_from(size).expect("MemDev size exceeds the address space");
        MemDev {
            name: name.to_string(),
            len: size,
            data: Mutex::new(vec![0; bytes]),
        }
    }

    /// A device holding `bytes` (its size is their length).
    pub fn from_bytes(name: &str, bytes: Vec<u8>) -> MemDev {
        MemDev {
            name: name.to_string(),
            len: bytes.len() as u64,
            data: Mutex::new(bytes),
        }
    }

    fn data(&self) -> MutexGuard<'_, Vec<u8>> {
        // No code panics while holding the lock, so a poisoned lock still guards valid bytes.
        self.data.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl BlockDev for MemDev {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        check_range(&self.name, "read", offset, buf.len(), self.len)?;
        let start = offset as usize; // fits: checked against the Vec's length
        buf.copy_from_slice(&self.data()[start..start + buf.len()]);
        Ok(())
    }

    fn try_read_at(&self, buf: &mut [u8], offset: u64) -> bool {
        // Memory never waits.
        self.read_at(buf, offset).is_ok()
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        check_range(&self.name, "write", offset, buf.len(), self.len)?;
        let start = offset as usize;
        self.data()[start..start + buf.len()].copy_from_slice(buf);
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        Ok(())
    }

    fn len(&self) -> u64 {
        self.len
    }

    fn name(&self) -> &str {
        &self.name
    }
}

/// Fails with `UnexpectedEof` unless `[offset, offset + len)` lies within `dev_len` bytes.
/// Shared by every backend so they all reject out-of-range I/O the same way (and never overflow).
pub(super) fn check_range(
    name: &str,
    op: &str,
    offset: u64,
    len: usize,
    dev_len: u64,
) -> io::Result<()> {
    match offset.checked_add(len as u64) {
        Some(end) if end <= dev_len => Ok(()),
        _ => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("{name}: {op} of {len} bytes at offset {offset} is past the end of the device ({dev_len} bytes)"),
        )),
    }
}

/// The backend-independent test suite, run by each backend's tests.
#[cfg(test)]
pub(super) mod suite {
    use std::io;

    use crate::dev::BlockDev;

    /// Checks the [`BlockDev`] contract on a fresh zero-filled device of `len` bytes (`len >= 16 KiB`).
    pub(in crate::dev) fn run(dev: &dyn BlockDev, len: u64) {
        assert_eq!(dev.len(), len);
        assert!(!dev.name().is_empty());

        // Round trip at an unaligned offset crossing sector boundaries; neighbours stay zero.
        let data: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8 + 1).collect();
        dev.write_at(&data, 1001).unwrap();
        let mut back = vec![0xFF; 3002];
        dev.read_at(&mut back, 1000).unwrap();
        assert_eq!(back[0], 0);
        assert_eq!(&back[1..3001], &data[..]);
        assert_eq!(back[3001], 0);

        // Overwrite part of it, unaligned again.
        dev.write_at(&[7; 10], 1500).unwrap();
        let mut mid = [0; 12];
        dev.read_at(&mut mid, 1499).unwrap();
        assert_eq!(mid[0], data[498]);
        assert_eq!(&mid[1..11], &[7; 10]);
        assert_eq!(mid[11], data[509]);

        // I/O ending exactly at the end is fine, and so is an empty transfer at the end.
        dev.write_at(&[9, 8], len - 2).unwrap();
        let mut tail = [0; 2];
        dev.read_at(&mut tail, len - 2).unwrap();
        assert_eq!(tail, [9, 8]);
        dev.read_at(&mut [], len).unwrap();

        // Out of range: an error, never a panic, and a failed write changes nothing.
        let mut two = [0; 2];
        let err = dev.read_at(&mut two, len - 1).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert!(err.to_string().contains(&(len - 1).to_string()), "{err}");
        assert!(dev.read_at(&mut [0], len).is_err());
        assert!(dev.read_at(&mut [0], u64::MAX).is_err());
        assert!(dev.write_at(&[1, 1], len - 1).is_err());
        assert!(dev.write_at(&[1], u64::MAX).is_err());
        dev.read_at(&mut tail, len - 2).unwrap();
        assert_eq!(tail, [9, 8]);

        // Concurrent callers on disjoint ranges through `&self`.
        std::thread::scope(|s| {
            for t in 0..4u8 {
                s.spawn(move || {
                    let off = 8192 + u64::from(t) * 1024;
                    dev.write_at(&[t + 100; 1024], off).unwrap();
                    let mut got = [0; 1024];
                    dev.read_at(&mut got, off).unwrap();
                    assert_eq!(got, [t + 100; 1024]);
                });
            }
        });

        dev.sync().unwrap();
        dev.read_at(&mut back, 1000).unwrap();
        assert_eq!(&back[1..11], &data[..10]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_suite() {
        let dev = MemDev::new("mem0", 64 * 1024);
        suite::run(&dev, 64 * 1024);
        assert_eq!(dev.name(), "mem0");
    }

    #[test]
    fn empty_device_rejects_io() {
        let dev = MemDev::new("empty", 0);
        assert_eq!(dev.len(), 0);
        assert!(dev.read_at(&mut [0], 0).is_err());
        assert!(dev.write_at(&[0], 0).is_err());
    }
}
