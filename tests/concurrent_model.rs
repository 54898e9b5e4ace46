//! Concurrent model test of the in-process `Pool` API: several threads run random operations
//! at once on one shared LU (each thread writes its own 8-block chunks of it, so the map nodes,
//! VBA pages and journal blocks are shared) and on their own LUs, snapshots and clones:
//! writes (some FUA), trims, zeroes of both kinds, read-backs, flushes, snapshots (of their own
//! LUs and of the shared one, while the others write it), clones, removals, scrub, checkpoints
//! and cleaner passes. The PVs (one, or two failure groups, by seed) are fault-injecting
//! in-memory devices behind a power switch: in some cycles one thread cuts the power in the
//! middle of the others' operations (every later device write and sync fails, atomically for
//! all PVs), in the others the threads finish and the live pool is checked exactly first. Then
//! the crash image (unsynced writes dropped, kept or torn, by seed) is reopened and checked:
//!
//! - every block of every volume reads as a value it may hold: for a writable volume the value
//!   at its owner's last durability point (flush, FUA, checkpoint, snapshot of it) or one
//!   written since, so no flushed write is lost; a snapshot exactly what it captured (for
//!   snapshots of the shared LU taken while others wrote: per block, a value the block had at
//!   some instant of the snapshot call, from the writers' timestamped histories);
//! - every volume whose create/remove returned exists/is gone (one interrupted by the power cut
//!   may be either);
//! - mapped and owned blocks (`lu list`, `file stat`) equal the model's exact counts (a block is
//!   owned when no other volume holds the same written block);
//! - `check` passes.
//!
//! Seeds fix each thread's operations, not the interleaving: a failure prints its seed and
//! cycle; rerun it with `SSP_CMODEL_SEED=N cargo test --test concurrent_model -- one_seed
//! --ignored`. `sweep` (ignored) runs `SSP_CMODEL_SEEDS` (200) seeds; `SSP_CMODEL_OPS` sets
//! the operations per thread and cycle of both (100).

mod common;
use common::*;
use ssp::dev::{BlockDev, CrashMode, FaultControl, FaultDev};
use ssp::pool::{Options, Pool};
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

const THREADS: usize = 3;
/// Blocks of each thread's first LU (and of its clones).
const PRIV_BLOCKS: u64 = 64;
/// The shared LU is made of chunks of this many blocks; chunk `c` belongs to thread `c % THREADS`.
const CHUNK: u64 = 8;
const CHUNKS: u64 = 4 * THREADS as u64;
const SHARED_BLOCKS: u64 = CHUNK * CHUNKS;
const SHARED: &str = "shared";
const PV_SIZE: u64 = 48 * MB;
/// Volumes (LUs, clones, snapshots) a thread keeps at most.
const MAX_VOLS: usize = 7;
/// Per seed: cycles (each ends in a crash and reopen), operations per thread and cycle. The CI
/// test, the sweep and the replay of one seed use the same, so a seed means the same run.
const CYCLES: usize = 4;
const OPS: u64 = 100;

fn opts() -> Options {
    Options {
        checkpoint_writes: 120,
        ..model_opts()
    }
}

// ------------------------------------------------------------------------------------------
// Devices behind one power switch.

/// Power for every PV of a pool: once off, every write and sync fails. Device writes hold the
/// read side while they run, so when `cut` returns none is in flight and the crash image is the
/// state of all PVs at one instant.
#[derive(Default)]
struct Power {
    off: RwLock<bool>,
}

impl Power {
    fn cut(&self) {
        *self.off.write().unwrap() = true;
    }
    fn is_off(&self) -> bool {
        *self.off.read().unwrap()
    }
}

struct SwitchedDev {
    dev: FaultDev,
    power: Arc<Power>,
}

fn power_failure() -> io::Error {
    io::Error::other("power cut (test)")
}

impl BlockDev for SwitchedDev {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.dev.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let off = self.power.off.read().unwrap();
        if *off {
            return Err(power_failure());
        }
        self.dev.write_at(buf, offset)
    }
    fn sync(&self) -> io::Result<()> {
        let off = self.power.off.read().unwrap();
        if *off {
            return Err(power_failure());
        }
        self.dev.sync()
    }
    fn len(&self) -> u64 {
        self.dev.len()
    }
    fn name(&self) -> &str {
        self.dev.name()
    }
}

fn switched(devs: Vec<FaultDev>, power: &Arc<Power>) -> Vec<Arc<dyn BlockDev>> {
    devs.into_iter()
        .map(|dev| {
            Arc::new(SwitchedDev {
                dev,
                power: power.clone(),
            }) as Arc<dyn BlockDev>
        })
        .collect()
}

// ------------------------------------------------------------------------------------------
// The model.

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    /// A writable LU or clone, written only by its owner thread.
    Lu,
    Snapshot,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Exists {
    Yes,
    /// Its create was cut short by the power cut: it may exist (empty / as captured) or not.
    MaybeCreated,
    /// Its removal was cut short: it may still exist, unchanged.
    MaybeRemoved,
}

/// A volume owned by one thread. Block values: 0 reads as zeroes, v > 0 as `pattern(lba, v)`
/// (v is unique pool-wide, so it also names the written block for owned/shared counts).
#[derive(Clone, Debug)]
struct Vol {
    name: String,
    kind: Kind,
    /// The LU a snapshot was taken of.
    base: String,
    exists: Exists,
    cur: Vec<u64>,
    /// The value at the owner's last durability point.
    acked: Vec<u64>,
    /// Values written since that point.
    since: Vec<BTreeSet<u64>>,
    /// A snapshot of the shared LU not yet resolved: the clock window of its creation.
    window: Option<(u64, u64)>,
}

impl Vol {
    fn new(name: String, kind: Kind, base: String, content: Vec<u64>) -> Vol {
        Vol {
            name,
            kind,
            base,
            exists: Exists::Yes,
            acked: content.clone(),
            since: vec![BTreeSet::new(); content.len()],
            cur: content,
            window: None,
        }
    }
    fn durable(&mut self) {
        self.acked.clone_from(&self.cur);
        self.since.iter_mut().for_each(BTreeSet::clear);
    }
}

/// One write (or zeroing) of a shared-LU block: value, clock at issue, clock at completion
/// (`u64::MAX`: never completed, cut by the power failure).
type Event = (u64, u64, u64, u64); // (lba, value, start, end)

/// What one thread owns: its volumes, its chunks of the shared LU, its shared-LU history.
struct Local {
    t: usize,
    vols: Vec<Vol>,
    /// The shared LU as this thread sees it (only its own chunks are meaningful).
    shared: Vol,
    history: Vec<Event>,
    next_name: u64,
}

struct Ctx<'a> {
    pool: &'a Pool,
    power: &'a Power,
    clock: &'a AtomicU64,
    /// Versions: unique pool-wide.
    version: &'a AtomicU64,
    ops: &'a AtomicU64,
    /// Operations the power cut interrupted (they failed).
    interrupted: &'a AtomicU64,
    cut_at: Option<u64>,
    seed: u64,
    cycle: usize,
}

struct Rng(u64);
impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn owner_of(lba: u64) -> usize {
    ((lba / CHUNK) % THREADS as u64) as usize
}

fn block_is(buf: &[u8], lba: u64, v: u64) -> bool {
    if v == 0 {
        buf.iter().all(|&b| b == 0)
    } else {
        buf == pattern(lba, v).as_slice()
    }
}

/// The outcome of one operation in a thread: done, or failed because the power was cut (then
/// the thread stops). Any other failure is a bug and panics with the seed.
enum Step {
    Done,
    Cut,
}

impl Ctx<'_> {
    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::SeqCst)
    }

    /// `Ok` → Done; `Err` while the power is off → Cut; any other `Err` panics.
    fn outcome<T, E: std::fmt::Display>(&self, what: &str, r: Result<T, E>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(_) if self.power.is_off() => {
                self.interrupted.fetch_add(1, Ordering::SeqCst);
                None
            }
            Err(e) => panic!(
                "seed {} cycle {}: {what} failed with the power on: {e}",
                self.seed, self.cycle
            ),
        }
    }
}

impl Local {
    fn writable(&self) -> Vec<usize> {
        (0..self.vols.len())
            .filter(|&i| self.vols[i].kind == Kind::Lu && self.vols[i].exists == Exists::Yes)
            .collect()
    }

    fn fresh(&mut self) -> u64 {
        self.next_name += 1;
        self.next_name
    }

    /// One random operation.
    fn step(&mut self, c: &Ctx, rng: &mut Rng) -> Step {
        let p = c.pool;
        let seedcyc = format!("seed {} cycle {} thread {}", c.seed, c.cycle, self.t);
        match rng.below(100) {
            // Writes (and zeroes) to the thread's own chunks of the shared LU.
            0..=21 => {
                let chunk = rng.below(CHUNKS / THREADS as u64) * THREADS as u64 + self.t as u64;
                let lba = chunk * CHUNK + rng.below(CHUNK);
                let room = chunk * CHUNK + CHUNK - lba;
                let kind = rng.below(10);
                let n = 1 + rng.below(if kind < 7 { 3 } else { CHUNK }).min(room - 1);
                let id = p.lu_id(SHARED).unwrap();
                let vals = self.values(c, kind, n);
                for (i, &v) in vals.iter().enumerate() {
                    self.shared.since[(lba + i as u64) as usize].insert(v);
                }
                let fua = kind == 0;
                let start = c.tick();
                let r = self.issue(p, id, lba, &vals, kind, fua);
                let ok = c
                    .outcome(&format!("{seedcyc}: shared write at {lba}"), r)
                    .is_some();
                let end = if ok { c.tick() } else { u64::MAX };
                for (i, &v) in vals.iter().enumerate() {
                    self.history.push((lba + i as u64, v, start, end));
                }
                if !ok {
                    return Step::Cut;
                }
                for (i, &v) in vals.iter().enumerate() {
                    let b = (lba + i as u64) as usize;
                    self.shared.cur[b] = v;
                    if fua {
                        self.shared.acked[b] = v;
                        self.shared.since[b].clear();
                    }
                }
                Step::Done
            }
            // Writes (and zeroes) to its own LUs and clones.
            22..=45 => {
                let w = self.writable();
                let i = w[rng.below(w.len() as u64) as usize];
                let lba = rng.below(PRIV_BLOCKS);
                let kind = rng.below(10);
                let n = 1 + rng
                    .below(if kind < 7 { 4 } else { 16 })
                    .min(PRIV_BLOCKS - lba - 1);
                let id = p.lu_id(&self.vols[i].name).unwrap();
                let vals = self.values(c, kind, n);
                for (k, &v) in vals.iter().enumerate() {
                    self.vols[i].since[lba as usize + k].insert(v);
                }
                let fua = kind == 0;
                let r = self.issue(p, id, lba, &vals, kind, fua);
                let what = format!("{seedcyc}: write to {} at {lba}", self.vols[i].name);
                if c.outcome(&what, r).is_none() {
                    return Step::Cut;
                }
                let v = &mut self.vols[i];
                for (k, &val) in vals.iter().enumerate() {
                    let b = lba as usize + k;
                    v.cur[b] = val;
                    if fua {
                        v.acked[b] = val;
                        v.since[b].clear();
                    }
                }
                Step::Done
            }
            // Read back one of its blocks: exactly what it wrote, whatever the others do.
            46..=55 => {
                let (name, lba, want) = if rng.below(2) == 0 {
                    let chunk = rng.below(CHUNKS / THREADS as u64) * THREADS as u64 + self.t as u64;
                    let lba = chunk * CHUNK + rng.below(CHUNK);
                    (SHARED.to_string(), lba, self.shared.cur[lba as usize])
                } else {
                    // Not the shared LU's snapshots: their content is resolved afterwards.
                    let live: Vec<&Vol> = self
                        .vols
                        .iter()
                        .filter(|v| v.exists == Exists::Yes && v.window.is_none())
                        .collect();
                    let v = live[rng.below(live.len() as u64) as usize];
                    let lba = rng.below(PRIV_BLOCKS);
                    (v.name.clone(), lba, v.cur[lba as usize])
                };
                let id = p.lu_id(&name).unwrap();
                let mut buf = vec![0u8; 4096];
                let r = p.read(id, lba * 4096, &mut buf);
                if c.outcome(&format!("{seedcyc}: read {name} {lba}"), r)
                    .is_none()
                {
                    return Step::Cut;
                }
                assert!(
                    block_is(&buf, lba, want),
                    "{seedcyc}: live read of {name} block {lba} is not value {want}"
                );
                Step::Done
            }
            56..=65 => {
                let r = p.flush();
                if c.outcome(&format!("{seedcyc}: flush"), r).is_none() {
                    return Step::Cut;
                }
                self.all_durable();
                Step::Done
            }
            // Snapshot one of its LUs.
            66..=72 => {
                if self.vols.len() >= MAX_VOLS {
                    return Step::Done;
                }
                let w = self.writable();
                let i = w[rng.below(w.len() as u64) as usize];
                let base = self.vols[i].name.clone();
                let name = format!("{base}@k{}", self.fresh());
                let r = p.snapshot_create(&[&name]);
                let ok = c
                    .outcome(&format!("{seedcyc}: snapshot {name}"), r)
                    .is_some();
                let mut s = Vol::new(name, Kind::Snapshot, base, self.vols[i].cur.clone());
                if ok {
                    // The snapshot is durable with its content, so is the LU up to it.
                    self.vols[i].durable();
                } else {
                    s.exists = Exists::MaybeCreated;
                }
                self.vols.push(s);
                if ok {
                    Step::Done
                } else {
                    Step::Cut
                }
            }
            // Snapshot the shared LU while the others write it.
            73..=77 => {
                if self.vols.len() >= MAX_VOLS {
                    return Step::Done;
                }
                let k = self.fresh();
                let name = format!("{SHARED}@t{}k{k}", self.t);
                let a = c.tick();
                let r = p.snapshot_create(&[&name]);
                let ok = c
                    .outcome(&format!("{seedcyc}: snapshot {name}"), r)
                    .is_some();
                let b = if ok { c.tick() } else { u64::MAX };
                let mut s = Vol::new(
                    name,
                    Kind::Snapshot,
                    SHARED.into(),
                    vec![0; SHARED_BLOCKS as usize],
                );
                s.window = Some((a, b));
                if ok {
                    // Its own chunks of the shared LU are durable up to the snapshot.
                    for lba in 0..SHARED_BLOCKS as usize {
                        if owner_of(lba as u64) == self.t {
                            self.shared.acked[lba] = self.shared.cur[lba];
                            self.shared.since[lba].clear();
                        }
                    }
                } else {
                    s.exists = Exists::MaybeCreated;
                }
                self.vols.push(s);
                if ok {
                    Step::Done
                } else {
                    Step::Cut
                }
            }
            // Clone one of its own snapshots (of its own LUs: content known exactly).
            78..=83 => {
                if self.vols.len() >= MAX_VOLS {
                    return Step::Done;
                }
                let snaps: Vec<usize> = (0..self.vols.len())
                    .filter(|&i| {
                        let v = &self.vols[i];
                        v.kind == Kind::Snapshot && v.exists == Exists::Yes && v.window.is_none()
                    })
                    .collect();
                if snaps.is_empty() {
                    return Step::Done;
                }
                let src = &self.vols[snaps[rng.below(snaps.len() as u64) as usize]];
                let name = format!("c{}k{}", self.t, self.next_name + 1);
                self.next_name += 1;
                let content = src.cur.clone();
                let r = p.clone_create(&src.name, &name);
                let ok = c.outcome(&format!("{seedcyc}: clone {name}"), r).is_some();
                let mut v = Vol::new(name, Kind::Lu, String::new(), content);
                if !ok {
                    v.exists = Exists::MaybeCreated;
                }
                self.vols.push(v);
                if ok {
                    Step::Done
                } else {
                    Step::Cut
                }
            }
            // Remove a snapshot, or a clone nothing was snapshotted from.
            84..=89 => {
                let cands: Vec<usize> = (0..self.vols.len())
                    .filter(|&i| {
                        let v = &self.vols[i];
                        v.exists == Exists::Yes
                            && v.name != format!("p{}", self.t)
                            && (v.kind == Kind::Snapshot
                                || !self.vols.iter().any(|s| s.base == v.name))
                    })
                    .collect();
                if cands.is_empty() {
                    return Step::Done;
                }
                let i = cands[rng.below(cands.len() as u64) as usize];
                let name = self.vols[i].name.clone();
                let r = if self.vols[i].kind == Kind::Snapshot {
                    p.snapshot_remove(&name)
                } else {
                    p.lu_remove(&name)
                };
                if c.outcome(&format!("{seedcyc}: remove {name}"), r).is_none() {
                    self.vols[i].exists = Exists::MaybeRemoved;
                    return Step::Cut;
                }
                self.vols.remove(i);
                Step::Done
            }
            90..=92 => {
                let r = p.checkpoint();
                if c.outcome(&format!("{seedcyc}: checkpoint"), r).is_none() {
                    return Step::Cut;
                }
                self.all_durable();
                Step::Done
            }
            93..=94 => {
                let r = p.gc(2);
                if c.outcome(&format!("{seedcyc}: gc"), r).is_none() {
                    return Step::Cut;
                }
                self.all_durable();
                Step::Done
            }
            95 => {
                let r = p.scrub();
                let Some(rep) = c.outcome(&format!("{seedcyc}: scrub"), r) else {
                    return Step::Cut;
                };
                assert_eq!(
                    (rep.errors_found, rep.unrepairable),
                    (0, 0),
                    "{seedcyc}: scrub found errors on healthy PVs: {:?}",
                    rep.errors
                );
                Step::Done
            }
            // Accounting read while everything moves: internally consistent.
            _ => {
                let live: Vec<&Vol> = self
                    .vols
                    .iter()
                    .filter(|v| v.exists == Exists::Yes)
                    .collect();
                let v = live[rng.below(live.len() as u64) as usize];
                let r = p.file_stat(&v.name);
                let Some(st) = c.outcome(&format!("{seedcyc}: file stat {}", v.name), r) else {
                    return Step::Cut;
                };
                assert_eq!(
                    st.owned_blocks + st.shared_blocks,
                    st.data_blocks,
                    "{seedcyc}: file stat {}",
                    v.name
                );
                Step::Done
            }
        }
    }

    /// Values of an `n`-block operation of `kind` (< 7: data, 7..=8: zeroes, 9: trim).
    fn values(&self, c: &Ctx, kind: u64, n: u64) -> Vec<u64> {
        if kind < 7 {
            let first = c.version.fetch_add(n, Ordering::SeqCst);
            (first..first + n).collect()
        } else {
            vec![0; n as usize]
        }
    }

    fn issue(
        &self,
        p: &Pool,
        id: u64,
        lba: u64,
        vals: &[u64],
        kind: u64,
        fua: bool,
    ) -> ssp::pool::Result<()> {
        let (off, len) = (lba * 4096, vals.len() as u64 * 4096);
        match kind {
            0..=6 => {
                let mut data = Vec::with_capacity(len as usize);
                for (i, &v) in vals.iter().enumerate() {
                    data.extend(pattern(lba + i as u64, v));
                }
                p.write(id, off, &data, fua)
            }
            7 => p.write_zeroes(id, off, len, false),
            8 => p.write_zeroes_allocated(id, off, len, false),
            _ => p.trim(id, off, len),
        }
    }

    fn all_durable(&mut self) {
        for v in &mut self.vols {
            if v.kind == Kind::Lu {
                v.durable();
            }
        }
        for lba in 0..SHARED_BLOCKS as usize {
            if owner_of(lba as u64) == self.t {
                self.shared.acked[lba] = self.shared.cur[lba];
                self.shared.since[lba].clear();
            }
        }
    }
}

/// Values a shared-LU snapshot taken in clock window `(a, b)` may hold at `lba`: per the
/// block's history (one writer, so its events are in order), each value written before `b`
/// and not overwritten by a write completed before `a`; `initial` is the value before every
/// event of this cycle.
fn window_candidates(events: &[Event], lba: u64, initial: u64, a: u64, b: u64) -> BTreeSet<u64> {
    let evs: Vec<&Event> = events.iter().filter(|e| e.0 == lba).collect();
    let mut out = BTreeSet::new();
    // The initial value was current until the first event completed.
    if evs.first().is_none_or(|e| e.3 >= a) {
        out.insert(initial);
    }
    for (k, e) in evs.iter().enumerate() {
        let overwritten_before = evs.get(k + 1).is_some_and(|n| n.3 < a);
        if e.2 < b && !overwritten_before {
            out.insert(e.1);
        }
    }
    out
}

// ------------------------------------------------------------------------------------------
// The world: the pool, its PVs and every thread's model.

struct World {
    seed: u64,
    mirrored: bool,
    /// The pool, with its background checkpointer running (checkpoints overlap the threads'
    /// writes, and power cuts land in their unlocked writes and syncs too).
    pool: Option<Arc<Pool>>,
    power: Arc<Power>,
    ctls: Vec<FaultControl>,
    locals: Vec<Local>,
    /// The shared LU's values at the start of the cycle (for snapshot windows).
    shared_initial: Vec<u64>,
    version: AtomicU64,
    stats: Stats,
}

/// What a seed exercised (so a change that stops exercising something shows).
#[derive(Default, Debug)]
struct Stats {
    ops: u64,
    cuts: u64,
    /// Operations that failed because the power was cut under them.
    interrupted: u64,
    /// Blocks of shared-LU snapshots resolved against the writers' histories.
    window_blocks: u64,
    /// ... of which had more than one possible value.
    window_races: u64,
    /// Volumes whose create or remove the cut interrupted: found / not found after the crash.
    maybe_found: u64,
    maybe_gone: u64,
    /// Blocks read after a crash that had a choice of values.
    crash_choices: u64,
}

/// Share the pool and start its background checkpointer (it ends once the pool is dropped).
fn with_checkpointer(pool: Pool) -> Arc<Pool> {
    let pool = Arc::new(pool);
    drop(pool.spawn_checkpointer());
    pool
}

impl World {
    fn new(seed: u64) -> World {
        let mirrored = seed % 2 == 1;
        let power = Arc::new(Power::default());
        let (a, ca) = FaultDev::new("pv-a", PV_SIZE);
        let mut ctls = vec![ca];
        let pool = Pool::create(switched(vec![a], &power), &copts(), opts()).unwrap();
        if mirrored {
            let (b, cb) = FaultDev::new("pv-b", PV_SIZE);
            ctls.push(cb);
            pool.failgrp_create("fg2", switched(vec![b], &power))
                .unwrap();
            pool.resync_wait(&mut |_, _| {}).unwrap();
        }
        pool.lu_create(SHARED, SHARED_BLOCKS * 4096).unwrap();
        let mut locals = Vec::new();
        for t in 0..THREADS {
            let name = format!("p{t}");
            pool.lu_create(&name, PRIV_BLOCKS * 4096).unwrap();
            locals.push(Local {
                t,
                vols: vec![Vol::new(
                    name,
                    Kind::Lu,
                    String::new(),
                    vec![0; PRIV_BLOCKS as usize],
                )],
                shared: Vol::new(
                    SHARED.into(),
                    Kind::Lu,
                    String::new(),
                    vec![0; SHARED_BLOCKS as usize],
                ),
                history: Vec::new(),
                next_name: 0,
            });
        }
        pool.flush().unwrap();
        World {
            seed,
            mirrored,
            pool: Some(with_checkpointer(pool)),
            power,
            ctls,
            locals,
            shared_initial: vec![0; SHARED_BLOCKS as usize],
            version: AtomicU64::new(1),
            stats: Stats::default(),
        }
    }

    /// Run every thread for `ops` operations each; with `cut_at`, the thread that completes
    /// the `cut_at`-th operation overall cuts the power (the others are mid-operation).
    fn run_threads(&mut self, cycle: usize, ops: u64, cut_at: Option<u64>) -> bool {
        let pool = self.pool.as_ref().unwrap();
        let clock = AtomicU64::new(1);
        let done = AtomicU64::new(0);
        let interrupted = AtomicU64::new(0);
        let ctx = Ctx {
            pool,
            power: &self.power,
            clock: &clock,
            version: &self.version,
            ops: &done,
            interrupted: &interrupted,
            cut_at,
            seed: self.seed,
            cycle,
        };
        let seed = self.seed;
        std::thread::scope(|s| {
            for local in self.locals.iter_mut() {
                let ctx = &ctx;
                s.spawn(move || {
                    let mut rng = Rng::new(seed * 1000 + cycle as u64 * 10 + local.t as u64);
                    // After the power cut a thread goes on until an operation fails: what
                    // still succeeds (say a write the pool only buffered) is not durable, and
                    // whatever claims durability (flush, FUA, snapshot) must fail.
                    for _ in 0..ops {
                        if let Step::Cut = local.step(ctx, &mut rng) {
                            break;
                        }
                        let n = ctx.ops.fetch_add(1, Ordering::SeqCst) + 1;
                        if ctx.cut_at == Some(n) {
                            ctx.power.cut();
                            break;
                        }
                    }
                });
            }
        });
        self.stats.ops += done.load(Ordering::SeqCst);
        self.stats.interrupted += interrupted.load(Ordering::SeqCst);
        self.stats.cuts += u64::from(self.power.is_off());
        self.power.is_off()
    }

    /// Every volume the model knows, with the thread that owns it.
    fn all_vols(&self) -> Vec<&Vol> {
        self.locals.iter().flat_map(|l| l.vols.iter()).collect()
    }

    /// What block `lba` of `vol` may read as. `live`: the pool was not restarted (current
    /// values only); else after a crash.
    fn allowed(&self, vol: &Vol, lba: u64, live: bool) -> BTreeSet<u64> {
        let i = lba as usize;
        if let Some((a, b)) = vol.window {
            let history = &self.locals[owner_of(lba)].history;
            return window_candidates(history, lba, self.shared_initial[i], a, b);
        }
        if live || vol.kind == Kind::Snapshot {
            return [vol.cur[i]].into();
        }
        let mut s = vol.since[i].clone();
        s.insert(vol.acked[i]);
        s
    }

    /// Read every volume, resolve each block to an allowed value, compare the counts with the
    /// model's and run `check`. Afterwards the model holds the resolved values.
    fn verify(&mut self, cycle: usize, live: bool) {
        let ctx = format!(
            "seed {} cycle {cycle} ({}, {})",
            self.seed,
            if self.mirrored {
                "mirrored"
            } else {
                "single copy"
            },
            if live { "live" } else { "after the crash" }
        );
        let pool = self.pool.take().unwrap();
        let mut buf = vec![0u8; 4096];
        // The shared LU: per block, its owner's view.
        let mut shared = vec![0u64; SHARED_BLOCKS as usize];
        let mut crash_choices = 0;
        let id = pool.lu_id(SHARED).unwrap();
        for lba in 0..SHARED_BLOCKS {
            let l = &self.locals[owner_of(lba)];
            let allowed = self.allowed(&l.shared, lba, live);
            if !live {
                crash_choices += u64::from(allowed.len() > 1);
            }
            pool.read(id, lba * 4096, &mut buf).unwrap();
            shared[lba as usize] = *allowed
                .iter()
                .find(|&&v| block_is(&buf, lba, v))
                .unwrap_or_else(|| {
                    panic!("{ctx}: {SHARED} block {lba} (thread {}) reads as none of {allowed:?} (flushed value {})", l.t, l.shared.acked[lba as usize])
                });
        }
        // Every other volume.
        let mut resolved: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        resolved.insert(SHARED.into(), shared.clone());
        let mut gone: BTreeSet<String> = BTreeSet::new();
        let (mut window_blocks, mut window_races) = (0, 0);
        let (mut maybe_found, mut maybe_gone) = (0, 0);
        for vol in self.all_vols() {
            if vol.exists != Exists::Yes {
                if pool.lu_get(&vol.name).is_ok() {
                    maybe_found += 1;
                } else {
                    maybe_gone += 1;
                }
            }
            let info = pool.lu_get(&vol.name);
            let Ok(info) = info else {
                assert!(
                    !live && vol.exists != Exists::Yes,
                    "{ctx}: {} is missing: {}",
                    vol.name,
                    info.unwrap_err()
                );
                gone.insert(vol.name.clone());
                continue;
            };
            let mut vals = Vec::with_capacity(vol.cur.len());
            for lba in 0..vol.cur.len() as u64 {
                // A clone cut short holds its snapshot's content (cur = acked) if it exists.
                let allowed = self.allowed(vol, lba, live);
                if vol.window.is_some() {
                    window_blocks += 1;
                    window_races += u64::from(allowed.len() > 1);
                } else if !live {
                    crash_choices += u64::from(allowed.len() > 1);
                }
                pool.read(info.id, lba * 4096, &mut buf).unwrap();
                let v = *allowed
                    .iter()
                    .find(|&&v| block_is(&buf, lba, v))
                    .unwrap_or_else(|| {
                        panic!(
                            "{ctx}: {} block {lba} reads as none of {allowed:?}",
                            vol.name
                        )
                    });
                vals.push(v);
            }
            resolved.insert(vol.name.clone(), vals);
        }
        // No volume the model does not know.
        for info in pool.export_list() {
            assert!(
                resolved.contains_key(&info.name),
                "{ctx}: unexpected volume {}",
                info.name
            );
        }
        // Mapped and owned blocks, exactly.
        for (name, vals) in &resolved {
            let info = pool.lu_get(name).unwrap();
            let mapped = vals.iter().filter(|&&v| v != 0).count() as u64;
            let owned = (0..vals.len())
                .filter(|&i| {
                    vals[i] != 0
                        && !resolved
                            .iter()
                            .any(|(n, o)| n != name && o.get(i) == Some(&vals[i]))
                })
                .count() as u64;
            assert_eq!(info.mapped_blocks, mapped, "{ctx}: {name}: mapped blocks");
            assert_eq!(info.owned_blocks, owned, "{ctx}: {name}: owned blocks");
            let st = pool.file_stat(name).unwrap();
            assert_eq!(
                (st.data_blocks, st.owned_blocks, st.shared_blocks),
                (mapped, owned, mapped - owned),
                "{ctx}: {name}: file stat"
            );
        }
        let rep = pool.check().unwrap();
        assert!(rep.ok(), "{ctx}: check: {:#?}", rep.errors);
        self.stats.window_blocks += window_blocks;
        self.stats.window_races += window_races;
        self.stats.crash_choices += crash_choices;
        self.stats.maybe_found += maybe_found;
        self.stats.maybe_gone += maybe_gone;
        // The model continues from what the pool holds.
        for l in &mut self.locals {
            l.vols.retain(|v| !gone.contains(&v.name));
            for v in &mut l.vols {
                v.cur.clone_from(&resolved[&v.name]);
                v.exists = Exists::Yes;
                v.window = None;
                if !live {
                    v.durable();
                }
            }
            for (lba, &v) in shared.iter().enumerate() {
                if owner_of(lba as u64) == l.t {
                    l.shared.cur[lba] = v;
                    if !live {
                        l.shared.acked[lba] = v;
                        l.shared.since[lba].clear();
                    }
                }
            }
        }
        self.pool = Some(pool);
    }

    fn crash(&mut self, mode: CrashMode, rng: &mut Rng) {
        let pool = self.pool.take().unwrap();
        drop(pool);
        let images: Vec<Vec<u8>> = self
            .ctls
            .iter()
            .map(|c| c.crash_image(mode, rng.next()))
            .collect();
        self.power = Arc::new(Power::default());
        self.ctls.clear();
        let mut devs = Vec::new();
        for (i, img) in images.into_iter().enumerate() {
            let (d, c) = FaultDev::from_image(if i == 0 { "pv-a" } else { "pv-b" }, img);
            devs.push(d);
            self.ctls.push(c);
        }
        let pool = Pool::open(switched(devs, &self.power), opts()).unwrap_or_else(|e| {
            panic!(
                "seed {}: open after the crash ({mode:?}) failed: {e}",
                self.seed
            )
        });
        self.pool = Some(with_checkpointer(pool));
    }

    /// Start a new cycle: histories empty, the shared LU's values as they stand.
    fn new_cycle(&mut self) {
        for l in &mut self.locals {
            l.history.clear();
        }
        for lba in 0..SHARED_BLOCKS as usize {
            self.shared_initial[lba] = self.locals[owner_of(lba as u64)].shared.cur[lba];
        }
    }
}

fn run_seed(seed: u64, cycles: usize, ops: u64) -> Stats {
    let mut w = World::new(seed);
    let mut rng = Rng::new(seed ^ 0x00c0_ffee);
    for cycle in 0..cycles {
        w.new_cycle();
        let cut_at = (rng.below(2) == 0).then(|| 1 + rng.below(ops * THREADS as u64));
        let was_cut = w.run_threads(cycle, ops, cut_at);
        if !was_cut {
            // Nothing failed: the live pool must hold exactly what the threads wrote.
            w.verify(cycle, true);
            w.new_cycle();
        }
        let mode = [
            CrashMode::Random,
            CrashMode::RandomTorn,
            CrashMode::DropAll,
            CrashMode::KeepAll,
        ][rng.below(4) as usize];
        w.crash(mode, &mut rng);
        w.verify(cycle, false);
        w.new_cycle();
    }
    eprintln!("seed {seed}: {:?}", w.stats);
    w.stats
}

#[test]
fn concurrent_ops_and_power_cuts_match_the_model() {
    let mut all = Stats::default();
    for seed in 1..=10 {
        let st = run_seed(seed, CYCLES, OPS);
        all.cuts += st.cuts;
        all.interrupted += st.interrupted;
        all.window_races += st.window_races;
        all.maybe_found += st.maybe_found;
        all.maybe_gone += st.maybe_gone;
        all.crash_choices += st.crash_choices;
    }
    // The seeds must exercise what the test is about: operations cut by the power failure,
    // volumes whose create/remove was cut, snapshots of the shared LU that raced with its
    // writers, and crashes that left blocks a choice of values.
    assert!(all.cuts > 0 && all.interrupted > 0, "{all:?}");
    assert!(all.window_races > 0, "{all:?}");
    assert!(all.maybe_found + all.maybe_gone > 0, "{all:?}");
    assert!(all.crash_choices > 0, "{all:?}");
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|s| s.parse().ok())
}

/// Operations per thread and cycle: `OPS`, or `SSP_CMODEL_OPS` for longer cycles (the cleaner
/// and the journal wrap more); replay a seed with the same value.
fn ops() -> u64 {
    env_u64("SSP_CMODEL_OPS").unwrap_or(OPS)
}

#[test]
#[ignore = "sweep: SSP_CMODEL_SEEDS seeds (200), about a second each"]
fn sweep() {
    for seed in 1..=env_u64("SSP_CMODEL_SEEDS").unwrap_or(200) {
        run_seed(seed, CYCLES, ops());
    }
}

#[test]
#[ignore = "replays one seed: SSP_CMODEL_SEED=N (and SSP_CMODEL_OPS if the sweep had it)"]
fn one_seed() {
    let seed = env_u64("SSP_CMODEL_SEED").expect("set SSP_CMODEL_SEED");
    run_seed(seed, CYCLES, ops());
}
