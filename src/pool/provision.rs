//! Thick and thin LUs: space reservations.
//!
//! A thick volume's writes must never fail for want of space however full thin LUs make the
//! pool (SSP `lu -create -thick`). In a log-structured pool every write takes a fresh block, so
//! the worst a thick volume `T` can still add to the pool's live data is a new block for every
//! block it does not hold alone: rewriting a block `T` owns frees the old one, rewriting a shared
//! one (kept by a snapshot or a clone) or writing a hole does not. So `T` reserves
//! `size_blocks(T) - owned_blocks(T)`, kept exact by the owned-block accounting. Thin writes
//! stop (ENOSPC) where taking a new segment would eat into the reservations; thick writes may
//! use them. Anything that raises a reservation (creating or growing a thick LU, making one
//! thick, snapshotting or rolling one back) is refused, with the numbers, when the pool cannot
//! cover the increase. Snapshots, images and clones are thin (clones of a thick LU's snapshot
//! too, as SSP's clones are).

#![cfg_attr(
    not(test),
    deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)
)]

use super::error::{PoolError, Result};
use super::inner::Inner;
use super::{vol_rec, LuInfo, Pool, VOL_LU};
use crate::format::journal::Record;
use crate::format::node::{VolRecord, VOL_FLAG_THICK};
use crate::format::{BLOCK_U64, INCOMPAT_THICK, SEG_BLOCKS};

/// How an LU is provisioned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Provision {
    /// Space is taken when written (the default).
    Thin,
    /// The LU's full size is reserved.
    Thick,
}

impl Provision {
    /// As SSP prints it in `lu -list` (PROVISION_TYPE).
    pub fn name(self) -> &'static str {
        match self {
            Provision::Thin => "THIN",
            Provision::Thick => "THICK",
        }
    }

    pub fn of(v: &VolRecord) -> Provision {
        if v.flags & VOL_FLAG_THICK != 0 {
            Provision::Thick
        } else {
            Provision::Thin
        }
    }
}

/// Blocks volume `v` keeps reserved: 0 for a thin one.
pub fn reserved_blocks(v: &VolRecord) -> u64 {
    match Provision::of(v) {
        Provision::Thin => 0,
        Provision::Thick => v.size.div_ceil(BLOCK_U64).saturating_sub(v.owned_blocks),
    }
}

fn mib(blocks: u64) -> u64 {
    (blocks * BLOCK_U64) >> 20
}

/// Space kept for reservations of `raw` blocks while any volume is thick: the blocks, room
/// for the metadata their writes add (map and VBA-table pages, summaries, journal, and the
/// copies checkpoints make until cleaning reclaims the old ones), a sixteenth more, and four
/// segments a thick volume that owns all its blocks still needs to overwrite them (the old
/// copies are reclaimed after the new ones are written).
pub fn with_metadata(raw: u64) -> u64 {
    raw + raw / 16 + SLACK
}

/// The fixed part of [`with_metadata`].
const SLACK: u64 = 4 * SEG_BLOCKS;

impl Inner {
    /// Blocks reserved for thick volumes now (without their metadata allowance).
    pub fn thick_reserved(&self) -> u64 {
        self.vols.values().map(reserved_blocks).sum()
    }

    /// What thin writes must leave free: [`with_metadata`] of the reservations, or nothing
    /// when no volume is thick.
    fn held_back(&self) -> u64 {
        if self
            .vols
            .values()
            .any(|v| Provision::of(v) == Provision::Thick)
        {
            with_metadata(self.thick_reserved())
        } else {
            0
        }
    }

    /// Blocks for data and reservations: capacity less the cleaner's and metadata's reserve
    /// and the live data.
    fn available(&self) -> u64 {
        let (total, _, live) = self.space();
        total
            .saturating_sub(self.reserve * SEG_BLOCKS)
            .saturating_sub(live)
    }

    /// Blocks the pool can still promise to thick volumes, beyond what it has promised.
    pub fn reservable(&self) -> u64 {
        let room = self.available().saturating_sub(SLACK) * 16 / 17;
        room.saturating_sub(self.thick_reserved())
    }

    /// Refuse `what` if it would raise the reservations by `more` blocks the pool cannot cover.
    pub fn ensure_reservable(&self, more: u64, what: &str) -> Result<()> {
        let can = self.reservable();
        if more <= can {
            return Ok(());
        }
        let (total, _, live) = self.space();
        let have = self.thick_reserved();
        Err(PoolError::NoSpace(format!(
            "{what} needs {} MiB more reserved space, but only {} MiB can be reserved \
             (pool {} MiB, live data {} MiB, already reserved for thick LUs {} MiB and {} MiB \
             for their metadata, kept for metadata and cleaning {} MiB)",
            mib(more),
            mib(can),
            mib(total),
            mib(live),
            mib(have),
            mib(self.held_back().saturating_sub(have)),
            mib(self.reserve * SEG_BLOCKS)
        )))
    }

    /// Free segments a thin volume's writes leave untouched: what covers the reservations and
    /// their metadata, plus one segment for the open data segment thin writes may still fill.
    pub fn thin_floor(&self) -> u64 {
        let r = self.held_back();
        if r == 0 {
            0
        } else {
            r.div_ceil(SEG_BLOCKS) + 1
        }
    }

    /// Whether volume `vol` is thick.
    pub fn is_thick(&self, vol: u64) -> bool {
        self.vols
            .get(&vol)
            .is_some_and(|v| Provision::of(v) == Provision::Thick)
    }

    /// Make volume `id` thick or thin, checking the reservation first.
    fn set_provision(&mut self, id: u64, p: Provision, name: &str) -> Result<()> {
        let v = vol_rec(self, id, name)?;
        if Provision::of(v) == p {
            return Ok(());
        }
        if p == Provision::Thick {
            let more = v.size.div_ceil(BLOCK_U64).saturating_sub(v.owned_blocks);
            self.ensure_reservable(more, &format!("making {name} thick"))?;
        }
        // No older reader stops replay at the record or writes into the reservations.
        self.require_incompat(INCOMPAT_THICK, "INCOMPAT_THICK (its first thick LU)")?;
        self.log_and_apply(Record::VolProvision {
            id,
            thick: u8::from(p == Provision::Thick),
        })?;
        Ok(())
    }

    /// Apply a `VolProvision` record.
    pub(super) fn apply_provision(&mut self, id: u64, thick: u8) -> bool {
        let Some(v) = self.vols.get_mut(&id) else {
            return false;
        };
        if thick != 0 {
            v.flags |= VOL_FLAG_THICK;
        } else {
            v.flags &= !VOL_FLAG_THICK;
        }
        self.vols_dirty.insert(id);
        true
    }

    /// Refuse growing volume `id` to `size` bytes if it is thick and the pool cannot reserve
    /// the growth.
    pub(super) fn ensure_resize_reservable(&self, id: u64, size: u64, name: &str) -> Result<()> {
        let Some(v) = self.vols.get(&id) else {
            return Ok(());
        };
        if Provision::of(v) == Provision::Thin {
            return Ok(());
        }
        let more = size
            .div_ceil(BLOCK_U64)
            .saturating_sub(v.size.div_ceil(BLOCK_U64));
        self.ensure_reservable(more, &format!("growing thick LU {name}"))
    }

    /// Refuse snapshotting the volumes `ids` if the thick ones among them cannot keep their
    /// guarantee: every block a snapshot shares is one the volume no longer owns alone.
    pub(super) fn ensure_snapshot_reservable(&self, ids: &[u64]) -> Result<()> {
        let more: u64 = ids
            .iter()
            .filter_map(|id| self.vols.get(id))
            .filter(|v| Provision::of(v) == Provision::Thick)
            .map(|v| v.owned_blocks)
            .sum();
        self.ensure_reservable(more, "snapshotting a thick LU")
    }

    /// Refuse rolling thick volume `id` back to snapshot `snap` if the pool cannot reserve what
    /// it then needs: the snapshot's size, none of it owned alone.
    pub(super) fn ensure_rollback_reservable(&self, id: u64, snap: u64) -> Result<()> {
        let (Some(v), Some(s)) = (self.vols.get(&id), self.vols.get(&snap)) else {
            return Ok(());
        };
        if Provision::of(v) == Provision::Thin {
            return Ok(());
        }
        let after = s.size.div_ceil(BLOCK_U64);
        let more = after.saturating_sub(reserved_blocks(v));
        self.ensure_reservable(more, &format!("rolling thick LU {} back", v.name))
    }
}

impl Pool {
    /// Create an LU, thin or thick. A thick one is refused, with the numbers, when the pool
    /// cannot reserve its size.
    pub fn lu_create_provisioned(&self, name: &str, size: u64, p: Provision) -> Result<LuInfo> {
        if p == Provision::Thick {
            // Refused before anything is created.
            self.lock().ensure_reservable(
                size.div_ceil(BLOCK_U64),
                &format!("thick LU {name} of {} MiB", size >> 20),
            )?;
        }
        let info = self.lu_create(name, size)?;
        if p == Provision::Thin {
            return Ok(info);
        }
        let made = {
            let mut g = self.lock();
            g.set_provision(info.id, p, name).and_then(|()| g.flush())
        };
        if let Err(e) = made {
            // Space went to someone else meanwhile: the LU is not left behind half made.
            let _ = self.lu_remove(name);
            return Err(e);
        }
        self.lu_get(name)
    }

    /// `lu modify --thick|--thin`: change how an LU (or clone) is provisioned.
    pub fn lu_set_provision(&self, name: &str, p: Provision) -> Result<LuInfo> {
        {
            let mut g = self.lock();
            let id = *g
                .names
                .get(name)
                .ok_or_else(|| PoolError::NotFound(name.into()))?;
            let v = vol_rec(&g, id, name)?;
            if v.kind != VOL_LU {
                return Err(PoolError::Invalid(format!(
                    "{name} is not an LU: snapshots and images are always thin"
                )));
            }
            g.check_vol_writable(id)?;
            g.set_provision(id, p, name)?;
            g.flush()?;
        }
        self.lu_get(name)
    }
}
