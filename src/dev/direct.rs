//! I/O on a file opened with `O_DIRECT` (`--cache none`): the kernel wants the file offset,
//! the length and the memory address aligned (to the device's logical block size; [`ALIGN`]
//! covers every device of up to 4 KiB sectors). The pool's own I/O is 4 KiB aligned in offset
//! and length, so it goes straight through when its buffer is aligned too, and through one
//! aligned bounce copy when only the memory is not. Unaligned offsets or lengths (never the
//! pool's, but the device contract allows them) read the covering aligned span, and writes
//! patch it (read-modify-write), under an exclusive lock so that concurrent writes to other
//! bytes of the same 4 KiB block are not lost.

#![cfg_attr(
    not(test),
    deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)
)]

use std::alloc::{self, Layout};
use std::io;
use std::ptr::NonNull;
use std::sync::{PoisonError, RwLock};

/// Alignment of offsets, lengths and memory for `O_DIRECT`.
pub const ALIGN: usize = 4096;
const ALIGN_U64: u64 = ALIGN as u64;

/// A zeroed buffer whose address and length are multiples of [`ALIGN`].
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the buffer owns its allocation exclusively, like a `Vec<u8>`.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only reads, like `&[u8]`.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// `len` bytes rounded up to a multiple of [`ALIGN`] (at least one block), zeroed.
    pub fn new(len: usize) -> AlignedBuf {
        let len = len.max(1).next_multiple_of(ALIGN);
        let layout = Self::layout(len);
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw) else {
            alloc::handle_alloc_error(layout)
        };
        AlignedBuf { ptr, len }
    }

    fn layout(len: usize) -> Layout {
        Layout::from_size_align(len, ALIGN)
            .unwrap_or_else(|_| alloc::handle_alloc_error(Layout::new::<u8>()))
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr` is a live, initialised (zeroed) allocation of `len` bytes.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this very layout.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), Self::layout(self.len)) }
    }
}

/// Whether `O_DIRECT` can move these bytes as they are.
pub fn is_aligned(addr: *const u8, len: usize, off: u64) -> bool {
    (addr as usize) % ALIGN == 0 && len % ALIGN == 0 && off % ALIGN_U64 == 0
}

/// The aligned span `[start, end)` covering `[off, off + len)`.
fn span(off: u64, len: usize) -> (u64, u64) {
    let start = off - off % ALIGN_U64;
    let end = (off + len as u64).next_multiple_of(ALIGN_U64);
    (start, end)
}

type RawRead<'a> = &'a dyn Fn(&mut [u8], u64) -> io::Result<()>;
type RawWrite<'a> = &'a dyn Fn(&[u8], u64) -> io::Result<()>;

/// Read `buf.len()` bytes at `off` with `raw`, which reads aligned spans only.
pub fn read(buf: &mut [u8], off: u64, raw: RawRead<'_>) -> io::Result<()> {
    if buf.is_empty() {
        return Ok(());
    }
    if is_aligned(buf.as_ptr(), buf.len(), off) {
        return raw(buf, off);
    }
    let (start, end) = span(off, buf.len());
    let mut b = AlignedBuf::new((end - start) as usize);
    raw(&mut b, start)?;
    let at = (off - start) as usize;
    let src = b
        .get(at..at + buf.len())
        .ok_or_else(|| io::Error::other("bounce buffer too short"))?;
    buf.copy_from_slice(src);
    Ok(())
}

/// Write all of `buf` at `off` with `raw_write` (aligned spans only), reading with `raw_read`
/// the rest of blocks written in part. `rmw` is the device's lock: aligned writes share it,
/// a read-modify-write holds it alone.
pub fn write(
    buf: &[u8],
    off: u64,
    rmw: &RwLock<()>,
    raw_read: RawRead<'_>,
    raw_write: RawWrite<'_>,
) -> io::Result<()> {
    if buf.is_empty() {
        return Ok(());
    }
    if is_aligned(buf.as_ptr(), buf.len(), off) {
        let _shared = rmw.read().unwrap_or_else(PoisonError::into_inner);
        return raw_write(buf, off);
    }
    if off % ALIGN_U64 == 0 && buf.len() % ALIGN == 0 {
        // Whole blocks from unaligned memory: one bounce copy.
        let mut b = AlignedBuf::new(buf.len());
        b.copy_from_slice(buf);
        let _shared = rmw.read().unwrap_or_else(PoisonError::into_inner);
        return raw_write(&b, off);
    }
    let (start, end) = span(off, buf.len());
    let mut b = AlignedBuf::new((end - start) as usize);
    let _alone = rmw.write().unwrap_or_else(PoisonError::into_inner);
    let first_partial = off % ALIGN_U64 != 0;
    let last_partial = (off + buf.len() as u64) % ALIGN_U64 != 0;
    if end - start == ALIGN_U64 || (first_partial && last_partial && end - start <= 2 * ALIGN_U64) {
        raw_read(&mut b, start)?;
    } else {
        if first_partial {
            raw_read(b.get_mut(..ALIGN).unwrap_or_default(), start)?;
        }
        if last_partial {
            let tail = b.len() - ALIGN;
            raw_read(b.get_mut(tail..).unwrap_or_default(), end - ALIGN_U64)?;
        }
    }
    let at = (off - start) as usize;
    b.get_mut(at..at + buf.len())
        .ok_or_else(|| io::Error::other("bounce buffer too short"))?
        .copy_from_slice(buf);
    raw_write(&b, start)
}

/// Turn on `O_DIRECT` for an open file: `Err` when its file system does not support it
/// (tmpfs, some FUSE and network file systems).
pub fn enable(fd: std::os::unix::io::RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor the caller keeps open; plain integer arguments.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    let rc = unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_DIRECT) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_buffers_are_aligned_and_zeroed() {
        for n in [1, 4095, 4096, 4097, 1 << 20] {
            let b = AlignedBuf::new(n);
            assert!(b.len() >= n && b.len() % ALIGN == 0);
            assert!(is_aligned(b.as_ptr(), b.len(), 0));
            assert!(b.iter().all(|&x| x == 0));
        }
        assert_eq!(span(4095, 2), (0, 8192));
        assert_eq!(span(4096, 4096), (4096, 8192));
        assert!(!is_aligned(
            AlignedBuf::new(8192).as_ptr().wrapping_add(1),
            4096,
            0
        ));
    }
}
