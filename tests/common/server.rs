//! A real `sspd` process on 127.0.0.1 and the command-line clients tests drive it with.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub struct Server {
    pub child: Child,
    pub port: u16,
    pub pool: PathBuf,
    pub dir: Option<tempfile::TempDir>,
}

impl Server {
    /// A fresh pool with `lus` (name, size), served on 127.0.0.1 (port chosen by the OS).
    pub fn start(lus: &[(&str, &str)]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let pool = make_pool(dir.path(), lus);
        Self::serve(pool, dir)
    }

    /// Serve an existing pool again (the pool directory lives in a kept temp dir).
    pub fn restart(pool: PathBuf) -> Server {
        Self::serve(pool, tempfile::tempdir().unwrap())
    }

    pub fn serve(pool: PathBuf, dir: tempfile::TempDir) -> Server {
        Self::serve_with(pool, dir, &[])
    }

    pub fn serve_with(pool: PathBuf, dir: tempfile::TempDir, extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sspd"))
            .args(["--pool", pool.to_str().unwrap(), "--listen", "127.0.0.1:0"])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        while !line.contains("listening on") {
            line.clear();
            assert!(
                out.read_line(&mut line).unwrap() > 0,
                "sspd exited before listening"
            );
        }
        let port = line
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in {line:?}"));
        Server {
            child,
            port,
            pool,
            dir: Some(dir),
        }
    }

    pub fn uri(&self, export: &str) -> String {
        format!("nbd://127.0.0.1:{}/{export}", self.port)
    }

    /// SIGTERM and the exit status, keeping the pool's files for a restart.
    pub fn stop_keep(mut self) -> (std::process::ExitStatus, tempfile::TempDir) {
        let dir = self.dir.take().unwrap();
        (self.stop_inner(), dir)
    }

    /// SIGTERM, and the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> std::process::ExitStatus {
        if self.child.try_wait().unwrap().is_none() {
            unsafe_kill_term(self.child.id());
        }
        let st = self.child.wait().unwrap();
        // The pool must be consistent and closed cleanly afterwards.
        let out = sspctl(&self.pool, &["check"]);
        assert!(out.contains("OK"), "{out}");
        st
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn unsafe_kill_term(pid: u32) {
    let st = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}

/// A pool in `dir/pool` on a sparse 512 MiB PV in `dir`, with `lus` (name, size).
pub fn make_pool(dir: &Path, lus: &[(&str, &str)]) -> PathBuf {
    let pool = dir.join("pool");
    let pv = format!("{}:512M", dir.join("pv0.img").display());
    sspctl(&pool, &["pool", "create", "--pv", &pv]);
    for (name, size) in lus {
        sspctl(&pool, &["lu", "create", name, "--size", size]);
    }
    pool
}

pub fn sspctl(pool: &Path, args: &[&str]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_sspctl"))
        .arg("--pool")
        .arg(pool)
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "sspctl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

pub fn run(cmd: &str, args: &[&str]) -> String {
    let o = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd} is needed (scripts/install-deps.sh installs it): {e}"));
    assert!(
        o.status.success(),
        "{cmd} {args:?} failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn random_file(path: &Path, len: usize) {
    let mut x = 0x1234_5678_9abc_def1u64;
    let mut v = vec![0u8; len];
    for c in v.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
    }
    std::fs::write(path, v).unwrap();
}

/// A libnbd script (python3-libnbd, Debian's /usr/bin/python3) against the server.
pub fn nbdsh(uri: &str, script: &str) -> String {
    let o = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(script)
        .arg(uri)
        .output()
        .unwrap_or_else(|e| panic!("/usr/bin/python3 with python3-libnbd is needed: {e}"));
    assert!(
        o.status.success(),
        "script failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn sspctl_fails(pool: &Path, args: &[&str]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_sspctl"))
        .arg("--pool")
        .arg(pool)
        .args(args)
        .output()
        .unwrap();
    assert!(!o.status.success(), "sspctl {args:?} should fail");
    String::from_utf8_lossy(&o.stderr).into_owned()
}
