//! The pool's in-memory state and its low-level block plumbing (streams, allocation, reads).

use super::error::{PoolError, Result};
use super::journal::Journal;
use super::maps::MapNode;
use super::ptree::{NodeIo, PhysTree};
use super::pvs::{seg_start, split, PvSet};
use super::Options;
use crate::format::node::{decode_node, NodeKind, Ptr, SegEntry, VolRecord, SEG_DATA, SEG_META};
use crate::format::{Writer, BLOCK, SEG_BLOCKS};
use rustc_hash::FxHashMap as HashMap;
use std::collections::{BTreeMap, BTreeSet};

/// Which append stream a block goes to: user data, metadata (checkpoints) or the cleaner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamId {
    Data = 0,
    Meta = 1,
    Gc = 2,
}

/// An append head: an open segment and the blocks appended but not yet written out.
#[derive(Default)]
pub struct Stream {
    pub seg: u64,
    pub next: u64,
    pub buf_slot: u64,
    pub buf: Vec<u8>,
}

impl Stream {
    pub fn buffered(&self, pba: u64) -> Option<&[u8]> {
        let (seg, slot) = split(pba);
        if self.seg == 0 || seg != self.seg || slot < self.buf_slot || slot >= self.next {
            return None;
        }
        let at = ((slot - self.buf_slot) as usize) * BLOCK;
        self.buf.get(at..at + BLOCK)
    }
}

/// Per data segment: the VBA behind each of its blocks (what the cleaner needs to move them).
pub struct Summary {
    pub tags: Vec<u64>,
    pub dirty: bool,
}

/// Counters for write amplification and diagnostics.
#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Counters {
    pub user_blocks_written: u64,
    pub gc_blocks_moved: u64,
    pub meta_blocks_written: u64,
    pub journal_blocks_written: u64,
    pub checkpoints: u64,
    pub segments_cleaned: u64,
}

/// Set of segment numbers changed since the last checkpoint: O(1) insert on the write path.
#[derive(Default)]
pub struct DirtySet {
    flags: Vec<bool>,
    list: Vec<u64>,
}

impl DirtySet {
    pub fn insert(&mut self, seg: u64) {
        let i = seg as usize;
        if i >= self.flags.len() {
            self.flags.resize(i + 1, false);
        }
        if !self.flags[i] {
            self.flags[i] = true;
            self.list.push(seg);
        }
    }
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
    /// Remove and return every member, in ascending order.
    pub fn take(&mut self) -> Vec<u64> {
        let mut l = std::mem::take(&mut self.list);
        for &s in &l {
            self.flags[s as usize] = false;
        }
        l.sort_unstable();
        l
    }
}

pub struct Inner {
    pub pool_id: [u8; 16],
    pub writer: Writer,
    pub pvs: PvSet,
    pub opts: Options,
    /// Generation of the last durable checkpoint.
    pub generation: u64,
    /// Next never-used data VBA (even numbers) and map-node VBA (odd numbers). The two spaces
    /// are disjoint because journal records name data VBAs while replay re-derives node VBAs.
    pub next_vba: u64,
    pub next_node_vba: u64,
    pub free_vbas: BTreeSet<u64>,
    pub free_node_vbas: BTreeSet<u64>,
    pub next_volume_id: u64,
    pub epoch: u64,
    pub vba: PhysTree<Ptr>,
    pub segtab: PhysTree<SegEntry>,
    pub voldir: PhysTree<VolRecord>,
    /// Authoritative segment table (index = pool segment; index 0 unused).
    pub segs: Vec<SegEntry>,
    pub segs_dirty: DirtySet,
    pub free: BTreeSet<u64>,
    /// Authoritative volume records.
    pub vols: BTreeMap<u64, VolRecord>,
    pub vols_dirty: BTreeSet<u64>,
    pub names: HashMap<String, u64>,
    pub maps: HashMap<u64, MapNode>,
    /// Dirty map nodes among `maps`.
    pub maps_dirty: usize,
    pub map_tick: u64,
    pub summaries: HashMap<u64, Summary>,
    pub streams: [Stream; 3],
    pub journal: Journal,
    pub counters: Counters,
    /// Set after a device failure that leaves memory ahead of disk: no more mutations.
    pub poisoned: Option<String>,
    /// Data writes since the last checkpoint (bounds replay work).
    pub writes_since_ckpt: u64,
    /// Free segments kept back for metadata and the cleaner.
    pub reserve: u64,
    /// Dirty metadata nodes allowed before a checkpoint: what the reserve can always absorb.
    pub dirty_cap: usize,
    /// Held for reading by reads doing I/O outside the pool lock; a checkpoint takes it for
    /// writing before freed segments may be reused.
    pub reuse: std::sync::Arc<std::sync::RwLock<()>>,
    /// Which PV the next new segment is taken from (round robin).
    pub alloc_cursor: usize,
    /// Mirror counters (shared with reads outside the lock).
    pub mirror: std::sync::Arc<super::mirror::MirrorStats>,
}

impl NodeIo for Inner {
    fn read_node(&self, ptr: Ptr, kind: NodeKind, level: u8, id: u64) -> Result<Vec<u8>> {
        let buf = self.read_block(ptr.pba)?;
        match self.check_node(&buf, ptr, kind, level, id) {
            Ok(()) => Ok(buf),
            // Another failure group may hold a good copy: read it and repair this one.
            Err(e) if self.pvs.mirrored() => self
                .read_verified(ptr.pba, &|b| {
                    self.check_node(b, ptr, kind, level, id).is_ok()
                })
                .map_err(|_| e),
            Err(e) => Err(e),
        }
    }
    fn pool_id(&self) -> &[u8; 16] {
        &self.pool_id
    }
}

impl Inner {
    /// Whether `buf` is the node `ptr` names.
    fn check_node(&self, buf: &[u8], ptr: Ptr, kind: NodeKind, level: u8, id: u64) -> Result<()> {
        let (dev, off) = self.describe(ptr.pba);
        let (h, _) = decode_node(buf, &self.pool_id).map_err(|e| PoolError::Corrupt {
            dev: dev.clone(),
            offset: off,
            source: e,
        })?;
        let stored = u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]);
        if stored != ptr.crc {
            return Err(PoolError::Checksum {
                dev,
                offset: off,
                what: format!("{kind:?} node {level}/{id}: parent expects another version"),
                stored,
                computed: ptr.crc,
            });
        }
        if h.kind != kind || h.level != level || h.id != id {
            return Err(PoolError::Corrupt {
                dev,
                offset: off,
                source: crate::format::FormatError::Invalid {
                    what: "metadata node",
                    field: "identity",
                    detail: format!(
                        "found {:?} {}/{} where {kind:?} {level}/{id} was expected",
                        h.kind, h.level, h.id
                    ),
                },
            });
        }
        Ok(())
    }
}

impl Inner {
    /// (device name, byte offset) of a PBA for messages.
    pub fn describe(&self, pba: u64) -> (String, u64) {
        match self.locate(pba) {
            Ok((pv, off)) => (self.pvs.name(pv), off),
            Err(_) => (format!("pba {pba}"), 0),
        }
    }

    /// Where a pool block lives: PV index and byte offset (of the first good copy in a mirrored
    /// pool). Pool segment `s` is segment `s - first_pool_segment` of the PV of the group whose
    /// range contains it.
    pub fn locate(&self, pba: u64) -> Result<(u16, u64)> {
        let (seg, slot) = split(pba);
        let groups = self.read_groups(seg);
        let fg = groups.first().copied().unwrap_or(0);
        match self.pvs.locate_in(fg, seg) {
            Some((pv, pv_seg)) => Ok((pv, self.pvs.offset(pv, pv_seg, slot)?)),
            None => Err(PoolError::Invalid(format!(
                "block address {pba} is outside the pool"
            ))),
        }
    }

    /// Read one pool block (from a stream buffer if it has not been written out yet).
    pub fn read_block(&self, pba: u64) -> Result<Vec<u8>> {
        for s in &self.streams {
            if let Some(b) = s.buffered(pba) {
                return Ok(b.to_vec());
            }
        }
        let mut buf = vec![0u8; BLOCK];
        self.read_copies(pba, &mut buf)?;
        Ok(buf)
    }

    /// Read `n` consecutive blocks of one segment into `out`.
    pub fn read_run(&self, pba: u64, out: &mut [u8]) -> Result<()> {
        let n = (out.len() / BLOCK) as u64;
        if self
            .streams
            .iter()
            .any(|s| (0..n).any(|i| s.buffered(pba + i).is_some()))
        {
            for (i, chunk) in out.chunks_mut(BLOCK).enumerate() {
                chunk.copy_from_slice(&self.read_block(pba + i as u64)?);
            }
            return Ok(());
        }
        self.read_copies(pba, out)
    }

    pub fn check_writable(&self) -> Result<()> {
        if self.opts.read_only {
            return Err(PoolError::ReadOnly);
        }
        match &self.poisoned {
            Some(why) => Err(PoolError::Poisoned(why.clone())),
            None => Ok(()),
        }
    }

    /// Latch a device failure: memory may now be ahead of disk, so refuse further changes.
    pub fn poison<T>(&mut self, r: Result<T>) -> Result<T> {
        if let Err(e) = &r {
            if matches!(e, PoolError::Io { .. }) {
                tracing::error!("pool poisoned: {e}");
                self.poisoned = Some(e.to_string());
            }
        }
        r
    }

    pub fn seg_mut(&mut self, seg: u64) -> &mut SegEntry {
        self.segs_dirty.insert(seg);
        &mut self.segs[seg as usize]
    }

    /// Account one more live block at `pba`.
    pub fn live_inc(&mut self, pba: u64) {
        if pba != 0 {
            let (seg, _) = split(pba);
            if (seg as usize) < self.segs.len() {
                self.seg_mut(seg).live += 1;
            }
        }
    }

    /// Account one block less at `pba`.
    pub fn live_dec(&mut self, pba: u64) {
        if pba != 0 {
            let (seg, _) = split(pba);
            if (seg as usize) < self.segs.len() {
                let e = self.seg_mut(seg);
                e.live = e.live.saturating_sub(1);
            }
        }
    }

    /// Free segments available to a stream (data may not dip into the reserve).
    pub fn free_for(&self, which: StreamId) -> u64 {
        let f = self.free.len() as u64;
        match which {
            StreamId::Data => f.saturating_sub(self.reserve),
            // The cleaner may take whatever the pending checkpoint does not need.
            StreamId::Gc => f.saturating_sub(self.ckpt_need(0)),
            StreamId::Meta => f,
        }
    }

    /// A free segment, spreading consecutive segments over the PVs (of the first failure
    /// group) in turn, so an LU's extents land on every PV and PVs of unequal size all fill up.
    fn pick_free_segment(&mut self) -> u64 {
        let fg = self.pvs.pvs[0].sb.fg_id;
        let ranges: Vec<(u64, u64)> = self
            .pvs
            .pvs
            .iter()
            .filter(|p| p.sb.fg_id == fg)
            .map(|p| {
                (
                    p.sb.first_pool_segment,
                    p.sb.first_pool_segment + p.sb.pv_segments,
                )
            })
            .collect();
        let n = ranges.len().max(1);
        for k in 0..n {
            let i = (self.alloc_cursor + k) % n;
            let Some(&(lo, hi)) = ranges.get(i) else {
                break;
            };
            if let Some(&seg) = self.free.range(lo..hi).next() {
                self.alloc_cursor = i + 1;
                return seg;
            }
        }
        self.free.iter().next().copied().unwrap_or(0)
    }

    /// Open a new segment for a stream. Segments are taken round-robin over the PVs so an LU's
    /// extents spread across them.
    fn open_segment(&mut self, which: StreamId) -> Result<u64> {
        if self.free_for(which) == 0 {
            return Err(PoolError::NoSpace(format!(
                "no free segment for {which:?} ({} free, {} reserved for metadata, {} in pool)",
                self.free.len(),
                self.reserve,
                self.segs.len() - 1
            )));
        }
        let seg = self.pick_free_segment();
        self.free.remove(&seg);
        let gen = self.generation;
        let e = self.seg_mut(seg);
        e.state = if which == StreamId::Meta {
            SEG_META
        } else {
            SEG_DATA
        };
        e.live = 0;
        e.seq = gen;
        e.summary = 0;
        e.summary_crc = 0;
        if which != StreamId::Meta {
            self.summaries.insert(
                seg,
                Summary {
                    tags: vec![0; SEG_BLOCKS as usize],
                    dirty: true,
                },
            );
        }
        let s = &mut self.streams[which as usize];
        *s = Stream {
            seg,
            next: 0,
            buf_slot: 0,
            buf: Vec::with_capacity(64 * BLOCK),
        };
        self.note_segment_opened(seg)?;
        Ok(seg)
    }

    /// Whether appending one block to `which` needs a fresh segment.
    pub fn needs_segment(&self, which: StreamId) -> bool {
        let s = &self.streams[which as usize];
        s.seg == 0 || s.next >= SEG_BLOCKS
    }

    /// Append a block to a stream; returns its PBA. Data is buffered and written out in runs.
    pub fn append(&mut self, which: StreamId, block: &[u8]) -> Result<u64> {
        if self.needs_segment(which) {
            let r = self.write_out(which);
            self.poison(r)?;
            self.open_segment(which)?;
        }
        let s = &mut self.streams[which as usize];
        let pba = seg_start(s.seg) + s.next;
        s.buf.extend_from_slice(block);
        s.next += 1;
        // Metadata blocks are often reserved first and filled later in a checkpoint: keep them
        // buffered for the whole segment so a reserved block is not written twice.
        if s.next >= SEG_BLOCKS || (which != StreamId::Meta && s.buf.len() >= 64 * BLOCK) {
            let r = self.write_out(which);
            self.poison(r)?;
        }
        Ok(pba)
    }

    /// Write a stream's buffered blocks to their PV (not yet durable).
    pub fn write_out(&mut self, which: StreamId) -> Result<()> {
        let s = &self.streams[which as usize];
        if s.seg == 0 || s.buf.is_empty() {
            return Ok(());
        }
        let pba = seg_start(s.seg) + s.buf_slot;
        let buf = std::mem::take(&mut self.streams[which as usize].buf);
        let r = self.put_run(pba, &buf);
        self.streams[which as usize].buf = buf;
        r?;
        let s = &mut self.streams[which as usize];
        s.buf.clear();
        s.buf_slot = s.next;
        Ok(())
    }

    pub fn write_out_all(&mut self) -> Result<()> {
        for w in [StreamId::Data, StreamId::Gc, StreamId::Meta] {
            let r = self.write_out(w);
            self.poison(r)?;
        }
        Ok(())
    }

    /// Allocate a data VBA (even; reusing freed ones first).
    pub fn alloc_data_vba(&mut self) -> u64 {
        if let Some(v) = self.free_vbas.pop_first() {
            return v;
        }
        let v = self.next_vba;
        self.next_vba += 2;
        v
    }

    /// Allocate a map-node VBA (odd; reusing freed ones first).
    pub fn alloc_node_vba(&mut self) -> u64 {
        if let Some(v) = self.free_node_vbas.pop_first() {
            return v;
        }
        let v = self.next_node_vba;
        self.next_node_vba += 2;
        v
    }

    /// Return a VBA to its free set.
    pub fn release_vba(&mut self, vba: u64) {
        if vba % 2 == 0 {
            self.free_vbas.insert(vba);
        } else {
            self.free_node_vbas.insert(vba);
        }
    }

    /// Record the VBA behind a data block in its segment's summary.
    pub fn tag(&mut self, pba: u64, vba: u64) -> Result<()> {
        let (seg, slot) = split(pba);
        self.load_summary(seg)?;
        if let Some(s) = self.summaries.get_mut(&seg) {
            s.tags[slot as usize] = vba;
            s.dirty = true;
        }
        Ok(())
    }

    /// Make a data segment's summary resident.
    pub fn load_summary(&mut self, seg: u64) -> Result<()> {
        if self.summaries.contains_key(&seg) {
            return Ok(());
        }
        let e = self.segs.get(seg as usize).copied().unwrap_or_default();
        let tags = if e.summary == 0 {
            vec![0; SEG_BLOCKS as usize]
        } else {
            let ptr = Ptr {
                pba: e.summary,
                crc: e.summary_crc,
                aux: 0,
            };
            let buf = self.read_node(ptr, NodeKind::Summary, 0, seg)?;
            let (_, payload) =
                decode_node(&buf, &self.pool_id).map_err(|e2| PoolError::Corrupt {
                    dev: self.describe(ptr.pba).0,
                    offset: self.describe(ptr.pba).1,
                    source: e2,
                })?;
            crate::format::node::decode_u64s(payload, SEG_BLOCKS as usize).map_err(|e2| {
                PoolError::Corrupt {
                    dev: self.describe(ptr.pba).0,
                    offset: 0,
                    source: e2,
                }
            })?
        };
        self.summaries.insert(seg, Summary { tags, dirty: false });
        Ok(())
    }

    /// Whether a segment is one of the open append heads.
    pub fn is_open(&self, seg: u64) -> bool {
        self.streams.iter().any(|s| s.seg == seg)
    }

    /// Pool totals in blocks: (data-area blocks, free-segment blocks, live blocks).
    pub fn space(&self) -> (u64, u64, u64) {
        let total = (self.segs.len() as u64 - 1) * SEG_BLOCKS;
        let free = self.free.len() as u64 * SEG_BLOCKS;
        let live = self.segs.iter().map(|e| u64::from(e.live)).sum();
        (total, free, live)
    }

    /// Keep the metadata caches within their budgets (called between operations). Dirty nodes
    /// cannot be dropped; a checkpoint, due once they pass the dirty limit, cleans them.
    pub fn trim_caches(&mut self) {
        let slack = self.opts.dirty_limit;
        if self.maps.len() > self.opts.map_cache_nodes + self.opts.map_cache_nodes / 4 + slack {
            self.evict_maps();
        }
        if self.vba.cached_pages()
            > self.opts.vba_cache_pages + self.opts.vba_cache_pages / 4 + slack
        {
            self.vba.evict();
        }
    }
}
