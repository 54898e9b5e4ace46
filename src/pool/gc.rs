//! The segment cleaner. It picks sealed segments with the fewest live blocks, copies live data
//! blocks to the cleaner's head (journaled as `GcMove`, so only the VBA moves), and marks live
//! metadata nodes dirty so the next checkpoint rewrites them elsewhere. A cleaned segment becomes
//! free once a checkpoint no longer references it.

#![cfg_attr(
    not(test),
    deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)
)]

use super::error::Result;
use super::inner::{Inner, StreamId};
use super::pvs::seg_start;
use crate::format::journal::Record;
use crate::format::node::{decode_node, NodeKind, SEG_DATA, SEG_FREE, SEG_META};
use crate::format::{data_crc, SEG_BLOCKS};

/// What one cleaning pass did.
#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct GcStats {
    pub segments_cleaned: u64,
    pub blocks_moved: u64,
    pub nodes_relocated: u64,
}

impl Inner {
    /// Sealed segments worth cleaning, emptiest first. A segment more than `max_live` full is
    /// not worth the copy.
    pub(super) fn gc_candidates(&self, max_live: u32) -> Vec<u64> {
        let mut c: Vec<(u32, u64)> = (1..self.segs.len() as u64)
            .filter(|&s| {
                let e = self.seg(s);
                e.state != SEG_FREE && !self.is_open(s) && e.live > 0 && e.live <= max_live
            })
            .map(|s| (self.seg(s).live, s))
            .collect();
        c.sort_unstable();
        c.into_iter().map(|(_, s)| s).collect()
    }

    /// Clean up to `max_segments` segments. The caller checkpoints afterwards to free them.
    pub fn gc_run(&mut self, max_segments: usize) -> Result<GcStats> {
        self.check_writable()?;
        let mut st = GcStats::default();
        // Victims cleaned since the last checkpoint (freed only by the next one).
        let mut since_ckpt = 0u32;
        // Never copy more than the reserve can absorb in one pass.
        let max_live = Self::gc_max_live();
        for seg in self.gc_candidates(max_live).into_iter().take(max_segments) {
            if !self.gc_victim(seg, &mut since_ckpt, &mut st, None)? {
                break;
            }
        }
        Ok(st)
    }

    /// Largest live count worth cleaning.
    pub(super) fn gc_max_live() -> u32 {
        (SEG_BLOCKS * 7 / 8) as u32
    }

    /// Clean victim `seg` (its content already read into `pre` when given: the whole segment,
    /// read outside the pool lock). `since_ckpt` counts victims cleaned since the last
    /// checkpoint. Returns false when cleaning must stop for now (no room for the checkpoint).
    pub(super) fn gc_victim(
        &mut self,
        seg: u64,
        since_ckpt: &mut u32,
        st: &mut GcStats,
        pre: Option<&[u8]>,
    ) -> Result<bool> {
        // Moves dirty metadata (VBA pages, nodes) that the next checkpoint must write into
        // the reserve: commit before it outgrows what the reserve can take. The checkpoint
        // also frees the segments cleaned so far.
        if self.maps_dirty + self.vba.dirty_pages() + self.summaries.len() >= self.dirty_cap / 2 {
            self.checkpoint()?;
            *since_ckpt = 0;
        }
        // The victim's blocks may need a new cleaner segment, and each move dirties a VBA
        // page: the checkpoint after them must still fit in what is left. If it would not,
        // commit the victims cleaned so far first (that frees them), else stop.
        if !self.gc_victim_fits(seg) {
            if *since_ckpt == 0 {
                return Ok(false);
            }
            self.checkpoint()?;
            *since_ckpt = 0;
            if !self.gc_victim_fits(seg) {
                return Ok(false);
            }
        }
        match self.seg(seg).state {
            SEG_DATA => st.blocks_moved += self.gc_data_segment(seg, pre)?,
            SEG_META => st.nodes_relocated += self.gc_meta_segment(seg)?,
            _ => return Ok(true),
        }
        st.segments_cleaned += 1;
        self.counters.segments_cleaned += 1;
        *since_ckpt += 1;
        Ok(true)
    }

    /// Whether cleaning `seg` now leaves room for the checkpoint that must follow: its live
    /// blocks (a data segment's go to the cleaner head, one VBA page dirtied per block; a
    /// metadata segment's nodes turn dirty) on top of what is dirty already.
    fn gc_victim_fits(&self, seg: u64) -> bool {
        let Some(e) = self.segs.get(seg as usize) else {
            return false;
        };
        let live = u64::from(e.live);
        let room = match self.streams.get(StreamId::Gc as usize) {
            Some(h) if h.seg != 0 => SEG_BLOCKS.saturating_sub(h.next),
            _ => 0,
        };
        let gc_segs = u64::from(e.state == SEG_DATA && live > room);
        (self.free.len() as u64) >= self.ckpt_need(live + 1) + gc_segs
    }

    fn gc_data_segment(&mut self, seg: u64, pre: Option<&[u8]>) -> Result<u64> {
        self.load_summary(seg)?;
        let tags = self
            .summaries
            .get(&seg)
            .map(|s| s.tags.clone())
            .unwrap_or_default();
        let mut moved = 0;
        for (slot, &vba) in tags.iter().enumerate() {
            if vba == 0 {
                continue;
            }
            let pba = seg_start(seg) + slot as u64;
            let p = self.vba_get(vba)?;
            if p.pba != pba {
                continue; // overwritten or freed since
            }
            let at = slot * crate::format::BLOCK;
            let mut data = match pre.and_then(|b| b.get(at..at + crate::format::BLOCK)) {
                Some(b) if data_crc(&self.pool_id, b) == p.crc => b.to_vec(),
                _ => self.read_block(pba)?,
            };
            if data_crc(&self.pool_id, &data) != p.crc && self.pvs.mirrored() {
                let pid = self.pool_id;
                if let Ok(d) = self.read_verified(pba, &|b| data_crc(&pid, b) == p.crc) {
                    data = d;
                }
            }
            if data_crc(&self.pool_id, &data) != p.crc {
                // Never launder a damaged block into a fresh checksum; leave it for check/scrub.
                let (dev, off) = self.describe(pba);
                tracing::error!(
                    "cleaner: checksum mismatch on {dev} at {off}; block left in place"
                );
                continue;
            }
            let new = self.append(StreamId::Gc, &data)?;
            self.log_and_apply(Record::GcMove {
                vba,
                old_pba: pba,
                new_pba: new,
                crc: p.crc,
            })?;
            self.counters.gc_blocks_moved += 1;
            moved += 1;
        }
        Ok(moved)
    }

    fn gc_meta_segment(&mut self, seg: u64) -> Result<u64> {
        let mut touched = 0;
        for slot in 0..SEG_BLOCKS {
            let pba = seg_start(seg) + slot;
            let Ok(buf) = self.read_block(pba) else {
                continue;
            };
            let Ok((h, _)) = decode_node(&buf, &self.pool_id) else {
                continue;
            };
            let live = match h.kind {
                NodeKind::Map => {
                    if self.vba_get(h.id)?.pba == pba {
                        self.map_node(h.id, h.level)?;
                        self.note_map_dirty(h.id);
                        true
                    } else {
                        false
                    }
                }
                NodeKind::Summary => {
                    let seg_of = h.id as usize;
                    if self.segs.get(seg_of).is_some_and(|e| e.summary == pba) {
                        self.load_summary(h.id)?;
                        if let Some(s) = self.summaries.get_mut(&h.id) {
                            s.dirty = true;
                        }
                        true
                    } else {
                        false
                    }
                }
                NodeKind::Vba => self.touch_page(TreeSel::Vba, h.level, h.id, pba)?,
                NodeKind::SegTab => self.touch_page(TreeSel::Seg, h.level, h.id, pba)?,
                NodeKind::VolDir => self.touch_page(TreeSel::Vol, h.level, h.id, pba)?,
            };
            if live {
                touched += 1;
            }
        }
        Ok(touched)
    }

    fn touch_page(&mut self, which: TreeSel, level: u8, id: u64, pba: u64) -> Result<bool> {
        macro_rules! go {
            ($f:ident) => {{
                let mut t = std::mem::take(&mut self.$f);
                let r = (|| {
                    if t.page_ptr(self, level, id)?.pba == pba {
                        t.touch(self, level, id)?;
                        Ok(true)
                    } else {
                        Ok(false)
                    }
                })();
                self.$f = t;
                r
            }};
        }
        match which {
            TreeSel::Vba => go!(vba),
            TreeSel::Seg => go!(segtab),
            TreeSel::Vol => go!(voldir),
        }
    }
}

enum TreeSel {
    Vba,
    Seg,
    Vol,
}
