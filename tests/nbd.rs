//! sspd over real sockets with real clients: qemu-img, qemu-io, nbdinfo, and raw bytes.
#![allow(clippy::big_endian_bytes)] // the NBD wire format is big-endian

mod common;
use common::server::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};

#[test]
fn qemu_img_convert_and_compare_64mib() {
    let s = Server::start(&[("vm1", "64M")]);
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src.img");
    random_file(&src, 64 << 20);
    run(
        "qemu-img",
        &[
            "convert",
            "-n",
            "-f",
            "raw",
            "-O",
            "raw",
            src.to_str().unwrap(),
            &s.uri("vm1"),
        ],
    );
    let out = run(
        "qemu-img",
        &[
            "compare",
            "-f",
            "raw",
            "-F",
            "raw",
            src.to_str().unwrap(),
            &s.uri("vm1"),
        ],
    );
    assert!(out.contains("identical"), "{out}");
    // And back out again through NBD.
    let back = t.path().join("back.img");
    run(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "raw",
            &s.uri("vm1"),
            back.to_str().unwrap(),
        ],
    );
    assert!(std::fs::read(&back).unwrap() == std::fs::read(&src).unwrap());
    assert!(s.stop().success());
}

#[test]
fn nbdinfo_lists_exports_and_maps_written_and_trimmed_ranges() {
    let s = Server::start(&[("alpha", "16M"), ("beta", "32M")]);
    let list = run("nbdinfo", &["--list", &s.uri("")]);
    assert!(
        list.contains("export=\"alpha\"") && list.contains("export=\"beta\""),
        "{list}"
    );
    assert!(
        list.contains("can_multi_conn: true") && list.contains("can_trim: true"),
        "{list}"
    );
    // Unaligned writes, discard and write_zeroes through qemu-io.
    run(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0xab 1000 3000000",
            "-c",
            "discard 0 1048576",
            "-c",
            "write -z -u 2097152 4096",
            &s.uri("beta"),
        ],
    );
    let map = run("nbdinfo", &["--map", &s.uri("beta")]);
    // [0, 1 MiB) trimmed; data to 1000+3000000 rounded to blocks, with a zeroed block at 2 MiB.
    let want = [
        "0 1048576 3 hole,zero",
        "1048576 1048576 0 data",
        "2097152 4096 3 hole,zero",
        "2101248 901120 0 data",
        "3002368 30552064 3 hole,zero",
    ];
    let got: Vec<String> = map
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(got, want, "{map}");
    let out = run(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "read -P 0xab 1048576 1048576",
            "-c",
            "read -P 0 2097152 4096",
            "-c",
            "read -P 0 0 1048576",
            &s.uri("beta"),
        ],
    );
    assert!(!out.contains("Pattern verification failed"), "{out}");
    assert!(s.stop().success());
}

#[test]
fn malformed_traffic_drops_only_that_client() {
    let s = Server::start(&[("vm1", "4M")]);
    // Client 1: garbage instead of client flags / options.
    let mut bad = std::net::TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    bad.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut greeting = [0u8; 18];
    bad.read_exact(&mut greeting).unwrap();
    assert_eq!(&greeting[..8], b"NBDMAGIC");
    bad.write_all(&[0, 0, 0, 3]).unwrap(); // client flags: fixed newstyle + no zeroes
    bad.write_all(b"THIS IS NOT AN NBD OPTION HEADER AT ALL")
        .unwrap();
    let mut rest = Vec::new();
    let _ = bad.read_to_end(&mut rest); // the server closes this connection
                                        // Client 2 (a new connection) still works.
    let out = run(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0x11 0 4096",
            "-c",
            "read -P 0x11 0 4096",
            &s.uri("vm1"),
        ],
    );
    assert!(!out.contains("failed"), "{out}");
    // Unknown export: a clear refusal, and the server carries on.
    let o = Command::new("nbdinfo")
        .arg(s.uri("nosuch"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    run("nbdinfo", &[&s.uri("vm1")]);
    assert!(s.stop().success());
}

#[test]
fn multi_conn_and_out_of_order_replies_with_libnbd() {
    let s = Server::start(&[("vm1", "64M")]);
    let out = nbdsh(
        &s.uri("vm1"),
        r#"
import nbd, sys
uri = sys.argv[1]
a = nbd.NBD(); a.connect_uri(uri)
b = nbd.NBD(); b.connect_uri(uri)
assert a.can_multi_conn() and a.can_fua() and a.can_flush() and a.can_trim() and a.can_zero()
# 256 writes in flight at once on one connection; every one must complete.
bufs = []
for i in range(256):
    buf = nbd.Buffer.from_bytearray(bytearray([i % 251 + 1]) * 65536)
    bufs.append(buf)
    a.aio_pwrite(buf, i * 65536)
while a.aio_in_flight() > 0:
    a.poll(-1)
a.flush()
# Multi-conn: what one connection wrote and flushed, another reads.
for i in range(0, 256, 17):
    got = b.pread(65536, i * 65536)
    assert got == bytes([i % 251 + 1]) * 65536, i
# FUA write, then block status through base:allocation after a trim.
a.pwrite(b"\x55" * 4096, 0, nbd.CMD_FLAG_FUA)
a.trim(1 << 20, 1 << 20)
ext = []
def cb(meta, offset, entries, err):
    if meta == "base:allocation":
        ext.extend(entries)
c = nbd.NBD(); c.add_meta_context("base:allocation"); c.connect_uri(uri)
c.block_status(4 << 20, 0, cb)
print("extents", ext[:6])
assert ext[0:2] == [1 << 20, 0], ext
assert ext[2:4] == [1 << 20, 3], ext
assert b.pread(4096, 0) == b"\x55" * 4096
print("ok")
"#,
    );
    assert!(out.contains("ok"), "{out}");
    assert!(s.stop().success());
}

#[test]
fn nbdcopy_both_ways() {
    let s = Server::start(&[("vm1", "32M")]);
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src.img");
    random_file(&src, 32 << 20);
    run("nbdcopy", &[src.to_str().unwrap(), &s.uri("vm1")]);
    let back = t.path().join("back.img");
    run("nbdcopy", &[&s.uri("vm1"), back.to_str().unwrap()]);
    assert!(std::fs::read(&back).unwrap() == std::fs::read(&src).unwrap());
    assert!(s.stop().success());
}

#[test]
fn sspctl_works_online_through_the_admin_socket() {
    let s = Server::start(&[("vm1", "8M")]);
    // The socket is private to the pool's owner.
    let sock = s.pool.join("admin.sock");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&sock).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    // Exports appear and disappear as LUs are created and removed, without a restart.
    sspctl(&s.pool, &["lu", "create", "fresh", "--size", "16M"]);
    let info = run("nbdinfo", &[&s.uri("fresh")]);
    assert!(info.contains("export-size: 16777216"), "{info}");
    let st: serde_json::Value =
        serde_json::from_str(&sspctl(&s.pool, &["pool", "status", "--json"])).unwrap();
    assert_eq!(st["lus"], 2);
    assert!(sspctl(&s.pool, &["check"]).contains("OK"));
    // An attached LU is not removed unless forced.
    let mut holder = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg("import nbd,sys\nh=nbd.NBD(); h.connect_uri(sys.argv[1]); print('attached', flush=True); sys.stdin.read()")
        .arg(s.uri("fresh"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(holder.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "attached");
    let err = sspctl_fails(&s.pool, &["lu", "remove", "fresh"]);
    assert!(err.contains("attached") && err.contains("--force"), "{err}");
    sspctl(&s.pool, &["lu", "remove", "fresh", "--force"]);
    drop(holder.stdin.take());
    let _ = holder.wait();
    let o = Command::new("nbdinfo")
        .arg(s.uri("fresh"))
        .output()
        .unwrap();
    assert!(!o.status.success(), "a removed LU is no longer exported");
    // A peer speaking another admin version, or garbage, gets a clear error; the server goes on.
    let mut raw = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    raw.write_all(b"{\"version\":99,\"cmd\":\"lu_list\"}\nnot json\n")
        .unwrap();
    let mut r = BufReader::new(raw);
    let (mut a, mut b) = (String::new(), String::new());
    r.read_line(&mut a).unwrap();
    r.read_line(&mut b).unwrap();
    assert!(a.contains("version mismatch"), "{a}");
    assert!(b.contains("malformed admin request"), "{b}");
    let list: serde_json::Value =
        serde_json::from_str(&sspctl(&s.pool, &["lu", "list", "--json"])).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert!(s.stop().success());
}

#[test]
fn sigterm_during_writes_keeps_every_acknowledged_write() {
    let s = Server::start(&[("vm1", "64M")]);
    let uri = s.uri("vm1");
    // Writes with FUA in a loop, printing each acknowledged block number.
    let mut writer = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(
            "import nbd,sys\nh=nbd.NBD(); h.connect_uri(sys.argv[1])\n\
             try:\n  for i in range(16384):\n    h.pwrite(bytes([i % 250 + 1]) * 4096, i * 4096, nbd.CMD_FLAG_FUA); print(i, flush=True)\n\
             except Exception as e:\n  print('stopped', e, file=sys.stderr)\n",
        )
        .arg(&uri)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(writer.stdout.take().unwrap()).lines();
    let mut acked = 0u64;
    for line in lines.by_ref() {
        acked = line.unwrap().trim().parse::<u64>().unwrap() + 1;
        if acked >= 300 {
            break;
        }
    }
    // SIGTERM while writes are still flowing.
    unsafe_kill_term(s.child.id());
    for line in lines {
        if let Ok(n) = line.unwrap().trim().parse::<u64>() {
            acked = n + 1;
        }
    }
    let _ = writer.wait();
    let pool = s.pool.clone();
    let (st, _keep) = s.stop_keep();
    assert!(st.success(), "sspd exits cleanly on SIGTERM: {st}");
    // Restart and verify every acknowledged block.
    let s2 = Server::restart(pool);
    let out = nbdsh(
        &s2.uri("vm1"),
        &format!(
            "import nbd,sys\nh=nbd.NBD(); h.connect_uri(sys.argv[1])\n\
             for i in range({acked}):\n  assert h.pread(4096, i * 4096) == bytes([i % 250 + 1]) * 4096, i\nprint('verified')\n"
        ),
    );
    assert!(out.contains("verified"), "{out}");
    assert!(acked >= 300);
    assert!(s2.stop().success());
}

#[test]
fn prometheus_metrics_count_requests_and_bytes() {
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = free.local_addr().unwrap().to_string();
    drop(free);
    let dir = tempfile::tempdir().unwrap();
    let pool = make_pool(dir.path(), &[("vm1", "8M")]);
    let s = Server::serve_with(pool, dir, &["--metrics", &addr]);
    run(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 7 0 65536",
            "-c",
            "read -P 7 0 65536",
            "-c",
            "read 8387000 1000",
            &s.uri("vm1"),
        ],
    );
    let mut c = std::net::TcpStream::connect(&addr).unwrap();
    c.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut m = String::new();
    c.read_to_string(&mut m).unwrap();
    let value = |name: &str| -> f64 {
        m.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {m}"))
    };
    assert!(value("ssp_nbd_requests_total{cmd=\"write\",lu=\"vm1\"}") >= 1.0);
    assert!(value("ssp_nbd_bytes_total{cmd=\"write\",lu=\"vm1\"}") >= 65536.0);
    assert!(value("ssp_nbd_bytes_total{cmd=\"read\",lu=\"vm1\"}") >= 65536.0);
    assert!(m.contains("ssp_nbd_request_seconds"), "{m}");
    assert!(value("ssp_pool_total_bytes") > 0.0);
    assert!(s.stop().success());
}

/// A minimal NBD client over a raw socket: fixed newstyle, OPT_GO, simple replies.
struct Raw(std::net::TcpStream);

impl Raw {
    fn connect(port: u16, export: &str) -> Raw {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let mut greeting = [0u8; 18];
        s.read_exact(&mut greeting).unwrap();
        assert_eq!(&greeting[..16], b"NBDMAGICIHAVEOPT");
        s.write_all(&3u32.to_be_bytes()).unwrap(); // fixed newstyle, no zeroes
        let mut opt = Vec::new();
        opt.extend_from_slice(b"IHAVEOPT");
        opt.extend_from_slice(&7u32.to_be_bytes()); // NBD_OPT_GO
        opt.extend_from_slice(&(4 + export.len() as u32 + 2).to_be_bytes());
        opt.extend_from_slice(&(export.len() as u32).to_be_bytes());
        opt.extend_from_slice(export.as_bytes());
        opt.extend_from_slice(&0u16.to_be_bytes());
        s.write_all(&opt).unwrap();
        loop {
            let mut h = [0u8; 20];
            s.read_exact(&mut h).unwrap();
            assert_eq!(
                u64::from_be_bytes(h[..8].try_into().unwrap()),
                0x3e889045565a9
            );
            let typ = u32::from_be_bytes(h[12..16].try_into().unwrap());
            let len = u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize;
            let mut data = vec![0u8; len];
            s.read_exact(&mut data).unwrap();
            assert!(typ < 0x8000_0000, "option refused: {typ:#x}");
            if typ == 1 {
                return Raw(s); // NBD_REP_ACK
            }
        }
    }

    fn request(&mut self, typ: u16, cookie: u64, offset: u64, len: u32, payload: &[u8]) {
        let mut r = Vec::new();
        r.extend_from_slice(&0x2560_9513u32.to_be_bytes());
        r.extend_from_slice(&0u16.to_be_bytes());
        r.extend_from_slice(&typ.to_be_bytes());
        r.extend_from_slice(&cookie.to_be_bytes());
        r.extend_from_slice(&offset.to_be_bytes());
        r.extend_from_slice(&len.to_be_bytes());
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

    /// Whether the server closed the connection.
    fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.0.read(&mut b), Ok(0) | Err(_))
    }
}

#[test]
fn raw_socket_bad_requests_get_the_protocol_answer() {
    let s = Server::start(&[("vm1", "1M")]);
    let mut c = Raw::connect(s.port, "vm1");
    // Read past the end: EINVAL, cookie echoed, connection kept.
    c.request(0, 0xdead_beef, 1 << 20, 4096, &[]);
    assert_eq!(c.reply(), (22, 0xdead_beef));
    // Unknown command: EINVAL.
    c.request(99, 7, 0, 4096, &[]);
    assert_eq!(c.reply(), (22, 7));
    // A good write and read on the same connection still work.
    c.request(1, 8, 4096, 4096, &[0x5a; 4096]);
    assert_eq!(c.reply(), (0, 8));
    c.request(0, 9, 4096, 4096, &[]);
    assert_eq!(c.reply(), (0, 9));
    let mut data = vec![0u8; 4096];
    c.0.read_exact(&mut data).unwrap();
    assert!(data.iter().all(|&b| b == 0x5a));
    // A write announcing more than the 32 MiB maximum: the server hangs up on this client.
    c.request(1, 10, 0, 64 << 20, &[]);
    assert!(c.closed());
    // A client that disconnects in the middle of a write's payload: nothing is applied.
    let mut d = Raw::connect(s.port, "vm1");
    d.request(1, 11, 0, 65536, &[0x77; 1000]);
    drop(d);
    // Bad request magic: that connection is dropped.
    let mut e = Raw::connect(s.port, "vm1");
    e.0.write_all(&[0u8; 28]).unwrap();
    assert!(e.closed());
    // And everyone else carries on.
    let out = run(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "read -P 0 0 4096",
            "-c",
            "read -P 0x5a 4096 4096",
            &s.uri("vm1"),
        ],
    );
    assert!(!out.contains("failed"), "{out}");
    assert!(s.stop().success());
}

#[test]
fn lu_maps_restrict_exports_to_their_clients() {
    let dir = tempfile::tempdir().unwrap();
    let pool = make_pool(dir.path(), &[("vm1", "4M"), ("vm2", "4M")]);
    let sock = dir.path().join("nbd.sock");
    let s = Server::serve_with(pool.clone(), dir, &["--unix", sock.to_str().unwrap()]);
    let unix = |lu: &str| format!("nbd+unix:///{lu}?socket={}", sock.display());
    // vm1 is mapped to another network: invisible and refused for us.
    sspctl(&s.pool, &["lu", "map", "vm1", "--client", "10.0.0.0/8"]);
    let list = run("nbdinfo", &["--list", &s.uri("")]);
    assert!(
        !list.contains("\"vm1\"") && list.contains("\"vm2\""),
        "{list}"
    );
    assert!(!Command::new("nbdinfo")
        .arg(s.uri("vm1"))
        .output()
        .unwrap()
        .status
        .success());
    let json: serde_json::Value =
        serde_json::from_str(&sspctl(&s.pool, &["lu", "list", "--json"])).unwrap();
    assert_eq!(json[0]["maps"], serde_json::json!(["10.0.0.0/8"]));
    assert!(sspctl(&s.pool, &["lu", "list"]).contains("10.0.0.0/8"));
    // Mapped to us as well: usable.
    sspctl(&s.pool, &["lu", "map", "vm1", "--client", "127.0.0.1"]);
    run("nbdinfo", &[&s.uri("vm1")]);
    // Unix-socket clients are matched by uid.
    let me = String::from_utf8(Command::new("id").arg("-u").output().unwrap().stdout).unwrap();
    sspctl(&s.pool, &["lu", "map", "vm2", "--client", "uid:4242424"]);
    assert!(!Command::new("nbdinfo")
        .arg(unix("vm2"))
        .output()
        .unwrap()
        .status
        .success());
    sspctl(
        &s.pool,
        &[
            "lu",
            "map",
            "vm2",
            "--client",
            &format!("uid:{}", me.trim()),
        ],
    );
    run("nbdinfo", &[&unix("vm2")]);
    // TCP clients do not match uid maps.
    assert!(!Command::new("nbdinfo")
        .arg(s.uri("vm2"))
        .output()
        .unwrap()
        .status
        .success());
    // Unmapping everything makes an LU public again; bad specs are clear errors.
    sspctl(&s.pool, &["lu", "unmap", "vm2", "--client", "uid:4242424"]);
    sspctl(
        &s.pool,
        &[
            "lu",
            "unmap",
            "vm2",
            "--client",
            &format!("uid:{}", me.trim()),
        ],
    );
    run("nbdinfo", &[&s.uri("vm2")]);
    let err = sspctl_fails(&s.pool, &["lu", "map", "vm2", "--client", "not-a-spec"]);
    assert!(err.contains("client spec"), "{err}");
    let err = sspctl_fails(&s.pool, &["lu", "unmap", "vm2", "--client", "10.9.9.9"]);
    assert!(err.contains("not mapped"), "{err}");
    let (st, _keep) = s.stop_keep();
    assert!(st.success());
    // Maps survive a restart (they live in the pool directory) and work offline too.
    let list = sspctl(&pool, &["lu", "list"]);
    assert!(list.contains("10.0.0.0/8,127.0.0.1/32"), "{list}");
}

#[test]
fn offline_copies_point_to_nbd_while_sspd_runs() {
    let s = Server::start(&[("vm1", "4M")]);
    let t = tempfile::tempdir().unwrap();
    let f = t.path().join("x.img");
    std::fs::write(&f, [1u8; 4096]).unwrap();
    let err = sspctl_fails(&s.pool, &["lu", "import", "vm1", f.to_str().unwrap()]);
    assert!(err.contains("copy through NBD"), "{err}");
    assert!(s.stop().success());
}

/// A CA and a server certificate for 127.0.0.1, as PEM files in `dir` (libnbd's layout:
/// `ca-cert.pem`), plus `server-cert.pem` and `server-key.pem` for sspd; and for each name in
/// `clients`, a directory `dir/NAME` for libnbd's `tls-certificates=` with the CA and a client
/// certificate whose subject CN is NAME (`ca-cert.pem`, `client-cert.pem`, `client-key.pem`).
fn make_certs(dir: &Path, clients: &[&str]) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose, SanType,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "ssp test CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    p.subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    p.distinguished_name.push(DnType::CommonName, "127.0.0.1");
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    let cert = p.signed_by(&key, &ca_cert, &ca_key).unwrap();
    std::fs::write(dir.join("ca-cert.pem"), ca_cert.pem()).unwrap();
    std::fs::write(dir.join("server-cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("server-key.pem"), key.serialize_pem()).unwrap();
    for name in clients {
        let key = KeyPair::generate().unwrap();
        let cert = client_cert_params(name)
            .signed_by(&key, &ca_cert, &ca_key)
            .unwrap();
        let d = dir.join(name);
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("ca-cert.pem"), ca_cert.pem()).unwrap();
        std::fs::write(d.join("client-cert.pem"), cert.pem()).unwrap();
        std::fs::write(d.join("client-key.pem"), key.serialize_pem()).unwrap();
    }
}

/// A TLS client certificate's parameters: subject CN `name`, client authentication.
fn client_cert_params(name: &str) -> rcgen::CertificateParams {
    use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyUsagePurpose};
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, name);
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p
}

#[test]
fn starttls_with_x509_and_tls_required() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    make_certs(&certs, &[]);
    let pool = make_pool(dir.path(), &[("vm1", "8M")]);
    let cert = certs.join("server-cert.pem");
    let key = certs.join("server-key.pem");
    let s = Server::serve_with(
        pool,
        dir,
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--tls",
            "require",
        ],
    );
    let tls_uri = format!(
        "nbds://127.0.0.1:{}/vm1?tls-certificates={}",
        s.port,
        certs.display()
    );
    let info = run("nbdinfo", &[&tls_uri]);
    assert!(info.contains("export-size: 8388608"), "{info}");
    // Data goes through the TLS session.
    let out = nbdsh(
        &tls_uri,
        "import nbd,sys\nh=nbd.NBD(); h.set_uri_allow_local_file(True); h.connect_uri(sys.argv[1])\nh.pwrite(b'\\x42'*65536, 4096)\nh.flush()\nassert h.pread(65536, 4096) == b'\\x42'*65536\nprint('ok')\n",
    );
    assert!(out.contains("ok"), "{out}");
    // Plain connections are refused when TLS is required.
    let o = Command::new("nbdinfo").arg(s.uri("vm1")).output().unwrap();
    assert!(!o.status.success(), "a plain client must be refused");
    assert!(s.stop().success());
}

#[test]
fn tls_client_certificates_identify_lu_map_clients() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    make_certs(&certs, &["host1", "host2"]);
    // A client that trusts the server but has no certificate of its own.
    let anon = certs.join("anon");
    std::fs::create_dir(&anon).unwrap();
    std::fs::copy(certs.join("ca-cert.pem"), anon.join("ca-cert.pem")).unwrap();
    // A client claiming to be host1 with a certificate the server's CA did not sign.
    let forged = certs.join("forged");
    std::fs::create_dir(&forged).unwrap();
    std::fs::copy(certs.join("ca-cert.pem"), forged.join("ca-cert.pem")).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = client_cert_params("host1").self_signed(&key).unwrap();
    std::fs::write(forged.join("client-cert.pem"), cert.pem()).unwrap();
    std::fs::write(forged.join("client-key.pem"), key.serialize_pem()).unwrap();
    let pool = make_pool(dir.path(), &[("vm1", "4M"), ("vm2", "4M"), ("vm3", "4M")]);
    // vm1 for host1's certificate only; vm3 by address, which TLS sessions still match.
    sspctl(&pool, &["lu", "map", "vm1", "--client", "tls:host1"]);
    sspctl(&pool, &["lu", "map", "vm3", "--client", "127.0.0.1"]);
    let file = |n: &str| certs.join(n).to_str().unwrap().to_owned();
    let s = Server::serve_with(
        pool,
        dir,
        &[
            "--tls-cert",
            &file("server-cert.pem"),
            "--tls-key",
            &file("server-key.pem"),
            "--tls-ca",
            &file("ca-cert.pem"),
        ],
    );
    let uri = |who: &str, lu: &str| {
        format!(
            "nbds://127.0.0.1:{}/{lu}?tls-certificates={}",
            s.port,
            certs.join(who).display()
        )
    };
    let opens = |uri: &str| Command::new("nbdinfo").arg(uri).output().unwrap();
    let listed = |uri: &str| {
        let l = run("nbdinfo", &["--list", uri]);
        ["vm1", "vm2", "vm3"]
            .into_iter()
            .filter(|lu| l.contains(&format!("export=\"{lu}\"")))
            .collect::<Vec<_>>()
    };
    // host1 sees vm1 and uses it.
    assert_eq!(listed(&uri("host1", "")), ["vm1", "vm2", "vm3"]);
    let info = run("nbdinfo", &[&uri("host1", "vm1")]);
    assert!(info.contains("export-size: 4194304"), "{info}");
    let out = nbdsh(
        &uri("host1", "vm1"),
        "import nbd,sys\nh=nbd.NBD(); h.set_uri_allow_local_file(True); h.connect_uri(sys.argv[1])\nh.pwrite(b'\\x61'*4096, 0)\nassert h.pread(4096, 0) == b'\\x61'*4096\nprint('ok')\n",
    );
    assert!(out.contains("ok"), "{out}");
    // Another certificate, none, or no TLS at all: vm1 is neither listed nor served, while
    // the address map of vm3 still matches.
    for who in ["host2", "anon"] {
        assert_eq!(listed(&uri(who, "")), ["vm2", "vm3"], "{who}");
        let o = opens(&uri(who, "vm1"));
        assert!(!o.status.success(), "{who} must not open vm1");
        assert!(opens(&uri(who, "vm3")).status.success(), "{who}");
    }
    assert_eq!(listed(&s.uri("")), ["vm2", "vm3"]);
    assert!(!opens(&s.uri("vm1")).status.success());
    // libnbd (gnutls) does not offer a certificate from outside the CA the server names: no
    // identity. A client that sends it anyway fails the TLS handshake.
    assert_eq!(listed(&uri("forged", "")), ["vm2", "vm3"]);
    assert!(!opens(&uri("forged", "vm1")).status.success());
    let ca = certs.join("ca-cert.pem");
    let err = rustls_list(s.port, &ca, Some(&forged)).unwrap_err();
    assert!(err.contains("UnknownCA"), "{err}");
    // The same client with a good certificate gets through and is host1.
    let host1 = rustls_list(s.port, &ca, Some(&certs.join("host1"))).unwrap();
    assert_eq!(host1, ["vm1", "vm2", "vm3"]);
    assert_eq!(rustls_list(s.port, &ca, None).unwrap(), ["vm2", "vm3"]);
    assert!(s.stop().success());
}

/// NBD_OPT_STARTTLS, then NBD_OPT_LIST over a rustls client session which, unlike gnutls,
/// sends the client certificate in `dir` (if any) whatever CAs the server names. The export
/// names listed, sorted; `Err` when the TLS session fails.
fn rustls_list(port: u16, ca: &Path, client: Option<&Path>) -> Result<Vec<String>, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut greeting = [0u8; 18];
    s.read_exact(&mut greeting).unwrap();
    s.write_all(&3u32.to_be_bytes()).unwrap();
    let option = |s: &mut dyn Write, code: u32| {
        let mut o = b"IHAVEOPT".to_vec();
        o.extend_from_slice(&code.to_be_bytes());
        o.extend_from_slice(&0u32.to_be_bytes());
        s.write_all(&o).map_err(|e| format!("TLS session: {e}"))
    };
    // (reply type, data)
    let reply = |s: &mut dyn Read| -> Result<(u32, Vec<u8>), String> {
        let mut h = [0u8; 20];
        s.read_exact(&mut h)
            .map_err(|e| format!("TLS session: {e}"))?;
        let typ = u32::from_be_bytes(h[12..16].try_into().unwrap());
        let mut data = vec![0u8; u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize];
        s.read_exact(&mut data)
            .map_err(|e| format!("TLS session: {e}"))?;
        Ok((typ, data))
    };
    option(&mut s, 5)?; // NBD_OPT_STARTTLS
    assert_eq!(reply(&mut s)?.0, 1, "STARTTLS refused");
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(ca).unwrap())
        .unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let cfg = match client {
        Some(d) => cfg
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_file(d.join("client-cert.pem")).unwrap()],
                PrivateKeyDer::from_pem_file(d.join("client-key.pem")).unwrap(),
            )
            .unwrap(),
        None => cfg.with_no_client_auth(),
    };
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(cfg), name).unwrap();
    let mut t = rustls::StreamOwned::new(conn, s);
    option(&mut t, 3)?; // NBD_OPT_LIST
    let mut names = Vec::new();
    loop {
        match reply(&mut t)? {
            (1, _) => break, // NBD_REP_ACK
            (2, d) => {
                // NBD_REP_SERVER: name length, name, description.
                let n = u32::from_be_bytes(d[..4].try_into().unwrap()) as usize;
                names.push(String::from_utf8(d[4..4 + n].to_vec()).unwrap());
            }
            (typ, _) => return Err(format!("LIST refused: {typ:#x}")),
        }
    }
    option(&mut t, 2)?; // NBD_OPT_ABORT
    t.conn.send_close_notify();
    let _ = t.flush();
    names.sort();
    Ok(names)
}

#[test]
fn structured_reads_send_holes_as_hole_chunks() {
    let s = Server::start(&[("vm1", "4M")]);
    let out = nbdsh(
        &s.uri("vm1"),
        r#"
import nbd, sys
h = nbd.NBD(); h.connect_uri(sys.argv[1])
assert h.get_structured_replies_negotiated()
h.pwrite(b"\x33" * 8192, 65536)
chunks = []
def cb(buf, offset, status, err):
    chunks.append((offset, len(buf), status))
    return 0
buf = h.pread_structured(196608, 0, cb)
assert buf[:65536] == bytes(65536) and buf[65536:73728] == b"\x33" * 8192 and buf[73728:] == bytes(196608 - 73728)
kinds = [(o, n, "hole" if st == nbd.READ_HOLE else "data") for (o, n, st) in chunks]
print(kinds)
assert kinds == [(0, 65536, "hole"), (65536, 8192, "data"), (73728, 122880, "hole")], kinds
# DF: one data chunk for the whole range.
chunks.clear()
h.pread_structured(196608, 0, cb, nbd.CMD_FLAG_DF)
assert len(chunks) == 1 and chunks[0][2] == nbd.READ_DATA, chunks
print("ok")
"#,
    );
    assert!(out.contains("ok"), "{out}");
    assert!(s.stop().success());
}

#[test]
fn requests_after_sigterm_get_eshutdown() {
    let s = Server::start(&[("vm1", "4M")]);
    let mut client = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(
            "import nbd,sys,errno\nh=nbd.NBD(); h.connect_uri(sys.argv[1]); print('ready', flush=True)\nsys.stdin.readline()\n\
             try:\n  h.pread(4096, 0); print('read worked')\n\
             except nbd.Error as e:\n  print('errno', errno.errorcode.get(e.errnum), flush=True)\n",
        )
        .arg(s.uri("vm1"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(client.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    unsafe_kill_term(s.child.id());
    std::thread::sleep(std::time::Duration::from_millis(200));
    client.stdin.take().unwrap().write_all(b"go\n").unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "errno ESHUTDOWN", "{line}");
    let _ = client.wait();
    assert!(s.stop().success());
}
