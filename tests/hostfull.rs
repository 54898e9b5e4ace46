//! The host file system under a sparse PV file fills up while sspd serves it: the client gets
//! ENOSPC (not a poisoned pool), acknowledged data stays readable, `pool status` still answers,
//! and once space is freed writes work again; the pool checks clean after a restart.
//!
//! Runs on a size-limited tmpfs (needs root to mount; skipped with a message otherwise).

mod common;
use common::server::*;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs of `size` mounted on a fresh directory, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status();
        match st {
            Ok(s) if s.success() => Some(Tmpfs { dir }),
            other => {
                eprintln!("SKIP: cannot mount a tmpfs (root needed): {other:?}");
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// Fill the file system holding `path` with a file until the host refuses more.
fn fill(path: &Path) -> u64 {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0xEEu8; 1 << 20];
    let mut n = 0u64;
    for _ in 0..1024 {
        match f.write_all(&chunk) {
            Ok(()) => n += 1 << 20,
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
                break;
            }
        }
    }
    n
}

fn pat(i: u64) -> u64 {
    i % 250 + 1
}

/// qemu-io against `uri`: (whether it succeeded, everything it printed).
fn qemu_io(uri: &str, cmds: &[String]) -> (bool, String) {
    let mut c = Command::new("qemu-io");
    c.args(["-f", "raw"]);
    for cmd in cmds {
        c.args(["-c", cmd]);
    }
    let o = c.arg(uri).output().expect("qemu-io is needed");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let ok = o.status.success() && !text.contains("failed");
    (ok, text)
}

/// Write 1 MiB chunks (chunk i filled with `pat(i)`) from chunk `first`, each flushed, until
/// one fails. Returns how many were acknowledged and the failure's message.
fn write_until_full(uri: &str, first: u64) -> (u64, String) {
    for i in first..first + 200 {
        let (ok, text) = qemu_io(
            uri,
            &[format!("write -P {} {i}M 1M", pat(i)), "flush".into()],
        );
        if !ok {
            return (i - first, text);
        }
    }
    panic!("200 MiB fit on a 96 MiB file system");
}

/// Read chunks [0, n) back and check their patterns.
fn verify(uri: &str, n: u64) {
    let cmds: Vec<String> = (0..n)
        .map(|i| format!("read -P {} {i}M 1M", pat(i)))
        .collect();
    let (ok, text) = qemu_io(uri, &cmds);
    assert!(ok, "acknowledged data does not read back: {text}");
}

#[test]
fn host_fs_full_gives_enospc_keeps_data_and_recovers() {
    let Some(fs) = Tmpfs::mount("96m") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pool: PathBuf = dir.path().join("pool");
    let pv = fs.path().join("pv0.img");
    // A 512 MiB sparse PV on a 96 MiB file system, and an LU the host cannot hold.
    sspctl(
        &pool,
        &["pool", "create", "--pv", &format!("{}:512M", pv.display())],
    );
    sspctl(&pool, &["lu", "create", "vm1", "--size", "400M"]);
    let filler = fs.path().join("filler");
    let filled = fill(&filler);
    assert!(filled >= 8 << 20, "only {filled} bytes of filler fit");
    // Give the filler back partly so some data fits, keep the rest to free later.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&filler)
        .unwrap();
    f.set_len(filled - (12 << 20)).unwrap();
    drop(f);

    let s = Server::serve(pool.clone(), dir);
    let (acked, err) = write_until_full(&s.uri("vm1"), 0);
    assert!(
        err.contains("No space left on device"),
        "the client must see ENOSPC: {err}"
    );
    assert!(acked >= 2, "only {acked} MiB were written before ENOSPC");

    // The pool is not poisoned: status answers, acknowledged data reads back.
    let st = sspctl(&pool, &["pool", "status", "--json"]);
    assert!(st.contains("\"mirror_state\""), "{st}");
    verify(&s.uri("vm1"), acked);

    // Free space on the host: writes go on where they stopped.
    std::fs::remove_file(&filler).unwrap();
    let (more, err) = write_until_full(&s.uri("vm1"), acked);
    assert!(more >= 8, "after freeing space only {more} MiB more: {err}");
    assert!(err.contains("No space left on device"), "{err}");
    eprintln!("{acked} MiB acknowledged before ENOSPC, {more} MiB more once the filler was gone");

    // A clean stop checks the pool (Server::stop); a restart serves everything acknowledged.
    let (status, keep) = s.stop_keep();
    assert!(status.success(), "{status:?}");
    let s = Server::serve(pool.clone(), keep);
    verify(&s.uri("vm1"), acked + more);
    let status = s.stop();
    assert!(status.success());
    drop(fs);
}

/// A PV on a file system without fallocate: reserving succeeds without allocating, and writes
/// fail with ENOSPC while `full` is set.
struct NoFallocate {
    inner: ssp::dev::MemDev,
    full: std::sync::atomic::AtomicBool,
}

impl ssp::dev::BlockDev for NoFallocate {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        if self.full.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(std::io::Error::from(std::io::ErrorKind::StorageFull));
        }
        self.inner.write_at(buf, offset)
    }
    fn sync(&self) -> std::io::Result<()> {
        self.inner.sync()
    }
    fn len(&self) -> u64 {
        self.inner.len()
    }
    fn name(&self) -> &str {
        self.inner.name()
    }
}

/// Without fallocate the host's ENOSPC reaches the write itself: the blocks stay buffered, the
/// caller gets ENOSPC, nothing is poisoned, and once there is room the same data goes out.
#[test]
fn enospc_from_a_write_keeps_blocks_buffered_and_does_not_poison() {
    use common::{assert_check, copts, small_opts, MB};
    use ssp::dev::BlockDev;
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    let dev = Arc::new(NoFallocate {
        inner: ssp::dev::MemDev::new("pv", 64 * MB),
        full: false.into(),
    });
    let pool = ssp::pool::Pool::create(
        vec![dev.clone() as Arc<dyn BlockDev>],
        &copts(),
        small_opts(),
    )
    .unwrap();
    let id = pool.lu_create("a", 16 * MB).unwrap().id;
    let a = vec![0xAAu8; MB as usize];
    pool.write(id, 0, &a, false).unwrap();
    pool.flush().unwrap();

    dev.full.store(true, Ordering::SeqCst);
    let b = vec![0xBBu8; MB as usize];
    let e = pool.write(id, MB, &b, false).unwrap_err();
    assert_eq!(e.errno(), libc::ENOSPC, "{e}");
    assert_eq!(pool.flush().unwrap_err().errno(), libc::ENOSPC);
    let mut got = vec![0u8; MB as usize];
    pool.read(id, 0, &mut got).unwrap();
    assert!(got == a, "acknowledged data must stay readable");

    dev.full.store(false, Ordering::SeqCst);
    pool.write(id, MB, &b, false).unwrap();
    pool.flush().unwrap();
    pool.read(id, MB, &mut got).unwrap();
    assert!(got == b);
    pool.read(id, 0, &mut got).unwrap();
    assert!(got == a);
    assert_check(&pool);
}
