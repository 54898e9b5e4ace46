//! Group commit: concurrent flushes share sync rounds run outside the pool lock, PVs are synced
//! in parallel, and a failed sync fails exactly the flushes it covered (and every later one in a
//! pool it poisons).

mod common;
use ssp::dev::{BlockDev, CrashMode, FaultControl, FaultDev, FileDev};
use ssp::pool::{CreateOptions, Options, Pool};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Condvar, Mutex};
use std::time::{Duration, Instant};

const MB: u64 = 1 << 20;

fn copts() -> CreateOptions {
    CreateOptions {
        name: "gc".into(),
        journal_blocks: 256,
    }
}

fn opts() -> Options {
    Options {
        host_id: 1,
        ..Options::default()
    }
}

/// A file PV whose syncs can be held (they block until released), counting syncs in progress.
struct Gated {
    inner: FileDev,
    gate: Arc<Hold>,
}

#[derive(Default)]
struct Hold {
    held: Mutex<bool>,
    cv: Condvar,
    in_sync: AtomicUsize,
    max_in_sync: AtomicUsize,
}

impl Hold {
    fn set(&self, held: bool) {
        *self.held.lock().unwrap() = held;
        self.cv.notify_all();
    }
}

impl BlockDev for Gated {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn len(&self) -> u64 {
        self.inner.len()
    }
    fn read_at(&self, buf: &mut [u8], off: u64) -> std::io::Result<()> {
        self.inner.read_at(buf, off)
    }
    fn write_at(&self, buf: &[u8], off: u64) -> std::io::Result<()> {
        self.inner.write_at(buf, off)
    }
    fn sync(&self) -> std::io::Result<()> {
        let now = self.gate.in_sync.fetch_add(1, Ordering::SeqCst) + 1;
        self.gate.max_in_sync.fetch_max(now, Ordering::SeqCst);
        let mut h = self.gate.held.lock().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while *h && Instant::now() < deadline {
            h = self
                .gate
                .cv
                .wait_timeout(h, Duration::from_millis(50))
                .unwrap()
                .0;
        }
        drop(h);
        let r = self.inner.sync();
        self.gate.in_sync.fetch_sub(1, Ordering::SeqCst);
        r
    }
}

fn file_pool(dir: &std::path::Path, pvs: usize, hold: &Arc<Hold>) -> Pool {
    let devs: Vec<Arc<dyn BlockDev>> = (0..pvs)
        .map(|i| {
            let f = FileDev::create(&dir.join(format!("pv{i}")), 64 * MB).unwrap();
            Arc::new(Gated {
                inner: f,
                gate: hold.clone(),
            }) as Arc<dyn BlockDev>
        })
        .collect();
    Pool::create(devs, &copts(), opts()).unwrap()
}

/// 32 threads flush at once while the first round's syncs are held: every flush that arrives
/// during a round waits for the next one, so the 32 flushes cost a couple of rounds (one sync
/// per PV each), not 32 × PVs syncs; and the PVs of a round are synced at the same time.
#[test]
fn thirty_two_concurrent_flushes_share_a_few_sync_rounds() {
    let dir = tempfile::tempdir().unwrap();
    let hold = Arc::new(Hold::default());
    let pvs = 3;
    let pool = Arc::new(file_pool(dir.path(), pvs, &hold));
    pool.lu_create("lu", 64 * MB).unwrap();
    let vol = pool.lu_id("lu").unwrap();
    pool.flush().unwrap();
    let before = pool.status().counters;

    hold.set(true);
    let start = Arc::new(Barrier::new(33));
    let done = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..32u64)
        .map(|t| {
            let (pool, start, done) = (pool.clone(), start.clone(), done.clone());
            std::thread::spawn(move || {
                pool.write(vol, t * 4096, &[t as u8 + 1; 4096], false)
                    .unwrap();
                start.wait();
                pool.flush().unwrap();
                done.fetch_add(1, Ordering::SeqCst);
            })
        })
        .collect();
    start.wait();
    // The first round is stuck in its syncs; the others queue behind it. Reads and writes do
    // not wait for the syncs: the pool lock is free.
    let t0 = Instant::now();
    while hold.in_sync.load(Ordering::SeqCst) < pvs && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        hold.in_sync.load(Ordering::SeqCst),
        pvs,
        "a round syncs every PV at once"
    );
    let t = Instant::now();
    pool.write(vol, 40 * 4096, &[9; 4096], false).unwrap();
    let mut back = [0u8; 4096];
    pool.read(vol, 0, &mut back).unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "I/O waited for a sync"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        done.load(Ordering::SeqCst),
        0,
        "a flush returned before its sync"
    );
    hold.set(false);
    for t in threads {
        t.join().unwrap();
    }
    let after = pool.status().counters;
    let rounds = after.sync_rounds - before.sync_rounds;
    let syncs = after.pv_syncs - before.pv_syncs;
    assert!(
        (1..=4).contains(&rounds),
        "{rounds} sync rounds for 32 flushes"
    );
    assert!(
        syncs <= 4 * pvs as u64,
        "{syncs} PV syncs for 32 flushes over {pvs} PVs (32 × PVs = {})",
        32 * pvs
    );
    assert!(hold.max_in_sync.load(Ordering::SeqCst) >= pvs);
}

fn fault_pool() -> (Pool, FaultControl) {
    let (dev, ctl) = FaultDev::new("pv", 32 * MB);
    let pool = Pool::create(vec![Arc::new(dev)], &copts(), opts()).unwrap();
    pool.lu_create("lu", 8 * MB).unwrap();
    (pool, ctl)
}

/// A failed sync fails every flush of the round it covered; the pool is then poisoned, so no
/// later flush claims durability, even once the device syncs again.
#[test]
fn a_failed_sync_fails_the_flushes_it_covered_and_every_later_one() {
    let (pool, ctl) = fault_pool();
    let pool = Arc::new(pool);
    let vol = pool.lu_id("lu").unwrap();
    pool.write(vol, 0, &[1; 4096], false).unwrap();
    pool.flush().unwrap();
    ctl.fail_syncs(true);
    let start = Arc::new(Barrier::new(8));
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let (pool, start) = (pool.clone(), start.clone());
            std::thread::spawn(move || {
                let w = pool.write(vol, (t + 1) * 4096, &[2; 4096], false);
                start.wait();
                (w, pool.flush())
            })
        })
        .collect();
    let mut failed = 0;
    for t in threads {
        let (w, f) = t.join().unwrap();
        // A write after the pool was poisoned is refused; a flush never claims durability.
        if w.is_ok() {
            let e = f.expect_err("a flush succeeded although its sync failed");
            assert_eq!(e.errno(), libc::EIO, "{e}");
            failed += 1;
        } else {
            assert!(f.is_err());
        }
    }
    assert!(failed >= 1);
    ctl.fail_syncs(false);
    let e = pool
        .flush()
        .expect_err("a flush after a failed sync claimed durability");
    assert_eq!(e.errno(), libc::EIO);
    assert!(pool.write(vol, 0, &[3; 4096], true).is_err());
    // The block flushed before the failure survives a power cut.
    let img = ctl.crash_image(CrashMode::DropAll, 1);
    drop(pool);
    let (dev, _) = FaultDev::from_image("pv", img);
    let p = Pool::open(vec![Arc::new(dev)], opts()).unwrap();
    let mut b = [0u8; 4096];
    p.read(vol, 0, &mut b).unwrap();
    assert_eq!(b, [1; 4096]);
    assert!(p.check().unwrap().errors.is_empty());
}

/// In a mirrored pool a sync failing on one failure group degrades it and the flush succeeds
/// on the other (as an inline sync did); syncs of that PV stay failed (the latch) until it
/// rejoins, so a later round cannot take a sync that "worked" after a lost write for proof.
#[test]
fn a_failed_sync_in_a_mirror_degrades_one_group_and_flushes_go_on() {
    let (a, _ca) = FaultDev::new("a", 32 * MB);
    let (b, cb) = FaultDev::new("b", 32 * MB);
    let pool = Pool::create(vec![Arc::new(a)], &copts(), opts()).unwrap();
    pool.failgrp_create("fg2", vec![Arc::new(b)]).unwrap();
    pool.lu_create("lu", 8 * MB).unwrap();
    let vol = pool.lu_id("lu").unwrap();
    pool.write(vol, 0, &[1; 4096], false).unwrap();
    pool.flush().unwrap();
    cb.fail_syncs(true);
    pool.write(vol, 4096, &[2; 4096], false).unwrap();
    pool.flush().unwrap();
    assert_eq!(pool.status().mirror_state, "DEGRADED");
    cb.fail_syncs(false);
    let syncs_b = cb.syncs();
    pool.write(vol, 8192, &[3; 4096], false).unwrap();
    pool.flush().unwrap();
    assert_eq!(cb.syncs(), syncs_b, "a failed PV was synced again");
    let mut buf = [0u8; 4096];
    pool.read(vol, 8192, &mut buf).unwrap();
    assert_eq!(buf, [3; 4096]);
}

/// Flushes from many threads while others write: every flush returns only once what was
/// written before it is durable (checked on the image a power cut leaves at that moment).
#[test]
fn every_flush_covers_the_writes_acknowledged_before_it() {
    let (pool, ctl) = fault_pool();
    let pool = Arc::new(pool);
    let vol = pool.lu_id("lu").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let checked = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let (pool, ctl, stop, checked) =
                (pool.clone(), ctl.clone(), stop.clone(), checked.clone());
            std::thread::spawn(move || {
                let mut v = 0u8;
                while !stop.load(Ordering::SeqCst) && v < 30 {
                    v += 1;
                    let lba = t * 16 + u64::from(v % 16);
                    pool.write(vol, lba * 4096, &[v; 4096], false).unwrap();
                    pool.flush().unwrap();
                    // Durable now: the image a power cut leaves holds it.
                    let img = ctl.crash_image(CrashMode::DropAll, u64::from(v));
                    let (dev, _) = FaultDev::from_image("pv", img);
                    let p = Pool::open(
                        vec![Arc::new(dev)],
                        Options {
                            read_only: true,
                            ..opts()
                        },
                    )
                    .unwrap();
                    let mut b = [0u8; 4096];
                    p.read(vol, lba * 4096, &mut b).unwrap();
                    // Another thread never writes this block.
                    assert_eq!(b[0], v, "thread {t}: flushed block {lba} lost");
                    checked.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    stop.store(true, Ordering::SeqCst);
    assert_eq!(checked.load(Ordering::SeqCst), 4 * 30);
}

/// Through sspd: 4 NBD connections each queue 8 writes and then 8 flushes at once. The flushes
/// of a connection that arrive together are answered by one pool flush, and the connections'
/// flushes share sync rounds: far fewer rounds than the 32 flushes.
#[test]
fn flushes_of_many_nbd_clients_share_sync_rounds() {
    use common::server::*;
    let s = Server::start(&[("lu", "64M")]);
    let counters = || {
        let out = sspctl(&s.pool, &["pool", "status", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["counters"].clone()
    };
    let before = counters();
    let out = nbdsh(
        &s.uri("lu"),
        "import nbd,sys\n\
         hs=[nbd.NBD() for _ in range(4)]\n\
         for h in hs: h.connect_uri(sys.argv[1])\n\
         bufs=[nbd.Buffer.from_bytearray(bytearray([i+1])*4096) for i in range(4)]\n\
         cookies=[]\n\
         for i,h in enumerate(hs):\n\
         \x20 for k in range(8): cookies.append((h, h.aio_pwrite(bufs[i], (i*8+k)*4096)))\n\
         for h in hs:\n\
         \x20 for k in range(8): cookies.append((h, h.aio_flush()))\n\
         for _ in range(100000):\n\
         \x20 if all(h.aio_in_flight() == 0 for h in hs): break\n\
         \x20 for h in hs:\n\
         \x20   if h.aio_in_flight() > 0: h.poll(10)\n\
         ok = all(h.aio_command_completed(c) for h,c in cookies)\n\
         print('done' if ok else 'failed')\n",
    );
    assert_eq!(out.trim(), "done");
    let after = counters();
    let n = |c: &serde_json::Value, k: &str| c[k].as_u64().unwrap();
    let rounds = n(&after, "sync_rounds") - n(&before, "sync_rounds");
    // 32 flushes; the cleaner's background sync adds a round every 200 ms.
    assert!(rounds <= 16, "{rounds} sync rounds for 32 flushes: {after}");
    s.stop();
}
