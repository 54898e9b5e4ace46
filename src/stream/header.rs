//! The stream header: who is sent (pool, volume, snapshot identity), from which base, and
//! where a resumed stream starts. Layout in `ondisk-format/STREAM.md` § Header.

use super::{check_crc, invalid, Rd, StreamError, STREAM_BLOCK, STREAM_VERSION};

/// "SSPSEND" and a NUL.
pub const MAGIC: [u8; 8] = *b"SSPSEND\0";
/// Bytes before the two names.
pub const FIXED: usize = 120;
/// Longest volume name a header carries.
pub const MAX_NAME: usize = 255;
/// Flag: incremental (a base is named; extents are the changes since it).
pub const FLAG_INCREMENTAL: u32 = 1;
/// Flag: resumed (extents start at `resume_offset`, earlier ones were sent before).
pub const FLAG_RESUMED: u32 = 2;
/// Flags this code understands; a header with any other bit set is refused.
pub const KNOWN_FLAGS: u32 = FLAG_INCREMENTAL | FLAG_RESUMED;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub flags: u32,
    /// Size in bytes of the sent snapshot.
    pub volume_size: u64,
    /// The sending pool's id.
    pub pool_id: [u8; 16],
    /// The sent snapshot's volume id in the sending pool.
    pub volume_id: u64,
    /// The sent snapshot's UDID (kept by the receiver's copy of it).
    pub snap_udid: [u8; 16],
    /// UDID of the base snapshot (all zero for a full stream).
    pub base_udid: [u8; 16],
    /// Size of the base snapshot (0 for a full stream).
    pub base_size: u64,
    /// First byte offset the extents cover (0 unless resumed).
    pub resume_offset: u64,
    /// Unix seconds when the stream was made.
    pub created: u64,
    /// The sent snapshot's name, `LU@SNAP`.
    pub snap_name: String,
    /// The base snapshot's name (empty for a full stream).
    pub base_name: String,
}

impl Header {
    pub fn incremental(&self) -> bool {
        self.flags & FLAG_INCREMENTAL != 0
    }

    pub fn resumed(&self) -> bool {
        self.flags & FLAG_RESUMED != 0
    }

    /// Encoded length.
    pub fn len(&self) -> usize {
        FIXED + self.snap_name.len().min(MAX_NAME) + self.base_name.len().min(MAX_NAME) + 4
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn encode(&self) -> Vec<u8> {
        let sn = self.snap_name.as_bytes();
        let sn = sn.get(..sn.len().min(MAX_NAME)).unwrap_or_default();
        let bn = self.base_name.as_bytes();
        let bn = bn.get(..bn.len().min(MAX_NAME)).unwrap_or_default();
        let total = FIXED + sn.len() + bn.len() + 4;
        let mut b = Vec::with_capacity(total);
        b.extend_from_slice(&MAGIC);
        b.extend_from_slice(&STREAM_VERSION.to_le_bytes());
        b.extend_from_slice(&u16::try_from(total).unwrap_or(u16::MAX).to_le_bytes());
        b.extend_from_slice(&self.flags.to_le_bytes());
        b.extend_from_slice(&STREAM_BLOCK.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&self.volume_size.to_le_bytes());
        b.extend_from_slice(&self.pool_id);
        b.extend_from_slice(&self.volume_id.to_le_bytes());
        b.extend_from_slice(&self.snap_udid);
        b.extend_from_slice(&self.base_udid);
        b.extend_from_slice(&self.base_size.to_le_bytes());
        b.extend_from_slice(&self.resume_offset.to_le_bytes());
        b.extend_from_slice(&self.created.to_le_bytes());
        b.push(sn.len() as u8);
        b.push(bn.len() as u8);
        b.extend_from_slice(&[0u8; 6]);
        debug_assert_eq!(b.len(), FIXED);
        b.extend_from_slice(sn);
        b.extend_from_slice(bn);
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    /// The header's total length from its first [`FIXED`] bytes (to know how much to read).
    pub fn peek_len(fixed: &[u8]) -> Result<usize, StreamError> {
        let mut r = Rd::new(fixed, "header");
        if r.arr::<8>()? != MAGIC {
            return Err(StreamError::Magic);
        }
        let v = r.u16()?;
        if v != STREAM_VERSION {
            return Err(StreamError::Version(v));
        }
        let len = usize::from(r.u16()?);
        if !(FIXED + 4..=FIXED + 2 * MAX_NAME + 4).contains(&len) {
            return Err(invalid("header", format!("length {len}")));
        }
        Ok(len)
    }

    pub fn decode(buf: &[u8]) -> Result<Header, StreamError> {
        let total = Self::peek_len(buf)?;
        let all = buf.get(..total).ok_or(StreamError::Short {
            what: "header",
            need: total,
            have: buf.len(),
        })?;
        let (body, crc) = all.split_at(total - 4);
        let stored = Rd::new(crc, "header").u32()?;
        check_crc("header", body, stored)?;
        let mut r = Rd::new(body, "header");
        r.bytes(12)?;
        let flags = r.u32()?;
        if flags & !KNOWN_FLAGS != 0 {
            return Err(invalid("header", format!("unknown flags {flags:#x}")));
        }
        let block = r.u32()?;
        if block != STREAM_BLOCK {
            return Err(invalid(
                "header",
                format!("block size {block}, expected {STREAM_BLOCK}"),
            ));
        }
        r.u32()?;
        let volume_size = r.u64()?;
        let pool_id = r.arr()?;
        let volume_id = r.u64()?;
        let snap_udid = r.arr()?;
        let base_udid = r.arr()?;
        let base_size = r.u64()?;
        let resume_offset = r.u64()?;
        let created = r.u64()?;
        let sl = usize::from(r.u8()?);
        let bl = usize::from(r.u8()?);
        r.bytes(6)?;
        if FIXED + sl + bl + 4 != total {
            return Err(invalid(
                "header",
                "name lengths do not add up to the header length",
            ));
        }
        let name = |b: &[u8]| {
            String::from_utf8(b.to_vec()).map_err(|_| invalid("header", "a name is not UTF-8"))
        };
        let snap_name = name(r.bytes(sl)?)?;
        let base_name = name(r.bytes(bl)?)?;
        let h = Header {
            flags,
            volume_size,
            pool_id,
            volume_id,
            snap_udid,
            base_udid,
            base_size,
            resume_offset,
            created,
            snap_name,
            base_name,
        };
        if h.volume_size == 0 {
            return Err(invalid("header", "volume size 0"));
        }
        if h.incremental() == (h.base_udid == [0; 16]) {
            return Err(invalid(
                "header",
                "the incremental flag and the base identity disagree",
            ));
        }
        if h.resume_offset > h.volume_size || (!h.resumed() && h.resume_offset != 0) {
            return Err(invalid(
                "header",
                format!("resume offset {}", h.resume_offset),
            ));
        }
        Ok(h)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn sample() -> Header {
        Header {
            flags: FLAG_INCREMENTAL,
            volume_size: 64 << 20,
            pool_id: *b"pool-id-0123456\0",
            volume_id: 7,
            snap_udid: [0x11; 16],
            base_udid: [0x22; 16],
            base_size: 32 << 20,
            resume_offset: 0,
            created: 1_700_000_000,
            snap_name: "vm1@s2".into(),
            base_name: "vm1@s1".into(),
        }
    }

    #[test]
    fn round_trip_and_every_flipped_byte_is_refused() {
        let h = sample();
        let b = h.encode();
        assert_eq!(b.len(), h.len());
        assert_eq!(Header::decode(&b).unwrap(), h);
        for i in 0..b.len() {
            let mut c = b.clone();
            c[i] ^= 0x40;
            assert!(Header::decode(&c).is_err(), "byte {i}");
        }
        for n in 0..b.len() {
            assert!(Header::decode(&b[..n]).is_err(), "prefix {n}");
        }
    }
}
