//! A PV of arbitrary blocks opened as a pool, journal replay included (`ssp::fuzzing::pool_image`).
//! With SSP_FUZZ_SEED_DIR set, first writes the seed pools (made by the current code, so they
//! follow the on-disk format) into that directory.
#![no_main]
libfuzzer_sys::fuzz_target!(
    init: {
        if let Some(dir) = std::env::var_os("SSP_FUZZ_SEED_DIR") {
            let dir = std::path::PathBuf::from(dir);
            std::fs::create_dir_all(&dir).expect("create the seed directory");
            for (i, seed) in ssp::fuzzing::pool_seeds().iter().enumerate() {
                std::fs::write(dir.join(format!("seed-{i}")), seed).expect("write a seed");
            }
        }
    },
    |data: &[u8]| ssp::fuzzing::pool_image(data)
);
