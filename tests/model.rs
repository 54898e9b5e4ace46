//! Model-based property test: random sequences of LU create / write / trim / write-zeroes /
//! flush / resize / remove, clean reopens and power cuts, checked against a simple in-memory
//! model after every step that can lose data, with a full `check` each time.

mod common;
use common::*;
use proptest::prelude::*;
use ssp::dev::{CrashMode, FaultControl, FaultDev};
use ssp::pool::Pool;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

#[derive(Clone, Debug)]
enum Op {
    Create(u8, u16),
    Write(u8, u16, u8, bool),
    Trim(u8, u16, u8),
    Zero(u8, u16, u8),
    /// WRITE_ZEROES with NO_HOLE: zero map entries, allocated.
    ZeroAlloc(u8, u16, u8),
    Flush,
    Resize(u8, u16),
    Remove(u8),
    Reopen,
    Crash(u8),
    Gc,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0..4u8, 1..700u16).prop_map(|(l, b)| Op::Create(l, b)),
        10 => (0..4u8, 0..700u16, 1..9u8, any::<bool>()).prop_map(|(l, a, n, f)| Op::Write(l, a, n, f)),
        2 => (0..4u8, 0..700u16, 1..40u8).prop_map(|(l, a, n)| Op::Trim(l, a, n)),
        2 => (0..4u8, 0..700u16, 1..40u8).prop_map(|(l, a, n)| Op::Zero(l, a, n)),
        2 => (0..4u8, 0..700u16, 1..255u8).prop_map(|(l, a, n)| Op::ZeroAlloc(l, a, n)),
        2 => Just(Op::Flush),
        1 => (0..4u8, 1..700u16).prop_map(|(l, b)| Op::Resize(l, b)),
        1 => (0..4u8).prop_map(Op::Remove),
        1 => Just(Op::Reopen),
        1 => (0..4u8).prop_map(Op::Crash),
        1 => Just(Op::Gc),
    ]
}

/// Per LU: its size in blocks, the version of each block at the last flush, and versions
/// written since (0 = zeroes).
#[derive(Clone, Default)]
struct Lu {
    blocks: u64,
    acked: BTreeMap<u64, u64>,
    since: BTreeMap<u64, BTreeSet<u64>>,
    current: BTreeMap<u64, u64>,
}

fn name(l: u8) -> String {
    format!("lu{l}")
}

struct World {
    pool: Option<Pool>,
    ctl: FaultControl,
    lus: BTreeMap<u8, Lu>,
    version: u64,
}

impl World {
    fn flushed(&mut self) {
        for lu in self.lus.values_mut() {
            lu.acked = lu.current.clone();
            lu.since.clear();
        }
    }

    /// Reads every LU and resolves each block to one allowed version.
    fn verify(&mut self, exact: bool) {
        let mut buf = vec![0u8; 4096];
        let pool = self.pool.take().unwrap();
        for (l, lu) in self.lus.iter_mut() {
            let info = pool.lu_get(&name(*l)).unwrap();
            assert_eq!(info.size, lu.blocks * 4096);
            for lba in 0..lu.blocks {
                pool.read(info.id, lba * 4096, &mut buf).unwrap();
                let acked = lu.acked.get(&lba).copied().unwrap_or(0);
                let mut allowed: Vec<u64> = vec![if exact {
                    lu.current.get(&lba).copied().unwrap_or(0)
                } else {
                    acked
                }];
                if !exact {
                    allowed.extend(lu.since.get(&lba).into_iter().flatten().copied());
                }
                let got = allowed.iter().copied().find(|&v| {
                    if v == 0 {
                        buf.iter().all(|&b| b == 0)
                    } else {
                        buf == pattern(lba, v)
                    }
                });
                match got {
                    Some(0) => {
                        lu.current.remove(&lba);
                    }
                    Some(v) => {
                        lu.current.insert(lba, v);
                    }
                    None => panic!(
                        "{} block {lba}: none of the allowed versions {allowed:?}",
                        name(*l)
                    ),
                }
            }
            assert_eq!(
                info.mapped_blocks,
                lu.current.len() as u64,
                "{}: mapped blocks",
                name(*l)
            );
            assert_eq!(
                info.owned_blocks,
                lu.current.len() as u64,
                "{}: owned blocks",
                name(*l)
            );
        }
        assert_eq!(pool.lu_list().len(), self.lus.len());
        let rep = pool.check().unwrap();
        assert!(rep.ok(), "{:#?}", rep.errors);
        self.pool = Some(pool);
        self.flushed();
    }

    fn step(&mut self, op: &Op) {
        let p = self.pool.as_ref().unwrap();
        match *op {
            Op::Create(l, b) => {
                let r = p.lu_create(&name(l), u64::from(b) * 4096);
                assert_eq!(r.is_ok(), !self.lus.contains_key(&l));
                if r.is_ok() {
                    self.lus.insert(
                        l,
                        Lu {
                            blocks: u64::from(b),
                            ..Default::default()
                        },
                    );
                    self.flushed();
                }
            }
            Op::Write(l, a, n, fua) => {
                let Some(lu) = self.lus.get_mut(&l) else {
                    return;
                };
                let (a, n) = (u64::from(a), u64::from(n));
                if a + n > lu.blocks {
                    return;
                }
                let id = p.lu_id(&name(l)).unwrap();
                let mut data = Vec::new();
                for i in 0..n {
                    self.version += 1;
                    data.extend(pattern(a + i, self.version));
                    lu.current.insert(a + i, self.version);
                    lu.since.entry(a + i).or_default().insert(self.version);
                }
                p.write(id, a * 4096, &data, fua).unwrap();
                if fua {
                    self.flushed();
                }
            }
            Op::Trim(l, a, n) | Op::Zero(l, a, n) | Op::ZeroAlloc(l, a, n) => {
                let Some(lu) = self.lus.get_mut(&l) else {
                    return;
                };
                let (a, n) = (u64::from(a), u64::from(n));
                if a + n > lu.blocks {
                    return;
                }
                let id = p.lu_id(&name(l)).unwrap();
                for i in a..a + n {
                    lu.current.remove(&i);
                    lu.since.entry(i).or_default().insert(0);
                }
                if matches!(op, Op::Trim(..)) {
                    p.trim(id, a * 4096, n * 4096).unwrap();
                } else if matches!(op, Op::ZeroAlloc(..)) {
                    p.write_zeroes_allocated(id, a * 4096, n * 4096, false)
                        .unwrap();
                } else {
                    p.write_zeroes(id, a * 4096, n * 4096, false).unwrap();
                }
            }
            Op::Flush => {
                p.flush().unwrap();
                self.flushed();
            }
            Op::Resize(l, b) => {
                let Some(lu) = self.lus.get_mut(&l) else {
                    return;
                };
                let b = u64::from(b);
                p.lu_resize(&name(l), b * 4096).unwrap();
                lu.blocks = b;
                lu.current.retain(|&k, _| k < b);
                self.flushed();
            }
            Op::Remove(l) => {
                let r = p.lu_remove(&name(l));
                assert_eq!(r.is_ok(), self.lus.remove(&l).is_some());
                if r.is_ok() {
                    self.flushed(); // removal is durable when it returns
                }
            }
            Op::Gc => {
                p.gc(3).unwrap();
                self.flushed();
            }
            Op::Reopen => {
                let pool = self.pool.take().unwrap();
                pool.close().unwrap();
                let img = self.ctl.crash_image(CrashMode::DropAll, 0);
                let (dev, ctl) = FaultDev::from_image("model", img);
                self.ctl = ctl;
                self.pool = Some(Pool::open(vec![Arc::new(dev)], model_opts()).unwrap());
                self.verify(true);
            }
            Op::Crash(m) => {
                let mode = [
                    CrashMode::DropAll,
                    CrashMode::KeepAll,
                    CrashMode::Random,
                    CrashMode::RandomTorn,
                ][m as usize];
                let img = self.ctl.crash_image(mode, self.version);
                drop(self.pool.take());
                let (dev, ctl) = FaultDev::from_image("model", img);
                self.ctl = ctl;
                self.pool = Some(Pool::open(vec![Arc::new(dev)], model_opts()).unwrap());
                self.verify(false);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, max_shrink_iters: 200, ..ProptestConfig::default() })]
    #[test]
    fn pool_matches_model(ops in prop::collection::vec(op(), 1..120)) {
        let (dev, ctl) = FaultDev::new("model", 24 * MB);
        let pool = Pool::create(vec![Arc::new(dev)], &copts(), model_opts()).unwrap();
        let mut w = World { pool: Some(pool), ctl, lus: BTreeMap::new(), version: 0 };
        for op in &ops {
            w.step(op);
        }
        w.verify(true);
    }
}
