//! Big-endian ("network byte order", proto.md "Conventions") helpers.
//!
//! The crate denies `clippy::big_endian_bytes` because every on-disk integer is little-endian;
//! NBD is the one place where big-endian is correct, so the allowance is confined to this file.
#![allow(clippy::big_endian_bytes)]

pub(crate) fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}

pub(crate) fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

pub(crate) fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// A bounds-checked cursor over a byte slice: every read returns `None` instead of panicking.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.buf.len() {
            return None;
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Some(head)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.bytes(N).and_then(|b| b.try_into().ok())
    }

    pub(crate) fn u16(&mut self) -> Option<u16> {
        self.array().map(u16::from_be_bytes)
    }

    pub(crate) fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_be_bytes)
    }

    pub(crate) fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_be_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_and_read_back() {
        let mut v = Vec::new();
        put_u16(&mut v, 0x0102);
        put_u32(&mut v, 0x0304_0506);
        put_u64(&mut v, 0x0708_090a_0b0c_0d0e);
        assert_eq!(v, (1u8..=14).collect::<Vec<u8>>());
        let mut r = Reader::new(&v);
        assert_eq!(r.u16(), Some(0x0102));
        assert_eq!(r.u32(), Some(0x0304_0506));
        assert_eq!(r.u64(), Some(0x0708_090a_0b0c_0d0e));
        assert!(r.is_empty());
        assert_eq!(r.u16(), None);
    }

    #[test]
    fn short_reads_do_not_consume() {
        let mut r = Reader::new(&[1, 2, 3]);
        assert_eq!(r.u32(), None);
        assert_eq!(r.bytes(3), Some(&[1u8, 2, 3][..]));
        assert_eq!(r.bytes(1), None);
    }
}
