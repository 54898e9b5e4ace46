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
