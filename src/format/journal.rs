//! Journal (write-ahead log) blocks and the records they carry.
//!
//! The journal is a ring of 4096-byte blocks on the journal PV. Each block holds a batch of
//! records; its checksum is seeded with the pool id and covers its sequence number, so a block
//! left over from an earlier lap of the ring (or another pool) never verifies. Replay reads blocks
//! in ring order from the checkpoint's position while each one verifies and carries the next
//! expected sequence number; the first that does not ends the journal (a torn tail is cut off).

use super::FORMAT_VERSION;
use super::{
    check_version, crc_with_hole, decode_name, encode_name, open_block, FormatError, Rd, Wr,
    Writer, BLOCK,
};

/// "SSPJ" as a little-endian u32.
pub const JOURNAL_MAGIC: u32 = u32::from_le_bytes(*b"SSPJ");
/// Size of the journal block header; records follow.
pub const JHDR: usize = 64;
/// Bytes available for records in one block.
pub const JPAYLOAD: usize = BLOCK - JHDR;
const CRC_AT: usize = 8;
/// Longest volume name.
pub const MAX_NAME: usize = 128;

/// One journal record: a logical change, replayed through the same code as the live operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// LU block `lba` of volume `vol` now holds the data at `pba` (checksum `crc`), through `vba`.
    Write {
        vol: u64,
        lba: u64,
        vba: u64,
        pba: u64,
        crc: u32,
    },
    /// Blocks `[lba, lba+count)` of `vol` are unmapped (TRIM, WRITE_ZEROES): they read as zeroes.
    Unmap { vol: u64, lba: u64, count: u64 },
    /// A volume was created.
    VolCreate {
        id: u64,
        kind: u8,
        size: u64,
        udid: [u8; 16],
        name: String,
    },
    /// A volume's size changed (shrinking unmaps the tail).
    VolResize { id: u64, size: u64 },
    /// A volume was removed; its references are dropped.
    VolRemove { id: u64 },
    /// The cleaner moved the block behind `vba` from `old_pba` to `new_pba`.
    GcMove {
        vba: u64,
        old_pba: u64,
        new_pba: u64,
        crc: u32,
    },
    /// Volume `id` (a snapshot, or a clone when `kind` is an LU) was created sharing every block
    /// of volume `src`. Needs `INCOMPAT_SHARING`.
    VolShare {
        id: u64,
        src: u64,
        kind: u8,
        udid: [u8; 16],
        name: String,
    },
    /// Snapshot rollback: a new snapshot `undo_id` takes over what volume `id` held (the undo
    /// point), then `id` holds exactly the blocks and size of volume `src`. Needs
    /// `INCOMPAT_SHARING`.
    VolRollback {
        id: u64,
        src: u64,
        undo_id: u64,
        undo_udid: [u8; 16],
        undo_name: String,
    },
    /// Volume `id` is now called `name`. Needs `INCOMPAT_SHARING`.
    VolRename { id: u64, name: String },
    /// Failure group `fg`'s copy of pool segment `seg` became stale (`stale` 1) or was brought
    /// up to date by resync (0). Needs `INCOMPAT_MIRROR`.
    SegStale { seg: u64, fg: u8, stale: u8 },
    /// PV `pv` failed (`failed` 1: it is neither read nor written) or is back (0). Needs
    /// `INCOMPAT_MIRROR`.
    PvState { pv: u32, failed: u8 },
    /// Blocks `[lba, lba+count)` of `vol` are allocated and read as zeroes (WRITE_ZEROES with
    /// NO_HOLE, all-zero writes): map entries become [`super::node::MAP_ZERO`], whole aligned
    /// spans at interior levels, so applying it costs metadata proportional to the tree depth,
    /// not to `count`. Needs `INCOMPAT_ZERO`.
    Zero { vol: u64, lba: u64, count: u64 },
    /// Volume `id` became thick (`thick` 1: its full size is reserved, see
    /// [`super::node::VOL_FLAG_THICK`]) or thin (0). Needs `INCOMPAT_THICK`.
    VolProvision { id: u64, thick: u8 },
}

const T_WRITE: u8 = 1;
const T_UNMAP: u8 = 2;
const T_VOL_CREATE: u8 = 3;
const T_VOL_RESIZE: u8 = 4;
const T_VOL_REMOVE: u8 = 5;
const T_GC_MOVE: u8 = 6;
const T_VOL_SHARE: u8 = 7;
const T_VOL_ROLLBACK: u8 = 8;
const T_VOL_RENAME: u8 = 9;
const T_SEG_STALE: u8 = 10;
const T_PV_STATE: u8 = 11;
const T_ZERO: u8 = 12;
const T_VOL_PROVISION: u8 = 13;

impl Record {
    /// Encoded size: type (1) + payload length (2) + payload.
    pub fn encoded_len(&self) -> usize {
        3 + match self {
            Record::Write { .. } => 36,
            Record::Unmap { .. } | Record::Zero { .. } => 24,
            Record::VolCreate { name, .. } => 8 + 1 + 8 + 16 + 1 + name.len().min(MAX_NAME),
            Record::VolResize { .. } => 16,
            Record::VolProvision { .. } => 9,
            Record::VolRemove { .. } => 8,
            Record::GcMove { .. } => 28,
            Record::VolShare { name, .. } => 8 + 8 + 1 + 16 + 1 + name.len().min(MAX_NAME),
            Record::VolRollback { undo_name, .. } => {
                8 + 8 + 8 + 16 + 1 + undo_name.len().min(MAX_NAME)
            }
            Record::VolRename { name, .. } => 8 + 1 + name.len().min(MAX_NAME),
            Record::SegStale { .. } => 10,
            Record::PvState { .. } => 5,
        }
    }

    pub fn encode(&self, w: &mut Wr) {
        let start = w.buf.len();
        w.u8(0).u16(0);
        let ty = match self {
            Record::Write {
                vol,
                lba,
                vba,
                pba,
                crc,
            } => {
                w.u64(*vol).u64(*lba).u64(*vba).u64(*pba).u32(*crc);
                T_WRITE
            }
            Record::Unmap { vol, lba, count } => {
                w.u64(*vol).u64(*lba).u64(*count);
                T_UNMAP
            }
            Record::VolCreate {
                id,
                kind,
                size,
                udid,
                name,
            } => {
                let n = name.len().min(MAX_NAME);
                w.u64(*id).u8(*kind).u64(*size).bytes(udid).u8(n as u8);
                encode_name(w, name, n);
                T_VOL_CREATE
            }
            Record::VolResize { id, size } => {
                w.u64(*id).u64(*size);
                T_VOL_RESIZE
            }
            Record::VolRemove { id } => {
                w.u64(*id);
                T_VOL_REMOVE
            }
            Record::GcMove {
                vba,
                old_pba,
                new_pba,
                crc,
            } => {
                w.u64(*vba).u64(*old_pba).u64(*new_pba).u32(*crc);
                T_GC_MOVE
            }
            Record::VolShare {
                id,
                src,
                kind,
                udid,
                name,
            } => {
                let n = name.len().min(MAX_NAME);
                w.u64(*id).u64(*src).u8(*kind).bytes(udid).u8(n as u8);
                encode_name(w, name, n);
                T_VOL_SHARE
            }
            Record::VolRollback {
                id,
                src,
                undo_id,
                undo_udid,
                undo_name,
            } => {
                let n = undo_name.len().min(MAX_NAME);
                w.u64(*id)
                    .u64(*src)
                    .u64(*undo_id)
                    .bytes(undo_udid)
                    .u8(n as u8);
                encode_name(w, undo_name, n);
                T_VOL_ROLLBACK
            }
            Record::VolRename { id, name } => {
                let n = name.len().min(MAX_NAME);
                w.u64(*id).u8(n as u8);
                encode_name(w, name, n);
                T_VOL_RENAME
            }
            Record::SegStale { seg, fg, stale } => {
                w.u64(*seg).u8(*fg).u8(*stale);
                T_SEG_STALE
            }
            Record::PvState { pv, failed } => {
                w.u32(*pv).u8(*failed);
                T_PV_STATE
            }
            Record::Zero { vol, lba, count } => {
                w.u64(*vol).u64(*lba).u64(*count);
                T_ZERO
            }
            Record::VolProvision { id, thick } => {
                w.u64(*id).u8(*thick);
                T_VOL_PROVISION
            }
        };
        let len = (w.buf.len() - start - 3) as u16;
        let [lo, hi] = len.to_le_bytes();
        if let Some(head) = w.buf.get_mut(start..start + 3) {
            head.copy_from_slice(&[ty, lo, hi]);
        }
    }

    fn decode(r: &mut Rd) -> Result<Self, FormatError> {
        const W: &str = "journal record";
        let ty = r.u8()?;
        let len = usize::from(r.u16()?);
        let body = r.bytes(len)?;
        let mut b = Rd::new(body, W);
        let rec = match ty {
            T_WRITE => Record::Write {
                vol: b.u64()?,
                lba: b.u64()?,
                vba: b.u64()?,
                pba: b.u64()?,
                crc: b.u32()?,
            },
            T_UNMAP => Record::Unmap {
                vol: b.u64()?,
                lba: b.u64()?,
                count: b.u64()?,
            },
            T_VOL_CREATE => {
                let id = b.u64()?;
                let kind = b.u8()?;
                let size = b.u64()?;
                let udid = b.arr()?;
                let n = usize::from(b.u8()?);
                let name = decode_name(b.bytes(n)?, W)?;
                Record::VolCreate {
                    id,
                    kind,
                    size,
                    udid,
                    name,
                }
            }
            T_VOL_RESIZE => Record::VolResize {
                id: b.u64()?,
                size: b.u64()?,
            },
            T_VOL_REMOVE => Record::VolRemove { id: b.u64()? },
            T_GC_MOVE => Record::GcMove {
                vba: b.u64()?,
                old_pba: b.u64()?,
                new_pba: b.u64()?,
                crc: b.u32()?,
            },
            T_VOL_SHARE => {
                let id = b.u64()?;
                let src = b.u64()?;
                let kind = b.u8()?;
                let udid = b.arr()?;
                let n = usize::from(b.u8()?);
                let name = decode_name(b.bytes(n)?, W)?;
                Record::VolShare {
                    id,
                    src,
                    kind,
                    udid,
                    name,
                }
            }
            T_VOL_ROLLBACK => {
                let id = b.u64()?;
                let src = b.u64()?;
                let undo_id = b.u64()?;
                let undo_udid = b.arr()?;
                let n = usize::from(b.u8()?);
                Record::VolRollback {
                    id,
                    src,
                    undo_id,
                    undo_udid,
                    undo_name: decode_name(b.bytes(n)?, W)?,
                }
            }
            T_VOL_RENAME => {
                let id = b.u64()?;
                let n = usize::from(b.u8()?);
                Record::VolRename {
                    id,
                    name: decode_name(b.bytes(n)?, W)?,
                }
            }
            T_SEG_STALE => Record::SegStale {
                seg: b.u64()?,
                fg: b.u8()?,
                stale: b.u8()?,
            },
            T_PV_STATE => Record::PvState {
                pv: b.u32()?,
                failed: b.u8()?,
            },
            T_ZERO => Record::Zero {
                vol: b.u64()?,
                lba: b.u64()?,
                count: b.u64()?,
            },
            T_VOL_PROVISION => Record::VolProvision {
                id: b.u64()?,
                thick: b.u8()?,
            },
            other => {
                return Err(FormatError::Invalid {
                    what: W,
                    field: "type",
                    detail: format!("unknown record type {other}"),
                })
            }
        };
        Ok(rec)
    }
}

/// A decoded journal block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalBlock {
    pub seq: u64,
    pub writer: Writer,
    /// Generation of the checkpoint this block was written after (diagnostics).
    pub ckpt_generation: u64,
    /// Highest sequence number known durable when this block was written: replay uses it to
    /// tell a torn tail (never acknowledged) from a corrupt block that was acknowledged.
    pub durable_seq: u64,
    pub records: Vec<Record>,
}

impl JournalBlock {
    /// Encode into one 4096-byte block. The caller keeps records within [`JPAYLOAD`].
    pub fn encode(&self, pool_id: &[u8; 16]) -> Vec<u8> {
        let mut body = Wr::with_capacity(JPAYLOAD);
        for rec in &self.records {
            rec.encode(&mut body);
        }
        debug_assert!(body.buf.len() <= JPAYLOAD, "journal block overflow");
        let mut w = Wr::with_capacity(BLOCK);
        w.u32(JOURNAL_MAGIC)
            .u16(FORMAT_VERSION as u16)
            .u16(0)
            .u32(0);
        w.u32(body.buf.len() as u32).u64(self.seq);
        w.u32(self.writer.host_id)
            .u32(self.writer.incarnation)
            .u64(self.writer.fencing_epoch);
        w.u64(self.ckpt_generation)
            .u32(self.records.len() as u32)
            .u64(self.durable_seq);
        w.pad_to(JHDR).bytes(&body.buf).pad_to(BLOCK);
        let crc = crc_with_hole(pool_id, &w.buf, CRC_AT);
        w.put_u32_at(CRC_AT, crc);
        w.buf
    }

    pub fn decode(buf: &[u8], pool_id: &[u8; 16]) -> Result<Self, FormatError> {
        const W: &str = "journal block";
        let b = open_block(buf, W, b"SSPJ", pool_id, CRC_AT)?;
        let mut r = Rd::at(b, 4, W);
        check_version(r.u16()?.into(), W)?;
        r.skip(6)?; // flags, crc
        let used = r.u32()? as usize;
        let seq = r.u64()?;
        let writer = Writer {
            host_id: r.u32()?,
            incarnation: r.u32()?,
            fencing_epoch: r.u64()?,
        };
        let ckpt_generation = r.u64()?;
        let count = r.u32()? as usize;
        let durable_seq = r.u64()?;
        if used > JPAYLOAD {
            return Err(FormatError::Invalid {
                what: W,
                field: "used",
                detail: used.to_string(),
            });
        }
        let body = buf.get(JHDR..JHDR + used).ok_or(FormatError::Short {
            what: W,
            len: buf.len(),
            need: JHDR + used,
        })?;
        let mut br = Rd::new(body, W);
        let mut records = Vec::with_capacity(count.min(JPAYLOAD / 3));
        while br.pos() < used {
            records.push(Record::decode(&mut br)?);
        }
        if records.len() != count {
            return Err(FormatError::Invalid {
                what: W,
                field: "count",
                detail: format!("header says {count}, found {}", records.len()),
            });
        }
        Ok(JournalBlock {
            seq,
            writer,
            ckpt_generation,
            durable_seq,
            records,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample() -> JournalBlock {
        JournalBlock {
            seq: 42,
            writer: Writer {
                host_id: 1,
                incarnation: 2,
                fencing_epoch: 1,
            },
            ckpt_generation: 6,
            durable_seq: 41,
            records: vec![
                Record::VolCreate {
                    id: 1,
                    kind: 1,
                    size: 10 << 30,
                    udid: *b"0123456789abcdef",
                    name: "vm1-rootvg".into(),
                },
                Record::Write {
                    vol: 1,
                    lba: 7,
                    vba: 100,
                    pba: 0x101,
                    crc: 0xabcd_ef01,
                },
                Record::Unmap {
                    vol: 1,
                    lba: 8,
                    count: 16,
                },
                Record::VolResize {
                    id: 1,
                    size: 20 << 30,
                },
                Record::GcMove {
                    vba: 100,
                    old_pba: 0x101,
                    new_pba: 0x2f0,
                    crc: 0xabcd_ef01,
                },
                Record::VolRemove { id: 1 },
            ],
        }
    }

    /// The records of snapshots and clones (pools with `INCOMPAT_SHARING`).
    pub(crate) fn sample_sharing() -> JournalBlock {
        JournalBlock {
            seq: 43,
            records: vec![
                Record::VolShare {
                    id: 2,
                    src: 1,
                    kind: 2,
                    udid: *b"fedcba9876543210",
                    name: "vm1-rootvg@golden".into(),
                },
                Record::VolShare {
                    id: 3,
                    src: 2,
                    kind: 1,
                    udid: *b"0011223344556677",
                    name: "vm2-rootvg".into(),
                },
                Record::VolRollback {
                    id: 1,
                    src: 2,
                    undo_id: 4,
                    undo_udid: *b"8899aabbccddeeff",
                    undo_name: "vm1-rootvg@undo-1".into(),
                },
                Record::VolRename {
                    id: 3,
                    name: "vm3-rootvg".into(),
                },
            ],
            ..sample()
        }
    }

    /// The mirror records (pools with `INCOMPAT_MIRROR`).
    pub(crate) fn sample_mirror() -> JournalBlock {
        JournalBlock {
            seq: 44,
            records: vec![
                Record::PvState { pv: 2, failed: 1 },
                Record::SegStale {
                    seg: 17,
                    fg: 1,
                    stale: 1,
                },
                Record::SegStale {
                    seg: 17,
                    fg: 1,
                    stale: 0,
                },
                Record::PvState { pv: 2, failed: 0 },
            ],
            ..sample()
        }
    }

    /// The zero records (pools with `INCOMPAT_ZERO`).
    pub(crate) fn sample_zero() -> JournalBlock {
        JournalBlock {
            seq: 45,
            records: vec![
                Record::Zero {
                    vol: 1,
                    lba: 0,
                    count: 1 << 27,
                },
                Record::Zero {
                    vol: 3,
                    lba: 9,
                    count: 1,
                },
            ],
            ..sample()
        }
    }

    /// The provisioning records (pools with `INCOMPAT_THICK`).
    pub(crate) fn sample_thick() -> JournalBlock {
        JournalBlock {
            seq: 46,
            records: vec![
                Record::VolProvision { id: 4, thick: 1 },
                Record::VolProvision { id: 9, thick: 0 },
            ],
            ..sample()
        }
    }

    #[test]
    fn golden_thick_vector_round_trip() {
        let golden = include_bytes!("../../ondisk-format/vectors/journal-thick.bin");
        let pool = *b"pool-id-0123456\0";
        let j = JournalBlock::decode(golden, &pool).expect("golden journal block decodes");
        assert_eq!(j, sample_thick());
        assert_eq!(j.encode(&pool).as_slice(), &golden[..]);
        // Record type 13 (VolProvision), payload length 9, then id and the thick flag.
        assert_eq!(golden[64], 13);
        assert_eq!(u16::from_le_bytes([golden[65], golden[66]]), 9);
        assert_eq!(u64::from_le_bytes(golden[67..75].try_into().unwrap()), 4);
        assert_eq!(golden[75], 1);
    }

    #[test]
    fn golden_zero_vector_round_trip() {
        let golden = include_bytes!("../../ondisk-format/vectors/journal-zero.bin");
        let pool = *b"pool-id-0123456\0";
        let j = JournalBlock::decode(golden, &pool).expect("golden journal block decodes");
        assert_eq!(j, sample_zero());
        assert_eq!(j.encode(&pool).as_slice(), &golden[..]);
        // Record type 12 (Zero), payload length 24, then vol, lba, count.
        assert_eq!(golden[64], 12);
        assert_eq!(u16::from_le_bytes([golden[65], golden[66]]), 24);
        assert_eq!(u64::from_le_bytes(golden[67..75].try_into().unwrap()), 1);
        assert_eq!(
            u64::from_le_bytes(golden[83..91].try_into().unwrap()),
            1 << 27
        );
        for rec in sample_zero().records {
            let mut w = Wr::default();
            rec.encode(&mut w);
            assert_eq!(w.buf.len(), rec.encoded_len());
        }
    }

    #[test]
    fn golden_mirror_vector_round_trip() {
        let golden = include_bytes!("../../ondisk-format/vectors/journal-mirror.bin");
        let pool = *b"pool-id-0123456\0";
        let j = JournalBlock::decode(golden, &pool).expect("golden journal block decodes");
        assert_eq!(j, sample_mirror());
        assert_eq!(j.encode(&pool).as_slice(), &golden[..]);
        // Record types 11 (PvState), 10 (SegStale).
        assert_eq!(golden[64], 11);
        assert_eq!(golden[64 + 8], 10);
        for rec in sample_mirror().records {
            let mut w = Wr::default();
            rec.encode(&mut w);
            assert_eq!(w.buf.len(), rec.encoded_len());
        }
    }

    #[test]
    fn golden_sharing_vector_round_trip() {
        let golden = include_bytes!("../../ondisk-format/vectors/journal-sharing.bin");
        let pool = *b"pool-id-0123456\0";
        let j = JournalBlock::decode(golden, &pool).expect("golden journal block decodes");
        assert_eq!(j, sample_sharing());
        assert_eq!(j.encode(&pool).as_slice(), &golden[..]);
        // Record types 7 (VolShare), 7, 8 (VolRollback), 9 (VolRename).
        assert_eq!(golden[64], 7);
        for rec in sample_sharing().records {
            let mut w = Wr::default();
            rec.encode(&mut w);
            assert_eq!(w.buf.len(), rec.encoded_len());
        }
    }

    #[test]
    fn golden_vector_round_trip() {
        let golden = include_bytes!("../../ondisk-format/vectors/journal.bin");
        let pool = *b"pool-id-0123456\0";
        let j = JournalBlock::decode(golden, &pool).expect("golden journal block decodes");
        assert_eq!(j, sample());
        assert_eq!(j.encode(&pool).as_slice(), &golden[..]);
        assert_eq!(&golden[0..4], b"SSPJ");
        assert_eq!(u64::from_le_bytes(golden[16..24].try_into().unwrap()), 42);
        // First record starts at byte 64 with type 3 (VolCreate).
        assert_eq!(golden[64], 3);
    }

    #[test]
    fn stale_or_torn_blocks_fail() {
        let pool = *b"pool-id-0123456\0";
        let mut b = sample().encode(&pool);
        // A torn write: the second half of the block is from an older write.
        for x in &mut b[2048..] {
            *x = 0x5a;
        }
        assert!(JournalBlock::decode(&b, &pool).is_err());
    }

    #[test]
    fn encoded_len_matches() {
        for rec in sample().records {
            let mut w = Wr::default();
            rec.encode(&mut w);
            assert_eq!(w.buf.len(), rec.encoded_len(), "{rec:?}");
        }
    }
}
