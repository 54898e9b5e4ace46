//! Logs an operator can keep: no colour codes in a log file, `--log-format json` lines that
//! parse, `SSP_LOG` for both binaries (over `RUST_LOG`), an audit record for each admin
//! operation with who asked and how it ended, and refused NBD clients with the reason.

mod common;
use common::server::*;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

fn uid() -> u32 {
    // SAFETY: getuid cannot fail.
    unsafe { libc::getuid() }
}

/// sspd on 127.0.0.1 with its stderr in `log`; returns it once it listens, with its port.
fn sspd_logging_to(pool: &Path, log: &Path, extra: &[&str]) -> (Child, u16) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sspd"))
        .args(["--pool", pool.to_str().unwrap(), "--listen", "127.0.0.1:0"])
        .args(extra)
        // SSP_LOG wins over RUST_LOG.
        .env("SSP_LOG", "info")
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("listening on") {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "sspd exited early");
    }
    let port = line.trim().rsplit(':').next().unwrap().parse().unwrap();
    (child, port)
}

fn stop(mut child: Child) {
    unsafe_kill_term(child.id());
    assert!(child.wait().unwrap().success());
}

/// sspctl with `SSP_LOG` set; (success, stderr).
fn sspctl_logged(pool: &Path, extra_env: &[(&str, &str)], args: &[&str]) -> (bool, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_sspctl"))
        .arg("--pool")
        .arg(pool)
        .args(args)
        .env_remove("RUST_LOG")
        .envs(extra_env.iter().copied())
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn new_pool() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let pool = make_pool(dir.path(), &[("vol", "4M")]);
    (dir, pool)
}

#[test]
fn text_log_file_is_plain_and_audits_admin_operations_and_refusals() {
    let (dir, pool) = new_pool();
    let log = dir.path().join("sspd.log");
    let (child, port) = sspd_logging_to(&pool, &log, &[]);
    sspctl(&pool, &["lu", "create", "audited", "--size", "1M"]);
    let err = sspctl_fails(&pool, &["lu", "create", "audited", "--size", "1M"]);
    assert!(err.contains("already exists"), "{err}");
    // Refused: an export that does not exist, and one mapped to another client.
    sspctl(&pool, &["lu", "map", "vol", "--client", "192.0.2.7"]);
    for export in ["nope", "vol"] {
        let o = Command::new("nbdinfo")
            .args(["--size", &format!("nbd://127.0.0.1:{port}/{export}")])
            .output()
            .unwrap();
        assert!(!o.status.success(), "{export} was served");
    }
    stop(child);
    let bytes = std::fs::read(&log).unwrap();
    assert!(
        !bytes.contains(&0x1b),
        "ANSI escape codes in a log file:\n{}",
        String::from_utf8_lossy(&bytes)
    );
    let text = String::from_utf8(bytes).unwrap();
    let creates: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("ssp::audit") && l.contains("op=\"lu_create\""))
        .collect();
    assert_eq!(creates.len(), 2, "one record per request:\n{text}");
    let me = format!("uid={}", uid());
    for l in &creates {
        assert!(l.contains(" INFO "), "{l}");
        assert!(
            l.contains(&me) && l.contains("pid=") && l.contains("via=admin-socket"),
            "{l}"
        );
        assert!(l.contains(r#"\"name\":\"audited\""#), "{l}");
    }
    assert!(creates[0].contains("outcome=\"ok\""), "{}", creates[0]);
    assert!(!creates[0].contains("error="), "{}", creates[0]);
    assert!(
        creates[1].contains("outcome=\"error\"") && creates[1].contains("already exists"),
        "{}",
        creates[1]
    );
    let maps: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("op=\"lu_map\""))
        .collect();
    assert_eq!(maps.len(), 1, "{text}");
    let refused: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("client refused"))
        .collect();
    assert!(
        refused
            .iter()
            .any(|l| l.contains("reason=\"unknown export\"")),
        "{text}"
    );
    assert!(
        refused.iter().any(|l| l.contains("reason=\"policy\"")),
        "{text}"
    );
    assert!(
        refused.iter().all(|l| l.contains("peer=\"127.0.0.1:")),
        "{text}"
    );
    // Listing is not an operation on the pool: nothing in the audit trail at info.
    assert!(!text.contains("op=\"lu_list\""), "{text}");
}

#[test]
fn offline_sspctl_audits_with_its_own_uid() {
    let (_dir, pool) = new_pool();
    let env = [("SSP_LOG", "ssp::audit=info")];
    // pool create is audited too (it is not an admin request: it makes the pool).
    let fresh = pool.parent().unwrap().join("pool2");
    let pv = format!("{}:64M", pool.parent().unwrap().join("pv2.img").display());
    let (ok, err) = sspctl_logged(&fresh, &env, &["pool", "create", "--pv", &pv]);
    assert!(ok, "{err}");
    assert_eq!(err.matches("op=\"pool_create\"").count(), 1, "{err}");
    assert!(err.contains("outcome=\"ok\"") && err.contains(&format!("uid={}", uid())));
    let (ok, err) = sspctl_logged(&pool, &env, &["lu", "resize", "vol", "--size", "8M"]);
    assert!(ok, "{err}");
    let recs: Vec<&str> = err.lines().filter(|l| l.contains("ssp::audit")).collect();
    assert_eq!(recs.len(), 1, "{err}");
    assert!(recs[0].contains("op=\"lu_resize\""), "{}", recs[0]);
    assert!(recs[0].contains(&format!("uid={}", uid())), "{}", recs[0]);
    assert!(recs[0].contains("via=offline") && recs[0].contains("outcome=\"ok\""));
    assert!(!err.contains('\u{1b}'), "{err}");
    // A failing one: its error is in the record as well as on stderr.
    let (ok, err) = sspctl_logged(&pool, &env, &["lu", "remove", "missing"]);
    assert!(!ok);
    let recs: Vec<&str> = err.lines().filter(|l| l.contains("ssp::audit")).collect();
    assert_eq!(recs.len(), 1, "{err}");
    assert!(recs[0].contains("op=\"lu_remove\"") && recs[0].contains("outcome=\"error\""));
    assert!(recs[0].contains("missing"), "{}", recs[0]);
}

#[test]
fn json_log_lines_parse_and_carry_the_audit_fields() {
    let (dir, pool) = new_pool();
    let log = dir.path().join("sspd.json");
    let (child, _port) = sspd_logging_to(&pool, &log, &["--log-format", "json"]);
    sspctl(&pool, &["lu", "create", "j1", "--size", "1M"]);
    stop(child);
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.len() >= 3, "{text}");
    let audit: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|v| v["target"] == "ssp::audit")
        .collect();
    assert_eq!(audit.len(), 1, "{text}");
    let f = &audit[0]["fields"];
    assert_eq!(audit[0]["level"], "INFO");
    assert_eq!(f["op"], "lu_create");
    assert_eq!(f["uid"], u64::from(uid()));
    assert!(f["pid"].as_u64().is_some_and(|p| p > 0), "{f}");
    assert_eq!(f["outcome"], "ok");
    let args: serde_json::Value = serde_json::from_str(f["args"].as_str().unwrap()).unwrap();
    assert_eq!(args, serde_json::json!({"name": "j1", "size": 1048576}));
    assert!(lines
        .iter()
        .any(|v| v["fields"]["message"] == "pool closed cleanly"));
    // sspctl takes the same flag.
    let (ok, err) = sspctl_logged(
        &pool,
        &[("SSP_LOG", "info")],
        &["--log-format", "json", "lu", "create", "j2", "--size", "1M"],
    );
    assert!(ok, "{err}");
    let recs: Vec<serde_json::Value> = err
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        recs.iter()
            .any(|v| v["target"] == "ssp::audit" && v["fields"]["via"] == "offline"),
        "{err}"
    );
}
