//! `sspctl send` / `sspctl receive` between pools, through the real binaries: round trips
//! byte for byte (full, incrementals, a clone from its image's snapshot, onward to a third
//! pool), online against sspd and offline, resume after kill -9 of either side, and streams
//! that are corrupt, truncated or from the wrong base refused with nothing visible.

mod common;
use common::server::*;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};

fn ctl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sspctl"))
}

/// `sspctl --pool SRC send ARGS | sspctl --pool DST receive RARGS`; the receive's output and
/// whether both succeeded.
fn pipe(src: &Path, send: &[&str], dst: &Path, recv: &[&str]) -> (bool, String) {
    let mut s = ctl()
        .arg("--pool")
        .arg(src)
        .arg("send")
        .args(send)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let r = ctl()
        .arg("--pool")
        .arg(dst)
        .arg("receive")
        .args(recv)
        .stdin(s.stdout.take().unwrap())
        .output()
        .unwrap();
    let so = s.wait_with_output().unwrap();
    let text = format!(
        "{}{}{}",
        String::from_utf8_lossy(&r.stdout),
        String::from_utf8_lossy(&r.stderr),
        String::from_utf8_lossy(&so.stderr)
    );
    (r.status.success() && so.status.success(), text)
}

fn must_pipe(src: &Path, send: &[&str], dst: &Path, recv: &[&str]) -> String {
    let (ok, out) = pipe(src, send, dst, recv);
    assert!(ok, "send {send:?} | receive {recv:?}: {out}");
    out
}

fn qemu_io(uri: &str, cmd: &str) {
    run("qemu-io", &["-f", "raw", "-c", cmd, uri]);
}

fn compare(a: &str, b: &str) {
    run("qemu-img", &["compare", "-f", "raw", "-F", "raw", a, b]);
}

/// The volume's bytes, read offline (`lu export`).
fn export(pool: &Path, name: &str) -> Vec<u8> {
    let f = pool
        .parent()
        .unwrap()
        .join(format!("export-{}.raw", name.replace('@', "-")));
    sspctl(pool, &["lu", "export", name, f.to_str().unwrap()]);
    let b = std::fs::read(&f).unwrap();
    std::fs::remove_file(&f).unwrap();
    b
}

/// The bytes of `export` read over NBD from a running sspd (through a scratch file beside the
/// pool).
fn read_nbd(s: &Server, export: &str) -> Vec<u8> {
    let f = s
        .pool
        .parent()
        .unwrap()
        .join(format!("nbd-{}.raw", export.replace('@', "-")));
    run(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "raw",
            &s.uri(export),
            f.to_str().unwrap(),
        ],
    );
    let b = std::fs::read(&f).unwrap();
    std::fs::remove_file(&f).unwrap();
    b
}

fn names(pool: &Path) -> Vec<String> {
    let mut v = Vec::new();
    for verb in [["lu", "ls"], ["snapshot", "ls"]] {
        let j = sspctl_json(pool, &verb);
        let arr = if j.is_array() {
            j.as_array().unwrap().clone()
        } else {
            j["snapshots"].as_array().cloned().unwrap_or_default()
        };
        for x in arr {
            v.push(x["name"].as_str().unwrap().to_owned());
        }
    }
    v.sort();
    v
}

fn udid(pool: &Path, name: &str) -> String {
    sspctl_json(pool, &["file", "stat", name])["udid"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn new_pool(dir: &Path, tag: &str) -> std::path::PathBuf {
    let d = dir.join(tag);
    std::fs::create_dir_all(&d).unwrap();
    make_pool(&d, &[])
}

#[test]
fn full_then_three_incrementals_between_two_sspd_and_onward_to_a_third_pool() {
    let (a, _) = serve_filled(&[("vm1", "24M")], "vm1", 6 << 20, &[]);
    let bdir = tempfile::tempdir().unwrap();
    let bpool = make_pool(bdir.path(), &[]);
    let b = Server::serve(bpool.clone(), bdir);
    let cdir = tempfile::tempdir().unwrap();
    let cpool = new_pool(cdir.path(), "c");

    sspctl(&a.pool, &["snapshot", "create", "vm1@s0"]);
    let out = must_pipe(&a.pool, &["vm1@s0"], &b.pool, &["vm1"]);
    assert!(out.contains("received vm1@s0 into LU vm1"), "{out}");
    compare(&a.uri("vm1@s0"), &b.uri("vm1@s0"));
    compare(&a.uri("vm1@s0"), &b.uri("vm1"));
    // The received snapshot keeps the sender's identity.
    assert_eq!(udid(&a.pool, "vm1@s0"), udid(&b.pool, "vm1@s0"));
    // Onward: B's copy goes to a third (offline) pool.
    must_pipe(&b.pool, &["vm1@s0"], &cpool, &["vm1"]);

    for i in 1..=3u32 {
        let off = u64::from(i) * (3 << 20) + 4096 * u64::from(i);
        qemu_io(&a.uri("vm1"), &format!("write -P {} {off} 300k", 0x40 + i));
        // A zeroed range and a discarded one travel too.
        qemu_io(&a.uri("vm1"), &format!("write -z {} 64k", (i as u64) << 20));
        qemu_io(
            &a.uri("vm1"),
            &format!("discard {} 64k", (2 + i as u64) << 20),
        );
        if i == 2 {
            // The LU grows between snapshots: the stream carries the new size.
            sspctl(&a.pool, &["lu", "resize", "vm1", "--size", "28M"]);
            qemu_io(&a.uri("vm1"), "write -P 0x77 26M 128k");
        }
        let (prev, snap) = (format!("vm1@s{}", i - 1), format!("vm1@s{i}"));
        sspctl(&a.pool, &["snapshot", "create", &snap]);
        let out = must_pipe(&a.pool, &[&snap, "--from", &prev], &b.pool, &["vm1"]);
        assert!(out.contains(&format!("changes since {prev}")), "{out}");
        compare(&a.uri(&snap), &b.uri(&snap));
        compare(&a.uri(&snap), &b.uri("vm1"));
        compare(&a.uri(&prev), &b.uri(&prev));
        assert_eq!(udid(&a.pool, &snap), udid(&b.pool, &snap));
        // An incremental's stream holds only the changes (under 1 MiB of data here).
        let f = b.pool.parent().unwrap().join("inc.ssp");
        sspctl(
            &b.pool,
            &["send", &snap, "--from", &prev, "-f", f.to_str().unwrap()],
        );
        let len = std::fs::metadata(&f).unwrap().len();
        // The global -o names the stream's file too; --json reports what was sent.
        let g = b.pool.parent().unwrap().join("inc-o.ssp");
        let j = sspctl_json(
            &b.pool,
            &["send", &snap, "--from", &prev, "-o", g.to_str().unwrap()],
        );
        assert_eq!(j["base"], prev.as_str(), "{j}");
        assert_eq!(j["stream_bytes"].as_u64(), Some(len), "{j}");
        assert_eq!(std::fs::metadata(&g).unwrap().len(), len);
        assert!(len < 1 << 20, "incremental stream of {len} bytes");
        // B sends onward to C: the chain's bases are verified by identity.
        let out = ctl()
            .arg("--pool")
            .arg(&cpool)
            .args(["receive", "vm1", "-i", f.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let want = read_nbd(&a, "vm1@s3");
    assert_eq!(export(&cpool, "vm1@s3"), want);
    assert_eq!(export(&cpool, "vm1"), want);
    assert_eq!(
        names(&cpool),
        ["vm1", "vm1@s0", "vm1@s1", "vm1@s2", "vm1@s3"]
    );
    assert_pool_check(&b.pool);
    assert_pool_check(&cpool);
}

#[test]
fn a_clone_received_incrementally_from_its_image_snapshot_keeps_the_sharing() {
    let (a, _) = serve_filled(&[("base", "16M")], "base", 12 << 20, &[]);
    sspctl(&a.pool, &["image", "capture", "base", "golden"]);
    sspctl(&a.pool, &["snapshot", "create", "golden@v1"]);
    sspctl(&a.pool, &["clone", "golden@v1", "web1"]);
    qemu_io(&a.uri("web1"), "write -P 0x61 1M 8k");
    qemu_io(&a.uri("web1"), "write -P 0x62 9M 4k");
    sspctl(&a.pool, &["snapshot", "create", "web1@s1"]);

    let bdir = tempfile::tempdir().unwrap();
    let bpool = make_pool(bdir.path(), &[]);
    must_pipe(&a.pool, &["golden@v1"], &bpool, &["golden"]);
    let used_before = sspctl_json(&bpool, &["pool", "status"])["used_bytes"]
        .as_u64()
        .unwrap();
    let out = must_pipe(
        &a.pool,
        &["web1@s1", "--from", "golden@v1"],
        &bpool,
        &["web1"],
    );
    assert!(out.contains("12288 bytes of data"), "{out}");
    let used_after = sspctl_json(&bpool, &["pool", "status"])["used_bytes"]
        .as_u64()
        .unwrap();
    // 12 KiB changed: the receiver's clone shares the rest with golden@v1.
    assert!(
        used_after - used_before < 2 << 20,
        "receiving the clone used {} bytes",
        used_after - used_before
    );
    let b = Server::serve(bpool.clone(), bdir);
    compare(&a.uri("web1@s1"), &b.uri("web1@s1"));
    compare(&a.uri("web1@s1"), &b.uri("web1"));
    // Without the snapshot, the received clone owns exactly the changed blocks.
    sspctl(&b.pool, &["snapshot", "rm", "web1@s1"]);
    let st = sspctl_json(&b.pool, &["file", "stat", "web1"]);
    assert_eq!(st["owned_blocks"], 3, "{st}");
    assert_eq!(st["data_blocks"], 3072, "{st}");
}

/// The stream of `send ARGS` as bytes (sent offline or online, as the pool is).
fn stream_of(pool: &Path, args: &[&str]) -> Vec<u8> {
    let o = ctl()
        .arg("--pool")
        .arg(pool)
        .arg("send")
        .args(args)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    o.stdout
}

fn receive_bytes(pool: &Path, args: &[&str], bytes: &[u8]) -> (bool, String) {
    let mut c = ctl()
        .arg("--pool")
        .arg(pool)
        .arg("receive")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut i = c.stdin.take().unwrap();
    let _ = i.write_all(bytes);
    drop(i);
    let o = c.wait_with_output().unwrap();
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

fn token_of(pool: &Path, name: &str) -> String {
    sspctl(pool, &["receive", "--token", name])
        .trim()
        .to_owned()
}

#[test]
fn corrupt_truncated_and_wrong_base_streams_are_refused_with_nothing_visible() {
    let dir = tempfile::tempdir().unwrap();
    let a = make_pool(&dir.path().join("a").tap_mkdir(), &[("vm1", "16M")]);
    let data = dir.path().join("d.raw");
    random_file(&data, 6 << 20);
    sspctl(&a, &["lu", "import", "vm1", data.to_str().unwrap()]);
    sspctl(&a, &["snapshot", "create", "vm1@s1"]);
    sspctl(
        &a,
        &[
            "lu",
            "import",
            "vm1",
            data.to_str().unwrap(),
            "--offset",
            "8M",
        ],
    );
    sspctl(&a, &["snapshot", "create", "vm1@s2"]);
    let full = stream_of(&a, &["vm1@s1"]);
    let inc = stream_of(&a, &["vm1@s2", "--from", "vm1@s1"]);

    // B is served by sspd (online receive); C is offline.
    let bdir = tempfile::tempdir().unwrap();
    let bpool = make_pool(bdir.path(), &[]);
    let b = Server::serve(bpool, bdir);
    let c = new_pool(dir.path(), "c");
    for pool in [&b.pool, &c] {
        // A flipped byte in a data payload.
        let mut bad = full.clone();
        let at = full.len() / 2;
        bad[at] ^= 0x10;
        let (ok, out) = receive_bytes(pool, &["vm1"], &bad);
        assert!(!ok && out.contains("checksum mismatch"), "{out}");
        assert!(out.contains("resume token"), "{out}");
        assert!(names(pool).is_empty(), "{:?}", names(pool));
        sspctl(pool, &["receive", "--abort", "vm1"]);
        // Truncated: refused, nothing visible; then discarded.
        let (ok, out) = receive_bytes(pool, &["vm1"], &full[..full.len() - 100]);
        assert!(!ok && out.contains("truncated"), "{out}");
        assert!(names(pool).is_empty());
        sspctl(pool, &["receive", "--abort", "vm1"]);
        assert!(sspctl_fails(pool, &["receive", "--token", "vm1"]).contains("no partial receive"));
        // A flipped header byte: not even started.
        let mut bad = full.clone();
        bad[40] ^= 1;
        let (ok, out) = receive_bytes(pool, &["vm1"], &bad);
        assert!(!ok && out.contains("checksum mismatch"), "{out}");
        assert!(names(pool).is_empty());

        // The real stream, then a corrupt incremental: vm1 and vm1@s1 read as before.
        let (ok, out) = receive_bytes(pool, &["vm1"], &full);
        assert!(ok, "{out}");
        let before = export(if pool == &c { &c } else { &a }, "vm1@s1");
        let mut bad = inc.clone();
        let at = inc.len() - 5000;
        bad[at] ^= 0x01;
        let (ok, out) = receive_bytes(pool, &["vm1"], &bad);
        assert!(!ok && out.contains("checksum mismatch"), "{out}");
        assert_eq!(names(pool), ["vm1", "vm1@s1"]);
        if pool == &c {
            assert_eq!(export(&c, "vm1"), before);
            assert_eq!(export(&c, "vm1@s1"), before);
        } else {
            assert_eq!(read_nbd(&b, "vm1"), before);
        }
        // A fresh receive is refused while the partial one is kept.
        let (ok, out) = receive_bytes(pool, &["vm1"], &inc);
        assert!(!ok && out.contains("partial receive"), "{out}");
        sspctl(pool, &["receive", "--abort", "vm1"]);
        let (ok, out) = receive_bytes(pool, &["vm1"], &inc);
        assert!(ok, "{out}");
        assert_eq!(names(pool), ["vm1", "vm1@s1", "vm1@s2"]);
    }
    assert_eq!(export(&c, "vm1"), export(&a, "vm1@s2"));

    // Base mismatch: C's vm1@s1 replaced by a snapshot of the same name but other identity.
    sspctl(&c, &["snapshot", "rm", "vm1@s2"]);
    sspctl(&c, &["snapshot", "rm", "vm1@s1"]);
    sspctl(&c, &["snapshot", "create", "vm1@s1"]);
    let (ok, out) = receive_bytes(&c, &["vm1"], &inc);
    assert!(!ok && out.contains("base mismatch"), "{out}");
    assert!(out.contains("different snapshot"), "{out}");
    assert_eq!(names(&c), ["vm1", "vm1@s1"]);
    // An incremental into a new name needs its base somewhere in the pool.
    let e = dir.path().join("e");
    std::fs::create_dir_all(&e).unwrap();
    let e = make_pool(&e, &[]);
    let (ok, out) = receive_bytes(&e, &["vm9"], &inc);
    assert!(!ok && out.contains("base mismatch"), "{out}");
    assert!(names(&e).is_empty());
    assert_pool_check(&c);
}

trait TapMkdir {
    fn tap_mkdir(self) -> Self;
}

impl TapMkdir for std::path::PathBuf {
    fn tap_mkdir(self) -> Self {
        std::fs::create_dir_all(&self).unwrap();
        self
    }
}

#[test]
fn resume_after_kill_9_of_the_sender_and_of_the_receiver() {
    let dir = tempfile::tempdir().unwrap();
    let a = make_pool(&dir.path().join("a").tap_mkdir(), &[("vm1", "40M")]);
    let data = dir.path().join("d.raw");
    random_file(&data, 30 << 20);
    sspctl(&a, &["lu", "import", "vm1", data.to_str().unwrap()]);
    sspctl(&a, &["snapshot", "create", "vm1@s1"]);
    let want = export(&a, "vm1@s1");
    let full_len = stream_of(&a, &["vm1@s1"]).len();

    // Sender killed mid-stream (online receiver): the receive keeps what arrived.
    let bdir = tempfile::tempdir().unwrap();
    let bpool = make_pool(bdir.path(), &[]);
    let b = Server::serve(bpool, bdir);
    let mut s = ctl()
        .arg("--pool")
        .arg(&a)
        .args(["send", "vm1@s1"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut part = vec![0u8; 12 << 20];
    s.stdout.as_mut().unwrap().read_exact(&mut part).unwrap();
    s.kill().unwrap();
    s.wait().unwrap();
    let (ok, out) = receive_bytes(&b.pool, &["vm1"], &part);
    assert!(!ok && out.contains("truncated"), "{out}");
    assert!(names(&b.pool).is_empty());
    let token = token_of(&b.pool, "vm1");
    assert!(out.contains(&token), "{out}");
    let rest = stream_of(&a, &["-t", &token]);
    assert!(
        rest.len() < full_len - (8 << 20),
        "resumed stream of {} bytes, the full one has {full_len}",
        rest.len()
    );
    let (ok, out) = receive_bytes(&b.pool, &["--resume", "vm1"], &rest);
    assert!(ok, "{out}");
    assert_eq!(read_nbd(&b, "vm1@s1"), want);
    assert!(sspctl_fails(&b.pool, &["receive", "--token", "vm1"]).contains("no partial receive"));

    // Receiver killed (offline: the process applying the stream dies) after a durable
    // progress point; then resumed with the token it stored.
    let c = new_pool(dir.path(), "c");
    let mut r = ctl()
        .arg("--pool")
        .arg(&c)
        .args(["receive", "vm1"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let full = stream_of(&a, &["vm1@s1"]);
    let mut stdin = r.stdin.take().unwrap();
    let state = c.join("receive/vm1.json");
    let durable = || {
        std::fs::read_to_string(&state)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .is_some_and(|v| v["offset"].as_u64().unwrap_or(0) > 0)
    };
    // Fed slowly (the receiver makes progress durable about once a second), at most 28 MiB.
    for chunk in full[..28 << 20].chunks(1 << 20) {
        stdin.write_all(chunk).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(150));
        if durable() {
            break;
        }
    }
    assert!(durable(), "no durable progress point after 28 MiB");
    r.kill().unwrap();
    r.wait().unwrap();
    drop(stdin);
    assert!(names(&c).is_empty());
    let token = token_of(&c, "vm1");
    let out = must_pipe(&a, &["-t", &token], &c, &["--resume", "vm1"]);
    assert!(out.contains("received vm1@s1 into LU vm1"), "{out}");
    assert_eq!(export(&c, "vm1@s1"), want);
    assert_eq!(export(&c, "vm1"), want);
    assert_pool_check(&c);
    assert_pool_check(&b.pool);
}
