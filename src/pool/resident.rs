//! The resident view of the pool's metadata: what reads plan against while they hold the pool
//! lock's shared side.
//!
//! A read plan walks a volume's map tree to data VBAs and looks those up in the VBA table. Under
//! the exclusive side ([`Inner`] as a [`MapSource`]) missing nodes and pages are loaded; under
//! the shared side ([`Resident`]) only what is cached is seen, and a miss is reported (`None`) so
//! the caller plans again under the exclusive side. LRU use is recorded with atomics
//! ([`super::ptree::touch`]), so the shared walk needs no `&mut Inner` and readers never wait
//! for each other.

#![cfg_attr(
    not(test),
    deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)
)]

use super::error::{PoolError, Result};
use super::inner::Inner;
use super::maps::{entry_span, MapKind, MapNode};
use super::ptree::touch;
use crate::format::node::{map_entry_is_ref, Ptr, MAP_FANOUT, MAP_ZERO};
use crate::format::BLOCK_U64;

/// Map nodes and VBA entries as a read plan sees them: `&mut Inner` loads what is missing,
/// [`Resident`] (a shared `&Inner`) only sees what is cached and reports a miss as `None`.
pub trait MapSource {
    /// Run `f` on map node `vba` at `level`; `None` if it is not resident and cannot be loaded.
    fn with_node<R>(
        &mut self,
        vba: u64,
        level: u8,
        f: impl FnOnce(&MapNode) -> R,
    ) -> Result<Option<R>>;
    /// The VBA-table entry of `vba`; `None` if its page is not resident and cannot be loaded.
    fn vba_entry(&mut self, vba: u64) -> Result<Option<Ptr>>;
}

impl MapSource for Inner {
    fn with_node<R>(
        &mut self,
        vba: u64,
        level: u8,
        f: impl FnOnce(&MapNode) -> R,
    ) -> Result<Option<R>> {
        Ok(Some(f(self.map_node(vba, level)?)))
    }

    fn vba_entry(&mut self, vba: u64) -> Result<Option<Ptr>> {
        self.vba_get(vba).map(Some)
    }
}

/// The resident part of the pool's metadata, through a shared reference: what reads plan
/// against while they hold the pool's read side. Uses are recorded for LRU with atomics.
pub struct Resident<'a>(pub &'a Inner);

impl MapSource for Resident<'_> {
    fn with_node<R>(
        &mut self,
        vba: u64,
        _level: u8,
        f: impl FnOnce(&MapNode) -> R,
    ) -> Result<Option<R>> {
        Ok(self.0.maps.get(&vba).map(|n| {
            touch(&n.tick, &self.0.map_tick);
            f(n)
        }))
    }

    fn vba_entry(&mut self, vba: u64) -> Result<Option<Ptr>> {
        Ok(self.0.vba.get_cached(vba))
    }
}

/// The whole of the pool's metadata through a shared reference, for walks that must see
/// everything without changing anything (`check`): resident nodes are used, others are read
/// from disk and dropped; VBA entries come from a table the caller collected.
pub struct Uncached<'a> {
    pub inner: &'a Inner,
    pub table: &'a rustc_hash::FxHashMap<u64, Ptr>,
}

impl MapSource for Uncached<'_> {
    fn with_node<R>(
        &mut self,
        vba: u64,
        level: u8,
        f: impl FnOnce(&MapNode) -> R,
    ) -> Result<Option<R>> {
        if let Some(n) = self.inner.maps.get(&vba) {
            return Ok(Some(f(n)));
        }
        let ptr = self.table.get(&vba).copied().unwrap_or_default();
        let n = self.inner.read_map_node(vba, level, ptr)?;
        Ok(Some(f(&n)))
    }

    fn vba_entry(&mut self, vba: u64) -> Result<Option<Ptr>> {
        Ok(Some(self.table.get(&vba).copied().unwrap_or_default()))
    }
}

/// Runs of the map tree at `root` (of `depth` levels) in `[lba, lba+count)` in order, as (first
/// lba, blocks, kind); holes are reported too, so the runs cover the range. Zero spans of
/// interior nodes are one run each. `None` if `src` lacks a node on the way.
pub fn map_runs_in(
    src: &mut impl MapSource,
    root: u64,
    depth: u8,
    lba: u64,
    count: u64,
) -> Result<Option<Vec<(u64, u64, MapKind)>>> {
    let end = lba.saturating_add(count);
    let mut found = Vec::new();
    if root != 0 && count != 0 && !walk_in(src, root, depth - 1, 0, lba, end, &mut found)? {
        return Ok(None);
    }
    let mut out: Vec<(u64, u64, MapKind)> = Vec::new();
    let push = |s: u64, n: u64, k: MapKind, out: &mut Vec<(u64, u64, MapKind)>| {
        if n == 0 {
            return;
        }
        match out.last_mut() {
            Some(l) if l.2 == k && l.0 + l.1 == s => l.1 += n,
            _ => out.push((s, n, k)),
        }
    };
    let mut cur = lba;
    for (s, n, k) in found {
        if s > cur {
            push(cur, s - cur, MapKind::Hole, &mut out);
        }
        push(s, n, k, &mut out);
        cur = s + n;
    }
    if cur < end {
        push(cur, end - cur, MapKind::Hole, &mut out);
    }
    Ok(Some(out))
}

/// Non-hole entries below `node` (at `level`, covering LU blocks from `base`) overlapping
/// `[lba, end)` in order, clipped to it, appended to `out`: (first lba, blocks, kind), one block
/// per data entry, one run per zero entry. `false` if `src` lacks a node on the way.
fn walk_in(
    src: &mut impl MapSource,
    node: u64,
    level: u8,
    base: u64,
    lba: u64,
    end: u64,
    out: &mut Vec<(u64, u64, MapKind)>,
) -> Result<bool> {
    let span = entry_span(level);
    let lo = (lba.saturating_sub(base) / span) as usize;
    let hi = ((end - base).div_ceil(span) as usize).min(MAP_FANOUT);
    if lo >= hi {
        return Ok(true);
    }
    // Copy the slots of interest: the recursion below borrows `src` again.
    let Some(entries) =
        src.with_node(node, level, |n| n.entries.get(lo..hi).map(<[u64]>::to_vec))?
    else {
        return Ok(false);
    };
    let entries = entries.ok_or_else(|| {
        PoolError::Internal(format!(
            "map entries {lo}..{hi} of node {node} out of range"
        ))
    })?;
    for (k, e) in entries.into_iter().enumerate() {
        let cb = base + (lo + k) as u64 * span;
        if e == MAP_ZERO {
            let (s, t) = (cb.max(lba), cb.saturating_add(span).min(end));
            match out.last_mut() {
                Some(l) if l.2 == MapKind::Zero && l.0 + l.1 == s => l.1 += t - s,
                _ => out.push((s, t - s, MapKind::Zero)),
            }
        } else if e != 0 {
            if level == 0 {
                out.push((cb, 1, MapKind::Data));
            } else if !walk_in(src, e, level - 1, cb, lba, end, out)? {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// Data entries of the map tree at `root` (of `depth` levels) in `[lba, lba+count)`, in order:
/// (lba, data vba); `None` if `src` lacks a node on the way.
pub fn map_range_in(
    src: &mut impl MapSource,
    root: u64,
    depth: u8,
    lba: u64,
    count: u64,
) -> Result<Option<Vec<(u64, u64)>>> {
    let mut out = Vec::new();
    if root == 0 || count == 0 {
        return Ok(Some(out));
    }
    let end = lba.saturating_add(count);
    // (node vba, level, first lba covered by the node)
    let mut stack = vec![(root, depth - 1, 0u64)];
    while let Some((node, level, base)) = stack.pop() {
        let span = entry_span(level);
        // Only the slots that overlap [lba, end) are visited.
        let lo = (lba.saturating_sub(base) / span) as usize;
        let hi = ((end - base).div_ceil(span) as usize).min(MAP_FANOUT);
        let seen = src.with_node(node, level, |n| {
            if level == 0 {
                for (i, &e) in n.entries.iter().enumerate().take(hi).skip(lo) {
                    if map_entry_is_ref(e) {
                        out.push((base + i as u64, e));
                    }
                }
                return;
            }
            // Push children in reverse so they pop in ascending order; zero spans hold no data.
            let mark = stack.len();
            for (i, &e) in n.entries.iter().enumerate().take(hi).skip(lo) {
                if map_entry_is_ref(e) {
                    stack.push((e, level - 1, base + i as u64 * span));
                }
            }
            if let Some(pushed) = stack.get_mut(mark..) {
                pushed.reverse();
            }
        })?;
        if seen.is_none() {
            return Ok(None);
        }
    }
    Ok(Some(out))
}

/// The mapped blocks of the `len` bytes at byte `offset` of the map tree at `root`, in order:
/// (lba, pba, crc) each; `None` if `src` lacks a map node or VBA page on the way.
pub fn locate(
    src: &mut impl MapSource,
    root: u64,
    depth: u8,
    offset: u64,
    len: usize,
) -> Result<Option<Vec<(u64, u64, u32)>>> {
    if len == 0 {
        return Ok(Some(Vec::new()));
    }
    let first = offset / BLOCK_U64;
    let last = (offset + len as u64 - 1) / BLOCK_U64;
    let Some(mapped) = map_range_in(src, root, depth, first, last - first + 1)? else {
        return Ok(None);
    };
    let mut locs = Vec::with_capacity(mapped.len());
    for (lba, vba) in mapped {
        let Some(p) = src.vba_entry(vba)? else {
            return Ok(None);
        };
        locs.push((lba, p.pba, p.crc));
    }
    Ok(Some(locs))
}

#[cfg(test)]
mod tests {
    use crate::dev::{BlockDev, MemDev};
    use crate::pool::{CreateOptions, Options, Pool};
    use std::sync::mpsc;
    use std::sync::Arc;
    use std::time::Duration;

    const MB: u64 = 1 << 20;

    fn pool_on(dev: Arc<dyn BlockDev>) -> Pool {
        let copts = CreateOptions {
            name: "t".into(),
            journal_blocks: 256,
        };
        Pool::create(vec![dev], &copts, Options::default()).expect("create")
    }

    fn block(tag: u8) -> Vec<u8> {
        (0..4096u32).map(|i| tag ^ (i % 251) as u8).collect()
    }

    #[test]
    fn a_read_plans_while_another_thread_holds_the_shared_side() {
        let p = Arc::new(pool_on(Arc::new(MemDev::new("mem0", 64 * MB))));
        let id = p.lu_create("a", 16 * MB).unwrap().id;
        for i in 0..64u64 {
            p.write(id, i * 4096 * 9, &block(i as u8), false).unwrap();
        }
        p.flush().unwrap();
        // This thread stays inside the shared side (as a reader still planning would) while
        // another thread reads blocks of the same LU: it must not wait for this one.
        let held = p.shared();
        let (tx, rx) = mpsc::channel();
        let reader = {
            let p = p.clone();
            std::thread::spawn(move || {
                for i in 0..64u64 {
                    let mut b = vec![0u8; 4096];
                    let r = p.read(id, i * 4096 * 9, &mut b);
                    if tx.send((i, r.map(|()| b))).is_err() {
                        return;
                    }
                }
            })
        };
        for _ in 0..64 {
            // Generous: with the pool lock exclusive (as before) this never arrives.
            let (i, got) = rx
                .recv_timeout(Duration::from_secs(60))
                .expect("a read waited for a thread holding the shared side");
            assert_eq!(got.unwrap(), block(i as u8), "block {i}");
        }
        drop(held);
        reader.join().unwrap();
    }

    #[test]
    fn a_cold_read_loads_under_the_exclusive_side_then_plans_from_resident_metadata() {
        let dev: Arc<dyn BlockDev> = Arc::new(MemDev::new("mem0", 64 * MB));
        let p = pool_on(dev.clone());
        let id = p.lu_create("a", 16 * MB).unwrap().id;
        p.write(id, 5 * 4096, &block(7), false).unwrap();
        p.write(id, 6 * 4096, &block(8), false).unwrap();
        p.close().unwrap();
        let p = Pool::open(vec![dev], Options::default()).unwrap();
        let mut b = vec![0u8; 3 * 4096];
        // Nothing of the map is resident after an open: the shared side reports a miss.
        assert!(p
            .shared()
            .plan_read_resident(id, 4 * 4096, &mut b)
            .unwrap()
            .is_none());
        p.read(id, 4 * 4096, &mut b).unwrap();
        let want: Vec<u8> = [vec![0u8; 4096], block(7), block(8)].concat();
        assert_eq!(b, want);
        // Now it plans without loading, and the plan reads the same bytes.
        let mut c = vec![0xffu8; 3 * 4096];
        let plan = p
            .shared()
            .plan_read_resident(id, 4 * 4096, &mut c)
            .unwrap()
            .expect("resident after the first read");
        plan.execute(4 * 4096, &mut c).unwrap();
        assert_eq!(c, want);
        // Errors come from the shared side too.
        assert!(p.shared().plan_read_resident(id, 16 * MB, &mut c).is_err());
        assert!(p.shared().plan_read_resident(999, 0, &mut c).is_err());
    }

    #[test]
    fn shared_lookups_count_as_uses_for_eviction() {
        let dev: Arc<dyn BlockDev> = Arc::new(MemDev::new("mem0", 64 * MB));
        let copts = CreateOptions {
            name: "t".into(),
            journal_blocks: 256,
        };
        let p = Pool::create(vec![dev.clone()], &copts, Options::default()).unwrap();
        // Four LUs, each with its own map leaf.
        let ids: Vec<u64> = (0..4)
            .map(|i| p.lu_create(&format!("l{i}"), 16 * MB).unwrap().id)
            .collect();
        for &id in &ids {
            p.write(id, 0, &block(id as u8), false).unwrap();
        }
        p.close().unwrap();
        let p = Pool::open(vec![dev], Options::default()).unwrap();
        let mut b = vec![0u8; 4096];
        // Loads (misses) advance the LRU clock: l0's nodes are loaded first, so they are the
        // oldest. Reading l0 again is a hit planned under the shared side; it must count as a
        // use, so the eviction below keeps l0 and drops the LUs loaded in between.
        for &id in &ids {
            p.read(id, 0, &mut b).unwrap();
        }
        let root = |i: usize| p.shared().vols[&ids[i]].map_root;
        let (root0, root1) = (root(0), root(1));
        assert!(p.shared().maps.contains_key(&root0));
        p.read(ids[0], 0, &mut b).unwrap();
        assert_eq!(b, block(ids[0] as u8));
        {
            let mut g = p.lock();
            let resident = g.maps.len();
            assert_eq!(resident, 8, "two nodes per LU");
            g.opts.map_cache_nodes = 4;
            g.evict_maps();
            assert_eq!(g.maps.len(), 4);
        }
        assert!(
            !p.shared().maps.contains_key(&root1),
            "l1 is older than l0's hit"
        );
        assert!(
            p.shared().maps.contains_key(&root0),
            "the node read last through the shared side was evicted"
        );
    }

    #[test]
    fn try_read_declines_while_a_writer_holds_the_lock_or_metadata_is_not_resident() {
        let dev: Arc<dyn BlockDev> = Arc::new(MemDev::new("mem0", 64 * MB));
        let p = pool_on(dev.clone());
        let id = p.lu_create("a", 16 * MB).unwrap().id;
        p.write(id, 0, &block(3), false).unwrap();
        p.close().unwrap();
        let p = Arc::new(Pool::open(vec![dev], Options::default()).unwrap());
        let mut b = vec![0u8; 4096];
        // Cold: loading the map is work that may wait.
        assert!(!p.try_read(id, 0, &mut b).unwrap());
        assert!(p.try_extents(id, 0, 3 * 4096).unwrap().is_none());
        p.read(id, 0, &mut b).unwrap();
        let ext = vec![(0, 4096, true), (4096, 8192, false)];
        assert_eq!(p.try_extents(id, 0, 3 * 4096).unwrap(), Some(ext.clone()));
        assert_eq!(p.extents(id, 0, 3 * 4096).unwrap(), ext);
        assert!(p.try_read(id, 0, &mut b).unwrap());
        assert_eq!(b, block(3));
        // Unmapped blocks read as zeroes without waiting; errors are errors.
        b.fill(1);
        assert!(p.try_read(id, 4096, &mut b).unwrap());
        assert!(b.iter().all(|&x| x == 0));
        assert!(p.try_read(id, 16 * MB, &mut b).is_err());
        // A writer holds the exclusive side (as a checkpoint syncing would): another thread's
        // try_read returns at once instead of waiting for it.
        let held = p.lock();
        let got = {
            let p = p.clone();
            std::thread::spawn(move || {
                let mut b = vec![0u8; 4096];
                p.try_read(id, 0, &mut b).unwrap()
            })
            .join()
            .unwrap()
        };
        assert!(!got);
        let got = {
            let p = p.clone();
            std::thread::spawn(move || p.try_extents(id, 0, 4096).unwrap())
                .join()
                .unwrap()
        };
        assert_eq!(got, None);
        // The size check every inline request starts with does not wait either.
        let got = {
            let p = p.clone();
            std::thread::spawn(move || p.try_lu_size(id).is_none())
                .join()
                .unwrap()
        };
        assert!(got);
        drop(held);
        assert_eq!(p.try_lu_size(id).unwrap().unwrap(), 16 * MB);
        assert!(p.try_read(id, 0, &mut b).unwrap());
    }
}
