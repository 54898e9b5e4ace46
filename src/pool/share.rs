//! Snapshots, clones and rollback, and the exact owned-block accounting that sharing needs.
//!
//! Sharing always keeps a block at the same LU block number (a snapshot or clone starts as the
//! same map), so the only volumes that can hold a data block mapped at `lba` of volume V are
//! the members of V's family at that same `lba`. That keeps every accounting update local:
//! - snapshot/clone create: source and copy share everything, so both own nothing — O(1);
//! - rollback: an undo snapshot takes over exactly what the LU held (its owned count too),
//!   then the LU shares the target snapshot's map — O(1);
//! - a write or unmap that drops a shared block looks the block up in the other family members
//!   and credits the last remaining holder — O(family size × tree depth);
//! - removing a volume credits, per block it shared, the last remaining holder — one pass over
//!   the volume's leaves, comparing leaves of the other members (identical leaves at once).
//!
//! Reading the counters never scans anything.

#![cfg_attr(
    not(test),
    deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)
)]

use super::error::{PoolError, Result};
use super::inner::Inner;
use super::maps::entry_span;
use crate::format::node::{
    map_entry_is_ref, VolRecord, MAP_FANOUT, MAP_ZERO, VOL_FLAG_SHARES_NODES,
};
use crate::format::{BLOCK_U64, INCOMPAT_SHARING};

const FANOUT: u64 = MAP_FANOUT as u64;

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Inner {
    /// Whether this pool may hold snapshots and clones (created with `INCOMPAT_SHARING`).
    pub fn sharing_enabled(&self) -> bool {
        self.pvs
            .pvs
            .first()
            .is_some_and(|p| p.sb.incompat & INCOMPAT_SHARING != 0)
    }

    /// Other volumes that may share blocks with `vol`.
    fn family_of(&self, vol: u64) -> Vec<(u64, u64)> {
        let Some(f) = self.vols.get(&vol).map(|v| v.family) else {
            return Vec::new();
        };
        self.vols
            .values()
            .filter(|v| v.family == f && v.id != vol)
            .map(|v| (v.id, v.size.div_ceil(BLOCK_U64)))
            .collect()
    }

    /// The entry mapped at `lba` of `vol` (a data VBA, 0 if none, [`MAP_ZERO`] for allocated
    /// zeroes), without sharing checks.
    pub fn map_get(&mut self, vol: u64, lba: u64) -> Result<u64> {
        let v = self
            .vols
            .get(&vol)
            .ok_or_else(|| PoolError::NotFound(format!("volume {vol}")))?;
        if lba >= v.size.div_ceil(BLOCK_U64) {
            return Ok(0);
        }
        // One entry per level, no copies: this runs for every family member on a first write.
        let (mut cur, mut level) = (v.map_root, v.map_depth);
        while level > 0 {
            if !map_entry_is_ref(cur) {
                return Ok(cur);
            }
            level -= 1;
            let s = ((lba / entry_span(level)) % FANOUT) as usize;
            cur = self
                .map_node(cur, level)?
                .entries
                .get(s)
                .copied()
                .unwrap_or(0);
        }
        Ok(cur)
    }

    /// The leaf covering `lba` of `vol`: its entries and VBA, if the leaf exists. A zero span
    /// above reads as a leaf of [`MAP_ZERO`] entries whose VBA is [`MAP_ZERO`].
    fn leaf_of(&mut self, vol: u64, lba: u64) -> Result<Option<(Vec<u64>, u64)>> {
        let v = self
            .vols
            .get(&vol)
            .ok_or_else(|| PoolError::NotFound(format!("volume {vol}")))?;
        if lba >= v.size.div_ceil(BLOCK_U64) {
            return Ok(None);
        }
        let (mut cur, mut level) = (v.map_root, v.map_depth);
        while level > 0 {
            if cur == 0 {
                return Ok(None);
            }
            if cur == MAP_ZERO {
                return Ok(Some((vec![MAP_ZERO; MAP_FANOUT], MAP_ZERO)));
            }
            level -= 1;
            if level == 0 {
                return Ok(Some((self.map_node(cur, 0)?.entries.clone(), cur)));
            }
            let s = ((lba / entry_span(level)) % FANOUT) as usize;
            cur = self
                .map_node(cur, level)?
                .entries
                .get(s)
                .copied()
                .unwrap_or(0);
        }
        Ok(None)
    }

    fn add_owned(&mut self, vol: u64, n: u64) {
        if let Some(v) = self.vols.get_mut(&vol) {
            v.owned_blocks += n;
            self.vols_dirty.insert(vol);
        }
    }

    /// `vol` just stopped holding data VBA `vba` at `lba` and the block lives on: if exactly
    /// one other volume still holds it, that volume now owns it.
    pub fn credit_last_holder(&mut self, vol: u64, lba: u64, vba: u64) -> Result<()> {
        let mut holder = None;
        for (m, blocks) in self.family_of(vol) {
            if lba < blocks && self.map_get(m, lba)? == vba {
                if holder.is_some() {
                    return Ok(());
                }
                holder = Some(m);
            }
        }
        if let Some(h) = holder {
            self.add_owned(h, 1);
        }
        Ok(())
    }

    /// `vol` is about to drop its whole map: credit the last remaining holder of every block
    /// it shares with exactly one other volume.
    pub fn release_volume(&mut self, vol: u64) -> Result<()> {
        let Some(v) = self.vols.get(&vol).cloned() else {
            return Ok(());
        };
        if v.map_root == 0 || v.owned_blocks == v.mapped_blocks {
            return Ok(());
        }
        let members = self.family_of(vol);
        if members.is_empty() {
            return Ok(());
        }
        let blocks = v.size.div_ceil(BLOCK_U64);
        let mut credit: Vec<(u64, u64)> = Vec::new();
        let mut leaf_start = 0u64;
        while leaf_start < blocks {
            let Some((mine, my_vba)) = self.leaf_of(vol, leaf_start)? else {
                leaf_start += FANOUT;
                continue;
            };
            let mut count = [0u8; MAP_FANOUT];
            let mut who = [0u64; MAP_FANOUT];
            for &(m, mblocks) in &members {
                if leaf_start >= mblocks {
                    continue;
                }
                let Some((theirs, their_vba)) = self.leaf_of(m, leaf_start)? else {
                    continue;
                };
                let same_leaf = their_vba == my_vba;
                let slots = count.iter_mut().zip(who.iter_mut());
                for ((c, w), (&e, &t)) in slots.zip(mine.iter().zip(theirs.iter())) {
                    if map_entry_is_ref(e) && (same_leaf || t == e) {
                        *c = c.saturating_add(1);
                        *w = m;
                    }
                }
            }
            for (&c, &w) in count.iter().zip(who.iter()) {
                if c == 1 {
                    match credit.last_mut() {
                        Some((h, n)) if *h == w => *n += 1,
                        _ => credit.push((w, 1)),
                    }
                }
            }
            leaf_start += FANOUT;
        }
        for (h, n) in credit {
            self.add_owned(h, n);
        }
        Ok(())
    }

    /// Apply `VolShare`: volume `id` starts as the same map as `src`.
    pub fn apply_share(
        &mut self,
        id: u64,
        src: u64,
        kind: u8,
        udid: [u8; 16],
        name: &str,
    ) -> Result<bool> {
        let Some(s) = self.vols.get(&src).cloned() else {
            return Ok(false);
        };
        if s.map_root != 0 {
            self.incref(s.map_root)?;
        }
        self.next_volume_id = self.next_volume_id.max(id + 1);
        self.epoch += 1;
        let rec = VolRecord {
            id,
            kind,
            flags: VOL_FLAG_SHARES_NODES,
            map_depth: s.map_depth,
            size: s.size,
            udid,
            map_root: s.map_root,
            parent: src,
            family: s.family,
            created_epoch: self.epoch,
            created_time: now_secs(),
            mapped_blocks: s.mapped_blocks,
            owned_blocks: 0,
            name: name.to_owned(),
        };
        if let Some(sv) = self.vols.get_mut(&src) {
            sv.flags |= VOL_FLAG_SHARES_NODES;
            sv.owned_blocks = 0;
        }
        self.vols_dirty.insert(src);
        self.names.insert(name.to_owned(), id);
        self.vols.insert(id, rec);
        self.vols_dirty.insert(id);
        Ok(true)
    }

    /// Apply `VolRollback`: `undo_id` takes over `id`'s map (and what it owned), then `id`
    /// shares `src`'s map.
    pub fn apply_rollback(
        &mut self,
        id: u64,
        src: u64,
        undo_id: u64,
        undo_udid: [u8; 16],
        undo_name: &str,
    ) -> Result<bool> {
        let (Some(v), Some(s)) = (self.vols.get(&id).cloned(), self.vols.get(&src).cloned()) else {
            return Ok(false);
        };
        self.next_volume_id = self.next_volume_id.max(undo_id + 1);
        self.epoch += 1;
        // The undo snapshot is exactly the LU as it was: same map reference, same counts.
        let undo = VolRecord {
            id: undo_id,
            kind: crate::format::node::VOL_SNAPSHOT,
            flags: VOL_FLAG_SHARES_NODES,
            map_depth: v.map_depth,
            size: v.size,
            udid: undo_udid,
            map_root: v.map_root,
            parent: id,
            family: v.family,
            created_epoch: self.epoch,
            created_time: now_secs(),
            mapped_blocks: v.mapped_blocks,
            owned_blocks: v.owned_blocks,
            name: undo_name.to_owned(),
        };
        self.names.insert(undo_name.to_owned(), undo_id);
        self.vols.insert(undo_id, undo);
        self.vols_dirty.insert(undo_id);
        if s.map_root != 0 {
            self.incref(s.map_root)?;
        }
        if let Some(lu) = self.vols.get_mut(&id) {
            lu.map_root = s.map_root;
            lu.map_depth = s.map_depth;
            lu.size = s.size;
            lu.mapped_blocks = s.mapped_blocks;
            lu.owned_blocks = 0;
            lu.flags |= VOL_FLAG_SHARES_NODES;
        }
        if let Some(sv) = self.vols.get_mut(&src) {
            sv.owned_blocks = 0;
            sv.flags |= VOL_FLAG_SHARES_NODES;
        }
        self.vols_dirty.insert(id);
        self.vols_dirty.insert(src);
        Ok(true)
    }

    /// Apply `VolRename`.
    pub fn apply_rename(&mut self, id: u64, name: &str) -> Result<bool> {
        let Some(v) = self.vols.get_mut(&id) else {
            return Ok(false);
        };
        let old = std::mem::replace(&mut v.name, name.to_owned());
        self.names.remove(&old);
        self.names.insert(name.to_owned(), id);
        self.vols_dirty.insert(id);
        Ok(true)
    }

    /// Changed LU blocks between volumes `a` and `b` in `[lba, lba+count)`, as (start, len)
    /// runs. Leaves that are the same node are skipped without looking inside. Entries are
    /// compared as they are: a zero entry differs from a hole (it was allocated since).
    pub fn map_diff(&mut self, a: u64, b: u64, lba: u64, count: u64) -> Result<Vec<(u64, u64)>> {
        let end = lba.saturating_add(count);
        let mut runs: Vec<(u64, u64)> = Vec::new();
        let push = |l: u64, runs: &mut Vec<(u64, u64)>| match runs.last_mut() {
            Some((s, n)) if *s + *n == l => *n += 1,
            _ => runs.push((l, 1)),
        };
        let mut leaf_start = lba - lba % FANOUT;
        while leaf_start < end {
            let la = self.leaf_of(a, leaf_start)?;
            let lb = self.leaf_of(b, leaf_start)?;
            let lo = lba.max(leaf_start);
            let hi = end.min(leaf_start + FANOUT);
            match (&la, &lb) {
                (Some((_, va)), Some((_, vb))) if va == vb => {}
                (None, None) => {}
                _ => {
                    for l in lo..hi {
                        let i = (l - leaf_start) as usize;
                        let ea = la.as_ref().and_then(|(e, _)| e.get(i).copied());
                        let eb = lb.as_ref().and_then(|(e, _)| e.get(i).copied());
                        let (ea, eb) = (ea.unwrap_or(0), eb.unwrap_or(0));
                        if ea != eb {
                            push(l, &mut runs);
                        }
                    }
                }
            }
            leaf_start += FANOUT;
        }
        Ok(runs)
    }

    /// Per block of `[lba, lba+count)` of `vol`: 0 unmapped or zero (no data block), 1 owned,
    /// 2 shared, with the data's pool block address.
    pub fn map_sharing(&mut self, vol: u64, lba: u64, count: u64) -> Result<Vec<(u8, u64)>> {
        let mut out = Vec::with_capacity(count as usize);
        for l in lba..lba.saturating_add(count) {
            let (vba, exclusive) = self.map_lookup(vol, l)?;
            if !map_entry_is_ref(vba) {
                out.push((0, 0));
            } else {
                let pba = self.vba_get(vba)?.pba;
                out.push((if exclusive { 1 } else { 2 }, pba));
            }
        }
        Ok(out)
    }

    /// Every volume's id, map root, map depth and size in blocks.
    pub fn vol_roots(&self) -> Vec<(u64, u64, u8, u64)> {
        self.vols
            .values()
            .map(|v| (v.id, v.map_root, v.map_depth, v.size.div_ceil(BLOCK_U64)))
            .collect()
    }
}

/// Brute-force recount of every volume's mapped and owned blocks (for `check`), over the maps
/// `src` gives: (id, mapped blocks, owned blocks) for each of `vols` ([`Inner::vol_roots`]).
pub fn recount_owned_in(
    src: &mut impl super::resident::MapSource,
    vols: &[(u64, u64, u8, u64)],
) -> Result<Vec<(u64, u64, u64)>> {
    let mut holders: rustc_hash::FxHashMap<u64, u32> = Default::default();
    let mut per_vol: Vec<(u64, Vec<u64>)> = Vec::new();
    for &(id, root, depth, blocks) in vols {
        let vbas: Vec<u64> = super::resident::map_range_in(src, root, depth, 0, blocks)?
            .ok_or_else(|| {
                PoolError::Internal(format!(
                    "map walk of volume {id} found a node it cannot load"
                ))
            })?
            .into_iter()
            .map(|(_, v)| v)
            .collect();
        for &v in &vbas {
            *holders.entry(v).or_insert(0) += 1;
        }
        per_vol.push((id, vbas));
    }
    Ok(per_vol
        .into_iter()
        .map(|(id, vbas)| {
            let owned = vbas.iter().filter(|v| holders.get(v) == Some(&1)).count() as u64;
            (id, vbas.len() as u64, owned)
        })
        .collect())
}
