//! The end record: totals and a crc32c over every stream byte before it, so a stream cut
//! short, reordered or spliced is refused. Layout in `ondisk-format/STREAM.md` § End record.

use super::{check_crc, invalid, Rd, StreamError};

/// Type byte of the end record (extent types are 1..=3).
pub const TYPE_END: u8 = 0xff;
/// Encoded length.
pub const LEN: usize = 48;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct End {
    /// Extent records in the stream.
    pub records: u64,
    /// Bytes of data records.
    pub data_bytes: u64,
    /// Bytes covered by zero records.
    pub zero_bytes: u64,
    /// Bytes covered by hole records.
    pub hole_bytes: u64,
    /// crc32c of every stream byte before this record (header included).
    pub stream_crc: u32,
}

impl End {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(LEN);
        b.push(TYPE_END);
        b.extend_from_slice(&[0u8; 7]);
        b.extend_from_slice(&self.records.to_le_bytes());
        b.extend_from_slice(&self.data_bytes.to_le_bytes());
        b.extend_from_slice(&self.zero_bytes.to_le_bytes());
        b.extend_from_slice(&self.hole_bytes.to_le_bytes());
        b.extend_from_slice(&self.stream_crc.to_le_bytes());
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(buf: &[u8]) -> Result<End, StreamError> {
        let mut r = Rd::new(buf, "end record");
        let covered = r.bytes(LEN - 4)?;
        let stored = r.u32()?;
        check_crc("end record", covered, stored)?;
        let mut r = Rd::new(covered, "end record");
        if r.u8()? != TYPE_END {
            return Err(invalid("end record", "wrong type"));
        }
        if r.bytes(7)?.iter().any(|&x| x != 0) {
            return Err(invalid("end record", "reserved bytes are not zero"));
        }
        Ok(End {
            records: r.u64()?,
            data_bytes: r.u64()?,
            zero_bytes: r.u64()?,
            hole_bytes: r.u64()?,
            stream_crc: r.u32()?,
        })
    }

    /// Whether the totals a receiver counted match these.
    pub fn check_totals(&self, seen: &End) -> Result<(), StreamError> {
        if (
            self.records,
            self.data_bytes,
            self.zero_bytes,
            self.hole_bytes,
        ) != (
            seen.records,
            seen.data_bytes,
            seen.zero_bytes,
            seen.hole_bytes,
        ) {
            return Err(invalid(
                "end record",
                format!(
                    "totals differ from the stream: the end record says {} records ({} data, {} zero, {} hole bytes), the stream held {} ({} data, {} zero, {} hole bytes)",
                    self.records, self.data_bytes, self.zero_bytes, self.hole_bytes,
                    seen.records, seen.data_bytes, seen.zero_bytes, seen.hole_bytes
                ),
            ));
        }
        if self.stream_crc != seen.stream_crc {
            return Err(StreamError::Crc {
                what: "stream",
                stored: self.stream_crc,
                computed: seen.stream_crc,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn sample() -> End {
        End {
            records: 3,
            data_bytes: 8,
            zero_bytes: 65536,
            hole_bytes: 4096,
            stream_crc: 0x1234_5678,
        }
    }

    #[test]
    fn round_trip_and_corruption() {
        let e = sample();
        let b = e.encode();
        assert_eq!(b.len(), LEN);
        assert_eq!(End::decode(&b).unwrap(), e);
        for i in 0..b.len() {
            let mut c = b.clone();
            c[i] ^= 0x80;
            assert!(End::decode(&c).is_err(), "byte {i}");
        }
        let mut seen = e.clone();
        seen.stream_crc ^= 1;
        assert!(e.check_totals(&seen).is_err());
        assert!(e.check_totals(&e).is_ok());
    }
}
