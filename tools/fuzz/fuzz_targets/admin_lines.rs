//! Admin socket request lines, decoded and run on an in-memory pool (`ssp::fuzzing::admin_lines`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ssp::fuzzing::admin_lines(data));
