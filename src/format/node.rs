//! Metadata nodes: every metadata block is a 4096-byte node with a 64-byte header.
//!
//! Kinds: block-map nodes (an LU's radix tree of VBAs, addressed by VBA so they can be shared by
//! snapshots and moved by the cleaner without touching parents), VBA-table pages (VBA → PBA, data
//! checksum, reference count), segment-table pages, volume-directory pages and segment summaries.
//! The header names the node (`kind`, `level`, `id`) so the cleaner can find its owner from the
//! node alone, and carries the writer identity for multi-host fencing.

use super::{
    crc_with_hole, decode_name, encode_name, open_block, FormatError, Rd, Wr, Writer, BLOCK,
};

/// "SSPN" as a little-endian u32.
pub const NODE_MAGIC: u32 = u32::from_le_bytes(*b"SSPN");
/// Header size; the payload follows.
pub const NHDR: usize = 64;
/// Payload bytes per node.
pub const NPAYLOAD: usize = BLOCK - NHDR;
const CRC_AT: usize = 8;

/// Entries per block-map node (u64 VBAs).
pub const MAP_FANOUT: usize = NPAYLOAD / 8;
/// Block-map entry meaning "allocated, reads as zeroes", with no data block and no VBA behind
/// it (needs `INCOMPAT_ZERO`). In a leaf it covers one LU block; in an interior node the whole
/// span of that child. Data VBAs are even and map-node VBAs are allocated upwards from 1, so
/// this value is never a real VBA. Entry 0 stays "unmapped" (a hole).
pub const MAP_ZERO: u64 = u64::MAX;

/// Whether a block-map entry references a VBA (a data block in a leaf, a child node above).
pub fn map_entry_is_ref(e: u64) -> bool {
    e != 0 && e != MAP_ZERO
}
/// Entries per node of 16-byte pointers (VBA-table pages, interior pages of every physical tree).
pub const PTR_FANOUT: usize = NPAYLOAD / Ptr::SIZE;
/// Segment-table entries per leaf page.
pub const SEG_PER_PAGE: usize = NPAYLOAD / SegEntry::SIZE;
/// Volume records per leaf page.
pub const VOL_PER_PAGE: usize = NPAYLOAD / VolRecord::SIZE;
/// Tags per segment summary (one per block of a segment).
pub const SUMMARY_TAGS: usize = super::SEG_BLOCKS as usize;

/// What a node holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum NodeKind {
    /// Block-map node of a volume: level 0 holds data VBAs, higher levels child-node VBAs.
    Map = 1,
    /// VBA table: level 0 holds [`Ptr`] with `aux` = reference count; higher levels child pointers.
    Vba = 2,
    /// Segment table: level 0 holds [`SegEntry`]; higher levels child pointers.
    SegTab = 3,
    /// Volume directory: level 0 holds [`VolRecord`]; higher levels child pointers.
    VolDir = 4,
    /// Segment summary: the VBA behind each block of one data segment.
    Summary = 5,
}

impl NodeKind {
    fn from_u16(v: u16) -> Option<Self> {
        Some(match v {
            1 => NodeKind::Map,
            2 => NodeKind::Vba,
            3 => NodeKind::SegTab,
            4 => NodeKind::VolDir,
            5 => NodeKind::Summary,
            _ => return None,
        })
    }
}

/// Node header fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeHeader {
    pub kind: NodeKind,
    /// Height above the leaves (0 = leaf).
    pub level: u8,
    /// Non-empty entries (informative; not trusted by readers).
    pub count: u32,
    /// Map nodes: their VBA. Table pages: index of the page within its level. Summary: segment.
    pub id: u64,
    /// Checkpoint generation that wrote the node.
    pub generation: u64,
    pub writer: Writer,
    /// Map nodes: the volume that wrote the node (diagnostics; shared nodes keep the first).
    pub owner: u64,
}

/// Encode a node from its header and payload (payload is zero-padded to [`NPAYLOAD`]).
pub fn encode_node(pool_id: &[u8; 16], h: &NodeHeader, payload: &[u8]) -> Vec<u8> {
    let mut w = Wr::with_capacity(BLOCK);
    w.u32(NODE_MAGIC)
        .u16(h.kind as u16)
        .u8(h.level)
        .u8(0)
        .u32(0)
        .u32(h.count);
    w.u64(h.id).u64(h.generation);
    w.u32(h.writer.host_id)
        .u32(h.writer.incarnation)
        .u64(h.writer.fencing_epoch);
    w.u64(h.owner).zeros(8);
    let n = payload.len().min(NPAYLOAD);
    w.bytes(payload.get(..n).unwrap_or_default()).pad_to(BLOCK);
    let crc = crc_with_hole(pool_id, &w.buf, CRC_AT);
    w.put_u32_at(CRC_AT, crc);
    w.buf
}

/// Checksum a stored node must have (equals the crc kept by its parent pointer).
pub fn node_crc(pool_id: &[u8; 16], buf: &[u8]) -> u32 {
    crc_with_hole(pool_id, buf, CRC_AT)
}

/// Decode and verify a node; returns the header and the payload bytes.
pub fn decode_node<'a>(
    buf: &'a [u8],
    pool_id: &[u8; 16],
) -> Result<(NodeHeader, &'a [u8]), FormatError> {
    const W: &str = "metadata node";
    let b = open_block(buf, W, b"SSPN", pool_id, CRC_AT)?;
    let mut r = Rd::at(b, 4, W);
    let kind_raw = r.u16()?;
    let level = r.u8()?;
    r.skip(5)?; // flags, crc
    let kind = NodeKind::from_u16(kind_raw).ok_or(FormatError::Invalid {
        what: W,
        field: "kind",
        detail: kind_raw.to_string(),
    })?;
    let h = NodeHeader {
        kind,
        level,
        count: r.u32()?,
        id: r.u64()?,
        generation: r.u64()?,
        writer: Writer {
            host_id: r.u32()?,
            incarnation: r.u32()?,
            fencing_epoch: r.u64()?,
        },
        owner: r.u64()?,
    };
    let payload = buf.get(NHDR..BLOCK).ok_or(FormatError::Short {
        what: "metadata node",
        len: buf.len(),
        need: BLOCK,
    })?;
    Ok((h, payload))
}

/// Encode a slice of u64 (map entries, summary tags) as a payload.
pub fn encode_u64s(v: &[u64]) -> Vec<u8> {
    let mut w = Wr::with_capacity(v.len() * 8);
    for x in v {
        w.u64(*x);
    }
    w.buf
}

/// Decode `n` u64 values from a payload.
pub fn decode_u64s(p: &[u8], n: usize) -> Result<Vec<u64>, FormatError> {
    let mut r = Rd::new(p, "node payload");
    (0..n).map(|_| r.u64()).collect()
}

/// A 16-byte pointer: physical block, its checksum and an auxiliary word.
/// In VBA-table leaves `aux` is the VBA's reference count; elsewhere it is zero.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ptr {
    pub pba: u64,
    pub crc: u32,
    pub aux: u32,
}

impl Ptr {
    pub const SIZE: usize = 16;
    pub fn is_none(&self) -> bool {
        self.pba == 0
    }
    pub fn encode(&self, w: &mut Wr) {
        w.u64(self.pba).u32(self.crc).u32(self.aux);
    }
    pub fn decode(r: &mut Rd) -> Result<Self, FormatError> {
        Ok(Ptr {
            pba: r.u64()?,
            crc: r.u32()?,
            aux: r.u32()?,
        })
    }
}

/// Encode/decode a whole page of fixed-size entries.
pub fn encode_ptrs(v: &[Ptr]) -> Vec<u8> {
    let mut w = Wr::with_capacity(v.len() * Ptr::SIZE);
    v.iter().for_each(|p| p.encode(&mut w));
    w.buf
}

pub fn decode_ptrs(p: &[u8], n: usize) -> Result<Vec<Ptr>, FormatError> {
    let mut r = Rd::new(p, "pointer page");
    (0..n).map(|_| Ptr::decode(&mut r)).collect()
}

/// Segment states.
pub const SEG_FREE: u8 = 0;
pub const SEG_DATA: u8 = 1;
pub const SEG_META: u8 = 2;

/// Segment flag: the copy in failure group `fg` is stale (written while that group was failed,
/// or not yet copied to a new group) and must not be read until resync copies it.
pub const fn seg_flag_stale(fg: u32) -> u8 {
    1 << (fg & 1)
}

/// One pool segment: state, live blocks, summary and where its copies live.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SegEntry {
    pub state: u8,
    pub flags: u8,
    /// Blocks of this segment still referenced.
    pub live: u32,
    /// Allocation sequence when the segment was opened (age for the cleaner).
    pub seq: u64,
    /// Summary node of a data segment (0 until written).
    pub summary: u64,
    pub summary_crc: u32,
    /// Copies: (PV index, segment within that PV). The second copy is `u16::MAX` when unmirrored.
    pub copy: [(u16, u32); 2],
    /// Which append stream filled the segment ([`STREAM_DATA`], [`STREAM_META`],
    /// [`STREAM_GC`]; 0 unknown) and the writer that owned it (`host_id`, `incarnation`; 0
    /// unknown). `RO_COMPAT_SEAL` pools; zero otherwise (FORMAT.md §3.7, §7.3).
    pub stream: u8,
    pub owner_host: u32,
    pub owner_incarnation: u32,
}

/// Segment-table `stream` values: the append stream that filled a segment.
pub const STREAM_DATA: u8 = 1;
pub const STREAM_META: u8 = 2;
pub const STREAM_GC: u8 = 3;

impl SegEntry {
    pub const SIZE: usize = 48;
    pub const NO_PV: u16 = u16::MAX;
    pub fn encode(&self, w: &mut Wr) {
        w.u8(self.state)
            .u8(self.flags)
            .u8(self.stream)
            .u8(0)
            .u32(self.live)
            .u64(self.seq);
        w.u64(self.summary).u32(self.summary_crc);
        w.u16(self.copy[0].0)
            .u16(self.copy[1].0)
            .u32(self.copy[0].1)
            .u32(self.copy[1].1);
        w.u32(self.owner_host).u32(self.owner_incarnation);
    }
    pub fn decode(r: &mut Rd) -> Result<Self, FormatError> {
        let state = r.u8()?;
        let flags = r.u8()?;
        let stream = r.u8()?;
        r.skip(1)?;
        let live = r.u32()?;
        let seq = r.u64()?;
        let summary = r.u64()?;
        let summary_crc = r.u32()?;
        let (p0, p1, s0, s1) = (r.u16()?, r.u16()?, r.u32()?, r.u32()?);
        let (owner_host, owner_incarnation) = (r.u32()?, r.u32()?);
        if state > SEG_META {
            return Err(FormatError::Invalid {
                what: "segment entry",
                field: "state",
                detail: state.to_string(),
            });
        }
        Ok(SegEntry {
            state,
            flags,
            live,
            seq,
            summary,
            summary_crc,
            copy: [(p0, s0), (p1, s1)],
            stream,
            owner_host,
            owner_incarnation,
        })
    }
}

/// Volume kinds.
pub const VOL_LU: u8 = 1;
pub const VOL_SNAPSHOT: u8 = 2;
pub const VOL_IMAGE: u8 = 3;

/// Volume flag: some of this volume's map nodes may be shared with another volume (it has a
/// snapshot, or is a snapshot or clone), so writes must check node reference counts.
pub const VOL_FLAG_SHARES_NODES: u8 = 1;
/// `VolRecord.flags`: a thick volume. The pool keeps space reserved for every block of it that it
/// does not own alone, so its writes never fail for want of space (needs `INCOMPAT_THICK`).
pub const VOL_FLAG_THICK: u8 = 2;

/// A volume (LU, snapshot, client image or clone) in the volume directory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VolRecord {
    /// Volume id (0 marks an empty slot).
    pub id: u64,
    pub kind: u8,
    pub flags: u8,
    /// Height of the block-map tree (1 = root is a leaf).
    pub map_depth: u8,
    pub size: u64,
    pub udid: [u8; 16],
    /// VBA of the block-map root node (0 = nothing mapped).
    pub map_root: u64,
    /// Snapshot: its LU. Clone: the snapshot it was made from. Otherwise 0.
    pub parent: u64,
    /// Volumes that may share blocks have the same family id.
    pub family: u64,
    pub created_epoch: u64,
    pub created_time: u64,
    /// Data blocks referenced by this volume's map.
    pub mapped_blocks: u64,
    /// Mapped blocks referenced by no other volume.
    pub owned_blocks: u64,
    pub name: String,
}

impl VolRecord {
    pub const SIZE: usize = 256;
    pub const NAME_LEN: usize = 128;
    pub fn encode(&self, w: &mut Wr) {
        let start = w.buf.len();
        w.u64(self.id)
            .u8(self.kind)
            .u8(self.flags)
            .u8(self.map_depth);
        w.u8(self.name.len().min(Self::NAME_LEN) as u8).zeros(4);
        w.u64(self.size)
            .bytes(&self.udid)
            .u64(self.map_root)
            .u64(self.parent)
            .u64(self.family);
        w.u64(self.created_epoch).u64(self.created_time);
        w.u64(self.mapped_blocks).u64(self.owned_blocks).zeros(16);
        encode_name(w, &self.name, Self::NAME_LEN);
        w.pad_to(start + Self::SIZE);
    }
    pub fn decode(r: &mut Rd) -> Result<Self, FormatError> {
        const W: &str = "volume record";
        let id = r.u64()?;
        let kind = r.u8()?;
        let flags = r.u8()?;
        let map_depth = r.u8()?;
        let name_len = usize::from(r.u8()?);
        r.skip(4)?;
        let v = VolRecord {
            id,
            kind,
            flags,
            map_depth,
            size: r.u64()?,
            udid: r.arr()?,
            map_root: r.u64()?,
            parent: r.u64()?,
            family: r.u64()?,
            created_epoch: r.u64()?,
            created_time: r.u64()?,
            mapped_blocks: r.u64()?,
            owned_blocks: {
                let o = r.u64()?;
                r.skip(16)?;
                o
            },
            name: {
                let raw = r.bytes(Self::NAME_LEN)?;
                decode_name(raw.get(..name_len.min(Self::NAME_LEN)).unwrap_or(raw), W)?
            },
        };
        r.skip(Self::SIZE - 240)?;
        if v.id != 0 && !(VOL_LU..=VOL_IMAGE).contains(&v.kind) {
            return Err(FormatError::Invalid {
                what: W,
                field: "kind",
                detail: v.kind.to_string(),
            });
        }
        if v.map_depth > 8 {
            return Err(FormatError::Invalid {
                what: W,
                field: "map_depth",
                detail: v.map_depth.to_string(),
            });
        }
        Ok(v)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const POOL: [u8; 16] = *b"pool-id-0123456\0";

    pub(crate) fn sample_map() -> (NodeHeader, Vec<u64>) {
        let h = NodeHeader {
            kind: NodeKind::Map,
            level: 0,
            count: 3,
            id: 77,
            generation: 5,
            writer: Writer {
                host_id: 1,
                incarnation: 2,
                fencing_epoch: 1,
            },
            owner: 1,
        };
        let mut e = vec![0u64; MAP_FANOUT];
        e[0] = 100;
        e[1] = 101;
        e[503] = 0xffff_ffff;
        (h, e)
    }

    /// An interior map node (level 1) with zero spans beside child nodes (`INCOMPAT_ZERO`).
    pub(crate) fn sample_map_zero() -> (NodeHeader, Vec<u64>) {
        let (mut h, _) = sample_map();
        h.level = 1;
        h.count = 4;
        h.id = 79;
        let mut e = vec![0u64; MAP_FANOUT];
        e[0] = MAP_ZERO;
        e[1] = 81;
        e[2] = MAP_ZERO;
        e[500] = 83;
        (h, e)
    }

    pub(crate) fn sample_vol() -> VolRecord {
        VolRecord {
            id: 1,
            kind: VOL_LU,
            flags: 0,
            map_depth: 2,
            size: 10 << 30,
            udid: *b"0123456789abcdef",
            map_root: 77,
            parent: 0,
            family: 1,
            created_epoch: 3,
            created_time: 1_764_000_000,
            mapped_blocks: 3,
            owned_blocks: 3,
            name: "vm1-rootvg".into(),
        }
    }

    pub(crate) fn sample_seg() -> SegEntry {
        SegEntry {
            state: SEG_DATA,
            flags: 0,
            live: 200,
            seq: 9,
            summary: 0x305,
            summary_crc: 0x1111_2222,
            copy: [(0, 4), (SegEntry::NO_PV, 0)],
            stream: STREAM_DATA,
            owner_host: 1,
            owner_incarnation: 2,
        }
    }

    /// A segment entry written before owner stamps (bytes 2 and 40–47 zero) decodes with an
    /// unknown owner.
    #[test]
    fn pre_seal_segment_entry_has_no_owner() {
        let mut w = Wr::default();
        sample_seg().encode(&mut w);
        let mut b = w.buf;
        b[2] = 0;
        b[40..48].fill(0);
        let e = SegEntry::decode(&mut Rd::new(&b, "seg")).unwrap();
        assert_eq!(
            e,
            SegEntry {
                stream: 0,
                owner_host: 0,
                owner_incarnation: 0,
                ..sample_seg()
            }
        );
        assert_eq!(b[2], 0);
    }

    #[test]
    fn golden_map_node() {
        let golden = include_bytes!("../../ondisk-format/vectors/node-map.bin");
        let (h, p) = decode_node(golden, &POOL).expect("golden map node decodes");
        let (sh, se) = sample_map();
        assert_eq!(h, sh);
        assert_eq!(decode_u64s(p, MAP_FANOUT).unwrap(), se);
        assert_eq!(
            encode_node(&POOL, &h, &encode_u64s(&se)).as_slice(),
            &golden[..]
        );
        assert_eq!(&golden[0..4], b"SSPN");
        assert_eq!(u64::from_le_bytes(golden[64..72].try_into().unwrap()), 100);
    }

    #[test]
    fn golden_map_node_with_zero_entries() {
        let golden = include_bytes!("../../ondisk-format/vectors/node-map-zero.bin");
        let (h, p) = decode_node(golden, &POOL).expect("golden node decodes");
        let (sh, se) = sample_map_zero();
        assert_eq!(h, sh);
        assert_eq!(decode_u64s(p, MAP_FANOUT).unwrap(), se);
        assert_eq!(
            encode_node(&POOL, &h, &encode_u64s(&se)).as_slice(),
            &golden[..]
        );
        // Entry 0 is the zero sentinel: eight 0xff bytes.
        assert_eq!(&golden[64..72], &[0xff; 8]);
        assert!(!map_entry_is_ref(MAP_ZERO) && !map_entry_is_ref(0) && map_entry_is_ref(81));
    }

    #[test]
    fn golden_voldir_and_segtab_entries() {
        let golden = include_bytes!("../../ondisk-format/vectors/entries.bin");
        let mut r = Rd::new(golden, "golden");
        assert_eq!(VolRecord::decode(&mut r).unwrap(), sample_vol());
        assert_eq!(SegEntry::decode(&mut r).unwrap(), sample_seg());
        let p = Ptr::decode(&mut r).unwrap();
        assert_eq!(
            p,
            Ptr {
                pba: 0x1234,
                crc: 0xcafe_babe,
                aux: 2
            }
        );
        let mut w = Wr::default();
        sample_vol().encode(&mut w);
        sample_seg().encode(&mut w);
        p.encode(&mut w);
        assert_eq!(w.buf.as_slice(), &golden[..]);
    }

    #[test]
    fn corrupt_node_is_rejected() {
        let (h, e) = sample_map();
        let mut b = encode_node(&POOL, &h, &encode_u64s(&e));
        b[1000] ^= 4;
        assert!(matches!(
            decode_node(&b, &POOL),
            Err(FormatError::BadChecksum { .. })
        ));
    }

    #[test]
    fn fanouts() {
        assert_eq!(MAP_FANOUT, 504);
        assert_eq!(PTR_FANOUT, 252);
        assert_eq!(SEG_PER_PAGE, 84);
        assert_eq!(VOL_PER_PAGE, 15);
    }
}
