//! Applying journal records to the pool state. The live path journals a record and then applies
//! it; replay applies the same records after a crash, so both share this code.

#![cfg_attr(
    not(test),
    deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)
)]

use super::error::{PoolError, Result};
use super::inner::Inner;
use super::maps::depth_for;
use crate::format::journal::Record;
use crate::format::node::{map_entry_is_ref, Ptr, VolRecord, MAP_ZERO, VOL_FLAG_SHARES_NODES};
use crate::format::{data_crc, BLOCK_U64};

/// How a record is being applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Just journaled by the live path.
    Live,
    /// Replayed from a journal block that a completed sync is known to have covered: its data
    /// blocks are durable too.
    ReplayDurable,
    /// Replayed from the journal's unsynced tail: data blocks are verified first.
    ReplayUnsure,
}

impl Inner {
    /// Apply one record. During replay a record whose data block did not reach the disk is
    /// skipped (its write was never acknowledged); returns whether it was applied.
    pub fn apply(&mut self, rec: &Record, mode: Mode) -> Result<bool> {
        let replay = mode != Mode::Live;
        let verify = mode == Mode::ReplayUnsure;
        match rec {
            Record::Write {
                vol,
                lba,
                vba,
                pba,
                crc,
            } => {
                if replay {
                    if !self.vols.contains_key(vol) || (verify && !self.data_matches(*pba, *crc)) {
                        return Ok(false);
                    }
                    self.next_vba = self.next_vba.max(vba + 2);
                    self.free_vbas.remove(vba);
                }
                self.apply_write(*vol, *lba, *vba, *pba, *crc, None)?;
                if replay {
                    self.repair_copies(*pba, *crc);
                }
                Ok(true)
            }
            Record::Unmap { vol, lba, count } => {
                if !self.vols.contains_key(vol) {
                    return Ok(false);
                }
                self.apply_unmap(*vol, *lba, *count)?;
                Ok(true)
            }
            Record::Zero { vol, lba, count } => {
                let Some(v) = self.vols.get(vol) else {
                    return Ok(false);
                };
                // Zero entries never reach past the volume's end (check verifies it).
                let blocks = v.size.div_ceil(BLOCK_U64);
                let count = (*count).min(blocks.saturating_sub(*lba));
                self.map_fill(*vol, *lba, count, MAP_ZERO)?;
                Ok(true)
            }
            Record::VolCreate {
                id,
                kind,
                size,
                udid,
                name,
            } => {
                self.next_volume_id = self.next_volume_id.max(id + 1);
                self.epoch += 1;
                let rec = VolRecord {
                    id: *id,
                    kind: *kind,
                    flags: 0,
                    map_depth: depth_for(size.div_ceil(BLOCK_U64)),
                    size: *size,
                    udid: *udid,
                    map_root: 0,
                    parent: 0,
                    family: *id,
                    created_epoch: self.epoch,
                    created_time: std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0),
                    mapped_blocks: 0,
                    owned_blocks: 0,
                    name: name.clone(),
                };
                self.names.insert(name.clone(), *id);
                self.vols.insert(*id, rec);
                self.vols_dirty.insert(*id);
                Ok(true)
            }
            Record::VolProvision { id, thick } => Ok(self.apply_provision(*id, *thick)),
            Record::VolResize { id, size } => {
                let Some(v) = self.vols.get(id) else {
                    return Ok(false);
                };
                let (old_blocks, new_blocks) =
                    (v.size.div_ceil(BLOCK_U64), size.div_ceil(BLOCK_U64));
                if new_blocks < old_blocks {
                    self.apply_unmap(*id, new_blocks, old_blocks - new_blocks)?;
                } else {
                    self.map_grow(*id, new_blocks)?;
                }
                if let Some(v) = self.vols.get_mut(id) {
                    v.size = *size;
                }
                self.vols_dirty.insert(*id);
                Ok(true)
            }
            Record::VolRemove { id } => {
                let Some(v) = self.vols.get(id).cloned() else {
                    return Ok(false);
                };
                if v.map_root != 0 {
                    self.release_volume(*id)?;
                    self.decref(v.map_root, Some(v.map_depth - 1))?;
                }
                self.names.remove(&v.name);
                self.vols.remove(id);
                self.vols_dirty.insert(*id);
                Ok(true)
            }
            Record::GcMove {
                vba,
                old_pba,
                new_pba,
                crc,
            } => {
                let mut p = self.vba_get(*vba)?;
                if p.pba != *old_pba || (verify && !self.data_matches(*new_pba, *crc)) {
                    return Ok(false);
                }
                p.pba = *new_pba;
                self.vba_set(*vba, p)?;
                self.live_dec(*old_pba);
                self.live_inc(*new_pba);
                self.tag(*new_pba, *vba)?;
                if replay {
                    self.repair_copies(*new_pba, *crc);
                }
                Ok(true)
            }
            Record::VolShare {
                id,
                src,
                kind,
                udid,
                name,
            } => self.apply_share(*id, *src, *kind, *udid, name),
            Record::VolRollback {
                id,
                src,
                undo_id,
                undo_udid,
                undo_name,
            } => self.apply_rollback(*id, *src, *undo_id, *undo_udid, undo_name),
            Record::VolRename { id, name } => self.apply_rename(*id, name),
            Record::SegStale { seg, fg, stale } => {
                self.apply_seg_stale(*seg, u32::from(*fg), *stale != 0);
                Ok(true)
            }
            Record::PvState { pv, failed } => {
                if let Some(p) = self.pvs.pvs.get_mut(*pv as usize) {
                    if *failed != 0 {
                        p.failed
                            .get_or_insert_with(|| "failed before the restart".into());
                    } else if replay {
                        // Back before the crash; if it failed again since, I/O will say so.
                        p.failed = None;
                    }
                }
                Ok(true)
            }
        }
    }

    /// Whether the block at `pba` holds data with checksum `crc`.
    /// In a mirrored pool any copy will do: replay may run before the records that say which
    /// copy went stale.
    fn data_matches(&self, pba: u64, crc: u32) -> bool {
        let ok = |b: &[u8]| data_crc(&self.pool_id, b) == crc;
        if self.read_block(pba).is_ok_and(|b| ok(&b)) {
            return true;
        }
        let (seg, slot) = super::pvs::split(pba);
        let mut buf = vec![0u8; crate::format::BLOCK];
        self.pvs.groups().into_iter().any(|fg| {
            self.pvs.locate_in(fg, seg).is_some_and(|(pv, s)| {
                self.pvs
                    .offset(pv, s, slot)
                    .and_then(|off| self.pvs.read(pv, off, &mut buf))
                    .is_ok()
                    && ok(&buf)
            })
        })
    }

    /// `known_old` is the current mapping when the caller just looked it up (the live path).
    pub fn apply_write(
        &mut self,
        vol: u64,
        lba: u64,
        vba: u64,
        pba: u64,
        crc: u32,
        known_old: Option<u64>,
    ) -> Result<()> {
        let old = match known_old {
            Some(o) => o,
            None => self.map_lookup(vol, lba)?.0,
        };
        if old == vba {
            // Overwrite of a block this volume alone holds: only its VBA moves.
            let mut p = self.vba_get(vba)?;
            self.live_dec(p.pba);
            p.pba = pba;
            p.crc = crc;
            self.vba_set(vba, p)?;
        } else {
            self.map_set(vol, lba, vba)?;
            self.vba_set(vba, Ptr { pba, crc, aux: 1 })?;
            self.bump_counts(vol, 1, 1);
            if map_entry_is_ref(old) {
                self.drop_data_ref(vol, lba, old)?;
            }
        }
        self.live_inc(pba);
        self.tag(pba, vba)?;
        self.counters.user_blocks_written += 1;
        self.writes_since_ckpt += 1;
        Ok(())
    }

    /// Unmap `[lba, lba+count)` of `vol` (data and zero entries alike), dropping references
    /// to the data blocks.
    pub fn apply_unmap(&mut self, vol: u64, lba: u64, count: u64) -> Result<()> {
        self.map_fill(vol, lba, count, 0)
    }

    /// `vol` no longer references data VBA `vba` at `lba` (its map entry is already changed,
    /// so a shared path has been shadowed and the count below is exact).
    pub(super) fn drop_data_ref(&mut self, vol: u64, lba: u64, vba: u64) -> Result<()> {
        let owned = self.vba_get(vba)?.aux <= 1;
        let freed = self.decref(vba, None)?;
        self.bump_counts(vol, -1, if owned { -1 } else { 0 });
        if !freed
            && self
                .vols
                .get(&vol)
                .is_some_and(|v| v.flags & VOL_FLAG_SHARES_NODES != 0)
        {
            self.credit_last_holder(vol, lba, vba)?;
        }
        Ok(())
    }

    fn bump_counts(&mut self, vol: u64, mapped: i64, owned: i64) {
        if let Some(v) = self.vols.get_mut(&vol) {
            v.mapped_blocks = v.mapped_blocks.saturating_add_signed(mapped);
            v.owned_blocks = v.owned_blocks.saturating_add_signed(owned);
            self.vols_dirty.insert(vol);
        }
    }

    /// Journal a write record and apply it, reusing the caller's lookup of the old mapping.
    pub fn log_and_apply_write(
        &mut self,
        vol: u64,
        lba: u64,
        vba: u64,
        pba: u64,
        crc: u32,
        old: u64,
    ) -> Result<()> {
        self.check_writable()?;
        self.journal_append(Record::Write {
            vol,
            lba,
            vba,
            pba,
            crc,
        })?;
        let r = self.apply_write(vol, lba, vba, pba, crc, Some(old));
        self.poison_any(r)
    }

    /// Journal a record and apply it.
    pub fn log_and_apply(&mut self, rec: Record) -> Result<()> {
        self.check_writable()?;
        self.journal_append(rec.clone())?;
        let r = self.apply(&rec, Mode::Live);
        self.poison_any(r).map(|_| ())
    }

    /// Any failure while applying a journaled record leaves memory and journal apart.
    fn poison_any<T>(&mut self, r: Result<T>) -> Result<T> {
        if let Err(e) = &r {
            if !matches!(e, PoolError::NoSpace(_)) {
                tracing::error!("pool poisoned while applying a record: {e}");
                self.poisoned = Some(e.to_string());
            }
        }
        r
    }
}
