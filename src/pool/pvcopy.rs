//! `pv replace` of a single-copy PV in slices. The old PV's segments in use are copied to the
//! new PV one segment (1 MiB) per slice: the pool lock is taken only to look the segment up,
//! and the read and the write run outside it, so clients keep being served. Segments opened
//! while the copy runs (new writes, cleaner moves, checkpoint metadata) are noted in
//! [`Inner::pv_copy_dirty`] from the moment the copy starts, and copied again: a few catch-up
//! passes outside the lock, then a final step under the lock that writes out the streams'
//! buffers, copies the PV's head (superblocks, checkpoint slots, journal ring), the segments
//! still noted and the streams' open segments, and switches the pool to the new PV. A sealed
//! segment is never written again until it is freed and reopened, and reopening notes it, so
//! every segment not noted holds on the new PV what it holds on the old one. Under sspd the copy
//! runs at the resync rate (`--resync-rate`), like the resync that fills a mirrored PV's
//! replacement; offline it is unthrottled.

#![cfg_attr(
    not(test),
    deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)
)]

use super::error::{PoolError, Result};
use super::throttle::Throttle;
use super::Pool;
use crate::dev::BlockDev;
use crate::format::node::SEG_FREE;
use crate::format::{BLOCK_U64, SEG_BLOCKS};
use std::collections::BTreeSet;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Long copies running (capture, single-copy `pv replace`) and their cancellation: `cancel`
/// bumps a generation each copy compares with the one it started under, at every slice
/// boundary.
#[derive(Default)]
pub struct Copies {
    generation: AtomicU64,
    running: AtomicU64,
}

/// A running copy: counted while it lives.
pub(super) struct CopyGuard<'a> {
    copies: &'a Copies,
    generation: u64,
    what: &'static str,
}

impl CopyGuard<'_> {
    /// An error once the copy was cancelled (checked at a slice boundary).
    pub(super) fn check(&self) -> Result<()> {
        if self.copies.generation.load(Ordering::SeqCst) != self.generation {
            return Err(PoolError::InUse(format!("{} cancelled", self.what)));
        }
        Ok(())
    }
}

impl Drop for CopyGuard<'_> {
    fn drop(&mut self) {
        self.copies.running.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Catch-up passes outside the lock before the final step.
const CATCH_UP_PASSES: usize = 4;
/// Noted segments left for the final step without another catch-up pass.
const FINAL_MAX: usize = 8;

fn io_err(dev: &dyn BlockDev, offset: u64, source: std::io::Error) -> PoolError {
    PoolError::Io {
        dev: dev.name().to_owned(),
        offset,
        source,
    }
}

/// Copy `[off, off + len)` from `old` to `new`.
fn copy_range(
    old: &dyn BlockDev,
    new: &dyn BlockDev,
    off: u64,
    buf: &mut Vec<u8>,
    len: usize,
) -> Result<()> {
    buf.resize(len, 0);
    old.read_at(buf, off).map_err(|e| io_err(old, off, e))?;
    new.write_at(buf, off).map_err(|e| io_err(new, off, e))
}

impl Pool {
    /// Start a cancellable copy.
    pub(super) fn copy_start(&self, what: &'static str) -> CopyGuard<'_> {
        self.copies.running.fetch_add(1, Ordering::SeqCst);
        CopyGuard {
            copies: &self.copies,
            generation: self.copies.generation.load(Ordering::SeqCst),
            what,
        }
    }

    /// Cancel the running captures and `pv replace` copies at their next slice boundary (each
    /// then leaves the pool as it was before it started). Returns how many were running.
    pub fn copy_cancel(&self) -> u64 {
        self.copies.generation.fetch_add(1, Ordering::SeqCst);
        self.copies.running.load(Ordering::SeqCst)
    }

    /// Copy the segments in use of PV `pv` (pool segments `range`) from `old` to `new` in
    /// slices, then, under the lock, what changed meanwhile and the PV's head (the first
    /// `head` bytes). Returns holding nothing; on success the new PV holds everything the old
    /// one does as of the final step, which `finish` runs in (still under the lock).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn pv_copy_sliced(
        &self,
        pv: u16,
        old: &Arc<dyn BlockDev>,
        new: &Arc<dyn BlockDev>,
        range: Range<u64>,
        head: u64,
        progress: &mut dyn FnMut(u64, u64),
        finish: &mut dyn FnMut(&mut super::inner::Inner) -> Result<()>,
    ) -> Result<()> {
        {
            // The streams' open segments are still being appended to: copied again at the end.
            let mut g = self.lock();
            let open: BTreeSet<u64> = g.streams.iter().map(|s| s.seg).collect();
            g.pv_copy_dirty = Some(open);
        }
        let guard = self.copy_start("pv replace");
        let r = self.pv_copy_run(pv, old, new, range, head, progress, finish, &guard);
        self.lock().pv_copy_dirty = None;
        r
    }

    #[allow(clippy::too_many_arguments)]
    fn pv_copy_run(
        &self,
        pv: u16,
        old: &Arc<dyn BlockDev>,
        new: &Arc<dyn BlockDev>,
        range: Range<u64>,
        head: u64,
        progress: &mut dyn FnMut(u64, u64),
        finish: &mut dyn FnMut(&mut super::inner::Inner) -> Result<()>,
        guard: &CopyGuard<'_>,
    ) -> Result<()> {
        let seg_bytes = (SEG_BLOCKS * BLOCK_U64) as usize;
        let mut buf = Vec::with_capacity(seg_bytes);
        let total = range.end - range.start;
        // One segment per slice, the lock held only to look it up.
        // Online (sspd) the copy goes at the resync rate, as a mirrored replace's resync does;
        // offline it is unthrottled.
        let online = self.reclaimer.load(std::sync::atomic::Ordering::Relaxed);
        let mut throttle = Throttle::new(if online { self.rates.resync() } else { 0 });
        let mut copy_seg = |seg: u64, buf: &mut Vec<u8>| -> Result<()> {
            std::thread::sleep(throttle.wait_time());
            guard.check()?;
            let at = {
                let g = self.lock();
                if g.pvs.pv(pv)?.dev.name() != old.name() {
                    return Err(PoolError::InUse(
                        "the pool's PVs changed during pv replace".into(),
                    ));
                }
                if g.segs.get(seg as usize).is_none_or(|e| e.state == SEG_FREE) {
                    return Ok(());
                }
                g.pvs.offset(pv, (seg - range.start) as u32, 0)?
            };
            copy_range(old.as_ref(), new.as_ref(), at, buf, seg_bytes)?;
            throttle.spend(seg_bytes as u64);
            Ok(())
        };
        for (k, seg) in range.clone().enumerate() {
            copy_seg(seg, &mut buf)?;
            progress(k as u64 + 1, total);
        }
        for _ in 0..CATCH_UP_PASSES {
            let again: Vec<u64> = {
                let mut g = self.lock();
                let Some(d) = g.pv_copy_dirty.as_mut() else {
                    break;
                };
                if d.len() <= FINAL_MAX {
                    break;
                }
                std::mem::take(d).into_iter().collect()
            };
            for seg in again.into_iter().filter(|s| range.contains(s)) {
                copy_seg(seg, &mut buf)?;
            }
        }
        // The final step: everything still changing, under the lock.
        guard.check()?;
        let mut g = self.lock();
        g.check_writable()?;
        if g.pvs.pv(pv)?.dev.name() != old.name() {
            return Err(PoolError::InUse(
                "the pool's PVs changed during pv replace".into(),
            ));
        }
        g.write_out_all()?;
        g.sync_pvs()?;
        let mut off = 0;
        while off < head {
            let n = (head - off).min(seg_bytes as u64) as usize;
            copy_range(old.as_ref(), new.as_ref(), off, &mut buf, n)?;
            off += n as u64;
        }
        let mut last: BTreeSet<u64> = g.pv_copy_dirty.take().unwrap_or_default();
        last.extend(g.streams.iter().map(|s| s.seg));
        for seg in last.into_iter().filter(|s| range.contains(s)) {
            if g.segs
                .get(seg as usize)
                .is_some_and(|e| e.state != SEG_FREE)
            {
                let at = g.pvs.offset(pv, (seg - range.start) as u32, 0)?;
                copy_range(old.as_ref(), new.as_ref(), at, &mut buf, seg_bytes)?;
            }
        }
        new.sync().map_err(|e| io_err(new.as_ref(), 0, e))?;
        finish(&mut g)
    }
}
