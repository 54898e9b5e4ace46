//! Parallel in-process reads: cached 4 KiB random reads of one LU from 1 and 2 threads, and from
//! 2 threads taking turns through one mutex around `Pool::read` (what a pool-wide exclusive lock
//! on the read path amounts to), all in one run.
//!
//! A control group reads the PV file itself with `pread` from 1 and 2 threads: how far two
//! threads scale on the machine as it is during the run (other load, shared cores).
//!
//! Run with `cargo bench --bench parallel_reads`. The pool is one file-backed PV (in the page
//! cache after the warm-up read, so no read waits for the disk) under `SSP_BENCH_DIR` if set,
//! else under cargo's per-target temporary directory. Throughput is in reads (elements): with
//! reads planned under the pool lock's shared side, 2 threads should come close to twice one
//! thread's rate on a 2-core machine, and well above the serialised pair.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ssp::dev::{BlockDev, FileDev};
use ssp::pool::{CreateOptions, Options, Pool};
use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const KB4: u64 = 4096;
const MB: u64 = 1 << 20;
/// Written (and read) part of the LU: every block mapped, all metadata resident.
const FILL: u64 = 64 * MB;

struct Fixture {
    dir: tempfile::TempDir,
    pool: Arc<Pool>,
    id: u64,
}

fn fixture() -> Fixture {
    let base = std::env::var_os("SSP_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
    let dir = tempfile::tempdir_in(base).unwrap();
    let dev: Arc<dyn BlockDev> =
        Arc::new(FileDev::create(&dir.path().join("pv0.img"), 4 * FILL).unwrap());
    let copts = CreateOptions {
        name: "bench".into(),
        journal_blocks: 1024,
    };
    let pool = Pool::create(vec![dev], &copts, Options::default()).unwrap();
    let id = pool.lu_create("lu", FILL).unwrap().id;
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut chunk = vec![0u8; MB as usize];
    for off in (0..FILL).step_by(MB as usize) {
        for w in chunk.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes());
        }
        pool.write(id, off, &chunk, false).unwrap();
    }
    pool.flush().unwrap();
    pool.checkpoint().unwrap();
    // Warm: every map node and VBA page resident, the PV file in the page cache.
    let mut b = vec![0u8; MB as usize];
    for off in (0..FILL).step_by(MB as usize) {
        pool.read(id, off, &mut b).unwrap();
    }
    Fixture {
        dir,
        pool: Arc::new(pool),
        id,
    }
}

/// `n` random 4 KiB reads from one thread (seeded by `seed`), through `read`.
fn reads(n: u64, seed: u64, read: &(dyn Fn(u64, &mut [u8]) + Sync)) {
    let mut x = seed | 1;
    let mut b = vec![0u8; KB4 as usize];
    for _ in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        read((x % (FILL / KB4)) * KB4, &mut b);
        black_box(&b);
    }
}

/// Wall time for `iters` reads split over `threads` threads.
fn timed(iters: u64, threads: u64, read: &(dyn Fn(u64, &mut [u8]) + Sync)) -> Duration {
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let n = iters / threads + u64::from(t < iters % threads);
            s.spawn(move || reads(n, 0x1234_5678 + t * 0x9e37, read));
        }
    });
    start.elapsed()
}

fn parallel_reads(c: &mut Criterion) {
    let f = fixture();
    let (pool, id) = (f.pool.clone(), f.id);
    let plain = move |off: u64, b: &mut [u8]| pool.read(id, off, b).unwrap();
    let turns = Mutex::new(());
    let pool = f.pool.clone();
    let serialised = move |off: u64, b: &mut [u8]| {
        let _g = turns.lock().unwrap();
        pool.read(id, off, b).unwrap();
    };
    let mut g = c.benchmark_group("cached_read_4k");
    g.throughput(Throughput::Elements(1))
        .sample_size(20)
        .measurement_time(Duration::from_secs(4));
    g.bench_function("1_thread", |bch| {
        bch.iter_custom(|iters| timed(iters, 1, &plain))
    });
    g.bench_function("2_threads", |bch| {
        bch.iter_custom(|iters| timed(iters, 2, &plain))
    });
    g.bench_function("2_threads_serialised", |bch| {
        bch.iter_custom(|iters| timed(iters, 2, &serialised))
    });
    g.finish();
    let file = std::fs::File::open(f.dir.path().join("pv0.img")).unwrap();
    let raw = move |off: u64, b: &mut [u8]| {
        std::os::unix::fs::FileExt::read_exact_at(&file, b, off).unwrap();
    };
    let mut g = c.benchmark_group("pread_4k_control");
    g.throughput(Throughput::Elements(1))
        .sample_size(20)
        .measurement_time(Duration::from_secs(4));
    g.bench_function("1_thread", |bch| {
        bch.iter_custom(|iters| timed(iters, 1, &raw))
    });
    g.bench_function("2_threads", |bch| {
        bch.iter_custom(|iters| timed(iters, 2, &raw))
    });
    g.finish();
}

criterion_group!(benches, parallel_reads);
criterion_main!(benches);
