//! sspctl's output forms through the real binary, offline and against a running sspd: every
//! listing's `-o` selection and `--json` shape (bytes, not MB), `-H` tab-separated output,
//! tables that keep their columns with long names, errors as JSON, clone origins that outlive
//! their snapshot or image, and exact size parsing.

mod common;

use common::server::{make_pool, random_file, Server};
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

const LONG: &str = "an-lu-with-a-name-far-longer-than-any-column-width-was-ever-planned-for";

fn run(pool: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sspctl"))
        .arg("--pool")
        .arg(pool)
        .args(args)
        .output()
        .unwrap()
}

fn ok(pool: &Path, args: &[&str]) -> String {
    let o = run(pool, args);
    assert!(
        o.status.success(),
        "sspctl {args:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

fn json(pool: &Path, args: &[&str]) -> Value {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    let out = ok(pool, &a);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
}

/// `-H -o FIELDS`: rows of tab-separated cells.
fn scripted(pool: &Path, args: &[&str], fields: &str) -> Vec<Vec<String>> {
    let mut a = args.to_vec();
    a.extend_from_slice(&["-H", "-o", fields]);
    let out = ok(pool, &a);
    let n = fields.split(',').count();
    out.lines()
        .map(|l| {
            let cells: Vec<String> = l.split('\t').map(str::to_owned).collect();
            assert_eq!(cells.len(), n, "{args:?} -o {fields}: {l:?}");
            cells
        })
        .collect()
}

fn keys(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    k.sort_unstable();
    k
}

const VOLUME_KEYS: [&str; 13] = [
    "id",
    "kind",
    "mapped_blocks",
    "maps",
    "name",
    "owned_blocks",
    "parent",
    "provision",
    "reserved_bytes",
    "size",
    "udid",
    "unused_bytes",
    "used_bytes",
];

/// A pool with a long-named LU, vm1 with data and a snapshot, a client image with a
/// snapshot, and a clone of each.
fn setup(dir: &Path) -> std::path::PathBuf {
    let pool = make_pool(dir, &[(LONG, "8M"), ("vm1", "4M")]);
    ok(&pool, &["snapshot", "create", "vm1@s1"]);
    let data = dir.join("data.bin");
    random_file(&data, 64 << 10);
    ok(&pool, &["lu", "import", "vm1", data.to_str().unwrap()]);
    ok(&pool, &["image", "capture", "vm1", "golden"]);
    ok(&pool, &["snapshot", "create", "golden@v1"]);
    ok(&pool, &["clone", "vm1@s1", "c1"]);
    ok(&pool, &["clone", "golden@v1", "c2"]);
    ok(&pool, &["lu", "map", "vm1", "--client", "127.0.0.1"]);
    pool
}

/// Every listing in every form; `how` names the mode in messages.
fn check_listings(pool: &Path, how: &str) {
    // lu list: JSON in bytes, one shape.
    let lus = json(pool, &["lu", "list"]);
    let lus = lus.as_array().unwrap();
    assert_eq!(lus.len(), 4, "{how}: {lus:?}");
    for l in lus {
        assert_eq!(keys(l), VOLUME_KEYS, "{how}");
    }
    let vm1 = lus.iter().find(|l| l["name"] == "vm1").unwrap();
    assert_eq!(vm1["size"], 4u64 << 20);
    assert_eq!(vm1["used_bytes"], 64u64 << 10);
    assert_eq!(vm1["unused_bytes"], (4u64 << 20) - (64 << 10));
    assert_eq!(vm1["mapped_blocks"], 16);
    assert_eq!(vm1["maps"], serde_json::json!(["127.0.0.1/32"]));
    let sel = json(pool, &["lu", "list", "-o", "name,parent"]);
    assert_eq!(
        sel,
        serde_json::json!([
            { "name": LONG, "parent": "" },
            { "name": "c1", "parent": "vm1@s1" },
            { "name": "c2", "parent": "golden@v1" },
            { "name": "vm1", "parent": "" },
        ]),
        "{how}"
    );
    // -H -o: tab-separated, exact bytes, in the order asked.
    let rows = scripted(pool, &["lu", "list"], "size,name,kind,parent,maps");
    assert_eq!(
        rows,
        [
            ["8388608", LONG, "lu", "-", "-"],
            ["4194304", "c1", "clone", "vm1@s1", "-"],
            ["4194304", "c2", "clone", "golden@v1", "-"],
            ["4194304", "vm1", "lu", "-", "127.0.0.1/32"],
        ],
        "{how}"
    );
    // The table: every column starts where its header does, whatever the name's length.
    let table = ok(pool, &["lu", "list"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines[0], "POOL_NAME: ssp", "{table}");
    let header = lines[2];
    for h in ["NAME", "SIZE", "UNUSED", "UDID", "CLONE_OF", "MAPPED_TO"] {
        assert!(header.contains(h), "{how}: {table}");
    }
    let udid_col = header.find("UDID").unwrap();
    let map_col = header.find("MAPPED_TO").unwrap();
    for l in lus {
        let name = l["name"].as_str().unwrap();
        let line = lines
            .iter()
            .find(|x| x.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{how}: no row for {name}: {table}"));
        assert_eq!(
            line.find(l["udid"].as_str().unwrap()),
            Some(udid_col),
            "{how}: {table}"
        );
        assert!(line.len() > map_col, "{how}: {table}");
    }
    assert!(table.contains("8MiB") && table.contains("4MiB"), "{table}");
    // Headers are dropped with -H (no -o: the default columns).
    let bare = ok(pool, &["lu", "list", "-H"]);
    assert!(
        !bare.contains("NAME") && !bare.contains("POOL_NAME"),
        "{bare}"
    );
    assert_eq!(bare.lines().count(), 4);

    // snapshot list: JSON sections, -o applies to both; -H lists the snapshots.
    let s = json(pool, &["snapshot", "list", "-o", "name,parent,size"]);
    assert_eq!(keys(&s), ["images", "pool", "snapshots"]);
    assert_eq!(
        s["snapshots"],
        serde_json::json!([
            { "name": "vm1@s1", "parent": "vm1", "size": 4u64 << 20 },
            { "name": "golden@v1", "parent": "golden", "size": 4u64 << 20 },
        ]),
        "{how}"
    );
    assert_eq!(s["images"][0]["name"], "golden");
    let rows = scripted(pool, &["snapshot", "list"], "name,used_bytes");
    assert_eq!(rows, [["vm1@s1", "0"], ["golden@v1", "65536"]], "{how}");
    let text = ok(pool, &["snapshot", "list"]);
    assert!(
        text.contains("Lu(Snapshot)Name") && text.contains("Lu(Client Image)Name"),
        "{text}"
    );

    // image list.
    let imgs = json(pool, &["image", "list"]);
    assert_eq!(keys(&imgs[0]), VOLUME_KEYS);
    assert_eq!(
        scripted(pool, &["image", "list"], "name,kind,size"),
        [["golden", "image", "4194304"]]
    );

    // pv list: size in exact bytes.
    let pvs = json(pool, &["pv", "list"]);
    assert_eq!(
        keys(&pvs[0]),
        [
            "failure_group",
            "name",
            "pool",
            "reason",
            "size",
            "state",
            "udid"
        ]
    );
    assert_eq!(pvs[0]["size"], 512u64 << 20);
    let rows = scripted(pool, &["pv", "list"], "state,size");
    assert_eq!(rows, [["ONLINE", "536870912"]], "{how}");
    assert!(ok(pool, &["pv", "list"]).contains("512MiB"));

    // failgrp list.
    let fg = json(pool, &["failgrp", "list", "-o", "name,state"]);
    assert_eq!(
        fg["failure_groups"],
        serde_json::json!([{ "name": "Default", "state": "ONLINE" }])
    );
    assert_eq!(fg["mirror_state"], "NOT_MIRRORED");
    assert_eq!(
        scripted(pool, &["failgrp", "list"], "name,state"),
        [["Default", "ONLINE"]]
    );

    // pool status: a report; -o selects its keys.
    let st = json(pool, &["pool", "status", "-o", "name,lus,snapshots,images"]);
    assert_eq!(
        st,
        serde_json::json!({ "name": "ssp", "lus": 4, "snapshots": 2, "images": 1 }),
        "{how}"
    );
    let full = json(pool, &["pool", "status"]);
    let rows = scripted(pool, &["pool", "status"], "name,total_bytes,mirror_state");
    assert_eq!(
        rows,
        [[
            "ssp".to_string(),
            full["total_bytes"].to_string(),
            "NOT_MIRRORED".into()
        ]]
    );
    let t = ok(pool, &["pool", "status", "-o", "name,lus"]);
    assert_eq!(
        t.lines()
            .next()
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["NAME", "LUS"]
    );

    // file stat and layout.
    let fs = json(pool, &["file", "stat", "c1"]);
    assert_eq!(fs["parent"], "vm1@s1");
    assert_eq!(fs["size"], 4u64 << 20);
    assert_eq!(
        scripted(pool, &["file", "stat", "vm1"], "kind,data_blocks,size"),
        [["lu", "16", "4194304"]]
    );
    let lay = json(pool, &["file", "layout", "vm1", "-o", "start,end,state"]);
    assert_eq!(lay["name"], "vm1");
    assert_eq!(
        lay["extents"],
        serde_json::json!([{ "start": 0, "end": 1u64 << 20, "state": "owned" }]),
        "{how}"
    );
    assert_eq!(
        scripted(pool, &["file", "layout", "vm1"], "state,owned_blocks"),
        [["owned", "16"]]
    );

    // diff.
    let d = json(pool, &["diff", "vm1@s1", "vm1"]);
    assert_eq!(keys(&d), ["extents", "from", "to"]);
    assert_eq!(
        scripted(pool, &["diff", "vm1@s1", "vm1"], "offset,length"),
        [["0", "65536"]]
    );

    // scrub status: a report.
    assert_eq!(
        scripted(pool, &["scrub", "status"], "state,bytes_done"),
        [["none", "0"]],
        "{how}"
    );

    // An unknown field: a clear error naming the valid ones; under --json, a JSON error.
    let o = run(pool, &["lu", "list", "-o", "name,bogus"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("unknown field \"bogus\"") && err.contains("valid fields: name, kind, size"),
        "{err}"
    );
    let o = run(pool, &["pv", "list", "--json", "-o", "nope"]);
    assert_eq!(o.status.code(), Some(1));
    let e: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(keys(&e), ["error"]);
    assert!(e["error"].as_str().unwrap().contains("state"), "{e}");
    let o = run(pool, &["--json", "lu", "remove", "nosuch"]);
    assert_eq!(o.status.code(), Some(1));
    let e: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        e["error"].as_str().unwrap().contains("no such LU"),
        "{how}: {e}"
    );
}

#[test]
fn listings_offline_and_online() {
    let dir = tempfile::tempdir().unwrap();
    let pool = setup(dir.path());
    check_listings(&pool, "offline");
    let s = Server::serve(pool.clone(), dir);
    check_listings(&pool, "online");
    // Replies that return volumes have the listing's shape too.
    let c = json(&pool, &["clone", "vm1@s1", "c3"]);
    assert_eq!(keys(&c[0]), VOLUME_KEYS);
    assert_eq!(c[0]["parent"], "vm1@s1");
    let r = json(&pool, &["lu", "resize", "c3", "--size", "8M"]);
    assert_eq!(r[0]["size"], 8u64 << 20);
    s.stop();
}

/// A clone's origin, by name, after its snapshot or image is gone: recorded when the clone
/// is made, and (for clones from before that) when the snapshot is removed.
#[test]
fn clone_keeps_its_origin() {
    let dir = tempfile::tempdir().unwrap();
    let pool = setup(dir.path());
    // c2's record is lost, as for a clone made by an older sspctl.
    std::fs::remove_file(pool.join("clone-origins.json")).unwrap();
    let s = Server::serve(pool.clone(), dir);
    ok(&pool, &["clone", "vm1@s1", "c3"]);
    ok(&pool, &["snapshot", "remove", "vm1@s1"]);
    ok(&pool, &["snapshot", "remove", "golden@v1"]);
    ok(&pool, &["image", "remove", "golden"]);
    let want = [
        ["c1", "clone", "vm1@s1"],
        ["c2", "clone", "golden@v1"],
        ["c3", "clone", "vm1@s1"],
    ];
    let rows = scripted(&pool, &["lu", "list"], "name,kind,parent");
    assert_eq!(&rows[1..4], want);
    assert_eq!(json(&pool, &["file", "stat", "c2"])["parent"], "golden@v1");
    // A new LU that takes a removed clone's name has no origin.
    ok(&pool, &["lu", "remove", "c3"]);
    ok(&pool, &["lu", "create", "c3", "--size", "1M"]);
    let rows = scripted(&pool, &["lu", "list"], "name,parent");
    assert!(
        rows.contains(&vec!["c3".to_string(), "-".to_string()]),
        "{rows:?}"
    );
    let (_, _dir) = s.stop_keep();
    // Offline too.
    let rows = scripted(&pool, &["lu", "list"], "name,kind,parent");
    assert_eq!(&rows[1..3], &want[..2]);
}

#[test]
fn sizes_parse_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let pool = make_pool(dir.path(), &[]);
    let size = |name: &str| -> Value {
        json(&pool, &["file", "stat", name, "-o", "size"])["size"].clone()
    };
    ok(&pool, &["lu", "create", "a", "--size", "1.5G"]);
    assert_eq!(size("a"), 3u64 << 29);
    ok(&pool, &["lu", "create", "b", "--size", "10GB"]);
    assert_eq!(size("b"), 10_000_000_000u64);
    ok(&pool, &["lu", "create", "c", "--size", "10GiB"]);
    assert_eq!(size("c"), 10u64 << 30);
    ok(&pool, &["lu", "create", "d", "--size", "1536"]);
    assert_eq!(size("d"), 1536);
    ok(&pool, &["lu", "resize", "d", "--size", "2k"]);
    assert_eq!(size("d"), 2048);
    for (bad, says) in [
        ("10", "not a multiple of 512"),
        ("1KB", "not a multiple of 512"),
        ("1.1K", "not a whole number of bytes"),
        ("0", "more than 0"),
        ("99999999999999999999G", "too large"),
        ("16E", "too large"),
        ("10Q", "unknown unit"),
        ("1,5G", "unknown unit"),
    ] {
        let o = run(&pool, &["lu", "create", "x", "--size", bad]);
        assert_eq!(o.status.code(), Some(2), "{bad}");
        // clap's own report: the error first (then its usage hint).
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(says) && err.starts_with("error: "),
            "{bad}: {err}"
        );
        // Under --json, the same refusal as a JSON object on stdout.
        let o = run(&pool, &["--json", "lu", "create", "x", "--size", bad]);
        assert_eq!(o.status.code(), Some(2), "{bad}");
        let e: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert!(e["error"].as_str().unwrap().contains(says), "{bad}: {e}");
    }
    let o = run(&pool, &["lu", "resize", "a", "--size", "513"]);
    assert_eq!(o.status.code(), Some(2));
    // PV sizes are exact too.
    let pv = format!("{}:1.5", dir.path().join("pv9.img").display());
    let o = run(&pool, &["pv", "add", "--fg", "Default", &pv]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a whole number"));
    assert!(!dir.path().join("pv9.img").exists());
    // Nothing was made by any of that.
    let names: Vec<String> = scripted(&pool, &["lu", "list"], "name")
        .into_iter()
        .map(|r| r[0].clone())
        .collect();
    assert_eq!(names, ["a", "b", "c", "d"]);
}
