//! On-disk encoding: pure, no I/O, one module per structure, 1:1 with `ondisk-format/FORMAT.md`.
//!
//! Conventions: every integer is little-endian; the pool block is 4096 bytes; every structure
//! carries a CRC-32C (Castagnoli) that is *seeded with the pool id* so a block from another pool
//! (or another format) never verifies. Decoding never panics: it returns [`FormatError`].
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

pub mod checkpoint;
pub mod dircopy;
pub mod journal;
pub mod node;
pub mod superblock;
mod vectors;

use thiserror::Error;

/// Pool block size in bytes. Every data block and metadata node is one pool block.
pub const BLOCK: usize = 4096;
/// Pool block size as u64, for offset arithmetic.
pub const BLOCK_U64: u64 = BLOCK as u64;
/// On-disk format version written by this code.
pub const FORMAT_VERSION: u32 = 1;
/// Incompatible feature: the journal may carry snapshot/clone records (`VolShare`,
/// `VolRollback`, `VolRename`) and volumes may share map nodes. Set on every pool this code
/// creates; a reader without it would stop replay at the first such record.
pub const INCOMPAT_SHARING: u64 = 1;
/// Incompatible feature: PVs form two failure groups that each hold a full copy of every pool
/// segment; the checkpoint carries the PV table and the journal the mirror records (`SegStale`,
/// `PvState`). A reader without it would take the second group for extra capacity.
pub const INCOMPAT_MIRROR: u64 = 2;
/// Incompatible feature: block-map entries may hold [`node::MAP_ZERO`] ("allocated, reads as
/// zeroes", no data block) and the journal may carry `Zero` records. Set on every pool this code
/// creates, and on an older pool the first time it stores a zero entry. A reader without it
/// would take the sentinel for a VBA.
pub const INCOMPAT_ZERO: u64 = 4;
/// Incompatible feature: volumes may be thick (`VolRecord.flags` bit 1, journal record
/// `VolProvision`): the pool reserves their space. Set the first time a volume becomes thick. A
/// reader without it would stop replay at the record, or write into the reserved space.
pub const INCOMPAT_THICK: u64 = 8;
/// Incompatible feature bits this code understands: an unknown one refuses to open.
pub const INCOMPAT_SUPPORTED: u64 =
    INCOMPAT_SHARING | INCOMPAT_MIRROR | INCOMPAT_ZERO | INCOMPAT_THICK;
/// Read-only-compatible feature: every checkpoint records the seal its writer opened at
/// ([`Seal`], FORMAT.md §3.2), the fencing epoch goes up at every writable open, and replay takes
/// only blocks stamped by the checkpoint's writer (§7.3). An older writer would neither keep the
/// seal nor advance the epoch, so it may only read such a pool. Set on every pool this code
/// creates.
pub const RO_COMPAT_SEAL: u64 = 1;
/// Read-only-compatible feature bits this code understands: an unknown one opens read-only.
pub const RO_COMPAT_SUPPORTED: u64 = RO_COMPAT_SEAL;
/// Compatible feature: the PVs hold a copy of the pool directory's configuration files
/// ([`dircopy`], FORMAT.md §3.10) between the journal ring and the data area. Set the first
/// time a copy is written; a reader without it ignores those bytes, which nothing else uses.
pub const COMPAT_DIRCOPY: u64 = 1;
/// Blocks per segment (1 MiB segments): the unit of allocation, cleaning and mirroring.
pub const SEG_BLOCKS: u64 = 256;
/// Writer identity stamped on every node, journal block and checkpoint (multi-host fencing).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Writer {
    /// Host id of the writer (single-host pools: 1).
    pub host_id: u32,
    /// Incarnation of the writer process on that host (bumped at every open).
    pub incarnation: u32,
    /// Fencing epoch granted by the lease service (single-host pools: 1).
    pub fencing_epoch: u64,
}

impl Writer {
    /// The same writer process: host and incarnation (the epoch may move within one).
    pub fn same_process(&self, other: &Writer) -> bool {
        self.host_id == other.host_id && self.incarnation == other.incarnation
    }
}

/// The end of one writer's journal (FORMAT.md §7.3): replay of that writer's log stops after
/// the block with sequence number `journal_seq`, which `writer` wrote. Printed and parsed as
/// `HOST:INCARNATION:EPOCH:SEQ` (host in hex, as `pool status` shows it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Seal {
    pub writer: Writer,
    pub journal_seq: u64,
}

impl Seal {
    /// Encoded size in a checkpoint.
    pub const SIZE: usize = 24;

    pub fn encode(&self, w: &mut Wr) {
        w.u32(self.writer.host_id)
            .u32(self.writer.incarnation)
            .u64(self.writer.fencing_epoch)
            .u64(self.journal_seq);
    }

    /// All-zero bytes (a checkpoint without a recorded seal) decode as `None`.
    pub fn decode(r: &mut Rd) -> Result<Option<Self>, FormatError> {
        let s = Seal {
            writer: Writer {
                host_id: r.u32()?,
                incarnation: r.u32()?,
                fencing_epoch: r.u64()?,
            },
            journal_seq: r.u64()?,
        };
        Ok((s != Seal::default()).then_some(s))
    }
}

impl std::fmt::Display for Seal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:08x}:{}:{}:{}",
            self.writer.host_id,
            self.writer.incarnation,
            self.writer.fencing_epoch,
            self.journal_seq
        )
    }
}

impl std::str::FromStr for Seal {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let [host, inc, epoch, seq] = parts.as_slice() else {
            return Err(format!("seal {s:?}: expected HOST:INCARNATION:EPOCH:SEQ"));
        };
        let bad = |what: &str, e: std::num::ParseIntError| format!("seal {s:?}: {what}: {e}");
        Ok(Seal {
            writer: Writer {
                host_id: u32::from_str_radix(host, 16).map_err(|e| bad("host", e))?,
                incarnation: inc.parse().map_err(|e| bad("incarnation", e))?,
                fencing_epoch: epoch.parse().map_err(|e| bad("epoch", e))?,
            },
            journal_seq: seq.parse().map_err(|e| bad("sequence", e))?,
        })
    }
}

/// Errors from decoding on-disk bytes.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FormatError {
    #[error("bad magic {found:#x} (expected {expected:#x} for {what})")]
    BadMagic {
        what: &'static str,
        found: u64,
        expected: u64,
    },
    #[error("{what}: checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    BadChecksum {
        what: &'static str,
        stored: u32,
        computed: u32,
    },
    #[error("{what}: unsupported format version {found} (this build reads {FORMAT_VERSION})")]
    BadVersion { what: &'static str, found: u32 },
    #[error("{what}: unsupported incompatible features {bits:#x}")]
    Incompatible { what: &'static str, bits: u64 },
    #[error("{what}: buffer of {len} bytes is too short (need {need})")]
    Short {
        what: &'static str,
        len: usize,
        need: usize,
    },
    #[error("{what}: invalid field {field}: {detail}")]
    Invalid {
        what: &'static str,
        field: &'static str,
        detail: String,
    },
}

/// CRC-32C of `data` seeded with the pool id.
pub fn crc_seeded(pool_id: &[u8; 16], data: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(pool_id), data)
}

/// CRC-32C of a block whose 4-byte crc field at `crc_at` is treated as zero.
pub fn crc_with_hole(pool_id: &[u8; 16], data: &[u8], crc_at: usize) -> u32 {
    let head = data.get(..crc_at).unwrap_or(data);
    let tail = data.get(crc_at + 4..).unwrap_or(&[]);
    let c = crc32c::crc32c_append(crc32c::crc32c(pool_id), head);
    let c = crc32c::crc32c_append(c, &[0u8; 4]);
    crc32c::crc32c_append(c, tail)
}

/// The common opening of every self-checking 4096-byte structure: the buffer holds a whole
/// block, `magic` is at offset 0, and the crc stored at `crc_at` matches the block's checksum
/// seeded with `seed`. The magic is checked first (a foreign block says "bad magic"), the
/// checksum before any other field is trusted. Returns the block.
pub fn open_block<'a>(
    buf: &'a [u8],
    what: &'static str,
    magic: &[u8],
    seed: &[u8; 16],
    crc_at: usize,
) -> Result<&'a [u8], FormatError> {
    let block = buf.get(..BLOCK).ok_or(FormatError::Short {
        what,
        len: buf.len(),
        need: BLOCK,
    })?;
    let found = block.get(..magic.len()).unwrap_or_default();
    if found != magic {
        let as_u64 = |b: &[u8]| b.iter().rev().fold(0u64, |a, &x| (a << 8) | u64::from(x));
        return Err(FormatError::BadMagic {
            what,
            found: as_u64(found),
            expected: as_u64(magic),
        });
    }
    let stored = Rd::at(block, crc_at, what).u32()?;
    let computed = crc_with_hole(seed, block, crc_at);
    if stored != computed {
        return Err(FormatError::BadChecksum {
            what,
            stored,
            computed,
        });
    }
    Ok(block)
}

/// Refuse a structure written by another format version.
pub fn check_version(found: u32, what: &'static str) -> Result<(), FormatError> {
    if found == FORMAT_VERSION {
        Ok(())
    } else {
        Err(FormatError::BadVersion { what, found })
    }
}

/// Checksum of a data block: CRC-32C seeded with the pool id.
pub fn data_crc(pool_id: &[u8; 16], block: &[u8]) -> u32 {
    crc_seeded(pool_id, block)
}

/// Little-endian reader over a byte slice that never panics.
pub struct Rd<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Rd<'a> {
    pub fn new(buf: &'a [u8], what: &'static str) -> Self {
        Rd { buf, pos: 0, what }
    }
    pub fn at(buf: &'a [u8], pos: usize, what: &'static str) -> Self {
        Rd { buf, pos, what }
    }
    pub fn pos(&self) -> usize {
        self.pos
    }
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
        let end = self.pos.checked_add(n).ok_or(FormatError::Short {
            what: self.what,
            len: self.buf.len(),
            need: usize::MAX,
        })?;
        let s = self.buf.get(self.pos..end).ok_or(FormatError::Short {
            what: self.what,
            len: self.buf.len(),
            need: end,
        })?;
        self.pos = end;
        Ok(s)
    }
    pub fn arr<const N: usize>(&mut self) -> Result<[u8; N], FormatError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.bytes(N)?);
        Ok(a)
    }
    pub fn u8(&mut self) -> Result<u8, FormatError> {
        Ok(self.arr::<1>()?[0])
    }
    pub fn u16(&mut self) -> Result<u16, FormatError> {
        Ok(u16::from_le_bytes(self.arr()?))
    }
    pub fn u32(&mut self) -> Result<u32, FormatError> {
        Ok(u32::from_le_bytes(self.arr()?))
    }
    pub fn u64(&mut self) -> Result<u64, FormatError> {
        Ok(u64::from_le_bytes(self.arr()?))
    }
    pub fn skip(&mut self, n: usize) -> Result<(), FormatError> {
        self.bytes(n).map(|_| ())
    }
}

/// Little-endian writer appending to a Vec.
#[derive(Default)]
pub struct Wr {
    pub buf: Vec<u8>,
}

impl Wr {
    pub fn with_capacity(n: usize) -> Self {
        Wr {
            buf: Vec::with_capacity(n),
        }
    }
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(b);
        self
    }
    pub fn zeros(&mut self, n: usize) -> &mut Self {
        self.buf.resize(self.buf.len() + n, 0);
        self
    }
    /// Pad with zeros up to `len` bytes total.
    pub fn pad_to(&mut self, len: usize) -> &mut Self {
        if self.buf.len() < len {
            self.buf.resize(len, 0);
        }
        self
    }
    /// Store a u32 at a fixed position (used for crc fields filled in last).
    pub fn put_u32_at(&mut self, at: usize, v: u32) {
        if let Some(s) = self.buf.get_mut(at..at + 4) {
            s.copy_from_slice(&v.to_le_bytes());
        }
    }
}

/// Fixed-size, NUL-padded UTF-8 name field.
pub fn encode_name(w: &mut Wr, name: &str, len: usize) {
    let b = name.as_bytes();
    let n = b.len().min(len);
    w.bytes(b.get(..n).unwrap_or_default()).zeros(len - n);
}

/// Decode a NUL-padded name field.
pub fn decode_name(raw: &[u8], what: &'static str) -> Result<String, FormatError> {
    let end = raw.iter().position(|&c| c == 0).unwrap_or(raw.len());
    std::str::from_utf8(raw.get(..end).unwrap_or_default())
        .map(str::to_owned)
        .map_err(|e| FormatError::Invalid {
            what,
            field: "name",
            detail: e.to_string(),
        })
}

/// Parse a hex string of the golden vectors (whitespace and `#` comments ignored).
#[cfg(test)]
pub fn hex_fixture(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        let digits: String = line.chars().filter(|c| c.is_ascii_hexdigit()).collect();
        for i in (0..digits.len()).step_by(2) {
            out.push(u8::from_str_radix(&digits[i..i + 2], 16).expect("hex"));
        }
    }
    out
}

#[cfg(test)]
mod seal_tests {
    use super::*;

    #[test]
    fn seal_prints_and_parses() {
        let s = Seal {
            writer: Writer {
                host_id: 0x1a2b_3c4d,
                incarnation: 7,
                fencing_epoch: 9,
            },
            journal_seq: 4242,
        };
        assert_eq!(s.to_string(), "1a2b3c4d:7:9:4242");
        assert_eq!("1a2b3c4d:7:9:4242".parse::<Seal>(), Ok(s));
        assert!("1a2b3c4d:7:9".parse::<Seal>().is_err());
        assert!("zz:7:9:1".parse::<Seal>().is_err());
        let mut w = Wr::default();
        s.encode(&mut w);
        assert_eq!(w.buf.len(), Seal::SIZE);
        assert_eq!(Seal::decode(&mut Rd::new(&w.buf, "seal")), Ok(Some(s)));
        assert_eq!(Seal::decode(&mut Rd::new(&[0; 24], "seal")), Ok(None));
    }
}
