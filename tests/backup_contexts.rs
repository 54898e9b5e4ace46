//! The block-status contexts backup tools speak, against a real sspd: `qemu:dirty-bitmap:NAME`
//! (qemu-img map with `x-dirty-bitmap`, nbdinfo --map, copying only the dirty ranges onto a
//! copy of the base), `qemu:allocation-depth` (plain LU, clone, clone of a clone's snapshot)
//! and what LIST/SET_META_CONTEXT answer (libnbd).

mod common;

use common::server::*;

/// `nbdinfo --map=CONTEXT URI` as (start, length, value) runs.
fn nbdinfo_map(ctx: &str, uri: &str) -> Vec<(u64, u64, u64)> {
    run("nbdinfo", &[&format!("--map={ctx}"), uri])
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (
                f[0].parse().unwrap(),
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
            )
        })
        .collect()
}

/// The runs with value `v`, merged.
fn with_value(runs: &[(u64, u64, u64)], v: u64) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &(s, l, x) in runs {
        if x != v {
            continue;
        }
        match out.last_mut() {
            Some(r) if r.0 + r.1 == s => r.1 += l,
            _ => out.push((s, l)),
        }
    }
    out
}

fn qemu_io(uri: &str, cmds: &[&str]) {
    let mut a = vec!["-f", "raw"];
    for c in cmds {
        a.push("-c");
        a.push(c);
    }
    a.push(uri);
    run("qemu-io", &a);
}

const K: u64 = 1024;
const M: u64 = 1024 * 1024;

#[test]
fn dirty_bitmap_shows_only_changed_ranges_and_copying_them_rebuilds_the_lu() {
    let (s, _) = serve_filled(&[("vm", "16M")], "vm", 8 << 20, &[]);
    let dir = s.pool.parent().unwrap().to_owned();
    sspctl(&s.pool, &["snapshot", "create", "vm@base"]);
    // The full backup: the base snapshot's read-only export.
    let copy = dir.join("copy.raw");
    let c = copy.to_str().unwrap();
    run(
        "qemu-img",
        &["convert", "-f", "raw", "-O", "raw", &s.uri("vm@base"), c],
    );
    // Changes after it: data inside and past the filled part, zeroes, a trim.
    qemu_io(
        &s.uri("vm"),
        &[
            "write -P 0x11 512k 64k",
            "write -P 0x22 10M 128k",
            "write -z 4M 4k",
            "discard 6M 1M",
        ],
    );
    let want = vec![
        (512 * K, 64 * K),
        (4 * M, 4 * K),
        (6 * M, M),
        (10 * M, 128 * K),
    ];

    // qemu-img map through qemu's x-dirty-bitmap: dirty ranges read as "data": false.
    let opts = format!(
        "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port={},export=vm,\
         x-dirty-bitmap=qemu:dirty-bitmap:vm@base",
        s.port
    );
    let map: serde_json::Value = serde_json::from_str(&run(
        "qemu-img",
        &["map", "--output=json", "--image-opts", &opts],
    ))
    .unwrap();
    let mut dirty: Vec<(u64, u64)> = Vec::new();
    let mut covered = 0;
    for e in map.as_array().unwrap() {
        let (st, len) = (e["start"].as_u64().unwrap(), e["length"].as_u64().unwrap());
        assert_eq!(st, covered, "{map}");
        covered += len;
        if e["data"] == false {
            dirty.push((st, len));
        }
    }
    assert_eq!(covered, 16 * M);
    assert_eq!(dirty, want, "{map}");

    // nbdinfo names the same ranges; a snapshot taken now is clean against the LU.
    let runs = nbdinfo_map("qemu:dirty-bitmap:vm@base", &s.uri("vm"));
    assert_eq!(with_value(&runs, 1), want);
    assert_eq!(runs.iter().map(|r| r.1).sum::<u64>(), 16 * M);
    sspctl(&s.pool, &["snapshot", "create", "vm@now"]);
    let runs = nbdinfo_map("qemu:dirty-bitmap:vm@now", &s.uri("vm"));
    assert!(with_value(&runs, 1).is_empty(), "{runs:?}");
    // ... and the new snapshot's export against the base has the same dirty ranges.
    let runs = nbdinfo_map("qemu:dirty-bitmap:vm@base", &s.uri("vm@now"));
    assert_eq!(with_value(&runs, 1), want);

    // Copy only the dirty ranges onto the full backup: it becomes the LU.
    let ranges: Vec<String> = want.iter().map(|(o, l)| format!("{o}:{l}")).collect();
    let out = nbdsh(
        &s.uri("vm"),
        &format!(
            r#"
import nbd, sys
h = nbd.NBD()
h.add_meta_context("qemu:dirty-bitmap:vm@base")
h.connect_uri(sys.argv[1])
assert h.can_meta_context("qemu:dirty-bitmap:vm@base")
copied = 0
with open({c:?}, "r+b") as f:
    for r in {ranges:?}:
        off, ln = map(int, r.split(":"))
        f.seek(off)
        f.write(h.pread(ln, off))
        copied += ln
print(copied)
"#
        ),
    );
    assert_eq!(out.trim(), (64 * K + 4 * K + M + 128 * K).to_string());
    run(
        "qemu-img",
        &["compare", "-f", "raw", "-F", "raw", c, &s.uri("vm")],
    );
    // Without the changed ranges the copy is still the base, not the LU.
    let base = dir.join("base.raw");
    let b = base.to_str().unwrap();
    run(
        "qemu-img",
        &["convert", "-f", "raw", "-O", "raw", &s.uri("vm@base"), b],
    );
    let st = std::process::Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw", b, &s.uri("vm")])
        .output()
        .unwrap();
    assert_eq!(st.status.code(), Some(1), "base and LU must differ");
    s.stop();
}

#[test]
fn allocation_depth_of_plain_lu_clone_and_clone_chain() {
    let s = Server::start(&[("vm", "16M")]);
    qemu_io(&s.uri("vm"), &["write -P 1 0 1M", "write -z 4M 64k"]);
    // A plain LU: its own blocks (data and allocated zeroes) are depth 1, the rest holes.
    let runs = nbdinfo_map("qemu:allocation-depth", &s.uri("vm"));
    assert_eq!(
        runs,
        vec![
            (0, M, 1),
            (M, 3 * M, 0),
            (4 * M, 64 * K, 1),
            (4 * M + 64 * K, 12 * M - 64 * K, 0)
        ]
    );

    sspctl(&s.pool, &["snapshot", "create", "vm@gold"]);
    sspctl(&s.pool, &["clone", "vm@gold", "c1"]);
    // Inherited everywhere until written.
    let runs = nbdinfo_map("qemu:allocation-depth", &s.uri("c1"));
    assert_eq!(with_value(&runs, 2), vec![(0, M), (4 * M, 64 * K)]);
    assert!(with_value(&runs, 1).is_empty(), "{runs:?}");
    qemu_io(&s.uri("c1"), &["write -P 5 0 64k", "write -P 6 12M 64k"]);
    let runs = nbdinfo_map("qemu:allocation-depth", &s.uri("c1"));
    assert_eq!(
        runs,
        vec![
            (0, 64 * K, 1),
            (64 * K, M - 64 * K, 2),
            (M, 3 * M, 0),
            (4 * M, 64 * K, 2),
            (4 * M + 64 * K, 8 * M - 64 * K, 0),
            (12 * M, 64 * K, 1),
            (12 * M + 64 * K, 4 * M - 64 * K, 0)
        ]
    );
    // The LU under the clone still changes nothing for it.
    qemu_io(&s.uri("vm"), &["write -P 9 2M 64k"]);
    assert_eq!(nbdinfo_map("qemu:allocation-depth", &s.uri("c1")), runs);

    // A clone of the clone's snapshot: three layers; trimming an inherited block is the
    // clone's own change (reads as zeroes), not a hole in the chain.
    sspctl(&s.pool, &["snapshot", "create", "c1@v2"]);
    sspctl(&s.pool, &["clone", "c1@v2", "c2"]);
    qemu_io(&s.uri("c2"), &["write -P 7 12M 4k", "discard 512k 512k"]);
    let runs = nbdinfo_map("qemu:allocation-depth", &s.uri("c2"));
    assert_eq!(
        runs,
        vec![
            (0, 64 * K, 2),
            (64 * K, 448 * K, 3),
            (512 * K, 512 * K, 1),
            (M, 3 * M, 0),
            (4 * M, 64 * K, 3),
            (4 * M + 64 * K, 8 * M - 64 * K, 0),
            (12 * M, 4 * K, 1),
            (12 * M + 4 * K, 60 * K, 2),
            (12 * M + 64 * K, 4 * M - 64 * K, 0)
        ]
    );
    // A snapshot's export reports its own layers too (read-only export, same chain).
    let runs = nbdinfo_map("qemu:allocation-depth", &s.uri("c1@v2"));
    assert_eq!(with_value(&runs, 1), vec![(0, 64 * K), (12 * M, 64 * K)]);
    s.stop();
}

#[test]
fn list_and_set_meta_context_with_qemu_names() {
    let s = Server::start(&[("vm", "8M")]);
    sspctl(&s.pool, &["snapshot", "create", "vm@a", "vm@b"]);
    let out = nbdsh(
        &s.uri("vm"),
        r#"
import nbd, sys
h = nbd.NBD()
h.set_opt_mode(True)
h.connect_uri(sys.argv[1])
def ls(qs):
    h.clear_meta_contexts()
    for q in qs:
        h.add_meta_context(q)
    got = []
    h.opt_list_meta_context(lambda c: got.append(c))
    return ",".join(got)
print(ls(["qemu:"]))
print(ls(["qemu:dirty-bitmap:"]))
print(ls(["qemu:allocation-depth", "qemu:dirty-bitmap:vm@b", "qemu:nope", "qemu:dirty-bitmap:vm@zz"]))
print(ls(["ssp:changed:"]))
h.opt_abort()

# SET: unknown qemu: names are simply not selected.
h = nbd.NBD()
for c in ["qemu:dirty-bitmap:vm@a", "qemu:nope", "qemu:allocation-depth", "qemu:dirty-bitmap:"]:
    h.add_meta_context(c)
h.connect_uri(sys.argv[1])
print(h.can_meta_context("qemu:dirty-bitmap:vm@a"), h.can_meta_context("qemu:allocation-depth"),
      h.can_meta_context("qemu:nope"), h.can_meta_context("qemu:dirty-bitmap:"),
      h.can_meta_context("base:allocation"))
seen = {}
def cb(ctx, off, ents, err):
    seen[ctx] = list(ents)
    return 0
h.block_status(8 << 20, 0, cb)
print(sorted(seen))
print(seen["qemu:allocation-depth"], seen["qemu:dirty-bitmap:vm@a"])
"#,
    );
    let l: Vec<&str> = out.lines().collect();
    assert_eq!(
        l[0],
        "qemu:allocation-depth,qemu:dirty-bitmap:vm@a,qemu:dirty-bitmap:vm@b"
    );
    assert_eq!(l[1], "qemu:dirty-bitmap:vm@a,qemu:dirty-bitmap:vm@b");
    assert_eq!(l[2], "qemu:allocation-depth,qemu:dirty-bitmap:vm@b");
    assert_eq!(l[3], "ssp:changed:vm@a,ssp:changed:vm@b");
    assert_eq!(l[4], "True True False False False");
    assert_eq!(l[5], "['qemu:allocation-depth', 'qemu:dirty-bitmap:vm@a']");
    assert_eq!(l[6], format!("[{}, 0] [{}, 0]", 8 * M, 8 * M));
    // A snapshot's export has no dirty bitmap of itself, but one of its LU and siblings.
    let out = nbdsh(
        &s.uri("vm@a"),
        r#"
import nbd, sys
h = nbd.NBD()
h.set_opt_mode(True)
h.connect_uri(sys.argv[1])
h.add_meta_context("qemu:dirty-bitmap:")
got = []
h.opt_list_meta_context(lambda c: got.append(c))
print(",".join(got))
h.opt_abort()
"#,
    );
    assert_eq!(out.trim(), "qemu:dirty-bitmap:vm,qemu:dirty-bitmap:vm@b");
    s.stop();
}
