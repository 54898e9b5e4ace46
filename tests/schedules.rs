//! Schedule exploration of the engine's lock and wake-up protocols with shuttle: the real
//! `GroupCommit`, `SyncGate`, `Checkpointer`, `IoPool`, pool lock, `reuse` pin and scrubber
//! state run with their primitives mapped to shuttle's (`src/sync.rs`, feature `shuttle`), and
//! shuttle runs each test body many times,
//! in random and in PCT (probabilistic concurrency testing) thread orders. A lost wake-up shows
//! up as shuttle's "deadlock" failure, a broken rule as a failed assertion; either way shuttle
//! prints the schedule to replay it.
//!
//! Only this file may run in a build with the feature (everything else uses std threads, which
//! shuttle's primitives refuse), so `scripts/test.sh` runs it as its own command:
//! `cargo test --features shuttle --test schedules`. Without the feature the file is empty.
//!
//! Group commit and the I/O pool run against fake hosts and devices that keep the books the
//! assertions need; the checkpointer thread, scrub and reads run on a real pool on memory PVs.
//! The `reuse` pin has a model of its protocol here (reaching segment reuse on a real pool takes
//! far too many steps for a schedule explorer).
#![cfg(feature = "shuttle")]

use shuttle::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use shuttle::sync::{Condvar, Mutex};
use shuttle::thread;
use ssp::dev::BlockDev;
use ssp::pool::checkpointer::Checkpointer;
use ssp::pool::commit::{GroupCommit, RoundHost, RoundPlan, SyncGate, SyncTarget};
use ssp::pool::PoolError;
use ssp::server::iopool::IoPool;
use std::sync::Arc;
use std::time::Duration;

/// Iterations per scheduler: each test stays within a few seconds at the test profile's
/// opt-level 1.
const RANDOM_RUNS: usize = 2000;
const PCT_RUNS: usize = 2000;
/// PCT's bug depth: the number of ordering constraints a bug needs (3 covers "A before B
/// before C").
const PCT_DEPTH: usize = 3;

/// Run `body` under the random scheduler and under PCT.
fn explore(body: impl Fn() + Send + Sync + Clone + 'static) {
    shuttle::check_random(body.clone(), RANDOM_RUNS);
    shuttle::check_pct(body, PCT_RUNS, PCT_DEPTH);
}

// ---------------------------------------------------------------------------------------------
// Fakes

/// A PV whose syncs are counted, must never overlap, and fail where the test says.
struct FakeDev {
    name: String,
    in_sync: AtomicBool,
    syncs: AtomicU64,
    /// The syncs (1-based) that fail; every other one succeeds.
    fail_on: Vec<u64>,
}

impl FakeDev {
    fn new(name: &str, fail_on: Vec<u64>) -> Arc<FakeDev> {
        Arc::new(FakeDev {
            name: name.to_owned(),
            in_sync: AtomicBool::new(false),
            syncs: AtomicU64::new(0),
            fail_on,
        })
    }
}

impl BlockDev for FakeDev {
    fn read_at(&self, _buf: &mut [u8], _offset: u64) -> std::io::Result<()> {
        Ok(())
    }
    fn write_at(&self, _buf: &[u8], _offset: u64) -> std::io::Result<()> {
        Ok(())
    }
    fn sync(&self) -> std::io::Result<()> {
        assert!(
            !self.in_sync.swap(true, Ordering::SeqCst),
            "two syncs of {} at once",
            self.name
        );
        // Let other threads run while this sync is "in flight".
        thread::yield_now();
        let n = self.syncs.fetch_add(1, Ordering::SeqCst) + 1;
        self.in_sync.store(false, Ordering::SeqCst);
        if self.fail_on.contains(&n) {
            Err(std::io::Error::other(format!(
                "{}: sync {n} failed",
                self.name
            )))
        } else {
            Ok(())
        }
    }
    fn len(&self) -> u64 {
        1 << 20
    }
    fn name(&self) -> &str {
        &self.name
    }
}

/// The books of a fake pool: writes are numbered tickets, a round makes every ticket issued
/// before it began durable if all its syncs succeed.
#[derive(Default)]
struct Books {
    /// The last ticket issued (a write that a flush will want durable).
    written: u64,
    /// Every ticket up to this one is durable.
    durable: u64,
    /// A round is between `begin_round` and `end_round`.
    in_round: bool,
    rounds: u64,
    /// A round failed (its `end_round` returned an error).
    failed: bool,
    /// `poison` was called.
    poisoned: bool,
}

/// A `RoundHost` over fake PVs. `sticky` hosts refuse every round once one failed (as the
/// real pool does, being poisoned); others go on, so that only `GroupCommit`'s own latch
/// keeps later flushes from succeeding.
struct FakeHost {
    books: Mutex<Books>,
    targets: Vec<SyncTarget>,
    sticky: bool,
    /// `begin_round` panics on this call (1-based), if any.
    panic_on: Option<u64>,
    begins: AtomicU64,
}

impl FakeHost {
    fn new(devs: &[Arc<FakeDev>], sticky: bool) -> Arc<FakeHost> {
        let targets = devs
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let dev: Arc<dyn BlockDev> = d.clone();
                (i as u16, dev, Arc::new(SyncGate::default()))
            })
            .collect();
        Arc::new(FakeHost {
            books: Mutex::new(Books::default()),
            targets,
            sticky,
            panic_on: None,
            begins: AtomicU64::new(0),
        })
    }

    /// Issue a write: its ticket.
    fn write(&self) -> u64 {
        let mut b = self.books.lock().unwrap();
        b.written += 1;
        b.written
    }
}

impl RoundHost for FakeHost {
    fn begin_round(&self) -> ssp::pool::Result<RoundPlan> {
        let n = self.begins.fetch_add(1, Ordering::SeqCst) + 1;
        assert_ne!(Some(n), self.panic_on, "begin_round {n} panics");
        let mut b = self.books.lock().unwrap();
        assert!(!b.in_round, "two sync rounds at once");
        if self.sticky && (b.failed || b.poisoned) {
            return Err(PoolError::Poisoned("an earlier round failed".into()));
        }
        b.in_round = true;
        b.rounds += 1;
        Ok(RoundPlan {
            targets: self.targets.clone(),
            journal_seq: Some(b.written),
        })
    }

    fn end_round(
        &self,
        plan: RoundPlan,
        results: Vec<(u16, std::io::Result<()>)>,
    ) -> ssp::pool::Result<()> {
        let mut b = self.books.lock().unwrap();
        assert!(b.in_round, "end_round without begin_round");
        b.in_round = false;
        if let Some((i, Err(e))) = results.into_iter().find(|(_, r)| r.is_err()) {
            b.failed = true;
            return Err(PoolError::Poisoned(format!("PV {i}: {e}")));
        }
        if let Some(seq) = plan.journal_seq {
            b.durable = b.durable.max(seq);
        }
        Ok(())
    }

    fn poison(&self, _why: &str) {
        self.books.lock().unwrap().poisoned = true;
    }
}

// ---------------------------------------------------------------------------------------------
// Group commit

/// `flushers` threads each write and flush `each` times against `host`; every flush that
/// returns Ok finds its write durable, and one that starts after a round failed fails.
fn run_flushers(host: Arc<FakeHost>, flushers: usize, each: usize) -> (usize, usize) {
    let gc = Arc::new(GroupCommit::default());
    let handles: Vec<_> = (0..flushers)
        .map(|_| {
            let (gc, host) = (gc.clone(), host.clone());
            thread::spawn(move || {
                let (mut ok, mut err) = (0, 0);
                for _ in 0..each {
                    let ticket = host.write();
                    let failed_before = {
                        let b = host.books.lock().unwrap();
                        b.failed || b.poisoned
                    };
                    match gc.wait_durable(host.as_ref()) {
                        Ok(()) => {
                            let b = host.books.lock().unwrap();
                            assert!(
                                b.durable >= ticket,
                                "flush of ticket {ticket} returned Ok with only {} durable",
                                b.durable
                            );
                            assert!(!failed_before, "a flush after a failed round succeeded");
                            ok += 1;
                        }
                        Err(e) => {
                            let b = host.books.lock().unwrap();
                            assert!(
                                b.failed || b.poisoned,
                                "a flush failed with no failed round: {e}"
                            );
                            err += 1;
                        }
                    }
                }
                (ok, err)
            })
        })
        .collect();
    let mut total = (0, 0);
    for h in handles {
        let (ok, err) = h.join().unwrap();
        total.0 += ok;
        total.1 += err;
    }
    let b = host.books.lock().unwrap();
    assert!(!b.in_round, "a round was left running");
    // Group commit shares rounds: never more rounds than flushes.
    assert!(b.rounds as usize <= flushers * each);
    total
}

#[test]
fn group_commit_flushes_are_covered_by_a_later_round() {
    explore(|| {
        let devs = [FakeDev::new("pv0", vec![]), FakeDev::new("pv1", vec![])];
        let host = FakeHost::new(&devs, true);
        let (ok, err) = run_flushers(host.clone(), 3, 2);
        assert_eq!((ok, err), (6, 0));
        assert_eq!(host.books.lock().unwrap().durable, 6);
    });
}

#[test]
fn group_commit_failed_round_latches_in_a_poisoned_pool() {
    explore(|| {
        // PV 1's second sync fails; the host refuses rounds from then on.
        let devs = [FakeDev::new("pv0", vec![]), FakeDev::new("pv1", vec![2])];
        let host = FakeHost::new(&devs, true);
        let (ok, err) = run_flushers(host.clone(), 3, 2);
        let b = host.books.lock().unwrap();
        assert_eq!(ok + err, 6);
        if b.rounds >= 2 {
            assert!(
                b.failed && b.poisoned && err >= 1,
                "the failed round failed nobody"
            );
        }
    });
}

#[test]
fn group_commit_failed_round_latches_even_if_later_rounds_succeed() {
    explore(|| {
        // PV 0's second sync fails, later ones succeed, and the host does not refuse rounds:
        // only GroupCommit's record of the failure (and the sync gate's latch) fails the
        // flushes that come after it.
        let devs = [FakeDev::new("pv0", vec![2])];
        let host = FakeHost::new(&devs, false);
        let (ok, err) = run_flushers(host.clone(), 3, 2);
        let b = host.books.lock().unwrap();
        assert_eq!(ok + err, 6);
        if b.rounds >= 2 {
            assert!(b.failed && b.poisoned && err >= 1);
        }
    });
}

/// A round that panics (here in `begin_round`) is a failed round: its waiters and every later
/// flush fail, and nobody waits for ever for it to end.
#[test]
fn group_commit_panicking_round_fails_its_waiters() {
    explore(|| {
        let devs = [FakeDev::new("pv0", vec![])];
        let mut host = FakeHost::new(&devs, false);
        Arc::get_mut(&mut host).unwrap().panic_on = Some(2);
        let (ok, err) = run_flushers(host.clone(), 3, 2);
        assert_eq!(ok + err, 6);
        if host.begins.load(Ordering::SeqCst) >= 2 {
            assert!(host.books.lock().unwrap().poisoned && err >= 1);
        }
    });
}

/// Syncs of one PV through its gate never overlap (the fake device asserts it), and once one
/// has failed every sync that starts afterwards fails, although the device would succeed.
#[test]
fn sync_gate_serialises_and_latches_the_first_failure() {
    explore(|| {
        let dev = FakeDev::new("pv0", vec![2]);
        let gate = Arc::new(SyncGate::default());
        let failure_seen = Arc::new(AtomicBool::new(false));
        let handles: Vec<_> = (0..3)
            .map(|_| {
                let (dev, gate, seen) = (dev.clone(), gate.clone(), failure_seen.clone());
                thread::spawn(move || {
                    for _ in 0..2 {
                        let after_failure = seen.load(Ordering::SeqCst);
                        let r = gate.sync(dev.as_ref());
                        if after_failure {
                            assert!(r.is_err(), "a sync after a failed one succeeded");
                        }
                        if r.is_err() {
                            seen.store(true, Ordering::SeqCst);
                        }
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        // The device failed once, at its second sync, which at least two syncs reach.
        assert!(failure_seen.load(Ordering::SeqCst));
        assert_eq!(
            dev.syncs.load(Ordering::SeqCst),
            2,
            "the gate let syncs through after the failure"
        );
    });
}

// ---------------------------------------------------------------------------------------------
// The I/O thread pool

/// Every job submitted from several threads runs exactly once; dropping the pool right after
/// submitting still runs every queued job (shutdown drains), and the threads all exit.
#[test]
fn iopool_runs_every_job_once_and_drains_on_shutdown() {
    explore(|| {
        const SUBMITTERS: usize = 2;
        const JOBS: usize = 3;
        let pool = Arc::new(IoPool::new(2).unwrap());
        let runs: Arc<Vec<AtomicUsize>> = Arc::new(
            (0..SUBMITTERS * JOBS)
                .map(|_| AtomicUsize::new(0))
                .collect(),
        );
        let done = Arc::new((Mutex::new(0usize), Condvar::new()));
        let submitters: Vec<_> = (0..SUBMITTERS)
            .map(|s| {
                let (pool, runs, done) = (pool.clone(), runs.clone(), done.clone());
                thread::spawn(move || {
                    for j in 0..JOBS {
                        let (runs, done) = (runs.clone(), done.clone());
                        pool.submit(move || {
                            runs[s * JOBS + j].fetch_add(1, Ordering::SeqCst);
                            let (m, cv) = &*done;
                            *m.lock().unwrap() += 1;
                            cv.notify_all();
                        });
                    }
                })
            })
            .collect();
        for h in submitters {
            h.join().unwrap();
        }
        // Shut down with jobs possibly still queued: they must run all the same.
        drop(
            Arc::try_unwrap(pool)
                .ok()
                .expect("submitters hold no handle"),
        );
        let (m, cv) = &*done;
        let mut n = m.lock().unwrap();
        while *n < SUBMITTERS * JOBS {
            n = cv.wait(n).unwrap();
        }
        drop(n);
        for (i, r) in runs.iter().enumerate() {
            assert_eq!(r.load(Ordering::SeqCst), 1, "job {i}");
        }
    });
}

/// A job submitted while a thread is idle is taken at once (no lost wake-up), even when the
/// other threads are busy with jobs that cannot finish before it: each submitter queues a job
/// that waits for a second one, then the second. If the idle thread were not woken for the
/// second, both would wait for ever, which shuttle reports as a deadlock.
#[test]
fn iopool_wakes_an_idle_thread_for_each_job() {
    explore(|| {
        // Two submitters, at most two blocked first jobs: three threads always leave one for
        // a second job.
        let pool = Arc::new(IoPool::new(3).unwrap());
        let submitters: Vec<_> = (0..2)
            .map(|_| {
                let pool = pool.clone();
                thread::spawn(move || {
                    let flag = Arc::new((Mutex::new(0u8), Condvar::new()));
                    let (first, second) = (flag.clone(), flag.clone());
                    pool.submit(move || {
                        let mut g = first.0.lock().unwrap();
                        while *g == 0 {
                            g = first.1.wait(g).unwrap();
                        }
                        *g = 2;
                        first.1.notify_all();
                    });
                    pool.submit(move || {
                        *second.0.lock().unwrap() = 1;
                        second.1.notify_all();
                    });
                    let mut g = flag.0.lock().unwrap();
                    while *g != 2 {
                        g = flag.1.wait(g).unwrap();
                    }
                })
            })
            .collect();
        for h in submitters {
            h.join().unwrap();
        }
    });
}

// ---------------------------------------------------------------------------------------------
// The checkpointer's wake-up

/// The data path's side of the checkpointer (as `Inner::checkpoint_step` and
/// `Pool::spawn_checkpointer` use it): writers change the pool under its lock and wake the
/// checkpointer once a checkpoint is wanted; the checkpointer thread waits, takes the pool
/// lock and checkpoints what is wanted. A writer waits until a checkpoint covers its change,
/// without waking again: a lost signal leaves it waiting for ever (shuttle: deadlock).
#[test]
fn checkpointer_takes_every_wanted_checkpoint() {
    #[derive(Default)]
    struct Pool {
        /// Changes made, and the last change a checkpoint covered.
        changes: u64,
        checkpointed: u64,
        checkpoints: u64,
        stop: bool,
    }
    explore(|| {
        let c = Arc::new(Checkpointer::default());
        let pool = Arc::new((Mutex::new(Pool::default()), Condvar::new()));
        let ckpt = {
            let (c, pool) = (c.clone(), pool.clone());
            thread::spawn(move || loop {
                // The timeout never fires under shuttle: only a wake-up ends the wait.
                let woken = c.wait(Duration::from_secs(1));
                let mut g = pool.0.lock().unwrap();
                if g.stop {
                    return;
                }
                if !woken || g.checkpointed == g.changes {
                    continue;
                }
                g.checkpointed = g.changes;
                g.checkpoints += 1;
                pool.1.notify_all();
            })
        };
        let writers: Vec<_> = (0..2)
            .map(|_| {
                let (c, pool) = (c.clone(), pool.clone());
                thread::spawn(move || {
                    for _ in 0..2 {
                        let mut g = pool.0.lock().unwrap();
                        g.changes += 1;
                        let mine = g.changes;
                        // Woken under the pool lock, as checkpoint_step does.
                        c.wake();
                        while g.checkpointed < mine {
                            g = pool.1.wait(g).unwrap();
                        }
                    }
                })
            })
            .collect();
        for h in writers {
            h.join().unwrap();
        }
        let g = pool.0.lock().unwrap();
        assert_eq!(g.checkpointed, 4);
        assert!(g.checkpoints >= 1);
        drop(g);
        pool.0.lock().unwrap().stop = true;
        c.wake();
        ckpt.join().unwrap();
    });
}

// ---------------------------------------------------------------------------------------------
// The `reuse` pin of the read path (a model: `Pool::read` is too tied to the pool to run here)

/// The shape of the read path's publication protocol (`Pool::read`, `ckpt.rs`, `clean.rs`):
/// a reader plans under the pool lock's shared side (the block its LBA maps to), pins `reuse`
/// for reading *before* it lets the pool lock go, and reads the block outside the lock; a
/// writer, under the exclusive side, puts new data in a free block, remaps the LBA and leaves
/// the old block freed-but-not-reusable; a checkpoint, under the exclusive side, takes `reuse`
/// for writing (waiting for every pinned reader) before it hands the freed blocks to the
/// allocator. A reader must find the block as it planned it: never overwritten under it.
#[test]
fn reuse_pin_keeps_planned_blocks_until_read() {
    use shuttle::sync::RwLock;
    const LBAS: usize = 2;
    const BLOCKS: usize = 4;
    struct Meta {
        /// LBA → block.
        map: [usize; LBAS],
        free: Vec<usize>,
        /// Freed by a write, reusable after the next checkpoint.
        freed: Vec<usize>,
        next_tag: u64,
    }
    explore(|| {
        // Block contents: a tag unique to the write that put them there.
        let disk: Arc<Vec<AtomicU64>> = Arc::new((0..BLOCKS as u64).map(AtomicU64::new).collect());
        let pool = Arc::new(RwLock::new(Meta {
            map: [0, 1],
            free: vec![2, 3],
            freed: Vec::new(),
            next_tag: BLOCKS as u64,
        }));
        let reuse = Arc::new(RwLock::new(()));
        let mut threads = Vec::new();
        for r in 0..2 {
            let (disk, pool, reuse) = (disk.clone(), pool.clone(), reuse.clone());
            threads.push(thread::spawn(move || {
                for i in 0..2 {
                    let lba = (r + i) % LBAS;
                    let g = pool.read().unwrap();
                    let block = g.map[lba];
                    let planned = disk[block].load(Ordering::SeqCst);
                    let pin = reuse.read().unwrap();
                    drop(g);
                    let got = disk[block].load(Ordering::SeqCst);
                    assert_eq!(
                        got, planned,
                        "block {block} of LBA {lba} was reused under a read"
                    );
                    drop(pin);
                }
            }));
        }
        {
            let (disk, pool) = (disk.clone(), pool.clone());
            threads.push(thread::spawn(move || {
                for i in 0..3 {
                    let mut g = pool.write().unwrap();
                    let Some(block) = g.free.pop() else { continue };
                    let tag = g.next_tag;
                    g.next_tag += 1;
                    disk[block].store(tag, Ordering::SeqCst);
                    let lba = i % LBAS;
                    let old = std::mem::replace(&mut g.map[lba], block);
                    g.freed.push(old);
                }
            }));
        }
        {
            let (pool, reuse) = (pool.clone(), reuse.clone());
            threads.push(thread::spawn(move || {
                for _ in 0..2 {
                    let mut g = pool.write().unwrap();
                    let to_free = std::mem::take(&mut g.freed);
                    // Wait for reads still doing I/O on blocks this checkpoint frees.
                    drop(reuse.write().unwrap());
                    g.free.extend(to_free);
                }
            }));
        }
        for t in threads {
            t.join().unwrap();
        }
    });
}

// ---------------------------------------------------------------------------------------------
// The scrubber's start / cancel state machine (the real pool, on memory devices)

/// A small pool with one LU that has a few blocks written: something for a scrub to read.
fn small_pool() -> (Arc<ssp::pool::Pool>, u64) {
    use ssp::pool::{CreateOptions, Options, Pool};
    let dev: Arc<dyn BlockDev> = Arc::new(ssp::dev::MemDev::new("pv0", 8 << 20));
    let copts = CreateOptions {
        journal_blocks: 64,
        ..CreateOptions::default()
    };
    let pool = Pool::create(vec![dev], &copts, Options::default()).unwrap();
    let id = pool.lu_create("lu", 1 << 20).unwrap().id;
    for b in 0..4u64 {
        pool.write(id, b * 4096, &[b as u8 + 1; 4096], false)
            .unwrap();
    }
    (Arc::new(pool), id)
}

/// Scrubs started and cancelled from several threads while a writer runs, through the pool's
/// own `scrub_start` / `scrub_cancel` (no background worker: a scrub runs in the thread that
/// started it). At most one scrub runs at a time (the other start is refused while it runs);
/// a cancel either finds no scrub or returns once the scrub stopped (its wait for the scrub's
/// end is never lost: shuttle would report the canceller deadlocked); a scrub ends finished or
/// cancelled, and cancelled only by a cancel that saw it running; nothing is left running, and a
/// scrub started afterwards runs to its end.
#[test]
fn scrub_start_and_cancel_race_safely() {
    let body = || {
        let (pool, id) = small_pool();
        let dir = std::env::temp_dir().join("ssp-schedules-no-scrub-state");
        let starters: Vec<_> = (0..2)
            .map(|_| {
                let pool = pool.clone();
                thread::spawn(move || pool.scrub_start(Some(0)))
            })
            .collect();
        let canceller = {
            let (pool, dir) = (pool.clone(), dir.clone());
            thread::spawn(move || pool.scrub_cancel(&dir))
        };
        let writer = {
            let pool = pool.clone();
            thread::spawn(move || {
                for b in 0..2u64 {
                    pool.write(id, b * 4096, &[0xee; 4096], false).unwrap();
                }
            })
        };
        writer.join().unwrap();
        let cancel = canceller.join().unwrap();
        let mut ran = 0;
        let mut cancelled = 0;
        for s in starters {
            match s.join().unwrap() {
                Ok(st) => {
                    ran += 1;
                    assert!(
                        st.state == "finished" || st.state == "cancelled",
                        "a started scrub ended {:?}",
                        st.state
                    );
                    cancelled += usize::from(st.state == "cancelled");
                }
                Err(PoolError::InUse(_)) => {}
                Err(e) => panic!("scrub start: {e}"),
            }
        }
        assert!(ran >= 1, "both starts refused");
        match &cancel {
            Ok(st) => assert!(!st.running(), "cancel returned with the scrub running"),
            Err(e) => {
                assert!(matches!(e, PoolError::Invalid(_)), "scrub cancel: {e}");
                assert_eq!(cancelled, 0, "a scrub was cancelled by nobody");
            }
        }
        assert!(cancelled <= 1, "one cancel stopped two scrubs");
        assert!(!pool.scrub_status(&dir).running());
        // The cancel is spent: the next scrub runs to its end.
        assert_eq!(pool.scrub_start(Some(0)).unwrap().state, "finished");
    };
    explore(body);
}

/// The real checkpointer thread (`Pool::spawn_checkpointer`) on a real pool: writes past the
/// "wanted" threshold (and short of the "forced" one, where a writer checkpoints itself) must
/// get a background checkpoint. Under shuttle the thread's wait never times out, so only the
/// writer's wake-up can start it: a lost wake-up leaves the checkpoint untaken. Dropping the
/// pool ends the thread.
#[test]
fn checkpointer_thread_takes_the_wanted_checkpoint() {
    use ssp::pool::{CreateOptions, Options, Pool};
    explore(|| {
        let dev: Arc<dyn BlockDev> = Arc::new(ssp::dev::MemDev::new("pv0", 8 << 20));
        let copts = CreateOptions {
            journal_blocks: 512,
            ..CreateOptions::default()
        };
        let opts = Options {
            checkpoint_writes: 4,
            ..Options::default()
        };
        let pool = Arc::new(Pool::create(vec![dev], &copts, opts).unwrap());
        let id = pool.lu_create("lu", 1 << 20).unwrap().id;
        let before = pool.status().counters;
        let ckpt = pool.spawn_checkpointer();
        let writers: Vec<_> = (0..2u64)
            .map(|w| {
                let pool = pool.clone();
                thread::spawn(move || {
                    for b in 0..3u64 {
                        pool.write(id, (w * 3 + b) * 4096, &[7; 4096], false)
                            .unwrap();
                    }
                })
            })
            .collect();
        for h in writers {
            h.join().unwrap();
        }
        let mut taken = false;
        for _ in 0..200 {
            let c = pool.status().counters;
            assert_eq!(
                c.writer_checkpoints, before.writer_checkpoints,
                "a writer was forced"
            );
            if c.background_checkpoints > before.background_checkpoints {
                taken = true;
                break;
            }
            thread::yield_now();
        }
        assert!(taken, "the wanted checkpoint was not taken");
        drop(pool);
        ckpt.join().unwrap();
    });
}

// ---------------------------------------------------------------------------------------------
// Reads against writes, flushes, checkpoints and cleaning (the real pool)

/// A memory PV whose reads and writes let other threads run before, between the two halves of,
/// and after each transfer, so a read that overlaps a write to the same place can see it torn.
struct YieldDev(ssp::dev::MemDev);

impl BlockDev for YieldDev {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        thread::yield_now();
        let half = buf.len() / 2;
        let (a, b) = buf.split_at_mut(half);
        self.0.read_at(a, offset)?;
        thread::yield_now();
        self.0.read_at(b, offset + half as u64)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        thread::yield_now();
        let half = buf.len() / 2;
        self.0.write_at(&buf[..half], offset)?;
        thread::yield_now();
        self.0.write_at(&buf[half..], offset + half as u64)
    }
    fn sync(&self) -> std::io::Result<()> {
        thread::yield_now();
        self.0.sync()
    }
    fn len(&self) -> u64 {
        self.0.len()
    }
    fn name(&self) -> &str {
        self.0.name()
    }
}

/// Readers plan under the pool lock's shared side (or the exclusive one when metadata must be
/// loaded) and read the device outside it, while a writer rewrites the same blocks and flushes,
/// and another thread checkpoints and cleans. Every read returns a whole block as one write
/// left it (old or new, never torn, never a block another LBA owns), and a reader never sees a
/// block go back to an older version.
#[test]
fn reads_see_old_or_new_blocks_during_writes_and_checkpoints() {
    use ssp::pool::{CreateOptions, Pool};
    explore(|| {
        let dev: Arc<dyn BlockDev> = Arc::new(YieldDev(ssp::dev::MemDev::new("pv0", 8 << 20)));
        let copts = CreateOptions {
            journal_blocks: 64,
            ..CreateOptions::default()
        };
        let pool = Arc::new(Pool::create(vec![dev], &copts, Default::default()).unwrap());
        let id = pool.lu_create("lu", 1 << 20).unwrap().id;
        // Block b holds version v as the byte 16 * b + v.
        let block = |b: u64, v: u8| vec![16 * b as u8 + v; 4096];
        for b in 0..2u64 {
            pool.write(id, b * 4096, &block(b, 1), false).unwrap();
        }
        pool.flush().unwrap();
        let mut threads = Vec::new();
        {
            let pool = pool.clone();
            threads.push(thread::spawn(move || {
                for v in 2..=3u8 {
                    for b in 0..2u64 {
                        pool.write(id, b * 4096, &block(b, v), false).unwrap();
                    }
                    pool.flush().unwrap();
                }
            }));
        }
        {
            let pool = pool.clone();
            threads.push(thread::spawn(move || {
                pool.checkpoint().unwrap();
                pool.maintenance().unwrap();
            }));
        }
        for r in 0..2u64 {
            let pool = pool.clone();
            threads.push(thread::spawn(move || {
                let mut seen = [1u8; 2];
                for i in 0..4u64 {
                    let b = (r + i) % 2;
                    let mut buf = vec![0u8; 4096];
                    pool.read(id, b * 4096, &mut buf).unwrap();
                    let first = buf[0];
                    assert!(buf.iter().all(|&x| x == first), "block {b} read torn");
                    let v = first.wrapping_sub(16 * b as u8);
                    assert!((1..=3).contains(&v), "block {b} read {first:#x}");
                    assert!(
                        v >= seen[b as usize],
                        "block {b} went back from {} to {v}",
                        seen[b as usize]
                    );
                    seen[b as usize] = v;
                }
            }));
        }
        for t in threads {
            t.join().unwrap();
        }
        for b in 0..2u64 {
            let mut buf = vec![0u8; 4096];
            pool.read(id, b * 4096, &mut buf).unwrap();
            assert_eq!(buf, block(b, 3));
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Data runs written without the pool lock, and background checkpoints made durable without it

/// A writer fills whole data runs (64 blocks: each becomes a flight its writer writes after
/// releasing the lock) while the checkpointer thread captures checkpoints and makes them durable
/// without the lock, a reader reads the run's blocks, and an admin thread takes the exclusive
/// lock (which settles flights and commits a finished background checkpoint). Nothing
/// deadlocks (a settle waiting for a flight, a lock holder waiting for a checkpoint's syncs);
/// every read sees a whole block of one version, never an older one than it saw before; at the
/// end every block holds the last version, and `check` passes.
#[test]
fn data_runs_and_background_checkpoints_race_safely() {
    use ssp::pool::{CreateOptions, Options, Pool};
    let body = || {
        let dev: Arc<dyn BlockDev> = Arc::new(YieldDev(ssp::dev::MemDev::new("pv0", 16 << 20)));
        let copts = CreateOptions {
            journal_blocks: 512,
            ..CreateOptions::default()
        };
        let opts = Options {
            checkpoint_writes: 64,
            ..Options::default()
        };
        let pool = Arc::new(Pool::create(vec![dev], &copts, opts).unwrap());
        let id = pool.lu_create("lu", 1 << 20).unwrap().id;
        let ckpt = pool.spawn_checkpointer();
        // Block b of version v: every byte is v, the first is b.
        let run = |v: u8| -> Vec<u8> {
            (0..64u8)
                .flat_map(|b| {
                    let mut x = vec![v; 4096];
                    x[0] = b;
                    x
                })
                .collect()
        };
        let mut threads = Vec::new();
        {
            let pool = pool.clone();
            threads.push(thread::spawn(move || {
                for v in 1..=2u8 {
                    pool.write(id, 0, &run(v), false).unwrap();
                }
                pool.flush().unwrap();
            }));
        }
        {
            let pool = pool.clone();
            threads.push(thread::spawn(move || {
                let mut seen = 0u8;
                for i in 0..4u64 {
                    let b = 5 + (i % 2) * 50;
                    let mut buf = vec![0u8; 4096];
                    pool.read(id, b * 4096, &mut buf).unwrap();
                    let v = buf[1];
                    if v == 0 {
                        assert!(buf.iter().all(|&x| x == 0), "block {b} read torn");
                        assert_eq!(seen, 0, "block {b} went back to a hole");
                        continue;
                    }
                    assert_eq!(buf[0], b as u8, "block {b} read another block");
                    assert!(buf[1..].iter().all(|&x| x == v), "block {b} read torn");
                    // A write changes the whole run under one lock hold: a later read of
                    // either block never sees an older version than an earlier read saw.
                    assert!(v >= seen, "block {b} went back from {seen} to {v}");
                    seen = seen.max(v);
                }
            }));
        }
        {
            let pool = pool.clone();
            threads.push(thread::spawn(move || {
                let _ = pool.status();
                let _ = pool.lu_list();
            }));
        }
        for t in threads {
            t.join().unwrap();
        }
        let mut got = vec![0u8; 64 * 4096];
        pool.read(id, 0, &mut got).unwrap();
        assert!(got == run(2), "the last version was not read back");
        let rep = pool.check().unwrap();
        assert!(rep.errors.is_empty(), "{:?}", rep.errors);
        drop(pool);
        ckpt.join().unwrap();
    };
    shuttle::check_random(body, 300);
    shuttle::check_pct(body, 300, PCT_DEPTH);
}
