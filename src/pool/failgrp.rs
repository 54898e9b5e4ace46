//! Failure groups and PVs as `sspctl failgrp` / `pv` see them: adding the second group (which
//! starts the mirror resync), renaming groups, listing PVs and their state. Resync lives in
//! `resync.rs`, scrub in `scrub.rs`.

#![cfg_attr(
    not(test),
    deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)
)]

use super::error::{PoolError, Result};
use super::inner::Inner;
use super::pvs::{geometry, Pv};
use super::{hex, Pool};
use crate::dev::BlockDev;
use crate::format::checkpoint::CKPT_OFFSETS;
use crate::format::node::SEG_FREE;
use crate::format::superblock::{Superblock, SB_OFFSETS};
use crate::format::{BLOCK, BLOCK_U64, INCOMPAT_MIRROR, SEG_BLOCKS};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// One failure group, for `failgrp list`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct FailGroupInfo {
    pub name: String,
    pub id: u32,
    pub pvs: Vec<String>,
    pub size_bytes: u64,
    /// ONLINE, FAILED (a PV failed or is missing) or SYNCING (copies still to make).
    pub state: String,
}

/// One PV, for `pv list`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct PvListEntry {
    pub pool: String,
    pub failure_group: String,
    pub name: String,
    pub size_mb: u64,
    /// ONLINE, FAILED or MISSING.
    pub state: String,
    pub udid: String,
    #[serde(default)]
    pub reason: String,
}

/// What a whole scrub found.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct ScrubReport {
    pub blocks_checked: u64,
    pub errors_found: u64,
    pub errors_repaired: u64,
    /// Blocks with no intact copy (reported with PV and offset in `errors`).
    pub unrepairable: u64,
    pub errors: Vec<String>,
}

impl Inner {
    /// Rewrite both superblock copies of every PV that is up, after `change`: copy A on every
    /// PV, sync, then copy B, sync (FORMAT.md §5.6). A crash or torn write can damage only the
    /// copy being written; the other one verifies (the old version, or the new one once synced).
    pub(super) fn rewrite_superblocks(&mut self, change: &dyn Fn(&mut Superblock)) -> Result<()> {
        let mut new: Vec<Option<Superblock>> = Vec::with_capacity(self.pvs.pvs.len());
        for p in &self.pvs.pvs {
            new.push(p.failed.is_none().then(|| {
                let mut sb = p.sb.clone();
                change(&mut sb);
                sb.generation += 1;
                sb
            }));
        }
        for off in SB_OFFSETS {
            for (i, sb) in new.iter().enumerate() {
                let Some(sb) = sb else { continue };
                if self.pvs.pvs.get(i).is_none_or(|p| p.failed.is_some()) {
                    continue;
                }
                if let Err(e) = self.pvs.write(i as u16, off, &sb.encode()) {
                    self.fail_pv(i as u16, e)?;
                }
            }
            self.sync_pvs()?;
        }
        for (p, sb) in self.pvs.pvs.iter_mut().zip(new) {
            if let Some(sb) = sb {
                p.sb = sb;
            }
        }
        Ok(())
    }
}

impl Pool {
    /// Add the second failure group on `devs` (new PVs, overwritten): every write from now on
    /// goes to both groups, and resync copies the existing segments in the background.
    pub fn failgrp_create(&self, name: &str, devs: Vec<Arc<dyn BlockDev>>) -> Result<()> {
        if name.is_empty() || name.len() > 64 || name.chars().any(|c| c.is_control()) {
            return Err(PoolError::Invalid(format!(
                "failure group name must be 1 to 64 printable bytes: {name:?}"
            )));
        }
        if devs.is_empty() {
            return Err(PoolError::Invalid("give at least one --pv".into()));
        }
        let mut g = self.lock();
        g.check_writable()?;
        if g.pvs.mirrored() {
            return Err(PoolError::Invalid(format!(
                "the pool already has two failure groups ({} and {})",
                g.pvs.group_name(0),
                g.pvs.group_name(1)
            )));
        }
        if g.pvs.group_name(0) == name {
            return Err(PoolError::Exists(format!(
                "failure group {name} already exists"
            )));
        }
        let need = g.segs.len() as u64 - 1;
        let jblocks = g.journal.blocks;
        let template = g.pvs.pv(0)?.sb.clone();
        let base = g.pvs.pvs.len() as u32;
        let mut first = 1u64;
        let mut new = Vec::new();
        for (i, dev) in devs.into_iter().enumerate() {
            let geo = geometry(dev.len(), jblocks)
                .map_err(|e| PoolError::Invalid(format!("{}: {e}", dev.name())))?;
            let mut pv_id = [0u8; 16];
            rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut pv_id);
            let sb = Superblock {
                incompat: template.incompat | INCOMPAT_MIRROR,
                generation: 1,
                pv_id,
                pv_index: base + i as u32,
                fg_id: 1,
                fg_name: name.to_owned(),
                pv_size: dev.len(),
                journal_offset: geo.journal_offset,
                journal_blocks: geo.journal_blocks,
                data_offset: geo.data_offset,
                pv_segments: geo.pv_segments,
                first_pool_segment: first,
                ..template.clone()
            };
            first += geo.pv_segments;
            new.push((dev, sb));
        }
        let have = first - 1;
        if have < need {
            return Err(PoolError::Invalid(format!(
                "failure group {name} would hold {} MiB but the pool needs {} MiB of data segments: give PVs that add up to at least that",
                have,
                need
            )));
        }
        for (dev, sb) in &new {
            Inner::init_pv(dev, sb)?;
        }
        g.write_out_all()?;
        g.rewrite_superblocks(&|sb| sb.incompat |= INCOMPAT_MIRROR)?;
        let mirror_pv = g.pvs.pvs.len() as u16;
        for (dev, sb) in new {
            g.pvs.pvs.push(Pv::new(dev, sb));
        }
        g.journal.mirror = Some(mirror_pv);
        // Every segment in use must be copied to the new group before it is read there.
        for seg in 1..g.segs.len() as u64 {
            if g.seg(seg).state != SEG_FREE {
                g.apply_seg_stale(seg, 1, true);
            }
        }
        g.checkpoint()?;
        tracing::info!(
            "failure group {name} added: mirroring, {} MiB to copy",
            g.resync_pending() >> 20
        );
        Ok(())
    }

    /// Rename a failure group (rewrites its PVs' superblocks).
    pub fn failgrp_rename(&self, old: &str, new: &str) -> Result<()> {
        if new.is_empty() || new.len() > 64 {
            return Err(PoolError::Invalid(format!(
                "failure group name must be 1 to 64 bytes: {new:?}"
            )));
        }
        let mut g = self.lock();
        g.check_writable()?;
        let groups = g.pvs.groups();
        let Some(fg) = groups.iter().copied().find(|&f| g.pvs.group_name(f) == old) else {
            return Err(PoolError::NotFound(format!("failure group {old}")));
        };
        if groups.iter().any(|&f| g.pvs.group_name(f) == new) {
            return Err(PoolError::Exists(format!(
                "failure group {new} already exists"
            )));
        }
        let new = new.to_owned();
        g.rewrite_superblocks(&|sb| {
            if sb.fg_id == fg {
                sb.fg_name = new.clone();
            }
        })
    }

    pub fn failgrp_list(&self) -> Vec<FailGroupInfo> {
        let g = self.lock();
        g.pvs
            .groups()
            .into_iter()
            .map(|fg| {
                let stale = g.segs.iter().skip(1).any(|e| {
                    e.state != SEG_FREE && e.flags & crate::format::node::seg_flag_stale(fg) != 0
                });
                FailGroupInfo {
                    name: g.pvs.group_name(fg),
                    id: fg,
                    pvs: g
                        .pvs
                        .pvs
                        .iter()
                        .filter(|p| p.sb.fg_id == fg)
                        .map(|p| p.dev.name().to_owned())
                        .collect(),
                    size_bytes: g.pvs.group_segments(fg) * SEG_BLOCKS * BLOCK_U64,
                    state: if g.pvs.group_failed(fg) {
                        "FAILED"
                    } else if stale {
                        "SYNCING"
                    } else {
                        "ONLINE"
                    }
                    .into(),
                }
            })
            .collect()
    }

    pub fn pv_list(&self) -> Vec<PvListEntry> {
        let g = self.lock();
        let pool = g
            .pvs
            .pvs
            .first()
            .map(|p| p.sb.pool_name.clone())
            .unwrap_or_default();
        g.pvs
            .pvs
            .iter()
            .map(|p| PvListEntry {
                pool: pool.clone(),
                failure_group: p.sb.fg_name.clone(),
                name: p.dev.name().to_owned(),
                size_mb: p.sb.pv_size >> 20,
                state: match &p.failed {
                    None => "ONLINE",
                    Some(r) if r.contains("missing") || r.contains("No such file") => "MISSING",
                    Some(_) => "FAILED",
                }
                .into(),
                udid: hex(&p.sb.pv_id),
                reason: p.failed.clone().unwrap_or_default(),
            })
            .collect()
    }

    /// Bytes resync still has to copy.
    pub fn resync_left(&self) -> u64 {
        self.lock().resync_pending()
    }

    /// Bytes resync copied since the pool was opened.
    pub fn resync_copied(&self) -> u64 {
        self.lock().mirror.resync_bytes.load(Ordering::Relaxed)
    }

    /// (errors found, errors repaired) by reads, scrubs and resync since the pool was opened.
    pub fn mirror_counters(&self) -> (u64, u64) {
        let g = self.lock();
        (
            g.mirror.errors_found.load(Ordering::Relaxed),
            g.mirror.errors_repaired.load(Ordering::Relaxed),
        )
    }
}

impl Inner {
    /// Write a new PV's superblock (both copies) and clear its checkpoint slots.
    fn init_pv(dev: &Arc<dyn BlockDev>, sb: &Superblock) -> Result<()> {
        // Back the metadata area now, so a full host file system fails here and not later.
        if let Err(e) = dev.reserve(0, sb.data_offset) {
            tracing::warn!("cannot back the metadata area of {}: {e}", dev.name());
        }
        Self::write_sb(dev, sb, true)
    }

    /// Write both superblock copies (after clearing the checkpoint slots if `clear_slots`), one
    /// at a time: copy A, sync, copy B, sync, so a torn write never damages both.
    fn write_sb(dev: &Arc<dyn BlockDev>, sb: &Superblock, clear_slots: bool) -> Result<()> {
        let io = |off: u64, b: &[u8]| {
            dev.write_at(b, off).map_err(|e| PoolError::Io {
                dev: dev.name().to_owned(),
                offset: off,
                source: e,
            })
        };
        let sync = || {
            dev.sync().map_err(|e| PoolError::Io {
                dev: dev.name().to_owned(),
                offset: 0,
                source: e,
            })
        };
        if clear_slots {
            for off in CKPT_OFFSETS {
                io(off, &[0u8; BLOCK])?;
            }
        }
        let buf = sb.encode();
        for off in SB_OFFSETS {
            io(off, &buf)?;
            sync()?;
        }
        Ok(())
    }

    /// Pool segments every failure group can hold: the usable size.
    fn usable_segments(&self) -> u64 {
        self.pvs
            .groups()
            .into_iter()
            .map(|g| self.pvs.group_segments(g))
            .min()
            .unwrap_or(0)
    }

    fn find_group(&self, name: &str) -> Result<u32> {
        self.pvs
            .groups()
            .into_iter()
            .find(|&g| self.pvs.group_name(g) == name)
            .ok_or_else(|| PoolError::NotFound(format!("failure group {name}")))
    }

    fn find_pv(&self, name: &str) -> Result<u16> {
        let want = std::fs::canonicalize(name).unwrap_or_else(|_| name.into());
        self.pvs
            .pvs
            .iter()
            .position(|p| {
                let have =
                    std::fs::canonicalize(p.dev.name()).unwrap_or_else(|_| p.dev.name().into());
                have == want || p.dev.name() == name
            })
            .map(|i| i as u16)
            .ok_or_else(|| PoolError::NotFound(format!("PV {name} is not in the pool")))
    }
}

impl Pool {
    /// Grow failure group `fg` with new PVs, online. The pool grows by what every group can
    /// hold (in a mirrored pool, grow both groups).
    pub fn pv_add(&self, fg: &str, devs: Vec<Arc<dyn BlockDev>>) -> Result<u64> {
        if devs.is_empty() {
            return Err(PoolError::Invalid("give at least one PV".into()));
        }
        let mut g = self.lock();
        g.check_writable()?;
        let fg_id = g.find_group(fg)?;
        let template = g
            .pvs
            .pvs
            .iter()
            .find(|p| p.sb.fg_id == fg_id)
            .map(|p| p.sb.clone())
            .ok_or_else(|| PoolError::Internal(format!("failure group {fg} has no PV")))?;
        let jblocks = g.journal.blocks;
        let mut first = g.pvs.group_segments(fg_id) + 1;
        let mut new = Vec::new();
        for (i, dev) in devs.into_iter().enumerate() {
            let geo = geometry(dev.len(), jblocks)
                .map_err(|e| PoolError::Invalid(format!("{}: {e}", dev.name())))?;
            let mut pv_id = [0u8; 16];
            rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut pv_id);
            let sb = Superblock {
                generation: 1,
                pv_id,
                pv_index: (g.pvs.pvs.len() + i) as u32,
                pv_size: dev.len(),
                journal_offset: geo.journal_offset,
                journal_blocks: geo.journal_blocks,
                data_offset: geo.data_offset,
                pv_segments: geo.pv_segments,
                first_pool_segment: first,
                ..template.clone()
            };
            first += geo.pv_segments;
            new.push((dev, sb));
        }
        for (dev, sb) in &new {
            Inner::init_pv(dev, sb)?;
        }
        g.write_out_all()?;
        for (dev, sb) in new {
            g.pvs.pvs.push(Pv::new(dev, sb));
        }
        let old = g.segs.len() as u64 - 1;
        let usable = g.usable_segments();
        for seg in old + 1..=usable {
            g.segs.push(crate::format::node::SegEntry::default());
            g.segs_dirty.insert(seg);
            g.free.insert(seg);
        }
        g.checkpoint()?;
        Ok(usable.saturating_sub(old) * SEG_BLOCKS * BLOCK_U64)
    }

    /// Replace PV `old` with `new` (at least as large), online. In a mirrored pool the new PV
    /// is filled by resync from the other group (progress in `pool status`); otherwise its
    /// content is copied now, `progress(done, total)` in segments. `commit` runs once the new
    /// PV can stand in for the old one and before the pool switches to it (the pool directory
    /// records the new path there).
    pub fn pv_replace(
        &self,
        old: &str,
        new: Arc<dyn BlockDev>,
        progress: &mut dyn FnMut(u64, u64),
        commit: &mut dyn FnMut() -> Result<()>,
    ) -> Result<()> {
        let mut g = self.lock();
        g.check_writable()?;
        let i = g.find_pv(old)?;
        let osb = g.pvs.pv(i)?.sb.clone();
        if new.len() < osb.pv_size {
            return Err(PoolError::Invalid(format!(
                "{} holds {} MiB but {} holds {} MiB: the new PV must be at least as large",
                new.name(),
                new.len() >> 20,
                old,
                osb.pv_size >> 20
            )));
        }
        let mut sb = osb.clone();
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut sb.pv_id);
        sb.pv_size = new.len();
        sb.generation += 1;
        g.write_out_all()?;
        let range = osb.first_pool_segment..osb.first_pool_segment + osb.pv_segments;
        let others_ok = g
            .pvs
            .groups()
            .into_iter()
            .any(|f| f != osb.fg_id && !g.pvs.group_failed(f));
        if !others_ok {
            // Single copy: copy what the old PV holds (it must still be readable), in slices
            // with the lock released between them; the switch happens under the lock.
            let old_dev = g.pvs.pv(i)?.dev.clone();
            drop(g);
            let head = osb.data_offset;
            let new2 = new.clone();
            return self.pv_copy_sliced(i, &old_dev, &new2, range, head, progress, &mut |g| {
                Inner::write_sb(&new, &sb, false)?;
                commit()?;
                *g.pvs.pv_mut(i)? = Pv::new(new.clone(), sb.clone());
                g.checkpoint()
            });
        }
        // Mirrored: the new PV starts empty; every segment in use on it is copied by resync.
        Inner::write_sb(&new, &sb, false)?;
        commit()?;
        *g.pvs.pv_mut(i)? = Pv::new(new, sb);
        for seg in range {
            if g.segs
                .get(seg as usize)
                .is_some_and(|e| e.state != SEG_FREE)
            {
                g.set_stale(seg, osb.fg_id, true)?;
            }
        }
        g.checkpoint()?;
        progress(0, 1);
        Ok(())
    }
}

impl Pool {
    /// Drop failure group `name`: the pool goes back to a single copy on the other group, which
    /// must be whole (no failed PV, nothing left to resync). Returns the dropped PVs' names.
    pub fn failgrp_remove(&self, name: &str) -> Result<Vec<String>> {
        let mut g = self.lock();
        g.check_writable()?;
        if !g.pvs.mirrored() {
            return Err(PoolError::Invalid(
                "the pool has a single failure group: nothing to remove".into(),
            ));
        }
        let fg = g.find_group(name)?;
        let keep = g
            .pvs
            .groups()
            .into_iter()
            .find(|&f| f != fg)
            .ok_or_else(|| {
                PoolError::Invalid(format!("{name} is the pool's only failure group"))
            })?;
        if g.pvs.group_failed(keep) {
            return Err(PoolError::Invalid(format!(
                "failure group {} has a failed PV: it cannot hold the pool alone",
                g.pvs.group_name(keep)
            )));
        }
        let lagging = g.segs.iter().skip(1).any(|e| {
            e.state != SEG_FREE && e.flags & crate::format::node::seg_flag_stale(keep) != 0
        });
        if lagging {
            return Err(PoolError::Invalid(format!(
                "failure group {} is still being resynced: wait for SYNCED first",
                g.pvs.group_name(keep)
            )));
        }
        let first_removed = g
            .pvs
            .pvs
            .iter()
            .position(|p| p.sb.fg_id == fg)
            .ok_or_else(|| PoolError::Internal(format!("failure group {name} has no PV")))?;
        if g.pvs
            .pvs
            .iter()
            .skip(first_removed)
            .any(|p| p.sb.fg_id != fg)
        {
            return Err(PoolError::Invalid(format!(
                "failure group {name} is not made of the pool's last PVs (PVs were added to \
                 {} after it): this version cannot renumber PVs",
                g.pvs.group_name(keep)
            )));
        }
        g.write_out_all()?;
        g.sync_pvs()?;
        let removed: Vec<String> = g
            .pvs
            .pvs
            .drain(first_removed..)
            .map(|p| p.dev.name().to_owned())
            .collect();
        if usize::from(g.journal.pv) >= first_removed {
            return Err(PoolError::Invalid(
                "the journal lives on the group to remove".into(),
            ));
        }
        g.journal.mirror = None;
        for seg in 1..g.segs.len() as u64 {
            g.apply_seg_stale(seg, fg, false);
        }
        g.rewrite_superblocks(&|sb| sb.incompat &= !INCOMPAT_MIRROR)?;
        g.checkpoint()?;
        tracing::info!("failure group {name} removed: the pool has a single copy now");
        Ok(removed)
    }
}
