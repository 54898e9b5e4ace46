//! A copy-on-write radix tree of fixed-size entries over physically addressed pages.
//!
//! Used for the VBA table, the segment table and the volume directory. Pages are loaded on demand
//! through [`NodeIo`] and kept in a bounded cache; dirty pages (and, by invariant, all their
//! ancestors) stay pinned until a checkpoint writes them to new places, bottom-up, so each parent
//! records its children's new address and checksum.

#![cfg_attr(
    not(test),
    deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)
)]

use super::error::Result;
use crate::format::checkpoint::Root;
use crate::format::node::{
    decode_node, decode_ptrs, encode_node, encode_ptrs, node_crc, NodeHeader, NodeKind, Ptr,
    PTR_FANOUT,
};
use crate::format::{FormatError, Writer};
use rustc_hash::FxHashMap as HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

/// Reads a node by pointer, verifying its checksum and identity.
pub trait NodeIo {
    /// Return the verified 4096-byte node at `ptr`.
    fn read_node(&self, ptr: Ptr, kind: NodeKind, level: u8, id: u64) -> Result<Vec<u8>>;
    fn pool_id(&self) -> &[u8; 16];
}

/// Fixed-size entry stored in the leaves of a [`PhysTree`].
pub trait Entry: Clone + Default + PartialEq + std::fmt::Debug {
    const PER_PAGE: usize;
    const KIND: NodeKind;
    fn encode_page(entries: &[Self]) -> Vec<u8>;
    fn decode_page(payload: &[u8]) -> Result<Vec<Self>, FormatError>;
    fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

enum Page<E> {
    Leaf(Vec<E>),
    Interior(Vec<Ptr>),
}

struct Cached<E> {
    page: Page<E>,
    dirty: bool,
    /// New address chosen by `prepare` during a checkpoint.
    assigned: u64,
    /// Address the page was read from (0 if never written).
    old: u64,
    /// Last use (LRU); atomic so lookups through `&PhysTree` can record it.
    tick: AtomicU64,
}

/// The tree. Keys of cached pages are (level, index within level).
pub struct PhysTree<E: Entry> {
    root: Root,
    depth: u8,
    pages: HashMap<(u8, u64), Cached<E>>,
    capacity: usize,
    /// LRU clock; advanced by every lookup, also through `&PhysTree`.
    tick: AtomicU64,
    /// Dirty pages (they stay cached until a checkpoint writes them).
    dirty: usize,
}

impl<E: Entry> Default for PhysTree<E> {
    fn default() -> Self {
        PhysTree::new(Root::default(), 0)
    }
}

impl<E: Entry> PhysTree<E> {
    pub fn new(root: Root, capacity: usize) -> Self {
        PhysTree {
            root,
            depth: root.depth,
            pages: HashMap::default(),
            capacity,
            tick: AtomicU64::new(0),
            dirty: 0,
        }
    }

    /// Root as of the last `encode` (what a checkpoint records).
    pub fn root(&self) -> Root {
        self.root
    }

    fn span(level: u8) -> u64 {
        // Entries covered by one page at `level`.
        let mut s = E::PER_PAGE as u64;
        for _ in 0..level {
            s = s.saturating_mul(PTR_FANOUT as u64);
        }
        s
    }

    /// Entries the tree can index at its current depth.
    pub fn capacity_entries(&self) -> u64 {
        if self.depth == 0 {
            0
        } else {
            Self::span(self.depth - 1)
        }
    }

    fn empty_page(level: u8) -> Page<E> {
        if level == 0 {
            Page::Leaf(vec![E::default(); E::PER_PAGE])
        } else {
            Page::Interior(vec![Ptr::default(); PTR_FANOUT])
        }
    }

    /// Pointer to page (level, idx) as recorded by its parent (or the root).
    fn ptr_to(&mut self, io: &dyn NodeIo, level: u8, idx: u64) -> Result<Ptr> {
        if level + 1 >= self.depth {
            if level + 1 == self.depth && idx == 0 && self.root.depth == self.depth {
                return Ok(Ptr {
                    pba: self.root.pba,
                    crc: self.root.crc,
                    aux: 0,
                });
            }
            return Ok(Ptr::default());
        }
        let pidx = idx / PTR_FANOUT as u64;
        if !self.load(io, level + 1, pidx, false)? {
            return Ok(Ptr::default());
        }
        let slot = (idx % PTR_FANOUT as u64) as usize;
        match self.pages.get(&(level + 1, pidx)).map(|c| &c.page) {
            Some(Page::Interior(p)) => Ok(p.get(slot).copied().unwrap_or_default()),
            _ => Ok(Ptr::default()),
        }
    }

    /// Ensure page (level, idx) is cached. With `create`, a missing page is created empty;
    /// otherwise returns false when the page does not exist.
    fn load(&mut self, io: &dyn NodeIo, level: u8, idx: u64, create: bool) -> Result<bool> {
        let now = self.advance();
        if let Some(c) = self.pages.get_mut(&(level, idx)) {
            *c.tick.get_mut() = now;
            return Ok(true);
        }
        let ptr = self.ptr_to(io, level, idx)?;
        let page = if ptr.is_none() {
            if !create {
                return Ok(false);
            }
            Self::empty_page(level)
        } else {
            self.read_page(io, level, idx, ptr)?
        };
        let tick = AtomicU64::new(*self.tick.get_mut());
        self.pages.insert(
            (level, idx),
            Cached {
                page,
                dirty: false,
                assigned: 0,
                old: ptr.pba,
                tick,
            },
        );
        Ok(true)
    }

    /// Read entry `index` (default when absent).
    pub fn get(&mut self, io: &dyn NodeIo, index: u64) -> Result<E> {
        if index >= self.capacity_entries() {
            return Ok(E::default());
        }
        let pidx = index / E::PER_PAGE as u64;
        // Fast path: a cached leaf needs one lookup.
        let now = self.advance();
        if let Some(Cached {
            page: Page::Leaf(v),
            tick,
            ..
        }) = self.pages.get_mut(&(0, pidx))
        {
            *tick.get_mut() = now;
            return Ok(v
                .get((index % E::PER_PAGE as u64) as usize)
                .cloned()
                .unwrap_or_default());
        }
        if !self.load(io, 0, pidx, false)? {
            return Ok(E::default());
        }
        match self.pages.get(&(0, pidx)).map(|c| &c.page) {
            Some(Page::Leaf(v)) => Ok(v
                .get((index % E::PER_PAGE as u64) as usize)
                .cloned()
                .unwrap_or_default()),
            _ => Ok(E::default()),
        }
    }

    /// Entry `index` if its leaf is resident (`None`: only [`PhysTree::get`] can tell), through
    /// a shared reference: readers holding the pool's read side look entries up in parallel.
    /// The use is recorded for LRU with atomics, so this never needs `&mut self`.
    pub fn get_cached(&self, index: u64) -> Option<E> {
        if index >= self.capacity_entries() {
            return Some(E::default());
        }
        let pidx = index / E::PER_PAGE as u64;
        match self.pages.get(&(0, pidx)) {
            Some(Cached {
                page: Page::Leaf(v),
                tick,
                ..
            }) => {
                touch(tick, &self.tick);
                Some(
                    v.get((index % E::PER_PAGE as u64) as usize)
                        .cloned()
                        .unwrap_or_default(),
                )
            }
            _ => None,
        }
    }

    /// Advance the LRU clock; returns the new time.
    fn advance(&mut self) -> u64 {
        let t = self.tick.get_mut();
        *t += 1;
        *t
    }

    /// Grow the tree until `index` fits.
    fn grow(&mut self, index: u64) {
        while index >= self.capacity_entries() {
            if self.depth == 0 {
                self.pages.insert(
                    (0, 0),
                    Cached {
                        page: Self::empty_page(0),
                        dirty: true,
                        assigned: 0,
                        old: 0,
                        tick: AtomicU64::new(*self.tick.get_mut()),
                    },
                );
                self.depth = 1;
                self.dirty += 1;
                continue;
            }
            let mut ptrs = vec![Ptr::default(); PTR_FANOUT];
            // The old root becomes child 0 of the new root; if it was on disk, point at it.
            if self.root.depth == self.depth {
                if let Some(first) = ptrs.first_mut() {
                    *first = Ptr {
                        pba: self.root.pba,
                        crc: self.root.crc,
                        aux: 0,
                    };
                }
            }
            self.pages.insert(
                (self.depth, 0),
                Cached {
                    page: Page::Interior(ptrs),
                    dirty: true,
                    assigned: 0,
                    old: 0,
                    tick: AtomicU64::new(*self.tick.get_mut()),
                },
            );
            self.depth += 1;
            self.dirty += 1;
        }
    }

    fn mark_dirty_path(&mut self, level: u8, idx: u64) {
        let (mut l, mut i) = (level, idx);
        while l < self.depth {
            match self.pages.get_mut(&(l, i)) {
                Some(c) if c.dirty => {}
                Some(c) => {
                    c.dirty = true;
                    self.dirty += 1;
                }
                None => {}
            }
            l += 1;
            i /= PTR_FANOUT as u64;
        }
    }

    /// Load the whole path to page (level, idx), creating missing pages.
    fn load_path(&mut self, io: &dyn NodeIo, level: u8, idx: u64) -> Result<()> {
        // Top-down so that each page's parent is cached before it.
        let mut l = self.depth - 1;
        loop {
            let i = idx / (PTR_FANOUT as u64).pow(u32::from(l - level));
            self.load(io, l, i, true)?;
            if l == level {
                return Ok(());
            }
            l -= 1;
        }
    }

    /// Write entry `index`.
    pub fn set(&mut self, io: &dyn NodeIo, index: u64, e: E) -> Result<()> {
        self.grow(index);
        let pidx = index / E::PER_PAGE as u64;
        // Fast path: a cached dirty leaf already has its whole path dirty.
        if let Some(Cached {
            page: Page::Leaf(v),
            dirty: true,
            ..
        }) = self.pages.get_mut(&(0, pidx))
        {
            *leaf_slot(v, index)? = e;
            return Ok(());
        }
        self.load_path(io, 0, pidx)?;
        if let Some(Cached {
            page: Page::Leaf(v),
            ..
        }) = self.pages.get_mut(&(0, pidx))
        {
            *leaf_slot(v, index)? = e;
        }
        self.mark_dirty_path(0, pidx);
        Ok(())
    }

    /// Address of page (level, idx) as recorded by its parent; used by the cleaner.
    pub fn page_ptr(&mut self, io: &dyn NodeIo, level: u8, idx: u64) -> Result<Ptr> {
        if level >= self.depth {
            return Ok(Ptr::default());
        }
        self.ptr_to(io, level, idx)
    }

    /// Force page (level, idx) to be rewritten at the next checkpoint (cleaner relocation).
    pub fn touch(&mut self, io: &dyn NodeIo, level: u8, idx: u64) -> Result<()> {
        if level >= self.depth {
            return Ok(());
        }
        self.load_path(io, level, idx)?;
        self.mark_dirty_path(level, idx);
        Ok(())
    }

    /// Give every dirty page without one a new address; returns (old, new) pairs so the caller
    /// can move live-block counts. May be called again after more pages became dirty.
    pub fn prepare(&mut self, alloc: &mut dyn FnMut() -> Result<u64>) -> Result<Vec<(u64, u64)>> {
        let mut keys: Vec<(u8, u64)> = self
            .pages
            .iter()
            .filter(|(_, c)| c.dirty && c.assigned == 0)
            .map(|(k, _)| *k)
            .collect();
        keys.sort_unstable();
        let mut moves = Vec::with_capacity(keys.len());
        for k in keys {
            let new = alloc()?;
            if let Some(c) = self.pages.get_mut(&k) {
                c.assigned = new;
                moves.push((c.old, new));
            }
        }
        Ok(moves)
    }

    /// Encode every dirty page bottom-up (after `prepare`), fixing parent pointers and the root.
    /// Returns the blocks to write.
    pub fn encode(
        &mut self,
        pool_id: &[u8; 16],
        generation: u64,
        writer: Writer,
    ) -> Vec<(u64, Vec<u8>)> {
        let mut keys: Vec<(u8, u64)> = self
            .pages
            .iter()
            .filter(|(_, c)| c.dirty)
            .map(|(k, _)| *k)
            .collect();
        keys.sort_unstable();
        let mut out = Vec::with_capacity(keys.len());
        for (level, idx) in keys {
            let Some(c) = self.pages.get_mut(&(level, idx)) else {
                continue;
            };
            debug_assert!(c.assigned != 0, "encode without prepare");
            let (payload, count) = match &c.page {
                Page::Leaf(v) => (
                    E::encode_page(v),
                    v.iter().filter(|e| !e.is_empty()).count(),
                ),
                Page::Interior(p) => (encode_ptrs(p), p.iter().filter(|x| !x.is_none()).count()),
            };
            let h = NodeHeader {
                kind: E::KIND,
                level,
                count: count as u32,
                id: idx,
                generation,
                writer,
                owner: 0,
            };
            let buf = encode_node(pool_id, &h, &payload);
            let crc = node_crc(pool_id, &buf);
            let pba = c.assigned;
            c.old = pba;
            c.assigned = 0;
            c.dirty = false;
            out.push((pba, buf));
            if level + 1 == self.depth {
                self.root = Root {
                    pba,
                    crc,
                    depth: self.depth,
                };
            } else if let Some(Cached {
                page: Page::Interior(p),
                ..
            }) = self.pages.get_mut(&(level + 1, idx / PTR_FANOUT as u64))
            {
                if let Some(slot) = p.get_mut((idx % PTR_FANOUT as u64) as usize) {
                    *slot = Ptr { pba, crc, aux: 0 };
                }
            }
        }
        self.dirty = 0;
        out
    }

    /// Drop clean pages beyond the cache capacity, least recently used first.
    pub fn evict(&mut self) {
        if self.pages.len() <= self.capacity {
            return;
        }
        let mut clean: Vec<((u8, u64), u64)> = self
            .pages
            .iter()
            .filter(|(_, c)| !c.dirty)
            .map(|(k, c)| (*k, c.tick.load(Ordering::Relaxed)))
            .collect();
        clean.sort_unstable_by_key(|(_, t)| *t);
        let excess = self.pages.len() - self.capacity;
        for (k, _) in clean.into_iter().take(excess) {
            self.pages.remove(&k);
        }
    }

    pub fn dirty_pages(&self) -> usize {
        self.dirty
    }

    pub fn cached_pages(&self) -> usize {
        self.pages.len()
    }

    /// Visit every non-empty entry (index order is not guaranteed). Loads pages as needed.
    pub fn for_each(&mut self, io: &dyn NodeIo, f: &mut dyn FnMut(u64, &E)) -> Result<()> {
        self.walk(io, self.depth.saturating_sub(1), 0, f)
    }

    fn walk(
        &mut self,
        io: &dyn NodeIo,
        level: u8,
        idx: u64,
        f: &mut dyn FnMut(u64, &E),
    ) -> Result<()> {
        if self.depth == 0 || !self.load(io, level, idx, false)? {
            return Ok(());
        }
        if level == 0 {
            if let Some(Cached {
                page: Page::Leaf(v),
                ..
            }) = self.pages.get(&(0, idx))
            {
                let base = idx * E::PER_PAGE as u64;
                for (i, e) in v.iter().enumerate() {
                    if !e.is_empty() {
                        f(base + i as u64, e);
                    }
                }
            }
            return Ok(());
        }
        let children: Vec<u64> = match self.pages.get(&(level, idx)).map(|c| &c.page) {
            Some(Page::Interior(p)) => p
                .iter()
                .enumerate()
                .filter(|(_, x)| !x.is_none())
                .map(|(i, _)| idx * PTR_FANOUT as u64 + i as u64)
                .collect(),
            _ => Vec::new(),
        };
        // Also visit cached children not yet written (their pointer is still empty).
        let mut all: Vec<u64> = children;
        for &(l, i) in self.pages.keys() {
            if l + 1 == level && i / PTR_FANOUT as u64 == idx && !all.contains(&i) {
                all.push(i);
            }
        }
        for c in all {
            self.walk(io, level - 1, c, f)?;
        }
        Ok(())
    }
}

/// A page as a shared walk sees it: the cached copy, or one read from disk and not kept.
enum View<'a, E> {
    Cached(&'a Page<E>),
    Read(Page<E>),
}

impl<E> View<'_, E> {
    fn page(&self) -> &Page<E> {
        match self {
            View::Cached(p) => p,
            View::Read(p) => p,
        }
    }
}

/// Walks through a shared reference: what is cached is used, what is not is read from disk and
/// dropped after use, so nothing changes and holders of the pool's shared side (readers) run
/// alongside. For `check`, which must see one consistent state without stopping readers.
impl<E: Entry> PhysTree<E> {
    /// The pointer to the root page, as [`PhysTree::ptr_to`] gives it.
    fn root_ptr(&self) -> Ptr {
        if self.depth > 0 && self.root.depth == self.depth {
            Ptr {
                pba: self.root.pba,
                crc: self.root.crc,
                aux: 0,
            }
        } else {
            Ptr::default()
        }
    }

    /// Decode page (level, idx) from disk at `ptr`.
    fn read_page(&self, io: &dyn NodeIo, level: u8, idx: u64, ptr: Ptr) -> Result<Page<E>> {
        let bad =
            |e: FormatError| super::error::PoolError::Invalid(format!("page {level}/{idx}: {e}"));
        let buf = io.read_node(ptr, E::KIND, level, idx)?;
        let (_, payload) = decode_node(&buf, io.pool_id()).map_err(bad)?;
        Ok(if level == 0 {
            Page::Leaf(E::decode_page(payload).map_err(bad)?)
        } else {
            Page::Interior(decode_ptrs(payload, PTR_FANOUT).map_err(bad)?)
        })
    }

    /// Page (level, idx), whose parent points at `ptr`: cached, read, or `None` (absent).
    fn view(&self, io: &dyn NodeIo, level: u8, idx: u64, ptr: Ptr) -> Result<Option<View<'_, E>>> {
        if let Some(c) = self.pages.get(&(level, idx)) {
            return Ok(Some(View::Cached(&c.page)));
        }
        if ptr.is_none() {
            return Ok(None);
        }
        self.read_page(io, level, idx, ptr)
            .map(|p| Some(View::Read(p)))
    }

    /// [`PhysTree::for_each`] through a shared reference (nothing is cached).
    pub fn for_each_shared(&self, io: &dyn NodeIo, f: &mut dyn FnMut(u64, &E)) -> Result<()> {
        if self.depth == 0 {
            return Ok(());
        }
        self.walk_shared(io, self.depth - 1, 0, self.root_ptr(), f)
    }

    fn walk_shared(
        &self,
        io: &dyn NodeIo,
        level: u8,
        idx: u64,
        ptr: Ptr,
        f: &mut dyn FnMut(u64, &E),
    ) -> Result<()> {
        let Some(view) = self.view(io, level, idx, ptr)? else {
            return Ok(());
        };
        let children: Vec<(u64, Ptr)> = match view.page() {
            Page::Leaf(v) => {
                let base = idx * E::PER_PAGE as u64;
                for (i, e) in v.iter().enumerate() {
                    if !e.is_empty() {
                        f(base + i as u64, e);
                    }
                }
                return Ok(());
            }
            Page::Interior(p) => p
                .iter()
                .enumerate()
                .filter(|(_, x)| !x.is_none())
                .map(|(i, x)| (idx * PTR_FANOUT as u64 + i as u64, *x))
                .collect(),
        };
        drop(view);
        // Also cached children not yet written (their pointer is still empty).
        let mut all = children;
        for &(l, i) in self.pages.keys() {
            if l + 1 == level && i / PTR_FANOUT as u64 == idx && !all.iter().any(|c| c.0 == i) {
                all.push((i, Ptr::default()));
            }
        }
        for (c, p) in all {
            self.walk_shared(io, level - 1, c, p, f)?;
        }
        Ok(())
    }

    /// Visit every page that is on disk: (level, idx, ptr), through a shared reference (nothing
    /// is cached). Used by `check`.
    pub fn for_each_page_shared(
        &self,
        io: &dyn NodeIo,
        f: &mut dyn FnMut(u8, u64, Ptr),
    ) -> Result<()> {
        if self.depth == 0 {
            return Ok(());
        }
        let mut stack = vec![(self.depth - 1, 0u64, self.root_ptr())];
        while let Some((level, idx, ptr)) = stack.pop() {
            if !ptr.is_none() {
                f(level, idx, ptr);
            }
            if level == 0 {
                continue;
            }
            let Some(view) = self.view(io, level, idx, ptr)? else {
                continue;
            };
            if let Page::Interior(p) = view.page() {
                for (i, x) in p.iter().enumerate() {
                    if !x.is_none() {
                        stack.push((level - 1, idx * PTR_FANOUT as u64 + i as u64, *x));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Entry implementations for the pool's tables.
mod entries {
    use super::*;
    use crate::format::node::{SegEntry, VolRecord, SEG_PER_PAGE, VOL_PER_PAGE};
    use crate::format::{Rd, Wr};

    impl Entry for Ptr {
        const PER_PAGE: usize = PTR_FANOUT;
        const KIND: NodeKind = NodeKind::Vba;
        fn encode_page(e: &[Self]) -> Vec<u8> {
            encode_ptrs(e)
        }
        fn decode_page(p: &[u8]) -> Result<Vec<Self>, FormatError> {
            decode_ptrs(p, PTR_FANOUT)
        }
    }

    impl Entry for SegEntry {
        const PER_PAGE: usize = SEG_PER_PAGE;
        const KIND: NodeKind = NodeKind::SegTab;
        fn encode_page(e: &[Self]) -> Vec<u8> {
            let mut w = Wr::with_capacity(e.len() * SegEntry::SIZE);
            e.iter().for_each(|x| x.encode(&mut w));
            w.buf
        }
        fn decode_page(p: &[u8]) -> Result<Vec<Self>, FormatError> {
            let mut r = Rd::new(p, "segment table page");
            (0..SEG_PER_PAGE)
                .map(|_| SegEntry::decode(&mut r))
                .collect()
        }
    }

    impl Entry for VolRecord {
        const PER_PAGE: usize = VOL_PER_PAGE;
        const KIND: NodeKind = NodeKind::VolDir;
        fn encode_page(e: &[Self]) -> Vec<u8> {
            let mut w = Wr::with_capacity(e.len() * VolRecord::SIZE);
            e.iter().for_each(|x| x.encode(&mut w));
            w.buf
        }
        fn decode_page(p: &[u8]) -> Result<Vec<Self>, FormatError> {
            let mut r = Rd::new(p, "volume directory page");
            (0..VOL_PER_PAGE)
                .map(|_| VolRecord::decode(&mut r))
                .collect()
        }
        fn is_empty(&self) -> bool {
            self.id == 0
        }
    }
}

/// Record a use of an entry at the clock's current time. Shared lookups do not advance the
/// clock (a contended read-modify-write per lookup would serialise parallel readers on one
/// cache line); every `&mut` lookup and load does, so entries used since the last load rank
/// above all entries used before it: LRU at the granularity of cache misses. Relaxed: the
/// order is a heuristic, and eviction runs under `&mut`, after every shared lookup ended.
pub fn touch(tick: &AtomicU64, clock: &AtomicU64) {
    let now = clock.load(Ordering::Relaxed);
    // A store only when the value changes keeps the cache line shared between readers.
    if tick.load(Ordering::Relaxed) < now {
        tick.store(now, Ordering::Relaxed);
    }
}

/// The entry for `index` in its leaf page (a page decoded short is an error, not a panic).
fn leaf_slot<E: Entry>(v: &mut [E], index: u64) -> Result<&mut E> {
    let at = (index % E::PER_PAGE as u64) as usize;
    let len = v.len();
    v.get_mut(at).ok_or_else(|| {
        super::error::PoolError::Internal(format!("entry {at} of a {len}-entry table page"))
    })
}
