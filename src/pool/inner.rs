//! The pool's in-memory state and its low-level block plumbing (streams, allocation, reads).

#![cfg_attr(
    not(test),
    deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)
)]

use super::error::{PoolError, Result};
use super::journal::Journal;
use super::maps::MapNode;
use super::ptree::{NodeIo, PhysTree};
use super::pvs::{seg_start, split, PvSet};
use super::Options;
use crate::dev::is_no_space;
use crate::format::node::{decode_node, NodeKind, Ptr, SegEntry, VolRecord, SEG_DATA, SEG_META};
use crate::format::{Writer, BLOCK, BLOCK_U64, SEG_BLOCKS};
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
    /// Syncs issued to PVs, and group-commit rounds (each covers every flush waiting).
    #[serde(default)]
    pub pv_syncs: u64,
    #[serde(default)]
    pub sync_rounds: u64,
    /// Checkpoints taken by the data path itself (forced, or no checkpointer) and by the
    /// background checkpointer.
    #[serde(default)]
    pub writer_checkpoints: u64,
    #[serde(default)]
    pub background_checkpoints: u64,
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
        if let Some(f) = self.flags.get_mut(i) {
            if !*f {
                *f = true;
                self.list.push(seg);
            }
        }
    }
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
    /// Remove and return every member, in ascending order.
    pub fn take(&mut self) -> Vec<u64> {
        let mut l = std::mem::take(&mut self.list);
        for &s in &l {
            if let Some(f) = self.flags.get_mut(s as usize) {
                *f = false;
            }
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
    /// LRU clock of `maps`: advanced by `&mut` lookups and loads (see [`super::ptree::touch`]).
    pub map_tick: std::sync::atomic::AtomicU64,
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
    pub reuse: std::sync::Arc<crate::sync::RwLock<()>>,
    /// Which PV the next new segment is taken from (round robin).
    pub alloc_cursor: usize,
    /// Free segments whose backing store is allocated on the host, kept for checkpoints
    /// (see [`Inner::top_up_backing`]).
    pub backed: BTreeSet<u64>,
    /// Mirror counters (shared with reads outside the lock).
    pub mirror: std::sync::Arc<super::mirror::MirrorStats>,
    /// The background checkpointer, once started: the data path wakes it (see
    /// [`Inner::checkpoint_step`]).
    pub checkpointer: Option<std::sync::Arc<super::checkpointer::Checkpointer>>,
    /// The seal `writer` opened at: where the log it replayed ended, and whether the opener
    /// asked for it ([`super::Options::replay_to`]) rather than replaying to the end (FORMAT.md
    /// §7.3). Opened read-only: the seal the last writer recorded in its checkpoint.
    pub seal: Option<crate::format::Seal>,
    pub seal_requested: bool,
    /// Opened read-only: where the last writer's log ends now (the seal a taker would use).
    pub log_end: Option<crate::format::Seal>,
    /// While `pv replace` copies a PV in slices: the segments opened since it started, which it
    /// copies again (see `pvcopy.rs`).
    pub pv_copy_dirty: Option<BTreeSet<u64>>,
    /// Data-stream runs written out without the pool lock (see `outbound.rs`).
    pub outbound: std::sync::Arc<super::outbound::Outbound>,
    /// Flights queued by the current lock holder, for [`super::Pool::write`] to write once it
    /// has released the lock (another holder's settle may take them first).
    pub queued: Vec<u64>,
    /// Segments a checkpoint that was not committed had recorded free: the next one frees them.
    pub carried_free: Vec<u64>,
    /// A checkpoint the background checkpointer captured and is making durable without the
    /// lock; committed in memory by [`Inner::finish_background_checkpoint`].
    pub bg_ckpt: Option<(
        super::ckpt::Captured,
        std::sync::Arc<super::checkpointer::Running>,
    )>,
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
        super::check::check_node_bytes(
            &self.pool_id,
            &self.describe(ptr.pba),
            buf,
            ptr,
            kind,
            level,
            id,
        )
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
        if let Some(b) = self.outbound.block(pba) {
            return Ok(b);
        }
        let mut buf = vec![0u8; BLOCK];
        self.read_copies(pba, &mut buf)?;
        Ok(buf)
    }

    /// Read `n` consecutive blocks of one segment into `out`.
    pub fn read_run(&self, pba: u64, out: &mut [u8]) -> Result<()> {
        let n = (out.len() / BLOCK) as u64;
        if self.in_memory(pba, n) {
            for (i, chunk) in out.chunks_mut(BLOCK).enumerate() {
                chunk.copy_from_slice(&self.read_block(pba + i as u64)?);
            }
            return Ok(());
        }
        self.read_copies(pba, out)
    }

    /// Whether any of the `n` blocks from `pba` on is not on the PVs yet (in a stream buffer or
    /// a flight).
    pub fn in_memory(&self, pba: u64, n: u64) -> bool {
        self.streams
            .iter()
            .any(|s| (0..n).any(|i| s.buffered(pba + i).is_some()))
            || self.outbound.holds_any(pba, n)
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

    /// The pool's name (from the first PV's superblock).
    pub fn pool_name(&self) -> String {
        self.pvs
            .pvs
            .first()
            .map(|p| p.sb.pool_name.clone())
            .unwrap_or_default()
    }

    /// The append head of a stream.
    pub fn stream(&self, which: StreamId) -> &Stream {
        let [data, meta, gc] = &self.streams;
        match which {
            StreamId::Data => data,
            StreamId::Meta => meta,
            StreamId::Gc => gc,
        }
    }

    pub fn stream_mut(&mut self, which: StreamId) -> &mut Stream {
        let [data, meta, gc] = &mut self.streams;
        match which {
            StreamId::Data => data,
            StreamId::Meta => meta,
            StreamId::Gc => gc,
        }
    }

    /// A copy of a segment's table entry (an all-zero, free entry for one outside the table).
    pub fn seg(&self, seg: u64) -> SegEntry {
        usize::try_from(seg)
            .ok()
            .and_then(|i| self.segs.get(i))
            .copied()
            .unwrap_or_default()
    }

    /// A segment's table entry, marked dirty for the next checkpoint.
    pub fn seg_mut(&mut self, seg: u64) -> Result<&mut SegEntry> {
        let e = usize::try_from(seg)
            .ok()
            .and_then(|i| self.segs.get_mut(i))
            .ok_or_else(|| {
                PoolError::Invalid(format!("segment {seg} is outside the segment table"))
            })?;
        self.segs_dirty.insert(seg);
        Ok(e)
    }

    /// Account one more live block at `pba` (PBA 0 and addresses outside the pool are ignored).
    pub fn live_inc(&mut self, pba: u64) {
        if pba != 0 {
            if let Ok(e) = self.seg_mut(split(pba).0) {
                e.live += 1;
            }
        }
    }

    /// Account one block less at `pba`.
    pub fn live_dec(&mut self, pba: u64) {
        if pba != 0 {
            if let Ok(e) = self.seg_mut(split(pba).0) {
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

    /// Free segments to try for a new append head, one per PV of the first failure group,
    /// starting at the round-robin cursor: (cursor position, segment). Consecutive segments
    /// spread over the PVs so an LU's extents land on every PV and PVs of unequal size all
    /// fill up.
    fn free_candidates(&self) -> Vec<(usize, u64)> {
        let Some(fg) = self.pvs.pvs.first().map(|p| p.sb.fg_id) else {
            return Vec::new();
        };
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
        let mut out = Vec::new();
        for k in 0..n {
            let i = (self.alloc_cursor + k) % n;
            let Some(&(lo, hi)) = ranges.get(i) else {
                break;
            };
            if let Some(&seg) = self.free.range(lo..hi).next() {
                out.push((i, seg));
            }
        }
        if out.is_empty() {
            if let Some(&seg) = self.free.iter().next() {
                out.push((self.alloc_cursor, seg));
            }
        }
        out
    }

    /// Allocate the host's backing store for pool segment `seg` on its PV in every failure
    /// group that is up. `Ok(false)`: the host file system has no room for it now.
    pub fn back_segment(&self, seg: u64) -> Result<bool> {
        for fg in self.pvs.groups() {
            if self.pvs.group_failed(fg) {
                continue;
            }
            let Some((pv, pv_seg)) = self.pvs.locate_in(fg, seg) else {
                continue;
            };
            let off = self.pvs.offset(pv, pv_seg, 0)?;
            let dev = &self.pvs.pv(pv)?.dev;
            if let Err(e) = dev.reserve(off, SEG_BLOCKS * BLOCK_U64) {
                if is_no_space(&e) {
                    tracing::debug!("segment {seg} cannot be backed now: {e}");
                    return Ok(false);
                }
                // Any other failure shows up again, and is handled, when the segment is written.
                tracing::warn!("{e}");
            }
        }
        Ok(true)
    }

    /// Take a free segment for a new append head, with its backing store allocated on the
    /// host (so writing it cannot fail with ENOSPC on a sparse PV file). Placement does not
    /// depend on backing: the usual candidate is taken if it can be backed. One of the
    /// segments kept backed for checkpoints (`backed`) goes to the data stream only while more
    /// than the reserve remain, to the cleaner while more than half, unless another free
    /// segment can be backed in its place.
    fn take_segment(&mut self, which: StreamId) -> Result<u64> {
        let free = &self.free;
        self.backed.retain(|s| free.contains(s));
        let floor = match which {
            StreamId::Data => self.reserve,
            StreamId::Gc => self.reserve / 2,
            StreamId::Meta => 0,
        };
        // When every free segment is backed, the host has no say: the pool's own reserve
        // (`free_for`, checked by the caller) is what keeps room for the checkpoint.
        let all_backed = self.free.len() <= self.backed.len();
        let spare_backed = all_backed || self.backed.len() as u64 > floor;
        for (i, seg) in self.free_candidates() {
            let ok = if self.backed.contains(&seg) {
                spare_backed || self.back_instead_of(seg)?
            } else {
                self.back_segment(seg)?
            };
            if ok {
                self.alloc_cursor = i + 1;
                self.backed.remove(&seg);
                return Ok(seg);
            }
        }
        if spare_backed {
            if let Some(seg) = self.backed.pop_last() {
                return Ok(seg);
            }
        }
        Err(PoolError::NoSpace(format!(
            "the host file system holding the PVs is full: no backing store for a new {which:?} segment ({} pool segments free)",
            self.free.len()
        )))
    }

    /// Back the highest free segment not yet backed, to take the place of `seg` among the
    /// segments kept for checkpoints. `Ok(false)`: the host has no room for it.
    fn back_instead_of(&mut self, seg: u64) -> Result<bool> {
        let Some(&other) = self
            .free
            .iter()
            .rev()
            .find(|s| **s != seg && !self.backed.contains(s))
        else {
            return Ok(false);
        };
        if !self.back_segment(other)? {
            return Ok(false);
        }
        self.backed.insert(other);
        Ok(true)
    }

    /// Keep `reserve` free segments backed on the host, so a checkpoint can always be written
    /// even once the host file system is full. Best effort: stops at the first refusal.
    pub fn top_up_backing(&mut self) {
        if self.opts.read_only {
            return;
        }
        let free = &self.free;
        self.backed.retain(|s| free.contains(s));
        let want = usize::try_from(self.reserve).unwrap_or(usize::MAX);
        if self.backed.len() >= want {
            return;
        }
        let cands: Vec<u64> = self
            .free
            .iter()
            .rev()
            .filter(|s| !self.backed.contains(s))
            .take(want - self.backed.len())
            .copied()
            .collect();
        for seg in cands {
            match self.back_segment(seg) {
                Ok(true) => {
                    self.backed.insert(seg);
                }
                Ok(false) => {
                    tracing::warn!(
                        "host file system is full: {} of {want} segments kept for checkpoints are backed",
                        self.backed.len()
                    );
                    return;
                }
                Err(e) => {
                    tracing::warn!("backing segment {seg}: {e}");
                    return;
                }
            }
        }
    }

    /// Open a new segment for a stream. Segments are taken round-robin over the PVs so an LU's
    /// extents spread across them.
    fn open_segment(&mut self, which: StreamId) -> Result<u64> {
        if self.free_for(which) == 0 {
            return Err(PoolError::NoSpace(format!(
                "no free segment for {which:?} ({} free, {} reserved for metadata, {} in pool)",
                self.free.len(),
                self.reserve,
                self.segs.len().saturating_sub(1)
            )));
        }
        let seg = self.take_segment(which)?;
        self.free.remove(&seg);
        if let Some(d) = self.pv_copy_dirty.as_mut() {
            d.insert(seg);
        }
        // A segment opened while a background checkpoint is being made durable was not
        // covered by it: it counts as opened in the next generation (see `fail_pv`).
        let gen = self.generation + u64::from(self.bg_ckpt.is_some());
        let e = self.seg_mut(seg)?;
        e.state = if which == StreamId::Meta {
            SEG_META
        } else {
            SEG_DATA
        };
        e.live = 0;
        e.seq = gen;
        e.summary = 0;
        e.summary_crc = 0;
        self.stamp_segment(seg, Some(which))?;
        if which != StreamId::Meta {
            self.summaries.insert(
                seg,
                Summary {
                    tags: vec![0; SEG_BLOCKS as usize],
                    dirty: true,
                },
            );
        }
        *self.stream_mut(which) = Stream {
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
        let s = self.stream(which);
        s.seg == 0 || s.next >= SEG_BLOCKS
    }

    /// Append a block to a stream; returns its PBA. Data is buffered and written out in runs.
    pub fn append(&mut self, which: StreamId, block: &[u8]) -> Result<u64> {
        if self.needs_segment(which) {
            let r = self.send_off(which);
            self.poison(r)?;
            self.open_segment(which)?;
        }
        let s = self.stream_mut(which);
        let pba = seg_start(s.seg) + s.next;
        s.buf.extend_from_slice(block);
        s.next += 1;
        // Metadata blocks are often reserved first and filled later in a checkpoint: keep them
        // buffered for the whole segment so a reserved block is not written twice.
        if s.next >= SEG_BLOCKS || (which != StreamId::Meta && s.buf.len() >= 64 * BLOCK) {
            let r = self.send_off(which);
            self.poison(r)?;
        }
        Ok(pba)
    }

    /// Start writing out a stream's buffered blocks: the data stream's become a flight, written
    /// after the pool lock is released (`outbound.rs`); the others are written now.
    fn send_off(&mut self, which: StreamId) -> Result<()> {
        if which != StreamId::Data {
            return self.write_out(which);
        }
        let s = self.stream(which);
        if s.seg == 0 || s.buf.is_empty() {
            return Ok(());
        }
        let (seg, pba) = (s.seg, seg_start(s.seg) + s.buf_slot);
        let targets = self.flight_targets(seg, s.buf_slot)?;
        let s = self.stream_mut(which);
        let buf = std::mem::replace(&mut s.buf, Vec::with_capacity(64 * BLOCK));
        s.buf_slot = s.next;
        let seq = self.outbound.push(pba, buf, targets);
        self.queued.push(seq);
        Ok(())
    }

    /// Where a run from `slot` of pool segment `seg` is written: its place on a PV of each
    /// failure group that is up (as [`Inner::put_run`] would write it).
    pub fn flight_targets(&self, seg: u64, slot: u64) -> Result<Vec<super::outbound::Target>> {
        let mut targets = Vec::new();
        for fg in self.pvs.groups() {
            if self.pvs.group_failed(fg) {
                continue;
            }
            if let Some((pv, pv_seg)) = self.pvs.locate_in(fg, seg) {
                let off = self.pvs.offset(pv, pv_seg, slot)?;
                targets.push((pv, self.pvs.pv(pv)?.dev.clone(), off));
            }
        }
        Ok(targets)
    }

    /// Write every flight not written yet, with the pool lock held, and wait for those being
    /// written by writers outside it: afterwards the PVs hold every block but the stream
    /// buffers'. A failure is handled as a write-out under the lock handles it (a PV fails, or
    /// the pool is poisoned; ENOSPC keeps the flight for the next settle and is returned).
    pub fn settle_flights(&mut self) -> Result<()> {
        self.queued.clear();
        let mut first_err = None;
        for c in self.outbound.take_all() {
            let r = self.put_run(c.pba, &c.buf);
            self.outbound.finish(c.seq, r.is_ok());
            if let Err(e) = r {
                first_err.get_or_insert(e);
            }
        }
        match first_err {
            None => Ok(()),
            Some(e) => self.poison(Err(e)),
        }
    }

    /// Write a stream's buffered blocks to their PV (not yet durable).
    pub fn write_out(&mut self, which: StreamId) -> Result<()> {
        if which == StreamId::Data {
            self.settle_flights()?;
        }
        let s = self.stream(which);
        if s.seg == 0 || s.buf.is_empty() {
            return Ok(());
        }
        let pba = seg_start(s.seg) + s.buf_slot;
        let buf = std::mem::take(&mut self.stream_mut(which).buf);
        let r = self.put_run(pba, &buf);
        self.stream_mut(which).buf = buf;
        r?;
        let s = self.stream_mut(which);
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
            if let Some(t) = s.tags.get_mut(slot as usize) {
                *t = vba;
            }
            s.dirty = true;
        }
        Ok(())
    }

    /// Make a data segment's summary resident.
    pub fn load_summary(&mut self, seg: u64) -> Result<()> {
        if self.summaries.contains_key(&seg) {
            return Ok(());
        }
        let tags = self.read_summary(seg)?;
        self.summaries.insert(seg, Summary { tags, dirty: false });
        Ok(())
    }

    /// The VBA tags of data segment `seg`: the cached summary, or read without caching it.
    pub fn summary_tags(&self, seg: u64) -> Result<Vec<u64>> {
        match self.summaries.get(&seg) {
            Some(s) => Ok(s.tags.clone()),
            None => self.read_summary(seg),
        }
    }

    /// Read segment `seg`'s summary from disk (all zeroes if it has none yet).
    fn read_summary(&self, seg: u64) -> Result<Vec<u64>> {
        let e = self.segs.get(seg as usize).copied().unwrap_or_default();
        Ok(if e.summary == 0 {
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
        })
    }

    /// Whether a segment is one of the open append heads.
    pub fn is_open(&self, seg: u64) -> bool {
        self.streams.iter().any(|s| s.seg == seg) || self.outbound.in_segment(seg)
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
