//! Background cleaning in slices: one victim segment at a time. The pool lock is taken to pick
//! the victim and again to move its live blocks; the victim's content (1 MiB) is read in
//! between, outside the lock, with the `reuse` pin held so the segment cannot be reused under
//! the read. A sealed segment is never written again until it is freed and reopened (which
//! gives it another sequence number), so the moves use what was read when the segment still
//! has the same number; a block whose checksum does not match is read again under the lock.

#![cfg_attr(
    not(test),
    deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)
)]

use super::error::Result;
use super::gc::GcStats;
use super::inner::Inner;
use super::pvs::seg_start;
use super::Pool;
use crate::format::node::SEG_DATA;
use crate::format::{BLOCK_U64, SEG_BLOCKS};

/// Victims one background pass cleans at most.
const PASS_VICTIMS: usize = 4;

impl Pool {
    /// Background upkeep: clean while free space is below a quarter of the pool, one victim
    /// per slice, then commit (which frees the victims).
    pub fn maintenance(&self) -> Result<GcStats> {
        let mut st = GcStats::default();
        let mut since_ckpt = 0u32;
        let mut tried: Vec<u64> = Vec::new();
        for _ in 0..PASS_VICTIMS {
            let mut g = self.lock();
            let total = g.segs.len() as u64 - 1;
            if (g.free.len() as u64) * 4 >= total || g.poisoned.is_some() {
                break;
            }
            g.check_writable()?;
            let Some(seg) = g
                .gc_candidates(Inner::gc_max_live())
                .into_iter()
                .find(|s| !tried.contains(s))
            else {
                break;
            };
            tried.push(seg);
            let mut pre = None;
            if g.seg(seg).state == SEG_DATA {
                let seq = g.seg(seg).seq;
                let first = g.copies(seg_start(seg))?.into_iter().next();
                if let Some((pv, off)) = first {
                    let dev = g.pvs.pv(pv)?.dev.clone();
                    let pin = self.reuse.read().unwrap_or_else(|p| p.into_inner());
                    drop(g);
                    let mut buf = vec![0u8; (SEG_BLOCKS * BLOCK_U64) as usize];
                    let ok = dev.read_at(&mut buf, off).is_ok();
                    drop(pin);
                    g = self.lock();
                    if g.seg(seg).state != SEG_DATA || g.seg(seg).seq != seq {
                        continue; // freed (and maybe reused) meanwhile
                    }
                    pre = ok.then_some(buf);
                }
            }
            if !g.gc_victim(seg, &mut since_ckpt, &mut st, pre.as_deref())? {
                break;
            }
        }
        if st.segments_cleaned > 0 {
            self.lock().checkpoint()?;
        }
        Ok(st)
    }
}
