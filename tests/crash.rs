//! Crash consistency with the fault-injecting device: random writes, trims and flushes, then a
//! power cut that drops or tears every unsynced write (sometimes in the middle of a checkpoint,
//! by failing a device write first). After each crash the pool must open, pass `check`, hold
//! every flushed write, and read each block as one of the versions it may legally have.

mod common;
use common::*;
use ssp::dev::{BlockDev, CrashMode, FaultControl, FaultDev};
use ssp::pool::{Options, Pool};
use std::collections::BTreeSet;
use std::sync::Arc;

const LU_BLOCKS: u64 = 600;

/// What each block may read as after a crash: the version at the last completed flush, plus
/// any version written since (0 = zeroes).
struct Model {
    acked: Vec<u64>,
    since_flush: Vec<BTreeSet<u64>>,
}

impl Model {
    fn new() -> Self {
        Model {
            acked: vec![0; LU_BLOCKS as usize],
            since_flush: vec![BTreeSet::new(); LU_BLOCKS as usize],
        }
    }
    fn wrote(&mut self, lba: u64, v: u64) {
        self.since_flush[lba as usize].insert(v);
    }
    /// A write that returned an error may or may not have happened.
    fn flushed(&mut self, current: &[u64]) {
        self.acked.copy_from_slice(current);
        self.since_flush.iter_mut().for_each(|s| s.clear());
    }
}

fn block_version(b: &[u8], lba: u64, cands: &BTreeSet<u64>, acked: u64) -> Option<u64> {
    let all: Vec<u64> = cands.iter().copied().chain([acked]).collect();
    all.into_iter().find(|&v| {
        if v == 0 {
            b.iter().all(|&x| x == 0)
        } else {
            b == pattern(lba, v).as_slice()
        }
    })
}

struct Rng(u64);
impl Rng {
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

fn opts() -> Options {
    Options {
        map_cache_nodes: 4,
        vba_cache_pages: 4,
        dirty_limit: 256,
        checkpoint_writes: 97,
        ..Options::default()
    }
}

fn run_seed(seed: u64) {
    let mut rng = Rng(seed.wrapping_mul(0x9e3779b97f4a7c15) | 1);
    let (dev, mut ctl): (FaultDev, FaultControl) = FaultDev::new("crashpv", 40 * MB);
    let pool = Pool::create(vec![Arc::new(dev)], &copts(), opts()).unwrap();
    let id = pool.lu_create("lu", LU_BLOCKS * 4096).unwrap().id;
    let mut pool = Some(pool);
    let mut model = Model::new();
    let mut current = vec![0u64; LU_BLOCKS as usize];
    let mut version = 0u64;
    for cycle in 0..4 {
        let p = pool.take().unwrap();
        let ops = 50 + rng.below(400);
        let fail_at = if rng.below(2) == 0 {
            Some(rng.below(ops))
        } else {
            None
        };
        for op in 0..ops {
            if Some(op) == fail_at {
                // Power fails at some device write inside the next operations.
                ctl.fail_writes_after(rng.below(40));
            }
            let r = match rng.below(20) {
                0..=13 => {
                    let lba = rng.below(LU_BLOCKS);
                    let n = 1 + rng.below(4).min(LU_BLOCKS - lba - 1);
                    let mut data = Vec::new();
                    for i in 0..n {
                        version += 1;
                        data.extend(pattern(lba + i, version));
                    }
                    // Versions were assigned in order lba..lba+n.
                    let first = version + 1 - n;
                    for i in 0..n {
                        model.wrote(lba + i, first + i);
                    }
                    let fua = rng.below(10) == 0;
                    let r = p.write(id, lba * 4096, &data, fua);
                    if r.is_ok() {
                        for i in 0..n {
                            current[(lba + i) as usize] = first + i;
                        }
                        if fua {
                            // FUA makes this write, and everything before it, durable.
                            model.flushed(&current);
                        }
                    }
                    r
                }
                14 | 15 => {
                    let lba = rng.below(LU_BLOCKS);
                    let n = 1 + rng.below(16).min(LU_BLOCKS - lba - 1);
                    for i in 0..n {
                        model.wrote(lba + i, 0);
                    }
                    let r = if rng.below(2) == 0 {
                        p.trim(id, lba * 4096, n * 4096)
                    } else {
                        p.write_zeroes(id, lba * 4096, n * 4096, false)
                    };
                    if r.is_ok() {
                        for i in 0..n {
                            current[(lba + i) as usize] = 0;
                        }
                    }
                    r
                }
                16 | 17 => p.flush().map(|_| model.flushed(&current)),
                18 => p.checkpoint().map(|_| model.flushed(&current)),
                _ => p.gc(2).map(|_| model.flushed(&current)),
            };
            if r.is_err() {
                break; // the pool is poisoned after a device failure: cut the power
            }
        }
        if fail_at.is_none() {
            // Without an injected failure the live pool must read exactly what was written.
            let mut buf = vec![0u8; 4096];
            for lba in 0..LU_BLOCKS {
                p.read(id, lba * 4096, &mut buf).unwrap();
                let v = current[lba as usize];
                let want = if v == 0 {
                    vec![0u8; 4096]
                } else {
                    pattern(lba, v)
                };
                assert!(buf == want, "seed {seed} cycle {cycle}: live block {lba} is wrong before the crash (want {v})");
            }
        }
        let mode = [
            CrashMode::RandomTorn,
            CrashMode::Random,
            CrashMode::DropAll,
            CrashMode::KeepAll,
        ][cycle % 4];
        let image = ctl.crash_image(mode, rng.next());
        drop(p);
        let (dev, c2) = FaultDev::from_image("crashpv", image);
        ctl = c2;
        let dev: Arc<dyn BlockDev> = Arc::new(dev);
        let p = Pool::open(vec![dev], opts())
            .unwrap_or_else(|e| panic!("seed {seed} cycle {cycle}: open failed: {e}"));
        let rep = p.check().unwrap();
        assert!(rep.ok(), "seed {seed} cycle {cycle}: {:#?}", rep.errors);
        let mut buf = vec![0u8; 4096];
        for lba in 0..LU_BLOCKS {
            p.read(id, lba * 4096, &mut buf).unwrap();
            let i = lba as usize;
            match block_version(&buf, lba, &model.since_flush[i], model.acked[i]) {
                Some(v) => current[i] = v,
                None => {
                    let found = (0..=version).find(|&v| {
                        if v == 0 {
                            buf.iter().all(|&x| x == 0)
                        } else {
                            buf == pattern(lba, v)
                        }
                    });
                    panic!(
                        "seed {seed} cycle {cycle}: block {lba} reads as {found:?}, neither its flushed version {} nor any later one {:?}",
                        model.acked[i], model.since_flush[i]
                    )
                }
            }
        }
        model.flushed(&current);
        pool = Some(p);
    }
}

#[test]
fn random_crashes_lose_nothing_flushed() {
    let seeds: u64 = std::env::var("SSP_CRASH_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    for seed in 1..=seeds {
        run_seed(seed);
    }
}

#[test]
fn torn_checkpoint_slot_falls_back_to_the_other() {
    let (dev, ctl) = FaultDev::new("pv", 32 * MB);
    let pool = Pool::create(vec![Arc::new(dev)], &copts(), opts()).unwrap();
    let id = pool.lu_create("lu", MB).unwrap().id;
    pool.write(id, 0, &pattern(0, 1), true).unwrap();
    pool.checkpoint().unwrap();
    pool.write(id, 4096, &pattern(1, 1), true).unwrap();
    // Tear whichever slot is newest: the pool must open from the older one and replay.
    let mut img = ctl.crash_image(CrashMode::KeepAll, 0);
    let newest = [8192usize, 12288]
        .into_iter()
        .max_by_key(|&o| u64::from_le_bytes(img[o + 16..o + 24].try_into().unwrap()))
        .unwrap();
    for b in &mut img[newest + 512..newest + 4096] {
        *b = 0xee;
    }
    let (dev, _) = FaultDev::from_image("pv", img);
    let p = Pool::open(vec![Arc::new(dev)], opts()).unwrap();
    assert_check(&p);
    let mut b = vec![0u8; 4096];
    p.read(id, 0, &mut b).unwrap();
    assert_eq!(b, pattern(0, 1));
    p.read(id, 4096, &mut b).unwrap();
    assert_eq!(b, pattern(1, 1));
}

#[test]
fn superblock_damage_is_survived_and_reported() {
    let (dev, ctl) = FaultDev::new("pv", 32 * MB);
    let dev: Arc<dyn BlockDev> = Arc::new(dev);
    let pool = Pool::create(vec![dev.clone()], &copts(), opts()).unwrap();
    pool.lu_create("lu", MB).unwrap();
    pool.close().unwrap();
    ctl.corrupt(100, 1); // first superblock copy
    let ro = Options {
        read_only: true,
        ..opts()
    };
    let p = Pool::open(vec![dev.clone()], ro.clone()).unwrap();
    let rep = p.check().unwrap();
    assert_eq!(rep.errors.len(), 1, "{:?}", rep.errors);
    assert!(
        rep.errors[0].contains("superblock copy at 0"),
        "{:?}",
        rep.errors
    );
    drop(p);
    // A writable open rewrites the bad copy from the good one (FORMAT.md §5.5).
    Pool::open(vec![dev.clone()], opts())
        .unwrap()
        .close()
        .unwrap();
    assert_check(&Pool::open(vec![dev.clone()], ro).unwrap());
    ctl.corrupt(100, 1);
    ctl.corrupt(4096 + 100, 1); // both copies gone: a clear error
    let err = Pool::open(vec![dev], opts()).err().expect("must not open");
    assert!(err.to_string().contains("checksum"), "{err}");
}

#[test]
fn wrong_magic_and_truncated_pv_are_clear_errors() {
    let (dev, ctl) = FaultDev::new("pv", 32 * MB);
    let dev: Arc<dyn BlockDev> = Arc::new(dev);
    Pool::create(vec![dev.clone()], &copts(), opts())
        .unwrap()
        .close()
        .unwrap();
    let img = ctl.crash_image(CrashMode::KeepAll, 0);
    let (short, _) = FaultDev::from_image("short", img[..16 * MB as usize].to_vec());
    let err = Pool::open(vec![Arc::new(short)], opts()).err().unwrap();
    assert!(err.to_string().contains("truncated"), "{err}");
    let mut bad = img.clone();
    bad[0..8].copy_from_slice(b"NOTAPOOL");
    bad[4096..4104].copy_from_slice(b"NOTAPOOL");
    let (d, _) = FaultDev::from_image("bad", bad);
    let err = Pool::open(vec![Arc::new(d)], opts()).err().unwrap();
    assert!(err.to_string().contains("bad magic"), "{err}");
}

#[test]
fn corrupt_metadata_node_is_reported_by_check() {
    let (dev, ctl) = FaultDev::new("pv", 32 * MB);
    let dev: Arc<dyn BlockDev> = Arc::new(dev);
    let pool = Pool::create(vec![dev.clone()], &copts(), Options::default()).unwrap();
    let id = pool.lu_create("lu", 4 * MB).unwrap().id;
    pool.write(id, 0, &vec![5u8; MB as usize], true).unwrap();
    pool.close().unwrap();
    // Find a block-map node (magic "SSPN", kind 1) and flip a bit in its payload.
    let img = ctl.crash_image(CrashMode::KeepAll, 0);
    let off = img
        .chunks(4096)
        .position(|c| &c[0..4] == b"SSPN" && c[4] == 1 && c[64..72] != [0u8; 8])
        .expect("a map node") as u64
        * 4096;
    ctl.corrupt(off + 200, 1);
    let p = Pool::open(vec![dev], Options::default()).unwrap();
    let rep = p.check().unwrap();
    assert!(!rep.ok());
    assert!(
        rep.errors
            .iter()
            .any(|e| e.contains("map node") && e.contains("checksum")),
        "{:?}",
        rep.errors
    );
    let mut b = vec![0u8; 4096];
    let err = p.read(id, 0, &mut b).unwrap_err();
    assert!(err.to_string().contains("checksum"), "{err}");
}

/// Replay must not silently stop at a damaged journal block that had been acknowledged.
#[test]
fn damaged_acknowledged_journal_block_is_an_error_not_silent_loss() {
    let o = Options {
        checkpoint_writes: 1 << 30,
        ..Options::default()
    };
    let (dev, ctl) = FaultDev::new("jpv", 32 * MB);
    let dev: Arc<dyn BlockDev> = Arc::new(dev);
    let pool = Pool::create(vec![dev.clone()], &copts(), o.clone()).unwrap();
    let id = pool.lu_create("lu", MB).unwrap().id; // journal block at ring position 0
    pool.write(id, 0, &pattern(0, 1), true).unwrap(); // position 1
    pool.write(id, 4096, &pattern(1, 1), true).unwrap(); // position 2, records 1 as durable
    drop(pool);
    let img = ctl.crash_image(CrashMode::KeepAll, 0);
    // Damage position 1: open must refuse, naming the PV and offset.
    let mut bad = img.clone();
    bad[16384 + 4096 + 300] ^= 1;
    let (d, _) = FaultDev::from_image("jpv", bad);
    let err = Pool::open(vec![Arc::new(d)], o.clone())
        .err()
        .expect("must refuse");
    let msg = err.to_string();
    assert!(
        msg.contains("jpv")
            && msg.contains(&(16384 + 4096).to_string())
            && msg.contains("acknowledged"),
        "{msg}"
    );
    // A torn last block is an ordinary torn tail: the pool opens without it.
    let mut torn = img;
    for b in &mut torn[16384 + 2 * 4096 + 2048..16384 + 3 * 4096] {
        *b = 0;
    }
    let (d, _) = FaultDev::from_image("jpv", torn);
    let p = Pool::open(vec![Arc::new(d)], o).unwrap();
    assert_check(&p);
    let mut b = vec![0u8; 4096];
    p.read(id, 0, &mut b).unwrap();
    assert_eq!(b, pattern(0, 1));
}
