//! The PV I/O engines in process: `FileDev` with the sync (`pread`/`pwrite`) and io_uring
//! engines, through the page cache and with `O_DIRECT`, next to plain `pread`/`pwrite` on a
//! `File` doing the same I/O (the baseline every engine pays its overhead against).
//!
//! Run with `cargo bench --bench io_engines` (about 1.5 minutes on 2 cores; add a filter such
//! as `read_4k` to run one group). Files live in a temporary directory under `SSP_BENCH_DIR` if
//! set, else under cargo's per-target temporary directory (on the target dir's disk, not a tmpfs
//! `/tmp`, so `O_DIRECT` works). Where io_uring or `O_DIRECT` is unavailable, those cases are
//! left out with a note on stderr.
//!
//! Groups (all with `Throughput::Bytes`), each with `pread`/`pwrite` (plain file), `sync`,
//! `uring`, and, where `O_DIRECT` works, `sync_direct`, `uring_direct`:
//! - `read_4k`: 4 KiB reads at random 4 KiB offsets of a 64 MiB file (in the page cache; the
//!   direct cases read the device);
//! - `write_4k`: 4 KiB writes at random offsets, no sync;
//! - `write_1m`: 1 MiB sequential writes, no sync;
//! - `write_batch_16x4k`: 16 scattered 4 KiB writes per iteration, one `write_many_at` call (one
//!   `io_uring_enter` for the uring engine) vs 16 `pwrite`s;
//! - `write_4k_sync`: a 4 KiB write followed by a data sync (`fdatasync` / `IORING_OP_FSYNC`).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ssp::dev::direct::AlignedBuf;
use ssp::dev::{BlockDev, CacheChoice, EngineChoice, FileDev, IoConfig};
use std::fs::{File, OpenOptions};
use std::hint::black_box;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

const FILE_SIZE: u64 = 64 << 20;
const BLOCKS: u64 = FILE_SIZE / 4096;

struct Setup {
    _dir: tempfile::TempDir,
    plain: File,
    devs: Vec<(&'static str, FileDev)>,
}

fn base_dir() -> PathBuf {
    std::env::var_os("SSP_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")))
}

fn fill(path: &Path) {
    let f = File::create(path).unwrap();
    let chunk: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
    for i in 0..FILE_SIZE >> 20 {
        f.write_all_at(&chunk, i << 20).unwrap();
    }
    f.sync_all().unwrap();
}

fn setup() -> Setup {
    std::fs::create_dir_all(base_dir()).unwrap();
    let dir = tempfile::tempdir_in(base_dir()).unwrap();
    let plain_path = dir.path().join("plain");
    fill(&plain_path);
    let plain = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&plain_path)
        .unwrap();
    let mut devs = Vec::new();
    let uring = ssp::dev::iomode::uring_available();
    if let Err(why) = uring {
        eprintln!("io_uring unavailable ({why}): uring cases left out");
    }
    let cases: [(&'static str, EngineChoice, CacheChoice); 4] = [
        ("sync", EngineChoice::Sync, CacheChoice::Writeback),
        ("uring", EngineChoice::Uring, CacheChoice::Writeback),
        ("sync_direct", EngineChoice::Sync, CacheChoice::None),
        ("uring_direct", EngineChoice::Uring, CacheChoice::None),
    ];
    for (name, engine, cache) in cases {
        if engine == EngineChoice::Uring && uring.is_err() {
            continue;
        }
        let p = dir.path().join(name);
        fill(&p);
        match FileDev::open_with(&p, &IoConfig::new(engine, cache)) {
            Ok(d) => devs.push((name, d)),
            Err(e) => eprintln!("{name} left out: {e}"),
        }
    }
    Setup {
        _dir: dir,
        plain,
        devs,
    }
}

/// A cheap deterministic sequence of block numbers.
struct Rng(u64);
impl Rng {
    fn block(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % BLOCKS
    }
}

fn benches(c: &mut Criterion) {
    let s = setup();
    let mut buf = AlignedBuf::new(1 << 20);
    buf.fill(0xA5);

    let mut g = c.benchmark_group("read_4k");
    g.throughput(Throughput::Bytes(4096));
    let mut rng = Rng(7);
    g.bench_function("pread", |b| {
        let mut r = AlignedBuf::new(4096);
        b.iter(|| s.plain.read_exact_at(&mut r, rng.block() * 4096).unwrap())
    });
    for (name, d) in &s.devs {
        g.bench_function(BenchmarkId::from_parameter(name), |b| {
            let mut r = AlignedBuf::new(4096);
            b.iter(|| d.read_at(&mut r, rng.block() * 4096).unwrap())
        });
    }
    g.finish();

    let mut g = c.benchmark_group("write_4k");
    g.throughput(Throughput::Bytes(4096));
    let w4 = &buf[..4096];
    g.bench_function("pwrite", |b| {
        b.iter(|| s.plain.write_all_at(w4, rng.block() * 4096).unwrap())
    });
    for (name, d) in &s.devs {
        g.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| d.write_at(w4, rng.block() * 4096).unwrap())
        });
    }
    g.finish();

    let mut g = c.benchmark_group("write_1m");
    g.throughput(Throughput::Bytes(1 << 20));
    let mut at = 0u64;
    let mut next = move || {
        at = (at + (1 << 20)) % FILE_SIZE;
        at
    };
    g.bench_function("pwrite", |b| {
        b.iter(|| s.plain.write_all_at(&buf, next()).unwrap())
    });
    for (name, d) in &s.devs {
        g.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| d.write_at(&buf, next()).unwrap())
        });
    }
    g.finish();

    let mut g = c.benchmark_group("write_batch_16x4k");
    g.throughput(Throughput::Bytes(16 * 4096));
    let batch = |rng: &mut Rng| -> Vec<u64> {
        let mut v: Vec<u64> = (0..16).map(|_| rng.block() * 4096).collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    g.bench_function("pwrite", |b| {
        b.iter(|| {
            for off in batch(&mut rng) {
                s.plain.write_all_at(w4, off).unwrap();
            }
        })
    });
    for (name, d) in &s.devs {
        g.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| {
                let offs = batch(&mut rng);
                let writes: Vec<(&[u8], u64)> = offs.iter().map(|o| (w4, *o)).collect();
                d.write_many_at(black_box(&writes)).unwrap()
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("write_4k_sync");
    g.throughput(Throughput::Bytes(4096));
    g.sample_size(10);
    g.bench_function("pwrite_fdatasync", |b| {
        b.iter(|| {
            s.plain.write_all_at(w4, rng.block() * 4096).unwrap();
            s.plain.sync_data().unwrap()
        })
    });
    for (name, d) in &s.devs {
        g.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| {
                d.write_at(w4, rng.block() * 4096).unwrap();
                d.sync().unwrap()
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = io_engines;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .noise_threshold(0.05);
    targets = benches
}
criterion_main!(io_engines);
