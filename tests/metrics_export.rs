//! `sspd --metrics`: the scrape parses as Prometheus text format (a strict parser below), has
//! latency histograms with bounded per-LU labels, the pool and process gauges and
//! `ssp_build_info`; the sample alert rules and dashboard in docs/ use only series sspd exports.

mod common;

use common::server::*;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};

/// One sample line: metric name, labels, value.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed exposition: the TYPE of each family and its samples.
#[derive(Debug, Default)]
struct Scrape {
    types: BTreeMap<String, String>,
    help: BTreeMap<String, String>,
    samples: Vec<Sample>,
}

fn is_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(f) if f.is_ascii_alphabetic() || f == '_' || f == ':')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_' || x == ':')
}

fn parse_value(v: &str) -> Result<f64, String> {
    match v {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => v.parse().map_err(|_| format!("bad value {v:?}")),
    }
}

/// `{a="x",b="y\"z"}` → labels; returns the rest of the line after `}`.
fn parse_labels(s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    let mut rest = s.strip_prefix('{').ok_or("labels must start with {")?;
    loop {
        if let Some(r) = rest.strip_prefix('}') {
            return Ok((labels, r));
        }
        let eq = rest.find('=').ok_or("label without =")?;
        let key = &rest[..eq];
        if !is_name(key) {
            return Err(format!("bad label name {key:?}"));
        }
        rest = rest[eq + 1..]
            .strip_prefix('"')
            .ok_or("label value must be quoted")?;
        let mut val = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next().ok_or("unterminated label value")? {
                (_, '\\') => match chars.next().ok_or("dangling escape")?.1 {
                    'n' => val.push('\n'),
                    '\\' => val.push('\\'),
                    '"' => val.push('"'),
                    c => return Err(format!("bad escape \\{c}")),
                },
                (i, '"') => break i,
                (_, c) => val.push(c),
            }
        };
        if labels.insert(key.to_owned(), val).is_some() {
            return Err(format!("label {key} repeated"));
        }
        rest = &rest[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

/// Parse Prometheus text format 0.0.4 strictly: every line is a comment, HELP, TYPE or a
/// well-formed sample of a family whose TYPE came before it.
fn parse(text: &str) -> Result<Scrape, String> {
    let mut sc = Scrape::default();
    for (n, line) in text.lines().enumerate() {
        let err = |e: String| format!("line {}: {e}: {line:?}", n + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(c) = line.strip_prefix('#') {
            let mut w = c.trim_start().splitn(3, ' ');
            match (w.next(), w.next(), w.next()) {
                (Some("TYPE"), Some(name), Some(t)) => {
                    if !is_name(name) {
                        return Err(err("bad family name".into()));
                    }
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&t) {
                        return Err(err(format!("bad type {t}")));
                    }
                    if sc.types.insert(name.into(), t.into()).is_some() {
                        return Err(err("TYPE repeated".into()));
                    }
                }
                (Some("HELP"), Some(name), text) => {
                    if !is_name(name) {
                        return Err(err("bad family name".into()));
                    }
                    sc.help.insert(name.into(), text.unwrap_or("").into());
                }
                _ => {}
            }
            continue;
        }
        let name_end = line
            .find(['{', ' '])
            .ok_or_else(|| err("no value".into()))?;
        let name = &line[..name_end];
        if !is_name(name) {
            return Err(err("bad metric name".into()));
        }
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end..]).map_err(err)?
        } else {
            (BTreeMap::new(), &line[name_end..])
        };
        let mut f = rest.split_whitespace();
        let value = parse_value(f.next().ok_or_else(|| err("no value".into()))?).map_err(err)?;
        if let Some(ts) = f.next() {
            ts.parse::<i64>()
                .map_err(|_| err(format!("bad timestamp {ts}")))?;
        }
        if f.next().is_some() {
            return Err(err("trailing fields".into()));
        }
        let family = family_of(name, &sc.types)
            .ok_or_else(|| err(format!("sample of {name} before its TYPE")))?;
        let t = &sc.types[&family];
        if t == "histogram" && name.ends_with("_bucket") && !labels.contains_key("le") {
            return Err(err("histogram bucket without le".into()));
        }
        sc.samples.push(Sample {
            name: name.into(),
            labels,
            value,
        });
    }
    Ok(sc)
}

/// The family a sample or series name belongs to (`x_bucket` → `x` for a histogram).
fn family_of(name: &str, types: &BTreeMap<String, String>) -> Option<String> {
    if types.contains_key(name) {
        return Some(name.into());
    }
    ["_bucket", "_sum", "_count"].iter().find_map(|suf| {
        let base = name.strip_suffix(suf)?;
        matches!(
            types.get(base).map(String::as_str),
            Some("histogram" | "summary")
        )
        .then(|| base.to_owned())
    })
}

impl Scrape {
    fn find<'a>(
        &'a self,
        name: &'a str,
        want: &'a [(&str, &str)],
    ) -> impl Iterator<Item = &'a Sample> {
        self.samples.iter().filter(move |s| {
            s.name == name
                && want
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    /// The value of the one sample of `name` with these labels.
    fn value(&self, name: &str, want: &[(&str, &str)]) -> f64 {
        let v: Vec<_> = self.find(name, want).collect();
        assert_eq!(v.len(), 1, "{name} {want:?}: {v:?}");
        v[0].value
    }
}

fn scrape(addr: &str) -> Scrape {
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    c.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut m = String::new();
    c.read_to_string(&mut m).unwrap();
    let (head, body) = m.split_once("\r\n\r\n").expect("an HTTP reply");
    assert!(
        head.starts_with("HTTP/1.") && head.contains(" 200"),
        "{head}"
    );
    parse(body).unwrap_or_else(|e| panic!("not Prometheus text format: {e}\n{body}"))
}

fn free_addr() -> String {
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    free.local_addr().unwrap().to_string()
}

/// Series names (`ssp_*`, `process_*`) a PromQL expression uses.
fn series_in(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let b = expr.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let boundary = i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_');
        if boundary && (expr[i..].starts_with("ssp_") || expr[i..].starts_with("process_")) {
            let end = expr[i..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .map_or(b.len(), |e| i + e);
            out.insert(expr[i..end].to_owned());
            i = end;
        } else {
            i += 1;
        }
    }
    out
}

#[test]
fn scrape_has_histograms_lu_labels_pool_and_process_gauges() {
    let addr = free_addr();
    let dir = tempfile::tempdir().unwrap();
    let pool = make_pool(dir.path(), &[("vm1", "8M"), ("vm2", "8M")]);
    let s = Server::serve_with(pool, dir, &["--metrics", &addr, "--metrics-lu-limit", "1"]);
    let io = |lu: &str| {
        run(
            "qemu-io",
            &[
                "-f",
                "raw",
                "-c",
                "write -P 7 0 65536",
                "-c",
                "read -P 7 0 65536",
                &s.uri(lu),
            ],
        )
    };
    io("vm1");
    io("vm2");
    sspctl(&s.pool, &["snapshot", "create", "vm1@snap1"]);
    sspctl(&s.pool, &["scrub", "--wait"]);
    // The pool gauges are refreshed every second.
    let mut m = scrape(&addr);
    wait_for(20, "the snapshot and the scrub in the gauges", || {
        m = scrape(&addr);
        m.find("ssp_pool_volumes", &[("kind", "snapshot")])
            .any(|x| x.value == 1.0)
            && m.find("ssp_scrub_total_bytes", &[]).any(|x| x.value > 0.0)
    });
    let t = |n: &str| m.types.get(n).map(String::as_str);

    // Latency: a histogram with buckets, labelled by command and (bounded) LU.
    let lat = "ssp_nbd_request_seconds";
    assert_eq!(t(lat), Some("histogram"));
    let w1 = [("cmd", "write"), ("lu", "vm1")];
    let buckets: Vec<_> = m.find("ssp_nbd_request_seconds_bucket", &w1).collect();
    assert!(buckets.len() >= 10, "{buckets:?}");
    let mut les: Vec<(f64, f64)> = buckets
        .iter()
        .map(|b| (parse_value(&b.labels["le"]).unwrap(), b.value))
        .collect();
    les.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
    assert!(
        les.windows(2).all(|w| w[0].1 <= w[1].1),
        "cumulative: {les:?}"
    );
    let (inf, inf_count) = *les.last().unwrap();
    assert!(inf.is_infinite());
    let count = m.value("ssp_nbd_request_seconds_count", &w1);
    assert_eq!(inf_count, count);
    assert!(count >= 1.0);
    assert!(m.value("ssp_nbd_request_seconds_sum", &w1) > 0.0);
    assert!(les[0].0 <= 0.0001, "fine low buckets: {les:?}");
    // The second LU is past --metrics-lu-limit 1: counted, but under lu="_other".
    let other = [("cmd", "write"), ("lu", "_other")];
    assert!(m.value("ssp_nbd_request_seconds_count", &other) >= 1.0);
    assert!(m.value("ssp_nbd_bytes_total", &other) >= 65536.0);
    assert!(m.value("ssp_nbd_bytes_total", &w1) >= 65536.0);
    assert!(m
        .find("ssp_nbd_requests_total", &[("lu", "vm2")])
        .next()
        .is_none());

    // Pool gauges.
    assert_eq!(m.value("ssp_pool_provisioned_bytes", &[]), 16.0 * 1048576.0);
    assert_eq!(m.value("ssp_pool_overcommit_bytes", &[]), 0.0);
    assert_eq!(m.value("ssp_pool_reserved_bytes", &[]), 0.0);
    let help = &m.help["ssp_pool_reserved_bytes"];
    assert!(
        help.contains("reserved") && help.contains("thick"),
        "{help}"
    );
    assert!(m.help["ssp_nbd_request_seconds"].contains("histogram"));
    assert_eq!(m.value("ssp_pool_volumes", &[("kind", "lu")]), 2.0);
    assert_eq!(
        m.value("ssp_mirror_state", &[("state", "NOT_MIRRORED")]),
        1.0
    );
    for st in ["SYNCING", "SYNCED", "DEGRADED"] {
        assert_eq!(m.value("ssp_mirror_state", &[("state", st)]), 0.0);
    }
    assert_eq!(m.value("ssp_resync_remaining_bytes", &[]), 0.0);
    let pv0 = dir_pv(&s);
    assert_eq!(
        m.value("ssp_pv_up", &[("pv", &pv0), ("failure_group", "Default")]),
        1.0
    );
    let total = m.value("ssp_pool_total_bytes", &[]);
    assert!(
        total > 400.0 * 1048576.0 && total <= 512.0 * 1048576.0,
        "{total}"
    );
    assert!(m.value("ssp_blocks_written_total", &[("kind", "user")]) >= 32.0);
    assert!(m.value("ssp_write_amplification", &[]) >= 1.0);
    assert!(m.value("ssp_checkpoint_generation", &[]) >= 1.0);
    assert_eq!(t("ssp_checkpoints_total"), Some("counter"));
    assert!(
        m.find("ssp_checkpoints_total", &[("by", "background")])
            .count()
            == 1
    );
    assert!(m.find("ssp_cleaner_segments_cleaned_total", &[]).count() == 1);
    // The scrub finished: it verified what it set out to and found nothing.
    let done = m.value("ssp_scrub_done_bytes", &[]);
    assert_eq!(done, m.value("ssp_scrub_total_bytes", &[]));
    assert!(done >= 32.0 * 4096.0, "{done}");
    assert_eq!(m.value("ssp_scrub_running", &[]), 0.0);
    assert_eq!(m.value("ssp_scrub_errors", &[("outcome", "found")]), 0.0);

    // Build and process.
    let bi: Vec<_> = m.find("ssp_build_info", &[]).collect();
    assert_eq!(bi.len(), 1);
    assert_eq!(bi[0].value, 1.0);
    assert_eq!(bi[0].labels["version"], env!("CARGO_PKG_VERSION"));
    // The commit built from: the checkout's HEAD when there is one (build.rs), else "unknown".
    let head = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    match (std::env::var("SSP_GIT_COMMIT"), head) {
        (Ok(c), _) if !c.is_empty() => assert_eq!(bi[0].labels["commit"], c),
        (_, Some(h)) => assert_eq!(bi[0].labels["commit"], h),
        _ => assert_eq!(bi[0].labels["commit"], "unknown"),
    }
    assert!(m.value("process_resident_memory_bytes", &[]) > 1048576.0);
    assert!(m.value("process_open_fds", &[]) >= 5.0);
    assert!(m.value("process_max_fds", &[]) >= m.value("process_open_fds", &[]));
    assert!(m.value("process_threads", &[]) >= 2.0);
    assert!(m.value("process_cpu_seconds_total", &[]) > 0.0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let start = m.value("process_start_time_seconds", &[]);
    assert!(
        start <= now + 1.0 && start > now - 300.0,
        "{start} vs {now}"
    );

    // docs/: every series the alerts and the dashboard use is one sspd exports.
    let known = |name: &str| family_of(name, &m.types).is_some();
    let alerts = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/prometheus-alerts.yml"),
    )
    .unwrap();
    let mut exprs = 0;
    for l in alerts.lines() {
        if let Some(e) = l.trim_start().strip_prefix("expr:") {
            exprs += 1;
            for name in series_in(e) {
                assert!(
                    known(&name),
                    "alert uses {name}, which sspd does not export: {e}"
                );
            }
        }
    }
    assert!(exprs >= 5, "{exprs} alert expressions");
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/grafana-dashboard.json"),
        )
        .unwrap(),
    )
    .expect("the dashboard is JSON");
    assert!(dash["title"].is_string() && dash["schemaVersion"].is_number());
    let panels = dash["panels"].as_array().expect("panels");
    let mut used = BTreeSet::new();
    for p in panels {
        for tgt in p["targets"].as_array().into_iter().flatten() {
            let e = tgt["expr"].as_str().expect("a target has an expr");
            used.extend(series_in(e));
        }
    }
    for name in &used {
        assert!(
            known(name),
            "dashboard uses {name}, which sspd does not export"
        );
    }
    assert!(used.contains("ssp_nbd_request_seconds_bucket"), "{used:?}");
    assert!(used.len() >= 10, "{used:?}");
    assert!(s.stop().success());
}

/// The name sspd gives the pool's one PV (as `sspctl pv list` shows it).
fn dir_pv(s: &Server) -> String {
    let v = sspctl_json(&s.pool, &["pv", "list"]);
    v[0]["name"].as_str().unwrap().to_owned()
}

#[test]
fn strict_parser_refuses_malformed_lines() {
    assert!(parse("# TYPE a counter\na 1\n").is_ok());
    assert!(parse("a 1\n").is_err(), "sample before TYPE");
    assert!(parse("# TYPE a counter\na{x=\"1} 1\n").is_err());
    assert!(parse("# TYPE a counter\na{x=1} 1\n").is_err());
    assert!(parse("# TYPE a counter\na one\n").is_err());
    assert!(parse("# TYPE h histogram\nh_bucket{x=\"1\"} 1\n").is_err());
    assert!(parse("# TYPE 1a gauge\n").is_err());
    assert_eq!(
        series_in("sum(rate(ssp_a_bucket[5m])) / ssp_b{x=\"y\"} > 0 and process_c"),
        ["process_c", "ssp_a_bucket", "ssp_b"]
            .into_iter()
            .map(String::from)
            .collect()
    );
}
