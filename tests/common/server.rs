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

/// `sspctl ... --json`, parsed: its result (after the progress lines of a verb that waits).
pub fn sspctl_json(pool: &Path, args: &[&str]) -> serde_json::Value {
    let mut a = args.to_vec();
    a.push("--json");
    let out = sspctl(pool, &a);
    json_result(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
}

/// The last JSON document of `sspctl --json` output: the result, after any progress lines.
pub fn json_result(out: &str) -> serde_json::Result<serde_json::Value> {
    let mut last = None;
    for v in serde_json::Deserializer::from_str(out).into_iter::<serde_json::Value>() {
        last = Some(v?);
    }
    last.ok_or_else(|| serde::de::Error::custom("no JSON document"))
}

/// `sspctl check` (through sspd when it runs) finds no error.
pub fn assert_pool_check(pool: &Path) {
    let c = sspctl_json(pool, &["check"]);
    assert!(c["errors"].as_array().unwrap().is_empty(), "check: {c}");
}

/// Poll `f` (every 50 ms, at most `secs`) until it holds.
pub fn wait_for(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !f() {
        assert!(
            std::time::Instant::now() < end,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A pool with `lus`, served by sspd with `extra` flags, whose LU `lu` starts with `fill`
/// random bytes (kept in `data.raw` beside the pool).
pub fn serve_filled(
    lus: &[(&str, &str)],
    lu: &str,
    fill: usize,
    extra: &[&str],
) -> (Server, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let pool = make_pool(dir.path(), lus);
    let data = dir.path().join("data.raw");
    random_file(&data, fill);
    let s = Server::serve_with(pool, dir, extra);
    let d = data.to_str().unwrap();
    run(
        "qemu-img",
        &["convert", "-n", "-f", "raw", "-O", "raw", d, &s.uri(lu)],
    );
    (s, data)
}

/// LU `lu` of `s` still starts with the bytes of the file `data`.
pub fn assert_lu_starts_with(s: &Server, lu: &str, data: &Path) {
    let out = s.pool.parent().unwrap().join("out.raw");
    let o = out.to_str().unwrap();
    run(
        "qemu-img",
        &["convert", "-f", "raw", "-O", "raw", &s.uri(lu), o],
    );
    let got = std::fs::read(&out).unwrap();
    let want = std::fs::read(data).unwrap();
    assert!(
        got.get(..want.len()) == Some(&want[..]),
        "the data of {lu} changed"
    );
}

/// A python-libnbd client writing 4 KiB blocks at random to `blocks` blocks from byte `base`
/// of an export, with a flush every 8, counting completed writes in a file, until a stop file
/// appears (two minutes at most); at the end it reads back what it wrote.
pub struct Writer {
    child: Child,
    progress: PathBuf,
    stop: PathBuf,
}

const WRITER: &str = r#"
import nbd, os, sys, time, random
h = nbd.NBD()
h.connect_uri(sys.argv[1])
prog, stop, base, blocks = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
n, written = 0, {}
deadline = time.time() + 120
while not os.path.exists(stop) and time.time() < deadline:
    i = random.randrange(blocks)
    buf = (n + 1).to_bytes(8, 'little') * 512
    h.pwrite(buf, base + i * 4096)
    written[i] = buf
    n += 1
    if n % 8 == 0:
        h.flush()
    with open(prog + '.tmp', 'w') as f:
        f.write(str(n))
    os.replace(prog + '.tmp', prog)
bad = sum(1 for i, b in written.items() if h.pread(4096, base + i * 4096) != b)
h.shutdown()
print(n, bad)
"#;

impl Writer {
    /// Start it and wait (bounded) until it has completed 16 writes.
    pub fn start(s: &Server, export: &str, base: u64, blocks: u32) -> Writer {
        let dir = s.pool.parent().unwrap();
        let progress = dir.join("writer.progress");
        let stop = dir.join("writer.stop");
        let child = Command::new("/usr/bin/python3")
            .args(["-c", WRITER, &s.uri(export)])
            .arg(&progress)
            .arg(&stop)
            .args([base.to_string(), blocks.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("/usr/bin/python3 with python3-libnbd is needed");
        let w = Writer {
            child,
            progress,
            stop,
        };
        wait_for(30, "the writer to get going", || w.writes() >= 16);
        w
    }

    /// Writes completed so far.
    pub fn writes(&self) -> u64 {
        std::fs::read_to_string(&self.progress)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Wait (bounded) until it has completed more writes than `since`.
    pub fn advances_from(&self, since: u64) -> bool {
        let t = std::time::Instant::now();
        while t.elapsed() < std::time::Duration::from_secs(20) {
            if self.writes() > since {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        false
    }

    /// Stop it; every block it wrote read back as written. Returns its writes.
    pub fn finish(self) -> u64 {
        std::fs::write(&self.stop, b"").unwrap();
        let o = self.child.wait_with_output().unwrap();
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(
            o.status.success(),
            "writer failed: {out}{}",
            String::from_utf8_lossy(&o.stderr)
        );
        let v: Vec<u64> = out.split_whitespace().map(|x| x.parse().unwrap()).collect();
        assert_eq!(v.get(1), Some(&0), "the writer read back other data: {out}");
        v[0]
    }
}
