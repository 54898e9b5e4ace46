//! The copy of the pool directory kept on every PV (`COMPAT_DIRCOPY`, FORMAT.md §3.10): the
//! directory-only configuration files (LU maps, clone origins, alerts) and whether the pool was
//! exported, so `sspctl pool import` can rebuild a lost or moved pool directory from the PVs.
//!
//! A record is a 64-byte header followed by its files; two slots of [`SLOT_BYTES`] at the end
//! of the PV's header area (just below `data_offset`), generation `g` in slot `g % 2`.

#![cfg_attr(
    not(test),
    deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)
)]

use super::{check_version, crc_with_hole, FormatError, Rd, Wr, FORMAT_VERSION};

/// `SSPDIRC1`.
pub const DIRCOPY_MAGIC: u64 = u64::from_le_bytes(*b"SSPDIRC1");
/// Bytes of one slot; a record never exceeds it.
pub const SLOT_BYTES: u64 = 256 << 10;
/// Header bytes before the files.
pub const HEADER_BYTES: usize = 64;
const CRC_AT: usize = 12;
/// `flags` bit 0: written by `pool export` (closed cleanly for another host to import).
pub const FLAG_EXPORTED: u32 = 1;
/// At most this many files in a record.
pub const MAX_FILES: u32 = 64;
const WHAT: &str = "pool directory copy";

/// Byte offsets of slot 0 and slot 1 on a PV with this geometry, or `None` when the gap
/// between the journal ring and the data area is too small to hold them.
pub fn slot_offsets(
    journal_offset: u64,
    journal_blocks: u64,
    data_offset: u64,
) -> Option<[u64; 2]> {
    let journal_end = journal_offset.checked_add(journal_blocks.checked_mul(4096)?)?;
    let first = data_offset.checked_sub(2 * SLOT_BYTES)?;
    (first >= journal_end).then_some([first, first + SLOT_BYTES])
}

/// One record.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct DirCopy {
    /// Bumped with every record written; the valid slot with the higher one wins.
    pub generation: u64,
    pub flags: u32,
    /// (file name in the pool directory, its bytes), in name order.
    pub files: Vec<(String, Vec<u8>)>,
}

impl DirCopy {
    pub fn exported(&self) -> bool {
        self.flags & FLAG_EXPORTED != 0
    }

    /// The record's bytes (header and files), or an error when it would not fit a slot.
    pub fn encode(&self, pool_id: &[u8; 16]) -> Result<Vec<u8>, FormatError> {
        let mut body = Wr::with_capacity(1024);
        for (name, data) in &self.files {
            let n = u16::try_from(name.len()).map_err(|_| invalid("name", "too long"))?;
            let d = u32::try_from(data.len()).map_err(|_| invalid("data_len", "too long"))?;
            body.u16(n).bytes(name.as_bytes()).u32(d).bytes(data);
        }
        let body = body.buf;
        let count =
            u32::try_from(self.files.len()).map_err(|_| invalid("count", "too many files"))?;
        if count > MAX_FILES || (HEADER_BYTES + body.len()) as u64 > SLOT_BYTES {
            return Err(invalid(
                "payload_len",
                &format!(
                    "{} files of {} bytes do not fit the {} KiB slot",
                    count,
                    body.len(),
                    SLOT_BYTES >> 10
                ),
            ));
        }
        let mut w = Wr::with_capacity(HEADER_BYTES + body.len());
        w.u64(DIRCOPY_MAGIC)
            .u32(FORMAT_VERSION)
            .u32(0)
            .u64(self.generation)
            .u32(self.flags)
            .u32(count)
            .u64(body.len() as u64)
            .pad_to(HEADER_BYTES)
            .bytes(&body);
        let mut out = w.buf;
        let crc = crc_with_hole(pool_id, &out, CRC_AT);
        if let Some(s) = out.get_mut(CRC_AT..CRC_AT + 4) {
            s.copy_from_slice(&crc.to_le_bytes());
        }
        Ok(out)
    }

    /// The payload length a header announces (to read the rest of a slot), checked against
    /// the slot size.
    pub fn payload_len(header: &[u8]) -> Result<usize, FormatError> {
        let mut r = Rd::new(header, WHAT);
        if r.u64()? != DIRCOPY_MAGIC {
            return Err(invalid("magic", "no pool directory copy here"));
        }
        r.skip(24)?;
        let len = r.u64()?;
        if len > SLOT_BYTES - HEADER_BYTES as u64 {
            return Err(invalid("payload_len", &format!("{len} is past the slot")));
        }
        Ok(len as usize)
    }

    /// Decode a record from a slot's bytes (at least the header and its payload).
    pub fn decode(buf: &[u8], pool_id: &[u8; 16]) -> Result<DirCopy, FormatError> {
        let len = Self::payload_len(buf)?;
        let rec = buf.get(..HEADER_BYTES + len).ok_or(FormatError::Short {
            what: WHAT,
            len: buf.len(),
            need: HEADER_BYTES + len,
        })?;
        let mut r = Rd::new(rec, WHAT);
        r.u64()?;
        let version = r.u32()?;
        let stored = r.u32()?;
        let computed = crc_with_hole(pool_id, rec, CRC_AT);
        if stored != computed {
            return Err(FormatError::BadChecksum {
                what: WHAT,
                stored,
                computed,
            });
        }
        check_version(version, WHAT)?;
        let generation = r.u64()?;
        let flags = r.u32()?;
        let count = r.u32()?;
        if count > MAX_FILES {
            return Err(invalid("count", &format!("{count} files")));
        }
        r.u64()?;
        r.skip(HEADER_BYTES - 40)?;
        let mut files = Vec::new();
        for _ in 0..count {
            let n = usize::from(r.u16()?);
            let name = std::str::from_utf8(r.bytes(n)?)
                .map_err(|_| invalid("name", "not UTF-8"))?
                .to_owned();
            if name.is_empty() || name.contains('/') || name.starts_with('.') {
                return Err(invalid(
                    "name",
                    &format!("{name:?} is not a plain file name"),
                ));
            }
            let d = r.u32()? as usize;
            files.push((name, r.bytes(d)?.to_vec()));
        }
        if r.pos() != rec.len() {
            return Err(invalid("payload_len", "bytes left after the last file"));
        }
        Ok(DirCopy {
            generation,
            flags,
            files,
        })
    }
}

fn invalid(field: &'static str, detail: &str) -> FormatError {
    FormatError::Invalid {
        what: WHAT,
        field,
        detail: detail.to_owned(),
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;

    pub fn sample() -> DirCopy {
        DirCopy {
            generation: 7,
            flags: FLAG_EXPORTED,
            files: vec![
                ("alerts.json".into(), b"{}\n".to_vec()),
                ("lu-maps.json".into(), b"{\"vm1\":[\"uid:0\"]}\n".to_vec()),
            ],
        }
    }

    #[test]
    fn golden_vector_round_trip() {
        let pool = *b"pool-id-0123456\0";
        let golden = include_bytes!("../../ondisk-format/vectors/dircopy.bin");
        #[rustfmt::skip]
        let header: &[u8] = &[
            b'S', b'S', b'P', b'D', b'I', b'R', b'C', b'1', // magic
            1, 0, 0, 0,                                     // version
        ];
        assert_eq!(&golden[..12], header);
        assert_eq!(&golden[16..24], &7u64.to_le_bytes()); // generation
        assert_eq!(&golden[24..28], &1u32.to_le_bytes()); // flags: EXPORTED
        assert_eq!(&golden[28..32], &2u32.to_le_bytes()); // count
        assert_eq!(&golden[64..66], &11u16.to_le_bytes()); // first name's length
        assert_eq!(&golden[66..77], b"alerts.json");
        let d = DirCopy::decode(golden, &pool).expect("golden record decodes");
        assert_eq!(d, sample());
        assert_eq!(d.encode(&pool).unwrap().as_slice(), &golden[..]);
        // Another pool's seed, a flipped byte, a cut: refused.
        assert!(DirCopy::decode(golden, &[0; 16]).is_err());
        let mut bad = golden.to_vec();
        bad[70] ^= 1;
        assert!(matches!(
            DirCopy::decode(&bad, &pool),
            Err(FormatError::BadChecksum { .. })
        ));
        assert!(DirCopy::decode(&golden[..golden.len() - 1], &pool).is_err());
    }

    #[test]
    fn damaged_records_are_refused_without_panicking() {
        let pool = *b"pool-id-0123456\0";
        let golden = include_bytes!("../../ondisk-format/vectors/dircopy.bin");
        for n in 0..golden.len() {
            assert!(DirCopy::decode(&golden[..n], &pool).is_err(), "prefix {n}");
        }
        for i in 0..golden.len() {
            let mut b = golden.to_vec();
            b[i] ^= 0x80;
            assert!(DirCopy::decode(&b, &pool).is_err(), "flip at {i}");
        }
        // A huge announced length is refused before anything is read or allocated.
        let mut b = golden.to_vec();
        b[32..40].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(DirCopy::payload_len(&b).is_err());
    }

    #[test]
    fn too_big_and_geometry() {
        let d = DirCopy {
            files: vec![("x".into(), vec![0; SLOT_BYTES as usize])],
            ..DirCopy::default()
        };
        assert!(d.encode(&[0; 16]).is_err());
        // Default geometry: 16 KiB + 16 MiB of journal, data at 17 MiB.
        assert_eq!(
            slot_offsets(16384, 4096, 17 << 20),
            Some([(17 << 20) - (512 << 10), (17 << 20) - (256 << 10)])
        );
        // A ring that ends at the data area leaves no room.
        assert_eq!(slot_offsets(16384, 252, 1 << 20), None);
    }

    #[test]
    #[ignore = "writes the golden vector; run by hand when the format changes"]
    fn regenerate_dircopy_vector() {
        if std::env::var_os("SSP_WRITE_VECTORS").is_none() {
            return;
        }
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("ondisk-format/vectors");
        std::fs::write(
            dir.join("dircopy.bin"),
            sample().encode(b"pool-id-0123456\0").unwrap(),
        )
        .unwrap();
    }
}
