//! A client's bytes through sspd's NBD handshake and transmission codec (`ssp::fuzzing::nbd_stream`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ssp::fuzzing::nbd_stream(data));
