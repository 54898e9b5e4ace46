//! Superblock rewrites survive a crash at every sync point (FORMAT.md §5.6): `failgrp create`,
//! `failgrp remove` and `pv add` run on fault-injecting PVs; just before every sync the test
//! takes the images a power cut would leave (unsynced writes dropped, kept, randomly torn, and
//! every pending superblock copy torn) and opens the pool from them: it
//! must open, pass `check` and read back the data written before.

mod common;
use common::*;
use ssp::dev::{BlockDev, CrashMode, FaultControl, FaultDev};
use ssp::pool::{Options, Pool};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

const SIZE: u64 = 16 * MB;
const SB_BLOCKS: [u64; 2] = [0, 4096];
const TEAR: usize = 24;
const LBAS: u64 = 64;

fn opts() -> Options {
    Options {
        checkpoint_writes: 2000,
        ..small_opts()
    }
}

/// Every PV of the test, and what went wrong at the crash points.
#[derive(Default)]
struct Crashes {
    armed: AtomicBool,
    ctls: Mutex<Vec<(String, FaultControl)>>,
    points: Mutex<u64>,
    failures: Mutex<Vec<String>>,
}

/// A fault-injecting PV that lets the test crash the whole set of PVs before each sync.
struct Hooked {
    dev: FaultDev,
    crashes: Arc<Crashes>,
}

impl BlockDev for Hooked {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.dev.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.dev.write_at(buf, offset)
    }
    fn sync(&self) -> std::io::Result<()> {
        if self.crashes.armed.load(Ordering::SeqCst) {
            self.crashes.crash_here(self.dev.name());
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

/// `base`, except that every superblock copy with a pending change is torn inside its first
/// sector, the one that holds every field (FORMAT.md §5.1 does not assume sector-atomic
/// writes): its first `TEAR` bytes (magic, version, crc, incompat) landed, the rest did not.
fn torn_superblocks(base: &[u8], kept: &[u8]) -> Vec<u8> {
    let mut img = base.to_vec();
    for off in SB_BLOCKS {
        let r = off as usize..off as usize + 4096;
        if base[r.clone()] != kept[r.clone()] {
            img[r.start..r.start + TEAR].copy_from_slice(&kept[r.start..r.start + TEAR]);
        }
    }
    img
}

impl Crashes {
    fn add(self: &Arc<Self>, name: &str) -> Arc<dyn BlockDev> {
        let (dev, ctl) = FaultDev::new(name, SIZE);
        self.ctls.lock().unwrap().push((name.to_owned(), ctl));
        Arc::new(Hooked {
            dev,
            crashes: self.clone(),
        })
    }

    /// Power fails now, before `syncing` syncs: every image a restart could see must open.
    fn crash_here(&self, syncing: &str) {
        let point = {
            let mut p = self.points.lock().unwrap();
            *p += 1;
            *p
        };
        let ctls = self.ctls.lock().unwrap().clone();
        let mut cases: Vec<(String, Vec<Vec<u8>>)> = Vec::new();
        let drop: Vec<Vec<u8>> = ctls
            .iter()
            .map(|(_, c)| c.crash_image(CrashMode::DropAll, 0))
            .collect();
        let keep: Vec<Vec<u8>> = ctls
            .iter()
            .map(|(_, c)| c.crash_image(CrashMode::KeepAll, 0))
            .collect();
        let torn = |base: &[Vec<u8>]| -> Vec<Vec<u8>> {
            base.iter()
                .zip(&keep)
                .map(|(b, k)| torn_superblocks(b, k))
                .collect()
        };
        cases.push(("torn superblocks, rest dropped".into(), torn(&drop)));
        cases.push(("torn superblocks, rest kept".into(), torn(&keep)));
        cases.push(("all dropped".into(), drop));
        cases.push(("all kept".into(), keep));
        for seed in 0..2 {
            let imgs = ctls
                .iter()
                .map(|(_, c)| c.crash_image(CrashMode::RandomTorn, point * 7 + seed))
                .collect();
            cases.push((format!("random torn, seed {seed}"), imgs));
        }
        for (what, imgs) in cases {
            let devs: Vec<Arc<dyn BlockDev>> = ctls
                .iter()
                .zip(imgs)
                .map(|((name, _), img)| {
                    Arc::new(FaultDev::from_image(name, img).0) as Arc<dyn BlockDev>
                })
                .collect();
            if let Err(e) = reopen(devs) {
                self.failures.lock().unwrap().push(format!(
                    "crash before sync {point} (of {syncing}), {what}: {e}"
                ));
            }
        }
    }
}

/// Open the crashed PVs, check the pool and the data written before the operation.
fn reopen(devs: Vec<Arc<dyn BlockDev>>) -> Result<(), String> {
    let p = Pool::open(devs, opts()).map_err(|e| format!("open: {e}"))?;
    let rep = p.check().map_err(|e| format!("check: {e}"))?;
    if !rep.ok() {
        return Err(format!("check: {:?}", rep.errors));
    }
    let id = p.lu_id("vm").map_err(|e| e.to_string())?;
    let mut b = vec![0u8; 4096];
    for lba in 0..LBAS {
        p.read(id, lba * 4096, &mut b).map_err(|e| e.to_string())?;
        if b != pattern(lba, 1) {
            return Err(format!("block {lba} lost its data"));
        }
    }
    p.close().map_err(|e| format!("close: {e}"))
}

/// A pool on A with an LU holding `LBAS` flushed blocks.
fn pool_on(crashes: &Arc<Crashes>) -> Pool {
    let a = crashes.add("A");
    let p = Pool::create(vec![a], &copts(), opts()).unwrap();
    let id = p.lu_create("vm", 4 * MB).unwrap().id;
    let mut data = Vec::new();
    for lba in 0..LBAS {
        data.extend(pattern(lba, 1));
    }
    p.write(id, 0, &data, true).unwrap();
    p
}

fn run(crashes: &Arc<Crashes>, op: impl FnOnce()) {
    crashes.armed.store(true, Ordering::SeqCst);
    op();
    crashes.armed.store(false, Ordering::SeqCst);
    let points = *crashes.points.lock().unwrap();
    assert!(points >= 3, "only {points} sync points were crashed");
    let failures = crashes.failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} of {points} crash points left a pool that does not open:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn failgrp_create_survives_a_crash_at_every_sync() {
    let crashes = Arc::new(Crashes::default());
    let p = pool_on(&crashes);
    let b = crashes.add("B");
    run(&crashes, || p.failgrp_create("fg2", vec![b]).unwrap());
    assert_eq!(p.failgrp_list().len(), 2);
}

#[test]
fn failgrp_remove_survives_a_crash_at_every_sync() {
    let crashes = Arc::new(Crashes::default());
    let p = pool_on(&crashes);
    p.failgrp_create("fg2", vec![crashes.add("B")]).unwrap();
    p.resync_wait(&mut |_, _| {}).unwrap();
    run(&crashes, || {
        p.failgrp_remove("fg2").unwrap();
    });
    assert_eq!(p.failgrp_list().len(), 1);
}

#[test]
fn pv_add_survives_a_crash_at_every_sync() {
    let crashes = Arc::new(Crashes::default());
    let p = pool_on(&crashes);
    let c = crashes.add("C");
    run(&crashes, || {
        p.pv_add("Default", vec![c]).unwrap();
    });
    assert_eq!(p.pv_list().len(), 2);
}
