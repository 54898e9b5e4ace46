//! Checkpoint slot: the commit point of the pool's metadata.
//!
//! Two slots live at bytes 8192 and 12288 of every PV. A checkpoint with generation `g` is written
//! to slot `g % 2` of every PV after everything it points to is durable; the valid slot with the
//! highest generation across all PVs is the pool's state, and the journal is replayed from
//! `journal_seq`/`journal_pos`. A torn slot fails its checksum and the other slot wins.

use super::{
    check_version, crc_with_hole, open_block, FormatError, Rd, Seal, Wr, Writer, BLOCK,
    FORMAT_VERSION,
};

/// "SSPCKPT1" as a little-endian u64.
pub const CKPT_MAGIC: u64 = u64::from_le_bytes(*b"SSPCKPT1");
/// Byte offsets of the two checkpoint slots on every PV.
pub const CKPT_OFFSETS: [u64; 2] = [8192, 12288];
const CRC_AT: usize = 12;

/// Location of a physically addressed tree: its root node and height (0 = empty tree).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Root {
    pub pba: u64,
    pub crc: u32,
    pub depth: u8,
}

impl Root {
    fn encode(&self, w: &mut Wr) {
        w.u64(self.pba).u32(self.crc).u8(self.depth).zeros(3);
    }
    fn decode(r: &mut Rd) -> Result<Self, FormatError> {
        let root = Root {
            pba: r.u64()?,
            crc: r.u32()?,
            depth: r.u8()?,
        };
        r.skip(3)?;
        if root.depth > 8 {
            return Err(FormatError::Invalid {
                what: "checkpoint",
                field: "root.depth",
                detail: format!("{}", root.depth),
            });
        }
        Ok(root)
    }
}

/// One PV as the checkpoint records it (mirrored pools): enough to place a PV that is missing
/// at start-up and to remember that it failed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PvEntry {
    pub pv_index: u32,
    pub fg_id: u32,
    pub first_pool_segment: u64,
    pub pv_segments: u64,
    /// Bit 0: the PV has failed; it is neither read nor written until it is back.
    pub flags: u32,
}

impl PvEntry {
    pub const SIZE: usize = 32;
    pub const FAILED: u32 = 1;
}

/// At most this many PVs fit in the checkpoint's PV table (122; 121 when a seal is recorded).
pub const MAX_PV_TABLE: usize = (BLOCK - 184) / PvEntry::SIZE;
/// Where the seal sits (`RO_COMPAT_SEAL` pools): the last 32 bytes but 8.
pub const SEAL_AT: usize = BLOCK - 32;
/// PV table entries that fit before the seal.
pub const MAX_PV_TABLE_SEALED: usize = (SEAL_AT - 184) / PvEntry::SIZE;

/// Decoded checkpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Checkpoint {
    pub generation: u64,
    pub pool_id: [u8; 16],
    pub writer: Writer,
    /// Sequence number of the first journal block to replay.
    pub journal_seq: u64,
    /// Ring index (in blocks) of that journal block.
    pub journal_pos: u64,
    /// Next unused data VBA (even) and map-node VBA (odd).
    pub next_vba: u64,
    pub next_node_vba: u64,
    pub next_volume_id: u64,
    /// Logical clock for birth epochs of blocks and volumes.
    pub epoch: u64,
    pub vba_root: Root,
    pub segtab_root: Root,
    pub voldir_root: Root,
    pub pool_segments: u64,
    pub pv_count: u32,
    pub journal_pv: u32,
    pub timestamp: u64,
    /// The PV table (`INCOMPAT_MIRROR` pools; empty otherwise).
    pub pv_table: Vec<PvEntry>,
    /// Where the log this checkpoint's writer replayed when it opened ended (`RO_COMPAT_SEAL`
    /// pools; `None`: not recorded).
    pub seal: Option<Seal>,
}

impl Checkpoint {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Wr::with_capacity(BLOCK);
        w.u64(CKPT_MAGIC)
            .u32(FORMAT_VERSION)
            .u32(0)
            .u64(self.generation)
            .bytes(&self.pool_id);
        w.u32(self.writer.host_id)
            .u32(self.writer.incarnation)
            .u64(self.writer.fencing_epoch);
        w.u64(self.journal_seq)
            .u64(self.journal_pos)
            .u64(self.next_vba)
            .u64(self.next_node_vba);
        w.u64(self.next_volume_id).u64(self.epoch);
        self.vba_root.encode(&mut w);
        self.segtab_root.encode(&mut w);
        self.voldir_root.encode(&mut w);
        w.u64(self.pool_segments)
            .u32(self.pv_count)
            .u32(self.journal_pv)
            .u64(self.timestamp);
        let max = if self.seal.is_some() {
            MAX_PV_TABLE_SEALED
        } else {
            MAX_PV_TABLE
        };
        let n = self.pv_table.len().min(max);
        w.u32(n as u32).u32(0);
        for e in self.pv_table.iter().take(n) {
            w.u32(e.pv_index)
                .u32(e.fg_id)
                .u64(e.first_pool_segment)
                .u64(e.pv_segments)
                .u32(e.flags)
                .u32(0);
        }
        if let Some(seal) = &self.seal {
            w.pad_to(SEAL_AT);
            seal.encode(&mut w);
        }
        w.pad_to(BLOCK);
        let crc = crc_with_hole(&self.pool_id, &w.buf, CRC_AT);
        w.put_u32_at(CRC_AT, crc);
        w.buf
    }

    /// Decode a slot; the checksum is seeded with the pool id from the superblock.
    pub fn decode(buf: &[u8], pool_id: &[u8; 16]) -> Result<Self, FormatError> {
        const W: &str = "checkpoint";
        let b = open_block(buf, W, b"SSPCKPT1", pool_id, CRC_AT)?;
        let mut r = Rd::at(b, 8, W);
        check_version(r.u32()?, W)?;
        r.skip(4)?; // crc
                    // A full 122-entry table (written without a seal) reaches into the seal's place.
        let n = Rd::at(b, 176, W).u32()? as usize;
        let seal = if n <= MAX_PV_TABLE_SEALED {
            Seal::decode(&mut Rd::at(b, SEAL_AT, W))?
        } else {
            None
        };
        Ok(Checkpoint {
            seal,
            generation: r.u64()?,
            pool_id: r.arr()?,
            writer: Writer {
                host_id: r.u32()?,
                incarnation: r.u32()?,
                fencing_epoch: r.u64()?,
            },
            journal_seq: r.u64()?,
            journal_pos: r.u64()?,
            next_vba: r.u64()?,
            next_node_vba: r.u64()?,
            next_volume_id: r.u64()?,
            epoch: r.u64()?,
            vba_root: Root::decode(&mut r)?,
            segtab_root: Root::decode(&mut r)?,
            voldir_root: Root::decode(&mut r)?,
            pool_segments: r.u64()?,
            pv_count: r.u32()?,
            journal_pv: r.u32()?,
            timestamp: r.u64()?,
            pv_table: {
                let n = r.u32()? as usize;
                r.skip(4)?;
                if n > MAX_PV_TABLE {
                    return Err(FormatError::Invalid {
                        what: W,
                        field: "pv_table",
                        detail: format!("{n} entries"),
                    });
                }
                let mut t = Vec::with_capacity(n);
                for _ in 0..n {
                    let e = PvEntry {
                        pv_index: r.u32()?,
                        fg_id: r.u32()?,
                        first_pool_segment: r.u64()?,
                        pv_segments: r.u64()?,
                        flags: r.u32()?,
                    };
                    r.skip(4)?;
                    t.push(e);
                }
                t
            },
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample() -> Checkpoint {
        Checkpoint {
            generation: 7,
            pool_id: *b"pool-id-0123456\0",
            writer: Writer {
                host_id: 1,
                incarnation: 3,
                fencing_epoch: 1,
            },
            journal_seq: 1234,
            journal_pos: 17,
            next_vba: 5000,
            next_node_vba: 5001,
            next_volume_id: 4,
            epoch: 99,
            vba_root: Root {
                pba: 0x1_0203,
                crc: 0xdead_beef,
                depth: 2,
            },
            segtab_root: Root {
                pba: 0x1_0204,
                crc: 0x1234_5678,
                depth: 1,
            },
            voldir_root: Root {
                pba: 0x1_0205,
                crc: 0x0bad_f00d,
                depth: 1,
            },
            pool_segments: 63,
            pv_count: 1,
            journal_pv: 0,
            timestamp: 1_764_000_000,
            pv_table: Vec::new(),
            seal: Some(Seal {
                writer: Writer {
                    host_id: 1,
                    incarnation: 2,
                    fencing_epoch: 2,
                },
                journal_seq: 1233,
            }),
        }
    }

    /// A mirrored pool: two PVs in failure group 0, one in group 1 (failed).
    pub(crate) fn sample_mirror() -> Checkpoint {
        let e = |pv_index, fg_id, first_pool_segment, pv_segments, flags| PvEntry {
            pv_index,
            fg_id,
            first_pool_segment,
            pv_segments,
            flags,
        };
        Checkpoint {
            generation: 8,
            pv_count: 3,
            pool_segments: 100,
            pv_table: vec![
                e(0, 0, 1, 60, 0),
                e(1, 0, 61, 40, 0),
                e(2, 1, 1, 120, PvEntry::FAILED),
            ],
            ..sample()
        }
    }

    #[test]
    fn golden_mirror_vector_round_trip() {
        let golden = include_bytes!("../../ondisk-format/vectors/checkpoint-mirror.bin");
        let pool = *b"pool-id-0123456\0";
        let c = Checkpoint::decode(golden, &pool).expect("golden checkpoint decodes");
        assert_eq!(c, sample_mirror());
        assert_eq!(c.encode().as_slice(), &golden[..]);
        // The PV table starts at byte 176 with its entry count.
        assert_eq!(u32::from_le_bytes(golden[176..180].try_into().unwrap()), 3);
    }

    #[test]
    fn golden_vector_round_trip() {
        let golden = include_bytes!("../../ondisk-format/vectors/checkpoint.bin");
        let pool = *b"pool-id-0123456\0";
        let c = Checkpoint::decode(golden, &pool).expect("golden checkpoint decodes");
        assert_eq!(c, sample());
        assert_eq!(c.encode().as_slice(), &golden[..]);
        assert_eq!(&golden[0..8], b"SSPCKPT1");
        assert_eq!(u64::from_le_bytes(golden[16..24].try_into().unwrap()), 7);
    }

    /// A checkpoint written before seals existed (the previous `checkpoint.bin`): the tail is
    /// zero, so it decodes with no seal and re-encodes to the same bytes.
    #[test]
    fn pre_seal_checkpoint_decodes_without_seal() {
        let old = include_bytes!("../../ondisk-format/vectors/checkpoint-preseal.bin");
        let pool = *b"pool-id-0123456\0";
        let c = Checkpoint::decode(old, &pool).expect("pre-seal checkpoint decodes");
        assert_eq!(c.seal, None);
        assert_eq!(
            c,
            Checkpoint {
                seal: None,
                ..sample()
            }
        );
        assert_eq!(c.encode().as_slice(), &old[..]);
    }

    #[test]
    fn seal_sits_at_its_offset_and_survives_a_full_table() {
        let golden = include_bytes!("../../ondisk-format/vectors/checkpoint.bin");
        let s = sample().seal.unwrap();
        let at = |o: usize| u64::from_le_bytes(golden[o..o + 8].try_into().unwrap());
        assert_eq!(
            u32::from_le_bytes(golden[4064..4068].try_into().unwrap()),
            1
        );
        assert_eq!(
            u32::from_le_bytes(golden[4068..4072].try_into().unwrap()),
            2
        );
        assert_eq!(at(4072), 2);
        assert_eq!(at(4080), s.journal_seq);
        // A sealed checkpoint keeps at most 121 PV entries; an unsealed one 122, and the
        // 122nd entry is not taken for a seal.
        let e = PvEntry {
            pv_index: 5,
            fg_id: 1,
            first_pool_segment: 9,
            pv_segments: 9,
            flags: 0,
        };
        let big = Checkpoint {
            pv_table: vec![e; MAX_PV_TABLE],
            ..sample()
        };
        let c = Checkpoint::decode(&big.encode(), &big.pool_id).unwrap();
        assert_eq!(c.pv_table.len(), MAX_PV_TABLE_SEALED);
        assert_eq!(c.seal, big.seal);
        let full = Checkpoint { seal: None, ..big };
        let c = Checkpoint::decode(&full.encode(), &full.pool_id).unwrap();
        assert_eq!(c.pv_table.len(), MAX_PV_TABLE);
        assert_eq!(c.seal, None);
    }

    #[test]
    fn other_pool_or_flipped_bit_fails() {
        let b = sample().encode();
        assert!(Checkpoint::decode(&b, &[0; 16]).is_err());
        let mut b2 = b.clone();
        b2[100] ^= 1;
        assert!(matches!(
            Checkpoint::decode(&b2, b"pool-id-0123456\0"),
            Err(FormatError::BadChecksum { .. })
        ));
    }
}
