//! Hostile and careless clients against a real sspd over real sockets: reply hoarding,
//! connection churn, a connection flood at a low descriptor limit, slow handshakes, too many
//! options, oversize admin lines, an admin socket that goes away, hang-ups mid-write and
//! wrapping offsets. Each case checks that sspd stays bounded and keeps serving others.
#![allow(clippy::big_endian_bytes)] // the NBD wire format is big-endian

mod common;

use common::server::{make_pool, sspctl, Server};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
const NBD_OPT_LIST: u32 = 3;
const NBD_OPT_GO: u32 = 7;
const NBD_REP_ACK: u32 = 1;
const NBD_REP_ERR_POLICY: u32 = 0x8000_0002;
const NBD_CMD_READ: u16 = 0;
const NBD_CMD_WRITE: u16 = 1;
const NBD_CMD_DISC: u16 = 2;
const NBD_CMD_TRIM: u16 = 4;
const NBD_CMD_WRITE_ZEROES: u16 = 6;
const EINVAL: u32 = 22;
const ENOSPC: u32 = 28;

/// `VmHWM`/`VmRSS` of a process, in bytes.
fn proc_mem(pid: u32, field: &str) -> u64 {
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = st
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib * 1024
}

fn rss(pid: u32) -> u64 {
    proc_mem(pid, "VmRSS:")
}

fn hwm(pid: u32) -> u64 {
    proc_mem(pid, "VmHWM:")
}

fn option(code: u32, data: &[u8]) -> Vec<u8> {
    let mut o = Vec::new();
    o.extend_from_slice(b"IHAVEOPT");
    o.extend_from_slice(&code.to_be_bytes());
    o.extend_from_slice(&(data.len() as u32).to_be_bytes());
    o.extend_from_slice(data);
    o
}

fn go_data(export: &str) -> Vec<u8> {
    let mut d = Vec::new();
    d.extend_from_slice(&(export.len() as u32).to_be_bytes());
    d.extend_from_slice(export.as_bytes());
    d.extend_from_slice(&0u16.to_be_bytes());
    d
}

/// One option reply: (type, data).
fn option_reply(s: &mut TcpStream) -> std::io::Result<(u32, Vec<u8>)> {
    let mut h = [0u8; 20];
    s.read_exact(&mut h)?;
    assert_eq!(
        u64::from_be_bytes(h[..8].try_into().unwrap()),
        0x3e889045565a9
    );
    let typ = u32::from_be_bytes(h[12..16].try_into().unwrap());
    let len = u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize;
    let mut data = vec![0u8; len];
    s.read_exact(&mut data)?;
    Ok((typ, data))
}

/// Connect and read the greeting; the client flags (fixed newstyle, no zeroes) are sent.
fn greeted(port: u16) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut greeting = [0u8; 18];
    s.read_exact(&mut greeting).unwrap();
    assert_eq!(&greeting[..16], b"NBDMAGICIHAVEOPT");
    s.write_all(&3u32.to_be_bytes()).unwrap();
    s
}

/// How a raw NBD_OPT_GO ended.
#[derive(Debug)]
enum Go {
    Attached(Raw),
    /// An error reply: its type and message.
    Refused(u32, String),
    /// Closed before a reply.
    Closed,
}

/// A minimal NBD client over a raw socket: fixed newstyle, OPT_GO, simple replies.
#[derive(Debug)]
struct Raw(TcpStream);

impl Raw {
    fn go(port: u16, export: &str) -> Go {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut greeting = [0u8; 18];
        if s.read_exact(&mut greeting).is_err() {
            return Go::Closed;
        }
        assert_eq!(&greeting[..16], b"NBDMAGICIHAVEOPT");
        let mut opts = 3u32.to_be_bytes().to_vec();
        opts.extend(option(NBD_OPT_GO, &go_data(export)));
        if s.write_all(&opts).is_err() {
            return Go::Closed;
        }
        loop {
            let Ok((typ, data)) = option_reply(&mut s) else {
                return Go::Closed;
            };
            if typ == NBD_REP_ACK {
                return Go::Attached(Raw(s));
            }
            if typ >= 0x8000_0000 {
                return Go::Refused(typ, String::from_utf8_lossy(&data).into_owned());
            }
        }
    }

    fn connect(port: u16, export: &str) -> Raw {
        match Raw::go(port, export) {
            Go::Attached(r) => r,
            Go::Refused(t, m) => panic!("refused: {t:#x} {m}"),
            Go::Closed => panic!("closed during the handshake"),
        }
    }

    fn header(typ: u16, cookie: u64, offset: u64, len: u32) -> Vec<u8> {
        let mut r = Vec::with_capacity(28);
        r.extend_from_slice(&0x2560_9513u32.to_be_bytes());
        r.extend_from_slice(&0u16.to_be_bytes());
        r.extend_from_slice(&typ.to_be_bytes());
        r.extend_from_slice(&cookie.to_be_bytes());
        r.extend_from_slice(&offset.to_be_bytes());
        r.extend_from_slice(&len.to_be_bytes());
        r
    }

    fn request(&mut self, typ: u16, cookie: u64, offset: u64, len: u32, payload: &[u8]) {
        let mut r = Self::header(typ, cookie, offset, len);
        r.extend_from_slice(payload);
        self.0.write_all(&r).unwrap();
    }

    /// (error, cookie) of a simple reply.
    fn reply(&mut self) -> (u32, u64) {
        let mut h = [0u8; 16];
        self.0.read_exact(&mut h).unwrap();
        assert_eq!(u32::from_be_bytes(h[..4].try_into().unwrap()), 0x6744_6698);
        (
            u32::from_be_bytes(h[4..8].try_into().unwrap()),
            u64::from_be_bytes(h[8..16].try_into().unwrap()),
        )
    }

    /// A read that must succeed: its data.
    fn read(&mut self, offset: u64, len: u32) -> Vec<u8> {
        self.request(NBD_CMD_READ, 77, offset, len, &[]);
        assert_eq!(self.reply(), (0, 77));
        let mut data = vec![0u8; len as usize];
        self.0.read_exact(&mut data).unwrap();
        data
    }
}

/// Whether the peer closed `s` within `within` (EOF or reset).
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut b = [0u8; 4096];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// sspd on a fresh pool with `lus`, started through `prefix` (e.g. `prlimit ...`) with `extra`
/// flags; its stderr goes to `DIR/sspd.log`.
struct Daemon {
    child: Child,
    port: u16,
    pool: std::path::PathBuf,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Daemon {
    fn start(prefix: &[&str], lus: &[(&str, &str)], extra: &[&str]) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let pool = make_pool(dir.path(), lus);
        let log = dir.path().join("sspd.log");
        let sspd = env!("CARGO_BIN_EXE_sspd");
        let mut argv: Vec<&str> = prefix.to_vec();
        argv.push(sspd);
        let mut child = Command::new(argv[0])
            .args(&argv[1..])
            .args(["--pool", pool.to_str().unwrap(), "--listen", "127.0.0.1:0"])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        while !line.contains("listening on") {
            line.clear();
            assert!(
                out.read_line(&mut line).unwrap() > 0,
                "sspd exited before listening: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        let port = line.trim().rsplit(':').next().unwrap().parse().unwrap();
        Daemon {
            child,
            port,
            pool,
            log,
            _dir: dir,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Poll `f` every 50 ms until it holds or `within` has passed.
fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A client queues 2000 reads of 32 MiB and never reads a reply; returns sspd's RSS
/// (before, peak, after the client left).
fn hoard(d: &mut Daemon) -> (u64, u64, u64) {
    let pid = d.pid();
    // Warm up: one small read so that the session machinery exists.
    Raw::connect(d.port, "big").read(0, 4096);
    let before = rss(pid);
    let mut hoarder = Raw::connect(d.port, "big");
    let mut reqs = Vec::new();
    for i in 0..2000u64 {
        reqs.extend(Raw::header(NBD_CMD_READ, i, (i % 15) * 32 * MIB, 32 << 20));
    }
    // 56 KB of requests: the socket takes them all.
    hoarder.0.write_all(&reqs).unwrap();
    // Let sspd do all it will do for this client.
    std::thread::sleep(Duration::from_secs(2));
    assert!(d.alive(), "sspd died: {}", d.log());
    // Meanwhile a fresh client is served.
    let mut fresh = Raw::connect(d.port, "big");
    assert_eq!(fresh.read(4096, 4096), vec![0u8; 4096]);
    let peak = hwm(pid);
    drop(hoarder);
    // Memory goes back once the client has left.
    let mut after = rss(pid);
    eventually(Duration::from_secs(5), || {
        after = rss(pid);
        after < before + 16 * MIB
    });
    // And sspd still serves.
    assert_eq!(fresh.read(0, 4096), vec![0u8; 4096]);
    (before, peak, after)
}

#[test]
fn reply_hoarding_is_bounded_and_memory_returns() {
    let mut d = Daemon::start(&[], &[("big", "512M")], &[]);
    let (before, peak, after) = hoard(&mut d);
    eprintln!(
        "hoarding (default budgets): RSS before {} MiB, peak {} MiB, after {} MiB",
        before >> 20,
        peak >> 20,
        after >> 20
    );
    // Unbounded, the replies of one such client grew sspd by ~4 GiB.
    assert!(peak < 400 * MIB, "peak RSS {} MiB", peak >> 20);
    assert!(
        after < before + 16 * MIB,
        "RSS {} MiB after the client left (before: {} MiB)",
        after >> 20,
        before >> 20
    );
    drop(d);
    // The server-wide budget holds even when one connection's budget alone would not.
    let mut d = Daemon::start(
        &[],
        &[("big", "512M")],
        &[
            "--max-inflight-bytes",
            "4G",
            "--max-total-inflight-bytes",
            "160M",
        ],
    );
    let (_, peak, _) = hoard(&mut d);
    assert!(peak < 400 * MIB, "peak RSS {} MiB", peak >> 20);
}

#[test]
fn connection_churn_keeps_rss_flat() {
    let d = Daemon::start(&[], &[("vm1", "16M")], &[]);
    let cycle = |n: usize| {
        for _ in 0..n {
            let mut c = Raw::connect(d.port, "vm1");
            c.request(NBD_CMD_DISC, 0, 0, 0, &[]);
            // Wait for the server to close, so sessions do not pile up.
            assert!(closed_within(&mut c.0, Duration::from_secs(5)));
        }
    };
    cycle(500);
    let before = rss(d.pid());
    let start = Instant::now();
    cycle(4500);
    let after = rss(d.pid());
    eprintln!(
        "churn: 4500 cycles in {:?}, RSS {} KiB -> {} KiB (peak {} KiB)",
        start.elapsed(),
        before >> 10,
        after >> 10,
        hwm(d.pid()) >> 10
    );
    // Each finished session used to stay behind (~6 KiB each: 26 MiB here).
    assert!(
        after < before + 8 * MIB,
        "RSS grew {} KiB over 4500 connections",
        (after.saturating_sub(before)) >> 10
    );
}

#[test]
fn connection_flood_at_a_low_fd_limit_leaves_room_for_a_client_and_sspctl() {
    let mut d = Daemon::start(
        &["prlimit", "--nofile=256:256"],
        &[("vm1", "16M")],
        &["--handshake-timeout", "60s"],
    );
    let before = rss(d.pid());
    // 400 clients connect and say nothing.
    let mut idle: Vec<TcpStream> = (0..400)
        .map(|_| TcpStream::connect(("127.0.0.1", d.port)).unwrap())
        .collect();
    // The cap is full of clients that never finish their handshake: a fresh client takes the
    // place of the oldest of them and is served during the flood.
    let mut fresh = None;
    assert!(eventually(Duration::from_secs(10), || {
        if let Go::Attached(r) = Raw::go(d.port, "vm1") {
            fresh = Some(r);
        }
        fresh.is_some()
    }));
    assert_eq!(fresh.take().unwrap().read(0, 4096), vec![0u8; 4096]);
    // The admin socket still works.
    let out = sspctl(&d.pool, &["lu", "list"]);
    assert!(out.contains("vm1"), "{out}");
    let peak = hwm(d.pid());
    // Once the idle clients leave, clients are served again.
    idle.clear();
    let mut served = None;
    assert!(eventually(Duration::from_secs(10), || {
        match Raw::go(d.port, "vm1") {
            Go::Attached(r) => {
                served = Some(r);
                true
            }
            Go::Refused(..) | Go::Closed => false,
        }
    }));
    assert_eq!(served.unwrap().read(0, 4096), vec![0u8; 4096]);
    let after = rss(d.pid());
    eprintln!(
        "flood: RSS before {} KiB, peak {} KiB, after {} KiB",
        before >> 10,
        peak >> 10,
        after >> 10
    );
    assert!(d.alive());
    // No log line per refused client or failed accept.
    let log = d.log();
    let noisy = log
        .lines()
        .filter(|l| l.contains("accept failed") || l.contains("refusing"))
        .count();
    assert!(noisy <= 3, "{noisy} lines:\n{log}");
}

#[test]
fn a_connection_cap_refuses_the_next_client_cleanly() {
    let d = Daemon::start(&[], &[("vm1", "16M")], &["--max-connections", "2"]);
    let mut a = Raw::connect(d.port, "vm1");
    let _b = Raw::connect(d.port, "vm1");
    match Raw::go(d.port, "vm1") {
        Go::Refused(typ, msg) => {
            assert_eq!(typ, NBD_REP_ERR_POLICY);
            assert!(msg.contains("too many connections (limit 2)"), "{msg}");
        }
        other => panic!("a third client got {other:?}"),
    }
    // A client that leaves frees its place at once.
    a.request(NBD_CMD_DISC, 0, 0, 0, &[]);
    assert!(closed_within(&mut a.0, Duration::from_secs(5)));
    let mut c = None;
    assert!(eventually(Duration::from_secs(5), || {
        match Raw::go(d.port, "vm1") {
            Go::Attached(r) => {
                c = Some(r);
                true
            }
            Go::Refused(..) | Go::Closed => false,
        }
    }));
}

#[test]
fn slow_handshakes_and_idle_clients_are_closed() {
    let d = Daemon::start(
        &[],
        &[("vm1", "16M")],
        &["--handshake-timeout", "1s", "--idle-timeout", "1s"],
    );
    // Connects and sends nothing.
    let mut silent = TcpStream::connect(("127.0.0.1", d.port)).unwrap();
    let start = Instant::now();
    assert!(closed_within(&mut silent, Duration::from_secs(5)));
    let t = start.elapsed();
    assert!(t >= Duration::from_millis(800), "closed after {t:?}");
    // Drips a byte of its option every 200 ms: the whole handshake has the deadline.
    let mut drip = greeted(d.port);
    let opt = option(NBD_OPT_GO, &go_data("vm1"));
    let start = Instant::now();
    let mut cut = false;
    for b in &opt {
        if drip.write_all(&[*b]).is_err() {
            cut = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        if start.elapsed() > Duration::from_secs(4) {
            break;
        }
    }
    assert!(cut || closed_within(&mut drip, Duration::from_secs(3)));
    assert!(start.elapsed() < Duration::from_secs(5));
    // An attached client that stays idle is closed too; a busy one is not.
    let mut busy = Raw::connect(d.port, "vm1");
    let mut idle = Raw::connect(d.port, "vm1");
    for _ in 0..6 {
        busy.read(0, 4096);
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(closed_within(&mut idle.0, Duration::from_secs(3)));
    busy.read(0, 4096);
    // So is one that reads none of its replies (it would hold its bytes in flight for ever).
    let mut hoarder = Raw::connect(d.port, "vm1");
    let reqs: Vec<u8> = (0..64)
        .flat_map(|i| Raw::header(NBD_CMD_READ, i, 0, 8 << 20))
        .collect();
    hoarder.0.write_all(&reqs).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert!(closed_within(&mut hoarder.0, Duration::from_secs(5)));
    Raw::connect(d.port, "vm1").read(0, 4096);
}

#[test]
fn too_many_options_get_an_error_and_close() {
    let s = Server::start(&[("vm1", "16M")]);
    let mut c = greeted(s.port);
    let mut opts = Vec::new();
    for _ in 0..100 {
        opts.extend(option(NBD_OPT_LIST, &[]));
    }
    c.write_all(&opts).unwrap();
    let (mut acks, mut last) = (0, None);
    while let Ok((typ, data)) = option_reply(&mut c) {
        if typ == NBD_REP_ACK {
            acks += 1;
        }
        if typ >= 0x8000_0000 {
            last = Some((typ, String::from_utf8_lossy(&data).into_owned()));
            break;
        }
    }
    assert_eq!(acks, 64);
    let (typ, msg) = last.expect("no error reply");
    assert_eq!(typ, NBD_REP_ERR_POLICY);
    assert!(msg.contains("too many options"), "{msg}");
    assert!(closed_within(&mut c, Duration::from_secs(5)));
    // Others carry on.
    Raw::connect(s.port, "vm1").read(0, 4096);
    let st = s.stop();
    assert!(st.success(), "{st:?}");
}

#[test]
fn an_oversize_admin_line_is_refused_and_sspd_keeps_serving() {
    let s = Server::start(&[("vm1", "16M")]);
    let sock = s.pool.join("admin.sock");
    let mut c = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut w = c.try_clone().unwrap();
    // 8 MiB without a newline; sspd stops reading after 1 MiB, so the write fails then.
    let writer = std::thread::spawn(move || {
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..8 {
            if w.write_all(&chunk).is_err() {
                break;
            }
        }
    });
    let mut reply = String::new();
    BufReader::new(&mut c).read_line(&mut reply).unwrap();
    assert!(reply.contains("longer than"), "{reply}");
    writer.join().unwrap();
    // sspctl sees the refusal of an oversize request as an error with sspd's message.
    let names: Vec<String> = (0..12)
        .map(|i| format!("vm1@{i}{}", "s".repeat(100 << 10)))
        .collect();
    let mut args = vec!["snapshot", "create"];
    args.extend(names.iter().map(String::as_str));
    let o = Command::new(env!("CARGO_BIN_EXE_sspctl"))
        .arg("--pool")
        .arg(&s.pool)
        .args(&args)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("longer than"), "{err}");
    // Normal requests still work.
    let out = sspctl(&s.pool, &["lu", "list"]);
    assert!(out.contains("vm1"), "{out}");
    assert!(s.stop().success());
}

/// `sspctl ARGS` against a pool whose admin socket is a fake server that runs `serve` on each
/// connection; (exit status, stderr).
fn sspctl_against(
    pool: &Path,
    args: &[&str],
    serve: fn(std::os::unix::net::UnixStream),
) -> (std::process::ExitStatus, String) {
    let sock = pool.join("admin.sock");
    let _ = std::fs::remove_file(&sock);
    let l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let server = std::thread::spawn(move || {
        if let Ok((c, _)) = l.accept() {
            serve(c);
        }
    });
    let o = Command::new(env!("CARGO_BIN_EXE_sspctl"))
        .arg("--pool")
        .arg(pool)
        .args(args)
        .output()
        .unwrap();
    server.join().unwrap();
    let _ = std::fs::remove_file(&sock);
    (o.status, String::from_utf8_lossy(&o.stderr).into_owned())
}

#[test]
fn sspctl_reports_an_admin_socket_that_goes_away() {
    let dir = tempfile::tempdir().unwrap();
    let pool = make_pool(dir.path(), &[("vm1", "16M")]);
    // The server goes away while the request is being sent (a broken pipe on the socket, not
    // on stdout).
    let names: Vec<String> = (0..12)
        .map(|i| format!("vm1@{i}{}", "s".repeat(100 << 10)))
        .collect();
    let mut args = vec!["snapshot", "create"];
    args.extend(names.iter().map(String::as_str));
    let (st, err) = sspctl_against(&pool, &args, |c| {
        std::thread::sleep(Duration::from_millis(300));
        drop(c);
    });
    assert!(!st.success(), "exit 0 with: {err}");
    assert!(err.contains("admin socket"), "{err}");
    // The server goes away without answering.
    let (st, err) = sspctl_against(&pool, &["lu", "list"], |mut c| {
        let mut line = String::new();
        let _ = BufReader::new(&mut c).read_line(&mut line);
    });
    assert!(!st.success(), "exit 0 with: {err}");
    assert!(err.contains("without a reply"), "{err}");
    // A reader that stops early is still no error of sspctl's.
    let mut child = Command::new(env!("CARGO_BIN_EXE_sspctl"))
        .arg("--pool")
        .arg(&pool)
        .args(["lu", "list"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn hang_ups_mid_write_and_wrapping_offsets_hurt_no_one() {
    let s = Server::start(&[("vm1", "64M")]);
    let mut other = Raw::connect(s.port, "vm1");
    // Hang up in the middle of a write's payload: inline-sized and offloaded-sized.
    for (off, len) in [(0u64, 1u32 << 20), (8 * MIB, 32 << 20)] {
        let mut c = Raw::connect(s.port, "vm1");
        let mut r = Raw::header(NBD_CMD_WRITE, 1, off, len);
        r.extend(vec![0x5au8; len as usize / 2]);
        c.0.write_all(&r).unwrap();
        drop(c);
        // Nothing of it was applied, and the other client is served.
        assert_eq!(other.read(off, 4096), vec![0u8; 4096]);
    }
    // offset + length past u64::MAX: an error reply, never a crash or a wrap to offset 0.
    let wrap = u64::MAX - 1023;
    other.request(NBD_CMD_READ, 2, wrap, 4096, &[]);
    assert_eq!(other.reply(), (EINVAL, 2));
    other.request(NBD_CMD_WRITE, 3, wrap, 4096, &[0x11; 4096]);
    assert_eq!(other.reply(), (ENOSPC, 3));
    other.request(NBD_CMD_TRIM, 4, wrap, 4096, &[]);
    assert_eq!(other.reply(), (EINVAL, 4));
    other.request(NBD_CMD_WRITE_ZEROES, 5, wrap, 4096, &[]);
    assert_eq!(other.reply(), (ENOSPC, 5));
    other.request(NBD_CMD_READ, 6, u64::MAX, u32::MAX >> 8, &[]);
    assert_eq!(other.reply(), (EINVAL, 6));
    // The connection is still in step: the write's payload was consumed.
    assert_eq!(other.read(0, 4096), vec![0u8; 4096]);
    assert!(s.stop().success());
}

#[test]
fn sspd_raises_its_open_file_limit_to_the_hard_one() {
    let d = Daemon::start(&["prlimit", "--nofile=256:4096"], &[("vm1", "16M")], &[]);
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", d.pid())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let v: Vec<&str> = line.split_whitespace().collect();
    assert_eq!((v[3], v[4]), ("4096", "4096"), "{line}");
}

#[test]
fn admin_connections_are_capped_and_idle_ones_cost_no_more() {
    let s = Server::start(&[("vm1", "16M")]);
    let sock = s.pool.join("admin.sock");
    let threads = || {
        std::fs::read_dir(format!("/proc/{}/task", s.child.id()))
            .unwrap()
            .count()
    };
    let before = threads();
    let idle: Vec<_> = (0..16)
        .map(|_| std::os::unix::net::UnixStream::connect(&sock).unwrap())
        .collect();
    // The 17th gets a clear error line and is closed; 500 more cost no threads.
    let mut extra = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reply = String::new();
    BufReader::new(&mut extra).read_line(&mut reply).unwrap();
    assert!(reply.contains("too many admin connections"), "{reply}");
    let more: Vec<_> = (0..500)
        .map(|_| std::os::unix::net::UnixStream::connect(&sock).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        threads() <= before + 16,
        "{} threads (before: {before})",
        threads()
    );
    drop(more);
    let o = Command::new(env!("CARGO_BIN_EXE_sspctl"))
        .arg("--pool")
        .arg(&s.pool)
        .args(["lu", "list"])
        .output()
        .unwrap();
    // While every slot is taken, sspctl says so (an error, not an empty listing).
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("too many admin connections"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    drop(idle);
    let mut out = String::new();
    assert!(eventually(Duration::from_secs(5), || {
        let o = Command::new(env!("CARGO_BIN_EXE_sspctl"))
            .arg("--pool")
            .arg(&s.pool)
            .args(["lu", "list"])
            .output()
            .unwrap();
        out = String::from_utf8_lossy(&o.stdout).into_owned();
        o.status.success()
    }));
    assert!(out.contains("vm1"), "{out}");
    assert!(s.stop().success());
}

/// CPU time (user + system) sspd has used so far.
fn cpu_time(pid: u32) -> Duration {
    let st = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) start at field 3.
    let rest = &st[st.rfind(')').unwrap() + 2..];
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    // utime and stime are fields 14 and 15 of the whole line, in clock ticks.
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis((f[11] + f[12]) * 1000 / hz)
}

#[test]
fn out_of_descriptors_accept_backs_off_and_recovers() {
    let d = Daemon::start(&[], &[("vm1", "16M")], &[]);
    let pid = d.pid().to_string();
    let hard = {
        let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
        let line = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .unwrap()
            .to_owned();
        line.split_whitespace().nth(4).unwrap().to_owned()
    };
    // Squeeze sspd's soft limit to just above what it has open (as other work in the process,
    // or an operator's prlimit, would): accept then fails with EMFILE.
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let squeezed = format!("--nofile={}:{hard}", open + 2);
    common::server::run("prlimit", &["--pid", &pid, &squeezed]);
    let waiting: Vec<TcpStream> = (0..20)
        .map(|_| TcpStream::connect(("127.0.0.1", d.port)).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    // While out of descriptors sspd backs off instead of spinning on accept, and says so
    // only now and then.
    let (cpu0, t0) = (cpu_time(d.pid()), Instant::now());
    std::thread::sleep(Duration::from_secs(3));
    let (cpu, wall) = (cpu_time(d.pid()) - cpu0, t0.elapsed());
    assert!(
        cpu < wall / 5,
        "sspd used {cpu:?} of CPU in {wall:?} while out of descriptors"
    );
    let log = d.log();
    let warnings = log.matches("accept failed").count();
    assert!(
        (1..=3).contains(&warnings),
        "{warnings} accept warnings:\n{log}"
    );
    assert!(log.contains("Too many open files"), "{log}");
    // Once descriptors are back, the clients waiting in the backlog and fresh ones are served.
    common::server::run(
        "prlimit",
        &["--pid", &pid, &format!("--nofile={hard}:{hard}")],
    );
    drop(waiting);
    let mut fresh = Raw::connect(d.port, "vm1");
    assert_eq!(fresh.read(0, 4096), vec![0u8; 4096]);
    let o = Command::new(env!("CARGO_BIN_EXE_sspctl"))
        .arg("--pool")
        .arg(&d.pool)
        .args(["lu", "list"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn stalled_admin_clients_are_closed_after_the_admin_timeout() {
    let d = Daemon::start(&[], &[("vm1", "16M")], &["--admin-timeout", "1s"]);
    let sock = d.pool.join("admin.sock");
    let lu_list = || {
        Command::new(env!("CARGO_BIN_EXE_sspctl"))
            .arg("--pool")
            .arg(&d.pool)
            .args(["lu", "list"])
            .output()
            .unwrap()
    };
    // Sixteen clients take every slot, each stuck half-way through a request line.
    let stalled: Vec<_> = (0..16)
        .map(|_| {
            let mut c = std::os::unix::net::UnixStream::connect(&sock).unwrap();
            c.write_all(b"{\"version\":").unwrap();
            c
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let o = lu_list();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("too many admin connections"));
    // After the timeout sspd has closed them all, and sspctl is served again.
    for mut c in stalled {
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let t = Instant::now();
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).unwrap();
        assert!(t.elapsed() < Duration::from_secs(9));
    }
    let o = lu_list();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("vm1"));
    // A client that pipelines requests but never reads the replies is closed once its
    // replies stop draining, instead of holding a slot and a thread forever.
    let line = ssp::admin::encode_request_line(&ssp::admin::AdminRequest::LuList).unwrap() + "\n";
    let hoarder = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    let mut w = hoarder.try_clone().unwrap();
    w.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    let sent = 20_000usize;
    let writer = std::thread::spawn(move || {
        // The server stops reading once it is stuck on a reply: what it never read is lost.
        let _ = w.write_all(line.repeat(sent).as_bytes());
    });
    std::thread::sleep(Duration::from_secs(4));
    let mut r = hoarder;
    r.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut replies = Vec::new();
    let _ = r.read_to_end(&mut replies);
    writer.join().unwrap();
    let n = replies.iter().filter(|&&b| b == b'\n').count();
    assert!(n > 0 && n < sent, "{n} replies of {sent}");
    assert!(d.log().contains("admin connection"), "{}", d.log());
    let o = lu_list();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}
