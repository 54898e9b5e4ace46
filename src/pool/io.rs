//! The LU data path: read, write (with read-modify-write of partial blocks), unmap.

#![cfg_attr(
    not(test),
    deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)
)]

use super::error::{PoolError, Result};
use super::inner::{Inner, StreamId};
use super::pvs::split;
use super::resident::{locate, Resident};
use crate::format::journal::Record;
use crate::format::{data_crc, BLOCK, BLOCK_U64, INCOMPAT_ZERO, SEG_BLOCKS};

/// Blocks per `Unmap`/`Zero` record (4 GiB, aligned): bounds the data one record can drop
/// before the next checkpoint check.
const RECORD_CHUNK: u64 = 1 << 20;

/// Whether a block is all zeroes: 256 bytes at a time are OR-ed as u128 words (branch-free, so
/// the compiler vectorises it), and the first non-zero stretch ends the scan.
pub fn is_zero_block(b: &[u8]) -> bool {
    b.chunks(256).all(|part| {
        let mut words = part.chunks_exact(16);
        let acc = words.by_ref().fold(0u128, |a, w| {
            a | u128::from_le_bytes(w.try_into().unwrap_or([0xff; 16]))
        });
        acc == 0 && words.remainder().iter().all(|&x| x == 0)
    })
}

/// What a write's chunk (its part of one LU block) is, found before taking the pool lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sum {
    /// Less than a block: merged with the block's data under the lock.
    Partial,
    /// A whole block of zeroes.
    Zero,
    /// A whole block of data with this checksum.
    Data(u32),
}

/// The [`Sum`] of each chunk of a write of `data` at byte `offset`, in order.
pub fn block_sums(pool_id: &[u8; 16], offset: u64, data: &[u8]) -> Vec<Sum> {
    let mut out = Vec::with_capacity(data.len() / BLOCK + 2);
    let mut done = 0usize;
    while done < data.len() {
        let within = ((offset + done as u64) % BLOCK_U64) as usize;
        let n = (BLOCK - within).min(data.len() - done);
        out.push(match data.get(done..done + n) {
            Some(part) if n == BLOCK && is_zero_block(part) => Sum::Zero,
            Some(part) if n == BLOCK => Sum::Data(data_crc(pool_id, part)),
            _ => Sum::Partial,
        });
        done += n;
    }
    out
}

impl Inner {
    /// Size of a volume in bytes.
    pub fn vol_size(&self, vol: u64) -> Result<u64> {
        self.vols
            .get(&vol)
            .filter(|v| !super::reclaim::is_removing(v))
            .map(|v| v.size)
            .ok_or_else(|| PoolError::NotFound(format!("volume {vol}")))
    }

    pub fn check_range(&self, vol: u64, offset: u64, len: u64) -> Result<()> {
        let size = self.vol_size(vol)?;
        match offset.checked_add(len) {
            Some(end) if end <= size => Ok(()),
            _ => Err(PoolError::Invalid(format!(
                "range {offset}+{len} is beyond the end of the LU ({size} bytes)"
            ))),
        }
    }

    /// Read `buf.len()` bytes at byte `offset` of `vol`. Unmapped blocks read as zeroes; every
    /// mapped block's checksum is verified.
    pub fn read(&mut self, vol: u64, offset: u64, buf: &mut [u8]) -> Result<()> {
        let plan = self.plan_read(vol, offset, buf)?;
        plan.execute(offset, buf)
    }

    /// Resolve a read under the pool's exclusive lock, loading missing metadata: see
    /// [`Inner::build_plan`].
    pub fn plan_read(&mut self, vol: u64, offset: u64, buf: &mut [u8]) -> Result<ReadPlan> {
        self.check_range(vol, offset, buf.len() as u64)?;
        let (root, depth) = self.map_root(vol)?;
        let locs = locate(self, root, depth, offset, buf.len())?.ok_or_else(|| {
            PoolError::Internal(format!(
                "read of volume {vol} found metadata it cannot load"
            ))
        })?;
        self.build_plan(vol, offset, buf, &locs)
    }

    /// Resolve a read from resident metadata only, through a shared reference: readers
    /// holding the pool's read side plan in parallel. `None` when a map node or VBA page is
    /// not cached: the caller plans again with [`Inner::plan_read`] under the exclusive lock.
    pub fn plan_read_resident(
        &self,
        vol: u64,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<Option<ReadPlan>> {
        self.check_range(vol, offset, buf.len() as u64)?;
        let (root, depth) = self.map_root(vol)?;
        match locate(&mut Resident(self), root, depth, offset, buf.len())? {
            Some(locs) => self.build_plan(vol, offset, buf, &locs).map(Some),
            None => Ok(None),
        }
    }

    /// Turn located blocks into a plan: unmapped parts of `buf` are zeroed now; the mapped
    /// blocks become runs of adjacent blocks, each read later with one I/O (or copied from a
    /// stream buffer now), so the I/O itself can happen without the pool lock.
    fn build_plan(
        &self,
        vol: u64,
        offset: u64,
        buf: &mut [u8],
        locs: &[(u64, u64, u32)],
    ) -> Result<ReadPlan> {
        let mut plan = ReadPlan {
            pool_id: self.pool_id,
            vol_name: String::new(),
            runs: Vec::new(),
        };
        if buf.is_empty() {
            return Ok(plan);
        }
        let first = offset / BLOCK_U64;
        let last = (offset + buf.len() as u64 - 1) / BLOCK_U64;
        // Unmapped blocks read as zeroes.
        let mut next = first;
        for &(lba, _, _) in locs.iter().chain(std::iter::once(&(last + 1, 0, 0))) {
            if lba > next {
                zero_part(buf, offset, next, lba);
            }
            next = lba + 1;
        }
        let mut i = 0;
        while let Some(&(_, pba0, _)) = locs.get(i) {
            // A run: consecutive LBAs on consecutive PBAs of one segment.
            let seg0 = split(pba0).0;
            let mut j = i + 1;
            while let (Some(prev), Some(cur)) = (locs.get(j - 1), locs.get(j)) {
                if cur.0 != prev.0 + 1 || cur.1 != prev.1 + 1 || split(cur.1).0 != seg0 {
                    break;
                }
                j += 1;
            }
            let n = (j - i) as u64;
            let src = if self.in_memory(pba0, n) {
                let mut data = vec![0u8; (j - i) * BLOCK];
                self.read_run(pba0, &mut data)?;
                RunSource::Memory(data)
            } else {
                let mut copies = Vec::new();
                for (pv, off) in self.copies(pba0)? {
                    copies.push((self.pvs.pv(pv)?.dev.clone(), off));
                }
                RunSource::Device {
                    copies,
                    stats: self.mirror.clone(),
                }
            };
            let blocks = locs
                .get(i..j)
                .ok_or_else(|| PoolError::Internal(format!("read run {i}..{j} out of range")))?;
            plan.runs.push(ReadRun {
                blocks: blocks.to_vec(),
                src,
            });
            i = j;
        }
        if !plan.runs.is_empty() {
            plan.vol_name = self.vol_name(vol);
        }
        Ok(plan)
    }

    pub fn vol_name(&self, vol: u64) -> String {
        self.vols
            .get(&vol)
            .map(|v| v.name.clone())
            .unwrap_or_else(|| format!("volume {vol}"))
    }

    /// Snapshots and client images are never written by clients.
    pub fn check_vol_writable(&self, vol: u64) -> Result<()> {
        match self.vols.get(&vol) {
            Some(v) if super::reclaim::is_removing(v) => {
                Err(PoolError::NotFound(format!("volume {vol} (removed)")))
            }
            Some(v) if v.kind == crate::format::node::VOL_LU => Ok(()),
            Some(v) if v.kind == crate::format::node::VOL_SNAPSHOT => {
                Err(PoolError::VolumeReadOnly(format!("snapshot {}", v.name)))
            }
            Some(v) => Err(PoolError::VolumeReadOnly(format!(
                "client image {}",
                v.name
            ))),
            None => Err(PoolError::NotFound(format!("volume {vol}"))),
        }
    }

    /// Write `data` at byte `offset` of LU `vol`.
    pub fn write(&mut self, vol: u64, offset: u64, data: &[u8]) -> Result<()> {
        self.write_with(vol, offset, data, None)
    }

    /// [`Inner::write`] with the chunks' [`Sum`]s computed already ([`block_sums`]).
    pub fn write_with(
        &mut self,
        vol: u64,
        offset: u64,
        data: &[u8],
        sums: Option<&[Sum]>,
    ) -> Result<()> {
        self.check_vol_writable(vol)?;
        self.write_any_with(vol, offset, data, sums)
    }

    /// Write into any volume (image capture fills a client image this way).
    ///
    /// Detect-zeroes: a block that is all zeroes once written (a partial write is merged with
    /// the block first) is stored as a zero entry, not as data; runs of them are one record.
    pub fn write_any(&mut self, vol: u64, offset: u64, data: &[u8]) -> Result<()> {
        self.write_any_with(vol, offset, data, None)
    }

    fn write_any_with(
        &mut self,
        vol: u64,
        offset: u64,
        data: &[u8],
        sums: Option<&[Sum]>,
    ) -> Result<()> {
        self.check_writable()?;
        self.check_range(vol, offset, data.len() as u64)?;
        let mut done = 0usize;
        let mut chunk = 0usize;
        // A pending run of all-zero blocks: (first lba, blocks).
        let mut zeros: Option<(u64, u64)> = None;
        let mut blk = Vec::new();
        while done < data.len() {
            let pos = offset + done as u64;
            let lba = pos / BLOCK_U64;
            let within = (pos % BLOCK_U64) as usize;
            let n = (BLOCK - within).min(data.len() - done);
            let part = data.get(done..done + n).ok_or_else(|| {
                PoolError::Internal(format!("write chunk {done}+{n} out of range"))
            })?;
            let sum = sums.and_then(|s| s.get(chunk)).copied();
            chunk += 1;
            let block: &[u8] = if n == BLOCK {
                part
            } else {
                blk.resize(BLOCK, 0);
                self.read(vol, lba * BLOCK_U64, &mut blk)?;
                blk.get_mut(within..within + n)
                    .ok_or_else(|| {
                        PoolError::Internal(format!("partial block {within}+{n} out of range"))
                    })?
                    .copy_from_slice(part);
                &blk
            };
            let (zero, crc) = match sum {
                Some(Sum::Zero) => (true, None),
                Some(Sum::Data(c)) => (false, Some(c)),
                _ => (is_zero_block(block), None),
            };
            if zero {
                zeros = match zeros {
                    Some((s, c)) if s + c == lba => Some((s, c + 1)),
                    other => {
                        if let Some((s, c)) = other {
                            self.zero_blocks(vol, s, c)?;
                        }
                        Some((lba, 1))
                    }
                };
            } else {
                if let Some((s, c)) = zeros.take() {
                    self.zero_blocks(vol, s, c)?;
                }
                let crc = crc.unwrap_or_else(|| data_crc(&self.pool_id, block));
                self.write_block(vol, lba, block, crc)?;
            }
            done += n;
        }
        if let Some((s, c)) = zeros {
            self.zero_blocks(vol, s, c)?;
        }
        Ok(())
    }

    /// WRITE_ZEROES with NO_HOLE: `[offset, offset+len)` reads as zeroes and stays allocated.
    /// Whole blocks become zero entries (metadata only, whatever the length); partial blocks at
    /// the edges are read, merged and written (and stored as zero entries if all zero).
    pub fn zero(&mut self, vol: u64, offset: u64, len: u64) -> Result<()> {
        self.check_writable()?;
        self.check_vol_writable(vol)?;
        self.check_range(vol, offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let end = offset + len;
        let first_full = offset.div_ceil(BLOCK_U64);
        let end_full = end / BLOCK_U64;
        self.zero_edges(vol, offset, end, first_full, end_full)?;
        if end_full > first_full {
            self.zero_blocks(vol, first_full, end_full - first_full)?;
        }
        Ok(())
    }

    /// Zero the partial blocks at either end of `[offset, end)` (read-modify-write of less than
    /// a block each).
    fn zero_edges(
        &mut self,
        vol: u64,
        offset: u64,
        end: u64,
        first_full: u64,
        end_full: u64,
    ) -> Result<()> {
        let zero = [0u8; BLOCK];
        // Each edge is shorter than a block.
        let part = |len: u64| {
            zero.get(..len as usize)
                .ok_or_else(|| PoolError::Internal(format!("zero edge of {len} bytes")))
        };
        let head_end = (first_full * BLOCK_U64).min(end);
        if offset < head_end {
            self.write(vol, offset, part(head_end - offset)?)?;
        }
        let tail_start = (end_full * BLOCK_U64).max(head_end);
        if tail_start < end {
            self.write(vol, tail_start, part(end - tail_start)?)?;
        }
        Ok(())
    }

    /// Store blocks `[lba, lba+count)` of `vol` as zero entries: one `Zero` record per chunk
    /// (chunks end on aligned boundaries, so no chunk splits a span the next one covers).
    fn zero_blocks(&mut self, vol: u64, lba: u64, count: u64) -> Result<()> {
        // No older reader may take the sentinel for a VBA. A failed PV that comes back
        // without the bit gets it at the next zero write.
        self.require_incompat(INCOMPAT_ZERO, "INCOMPAT_ZERO (its first zero map entry)")?;
        let end = lba + count;
        let mut l = lba;
        while l < end {
            let n = (end - l).min(RECORD_CHUNK - l % RECORD_CHUNK);
            self.log_and_apply(Record::Zero {
                vol,
                lba: l,
                count: n,
            })?;
            l += n;
            self.checkpoint_step()?;
        }
        Ok(())
    }

    /// Before the first record or entry that needs incompatible feature `bit`: set it in the
    /// superblocks of every PV that is up (synced), so older code refuses the pool instead of
    /// misreading it.
    pub(super) fn require_incompat(&mut self, bit: u64, what: &str) -> Result<()> {
        if self
            .pvs
            .pvs
            .iter()
            .filter(|p| p.failed.is_none())
            .all(|p| p.sb.incompat & bit != 0)
        {
            return Ok(());
        }
        tracing::info!("pool sets {what}");
        self.rewrite_superblocks(&|sb| sb.incompat |= bit)
    }

    /// Write one whole block.
    fn write_block(&mut self, vol: u64, lba: u64, block: &[u8], crc: u32) -> Result<()> {
        let (old, exclusive) = self.map_lookup(vol, lba)?;
        self.ensure_data_space(vol)?;
        let pba = self.append(StreamId::Data, block)?;
        // A block only this volume holds keeps its VBA; a shared or new one gets a fresh VBA.
        let vba = if old != 0 && exclusive {
            old
        } else {
            self.alloc_data_vba()
        };
        self.log_and_apply_write(vol, lba, vba, pba, crc, old)?;
        self.checkpoint_step()?;
        Ok(())
    }

    /// Unmap whole blocks and zero partial ones in `[offset, offset+len)`. With `zero_partial`
    /// false (TRIM), partial blocks are left alone.
    pub fn unmap(&mut self, vol: u64, offset: u64, len: u64, zero_partial: bool) -> Result<()> {
        self.check_writable()?;
        self.check_vol_writable(vol)?;
        self.check_range(vol, offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let end = offset + len;
        let first_full = offset.div_ceil(BLOCK_U64);
        let end_full = end / BLOCK_U64;
        if zero_partial {
            self.zero_edges(vol, offset, end, first_full, end_full)?;
        }
        if end_full > first_full {
            // Chunk so one record never drops an unbounded number of data blocks.
            let mut lba = first_full;
            while lba < end_full {
                let n = (end_full - lba).min(RECORD_CHUNK - lba % RECORD_CHUNK);
                self.log_and_apply(Record::Unmap { vol, lba, count: n })?;
                lba += n;
                self.checkpoint_step()?;
            }
        }
        Ok(())
    }

    /// Make everything written so far durable.
    pub fn flush(&mut self) -> Result<()> {
        if !self.flush_write_out()? {
            return Ok(());
        }
        let r = self.sync_pvs();
        self.poison(r)?;
        self.journal_synced();
        self.checkpoint_step()?;
        Ok(())
    }

    /// Write out what a flush makes durable (stream buffers, the pending journal batch), for a
    /// sync to cover. `false`: the pool is read-only and nothing needs syncing.
    pub fn flush_write_out(&mut self) -> Result<bool> {
        if self.opts.read_only {
            return Ok(false);
        }
        self.check_writable()?;
        self.write_out_all()?;
        self.journal_write_block()?;
        Ok(true)
    }

    /// Make sure the data stream can take one more block of volume `vol`, cleaning if the pool
    /// is short. A thin volume's writes leave the segments that cover thick volumes'
    /// reservations (see `provision.rs`).
    fn ensure_data_space(&mut self, vol: u64) -> Result<()> {
        // Most writes fill the open segment: the reservations (a walk over the volumes) are
        // looked at only when a new one is needed.
        if !self.needs_segment(StreamId::Data) {
            return Ok(());
        }
        let floor = if self.is_thick(vol) {
            0
        } else {
            self.thin_floor()
        };
        if self.free_for(StreamId::Data) > floor {
            return Ok(());
        }
        for _ in 0..8 {
            // Clean a good batch per checkpoint: each round costs a checkpoint and its sync.
            let batch = (self.segs.len() / 32).max(8);
            let cleaned = self.gc_run(batch)?;
            self.checkpoint()?;
            self.counters.writer_checkpoints += 1;
            if self.free_for(StreamId::Data) > floor {
                return Ok(());
            }
            if cleaned.segments_cleaned == 0 {
                break;
            }
        }
        let (total, _, live) = self.space();
        let reserved = if floor > 0 {
            format!(
                "; {} MiB are held back for thick LUs",
                (floor * SEG_BLOCKS * BLOCK_U64) >> 20
            )
        } else {
            String::new()
        };
        Err(PoolError::NoSpace(format!(
            "{} of {} MiB hold live data and nothing more can be reclaimed{reserved}",
            (live * BLOCK_U64) >> 20,
            (total * BLOCK_U64) >> 20
        )))
    }
}

/// Where a run of blocks is read from.
pub enum RunSource {
    /// Still in a stream buffer: copied while the pool lock was held.
    Memory(Vec<u8>),
    /// On a PV: each good copy (device, byte offset), the preferred one first.
    Device {
        copies: Vec<(std::sync::Arc<dyn crate::dev::BlockDev>, u64)>,
        stats: std::sync::Arc<super::mirror::MirrorStats>,
    },
}

/// Adjacent mapped blocks: (lba, pba, crc) each, and where they are.
pub struct ReadRun {
    pub blocks: Vec<(u64, u64, u32)>,
    pub src: RunSource,
}

/// A read resolved under the pool lock, to be executed with or without it.
pub struct ReadPlan {
    pool_id: [u8; 16],
    vol_name: String,
    pub runs: Vec<ReadRun>,
}

impl ReadPlan {
    /// Read every run into `buf` (which starts at byte `offset` of the LU) and verify checksums.
    pub fn execute(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.run(offset, buf, false).map(|_| ())
    }

    /// [`ReadPlan::execute`] if no run has to wait for a device ([`BlockDev::try_read_at`]);
    /// `false` if one would, or if a copy was bad (repair is left to `execute`): `buf` may then
    /// hold anything.
    ///
    /// [`BlockDev::try_read_at`]: crate::dev::BlockDev::try_read_at
    pub fn try_execute(&self, offset: u64, buf: &mut [u8]) -> Result<bool> {
        self.run(offset, buf, true)
    }

    fn run(&self, offset: u64, buf: &mut [u8], nowait: bool) -> Result<bool> {
        let aligned = offset % BLOCK_U64 == 0;
        let mut scratch = Vec::new();
        for run in &self.runs {
            let Some(&(lba0, _, _)) = run.blocks.first() else {
                continue;
            };
            let start = (lba0 * BLOCK_U64).saturating_sub(offset) as usize;
            let len = run.blocks.len() * BLOCK;
            // Whole blocks land straight in the caller's buffer; partial ones go via scratch.
            let direct = aligned && start + len <= buf.len();
            let dst: &mut [u8] = match buf.get_mut(start..start + len) {
                Some(d) if direct => d,
                _ => {
                    scratch.resize(len, 0);
                    scratch.as_mut_slice()
                }
            };
            match &run.src {
                RunSource::Memory(data) => {
                    dst.copy_from_slice(data);
                    self.verify(run, dst, None)?;
                }
                RunSource::Device { copies, .. } if nowait => {
                    let (dev, off) = copies.first().ok_or_else(|| {
                        PoolError::Internal(format!("data block {lba0} has no copy"))
                    })?;
                    if !dev.try_read_at(dst, *off) || self.verify(run, dst, None).is_err() {
                        return Ok(false);
                    }
                }
                RunSource::Device { copies, stats } => {
                    let (dev, off) = copies.first().ok_or_else(|| {
                        PoolError::Internal(format!("data block {lba0} has no copy"))
                    })?;
                    let first = dev.read_at(dst, *off).map_err(|e| PoolError::Io {
                        dev: dev.name().to_owned(),
                        offset: *off,
                        source: e,
                    });
                    let ok = match first {
                        Ok(()) => self.verify(run, dst, Some((dev.name(), *off))),
                        Err(e) => Err(e),
                    };
                    if let Err(e) = ok {
                        if copies.len() < 2 {
                            return Err(e);
                        }
                        // Mirrored: take each bad block from the other copy and repair it.
                        self.repair_from_other_copy(run, dst, copies, stats, e)?;
                    }
                }
            }
            if !direct {
                for (blk, &(lba, _, _)) in scratch.chunks(BLOCK).zip(&run.blocks) {
                    copy_block_part(buf, offset, lba, blk);
                }
            }
        }
        Ok(true)
    }
}

impl ReadPlan {
    /// Check every block of `dst` against its checksum; `at` names the device for errors.
    fn verify(&self, run: &ReadRun, dst: &[u8], at: Option<(&str, u64)>) -> Result<()> {
        for (k, (blk, &(lba, _, crc))) in dst.chunks(BLOCK).zip(&run.blocks).enumerate() {
            let got = data_crc(&self.pool_id, blk);
            if got != crc {
                let (dev, off) = match at {
                    Some((d, o)) => (d.to_owned(), o + (k * BLOCK) as u64),
                    None => ("memory".to_owned(), 0),
                };
                return Err(PoolError::Checksum {
                    dev,
                    offset: off,
                    what: format!("data block {lba} of {}", self.vol_name),
                    stored: crc,
                    computed: got,
                });
            }
        }
        Ok(())
    }

    /// The preferred copy of a run failed: fetch every block that is not good from the other
    /// copies, rewrite it on the copy that was bad, and fail with `first` only for a block no
    /// copy holds intact.
    fn repair_from_other_copy(
        &self,
        run: &ReadRun,
        dst: &mut [u8],
        copies: &[(std::sync::Arc<dyn crate::dev::BlockDev>, u64)],
        stats: &super::mirror::MirrorStats,
        first: PoolError,
    ) -> Result<()> {
        let Some(((bad, boff), others)) = copies.split_first() else {
            return Err(first);
        };
        let mut blk = vec![0u8; BLOCK];
        for (k, (chunk, &(lba, _, crc))) in dst.chunks_mut(BLOCK).zip(&run.blocks).enumerate() {
            if data_crc(&self.pool_id, chunk) == crc {
                continue;
            }
            stats.found();
            let mut fixed = false;
            for (dev, off) in others {
                let at = off + (k * BLOCK) as u64;
                if dev.read_at(&mut blk, at).is_ok() && data_crc(&self.pool_id, &blk) == crc {
                    chunk.copy_from_slice(&blk);
                    let bat = boff + (k * BLOCK) as u64;
                    if bad.write_at(&blk, bat).is_ok() {
                        stats.repaired();
                        tracing::warn!(
                            "repaired data block {lba} of {} at {} offset {bat} from {}",
                            self.vol_name,
                            bad.name(),
                            dev.name()
                        );
                    }
                    fixed = true;
                    break;
                }
            }
            if !fixed {
                tracing::error!("data block {lba} of {}: no copy is intact", self.vol_name);
                return Err(first);
            }
        }
        Ok(())
    }
}

/// Zero the part of blocks `[from, to)` that falls inside `buf` (which starts at byte `offset`).
fn zero_part(buf: &mut [u8], offset: u64, from: u64, to: u64) {
    let end = offset + buf.len() as u64;
    let s = (from * BLOCK_U64).max(offset);
    let e = (to * BLOCK_U64).min(end);
    if s < e {
        if let Some(part) = buf.get_mut((s - offset) as usize..(e - offset) as usize) {
            part.fill(0);
        }
    }
}

/// Copy the part of block `lba` that falls inside `buf` (which starts at byte `offset`).
fn copy_block_part(buf: &mut [u8], offset: u64, lba: u64, blk: &[u8]) {
    let bstart = lba * BLOCK_U64;
    let bend = bstart + BLOCK_U64;
    let end = offset + buf.len() as u64;
    let s = bstart.max(offset);
    let e = bend.min(end);
    if s < e {
        let src = blk.get((s - bstart) as usize..(e - bstart) as usize);
        let dst = buf.get_mut((s - offset) as usize..(e - offset) as usize);
        if let (Some(dst), Some(src)) = (dst, src) {
            dst.copy_from_slice(src);
        }
    }
}
