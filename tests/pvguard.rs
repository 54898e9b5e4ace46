//! PVs are guarded against a second user, through the real binaries: `pool create` (and
//! `failgrp create`, `pv add`, `pv replace`) refuses a PV that holds another pool unless `--force`; a copied
//! pool directory cannot open the PVs while the original is open (sspd or sspctl, either way
//! round); read-only verbs leave every PV byte as it was, even with a journal tail to replay;
//! sspd binds its listeners before it touches the pool.

mod common;
use common::server::{nbdsh, sspctl, sspctl_fails, Server};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A pool named `name` in `dir/pool` on a new 64 MiB PV `dir/pv0.img`, with `lus`.
fn pool(dir: &Path, name: &str, lus: &[&str]) -> (PathBuf, PathBuf) {
    let pool = dir.join("pool");
    let pv = dir.join("pv0.img");
    let spec = format!("{}:64M", pv.display());
    sspctl(
        &pool,
        &[
            "pool",
            "create",
            "--name",
            name,
            "--pv",
            &spec,
            "--journal-mb",
            "1",
        ],
    );
    for lu in lus {
        sspctl(&pool, &["lu", "create", lu, "--size", "16M"]);
    }
    (pool, pv)
}

fn pool_id(pool: &Path) -> String {
    let st: serde_json::Value =
        serde_json::from_str(&sspctl(pool, &["pool", "status", "--json"])).unwrap();
    st["pool_id"].as_str().unwrap().to_owned()
}

/// A copy of a pool directory (its configuration names the same PVs).
fn copy_dir(pool: &Path, to: &Path) -> PathBuf {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(pool).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
    to.to_owned()
}

/// sspd on `pool` with `args` that must fail: (exit code, stderr). Bounded wait.
fn sspd_fails(pool: &Path, args: &[&str]) -> (i32, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sspd"))
        .arg("--pool")
        .arg(pool)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("sspd {args:?} did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let o = child.wait_with_output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn pool_create_refuses_a_pv_of_another_pool_unless_forced() {
    let t = tempfile::tempdir().unwrap();
    let (a, pv) = pool(t.path(), "alpha", &["vm"]);
    let id = pool_id(&a);
    let before = std::fs::read(&pv).unwrap();
    let b = t.path().join("b");
    let pvs = pv.display().to_string();
    let err = sspctl_fails(&b, &["pool", "create", "--name", "beta", "--pv", &pvs]);
    for want in [
        pvs.as_str(),
        "pool alpha",
        id.as_str(),
        "last written by host",
        "incarnation",
        "--force",
    ] {
        assert!(err.contains(want), "{err:?} lacks {want:?}");
    }
    assert!(std::fs::read(&pv).unwrap() == before, "the refusal wrote");
    assert!(sspctl(&a, &["lu", "list"]).contains("vm"));

    // While sspd serves alpha, even --force cannot take its PV.
    let srv = Server::serve(a.clone(), tempfile::tempdir().unwrap());
    let err = sspctl_fails(
        &b,
        &["pool", "create", "--name", "beta", "--force", "--pv", &pvs],
    );
    let holder = format!("process {} (sspd)", srv.child.id());
    assert!(
        err.contains("in use") && err.contains(&holder) && err.contains("pool alpha"),
        "{err:?}"
    );
    srv.stop();

    // --force overwrites it: the PV now belongs to beta.
    let b = t.path().join("b2");
    sspctl(
        &b,
        &["pool", "create", "--name", "beta", "--force", "--pv", &pvs],
    );
    assert!(sspctl(&b, &["pool", "status"]).contains("beta"));
    assert_ne!(pool_id(&b), id);
}

#[test]
fn failgrp_create_and_pv_add_refuse_a_pv_of_another_pool() {
    let t = tempfile::tempdir().unwrap();
    let (a, apv) = pool(&t.path().join("a"), "alpha", &["vm"]);
    let apvs = apv.display().to_string();
    let (c, cpv) = pool(&t.path().join("c"), "gamma", &[]);
    let gamma = pool_id(&c);
    let cpvs = cpv.display().to_string();
    let before = std::fs::read(&cpv).unwrap();
    let fresh = t.path().join("fresh.img");
    let fresh_spec = format!("{}:64M", fresh.display());
    for args in [
        vec!["failgrp", "create", "fg2", "--pv", &cpvs],
        // A new file made for the same verb is removed again on the refusal.
        vec!["pv", "add", "--fg", "Default", &fresh_spec, &cpvs],
        vec!["pv", "replace", &apvs, &cpvs],
    ] {
        let err = sspctl_fails(&a, &args);
        assert!(
            err.contains("pool gamma") && err.contains(&gamma) && err.contains("--force"),
            "{args:?}: {err:?}"
        );
    }
    assert!(std::fs::read(&cpv).unwrap() == before, "a refusal wrote");
    assert!(!fresh.exists(), "a refused pv add left its new file behind");
    assert_eq!(sspctl(&a, &["pv", "list"]).lines().count(), 2);
    // Forced: gamma's PV joins alpha.
    sspctl(&a, &["pv", "add", "--fg", "Default", "--force", &cpvs]);
    assert_eq!(sspctl(&a, &["pv", "list"]).lines().count(), 3);
    assert!(sspctl(&a, &["check"]).contains("OK"));
}

#[test]
fn a_copied_pool_directory_cannot_open_the_pvs_twice() {
    let t = tempfile::tempdir().unwrap();
    let (a, pv) = pool(t.path(), "alpha", &["vm"]);
    let copy = copy_dir(&a, &t.path().join("copy"));
    let srv = Server::serve(a.clone(), tempfile::tempdir().unwrap());
    let pvs = pv.display().to_string();
    let holder = format!("process {} (sspd)", srv.child.id());

    // Offline sspctl on the copy: refused, naming the PV, the holder and the pool.
    let before = std::fs::read(&pv).unwrap();
    let err = sspctl_fails(&copy, &["lu", "create", "x", "--size", "1M"]);
    for want in [pvs.as_str(), "in use", holder.as_str(), "pool alpha"] {
        assert!(err.contains(want), "{err:?} lacks {want:?}");
    }
    // A second sspd on the copy: refused too.
    let (code, err) = sspd_fails(&copy, &["--listen", "127.0.0.1:0"]);
    assert_ne!(code, 0);
    assert!(err.contains("in use") && err.contains(&holder), "{err:?}");
    assert!(
        std::fs::read(&pv).unwrap() == before,
        "a refused opener wrote"
    );
    srv.stop();

    // The other way round: sspd on the copy, offline sspctl on the original.
    let srv = Server::serve(copy.clone(), tempfile::tempdir().unwrap());
    let holder = format!("process {} (sspd)", srv.child.id());
    let err = sspctl_fails(&a, &["lu", "list"]);
    assert!(
        err.contains("in use") && err.contains(&holder) && err.contains(&pvs),
        "{err:?}"
    );
    srv.stop();
    assert!(sspctl(&a, &["lu", "list"]).contains("vm"));
}

#[test]
fn read_only_verbs_never_write_even_with_a_journal_tail() {
    let t = tempfile::tempdir().unwrap();
    let (a, pv) = pool(t.path(), "alpha", &["vm"]);
    sspctl(&a, &["snapshot", "create", "vm@s1"]);
    // Acknowledged writes after the last checkpoint, then sspd dies: a journal tail.
    let mut srv = Server::serve(a.clone(), tempfile::tempdir().unwrap());
    nbdsh(
        &srv.uri("vm"),
        "import nbd, sys\nh = nbd.NBD()\nh.connect_uri(sys.argv[1])\n\
         h.pwrite(b'\\xab' * 65536, 8192)\nh.flush()\nh.shutdown()\n",
    );
    srv.child.kill().unwrap();
    srv.child.wait().unwrap();
    let _ = std::fs::remove_file(a.join("admin.sock"));
    let before = std::fs::read(&pv).unwrap();
    let out = t.path().join("vm.raw");
    let outs = out.display().to_string();
    let verbs: [&[&str]; 11] = [
        &["lu", "list"],
        &["pool", "status"],
        &["snapshot", "list"],
        &["image", "list"],
        &["file", "stat", "vm"],
        &["file", "layout", "vm"],
        &["diff", "vm@s1", "vm"],
        &["failgrp", "list"],
        &["pv", "list"],
        &["lu", "export", "vm", &outs],
        &["check"],
    ];
    for v in verbs {
        let o = sspctl(&a, v);
        assert!(
            std::fs::read(&pv).unwrap() == before,
            "sspctl {v:?} wrote to the PV"
        );
        if v[0] == "diff" {
            // The tail was replayed in memory: the diff sees the write.
            assert!(o.contains("0x2000-0x12000 changed (65536 bytes)"), "{o}");
        }
        if v[0] == "check" {
            assert!(o.contains("OK"), "{o}");
        }
    }
    let data = std::fs::read(&out).unwrap();
    assert!(data[8192..8192 + 65536].iter().all(|&b| b == 0xab));
    assert!(data[..8192].iter().all(|&b| b == 0));
    // A writable open still recovers and commits the tail.
    sspctl(&a, &["lu", "create", "after", "--size", "1M"]);
    assert!(std::fs::read(&pv).unwrap() != before);
}

#[test]
fn sspd_binds_before_it_opens_the_pool() {
    let t = tempfile::tempdir().unwrap();
    let (a, pv) = pool(t.path(), "alpha", &["vm"]);
    let before = std::fs::read(&pv).unwrap();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let (code, err) = sspd_fails(&a, &["--listen", &addr]);
    assert_ne!(code, 0, "{err}");
    assert!(err.contains(&format!("cannot listen on {addr}")), "{err:?}");
    let (code, err) = sspd_fails(&a, &["--listen", "127.0.0.1:0", "--metrics", &addr]);
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("metrics") && err.contains(&addr), "{err:?}");
    assert!(
        std::fs::read(&pv).unwrap() == before,
        "a start that failed to bind wrote to the PV"
    );
    // And the pool still opens.
    Server::serve(a, tempfile::tempdir().unwrap()).stop();
}

/// Detaches a loop device when the test ends, however it ends.
struct Loop(String);

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

#[test]
fn a_block_device_pv_is_opened_exclusively() {
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("disk.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let o = Command::new("losetup")
        .args(["-f", "--show"])
        .arg(&img)
        .output();
    let dev = match o {
        Ok(o) if o.status.success() => String::from_utf8(o.stdout).unwrap().trim().to_owned(),
        other => {
            // Needs root and loop devices; the file-PV tests above cover the same logic.
            eprintln!(
                "pvguard: SKIPPED a_block_device_pv_is_opened_exclusively: losetup: {other:?}"
            );
            return;
        }
    };
    let _detach = Loop(dev.clone());
    let a = t.path().join("a");
    sspctl(
        &a,
        &[
            "pool",
            "create",
            "--name",
            "loopy",
            "--pv",
            &dev,
            "--journal-mb",
            "1",
        ],
    );
    let srv = Server::serve(a.clone(), tempfile::tempdir().unwrap());
    let b = t.path().join("b");
    let err = sspctl_fails(&b, &["pool", "create", "--force", "--pv", &dev]);
    assert!(
        err.contains(&dev) && err.contains("in use") && err.contains("pool loopy"),
        "{err:?}"
    );
    srv.stop();
    let err = sspctl_fails(&b, &["pool", "create", "--pv", &dev]);
    assert!(
        err.contains("pool loopy") && err.contains("--force"),
        "{err:?}"
    );
}
