//! `sspctl pool import` / `pool export`: a pool directory rebuilt from the PVs alone (every LU,
//! snapshot, image and clone byte for byte, client maps, clone origins and alerts restored from
//! the copy on the PVs, `check` clean); export then import into another directory; refusals
//! (not exported without --force, bad or foreign PVs, an existing pool, a served pool).

mod common;

use common::server::*;
use std::path::{Path, PathBuf};

/// Every volume's bytes, through `sspctl lu export`.
fn contents(pool: &Path, names: &[&str], tmp: &Path) -> Vec<Vec<u8>> {
    names
        .iter()
        .map(|n| {
            let f = tmp.join(format!("{}.out", n.replace('@', "_")));
            sspctl(pool, &["lu", "export", n, f.to_str().unwrap()]);
            let b = std::fs::read(&f).unwrap();
            std::fs::remove_file(&f).unwrap();
            b
        })
        .collect()
}

fn lu_maps(pool: &Path, name: &str) -> String {
    let l = sspctl_json(pool, &["lu", "list"]);
    let lu = l
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {l}"))
        .clone();
    lu["maps"].to_string()
}

/// A two-PV pool with an LU, a snapshot, an image, its snapshot, a clone (written), maps and an
/// alert: (pool dir, PV paths, volume names).
fn populated(dir: &Path) -> (PathBuf, Vec<PathBuf>) {
    let pool = dir.join("pool");
    let pvs = vec![dir.join("pv0.img"), dir.join("pv1.img")];
    sspctl(
        &pool,
        &[
            "pool",
            "create",
            "--name",
            "tank",
            "--journal-mb",
            "1",
            "--pv",
            &format!("{}:64M", pvs[0].display()),
            "--pv",
            &format!("{}:64M", pvs[1].display()),
        ],
    );
    sspctl(&pool, &["lu", "create", "vm1", "--size", "8M"]);
    let data = dir.join("data.raw");
    random_file(&data, 6 << 20);
    sspctl(&pool, &["lu", "import", "vm1", data.to_str().unwrap()]);
    sspctl(&pool, &["snapshot", "create", "vm1@s1"]);
    random_file(&data, 1 << 20);
    sspctl(
        &pool,
        &[
            "lu",
            "import",
            "vm1",
            data.to_str().unwrap(),
            "--offset",
            "1M",
        ],
    );
    sspctl(&pool, &["image", "capture", "vm1", "img1"]);
    sspctl(&pool, &["snapshot", "create", "img1@v1"]);
    sspctl(&pool, &["clone", "img1@v1", "c1"]);
    sspctl(&pool, &["lu", "map", "vm1", "--client", "uid:1000"]);
    sspctl(
        &pool,
        &["alert", "set", "--type", "threshold", "--value", "90"],
    );
    (pool, pvs)
}

const VOLUMES: &[&str] = &["vm1", "vm1@s1", "img1", "img1@v1", "c1"];

#[test]
fn import_after_directory_loss_restores_every_volume_and_the_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let (pool, pvs) = populated(dir.path());
    // Online changes reach the PVs' copy too: a map and a clone's write through sspd.
    let s = Server::serve(pool.clone(), tempfile::tempdir().unwrap());
    sspctl(&pool, &["lu", "map", "c1", "--client", "10.0.0.0/8"]);
    sspctl(&pool, &["lu", "map", "c1", "--client", "127.0.0.1"]);
    nbdsh(
        &s.uri("c1"),
        "import nbd,os,sys\nh=nbd.NBD(); h.connect_uri(sys.argv[1])\n\
         h.pwrite(os.urandom(65536), 3 << 20)\nh.flush()\n",
    );
    s.stop();
    let before = contents(&pool, VOLUMES, dir.path());
    let maps_vm1 = lu_maps(&pool, "vm1");
    let maps_c1 = lu_maps(&pool, "c1");
    assert!(maps_vm1.contains("uid:1000") && maps_c1.contains("10.0.0.0/8"));

    // The directory is lost; the PVs remain. Not exported: refused without --force.
    std::fs::remove_dir_all(&pool).unwrap();
    let (p0, p1) = (pvs[0].to_str().unwrap(), pvs[1].to_str().unwrap());
    let e = sspctl_fails(&pool, &["pool", "import", "--pv", p1, "--pv", p0]);
    assert!(
        e.contains("pool tank") && e.contains("not exported") && e.contains("--force"),
        "{e}"
    );
    assert!(!pool.join("ssp-pool.json").exists());
    // PVs in any order.
    let out = sspctl(
        &pool,
        &["pool", "import", "--pv", p1, "--pv", p0, "--force"],
    );
    assert!(
        out.contains("imported pool tank") && out.contains("forced"),
        "{out}"
    );
    assert!(
        out.contains("lu-maps.json") && out.contains("clone-origins.json"),
        "{out}"
    );
    assert_eq!(contents(&pool, VOLUMES, dir.path()), before);
    assert_eq!(lu_maps(&pool, "vm1"), maps_vm1);
    assert_eq!(lu_maps(&pool, "c1"), maps_c1);
    let st = sspctl(&pool, &["file", "stat", "c1"]);
    assert!(st.contains("img1@v1"), "clone origin: {st}");
    let a = sspctl_json(&pool, &["alert", "list"]);
    assert_eq!(
        (a[0]["type"].as_str(), a[0]["value"].as_u64()),
        (Some("threshold"), Some(90))
    );
    assert_pool_check(&pool);
    // It serves again, maps enforced: c1 is refused to a client that does not match.
    let s = Server::serve(pool.clone(), tempfile::tempdir().unwrap());
    let info = run("nbdinfo", &["--list", &s.uri("")]);
    assert!(
        info.contains("c1") && !info.contains("export-name: vm1"),
        "{info}"
    );
    s.stop();
}

#[test]
fn export_then_import_into_a_new_directory() {
    let dir = tempfile::tempdir().unwrap();
    let (pool, pvs) = populated(dir.path());
    let before = contents(&pool, VOLUMES, dir.path());
    // Refused while sspd serves the pool.
    let s = Server::serve(pool.clone(), tempfile::tempdir().unwrap());
    let e = sspctl_fails(&pool, &["pool", "export"]);
    assert!(e.contains("stop it first"), "{e}");
    s.stop();
    let out = sspctl(&pool, &["pool", "export"]);
    assert!(out.contains("exported pool tank"), "{out}");
    // The old directory no longer opens the pool.
    let e = sspctl_fails(&pool, &["lu", "list"]);
    assert!(e.contains("not a pool directory"), "{e}");

    let moved = dir.path().join("elsewhere/tank");
    let (p0, p1) = (pvs[0].to_str().unwrap(), pvs[1].to_str().unwrap());
    let out = sspctl(&moved, &["pool", "import", "--pv", p0, "--pv", p1]);
    assert!(
        out.contains("imported pool tank") && !out.contains("forced"),
        "{out}"
    );
    assert_eq!(contents(&moved, VOLUMES, dir.path()), before);
    assert!(lu_maps(&moved, "vm1").contains("uid:1000"));
    assert_pool_check(&moved);
    // Imported means in use here: a third directory needs --force again.
    let e = sspctl_fails(
        &dir.path().join("third"),
        &["pool", "import", "--pv", p0, "--pv", p1],
    );
    assert!(e.contains("not exported"), "{e}");
    // A pool already in the directory is never overwritten.
    let e = sspctl_fails(
        &moved,
        &["pool", "import", "--pv", p0, "--pv", p1, "--force"],
    );
    assert!(e.contains("already holds a pool"), "{e}");
}

#[test]
fn import_refuses_bad_and_foreign_pvs() {
    let dir = tempfile::tempdir().unwrap();
    let a = make_pool(&dir.path().join("a"), &[("x", "4M")]);
    let b = make_pool(&dir.path().join("b"), &[("y", "4M")]);
    sspctl(&a, &["pool", "export"]);
    sspctl(&b, &["pool", "export"]);
    let pa = dir.path().join("a/pv0.img");
    let pb = dir.path().join("b/pv0.img");
    let new = dir.path().join("new");
    let missing = dir.path().join("missing.img");
    let e = sspctl_fails(&new, &["pool", "import", "--pv", missing.to_str().unwrap()]);
    assert!(
        e.contains("cannot open PV") && e.contains("missing.img"),
        "{e}"
    );
    let junk = dir.path().join("junk.img");
    random_file(&junk, 1 << 20);
    let e = sspctl_fails(&new, &["pool", "import", "--pv", junk.to_str().unwrap()]);
    assert!(e.contains("is not a PV of an ssp pool"), "{e}");
    let e = sspctl_fails(
        &new,
        &[
            "pool",
            "import",
            "--pv",
            pa.to_str().unwrap(),
            "--pv",
            pb.to_str().unwrap(),
        ],
    );
    assert!(e.contains("belongs to another pool"), "{e}");
    let e = sspctl_fails(
        &new,
        &[
            "pool",
            "import",
            "--pv",
            pa.to_str().unwrap(),
            "--pv",
            pa.to_str().unwrap(),
        ],
    );
    assert!(e.contains("given twice"), "{e}");
    // Only some of a pool's PVs: refused when the pool opens, and nothing is left behind.
    let two = dir.path().join("two");
    let (t0, t1) = (dir.path().join("t0.img"), dir.path().join("t1.img"));
    sspctl(
        &two,
        &[
            "pool",
            "create",
            "--journal-mb",
            "1",
            "--pv",
            &format!("{}:64M", t0.display()),
            "--pv",
            &format!("{}:64M", t1.display()),
        ],
    );
    sspctl(&two, &["lu", "create", "z", "--size", "4M"]);
    sspctl(&two, &["lu", "map", "z", "--client", "uid:5"]);
    sspctl(&two, &["pool", "export"]);
    let e = sspctl_fails(&new, &["pool", "import", "--pv", t1.to_str().unwrap()]);
    assert!(e.contains("has 2 PVs but PV index 0 was not given"), "{e}");
    assert!(!new.join("ssp-pool.json").exists() && !new.join("lu-maps.json").exists());
    assert!(!new.join("ssp-pool.json").exists());
    // Each pool still imports on its own.
    sspctl(&new, &["pool", "import", "--pv", pa.to_str().unwrap()]);
    let l = sspctl(&new, &["lu", "list"]);
    assert!(l.contains('x') && !l.contains('y'), "{l}");
    // A PV the imported pool holds cannot be imported a second time meanwhile.
    let s = Server::serve(new.clone(), tempfile::tempdir().unwrap());
    let e = sspctl_fails(
        &dir.path().join("again"),
        &["pool", "import", "--pv", pa.to_str().unwrap(), "--force"],
    );
    assert!(e.contains("pv0.img"), "{e}");
    s.stop();
}

#[test]
fn a_damaged_copy_falls_back_to_the_previous_record() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let pool = make_pool(dir.path(), &[("x", "4M")]);
    // Record 1 (slot 1): the map; record 2 (slot 0): the export.
    sspctl(&pool, &["lu", "map", "x", "--client", "uid:7"]);
    sspctl(&pool, &["pool", "export"]);
    let pv = dir.path().join("pv0.img");
    // ssp-dump shows the copy, from the PV alone.
    let d = run(
        env!("CARGO_BIN_EXE_ssp-dump"),
        &["--json", pv.to_str().unwrap()],
    );
    let d: serde_json::Value = serde_json::from_str(&d).unwrap();
    let c = &d["directory_copy"];
    assert_eq!(
        (c["generation"].as_u64(), c["exported"].as_bool()),
        (Some(2), Some(true)),
        "{c}"
    );
    assert_eq!(c["files"][0]["name"], "lu-maps.json", "{c}");
    assert!(
        c["files"][0]["text"].as_str().unwrap().contains("uid:7"),
        "{c}"
    );
    // A 16 MiB journal puts the data area at 17 MiB: slot 0 at 17 MiB - 512 KiB.
    let f = std::fs::OpenOptions::new().write(true).open(&pv).unwrap();
    f.write_all_at(b"torn", (17 << 20) - (512 << 10) + 70)
        .unwrap();
    drop(f);
    let new = dir.path().join("new");
    let p = pv.to_str().unwrap();
    // The export record no longer verifies: the previous one (not exported) is what is left.
    let e = sspctl_fails(&new, &["pool", "import", "--pv", p]);
    assert!(e.contains("was not exported"), "{e}");
    sspctl(&new, &["pool", "import", "--pv", p, "--force"]);
    assert!(lu_maps(&new, "x").contains("uid:7"));
    assert_pool_check(&new);
}
