//! Failure groups through the real interfaces: `sspctl failgrp create` against a running sspd
//! starts mirroring, resync runs in the background, `scrub --wait --json` finds and repairs bit
//! rot planted in one PV file, and a PV file missing at start-up leaves the pool serving,
//! DEGRADED, until it is back and resynced.

mod common;
use common::server::*;
use serde_json::Value;
use std::io::{Read, Seek, SeekFrom, Write};

fn json(pool: &std::path::Path, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.push("--json");
    let out = sspctl(pool, &a);
    json_result(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
}

fn state(pool: &std::path::Path) -> String {
    json(pool, &["pool", "status"])["mirror_state"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Wait (bounded) for the background resync to finish.
fn wait_synced(pool: &std::path::Path) {
    for _ in 0..300 {
        if state(pool) == "SYNCED" {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("still {} after 30 s", state(pool));
}

fn flip(path: &std::path::Path, offset: u64) {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 16];
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.read_exact(&mut b).unwrap();
    for x in &mut b {
        *x = !*x;
    }
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(&b).unwrap();
    f.sync_all().unwrap();
}

#[test]
fn mirror_online_scrub_and_degraded_start_through_sspctl_and_nbd() {
    let s = Server::start(&[("vm1", "32M")]);
    let data = s.pool.parent().unwrap().join("data.raw");
    random_file(&data, 16 << 20);
    let d = data.to_str().unwrap();
    run(
        "qemu-img",
        &["convert", "-n", "-f", "raw", "-O", "raw", d, &s.uri("vm1")],
    );
    assert_eq!(state(&s.pool), "NOT_MIRRORED");

    // The second group, online; resync runs in sspd's background.
    let pv1 = s.pool.parent().unwrap().join("pv1.img");
    let g = json(
        &s.pool,
        &[
            "failgrp",
            "create",
            "fg2",
            "--pv",
            &format!("{}:512M", pv1.display()),
        ],
    );
    assert_eq!(g["failure_groups"].as_array().unwrap().len(), 2);
    wait_synced(&s.pool);
    let pvs = json(&s.pool, &["pv", "list"]);
    let pvs = pvs.as_array().unwrap();
    assert_eq!(pvs.len(), 2);
    assert!(pvs.iter().all(|p| p["state"] == "ONLINE"), "{pvs:?}");
    assert_eq!(pvs[1]["failure_group"], "fg2");
    let text = sspctl(&s.pool, &["failgrp", "list"]);
    assert!(text.contains("fg2") && text.contains("SYNCED"), "{text}");

    // Writes land on both sides; bit rot on one side is found and repaired by scrub.
    run(
        "qemu-io",
        &["-f", "raw", "-c", "write -P 0x5a 1M 256k", &s.uri("vm1")],
    );
    sspctl(&s.pool, &["gc"]); // also checkpoints: the data is on disk
    let clean = json(&s.pool, &["scrub", "--wait"]);
    assert_eq!(clean["errors_found"], Value::from(0), "{clean}");
    let lay = json(&s.pool, &["file", "layout", "vm1"]);
    let off = lay["extents"][0]["placement"][0]["offset"]
        .as_u64()
        .unwrap();
    flip(&pv1, off + 5 * 4096);
    let r = json(&s.pool, &["scrub", "--wait"]);
    assert_eq!(r["errors_found"], Value::from(1), "{r}");
    assert_eq!(r["errors_repaired"], Value::from(1), "{r}");
    let st = json(&s.pool, &["pool", "status"]);
    assert!(st["scrub_errors_repaired"].as_u64().unwrap() >= 1, "{st}");
    let (status, keep) = s.stop_keep();
    assert!(status.success());

    // Start without the second group's PV: the pool serves, degraded.
    let away = keep.path().join("pv1.away");
    std::fs::rename(&pv1, &away).unwrap();
    let s = Server::serve(keep.path().join("pool"), keep);
    let st = json(&s.pool, &["pool", "status"]);
    assert_eq!(st["mirror_state"], "DEGRADED", "{st}");
    assert!(
        st["mirror_reason"].as_str().unwrap().contains("pv1.img"),
        "{st}"
    );
    let pvs = json(&s.pool, &["pv", "list"]);
    assert_eq!(pvs[1]["state"], "MISSING", "{pvs}");
    run(
        "qemu-io",
        &["-f", "raw", "-c", "read -P 0x5a 1M 256k", &s.uri("vm1")],
    );
    run(
        "qemu-io",
        &["-f", "raw", "-c", "write -P 0x77 8M 512k", &s.uri("vm1")],
    );
    let dir = s.pool.parent().unwrap().to_owned();
    let pool = s.pool.clone();
    let (status, keep) = s.stop_keep();
    assert!(status.success());

    // It is back: sspd resyncs only what changed, and the mirror is whole again.
    std::fs::rename(dir.join("pv1.away"), dir.join("pv1.img")).unwrap();
    let s = Server::serve(pool, keep);
    let out = sspctl(&s.pool, &["failgrp", "resync"]);
    assert!(out.contains("SYNCED"), "{out}");
    wait_synced(&s.pool);
    let st = json(&s.pool, &["pool", "status"]);
    let copied = st["resync_bytes_copied"].as_u64().unwrap();
    assert!(
        copied > 0 && copied <= 4 << 20,
        "resync copied {copied} bytes: {st}"
    );
    run(
        "qemu-io",
        &["-f", "raw", "-c", "read -P 0x77 8M 512k", &s.uri("vm1")],
    );
    let clean = json(&s.pool, &["scrub", "--wait"]);
    assert_eq!(clean["errors_found"], Value::from(0), "{clean}");

    // pv replace: a smaller PV is refused with a clear message; a larger one is resynced.
    let small = dir.join("small.img");
    let e = sspctl_fails(
        &s.pool,
        &[
            "pv",
            "replace",
            pv1.to_str().unwrap(),
            &format!("{}:64M", small.display()),
        ],
    );
    assert!(e.contains("at least as large"), "{e}");
    assert!(
        !small.exists(),
        "a refused replacement leaves no file behind"
    );
    let pv2 = dir.join("pv2.img");
    sspctl(
        &s.pool,
        &[
            "pv",
            "replace",
            pv1.to_str().unwrap(),
            &format!("{}:600M", pv2.display()),
        ],
    );
    sspctl(&s.pool, &["failgrp", "resync"]);
    wait_synced(&s.pool);
    let pvs = json(&s.pool, &["pv", "list"]);
    assert!(
        pvs[1]["name"].as_str().unwrap().ends_with("pv2.img"),
        "{pvs}"
    );
    // pv add grows both groups (the pool grows by what both can hold).
    let before = json(&s.pool, &["pool", "status"])["total_bytes"]
        .as_u64()
        .unwrap();
    sspctl(
        &s.pool,
        &[
            "pv",
            "add",
            "--fg",
            "Default",
            &format!("{}:256M", dir.join("pv3.img").display()),
        ],
    );
    sspctl(
        &s.pool,
        &[
            "pv",
            "add",
            "--fg",
            "fg2",
            &format!("{}:256M", dir.join("pv4.img").display()),
        ],
    );
    let after = json(&s.pool, &["pool", "status"])["total_bytes"]
        .as_u64()
        .unwrap();
    assert!(after > before + (200 << 20), "{before} -> {after}");
    let e = sspctl_fails(
        &s.pool,
        &[
            "pv",
            "add",
            "--fg",
            "nosuch",
            &format!("{}:64M", dir.join("x.img").display()),
        ],
    );
    assert!(e.contains("nosuch"), "{e}");
    run(
        "qemu-io",
        &["-f", "raw", "-c", "read -P 0x77 8M 512k", &s.uri("vm1")],
    );
    // failgrp remove: refused without confirmation, then back to one copy (online).
    let e = sspctl_fails(&s.pool, &["failgrp", "remove", "fg2"]);
    assert!(e.contains("--yes"), "{e}");
    // PVs were added to Default after fg2: removing fg2 would renumber PVs, which is refused
    // with a reason, and the pool stays mirrored (the configuration is put back).
    let e = sspctl_fails(&s.pool, &["failgrp", "remove", "fg2", "--yes"]);
    assert!(e.contains("renumber"), "{e}");
    assert_eq!(state(&s.pool), "SYNCED");
    run(
        "qemu-io",
        &["-f", "raw", "-c", "read -P 0x5a 1M 256k", &s.uri("vm1")],
    );
    let (st, keep) = s.stop_keep();
    assert!(st.success());
    // The pool directory knows the new PVs: it opens (offline) and checks clean.
    let out = sspctl(&keep.path().join("pool"), &["check"]);
    assert!(out.contains("OK"), "{out}");
}
