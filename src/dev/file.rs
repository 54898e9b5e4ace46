//! [`FileDev`]: a regular file or a block device.

#![cfg_attr(
    not(test),
    deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)
)]

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use std::sync::RwLock;

use super::iomode::{Cache, Engine, IoConfig};
use super::mem::check_range;
use super::uring::Rings;
use super::{direct, BlockDev};

/// A regular file or block device. All I/O is positional (`pread`/`pwrite`), so concurrent
/// `&self` calls never race on a shared file cursor.
#[derive(Debug)]
pub struct FileDev {
    file: File,
    name: String,
    /// Size at open time: a PV does not change size under a running pool.
    len: u64,
    /// The path opened and the (device, inode) it named then: [`BlockDev::health`] checks
    /// the path still names this file.
    path: PathBuf,
    ident: (u64, u64),
    /// A regular file (sparse: [`BlockDev::reserve`] allocates its backing store).
    regular: bool,
    /// Whether its mode had a write bit at open (losing them all later fails the PV).
    mode_writable: bool,
    /// The io_uring engine (`None`: `pread`/`pwrite` from the calling thread).
    rings: Option<Rings>,
    /// Opened with `O_DIRECT` (`--cache none`): I/O goes through [`direct`].
    cache: Cache,
    /// With `O_DIRECT`: aligned writes share it, a read-modify-write holds it alone.
    rmw: RwLock<()>,
}

impl FileDev {
    /// Open an existing file or block device for reading and writing (never creates), and take
    /// it for this process alone while the returned device lives: a block device is opened with
    /// `O_EXCL` (the kernel refuses it to a second exclusive opener and while it is mounted), a
    /// regular file gets an exclusive `flock`. A PV that is taken fails with
    /// [`io::ErrorKind::ResourceBusy`] and a message naming the holder when it can be found.
    pub fn open(path: &Path) -> io::Result<FileDev> {
        Self::open_with(path, &IoConfig::default())
    }

    /// [`FileDev::open`] with the engine and cache mode `io` asks for.
    pub fn open_with(path: &Path, io: &IoConfig) -> io::Result<FileDev> {
        let is_blockdev = std::fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device());
        let mut oo = OpenOptions::new();
        oo.read(true).write(true);
        if is_blockdev {
            oo.custom_flags(libc::O_EXCL);
        }
        let file = oo.open(path).map_err(|e| {
            if is_blockdev && e.raw_os_error() == Some(libc::EBUSY) {
                busy(
                    path,
                    "is in use: another process holds the block device exclusively (an ssp \
                     process, a mounted filesystem, a device-mapper or RAID member)",
                )
            } else {
                annotate(path, "open", e)
            }
        })?;
        if !is_blockdev {
            lock_file(&file, path)?;
        }
        Self::from_file(file, path, io)
    }

    /// Create a sparse regular file of `size` bytes; an existing regular file is truncated, so
    /// its old content is discarded. An existing block device is opened as is (its content is
    /// kept), and refused if it is smaller than `size`.
    pub fn create(path: &Path, size: u64) -> io::Result<FileDev> {
        Self::create_with(path, size, &IoConfig::default())
    }

    /// [`FileDev::create`] with the engine and cache mode `io` asks for.
    pub fn create_with(path: &Path, size: u64, io: &IoConfig) -> io::Result<FileDev> {
        let is_blockdev = std::fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device());
        if is_blockdev {
            let dev = Self::open_with(path, io)?;
            if dev.len < size {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "{}: block device has {} bytes, smaller than the requested {size}",
                        dev.name, dev.len
                    ),
                ));
            }
            return Ok(dev);
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| annotate(path, "create", e))?;
        // Take the file before discarding its content: a PV another process holds stays intact.
        lock_file(&file, path)?;
        file.set_len(0)
            .and_then(|_| file.set_len(size))
            .map_err(|e| annotate(path, "set size", e))?;
        // Make the new file's size and directory entry durable, or a crash could lose the PV.
        file.sync_all().map_err(|e| annotate(path, "sync", e))?;
        sync_parent_dir(path).map_err(|e| annotate(path, "sync parent directory of", e))?;
        Self::from_file(file, path, io)
    }

    fn from_file(file: File, path: &Path, io: &IoConfig) -> io::Result<FileDev> {
        // Seeking to the end sizes block devices too (their metadata length is 0). The cursor is
        // otherwise unused since all I/O is positional.
        let len = (&file)
            .seek(SeekFrom::End(0))
            .map_err(|e| annotate(path, "get size of", e))?;
        let md = file.metadata().map_err(|e| annotate(path, "stat", e))?;
        let cache = io.cache_for(md.file_type().is_block_device());
        if cache == Cache::None {
            if len % direct::ALIGN as u64 != 0 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "{}: cache mode none (O_DIRECT) needs a size that is a multiple of {} \
                         bytes, not {len}; use --cache writeback",
                        path.display(),
                        direct::ALIGN
                    ),
                ));
            }
            direct::enable(file.as_raw_fd()).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "{}: cache mode none needs O_DIRECT, which its file system refuses \
                         ({e}); use --cache writeback",
                        path.display()
                    ),
                )
            })?;
        }
        let engine = io.engine(cache).map_err(|why| {
            io::Error::new(
                io::ErrorKind::Unsupported,
                format!("{}: {why}", path.display()),
            )
        })?;
        let rings = match engine {
            Engine::Sync => None,
            Engine::Uring => Some(
                Rings::new(file.as_raw_fd())
                    .map_err(|e| annotate(path, "set up io_uring for", e))?,
            ),
        };
        Ok(FileDev {
            file,
            name: path.display().to_string(),
            len,
            // The health check looks the path up again later, whatever the working directory.
            path: std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned()),
            ident: (md.dev(), md.ino()),
            regular: md.file_type().is_file(),
            mode_writable: md.mode() & 0o222 != 0,
            rings,
            cache,
            rmw: RwLock::new(()),
        })
    }

    /// Read exactly `buf.len()` bytes at `offset` with the engine (no alignment handling).
    fn raw_read(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        match &self.rings {
            Some(r) => r.read(buf, offset),
            None => self.file.read_exact_at(buf, offset),
        }
    }

    /// Write all of `buf` at `offset` with the engine (no alignment handling).
    fn raw_write(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        match &self.rings {
            Some(r) => r.write(buf, offset),
            None => self.file.write_all_at(buf, offset),
        }
    }

    /// What changed under the open file, if anything (see [`BlockDev::health`]).
    fn health_problem(&self) -> Option<String> {
        let md = match self.file.metadata() {
            Ok(md) => md,
            Err(e) => return Some(format!("cannot stat the open file: {e}")),
        };
        if md.nlink() == 0 {
            return Some("the PV file was deleted".into());
        }
        if self.regular && md.len() < self.len {
            return Some(format!(
                "the PV file was truncated from {} to {} bytes",
                self.len,
                md.len()
            ));
        }
        match std::fs::metadata(&self.path) {
            Ok(p) if (p.dev(), p.ino()) != self.ident => {
                return Some("the path now names another file".into())
            }
            Ok(_) => {}
            Err(e) => return Some(format!("the path cannot be looked up: {e}")),
        }
        if self.regular && self.mode_writable && md.mode() & 0o222 == 0 {
            return Some(format!(
                "the PV file was made read-only (mode {:o})",
                md.mode() & 0o7777
            ));
        }
        // SAFETY: an all-zero statvfs is a valid value of the plain C struct.
        let mut vfs: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: the fd is open for the lifetime of `self.file`; `vfs` is a valid out pointer.
        let rc = unsafe { libc::fstatvfs(self.file.as_raw_fd(), &mut vfs) };
        if rc == 0 && vfs.f_flag & libc::ST_RDONLY != 0 {
            return Some("its file system is now mounted read-only".into());
        }
        None
    }

    fn io_error(&self, op: &str, len: usize, offset: u64, e: io::Error) -> io::Error {
        io::Error::new(
            e.kind(),
            format!("{}: {op} of {len} bytes at offset {offset}: {e}", self.name),
        )
    }
}

impl BlockDev for FileDev {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        check_range(&self.name, "read", offset, buf.len(), self.len)?;
        let r = match self.cache {
            Cache::Writeback => self.raw_read(buf, offset),
            Cache::None => direct::read(buf, offset, &|b, o| self.raw_read(b, o)),
        };
        r.map_err(|e| self.io_error("read", buf.len(), offset, e))
    }

    fn try_read_at(&self, buf: &mut [u8], offset: u64) -> bool {
        // Without the page cache every read waits for the device.
        if self.cache == Cache::None {
            return false;
        }
        if check_range(&self.name, "read", offset, buf.len(), self.len).is_err() {
            return false;
        }
        let mut done = 0usize;
        while let Some(rest) = buf.get_mut(done..).filter(|r| !r.is_empty()) {
            let Ok(at) = libc::off_t::try_from(offset + done as u64) else {
                return false;
            };
            let iov = libc::iovec {
                iov_base: rest.as_mut_ptr().cast(),
                iov_len: rest.len(),
            };
            // SAFETY: the fd is open for the lifetime of `self.file`; `iov` describes `rest`,
            // which is valid for writes of its length and borrowed exclusively for the call.
            let n = unsafe { libc::preadv2(self.file.as_raw_fd(), &iov, 1, at, libc::RWF_NOWAIT) };
            match usize::try_from(n) {
                Ok(n) if n > 0 => done += n,
                // EAGAIN: not all in memory (a short read was the part that is; the rest
                // would wait); EOPNOTSUPP: no RWF_NOWAIT here; EOF or an error: `read_at`
                // reports it.
                _ if n < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) => {}
                _ => return false,
            }
        }
        true
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        // Refuse to grow a regular file past its size, like a real disk would.
        check_range(&self.name, "write", offset, buf.len(), self.len)?;
        let r = match self.cache {
            Cache::Writeback => self.raw_write(buf, offset),
            Cache::None => direct::write(
                buf,
                offset,
                &self.rmw,
                &|b, o| self.raw_read(b, o),
                &|b, o| self.raw_write(b, o),
            ),
        };
        r.map_err(|e| self.io_error("write", buf.len(), offset, e))
    }

    fn write_many_at(&self, writes: &[(&[u8], u64)]) -> io::Result<()> {
        for (b, off) in writes {
            check_range(&self.name, "write", *off, b.len(), self.len)?;
        }
        let aligned = writes
            .iter()
            .all(|(b, off)| direct::is_aligned(b.as_ptr(), b.len(), *off));
        match &self.rings {
            // One submission for the whole batch.
            Some(r) if self.cache == Cache::Writeback || aligned => {
                let _shared = (self.cache == Cache::None).then(|| {
                    self.rmw
                        .read()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                });
                r.write_many(writes).map_err(|e| {
                    let total: usize = writes.iter().map(|(b, _)| b.len()).sum();
                    let at = writes.first().map_or(0, |w| w.1);
                    self.io_error("batched write", total, at, e)
                })
            }
            _ => writes
                .iter()
                .try_for_each(|(b, off)| self.write_at(b, *off)),
        }
    }

    fn io_mode(&self) -> Option<(Engine, Cache)> {
        let engine = if self.rings.is_some() {
            Engine::Uring
        } else {
            Engine::Sync
        };
        Some((engine, self.cache))
    }

    fn sync(&self) -> io::Result<()> {
        match &self.rings {
            Some(r) => r.sync(),
            None => self.file.sync_data(),
        }
        .map_err(|e| io::Error::new(e.kind(), format!("{}: sync: {e}", self.name)))
    }

    fn len(&self) -> u64 {
        self.len
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn reserve(&self, offset: u64, len: u64) -> io::Result<()> {
        if !self.regular || len == 0 {
            return Ok(());
        }
        check_range(&self.name, "reserve", offset, len as usize, self.len)?;
        let (Ok(off), Ok(n)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
            return Ok(());
        };
        // Mode 0 allocates without changing the file size; ranges already allocated cost no
        // space, so reserving them again succeeds on a full file system.
        // SAFETY: the fd is open for the lifetime of `self.file`; fallocate takes plain integers.
        let rc = unsafe { libc::fallocate(self.file.as_raw_fd(), 0, off, n) };
        if rc == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            // A file system without fallocate: writes find out for themselves.
            Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => Ok(()),
            _ => Err(self.io_error("reserve", len as usize, offset, e)),
        }
    }

    fn health(&self) -> Result<(), String> {
        match self.health_problem() {
            Some(why) => Err(format!("{}: {why}", self.name)),
            None => Ok(()),
        }
    }
}

/// Take an exclusive `flock` on a PV file without waiting for a live holder; it is released
/// when the file is closed (the lock belongs to this open file description, so a second open in
/// the same process is refused too). A holder that is no longer a live process (a killed
/// process whose io_uring requests the kernel is still tearing down keeps its files open for a
/// moment after it exited) is waited for, up to [`DEAD_HOLDER_WAIT`].
fn lock_file(file: &File, path: &Path) -> io::Result<()> {
    let deadline = std::time::Instant::now() + DEAD_HOLDER_WAIT;
    loop {
        // SAFETY: flock on a valid, open descriptor; no memory is passed.
        let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(annotate(path, "lock", e));
        }
        let holder = std::fs::metadata(path).ok().and_then(|m| flock_holder(&m));
        let alive = holder
            .as_ref()
            .is_some_and(|(pid, _)| Path::new(&format!("/proc/{pid}")).exists());
        if alive || std::time::Instant::now() >= deadline {
            let who = holder
                .map(|(pid, comm)| format!("process {pid} ({comm})"))
                .unwrap_or_else(|| "another process".into());
            return Err(busy(path, &format!("is in use: {who} holds its lock")));
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// How long a PV lock held by no live process is waited for.
const DEAD_HOLDER_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

fn busy(path: &Path, what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::ResourceBusy,
        format!("PV {} {what}", path.display()),
    )
}

/// The process holding a `flock` on the file `m` describes, from `/proc/locks`
/// (`N: FLOCK ADVISORY WRITE PID MAJ:MIN:INODE 0 EOF`, device numbers in hex).
fn flock_holder(m: &std::fs::Metadata) -> Option<(u32, String)> {
    use std::os::unix::fs::MetadataExt;
    let dev = m.dev();
    let want = format!(
        "{:02x}:{:02x}:{}",
        libc::major(dev),
        libc::minor(dev),
        m.ino()
    );
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    let pid: u32 = locks.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        // "->" marks a waiter, which shifts the fields by one.
        let f = if f.get(1) == Some(&"->") {
            f.get(1..).unwrap_or_default()
        } else {
            f.as_slice()
        };
        (f.get(1) == Some(&"FLOCK") && f.get(5) == Some(&want.as_str()))
            .then(|| f.get(4)?.parse().ok())
            .flatten()
    })?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim().to_owned())
        .unwrap_or_else(|_| "?".into());
    Some((pid, comm))
}

fn annotate(path: &Path, op: &str, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{op} {}: {e}", path.display()))
}

fn sync_parent_dir(path: &Path) -> io::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(parent)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dev::mem::suite;

    const SIZE: u64 = 64 * 1024;

    #[test]
    fn try_read_reads_cached_data_and_declines_data_on_disk_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pv0");
        let size = 4 << 20;
        let dev = FileDev::create(&path, size).unwrap();
        let data: Vec<u8> = (0..size).map(|i| (i % 253) as u8).collect();
        dev.write_at(&data, 0).unwrap();
        dev.sync().unwrap();
        // Just written: in the page cache, read without waiting.
        let mut b = vec![0u8; 8192];
        assert!(dev.try_read_at(&mut b, 12288));
        assert_eq!(b, data[12288..12288 + 8192]);
        // Out of range: declined (read_at reports the error).
        assert!(!dev.try_read_at(&mut b, size - 4096));
        // Dropped from the page cache (a clean file: DONTNEED evicts it where the file system
        // has a page cache to drop from; tmpfs keeps its pages): declined, then read_at works.
        // SAFETY: the fd is open for the lifetime of `dev.file`; fadvise takes plain integers.
        let rc =
            unsafe { libc::posix_fadvise(dev.file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        assert_eq!(rc, 0);
        // SAFETY: an all-zero statfs is a valid value of the plain C struct.
        let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: the fd is open; `fs` is a valid out pointer.
        let rc = unsafe { libc::fstatfs(dev.file.as_raw_fd(), &mut fs) };
        assert_eq!(rc, 0);
        let far = 3 << 20;
        if fs.f_type != libc::TMPFS_MAGIC {
            assert!(
                !dev.try_read_at(&mut b, far),
                "read evicted data without waiting"
            );
        }
        dev.read_at(&mut b, far).unwrap();
        assert_eq!(b, data[far as usize..far as usize + 8192]);
        assert!(dev.try_read_at(&mut b, far));
        assert_eq!(b, data[far as usize..far as usize + 8192]);
    }

    #[test]
    fn file_suite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pv0");
        let dev = FileDev::create(&path, SIZE).unwrap();
        suite::run(&dev, SIZE);
        assert_eq!(dev.name(), path.display().to_string());
    }

    #[test]
    fn reopen_sees_data_and_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pv0");
        let dev = FileDev::create(&path, SIZE).unwrap();
        dev.write_at(b"hello", 4093).unwrap();
        dev.sync().unwrap();
        drop(dev);

        let dev = FileDev::open(&path).unwrap();
        assert_eq!(dev.len(), SIZE);
        let mut buf = [0; 5];
        dev.read_at(&mut buf, 4093).unwrap();
        assert_eq!(&buf, b"hello");
        // Writes past the end must not grow the file.
        assert!(dev.write_at(b"x", SIZE).is_err());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), SIZE);
    }

    #[test]
    fn create_truncates_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pv0");
        std::fs::write(&path, vec![0xAB; 100_000]).unwrap();
        let dev = FileDev::create(&path, 8192).unwrap();
        assert_eq!(dev.len(), 8192);
        let mut buf = [0xFF; 8192];
        dev.read_at(&mut buf, 0).unwrap();
        assert!(buf.iter().all(|&b| b == 0));
    }

    #[test]
    fn a_pv_is_taken_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pv0");
        let dev = FileDev::create(&path, SIZE).unwrap();
        dev.write_at(b"keep", 0).unwrap();
        for err in [
            FileDev::open(&path).unwrap_err(),
            FileDev::create(&path, SIZE).unwrap_err(),
        ] {
            assert_eq!(err.kind(), io::ErrorKind::ResourceBusy);
            let msg = err.to_string();
            let me = format!("process {}", std::process::id());
            assert!(
                msg.contains(&path.display().to_string()) && msg.contains(&me),
                "{msg}"
            );
        }
        // The refused create did not truncate the file.
        let mut buf = [0; 4];
        dev.read_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"keep");
        drop(dev);
        FileDev::open(&path).unwrap();
    }

    #[test]
    fn errors_name_path_and_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pv0");
        let dev = FileDev::create(&path, 4096).unwrap();
        let err = dev.read_at(&mut [0; 8], 4090).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        let msg = err.to_string();
        assert!(
            msg.contains(&path.display().to_string()) && msg.contains("4090"),
            "{msg}"
        );

        let missing = dir.path().join("missing");
        let err = FileDev::open(&missing).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().contains("missing"), "{err}");
    }

    #[test]
    fn reserve_allocates_backing_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pv0");
        let dev = FileDev::create(&path, 4 << 20).unwrap();
        let before = std::fs::metadata(&path).unwrap().blocks();
        dev.reserve(1 << 20, 1 << 20).unwrap();
        let after = std::fs::metadata(&path).unwrap().blocks();
        assert!(after >= before + 2048, "{before} -> {after} sectors");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 4 << 20);
        assert!(dev.reserve(4 << 20, 4096).is_err(), "past the end");
    }

    #[test]
    fn health_notices_truncation_deletion_and_chmod() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pv0");
        let dev = FileDev::create(&path, SIZE).unwrap();
        dev.health().unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).unwrap();
        let e = dev.health().unwrap_err();
        assert!(e.contains("read-only") && e.contains("pv0"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        dev.health().unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(SIZE / 2)
            .unwrap();
        assert!(dev.health().unwrap_err().contains("truncated"));
        std::fs::remove_file(&path).unwrap();
        assert!(dev.health().unwrap_err().contains("deleted"));
        // A new file at the same path is not the PV.
        std::fs::write(&path, vec![0u8; SIZE as usize]).unwrap();
        assert!(dev.health().unwrap_err().contains("deleted"));
        let other = FileDev::open(&path).unwrap();
        std::fs::rename(dir.path().join("pv0"), dir.path().join("pv0.old")).unwrap();
        std::fs::write(&path, vec![0u8; SIZE as usize]).unwrap();
        assert!(other.health().unwrap_err().contains("another file"));
    }
}
