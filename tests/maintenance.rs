//! Maintenance in slices through the real interfaces (sspd, sspctl, an NBD client): scrub,
//! online check and resync make progress while a client keeps writing; `scrub cancel` stops a
//! scrub and leaves the pool consistent; a scrub interrupted by an sspd restart resumes from
//! its stored position; `--rate` bounds a scrub's speed.

mod common;
use common::server::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn scrub_status(pool: &Path) -> Value {
    sspctl_json(pool, &["scrub", "status"])
}

/// A pool with LU vm1 (64 MiB) whose first `fill` bytes hold random data (kept in
/// `data.raw` beside the pool), served by sspd with `extra` flags.
fn filled(fill: usize, extra: &[&str]) -> (Server, PathBuf) {
    serve_filled(&[("vm1", "64M")], "vm1", fill, extra)
}

#[test]
fn scrub_check_and_resync_make_progress_while_a_client_writes() {
    let (s, data) = filled(16 << 20, &["--resync-rate", "4M"]);
    let w = Writer::start(&s, "vm1", 32 << 20, 2048);

    // Resync (the second failure group, copied at 4 MiB/s in the background).
    let pv1 = s.pool.parent().unwrap().join("pv1.img");
    sspctl(
        &s.pool,
        &[
            "failgrp",
            "create",
            "fg2",
            "--pv",
            &format!("{}:512M", pv1.display()),
        ],
    );
    let mut seen_syncing = 0;
    let t = Instant::now();
    loop {
        let st = sspctl_json(&s.pool, &["pool", "status"]);
        if st["mirror_state"] == "SYNCED" {
            break;
        }
        assert_eq!(st["mirror_state"], "SYNCING", "{st}");
        let before = w.writes();
        assert!(w.advances_from(before), "the writer stalled during resync");
        if sspctl_json(&s.pool, &["pool", "status"])["mirror_state"] == "SYNCING" {
            seen_syncing += 1;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "resync never finished"
        );
    }
    assert!(seen_syncing > 0, "writes completed while resync ran");

    // Scrub in the background at 8 MiB/s: the writer keeps completing writes.
    let started = sspctl_json(&s.pool, &["scrub", "--rate", "8M"]);
    assert_eq!(started["state"], "running", "{started}");
    let mut seen_running = 0;
    let t = Instant::now();
    loop {
        let st = scrub_status(&s.pool);
        if st["state"] != "running" {
            assert_eq!(st["state"], "finished", "{st}");
            assert_eq!(st["report"]["errors_found"], 0, "{st}");
            break;
        }
        let before = w.writes();
        assert!(w.advances_from(before), "the writer stalled during scrub");
        if scrub_status(&s.pool)["state"] == "running" {
            seen_running += 1;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "scrub never finished"
        );
    }
    assert!(seen_running > 0, "writes completed while the scrub ran");

    // Online check: the writer completes writes while it runs, and the pool checks clean.
    let before = w.writes();
    let pool = s.pool.clone();
    let check = std::thread::spawn(move || sspctl_json(&pool, &["check"]));
    assert!(w.advances_from(before), "the writer stalled during check");
    let c = check.join().unwrap();
    assert!(c["errors"].as_array().unwrap().is_empty(), "check: {c}");
    assert!(c["data_blocks"].as_u64().unwrap() >= 4096, "{c}");

    let n = w.finish();
    assert!(n > 0);
    assert_pool_check(&s.pool);
    assert_lu_starts_with(&s, "vm1", &data);
    s.stop();
}

#[test]
fn cancel_mid_scrub_leaves_a_consistent_pool() {
    let (s, data) = filled(16 << 20, &[]);
    let started = sspctl_json(&s.pool, &["scrub", "--rate", "2M"]);
    assert_eq!(started["state"], "running");
    // Text output says it started and returns at once.
    let t = Instant::now();
    while scrub_status(&s.pool)["bytes_done"].as_u64().unwrap() == 0 {
        assert!(t.elapsed() < Duration::from_secs(20), "no progress");
        std::thread::sleep(Duration::from_millis(50));
    }
    let st = sspctl_json(&s.pool, &["scrub", "cancel"]);
    assert_eq!(st["state"], "cancelled", "{st}");
    let done = st["bytes_done"].as_u64().unwrap();
    assert!(
        done > 0 && done < st["bytes_total"].as_u64().unwrap(),
        "{st}"
    );
    assert_eq!(scrub_status(&s.pool)["state"], "cancelled");
    // Nothing runs any more: cancelling again is refused.
    let e = sspctl_fails(&s.pool, &["scrub", "cancel"]);
    assert!(e.contains("no scrub is running"), "{e}");
    assert_pool_check(&s.pool);
    assert_lu_starts_with(&s, "vm1", &data);
    // A new scrub runs to the end.
    let r = sspctl_json(&s.pool, &["scrub", "--wait", "--rate", "0"]);
    assert_eq!(r["errors_found"], 0, "{r}");
    assert!(r["blocks_checked"].as_u64().unwrap() >= 4096, "{r}");
    s.stop();
}

#[test]
fn a_scrub_resumes_where_it_stopped_after_sspd_restarts() {
    let (s, data) = filled(16 << 20, &[]);
    let text = sspctl(&s.pool, &["scrub", "--rate", "2M"]);
    assert!(text.contains("scrub started"), "{text}");
    // Past its first saved position (saved about once a second).
    let t = Instant::now();
    while scrub_status(&s.pool)["bytes_done"].as_u64().unwrap() < 3 << 20 {
        assert!(t.elapsed() < Duration::from_secs(30), "no progress");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(1200));
    let (st, dir) = s.stop_keep();
    assert!(st.success());
    let pool = dir.path().join("pool");
    // Offline, the stored position shows.
    let stored = scrub_status(&pool);
    assert_eq!(stored["state"], "running", "{stored}");
    let pos = stored["position"].as_u64().unwrap();
    let done = stored["bytes_done"].as_u64().unwrap();
    assert!(pos > 0 && done >= 2 << 20, "{stored}");

    let s = Server::serve(pool.clone(), dir);
    let st = scrub_status(&pool);
    assert_eq!(st["resumed"], 1, "{st}");
    assert!(
        st["bytes_done"].as_u64().unwrap() >= done,
        "resumed from the stored position: {st}"
    );
    // `--wait` joins the running scrub and prints its report.
    let r = sspctl_json(&pool, &["scrub", "--wait"]);
    assert_eq!(r["errors_found"], 0, "{r}");
    let fin = scrub_status(&pool);
    assert_eq!(fin["state"], "finished", "{fin}");
    assert!(
        fin["bytes_done"].as_u64().unwrap() >= fin["bytes_total"].as_u64().unwrap(),
        "{fin}"
    );
    // Every data block once (16 MiB = 4096 blocks), over both runs.
    let checked = fin["report"]["blocks_checked"].as_u64().unwrap();
    assert!((4096..4096 + 1024).contains(&checked), "{fin}");
    assert_pool_check(&pool);
    assert_lu_starts_with(&s, "vm1", &data);
    s.stop();
}

#[test]
fn a_scrub_at_a_low_rate_takes_at_least_bytes_over_rate() {
    let (s, _data) = filled(8 << 20, &[]);
    let t = Instant::now();
    let r = sspctl_json(&s.pool, &["scrub", "--wait", "--rate", "2M"]);
    let took = t.elapsed();
    let bytes = r["blocks_checked"].as_u64().unwrap() * 4096;
    assert!(bytes >= 8 << 20, "{r}");
    // The first slice (1 MiB) may run before the budget is spent.
    let floor = Duration::from_secs_f64((bytes - (1 << 20)) as f64 / (2 << 20) as f64);
    assert!(took >= floor, "{bytes} bytes at 2 MiB/s in {took:?}");
    // Offline (no sspd) the scrub runs to the end in the foreground.
    let (st, dir) = s.stop_keep();
    assert!(st.success());
    let out = sspctl(&dir.path().join("pool"), &["scrub"]);
    assert!(
        out.contains("scrubbed") && out.contains("0 errors found"),
        "{out}"
    );
}

#[test]
fn a_resync_interrupted_by_a_restart_resumes_with_what_is_left() {
    let (s, data) = filled(16 << 20, &["--resync-rate", "2M"]);
    let pv1 = s.pool.parent().unwrap().join("pv1.img");
    sspctl(
        &s.pool,
        &[
            "failgrp",
            "create",
            "fg2",
            "--pv",
            &format!("{}:512M", pv1.display()),
        ],
    );
    let status = |pool: &Path| sspctl_json(pool, &["pool", "status"]);
    let total = status(&s.pool)["resync_bytes_left"].as_u64().unwrap();
    assert!(total >= 16 << 20, "{total}");
    // Part of the way, at 2 MiB/s.
    let t = Instant::now();
    let left = loop {
        let st = status(&s.pool);
        let left = st["resync_bytes_left"].as_u64().unwrap();
        if st["resync_bytes_copied"].as_u64().unwrap() >= 4 << 20 {
            break left;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "no resync progress: {st}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(left > 0 && left < total, "{left} of {total}");
    let (st, dir) = s.stop_keep();
    assert!(st.success());
    let pool = dir.path().join("pool");
    let s = Server::serve(pool.clone(), dir);
    let st = status(&pool);
    assert_eq!(st["mirror_state"], "SYNCING", "{st}");
    assert!(
        st["resync_bytes_left"].as_u64().unwrap() <= left,
        "resumed with what was left ({left}), not from the start: {st}"
    );
    let t = Instant::now();
    while status(&pool)["mirror_state"] != "SYNCED" {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "resync never finished"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Both copies equal (check compares them) and the data intact.
    assert_pool_check(&pool);
    assert_lu_starts_with(&s, "vm1", &data);
    s.stop();
}
