//! PV superblock: identifies a physical volume and its place in the pool.
//!
//! Two identical copies live at byte 0 and byte 4096 of every PV, so one torn or rotten sector
//! cannot lose the pool. The copy with the highest valid `generation` wins. Its checksum is seeded
//! with 16 zero bytes (the pool id is not known until the superblock is read).

use super::{
    check_version, crc_with_hole, decode_name, encode_name, open_block, FormatError, Rd, Wr,
    Writer, BLOCK,
};
use super::{FORMAT_VERSION, INCOMPAT_SUPPORTED};

/// "SSPPVSB1" read as a little-endian u64.
pub const SB_MAGIC: u64 = u64::from_le_bytes(*b"SSPPVSB1");
/// Byte offsets of the two superblock copies.
pub const SB_OFFSETS: [u64; 2] = [0, 4096];
/// Byte offset of the crc field.
const CRC_AT: usize = 12;
/// Length of the failure-group and pool name fields.
pub const NAME_LEN: usize = 64;
const ZERO_SEED: [u8; 16] = [0; 16];

/// Decoded PV superblock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superblock {
    pub incompat: u64,
    pub compat: u64,
    pub ro_compat: u64,
    /// Bumped whenever the superblock is rewritten (e.g. failure group renamed).
    pub generation: u64,
    pub pool_id: [u8; 16],
    pub pv_id: [u8; 16],
    /// Index of this PV in the pool (0-based, stable for the PV's life).
    pub pv_index: u32,
    pub fg_id: u32,
    pub fg_name: String,
    pub pv_size: u64,
    pub block_size: u32,
    pub seg_blocks: u32,
    pub journal_offset: u64,
    pub journal_blocks: u64,
    pub data_offset: u64,
    pub pv_segments: u64,
    /// Pool segment number of this PV's first segment.
    pub first_pool_segment: u64,
    pub created: u64,
    pub writer: Writer,
    pub pool_name: String,
}

impl Superblock {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Wr::with_capacity(BLOCK);
        w.u64(SB_MAGIC).u32(FORMAT_VERSION).u32(0);
        w.u64(self.incompat)
            .u64(self.compat)
            .u64(self.ro_compat)
            .u64(self.generation);
        w.bytes(&self.pool_id).bytes(&self.pv_id);
        w.u32(self.pv_index).u32(self.fg_id);
        encode_name(&mut w, &self.fg_name, NAME_LEN);
        w.u64(self.pv_size)
            .u32(self.block_size)
            .u32(self.seg_blocks);
        w.u64(self.journal_offset)
            .u64(self.journal_blocks)
            .u64(self.data_offset);
        w.u64(self.pv_segments)
            .u64(self.first_pool_segment)
            .u64(self.created);
        w.u32(self.writer.host_id)
            .u32(self.writer.incarnation)
            .u64(self.writer.fencing_epoch);
        encode_name(&mut w, &self.pool_name, NAME_LEN);
        w.pad_to(BLOCK);
        let crc = crc_with_hole(&ZERO_SEED, &w.buf, CRC_AT);
        w.put_u32_at(CRC_AT, crc);
        w.buf
    }

    pub fn decode(buf: &[u8]) -> Result<Self, FormatError> {
        const W: &str = "PV superblock";
        let b = open_block(buf, W, b"SSPPVSB1", &ZERO_SEED, CRC_AT)?;
        let mut r = Rd::at(b, 8, W);
        check_version(r.u32()?, W)?;
        r.skip(4)?; // crc
        let incompat = r.u64()?;
        if incompat & !INCOMPAT_SUPPORTED != 0 {
            return Err(FormatError::Incompatible {
                what: W,
                bits: incompat & !INCOMPAT_SUPPORTED,
            });
        }
        let sb = Superblock {
            incompat,
            compat: r.u64()?,
            ro_compat: r.u64()?,
            generation: r.u64()?,
            pool_id: r.arr()?,
            pv_id: r.arr()?,
            pv_index: r.u32()?,
            fg_id: r.u32()?,
            fg_name: decode_name(r.bytes(NAME_LEN)?, W)?,
            pv_size: r.u64()?,
            block_size: r.u32()?,
            seg_blocks: r.u32()?,
            journal_offset: r.u64()?,
            journal_blocks: r.u64()?,
            data_offset: r.u64()?,
            pv_segments: r.u64()?,
            first_pool_segment: r.u64()?,
            created: r.u64()?,
            writer: Writer {
                host_id: r.u32()?,
                incarnation: r.u32()?,
                fencing_epoch: r.u64()?,
            },
            pool_name: decode_name(r.bytes(NAME_LEN)?, W)?,
        };
        sb.check_geometry()?;
        Ok(sb)
    }

    /// Geometry must be self-consistent before any arithmetic trusts it.
    fn check_geometry(&self) -> Result<(), FormatError> {
        let bad = |field, detail: String| {
            Err(FormatError::Invalid {
                what: "PV superblock",
                field,
                detail,
            })
        };
        if self.block_size as usize != BLOCK {
            return bad(
                "block_size",
                format!("{} (only 4096 is supported)", self.block_size),
            );
        }
        if self.seg_blocks == 0 || u64::from(self.seg_blocks) != super::SEG_BLOCKS {
            return bad("seg_blocks", format!("{}", self.seg_blocks));
        }
        let seg_bytes = u64::from(self.seg_blocks) * BLOCK as u64;
        let end = self
            .pv_segments
            .checked_mul(seg_bytes)
            .and_then(|b| b.checked_add(self.data_offset));
        match end {
            Some(end) if end <= self.pv_size => {}
            _ => {
                return bad(
                    "pv_segments",
                    format!("{} segments do not fit the PV", self.pv_segments),
                )
            }
        }
        let jend = self
            .journal_blocks
            .checked_mul(BLOCK as u64)
            .and_then(|b| b.checked_add(self.journal_offset));
        match jend {
            Some(j) if j <= self.data_offset && self.journal_offset >= 16384 => {}
            _ => return bad("journal", "journal overlaps headers or data".into()),
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) fn tests_sample() -> Superblock {
    tests::sample()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample() -> Superblock {
        Superblock {
            incompat: 0,
            compat: 0,
            ro_compat: 0,
            generation: 1,
            pool_id: *b"pool-id-0123456\0",
            pv_id: *b"pv-id-000000001\0",
            pv_index: 0,
            fg_id: 0,
            fg_name: "Default".into(),
            pv_size: 64 << 20,
            block_size: 4096,
            seg_blocks: 256,
            journal_offset: 16384,
            journal_blocks: 252,
            data_offset: 1 << 20,
            pv_segments: 63,
            first_pool_segment: 1,
            created: 1_764_000_000,
            writer: Writer {
                host_id: 1,
                incarnation: 1,
                fencing_epoch: 1,
            },
            pool_name: "demo".into(),
        }
    }

    #[test]
    fn golden_vector_round_trip() {
        let golden = include_bytes!("../../ondisk-format/vectors/superblock.bin");
        let sb = Superblock::decode(golden).expect("golden superblock decodes");
        assert_eq!(sb, sample());
        assert_eq!(sb.encode().as_slice(), &golden[..]);
        // Field positions are part of the format: spot-check a few against the raw bytes.
        assert_eq!(&golden[0..8], b"SSPPVSB1");
        assert_eq!(u32::from_le_bytes(golden[8..12].try_into().unwrap()), 1);
        assert_eq!(&golden[48..64], b"pool-id-0123456\0");
        assert_eq!(&golden[88..95], b"Default");
    }

    #[test]
    fn flipped_bit_is_a_checksum_error() {
        let mut b = sample().encode();
        b[200] ^= 0x10;
        assert!(matches!(
            Superblock::decode(&b),
            Err(FormatError::BadChecksum { .. })
        ));
    }

    #[test]
    fn wrong_magic_and_short_buffers_are_errors() {
        let mut b = sample().encode();
        b[0] = b'X';
        assert!(matches!(
            Superblock::decode(&b),
            Err(FormatError::BadMagic { .. })
        ));
        assert!(matches!(
            Superblock::decode(&b[..100]),
            Err(FormatError::Short { .. })
        ));
    }

    #[test]
    fn geometry_is_checked() {
        let mut s = sample();
        s.pv_segments = 1 << 40;
        assert!(matches!(
            Superblock::decode(&s.encode()),
            Err(FormatError::Invalid { .. })
        ));
    }
}
