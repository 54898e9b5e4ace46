//! Maintenance in slices through the real interfaces (sspd, sspctl, an NBD client): scrub,
//! online check and resync make progress while a client keeps writing; `scrub cancel` stops a
//! scrub and leaves the pool consistent; a scrub interrupted by an sspd restart resumes from
//! its stored position; `--rate` bounds a scrub's speed.

mod common;
use common::server::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn json(pool: &Path, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.push("--json");
    let out = sspctl(pool, &a);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
}

fn scrub_status(pool: &Path) -> Value {
    json(pool, &["scrub", "status"])
}

/// A pool with LU vm1 (64 MiB) whose first `fill` bytes hold random data (kept in
/// `data.raw` beside the pool), served by sspd with `extra` flags.
fn filled(fill: usize, extra: &[&str]) -> (Server, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let pool = make_pool(dir.path(), &[("vm1", "64M")]);
    let data = dir.path().join("data.raw");
    random_file(&data, fill);
    let s = Server::serve_with(pool, dir, extra);
    let d = data.to_str().unwrap();
    run(
        "qemu-img",
        &["convert", "-n", "-f", "raw", "-O", "raw", d, &s.uri("vm1")],
    );
    (s, data)
}

/// The LU's first bytes still equal `data`.
fn assert_data(s: &Server, data: &Path) {
    let out = s.pool.parent().unwrap().join("out.raw");
    let len = std::fs::metadata(data).unwrap().len();
    run(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "raw",
            &s.uri("vm1"),
            out.to_str().unwrap(),
        ],
    );
    let got = std::fs::read(&out).unwrap();
    let want = std::fs::read(data).unwrap();
    assert!(
        got.get(..len as usize) == Some(&want[..]),
        "the LU's data changed"
    );
}

fn assert_check(pool: &Path) {
    let c = json(pool, &["check"]);
    assert!(c["errors"].as_array().unwrap().is_empty(), "check: {c}");
}

/// A client writing 4 KiB blocks to [32 MiB, 40 MiB) of vm1 with a flush every 16, counting
/// completed writes in a file, until a stop file appears (two minutes at most); at the end
/// it reads back what it wrote and prints "writes mismatches".
struct Writer {
    child: Child,
    progress: PathBuf,
    stop: PathBuf,
}

const WRITER: &str = r#"
import nbd, os, sys, time, random
h = nbd.NBD()
h.connect_uri(sys.argv[1])
prog, stop = sys.argv[2], sys.argv[3]
base, n, written = 32 << 20, 0, {}
deadline = time.time() + 120
while not os.path.exists(stop) and time.time() < deadline:
    i = random.randrange(2048)
    buf = (n + 1).to_bytes(8, 'little') * 512
    h.pwrite(buf, base + i * 4096)
    written[i] = buf
    n += 1
    if n % 16 == 0:
        h.flush()
        with open(prog + '.tmp', 'w') as f:
            f.write(str(n))
        os.replace(prog + '.tmp', prog)
bad = sum(1 for i, b in written.items() if h.pread(4096, base + i * 4096) != b)
h.shutdown()
print(n, bad)
"#;

impl Writer {
    fn start(s: &Server) -> Writer {
        let dir = s.pool.parent().unwrap();
        let progress = dir.join("writer.progress");
        let stop = dir.join("writer.stop");
        let child = Command::new("/usr/bin/python3")
            .args(["-c", WRITER, &s.uri("vm1")])
            .arg(&progress)
            .arg(&stop)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("/usr/bin/python3 with python3-libnbd is needed");
        let w = Writer {
            child,
            progress,
            stop,
        };
        // Running before the maintenance starts.
        let t = Instant::now();
        while w.writes() < 32 {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "the writer never got going"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        w
    }

    fn writes(&self) -> u64 {
        std::fs::read_to_string(&self.progress)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Wait (bounded) until the writer completes more writes than it had at `since`.
    fn advances_from(&self, since: u64) -> bool {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(20) {
            if self.writes() > since {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// Stop it; its writes read back intact.
    fn finish(self) -> u64 {
        std::fs::write(&self.stop, b"").unwrap();
        let o = self.child.wait_with_output().unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
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

#[test]
fn scrub_check_and_resync_make_progress_while_a_client_writes() {
    let (s, data) = filled(16 << 20, &["--resync-rate", "4M"]);
    let w = Writer::start(&s);

    // Resync (the second failure group, copied at 4 MiB/s in the background).
    let pv1 = s.pool.parent().unwrap().join("pv1.img");
    sspctl(
        &s.pool,
        &[
            "failgrp",
            "create",
            "fg2",
            "--pv",
            &format!("{}:512M", pv1.display()),
        ],
    );
    let mut seen_syncing = 0;
    let t = Instant::now();
    loop {
        let st = json(&s.pool, &["pool", "status"]);
        if st["mirror_state"] == "SYNCED" {
            break;
        }
        assert_eq!(st["mirror_state"], "SYNCING", "{st}");
        let before = w.writes();
        assert!(w.advances_from(before), "the writer stalled during resync");
        if json(&s.pool, &["pool", "status"])["mirror_state"] == "SYNCING" {
            seen_syncing += 1;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "resync never finished"
        );
    }
    assert!(seen_syncing > 0, "writes completed while resync ran");

    // Scrub in the background at 8 MiB/s: the writer keeps completing writes.
    let started = json(&s.pool, &["scrub", "--rate", "8M"]);
    assert_eq!(started["state"], "running", "{started}");
    let mut seen_running = 0;
    let t = Instant::now();
    loop {
        let st = scrub_status(&s.pool);
        if st["state"] != "running" {
            assert_eq!(st["state"], "finished", "{st}");
            assert_eq!(st["report"]["errors_found"], 0, "{st}");
            break;
        }
        let before = w.writes();
        assert!(w.advances_from(before), "the writer stalled during scrub");
        if scrub_status(&s.pool)["state"] == "running" {
            seen_running += 1;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "scrub never finished"
        );
    }
    assert!(seen_running > 0, "writes completed while the scrub ran");

    // Online check: the writer completes writes while it runs, and the pool checks clean.
    let before = w.writes();
    let pool = s.pool.clone();
    let check = std::thread::spawn(move || json(&pool, &["check"]));
    assert!(w.advances_from(before), "the writer stalled during check");
    let c = check.join().unwrap();
    assert!(c["errors"].as_array().unwrap().is_empty(), "check: {c}");
    assert!(c["data_blocks"].as_u64().unwrap() >= 4096, "{c}");

    let n = w.finish();
    assert!(n > 0);
    assert_check(&s.pool);
    assert_data(&s, &data);
    s.stop();
}

#[test]
fn cancel_mid_scrub_leaves_a_consistent_pool() {
    let (s, data) = filled(16 << 20, &[]);
    let started = json(&s.pool, &["scrub", "--rate", "2M"]);
    assert_eq!(started["state"], "running");
    // Text output says it started and returns at once.
    let t = Instant::now();
    while scrub_status(&s.pool)["bytes_done"].as_u64().unwrap() == 0 {
        assert!(t.elapsed() < Duration::from_secs(20), "no progress");
        std::thread::sleep(Duration::from_millis(50));
    }
    let st = json(&s.pool, &["scrub", "cancel"]);
    assert_eq!(st["state"], "cancelled", "{st}");
    let done = st["bytes_done"].as_u64().unwrap();
    assert!(
        done > 0 && done < st["bytes_total"].as_u64().unwrap(),
        "{st}"
    );
    assert_eq!(scrub_status(&s.pool)["state"], "cancelled");
    // Nothing runs any more: cancelling again is refused.
    let e = sspctl_fails(&s.pool, &["scrub", "cancel"]);
    assert!(e.contains("no scrub is running"), "{e}");
    assert_check(&s.pool);
    assert_data(&s, &data);
    // A new scrub runs to the end.
    let r = json(&s.pool, &["scrub", "--wait", "--rate", "0"]);
    assert_eq!(r["errors_found"], 0, "{r}");
    assert!(r["blocks_checked"].as_u64().unwrap() >= 4096, "{r}");
    s.stop();
}

#[test]
fn a_scrub_resumes_where_it_stopped_after_sspd_restarts() {
    let (s, data) = filled(16 << 20, &[]);
    let text = sspctl(&s.pool, &["scrub", "--rate", "2M"]);
    assert!(text.contains("scrub started"), "{text}");
    // Past its first saved position (saved about once a second).
    let t = Instant::now();
    while scrub_status(&s.pool)["bytes_done"].as_u64().unwrap() < 3 << 20 {
        assert!(t.elapsed() < Duration::from_secs(30), "no progress");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(1200));
    let (st, dir) = s.stop_keep();
    assert!(st.success());
    let pool = dir.path().join("pool");
    // Offline, the stored position shows.
    let stored = scrub_status(&pool);
    assert_eq!(stored["state"], "running", "{stored}");
    let pos = stored["position"].as_u64().unwrap();
    let done = stored["bytes_done"].as_u64().unwrap();
    assert!(pos > 0 && done >= 2 << 20, "{stored}");

    let s = Server::serve(pool.clone(), dir);
    let st = scrub_status(&pool);
    assert_eq!(st["resumed"], 1, "{st}");
    assert!(
        st["bytes_done"].as_u64().unwrap() >= done,
        "resumed from the stored position: {st}"
    );
    // `--wait` joins the running scrub and prints its report.
    let r = json(&pool, &["scrub", "--wait"]);
    assert_eq!(r["errors_found"], 0, "{r}");
    let fin = scrub_status(&pool);
    assert_eq!(fin["state"], "finished", "{fin}");
    assert!(
        fin["bytes_done"].as_u64().unwrap() >= fin["bytes_total"].as_u64().unwrap(),
        "{fin}"
    );
    // Every data block once (16 MiB = 4096 blocks), over both runs.
    let checked = fin["report"]["blocks_checked"].as_u64().unwrap();
    assert!((4096..4096 + 1024).contains(&checked), "{fin}");
    assert_check(&pool);
    assert_data(&s, &data);
    s.stop();
}

#[test]
fn a_scrub_at_a_low_rate_takes_at_least_bytes_over_rate() {
    let (s, _data) = filled(8 << 20, &[]);
    let t = Instant::now();
    let r = json(&s.pool, &["scrub", "--wait", "--rate", "2M"]);
    let took = t.elapsed();
    let bytes = r["blocks_checked"].as_u64().unwrap() * 4096;
    assert!(bytes >= 8 << 20, "{r}");
    // The first slice (1 MiB) may run before the budget is spent.
    let floor = Duration::from_secs_f64((bytes - (1 << 20)) as f64 / (2 << 20) as f64);
    assert!(took >= floor, "{bytes} bytes at 2 MiB/s in {took:?}");
    // Offline (no sspd) the scrub runs to the end in the foreground.
    let (st, dir) = s.stop_keep();
    assert!(st.success());
    let out = sspctl(&dir.path().join("pool"), &["scrub"]);
    assert!(
        out.contains("scrubbed") && out.contains("0 errors found"),
        "{out}"
    );
}

#[test]
fn a_resync_interrupted_by_a_restart_resumes_with_what_is_left() {
    let (s, data) = filled(16 << 20, &["--resync-rate", "2M"]);
    let pv1 = s.pool.parent().unwrap().join("pv1.img");
    sspctl(
        &s.pool,
        &[
            "failgrp",
            "create",
            "fg2",
            "--pv",
            &format!("{}:512M", pv1.display()),
        ],
    );
    let status = |pool: &Path| json(pool, &["pool", "status"]);
    let total = status(&s.pool)["resync_bytes_left"].as_u64().unwrap();
    assert!(total >= 16 << 20, "{total}");
    // Part of the way, at 2 MiB/s.
    let t = Instant::now();
    let left = loop {
        let st = status(&s.pool);
        let left = st["resync_bytes_left"].as_u64().unwrap();
        if st["resync_bytes_copied"].as_u64().unwrap() >= 4 << 20 {
            break left;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "no resync progress: {st}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(left > 0 && left < total, "{left} of {total}");
    let (st, dir) = s.stop_keep();
    assert!(st.success());
    let pool = dir.path().join("pool");
    let s = Server::serve(pool.clone(), dir);
    let st = status(&pool);
    assert_eq!(st["mirror_state"], "SYNCING", "{st}");
    assert!(
        st["resync_bytes_left"].as_u64().unwrap() <= left,
        "resumed with what was left ({left}), not from the start: {st}"
    );
    let t = Instant::now();
    while status(&pool)["mirror_state"] != "SYNCED" {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "resync never finished"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Both copies equal (check compares them) and the data intact.
    assert_check(&pool);
    assert_data(&s, &data);
    s.stop();
}
