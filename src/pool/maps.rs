//! Block maps: each volume's radix tree from LU block to data VBA.
//!
//! Nodes are addressed by VBA, so a checkpoint or the cleaner can move a node by changing only its
//! VBA-table entry, and several volumes (snapshots, clones) can share a subtree. Sharing is
//! copy-on-write: a node whose reference count is above one is copied ("shadowed") before it is
//! changed, and the copy takes a reference on every child. Reads walk one tree, never a chain of
//! parents.

#![cfg_attr(
    not(test),
    deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)
)]

use super::error::{PoolError, Result};
use super::inner::Inner;
use super::ptree::NodeIo;
use super::resident::{map_range_in, map_runs_in};
#[cfg(doc)]
use crate::format::node::MAP_ZERO;
use crate::format::node::{
    decode_node, decode_u64s, map_entry_is_ref, NodeKind, Ptr, MAP_FANOUT, VOL_FLAG_SHARES_NODES,
};
use std::sync::atomic::{AtomicU64, Ordering};

/// What a run of LU blocks holds, as the block map says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapKind {
    /// Unmapped: reads as zeroes and uses no space.
    Hole,
    /// Allocated and reads as zeroes, with no data block ([`MAP_ZERO`]).
    Zero,
    /// Backed by data blocks.
    Data,
}

/// A cached block-map node.
pub struct MapNode {
    pub level: u8,
    pub entries: Vec<u64>,
    pub count: u32,
    pub dirty: bool,
    /// Last use (LRU); atomic so readers holding the pool's read side can record it.
    pub tick: AtomicU64,
    pub owner: u64,
}

impl MapNode {
    /// Entry `i`; an index past the node is an engine invariant broken, not a panic.
    pub fn entry(&self, i: usize) -> Result<u64> {
        self.entries.get(i).copied().ok_or_else(|| self.bad_slot(i))
    }

    /// Entry `i`, mutable (see [`MapNode::entry`]).
    fn entry_mut(&mut self, i: usize) -> Result<&mut u64> {
        let len = self.entries.len();
        self.entries
            .get_mut(i)
            .ok_or_else(|| PoolError::Internal(format!("map entry {i} of a {len}-entry node")))
    }

    fn bad_slot(&self, i: usize) -> PoolError {
        PoolError::Internal(format!(
            "map entry {i} of a {}-entry node",
            self.entries.len()
        ))
    }
}

/// Map tree height needed for `blocks` LU blocks.
pub fn depth_for(blocks: u64) -> u8 {
    let mut d = 1u8;
    let mut cap = MAP_FANOUT as u64;
    while cap < blocks {
        cap = cap.saturating_mul(MAP_FANOUT as u64);
        d += 1;
    }
    d
}

/// Blocks covered by one entry of a node at `level`.
pub fn entry_span(level: u8) -> u64 {
    (MAP_FANOUT as u64).saturating_pow(u32::from(level))
}

fn slot(lba: u64, level: u8) -> usize {
    ((lba / entry_span(level)) % MAP_FANOUT as u64) as usize
}

impl Inner {
    pub fn vba_get(&mut self, vba: u64) -> Result<Ptr> {
        // The tree reads pages through `self`; lend it out while it works.
        let mut t = std::mem::take(&mut self.vba);
        let r = t.get(self, vba);
        self.vba = t;
        r
    }

    pub fn vba_set(&mut self, vba: u64, p: Ptr) -> Result<()> {
        let mut t = std::mem::take(&mut self.vba);
        let r = t.set(self, vba, p);
        self.vba = t;
        r
    }

    /// Read map node `vba` (at `level`) from its block `ptr`, without caching it.
    pub fn read_map_node(&self, vba: u64, level: u8, ptr: Ptr) -> Result<MapNode> {
        if ptr.pba == 0 {
            return Err(PoolError::Invalid(format!(
                "map node VBA {vba} has no block"
            )));
        }
        let corrupt = |source| {
            let (dev, offset) = self.describe(ptr.pba);
            PoolError::Corrupt {
                dev,
                offset,
                source,
            }
        };
        let buf = self.read_node(ptr, NodeKind::Map, level, vba)?;
        let (h, payload) = decode_node(&buf, &self.pool_id).map_err(corrupt)?;
        let entries = decode_u64s(payload, MAP_FANOUT).map_err(corrupt)?;
        let count = entries.iter().filter(|&&e| e != 0).count() as u32;
        Ok(MapNode {
            level,
            entries,
            count,
            dirty: false,
            tick: AtomicU64::new(0),
            owner: h.owner,
        })
    }

    /// Make map node `vba` resident and return it.
    pub fn map_node(&mut self, vba: u64, level: u8) -> Result<&mut MapNode> {
        *self.map_tick.get_mut() += 1;
        if !self.maps.contains_key(&vba) {
            let ptr = self.vba_get(vba)?;
            let node = self.read_map_node(vba, level, ptr)?;
            self.maps.insert(vba, node);
        }
        let tick = *self.map_tick.get_mut();
        let n = self.maps.get_mut(&vba).ok_or_else(|| {
            PoolError::Internal(format!("map node {vba} vanished from the cache"))
        })?;
        *n.tick.get_mut() = tick;
        Ok(n)
    }

    /// The data VBA mapped at `lba` of volume `vol` (0 = unmapped, [`MAP_ZERO`] = allocated
    /// zeroes), and whether the block is referenced by this volume alone (every node on the
    /// path and the block itself unshared; never for 0 or [`MAP_ZERO`]).
    pub fn map_lookup(&mut self, vol: u64, lba: u64) -> Result<(u64, bool)> {
        let v = self
            .vols
            .get(&vol)
            .ok_or_else(|| PoolError::NotFound(format!("volume {vol}")))?;
        let (mut cur, depth) = (v.map_root, v.map_depth);
        // Node reference counts matter only where snapshots or clones may share nodes.
        let check_nodes = v.flags & VOL_FLAG_SHARES_NODES != 0;
        let mut exclusive = true;
        let mut level = depth;
        while level > 0 {
            if !map_entry_is_ref(cur) {
                return Ok((cur, false));
            }
            level -= 1;
            if check_nodes {
                exclusive &= self.vba_get(cur)?.aux <= 1;
            }
            cur = self.map_node(cur, level)?.entry(slot(lba, level))?;
        }
        if !map_entry_is_ref(cur) {
            return Ok((cur, false));
        }
        exclusive &= self.vba_get(cur)?.aux <= 1;
        Ok((cur, exclusive))
    }

    /// Add one reference to a VBA.
    pub fn incref(&mut self, vba: u64) -> Result<()> {
        let mut p = self.vba_get(vba)?;
        p.aux += 1;
        self.vba_set(vba, p)
    }

    /// Drop one reference to a VBA; at zero the block is freed (a node frees its children).
    /// `level` is `Some(l)` for a map node at level `l`, `None` for a data block.
    /// Returns true when the block was freed.
    pub fn decref(&mut self, vba: u64, level: Option<u8>) -> Result<bool> {
        let mut stack = vec![(vba, level)];
        let mut first_freed = false;
        let mut first = true;
        while let Some((v, lvl)) = stack.pop() {
            let mut p = self.vba_get(v)?;
            if p.aux > 1 {
                p.aux -= 1;
                self.vba_set(v, p)?;
                first = false;
                continue;
            }
            if let Some(l) = lvl {
                let children: Vec<u64> = self
                    .map_node(v, l)?
                    .entries
                    .iter()
                    .copied()
                    .filter(|&e| map_entry_is_ref(e))
                    .collect();
                let child_level = if l == 0 { None } else { Some(l - 1) };
                stack.extend(children.into_iter().map(|c| (c, child_level)));
                if self.maps.remove(&v).is_some_and(|n| n.dirty) {
                    self.maps_dirty -= 1;
                }
            }
            self.live_dec(p.pba);
            self.vba_set(v, Ptr::default())?;
            self.release_vba(v);
            if first {
                first_freed = true;
                first = false;
            }
        }
        Ok(first_freed)
    }

    /// Mark a cached map node dirty (it is written at the next checkpoint).
    pub fn note_map_dirty(&mut self, vba: u64) {
        if let Some(n) = self.maps.get_mut(&vba) {
            if !n.dirty {
                n.dirty = true;
                self.maps_dirty += 1;
            }
        }
    }

    /// A new dirty map node at `level` whose every entry is `fill` (0: empty, [`MAP_ZERO`]: the
    /// split of a zero span); returns its VBA.
    fn new_map_node_filled(&mut self, level: u8, owner: u64, fill: u64) -> Result<u64> {
        debug_assert!(!map_entry_is_ref(fill));
        let vba = self.new_map_node(level, owner)?;
        if fill != 0 {
            if let Some(n) = self.maps.get_mut(&vba) {
                n.entries.fill(fill);
                n.count = MAP_FANOUT as u32;
            }
        }
        Ok(vba)
    }

    /// Set entry `i` of cached node `vba`, keeping its count and dirty state.
    fn set_entry(&mut self, vba: u64, i: usize, e: u64) -> Result<()> {
        let Some(n) = self.maps.get_mut(&vba) else {
            return Ok(());
        };
        let old = std::mem::replace(n.entry_mut(i)?, e);
        if old == e {
            return Ok(());
        }
        match (old == 0, e == 0) {
            (true, false) => n.count += 1,
            (false, true) => n.count -= 1,
            _ => {}
        }
        self.note_map_dirty(vba);
        Ok(())
    }

    /// A new, empty, dirty map node at `level`; returns its VBA.
    fn new_map_node(&mut self, level: u8, owner: u64) -> Result<u64> {
        let vba = self.alloc_node_vba();
        self.vba_set(
            vba,
            Ptr {
                pba: 0,
                crc: 0,
                aux: 1,
            },
        )?;
        self.maps.insert(
            vba,
            MapNode {
                level,
                entries: vec![0; MAP_FANOUT],
                count: 0,
                dirty: true,
                tick: AtomicU64::new(*self.map_tick.get_mut()),
                owner,
            },
        );
        self.maps_dirty += 1;
        Ok(vba)
    }

    /// Return a node this volume may change: shadow it if shared.
    fn writable_node(&mut self, vba: u64, level: u8, owner: u64) -> Result<u64> {
        if self.vba_get(vba)?.aux <= 1 {
            self.map_node(vba, level)?;
            return Ok(vba);
        }
        let entries = self.map_node(vba, level)?.entries.clone();
        let copy = self.new_map_node(level, owner)?;
        for &c in entries.iter().filter(|&&c| map_entry_is_ref(c)) {
            self.incref(c)?;
        }
        let count = entries.iter().filter(|&&e| e != 0).count() as u32;
        if let Some(n) = self.maps.get_mut(&copy) {
            n.entries = entries;
            n.count = count;
        }
        self.decref(vba, Some(level))?;
        Ok(copy)
    }

    /// Set the entry for `lba` of `vol` to `new` (0 unmaps, [`MAP_ZERO`] zeroes). A zero span
    /// on the path is split (a child node full of [`MAP_ZERO`] takes its place). Returns the
    /// previous entry; the caller owns the reference accounting of both data VBAs.
    pub fn map_set(&mut self, vol: u64, lba: u64, new: u64) -> Result<u64> {
        let v = self
            .vols
            .get(&vol)
            .ok_or_else(|| PoolError::NotFound(format!("volume {vol}")))?;
        let (root, depth) = (v.map_root, v.map_depth);
        if root == 0 && new == 0 {
            return Ok(0);
        }
        let root = if root == 0 {
            self.new_map_node(depth - 1, vol)?
        } else {
            root
        };
        let root = self.writable_node(root, depth - 1, vol)?;
        if let Some(v) = self.vols.get_mut(&vol) {
            if v.map_root != root {
                v.map_root = root;
                self.vols_dirty.insert(vol);
            }
        }
        let mut cur = root;
        let mut level = depth - 1;
        while level > 0 {
            let s = slot(lba, level);
            let child = self.map_node(cur, level)?.entry(s)?;
            if child == new && !map_entry_is_ref(new) {
                // The whole span already is a hole, or already zeroes.
                return Ok(new);
            }
            let child = if map_entry_is_ref(child) {
                self.writable_node(child, level - 1, vol)?
            } else {
                self.new_map_node_filled(level - 1, vol, child)?
            };
            let n = self.map_node(cur, level)?;
            let e = n.entry_mut(s)?;
            if *e != child {
                let was_hole = *e == 0;
                *e = child;
                if was_hole {
                    n.count += 1;
                }
                self.note_map_dirty(cur);
            }
            cur = child;
            level -= 1;
        }
        let s = slot(lba, 0);
        let n = self.map_node(cur, 0)?;
        let old = std::mem::replace(n.entry_mut(s)?, new);
        if old != new {
            match (old == 0, new == 0) {
                (true, false) => n.count += 1,
                (false, true) => n.count -= 1,
                _ => {}
            }
            self.note_map_dirty(cur);
        }
        Ok(old)
    }

    /// Set every entry of `vol` in `[lba, lba+count)` to `value` (0: unmap, [`MAP_ZERO`]: zero),
    /// dropping the data references the range held. A child span the range covers whole becomes
    /// one entry, so the work is proportional to the tree's depth and to what the range held,
    /// never to `count`; a child node left holding only `value` is folded into its parent.
    pub fn map_fill(&mut self, vol: u64, lba: u64, count: u64, value: u64) -> Result<()> {
        debug_assert!(!map_entry_is_ref(value));
        let v = self
            .vols
            .get(&vol)
            .ok_or_else(|| PoolError::NotFound(format!("volume {vol}")))?;
        let (root, depth) = (v.map_root, v.map_depth);
        let end = lba.saturating_add(count).min(entry_span(depth));
        if lba >= end || (root == 0 && value == 0) {
            return Ok(());
        }
        let root = if root == 0 {
            self.new_map_node(depth - 1, vol)?
        } else {
            self.writable_node(root, depth - 1, vol)?
        };
        if let Some(v) = self.vols.get_mut(&vol) {
            if v.map_root != root {
                v.map_root = root;
                self.vols_dirty.insert(vol);
            }
        }
        self.fill_node(vol, root, depth - 1, 0, lba, end, value)?;
        // A root left empty is dropped (the volume maps nothing).
        if value == 0 && self.map_node(root, depth - 1)?.count == 0 {
            self.decref(root, Some(depth - 1))?;
            if let Some(v) = self.vols.get_mut(&vol) {
                v.map_root = 0;
                self.vols_dirty.insert(vol);
            }
        }
        Ok(())
    }

    /// [`Self::map_fill`] below writable node `node` at `level`, which covers LU blocks from
    /// `base`; `[lo, hi)` lies within it.
    #[allow(clippy::too_many_arguments)]
    fn fill_node(
        &mut self,
        vol: u64,
        node: u64,
        level: u8,
        base: u64,
        lo: u64,
        hi: u64,
        value: u64,
    ) -> Result<()> {
        let span = entry_span(level);
        let first = ((lo - base) / span) as usize;
        let last = (((hi - 1 - base) / span) as usize).min(MAP_FANOUT - 1);
        for i in first..=last {
            let cb = base + i as u64 * span;
            let ce = cb.saturating_add(span);
            let e = self.map_node(node, level)?.entry(i)?;
            if e == value {
                continue;
            }
            if level == 0 {
                self.set_entry(node, i, value)?;
                if map_entry_is_ref(e) {
                    self.drop_data_ref(vol, cb, e)?;
                }
                continue;
            }
            if !map_entry_is_ref(e) && lo <= cb && ce <= hi {
                // A hole or zero span covered whole: one entry changes.
                self.set_entry(node, i, value)?;
                continue;
            }
            let child = if map_entry_is_ref(e) {
                self.writable_node(e, level - 1, vol)?
            } else {
                self.new_map_node_filled(level - 1, vol, e)?
            };
            self.set_entry(node, i, child)?;
            self.fill_node(vol, child, level - 1, cb, lo.max(cb), hi.min(ce), value)?;
            if self
                .map_node(child, level - 1)?
                .entries
                .iter()
                .all(|&x| x == value)
            {
                self.set_entry(node, i, value)?;
                self.decref(child, Some(level - 1))?;
            }
        }
        Ok(())
    }

    /// Runs of `vol` in `[lba, lba+count)` in order, as (first lba, blocks, kind); holes are
    /// reported too, so the runs cover the range. Zero spans of interior nodes are one run each.
    pub fn map_runs(&mut self, vol: u64, lba: u64, count: u64) -> Result<Vec<(u64, u64, MapKind)>> {
        let (root, depth) = self.map_root(vol)?;
        map_runs_in(self, root, depth, lba, count)?.ok_or_else(|| {
            PoolError::Internal(format!(
                "map walk of volume {vol} found a node it cannot load"
            ))
        })
    }

    /// Visit data entries of `vol` in `[lba, lba+count)` in order: (lba, data vba). Zero
    /// entries read as zeroes like holes and are not listed.
    pub fn map_range(&mut self, vol: u64, lba: u64, count: u64) -> Result<Vec<(u64, u64)>> {
        let (root, depth) = self.map_root(vol)?;
        map_range_in(self, root, depth, lba, count)?.ok_or_else(|| {
            PoolError::Internal(format!(
                "map walk of volume {vol} found a node it cannot load"
            ))
        })
    }

    /// Root node and depth of `vol`'s map tree.
    pub fn map_root(&self, vol: u64) -> Result<(u64, u8)> {
        self.vols
            .get(&vol)
            .map(|v| (v.map_root, v.map_depth))
            .ok_or_else(|| PoolError::NotFound(format!("volume {vol}")))
    }

    /// Grow a volume's map tree so it can address `blocks` blocks.
    pub fn map_grow(&mut self, vol: u64, blocks: u64) -> Result<()> {
        let want = depth_for(blocks);
        loop {
            let v = self
                .vols
                .get(&vol)
                .ok_or_else(|| PoolError::NotFound(format!("volume {vol}")))?;
            if v.map_depth >= want {
                return Ok(());
            }
            let (root, depth) = (v.map_root, v.map_depth);
            let new_root =
                if root == 0 {
                    0
                } else {
                    let r = self.new_map_node(depth, vol)?;
                    let n = self.maps.get_mut(&r).ok_or_else(|| {
                        PoolError::Internal(format!("new map node {r} not cached"))
                    })?;
                    *n.entries.first_mut().ok_or_else(|| {
                        PoolError::Internal(format!("map node {r} has no entries"))
                    })? = root;
                    n.count = 1;
                    r
                };
            let v = self
                .vols
                .get_mut(&vol)
                .ok_or_else(|| PoolError::NotFound(format!("volume {vol}")))?;
            v.map_root = new_root;
            v.map_depth = depth + 1;
            self.vols_dirty.insert(vol);
        }
    }

    /// Evict clean map nodes beyond the cache budget, least recently used first.
    pub fn evict_maps(&mut self) {
        let cap = self.opts.map_cache_nodes;
        if self.maps.len() <= cap {
            return;
        }
        let mut clean: Vec<(u64, u64)> = self
            .maps
            .iter()
            .filter(|(_, n)| !n.dirty)
            .map(|(k, n)| (*k, n.tick.load(Ordering::Relaxed)))
            .collect();
        clean.sort_unstable_by_key(|(_, t)| *t);
        let excess = self.maps.len() - cap;
        for (k, _) in clean.into_iter().take(excess) {
            self.maps.remove(&k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::MapKind::{Data, Hole, Zero};
    use crate::dev::{BlockDev, MemDev};
    use crate::pool::{CreateOptions, Options, Pool};
    use std::sync::Arc;

    const MB: u64 = 1 << 20;
    const GB: u64 = 1 << 30;

    fn pool() -> Pool {
        let dev: Arc<dyn BlockDev> = Arc::new(MemDev::new("mem0", 64 * MB));
        let copts = CreateOptions {
            name: "t".into(),
            journal_blocks: 256,
        };
        Pool::create(vec![dev], &copts, Options::default()).expect("create")
    }

    fn runs(p: &Pool, vol: u64, lba: u64, n: u64) -> Vec<(u64, u64, super::MapKind)> {
        p.lock().map_runs(vol, lba, n).expect("runs")
    }

    fn check(p: &Pool) {
        let rep = p.check().expect("check runs");
        assert!(rep.errors.is_empty(), "{:#?}", rep.errors);
    }

    #[test]
    fn zeroing_half_a_tebibyte_is_a_few_entries() {
        let p = pool();
        let id = p.lu_create("a", 1 << 40).unwrap().id;
        p.write_zeroes_allocated(id, 0, 512 * GB, false).unwrap();
        // Whole spans are single entries: only the nodes along the range's end exist (fanout
        // 504, so 512 GiB ends inside a span at every level).
        let nodes = p.lock().maps.len();
        assert!(
            nodes <= 2 * usize::from(super::depth_for(1 << 28)),
            "{nodes} nodes"
        );
        assert_eq!(
            runs(&p, id, 0, 1 << 28),
            vec![(0, 1 << 27, Zero), (1 << 27, 1 << 27, Hole)]
        );
        assert_eq!(p.lu_get("a").unwrap().mapped_blocks, 0);
        // Unaligned: the edges are read-modify-written, whole spans stay single entries.
        p.write_zeroes_allocated(id, 600 * GB + 512, 0xFFFF_F000, false)
            .unwrap();
        assert!(p.lock().maps.len() < 12, "{} nodes", p.lock().maps.len());
        let first = (600 * GB) / 4096;
        let last = (600 * GB + 512 + 0xFFFF_F000 - 1) / 4096;
        assert_eq!(
            runs(&p, id, first, last - first + 1),
            vec![(first, last - first + 1, Zero)]
        );
        let mut b = vec![1u8; 8192];
        p.read(id, 600 * GB, &mut b).unwrap();
        assert!(b.iter().all(|&x| x == 0));
        check(&p);
    }

    #[test]
    fn writes_and_unmaps_split_a_zero_span_and_zeroing_folds_it_back() {
        let p = pool();
        let id = p.lu_create("a", 8 * GB).unwrap().id;
        p.write_zeroes_allocated(id, 0, 4 * GB, false).unwrap();
        let nodes = p.lock().maps.len();
        // A write inside the span splits it down to one leaf.
        p.write(id, 3 * GB, &[7u8; 4096], false).unwrap();
        let l = 3 * GB / 4096;
        assert_eq!(
            runs(&p, id, 0, 2 * (1 << 20)),
            vec![
                (0, l, Zero),
                (l, 1, Data),
                (l + 1, (1 << 20) - l - 1, Zero),
                (1 << 20, 1 << 20, Hole)
            ]
        );
        assert_eq!(p.lu_get("a").unwrap().mapped_blocks, 1);
        let mut b = vec![0u8; 3 * 4096];
        p.read(id, 3 * GB - 4096, &mut b).unwrap();
        assert!(b[..4096].iter().chain(&b[8192..]).all(|&x| x == 0));
        assert!(b[4096..8192].iter().all(|&x| x == 7));
        // A trim inside the span leaves a hole in it.
        p.trim(id, GB, 8 * MB).unwrap();
        let h = GB / 4096;
        assert_eq!(
            runs(&p, id, h - 1, 2050)[..3],
            [(h - 1, 1, Zero), (h, 2048, Hole), (h + 2048, 1, Zero)]
        );
        check(&p);
        // Zeroing the whole range again drops the data block and folds the split nodes away.
        p.write_zeroes_allocated(id, 0, 4 * GB, false).unwrap();
        assert_eq!(runs(&p, id, 0, 1 << 20), vec![(0, 1 << 20, Zero)]);
        assert_eq!(p.lu_get("a").unwrap().mapped_blocks, 0);
        assert!(p.lock().maps.len() <= nodes, "split nodes were not folded");
        // Unmapping everything drops the root too.
        p.trim(id, 0, 8 * GB).unwrap();
        assert_eq!(runs(&p, id, 0, 1 << 21), vec![(0, 1 << 21, Hole)]);
        assert_eq!(p.lock().vols[&id].map_root, 0);
        check(&p);
    }

    #[test]
    fn an_older_pool_gets_incompat_zero_with_its_first_zero_entry() {
        use crate::format::INCOMPAT_ZERO;
        let dev: Arc<dyn BlockDev> = Arc::new(MemDev::new("mem0", 64 * MB));
        let copts = CreateOptions {
            name: "t".into(),
            journal_blocks: 256,
        };
        let p = Pool::create(vec![dev.clone()], &copts, Options::default()).unwrap();
        let bit = || crate::pool::read_superblock(dev.as_ref()).unwrap().incompat & INCOMPAT_ZERO;
        assert_ne!(bit(), 0, "new pools have the bit");
        // As a pool made before zero entries existed.
        p.lock()
            .rewrite_superblocks(&|sb| sb.incompat &= !INCOMPAT_ZERO)
            .unwrap();
        let id = p.lu_create("a", 64 * MB).unwrap().id;
        p.write(id, 0, &[5u8; 8192], true).unwrap();
        p.trim(id, 0, 4096).unwrap();
        assert_eq!(bit(), 0, "data and holes need no new feature");
        p.write(id, 4096, &[0u8; 4096], true).unwrap();
        assert_ne!(bit(), 0, "set before the first zero entry is journaled");
        p.close().unwrap();
        let p = Pool::open(vec![dev], Options::default()).unwrap();
        assert_eq!(
            runs(&p, id, 0, 3),
            vec![(0, 1, Hole), (1, 1, Zero), (2, 1, Hole)]
        );
        check(&p);
    }

    #[test]
    fn all_zero_writes_are_zero_entries() {
        let p = pool();
        let id = p.lu_create("a", 64 * MB).unwrap().id;
        let mut buf = vec![0u8; 16 * 4096];
        buf[5 * 4096 + 9] = 1;
        p.write(id, 0, &buf, false).unwrap();
        assert_eq!(
            runs(&p, id, 0, 17),
            vec![(0, 5, Zero), (5, 1, Data), (6, 10, Zero), (16, 1, Hole)]
        );
        assert_eq!(p.lu_get("a").unwrap().mapped_blocks, 1);
        // A partial write that leaves the block all zero turns data into a zero entry.
        p.write(id, 5 * 4096 + 9, &[0], false).unwrap();
        assert_eq!(runs(&p, id, 0, 16), vec![(0, 16, Zero)]);
        assert_eq!(p.lu_get("a").unwrap().mapped_blocks, 0);
        check(&p);
    }

    #[test]
    fn zero_spans_in_shared_maps_keep_accounting_exact() {
        let p = pool();
        let id = p.lu_create("a", 2 * GB).unwrap().id;
        for i in 0..64u64 {
            p.write(id, i * 16 * 4096, &[i as u8 + 1; 4096], false)
                .unwrap();
        }
        p.write_zeroes_allocated(id, GB, GB, false).unwrap();
        p.snapshot_create(&["a@s"]).unwrap();
        let c = p.clone_create("a@s", "c").unwrap().id;
        // The clone zeroes half of the shared data and writes into the shared zero span.
        p.write_zeroes_allocated(c, 0, 32 * 16 * 4096, false)
            .unwrap();
        p.write(c, GB + 4096, &[9u8; 4096], false).unwrap();
        p.write(c, 40 * 16 * 4096, &[0u8; 4096], false).unwrap();
        let cl = p.lu_get("c").unwrap();
        assert_eq!((cl.mapped_blocks, cl.owned_blocks), (64 - 33 + 1, 1));
        let a = p.lu_get("a").unwrap();
        assert_eq!((a.mapped_blocks, a.owned_blocks), (64, 0));
        let mut b = vec![0u8; 4096];
        p.read(id, 3 * 16 * 4096, &mut b).unwrap();
        assert!(b.iter().all(|&x| x == 4));
        p.read(c, 3 * 16 * 4096, &mut b).unwrap();
        assert!(b.iter().all(|&x| x == 0));
        check(&p);
        // Removing the snapshot credits the LU with what only it holds now.
        p.snapshot_remove("a@s").unwrap();
        assert_eq!(p.lu_get("a").unwrap().owned_blocks, 33);
        check(&p);
    }
}
