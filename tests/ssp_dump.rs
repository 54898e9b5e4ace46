//! tools/ssp-dump: dumps a stopped pool from its PV alone (no pool directory), read-only,
//! as text and JSON, and refuses a damaged PV with a clear error.

mod common;

use common::server::*;
use serde_json::Value;
use std::path::Path;
use std::process::Command;

fn dump(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ssp-dump"))
        .args(args)
        .output()
        .unwrap()
}

fn dump_ok(args: &[&str]) -> String {
    let o = dump(args);
    assert!(
        o.status.success(),
        "ssp-dump {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

fn dump_fails(args: &[&str]) -> String {
    let o = dump(args);
    assert!(!o.status.success(), "ssp-dump {args:?} should fail");
    assert!(o.stdout.is_empty(), "nothing printed on failure");
    String::from_utf8(o.stderr).unwrap()
}

fn overwrite(path: &Path, offset: u64, len: usize) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(&vec![0xa5; len], offset).unwrap();
}

/// Bytes of the PV's header and journal area (what a stray write would change).
fn head(path: &Path) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let mut b = vec![0u8; 2 << 20];
    std::fs::File::open(path)
        .unwrap()
        .read_exact_at(&mut b, 0)
        .unwrap();
    b
}

#[test]
fn dump_a_stopped_pool_from_its_pv() {
    let dir = tempfile::tempdir().unwrap();
    let pool = dir.path().join("pool");
    let pv = dir.path().join("pv0.img");
    let pv_s = pv.to_str().unwrap().to_owned();
    sspctl(
        &pool,
        &[
            "pool",
            "create",
            "--name",
            "dumpme",
            "--pv",
            &format!("{pv_s}:256M"),
            "--journal-mb",
            "1",
        ],
    );
    sspctl(&pool, &["lu", "create", "vm1", "--size", "8M"]);
    sspctl(&pool, &["lu", "create", "vm2", "--size", "4M"]);
    let s = Server::serve(pool.clone(), tempfile::tempdir().unwrap());
    run(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 9 0 65536",
            "-c",
            "write -P 3 1M 4096",
            &s.uri("vm1"),
        ],
    );
    // Enough blocks for a VBA table of two levels (252 entries a page).
    run(
        "qemu-io",
        &["-f", "raw", "-c", "write -P 1 0 2M", &s.uri("vm2")],
    );
    sspctl(&pool, &["snapshot", "create", "vm1@s1"]);
    sspctl(&pool, &["clone", "vm1@s1", "c1"]);
    let lus = sspctl_json(&pool, &["lu", "list"]);
    assert!(s.stop().success());
    let vm1_mapped = lus
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "vm1")
        .map(|l| l["mapped_blocks"].as_u64().unwrap())
        .unwrap();
    assert_eq!(vm1_mapped, 17);

    // The pool directory is not needed: move it away.
    std::fs::rename(&pool, dir.path().join("elsewhere")).unwrap();
    let before = (
        std::fs::metadata(&pv).unwrap().modified().unwrap(),
        head(&pv),
    );

    let d: Value = serde_json::from_str(&dump_ok(&["--json", "--volume", "vm1", &pv_s])).unwrap();
    assert_eq!(d["pool"]["name"], "dumpme");
    let sbs = d["pvs"][0]["superblocks"].as_array().unwrap();
    assert_eq!(sbs.len(), 2);
    for sb in sbs {
        assert_eq!(sb["valid"], true, "{sb}");
        assert_eq!(sb["value"]["pool_name"], "dumpme");
        assert_eq!(sb["value"]["pv_index"], 0);
    }
    let slots = d["pvs"][0]["checkpoint_slots"].as_array().unwrap();
    assert_eq!(slots.len(), 2);
    let newest = slots
        .iter()
        .filter(|s| s["valid"] == true)
        .map(|s| s["value"]["generation"].as_u64().unwrap())
        .max()
        .unwrap();
    assert_eq!(d["checkpoint"]["generation"].as_u64().unwrap(), newest);
    assert!(newest >= 2);

    // Volumes: both LUs, the snapshot of vm1 and the clone of the snapshot.
    let vols = d["volumes"].as_array().unwrap();
    let by_name = |n: &str| {
        vols.iter()
            .find(|v| v["name"] == n)
            .unwrap_or_else(|| panic!("{n} in {vols:?}"))
    };
    let vm1 = by_name("vm1");
    assert_eq!(vm1["kind"], "lu");
    assert_eq!(vm1["size"], 8 << 20);
    assert_eq!(by_name("vm2")["size"], 4 << 20);
    let snap = vols
        .iter()
        .find(|v| v["kind"] == "snapshot")
        .expect("a snapshot");
    assert_eq!(snap["parent"], vm1["id"]);
    let c1 = by_name("c1");
    assert_eq!(c1["kind"], "lu");
    assert_eq!(c1["parent"], snap["id"]);
    assert_eq!(vols.len(), 4);

    // Journal: the records the commands above wrote.
    let kinds: std::collections::BTreeSet<&str> = d["journal"]["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|b| b["records"].as_array().unwrap())
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    for k in ["vol_create", "write", "vol_share"] {
        assert!(kinds.contains(k), "{k} in {kinds:?}");
    }
    // Closed cleanly: nothing is left to replay.
    assert_eq!(d["journal"]["replay_blocks"], 0);

    // Segment table: metadata and data segments in use, live counts that add up.
    let segs = d["segments"].as_array().unwrap();
    assert!(segs.iter().any(|s| s["state"] == "meta"));
    let data_live: u64 = segs
        .iter()
        .filter(|s| s["state"] == "data")
        .map(|s| s["live"].as_u64().unwrap())
        .sum();
    assert!(data_live >= 17, "{data_live}");

    // Block map of vm1: 16 blocks from offset 0 and one at 1 MiB, all held by vm1 and the
    // snapshot's shared map.
    let m = &d["block_map"];
    assert_eq!(m["volume"], "vm1");
    assert_eq!(m["data_blocks"].as_u64().unwrap(), vm1_mapped);
    assert_eq!(vm1["mapped_blocks"].as_u64().unwrap(), vm1_mapped);
    let lbas: Vec<u64> = m["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "data")
        .map(|e| e["lba"].as_u64().unwrap())
        .collect();
    let want: Vec<u64> = (0..16).chain([256]).collect();
    assert_eq!(lbas, want);
    // By id, the same map.
    let id = vm1["id"].as_u64().unwrap().to_string();
    let d2: Value = serde_json::from_str(&dump_ok(&["--json", "--volume", &id, &pv_s])).unwrap();
    assert_eq!(d2["block_map"], d["block_map"]);

    // A map resolved through a VBA table of two levels.
    assert!(d["checkpoint"]["vba_root"]["depth"].as_u64().unwrap() >= 2);
    assert!(d["vba_table"]["allocated"].as_u64().unwrap() >= 512 + 17);
    let d3: Value = serde_json::from_str(&dump_ok(&["--json", "--volume", "vm2", &pv_s])).unwrap();
    let m2 = d3["block_map"]["entries"].as_array().unwrap();
    assert_eq!(d3["block_map"]["data_blocks"], 512);
    assert!(m2
        .iter()
        .enumerate()
        .all(|(i, e)| e["lba"] == i as u64 && e["refs"] == 1));
    let pbas: std::collections::BTreeSet<u64> =
        m2.iter().map(|e| e["pba"].as_u64().unwrap()).collect();
    assert_eq!(pbas.len(), 512);

    // Text: the same things, for people.
    let t = dump_ok(&["--volume", "c1", &pv_s]);
    for want in [
        "Pool \"dumpme\"",
        "superblock @0:",
        "superblock @4096:",
        "checkpoint @8192",
        "vol_create",
        "vol_share",
        "Segments:",
        "name=\"vm2\"",
        "Block map of \"c1\"",
    ] {
        assert!(t.contains(want), "{want:?} in\n{t}");
    }

    // Read-only: the PV is exactly as it was.
    let after = (
        std::fs::metadata(&pv).unwrap().modified().unwrap(),
        head(&pv),
    );
    assert!(before == after, "ssp-dump changed the PV");

    // Errors: an unknown volume, damaged checkpoints, damaged superblocks, not a PV.
    let e = dump_fails(&["--volume", "nosuch", &pv_s]);
    assert!(
        e.contains("no volume \"nosuch\"") && e.contains("vm1"),
        "{e}"
    );
    overwrite(&pv, 8192, 8192);
    let e = dump_fails(&[&pv_s]);
    assert!(e.contains("no checkpoint slot verifies"), "{e}");
    overwrite(&pv, 0, 8192);
    let e = dump_fails(&["--json", &pv_s]);
    assert!(
        e.contains("both superblock copies are damaged") && e.contains(&pv_s),
        "{e}"
    );
    let e = dump_fails(&[dir.path().join("nothing.img").to_str().unwrap()]);
    assert!(e.contains("cannot open"), "{e}");
}

/// A mirrored pool whose server was killed: the dump reads either failure group's PV, lists
/// the journal blocks an open would replay (the killed server's writes) and shows the trees as
/// of the checkpoint, before those writes.
#[test]
fn dump_a_killed_mirrored_pool() {
    let dir = tempfile::tempdir().unwrap();
    let pool = dir.path().join("pool");
    let pv0 = dir.path().join("pv0.img").to_str().unwrap().to_owned();
    let pv1 = dir.path().join("pv1.img").to_str().unwrap().to_owned();
    sspctl(
        &pool,
        &[
            "pool",
            "create",
            "--name",
            "m",
            "--pv",
            &format!("{pv0}:128M"),
            "--journal-mb",
            "1",
        ],
    );
    sspctl(
        &pool,
        &["failgrp", "create", "fg2", "--pv", &format!("{pv1}:128M")],
    );
    sspctl(&pool, &["lu", "create", "vm1", "--size", "8M"]);
    let mut s = Server::serve(pool.clone(), tempfile::tempdir().unwrap());
    // The new group is filled by sspd's resync; then both groups hold every block.
    wait_for(60, "the mirror to sync", || {
        sspctl_json(&pool, &["pool", "status"])["mirror_state"] == "SYNCED"
    });
    // qemu-io flushes before it exits: the writes are durable in the journal.
    run(
        "qemu-io",
        &["-f", "raw", "-c", "write -P 5 0 32768", &s.uri("vm1")],
    );
    s.child.kill().unwrap();
    s.child.wait().unwrap();

    let both: Value =
        serde_json::from_str(&dump_ok(&["--json", "--volume", "vm1", &pv0, &pv1])).unwrap();
    let pvs = both["pvs"].as_array().unwrap();
    assert_eq!(pvs.len(), 2);
    assert_eq!(pvs[1]["superblocks"][0]["value"]["fg_name"], "fg2");
    assert_eq!(both["checkpoint"]["pv_table"].as_array().unwrap().len(), 2);
    let j = &both["journal"];
    assert!(j["replay_blocks"].as_u64().unwrap() >= 1, "{j}");
    let vm1 = both["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "vm1")
        .unwrap()
        .clone();
    let replayed_writes: Vec<u64> = j["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["state"] == "replay")
        .flat_map(|b| b["records"].as_array().unwrap())
        .filter(|r| r["kind"] == "write" && r["vol"] == vm1["id"])
        .map(|r| r["lba"].as_u64().unwrap())
        .collect();
    let mut lbas = replayed_writes.clone();
    lbas.sort_unstable();
    lbas.dedup();
    assert_eq!(lbas, (0..8).collect::<Vec<u64>>(), "{j}");
    // The checkpoint predates the writes: its map of vm1 is still empty.
    assert_eq!(both["block_map"]["data_blocks"], 0);

    // Either group alone is enough for the trees (the journal ring is read from PV 0).
    let only1: Value = serde_json::from_str(&dump_ok(&["--json", &pv1])).unwrap();
    assert_eq!(only1["volumes"], both["volumes"]);
    assert_eq!(only1["checkpoint"], both["checkpoint"]);
    assert!(only1["journal"]["error"]
        .as_str()
        .unwrap()
        .contains("not given"));
    let only0: Value = serde_json::from_str(&dump_ok(&["--json", &pv0])).unwrap();
    assert_eq!(only0["journal"], both["journal"]);
}
