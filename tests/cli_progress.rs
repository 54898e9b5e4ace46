//! Progress of the verbs that wait, through the real sspctl (issue 15, item 6): with --json, one
//! line per second at most, in bytes, with the total from the first line; the result follows.

mod common;

use common::server::{make_pool, random_file, sspctl, Server};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Run `sspctl --json ARGS`, timing each stdout line as it arrives. Returns the progress lines
/// with their arrival times, the final document and the whole run's duration.
fn timed_json(pool: &Path, args: &[&str]) -> (Vec<(Duration, Value)>, Value, Duration) {
    let start = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sspctl"))
        .arg("--pool")
        .arg(pool)
        .arg("--json")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut progress = Vec::new();
    let mut rest = String::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if rest.is_empty() && line.starts_with("{\"progress\"") {
            let v: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("progress line {line:?} is not JSON: {e}"));
            progress.push((start.elapsed(), v));
        } else {
            rest.push_str(&line);
            rest.push('\n');
        }
    }
    let o = child.wait_with_output().unwrap();
    let took = start.elapsed();
    assert!(
        o.status.success(),
        "sspctl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let doc = serde_json::from_str(&rest).unwrap_or_else(|e| panic!("{args:?}: {e}: {rest}"));
    (progress, doc, took)
}

/// Lines are well formed, counted in bytes against a total known from the first line, never
/// go back, and come at most once a second.
fn assert_paced(op: &str, lines: &[(Duration, Value)], total: u64, took: Duration) {
    assert!(
        lines.len() >= 2,
        "{op}: a wait of {took:?} gave {} progress lines",
        lines.len()
    );
    // Generous: at most one a second, plus the first at the start.
    assert!(
        lines.len() as f64 <= took.as_secs_f64() + 1.0,
        "{op}: {} progress lines in {took:?}",
        lines.len()
    );
    let mut prev: Option<(Duration, u64)> = None;
    let mut short_gaps = Vec::new();
    for (at, v) in lines {
        let p = &v["progress"];
        assert_eq!(p["op"], op, "{v}");
        assert_eq!(p["total_bytes"].as_u64(), Some(total), "{v}");
        let done = p["done_bytes"].as_u64().unwrap_or_else(|| panic!("{v}"));
        assert!(done <= total, "{v}");
        if let Some((t, d)) = prev {
            // Arrival times jitter with scheduling (a reader held up sees two lines at once);
            // the sender waits a full second.
            if *at - t < Duration::from_millis(800) {
                short_gaps.push(*at - t);
            }
            assert!(done >= d, "{op}: progress went back: {v}");
        }
        prev = Some((*at, done));
    }
    assert!(
        short_gaps.len() <= 1,
        "{op}: lines closer than a second: {short_gaps:?}"
    );
}

#[test]
fn json_progress_is_paced_in_bytes_and_the_result_follows() {
    let t = tempfile::tempdir().unwrap();
    let pool = make_pool(t.path(), &[("vm1", "32M")]);
    let data = t.path().join("data.raw");
    random_file(&data, 12 << 20);
    let out = sspctl(
        &pool,
        &["lu", "import", "vm1", data.to_str().unwrap(), "--json"],
    );
    let first: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(first["progress"]["op"], "import", "{out}");
    assert_eq!(first["progress"]["total_bytes"], 12 << 20, "{out}");
    let out = sspctl(
        &pool,
        &[
            "lu",
            "export",
            "vm1",
            t.path().join("out.raw").to_str().unwrap(),
            "--json",
        ],
    );
    let first: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(first["progress"]["op"], "export", "{out}");
    assert_eq!(first["progress"]["total_bytes"], 12 << 20, "{out}");

    // 12 MiB at 4 MiB/s: about 3 s, one slice (1 MiB) every quarter second.
    let (lines, doc, took) = timed_json(&pool, &["image", "capture", "vm1", "img", "--rate", "4M"]);
    assert_paced("capture", &lines, 12 << 20, took);
    assert_eq!(doc["captured"][0]["name"], "img", "{doc}");

    // Scrub the 24 MiB of data now in the pool, through sspd.
    let srv = Server::restart(pool.clone());
    let (lines, doc, took) = timed_json(&pool, &["scrub", "--wait", "--rate", "4M"]);
    srv.stop();
    let total = lines
        .first()
        .and_then(|(_, v)| v["progress"]["total_bytes"].as_u64())
        .unwrap_or(0);
    assert!(total >= 24 << 20, "{lines:?}");
    assert_paced("scrub", &lines, total, took);
    assert_eq!(doc["errors_found"], 0, "{doc}");

    // Offline the scrub runs inside sspctl: it reports progress the same way.
    let (lines, doc, took) = timed_json(&pool, &["scrub", "--rate", "4M"]);
    let total = lines
        .first()
        .and_then(|(_, v)| v["progress"]["total_bytes"].as_u64())
        .unwrap_or(0);
    assert!(total >= 24 << 20, "offline scrub: {lines:?}");
    assert_paced("scrub", &lines, total, took);
    assert_eq!(doc["errors_found"], 0, "{doc}");

    // Without --json and without a terminal: no bar, only the result.
    let o = Command::new(env!("CARGO_BIN_EXE_sspctl"))
        .arg("--pool")
        .arg(&pool)
        .args(["image", "capture", "vm1", "img2"])
        .output()
        .unwrap();
    assert!(o.status.success());
    assert!(
        o.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let out = String::from_utf8(o.stdout).unwrap();
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(
        out.starts_with("captured vm1 into client image img2"),
        "{out}"
    );
}
