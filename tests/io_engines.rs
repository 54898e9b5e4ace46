//! The PV I/O engines and cache modes through the real binaries: `sspd --io-engine uring` and
//! `sspd --cache none` serve an LU through write / flush / read / restart, `pool status`
//! reports the engine and cache mode (text and JSON, online and offline), and bad choices get
//! clear errors.

mod common;
use common::server::*;
use ssp::dev::{CacheChoice, EngineChoice, FileDev, IoConfig};
use std::path::Path;
use std::process::Command;

/// Writes 64 blocks of a pattern (and one unaligned span) to LU `vm1`, flushes, reads back.
const WRITE: &str = r#"
import nbd, sys
h = nbd.NBD(); h.connect_uri(sys.argv[1])
for i in range(64):
    h.pwrite(bytes([i % 250 + 1]) * 4096, i * 65536)
h.pwrite(b'engine' * 1000, 12345)
big = bytes(range(256)) * 4096
h.pwrite(big, 8 << 20)
h.flush()
for i in range(64):
    assert h.pread(4096, i * 65536) == bytes([i % 250 + 1]) * 4096, i
assert h.pread(6000, 12345) == b'engine' * 1000
assert h.pread(len(big), 8 << 20) == big
print('written')
"#;

/// Reads the same bytes back (after a restart).
const VERIFY: &str = r#"
import nbd, sys
h = nbd.NBD(); h.connect_uri(sys.argv[1])
for i in range(64):
    assert h.pread(4096, i * 65536) == bytes([i % 250 + 1]) * 4096, i
assert h.pread(6000, 12345) == b'engine' * 1000
assert h.pread(1 << 20, 8 << 20) == bytes(range(256)) * 4096
print('verified')
"#;

fn status(pool: &Path, extra: &[&str]) -> (String, String) {
    let mut a = vec!["pool", "status"];
    a.extend_from_slice(extra);
    let v = sspctl_json(pool, &a);
    (
        v["io_engine"].as_str().unwrap_or_default().to_owned(),
        v["cache"].as_str().unwrap_or_default().to_owned(),
    )
}

fn sspd_fails(pool: &Path, extra: &[&str]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_sspd"))
        .args(["--pool", pool.to_str().unwrap(), "--listen", "127.0.0.1:0"])
        .args(extra)
        .output()
        .unwrap();
    assert!(!o.status.success(), "sspd {extra:?} should fail");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// One serve / write / flush / read / stop / serve again / verify cycle with `flags`,
/// checking `pool status` online reports `engine` and `cache`.
fn cycle(dir: tempfile::TempDir, flags: &[&str], engine: &str, cache: &str) {
    let pool = make_pool(dir.path(), &[("vm1", "64M")]);
    let s = Server::serve_with(pool.clone(), dir, flags);
    assert_eq!(status(&pool, &[]), (engine.to_owned(), cache.to_owned()));
    let text = sspctl(&pool, &["pool", "status"]);
    assert!(
        text.contains(&format!("I/O Engine:        {engine}"))
            && text.contains(&format!("Cache Mode:        {cache}")),
        "{text}"
    );
    assert!(nbdsh(&s.uri("vm1"), WRITE).contains("written"));
    let (st, dir) = s.stop_keep();
    assert!(st.success());
    let s = Server::serve_with(pool.clone(), dir, flags);
    assert!(nbdsh(&s.uri("vm1"), VERIFY).contains("verified"));
    assert_eq!(status(&pool, &[]), (engine.to_owned(), cache.to_owned()));
    let (st, dir) = s.stop_keep();
    assert!(st.success());
    // The other engine and the page cache read the same bytes.
    let s = Server::serve_with(pool, dir, &["--io-engine", "sync", "--cache", "writeback"]);
    assert!(nbdsh(&s.uri("vm1"), VERIFY).contains("verified"));
    assert!(s.stop().success());
}

#[test]
fn sspd_with_io_uring_serves_an_lu_across_a_restart() {
    if let Err(why) = ssp::dev::iomode::uring_available() {
        // Where io_uring is unavailable, asking for it is a clear error, and auto falls back.
        eprintln!("SKIPPED the uring cycle: io_uring unavailable here ({why})");
        let dir = tempfile::tempdir().unwrap();
        let pool = make_pool(dir.path(), &[("vm1", "16M")]);
        let e = sspd_fails(&pool, &["--io-engine", "uring"]);
        assert!(e.contains("io_uring"), "{e}");
        assert_eq!(status(&pool, &[]).0, "sync");
        return;
    }
    cycle(
        tempfile::tempdir().unwrap(),
        &["--io-engine", "uring"],
        "uring",
        "writeback",
    );
}

/// A temp dir on a file system with O_DIRECT (tmpfs has none), or `None` (skip, said loudly).
fn direct_dir() -> Option<tempfile::TempDir> {
    for base in ["/var/tmp", "/tmp"] {
        let Ok(d) = tempfile::tempdir_in(base) else {
            continue;
        };
        let cfg = IoConfig::new(EngineChoice::Sync, CacheChoice::None);
        match FileDev::create_with(&d.path().join("probe"), 4096, &cfg) {
            Ok(_) => {
                std::fs::remove_file(d.path().join("probe")).unwrap();
                return Some(d);
            }
            Err(e) => eprintln!("{base}: {e}"),
        }
    }
    eprintln!("SKIPPED: no file system here supports O_DIRECT");
    None
}

#[test]
fn sspd_with_cache_none_serves_an_lu_across_a_restart() {
    let Some(dir) = direct_dir() else { return };
    let engine = if ssp::dev::iomode::uring_available().is_ok() {
        "uring"
    } else {
        "sync"
    };
    cycle(dir, &["--cache", "none"], engine, "none");
    let Some(dir) = direct_dir() else { return };
    cycle(
        dir,
        &["--cache", "none", "--io-engine", "sync"],
        "sync",
        "none",
    );
}

#[test]
fn offline_sspctl_takes_the_engine_and_cache_from_flags_and_env() {
    let Some(dir) = direct_dir() else { return };
    let pool = make_pool(dir.path(), &[("vm1", "16M")]);
    assert_eq!(
        status(&pool, &["--io-engine", "sync", "--cache", "none"]),
        ("sync".to_owned(), "none".to_owned())
    );
    // Offline defaults: auto engine, page cache for a file PV.
    let (engine, cache) = status(&pool, &[]);
    assert!(engine == "uring" || engine == "sync", "{engine}");
    assert_eq!(cache, "writeback");
    let o = Command::new(env!("CARGO_BIN_EXE_sspctl"))
        .args(["--pool", pool.to_str().unwrap(), "pool", "status", "--json"])
        .env("SSP_IO_ENGINE", "sync")
        .env("SSP_CACHE", "none")
        .output()
        .unwrap();
    assert!(o.status.success());
    let v = json_result(&String::from_utf8_lossy(&o.stdout)).unwrap();
    assert_eq!(
        (v["io_engine"].as_str(), v["cache"].as_str()),
        (Some("sync"), Some("none"))
    );
    // Unknown values: clap's error naming the choices, and the pool untouched.
    let e = sspctl_fails(&pool, &["--io-engine", "fast", "pool", "status"]);
    assert!(e.contains("fast") && e.contains("uring"), "{e}");
    let e = sspctl_fails(&pool, &["--cache", "unsafe", "pool", "status"]);
    assert!(e.contains("unsafe") && e.contains("writeback"), "{e}");
    let e = sspd_fails(&pool, &["--io-engine", "fast"]);
    assert!(e.contains("fast"), "{e}");
    assert_pool_check(&pool);
}

#[test]
fn cache_none_on_tmpfs_is_a_clear_error_and_loses_nothing() {
    let shm = Path::new("/dev/shm");
    if !shm.is_dir() {
        eprintln!("SKIPPED: no /dev/shm tmpfs here");
        return;
    }
    let dir = tempfile::tempdir_in(shm).unwrap();
    let pool = make_pool(dir.path(), &[("vm1", "16M")]);
    let s = Server::serve_with(pool.clone(), tempfile::tempdir().unwrap(), &[]);
    assert!(nbdsh(&s.uri("vm1"), WRITE).contains("written"));
    assert!(s.stop().success());
    let probe = IoConfig::new(EngineChoice::Sync, CacheChoice::None);
    if FileDev::create_with(&dir.path().join("probe"), 4096, &probe).is_ok() {
        eprintln!("SKIPPED: this tmpfs accepts O_DIRECT");
        return;
    }
    let e = sspd_fails(&pool, &["--cache", "none"]);
    assert!(
        e.contains("O_DIRECT") && e.contains("--cache writeback"),
        "{e}"
    );
    // Still whole with the page cache.
    let s = Server::serve_with(pool, tempfile::tempdir().unwrap(), &[]);
    assert!(nbdsh(&s.uri("vm1"), VERIFY).contains("verified"));
    assert!(s.stop().success());
}

#[test]
fn a_uring_sspd_killed_mid_write_restarts_at_once() {
    if ssp::dev::iomode::uring_available().is_err() {
        eprintln!("SKIPPED: io_uring unavailable here");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pool = make_pool(dir.path(), &[("vm1", "16M")]);
    let flags = ["--io-engine", "uring"];
    let mut s = Server::serve_with(pool.clone(), dir, &flags);
    let w = Writer::start(&s, "vm1", 0, 512);
    assert!(w.advances_from(w.writes() + 50));
    // SIGKILL with writes going on: io_uring requests in flight at the kill keep the PV file
    // open (and locked) until the kernel has torn the rings down; the next open waits for a
    // lock whose holder is dead instead of failing.
    s.child.kill().unwrap();
    s.child.wait().unwrap();
    drop(w);
    let dir = s.dir.take().unwrap();
    let s = Server::serve_with(pool.clone(), dir, &flags);
    assert_eq!(status(&pool, &[]).0, "uring");
    assert!(s.stop().success());
}
