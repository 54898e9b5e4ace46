//! Named regression tests for bugs found by the property tests.

mod common;
use common::*;
use ssp::dev::{CrashMode, FaultControl, FaultDev};
use ssp::pool::Pool;
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

/// Found by the sspd benchmark: under sustained random overwrites of a mostly full pool, one
/// cleaning batch moved so many blocks that the checkpoint after it found no free segment for
/// its metadata, and the pool stopped. The cleaner now checkpoints as its dirty metadata grows
/// and leaves half of the reserve to checkpoints.
#[test]
fn random_overwrites_of_a_full_pool_never_starve_the_checkpoint() {
    let opts = ssp::pool::Options {
        dirty_limit: 512,
        ..ssp::pool::Options::default()
    };
    let (p, _) = mem_pool(1024 * MB, opts);
    p.lu_create("vm", 640 * MB).unwrap();
    let id = p.lu_id("vm").unwrap();
    let blocks = 640 * MB / 4096;
    let chunk = vec![0x11u8; 1 << 20];
    for off in (0..640 * MB).step_by(1 << 20) {
        p.write(id, off, &chunk, false).unwrap();
    }
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut blk = vec![0u8; 4096];
    for i in 0..200_000u64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        // Never all zero: a zero block would be a zero map entry, not an overwrite.
        blk[..8].copy_from_slice(&(i + 1).to_le_bytes());
        p.write(id, (x % blocks) * 4096, &blk, false)
            .unwrap_or_else(|e| panic!("overwrite {i}: {e}"));
    }
    p.flush().unwrap();
    assert_check(&p);
}
