//! The io_uring engine: positional reads, writes and data syncs of one file through rings.
//!
//! Design: the device trait is synchronous and is called from many threads at once (tokio's
//! blocking pool, flight writers, checkpoints, scrub). Each call checks a ring out of the
//! device's pool of idle rings (or sets up a new one), submits its operations, waits for their
//! completions on that ring and puts the ring back. A ring is owned by one caller at a time, so
//! its queues need no lock and a completion is never handed across threads: there is no
//! submission thread, no wake-up latency and no matching of completions by `user_data` between
//! callers (the `user_data` only orders a caller's own batch). The pool grows to the largest
//! number of concurrent callers seen and keeps at most [`MAX_IDLE`] idle rings. Batches
//! ([`Rings::write_many`]) go to the kernel in one `io_uring_enter`.
//!
//! Files are not registered with the rings: a registered file is held by the ring until the
//! ring's teardown, which the kernel finishes asynchronously after the ring is closed (and
//! after the process exits), so the PV's `flock` would outlive the device and a restarted
//! server could find its own PV taken. The per-operation descriptor lookup is the price.
//!
//! A submitted operation points into the caller's buffer, so no call returns while one of its
//! operations may still be in flight: waits are retried on `EINTR`/`EAGAIN`/`EBUSY`, and a ring
//! whose `io_uring_enter` failed otherwise (nothing was consumed) is closed, not reused.

#![cfg_attr(
    not(test),
    deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)
)]

use std::io;
use std::os::unix::io::RawFd;
use std::sync::{Mutex, PoisonError};

use io_uring::{opcode, squeue, types, IoUring};

/// Submission queue entries per ring (the most operations one batch puts in flight).
const DEPTH: u32 = 64;
/// Idle rings kept per device.
const MAX_IDLE: usize = 32;

/// Set up a ring and run a no-op on it: `Err` says why io_uring cannot be used here.
pub(super) fn probe() -> Result<(), String> {
    let mut ring = IoUring::new(2).map_err(|e| format!("io_uring_setup: {e}"))?;
    let nop = opcode::Nop::new().build().user_data(7);
    // SAFETY: a no-op references no memory.
    unsafe { ring.submission().push(&nop) }.map_err(|_| "submission queue full".to_string())?;
    ring.submit_and_wait(1)
        .map_err(|e| format!("io_uring_enter: {e}"))?;
    let done = ring
        .completion()
        .next()
        .map(|c| (c.user_data(), c.result()));
    match done {
        Some((7, r)) if r >= 0 => Ok(()),
        Some((_, r)) => Err(format!(
            "a no-op failed: {}",
            io::Error::from_raw_os_error(-r)
        )),
        None => Err("a no-op did not complete".into()),
    }
}

/// The bytes one operation moved; `None`: it was interrupted (`EINTR`/`EAGAIN` as its result)
/// and is to be submitted again, at most [`RETRIES`] times per transfer.
fn retry(r: Option<io::Result<usize>>, tries: &mut u32) -> io::Result<Option<usize>> {
    match r.unwrap_or(Ok(0)) {
        Ok(n) => Ok(Some(n)),
        Err(e)
            if *tries < RETRIES
                && matches!(e.raw_os_error(), Some(libc::EINTR) | Some(libc::EAGAIN)) =>
        {
            *tries += 1;
            std::thread::yield_now();
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Resubmissions of an interrupted transfer before its error is returned.
const RETRIES: u32 = 1000;

/// One ring.
struct Ring {
    ring: IoUring,
}

/// The io_uring engine for one open file.
pub(super) struct Rings {
    fd: RawFd,
    idle: Mutex<Vec<Ring>>,
}

impl std::fmt::Debug for Rings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rings").field("fd", &self.fd).finish()
    }
}

/// One operation of a batch.
#[derive(Clone, Copy)]
enum Op {
    Read {
        ptr: *mut u8,
        len: usize,
        off: u64,
    },
    Write {
        ptr: *const u8,
        len: usize,
        off: u64,
    },
    Sync,
}

impl Rings {
    /// The engine for `fd`, which must stay open while this lives. Sets up the first ring now,
    /// so a host without io_uring fails here rather than on the first I/O.
    pub(super) fn new(fd: RawFd) -> io::Result<Rings> {
        let rings = Rings {
            fd,
            idle: Mutex::new(Vec::new()),
        };
        let first = rings.new_ring()?;
        rings.give(first);
        Ok(rings)
    }

    fn new_ring(&self) -> io::Result<Ring> {
        Ok(Ring {
            ring: IoUring::new(DEPTH)?,
        })
    }

    fn take(&self) -> io::Result<Ring> {
        let popped = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        match popped {
            Some(r) => Ok(r),
            None => self.new_ring(),
        }
    }

    fn give(&self, r: Ring) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < MAX_IDLE {
            idle.push(r);
        }
    }

    /// Read exactly `buf.len()` bytes at `off` (short reads continue; end of file is
    /// `UnexpectedEof`).
    pub(super) fn read(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        let mut done = 0usize;
        let mut tries = 0u32;
        while done < buf.len() {
            let rest = buf.get_mut(done..).unwrap_or_default();
            let op = Op::Read {
                ptr: rest.as_mut_ptr(),
                len: rest.len().min(u32::MAX as usize),
                off: off + done as u64,
            };
            match retry(Some(self.run1(op)?), &mut tries)? {
                Some(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "read past the end of the file",
                    ))
                }
                Some(n) => done += n,
                None => {}
            }
        }
        Ok(())
    }

    /// Write all of `buf` at `off`.
    pub(super) fn write(&self, buf: &[u8], off: u64) -> io::Result<()> {
        self.write_many(&[(buf, off)])
    }

    /// Write every `(bytes, offset)` pair, all submitted at once (in groups of the ring's
    /// depth); short writes are continued one by one.
    pub(super) fn write_many(&self, writes: &[(&[u8], u64)]) -> io::Result<()> {
        for group in writes.chunks(DEPTH as usize) {
            let ops: Vec<Op> = group
                .iter()
                .map(|(b, off)| Op::Write {
                    ptr: b.as_ptr(),
                    len: b.len().min(u32::MAX as usize),
                    off: *off,
                })
                .collect();
            let mut results: Vec<Option<io::Result<usize>>> =
                (0..ops.len()).map(|_| None).collect();
            self.run(&ops, &mut results)?;
            for ((b, off), r) in group.iter().zip(results) {
                let mut tries = 0u32;
                let mut done = retry(Some(unfinished(r)), &mut tries)?.unwrap_or(0);
                while done < b.len() {
                    let rest = b.get(done..).unwrap_or_default();
                    let op = Op::Write {
                        ptr: rest.as_ptr(),
                        len: rest.len().min(u32::MAX as usize),
                        off: off + done as u64,
                    };
                    match retry(Some(self.run1(op)?), &mut tries)? {
                        Some(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
                        Some(n) => done += n,
                        None => {}
                    }
                }
            }
        }
        Ok(())
    }

    /// Make completed writes durable (`IORING_OP_FSYNC` with `DATASYNC`, as `fdatasync`).
    pub(super) fn sync(&self) -> io::Result<()> {
        self.run1(Op::Sync)?.map(|_| ())
    }

    /// [`Rings::run`] for one operation (no allocation): its result.
    fn run1(&self, op: Op) -> io::Result<io::Result<usize>> {
        let mut result = [None];
        self.run(&[op], &mut result)?;
        let [r] = result;
        Ok(unfinished(r))
    }

    /// Submit `ops` (at most [`DEPTH`]) on one ring and wait for all of them; the result of each
    /// (bytes moved) lands in `results` at its index (`None`: not submitted, the queue was
    /// full). The pointers in `ops` must be valid for the call.
    fn run(&self, ops: &[Op], results: &mut [Option<io::Result<usize>>]) -> io::Result<()> {
        let mut ring = match self.take() {
            Ok(r) => r,
            Err(e) => {
                // No ring to be had now (the descriptor or memory limit under a burst of
                // callers): do these operations with plain system calls rather than fail I/O.
                tracing::debug!("io_uring: no ring ({e}); using pread/pwrite for this call");
                for (op, slot) in ops.iter().zip(results.iter_mut()) {
                    *slot = Some(self.syscall(*op));
                }
                return Ok(());
            }
        };
        let mut pushed = 0usize;
        {
            let mut sq = ring.ring.submission();
            for (i, op) in ops.iter().enumerate() {
                let fd = types::Fd(self.fd);
                let entry: squeue::Entry = match *op {
                    Op::Read { ptr, len, off } => {
                        opcode::Read::new(fd, ptr, len as u32).offset(off).build()
                    }
                    Op::Write { ptr, len, off } => {
                        opcode::Write::new(fd, ptr, len as u32).offset(off).build()
                    }
                    Op::Sync => opcode::Fsync::new(fd)
                        .flags(types::FsyncFlags::DATASYNC)
                        .build(),
                };
                // SAFETY: the buffers the entries point to are borrowed by the caller for this
                // whole call, and the call does not return before every pushed entry completed.
                if unsafe { sq.push(&entry.user_data(i as u64)) }.is_err() {
                    break;
                }
                pushed += 1;
            }
        }
        let mut completed = 0usize;
        let mut submitted = false;
        while completed < pushed {
            match ring.ring.submit_and_wait(pushed - completed) {
                Ok(_) => submitted = true,
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EINTR) | Some(libc::EAGAIN) | Some(libc::EBUSY)
                    ) =>
                {
                    if e.raw_os_error() != Some(libc::EINTR) {
                        std::thread::yield_now();
                    }
                }
                // The kernel reports an error only when it submitted nothing: the entries were
                // not consumed, and dropping the ring drops them with it.
                Err(e) if !submitted => return Err(e),
                // A wait failed with entries in flight: they point into the caller's buffers,
                // so keep waiting for them on this ring.
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(1)),
            }
            for c in ring.ring.completion() {
                let i = c.user_data() as usize;
                let r = if c.result() < 0 {
                    Err(io::Error::from_raw_os_error(-c.result()))
                } else {
                    Ok(c.result() as usize)
                };
                if let Some(slot) = results.get_mut(i) {
                    if slot.is_none() {
                        completed += 1;
                    }
                    *slot = Some(r);
                }
            }
        }
        self.give(ring);
        Ok(())
    }
}

impl Rings {
    /// One operation as a plain system call (`pread`, `pwrite`, `fdatasync`).
    fn syscall(&self, op: Op) -> io::Result<usize> {
        let rc = match op {
            Op::Read { ptr, len, off } => {
                let off = libc::off_t::try_from(off)
                    .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
                // SAFETY: `ptr` is valid for writes of `len` bytes for the call (see `run`).
                unsafe { libc::pread(self.fd, ptr.cast(), len, off) }
            }
            Op::Write { ptr, len, off } => {
                let off = libc::off_t::try_from(off)
                    .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
                // SAFETY: `ptr` is valid for reads of `len` bytes for the call (see `run`).
                unsafe { libc::pwrite(self.fd, ptr.cast(), len, off) }
            }
            // SAFETY: a plain call on a descriptor the owner keeps open.
            Op::Sync => (unsafe { libc::fdatasync(self.fd) }) as isize,
        };
        usize::try_from(rc).map_err(|_| io::Error::last_os_error())
    }
}

/// An operation's result; one never submitted (the queue was full) is an error.
fn unfinished(r: Option<io::Result<usize>>) -> io::Result<usize> {
    r.unwrap_or_else(|| {
        Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            "io_uring submission queue full",
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::io::AsRawFd;

    #[test]
    fn the_syscall_fallback_and_the_ring_see_the_same_bytes() {
        if let Err(why) = probe() {
            eprintln!("SKIPPED: io_uring unavailable ({why})");
            return;
        }
        let f = tempfile::tempfile().unwrap();
        f.set_len(8192).unwrap();
        let r = Rings::new(f.as_raw_fd()).unwrap();
        let data = vec![0x3Cu8; 5000];
        let n = r
            .syscall(Op::Write {
                ptr: data.as_ptr(),
                len: data.len(),
                off: 100,
            })
            .unwrap();
        assert_eq!(n, 5000);
        r.syscall(Op::Sync).unwrap();
        let mut back = vec![0u8; 5000];
        r.read(&mut back, 100).unwrap();
        assert_eq!(back, data);
        r.write(&[7; 10], 8182).unwrap();
        let mut tail = [0u8; 10];
        let n = r
            .syscall(Op::Read {
                ptr: tail.as_mut_ptr(),
                len: 10,
                off: 8182,
            })
            .unwrap();
        assert_eq!((n, tail), (10, [7; 10]));
        // Past the end: the ring's read reports end of file.
        let e = r.read(&mut [0; 4], 8190).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }
}
