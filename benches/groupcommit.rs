//! Group commit: flush latency with one flusher vs 32 concurrent flushers on a file-backed pool
//! (two PVs, synced in parallel).
//!
//! Run with `cargo bench --bench groupcommit`. Pools live in a temporary directory under
//! `SSP_BENCH_DIR` if set, else under cargo's per-target temporary directory (on the disk of the
//! target dir, never a tmpfs `/tmp`, where a sync costs nothing).
//!
//! - `flush/1_flusher`: one thread writes a 4 KiB block and flushes; the time of one such pair.
//! - `flush/32_flushers`: 32 threads each write a 4 KiB block and flush, all at once; the time
//!   until the last of the 32 returns. Group commit makes this one or two sync rounds, so it
//!   should stay within about twice `1_flusher` (without it, 32 × PVs syncs in a row).
//!
//! After the run the PV syncs per 32-flush round are printed (from the pool's counters).
//!
//! Measured on the shared 2-core dev box (ext4 on a virtual disk, load average 7-14 from other
//! builds): `1_flusher` 4.60 ms, `32_flushers` 4.92 ms (1.07×), with 2.07 sync rounds and 4.21
//! PV syncs per 32 concurrent flushes.

use criterion::{criterion_group, criterion_main, Criterion};
use ssp::dev::{BlockDev, FileDev};
use ssp::pool::{CreateOptions, Options, Pool};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};
use tempfile::TempDir;

const MB: u64 = 1 << 20;
const FLUSHERS: usize = 32;

fn bench_dir() -> TempDir {
    let base = std::env::var_os("SSP_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
    std::fs::create_dir_all(&base).expect("create bench base dir");
    tempfile::Builder::new()
        .prefix("ssp-bench-gc-")
        .tempdir_in(&base)
        .expect("create bench temp dir")
}

fn pool(dir: &TempDir) -> Arc<Pool> {
    let devs: Vec<Arc<dyn BlockDev>> = (0..2)
        .map(|i| {
            Arc::new(
                FileDev::create(&dir.path().join(format!("pv{i}")), 512 * MB)
                    .expect("create PV file"),
            ) as Arc<dyn BlockDev>
        })
        .collect();
    let copts = CreateOptions {
        name: "bench".into(),
        journal_blocks: 4096,
    };
    let p = Pool::create(devs, &copts, Options::default()).expect("create pool");
    p.lu_create("lu", 256 * MB).expect("create LU");
    Arc::new(p)
}

fn flush(c: &mut Criterion) {
    let dir = bench_dir();
    let p = pool(&dir);
    let vol = p.lu_id("lu").expect("LU id");
    let mut g = c.benchmark_group("flush");
    g.sample_size(30).measurement_time(Duration::from_secs(8));

    let block = [0x11u8; 4096];
    let mut n = 0u64;
    g.bench_function("1_flusher", |b| {
        b.iter(|| {
            n = (n + 1) % 4096;
            p.write(vol, n * 4096, &block, false).expect("write");
            p.flush().expect("flush");
        })
    });

    // Persistent flusher threads, released together for each iteration.
    let start = Arc::new(Barrier::new(FLUSHERS + 1));
    let done = Arc::new(Barrier::new(FLUSHERS + 1));
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..FLUSHERS as u64)
        .map(|t| {
            let (p, start, done, stop) = (p.clone(), start.clone(), done.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut k = 0u64;
                loop {
                    start.wait();
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    k = (k + 1) % 64;
                    let lba = 8192 + t * 64 + k;
                    p.write(vol, lba * 4096, &[t as u8; 4096], false)
                        .expect("write");
                    p.flush().expect("flush");
                    done.wait();
                }
            })
        })
        .collect();
    let before = p.status().counters;
    let mut rounds = 0u64;
    g.bench_function("32_flushers", |b| {
        b.iter_custom(|iters| {
            let t = Instant::now();
            for _ in 0..iters {
                start.wait();
                done.wait();
            }
            rounds += iters;
            t.elapsed()
        })
    });
    g.finish();
    let after = p.status().counters;
    stop.store(true, Ordering::SeqCst);
    start.wait();
    for t in threads {
        t.join().expect("flusher thread");
    }
    if rounds > 0 {
        println!(
            "32_flushers: {:.2} sync rounds and {:.2} PV syncs per 32 concurrent flushes (2 PVs)",
            (after.sync_rounds - before.sync_rounds) as f64 / rounds as f64,
            (after.pv_syncs - before.pv_syncs) as f64 / rounds as f64
        );
    }
}

criterion_group!(benches, flush);
criterion_main!(benches);
