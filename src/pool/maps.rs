//! Block maps: each volume's radix tree from LU block to data VBA.
//!
//! Nodes are addressed by VBA, so a checkpoint or the cleaner can move a node by changing only its
//! VBA-table entry, and several volumes (snapshots, clones) can share a subtree. Sharing is
//! copy-on-write: a node whose reference count is above one is copied ("shadowed") before it is
//! changed, and the copy takes a reference on every child. Reads walk one tree, never a chain of
//! parents.

use super::error::{PoolError, Result};
use super::inner::Inner;
use super::ptree::NodeIo;
use crate::format::node::{
    decode_node, decode_u64s, NodeKind, Ptr, MAP_FANOUT, VOL_FLAG_SHARES_NODES,
};

/// A cached block-map node.
pub struct MapNode {
    pub level: u8,
    pub entries: Vec<u64>,
    pub count: u32,
    pub dirty: bool,
    pub tick: u64,
    pub owner: u64,
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

    /// Make map node `vba` resident and return it.
    pub fn map_node(&mut self, vba: u64, level: u8) -> Result<&mut MapNode> {
        self.map_tick += 1;
        if !self.maps.contains_key(&vba) {
            let ptr = self.vba_get(vba)?;
            if ptr.pba == 0 {
                return Err(PoolError::Invalid(format!(
                    "map node VBA {vba} has no block"
                )));
            }
            let buf = self.read_node(ptr, NodeKind::Map, level, vba)?;
            let (h, payload) =
                decode_node(&buf, &self.pool_id).map_err(|e| PoolError::Corrupt {
                    dev: self.describe(ptr.pba).0,
                    offset: self.describe(ptr.pba).1,
                    source: e,
                })?;
            let entries = decode_u64s(payload, MAP_FANOUT).map_err(|e| PoolError::Corrupt {
                dev: self.describe(ptr.pba).0,
                offset: self.describe(ptr.pba).1,
                source: e,
            })?;
            let count = entries.iter().filter(|&&e| e != 0).count() as u32;
            self.maps.insert(
                vba,
                MapNode {
                    level,
                    entries,
                    count,
                    dirty: false,
                    tick: 0,
                    owner: h.owner,
                },
            );
        }
        let tick = self.map_tick;
        let n = self.maps.get_mut(&vba).ok_or_else(|| {
            PoolError::Internal(format!("map node {vba} vanished from the cache"))
        })?;
        n.tick = tick;
        Ok(n)
    }

    /// The data VBA mapped at `lba` of volume `vol` (0 = unmapped), and whether the block is
    /// referenced by this volume alone (every node on the path and the block itself unshared).
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
            if cur == 0 {
                return Ok((0, false));
            }
            level -= 1;
            if check_nodes {
                exclusive &= self.vba_get(cur)?.aux <= 1;
            }
            cur = self.map_node(cur, level)?.entries[slot(lba, level)];
        }
        if cur != 0 {
            exclusive &= self.vba_get(cur)?.aux <= 1;
        }
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
                    .filter(|&e| e != 0)
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
                tick: self.map_tick,
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
        for &c in entries.iter().filter(|&&c| c != 0) {
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

    /// Set the entry for `lba` of `vol` to `new` (0 unmaps). Returns the previous data VBA; the
    /// caller owns the reference accounting of both data VBAs.
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
            let child = self.map_node(cur, level)?.entries[s];
            if child == 0 && new == 0 {
                return Ok(0);
            }
            let child = if child == 0 {
                self.new_map_node(level - 1, vol)?
            } else {
                self.writable_node(child, level - 1, vol)?
            };
            let n = self.map_node(cur, level)?;
            if n.entries[s] != child {
                if n.entries[s] == 0 {
                    n.count += 1;
                }
                n.entries[s] = child;
                self.note_map_dirty(cur);
            }
            cur = child;
            level -= 1;
        }
        let s = slot(lba, 0);
        let n = self.map_node(cur, 0)?;
        let old = n.entries[s];
        if old != new {
            match (old == 0, new == 0) {
                (true, false) => n.count += 1,
                (false, true) => n.count -= 1,
                _ => {}
            }
            n.entries[s] = new;
            self.note_map_dirty(cur);
        }
        Ok(old)
    }

    /// Visit mapped entries of `vol` in `[lba, lba+count)` in order: (lba, data vba).
    pub fn map_range(&mut self, vol: u64, lba: u64, count: u64) -> Result<Vec<(u64, u64)>> {
        let v = self
            .vols
            .get(&vol)
            .ok_or_else(|| PoolError::NotFound(format!("volume {vol}")))?;
        let (root, depth) = (v.map_root, v.map_depth);
        let mut out = Vec::new();
        if root == 0 || count == 0 {
            return Ok(out);
        }
        let end = lba.saturating_add(count);
        // (node vba, level, first lba covered by the node)
        let mut stack = vec![(root, depth - 1, 0u64)];
        while let Some((node, level, base)) = stack.pop() {
            let span = entry_span(level);
            // Only the slots that overlap [lba, end) are visited.
            let lo = (lba.saturating_sub(base) / span) as usize;
            let hi = ((end - base).div_ceil(span) as usize).min(MAP_FANOUT);
            let n = self.map_node(node, level)?;
            if level == 0 {
                for (i, &e) in n.entries.iter().enumerate().take(hi).skip(lo) {
                    if e != 0 {
                        out.push((base + i as u64, e));
                    }
                }
                continue;
            }
            // Push children in reverse so they pop in ascending order.
            let mark = stack.len();
            for (i, &e) in n.entries.iter().enumerate().take(hi).skip(lo) {
                if e != 0 {
                    stack.push((e, level - 1, base + i as u64 * span));
                }
            }
            stack[mark..].reverse();
        }
        Ok(out)
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
            .map(|(k, n)| (*k, n.tick))
            .collect();
        clean.sort_unstable_by_key(|(_, t)| *t);
        let excess = self.maps.len() - cap;
        for (k, _) in clean.into_iter().take(excess) {
            self.maps.remove(&k);
        }
    }
}
