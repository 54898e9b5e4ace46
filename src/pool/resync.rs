//! Resync in slices: one stale segment (1 MiB) per slice. The pool lock is taken to choose the
//! segment and again to clear its stale flag; the copy itself (read the good copy, write and
//! sync the stale one) runs outside it, with the pool's `reuse` lock held for reading so the
//! segment is not reused under the copy. An open append head is still being written, so it is
//! copied under the lock (one segment, bounded). What resync owes lives in the segment table's
//! stale flags, which are journaled: a restarted pool resumes with exactly the segments not yet
//! copied. Background resync is throttled (sspd `--resync-rate`).

#![cfg_attr(
    not(test),
    deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)
)]

use super::error::{PoolError, Result};
use super::throttle::Throttle;
use super::Pool;
use crate::format::node::SEG_FREE;
use crate::format::{BLOCK_U64, SEG_BLOCKS};
use std::sync::atomic::Ordering;

/// Slices one background tick runs at most, whatever the rate.
const TICK_SLICES: usize = 64;

/// What one resync slice did.
#[derive(Debug, PartialEq, Eq)]
pub enum Slice {
    /// Nothing left that can be copied now.
    Idle,
    /// A segment's stale flag was settled; the bytes copied for it.
    Done(u64),
}

impl Pool {
    /// Bring failed PVs back if they answer (a checkpoint then starts their resync).
    fn resync_retry(&self) -> Result<bool> {
        let mut g = self.lock();
        if g.opts.read_only || !g.pvs.mirrored() {
            return Ok(false);
        }
        if g.pvs.pvs.iter().any(|p| p.failed.is_some()) {
            g.retry_failed()?;
        }
        Ok(true)
    }

    /// Copy one stale segment from a good copy to the group that lacks it.
    pub fn resync_slice(&self) -> Result<Slice> {
        let mut g = self.lock();
        if g.opts.read_only || !g.pvs.mirrored() {
            return Ok(Slice::Idle);
        }
        let groups = g.pvs.groups();
        let mut pick = None;
        'find: for &fg in &groups {
            if g.pvs.group_failed(fg) {
                continue;
            }
            for seg in 1..g.segs.len() as u64 {
                if !g.stale_in(seg, fg) {
                    continue;
                }
                if g.seg(seg).state == SEG_FREE {
                    pick = Some((seg, fg, None));
                    break 'find;
                }
                let src = groups
                    .iter()
                    .copied()
                    .find(|&s| s != fg && !g.pvs.group_failed(s) && !g.stale_in(seg, s));
                if let Some(src) = src {
                    pick = Some((seg, fg, Some(src)));
                    break 'find;
                }
                // No good copy anywhere: check and scrub report it.
            }
        }
        let Some((seg, fg, src)) = pick else {
            return Ok(Slice::Idle);
        };
        let Some(src) = src else {
            // Nothing to copy: a free segment is rewritten from scratch when reused.
            g.set_stale(seg, fg, false)?;
            g.flush()?;
            return Ok(Slice::Done(0));
        };
        let (spv, sseg) = g.pvs.locate_in(src, seg).ok_or_else(|| {
            PoolError::Invalid(format!("segment {seg} is beyond failure group {src}"))
        })?;
        let (dpv, dseg) = g.pvs.locate_in(fg, seg).ok_or_else(|| {
            PoolError::Invalid(format!("segment {seg} is beyond failure group {fg}"))
        })?;
        let (soff, doff) = (g.pvs.offset(spv, sseg, 0)?, g.pvs.offset(dpv, dseg, 0)?);
        let mut buf = vec![0u8; (SEG_BLOCKS * BLOCK_U64) as usize];
        let bytes = buf.len() as u64;
        if g.is_open(seg) {
            // An open head takes writes under the lock: copy it there too.
            g.write_out_all()?;
            g.pvs.read(spv, soff, &mut buf)?;
            if let Err(e) = g.pvs.write(dpv, doff, &buf) {
                g.fail_pv(dpv, e)?;
                return Ok(Slice::Done(0));
            }
            g.sync_pvs()?;
            if !g.pvs.group_failed(fg) {
                g.set_stale(seg, fg, false)?;
            }
            g.flush()?;
            g.mirror.resync_bytes.fetch_add(bytes, Ordering::Relaxed);
            return Ok(Slice::Done(bytes));
        }
        // A sealed segment: nobody writes it until it is freed and reused, and the pin keeps
        // it from being reused before the copy is done.
        let seq = g.seg(seg).seq;
        let sdev = g.pvs.pv(spv)?.dev.clone();
        let ddev = g.pvs.pv(dpv)?.dev.clone();
        // Through the PV's sync gate, like every sync: a failure it sees is latched for the
        // flushes that sync this PV next.
        let dgate = g.pvs.pv(dpv)?.gate.clone();
        let dpv_id = g.pvs.pv(dpv)?.sb.pv_id;
        let pin = self.reuse.read().unwrap_or_else(|p| p.into_inner());
        drop(g);
        let read = sdev.read_at(&mut buf, soff).map_err(|e| PoolError::Io {
            dev: sdev.name().to_owned(),
            offset: soff,
            source: e,
        });
        let io_err = |e| PoolError::Io {
            dev: ddev.name().to_owned(),
            offset: doff,
            source: e,
        };
        let written = read
            .is_ok()
            .then(|| ddev.write_at(&buf, doff).map_err(io_err));
        // The write is done: the segment may be reused from here on (a reuse rewrites it
        // after this write, and gives it another sequence number). The sync needs no pin.
        drop(pin);
        read?;
        let written = written.map(|w| w.and_then(|()| dgate.sync(ddev.as_ref()).map_err(io_err)));
        let mut g = self.lock();
        if let Some(Err(e)) = written {
            g.fail_pv(dpv, e)?;
            return Ok(Slice::Done(0));
        }
        // Still the segment that was copied, on the PV it was copied to?
        let same = g.seg(seg).state != SEG_FREE
            && g.seg(seg).seq == seq
            && g.pvs
                .pv(dpv)
                .is_ok_and(|p| p.sb.pv_id == dpv_id && p.failed.is_none());
        if same && g.stale_in(seg, fg) {
            g.set_stale(seg, fg, false)?;
            g.flush()?;
        }
        g.mirror.resync_bytes.fetch_add(bytes, Ordering::Relaxed);
        Ok(Slice::Done(bytes))
    }

    /// Bring failed PVs back if they answer, then copy up to `max_segments` stale segments.
    /// Returns the bytes copied.
    pub fn resync_step(&self, max_segments: usize) -> Result<u64> {
        Ok(self.resync_steps(max_segments)?.1)
    }

    /// `resync_step`, also returning how many segments were settled.
    fn resync_steps(&self, max_segments: usize) -> Result<(usize, u64)> {
        if !self.resync_retry()? {
            return Ok((0, 0));
        }
        let (mut n, mut bytes) = (0, 0);
        while n < max_segments {
            match self.resync_slice()? {
                Slice::Idle => break,
                Slice::Done(b) => {
                    n += 1;
                    bytes += b;
                }
            }
        }
        Ok((n, bytes))
    }

    /// Resync until nothing is left to copy (or a PV is still failed); `progress(done, left)`
    /// in bytes after each step. Unthrottled: the caller asked for it and waits. Returns the
    /// bytes copied.
    pub fn resync_wait(&self, progress: &mut dyn FnMut(u64, u64)) -> Result<u64> {
        let mut total = 0;
        loop {
            let (n, b) = self.resync_steps(16)?;
            total += b;
            let left = self.lock().resync_pending();
            progress(total, left);
            if n == 0 || left == 0 {
                return Ok(total);
            }
        }
    }

    /// Background resync, one tick: slices while `th` (set to sspd's `--resync-rate`) allows.
    pub fn resync_background(&self, th: &mut Throttle) -> Result<u64> {
        th.set_rate(self.rates.resync());
        if !self.resync_retry()? {
            return Ok(0);
        }
        let mut total = 0;
        for _ in 0..TICK_SLICES {
            if !th.ready() {
                break;
            }
            match self.resync_slice()? {
                Slice::Idle => break,
                Slice::Done(b) => {
                    th.spend(b);
                    total += b;
                }
            }
        }
        Ok(total)
    }

    /// Set the rates of background maintenance in bytes/s (0: unlimited): the default rate of
    /// a scrub and the rate of background resync.
    pub fn set_maintenance_rates(&self, scrub: u64, resync: u64) {
        self.rates.scrub.store(scrub, Ordering::Relaxed);
        self.rates.resync.store(resync, Ordering::Relaxed);
    }
}
