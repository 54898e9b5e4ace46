//! Large removals in slices through the real interfaces (sspd, sspctl, an NBD client): the
//! removal is immediate for clients (name free, listed nowhere) and the space comes back in
//! bounded slices in the background while other clients' requests keep completing; sspd killed
//! with SIGKILL mid-reclaim resumes it at the next start, with `check` passing throughout.

mod common;
use common::server::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn status(pool: &Path) -> Value {
    sspctl_json(pool, &["pool", "status"])
}

fn removing(pool: &Path) -> (u64, u64) {
    let st = status(pool);
    (
        st["removing_volumes"].as_u64().unwrap(),
        st["removing_bytes"].as_u64().unwrap(),
    )
}

fn lu_names(pool: &Path) -> Vec<String> {
    let v = sspctl_json(pool, &["lu", "list"]);
    let arr = v
        .as_array()
        .or_else(|| v["lus"].as_array())
        .unwrap_or_else(|| panic!("lu list: {v}"));
    arr.iter()
        .map(|l| l["name"].as_str().unwrap().to_owned())
        .collect()
}

const MB: u64 = 1 << 20;

/// A pool with LUs `big` (128 MiB, its first `fill` bytes random data) and `other` (16 MiB),
/// served by sspd with `extra` flags.
fn pool_with_big(fill: usize, extra: &[&str]) -> (Server, PathBuf) {
    serve_filled(&[("big", "128M"), ("other", "16M")], "big", fill, extra)
}

/// 200 write + flush + read-back rounds on `other`; prints the rounds that read back right.
const CLIENT: &str = r#"
import nbd, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
ok = 0
for i in range(200):
    b = bytes([i % 251 + 1]) * 4096
    h.pwrite(b, (i % 64) * 4096)
    h.flush()
    if h.pread(4096, (i % 64) * 4096) == b:
        ok += 1
h.shutdown()
print(ok)
"#;

/// `lu remove` of a 96 MiB LU returns at once: the name is free and the LU listed nowhere while
/// its space comes back slice by slice (at a reclaim rate slow enough to watch); another
/// client's writes, flushes and reads complete while the reclaim is under way; the accounting
/// only goes down and ends with the space back and `check` passing.
#[test]
fn large_remove_reclaims_in_slices_while_clients_run() {
    let fill = 96 * MB as usize;
    let (s, _) = pool_with_big(fill, &["--reclaim-rate", "12M"]);
    let pool = s.pool.clone();
    let used_full = status(&pool)["used_bytes"].as_u64().unwrap();
    assert!(used_full >= fill as u64, "{used_full}");
    assert_eq!(removing(&pool), (0, 0));

    sspctl(&pool, &["lu", "remove", "big"]);
    // Gone for clients at once: not listed, not exported, name free.
    assert!(!lu_names(&pool).contains(&"big".to_owned()));
    let (n, bytes) = removing(&pool);
    assert_eq!(n, 1);
    assert!(bytes > 0 && bytes <= fill as u64, "{bytes}");
    assert_eq!(status(&pool)["lus"].as_u64(), Some(1));

    // Another client's requests complete while reclaim is still going.
    let out = nbdsh(&s.uri("other"), CLIENT);
    assert_eq!(out.trim(), "200");
    let (n_mid, mid) = removing(&pool);
    assert!(
        n_mid == 1 && mid > 0,
        "the client's 200 rounds should finish before a rate-limited reclaim of 96 MiB"
    );
    assert_pool_check(&pool);

    // The name is free while the old LU's space is still being reclaimed.
    sspctl(&pool, &["lu", "create", "big", "--size", "8M"]);
    assert!(lu_names(&pool).contains(&"big".to_owned()));

    // Progress: what is left to reclaim only goes down, in several steps, to nothing.
    let mut seen = vec![mid];
    wait_for(60, "the reclaim to finish", || {
        let (n, b) = removing(&pool);
        if seen.last() != Some(&b) {
            seen.push(b);
        }
        n == 0
    });
    assert!(seen.windows(2).all(|w| w[1] <= w[0]), "{seen:?}");
    assert!(
        seen.len() >= 3,
        "reclaim should take several slices: {seen:?}"
    );
    let used = status(&pool)["used_bytes"].as_u64().unwrap();
    assert!(
        used + fill as u64 / 2 < used_full,
        "space not given back: {used} of {used_full}"
    );
    assert_pool_check(&pool);
    s.stop();
}

/// sspd killed (SIGKILL) while it reclaims a removed LU: the LU stays removed, `check` passes
/// on the pool as the crash left it, and the next sspd carries on and finishes the reclaim with
/// the other LU's data intact.
#[test]
fn reclaim_resumes_after_kill_9() {
    let fill = 64 * MB as usize;
    let (mut s, _) = pool_with_big(fill, &["--reclaim-rate", "8M"]);
    let pool = s.pool.clone();
    nbdsh(
        &s.uri("other"),
        "import nbd,sys\nh=nbd.NBD(); h.connect_uri(sys.argv[1])\n\
         h.pwrite(b'\\x5a' * 65536, 0); h.flush(); h.shutdown()\n",
    );
    sspctl(&pool, &["lu", "remove", "big"]);
    let (_, start) = removing(&pool);
    assert!(start > 0);
    // Wait for the first slices, then kill sspd mid-reclaim.
    wait_for(30, "a first reclaim slice", || removing(&pool).1 < start);
    let (n, left) = removing(&pool);
    assert!(n == 1 && left > 0, "reclaim finished too soon to test");
    s.child.kill().unwrap();
    s.child.wait().unwrap();
    let dir = s.dir.take().unwrap();
    drop(s);

    // Offline (read-only) as the crash left it: still being removed, not listed, consistent.
    let (n, after) = removing(&pool);
    assert_eq!(n, 1);
    assert!(after > 0 && after <= start, "{after} of {start}");
    assert!(!lu_names(&pool).contains(&"big".to_owned()));
    assert_pool_check(&pool);

    // The next sspd resumes and finishes it.
    let s = Server::serve_with(pool.clone(), dir, &["--reclaim-rate", "0"]);
    wait_for(60, "the resumed reclaim to finish", || {
        removing(&pool).0 == 0
    });
    assert_pool_check(&pool);
    let out = nbdsh(
        &s.uri("other"),
        "import nbd,sys\nh=nbd.NBD(); h.connect_uri(sys.argv[1])\n\
         print(h.pread(65536, 0) == b'\\x5a' * 65536); h.shutdown()\n",
    );
    assert_eq!(out.trim(), "True");
    s.stop();
}

/// `snapshot remove` and `image remove` go the same way: immediate for clients, reclaimed in
/// the background, with the LU the snapshot shared blocks with credited and `check` passing.
#[test]
fn snapshot_and_image_removal_reclaim_in_the_background() {
    let fill = 32 * MB as usize;
    let (s, _) = pool_with_big(fill, &[]);
    let pool = s.pool.clone();
    sspctl(&pool, &["snapshot", "create", "big@s1"]);
    // The LU overwrites half its data: the snapshot alone holds the old half.
    nbdsh(
        &s.uri("big"),
        "import nbd,sys\nh=nbd.NBD(); h.connect_uri(sys.argv[1])\n\
         for i in range(16):\n  h.pwrite(b'\\x11' * 1048576, i * 1048576)\n\
         h.flush(); h.shutdown()\n",
    );
    sspctl(&pool, &["image", "capture", "big@s1", "img"]);
    sspctl(&pool, &["snapshot", "remove", "big@s1"]);
    sspctl(&pool, &["image", "remove", "img"]);
    let snaps = sspctl_json(&pool, &["snapshot", "list"]).to_string();
    assert!(!snaps.contains("big@s1"), "{snaps}");
    wait_for(60, "the reclaim to finish", || removing(&pool).0 == 0);
    let lus = sspctl_json(&pool, &["lu", "list"]).to_string();
    assert!(lus.contains("\"big\""), "{lus}");
    let big = sspctl_json(&pool, &["lu", "list"]);
    let arr = big.as_array().or_else(|| big["lus"].as_array()).unwrap();
    let b = arr.iter().find(|l| l["name"] == "big").unwrap();
    // Every block of the LU is its own again.
    assert_eq!(b["mapped_blocks"], b["owned_blocks"], "{b}");
    assert_pool_check(&pool);
    s.stop();
}

/// `pv replace` of the only PV copies its segments in slices with the pool lock released
/// between them, at the resync rate: a client's writes and flushes keep completing while it
/// runs (progress, not timing: it copies ~100 MiB), and afterwards every byte reads back from the new PV, also
/// after a restart, with `check` passing.
#[test]
fn single_copy_pv_replace_copies_in_slices_while_a_writer_runs() {
    let fill = 96 * MB as usize;
    let (s, data) = pool_with_big(fill, &["--resync-rate", "48M"]);
    let pool = s.pool.clone();
    let dir = pool.parent().unwrap().to_owned();
    let w = Writer::start(&s, "other", 0, 4096);
    let mut replacer = std::process::Command::new(env!("CARGO_BIN_EXE_sspctl"))
        .arg("--pool")
        .arg(&pool)
        .args([
            "pv",
            "replace",
            dir.join("pv0.img").to_str().unwrap(),
            &format!("{}:512M", dir.join("pv1.img").display()),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The writer completes requests while the copy is under way: between the moments the new
    // PV holds 8 MiB and 72 MiB of the ~100 MiB copied (the copy's own progress, seen in the
    // new PV file's allocated bytes).
    use std::os::unix::fs::MetadataExt;
    let copied = || {
        std::fs::metadata(dir.join("pv1.img"))
            .map(|m| m.blocks() * 512)
            .unwrap_or(0)
    };
    let (mut from, mut to) = (None, None);
    let end = Instant::now() + Duration::from_secs(120);
    let st = loop {
        if let Some(st) = replacer.try_wait().unwrap() {
            break st;
        }
        let c = copied();
        if from.is_none() && c >= 8 * MB {
            from = Some(w.writes());
        }
        if to.is_none() && c >= 72 * MB {
            to = Some(w.writes());
        }
        assert!(Instant::now() < end, "pv replace did not finish");
        std::thread::sleep(Duration::from_millis(2));
    };
    assert!(st.success(), "pv replace failed");
    let (from, to) = (from.unwrap(), to.unwrap());
    eprintln!("writes while 8..72 MiB were copied: {}", to - from);
    assert!(
        to >= from + 64,
        "only {} writes completed while pv replace copied 64 MiB",
        to - from
    );
    assert!(w.finish() > 0);
    let pvs = sspctl_json(&pool, &["pv", "list"]).to_string();
    assert!(pvs.contains("pv1.img") && !pvs.contains("pv0.img"), "{pvs}");
    assert_pool_check(&pool);
    assert_lu_starts_with(&s, "big", &data);
    // Restarted on the new PV alone (the old one is gone).
    let (st, keep) = s.stop_keep();
    assert!(st.success());
    std::fs::remove_file(dir.join("pv0.img")).unwrap();
    let s = Server::serve(pool.clone(), keep);
    assert_lu_starts_with(&s, "big", &data);
    s.stop();
}

/// `pv replace-cancel` stops a single-copy `pv replace` at a slice boundary while a writer
/// runs: the replace fails saying so, the pool stays on the old PV (the new file is removed),
/// the writer's data and the LU's are intact and `check` passes, also after a restart.
#[test]
fn cancelled_pv_replace_leaves_the_pool_on_the_old_pv() {
    let fill = 64 * MB as usize;
    let (s, data) = pool_with_big(fill, &["--resync-rate", "16M"]);
    let pool = s.pool.clone();
    let dir = pool.parent().unwrap().to_owned();
    let w = Writer::start(&s, "other", 0, 4096);
    let replacer = std::process::Command::new(env!("CARGO_BIN_EXE_sspctl"))
        .arg("--pool")
        .arg(&pool)
        .args([
            "pv",
            "replace",
            dir.join("pv0.img").to_str().unwrap(),
            &format!("{}:512M", dir.join("pv1.img").display()),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::os::unix::fs::MetadataExt;
    wait_for(60, "the copy to start", || {
        std::fs::metadata(dir.join("pv1.img")).is_ok_and(|m| m.blocks() * 512 >= 8 * MB)
    });
    let out = sspctl(&pool, &["pv", "replace-cancel"]);
    assert!(out.contains("cancelled 1"), "{out}");
    let o = replacer.wait_with_output().unwrap();
    assert!(!o.status.success(), "pv replace should fail when cancelled");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("cancelled"), "{err}");
    assert!(!dir.join("pv1.img").exists(), "the new PV file is removed");
    assert!(w.finish() > 0);
    let pvs = sspctl_json(&pool, &["pv", "list"]).to_string();
    assert!(pvs.contains("pv0.img") && !pvs.contains("pv1.img"), "{pvs}");
    assert_pool_check(&pool);
    let (st, keep) = s.stop_keep();
    assert!(st.success());
    let s = Server::serve(pool.clone(), keep);
    assert_lu_starts_with(&s, "big", &data);
    s.stop();
}

fn used(pool: &Path) -> u64 {
    status(pool)["used_bytes"].as_u64().unwrap()
}

fn capture(pool: &Path, src: &str, image: &str, rate: &str) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_sspctl"))
        .arg("--pool")
        .arg(pool)
        .args(["image", "capture", src, image, "--rate", rate])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// `image capture` copies in slices (rate-limited here with `--rate`): a client's writes keep
/// completing while it copies, the image holds the LU's data; a second capture cancelled with
/// `image capture-cancel` fails saying so and leaves nothing behind, with `check` passing.
#[test]
fn capture_progresses_with_a_writer_and_cancel_leaves_nothing() {
    let fill = 48 * MB as usize;
    let (s, data) = pool_with_big(fill, &[]);
    let pool = s.pool.clone();
    let w = Writer::start(&s, "other", 0, 4096);
    let base = used(&pool);
    let c = capture(&pool, "big", "img", "32M");
    let (mut from, mut to) = (None, None);
    let end = Instant::now() + Duration::from_secs(120);
    let mut c = c;
    let st = loop {
        if let Some(st) = c.try_wait().unwrap() {
            break st;
        }
        let grown = used(&pool).saturating_sub(base);
        if from.is_none() && grown >= 8 * MB {
            from = Some(w.writes());
        }
        if to.is_none() && grown >= 32 * MB {
            to = Some(w.writes());
        }
        assert!(Instant::now() < end, "capture did not finish");
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(st.success(), "capture failed");
    let (from, to) = (from.unwrap(), to.unwrap());
    assert!(
        to >= from + 64,
        "only {} writes completed while the capture copied 24 MiB",
        to - from
    );
    // The image holds what `big` held.
    assert_lu_starts_with(&s, "img", &data);

    // A second capture, cancelled part-way.
    let base = used(&pool);
    let c = capture(&pool, "big", "img2", "16M");
    wait_for(60, "the capture to start", || {
        used(&pool).saturating_sub(base) >= 8 * MB
    });
    let out = sspctl(&pool, &["image", "capture-cancel"]);
    assert!(out.contains("cancelled 1"), "{out}");
    let o = c.wait_with_output().unwrap();
    assert!(!o.status.success(), "a cancelled capture fails");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("cancelled"), "{err}");
    let images = sspctl_json(&pool, &["image", "list"]).to_string();
    assert!(!images.contains("img2"), "{images}");
    wait_for(60, "the partial copy to be reclaimed", || {
        removing(&pool).0 == 0
    });
    assert!(w.finish() > 0);
    assert_pool_check(&pool);
    s.stop();
}
