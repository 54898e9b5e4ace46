//! The set of PVs of a pool and the mapping from pool block addresses to bytes on a PV.
//!
//! A pool block address (PBA) is `segment * SEG_BLOCKS + slot`; pool segment numbers start at 1
//! so PBA 0 means "nowhere". The segment table says which PV (and which segment of it) holds each
//! pool segment, so mirroring and PV evacuation move segments without touching block maps.

use super::error::{PoolError, Result};
use crate::dev::BlockDev;
use crate::format::superblock::Superblock;
use crate::format::{BLOCK, BLOCK_U64, SEG_BLOCKS};
use std::sync::Arc;

/// One opened PV.
pub struct Pv {
    pub dev: Arc<dyn BlockDev>,
    pub sb: Superblock,
}

/// The opened PVs, indexed by `pv_index`.
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
        p.dev.read_at(buf, off).map_err(|e| PoolError::Io {
            dev: p.dev.name().to_owned(),
            offset: off,
            source: e,
        })
    }

    pub fn write(&self, pv: u16, off: u64, buf: &[u8]) -> Result<()> {
        let p = self.pv(pv)?;
        p.dev.write_at(buf, off).map_err(|e| PoolError::Io {
            dev: p.dev.name().to_owned(),
            offset: off,
            source: e,
        })
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
