//! The fuzz targets' entry points (`ssp::fuzzing`, run by `scripts/fuzz.sh` under libFuzzer)
//! replayed on their seeds and on every finding kept in `tools/fuzz/regressions/TARGET/`, so a
//! finding stays fixed without a fuzzer.

use ssp::fuzzing;
use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tools/fuzz/regressions")
        .join(target);
    let mut n = 0;
    if let Ok(entries) = std::fs::read_dir(&dir) {
        let mut paths: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for p in paths {
            let bytes = std::fs::read(&p).expect("read a regression input");
            eprintln!("replaying {}", p.display());
            run(&bytes);
            n += 1;
        }
    }
    n
}

#[test]
fn pool_seeds_open_and_replay() {
    let seeds = fuzzing::pool_seeds();
    assert_eq!(seeds.len(), 3);
    for s in &seeds {
        // A seed is a real pool: it opens (read-only and read-write) and survives the driver.
        assert_eq!(s.len() % fuzzing::RECORD, 0);
        let img = fuzzing::image_from_records(s);
        assert_eq!(fuzzing::records_from_image(&img), *s);
        fuzzing::pool_image(s);
    }
}

#[test]
fn pool_image_regressions() {
    replay("pool_image", fuzzing::pool_image);
}

#[test]
fn nbd_stream_regressions() {
    replay("nbd_stream", fuzzing::nbd_stream);
}

#[test]
fn admin_lines_regressions() {
    replay("admin_lines", fuzzing::admin_lines);
    // A valid request runs; the same line with another version is refused by the decoder.
    fuzzing::admin_lines(b"{\"version\":2,\"cmd\":\"lu_create\",\"name\":\"x\",\"size\":4096}\n");
    assert!(ssp::admin::decode_request_line("{\"version\":1,\"cmd\":\"lu_list\"}").is_err());
}
