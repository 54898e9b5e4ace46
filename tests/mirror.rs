//! Failure groups with the fault-injecting backend: adding the second group and resyncing,
//! losing one side mid-write-storm, resync of only what changed, scrub repairing bit rot,
//! both copies bad, a PV missing at start-up, and a crash in the middle of resync.

mod common;
use common::*;
use ssp::dev::{BlockDev, CrashMode, FaultControl, FaultDev};
use ssp::pool::{Options, Pool};
use std::sync::Arc;

const SIZE: u64 = 48 * MB;

fn opts() -> Options {
    Options {
        checkpoint_writes: 2000,
        ..small_opts()
    }
}

/// A pool on A, then a second failure group on B of the same size, fully resynced.
fn mirrored() -> (Pool, FaultControl, FaultControl) {
    let (a, ca) = FaultDev::new("A", SIZE);
    let (b, cb) = FaultDev::new("B", SIZE);
    let p = Pool::create(vec![Arc::new(a)], &copts(), opts()).unwrap();
    p.failgrp_create("fg2", vec![Arc::new(b)]).unwrap();
    p.resync_wait(&mut |_, _| {}).unwrap();
    assert_eq!(p.status().mirror_state, "SYNCED");
    (p, ca, cb)
}

fn write(p: &Pool, lu: &str, lba: u64, n: u64, version: u64) {
    let id = p.lu_id(lu).unwrap();
    let mut data = Vec::new();
    for i in 0..n {
        data.extend(pattern(lba + i, version));
    }
    p.write(id, lba * 4096, &data, false).unwrap();
}

fn expect(p: &Pool, lu: &str, lba: u64, version: u64) {
    let id = p.lu_id(lu).unwrap();
    let mut b = vec![0u8; 4096];
    p.read(id, lba * 4096, &mut b).unwrap();
    assert!(
        b == pattern(lba, version),
        "{lu} block {lba}: not version {version}"
    );
}

/// Both groups hold the same bytes for every block the pool uses.
fn assert_sides_equal(p: &Pool, ca: &FaultControl, cb: &FaultControl) {
    for lu in p.lu_list() {
        for e in p.file_layout(&lu.name).unwrap() {
            for pl in e.placement {
                let len = pl.blocks * 4096;
                assert_eq!(
                    ca.read_durable(pl.offset, len),
                    cb.read_durable(pl.offset, len),
                    "{} extent {:#x}: the failure groups differ",
                    lu.name,
                    e.start
                );
            }
        }
    }
}

#[test]
fn second_failure_group_is_resynced_then_every_write_lands_on_both() {
    let (a, ca) = FaultDev::new("A", SIZE);
    let p = Pool::create(vec![Arc::new(a)], &copts(), opts()).unwrap();
    assert_eq!(p.status().mirror_state, "NOT_MIRRORED");
    p.lu_create("vm", 16 * MB).unwrap();
    write(&p, "vm", 0, 1000, 1);
    p.flush().unwrap();
    let (b, cb) = FaultDev::new("B", SIZE);
    p.failgrp_create("fg2", vec![Arc::new(b)]).unwrap();
    let st = p.status();
    assert_eq!(st.mirror_state, "SYNCING");
    assert!(st.resync_bytes_left >= 4 * MB, "{}", st.resync_bytes_left);
    let mut steps = Vec::new();
    p.resync_wait(&mut |done, left| steps.push((done, left)))
        .unwrap();
    assert_eq!(steps.last().unwrap().1, 0);
    let st = p.status();
    assert_eq!(st.mirror_state, "SYNCED");
    assert_eq!(st.failure_groups.len(), 2);
    write(&p, "vm", 500, 300, 2);
    p.flush().unwrap();
    assert_sides_equal(&p, &ca, &cb);
    assert_check(&p);
    let pvs = p.pv_list();
    assert_eq!(pvs.len(), 2);
    assert!(pvs.iter().all(|v| v.state == "ONLINE"));
    assert_eq!(pvs[1].failure_group, "fg2");
    // A group too small for the pool is refused, with the numbers.
    let (c, _) = FaultDev::new("C", 8 * MB);
    let (a2, _) = FaultDev::new("A2", SIZE);
    let p2 = Pool::create(vec![Arc::new(a2)], &copts(), opts()).unwrap();
    let e = p2.failgrp_create("small", vec![Arc::new(c)]).unwrap_err();
    assert!(e.to_string().contains("MiB"), "{e}");
    assert!(p.failgrp_create("third", vec![]).is_err());
}

#[test]
fn one_side_dies_mid_write_storm_and_resync_copies_only_what_changed() {
    let (p, ca, cb) = mirrored();
    p.lu_create("vm", 24 * MB).unwrap();
    write(&p, "vm", 0, 4000, 1);
    p.flush().unwrap();
    p.resync_wait(&mut |_, _| {}).unwrap();
    let copied_before = p.resync_copied();
    // B stops taking writes in the middle of the storm; clients see no error.
    cb.fail_writes_after(3);
    for i in 0..200u64 {
        write(&p, "vm", (i * 7) % 4000, 1, 2 + i);
        if i % 20 == 0 {
            p.flush().unwrap();
        }
    }
    p.flush().unwrap();
    let st = p.status();
    assert_eq!(st.mirror_state, "DEGRADED", "{st:?}");
    assert!(!st.mirror_reason.is_empty());
    assert!(p.pv_list().iter().any(|v| v.state == "FAILED"));
    for i in 0..200u64 {
        let lba = (i * 7) % 4000;
        // The last version written to each block (blocks are revisited: 200*7 > 4000 is not
        // reached, so each is written once).
        expect(&p, "vm", lba, 2 + i);
    }
    // B comes back: only the segments written meanwhile are copied.
    cb.heal();
    let copied = p.resync_wait(&mut |_, _| {}).unwrap();
    let st = p.status();
    assert_eq!(st.mirror_state, "SYNCED", "{st:?}");
    assert!(copied > 0);
    assert!(
        copied <= 8 * MB,
        "resync copied {copied} bytes for ~1 MiB of changes (the pool holds 16 MiB)"
    );
    assert_eq!(p.resync_copied() - copied_before, copied);
    assert_sides_equal(&p, &ca, &cb);
    assert_check(&p);
}

#[test]
fn scrub_finds_and_repairs_bit_rot_on_one_side() {
    let (p, ca, cb) = mirrored();
    p.lu_create("vm", 8 * MB).unwrap();
    write(&p, "vm", 0, 512, 1);
    p.flush().unwrap();
    p.checkpoint().unwrap();
    let layout = p.file_layout("vm").unwrap();
    let base = layout[0].placement[0].offset;
    // Rot 5 data blocks on B.
    for k in [3u64, 17, 40, 41, 200] {
        cb.corrupt(base + k * 4096 + 100, 8);
    }
    let rep = p.scrub().unwrap();
    assert_eq!(rep.errors_found, 5, "{rep:?}");
    assert_eq!(rep.errors_repaired, 5);
    assert_eq!(rep.unrepairable, 0);
    assert_eq!(p.scrub().unwrap().errors_found, 0);
    assert_sides_equal(&p, &ca, &cb);
    // Reads during damage return the right data and repair on the spot.
    cb.corrupt(base + 7 * 4096, 4096);
    ca.corrupt(base + 9 * 4096, 4096);
    for lba in 0..16 {
        // Consecutive reads alternate between the copies, so both sides are read.
        expect(&p, "vm", lba, 1);
        expect(&p, "vm", lba, 1);
    }
    let st = p.status();
    assert!(
        st.scrub_errors_found >= 7 && st.scrub_errors_repaired >= 7,
        "{st:?}"
    );
    assert_eq!(p.scrub().unwrap().errors_found, 0);
    assert_check(&p);
}

#[test]
fn a_block_bad_on_both_sides_is_an_error_for_that_block_only() {
    let (p, ca, cb) = mirrored();
    p.lu_create("vm", 8 * MB).unwrap();
    write(&p, "vm", 0, 64, 1);
    p.flush().unwrap();
    let base = p.file_layout("vm").unwrap()[0].placement[0].offset;
    ca.corrupt(base + 10 * 4096, 16);
    cb.corrupt(base + 10 * 4096, 16);
    let id = p.lu_id("vm").unwrap();
    let mut b = vec![0u8; 4096];
    let e = p.read(id, 10 * 4096, &mut b).unwrap_err();
    assert_eq!(e.errno(), libc::EIO);
    assert!(e.to_string().contains("offset"), "{e}");
    for lba in (0..64).filter(|&l| l != 10) {
        expect(&p, "vm", lba, 1);
    }
    let rep = p.scrub().unwrap();
    assert_eq!(rep.unrepairable, 1, "{rep:?}");
    assert!(rep.errors[0].contains("offset"), "{:?}", rep.errors);
}

#[test]
fn a_missing_pv_opens_degraded_and_resyncs_when_back() {
    let (p, ca, cb) = mirrored();
    p.lu_create("vm", 8 * MB).unwrap();
    write(&p, "vm", 0, 256, 1);
    p.close().unwrap();
    let img_a = ca.crash_image(CrashMode::DropAll, 0);
    let img_b = cb.crash_image(CrashMode::DropAll, 0);
    // Start without B.
    let (a, ca) = FaultDev::from_image("A", img_a);
    let missing: Arc<dyn BlockDev> = Arc::new(ssp::pool::pvs::MissingDev {
        name: "B".into(),
        len: 0,
    });
    let p = Pool::open(vec![Arc::new(a), missing], opts()).unwrap();
    let st = p.status();
    assert_eq!(st.mirror_state, "DEGRADED");
    assert!(
        p.pv_list().iter().any(|v| v.state == "MISSING"),
        "{:?}",
        p.pv_list()
    );
    expect(&p, "vm", 100, 1);
    write(&p, "vm", 100, 10, 2);
    p.close().unwrap();
    // B is back (with its old content): it rejoins and gets only what changed.
    let (a, ca2) = FaultDev::from_image("A", ca.crash_image(CrashMode::DropAll, 0));
    let (b, cb2) = FaultDev::from_image("B", img_b);
    let p = Pool::open(vec![Arc::new(a), Arc::new(b)], opts()).unwrap();
    let copied = p.resync_wait(&mut |_, _| {}).unwrap();
    assert_eq!(p.status().mirror_state, "SYNCED");
    assert!(copied > 0 && copied <= 4 * MB, "{copied}");
    expect(&p, "vm", 105, 2);
    expect(&p, "vm", 200, 1);
    assert_sides_equal(&p, &ca2, &cb2);
    assert_check(&p);
}

#[test]
fn a_crash_in_the_middle_of_resync_resumes_after_restart() {
    let (a, ca) = FaultDev::new("A", SIZE);
    let p = Pool::create(vec![Arc::new(a)], &copts(), opts()).unwrap();
    p.lu_create("vm", 24 * MB).unwrap();
    write(&p, "vm", 0, 3000, 1);
    p.flush().unwrap();
    let (b, cb) = FaultDev::new("B", SIZE);
    p.failgrp_create("fg2", vec![Arc::new(b)]).unwrap();
    p.resync_step(3).unwrap();
    let left = p.resync_left();
    assert!(left > 0);
    for mode in [CrashMode::DropAll, CrashMode::KeepAll] {
        let (a, ca2) = FaultDev::from_image("A", ca.crash_image(mode, 1));
        let (b, cb2) = FaultDev::from_image("B", cb.crash_image(mode, 1));
        let p2 = Pool::open(vec![Arc::new(a), Arc::new(b)], opts()).unwrap();
        assert_eq!(p2.status().mirror_state, "SYNCING");
        assert!(p2.resync_left() <= left + 3 * MB);
        p2.resync_wait(&mut |_, _| {}).unwrap();
        assert_eq!(p2.status().mirror_state, "SYNCED");
        for lba in (0..3000).step_by(97) {
            expect(&p2, "vm", lba, 1);
        }
        assert_sides_equal(&p2, &ca2, &cb2);
        assert_check(&p2);
    }
    drop(p);
}

#[test]
fn pv_add_grows_the_pool_and_pv_replace_swaps_a_pv_online() {
    // Single copy: grow, then replace the first PV by copying it.
    let (a, _ca) = FaultDev::new("A", 32 * MB);
    let p = Pool::create(vec![Arc::new(a)], &copts(), opts()).unwrap();
    let before = p.status().total_bytes;
    p.lu_create("vm", 48 * MB).unwrap();
    write(&p, "vm", 0, 2000, 1);
    let (c, cc) = FaultDev::new("C", 32 * MB);
    let grown = p.pv_add("Default", vec![Arc::new(c)]).unwrap();
    assert!(grown >= 24 * MB, "{grown}");
    assert_eq!(p.status().total_bytes, before + grown);
    write(&p, "vm", 2000, 6000, 2); // needs the new space
    let (small, _) = FaultDev::new("S", 16 * MB);
    let e = p
        .pv_replace("A", Arc::new(small), &mut |_, _| {}, &mut || Ok(()))
        .unwrap_err();
    assert!(e.to_string().contains("at least as large"), "{e}");
    let (a2, ca2) = FaultDev::new("A2", 40 * MB);
    let mut seen = 0;
    let mut committed = false;
    p.pv_replace("A", Arc::new(a2), &mut |d, _| seen = d, &mut || {
        committed = true;
        Ok(())
    })
    .unwrap();
    assert!(committed && seen > 0);
    assert_eq!(p.pv_list()[0].name, "A2");
    expect(&p, "vm", 10, 1);
    expect(&p, "vm", 5000, 2);
    assert_check(&p);
    p.close().unwrap();
    // The pool opens from the new PV (and the added one).
    let (a2, _) = FaultDev::from_image("A2", ca2.crash_image(CrashMode::DropAll, 0));
    let (c, _) = FaultDev::from_image("C", cc.crash_image(CrashMode::DropAll, 0));
    let p = Pool::open(vec![Arc::new(a2), Arc::new(c)], opts()).unwrap();
    expect(&p, "vm", 10, 1);
    expect(&p, "vm", 7000, 2);
    assert_check(&p);
    drop(p);

    // Mirrored: the replacement is filled by resync from the other group.
    let (p, ca, _cb) = mirrored();
    p.lu_create("vm", 16 * MB).unwrap();
    write(&p, "vm", 0, 1500, 3);
    p.flush().unwrap();
    let (b2, cb2) = FaultDev::new("B2", SIZE);
    p.pv_replace("B", Arc::new(b2), &mut |_, _| {}, &mut || Ok(()))
        .unwrap();
    assert_eq!(p.status().mirror_state, "SYNCING");
    p.resync_wait(&mut |_, _| {}).unwrap();
    assert_eq!(p.status().mirror_state, "SYNCED");
    expect(&p, "vm", 700, 3);
    assert_sides_equal(&p, &ca, &cb2);
    assert_check(&p);
}

#[test]
fn failgrp_remove_goes_back_to_one_copy() {
    let (p, ca, _cb) = mirrored();
    p.lu_create("vm", 8 * MB).unwrap();
    write(&p, "vm", 0, 300, 1);
    let removed = p.failgrp_remove("fg2").unwrap();
    assert_eq!(removed, vec!["B".to_string()]);
    assert_eq!(p.status().mirror_state, "NOT_MIRRORED");
    write(&p, "vm", 300, 10, 2);
    p.close().unwrap();
    let (a, _) = FaultDev::from_image("A", ca.crash_image(CrashMode::DropAll, 0));
    let p = Pool::open(vec![Arc::new(a)], opts()).unwrap();
    expect(&p, "vm", 5, 1);
    expect(&p, "vm", 305, 2);
    assert_eq!(p.status().mirror_state, "NOT_MIRRORED");
    assert_check(&p);
    assert!(p.failgrp_remove("Default").is_err());
}

#[test]
fn an_lus_extents_spread_over_the_pvs_of_a_group() {
    let devs: Vec<Arc<dyn BlockDev>> = vec![
        Arc::new(FaultDev::new("P0", 32 * MB).0),
        Arc::new(FaultDev::new("P1", 16 * MB).0),
    ];
    let p = Pool::create(devs, &copts(), opts()).unwrap();
    p.lu_create("vm", 64 * MB).unwrap();
    write(&p, "vm", 0, 2048, 1);
    p.flush().unwrap();
    let layout = p.file_layout("vm").unwrap();
    let on = |pv: &str| {
        layout
            .iter()
            .filter(|e| e.placement.iter().any(|pl| pl.pv == pv))
            .count()
    };
    assert!(on("P0") >= 3 && on("P1") >= 3, "{layout:?}");
    // Unequal sizes are used fully: fill the pool until ENOSPC, both PVs end up full.
    let id = p.lu_id("vm").unwrap();
    let mut lba = 2048;
    while lba < 16384 && p.write(id, lba * 4096, &pattern(lba, 1), false).is_ok() {
        lba += 1;
    }
    // What stays free is the reserve (9 segments here: a checkpoint and a cleaning round);
    // a PV left unused would leave its 16 MiB free on top.
    assert!(
        p.status().free_bytes < 12 * MB,
        "{:?}",
        p.status().free_bytes
    );
    assert_check(&p);
}

/// Power cuts at random points of a mirrored pool's life, one side failing on the way: after
/// each restart every flushed write is present, resync brings the sides back together and
/// `check` passes.
#[test]
fn power_cuts_with_one_side_failing_lose_no_flushed_write() {
    use rand::{Rng, SeedableRng};
    for seed in 0..12u64 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let (p, ca, cb) = mirrored();
        p.lu_create("vm", 16 * MB).unwrap();
        let mut flushed: std::collections::BTreeMap<u64, u64> = Default::default();
        let mut pending: std::collections::BTreeMap<u64, u64> = Default::default();
        let fail_at = rng.gen_range(0..300u64);
        let steps = rng.gen_range(100..400u64);
        for i in 0..steps {
            if i == fail_at {
                if rng.gen_bool(0.5) {
                    cb.fail_writes_after(rng.gen_range(0..5));
                } else {
                    ca.fail_writes_after(rng.gen_range(0..5));
                }
            }
            let lba = rng.gen_range(0..4096u64);
            let v = seed * 100_000 + i + 1;
            write(&p, "vm", lba, 1, v);
            pending.insert(lba, v);
            if rng.gen_ratio(1, 15) {
                p.flush().unwrap();
                flushed.append(&mut pending);
            }
        }
        let mode =
            [CrashMode::DropAll, CrashMode::Random, CrashMode::RandomTorn][seed as usize % 3];
        let (ia, ib) = (ca.crash_image(mode, seed), cb.crash_image(mode, seed + 1));
        drop(p);
        let (a, ca2) = FaultDev::from_image("A", ia);
        let (b, cb2) = FaultDev::from_image("B", ib);
        let p = Pool::open(vec![Arc::new(a), Arc::new(b)], opts())
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        p.resync_wait(&mut |_, _| {}).unwrap();
        assert_eq!(p.status().mirror_state, "SYNCED", "seed {seed}");
        let id = p.lu_id("vm").unwrap();
        let mut buf = vec![0u8; 4096];
        for (&lba, &v) in &flushed {
            if pending.contains_key(&lba) {
                continue; // a later, unflushed write may or may not have landed
            }
            p.read(id, lba * 4096, &mut buf).unwrap();
            assert!(
                buf == pattern(lba, v),
                "seed {seed}: block {lba} lost version {v}"
            );
        }
        assert_sides_equal(&p, &ca2, &cb2);
        assert_check(&p);
    }
}
