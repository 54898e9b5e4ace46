//! Operator guards through the real binaries: shrinking and rolling back LUs under attached
//! clients, importing a file larger than its LU, relative PV paths, unix socket paths, SIGHUP.
#![allow(clippy::big_endian_bytes)] // the NBD wire format is big-endian

mod common;

use common::server::{make_pool, random_file, run, sspctl, sspctl_fails};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

/// An sspd process started with the given arguments, working directory and a log file.
struct Sspd {
    child: Child,
    port: Option<u16>,
    log: PathBuf,
}

impl Sspd {
    fn start(pool: &Path, cwd: &Path, log: &Path, extra: &[&str]) -> Sspd {
        let mut child = Self::command(pool, cwd, log, extra).spawn().unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let port;
        let mut line = String::new();
        loop {
            line.clear();
            assert!(
                out.read_line(&mut line).unwrap() > 0,
                "sspd exited before listening: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
            // Each test listens on one socket: TCP (a port to note) or unix.
            if let Some(rest) = line.trim().strip_prefix("sspd: listening on ") {
                port = rest.rsplit(':').next().and_then(|p| p.parse().ok());
                break;
            }
        }
        // Keep draining stdout so later announcements never block the server.
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut out, &mut std::io::sink());
        });
        Sspd {
            child,
            port,
            log: log.to_owned(),
        }
    }

    fn command(pool: &Path, cwd: &Path, log: &Path, extra: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_sspd"));
        c.arg("--pool")
            .arg(pool)
            .args(extra)
            .current_dir(cwd)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).unwrap());
        c
    }

    fn uri(&self, export: &str) -> String {
        format!("nbd://127.0.0.1:{}/{export}", self.port.unwrap())
    }

    fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap()
    }

    /// Wait (bounded) until the log contains `needle`.
    fn wait_log(&self, needle: &str) {
        let t = Instant::now();
        while !self.log().contains(needle) {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "no {needle:?} in the log: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// SIGTERM and the exit status.
    fn stop(mut self) -> std::process::ExitStatus {
        self.signal("-TERM");
        self.child.wait().unwrap()
    }
}

impl Drop for Sspd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A libnbd client holding a connection to `uri` open. Each line written to it makes it read
/// 512 bytes and answer "open" (served) or "closed" (the server ended the connection).
struct Holder {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Holder {
    fn attach(uri: &str) -> Holder {
        let mut child = Command::new("/usr/bin/python3")
            .arg("-c")
            .arg(
                "import nbd,sys\n\
                 h=nbd.NBD(); h.set_uri_allow_local_file(True)\n\
                 h.connect_uri(sys.argv[1]); print('attached', flush=True)\n\
                 for _ in sys.stdin:\n\
                 \x20   try:\n\
                 \x20       h.pread(512, 0); print('open', flush=True)\n\
                 \x20   except nbd.Error as e:\n\
                 \x20       print('closed', flush=True)\n",
            )
            .arg(uri)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "attached");
        Holder {
            child,
            stdin,
            stdout,
        }
    }

    /// "open" or "closed".
    fn probe(&mut self) -> String {
        writeln!(self.stdin).unwrap();
        self.stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        line.trim().to_owned()
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn lu_size(pool: &Path, name: &str) -> u64 {
    let v: serde_json::Value =
        serde_json::from_str(&sspctl(pool, &["lu", "list", "--json"])).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == name)
        .unwrap_or_else(|| panic!("no LU {name}: {v}"))["size"]
        .as_u64()
        .unwrap()
}

fn export_size(uri: &str) -> u64 {
    let info = run("nbdinfo", &["--size", uri]);
    info.trim().parse().unwrap()
}

#[test]
fn shrink_needs_allow_shrink_and_force_under_attached_clients() {
    let dir = tempfile::tempdir().unwrap();
    let pool = make_pool(dir.path(), &[("vm1", "8M"), ("vm2", "8M")]);
    // Offline: a smaller size is refused without --allow-shrink, naming both sizes.
    let err = sspctl_fails(&pool, &["lu", "resize", "vm1", "--size", "4M"]);
    assert!(
        err.contains("--allow-shrink") && err.contains("8388608") && err.contains("4194304"),
        "{err}"
    );
    assert_eq!(lu_size(&pool, "vm1"), 8 << 20);
    sspctl(
        &pool,
        &["lu", "resize", "vm2", "--size", "4M", "--allow-shrink"],
    );
    assert_eq!(lu_size(&pool, "vm2"), 4 << 20);
    // Growing needs no flag.
    sspctl(&pool, &["lu", "resize", "vm2", "--size", "6M"]);
    assert_eq!(lu_size(&pool, "vm2"), 6 << 20);

    let s = Sspd::start(
        &pool,
        dir.path(),
        &dir.path().join("sspd.log"),
        &["--listen", "127.0.0.1:0"],
    );
    let mut a = Holder::attach(&s.uri("vm1"));
    let mut b = Holder::attach(&s.uri("vm1"));
    let mut other = Holder::attach(&s.uri("vm2"));
    let err = sspctl_fails(&pool, &["lu", "resize", "vm1", "--size", "4M"]);
    assert!(err.contains("--allow-shrink"), "{err}");
    // Attached: refused, naming the clients.
    let err = sspctl_fails(
        &pool,
        &["lu", "resize", "vm1", "--size", "4M", "--allow-shrink"],
    );
    assert!(
        err.contains("2 client(s) attached")
            && err.contains("127.0.0.1:")
            && err.contains("--force"),
        "{err}"
    );
    assert_eq!(lu_size(&pool, "vm1"), 8 << 20);
    assert_eq!(a.probe(), "open");
    // Forced: vm1's clients are disconnected, then the LU shrinks; vm2's client stays.
    sspctl(
        &pool,
        &[
            "lu",
            "resize",
            "vm1",
            "--size",
            "4M",
            "--allow-shrink",
            "--force",
        ],
    );
    assert_eq!(lu_size(&pool, "vm1"), 4 << 20);
    assert_eq!(a.probe(), "closed");
    assert_eq!(b.probe(), "closed");
    assert_eq!(other.probe(), "open");
    s.wait_log("session ended by the operator");
    // New clients see the new size.
    assert_eq!(export_size(&s.uri("vm1")), 4 << 20);
    // Growing under a client is allowed.
    sspctl(&pool, &["lu", "resize", "vm2", "--size", "8M"]);
    assert_eq!(other.probe(), "open");
    assert!(s.stop().success());
    assert!(sspctl(&pool, &["check"]).contains("OK"));
}

#[test]
fn rollback_under_attached_clients_needs_force() {
    let dir = tempfile::tempdir().unwrap();
    let pool = make_pool(dir.path(), &[("vm1", "4M")]);
    let s = Sspd::start(
        &pool,
        dir.path(),
        &dir.path().join("sspd.log"),
        &["--listen", "127.0.0.1:0"],
    );
    let write = |byte: u8| {
        let script = format!(
            "import nbd,sys\nh=nbd.NBD(); h.connect_uri(sys.argv[1])\nh.pwrite(bytes([{byte}])*4096, 0)\nh.flush()\n"
        );
        common::server::nbdsh(&s.uri("vm1"), &script);
    };
    let first = |uri: &str| {
        common::server::nbdsh(
            uri,
            "import nbd,sys\nh=nbd.NBD(); h.connect_uri(sys.argv[1])\nprint(h.pread(1, 0)[0])\n",
        )
        .trim()
        .parse::<u8>()
        .unwrap()
    };
    write(0x11);
    sspctl(&pool, &["snapshot", "create", "vm1@good"]);
    write(0x22);
    let mut h = Holder::attach(&s.uri("vm1"));
    let err = sspctl_fails(&pool, &["snapshot", "rollback", "vm1@good"]);
    assert!(
        err.contains("1 client(s) attached")
            && err.contains("127.0.0.1:")
            && err.contains("--force"),
        "{err}"
    );
    assert_eq!(h.probe(), "open");
    assert_eq!(first(&s.uri("vm1")), 0x22, "nothing rolled back");
    // A snapshot that does not exist: refused before anyone is disconnected.
    sspctl_fails(&pool, &["snapshot", "rollback", "vm1@nope", "--force"]);
    assert_eq!(h.probe(), "open");
    sspctl(&pool, &["snapshot", "rollback", "vm1@good", "--force"]);
    assert_eq!(h.probe(), "closed");
    assert_eq!(first(&s.uri("vm1")), 0x11, "rolled back");
    assert!(s.stop().success());
    assert!(sspctl(&pool, &["check"]).contains("OK"));
}

#[test]
fn import_of_a_file_larger_than_the_lu_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let pool = make_pool(dir.path(), &[("vm1", "1M")]);
    let small = dir.path().join("small.img");
    random_file(&small, 512 << 10);
    sspctl(&pool, &["lu", "import", "vm1", small.to_str().unwrap()]);
    let export = |name: &str| {
        let f = dir.path().join(name);
        sspctl(&pool, &["lu", "export", "vm1", f.to_str().unwrap()]);
        std::fs::read(f).unwrap()
    };
    let before = export("before.img");
    assert_eq!(&before[..512 << 10], &std::fs::read(&small).unwrap()[..]);
    let big = dir.path().join("big.img");
    std::fs::write(&big, vec![0x5au8; (1 << 20) + 4096]).unwrap();
    let err = sspctl_fails(&pool, &["lu", "import", "vm1", big.to_str().unwrap()]);
    assert!(
        err.contains("1052672") && err.contains("1048576") && err.contains("nothing was written"),
        "{err}"
    );
    assert_eq!(export("after.img"), before, "the LU's bytes changed");
    // At an offset, a file that fits alone does not fit any more.
    let err = sspctl_fails(
        &pool,
        &[
            "lu",
            "import",
            "vm1",
            small.to_str().unwrap(),
            "--offset",
            "768K",
        ],
    );
    assert!(
        err.contains("offset 786432") && err.contains("524288"),
        "{err}"
    );
    assert_eq!(export("after2.img"), before, "the LU's bytes changed");
    // Exactly the LU's size fits.
    let full = dir.path().join("full.img");
    random_file(&full, 1 << 20);
    sspctl(&pool, &["lu", "import", "vm1", full.to_str().unwrap()]);
    assert_eq!(export("full-out.img"), std::fs::read(&full).unwrap());
}

#[test]
fn relative_pv_paths_mean_the_users_directory() {
    let dir = tempfile::tempdir().unwrap();
    let pool = make_pool(dir.path(), &[("vm1", "4M")]);
    // sspd runs in one directory, the operator types paths in another.
    let server_cwd = dir.path().join("server-cwd");
    let user_cwd = dir.path().join("user-cwd");
    std::fs::create_dir(&server_cwd).unwrap();
    std::fs::create_dir(&user_cwd).unwrap();
    let s = Sspd::start(
        &pool,
        &server_cwd,
        &dir.path().join("sspd.log"),
        &["--listen", "127.0.0.1:0"],
    );
    let ctl = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_sspctl"))
            .arg("--pool")
            .arg(&pool)
            .args(args)
            .current_dir(&user_cwd)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "sspctl {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    };
    ctl(&["failgrp", "create", "fg2", "--pv", "pv1.img:512M"]);
    assert!(user_cwd.join("pv1.img").exists());
    assert!(!server_cwd.join("pv1.img").exists());
    let pvs = ctl(&["pv", "list", "--json"]);
    let want = user_cwd.canonicalize().unwrap().join("pv1.img");
    assert!(pvs.contains(want.to_str().unwrap()), "{pvs}");
    ctl(&["failgrp", "resync"]);
    // Replace it, naming both the old and the new PV relative to the user's directory.
    ctl(&["pv", "replace", "pv1.img", "../user-cwd/pv2.img:512M"]);
    assert!(user_cwd.join("pv2.img").exists());
    assert!(!server_cwd.join("pv2.img").exists());
    let pvs = ctl(&["pv", "list", "--json"]);
    let want = user_cwd.canonicalize().unwrap().join("pv2.img");
    assert!(pvs.contains(want.to_str().unwrap()), "{pvs}");
    assert!(!pvs.contains("pv1.img"), "{pvs}");
    // A request that still carries a relative path (an older client, a script) is refused
    // rather than resolved in sspd's directory.
    let mut admin = std::os::unix::net::UnixStream::connect(pool.join("admin.sock")).unwrap();
    admin
        .write_all(b"{\"version\":2,\"cmd\":\"pv_add\",\"fg\":\"fg2\",\"pvs\":[\"rel.img:64M\"]}\n")
        .unwrap();
    let mut reply = String::new();
    BufReader::new(admin).read_line(&mut reply).unwrap();
    assert!(reply.contains("relative"), "{reply}");
    assert!(!server_cwd.join("rel.img").exists());
    assert!(s.stop().success());
    // The configuration names the PVs where the user meant: the pool opens from anywhere.
    assert!(sspctl(&pool, &["check"]).contains("OK"));
    let st = sspctl(&pool, &["pool", "status", "--json"]);
    assert!(st.contains(want.to_str().unwrap()), "{st}");
}

#[test]
fn unix_socket_paths_are_claimed_with_care() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pool_a = make_pool(&d.join("a"), &[("vm1", "4M")]);
    let pool_b = make_pool(&d.join("b"), &[("vm1", "4M")]);
    let log = d.join("sspd.log");
    let sock = d.join("nbd.sock");
    let sock_s = sock.to_str().unwrap();
    let fails = |pool: &Path, args: &[&str]| {
        let o = Sspd::command(pool, d, &d.join("fail.log"), args)
            .output()
            .unwrap();
        assert!(!o.status.success(), "sspd {args:?} should fail");
        std::fs::read_to_string(d.join("fail.log")).unwrap()
    };
    // A regular file at the path: refused, the file intact.
    std::fs::write(&sock, b"precious").unwrap();
    let err = fails(&pool_a, &["--unix", sock_s]);
    assert!(err.contains("not a socket"), "{err}");
    assert_eq!(std::fs::read(&sock).unwrap(), b"precious");
    std::fs::remove_file(&sock).unwrap();
    // A stale socket (nobody accepts on it) is replaced.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    let a = Sspd::start(&pool_a, d, &log, &["--unix", sock_s]);
    let uri = format!("nbd+unix:///vm1?socket={sock_s}");
    assert_eq!(export_size(&uri), 4 << 20);
    // A second server on the live socket is refused; the first keeps serving.
    let err = fails(&pool_b, &["--unix", sock_s]);
    assert!(err.contains("another server is listening"), "{err}");
    assert_eq!(export_size(&uri), 4 << 20);
    let st = Command::new("nbdinfo").arg(&uri).output().unwrap();
    assert!(st.status.success());
    // Both sockets are removed on exit.
    assert!(a.stop().success());
    assert!(!sock.exists(), "the NBD socket was left behind");
    assert!(
        !pool_a.join("admin.sock").exists(),
        "admin.sock was left behind"
    );
    // After a crash the stale sockets do not stop a restart.
    let mut a = Sspd::start(&pool_a, d, &log, &["--unix", sock_s]);
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    assert!(sock.exists() && pool_a.join("admin.sock").exists());
    let a = Sspd::start(&pool_a, d, &log, &["--unix", sock_s]);
    assert_eq!(export_size(&uri), 4 << 20);
    assert!(sspctl(&pool_a, &["lu", "list"]).contains("vm1"));
    // Something that is not a socket where admin.sock goes: refused, left alone.
    let admin_b = pool_b.join("admin.sock");
    std::fs::create_dir(&admin_b).unwrap();
    let err = fails(&pool_b, &["--listen", "127.0.0.1:0"]);
    assert!(err.contains("not a socket"), "{err}");
    assert!(admin_b.is_dir());
    assert!(a.stop().success());
}

/// A CA and a server certificate for 127.0.0.1 it signed: `ca-cert.pem` in `ca_dir` (libnbd's
/// `tls-certificates=` layout), `server-cert.pem` and `server-key.pem` in `server_dir`.
fn make_certs(ca_dir: &Path, server_dir: &Path) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose, SanType,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "ssp operator test CA");
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
    std::fs::create_dir_all(ca_dir).unwrap();
    std::fs::write(ca_dir.join("ca-cert.pem"), ca_cert.pem()).unwrap();
    // Written beside and renamed over, as an operator's tooling would.
    for (name, pem) in [
        ("server-cert.pem", cert.pem()),
        ("server-key.pem", key.serialize_pem()),
    ] {
        let tmp = server_dir.join(format!("{name}.tmp"));
        std::fs::write(&tmp, pem).unwrap();
        std::fs::rename(&tmp, server_dir.join(name)).unwrap();
    }
}

#[test]
fn sighup_keeps_serving_and_reloads_certificates_and_maps() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pool = make_pool(d, &[("vm1", "4M"), ("vm2", "4M")]);
    let srv = d.join("server");
    std::fs::create_dir(&srv).unwrap();
    let (old_ca, new_ca) = (d.join("ca-old"), d.join("ca-new"));
    make_certs(&old_ca, &srv);
    let cert = srv.join("server-cert.pem");
    let key = srv.join("server-key.pem");
    let mut s = Sspd::start(
        &pool,
        d,
        &d.join("sspd.log"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--tls",
            "require",
        ],
    );
    let port = s.port.unwrap();
    let tls_uri = |ca: &Path, lu: &str| {
        format!(
            "nbds://127.0.0.1:{port}/{lu}?tls-certificates={}",
            ca.display()
        )
    };
    let opens = |uri: &str| {
        Command::new("nbdinfo")
            .arg("--size")
            .arg(uri)
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(opens(&tls_uri(&old_ca, "vm1")));
    let mut h = Holder::attach(&tls_uri(&old_ca, "vm1"));
    // HUP with nothing changed: alive, logged, still serving, the attached client too.
    s.signal("-HUP");
    s.wait_log("SIGHUP");
    s.wait_log("TLS certificates reloaded");
    assert!(s.alive(), "sspd died of SIGHUP");
    assert!(opens(&tls_uri(&old_ca, "vm1")));
    assert_eq!(h.probe(), "open");
    // A new certificate from another CA: new handshakes use it.
    make_certs(&new_ca, &srv);
    s.signal("-HUP");
    let t = Instant::now();
    while !opens(&tls_uri(&new_ca, "vm1")) {
        assert!(t.elapsed() < Duration::from_secs(20), "{}", s.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !opens(&tls_uri(&old_ca, "vm1")),
        "the old certificate is still served"
    );
    assert_eq!(
        h.probe(),
        "open",
        "an established session survives the swap"
    );
    // A broken certificate is logged and the one in use kept.
    std::fs::write(&cert, b"-----BEGIN CERTIFICATE-----\nnot base64\n").unwrap();
    s.signal("-HUP");
    s.wait_log("TLS certificates not reloaded");
    assert!(s.alive());
    assert!(opens(&tls_uri(&new_ca, "vm1")));
    // LU maps edited out of band are picked up too.
    let maps = pool.join("lu-maps.json");
    std::fs::write(&maps, r#"{"vm2": ["10.9.9.9/32"]}"#).unwrap();
    assert!(opens(&tls_uri(&new_ca, "vm2")));
    s.signal("-HUP");
    let t = Instant::now();
    while opens(&tls_uri(&new_ca, "vm2")) {
        assert!(t.elapsed() < Duration::from_secs(20), "{}", s.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let list = sspctl(&pool, &["lu", "list", "--json"]);
    assert!(list.contains("10.9.9.9/32"), "{list}");
    assert!(s.alive());
    assert!(s.stop().success());
    assert!(!pool.join("admin.sock").exists());
    assert!(sspctl(&pool, &["check"]).contains("OK"));
}

/// A raw NBD connection to `export` after NBD_OPT_GO (fixed newstyle, simple replies).
fn raw_connect(port: u16, export: &str) -> std::net::TcpStream {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut greeting = [0u8; 18];
    s.read_exact(&mut greeting).unwrap();
    assert_eq!(&greeting[..16], b"NBDMAGICIHAVEOPT");
    s.write_all(&3u32.to_be_bytes()).unwrap(); // fixed newstyle, no zeroes
    let mut opt = b"IHAVEOPT".to_vec();
    opt.extend_from_slice(&7u32.to_be_bytes()); // NBD_OPT_GO
    opt.extend_from_slice(&(4 + export.len() as u32 + 2).to_be_bytes());
    opt.extend_from_slice(&(export.len() as u32).to_be_bytes());
    opt.extend_from_slice(export.as_bytes());
    opt.extend_from_slice(&0u16.to_be_bytes());
    s.write_all(&opt).unwrap();
    loop {
        let mut h = [0u8; 20];
        s.read_exact(&mut h).unwrap();
        let typ = u32::from_be_bytes(h[12..16].try_into().unwrap());
        let len = u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize;
        let mut data = vec![0u8; len];
        s.read_exact(&mut data).unwrap();
        assert!(typ < 0x8000_0000, "option refused: {typ:#x}");
        if typ == 1 {
            return s; // NBD_REP_ACK
        }
    }
}

/// The 4 KiB written by request `i` of the busy client below.
fn busy_block(i: u64) -> Vec<u8> {
    (0..4096u64)
        .map(|k| (i.wrapping_mul(31) ^ k.wrapping_mul(7)) as u8)
        .collect()
}

#[test]
fn a_forced_shrink_ends_a_busy_session_after_its_requests_in_flight() {
    use std::io::Read;
    use std::sync::atomic::{AtomicU64, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let pool = make_pool(dir.path(), &[("vm1", "8M")]);
    let s = Sspd::start(
        &pool,
        dir.path(),
        &dir.path().join("sspd.log"),
        &["--listen", "127.0.0.1:0"],
    );
    let conn = raw_connect(s.port.unwrap(), "vm1");
    let mut w = conn.try_clone().unwrap();
    let mut r = conn;
    // Pipelined FUA writes (they run on blocking threads, many at once) to distinct blocks
    // below the new size, until the server closes the connection.
    const N: u64 = 1000;
    let writer = std::thread::spawn(move || {
        for i in 0..N {
            let mut q = Vec::with_capacity(28 + 4096);
            q.extend_from_slice(&0x2560_9513u32.to_be_bytes());
            q.extend_from_slice(&1u16.to_be_bytes()); // FUA
            q.extend_from_slice(&1u16.to_be_bytes()); // WRITE
            q.extend_from_slice(&i.to_be_bytes());
            q.extend_from_slice(&(i * 4096).to_be_bytes());
            q.extend_from_slice(&4096u32.to_be_bytes());
            q.extend_from_slice(&busy_block(i));
            if w.write_all(&q).is_err() {
                return;
            }
        }
    });
    let acked = std::sync::Arc::new(AtomicU64::new(0));
    let count = acked.clone();
    // Every reply arrives whole and reports success, then the connection ends.
    let reader = std::thread::spawn(move || {
        let mut cookies = Vec::new();
        loop {
            let mut h = [0u8; 16];
            let mut got = 0;
            while got < 16 {
                match r.read(&mut h[got..]) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                    Err(e) => panic!("the connection did not end: {e}"),
                }
            }
            if got == 0 {
                return cookies;
            }
            assert_eq!(got, 16, "torn reply");
            assert_eq!(u32::from_be_bytes(h[..4].try_into().unwrap()), 0x6744_6698);
            let err = u32::from_be_bytes(h[4..8].try_into().unwrap());
            let cookie = u64::from_be_bytes(h[8..16].try_into().unwrap());
            assert_eq!(err, 0, "write {cookie} failed");
            assert!(cookie < N && !cookies.contains(&cookie));
            cookies.push(cookie);
            count.fetch_add(1, Ordering::SeqCst);
        }
    });
    let t = Instant::now();
    while acked.load(Ordering::SeqCst) < 20 {
        assert!(t.elapsed() < Duration::from_secs(20), "no replies");
        std::thread::sleep(Duration::from_millis(1));
    }
    sspctl(
        &pool,
        &[
            "lu",
            "resize",
            "vm1",
            "--size",
            "4M",
            "--allow-shrink",
            "--force",
        ],
    );
    let cookies = reader.join().unwrap();
    writer.join().unwrap();
    assert!(cookies.len() >= 20);
    assert_eq!(lu_size(&pool, "vm1"), 4 << 20);
    // Every acknowledged write is there (FUA: durable too).
    let out = dir.path().join("out.img");
    assert!(s.stop().success());
    sspctl(&pool, &["lu", "export", "vm1", out.to_str().unwrap()]);
    let data = std::fs::read(&out).unwrap();
    for &i in &cookies {
        let at = (i * 4096) as usize;
        assert!(
            data[at..at + 4096] == busy_block(i)[..],
            "acknowledged write {i} lost"
        );
    }
}

#[test]
fn requests_of_older_clients_still_decode() {
    use ssp::admin::AdminRequest;
    let r: AdminRequest =
        serde_json::from_str(r#"{"cmd":"lu_resize","name":"vm1","size":4096}"#).unwrap();
    assert_eq!(
        r,
        AdminRequest::LuResize {
            name: "vm1".into(),
            size: 4096,
            allow_shrink: false,
            force: false,
        }
    );
    let r: AdminRequest =
        serde_json::from_str(r#"{"cmd":"snapshot_rollback","name":"vm1@s"}"#).unwrap();
    assert_eq!(
        r,
        AdminRequest::SnapshotRollback {
            name: "vm1@s".into(),
            force: false,
            no_undo: false,
            keep_undo: None,
        }
    );
}
