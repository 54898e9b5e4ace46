//! Zeroes through a real `sspd`: WRITE_ZEROES with NO_HOLE becomes "allocated, reads as zero"
//! map entries (metadata only, whatever the length, with or without extended headers), huge
//! TRIMs cost no memory, all-zero WRITE payloads are stored the same way (detect-zeroes), and
//! block status tells allocated zeroes (ZERO) from holes (HOLE|ZERO).
#![allow(clippy::big_endian_bytes)] // the NBD wire format is big-endian

mod common;
use common::server::*;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

const GIB: u64 = 1 << 30;
const CMD_WRITE: u16 = 1;
const CMD_TRIM: u16 = 4;
const CMD_WRITE_ZEROES: u16 = 6;
const FLAG_FUA: u16 = 1;
const FLAG_NO_HOLE: u16 = 2;
const FLAG_FAST_ZERO: u16 = 16;

fn json(pool: &std::path::Path, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.push("--json");
    let out = sspctl(pool, &a);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
}

/// Run sspctl once the last client (a qemu-io that just exited) is seen gone: a verb that
/// refuses attached volumes is retried for up to 5 s.
fn when_detached(pool: &std::path::Path, args: &[&str]) -> String {
    for _ in 0..50 {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_sspctl"))
            .arg("--pool")
            .arg(pool)
            .args(args)
            .output()
            .unwrap();
        if o.status.success() {
            return String::from_utf8(o.stdout).unwrap();
        }
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("attached"), "sspctl {args:?}: {err}");
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("sspctl {args:?}: clients stayed attached");
}

fn used(pool: &std::path::Path) -> u64 {
    json(pool, &["pool", "status"])["used_bytes"]
        .as_u64()
        .unwrap()
}

/// Peak resident memory of a process (KiB), from /proc.
fn vm_hwm_kib(pid: u32) -> u64 {
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    st.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn assert_check(pool: &std::path::Path) {
    let rep = json(pool, &["check"]);
    assert_eq!(rep["errors"], Value::from(Vec::<String>::new()), "{rep}");
}

/// `nbdinfo --map` of the whole export: (offset, length, type) with type 0 data, 2 zero,
/// 3 hole|zero; adjacent extents of one type (sspd answers at most 1 GiB per request) merged.
fn map(uri: &str) -> Vec<(u64, u64, u64)> {
    let out = run("nbdinfo", &["--map", "--json", uri]);
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let mut m: Vec<(u64, u64, u64)> = Vec::new();
    for e in v.as_array().unwrap() {
        let (o, l, t) = (
            e["offset"].as_u64().unwrap(),
            e["length"].as_u64().unwrap(),
            e["type"].as_u64().unwrap(),
        );
        match m.last_mut() {
            Some(p) if p.2 == t && p.0 + p.1 == o => p.1 += l,
            _ => m.push((o, l, t)),
        }
    }
    m
}

/// The types of the extents in `map` that overlap `[off, off+len)`.
fn types_in(map: &[(u64, u64, u64)], off: u64, len: u64) -> Vec<u64> {
    map.iter()
        .filter(|(o, l, _)| *o < off + len && off < o + l)
        .map(|e| e.2)
        .collect()
}

/// A raw NBD client, with extended headers (64-bit lengths) if asked.
struct Raw {
    s: TcpStream,
    extended: bool,
}

impl Raw {
    fn connect(port: u16, export: &str, extended: bool) -> Raw {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut greeting = [0u8; 18];
        s.read_exact(&mut greeting).unwrap();
        assert_eq!(&greeting[..16], b"NBDMAGICIHAVEOPT");
        s.write_all(&3u32.to_be_bytes()).unwrap(); // fixed newstyle, no zeroes
        let mut r = Raw { s, extended };
        if extended {
            r.option(11, &[]); // NBD_OPT_EXTENDED_HEADERS
        }
        let mut go = Vec::new();
        go.extend_from_slice(&(export.len() as u32).to_be_bytes());
        go.extend_from_slice(export.as_bytes());
        go.extend_from_slice(&0u16.to_be_bytes());
        r.option(7, &go); // NBD_OPT_GO
        r
    }

    /// Send an option and read its replies up to the final ACK.
    fn option(&mut self, opt: u32, data: &[u8]) {
        let mut o = Vec::new();
        o.extend_from_slice(b"IHAVEOPT");
        o.extend_from_slice(&opt.to_be_bytes());
        o.extend_from_slice(&(data.len() as u32).to_be_bytes());
        o.extend_from_slice(data);
        self.s.write_all(&o).unwrap();
        loop {
            let mut h = [0u8; 20];
            self.s.read_exact(&mut h).unwrap();
            assert_eq!(
                u64::from_be_bytes(h[..8].try_into().unwrap()),
                0x3e889045565a9
            );
            let typ = u32::from_be_bytes(h[12..16].try_into().unwrap());
            let len = u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize;
            let mut d = vec![0u8; len];
            self.s.read_exact(&mut d).unwrap();
            assert!(typ < 0x8000_0000, "option {opt} refused: {typ:#x}");
            if typ == 1 {
                return;
            }
        }
    }

    /// One request and its reply's error (0 = success). Only for commands whose successful
    /// reply carries no data.
    fn call(&mut self, typ: u16, flags: u16, offset: u64, len: u64, payload: &[u8]) -> u32 {
        let cookie = 0x5eed_0000 + u64::from(typ);
        let mut r = Vec::new();
        if self.extended {
            r.extend_from_slice(&0x21e4_1c71u32.to_be_bytes());
            r.extend_from_slice(&flags.to_be_bytes());
            r.extend_from_slice(&typ.to_be_bytes());
            r.extend_from_slice(&cookie.to_be_bytes());
            r.extend_from_slice(&offset.to_be_bytes());
            r.extend_from_slice(&len.to_be_bytes());
        } else {
            r.extend_from_slice(&0x2560_9513u32.to_be_bytes());
            r.extend_from_slice(&flags.to_be_bytes());
            r.extend_from_slice(&typ.to_be_bytes());
            r.extend_from_slice(&cookie.to_be_bytes());
            r.extend_from_slice(&offset.to_be_bytes());
            r.extend_from_slice(&u32::try_from(len).unwrap().to_be_bytes());
        }
        r.extend_from_slice(payload);
        self.s.write_all(&r).unwrap();
        if self.extended {
            // Extended reply chunks until one carries NBD_REPLY_FLAG_DONE.
            let mut err = 0;
            loop {
                let mut h = [0u8; 32];
                self.s.read_exact(&mut h).unwrap();
                assert_eq!(u32::from_be_bytes(h[..4].try_into().unwrap()), 0x6e8a_278c);
                let flags = u16::from_be_bytes(h[4..6].try_into().unwrap());
                let ty = u16::from_be_bytes(h[6..8].try_into().unwrap());
                assert_eq!(u64::from_be_bytes(h[8..16].try_into().unwrap()), cookie);
                let plen = u64::from_be_bytes(h[24..32].try_into().unwrap());
                let mut p = vec![0u8; plen as usize];
                self.s.read_exact(&mut p).unwrap();
                if ty & 0x8000 != 0 {
                    err = u32::from_be_bytes(p[..4].try_into().unwrap());
                }
                if flags & 1 != 0 {
                    return err;
                }
            }
        }
        let mut h = [0u8; 16];
        self.s.read_exact(&mut h).unwrap();
        assert_eq!(u32::from_be_bytes(h[..4].try_into().unwrap()), 0x6744_6698);
        assert_eq!(u64::from_be_bytes(h[8..16].try_into().unwrap()), cookie);
        u32::from_be_bytes(h[4..8].try_into().unwrap())
    }
}

fn qemu_io(uri: &str, cmds: &[&str]) -> String {
    let mut args = vec!["-f", "raw"];
    for c in cmds {
        args.extend(["-c", c]);
    }
    args.push(uri);
    let out = run("qemu-io", &args);
    assert!(
        !out.contains("failed") && !out.contains("Pattern verification"),
        "{out}"
    );
    out
}

#[test]
fn half_a_tebibyte_of_zeroes_and_a_whole_lu_trim_with_extended_headers() {
    let s = Server::start(&[("big", "1T"), ("other", "16M")]);
    let pid = s.child.id();
    qemu_io(
        &s.uri("big"),
        &[
            "write -P 0x11 0 1M",
            "write -P 0x22 600G 64k",
            "write -P 0x33 1023G 4k",
        ],
    );
    let used0 = used(&s.pool);
    let hwm0 = vm_hwm_kib(pid);

    let mut c = Raw::connect(s.port, "big", true);
    assert_eq!(
        c.call(CMD_WRITE_ZEROES, FLAG_NO_HOLE | FLAG_FUA, 0, 512 * GIB, &[]),
        0
    );
    // sspd is still up and small; the pool grew by metadata only.
    let hwm = vm_hwm_kib(pid);
    eprintln!("sspd VmHWM {hwm0} KiB before, {hwm} KiB after 512 GiB of NO_HOLE zeroes");
    assert!(hwm < 300 << 10, "VmHWM {hwm} KiB (was {hwm0} KiB before)");
    let grown = used(&s.pool).saturating_sub(used0);
    eprintln!("pool used space grew by {grown} bytes for 512 GiB of zeroes");
    assert!(grown < 16 << 20, "512 GiB of zeroes took {grown} bytes");
    // The range reads zero, the rest is untouched, and other clients carry on.
    qemu_io(
        &s.uri("big"),
        &[
            "read -P 0 0 1M",
            "read -P 0 511G 1M",
            "read -P 0x22 600G 64k",
        ],
    );
    qemu_io(
        &s.uri("other"),
        &["write -P 0x44 0 1M", "read -P 0x44 0 1M"],
    );
    // Block status: allocated zeroes, not a hole.
    let m = map(&s.uri("big"));
    assert_eq!(types_in(&m, 0, 512 * GIB), vec![2], "{m:?}");
    assert_eq!(types_in(&m, 600 * GIB, 65536), vec![0], "{m:?}");

    // TRIM of the whole LU in one request: holes everywhere, space returned.
    assert_eq!(c.call(CMD_TRIM, 0, 0, 1 << 40, &[]), 0);
    // And WRITE_ZEROES without NO_HOLE of the whole LU: holes too.
    assert_eq!(c.call(CMD_WRITE_ZEROES, 0, 0, 1 << 40, &[]), 0);
    let hwm = vm_hwm_kib(pid);
    assert!(hwm < 300 << 10, "VmHWM {hwm} KiB after the trims");
    assert_eq!(map(&s.uri("big")), vec![(0, 1 << 40, 3)]);
    qemu_io(&s.uri("big"), &["read -P 0 600G 64k", "read -P 0 1023G 4k"]);
    assert_eq!(
        json(&s.pool, &["file", "stat", "big"])["data_blocks"],
        Value::from(0)
    );
    assert_check(&s.pool);
    assert!(s.stop().success());
}

#[test]
fn four_gib_of_no_hole_zeroes_without_extended_headers_and_zero_payloads() {
    let s = Server::start(&[("vm", "8G")]);
    let pid = s.child.id();
    let used0 = used(&s.pool);
    // 0xFFFFF000 bytes at an unaligned offset: both edges are partial blocks.
    let mut c = Raw::connect(s.port, "vm", false);
    assert_eq!(
        c.call(CMD_WRITE_ZEROES, FLAG_NO_HOLE, 512, 0xFFFF_F000, &[]),
        0
    );
    let grown = used(&s.pool).saturating_sub(used0);
    assert!(
        grown < 8 << 20,
        "4 GiB of zeroes in a 512 MiB pool took {grown} bytes"
    );
    let hwm = vm_hwm_kib(pid);
    eprintln!("sspd VmHWM {hwm} KiB after 0xFFFFF000 NO_HOLE zeroes; pool grew {grown} bytes");
    assert!(hwm < 300 << 10, "VmHWM {hwm} KiB");
    // FAST_ZERO with NO_HOLE: metadata only, so it is fast and is served.
    assert_eq!(
        c.call(
            CMD_WRITE_ZEROES,
            FLAG_NO_HOLE | FLAG_FAST_ZERO,
            6 * GIB,
            GIB,
            &[]
        ),
        0
    );
    let m = map(&s.uri("vm"));
    assert_eq!(types_in(&m, 6 * GIB, GIB), vec![2], "{m:?}");
    assert_eq!(types_in(&m, 0, 0xFFFF_F000 + 512), vec![2], "{m:?}");
    assert_eq!(types_in(&m, 5 * GIB, GIB), vec![3], "{m:?}");
    // qemu reads NBD_STATE_ZERO without HOLE as allocated ("data": true), zeroes.
    let out = run(
        "qemu-img",
        &["map", "--output=json", "-f", "raw", &s.uri("vm")],
    );
    let qm: Value = serde_json::from_str(&out).unwrap();
    let first = &qm[0];
    assert_eq!(
        (first["start"].as_u64(), first["length"].as_u64()),
        (
            Some(0),
            Some(0xFFFF_F000 + 512 - (0xFFFF_F000 + 512) % 4096 + 4096)
        ),
        "{out}"
    );
    assert_eq!(
        (&first["zero"], &first["data"]),
        (&Value::Bool(true), &Value::Bool(true)),
        "{out}"
    );
    let last = &qm.as_array().unwrap().last().unwrap();
    assert_eq!(
        (&last["zero"], &last["data"]),
        (&Value::Bool(true), &Value::Bool(false)),
        "{out}"
    );

    // Data, then all-zero WRITE payloads over it: stored as zero entries, not data.
    qemu_io(&s.uri("vm"), &["write -P 0x5a 5G 1M"]);
    assert_eq!(
        json(&s.pool, &["file", "stat", "vm"])["data_blocks"],
        Value::from(256)
    );
    let zeros = vec![0u8; 1 << 20];
    assert_eq!(c.call(CMD_WRITE, FLAG_FUA, 5 * GIB, 1 << 20, &zeros), 0);
    assert_eq!(
        c.call(CMD_WRITE, 0, 5 * GIB + (2 << 20), 1 << 20, &zeros),
        0
    );
    let st = json(&s.pool, &["file", "stat", "vm"]);
    assert_eq!(
        (&st["data_blocks"], &st["owned_blocks"]),
        (&Value::from(0), &Value::from(0)),
        "{st}"
    );
    qemu_io(&s.uri("vm"), &["read -P 0 5G 4M"]);
    let m = map(&s.uri("vm"));
    assert_eq!(types_in(&m, 5 * GIB, 1 << 20), vec![2], "{m:?}");
    assert_check(&s.pool);
    assert!(s.stop().success());
}

#[test]
fn a_clone_that_zeroes_owns_nothing_and_the_zeroes_survive_kill_9() {
    let s = Server::start(&[("golden", "64M")]);
    let dir = tempfile::tempdir().unwrap();
    let golden = dir.path().join("golden.raw");
    random_file(&golden, 8 << 20);
    let g = golden.to_str().unwrap();
    run(
        "qemu-img",
        &[
            "convert",
            "-n",
            "-f",
            "raw",
            "-O",
            "raw",
            g,
            &s.uri("golden"),
        ],
    );
    sspctl(&s.pool, &["image", "capture", "golden", "img"]);
    sspctl(&s.pool, &["snapshot", "create", "img@gold"]);
    sspctl(&s.pool, &["clone", "img@gold", "vm1"]);
    // An all-zero payload (WRITE) over 4 MiB and WRITE_ZEROES with NO_HOLE (`write -z`
    // without -u) over 2 MiB more, as a guest's mkfs or lazy inode-table init does.
    qemu_io(
        &s.uri("vm1"),
        &["write -P 0 0 4M", "write -z 4M 2M", "write -P 0x77 7M 64k"],
    );
    let st = json(&s.pool, &["file", "stat", "vm1"]);
    assert_eq!(
        (&st["owned_blocks"], &st["data_blocks"]),
        (&Value::from(16), &Value::from(2048 - 1536)),
        "only the 64 KiB of real data is the clone's own: {st}"
    );
    qemu_io(&s.uri("vm1"), &["read -P 0 0 6M", "read -P 0x77 7M 64k"]);
    run(
        "qemu-img",
        &["compare", "-f", "raw", "-F", "raw", &s.uri("img"), g],
    );
    // Zeroed blocks differ from the image's data; layout lists data extents only.
    let d = json(&s.pool, &["diff", "img@gold", "vm1"]);
    assert_eq!(
        d["extents"],
        serde_json::json!([
            { "offset": 0, "length": 6 << 20 },
            { "offset": 7 << 20, "length": 65536 }
        ])
    );
    let lay = json(&s.pool, &["file", "layout", "vm1"]);
    let starts: Vec<u64> = lay["extents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["start"].as_u64().unwrap())
        .collect();
    assert_eq!(starts, vec![6 << 20, 7 << 20], "{lay}");
    // Snapshot, zero the rest, roll back: the data comes back, the undo snapshot keeps zeroes.
    sspctl(&s.pool, &["snapshot", "create", "vm1@before"]);
    qemu_io(&s.uri("vm1"), &["write -z 6M 2M"]);
    assert_eq!(
        json(&s.pool, &["file", "stat", "vm1"])["data_blocks"],
        Value::from(0)
    );
    let rb: Value = serde_json::from_str(&when_detached(
        &s.pool,
        &["snapshot", "rollback", "vm1@before", "--json"],
    ))
    .unwrap();
    let undo = rb["undo_snapshot"].as_str().unwrap().to_owned();
    qemu_io(&s.uri("vm1"), &["read -P 0 0 6M", "read -P 0x77 7M 64k"]);
    run(
        "qemu-io",
        &["-f", "raw", "-r", "-c", "read -P 0 0 8M", &s.uri(&undo)],
    );
    when_detached(&s.pool, &["snapshot", "remove", &undo]);
    when_detached(&s.pool, &["snapshot", "remove", "vm1@before"]);
    assert_check(&s.pool);

    // Power cut: the Zero records are replayed from the journal.
    let (pool, mut s) = (s.pool.clone(), s);
    s.child.kill().unwrap();
    s.child.wait().unwrap();
    let keep = s.dir.take().unwrap();
    let s = Server::serve(pool, keep);
    qemu_io(&s.uri("vm1"), &["read -P 0 0 6M", "read -P 0x77 7M 64k"]);
    let m = map(&s.uri("vm1"));
    assert_eq!(types_in(&m, 0, 6 << 20), vec![2], "{m:?}");
    let st = json(&s.pool, &["file", "stat", "vm1"]);
    assert_eq!(st["owned_blocks"], Value::from(16), "{st}");
    run(
        "qemu-img",
        &["compare", "-f", "raw", "-F", "raw", &s.uri("img"), g],
    );
    assert_check(&s.pool);
    assert!(s.stop().success());
}
