//! sspd under a service manager: socket activation (sockets inherited through LISTEN_FDS and
//! LISTEN_PID, as systemd and `systemd-socket-activate` pass them), readiness and stopping on
//! NOTIFY_SOCKET, `--pidfile` and `--exit-with-parent`; and the claim socket activation is for:
//! qemu with `reconnect-delay` keeps running, without an I/O error, while sspd is killed or
//! stopped and started again on the socket the manager keeps.

mod common;
use common::server::*;
use std::io::{BufRead, BufReader};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// sspd serving `pool` on the listening socket `fd` only, handed over the way systemd does it:
/// as descriptor 3 with LISTEN_FDS=1 and LISTEN_PID set to sspd's own pid (by a shell that
/// then execs sspd). Stderr is appended to `log`. Returns once it serves.
fn activated_sspd(pool: &Path, fd: RawFd, log: &Path) -> Child {
    let mut cmd = Command::new("/bin/sh");
    cmd.args([
        "-c",
        r#"LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=nbd exec "$0" "$@""#,
        env!("CARGO_BIN_EXE_sspd"),
        "--pool",
        pool.to_str().unwrap(),
    ])
    .env("SSP_LOG", "info")
    .stdout(Stdio::piped())
    .stderr(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap(),
    );
    // SAFETY: only dup2 and fcntl run between fork and exec (both async-signal-safe).
    unsafe {
        cmd.pre_exec(move || {
            if fd == 3 {
                // Already in place: only its close-on-exec flag must go.
                if libc::fcntl(3, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(fd, 3) != 3 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("listening on") {
        line.clear();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "sspd exited before serving: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
    }
    child
}

fn signal(child: &Child, sig: libc::c_int) {
    // SAFETY: kill sends a signal to our own child; no memory is involved.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, sig) }, 0);
}

/// Wait (bounded) for a child to exit.
fn wait_exit(child: &mut Child, secs: u64, what: &str) -> std::process::ExitStatus {
    let end = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if Instant::now() > end {
            let _ = child.kill();
            panic!("{what} did not exit within {secs}s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

const BLOCKS: u64 = 120;
const BLOCK: u64 = 65536;

fn pattern(i: u64) -> u64 {
    i % 250 + 1
}

#[test]
fn qemu_with_reconnect_delay_rides_through_sspd_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let pool = make_pool(dir.path(), &[("vol", "16M")]);
    let log = dir.path().join("sspd.log");
    let sock = dir.path().join("nbd.sock");
    // The manager's socket: it outlives every sspd started on it.
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let fd = listener.as_raw_fd();
    let mut sspd = activated_sspd(&pool, fd, &log);

    // One qemu-io session: write a block, read it back verified, pause; BLOCKS times.
    let mut args = vec![
        "--image-opts".to_string(),
        format!(
            "driver=nbd,server.type=unix,server.path={},export=vol,reconnect-delay=10",
            sock.display()
        ),
    ];
    for i in 0..BLOCKS {
        let (p, off) = (pattern(i), i * BLOCK);
        args.extend(["-c".into(), format!("write -P {p} {off} {BLOCK}")]);
        args.extend(["-c".into(), format!("read -P {p} {off} {BLOCK}")]);
        args.extend(["-c".into(), "sleep 25".into()]);
    }
    let mut qemu = Command::new("qemu-io")
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("qemu-io is needed (scripts/install-deps.sh installs qemu-utils)");
    let (tx, rx) = mpsc::channel::<String>();
    let stdout = qemu.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines() {
            let Ok(l) = l else { break };
            let _ = tx.send(l);
        }
    });
    let mut lines: Vec<String> = Vec::new();
    let wrote = |lines: &mut Vec<String>, at_least: usize| {
        let end = Instant::now() + Duration::from_secs(60);
        while lines.iter().filter(|l| l.starts_with("wrote")).count() < at_least {
            let left = end.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) => lines.push(l),
                Err(_) => panic!("qemu-io stalled: {lines:?}"),
            }
        }
        lines.iter().filter(|l| l.starts_with("wrote")).count()
    };
    // A crash in the middle: kill -9, then a new sspd on the same socket.
    let before_kill = wrote(&mut lines, 20);
    signal(&sspd, libc::SIGKILL);
    wait_exit(&mut sspd, 30, "sspd after SIGKILL");
    sspd = activated_sspd(&pool, fd, &log);
    // An upgrade in the middle: SIGTERM (what systemctl restart sends), a clean exit, a new one.
    let before_term = wrote(&mut lines, before_kill + 20);
    signal(&sspd, libc::SIGTERM);
    assert!(wait_exit(&mut sspd, 30, "sspd after SIGTERM").success());
    sspd = activated_sspd(&pool, fd, &log);
    assert!(
        (before_term as u64) < BLOCKS,
        "the restarts came after qemu-io was done"
    );

    let st = wait_exit(&mut qemu, 120, "qemu-io");
    reader.join().unwrap();
    lines.extend(rx.try_iter());
    let mut err = String::new();
    std::io::Read::read_to_string(&mut qemu.stderr.take().unwrap(), &mut err).unwrap();
    let out = lines.join("\n");
    assert!(st.success(), "qemu-io failed: {out}\n{err}");
    assert!(
        !out.contains("failed") && !err.contains("failed"),
        "I/O errors: {out}\n{err}"
    );
    let count = |p: &str| lines.iter().filter(|l| l.starts_with(p)).count() as u64;
    assert_eq!((count("wrote"), count("read")), (BLOCKS, BLOCKS), "{out}");
    let sspd_log = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        sspd_log
            .matches("session closed for the next server")
            .count(),
        1,
        "{sspd_log}"
    );

    // Every block reads back as written, through a fresh client of the last sspd.
    let mut check = vec![
        "-r".to_string(),
        "--image-opts".into(),
        format!(
            "driver=nbd,server.type=unix,server.path={},export=vol",
            sock.display()
        ),
    ];
    for i in 0..BLOCKS {
        check.extend([
            "-c".into(),
            format!("read -P {} {} {BLOCK}", pattern(i), i * BLOCK),
        ]);
    }
    let out = run(
        "qemu-io",
        &check.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert!(!out.contains("failed"), "{out}");
    assert_eq!(
        out.matches("read 65536/65536").count() as u64,
        BLOCKS,
        "{out}"
    );
    signal(&sspd, libc::SIGTERM);
    assert!(wait_exit(&mut sspd, 30, "sspd").success());
    // sspd did not remove a socket it did not create.
    assert!(sock.exists());
    drop(listener);
    assert_pool_check(&pool);
}

#[test]
fn systemd_socket_activate_starts_sspd_on_the_first_connection() {
    let dir = tempfile::tempdir().unwrap();
    let pool = make_pool(dir.path(), &[("vol", "4M")]);
    let sock = dir.path().join("nbd.sock");
    let mut act = Command::new("systemd-socket-activate")
        .arg("-l")
        .arg(&sock)
        .args(["-E", "SSP_LOG=info", env!("CARGO_BIN_EXE_sspd"), "--pool"])
        .arg(&pool)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("systemd-socket-activate is needed (Debian package systemd)");
    wait_for(20, "the activator's socket", || sock.exists());
    let uri = format!("nbd+unix:///vol?socket={}", sock.display());
    assert_eq!(run("nbdinfo", &["--size", &uri]).trim(), "4194304");
    signal(&act, libc::SIGTERM);
    let st = wait_exit(&mut act, 30, "sspd started by systemd-socket-activate");
    assert!(st.success(), "{st:?}");
    let mut err = String::new();
    std::io::Read::read_to_string(&mut act.stderr.take().unwrap(), &mut err).unwrap();
    assert!(err.contains("pool closed cleanly"), "{err}");
    assert_pool_check(&pool);
}

#[test]
fn inherited_descriptor_that_is_not_a_listening_socket_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pool = make_pool(dir.path(), &[]);
    let file = std::fs::File::create(dir.path().join("plain")).unwrap();
    let fd = file.as_raw_fd();
    let mut cmd = Command::new("/bin/sh");
    cmd.args([
        "-c",
        r#"LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" "$@""#,
        env!("CARGO_BIN_EXE_sspd"),
        "--pool",
        pool.to_str().unwrap(),
    ]);
    // SAFETY: only dup2 runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(fd, 3) != 3 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let o = cmd.output().unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("socket activation") && err.contains("descriptor 3"),
        "{err}"
    );
}

/// A datagram socket standing in for systemd's notification socket.
fn notify_socket(dir: &Path) -> (std::os::unix::net::UnixDatagram, PathBuf) {
    let p = dir.join("notify.sock");
    let s = std::os::unix::net::UnixDatagram::bind(&p).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    (s, p)
}

fn recv(s: &std::os::unix::net::UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = s.recv(&mut buf).expect("a notification within 60s");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn ready_and_stopping_are_notified_and_the_pidfile_lives_while_serving() {
    let dir = tempfile::tempdir().unwrap();
    let pool = make_pool(dir.path(), &[("vol", "4M")]);
    let (ns, ns_path) = notify_socket(dir.path());
    let pidfile = dir.path().join("run").join("sspd.pid");
    std::fs::create_dir(pidfile.parent().unwrap()).unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_sspd"))
        .args(["--pool", pool.to_str().unwrap()])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--pidfile")
        .arg(&pidfile)
        .env("NOTIFY_SOCKET", &ns_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ready = recv(&ns);
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    // Ready means serving, with the pid file in place.
    assert_eq!(
        std::fs::read_to_string(&pidfile).unwrap(),
        format!("{}\n", child.id())
    );
    let uri = format!("nbd://127.0.0.1:{port}/vol");
    assert_eq!(run("nbdinfo", &["--size", &uri]).trim(), "4194304");
    signal(&child, libc::SIGTERM);
    let stopping = recv(&ns);
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping:?}");
    assert!(wait_exit(&mut child, 30, "sspd").success());
    assert!(!pidfile.exists(), "the pid file outlived sspd");
}

#[test]
fn exit_with_parent_stops_sspd_cleanly_when_its_parent_dies() {
    let dir = tempfile::tempdir().unwrap();
    let pool = make_pool(dir.path(), &[("vol", "4M")]);
    let log = dir.path().join("sspd.log");
    // The parent: a shell that starts sspd in the background, prints its pid, then waits.
    let mut parent = Command::new("/bin/sh")
        .args([
            "-c",
            r#""$0" "$@" 2>"$LOG" & echo "pid $!"; exec sleep 120"#,
            env!("CARGO_BIN_EXE_sspd"),
            "--pool",
            pool.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--exit-with-parent",
        ])
        .env("LOG", &log)
        .env("SSP_LOG", "info")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(parent.stdout.take().unwrap());
    let mut pid = None;
    let mut line = String::new();
    while !line.contains("listening on") {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "sspd did not start");
        if let Some(p) = line.trim().strip_prefix("pid ") {
            pid = p.parse::<i32>().ok();
        }
    }
    let pid = pid.expect("the shell printed sspd's pid");
    parent.kill().unwrap();
    parent.wait().unwrap();
    // sspd (now a child of init) exits on its own, cleanly.
    wait_for(30, "sspd to exit with its parent", || {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z'))
        })
    });
    wait_for(10, "sspd's clean shutdown in its log", || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("pool closed cleanly"))
    });
    assert_pool_check(&pool);
}

#[test]
fn install_script_installs_units_systemd_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("usr");
    std::fs::create_dir_all(prefix.join("bin")).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_sspd"), prefix.join("bin/sspd")).unwrap();
    let root = dir.path().join("root");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/install-systemd.sh");
    let o = Command::new(script)
        .env("PREFIX", &prefix)
        .env("DESTDIR", &root)
        .env("UNITDIR", "/etc/systemd/system")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let units = root.join("etc/systemd/system");
    let service = std::fs::read_to_string(units.join("sspd@.service")).unwrap();
    for want in [
        "Type=notify",
        "Restart=on-failure",
        "LimitNOFILE=65536",
        "--pool /var/lib/ssp/%i",
    ] {
        assert!(service.contains(want), "{want} missing:\n{service}");
    }
    assert!(service.contains(&format!("{}/bin/sspd", prefix.display())));
    // systemd's own checker on an instance of each (it also checks ExecStart is executable).
    for u in ["service", "socket"] {
        std::fs::copy(
            units.join(format!("sspd@.{u}")),
            units.join(format!("sspd@tank.{u}")),
        )
        .unwrap();
    }
    let o = Command::new("systemd-analyze")
        .args([
            "verify",
            "--man=no",
            "./sspd@tank.socket",
            "./sspd@tank.service",
        ])
        .current_dir(&units)
        .output()
        .expect("systemd-analyze is needed (Debian package systemd)");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && err.trim().is_empty(), "{err}");
}
