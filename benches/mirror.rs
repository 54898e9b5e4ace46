//! Mirrored (two failure groups) vs single-copy write throughput on file-backed pools.
//!
//! Run with `cargo bench --bench mirror` (or `scripts/bench-mirror.sh`, which also times resync
//! and writes `docs/bench-mirror.md`). Pools live in a temporary directory under
//! `SSP_BENCH_DIR` if set, else under cargo's per-target temporary directory (like
//! benches/engine.rs: on the target's disk, never a tmpfs `/tmp`).
//!
//! Both pools of a group have the same sizes: a 1 GiB LU on 4 GiB sparse PV files. The
//! single-copy pool has one PV; the mirrored pool has two, the second added with
//! `failgrp_create` and resynced (`resync_wait`, state SYNCED) before anything is timed.
//!
//! Groups (all with `Throughput::Bytes`):
//! - `mirror_write_4k`: `single_4k_random` vs `mirrored_4k_random`, 4 KiB writes at random
//!   4 KiB-aligned offsets of the LU, a `flush` (one `fdatasync` per PV) after every
//!   `SSP_MIRROR_FLUSH_4K` writes (default 64, i.e. every 256 KiB). The flush is part of the
//!   iteration that issues it, so the mean includes its cost.
//! - `mirror_write_1m`: `single_1m_seq` vs `mirrored_1m_seq`, 1 MiB writes walking the LU,
//!   a `flush` after every `SSP_MIRROR_FLUSH_1M` writes (default 16, i.e. every 16 MiB).
//!
//! After the criterion runs, each group runs interleaved rounds (single, mirrored, single, ...;
//! `ROUNDS` rounds of the same write pattern, the time spent inside `flush` measured apart):
//! on a shared machine the median of the per-round ratios is steadier than two criterion runs
//! made a minute apart. Finally the mirrored/single throughput ratios are printed from
//! criterion's estimates (mean, slope, median) and from the rounds, against the target
//! (mirrored >= 85 % of single-copy). `SSP_MIRROR_SUMMARY=FILE` also writes them to FILE as
//! Markdown table rows (used by scripts/bench-mirror.sh).
//!
//! The whole run takes about 1.5 minutes on 2 cores.

use criterion::{criterion_group, Criterion, Throughput};
use ssp::dev::{BlockDev, FileDev};
use ssp::pool::{CreateOptions, Options, Pool};
use std::fs::{File, OpenOptions};
use std::hint::black_box;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tempfile::TempDir;

const KB4: u64 = 4096;
const MB: u64 = 1 << 20;
const GB: u64 = 1 << 30;

/// LU size (both pools).
const LU: u64 = GB;
/// Size of every PV file (sparse).
const PV: u64 = 4 * GB;
/// Interleaved rounds per group after the criterion runs.
const ROUNDS: usize = 7;
/// Writes per interleaved round: 4 KiB random (16 MiB) and 1 MiB sequential (64 MiB).
const ROUND_WRITES_4K: u64 = 4096;
const ROUND_WRITES_1M: u64 = 64;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(default)
}

fn flush_every_4k() -> u64 {
    env_u64("SSP_MIRROR_FLUSH_4K", 64)
}

fn flush_every_1m() -> u64 {
    env_u64("SSP_MIRROR_FLUSH_1M", 16)
}

fn bench_dir() -> TempDir {
    let base = std::env::var_os("SSP_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
    std::fs::create_dir_all(&base).expect("create bench base dir");
    tempfile::Builder::new()
        .prefix("ssp-bench-mirror-")
        .tempdir_in(&base)
        .expect("create bench temp dir")
}

/// Write back every dirty page in the system (untimed), so one benchmark does not pay for the
/// writeback of the previous one.
fn settle() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() }
}

/// A 4 KiB-aligned buffer (see benches/engine.rs: misaligned user buffers slow the kernel's
/// copy several times over) filled with non-zero pseudo-random bytes.
struct PageBuf {
    v: Vec<u8>,
    off: usize,
    len: usize,
}

impl PageBuf {
    fn filled(len: usize, seed: u64) -> PageBuf {
        let v = vec![0u8; len + KB4 as usize];
        let off = v.as_ptr().align_offset(KB4 as usize);
        let mut b = PageBuf { v, off, len };
        let mut x = seed | 1;
        for c in b.v[off..off + len].chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
        }
        b
    }
}

impl std::ops::Deref for PageBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.v[self.off..self.off + self.len]
    }
}

/// Tiny xorshift: the same offsets for both pools.
struct Rng(u64);

impl Rng {
    fn block_off(&mut self, limit: u64) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        (x % (limit / KB4)) * KB4
    }
}

/// Where a writer's data goes: a pool's LU, or plain files (the same bytes to each, then one
/// `fdatasync` per file in turn at every flush, as the mirrored pool does with its PVs).
enum Sink {
    Pool(Box<Pool>, u64),
    Files(Vec<File>),
}

/// One writer under test with its write cursor.
struct Target {
    sink: Sink,
    writes: u64,
    rng: Rng,
    seq: u64,
}

impl Target {
    fn with(sink: Sink) -> Target {
        settle();
        Target {
            sink,
            writes: 0,
            rng: Rng(0x1234_5678_9abc_def1),
            seq: 0,
        }
    }

    /// A pool with a 1 GiB LU on `PV`-sized sparse files: one, or two in two failure groups
    /// (the second added with `failgrp_create` and fully resynced).
    fn pool(dir: &Path, tag: &str, mirrored: bool) -> Target {
        let dev = |i: u32| -> Arc<dyn BlockDev> {
            Arc::new(FileDev::create(&dir.join(format!("{tag}-pv{i}.img")), PV).expect("PV file"))
        };
        let copts = CreateOptions {
            name: format!("bench-{tag}"),
            journal_blocks: 4096,
        };
        let pool = Pool::create(vec![dev(0)], &copts, Options::default()).expect("create pool");
        let lu = pool.lu_create("lu", LU).expect("lu create").id;
        if mirrored {
            pool.failgrp_create("fg2", vec![dev(1)])
                .expect("failgrp create");
            pool.resync_wait(&mut |_, _| {}).expect("resync");
            let st = pool.status();
            assert_eq!(st.mirror_state, "SYNCED", "mirror state after resync");
            assert_eq!(st.failure_groups.len(), 2, "failure groups");
        }
        Target::with(Sink::Pool(Box::new(pool), lu))
    }

    /// `n` plain sparse files of the LU's size.
    fn plain(dir: &Path, tag: &str, n: u32) -> Target {
        let files = (0..n)
            .map(|i| {
                let f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(dir.join(format!("{tag}-plain{i}.img")))
                    .expect("create plain file");
                f.set_len(LU).expect("size plain file");
                f
            })
            .collect();
        Target::with(Sink::Files(files))
    }

    fn put(&mut self, off: u64, data: &[u8]) {
        match &self.sink {
            Sink::Pool(pool, lu) => pool
                .write(*lu, off, black_box(data), false)
                .expect("pool write"),
            Sink::Files(files) => {
                for f in files {
                    f.write_all_at(black_box(data), off).expect("pwrite");
                }
            }
        }
    }

    /// Flush; returns how long it took.
    fn flush(&mut self) -> Duration {
        let t = Instant::now();
        match &self.sink {
            Sink::Pool(pool, _) => pool.flush().expect("flush"),
            Sink::Files(files) => {
                for f in files {
                    f.sync_data().expect("fdatasync");
                }
            }
        }
        t.elapsed()
    }

    /// One 4 KiB random write, and a flush every `every` writes; returns the flush time.
    fn write_4k(&mut self, data: &[u8], every: u64) -> Duration {
        let off = self.rng.block_off(LU);
        self.put(off, data);
        self.count(every)
    }

    /// One 1 MiB sequential write, and a flush every `every` writes; returns the flush time.
    fn write_1m(&mut self, data: &[u8], every: u64) -> Duration {
        self.put(self.seq, data);
        self.seq = (self.seq + MB) % LU;
        self.count(every)
    }

    fn count(&mut self, every: u64) -> Duration {
        self.writes += 1;
        if self.writes % every != 0 {
            return Duration::ZERO;
        }
        self.flush()
    }

    fn report(self, what: &str) {
        let Sink::Pool(pool, _) = self.sink else {
            return;
        };
        let st = pool.status();
        eprintln!(
            "[{what}] mirror {}, write amplification {:.3}, used {} MiB of {} MiB, checkpoint generation {}, {:?}",
            st.mirror_state,
            st.write_amplification,
            st.used_bytes >> 20,
            st.total_bytes >> 20,
            st.checkpoint_generation,
            st.counters,
        );
        pool.close().expect("close");
    }
}

/// Whether criterion measures (`cargo bench` passes `--bench`); in test mode
/// (`cargo test --benches`) the interleaved rounds are skipped.
fn measuring() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// Results of the interleaved rounds, printed (and summarised) at the end.
static ROUND_RESULTS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// (first quartile, median, third quartile).
fn quartiles(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    (v[v.len() / 4], v[v.len() / 2], v[v.len() * 3 / 4])
}

/// `ROUNDS` interleaved rounds of `n` writes (then a flush) on the single-copy pool, the
/// mirrored pool, one plain file and two plain files, in turn (the order rotates every round);
/// records median throughputs, the median and quartiles of the per-round mirrored/single
/// ratios (pools and plain files) and the median time per flush.
fn rounds(
    what: &str,
    bytes: u64,
    n: u64,
    ts: [&mut Target; 4],
    op: &dyn Fn(&mut Target) -> Duration,
) {
    let every = n.min(if bytes == KB4 {
        flush_every_4k()
    } else {
        flush_every_1m()
    });
    let flushes = (n / every).max(1) as f64;
    // Per target: (MiB/s, ms per flush) of each round.
    let mut res: [Vec<(f64, f64)>; 4] = Default::default();
    for r in 0..ROUNDS {
        for k in 0..4 {
            let i = (r + k) % 4;
            let t = &mut *ts[i];
            let start = Instant::now();
            let mut fl = Duration::ZERO;
            for _ in 0..n {
                fl += op(t);
            }
            // End the round flushed, so no round leaves work for the next one.
            fl += t.flush();
            let secs = start.elapsed().as_secs_f64();
            res[i].push((
                (n * bytes) as f64 / secs / MB as f64,
                fl.as_secs_f64() * 1e3 / (flushes + 1.0),
            ));
        }
    }
    let col =
        |i: usize, f: &dyn Fn(&(f64, f64)) -> f64| -> Vec<f64> { res[i].iter().map(f).collect() };
    let ratio = |a: usize, b: usize| -> (f64, f64, f64) {
        let mut v: Vec<f64> = res[a].iter().zip(&res[b]).map(|(x, y)| x.0 / y.0).collect();
        quartiles(&mut v)
    };
    let mbs = |i: usize| quartiles(&mut col(i, &|x| x.0)).1;
    let ms = |i: usize| quartiles(&mut col(i, &|x| x.1)).1;
    let (pr, fr) = (ratio(1, 0), ratio(3, 2));
    let line = format!(
        "| {what} | {:.1} | {:.1} | {:.1} % ({:.0}..{:.0} %) | {:.1} | {:.1} | {:.1} % ({:.0}..{:.0} %) | {:.2} / {:.2} | {:.2} / {:.2} |",
        mbs(0),
        mbs(1),
        pr.1 * 100.0,
        pr.0 * 100.0,
        pr.2 * 100.0,
        mbs(2),
        mbs(3),
        fr.1 * 100.0,
        fr.0 * 100.0,
        fr.2 * 100.0,
        ms(0),
        ms(1),
        ms(2),
        ms(3),
    );
    eprintln!("[rounds] {line}");
    ROUND_RESULTS.lock().unwrap().push(line);
}

fn write_4k(c: &mut Criterion) {
    let dir = bench_dir();
    let every = flush_every_4k();
    let data = PageBuf::filled(KB4 as usize, 0x5eed);
    let mut single: Option<Target> = None;
    let mut mirrored: Option<Target> = None;
    let mut g = c.benchmark_group("mirror_write_4k");
    g.throughput(Throughput::Bytes(KB4))
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(6));
    g.bench_function("single_4k_random", |b| {
        let t = single.get_or_insert_with(|| Target::pool(dir.path(), "s4k", false));
        b.iter(|| t.write_4k(&data, every))
    });
    g.bench_function("mirrored_4k_random", |b| {
        let t = mirrored.get_or_insert_with(|| Target::pool(dir.path(), "m4k", true));
        b.iter(|| t.write_4k(&data, every))
    });
    g.finish();
    if let (Some(s), Some(m), true) = (single.as_mut(), mirrored.as_mut(), measuring()) {
        let mut p1 = Target::plain(dir.path(), "4k", 1);
        let mut p2 = Target::plain(dir.path(), "4k2", 2);
        rounds(
            &format!(
                "4 KiB random write, flush every {every} ({ROUNDS} rounds x {} MiB)",
                (ROUND_WRITES_4K * KB4) >> 20
            ),
            KB4,
            ROUND_WRITES_4K,
            [s, m, &mut p1, &mut p2],
            &|t| t.write_4k(&data, every),
        );
    }
    for (t, what) in [
        (single, "single_4k_random"),
        (mirrored, "mirrored_4k_random"),
    ] {
        if let Some(t) = t {
            t.report(what);
        }
    }
}

fn write_1m(c: &mut Criterion) {
    let dir = bench_dir();
    let every = flush_every_1m();
    let data = PageBuf::filled(MB as usize, 0xabcd);
    let mut single: Option<Target> = None;
    let mut mirrored: Option<Target> = None;
    let mut g = c.benchmark_group("mirror_write_1m");
    g.throughput(Throughput::Bytes(MB))
        .sample_size(15)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(6));
    g.bench_function("single_1m_seq", |b| {
        let t = single.get_or_insert_with(|| Target::pool(dir.path(), "s1m", false));
        b.iter(|| t.write_1m(&data, every))
    });
    g.bench_function("mirrored_1m_seq", |b| {
        let t = mirrored.get_or_insert_with(|| Target::pool(dir.path(), "m1m", true));
        b.iter(|| t.write_1m(&data, every))
    });
    g.finish();
    if let (Some(s), Some(m), true) = (single.as_mut(), mirrored.as_mut(), measuring()) {
        let mut p1 = Target::plain(dir.path(), "1m", 1);
        let mut p2 = Target::plain(dir.path(), "1m2", 2);
        rounds(
            &format!(
                "1 MiB sequential write, flush every {every} ({ROUNDS} rounds x {} MiB)",
                (ROUND_WRITES_1M * MB) >> 20
            ),
            MB,
            ROUND_WRITES_1M,
            [s, m, &mut p1, &mut p2],
            &|t| t.write_1m(&data, every),
        );
    }
    for (t, what) in [(single, "single_1m_seq"), (mirrored, "mirrored_1m_seq")] {
        if let Some(t) = t {
            t.report(what);
        }
    }
}

/// Criterion's output directory, found as criterion finds it.
fn criterion_dir() -> PathBuf {
    if let Some(h) = std::env::var_os("CRITERION_HOME") {
        return PathBuf::from(h);
    }
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(t).join("criterion");
    }
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .map(|p| p.join("criterion"))
        .unwrap_or_else(|| PathBuf::from("target/criterion"))
}

/// (mean, slope, median) in ns per iteration of one benchmark, if this run wrote them.
fn estimates(group: &str, bench: &str, since: SystemTime) -> Option<(f64, Option<f64>, f64)> {
    let path = criterion_dir()
        .join(group)
        .join(bench)
        .join("new")
        .join("estimates.json");
    if std::fs::metadata(&path).ok()?.modified().ok()? < since {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
    let pe = |k: &str| v.get(k)?.get("point_estimate")?.as_f64();
    Some((pe("mean")?, pe("slope"), pe("median")?))
}

/// Print (and with `SSP_MIRROR_SUMMARY` write) the mirrored/single throughput ratios.
fn summary(since: SystemTime) {
    const TARGET: f64 = 0.85;
    let mut out = vec![
        "Criterion (each benchmark timed on its own; MiB/s from the mean):".to_string(),
        String::new(),
        "| benchmark | single MiB/s | mirrored MiB/s | mirrored / single: mean | slope | median | target >= 85 % |".to_string(),
        "|---|---:|---:|---:|---:|---:|---|".to_string(),
    ];
    let pairs = [
        (
            "mirror_write_4k",
            "single_4k_random",
            "mirrored_4k_random",
            KB4,
            format!("4 KiB random write, flush every {}", flush_every_4k()),
        ),
        (
            "mirror_write_1m",
            "single_1m_seq",
            "mirrored_1m_seq",
            MB,
            format!("1 MiB sequential write, flush every {}", flush_every_1m()),
        ),
    ];
    let mbs = |bytes: u64, ns: f64| bytes as f64 * 1e9 / ns / MB as f64;
    for (group, s, m, bytes, what) in pairs {
        let (Some(s), Some(m)) = (estimates(group, s, since), estimates(group, m, since)) else {
            continue;
        };
        let slope = match (s.1, m.1) {
            (Some(a), Some(b)) => format!("{:.1} %", a / b * 100.0),
            _ => "-".into(),
        };
        let verdict = if s.0 / m.0 >= TARGET && s.2 / m.2 >= TARGET {
            "met"
        } else {
            "NOT met"
        };
        out.push(format!(
            "| {what} | {:.1} | {:.1} | {:.1} % | {slope} | {:.1} % | {verdict} |",
            mbs(bytes, s.0),
            mbs(bytes, m.0),
            s.0 / m.0 * 100.0,
            s.2 / m.2 * 100.0,
        ));
    }
    let rounds = ROUND_RESULTS.lock().unwrap();
    if !rounds.is_empty() {
        out.push(String::new());
        out.push(format!(
            "Interleaved rounds (pool single, pool mirrored, 1 plain file, 2 plain files in turn, {ROUNDS} rounds; \
             medians; ratio quartiles in brackets; plain files: the same writes with `pwrite` and one `fdatasync` per file at each flush):"
        ));
        out.push(String::new());
        out.push("| pattern | pool single MiB/s | pool mirrored MiB/s | mirrored / single | 1 file MiB/s | 2 files MiB/s | 2 files / 1 file | ms per flush: pools single / mirrored | ms per flush: 1 / 2 files |".to_string());
        out.push("|---|---:|---:|---:|---:|---:|---:|---:|---:|".to_string());
        out.extend(rounds.iter().cloned());
    }
    println!();
    println!("mirrored vs single-copy write throughput (MiB/s = 2^20 bytes/s of LU data)");
    for l in &out {
        println!("{l}");
    }
    if let Some(path) = std::env::var_os("SSP_MIRROR_SUMMARY") {
        let mut f = std::fs::File::create(&path).expect("summary file");
        for l in &out {
            writeln!(f, "{l}").expect("write summary");
        }
    }
}

criterion_group!(benches, write_4k, write_1m);

fn main() {
    let since = SystemTime::now();
    benches();
    Criterion::default().configure_from_args().final_summary();
    summary(since);
}
