//! Thick LUs through sspd and sspctl: a thick LU's writes succeed in a pool thin LUs filled up,
//! reservations show in `pool status` and `lu list`, and whatever would raise a reservation
//! past what the pool can hold is refused with the numbers.

mod common;
use common::server::*;
use std::path::Path;

/// A pool on one sparse PV of `mib` MiB, served by sspd.
fn serve_pool(mib: u64) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let pool = dir.path().join("pool");
    let pv = format!("{}:{mib}M", dir.path().join("pv0.img").display());
    sspctl(&pool, &["pool", "create", "--pv", &pv]);
    Server::serve(pool, dir)
}

fn lu(pool: &Path, name: &str) -> serde_json::Value {
    let v = sspctl_json(pool, &["lu", "list"]);
    v.as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == name)
        .unwrap_or_else(|| panic!("no LU {name} in {v}"))
        .clone()
}

fn reserved(pool: &Path) -> u64 {
    sspctl_json(pool, &["pool", "status"])["reserved_bytes"]
        .as_u64()
        .unwrap()
}

/// What the pool can still reserve, in MiB, read from a refusal's message.
fn reservable_mib(pool: &Path) -> u64 {
    let err = sspctl_fails(
        pool,
        &["lu", "create", "probe", "--size", "100T", "--thick"],
    );
    let tail = err
        .split("only ")
        .nth(1)
        .unwrap_or_else(|| panic!("no figure in {err}"));
    tail.split(' ').next().unwrap().parse().unwrap()
}

/// Write 1 MiB chunks of `byte` to `export` from `first_mib` on until the server refuses one;
/// the number written and the error.
fn fill_until_refused(s: &Server, export: &str, max_mib: u64) -> (u64, String) {
    let out = nbdsh(
        &s.uri(export),
        &format!(
            r#"
import nbd, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
buf = bytearray(b"\x5a" * (1 << 20))
n = 0
err = "none"
while n < {max_mib}:
    try:
        h.pwrite(buf, n << 20)
    except nbd.Error as e:
        err = str(e)
        break
    n += 1
try:
    h.flush()
except nbd.Error as e:
    pass
print(n)
print(err)
"#
        ),
    );
    let mut lines = out.lines();
    let n = lines.next().unwrap().parse().unwrap();
    (n, lines.next().unwrap_or("").to_owned())
}

#[test]
fn a_thick_lu_writes_all_of_itself_in_a_pool_thin_lus_filled() {
    let s = serve_pool(256);
    let out = sspctl(&s.pool, &["lu", "create", "db", "--size", "32M", "--thick"]);
    assert!(out.contains("THICK"), "{out}");
    assert_eq!(lu(&s.pool, "db")["provision"], "THICK");
    assert_eq!(lu(&s.pool, "db")["reserved_bytes"], 32 << 20);
    assert_eq!(reserved(&s.pool), 32 << 20);
    let text = sspctl(&s.pool, &["pool", "status"]);
    assert!(text.contains("Reserved(MB):      32"), "{text}");

    // A thin LU larger than the pool fills it until the server refuses with ENOSPC.
    sspctl(&s.pool, &["lu", "create", "big", "--size", "1G"]);
    assert_eq!(lu(&s.pool, "big")["provision"], "THIN");
    let (filled, err) = fill_until_refused(&s, "big", 1024);
    assert!(
        err.contains("ENOSPC") || err.contains("No space"),
        "thin writes stopped with {err:?} after {filled} MiB"
    );
    assert!(filled > 64, "only {filled} MiB of thin data fit");

    // Every block of the thick LU can still be written.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("db.raw");
    random_file(&data, 32 << 20);
    let d = data.to_str().unwrap();
    run(
        "qemu-img",
        &["convert", "-n", "-f", "raw", "-O", "raw", d, &s.uri("db")],
    );
    run(
        "qemu-img",
        &["compare", "-f", "raw", "-F", "raw", d, &s.uri("db")],
    );
    // Written in full, it owns every block: nothing is left to reserve.
    assert_eq!(lu(&s.pool, "db")["reserved_bytes"], 0);
    assert_eq!(reserved(&s.pool), 0);
    // ... and overwriting it still works in the full pool.
    run(
        "qemu-img",
        &["convert", "-n", "-f", "raw", "-O", "raw", d, &s.uri("db")],
    );
    // What the reservation no longer needs goes to thin LUs; the pool fills up again, and
    // the thick LU can still overwrite all of itself.
    let (_, err) = fill_until_refused(&s, "big", 1024);
    assert!(err.contains("ENOSPC") || err.contains("No space"), "{err}");
    let flipped: Vec<u8> = std::fs::read(&data).unwrap().iter().map(|b| !b).collect();
    std::fs::write(&data, flipped).unwrap();
    run(
        "qemu-img",
        &["convert", "-n", "-f", "raw", "-O", "raw", d, &s.uri("db")],
    );
    run(
        "qemu-img",
        &["compare", "-f", "raw", "-F", "raw", d, &s.uri("db")],
    );
    assert_pool_check(&s.pool);
    let (_, dir) = s.stop_keep();
    // Offline, after a restart, the LU is still thick.
    let pool = dir.path().join("pool");
    assert_eq!(lu(&pool, "db")["provision"], "THICK");
}

#[test]
fn raising_a_reservation_past_the_pool_is_refused_with_the_numbers() {
    let s = serve_pool(256);
    let p = s.pool.clone();
    let err = sspctl_fails(&p, &["lu", "create", "huge", "--size", "10G", "--thick"]);
    assert!(
        err.contains("thick LU huge") && err.contains("can be reserved") && err.contains("MiB"),
        "{err}"
    );
    // Nothing was left behind.
    let list = sspctl_json(&p, &["lu", "list"]);
    assert!(list.as_array().unwrap().is_empty(), "{list}");

    // A thin LU made thick reserves its size less what it owns; made thin again, nothing.
    sspctl(&p, &["lu", "create", "t", "--size", "64M"]);
    nbdsh(
        &s.uri("t"),
        r#"
import nbd, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
h.pwrite(b"\x01" * (8 << 20), 0)
h.flush()
"#,
    );
    sspctl(&p, &["lu", "modify", "t", "--thick"]);
    assert_eq!(lu(&p, "t")["provision"], "THICK");
    assert_eq!(reserved(&p), 56 << 20);
    sspctl(&p, &["lu", "modify", "t", "--thin"]);
    assert_eq!(reserved(&p), 0);
    sspctl(&p, &["lu", "modify", "t", "--thick"]);

    // A snapshot shares every block the LU owned: it needs them reserved again.
    let room = reservable_mib(&p);
    assert!(room > 24, "only {room} MiB reservable");
    let fill = format!("{}M", room - 4);
    sspctl(&p, &["lu", "create", "filler", "--size", &fill, "--thick"]);
    let err = sspctl_fails(&p, &["snapshot", "create", "t@s1"]);
    assert!(err.contains("snapshotting a thick LU needs 8 MiB"), "{err}");
    let err = sspctl_fails(&p, &["lu", "resize", "t", "--size", "128M"]);
    assert!(err.contains("growing thick LU t"), "{err}");
    // With the filler thin, both go through.
    sspctl(&p, &["lu", "modify", "filler", "--thin"]);
    sspctl(&p, &["snapshot", "create", "t@s1"]);
    assert_eq!(lu(&p, "t")["reserved_bytes"], 64 << 20);
    sspctl(&p, &["lu", "resize", "t", "--size", "80M"]);
    assert_eq!(lu(&p, "t")["reserved_bytes"], 80 << 20);
    // Snapshots are always thin, and a clone of a thick LU's snapshot starts thin.
    let err = sspctl_fails(&p, &["lu", "modify", "t@s1", "--thick"]);
    assert!(err.contains("always thin"), "{err}");
    sspctl(&p, &["clone", "t@s1", "c1"]);
    assert_eq!(lu(&p, "c1")["provision"], "THIN");
    // `lu modify` needs one of the two.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_sspctl"))
        .args(["--pool", p.to_str().unwrap(), "lu", "modify", "t"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert_pool_check(&p);

    // After kill -9 the journal replays the provisioning changes.
    let mut s = s;
    s.child.kill().unwrap();
    s.child.wait().unwrap();
    let (_, dir) = s.stop_keep();
    let pool = dir.path().join("pool");
    assert_eq!(lu(&pool, "t")["provision"], "THICK");
    assert_eq!(lu(&pool, "filler")["provision"], "THIN");
    assert_eq!(reserved(&pool), 80 << 20);
}
