//! A PV file deleted, truncated or made read-only (chmod, or its ext4 file system turned
//! read-only by the kernel after an error) while sspd serves the pool. A mirrored pool goes DEGRADED and keeps serving (and
//! takes a PV that is writable again back); a single-copy pool fails requests with EIO and
//! names the PV; sspd never crashes.

mod common;
use common::server::*;
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn json(pool: &Path, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.push("--json");
    let out = sspctl(pool, &a);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
}

fn state(pool: &Path) -> String {
    json(pool, &["pool", "status"])["mirror_state"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Wait (bounded, 10 s) until `state` of the pool is `want`.
fn wait_state(pool: &Path, want: &str) -> Value {
    for _ in 0..100 {
        let st = json(pool, &["pool", "status"]);
        if st["mirror_state"] == want {
            return st;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("mirror state is {} after 10 s, not {want}", state(pool));
}

/// qemu-io commands against `uri`: (success, output).
fn qemu_io(uri: &str, cmds: &[&str]) -> (bool, String) {
    let mut c = Command::new("qemu-io");
    c.args(["-f", "raw"]);
    for cmd in cmds {
        c.args(["-c", cmd]);
    }
    let o = c.arg(uri).output().expect("qemu-io is needed");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.success() && !text.contains("failed"), text)
}

fn io_ok(uri: &str, cmds: &[&str]) {
    let (ok, text) = qemu_io(uri, cmds);
    assert!(ok, "{cmds:?}: {text}");
}

fn alive(s: &mut Server) {
    assert!(
        s.child.try_wait().unwrap().is_none(),
        "sspd exited: {:?}",
        s.child.try_wait()
    );
}

enum Fault {
    Delete,
    Truncate,
    Chmod,
    RemountRo,
}

/// An ext4 file system on a loop device mounted with `errors=remount-ro`; unmounted on drop.
/// [`Ext4::fail`] makes the kernel remount it read-only as it does after a metadata error (a
/// running sspd holds the PV open for writing, so a plain `mount -o remount,ro` is refused).
struct Ext4 {
    _dir: tempfile::TempDir,
    mnt: PathBuf,
}

impl Ext4 {
    fn new() -> Option<Ext4> {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("fs.img");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        std::fs::File::create(&img)
            .unwrap()
            .set_len(256 << 20)
            .unwrap();
        let ok = |c: &mut Command| c.status().is_ok_and(|s| s.success());
        if !ok(Command::new("mkfs.ext4").arg("-q").arg(&img))
            || !ok(Command::new("mount")
                .args(["-o", "loop,errors=remount-ro"])
                .arg(&img)
                .arg(&mnt))
        {
            eprintln!("SKIP: cannot make and loop-mount an ext4 image (root and mkfs.ext4 needed)");
            return None;
        }
        Some(Ext4 { _dir: dir, mnt })
    }

    fn fail(&self) {
        let src = run("findmnt", &["-no", "SOURCE", self.mnt.to_str().unwrap()]);
        let dev = Path::new(src.trim()).file_name().unwrap().to_owned();
        let knob = Path::new("/sys/fs/ext4").join(dev).join("trigger_fs_error");
        std::fs::write(&knob, "1").unwrap();
    }
}

impl Drop for Ext4 {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
    }
}

/// A mirrored pool (fg2 on a second PV file) with data on both sides, then `fault` on the
/// second PV while sspd runs.
fn mirrored_fault(fault: Fault) {
    let mut s = Server::start(&[("vm1", "32M")]);
    let root = s.pool.parent().unwrap().to_owned();
    let ext4 = match fault {
        Fault::RemountRo => match Ext4::new() {
            Some(e) => Some(e),
            None => return,
        },
        _ => None,
    };
    let pv1 = match ext4 {
        Some(ref e) => e.mnt.join("pv1.img"),
        None => root.join("pv1.img"),
    };
    io_ok(&s.uri("vm1"), &["write -P 0x5a 0 4M"]);
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
    wait_state(&s.pool, "SYNCED");

    let (word, comes_back) = match fault {
        Fault::Delete => {
            std::fs::remove_file(&pv1).unwrap();
            ("deleted", false)
        }
        Fault::Truncate => {
            let f = std::fs::OpenOptions::new().write(true).open(&pv1).unwrap();
            f.set_len(64 << 20).unwrap();
            ("truncated", false)
        }
        Fault::Chmod => {
            std::fs::set_permissions(&pv1, std::fs::Permissions::from_mode(0o444)).unwrap();
            ("read-only", true)
        }
        Fault::RemountRo => {
            ext4.as_ref().unwrap().fail();
            ("read-only", false)
        }
    };
    let st = wait_state(&s.pool, "DEGRADED");
    let reason = st["mirror_reason"].as_str().unwrap().to_lowercase();
    assert!(
        reason.contains("pv1.img") && reason.contains(word),
        "{reason}"
    );
    let pvs = json(&s.pool, &["pv", "list"]);
    assert_eq!(pvs[1]["state"], "FAILED", "{pvs}");
    let groups = sspctl(&s.pool, &["failgrp", "list"]);
    assert!(groups.contains("FAILED"), "{groups}");

    // The pool keeps serving from the other group.
    io_ok(
        &s.uri("vm1"),
        &["read -P 0x5a 0 4M", "write -P 0x66 8M 1M", "flush"],
    );
    io_ok(&s.uri("vm1"), &["read -P 0x66 8M 1M", "read -P 0x5a 0 4M"]);
    alive(&mut s);

    if comes_back {
        // Writable again: the PV rejoins and is resynced.
        std::fs::set_permissions(&pv1, std::fs::Permissions::from_mode(0o644)).unwrap();
        wait_state(&s.pool, "SYNCED");
        io_ok(&s.uri("vm1"), &["read -P 0x66 8M 1M"]);
        let status = s.stop();
        assert!(status.success(), "{status:?}");
        return;
    } else {
        // It stays failed: the file the pool opened is gone, cut short or cannot be written.
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(state(&s.pool), "DEGRADED");
        alive(&mut s);
    }
    // sspd goes before its file system does.
    drop(s);
    drop(ext4);
}

#[test]
fn mirrored_pv_file_deleted_degrades() {
    mirrored_fault(Fault::Delete);
}

#[test]
fn mirrored_pv_file_truncated_degrades() {
    mirrored_fault(Fault::Truncate);
}

#[test]
fn mirrored_pv_file_chmod_read_only_degrades_and_rejoins() {
    mirrored_fault(Fault::Chmod);
}

#[test]
fn mirrored_pv_fs_turned_read_only_degrades() {
    mirrored_fault(Fault::RemountRo);
}

#[test]
fn single_copy_pv_truncated_fails_requests_with_eio_naming_the_pv() {
    let mut s = Server::start(&[("vm1", "32M")]);
    io_ok(&s.uri("vm1"), &["write -P 0x5a 0 4M", "flush"]);
    let pv0 = s.pool.parent().unwrap().join("pv0.img");
    let f = std::fs::OpenOptions::new().write(true).open(&pv0).unwrap();
    f.set_len(32 << 20).unwrap();
    drop(f);

    let mut failed = Value::Null;
    for _ in 0..100 {
        let pvs = json(&s.pool, &["pv", "list"]);
        if pvs[0]["state"] == "FAILED" {
            failed = pvs;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let reason = failed[0]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("pv0.img") && reason.contains("truncated"),
        "the PV was not failed: {failed}"
    );

    // Requests fail cleanly with EIO; sspd and its admin interface stay up.
    let (ok, text) = qemu_io(&s.uri("vm1"), &["read 0 4M"]);
    assert!(!ok && text.contains("Input/output error"), "{text}");
    let (ok, text) = qemu_io(&s.uri("vm1"), &["write -P 0x11 16M 1M", "flush"]);
    assert!(!ok && text.contains("Input/output error"), "{text}");
    let st = json(&s.pool, &["pool", "status"]);
    assert!(st["name"].is_string(), "{st}");
    alive(&mut s);
}
