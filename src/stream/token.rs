//! The resume token: which stream a partial receive belongs to and where it stopped. The
//! receiver prints and stores it; `sspctl send -t TOKEN` restarts the stream there. Text form:
//! lowercase hex of the bytes in `ondisk-format/STREAM.md` § Resume token.

use super::{check_crc, invalid, Rd, StreamError};

pub const TOKEN_VERSION: u8 = 1;
/// Encoded length in bytes (twice that in hex digits).
pub const LEN: usize = 1 + 8 + 16 + 16 + 4;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResumeToken {
    /// Byte offset of the volume from which the stream is to be sent again.
    pub offset: u64,
    /// UDID of the snapshot being received.
    pub snap_udid: [u8; 16],
    /// UDID of the stream's base (all zero for a full stream).
    pub base_udid: [u8; 16],
}

impl ResumeToken {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(LEN);
        b.push(TOKEN_VERSION);
        b.extend_from_slice(&self.offset.to_le_bytes());
        b.extend_from_slice(&self.snap_udid);
        b.extend_from_slice(&self.base_udid);
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(buf: &[u8]) -> Result<ResumeToken, StreamError> {
        if buf.len() != LEN {
            return Err(invalid(
                "resume token",
                format!("{} bytes, expected {LEN}", buf.len()),
            ));
        }
        let mut r = Rd::new(buf, "resume token");
        let covered = r.bytes(LEN - 4)?;
        check_crc("resume token", covered, r.u32()?)?;
        let mut r = Rd::new(covered, "resume token");
        let v = r.u8()?;
        if v != TOKEN_VERSION {
            return Err(invalid("resume token", format!("version {v}")));
        }
        Ok(ResumeToken {
            offset: r.u64()?,
            snap_udid: r.arr()?,
            base_udid: r.arr()?,
        })
    }

    pub fn to_text(&self) -> String {
        self.encode().iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn from_text(s: &str) -> Result<ResumeToken, StreamError> {
        let s = s.trim();
        if s.len() % 2 != 0 || !s.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(invalid("resume token", "not a hex string"));
        }
        let bytes: Vec<u8> = (0..s.len() / 2)
            .filter_map(|i| s.get(2 * i..2 * i + 2))
            .filter_map(|h| u8::from_str_radix(h, 16).ok())
            .collect();
        Self::decode(&bytes)
    }
}

impl std::str::FromStr for ResumeToken {
    type Err = StreamError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_text(s)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn sample() -> ResumeToken {
        ResumeToken {
            offset: 3 << 20,
            snap_udid: [0x11; 16],
            base_udid: [0x22; 16],
        }
    }

    #[test]
    fn text_round_trip_and_typos() {
        let t = sample();
        let s = t.to_text();
        assert_eq!(s.len(), 2 * LEN);
        assert_eq!(ResumeToken::from_text(&s).unwrap(), t);
        let mut bad = s.clone().into_bytes();
        bad[5] = if bad[5] == b'0' { b'1' } else { b'0' };
        assert!(ResumeToken::from_text(std::str::from_utf8(&bad).unwrap()).is_err());
        assert!(ResumeToken::from_text(&s[..s.len() - 2]).is_err());
        assert!(ResumeToken::from_text("zz").is_err());
    }
}
