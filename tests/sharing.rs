//! Client images, snapshots and linked clones end to end: `sspctl` against a running `sspd`,
//! data written and checked with qemu-img, qemu-io, nbdinfo and libnbd, and the accounting,
//! layout and changed-block answers checked in both `sspctl --json` and NBD block status.

mod common;
use common::server::*;
use serde_json::Value;
use std::process::Command;

fn json(pool: &std::path::Path, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.push("--json");
    let out = sspctl(pool, &a);
    json_result(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
}

/// Block status of `ctx` over the first `len` bytes: (length, flags) descriptors.
fn block_status(uri: &str, ctx: &str, len: u64) -> Vec<(u64, u64)> {
    let script = format!(
        "import nbd,sys\n\
         h=nbd.NBD(); h.add_meta_context('{ctx}'); h.connect_uri(sys.argv[1])\n\
         assert h.can_meta_context('{ctx}')\n\
         out=[]\n\
         def cb(meta, off, ents, err):\n\
         \x20   if meta == '{ctx}':\n\
         \x20       out.extend(zip(ents[0::2], ents[1::2]))\n\
         pos=0\n\
         while pos < {len}:\n\
         \x20   n=len(out)\n\
         \x20   h.block_status({len}-pos, pos, cb)\n\
         \x20   pos += sum(l for l,_ in out[n:])\n\
         print(' '.join(f'{{l}}:{{f}}' for l,f in out))\n"
    );
    let out = nbdsh(uri, &script);
    out.split_whitespace()
        .map(|p| {
            let (l, f) = p.split_once(':').unwrap();
            (l.parse().unwrap(), f.parse().unwrap())
        })
        .collect()
}

/// Byte ranges whose flags have bit 0 set.
fn flagged(ext: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut pos = 0;
    let mut v = Vec::new();
    for &(l, f) in ext {
        if f & 1 != 0 {
            v.push((pos, l));
        }
        pos += l;
    }
    v
}

#[test]
fn capture_snapshot_clone_and_account_through_sspctl_and_nbd() {
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

    // Capture with JSON progress lines (the first one at once, in bytes), then the final answer.
    let out = sspctl(&s.pool, &["image", "capture", "golden", "img", "--json"]);
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines[0]["progress"]["total_bytes"],
        Value::from(8 << 20),
        "{out}"
    );
    assert_eq!(lines.last().unwrap()["captured"][0]["name"], "img");

    sspctl(&s.pool, &["snapshot", "create", "img@gold"]);
    let out = sspctl(&s.pool, &["clone", "img@gold", "vm1"]);
    assert!(out.contains("linked clone vm1"), "{out}");
    sspctl(&s.pool, &["clone", "img@gold", "vm2"]);
    let lus = json(&s.pool, &["lu", "list"]);
    let vm1 = lus
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "vm1")
        .unwrap();
    assert_eq!(
        (vm1["kind"].as_str(), vm1["parent"].as_str()),
        (Some("clone"), Some("img@gold"))
    );

    // The clone reads the image; a write makes 16 blocks its own.
    run(
        "qemu-img",
        &["compare", "-f", "raw", "-F", "raw", &s.uri("vm2"), g],
    );
    run(
        "qemu-io",
        &["-f", "raw", "-c", "write -P 0xab 0 64k", &s.uri("vm1")],
    );
    let st = json(&s.pool, &["file", "stat", "vm1"]);
    for (k, v) in [
        ("size", 64u64 << 20),
        ("number_blocks", 16384),
        ("data_blocks", 2048),
        ("pool_block_size", 4096),
        ("owned_blocks", 16),
        ("shared_blocks", 2032),
        ("max_blocks", 16384),
        ("block_debt", 16384 - 16),
    ] {
        assert_eq!(st[k], Value::from(v), "file stat vm1 {k}: {st}");
    }
    let img = json(&s.pool, &["file", "stat", "img"]);
    assert_eq!(img["owned_blocks"], Value::from(0));
    let golden_st = json(&s.pool, &["file", "stat", "golden"]);
    assert_eq!(
        golden_st["owned_blocks"],
        Value::from(2048),
        "a capture is a copy"
    );
    let text = sspctl(&s.pool, &["file", "stat", "vm1"]);
    assert!(text.contains("Block Debt      16368"), "{text}");

    // Snapshots and images are read-only exports.
    let info: Value =
        serde_json::from_str(&run("nbdinfo", &["--json", &s.uri("img@gold")])).unwrap();
    assert_eq!(
        info["exports"][0]["is_read_only"],
        Value::Bool(true),
        "{info}"
    );
    let o = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write 0 4k", &s.uri("img")])
        .output()
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        !o.status.success() || all.contains("failed") || all.contains("read-only"),
        "{all}"
    );
    let list = run(
        "nbdinfo",
        &["--list", &format!("nbd://127.0.0.1:{}", s.port)],
    );
    for e in ["golden", "img", "img@gold", "vm1", "vm2"] {
        assert!(
            list.contains(&format!("export=\"{e}\"")) || list.contains(e),
            "{list}"
        );
    }

    // Sharing and changed blocks over NBD block status.
    let size = 64 << 20;
    let sharing = block_status(&s.uri("vm1"), "ssp:sharing", size);
    assert_eq!(flagged(&sharing), vec![(65536, (8 << 20) - 65536)]);
    let changed = block_status(&s.uri("vm1"), "ssp:changed:img@gold", size);
    assert_eq!(flagged(&changed), vec![(0, 65536)]);
    let d = json(&s.pool, &["diff", "img@gold", "vm1"]);
    assert_eq!(
        d["extents"],
        serde_json::json!([{ "offset": 0, "length": 65536 }])
    );

    // Layout: the first extent is mixed, the rest of the data shared.
    let lay = json(&s.pool, &["file", "layout", "vm1"]);
    let ext = lay["extents"].as_array().unwrap();
    assert_eq!(ext.len(), 8);
    assert_eq!(ext[0]["state"], "mixed");
    assert_eq!(ext[0]["owned_blocks"], Value::from(16));
    assert!(ext[1..].iter().all(|e| e["state"] == "shared"));
    assert!(ext[0]["placement"][0]["pv"]
        .as_str()
        .unwrap()
        .contains("pv0.img"));
    let text = sspctl(&s.pool, &["file", "layout", "vm1"]);
    assert!(text.starts_with("0x0-0x100000 mixed"), "{text}");

    // Snapshot, write, roll back online; the undo snapshot keeps the newer data.
    sspctl(&s.pool, &["snapshot", "create", "vm1@before"]);
    run(
        "qemu-io",
        &["-f", "raw", "-c", "write -P 0xcd 0 64k", &s.uri("vm1")],
    );
    let rb = json(&s.pool, &["snapshot", "rollback", "vm1@before"]);
    let undo = rb["undo_snapshot"].as_str().unwrap().to_owned();
    run(
        "qemu-io",
        &["-f", "raw", "-c", "read -P 0xab 0 64k", &s.uri("vm1")],
    );
    run(
        "qemu-io",
        &["-f", "raw", "-r", "-c", "read -P 0xcd 0 64k", &s.uri(&undo)],
    );
    let snaps = sspctl(&s.pool, &["snapshot", "list"]);
    assert!(snaps.contains("Lu(Client Image)Name"), "{snaps}");
    assert!(
        snaps.contains("vm1@before") && snaps.contains(&undo),
        "{snaps}"
    );

    // Removing the image snapshot and the image: clones keep their data, and what nothing
    // else references is returned at once.
    sspctl(&s.pool, &["snapshot", "remove", &undo]);
    sspctl(&s.pool, &["snapshot", "remove", "vm1@before"]);
    let err = sspctl_fails(&s.pool, &["image", "remove", "img"]);
    assert!(err.contains("snapshot"), "{err}");
    sspctl(&s.pool, &["snapshot", "remove", "img@gold"]);
    let r = json(&s.pool, &["image", "remove", "img"]);
    assert_eq!(
        r["freed_blocks"],
        Value::from(0),
        "every image block is still in a clone"
    );
    run(
        "qemu-img",
        &["compare", "-f", "raw", "-F", "raw", &s.uri("vm2"), g],
    );
    let vm2 = json(&s.pool, &["file", "stat", "vm2"]);
    assert_eq!(
        vm2["owned_blocks"],
        Value::from(16),
        "vm2 alone holds the blocks vm1 rewrote"
    );

    // Bad requests get one clear line and change nothing.
    for (args, want) in [
        (vec!["clone", "golden", "x"], "snapshot"),
        (vec!["snapshot", "create", "nosuch@s"], "nosuch"),
        (vec!["snapshot", "rollback", "vm1@nosuch"], "vm1@nosuch"),
        (vec!["clone", "img@gold", "vm1"], "img@gold"),
    ] {
        let e = sspctl_fails(&s.pool, &args);
        assert!(e.contains(want), "{args:?}: {e}");
    }
    let (st, _keep) = s.stop_keep();
    assert!(st.success());
}
