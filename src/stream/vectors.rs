//! Golden stream bytes in `ondisk-format/vectors/stream*.bin`: decoding them gives the sample
//! records, encoding the samples gives the same bytes. Regenerate (only with a version bump):
//! `SSP_WRITE_VECTORS=1 cargo test --lib stream::vectors -- --ignored`.

use super::{end, extent, header, token, End, Extent, Header, ResumeToken};

fn dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("ondisk-format/vectors")
}

/// A whole sample stream: header, the sample extents, an end record with the real totals.
fn sample_stream() -> Vec<u8> {
    let mut b = header::tests::sample().encode();
    let mut e = End::default();
    for x in extent::tests::samples() {
        b.extend_from_slice(&x.encode());
        e.records += 1;
        match x.kind {
            super::ExtentKind::Data => e.data_bytes += x.length,
            super::ExtentKind::Zero => e.zero_bytes += x.length,
            super::ExtentKind::Hole => e.hole_bytes += x.length,
        }
    }
    e.stream_crc = crc32c::crc32c(&b);
    b.extend_from_slice(&e.encode());
    b
}

#[test]
#[ignore = "writes files; run by hand when the stream format version changes"]
fn regenerate_stream_vectors() {
    if std::env::var_os("SSP_WRITE_VECTORS").is_none() {
        return;
    }
    let put = |n: &str, b: Vec<u8>| std::fs::write(dir().join(n), b).unwrap();
    put("stream-header.bin", header::tests::sample().encode());
    let mut ex = Vec::new();
    for x in extent::tests::samples() {
        ex.extend_from_slice(&x.encode());
    }
    put("stream-extents.bin", ex);
    put("stream-end.bin", end::tests::sample().encode());
    put("stream-token.bin", token::tests::sample().encode());
    put("stream.bin", sample_stream());
    let mut c = sample_stream();
    // The first data byte ("s" of "ssp-data") of the first extent record, flipped.
    c[header::tests::sample().len() + extent::HEAD] ^= 0x01;
    put("stream-corrupt.bin", c);
}

#[test]
fn golden_header() {
    let b = std::fs::read(dir().join("stream-header.bin")).unwrap();
    // magic "SSPSEND\0", version 1, length 136, flags 1 (incremental), block 4096, reserved
    assert_eq!(&b[..8], b"SSPSEND\0");
    assert_eq!(&b[8..12], &[1, 0, 136, 0]);
    assert_eq!(&b[12..20], &[1, 0, 0, 0, 0, 0x10, 0, 0]);
    // volume size 64 MiB
    assert_eq!(u64::from_le_bytes(b[24..32].try_into().unwrap()), 64 << 20);
    // pool id, volume id 7, snapshot UDID 0x11.., base UDID 0x22..
    assert_eq!(&b[32..48], b"pool-id-0123456\0");
    assert_eq!(u64::from_le_bytes(b[48..56].try_into().unwrap()), 7);
    assert_eq!(&b[56..72], &[0x11; 16]);
    assert_eq!(&b[72..88], &[0x22; 16]);
    // name lengths 6 and 6, then "vm1@s2" "vm1@s1"
    assert_eq!(&b[112..114], &[6, 6]);
    assert_eq!(&b[120..132], b"vm1@s2vm1@s1");
    let h = Header::decode(&b).unwrap();
    assert_eq!(h, header::tests::sample());
    assert_eq!(h.encode(), b);
}

#[test]
fn golden_extents_end_token() {
    let b = std::fs::read(dir().join("stream-extents.bin")).unwrap();
    // data record: type 1, 7 reserved, offset 4096, length 8, "ssp-data", crc
    assert_eq!(b[0], 1);
    assert_eq!(u64::from_le_bytes(b[8..16].try_into().unwrap()), 4096);
    assert_eq!(&b[24..32], b"ssp-data");
    let mut at = 0;
    for want in extent::tests::samples() {
        let n = Extent::record_len(&b[at..]).unwrap();
        assert_eq!(Extent::decode(&b[at..at + n]).unwrap(), want);
        assert_eq!(want.encode(), &b[at..at + n]);
        at += n;
    }
    assert_eq!(at, b.len());
    let e = std::fs::read(dir().join("stream-end.bin")).unwrap();
    // type 0xff, 7 reserved, records 3, data 8, zero 65536, hole 4096, stream crc, crc
    assert_eq!(e[0], 0xff);
    assert_eq!(End::decode(&e).unwrap(), end::tests::sample());
    assert_eq!(end::tests::sample().encode(), e);
    let t = std::fs::read(dir().join("stream-token.bin")).unwrap();
    assert_eq!(ResumeToken::decode(&t).unwrap(), token::tests::sample());
    assert_eq!(token::tests::sample().encode(), t);
}

#[test]
fn golden_stream_and_its_corrupt_copy() {
    let b = std::fs::read(dir().join("stream.bin")).unwrap();
    assert_eq!(b, sample_stream());
    let h = Header::decode(&b).unwrap();
    let mut at = h.len();
    let mut seen = End::default();
    while b[at] != end::TYPE_END {
        let n = Extent::record_len(&b[at..]).unwrap();
        let x = Extent::decode(&b[at..at + n]).unwrap();
        seen.records += 1;
        match x.kind {
            super::ExtentKind::Data => seen.data_bytes += x.length,
            super::ExtentKind::Zero => seen.zero_bytes += x.length,
            super::ExtentKind::Hole => seen.hole_bytes += x.length,
        }
        at += n;
    }
    seen.stream_crc = crc32c::crc32c(&b[..at]);
    let e = End::decode(&b[at..]).unwrap();
    e.check_totals(&seen).unwrap();
    // The committed corrupt copy (one payload byte flipped) fails its record's crc.
    let c = std::fs::read(dir().join("stream-corrupt.bin")).unwrap();
    assert_eq!(c.len(), b.len());
    let at = h.len();
    let n = Extent::record_len(&c[at..]).unwrap();
    assert!(matches!(
        Extent::decode(&c[at..at + n]),
        Err(super::StreamError::Crc { .. })
    ));
}
