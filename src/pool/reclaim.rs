//! Large removals in slices. Removing a volume (`lu remove`, `snapshot remove`, `image remove`,
//! a capture cut short) is one journal record: a `VolRename` to the reserved name
//! `.removing.<id>`. From that record on the volume is gone for clients (its name is free, it is
//! listed nowhere, I/O to it fails with not-found) and it is "being removed". Its space is given
//! back afterwards by the background thread, in slices: each slice takes the pool lock, finds
//! the next mapped LU block of the volume and journals one `Unmap` of at most
//! [`SLICE_LEAVES`] map leaves from there, so one lock hold drops a bounded number of block
//! references. When nothing is mapped any more the volume is dropped with a `VolRemove`, which
//! then has no map to walk.
//!
//! The reserved name is the durable "being removed" state: user names never start with '.'
//! (`validate_name`), the rename and every `Unmap` are ordinary journal records, so a crash
//! mid-reclaim leaves a hidden volume with part of its map gone, and the next open (sspd's
//! background thread) carries on from whatever is still mapped. Accounting stays exact at every
//! point because each slice is the same unmap a client trim does: owned/shared counts and the
//! credit to the last holder of a shared block move with each dropped reference, and the
//! blocks freed become free space as slices complete (after the next checkpoint, as for trims).

#![cfg_attr(
    not(test),
    deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)
)]

use super::error::Result;
use super::inner::Inner;
use super::maps::entry_span;
use super::throttle::Throttle;
use super::Pool;
use crate::format::journal::Record;
use crate::format::node::{map_entry_is_ref, VolRecord, MAP_FANOUT};
use crate::format::BLOCK_U64;

/// Prefix of the name a volume being removed carries (never a user name: those cannot start
/// with '.').
pub const REMOVING_PREFIX: &str = ".removing.";

/// Map leaves one slice unmaps at most (each names up to `MAP_FANOUT` blocks).
pub const SLICE_LEAVES: u64 = 8;

/// A volume mapping at most one slice's blocks and spanning at most this many leaves is removed
/// in one step (its walk is as short as a slice's).
const ONE_STEP_LEAVES: u64 = 1024;

/// Default rate of background reclaim, in bytes of removed LU data released per second.
pub const DEFAULT_RATE: u64 = 4 << 30;

/// Whether `v` is being removed.
pub fn is_removing(v: &VolRecord) -> bool {
    v.name.starts_with(REMOVING_PREFIX)
}

/// Whether a volume named `name` is hidden from clients and listings (a capture in progress or
/// a volume being removed).
pub fn is_hidden(name: &str) -> bool {
    name.starts_with('.')
}

/// What one reclaim slice did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SliceDone {
    /// Mapped blocks (data references) the slice dropped.
    pub blocks: u64,
    /// A volume was dropped for good.
    pub removed: bool,
}

impl Inner {
    /// Start removing volume `id`: one journal record hides it and frees its name. A volume
    /// whose removal is no more work than a slice is removed at once. Returns the blocks it alone held, which become
    /// free as the background reclaim proceeds.
    pub fn begin_remove(&mut self, id: u64) -> Result<u64> {
        let Some(v) = self.vols.get(&id).cloned() else {
            return Ok(0);
        };
        if is_removing(&v) {
            return Ok(v.owned_blocks);
        }
        // A volume no bigger than one slice's work goes in one step, as does any volume of a
        // pool without `INCOMPAT_SHARING` (which the rename needs).
        let leaf = MAP_FANOUT as u64;
        let small = v.mapped_blocks <= SLICE_LEAVES * leaf
            && v.size.div_ceil(BLOCK_U64) <= ONE_STEP_LEAVES * leaf;
        if !map_entry_is_ref(v.map_root) || small || !self.sharing_enabled() {
            self.log_and_apply(Record::VolRemove { id })?;
        } else {
            self.log_and_apply(Record::VolRename {
                id,
                name: format!("{REMOVING_PREFIX}{id}"),
            })?;
        }
        Ok(v.owned_blocks)
    }

    /// Volumes being removed, lowest id first.
    pub fn removing(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .vols
            .values()
            .filter(|v| is_removing(v))
            .map(|v| v.id)
            .collect();
        v.sort_unstable();
        v
    }

    /// Mapped blocks still held by volumes being removed.
    pub fn removing_blocks(&self) -> u64 {
        self.vols
            .values()
            .filter(|v| is_removing(v))
            .map(|v| v.mapped_blocks)
            .sum()
    }

    /// The first LU block at or after `from` that the map of `vol` does not leave a hole
    /// (data or a zero span), or `None`. Visits only the nodes on the way to it.
    fn next_mapped(&mut self, vol: u64, from: u64) -> Result<Option<u64>> {
        let (root, depth) = self.map_root(vol)?;
        if root == 0 {
            return Ok(None);
        }
        if !map_entry_is_ref(root) {
            return Ok(Some(from));
        }
        self.next_mapped_in(root, depth - 1, 0, from)
    }

    fn next_mapped_in(
        &mut self,
        node: u64,
        level: u8,
        base: u64,
        from: u64,
    ) -> Result<Option<u64>> {
        let span = entry_span(level);
        let first = (from.saturating_sub(base) / span).min(MAP_FANOUT as u64) as usize;
        for i in first..MAP_FANOUT {
            let e = self.map_node(node, level)?.entry(i)?;
            if e == 0 {
                continue;
            }
            let cb = base + i as u64 * span;
            if level == 0 || !map_entry_is_ref(e) {
                return Ok(Some(cb.max(from)));
            }
            if let Some(l) = self.next_mapped_in(e, level - 1, cb, from.max(cb))? {
                return Ok(Some(l));
            }
        }
        Ok(None)
    }

    /// One slice of reclaim for volume `id` (which must be being removed).
    pub fn reclaim_slice(&mut self, id: u64) -> Result<SliceDone> {
        let Some(v) = self.vols.get(&id) else {
            return Ok(SliceDone::default());
        };
        let (mapped, blocks) = (v.mapped_blocks, v.size.div_ceil(BLOCK_U64));
        let next = if map_entry_is_ref(v.map_root) {
            self.next_mapped(id, 0)?
        } else {
            None
        };
        let Some(lba) = next.filter(|&l| l < blocks) else {
            self.log_and_apply(Record::VolRemove { id })?;
            return Ok(SliceDone {
                blocks: mapped,
                removed: true,
            });
        };
        // Whole leaves from the one holding `lba`, so no slice leaves a half-emptied leaf.
        let leaf = MAP_FANOUT as u64;
        let start = lba - lba % leaf;
        let count = (SLICE_LEAVES * leaf).min(blocks - start);
        self.log_and_apply(Record::Unmap {
            vol: id,
            lba: start,
            count,
        })?;
        if self
            .next_mapped(id, start)?
            .is_some_and(|l| l < start + count)
        {
            // The unmap left the range mapped: an engine invariant broken. Drop the volume
            // in one go rather than retry the same slice for ever.
            tracing::error!("reclaim of volume {id}: blocks {start}+{count} still mapped");
            let mapped = self.vols.get(&id).map_or(0, |v| v.mapped_blocks);
            self.log_and_apply(Record::VolRemove { id })?;
            return Ok(SliceDone {
                blocks: mapped,
                removed: true,
            });
        }
        let left = self.vols.get(&id).map_or(0, |v| v.mapped_blocks);
        Ok(SliceDone {
            blocks: mapped.saturating_sub(left),
            removed: false,
        })
    }
}

impl Pool {
    /// Rate of background reclaim, in bytes of removed data per second (0: unlimited).
    pub fn set_reclaim_rate(&self, rate: u64) {
        self.rates
            .reclaim
            .store(rate, std::sync::atomic::Ordering::Relaxed);
    }

    /// One reclaim slice of the first volume being removed, under one hold of the pool lock.
    /// `None` when no volume is being removed.
    pub fn reclaim_step(&self) -> Result<Option<SliceDone>> {
        let mut g = self.lock();
        let Some(&id) = g.removing().first() else {
            return Ok(None);
        };
        g.check_writable()?;
        let d = g.reclaim_slice(id)?;
        if d.removed {
            g.flush()?;
        }
        g.checkpoint_step()?;
        g.trim_caches();
        Ok(Some(d))
    }

    /// Reclaim slices until no volume is being removed, or until the throttle asks to wait
    /// (background work: the caller comes back later). Returns whether work is left.
    pub fn reclaim_background(&self, throttle: &mut Throttle) -> Result<bool> {
        throttle.set_rate(self.rates.reclaim());
        loop {
            if !throttle.ready() {
                return Ok(true);
            }
            match self.reclaim_step()? {
                None => return Ok(false),
                Some(d) => {
                    metrics::counter!("ssp_reclaim_blocks_total").increment(d.blocks);
                    throttle.spend(d.blocks.max(1) * BLOCK_U64);
                }
            }
            // Let waiting clients have the lock between slices.
            std::thread::yield_now();
        }
    }

    /// After a removal: reclaim its space now, slice by slice, unless a background thread
    /// does it.
    pub(super) fn reclaim_unless_background(&self) -> Result<()> {
        if self.reclaimer.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(());
        }
        self.reclaim_all()
    }

    /// Reclaim everything being removed now, slice by slice (tools and tests without sspd).
    pub fn reclaim_all(&self) -> Result<()> {
        while self.reclaim_step()?.is_some() {}
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dev::{BlockDev, MemDev};
    use crate::pool::{CreateOptions, Options};
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    const MB: u64 = 1 << 20;

    fn pool() -> Pool {
        let dev: Arc<dyn BlockDev> = Arc::new(MemDev::new("mem0", 256 * MB));
        let copts = CreateOptions {
            name: "t".into(),
            journal_blocks: 1024,
        };
        let p = Pool::create(vec![dev], &copts, Options::default()).expect("create");
        // As under sspd: removals leave the reclaim to `reclaim_step`.
        p.reclaimer.store(true, Ordering::Relaxed);
        p
    }

    fn check(p: &Pool) {
        let rep = p.check().expect("check runs");
        assert!(rep.errors.is_empty(), "{:#?}", rep.errors);
    }

    /// A snapshot sharing a 40 MiB LU's map is removed in slices: each slice drops at most
    /// `SLICE_LEAVES` leaves of references, `check` passes between slices, and at the end the
    /// LU owns every block it maps, as a one-step removal leaves it.
    #[test]
    fn a_shared_snapshot_is_reclaimed_in_bounded_exact_slices() {
        let p = pool();
        let id = p.lu_create("a", 64 * MB).expect("lu").id;
        let chunk: Vec<u8> = (0..MB as usize).map(|i| (i % 251) as u8 + 1).collect();
        for i in 0..40 {
            p.write(id, i * MB, &chunk, false).expect("write");
        }
        p.snapshot_create(&["a@s"]).expect("snapshot");
        // The LU rewrites its first 8 MiB: the snapshot alone holds the old blocks there.
        for i in 0..8 {
            p.write(id, i * MB, &vec![7u8; MB as usize], false)
                .expect("write");
        }
        let held = p.snapshot_remove("a@s").expect("remove");
        assert_eq!(held, 8 * 256);
        assert!(p.snapshot_list(None).expect("list").is_empty());
        assert_eq!(p.lock().removing().len(), 1);
        let mut steps = 0;
        let mut left = p.lock().removing_blocks();
        while let Some(d) = p.reclaim_step().expect("slice") {
            steps += 1;
            assert!(d.blocks <= SLICE_LEAVES * MAP_FANOUT as u64, "{d:?}");
            let now = p.lock().removing_blocks();
            assert!(d.removed || now + d.blocks == left, "{d:?} {now} {left}");
            left = now;
            check(&p);
            assert!(steps < 100);
        }
        assert!(steps >= 3, "{steps} slices");
        let a = p.lu_get("a").expect("a");
        assert_eq!((a.mapped_blocks, a.owned_blocks), (40 * 256, 40 * 256));
        assert_eq!(p.lock().removing_blocks(), 0);
    }

    /// A capture cancelled at a slice boundary leaves nothing behind: no image, the partial
    /// copy reclaimed, the source unchanged and `check` passing.
    #[test]
    fn a_cancelled_capture_leaves_nothing_behind() {
        let p = pool();
        p.reclaimer.store(false, Ordering::Relaxed);
        let id = p.lu_create("a", 16 * MB).expect("lu").id;
        for i in 0..8 {
            p.write(id, i * MB, &vec![i as u8 + 1; MB as usize], false)
                .expect("write");
        }
        let before = p.lu_get("a").expect("a");
        let mut calls = 0;
        let r = p.image_capture("a", "img", &mut |_, _| {
            calls += 1;
            if calls == 2 {
                assert_eq!(p.copy_cancel(), 1);
            }
        });
        let e = r.expect_err("cancelled");
        assert!(e.to_string().contains("cancelled"), "{e}");
        assert_eq!(calls, 2, "stopped at the next slice boundary");
        assert!(p.image_list().is_empty());
        assert_eq!(p.lock().removing().len(), 0);
        let after = p.lu_get("a").expect("a");
        assert_eq!(
            (after.mapped_blocks, after.owned_blocks),
            (before.mapped_blocks, before.owned_blocks)
        );
        check(&p);
        // The next capture is not affected by the earlier cancel.
        p.image_capture("a", "img", &mut |_, _| {})
            .expect("capture");
        check(&p);
    }
}
