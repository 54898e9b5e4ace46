//! Model-based property test of sharing: LUs, snapshots, rollbacks, client images, clones of
//! clones and removals in any order, with writes, trims, power cuts and reopens in between.
//! After every step that can lose data, every block of every volume is read back and checked
//! against the model, mapped and owned blocks are compared with the model's exact counts
//! (a block is owned when no other volume holds the same written block), and `check` (which
//! recounts owned blocks by brute force) must pass.

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
    /// WRITE_ZEROES with NO_HOLE: zero map entries (no data block, nothing owned).
    ZeroAlloc(u8, u16, u8),
    Flush,
    Resize(u8, u16),
    Snapshot(u8, u8),
    /// Snapshot two volumes in one step.
    SnapshotPair(u8, u8, u8),
    Rollback(u8, u8),
    RemoveSnapshot(u8),
    Clone(u8, u8),
    Capture(u8, u8),
    Remove(u8),
    Reopen,
    Crash(u8),
    Gc,
}

const SLOTS: u8 = 5;

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0..SLOTS, 1..300u16).prop_map(|(l, b)| Op::Create(l, b)),
        10 => (0..16u8, 0..300u16, 1..9u8, any::<bool>()).prop_map(|(l, a, n, f)| Op::Write(l, a, n, f)),
        2 => (0..SLOTS, 0..300u16, 1..40u8).prop_map(|(l, a, n)| Op::Trim(l, a, n)),
        2 => (0..SLOTS, 0..300u16, 1..255u8).prop_map(|(l, a, n)| Op::ZeroAlloc(l, a, n)),
        1 => Just(Op::Flush),
        1 => (0..SLOTS, 1..300u16).prop_map(|(l, b)| Op::Resize(l, b)),
        3 => (0..SLOTS + 2, 0..3u8).prop_map(|(l, s)| Op::Snapshot(l, s)),
        1 => (0..SLOTS, 0..SLOTS, 0..3u8).prop_map(|(a, b, s)| Op::SnapshotPair(a, b, s)),
        2 => (0..SLOTS, 0..3u8).prop_map(|(l, s)| Op::Rollback(l, s)),
        2 => (0..16u8).prop_map(Op::RemoveSnapshot),
        3 => (0..16u8, 0..SLOTS).prop_map(|(s, l)| Op::Clone(s, l)),
        1 => (0..SLOTS, 0..2u8).prop_map(|(l, i)| Op::Capture(l, i)),
        1 => (0..SLOTS + 2).prop_map(Op::Remove),
        1 => Just(Op::Reopen),
        1 => (0..4u8).prop_map(Op::Crash),
        1 => Just(Op::Gc),
    ]
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Lu,
    Snapshot,
    Image,
}

/// A block: the content version it holds and the identity of the written block (a copy made by
/// image capture has the same content and a new identity).
type Blk = (u64, u64);

#[derive(Clone, Debug)]
struct Vol {
    kind: Kind,
    blocks: u64,
    cur: BTreeMap<u64, Blk>,
    acked: BTreeMap<u64, Blk>,
    /// Content versions written since the last flush (0 = zeroes).
    since: BTreeMap<u64, BTreeSet<u64>>,
    /// For snapshots: the volume they belong to.
    base: String,
}

fn slot_name(l: u8) -> String {
    if l < SLOTS {
        format!("v{l}")
    } else {
        format!("img{}", l - SLOTS)
    }
}

struct World {
    pool: Option<Pool>,
    ctl: FaultControl,
    vols: BTreeMap<String, Vol>,
    version: u64,
}

impl World {
    fn flushed(&mut self) {
        for v in self.vols.values_mut() {
            v.acked = v.cur.clone();
            v.since.clear();
        }
    }

    fn owned(&self, name: &str) -> u64 {
        let v = &self.vols[name];
        v.cur
            .iter()
            .filter(|(lba, b)| {
                !self
                    .vols
                    .iter()
                    .any(|(n, o)| n != name && o.cur.get(lba).is_some_and(|x| x.1 == b.1))
            })
            .count() as u64
    }

    /// Read every volume back and resolve each block to one allowed version (`exact`: the
    /// current one).
    fn verify(&mut self, exact: bool) {
        let mut buf = vec![0u8; 4096];
        let pool = self.pool.take().unwrap();
        let names: Vec<String> = self.vols.keys().cloned().collect();
        for name in &names {
            let info = pool.lu_get(name).unwrap();
            let v = self.vols.get_mut(name).unwrap();
            assert_eq!(info.size, v.blocks * 4096, "{name}: size");
            for lba in 0..v.blocks {
                pool.read(info.id, lba * 4096, &mut buf).unwrap();
                let acked = v.acked.get(&lba).copied();
                let mut allowed: Vec<Option<Blk>> = vec![if exact {
                    v.cur.get(&lba).copied()
                } else {
                    acked
                }];
                if !exact {
                    for &c in v.since.get(&lba).into_iter().flatten() {
                        allowed.push(if c == 0 { None } else { Some((c, c)) });
                    }
                }
                let got = allowed.iter().copied().find(|b| match b {
                    None => buf.iter().all(|&x| x == 0),
                    Some((c, _)) => buf == pattern(lba, *c),
                });
                match got {
                    Some(None) => {
                        v.cur.remove(&lba);
                    }
                    Some(Some(b)) => {
                        v.cur.insert(lba, b);
                    }
                    None => panic!("{name} block {lba}: none of the allowed versions {allowed:?}"),
                }
            }
        }
        for name in &names {
            let info = pool.lu_get(name).unwrap();
            let v = &self.vols[name];
            assert_eq!(info.mapped_blocks, v.cur.len() as u64, "{name}: mapped");
            assert_eq!(info.owned_blocks, self.owned(name), "{name}: owned");
            let st = pool.file_stat(name).unwrap();
            assert_eq!(st.owned_blocks + st.shared_blocks, st.data_blocks);
            assert_eq!(st.block_debt, st.max_blocks - st.owned_blocks);
        }
        let rep = pool.check().unwrap();
        assert!(rep.ok(), "{:#?}", rep.errors);
        self.pool = Some(pool);
    }

    fn snapshots(&self) -> Vec<String> {
        self.vols
            .iter()
            .filter(|(_, v)| v.kind == Kind::Snapshot)
            .map(|(n, _)| n.clone())
            .collect()
    }

    fn reopen(&mut self, mode: CrashMode, clean: bool) {
        let pool = self.pool.take().unwrap();
        if clean {
            pool.close().unwrap();
        } else {
            drop(pool);
        }
        let img = self.ctl.crash_image(mode, self.version);
        let (dev, ctl) = FaultDev::from_image("model", img);
        self.ctl = ctl;
        self.pool = Some(Pool::open(vec![Arc::new(dev)], model_opts()).unwrap());
        self.verify(clean);
        // Opening commits what replay found: that is the durable state now.
        self.flushed();
    }

    fn step(&mut self, op: &Op) {
        let p = self.pool.as_ref().unwrap();
        match *op {
            Op::Create(l, b) => {
                let name = slot_name(l);
                let r = p.lu_create(&name, u64::from(b) * 4096);
                assert_eq!(r.is_ok(), !self.vols.contains_key(&name), "{r:?}");
                if r.is_ok() {
                    let v = Vol {
                        kind: Kind::Lu,
                        blocks: u64::from(b),
                        cur: BTreeMap::new(),
                        acked: BTreeMap::new(),
                        since: BTreeMap::new(),
                        base: String::new(),
                    };
                    self.vols.insert(name, v);
                    self.flushed();
                }
            }
            Op::Write(l, a, n, fua) => {
                // Any volume: snapshots and images must refuse.
                let names: Vec<String> = self.vols.keys().cloned().collect();
                if names.is_empty() {
                    return;
                }
                let name = names[l as usize % names.len()].clone();
                let v = self.vols.get_mut(&name).unwrap();
                let (a, n) = (u64::from(a), u64::from(n));
                if a + n > v.blocks {
                    return;
                }
                let id = p.lu_id(&name).unwrap();
                let mut data = Vec::new();
                let mut versions = Vec::new();
                for i in 0..n {
                    self.version += 1;
                    data.extend(pattern(a + i, self.version));
                    versions.push((a + i, self.version));
                }
                let r = p.write(id, a * 4096, &data, fua);
                if v.kind != Kind::Lu {
                    assert!(r.is_err(), "a write to {name} must be refused");
                    return;
                }
                r.unwrap();
                for (lba, ver) in versions {
                    v.cur.insert(lba, (ver, ver));
                    v.since.entry(lba).or_default().insert(ver);
                }
                if fua {
                    self.flushed();
                }
            }
            Op::Trim(l, a, n) | Op::ZeroAlloc(l, a, n) => {
                let name = slot_name(l);
                let Some(v) = self.vols.get_mut(&name) else {
                    return;
                };
                let (a, n) = (u64::from(a), u64::from(n));
                if a + n > v.blocks {
                    return;
                }
                let id = p.lu_id(&name).unwrap();
                for i in a..a + n {
                    v.cur.remove(&i);
                    v.since.entry(i).or_default().insert(0);
                }
                if matches!(op, Op::Trim(..)) {
                    p.trim(id, a * 4096, n * 4096).unwrap();
                } else {
                    p.write_zeroes_allocated(id, a * 4096, n * 4096, false)
                        .unwrap();
                }
            }
            Op::Flush => {
                p.flush().unwrap();
                self.flushed();
            }
            Op::Resize(l, b) => {
                let name = slot_name(l);
                let Some(v) = self.vols.get_mut(&name) else {
                    return;
                };
                let b = u64::from(b);
                p.lu_resize(&name, b * 4096).unwrap();
                v.blocks = b;
                v.cur.retain(|&k, _| k < b);
                self.flushed();
            }
            Op::Snapshot(l, s) => {
                let base = slot_name(l);
                let name = format!("{base}@s{s}");
                let r = p.snapshot_create(&[&name]);
                let ok = self
                    .vols
                    .get(&base)
                    .is_some_and(|v| v.kind != Kind::Snapshot)
                    && !self.vols.contains_key(&name);
                assert_eq!(r.is_ok(), ok, "{name}: {r:?}");
                if ok {
                    let mut v = self.vols[&base].clone();
                    v.kind = Kind::Snapshot;
                    v.base = base;
                    self.vols.insert(name, v);
                    self.flushed();
                }
            }
            Op::SnapshotPair(a, b, s) => {
                let (na, nb) = (
                    format!("{}@p{s}", slot_name(a)),
                    format!("{}@p{s}", slot_name(b)),
                );
                let r = p.snapshot_create(&[&na, &nb]);
                let ok = a != b
                    && self.vols.contains_key(&slot_name(a))
                    && self.vols.contains_key(&slot_name(b))
                    && !self.vols.contains_key(&na)
                    && !self.vols.contains_key(&nb);
                assert_eq!(r.is_ok(), ok, "{na} {nb}: {r:?}");
                if ok {
                    for (n, l) in [(na, a), (nb, b)] {
                        let mut v = self.vols[&slot_name(l)].clone();
                        v.kind = Kind::Snapshot;
                        v.base = slot_name(l);
                        self.vols.insert(n, v);
                    }
                    self.flushed();
                }
            }
            Op::Rollback(l, s) => {
                let base = slot_name(l);
                let name = format!("{base}@s{s}");
                let r = p.snapshot_rollback(&name);
                let ok = self.vols.contains_key(&name) && self.vols[&base].kind == Kind::Lu;
                assert_eq!(r.is_ok(), ok, "{name}: {r:?}");
                if let Ok((_, undo)) = r {
                    let mut u = self.vols[&base].clone();
                    u.kind = Kind::Snapshot;
                    u.base = base.clone();
                    self.vols.insert(undo, u);
                    let snap = self.vols[&name].clone();
                    let v = self.vols.get_mut(&base).unwrap();
                    v.cur = snap.cur;
                    v.blocks = snap.blocks;
                    self.flushed();
                }
            }
            Op::RemoveSnapshot(i) => {
                let snaps = self.snapshots();
                if snaps.is_empty() {
                    return;
                }
                let name = snaps[i as usize % snaps.len()].clone();
                let owned = self.owned(&name);
                let freed = p.snapshot_remove(&name).unwrap();
                assert_eq!(freed, owned, "{name}: blocks freed");
                self.vols.remove(&name);
                self.flushed();
            }
            Op::Clone(i, l) => {
                let mut srcs = self.snapshots();
                srcs.extend(
                    self.vols
                        .iter()
                        .filter(|(_, v)| v.kind == Kind::Image)
                        .map(|(n, _)| n.clone()),
                );
                if srcs.is_empty() {
                    return;
                }
                let src = srcs[i as usize % srcs.len()].clone();
                let name = slot_name(l);
                let r = p.clone_create(&src, &name);
                assert_eq!(r.is_ok(), !self.vols.contains_key(&name), "{name}: {r:?}");
                if r.is_ok() {
                    let mut v = self.vols[&src].clone();
                    v.kind = Kind::Lu;
                    v.base = String::new();
                    self.vols.insert(name, v);
                    self.flushed();
                }
            }
            Op::Capture(l, i) => {
                let src = slot_name(l);
                let img = slot_name(SLOTS + i);
                let r = p.image_capture(&src, &img, &mut |_, _| {});
                let ok = self.vols.contains_key(&src) && !self.vols.contains_key(&img);
                assert_eq!(r.is_ok(), ok, "{img}: {r:?}");
                if ok {
                    let mut v = self.vols[&src].clone();
                    v.kind = Kind::Image;
                    for b in v.cur.values_mut() {
                        self.version += 1;
                        b.1 = self.version | 1 << 62;
                    }
                    self.vols.insert(img, v);
                    self.flushed();
                }
            }
            Op::Remove(l) => {
                let name = slot_name(l);
                let has_snaps = self
                    .vols
                    .values()
                    .any(|v| v.kind == Kind::Snapshot && v.base == name);
                let Some(v) = self.vols.get(&name) else {
                    assert!(p.lu_remove(&name).is_err());
                    return;
                };
                let owned = self.owned(&name);
                let r = if v.kind == Kind::Image {
                    p.image_remove(&name)
                } else {
                    p.lu_remove(&name)
                };
                assert_eq!(r.is_ok(), !has_snaps, "{name}: {r:?}");
                if let Ok(freed) = r {
                    assert_eq!(freed, owned, "{name}: blocks freed");
                    self.vols.remove(&name);
                    self.flushed();
                }
            }
            Op::Gc => {
                p.gc(3).unwrap();
                self.flushed();
            }
            Op::Reopen => self.reopen(CrashMode::DropAll, true),
            Op::Crash(m) => {
                let mode = [
                    CrashMode::DropAll,
                    CrashMode::KeepAll,
                    CrashMode::Random,
                    CrashMode::RandomTorn,
                ][m as usize];
                self.reopen(mode, false);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, max_shrink_iters: 300, ..ProptestConfig::default() })]
    #[test]
    fn sharing_matches_model(ops in prop::collection::vec(op(), 1..100)) {
        let (dev, ctl) = FaultDev::new("model", 32 * MB);
        let pool = Pool::create(vec![Arc::new(dev)], &copts(), model_opts()).unwrap();
        let mut w = World { pool: Some(pool), ctl, vols: BTreeMap::new(), version: 0 };
        for op in &ops {
            w.step(op);
            // Sharing changes are metadata only and durable when they return: check at once.
            if !matches!(op, Op::Write(..) | Op::Trim(..) | Op::Flush | Op::Gc) {
                w.verify(true);
            }
        }
        w.verify(true);
    }
}
