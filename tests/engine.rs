//! Engine behaviour through the public `Pool` API on in-memory and file devices.

mod common;
use common::*;
use ssp::dev::{BlockDev, FaultDev};
use ssp::pool::{Options, Pool, PoolError};
use std::sync::Arc;

#[test]
fn write_read_reopen() {
    let (pool, dev) = mem_pool(64 * MB, small_opts());
    let lu = pool.lu_create("vm1", 16 * MB).unwrap();
    assert_eq!(lu.udid.len(), 32);
    for lba in 0..100 {
        pool.write(lu.id, lba * 4096, &pattern(lba, 1), false)
            .unwrap();
    }
    let mut buf = vec![0u8; 4096];
    pool.read(lu.id, 5 * 4096, &mut buf).unwrap();
    assert_eq!(buf, pattern(5, 1));
    pool.flush().unwrap();
    assert_check(&pool);
    pool.close().unwrap();
    let pool = Pool::open(vec![dev], small_opts()).unwrap();
    for lba in 0..100 {
        pool.read(lu.id, lba * 4096, &mut buf).unwrap();
        assert_eq!(buf, pattern(lba, 1), "lba {lba}");
    }
    pool.read(lu.id, 200 * 4096, &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0));
    assert_check(&pool);
}

#[test]
fn unaligned_io_and_zeroes() {
    let (pool, _) = mem_pool(64 * MB, small_opts());
    let id = pool.lu_create("a", MB).unwrap().id;
    let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    pool.write(id, 1234, &data, true).unwrap();
    let mut back = vec![0u8; data.len()];
    pool.read(id, 1234, &mut back).unwrap();
    assert_eq!(back, data);
    pool.write_zeroes(id, 2000, 5000, false).unwrap();
    let mut all = vec![0u8; 16384];
    pool.read(id, 0, &mut all).unwrap();
    for (i, &b) in all.iter().enumerate() {
        let want = if (1234..11234).contains(&i) && !(2000..7000).contains(&i) {
            ((i - 1234) % 251) as u8
        } else {
            0
        };
        assert_eq!(b, want, "byte {i}");
    }
    assert_check(&pool);
}

#[test]
fn trim_and_remove_return_space() {
    let (pool, _) = mem_pool(64 * MB, small_opts());
    let id = pool.lu_create("a", 8 * MB).unwrap().id;
    let data = vec![7u8; 4 * MB as usize];
    pool.write(id, 0, &data, true).unwrap();
    let info = pool.lu_get("a").unwrap();
    assert_eq!(info.mapped_blocks, 1024);
    assert_eq!(info.unused_mb, 4);
    pool.trim(id, 0, 2 * MB).unwrap();
    assert_eq!(pool.lu_get("a").unwrap().mapped_blocks, 512);
    let ext = pool.extents(id, 0, 8 * MB).unwrap();
    assert_eq!(
        ext,
        vec![
            (0, 2 * MB, false),
            (2 * MB, 2 * MB, true),
            (4 * MB, 4 * MB, false)
        ]
    );
    let used_before = pool.status().used_bytes;
    pool.lu_remove("a").unwrap();
    pool.checkpoint().unwrap();
    let st = pool.status();
    assert!(
        st.used_bytes < used_before - 2 * MB,
        "{} vs {}",
        st.used_bytes,
        used_before
    );
    assert!(matches!(pool.lu_id("a"), Err(PoolError::NotFound(_))));
    assert_check(&pool);
}

#[test]
fn bad_arguments_are_refused() {
    let (pool, _) = mem_pool(64 * MB, small_opts());
    let id = pool.lu_create("a", MB).unwrap().id;
    assert!(matches!(pool.lu_create("a", MB), Err(PoolError::Exists(_))));
    assert!(matches!(
        pool.lu_create("b@c", MB),
        Err(PoolError::Invalid(_))
    ));
    assert!(matches!(pool.lu_create("b", 0), Err(PoolError::Invalid(_))));
    assert!(matches!(
        pool.write(id, MB - 10, &[1u8; 20], false),
        Err(PoolError::Invalid(_))
    ));
    let mut b = [0u8; 10];
    assert!(pool.read(id, u64::MAX - 5, &mut b).is_err());
    assert!(matches!(
        pool.lu_resize("nope", MB),
        Err(PoolError::NotFound(_))
    ));
}

#[test]
fn resize_shrinks_and_grows() {
    let (pool, _) = mem_pool(64 * MB, small_opts());
    let id = pool.lu_create("a", 4 * MB).unwrap().id;
    pool.write(id, 0, &vec![9u8; 4 * MB as usize], false)
        .unwrap();
    pool.lu_resize("a", 2 * MB).unwrap();
    assert_eq!(pool.lu_get("a").unwrap().mapped_blocks, 512);
    // Grow far enough to need a deeper map tree.
    pool.lu_resize("a", 4 << 30).unwrap();
    let mut b = vec![0u8; 4096];
    pool.read(id, 3 * MB, &mut b).unwrap();
    assert!(b.iter().all(|&x| x == 0), "shrunk tail must not come back");
    pool.write(id, (4 << 30) - 4096, &pattern(1, 1), false)
        .unwrap();
    pool.read(id, MB, &mut b).unwrap();
    assert_eq!(b, vec![9u8; 4096]);
    assert_check(&pool);
}

#[test]
fn full_pool_gives_enospc_and_keeps_data() {
    let (pool, _) = mem_pool(24 * MB, small_opts());
    let id = pool.lu_create("big", 64 * MB).unwrap().id;
    let mut written = 0u64;
    let err = loop {
        match pool.write(id, written * 4096, &pattern(written, 0), false) {
            Ok(()) => written += 1,
            Err(e) => break e,
        }
        assert!(written < 16384, "a 24 MiB pool cannot hold 64 MiB");
    };
    assert!(matches!(err, PoolError::NoSpace(_)), "{err}");
    assert_eq!(err.errno(), libc_enospc());
    let mut b = vec![0u8; 4096];
    for lba in (0..written).step_by(37) {
        pool.read(id, lba * 4096, &mut b).unwrap();
        assert_eq!(b, pattern(lba, 0));
    }
    // Freeing space makes writes possible again.
    pool.trim(id, 0, written * 4096 / 2).unwrap();
    pool.gc(64).unwrap();
    pool.write(id, 0, &pattern(0, 9), false).unwrap();
    assert_check(&pool);
}

fn libc_enospc() -> i32 {
    28
}

#[test]
fn overwrites_are_cleaned() {
    let (pool, _) = mem_pool(32 * MB, small_opts());
    let id = pool.lu_create("a", 4 * MB).unwrap().id;
    // Overwrite 4 MiB at random many times in a 32 MiB pool: segments stay partly live, so
    // only the cleaner makes room.
    let mut version = vec![0u64; 1024];
    let mut x = 12345u64;
    for i in 0..20_000u64 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let lba = (x >> 33) % 1024;
        version[lba as usize] = i + 1;
        pool.write(id, lba * 4096, &pattern(lba, i + 1), false)
            .unwrap();
    }
    let mut b = vec![0u8; 4096];
    for lba in 0..1024u64 {
        pool.read(id, lba * 4096, &mut b).unwrap();
        let v = version[lba as usize];
        let want = if v == 0 {
            vec![0u8; 4096]
        } else {
            pattern(lba, v)
        };
        assert_eq!(b, want, "lba {lba}");
    }
    let st = pool.status();
    assert!(st.counters.segments_cleaned > 0);
    assert_check(&pool);
}

#[test]
fn corrupt_data_block_is_an_io_error_naming_the_pv() {
    let (dev, ctl) = FaultDev::new("pv-under-test", 64 * MB);
    let dev: Arc<dyn BlockDev> = Arc::new(dev);
    let pool = Pool::create(vec![dev.clone()], &copts(), Options::default()).unwrap();
    let id = pool.lu_create("a", MB).unwrap().id;
    pool.write(id, 0, &pattern(0, 0), true).unwrap();
    pool.checkpoint().unwrap();
    // Find the data block on the device and flip a bit in it.
    let image = ctl.crash_image(ssp::dev::CrashMode::KeepAll, 0);
    let want = pattern(0, 0);
    let off = image
        .chunks(4096)
        .position(|c| c == want.as_slice())
        .unwrap() as u64
        * 4096;
    ctl.corrupt(off + 100, 1);
    let mut b = vec![0u8; 4096];
    let err = pool.read(id, 0, &mut b).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, PoolError::Checksum { .. }), "{msg}");
    assert!(
        msg.contains("pv-under-test") && msg.contains(&off.to_string()),
        "{msg}"
    );
    let rep = pool.check().unwrap();
    assert_eq!(rep.errors.len(), 1, "{:?}", rep.errors);
    assert!(
        rep.errors[0].contains("data block 0 of a"),
        "{:?}",
        rep.errors
    );
}

#[test]
fn read_only_open_writes_nothing() {
    let (dev, ctl) = FaultDev::new("ro", 32 * MB);
    let dev: Arc<dyn BlockDev> = Arc::new(dev);
    let pool = Pool::create(vec![dev.clone()], &copts(), small_opts()).unwrap();
    let id = pool.lu_create("a", MB).unwrap().id;
    pool.write(id, 0, &pattern(0, 1), true).unwrap();
    drop(pool); // crash: the journal must be replayed
    let writes = ctl.writes();
    let ro = Pool::open(
        vec![dev],
        Options {
            read_only: true,
            ..small_opts()
        },
    )
    .unwrap();
    let mut b = vec![0u8; 4096];
    ro.read(id, 0, &mut b).unwrap();
    assert_eq!(b, pattern(0, 1));
    assert!(matches!(
        ro.write(id, 0, &b, false),
        Err(PoolError::ReadOnly)
    ));
    assert!(matches!(ro.lu_create("b", MB), Err(PoolError::ReadOnly)));
    ro.flush().unwrap();
    ro.close().unwrap();
    assert_eq!(ctl.writes(), writes, "a read-only open must not write");
}

#[test]
fn metadata_cache_stays_bounded_under_reads() {
    let o = Options {
        map_cache_nodes: 4,
        vba_cache_pages: 4,
        dirty_limit: 8,
        checkpoint_writes: 1 << 20,
        ..Options::default()
    };
    let (pool, dev) = mem_pool(128 * MB, o.clone());
    let id = pool.lu_create("a", 64 * MB).unwrap().id;
    pool.write(id, 0, &vec![3u8; 64 * MB as usize], false)
        .unwrap();
    pool.close().unwrap();
    let pool = Pool::open(vec![dev], o).unwrap();
    let mut b = vec![0u8; 4096];
    let mut peak = (0, 0);
    for i in 0..16384u64 {
        pool.read(id, (i * 7919 % 16384) * 4096, &mut b).unwrap();
        let (m, v) = pool.cache_usage();
        peak = (peak.0.max(m), peak.1.max(v));
    }
    // Budget 4 clean + 25 % + the dirty slack (8), far below the 34 map nodes and ~130 VBA
    // pages the LU needs.
    assert!(peak.0 <= 4 + 1 + 8 + 1, "map cache peaked at {}", peak.0);
    assert!(peak.1 <= 4 + 1 + 8 + 1, "VBA cache peaked at {}", peak.1);
}

#[test]
fn background_cleaner_reclaims_garbage() {
    let (pool, _) = mem_pool(40 * MB, small_opts());
    let pool = Arc::new(pool);
    let id = pool.lu_create("a", 4 * MB).unwrap().id;
    let mut x = 99u64;
    let mut n = 0u64;
    // Random overwrites until less than a quarter of the pool is free.
    while pool.status().free_bytes * 4 >= pool.status().total_bytes {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let lba = (x >> 33) % 1024;
        pool.write(id, lba * 4096, &pattern(lba, n), false).unwrap();
        n += 1;
        assert!(n < 200_000, "the pool never filled");
    }
    let before = pool.status();
    let handle = pool.spawn_cleaner(std::time::Duration::from_millis(5));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while pool.status().free_bytes * 4 < pool.status().total_bytes {
        assert!(
            std::time::Instant::now() < deadline,
            "the cleaner did not reclaim space"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let after = pool.status();
    assert!(after.counters.segments_cleaned > before.counters.segments_cleaned);
    assert!(after.free_bytes > before.free_bytes);
    assert_check(&pool);
    drop(pool);
    handle.join().unwrap();
}

#[test]
fn nearly_full_pool_keeps_accepting_overwrites() {
    let (pool, _) = mem_pool(64 * MB, Options::default());
    let st = pool.status();
    // An LU of about 70 % of the usable space, written completely, then overwritten at random.
    let lu_blocks = st.total_bytes / 4096 * 7 / 10 * 3 / 4;
    let id = pool.lu_create("a", lu_blocks * 4096).unwrap().id;
    for lba in 0..lu_blocks {
        pool.write(id, lba * 4096, &pattern(lba, 0), false).unwrap();
    }
    let mut version = vec![0u64; lu_blocks as usize];
    let mut x = 5u64;
    for i in 1..=40_000u64 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let lba = (x >> 33) % lu_blocks;
        pool.write(id, lba * 4096, &pattern(lba, i), i % 1000 == 0)
            .unwrap_or_else(|e| panic!("write {i} failed on a pool with room: {e}"));
        version[lba as usize] = i;
    }
    let mut b = vec![0u8; 4096];
    for lba in 0..lu_blocks {
        pool.read(id, lba * 4096, &mut b).unwrap();
        assert_eq!(b, pattern(lba, version[lba as usize]), "lba {lba}");
    }
    assert_check(&pool);
    let wa = pool.status().write_amplification;
    assert!(wa > 1.0, "write amplification is measured: {wa}");
}

#[test]
fn concurrent_readers_never_see_reused_blocks() {
    // A small pool so the writer forces cleaning, checkpoints and segment reuse while readers
    // do their (slow) I/O outside the pool lock.
    struct SlowReads(ssp::dev::MemDev);
    impl BlockDev for SlowReads {
        fn read_at(&self, buf: &mut [u8], off: u64) -> std::io::Result<()> {
            if buf.len() == 8192 {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            self.0.read_at(buf, off)
        }
        fn write_at(&self, buf: &[u8], off: u64) -> std::io::Result<()> {
            self.0.write_at(buf, off)
        }
        fn sync(&self) -> std::io::Result<()> {
            self.0.sync()
        }
        fn len(&self) -> u64 {
            self.0.len()
        }
        fn name(&self) -> &str {
            self.0.name()
        }
    }
    let dev: Arc<dyn BlockDev> = Arc::new(SlowReads(ssp::dev::MemDev::new("slow", 24 * MB)));
    let pool = Arc::new(Pool::create(vec![dev], &copts(), small_opts()).unwrap());
    let id = pool.lu_create("a", 2 * MB).unwrap().id;
    let blocks = 512u64;
    for lba in 0..blocks {
        pool.write(id, lba * 4096, &pattern(lba, 0), false).unwrap();
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (pool, stop) = (pool.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut x = 3u64;
            for i in 1..=30_000u64 {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let lba = (x >> 33) % blocks;
                pool.write(id, lba * 4096, &pattern(lba, i), false).unwrap();
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        })
    };
    let readers: Vec<_> = (0..3u64)
        .map(|r| {
            let (pool, stop) = (pool.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut b = vec![0u8; 8192];
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < 1_000_000 {
                    let lba = (n * 7 + r * 131) % (blocks - 1);
                    pool.read(id, lba * 4096, &mut b)
                        .unwrap_or_else(|e| panic!("read {lba}: {e}"));
                    // Checksums are verified inside `read`; a block whose segment was reused under
                    // the reader would fail there. Every block was written, so none is zero.
                    assert!(
                        b.chunks(4096).all(|blk| blk.iter().any(|&x| x != 0)),
                        "block {lba}"
                    );
                    n += 1;
                }
                n
            })
        })
        .collect();
    writer.join().unwrap();
    let reads: u64 = readers.into_iter().map(|h| h.join().unwrap()).sum();
    assert!(reads > 0);
    assert!(
        pool.status().counters.segments_cleaned > 0,
        "the test must exercise cleaning"
    );
    assert_check(&pool);
}

#[test]
fn failed_background_sync_poisons_the_pool() {
    let (dev, ctl) = FaultDev::new("bg", 32 * MB);
    let pool = Pool::create(vec![Arc::new(dev)], &copts(), small_opts()).unwrap();
    let id = pool.lu_create("a", MB).unwrap().id;
    pool.write(id, 0, &pattern(0, 1), false).unwrap();
    pool.background_sync().unwrap();
    assert_eq!(
        ctl.pending_writes(),
        0,
        "a background sync writes everything back"
    );
    pool.write(id, 4096, &pattern(1, 1), false).unwrap();
    ctl.fail_syncs(true);
    assert!(pool.background_sync().is_err());
    // Never retried as if it had worked: the pool refuses changes, reads still work.
    assert!(matches!(
        pool.write(id, 0, &pattern(0, 2), false),
        Err(PoolError::Poisoned(_))
    ));
    let mut b = vec![0u8; 4096];
    pool.read(id, 0, &mut b).unwrap();
    assert_eq!(b, pattern(0, 1));
}
