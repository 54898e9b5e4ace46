//! Snapshots, clones and rollback: what they cost, what reading through a deep clone costs and
//! what the first write to a shared block costs, on file-backed pools.
//!
//! Run with `cargo bench --bench sharing` (about 1.5 minutes on 2 cores). Pools live in a
//! temporary directory under `SSP_BENCH_DIR` if set, else under cargo's per-target temporary
//! directory (like benches/engine.rs).
//!
//! Groups:
//! - `metadata_ops`: `snapshot_create`, `clone_create` and `snapshot_rollback`, each on LUs with
//!   0, 64 MiB and 1 GiB written (1 GiB LUs) and on an empty 1 TiB LU. Each timed call is one
//!   operation (it journals one record and flushes, i.e. one `fdatasync`); what it created is
//!   removed again untimed, so every iteration sees the same pool. Rollback alternates between
//!   the LU's snapshot taken before anything was written (`@empty`) and the one after (`@full`),
//!   so every rollback changes the whole written data. `reference/write_4k_flush` (a 4 KiB
//!   write plus `flush`) is the cost of the flush every operation includes.
//!   Before the timed runs, one call of each (and its undo) is measured with the pool's
//!   counters and the process's `wchar` (bytes passed to write syscalls): every operation should
//!   write one journal block and nothing else. After them, interleaved rounds (every LU in
//!   turn, 8 calls each, 5 rounds) give the median per LU side by side.
//! - `clone_depth_read_4k`: 4 KiB random reads over the same 256 MiB of data in a flat LU and
//!   in linked clones at depth 1 and 16 (`base@s` -> `c1`, `c1@s` -> `c2`, ..., `c16`, each
//!   level writing 8 blocks of its own; the flat LU gets the same 128 writes), caches warm.
//!   After the criterion runs, 31 interleaved rounds (same offsets, flat / depth 1 / depth 16
//!   in turn) give the depth/flat time ratio (median and quartiles of the per-round ratios).
//! - `first_write_4k`: a 4 KiB write to a block of a clone that it still shares with its
//!   snapshot (`first_write_shared`: family of 4 volumes; `first_write_shared_depth16`: a
//!   clone at depth 16, family of 35 volumes), against overwriting a block the clone already
//!   owns (`overwrite_owned_clone`) and a block of an LU that never shared anything
//!   (`overwrite_flat`); `first_write_shared_depth1_family35` is a depth-1 clone in the
//!   family of 35, to tell clone depth from family size. Blocks are taken in random order;
//!   when a clone has no shared block left it is removed and cloned again (untimed). After the
//!   criterion runs, interleaved rounds of 2000 writes each compare the four kinds of write.
//!   Then the write amplification of first writes: the pool's counters (user, metadata and
//!   journal blocks) and `wchar` over 4096 random (and 4096 sequential) first writes, a flush
//!   and a checkpoint, divided by the writes, next to the same for owned overwrites; for one
//!   first write alone; and for one first write per map leaf (every write shadows a leaf: the
//!   worst case for metadata).
//!
//! The machine is shared (2 cores, other builds running): compare within one run.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ssp::dev::{BlockDev, FileDev};
use ssp::format::node::MAP_FANOUT;
use ssp::pool::{Counters, CreateOptions, Options, Pool};
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tempfile::TempDir;

const KB4: u64 = 4096;
const MB: u64 = 1 << 20;
const GB: u64 = 1 << 30;
const TB: u64 = 1 << 40;

/// PV size of every pool (sparse).
const POOL: u64 = 4 * GB;
/// Written part of the LUs read through clones.
const READ_FILL: u64 = 256 * MB;
/// Clone depth of the deep-read and deep-write benches.
const DEPTH: usize = 16;
/// Blocks each clone level writes of its own.
const LEVEL_WRITES: u64 = 8;
/// Written part of the base LU of the first-write benches.
const FW_FILL: u64 = 64 * MB;
/// Writes of the amplification measurement.
const AMP_WRITES: u64 = 4096;

fn bench_dir() -> TempDir {
    let base = std::env::var_os("SSP_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
    std::fs::create_dir_all(&base).expect("create bench base dir");
    tempfile::Builder::new()
        .prefix("ssp-bench-sharing-")
        .tempdir_in(&base)
        .expect("create bench temp dir")
}

/// A fresh pool on one sparse file.
fn file_pool(path: &Path) -> Pool {
    let dev: Arc<dyn BlockDev> = Arc::new(FileDev::create(path, POOL).expect("create PV file"));
    let copts = CreateOptions {
        name: "bench".into(),
        journal_blocks: 4096,
    };
    Pool::create(vec![dev], &copts, Options::default()).expect("create pool")
}

/// Write back every dirty page in the system (untimed).
fn settle() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() }
}

/// A zeroed buffer whose first byte is 4 KiB aligned (see benches/engine.rs for why).
struct PageBuf {
    v: Vec<u8>,
    off: usize,
    len: usize,
}

impl PageBuf {
    fn new(len: usize) -> PageBuf {
        let v = vec![0u8; len + KB4 as usize];
        let off = v.as_ptr().align_offset(KB4 as usize);
        PageBuf { v, off, len }
    }
}

impl std::ops::Deref for PageBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.v[self.off..self.off + self.len]
    }
}

impl std::ops::DerefMut for PageBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.v[self.off..self.off + self.len]
    }
}

/// Deterministic non-zero filler.
fn filler(len: usize, seed: u64) -> PageBuf {
    let mut x = seed | 1;
    let mut v = PageBuf::new(len);
    for c in v.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        c.copy_from_slice(&b[..c.len()]);
    }
    v
}

/// Tiny xorshift.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    /// Random 4 KiB-aligned offset below `limit`.
    fn block_off(&mut self, limit: u64) -> u64 {
        (self.next() % (limit / KB4)) * KB4
    }
    /// The block numbers `0..n` in random order.
    fn shuffled(&mut self, n: u64) -> Vec<u64> {
        let mut v: Vec<u64> = (0..n).collect();
        for i in (1..v.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
        v
    }
}

/// Write `len` bytes at the start of LU `id` in 1 MiB requests, then flush and checkpoint.
fn fill(pool: &Pool, id: u64, len: u64, seed: u64) {
    let mut off = 0;
    while off < len {
        let n = (len - off).min(MB);
        let chunk = filler(n as usize, seed.wrapping_add(off / MB + 1));
        pool.write(id, off, &chunk, false).expect("fill write");
        off += n;
    }
    pool.flush().expect("flush");
    pool.checkpoint().expect("checkpoint");
}

/// Bytes this process has passed to write(2)/pwrite(2) so far (`wchar` of /proc/self/io).
fn wchar() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("wchar:").map(|v| v.trim().parse().ok()))
                .flatten()
        })
        .unwrap_or(0)
}

/// Pool counters and `wchar` at one moment.
#[derive(Clone, Copy)]
struct Io {
    c: Counters,
    wchar: u64,
}

fn io_now(pool: &Pool) -> Io {
    Io {
        c: pool.status().counters,
        wchar: wchar(),
    }
}

/// What was written between two moments, per operation.
fn io_per_op(a: Io, b: Io, ops: u64) -> String {
    let n = ops as f64;
    let user = (b.c.user_blocks_written - a.c.user_blocks_written) as f64 / n;
    let meta = (b.c.meta_blocks_written - a.c.meta_blocks_written) as f64 / n;
    let journal = (b.c.journal_blocks_written - a.c.journal_blocks_written) as f64 / n;
    let gc = (b.c.gc_blocks_moved - a.c.gc_blocks_moved) as f64 / n;
    let w = (b.wchar - a.wchar) as f64 / n;
    format!(
        "user {user:.3} + meta {meta:.3} + journal {journal:.3} + gc {gc:.3} = {:.3} blocks \
         ({:.1} KiB); wchar {:.1} KiB ({:.3} blocks); checkpoints {}",
        user + meta + journal + gc,
        (user + meta + journal + gc) * 4.0,
        w / 1024.0,
        w / KB4 as f64,
        b.c.checkpoints - a.c.checkpoints
    )
}

// ---------------------------------------------------------------------------------------------
// metadata_ops
// ---------------------------------------------------------------------------------------------

/// The LUs of the metadata benches: (label, LU name, LU size, bytes written).
const META_LUS: [(&str, &str, u64, u64); 4] = [
    ("0", "d0", GB, 0),
    ("64MiB", "d64m", GB, 64 * MB),
    ("1GiB", "d1g", GB, GB),
    ("0_of_1TiB", "e1t", TB, 0),
];

/// Each LU with snapshots `@empty` (before any write) and `@full` (after its writes).
fn meta_setup(dir: &Path) -> Pool {
    let t = Instant::now();
    let pool = file_pool(&dir.join("pv-meta.img"));
    for (i, &(_, name, size, written)) in META_LUS.iter().enumerate() {
        let id = pool.lu_create(name, size).expect("lu create").id;
        pool.snapshot_create(&[&format!("{name}@empty")])
            .expect("snapshot");
        fill(&pool, id, written, 0x3e7a + i as u64 * 0x1000);
        pool.snapshot_create(&[&format!("{name}@full")])
            .expect("snapshot");
    }
    pool.checkpoint().expect("checkpoint");
    settle();
    eprintln!("[metadata_ops setup] 4 LUs written in {:.2?}", t.elapsed());
    pool
}

#[derive(Clone, Copy, PartialEq)]
enum MetaOp {
    Snapshot,
    Clone,
    Rollback,
}

/// One operation on LU `name` (the timed part), then its undo (untimed): returns the time of
/// the operation alone. `k` makes names unique; `flip` picks the rollback target.
fn meta_once(pool: &Pool, op: MetaOp, name: &str, k: u64, flip: &mut bool) -> Duration {
    match op {
        MetaOp::Snapshot => {
            let snap = format!("{name}@b{k}");
            let t = Instant::now();
            black_box(pool.snapshot_create(&[&snap]).expect("snapshot create"));
            let d = t.elapsed();
            pool.snapshot_remove(&snap).expect("snapshot remove");
            d
        }
        MetaOp::Clone => {
            let clone = format!("{name}-c{k}");
            let t = Instant::now();
            black_box(
                pool.clone_create(&format!("{name}@full"), &clone)
                    .expect("clone create"),
            );
            let d = t.elapsed();
            pool.lu_remove(&clone).expect("clone remove");
            d
        }
        MetaOp::Rollback => {
            *flip = !*flip;
            let target = format!("{name}@{}", if *flip { "empty" } else { "full" });
            let t = Instant::now();
            let (_, undo) = pool.snapshot_rollback(&target).expect("rollback");
            let d = t.elapsed();
            pool.snapshot_remove(&undo).expect("undo remove");
            d
        }
    }
}

fn metadata_ops(c: &mut Criterion) {
    let dir = bench_dir();
    let mut pool: Option<Pool> = None;
    let mut k = 0u64;
    let mut flip = false;
    let ops = [
        ("snapshot_create", MetaOp::Snapshot),
        ("clone_create", MetaOp::Clone),
        ("snapshot_rollback", MetaOp::Rollback),
    ];
    let mut g = c.benchmark_group("metadata_ops");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    for (op_name, op) in ops {
        for &(label, name, _, _) in &META_LUS {
            let mut probed = false;
            g.bench_function(BenchmarkId::new(op_name, label), |b| {
                let pool = pool.get_or_insert_with(|| meta_setup(dir.path()));
                if !probed {
                    // One call and its undo measured with the counters (untimed).
                    probed = true;
                    let a = io_now(pool);
                    k += 1;
                    meta_once(pool, op, name, k, &mut flip);
                    let z = io_now(pool);
                    eprintln!(
                        "[{op_name} {label}] one call and its undo wrote: {}",
                        io_per_op(a, z, 1)
                    );
                }
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        k += 1;
                        total += meta_once(pool, op, name, k, &mut flip);
                    }
                    total
                })
            });
        }
    }
    // Interleaved rounds (every size in turn, 8 calls each, 5 rounds): the medians side by
    // side, free of the drift between criterion's separate runs.
    if let Some(pool) = &pool {
        let mut line = String::new();
        for (op_name, op) in ops {
            let mut times: Vec<Vec<Duration>> = vec![Vec::new(); META_LUS.len()];
            for _ in 0..5 {
                for (i, &(_, name, _, _)) in META_LUS.iter().enumerate() {
                    for _ in 0..8 {
                        k += 1;
                        times[i].push(meta_once(pool, op, name, k, &mut flip));
                    }
                }
            }
            line += &format!("\n    {op_name:<18}");
            for (i, t) in times.iter_mut().enumerate() {
                t.sort();
                line += &format!(
                    " {}: {:.2} ms",
                    META_LUS[i].0,
                    t[t.len() / 2].as_secs_f64() * 1e3
                );
            }
        }
        eprintln!("[metadata_ops] interleaved, median of 40 calls per LU:{line}");
    }
    // What one operation alone writes (no undo in the window).
    if let Some(pool) = &pool {
        let a = io_now(pool);
        pool.snapshot_create(&["d1g@probe"]).expect("snapshot");
        let z = io_now(pool);
        eprintln!("[snapshot_create 1GiB] alone: {}", io_per_op(a, z, 1));
        let a = io_now(pool);
        pool.clone_create("d1g@probe", "probe-clone")
            .expect("clone");
        let z = io_now(pool);
        eprintln!("[clone_create 1GiB] alone: {}", io_per_op(a, z, 1));
        let a = io_now(pool);
        pool.snapshot_rollback("d1g@empty").expect("rollback");
        let z = io_now(pool);
        eprintln!("[snapshot_rollback 1GiB] alone: {}", io_per_op(a, z, 1));
    }
    let block = filler(KB4 as usize, 0xf1);
    let mut rng = Rng(0x77);
    g.bench_function("reference/write_4k_flush", |b| {
        let pool = pool.get_or_insert_with(|| meta_setup(dir.path()));
        let id = pool.lu_id("d64m").expect("lu id");
        b.iter(|| {
            pool.write(id, rng.block_off(64 * MB), &block, false)
                .expect("write");
            pool.flush().expect("flush");
        })
    });
    g.finish();
    if let Some(pool) = pool {
        pool.close().expect("close");
    }
}

// ---------------------------------------------------------------------------------------------
// clone_depth_read_4k and first_write_shared_depth16 share one pool
// ---------------------------------------------------------------------------------------------

/// A pool holding `flat` and the chain `base` -> `c1` -> ... -> `c16` over the same data.
struct Chain {
    pool: Pool,
    flat: u64,
    /// Volume id of `c{d}` at index d (index 0: `base`).
    levels: Vec<u64>,
}

fn chain_setup(dir: &Path) -> Chain {
    let t = Instant::now();
    let pool = file_pool(&dir.join("pv-chain.img"));
    let flat = pool.lu_create("flat", GB).expect("lu create").id;
    let base = pool.lu_create("base", GB).expect("lu create").id;
    fill(&pool, flat, READ_FILL, 0xda7a);
    fill(&pool, base, READ_FILL, 0xda7a);
    let mut levels = vec![base];
    let mut rng = Rng(0x1e7e1);
    let mut src = "base@s".to_owned();
    pool.snapshot_create(&[&src]).expect("snapshot");
    for d in 1..=DEPTH {
        let name = format!("c{d}");
        let id = pool.clone_create(&src, &name).expect("clone").id;
        for w in 0..LEVEL_WRITES {
            let off = rng.block_off(READ_FILL);
            let blk = filler(KB4 as usize, (d as u64) << 8 | w);
            pool.write(id, off, &blk, false).expect("level write");
            pool.write(flat, off, &blk, false).expect("flat write");
        }
        src = format!("{name}@s");
        pool.snapshot_create(&[&src]).expect("snapshot");
        levels.push(id);
    }
    pool.flush().expect("flush");
    pool.checkpoint().expect("checkpoint");
    // Same data, checked on a sample.
    let (mut a, mut b) = (PageBuf::new(MB as usize), PageBuf::new(MB as usize));
    for i in 0..16 {
        let off = i * (READ_FILL / 16);
        pool.read(flat, off, &mut a).expect("read");
        pool.read(levels[DEPTH], off, &mut b).expect("read");
        assert!(a[..] == b[..], "flat and c{DEPTH} differ at {off}");
    }
    settle();
    let st = pool.file_stat(&format!("c{DEPTH}")).expect("file stat");
    eprintln!(
        "[chain setup] flat + base ({} MiB each) and {DEPTH} clone levels in {:.2?}; c{DEPTH}: \
         {} data blocks, {} owned, {} shared",
        READ_FILL >> 20,
        t.elapsed(),
        st.data_blocks,
        st.owned_blocks,
        st.shared_blocks
    );
    Chain { pool, flat, levels }
}

fn read_loop(pool: &Pool, id: u64, seed: u64, n: u64, buf: &mut [u8]) -> Duration {
    let mut rng = Rng(seed);
    let t = Instant::now();
    for _ in 0..n {
        let off = rng.block_off(READ_FILL);
        pool.read(id, off, black_box(&mut *buf)).expect("read");
    }
    t.elapsed()
}

fn clone_depth_read(c: &mut Criterion, st: &mut Option<Chain>, dir: &Path) {
    let mut buf = PageBuf::new(KB4 as usize);
    let mut g = c.benchmark_group("clone_depth_read_4k");
    g.throughput(Throughput::Bytes(KB4))
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    for (label, depth) in [
        ("flat", None),
        ("depth1", Some(1)),
        ("depth16", Some(DEPTH)),
    ] {
        let mut rng = Rng(0x0fed_cba9_8765_4321);
        g.bench_function(label, |b| {
            let ch = st.get_or_insert_with(|| chain_setup(dir));
            let id = depth.map_or(ch.flat, |d| ch.levels[d]);
            b.iter(|| {
                let off = rng.block_off(READ_FILL);
                ch.pool.read(id, off, black_box(&mut buf)).expect("read");
            })
        });
    }
    g.finish();
    let Some(ch) = st else { return };
    // Interleaved rounds over the same offsets (flat, depth 1, depth 16 in turn): the ratio
    // without the drift between criterion's separate runs. Reported: per-read medians and the
    // median (with the quartiles) of the per-round time ratios to flat.
    const ROUNDS: usize = 31;
    const N: u64 = 4000;
    let ids = [ch.flat, ch.levels[1], ch.levels[DEPTH]];
    let mut t = vec![[0f64; 3]; ROUNDS];
    for (round, tr) in t.iter_mut().enumerate() {
        let seed = 0xabc0 + round as u64;
        for (j, &id) in ids.iter().enumerate() {
            tr[j] = read_loop(&ch.pool, id, seed, N, &mut buf).as_secs_f64();
        }
    }
    let quartiles = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        (v[v.len() / 4], v[v.len() / 2], v[v.len() * 3 / 4])
    };
    let us = |j: usize| quartiles(t.iter().map(|r| r[j]).collect()).1 * 1e6 / N as f64;
    let ratio = |j: usize| {
        let (q1, m, q3) = quartiles(t.iter().map(|r| r[j] / r[0]).collect());
        format!("{m:.3} (quartiles {q1:.3}..{q3:.3})")
    };
    eprintln!(
        "[clone_depth_read_4k] interleaved, {ROUNDS} rounds x {N} reads, median per read: flat \
         {:.3} us, depth 1 {:.3} us, depth {DEPTH} {:.3} us; per-round time ratio to flat: \
         depth 1 {}, depth {DEPTH} {}",
        us(0),
        us(1),
        us(2),
        ratio(1),
        ratio(2),
    );
}

// ---------------------------------------------------------------------------------------------
// first_write_4k
// ---------------------------------------------------------------------------------------------

/// A clone whose blocks `0..blocks` are shared with its snapshot, written in random order;
/// re-made (removed and cloned again, untimed) when every block has been written.
struct FreshClone {
    src: String,
    name: String,
    id: u64,
    order: Vec<u64>,
    next: usize,
    rng: Rng,
    remakes: u64,
}

impl FreshClone {
    fn new(pool: &Pool, src: &str, name: &str, blocks: u64, seed: u64) -> FreshClone {
        let id = pool.clone_create(src, name).expect("clone").id;
        let mut rng = Rng(seed);
        let order = rng.shuffled(blocks);
        FreshClone {
            src: src.into(),
            name: name.into(),
            id,
            order,
            next: 0,
            rng,
            remakes: 0,
        }
    }

    /// Re-make the clone if every block has been written.
    fn refresh(&mut self, pool: &Pool) {
        if self.next < self.order.len() {
            return;
        }
        pool.lu_remove(&self.name).expect("remove clone");
        self.id = pool.clone_create(&self.src, &self.name).expect("clone").id;
        let n = self.order.len() as u64;
        self.order = self.rng.shuffled(n);
        self.next = 0;
        self.remakes += 1;
    }
}

/// Timed first writes to shared blocks of `fc` (re-making the clone is untimed).
fn first_writes(pool: &Pool, fc: &mut FreshClone, iters: u64, data: &[u8]) -> Duration {
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        fc.refresh(pool);
        let batch = left.min((fc.order.len() - fc.next) as u64);
        let (id, offs) = (fc.id, &fc.order[fc.next..fc.next + batch as usize]);
        let t = Instant::now();
        for &b in offs {
            pool.write(id, b * KB4, black_box(data), false)
                .expect("write");
        }
        total += t.elapsed();
        fc.next += batch as usize;
        left -= batch;
    }
    total
}

struct FwState {
    pool: Pool,
    shared: FreshClone,
    /// A clone of the same snapshot that has written (owns) its first `FW_FILL` bytes.
    owned: u64,
    /// An LU (no snapshot ever) with `FW_FILL` bytes written.
    flat: u64,
}

fn fw_setup(dir: &Path) -> FwState {
    let t = Instant::now();
    let pool = file_pool(&dir.join("pv-fw.img"));
    let base = pool.lu_create("base", GB).expect("lu create").id;
    fill(&pool, base, FW_FILL, 0xba5e);
    pool.snapshot_create(&["base@s"]).expect("snapshot");
    let flat = pool.lu_create("flat", GB).expect("lu create").id;
    fill(&pool, flat, FW_FILL, 0xf1a7);
    let owned = pool.clone_create("base@s", "owned").expect("clone").id;
    fill(&pool, owned, FW_FILL, 0x0ed);
    let shared = FreshClone::new(&pool, "base@s", "fresh", FW_FILL / KB4, 0x5a5a);
    pool.flush().expect("flush");
    pool.checkpoint().expect("checkpoint");
    settle();
    let st = pool.file_stat("owned").expect("file stat");
    eprintln!(
        "[first_write setup] base/flat/owned with {} MiB each in {:.2?}; owned: {} owned, {} \
         shared",
        FW_FILL >> 20,
        t.elapsed(),
        st.owned_blocks,
        st.shared_blocks
    );
    FwState {
        pool,
        shared,
        owned,
        flat,
    }
}

/// Counters and `wchar` over `AMP_WRITES` writes to `id` at `offs`, a flush and a checkpoint.
fn amp_run(pool: &Pool, id: u64, offs: &[u64], data: &[u8]) -> String {
    pool.flush().expect("flush");
    pool.checkpoint().expect("checkpoint");
    let a = io_now(pool);
    for &off in offs {
        pool.write(id, off, data, false).expect("write");
    }
    pool.flush().expect("flush");
    pool.checkpoint().expect("checkpoint");
    io_per_op(a, io_now(pool), offs.len() as u64)
}

fn write_amplification(fw: &mut FwState, data: &[u8]) {
    let pool = &fw.pool;
    // A fresh clone: every block shared.
    let fresh = |pool: &Pool, name: &str| -> u64 {
        let _ = pool.lu_remove(name);
        pool.clone_create("base@s", name).expect("clone").id
    };
    let mut rng = Rng(0xa3b);
    let blocks = FW_FILL / KB4;
    let random: Vec<u64> = rng.shuffled(blocks)[..AMP_WRITES as usize]
        .iter()
        .map(|b| b * KB4)
        .collect();
    let seq: Vec<u64> = (0..AMP_WRITES).map(|b| b * KB4).collect();

    let say = |what: &str, r: String| {
        eprintln!("[write amplification] {what}, + flush + checkpoint, per write: {r}");
    };
    let id = fresh(pool, "amp");
    let r = amp_run(pool, id, &random, data);
    say(
        &format!("first write to a shared block, {AMP_WRITES} random"),
        r,
    );
    let id = fresh(pool, "amp");
    let r = amp_run(pool, id, &seq, data);
    say(
        &format!("first write to a shared block, {AMP_WRITES} sequential"),
        r,
    );
    let r = amp_run(pool, fw.owned, &random, data);
    say(
        &format!("overwrite of an owned block (clone), {AMP_WRITES} random"),
        r,
    );
    let r = amp_run(pool, fw.flat, &random, data);
    say(
        &format!("overwrite of a flat LU's block, {AMP_WRITES} random"),
        r,
    );

    // One first write alone: what its flush writes, then what the checkpoint adds.
    let id = fresh(pool, "amp");
    pool.flush().expect("flush");
    pool.checkpoint().expect("checkpoint");
    let a = io_now(pool);
    pool.write(id, 12345 * KB4, data, false).expect("write");
    pool.flush().expect("flush");
    let b = io_now(pool);
    pool.checkpoint().expect("checkpoint");
    let z = io_now(pool);
    eprintln!(
        "[write amplification] ONE first write + flush: {}",
        io_per_op(a, b, 1)
    );
    eprintln!(
        "[write amplification] ... then its checkpoint: {}",
        io_per_op(b, z, 1)
    );
    let a = io_now(pool);
    pool.write(fw.owned, 12345 * KB4, data, false)
        .expect("write");
    pool.flush().expect("flush");
    let b = io_now(pool);
    pool.checkpoint().expect("checkpoint");
    let z = io_now(pool);
    eprintln!(
        "[write amplification] ONE owned overwrite + flush: {}",
        io_per_op(a, b, 1)
    );
    eprintln!(
        "[write amplification] ... then its checkpoint: {}",
        io_per_op(b, z, 1)
    );
    let st = pool.file_stat("amp").expect("file stat");
    eprintln!(
        "[write amplification] after one 4 KiB write the clone owns {} block(s) and shares {}",
        st.owned_blocks, st.shared_blocks
    );
    pool.lu_remove("amp").expect("remove");
}

fn first_write(c: &mut Criterion, chain: &mut Option<Chain>, dir: &Path) {
    let fw_dir = bench_dir();
    let data = filler(KB4 as usize, 0x1234);
    let mut fw: Option<FwState> = None;
    let mut deep: Option<FreshClone> = None;
    let mut g = c.benchmark_group("first_write_4k");
    g.throughput(Throughput::Bytes(KB4))
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    g.bench_function("first_write_shared", |b| {
        let st = fw.get_or_insert_with(|| fw_setup(fw_dir.path()));
        b.iter_custom(|iters| first_writes(&st.pool, &mut st.shared, iters, &data))
    });
    let mut rng = Rng(0x0b0b);
    g.bench_function("overwrite_owned_clone", |b| {
        let st = fw.get_or_insert_with(|| fw_setup(fw_dir.path()));
        b.iter(|| {
            let off = rng.block_off(FW_FILL);
            st.pool
                .write(st.owned, off, black_box(&data), false)
                .expect("write");
        })
    });
    let mut rng = Rng(0x0b0b);
    g.bench_function("overwrite_flat", |b| {
        let st = fw.get_or_insert_with(|| fw_setup(fw_dir.path()));
        b.iter(|| {
            let off = rng.block_off(FW_FILL);
            st.pool
                .write(st.flat, off, black_box(&data), false)
                .expect("write");
        })
    });
    g.bench_function("first_write_shared_depth16", |b| {
        let ch = chain.get_or_insert_with(|| chain_setup(dir));
        let fc = deep.get_or_insert_with(|| {
            FreshClone::new(
                &ch.pool,
                &format!("c{}@s", DEPTH - 1),
                "w16",
                READ_FILL / KB4,
                0xdee9,
            )
        });
        b.iter_custom(|iters| first_writes(&ch.pool, fc, iters, &data))
    });
    let mut shallow: Option<FreshClone> = None;
    g.bench_function("first_write_shared_depth1_family35", |b| {
        let ch = chain.get_or_insert_with(|| chain_setup(dir));
        let fc = shallow.get_or_insert_with(|| {
            FreshClone::new(&ch.pool, "base@s", "w1", READ_FILL / KB4, 0x5ea1)
        });
        b.iter_custom(|iters| first_writes(&ch.pool, fc, iters, &data))
    });
    g.finish();
    if let Some(st) = &fw {
        eprintln!(
            "[first_write_shared] the clone was re-made {} time(s)",
            st.shared.remakes
        );
    }
    if let Some(fc) = &deep {
        eprintln!(
            "[first_write_shared_depth16] the clone was re-made {} time(s)",
            fc.remakes
        );
    }
    if let (Some(st), Some(ch), Some(fc)) = (&mut fw, &*chain, &mut deep) {
        first_write_interleaved(st, ch, fc, &data);
    }
    if let Some(mut st) = fw {
        write_amplification(&mut st, &data);
        st.pool.close().expect("close");
    }
    if let Some(ch) = chain {
        leaf_amplification(ch, &data);
    }
}

/// First writes in a family of 4 and of 35 volumes and owned overwrites, in turn: the cost of
/// the family size without the drift between criterion's separate runs.
fn first_write_interleaved(st: &mut FwState, ch: &Chain, deep: &mut FreshClone, data: &[u8]) {
    const ROUNDS: usize = 9;
    const N: u64 = 2000;
    let mut t = vec![[0f64; 4]; ROUNDS];
    let mut rng = Rng(0x1a7e);
    for tr in t.iter_mut() {
        tr[0] = first_writes(&st.pool, &mut st.shared, N, data).as_secs_f64();
        tr[1] = first_writes(&ch.pool, deep, N, data).as_secs_f64();
        let start = Instant::now();
        for _ in 0..N {
            let off = rng.block_off(FW_FILL);
            st.pool.write(st.owned, off, data, false).expect("write");
        }
        tr[2] = start.elapsed().as_secs_f64();
        let start = Instant::now();
        for _ in 0..N {
            let off = rng.block_off(FW_FILL);
            st.pool.write(st.flat, off, data, false).expect("write");
        }
        tr[3] = start.elapsed().as_secs_f64();
    }
    let median = |j: usize| {
        let mut v: Vec<f64> = t.iter().map(|r| r[j]).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2] * 1e6 / N as f64
    };
    eprintln!(
        "[first_write_4k] interleaved, {ROUNDS} rounds x {N} writes, median per write: first \
         write (family of 4) {:.2} us, first write (depth 16, family of 35) {:.2} us, owned \
         overwrite (clone) {:.2} us, overwrite (flat LU) {:.2} us",
        median(0),
        median(1),
        median(2),
        median(3)
    );
}

/// Worst case for metadata: one first write per map leaf, so every write shadows a leaf of its
/// own, against overwriting the same blocks of the flat LU (which owns them).
fn leaf_amplification(ch: &Chain, data: &[u8]) {
    let fanout = MAP_FANOUT as u64;
    let leaves = READ_FILL / KB4 / fanout;
    let offs: Vec<u64> = (0..leaves).map(|i| (i * fanout + 7) * KB4).collect();
    let id = ch.pool.clone_create("base@s", "leafamp").expect("clone").id;
    let r = amp_run(&ch.pool, id, &offs, data);
    eprintln!(
        "[write amplification] first write to a shared block, one per map leaf ({leaves} \
         leaves, family of 36), + flush + checkpoint, per write: {r}"
    );
    let r = amp_run(&ch.pool, ch.flat, &offs, data);
    eprintln!(
        "[write amplification] overwrite of a flat LU's block, one per map leaf ({leaves} \
         leaves), + flush + checkpoint, per write: {r}"
    );
    ch.pool.lu_remove("leafamp").expect("remove");
}

fn clones(c: &mut Criterion) {
    let dir = bench_dir();
    let mut chain: Option<Chain> = None;
    clone_depth_read(c, &mut chain, dir.path());
    first_write(c, &mut chain, dir.path());
    if let Some(ch) = chain {
        ch.pool.close().expect("close");
    }
}

criterion_group!(benches, metadata_ops, clones);
criterion_main!(benches);
