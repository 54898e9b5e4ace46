//! Snapshot retention through sspctl against a real sspd and offline: `snapshot prune`
//! (--keep, --older-than, --dry-run; clone-needed and held snapshots kept with reasons),
//! holds (hold, release, holds; a held snapshot refuses removal) and the undo-snapshot limit of
//! rollback (--no-undo, --keep-undo, `snapshot keep-undo`).

mod common;

use common::server::*;
use serde_json::Value;
use std::path::Path;

fn snaps(pool: &Path) -> Vec<String> {
    sspctl(pool, &["snapshot", "list", "vm", "-H", "-o", "name"])
        .lines()
        .map(str::to_owned)
        .collect()
}

/// (name, action, reason) of each prune row.
fn rows(v: &Value) -> Vec<(String, String, String)> {
    v["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_owned(),
                r["action"].as_str().unwrap().to_owned(),
                r["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn row(n: &str, a: &str, r: &str) -> (String, String, String) {
    (n.into(), a.into(), r.into())
}

/// `sspctl ... --json` that fails: its error object (stdout) and exit code.
fn json_error(pool: &Path, args: &[&str]) -> String {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_sspctl"))
        .arg("--pool")
        .arg(pool)
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{args:?} should fail");
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    v["error"].as_str().unwrap().to_owned()
}

#[test]
fn prune_keeps_newest_young_cloned_and_held_snapshots() {
    let s = Server::start(&[("vm", "8M")]);
    let p = &s.pool;
    for n in ["s1", "s2", "s3"] {
        sspctl(p, &["snapshot", "create", &format!("vm@{n}")]);
    }
    sspctl(p, &["clone", "vm@s1", "c1"]);
    sspctl(p, &["snapshot", "hold", "vm@s2", "backup"]);
    std::thread::sleep(std::time::Duration::from_millis(2500));
    for n in ["s4", "s5"] {
        sspctl(p, &["snapshot", "create", &format!("vm@{n}")]);
    }
    let all: Vec<String> = ["s1", "s2", "s3", "s4", "s5"]
        .iter()
        .map(|n| format!("vm@{n}"))
        .collect();

    // Dry run: a plan, nothing removed.
    let v = sspctl_json(p, &["snapshot", "prune", "vm", "--keep", "1", "--dry-run"]);
    assert_eq!(v["dry_run"], true);
    assert_eq!(
        rows(&v),
        [
            row("vm@s1", "keep", "clone c1 was made from it"),
            row("vm@s2", "keep", "held: backup"),
            row("vm@s3", "remove", ""),
            row("vm@s4", "remove", ""),
            row("vm@s5", "keep", "one of the 1 newest"),
        ]
    );
    assert_eq!(snaps(p), all);
    let text = sspctl(p, &["snapshot", "prune", "vm", "--keep", "1", "--dry-run"]);
    assert!(text.starts_with("NAME"), "{text}");
    assert!(
        text.contains("2 snapshot(s) of vm would be removed, 3 kept (dry run)"),
        "{text}"
    );
    // Script-friendly columns, as every listing has them.
    let cols = sspctl(
        p,
        &[
            "snapshot",
            "prune",
            "vm",
            "--keep",
            "1",
            "--dry-run",
            "-H",
            "-o",
            "name,action",
        ],
    );
    assert!(
        cols.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["vm@s4", "remove"]),
        "{cols}"
    );
    assert!(!cols.contains("NAME"), "{cols}");

    // --older-than: s4 is too young to go.
    let v = sspctl_json(
        p,
        &[
            "snapshot",
            "prune",
            "vm",
            "--keep",
            "1",
            "--older-than",
            "2s",
        ],
    );
    assert_eq!(
        rows(&v),
        [
            row("vm@s1", "keep", "clone c1 was made from it"),
            row("vm@s2", "keep", "held: backup"),
            row("vm@s3", "removed", ""),
            row("vm@s4", "keep", "newer than 2s"),
            row("vm@s5", "keep", "one of the 1 newest"),
        ]
    );
    assert!(v["snapshots"][2]["freed_blocks"].is_u64());
    assert_eq!(snaps(p), ["vm@s1", "vm@s2", "vm@s4", "vm@s5"]);

    // Without --older-than, everything beyond the newest that nothing needs.
    let v = sspctl_json(p, &["snapshot", "prune", "vm", "--keep", "1"]);
    assert_eq!(
        rows(&v)
            .iter()
            .filter(|r| r.1 == "removed")
            .map(|r| r.0.as_str())
            .collect::<Vec<_>>(),
        ["vm@s4"]
    );
    assert_eq!(snaps(p), ["vm@s1", "vm@s2", "vm@s5"]);
    // The clone still reads; releasing the hold lets prune take s2.
    run("qemu-io", &["-f", "raw", "-c", "read 0 4k", &s.uri("c1")]);
    sspctl(p, &["snapshot", "release", "vm@s2", "backup"]);
    let v = sspctl_json(p, &["snapshot", "prune", "vm", "--keep", "1"]);
    assert_eq!(rows(&v)[1], row("vm@s2", "removed", ""));
    assert_eq!(snaps(p), ["vm@s1", "vm@s5"]);

    // Bad input: clear errors, nothing removed.
    let e = sspctl_fails(
        p,
        &[
            "snapshot",
            "prune",
            "vm",
            "--keep",
            "1",
            "--older-than",
            "soon",
        ],
    );
    assert!(e.contains("bad duration"), "{e}");
    let e = sspctl_fails(p, &["snapshot", "prune", "vm"]);
    assert!(e.contains("--keep"), "{e}");
    assert!(json_error(p, &["snapshot", "prune", "nope", "--keep", "1"]).contains("nope"));
    assert!(json_error(p, &["snapshot", "prune", "vm@s5", "--keep", "1"]).contains("snapshot"));
    assert_eq!(snaps(p), ["vm@s1", "vm@s5"]);

    // A snapshot a client has open is kept, with who has it.
    sspctl(p, &["snapshot", "create", "vm@s6"]);
    let mut client = std::process::Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import nbd, sys, time\nh = nbd.NBD()\nh.connect_uri(sys.argv[1])\nprint('up', flush=True)\ntime.sleep(60)",
            &s.uri("vm@s6"),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(client.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "up");
    let v = sspctl_json(p, &["snapshot", "prune", "vm", "--keep", "0"]);
    client.kill().unwrap();
    client.wait().unwrap();
    let r = rows(&v);
    assert_eq!(r[0], row("vm@s1", "keep", "clone c1 was made from it"));
    assert_eq!(r[1], row("vm@s5", "removed", ""));
    assert_eq!(r[2].1, "keep");
    assert!(
        r[2].2.starts_with("open by 1 client(s): 127.0.0.1:"),
        "{r:?}"
    );
    // Removing a clone's origin by hand says that the clone keeps working.
    let out = sspctl(p, &["snapshot", "rm", "vm@s1"]);
    assert!(out.contains("vm@s1 was the origin of clone(s) c1"), "{out}");
    run("qemu-io", &["-f", "raw", "-c", "read 0 4k", &s.uri("c1")]);
    s.stop();
}

#[test]
fn holds_block_removal_online_and_offline() {
    let dir = tempfile::tempdir().unwrap();
    let pool = make_pool(dir.path(), &[("vm", "8M")]);
    let p = &pool;
    // Offline.
    sspctl(p, &["snapshot", "create", "vm@a", "vm@b"]);
    sspctl(p, &["snapshot", "hold", "vm@a", "backup"]);
    sspctl(p, &["snapshot", "hold", "vm@a", "send:peer1"]);
    let v = sspctl_json(p, &["snapshot", "holds", "vm@a"]);
    let tags: Vec<&str> = v["holds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["tag"].as_str().unwrap())
        .collect();
    assert_eq!(tags, ["backup", "send:peer1"]);
    let cols = sspctl(p, &["snapshot", "holds", "vm@a", "-H", "-o", "tag"]);
    assert_eq!(
        cols.lines().map(str::trim).collect::<Vec<_>>(),
        ["backup", "send:peer1"]
    );
    assert!(v["holds"][0]["since"].as_str().unwrap().ends_with('Z'));
    let e = json_error(p, &["snapshot", "rm", "vm@a"]);
    assert!(
        e.contains("vm@a is held") && e.contains("backup, send:peer1"),
        "{e}"
    );
    assert!(json_error(p, &["snapshot", "hold", "vm@a", "backup"]).contains("already"));
    assert!(json_error(p, &["snapshot", "hold", "vm", "x"]).contains("not a snapshot"));
    assert!(json_error(p, &["snapshot", "hold", "vm@a", "a b"]).contains("bad hold tag"));
    assert!(json_error(p, &["snapshot", "release", "vm@b", "backup"]).contains("no hold"));
    assert!(sspctl(p, &["snapshot", "holds", "vm@b"]).contains("vm@b has no holds"));
    assert_eq!(snaps(p), ["vm@a", "vm@b"]);

    // Online: the holds made offline are there; the same refusals; release and remove.
    let s = Server::serve(pool.clone(), dir);
    let e = json_error(p, &["snapshot", "rm", "vm@a", "--force"]);
    assert!(e.contains("backup, send:peer1"), "{e}");
    let out = sspctl(p, &["snapshot", "release", "vm@a", "backup"]);
    assert!(
        out.contains("send:peer1") && !out.contains("backup"),
        "{out}"
    );
    assert!(json_error(p, &["snapshot", "rm", "vm@a"]).contains("tags: send:peer1"));
    sspctl(p, &["snapshot", "hold", "vm@b", "keep"]);
    sspctl(p, &["snapshot", "release", "vm@a", "send:peer1"]);
    sspctl(p, &["snapshot", "rm", "vm@a"]);
    assert_eq!(snaps(p), ["vm@b"]);
    // A snapshot made again under a held name's old name starts without holds.
    sspctl(p, &["snapshot", "create", "vm@a"]);
    assert!(sspctl(p, &["snapshot", "holds", "vm@a"]).contains("no holds"));
    let (_, dir) = s.stop_keep();
    // Offline again: the hold placed online is kept.
    assert!(json_error(p, &["snapshot", "rm", "vm@b"]).contains("tags: keep"));
    assert!(dir.path().join("pool/snapshot-holds.json").exists());
}

#[test]
fn rollback_keeps_a_bounded_number_of_undo_snapshots() {
    let s = Server::start(&[("vm", "8M")]);
    let pool = s.pool.clone();
    let p = &pool;
    sspctl(p, &["snapshot", "create", "vm@base"]);
    let undos = |p: &Path| -> Vec<String> {
        snaps(p)
            .into_iter()
            .filter(|n| n.starts_with("vm@undo-"))
            .collect()
    };
    assert_eq!(
        sspctl_json(p, &["snapshot", "keep-undo"])["keep_undo"],
        3,
        "default limit"
    );
    let mut taken = Vec::new();
    for _ in 0..5 {
        let v = sspctl_json(p, &["snapshot", "rollback", "vm@base"]);
        taken.push(v["undo_snapshot"].as_str().unwrap().to_owned());
    }
    // The three newest stay.
    assert_eq!(undos(p), taken[2..]);
    // --no-undo: none taken, none of the others removed.
    let v = sspctl_json(p, &["snapshot", "rollback", "vm@base", "--no-undo"]);
    assert_eq!(v["undo_snapshot"], "");
    assert_eq!(undos(p), taken[2..]);
    let text = sspctl(p, &["snapshot", "rollback", "vm@base", "--no-undo"]);
    assert!(text.contains("no undo snapshot kept"), "{text}");
    // A held undo snapshot stays beyond the limit.
    sspctl(p, &["snapshot", "hold", &taken[2], "audit"]);
    // --keep-undo for one rollback.
    let v = sspctl_json(p, &["snapshot", "rollback", "vm@base", "--keep-undo", "1"]);
    let newest = v["undo_snapshot"].as_str().unwrap().to_owned();
    let pruned: Vec<&str> = v["pruned"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect();
    assert_eq!(pruned, [taken[3].as_str(), taken[4].as_str()]);
    assert_eq!(undos(p), [taken[2].clone(), newest.clone()]);
    // The pool setting, kept in the pool directory.
    sspctl(p, &["snapshot", "keep-undo", "0"]);
    let v = sspctl_json(p, &["snapshot", "rollback", "vm@base"]);
    assert_eq!(v["undo_snapshot"], "");
    assert_eq!(undos(p), [taken[2].clone()]);
    let (_, dir) = s.stop_keep();
    assert_eq!(sspctl_json(p, &["snapshot", "keep-undo"])["keep_undo"], 0);
    // Offline rollbacks follow it too.
    sspctl(p, &["snapshot", "keep-undo", "1"]);
    sspctl(p, &["snapshot", "release", &taken[2], "audit"]);
    for _ in 0..2 {
        sspctl(p, &["snapshot", "rollback", "vm@base"]);
    }
    assert_eq!(undos(p).len(), 1);
    assert_eq!(snaps(p).len(), 2);
    drop(dir);
}
