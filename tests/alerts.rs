//! Capacity alerts (`sspctl alert`) against a real sspd: a threshold fires once per crossing,
//! clears and fires again, runs its hook with the alert in the environment and shows in
//! `/metrics` and `pool status`; an enforced overcommit limit refuses new LUs, clones and grows
//! with the numbers; alerts persist across restarts; bad arguments are refused.

mod common;

use common::server::*;
use std::io::{Read, Write};
use std::path::Path;

/// A pool in `dir/pool` on a 64 MiB PV with a 1 MiB journal.
fn small_pool(dir: &Path) -> std::path::PathBuf {
    let pool = dir.join("pool");
    let pv = format!("{}:64M", dir.join("pv0.img").display());
    sspctl(&pool, &["pool", "create", "--pv", &pv, "--journal-mb", "1"]);
    pool
}

fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

fn scrape(addr: &str) -> String {
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    c.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut m = String::new();
    c.read_to_string(&mut m).unwrap();
    m
}

/// The value of the series `name{labels}` in a scrape.
fn series(scrape: &str, name_labels: &str) -> Option<f64> {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(name_labels)?.trim().parse().ok())
}

/// Write `mib` MiB of random data at `off_mib` MiB of `lu`, or trim that range; then flush.
fn nbd_io(s: &Server, lu: &str, off_mib: u64, mib: u64, trim: bool) {
    let op = if trim {
        format!("h.trim({mib} << 20, {off_mib} << 20)")
    } else {
        format!(
            "for i in range({mib}):\n\x20   h.pwrite(os.urandom(1 << 20), ({off_mib} + i) << 20)"
        )
    };
    nbdsh(
        &s.uri(lu),
        &format!("import nbd,os,sys\nh=nbd.NBD(); h.connect_uri(sys.argv[1])\n{op}\nh.flush()\n"),
    );
}

fn threshold(pool: &Path) -> serde_json::Value {
    let l = sspctl_json(pool, &["alert", "list"]);
    l.as_array()
        .unwrap()
        .iter()
        .find(|a| a["type"] == "threshold")
        .cloned()
        .unwrap_or_else(|| panic!("no threshold alert in {l}"))
}

fn hook_lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn threshold_fires_once_per_crossing_clears_and_runs_its_hook() {
    let dir = tempfile::tempdir().unwrap();
    let pool = small_pool(dir.path());
    sspctl(&pool, &["lu", "create", "vm1", "--size", "48M"]);
    let log = dir.path().join("hook.log");
    let hook = format!(
        "echo \"$SSP_ALERT_TYPE $SSP_ALERT_VALUE $SSP_ALERT_CURRENT $SSP_POOL\" >> {}",
        log.display()
    );
    let listed = sspctl(
        &pool,
        &[
            "alert",
            "set",
            "--type",
            "threshold",
            "--value",
            "30",
            "--exec",
            &hook,
        ],
    );
    assert!(
        listed.contains("threshold") && listed.contains("30"),
        "{listed}"
    );
    let addr = free_addr();
    let s = Server::serve_with(
        pool.clone(),
        tempfile::tempdir().unwrap(),
        &["--metrics", &addr],
    );
    assert_eq!(threshold(&pool)["active"], false);

    // Past the threshold: one firing, its hook run with the alert in its environment.
    nbd_io(&s, "vm1", 0, 24, false);
    wait_for(10, "the hook's first run", || hook_lines(&log).len() == 1);
    let a = threshold(&pool);
    assert_eq!(a["active"], true, "{a}");
    let line = hook_lines(&log).remove(0);
    let f: Vec<&str> = line.split(' ').collect();
    assert_eq!(f.len(), 4, "{line}");
    assert_eq!((f[0], f[1], f[3]), ("threshold", "30", "ssp"), "{line}");
    let cur: f64 = f[2].parse().unwrap();
    assert!((30.0..100.0).contains(&cur), "{line}");
    let st = sspctl(&pool, &["pool", "status"]);
    assert!(st.contains("Alert:") && st.contains("threshold"), "{st}");
    let st = sspctl_json(&pool, &["pool", "status"]);
    assert_eq!(st["alerts_active"][0]["type"], "threshold", "{st}");

    // Further past it, without going below: no second firing.
    nbd_io(&s, "vm1", 24, 8, false);
    std::thread::sleep(std::time::Duration::from_millis(2500));
    assert_eq!(hook_lines(&log).len(), 1);

    // Below it: cleared (no hook run), then past it again: fired again.
    nbd_io(&s, "vm1", 0, 48, true);
    wait_for(10, "the alert to clear", || {
        threshold(&pool)["active"] == false
    });
    wait_for(10, "ssp_alert_active to go to 0", || {
        series(&scrape(&addr), "ssp_alert_active{type=\"threshold\"}") == Some(0.0)
    });
    assert_eq!(hook_lines(&log).len(), 1);
    nbd_io(&s, "vm1", 0, 24, false);
    wait_for(10, "the hook's second run", || hook_lines(&log).len() == 2);
    let m = scrape(&addr);
    assert_eq!(
        series(&m, "ssp_alert_firings_total{type=\"threshold\"}"),
        Some(2.0),
        "{m}"
    );
    assert_eq!(
        series(&m, "ssp_alert_active{type=\"threshold\"}"),
        Some(1.0),
        "{m}"
    );
    s.stop();
}

#[test]
fn enforced_overcommit_refuses_with_numbers_and_alerts_persist() {
    let dir = tempfile::tempdir().unwrap();
    let pool = small_pool(dir.path());
    sspctl(
        &pool,
        &[
            "alert",
            "set",
            "--type",
            "overcommit",
            "--value",
            "150",
            "--enforce",
        ],
    );
    // Offline: within the limit, then past it.
    sspctl(&pool, &["lu", "create", "a", "--size", "60M"]);
    let e = sspctl_fails(&pool, &["lu", "create", "b", "--size", "40M"]);
    assert!(
        e.contains("creating LU b") && e.contains("overcommit limit of 150 %") && e.contains("MiB"),
        "{e}"
    );
    let s = Server::serve(pool.clone(), tempfile::tempdir().unwrap());
    // Online: grows and clones past the limit are refused too; nothing was made.
    let e = sspctl_fails(&pool, &["lu", "resize", "a", "--size", "100M"]);
    assert!(e.contains("growing LU a") && e.contains("150 %"), "{e}");
    sspctl(&pool, &["snapshot", "create", "a@s"]);
    let e = sspctl_fails(&pool, &["clone", "a@s", "c"]);
    assert!(e.contains("cloning a@s") && e.contains("150 %"), "{e}");
    let e = sspctl_fails(&pool, &["--json", "lu", "create", "b", "--size", "40M"]);
    assert!(e.is_empty(), "JSON errors go to stdout: {e}");
    let lus = sspctl_json(&pool, &["lu", "list"]);
    assert_eq!(lus.as_array().unwrap().len(), 1, "{lus}");
    sspctl(&pool, &["lu", "create", "b", "--size", "4M"]);
    // Not enforced: past the value is allowed, and the alert is active at once.
    sspctl(
        &pool,
        &["alert", "set", "--type", "overcommit", "--value", "50"],
    );
    sspctl(&pool, &["lu", "create", "c", "--size", "40M"]);
    let st = sspctl_json(&pool, &["pool", "status"]);
    assert_eq!(st["alerts_active"][0]["type"], "overcommit", "{st}");
    s.stop();

    // Persisted with the pool: after a restart, and offline.
    let s = Server::serve(pool.clone(), tempfile::tempdir().unwrap());
    let l = sspctl_json(&pool, &["alert", "list"]);
    assert_eq!(l[0]["type"], "overcommit", "{l}");
    assert_eq!(l[0]["value"], 50, "{l}");
    assert_eq!(l[0]["active"], true, "{l}");
    let t = sspctl(&pool, &["alert", "list", "-H", "-o", "type,value,active"]);
    assert_eq!(t.trim(), "overcommit\t50\ttrue");
    sspctl(&pool, &["alert", "unset", "--type", "overcommit"]);
    s.stop();
    let l = sspctl_json(&pool, &["alert", "list"]);
    assert!(l.as_array().unwrap().is_empty(), "{l}");
}

#[test]
fn bad_alert_arguments_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pool = small_pool(dir.path());
    let e = sspctl_fails(
        &pool,
        &["alert", "set", "--type", "threshold", "--value", "0"],
    );
    assert!(e.contains("percentage from 1 to 100"), "{e}");
    let e = sspctl_fails(
        &pool,
        &["alert", "set", "--type", "threshold", "--value", "101"],
    );
    assert!(e.contains("percentage from 1 to 100"), "{e}");
    let e = sspctl_fails(
        &pool,
        &[
            "alert",
            "set",
            "--type",
            "threshold",
            "--value",
            "80",
            "--enforce",
        ],
    );
    assert!(e.contains("overcommit alerts only"), "{e}");
    let e = sspctl_fails(&pool, &["alert", "set", "--type", "full", "--value", "80"]);
    assert!(e.contains("threshold or overcommit"), "{e}");
    let e = sspctl_fails(&pool, &["alert", "unset", "--type", "threshold"]);
    assert!(e.contains("no threshold alert"), "{e}");
    // A damaged alerts file is reported, not ignored.
    std::fs::write(pool.join("alerts.json"), "{not json").unwrap();
    let e = sspctl_fails(&pool, &["alert", "list"]);
    assert!(e.contains("alerts.json"), "{e}");
}
