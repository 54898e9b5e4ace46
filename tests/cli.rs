//! sspctl through its real interface: a pool in a temp directory, commands as a user types them.

use std::process::{Command, Output};

fn sspctl(pool: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sspctl"))
        .arg("--pool")
        .arg(pool)
        .args(args)
        .output()
        .unwrap()
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
}

/// A failure must be one clear line on stderr and a non-zero exit.
fn fails(o: &Output, needle: &str) {
    assert!(
        !o.status.success(),
        "unexpected success: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(needle), "stderr {err:?} lacks {needle:?}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err:?}");
}

/// A value clap's parser refuses: clap's own report (the error, then the usage), exit code 2.
fn usage_fails(o: &Output, needle: &str) {
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.lines().next().is_some_and(|l| l.contains(needle)),
        "stderr {err:?} lacks {needle:?} on its first line"
    );
    assert!(err.contains("try '--help'"), "{err:?}");
}

#[test]
fn lu_lifecycle_and_listing() {
    let t = tempfile::tempdir().unwrap();
    let pool = t.path().join("pool");
    let pv0 = format!("{}:256M", t.path().join("pv0.img").display());
    let pv1 = format!("{}:128M", t.path().join("pv1.img").display());
    ok(&sspctl(
        &pool,
        &[
            "pool", "create", "--name", "demo", "--pv", &pv0, "--pv", &pv1,
        ],
    ));
    ok(&sspctl(&pool, &["lu", "create", "vm1", "--size", "10G"]));
    ok(&sspctl(&pool, &["lu", "create", "vm2", "--size", "512M"]));
    let list = ok(&sspctl(&pool, &["lu", "list"]));
    assert!(
        list.contains("POOL_NAME: demo") && list.contains("vm1") && list.contains("10GiB"),
        "{list}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&ok(&sspctl(&pool, &["lu", "list", "--json"]))).unwrap();
    let lus = json.as_array().unwrap();
    assert_eq!(lus.len(), 2);
    assert_eq!(lus[0]["name"], "vm1");
    assert_eq!(lus[0]["size"], 10u64 << 30);
    assert_eq!(lus[0]["unused_bytes"], 10u64 << 30);
    assert_eq!(lus[0]["udid"].as_str().unwrap().len(), 32);

    // Import data, see the space used, export it back identical.
    let src = t.path().join("src.bin");
    let mut data = vec![0u8; 3 << 20];
    for (i, b) in data.iter_mut().enumerate().take(2 << 20) {
        *b = (i % 253) as u8;
    }
    std::fs::write(&src, &data).unwrap();
    ok(&sspctl(
        &pool,
        &["lu", "import", "vm2", src.to_str().unwrap()],
    ));
    let json: serde_json::Value =
        serde_json::from_str(&ok(&sspctl(&pool, &["lu", "list", "--json"]))).unwrap();
    assert_eq!(json[1]["mapped_blocks"], 512, "zero blocks stay thin");
    let dst = t.path().join("dst.bin");
    ok(&sspctl(
        &pool,
        &["lu", "export", "vm2", dst.to_str().unwrap()],
    ));
    let back = std::fs::read(&dst).unwrap();
    assert_eq!(back.len(), 512 << 20);
    assert_eq!(&back[..data.len()], &data[..]);
    assert!(back[data.len()..].iter().all(|&b| b == 0));

    ok(&sspctl(&pool, &["lu", "resize", "vm2", "--size", "1G"]));
    let st: serde_json::Value =
        serde_json::from_str(&ok(&sspctl(&pool, &["pool", "status", "--json"]))).unwrap();
    assert_eq!(st["mirror_state"], "NOT_MIRRORED");
    assert_eq!(st["pvs"].as_array().unwrap().len(), 2);
    assert_eq!(
        st["provisioned_bytes"].as_u64().unwrap(),
        (10u64 << 30) + (1 << 30)
    );
    assert!(st["used_bytes"].as_u64().unwrap() >= 2 << 20);
    let text = ok(&sspctl(&pool, &["pool", "status"]));
    assert!(text.contains("Mirror State:      NOT_MIRRORED"), "{text}");
    ok(&sspctl(&pool, &["lu", "remove", "vm2"]));
    let check = ok(&sspctl(&pool, &["check"]));
    assert!(check.contains("OK"), "{check}");
    let json: serde_json::Value =
        serde_json::from_str(&ok(&sspctl(&pool, &["check", "--json"]))).unwrap();
    assert_eq!(json["errors"].as_array().unwrap().len(), 0);
}

#[test]
fn bad_input_is_one_clear_line() {
    let t = tempfile::tempdir().unwrap();
    let pool = t.path().join("pool");
    let pv = format!("{}:64M", t.path().join("pv0.img").display());
    fails(&sspctl(&pool, &["lu", "list"]), "not a pool directory");
    usage_fails(
        &sspctl(
            &pool,
            &[
                "pool",
                "create",
                "--pv",
                &format!("{}:10Q", t.path().join("x").display()),
            ],
        ),
        "10Q",
    );
    fails(
        &sspctl(
            &pool,
            &[
                "pool",
                "create",
                "--pv",
                &format!("{}:1M", t.path().join("tiny").display()),
            ],
        ),
        "too small",
    );
    ok(&sspctl(&pool, &["pool", "create", "--pv", &pv]));
    fails(&sspctl(&pool, &["pool", "create", "--pv", &pv]), "already");
    usage_fails(
        &sspctl(&pool, &["lu", "create", "a", "--size", "10Q"]),
        "10Q",
    );
    ok(&sspctl(&pool, &["lu", "create", "a", "--size", "1G"]));
    fails(
        &sspctl(&pool, &["lu", "create", "a", "--size", "1G"]),
        "already exists",
    );
    fails(
        &sspctl(&pool, &["lu", "create", "b", "--size", "2P"]),
        "1 PiB",
    );
    fails(
        &sspctl(&pool, &["lu", "create", "x@y", "--size", "1G"]),
        "may not contain",
    );
    fails(
        &sspctl(&pool, &["lu", "remove", "nosuch"]),
        "no such LU: nosuch",
    );
    fails(
        &sspctl(&pool, &["lu", "resize", "nosuch", "--size", "1G"]),
        "no such LU",
    );
    // The pool is untouched by all of that.
    let check = ok(&sspctl(&pool, &["check"]));
    assert!(check.contains("OK"));
}

#[test]
fn second_process_gets_a_lock_error() {
    let t = tempfile::tempdir().unwrap();
    let pool = t.path().join("pool");
    let pv = format!("{}:64M", t.path().join("pv0.img").display());
    ok(&sspctl(&pool, &["pool", "create", "--pv", &pv]));
    let held = ssp::pool::dir::PoolDir::open(&pool, ssp::pool::Options::default()).unwrap();
    fails(&sspctl(&pool, &["lu", "list"]), "in use by another process");
    drop(held);
    // A child another test of this process is spawning holds copies of our descriptors (and so
    // our flocks) until its exec closes them: allow that window to pass.
    let mut out = sspctl(&pool, &["lu", "list"]);
    for _ in 0..20 {
        if out.status.success() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        out = sspctl(&pool, &["lu", "list"]);
    }
    ok(&out);
}

#[test]
fn check_reports_a_flipped_data_bit_with_exit_1() {
    let t = tempfile::tempdir().unwrap();
    let pool = t.path().join("pool");
    let pvpath = t.path().join("pv0.img");
    ok(&sspctl(
        &pool,
        &[
            "pool",
            "create",
            "--pv",
            &format!("{}:64M", pvpath.display()),
        ],
    ));
    ok(&sspctl(&pool, &["lu", "create", "a", "--size", "1M"]));
    let src = t.path().join("one.bin");
    std::fs::write(&src, vec![0xabu8; 4096]).unwrap();
    ok(&sspctl(
        &pool,
        &["lu", "import", "a", src.to_str().unwrap()],
    ));
    let mut img = std::fs::read(&pvpath).unwrap();
    let off = img
        .chunks(4096)
        .position(|c| c.iter().all(|&b| b == 0xab))
        .unwrap()
        * 4096;
    img[off + 7] ^= 0x20;
    std::fs::write(&pvpath, &img).unwrap();
    let o = sspctl(&pool, &["check"]);
    assert!(!o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("data block 0 of a") && out.contains(&format!("at offset {off}")),
        "{out}"
    );
    assert!(out.contains("1 errors"), "{out}");
}
