//! Snapshots, rollback, client images and linked clones through the `Pool` API, with the
//! exact owned/shared numbers a user would expect at each step.

mod common;
use common::*;
use ssp::pool::{Options, Pool, PoolError};

fn write_blocks(p: &Pool, name: &str, lbas: std::ops::Range<u64>, version: u64) {
    let id = p.lu_id(name).unwrap();
    for lba in lbas {
        p.write(id, lba * 4096, &pattern(lba, version), false)
            .unwrap();
    }
}

fn read_block(p: &Pool, name: &str, lba: u64) -> Vec<u8> {
    let id = p.lu_id(name).unwrap();
    let mut b = vec![0u8; 4096];
    p.read(id, lba * 4096, &mut b).unwrap();
    b
}

fn owned(p: &Pool, name: &str) -> (u64, u64) {
    let s = p.file_stat(name).unwrap();
    (s.owned_blocks, s.shared_blocks)
}

#[test]
fn owned_and_shared_blocks_follow_snapshots_clones_and_removals() {
    let (p, _) = mem_pool(64 * MB, small_opts());
    p.lu_create("a", 4 * MB).unwrap();
    write_blocks(&p, "a", 0..100, 1);
    assert_eq!(owned(&p, "a"), (100, 0));

    p.snapshot_create(&["a@s1"]).unwrap();
    assert_eq!(owned(&p, "a"), (0, 100));
    assert_eq!(owned(&p, "a@s1"), (0, 100));

    // Overwriting 10 blocks: the LU owns the new ones, the snapshot alone keeps the old ones.
    write_blocks(&p, "a", 0..10, 2);
    assert_eq!(owned(&p, "a"), (10, 90));
    assert_eq!(owned(&p, "a@s1"), (10, 90));

    let c = p.clone_create("a@s1", "c1").unwrap();
    assert_eq!(c.kind, "clone");
    assert_eq!(c.parent, "a@s1");
    assert_eq!(owned(&p, "a@s1"), (0, 100));
    assert_eq!(owned(&p, "c1"), (0, 100));
    write_blocks(&p, "c1", 50..55, 3);
    assert_eq!(owned(&p, "c1"), (5, 95));

    // The clone reads the snapshot's data where it has not written.
    assert_eq!(read_block(&p, "c1", 0), pattern(0, 1));
    assert_eq!(read_block(&p, "c1", 50), pattern(50, 3));
    assert_eq!(read_block(&p, "a", 0), pattern(0, 2));

    // Removing the snapshot the clone came from: the clone keeps working, and the blocks now
    // held by one volume only are credited to it at once.
    let freed = p.snapshot_remove("a@s1").unwrap();
    assert_eq!(freed, 0);
    assert_eq!(owned(&p, "c1"), (15, 85));
    assert_eq!(owned(&p, "a"), (15, 85));
    assert_eq!(read_block(&p, "c1", 3), pattern(3, 1));
    assert_check(&p);

    // Removing the LU frees exactly what it alone held and gives the rest to the clone.
    let before = p.status().used_bytes;
    assert_eq!(p.lu_remove("a").unwrap(), 15);
    assert_eq!(owned(&p, "c1"), (100, 0));
    assert!(p.status().used_bytes <= before);
    assert_check(&p);
}

#[test]
fn rollback_to_any_snapshot_keeps_the_others_and_an_undo_point() {
    let (p, _) = mem_pool(64 * MB, small_opts());
    p.lu_create("vm", 2 * MB).unwrap();
    write_blocks(&p, "vm", 0..8, 1);
    p.snapshot_create(&["vm@one"]).unwrap();
    write_blocks(&p, "vm", 0..8, 2);
    p.snapshot_create(&["vm@two"]).unwrap();
    write_blocks(&p, "vm", 0..8, 3);

    let (info, undo) = p.snapshot_rollback("vm@one").unwrap();
    assert_eq!(info.name, "vm");
    assert!(undo.starts_with("vm@undo-"), "{undo}");
    assert_eq!(read_block(&p, "vm", 4), pattern(4, 1));
    assert_eq!(read_block(&p, &undo, 4), pattern(4, 3));
    // Roll forward to the later snapshot, then back to the undo point.
    p.snapshot_rollback("vm@two").unwrap();
    assert_eq!(read_block(&p, "vm", 4), pattern(4, 2));
    p.snapshot_rollback(&undo).unwrap();
    assert_eq!(read_block(&p, "vm", 4), pattern(4, 3));
    let names: Vec<String> = p
        .snapshot_list(Some("vm"))
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert!(names.contains(&"vm@one".to_string()) && names.contains(&"vm@two".to_string()));
    assert_eq!(names.len(), 5, "{names:?}");
    assert_check(&p);
    // Snapshots are read-only.
    let sid = p.lu_id("vm@one").unwrap();
    assert!(matches!(
        p.write(sid, 0, &[1u8; 4096], false),
        Err(PoolError::VolumeReadOnly(_))
    ));
    assert!(p.trim(sid, 0, 4096).is_err());
    assert!(p.lu_resize("vm@one", 4 * MB).is_err());
    // An LU with snapshots is not removed behind the user's back.
    assert!(matches!(p.lu_remove("vm"), Err(PoolError::InUse(_))));
}

#[test]
fn consistent_multi_lu_snapshot_and_name_checks() {
    let (p, _) = mem_pool(64 * MB, small_opts());
    p.lu_create("a", MB).unwrap();
    p.lu_create("b", MB).unwrap();
    write_blocks(&p, "a", 0..4, 1);
    write_blocks(&p, "b", 0..4, 1);
    let made = p.snapshot_create(&["a@x", "b@x"]).unwrap();
    assert_eq!(made.len(), 2);
    assert!(made.iter().all(|s| s.kind == "snapshot"));
    // All or nothing: one bad name and neither is made.
    assert!(p.snapshot_create(&["a@y", "nosuch@y"]).is_err());
    assert!(p.lu_get("a@y").is_err());
    assert!(p.snapshot_create(&["a@x"]).is_err());
    for bad in ["a", "a@", "@x", "a@b@c", "a@ x"] {
        assert!(p.snapshot_create(&[bad]).is_err(), "{bad}");
    }
    // Clones come from snapshots or images, never from a writable LU.
    assert!(p.clone_create("a", "c").is_err());
    assert!(p.clone_create("a@x", "b").is_err());
    assert!(p.lu_create(".hidden", MB).is_err());
}

#[test]
fn image_capture_copies_and_clones_of_clones_share_to_any_depth() {
    let (p, _) = mem_pool(96 * MB, small_opts());
    p.lu_create("golden", 4 * MB).unwrap();
    write_blocks(&p, "golden", 0..64, 1);
    write_blocks(&p, "golden", 500..510, 1);
    let mut seen = Vec::new();
    let img = p
        .image_capture("golden", "img", &mut |d, t| seen.push((d, t)))
        .unwrap();
    assert_eq!(img.kind, "image");
    assert_eq!(seen.last(), Some(&(74, 74)));
    // A real copy: the image owns its blocks, the LU still owns its own.
    assert_eq!(owned(&p, "img"), (74, 0));
    assert_eq!(owned(&p, "golden"), (74, 0));
    assert_eq!(p.image_list().len(), 1);
    let iid = p.lu_id("img").unwrap();
    assert!(p.write(iid, 0, &[0u8; 4096], false).is_err());

    p.snapshot_create(&["img@snap"]).unwrap();
    let mut parent = "img@snap".to_string();
    for depth in 1..=16 {
        let name = format!("c{depth}");
        p.clone_create(&parent, &name).unwrap();
        write_blocks(&p, &name, depth..depth + 1, 100 + depth);
        let snap = format!("{name}@s");
        p.snapshot_create(&[&snap]).unwrap();
        parent = snap;
    }
    // The deepest clone sees every ancestor's write and the image below.
    for depth in 1..=16u64 {
        assert_eq!(read_block(&p, "c16", depth), pattern(depth, 100 + depth));
    }
    assert_eq!(read_block(&p, "c16", 40), pattern(40, 1));
    assert_eq!(read_block(&p, "c16", 505), pattern(505, 1));
    assert_check(&p);

    // Diff between a clone's snapshot and the image snapshot: exactly the blocks written.
    let d = p.diff("img@snap", "c3@s").unwrap();
    let blocks: Vec<u64> = d
        .iter()
        .flat_map(|e| (e.offset / 4096)..((e.offset + e.length) / 4096))
        .collect();
    assert_eq!(blocks, vec![1, 2, 3]);
    assert!(p.diff("img@snap", "golden").is_err());

    // Layout: every extent of the deepest clone with data is listed; the one it wrote (its
    // snapshot removed) is mixed.
    p.snapshot_remove("c16@s").unwrap();
    let layout = p.file_layout("c16").unwrap();
    assert_eq!(layout[0].start, 0);
    assert_eq!(layout[0].state, "mixed");
    assert_eq!(layout[0].owned_blocks, 1);
    assert!(layout.iter().all(|e| !e.placement.is_empty()));
    let last = layout.last().unwrap();
    assert_eq!((last.start, last.state.as_str()), (MB, "shared"));

    // Image remove refuses while it has snapshots, then works; clones keep their data.
    assert!(p.image_remove("img").is_err());
    p.snapshot_remove("img@snap").unwrap();
    p.image_remove("img").unwrap();
    assert_eq!(read_block(&p, "c1", 40), pattern(40, 1));
    assert_check(&p);
}

#[test]
fn clone_is_refused_with_numbers_when_the_pool_cannot_let_it_diverge() {
    let (p, _) = mem_pool(24 * MB, Options::default());
    p.lu_create("big", 64 * MB).unwrap();
    p.snapshot_create(&["big@s"]).unwrap();
    let id = p.lu_id("big").unwrap();
    let chunk = vec![7u8; 1 << 20];
    let mut off = 0;
    while p.write(id, off, &chunk, false).is_ok() {
        off += chunk.len() as u64;
    }
    match p.clone_create("big@s", "c") {
        Err(PoolError::NoSpace(m)) => assert!(m.contains("MiB free"), "{m}"),
        other => panic!("expected a clear refusal, got {other:?}"),
    }
}

#[test]
fn capture_cut_short_leaves_nothing_and_sharing_survives_reopen() {
    let (dev, ctl) = ssp::dev::FaultDev::new("f", 64 * MB);
    let p = Pool::create(vec![std::sync::Arc::new(dev)], &copts(), small_opts()).unwrap();
    p.lu_create("a", 4 * MB).unwrap();
    write_blocks(&p, "a", 0..300, 1);
    p.snapshot_create(&["a@s"]).unwrap();
    p.clone_create("a@s", "c").unwrap();
    write_blocks(&p, "c", 0..7, 2);
    p.flush().unwrap();
    // Start a capture and cut the power in the middle of it.
    let mut calls = 0;
    let img = std::cell::RefCell::new(None);
    let _ = p.image_capture("a", "img", &mut |_, _| {
        calls += 1;
        if calls == 1 {
            img.replace(Some(ctl.crash_image(ssp::dev::CrashMode::KeepAll, 1)));
        }
    });
    drop(p);
    let (dev, _) = ssp::dev::FaultDev::from_image("f", img.take().unwrap());
    let p = Pool::open(vec![std::sync::Arc::new(dev)], small_opts()).unwrap();
    assert!(p.image_list().is_empty());
    assert!(p.lu_get(".capture-img").is_err());
    assert_eq!(owned(&p, "c"), (7, 293));
    assert_eq!(owned(&p, "a"), (0, 300));
    assert_eq!(read_block(&p, "c", 100), pattern(100, 1));
    assert_check(&p);
}
