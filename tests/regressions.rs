//! Named regression tests for bugs found by the property tests.

mod common;
use common::*;
use ssp::dev::{CrashMode, FaultControl, FaultDev};
use ssp::pool::{Pool, PoolError};
use std::sync::Arc;

fn reopen(p: Pool, ctl: &mut FaultControl, crash: Option<CrashMode>) -> Pool {
    let img = match crash {
        None => {
            p.close().unwrap();
            ctl.crash_image(CrashMode::DropAll, 0)
        }
        Some(m) => {
            let i = ctl.crash_image(m, 2);
            drop(p);
            i
        }
    };
    let (dev, c) = FaultDev::from_image("pv", img);
    *ctl = c;
    let p = Pool::open(vec![Arc::new(dev)], model_opts()).unwrap();
    assert_check(&p);
    p
}

/// A block written and then cut off by a resize, both replayed after a crash, left its segment
/// free with a dirty summary; the summary was written anyway and its live count leaked.
#[test]
fn summary_of_segment_emptied_during_replay_does_not_leak() {
    let (dev, mut ctl) = FaultDev::new("pv", 24 * MB);
    let mut p = Pool::create(vec![Arc::new(dev)], &copts(), model_opts()).unwrap();
    let a = p.lu_create("a", 102 * 4096).unwrap().id;
    p.write(a, 0, &pattern(0, 1), false).unwrap();
    p = reopen(p, &mut ctl, None);
    p.gc(3).unwrap();
    let b = p.lu_create("b", 300 * 4096).unwrap().id;
    p = reopen(p, &mut ctl, None);
    p.write(b, 156 * 4096, &pattern(156, 2), false).unwrap();
    p.lu_resize("b", 156 * 4096).unwrap();
    p = reopen(p, &mut ctl, Some(CrashMode::RandomTorn));
    p = reopen(p, &mut ctl, Some(CrashMode::DropAll));
    p.gc(3).unwrap();
    assert_check(&p);
}

/// Found by the sspd benchmark: under sustained random overwrites of a mostly full pool the
/// cleaner and the checkpoints starved each other. A checkpoint taken when the free set was at
/// the reserve used the half of it kept for the cleaner; the cleaner then refused to start (or
/// ran out of segments part-way) and the write failed ("no free segment for Gc", or "nothing
/// more can be reclaimed") with the pool 64 % full: 5 of 6 seeds failed after 100k-160k
/// overwrites. The reserve now holds a whole checkpoint plus a cleaning round, and the cleaner
/// checks before each victim that the checkpoint after it still fits (FORMAT.md §5.4.1).
///
/// Fill a 640 MiB LU of a 1 GiB pool, overwrite random blocks (every `zero_every`-th write all
/// zero, so it becomes a zero entry and frees its block), verify every block, then fill the
/// rest of the pool through a second LU until the pool is truly full: that write fails with
/// ENOSPC, nothing acknowledged is lost, and once the second LU is trimmed overwrites go on.
fn overwrite_full_pool(seed: u64, zero_every: u64, overwrites: u64) {
    let opts = ssp::pool::Options {
        dirty_limit: 512,
        ..ssp::pool::Options::default()
    };
    let (p, _) = mem_pool(1024 * MB, opts);
    let id = p.lu_create("vm", 640 * MB).unwrap().id;
    let blocks = 640 * MB / 4096;
    let chunk = vec![0x11u8; 1 << 20];
    for off in (0..640 * MB).step_by(1 << 20) {
        p.write(id, off, &chunk, false).unwrap();
    }
    // What each block holds: 0 all zero, u64::MAX the initial fill, else the write's number.
    let mut version = vec![u64::MAX; blocks as usize];
    let mut x = seed;
    let mut blk = vec![0u8; 4096];
    let mut overwrite = |p: &ssp::pool::Pool, version: &mut [u64], from: u64, to: u64| {
        for i in from..to {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let lba = x % blocks;
            let v = if zero_every != 0 && i % zero_every == 0 {
                0
            } else {
                i + 1
            };
            blk.fill(0);
            if v != 0 {
                blk[..8].copy_from_slice(&v.to_le_bytes());
            }
            p.write(id, lba * 4096, &blk, false)
                .unwrap_or_else(|e| panic!("seed {seed:#x}, overwrite {i}: {e}"));
            version[lba as usize] = v;
        }
    };
    let verify = |p: &ssp::pool::Pool, version: &[u64]| {
        let mut buf = vec![0u8; 1 << 20];
        for (n, part) in version.chunks(256).enumerate() {
            p.read(id, n as u64 * MB, &mut buf).unwrap();
            for (k, (b, &v)) in buf.chunks(4096).zip(part).enumerate() {
                let ok = match v {
                    0 => b.iter().all(|&c| c == 0),
                    u64::MAX => b.iter().all(|&c| c == 0x11),
                    v => b[..8] == v.to_le_bytes() && b[8..].iter().all(|&c| c == 0),
                };
                assert!(ok, "seed {seed:#x}: block {} lost its data", n * 256 + k);
            }
        }
    };
    overwrite(&p, &mut version, 0, overwrites);
    verify(&p, &version);

    // Past true fullness: a clean ENOSPC, nothing lost, the pool keeps working.
    let fill = p.lu_create("fill", 1024 * MB).unwrap().id;
    let mut off = 0;
    let err = loop {
        match p.write(fill, off, &chunk, false) {
            Ok(()) => off += MB,
            Err(e) => break e,
        }
        assert!(off < 1024 * MB, "a 1 GiB pool cannot hold 1.6 GiB");
    };
    assert!(
        matches!(err, PoolError::NoSpace(_)),
        "seed {seed:#x}: {err}"
    );
    assert_eq!(err.errno(), 28);
    verify(&p, &version);
    p.trim(fill, 0, 1024 * MB).unwrap();
    overwrite(&p, &mut version, overwrites, overwrites + 20_000);
    p.flush().unwrap();
    verify(&p, &version);
    assert_check(&p);
}

#[test]
fn random_overwrites_of_a_full_pool_never_starve_the_checkpoint() {
    overwrite_full_pool(0x9e37_79b9_7f4a_7c15, 0, 200_000);
}

#[test]
fn random_overwrites_of_a_full_pool_never_starve_the_cleaner() {
    // Failed before the fix ("nothing more can be reclaimed" at overwrite 105216).
    overwrite_full_pool(0x0123_4567_89ab_cdef, 0, 200_000);
}

#[test]
fn random_overwrites_with_zero_blocks_of_a_full_pool_never_starve_the_cleaner() {
    overwrite_full_pool(0xdead_beef_cafe_f00d, 7, 200_000);
}

/// Many seeds, data-only and with zero blocks mixed in (minutes; run by hand:
/// `cargo test --test regressions -- --ignored full_pool_overwrite_sweep`).
#[test]
#[ignore]
fn full_pool_overwrite_sweep() {
    for n in 1..=16u64 {
        let seed = n.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        for zero_every in [0, 7] {
            overwrite_full_pool(seed, zero_every, 300_000);
            eprintln!("seed {seed:#x}, zero every {zero_every}: ok");
        }
    }
}
