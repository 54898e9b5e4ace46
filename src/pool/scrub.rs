//! Scrub in slices. A scrub reads every live block on every copy, verifies it and rewrites bad
//! copies from good ones. It works one slice at a time (at most [`SLICE_BLOCKS`] blocks, or one
//! metadata segment): the pool lock is taken to plan a slice and again to apply its repairs, and
//! the device reads and checksum checks run outside it. While a slice's reads are in flight the
//! scrub holds the pool's `reuse` lock for reading, as `Pool::read` does, so no segment the
//! slice reads is handed back to the allocator under it; the pin is dropped before the pool
//! lock is taken again, so a checkpoint waits for one slice's reads at most.
//!
//! Two passes: VBA order over the VBA table (data blocks and map nodes), then, in a mirrored
//! pool, the metadata segments copy against copy (table pages, which no VBA names). Where a
//! scrub stands is a [`ScrubPos`]. A background scrub (sspd) keeps its position and figures in
//! the pool directory's `scrub.state` file, replaced atomically about once a second, so a
//! restarted sspd resumes it there. That file holds progress only, never pool metadata, so it
//! is not part of the on-disk format: losing it costs at most a second of scrubbing.

#![cfg_attr(
    not(test),
    deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)
)]

use super::error::{PoolError, Result};
use super::failgrp::ScrubReport;
use super::inner::Inner;
pub use super::open::fmt_time;
use super::pvs::split;
use super::throttle::Throttle;
use super::{hex, Pool};
use crate::dev::BlockDev;
use crate::format::node::{decode_node, Ptr, SEG_META};
use crate::format::{data_crc, BLOCK, BLOCK_U64, SEG_BLOCKS};
use crate::sync::{Condvar, Mutex};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Blocks one slice reads at most (per copy): 1 MiB.
pub const SLICE_BLOCKS: usize = 256;
/// VBA indexes one slice looks at most (the table may be sparse).
const SLICE_SCAN: u64 = 16 * 1024;
/// The background scrub's state file, in the pool directory.
pub const STATE_FILE: &str = "scrub.state";
/// Version of the state file's JSON; another version is ignored (the scrub starts over).
const STATE_VERSION: u32 = 1;
/// How often a running scrub replaces its state file.
const SAVE_EVERY: Duration = Duration::from_secs(1);

/// The pass of a scrub.
const PHASE_BLOCKS: u8 = 0;
const PHASE_META: u8 = 1;
const PHASE_DONE: u8 = 2;

/// Where a scrub stands: its pass and the next VBA (block pass) or segment (metadata pass)
/// it looks at.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScrubPos {
    pub phase: u8,
    pub next: u64,
}

impl ScrubPos {
    pub fn done(&self) -> bool {
        self.phase >= PHASE_DONE
    }
    fn phase_name(&self) -> &'static str {
        match self.phase {
            PHASE_BLOCKS => "blocks",
            PHASE_META => "metadata",
            _ => "done",
        }
    }
}

/// A scrub as `sspctl scrub status` shows it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ScrubStatus {
    /// none, running, cancelled, finished or failed.
    pub state: String,
    /// blocks, metadata or done.
    pub phase: String,
    /// The next VBA (blocks pass) or segment (metadata pass).
    pub position: u64,
    /// Bytes verified so far (one per block, whatever the copies) and the estimate of the
    /// whole (the live blocks when the scrub started).
    pub bytes_done: u64,
    pub bytes_total: u64,
    /// Rate limit in bytes per second (0: unlimited).
    pub rate: u64,
    /// Unix seconds.
    pub started: u64,
    #[serde(default)]
    pub finished: u64,
    /// Times sspd resumed this scrub after a restart.
    #[serde(default)]
    pub resumed: u32,
    /// What the scrub found so far.
    pub report: ScrubReport,
    /// Why it failed.
    #[serde(default)]
    pub error: String,
}

impl ScrubStatus {
    pub fn running(&self) -> bool {
        self.state == "running"
    }
}

/// The state file: a versioned envelope naming the pool it belongs to.
#[derive(Serialize, Deserialize)]
struct StateFile {
    version: u32,
    pool_id: String,
    pos: ScrubPos,
    status: ScrubStatus,
}

/// The pool's scrub: at most one at a time, run by the background worker sspd starts
/// ([`Pool::spawn_scrubber`]) or in the caller's thread where there is none.
#[derive(Default)]
pub struct Scrubber {
    st: Mutex<Shared>,
    changed: Condvar,
    /// The pool's id in hex, for the state file (read once, outside `st`).
    pool_id: std::sync::OnceLock<String>,
}

#[derive(Default)]
struct Shared {
    status: ScrubStatus,
    pos: ScrubPos,
    cancel: bool,
    /// A background worker runs scrubs (sspd).
    worker: bool,
    /// Where the worker keeps its state file.
    state_file: Option<PathBuf>,
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Plan the block pass's next slice: the live entries among VBAs `from..end`, at most
/// `max_items` of them and at most `max_scan` indexes looked at. Returns them and the VBA the
/// slice after this one starts at (`end` once the pass is over).
pub fn plan_blocks(
    from: u64,
    end: u64,
    max_items: usize,
    max_scan: u64,
    lookup: &mut dyn FnMut(u64) -> Result<Ptr>,
) -> Result<(Vec<(u64, Ptr)>, u64)> {
    let stop = from.saturating_add(max_scan.max(1)).min(end);
    let mut items = Vec::new();
    let mut i = from;
    while i < stop && items.len() < max_items.max(1) {
        let p = lookup(i)?;
        if p.pba != 0 {
            items.push((i, p));
        }
        i += 1;
    }
    Ok((items, i.max(from.min(end))))
}

/// Whether `buf` is the block VBA `vba` names by `p`: data checks against its checksum, a map
/// node against its own and the one the table holds.
fn block_ok(pid: &[u8; 16], vba: u64, p: &Ptr, buf: &[u8]) -> bool {
    if vba % 2 == 0 {
        data_crc(pid, buf) == p.crc
    } else {
        decode_node(buf, pid).is_ok()
            && buf
                .get(8..12)
                .and_then(|b| <[u8; 4]>::try_from(b).ok())
                .map(u32::from_le_bytes)
                == Some(p.crc)
    }
}

/// A block a slice found a bad copy of: what the slice read it as, and where.
struct Damaged {
    vba: u64,
    ptr: Ptr,
    good: Option<Vec<u8>>,
    bad: Vec<(u16, u64)>,
}

impl Inner {
    /// VBA table entry `vba`.
    pub(super) fn vba_entry(&mut self, vba: u64) -> Result<Ptr> {
        let mut vt = std::mem::take(&mut self.vba);
        let r = vt.get(self, vba);
        self.vba = vt;
        r
    }

    /// The PVs' devices that are up, by PV index, for I/O outside the pool lock.
    pub(super) fn devs_up(&self) -> Vec<Option<Arc<dyn BlockDev>>> {
        self.pvs
            .pvs
            .iter()
            .map(|p| p.failed.is_none().then(|| p.dev.clone()))
            .collect()
    }

    /// Bytes a scrub of the pool as it is now looks at (an estimate for progress).
    fn scrub_total(&self) -> u64 {
        let live: u64 = self.segs.iter().skip(1).map(|e| u64::from(e.live)).sum();
        live * BLOCK_U64
    }
}

fn read_dev(devs: &[Option<Arc<dyn BlockDev>>], pv: u16, off: u64, buf: &mut [u8]) -> bool {
    match devs.get(usize::from(pv)) {
        Some(Some(d)) => d.read_at(buf, off).is_ok(),
        _ => false,
    }
}

impl Pool {
    /// Scrub one slice from `pos`, adding what it found to `rep`. Returns the next position,
    /// the bytes read (every copy) and the bytes verified (one per block, for progress).
    pub fn scrub_slice(
        &self,
        pos: ScrubPos,
        rep: &mut ScrubReport,
    ) -> Result<(ScrubPos, u64, u64)> {
        match pos.phase {
            PHASE_BLOCKS => self.scrub_blocks_slice(pos.next, rep),
            PHASE_META => self.scrub_meta_slice(pos.next, rep),
            _ => Ok((pos, 0, 0)),
        }
    }

    fn scrub_blocks_slice(&self, from: u64, rep: &mut ScrubReport) -> Result<(ScrubPos, u64, u64)> {
        let mut g = self.lock();
        let end = g.next_vba.max(g.next_node_vba);
        let (items, next) = {
            let inner: &mut Inner = &mut g;
            let mut vt = std::mem::take(&mut inner.vba);
            let r = plan_blocks(from, end, SLICE_BLOCKS, SLICE_SCAN, &mut |i| {
                vt.get(&*inner, i)
            });
            inner.vba = vt;
            r?
        };
        let next_pos = if next >= end {
            ScrubPos {
                phase: PHASE_META,
                next: 1,
            }
        } else {
            ScrubPos {
                phase: PHASE_BLOCKS,
                next,
            }
        };
        if items.is_empty() {
            return Ok((next_pos, 0, 0));
        }
        let verified = items.len() as u64 * BLOCK_U64;
        // Blocks still in an append buffer go to disk first: the scrub verifies the disk.
        if items.iter().any(|(_, p)| g.in_memory(p.pba, 1)) {
            g.write_out_all()?;
        }
        // (VBA, entry, copies as (PV, byte offset)).
        type Planned = (u64, Ptr, Vec<(u16, u64)>);
        let mut plan: Vec<Planned> = Vec::with_capacity(items.len());
        for (vba, p) in items {
            let (seg, slot) = split(p.pba);
            let mut copies = Vec::new();
            for fg in g.read_groups(seg) {
                if let Some((pv, pseg)) = g.pvs.locate_in(fg, seg) {
                    copies.push((pv, g.pvs.offset(pv, pseg, slot)?));
                }
            }
            plan.push((vba, p, copies));
        }
        let devs = g.devs_up();
        let pid = g.pool_id;
        let mirror = g.mirror.clone();
        // No segment read below is reused until the pin goes (see `Pool::read`).
        let pin = self.reuse.read().unwrap_or_else(|p| p.into_inner());
        drop(g);
        let mut bytes = 0u64;
        let mut damaged = Vec::new();
        let mut buf = vec![0u8; BLOCK];
        for (vba, p, copies) in plan {
            let mut good: Option<Vec<u8>> = None;
            let mut bad = Vec::new();
            for (pv, off) in copies {
                rep.blocks_checked += 1;
                bytes += BLOCK_U64;
                if read_dev(&devs, pv, off, &mut buf) && block_ok(&pid, vba, &p, &buf) {
                    good.get_or_insert_with(|| buf.clone());
                } else {
                    bad.push((pv, off));
                }
            }
            if !bad.is_empty() {
                damaged.push(Damaged {
                    vba,
                    ptr: p,
                    good,
                    bad,
                });
            }
        }
        drop(pin);
        if damaged.is_empty() {
            return Ok((next_pos, bytes, verified));
        }
        let mut g = self.lock();
        let mut repaired = 0;
        for d in damaged {
            // Only a block the VBA still names is reported and repaired: one freed since was
            // read while pinned, but is nobody's business now.
            let cur = g.vba_entry(d.vba)?;
            if cur.pba != d.ptr.pba || cur.crc != d.ptr.crc {
                continue;
            }
            rep.errors_found += d.bad.len() as u64;
            for _ in &d.bad {
                mirror.found();
            }
            match &d.good {
                Some(good) => {
                    for (pv, off) in &d.bad {
                        if g.pvs.write(*pv, *off, good).is_ok() {
                            rep.errors_repaired += 1;
                            repaired += 1;
                            mirror.repaired();
                            tracing::warn!("scrub repaired {} offset {off}", g.pvs.name(*pv));
                        }
                    }
                }
                None => {
                    rep.unrepairable += 1;
                    let at: Vec<String> = d
                        .bad
                        .iter()
                        .map(|(pv, off)| format!("{} at offset {off}", g.pvs.name(*pv)))
                        .collect();
                    let msg = format!(
                        "{} block (VBA {}): no intact copy ({})",
                        if d.vba % 2 == 0 { "data" } else { "map node" },
                        d.vba,
                        at.join(", ")
                    );
                    tracing::error!("scrub: {msg}");
                    rep.errors.push(msg);
                }
            }
        }
        if repaired > 0 {
            g.sync_pvs()?;
        }
        Ok((next_pos, bytes, verified))
    }

    /// Metadata pass: the next metadata segment from `from` with two good copies, compared
    /// block by block; a block only one copy of verifies is repaired in the other.
    fn scrub_meta_slice(&self, from: u64, rep: &mut ScrubReport) -> Result<(ScrubPos, u64, u64)> {
        let done = ScrubPos {
            phase: PHASE_DONE,
            next: 0,
        };
        let g = self.lock();
        let groups = g.pvs.groups();
        let [ga, gb, ..] = groups[..] else {
            return Ok((done, 0, 0));
        };
        let nsegs = g.segs.len() as u64;
        let Some(seg) = (from.max(1)..nsegs)
            .find(|&s| g.seg(s).state == SEG_META && g.read_groups(s).len() >= 2)
        else {
            return Ok((done, 0, 0));
        };
        let next_pos = ScrubPos {
            phase: PHASE_META,
            next: seg + 1,
        };
        let (Some((pa, sa)), Some((pb, sb))) = (g.pvs.locate_in(ga, seg), g.pvs.locate_in(gb, seg))
        else {
            return Ok((next_pos, 0, 0));
        };
        let (oa, ob) = (g.pvs.offset(pa, sa, 0)?, g.pvs.offset(pb, sb, 0)?);
        let seq = g.seg(seg).seq;
        let devs = g.devs_up();
        let pid = g.pool_id;
        let seg_bytes = (SEG_BLOCKS * BLOCK_U64) as usize;
        let (mut a, mut b) = (vec![0u8; seg_bytes], vec![0u8; seg_bytes]);
        let pin = self.reuse.read().unwrap_or_else(|p| p.into_inner());
        drop(g);
        let read = read_dev(&devs, pa, oa, &mut a) && read_dev(&devs, pb, ob, &mut b);
        drop(pin);
        if !read {
            return Ok((next_pos, 0, 0));
        }
        // Blocks where the copies differ and exactly one verifies.
        let suspects: Vec<u64> = a
            .chunks(BLOCK)
            .zip(b.chunks(BLOCK))
            .enumerate()
            .filter(|(_, (x, y))| {
                x != y && decode_node(x, &pid).is_ok() != decode_node(y, &pid).is_ok()
            })
            .map(|(k, _)| k as u64 * BLOCK_U64)
            .collect();
        rep.blocks_checked += 2 * SEG_BLOCKS;
        let bytes = 2 * seg_bytes as u64;
        if suspects.is_empty() {
            return Ok((next_pos, bytes, 0));
        }
        // Judged again under the lock: the segment may have been written (an open metadata
        // head) or freed and reused since it was read.
        let mut g = self.lock();
        if g.seg(seg).state != SEG_META || g.seg(seg).seq != seq || g.read_groups(seg).len() < 2 {
            return Ok((next_pos, bytes, 0));
        }
        let (mut x, mut y) = (vec![0u8; BLOCK], vec![0u8; BLOCK]);
        let mut repaired = 0;
        for at in suspects {
            if g.pvs.read(pa, oa + at, &mut x).is_err() || g.pvs.read(pb, ob + at, &mut y).is_err()
            {
                continue;
            }
            let fix = match (decode_node(&x, &pid).is_ok(), decode_node(&y, &pid).is_ok()) {
                _ if x == y => None,
                (true, false) => Some((pb, ob + at, &x)),
                (false, true) => Some((pa, oa + at, &y)),
                _ => None, // both verify (an old node) or neither (unused space)
            };
            if let Some((pv, off, good)) = fix {
                rep.errors_found += 1;
                g.mirror.found();
                if g.pvs.write(pv, off, good).is_ok() {
                    rep.errors_repaired += 1;
                    repaired += 1;
                    g.mirror.repaired();
                }
            }
        }
        if repaired > 0 {
            g.sync_pvs()?;
        }
        Ok((next_pos, bytes, 0))
    }

    /// Scrub from `pos` to the end in the caller's thread at `rate` bytes/s (0: unlimited);
    /// `progress(bytes done, bytes total)` after each slice.
    pub fn scrub_foreground(
        &self,
        rate: u64,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<ScrubReport> {
        let total = self.lock().scrub_total();
        let mut rep = ScrubReport::default();
        let mut pos = ScrubPos::default();
        let mut th = Throttle::new(rate);
        let mut done = 0u64;
        let mut last = Instant::now();
        while !pos.done() {
            std::thread::sleep(th.wait_time());
            let (next, bytes, verified) = self.scrub_slice(pos, &mut rep)?;
            th.spend(bytes);
            done += verified;
            pos = next;
            if last.elapsed() >= SAVE_EVERY {
                last = Instant::now();
                progress(done, total.max(done));
            }
        }
        progress(done, total.max(done));
        Ok(rep)
    }

    /// Read every live block on every copy, verify it and repair bad copies from good ones,
    /// in slices, unthrottled.
    pub fn scrub(&self) -> Result<ScrubReport> {
        self.scrub_foreground(0, &mut |_, _| {})
    }

    fn scrubber(&self) -> crate::sync::MutexGuard<'_, Shared> {
        self.scrubber.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Start a scrub at `rate` bytes/s. With a background worker (sspd) it returns at once
    /// with the new scrub's status, and `None` means sspd's `--scrub-rate`; without one
    /// (offline: nobody else uses the pool) the scrub runs here to the end, unthrottled unless
    /// a rate is given. Refused while a scrub is running.
    pub fn scrub_start(&self, rate: Option<u64>) -> Result<ScrubStatus> {
        self.scrub_start_with(rate, &mut |_, _| {})
    }

    /// [`Pool::scrub_start`]; a scrub run here to the end (offline) reports
    /// `progress(bytes done, bytes total)` at its start, about once a second and at its end.
    pub fn scrub_start_with(
        &self,
        rate: Option<u64>,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<ScrubStatus> {
        let total = self.lock().scrub_total();
        let mut s = self.scrubber();
        let rate = rate.unwrap_or_else(|| if s.worker { self.rates.scrub() } else { 0 });
        if s.status.running() {
            return Err(PoolError::InUse(format!(
                "a scrub is already running ({} of {} MiB): see `sspctl scrub status`, or `sspctl scrub cancel`",
                s.status.bytes_done >> 20,
                s.status.bytes_total >> 20
            )));
        }
        s.status = ScrubStatus {
            state: "running".into(),
            phase: "blocks".into(),
            bytes_total: total,
            rate,
            started: now_secs(),
            ..Default::default()
        };
        s.pos = ScrubPos::default();
        s.cancel = false;
        let st = s.status.clone();
        if s.worker {
            self.save_state(&s);
            self.scrubber.changed.notify_all();
            return Ok(st);
        }
        drop(s);
        // Its own outcome: once it ends, another start may already have replaced the status.
        Ok(self.scrub_worker_run(progress))
    }

    /// Wait for the running scrub (if any) to stop; `progress(done, total)` about once a
    /// second. Returns its final status.
    pub fn scrub_wait(&self, progress: &mut dyn FnMut(u64, u64)) -> ScrubStatus {
        let mut s = self.scrubber();
        while s.status.running() {
            progress(s.status.bytes_done, s.status.bytes_total);
            s = self
                .scrubber
                .changed
                .wait_timeout(s, SAVE_EVERY)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        s.status.clone()
    }

    /// The current or last scrub; `dir` is the pool directory, whose state file tells when
    /// no scrub ran since the pool was opened (offline, or a scrub sspd will resume).
    pub fn scrub_status(&self, dir: &Path) -> ScrubStatus {
        let s = self.scrubber();
        if !s.status.state.is_empty() {
            return s.status.clone();
        }
        drop(s);
        match self.load_state(dir) {
            Some((_, st)) => st,
            None => ScrubStatus {
                state: "none".into(),
                ..Default::default()
            },
        }
    }

    /// Stop the running scrub at its next slice boundary and wait for it. Offline, a scrub
    /// sspd would resume is cancelled in its state file.
    pub fn scrub_cancel(&self, dir: &Path) -> Result<ScrubStatus> {
        let mut s = self.scrubber();
        if s.status.running() {
            s.cancel = true;
            self.scrubber.changed.notify_all();
            drop(s);
            return Ok(self.scrub_wait(&mut |_, _| {}));
        }
        if s.status.state.is_empty() {
            if let Some((pos, mut st)) = self.load_state(dir) {
                if st.running() {
                    st.state = "cancelled".into();
                    st.finished = now_secs();
                    s.status = st.clone();
                    s.pos = pos;
                    let path = dir.join(STATE_FILE);
                    write_state(&path, &self.state_file_body(pos, &st))
                        .map_err(|e| PoolError::Config(format!("{}: {e}", path.display())))?;
                    return Ok(st);
                }
            }
        }
        Err(PoolError::Invalid("no scrub is running".into()))
    }

    /// Run scrubs in the background on a thread (sspd), keeping their state in `dir`'s
    /// state file; a scrub the file shows running (sspd stopped during it) resumes where it
    /// stopped. The thread ends when the pool is dropped.
    pub fn spawn_scrubber(self: &Arc<Self>, dir: &Path) -> std::thread::JoinHandle<()> {
        self.pool_hex();
        {
            let resume = self.load_state(dir);
            let mut s = self.scrubber();
            s.worker = true;
            s.state_file = Some(dir.join(STATE_FILE));
            if let Some((pos, mut st)) = resume {
                if st.running() {
                    st.resumed += 1;
                    tracing::info!(
                        "resuming the scrub stopped at {} {} ({} of {} MiB done)",
                        st.phase,
                        st.position,
                        st.bytes_done >> 20,
                        st.bytes_total >> 20
                    );
                }
                s.status = st;
                s.pos = pos;
            }
        }
        let weak = Arc::downgrade(self);
        std::thread::spawn(move || loop {
            let Some(p) = weak.upgrade() else { return };
            let run = {
                let s = p.scrubber();
                let s = if s.status.running() {
                    s
                } else {
                    p.scrubber
                        .changed
                        .wait_timeout(s, Duration::from_millis(500))
                        .map(|(g, _)| g)
                        .unwrap_or_else(|e| e.into_inner().0)
                };
                s.status.running()
            };
            if run {
                p.scrub_worker_run(&mut |_, _| {});
            }
        })
    }

    /// Run the scrub the scrubber holds from its position until it is done, cancelled or
    /// fails, keeping its status (and state file, with a worker) up to date; its final status.
    fn scrub_worker_run(&self, progress: &mut dyn FnMut(u64, u64)) -> ScrubStatus {
        let (mut pos, rate, mut rep) = {
            let s = self.scrubber();
            progress(s.status.bytes_done, s.status.bytes_total);
            (s.pos, s.status.rate, s.status.report.clone())
        };
        let mut th = Throttle::new(rate);
        let mut last_save = Instant::now();
        let outcome: std::result::Result<bool, PoolError> = loop {
            if pos.done() {
                break Ok(true);
            }
            // Wait off the rate in short naps, so a cancel is seen quickly.
            loop {
                if self.scrubber().cancel {
                    break;
                }
                let w = th.wait_time();
                if w.is_zero() {
                    break;
                }
                std::thread::sleep(w.min(Duration::from_millis(100)));
            }
            if self.scrubber().cancel {
                break Ok(false);
            }
            let (next, bytes, verified) = match self.scrub_slice(pos, &mut rep) {
                Ok(r) => r,
                Err(e) => break Err(e),
            };
            th.spend(bytes);
            pos = next;
            let mut s = self.scrubber();
            s.status.bytes_done += verified;
            s.status.report = rep.clone();
            s.status.phase = pos.phase_name().into();
            s.status.position = pos.next;
            s.pos = pos;
            if last_save.elapsed() >= SAVE_EVERY {
                last_save = Instant::now();
                self.save_state(&s);
                let (done, total) = (s.status.bytes_done, s.status.bytes_total);
                drop(s);
                progress(done, total.max(done));
            }
        };
        let mut s = self.scrubber();
        s.status.report = rep;
        s.status.finished = now_secs();
        match outcome {
            Ok(true) => {
                s.status.state = "finished".into();
                s.status.phase = "done".into();
                s.status.bytes_done = s.status.bytes_done.max(s.status.bytes_total);
                tracing::info!(
                    "scrub finished: {} block copies, {} errors found, {} repaired",
                    s.status.report.blocks_checked,
                    s.status.report.errors_found,
                    s.status.report.errors_repaired
                );
            }
            Ok(false) => {
                s.status.state = "cancelled".into();
                tracing::info!(
                    "scrub cancelled at {} {}",
                    s.status.phase,
                    s.status.position
                );
            }
            Err(e) => {
                tracing::error!("scrub failed: {e}");
                s.status.state = "failed".into();
                s.status.error = e.to_string();
            }
        }
        s.cancel = false;
        self.save_state(&s);
        self.scrubber.changed.notify_all();
        let st = s.status.clone();
        drop(s);
        progress(st.bytes_done, st.bytes_total.max(st.bytes_done));
        st
    }

    fn pool_hex(&self) -> String {
        self.scrubber
            .pool_id
            .get_or_init(|| hex(&self.lock().pool_id))
            .clone()
    }

    fn state_file_body(&self, pos: ScrubPos, st: &ScrubStatus) -> StateFile {
        StateFile {
            version: STATE_VERSION,
            pool_id: self.pool_hex(),
            pos,
            status: st.clone(),
        }
    }

    /// Replace the state file (worker only); a failure is logged, the scrub goes on.
    fn save_state(&self, s: &Shared) {
        let Some(path) = &s.state_file else { return };
        if let Err(e) = write_state(path, &self.state_file_body(s.pos, &s.status)) {
            tracing::warn!("scrub: cannot save its position in {}: {e}", path.display());
        }
    }

    /// The state file in `dir`, if it is this pool's and of this version.
    fn load_state(&self, dir: &Path) -> Option<(ScrubPos, ScrubStatus)> {
        let path = dir.join(STATE_FILE);
        let text = std::fs::read_to_string(&path).ok()?;
        let f: StateFile = match serde_json::from_str(&text) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!("ignoring {}: {e}", path.display());
                return None;
            }
        };
        let pid = self.pool_hex();
        (f.version == STATE_VERSION && f.pool_id == pid).then_some((f.pos, f.status))
    }
}

/// Write `f` to `path` atomically: a temporary file, synced, renamed over it, the directory
/// synced.
fn write_state(path: &Path, f: &StateFile) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("state.tmp");
    let body = serde_json::to_vec_pretty(f).map_err(std::io::Error::other)?;
    {
        let mut out = std::fs::File::create(&tmp)?;
        out.write_all(&body)?;
        out.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(d) = path.parent() {
        std::fs::File::open(d)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(live: &[u64]) -> impl FnMut(u64) -> Result<Ptr> + '_ {
        move |i| {
            Ok(if live.contains(&i) {
                Ptr {
                    pba: 1000 + i,
                    crc: i as u32,
                    aux: 1,
                }
            } else {
                Ptr::default()
            })
        }
    }

    #[test]
    fn slices_are_bounded_and_cover_every_live_entry_once() {
        let live: Vec<u64> = (0..5000).filter(|i| i % 3 != 0 || i % 7 == 0).collect();
        let end = 5000;
        let mut seen = Vec::new();
        let mut from = 0;
        let mut slices = 0;
        while from < end {
            let (items, next) = plan_blocks(from, end, 100, 400, &mut table(&live)).unwrap();
            assert!(items.len() <= 100, "a slice holds at most max_items");
            assert!(
                next > from && next - from <= 400,
                "a slice scans at most max_scan"
            );
            assert!(items.iter().all(|(i, _)| (from..next).contains(i)));
            seen.extend(items.iter().map(|(i, _)| *i));
            from = next;
            slices += 1;
            assert!(slices < 1000);
        }
        assert_eq!(seen, live, "every live entry once, in order");
    }

    #[test]
    fn a_sparse_table_advances_by_the_scan_bound() {
        let live = [9_999u64];
        let (items, next) = plan_blocks(0, 10_000, 10, 1000, &mut table(&live)).unwrap();
        assert!(items.is_empty());
        assert_eq!(next, 1000);
        let (items, next) = plan_blocks(9_000, 10_000, 10, 1000, &mut table(&live)).unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(next, 10_000);
        // Resuming at the end is the end: nothing more, no going back.
        let (items, next) = plan_blocks(10_000, 10_000, 10, 1000, &mut table(&live)).unwrap();
        assert!(items.is_empty());
        assert_eq!(next, 10_000);
    }
}
