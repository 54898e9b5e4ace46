//! An extent record: a byte range of the volume and what it holds (data, which follows, reads
//! as zeroes while allocated, or a hole). Layout in `ondisk-format/STREAM.md` § Extent record.

use super::{check_crc, invalid, Rd, StreamError, MAX_DATA};

/// Bytes before the payload.
pub const HEAD: usize = 24;
/// Type byte of each kind.
pub const TYPE_DATA: u8 = 1;
pub const TYPE_ZERO: u8 = 2;
pub const TYPE_HOLE: u8 = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExtentKind {
    /// `length` bytes of data follow.
    Data,
    /// Allocated, reads as zeroes (no payload).
    Zero,
    /// Unmapped (no payload): the receiver discards what its base held there.
    Hole,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Extent {
    pub kind: ExtentKind,
    pub offset: u64,
    pub length: u64,
    /// The data (empty unless `Data`).
    pub data: Vec<u8>,
}

impl Extent {
    /// Encoded length: head, payload, crc.
    pub fn encoded_len(&self) -> usize {
        HEAD + self.data.len() + 4
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(self.encoded_len());
        Self::encode_parts(self.kind, self.offset, self.length, &self.data, &mut b);
        b
    }

    /// Encode without owning the payload (the sender's path).
    pub fn encode_parts(kind: ExtentKind, offset: u64, length: u64, data: &[u8], b: &mut Vec<u8>) {
        let start = b.len();
        b.push(match kind {
            ExtentKind::Data => TYPE_DATA,
            ExtentKind::Zero => TYPE_ZERO,
            ExtentKind::Hole => TYPE_HOLE,
        });
        b.extend_from_slice(&[0u8; 7]);
        b.extend_from_slice(&offset.to_le_bytes());
        b.extend_from_slice(&length.to_le_bytes());
        b.extend_from_slice(data);
        let crc = crc32c::crc32c(b.get(start..).unwrap_or_default());
        b.extend_from_slice(&crc.to_le_bytes());
    }

    /// Decode the head ([`HEAD`] bytes): kind, offset, length; tells how many payload bytes
    /// (then 4 crc bytes) follow.
    pub fn decode_head(head: &[u8]) -> Result<(ExtentKind, u64, u64), StreamError> {
        let mut r = Rd::new(head, "extent record");
        let kind = match r.u8()? {
            TYPE_DATA => ExtentKind::Data,
            TYPE_ZERO => ExtentKind::Zero,
            TYPE_HOLE => ExtentKind::Hole,
            t => return Err(invalid("extent record", format!("type {t}"))),
        };
        if r.bytes(7)?.iter().any(|&x| x != 0) {
            return Err(invalid("extent record", "reserved bytes are not zero"));
        }
        let offset = r.u64()?;
        let length = r.u64()?;
        if length == 0 || offset.checked_add(length).is_none() {
            return Err(invalid("extent record", format!("range {offset}+{length}")));
        }
        if kind == ExtentKind::Data && length > MAX_DATA {
            return Err(invalid(
                "extent record",
                format!("data length {length} is over the {MAX_DATA}-byte limit"),
            ));
        }
        Ok((kind, offset, length))
    }

    /// Payload bytes that follow a head of this kind and length.
    pub fn payload_len(kind: ExtentKind, length: u64) -> usize {
        match kind {
            ExtentKind::Data => usize::try_from(length).unwrap_or(usize::MAX),
            _ => 0,
        }
    }

    /// Decode a whole record (head, payload, crc).
    pub fn decode(buf: &[u8]) -> Result<Extent, StreamError> {
        let head = buf.get(..HEAD).ok_or(StreamError::Short {
            what: "extent record",
            need: HEAD,
            have: buf.len(),
        })?;
        let (kind, offset, length) = Self::decode_head(head)?;
        let n = HEAD + Self::payload_len(kind, length);
        let mut r = Rd::new(buf, "extent record");
        let covered = r.bytes(n)?;
        let stored = r.u32()?;
        check_crc("extent record", covered, stored)?;
        Ok(Extent {
            kind,
            offset,
            length,
            data: covered.get(HEAD..).unwrap_or_default().to_vec(),
        })
    }

    /// Check a record read in parts: `covered` is its head and payload.
    pub fn verify(covered: &[u8], stored: u32) -> Result<(), StreamError> {
        check_crc("extent record", covered, stored)
    }

    /// Length of a record decoded from `buf` (for walking a buffer of records).
    pub fn record_len(buf: &[u8]) -> Result<usize, StreamError> {
        let mut r = Rd::new(buf, "extent record");
        let head = r.bytes(HEAD)?;
        let (kind, _, length) = Self::decode_head(head)?;
        Ok(r.pos() + Self::payload_len(kind, length) + 4)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn samples() -> Vec<Extent> {
        vec![
            Extent {
                kind: ExtentKind::Data,
                offset: 4096,
                length: 8,
                data: b"ssp-data".to_vec(),
            },
            Extent {
                kind: ExtentKind::Zero,
                offset: 1 << 20,
                length: 65536,
                data: vec![],
            },
            Extent {
                kind: ExtentKind::Hole,
                offset: 2 << 20,
                length: 4096,
                data: vec![],
            },
        ]
    }

    #[test]
    fn round_trip_and_corruption() {
        for e in samples() {
            let b = e.encode();
            assert_eq!(b.len(), e.encoded_len());
            assert_eq!(Extent::record_len(&b).unwrap(), b.len());
            assert_eq!(Extent::decode(&b).unwrap(), e);
            for i in 0..b.len() {
                let mut c = b.clone();
                c[i] ^= 1;
                assert!(Extent::decode(&c).is_err(), "{e:?} byte {i}");
            }
            assert!(Extent::decode(&b[..b.len() - 1]).is_err());
        }
    }

    #[test]
    fn oversized_data_is_refused_before_reading_it() {
        let mut b = Vec::new();
        Extent::encode_parts(ExtentKind::Data, 0, MAX_DATA + 1, &[], &mut b);
        assert!(matches!(
            Extent::decode_head(&b[..HEAD]),
            Err(StreamError::Invalid { .. })
        ));
    }
}
