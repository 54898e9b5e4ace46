//! The set of PVs of a pool and the mapping from pool block addresses to bytes on a PV.
//!
//! A pool block address (PBA) is `segment * SEG_BLOCKS + slot`; pool segment numbers start at 1
//! so PBA 0 means "nowhere". The segment table says which PV (and which segment of it) holds each
//! pool segment, so mirroring and PV evacuation move segments without touching block maps.

#![cfg_attr(
    not(test),
    deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)
)]

use super::error::{PoolError, Result};
use crate::dev::BlockDev;
use crate::format::superblock::Superblock;
use crate::format::{BLOCK, BLOCK_U64, SEG_BLOCKS};
use std::sync::Arc;

/// One opened PV.
pub struct Pv {
    pub dev: Arc<dyn BlockDev>,
    pub sb: Superblock,
    /// Failed (I/O errors) or missing at start-up: neither read nor written until it is back.
    pub failed: Option<String>,
    /// Every sync of this PV goes through it (see [`super::commit::SyncGate`]).
    pub gate: Arc<super::commit::SyncGate>,
}

impl Pv {
    pub fn new(dev: Arc<dyn BlockDev>, sb: Superblock) -> Pv {
        Pv {
            dev,
            sb,
            failed: None,
            gate: Arc::default(),
        }
    }

    /// An I/O error on this PV, saying what changed under it if its health check fails (a
    /// deleted or truncated file fails reads and writes for that reason).
    pub fn io_error(&self, offset: u64, e: std::io::Error) -> PoolError {
        let source = match self.dev.health() {
            Err(why) => std::io::Error::new(e.kind(), format!("{e} ({why})")),
            Ok(()) => e,
        };
        PoolError::Io {
            dev: self.dev.name().to_owned(),
            offset,
            source,
        }
    }
}

/// The opened PVs, indexed by `pv_index`. Each failure group lays pool segments 1.. over its own
/// PVs (in `pv_index` order, from each PV's `first_pool_segment`), so in a mirrored pool a pool
/// segment has one location in each group.
pub struct PvSet {
    pub pvs: Vec<Pv>,
}

/// Split a PBA into (pool segment, slot).
pub fn split(pba: u64) -> (u64, u64) {
    (pba / SEG_BLOCKS, pba % SEG_BLOCKS)
}

/// First PBA of a pool segment.
pub fn seg_start(seg: u64) -> u64 {
    seg * SEG_BLOCKS
}

impl PvSet {
    pub fn pv(&self, idx: u16) -> Result<&Pv> {
        self.pvs
            .get(usize::from(idx))
            .ok_or_else(|| PoolError::Invalid(format!("PV index {idx} is not in the pool")))
    }

    pub fn pv_mut(&mut self, idx: u16) -> Result<&mut Pv> {
        self.pvs
            .get_mut(usize::from(idx))
            .ok_or_else(|| PoolError::Invalid(format!("PV index {idx} is not in the pool")))
    }

    /// Byte offset on a PV of a slot of one of its segments.
    pub fn offset(&self, pv: u16, pv_seg: u32, slot: u64) -> Result<u64> {
        let p = self.pv(pv)?;
        if u64::from(pv_seg) >= p.sb.pv_segments {
            return Err(PoolError::Invalid(format!(
                "segment {pv_seg} is beyond PV {pv}"
            )));
        }
        Ok(p.sb.data_offset + (u64::from(pv_seg) * SEG_BLOCKS + slot) * BLOCK_U64)
    }

    pub fn read(&self, pv: u16, off: u64, buf: &mut [u8]) -> Result<()> {
        let p = self.pv(pv)?;
        p.dev.read_at(buf, off).map_err(|e| p.io_error(off, e))
    }

    /// Write to a PV. A host file system without room gives [`PoolError::NoSpace`] (the
    /// caller keeps the data and reports ENOSPC); any other failure is an I/O error.
    pub fn write(&self, pv: u16, off: u64, buf: &[u8]) -> Result<()> {
        let p = self.pv(pv)?;
        p.dev.write_at(buf, off).map_err(|e| {
            if crate::dev::is_no_space(&e) {
                PoolError::NoSpace(format!("the host file system is full: {e}"))
            } else {
                p.io_error(off, e)
            }
        })
    }

    /// Write `buf` at each (PV, offset) of `targets`: at once on parallel threads when `buf`
    /// is at least `parallel_min` bytes, in turn otherwise. The result of each, in order.
    pub fn write_copies(
        &self,
        targets: &[(u16, u64)],
        buf: &[u8],
        parallel_min: usize,
    ) -> Vec<Result<()>> {
        if buf.len() < parallel_min {
            return targets
                .iter()
                .map(|&(pv, off)| self.write(pv, off, buf))
                .collect();
        }
        super::commit::fan_out(
            targets
                .iter()
                .map(|&(pv, off)| move || self.write(pv, off, buf))
                .collect(),
        )
    }

    pub fn sync_all(&self) -> Result<()> {
        for p in &self.pvs {
            p.dev.sync().map_err(|e| PoolError::Io {
                dev: p.dev.name().to_owned(),
                offset: 0,
                source: e,
            })?;
        }
        Ok(())
    }

    /// Name of a PV for messages.
    pub fn name(&self, pv: u16) -> String {
        self.pv(pv)
            .map(|p| p.dev.name().to_owned())
            .unwrap_or_else(|_| format!("pv{pv}"))
    }

    /// Total data segments over all PVs.
    pub fn total_segments(&self) -> u64 {
        self.pvs.iter().map(|p| p.sb.pv_segments).sum()
    }

    /// Failure-group ids present, ascending.
    pub fn groups(&self) -> Vec<u32> {
        let mut g: Vec<u32> = self.pvs.iter().map(|p| p.sb.fg_id).collect();
        g.sort_unstable();
        g.dedup();
        g
    }

    pub fn mirrored(&self) -> bool {
        self.groups().len() > 1
    }

    /// Segments failure group `fg` can hold.
    pub fn group_segments(&self, fg: u32) -> u64 {
        self.pvs
            .iter()
            .filter(|p| p.sb.fg_id == fg)
            .map(|p| p.sb.pv_segments)
            .sum()
    }

    /// Name of failure group `fg`.
    pub fn group_name(&self, fg: u32) -> String {
        self.pvs
            .iter()
            .find(|p| p.sb.fg_id == fg)
            .map(|p| p.sb.fg_name.clone())
            .unwrap_or_else(|| format!("fg{fg}"))
    }

    /// Whether any PV of group `fg` has failed.
    pub fn group_failed(&self, fg: u32) -> bool {
        self.pvs
            .iter()
            .any(|p| p.sb.fg_id == fg && p.failed.is_some())
    }

    /// The PV of group `fg` holding pool segment `seg`, and the segment's index on it.
    pub fn locate_in(&self, fg: u32, seg: u64) -> Option<(u16, u32)> {
        self.pvs.iter().enumerate().find_map(|(i, p)| {
            let first = p.sb.first_pool_segment;
            (p.sb.fg_id == fg && seg >= first && seg < first + p.sb.pv_segments)
                .then(|| (i as u16, (seg - first) as u32))
        })
    }
}

/// Stands in for a PV that is missing at start-up: every I/O fails.
pub struct MissingDev {
    pub name: String,
    pub len: u64,
}

impl BlockDev for MissingDev {
    fn name(&self) -> &str {
        &self.name
    }
    fn len(&self) -> u64 {
        self.len
    }
    fn read_at(&self, _: &mut [u8], _: u64) -> std::io::Result<()> {
        Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "PV is missing",
        ))
    }
    fn write_at(&self, _: &[u8], _: u64) -> std::io::Result<()> {
        Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "PV is missing",
        ))
    }
    fn sync(&self) -> std::io::Result<()> {
        Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "PV is missing",
        ))
    }
}

/// Geometry of a new PV: where the journal and the data area go.
pub struct Geometry {
    pub journal_offset: u64,
    pub journal_blocks: u64,
    pub data_offset: u64,
    pub pv_segments: u64,
}

/// Lay out a PV of `size` bytes with a journal of `journal_blocks` blocks.
pub fn geometry(size: u64, journal_blocks: u64) -> Result<Geometry> {
    let seg_bytes = SEG_BLOCKS * BLOCK_U64;
    let journal_offset = 16384;
    let jend = journal_offset + journal_blocks * BLOCK_U64;
    let data_offset = jend.div_ceil(seg_bytes) * seg_bytes;
    let pv_segments = size.saturating_sub(data_offset) / seg_bytes;
    if pv_segments < 4 {
        return Err(PoolError::Invalid(format!(
            "PV of {size} bytes is too small: at least {} bytes are needed",
            data_offset + 4 * seg_bytes
        )));
    }
    Ok(Geometry {
        journal_offset,
        journal_blocks,
        data_offset,
        pv_segments,
    })
}

/// A zeroed block buffer.
pub fn zero_block() -> Vec<u8> {
    vec![0u8; BLOCK]
}
