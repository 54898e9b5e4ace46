//! The data path does not wait for device I/O done on another writer's behalf: a full data run
//! is written after the pool lock is released (a "flight"), and a background checkpoint writes
//! and syncs without the lock. Each test stalls a device operation on purpose (the fault
//! device holds it) and checks that other writers and readers finish meanwhile, then that the
//! pool is whole after a power cut.

mod common;
use common::copts;
use ssp::dev::{BlockDev, CrashMode, FaultControl, FaultDev};
use ssp::pool::{Options, Pool};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

const PV_SIZE: u64 = 256 << 20;
const B: usize = 4096;

fn block(tag: u64) -> Vec<u8> {
    let mut b = vec![0u8; B];
    for (i, w) in b.chunks_mut(8).enumerate() {
        w.copy_from_slice(&(tag.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ i as u64).to_le_bytes());
    }
    b
}

fn new_pool(opts: Options) -> (Pool, FaultControl) {
    let (dev, ctl) = FaultDev::new("pv0", PV_SIZE);
    let devs: Vec<Arc<dyn BlockDev>> = vec![Arc::new(dev)];
    (Pool::create(devs, &copts(), opts).unwrap(), ctl)
}

/// Wait (bounded) until the device holds at least one write or sync.
fn wait_held(ctl: &FaultControl) {
    let t = Instant::now();
    while ctl.held() == 0 {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "nothing reached the device"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Reopen the pool from what a power cut now would leave, and check it.
fn after_power_cut(ctl: &FaultControl) -> Pool {
    let (dev, _) = FaultDev::from_image("pv0", ctl.crash_image(CrashMode::DropAll, 7));
    let devs: Vec<Arc<dyn BlockDev>> = vec![Arc::new(dev)];
    let pool = Pool::open(devs, Options::default()).unwrap();
    let rep = pool.check().unwrap();
    assert!(
        rep.errors.is_empty(),
        "check after the power cut: {:?}",
        rep.errors
    );
    pool
}

fn read_block(pool: &Pool, vol: u64, lba: u64) -> Vec<u8> {
    let mut b = vec![0u8; B];
    pool.read(vol, lba * B as u64, &mut b).unwrap();
    b
}

#[test]
fn a_full_data_run_is_written_without_the_pool_lock() {
    let (pool, ctl) = new_pool(Options::default());
    let pool = Arc::new(pool);
    let a = pool.lu_create("a", 16 << 20).unwrap().id;
    let b = pool.lu_create("b", 16 << 20).unwrap().id;
    pool.flush().unwrap();
    // 64 blocks fill one data run; its write-out stalls on the device.
    ctl.hold_writes(true);
    let run: Vec<u8> = (0..64).flat_map(block).collect();
    let writer = {
        let (pool, run) = (pool.clone(), run.clone());
        std::thread::spawn(move || pool.write(a, 0, &run, false))
    };
    wait_held(&ctl);
    // Meanwhile another LU is written and the stalled run reads back (from memory).
    let (tx, rx) = mpsc::channel();
    {
        let pool = pool.clone();
        std::thread::spawn(move || {
            pool.write(b, 0, &block(1000), false).unwrap();
            let mut got = vec![0u8; run.len()];
            pool.read(a, 0, &mut got).unwrap();
            tx.send(got == run).unwrap();
        });
    }
    let served = rx.recv_timeout(Duration::from_secs(10));
    let still_held = ctl.held() > 0;
    ctl.hold_writes(false);
    assert_eq!(
        served,
        Ok(true),
        "a write and a read waited for another writer's device write"
    );
    assert!(
        still_held,
        "the stalled run was written before the others finished"
    );
    writer.join().unwrap().unwrap();
    pool.flush().unwrap();
    drop(pool);
    let pool = after_power_cut(&ctl);
    for i in 0..64 {
        assert_eq!(read_block(&pool, a, i), block(i), "block {i} of a");
    }
    assert_eq!(read_block(&pool, b, 0), block(1000));
}

#[test]
fn a_background_checkpoint_syncs_without_stopping_writers() {
    let opts = Options {
        checkpoint_writes: 64,
        ..Options::default()
    };
    let (pool, ctl) = new_pool(opts);
    let pool = Arc::new(pool);
    let a = pool.lu_create("a", 16 << 20).unwrap().id;
    let b = pool.lu_create("b", 16 << 20).unwrap().id;
    pool.flush().unwrap();
    let gen0 = pool.status().checkpoint_generation;
    let _ckpt = pool.spawn_checkpointer();
    // Syncs stall; 64 writes make a checkpoint wanted, and the checkpointer's sync stalls.
    ctl.hold_syncs(true);
    for i in 0..64 {
        pool.write(a, i * B as u64, &block(i), false).unwrap();
    }
    wait_held(&ctl);
    let (tx, rx) = mpsc::channel();
    {
        let pool = pool.clone();
        std::thread::spawn(move || {
            // 64 + 2 * 20 writes stay below the hard limit (2 * checkpoint_writes), where a
            // writer would have to wait for the checkpoint.
            for i in 0..20 {
                pool.write(b, i * B as u64, &block(500 + i), false).unwrap();
                pool.write(a, (64 + i) * B as u64, &block(64 + i), false)
                    .unwrap();
            }
            let ok = (0..20).all(|i| read_block(&pool, b, i) == block(500 + i));
            tx.send(ok).unwrap();
        });
    }
    let served = rx.recv_timeout(Duration::from_secs(10));
    let still_held = ctl.held() > 0;
    ctl.hold_syncs(false);
    assert_eq!(
        served,
        Ok(true),
        "writers waited for a background checkpoint's sync"
    );
    assert!(
        still_held,
        "the checkpoint's sync ended before the writers did"
    );
    pool.flush().unwrap();
    let st = pool.status();
    assert!(
        st.checkpoint_generation > gen0 && st.counters.background_checkpoints >= 1,
        "no background checkpoint committed: generation {} (was {gen0}), {:?}",
        st.checkpoint_generation,
        st.counters
    );
    assert_eq!(st.counters.writer_checkpoints, 0, "{:?}", st.counters);
    drop(pool);
    let pool = after_power_cut(&ctl);
    for i in 0..84 {
        assert_eq!(read_block(&pool, a, i), block(i), "block {i} of a");
    }
    for i in 0..20 {
        assert_eq!(read_block(&pool, b, i), block(500 + i), "block {i} of b");
    }
}

#[test]
fn online_check_reads_metadata_without_stopping_readers() {
    // A pool whose map of `a` is on disk only (reopened: nothing cached).
    let (pool, ctl) = new_pool(Options::default());
    let a = pool.lu_create("a", 16 << 20).unwrap().id;
    let b = pool.lu_create("b", 16 << 20).unwrap().id;
    for i in 0..200 {
        pool.write(a, i * B as u64, &block(i), false).unwrap();
    }
    pool.flush().unwrap();
    drop(pool);
    let (dev, ctl2) = FaultDev::from_image("pv0", ctl.crash_image(CrashMode::DropAll, 1));
    let devs: Vec<Arc<dyn BlockDev>> = vec![Arc::new(dev)];
    let pool = Arc::new(Pool::open(devs, Options::default()).unwrap());
    // `b` is written now: its map and data are in memory, a read of it needs no device.
    pool.write(b, 0, &block(7), false).unwrap();
    assert_eq!(read_block(&pool, b, 0), block(7));
    // Check's first stage stalls on the device, reading metadata.
    ctl2.hold_reads(true);
    let checker = {
        let pool = pool.clone();
        std::thread::spawn(move || pool.check())
    };
    wait_held(&ctl2);
    let (tx, rx) = mpsc::channel();
    {
        let pool = pool.clone();
        std::thread::spawn(move || tx.send(read_block(&pool, b, 0)).unwrap());
    }
    let served = rx.recv_timeout(Duration::from_secs(10));
    let still_held = ctl2.held() > 0;
    ctl2.hold_reads(false);
    assert_eq!(
        served.as_deref(),
        Ok(&block(7)[..]),
        "a read waited for check's metadata walk"
    );
    assert!(still_held, "check's read ended before the reader finished");
    let rep = checker.join().unwrap().unwrap();
    assert!(rep.errors.is_empty(), "{:?}", rep.errors);
    assert_eq!(rep.volumes, 2);
    assert!(rep.data_blocks >= 201, "{rep:?}");
}
