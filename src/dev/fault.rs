//! [`FaultDev`]: an in-memory device with a volatile write cache and injectable faults, for
//! crash and error-path tests. A [`FaultControl`] handle drives it after the device itself has
//! been moved into a pool.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::mem::check_range;
use super::{BlockDev, SECTOR};

/// Which unsynced writes survive a simulated power loss (see [`FaultControl::crash_image`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashMode {
    /// Only synced data survives.
    DropAll,
    /// Every write survives, as if the cache had been flushed.
    KeepAll,
    /// Each unsynced write is independently kept or dropped.
    Random,
    /// Like `Random`, but a kept write may be torn: only a random prefix of its 512-byte
    /// sectors (possibly none) lands.
    RandomTorn,
}

struct State {
    /// What survives power loss.
    durable: Vec<u8>,
    /// `durable` with `pending` applied in order: what reads see.
    live: Vec<u8>,
    /// Unsynced writes `(offset, data)` in issue order.
    pending: Vec<(u64, Vec<u8>)>,
    reads: u64,
    writes: u64,
    syncs: u64,
    /// Successful calls left before injected failures start; `None` when not armed.
    reads_left: Option<u64>,
    writes_left: Option<u64>,
    fail_syncs: bool,
    /// `(offset, len)` byte ranges whose reads fail.
    bad_ranges: Vec<(u64, u64)>,
}

type Shared = Arc<Mutex<State>>;

fn lock(state: &Shared) -> MutexGuard<'_, State> {
    // No code panics while holding the lock, so a poisoned lock still guards consistent state.
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

fn apply(img: &mut [u8], offset: u64, data: &[u8]) {
    let start = offset as usize; // pending writes were range-checked
    img[start..start + data.len()].copy_from_slice(data);
}

/// Clamps `[offset, offset + len)` to a device of `dev_len` bytes, for the inspection helpers.
fn clamp(offset: u64, len: u64, dev_len: usize) -> (usize, usize) {
    let dev_len = dev_len as u64;
    let end = offset.saturating_add(len).min(dev_len);
    (offset.min(end) as usize, end as usize)
}

/// A fault-injecting in-memory device; see the module docs.
pub struct FaultDev {
    name: String,
    len: u64,
    state: Shared,
    held: Arc<Held>,
}

/// Cheap, cloneable handle controlling and inspecting one [`FaultDev`].
#[derive(Clone)]
pub struct FaultControl {
    state: Shared,
    held: Arc<Held>,
}

/// While set, reads (writes, syncs) wait (a device that stalls), for at most [`HOLD_MAX`].
#[derive(Default)]
struct Held {
    reads: Mutex<bool>,
    writes: Mutex<bool>,
    syncs: Mutex<bool>,
    /// Writes and syncs waiting now.
    waiting: std::sync::atomic::AtomicUsize,
    cv: std::sync::Condvar,
}

impl Held {
    fn wait(&self, which: &Mutex<bool>) {
        let h = which.lock().unwrap_or_else(PoisonError::into_inner);
        if !*h {
            return;
        }
        self.waiting
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let _ = self
            .cv
            .wait_timeout_while(h, HOLD_MAX, |held| *held)
            .unwrap_or_else(PoisonError::into_inner);
        self.waiting
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }

    fn set(&self, which: &Mutex<bool>, hold: bool) {
        *which.lock().unwrap_or_else(PoisonError::into_inner) = hold;
        self.cv.notify_all();
    }
}

/// A held read goes on after this long anyway, so a test that fails cannot hang.
const HOLD_MAX: std::time::Duration = std::time::Duration::from_secs(30);

impl FaultDev {
    /// A zero-filled device of `size` bytes.
    pub fn new(name: &str, size: u64) -> (FaultDev, FaultControl) {
        let bytes = usize::try_from(size).expect("FaultDev size exceeds the address space");
        Self::from_image(name, vec![0; bytes])
    }

    /// A device whose durable content is `bytes` (e.g. a previous [`FaultControl::crash_image`]).
    pub fn from_image(name: &str, bytes: Vec<u8>) -> (FaultDev, FaultControl) {
        let state = Arc::new(Mutex::new(State {
            live: bytes.clone(),
            durable: bytes,
            pending: Vec::new(),
            reads: 0,
            writes: 0,
            syncs: 0,
            reads_left: None,
            writes_left: None,
            fail_syncs: false,
            bad_ranges: Vec::new(),
        }));
        let len = lock(&state).live.len() as u64;
        let held = Arc::new(Held::default());
        let dev = FaultDev {
            name: name.to_string(),
            len,
            state: Arc::clone(&state),
            held: held.clone(),
        };
        (dev, FaultControl { state, held })
    }

    fn injected(&self, what: &str, offset: u64) -> io::Error {
        io::Error::other(format!(
            "{}: injected {what} fault at offset {offset}",
            self.name
        ))
    }
}

impl BlockDev for FaultDev {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.held.wait(&self.held.reads);
        let mut st = lock(&self.state);
        if st.reads_left == Some(0) {
            return Err(self.injected("read", offset));
        }
        check_range(&self.name, "read", offset, buf.len(), self.len)?;
        let end = offset + buf.len() as u64;
        let bad = |&(o, l): &(u64, u64)| offset < o.saturating_add(l) && o < end;
        if !buf.is_empty() && st.bad_ranges.iter().any(bad) {
            return Err(self.injected("bad sector read", offset));
        }
        let start = offset as usize;
        buf.copy_from_slice(&st.live[start..start + buf.len()]);
        st.reads += 1;
        st.reads_left = st.reads_left.map(|n| n - 1);
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.held.wait(&self.held.writes);
        let mut st = lock(&self.state);
        if st.writes_left == Some(0) {
            return Err(self.injected("write", offset));
        }
        check_range(&self.name, "write", offset, buf.len(), self.len)?;
        apply(&mut st.live, offset, buf);
        st.pending.push((offset, buf.to_vec()));
        st.writes += 1;
        st.writes_left = st.writes_left.map(|n| n - 1);
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        self.held.wait(&self.held.syncs);
        let st = &mut *lock(&self.state);
        if st.fail_syncs {
            // Pending writes stay volatile: a failed flush guarantees nothing.
            return Err(io::Error::other(format!(
                "{}: injected sync fault",
                self.name
            )));
        }
        for (offset, data) in st.pending.drain(..) {
            apply(&mut st.durable, offset, &data);
        }
        st.syncs += 1;
        Ok(())
    }

    fn len(&self) -> u64 {
        self.len
    }

    fn name(&self) -> &str {
        &self.name
    }
}

impl FaultControl {
    /// The bytes a restart would see after a power loss now. `seed` drives the random modes,
    /// so a failing case can be replayed.
    pub fn crash_image(&self, mode: CrashMode, seed: u64) -> Vec<u8> {
        let st = lock(&self.state);
        let mut rng = StdRng::seed_from_u64(seed);
        let mut img = st.durable.clone();
        for (offset, data) in &st.pending {
            let kept = match mode {
                CrashMode::DropAll => 0,
                CrashMode::KeepAll => data.len(),
                CrashMode::Random if rng.gen_bool(0.5) => data.len(),
                CrashMode::RandomTorn if rng.gen_bool(0.5) => {
                    torn_len(&mut rng, *offset, data.len())
                }
                CrashMode::Random | CrashMode::RandomTorn => 0,
            };
            apply(&mut img, *offset, &data[..kept]);
        }
        img
    }

    /// After `n` more successful reads, every read fails until [`FaultControl::heal`].
    pub fn fail_reads_after(&self, n: u64) {
        lock(&self.state).reads_left = Some(n);
    }

    /// After `n` more successful writes, every write fails until [`FaultControl::heal`].
    pub fn fail_writes_after(&self, n: u64) {
        lock(&self.state).writes_left = Some(n);
    }

    /// While set, reads stall (for at most 30 s each): a device that hangs.
    pub fn hold_reads(&self, hold: bool) {
        self.held.set(&self.held.reads, hold);
    }

    /// While set, writes stall (for at most 30 s each).
    pub fn hold_writes(&self, hold: bool) {
        self.held.set(&self.held.writes, hold);
    }

    /// While set, syncs stall (for at most 30 s each).
    pub fn hold_syncs(&self, hold: bool) {
        self.held.set(&self.held.syncs, hold);
    }

    /// Reads, writes and syncs stalled now by the `hold_*` switches.
    pub fn held(&self) -> usize {
        self.held.waiting.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// While set, `sync` fails and leaves pending writes volatile.
    pub fn fail_syncs(&self, fail: bool) {
        lock(&self.state).fail_syncs = fail;
    }

    /// Reads overlapping `[offset, offset + len)` fail (a bad sector) until [`FaultControl::heal`].
    pub fn fail_range(&self, offset: u64, len: u64) {
        lock(&self.state).bad_ranges.push((offset, len));
    }

    /// Clears every armed fault (data corrupted by [`FaultControl::corrupt`] stays corrupted).
    pub fn heal(&self) {
        let mut st = lock(&self.state);
        st.reads_left = None;
        st.writes_left = None;
        st.fail_syncs = false;
        st.bad_ranges.clear();
    }

    /// Flips every bit of `[offset, offset + len)` (clamped to the device) in both the durable
    /// and the live state (bit rot).
    pub fn corrupt(&self, offset: u64, len: u64) {
        let st = &mut *lock(&self.state);
        let (start, end) = clamp(offset, len, st.durable.len());
        let flip = |bytes: &mut [u8]| bytes.iter_mut().for_each(|b| *b = !*b);
        flip(&mut st.durable[start..end]);
        flip(&mut st.live[start..end]);
        // Flip cached writes too, so live stays durable + pending and a later sync keeps the rot.
        for (w_off, data) in &mut st.pending {
            let w_off = *w_off as usize;
            let (s, e) = (start.max(w_off), end.min(w_off + data.len()));
            if s < e {
                flip(&mut data[s - w_off..e - w_off]);
            }
        }
    }

    /// Number of writes not yet made durable.
    pub fn pending_writes(&self) -> usize {
        lock(&self.state).pending.len()
    }

    /// Number of successful syncs.
    pub fn syncs(&self) -> u64 {
        lock(&self.state).syncs
    }

    /// Number of successful reads.
    pub fn reads(&self) -> u64 {
        lock(&self.state).reads
    }

    /// Number of successful writes.
    pub fn writes(&self) -> u64 {
        lock(&self.state).writes
    }

    /// Durable bytes of `[offset, offset + len)`, clamped to the device.
    pub fn read_durable(&self, offset: u64, len: u64) -> Vec<u8> {
        let st = lock(&self.state);
        let (start, end) = clamp(offset, len, st.durable.len());
        st.durable[start..end].to_vec()
    }
}

/// Bytes of a kept write that land when it may be torn: a uniform choice among cutting at the
/// write's start, at each device sector boundary inside it, or at its end.
fn torn_len(rng: &mut StdRng, offset: u64, len: usize) -> usize {
    let end = offset + len as u64;
    let first = (offset / SECTOR + 1) * SECTOR; // first boundary after the start
    let inner = if first < end {
        (end - 1 - first) / SECTOR + 1
    } else {
        0
    };
    match rng.gen_range(0..=inner + 1) {
        0 => 0,
        i if i > inner => len,
        i => (first + (i - 1) * SECTOR - offset) as usize,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dev::mem::suite;

    const SIZE: u64 = 64 * 1024;
    const MODES: [CrashMode; 4] = [
        CrashMode::DropAll,
        CrashMode::KeepAll,
        CrashMode::Random,
        CrashMode::RandomTorn,
    ];

    /// Device with 4 KiB of synced 0xAA at 0, then an unsynced 4 KiB write of 0xBB over it.
    fn old_then_new() -> (FaultDev, FaultControl) {
        let (dev, ctl) = FaultDev::new("f0", SIZE);
        dev.write_at(&[0xAA; 4096], 0).unwrap();
        dev.sync().unwrap();
        dev.write_at(&[0xBB; 4096], 0).unwrap();
        (dev, ctl)
    }

    fn injected(e: &io::Error) -> bool {
        e.kind() == io::ErrorKind::Other && e.to_string().contains("injected")
    }

    #[test]
    fn fault_suite() {
        let (dev, ctl) = FaultDev::new("fault0", SIZE);
        suite::run(&dev, SIZE);
        assert_eq!(ctl.pending_writes(), 0);
        assert!(ctl.syncs() >= 1 && ctl.reads() > 0 && ctl.writes() > 0);
    }

    #[test]
    fn send_sync_and_control_outlives_move() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<FaultDev>();
        assert_send_sync::<FaultControl>();

        let (dev, ctl) = FaultDev::new("f0", SIZE);
        let dev: Arc<dyn BlockDev> = Arc::new(dev);
        let ctl2 = ctl.clone();
        dev.write_at(&[1; 10], 100).unwrap();
        assert_eq!(ctl2.pending_writes(), 1);
        assert_eq!(ctl.writes(), 1);
    }

    #[test]
    fn drop_all_loses_unsynced_keep_all_keeps() {
        let (dev, ctl) = FaultDev::new("f0", SIZE);
        dev.write_at(&[1; 100], 10).unwrap();
        dev.sync().unwrap();
        dev.write_at(&[2; 100], 1000).unwrap();
        dev.write_at(&[3; 50], 1050).unwrap();
        assert_eq!(ctl.pending_writes(), 2);

        let drop = ctl.crash_image(CrashMode::DropAll, 0);
        assert_eq!(&drop[10..110], &[1; 100]);
        assert!(drop[1000..1100].iter().all(|&b| b == 0));

        let keep = ctl.crash_image(CrashMode::KeepAll, 0);
        assert_eq!(&keep[10..110], &[1; 100]);
        assert_eq!(&keep[1000..1050], &[2; 50]);
        assert_eq!(&keep[1050..1100], &[3; 50]);

        // The image of KeepAll is exactly what reads see.
        let mut live = vec![0; SIZE as usize];
        dev.read_at(&mut live, 0).unwrap();
        assert_eq!(keep, live);
        assert_eq!(ctl.read_durable(1000, 100), vec![0; 100]);
    }

    #[test]
    fn synced_data_survives_every_mode() {
        let (dev, ctl) = FaultDev::new("f0", SIZE);
        dev.write_at(&[5; 4096], 4096).unwrap();
        dev.write_at(&[6; 700], 300).unwrap();
        dev.sync().unwrap();
        let mut live = vec![0; SIZE as usize];
        dev.read_at(&mut live, 0).unwrap();
        for mode in MODES {
            for seed in 0..20 {
                assert_eq!(ctl.crash_image(mode, seed), live, "{mode:?} seed {seed}");
            }
        }
    }

    #[test]
    fn random_keeps_or_drops_whole_writes_deterministically() {
        let (dev, ctl) = FaultDev::new("f0", SIZE);
        for i in 0..8u8 {
            dev.write_at(&[i + 1; 4096], u64::from(i) * 4096).unwrap();
        }
        let (mut kept, mut dropped) = (0, 0);
        for seed in 0..10 {
            let img = ctl.crash_image(CrashMode::Random, seed);
            assert_eq!(img, ctl.crash_image(CrashMode::Random, seed));
            for (i, block) in img.chunks(4096).take(8).enumerate() {
                if block.iter().all(|&b| b == i as u8 + 1) {
                    kept += 1;
                } else {
                    assert!(block.iter().all(|&b| b == 0), "torn in Random mode");
                    dropped += 1;
                }
            }
        }
        assert!(kept > 0 && dropped > 0);
    }

    #[test]
    fn random_torn_tears_at_sector_boundary() {
        let (_dev, ctl) = old_then_new();
        // Seed 3 keeps the 0xBB write but tears it after its first 3 sectors.
        let img = ctl.crash_image(CrashMode::RandomTorn, 3);
        assert!(img[..1536].iter().all(|&b| b == 0xBB), "prefix is new");
        assert!(img[1536..4096].iter().all(|&b| b == 0xAA), "suffix is old");

        // Across seeds, every cut lands on a sector boundary: new prefix, old suffix.
        for seed in 0..100 {
            let img = ctl.crash_image(CrashMode::RandomTorn, seed);
            let cut = img[..4096].iter().take_while(|&&b| b == 0xBB).count();
            assert_eq!(cut % 512, 0, "seed {seed}");
            assert!(img[cut..4096].iter().all(|&b| b == 0xAA), "seed {seed}");
        }
    }

    #[test]
    fn torn_len_respects_absolute_sector_boundaries() {
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..200 {
            // Unaligned write from 1000 to 2300: boundaries at 1024, 1536, 2048.
            let n = torn_len(&mut rng, 1000, 1300);
            assert!([0, 24, 536, 1048, 1300].contains(&n), "{n}");
            // A write inside one sector is all or nothing.
            assert!([0, 10].contains(&torn_len(&mut rng, 513, 10)));
        }
    }

    #[test]
    fn armed_read_and_write_failures_fire_after_n_and_heal() {
        let (dev, ctl) = FaultDev::new("f0", SIZE);
        ctl.fail_reads_after(2);
        ctl.fail_writes_after(1);
        let mut buf = [0; 8];
        dev.read_at(&mut buf, 0).unwrap();
        dev.read_at(&mut buf, 0).unwrap();
        assert!(injected(&dev.read_at(&mut buf, 0).unwrap_err()));
        assert!(injected(&dev.read_at(&mut buf, 0).unwrap_err()));
        assert_eq!(ctl.reads(), 2);

        dev.write_at(&[1; 8], 0).unwrap();
        assert!(injected(&dev.write_at(&[2; 8], 0).unwrap_err()));
        assert!(injected(&dev.write_at(&[2; 8], 8).unwrap_err()));
        assert_eq!((ctl.writes(), ctl.pending_writes()), (1, 1));

        ctl.heal();
        dev.read_at(&mut buf, 0).unwrap();
        assert_eq!(buf, [1; 8]); // the failed writes changed nothing
        dev.write_at(&[3; 8], 0).unwrap();
        assert_eq!((ctl.reads(), ctl.writes()), (3, 2));

        // fail_*_after(0) fails the very next call.
        ctl.fail_writes_after(0);
        assert!(dev.write_at(&[4; 8], 0).is_err());
    }

    #[test]
    fn failed_sync_keeps_writes_pending() {
        let (dev, ctl) = FaultDev::new("f0", SIZE);
        dev.write_at(&[9; 512], 512).unwrap();
        ctl.fail_syncs(true);
        assert!(injected(&dev.sync().unwrap_err()));
        assert_eq!((ctl.pending_writes(), ctl.syncs()), (1, 0));
        assert_eq!(ctl.read_durable(512, 512), vec![0; 512]);
        assert_eq!(ctl.crash_image(CrashMode::DropAll, 0)[512], 0);

        ctl.heal();
        dev.sync().unwrap();
        assert_eq!((ctl.pending_writes(), ctl.syncs()), (0, 1));
        assert_eq!(ctl.read_durable(512, 512), vec![9; 512]);
        assert_eq!(ctl.crash_image(CrashMode::DropAll, 0)[512], 9);
    }

    #[test]
    fn bad_range_fails_overlapping_reads() {
        let (dev, ctl) = FaultDev::new("f0", SIZE);
        ctl.fail_range(4096, 512);
        let mut buf = [0; 512];
        assert!(injected(&dev.read_at(&mut buf, 4096).unwrap_err()));
        assert!(dev.read_at(&mut buf, 3585).is_err()); // overlaps by one byte
        assert!(dev.read_at(&mut buf, 4607).is_err());
        dev.read_at(&mut buf, 3584).unwrap(); // adjacent ranges read fine
        dev.read_at(&mut buf, 4608).unwrap();
        dev.write_at(&buf, 4096).unwrap(); // writes are unaffected
        ctl.heal();
        dev.read_at(&mut buf, 4096).unwrap();
    }

    #[test]
    fn corrupt_flips_durable_and_live() {
        let (dev, ctl) = FaultDev::new("f0", SIZE);
        dev.write_at(&[0xAA; 4096], 0).unwrap();
        dev.write_at(&[0x0F; 16], 8192).unwrap();
        dev.sync().unwrap();
        dev.write_at(&[0xBB; 4096], 0).unwrap(); // pending over the durable 0xAA
        ctl.corrupt(100, 10);
        ctl.corrupt(8192, 4);

        let mut buf = [0; 12];
        dev.read_at(&mut buf, 99).unwrap();
        assert_eq!(buf[0], 0xBB);
        assert_eq!(&buf[1..11], &[!0xBBu8; 10]);
        assert_eq!(buf[11], 0xBB);
        assert_eq!(ctl.read_durable(100, 10), vec![!0xAAu8; 10]);
        assert_eq!(
            ctl.read_durable(8190, 8),
            [0, 0, 0xF0, 0xF0, 0xF0, 0xF0, 0x0F, 0x0F]
        );

        // The rot stays in the cached write: after sync, durable equals live.
        dev.sync().unwrap();
        assert_eq!(ctl.read_durable(100, 10), vec![!0xBBu8; 10]);
        assert_eq!(
            ctl.read_durable(0, SIZE),
            ctl.crash_image(CrashMode::KeepAll, 0)
        );
    }

    #[test]
    fn out_of_range_never_panics() {
        let (dev, ctl) = FaultDev::from_image("img", vec![7; 1000]);
        assert_eq!(dev.len(), 1000);
        assert!(dev.read_at(&mut [0; 2], 999).is_err());
        assert!(dev.write_at(&[0; 1], u64::MAX).is_err());
        ctl.fail_range(u64::MAX, u64::MAX);
        ctl.corrupt(990, u64::MAX);
        ctl.corrupt(u64::MAX, 5);
        assert_eq!(ctl.read_durable(995, 100), vec![!7u8; 5]);
        assert!(ctl.read_durable(5000, 10).is_empty());
        dev.read_at(&mut [0; 10], 0).unwrap();
    }
}
