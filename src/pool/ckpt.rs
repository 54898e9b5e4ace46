//! Checkpoints: write every dirty metadata node to a new place, then commit by writing the
//! checkpoint slot on every PV. Nothing the previous checkpoint references is overwritten, and
//! segments emptied since then become reusable only after the new checkpoint is durable.

#![cfg_attr(
    not(test),
    deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)
)]

use super::commit::SyncTarget;
use super::error::{PoolError, Result};
use super::inner::{Inner, StreamId};
use super::outbound::Outbound;
use super::pvs::{seg_start, split};
use crate::format::checkpoint::{Checkpoint, CKPT_OFFSETS};
use crate::format::node::SEG_PER_PAGE;
use crate::format::node::{
    encode_node, encode_u64s, node_crc, NodeHeader, NodeKind, Ptr, SEG_FREE,
};
use crate::format::{BLOCK, SEG_BLOCKS};
use std::collections::BTreeSet;

impl Inner {
    /// Reserve the next metadata block; its content is filled in by [`Inner::put_block`].
    fn alloc_meta(&mut self) -> Result<u64> {
        self.append(StreamId::Meta, &[0u8; BLOCK])
    }

    /// Fill a block reserved earlier (still buffered, or already written out).
    fn put_block(&mut self, pba: u64, buf: &[u8]) -> Result<()> {
        let (seg, slot) = split(pba);
        let s = self.stream_mut(StreamId::Meta);
        if s.seg == seg && slot >= s.buf_slot && slot < s.next {
            let at = ((slot - s.buf_slot) as usize) * BLOCK;
            let dst = s.buf.get_mut(at..at + BLOCK).ok_or_else(|| {
                PoolError::Internal(format!("metadata block {pba} is not in its buffer"))
            })?;
            dst.copy_from_slice(buf);
            return Ok(());
        }
        self.put_run(pba, buf)
    }

    /// Write a whole node to the metadata stream; returns (pba, crc).
    fn write_node(&mut self, h: &NodeHeader, payload: &[u8]) -> Result<(u64, u32)> {
        let buf = encode_node(&self.pool_id, h, payload);
        let crc = node_crc(&self.pool_id, &buf);
        let pba = self.append(StreamId::Meta, &buf)?;
        self.counters.meta_blocks_written += 1;
        Ok((pba, crc))
    }

    /// Take a checkpoint now, with the pool lock held throughout (a background checkpoint in
    /// progress is finished first). The background checkpointer runs the same steps with the
    /// writes and syncs outside the lock (`checkpointer.rs`).
    pub fn checkpoint(&mut self) -> Result<()> {
        let (cap, job) = self.begin_checkpoint()?;
        let out = job.run(&self.outbound);
        let r = self.absorb(cap, out);
        self.poison_checkpoint(r)?;
        self.top_up_backing();
        Ok(())
    }

    /// Everything before a checkpoint's unlocked part, for the inline and the background
    /// checkpointer alike: commit a background one still pending, write out buffered data
    /// (if the host file system is full this fails before anything changed, and the
    /// checkpoint can be tried again once there is room), then capture.
    pub fn begin_checkpoint(&mut self) -> Result<(Captured, DurableJob)> {
        self.check_writable()?;
        self.finish_background_checkpoint()?;
        self.check_writable()?;
        for w in [StreamId::Data, StreamId::Gc] {
            match self.write_out(w) {
                Err(e @ PoolError::NoSpace(_)) => return Err(e),
                r => self.poison(r)?,
            }
        }
        let r = self.capture();
        self.poison_checkpoint(r)
    }

    /// A checkpoint that failed leaves memory ahead of disk: the pool is poisoned.
    pub fn poison_checkpoint<T>(&mut self, r: Result<T>) -> Result<T> {
        if let Err(e) = &r {
            tracing::error!("checkpoint failed, pool poisoned: {e}");
            self.poisoned
                .get_or_insert_with(|| format!("checkpoint failed: {e}"));
        }
        r
    }

    /// Steps 1-6 of a checkpoint (FORMAT.md §8), under the pool lock: every dirty node is
    /// written copy-on-write to the metadata stream, whose buffer becomes flights, and the
    /// checkpoint record is encoded. What is left ([`DurableJob`]) needs no lock; the commit
    /// in memory ([`Inner::absorb`]) needs it again. Changes made in between belong to the
    /// next checkpoint: they are journaled after this one's journal position and dirty their
    /// nodes again.
    pub fn capture(&mut self) -> Result<(Captured, DurableJob)> {
        let gen = self.generation + 1;
        self.write_out(StreamId::Data)?;
        self.write_out(StreamId::Gc)?;
        self.journal_write_block()?;
        let (jseq, jpos) = (self.journal.seq, self.journal.pos);
        let writes = self.writes_since_ckpt;

        // 1. Block-map nodes: addressed by VBA, so only their VBA entries change.
        let mut dirty: Vec<u64> = self
            .maps
            .iter()
            .filter(|(_, n)| n.dirty)
            .map(|(k, _)| *k)
            .collect();
        dirty.sort_unstable();
        for vba in dirty {
            let Some(n) = self.maps.get(&vba) else {
                continue;
            };
            let h = NodeHeader {
                kind: NodeKind::Map,
                level: n.level,
                count: n.count,
                id: vba,
                generation: gen,
                writer: self.writer,
                owner: n.owner,
            };
            let payload = encode_u64s(&n.entries);
            let (pba, crc) = self.write_node(&h, &payload)?;
            let old = self.vba_get(vba)?;
            self.live_dec(old.pba);
            self.vba_set(
                vba,
                Ptr {
                    pba,
                    crc,
                    aux: old.aux,
                },
            )?;
            self.live_inc(pba);
            if let Some(n) = self.maps.get_mut(&vba) {
                n.dirty = false;
            }
            self.maps_dirty -= 1;
        }

        // 2. Segments emptied since the last checkpoint are recorded free now and handed to
        //    the allocator once this checkpoint is durable.
        let mut to_free = Vec::new();
        for seg in 1..self.segs.len() as u64 {
            let e = self.seg(seg);
            if e.state != SEG_FREE && e.live == 0 && !self.is_open(seg) {
                to_free.push(seg);
            }
        }
        for &seg in &to_free {
            let old_summary = self.seg(seg).summary;
            self.live_dec(old_summary);
            let e = self.seg_mut(seg)?;
            e.state = SEG_FREE;
            e.summary = 0;
            e.summary_crc = 0;
            // No writer owns a free segment.
            e.stream = 0;
            e.owner_host = 0;
            e.owner_incarnation = 0;
            self.summaries.remove(&seg);
        }

        // 3. Summaries of data segments that gained blocks. A segment that is free again (all
        //    its blocks died, e.g. written and trimmed during replay) needs none.
        let segs = &self.segs;
        self.summaries
            .retain(|seg, _| segs.get(*seg as usize).is_some_and(|e| e.state != SEG_FREE));
        let mut sdirty: Vec<u64> = self
            .summaries
            .iter()
            .filter(|(_, s)| s.dirty)
            .map(|(k, _)| *k)
            .collect();
        sdirty.sort_unstable();
        for seg in sdirty {
            let Some(s) = self.summaries.get(&seg) else {
                continue;
            };
            let h = NodeHeader {
                kind: NodeKind::Summary,
                level: 0,
                count: s.tags.iter().filter(|&&t| t != 0).count() as u32,
                id: seg,
                generation: gen,
                writer: self.writer,
                owner: 0,
            };
            let payload = encode_u64s(&s.tags);
            let (pba, crc) = self.write_node(&h, &payload)?;
            let old = self.seg(seg).summary;
            self.live_dec(old);
            self.live_inc(pba);
            let e = self.seg_mut(seg)?;
            e.summary = pba;
            e.summary_crc = crc;
            if let Some(s) = self.summaries.get_mut(&seg) {
                s.dirty = false;
            }
        }
        // Keep only the open segments' summaries resident.
        let open: BTreeSet<u64> = self.streams.iter().map(|s| s.seg).collect();
        self.summaries.retain(|k, _| open.contains(k));

        // 4. Volume directory.
        let vdirty = std::mem::take(&mut self.vols_dirty);
        let mut voldir = std::mem::take(&mut self.voldir);
        let mut r = Ok(());
        for id in vdirty {
            let rec = self.vols.get(&id).cloned().unwrap_or_default();
            r = r.and(voldir.set(self, id, rec));
        }
        self.voldir = voldir;
        r?;
        self.flush_tree(TreeId::VolDir, gen)?;

        // 5. VBA table (map nodes and summaries changed it above).
        self.flush_tree(TreeId::Vba, gen)?;

        // 6. Segment table: writing its own pages changes live counts it records, so assign
        //    places until no new page turns dirty, then encode bottom-up.
        let mut segtab = std::mem::take(&mut self.segtab);
        let mut r = Ok(());
        loop {
            let dirty = self.segs_dirty.take();
            for seg in &dirty {
                let e = self.seg(*seg);
                if let Err(e) = segtab.set(self, *seg, e) {
                    r = Err(e);
                }
            }
            let moves = segtab.prepare(&mut || self.alloc_meta());
            match moves {
                Ok(m) if m.is_empty() && self.segs_dirty.is_empty() => break,
                Ok(m) => {
                    for (old, new) in m {
                        self.live_dec(old);
                        self.live_inc(new);
                    }
                }
                Err(e) => {
                    r = Err(e);
                    break;
                }
            }
        }
        let blocks = segtab.encode(&self.pool_id, gen, self.writer);
        self.segtab = segtab;
        r?;
        for (pba, buf) in blocks {
            self.put_block(pba, &buf)?;
            self.counters.meta_blocks_written += 1;
        }

        // 7. What makes it durable and commits it: the metadata runs as flights, the record.
        self.hand_off_meta()?;
        let meta = std::mem::take(&mut self.queued);
        let ck = Checkpoint {
            generation: gen,
            pool_id: self.pool_id,
            writer: self.writer,
            journal_seq: jseq,
            journal_pos: jpos,
            next_vba: self.next_vba,
            next_node_vba: self.next_node_vba,
            next_volume_id: self.next_volume_id,
            epoch: self.epoch,
            vba_root: self.vba.root(),
            segtab_root: self.segtab.root(),
            voldir_root: self.voldir.root(),
            pool_segments: self.segs.len() as u64 - 1,
            pv_count: self.pvs.pvs.len() as u32,
            journal_pv: u32::from(self.journal.pv),
            pv_table: self.pv_table(),
            seal: self.recorded_seal(),
            timestamp: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        };
        let [even, odd] = CKPT_OFFSETS;
        to_free.append(&mut self.carried_free);
        let job = DurableJob {
            meta,
            targets: self.sync_targets(),
            slot_off: if gen % 2 == 0 { even } else { odd },
            slot: ck.encode(),
        };
        let cap = Captured {
            gen,
            jseq,
            jpos,
            to_free,
            writes,
        };
        Ok((cap, job))
    }

    /// Commit a captured checkpoint in memory once its [`DurableJob`] ran: PVs that failed are
    /// failed as a sync under the lock fails them (a mirrored pool goes degraded; otherwise
    /// this is an error, and the caller poisons the pool). Committed: the generation moves on,
    /// the journal before it is given back, and the segments it freed become reusable.
    /// Not committed (a sync before the record failed): the segments it freed are carried
    /// over, and the checkpoint is taken again with the failed PVs left out.
    pub fn absorb(&mut self, cap: Captured, out: Outcome) -> Result<()> {
        self.note_syncs(out.syncs);
        if out.meta_failed {
            // Written again under the lock, as a write-out there would be (a failed PV of a
            // mirrored pool goes degraded); then the checkpoint is taken again.
            self.settle_flights()?;
            self.carried_free.extend(cap.to_free);
            return self.checkpoint();
        }
        for (pv, source) in out.failed {
            let err = PoolError::Io {
                dev: self.pvs.name(pv),
                offset: 0,
                source,
            };
            self.fail_pv(pv, err)?;
        }
        if !out.committed {
            self.carried_free.extend(cap.to_free);
            return self.checkpoint();
        }
        self.generation = cap.gen;
        self.journal.start_seq = cap.jseq;
        self.journal.start_pos = cap.jpos;
        self.journal.durable_seq = self.journal.durable_seq.max(cap.jseq.saturating_sub(1));
        // Wait for reads still doing I/O on blocks this checkpoint freed.
        drop(self.reuse.write().unwrap_or_else(|p| p.into_inner()));
        self.free.extend(cap.to_free);
        self.writes_since_ckpt = self.writes_since_ckpt.saturating_sub(cap.writes);
        self.counters.checkpoints += 1;
        self.evict_maps();
        self.vba.evict();
        Ok(())
    }

    /// The metadata stream's buffered blocks become flights (queued in `self.queued`).
    fn hand_off_meta(&mut self) -> Result<()> {
        let s = self.stream(StreamId::Meta);
        if s.seg == 0 || s.buf.is_empty() {
            return Ok(());
        }
        let (seg, slot) = (s.seg, s.buf_slot);
        let targets = self.flight_targets(seg, slot)?;
        let s = self.stream_mut(StreamId::Meta);
        let buf = std::mem::take(&mut s.buf);
        let pba = seg_start(seg) + slot;
        s.buf_slot = s.next;
        let seq = self.outbound.push(pba, buf, targets);
        self.queued.push(seq);
        Ok(())
    }

    /// Assign places to a tree's dirty pages, account the moves, encode and write them.
    fn flush_tree(&mut self, which: TreeId, gen: u64) -> Result<()> {
        macro_rules! run {
            ($field:ident) => {{
                let mut t = std::mem::take(&mut self.$field);
                let moves = t.prepare(&mut || self.alloc_meta());
                let blocks = if moves.is_ok() {
                    t.encode(&self.pool_id, gen, self.writer)
                } else {
                    vec![]
                };
                self.$field = t;
                for (old, new) in moves? {
                    self.live_dec(old);
                    self.live_inc(new);
                }
                for (pba, buf) in blocks {
                    self.put_block(pba, &buf)?;
                    self.counters.meta_blocks_written += 1;
                }
                Ok(())
            }};
        }
        match which {
            TreeId::Vba => run!(vba),
            TreeId::VolDir => run!(voldir),
        }
    }

    /// Free segments the next checkpoint may take if `extra` more metadata nodes turn dirty
    /// first: every dirty node, every table page and a fresh metadata head.
    pub fn ckpt_need(&self, extra: u64) -> u64 {
        let dirty = (self.maps_dirty + self.vba.dirty_pages() + self.summaries.len()) as u64;
        ckpt_segments(dirty + extra, table_pages(self.segs.len() as u64 - 1))
    }

    /// Whether enough has changed since the last checkpoint to take one now.
    pub fn checkpoint_due(&self) -> bool {
        self.journal.used() * 2 >= self.journal.blocks
            || self.writes_since_ckpt >= self.opts.checkpoint_writes
            || self.maps_dirty + self.vba.dirty_pages() + self.summaries.len() >= self.dirty_cap
    }
}

/// Segment-table and volume-directory pages a checkpoint may rewrite (an upper bound).
pub fn table_pages(pool_segments: u64) -> u64 {
    (pool_segments / SEG_PER_PAGE as u64 + 1) * 2 + 16
}

/// Segments a checkpoint writing `nodes` dirty nodes may take: those, every table page, and a
/// fresh metadata head.
pub fn ckpt_segments(nodes: u64, table_pages: u64) -> u64 {
    (nodes + table_pages).div_ceil(SEG_BLOCKS) + 1
}

/// Free segments kept, beyond a whole checkpoint, for one cleaning round: the checkpoint of a
/// victim's moves (a segment's worth of VBA pages and its summary, with the tables and the
/// resident summaries), a cleaner head and a spare. A checkpoint taken when the free set is at
/// the reserve thus still leaves the cleaner room to move a victim and commit it.
pub fn gc_reserve(table_pages: u64) -> u64 {
    ckpt_segments(SEG_BLOCKS + 8, table_pages) + 2
}

#[derive(Clone, Copy)]
enum TreeId {
    Vba,
    VolDir,
}

/// A checkpoint between its capture and its commit in memory.
pub struct Captured {
    gen: u64,
    jseq: u64,
    jpos: u64,
    /// Segments it records free, reusable once it is durable.
    to_free: Vec<u64>,
    /// Data writes it covers.
    writes: u64,
}

impl Captured {
    /// Segments it records free (they join the free list when it is committed).
    pub fn to_free(&self) -> &[u64] {
        &self.to_free
    }
}

/// The part of a checkpoint that needs no pool lock: write its metadata runs, sync every PV
/// that is up, then write the checkpoint record on each and sync again (FORMAT.md §8).
pub struct DurableJob {
    meta: Vec<u64>,
    targets: Vec<SyncTarget>,
    slot_off: u64,
    slot: Vec<u8>,
}

/// How a [`DurableJob`] went.
#[derive(Default)]
pub struct Outcome {
    /// Syncs issued (counters).
    syncs: usize,
    /// PVs whose sync or record write failed.
    failed: Vec<(u16, std::io::Error)>,
    /// A metadata run could not be written.
    meta_failed: bool,
    /// The record reached, and was synced on, at least one PV after every PV synced.
    committed: bool,
}

impl DurableJob {
    pub fn run(&self, outbound: &Outbound) -> Outcome {
        let mut out = Outcome::default();
        if outbound.write_own(&self.meta).is_err() {
            out.meta_failed = true;
            return out;
        }
        for (pv, r) in super::commit::sync_parallel(&self.targets) {
            out.syncs += 1;
            if let Err(e) = r {
                out.failed.push((pv, e));
            }
        }
        if !out.failed.is_empty() {
            // Not everything the record references is durable everywhere: no record.
            return out;
        }
        let mut written = Vec::new();
        for (pv, dev, gate) in &self.targets {
            match dev.write_at(&self.slot, self.slot_off) {
                Ok(()) => written.push((*pv, dev.clone(), gate.clone())),
                Err(e) => out.failed.push((*pv, e)),
            }
        }
        for (pv, r) in super::commit::sync_parallel(&written) {
            out.syncs += 1;
            match r {
                Ok(()) => out.committed = true,
                Err(e) => out.failed.push((pv, e)),
            }
        }
        out
    }
}
